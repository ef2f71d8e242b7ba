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
#include "diffusion/clip.h"
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

/* Not a trained part (user: bool, whether the text encoder trains). */
static bool s_copied(const char *name, void *user)
{
    bool text = *(const bool *)user;
    return strcmp(name, "unet") != 0 && !(text && !strcmp(name, "text_encoder"));
}

/* Every part of the base but the trained ones (unet/, text_encoder/ when text): files at the top,
 * and the files of each folder (one level, as diffusers lays a model out). A trained part's folder
 * is not copied at all: a base weight file beside the new one (model.fp16.safetensors, say) would
 * be what a loader asking for that variant reads. */
static int s_copy_parts(const char *base, const char *out, bool text)
{
    char **names = NULL;
    int n = 0, rc = bt_list_dir(base, s_copied, &text, false, &names, &n);
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

int sd_model_folder_write(const char *out, const char *base_dir, bool text, const sd_optim_t *o,
                          const char *const *metadata_kv)
{
    return sd_model_folder_write_from(out, base_dir, text, s_from_optim, (void *)o, metadata_kv);
}

/* out/<part>/: the base's config.json and <file> (float32) holding every parameter of ps (allocated
 * here), each from get as "<part>.<name>". */
static int s_write_part(const char *out, const char *base_dir, const char *part, const char *file, sd_params_t *ps,
                        sd_tensor_get_fn get, void *user, const char *const *metadata_kv)
{
    char path[4200], dst[4200];
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 1);
    int rc = ctx ? sd_params_alloc(ps, ctx) : BT_ENOMEM;
    for (int i = 0; rc == BT_OK && i < ps->n; i++) {
        const sd_param_t *p = &ps->p[i];
        char name[SD_OPTIM_NAME_MAX];
        snprintf(name, sizeof name, "%s.%s", part, p->name);
        int64_t numel = 1;
        for (int d = 0; d < p->ndim; d++) numel *= p->shape[d];
        rc = get(user, name, p->data, numel);
    }
    snprintf(dst, sizeof dst, "%s/%s", out, part);
    if (rc == BT_OK) rc = bt_mkdirs(dst);
    snprintf(path, sizeof path, "%s/%s/config.json", base_dir, part);
    snprintf(dst, sizeof dst, "%s/%s/config.json", out, part);
    if (rc == BT_OK) rc = s_copy_file(path, dst);
    snprintf(dst, sizeof dst, "%s/%s/%s", out, part, file);
    if (rc == BT_OK) rc = sd_params_save(ps, dst, ST_F32, metadata_kv);
    sd_params_free(ps); /* before its context: the block lives there */
    nn_ctx_destroy(&ctx);
    return rc;
}

int sd_model_folder_write_from(const char *out, const char *base_dir, bool text, sd_tensor_get_fn get, void *user,
                               const char *const *metadata_kv)
{
    char path[4200];
    sd_unet_config_t ucfg;
    sd_clip_config_t ccfg;
    snprintf(path, sizeof path, "%s/unet/config.json", base_dir);
    if (sd_unet_config_load(path, &ucfg)) return BT_EINVAL;
    snprintf(path, sizeof path, "%s/text_encoder/config.json", base_dir);
    if (text && sd_clip_config_load(path, &ccfg)) return BT_EINVAL;
    sd_unet_t *u = sd_unet_new(&ucfg);
    int rc = u ? s_write_part(out, base_dir, "unet", "diffusion_pytorch_model.safetensors", &u->params, get, user,
                              metadata_kv)
               : BT_ENOMEM;
    sd_unet_destroy(&u);
    if (rc == BT_OK && text) { /* transformers' layout: booth's parameter names are its file's keys */
        sd_clip_t *c = sd_clip_new(&ccfg);
        rc = c ? s_write_part(out, base_dir, "text_encoder", "model.safetensors", &c->params, get, user, metadata_kv)
               : BT_ENOMEM;
        sd_clip_destroy(&c);
    }
    if (rc == BT_OK) rc = s_copy_parts(base_dir, out, text);
    return rc;
}
