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
    const char *output_dir, *lr_sched, *resume, *base_dtype;
    int64_t rank;
    bool alpha_seen;
} cli_train_flags_t;

/* Defaults, then the option rows into opts[0..n) (no terminator); returns n (<= max). */
int cli_train_opts(cli_train_flags_t *f, cli_opt_t *opts, int max);

/* After parsing: checks and derived values (schedule, rank, alpha); 0, or 2 after one usage line. */
int cli_train_finish(const char *command, cli_train_flags_t *f, bool need_output_dir);

#endif
