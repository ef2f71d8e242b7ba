/*
 * loop.c — the run loop between optimizer steps: history and loss log,
 * checkpoints and their rotation, validation grids, the final LoRA files
 * (loop.h), and the single-process loop over it.
 */
#include "diffusion/loop.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/fileio.h"
#include "common/log.h"
#include "common/plot.h"
#include "common/status.h"
#include "diffusion/model_out.h"
#include "storage/png.h"

static void s_csv_row(FILE *f, int64_t step, const sd_train_history_t *h, int64_t i)
{
    fprintf(f, "%lld,%.6f,%.6f,%.6f,%.6g,%.6f,%.3f\n", (long long)step, h->loss[i], h->loss_instance[i],
            h->loss_prior[i], h->lr[i], h->grad_norm[i], h->seconds[i]);
}

sd_loop_t *sd_loop_new(const char *output_dir, const sd_train_config_t *cfg, const char *resumed_from,
                     sd_train_history_t *resumed, bool show_progress)
{
    return sd_loop_new_in(output_dir, NULL, cfg, resumed_from, resumed, show_progress);
}

/* dir without its trailing slashes, so that paths made from it never hold "//" */
static void s_set_dir(char *buf, size_t cap, const char *dir)
{
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/') n--;
    snprintf(buf, cap, "%.*s", (int)n, dir);
}

sd_loop_t *sd_loop_new_in(const char *output_dir, const char *log_dir, const sd_train_config_t *cfg,
                          const char *resumed_from, sd_train_history_t *resumed, bool show_progress)
{
    sd_loop_t *r = bt_calloc(1, sizeof *r);
    char logs[4096];
    if (!r) return NULL;
    s_set_dir(r->dir, sizeof r->dir, output_dir);
    s_set_dir(logs, sizeof logs, log_dir ? log_dir : output_dir);
    r->cfg = cfg;
    r->show_progress = show_progress;
    if (resumed) {
        r->hist = *resumed;
        memset(resumed, 0, sizeof *resumed);
    }
    if (resumed_from) snprintf(r->last_ckpt, sizeof r->last_ckpt, "%s", resumed_from);
    if (bt_mkdirs(output_dir) || (log_dir && bt_mkdirs(log_dir))) goto out_fail;
    snprintf(r->csv_path, sizeof r->csv_path, "%s%sloss.csv", logs, strcmp(logs, "/") ? "/" : "");
    if (!(r->csv = fopen(r->csv_path, "w"))) {
        BT_ERROR("%s: cannot create the loss log", r->csv_path);
        goto out_fail;
    }
    /* the history's columns (diffusion/layout.h), one row per step */
    fprintf(r->csv, SD_H5_HISTORY_STEP);
    for (int c = 0; c < SD_H5_HIST_NCOLS; c++) fprintf(r->csv, ",%s", sd_h5_history_column(c));
    fprintf(r->csv, "\n");
    for (int64_t s = 0; s < r->hist.n; s++) s_csv_row(r->csv, s + 1, &r->hist, s); /* a resumed run's log */
    fflush(r->csv);
    if (show_progress) {
        bt_progress_start(&r->bar, "training", cfg->max_train_steps, "step");
        if (r->hist.n) bt_progress_update(&r->bar, r->hist.n, NULL);
    }
    return r;
out_fail:
    sd_loop_destroy(&r);
    return NULL;
}

void sd_loop_destroy(sd_loop_t **pr)
{
    sd_loop_t *r = *pr;
    if (!r) return;
    if (r->csv) fclose(r->csv);
    sd_history_free(&r->hist);
    free(r);
    *pr = NULL;
}

int sd_loop_step_done(sd_loop_t *r, const sd_step_stats_t *st, double seconds)
{
    int rc = sd_history_push(&r->hist, st, seconds);
    if (rc) return rc;
    int64_t s = r->hist.n;
    s_csv_row(r->csv, s, &r->hist, s - 1);
    fflush(r->csv);
    if (!isfinite(st->loss)) {
        BT_ERROR("step %lld: the loss is %g; stopping (lower --learning-rate?)", (long long)s, st->loss);
        return BT_EINVAL;
    }
    if (r->show_progress) {
        char tail[96];
        snprintf(tail, sizeof tail, "loss %.4f lr %.2g", st->loss, st->lr);
        bt_progress_update(&r->bar, s, tail);
    }
    return BT_OK;
}

bool sd_loop_checkpoint_due(const sd_loop_t *r)
{
    int every = r->cfg->checkpointing_steps;
    return every > 0 && r->hist.n > 0 && r->hist.n % every == 0;
}

bool sd_loop_validation_due(const sd_loop_t *r)
{
    const sd_train_config_t *c = r->cfg;
    int64_t s = r->hist.n;
    return c->validation_prompt && s > 0 &&
           ((c->validation_steps && s % c->validation_steps == 0) || s == c->max_train_steps);
}

int sd_loop_checkpoint(sd_loop_t *r, const sd_optim_t *o, const sd_ckpt_data_t *d, const char *reuse_images)
{
    char ck[4200];
    if (sd_checkpoint_path(ck, sizeof ck, r->dir, o->step)) return BT_EINVAL;
    /* the previous checkpoint (pruning keeps the newest), or else the prior set, lends its compressed images */
    const char *reuse = r->last_ckpt[0] ? r->last_ckpt : reuse_images;
    int rc = sd_checkpoint_save(ck, o, d, &r->hist, reuse);
    if (rc == BT_OK) rc = sd_checkpoint_prune(r->dir, r->cfg->checkpoints_total_limit);
    if (rc == BT_OK) snprintf(r->last_ckpt, sizeof r->last_ckpt, "%s", ck);
    if (rc == BT_OK && r->show_progress) bt_progress_line(&r->bar, "checkpoint: %s", ck);
    return rc;
}

int sd_loop_validation(sd_loop_t *r, const bt_img_t *grid)
{
    char dir[4200], path[4300];
    snprintf(dir, sizeof dir, "%s/validation", r->dir);
    snprintf(path, sizeof path, "%s/step-%06lld.png", dir, (long long)r->hist.n);
    int rc = bt_mkdirs(dir);
    if (rc == BT_OK) rc = st_png_write(path, grid, NULL, 0);
    if (rc == BT_OK && r->show_progress) bt_progress_line(&r->bar, "validation: %s", path);
    return rc;
}

int sd_loop_validation_png(sd_loop_t *r, const void *png, size_t len)
{
    char dir[4200], path[4300];
    snprintf(dir, sizeof dir, "%s/validation", r->dir);
    snprintf(path, sizeof path, "%s/step-%06lld.png", dir, (long long)r->hist.n);
    int rc = bt_mkdirs(dir);
    return rc ? rc : bt_write_file_atomic(path, png, len);
}

static int s_plot_loss(const char *path, const sd_train_history_t *h)
{
    int n = (int)h->n;
    float *y = bt_malloc((size_t)(n ? n : 1) * sizeof(float));
    if (!y) return BT_ENOMEM;
    for (int i = 0; i < n; i++) y[i] = (float)h->loss[i];
    bt_img_t *img = bt_plot_loss("DreamBooth training loss", y, n);
    int rc = img ? st_png_write(path, img, NULL, 0) : BT_ENOMEM;
    bt_img_destroy(&img);
    free(y);
    return rc;
}

int sd_loop_finish(sd_loop_t *r, const sd_optim_t *o, const char *base_model)
{
    const sd_train_config_t *c = r->cfg;
    char a[4200], b[4200], png[4200];
    if (r->show_progress) bt_progress_finish(&r->bar, NULL);
    snprintf(a, sizeof a, "%s/pytorch_lora_weights.safetensors", r->dir);
    snprintf(b, sizeof b, "%s/pytorch_lora_weights_kohya.safetensors", r->dir);
    snprintf(png, sizeof png, "%s/loss.png", r->dir);
    if (c->full_unet) { /* the model itself changed: a model folder, as diffusers' train_dreambooth.py saves */
        static const char *const meta[] = {"format", "pt", NULL};
        int rc = sd_model_folder_write(r->dir, base_model, c->train_text_encoder, o, meta);
        if (rc == BT_OK) rc = s_plot_loss(png, &r->hist);
        if (rc) return rc;
        printf("%s/model_index.json\n%s/unet/diffusion_pytorch_model.safetensors\n", r->dir, r->dir);
        if (c->train_text_encoder) printf("%s/text_encoder/model.safetensors\n", r->dir);
        printf("%s\n%s\n", r->csv_path, png);
        if (c->validation_prompt) printf("%s/validation/step-%06lld.png\n", r->dir, (long long)c->max_train_steps);
        return BT_OK;
    }
    int rc = sd_optim_save_lora(o, c->rank, c->lora_alpha, a, ST_LORA_DIFFUSERS, ST_F32, base_model);
    if (rc == BT_OK) rc = sd_optim_save_lora(o, c->rank, c->lora_alpha, b, ST_LORA_KOHYA, ST_F32, base_model);
    if (rc == BT_OK) rc = s_plot_loss(png, &r->hist);
    if (rc) return rc;
    printf("%s\n%s\n%s\n%s\n", a, b, r->csv_path, png);
    if (c->validation_prompt) printf("%s/validation/step-%06lld.png\n", r->dir, (long long)c->max_train_steps);
    return BT_OK;
}

static int s_validate(sd_trainer_t *t, sd_loop_t *r, int64_t step)
{
    bt_img_t *grid = NULL;
    int rc = sd_trainer_validate(t, step, &grid);
    if (rc == BT_OK) rc = sd_loop_validation(r, grid);
    bt_img_destroy(&grid);
    return rc;
}

/* Progress inside a step that takes a while (SD 1.5 at 512 px: seconds per micro-batch on a CPU):
 * the bar's tail says which micro-batch is where, from the trainer's phases. */
typedef struct {
    sd_loop_t *r;
    double t0;
    int k, n;
} s_phase_t;

static void s_phase(void *user, const char *what)
{
    s_phase_t *p = user;
    if (strcmp(what, "UNet backward")) p->k++; /* a forward starts a micro-batch */
    if (!p->r->show_progress || bt_now() - p->t0 < 1.0) return;
    char tail[128];
    snprintf(tail, sizeof tail, "step %lld: micro-batch %d of %d, %s", (long long)p->r->hist.n + 1, p->k, p->n, what);
    bt_progress_update(&p->r->bar, p->r->hist.n, tail);
}

static int s_train_local(sd_trainer_t *t, sd_optim_t *o, sd_loop_t *r, const sd_model_ids_t *ids,
                         const char *reuse_images)
{
    sd_ckpt_data_t d;
    sd_trainer_ckpt_data(t, ids, &d);
    int rc = BT_OK;
    bool final_grid = false;
    s_phase_t ph = {.r = r, .n = sd_trainer_num_microbatches(t)};
    t->db->phase = s_phase;
    t->db->phase_user = &ph;
    while (o->step < t->cfg.max_train_steps) {
        sd_step_stats_t st;
        double t0 = bt_now();
        ph.t0 = t0;
        ph.k = 0;
        if ((rc = sd_trainer_step(t, o, &st)) || (rc = sd_loop_step_done(r, &st, bt_now() - t0))) return rc;
        if (sd_loop_checkpoint_due(r) && (rc = sd_loop_checkpoint(r, o, &d, reuse_images))) return rc;
        if (sd_loop_validation_due(r)) {
            if (o->step == t->cfg.max_train_steps) { /* the result first: a side output never costs it */
                final_grid = true;
                break;
            }
            if ((rc = s_validate(t, r, o->step))) return rc;
        }
        if (r->stop && *r->stop && o->step < t->cfg.max_train_steps) { /* asked to stop: keep the state */
            char ck[4200];
            if (sd_checkpoint_path(ck, sizeof ck, r->dir, o->step)) return BT_EINVAL;
            if (strcmp(r->last_ckpt, ck) && (rc = sd_loop_checkpoint(r, o, &d, reuse_images))) return rc;
            if (r->show_progress) bt_progress_finish(&r->bar, NULL);
            BT_WARN("stopped at step %lld of %lld; the state is in %s: the same command with "
                    "--resume-from-checkpoint latest goes on to the same bytes",
                    (long long)o->step, (long long)t->cfg.max_train_steps, r->last_ckpt);
            return BT_ESTOPPED;
        }
    }
    if ((rc = sd_loop_finish(r, o, t->cfg.model_dir))) return rc;
    if (final_grid && (rc = s_validate(t, r, o->step)))
        BT_ERROR("the final validation grid failed; the %s written (%s/%s)",
                 t->cfg.full_unet ? "model folder is" : "LoRA files are", r->dir,
                 t->cfg.full_unet ? "unet/" : "pytorch_lora_weights*.safetensors");
    return rc;
}

int sd_train_local(sd_trainer_t *t, sd_optim_t *o, sd_loop_t *r, const sd_model_ids_t *ids, const char *reuse_images)
{
    int rc = s_train_local(t, o, r, ids, reuse_images);
    t->db->phase = NULL; /* it pointed into that call's frame */
    t->db->phase_user = NULL;
    return rc;
}
