/*
 * lora.h — LoRA adapters on the attention projections of a UNet or a CLIP text
 * encoder: y = W x + scale * (alpha / rank) * B (A x), base weights frozen.
 *
 * A set holds the adapters of one model part. Its parameters are registered
 * under peft's names relative to that part ("<module>.lora_A.weight" [rank, in],
 * "<module>.lora_B.weight" [out, rank], e.g.
 * "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight",
 * "text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight"), in model order.
 * Gradient buffers, when asked for, have the same layout (grad[i] belongs to
 * param[i]), so optimisers and the parameter server see two flat arrays.
 */
#ifndef BOOTH_DIFFUSION_LORA_H
#define BOOTH_DIFFUSION_LORA_H

#include "diffusion/clip.h"
#include "diffusion/params.h"
#include "diffusion/unet.h"

typedef enum sd_lora_part { SD_LORA_UNET, SD_LORA_TEXT } sd_lora_part_t;

typedef struct sd_lora_set {
    sd_lora_part_t part;
    int64_t rank;
    float alpha;
    sd_params_t params;   /* A and B of every adapter, in model order */
    float *grad;          /* same layout as params.mem (NULL without gradients) */
    sd_lora_t *adapters;  /* one per adapted linear layer */
    sd_linear_t **layers; /* the layer each adapter is attached to */
    char (*modules)[SD_NAME_MAX]; /* module name of each adapter ("...attn1.to_q") */
    int n;
} sd_lora_set_t;

/* The default targets: to_q, to_k, to_v, to_out.0 (UNet); q_proj, k_proj, v_proj,
 * out_proj (text encoder). `targets` (NULL-terminated, may be NULL for the
 * default) names the projections to adapt, by their last name component. */
sd_lora_set_t *sd_lora_attach_unet(sd_unet_t *u, int64_t rank, float alpha, const char *const *targets);
sd_lora_set_t *sd_lora_attach_clip(sd_clip_t *c, int64_t rank, float alpha, const char *const *targets);
/* Detaches the adapters from their layers and frees everything. */
void sd_lora_destroy(sd_lora_set_t **set);

/* One block for all parameters (and one for gradients, zeroed, if with_grad). */
int sd_lora_alloc(sd_lora_set_t *set, nn_ctx_t *ctx, bool with_grad);
/* Training init: A ~ N(0, (1/rank)^2) from stream (seed, name), B = 0 (the adapted
 * model starts equal to the base). */
int sd_lora_init(sd_lora_set_t *set, uint64_t seed);
/* The user's inference scale s (y = Wx + s (alpha/rank) BAx); 1 in training. */
void sd_lora_set_scale(sd_lora_set_t *set, float scale);
/* Zeroes the gradient buffers. */
int sd_lora_zero_grad(sd_lora_set_t *set);
/* Total parameters (A and B, all adapters). */
int64_t sd_lora_numel(const sd_lora_set_t *set);

#endif
