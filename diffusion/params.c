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

#include "common/fileio.h"
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
    if (ps->mem && ps->ctx) nn_free(ps->ctx, ps->mem);
    for (int i = 0; i < ps->n; i++)
        if (ps->p[i].slot) *ps->p[i].slot = NULL;
    free(ps->p);
    const char *what = ps->what;
    memset(ps, 0, sizeof *ps);
    ps->what = what;
}

void sd_params_add(sd_params_t *ps, float **slot, sd_init_t init, float init_std, int ndim, const int64_t *shape,
                   const char *fmt, ...)
{
    if (ps->failed) return;
    if (ps->n == ps->cap) {
        int cap = ps->cap ? 2 * ps->cap : 256;
        sd_param_t *p = realloc(ps->p, (size_t)cap * sizeof *p);
        if (!p) {
            ps->failed = true;
            return;
        }
        ps->p = p;
        ps->cap = cap;
    }
    sd_param_t *p = &ps->p[ps->n];
    memset(p, 0, sizeof *p);
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(p->name, sizeof p->name, fmt, ap);
    va_end(ap);
    if (len < 0 || len >= (int)sizeof p->name || ndim < 1 || ndim > 4) {
        ps->failed = true;
        return;
    }
    p->ndim = ndim;
    for (int i = 0; i < ndim; i++) p->shape[i] = shape[i];
    p->slot = slot;
    p->init = init;
    p->init_std = init_std;
    ps->n++;
}

static int64_t s_numel(const sd_param_t *p)
{
    int64_t n = 1;
    for (int i = 0; i < p->ndim; i++) n *= p->shape[i];
    return n;
}

int sd_params_alloc(sd_params_t *ps, nn_ctx_t *ctx)
{
    if (ps->failed) {
        BT_ERROR("%s: registering parameters failed (out of memory or a name over %d characters)", ps->what,
                 SD_NAME_MAX);
        return BT_ENOMEM;
    }
    int64_t total = 0;
    for (int i = 0; i < ps->n; i++) total += (s_numel(&ps->p[i]) + 15) / 16 * 16; /* 64-byte aligned parts */
    ps->mem = nn_alloc(ctx, (size_t)(total ? total : 16) * sizeof(float));
    if (!ps->mem) {
        BT_ERROR("%s: cannot allocate %.1f MiB for %d parameters", ps->what, (double)total * 4 / 1048576.0, ps->n);
        return BT_ENOMEM;
    }
    ps->ctx = ctx;
    ps->numel = 0;
    /* zero everything, padding included: optimisers sweep the whole block */
    int rc = nn_fill(ctx, ps->mem, total ? total : 16, 0.0f);
    if (rc) return rc;
    int64_t off = 0;
    for (int i = 0; i < ps->n; i++) {
        sd_param_t *p = &ps->p[i];
        p->data = ps->mem + off;
        if (p->slot) *p->slot = p->data;
        off += (s_numel(p) + 15) / 16 * 16;
        ps->numel += s_numel(p);
    }
    return BT_OK;
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

int sd_params_load_files(sd_params_t *ps, st_file_t *const *files, int nfiles)
{
    if (!ps->mem) {
        BT_ERROR("%s: parameters are not allocated", ps->what);
        return BT_EINVAL;
    }
    float *staging = NULL; /* host conversion buffer for non-CPU backends */
    size_t staging_n = 0;
    int rc = BT_OK;
    for (int i = 0; i < ps->n; i++) {
        sd_param_t *p = &ps->p[i];
        st_file_t *from = NULL;
        const st_tensor_t *t = s_lookup(files, nfiles, p->name, &from);
        char alt[SD_NAME_MAX + 16];
        if (!t && s_legacy_name(p->name, alt, sizeof alt)) t = s_lookup(files, nfiles, alt, &from);
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
        if (ps->ctx->kind == NN_BACKEND_CPU) {
            st_read_f32(t, p->data);
            s_release(t);
        } else {
            if ((size_t)n > staging_n) {
                free(staging);
                staging = malloc((size_t)n * sizeof(float));
                staging_n = staging ? (size_t)n : 0;
                if (!staging) {
                    rc = BT_ENOMEM;
                    break;
                }
            }
            st_read_f32(t, staging);
            s_release(t);
            if ((rc = nn_upload(ps->ctx, p->data, staging, (size_t)n * sizeof(float)))) break;
        }
    }
    free(staging);
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
        *files = calloc((size_t)n + 1, sizeof **files);
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

int sd_params_load_dir(sd_params_t *ps, const char *dir, const char *base)
{
    char path[4096];
    static const char *const variants[] = {"", ".fp16", ".bf16"};
    for (int v = 0; v < 3; v++) {
        snprintf(path, sizeof path, "%s/%s%s.safetensors", dir, base, variants[v]);
        if (access(path, F_OK) == 0) {
            st_file_t *f = st_open(path);
            if (!f) return BT_EFORMAT;
            int rc = sd_params_load_files(ps, &f, 1);
            st_close(&f);
            return rc;
        }
        snprintf(path, sizeof path, "%s/%s%s.safetensors.index.json", dir, base, variants[v]);
        if (access(path, F_OK) == 0) {
            st_file_t **files = NULL;
            int nfiles = 0;
            int rc = s_open_index(dir, path, &files, &nfiles);
            if (rc == BT_OK) rc = sd_params_load_files(ps, files, nfiles);
            for (int i = 0; i < nfiles; i++) st_close(&files[i]);
            free(files);
            return rc;
        }
    }
    BT_ERROR("%s: no %s.safetensors (or .fp16/.bf16 variant, or sharded index) for the %s", dir, base, ps->what);
    return BT_ENOTFOUND;
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
    for (int64_t i = i0; i < i1; i++) s_init_one(&t->ps->p[i], t->ps->p[i].data, t->seed);
}

int sd_params_init_random(sd_params_t *ps, uint64_t seed)
{
    if (ps->ctx->kind == NN_BACKEND_CPU) { /* parameters in parallel: each has its own stream */
        s_init_task_t t = {ps, seed};
        bt_pool_run(ps->ctx->pool, ps->n, 1, s_init_task, &t);
        return BT_OK;
    }
    float *host = NULL;
    size_t host_n = 0;
    int rc = BT_OK;
    for (int i = 0; i < ps->n && rc == BT_OK; i++) {
        int64_t n = s_numel(&ps->p[i]);
        if ((size_t)n > host_n) {
            free(host);
            host = malloc((size_t)n * sizeof(float));
            host_n = host ? (size_t)n : 0;
            if (!host) return BT_ENOMEM;
        }
        s_init_one(&ps->p[i], host, seed);
        rc = nn_upload(ps->ctx, ps->p[i].data, host, (size_t)n * sizeof(float));
    }
    free(host);
    return rc;
}

int sd_params_save(const sd_params_t *ps, const char *path, st_dtype_t dtype, const char *const *metadata_kv)
{
    st_writer_t *w = st_writer_new();
    if (!w) return BT_ENOMEM;
    int rc = BT_OK;
    float *host = NULL;
    size_t host_n = 0;
    for (int i = 0; i < ps->n && rc == BT_OK; i++) {
        const sd_param_t *p = &ps->p[i];
        int64_t n = s_numel(p);
        const float *src = p->data;
        if (ps->ctx->kind != NN_BACKEND_CPU) {
            if ((size_t)n > host_n) {
                free(host);
                host = malloc((size_t)n * sizeof(float));
                host_n = host ? (size_t)n : 0;
                if (!host) {
                    rc = BT_ENOMEM;
                    break;
                }
            }
            if ((rc = nn_download(ps->ctx, host, p->data, (size_t)n * sizeof(float)))) break;
            src = host;
        }
        if (dtype == ST_F32 && src == p->data)
            rc = st_writer_add(w, p->name, ST_F32, p->ndim, p->shape, src);
        else
            rc = st_writer_add_f32_as(w, p->name, dtype, p->ndim, p->shape, src);
    }
    for (int i = 0; metadata_kv && metadata_kv[i] && rc == BT_OK; i += 2)
        rc = st_writer_set_metadata(w, metadata_kv[i], metadata_kv[i + 1]);
    if (rc == BT_OK) rc = st_writer_save(w, path);
    free(host);
    st_writer_destroy(&w);
    return rc;
}
