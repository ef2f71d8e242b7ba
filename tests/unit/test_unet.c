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

typedef struct {
    st_file_t *fx;
    int checked, missing;
    double worst;
    char worst_name[128];
} s_hook_ctx_t;

static void s_hook(void *user, const char *name, const float *data, int ndim, const int64_t *shape)
{
    s_hook_ctx_t *h = user;
    char key[256];
    snprintf(key, sizeof key, "intermediate.%s", name);
    const st_tensor_t *t = st_find(h->fx, key);
    if (!t) return; /* the oracle records a subset */
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    CHECKF(st_numel(t) == n, "%s: %lld elements, reference has %lld", name, (long long)n, (long long)st_numel(t));
    if (st_numel(t) != n) return;
    float *want = malloc((size_t)n * sizeof(float));
    st_read_f32(t, want);
    double d = tu_max_abs_diff(data, want, n), rel = tu_rel_l2(data, want, n);
    /* the oracle's limit: max abs <= 1e-4, or relative L2 <= 1e-5 */
    CHECKF(d <= 1e-4 || rel <= 1e-5, "intermediate %s: max abs %.3g, rel %.3g", name, d, rel);
    if (d > h->worst) {
        h->worst = d;
        snprintf(h->worst_name, sizeof h->worst_name, "%s", name);
    }
    h->checked++;
    free(want);
}

static sd_unet_t *s_load_unet(nn_ctx_t *ctx, const char *model)
{
    char path[512];
    sd_unet_config_t cfg;
    snprintf(path, sizeof path, "%s/unet/config.json", model);
    if (sd_unet_config_load(path, &cfg)) return NULL;
    sd_unet_t *u = sd_unet_new(&cfg);
    if (!u) return NULL;
    snprintf(path, sizeof path, "%s/unet", model);
    if (sd_params_alloc(&u->params, ctx) || sd_params_load_dir(&u->params, path, "diffusion_pytorch_model")) {
        sd_unet_destroy(&u);
        return NULL;
    }
    return u;
}

TEST(unet_matches_oracle)
{
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    REQUIRE(ctx);
    sd_unet_t *u = s_load_unet(ctx, tu_fixture_path("tiny-sd"));
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
    s_hook_ctx_t hc = {.fx = fx};
    sd_run_t run = {.nn = ctx, .scratch = &scratch, .hook = s_hook, .hook_user = &hc};
    REQUIRE(sd_unet_forward(&run, u, out, sample, t, ehs, 3, 16, 16, 77) == 0);
    double d = tu_check_close("noise_pred", out, want, n, 1e-4);
    double d64 = tu_check_close_f64("noise_pred vs f64", out, want64, n, 1e-4);
    printf("noise_pred: max abs %.3g (f32 ref), %.3g (f64 ref); %d intermediates, worst %.3g at %s\n", d, d64,
           hc.checked, hc.worst, hc.worst_name);
    int recorded = 0;
    for (int i = 0; i < st_count(fx); i++) recorded += !strncmp(st_at(fx, i)->name, "intermediate.", 13);
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
