/*
 * checkpoint.c — trainer state <-> HDF5 checkpoint files; the job spec and
 * the checks a resume makes; checkpoint rotation; export of a checkpoint's LoRA.
 * Every name in the file comes from diffusion/layout.h.
 */
#include "diffusion/checkpoint.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/fileio.h"
#include "common/log.h"
#include "common/status.h"
#include "diffusion/lora_io.h"
#include "diffusion/model_hash.h"
#include "diffusion/model_out.h"
#include "diffusion/priors.h"
#include "nn/memory.h"
#include "storage/h5.h"
#include "storage/h5_images.h"

/* ---- history ---- */

/* The array of /history column c (SD_H5_HIST_*). */
static double **s_hist_col(sd_train_history_t *h, int c)
{
#define S_COL(id, name, field, meaning) &h->field,
    double **cols[SD_H5_HIST_NCOLS] = {SD_H5_HISTORY_COLUMNS(S_COL)};
#undef S_COL
    return cols[c];
}

int sd_history_push(sd_train_history_t *h, const sd_step_stats_t *st, double seconds)
{
    if (h->n == h->cap) {
        int64_t cap = h->cap ? 2 * h->cap : 256;
        for (int c = 0; c < SD_H5_HIST_NCOLS; c++) {
            double **col = s_hist_col(h, c), *p = bt_realloc(*col, (size_t)cap * sizeof *p);
            if (!p) return BT_ENOMEM;
            *col = p;
        }
        h->cap = cap;
    }
    int64_t i = h->n++;
    h->loss[i] = st->loss;
    h->loss_instance[i] = st->loss_instance;
    h->loss_prior[i] = st->loss_prior;
    h->lr[i] = st->lr;
    h->grad_norm[i] = st->grad_norm;
    h->seconds[i] = seconds;
    return BT_OK;
}

void sd_history_free(sd_train_history_t *h)
{
    for (int c = 0; c < SD_H5_HIST_NCOLS; c++) free(*s_hist_col(h, c));
    memset(h, 0, sizeof *h);
}

int sd_model_ids(const char *dir, sd_model_ids_t *ids)
{
    int rc = sd_model_hash(dir, SD_PART_ALL, ids->model, NULL);
    return rc ? rc : sd_model_hash(dir, SD_PART_VAE, ids->vae, NULL);
}

/* ---- opening booth files ---- */

st_h5_file_t *sd_booth_h5_open(const char *path, const char *want, char **format, int64_t *version)
{
    st_h5_file_t *f = st_h5_open(path);
    if (!f) return NULL;
    char *fmt = NULL;
    int64_t ver = 0;
    if (!st_h5_attr_exists(f, SD_H5_ROOT, SD_H5_FORMAT)) {
        BT_ERROR("%s: an HDF5 file, but not one of booth's (no '" SD_H5_FORMAT "' attribute on the root group)", path);
        goto out_fail;
    }
    if (st_h5_attr_str(f, SD_H5_ROOT, SD_H5_FORMAT, &fmt) ||
        st_h5_attr_i64(f, SD_H5_ROOT, SD_H5_FORMAT_VERSION, &ver))
        goto out_fail;
    if (want && strcmp(fmt, want)) {
        BT_ERROR("%s: a %s file, not a %s", path, fmt, want);
        goto out_fail;
    }
    if (strcmp(fmt, SD_CKPT_FORMAT) && strcmp(fmt, SD_PRIORS_FORMAT)) {
        BT_ERROR("%s: unknown " SD_H5_FORMAT " '%s'", path, fmt);
        goto out_fail;
    }
    int64_t mine = strcmp(fmt, SD_CKPT_FORMAT) ? SD_PRIORS_FORMAT_VERSION : SD_CKPT_FORMAT_VERSION;
    if (ver < 1 || ver > mine) {
        BT_ERROR("%s: %s format version %lld; this booth reads version%s %lld", path, fmt, (long long)ver,
                 mine > 1 ? "s 1 to" : "", (long long)mine);
        goto out_fail;
    }
    if (format)
        *format = fmt;
    else
        free(fmt);
    if (version) *version = ver;
    return f;
out_fail:
    free(fmt);
    st_h5_close(&f);
    return NULL;
}

/* ---- saving ---- */

static uint64_t s_pixels_hash(const sd_image_set_t *s)
{
    return bt_xxh64(s->pixels, (size_t)s->n * (size_t)s->res * (size_t)s->res * 3, 0);
}

/* Writes group/<name> for every tensor of o, from the array `which` selects (0 p, 1 m, 2 v). */
static int s_write_tensors(st_h5_file_t *f, const char *group, const sd_optim_t *o, int which, float *host)
{
    char name[SD_OPTIM_NAME_MAX + 64];
    int rc = BT_OK;
    for (int i = 0; i < o->n && rc == BT_OK; i++) {
        const sd_optim_tensor_t *t = &o->t[i];
        const float *src = which == 0 ? t->p : which == 1 ? t->m : t->v;
        snprintf(name, sizeof name, "%s/%s", group, t->name);
        if (!(rc = nn_download(o->ctx, host, src, (size_t)t->numel * sizeof(float))))
            rc = st_h5_write(f, name, ST_H5_F32, 2, t->shape, host, NULL);
    }
    return rc;
}

/* "[\"to_q\", ...]" of the projections the tensors of one model part (their
 * names start with "<part name>.", as the peft keys do) adapt. */
static void s_targets(const sd_optim_t *o, st_lora_part_t part, char *buf, size_t len)
{
    static const char *const unet[] = {"to_q", "to_k", "to_v", "to_out.0"}, *const txt[] = {"q_proj", "k_proj",
                                                                                            "v_proj", "out_proj"};
    const char *const *names = part == ST_LORA_PART_TEXT ? txt : unet;
    char prefix[64];
    snprintf(prefix, sizeof prefix, "%s.", st_lora_part_name(part));
    size_t o_ = (size_t)snprintf(buf, len, "["), pl = strlen(prefix);
    for (int t = 0; t < 4; t++) {
        char tail[48];
        snprintf(tail, sizeof tail, ".%s.lora_A.weight", names[t]);
        size_t tl = strlen(tail);
        for (int i = 0; i < o->n; i++) {
            const char *nm = o->t[i].name;
            size_t ml = strlen(nm);
            if (!strncmp(nm, prefix, pl) && ml > tl && !strcmp(nm + ml - tl, tail)) {
                o_ += (size_t)snprintf(buf + o_, o_ < len ? len - o_ : 0, "%s\"%s\"", o_ > 1 ? ", " : "", names[t]);
                break;
            }
        }
    }
    snprintf(buf + o_, o_ < len ? len - o_ : 0, "]");
}

/* Can the pixels and latents of set s be copied from another booth file
 * (an earlier checkpoint of this run, or the prior set it trains on) instead of
 * being compressed again? Only if that file holds exactly these images
 * (content hash) at these sizes, encoded by the same base model. */
static bool s_reusable(st_h5_file_t *src, const char *group, const sd_image_set_t *s, const char *hex,
                       const sd_model_ids_t *ids)
{
    if (!src || !st_h5_is_group(src, group) || !st_h5_attr_exists(src, group, SD_H5_SET_CONTENT_HASH)) return false;
    /* the base model: a checkpoint's root records it, a prior set's /prior */
    bool ckpt = st_h5_attr_exists(src, SD_H5_ROOT, SD_H5_CKPT_BASE_MODEL_HASH);
    const char *hash_at = ckpt ? SD_H5_ROOT : group, *hash_name = ckpt ? SD_H5_CKPT_BASE_MODEL_HASH
                                                                      : SD_H5_PRIOR_BASE_MODEL_HASH;
    char *h = NULL, *mh = NULL;
    st_h5_imgset_info_t info;
    bool ok = st_h5_imgset_probe(src, group, &info) == BT_OK && info.n == s->n && info.height == s->res &&
              info.width == s->res && info.lat_c == s->C && info.lat_h == s->h && info.lat_w == s->w &&
              st_h5_attr_str(src, group, SD_H5_SET_CONTENT_HASH, &h) == BT_OK && !strcmp(h, hex) &&
              st_h5_attr_str(src, hash_at, hash_name, &mh) == BT_OK && !strcmp(mh, ids->model);
    free(h);
    free(mh);
    return ok;
}

static int s_write_set(st_h5_file_t *f, const char *group, const sd_image_set_t *s, const char *prompt,
                       bool per_image_seed, uint64_t seed, st_h5_file_t *reuse, const sd_model_ids_t *ids)
{
    const char **prompts = bt_malloc((size_t)(s->n ? s->n : 1) * sizeof *prompts);
    uint64_t *seeds = bt_malloc((size_t)(s->n ? s->n : 1) * sizeof *seeds);
    if (!prompts || !seeds) {
        free(prompts);
        free(seeds);
        return BT_ENOMEM;
    }
    for (int i = 0; i < s->n; i++) {
        prompts[i] = prompt;
        seeds[i] = seed;
    }
    st_h5_imgset_t w = {.n = s->n, .height = s->res, .width = s->res, .lat_c = s->C, .lat_h = s->h, .lat_w = s->w,
                        .flips = s->mean_f != NULL, .images = s->pixels, .mean = s->mean, .logvar = s->logvar,
                        .mean_flip = s->mean_f, .logvar_flip = s->logvar_f, .seed = per_image_seed ? seeds : NULL,
                        .prompt = prompts, .source = (const char *const *)s->paths};
    char hex[BT_HASH_HEX];
    bt_hash_hex(s_pixels_hash(s), hex);
    int rc;
    if (s_reusable(reuse, group, s, hex, ids)) {
        /* images and latents as the other file stores them (chunks copied, not recompressed);
         * mirrored latents copied when it has them, else written; the rest written anew */
        static const char *const names[] = {SD_H5_IMAGES, SD_H5_LATENT_MEAN, SD_H5_LATENT_LOGVAR,
                                            SD_H5_LATENT_MEAN_FLIP, SD_H5_LATENT_LOGVAR_FLIP};
        const float *flip[2] = {s->mean_f, s->logvar_f};
        rc = st_h5_group(f, group, false);
        for (int k = 0; k < (s->mean_f ? 5 : 3) && rc == BT_OK; k++) {
            char p[256];
            if ((rc = st_h5_imgset_path(p, sizeof p, group, names[k]))) break;
            if (k < 3 || st_h5_exists(reuse, p)) {
                rc = st_h5_copy(f, p, reuse, p);
            } else {
                const st_h5_opts_t row = {.rows_per_chunk = 1};
                rc = st_h5_write(f, p, ST_H5_F32, 4, (int64_t[]){s->n, s->C, s->h, s->w}, flip[k - 3], &row);
            }
        }
        if (rc == BT_OK) rc = st_h5_imgset_end(f, group, &w);
        BT_DEBUG("%s: /%s images and latents copied from %s", st_h5_path(f), group, st_h5_path(reuse));
    } else {
        rc = st_h5_imgset_write(f, group, &w);
    }
    if (rc == BT_OK) rc = st_h5_attr_set_str(f, group, SD_H5_SET_CONTENT_HASH, hex);
    if (rc == BT_OK) rc = st_h5_attr_set_i64(f, group, SD_H5_SET_RESOLUTION, s->res);
    free(prompts);
    free(seeds);
    return rc;
}

void sd_trainer_ckpt_data(const sd_trainer_t *t, const sd_model_ids_t *ids, sd_ckpt_data_t *d)
{
    *d = (sd_ckpt_data_t){.cfg = &t->cfg,
                          .instances = &t->instances,
                          .classes = t->cfg.prior_preservation ? &t->classes : NULL,
                          .sampler = sd_sched_kind_name(t->model->default_sampler),
                          .ids = *ids};
}

/* The instance (and prior) image sets with their latents: a checkpoint's data and a job data file's. */
static int s_write_data(st_h5_file_t *f, const sd_ckpt_data_t *d, st_h5_file_t *reuse)
{
    const sd_train_config_t *c = d->cfg;
    const sd_model_ids_t *ids = &d->ids;
    int rc;
    if ((rc = s_write_set(f, SD_H5_INSTANCE, d->instances, c->instance_prompt, false, 0, reuse, ids)) ||
        (rc = st_h5_attr_set_str(f, SD_H5_INSTANCE, SD_H5_SET_PROMPT, c->instance_prompt)) ||
        (rc = st_h5_attr_set_str(f, SD_H5_INSTANCE, SD_H5_SET_VAE_HASH, ids->vae)))
        return rc;
    if (c->prior_preservation) {
        const sd_image_set_t *cl = d->classes;
        sd_prior_spec_t spec = {.weights = c->base_weights,
                                .prompt = cl->gen_prompt ? cl->gen_prompt : c->class_prompt,
                                .seed = cl->gen_prompt ? cl->gen_seed : c->seed,
                                .steps = cl->gen_prompt ? cl->gen_steps : c->class_steps,
                                .guidance = cl->gen_prompt ? cl->gen_guidance : c->class_guidance,
                                .resolution = cl->res};
        if ((rc = s_write_set(f, SD_H5_PRIOR, cl, spec.prompt, true, spec.seed, reuse, ids)) ||
            (rc = sd_priors_write_attrs(f, SD_H5_PRIOR, &spec, d->sampler, c->model_dir, ids->model, ids->vae)) ||
            (rc = st_h5_attr_set_str(f, SD_H5_PRIOR, SD_H5_PRIOR_ORIGIN, c->class_dir ? c->class_dir : "")) ||
            (rc = st_h5_attr_set_str(f, SD_H5_PRIOR, SD_H5_PRIOR_CLASS_PROMPT, c->class_prompt)))
            return rc;
    }
    return BT_OK;
}

int sd_job_data_write(const char *path, const sd_ckpt_data_t *d)
{
    st_h5_file_t *f = st_h5_create(path);
    if (!f) return BT_EIO;
    int rc = st_h5_attr_set_str(f, SD_H5_ROOT, SD_H5_FORMAT, SD_JOB_DATA_FORMAT);
    if (rc == BT_OK) rc = st_h5_attr_set_i64(f, SD_H5_ROOT, SD_H5_FORMAT_VERSION, SD_JOB_DATA_FORMAT_VERSION);
    if (rc == BT_OK) rc = st_h5_attr_set_str(f, SD_H5_ROOT, SD_H5_CKPT_BASE_MODEL_HASH, d->ids.model);
    if (rc == BT_OK) rc = s_write_data(f, d, NULL);
    if (rc == BT_OK) return st_h5_commit(&f);
    st_h5_abort(&f);
    return rc;
}

int sd_checkpoint_save(const char *path, const sd_optim_t *o, const sd_ckpt_data_t *d, const sd_train_history_t *h,
                       const char *reuse_path)
{
    const sd_train_config_t *c = d->cfg;
    const sd_model_ids_t *ids = &d->ids;
    char *job = sd_train_job_json(c);
    size_t maxn = 0;
    for (int i = 0; i < o->n; i++)
        if ((size_t)o->t[i].numel > maxn) maxn = (size_t)o->t[i].numel;
    float *host = bt_malloc((maxn ? maxn : 1) * sizeof(float));
    st_h5_file_t *f = NULL, *reuse = NULL;
    int rc = job && host ? BT_OK : BT_ENOMEM;
    /* room for it all, uncompressed (an upper bound): libhdf5 crashes in its object copy when the disk
     * fills up mid-write, so a checkpoint that cannot fit is not started */
    uint64_t need = 1u << 20;
    for (int i = 0; i < o->n; i++) need += 3 * (uint64_t)o->t[i].numel * sizeof(float);
    need += (uint64_t)o->step * 7 * sizeof(double);
    const sd_image_set_t *sets[2] = {d->instances, c->prior_preservation ? d->classes : NULL};
    for (int k = 0; k < 2; k++)
        if (sets[k])
            need += (uint64_t)sets[k]->n * ((uint64_t)sets[k]->res * (uint64_t)sets[k]->res * 3 +
                                            (sets[k]->mean_f ? 4 : 2) * (uint64_t)(sets[k]->C * sets[k]->h * sets[k]->w) *
                                                sizeof(float));
    uint64_t avail;
    if (rc == BT_OK && bt_space_free(path, &avail) == BT_OK && avail < need) {
        BT_ERROR("%s: no space left on its disk (up to %.1f MB needed, %.1f MB free): not written; any earlier "
                 "checkpoint is intact: free some space and run the same command with --resume-from-checkpoint "
                 "latest (it goes on to the same bytes)",
                 path, (double)need / 1e6, (double)avail / 1e6);
        rc = BT_EIO;
    }
    if (rc == BT_OK && reuse_path && access(reuse_path, R_OK) == 0)
        reuse = sd_booth_h5_open(reuse_path, NULL, NULL, NULL); /* NULL: write everything */
    if (rc || !(f = st_h5_create(path))) {
        rc = rc ? rc : BT_EIO;
        goto out;
    }
    char targets[256], tu[96], tt[96] = "[]";
    s_targets(o, ST_LORA_PART_UNET, tu, sizeof tu);
    if (c->train_text_encoder) s_targets(o, ST_LORA_PART_TEXT, tt, sizeof tt);
    /* {"<part name>": [...], ...}, the parts under the names their tensors' keys begin with */
    snprintf(targets, sizeof targets, "{\"%s\": %s, \"%s\": %s}", st_lora_part_name(ST_LORA_PART_UNET), tu,
             st_lora_part_name(ST_LORA_PART_TEXT), tt);

    /* root: what the file is, where the run stands, what it trains */
    const char *root = SD_H5_ROOT;
    if ((rc = st_h5_attr_set_str(f, root, SD_H5_FORMAT, SD_CKPT_FORMAT)) ||
        (rc = st_h5_attr_set_i64(f, root, SD_H5_FORMAT_VERSION, SD_CKPT_FORMAT_VERSION)) ||
        (rc = st_h5_attr_set_i64(f, root, SD_H5_CKPT_STEP, o->step)) ||
        (rc = st_h5_attr_set_i64(f, root, SD_H5_CKPT_MAX_TRAIN_STEPS, c->max_train_steps)) ||
        (rc = st_h5_attr_set_i64(f, root, SD_H5_CKPT_RANK, c->rank)) ||
        (rc = st_h5_attr_set_f32(f, root, SD_H5_CKPT_ALPHA, c->lora_alpha)) ||
        (rc = st_h5_attr_set_str(f, root, SD_H5_CKPT_TARGETS, targets)) ||
        (rc = st_h5_attr_set_str(f, root, SD_H5_CKPT_JOB, job)) ||
        (rc = st_h5_attr_set_str(f, root, SD_H5_CKPT_BASE_MODEL, c->model_dir)) ||
        (rc = st_h5_attr_set_str(f, root, SD_H5_CKPT_BASE_MODEL_HASH, ids->model)))
        goto out;

    /* the LoRA, named like the peft-layout LoRA keys, in model order */
    if ((rc = st_h5_group(f, SD_H5_LORA, true)) ||
        (rc = st_h5_attr_set_str(f, SD_H5_LORA, SD_H5_LORA_LAYOUT, SD_H5_LORA_LAYOUT_PEFT)) ||
        (rc = st_h5_attr_set_i64(f, SD_H5_LORA, SD_H5_LORA_RANK, c->rank)) ||
        (rc = st_h5_attr_set_f32(f, SD_H5_LORA, SD_H5_LORA_ALPHA, c->lora_alpha)))
        goto out;
    if ((rc = s_write_tensors(f, SD_H5_LORA, o, 0, host))) goto out;

    /* AdamW: the moments under the same names, and its step */
    const char *opt = SD_H5_OPTIM;
    if ((rc = st_h5_group(f, opt, false)) || (rc = st_h5_group(f, SD_H5_OPTIM_M, true)) ||
        (rc = st_h5_group(f, SD_H5_OPTIM_V, true)) ||
        (rc = st_h5_attr_set_str(f, opt, SD_H5_OPTIM_TYPE, SD_H5_OPTIM_ADAMW)) ||
        (rc = st_h5_attr_set_i64(f, opt, SD_H5_OPTIM_STEP, o->step)) ||
        (rc = st_h5_attr_set_f32(f, opt, SD_H5_OPTIM_LEARNING_RATE, c->learning_rate)) ||
        (rc = st_h5_attr_set_str(f, opt, SD_H5_OPTIM_LR_SCHEDULER, sd_lr_sched_name(c->lr_scheduler))) ||
        (rc = st_h5_attr_set_i64(f, opt, SD_H5_OPTIM_LR_WARMUP_STEPS, c->lr_warmup_steps)) ||
        (rc = st_h5_attr_set_f32(f, opt, SD_H5_OPTIM_BETA1, c->adam_beta1)) ||
        (rc = st_h5_attr_set_f32(f, opt, SD_H5_OPTIM_BETA2, c->adam_beta2)) ||
        (rc = st_h5_attr_set_f32(f, opt, SD_H5_OPTIM_EPSILON, c->adam_epsilon)) ||
        (rc = st_h5_attr_set_f32(f, opt, SD_H5_OPTIM_WEIGHT_DECAY, c->adam_weight_decay)) ||
        (rc = st_h5_attr_set_f32(f, opt, SD_H5_OPTIM_MAX_GRAD_NORM, c->max_grad_norm)))
        goto out;
    if ((rc = s_write_tensors(f, SD_H5_OPTIM_M, o, 1, host)) || (rc = s_write_tensors(f, SD_H5_OPTIM_V, o, 2, host)))
        goto out;

    /* randomness: counter-based, so the seed is the whole state */
    if ((rc = st_h5_group(f, SD_H5_RNG, false)) ||
        (rc = st_h5_attr_set_str(f, SD_H5_RNG, SD_H5_RNG_ALGORITHM,
                                 "booth counter-based RNG (common/rng.h): every draw is a function of (seed, step, "
                                 "slot); no generator state to restore")) ||
        (rc = st_h5_attr_set_u64(f, SD_H5_RNG, SD_H5_RNG_SEED, c->seed)) ||
        (rc = st_h5_attr_set_i64(f, SD_H5_RNG, SD_H5_RNG_NEXT_STEP, o->step)))
        goto out;

    /* the per-step log: one row per step taken (NaN where the caller kept none) */
    int64_t n = o->step, have = h ? (h->n < n ? h->n : n) : 0;
    int64_t *steps = bt_malloc((size_t)(n ? n : 1) * sizeof *steps);
    double *col = bt_malloc((size_t)(n ? n : 1) * sizeof *col);
    if (!steps || !col) {
        free(steps);
        free(col);
        rc = BT_ENOMEM;
        goto out;
    }
    for (int64_t i = 0; i < n; i++) steps[i] = i + 1;
    rc = st_h5_group(f, SD_H5_HISTORY, false);
    if (rc == BT_OK) rc = st_h5_write(f, SD_H5_HISTORY "/" SD_H5_HISTORY_STEP, ST_H5_I64, 1, &n, steps, NULL);
    for (int c_ = 0; c_ < SD_H5_HIST_NCOLS && rc == BT_OK; c_++) {
        char name[64];
        snprintf(name, sizeof name, SD_H5_HISTORY "/%s", sd_h5_history_column(c_));
        for (int64_t i = 0; i < n; i++) col[i] = i < have ? (*s_hist_col((sd_train_history_t *)h, c_))[i] : NAN;
        rc = st_h5_write(f, name, ST_H5_F64, 1, &n, col, NULL);
    }
    free(steps);
    free(col);
    if (rc) goto out;

    /* the data the run trains on */
    if ((rc = s_write_data(f, d, reuse))) goto out;
    rc = st_h5_commit(&f);
out:
    st_h5_abort(&f);
    st_h5_close(&reuse);
    free(job);
    free(host);
    return rc;
}

/* ---- resuming ---- */

static int s_check_set(const char *path, st_h5_file_t *f, const char *group, const sd_image_set_t *s,
                       const char *what, const char *flag)
{
    char *hash = NULL, here[BT_HASH_HEX];
    st_h5_imgset_info_t info;
    int rc = st_h5_imgset_probe(f, group, &info);
    if (rc == BT_OK) rc = st_h5_attr_str(f, group, SD_H5_SET_CONTENT_HASH, &hash);
    if (rc) return rc;
    bt_hash_hex(s_pixels_hash(s), here);
    if (info.n != s->n || info.height != s->res || strcmp(hash, here)) {
        BT_ERROR("%s: the checkpoint trained on %lld %s at %lld px (content hash %s), this run has %d at %d px (%s); "
                 "resume needs the same %s",
                 path, (long long)info.n, what, (long long)info.height, hash, s->n, s->res, here, flag);
        rc = BT_EINVAL;
    }
    free(hash);
    return rc;
}

/* Where tensor i's parameters (g 0), m (1) or v (2) go in the resume staging buffer. */
static int64_t s_stage_at(const sd_optim_t *o, int i, int g)
{
    int64_t at = 0;
    for (int k = 0; k < i; k++) at += 3 * o->t[k].numel;
    return at + g * o->t[i].numel;
}

int sd_checkpoint_resume(const char *path, sd_optim_t *o, const sd_ckpt_data_t *d, sd_train_history_t *h)
{
    const sd_train_config_t *c = d->cfg;
    const sd_model_ids_t *ids = &d->ids;
    float *stage = NULL;
    int64_t staged = 0;
    char *job = NULL, *hash = NULL;
    char **names = NULL;
    int nnames = 0;
    sd_train_history_t hist = {0};
    int64_t step = 0, ostep = 0, total = 0;
    uint64_t seed = 0;
    st_h5_file_t *f = sd_booth_h5_open(path, SD_CKPT_FORMAT, NULL, NULL);
    if (!f) return BT_EFORMAT;
    int rc = st_h5_attr_str(f, SD_H5_ROOT, SD_H5_CKPT_BASE_MODEL_HASH, &hash);
    if (rc == BT_OK && strcmp(hash, ids->model)) {
        BT_ERROR("%s: the checkpoint's base model has content hash %s, %s has %s; resume needs the same model", path,
                 hash, c->model_dir, ids->model);
        rc = BT_EINVAL;
    }
    if (rc == BT_OK) rc = st_h5_attr_str(f, SD_H5_ROOT, SD_H5_CKPT_JOB, &job);
    if (rc == BT_OK) rc = sd_job_compare(path, job, c);
    if (rc == BT_OK) rc = st_h5_attr_u64(f, SD_H5_RNG, SD_H5_RNG_SEED, &seed);
    if (rc == BT_OK && seed != c->seed) {
        BT_ERROR("%s: the checkpoint was trained with --seed %llu, this run has %llu; resume needs the same settings",
                 path, (unsigned long long)seed, (unsigned long long)c->seed);
        rc = BT_EINVAL;
    }
    if (rc == BT_OK) rc = st_h5_attr_i64(f, SD_H5_ROOT, SD_H5_CKPT_STEP, &step);
    if (rc == BT_OK) rc = st_h5_attr_i64(f, SD_H5_OPTIM, SD_H5_OPTIM_STEP, &ostep);
    if (rc == BT_OK && (step < 0 || step != ostep || step > c->max_train_steps)) {
        BT_ERROR("%s: the checkpoint is at step %lld (optimizer step %lld); this run has --max-train-steps %lld", path,
                 (long long)step, (long long)ostep, (long long)c->max_train_steps);
        rc = step > c->max_train_steps && step == ostep ? BT_EINVAL : BT_EFORMAT;
    }
    if (rc) goto out;

    /* the data */
    if ((rc = s_check_set(path, f, SD_H5_INSTANCE, d->instances, "instance images", "--instance-data-dir"))) goto out;
    if (c->prior_preservation &&
        (rc = s_check_set(path, f, SD_H5_PRIOR, d->classes, "class images", "--class-data-dir")))
        goto out;

    /* the tensors: exactly the trainer's, each of its shape */
    if ((rc = st_h5_list(f, SD_H5_LORA, &names, &nnames))) goto out;
    total = o->n;
    if (nnames != total) {
        BT_ERROR("%s: the checkpoint has %d LoRA tensors, this run's adapters have %lld", path, nnames,
                 (long long)total);
        rc = BT_ESHAPE;
        goto out;
    }
    for (int i = 0; i < o->n; i++) staged += 3 * o->t[i].numel;
    if (!(stage = bt_malloc((size_t)(staged ? staged : 1) * sizeof(float)))) {
        rc = BT_ENOMEM;
        goto out;
    }
    for (int i = 0, at = 0; i < o->n && rc == BT_OK; i++) {
        static const char *const groups[3] = {SD_H5_LORA, SD_H5_OPTIM_M, SD_H5_OPTIM_V};
        for (int g = 0; g < 3 && rc == BT_OK; g++, at++) {
            char name[SD_OPTIM_NAME_MAX + 64];
            snprintf(name, sizeof name, "%s/%s", groups[g], o->t[i].name);
            rc = st_h5_read(f, name, ST_H5_F32, 2, o->t[i].shape, stage + s_stage_at(o, i, g));
        }
    }
    if (rc) goto out;

    /* the history */
    for (int col = 0; col < SD_H5_HIST_NCOLS && rc == BT_OK; col++) {
        double **p = s_hist_col(&hist, col);
        char name[64];
        snprintf(name, sizeof name, SD_H5_HISTORY "/%s", sd_h5_history_column(col));
        if (!(*p = bt_malloc((size_t)(step ? step : 1) * sizeof **p))) rc = BT_ENOMEM;
        if (rc == BT_OK) rc = st_h5_read(f, name, ST_H5_F64, 1, &step, *p);
    }
    if (rc) goto out;
    hist.n = hist.cap = step;

    /* everything read and checked: now the trainer changes */
    for (int i = 0; i < o->n && rc == BT_OK; i++) {
        sd_optim_tensor_t *t = &o->t[i];
        size_t bytes = (size_t)t->numel * sizeof(float);
        if (!(rc = nn_upload(o->ctx, t->p, stage + s_stage_at(o, i, 0), bytes)) &&
            !(rc = nn_upload(o->ctx, t->m, stage + s_stage_at(o, i, 1), bytes)))
            rc = nn_upload(o->ctx, t->v, stage + s_stage_at(o, i, 2), bytes);
    }
    if (rc) goto out;
    o->step = step;
    if (h) {
        sd_history_free(h);
        *h = hist;
        memset(&hist, 0, sizeof hist);
    }
out:
    free(stage);
    sd_history_free(&hist);
    st_h5_free_names(names, nnames);
    free(job);
    free(hash);
    st_h5_close(&f);
    return rc;
}

/* ---- the checkpoints of an output folder ---- */

/* N of "checkpoint-N.h5" (digits only), or -1. */
static int64_t s_ckpt_step(const char *name)
{
    size_t pl = strlen(SD_H5_CKPT_PREFIX);
    if (strncmp(name, SD_H5_CKPT_PREFIX, pl)) return -1;
    const char *p = name + pl;
    int64_t n = 0;
    int digits = 0;
    for (; *p >= '0' && *p <= '9' && digits < 18; p++, digits++) n = n * 10 + (*p - '0');
    return digits && !strcmp(p, SD_H5_EXT) ? n : -1;
}

static int s_cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static bool s_is_ckpt(const char *name, void *user)
{
    (void)user;
    return s_ckpt_step(name) >= 0;
}

/* The steps of dir's checkpoints, ascending. */
static int s_list_steps(const char *dir, int64_t **steps, int *n)
{
    char **names;
    int rc = bt_list_dir(dir, s_is_ckpt, NULL, false, &names, n);
    *steps = NULL;
    if (rc == BT_OK && *n && !(*steps = bt_malloc((size_t)*n * sizeof **steps))) {
        BT_ERROR("%s: out of memory listing its checkpoints", dir);
        rc = BT_ENOMEM;
    }
    for (int i = 0; rc == BT_OK && i < *n; i++) (*steps)[i] = s_ckpt_step(names[i]);
    if (*steps) qsort(*steps, (size_t)*n, sizeof **steps, s_cmp_i64);
    bt_free_list(names, *n);
    if (rc) *n = 0;
    return rc;
}

int sd_checkpoint_latest(const char *dir, char *path, size_t len)
{
    int64_t *steps;
    int n, rc = s_list_steps(dir, &steps, &n);
    if (rc == BT_OK && n > 0)
        rc = sd_checkpoint_path(path, len, dir, steps[n - 1]) == BT_OK ? 1 : BT_EINVAL;
    free(steps);
    return rc;
}

int sd_checkpoint_prune(const char *dir, int keep)
{
    int64_t *steps;
    int n, rc = s_list_steps(dir, &steps, &n);
    char path[4096];
    for (int i = 0; rc == BT_OK && keep > 0 && i < n - keep; i++) {
        if (sd_checkpoint_path(path, sizeof path, dir, steps[i])) continue; /* not a name this folder can hold */
        if (unlink(path) != 0 && errno != ENOENT) {
            BT_ERROR("%s: cannot delete an old checkpoint: %s", path, strerror(errno));
            rc = BT_EIO;
        }
    }
    free(steps);
    /* temporaries of checkpoint writers that died ("checkpoint-N.h5.tmp.PID", PID gone) */
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        const char *tmp = strstr(e->d_name, SD_H5_EXT ".tmp."); /* storage/h5.h's temporary name */
        if (strncmp(e->d_name, SD_H5_CKPT_PREFIX, strlen(SD_H5_CKPT_PREFIX)) || !tmp) continue;
        long pid = strtol(tmp + 8, NULL, 10);
        if (pid <= 0 || pid == (long)getpid() || (kill((pid_t)pid, 0) == 0 || errno != ESRCH)) continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        unlink(path);
    }
    if (d) closedir(d);
    return rc;
}

/* ---- export ---- */

int sd_optim_save_lora(const sd_optim_t *o, int64_t rank, float alpha, const char *path, st_lora_layout_t layout,
                       st_dtype_t dtype, const char *base_model)
{
    const char **names = bt_malloc((size_t)(o->n ? o->n : 1) * sizeof *names);
    int64_t(*shapes)[2] = bt_malloc((size_t)(o->n ? o->n : 1) * sizeof *shapes);
    const float **data = bt_malloc((size_t)(o->n ? o->n : 1) * sizeof *data);
    float *host = NULL;
    sd_lora_records_t r[2] = {{0}};
    int rc = names && shapes && data ? BT_OK : BT_ENOMEM;
    int64_t total = 0;
    for (int i = 0; i < o->n; i++) total += o->t[i].numel;
    if (rc == BT_OK && o->ctx->kind != NN_BACKEND_CPU && !(host = bt_malloc((size_t)(total ? total : 1) * sizeof(float))))
        rc = BT_ENOMEM;
    for (int i = 0, at = 0; i < o->n && rc == BT_OK; i++) {
        const sd_optim_tensor_t *t = &o->t[i];
        names[i] = t->name;
        shapes[i][0] = t->shape[0];
        shapes[i][1] = t->shape[1];
        data[i] = t->p;
        if (host) {
            rc = nn_download(o->ctx, host + at, t->p, (size_t)t->numel * sizeof(float));
            data[i] = host + at;
            at += (int)t->numel;
        }
    }
    if (rc == BT_OK)
        rc = sd_lora_records_from_named(r, path, (const char *const *)names, (const int64_t(*)[2])shapes, data, o->n,
                                        rank, alpha);
    if (rc == BT_OK) {
        const char *meta[] = {"booth.base_model", base_model ? base_model : "", NULL};
        rc = sd_lora_save_records(path, layout, dtype, &r[0], &r[1], meta);
    }
    sd_lora_records_free(&r[0]);
    sd_lora_records_free(&r[1]);
    free(names);
    free(shapes);
    free(data);
    free(host);
    return rc;
}

/* A boolean of the checkpoint's job ("full_finetune", "train_text_encoder"): 1 or 0 (absent: 0),
 * -1 with one line when the job cannot be read. */
static int s_job_flag(st_h5_file_t *f, const char *path, const char *key)
{
    char *job = NULL;
    if (st_h5_attr_str(f, SD_H5_ROOT, SD_H5_CKPT_JOB, &job)) return -1;
    cJSON *o = cJSON_Parse(job);
    free(job);
    if (!cJSON_IsObject(o)) {
        cJSON_Delete(o);
        BT_ERROR("%s: the 'job' attribute is not a JSON object", path);
        return -1;
    }
    int on = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, key));
    cJSON_Delete(o);
    return on;
}

int sd_checkpoint_is_full(st_h5_file_t *f, const char *path) { return s_job_flag(f, path, "full_finetune"); }

typedef struct {
    st_h5_file_t *f;
    const char *path;
} s_ckpt_get_t;

static int s_ckpt_get(void *user, const char *name, float *dst, int64_t numel)
{
    s_ckpt_get_t *g = user;
    char ds[2 * SD_OPTIM_NAME_MAX];
    st_h5_info_t info;
    snprintf(ds, sizeof ds, SD_H5_LORA "/%s", name);
    if (!st_h5_exists(g->f, ds)) {
        BT_ERROR("%s: no tensor '%s' (the model folder needs it)", g->path, name);
        return BT_ENOTFOUND;
    }
    int rc = st_h5_info(g->f, ds, &info);
    if (rc) return rc;
    if (info.ndim != 2 || info.shape[0] * info.shape[1] != numel) {
        BT_ERROR("%s: '%s' has %lld values, the model's parameter %lld", g->path, name,
                 (long long)(info.ndim == 2 ? info.shape[0] * info.shape[1] : -1), (long long)numel);
        return BT_ESHAPE;
    }
    return st_h5_read(g->f, ds, ST_H5_F32, 2, info.shape, dst);
}

int sd_checkpoint_export_model(const char *ckpt, const char *out, const char *base_dir)
{
    st_h5_file_t *f = sd_booth_h5_open(ckpt, SD_CKPT_FORMAT, NULL, NULL);
    if (!f) return BT_EFORMAT;
    char *model = NULL, *hash = NULL;
    int full = sd_checkpoint_is_full(f, ckpt), text = full > 0 ? s_job_flag(f, ckpt, "train_text_encoder") : 0;
    int rc = full < 0 || text < 0 ? BT_EFORMAT : BT_OK;
    if (full == 0) {
        BT_ERROR("%s: a LoRA checkpoint: it exports as a LoRA file (--format diffusers, kohya or peft)", ckpt);
        rc = BT_EINVAL;
    }
    if (rc == BT_OK) rc = st_h5_attr_str(f, SD_H5_ROOT, SD_H5_CKPT_BASE_MODEL, &model);
    if (rc == BT_OK) rc = st_h5_attr_str(f, SD_H5_ROOT, SD_H5_CKPT_BASE_MODEL_HASH, &hash);
    const char *base = base_dir ? base_dir : model;
    sd_model_ids_t ids;
    if (rc == BT_OK && (rc = sd_model_ids(base, &ids)) == BT_OK && strcmp(ids.model, hash)) {
        BT_ERROR("%s: trained on a model with content hash %s; %s has %s (give the base model with --model)", ckpt,
                 hash, base, ids.model);
        rc = BT_EINVAL;
    }
    if (rc == BT_OK) {
        static const char *const meta[] = {"format", "pt", NULL};
        s_ckpt_get_t g = {f, ckpt};
        rc = sd_model_folder_write_from(out, base, text > 0, s_ckpt_get, &g, meta);
    }
    free(model);
    free(hash);
    st_h5_close(&f);
    return rc;
}

int sd_checkpoint_export(const char *ckpt, const char *out, st_lora_layout_t layout, st_dtype_t dtype)
{
    st_h5_file_t *f = sd_booth_h5_open(ckpt, SD_CKPT_FORMAT, NULL, NULL);
    if (!f) return BT_EFORMAT;
    int full = sd_checkpoint_is_full(f, ckpt);
    if (full != 0) {
        if (full > 0)
            BT_ERROR("%s: a full fine-tuning checkpoint: it exports as a model folder (--format model --out DIR)",
                     ckpt);
        st_h5_close(&f);
        return full > 0 ? BT_EINVAL : BT_EFORMAT;
    }
    char **names = NULL, *model = NULL;
    int n = 0;
    int64_t rank = 0, (*shapes)[2] = NULL;
    float **data = NULL;
    double alpha = 0;
    sd_lora_records_t r[2] = {{0}};
    int rc = st_h5_attr_i64(f, SD_H5_LORA, SD_H5_LORA_RANK, &rank);
    if (rc == BT_OK) rc = st_h5_attr_f64(f, SD_H5_LORA, SD_H5_LORA_ALPHA, &alpha);
    if (rc == BT_OK) rc = st_h5_attr_str(f, SD_H5_ROOT, SD_H5_CKPT_BASE_MODEL, &model);
    if (rc == BT_OK && (rank < 1 || rank > 4096 || !(alpha > 0))) {
        BT_ERROR("%s: LoRA rank %lld / alpha %g are not valid", ckpt, (long long)rank, alpha);
        rc = BT_EFORMAT;
    }
    if (rc == BT_OK) rc = st_h5_list(f, SD_H5_LORA, &names, &n);
    if (rc == BT_OK && n == 0) {
        BT_ERROR("%s: the checkpoint has no LoRA tensors", ckpt);
        rc = BT_EFORMAT;
    }
    if (rc == BT_OK && (!(shapes = bt_calloc((size_t)n, sizeof *shapes)) || !(data = bt_calloc((size_t)n, sizeof *data))))
        rc = BT_ENOMEM;
    for (int i = 0; i < n && rc == BT_OK; i++) {
        char name[2 * ST_LORA_NAME_MAX + 8];
        st_h5_info_t info;
        snprintf(name, sizeof name, SD_H5_LORA "/%s", names[i]);
        if ((rc = st_h5_info(f, name, &info))) break;
        if (info.ndim != 2 || info.shape[0] < 1 || info.shape[1] < 1 || info.shape[0] > 16384 ||
            info.shape[1] > 16384) {
            BT_ERROR("%s: '%s' is not a LoRA matrix (%d dims)", ckpt, name, info.ndim);
            rc = BT_ESHAPE;
            break;
        }
        shapes[i][0] = info.shape[0];
        shapes[i][1] = info.shape[1];
        if (!(data[i] = bt_malloc((size_t)(info.shape[0] * info.shape[1]) * sizeof(float)))) rc = BT_ENOMEM;
        else rc = st_h5_read(f, name, ST_H5_F32, 2, shapes[i], data[i]);
    }
    if (rc == BT_OK)
        rc = sd_lora_records_from_named(r, ckpt, (const char *const *)names, (const int64_t(*)[2])shapes,
                                        (const float *const *)data, n, rank, (float)alpha);
    if (rc == BT_OK) {
        const char *meta[] = {"booth.base_model", model, NULL};
        rc = sd_lora_save_records(out, layout, dtype, &r[0], &r[1], meta);
    }
    sd_lora_records_free(&r[0]);
    sd_lora_records_free(&r[1]);
    for (int i = 0; data && i < n; i++) free(data[i]);
    free(data);
    free(shapes);
    st_h5_free_names(names, n);
    free(model);
    st_h5_close(&f);
    return rc;
}
