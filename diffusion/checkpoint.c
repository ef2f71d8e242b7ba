/*
 * checkpoint.c — trainer state <-> HDF5 checkpoint files; the job spec and
 * the checks a resume makes; checkpoint rotation; export of a checkpoint's LoRA.
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

#include "common/log.h"
#include "common/status.h"
#include "diffusion/lora_io.h"
#include "diffusion/model_hash.h"
#include "diffusion/priors.h"
#include "nn/memory.h"
#include "storage/h5.h"
#include "storage/h5_images.h"

/* ---- history ---- */

int sd_history_push(sd_train_history_t *h, const sd_step_stats_t *st, double seconds)
{
    if (h->n == h->cap) {
        int64_t cap = h->cap ? 2 * h->cap : 256;
        double **cols[6] = {&h->loss, &h->loss_instance, &h->loss_prior, &h->lr, &h->grad_norm, &h->seconds};
        for (int c = 0; c < 6; c++) {
            double *p = realloc(*cols[c], (size_t)cap * sizeof *p);
            if (!p) return BT_ENOMEM;
            *cols[c] = p;
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
    free(h->loss);
    free(h->loss_instance);
    free(h->loss_prior);
    free(h->lr);
    free(h->grad_norm);
    free(h->seconds);
    memset(h, 0, sizeof *h);
}

static const char *const s_hist_names[6] = {"loss", "loss_instance", "loss_prior", "lr", "grad_norm", "seconds"};

static double **s_hist_col(sd_train_history_t *h, int c)
{
    double **cols[6] = {&h->loss, &h->loss_instance, &h->loss_prior, &h->lr, &h->grad_norm, &h->seconds};
    return cols[c];
}

int sd_model_ids(const char *dir, sd_model_ids_t *ids)
{
    int rc = sd_model_hash(dir, SD_PART_ALL, ids->model, NULL);
    return rc ? rc : sd_model_hash(dir, SD_PART_VAE, ids->vae, NULL);
}

/* ---- the job ---- */

typedef enum { J_STR, J_BOOL, J_INT, J_I64, J_U64, J_F32, J_SCHED } s_jkind_t;

/* Every setting of sd_train_config_t, by diffusers' flag name. math: a resumed
 * run must agree on it (the others are covered by the content hashes, or do not
 * change the numbers: gradient checkpointing recomputes the same values). */
typedef struct {
    const char *key;
    s_jkind_t kind;
    size_t off;
    bool math;
    const char *absent; /* JSON of the value a checkpoint written before the field existed had, or NULL */
    const char *flag;   /* how messages name it, when not --key with '-' for '_' */
} s_jfield_t;

#define F(key, kind, field, math) {key, kind, offsetof(sd_train_config_t, field), math, NULL, NULL}
static const s_jfield_t s_job[] = {
    F("pretrained_model_name_or_path", J_STR, model_dir, false),
    F("instance_data_dir", J_STR, instance_dir, false),
    F("instance_prompt", J_STR, instance_prompt, true),
    F("class_data_dir", J_STR, class_dir, false),
    F("class_prompt", J_STR, class_prompt, true),
    F("with_prior_preservation", J_BOOL, prior_preservation, true),
    F("prior_loss_weight", J_F32, prior_loss_weight, true),
    F("num_class_images", J_INT, num_class_images, true),
    F("class_inference_steps", J_INT, class_steps, false),
    F("class_guidance", J_F32, class_guidance, false),
    F("resolution", J_INT, resolution, true),
    F("random_flip", J_BOOL, random_flip, true),
    F("train_batch_size", J_INT, train_batch_size, true),
    F("micro_batch_size", J_INT, micro_batch_size, true),
    F("max_train_steps", J_I64, max_train_steps, true), /* math only for schedules that depend on it */
    F("learning_rate", J_F32, learning_rate, true),
    F("lr_scheduler", J_SCHED, lr_scheduler, true),
    F("lr_warmup_steps", J_I64, lr_warmup_steps, true),
    F("rank", J_I64, rank, true),
    F("lora_alpha", J_F32, lora_alpha, true),
    F("train_text_encoder", J_BOOL, train_text_encoder, true),
    F("seed", J_U64, seed, true),
    F("gradient_checkpointing", J_BOOL, gradient_checkpointing, false),
    F("snr_gamma", J_F32, snr_gamma, true),
    F("noise_offset", J_F32, noise_offset, true),
    F("max_grad_norm", J_F32, max_grad_norm, true),
    F("adam_beta1", J_F32, adam_beta1, true),
    F("adam_beta2", J_F32, adam_beta2, true),
    F("adam_epsilon", J_F32, adam_epsilon, true),
    F("adam_weight_decay", J_F32, adam_weight_decay, true),
    /* "exact", or the 16-bit type --base-dtype rounded the model's weights to (absent before booth kept
     * weights in 16 bits: exact) */
    {"base_weights", J_STR, offsetof(sd_train_config_t, base_weights), true, "\"exact\"", "base-dtype (weights)"},
};
#undef F
#define S_NJOB ((int)(sizeof s_job / sizeof s_job[0]))

/* The shortest decimal that reads back (through double, as JSON readers do) as f. */
static void s_fmt_f32(char *buf, size_t len, float f)
{
    for (int p = 1; p <= 9; p++) {
        snprintf(buf, len, "%.*g", p, (double)f);
        if ((float)strtod(buf, NULL) == f) return;
    }
}

/* One field's value as JSON text (numbers and booleans raw, strings quoted by cJSON). */
static cJSON *s_job_item(const s_jfield_t *j, const sd_train_config_t *c)
{
    const char *base = (const char *)c;
    char buf[64];
    switch (j->kind) {
    case J_STR: {
        const char *s = *(const char *const *)(base + j->off);
        return s ? cJSON_CreateString(s) : cJSON_CreateNull();
    }
    case J_BOOL: return cJSON_CreateBool(*(const bool *)(base + j->off));
    case J_INT: snprintf(buf, sizeof buf, "%d", *(const int *)(base + j->off)); break;
    case J_I64: snprintf(buf, sizeof buf, "%lld", (long long)*(const int64_t *)(base + j->off)); break;
    case J_U64: snprintf(buf, sizeof buf, "%llu", (unsigned long long)*(const uint64_t *)(base + j->off)); break;
    case J_F32: s_fmt_f32(buf, sizeof buf, *(const float *)(base + j->off)); break;
    case J_SCHED: return cJSON_CreateString(sd_lr_sched_name(*(const sd_lr_sched_t *)(base + j->off)));
    }
    return cJSON_CreateRaw(buf);
}

char *sd_train_job_json(const sd_train_config_t *c)
{
    cJSON *o = cJSON_CreateObject();
    bool ok = o != NULL;
    for (int i = 0; i < S_NJOB && ok; i++) {
        cJSON *v = s_job_item(&s_job[i], c);
        ok = v && cJSON_AddItemToObject(o, s_job[i].key, v);
    }
    char *text = ok ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (!text) return NULL;
    char *copy = strdup(text); /* cJSON_free and free may differ */
    cJSON_free(text);
    return copy;
}

/* The checkpoint's job against this run's; one line naming the first difference. */
static int s_job_compare(const char *path, const char *json, const sd_train_config_t *c)
{
    cJSON *o = cJSON_Parse(json);
    if (!cJSON_IsObject(o)) {
        cJSON_Delete(o);
        BT_ERROR("%s: the 'job' attribute is not a JSON object", path);
        return BT_EFORMAT;
    }
    int rc = BT_OK;
    bool sched_needs_total = c->lr_scheduler == SD_LR_LINEAR || c->lr_scheduler == SD_LR_COSINE;
    for (int i = 0; i < S_NJOB && rc == BT_OK; i++) {
        const s_jfield_t *j = &s_job[i];
        if (!j->math || j->kind == J_U64) continue; /* the seed is compared exactly, from its own attribute */
        if (!strcmp(j->key, "max_train_steps") && !sched_needs_total) continue;
        if (!c->prior_preservation && (!strcmp(j->key, "class_prompt") || !strcmp(j->key, "num_class_images") ||
                                       !strcmp(j->key, "prior_loss_weight")))
            continue;
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, j->key);
        cJSON *absent = NULL;
        if (!v && j->absent) v = absent = cJSON_Parse(j->absent);
        cJSON *mine = s_job_item(j, c);
        char *a = v ? cJSON_PrintUnformatted(v) : NULL, *b = mine ? cJSON_PrintUnformatted(mine) : NULL;
        bool same;
        if (!v || !mine) {
            same = false;
        } else if (j->kind == J_F32) { /* numbers compare as the float they were printed from */
            same = cJSON_IsNumber(v) && (float)v->valuedouble == *(const float *)((const char *)c + j->off);
        } else if (j->kind == J_INT || j->kind == J_I64) {
            const char *base = (const char *)c;
            double want = j->kind == J_INT ? *(const int *)(base + j->off) : (double)*(const int64_t *)(base + j->off);
            same = cJSON_IsNumber(v) && v->valuedouble == want;
        } else {
            same = a && b && !strcmp(a, b);
        }
        if (!same) {
            char flag[64];
            snprintf(flag, sizeof flag, "%s", j->flag ? j->flag : j->key);
            for (char *p = flag; *p && !j->flag; p++) *p = *p == '_' ? '-' : *p;
            BT_ERROR("%s: the checkpoint was trained with --%s %s, this run has %s; resume needs the same settings "
                     "(or a new --output-dir)",
                     path, flag, a ? a : "(missing)", b ? b : "?");
            rc = BT_EINVAL;
        }
        cJSON_free(a);
        cJSON_free(b);
        cJSON_Delete(mine);
        cJSON_Delete(absent);
    }
    cJSON_Delete(o);
    return rc;
}

/* ---- opening booth files ---- */

bt_h5_file_t *sd_booth_h5_open(const char *path, const char *want, char **format, int64_t *version)
{
    bt_h5_file_t *f = bt_h5_open(path);
    if (!f) return NULL;
    char *fmt = NULL;
    int64_t ver = 0;
    if (!bt_h5_attr_exists(f, "/", "booth_format")) {
        BT_ERROR("%s: an HDF5 file, but not one of booth's (no 'booth_format' attribute on the root group)", path);
        goto out_fail;
    }
    if (bt_h5_attr_str(f, "/", "booth_format", &fmt) || bt_h5_attr_i64(f, "/", "booth_format_version", &ver))
        goto out_fail;
    if (want && strcmp(fmt, want)) {
        BT_ERROR("%s: a %s file, not a %s", path, fmt, want);
        goto out_fail;
    }
    if (strcmp(fmt, SD_CKPT_FORMAT) && strcmp(fmt, SD_PRIORS_FORMAT)) {
        BT_ERROR("%s: unknown booth_format '%s'", path, fmt);
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
    bt_h5_close(&f);
    return NULL;
}

/* ---- saving ---- */

static uint64_t s_pixels_hash(const sd_image_set_t *s)
{
    return bt_xxh64(s->pixels, (size_t)s->n * (size_t)s->res * (size_t)s->res * 3, 0);
}

/* The LoRA set's tensor names as the checkpoint spells them: peft keys with the part prefix. */
static int s_key(char *buf, size_t len, const sd_lora_set_t *s, int param)
{
    st_lora_part_t part = s->part == SD_LORA_TEXT ? ST_LORA_PART_TEXT : ST_LORA_PART_UNET;
    return st_lora_key(buf, len, ST_LORA_PEFT, part, param % 2 ? ST_LORA_B : ST_LORA_A, s->modules[param / 2]);
}

/* Writes group/<key> for every parameter of s, from `block` (a buffer laid out like s->params.mem). */
static int s_write_block(bt_h5_file_t *f, const char *group, const sd_lora_set_t *s, const float *block, float *host)
{
    char key[2 * ST_LORA_NAME_MAX], name[2 * ST_LORA_NAME_MAX + 64];
    int rc = BT_OK;
    for (int i = 0; i < s->params.n && rc == BT_OK; i++) {
        const sd_param_t *p = &s->params.p[i];
        int64_t n = p->shape[0] * p->shape[1];
        if ((rc = s_key(key, sizeof key, s, i))) break;
        snprintf(name, sizeof name, "%s/%s", group, key);
        if (!(rc = nn_download(s->params.ctx, host, block + (p->data - s->params.mem), (size_t)n * sizeof(float))))
            rc = bt_h5_write(f, name, BT_H5_F32, 2, p->shape, host, NULL);
    }
    return rc;
}

/* "[\"to_q\", ...]" of the projections a set adapts, in s_proj order. */
static void s_targets(const sd_lora_set_t *s, char *buf, size_t len)
{
    static const char *const unet[] = {"to_q", "to_k", "to_v", "to_out.0"}, *const text[] = {"q_proj", "k_proj",
                                                                                             "v_proj", "out_proj"};
    const char *const *names = s->part == SD_LORA_TEXT ? text : unet;
    size_t o = (size_t)snprintf(buf, len, "[");
    for (int t = 0; t < 4; t++) {
        size_t tl = strlen(names[t]);
        for (int i = 0; i < s->n; i++) {
            size_t ml = strlen(s->modules[i]);
            if (ml > tl && s->modules[i][ml - tl - 1] == '.' && !strcmp(s->modules[i] + ml - tl, names[t])) {
                o += (size_t)snprintf(buf + o, o < len ? len - o : 0, "%s\"%s\"", o > 1 ? ", " : "", names[t]);
                break;
            }
        }
    }
    snprintf(buf + o, o < len ? len - o : 0, "]");
}

/* Can the pixels and latents of set s be copied from another booth file
 * (an earlier checkpoint of this run, or the prior set it trains on) instead of
 * being compressed again? Only if that file holds exactly these images
 * (content hash) at these sizes, encoded by the same base model. */
static bool s_reusable(bt_h5_file_t *src, const char *group, const sd_image_set_t *s, const char *hex,
                       const sd_model_ids_t *ids)
{
    if (!src || !bt_h5_is_group(src, group) || !bt_h5_attr_exists(src, group, "content_hash")) return false;
    const char *hash_at = bt_h5_attr_exists(src, "/", "base_model_hash") ? "/" : group;
    char *h = NULL, *mh = NULL;
    bt_h5_imgset_info_t info;
    bool ok = bt_h5_imgset_probe(src, group, &info) == BT_OK && info.n == s->n && info.height == s->res &&
              info.width == s->res && info.lat_c == s->C && info.lat_h == s->h && info.lat_w == s->w &&
              bt_h5_attr_str(src, group, "content_hash", &h) == BT_OK && !strcmp(h, hex) &&
              bt_h5_attr_str(src, hash_at, "base_model_hash", &mh) == BT_OK && !strcmp(mh, ids->model);
    free(h);
    free(mh);
    return ok;
}

static int s_write_set(bt_h5_file_t *f, const char *group, const sd_image_set_t *s, const char *prompt,
                       bool per_image_seed, uint64_t seed, bt_h5_file_t *reuse, const sd_model_ids_t *ids)
{
    const char **prompts = malloc((size_t)(s->n ? s->n : 1) * sizeof *prompts);
    uint64_t *seeds = malloc((size_t)(s->n ? s->n : 1) * sizeof *seeds);
    if (!prompts || !seeds) {
        free(prompts);
        free(seeds);
        return BT_ENOMEM;
    }
    for (int i = 0; i < s->n; i++) {
        prompts[i] = prompt;
        seeds[i] = seed;
    }
    bt_h5_imgset_t w = {.n = s->n, .height = s->res, .width = s->res, .lat_c = s->C, .lat_h = s->h, .lat_w = s->w,
                        .flips = s->mean_f != NULL, .images = s->pixels, .mean = s->mean, .logvar = s->logvar,
                        .mean_flip = s->mean_f, .logvar_flip = s->logvar_f, .seed = per_image_seed ? seeds : NULL,
                        .prompt = prompts, .source = (const char *const *)s->paths};
    char hex[BT_HASH_HEX];
    bt_hash_hex(s_pixels_hash(s), hex);
    int rc;
    if (s_reusable(reuse, group, s, hex, ids)) {
        /* images and latents as the other file stores them (chunks copied, not recompressed);
         * mirrored latents copied when it has them, else written; the rest written anew */
        static const char *const names[] = {"images", "latent_mean", "latent_logvar", "latent_mean_flip",
                                            "latent_logvar_flip"};
        const float *flip[2] = {s->mean_f, s->logvar_f};
        rc = bt_h5_group(f, group, false);
        for (int k = 0; k < (s->mean_f ? 5 : 3) && rc == BT_OK; k++) {
            char p[256];
            snprintf(p, sizeof p, "%s/%s", group, names[k]);
            if (k < 3 || bt_h5_exists(reuse, p)) {
                rc = bt_h5_copy(f, p, reuse, p);
            } else {
                const bt_h5_opts_t row = {.rows_per_chunk = 1};
                rc = bt_h5_write(f, p, BT_H5_F32, 4, (int64_t[]){s->n, s->C, s->h, s->w}, flip[k - 3], &row);
            }
        }
        if (rc == BT_OK) rc = bt_h5_imgset_end(f, group, &w);
        BT_DEBUG("%s: /%s images and latents copied from %s", bt_h5_path(f), group, bt_h5_path(reuse));
    } else {
        rc = bt_h5_imgset_write(f, group, &w);
    }
    if (rc == BT_OK) rc = bt_h5_attr_set_str(f, group, "content_hash", hex);
    if (rc == BT_OK) rc = bt_h5_attr_set_i64(f, group, "resolution", s->res);
    free(prompts);
    free(seeds);
    return rc;
}

int sd_checkpoint_save(const char *path, const sd_trainer_t *t, const sd_model_ids_t *ids, const sd_train_history_t *h,
                       const char *reuse_path)
{
    const sd_train_config_t *c = &t->cfg;
    const sd_lora_set_t *sets[2] = {t->lora_unet, t->lora_text};
    char *job = sd_train_job_json(c);
    size_t maxn = 0;
    for (int k = 0; k < 2; k++)
        for (int i = 0; sets[k] && i < sets[k]->params.n; i++) {
            size_t n = (size_t)(sets[k]->params.p[i].shape[0] * sets[k]->params.p[i].shape[1]);
            if (n > maxn) maxn = n;
        }
    float *host = malloc((maxn ? maxn : 1) * sizeof(float));
    bt_h5_file_t *f = NULL, *reuse = NULL;
    int rc = job && host ? BT_OK : BT_ENOMEM;
    if (rc == BT_OK && reuse_path && access(reuse_path, R_OK) == 0)
        reuse = sd_booth_h5_open(reuse_path, NULL, NULL, NULL); /* NULL: write everything */
    if (rc || !(f = bt_h5_create(path))) {
        rc = rc ? rc : BT_EIO;
        goto out;
    }
    char targets[256], tu[96], tt[96] = "[]";
    s_targets(t->lora_unet, tu, sizeof tu);
    if (t->lora_text) s_targets(t->lora_text, tt, sizeof tt);
    snprintf(targets, sizeof targets, "{\"unet\": %s, \"text_encoder\": %s}", tu, tt);

    /* root: what the file is, where the run stands, what it trains */
    if ((rc = bt_h5_attr_set_str(f, "/", "booth_format", SD_CKPT_FORMAT)) ||
        (rc = bt_h5_attr_set_i64(f, "/", "booth_format_version", SD_CKPT_FORMAT_VERSION)) ||
        (rc = bt_h5_attr_set_i64(f, "/", "step", t->step)) ||
        (rc = bt_h5_attr_set_i64(f, "/", "max_train_steps", c->max_train_steps)) ||
        (rc = bt_h5_attr_set_i64(f, "/", "rank", c->rank)) ||
        (rc = bt_h5_attr_set_f32(f, "/", "alpha", c->lora_alpha)) ||
        (rc = bt_h5_attr_set_str(f, "/", "targets", targets)) || (rc = bt_h5_attr_set_str(f, "/", "job", job)) ||
        (rc = bt_h5_attr_set_str(f, "/", "base_model", c->model_dir)) ||
        (rc = bt_h5_attr_set_str(f, "/", "base_model_hash", ids->model)))
        goto out;

    /* the LoRA, named like the peft-layout LoRA keys, in model order */
    if ((rc = bt_h5_group(f, "lora", true)) || (rc = bt_h5_attr_set_str(f, "lora", "layout", "peft")) ||
        (rc = bt_h5_attr_set_i64(f, "lora", "rank", c->rank)) ||
        (rc = bt_h5_attr_set_f32(f, "lora", "alpha", c->lora_alpha)))
        goto out;
    for (int k = 0; k < 2 && rc == BT_OK; k++)
        if (sets[k]) rc = s_write_block(f, "lora", sets[k], sets[k]->params.mem, host);
    if (rc) goto out;

    /* AdamW: the moments under the same names, and its step */
    if ((rc = bt_h5_group(f, "optimizer", false)) || (rc = bt_h5_group(f, "optimizer/m", true)) ||
        (rc = bt_h5_group(f, "optimizer/v", true)) || (rc = bt_h5_attr_set_str(f, "optimizer", "type", "AdamW")) ||
        (rc = bt_h5_attr_set_i64(f, "optimizer", "step", t->step)) ||
        (rc = bt_h5_attr_set_f32(f, "optimizer", "learning_rate", c->learning_rate)) ||
        (rc = bt_h5_attr_set_str(f, "optimizer", "lr_scheduler", sd_lr_sched_name(c->lr_scheduler))) ||
        (rc = bt_h5_attr_set_i64(f, "optimizer", "lr_warmup_steps", c->lr_warmup_steps)) ||
        (rc = bt_h5_attr_set_f32(f, "optimizer", "beta1", c->adam_beta1)) ||
        (rc = bt_h5_attr_set_f32(f, "optimizer", "beta2", c->adam_beta2)) ||
        (rc = bt_h5_attr_set_f32(f, "optimizer", "epsilon", c->adam_epsilon)) ||
        (rc = bt_h5_attr_set_f32(f, "optimizer", "weight_decay", c->adam_weight_decay)) ||
        (rc = bt_h5_attr_set_f32(f, "optimizer", "max_grad_norm", c->max_grad_norm)))
        goto out;
    for (int k = 0; k < 2 && rc == BT_OK; k++) {
        if (!sets[k]) continue;
        if (!(rc = s_write_block(f, "optimizer/m", sets[k], t->m[k], host)))
            rc = s_write_block(f, "optimizer/v", sets[k], t->v[k], host);
    }
    if (rc) goto out;

    /* randomness: counter-based, so the seed is the whole state */
    if ((rc = bt_h5_group(f, "rng", false)) ||
        (rc = bt_h5_attr_set_str(f, "rng", "algorithm",
                                 "booth counter-based RNG (common/rng.h): every draw is a function of (seed, step, "
                                 "slot); no generator state to restore")) ||
        (rc = bt_h5_attr_set_u64(f, "rng", "seed", c->seed)) ||
        (rc = bt_h5_attr_set_i64(f, "rng", "next_step", t->step)))
        goto out;

    /* the per-step log: one row per step taken (NaN where the caller kept none) */
    int64_t n = t->step, have = h ? (h->n < n ? h->n : n) : 0;
    int64_t *steps = malloc((size_t)(n ? n : 1) * sizeof *steps);
    double *col = malloc((size_t)(n ? n : 1) * sizeof *col);
    if (!steps || !col) {
        free(steps);
        free(col);
        rc = BT_ENOMEM;
        goto out;
    }
    for (int64_t i = 0; i < n; i++) steps[i] = i + 1;
    rc = bt_h5_group(f, "history", false);
    if (rc == BT_OK) rc = bt_h5_write(f, "history/step", BT_H5_I64, 1, &n, steps, NULL);
    for (int c_ = 0; c_ < 6 && rc == BT_OK; c_++) {
        char name[64];
        snprintf(name, sizeof name, "history/%s", s_hist_names[c_]);
        for (int64_t i = 0; i < n; i++) col[i] = i < have ? (*s_hist_col((sd_train_history_t *)h, c_))[i] : NAN;
        rc = bt_h5_write(f, name, BT_H5_F64, 1, &n, col, NULL);
    }
    free(steps);
    free(col);
    if (rc) goto out;

    /* the data the run trains on */
    if ((rc = s_write_set(f, "instance", &t->instances, c->instance_prompt, false, 0, reuse, ids)) ||
        (rc = bt_h5_attr_set_str(f, "instance", "prompt", c->instance_prompt)))
        goto out;
    if (c->prior_preservation) {
        const sd_image_set_t *cl = &t->classes;
        sd_prior_spec_t spec = {.weights = sd_model_weights(t->model),
                                .prompt = cl->gen_prompt ? cl->gen_prompt : c->class_prompt,
                                .seed = cl->gen_prompt ? cl->gen_seed : c->seed,
                                .steps = cl->gen_prompt ? cl->gen_steps : c->class_steps,
                                .guidance = cl->gen_prompt ? cl->gen_guidance : c->class_guidance,
                                .resolution = cl->res};
        if ((rc = s_write_set(f, SD_PRIOR_GROUP, cl, spec.prompt, true, spec.seed, reuse, ids)) ||
            (rc = sd_priors_write_attrs(f, SD_PRIOR_GROUP, &spec, sd_sched_kind_name(t->model->default_sampler),
                                        c->model_dir, ids->model, ids->vae)) ||
            (rc = bt_h5_attr_set_str(f, SD_PRIOR_GROUP, "origin", c->class_dir ? c->class_dir : "")) ||
            (rc = bt_h5_attr_set_str(f, SD_PRIOR_GROUP, "class_prompt", c->class_prompt)))
            goto out;
    }
    rc = bt_h5_commit(&f);
out:
    bt_h5_abort(&f);
    bt_h5_close(&reuse);
    free(job);
    free(host);
    return rc;
}

/* ---- resuming ---- */

/* Reads every tensor of set s under group into host (laid out like params.mem), shapes checked. */
static int s_read_block(bt_h5_file_t *f, const char *group, const sd_lora_set_t *s, float *host)
{
    char key[2 * ST_LORA_NAME_MAX], name[2 * ST_LORA_NAME_MAX + 64];
    int rc = BT_OK;
    for (int i = 0; i < s->params.n && rc == BT_OK; i++) {
        const sd_param_t *p = &s->params.p[i];
        if ((rc = s_key(key, sizeof key, s, i))) break;
        snprintf(name, sizeof name, "%s/%s", group, key);
        rc = bt_h5_read(f, name, BT_H5_F32, 2, p->shape, host + (p->data - s->params.mem));
    }
    return rc;
}

static int s_check_set(const char *path, bt_h5_file_t *f, const char *group, const sd_image_set_t *s,
                       const char *what, const char *flag)
{
    char *hash = NULL, here[BT_HASH_HEX];
    bt_h5_imgset_info_t info;
    int rc = bt_h5_imgset_probe(f, group, &info);
    if (rc == BT_OK) rc = bt_h5_attr_str(f, group, "content_hash", &hash);
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

int sd_checkpoint_resume(const char *path, sd_trainer_t *t, const sd_model_ids_t *ids, sd_train_history_t *h)
{
    const sd_train_config_t *c = &t->cfg;
    sd_lora_set_t *sets[2] = {t->lora_unet, t->lora_text};
    float *stage[2][3] = {{NULL}};
    char *job = NULL, *hash = NULL;
    char **names = NULL;
    int nnames = 0;
    sd_train_history_t hist = {0};
    int64_t step = 0, ostep = 0, total = 0;
    uint64_t seed = 0;
    bt_h5_file_t *f = sd_booth_h5_open(path, SD_CKPT_FORMAT, NULL, NULL);
    if (!f) return BT_EFORMAT;
    int rc = bt_h5_attr_str(f, "/", "base_model_hash", &hash);
    if (rc == BT_OK && strcmp(hash, ids->model)) {
        BT_ERROR("%s: the checkpoint's base model has content hash %s, %s has %s; resume needs the same model", path,
                 hash, c->model_dir, ids->model);
        rc = BT_EINVAL;
    }
    if (rc == BT_OK) rc = bt_h5_attr_str(f, "/", "job", &job);
    if (rc == BT_OK) rc = s_job_compare(path, job, c);
    if (rc == BT_OK) rc = bt_h5_attr_u64(f, "rng", "seed", &seed);
    if (rc == BT_OK && seed != c->seed) {
        BT_ERROR("%s: the checkpoint was trained with --seed %llu, this run has %llu; resume needs the same settings",
                 path, (unsigned long long)seed, (unsigned long long)c->seed);
        rc = BT_EINVAL;
    }
    if (rc == BT_OK) rc = bt_h5_attr_i64(f, "/", "step", &step);
    if (rc == BT_OK) rc = bt_h5_attr_i64(f, "optimizer", "step", &ostep);
    if (rc == BT_OK && (step < 0 || step != ostep || step > c->max_train_steps)) {
        BT_ERROR("%s: the checkpoint is at step %lld (optimizer step %lld); this run has --max-train-steps %lld", path,
                 (long long)step, (long long)ostep, (long long)c->max_train_steps);
        rc = step > c->max_train_steps && step == ostep ? BT_EINVAL : BT_EFORMAT;
    }
    if (rc) goto out;

    /* the data */
    if ((rc = s_check_set(path, f, "instance", &t->instances, "instance images", "--instance-data-dir"))) goto out;
    if (c->prior_preservation &&
        (rc = s_check_set(path, f, SD_PRIOR_GROUP, &t->classes, "class images", "--class-data-dir")))
        goto out;

    /* the tensors: exactly the trainer's, each of its shape */
    if ((rc = bt_h5_list(f, "lora", &names, &nnames))) goto out;
    for (int k = 0; k < 2; k++) total += sets[k] ? sets[k]->params.n : 0;
    if (nnames != total) {
        BT_ERROR("%s: the checkpoint has %d LoRA tensors, this run's adapters have %lld", path, nnames,
                 (long long)total);
        rc = BT_ESHAPE;
        goto out;
    }
    for (int k = 0; k < 2 && rc == BT_OK; k++) {
        if (!sets[k]) continue;
        for (int j = 0; j < 3 && rc == BT_OK; j++)
            if (!(stage[k][j] = calloc((size_t)t->nblock[k], sizeof(float)))) rc = BT_ENOMEM;
        if (rc == BT_OK) rc = s_read_block(f, "lora", sets[k], stage[k][0]);
        if (rc == BT_OK) rc = s_read_block(f, "optimizer/m", sets[k], stage[k][1]);
        if (rc == BT_OK) rc = s_read_block(f, "optimizer/v", sets[k], stage[k][2]);
    }
    if (rc) goto out;

    /* the history */
    for (int col = 0; col < 6 && rc == BT_OK; col++) {
        double **p = s_hist_col(&hist, col);
        char name[64];
        snprintf(name, sizeof name, "history/%s", s_hist_names[col]);
        if (!(*p = malloc((size_t)(step ? step : 1) * sizeof **p))) rc = BT_ENOMEM;
        if (rc == BT_OK) rc = bt_h5_read(f, name, BT_H5_F64, 1, &step, *p);
    }
    if (rc) goto out;
    hist.n = hist.cap = step;

    /* everything read and checked: now the trainer changes */
    for (int k = 0; k < 2 && rc == BT_OK; k++) {
        if (!sets[k]) continue;
        size_t bytes = (size_t)t->nblock[k] * sizeof(float);
        if (!(rc = nn_upload(t->model->ctx, sets[k]->params.mem, stage[k][0], bytes)) &&
            !(rc = nn_upload(t->model->ctx, t->m[k], stage[k][1], bytes)))
            rc = nn_upload(t->model->ctx, t->v[k], stage[k][2], bytes);
    }
    if (rc) goto out;
    t->step = step;
    if (h) {
        sd_history_free(h);
        *h = hist;
        memset(&hist, 0, sizeof hist);
    }
out:
    for (int k = 0; k < 2; k++)
        for (int j = 0; j < 3; j++) free(stage[k][j]);
    sd_history_free(&hist);
    bt_h5_free_names(names, nnames);
    free(job);
    free(hash);
    bt_h5_close(&f);
    return rc;
}

/* ---- the checkpoints of an output folder ---- */

/* N of "checkpoint-N.h5" (digits only), or -1. */
static int64_t s_ckpt_step(const char *name)
{
    if (strncmp(name, "checkpoint-", 11)) return -1;
    const char *p = name + 11;
    int64_t n = 0;
    int digits = 0;
    for (; *p >= '0' && *p <= '9' && digits < 18; p++, digits++) n = n * 10 + (*p - '0');
    return digits && !strcmp(p, ".h5") ? n : -1;
}

static int s_cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static int s_list_steps(const char *dir, int64_t **steps, int *n)
{
    *steps = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) {
        if (errno == ENOENT) return BT_OK;
        BT_ERROR("%s: cannot list: %s", dir, strerror(errno));
        return BT_EIO;
    }
    int cap = 0, rc = BT_OK;
    struct dirent *e;
    while ((e = readdir(d))) {
        int64_t s = s_ckpt_step(e->d_name);
        if (s < 0) continue;
        if (*n == cap) {
            cap = cap ? 2 * cap : 32;
            int64_t *p = realloc(*steps, (size_t)cap * sizeof *p);
            if (!p) {
                rc = BT_ENOMEM;
                break;
            }
            *steps = p;
        }
        (*steps)[(*n)++] = s;
    }
    closedir(d);
    if (*steps) qsort(*steps, (size_t)*n, sizeof **steps, s_cmp_i64);
    return rc;
}

int sd_checkpoint_latest(const char *dir, char *path, size_t len)
{
    int64_t *steps;
    int n, rc = s_list_steps(dir, &steps, &n);
    if (rc == BT_OK && n > 0)
        rc = snprintf(path, len, "%s/checkpoint-%lld.h5", dir, (long long)steps[n - 1]) < (int)len ? 1 : BT_EINVAL;
    free(steps);
    return rc;
}

int sd_checkpoint_prune(const char *dir, int keep)
{
    int64_t *steps;
    int n, rc = s_list_steps(dir, &steps, &n);
    char path[4096];
    for (int i = 0; rc == BT_OK && keep > 0 && i < n - keep; i++) {
        snprintf(path, sizeof path, "%s/checkpoint-%lld.h5", dir, (long long)steps[i]);
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
        const char *tmp = strstr(e->d_name, ".h5.tmp.");
        if (strncmp(e->d_name, "checkpoint-", 11) || !tmp) continue;
        long pid = strtol(tmp + 8, NULL, 10);
        if (pid <= 0 || pid == (long)getpid() || (kill((pid_t)pid, 0) == 0 || errno != ESRCH)) continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        unlink(path);
    }
    if (d) closedir(d);
    return rc;
}

/* ---- export ---- */

/* A LoRA set built from the checkpoint's tensors alone (no model): enough for
 * sd_lora_save, which needs names, shapes, rank, alpha and data. Its layers are
 * shape-only descriptors (in and out sizes from the A and B tensors, no weights):
 * nothing here runs a forward pass. */
typedef struct {
    sd_lora_set_t *set;
    sd_linear_t *shapes;
} s_detached_t;

static void s_detached_free(s_detached_t *d)
{
    sd_lora_destroy(&d->set);
    free(d->shapes);
    d->shapes = NULL;
}

static int s_detached_build(bt_h5_file_t *f, nn_ctx_t *ctx, st_lora_part_t part, char **names, int n, int64_t rank,
                            float alpha, s_detached_t *out)
{
    const char *path = bt_h5_path(f);
    int count = 0;
    st_lora_key_t k;
    for (int i = 0; i < n; i++)
        if (st_lora_parse_key(names[i], &k) && k.part == part) count++;
    if (count == 0) return BT_OK;
    if (count % 2) {
        BT_ERROR("%s: the %s LoRA has an odd number of tensors", path, st_lora_part_name(part));
        return BT_EFORMAT;
    }
    sd_lora_set_t *s = calloc(1, sizeof *s);
    if (!s) return BT_ENOMEM;
    out->set = s;
    s->part = part == ST_LORA_PART_TEXT ? SD_LORA_TEXT : SD_LORA_UNET;
    s->rank = rank;
    s->alpha = alpha;
    sd_params_init(&s->params, "lora");
    int na = count / 2;
    s->adapters = calloc((size_t)na, sizeof *s->adapters);
    s->layers = calloc((size_t)na, sizeof *s->layers);
    s->modules = calloc((size_t)na, sizeof *s->modules);
    out->shapes = calloc((size_t)na, sizeof *out->shapes);
    if (!s->adapters || !s->layers || !s->modules || !out->shapes) return BT_ENOMEM;
    int rc = BT_OK;
    for (int i = 0; i < n && rc == BT_OK; i++) {
        if (!st_lora_parse_key(names[i], &k)) {
            BT_ERROR("%s: 'lora/%s' is not a LoRA key", path, names[i]);
            return BT_EFORMAT;
        }
        if (k.part != part) continue;
        /* tensors come as A then B of each module, in model order */
        bool want_b = s->n < na && s->modules[s->n][0] != '\0';
        if (k.layout != ST_LORA_PEFT || k.role != (want_b ? ST_LORA_B : ST_LORA_A) ||
            (want_b && strcmp(k.module, s->modules[s->n]))) {
            BT_ERROR("%s: 'lora/%s' is out of order (expected the %s of each module, A then B)", path, names[i],
                     st_lora_part_name(part));
            return BT_EFORMAT;
        }
        char name[2 * ST_LORA_NAME_MAX];
        bt_h5_info_t info;
        snprintf(name, sizeof name, "lora/%s", names[i]);
        if ((rc = bt_h5_info(f, name, &info))) return rc;
        if (info.ndim != 2 || info.shape[want_b ? 1 : 0] != rank || info.shape[0] < 1 || info.shape[1] < 1 ||
            info.shape[0] > 16384 || info.shape[1] > 16384) {
            BT_ERROR("%s: '%s' has %d dims [%lld, ...], expected a %s of rank %lld", path, name, info.ndim,
                     (long long)(info.ndim ? info.shape[0] : 0), want_b ? "B [out, rank]" : "A [rank, in]",
                     (long long)rank);
            return BT_ESHAPE;
        }
        if (strlen(k.module) >= SD_NAME_MAX) {
            BT_ERROR("%s: '%s': module name too long", path, name);
            return BT_EFORMAT;
        }
        if (!want_b) memcpy(s->modules[s->n], k.module, strlen(k.module) + 1);
        sd_params_add(&s->params, NULL, SD_INIT_ZERO, 0, 2, info.shape, "%s.lora_%s.weight", k.module,
                      want_b ? "B" : "A");
        if (want_b) {
            sd_linear_t *l = &out->shapes[s->n];
            l->in = s->params.p[s->params.n - 2].shape[1];
            l->out = info.shape[0];
            s->layers[s->n] = l;
            s->adapters[s->n] = (sd_lora_t){.rank = rank, .alpha = alpha, .scale = 1.0f};
            s->n++;
        }
    }
    if (s->n != na) {
        BT_ERROR("%s: the %s LoRA tensors do not pair up as A and B", path, st_lora_part_name(part));
        return BT_EFORMAT;
    }
    if ((rc = sd_lora_alloc(s, ctx, false))) return rc;
    for (int i = 0; i < s->params.n && rc == BT_OK; i++) {
        char name[2 * ST_LORA_NAME_MAX + 8], key[2 * ST_LORA_NAME_MAX];
        st_lora_key(key, sizeof key, ST_LORA_PEFT, part, i % 2 ? ST_LORA_B : ST_LORA_A, s->modules[i / 2]);
        snprintf(name, sizeof name, "lora/%s", key);
        rc = bt_h5_read(f, name, BT_H5_F32, 2, s->params.p[i].shape, s->params.p[i].data);
    }
    return rc;
}

int sd_checkpoint_export(const char *ckpt, const char *out, st_lora_layout_t layout, st_dtype_t dtype)
{
    bt_h5_file_t *f = sd_booth_h5_open(ckpt, SD_CKPT_FORMAT, NULL, NULL);
    if (!f) return BT_EFORMAT;
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 1);
    char **names = NULL, *model = NULL;
    int n = 0;
    int64_t rank = 0;
    double alpha = 0;
    s_detached_t sets[2] = {{0}};
    int rc = ctx ? BT_OK : BT_ENOMEM;
    if (rc == BT_OK) rc = bt_h5_attr_i64(f, "lora", "rank", &rank);
    if (rc == BT_OK) rc = bt_h5_attr_f64(f, "lora", "alpha", &alpha);
    if (rc == BT_OK) rc = bt_h5_attr_str(f, "/", "base_model", &model);
    if (rc == BT_OK && (rank < 1 || rank > 4096 || !(alpha > 0))) {
        BT_ERROR("%s: LoRA rank %lld / alpha %g are not valid", ckpt, (long long)rank, alpha);
        rc = BT_EFORMAT;
    }
    if (rc == BT_OK) rc = bt_h5_list(f, "lora", &names, &n);
    for (int p = 0; p < 2 && rc == BT_OK; p++)
        rc = s_detached_build(f, ctx, p ? ST_LORA_PART_TEXT : ST_LORA_PART_UNET, names, n, rank, (float)alpha,
                              &sets[p]);
    if (rc == BT_OK && !sets[0].set && !sets[1].set) {
        BT_ERROR("%s: the checkpoint has no LoRA tensors", ckpt);
        rc = BT_EFORMAT;
    }
    if (rc == BT_OK) {
        const char *meta[] = {"booth.base_model", model, NULL};
        rc = sd_lora_save(out, layout, dtype, sets[0].set, sets[1].set, meta);
    }
    for (int p = 0; p < 2; p++) s_detached_free(&sets[p]);
    bt_h5_free_names(names, n);
    free(model);
    bt_h5_close(&f);
    nn_ctx_destroy(&ctx);
    return rc;
}
