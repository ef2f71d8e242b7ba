/*
 * vae.c — AutoencoderKL encoder and decoder.
 *
 * Encoder: conv_in; down blocks (ResNets with GN eps 1e-6; downsample = pad
 * right/bottom by one, 3x3 stride-2 conv without padding); mid (ResNet,
 * single-head self-attention over all pixels with a residual, ResNet); GN, SiLU,
 * conv_out; quant_conv -> (mean, logvar).
 * Decoder: post_quant_conv; conv_in; mid; up blocks (layers + 1 ResNets, then
 * nearest 2x + conv); GN, SiLU, conv_out.
 */
#include "diffusion/vae.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/status.h"
#include "diffusion/run_macros.h"

#define EPS 1e-6f

static void s_mid_build(sd_vae_mid_t *m, sd_params_t *ps, int64_t C, int64_t G, bool attn, const char *prefix)
{
    char name[2 * SD_NAME_MAX];
    snprintf(name, sizeof name, "%s.resnets.0", prefix);
    sd_resnet_build(&m->res[0], ps, C, C, 0, G, EPS, 1.0f, name);
    m->has_attn = attn;
    if (attn) {
        snprintf(name, sizeof name, "%s.attentions.0.group_norm", prefix);
        sd_norm_build(&m->attn_norm, ps, C, G, EPS, name);
        snprintf(name, sizeof name, "%s.attentions.0", prefix);
        sd_attention_build(&m->attn, ps, C, C, 1, C, false, true, name);
    }
    snprintf(name, sizeof name, "%s.resnets.1", prefix);
    sd_resnet_build(&m->res[1], ps, C, C, 0, G, EPS, 1.0f, name);
}

sd_vae_t *sd_vae_new(const sd_vae_config_t *cfg)
{
    sd_vae_t *v = bt_calloc(1, sizeof *v);
    if (!v) {
        BT_ERROR("vae: out of memory");
        return NULL;
    }
    v->cfg = *cfg;
    sd_params_init(&v->params, "vae");
    sd_params_t *ps = &v->params;
    const sd_vae_config_t *c = &v->cfg;
    int n = c->n_blocks;
    int64_t G = c->norm_num_groups, L = c->latent_channels, top = c->block_out_channels[n - 1];
    char name[2 * SD_NAME_MAX];
    if (c->layers_per_block + 1 > 8) {
        BT_ERROR("vae: %lld layers per block (at most 7 supported)", (long long)c->layers_per_block);
        goto out_fail;
    }
    sd_conv_build(&v->enc_conv_in, ps, c->in_channels, c->block_out_channels[0], 3, 1, 1, "encoder.conv_in");
    int64_t prev = c->block_out_channels[0];
    for (int i = 0; i < n; i++) {
        sd_vae_block_t *b = &v->enc_down[i];
        b->out_channels = c->block_out_channels[i];
        b->n_layers = c->layers_per_block;
        for (int64_t j = 0; j < b->n_layers; j++) {
            snprintf(name, sizeof name, "encoder.down_blocks.%d.resnets.%lld", i, (long long)j);
            sd_resnet_build(&b->resnets[j], ps, j == 0 ? prev : b->out_channels, b->out_channels, 0, G, EPS, 1.0f,
                            name);
        }
        b->has_sampler = i < n - 1;
        if (b->has_sampler) {
            snprintf(name, sizeof name, "encoder.down_blocks.%d.downsamplers.0.conv", i);
            sd_conv_build(&b->sampler, ps, b->out_channels, b->out_channels, 3, 2, 0, name);
            b->sampler.pad_b = b->sampler.pad_r = 1;
        }
        prev = b->out_channels;
    }
    s_mid_build(&v->enc_mid, ps, top, G, c->mid_attention, "encoder.mid_block");
    sd_norm_build(&v->enc_norm_out, ps, top, G, EPS, "encoder.conv_norm_out");
    sd_conv_build(&v->enc_conv_out, ps, top, 2 * L, 3, 1, 1, "encoder.conv_out");
    sd_conv_build(&v->quant_conv, ps, 2 * L, 2 * L, 1, 1, 0, "quant_conv");

    sd_conv_build(&v->post_quant_conv, ps, L, L, 1, 1, 0, "post_quant_conv");
    sd_conv_build(&v->dec_conv_in, ps, L, top, 3, 1, 1, "decoder.conv_in");
    s_mid_build(&v->dec_mid, ps, top, G, c->mid_attention, "decoder.mid_block");
    prev = top;
    for (int i = 0; i < n; i++) {
        sd_vae_block_t *b = &v->dec_up[i];
        b->out_channels = c->block_out_channels[n - 1 - i];
        b->n_layers = c->layers_per_block + 1;
        for (int64_t j = 0; j < b->n_layers; j++) {
            snprintf(name, sizeof name, "decoder.up_blocks.%d.resnets.%lld", i, (long long)j);
            sd_resnet_build(&b->resnets[j], ps, j == 0 ? prev : b->out_channels, b->out_channels, 0, G, EPS, 1.0f,
                            name);
        }
        b->has_sampler = i < n - 1;
        if (b->has_sampler) {
            snprintf(name, sizeof name, "decoder.up_blocks.%d.upsamplers.0.conv", i);
            sd_conv_build(&b->sampler, ps, b->out_channels, b->out_channels, 3, 1, 1, name);
        }
        prev = b->out_channels;
    }
    sd_norm_build(&v->dec_norm_out, ps, c->block_out_channels[0], G, EPS, "decoder.conv_norm_out");
    sd_conv_build(&v->dec_conv_out, ps, c->block_out_channels[0], c->out_channels, 3, 1, 1, "decoder.conv_out");
    if (sd_params_check(ps)) goto out_fail;
    return v;
out_fail:
    sd_vae_destroy(&v);
    return NULL;
}

void sd_vae_destroy(sd_vae_t **pv)
{
    sd_vae_t *v = *pv;
    if (!v) return;
    sd_params_free(&v->params);
    free(v);
    *pv = NULL;
}

int64_t sd_vae_scale(const sd_vae_t *v) { return (int64_t)1 << (v->cfg.n_blocks - 1); }

int64_t sd_vae_latent_size(const sd_vae_t *v, int64_t size)
{
    for (int i = 0; i < v->cfg.n_blocks - 1; i++) size = (size + 1 - 3) / 2 + 1;
    return size;
}

/* mid block: ResNet, GN -> tokens -> attention -> NCHW + residual, ResNet; in place on x. */
static int s_mid(sd_run_t *r, const sd_vae_mid_t *m, float *x, int64_t B, int64_t H, int64_t W, const char *prefix)
{
    int rc = BT_OK;
    bt_stack_mark_t mk = bt_stack_mark(r->scratch);
    int64_t C = m->res[0].in, HW = H * W, n = B * C * HW;
    const int64_t shape[4] = {B, C, H, W};
    float *a, *t0, *t1;
    ALLOC(a, n);
    ALLOC(t0, n);
    ALLOC(t1, n);
    TRY(sd_resnet_forward(r, &m->res[0], a, x, NULL, B, H, W));
    sd_hook(r, a, 4, shape, "%s.resnets.0", prefix);
    if (m->has_attn) {
        TRY(sd_group_norm_forward(r, &m->attn_norm, t0, NULL, NULL, a, B, HW, false));
        TRY(nn_transpose(r->nn, t1, t0, B, C, HW));
        TRY(sd_attention_forward(r, &m->attn, t0, t1, NULL, B, HW, HW, false));
        TRY(nn_transpose(r->nn, t1, t0, B, HW, C));
        TRY(nn_add_forward(r->nn, a, a, t1, n));
        sd_hook(r, a, 4, shape, "%s.attentions.0", prefix);
    }
    TRY(sd_resnet_forward(r, &m->res[1], x, a, NULL, B, H, W));
    sd_hook(r, x, 4, shape, "%s", prefix);
out:
    bt_stack_reset(r->scratch, mk);
    return rc;
}

/* ResNets of a block on x (ping-pong into *x / tmp); returns the final buffer in *x. */
static int s_resnets(sd_run_t *r, const sd_vae_block_t *b, float **x, float **tmp, int64_t B, int64_t H, int64_t W)
{
    int rc = BT_OK;
    for (int64_t j = 0; j < b->n_layers && rc == BT_OK; j++) {
        rc = sd_resnet_forward(r, &b->resnets[j], *tmp, *x, NULL, B, H, W);
        float *sw = *x;
        *x = *tmp;
        *tmp = sw;
    }
    return rc;
}

static int64_t s_max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* The largest activation, in floats per image, that the encoder's ping-pong
 * buffers x and tmp hold (following sd_vae_encode step by step): sizing them by
 * the widest block at full resolution would take 2 x 512 MiB for a 512 px SD
 * image instead of 2 x 128 MiB. */
static int64_t s_encode_cap(const sd_vae_t *v, int64_t H, int64_t W)
{
    const sd_vae_config_t *c = &v->cfg;
    int64_t hh = H, ww = W, prev = c->block_out_channels[0], cap = prev * H * W;
    for (int i = 0; i < c->n_blocks; i++) {
        const sd_vae_block_t *b = &v->enc_down[i];
        cap = s_max64(cap, s_max64(prev, b->out_channels) * hh * ww);
        if (b->has_sampler) {
            hh = sd_conv_out_size(&b->sampler, hh);
            ww = (ww + 1 - 3) / 2 + 1;
            cap = s_max64(cap, b->out_channels * hh * ww);
        }
        prev = b->out_channels;
    }
    return s_max64(cap, s_max64(prev, 2 * c->latent_channels) * hh * ww); /* mid block, norm, conv_out */
}

/* The same for sd_vae_decode, from latents of h x w. */
static int64_t s_decode_cap(const sd_vae_t *v, int64_t h, int64_t w)
{
    const sd_vae_config_t *c = &v->cfg;
    int64_t hh = h, ww = w, prev = c->block_out_channels[c->n_blocks - 1], cap = prev * h * w;
    for (int i = 0; i < c->n_blocks; i++) {
        const sd_vae_block_t *b = &v->dec_up[i];
        cap = s_max64(cap, s_max64(prev, b->out_channels) * hh * ww);
        if (b->has_sampler) {
            hh *= 2;
            ww *= 2;
            cap = s_max64(cap, b->out_channels * hh * ww);
        }
        prev = b->out_channels;
    }
    return cap;
}

int sd_vae_encode(sd_run_t *r, const sd_vae_t *v, float *mean, float *logvar, const float *image, int64_t B,
                  int64_t H, int64_t W)
{
    int rc = BT_OK;
    bt_stack_mark_t mk = bt_stack_mark(r->scratch);
    const sd_vae_config_t *c = &v->cfg;
    int n = c->n_blocks;
    int64_t cap = B * s_encode_cap(v, H, W), L = c->latent_channels;
    float *x, *tmp, *mom;
    ALLOC(x, cap);
    ALLOC(tmp, cap);
    TRY(sd_conv_forward(r, &v->enc_conv_in, x, image, B, H, W));
    int64_t hh = H, ww = W;
    for (int i = 0; i < n; i++) {
        const sd_vae_block_t *b = &v->enc_down[i];
        TRY(s_resnets(r, b, &x, &tmp, B, hh, ww));
        if (b->has_sampler) {
            int64_t oh = sd_conv_out_size(&b->sampler, hh), ow = (ww + 1 - 3) / 2 + 1;
            TRY(sd_conv_forward(r, &b->sampler, tmp, x, B, hh, ww));
            float *sw = x;
            x = tmp;
            tmp = sw;
            hh = oh;
            ww = ow;
        }
        sd_hook(r, x, 4, (int64_t[]){B, b->out_channels, hh, ww}, "encoder.down_blocks.%d", i);
    }
    int64_t top = c->block_out_channels[n - 1];
    TRY(s_mid(r, &v->enc_mid, x, B, hh, ww, "encoder.mid_block"));
    TRY(sd_group_norm_forward(r, &v->enc_norm_out, tmp, NULL, NULL, x, B, hh * ww, false));
    sd_hook(r, tmp, 4, (int64_t[]){B, top, hh, ww}, "encoder.conv_norm_out");
    TRY(nn_act_forward(r->nn, tmp, tmp, B * top * hh * ww, NN_ACT_SILU));
    TRY(sd_conv_forward(r, &v->enc_conv_out, x, tmp, B, hh, ww));
    sd_hook(r, x, 4, (int64_t[]){B, 2 * L, hh, ww}, "encoder.conv_out");
    ALLOC(mom, B * 2 * L * hh * ww);
    TRY(sd_conv_forward(r, &v->quant_conv, mom, x, B, hh, ww));
    sd_hook(r, mom, 4, (int64_t[]){B, 2 * L, hh, ww}, "quant_conv");
    TRY(nn_split_channels(r->nn, mean, logvar, mom, B, L, L, hh * ww));
    /* DiagonalGaussianDistribution clamps logvar to [-30, 20] */
    TRY(nn_clamp(r->nn, logvar, logvar, B * L * hh * ww, -30.0f, 20.0f));
out:
    bt_stack_reset(r->scratch, mk);
    return rc;
}

int sd_vae_decode(sd_run_t *r, const sd_vae_t *v, float *image, const float *z, int64_t B, int64_t h, int64_t w)
{
    int rc = BT_OK;
    bt_stack_mark_t mk = bt_stack_mark(r->scratch);
    const sd_vae_config_t *c = &v->cfg;
    int n = c->n_blocks;
    int64_t L = c->latent_channels, top = c->block_out_channels[n - 1];
    int64_t cap = B * s_decode_cap(v, h, w);
    float *x, *tmp, *zq;
    ALLOC(zq, B * L * h * w);
    ALLOC(x, cap);
    ALLOC(tmp, cap);
    TRY(sd_conv_forward(r, &v->post_quant_conv, zq, z, B, h, w));
    sd_hook(r, zq, 4, (int64_t[]){B, L, h, w}, "post_quant_conv");
    TRY(sd_conv_forward(r, &v->dec_conv_in, x, zq, B, h, w));
    sd_hook(r, x, 4, (int64_t[]){B, top, h, w}, "decoder.conv_in");
    TRY(s_mid(r, &v->dec_mid, x, B, h, w, "decoder.mid_block"));
    int64_t hh = h, ww = w;
    for (int i = 0; i < n; i++) {
        const sd_vae_block_t *b = &v->dec_up[i];
        int64_t oc = b->out_channels;
        TRY(s_resnets(r, b, &x, &tmp, B, hh, ww));
        if (b->has_sampler) {
            TRY(nn_upsample2x_forward(r->nn, tmp, x, B * oc, hh, ww));
            hh *= 2;
            ww *= 2;
            TRY(sd_conv_forward(r, &b->sampler, x, tmp, B, hh, ww));
            sd_hook(r, x, 4, (int64_t[]){B, oc, hh, ww}, "decoder.up_blocks.%d.upsamplers.0", i);
        }
        sd_hook(r, x, 4, (int64_t[]){B, oc, hh, ww}, "decoder.up_blocks.%d", i);
    }
    TRY(sd_group_norm_forward(r, &v->dec_norm_out, tmp, NULL, NULL, x, B, hh * ww, true));
    TRY(sd_conv_forward(r, &v->dec_conv_out, image, tmp, B, hh, ww));
out:
    bt_stack_reset(r->scratch, mk);
    return rc;
}

sd_vae_t *sd_vae_load(nn_ctx_t *ctx, const char *dir, sd_store_t store)
{
    char path[4096];
    sd_vae_config_t cfg;
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (sd_vae_config_load(path, &cfg)) return NULL;
    sd_vae_t *v = sd_vae_new(&cfg);
    if (v && sd_params_load_model(&v->params, ctx, dir, "diffusion_pytorch_model", store))
        sd_vae_destroy(&v);
    return v;
}
