/*
 * train_flags.h — the options of a training job, shared by `booth train` (one
 * process) and `booth submit` (the cluster): one table, diffusers' flag names.
 */
#ifndef BOOTH_CLI_TRAIN_FLAGS_H
#define BOOTH_CLI_TRAIN_FLAGS_H

#include "cli/args.h"
#include "diffusion/train.h"

typedef struct cli_train_flags {
    sd_train_config_t c;
    const char *output_dir, *lr_sched, *resume, *base_dtype, *prediction;
    const char *train_unet;  /* --train-unet lora|full */
    int64_t rank;
    bool alpha_seen, steps_seen, epochs_seen, val_epochs_seen, val_steps_seen, resolution_seen;
    /* diffusers' flags that become other settings (cli_train_finish derives them) */
    int grad_accum;          /* --gradient-accumulation-steps: train_batch_size *= it */
    int num_train_epochs;    /* max_train_steps = epochs * steps per epoch, unless --max-train-steps */
    int validation_epochs;   /* validation_steps = epochs * steps per epoch */
    int sample_batch_size;   /* checked, no effect: class images are drawn one by one, each from its seed */
    bool scale_lr;           /* lr *= train_batch_size * gradient accumulation (one process) */
    bool center_crop;
    bool overwrite;          /* --overwrite: an --output-dir with another run's checkpoints may be reused */
    const char *prior_precision; /* --prior-generation-precision: checked; booth draws in fp32 */
    const char *logging_dir; /* where loss.csv goes (relative: inside --output-dir, as diffusers joins it) */
    char logging_path[4096]; /* logging_dir resolved ("" : --output-dir) */
    int64_t steps_per_epoch; /* set by cli_train_finish when the photos could be counted, else 0 */
} cli_train_flags_t;

/* Defaults, then the option rows into opts[0..n) (no terminator); returns n (<= max). */
int cli_train_opts(cli_train_flags_t *f, cli_opt_t *opts, int max);

/* After parsing: checks and derived values (schedule, rank, alpha, epochs, resolution); 0, or 2
 * after one usage line. */
int cli_train_finish(const char *command, cli_train_flags_t *f, bool need_output_dir);

/* The model's native resolution in pixels (UNet sample_size x the VAE's downscale), from the config
 * files alone; 0 with one log line when they cannot be read. */
int cli_native_resolution(const char *model_dir);

#endif
