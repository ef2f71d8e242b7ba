/*
 * fuzz_h5.c — booth's HDF5 files (storage/h5.c and its readers): checkpoints,
 * prior sets and job data files, opened and read the ways booth reads them:
 * sd_booth_h5_open (format and version), every object and attribute as
 * `booth inspect --json` walks them, sd_checkpoint_export (a checkpoint's LoRA
 * to a file) and sd_image_set_load_h5 (the instance and prior image sets,
 * onto the tiny model).
 *
 * The corpus holds sealed files (storage/h5.h): a mutation breaks the seal and
 * must be refused before libhdf5 reads anything; and unsealed ones (the seal
 * block zeroed, as another tool's file has none), whose mutations reach
 * libhdf5's parsers: crafted files. A crash inside libhdf5 on those is
 * recorded in docs/RELIABILITY.md, not hidden. After every input no HDF5 object
 * booth opened may be left open (libhdf5's own count of open identifiers).
 */
#include <hdf5.h> /* H5Fget_obj_count: what booth left open */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/status.h"
#include "diffusion/checkpoint.h"
#include "diffusion/dataset.h"
#include "diffusion/layout.h"
#include "diffusion/pipeline.h"
#include "nn/nn.h"
#include "storage/h5.h"
#include "tests/fuzz/fuzz.h"

#define S_MAX_READ ((int64_t)1 << 22) /* elements read per dataset */

static void s_attrs(st_h5_file_t *f, const char *obj)
{
    char **names = NULL;
    int n = 0;
    if (st_h5_attr_list(f, obj, &names, &n)) return;
    for (int i = 0; i < n; i++) {
        st_h5_info_t info;
        if (st_h5_attr_info(f, obj, names[i], &info)) continue;
        if (info.dtype == ST_H5_STR) {
            char *v = NULL;
            if (st_h5_attr_str(f, obj, names[i], &v) == 0 && !v) fz_bug("attribute '%s' read as NULL", names[i]);
            free(v);
        } else if (info.numel == 1) {
            double d;
            int64_t q;
            uint64_t u;
            (void)st_h5_attr_f64(f, obj, names[i], &d);
            (void)st_h5_attr_i64(f, obj, names[i], &q);
            (void)st_h5_attr_u64(f, obj, names[i], &u);
        }
    }
    st_h5_free_names(names, n);
}

static void s_walk(st_h5_file_t *f, const char *group, int depth)
{
    s_attrs(f, group);
    char **names = NULL;
    int n = 0;
    if (depth > 8 || st_h5_list(f, group, &names, &n)) return;
    for (int i = 0; i < n; i++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", strcmp(group, "/") ? group : "", names[i]);
        if (st_h5_is_group(f, path)) {
            s_walk(f, path, depth + 1);
            continue;
        }
        s_attrs(f, path);
        st_h5_info_t info;
        if (st_h5_info(f, path, &info) || info.numel < 0) continue;
        if (info.ndim < 0 || info.ndim > ST_H5_MAX_DIMS) fz_bug("'%s': %d dimensions", path, info.ndim);
        if (info.numel > S_MAX_READ) continue;
        if (info.dtype == ST_H5_STR) {
            char **s = NULL;
            if (info.ndim == 1 && st_h5_read_strings(f, path, info.shape[0], &s) == 0)
                st_h5_free_names(s, (int)info.shape[0]);
        } else if (info.dtype != ST_H5_OTHER) {
            bool fl = info.dtype == ST_H5_F32 || info.dtype == ST_H5_F64;
            st_h5_dtype_t as = fl ? ST_H5_F64 : info.dtype == ST_H5_U64 ? ST_H5_U64 : ST_H5_I64;
            double *buf = malloc((size_t)(info.numel ? info.numel : 1) * sizeof *buf); /* 8 bytes each */
            if (!buf) abort();
            (void)st_h5_read(f, path, as, info.ndim, info.shape, buf);
            if (info.ndim >= 1 && info.shape[0] > 0) (void)st_h5_read_rows(f, path, as, info.shape[0] - 1, 1, buf);
            free(buf);
        }
    }
    st_h5_free_names(names, n);
}

FUZZ_TARGET(h5)
{
    static nn_ctx_t *ctx;
    static sd_model_t *model;
    if (!ctx && (!(ctx = nn_ctx_new(NN_BACKEND_CPU, 1)) ||
                 !(model = sd_model_load(ctx, fz_fixture("tiny-sd"), SD_PART_ALL))))
        fz_bug("cannot load the tiny model");
    const char *path = fz_write("input.h5", data, size); /* libhdf5 wants a real path, not a memfd */

    char *format = NULL;
    int64_t version = 0;
    st_h5_file_t *f = sd_booth_h5_open(path, NULL, &format, &version);
    fz_failed(!f, "sd_booth_h5_open");
    free(format);
    st_h5_close(&f);

    f = st_h5_open(path);
    fz_failed(!f, "st_h5_open");
    if (!f) return 0; /* refused before anything else can read it */
    s_walk(f, "/", 0);
    st_h5_close(&f);

    char out[700];
    snprintf(out, sizeof out, "%s/export.safetensors", fz_dir());
    int rc = sd_checkpoint_export(path, out, ST_LORA_KOHYA, ST_F32);
    fz_failed(rc, "sd_checkpoint_export");
    unlink(out);

    static const char *groups[2] = {SD_H5_INSTANCE, SD_H5_PRIOR};
    for (int g = 0; g < 2; g++) {
        sd_image_set_t s;
        rc = sd_image_set_load_h5(&s, model, path, groups[g], 16, true, 0, NULL, NULL);
        fz_failed(rc && rc != BT_ENOTFOUND, "sd_image_set_load_h5");
        if (rc == 0) sd_image_set_free(&s);
    }
    /* every file, group, dataset, attribute and type booth opened is closed, on every path */
    ssize_t left = H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL);
    if (left != 0) fz_bug("%zd HDF5 objects left open", left);
    return 0;
}
