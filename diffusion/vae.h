/*
 * vae.h — AutoencoderKL: image -> latent posterior (encode) and latent -> image
 * (decode), as Stable Diffusion uses it. Inference only: training caches the
 * latents of its images once.
 */
#ifndef BOOTH_DIFFUSION_VAE_H
#define BOOTH_DIFFUSION_VAE_H

#include "diffusion/config.h"
#include "diffusion/layers.h"

typedef struct sd_vae_mid {
    sd_resnet_t res[2];
    bool has_attn;
    sd_norm_t attn_norm; /* GN before the single-head attention */
    sd_attention_t attn;
} sd_vae_mid_t;

typedef struct sd_vae_block {
    int64_t n_layers, out_channels;
    sd_resnet_t resnets[8];
    bool has_sampler;
    sd_conv_t sampler;
} sd_vae_block_t;

typedef struct sd_vae {
    sd_vae_config_t cfg;
    sd_params_t params;
    /* encoder */
    sd_conv_t enc_conv_in, enc_conv_out, quant_conv;
    sd_vae_block_t enc_down[SD_MAX_BLOCKS];
    sd_vae_mid_t enc_mid;
    sd_norm_t enc_norm_out;
    /* decoder */
    sd_conv_t post_quant_conv, dec_conv_in, dec_conv_out;
    sd_vae_mid_t dec_mid;
    sd_vae_block_t dec_up[SD_MAX_BLOCKS];
    sd_norm_t dec_norm_out;
} sd_vae_t;

sd_vae_t *sd_vae_new(const sd_vae_config_t *cfg);
void sd_vae_destroy(sd_vae_t **v);
/* config.json + weights of a model folder's vae/ directory, the weight matrices kept as
 * `store` says (params.h); NULL on error (logged). */
sd_vae_t *sd_vae_load(nn_ctx_t *ctx, const char *dir, sd_store_t store);

/* Latent size of an H x W image (H/8 for SD). */
int64_t sd_vae_latent_size(const sd_vae_t *v, int64_t size);
/* Pixels per latent a side: 2^(blocks - 1), diffusers' vae_scale_factor (8 for SD, 1 for the world
 * model's single-block VAE). A latent of h x w decodes to (h * scale) x (w * scale) pixels. */
int64_t sd_vae_scale(const sd_vae_t *v);

/* image [B, in, H, W] in [-1, 1] -> posterior mean and logvar [B, L, h, w]
 * (logvar clamped to [-30, 20]). */
int sd_vae_encode(sd_run_t *r, const sd_vae_t *v, float *mean, float *logvar, const float *image, int64_t B,
                  int64_t H, int64_t W);
/* z [B, L, h, w] (raw latent: callers divide by scaling_factor first) ->
 * image [B, out, h * scale, w * scale] (sd_vae_scale; unclamped, about [-1, 1]). */
int sd_vae_decode(sd_run_t *r, const sd_vae_t *v, float *image, const float *z, int64_t B, int64_t h, int64_t w);

#endif
