/*
 * test_variant.c — booth against diffusers 0.25.1 / transformers 4.35.2 on a second
 * model, tests/fixtures/variant/model, made by scripts/make_variant_oracle.py.
 *
 * The variant differs from the oracle's tiny SD 1.x model in every way the SD 1.x/2.x
 * family varies: a DownBlock2D first, per-block lists for layers, transformer depth and
 * (legacy) head counts, linear projections, only-cross-attention in one block, cross
 * attention width 48, sin-first time features with freq_shift 1, 8 norm groups, eps 1e-6;
 * a gelu CLIP with the non-legacy pooled-output rule, saved in fp16; a 3-block VAE with
 * another scaling factor and the old attention names; SD 2.x's tokenizer (pad "!"); DDIM
 * with v-prediction and trailing spacing. Latents are non-square and not multiples of the
 * UNet's downsampling, so its up path interpolates to the skip sizes.
 *
 * Limits are the oracle README's. Every failure names the part ("clip:", "unet:", "vae:",
 * "pipeline:") and what was compared.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diffusion/config.h"
#include "diffusion/pipeline.h"
#include "nn/memory.h"
#include "testutil.h"

#define REF "variant/reference.safetensors"

static const char *s_model_path(const char *part)
{
    static char path[1024];
    snprintf(path, sizeof path, "%s%s%s", tu_fixture_path("variant/model"), part[0] ? "/" : "", part);
    return path;
}

/* The VAE's recorded intermediates; the rest belong to the UNet run. */
static bool s_vae_module(const char *name)
{
    return !strncmp(name, "encoder.", 8) || !strncmp(name, "decoder.", 8) || !strcmp(name, "quant_conv") ||
           !strcmp(name, "post_quant_conv");
}

static int s_recorded(const st_file_t *fx, bool vae)
{
    int n = 0;
    for (int i = 0; i < st_count(fx); i++) {
        const char *name = st_at(fx, i)->name;
        if (!strncmp(name, "intermediate.", 13) && s_vae_module(name + 13) == vae) n++;
    }
    return n;
}

/* The UNet/CLIP limit: max abs <= atol, or relative L2 <= rtol. */
static double s_check_either(const char *what, const float *a, const float *b, int64_t n, double atol, double rtol)
{
    double d = tu_max_abs_diff(a, b, n), rel = tu_rel_l2(a, b, n);
    CHECKF(d <= atol || rel <= rtol, "%s: max abs %.3g (limit %.3g), rel L2 %.3g (limit %.3g)", what, d, atol, rel,
           rtol);
    return d;
}

static void s_ids_equal(const char *what, const int32_t *got, const int64_t *want, int n)
{
    for (int i = 0; i < n; i++)
        if (got[i] != want[i]) {
            bt_test_fail(__FILE__, __LINE__, "%s: id %d is %d, reference %lld", what, i, got[i], (long long)want[i]);
            return;
        }
}

/* ---------------------------------------------------------------- CLIP */

typedef struct {
    const float *hidden; /* reference hidden_states [L+1, B, T, C] */
    int64_t per;         /* B*T*C */
    int checked;
} s_clip_hook_t;

static void s_clip_hook(void *user, const char *name, const float *data, int ndim, const int64_t *shape)
{
    (void)ndim;
    (void)shape;
    s_clip_hook_t *h = user;
    int l;
    if (sscanf(name, "hidden_states.%d", &l) != 1) return;
    char what[64];
    snprintf(what, sizeof what, "clip: hidden_states[%d]", l);
    tu_check_close(what, data, h->hidden + l * h->per, h->per, 1e-4);
    h->checked++;
}

TEST(variant_tokenizer_and_clip)
{
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    REQUIRE(ctx);
    sd_model_t *m = sd_model_load(ctx, s_model_path(""), SD_PART_TOKENIZER | SD_PART_TEXT);
    REQUIRE(m);
    st_file_t *fx = tu_fixture(REF);
    REQUIRE(fx);
    const sd_clip_config_t *cc = &m->clip->cfg;
    CHECK(cc->act == SD_ACT_GELU);
    CHECK_INT_EQ(cc->eos_token_id, 49407);
    CHECK_INT_EQ(cc->hidden_size, 48);
    CHECK_INT_EQ(sd_tok_pad_id(m->tok), 0); /* SD 2.x: pad "!" */

    /* tokenizer: the reference ids exactly */
    int64_t want_ids[2 * 77];
    REQUIRE(st_read_i64(st_find(fx, "clip.input_ids"), want_ids) == 0);
    int32_t ids[2 * 77];
    for (int b = 0; b < 2; b++) {
        char key[32];
        snprintf(key, sizeof key, "clip.prompt.%d", b);
        const char *prompt = st_metadata(fx, key);
        REQUIRE(prompt);
        sd_tok_result_t tr;
        REQUIRE(sd_tokenize(m->tok, prompt, &tr) == 0);
        REQUIRE(tr.max_length == 77);
        memcpy(ids + b * 77, tr.input_ids, 77 * sizeof(int32_t));
        CHECK(tr.truncated == (b == 1)); /* prompt 1 is longer than 77 ids */
        sd_tok_result_free(&tr);
        snprintf(key, sizeof key, "clip: input_ids[%d]", b);
        s_ids_equal(key, ids + b * 77, want_ids + b * 77, 77);
    }

    int64_t n;
    float *want = tu_load_f32(fx, "clip.last_hidden_state", &n);
    double *want64 = tu_load_f64(fx, "clip.last_hidden_state_f64", NULL);
    float *pooled_want = tu_load_f32(fx, "clip.pooler_output", NULL);
    double *pooled64 = tu_load_f64(fx, "clip.pooler_output_f64", NULL);
    float *hidden = tu_load_f32(fx, "clip.hidden_states", NULL);
    REQUIRE(want && want64 && pooled_want && pooled64 && hidden && n == 2 * 77 * 48);
    float *out = calloc((size_t)n, sizeof(float)), pooled[2 * 48];

    bt_stack_t scratch;
    bt_stack_init(&scratch, "scratch", 0, NULL, NULL, NULL);
    s_clip_hook_t hc = {.hidden = hidden, .per = n};
    sd_run_t run = {.nn = ctx, .scratch = &scratch, .hook = s_clip_hook, .hook_user = &hc};
    REQUIRE(sd_clip_forward(&run, m->clip, out, pooled, ids, 2, 77, 0) == 0);
    CHECK_INT_EQ(hc.checked, 3);
    double d = tu_check_close("clip: last_hidden_state", out, want, n, 1e-4);
    double d64 = tu_check_close_f64("clip: last_hidden_state vs f64", out, want64, n, 1e-4);
    double dp = tu_check_close("clip: pooler_output", pooled, pooled_want, 2 * 48, 1e-4);
    tu_check_close_f64("clip: pooler_output vs f64", pooled, pooled64, 2 * 48, 1e-4);
    printf("clip: last_hidden_state max abs %.3g (f32 ref), %.3g (f64 ref); pooler %.3g\n", d, d64, dp);
    CHECK(scratch.live == 0);

    bt_stack_free(&scratch);
    free(out);
    free(want);
    free(want64);
    free(pooled_want);
    free(pooled64);
    free(hidden);
    st_close(&fx);
    sd_model_destroy(&m);
    nn_ctx_destroy(&ctx);
}

/* ---------------------------------------------------------------- UNet */

TEST(variant_unet)
{
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    REQUIRE(ctx);
    /* unet/ holds only diffusion_pytorch_model.fp16.safetensors */
    sd_unet_t *u = sd_unet_load(ctx, s_model_path("unet"), SD_STORE_AUTO);
    REQUIRE(u);
    const sd_unet_config_t *c = &u->cfg;
    CHECK_INT_EQ(c->n_blocks, 3);
    CHECK(!c->down_cross[0] && c->down_cross[1] && c->down_cross[2]);
    CHECK_INT_EQ(c->heads[1], 3); /* attention_head_dim [2, 3, 4]: legacy head counts */
    CHECK_INT_EQ(c->heads[2], 4);
    CHECK_INT_EQ(c->layers_per_block[1], 2);
    CHECK_INT_EQ(c->transformer_layers[1], 2);
    CHECK(c->only_cross_attention[1] && !c->mid_only_cross_attention);
    CHECK(c->use_linear_projection && !c->flip_sin_to_cos && c->freq_shift == 1.0f);
    CHECK_INT_EQ(u->params.n, 500); /* every tensor of the file */
    st_file_t *fx = tu_fixture(REF);
    REQUIRE(fx);
    int64_t n;
    float *sample = tu_load_f32(fx, "unet.sample", &n);
    float *ehs = tu_load_f32(fx, "unet.encoder_hidden_states", NULL);
    float *want = tu_load_f32(fx, "unet.noise_pred", NULL);
    double *want64 = tu_load_f64(fx, "unet.noise_pred_f64", NULL);
    REQUIRE(sample && ehs && want && want64 && n == 2 * 4 * 9 * 14);
    int64_t steps[2];
    REQUIRE(st_read_i64(st_find(fx, "unet.timestep"), steps) == 0);
    float t[2] = {(float)steps[0], (float)steps[1]};
    float *out = calloc((size_t)n, sizeof(float));

    bt_stack_t scratch;
    bt_stack_init(&scratch, "scratch", 0, NULL, NULL, NULL);
    tu_intermediates_t hc = {.fx = fx, .atol = 1e-4, .rtol = 1e-5};
    sd_run_t run = {.nn = ctx, .scratch = &scratch, .hook = tu_intermediates_hook, .hook_user = &hc};
    REQUIRE(sd_unet_forward(&run, u, out, sample, t, ehs, 2, 9, 14, 77) == 0);
    double d = s_check_either("unet: noise_pred", out, want, n, 1e-4, 1e-5);
    double d64 = tu_max_abs_diff_f64(out, want64, n);
    CHECKF(d64 <= 1e-4, "unet: noise_pred vs f64: max abs %.3g (limit 1e-4)", d64);
    int recorded = s_recorded(fx, false);
    CHECKF(hc.checked == recorded && recorded > 0, "unet: compared %d of %d recorded intermediates", hc.checked,
           recorded);
    printf("unet: noise_pred max abs %.3g (f32 ref), %.3g (f64 ref), rel L2 %.3g; %d intermediates, worst %.3g at %s\n",
           d, d64, tu_rel_l2(out, want, n), hc.checked, hc.worst, hc.worst_name);
    CHECK(scratch.live == 0);

    /* batch element 1 alone gives the same output as inside the batch */
    float *one = calloc((size_t)n / 2, sizeof(float));
    run.hook = NULL;
    REQUIRE(sd_unet_forward(&run, u, one, sample + n / 2, t + 1, ehs + 77 * 48, 1, 9, 14, 77) == 0);
    tu_check_close("unet: batch element 1 alone", one, out + n / 2, n / 2, 1e-5);

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

/*
 * diffusers 0.25.1 hands only_cross_attention to the down and up blocks only:
 * UNetMidBlock2DCrossAttn takes no such argument, so the mid block's attn1 stays
 * self-attention even when the last down block is only-cross (the script checks this
 * on diffusers itself and records the shapes in the metadata key
 * "unet.only_cross_last_block.attn1_to_k_shapes"). mid_block_only_cross_attention
 * configures UNetMidBlock2DSimpleCrossAttn, which booth does not implement.
 */
TEST(variant_unet_mid_block_ignores_only_cross_attention)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/config.json", tu_tmpdir());
    FILE *f = fopen(path, "w");
    REQUIRE(f);
    fputs("{\"_class_name\": \"UNet2DConditionModel\", \"attention_head_dim\": [2, 3, 4],"
          " \"block_out_channels\": [16, 24, 32], \"cross_attention_dim\": 48,"
          " \"down_block_types\": [\"DownBlock2D\", \"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\"],"
          " \"up_block_types\": [\"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\", \"UpBlock2D\"],"
          " \"mid_block_type\": \"UNetMidBlock2DCrossAttn\", \"mid_block_only_cross_attention\": null,"
          " \"only_cross_attention\": [false, false, true], \"layers_per_block\": [1, 2, 1],"
          " \"transformer_layers_per_block\": [1, 2, 1], \"norm_num_groups\": 8,"
          " \"use_linear_projection\": true}",
          f);
    fclose(f);
    sd_unet_config_t cfg;
    REQUIRE(sd_unet_config_load(path, &cfg) == 0);
    CHECKF(!cfg.mid_only_cross_attention, "unet config: the mid block must keep self-attention in attn1");
    sd_unet_t *u = sd_unet_new(&cfg);
    REQUIRE(u);
    /* diffusers' shapes: mid attn1.to_k [32, 32]; up_blocks.0 and down_blocks.2 attn1.to_k [32, 48] */
    CHECK_INT_EQ(u->mid_attn.blocks[0].attn1.kv_dim, 32);
    CHECK_INT_EQ(u->up[0].attns[0].blocks[0].attn1.kv_dim, 48);
    CHECK_INT_EQ(u->down[2].attns[0].blocks[0].attn1.kv_dim, 48);
    sd_unet_destroy(&u);
}

/* ----------------------------------------------------------------- VAE */

TEST(variant_vae)
{
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    REQUIRE(ctx);
    /* mid-block attention stored as query/key/value/proj_attn */
    sd_vae_t *v = sd_vae_load(ctx, s_model_path("vae"), SD_STORE_AUTO);
    REQUIRE(v);
    CHECK(fabsf(v->cfg.scaling_factor - 0.13025f) < 1e-7f);
    CHECK_INT_EQ(sd_vae_latent_size(v, 20), 5);
    CHECK_INT_EQ(sd_vae_latent_size(v, 36), 9);
    st_file_t *fx = tu_fixture(REF);
    REQUIRE(fx);
    int64_t ni, nl;
    float *image = tu_load_f32(fx, "vae.image", &ni);
    float *mean_want = tu_load_f32(fx, "vae.posterior_mean", &nl);
    float *logvar_want = tu_load_f32(fx, "vae.posterior_logvar", NULL);
    double *mean64 = tu_load_f64(fx, "vae.posterior_mean_f64", NULL);
    double *logvar64 = tu_load_f64(fx, "vae.posterior_logvar_f64", NULL);
    float *z = tu_load_f32(fx, "vae.z", NULL);
    float *dec_want = tu_load_f32(fx, "vae.decoded", NULL);
    double *dec64 = tu_load_f64(fx, "vae.decoded_f64", NULL);
    REQUIRE(image && mean_want && logvar_want && mean64 && logvar64 && z && dec_want && dec64);
    REQUIRE(ni == 2 * 3 * 20 * 36 && nl == 2 * 4 * 5 * 9);
    float *mean = calloc((size_t)nl, sizeof(float)), *logvar = calloc((size_t)nl, sizeof(float));
    float *dec = calloc((size_t)ni, sizeof(float));

    bt_stack_t scratch;
    bt_stack_init(&scratch, "scratch", 0, NULL, NULL, NULL);
    tu_intermediates_t hc = {.fx = fx, .atol = 3e-4, .rtol = 1e-5};
    sd_run_t run = {.nn = ctx, .scratch = &scratch, .hook = tu_intermediates_hook, .hook_user = &hc};
    REQUIRE(sd_vae_encode(&run, v, mean, logvar, image, 2, 20, 36) == 0);
    double dm = tu_check_close("vae: posterior_mean", mean, mean_want, nl, 1e-4);
    double dl = tu_check_close("vae: posterior_logvar", logvar, logvar_want, nl, 1e-4);
    tu_check_close_f64("vae: posterior_mean vs f64", mean, mean64, nl, 1e-4);
    tu_check_close_f64("vae: posterior_logvar vs f64", logvar, logvar64, nl, 1e-4);
    REQUIRE(sd_vae_decode(&run, v, dec, z, 2, 5, 9) == 0);
    double d = tu_check_close("vae: decoded", dec, dec_want, ni, 3e-4);
    double d64 = tu_check_close_f64("vae: decoded vs f64", dec, dec64, ni, 3e-4);
    int recorded = s_recorded(fx, true);
    CHECKF(hc.checked == recorded && recorded > 0, "vae: compared %d of %d recorded intermediates", hc.checked,
           recorded);
    printf("vae: posterior mean %.3g, logvar %.3g; decoded max abs %.3g (f32 ref), %.3g (f64 ref); %d "
           "intermediates, worst %.3g at %s\n",
           dm, dl, d, d64, hc.checked, hc.worst, hc.worst_name);
    CHECK(scratch.live == 0);

    bt_stack_free(&scratch);
    free(image);
    free(mean_want);
    free(logvar_want);
    free(mean64);
    free(logvar64);
    free(z);
    free(dec_want);
    free(dec64);
    free(mean);
    free(logvar);
    free(dec);
    st_close(&fx);
    sd_vae_destroy(&v);
    nn_ctx_destroy(&ctx);
}

/* ------------------------------------------------------------ pipeline */

typedef struct {
    const float *want; /* step_latents [steps, 2, 4, 10, 14] */
    const double *want64;
    int64_t per; /* one step's latents */
    double worst, worst64;
    int steps;
} s_steps_t;

static void s_progress(void *user, int done, int total, const float *latents)
{
    s_steps_t *s = user;
    char what[64];
    snprintf(what, sizeof what, "pipeline: latents after step %d of %d", done, total);
    double d = tu_check_close(what, latents, s->want + (done - 1) * s->per, s->per, 1e-3);
    snprintf(what, sizeof what, "pipeline: latents after step %d of %d vs f64", done, total);
    double d64 = tu_check_close_f64(what, latents, s->want64 + (done - 1) * s->per, s->per, 1e-3);
    if (d > s->worst) s->worst = d;
    if (d64 > s->worst64) s->worst64 = d64;
    s->steps = done;
}

TEST(variant_pipeline)
{
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    REQUIRE(ctx);
    sd_model_t *m = sd_model_load(ctx, s_model_path(""), SD_PART_ALL);
    REQUIRE(m);
    CHECK_INT_EQ(m->default_sampler, SD_SCHED_DDIM);
    CHECK_INT_EQ(m->sched_cfg.prediction_type, SD_PRED_V);
    CHECK_INT_EQ(m->sched_cfg.timestep_spacing, SD_SPACING_TRAILING);
    st_file_t *fx = tu_fixture(REF);
    REQUIRE(fx);
    const char *prompt = st_metadata(fx, "pipeline.prompt"), *negative = st_metadata(fx, "pipeline.negative_prompt");
    const char *gs = st_metadata(fx, "pipeline.guidance_scale"), *ns = st_metadata(fx, "pipeline.num_inference_steps");
    REQUIRE(prompt && negative && gs && ns);
    int steps = atoi(ns);
    REQUIRE(steps == 4);
    const int64_t n_img = 2, h = 10, w = 14, H = 40, W = 56, per = n_img * 4 * h * w, C = 48;
    int64_t n;
    float *lat = tu_load_f32(fx, "pipeline.initial_latents", &n);
    float *embeds_want = tu_load_f32(fx, "pipeline.prompt_embeds", NULL);
    float *steps_want = tu_load_f32(fx, "pipeline.step_latents", NULL);
    double *steps64 = tu_load_f64(fx, "pipeline.step_latents_f64", NULL);
    float *image_want = tu_load_f32(fx, "pipeline.image", NULL);
    float *raw_want = tu_load_f32(fx, "pipeline.decoded_raw", NULL);
    REQUIRE(lat && embeds_want && steps_want && steps64 && image_want && raw_want && n == per);

    /* the sampler's timesteps: trailing spacing */
    int64_t ts_want[4];
    REQUIRE(st_read_i64(st_find(fx, "pipeline.timesteps"), ts_want) == 0);
    sd_sched_t *s = sd_sched_new(&m->sched_cfg, SD_SCHED_DDIM, steps);
    REQUIRE(s);
    REQUIRE(sd_sched_num_steps(s) == steps);
    for (int i = 0; i < steps; i++)
        CHECKF(sd_sched_timesteps(s)[i] == (float)ts_want[i], "pipeline: timestep %d is %g, reference %lld", i,
               sd_sched_timesteps(s)[i], (long long)ts_want[i]);
    sd_sched_destroy(&s);

    /* prompt ids through booth's tokenizer, then embeddings [uncond; cond] */
    const char *texts[2] = {negative, prompt}, *keys[2] = {"pipeline.input_ids_uncond", "pipeline.input_ids_cond"};
    for (int i = 0; i < 2; i++) {
        int64_t want_ids[77];
        REQUIRE(st_read_i64(st_find(fx, keys[i]), want_ids) == 0);
        sd_tok_result_t tr;
        REQUIRE(sd_tokenize(m->tok, texts[i], &tr) == 0);
        char what[64];
        snprintf(what, sizeof what, "pipeline: %s", keys[i] + 9);
        s_ids_equal(what, tr.input_ids, want_ids, 77);
        sd_tok_result_free(&tr);
    }
    float *embeds = nn_alloc(ctx, 2 * 77 * C * sizeof(float));
    REQUIRE(embeds);
    REQUIRE(sd_encode_prompt(m, embeds, negative, 0) == 0);
    REQUIRE(sd_encode_prompt(m, embeds + 77 * C, prompt, 0) == 0);
    double de = tu_check_close("pipeline: prompt_embeds", embeds, embeds_want, 2 * 77 * C, 1e-4);

    /* 2 images of one prompt in one batch, from the reference's latents */
    s_steps_t st = {.want = steps_want, .want64 = steps64, .per = per};
    sd_sample_params_t p = {.guidance = (float)atof(gs),
                            .steps = steps,
                            .sampler = SD_SCHED_DDIM,
                            .progress = s_progress,
                            .progress_user = &st};
    REQUIRE(sd_sample(m, &p, embeds + 77 * C, embeds, 77, lat, true, n_img, h, w) == 0);
    CHECK_INT_EQ(st.steps, steps);
    const int64_t ni = n_img * 3 * H * W;
    float *img = malloc((size_t)ni * sizeof(float)), *raw = malloc((size_t)ni * sizeof(float));
    REQUIRE(img && raw);
    REQUIRE(sd_decode(m, img, raw, lat, n_img, h, w) == 0);
    double dr = tu_check_close("pipeline: decoded_raw", raw, raw_want, ni, 1e-3);
    /* the reference image is NHWC */
    float *nhwc = malloc((size_t)ni * sizeof(float));
    REQUIRE(nhwc);
    for (int64_t b = 0; b < n_img; b++)
        for (int64_t c = 0; c < 3; c++)
            for (int64_t i = 0; i < H * W; i++)
                nhwc[(b * H * W + i) * 3 + c] = img[(b * 3 + c) * H * W + i];
    double d = tu_check_close("pipeline: image", nhwc, image_want, ni, 1e-3);
    printf("pipeline: prompt_embeds %.3g; step latents worst %.3g (f32 ref), %.3g (f64 ref); decoded_raw %.3g; "
           "image %.3g\n",
           de, st.worst, st.worst64, dr, d);

    free(nhwc);
    free(img);
    free(raw);
    nn_free(ctx, embeds);
    free(lat);
    free(embeds_want);
    free(steps_want);
    free(steps64);
    free(image_want);
    free(raw_want);
    st_close(&fx);
    sd_model_destroy(&m);
    nn_ctx_destroy(&ctx);
}
