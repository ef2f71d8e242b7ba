/*
 * model_out.c — full fine-tuning's result as a diffusers model folder (model_out.h).
 */
#include "diffusion/model_out.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/alloc.h"
#include "common/fileio.h"
#include "common/log.h"
#include "common/status.h"
#include "diffusion/unet.h"

/* Copies the regular file src to dst crash-safely, in pieces (a text encoder is hundreds of MB). */
static int s_copy_file(const char *src, const char *dst)
{
    struct stat a, b;
    if (stat(src, &a)) {
        BT_ERROR("%s: %s", src, strerror(errno));
        return BT_EIO;
    }
    if (!stat(dst, &b) && S_ISREG(b.st_mode) && b.st_size == a.st_size) return BT_OK; /* a rerun: kept */
    FILE *in = fopen(src, "rb");
    if (!in) {
        BT_ERROR("%s: %s", src, strerror(errno));
        return BT_EIO;
    }
    bt_atomic_file_t af;
    int rc = bt_replaceable(dst);
    if (rc == BT_OK) rc = bt_atomic_open(&af, dst);
    if (rc) {
        fclose(in);
        return rc;
    }
    char *buf = bt_malloc(1 << 20);
    size_t got;
    while (buf && rc == BT_OK && (got = fread(buf, 1, 1 << 20, in)) > 0)
        if (fwrite(buf, 1, got, af.f) != got) {
            BT_ERROR("%s: %s", dst, strerror(errno));
            rc = BT_EIO;
        }
    if (!buf) rc = BT_ENOMEM;
    if (rc == BT_OK && ferror(in)) {
        BT_ERROR("%s: read error", src);
        rc = BT_EIO;
    }
    free(buf);
    fclose(in);
    if (rc) {
        bt_atomic_abort(&af);
        return rc;
    }
    return bt_atomic_commit(&af);
}

static bool s_not_unet(const char *name, void *user)
{
    (void)user;
    return strcmp(name, "unet") != 0;
}

/* Every part of the base but unet/: files at the top, and the files of each folder (one level, as
 * diffusers lays a model out). */
static int s_copy_parts(const char *base, const char *out)
{
    char **names = NULL;
    int n = 0, rc = bt_list_dir(base, s_not_unet, NULL, false, &names, &n);
    char src[4096], dst[4096];
    for (int i = 0; i < n && rc == BT_OK; i++) {
        struct stat st;
        snprintf(src, sizeof src, "%s/%s", base, names[i]);
        snprintf(dst, sizeof dst, "%s/%s", out, names[i]);
        if (stat(src, &st)) continue; /* a dangling link: nothing a loader could read either */
        if (S_ISREG(st.st_mode)) {
            rc = s_copy_file(src, dst);
        } else if (S_ISDIR(st.st_mode)) {
            char **files = NULL;
            int k = 0;
            if ((rc = bt_list_dir(src, NULL, NULL, false, &files, &k)) || (rc = bt_mkdirs(dst))) {
                bt_free_list(files, k);
                break;
            }
            for (int j = 0; j < k && rc == BT_OK; j++) {
                char s2[4200], d2[4200];
                snprintf(s2, sizeof s2, "%s/%s", src, files[j]);
                snprintf(d2, sizeof d2, "%s/%s", dst, files[j]);
                if (!stat(s2, &st) && S_ISREG(st.st_mode)) rc = s_copy_file(s2, d2);
            }
            bt_free_list(files, k);
        }
    }
    bt_free_list(names, n);
    return rc;
}

static int s_from_optim(void *user, const char *name, float *dst, int64_t numel)
{
    const sd_optim_t *o = user;
    int k = sd_optim_find(o, name);
    if (k < 0 || o->t[k].numel != numel) {
        BT_ERROR("the trained state has %s '%s' (%lld values expected)", k < 0 ? "no tensor" : "a misshapen", name,
                 (long long)numel);
        return BT_ESHAPE;
    }
    return nn_download(o->ctx, dst, o->t[k].p, (size_t)numel * sizeof(float));
}

int sd_model_folder_write(const char *out, const char *base_dir, const sd_optim_t *o, const char *const *metadata_kv)
{
    return sd_model_folder_write_from(out, base_dir, s_from_optim, (void *)o, metadata_kv);
}

int sd_model_folder_write_from(const char *out, const char *base_dir, sd_tensor_get_fn get, void *user,
                               const char *const *metadata_kv)
{
    char path[4200], dst[4200];
    snprintf(path, sizeof path, "%s/unet/config.json", base_dir);
    sd_unet_config_t cfg;
    if (sd_unet_config_load(path, &cfg)) return BT_EINVAL;
    sd_unet_t *u = sd_unet_new(&cfg);
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 1);
    int rc = u && ctx ? sd_params_alloc(&u->params, ctx) : BT_ENOMEM;
    for (int i = 0; rc == BT_OK && i < u->params.n; i++) {
        const sd_param_t *p = &u->params.p[i];
        char name[SD_OPTIM_NAME_MAX];
        snprintf(name, sizeof name, "unet.%s", p->name);
        int64_t numel = 1;
        for (int d = 0; d < p->ndim; d++) numel *= p->shape[d];
        rc = get(user, name, p->data, numel);
    }
    snprintf(dst, sizeof dst, "%s/unet", out);
    if (rc == BT_OK) rc = bt_mkdirs(dst);
    snprintf(dst, sizeof dst, "%s/unet/config.json", out);
    if (rc == BT_OK) rc = s_copy_file(path, dst);
    snprintf(dst, sizeof dst, "%s/unet/diffusion_pytorch_model.safetensors", out);
    if (rc == BT_OK) rc = sd_params_save(&u->params, dst, ST_F32, metadata_kv);
    if (rc == BT_OK) rc = s_copy_parts(base_dir, out);
    sd_unet_destroy(&u);
    nn_ctx_destroy(&ctx);
    return rc;
}
