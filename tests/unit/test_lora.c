/*
 * test_lora.c — LoRA adapters: the UNet with the oracle's LoRA at scale 1.0 and
 * 0.5 (and 0 = the base model), loaded by peft name; attachment bookkeeping.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diffusion/lora.h"
#include "testutil.h"

TEST(lora_unet_forward_matches_oracle)
{
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    REQUIRE(ctx);
    sd_unet_t *u = sd_unet_load(ctx, tu_fixture_path("tiny-sd/unet"), SD_STORE_AUTO);
    REQUIRE(u);
    sd_lora_set_t *lora = sd_lora_attach_unet(u, 4, 4.0f, NULL);
    REQUIRE(lora);
    CHECK_INT_EQ(lora->n, 128); /* 32 attentions x 4 projections */
    REQUIRE(sd_lora_alloc(lora, ctx, false) == 0);
    st_file_t *wf = tu_fixture("oracle/lora_unet_weights.safetensors");
    REQUIRE(wf);
    REQUIRE(sd_params_load_files(&lora->params, &wf, 1) == 0);
    CHECK_INT_EQ(lora->params.n, st_count(wf));

    st_file_t *fx = tu_fixture("oracle/lora_unet.safetensors");
    st_file_t *base = tu_fixture("oracle/unet.safetensors");
    REQUIRE(fx && base);
    int64_t n;
    float *sample = tu_load_f32(base, "sample", &n);
    float *ehs = tu_load_f32(base, "encoder_hidden_states", NULL);
    float *base_want = tu_load_f32(base, "noise_pred", NULL);
    float *want1 = tu_load_f32(fx, "noise_pred_scale_1.0", NULL);
    float *want05 = tu_load_f32(fx, "noise_pred_scale_0.5", NULL);
    double *want64 = tu_load_f64(fx, "noise_pred_scale_1.0_f64", NULL);
    float t[3] = {1, 500, 999}, *out = calloc((size_t)n, sizeof(float));
    bt_stack_t scratch;
    bt_stack_init(&scratch, "scratch", 0, NULL, NULL, NULL);
    sd_run_t run = {.nn = ctx, .scratch = &scratch};

    REQUIRE(sd_unet_forward(&run, u, out, sample, t, ehs, 3, 16, 16, 77) == 0);
    double d1 = tu_check_close("scale 1.0", out, want1, n, 1e-4);
    tu_check_close_f64("scale 1.0 vs f64", out, want64, n, 1e-4);
    CHECK(tu_max_abs_diff(out, base_want, n) > 0.01); /* the adapter really changes the output */
    sd_lora_set_scale(lora, 0.5f);
    REQUIRE(sd_unet_forward(&run, u, out, sample, t, ehs, 3, 16, 16, 77) == 0);
    double d05 = tu_check_close("scale 0.5", out, want05, n, 1e-4);
    sd_lora_set_scale(lora, 0.0f);
    REQUIRE(sd_unet_forward(&run, u, out, sample, t, ehs, 3, 16, 16, 77) == 0);
    tu_check_close("scale 0 = base model", out, base_want, n, 1e-4);
    printf("LoRA UNet: max abs %.3g (scale 1), %.3g (scale 0.5)\n", d1, d05);
    /* detaching restores the base model exactly */
    sd_lora_set_scale(lora, 1.0f);
    sd_lora_destroy(&lora);
    REQUIRE(sd_unet_forward(&run, u, out, sample, t, ehs, 3, 16, 16, 77) == 0);
    tu_check_close("after detaching", out, base_want, n, 1e-4);

    bt_stack_free(&scratch);
    free(out);
    free(sample);
    free(ehs);
    free(base_want);
    free(want1);
    free(want05);
    free(want64);
    st_close(&fx);
    st_close(&base);
    st_close(&wf);
    sd_unet_destroy(&u);
    nn_ctx_destroy(&ctx);
}

TEST(lora_attach_targets_and_init)
{
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    REQUIRE(ctx);
    sd_clip_t *c = sd_clip_load(ctx, tu_fixture_path("tiny-sd/text_encoder"), SD_STORE_AUTO);
    REQUIRE(c);
    sd_lora_set_t *l = sd_lora_attach_clip(c, 2, 1.0f, (const char *const[]){"q_proj", "v_proj", NULL});
    REQUIRE(l);
    CHECK_INT_EQ(l->n, 6); /* 3 layers x 2 */
    CHECK(!strcmp(l->modules[1], "text_model.encoder.layers.0.self_attn.v_proj"));
    CHECK(!strcmp(l->params.p[3].name, "text_model.encoder.layers.0.self_attn.v_proj.lora_B.weight"));
    REQUIRE(sd_lora_alloc(l, ctx, true) == 0);
    REQUIRE(sd_lora_init(l, 5) == 0);
    /* A ~ N(0, 1/rank^2): sample std close to 0.5; B = 0; grads zero and laid out like params */
    double s = 0, ss = 0;
    int64_t na = 0;
    for (int i = 0; i < l->n; i++) {
        int64_t nA = l->rank * l->layers[i]->in, nB = l->rank * l->layers[i]->out;
        for (int64_t k = 0; k < nA; k++, na++) {
            s += l->adapters[i].A[k];
            ss += (double)l->adapters[i].A[k] * l->adapters[i].A[k];
        }
        for (int64_t k = 0; k < nB; k++) CHECK(l->adapters[i].B[k] == 0.0f);
        CHECK(l->adapters[i].dA[0] == 0.0f && l->adapters[i].dB[nB - 1] == 0.0f);
    }
    double sd = sqrt(ss / (double)na - (s / (double)na) * (s / (double)na));
    CHECKF(fabs(sd - 0.5) < 0.05, "A std %.3f, expected 0.5", sd);
    CHECK(sd_lora_attach_clip(c, 2, 1.0f, (const char *const[]){"to_q", NULL}) == NULL); /* UNet names */
    sd_lora_destroy(&l);
    sd_clip_destroy(&c);
    nn_ctx_destroy(&ctx);
}
