/*
 * dataset.c — instance and class image sets: listing, preprocessing, VAE
 * encoding; generating missing class images.
 */
#include "diffusion/dataset.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/fileio.h"
#include "common/image.h"
#include "common/log.h"
#include "common/rng.h"
#include "common/status.h"
#include "nn/memory.h"
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
    char **paths = malloc((size_t)(cap + 1) * sizeof *paths);
    struct dirent *e;
    while (paths && (e = readdir(d))) {
        if (!s_is_image(e->d_name)) continue;
        if (n == cap) {
            char **p = realloc(paths, (size_t)(2 * cap + 1) * sizeof *paths);
            if (!p) break;
            paths = p;
            cap *= 2;
        }
        size_t len = strlen(dir) + strlen(e->d_name) + 2;
        if (!(paths[n] = malloc(len))) break;
        snprintf(paths[n++], len, "%s/%s", dir, e->d_name);
    }
    closedir(d);
    if (!paths) return BT_ENOMEM;
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
    memset(s, 0, sizeof *s);
}

/* One image -> posterior of it (and of its mirror) into the set's slot i. */
static int s_encode(sd_image_set_t *s, sd_model_t *m, int i, int resolution, float *d_img, float *d_mean,
                    float *d_logvar)
{
    bt_img_t *img = NULL, *sq = NULL;
    int rc = bt_image_load_rgb(s->paths[i], &img);
    if (rc) return rc;
    sq = bt_img_resize_shorter_side_and_center_crop(img, resolution, BT_IMG_BILINEAR);
    bt_img_destroy(&img);
    if (!sq) {
        BT_ERROR("%s: cannot resize to %d px", s->paths[i], resolution);
        return BT_ENOMEM;
    }
    int64_t npix = 3 * (int64_t)resolution * resolution, per = s->C * s->h * s->w;
    float *host = malloc((size_t)npix * sizeof(float));
    sd_run_t r = {.nn = m->ctx, .scratch = &m->scratch};
    for (int pass = 0; pass < (s->mean_f ? 2 : 1) && rc == BT_OK; pass++) {
        if (!host) {
            rc = BT_ENOMEM;
            break;
        }
        if (pass == 1) bt_img_flip_h(sq);
        bt_img_to_f32_chw(sq, host);
        float *mean = pass ? s->mean_f : s->mean, *logvar = pass ? s->logvar_f : s->logvar;
        if ((rc = nn_upload(m->ctx, d_img, host, (size_t)npix * sizeof(float))) ||
            (rc = sd_vae_encode(&r, m->vae, d_mean, d_logvar, d_img, 1, resolution, resolution)) ||
            (rc = nn_download(m->ctx, mean + i * per, d_mean, (size_t)per * sizeof(float))) ||
            (rc = nn_download(m->ctx, logvar + i * per, d_logvar, (size_t)per * sizeof(float))))
            break;
    }
    free(host);
    bt_img_destroy(&sq);
    return rc;
}

int sd_image_set_load(sd_image_set_t *s, sd_model_t *m, const char *dir, int resolution, bool flips, int max,
                      sd_progress_fn progress, void *user)
{
    memset(s, 0, sizeof *s);
    if (!m->vae) {
        BT_ERROR("%s: the VAE is not loaded", m->dir);
        return BT_EINVAL;
    }
    if (resolution < 8 || resolution % 8 || resolution > 4096) {
        BT_ERROR("resolution %d: must be a multiple of 8 in 8..4096", resolution);
        return BT_EINVAL;
    }
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
    s->n = n;
    s->C = m->vae->cfg.latent_channels;
    s->h = s->w = sd_vae_latent_size(m->vae, resolution);
    int64_t per = s->C * s->h * s->w;
    s->mean = malloc((size_t)(n * per) * sizeof(float));
    s->logvar = malloc((size_t)(n * per) * sizeof(float));
    if (flips) {
        s->mean_f = malloc((size_t)(n * per) * sizeof(float));
        s->logvar_f = malloc((size_t)(n * per) * sizeof(float));
    }
    int rc = BT_OK;
    bt_stack_mark_t mk = bt_stack_mark(&m->scratch);
    sd_run_t r = {.nn = m->ctx, .scratch = &m->scratch};
    float *d_img = sd_scratch(&r, 3 * (int64_t)resolution * resolution), *d_mean = sd_scratch(&r, per);
    float *d_logvar = sd_scratch(&r, per);
    if (!s->mean || !s->logvar || (flips && (!s->mean_f || !s->logvar_f)) || !d_img || !d_mean || !d_logvar)
        rc = BT_ENOMEM;
    for (int i = 0; i < n && rc == BT_OK; i++) {
        rc = s_encode(s, m, i, resolution, d_img, d_mean, d_logvar);
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
    int rc = bt_mkdirs(dir);
    if (rc) return rc;
    char **paths = NULL;
    int have = sd_list_images(dir, &paths);
    sd_free_paths(paths);
    if (have < 0) return have;
    if (have >= want) return 0;
    int64_t h = sd_vae_latent_size(m->vae, resolution), C = m->unet->cfg.in_channels, T = 77;
    int64_t cd = m->clip->cfg.hidden_size, npix = 3 * (int64_t)(h * 8) * (h * 8);
    float *embeds = nn_alloc(m->ctx, (size_t)(2 * T * cd) * sizeof(float));
    float *lat = malloc((size_t)(C * h * h) * sizeof(float)), *img = malloc((size_t)npix * sizeof(float));
    if (!embeds || !lat || !img) {
        rc = BT_ENOMEM;
        goto out;
    }
    if ((rc = sd_encode_prompt(m, embeds + T * cd, prompt, 0)) || (rc = sd_encode_prompt(m, embeds, "", 0))) goto out;
    sd_sample_params_t p = {.guidance = guidance, .steps = steps, .sampler = m->default_sampler, .seed = seed};
    int made = 0;
    /* indices from `have` on: a rerun after an interruption continues where it stopped */
    for (int i = have; i < want; i++) {
        p.first_index = i;
        if ((rc = sd_sample(m, &p, embeds + T * cd, embeds, T, lat, false, 1, h, h)) ||
            (rc = sd_decode(m, img, NULL, lat, 1, h, h)))
            goto out;
        bt_img_t *im = bt_img_from_f32_chw(img, 3, (int)(h * 8), (int)(h * 8), BT_IMG_RANGE_01);
        char path[4096], params[1024];
        snprintf(path, sizeof path, "%s/class-%05d.png", dir, i);
        snprintf(params, sizeof params, "%s\nSteps: %d, CFG scale: %g, Seed: %llu, Index: %d", prompt, steps, guidance,
                 (unsigned long long)seed, i);
        bt_png_text_t text = {"parameters", params};
        rc = im ? bt_png_write(path, im, &text, 1) : BT_ENOMEM;
        bt_img_destroy(&im);
        if (rc) goto out;
        made++;
        if (progress) progress(user, i - have + 1, want - have, NULL);
    }
    rc = made;
out:
    if (embeds) nn_free(m->ctx, embeds);
    free(lat);
    free(img);
    return rc;
}
