/*
 * test_store.c — weight matrices kept in 16 bits compute the same bits as
 * float32: a tiny model written in fp16 (and bf16) is loaded twice, its weights
 * left 16-bit (SD_STORE_AUTO) and widened at load (SD_STORE_F32), and the text
 * encoder, UNet, VAE and a DreamBooth step with UNet and text-encoder LoRA give
 * byte-identical outputs and gradients, while the 16-bit model takes about half
 * the memory.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "diffusion/dreambooth.h"
#include "diffusion/init.h"
#include "diffusion/lora.h"
#include "diffusion/pipeline.h"
#include "testutil.h"

enum { T = 77 };

typedef struct {
    sd_model_t *m;
    sd_lora_set_t *lu, *lt;
    sd_db_t *db;
} s_side_t;

static void s_side_open(s_side_t *s, nn_ctx_t *ctx, const char *dir, sd_store_t store)
{
    memset(s, 0, sizeof *s);
    s->m = sd_model_load_as(ctx, dir, SD_PART_ALL, store);
    REQUIRE(s->m);
    s->lu = sd_lora_attach_unet(s->m->unet, 4, 4.0f, NULL);
    s->lt = sd_lora_attach_clip(s->m->clip, 4, 4.0f, NULL);
    REQUIRE(s->lu && s->lt);
    REQUIRE(sd_lora_alloc(s->lu, ctx, true) == 0 && sd_lora_alloc(s->lt, ctx, true) == 0);
    REQUIRE(sd_lora_init(s->lu, 3) == 0 && sd_lora_init(s->lt, 4) == 0);
    tu_rng_t rng = tu_rng(9); /* B = 0 after init: give it values so every path computes something */
    sd_lora_set_t *sets[2] = {s->lu, s->lt};
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < sets[k]->params.n; i++) {
            sd_param_t *p = &sets[k]->params.p[i];
            if (strstr(p->name, "lora_B")) tu_fill_normal(&rng, p->data, p->shape[0] * p->shape[1], 0.05f);
        }
    s->db = sd_db_new(s->m, s->lu, s->lt, true);
    REQUIRE(s->db);
}

/* Floats in a LoRA set's block (its gradient buffer has the same layout). */
static int64_t s_block(const sd_lora_set_t *set)
{
    const sd_param_t *last = &set->params.p[set->params.n - 1];
    return (last->data - set->params.mem) + last->shape[0] * last->shape[1];
}

static void s_side_close(s_side_t *s)
{
    sd_db_destroy(&s->db);
    sd_lora_destroy(&s->lu);
    sd_lora_destroy(&s->lt);
    sd_model_destroy(&s->m);
}

#define SAME(what, a, b, n) CHECKF(!memcmp((a), (b), (size_t)(n) * sizeof(float)), "%s: %s differs from fp32", file, what)

static void s_compare(st_dtype_t file_dtype)
{
    const char *file = st_dtype_name(file_dtype);
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 2);
    REQUIRE(ctx);
    char dir[512];
    snprintf(dir, sizeof dir, "%s/tiny-%s", tu_tmpdir(), file);
    REQUIRE(sd_model_init(ctx, dir, SD_ARCH_TINY, 11, file_dtype, NULL, NULL) == 0);
    s_side_t a, b; /* a: 16-bit resident, b: float32 */
    s_side_open(&a, ctx, dir, SD_STORE_AUTO);
    s_side_open(&b, ctx, dir, SD_STORE_F32);
    size_t bytes16 = sd_model_param_bytes(a.m), bytes32 = sd_model_param_bytes(b.m);
    printf("%s: parameters %.2f MiB resident vs %.2f MiB in float32\n", file, bytes16 / 1048576.0,
           bytes32 / 1048576.0);
    CHECKF(bytes16 < bytes32 * 0.52, "%s: 16-bit model takes %zu bytes, float32 %zu", file, bytes16, bytes32);

    /* text encoder, batch 2 */
    int32_t ids[2 * T];
    for (int i = 0; i < 2 * T; i++) ids[i] = i % T == 0 ? 49406 : i % T < 7 ? 320 + 97 * (i % T) + i / T : 49407;
    int64_t C = a.m->clip->cfg.hidden_size;
    float *ea = malloc(2 * T * C * sizeof(float)), *eb = malloc(2 * T * C * sizeof(float));
    sd_run_t ra = {.nn = ctx, .scratch = &a.m->scratch}, rb = {.nn = ctx, .scratch = &b.m->scratch};
    REQUIRE(ea && eb);
    REQUIRE(sd_clip_forward(&ra, a.m->clip, ea, NULL, ids, 2, T, 0) == 0);
    REQUIRE(sd_clip_forward(&rb, b.m->clip, eb, NULL, ids, 2, T, 0) == 0);
    SAME("text encoder output", ea, eb, 2 * T * C);
    int32_t bad[T];
    memcpy(bad, ids, sizeof bad);
    bad[3] = 1 << 20; /* the 16-bit table's row gather checks ids like the embedding kernel */
    CHECK(sd_clip_forward(&ra, a.m->clip, ea, NULL, bad, 1, T, 0) == BT_EINVAL);

    /* UNet forward, batch 2 (LoRA on) */
    int64_t h = 16, w = 16, per = 4 * h * w;
    float *x = malloc(2 * per * sizeof(float)), *ua = malloc(2 * per * sizeof(float)), *ub = malloc(2 * per * sizeof(float));
    float tsteps[2] = {10.0f, 900.0f};
    tu_rng_t rng = tu_rng(1);
    REQUIRE(x && ua && ub);
    tu_fill_normal(&rng, x, 2 * per, 1.0f);
    REQUIRE(sd_unet_forward(&ra, a.m->unet, ua, x, tsteps, eb, 2, h, w, T) == 0);
    REQUIRE(sd_unet_forward(&rb, b.m->unet, ub, x, tsteps, eb, 2, h, w, T) == 0);
    SAME("UNet output", ua, ub, 2 * per);

    /* VAE decode and encode */
    int64_t px = 8 * h;
    float *ia = malloc(3 * px * px * sizeof(float)), *ib = malloc(3 * px * px * sizeof(float));
    float *ma = malloc(2 * per * sizeof(float)), *mb = malloc(2 * per * sizeof(float));
    REQUIRE(ia && ib && ma && mb);
    REQUIRE(sd_vae_decode(&ra, a.m->vae, ia, x, 1, h, w) == 0);
    REQUIRE(sd_vae_decode(&rb, b.m->vae, ib, x, 1, h, w) == 0);
    SAME("VAE decode", ia, ib, 3 * px * px);
    REQUIRE(sd_vae_encode(&ra, a.m->vae, ma, ma + per, ia, 1, px, px) == 0);
    REQUIRE(sd_vae_encode(&rb, b.m->vae, mb, mb + per, ia, 1, px, px) == 0);
    SAME("VAE encode", ma, mb, 2 * per);

    /* a DreamBooth step (gradient checkpointing on): loss and every LoRA gradient */
    float *noise = malloc(2 * per * sizeof(float));
    REQUIRE(noise);
    tu_fill_normal(&rng, noise, 2 * per, 1.0f);
    int64_t ts[2] = {100, 700};
    float weights[2] = {1.0f, 1.0f};
    sd_db_batch_t batch = {.n = 2, .T = T, .h = h, .w = w, .ids = ids, .latents = x, .noise = noise,
                           .timesteps = ts, .weights = weights};
    double la, lb;
    REQUIRE(sd_lora_zero_grad(a.lu) == 0 && sd_lora_zero_grad(a.lt) == 0);
    REQUIRE(sd_lora_zero_grad(b.lu) == 0 && sd_lora_zero_grad(b.lt) == 0);
    REQUIRE(sd_db_step(a.db, &batch, &la, NULL) == 0);
    REQUIRE(sd_db_step(b.db, &batch, &lb, NULL) == 0);
    CHECKF(la == lb, "%s: loss %.9g vs %.9g", file, la, lb);
    SAME("UNet LoRA gradients", a.lu->grad, b.lu->grad, s_block(a.lu));
    SAME("text-encoder LoRA gradients", a.lt->grad, b.lt->grad, s_block(a.lt));
    CHECK(tu_max_abs(a.lt->grad, s_block(a.lt)) > 0); /* the comparison saw real gradients */

    free(ea);
    free(eb);
    free(x);
    free(ua);
    free(ub);
    free(ia);
    free(ib);
    free(ma);
    free(mb);
    free(noise);
    s_side_close(&a);
    s_side_close(&b);
    nn_ctx_destroy(&ctx);
}

TEST(store_fp16_weights_compute_the_fp32_bits) { s_compare(ST_F16); }
TEST(store_bf16_weights_compute_the_fp32_bits) { s_compare(ST_BF16); }
