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
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/train_flags.h"
#include "cli/cli.h"
#include "common/fileio.h"
#include "common/image.h"
#include "common/log.h"
#include "common/progress.h"
#include "common/status.h"
#include "diffusion/checkpoint.h"
#include "diffusion/loop.h"
#include "diffusion/train.h"
#include "nn/nn.h"

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

static volatile int s_stop; /* SIGINT/SIGTERM: stop after this step, with a checkpoint */

static void s_on_signal(int sig)
{
    (void)sig;
    s_stop = 1;
}

int cmd_train(int argc, char **argv)
{
    cli_train_flags_t f;
    cli_opt_t opts[64];
    int n = cli_train_opts(&f, opts, 63);
    opts[n] = (cli_opt_t)CLI_END;
    sd_train_config_t *c = &f.c;
    const cli_spec_t spec = {
        "train", "--model DIR --instance-data-dir DIR --instance-prompt TEXT --output-dir DIR [options]",
        "Fine-tunes LoRA adapters on the UNet's attention (and optionally the text encoder) with the DreamBooth\n"
        "objective: noise-prediction MSE on the instance photos + lambda * MSE on class images (prior\n"
        "preservation). The result depends only on the seed and the data.",
        opts, 0, NULL};
    const char *pos[1];
    int npos, rc = cli_parse(&spec, argc, argv, pos, &npos);
    if (rc >= 0) return rc;
    if ((rc = cli_train_finish("train", &f, true))) return rc;
    const char *output_dir = f.output_dir, *resume = f.resume;
    if (bt_mkdirs(output_dir)) return 1;
    char class_dir[4096];
    if (c->prior_preservation && !c->class_dir) {
        snprintf(class_dir, sizeof class_dir, "%s/class_images", output_dir);
        c->class_dir = class_dir;
    }

    sd_store_t store;
    if (!cli_base_dtype("train", f.base_dtype, &store)) return 2;
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    if (!ctx) return 1;
    int status = 1;
    sd_trainer_t *t = NULL;
    sd_optim_t *o = NULL;
    sd_loop_t *loop = NULL;
    sd_train_history_t hist = {0};
    sd_model_ids_t ids;
    memset(&ids, 0, sizeof ids);
    char ckpt[4096] = "";
    sd_model_t *m = sd_model_load_as(ctx, c->model_dir, SD_PART_ALL, store);
    if (!m) goto out;
    if (sd_model_ids(c->model_dir, &ids)) goto out; /* checkpoints name the model, also one written on a stop */
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
    if (c->prior_preservation) {
        prep.label = "class images";
        int made = sd_class_images_ensure(m, c->class_dir, c->class_prompt, c->num_class_images, c->resolution, c->seed,
                                          c->class_steps, c->class_guidance, s_prep_progress, &prep);
        if (made < 0) goto out;
        if (made) fprintf(stderr, "booth train: generated %d class images in %s\n", made, c->class_dir);
    }
    prep.label = "encoding images";
    if (!(t = sd_trainer_new(&m, c, s_prep_progress, &prep)) || !(o = sd_trainer_optim(t))) goto out;
    fprintf(stderr,
            "booth train: %d instance image%s%s%d class image%s, LoRA rank %lld alpha %g on %d UNet layers%s, "
            "%lld steps, batch %d, lr %g (%s)\n",
            t->instances.n, t->instances.n == 1 ? "" : "s", c->prior_preservation ? ", " : " (no prior preservation) ",
            c->prior_preservation ? t->classes.n : 0, t->classes.n == 1 ? "" : "s", (long long)c->rank,
            t->cfg.lora_alpha, t->lora_unet->n, t->lora_text ? " + the text encoder" : "",
            (long long)c->max_train_steps, c->train_batch_size, c->learning_rate, sd_lr_sched_name(c->lr_scheduler));
    if (t->ehs) { /* a frozen text encoder: every prompt is embedded (validation too); free it */
        size_t before = sd_model_param_bytes(t->model);
        sd_trainer_release_text_encoder(t);
        BT_INFO("prompt embeddings computed; text encoder released (%.0f MiB)",
                (double)(before - sd_model_param_bytes(t->model)) / 1048576.0);
    }
    if (ckpt[0]) {
        sd_ckpt_data_t d;
        sd_trainer_ckpt_data(t, &ids, &d);
        if (sd_checkpoint_resume(ckpt, o, &d, &hist)) goto out;
        fprintf(stderr, "booth train: resumed from %s at step %lld\n", ckpt, (long long)o->step);
    }
    if (!(loop = sd_loop_new(output_dir, &t->cfg, ckpt[0] ? ckpt : NULL, &hist, true))) goto out;
    const char *reuse = c->prior_preservation && sd_is_prior_file(c->class_dir) ? c->class_dir : NULL;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    loop->stop = &s_stop;
    rc = sd_train_local(t, o, loop, &ids, reuse);
    if (rc == BT_ESTOPPED) status = 130;
    if (rc) goto out;
    status = 0;
out:
    sd_loop_destroy(&loop);
    sd_history_free(&hist);
    sd_optim_destroy(&o);
    sd_trainer_destroy(&t);
    sd_model_destroy(&m);
    nn_ctx_destroy(&ctx);
    return status;
}
