/*
 * test_full_finetune.c — full fine-tuning's backward (the original DreamBooth: every UNet weight
 * trains): the gradient of every UNet parameter of one DreamBooth batch on the oracle's tiny model
 * against PyTorch's (tests/fixtures/full_grad.safetensors, scripts/make_full_grad_oracle.py),
 * plain and with gradient checkpointing; and against central finite differences of booth's own
 * loss for every parameter tensor of the tiny model (conv projections, square latents) and of the
 * SD 2.x-style variant (linear projections, only-cross-attention blocks, 6x10 latents,
 * v-prediction), at each tensor's largest-gradient entry.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "diffusion/dreambooth.h"
#include "nn/nn.h"
#include "testutil.h"

typedef struct {
    int32_t ids[2 * 77];
    int64_t ts[2], h, w;
    float *lat, *noise;
} s_batch_t;

static void s_read_ids(const st_file_t *f, const char *name, int32_t *out)
{
    int64_t tmp[77];
    const st_tensor_t *t = st_find(f, name);
    if (!t || st_numel(t) != 77 || st_read_i64(t, tmp)) {
        bt_test_fail(__FILE__, __LINE__, "fixture tensor %s", name);
        return;
    }
    for (int i = 0; i < 77; i++) out[i] = (int32_t)tmp[i];
}

/* The [instance, class] batch of a DreamBooth fixture file (latents [1, 4, h, w] each). */
static bool s_batch_load(s_batch_t *b, const char *fixture, int64_t h, int64_t w)
{
    st_file_t *fx = tu_fixture(fixture);
    if (!fx) return false;
    int64_t per = 4 * h * w;
    b->h = h;
    b->w = w;
    s_read_ids(fx, "instance_input_ids", b->ids);
    s_read_ids(fx, "class_input_ids", b->ids + 77);
    b->lat = malloc(2 * (size_t)per * sizeof(float));
    b->noise = malloc(2 * (size_t)per * sizeof(float));
    float *il = tu_load_f32(fx, "instance_latents", NULL), *cl = tu_load_f32(fx, "class_latents", NULL);
    float *in = tu_load_f32(fx, "instance_noise", NULL), *cn = tu_load_f32(fx, "class_noise", NULL);
    bool ok = b->lat && b->noise && il && cl && in && cn && !st_read_i64(st_find(fx, "instance_timesteps"), b->ts) &&
              !st_read_i64(st_find(fx, "class_timesteps"), b->ts + 1);
    if (ok) {
        memcpy(b->lat, il, sizeof(float) * per);
        memcpy(b->lat + per, cl, sizeof(float) * per);
        memcpy(b->noise, in, sizeof(float) * per);
        memcpy(b->noise + per, cn, sizeof(float) * per);
    }
    free(il);
    free(cl);
    free(in);
    free(cn);
    st_close(&fx);
    return ok;
}

static sd_db_batch_t s_db_batch(const s_batch_t *b, const float *weights)
{
    return (sd_db_batch_t){.n = 2, .T = 77, .h = b->h, .w = b->w, .ids = b->ids, .latents = b->lat,
                           .noise = b->noise, .timesteps = b->ts, .weights = weights};
}

static int64_t s_numel(const sd_param_t *p)
{
    int64_t n = 1;
    for (int d = 0; d < p->ndim; d++) n *= p->shape[d];
    return n;
}

/* Every UNet parameter's gradient against the reference's (float64): the sampled entries within
 * 1e-3 of the tensor's largest |g| (the oracle's LoRA-gradient tolerance), the whole norm within
 * 1e-4 relative. */
static void s_against_oracle(bool checkpoint)
{
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    REQUIRE(ctx);
    sd_model_t *m = sd_model_load_as(ctx, tu_fixture_path("tiny-sd"), SD_PART_TEXT | SD_PART_UNET | SD_PART_SCHEDULER,
                                     SD_STORE_F32);
    REQUIRE(m);
    sd_params_t *ps = &m->unet->params;
    REQUIRE(sd_params_alloc_grads(ps) == 0);
    s_batch_t bt;
    REQUIRE(s_batch_load(&bt, "oracle/dreambooth_unet_lora.safetensors", 16, 16));
    st_file_t *fx = tu_fixture("full_grad.safetensors");
    REQUIRE(fx);
    sd_db_t *db = sd_db_new(m, NULL, NULL, checkpoint);
    REQUIRE(db);
    float weights[2] = {1.0f, 1.0f};
    sd_db_batch_t b = s_db_batch(&bt, weights);
    double loss, want;
    REQUIRE(sd_db_step(db, &b, &loss, NULL) == 0);
    REQUIRE(st_find(fx, "f64.loss"));
    st_read_f64(st_find(fx, "f64.loss"), &want);
    CHECKF(fabs(loss - want) <= 1e-5 * fabs(want), "loss %.9g vs %.9g", loss, want);

    int checked = 0, zero = 0;
    double worst = 0, worst_norm = 0;
    char name[512], worst_name[SD_NAME_MAX] = "";
    for (int i = 0; i < ps->n; i++) {
        const sd_param_t *p = &ps->p[i];
        const float *g = ps->grad + (p->data - ps->mem);
        int64_t n = s_numel(p), ns = 0;
        snprintf(name, sizeof name, "f64.grad.unet.%s", p->name);
        double *ref = tu_load_f64(fx, name, &ns);
        snprintf(name, sizeof name, "idx.unet.%s", p->name);
        const st_tensor_t *ti = st_find(fx, name);
        int64_t *idx = NULL;
        double gnorm = 0, gmax = 0;
        snprintf(name, sizeof name, "f64.gnorm.unet.%s", p->name);
        const st_tensor_t *tn = st_find(fx, name);
        if (tn) st_read_f64(tn, &gnorm);
        snprintf(name, sizeof name, "f64.gmax.unet.%s", p->name);
        const st_tensor_t *tm = st_find(fx, name);
        if (tm) st_read_f64(tm, &gmax);
        if (!ref || !tn || !tm) {
            CHECKF(false, "%s: no reference gradient", p->name);
            free(ref);
            continue;
        }
        if (ti) {
            idx = malloc((size_t)ns * sizeof *idx);
            REQUIRE(idx && st_numel(ti) == ns && st_read_i64(ti, idx) == 0);
        } else {
            CHECKF(ns == n, "%s: %lld reference entries for %lld", p->name, (long long)ns, (long long)n);
        }
        double err = 0, norm = 0;
        for (int64_t k = 0; k < ns; k++) {
            int64_t j = idx ? idx[k] : k;
            REQUIRE(j >= 0 && j < n);
            err = fmax(err, fabs(g[j] - ref[k]));
        }
        for (int64_t k = 0; k < n; k++) norm += (double)g[k] * g[k];
        norm = sqrt(norm);
        if (gnorm < 1e-9) { /* zero by construction (a bias right before a one-channel-per-group GroupNorm):
                             * booth's float32 rounding noise, far below every real gradient */
            CHECKF(norm < 1e-6, "%s: gradient norm %.3g where the reference's is %.3g", p->name, norm, gnorm);
            zero++;
            free(ref);
            free(idx);
            continue;
        }
        double rel = err / gmax, nrel = fabs(norm - gnorm) / gnorm;
        CHECKF(rel <= 1e-3, "%s: gradient off by %.3g of its largest %.3g", p->name, err, gmax);
        CHECKF(nrel <= 1e-4, "%s: gradient norm %.8g vs %.8g", p->name, norm, gnorm);
        if (rel > worst) {
            worst = rel;
            snprintf(worst_name, sizeof worst_name, "%s", p->name);
        }
        worst_norm = fmax(worst_norm, nrel);
        checked++;
        free(ref);
        free(idx);
    }
    CHECKF(checked + zero == ps->n && checked > ps->n * 3 / 4, "%d of %d UNet tensors checked (%d zero)", checked,
           ps->n, zero);
    printf("full UNet gradients%s: %d tensors (and %d zero by construction), loss %.8f (reference %.8f); worst entry %.2g of the tensor's max "
           "(%s), worst norm %.2g\n",
           checkpoint ? " (checkpointed)" : "", checked, zero, loss, want, worst, worst_name, worst_norm);
    free(bt.lat);
    free(bt.noise);
    st_close(&fx);
    sd_db_destroy(&db);
    sd_model_destroy(&m);
    nn_ctx_destroy(&ctx);
}

TEST(full_unet_gradients_match_pytorch) { s_against_oracle(false); }
TEST(full_unet_gradients_checkpointed_match_pytorch) { s_against_oracle(true); }

/* Every UNet tensor: booth's gradient against a central difference of booth's own loss along the
 * gradient's direction d = g / |g|: (L(p + e d) - L(p - e d)) / 2e must equal |g|. A whole-tensor
 * direction gives a loss change far above float32's rounding of the loss (single entries do not),
 * with e = 1e-3 max(|p|, 1). A tensor whose gradient is zero (by construction: a bias right before
 * a one-channel-per-group GroupNorm) must leave the loss unmoved along a random direction. */
static void s_finite_differences(const char *model, const char *fixture, int64_t h, int64_t w)
{
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 1);
    REQUIRE(ctx);
    sd_model_t *m = sd_model_load_as(ctx, tu_fixture_path(model), SD_PART_TEXT | SD_PART_UNET | SD_PART_SCHEDULER,
                                     SD_STORE_F32);
    REQUIRE(m);
    sd_params_t *ps = &m->unet->params;
    REQUIRE(sd_params_alloc_grads(ps) == 0);
    s_batch_t bt;
    REQUIRE(s_batch_load(&bt, fixture, h, w));
    sd_db_t *db = sd_db_new(m, NULL, NULL, false);
    REQUIRE(db);
    float weights[2] = {1.0f, 0.5f};
    sd_db_batch_t b = s_db_batch(&bt, weights);
    double loss;
    REQUIRE(sd_db_step(db, &b, &loss, NULL) == 0);
    int bad = 0, checked = 0;
    double worst = 0;
    char worst_name[SD_NAME_MAX] = "";
    for (int i = 0; i < ps->n; i++) {
        sd_param_t *p = &ps->p[i];
        const float *g = ps->grad + (p->data - ps->mem);
        int64_t n = s_numel(p);
        double gn = 0, pn = 0;
        for (int64_t k = 0; k < n; k++) {
            gn += (double)g[k] * g[k];
            pn += (double)p->data[k] * p->data[k];
        }
        gn = sqrt(gn);
        pn = sqrt(pn);
        float *keep = malloc((size_t)n * sizeof(float)), *dir = malloc((size_t)n * sizeof(float));
        REQUIRE(keep && dir);
        memcpy(keep, p->data, (size_t)n * sizeof(float));
        bool zero = gn < 1e-6; /* then the loss must not move along a random direction either */
        if (zero) {
            tu_rng_t rng = tu_rng((uint64_t)i + 1);
            tu_fill_normal(&rng, dir, n, 1.0f);
            double dn = 0;
            for (int64_t k = 0; k < n; k++) dn += (double)dir[k] * dir[k];
            for (int64_t k = 0; k < n; k++) dir[k] = (float)(dir[k] / sqrt(dn));
        } else {
            for (int64_t k = 0; k < n; k++) dir[k] = (float)(g[k] / gn);
        }
        double e = 1e-3 * fmax(pn, 1.0), lp, lm;
        for (int64_t k = 0; k < n; k++) p->data[k] = (float)(keep[k] + e * dir[k]);
        REQUIRE(sd_db_eval(db, &b, &lp, NULL) == 0);
        for (int64_t k = 0; k < n; k++) p->data[k] = (float)(keep[k] - e * dir[k]);
        REQUIRE(sd_db_eval(db, &b, &lm, NULL) == 0);
        memcpy(p->data, keep, (size_t)n * sizeof(float));
        free(keep);
        free(dir);
        double fd = (lp - lm) / (2 * e), lim = 2e-2 * gn + 4e-7 / e;
        if (zero) {
            CHECKF(fabs(fd) <= lim, "%s: zero gradient, but the loss moves at %.3g along a direction", p->name, fd);
            continue;
        }
        double err = fabs(fd - gn);
        if (err > lim) {
            bad++;
            CHECKF(false, "%s: |g| %.6g, finite difference along g %.6g", p->name, gn, fd);
        }
        if (err / lim > worst) { /* 1 = at the limit: 2% of |g| + float32 rounding of the loss over 2e */
            worst = err / lim;
            snprintf(worst_name, sizeof worst_name, "%s", p->name);
        }
        checked++;
    }
    CHECKF(bad == 0, "%d of %d tensors off", bad, checked);
    CHECKF(checked > ps->n * 3 / 4, "only %d of %d tensors have a gradient", checked, ps->n);
    printf("%s: %d of %d UNet tensors against finite differences, worst at %.2f of the limit (%s)\n", model, checked,
           ps->n,
           worst, worst_name);
    free(bt.lat);
    free(bt.noise);
    sd_db_destroy(&db);
    sd_model_destroy(&m);
    nn_ctx_destroy(&ctx);
}

TEST(full_unet_gradients_match_finite_differences)
{
    s_finite_differences("tiny-sd", "oracle/dreambooth_unet_lora.safetensors", 16, 16);
}

TEST(full_unet_gradients_match_finite_differences_variant)
{
    s_finite_differences("variant/model", "variant/dreambooth.safetensors", 6, 10);
}

/* A 16-bit weight cannot be trained in place: a clear refusal naming the tensor. */
TEST(full_finetune_refuses_16_bit_weights)
{
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 1);
    REQUIRE(ctx);
    sd_model_t *m = sd_model_load_as(ctx, tu_fixture_path("tiny-sd"), SD_PART_UNET, SD_STORE_F16);
    REQUIRE(m);
    int rc = sd_params_alloc_grads(&m->unet->params);
    const char *log = bt_log_last_error();
    CHECK(rc != 0);
    CHECKF(strstr(log, "float32") && strstr(log, ".weight"), "log: %s", log);
    CHECK(m->unet->params.grad == NULL && m->unet->conv_in.dw == NULL);
    sd_model_destroy(&m);
    nn_ctx_destroy(&ctx);
}
