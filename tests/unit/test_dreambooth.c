/*
 * test_dreambooth.c — the DreamBooth step against the reference: loss (instance,
 * prior, total), every LoRA gradient of the UNet and the text encoder, and one
 * AdamW step (from booth's own gradients and from the reference's), on the
 * oracle's batch [instance, class] with prior preservation.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diffusion/dreambooth.h"
#include "diffusion/layers.h"
#include "nn/nn.h"
#include "testutil.h"

static void s_read_i32(const st_file_t *f, const char *name, int32_t *out, int64_t n)
{
    int64_t tmp[77];
    const st_tensor_t *t = st_find(f, name);
    if (!t || st_numel(t) != n || n > 77 || st_read_i64(t, tmp)) {
        bt_test_fail(__FILE__, __LINE__, "fixture tensor %s", name);
        return;
    }
    for (int64_t i = 0; i < n; i++) out[i] = (int32_t)tmp[i];
}

/* Checks grads (and one AdamW step) of one LoRA set against prefix "grad.<part>." entries. */
static void s_check_set(const st_file_t *fx, sd_lora_set_t *set, const char *part, double *worst_rel)
{
    char name[512];
    nn_ctx_t *ctx = set->params.ctx;
    for (int i = 0; i < set->params.n; i++) {
        const sd_param_t *p = &set->params.p[i];
        int64_t n = 1;
        for (int d = 0; d < p->ndim; d++) n *= p->shape[d];
        const float *g = set->grad + (p->data - set->params.mem);
        snprintf(name, sizeof name, "f64.grad.%s.%s", part, p->name);
        double *g64 = tu_load_f64(fx, name, NULL);
        snprintf(name, sizeof name, "f32.grad.%s.%s", part, p->name);
        float *g32 = tu_load_f32(fx, name, NULL);
        snprintf(name, sizeof name, "f64.adamw_step1.%s.%s", part, p->name);
        double *a64 = tu_load_f64(fx, name, NULL);
        snprintf(name, sizeof name, "f32.adamw_step1.%s.%s", part, p->name);
        float *a32 = tu_load_f32(fx, name, NULL);
        if (!g64 || !g32 || !a64 || !a32) return;
        double gmax = 0;
        for (int64_t k = 0; k < n; k++) gmax = fmax(gmax, fabs(g64[k]));
        double e64 = tu_max_abs_diff_f64(g, g64, n), e32 = tu_max_abs_diff(g, g32, n);
        CHECKF(e64 <= 1e-3 * gmax, "%s: grad max err %.3g vs f64 (limit %.3g)", p->name, e64, 1e-3 * gmax);
        CHECKF(e32 <= 1e-3 * gmax, "%s: grad max err %.3g vs f32 reference", p->name, e32);
        if (gmax > 0 && e64 / gmax > *worst_rel) *worst_rel = e64 / gmax;

        /* AdamW from zero moments, lr 1e-4, betas (0.9, 0.999), eps 1e-8, wd 1e-2 */
        float *pp = malloc((size_t)n * sizeof(float)), *pf = malloc((size_t)n * sizeof(float));
        float *m = calloc((size_t)n, sizeof(float)), *v = calloc((size_t)n, sizeof(float));
        memcpy(pp, p->data, (size_t)n * sizeof(float));
        memcpy(pf, p->data, (size_t)n * sizeof(float));
        REQUIRE(nn_adamw_step(ctx, pp, m, v, g, n, 1e-4f, 0.9f, 0.999f, 1e-8f, 1e-2f, 1) == 0);
        memset(m, 0, (size_t)n * sizeof(float));
        memset(v, 0, (size_t)n * sizeof(float));
        REQUIRE(nn_adamw_step(ctx, pf, m, v, g32, n, 1e-4f, 0.9f, 0.999f, 1e-8f, 1e-2f, 1) == 0);
        int64_t bad_own = 0, bad_fixture = 0;
        for (int64_t k = 0; k < n; k++) {
            /* own gradients: g/(|g|+1e-8) is ill-conditioned where |g| < 1e-7 */
            double lim = fabs(g64[k]) < 1e-7 ? 2e-4 : 1e-6;
            if (fabs(pp[k] - a64[k]) > lim) bad_own++;
            if (fabs(pf[k] - a32[k]) > 1e-6) bad_fixture++; /* the reference's own float32 step */
        }
        CHECKF(bad_own == 0, "%s: %lld AdamW entries off (own gradients)", p->name, (long long)bad_own);
        CHECKF(bad_fixture == 0, "%s: %lld AdamW entries off (reference gradients)", p->name, (long long)bad_fixture);
        free(pp);
        free(pf);
        free(m);
        free(v);
        free(g64);
        free(g32);
        free(a64);
        free(a32);
    }
}

/* grads (may be NULL): a copy of the UNet LoRA's gradients (caller frees), *ngrads floats */
static void s_run(const char *fixture, bool train_text, bool checkpoint, float **grads, int64_t *ngrads)
{
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    REQUIRE(ctx);
    sd_model_t *m = sd_model_load(ctx, tu_fixture_path("tiny-sd"), SD_PART_TEXT | SD_PART_UNET | SD_PART_SCHEDULER);
    REQUIRE(m);
    sd_lora_set_t *lu = sd_lora_attach_unet(m->unet, 4, 4.0f, NULL), *lt = NULL;
    REQUIRE(lu && sd_lora_alloc(lu, ctx, true) == 0);
    st_file_t *wu = tu_fixture("oracle/lora_unet_weights.safetensors");
    REQUIRE(wu && sd_params_load_files(&lu->params, &wu, 1) == 0);
    st_file_t *wt = NULL;
    if (train_text) {
        lt = sd_lora_attach_clip(m->clip, 4, 4.0f, NULL);
        REQUIRE(lt && sd_lora_alloc(lt, ctx, true) == 0);
        wt = tu_fixture("oracle/lora_text_encoder_weights.safetensors");
        REQUIRE(wt && sd_params_load_files(&lt->params, &wt, 1) == 0);
    }
    st_file_t *fx = tu_fixture(fixture);
    REQUIRE(fx);
    int32_t ids[2 * 77];
    s_read_i32(fx, "instance_input_ids", ids, 77);
    s_read_i32(fx, "class_input_ids", ids + 77, 77);
    const int64_t per = 4 * 16 * 16;
    float lat[2 * per], noise[2 * per];
    float *il = tu_load_f32(fx, "instance_latents", NULL), *cl = tu_load_f32(fx, "class_latents", NULL);
    float *in = tu_load_f32(fx, "instance_noise", NULL), *cn = tu_load_f32(fx, "class_noise", NULL);
    REQUIRE(il && cl && in && cn);
    memcpy(lat, il, sizeof(float) * per);
    memcpy(lat + per, cl, sizeof(float) * per);
    memcpy(noise, in, sizeof(float) * per);
    memcpy(noise + per, cn, sizeof(float) * per);
    int64_t ts[2];
    REQUIRE(st_read_i64(st_find(fx, "instance_timesteps"), ts) == 0);
    REQUIRE(st_read_i64(st_find(fx, "class_timesteps"), ts + 1) == 0);
    float weights[2] = {1.0f, 1.0f};

    sd_db_t *db = sd_db_new(m, lu, lt, checkpoint);
    REQUIRE(db);
    sd_db_batch_t b = {.n = 2, .T = 77, .h = 16, .w = 16, .ids = ids, .latents = lat, .noise = noise,
                       .timesteps = ts, .weights = weights};
    double loss;
    float per_ex[2];
    REQUIRE(sd_db_step(db, &b, &loss, per_ex) == 0);
    double l64, li64, lp64;
    st_read_f64(st_find(fx, "f64.loss"), &l64);
    st_read_f64(st_find(fx, "f64.loss_instance"), &li64);
    st_read_f64(st_find(fx, "f64.loss_prior"), &lp64);
    CHECKF(fabs(loss - l64) <= 1e-5 * fabs(l64), "loss %.9g vs %.9g", loss, l64);
    CHECKF(fabs(per_ex[0] - li64) <= 1e-5 * fabs(li64), "instance loss %.9g vs %.9g", per_ex[0], li64);
    CHECKF(fabs(per_ex[1] - lp64) <= 1e-5 * fabs(lp64), "prior loss %.9g vs %.9g", per_ex[1], lp64);
    double worst = 0;
    s_check_set(fx, lu, "unet", &worst);
    if (lt) s_check_set(fx, lt, "text_encoder", &worst);
    printf("%s%s: loss %.8f (reference %.8f); worst grad error %.2g of the tensor's max\n", fixture,
           checkpoint ? " (checkpointed)" : "", loss, l64, worst);
    if (grads) {
        *ngrads = lu->params.numel;
        *grads = malloc((size_t)*ngrads * sizeof(float));
        REQUIRE(*grads);
        memcpy(*grads, lu->grad, (size_t)*ngrads * sizeof(float));
    }

    free(il);
    free(cl);
    free(in);
    free(cn);
    st_close(&fx);
    st_close(&wu);
    st_close(&wt);
    sd_db_destroy(&db);
    sd_lora_destroy(&lu);
    sd_lora_destroy(&lt);
    sd_model_destroy(&m);
    nn_ctx_destroy(&ctx);
}

TEST(dreambooth_unet_lora_matches_oracle) { s_run("oracle/dreambooth_unet_lora.safetensors", false, false, NULL, NULL); }
TEST(dreambooth_unet_te_lora_matches_oracle)
{
    s_run("oracle/dreambooth_unet_te_lora.safetensors", true, false, NULL, NULL);
}

/* Checkpointing recomputes the same numbers (attention outputs kept, resnets
 * re-run only up to what their backward needs): the same gradient bytes. */
TEST(dreambooth_checkpointing_matches_oracle)
{
    float *plain = NULL, *ckpt = NULL;
    int64_t n0 = 0, n1 = 0;
    s_run("oracle/dreambooth_unet_te_lora.safetensors", true, false, &plain, &n0);
    s_run("oracle/dreambooth_unet_te_lora.safetensors", true, true, &ckpt, &n1);
    REQUIRE(plain && ckpt && n0 == n1 && n0 > 0);
    CHECKF(!memcmp(plain, ckpt, (size_t)n0 * sizeof(float)), "checkpointed UNet LoRA gradients differ from the plain step's");
    free(ckpt);
    ckpt = NULL;
    sd_attention_test_keep_qkv_from(0); /* the tiny model's attentions keep q, k, v too */
    s_run("oracle/dreambooth_unet_te_lora.safetensors", true, true, &ckpt, &n1);
    sd_attention_test_keep_qkv_from(640);
    REQUIRE(ckpt && n0 == n1);
    CHECKF(!memcmp(plain, ckpt, (size_t)n0 * sizeof(float)),
           "checkpointed UNet LoRA gradients (q, k, v kept) differ from the plain step's");
    free(plain);
    free(ckpt);
}

/* `booth lora-grad` on the oracle's batch file with its LoRA in the diffusers layout
 * reproduces the reference's loss, gradients and AdamW step. */
TEST(lora_grad_command_matches_oracle)
{
    char out[512], cmd[4096];
    snprintf(out, sizeof out, "%s/grads.safetensors", tu_tmpdir());
    const char *booth = getenv("BOOTH");
    REQUIRE(booth);
    char batch[512], lora[512], model[512];
    snprintf(batch, sizeof batch, "%s", tu_fixture_path("oracle/dreambooth_unet_te_lora.safetensors"));
    snprintf(lora, sizeof lora, "%s", tu_fixture_path("oracle/pytorch_lora_weights.safetensors"));
    snprintf(model, sizeof model, "%s", tu_fixture_path("tiny-sd"));
    snprintf(cmd, sizeof cmd, "'%s' lora-grad --model '%s' --batch '%s' --lora '%s' --adamw --out '%s' 2>/dev/null",
             booth, model, batch, lora, out);
    REQUIRE(system(cmd) == 0);
    st_file_t *got = st_open(out), *fx = tu_fixture("oracle/dreambooth_unet_te_lora.safetensors");
    REQUIRE(got && fx);
    const char *scalars[3][2] = {{"loss", "f64.loss"}, {"loss_instance", "f64.loss_instance"},
                                 {"loss_prior", "f64.loss_prior"}};
    for (int i = 0; i < 3; i++) {
        float v;
        double want;
        REQUIRE(st_find(got, scalars[i][0]) && st_find(fx, scalars[i][1]));
        st_read_f32(st_find(got, scalars[i][0]), &v);
        st_read_f64(st_find(fx, scalars[i][1]), &want);
        CHECKF(fabs(v - want) <= 1e-5 * fabs(want), "%s %.8g vs %.8g", scalars[i][0], v, want);
    }
    int grads = 0, steps = 0;
    for (int i = 0; i < st_count(got); i++) {
        const st_tensor_t *t = st_at(got, i);
        bool grad = !strncmp(t->name, "grad.", 5), adam = !strncmp(t->name, "adamw_step1.", 12);
        if (!grad && !adam) continue;
        char ref[600];
        snprintf(ref, sizeof ref, "f64.%s", t->name);
        int64_t n = st_numel(t);
        float *a = tu_load_f32(got, t->name, NULL);
        double *b = tu_load_f64(fx, ref, NULL);
        REQUIRE(a && b);
        double bmax = 0, err = 0;
        for (int64_t k = 0; k < n; k++) {
            bmax = fmax(bmax, fabs(b[k]));
            err = fmax(err, fabs(a[k] - b[k]));
        }
        /* gradients: 1e-3 of the tensor's largest; AdamW: ill-conditioned near g = 0, 2e-4 */
        double lim = grad ? 1e-3 * bmax : 2e-4;
        CHECKF(err <= lim, "%s: max err %.3g > %.3g", t->name, err, lim);
        grads += grad;
        steps += adam;
        free(a);
        free(b);
    }
    CHECK_INT_EQ(grads, 280); /* 128 UNet + 12 text-encoder adapters, A and B */
    CHECK_INT_EQ(steps, 280);
    st_close(&got);
    st_close(&fx);
}
