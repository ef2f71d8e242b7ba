/*
 * loop.h — the run loop of a training job: what happens between optimizer
 * steps, whoever computes them. `booth train` drives it from one process
 * (sd_train_local); the coordinator drives it from its event loop as the
 * cluster finishes each step. Either way the output folder holds the same
 * files:
 *
 *   pytorch_lora_weights.safetensors         the LoRA, diffusers layout
 *   pytorch_lora_weights_kohya.safetensors   the same LoRA, kohya layout
 *     (full fine-tuning instead: a diffusers model folder, diffusion/model_out.h)
 *   loss.csv, loss.png                       loss per step and its curve
 *   validation/step-NNNNNN.png               validation grids
 *   checkpoint-N.h5                          every --checkpointing-steps
 *
 * The object is event-driven: the caller reports each finished step
 * (sd_loop_step_done), asks whether a checkpoint or a validation grid is due
 * after it, supplies them, and calls sd_loop_finish with the final state.
 */
#ifndef BOOTH_DIFFUSION_LOOP_H
#define BOOTH_DIFFUSION_LOOP_H

#include <stdio.h>

#include "common/image.h"
#include "common/progress.h"
#include "diffusion/checkpoint.h"

typedef struct sd_loop {
    char dir[4096];               /* the output folder, without a trailing slash */
    const sd_train_config_t *cfg; /* borrowed: the job */
    FILE *csv;
    char csv_path[4200];          /* loss.csv: in dir, or in the logging folder */
    sd_train_history_t hist;      /* steps 1..hist.n */
    bt_progress_t bar;
    bool show_progress;
    char last_ckpt[4200];         /* the newest checkpoint written or resumed from ("" none) */
    const volatile int *stop;     /* set (by a signal handler) to stop after the current step: sd_train_local
                                   * then writes a checkpoint and returns BT_ESTOPPED (NULL: never) */
} sd_loop_t;

/* Opens output_dir (made if missing) and loss.csv. resumed: the checkpoint the
 * run continues from and its history (taken over; NULL for a new run). NULL
 * with one log line on failure. */
sd_loop_t *sd_loop_new(const char *output_dir, const sd_train_config_t *cfg, const char *resumed_from,
                     sd_train_history_t *resumed, bool show_progress);
/* The same with loss.csv in log_dir (made if missing; NULL: output_dir). With show_progress, each
 * checkpoint and validation grid is named on stderr as it is written. */
sd_loop_t *sd_loop_new_in(const char *output_dir, const char *log_dir, const sd_train_config_t *cfg,
                          const char *resumed_from, sd_train_history_t *resumed, bool show_progress);
void sd_loop_destroy(sd_loop_t **r);

/* Steps taken so far. */
static inline int64_t sd_loop_steps(const sd_loop_t *r) { return r->hist.n; }

/* Records step hist.n + 1: history, loss.csv, the progress bar. A loss that is
 * not finite is an error (one line) after it was logged. */
int sd_loop_step_done(sd_loop_t *r, const sd_step_stats_t *st, double seconds);

bool sd_loop_checkpoint_due(const sd_loop_t *r);
bool sd_loop_validation_due(const sd_loop_t *r);

/* checkpoint-STEP.h5 from the state after the last step, then the
 * --checkpoints-total-limit rotation. reuse_images: a prior-set file whose
 * images a first checkpoint may copy (NULL: none). */
int sd_loop_checkpoint(sd_loop_t *r, const sd_optim_t *o, const sd_ckpt_data_t *d, const char *reuse_images);

/* validation/step-STEP.png. */
int sd_loop_validation(sd_loop_t *r, const bt_img_t *grid);
/* The same from a PNG a worker rendered (written as it is, crash-safe). */
int sd_loop_validation_png(sd_loop_t *r, const void *png, size_t len);

/* The LoRA in both layouts (full fine-tuning: the model folder) and loss.png; prints the paths of
 * what it wrote on stdout. */
int sd_loop_finish(sd_loop_t *r, const sd_optim_t *o, const char *base_model);

/* The whole job in one process: steps until max_train_steps, with checkpoints
 * and validation as due, then sd_loop_finish. */
int sd_train_local(sd_trainer_t *t, sd_optim_t *o, sd_loop_t *r, const sd_model_ids_t *ids, const char *reuse_images);

#endif
