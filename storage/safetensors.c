/*
 * safetensors.c — validated, memory-mapped safetensors reader and atomic writer.
 *
 * The reader never trusts the header: the length prefix is checked against the
 * file size, every tensor's byte range against dtype x shape and the data area,
 * and the ranges against each other, before any data pointer is handed out.
 */
#include "storage/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/fileio.h"
#include "common/half.h"
#include "common/log.h"
#include "common/status.h"

#define ST_MAX_HEADER (100u << 20) /* the reference implementation's limit */

struct st_file {
    char *path;
    void *map;
    size_t map_size;
    st_tensor_t *tensors; /* sorted by data offset */
    int n;
    int *by_name; /* indices sorted by name, for bsearch */
    char **meta_keys, **meta_values;
    int n_meta;
};

static const struct {
    const char *name;
    size_t size;
} s_dtypes[ST_DTYPE_COUNT] = {
    [ST_F64] = {"F64", 8}, [ST_F32] = {"F32", 4}, [ST_F16] = {"F16", 2}, [ST_BF16] = {"BF16", 2},
    [ST_I64] = {"I64", 8}, [ST_I32] = {"I32", 4}, [ST_I16] = {"I16", 2}, [ST_I8] = {"I8", 1},
    [ST_U8] = {"U8", 1},   [ST_BOOL] = {"BOOL", 1},
};

const char *st_dtype_name(st_dtype_t dt) { return (unsigned)dt < ST_DTYPE_COUNT ? s_dtypes[dt].name : "?"; }
size_t st_dtype_size(st_dtype_t dt) { return (unsigned)dt < ST_DTYPE_COUNT ? s_dtypes[dt].size : 0; }

int st_dtype_parse(const char *name, st_dtype_t *dt)
{
    for (int i = 0; i < ST_DTYPE_COUNT; i++)
        if (!strcmp(name, s_dtypes[i].name)) {
            *dt = (st_dtype_t)i;
            return BT_OK;
        }
    return BT_EFORMAT;
}

int64_t st_numel(const st_tensor_t *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

char *st_shape_str(int ndim, const int64_t *shape, char *buf, size_t len)
{
    size_t o = 0;
    o += (size_t)snprintf(buf + o, len - o, "[");
    for (int i = 0; i < ndim && o < len; i++)
        o += (size_t)snprintf(buf + o, len - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (o < len) snprintf(buf + o, len - o, "]");
    return buf;
}

/* An integral JSON number in [0, limit]. */
static bool s_json_uint(const cJSON *v, double limit, uint64_t *out)
{
    if (!cJSON_IsNumber(v)) return false;
    double d = v->valuedouble;
    if (!(d >= 0) || d > limit || d != floor(d)) return false;
    *out = (uint64_t)d;
    return true;
}

static int s_cmp_offset(const void *a, const void *b)
{
    const st_tensor_t *x = a, *y = b;
    const char *px = x->data, *py = y->data;
    return px < py ? -1 : px > py;
}

static int s_cmp_name_idx(const void *a, const void *b, void *base)
{
    const st_tensor_t *t = base;
    return strcmp(t[*(const int *)a].name, t[*(const int *)b].name);
}

static void s_free_file(st_file_t *f)
{
    if (!f) return;
    for (int i = 0; i < f->n; i++) free((char *)f->tensors[i].name);
    for (int i = 0; i < f->n_meta; i++) {
        free(f->meta_keys[i]);
        free(f->meta_values[i]);
    }
    free(f->meta_keys);
    free(f->meta_values);
    free(f->tensors);
    free(f->by_name);
    if (f->map && f->map != MAP_FAILED) munmap(f->map, f->map_size);
    free(f->path);
    free(f);
}

/* Parses one tensor entry; `data` is the start of the data area of `data_len` bytes. */
static int s_parse_entry(st_file_t *f, const cJSON *e, const char *data, uint64_t data_len, st_tensor_t *t)
{
    const char *name = e->string;
    char sbuf[128];
    if (!cJSON_IsObject(e)) {
        BT_ERROR("%s: tensor '%s': header entry is not an object", f->path, name);
        return BT_EFORMAT;
    }
    const cJSON *jd = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *jo = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(jd) || !cJSON_IsArray(js) || !cJSON_IsArray(jo) || cJSON_GetArraySize(jo) != 2) {
        BT_ERROR("%s: tensor '%s': needs dtype, shape and data_offsets [begin, end]", f->path, name);
        return BT_EFORMAT;
    }
    if (st_dtype_parse(jd->valuestring, &t->dtype) != BT_OK) {
        BT_ERROR("%s: tensor '%s': unsupported dtype '%s'", f->path, name, jd->valuestring);
        return BT_EFORMAT;
    }
    int nd = cJSON_GetArraySize(js);
    if (nd > ST_MAX_DIMS) {
        BT_ERROR("%s: tensor '%s': %d dimensions (at most %d supported)", f->path, name, nd, ST_MAX_DIMS);
        return BT_EFORMAT;
    }
    t->ndim = nd;
    uint64_t numel = 1;
    const double dim_limit = (double)(1ull << 40);
    for (int i = 0; i < nd; i++) {
        uint64_t d;
        if (!s_json_uint(cJSON_GetArrayItem(js, i), dim_limit, &d)) {
            BT_ERROR("%s: tensor '%s': shape entry %d is not a non-negative integer", f->path, name, i);
            return BT_EFORMAT;
        }
        t->shape[i] = (int64_t)d;
        if (d && numel > UINT64_MAX / d) {
            BT_ERROR("%s: tensor '%s': shape overflows", f->path, name);
            return BT_EFORMAT;
        }
        numel *= d;
    }
    uint64_t begin, end;
    if (!s_json_uint(cJSON_GetArrayItem(jo, 0), 9.0e15, &begin) ||
        !s_json_uint(cJSON_GetArrayItem(jo, 1), 9.0e15, &end) || end < begin) {
        BT_ERROR("%s: tensor '%s': data_offsets are not integers with begin <= end", f->path, name);
        return BT_EFORMAT;
    }
    size_t es = st_dtype_size(t->dtype);
    if (numel > UINT64_MAX / es || end - begin != numel * es) {
        BT_ERROR("%s: tensor '%s': %s %s needs %llu bytes, data_offsets give %llu", f->path, name,
                 st_dtype_name(t->dtype), st_shape_str(nd, t->shape, sbuf, sizeof sbuf),
                 (unsigned long long)(numel * es), (unsigned long long)(end - begin));
        return BT_EFORMAT;
    }
    if (end > data_len) {
        BT_ERROR("%s: tensor '%s': data ends at byte %llu but the file has only %llu data bytes (truncated?)",
                 f->path, name, (unsigned long long)end, (unsigned long long)data_len);
        return BT_EFORMAT;
    }
    t->data = data + begin;
    t->nbytes = (size_t)(end - begin);
    t->name = strdup(name);
    return t->name ? BT_OK : BT_ENOMEM;
}

static int s_parse_metadata(st_file_t *f, const cJSON *m)
{
    if (!cJSON_IsObject(m)) {
        BT_ERROR("%s: __metadata__ is not an object", f->path);
        return BT_EFORMAT;
    }
    if (f->meta_keys) { /* the header's JSON names it twice (found by fuzz_safetensors: a heap overflow) */
        BT_ERROR("%s: __metadata__ appears twice in the header", f->path);
        return BT_EFORMAT;
    }
    int n = cJSON_GetArraySize(m);
    f->meta_keys = bt_calloc((size_t)n + 1, sizeof(char *));
    f->meta_values = bt_calloc((size_t)n + 1, sizeof(char *));
    if (!f->meta_keys || !f->meta_values) return BT_ENOMEM;
    const cJSON *kv;
    cJSON_ArrayForEach(kv, m)
    {
        if (!cJSON_IsString(kv)) {
            BT_ERROR("%s: __metadata__ value for '%s' is not a string", f->path, kv->string);
            return BT_EFORMAT;
        }
        f->meta_keys[f->n_meta] = strdup(kv->string);
        f->meta_values[f->n_meta] = strdup(kv->valuestring);
        f->n_meta++;
        if (!f->meta_keys[f->n_meta - 1] || !f->meta_values[f->n_meta - 1]) return BT_ENOMEM;
    }
    return BT_OK;
}

st_file_t *st_open(const char *path)
{
    st_file_t *f = bt_calloc(1, sizeof *f);
    cJSON *root = NULL;
    int fd = -1;
    if (!f || !(f->path = strdup(path))) goto out_nomem;
    fd = open(path, O_RDONLY);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0) {
        BT_ERROR("%s: cannot open: %s", path, strerror(errno));
        goto out_fail;
    }
    if (!S_ISREG(sb.st_mode)) {
        BT_ERROR("%s: not a regular file", path);
        goto out_fail;
    }
    uint64_t fsize = (uint64_t)sb.st_size;
    if (fsize < 8) {
        BT_ERROR("%s: %llu bytes is too short for a safetensors file (truncated?)", path,
                 (unsigned long long)fsize);
        goto out_fail;
    }
    f->map_size = (size_t)fsize;
    f->map = mmap(NULL, f->map_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (f->map == MAP_FAILED) {
        BT_ERROR("%s: cannot map: %s", path, strerror(errno));
        goto out_fail;
    }
    const unsigned char *p = f->map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | p[i];
    if (hlen > fsize - 8 || hlen > ST_MAX_HEADER || hlen < 2) {
        BT_ERROR("%s: header length %llu does not fit the %llu-byte file (truncated or not safetensors)", path,
                 (unsigned long long)hlen, (unsigned long long)fsize);
        goto out_fail;
    }
    const char *hdr = (const char *)p + 8;
    if (hdr[0] != '{') {
        BT_ERROR("%s: header does not start with '{' (not a safetensors file)", path);
        goto out_fail;
    }
    const char *hend = NULL;
    root = cJSON_ParseWithLengthOpts(hdr, (size_t)hlen, &hend, false);
    if (!root || !cJSON_IsObject(root)) {
        BT_ERROR("%s: header is not valid JSON", path);
        goto out_fail;
    }
    for (; hend < hdr + hlen; hend++)
        if (*hend != ' ' && *hend != '\n' && *hend != '\t' && *hend != '\r' && *hend != '\0') {
            BT_ERROR("%s: trailing bytes after the JSON header", path);
            goto out_fail;
        }
    const char *data = hdr + hlen;
    uint64_t data_len = fsize - 8 - hlen;
    int n = cJSON_GetArraySize(root);
    f->tensors = bt_calloc((size_t)n + 1, sizeof *f->tensors);
    f->by_name = bt_calloc((size_t)n + 1, sizeof *f->by_name);
    if (!f->tensors || !f->by_name) goto out_nomem;
    const cJSON *e;
    cJSON_ArrayForEach(e, root)
    {
        int rc;
        if (!strcmp(e->string, "__metadata__"))
            rc = s_parse_metadata(f, e);
        else if ((rc = s_parse_entry(f, e, data, data_len, &f->tensors[f->n])) == BT_OK)
            f->n++;
        if (rc == BT_ENOMEM) goto out_nomem;
        if (rc != BT_OK) goto out_fail;
    }
    qsort(f->tensors, (size_t)f->n, sizeof *f->tensors, s_cmp_offset);
    for (int i = 1; i < f->n; i++) {
        const st_tensor_t *a = &f->tensors[i - 1], *b = &f->tensors[i];
        if ((const char *)a->data + a->nbytes > (const char *)b->data) {
            BT_ERROR("%s: tensors '%s' and '%s' overlap", path, a->name, b->name);
            goto out_fail;
        }
    }
    for (int i = 0; i < f->n; i++) f->by_name[i] = i;
    qsort_r(f->by_name, (size_t)f->n, sizeof(int), s_cmp_name_idx, f->tensors);
    for (int i = 1; i < f->n; i++)
        if (!strcmp(f->tensors[f->by_name[i - 1]].name, f->tensors[f->by_name[i]].name)) {
            BT_ERROR("%s: tensor '%s' appears twice", path, f->tensors[f->by_name[i]].name);
            goto out_fail;
        }
    cJSON_Delete(root);
    close(fd);
    return f;

out_nomem:
    BT_ERROR("%s: out of memory while reading the header", path);
out_fail:
    cJSON_Delete(root);
    if (fd >= 0) close(fd);
    s_free_file(f);
    return NULL;
}

void st_close(st_file_t **pf)
{
    s_free_file(*pf);
    *pf = NULL;
}

st_file_t *st_view_new(const char *label)
{
    st_file_t *v = bt_calloc(1, sizeof *v);
    if (!v || !(v->path = strdup(label))) {
        free(v);
        BT_ERROR("%s: out of memory", label);
        return NULL;
    }
    return v;
}

int st_view_add(st_file_t *v, const char *name, st_dtype_t dtype, int ndim, const int64_t *shape, const void *data)
{
    if (ndim < 0 || ndim > ST_MAX_DIMS || (unsigned)dtype >= ST_DTYPE_COUNT) {
        BT_ERROR("%s: tensor '%s': %d dims or dtype %d out of range", v->path, name, ndim, (int)dtype);
        return BT_EINVAL;
    }
    if ((v->n & (v->n - 1)) == 0) { /* grow at powers of two */
        size_t cap = v->n ? 2 * (size_t)v->n : 16;
        st_tensor_t *t = bt_realloc(v->tensors, cap * sizeof *t);
        if (!t) goto out_nomem;
        v->tensors = t;
    }
    st_tensor_t *t = &v->tensors[v->n];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name))) goto out_nomem;
    t->dtype = dtype;
    t->ndim = ndim;
    size_t n = 1;
    for (int i = 0; i < ndim; i++) {
        t->shape[i] = shape[i];
        n *= (size_t)shape[i];
    }
    t->data = data;
    t->nbytes = n * s_dtypes[dtype].size;
    v->n++;
    return BT_OK;
out_nomem:
    BT_ERROR("%s: out of memory", v->path);
    return BT_ENOMEM;
}

int st_view_seal(st_file_t *v)
{
    free(v->by_name);
    if (!(v->by_name = bt_calloc((size_t)v->n + 1, sizeof *v->by_name))) {
        BT_ERROR("%s: out of memory", v->path);
        return BT_ENOMEM;
    }
    for (int i = 0; i < v->n; i++) v->by_name[i] = i;
    qsort_r(v->by_name, (size_t)v->n, sizeof(int), s_cmp_name_idx, v->tensors);
    for (int i = 1; i < v->n; i++)
        if (!strcmp(v->tensors[v->by_name[i - 1]].name, v->tensors[v->by_name[i]].name)) {
            BT_ERROR("%s: tensor '%s' appears twice", v->path, v->tensors[v->by_name[i]].name);
            return BT_EFORMAT;
        }
    return BT_OK;
}

const char *st_path(const st_file_t *f) { return f->path; }
int st_count(const st_file_t *f) { return f->n; }
const st_tensor_t *st_at(const st_file_t *f, int i) { return i >= 0 && i < f->n ? &f->tensors[i] : NULL; }

const st_tensor_t *st_find(const st_file_t *f, const char *name)
{
    int lo = 0, hi = f->n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        const st_tensor_t *t = &f->tensors[f->by_name[mid]];
        int c = strcmp(name, t->name);
        if (!c) return t;
        if (c < 0)
            hi = mid - 1;
        else
            lo = mid + 1;
    }
    return NULL;
}

const char *st_metadata(const st_file_t *f, const char *key)
{
    for (int i = 0; i < f->n_meta; i++)
        if (!strcmp(f->meta_keys[i], key)) return f->meta_values[i];
    return NULL;
}

int st_metadata_count(const st_file_t *f) { return f->n_meta; }

void st_metadata_at(const st_file_t *f, int i, const char **key, const char **value)
{
    *key = f->meta_keys[i];
    *value = f->meta_values[i];
}

const st_tensor_t *st_expect(const st_file_t *f, const char *name, int ndim, const int64_t *shape)
{
    const st_tensor_t *t = st_find(f, name);
    char a[128], b[128];
    if (!t) {
        BT_ERROR("%s: tensor '%s' is missing (expected shape %s)", f->path, name,
                 st_shape_str(ndim, shape, b, sizeof b));
        return NULL;
    }
    bool ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = shape[i] < 0 || shape[i] == t->shape[i];
    if (!ok) {
        BT_ERROR("%s: tensor '%s' has shape %s, expected %s", f->path, name, st_shape_str(t->ndim, t->shape, a, sizeof a),
                 st_shape_str(ndim, shape, b, sizeof b));
        return NULL;
    }
    return t;
}

/* Element i of an unaligned little-endian buffer, as double. */
static double s_get(const st_tensor_t *t, int64_t i)
{
    const unsigned char *p = (const unsigned char *)t->data + (size_t)i * st_dtype_size(t->dtype);
    switch (t->dtype) {
    case ST_F64: { double v; memcpy(&v, p, 8); return v; }
    case ST_F32: { float v; memcpy(&v, p, 4); return v; }
    case ST_F16: { uint16_t v; memcpy(&v, p, 2); return bt_f16_to_f32(v); }
    case ST_BF16: { uint16_t v; memcpy(&v, p, 2); return bt_bf16_to_f32(v); }
    case ST_I64: { int64_t v; memcpy(&v, p, 8); return (double)v; }
    case ST_I32: { int32_t v; memcpy(&v, p, 4); return v; }
    case ST_I16: { int16_t v; memcpy(&v, p, 2); return v; }
    case ST_I8: return (int8_t)p[0];
    case ST_U8: return p[0];
    case ST_BOOL: return p[0] != 0;
    case ST_DTYPE_COUNT: break;
    }
    return 0;
}

void st_read_f32(const st_tensor_t *t, float *dst)
{
    int64_t n = st_numel(t);
    if (t->dtype == ST_F32) {
        memcpy(dst, t->data, (size_t)n * 4);
        return;
    }
    const unsigned char *p = t->data;
    if (t->dtype == ST_F16 || t->dtype == ST_BF16) {
        for (int64_t i = 0; i < n; i++) {
            uint16_t v;
            memcpy(&v, p + 2 * i, 2);
            dst[i] = t->dtype == ST_F16 ? bt_f16_to_f32(v) : bt_bf16_to_f32(v);
        }
        return;
    }
    for (int64_t i = 0; i < n; i++) dst[i] = (float)s_get(t, i);
}

void st_read_f64(const st_tensor_t *t, double *dst)
{
    int64_t n = st_numel(t);
    for (int64_t i = 0; i < n; i++) dst[i] = s_get(t, i);
}

int st_read_i64(const st_tensor_t *t, int64_t *dst)
{
    if (t->dtype == ST_F64 || t->dtype == ST_F32 || t->dtype == ST_F16 || t->dtype == ST_BF16) return BT_EFORMAT;
    int64_t n = st_numel(t);
    if (t->dtype == ST_I64) {
        memcpy(dst, t->data, (size_t)n * 8);
        return BT_OK;
    }
    for (int64_t i = 0; i < n; i++) dst[i] = (int64_t)s_get(t, i);
    return BT_OK;
}

/* ---- writer ---- */

typedef struct {
    char *name;
    st_dtype_t dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data;
    void *owned; /* non-NULL when the writer holds its own copy */
    size_t nbytes;
} s_wentry_t;

struct st_writer {
    s_wentry_t *e;
    int n, cap;
    char **meta_keys, **meta_values;
    int n_meta;
};

st_writer_t *st_writer_new(void) { return bt_calloc(1, sizeof(st_writer_t)); }

void st_writer_destroy(st_writer_t **pw)
{
    st_writer_t *w = *pw;
    if (!w) return;
    for (int i = 0; i < w->n; i++) {
        free(w->e[i].name);
        free(w->e[i].owned);
    }
    for (int i = 0; i < w->n_meta; i++) {
        free(w->meta_keys[i]);
        free(w->meta_values[i]);
    }
    free(w->meta_keys);
    free(w->meta_values);
    free(w->e);
    free(w);
    *pw = NULL;
}

/* A new entry, or NULL with one line and *rc set. */
static s_wentry_t *s_writer_push(st_writer_t *w, const char *name, st_dtype_t dtype, int ndim, const int64_t *shape,
                                 int *rc)
{
    *rc = BT_EINVAL;
    if (ndim < 0 || ndim > ST_MAX_DIMS || (unsigned)dtype >= ST_DTYPE_COUNT) {
        BT_ERROR("safetensors writer: tensor '%s' has an invalid dtype or %d dims", name, ndim);
        return NULL;
    }
    for (int i = 0; i < w->n; i++)
        if (!strcmp(w->e[i].name, name)) {
            BT_ERROR("safetensors writer: tensor '%s' added twice", name);
            return NULL;
        }
    *rc = BT_ENOMEM;
    if (w->n == w->cap) {
        int cap = w->cap ? 2 * w->cap : 64;
        s_wentry_t *e = bt_realloc(w->e, (size_t)cap * sizeof *e);
        if (!e) {
            BT_ERROR("safetensors writer: out of memory for %d tensors", cap);
            return NULL;
        }
        w->e = e;
        w->cap = cap;
    }
    s_wentry_t *e = &w->e[w->n];
    memset(e, 0, sizeof *e);
    if (!(e->name = strdup(name))) {
        BT_ERROR("safetensors writer: out of memory adding tensor '%s'", name);
        return NULL;
    }
    *rc = BT_OK;
    e->dtype = dtype;
    e->ndim = ndim;
    size_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        e->shape[i] = shape[i];
        numel *= (size_t)shape[i];
    }
    e->nbytes = numel * st_dtype_size(dtype);
    w->n++;
    return e;
}

int st_writer_add(st_writer_t *w, const char *name, st_dtype_t dtype, int ndim, const int64_t *shape,
                  const void *data)
{
    int rc;
    s_wentry_t *e = s_writer_push(w, name, dtype, ndim, shape, &rc);
    if (!e) return rc;
    e->data = data;
    return BT_OK;
}

int st_writer_add_copy(st_writer_t *w, const char *name, st_dtype_t dtype, int ndim, const int64_t *shape,
                       const void *data)
{
    int rc;
    s_wentry_t *e = s_writer_push(w, name, dtype, ndim, shape, &rc);
    if (!e) return rc;
    e->owned = bt_malloc(e->nbytes ? e->nbytes : 1);
    if (!e->owned) {
        BT_ERROR("safetensors writer: out of memory copying tensor '%s' (%zu bytes)", name, e->nbytes);
        return BT_ENOMEM;
    }
    memcpy(e->owned, data, e->nbytes);
    e->data = e->owned;
    return BT_OK;
}

int st_writer_add_f32_as(st_writer_t *w, const char *name, st_dtype_t dtype, int ndim, const int64_t *shape,
                         const float *data)
{
    if (dtype == ST_F32) return st_writer_add_copy(w, name, dtype, ndim, shape, data);
    if (dtype != ST_F16 && dtype != ST_BF16 && dtype != ST_F64) {
        BT_ERROR("safetensors writer: tensor '%s': cannot store float32 data as %s", name, st_dtype_name(dtype));
        return BT_EINVAL;
    }
    int rc;
    s_wentry_t *e = s_writer_push(w, name, dtype, ndim, shape, &rc);
    if (!e) return rc;
    e->owned = bt_malloc(e->nbytes ? e->nbytes : 1);
    if (!e->owned) {
        BT_ERROR("safetensors writer: out of memory converting tensor '%s' (%zu bytes)", name, e->nbytes);
        return BT_ENOMEM;
    }
    size_t n = e->nbytes / st_dtype_size(dtype);
    for (size_t i = 0; i < n; i++) {
        if (dtype == ST_F64) {
            ((double *)e->owned)[i] = data[i];
        } else {
            uint16_t h = dtype == ST_F16 ? bt_f32_to_f16(data[i]) : bt_f32_to_bf16(data[i]);
            memcpy((char *)e->owned + 2 * i, &h, 2);
        }
    }
    e->data = e->owned;
    return BT_OK;
}

int st_writer_set_metadata(st_writer_t *w, const char *key, const char *value)
{
    for (int i = 0; i < w->n_meta; i++)
        if (!strcmp(w->meta_keys[i], key)) {
            char *v = strdup(value);
            if (!v) goto out_nomem;
            free(w->meta_values[i]);
            w->meta_values[i] = v;
            return BT_OK;
        }
    char **k = bt_realloc(w->meta_keys, (size_t)(w->n_meta + 1) * sizeof *k);
    if (!k) goto out_nomem;
    w->meta_keys = k;
    char **v = bt_realloc(w->meta_values, (size_t)(w->n_meta + 1) * sizeof *v);
    if (!v) goto out_nomem;
    w->meta_values = v;
    char *ks = strdup(key), *vs = strdup(value);
    if (!ks || !vs) {
        free(ks);
        free(vs);
        goto out_nomem;
    }
    w->meta_keys[w->n_meta] = ks;
    w->meta_values[w->n_meta] = vs;
    w->n_meta++;
    return BT_OK;
out_nomem:
    BT_ERROR("safetensors writer: out of memory setting metadata '%s'", key);
    return BT_ENOMEM;
}

/* A growable string for the header. */
typedef struct {
    char *s;
    size_t len, cap;
    bool oom;
} s_buf_t;

static void s_put(s_buf_t *b, const char *s, size_t n)
{
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = bt_realloc(b->s, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->s = p;
        b->cap = cap;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

static void s_puts(s_buf_t *b, const char *s) { s_put(b, s, strlen(s)); }

static void s_put_json_string(s_buf_t *b, const char *s)
{
    s_puts(b, "\"");
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8];
        if (*p == '"' || *p == '\\') {
            esc[0] = '\\';
            esc[1] = (char)*p;
            s_put(b, esc, 2);
        } else if (*p < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", *p);
            s_puts(b, esc);
        } else {
            s_put(b, (const char *)p, 1);
        }
    }
    s_puts(b, "\"");
}

int st_writer_save(st_writer_t *w, const char *path)
{
    s_buf_t h = {0};
    char num[64];
    s_puts(&h, "{");
    if (w->n_meta) {
        s_puts(&h, "\"__metadata__\":{");
        for (int i = 0; i < w->n_meta; i++) {
            if (i) s_puts(&h, ",");
            s_put_json_string(&h, w->meta_keys[i]);
            s_puts(&h, ":");
            s_put_json_string(&h, w->meta_values[i]);
        }
        s_puts(&h, "}");
    }
    uint64_t off = 0;
    for (int i = 0; i < w->n; i++) {
        const s_wentry_t *e = &w->e[i];
        if (i || w->n_meta) s_puts(&h, ",");
        s_put_json_string(&h, e->name);
        s_puts(&h, ":{\"dtype\":\"");
        s_puts(&h, st_dtype_name(e->dtype));
        s_puts(&h, "\",\"shape\":[");
        for (int d = 0; d < e->ndim; d++) {
            snprintf(num, sizeof num, "%s%lld", d ? "," : "", (long long)e->shape[d]);
            s_puts(&h, num);
        }
        snprintf(num, sizeof num, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                 (unsigned long long)(off + e->nbytes));
        s_puts(&h, num);
        off += e->nbytes;
    }
    s_puts(&h, "}");
    while (!h.oom && h.len % 8) s_puts(&h, " ");
    if (h.oom) {
        free(h.s);
        BT_ERROR("%s: out of memory building the header", path);
        return BT_ENOMEM;
    }
    bt_atomic_file_t af;
    int rc = bt_atomic_open(&af, path);
    if (rc) {
        free(h.s);
        return rc;
    }
    unsigned char lenb[8];
    for (int i = 0; i < 8; i++) lenb[i] = (unsigned char)((uint64_t)h.len >> (8 * i));
    bool ok = fwrite(lenb, 1, 8, af.f) == 8 && fwrite(h.s, 1, h.len, af.f) == h.len;
    for (int i = 0; ok && i < w->n; i++)
        ok = w->e[i].nbytes == 0 || fwrite(w->e[i].data, 1, w->e[i].nbytes, af.f) == w->e[i].nbytes;
    free(h.s);
    if (!ok) {
        BT_ERROR("%s: write failed: %s", path, strerror(errno));
        bt_atomic_abort(&af);
        return BT_EIO;
    }
    return bt_atomic_commit(&af);
}
