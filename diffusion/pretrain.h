/*
 * pretrain.h — training booth's own base model from scratch on the synthetic world (`booth
 * pretrain`; world.h, world_model.h, docs/WORLD.md).
 *
 * Each step draws a fresh batch of world scenes — example i of step s is scene s * batch + i of the
 * world's seed — renders them, encodes them with the model's (constructed) VAE, and takes one
 * AdamW step of the plain text-to-image diffusion objective: epsilon-prediction MSE at a uniform
 * timestep, the caption replaced by the empty prompt with probability `uncond` so that
 * classifier-free guidance works, and with probability `partial` by one that leaves out the colour,
 * the background or both (world.h sd_world_caption_parts), so that the model also draws what such
 * prompts leave open (DreamBooth's class prompt is "a star"). Every weight of the UNet trains (full fine-tuning's backward,
 * diffusion/layers.h), and the text encoder's too when it has gradients. Every random choice is a
 * pure function of (seed, step, example), so a run resumed from its state file ends in the same
 * bytes as one that never stopped.
 *
 * An exponential moving average of the weights (decay min(ema, (1 + step) / (10 + step))) is what
 * the model folder receives: it samples far better than the raw weights of any single step.
 *
 * The state file (safetensors) holds the step, the settings, the raw weights, the average and
 * AdamW's moments; the model folder is rewritten from the average at every save and at the end
 * (fp16 at the end when asked: what ships).
 */
#ifndef BOOTH_DIFFUSION_PRETRAIN_H
#define BOOTH_DIFFUSION_PRETRAIN_H

#include <stdbool.h>
#include <stdint.h>

#include "common/progress.h"
#include "nn/backend.h"

typedef struct sd_pretrain_config {
    const char *model_dir;  /* the world model folder: made (world_model.h) when it has no model_index.json */
    const char *state_path; /* the training state (resumed from when it exists) */
    const char *log_path;   /* loss per step as CSV (NULL: none) */
    int resolution;         /* image side for a new folder (the folder's own otherwise) */
    uint64_t seed;          /* initialisation, noise, timesteps, caption dropout */
    uint64_t world_seed;    /* which scenes */
    int batch;
    int64_t steps;
    int64_t warmup;         /* linear warm-up steps, then constant */
    float lr, weight_decay, max_grad_norm;
    float ema;              /* the average's decay (0.999) */
    float uncond;           /* probability of the empty prompt (0.1) */
    float partial;          /* probability of a caption leaving out its colour, its background or both, a
                             * third each (0.3): so that "a star" and "a red star" are prompts it knows */
    int save_every;         /* steps between saves of the state and the folder (0: at the end only) */
    bool final_fp16;        /* the folder's last write in fp16 (what ships) */
    bool show_progress;
} sd_pretrain_config_t;

void sd_pretrain_defaults(sd_pretrain_config_t *c);

/* Trains (or resumes) to c->steps; 0, or one log line and an error. */
int sd_pretrain(nn_ctx_t *ctx, const sd_pretrain_config_t *c);

#endif
