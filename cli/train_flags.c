/*
 * train_flags.c — the training options table (train_flags.h): every flag of diffusers'
 * train_dreambooth_lora.py, with its default and meaning, plus booth's own. The flags that
 * describe the run another way (epochs, gradient accumulation, --scale-lr, --validation-epochs)
 * become booth's settings here, as diffusers derives them; the ones that make no sense for booth
 * are accepted with a note of what booth does instead.
 */
#include "cli/train_flags.h"

#include "cli/cli.h"
#include "diffusion/config.h"
#include "diffusion/dataset.h"
#include "diffusion/job.h"
#include "diffusion/single_file.h"

#include <stdio.h>
#include <string.h>

#define S_NO_HUB "booth uploads nothing: the LoRA files are in --output-dir"

int cli_train_opts(cli_train_flags_t *f, cli_opt_t *opts, int max)
{
    memset(f, 0, sizeof *f);
    sd_train_config_defaults(&f->c);
    f->lr_sched = "constant";
    f->rank = 4;
    f->grad_accum = 1;
    f->num_train_epochs = 1;
    f->validation_epochs = 50;
    f->sample_batch_size = 4;
    const cli_opt_t rows[] = {
        CLI_OPT("--model", CLI_STR, &f->c.model_dir, "DIR|FILE", "the diffusers model folder, or single-file checkpoint (.safetensors), to fine-tune " CLI_MODEL_DEFAULT_HELP),
        CLI_OPT("--pretrained-model-name-or-path", CLI_STR, &f->c.model_dir, "DIR", "same as --model (diffusers' name)"),
        CLI_OPT("--base-dtype", CLI_STR, &f->base_dtype, "TYPE", CLI_BASE_DTYPE_HELP),
        CLI_OPT("--prediction-type", CLI_STR, &f->prediction, "TYPE", CLI_PREDICTION_HELP),
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
        CLI_OPT("--sample-batch-size", CLI_INT, &f->sample_batch_size, "N",
                "diffusers' batch for drawing class images (default 4); booth draws them one by one, each from "
                "its own seed, so any value gives the same images"),
        CLI_OPT("--prior-generation-precision", CLI_STR, &f->prior_precision, "TYPE",
                "no, fp32, fp16 or bf16; booth draws class images in fp32 from the weights --base-dtype keeps"),
        CLI_OPT_SEEN("--resolution", CLI_INT, &f->c.resolution, "PX",
                     "training resolution, a multiple of 8 (default: the model's own, UNet sample_size x the VAE's "
                     "scale: 512 for SD 1.5, 768 for SD 2.1)",
                     &f->resolution_seen),
        CLI_OPT("--center-crop", CLI_FLAG, &f->center_crop, NULL,
                "cut each photo's centre square (default: a random square, drawn from --seed and the photo's "
                "index; photos are encoded once, so it is one crop per photo per run, the same for any worker count)"),
        CLI_OPT("--random-flip", CLI_FLAG, &f->c.random_flip, NULL, "mirror examples at random"),
        CLI_OPT("--train-batch-size", CLI_INT, &f->c.train_batch_size, "N", "instance images per step (default 1)"),
        CLI_OPT("--gradient-accumulation-steps", CLI_INT, &f->grad_accum, "N",
                "batches summed into one optimizer step (default 1): a step takes --train-batch-size x N "
                "instance images, in micro-batches of --micro-batch-size"),
        CLI_OPT("--micro-batch-size", CLI_INT, &f->c.micro_batch_size, "N",
                "examples per forward/backward (default: 1 instance + 1 class)"),
        CLI_OPT_SEEN("--num-train-epochs", CLI_INT, &f->num_train_epochs, "N",
                     "epochs to train when --max-train-steps is not given: steps = N x ceil(ceil(images / batch) / "
                     "accumulation), images = max(photos, class images) with priors, as diffusers counts",
                     &f->epochs_seen),
        CLI_OPT_SEEN("--max-train-steps", CLI_I64, &f->c.max_train_steps, "N",
                     "optimizer steps (default 500); wins over --num-train-epochs", &f->steps_seen),
        CLI_OPT("--learning-rate", CLI_FLOAT, &f->c.learning_rate, "LR", "AdamW learning rate (default 1e-4)"),
        CLI_OPT("--scale-lr", CLI_FLAG, &f->scale_lr, NULL,
                "multiply the learning rate by batch size x accumulation steps (x processes: one, in booth; a "
                "cluster computes the same step)"),
        CLI_OPT("--lr-scheduler", CLI_STR, &f->lr_sched, "NAME", SD_LR_NAMES " (default constant)"),
        CLI_OPT("--lr-warmup-steps", CLI_I64, &f->c.lr_warmup_steps, "N", "warm-up steps (default 0)"),
        CLI_OPT("--lr-num-cycles", CLI_INT, &f->c.lr_num_cycles, "N", "hard restarts of cosine_with_restarts (default 1)"),
        CLI_OPT("--lr-power", CLI_FLOAT, &f->c.lr_power, "P", "power of the polynomial schedule (default 1: linear to 1e-7)"),
        CLI_OPT("--train-unet", CLI_STR, &f->train_unet, "lora|full",
                "lora (default): LoRA adapters on the attention projections; full: every UNet weight, as "
                "diffusers' train_dreambooth.py (the original DreamBooth); the output folder is then a diffusers "
                "model folder"),
        CLI_OPT("--rank", CLI_I64, &f->rank, "R", "LoRA rank (default 4)"),
        CLI_OPT_SEEN("--lora-alpha", CLI_FLOAT, &f->c.lora_alpha, "A", "LoRA alpha (default: the rank)", &f->alpha_seen),
        CLI_OPT("--train-text-encoder", CLI_FLAG, &f->c.train_text_encoder, NULL,
                "also train the text encoder: LoRA, or with --train-unet full every text-encoder weight"),
        CLI_OPT("--seed", CLI_U64, &f->c.seed, "S", "everything random derives from (seed, step, example) (default 0)"),
        CLI_OPT("--output-dir", CLI_STR, &f->output_dir, "DIR", "where the LoRA, logs and images go (required)"),
        CLI_OPT("--overwrite", CLI_FLAG, &f->overwrite, NULL,
                "train into an --output-dir that holds another run's checkpoints (they are deleted)"),
        CLI_OPT("--logging-dir", CLI_STR, &f->logging_dir, "DIR",
                "where loss.csv goes: a CSV (step, loss, lr, grad norm, seconds) any spreadsheet or pandas "
                "opens; relative to --output-dir as in diffusers (default: --output-dir itself)"),
        CLI_OPT("--checkpointing-steps", CLI_INT, &f->c.checkpointing_steps, "N",
                "save the training state as OUTPUT/checkpoint-STEP.h5 every N steps (0: off)"),
        CLI_OPT("--checkpoints-total-limit", CLI_INT, &f->c.checkpoints_total_limit, "K",
                "keep only the K newest checkpoints (default: all)"),
        CLI_OPT("--resume-from-checkpoint", CLI_STR, &f->resume, "PATH|latest",
                "continue from a checkpoint (latest: the newest in --output-dir); same flags as the first run"),
        CLI_OPT("--validation-prompt", CLI_TEXT, &f->c.validation_prompt, "TEXT", "draw this every --validation-steps"),
        CLI_OPT_SEEN("--validation-steps", CLI_INT, &f->c.validation_steps, "N",
                     "validation interval (default: the end only)", &f->val_steps_seen),
        CLI_OPT_SEEN("--validation-epochs", CLI_INT, &f->validation_epochs, "N",
                     "validation every N epochs (N x steps per epoch steps; diffusers' default 50 applies only "
                     "when given)",
                     &f->val_epochs_seen),
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
        /* diffusers' flags with nothing to do in booth: accepted, with what booth does instead */
        CLI_OPT("--revision", CLI_NOTE, NULL, NULL, "booth reads the model folder as it is on disk"),
        CLI_OPT("--variant", CLI_NOTE, NULL, NULL,
                "booth loads the weight files the folder has (fp16 or not); --base-dtype chooses what is kept"),
        CLI_OPT("--tokenizer-name", CLI_NOTE, NULL, NULL, "booth uses the model folder's tokenizer"),
        CLI_OPT("--mixed-precision", CLI_NOTE, NULL, NULL,
                "booth computes in fp32; --base-dtype fp16 or bf16 halves the frozen weights' memory"),
        CLI_OPT("--report-to", CLI_NOTE, NULL, NULL,
                "booth writes loss.csv and loss.png (--output-dir, or --logging-dir) and sends nothing anywhere"),
        CLI_OPT("--push-to-hub", CLI_NOTE_FLAG, NULL, NULL, S_NO_HUB),
        CLI_OPT("--hub-token", CLI_NOTE, NULL, NULL, S_NO_HUB),
        CLI_OPT("--hub-model-id", CLI_NOTE, NULL, NULL, S_NO_HUB),
        CLI_OPT("--allow-tf32", CLI_NOTE_FLAG, NULL, NULL, "booth computes in plain fp32"),
        CLI_OPT("--enable-xformers-memory-efficient-attention", CLI_NOTE_FLAG, NULL, NULL,
                "booth's attention is its own; --gradient-checkpointing saves memory"),
        CLI_OPT("--use-8bit-adam", CLI_NOTE_FLAG, NULL, NULL, "booth keeps AdamW's state in fp32 (LoRA's is small)"),
        CLI_OPT("--dataloader-num-workers", CLI_NOTE, NULL, NULL,
                "photos are decoded and encoded once before training; BOOTH_THREADS sets the compute threads"),
        CLI_OPT("--local-rank", CLI_NOTE, NULL, NULL, "booth train is one process; booth submit trains on a cluster"),
        CLI_OPT("--set-grads-to-none", CLI_NOTE_FLAG, NULL, NULL, "booth overwrites the gradients every micro-batch"),
        CLI_OPT("--pre-compute-text-embeddings", CLI_NOTE_FLAG, NULL, NULL,
                "booth does it whenever the text encoder is frozen"),
        CLI_OPT("--tokenizer-max-length", CLI_NOTE, NULL, NULL, "booth uses the tokenizer's model_max_length"),
        CLI_OPT("--text-encoder-use-attention-mask", CLI_NOTE_FLAG, NULL, NULL,
                "SD 1.x/2.x text encoders take no attention mask"),
        CLI_OPT("--validation-images", CLI_NOTE, NULL, NULL, "for DeepFloyd IF's upscaler, which booth does not train"),
        CLI_OPT("--class-labels-conditioning", CLI_NOTE, NULL, NULL, "for DeepFloyd IF, which booth does not train"),
        CLI_OPT("--image-interpolation-mode", CLI_NOTE, NULL, NULL,
                "booth resizes photos with antialiased bilinear (torchvision's default)"),
    };
    int n = (int)(sizeof rows / sizeof rows[0]);
    if (n > max) n = max;
    memcpy(opts, rows, (size_t)n * sizeof *opts);
    return n;
}

int cli_native_resolution(const char *model_dir)
{
    char path[4200];
    sd_unet_config_t u;
    sd_vae_config_t v;
    if (sd_single_file_is(model_dir)) { /* --model FILE.safetensors: the configs its shapes imply */
        sd_single_file_t *sf = sd_single_file_open(model_dir, NULL);
        if (!sf) return 0;
        u = sf->unet;
        v = sf->vae;
        sd_single_file_close(&sf);
    } else {
        snprintf(path, sizeof path, "%s/unet/config.json", model_dir);
        if (sd_unet_config_load(path, &u)) return 0;
        snprintf(path, sizeof path, "%s/vae/config.json", model_dir);
        if (sd_vae_config_load(path, &v)) return 0;
    }
    int64_t px = u.sample_size << (v.n_blocks > 0 ? v.n_blocks - 1 : 0);
    return px >= 8 && px <= 8192 ? (int)px : 0;
}

/* The photos an epoch visits, as diffusers' DreamBoothDataset counts them; 0 after one line. */
static int64_t s_epoch_images(const char *command, const sd_train_config_t *c)
{
    if (sd_is_prior_file(c->instance_dir)) {
        fprintf(stderr,
                "booth %s: --num-train-epochs and --validation-epochs count the photos of a folder; with a .h5 "
                "--instance-data-dir give --max-train-steps and --validation-steps\n",
                command);
        return 0;
    }
    char **paths = NULL;
    int n = sd_list_images(c->instance_dir, &paths);
    sd_free_paths(paths);
    if (n < 0) return 0;
    if (n == 0) {
        fprintf(stderr, "booth %s: %s: no JPEG or PNG images\n", command, c->instance_dir);
        return 0;
    }
    return c->prior_preservation && c->num_class_images > n ? c->num_class_images : n;
}

int cli_train_finish(const char *command, cli_train_flags_t *f, bool need_output_dir)
{
    sd_train_config_t *c = &f->c;
    if (!c->instance_dir || !c->instance_prompt || (need_output_dir && !f->output_dir)) {
        fprintf(stderr, "booth %s: --instance-data-dir, --instance-prompt%s are required\n", command,
                need_output_dir ? " and --output-dir" : "");
        return 2;
    }
    if (!c->model_dir && !(c->model_dir = cli_default_model(command))) return 2;
    if (c->prior_preservation && !c->class_prompt) {
        fprintf(stderr, "booth %s: --with-prior-preservation needs --class-prompt\n", command);
        return 2;
    }
    /* diffusers' warnings, word for word in meaning */
    if (!c->prior_preservation && c->class_prompt)
        fprintf(stderr, "booth %s: warning: --class-prompt is not used without --with-prior-preservation\n", command);
    if (!c->prior_preservation && c->class_dir)
        fprintf(stderr, "booth %s: warning: --class-data-dir is not used without --with-prior-preservation\n",
                command);
    if (!c->validation_prompt && (f->val_steps_seen || f->val_epochs_seen))
        fprintf(stderr, "booth %s: warning: --validation-%s does nothing without --validation-prompt\n", command,
                f->val_steps_seen ? "steps" : "epochs");
    if (f->train_unet && strcmp(f->train_unet, "lora") && strcmp(f->train_unet, "full")) {
        fprintf(stderr, "booth %s: --train-unet '%s' is not lora or full\n", command, f->train_unet);
        return 2;
    }
    c->full_unet = f->train_unet && !strcmp(f->train_unet, "full");
    if (!sd_lr_sched_parse(f->lr_sched, &c->lr_scheduler)) {
        fprintf(stderr, "booth %s: --lr-scheduler '%s' is not %s\n", command, f->lr_sched, SD_LR_NAMES);
        return 2;
    }
    if (f->prior_precision && strcmp(f->prior_precision, "no") && strcmp(f->prior_precision, "fp32") &&
        strcmp(f->prior_precision, "fp16") && strcmp(f->prior_precision, "bf16")) {
        fprintf(stderr, "booth %s: --prior-generation-precision '%s' is not no, fp32, fp16 or bf16\n", command,
                f->prior_precision);
        return 2;
    }
    if (f->prior_precision && strcmp(f->prior_precision, "no") && strcmp(f->prior_precision, "fp32"))
        fprintf(stderr,
                "booth %s: note: --prior-generation-precision %s: class images are drawn in fp32 from the weights "
                "--base-dtype keeps\n",
                command, f->prior_precision);
    if (!f->resolution_seen) {
        int px = cli_native_resolution(c->model_dir);
        if (px) {
            c->resolution = px;
        } else if (strcmp(command, "submit")) {
            return 2; /* the model folder cannot be read: the config loader said why */
        } /* submit to a model only the workers hold: 512 (SD 1.x), or --resolution */
    }
    /* each check names its flag, the value and what is allowed: first the flags that are not job
     * settings, then every setting by the job's own range table (diffusion/job.h), the one a job file
     * or a Submit is held to */
    const struct {
        const char *flag;
        int64_t v, lo, hi;
    } ints[] = {{"--gradient-accumulation-steps", f->grad_accum, 1, 128},
                {"--num-train-epochs", f->num_train_epochs, 1, 1000000},
                {"--sample-batch-size", f->sample_batch_size, 1, 1024},
                {"--validation-epochs", f->validation_epochs, 1, 1000000}};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
        if (ints[i].v < ints[i].lo || ints[i].v > ints[i].hi) {
            fprintf(stderr, "booth %s: %s %lld is outside %lld..%lld\n", command, ints[i].flag, (long long)ints[i].v,
                    (long long)ints[i].lo, (long long)ints[i].hi);
            return 2;
        }
    c->rank = f->rank;
    int nr;
    const sd_job_range_t *jr = sd_job_ranges(&nr);
    for (int i = 0; i < nr; i++) {
        double v;
        if (!strcmp(jr[i].key, "lora_alpha") || !sd_job_value(c, jr[i].key, &v) || sd_job_in_range(&jr[i], v))
            continue; /* --lora-alpha: checked below, where 0 is refused too */
        char flag[64];
        snprintf(flag, sizeof flag, "%s", jr[i].key);
        for (char *p = flag; *p; p++) *p = *p == '_' ? '-' : *p;
        if (jr[i].real)
            fprintf(stderr, "booth %s: --%s %g is outside [%g, %g)\n", command, flag, v, jr[i].lo, jr[i].hi);
        else
            fprintf(stderr, "booth %s: --%s %lld is outside %lld..%lld\n", command, flag, (long long)v,
                    (long long)jr[i].lo, (long long)jr[i].hi);
        return 2;
    }
    if (c->resolution % 8) {
        fprintf(stderr, "booth %s: --resolution %d is not a multiple of 8\n", command, c->resolution);
        return 2;
    }
    if ((int64_t)c->train_batch_size * f->grad_accum > 128) {
        fprintf(stderr,
                "booth %s: --train-batch-size %d x --gradient-accumulation-steps %d = %lld instance images a step, "
                "over the limit of 128\n",
                command, c->train_batch_size, f->grad_accum, (long long)c->train_batch_size * f->grad_accum);
        return 2;
    }
    /* an alpha of 0 scales the LoRA's output, and so its gradients, to nothing: nothing would train */
    if (f->alpha_seen && !(c->lora_alpha > 0 && c->lora_alpha < 1e6f)) {
        fprintf(stderr,
                "booth %s: --lora-alpha %g is outside (0, 1e6): the LoRA's output is scaled by alpha / rank, "
                "so 0 trains nothing (default: the rank)\n",
                command, (double)c->lora_alpha);
        return 2;
    }

    /* diffusers' derived settings: epochs to steps, then the batch, then the learning rate */
    if (f->epochs_seen || f->val_epochs_seen) {
        int64_t images = s_epoch_images(command, c);
        if (!images) return 2;
        int64_t batches = (images + c->train_batch_size - 1) / c->train_batch_size;
        f->steps_per_epoch = (batches + f->grad_accum - 1) / f->grad_accum;
        if (f->epochs_seen && f->steps_seen)
            fprintf(stderr, "booth %s: note: --max-train-steps %lld wins over --num-train-epochs %d (as in diffusers)\n",
                    command, (long long)c->max_train_steps, f->num_train_epochs);
        else if (f->epochs_seen)
            c->max_train_steps = f->num_train_epochs * f->steps_per_epoch;
        if (f->val_epochs_seen && f->val_steps_seen) {
            fprintf(stderr, "booth %s: --validation-steps and --validation-epochs say the same thing; give one\n",
                    command);
            return 2;
        }
        if (f->val_epochs_seen) c->validation_steps = (int)(f->validation_epochs * f->steps_per_epoch > 100000000
                                                                 ? 100000000
                                                                 : f->validation_epochs * f->steps_per_epoch);
    }
    if (f->scale_lr) c->learning_rate *= (float)(f->grad_accum * c->train_batch_size);
    c->train_batch_size *= f->grad_accum;
    if (c->lr_scheduler == SD_LR_POLYNOMIAL && !((double)c->learning_rate > SD_LR_POLY_END)) {
        fprintf(stderr, "booth %s: --learning-rate %g must be above lr_end %g for --lr-scheduler polynomial\n", command,
                (double)c->learning_rate, SD_LR_POLY_END);
        return 2;
    }
    if (!(c->learning_rate < 1e3f)) {
        fprintf(stderr, "booth %s: --scale-lr makes the learning rate %g, over 1000\n", command,
                (double)c->learning_rate);
        return 2;
    }
    c->center_crop = f->center_crop;
    if (f->logging_dir) {
        if (f->logging_dir[0] == '/' || !f->output_dir)
            snprintf(f->logging_path, sizeof f->logging_path, "%s", f->logging_dir);
        else
            cli_join_path(f->logging_path, sizeof f->logging_path, f->output_dir, f->logging_dir);
    }
    c->rank = f->rank;
    if (!f->alpha_seen) c->lora_alpha = (float)f->rank;
    return 0;
}
