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
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/args.h"
#include "cli/train_flags.h"
#include "cli/cli.h"
#include "common/fileio.h"
#include "common/image.h"
#include "common/log.h"
#include "common/progress.h"
#include "common/status.h"
#include "diffusion/checkpoint.h"
#include "diffusion/layout.h"
#include "diffusion/loop.h"
#include "diffusion/train.h"
#include "nn/nn.h"
#include "storage/h5.h"

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

/* An absolute, symlink-free form of path, whose last parts need not exist yet. */
static void s_abs(const char *path, char *out, size_t cap)
{
    char buf[PATH_MAX];
    if (realpath(path, buf)) {
        snprintf(out, cap, "%s", buf);
        return;
    }
    char parent[PATH_MAX];
    snprintf(parent, sizeof parent, "%s", path);
    char *slash = strrchr(parent, '/');
    const char *leaf = slash ? slash + 1 : parent;
    char head[PATH_MAX];
    if (!slash) snprintf(head, sizeof head, ".");
    else if (slash == parent) snprintf(head, sizeof head, "/");
    else {
        *slash = '\0';
        snprintf(head, sizeof head, "%s", parent);
    }
    char h[PATH_MAX];
    s_abs(head, h, sizeof h);
    cli_join_path(out, cap, h, *leaf ? leaf : NULL);
}

static bool s_is_ckpt(const char *name, void *user)
{
    (void)user;
    long long step;
    int end = 0;
    return sscanf(name, SD_H5_CKPT_PREFIX "%lld" SD_H5_EXT "%n", &step, &end) == 1 && end > 0 && !name[end];
}

static long long s_ckpt_step(const char *path)
{
    const char *b = strrchr(path, '/');
    long long step = -1;
    sscanf(b ? b + 1 : path, SD_H5_CKPT_PREFIX "%lld", &step);
    return step;
}

/* The output folder's rules, before any model is loaded: never inside the photos (a second run would
 * train on its own loss.png), and never mixing this run with another one's checkpoints. */
static int s_check_output_dir(const char *out, const char *instance_dir, const char *resume, bool overwrite)
{
    char o[PATH_MAX + 8], in[PATH_MAX + 8];
    s_abs(out, o, sizeof o);
    s_abs(instance_dir, in, sizeof in);
    size_t n = strlen(in);
    if (!strcmp(o, in) || (!strncmp(o, in, n) && (o[n] == '/' || !strcmp(in, "/")))) {
        fprintf(stderr,
                "booth train: --output-dir %s is inside --instance-data-dir %s: the next run would train on its "
                "outputs (loss.png, validation images); choose a folder outside it\n",
                out, instance_dir);
        return 2;
    }
    if (resume) return 0;
    char **list = NULL;
    int k = 0;
    if (bt_list_dir(out, s_is_ckpt, NULL, true, &list, &k)) return 1;
    long long newest = -1;
    const char *newest_path = NULL;
    for (int i = 0; i < k; i++)
        if (s_ckpt_step(list[i]) > newest) {
            newest = s_ckpt_step(list[i]);
            newest_path = list[i];
        }
    int rc = 0;
    if (k && !overwrite) {
        fprintf(stderr,
                "booth train: --output-dir %s holds %d checkpoint%s of an earlier run (newest %s): "
                "--resume-from-checkpoint latest continues it, --overwrite starts over (deleting them), or choose "
                "another --output-dir\n",
                out, k, CLI_PLURAL(k), newest_path);
        rc = 2;
    } else if (k) {
        for (int i = 0; i < k && !rc; i++)
            if (unlink(list[i])) {
                fprintf(stderr, "booth train: %s: cannot delete: %s\n", list[i], strerror(errno));
                rc = 1;
            }
        if (!rc) fprintf(stderr, "booth train: --overwrite: deleted %d checkpoint%s in %s\n", k, CLI_PLURAL(k), out);
    }
    bt_free_list(list, k);
    return rc;
}

/* The newest checkpoint could not be resumed from (the reason is logged): name the newest older one
 * that opens as HDF5, so that the user can go on from there. */
static void s_offer_previous(const char *dir, const char *bad)
{
    char **list = NULL;
    int k = 0;
    if (bt_list_dir(dir, s_is_ckpt, NULL, true, &list, &k)) return;
    long long bad_step = s_ckpt_step(bad), best = -1;
    const char *prev = NULL;
    for (int pass = 0; pass < k && !prev; pass++) { /* newest first, down to one that opens */
        long long cand = -1;
        const char *cp = NULL;
        for (int i = 0; i < k; i++) {
            long long st = s_ckpt_step(list[i]);
            if (st < bad_step && st > cand && (best < 0 || st < best)) {
                cand = st;
                cp = list[i];
            }
        }
        if (!cp) break;
        best = cand;
        st_h5_file_t *h = st_h5_open(cp); /* one that does not open says why itself */
        if (h) prev = cp;
        st_h5_close(&h);
    }
    if (prev)
        fprintf(stderr,
                "booth train: the newest checkpoint, %s, cannot be resumed from (above); the previous one opens: "
                "--resume-from-checkpoint %s (and delete or move %s)\n",
                bad, prev, bad);
    else
        fprintf(stderr,
                "booth train: the newest checkpoint, %s, cannot be resumed from (above), and there is no earlier "
                "one that opens; --overwrite starts over\n",
                bad);
    bt_free_list(list, k);
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
    cli_opt_t opts[128];
    int n = cli_train_opts(&f, opts, 127);
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
    char output_dir[4096];
    cli_join_path(output_dir, sizeof output_dir, f.output_dir, NULL);
    const char *resume = f.resume;
    if ((rc = s_check_output_dir(output_dir, c->instance_dir, resume, f.overwrite))) return rc;
    if (bt_mkdirs(output_dir)) return 1;
    char class_dir[4096];
    if (c->prior_preservation && !c->class_dir) {
        cli_join_path(class_dir, sizeof class_dir, output_dir, "class_images");
        c->class_dir = class_dir;
    }

    sd_store_t store;
    if (!cli_base_dtype("train", f.base_dtype, &store)) return 2;
    if (c->full_unet && store != SD_STORE_AUTO && store != SD_STORE_F32) {
        fprintf(stderr, "booth train: --train-unet full trains float32 weights; --base-dtype %s keeps them in 16 bits\n",
                f.base_dtype);
        return 2;
    }
    if (c->full_unet) store = SD_STORE_F32; /* 16-bit files are widened exactly */
    int prediction;
    if (!cli_prediction_type("train", f.prediction, c->model_dir, &prediction)) return 2;
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
    sd_model_t *m = cli_model_load(ctx, c->model_dir, SD_PART_ALL, store, prediction);
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
        if (made) fprintf(stderr, "booth train: generated %d class image%s in %s\n", made, CLI_PLURAL(made), c->class_dir);
    }
    prep.label = "encoding images";
    if (!(t = sd_trainer_new(&m, c, s_prep_progress, &prep)) || !(o = sd_trainer_optim(t))) goto out;
    char classes[64] = " (no prior preservation)";
    if (c->prior_preservation)
        snprintf(classes, sizeof classes, ", %d class image%s", t->classes.n, CLI_PLURAL(t->classes.n));
    char batch[96];
    snprintf(batch, sizeof batch, "%d", c->train_batch_size);
    if (f.grad_accum > 1)
        snprintf(batch, sizeof batch, "%d (%d x %d accumulated)", c->train_batch_size, c->train_batch_size / f.grad_accum,
                 f.grad_accum);
    char what[160];
    if (c->full_unet && t->base_text)
        snprintf(what, sizeof what, "every UNet and text-encoder weight (%.1f M + %.1f M parameters, full fine-tuning)",
                 (double)t->model->unet->params.numel / 1e6, (double)t->model->clip->params.numel / 1e6);
    else if (c->full_unet)
        snprintf(what, sizeof what, "every UNet weight (%.1f M parameters, full fine-tuning)",
                 (double)t->model->unet->params.numel / 1e6);
    else
        snprintf(what, sizeof what, "LoRA rank %lld alpha %g on %d UNet layer%s%s", (long long)c->rank,
                 t->cfg.lora_alpha, t->lora_unet->n, CLI_PLURAL(t->lora_unet->n),
                 t->lora_text ? " + the text encoder" : "");
    fprintf(stderr, "booth train: %d instance image%s%s, %d px, %s crop, %s, %lld step%s, batch %s, lr %g (%s)\n",
            t->instances.n, CLI_PLURAL(t->instances.n), classes, c->resolution, c->center_crop ? "center" : "random",
            what, (long long)c->max_train_steps, CLI_PLURAL(c->max_train_steps), batch, c->learning_rate,
            sd_lr_sched_name(c->lr_scheduler));
    if (t->ehs) { /* a frozen text encoder: every prompt is embedded (validation too); free it */
        size_t before = sd_model_param_bytes(t->model);
        sd_trainer_release_text_encoder(t);
        BT_INFO("prompt embeddings computed; text encoder released (%.0f MiB)",
                (double)(before - sd_model_param_bytes(t->model)) / 1048576.0);
    }
    if (ckpt[0]) {
        sd_ckpt_data_t d;
        sd_trainer_ckpt_data(t, &ids, &d);
        int rrc = sd_checkpoint_resume(ckpt, o, &d, &hist);
        if (rrc) {
            if (rrc != BT_EINVAL && resume && !strcmp(resume, "latest")) s_offer_previous(output_dir, ckpt);
            goto out;
        }
        fprintf(stderr, "booth train: resumed from %s at step %lld\n", ckpt, (long long)o->step);
    }
    if (!(loop = sd_loop_new_in(output_dir, f.logging_path[0] ? f.logging_path : NULL, &t->cfg, ckpt[0] ? ckpt : NULL,
                                &hist, true)))
        goto out;
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
