/*
 * pipeline.h — a Stable Diffusion model folder and text-to-image sampling.
 *
 * A model is the diffusers folder layout real SD 1.x/2.x snapshots use
 * (model_index.json, tokenizer/, text_encoder/, unet/, vae/, scheduler/). Sampling
 * is StableDiffusionPipeline's loop: text embeddings for the prompt and the
 * negative prompt, classifier-free guidance, a scheduler step per timestep, and
 * the VAE decoder. An image's noise comes from its own RNG stream (seed, image
 * index), so the same seed gives the same image whatever the batch size.
 */
#ifndef BOOTH_DIFFUSION_PIPELINE_H
#define BOOTH_DIFFUSION_PIPELINE_H

#include <stdbool.h>
#include <stdint.h>

#include "common/stack.h"
#include "diffusion/clip.h"
#include "diffusion/scheduler.h"
#include "diffusion/single_file.h"
#include "diffusion/tokenizer.h"
#include "diffusion/unet.h"
#include "diffusion/vae.h"

enum {
    SD_PART_TOKENIZER = 1,
    SD_PART_TEXT = 2,
    SD_PART_UNET = 4,
    SD_PART_VAE = 8,
    SD_PART_SCHEDULER = 16,
    SD_PART_ALL = 31,
};

typedef struct sd_model {
    char *dir;
    nn_ctx_t *ctx; /* not owned */
    sd_tokenizer_t *tok;
    sd_clip_t *clip;
    sd_unet_t *unet;
    sd_vae_t *vae;
    sd_sched_config_t sched_cfg;
    sd_sched_kind_t default_sampler; /* from scheduler_config.json's _class_name */
    sd_store_t store;                /* how the weight matrices are kept (params.h) */
    bt_stack_t scratch;              /* temporaries of every forward pass */
} sd_model_t;

/* Loads the requested parts (SD_PART_* mask) of a model folder; NULL with one
 * log line naming the file and the problem. The weight matrices stay in the
 * type the files hold (SD_STORE_AUTO: an fp16 snapshot takes half the memory of
 * float32 and computes the same numbers); sd_model_load_as chooses. */
sd_model_t *sd_model_load(nn_ctx_t *ctx, const char *dir, unsigned parts);
/* dir may also be a single-file checkpoint (FILE.safetensors with the original
 * LDM names, diffusion/single_file.h): every command's --model takes either. */
sd_model_t *sd_model_load_as(nn_ctx_t *ctx, const char *dir, unsigned parts, sd_store_t store);
/* A single-file checkpoint with options (a config folder, the prediction type). */
sd_model_t *sd_model_load_file(nn_ctx_t *ctx, const char *path, unsigned parts, sd_store_t store,
                               const sd_single_file_opts_t *opts);
/* Bytes of the loaded parts' parameters. */
size_t sd_model_param_bytes(const sd_model_t *m);
/* What the model computes with, for records that must match on reuse (prior
 * sets, checkpoints): "exact" when every weight is the file's value, else the
 * 16-bit type they were rounded to ("fp16", "bf16"). */
const char *sd_model_weights(const sd_model_t *m);
void sd_model_destroy(sd_model_t **m);

/* Tokens a prompt becomes: the tokenizer's model_max_length (77 for SD), checked against the text
 * encoder's positions when the model is loaded. Every prompt buffer takes its length from here. */
int64_t sd_prompt_tokens(const sd_model_t *m);

/* Prompt -> its T = sd_prompt_tokens ids (BOS, tokens, EOS, padding) in ids[T]; a prompt longer
 * than the model reads is cut, with one warning line. */
int sd_prompt_ids(const sd_model_t *m, const char *prompt, int32_t *ids);

/* Prompt -> text embeddings [1, T, C] (T = sd_prompt_tokens) in the context's memory (ids on the host). */
int sd_encode_prompt(sd_model_t *m, float *embeds, const char *prompt, int clip_skip);

/* After each sampler step: done of total, and the batch's current latents (host). */
typedef void (*sd_progress_fn)(void *user, int done, int total, const float *latents);

typedef struct sd_sample_params {
    float guidance;          /* classifier-free guidance scale; <= 1 disables the unconditional pass */
    int steps;               /* inference steps */
    sd_sched_kind_t sampler;
    float eta;               /* DDIM eta (0: deterministic) */
    uint64_t seed;
    int64_t first_index;     /* images are numbered from here: image i uses RNG stream i */
    bool cond_per_image;     /* cond is [n, T, C], one prompt per image (as one call each, up to rounding) */
    sd_progress_fn progress; /* called after every UNet call, may be NULL */
    void *progress_user;
} sd_sample_params_t;

/* Runs the sampling loop for n images of latent size [4, h, w] in one batch.
 * cond/uncond: [1, T, C] embeddings (uncond ignored without guidance; cond [n, T, C] with cond_per_image).
 * latents (host, [n, 4, h, w]): the starting latents if init is true (used as
 * given, like diffusers' `latents=`), else filled from the seed; the final
 * latents on return. */
int sd_sample(sd_model_t *m, const sd_sample_params_t *p, const float *cond, const float *uncond, int64_t T,
              float *latents, bool init, int64_t n, int64_t h, int64_t w);

/* Latents [n, 4, h, w] (host) -> images [n, 3, h * s, w * s] (host, s = sd_vae_scale) in [0, 1]
 * (decode(latents / scaling_factor) / 2 + 0.5, clamped). raw (may be NULL)
 * receives the decoder output before the mapping. */
int sd_decode(sd_model_t *m, float *images, float *raw, const float *latents, int64_t n, int64_t h, int64_t w);

#endif
