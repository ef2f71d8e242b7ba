/*
 * pretrain.c — `booth pretrain`: booth's own base model, trained from scratch on the synthetic
 * world (diffusion/pretrain.h, docs/WORLD.md).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "diffusion/pretrain.h"

int cmd_pretrain(int argc, char **argv)
{
    sd_pretrain_config_t c;
    sd_pretrain_defaults(&c);
    const char *state = NULL, *log = NULL;
    bool fp16 = false;
    const cli_opt_t opts[] = {
        CLI_OPT("--model", CLI_STR, &c.model_dir, "DIR",
                "the model folder to train (required); made, with the world model's architecture and a "
                "seeded initialisation, when it holds no model_index.json"),
        CLI_OPT("--state", CLI_STR, &state, "FILE",
                "the training state (weights, their average, AdamW's moments, the step): resumed from when "
                "it exists (default DIR.state.safetensors, beside DIR)"),
        CLI_OPT("--log", CLI_STR, &log, "FILE", "the loss per step as CSV (default DIR.loss.csv, beside DIR)"),
        CLI_OPT("--resolution", CLI_INT, &c.resolution, "PX", "image side for a new folder (default 32)"),
        CLI_OPT("--seed", CLI_U64, &c.seed, "S", "initialisation, noise, timesteps, caption dropout (default 0)"),
        CLI_OPT("--world-seed", CLI_U64, &c.world_seed, "S", "which world scenes (default 0)"),
        CLI_OPT("--batch-size", CLI_INT, &c.batch, "N", "scenes per step (default 32)"),
        CLI_OPT("--steps", CLI_I64, &c.steps, "N", "optimizer steps in all (default 20000)"),
        CLI_OPT("--warmup", CLI_I64, &c.warmup, "N", "linear learning-rate warm-up steps (default 500)"),
        CLI_OPT("--learning-rate", CLI_FLOAT, &c.lr, "LR", "AdamW's learning rate after warm-up (default 5e-4)"),
        CLI_OPT("--weight-decay", CLI_FLOAT, &c.weight_decay, "W", "AdamW's weight decay (default 0)"),
        CLI_OPT("--ema", CLI_FLOAT, &c.ema, "D", "decay of the weights' average, which the folder gets (default 0.999)"),
        CLI_OPT("--uncond", CLI_FLOAT, &c.uncond, "P",
                "probability of training on the empty prompt, for classifier-free guidance (default 0.1)"),
        CLI_OPT("--partial", CLI_FLOAT, &c.partial, "P",
                "probability of a caption without its colour, background or both (default 0.3)"),
        CLI_OPT("--save-every", CLI_INT, &c.save_every, "N",
                "steps between saves of the state and the folder (default 500; 0: at the end)"),
        CLI_OPT("--fp16", CLI_FLAG, &fp16, NULL, "write the folder's last version in fp16 (what ships)"),
        CLI_END,
    };
    const cli_spec_t spec = {
        "pretrain", "--model DIR [--steps N] [--batch-size N] [--seed S] [--world-seed S] [options]",
        "Trains booth's own base model from scratch on the synthetic world (`booth world`): the UNet\n"
        "and text encoder of a small Stable Diffusion model, with a constructed VAE that is an exact\n"
        "codec at the world's resolution (docs/WORLD.md). Each step draws new scenes; the result\n"
        "depends only on the seeds and the flags, and a stopped run resumes from its state to the\n"
        "same bytes.",
        opts, 0, NULL};
    const char *pos[1];
    int npos, rc = cli_parse(&spec, argc, argv, pos, &npos);
    if (rc >= 0) return rc;
    if (!c.model_dir) {
        fprintf(stderr, "booth pretrain: --model DIR is required (see --help)\n");
        return 2;
    }
    const cli_irange_t ranges[] = {{"--batch-size", c.batch, 1, 4096},
                                   {"--steps", c.steps, 1, 100000000},
                                   {"--warmup", c.warmup, 0, 100000000},
                                   {"--resolution", c.resolution, 16, 512},
                                   {"--save-every", c.save_every, 0, 100000000}};
    if ((rc = cli_check_ranges("pretrain", ranges, sizeof ranges / sizeof ranges[0]))) return rc;
    if (c.resolution % 8) {
        fprintf(stderr, "booth pretrain: --resolution %d is not a multiple of 8\n", c.resolution);
        return 2;
    }
    if (!(c.lr > 0 && c.lr < 1) || !(c.ema >= 0 && c.ema < 1) || !(c.uncond >= 0 && c.uncond <= 1) ||
        !(c.partial >= 0 && c.partial <= 1) ||
        !(c.weight_decay >= 0 && c.weight_decay < 1)) {
        fprintf(stderr, "booth pretrain: --learning-rate and --ema are in (0, 1), --uncond, --partial and "
                        "--weight-decay in [0, 1]\n");
        return 2;
    }
    char dir[4096], sbuf[4200], lbuf[4200];
    cli_join_path(dir, sizeof dir, c.model_dir, NULL);
    c.model_dir = dir;
    if (!state) snprintf(sbuf, sizeof sbuf, "%s.state.safetensors", dir);
    if (!log) snprintf(lbuf, sizeof lbuf, "%s.loss.csv", dir);
    c.state_path = state ? state : sbuf;
    c.log_path = log ? log : lbuf;
    c.final_fp16 = fp16;
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    if (!ctx) return 1;
    rc = sd_pretrain(ctx, &c);
    nn_ctx_destroy(&ctx);
    if (rc) return 1;
    printf("%s\n%s\n%s\n", dir, c.state_path, c.log_path);
    return 0;
}
