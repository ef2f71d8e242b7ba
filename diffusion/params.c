/*
 * params.c — parameter registry: registration, one allocation, loading from
 * safetensors (single or sharded, any float dtype), seeded init, saving.
 */
#include "diffusion/params.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/fileio.h"
#include "common/half.h"
#include "common/log.h"
#include "common/status.h"
#include "common/pool.h"
#include "nn/elementwise.h"
#include "nn/memory.h"

void sd_params_init(sd_params_t *ps, const char *what)
{
    memset(ps, 0, sizeof *ps);
    ps->what = what;
}

void sd_params_free(sd_params_t *ps)
{
    sd_params_free_grads(ps);
    if (ps->mem && ps->ctx) nn_free(ps->ctx, ps->mem);
    if (ps->mem16 && ps->ctx) nn_free(ps->ctx, ps->mem16);
    for (int i = 0; i < ps->n; i++) {
        if (ps->p[i].slot) *ps->p[i].slot = NULL;
        if (ps->p[i].wslot) memset(ps->p[i].wslot, 0, sizeof *ps->p[i].wslot);
    }
    free(ps->p);
    const char *what = ps->what;
    memset(ps, 0, sizeof *ps);
    ps->what = what;
}

static void s_add(sd_params_t *ps, float **slot, sd_weight_t *wslot, sd_init_t init, float init_std, int ndim,
                  const int64_t *shape, const char *fmt, va_list ap)
{
    if (ps->failed) return;
    if (ps->n == ps->cap) {
        int cap = ps->cap ? 2 * ps->cap : 256;
        sd_param_t *p = bt_realloc(ps->p, (size_t)cap * sizeof *p);
        if (!p) {
            ps->failed = true;
            return;
        }
        ps->p = p;
        ps->cap = cap;
    }
    sd_param_t *p = &ps->p[ps->n];
    memset(p, 0, sizeof *p);
    int len = vsnprintf(p->name, sizeof p->name, fmt, ap);
    if (len < 0 || len >= (int)sizeof p->name || ndim < 1 || ndim > 4) {
        ps->failed = true;
        return;
    }
    p->ndim = ndim;
    int64_t numel = 1;
    bool bad = false;
    for (int i = 0; i < ndim; i++) {
        p->shape[i] = shape[i];
        bad |= shape[i] < 1 || __builtin_mul_overflow(numel, shape[i], &numel);
    }
    if (bad || __builtin_add_overflow(ps->planned, numel, &ps->planned) || ps->planned > SD_PARAMS_MAX) {
        /* sizes no model of the family has: a config with absurd values, said before any allocation */
        char dims[96];
        int o = 0;
        for (int i = 0; i < ndim && o < (int)sizeof dims; i++)
            o += snprintf(dims + o, sizeof dims - (size_t)o, i ? ", %lld" : "%lld", (long long)shape[i]);
        snprintf(ps->why, sizeof ps->why, "parameter '%.80s' of shape [%.60s] takes the model past %lld parameters",
                 p->name, dims, (long long)SD_PARAMS_MAX);
        ps->failed = true;
        return;
    }
    p->slot = slot;
    p->wslot = wslot;
    p->dtype = NN_F32;
    p->init = init;
    p->init_std = init_std;
    ps->n++;
}

void sd_params_add(sd_params_t *ps, float **slot, sd_init_t init, float init_std, int ndim, const int64_t *shape,
                   const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    s_add(ps, slot, NULL, init, init_std, ndim, shape, fmt, ap);
    va_end(ap);
}

void sd_params_add_weight(sd_params_t *ps, sd_weight_t *w, sd_init_t init, float init_std, int ndim,
                          const int64_t *shape, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    s_add(ps, NULL, w, init, init_std, ndim, shape, fmt, ap);
    va_end(ap);
}

void sd_params_grad_slot(sd_params_t *ps, float **gslot)
{
    if (!ps->failed && ps->n > 0) ps->p[ps->n - 1].gslot = gslot;
}

bool sd_store_parse(const char *s, sd_store_t *out)
{
    static const struct {
        const char *name;
        sd_store_t v;
    } names[] = {{"auto", SD_STORE_AUTO}, {"fp32", SD_STORE_F32}, {"float32", SD_STORE_F32},
                 {"fp16", SD_STORE_F16},  {"float16", SD_STORE_F16}, {"bf16", SD_STORE_BF16},
                 {"bfloat16", SD_STORE_BF16}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(s, names[i].name)) {
            *out = names[i].v;
            return true;
        }
    return false;
}

const char *sd_store_name(sd_store_t s)
{
    return s == SD_STORE_F32 ? "fp32" : s == SD_STORE_F16 ? "fp16" : s == SD_STORE_BF16 ? "bf16" : "auto";
}

static int64_t s_numel(const sd_param_t *p)
{
    int64_t n = 1;
    for (int i = 0; i < p->ndim; i++) n *= p->shape[i];
    return n;
}

/* Two blocks, float32 and 16-bit, by each parameter's dtype; every part starts
 * 64 bytes aligned. The float32 block is zeroed, padding included (optimisers
 * sweep the whole block); the 16-bit one only ever holds loaded weights. */
int sd_params_check(const sd_params_t *ps)
{
    if (ps->failed && ps->why[0]) {
        BT_ERROR("%s: %s: its config.json asks for sizes no Stable Diffusion model has", ps->what, ps->why);
        return BT_EINVAL;
    }
    if (ps->failed) {
        BT_ERROR("%s: registering parameters failed (out of memory or a name over %d characters)", ps->what,
                 SD_NAME_MAX);
        return BT_ENOMEM;
    }
    return BT_OK;
}

static int s_alloc(sd_params_t *ps, nn_ctx_t *ctx)
{
    int rc = sd_params_check(ps);
    if (rc) return rc;
    int64_t total = 0, total16 = 0;
    for (int i = 0; i < ps->n; i++) {
        if (ps->p[i].dtype == NN_F32)
            total += (s_numel(&ps->p[i]) + 15) / 16 * 16;
        else
            total16 += (s_numel(&ps->p[i]) + 31) / 32 * 32;
    }
    ps->mem = nn_alloc(ctx, (size_t)(total ? total : 16) * sizeof(float));
    ps->mem16 = total16 ? nn_alloc(ctx, (size_t)total16 * sizeof(uint16_t)) : NULL;
    if (!ps->mem || (total16 && !ps->mem16)) {
        BT_ERROR("%s: cannot allocate %.1f MiB for %d parameters", ps->what,
                 ((double)total * 4 + (double)total16 * 2) / 1048576.0, ps->n);
        if (ps->mem) nn_free(ctx, ps->mem);
        if (ps->mem16) nn_free(ctx, ps->mem16);
        ps->mem = NULL;
        ps->mem16 = NULL;
        return BT_ENOMEM;
    }
    ps->ctx = ctx;
    ps->numel = ps->numel16 = 0;
    rc = nn_fill(ctx, ps->mem, total ? total : 16, 0.0f);
    if (rc) return rc;
    int64_t off = 0, off16 = 0;
    for (int i = 0; i < ps->n; i++) {
        sd_param_t *p = &ps->p[i];
        int64_t n = s_numel(p);
        if (p->dtype == NN_F32) {
            p->data = ps->mem + off;
            p->data16 = NULL;
            off += (n + 15) / 16 * 16;
        } else {
            p->data = NULL;
            p->data16 = (uint16_t *)ps->mem16 + off16;
            off16 += (n + 31) / 32 * 32;
            ps->numel16 += n;
        }
        if (p->slot) *p->slot = p->data;
        if (p->wslot) *p->wslot = (sd_weight_t){.f32 = p->data, .h = p->data16, .dtype = p->dtype};
        ps->numel += n;
    }
    return BT_OK;
}

int sd_params_alloc(sd_params_t *ps, nn_ctx_t *ctx)
{
    for (int i = 0; i < ps->n; i++) ps->p[i].dtype = NN_F32;
    return s_alloc(ps, ctx);
}

int64_t sd_params_block_floats(const sd_params_t *ps)
{
    int64_t total = 0;
    for (int i = 0; i < ps->n; i++)
        if (ps->p[i].dtype == NN_F32) total += (s_numel(&ps->p[i]) + 15) / 16 * 16;
    return total ? total : 16;
}

int sd_params_alloc_grads(sd_params_t *ps)
{
    if (ps->grad) return BT_OK;
    if (!ps->mem) {
        BT_ERROR("%s: gradients before the parameters are allocated", ps->what);
        return BT_EINTERNAL;
    }
    for (int i = 0; i < ps->n; i++) {
        const sd_param_t *p = &ps->p[i];
        if (p->dtype != NN_F32) {
            BT_ERROR("%s: %s is stored in %s: full fine-tuning trains float32 weights (load the model in "
                     "float32: --base-dtype fp32, also for a cluster's workers)",
                     ps->what, p->name, nn_dtype_name(p->dtype));
            return BT_EINVAL;
        }
        if (!p->gslot) {
            BT_ERROR("%s: %s has no gradient in booth's backward pass: this part cannot be fully fine-tuned",
                     ps->what, p->name);
            return BT_EINVAL;
        }
    }
    int64_t total = sd_params_block_floats(ps);
    if (!(ps->grad = nn_alloc(ps->ctx, (size_t)total * sizeof(float)))) {
        BT_ERROR("%s: cannot allocate %.1f MiB for the gradients of %d parameters", ps->what,
                 (double)total * 4 / 1048576.0, ps->n);
        return BT_ENOMEM;
    }
    int rc = nn_fill(ps->ctx, ps->grad, total, 0.0f);
    if (rc) {
        sd_params_free_grads(ps);
        return rc;
    }
    for (int i = 0; i < ps->n; i++) *ps->p[i].gslot = ps->grad + (ps->p[i].data - ps->mem);
    return BT_OK;
}

void sd_params_free_grads(sd_params_t *ps)
{
    if (!ps->grad) return;
    for (int i = 0; i < ps->n; i++)
        if (ps->p[i].gslot) *ps->p[i].gslot = NULL;
    nn_free(ps->ctx, ps->grad);
    ps->grad = NULL;
}

size_t sd_params_bytes(const sd_params_t *ps)
{
    return (size_t)(ps->numel - ps->numel16) * sizeof(float) + (size_t)ps->numel16 * sizeof(uint16_t);
}

const sd_param_t *sd_params_find(const sd_params_t *ps, const char *name)
{
    for (int i = 0; i < ps->n; i++)
        if (!strcmp(ps->p[i].name, name)) return &ps->p[i];
    return NULL;
}

/* ---- loading ---- */

/* Shapes agree, allowing trailing 1-dims on either side (1x1 conv <-> linear). */
static bool s_shape_compatible(const sd_param_t *p, const st_tensor_t *t)
{
    int a = p->ndim, b = t->ndim;
    while (a > 0 && p->shape[a - 1] == 1 && a > 2) a--;
    while (b > 0 && t->shape[b - 1] == 1 && b > 2) b--;
    if (a != b) return false;
    for (int i = 0; i < a; i++)
        if (p->shape[i] != t->shape[i]) return false;
    return true;
}

/* Older VAE snapshots name the mid-block attention query/key/value/proj_attn. */
static bool s_legacy_name(const char *name, char *out, size_t len)
{
    static const char *const map[][2] = {
        {".to_q.", ".query."}, {".to_k.", ".key."}, {".to_v.", ".value."}, {".to_out.0.", ".proj_attn."}};
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) {
        const char *at = strstr(name, map[i][0]);
        if (!at) continue;
        snprintf(out, len, "%.*s%s%s", (int)(at - name), name, map[i][1], at + strlen(map[i][0]));
        return true;
    }
    return false;
}

/* Once a tensor is copied out, its pages of the file mapping are dropped:
 * otherwise every page read stays resident until the file is closed, and loading
 * counts the weights twice in the process's RSS (a 3.4 GB UNet peaked at 6.8 GB).
 * st_open maps files PROT_READ and MAP_PRIVATE, so the pages were never written
 * and dropping them loses nothing: a later access faults them in again from the
 * page cache. */
static void s_release(const st_tensor_t *t)
{
    long ps = sysconf(_SC_PAGESIZE);
    uintptr_t page = ps > 0 ? (uintptr_t)ps : 4096;
    uintptr_t a = ((uintptr_t)t->data + page - 1) & ~(page - 1), e = ((uintptr_t)t->data + t->nbytes) & ~(page - 1);
    if (e > a) (void)madvise((void *)a, e - a, MADV_DONTNEED); /* advice only: failure changes nothing */
}

static const st_tensor_t *s_lookup(st_file_t *const *files, int nfiles, const char *name, st_file_t **from)
{
    for (int f = 0; f < nfiles; f++) {
        const st_tensor_t *t = st_find(files[f], name);
        if (t) {
            *from = files[f];
            return t;
        }
    }
    return NULL;
}

/* A parameter's tensor in the files, under its name or its legacy VAE name. */
static const st_tensor_t *s_find(st_file_t *const *files, int nfiles, const char *name, st_file_t **from)
{
    char alt[SD_NAME_MAX + 16];
    const st_tensor_t *t = s_lookup(files, nfiles, name, from);
    if (!t && s_legacy_name(name, alt, sizeof alt)) t = s_lookup(files, nfiles, alt, from);
    return t;
}

/* float32 -> 16-bit type dt, rounding to nearest even. */
static void s_narrow(uint16_t *dst, const float *src, int64_t n, nn_dtype_t dt)
{
    for (int64_t i = 0; i < n; i++) dst[i] = dt == NN_F16 ? bt_f32_to_f16(src[i]) : bt_f32_to_bf16(src[i]);
}

/* Grows *buf to hold bytes; false when out of memory. */
static bool s_grow(void **buf, size_t *cap, size_t bytes)
{
    if (bytes <= *cap) return true;
    free(*buf);
    *buf = bt_malloc(bytes);
    *cap = *buf ? bytes : 0;
    return *buf != NULL;
}

/* A file tensor into 16-bit storage of type dt (host memory dst): copied when
 * the file has that type, else through float32 and rounded to nearest even
 * (*rounded set: the values may have changed).
 * BT_EINVAL when a finite value does not fit fp16 (it would become inf). */
static int s_read16(const st_tensor_t *t, nn_dtype_t dt, uint16_t *dst, float *tmp, const char *path,
                    const char *name, bool *rounded)
{
    int64_t n = st_numel(t);
    if ((t->dtype == ST_F16 && dt == NN_F16) || (t->dtype == ST_BF16 && dt == NN_BF16)) {
        memcpy(dst, t->data, (size_t)n * sizeof(uint16_t));
        return BT_OK;
    }
    *rounded = true;
    st_read_f32(t, tmp);
    for (int64_t i = 0; dt == NN_F16 && i < n; i++)
        if (isfinite(tmp[i]) && fabsf(tmp[i]) >= 65520.0f) {
            BT_ERROR("%s: tensor '%s' holds %g, beyond fp16's range (keep the weights in fp32 or bf16)", path, name,
                     (double)tmp[i]);
            return BT_EINVAL;
        }
    s_narrow(dst, tmp, n, dt);
    return BT_OK;
}

int sd_params_load_files(sd_params_t *ps, st_file_t *const *files, int nfiles)
{
    if (!ps->mem) {
        BT_ERROR("%s: parameters are not allocated", ps->what);
        return BT_EINVAL;
    }
    void *staging = NULL, *staging16 = NULL; /* host conversion buffers */
    size_t staging_n = 0, staging16_n = 0;
    bool cpu = ps->ctx->kind == NN_BACKEND_CPU;
    int rc = BT_OK;
    for (int i = 0; i < ps->n; i++) {
        sd_param_t *p = &ps->p[i];
        st_file_t *from = NULL;
        const st_tensor_t *t = s_find(files, nfiles, p->name, &from);
        char a[96], b[96];
        if (!t) {
            BT_ERROR("%s: %s tensor '%s' %s is missing", nfiles ? st_path(files[0]) : ps->what, ps->what, p->name,
                     st_shape_str(p->ndim, p->shape, b, sizeof b));
            rc = BT_ENOTFOUND;
            break;
        }
        if (!s_shape_compatible(p, t)) {
            BT_ERROR("%s: tensor '%s' has shape %s, the config needs %s", st_path(from), p->name,
                     st_shape_str(t->ndim, t->shape, a, sizeof a), st_shape_str(p->ndim, p->shape, b, sizeof b));
            rc = BT_ESHAPE;
            break;
        }
        if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16 && t->dtype != ST_F64) {
            BT_ERROR("%s: tensor '%s' has dtype %s (expected a float type)", st_path(from), p->name,
                     st_dtype_name(t->dtype));
            rc = BT_EFORMAT;
            break;
        }
        int64_t n = s_numel(p);
        if (p->data16) {
            uint16_t *dst = p->data16;
            if ((!cpu && !s_grow(&staging16, &staging16_n, (size_t)n * sizeof(uint16_t))) ||
                !s_grow(&staging, &staging_n, (size_t)n * sizeof(float))) {
                rc = BT_ENOMEM;
                break;
            }
            if (!cpu) dst = staging16;
            bool rounded = false;
            rc = s_read16(t, p->dtype, dst, staging, st_path(from), p->name, &rounded);
            ps->rounded += rounded;
            s_release(t);
            if (rc || (!cpu && (rc = nn_upload(ps->ctx, p->data16, staging16, (size_t)n * sizeof(uint16_t)))))
                break;
        } else if (cpu) {
            st_read_f32(t, p->data);
            s_release(t);
        } else {
            if (!s_grow(&staging, &staging_n, (size_t)n * sizeof(float))) {
                rc = BT_ENOMEM;
                break;
            }
            st_read_f32(t, staging);
            s_release(t);
            if ((rc = nn_upload(ps->ctx, p->data, staging, (size_t)n * sizeof(float)))) break;
        }
    }
    free(staging);
    free(staging16);
    return rc;
}

static int s_open_index(const char *dir, const char *index_path, st_file_t ***files, int *nfiles)
{
    char *text = NULL;
    size_t len;
    int rc = bt_read_file(index_path, &text, &len);
    if (rc) return rc;
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(map)) {
        BT_ERROR("%s: no weight_map object", index_path);
        cJSON_Delete(root);
        return BT_EFORMAT;
    }
    /* distinct shard names, in first-seen order */
    char *names[256];
    int n = 0;
    const cJSON *e;
    rc = BT_OK;
    cJSON_ArrayForEach(e, map)
    {
        if (!cJSON_IsString(e) || strchr(e->valuestring, '/')) {
            BT_ERROR("%s: weight_map entry '%s' is not a plain file name", index_path, e->string);
            rc = BT_EFORMAT;
            break;
        }
        bool seen = false;
        for (int i = 0; i < n && !seen; i++) seen = !strcmp(names[i], e->valuestring);
        if (seen) continue;
        if (n == 256) {
            BT_ERROR("%s: more than 256 shards", index_path);
            rc = BT_EFORMAT;
            break;
        }
        names[n++] = e->valuestring;
    }
    if (rc == BT_OK) {
        *files = bt_calloc((size_t)n + 1, sizeof **files);
        *nfiles = 0;
        for (int i = 0; i < n && *files; i++) {
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", dir, names[i]);
            st_file_t *f = st_open(path);
            if (!f) {
                rc = BT_EFORMAT;
                break;
            }
            (*files)[(*nfiles)++] = f;
        }
        if (!*files) rc = BT_ENOMEM;
    }
    cJSON_Delete(root);
    return rc;
}

/* Opens a model part's safetensors file(s): one file or a sharded index, plain
 * or a .fp16/.bf16 variant. *files is calloc'd; close with s_close_files. */
static int s_open_dir(const sd_params_t *ps, const char *dir, const char *base, st_file_t ***files, int *nfiles)
{
    char path[4096];
    static const char *const variants[] = {"", ".fp16", ".bf16"};
    *files = NULL;
    *nfiles = 0;
    for (int v = 0; v < 3; v++) {
        snprintf(path, sizeof path, "%s/%s%s.safetensors", dir, base, variants[v]);
        if (access(path, F_OK) == 0) {
            if (!(*files = bt_calloc(1, sizeof **files))) return BT_ENOMEM;
            if (!((*files)[0] = st_open(path))) return BT_EFORMAT;
            *nfiles = 1;
            return BT_OK;
        }
        snprintf(path, sizeof path, "%s/%s%s.safetensors.index.json", dir, base, variants[v]);
        if (access(path, F_OK) == 0) return s_open_index(dir, path, files, nfiles);
    }
    BT_ERROR("%s: no %s.safetensors (or .fp16/.bf16 variant, or sharded index) for the %s", dir, base, ps->what);
    return BT_ENOTFOUND;
}

static void s_close_files(st_file_t **files, int nfiles)
{
    for (int i = 0; i < nfiles; i++) st_close(&files[i]);
    free(files);
}

int sd_params_load_dir(sd_params_t *ps, const char *dir, const char *base)
{
    st_file_t **files = NULL;
    int nfiles = 0;
    int rc = s_open_dir(ps, dir, base, &files, &nfiles);
    if (rc == BT_OK) rc = sd_params_load_files(ps, files, nfiles);
    s_close_files(files, nfiles);
    return rc;
}

int sd_params_load_model(sd_params_t *ps, nn_ctx_t *ctx, const char *dir, const char *base, sd_store_t store)
{
    st_file_t **files = NULL;
    int nfiles = 0;
    int rc = s_open_dir(ps, dir, base, &files, &nfiles);
    if (rc == BT_OK) rc = sd_params_load_model_files(ps, ctx, files, nfiles, store);
    s_close_files(files, nfiles);
    return rc;
}

int sd_params_load_model_files(sd_params_t *ps, nn_ctx_t *ctx, st_file_t *const *files, int nfiles, sd_store_t store)
{
    int rc = BT_OK;
    ps->rounded = 0;
    for (int i = 0; i < ps->n; i++) {
        sd_param_t *p = &ps->p[i];
        p->dtype = NN_F32;
        if (!p->wslot || store == SD_STORE_F32) continue;
        if (store == SD_STORE_F16 || store == SD_STORE_BF16) {
            p->dtype = store == SD_STORE_F16 ? NN_F16 : NN_BF16;
            continue;
        }
        st_file_t *from;
        const st_tensor_t *t = s_find(files, nfiles, p->name, &from);
        if (t && t->dtype == ST_F16) p->dtype = NN_F16;
        if (t && t->dtype == ST_BF16) p->dtype = NN_BF16;
    }
    rc = s_alloc(ps, ctx);
    if (rc == BT_OK) rc = sd_params_load_files(ps, files, nfiles);
    if (rc == BT_OK && ps->numel16)
        BT_DEBUG("%s: %.1f M parameters, %.2f GiB resident (%.1f M in 16 bits)", ps->what, (double)ps->numel / 1e6,
                 (double)sd_params_bytes(ps) / (1u << 30), (double)ps->numel16 / 1e6);
    return rc;
}

/* ---- init and save ---- */

static uint64_t s_mix(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t s_hash_name(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* Fills one parameter's values (host memory dst) from its own stream. */
static void s_init_one(const sd_param_t *p, float *dst, uint64_t seed)
{
    int64_t n = s_numel(p);
    uint64_t state = s_mix(seed * 0x9e3779b97f4a7c15ull ^ s_hash_name(p->name));
    for (int64_t k = 0; k < n; k++) {
        if (p->init == SD_INIT_ZERO) {
            dst[k] = 0;
        } else if (p->init == SD_INIT_ONE) {
            dst[k] = 1;
        } else { /* Box-Muller from two 53-bit uniforms */
            double u1 = (double)(s_mix(state += 0x9e3779b97f4a7c15ull) >> 11) * 0x1p-53;
            double u2 = (double)(s_mix(state += 0x9e3779b97f4a7c15ull) >> 11) * 0x1p-53;
            if (u1 < 1e-300) u1 = 1e-300;
            dst[k] = (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2) * p->init_std);
        }
    }
}

typedef struct {
    sd_params_t *ps;
    uint64_t seed;
} s_init_task_t;

static void s_init_task(void *arg, int64_t i0, int64_t i1, int tid)
{
    s_init_task_t *t = arg;
    for (int64_t i = i0; i < i1; i++)
        if (t->ps->p[i].data) s_init_one(&t->ps->p[i], t->ps->p[i].data, t->seed);
}

/* float32 values into a parameter's storage, converting to its 16-bit type. */
static int s_store(sd_params_t *ps, sd_param_t *p, const float *host, uint16_t *host16)
{
    int64_t n = s_numel(p);
    if (!p->data16) return nn_upload(ps->ctx, p->data, host, (size_t)n * sizeof(float));
    s_narrow(host16, host, n, p->dtype);
    return nn_upload(ps->ctx, p->data16, host16, (size_t)n * sizeof(uint16_t));
}

int sd_params_init_random(sd_params_t *ps, uint64_t seed)
{
    bool cpu = ps->ctx->kind == NN_BACKEND_CPU;
    if (cpu) { /* float32 parameters in parallel: each has its own stream */
        s_init_task_t t = {ps, seed};
        bt_pool_run(ps->ctx->pool, ps->n, 1, s_init_task, &t);
    }
    void *host = NULL, *host16 = NULL;
    size_t host_n = 0, host16_n = 0;
    int rc = BT_OK;
    for (int i = 0; i < ps->n && rc == BT_OK; i++) {
        sd_param_t *p = &ps->p[i];
        if (cpu && !p->data16) continue;
        size_t n = (size_t)s_numel(p);
        if (!s_grow(&host, &host_n, n * sizeof(float)) || !s_grow(&host16, &host16_n, n * sizeof(uint16_t))) {
            rc = BT_ENOMEM;
            break;
        }
        s_init_one(p, host, seed);
        rc = s_store(ps, p, host, host16);
    }
    free(host);
    free(host16);
    return rc;
}

int sd_params_save(const sd_params_t *ps, const char *path, st_dtype_t dtype, const char *const *metadata_kv)
{
    st_writer_t *w = st_writer_new();
    if (!w) return BT_ENOMEM;
    int rc = BT_OK;
    bool cpu = ps->ctx->kind == NN_BACKEND_CPU;
    void *host = NULL, *host16 = NULL;
    size_t host_n = 0, host16_n = 0;
    for (int i = 0; i < ps->n && rc == BT_OK; i++) {
        const sd_param_t *p = &ps->p[i];
        size_t n = (size_t)s_numel(p);
        st_dtype_t have = p->dtype == NN_F16 ? ST_F16 : p->dtype == NN_BF16 ? ST_BF16 : ST_F32;
        const void *src = p->data16 ? (const void *)p->data16 : (const void *)p->data;
        if (!cpu) { /* to the host first */
            size_t bytes = n * (p->data16 ? sizeof(uint16_t) : sizeof(float));
            if (!s_grow(&host, &host_n, bytes)) {
                rc = BT_ENOMEM;
                break;
            }
            if ((rc = nn_download(ps->ctx, host, src, bytes))) break;
            src = host;
        }
        if (have == dtype) { /* as stored: the writer keeps a copy when src is a reused buffer */
            rc = cpu ? st_writer_add(w, p->name, dtype, p->ndim, p->shape, src)
                     : st_writer_add_copy(w, p->name, dtype, p->ndim, p->shape, src);
            continue;
        }
        const float *f = src;
        if (p->data16) { /* widen (exact), then write as asked */
            if (!s_grow(&host16, &host16_n, n * sizeof(float))) {
                rc = BT_ENOMEM;
                break;
            }
            float *d = host16;
            const uint16_t *h = src;
            for (size_t k = 0; k < n; k++) d[k] = p->dtype == NN_F16 ? bt_f16_to_f32(h[k]) : bt_bf16_to_f32(h[k]);
            f = d;
        }
        rc = st_writer_add_f32_as(w, p->name, dtype, p->ndim, p->shape, f);
    }
    for (int i = 0; metadata_kv && metadata_kv[i] && rc == BT_OK; i += 2)
        rc = st_writer_set_metadata(w, metadata_kv[i], metadata_kv[i + 1]);
    if (rc == BT_OK) rc = st_writer_save(w, path);
    free(host);
    free(host16);
    st_writer_destroy(&w);
    return rc;
}
