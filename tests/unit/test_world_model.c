/*
 * test_world_model.c — booth's own base model before training (diffusion/world_model.h): the folder
 * loads as any model does; its tokenizer makes every word of the world's captions one token; its
 * constructed VAE is an exact codec (decode(encode(x)) = x, the latents are the pixels); the
 * initialised UNet predicts zero noise; the same seed writes the same bytes.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/fileio.h"
#include "diffusion/pipeline.h"
#include "diffusion/tokenizer.h"
#include "diffusion/unet.h"
#include "diffusion/vae.h"
#include "diffusion/world.h"
#include "diffusion/world_model.h"
#include "nn/nn.h"
#include "testutil.h"

static sd_model_t *s_init(nn_ctx_t *ctx, const char *name, int res, uint64_t seed)
{
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/%s", tu_tmpdir(), name);
    if (sd_world_model_init(ctx, dir, res, seed)) return NULL;
    return sd_model_load(ctx, dir, SD_PART_ALL);
}

TEST(world_model_tokenizer_has_every_word_as_one_token)
{
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 1);
    REQUIRE(ctx);
    sd_model_t *m = s_init(ctx, "tok", 32, 0);
    REQUIRE(m);
    CHECK(sd_tok_max_length(m->tok) == SD_WORLD_MAX_TOKENS);
    int worst = 0;
    for (int i = 0; i < 600; i++) {
        sd_scene_t s;
        if (i < 500)
            sd_world_scene(7, (uint64_t)i, &s);
        else
            sd_world_subject_scene(7, (uint64_t)i, &s);
        char cap[256];
        REQUIRE(sd_world_caption(&s, NULL, cap, sizeof cap) > 0);
        int words = 1;
        for (const char *p = cap; *p; p++) words += *p == ' ';
        sd_tok_result_t r;
        REQUIRE(sd_tokenize(m->tok, cap, &r) == 0);
        CHECKF(r.n_tokens == words, "\"%s\": %d tokens for %d words", cap, r.n_tokens, words);
        CHECKF(!r.truncated, "\"%s\" is truncated", cap);
        if (r.n_ids > worst) worst = r.n_ids;
        sd_tok_result_free(&r);
    }
    /* a word the world never says still tokenizes (into letters) */
    sd_tok_result_t r;
    REQUIRE(sd_tokenize(m->tok, "a zebra", &r) == 0);
    CHECK(r.n_tokens > 2);
    sd_tok_result_free(&r);
    printf("longest caption: %d ids of %d; vocabulary %lld\n", worst, SD_WORLD_MAX_TOKENS,
           (long long)m->clip->cfg.vocab_size);
    sd_model_destroy(&m);
    nn_ctx_destroy(&ctx);
}

TEST(world_model_vae_is_an_exact_codec)
{
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 1);
    REQUIRE(ctx);
    sd_model_t *m = s_init(ctx, "vae", 32, 0);
    REQUIRE(m);
    const int B = 6, S = 32;
    float *x = malloc(sizeof(float) * B * 3 * S * S), *mean = malloc(sizeof(float) * B * 4 * S * S),
          *logvar = malloc(sizeof(float) * B * 4 * S * S), *y = malloc(sizeof(float) * B * 3 * S * S);
    REQUIRE(x && mean && logvar && y);
    for (int b = 0; b < B; b++) {
        sd_scene_t s;
        sd_world_scene(3, (uint64_t)b, &s);
        bt_img_t *img = sd_world_render(&s, S);
        REQUIRE(img);
        bt_img_to_f32_chw(img, x + b * 3 * S * S);
        bt_img_destroy(&img);
    }
    sd_run_t r = {.nn = ctx, .scratch = &m->scratch};
    CHECK(sd_vae_latent_size(m->vae, S) == S);
    REQUIRE(sd_vae_encode(&r, m->vae, mean, logvar, x, B, S, S) == 0);
    double enc = 0, zero = 0, dec = 0;
    for (int b = 0; b < B; b++)
        for (int c = 0; c < 4; c++)
            for (int k = 0; k < S * S; k++) {
                float v = mean[(b * 4 + c) * S * S + k];
                if (c < 3) enc = fmax(enc, fabs(v - x[(b * 3 + c) * S * S + k]));
                else zero = fmax(zero, fabs(v));
            }
    REQUIRE(sd_vae_decode(&r, m->vae, y, mean, B, S, S) == 0);
    for (int k = 0; k < B * 3 * S * S; k++) dec = fmax(dec, fabs(y[k] - x[k]));
    /* one 8-bit level is 2/255 = 7.8e-3 in [-1, 1] */
    CHECKF(enc <= 1e-3, "latent vs pixels: %.3g", enc);
    CHECKF(zero <= 1e-6, "the fourth latent channel: %.3g", zero);
    CHECKF(dec <= 1e-3, "decode(encode(x)) vs x: %.3g", dec);
    CHECKF(logvar[0] <= -29.0f, "logvar %g", logvar[0]);
    printf("constructed VAE at %d px: latent - pixel %.2g, round trip %.2g (an 8-bit level is 7.8e-3)\n", S, enc, dec);
    free(x);
    free(mean);
    free(logvar);
    free(y);
    sd_model_destroy(&m);
    nn_ctx_destroy(&ctx);
}

TEST(world_model_init_predicts_zero_and_is_seeded)
{
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 1);
    REQUIRE(ctx);
    sd_model_t *m = s_init(ctx, "a", 16, 5);
    REQUIRE(m);
    const int64_t S = 16, T = SD_WORLD_MAX_TOKENS, C = m->clip->cfg.hidden_size;
    float lat[4 * 16 * 16], out[4 * 16 * 16], ctxv[SD_WORLD_MAX_TOKENS * 64], t = 500;
    tu_rng_t rng = tu_rng(1);
    tu_fill_normal(&rng, lat, 4 * S * S, 1.0f);
    tu_fill_normal(&rng, ctxv, T * C, 1.0f);
    sd_run_t r = {.nn = ctx, .scratch = &m->scratch};
    REQUIRE(sd_unet_forward(&r, m->unet, out, lat, &t, ctxv, 1, S, S, T) == 0);
    CHECK(tu_max_abs(out, 4 * S * S) == 0.0);
    sd_model_destroy(&m);
    char a[1024], b[1024];
    REQUIRE(sd_world_model_init(ctx, (snprintf(a, sizeof a, "%s/b", tu_tmpdir()), a), 16, 5) == 0);
    snprintf(a, sizeof a, "%s/a/unet/diffusion_pytorch_model.safetensors", tu_tmpdir());
    snprintf(b, sizeof b, "%s/b/unet/diffusion_pytorch_model.safetensors", tu_tmpdir());
    char *da, *db;
    size_t na, nb;
    REQUIRE(bt_read_file(a, &da, &na) == 0 && bt_read_file(b, &db, &nb) == 0);
    CHECK(na == nb && !memcmp(da, db, na));
    free(da);
    free(db);
    nn_ctx_destroy(&ctx);
}
