/*
 * dataset.c — instance and class image sets: listing, preprocessing, VAE
 * encoding, reading prior-set files; generating missing class images.
 */
#include "diffusion/dataset.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "common/alloc.h"
#include "common/fileio.h"
#include "common/image.h"
#include "common/log.h"
#include "common/rng.h"
#include "common/status.h"
#include "diffusion/layout.h"
#include "diffusion/model_hash.h"
#include "diffusion/priors.h"
#include "nn/memory.h"
#include "storage/h5_images.h"
#include "storage/imageio.h"
#include "storage/png.h"

static bool s_is_image(const char *name)
{
    const char *dot = strrchr(name, '.');
    return dot && name[0] != '.' &&
           (!strcasecmp(dot, ".jpg") || !strcasecmp(dot, ".jpeg") || !strcasecmp(dot, ".png"));
}

static int s_cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

void sd_free_paths(char **paths)
{
    for (char **p = paths; p && *p; p++) free(*p);
    free(paths);
}

int sd_list_images(const char *dir, char ***out)
{
    *out = NULL;
    DIR *d = opendir(dir);
    if (!d) {
        BT_ERROR("%s: cannot open the image folder: %s", dir, strerror(errno));
        return errno == ENOENT ? BT_ENOTFOUND : BT_EIO;
    }
    int n = 0, cap = 16;
    char **paths = bt_malloc((size_t)(cap + 1) * sizeof *paths);
    struct dirent *e;
    bool oom = !paths;
    while (!oom && (e = readdir(d))) {
        if (!s_is_image(e->d_name)) continue;
        if (n == cap) {
            char **p = bt_realloc(paths, (size_t)(2 * cap + 1) * sizeof *paths);
            if (!(oom = !p)) {
                paths = p;
                cap *= 2;
            }
        }
        size_t len = strlen(dir) + strlen(e->d_name) + 2;
        if (oom || (oom = !(paths[n] = bt_malloc(len)))) break;
        snprintf(paths[n], len, "%s/%s", dir, e->d_name);
        struct stat st; /* only regular files are images: a FIFO named a.png would block the read forever */
        if (stat(paths[n], &st) != 0 || !S_ISREG(st.st_mode)) {
            BT_WARN("%s: not a regular file; skipped", paths[n]);
            free(paths[n]);
            continue;
        }
        n++;
    }
    closedir(d);
    if (oom) {
        BT_ERROR("%s: out of memory listing the images", dir);
        for (int i = 0; paths && i < n; i++) free(paths[i]);
        free(paths);
        return BT_ENOMEM;
    }
    paths[n] = NULL;
    qsort(paths, (size_t)n, sizeof *paths, s_cmp_str);
    *out = paths;
    return n;
}

void sd_image_set_free(sd_image_set_t *s)
{
    sd_free_paths(s->paths);
    free(s->mean);
    free(s->logvar);
    free(s->mean_f);
    free(s->logvar_f);
    free(s->pixels);
    free(s->gen_prompt);
    memset(s, 0, sizeof *s);
}

bool sd_is_prior_file(const char *path)
{
    size_t n = strlen(path);
    return n > 3 && !strcasecmp(path + n - 3, ".h5");
}

/* VAE posterior of a square RGB image into mean/logvar (host), through the
 * caller's host staging buffer and device buffers (of the model's scratch). */
static int s_encode_img(sd_model_t *m, const bt_img_t *img, float *host, float *d_img, float *d_mean, float *d_logvar,
                        float *mean, float *logvar, int64_t per)
{
    int64_t npix = 3 * (int64_t)img->width * img->height;
    sd_run_t r = {.nn = m->ctx, .scratch = &m->scratch};
    bt_img_to_f32_chw(img, host);
    int rc;
    if ((rc = nn_upload(m->ctx, d_img, host, (size_t)npix * sizeof(float))) ||
        (rc = sd_vae_encode(&r, m->vae, d_mean, d_logvar, d_img, 1, img->height, img->width)) ||
        (rc = nn_download(m->ctx, mean, d_mean, (size_t)per * sizeof(float))) ||
        (rc = nn_download(m->ctx, logvar, d_logvar, (size_t)per * sizeof(float))))
        return rc;
    return BT_OK;
}

int sd_encode_image(sd_model_t *m, const bt_img_t *img, float *mean, float *logvar)
{
    if (!m->vae || img->channels != 3 || img->width != img->height || img->width % 8) {
        BT_ERROR("encode: need a square RGB image with a side that is a multiple of 8 and a VAE");
        return BT_EINVAL;
    }
    int64_t res = img->width, lh = sd_vae_latent_size(m->vae, res), per = m->vae->cfg.latent_channels * lh * lh;
    bt_stack_mark_t mk = bt_stack_mark(&m->scratch);
    sd_run_t r = {.nn = m->ctx, .scratch = &m->scratch};
    float *d_img = sd_scratch(&r, 3 * res * res), *d_mean = sd_scratch(&r, per), *d_logvar = sd_scratch(&r, per);
    float *host = bt_malloc((size_t)(3 * res * res) * sizeof(float));
    int rc = d_img && d_mean && d_logvar && host
                 ? s_encode_img(m, img, host, d_img, d_mean, d_logvar, mean, logvar, per)
                 : BT_ENOMEM;
    free(host);
    bt_stack_reset(&m->scratch, mk);
    return rc;
}

/* A preprocessed (res x res RGB) image -> the set's slot i: its pixels, its
 * posterior and (with flips) its mirror's posterior. mean/logvar: a posterior
 * already known for the unmirrored image (NULL: encode it); mean_f/logvar_f
 * the same for the mirrored one. */
static int s_encode(sd_image_set_t *s, sd_model_t *m, int i, bt_img_t *sq, const float *mean, const float *logvar,
                    const float *mean_f, const float *logvar_f, float *d_img, float *d_mean, float *d_logvar)
{
    int64_t res = s->res, npix = 3 * res * res, per = s->C * s->h * s->w;
    memcpy(s->pixels + i * npix, sq->data, (size_t)npix);
    float *host = bt_malloc((size_t)npix * sizeof(float));
    int rc = host ? BT_OK : BT_ENOMEM;
    if (rc == BT_OK && mean) {
        memcpy(s->mean + i * per, mean, (size_t)per * sizeof(float));
        memcpy(s->logvar + i * per, logvar, (size_t)per * sizeof(float));
    } else if (rc == BT_OK) {
        rc = s_encode_img(m, sq, host, d_img, d_mean, d_logvar, s->mean + i * per, s->logvar + i * per, per);
    }
    if (rc == BT_OK && s->mean_f && mean_f) {
        memcpy(s->mean_f + i * per, mean_f, (size_t)per * sizeof(float));
        memcpy(s->logvar_f + i * per, logvar_f, (size_t)per * sizeof(float));
    } else if (rc == BT_OK && s->mean_f) {
        bt_img_flip_h(sq);
        rc = s_encode_img(m, sq, host, d_img, d_mean, d_logvar, s->mean_f + i * per, s->logvar_f + i * per, per);
    }
    free(host);
    return rc;
}

/* Sizes and buffers of a set of n images at resolution res. */
static int s_set_alloc(sd_image_set_t *s, sd_model_t *m, int n, int resolution, bool flips)
{
    s->n = n;
    s->res = resolution;
    s->C = m->vae->cfg.latent_channels;
    s->h = s->w = sd_vae_latent_size(m->vae, resolution);
    int64_t per = s->C * s->h * s->w;
    s->mean = bt_malloc((size_t)(n * per) * sizeof(float));
    s->logvar = bt_malloc((size_t)(n * per) * sizeof(float));
    s->pixels = bt_malloc((size_t)n * (size_t)resolution * (size_t)resolution * 3);
    if (flips) {
        s->mean_f = bt_malloc((size_t)(n * per) * sizeof(float));
        s->logvar_f = bt_malloc((size_t)(n * per) * sizeof(float));
    }
    return !s->mean || !s->logvar || !s->pixels || (flips && (!s->mean_f || !s->logvar_f)) ? BT_ENOMEM : BT_OK;
}

static int s_check_args(sd_model_t *m, int resolution)
{
    if (!m->vae) {
        BT_ERROR("%s: the VAE is not loaded", m->dir);
        return BT_EINVAL;
    }
    if (resolution < 8 || resolution % 8 || resolution > 4096) {
        BT_ERROR("resolution %d: must be a multiple of 8 in 8..4096", resolution);
        return BT_EINVAL;
    }
    return BT_OK;
}

/* An image-set group of a booth HDF5 file (a prior set's /prior; a checkpoint's or a job data
 * file's /instance and /prior) as an image set. A prior group's generation settings are read. */
static int s_load_h5(sd_image_set_t *s, sd_model_t *m, const char *path, const char *group, int resolution,
                     bool flips, int max, sd_progress_fn progress, void *user)
{
    st_h5_file_t *f = st_h5_open(path);
    if (!f) return BT_EFORMAT;
    st_h5_imgset_info_t info;
    char *vae_hash = NULL, *prompt = NULL;
    int64_t steps = 0;
    double guidance = 0;
    float *lat = NULL;
    bool prior = !strcmp(group, SD_H5_PRIOR);
    bt_img_t *img = NULL;
    int rc = st_h5_imgset_probe(f, group, &info);
    if (rc == BT_OK && info.n == 0) {
        BT_ERROR("%s: /%s has no images", path, group);
        rc = BT_ENOTFOUND;
    }
    /* the settings it was generated with (each missing one is one error line) */
    if (rc == BT_OK && prior) rc = st_h5_attr_str(f, group, SD_H5_SET_PROMPT, &prompt);
    if (rc == BT_OK && prior) rc = st_h5_attr_u64(f, group, SD_H5_PRIOR_SEED, &s->gen_seed);
    if (rc == BT_OK && prior) rc = st_h5_attr_i64(f, group, SD_H5_PRIOR_STEPS, &steps);
    if (rc == BT_OK && prior) rc = st_h5_attr_f64(f, group, SD_H5_PRIOR_GUIDANCE, &guidance);
    if (rc == BT_OK && st_h5_attr_exists(f, group, SD_H5_PRIOR_VAE_HASH))
        rc = st_h5_attr_str(f, group, SD_H5_PRIOR_VAE_HASH, &vae_hash);
    if (rc) goto out;
    int n = max > 0 && info.n > max ? max : (int)info.n;
    if ((rc = s_set_alloc(s, m, n, resolution, flips))) goto out;
    s->gen_prompt = prompt;
    prompt = NULL;
    s->gen_steps = (int)steps;
    s->gen_guidance = (float)guidance;
    /* stored latents are what an encode would give when the VAE and size are the same */
    char here[BT_HASH_HEX];
    bool reuse = vae_hash && info.lat_c == s->C && info.lat_h == s->h && info.lat_w == s->w &&
                 info.height == resolution && info.width == resolution &&
                 sd_model_hash(m->dir, SD_PART_VAE, here, NULL) == BT_OK && !strcmp(here, vae_hash);
    int64_t per = s->C * s->h * s->w;
    char dimg[128], dm[128], dl[128], dmf[128], dlf[128];
    snprintf(dimg, sizeof dimg, "%s/" SD_H5_IMAGES, group);
    snprintf(dm, sizeof dm, "%s/" SD_H5_LATENT_MEAN, group);
    snprintf(dl, sizeof dl, "%s/" SD_H5_LATENT_LOGVAR, group);
    snprintf(dmf, sizeof dmf, "%s/" SD_H5_LATENT_MEAN_FLIP, group);
    snprintf(dlf, sizeof dlf, "%s/" SD_H5_LATENT_LOGVAR_FLIP, group);
    bool reuse_flips = reuse && flips && st_h5_exists(f, dmf) && st_h5_exists(f, dlf);
    if (!(s->paths = bt_calloc((size_t)n + 1, sizeof *s->paths)) || !(lat = bt_malloc((size_t)(4 * per) * sizeof(float))) ||
        !(img = bt_img_new((int)info.width, (int)info.height, 3))) {
        rc = BT_ENOMEM;
        goto out;
    }
    bt_stack_mark_t mk = bt_stack_mark(&m->scratch);
    sd_run_t r = {.nn = m->ctx, .scratch = &m->scratch};
    float *d_img = sd_scratch(&r, 3 * (int64_t)resolution * resolution), *d_mean = sd_scratch(&r, per);
    float *d_logvar = sd_scratch(&r, per);
    if (!d_img || !d_mean || !d_logvar) rc = BT_ENOMEM;
    for (int i = 0; i < n && rc == BT_OK; i++) {
        size_t len = strlen(path) + 24;
        if (!(s->paths[i] = bt_malloc(len))) {
            rc = BT_ENOMEM;
            break;
        }
        snprintf(s->paths[i], len, "%s[%d]", path, i);
        if ((rc = st_h5_read_rows(f, dimg, ST_H5_U8, i, 1, img->data))) break;
        if (reuse && ((rc = st_h5_read_rows(f, dm, ST_H5_F32, i, 1, lat)) ||
                      (rc = st_h5_read_rows(f, dl, ST_H5_F32, i, 1, lat + per))))
            break;
        if (reuse_flips && ((rc = st_h5_read_rows(f, dmf, ST_H5_F32, i, 1, lat + 2 * per)) ||
                            (rc = st_h5_read_rows(f, dlf, ST_H5_F32, i, 1, lat + 3 * per))))
            break;
        bt_img_t *sq = bt_img_resize_shorter_side_and_center_crop(img, resolution, BT_IMG_BILINEAR);
        if (!sq) {
            rc = BT_ENOMEM;
            break;
        }
        rc = s_encode(s, m, i, sq, reuse ? lat : NULL, reuse ? lat + per : NULL, reuse_flips ? lat + 2 * per : NULL,
                      reuse_flips ? lat + 3 * per : NULL, d_img, d_mean, d_logvar);
        bt_img_destroy(&sq);
        if (progress) progress(user, i + 1, n, NULL);
    }
    bt_stack_reset(&m->scratch, mk);
out:
    if (rc) sd_image_set_free(s);
    bt_img_destroy(&img);
    free(lat);
    free(vae_hash);
    free(prompt);
    st_h5_close(&f);
    return rc;
}

int sd_image_set_load_h5(sd_image_set_t *s, sd_model_t *m, const char *path, const char *group, int resolution,
                         bool flips, int max, sd_progress_fn progress, void *user)
{
    memset(s, 0, sizeof *s);
    int rc = s_check_args(m, resolution);
    return rc ? rc : s_load_h5(s, m, path, group, resolution, flips, max, progress, user);
}

int sd_image_set_load(sd_image_set_t *s, sd_model_t *m, const char *dir, int resolution, bool flips, int max,
                      sd_progress_fn progress, void *user)
{
    return sd_image_set_load_crop(s, m, dir, resolution, flips, max, NULL, progress, user);
}

/* A photo as training sees it: shorter side to res, then the centre square, or with a crop key the
 * square at offsets drawn from (key, photo index) — torchvision's RandomCrop draws top in
 * [0, h - res] and left in [0, w - res] the same way, from its own generator. */
static bt_img_t *s_square(const char *path, const bt_img_t *img, int res, const uint64_t *crop_key, int i)
{
    if (img->width < res || img->height < res)
        BT_WARN("%s: %dx%d is smaller than the training resolution %d; upscaled (blurrier than a photo of "
                "%d px or more)",
                path, img->width, img->height, res, res);
    if (!crop_key) return bt_img_resize_shorter_side_and_center_crop(img, res, BT_IMG_BILINEAR);
    bt_img_t *big = bt_img_resize_shorter_side(img, res, BT_IMG_BILINEAR);
    if (!big) return NULL;
    int top = (int)bt_rng_below(*crop_key, 2 * (uint64_t)i, (uint64_t)(big->height - res + 1));
    int left = (int)bt_rng_below(*crop_key, 2 * (uint64_t)i + 1, (uint64_t)(big->width - res + 1));
    bt_img_t *sq = bt_img_crop(big, left, top, res, res);
    bt_img_destroy(&big);
    return sq;
}

int sd_image_set_load_crop(sd_image_set_t *s, sd_model_t *m, const char *dir, int resolution, bool flips, int max,
                           const uint64_t *crop_key, sd_progress_fn progress, void *user)
{
    memset(s, 0, sizeof *s);
    int rc = s_check_args(m, resolution);
    if (rc) return rc;
    if (sd_is_prior_file(dir)) return s_load_h5(s, m, dir, SD_H5_PRIOR, resolution, flips, max, progress, user);
    int n = sd_list_images(dir, &s->paths);
    if (n < 0) return n;
    if (n == 0) {
        BT_ERROR("%s: no JPEG or PNG images", dir);
        sd_image_set_free(s);
        return BT_ENOTFOUND;
    }
    if (max > 0 && n > max) {
        for (int i = max; i < n; i++) {
            free(s->paths[i]);
            s->paths[i] = NULL;
        }
        n = max;
    }
    rc = s_set_alloc(s, m, n, resolution, flips);
    int64_t per = s->C * s->h * s->w;
    bt_stack_mark_t mk = bt_stack_mark(&m->scratch);
    sd_run_t r = {.nn = m->ctx, .scratch = &m->scratch};
    float *d_img = sd_scratch(&r, 3 * (int64_t)resolution * resolution), *d_mean = sd_scratch(&r, per);
    float *d_logvar = sd_scratch(&r, per);
    if (!d_img || !d_mean || !d_logvar) rc = BT_ENOMEM;
    for (int i = 0; i < n && rc == BT_OK; i++) {
        bt_img_t *img = NULL, *sq = NULL;
        if ((rc = st_image_load_rgb(s->paths[i], &img))) break;
        sq = s_square(s->paths[i], img, resolution, crop_key, i);
        bt_img_destroy(&img);
        if (!sq) {
            BT_ERROR("%s: cannot resize to %d px", s->paths[i], resolution);
            rc = BT_ENOMEM;
            break;
        }
        rc = s_encode(s, m, i, sq, NULL, NULL, NULL, NULL, d_img, d_mean, d_logvar);
        bt_img_destroy(&sq);
        if (progress) progress(user, i + 1, n, NULL);
    }
    bt_stack_reset(&m->scratch, mk);
    if (rc) sd_image_set_free(s);
    return rc;
}

void sd_image_set_sample(const sd_image_set_t *s, const sd_model_t *m, int i, bool flip, uint64_t key,
                         float *latents)
{
    int64_t per = s->C * s->h * s->w;
    const float *mean = (flip && s->mean_f ? s->mean_f : s->mean) + i * per;
    const float *logvar = (flip && s->logvar_f ? s->logvar_f : s->logvar) + i * per;
    bt_rng_normal_fill(latents, per, key);
    float sf = m->vae->cfg.scaling_factor;
    for (int64_t k = 0; k < per; k++) latents[k] = (mean[k] + expf(0.5f * logvar[k]) * latents[k]) * sf;
}

int sd_class_images_ensure(sd_model_t *m, const char *dir, const char *prompt, int want, int resolution,
                           uint64_t seed, int steps, float guidance, sd_progress_fn progress, void *user)
{
    sd_prior_spec_t spec = {.prompt = prompt, .seed = seed, .steps = steps, .guidance = guidance,
                            .resolution = resolution};
    if (sd_is_prior_file(dir)) return sd_priors_ensure(m, dir, &spec, want, progress, user);
    int rc = bt_mkdirs(dir);
    if (rc) return rc;
    char **paths = NULL;
    int have = sd_list_images(dir, &paths);
    sd_free_paths(paths);
    if (have < 0) return have;
    if (have >= want) return 0;
    bt_img_t *im = bt_img_new(resolution, resolution, 3);
    if (!im) return BT_ENOMEM;
    int made = 0;
    /* indices from `have` on: a rerun after an interruption continues where it stopped */
    for (int i = have; i < want; i++) {
        if ((rc = sd_priors_generate(m, &spec, i, 1, im->data, NULL, NULL, NULL, NULL))) break;
        char path[4096], params[1024];
        snprintf(path, sizeof path, "%s/class-%05d.png", dir, i);
        snprintf(params, sizeof params, "%s\nSteps: %d, CFG scale: %g, Seed: %llu, Index: %d", prompt, steps, guidance,
                 (unsigned long long)seed, i);
        st_png_text_t text = {"parameters", params};
        if ((rc = st_png_write(path, im, &text, 1))) break;
        made++;
        if (progress) progress(user, i - have + 1, want - have, NULL);
    }
    bt_img_destroy(&im);
    return rc ? rc : made;
}
