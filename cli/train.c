/*
 * train.c — `booth train`: DreamBooth LoRA fine-tuning in one process, with
 * diffusers' flag names. Writes into --output-dir:
 *   pytorch_lora_weights.safetensors         the LoRA, diffusers layout
 *   pytorch_lora_weights_kohya.safetensors   the same LoRA, kohya layout (A1111, ComfyUI)
 *   loss.csv, loss.png                       loss per step and its curve
 *   validation/step-NNNNNN.png               validation grids (--validation-prompt)
 *   checkpoint-N.h5                          the whole training state every --checkpointing-steps
 *                                            (docs/FORMAT.md; `booth inspect`, `booth export`)
 *
 * --resume-from-checkpoint PATH|latest continues a run from a checkpoint; the
 * result is byte-identical to a run that was never interrupted.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "common/fileio.h"
#include "common/image.h"
#include "common/log.h"
#include "common/plot.h"
#include "common/progress.h"
#include "common/status.h"
#include "diffusion/checkpoint.h"
#include "diffusion/lora_io.h"
#include "diffusion/train.h"
#include "nn/nn.h"
#include "storage/png.h"

typedef struct {
    bt_progress_t bar;
    const char *label;
} s_prep_t;

static void s_prep_progress(void *user, int done, int total, const float *latents)
{
    (void)latents;
    s_prep_t *p = user;
    if (done == 1 || p->bar.total != total) bt_progress_start(&p->bar, p->label, total, "img");
    bt_progress_update(&p->bar, done, NULL);
    if (done == total) bt_progress_finish(&p->bar, NULL);
}

static int s_save_lora(const sd_trainer_t *t, const char *dir, const char *model)
{
    char path[4096];
    const char *meta[] = {"booth.base_model", model, NULL};
    int rc = bt_mkdirs(dir);
    snprintf(path, sizeof path, "%s/pytorch_lora_weights.safetensors", dir);
    if (rc == BT_OK) rc = sd_lora_save(path, ST_LORA_DIFFUSERS, ST_F32, t->lora_unet, t->lora_text, meta);
    snprintf(path, sizeof path, "%s/pytorch_lora_weights_kohya.safetensors", dir);
    if (rc == BT_OK) rc = sd_lora_save(path, ST_LORA_KOHYA, ST_F32, t->lora_unet, t->lora_text, meta);
    return rc;
}

/* num images of `prompt` with the current LoRA as one labelled grid. embeds: the
 * prompt's and the empty prompt's embeddings, computed once when the text
 * encoder is frozen; NULL: encode them now (with its LoRA as it is). */
static int s_validate(sd_trainer_t *t, const char *prompt, const float *embeds, int num, int64_t step,
                      const char *dir)
{
    sd_model_t *m = t->model;
    int64_t h = t->instances.h, w = t->instances.w, C = t->instances.C, T = t->T;
    int64_t cd = m->unet->cfg.cross_attention_dim[0], npix = 3 * h * 8 * w * 8;
    int rc = BT_OK;
    float *own = embeds ? NULL : nn_alloc(m->ctx, (size_t)(2 * T * cd) * sizeof(float));
    float *lat = malloc((size_t)(C * h * w) * sizeof(float)), *img = malloc((size_t)npix * sizeof(float));
    bt_img_t *tiles[16] = {0};
    if (num > 16) num = 16;
    if ((!embeds && !own) || !lat || !img) {
        rc = BT_ENOMEM;
        goto out;
    }
    if (own) {
        if ((rc = sd_encode_prompt(m, own + T * cd, prompt, 0)) || (rc = sd_encode_prompt(m, own, "", 0))) goto out;
        embeds = own;
    }
    sd_sample_params_t p = {.guidance = 7.5f, .steps = 25, .sampler = m->default_sampler, .seed = t->cfg.seed};
    for (int i = 0; i < num; i++) {
        p.first_index = i; /* the same noise at every validation: the grids are comparable */
        if ((rc = sd_sample(m, &p, embeds + T * cd, embeds, T, lat, false, 1, h, w)) ||
            (rc = sd_decode(m, img, NULL, lat, 1, h, w)))
            goto out;
        if (!(tiles[i] = bt_img_from_f32_chw(img, 3, (int)(h * 8), (int)(w * 8), BT_IMG_RANGE_01))) {
            rc = BT_ENOMEM;
            goto out;
        }
    }
    char title[512], path[8192];
    snprintf(title, sizeof title, "step %lld: %s", (long long)step, prompt);
    bt_img_grid_opts_t o = BT_IMG_GRID_OPTS_INIT;
    o.title = title;
    int cols = num < 4 ? num : 4, rows = (num + cols - 1) / cols;
    bt_img_t *grid = bt_img_grid((const bt_img_t *const *)tiles, rows, cols, &o);
    snprintf(path, sizeof path, "%s/step-%06lld.png", dir, (long long)step);
    rc = grid ? bt_png_write(path, grid, NULL, 0) : BT_ENOMEM;
    bt_img_destroy(&grid);
out:
    for (int i = 0; i < 16; i++) bt_img_destroy(&tiles[i]);
    if (own) nn_free(m->ctx, own);
    free(lat);
    free(img);
    return rc;
}

static int s_plot_loss(const char *path, const float *loss, int n)
{
    float *avg = malloc((size_t)(n ? n : 1) * sizeof(float)), *x = malloc((size_t)(n ? n : 1) * sizeof(float));
    if (!avg || !x) {
        free(avg);
        free(x);
        return BT_ENOMEM;
    }
    for (int i = 0; i < n; i++) x[i] = (float)(i + 1);
    bt_plot_moving_average(loss, n, n >= 50 ? 10 : 3, avg);
    bt_plot_series_t s[2] = {{.label = "loss", .x = x, .y = loss, .n = n, .color = 0x9ecae1, .line_width = 1.0f},
                             {.label = "moving average", .x = x, .y = avg, .n = n, .color = 0x08519c, .line_width = 2.0f}};
    bt_plot_opts_t o = {.title = "DreamBooth LoRA training loss", .x_label = "step", .y_label = "loss"};
    bt_img_t *img = bt_img_plot_lines(960, 540, s, 2, &o);
    int rc = img ? bt_png_write(path, img, NULL, 0) : BT_ENOMEM;
    bt_img_destroy(&img);
    free(avg);
    free(x);
    return rc;
}

int cmd_train(int argc, char **argv)
{
    sd_train_config_t c;
    sd_train_config_defaults(&c);
    const char *output_dir = NULL, *lr_sched = "constant", *validation_prompt = NULL, *resume = NULL;
    const char *base_dtype = NULL;
    int checkpointing_steps = 0, checkpoints_total_limit = 0, validation_steps = 0, num_validation_images = 4;
    int64_t rank = 4;
    bool alpha_seen = false;
    const cli_opt_t opts[] = {
        CLI_OPT("--model", CLI_STR, &c.model_dir, "DIR", "diffusers model folder to fine-tune (required)"),
        CLI_OPT("--pretrained-model-name-or-path", CLI_STR, &c.model_dir, "DIR", "same as --model (diffusers' name)"),
        CLI_OPT("--base-dtype", CLI_STR, &base_dtype, "TYPE", CLI_BASE_DTYPE_HELP),
        CLI_OPT("--instance-data-dir", CLI_STR, &c.instance_dir, "DIR", "the subject's photos, JPEG/PNG (required)"),
        CLI_OPT("--instance-prompt", CLI_STR, &c.instance_prompt, "TEXT", "e.g. \"a photo of sks dog\" (required)"),
        CLI_OPT("--class-prompt", CLI_STR, &c.class_prompt, "TEXT", "e.g. \"a photo of dog\" (prior preservation)"),
        CLI_OPT("--class-data-dir", CLI_STR, &c.class_dir, "DIR|FILE.h5",
                "class images (a folder, or a prior set from `booth priors`); missing ones are generated there "
                "(default OUTPUT/class_images)"),
        CLI_OPT("--with-prior-preservation", CLI_FLAG, &c.prior_preservation, NULL,
                "add class images to every step, weighted by --prior-loss-weight"),
        CLI_OPT("--prior-loss-weight", CLI_FLOAT, &c.prior_loss_weight, "L", "lambda of the prior loss (default 1)"),
        CLI_OPT("--num-class-images", CLI_INT, &c.num_class_images, "N", "class images to use (default 100)"),
        CLI_OPT("--class-inference-steps", CLI_INT, &c.class_steps, "N", "steps per generated class image (default 25)"),
        CLI_OPT("--resolution", CLI_INT, &c.resolution, "PX", "training resolution, a multiple of 8 (default 512)"),
        CLI_OPT("--random-flip", CLI_FLAG, &c.random_flip, NULL, "mirror examples at random"),
        CLI_OPT("--train-batch-size", CLI_INT, &c.train_batch_size, "N", "instance images per step (default 1)"),
        CLI_OPT("--micro-batch-size", CLI_INT, &c.micro_batch_size, "N",
                "examples per forward/backward (default: 1 instance + 1 class)"),
        CLI_OPT("--max-train-steps", CLI_I64, &c.max_train_steps, "N", "optimizer steps (default 500)"),
        CLI_OPT("--learning-rate", CLI_FLOAT, &c.learning_rate, "LR", "AdamW learning rate (default 1e-4)"),
        CLI_OPT("--lr-scheduler", CLI_STR, &lr_sched, "NAME",
                "constant, constant_with_warmup, linear or cosine (default constant)"),
        CLI_OPT("--lr-warmup-steps", CLI_I64, &c.lr_warmup_steps, "N", "warm-up steps (default 0)"),
        CLI_OPT("--rank", CLI_I64, &rank, "R", "LoRA rank (default 4)"),
        CLI_OPT_SEEN("--lora-alpha", CLI_FLOAT, &c.lora_alpha, "A", "LoRA alpha (default: the rank)", &alpha_seen),
        CLI_OPT("--train-text-encoder", CLI_FLAG, &c.train_text_encoder, NULL, "also train LoRA on the text encoder"),
        CLI_OPT("--seed", CLI_U64, &c.seed, "S", "everything random derives from (seed, step, example) (default 0)"),
        CLI_OPT("--output-dir", CLI_STR, &output_dir, "DIR", "where the LoRA, logs and images go (required)"),
        CLI_OPT("--checkpointing-steps", CLI_INT, &checkpointing_steps, "N",
                "save the training state as OUTPUT/checkpoint-STEP.h5 every N steps (0: off)"),
        CLI_OPT("--checkpoints-total-limit", CLI_INT, &checkpoints_total_limit, "K",
                "keep only the K newest checkpoints (default: all)"),
        CLI_OPT("--resume-from-checkpoint", CLI_STR, &resume, "PATH|latest",
                "continue from a checkpoint (latest: the newest in --output-dir); same flags as the first run"),
        CLI_OPT("--validation-prompt", CLI_STR, &validation_prompt, "TEXT", "draw this every --validation-steps"),
        CLI_OPT("--validation-steps", CLI_INT, &validation_steps, "N", "validation interval (default: the end only)"),
        CLI_OPT("--num-validation-images", CLI_INT, &num_validation_images, "N", "images per validation (default 4)"),
        CLI_OPT("--gradient-checkpointing", CLI_FLAG, &c.gradient_checkpointing, NULL,
                "recompute UNet blocks in backward: far less memory, ~30% more time"),
        CLI_OPT("--snr-gamma", CLI_FLOAT, &c.snr_gamma, "G", "min-SNR loss weighting (default off; 5 is common)"),
        CLI_OPT("--noise-offset", CLI_FLOAT, &c.noise_offset, "X", "offset noise scale (default 0)"),
        CLI_OPT("--max-grad-norm", CLI_FLOAT, &c.max_grad_norm, "N", "clip the global gradient norm (default 1)"),
        CLI_OPT("--adam-beta1", CLI_FLOAT, &c.adam_beta1, "B", "AdamW beta1 (default 0.9)"),
        CLI_OPT("--adam-beta2", CLI_FLOAT, &c.adam_beta2, "B", "AdamW beta2 (default 0.999)"),
        CLI_OPT("--adam-epsilon", CLI_FLOAT, &c.adam_epsilon, "E", "AdamW epsilon (default 1e-8)"),
        CLI_OPT("--adam-weight-decay", CLI_FLOAT, &c.adam_weight_decay, "W", "AdamW weight decay (default 1e-2)"),
        CLI_END,
    };
    const cli_spec_t spec = {
        "train", "--model DIR --instance-data-dir DIR --instance-prompt TEXT --output-dir DIR [options]",
        "Fine-tunes LoRA adapters on the UNet's attention (and optionally the text encoder) with the DreamBooth\n"
        "objective: noise-prediction MSE on the instance photos + lambda * MSE on class images (prior\n"
        "preservation). The result depends only on the seed and the data.",
        opts, 0, NULL};
    const char *pos[1];
    int npos, rc = cli_parse(&spec, argc, argv, pos, &npos);
    if (rc >= 0) return rc;
    if (!c.model_dir || !c.instance_dir || !c.instance_prompt || !output_dir) {
        fprintf(stderr, "booth train: --model, --instance-data-dir, --instance-prompt and --output-dir are required\n");
        return 2;
    }
    if (c.prior_preservation && !c.class_prompt) {
        fprintf(stderr, "booth train: --with-prior-preservation needs --class-prompt\n");
        return 2;
    }
    if (!sd_lr_sched_parse(lr_sched, &c.lr_scheduler)) {
        fprintf(stderr, "booth train: --lr-scheduler '%s' is not constant, constant_with_warmup, linear or cosine\n",
                lr_sched);
        return 2;
    }
    if (rank < 1 || rank > 1024 || c.train_batch_size < 1 || c.max_train_steps < 1 || c.num_class_images < 1 ||
        c.resolution < 8 || c.resolution % 8 || c.learning_rate < 0 || c.lr_warmup_steps < 0 ||
        checkpointing_steps < 0 || checkpoints_total_limit < 0 || validation_steps < 0 || num_validation_images < 1) {
        fprintf(stderr, "booth train: --rank 1..1024; batch sizes, steps, class images >= 1; --resolution a multiple "
                        "of 8; rates and intervals >= 0\n");
        return 2;
    }
    c.rank = rank;
    if (!alpha_seen) c.lora_alpha = (float)rank;
    if (bt_mkdirs(output_dir)) return 1;
    char class_dir[4096], path[4096], vdir[4096];
    if (c.prior_preservation && !c.class_dir) {
        snprintf(class_dir, sizeof class_dir, "%s/class_images", output_dir);
        c.class_dir = class_dir;
    }
    snprintf(vdir, sizeof vdir, "%s/validation", output_dir);

    sd_store_t store;
    if (!cli_base_dtype("train", base_dtype, &store)) return 2;
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    if (!ctx) return 1;
    int status = 1;
    sd_trainer_t *t = NULL;
    FILE *csv = NULL;
    sd_train_history_t hist = {0};
    sd_model_ids_t ids;
    memset(&ids, 0, sizeof ids);
    char ckpt[4096] = "";
    float *val_embeds = NULL; /* [2, T, C]: "" and the validation prompt, with a frozen text encoder */
    float *losses = malloc((size_t)c.max_train_steps * sizeof(float));
    sd_model_t *m = sd_model_load_as(ctx, c.model_dir, SD_PART_ALL, store);
    if (!m || !losses) goto out;
    if ((checkpointing_steps || resume) && sd_model_ids(c.model_dir, &ids)) goto out;
    if (resume) {
        if (!strcmp(resume, "latest")) {
            int found = sd_checkpoint_latest(output_dir, ckpt, sizeof ckpt);
            if (found < 0) goto out;
            if (!found) fprintf(stderr, "booth train: no checkpoint in %s yet; starting a new run\n", output_dir);
        } else {
            snprintf(ckpt, sizeof ckpt, "%s", resume);
        }
    }
    s_prep_t prep = {0};
    if (c.prior_preservation) {
        prep.label = "class images";
        int made = sd_class_images_ensure(m, c.class_dir, c.class_prompt, c.num_class_images, c.resolution, c.seed,
                                          c.class_steps, c.class_guidance, s_prep_progress, &prep);
        if (made < 0) goto out;
        if (made) fprintf(stderr, "booth train: generated %d class images in %s\n", made, c.class_dir);
    }
    prep.label = "encoding images";
    if (!(t = sd_trainer_new(&m, &c, s_prep_progress, &prep))) goto out;
    fprintf(stderr,
            "booth train: %d instance image%s%s%d class image%s, LoRA rank %lld alpha %g on %d UNet layers%s, "
            "%lld steps, batch %d, lr %g (%s)\n",
            t->instances.n, t->instances.n == 1 ? "" : "s", c.prior_preservation ? ", " : " (no prior preservation) ",
            c.prior_preservation ? t->classes.n : 0, t->classes.n == 1 ? "" : "s", (long long)c.rank, c.lora_alpha,
            t->lora_unet->n, t->lora_text ? " + the text encoder" : "", (long long)c.max_train_steps,
            c.train_batch_size, c.learning_rate, sd_lr_sched_name(c.lr_scheduler));
    if (t->ehs) { /* a frozen text encoder: embed the validation prompts now, then free it */
        int64_t cd = t->model->unet->cfg.cross_attention_dim[0], T = t->T;
        if (validation_prompt &&
            (!(val_embeds = nn_alloc(ctx, (size_t)(2 * T * cd) * sizeof(float))) ||
             sd_encode_prompt(t->model, val_embeds + T * cd, validation_prompt, 0) ||
             sd_encode_prompt(t->model, val_embeds, "", 0)))
            goto out;
        size_t before = sd_model_param_bytes(t->model);
        sd_trainer_release_text_encoder(t);
        BT_INFO("prompt embeddings computed; text encoder released (%.0f MiB)",
                (double)(before - sd_model_param_bytes(t->model)) / 1048576.0);
    }
    if (ckpt[0]) {
        if (sd_checkpoint_resume(ckpt, t, &ids, &hist)) goto out;
        fprintf(stderr, "booth train: resumed from %s at step %lld\n", ckpt, (long long)t->step);
    }

    snprintf(path, sizeof path, "%s/loss.csv", output_dir);
    if (!(csv = fopen(path, "w"))) {
        BT_ERROR("%s: cannot create the loss log", path);
        goto out;
    }
    fprintf(csv, "step,loss,loss_instance,loss_prior,lr,grad_norm,seconds\n");
    for (int64_t s = 0; s < hist.n; s++) { /* a resumed run's log starts with the checkpoint's history */
        losses[s] = (float)hist.loss[s];
        fprintf(csv, "%lld,%.6f,%.6f,%.6f,%.6g,%.6f,%.3f\n", (long long)(s + 1), hist.loss[s], hist.loss_instance[s],
                hist.loss_prior[s], hist.lr[s], hist.grad_norm[s], hist.seconds[s]);
    }
    fflush(csv);
    bt_progress_t bar;
    bt_progress_start(&bar, "training", c.max_train_steps, "step");
    for (int64_t s = t->step; s < c.max_train_steps; s++) {
        sd_step_stats_t st;
        double t0 = bt_now();
        if (sd_trainer_step(t, &st)) goto out;
        double dt = bt_now() - t0;
        losses[s] = (float)st.loss;
        if (sd_history_push(&hist, &st, dt)) goto out;
        fprintf(csv, "%lld,%.6f,%.6f,%.6f,%.6g,%.6f,%.3f\n", (long long)(s + 1), st.loss, st.loss_instance,
                st.loss_prior, st.lr, st.grad_norm, dt);
        fflush(csv);
        if (!isfinite(st.loss)) {
            BT_ERROR("step %lld: the loss is %g; stopping (lower --learning-rate?)", (long long)(s + 1), st.loss);
            goto out;
        }
        char tail[96];
        snprintf(tail, sizeof tail, "loss %.4f lr %.2g", st.loss, st.lr);
        bt_progress_update(&bar, s + 1, tail);
        bool last = s + 1 == c.max_train_steps;
        if (checkpointing_steps && (s + 1) % checkpointing_steps == 0) {
            char ck[4096];
            snprintf(ck, sizeof ck, "%s/checkpoint-%lld.h5", output_dir, (long long)(s + 1));
            /* the previous checkpoint (pruning keeps the newest), or else the prior set, lends its
             * compressed images */
            const char *reuse = ckpt[0]                                                 ? ckpt
                                : c.prior_preservation && sd_is_prior_file(c.class_dir) ? c.class_dir
                                                                                        : NULL;
            if (sd_checkpoint_save(ck, t, &ids, &hist, reuse) ||
                sd_checkpoint_prune(output_dir, checkpoints_total_limit))
                goto out;
            snprintf(ckpt, sizeof ckpt, "%s", ck);
        }
        if (validation_prompt && ((validation_steps && (s + 1) % validation_steps == 0) || last)) {
            if (bt_mkdirs(vdir) || s_validate(t, validation_prompt, val_embeds, num_validation_images, s + 1, vdir)) goto out;
        }
    }
    bt_progress_finish(&bar, NULL);
    if (s_save_lora(t, output_dir, c.model_dir)) goto out;
    snprintf(path, sizeof path, "%s/loss.png", output_dir);
    if (s_plot_loss(path, losses, (int)c.max_train_steps)) goto out;
    printf("%s/pytorch_lora_weights.safetensors\n%s/pytorch_lora_weights_kohya.safetensors\n%s/loss.csv\n%s\n",
           output_dir, output_dir, output_dir, path);
    if (validation_prompt) printf("%s/step-%06lld.png\n", vdir, (long long)c.max_train_steps);
    status = 0;
out:
    if (val_embeds) nn_free(ctx, val_embeds);
    if (csv) fclose(csv);
    sd_history_free(&hist);
    free(losses);
    sd_trainer_destroy(&t);
    sd_model_destroy(&m);
    nn_ctx_destroy(&ctx);
    return status;
}
