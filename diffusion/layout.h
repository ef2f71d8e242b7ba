/*
 * layout.h — the names inside booth's two HDF5 file kinds, checkpoints and
 * prior sets: every group, dataset and attribute, the /history columns, and
 * the names of checkpoint and part files. docs/FORMAT.md describes the layout for
 * readers (types, shapes, meanings); this header is the code's one spelling of
 * it. The writers (diffusion/checkpoint.c, diffusion/priors.c) and their
 * readers (resume, export, prior-set assembly, `booth inspect`) name objects
 * through it, so a rename here renames it for all of them, and a name that is
 * not here is not part of the format.
 *
 * Names are relative to the root ("lora", not "/lora"), as storage/h5.h takes
 * them; a dataset inside a group is "GROUP/NAME" (string-literal concatenation
 * for fixed paths, st_h5_imgset_path for an image set's). The image-set
 * datasets are the names storage/h5_images.c writes and probes (storage knows
 * arrays, not booth's files, and spells them itself): SD_H5_IMAGES and the
 * others below must agree with it.
 */
#ifndef BOOTH_DIFFUSION_LAYOUT_H
#define BOOTH_DIFFUSION_LAYOUT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "common/status.h"

/* ---- both kinds ---- */

#define SD_H5_ROOT "/"
/* root attributes: which kind of file, and its format version */
#define SD_H5_FORMAT "booth_format"                 /* string: SD_CKPT_FORMAT, SD_PRIORS_FORMAT, SD_JOB_DATA_FORMAT */
#define SD_H5_FORMAT_VERSION "booth_format_version" /* int64 */

#define SD_CKPT_FORMAT "booth-checkpoint"
#define SD_CKPT_FORMAT_VERSION 1
#define SD_PRIORS_FORMAT "booth-priors"
#define SD_PRIORS_FORMAT_VERSION 1
/* a cluster job's data file (sd_job_data_write): root base_model_hash, /instance and /prior as in a
 * checkpoint */
#define SD_JOB_DATA_FORMAT "booth-job-data"
#define SD_JOB_DATA_FORMAT_VERSION 1

/* base_weights when the model computed with its files' weights (the value of
 * sets written before the attribute existed). */
#define SD_H5_WEIGHTS_EXACT "exact"

/* ---- checkpoints (booth_format = SD_CKPT_FORMAT) ---- */

/* root attributes */
#define SD_H5_CKPT_STEP "step"                       /* int64: optimizer steps taken */
#define SD_H5_CKPT_MAX_TRAIN_STEPS "max_train_steps" /* int64 */
#define SD_H5_CKPT_RANK "rank"                       /* int64: LoRA rank */
#define SD_H5_CKPT_ALPHA "alpha"                     /* float32: LoRA alpha */
#define SD_H5_CKPT_TARGETS "targets"                 /* JSON: the projections adapted per model part */
#define SD_H5_CKPT_JOB "job"                         /* JSON: every training setting (diffusion/job.h) */
#define SD_H5_CKPT_BASE_MODEL "base_model"           /* string: the model folder as given */
#define SD_H5_CKPT_BASE_MODEL_HASH "base_model_hash" /* string: its content hash */

/* /lora: one float32 dataset per LoRA tensor, named by its peft key */
#define SD_H5_LORA "lora"
#define SD_H5_LORA_LAYOUT "layout" /* string: SD_H5_LORA_LAYOUT_PEFT */
#define SD_H5_LORA_RANK "rank"
#define SD_H5_LORA_ALPHA "alpha"
#define SD_H5_LORA_LAYOUT_PEFT "peft"

/* /optimizer: AdamW; its moments under the tensor names of /lora */
#define SD_H5_OPTIM "optimizer"
#define SD_H5_OPTIM_M SD_H5_OPTIM "/m"
#define SD_H5_OPTIM_V SD_H5_OPTIM "/v"
#define SD_H5_OPTIM_TYPE "type" /* string: SD_H5_OPTIM_ADAMW */
#define SD_H5_OPTIM_ADAMW "AdamW"
#define SD_H5_OPTIM_STEP "step" /* int64: AdamW's bias-correction step */
#define SD_H5_OPTIM_LEARNING_RATE "learning_rate"
#define SD_H5_OPTIM_LR_SCHEDULER "lr_scheduler"
#define SD_H5_OPTIM_LR_WARMUP_STEPS "lr_warmup_steps"
#define SD_H5_OPTIM_BETA1 "beta1"
#define SD_H5_OPTIM_BETA2 "beta2"
#define SD_H5_OPTIM_EPSILON "epsilon"
#define SD_H5_OPTIM_WEIGHT_DECAY "weight_decay"
#define SD_H5_OPTIM_MAX_GRAD_NORM "max_grad_norm"

/* /rng: counter-based randomness, so the seed is the whole state */
#define SD_H5_RNG "rng"
#define SD_H5_RNG_SEED "seed"           /* uint64 */
#define SD_H5_RNG_NEXT_STEP "next_step" /* int64 */
#define SD_H5_RNG_ALGORITHM "algorithm" /* text */

/* /history: one row per step 1..step; "step" (int64) numbers the rows, the
 * columns below are float64 (NaN where the writer kept no value). */
#define SD_H5_HISTORY "history"
#define SD_H5_HISTORY_STEP "step"

/* The columns, in the order they are written (the order of loss.csv):
 * X(ID, name, sd_train_history_t field, meaning). B is the batch size; an
 * example's loss is the mean squared error of its noise prediction. */
#define SD_H5_HISTORY_COLUMNS(X)                                                                                       \
    X(LOSS, "loss", loss, "the objective: (sum of instance losses + prior_loss_weight * sum of class losses) / B")     \
    X(LOSS_INSTANCE, "loss_instance", loss_instance, "sum of the instance examples' losses / B")                       \
    X(LOSS_PRIOR, "loss_prior", loss_prior, "sum of the class examples' losses / B (not weighted)")                    \
    X(LR, "lr", lr, "the learning rate the step applied")                                                              \
    X(GRAD_NORM, "grad_norm", grad_norm, "global L2 norm of the step's gradient, before clipping")                     \
    X(SECONDS, "seconds", seconds, "wall-clock seconds the step took")

/* SD_H5_HIST_LOSS ... SD_H5_HIST_SECONDS: a column's place in the order above. */
#define SD_H5_HIST_ENUM_(id, name, field, meaning) SD_H5_HIST_##id,
enum { SD_H5_HISTORY_COLUMNS(SD_H5_HIST_ENUM_) SD_H5_HIST_NCOLS };
#undef SD_H5_HIST_ENUM_

/* Column c's dataset name, relative to /history. */
static inline const char *sd_h5_history_column(int c)
{
#define SD_H5_HIST_NAME_(id, name, field, meaning) name,
    static const char *const names[SD_H5_HIST_NCOLS] = {SD_H5_HISTORY_COLUMNS(SD_H5_HIST_NAME_)};
#undef SD_H5_HIST_NAME_
    return c >= 0 && c < SD_H5_HIST_NCOLS ? names[c] : NULL;
}

/* /instance: the instance images as trained on (an image set, below) */
#define SD_H5_INSTANCE "instance"

/* /prior (checkpoints with prior preservation, and prior sets): an image set
 * whose attributes also record how its images were generated */
#define SD_H5_PRIOR "prior"
#define SD_PRIOR_GROUP SD_H5_PRIOR /* the name diffusion/dataset.c reads prior sets by */

/* ---- image sets (/instance, /prior) ---- */

/* datasets (storage/h5_images.h; shapes and types in docs/FORMAT.md) */
#define SD_H5_IMAGES "images"
#define SD_H5_LATENT_MEAN "latent_mean"
#define SD_H5_LATENT_LOGVAR "latent_logvar"
#define SD_H5_LATENT_MEAN_FLIP "latent_mean_flip"
#define SD_H5_LATENT_LOGVAR_FLIP "latent_logvar_flip"
#define SD_H5_IMAGE_INDEX "index"   /* int64 per image */
#define SD_H5_IMAGE_SEED "seed"     /* uint64 per image */
#define SD_H5_IMAGE_PROMPT "prompt" /* string per image */
#define SD_H5_IMAGE_SOURCE "source" /* string per image */

/* attributes of either set's group */
#define SD_H5_SET_PROMPT "prompt"             /* string: the instance prompt / the generation prompt */
#define SD_H5_SET_RESOLUTION "resolution"     /* int64: H = W */
#define SD_H5_SET_CONTENT_HASH "content_hash" /* string: XXH64 of all the images */
#define SD_H5_SET_VAE_HASH "vae_hash"         /* string: the VAE that computed the latents (instance sets) */

/* attributes of /prior besides those: the generation settings ... */
#define SD_H5_PRIOR_NEGATIVE_PROMPT "negative_prompt" /* string, "" */
#define SD_H5_PRIOR_SEED "seed"                       /* uint64: image i starts from noise stream (seed, i) */
#define SD_H5_PRIOR_STEPS "steps"                     /* int64: sampler steps */
#define SD_H5_PRIOR_GUIDANCE "guidance"               /* float32 */
#define SD_H5_PRIOR_SAMPLER "sampler"                 /* string: the model's default sampler */
#define SD_H5_PRIOR_BASE_MODEL "base_model"
#define SD_H5_PRIOR_BASE_MODEL_HASH "base_model_hash"
#define SD_H5_PRIOR_VAE_HASH "vae_hash"
#define SD_H5_PRIOR_BASE_WEIGHTS "base_weights" /* SD_H5_WEIGHTS_EXACT, "fp16", "bf16"; absent: exact */
/* ... and, in checkpoints, where the class images came from */
#define SD_H5_PRIOR_ORIGIN "origin"             /* string: the --class-data-dir ("" when none) */
#define SD_H5_PRIOR_CLASS_PROMPT "class_prompt" /* string: the run's --class-prompt */

/* ---- files ---- */

/* A checkpoint of an output folder is DIR/checkpoint-STEP.h5 (STEP in decimal,
 * no padding: resume and pruning take only names of exactly this form). */
#define SD_H5_CKPT_PREFIX "checkpoint-"
#define SD_H5_EXT ".h5"

/* DIR/checkpoint-STEP.h5 into buf: 0, or BT_EINVAL if it does not fit. */
static inline int sd_checkpoint_path(char *buf, size_t len, const char *dir, int64_t step)
{
    int n = snprintf(buf, len, "%s/" SD_H5_CKPT_PREFIX "%lld" SD_H5_EXT, dir, (long long)step);
    return n >= 0 && (size_t)n < len ? BT_OK : BT_EINVAL;
}

/* A prior set FILE's parts are FILE.parts/part-FIRST.h5 (FIRST: the first
 * index it holds, 8 digits at least, so that names sort in index order). */
#define SD_H5_PARTS_SUFFIX ".parts"
#define SD_H5_PART_PREFIX "part-"

/* The folder of the parts of prior set set_path into buf: 0, or BT_EINVAL if it does not fit. */
static inline int sd_priors_parts_dir(char *buf, size_t len, const char *set_path)
{
    int n = snprintf(buf, len, "%s" SD_H5_PARTS_SUFFIX, set_path);
    return n >= 0 && (size_t)n < len ? BT_OK : BT_EINVAL;
}

/* The part of prior set set_path whose first index is `first` into buf: 0, or BT_EINVAL if it does not fit. */
static inline int sd_priors_part_path(char *buf, size_t len, const char *set_path, int64_t first)
{
    int n = snprintf(buf, len, "%s" SD_H5_PARTS_SUFFIX "/" SD_H5_PART_PREFIX "%08lld" SD_H5_EXT, set_path,
                     (long long)first);
    return n >= 0 && (size_t)n < len ? BT_OK : BT_EINVAL;
}

#endif
