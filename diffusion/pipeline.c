/*
 * pipeline.c — loading a model folder; text-to-image sampling with
 * classifier-free guidance; decoding latents to images.
 *
 * The scheduler works on host arrays (latents are small); the UNet and VAE run
 * in the context's memory space, so the loop uploads its input and downloads
 * the noise prediction once per step.
 */
#include "diffusion/pipeline.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/rng.h"
#include "common/status.h"
#include "nn/memory.h"

static void *s_alloc(void *user, size_t bytes) { return nn_alloc(user, bytes); }
static void s_free(void *user, void *p) { nn_free(user, p); }

sd_model_t *sd_model_load(nn_ctx_t *ctx, const char *dir, unsigned parts)
{
    return sd_model_load_as(ctx, dir, parts, SD_STORE_AUTO);
}

size_t sd_model_param_bytes(const sd_model_t *m)
{
    return (m->clip ? sd_params_bytes(&m->clip->params) : 0) + (m->unet ? sd_params_bytes(&m->unet->params) : 0) +
           (m->vae ? sd_params_bytes(&m->vae->params) : 0);
}

const char *sd_model_weights(const sd_model_t *m)
{
    int rounded = (m->clip ? m->clip->params.rounded : 0) + (m->unet ? m->unet->params.rounded : 0) +
                  (m->vae ? m->vae->params.rounded : 0);
    return !rounded ? "exact" : m->store == SD_STORE_BF16 ? "bf16" : "fp16";
}

static void s_model_init(sd_model_t *m, nn_ctx_t *ctx, sd_store_t store)
{
    m->ctx = ctx;
    m->store = store;
    sd_sched_config_init(&m->sched_cfg);
    bt_stack_init(&m->scratch, "scratch", 64u << 20, s_alloc, s_free, ctx);
}

static int s_check_lengths(const sd_model_t *m, const char *where)
{
    if (m->tok && m->clip && sd_tok_max_length(m->tok) > m->clip->cfg.max_positions) {
        BT_ERROR("%s: the tokenizer makes prompts of %d tokens (model_max_length), the text encoder has %lld "
                 "positions (max_position_embeddings)",
                 where, sd_tok_max_length(m->tok), (long long)m->clip->cfg.max_positions);
        return BT_EINVAL;
    }
    return BT_OK;
}

static void s_default_sampler(sd_model_t *m, const char *where)
{
    if (!sd_sched_kind_from_class(m->sched_cfg.class_name, &m->default_sampler)) {
        BT_WARN("%s: scheduler class '%s' is not one booth implements; sampling defaults to ddim", where,
                m->sched_cfg.class_name);
        m->default_sampler = SD_SCHED_DDIM;
    }
}

/* One part's parameters from the single file's view of them. */
static int s_load_part(nn_ctx_t *ctx, const sd_single_file_t *sf, sd_sf_part_t part, sd_params_t *ps,
                       sd_store_t store)
{
    st_file_t *view = NULL;
    int rc = sd_single_file_view(sf, part, ps, &view);
    if (rc == BT_OK) rc = sd_params_load_model_files(ps, ctx, &view, 1, store);
    st_close(&view);
    return rc;
}

sd_model_t *sd_model_load_file(nn_ctx_t *ctx, const char *path, unsigned parts, sd_store_t store,
                               const sd_single_file_opts_t *opts)
{
    sd_single_file_t *sf = sd_single_file_open(path, opts);
    if (!sf) return NULL;
    if ((parts & (SD_PART_TEXT | SD_PART_UNET)) && sd_single_file_check_heads(sf)) {
        sd_single_file_close(&sf);
        return NULL;
    }
    sd_model_t *m = bt_calloc(1, sizeof *m);
    if (!m || !(m->dir = strdup(path))) {
        BT_ERROR("%s: out of memory", path);
        free(m);
        sd_single_file_close(&sf);
        return NULL;
    }
    s_model_init(m, ctx, store);
    if (parts & SD_PART_TOKENIZER) {
        /* the vocabulary is CLIP's in every SD 1.x / 2.x model; SD 2.x pads with "!" */
        char tok[4096];
        snprintf(tok, sizeof tok, "%s/tokenizer", sf->config_dir ? sf->config_dir : "");
        if (!(m->tok = sf->config_dir ? sd_tokenizer_load(tok) : sd_tokenizer_load_builtin(sf->sd2 ? "!" : NULL)))
            goto out_fail;
    }
    if ((parts & SD_PART_TEXT) &&
        (!(m->clip = sd_clip_new(&sf->clip)) || s_load_part(ctx, sf, SD_SF_TEXT, &m->clip->params, store)))
        goto out_fail;
    if ((parts & SD_PART_UNET) &&
        (!(m->unet = sd_unet_new(&sf->unet)) || s_load_part(ctx, sf, SD_SF_UNET, &m->unet->params, store)))
        goto out_fail;
    if ((parts & SD_PART_VAE) &&
        (!(m->vae = sd_vae_new(&sf->vae)) || s_load_part(ctx, sf, SD_SF_VAE, &m->vae->params, store)))
        goto out_fail;
    if (parts & SD_PART_SCHEDULER) {
        if (sd_single_file_sched(sf, &m->sched_cfg)) goto out_fail;
        s_default_sampler(m, path);
    }
    if (s_check_lengths(m, path)) goto out_fail;
    sd_single_file_close(&sf);
    return m;
out_fail:
    sd_single_file_close(&sf);
    sd_model_destroy(&m);
    return NULL;
}

sd_model_t *sd_model_load_as(nn_ctx_t *ctx, const char *dir, unsigned parts, sd_store_t store)
{
    if (sd_single_file_is(dir)) return sd_model_load_file(ctx, dir, parts, store, NULL);
    struct stat st;
    if (stat(dir, &st) != 0) {
        BT_ERROR("%s: cannot open: %s (--model takes a diffusers folder, with model_index.json, or a single-file "
                 ".safetensors)",
                 dir, strerror(errno));
        return NULL;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/model_index.json", dir);
    if (access(path, R_OK) != 0) {
        BT_ERROR("%s: not a diffusers model folder (no model_index.json)", dir);
        return NULL;
    }
    sd_model_t *m = bt_calloc(1, sizeof *m);
    if (!m || !(m->dir = strdup(dir))) {
        BT_ERROR("%s: out of memory loading the model", dir);
        free(m);
        return NULL;
    }
    s_model_init(m, ctx, store);
    if (parts & SD_PART_TOKENIZER) {
        snprintf(path, sizeof path, "%s/tokenizer", dir);
        if (!(m->tok = sd_tokenizer_load(path))) goto out_fail;
    }
    if (parts & SD_PART_TEXT) {
        snprintf(path, sizeof path, "%s/text_encoder", dir);
        if (!(m->clip = sd_clip_load(ctx, path, store))) goto out_fail;
    }
    if (parts & SD_PART_UNET) {
        snprintf(path, sizeof path, "%s/unet", dir);
        if (!(m->unet = sd_unet_load(ctx, path, store))) goto out_fail;
    }
    if (parts & SD_PART_VAE) {
        snprintf(path, sizeof path, "%s/vae", dir);
        if (!(m->vae = sd_vae_load(ctx, path, store))) goto out_fail;
    }
    if (parts & SD_PART_SCHEDULER) {
        snprintf(path, sizeof path, "%s/scheduler/scheduler_config.json", dir);
        if (sd_sched_config_load(&m->sched_cfg, path)) goto out_fail;
        s_default_sampler(m, path);
    }
    if (s_check_lengths(m, dir)) goto out_fail;
    return m;
out_fail:
    sd_model_destroy(&m);
    return NULL;
}

void sd_model_destroy(sd_model_t **pm)
{
    sd_model_t *m = *pm;
    if (!m) return;
    sd_tokenizer_destroy(&m->tok);
    sd_clip_destroy(&m->clip);
    sd_unet_destroy(&m->unet);
    sd_vae_destroy(&m->vae);
    sd_sched_config_free(&m->sched_cfg);
    bt_stack_free(&m->scratch);
    free(m->dir);
    free(m);
    *pm = NULL;
}

static sd_run_t s_run(sd_model_t *m) { return (sd_run_t){.nn = m->ctx, .scratch = &m->scratch}; }

/* The UNet's temporaries come in many 64 MB chunks, the VAE decoder's in a few
 * chunks of hundreds of MB; the stack keeps every chunk, so a generate run held
 * both sets at once (SD 1.5 at 512 px: 6.4 GiB peak RSS, 5.8 without). When
 * nothing is live between the two phases, the chunks go back before the next
 * phase grows its own. */
static void s_drop_idle_scratch(sd_model_t *m)
{
    if (m->scratch.live == 0) bt_stack_free(&m->scratch);
}

int64_t sd_prompt_tokens(const sd_model_t *m) { return m->tok ? sd_tok_max_length(m->tok) : 0; }

int sd_prompt_ids(const sd_model_t *m, const char *prompt, int32_t *ids)
{
    if (!m->tok) {
        BT_ERROR("%s: the tokenizer is not loaded", m->dir);
        return BT_EINVAL;
    }
    sd_tok_result_t tr;
    int rc = sd_tokenize(m->tok, prompt, &tr);
    if (rc) return rc;
    if (tr.truncated)
        BT_WARN("prompt has %d tokens; the text encoder sees the first %d: \"%s\"", tr.n_tokens, tr.max_length - 2,
                prompt);
    memcpy(ids, tr.input_ids, (size_t)tr.max_length * sizeof *ids);
    sd_tok_result_free(&tr);
    return BT_OK;
}

int sd_encode_prompt(sd_model_t *m, float *embeds, const char *prompt, int clip_skip)
{
    if (!m->tok || !m->clip) {
        BT_ERROR("%s: the tokenizer and text encoder are not loaded", m->dir);
        return BT_EINVAL;
    }
    int64_t T = sd_prompt_tokens(m);
    int32_t *ids = bt_malloc((size_t)T * sizeof *ids);
    if (!ids) return BT_ENOMEM;
    int rc = sd_prompt_ids(m, prompt, ids);
    if (rc == BT_OK) {
        sd_run_t r = s_run(m);
        rc = sd_clip_forward(&r, m->clip, embeds, NULL, ids, 1, T, clip_skip);
    }
    free(ids);
    return rc;
}

int sd_sample(sd_model_t *m, const sd_sample_params_t *p, const float *cond, const float *uncond, int64_t T,
              float *latents, bool init, int64_t n, int64_t h, int64_t w)
{
    if (!m->unet) {
        BT_ERROR("%s: the UNet is not loaded", m->dir);
        return BT_EINVAL;
    }
    int rc = BT_OK;
    s_drop_idle_scratch(m);
    sd_run_t r = s_run(m);
    bt_stack_mark_t mk = bt_stack_mark(r.scratch);
    bool cfg = p->guidance > 1.0f;
    int64_t C = m->unet->cfg.in_channels, per = C * h * w, nb = cfg ? 2 * n : n;
    int64_t ctx_dim = m->unet->cfg.cross_attention_dim[0];
    sd_sched_t *s = sd_sched_new(&m->sched_cfg, p->sampler, p->steps);
    float *x_in = bt_malloc((size_t)(nb * per) * sizeof(float));
    float *eps = bt_malloc((size_t)(nb * per) * sizeof(float));
    float *noise = bt_malloc((size_t)(n * per) * sizeof(float));
    float *tt = bt_malloc((size_t)nb * sizeof(float));
    float *d_in = sd_scratch(&r, nb * per), *d_out = sd_scratch(&r, nb * per), *d_ctx = sd_scratch(&r, nb * T * ctx_dim);
    if (!s || !x_in || !eps || !noise || !tt || !d_in || !d_out || !d_ctx) {
        rc = s ? BT_ENOMEM : BT_EINVAL;
        goto out;
    }
    if (p->eta > 0 && (rc = sd_sched_set_eta(s, p->eta))) goto out;
    /* context batch: [uncond x n, cond x n] (diffusers' order), or [cond x n] */
    for (int64_t i = 0; i < nb; i++) {
        const float *src = cfg && i < n ? uncond : p->cond_per_image ? cond + (cfg ? i - n : i) * T * ctx_dim : cond;
        if ((rc = nn_copy(m->ctx, d_ctx + i * T * ctx_dim, src, (size_t)(T * ctx_dim) * sizeof(float)))) goto out;
    }
    if (!init) {
        float sigma = sd_sched_init_noise_sigma(s);
        for (int64_t i = 0; i < n; i++) {
            bt_rng_normal_fill(latents + i * per, per, bt_rng_key(p->seed, (uint64_t)(p->first_index + i)));
            for (int64_t j = 0; j < per; j++) latents[i * per + j] *= sigma;
        }
    }
    int steps = sd_sched_num_steps(s);
    const float *ts = sd_sched_timesteps(s);
    for (int k = 0; k < steps; k++) {
        if ((rc = sd_sched_scale_model_input(s, x_in, latents, k, n * per))) goto out;
        if (cfg) memcpy(x_in + n * per, x_in, (size_t)(n * per) * sizeof(float));
        for (int64_t i = 0; i < nb; i++) tt[i] = ts[k];
        if ((rc = nn_upload(m->ctx, d_in, x_in, (size_t)(nb * per) * sizeof(float))) ||
            (rc = sd_unet_forward(&r, m->unet, d_out, d_in, tt, d_ctx, nb, h, w, T)) ||
            (rc = nn_download(m->ctx, eps, d_out, (size_t)(nb * per) * sizeof(float))))
            goto out;
        if (cfg) /* eps = uncond + g (cond - uncond) */
            for (int64_t j = 0; j < n * per; j++) eps[j] = eps[j] + p->guidance * (eps[n * per + j] - eps[j]);
        const float *nz = NULL;
        if (p->sampler == SD_SCHED_DDPM || (p->sampler == SD_SCHED_DDIM && p->eta > 0)) {
            for (int64_t i = 0; i < n; i++) /* per image and step: independent of the batch */
                bt_rng_normal_fill(noise + i * per, per,
                                   bt_rng_key(p->seed, bt_rng_stream((uint64_t)(p->first_index + i), (uint64_t)k, 1)));
            nz = noise;
        }
        if ((rc = sd_sched_step(s, latents, NULL, latents, eps, nz, k, n * per))) goto out;
        if (p->progress) p->progress(p->progress_user, k + 1, steps, latents);
    }
out:
    sd_sched_destroy(&s);
    free(x_in);
    free(eps);
    free(noise);
    free(tt);
    bt_stack_reset(r.scratch, mk);
    return rc;
}

int sd_decode(sd_model_t *m, float *images, float *raw, const float *latents, int64_t n, int64_t h, int64_t w)
{
    if (!m->vae) {
        BT_ERROR("%s: the VAE is not loaded", m->dir);
        return BT_EINVAL;
    }
    int rc = BT_OK;
    s_drop_idle_scratch(m);
    sd_run_t r = s_run(m);
    bt_stack_mark_t mk = bt_stack_mark(r.scratch);
    const sd_vae_config_t *c = &m->vae->cfg;
    int64_t L = c->latent_channels, scale = (int64_t)1 << (c->n_blocks - 1);
    int64_t nz = n * L * h * w, ni = n * c->out_channels * h * scale * w * scale;
    float *z = bt_malloc((size_t)nz * sizeof(float)), *d_z = sd_scratch(&r, nz), *d_img = sd_scratch(&r, ni);
    if (!z || !d_z || !d_img) {
        rc = BT_ENOMEM;
        goto out;
    }
    for (int64_t i = 0; i < nz; i++) z[i] = latents[i] / c->scaling_factor + c->shift_factor;
    if ((rc = nn_upload(m->ctx, d_z, z, (size_t)nz * sizeof(float))) ||
        (rc = sd_vae_decode(&r, m->vae, d_img, d_z, n, h, w)) ||
        (rc = nn_download(m->ctx, images, d_img, (size_t)ni * sizeof(float))))
        goto out;
    if (raw) memcpy(raw, images, (size_t)ni * sizeof(float));
    for (int64_t i = 0; i < ni; i++) {
        float v = images[i] / 2.0f + 0.5f;
        images[i] = v < 0 ? 0 : (v > 1 ? 1 : v);
    }
out:
    free(z);
    bt_stack_reset(r.scratch, mk);
    return rc;
}
