/*
 * dreambooth.h — the DreamBooth objective: loss and LoRA gradients of one
 * micro-batch of examples.
 *
 * For each example (token ids, cached VAE latents, noise, timestep, weight):
 *   ehs   = CLIP(ids)                     (with text-encoder LoRA if trained, or
 *                                          trained in full; a frozen encoder's may
 *                                          come precomputed)
 *   noisy = sqrt(a_t) latents + sqrt(1 - a_t) noise           (DDPM add_noise)
 *   pred  = UNet(noisy, t, ehs)
 *   target = noise (epsilon), v = sqrt(a_t) noise - sqrt(1 - a_t) latents
 *            (v_prediction), or latents (sample)
 *   loss  = sum_b weight_b * mean((pred_b - target_b)^2)
 * With prior preservation a step's batch is [instances..., class images...] with
 * weight 1/n_instances and lambda/n_class, which is diffusers' instance MSE +
 * lambda * prior MSE. Gradients are ACCUMULATED (+=) into the LoRA sets (or,
 * for a part that trains in full, its gradient block: params.h), so a
 * step's gradient is the sum over its micro-batches in the order they are fed —
 * exactly the pieces a cluster spreads over workers.
 */
#ifndef BOOTH_DIFFUSION_DREAMBOOTH_H
#define BOOTH_DIFFUSION_DREAMBOOTH_H

#include "diffusion/lora.h"
#include "diffusion/pipeline.h"

typedef struct sd_db_batch {
    int64_t n;                /* examples */
    int64_t T, h, w;          /* tokens per prompt; latent height and width */
    const int32_t *ids;       /* [n, T] (host) */
    const float *latents;     /* [n, 4, h, w] scaled VAE latents (host) */
    const float *noise;       /* [n, 4, h, w] (host) */
    const int64_t *timesteps; /* [n] */
    const float *weights;     /* [n] loss weight of each example */
    const float *ehs;         /* [n, T, C] text embeddings in the context's memory, computed once for a
                               * frozen text encoder; NULL: CLIP(ids) now (required when it trains) */
} sd_db_batch_t;

typedef struct sd_db {
    sd_model_t *model;                     /* text encoder + UNet (not owned) */
    sd_lora_set_t *lora_unet, *lora_text;  /* not owned; lora_text NULL: text encoder frozen */
    sd_sched_table_t table;                /* alphas_cumprod for add_noise */
    sd_sched_pred_t prediction;
    sd_tape_t tape;
    bool checkpoint; /* gradient checkpointing in the UNet */
    bool text_full;  /* the text encoder trains in full (its gradient block allocated: sd_params_alloc_grads);
                      * false with lora_text NULL: frozen */
    int clip_skip;
    /* Told where a micro-batch is ("text encoder", "UNet forward", "UNet backward"), for progress
     * inside a long step; NULL: nobody asked. */
    void (*phase)(void *user, const char *what);
    void *phase_user;
} sd_db_t;

sd_db_t *sd_db_new(sd_model_t *model, sd_lora_set_t *lora_unet, sd_lora_set_t *lora_text, bool checkpoint);
void sd_db_destroy(sd_db_t **db);

/* Forward + backward of one micro-batch: per_example[b] (host, may be NULL)
 * receives mean((pred_b - target_b)^2), *loss the weighted sum; LoRA gradients
 * are added to the sets' gradient buffers. */
int sd_db_step(sd_db_t *db, const sd_db_batch_t *b, double *loss, float *per_example);
/* The same loss without the backward pass (no tape, gradients untouched). */
int sd_db_eval(sd_db_t *db, const sd_db_batch_t *b, double *loss, float *per_example);

#endif
