/*
 * inspect.c — `booth inspect FILE.h5`: what a checkpoint or a prior set holds,
 * without the model or the data folders.
 *
 * The summary names the job, the step and the loss history, lists every LoRA
 * and optimizer tensor with its shape and L2 norm, and describes the stored
 * image sets; --json prints the same for scripts; --images writes the stored
 * images as PNGs and --contact-sheet puts them on one grid. It names what it
 * reads through diffusion/layout.h, the writers' own spelling of the layout.
 *
 * `booth inspect DIR` describes a diffusers model folder instead: its architecture
 * from the configs, each part's weight files with parameter counts and dtypes, and
 * the content hash checkpoints and prior sets record (diffusion/model_hash.h).
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "cli/args.h"
#include "cli/cli.h"
#include "common/fileio.h"
#include "common/image.h"
#include "common/log.h"
#include "common/status.h"
#include "diffusion/checkpoint.h"
#include "diffusion/layout.h"
#include "diffusion/priors.h"
#include "storage/h5.h"
#include "storage/h5_images.h"
#include "storage/png.h"
#include "storage/safetensors.h"
#include "diffusion/config.h"
#include "diffusion/model_hash.h"
#include "diffusion/pipeline.h"
#include <sys/stat.h>

#define S_MAX_ROW (1ll << 22)    /* elements read at once to take a norm */
#define S_MAX_HISTORY (1ll << 24) /* steps of a loss history */
#define S_SHEET_MAX 256          /* images on a contact sheet */
#define S_THUMB 128              /* their largest side */
/* The /history columns shown: loss to grad_norm, not the steps' wall time. */
#define S_HIST_COLS (SD_H5_HIST_GRAD_NORM + 1)

typedef struct {
    st_h5_file_t *f;
    const char *path;
    char *format;
    int64_t version;
    bool ckpt;
} s_file_t;

/* ---- attributes ---- */

/* One attribute as a cJSON value (JSON-valued strings such as the job parsed). */
static cJSON *s_attr_json(st_h5_file_t *f, const char *obj, const char *key)
{
    st_h5_info_t info;
    if (st_h5_attr_info(f, obj, key, &info)) return NULL;
    if (info.dtype == ST_H5_STR) {
        char *v = NULL;
        if (st_h5_attr_str(f, obj, key, &v)) return NULL;
        cJSON *parsed = (v[0] == '{' || v[0] == '[') ? cJSON_Parse(v) : NULL;
        cJSON *r = parsed ? parsed : cJSON_CreateString(v);
        free(v);
        return r;
    }
    if (info.numel != 1) return cJSON_CreateString("(array)");
    char buf[64];
    if (info.dtype == ST_H5_U64) {
        uint64_t u;
        if (st_h5_attr_u64(f, obj, key, &u)) return NULL;
        snprintf(buf, sizeof buf, "%llu", (unsigned long long)u);
    } else if (info.dtype == ST_H5_F32 || info.dtype == ST_H5_F64) {
        double d;
        if (st_h5_attr_f64(f, obj, key, &d)) return NULL;
        if (!isfinite(d)) return cJSON_CreateNull();
        /* the shortest text that reads back as the stored value (float32 or double) */
        bool f32 = info.dtype == ST_H5_F32;
        for (int p = 1; p <= 17; p++) {
            snprintf(buf, sizeof buf, "%.*g", p, d);
            double back = strtod(buf, NULL);
            if (f32 ? (float)back == (float)d : back == d) break;
        }
    } else if (info.dtype != ST_H5_OTHER) {
        int64_t i;
        if (st_h5_attr_i64(f, obj, key, &i)) return NULL;
        snprintf(buf, sizeof buf, "%lld", (long long)i);
    } else {
        return cJSON_CreateString("(unsupported type)");
    }
    return cJSON_CreateRaw(buf);
}

/* Every attribute of obj as one JSON object. */
static cJSON *s_attrs_json(st_h5_file_t *f, const char *obj)
{
    char **names;
    int n;
    if (st_h5_attr_list(f, obj, &names, &n)) return NULL;
    cJSON *o = cJSON_CreateObject();
    for (int i = 0; o && i < n; i++) {
        cJSON *v = s_attr_json(f, obj, names[i]);
        if (!v || !cJSON_AddItemToObject(o, names[i], v)) {
            cJSON_Delete(v);
            cJSON_Delete(o);
            o = NULL;
        }
    }
    st_h5_free_names(names, n);
    return o;
}

/* An attribute as display text ("" if absent). */
static void s_attr_text(st_h5_file_t *f, const char *obj, const char *key, char *buf, size_t len)
{
    buf[0] = '\0';
    if (!st_h5_attr_exists(f, obj, key)) return;
    cJSON *v = s_attr_json(f, obj, key);
    if (!v) return;
    if (cJSON_IsString(v))
        snprintf(buf, len, "%s", v->valuestring);
    else {
        char *t = cJSON_PrintUnformatted(v);
        if (t) snprintf(buf, len, "%s", t);
        cJSON_free(t);
    }
    cJSON_Delete(v);
}

/* ---- tensors ---- */

typedef struct {
    char name[600];
    st_h5_info_t info;
    double norm;
} s_tensor_t;

static int s_tensors(st_h5_file_t *f, const char *group, s_tensor_t **out, int *n, int *cap, int64_t *params)
{
    if (!st_h5_is_group(f, group)) return BT_OK;
    char **names;
    int nn;
    int rc = st_h5_list(f, group, &names, &nn);
    double *buf = NULL;
    for (int i = 0; i < nn && rc == BT_OK; i++) {
        char name[600];
        snprintf(name, sizeof name, "%s/%s", group, names[i]);
        if (st_h5_is_group(f, name)) continue;
        if (*n == *cap) {
            int c = *cap ? 2 * *cap : 256;
            s_tensor_t *p = bt_realloc(*out, (size_t)c * sizeof *p);
            if (!p) {
                rc = BT_ENOMEM;
                break;
            }
            *out = p;
            *cap = c;
        }
        s_tensor_t *t = &(*out)[*n];
        snprintf(t->name, sizeof t->name, "%s", name);
        if ((rc = st_h5_info(f, name, &t->info))) break;
        t->norm = NAN;
        /* the norm, a slab of rows at a time: a file's claimed sizes never decide an allocation */
        int64_t row = 1;
        for (int d = 1; d < t->info.ndim; d++) row *= t->info.shape[d];
        if ((t->info.dtype == ST_H5_F32 || t->info.dtype == ST_H5_F64) && t->info.ndim >= 1 && row <= S_MAX_ROW) {
            int64_t per = row > 0 ? S_MAX_ROW / row : 1, rows = t->info.shape[0];
            if (!buf && !(buf = bt_malloc((size_t)S_MAX_ROW * sizeof *buf))) {
                rc = BT_ENOMEM;
                break;
            }
            double ss = 0;
            for (int64_t r = 0; r < rows && rc == BT_OK; r += per) {
                int64_t cnt = rows - r < per ? rows - r : per;
                rc = st_h5_read_rows(f, name, ST_H5_F64, r, cnt, buf);
                for (int64_t k = 0; rc == BT_OK && k < cnt * row; k++) ss += buf[k] * buf[k];
            }
            if (rc) break;
            t->norm = sqrt(ss);
        }
        if (!strcmp(group, SD_H5_LORA)) *params += t->info.numel;
        (*n)++;
    }
    free(buf);
    st_h5_free_names(names, nn);
    return rc;
}

static char *s_shape(const st_h5_info_t *i, char *buf, size_t len)
{
    size_t o = (size_t)snprintf(buf, len, "[");
    for (int d = 0; d < i->ndim && o < len; d++)
        o += (size_t)snprintf(buf + o, len - o, d ? ", %lld" : "%lld", (long long)i->shape[d]);
    if (o < len) snprintf(buf + o, len - o, "]");
    return buf;
}

/* ---- image sets ---- */

static const char *const s_sets[2] = {SD_H5_INSTANCE, SD_H5_PRIOR};

/* Reads image row i of group into a new image. */
static bt_img_t *s_image(st_h5_file_t *f, const char *group, const st_h5_imgset_info_t *info, int64_t i)
{
    bt_img_t *img = bt_img_new((int)info->width, (int)info->height, 3);
    char p[512];
    st_h5_imgset_path(p, sizeof p, group, SD_H5_IMAGES);
    if (img && st_h5_read_rows(f, p, ST_H5_U8, i, 1, img->data)) bt_img_destroy(&img);
    return img;
}

static int s_write_images(s_file_t *sf, const char *dir)
{
    int rc = bt_mkdirs(dir);
    for (int k = 0; k < 2 && rc == BT_OK; k++) {
        const char *g = s_sets[k];
        if (!st_h5_is_group(sf->f, g)) continue;
        st_h5_imgset_info_t info;
        if ((rc = st_h5_imgset_probe(sf->f, g, &info))) break;
        int64_t *index = bt_malloc((size_t)(info.n ? info.n : 1) * sizeof *index);
        char p[512], **prompts = NULL;
        uint64_t seed = 0;
        int64_t steps = 0;
        double guidance = 0;
        bool prior = k == 1 && st_h5_attr_exists(sf->f, g, SD_H5_PRIOR_STEPS);
        if (!index) rc = BT_ENOMEM;
        st_h5_imgset_path(p, sizeof p, g, SD_H5_IMAGE_INDEX);
        if (rc == BT_OK) rc = st_h5_read(sf->f, p, ST_H5_I64, 1, &info.n, index);
        st_h5_imgset_path(p, sizeof p, g, SD_H5_IMAGE_PROMPT);
        if (rc == BT_OK && info.has_prompt) rc = st_h5_read_strings(sf->f, p, info.n, &prompts);
        if (rc == BT_OK && prior) {
            rc = st_h5_attr_u64(sf->f, g, SD_H5_PRIOR_SEED, &seed);
            if (rc == BT_OK) rc = st_h5_attr_i64(sf->f, g, SD_H5_PRIOR_STEPS, &steps);
            if (rc == BT_OK) rc = st_h5_attr_f64(sf->f, g, SD_H5_PRIOR_GUIDANCE, &guidance);
        }
        for (int64_t i = 0; i < info.n && rc == BT_OK; i++) {
            bt_img_t *img = s_image(sf->f, g, &info, i);
            if (!img) {
                rc = BT_EFORMAT;
                break;
            }
            char path[4096], params[2048];
            snprintf(path, sizeof path, k ? "%s/prior-%05lld.png" : "%s/instance-%04lld.png", dir,
                     (long long)index[i]);
            if (prior)
                snprintf(params, sizeof params, "%s\nSteps: %lld, CFG scale: %g, Seed: %llu, Index: %lld",
                         prompts ? prompts[i] : "", (long long)steps, guidance, (unsigned long long)seed,
                         (long long)index[i]);
            else
                snprintf(params, sizeof params, "%s", prompts ? prompts[i] : "");
            st_png_text_t text = {"parameters", params};
            rc = st_png_write(path, img, &text, 1);
            bt_img_destroy(&img);
            if (rc == BT_OK) printf("%s\n", path);
        }
        st_h5_free_names(prompts, (int)info.n);
        free(index);
    }
    return rc;
}

static int s_contact_sheet(s_file_t *sf, const char *out)
{
    bt_img_t *tiles[S_SHEET_MAX] = {0};
    int n = 0, rc = BT_OK, total = 0;
    int64_t counts[2] = {0, 0};
    for (int k = 0; k < 2 && rc == BT_OK; k++) {
        const char *g = s_sets[k];
        if (!st_h5_is_group(sf->f, g)) continue;
        st_h5_imgset_info_t info;
        if ((rc = st_h5_imgset_probe(sf->f, g, &info))) break;
        counts[k] = info.n;
        total += (int)info.n;
        for (int64_t i = 0; i < info.n && n < S_SHEET_MAX && rc == BT_OK; i++) {
            bt_img_t *img = s_image(sf->f, g, &info, i);
            if (!img) {
                rc = BT_EFORMAT;
                break;
            }
            int side = img->width > img->height ? img->width : img->height;
            if (side > S_THUMB) {
                int w = (int)((int64_t)img->width * S_THUMB / side), h = (int)((int64_t)img->height * S_THUMB / side);
                bt_img_t *small = bt_img_resize(img, w > 0 ? w : 1, h > 0 ? h : 1, BT_IMG_BICUBIC);
                bt_img_destroy(&img);
                img = small;
            }
            if (!img) {
                rc = BT_ENOMEM;
                break;
            }
            /* tiles of a grid share one size: pad to the first tile's */
            if (n > 0 && (img->width != tiles[0]->width || img->height != tiles[0]->height)) {
                bt_img_t *fit = bt_img_crop(img, 0, 0, tiles[0]->width, tiles[0]->height);
                bt_img_destroy(&img);
                img = fit;
            }
            if (!img) {
                rc = BT_ENOMEM;
                break;
            }
            tiles[n++] = img;
        }
    }
    if (rc == BT_OK && n == 0) {
        BT_ERROR("%s: no stored images for a contact sheet", sf->path);
        rc = BT_ENOTFOUND;
    }
    if (rc == BT_OK) {
        char title[1024];
        const char *base = strrchr(sf->path, '/');
        int off = snprintf(title, sizeof title, "%s: ", base ? base + 1 : sf->path);
        if (counts[0]) off += snprintf(title + off, sizeof title - (size_t)off, "%lld instance", (long long)counts[0]);
        if (counts[1])
            off += snprintf(title + off, sizeof title - (size_t)off, "%s%lld prior", counts[0] ? " + " : "",
                            (long long)counts[1]);
        snprintf(title + off, sizeof title - (size_t)off, " images%s", total > n ? " (the first 256)" : "");
        int cols = 1;
        while (cols * cols < n) cols++;
        bt_img_grid_opts_t o = BT_IMG_GRID_OPTS_INIT;
        o.title = title;
        o.margin = 4;
        o.font_scale = 1;
        bt_img_t *grid = bt_img_grid((const bt_img_t *const *)tiles, (n + cols - 1) / cols, cols, &o);
        rc = grid ? st_png_write(out, grid, NULL, 0) : BT_ENOMEM;
        bt_img_destroy(&grid);
        if (rc == BT_OK) printf("%s\n", out);
    }
    for (int i = 0; i < n; i++) bt_img_destroy(&tiles[i]);
    return rc;
}

/* ---- the summary ---- */

static cJSON *s_set_json(st_h5_file_t *f, const char *g)
{
    st_h5_imgset_info_t info;
    if (st_h5_imgset_probe(f, g, &info)) return NULL;
    cJSON *o = s_attrs_json(f, g);
    if (!o) return NULL;
    cJSON_AddNumberToObject(o, "count", (double)info.n);
    cJSON_AddNumberToObject(o, "height", (double)info.height);
    cJSON_AddNumberToObject(o, "width", (double)info.width);
    if (info.lat_c) {
        int sh[3] = {(int)info.lat_c, (int)info.lat_h, (int)info.lat_w};
        cJSON_AddItemToObject(o, "latent_shape", cJSON_CreateIntArray(sh, 3));
        cJSON_AddBoolToObject(o, "mirrored_latents", info.has_flip);
    }
    const char *cols[2] = {SD_H5_IMAGE_PROMPT, SD_H5_IMAGE_SOURCE}; /* printed as "prompts", "sources" */
    bool has[2] = {info.has_prompt, info.has_source};
    for (int c = 0; c < 2; c++) {
        if (!has[c]) continue;
        char p[512], **v = NULL;
        st_h5_imgset_path(p, sizeof p, g, cols[c]);
        if (st_h5_read_strings(f, p, info.n, &v)) continue;
        char key[32];
        snprintf(key, sizeof key, "%ss", cols[c]);
        cJSON *a = cJSON_AddArrayToObject(o, key);
        for (int64_t i = 0; a && i < info.n; i++) cJSON_AddItemToArray(a, cJSON_CreateString(v[i]));
        st_h5_free_names(v, (int)info.n);
    }
    return o;
}

/* The first S_HIST_COLS columns of /history into cols (SD_H5_HIST_* order). */
static int s_history(st_h5_file_t *f, int64_t *n, double **cols)
{
    char name[64];
    st_h5_info_t info;
    *n = 0;
    snprintf(name, sizeof name, SD_H5_HISTORY "/%s", sd_h5_history_column(SD_H5_HIST_LOSS));
    if (!st_h5_exists(f, name)) return BT_OK;
    int rc = st_h5_info(f, name, &info);
    if (rc) return rc;
    if (info.ndim != 1 || info.numel > S_MAX_HISTORY) {
        BT_ERROR("%s: '%s' is not a 1-D array", st_h5_path(f), name);
        return BT_EFORMAT;
    }
    for (int c = 0; c < S_HIST_COLS && rc == BT_OK; c++) {
        if (!(cols[c] = bt_malloc((size_t)(info.numel ? info.numel : 1) * sizeof(double)))) return BT_ENOMEM;
        snprintf(name, sizeof name, SD_H5_HISTORY "/%s", sd_h5_history_column(c));
        rc = st_h5_read(f, name, ST_H5_F64, 1, &info.numel, cols[c]);
    }
    *n = info.numel;
    return rc;
}

static int s_print_json(s_file_t *sf, s_tensor_t *ts, int nt, int64_t nh, double **hist)
{
    cJSON *root = s_attrs_json(sf->f, SD_H5_ROOT);
    if (!root) return BT_ENOMEM;
    cJSON_AddStringToObject(root, "file", sf->path);
    /* the groups' attributes and the history under their names in the file */
    if (st_h5_is_group(sf->f, SD_H5_OPTIM))
        cJSON_AddItemToObject(root, SD_H5_OPTIM, s_attrs_json(sf->f, SD_H5_OPTIM));
    if (st_h5_is_group(sf->f, SD_H5_RNG)) cJSON_AddItemToObject(root, SD_H5_RNG, s_attrs_json(sf->f, SD_H5_RNG));
    if (nh) {
        cJSON *h = cJSON_AddObjectToObject(root, SD_H5_HISTORY);
        for (int c = 0; h && c < S_HIST_COLS; c++)
            cJSON_AddItemToObject(h, sd_h5_history_column(c), cJSON_CreateDoubleArray(hist[c], (int)nh));
    }
    cJSON *ta = cJSON_AddArrayToObject(root, "tensors");
    for (int i = 0; ta && i < nt; i++) {
        cJSON *t = cJSON_CreateObject();
        cJSON_AddStringToObject(t, "name", ts[i].name);
        cJSON_AddStringToObject(t, "dtype", st_h5_dtype_name(ts[i].info.dtype));
        cJSON *shape = cJSON_AddArrayToObject(t, "shape");
        for (int d = 0; shape && d < ts[i].info.ndim; d++)
            cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)ts[i].info.shape[d]));
        if (isfinite(ts[i].norm)) cJSON_AddNumberToObject(t, "norm", ts[i].norm);
        cJSON_AddItemToArray(ta, t);
    }
    for (int k = 0; k < 2; k++)
        if (st_h5_is_group(sf->f, s_sets[k])) {
            cJSON *s = s_set_json(sf->f, s_sets[k]);
            if (s) cJSON_AddItemToObject(root, s_sets[k], s);
        }
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    if (!text) return BT_ENOMEM;
    printf("%s\n", text);
    cJSON_free(text);
    return BT_OK;
}

static void s_print_hist_row(int64_t s, double **h)
{
    printf("  %6lld  %9.6f  %9.6f  %9.6f  %9.3g  %9.5f\n", (long long)(s + 1), h[SD_H5_HIST_LOSS][s],
           h[SD_H5_HIST_LOSS_INSTANCE][s], h[SD_H5_HIST_LOSS_PRIOR][s], h[SD_H5_HIST_LR][s],
           h[SD_H5_HIST_GRAD_NORM][s]);
}

static void s_print_human(s_file_t *sf, s_tensor_t *ts, int nt, int64_t nparams, int64_t nh, double **hist)
{
    st_h5_file_t *f = sf->f;
    char a[4096], b[1024], c[1024];
    printf("%s: %s, format version %lld\n", sf->path, sf->ckpt ? "booth training checkpoint" : "booth prior set",
           (long long)sf->version);
    if (sf->ckpt) {
        const char *root = SD_H5_ROOT;
        s_attr_text(f, root, SD_H5_CKPT_STEP, a, sizeof a);
        s_attr_text(f, root, SD_H5_CKPT_MAX_TRAIN_STEPS, b, sizeof b);
        printf("  step %s of %s\n", a, b);
        s_attr_text(f, root, SD_H5_CKPT_RANK, a, sizeof a);
        s_attr_text(f, root, SD_H5_CKPT_ALPHA, b, sizeof b);
        s_attr_text(f, root, SD_H5_CKPT_TARGETS, c, sizeof c);
        if (sd_checkpoint_is_full(f, sf->path) > 0) {
            static const char te[] = SD_H5_LORA "/text_encoder.";
            int nw = 0, nt_text = 0;
            for (int i = 0; i < nt; i++) {
                nw += !strncmp(ts[i].name, SD_H5_LORA "/", strlen(SD_H5_LORA) + 1);
                nt_text += !strncmp(ts[i].name, te, sizeof te - 1);
            }
            printf("  full fine-tuning: every UNet weight%s (%d tensors; `booth export --format model` writes the "
                   "model folder)\n",
                   nt_text ? " and every text-encoder weight" : "", nw);
        } else {
            printf("  LoRA rank %s, alpha %s, targets %s\n", a, b, c);
        }
        s_attr_text(f, root, SD_H5_CKPT_BASE_MODEL, a, sizeof a);
        s_attr_text(f, root, SD_H5_CKPT_BASE_MODEL_HASH, b, sizeof b);
        printf("  base model %s (content hash %s)\n", a, b);
        cJSON *job = s_attr_json(f, root, SD_H5_CKPT_JOB);
        if (cJSON_IsObject(job)) {
            printf("job:\n");
            const cJSON *e;
            cJSON_ArrayForEach(e, job)
            {
                char *v = cJSON_PrintUnformatted(e);
                printf("  %-30s %s\n", e->string, v ? v : "?");
                cJSON_free(v);
            }
        }
        cJSON_Delete(job);
        if (st_h5_is_group(f, SD_H5_OPTIM)) {
            const char *opt = SD_H5_OPTIM;
            char st[64], lr[64], sch[64], b1[64], b2[64], eps[64], wd[64];
            s_attr_text(f, opt, SD_H5_OPTIM_TYPE, a, sizeof a);
            s_attr_text(f, opt, SD_H5_OPTIM_STEP, st, sizeof st);
            s_attr_text(f, opt, SD_H5_OPTIM_LEARNING_RATE, lr, sizeof lr);
            s_attr_text(f, opt, SD_H5_OPTIM_LR_SCHEDULER, sch, sizeof sch);
            s_attr_text(f, opt, SD_H5_OPTIM_BETA1, b1, sizeof b1);
            s_attr_text(f, opt, SD_H5_OPTIM_BETA2, b2, sizeof b2);
            s_attr_text(f, opt, SD_H5_OPTIM_EPSILON, eps, sizeof eps);
            s_attr_text(f, opt, SD_H5_OPTIM_WEIGHT_DECAY, wd, sizeof wd);
            printf("optimizer: %s step %s, lr %s (%s), betas %s/%s, eps %s, weight decay %s\n", a, st, lr, sch, b1, b2,
                   eps, wd);
        }
    }
    if (nh) {
        const double *loss = hist[SD_H5_HIST_LOSS];
        int64_t best = 0;
        for (int64_t s = 1; s < nh; s++)
            if (loss[s] < loss[best]) best = s;
        printf("loss history (%lld step%s): first %.6f, last %.6f, lowest %.6f at step %lld\n", (long long)nh,
               CLI_PLURAL(nh), loss[0],
               loss[nh - 1], loss[best], (long long)(best + 1));
        printf("  %6s  %9s  %9s  %9s  %9s  %9s\n", "step", "loss", "instance", "prior", "lr", "grad_norm");
        for (int64_t s = 0; s < nh; s++) {
            if (nh > 25 && s == 5) {
                printf("  %6s\n", "...");
                s = nh - 15;
            }
            s_print_hist_row(s, hist);
        }
    }
    if (nt) {
        printf("tensors (%d; %lld LoRA parameters):\n", nt, (long long)nparams);
        for (int i = 0; i < nt; i++)
            printf("  %-90s %s %-12s norm %.6g\n", ts[i].name, st_h5_dtype_name(ts[i].info.dtype),
                   s_shape(&ts[i].info, a, sizeof a), ts[i].norm);
    }
    for (int k = 0; k < 2; k++) {
        const char *g = s_sets[k];
        st_h5_imgset_info_t info;
        if (!st_h5_is_group(f, g) || st_h5_imgset_probe(f, g, &info)) continue;
        s_attr_text(f, g, SD_H5_SET_PROMPT, a, sizeof a);
        printf("%s images: %lld at %lldx%lld px, prompt \"%s\"", k ? "prior" : "instance", (long long)info.n,
               (long long)info.width, (long long)info.height, a);
        if (info.lat_c)
            printf(", latents [%lld, %lld, %lld]%s", (long long)info.lat_c, (long long)info.lat_h,
                   (long long)info.lat_w, info.has_flip ? " (+ mirrored)" : "");
        printf("\n");
        if (k == 1 && st_h5_attr_exists(f, g, SD_H5_PRIOR_STEPS)) {
            char sd[64], stp[64], gd[64], smp[64];
            s_attr_text(f, g, SD_H5_PRIOR_SEED, sd, sizeof sd);
            s_attr_text(f, g, SD_H5_PRIOR_STEPS, stp, sizeof stp);
            s_attr_text(f, g, SD_H5_PRIOR_GUIDANCE, gd, sizeof gd);
            s_attr_text(f, g, SD_H5_PRIOR_SAMPLER, smp, sizeof smp);
            s_attr_text(f, g, SD_H5_PRIOR_BASE_MODEL_HASH, b, sizeof b);
            printf("  generated with seed %s, %s %s steps, guidance %s, base model hash %s\n", sd, smp, stp, gd, b);
        }
        char p[512], **src = NULL;
        st_h5_imgset_path(p, sizeof p, g, SD_H5_IMAGE_SOURCE);
        if (info.has_source && st_h5_read_strings(f, p, info.n, &src) == 0) {
            for (int64_t i = 0; i < info.n && i < 8; i++) printf("  %s\n", src[i]);
            if (info.n > 8) printf("  ... (%lld more)\n", (long long)(info.n - 8));
            st_h5_free_names(src, (int)info.n);
        }
    }
}

/* One part of a model folder: its weight files (from the hash manifest), parameters and dtypes. */
typedef struct {
    int64_t params;
    unsigned dtypes; /* bit per st_dtype_t */
    int files;
    char first[256];
} s_part_t;

static int s_part_weights(const char *dir, const char *manifest, const char *part, s_part_t *p)
{
    memset(p, 0, sizeof *p);
    size_t pl = strlen(part);
    for (const char *line = manifest; line && *line;) {
        const char *nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line) : strlen(line);
        /* "<16 hex>  <relative path>" */
        if (len > 18) {
            const char *rel = line + 18;
            size_t rl = len - 18;
            if (rl > pl + 13 && !strncmp(rel, part, pl) && rel[pl] == '/' &&
                !strncmp(rel + rl - 12, ".safetensors", 12)) {
                char path[4400];
                snprintf(path, sizeof path, "%s/%.*s", dir, (int)rl, rel);
                st_file_t *f = st_open(path);
                if (!f) return BT_EFORMAT;
                for (int i = 0; i < st_count(f); i++) {
                    const st_tensor_t *t = st_at(f, i);
                    p->params += st_numel(t);
                    p->dtypes |= 1u << t->dtype;
                }
                st_close(&f);
                if (!p->files++) snprintf(p->first, sizeof p->first, "%.*s", (int)rl, rel);
            }
        }
        line = nl ? nl + 1 : NULL;
    }
    return BT_OK;
}

static void s_dtypes(unsigned mask, char *buf, size_t cap)
{
    buf[0] = '\0';
    for (int d = 0; d < ST_DTYPE_COUNT; d++)
        if (mask & (1u << d)) {
            size_t n = strlen(buf);
            snprintf(buf + n, cap - n, "%s%s", n ? "+" : "", st_dtype_name((st_dtype_t)d));
        }
    if (!buf[0]) snprintf(buf, cap, "-");
}

static void s_count(int64_t n, char *buf, size_t cap)
{
    if (n >= 1000000000) snprintf(buf, cap, "%.2f B", (double)n / 1e9);
    else if (n >= 1000000) snprintf(buf, cap, "%.1f M", (double)n / 1e6);
    else if (n >= 1000) snprintf(buf, cap, "%.1f K", (double)n / 1e3);
    else snprintf(buf, cap, "%lld", (long long)n);
}

/* booth inspect DIR: a diffusers model folder. */
static int s_inspect_model(const char *dir, bool json)
{
    char hash[BT_HASH_HEX];
    char *manifest = NULL;
    if (sd_model_hash(dir, SD_PART_ALL, hash, &manifest)) return 1;
    char path[4200];
    sd_unet_config_t u;
    sd_vae_config_t v;
    sd_clip_config_t c;
    snprintf(path, sizeof path, "%s/unet/config.json", dir);
    bool hu = sd_unet_config_load(path, &u) == 0;
    snprintf(path, sizeof path, "%s/vae/config.json", dir);
    bool hv = sd_vae_config_load(path, &v) == 0;
    snprintf(path, sizeof path, "%s/text_encoder/config.json", dir);
    bool hc = sd_clip_config_load(path, &c) == 0;
    static const char *const parts[] = {"unet", "vae", "text_encoder"};
    s_part_t p[3];
    int rc = BT_OK;
    for (int k = 0; k < 3 && rc == BT_OK; k++) rc = s_part_weights(dir, manifest, parts[k], &p[k]);
    free(manifest);
    if (rc) return 1;
    int64_t scale = hv ? (int64_t)1 << (v.n_blocks > 0 ? v.n_blocks - 1 : 0) : 8;
    int64_t xattn = hu ? u.cross_attention_dim[0] : 0;
    const char *family = !hu ? "unknown (no unet/config.json)"
                         : xattn == 768 && (!hc || c.hidden_size == 768) ? "Stable Diffusion 1.x"
                         : xattn == 1024 && (!hc || c.hidden_size == 1024) ? "Stable Diffusion 2.x"
                                                                          : "a small or custom SD-style model";
    if (json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "path", dir);
        cJSON_AddStringToObject(o, "kind", "diffusers model folder");
        cJSON_AddStringToObject(o, "architecture", family);
        cJSON_AddStringToObject(o, "content_hash", hash);
        if (hu) {
            cJSON_AddNumberToObject(o, "native_resolution", (double)(u.sample_size * scale));
            cJSON_AddNumberToObject(o, "cross_attention_dim", (double)xattn);
        }
        cJSON *ps = cJSON_AddObjectToObject(o, "parts");
        for (int k = 0; k < 3; k++) {
            char dt[64];
            s_dtypes(p[k].dtypes, dt, sizeof dt);
            cJSON *q = cJSON_AddObjectToObject(ps, parts[k]);
            cJSON_AddNumberToObject(q, "parameters", (double)p[k].params);
            cJSON_AddStringToObject(q, "dtypes", dt);
            cJSON_AddNumberToObject(q, "files", p[k].files);
        }
        char *text = cJSON_PrintUnformatted(o);
        if (text) printf("%s\n", text);
        cJSON_free(text);
        cJSON_Delete(o);
        return text ? 0 : 1;
    }
    printf("%s: diffusers model folder, %s\n", dir, family);
    if (hu) {
        printf("  unet          %lld blocks of", (long long)u.n_blocks);
        for (int b = 0; b < u.n_blocks; b++) printf("%s%lld", b ? "/" : " ", (long long)u.block_out_channels[b]);
        printf(" channels, cross-attention %lld, %lld latents a side (native %lld px)\n", (long long)xattn,
               (long long)u.sample_size, (long long)(u.sample_size * scale));
    }
    if (hv)
        printf("  vae           %lld latent channels, downscale %lld, scaling factor %g\n", (long long)v.latent_channels,
               (long long)scale, (double)v.scaling_factor);
    if (hc)
        printf("  text_encoder  %lld layers, hidden %lld, %lld heads, %lld positions\n", (long long)c.num_layers,
               (long long)c.hidden_size, (long long)c.num_heads, (long long)c.max_positions);
    int64_t total = 0;
    for (int k = 0; k < 3; k++) {
        char n[32], dt[64];
        s_count(p[k].params, n, sizeof n);
        s_dtypes(p[k].dtypes, dt, sizeof dt);
        total += p[k].params;
        if (p[k].files)
            printf("  %-13s %s parameters, %s, %s%s\n", parts[k], n, dt, p[k].first,
                   p[k].files > 1 ? " (and more shards)" : "");
        else
            printf("  %-13s no weights\n", parts[k]);
    }
    char n[32];
    s_count(total, n, sizeof n);
    printf("  total         %s parameters\n", n);
    printf("  content hash  %s (what checkpoints and prior sets record as the base model)\n", hash);
    return 0;
}

int cmd_inspect(int argc, char **argv)
{
    bool json = false;
    const char *images = NULL, *sheet = NULL;
    const cli_opt_t opts[] = {
        CLI_OPT("--json", CLI_FLAG, &json, NULL, "print everything as one JSON object"),
        CLI_OPT("--images", CLI_STR, &images, "DIR", "write the stored images as PNGs into DIR"),
        CLI_OPT("--contact-sheet", CLI_STR, &sheet, "FILE.png", "all stored images (up to 256) on one grid"),
        CLI_END,
    };
    const cli_spec_t spec = {"inspect", "FILE.h5|MODEL_DIR [--json] [--images DIR] [--contact-sheet FILE.png]",
                             "Shows what a checkpoint (booth train --checkpointing-steps) or a prior set (booth\n"
                             "priors) holds: the job, the step, the loss history, every LoRA and optimizer tensor\n"
                             "with its shape and L2 norm, and the stored instance and prior images. Given a\n"
                             "diffusers model folder, describes it: architecture, parameters and dtypes of each\n"
                             "part, and its content hash.",
                             opts, 1, "FILE.h5|MODEL_DIR"};
    const char *pos[1];
    int npos, rc = cli_parse(&spec, argc, argv, pos, &npos);
    if (rc >= 0) return rc;
    if (npos != 1) {
        fprintf(stderr, "booth inspect: give one .h5 file or model folder (see --help)\n");
        return 2;
    }
    struct stat dst;
    if (stat(pos[0], &dst) == 0 && S_ISDIR(dst.st_mode)) {
        if (images || sheet) {
            fprintf(stderr, "booth inspect: --images and --contact-sheet are for .h5 files, not a model folder\n");
            return 2;
        }
        return s_inspect_model(pos[0], json);
    }
    s_file_t sf = {.path = pos[0]};
    if (!(sf.f = sd_booth_h5_open(sf.path, NULL, &sf.format, &sf.version))) return 1;
    sf.ckpt = !strcmp(sf.format, SD_CKPT_FORMAT);
    s_tensor_t *ts = NULL;
    int nt = 0, cap = 0;
    int64_t nparams = 0, nh = 0;
    double *hist[S_HIST_COLS] = {NULL};
    rc = s_tensors(sf.f, SD_H5_LORA, &ts, &nt, &cap, &nparams);
    if (rc == BT_OK) rc = s_tensors(sf.f, SD_H5_OPTIM_M, &ts, &nt, &cap, &nparams);
    if (rc == BT_OK) rc = s_tensors(sf.f, SD_H5_OPTIM_V, &ts, &nt, &cap, &nparams);
    if (rc == BT_OK) rc = s_history(sf.f, &nh, hist);
    for (int k = 0; k < 2 && rc == BT_OK; k++) { /* the sets must be readable for either output */
        st_h5_imgset_info_t info;
        if (st_h5_is_group(sf.f, s_sets[k])) rc = st_h5_imgset_probe(sf.f, s_sets[k], &info);
    }
    if (rc == BT_OK) {
        if (json)
            rc = s_print_json(&sf, ts, nt, nh, hist);
        else if (!images && !sheet)
            s_print_human(&sf, ts, nt, nparams, nh, hist);
    }
    if (rc == BT_OK && images) rc = s_write_images(&sf, images);
    if (rc == BT_OK && sheet) rc = s_contact_sheet(&sf, sheet);
    for (int c = 0; c < S_HIST_COLS; c++) free(hist[c]);
    free(ts);
    free(sf.format);
    st_h5_close(&sf.f);
    return rc ? 1 : 0;
}
