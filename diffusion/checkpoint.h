/*
 * checkpoint.h — a DreamBooth training run's whole state in one HDF5 file, and
 * back: what `booth train --checkpointing-steps` writes, what
 * `--resume-from-checkpoint` reads, what `booth inspect` shows and `booth
 * export` turns into a LoRA file. docs/FORMAT.md is the layout's reference;
 * diffusion/layout.h spells its names.
 *
 * The trainer's state is small: the LoRA parameters, AdamW's m and v, the
 * optimizer step, and the job. Every random choice is a pure function of (seed,
 * step, slot) (diffusion/train.h), so there is no generator state to save and
 * a resumed run computes exactly the steps an uninterrupted one would: its
 * final LoRA is byte-identical. The file also carries what explains the run —
 * the loss history, the instance and prior images with their VAE latents —
 * so it can be inspected without the data folders.
 *
 * Resuming refuses, in one line, a checkpoint of another format version,
 * another base model (content hash, diffusion/model_hash.h), another job
 * (any setting that changes the numbers), other training images, or a tensor of
 * the wrong shape; the trainer is only changed once everything has been read.
 */
#ifndef BOOTH_DIFFUSION_CHECKPOINT_H
#define BOOTH_DIFFUSION_CHECKPOINT_H

#include "common/hash.h"
#include "diffusion/job.h"
#include "diffusion/layout.h"
#include "diffusion/optim.h"
#include "diffusion/train.h"
#include "storage/h5.h"
#include "storage/lora_file.h"

/* Per-step log of a run (what loss.csv holds), kept so a resumed run and
 * `booth inspect` have the whole history: one array per /history column
 * (SD_H5_HISTORY_COLUMNS, which names these fields and says what they mean). */
typedef struct sd_train_history {
    int64_t n, cap;
    double *loss, *loss_instance, *loss_prior, *lr, *grad_norm, *seconds;
} sd_train_history_t;

int sd_history_push(sd_train_history_t *h, const sd_step_stats_t *st, double seconds);
void sd_history_free(sd_train_history_t *h);

/* The identity of the base model: content hashes of the whole folder and of
 * its VAE (whose latents a prior set stores). */
typedef struct sd_model_ids {
    char model[BT_HASH_HEX], vae[BT_HASH_HEX];
} sd_model_ids_t;
int sd_model_ids(const char *dir, sd_model_ids_t *ids);

/* What a checkpoint records besides the optimizer state, as plain records:
 * the job, the data it trains on, and where the model came from. A trainer
 * fills it (sd_trainer_ckpt_data); the coordinator fills it without a model. */
typedef struct sd_ckpt_data {
    const sd_train_config_t *cfg;   /* the job (base_weights set) */
    const sd_image_set_t *instances;
    const sd_image_set_t *classes;  /* NULL without prior preservation */
    const char *sampler;            /* the model's default sampler (prior sets record it) */
    sd_model_ids_t ids;
} sd_ckpt_data_t;

/* The record of a trainer's job, data and model. */
void sd_trainer_ckpt_data(const sd_trainer_t *t, const sd_model_ids_t *ids, sd_ckpt_data_t *d);

/* Writes the optimizer state o at o->step with d to path (temporary file,
 * fsync, rename). h (may be NULL) is the history of steps 1..o->step. reuse
 * (may be NULL): an earlier checkpoint of this run, or the prior set it trains
 * on; image sets it holds unchanged (same content hash, sizes and base model)
 * are copied from it chunk by chunk instead of being compressed again, which
 * makes checkpoints cheap (docs/BENCHMARKS.md, Storage). */
int sd_checkpoint_save(const char *path, const sd_optim_t *o, const sd_ckpt_data_t *d, const sd_train_history_t *h,
                       const char *reuse);

/* Loads a checkpoint into optimizer state built for the same job (the same
 * settings, data d and tensors): parameters, m, v and the step; h (may be
 * NULL) receives the history. On any error o is unchanged. */
int sd_checkpoint_resume(const char *path, sd_optim_t *o, const sd_ckpt_data_t *d, sd_train_history_t *h);

/* A cluster job's data file: the image sets of d with their latents (and
 * mirrored latents), as a checkpoint stores them, under root attributes
 * booth_format = SD_JOB_DATA_FORMAT. Workers load their image sets from it
 * (sd_image_set_load_h5) instead of encoding the images again. Crash-safe. */
int sd_job_data_write(const char *path, const sd_ckpt_data_t *d);

/* The LoRA of optimizer state o as a LoRA file (what the run exports). */
int sd_optim_save_lora(const sd_optim_t *o, int64_t rank, float alpha, const char *path, st_lora_layout_t layout,
                       st_dtype_t dtype, const char *base_model);

/* The newest dir/checkpoint-N.h5 (largest N) into path: 1 if found, 0 if there
 * is none, negative on error. Temporary files are never candidates. */
int sd_checkpoint_latest(const char *dir, char *path, size_t len);

/* Keeps the `keep` newest dir/checkpoint-N.h5 (all if keep <= 0) and deletes
 * the others, and the temporary files of writers that are no longer running. */
int sd_checkpoint_prune(const char *dir, int keep);

/* Writes the checkpoint's LoRA as a LoRA file in `layout` (what the run would
 * have exported had it stopped at that step: the same bytes). */
int sd_checkpoint_export(const char *ckpt, const char *out, st_lora_layout_t layout, st_dtype_t dtype);

/* Whether a checkpoint's job is full fine-tuning (its /lora group then holds every UNet parameter,
 * "unet.<name>" shaped [first dimension, the rest], and with train_text_encoder every text-encoder
 * parameter, "text_encoder.<name>"); -1 with one line when it cannot be read. */
int sd_checkpoint_is_full(st_h5_file_t *f, const char *path);

/* A full fine-tuning checkpoint as a diffusers model folder at out (diffusion/model_out.h): the
 * folder `booth train` would have written had the run ended at the checkpoint's step. base_dir:
 * the base model folder (NULL: the one the checkpoint names), whose content hash must be the one
 * the run trained on. */
int sd_checkpoint_export_model(const char *ckpt, const char *out, const char *base_dir);

/* Opens a booth HDF5 file and checks its booth_format (want: SD_CKPT_FORMAT,
 * SD_PRIORS_FORMAT, or NULL for either) and format version. NULL with one line. */
st_h5_file_t *sd_booth_h5_open(const char *path, const char *want, char **format, int64_t *version);

#endif
