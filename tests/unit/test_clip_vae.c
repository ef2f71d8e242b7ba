/*
 * test_clip_vae.c — the CLIP text encoder and the VAE against the reference on
 * the oracle's tiny SD model.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diffusion/clip.h"
#include "diffusion/vae.h"
#include "testutil.h"

typedef struct {
    const float *hidden; /* reference hidden_states [L+1, B, T, C] */
    int64_t per;         /* B*T*C */
    int checked;
} s_clip_hook_t;

static void s_clip_hook(void *user, const char *name, const float *data, int ndim, const int64_t *shape)
{
    s_clip_hook_t *h = user;
    int l;
    if (sscanf(name, "hidden_states.%d", &l) != 1) return;
    char what[64];
    snprintf(what, sizeof what, "hidden_states[%d]", l);
    tu_check_close(what, data, h->hidden + l * h->per, h->per, 1e-4);
    h->checked++;
}

TEST(clip_matches_oracle)
{
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    REQUIRE(ctx);
    sd_clip_t *c = sd_clip_load(ctx, tu_fixture_path("tiny-sd/text_encoder"), SD_STORE_AUTO);
    REQUIRE(c);
    st_file_t *fx = tu_fixture("oracle/text_encoder.safetensors");
    REQUIRE(fx);
    int64_t ids64[3 * 77];
    REQUIRE(st_read_i64(st_find(fx, "input_ids"), ids64) == 0);
    int32_t ids[3 * 77];
    for (int i = 0; i < 3 * 77; i++) ids[i] = (int32_t)ids64[i];
    int64_t n;
    float *want = tu_load_f32(fx, "last_hidden_state", &n);
    double *want64 = tu_load_f64(fx, "last_hidden_state_f64", NULL);
    float *pooled_want = tu_load_f32(fx, "pooler_output", NULL);
    float *skip_want = tu_load_f32(fx, "prompt_embeds_clip_skip_1", NULL);
    float *hidden = tu_load_f32(fx, "hidden_states", NULL);
    float *out = calloc((size_t)n, sizeof(float)), pooled[3 * 32];

    bt_stack_t scratch;
    bt_stack_init(&scratch, "scratch", 0, NULL, NULL, NULL);
    s_clip_hook_t hc = {.hidden = hidden, .per = n};
    sd_run_t run = {.nn = ctx, .scratch = &scratch, .hook = s_clip_hook, .hook_user = &hc};
    REQUIRE(sd_clip_forward(&run, c, out, pooled, ids, 3, 77, 0) == 0);
    CHECK_INT_EQ(hc.checked, 4);
    double d = tu_check_close("last_hidden_state", out, want, n, 1e-4);
    double d64 = tu_check_close_f64("last_hidden_state vs f64", out, want64, n, 1e-4);
    tu_check_close("pooler_output", pooled, pooled_want, 3 * 32, 1e-4);
    run.hook = NULL;
    REQUIRE(sd_clip_forward(&run, c, out, NULL, ids, 3, 77, 1) == 0);
    double ds = tu_check_close("clip skip 1", out, skip_want, n, 1e-4);
    printf("last_hidden_state: max abs %.3g (f32 ref), %.3g (f64 ref); clip skip 1: %.3g\n", d, d64, ds);
    CHECK(scratch.live == 0);

    bt_stack_free(&scratch);
    free(out);
    free(want);
    free(want64);
    free(pooled_want);
    free(skip_want);
    free(hidden);
    st_close(&fx);
    sd_clip_destroy(&c);
    nn_ctx_destroy(&ctx);
}

TEST(vae_matches_oracle)
{
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    REQUIRE(ctx);
    sd_vae_t *v = sd_vae_load(ctx, tu_fixture_path("tiny-sd/vae"), SD_STORE_AUTO);
    REQUIRE(v);
    st_file_t *fx = tu_fixture("oracle/vae.safetensors");
    REQUIRE(fx);
    int64_t ni, nl;
    float *image = tu_load_f32(fx, "image", &ni);
    float *mean_want = tu_load_f32(fx, "posterior_mean", &nl);
    float *logvar_want = tu_load_f32(fx, "posterior_logvar", NULL);
    double *mean64 = tu_load_f64(fx, "posterior_mean_f64", NULL);
    float *z = tu_load_f32(fx, "z", NULL);
    float *dec_want = tu_load_f32(fx, "decoded", NULL);
    double *dec64 = tu_load_f64(fx, "decoded_f64", NULL);
    float *mean = calloc((size_t)nl, sizeof(float)), *logvar = calloc((size_t)nl, sizeof(float));
    float *dec = calloc((size_t)ni, sizeof(float));
    CHECK_INT_EQ(sd_vae_latent_size(v, 128), 16);

    bt_stack_t scratch;
    bt_stack_init(&scratch, "scratch", 0, NULL, NULL, NULL);
    tu_intermediates_t hc = {.fx = fx, .atol = 3e-4, .rtol = 1e-5};
    sd_run_t run = {.nn = ctx, .scratch = &scratch, .hook = tu_intermediates_hook, .hook_user = &hc};
    REQUIRE(sd_vae_encode(&run, v, mean, logvar, image, 1, 128, 128) == 0);
    tu_check_close("posterior_mean", mean, mean_want, nl, 1e-4);
    tu_check_close("posterior_logvar", logvar, logvar_want, nl, 1e-4);
    tu_check_close_f64("posterior_mean vs f64", mean, mean64, nl, 1e-4);
    REQUIRE(sd_vae_decode(&run, v, dec, z, 1, 16, 16) == 0);
    double d = tu_check_close("decoded", dec, dec_want, ni, 3e-4);
    double d64 = tu_check_close_f64("decoded vs f64", dec, dec64, ni, 3e-4);
    int recorded = tu_intermediates_recorded(fx);
    CHECKF(hc.checked == recorded, "compared %d of %d recorded intermediates", hc.checked, recorded);
    printf("decoded: max abs %.3g (f32 ref), %.3g (f64 ref); %d intermediates, worst %.3g at %s\n", d, d64,
           hc.checked, hc.worst, hc.worst_name);
    CHECK(scratch.live == 0);

    bt_stack_free(&scratch);
    free(image);
    free(mean_want);
    free(logvar_want);
    free(mean64);
    free(z);
    free(dec_want);
    free(dec64);
    free(mean);
    free(logvar);
    free(dec);
    st_close(&fx);
    sd_vae_destroy(&v);
    nn_ctx_destroy(&ctx);
}
