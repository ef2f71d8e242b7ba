/*
 * train_flags.c — the training options table (train_flags.h).
 */
#include "cli/train_flags.h"

#include "cli/cli.h"

#include <stdio.h>
#include <string.h>

int cli_train_opts(cli_train_flags_t *f, cli_opt_t *opts, int max)
{
    memset(f, 0, sizeof *f);
    sd_train_config_defaults(&f->c);
    f->lr_sched = "constant";
    f->rank = 4;
    const cli_opt_t rows[] = {
        CLI_OPT("--model", CLI_STR, &f->c.model_dir, "DIR", "diffusers model folder to fine-tune (required)"),
        CLI_OPT("--pretrained-model-name-or-path", CLI_STR, &f->c.model_dir, "DIR", "same as --model (diffusers' name)"),
        CLI_OPT("--base-dtype", CLI_STR, &f->base_dtype, "TYPE", CLI_BASE_DTYPE_HELP),
        CLI_OPT("--instance-data-dir", CLI_STR, &f->c.instance_dir, "DIR", "the subject's photos, JPEG/PNG, or a checkpoint (.h5) holding them (required)"),
        CLI_OPT("--instance-prompt", CLI_TEXT, &f->c.instance_prompt, "TEXT", "e.g. \"a photo of sks dog\" (required)"),
        CLI_OPT("--class-prompt", CLI_TEXT, &f->c.class_prompt, "TEXT", "e.g. \"a photo of dog\" (prior preservation)"),
        CLI_OPT("--class-data-dir", CLI_STR, &f->c.class_dir, "DIR|FILE.h5",
                "class images (a folder, or a prior set from `booth priors`); missing ones are generated there "
                "(default OUTPUT/class_images)"),
        CLI_OPT("--with-prior-preservation", CLI_FLAG, &f->c.prior_preservation, NULL,
                "add class images to every step, weighted by --prior-loss-weight"),
        CLI_OPT("--prior-loss-weight", CLI_FLOAT, &f->c.prior_loss_weight, "L", "lambda of the prior loss (default 1)"),
        CLI_OPT("--num-class-images", CLI_INT, &f->c.num_class_images, "N", "class images to use (default 100)"),
        CLI_OPT("--class-inference-steps", CLI_INT, &f->c.class_steps, "N", "steps per generated class image (default 25)"),
        CLI_OPT("--class-guidance", CLI_FLOAT, &f->c.class_guidance, "G", "guidance scale of generated class images (default 7.5)"),
        CLI_OPT("--resolution", CLI_INT, &f->c.resolution, "PX", "training resolution, a multiple of 8 (default 512)"),
        CLI_OPT("--random-flip", CLI_FLAG, &f->c.random_flip, NULL, "mirror examples at random"),
        CLI_OPT("--train-batch-size", CLI_INT, &f->c.train_batch_size, "N", "instance images per step (default 1)"),
        CLI_OPT("--micro-batch-size", CLI_INT, &f->c.micro_batch_size, "N",
                "examples per forward/backward (default: 1 instance + 1 class)"),
        CLI_OPT("--max-train-steps", CLI_I64, &f->c.max_train_steps, "N", "optimizer steps (default 500)"),
        CLI_OPT("--learning-rate", CLI_FLOAT, &f->c.learning_rate, "LR", "AdamW learning rate (default 1e-4)"),
        CLI_OPT("--lr-scheduler", CLI_STR, &f->lr_sched, "NAME",
                "constant, constant_with_warmup, linear or cosine (default constant)"),
        CLI_OPT("--lr-warmup-steps", CLI_I64, &f->c.lr_warmup_steps, "N", "warm-up steps (default 0)"),
        CLI_OPT("--rank", CLI_I64, &f->rank, "R", "LoRA rank (default 4)"),
        CLI_OPT_SEEN("--lora-alpha", CLI_FLOAT, &f->c.lora_alpha, "A", "LoRA alpha (default: the rank)", &f->alpha_seen),
        CLI_OPT("--train-text-encoder", CLI_FLAG, &f->c.train_text_encoder, NULL, "also train LoRA on the text encoder"),
        CLI_OPT("--seed", CLI_U64, &f->c.seed, "S", "everything random derives from (seed, step, example) (default 0)"),
        CLI_OPT("--output-dir", CLI_STR, &f->output_dir, "DIR", "where the LoRA, logs and images go (required)"),
        CLI_OPT("--checkpointing-steps", CLI_INT, &f->c.checkpointing_steps, "N",
                "save the training state as OUTPUT/checkpoint-STEP.h5 every N steps (0: off)"),
        CLI_OPT("--checkpoints-total-limit", CLI_INT, &f->c.checkpoints_total_limit, "K",
                "keep only the K newest checkpoints (default: all)"),
        CLI_OPT("--resume-from-checkpoint", CLI_STR, &f->resume, "PATH|latest",
                "continue from a checkpoint (latest: the newest in --output-dir); same flags as the first run"),
        CLI_OPT("--validation-prompt", CLI_TEXT, &f->c.validation_prompt, "TEXT", "draw this every --validation-steps"),
        CLI_OPT("--validation-steps", CLI_INT, &f->c.validation_steps, "N", "validation interval (default: the end only)"),
        CLI_OPT("--num-validation-images", CLI_INT, &f->c.num_validation_images, "N", "images per validation (default 4)"),
        CLI_OPT("--gradient-checkpointing", CLI_FLAG, &f->c.gradient_checkpointing, NULL,
                "recompute UNet blocks in backward: far less memory, ~30% more time"),
        CLI_OPT("--snr-gamma", CLI_FLOAT, &f->c.snr_gamma, "G", "min-SNR loss weighting (default off; 5 is common)"),
        CLI_OPT("--noise-offset", CLI_FLOAT, &f->c.noise_offset, "X", "offset noise scale (default 0)"),
        CLI_OPT("--max-grad-norm", CLI_FLOAT, &f->c.max_grad_norm, "N", "clip the global gradient norm (default 1)"),
        CLI_OPT("--adam-beta1", CLI_FLOAT, &f->c.adam_beta1, "B", "AdamW beta1 (default 0.9)"),
        CLI_OPT("--adam-beta2", CLI_FLOAT, &f->c.adam_beta2, "B", "AdamW beta2 (default 0.999)"),
        CLI_OPT("--adam-epsilon", CLI_FLOAT, &f->c.adam_epsilon, "E", "AdamW epsilon (default 1e-8)"),
        CLI_OPT("--adam-weight-decay", CLI_FLOAT, &f->c.adam_weight_decay, "W", "AdamW weight decay (default 1e-2)"),
    };
    int n = (int)(sizeof rows / sizeof rows[0]);
    if (n > max) n = max;
    memcpy(opts, rows, (size_t)n * sizeof *opts);
    return n;
}

int cli_train_finish(const char *command, cli_train_flags_t *f, bool need_output_dir)
{
    sd_train_config_t *c = &f->c;
    if (!c->model_dir || !c->instance_dir || !c->instance_prompt || (need_output_dir && !f->output_dir)) {
        fprintf(stderr, "booth %s: --model, --instance-data-dir, --instance-prompt%s are required\n", command,
                need_output_dir ? " and --output-dir" : "");
        return 2;
    }
    if (c->prior_preservation && !c->class_prompt) {
        fprintf(stderr, "booth %s: --with-prior-preservation needs --class-prompt\n", command);
        return 2;
    }
    if (!sd_lr_sched_parse(f->lr_sched, &c->lr_scheduler)) {
        fprintf(stderr, "booth %s: --lr-scheduler '%s' is not constant, constant_with_warmup, linear or cosine\n",
                command, f->lr_sched);
        return 2;
    }
    /* each check names its flag, the value and what is allowed */
    const struct {
        const char *flag;
        int64_t v, lo, hi;
    } ints[] = {{"--rank", f->rank, 1, 1024},
                {"--train-batch-size", c->train_batch_size, 1, 128},
                {"--micro-batch-size", c->micro_batch_size, 0, 256},
                {"--max-train-steps", c->max_train_steps, 1, 100000000},
                {"--num-class-images", c->num_class_images, 1, 100000},
                {"--class-inference-steps", c->class_steps, 1, 1000},
                {"--resolution", c->resolution, 8, 4096},
                {"--lr-warmup-steps", c->lr_warmup_steps, 0, 100000000},
                {"--checkpointing-steps", c->checkpointing_steps, 0, 100000000},
                {"--checkpoints-total-limit", c->checkpoints_total_limit, 0, 1000000},
                {"--validation-steps", c->validation_steps, 0, 100000000},
                {"--num-validation-images", c->num_validation_images, 1, 16}};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
        if (ints[i].v < ints[i].lo || ints[i].v > ints[i].hi) {
            fprintf(stderr, "booth %s: %s %lld is outside %lld..%lld\n", command, ints[i].flag, (long long)ints[i].v,
                    (long long)ints[i].lo, (long long)ints[i].hi);
            return 2;
        }
    if (c->resolution % 8) {
        fprintf(stderr, "booth %s: --resolution %d is not a multiple of 8\n", command, c->resolution);
        return 2;
    }
    /* values that would train on without a word and make nonsense (NaN fails every comparison) */
    const struct {
        const char *flag;
        float v, lo, hi; /* lo <= v < hi */
    } ranges[] = {{"--adam-beta1", c->adam_beta1, 0, 1},          {"--adam-beta2", c->adam_beta2, 0, 1},
                  {"--adam-epsilon", c->adam_epsilon, 1e-30f, 1},  {"--adam-weight-decay", c->adam_weight_decay, 0, 1},
                  {"--snr-gamma", c->snr_gamma, 0, 1e6f},          {"--noise-offset", c->noise_offset, 0, 100},
                  {"--prior-loss-weight", c->prior_loss_weight, 0, 1e6f}, {"--max-grad-norm", c->max_grad_norm, 0, 1e30f},
                  {"--learning-rate", c->learning_rate, 0, 1e3f},  {"--class-guidance", c->class_guidance, 0, 1e3f}};
    for (size_t i = 0; i < sizeof ranges / sizeof ranges[0]; i++)
        if (!(ranges[i].v >= ranges[i].lo && ranges[i].v < ranges[i].hi)) {
            fprintf(stderr, "booth %s: %s %g is outside [%g, %g)\n", command, ranges[i].flag, (double)ranges[i].v,
                    (double)ranges[i].lo, (double)ranges[i].hi);
            return 2;
        }
    if (f->alpha_seen && !(c->lora_alpha > 0 && c->lora_alpha < 1e6f)) {
        fprintf(stderr, "booth %s: --lora-alpha %g must be positive\n", command, (double)c->lora_alpha);
        return 2;
    }
    c->rank = f->rank;
    if (!f->alpha_seen) c->lora_alpha = (float)f->rank;
    return 0;
}
