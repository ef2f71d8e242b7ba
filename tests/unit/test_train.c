/*
 * test_train.c — DreamBooth LoRA training on the tiny model: the instance loss
 * falls; runs are reproducible to the bit; the plan is a pure function of
 * (seed, step); LoRA gradients agree with finite differences of the loss.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/fileio.h"
#include "common/image.h"
#include "diffusion/optim.h"
#include "diffusion/train.h"
#include "storage/png.h"
#include "testutil.h"

/* A small synthetic subject: a red ball with a blue band, on varied backgrounds. */
static void s_make_subject(const char *dir, int n)
{
    char path[512];
    for (int i = 0; i < n; i++) {
        bt_img_t *img = bt_img_new(80 + 8 * i, 64, 3);
        bt_img_fill(img, 0x80a0c0u + 0x101010u * (unsigned)i);
        int cx = 30 + 6 * i, cy = 32, r = 18;
        for (int y = 0; y < img->height; y++)
            for (int x = 0; x < img->width; x++)
                if ((x - cx) * (x - cx) + (y - cy) * (y - cy) <= r * r)
                    bt_img_fill_rect(img, x, y, 1, 1, abs(x - cx) < 4 ? 0x2020d0u : 0xd02020u);
        if (snprintf(path, sizeof path, "%s/subject-%d.png", dir, i) >= (int)sizeof path) return;
        CHECK(st_png_write(path, img, NULL, 0) == 0);
        bt_img_destroy(&img);
    }
}

static sd_trainer_t *s_trainer_res(nn_ctx_t *ctx, const char *dir, bool prior, bool text, uint64_t seed, int res)
{
    sd_train_config_t c;
    sd_train_config_defaults(&c);
    c.model_dir = tu_fixture_path("tiny-sd");
    char *model = strdup(c.model_dir), inst[512], cls[512];
    c.model_dir = model;
    snprintf(inst, sizeof inst, "%s/instance", dir);
    snprintf(cls, sizeof cls, "%s/class", dir);
    c.instance_dir = inst;
    c.instance_prompt = "a photo of sks toy";
    c.class_dir = cls;
    c.class_prompt = "a photo of toy";
    c.prior_preservation = prior;
    c.num_class_images = 2;
    c.resolution = res;
    c.max_train_steps = 30;
    c.learning_rate = 1e-2f; /* a random tiny UNet needs a bold rate to move in 30 steps */
    c.train_text_encoder = text;
    c.random_flip = true;
    c.seed = seed;
    sd_model_t *m = sd_model_load(ctx, model, SD_PART_ALL);
    if (m && prior && sd_class_images_ensure(m, cls, c.class_prompt, 2, res, seed, 3, 7.5f, NULL, NULL) < 0)
        sd_model_destroy(&m);
    sd_trainer_t *t = m ? sd_trainer_new(&m, &c, NULL, NULL) : NULL;
    free(model);
    return t;
}

static sd_trainer_t *s_trainer(nn_ctx_t *ctx, const char *dir, bool prior, bool text, uint64_t seed)
{
    return s_trainer_res(ctx, dir, prior, text, seed, 64);
}

static void s_setup(char *dir, size_t len)
{
    snprintf(dir, len, "%s", tu_tmpdir());
    char inst[512];
    snprintf(inst, sizeof inst, "%s/instance", dir);
    REQUIRE(bt_mkdirs(inst) == 0);
    s_make_subject(inst, 3);
}

TEST_TIMEOUT(train_instance_loss_falls, 600)
{
    char dir[512];
    s_setup(dir, sizeof dir);
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    REQUIRE(ctx);
    sd_trainer_t *t = s_trainer(ctx, dir, true, true, 11);
    REQUIRE(t);
    sd_optim_t *o = sd_trainer_optim(t);
    REQUIRE(o);
    double before, after;
    REQUIRE(sd_trainer_eval(t, &before) == 0);
    for (int s = 0; s < 30; s++) {
        sd_step_stats_t st;
        REQUIRE(sd_trainer_step(t, o, &st) == 0);
        CHECK(isfinite(st.loss) && st.grad_norm > 0);
    }
    REQUIRE(sd_trainer_eval(t, &after) == 0);
    printf("fixed-set instance loss: %.5f -> %.5f after 30 steps\n", before, after);
    CHECKF(after < 0.9 * before, "instance loss %.5f -> %.5f did not fall", before, after);
    sd_optim_destroy(&o);
    sd_trainer_destroy(&t);
    nn_ctx_destroy(&ctx);
}

/* Same seed and data: the same LoRA bytes (and a different seed: different bytes). */
TEST_TIMEOUT(train_is_reproducible, 600)
{
    char dir[512];
    s_setup(dir, sizeof dir);
    nn_ctx_t *ctx1 = nn_ctx_new(NN_BACKEND_CPU, 1), *ctx2 = nn_ctx_new(NN_BACKEND_CPU, 2);
    REQUIRE(ctx1 && ctx2);
    sd_trainer_t *a = s_trainer(ctx1, dir, true, false, 5), *b = s_trainer(ctx2, dir, true, false, 5);
    sd_trainer_t *c = s_trainer(ctx2, dir, true, false, 6);
    REQUIRE(a && b && c);
    sd_optim_t *oa = sd_trainer_optim(a), *ob = sd_trainer_optim(b), *oc = sd_trainer_optim(c);
    REQUIRE(oa && ob && oc);
    for (int s = 0; s < 3; s++) {
        sd_step_stats_t st;
        REQUIRE(sd_trainer_step(a, oa, &st) == 0);
        REQUIRE(sd_trainer_step(b, ob, &st) == 0);
        REQUIRE(sd_trainer_step(c, oc, &st) == 0);
    }
    sd_optim_destroy(&oa);
    sd_optim_destroy(&ob);
    sd_optim_destroy(&oc);
    size_t bytes = (size_t)a->nblock[0] * sizeof(float);
    CHECK(!memcmp(a->lora_unet->params.mem, b->lora_unet->params.mem, bytes)); /* 1 vs 2 threads */
    CHECK(memcmp(a->lora_unet->params.mem, c->lora_unet->params.mem, bytes) != 0);
    sd_trainer_destroy(&a);
    sd_trainer_destroy(&b);
    sd_trainer_destroy(&c);
    nn_ctx_destroy(&ctx1);
    nn_ctx_destroy(&ctx2);
}

/* A step's examples depend only on (seed, step): asking twice, or out of order, agrees. */
TEST(train_plan_is_a_function_of_seed_and_step)
{
    char dir[512];
    s_setup(dir, sizeof dir);
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    REQUIRE(ctx);
    sd_trainer_t *t = s_trainer(ctx, dir, true, false, 3);
    REQUIRE(t);
    sd_train_example_t a[8], b[8];
    int na, nb;
    REQUIRE(sd_trainer_plan(t, 7, a, &na) == 0);
    REQUIRE(sd_trainer_plan(t, 2, b, &nb) == 0);
    REQUIRE(sd_trainer_plan(t, 7, b, &nb) == 0);
    CHECK_INT_EQ(na, 2);
    CHECK(na == nb && !memcmp(a, b, sizeof a[0] * (size_t)na));
    CHECK(!a[0].is_class && a[1].is_class);
    CHECK(a[0].weight == 1.0f && a[1].weight == 1.0f);
    /* every instance image is visited once per epoch */
    int seen[3] = {0};
    for (int s = 0; s < 3; s++) {
        REQUIRE(sd_trainer_plan(t, s, a, &na) == 0);
        seen[a[0].image]++;
    }
    CHECK(seen[0] == 1 && seen[1] == 1 && seen[2] == 1);
    sd_trainer_destroy(&t);
    nn_ctx_destroy(&ctx);
}

/* dL/dA and dL/dB of a few adapters against central differences of the loss.
 *
 * The point is chosen so that differences can resolve the gradient: 128 px (the
 * tiny UNet's native size; at 64 px its mid block sees 1x1 latents, where a
 * group norm of 32 groups over 64 channels normalises pairs of values and the
 * loss jumps wherever two of them cross), and LoRA B set to small seeded values
 * instead of trained there with a bold rate (which could land anywhere). */
TEST(train_lora_gradients_match_finite_differences)
{
    char dir[512];
    s_setup(dir, sizeof dir);
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    REQUIRE(ctx);
    sd_trainer_t *t = s_trainer_res(ctx, dir, false, true, 9, 128);
    REQUIRE(t);
    sd_lora_set_t *sets[2] = {t->lora_unet, t->lora_text};
    tu_rng_t rng = tu_rng(5);
    for (int s = 0; s < 2; s++) /* B = 0 would leave every dL/dA at 0 */
        for (int i = 0; i < sets[s]->params.n; i++) {
            sd_param_t *p = &sets[s]->params.p[i];
            if (strstr(p->name, "lora_B")) tu_fill_normal(&rng, p->data, p->shape[0] * p->shape[1], 0.02f);
        }
    double loss, l0, lp, lm;
    int checked = 0;
    for (int s = 0; s < 2; s++) {
        sd_lora_set_t *L = sets[s];
        int picks[3] = {0, L->params.n / 2, L->params.n - 1};
        for (int k = 0; k < 3; k++) {
            /* gradients of step 0's micro-batch at the current point (earlier probes overwrote them) */
            REQUIRE(sd_trainer_microbatch(t, 0, 0, &loss, &l0, &lp) == 0);
            sd_param_t *p = &L->params.p[picks[k]];
            const float *g = L->grad + (p->data - L->params.mem);
            /* the element with the largest gradient in this tensor */
            int64_t n = p->shape[0] * p->shape[1], best = 0;
            for (int64_t i = 1; i < n; i++)
                if (fabsf(g[i]) > fabsf(g[best])) best = i;
            float gi = g[best], x0 = p->data[best], h = 0.1f * fmaxf(fabsf(x0), 0.1f);
            p->data[best] = x0 + h;
            REQUIRE(sd_trainer_microbatch(t, 0, 0, &lp, &l0, &l0) == 0);
            p->data[best] = x0 - h;
            REQUIRE(sd_trainer_microbatch(t, 0, 0, &lm, &l0, &l0) == 0);
            p->data[best] = x0;
            double fd = (lp - lm) / (2.0 * h);
            /* a float32 loss near 1 resolves about 1e-7, so with h >= 0.01 differences
             * carry up to ~5e-6 of noise; the curvature error at this h is well under 1 % */
            CHECKF(fabs(fd - gi) <= 0.02 * fabs(fd) + 5e-6, "%s[%lld]: analytic %.6g, finite difference %.6g",
                   p->name, (long long)best, gi, fd);
            printf("%-80s analytic %+.6e  fd %+.6e\n", p->name, gi, fd);
            checked++;
        }
    }
    CHECK_INT_EQ(checked, 6);
    sd_trainer_destroy(&t);
    nn_ctx_destroy(&ctx);
}

TEST(train_lr_schedules)
{
    CHECK(sd_lr_at(SD_LR_CONSTANT, 1e-4f, 0, 10, 100) == 1e-4f);
    CHECK(sd_lr_at(SD_LR_CONSTANT_WARMUP, 1e-4f, 0, 10, 100) == 0.0f);
    CHECK(fabsf(sd_lr_at(SD_LR_CONSTANT_WARMUP, 1e-4f, 5, 10, 100) - 5e-5f) < 1e-12f);
    CHECK(sd_lr_at(SD_LR_CONSTANT_WARMUP, 1e-4f, 50, 10, 100) == 1e-4f);
    CHECK(fabsf(sd_lr_at(SD_LR_LINEAR, 1e-4f, 55, 10, 100) - 5e-5f) < 1e-12f);
    CHECK(sd_lr_at(SD_LR_LINEAR, 1e-4f, 100, 10, 100) == 0.0f);
    CHECK(fabsf(sd_lr_at(SD_LR_COSINE, 1e-4f, 55, 10, 100) - 5e-5f) < 1e-10f);
    CHECK(fabsf(sd_lr_at(SD_LR_COSINE, 1e-4f, 10, 10, 100) - 1e-4f) < 1e-12f);
    sd_lr_sched_t s;
    CHECK(sd_lr_sched_parse("cosine", &s) && s == SD_LR_COSINE);
    CHECK(!sd_lr_sched_parse("exponential", &s));
}

/* A frozen text encoder's prompt embeddings are computed once (batch of one) and
 * reused: a micro-batch gives the same bytes as running CLIP on it, and still
 * does after the text encoder is freed. */
TEST(train_cached_prompt_embeddings_are_exact)
{
    char dir[512];
    s_setup(dir, sizeof dir);
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    REQUIRE(ctx);
    sd_trainer_t *t = s_trainer(ctx, dir, true, false, 5);
    REQUIRE(t && t->ehs && !t->lora_text);
    size_t bytes = (size_t)t->nblock[0] * sizeof(float);
    float *g[3];
    double loss[3], li, lp;
    for (int k = 0; k < 3; k++) {
        REQUIRE((g[k] = malloc(bytes)));
        float *cache = t->ehs;
        if (k == 1) t->ehs = NULL; /* CLIP on the micro-batch, as before caching */
        if (k == 2) {
            sd_trainer_release_text_encoder(t);
            CHECK(t->model->clip == NULL);
        }
        REQUIRE(sd_trainer_microbatch(t, 3, 0, &loss[k], &li, &lp) == 0);
        t->ehs = cache;
        memcpy(g[k], t->lora_unet->grad, bytes);
    }
    CHECK(loss[0] == loss[1] && loss[0] == loss[2]);
    CHECK(!memcmp(g[0], g[1], bytes) && !memcmp(g[0], g[2], bytes));
    CHECK(tu_max_abs(g[0], t->nblock[0]) > 0);
    double ev;
    CHECK(sd_trainer_eval(t, &ev) == 0 && ev > 0); /* evaluation uses the cache too */
    for (int k = 0; k < 3; k++) free(g[k]);
    sd_trainer_destroy(&t);
    nn_ctx_destroy(&ctx);
}
