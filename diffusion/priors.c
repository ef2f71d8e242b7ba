/*
 * priors.c — generating prior-set images by index range, part files, and the
 * resumable assembly of a prior-set file. Every name in the file comes from
 * diffusion/layout.h.
 */
#include "diffusion/priors.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/fileio.h"
#include "common/image.h"
#include "common/log.h"
#include "common/status.h"
#include "diffusion/dataset.h"
#include "diffusion/model_hash.h"
#include "nn/memory.h"
#include "storage/h5_images.h"

int sd_priors_generate(sd_model_t *m, const sd_prior_spec_t *spec, int64_t first, int count, uint8_t *pixels,
                       float *mean, float *logvar, sd_progress_fn progress, void *user)
{
    int R = spec->resolution;
    if (!m->unet || !m->vae || !m->clip || !m->tok) {
        BT_ERROR("%s: generating prior images needs every part of the model", m->dir);
        return BT_EINVAL;
    }
    if (R < 8 || R % 8 || R > 4096 || spec->steps < 1 || first < 0 || count < 0 || !spec->prompt) {
        BT_ERROR("priors: resolution %d (a multiple of 8 up to 4096), steps %d (>= 1) or range %lld+%d is invalid", R,
                 spec->steps, (long long)first, count);
        return BT_EINVAL;
    }
    int64_t h = sd_vae_latent_size(m->vae, R), C = m->unet->cfg.in_channels, T = sd_prompt_tokens(m);
    if (h * sd_vae_scale(m->vae) != R) {
        BT_ERROR("%s: the VAE maps %d px to %lld latents; prior images need a resolution it divides", m->dir, R,
                 (long long)h);
        return BT_EINVAL;
    }
    int64_t cd = m->clip->cfg.hidden_size, npix = 3 * (int64_t)R * R;
    int64_t per = (int64_t)m->vae->cfg.latent_channels * h * h;
    float *embeds = nn_alloc(m->ctx, (size_t)(2 * T * cd) * sizeof(float));
    float *lat = bt_malloc((size_t)(C * h * h) * sizeof(float)), *img = bt_malloc((size_t)npix * sizeof(float));
    int rc = BT_OK;
    if (!embeds || !lat || !img) {
        rc = BT_ENOMEM;
        goto out;
    }
    if ((rc = sd_encode_prompt(m, embeds + T * cd, spec->prompt, 0)) || (rc = sd_encode_prompt(m, embeds, "", 0)))
        goto out;
    sd_sample_params_t p = {.guidance = spec->guidance, .steps = spec->steps, .sampler = m->default_sampler,
                            .seed = spec->seed};
    for (int k = 0; k < count; k++) {
        p.first_index = first + k; /* image i: noise stream (seed, i), whatever range it is in */
        if ((rc = sd_sample(m, &p, embeds + T * cd, embeds, T, lat, false, 1, h, h)) ||
            (rc = sd_decode(m, img, NULL, lat, 1, h, h)))
            goto out;
        bt_img_t *im = bt_img_from_f32_chw(img, 3, R, R, BT_IMG_RANGE_01);
        if (!im) {
            rc = BT_ENOMEM;
            goto out;
        }
        memcpy(pixels + k * npix, im->data, (size_t)npix);
        if (mean) rc = sd_encode_image(m, im, mean + k * per, logvar + k * per);
        bt_img_destroy(&im);
        if (rc) goto out;
        if (progress) progress(user, k + 1, count, NULL);
    }
out:
    if (embeds) nn_free(m->ctx, embeds);
    free(lat);
    free(img);
    return rc;
}

int sd_priors_write_attrs(st_h5_file_t *f, const char *group, const sd_prior_spec_t *spec, const char *sampler,
                          const char *model_dir, const char *model_hash, const char *vae_hash)
{
    int rc = st_h5_group(f, group, false);
    if (!rc) rc = st_h5_attr_set_str(f, group, SD_H5_SET_PROMPT, spec->prompt);
    if (!rc) rc = st_h5_attr_set_str(f, group, SD_H5_PRIOR_NEGATIVE_PROMPT, "");
    if (!rc) rc = st_h5_attr_set_u64(f, group, SD_H5_PRIOR_SEED, spec->seed);
    if (!rc) rc = st_h5_attr_set_i64(f, group, SD_H5_PRIOR_STEPS, spec->steps);
    if (!rc) rc = st_h5_attr_set_f32(f, group, SD_H5_PRIOR_GUIDANCE, spec->guidance);
    if (!rc) rc = st_h5_attr_set_i64(f, group, SD_H5_SET_RESOLUTION, spec->resolution);
    if (!rc) rc = st_h5_attr_set_str(f, group, SD_H5_PRIOR_SAMPLER, sampler);
    if (!rc && model_dir) rc = st_h5_attr_set_str(f, group, SD_H5_PRIOR_BASE_MODEL, model_dir);
    if (!rc && model_hash) rc = st_h5_attr_set_str(f, group, SD_H5_PRIOR_BASE_MODEL_HASH, model_hash);
    if (!rc && vae_hash) rc = st_h5_attr_set_str(f, group, SD_H5_PRIOR_VAE_HASH, vae_hash);
    const char *weights = spec->weights ? spec->weights : SD_H5_WEIGHTS_EXACT;
    if (!rc) rc = st_h5_attr_set_str(f, group, SD_H5_PRIOR_BASE_WEIGHTS, weights);
    return rc;
}

static int s_write_root(st_h5_file_t *f)
{
    int rc = st_h5_attr_set_str(f, SD_H5_ROOT, SD_H5_FORMAT, SD_PRIORS_FORMAT);
    return rc ? rc : st_h5_attr_set_i64(f, SD_H5_ROOT, SD_H5_FORMAT_VERSION, SD_PRIORS_FORMAT_VERSION);
}

/* Per-image seeds and prompts of n images (all the same). */
static int s_per_image(const sd_prior_spec_t *spec, int64_t n, uint64_t **seeds, const char ***prompts)
{
    *seeds = bt_malloc((size_t)(n ? n : 1) * sizeof **seeds);
    *prompts = bt_malloc((size_t)(n ? n : 1) * sizeof **prompts);
    if (!*seeds || !*prompts) return BT_ENOMEM;
    for (int64_t i = 0; i < n; i++) {
        (*seeds)[i] = spec->seed;
        (*prompts)[i] = spec->prompt;
    }
    return BT_OK;
}

int sd_prior_origin_of(sd_model_t *m, sd_prior_origin_t *o)
{
    memset(o, 0, sizeof *o);
    if (!m->vae) {
        BT_ERROR("%s: the VAE is not loaded", m->dir);
        return BT_EINVAL;
    }
    o->model_dir = m->dir;
    o->sampler = sd_sched_kind_name(m->default_sampler);
    o->latent_channels = m->vae->cfg.latent_channels;
    o->latent_scale = sd_vae_scale(m->vae);
    int rc = sd_model_hash(m->dir, SD_PART_ALL, o->model_hash, NULL);
    return rc ? rc : sd_model_hash(m->dir, SD_PART_VAE, o->vae_hash, NULL);
}

int64_t sd_prior_latent_side(const sd_prior_origin_t *o, int64_t resolution)
{
    return resolution / (o->latent_scale > 0 ? o->latent_scale : 8);
}

int sd_priors_part_write(const char *path, const sd_prior_spec_t *spec, const sd_prior_origin_t *origin, int64_t first,
                         int count, const uint8_t *pixels, const float *mean, const float *logvar)
{
    int64_t R = spec->resolution, h = sd_prior_latent_side(origin, R);
    int64_t *index = bt_malloc((size_t)(count ? count : 1) * sizeof *index);
    uint64_t *seeds = NULL;
    const char **prompts = NULL;
    st_h5_file_t *f = NULL;
    int rc = index ? s_per_image(spec, count, &seeds, &prompts) : BT_ENOMEM;
    if (rc) goto out;
    for (int i = 0; i < count; i++) index[i] = first + i;
    st_h5_imgset_t s = {.n = count, .height = R, .width = R, .lat_c = origin->latent_channels, .lat_h = h,
                        .lat_w = h, .images = pixels, .mean = mean, .logvar = logvar, .index = index, .seed = seeds,
                        .prompt = prompts};
    if (!(f = st_h5_create(path))) {
        rc = BT_EIO;
        goto out;
    }
    if ((rc = s_write_root(f)) ||
        (rc = sd_priors_write_attrs(f, SD_H5_PRIOR, spec, origin->sampler, origin->model_dir, origin->model_hash,
                                    origin->vae_hash)) ||
        (rc = st_h5_imgset_write(f, SD_H5_PRIOR, &s))) {
        st_h5_abort(&f);
        goto out;
    }
    rc = st_h5_commit(&f);
out:
    free(index);
    free(seeds);
    free(prompts);
    return rc;
}

int sd_priors_write_part(sd_model_t *m, const sd_prior_spec_t *spec_in, const sd_prior_origin_t *origin, int64_t first,
                         int count, const char *path)
{
    sd_prior_spec_t with = *spec_in, *spec = &with;
    if (!spec->weights) spec->weights = sd_model_weights(m);
    int64_t R = spec->resolution, h = sd_prior_latent_side(origin, R), per = origin->latent_channels * h * h;
    uint8_t *pixels = bt_malloc((size_t)(count * 3 * R * R));
    float *mean = bt_malloc((size_t)(count * per) * sizeof(float)),
          *logvar = bt_malloc((size_t)(count * per) * sizeof(float));
    int rc = pixels && mean && logvar ? BT_OK : BT_ENOMEM;
    if (rc == BT_OK) rc = sd_priors_generate(m, spec, first, count, pixels, mean, logvar, NULL, NULL);
    if (rc == BT_OK) rc = sd_priors_part_write(path, spec, origin, first, count, pixels, mean, logvar);
    free(pixels);
    free(mean);
    free(logvar);
    return rc;
}

/* ---- ensure: existing file + parts + missing indices -> one file ---- */

/* Does a prior-set file agree with the settings? One error line naming the first difference. */
static int s_check_settings(st_h5_file_t *f, const sd_prior_spec_t *spec, const char *sampler, const char *model_hash,
                            const char *what)
{
    char *fmt = NULL, *prompt = NULL, *smp = NULL, *hash = NULL, *weights = NULL;
    uint64_t seed = 0;
    int64_t steps = 0, res = 0;
    double guidance = 0;
    const char *path = st_h5_path(f), *g = SD_H5_PRIOR;
    int rc = st_h5_attr_str(f, SD_H5_ROOT, SD_H5_FORMAT, &fmt);
    if (rc == BT_OK && strcmp(fmt, SD_PRIORS_FORMAT)) {
        BT_ERROR("%s: a '%s' file, not a prior set (%s)", path, fmt, SD_PRIORS_FORMAT);
        rc = BT_EFORMAT;
    }
    if (rc == BT_OK && (rc = st_h5_attr_str(f, g, SD_H5_SET_PROMPT, &prompt)) == BT_OK &&
        (rc = st_h5_attr_u64(f, g, SD_H5_PRIOR_SEED, &seed)) == BT_OK &&
        (rc = st_h5_attr_i64(f, g, SD_H5_PRIOR_STEPS, &steps)) == BT_OK &&
        (rc = st_h5_attr_f64(f, g, SD_H5_PRIOR_GUIDANCE, &guidance)) == BT_OK &&
        (rc = st_h5_attr_i64(f, g, SD_H5_SET_RESOLUTION, &res)) == BT_OK &&
        (rc = st_h5_attr_str(f, g, SD_H5_PRIOR_SAMPLER, &smp)) == BT_OK &&
        (rc = st_h5_attr_str(f, g, SD_H5_PRIOR_BASE_MODEL_HASH, &hash)) == BT_OK &&
        (!st_h5_attr_exists(f, g, SD_H5_PRIOR_BASE_WEIGHTS) || /* older sets: exact */
         (rc = st_h5_attr_str(f, g, SD_H5_PRIOR_BASE_WEIGHTS, &weights)) == BT_OK)) {
        char a[300], b[300];
        const char *key = NULL, *have_w = weights ? weights : SD_H5_WEIGHTS_EXACT;
        const char *want_w = spec->weights ? spec->weights : SD_H5_WEIGHTS_EXACT;
        if (strcmp(prompt, spec->prompt)) {
            key = "--class-prompt";
            snprintf(a, sizeof a, "\"%s\"", prompt);
            snprintf(b, sizeof b, "\"%s\"", spec->prompt);
        } else if (seed != spec->seed) {
            key = "--seed";
            snprintf(a, sizeof a, "%llu", (unsigned long long)seed);
            snprintf(b, sizeof b, "%llu", (unsigned long long)spec->seed);
        } else if (steps != spec->steps) {
            key = "--steps";
            snprintf(a, sizeof a, "%lld", (long long)steps);
            snprintf(b, sizeof b, "%d", spec->steps);
        } else if ((float)guidance != spec->guidance) {
            key = "--guidance";
            snprintf(a, sizeof a, "%g", guidance);
            snprintf(b, sizeof b, "%g", spec->guidance);
        } else if (res != spec->resolution) {
            key = "--resolution";
            snprintf(a, sizeof a, "%lld", (long long)res);
            snprintf(b, sizeof b, "%d", spec->resolution);
        } else if (strcmp(smp, sampler)) {
            key = "sampler";
            snprintf(a, sizeof a, "%s", smp);
            snprintf(b, sizeof b, "%s", sampler);
        } else if (strcmp(hash, model_hash)) {
            key = "base model hash";
            snprintf(a, sizeof a, "%s", hash);
            snprintf(b, sizeof b, "%s", model_hash);
        } else if (strcmp(have_w, want_w)) {
            key = "--base-dtype (weights)";
            snprintf(a, sizeof a, "%s", have_w);
            snprintf(b, sizeof b, "%s", want_w);
        }
        if (key) {
            BT_ERROR("%s: %s was made with %s %s, this run asks for %s; use another file or the same settings", path,
                     what, key, a, b);
            rc = BT_EINVAL;
        }
    }
    free(fmt);
    free(prompt);
    free(smp);
    free(hash);
    free(weights);
    return rc;
}

/* Where output row i comes from: file `file` (0: the existing prior set, k > 0:
 * part k - 1), row `row`. */
typedef struct {
    int file;
    int64_t row;
} s_src_t;

/* Files each usable source row of f under its index (only indices < want, first source wins). */
static int s_map_rows(st_h5_file_t *f, int file, int64_t want, s_src_t *src, int64_t *n_rows)
{
    st_h5_imgset_info_t info;
    int rc = st_h5_imgset_probe(f, SD_H5_PRIOR, &info);
    if (rc) return rc;
    if (info.lat_c == 0) {
        BT_ERROR("%s: the prior set has no latents", st_h5_path(f));
        return BT_EFORMAT;
    }
    int64_t *idx = bt_malloc((size_t)(info.n ? info.n : 1) * sizeof *idx);
    if (!idx) return BT_ENOMEM;
    rc = st_h5_read(f, SD_H5_PRIOR "/" SD_H5_IMAGE_INDEX, ST_H5_I64, 1, &info.n, idx);
    for (int64_t r = 0; r < info.n && rc == BT_OK; r++)
        if (idx[r] >= 0 && idx[r] < want && src[idx[r]].file < 0) src[idx[r]] = (s_src_t){file, r};
    free(idx);
    *n_rows = info.n;
    return rc;
}

static bool s_is_part(const char *name, void *user)
{
    (void)user;
    size_t len = strlen(name), pl = strlen(SD_H5_PART_PREFIX), el = strlen(SD_H5_EXT);
    return !strncmp(name, SD_H5_PART_PREFIX, pl) && len >= pl + 1 + el && !strcmp(name + len - el, SD_H5_EXT);
}

/* part-*.h5 files of dir, sorted, as paths (none if dir does not exist). */
static int s_list_parts(const char *dir, char ***out, int *n) { return bt_list_dir(dir, s_is_part, NULL, true, out, n); }

/* Deletes the parts whose images the complete file now holds (every index
 * below `have`) and the temporaries of part writers that were killed; parts
 * with later indices stay for a later, larger run. The folder goes when empty. */
static void s_remove_parts(const char *dir, int64_t have)
{
    char **parts;
    int n;
    if (s_list_parts(dir, &parts, &n)) return;
    for (int i = 0; i < n; i++) {
        st_h5_file_t *f = st_h5_open(parts[i]);
        st_h5_info_t info;
        int64_t *idx = NULL;
        const char *ipath = SD_H5_PRIOR "/" SD_H5_IMAGE_INDEX;
        bool redundant = f && st_h5_info(f, ipath, &info) == BT_OK && info.ndim == 1 &&
                         info.numel <= ST_H5_IMAGES_MAX && (idx = bt_malloc((size_t)(info.numel + 1) * sizeof *idx)) &&
                         st_h5_read(f, ipath, ST_H5_I64, 1, info.shape, idx) == BT_OK;
        for (int64_t k = 0; redundant && k < info.numel; k++) redundant = idx[k] >= 0 && idx[k] < have;
        free(idx);
        st_h5_close(&f);
        if (redundant) unlink(parts[i]);
    }
    st_h5_free_names(parts, n);
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        const char *tmp = strstr(e->d_name, SD_H5_EXT ".tmp."); /* storage/h5.h's temporary name */
        if (!tmp) continue;
        char p[4096];
        snprintf(p, sizeof p, "%s/%.*s", dir, (int)(tmp + strlen(SD_H5_EXT) - e->d_name), e->d_name);
        st_h5_remove_stale_temps(p);
    }
    if (d) closedir(d);
    rmdir(dir); /* fails, harmlessly, while parts remain */
}

typedef struct {
    sd_progress_fn fn;
    void *user;
    int done, total;
} s_prog_t;

/* Writes the complete file from the sources, rows in index order. */
static int s_assemble(const char *path, const sd_prior_spec_t *spec, const sd_prior_origin_t *origin, int64_t want,
                      const s_src_t *src, char **parts)
{
    int64_t R = spec->resolution, h = sd_prior_latent_side(origin, R), C = origin->latent_channels, per = C * h * h,
            npix = 3 * R * R;
    uint8_t *img = bt_malloc((size_t)npix);
    float *lat = bt_malloc((size_t)(2 * per) * sizeof(float));
    uint64_t *seeds = NULL;
    const char **prompts = NULL;
    st_h5_file_t *out = NULL, *in = NULL;
    int open_file = -1;
    bt_xxh64_t content; /* of all the images, in order: lets a checkpoint copy them instead of compressing */
    bt_xxh64_init(&content, 0);
    int rc = img && lat ? s_per_image(spec, want, &seeds, &prompts) : BT_ENOMEM;
    if (rc) goto out;
    st_h5_imgset_t s = {.n = want, .height = R, .width = R, .lat_c = C, .lat_h = h, .lat_w = h, .seed = seeds,
                        .prompt = prompts};
    if (!(out = st_h5_create(path))) {
        rc = BT_EIO;
        goto out;
    }
    if ((rc = s_write_root(out)) ||
        (rc = sd_priors_write_attrs(out, SD_H5_PRIOR, spec, origin->sampler, origin->model_dir,
                                    origin->model_hash, origin->vae_hash)) ||
        (rc = st_h5_imgset_begin(out, SD_H5_PRIOR, &s)))
        goto out;
    for (int64_t i = 0; i < want && rc == BT_OK; i++) {
        if (src[i].file != open_file) {
            st_h5_close(&in);
            open_file = src[i].file;
            if (!(in = st_h5_open(open_file ? parts[open_file - 1] : path))) {
                rc = BT_EFORMAT;
                break;
            }
        }
        int64_t r = src[i].row;
        if ((rc = st_h5_read_rows(in, SD_H5_PRIOR "/" SD_H5_IMAGES, ST_H5_U8, r, 1, img)) ||
            (rc = st_h5_read_rows(in, SD_H5_PRIOR "/" SD_H5_LATENT_MEAN, ST_H5_F32, r, 1, lat)) ||
            (rc = st_h5_read_rows(in, SD_H5_PRIOR "/" SD_H5_LATENT_LOGVAR, ST_H5_F32, r, 1, lat + per)))
            break;
        bt_xxh64_update(&content, img, (size_t)npix);
        rc = st_h5_imgset_put(out, SD_H5_PRIOR, i, 1, img, lat, lat + per, NULL, NULL);
    }
    st_h5_close(&in);
    char hex[BT_HASH_HEX];
    bt_hash_hex(bt_xxh64_digest(&content), hex);
    if (rc == BT_OK) rc = st_h5_imgset_end(out, SD_H5_PRIOR, &s);
    if (rc == BT_OK) rc = st_h5_attr_set_str(out, SD_H5_PRIOR, SD_H5_SET_CONTENT_HASH, hex);
    if (rc == BT_OK) rc = st_h5_commit(&out);
out:
    st_h5_abort(&out);
    free(img);
    free(lat);
    free(seeds);
    free(prompts);
    return rc;
}

/* The sources of every index below want: the existing file, then its parts; *complete when the file alone has them. */
static int s_sources(const char *path, const sd_prior_spec_t *spec, const sd_prior_origin_t *origin, int want,
                     s_src_t *src, char ***parts, int *nparts, bool *complete)
{
    char parts_dir[4096];
    int rc = BT_OK;
    *parts = NULL;
    *nparts = 0;
    *complete = false;
    if (sd_priors_parts_dir(parts_dir, sizeof parts_dir, path)) return BT_EINVAL;
    for (int i = 0; i < want; i++) src[i] = (s_src_t){-1, 0};
    st_h5_remove_stale_temps(path); /* a killed run's unfinished final file */
    if (access(path, F_OK) == 0) {
        st_h5_file_t *f = st_h5_open(path);
        int64_t have = 0;
        if (!f) return BT_EFORMAT;
        rc = s_check_settings(f, spec, origin->sampler, origin->model_hash, "the prior set");
        if (rc == BT_OK) rc = s_map_rows(f, 0, want, src, &have);
        st_h5_close(&f);
        if (rc) return rc;
        if (have >= want) { /* complete: leftovers of an interrupted clean-up go */
            s_remove_parts(parts_dir, have);
            *complete = true;
            return BT_OK;
        }
    }
    if ((rc = s_list_parts(parts_dir, parts, nparts))) return rc;
    for (int k = 0; k < *nparts; k++) {
        st_h5_file_t *f = st_h5_open((*parts)[k]);
        int64_t n;
        if (!f) { /* parts are written atomically: this one was damaged afterwards */
            BT_WARN("%s: unreadable part; its images are generated again", (*parts)[k]);
            unlink((*parts)[k]);
            continue;
        }
        rc = s_check_settings(f, spec, origin->sampler, origin->model_hash, "this part of an interrupted run");
        if (rc == BT_OK) rc = s_map_rows(f, k + 1, want, src, &n);
        st_h5_close(&f);
        if (rc) return rc;
    }
    return BT_OK;
}

int sd_priors_missing(const char *path, const sd_prior_spec_t *spec, const sd_prior_origin_t *origin, int want,
                      int *missing, int *n)
{
    *n = 0;
    if (want < 1) {
        BT_ERROR("%s: a prior set needs at least one image", path);
        return BT_EINVAL;
    }
    s_src_t *src = bt_malloc((size_t)want * sizeof *src);
    char **parts = NULL;
    int nparts = 0;
    bool complete;
    if (!src) return BT_ENOMEM;
    int rc = s_sources(path, spec, origin, want, src, &parts, &nparts, &complete);
    for (int i = 0; i < want && rc == BT_OK; i++)
        if (src[i].file < 0) missing[(*n)++] = i;
    st_h5_free_names(parts, nparts);
    free(src);
    return rc;
}

int sd_priors_assemble(const char *path, const sd_prior_spec_t *spec, const sd_prior_origin_t *origin, int want)
{
    char parts_dir[4096];
    s_src_t *src = bt_malloc((size_t)(want > 0 ? want : 1) * sizeof *src);
    char **parts = NULL;
    int nparts = 0;
    bool complete;
    if (!src) return BT_ENOMEM;
    sd_priors_parts_dir(parts_dir, sizeof parts_dir, path); /* s_sources refuses a path too long for it */
    int rc = s_sources(path, spec, origin, want, src, &parts, &nparts, &complete);
    for (int i = 0; i < want && rc == BT_OK; i++)
        if (src[i].file < 0) {
            BT_ERROR("%s: image %d is neither in the file nor in a part; cannot assemble", path, i);
            rc = BT_ENOTFOUND;
        }
    if (rc == BT_OK && !complete) rc = s_assemble(path, spec, origin, want, src, parts);
    if (rc == BT_OK && !complete) s_remove_parts(parts_dir, want);
    st_h5_free_names(parts, nparts);
    free(src);
    return rc;
}

int sd_priors_ensure(sd_model_t *m, const char *path, const sd_prior_spec_t *spec_in, int want,
                     sd_progress_fn progress, void *user)
{
    sd_prior_spec_t with = *spec_in, *spec = &with;
    if (!spec->weights) spec->weights = sd_model_weights(m);
    if (want < 1) {
        BT_ERROR("%s: a prior set needs at least one image", path);
        return BT_EINVAL;
    }
    sd_prior_origin_t origin;
    char parts_dir[4096];
    int rc = sd_prior_origin_of(m, &origin);
    if (rc) return rc;
    if (sd_priors_parts_dir(parts_dir, sizeof parts_dir, path)) return BT_EINVAL;
    int *missing = bt_malloc((size_t)want * sizeof *missing), nmissing = 0, made = 0;
    if (!missing) return BT_ENOMEM;
    if ((rc = sd_priors_missing(path, spec, &origin, want, missing, &nmissing))) goto out;
    if (nmissing && (rc = bt_mkdirs(parts_dir))) goto out;
    for (int k = 0; k < nmissing && rc == BT_OK; k++) {
        /* one image per part: an interruption loses at most the image in progress */
        char part[4200];
        if ((rc = sd_priors_part_path(part, sizeof part, path, missing[k])) ||
            (rc = sd_priors_write_part(m, spec, &origin, missing[k], 1, part)))
            break;
        made++;
        if (progress) progress(user, made, nmissing, NULL);
    }
    if (rc == BT_OK) rc = sd_priors_assemble(path, spec, &origin, want);
out:
    free(missing);
    return rc ? rc : made;
}
