/*
 * cli.h — the `booth` command's subcommands (one file each, like git's builtin/).
 *
 * Each subcommand is `int cmd_NAME(int argc, char **argv)` with argv[0] the
 * subcommand name; it returns the process exit status (0 ok, 1 failure, 2 usage).
 */
#ifndef BOOTH_CLI_CLI_H
#define BOOTH_CLI_CLI_H

#include "diffusion/params.h"

int cmd_info(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_grid(int argc, char **argv);
int cmd_lora_grad(int argc, char **argv);
int cmd_init_model(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_priors(int argc, char **argv);
int cmd_rare_tokens(int argc, char **argv);
int cmd_world(int argc, char **argv);
int cmd_pretrain(int argc, char **argv);
int cmd_eval(int argc, char **argv);

int cmd_keygen(int argc, char **argv);
int cmd_coordinator(int argc, char **argv);
int cmd_ps(int argc, char **argv);
int cmd_worker(int argc, char **argv);
int cmd_submit(int argc, char **argv);
int cmd_status(int argc, char **argv);
int cmd_cancel(int argc, char **argv);
int cmd_fetch(int argc, char **argv);

/* The options every cluster process and client shares (proto/node.h), as rows of a cli_opt_t table. */
#define CLI_NODE_OPTS(n)                                                                                        \
    CLI_OPT("--keys", CLI_STR, &(n)->keys_dir, "DIR",                                                           \
            "this process's CURVE keys (booth keygen); servers also read DIR/authorized_keys"),                \
        CLI_OPT("--coordinator-key", CLI_STR, &(n)->coordinator_key, "FILE|Z85",                               \
                "the coordinator's public key (default DIR/coordinator.pub, else DIR/public.key)"),             \
        CLI_OPT("--insecure", CLI_FLAG, &(n)->insecure, NULL, "plain TCP without CURVE: anyone who can connect is trusted"), \
        CLI_OPT("--max-message-mb", CLI_INT, &(n)->max_message_mb, "MB", "largest message accepted (default 1024)")

/* --base-dtype, shared by every command that loads a model (cli/args.c). */
#define CLI_BASE_DTYPE_HELP                                                                                    \
    "keep the frozen weights as: auto (as the files: fp16 stays fp16, half the memory, same results), fp32, "  \
    "fp16, bf16 (rounds fp32 weights) (default auto)"
/* dir + "/" + name into buf without a doubled slash ("out/" + "x" is "out/x"); dir's trailing slashes
 * dropped ("/" stays "/"). name NULL: dir alone, normalised so. */
void cli_join_path(char *buf, size_t cap, const char *dir, const char *name);
/* "1 step", "2 steps": the noun's plural with an s. */
#define CLI_PLURAL(n) ((n) == 1 ? "" : "s")

/* A whole-number flag and its allowed range, lo..hi. */
typedef struct cli_irange {
    const char *flag;
    int64_t v, lo, hi;
} cli_irange_t;
/* 0, or 2 after one line naming the first flag outside its range, its value and the range. */
int cli_check_ranges(const char *command, const cli_irange_t *r, size_t n);
/* Before any work: the output file's folder is made (if missing) and writable, and the path is not
 * something other than a regular file (a folder, a FIFO, a device). 0, or 1 after one line. */
int cli_check_output(const char *command, const char *flag, const char *path);

/* Parses a --base-dtype value (NULL: auto); one line and false when unknown. */
bool cli_base_dtype(const char *command, const char *value, sd_store_t *out);

/* --prediction-type, beside --base-dtype on every command that loads a model: what a single-file
 * checkpoint's UNet predicts, where its shapes cannot tell (cli/args.c). */
#define CLI_PREDICTION_HELP                                                                                    \
    "a single-file --model's prediction: epsilon or v_prediction (default: epsilon for SD 1.x, "             \
    "v_prediction for SD 2.x; a 512-px SD 2.x base model needs epsilon). A folder's scheduler config says it"
/* Parses a --prediction-type value into *out (NULL: -1, the file's architecture decides): one line and
 * false when unknown, or when model is given and is not a single file (a folder's scheduler says it). */
bool cli_prediction_type(const char *command, const char *value, const char *model, int *out);
/* The model as every command loads it: a diffusers folder, or a single file read with prediction
 * (cli_prediction_type's; -1: from its architecture). */
/* The model a command uses when --model is not given: booth's world model (docs/WORLD.md) at
 * $BOOTH_MODEL, else models/world beside the binary's folder (build/booth -> models/world), else the
 * source tree's models/world the binary was built from. One line naming where it looked, and NULL,
 * when none holds a model; one line naming the one it uses otherwise. */
const char *cli_default_model(const char *command);
#define CLI_MODEL_DEFAULT_HELP "(default: booth's world model, models/world; $BOOTH_MODEL overrides)"

struct sd_model;
struct nn_ctx;
struct sd_model *cli_model_load(struct nn_ctx *ctx, const char *model, unsigned parts, sd_store_t store, int prediction);

#endif
