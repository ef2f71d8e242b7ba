/*
 * unet.h — UNet2DConditionModel (Stable Diffusion 1.x / 2.x), forward and
 * backward, built from its config.
 *
 * Forward order and names follow diffusers, so every parameter loads by its
 * state-dict key and every intermediate can be compared by module name (run
 * hooks fire with "conv_in", "down_blocks.0.resnets.1", "mid_block", ...).
 */
#ifndef BOOTH_DIFFUSION_UNET_H
#define BOOTH_DIFFUSION_UNET_H

#include "diffusion/config.h"
#include "diffusion/layers.h"

#define SD_MAX_LAYERS 8

typedef struct sd_unet_block {
    bool cross;
    int64_t n_layers;
    sd_resnet_t resnets[SD_MAX_LAYERS];
    sd_transformer_t attns[SD_MAX_LAYERS];
    bool has_sampler; /* down: stride-2 conv after; up: nearest 2x + conv after */
    sd_conv_t sampler;
    int64_t out_channels;
} sd_unet_block_t;

typedef struct sd_unet {
    sd_unet_config_t cfg;
    sd_params_t params;
    sd_conv_t conv_in;
    sd_linear_t time_l1, time_l2;
    sd_unet_block_t down[SD_MAX_BLOCKS];
    sd_resnet_t mid_res[2];
    sd_transformer_t mid_attn;
    sd_unet_block_t up[SD_MAX_BLOCKS];
    sd_norm_t norm_out;
    sd_conv_t conv_out;
} sd_unet_t;

/* Builds the module tree and registers every parameter (not yet allocated). */
sd_unet_t *sd_unet_new(const sd_unet_config_t *cfg);
void sd_unet_destroy(sd_unet_t **u);
/* config.json + weights of a model folder's unet/ directory, the weight matrices kept as
 * `store` says (params.h); NULL on error (logged). */
sd_unet_t *sd_unet_load(nn_ctx_t *ctx, const char *dir, sd_store_t store);

/* sample [B, in, H, W] at timesteps t[B] (host floats: integer steps, or Euler's
 * fractional ones) with context ctx [B, T, cross_attention_dim] -> out [B, out, H, W]. */
int sd_unet_forward(sd_run_t *r, const sd_unet_t *u, float *out, const float *sample, const float *t,
                    const float *ctx, int64_t B, int64_t H, int64_t W, int64_t T);
/* Gradients of LoRA adapters (+=) and of the context (dctx +=, may be NULL) from
 * dout; needs the tape of the matching forward and the same t and ctx. */
int sd_unet_backward(sd_run_t *r, const sd_unet_t *u, float *dctx, const float *dout, const float *t,
                     const float *ctx, int64_t B, int64_t H, int64_t W, int64_t T);

/* Visits every attention of the UNet with its module name (e.g.
 * "down_blocks.0.attentions.0.transformer_blocks.0.attn1"): LoRA attaches here. */
void sd_unet_visit_attentions(sd_unet_t *u, sd_attention_visit_fn fn, void *user);

#endif
