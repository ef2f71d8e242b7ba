/*
 * test_variant_dreambooth.c — the DreamBooth step on the variant model
 * (tests/fixtures/variant/model: SD 2.x-style UNet with linear projections,
 * per-block head counts and an only-cross-attention block, gelu CLIP, fp16
 * weights, v-prediction) against diffusers 0.25.1 + peft 0.7.1, computed by
 * scripts/make_variant_dreambooth_oracle.py as train_dreambooth_lora.py does:
 * LoRA rank 4, alpha 8 (scale 2) on the UNet and the text encoder, every A and B
 * non-zero; batch [instance, class] on a non-square 6x10 latent, timesteps 123
 * and 876; target = velocity; loss = instance MSE + 0.5 * prior MSE; gradients
 * of every LoRA matrix; one AdamW step from zero moments.
 *
 * Limits are the oracle README's (DreamBooth step): loss relative 1e-5, each
 * gradient max abs <= 1e-3 * max|g_f64| of its tensor, AdamW 1e-6 (2e-4 where
 * |g_f64| < 1e-7, where g/(|g| + eps) is ill-conditioned).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diffusion/dreambooth.h"
#include "diffusion/lora_io.h"
#include "nn/nn.h"
#include "testutil.h"

#define FX "variant/dreambooth.safetensors"
#define LORA "variant/dreambooth_lora.safetensors"
#define LAT_H 6
#define LAT_W 10
#define N_UNET_ADAPTERS 112 /* 14 transformer blocks x 2 attentions x 4 projections */
#define N_TEXT_ADAPTERS 8   /* 2 layers x 4 projections */

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

/* booth's tokenizer gives the reference's ids for the prompt in metadata `key`. */
static void s_check_tokens(const st_file_t *fx, const sd_tokenizer_t *tok, const char *key, const int32_t *want)
{
    const char *prompt = st_metadata(fx, key);
    if (!prompt) {
        bt_test_fail(__FILE__, __LINE__, "fixture metadata %s", key);
        return;
    }
    sd_tok_result_t tr;
    REQUIRE(sd_tokenize(tok, prompt, &tr) == 0);
    REQUIRE(tr.max_length == 77);
    int bad = -1;
    for (int i = 0; i < 77 && bad < 0; i++)
        if (tr.input_ids[i] != want[i]) bad = i;
    CHECKF(bad < 0, "tokenizer: \"%s\" id %d is %d, reference %d", prompt, bad, bad < 0 ? 0 : tr.input_ids[bad],
           bad < 0 ? 0 : want[bad]);
    sd_tok_result_free(&tr);
}

/* Gradients and one AdamW step of one LoRA set against "P.grad.<part>." / "P.adamw_step1.<part>.". */
static void s_check_set(const st_file_t *fx, sd_lora_set_t *set, const char *part, double *worst_rel,
                        char *worst_name, size_t worst_len)
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
        if (!g64 || !g32 || !a64 || !a32) {
            free(g64);
            free(g32);
            free(a64);
            free(a32);
            return;
        }
        double gmax = 0;
        for (int64_t k = 0; k < n; k++) gmax = fmax(gmax, fabs(g64[k]));
        CHECKF(gmax > 0, "%s.%s: the reference gradient is zero", part, p->name);
        double e64 = tu_max_abs_diff_f64(g, g64, n), e32 = tu_max_abs_diff(g, g32, n);
        CHECKF(e64 <= 1e-3 * gmax, "%s.%s: grad max err %.3g vs f64 (limit %.3g)", part, p->name, e64, 1e-3 * gmax);
        CHECKF(e32 <= 1e-3 * gmax, "%s.%s: grad max err %.3g vs f32 reference (limit %.3g)", part, p->name, e32,
               1e-3 * gmax);
        if (gmax > 0 && e64 / gmax > *worst_rel) {
            *worst_rel = e64 / gmax;
            snprintf(worst_name, worst_len, "%s.%s", part, p->name);
        }

        /* AdamW from zero moments, lr 1e-4, betas (0.9, 0.999), eps 1e-8, wd 1e-2 */
        float *pp = malloc((size_t)n * sizeof(float)), *pf = malloc((size_t)n * sizeof(float));
        float *m = calloc((size_t)n, sizeof(float)), *v = calloc((size_t)n, sizeof(float));
        REQUIRE(pp && pf && m && v);
        memcpy(pp, p->data, (size_t)n * sizeof(float));
        memcpy(pf, p->data, (size_t)n * sizeof(float));
        REQUIRE(nn_adamw_step(ctx, pp, m, v, g, n, 1e-4f, 0.9f, 0.999f, 1e-8f, 1e-2f, 1) == 0);
        memset(m, 0, (size_t)n * sizeof(float));
        memset(v, 0, (size_t)n * sizeof(float));
        REQUIRE(nn_adamw_step(ctx, pf, m, v, g32, n, 1e-4f, 0.9f, 0.999f, 1e-8f, 1e-2f, 1) == 0);
        int64_t bad_own = 0, bad_fixture = 0;
        double worst_own = 0;
        for (int64_t k = 0; k < n; k++) {
            double lim = fabs(g64[k]) < 1e-7 ? 2e-4 : 1e-6; /* g/(|g|+1e-8) is ill-conditioned near 0 */
            double d = fabs(pp[k] - a64[k]);
            if (d > lim) bad_own++;
            if (fabs(g64[k]) >= 1e-7) worst_own = fmax(worst_own, d);
            if (fabs(pf[k] - a32[k]) > 1e-6) bad_fixture++; /* the reference's own float32 step */
        }
        CHECKF(bad_own == 0, "%s.%s: %lld AdamW entries off (own gradients; worst %.3g)", part, p->name,
               (long long)bad_own, worst_own);
        CHECKF(bad_fixture == 0, "%s.%s: %lld AdamW entries off (reference gradients)", part, p->name,
               (long long)bad_fixture);
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

/* sd_db_step with booth's loader on the reference's LoRA file. */
TEST(variant_dreambooth_matches_diffusers_peft)
{
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    REQUIRE(ctx);
    sd_model_t *m = sd_model_load(ctx, tu_fixture_path("variant/model"),
                                  SD_PART_TOKENIZER | SD_PART_TEXT | SD_PART_UNET | SD_PART_SCHEDULER);
    REQUIRE(m);
    CHECK(m->sched_cfg.prediction_type == SD_PRED_V);

    sd_lora_set_t *lu = NULL, *lt = NULL;
    sd_lora_load_opts_t lo = {.default_alpha = 0, .with_grad = true};
    REQUIRE(sd_lora_load(tu_fixture_path(LORA), ctx, m->unet, m->clip, &lo, &lu, &lt) == 0);
    REQUIRE(lu && lt && lu->grad && lt->grad);
    CHECK_INT_EQ(lu->n, N_UNET_ADAPTERS);
    CHECK_INT_EQ(lt->n, N_TEXT_ADAPTERS);
    CHECK_INT_EQ(lu->rank, 4);
    CHECK_INT_EQ(lt->rank, 4);
    CHECKF(lu->alpha == 8.0f && lt->alpha == 8.0f, "alpha %g / %g, file says 8", lu->alpha, lt->alpha);

    st_file_t *fx = tu_fixture(FX);
    REQUIRE(fx);
    int32_t ids[2 * 77];
    s_read_ids(fx, "instance_input_ids", ids);
    s_read_ids(fx, "class_input_ids", ids + 77);
    s_check_tokens(fx, m->tok, "instance_prompt", ids);
    s_check_tokens(fx, m->tok, "class_prompt", ids + 77);

    const int64_t per = 4 * LAT_H * LAT_W;
    float lat[2 * 4 * LAT_H * LAT_W], noise[2 * 4 * LAT_H * LAT_W];
    int64_t n_il = 0, n_cl = 0, n_in = 0, n_cn = 0;
    float *il = tu_load_f32(fx, "instance_latents", &n_il), *cl = tu_load_f32(fx, "class_latents", &n_cl);
    float *in = tu_load_f32(fx, "instance_noise", &n_in), *cn = tu_load_f32(fx, "class_noise", &n_cn);
    REQUIRE(il && cl && in && cn && n_il == per && n_cl == per && n_in == per && n_cn == per);
    memcpy(lat, il, sizeof(float) * per);
    memcpy(lat + per, cl, sizeof(float) * per);
    memcpy(noise, in, sizeof(float) * per);
    memcpy(noise + per, cn, sizeof(float) * per);
    int64_t ts[2];
    REQUIRE(st_read_i64(st_find(fx, "instance_timesteps"), ts) == 0);
    REQUIRE(st_read_i64(st_find(fx, "class_timesteps"), ts + 1) == 0);
    float weights[2] = {1.0f, 0.5f}; /* instance MSE + 0.5 * prior MSE */

    sd_db_t *db = sd_db_new(m, lu, lt, false);
    REQUIRE(db);
    sd_db_batch_t b = {.n = 2, .T = 77, .h = LAT_H, .w = LAT_W, .ids = ids, .latents = lat, .noise = noise,
                       .timesteps = ts, .weights = weights};
    double loss;
    float per_ex[2];
    REQUIRE(sd_db_step(db, &b, &loss, per_ex) == 0);
    double l64 = 0, li64 = 0, lp64 = 0;
    REQUIRE(st_find(fx, "f64.loss") && st_find(fx, "f64.loss_instance") && st_find(fx, "f64.loss_prior"));
    st_read_f64(st_find(fx, "f64.loss"), &l64);
    st_read_f64(st_find(fx, "f64.loss_instance"), &li64);
    st_read_f64(st_find(fx, "f64.loss_prior"), &lp64);
    CHECKF(fabs(loss - l64) <= 1e-5 * fabs(l64), "loss %.9g vs %.9g (rel %.3g)", loss, l64, fabs(loss - l64) / l64);
    CHECKF(fabs(per_ex[0] - li64) <= 1e-5 * fabs(li64), "instance loss %.9g vs %.9g (rel %.3g)", per_ex[0], li64,
           fabs(per_ex[0] - li64) / li64);
    CHECKF(fabs(per_ex[1] - lp64) <= 1e-5 * fabs(lp64), "prior loss %.9g vs %.9g (rel %.3g)", per_ex[1], lp64,
           fabs(per_ex[1] - lp64) / lp64);

    double worst = 0;
    char worst_name[600] = "";
    s_check_set(fx, lu, "unet", &worst, worst_name, sizeof worst_name);
    s_check_set(fx, lt, "text_encoder", &worst, worst_name, sizeof worst_name);
    printf("variant dreambooth: loss %.8f (reference %.8f, rel %.2g; instance %.8f / %.8f, prior %.8f / %.8f); "
           "worst grad error %.2g of the tensor's max (%s)\n",
           loss, l64, fabs(loss - l64) / l64, per_ex[0], li64, per_ex[1], lp64, worst, worst_name);

    free(il);
    free(cl);
    free(in);
    free(cn);
    st_close(&fx);
    sd_db_destroy(&db);
    sd_lora_destroy(&lu);
    sd_lora_destroy(&lt);
    sd_model_destroy(&m);
    nn_ctx_destroy(&ctx);
}

/* `booth lora-grad --prior-loss-weight 0.5` on the fixture (a valid batch file) and the
 * peft-layout LoRA file reproduces the reference's loss, gradients and AdamW step. */
TEST(variant_lora_grad_command_matches_diffusers_peft)
{
    char out[512], cmd[4096], batch[512], lora[512], model[512];
    const char *booth = getenv("BOOTH");
    REQUIRE(booth);
    snprintf(out, sizeof out, "%s/grads.safetensors", tu_tmpdir());
    snprintf(batch, sizeof batch, "%s", tu_fixture_path(FX));
    snprintf(lora, sizeof lora, "%s", tu_fixture_path(LORA));
    snprintf(model, sizeof model, "%s", tu_fixture_path("variant/model"));
    snprintf(cmd, sizeof cmd,
             "'%s' lora-grad --model '%s' --batch '%s' --lora '%s' --prior-loss-weight 0.5 --adamw --out '%s' "
             "2>/dev/null",
             booth, model, batch, lora, out);
    REQUIRE(system(cmd) == 0);
    st_file_t *got = st_open(out), *fx = tu_fixture(FX);
    REQUIRE(got && fx);
    const char *scalars[3][2] = {{"loss", "f64.loss"}, {"loss_instance", "f64.loss_instance"},
                                 {"loss_prior", "f64.loss_prior"}};
    for (int i = 0; i < 3; i++) {
        float v = 0;
        double want = 0;
        REQUIRE(st_find(got, scalars[i][0]) && st_find(fx, scalars[i][1]));
        st_read_f32(st_find(got, scalars[i][0]), &v);
        st_read_f64(st_find(fx, scalars[i][1]), &want);
        CHECKF(fabs(v - want) <= 1e-5 * fabs(want), "%s %.8g vs %.8g", scalars[i][0], v, want);
    }
    int grads = 0, steps = 0;
    double worst_grad = 0, worst_step = 0;
    for (int i = 0; i < st_count(got); i++) {
        const st_tensor_t *t = st_at(got, i);
        bool grad = !strncmp(t->name, "grad.", 5), adam = !strncmp(t->name, "adamw_step1.", 12);
        if (!grad && !adam) continue;
        char ref[600];
        snprintf(ref, sizeof ref, "f64.%s", t->name);
        int64_t n = st_numel(t), nb = 0;
        float *a = tu_load_f32(got, t->name, NULL);
        double *b = tu_load_f64(fx, ref, &nb);
        REQUIRE(a && b && nb == n);
        double bmax = 0, err = 0;
        for (int64_t k = 0; k < n; k++) {
            bmax = fmax(bmax, fabs(b[k]));
            err = fmax(err, fabs(a[k] - b[k]));
        }
        /* gradients: 1e-3 of the tensor's largest; AdamW: ill-conditioned near g = 0, 2e-4 */
        double lim = grad ? 1e-3 * bmax : 2e-4;
        CHECKF(err <= lim, "%s: max err %.3g > %.3g", t->name, err, lim);
        if (grad && bmax > 0) worst_grad = fmax(worst_grad, err / bmax);
        if (adam) worst_step = fmax(worst_step, err);
        grads += grad;
        steps += adam;
        free(a);
        free(b);
    }
    CHECK_INT_EQ(grads, 2 * (N_UNET_ADAPTERS + N_TEXT_ADAPTERS));
    CHECK_INT_EQ(steps, 2 * (N_UNET_ADAPTERS + N_TEXT_ADAPTERS));
    printf("variant lora-grad: worst grad error %.2g of the tensor's max, worst AdamW error %.2g\n", worst_grad,
           worst_step);
    st_close(&got);
    st_close(&fx);
}
