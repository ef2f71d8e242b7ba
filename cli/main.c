/*
 * main.c — `booth`: dispatch to a subcommand.
 */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "nn/backend.h"

#define BOOTH_VERSION "0.1.0"

typedef struct {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *summary;
} s_cmd_t;

static const s_cmd_t s_cmds[] = {
    {"generate", cmd_generate, "text to images (PNG) with a model folder; --help for the knobs"},
    {"init-model", cmd_init_model, "write a randomly initialised model folder (tiny, sd15, sd21)"},
    {"grid", cmd_grid, "sweep LoRA scales and guidance into labelled image grids"},
    {"lora-grad", cmd_lora_grad, "loss and LoRA gradients of one given batch (debugging, reference checks)"},
    {"info", cmd_info, "show the compute backend, BLAS and thread count"},
    {"train", cmd_train, "DreamBooth LoRA fine-tuning on a few photos (diffusers' flag names)"},
    {"tokenize", cmd_tokenize, "show how CLIP tokenizes a prompt (ids, pieces, truncation, words that split)"},
    {"rare-tokens", cmd_rare_tokens, "list rare one-token identifiers for the instance prompt (like sks), and why"},
    {"world", cmd_world, "write the synthetic captioned world (shapes, colours, backgrounds) or measure its pictures"},
    {"pretrain", cmd_pretrain, "train booth's own small base model from scratch on the synthetic world"},
    {"eval", cmd_eval, "measure how well a model of the world draws its prompts, and what a DreamBooth LoRA did to it"},
    {"priors", cmd_priors, "generate prior-preservation class images into one HDF5 prior set (resumable)"},
    {"inspect", cmd_inspect, "show what a checkpoint or prior set (.h5) holds; --json, --images, --contact-sheet"},
    {"export", cmd_export, "write a checkpoint's LoRA as a diffusers, kohya or peft safetensors file"},
    {"convert", cmd_convert, "write a single-file checkpoint (A1111/ComfyUI .safetensors) as a diffusers folder"},
    {"coordinator", cmd_coordinator, "the cluster's hub: job queue, prior farm, training over workers and PS"},
    {"ps", cmd_ps, "a cluster parameter server: holds LoRA tensors and AdamW state, sums gradients in order"},
    {"worker", cmd_worker, "a cluster worker: loads the model once, computes prior images, gradients, validation"},
    {"keygen", cmd_keygen, "write a CURVE keypair (secret.key, public.key) for the cluster's encrypted sockets"},
    {"submit", cmd_submit, "queue a training job (booth train's flags) on a cluster's coordinator; --wait follows it"},
    {"status", cmd_status, "show a cluster's jobs, workers and parameter servers (--json for the raw reply)"},
    {"cancel", cmd_cancel, "stop a job queued or running on a cluster"},
    {"fetch", cmd_fetch, "download a finished cluster job's files (LoRA, loss curve, ...) into --output-dir"},
};

static void s_usage(FILE *out)
{
    fprintf(out,
            "usage: booth <command> [options]\n"
            "\n"
            "booth fine-tunes Stable Diffusion on a few photos of one subject (DreamBooth + LoRA).\n"
            "\n"
            "commands:\n");
    for (size_t i = 0; i < sizeof s_cmds / sizeof s_cmds[0]; i++)
        fprintf(out, "  %-12s %s\n", s_cmds[i].name, s_cmds[i].summary);
    fprintf(out,
            "\n"
            "Run `booth <command> --help` (or `booth help <command>`) for a command's options.\n"
            "Environment: BOOTH_THREADS (worker threads), BOOTH_LOG=error|warn|info|debug.\n");
}

int main(int argc, char **argv)
{
    nn_process_init(argc, argv);
    if (argc >= 3 && !strcmp(argv[1], "help")) { /* booth help CMD = booth CMD --help */
        for (size_t i = 0; i < sizeof s_cmds / sizeof s_cmds[0]; i++)
            if (!strcmp(argv[2], s_cmds[i].name)) {
                char *args[] = {argv[2], "--help", NULL};
                return s_cmds[i].fn(2, args);
            }
        fprintf(stderr, "booth help: '%s' is not a booth command (see `booth --help`)\n", argv[2]);
        return 2;
    }
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        s_usage(stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
        printf("booth %s\n", BOOTH_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof s_cmds / sizeof s_cmds[0]; i++)
        if (!strcmp(argv[1], s_cmds[i].name)) return s_cmds[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "booth: '%s' is not a booth command (see `booth --help`)\n", argv[1]);
    return 2;
}
