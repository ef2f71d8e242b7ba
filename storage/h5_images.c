/* h5_images.c — image-set groups: writing them and checking their shapes agree. */
#include "storage/h5_images.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/status.h"

int st_h5_imgset_path(char *buf, size_t len, const char *group, const char *name)
{
    int n = snprintf(buf, len, "%s/%s", group, name);
    return n < 0 || (size_t)n >= len ? BT_EINVAL : BT_OK;
}

static const char *const s_lat_names[4] = {"latent_mean", "latent_logvar", "latent_mean_flip", "latent_logvar_flip"};

int st_h5_imgset_begin(st_h5_file_t *f, const char *group, const st_h5_imgset_t *s)
{
    char p[512];
    if (s->n < 0 || s->height < 1 || s->width < 1 || s->lat_c < 0) {
        BT_ERROR("%s: image set '%s': bad sizes", st_h5_path(f), group);
        return BT_EINVAL;
    }
    int rc = st_h5_group(f, group, false);
    int64_t shape[4] = {s->n, s->height, s->width, 3};
    const st_h5_opts_t gz = {ST_H5_IMAGES_DEFLATE, 1}, row = {0, 1}; /* written and read an image at a time */
    if (rc == BT_OK && !(rc = st_h5_imgset_path(p, sizeof p, group, "images")))
        rc = st_h5_create_dataset(f, p, ST_H5_U8, 4, shape, &gz);
    int64_t ls[4] = {s->n, s->lat_c, s->lat_h, s->lat_w};
    for (int k = 0; k < (s->flips ? 4 : 2) && s->lat_c > 0 && rc == BT_OK; k++)
        if (!(rc = st_h5_imgset_path(p, sizeof p, group, s_lat_names[k])))
            rc = st_h5_create_dataset(f, p, ST_H5_F32, 4, ls, &row);
    return rc;
}

int st_h5_imgset_put(st_h5_file_t *f, const char *group, int64_t first, int64_t count, const uint8_t *images,
                     const float *mean, const float *logvar, const float *mean_flip, const float *logvar_flip)
{
    char p[512];
    int rc = st_h5_imgset_path(p, sizeof p, group, "images");
    if (rc == BT_OK) rc = st_h5_write_rows(f, p, first, count, images);
    const float *lat[4] = {mean, logvar, mean_flip, logvar_flip};
    for (int k = 0; k < 4 && rc == BT_OK; k++)
        if (lat[k] && !(rc = st_h5_imgset_path(p, sizeof p, group, s_lat_names[k])))
            rc = st_h5_write_rows(f, p, first, count, lat[k]);
    return rc;
}

int st_h5_imgset_end(st_h5_file_t *f, const char *group, const st_h5_imgset_t *s)
{
    char p[512];
    int64_t *idx = NULL;
    const int64_t *index = s->index;
    if (!index) {
        if (!(idx = bt_malloc((size_t)(s->n ? s->n : 1) * sizeof *idx))) return BT_ENOMEM;
        for (int64_t i = 0; i < s->n; i++) idx[i] = i;
        index = idx;
    }
    int rc = st_h5_imgset_path(p, sizeof p, group, "index");
    if (rc == BT_OK) rc = st_h5_write(f, p, ST_H5_I64, 1, &s->n, index, NULL);
    free(idx);
    if (rc == BT_OK && s->seed && !(rc = st_h5_imgset_path(p, sizeof p, group, "seed")))
        rc = st_h5_write(f, p, ST_H5_U64, 1, &s->n, s->seed, NULL);
    if (rc == BT_OK && s->prompt && !(rc = st_h5_imgset_path(p, sizeof p, group, "prompt")))
        rc = st_h5_write_strings(f, p, s->n, s->prompt);
    if (rc == BT_OK && s->source && !(rc = st_h5_imgset_path(p, sizeof p, group, "source")))
        rc = st_h5_write_strings(f, p, s->n, s->source);
    return rc;
}

int st_h5_imgset_write(st_h5_file_t *f, const char *group, const st_h5_imgset_t *s)
{
    if (s->n > 0 && (!s->images || (s->lat_c > 0 && (!s->mean || !s->logvar)) ||
                     (s->lat_c > 0 && s->flips && (!s->mean_flip || !s->logvar_flip)))) {
        BT_ERROR("%s: image set '%s': data missing", st_h5_path(f), group);
        return BT_EINVAL;
    }
    int rc = st_h5_imgset_begin(f, group, s);
    int64_t row = s->height * s->width * 3, per = s->lat_c * s->lat_h * s->lat_w;
    bool lat = s->lat_c > 0, fl = lat && s->flips;
    for (int64_t i = 0; i < s->n && rc == BT_OK; i++) /* one image per call: HDF5 compresses one chunk at a time */
        rc = st_h5_imgset_put(f, group, i, 1, s->images + i * row, lat ? s->mean + i * per : NULL,
                              lat ? s->logvar + i * per : NULL, fl ? s->mean_flip + i * per : NULL,
                              fl ? s->logvar_flip + i * per : NULL);
    return rc ? rc : st_h5_imgset_end(f, group, s);
}

/* Checks dataset group/name has the given dtype class and shape (-1: any). */
static int s_expect(st_h5_file_t *f, const char *group, const char *name, bool str, int ndim, const int64_t *shape,
                    st_h5_info_t *out)
{
    char p[512], a[128], b[128];
    int rc = st_h5_imgset_path(p, sizeof p, group, name);
    if (rc || (rc = st_h5_info(f, p, out))) return rc;
    bool ok =
        out->ndim == ndim && (str ? out->dtype == ST_H5_STR : out->dtype != ST_H5_STR && out->dtype != ST_H5_OTHER);
    for (int i = 0; ok && i < ndim; i++) ok = shape[i] < 0 || out->shape[i] == shape[i];
    if (!ok) {
        int o = 0;
        o += snprintf(a + o, sizeof a - (size_t)o, "%s [", st_h5_dtype_name(out->dtype));
        for (int i = 0; i < out->ndim && o < (int)sizeof a - 24; i++)
            o += snprintf(a + o, sizeof a - (size_t)o, i ? ", %lld" : "%lld", (long long)out->shape[i]);
        snprintf(a + o, sizeof a - (size_t)o, "]");
        o = 0;
        o += snprintf(b + o, sizeof b - (size_t)o, "%s [", str ? "strings" : "numbers");
        for (int i = 0; i < ndim && o < (int)sizeof b - 24; i++)
            o += shape[i] < 0 ? snprintf(b + o, sizeof b - (size_t)o, i ? ", *" : "*")
                              : snprintf(b + o, sizeof b - (size_t)o, i ? ", %lld" : "%lld", (long long)shape[i]);
        snprintf(b + o, sizeof b - (size_t)o, "]");
        BT_ERROR("%s: dataset '%s' is %s, expected %s (to match %s/images)", st_h5_path(f), p, a, b, group);
        return BT_ESHAPE;
    }
    return BT_OK;
}

int st_h5_imgset_probe(st_h5_file_t *f, const char *group, st_h5_imgset_info_t *info)
{
    memset(info, 0, sizeof *info);
    st_h5_info_t d;
    int rc = s_expect(f, group, "images", false, 4, (int64_t[]){-1, -1, -1, 3}, &d);
    if (rc) return rc;
    if (d.dtype != ST_H5_U8 || d.shape[1] < 1 || d.shape[2] < 1 || d.shape[1] > 16384 || d.shape[2] > 16384 ||
        d.shape[0] > ST_H5_IMAGES_MAX) {
        BT_ERROR("%s: '%s/images' must be uint8 [n, H, W, 3] with n <= %d and 1 <= H, W <= 16384", st_h5_path(f),
                 group, ST_H5_IMAGES_MAX);
        return BT_EFORMAT;
    }
    info->n = d.shape[0];
    info->height = d.shape[1];
    info->width = d.shape[2];
    int64_t n = info->n;
    if ((rc = s_expect(f, group, "index", false, 1, &n, &d))) return rc;
    char p[512];
    st_h5_imgset_path(p, sizeof p, group, "latent_mean");
    if (st_h5_exists(f, p)) {
        if ((rc = s_expect(f, group, "latent_mean", false, 4, (int64_t[]){n, -1, -1, -1}, &d))) return rc;
        int64_t ls[4] = {n, d.shape[1], d.shape[2], d.shape[3]};
        if (ls[1] < 1 || ls[2] < 1 || ls[3] < 1 || ls[1] > 64 || ls[2] > 4096 || ls[3] > 4096) {
            BT_ERROR("%s: '%s' has an implausible latent shape", st_h5_path(f), p);
            return BT_EFORMAT;
        }
        if ((rc = s_expect(f, group, "latent_logvar", false, 4, ls, &d))) return rc;
        info->lat_c = ls[1];
        info->lat_h = ls[2];
        info->lat_w = ls[3];
        st_h5_imgset_path(p, sizeof p, group, "latent_mean_flip");
        if (st_h5_exists(f, p)) {
            if ((rc = s_expect(f, group, "latent_mean_flip", false, 4, ls, &d)) ||
                (rc = s_expect(f, group, "latent_logvar_flip", false, 4, ls, &d)))
                return rc;
            info->has_flip = true;
        }
    }
    struct {
        const char *name;
        bool str, *flag;
    } opt[3] = {
        {"seed", false, &info->has_seed}, {"prompt", true, &info->has_prompt}, {"source", true, &info->has_source}};
    for (int k = 0; k < 3; k++) {
        st_h5_imgset_path(p, sizeof p, group, opt[k].name);
        if (!st_h5_exists(f, p)) continue;
        if ((rc = s_expect(f, group, opt[k].name, opt[k].str, 1, &n, &d))) return rc;
        *opt[k].flag = true;
    }
    return BT_OK;
}
