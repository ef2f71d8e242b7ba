/*
 * single_file.h — Stable Diffusion single-file checkpoints: the .safetensors that
 * A1111, ComfyUI and civitai share, with the original (LDM) tensor names:
 *
 *   model.diffusion_model.*                     UNet (input_blocks / middle_block / output_blocks)
 *   first_stage_model.*  (or vae.*)             VAE (encoder.down.N.block.M, mid.attn_1.q, ...)
 *   cond_stage_model.transformer.text_model.*   SD 1.x CLIP text encoder (transformers' names)
 *   cond_stage_model.model.*                    SD 2.x OpenCLIP (resblocks, fused in_proj q/k/v)
 *
 * Opening a file infers the architecture from the tensor shapes as diffusers'
 * from_single_file does with the original configs: channels, blocks, layers per
 * block, which blocks attend, linear or 1x1-conv projections, cross-attention
 * width, text-encoder width and depth; what shapes cannot tell takes SD's values
 * (SD 1.x: 8 UNet heads, quick-GELU CLIP; SD 2.x: 64-wide heads, GELU, OpenCLIP's
 * penultimate layer, v-prediction; 64-wide text-encoder heads; VAE scaling 0.18215;
 * the SD scheduler defaults). A diffusers folder given as config_dir replaces the
 * inferred configs, as from_single_file's config= does (needed where SD's rules
 * do not fit, such as the tiny test model).
 *
 * sd_single_file_view() then presents one part as a view (storage/safetensors.h)
 * whose records carry the diffusers names the part's parameters are registered
 * under, pointing into the mapped file (a fused q/k/v is three row ranges), so
 * the folder loader fills a model from it unchanged. The name mapping is written
 * once, here: s_unet_ldm, s_vae_ldm, s_clip_ldm in single_file.c.
 *
 * Python pickles (.ckpt, .bin, .pt, .pth) are refused: loading one runs code it
 * contains. The refusal prints a one-line conversion to run elsewhere.
 */
#ifndef BOOTH_DIFFUSION_SINGLE_FILE_H
#define BOOTH_DIFFUSION_SINGLE_FILE_H

#include <stdbool.h>

#include "diffusion/config.h"
#include "diffusion/params.h"
#include "diffusion/scheduler.h"
#include "storage/safetensors.h"

typedef enum sd_sf_part { SD_SF_UNET, SD_SF_VAE, SD_SF_TEXT, SD_SF_NPARTS } sd_sf_part_t;

typedef struct sd_single_file_opts {
    const char *config_dir; /* a diffusers folder whose unet/vae/text_encoder configs, scheduler
                               config and tokenizer replace the inferred ones; NULL: infer */
    int prediction;         /* -1: SD 1.x epsilon, SD 2.x v_prediction; else an sd_sched_pred_t */
} sd_single_file_opts_t;

typedef struct sd_single_file {
    char *path;
    st_file_t *file;         /* the mapping every view points into */
    bool sd2;                /* OpenCLIP text encoder: SD 2.x */
    bool old_clip_names;     /* SD 1.x CLIP keys without "text_model." (transformers < 4.?) */
    const char *vae_prefix;  /* "first_stage_model." or "vae." */
    sd_unet_config_t unet;
    sd_vae_config_t vae;
    sd_clip_config_t clip;
    sd_sched_pred_t prediction;
    bool prediction_given;  /* opts->prediction was set: it overrides config_dir's scheduler too */
    const char *config_dir; /* opts->config_dir (borrowed) */
} sd_single_file_t;

/* Opens and maps path, infers the configs (or reads config_dir's); NULL with one
 * log line naming the file and the cause (a pickle, SDXL, an inpainting model, a
 * tensor missing or of an unexpected shape, ...). opts may be NULL. */
sd_single_file_t *sd_single_file_open(const char *path, const sd_single_file_opts_t *opts);
void sd_single_file_close(sd_single_file_t **sf);

/* The attention heads are what shapes cannot tell: 0 where SD's rules (64-wide
 * heads) do not divide the width and no config folder was given. One error then. */
int sd_single_file_check_heads(const sd_single_file_t *sf);

/* Is path what --model takes as a single file (anything but a folder)? */
bool sd_single_file_is(const char *path);

/* A view of one part for the registered parameters ps: every parameter under its
 * diffusers name, pointing into the file. *view is closed with st_close (before
 * sd_single_file_close). A missing tensor is one error naming both names. */
int sd_single_file_view(const sd_single_file_t *sf, sd_sf_part_t part, const sd_params_t *ps, st_file_t **view);

/* The scheduler config a single file implies: config_dir's scheduler_config.json,
 * else SD's (PNDM for SD 1.x, DDIM for SD 2.x) with the prediction type. */
int sd_single_file_sched(const sd_single_file_t *sf, sd_sched_config_t *cfg);
/* The same as scheduler_config.json text (for `booth convert`), malloc'd. */
char *sd_single_file_sched_json(const sd_single_file_t *sf);

#endif
