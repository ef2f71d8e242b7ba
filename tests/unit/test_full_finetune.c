/*
 * test_full_finetune.c — full fine-tuning's backward (the original DreamBooth: every UNet weight
 * trains): the gradient of every UNet parameter of one DreamBooth batch on the oracle's tiny model
 * against PyTorch's (tests/fixtures/full_grad.safetensors, scripts/make_full_grad_oracle.py),
 * plain and with gradient checkpointing; and against central finite differences of booth's own
 * loss for every parameter tensor of the tiny model (conv projections, square latents) and of the
 * SD 2.x-style variant (linear projections, only-cross-attention blocks, 6x10 latents,
 * v-prediction), along each tensor's gradient. The same for every text-encoder parameter when it
 * trains in full too (diffusers' --train_text_encoder): the oracle's second pass, and finite
 * differences with quick_gelu and gelu, with and without clip skip.
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

/* What the oracle's comparison of one part found. */
typedef struct {
    int checked, zero;
    double worst, worst_norm;
    char worst_name[SD_NAME_MAX];
} s_tally_t;

/* The fixture's key of a parameter: "unet.<name>", or "text_encoder.<name>" without the
 * "text_model." that the state dict (and booth) put first: the oracle names the parameters of
 * CLIPTextModel's inner text_model module. */
static void s_ref_key(char *buf, size_t len, const char *what, const char *part, const char *name)
{
    if (!strcmp(part, "text_encoder") && !strncmp(name, "text_model.", 11)) name += 11;
    snprintf(buf, len, "%s.%s.%s", what, part, name);
}

/* Every parameter of one part against the reference's gradient (float64): the sampled entries
 * within 1e-3 of the tensor's largest |g| (the oracle's LoRA-gradient tolerance), the whole norm
 * within 1e-4 relative. */
static void s_check_part(s_tally_t *tally, const st_file_t *fx, const sd_params_t *ps, const char *part)
{
    s_tally_t t = {0};
    char name[512];
    for (int i = 0; i < ps->n; i++) {
        const sd_param_t *p = &ps->p[i];
        const float *g = ps->grad + (p->data - ps->mem);
        int64_t n = s_numel(p), ns = 0;
        s_ref_key(name, sizeof name, "f64.grad", part, p->name);
        double *ref = tu_load_f64(fx, name, &ns);
        s_ref_key(name, sizeof name, "idx", part, p->name);
        const st_tensor_t *ti = st_find(fx, name);
        int64_t *idx = NULL;
        double gnorm = 0, gmax = 0;
        s_ref_key(name, sizeof name, "f64.gnorm", part, p->name);
        const st_tensor_t *tn = st_find(fx, name);
        if (tn) st_read_f64(tn, &gnorm);
        s_ref_key(name, sizeof name, "f64.gmax", part, p->name);
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
        if (gnorm < 1e-9) { /* zero by construction (a bias right before a one-channel-per-group GroupNorm;
                             * a key projection's bias, which softmax cancels): booth's float32 rounding
                             * noise, far below every real gradient */
            CHECKF(norm < 1e-6, "%s: gradient norm %.3g where the reference's is %.3g", p->name, norm, gnorm);
            t.zero++;
            free(ref);
            free(idx);
            continue;
        }
        double rel = err / gmax, nrel = fabs(norm - gnorm) / gnorm;
        CHECKF(rel <= 1e-3, "%s: gradient off by %.3g of its largest %.3g", p->name, err, gmax);
        CHECKF(nrel <= 1e-4, "%s: gradient norm %.8g vs %.8g", p->name, norm, gnorm);
        if (rel > t.worst) {
            t.worst = rel;
            snprintf(t.worst_name, sizeof t.worst_name, "%s", p->name);
        }
        t.worst_norm = fmax(t.worst_norm, nrel);
        t.checked++;
        free(ref);
        free(idx);
    }
    CHECKF(t.checked + t.zero == ps->n && t.checked > ps->n * 3 / 4, "%d of %d %s tensors checked (%d zero)", t.checked,
           ps->n, part, t.zero);
    *tally = t;
}

/* One DreamBooth step with every UNet weight training (and every text-encoder weight with text:
 * the oracle's second pass, whose loss is f64.loss_te; the UNet's gradient is the first pass's,
 * the forward being the same), each part's gradients against the reference's. */
static void s_against_oracle(bool checkpoint, bool text)
{
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    REQUIRE(ctx);
    sd_model_t *m = sd_model_load_as(ctx, tu_fixture_path("tiny-sd"), SD_PART_TEXT | SD_PART_UNET | SD_PART_SCHEDULER,
                                     SD_STORE_F32);
    REQUIRE(m);
    REQUIRE(sd_params_alloc_grads(&m->unet->params) == 0);
    if (text) REQUIRE(sd_params_alloc_grads(&m->clip->params) == 0);
    s_batch_t bt;
    REQUIRE(s_batch_load(&bt, "oracle/dreambooth_unet_lora.safetensors", 16, 16));
    st_file_t *fx = tu_fixture("full_grad.safetensors");
    REQUIRE(fx);
    sd_db_t *db = sd_db_new(m, NULL, NULL, checkpoint);
    REQUIRE(db);
    db->text_full = text;
    float weights[2] = {1.0f, 1.0f};
    sd_db_batch_t b = s_db_batch(&bt, weights);
    double loss, want;
    REQUIRE(sd_db_step(db, &b, &loss, NULL) == 0);
    const char *lkey = text ? "f64.loss_te" : "f64.loss";
    REQUIRE(st_find(fx, lkey));
    st_read_f64(st_find(fx, lkey), &want);
    CHECKF(fabs(loss - want) <= 1e-5 * fabs(want), "loss %.9g vs %.9g", loss, want);

    s_tally_t u, te;
    s_check_part(&u, fx, &m->unet->params, "unet");
    printf("full UNet gradients%s: %d tensors (and %d zero by construction), loss %.8f (reference %.8f); worst entry "
           "%.2g of the tensor's max (%s), worst norm %.2g\n",
           checkpoint ? " (checkpointed)" : "", u.checked, u.zero, loss, want, u.worst, u.worst_name, u.worst_norm);
    if (text) {
        s_check_part(&te, fx, &m->clip->params, "text_encoder");
        printf("full text-encoder gradients%s: %d tensors (and %d zero); worst entry %.2g of the tensor's max (%s), "
               "worst norm %.2g\n",
               checkpoint ? " (checkpointed)" : "", te.checked, te.zero, te.worst, te.worst_name, te.worst_norm);
    }
    free(bt.lat);
    free(bt.noise);
    st_close(&fx);
    sd_db_destroy(&db);
    sd_model_destroy(&m);
    nn_ctx_destroy(&ctx);
}

TEST(full_unet_gradients_match_pytorch) { s_against_oracle(false, false); }
TEST(full_unet_gradients_checkpointed_match_pytorch) { s_against_oracle(true, false); }
/* diffusers' train_dreambooth.py --train_text_encoder: UNet and text encoder both train in full */
TEST(full_text_encoder_gradients_match_pytorch) { s_against_oracle(false, true); }
TEST(full_text_encoder_gradients_checkpointed_match_pytorch) { s_against_oracle(true, true); }

/* Every tensor of a part: booth's gradient against a central difference of booth's own loss along
 * the gradient's direction d = g / |g|: (L(p + e d) - L(p - e d)) / 2e must equal |g|. A
 * whole-tensor direction gives a loss change far above float32's rounding of the loss (single
 * entries do not), with e = 1e-3 max(|p|, 1), |p| over the entries the direction moves (the token
 * embedding's gradient has only the rows of the prompts' ids). A tensor whose gradient is zero (by
 * construction: a bias right before a one-channel-per-group GroupNorm, a key projection's bias,
 * a text-encoder layer that clip_skip leaves out) must leave the loss unmoved along a random
 * direction. *nchecked: the tensors with a gradient. */
static void s_fd_part(int *nchecked, sd_db_t *db, const sd_db_batch_t *b, sd_params_t *ps, const char *model,
                      const char *part)
{
    int bad = 0, checked = 0;
    double worst = 0;
    char worst_name[SD_NAME_MAX] = "";
    for (int i = 0; i < ps->n; i++) {
        sd_param_t *p = &ps->p[i];
        const float *g = ps->grad + (p->data - ps->mem);
        int64_t n = s_numel(p);
        double gn = 0, pn = 0, pall = 0;
        for (int64_t k = 0; k < n; k++) {
            gn += (double)g[k] * g[k];
            pall += (double)p->data[k] * p->data[k];
            if (g[k] != 0) pn += (double)p->data[k] * p->data[k];
        }
        gn = sqrt(gn);
        float *keep = malloc((size_t)n * sizeof(float)), *dir = malloc((size_t)n * sizeof(float));
        REQUIRE(keep && dir);
        memcpy(keep, p->data, (size_t)n * sizeof(float));
        bool zero = gn < 1e-6; /* then the loss must not move along a random direction either */
        pn = sqrt(zero ? pall : pn);
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
        REQUIRE(sd_db_eval(db, b, &lp, NULL) == 0);
        for (int64_t k = 0; k < n; k++) p->data[k] = (float)(keep[k] - e * dir[k]);
        REQUIRE(sd_db_eval(db, b, &lm, NULL) == 0);
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
    CHECKF(bad == 0, "%d of %d %s tensors off", bad, checked, part);
    printf("%s: %d of %d %s tensors against finite differences, worst at %.2f of the limit (%s)\n", model, checked,
           ps->n, part, worst, worst_name);
    *nchecked = checked;
}

/* One step of the DreamBooth batch with every UNet weight training (and every text-encoder weight
 * with text), then finite differences for each tensor of the part(s) asked for. */
static void s_finite_differences(const char *model, const char *fixture, int64_t h, int64_t w, bool unet, bool text,
                                 int clip_skip)
{
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 1);
    REQUIRE(ctx);
    sd_model_t *m = sd_model_load_as(ctx, tu_fixture_path(model), SD_PART_TEXT | SD_PART_UNET | SD_PART_SCHEDULER,
                                     SD_STORE_F32);
    REQUIRE(m);
    REQUIRE(sd_params_alloc_grads(&m->unet->params) == 0);
    if (text) REQUIRE(sd_params_alloc_grads(&m->clip->params) == 0);
    s_batch_t bt;
    REQUIRE(s_batch_load(&bt, fixture, h, w));
    sd_db_t *db = sd_db_new(m, NULL, NULL, false);
    REQUIRE(db);
    db->text_full = text;
    db->clip_skip = clip_skip;
    float weights[2] = {1.0f, 0.5f};
    sd_db_batch_t b = s_db_batch(&bt, weights);
    double loss;
    REQUIRE(sd_db_step(db, &b, &loss, NULL) == 0);
    int n = 0;
    if (unet) {
        s_fd_part(&n, db, &b, &m->unet->params, model, "UNet");
        CHECKF(n > m->unet->params.n * 3 / 4, "only %d of %d UNet tensors have a gradient", n, m->unet->params.n);
    }
    if (text) { /* none for the 16 tensors of a layer clip_skip leaves out, nor for each k_proj.bias */
        int64_t L = m->clip->cfg.num_layers, want = m->clip->params.n - 16 * clip_skip - (L - clip_skip);
        s_fd_part(&n, db, &b, &m->clip->params, model, "text-encoder");
        CHECKF(n == want, "%d of %d text-encoder tensors have a gradient (%lld expected with clip skip %d)", n,
               m->clip->params.n, (long long)want, clip_skip);
    }
    free(bt.lat);
    free(bt.noise);
    sd_db_destroy(&db);
    sd_model_destroy(&m);
    nn_ctx_destroy(&ctx);
}

TEST(full_unet_gradients_match_finite_differences)
{
    s_finite_differences("tiny-sd", "oracle/dreambooth_unet_lora.safetensors", 16, 16, true, false, 0);
}

TEST(full_unet_gradients_match_finite_differences_variant)
{
    s_finite_differences("variant/model", "variant/dreambooth.safetensors", 6, 10, true, false, 0);
}

/* The text encoder in full: quick_gelu (tiny-sd) and gelu (the variant, here with clip skip 1: its
 * last layer takes no part and must get no gradient, the final layer norm still trains). */
TEST(full_text_encoder_gradients_match_finite_differences)
{
    s_finite_differences("tiny-sd", "oracle/dreambooth_unet_lora.safetensors", 16, 16, false, true, 0);
}

TEST(full_text_encoder_gradients_match_finite_differences_variant)
{
    s_finite_differences("variant/model", "variant/dreambooth.safetensors", 6, 10, false, true, 1);
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
