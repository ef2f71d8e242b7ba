/*
 * test_init_model.c — `init-model` folders reload bit-identically (float32),
 * to the nearest half (fp16), load through the generic model loader, and the
 * sd15/sd21 architectures register the real models' parameter counts.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/half.h"
#include "diffusion/init.h"
#include "diffusion/pipeline.h"
#include "testutil.h"

/* Compares every parameter of a loaded part with a fresh in-memory init of the same seed. */
static void s_compare(const sd_params_t *loaded, sd_params_t *fresh, nn_ctx_t *ctx, uint64_t seed, bool fp16)
{
    REQUIRE(sd_params_alloc(fresh, ctx) == 0);
    REQUIRE(sd_params_init_random(fresh, seed) == 0);
    REQUIRE(loaded->n == fresh->n);
    int64_t mismatched = 0;
    for (int i = 0; i < fresh->n; i++) {
        const sd_param_t *a = &loaded->p[i], *b = &fresh->p[i];
        CHECKF(!strcmp(a->name, b->name), "parameter %d: %s vs %s", i, a->name, b->name);
        int64_t n = 1;
        for (int d = 0; d < a->ndim; d++) n *= a->shape[d];
        for (int64_t k = 0; k < n; k++) {
            float want = fp16 ? bt_f16_to_f32(bt_f32_to_f16(b->data[k])) : b->data[k];
            if (memcmp(&a->data[k], &want, 4)) mismatched++;
        }
    }
    CHECKF(mismatched == 0, "%s: %lld values differ", loaded->what, (long long)mismatched);
}

static void s_roundtrip(st_dtype_t dtype)
{
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    REQUIRE(ctx);
    char dir[512];
    snprintf(dir, sizeof dir, "%s/model", tu_tmpdir());
    REQUIRE(sd_model_init(ctx, dir, SD_ARCH_TINY, 7, dtype, NULL, NULL) == 0);
    sd_model_t *m = sd_model_load(ctx, dir, SD_PART_ALL);
    REQUIRE(m);
    bool fp16 = dtype == ST_F16;
    sd_unet_t *u = sd_unet_new(&m->unet->cfg);
    sd_vae_t *v = sd_vae_new(&m->vae->cfg);
    sd_clip_t *c = sd_clip_new(&m->clip->cfg);
    REQUIRE(u && v && c);
    s_compare(&m->unet->params, &u->params, ctx, 7 * 3 + 2, fp16);
    s_compare(&m->vae->params, &v->params, ctx, 7 * 3 + 1, fp16);
    s_compare(&m->clip->params, &c->params, ctx, 7 * 3 + 0, fp16);
    CHECK_INT_EQ(sd_tok_vocab_size(m->tok), 49408);
    CHECK_INT_EQ(m->default_sampler, SD_SCHED_PNDM);
    sd_unet_destroy(&u);
    sd_vae_destroy(&v);
    sd_clip_destroy(&c);
    sd_model_destroy(&m);
    nn_ctx_destroy(&ctx);
}

TEST(init_model_reloads_bit_identically) { s_roundtrip(ST_F32); }
TEST(init_model_fp16_reloads_rounded) { s_roundtrip(ST_F16); }

/* The tiny preset is the oracle's architecture: its config loads the oracle's weights. */
TEST(init_model_tiny_is_the_oracle_architecture)
{
    sd_unet_config_t u;
    sd_vae_config_t v;
    sd_clip_config_t c;
    sd_arch_configs(SD_ARCH_TINY, &u, &v, &c);
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    REQUIRE(ctx);
    sd_unet_t *unet = sd_unet_new(&u);
    REQUIRE(unet && sd_params_alloc(&unet->params, ctx) == 0);
    char path[512];
    snprintf(path, sizeof path, "%s", tu_fixture_path("tiny-sd/unet"));
    CHECK(sd_params_load_dir(&unet->params, path, "diffusion_pytorch_model") == 0);
    sd_unet_destroy(&unet);
    nn_ctx_destroy(&ctx);
}

/* Parameter counts of the real architectures (diffusers: SD 1.5 UNet 859,520,964;
 * SD 2.1 UNet 865,910,724; VAE 83,653,863; CLIP ViT-L text 123,060,480;
 * OpenCLIP-H text (23 layers) 340,387,840). */
TEST(init_model_real_architectures_have_the_real_sizes)
{
    struct {
        sd_arch_t arch;
        int64_t unet, vae, clip;
    } want[] = {{SD_ARCH_SD15, 859520964, 83653863, 123060480}, {SD_ARCH_SD21, 865910724, 83653863, 340387840}};
    for (int i = 0; i < 2; i++) {
        sd_unet_config_t u;
        sd_vae_config_t v;
        sd_clip_config_t c;
        sd_arch_configs(want[i].arch, &u, &v, &c);
        sd_unet_t *unet = sd_unet_new(&u);
        sd_vae_t *vae = sd_vae_new(&v);
        sd_clip_t *clip = sd_clip_new(&c);
        REQUIRE(unet && vae && clip);
        int64_t nu = 0, nv = 0, nc = 0;
        for (int k = 0; k < unet->params.n; k++) {
            int64_t n = 1;
            for (int d = 0; d < unet->params.p[k].ndim; d++) n *= unet->params.p[k].shape[d];
            nu += n;
        }
        for (int k = 0; k < vae->params.n; k++) {
            int64_t n = 1;
            for (int d = 0; d < vae->params.p[k].ndim; d++) n *= vae->params.p[k].shape[d];
            nv += n;
        }
        for (int k = 0; k < clip->params.n; k++) {
            int64_t n = 1;
            for (int d = 0; d < clip->params.p[k].ndim; d++) n *= clip->params.p[k].shape[d];
            nc += n;
        }
        CHECK_INT_EQ(nu, want[i].unet);
        CHECK_INT_EQ(nv, want[i].vae);
        CHECK_INT_EQ(nc, want[i].clip);
        sd_unet_destroy(&unet);
        sd_vae_destroy(&vae);
        sd_clip_destroy(&clip);
    }
}
