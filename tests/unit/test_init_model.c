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

/* A loaded parameter's k-th value, from whichever storage it has. */
static float s_value(const sd_param_t *p, int64_t k)
{
    if (!p->data16) return p->data[k];
    return p->dtype == NN_F16 ? bt_f16_to_f32(p->data16[k]) : bt_bf16_to_f32(p->data16[k]);
}

/* What a float32 value becomes in storage of type dt. */
static float s_round(float x, nn_dtype_t dt)
{
    return dt == NN_F16 ? bt_f16_to_f32(bt_f32_to_f16(x)) : dt == NN_BF16 ? bt_bf16_to_f32(bt_f32_to_bf16(x)) : x;
}

static bool want_16(sd_store_t store, nn_dtype_t file_dt)
{
    return store == SD_STORE_F16 || store == SD_STORE_BF16 || (store == SD_STORE_AUTO && file_dt != NN_F32);
}

/* Compares every parameter of a loaded part with a fresh in-memory init of the
 * same seed: the files hold file_dt, the weight matrices were kept as store. */
static void s_compare(const sd_params_t *loaded, sd_params_t *fresh, nn_ctx_t *ctx, uint64_t seed, nn_dtype_t file_dt,
                      sd_store_t store)
{
    REQUIRE(sd_params_alloc(fresh, ctx) == 0);
    REQUIRE(sd_params_init_random(fresh, seed) == 0);
    REQUIRE(loaded->n == fresh->n);
    int64_t mismatched = 0, wrong_type = 0, n16 = 0;
    for (int i = 0; i < fresh->n; i++) {
        const sd_param_t *a = &loaded->p[i], *b = &fresh->p[i];
        CHECKF(!strcmp(a->name, b->name), "parameter %d: %s vs %s", i, a->name, b->name);
        nn_dtype_t want_dt = !a->wslot                  ? NN_F32
                             : store == SD_STORE_AUTO ? file_dt
                             : store == SD_STORE_F16  ? NN_F16
                             : store == SD_STORE_BF16 ? NN_BF16
                                                      : NN_F32;
        if (a->dtype != want_dt || (want_dt == NN_F32) != (a->data16 == NULL)) wrong_type++;
        int64_t n = 1;
        for (int d = 0; d < a->ndim; d++) n *= a->shape[d];
        if (a->data16) n16 += n;
        for (int64_t k = 0; k < n; k++) {
            float want = s_round(s_round(b->data[k], file_dt), a->dtype), got = s_value(a, k);
            if (memcmp(&got, &want, 4)) mismatched++;
        }
    }
    CHECKF(mismatched == 0, "%s: %lld values differ", loaded->what, (long long)mismatched);
    CHECKF(wrong_type == 0, "%s: %lld parameters stored in the wrong type", loaded->what, (long long)wrong_type);
    CHECK_INT_EQ(n16, loaded->numel16);
    /* the weight matrices are nearly all of a model: 16-bit storage halves it */
    if (want_16(store, file_dt)) CHECKF(loaded->numel16 > loaded->numel * 9 / 10, "%s: only %lld of %lld in 16 bits",
                                        loaded->what, (long long)loaded->numel16, (long long)loaded->numel);
}

static void s_roundtrip(st_dtype_t dtype, sd_store_t store)
{
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    REQUIRE(ctx);
    char dir[512];
    static int calls; /* a folder each: a variant file of an earlier call would be found first */
    snprintf(dir, sizeof dir, "%s/model-%d", tu_tmpdir(), calls++);
    REQUIRE(sd_model_init(ctx, dir, SD_ARCH_TINY, 7, dtype, NULL, NULL) == 0);
    sd_model_t *m = sd_model_load_as(ctx, dir, SD_PART_ALL, store);
    REQUIRE(m);
    nn_dtype_t file_dt = dtype == ST_F16 ? NN_F16 : dtype == ST_BF16 ? NN_BF16 : NN_F32;
    sd_unet_t *u = sd_unet_new(&m->unet->cfg);
    sd_vae_t *v = sd_vae_new(&m->vae->cfg);
    sd_clip_t *c = sd_clip_new(&m->clip->cfg);
    REQUIRE(u && v && c);
    s_compare(&m->unet->params, &u->params, ctx, 7 * 3 + 2, file_dt, store);
    s_compare(&m->vae->params, &v->params, ctx, 7 * 3 + 1, file_dt, store);
    s_compare(&m->clip->params, &c->params, ctx, 7 * 3 + 0, file_dt, store);
    CHECK_INT_EQ(sd_tok_vocab_size(m->tok), 49408);
    CHECK_INT_EQ(m->default_sampler, SD_SCHED_PNDM);
    sd_unet_destroy(&u);
    sd_vae_destroy(&v);
    sd_clip_destroy(&c);
    sd_model_destroy(&m);
    nn_ctx_destroy(&ctx);
}

TEST(init_model_reloads_bit_identically) { s_roundtrip(ST_F32, SD_STORE_AUTO); }
/* fp16 files: the weight matrices stay fp16 in memory (auto), or are widened at load (fp32) */
TEST(init_model_fp16_reloads_rounded)
{
    s_roundtrip(ST_F16, SD_STORE_AUTO);
    s_roundtrip(ST_F16, SD_STORE_F32);
}
/* bf16 files stay bf16; float32 files narrowed on request round to nearest even */
TEST(init_model_weights_kept_in_16_bits)
{
    s_roundtrip(ST_BF16, SD_STORE_AUTO);
    s_roundtrip(ST_F32, SD_STORE_F16);
    s_roundtrip(ST_F32, SD_STORE_BF16);
    s_roundtrip(ST_F16, SD_STORE_BF16); /* fp16 -> bf16 rounds too */
}

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
