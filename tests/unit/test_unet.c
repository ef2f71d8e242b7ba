/*
 * test_unet.c — the UNet against the reference on the oracle's tiny SD model:
 * the output (float32 and float64 references) and every intermediate the
 * oracle recorded, compared by module name through the forward hook.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "diffusion/unet.h"
#include "testutil.h"

TEST(unet_matches_oracle)
{
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    REQUIRE(ctx);
    sd_unet_t *u = sd_unet_load(ctx, tu_fixture_path("tiny-sd/unet"), SD_STORE_AUTO);
    REQUIRE(u);
    CHECK_INT_EQ(u->params.n, 684); /* every tensor of the oracle's file */
    st_file_t *fx = tu_fixture("oracle/unet.safetensors");
    REQUIRE(fx);
    int64_t n;
    float *sample = tu_load_f32(fx, "sample", &n);
    float *ehs = tu_load_f32(fx, "encoder_hidden_states", NULL);
    float *want = tu_load_f32(fx, "noise_pred", NULL);
    double *want64 = tu_load_f64(fx, "noise_pred_f64", NULL);
    int64_t steps[3];
    REQUIRE(st_read_i64(st_find(fx, "timestep"), steps) == 0);
    float t[3] = {(float)steps[0], (float)steps[1], (float)steps[2]};
    float *out = calloc((size_t)n, sizeof(float));

    bt_stack_t scratch;
    bt_stack_init(&scratch, "scratch", 0, NULL, NULL, NULL);
    /* the oracle's limit: max abs <= 1e-4, or relative L2 <= 1e-5 */
    tu_intermediates_t hc = {.fx = fx, .atol = 1e-4, .rtol = 1e-5};
    sd_run_t run = {.nn = ctx, .scratch = &scratch, .hook = tu_intermediates_hook, .hook_user = &hc};
    REQUIRE(sd_unet_forward(&run, u, out, sample, t, ehs, 3, 16, 16, 77) == 0);
    double d = tu_check_close("noise_pred", out, want, n, 1e-4);
    double d64 = tu_check_close_f64("noise_pred vs f64", out, want64, n, 1e-4);
    printf("noise_pred: max abs %.3g (f32 ref), %.3g (f64 ref); %d intermediates, worst %.3g at %s\n", d, d64,
           hc.checked, hc.worst, hc.worst_name);
    int recorded = tu_intermediates_recorded(fx);
    CHECKF(hc.checked == recorded && recorded > 0, "compared %d of %d recorded intermediates", hc.checked, recorded);
    CHECK(scratch.live == 0);

    /* the same sample alone (batch 1) gives the same output as inside the batch of 3 */
    float *one = calloc((size_t)n / 3, sizeof(float));
    run.hook = NULL;
    REQUIRE(sd_unet_forward(&run, u, one, sample + n / 3, t + 1, ehs + 77 * 32, 1, 16, 16, 77) == 0);
    tu_check_close("batch element 1 alone", one, out + n / 3, n / 3, 1e-5);

    bt_stack_free(&scratch);
    free(one);
    free(out);
    free(sample);
    free(ehs);
    free(want);
    free(want64);
    st_close(&fx);
    sd_unet_destroy(&u);
    nn_ctx_destroy(&ctx);
}

TEST(unet_config_errors)
{
    const char *dir = tu_tmpdir();
    char path[512];
    snprintf(path, sizeof path, "%s/config.json", dir);
    sd_unet_config_t cfg;
    FILE *f = fopen(path, "w");
    REQUIRE(f);
    fputs("{\"down_block_types\": [\"CrossAttnDownBlock2D\"], \"up_block_types\": [\"CrossAttnUpBlock2D\"],"
          " \"block_out_channels\": [32], \"addition_embed_type\": \"text_time\"}",
          f);
    fclose(f);
    CHECK(sd_unet_config_load(path, &cfg) != 0);
    CHECK(strstr(bt_log_last_error(), "addition_embed_type") != NULL);
    f = fopen(path, "w");
    REQUIRE(f);
    fputs("{\"down_block_types\": [\"CrossAttnDownBlock2D\"], \"up_block_types\": [\"CrossAttnUpBlock2D\"],"
          " \"block_out_channels\": \"wide\"}",
          f);
    fclose(f);
    CHECK(sd_unet_config_load(path, &cfg) != 0);
    CHECK(strstr(bt_log_last_error(), "block_out_channels") != NULL);
    f = fopen(path, "w");
    REQUIRE(f);
    fputs("not json", f);
    fclose(f);
    CHECK(sd_unet_config_load(path, &cfg) != 0);
    CHECK(strstr(bt_log_last_error(), path) != NULL);
}
