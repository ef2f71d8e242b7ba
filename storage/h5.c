/*
 * h5.c — the HDF5 layer: crash-safe files, groups, chunked checksummed
 * datasets, attributes, and HDF5's error stack turned into one log line.
 *
 * Every hid_t opened here is closed in the same function; files are opened with
 * the "strong" close degree so that closing a file never leaves it half-open
 * behind a forgotten handle.
 */
#include "storage/h5.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/fileio.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/status.h"

struct st_h5_file {
    hid_t fid;
    char *path;     /* the target */
    char *tmp_path; /* NULL when reading */
    int datasets;   /* created so far (the test hook counts them) */
};

static pthread_once_t s_once = PTHREAD_ONCE_INIT;

/* The innermost message of the last failed HDF5 call. HDF5 clears its error
 * stack at the start of every API call, so the stack is read by the "automatic"
 * error handler, which runs as a failing call returns; it records instead of
 * printing. */
static _Thread_local char s_last_cause[256];

static herr_t s_walk(unsigned n, const H5E_error2_t *e, void *user)
{
    if (e->desc && e->desc[0]) snprintf(s_last_cause, sizeof s_last_cause, "%s", e->desc); /* keep the innermost */
    return 0;
}

static herr_t s_record(hid_t stack, void *user)
{
    s_last_cause[0] = '\0';
    H5Ewalk2(stack, H5E_WALK_DOWNWARD, s_walk, NULL);
    if (!s_last_cause[0]) snprintf(s_last_cause, sizeof s_last_cause, "HDF5 library error");
    return 0;
}

static void s_init(void)
{
    H5open();
    H5Eset_auto2(H5E_DEFAULT, s_record, NULL);
}

/* ---- errors ---- */

typedef struct {
    char desc[256];
} s_err_t;

/* What the last failed HDF5 call said. */
static const char *s_cause(s_err_t *err)
{
    snprintf(err->desc, sizeof err->desc, "%s", s_last_cause[0] ? s_last_cause : "HDF5 library error");
    return err->desc;
}

#define S_FAIL(f, rc, ...)                                                                                             \
    do {                                                                                                               \
        s_err_t e_;                                                                                                    \
        char what_[512];                                                                                               \
        snprintf(what_, sizeof what_, __VA_ARGS__);                                                                    \
        BT_ERROR("%s: %s: %s", (f)->path, what_, s_cause(&e_));                                                        \
        return rc;                                                                                                     \
    } while (0)

/* ---- types ---- */

const char *st_h5_dtype_name(st_h5_dtype_t dt)
{
    static const char *const names[] = {"u8", "i32", "i64", "u64", "f32", "f64", "str", "other"};
    return (unsigned)dt <= ST_H5_OTHER ? names[dt] : "?";
}

size_t st_h5_dtype_size(st_h5_dtype_t dt)
{
    switch (dt) {
    case ST_H5_U8: return 1;
    case ST_H5_I32: case ST_H5_F32: return 4;
    case ST_H5_I64: case ST_H5_U64: case ST_H5_F64: return 8;
    default: return 0;
    }
}

/* Native memory type of a numeric dtype (not to be closed). */
static hid_t s_mem_type(st_h5_dtype_t dt)
{
    switch (dt) {
    case ST_H5_U8: return H5T_NATIVE_UINT8;
    case ST_H5_I32: return H5T_NATIVE_INT32;
    case ST_H5_I64: return H5T_NATIVE_INT64;
    case ST_H5_U64: return H5T_NATIVE_UINT64;
    case ST_H5_F32: return H5T_NATIVE_FLOAT;
    case ST_H5_F64: return H5T_NATIVE_DOUBLE;
    default: return H5I_INVALID_HID;
    }
}

/* The little-endian file type booth writes. */
static hid_t s_file_type(st_h5_dtype_t dt)
{
    switch (dt) {
    case ST_H5_U8: return H5T_STD_U8LE;
    case ST_H5_I32: return H5T_STD_I32LE;
    case ST_H5_I64: return H5T_STD_I64LE;
    case ST_H5_U64: return H5T_STD_U64LE;
    case ST_H5_F32: return H5T_IEEE_F32LE;
    case ST_H5_F64: return H5T_IEEE_F64LE;
    default: return H5I_INVALID_HID;
    }
}

/* A fixed-length UTF-8 string type of len bytes, NUL-terminated (caller closes):
 * what booth writes, never the variable-length kind (h5.h, "The seal"). */
static hid_t s_fstr_type(size_t len)
{
    hid_t t = H5Tcopy(H5T_C_S1);
    if (t < 0) return t;
    if (H5Tset_size(t, len ? len : 1) < 0 || H5Tset_cset(t, H5T_CSET_UTF8) < 0 ||
        H5Tset_strpad(t, H5T_STR_NULLTERM) < 0) {
        H5Tclose(t);
        return H5I_INVALID_HID;
    }
    return t;
}

/* A variable-length UTF-8 string type (caller closes): read from foreign files only. */
static hid_t s_vstr_type(void)
{
    hid_t t = H5Tcopy(H5T_C_S1);
    if (t < 0) return t;
    if (H5Tset_size(t, H5T_VARIABLE) < 0 || H5Tset_cset(t, H5T_CSET_UTF8) < 0) {
        H5Tclose(t);
        return H5I_INVALID_HID;
    }
    return t;
}

static st_h5_dtype_t s_classify(hid_t t)
{
    H5T_class_t c = H5Tget_class(t);
    size_t size = H5Tget_size(t);
    if (c == H5T_STRING) return ST_H5_STR;
    if (c == H5T_FLOAT) return size == 4 ? ST_H5_F32 : size == 8 ? ST_H5_F64 : ST_H5_OTHER;
    if (c == H5T_INTEGER) {
        bool sign = H5Tget_sign(t) == H5T_SGN_2;
        if (size == 1 && !sign) return ST_H5_U8;
        if (size <= 4 && sign) return ST_H5_I32;
        if (size <= 8 && !sign && size > 4) return ST_H5_U64;
        if (size <= 8) return ST_H5_I64; /* smaller integers widen without loss */
    }
    return ST_H5_OTHER;
}

static bool s_is_int(st_h5_dtype_t d) { return d == ST_H5_U8 || d == ST_H5_I32 || d == ST_H5_I64 || d == ST_H5_U64; }
static bool s_is_float(st_h5_dtype_t d) { return d == ST_H5_F32 || d == ST_H5_F64; }

/* Fills info from a type and a dataspace. */
static int s_info_of(hid_t type, hid_t space, st_h5_info_t *info)
{
    memset(info, 0, sizeof *info);
    info->dtype = s_classify(type);
    int nd = H5Sget_simple_extent_ndims(space);
    if (nd < 0 || nd > ST_H5_MAX_DIMS) return BT_EFORMAT;
    hsize_t dims[ST_H5_MAX_DIMS];
    if (H5Sget_simple_extent_dims(space, dims, NULL) < 0) return BT_EFORMAT;
    info->ndim = nd;
    info->numel = 1;
    for (int i = 0; i < nd; i++) {
        if (dims[i] > (hsize_t)INT64_MAX / 2) return BT_EFORMAT;
        info->shape[i] = (int64_t)dims[i];
        if (info->shape[i] && info->numel > INT64_MAX / 2 / info->shape[i]) return BT_EFORMAT;
        info->numel *= info->shape[i];
    }
    return BT_OK;
}

static char *s_shape_str(int ndim, const int64_t *shape, char *buf, size_t len)
{
    size_t o = (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < ndim && o < len; i++)
        o += (size_t)snprintf(buf + o, len - o, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (o < len) snprintf(buf + o, len - o, "]");
    return buf;
}

/* ---- files ---- */

static hid_t s_fapl(void)
{
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl < 0) return fapl;
    /* the 1.10 structures carry checksums (superblock, object headers, chunk
     * indexes); strong close releases everything on close */
    if (H5Pset_libver_bounds(fapl, H5F_LIBVER_V110, H5F_LIBVER_V110) < 0 ||
        H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG) < 0) {
        H5Pclose(fapl);
        return H5I_INVALID_HID;
    }
    return fapl;
}

static void s_file_free(st_h5_file_t *f)
{
    free(f->path);
    free(f->tmp_path);
    free(f);
}

/* ---- the seal (h5.h) ---- */

#define S_SEAL_BYTES 512
#define S_SEAL_MAGIC "booth-hdf5-seal "

/* XXH64 of fd's bytes from S_SEAL_BYTES to size. */
static int s_seal_hash(int fd, off_t size, uint64_t *digest)
{
    enum { CHUNK = 1 << 20 };
    unsigned char *buf = bt_malloc(CHUNK);
    if (!buf) return BT_ENOMEM;
    bt_xxh64_t h;
    bt_xxh64_init(&h, 0);
    int rc = BT_OK;
    for (off_t off = S_SEAL_BYTES; off < size && rc == BT_OK;) {
        size_t want = (size_t)(size - off < CHUNK ? size - off : CHUNK);
        ssize_t got = pread(fd, buf, want, off);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) {
            rc = BT_EIO;
            break;
        }
        bt_xxh64_update(&h, buf, (size_t)got);
        off += got;
    }
    free(buf);
    *digest = bt_xxh64_digest(&h);
    return rc;
}

/* Writes the seal into the user block of a finished (closed) file. */
static int s_seal(const char *path, const char *tmp)
{
    int fd = open(tmp, O_RDWR);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        BT_ERROR("%s: cannot seal %s: %s", path, tmp, strerror(errno));
        if (fd >= 0) close(fd);
        return BT_EIO;
    }
    uint64_t digest = 0;
    int rc = st.st_size < S_SEAL_BYTES ? BT_EIO : s_seal_hash(fd, st.st_size, &digest);
    char block[S_SEAL_BYTES] = {0};
    if (rc == BT_OK) {
        char hex[BT_HASH_HEX];
        bt_hash_hex(digest, hex);
        snprintf(block, sizeof block, S_SEAL_MAGIC "1\nbytes %lld\nxxh64 %s\n", (long long)st.st_size, hex);
        if (pwrite(fd, block, sizeof block, 0) != (ssize_t)sizeof block) rc = BT_EIO;
    }
    int err = errno;
    close(fd);
    if (rc == BT_ENOMEM)
        BT_ERROR("%s: out of memory sealing %s", path, tmp);
    else if (rc)
        BT_ERROR("%s: cannot seal %s: %s", path, tmp, strerror(err));
    return rc;
}

/* Checks the seal of a file that has one (h5.h). BT_OK: sealed and intact, or not sealed. */
static int s_check_seal(const char *path, off_t size)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        BT_ERROR("%s: cannot open: %s", path, strerror(errno));
        return BT_EIO;
    }
    char block[S_SEAL_BYTES + 1] = {0};
    ssize_t got = pread(fd, block, S_SEAL_BYTES, 0);
    int rc = BT_OK;
    /* a seal whose first bytes were damaged is still a seal: most of the magic is enough */
    int same = 0;
    for (size_t i = 0; got >= (ssize_t)strlen(S_SEAL_MAGIC) && i < strlen(S_SEAL_MAGIC); i++)
        same += block[i] == S_SEAL_MAGIC[i];
    if (same >= 12) {
        int version = 0;
        long long bytes = -1;
        char hex[32] = "";
        int end = 0;
        bool padded = true; /* after the text, NULs only: a flipped byte there is a corrupt file too */
        if (same == (int)strlen(S_SEAL_MAGIC) &&
            sscanf(block + strlen(S_SEAL_MAGIC), "%d\nbytes %lld\nxxh64 %16[0-9a-f]\n%n", &version, &bytes, hex,
                   &end) == 3)
            for (size_t i = strlen(S_SEAL_MAGIC) + (size_t)end; i < (size_t)got; i++) padded &= block[i] == 0;
        if (end == 0 || strlen(hex) != 16 || !padded) {
            BT_ERROR("%s: corrupt: its booth seal (the first 512 bytes) cannot be read", path);
            rc = BT_EFORMAT;
        } else if (version != 1) {
            BT_ERROR("%s: sealed by a newer booth (seal version %d; this booth reads version 1)", path, version);
            rc = BT_EUNSUPPORTED;
        } else if (bytes != (long long)size) {
            if ((long long)size < bytes)
                BT_ERROR("%s: truncated: %lld of the %lld bytes booth wrote (an interrupted copy or download)", path,
                         (long long)size, bytes);
            else
                BT_ERROR("%s: changed since booth wrote it: %lld bytes, booth wrote %lld (an edit by another tool, "
                         "or a copy error); nothing was read",
                         path, (long long)size, bytes);
            rc = BT_EFORMAT;
        } else {
            uint64_t digest;
            char have[BT_HASH_HEX];
            rc = s_seal_hash(fd, size, &digest);
            if (rc == BT_ENOMEM) {
                BT_ERROR("%s: out of memory checking the seal", path);
            } else if (rc) {
                BT_ERROR("%s: read error: %s", path, strerror(errno));
            } else if (bt_hash_hex(digest, have), strcmp(have, hex)) {
                BT_ERROR("%s: corrupt: its checksum does not match (xxh64 %s, booth wrote %s): a disk or copy "
                         "error, or an edit by another tool; nothing was read",
                         path, have, hex);
                rc = BT_EFORMAT;
            }
        }
    }
    close(fd);
    return rc;
}

st_h5_file_t *st_h5_create(const char *path)
{
    pthread_once(&s_once, s_init);
    if (bt_replaceable(path)) return NULL;
    st_h5_file_t *f = bt_calloc(1, sizeof *f);
    size_t n = strlen(path) + 32;
    if (!f || !(f->path = strdup(path)) || !(f->tmp_path = bt_malloc(n))) {
        if (f) s_file_free(f);
        BT_ERROR("%s: out of memory", path);
        return NULL;
    }
    snprintf(f->tmp_path, n, "%s.tmp.%ld", path, (long)getpid());
    hid_t fapl = s_fapl(), fcpl = H5Pcreate(H5P_FILE_CREATE);
    f->fid = H5I_INVALID_HID;
    if (fapl >= 0 && fcpl >= 0 && H5Pset_obj_track_times(fcpl, 0) >= 0 &&
        H5Pset_userblock(fcpl, S_SEAL_BYTES) >= 0)
        f->fid = H5Fcreate(f->tmp_path, H5F_ACC_TRUNC, fcpl, fapl);
    if (f->fid < 0) {
        s_err_t e;
        BT_ERROR("%s: cannot create %s: %s", path, f->tmp_path, s_cause(&e));
        unlink(f->tmp_path);
        s_file_free(f);
        f = NULL;
    }
    if (fapl >= 0) H5Pclose(fapl);
    if (fcpl >= 0) H5Pclose(fcpl);
    return f;
}

int st_h5_commit(st_h5_file_t **pf)
{
    st_h5_file_t *f = *pf;
    if (!f) return BT_EINVAL;
    *pf = NULL;
    int rc = BT_OK;
    if (H5Fclose(f->fid) < 0) {
        s_err_t e;
        BT_ERROR("%s: cannot finish writing %s: %s", f->path, f->tmp_path, s_cause(&e));
        rc = BT_EIO;
    }
    if (rc == BT_OK) rc = s_seal(f->path, f->tmp_path);
    if (rc == BT_OK) rc = bt_fsync_rename(f->tmp_path, f->path);
    if (rc) unlink(f->tmp_path);
    s_file_free(f);
    return rc;
}

void st_h5_abort(st_h5_file_t **pf)
{
    st_h5_file_t *f = *pf;
    if (!f) return;
    *pf = NULL;
    H5Fclose(f->fid);
    H5Eclear2(H5E_DEFAULT);
    unlink(f->tmp_path);
    s_file_free(f);
}

int st_h5_remove_stale_temps(const char *path)
{
    char *copy = strdup(path);
    if (!copy) return BT_ENOMEM;
    char *slash = strrchr(copy, '/');
    const char *dir = slash ? (slash == copy ? "/" : copy) : ".", *base = slash ? slash + 1 : copy;
    if (slash) *slash = '\0';
    size_t bl = strlen(base);
    int removed = 0;
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (strncmp(e->d_name, base, bl) || strncmp(e->d_name + bl, ".tmp.", 5)) continue;
        char *end;
        long pid = strtol(e->d_name + bl + 5, &end, 10);
        if (*end || pid <= 0 || pid == (long)getpid() || kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue;
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        if (unlink(p) == 0) removed++;
    }
    if (d) closedir(d);
    free(copy);
    return removed;
}

/* Is there an HDF5 signature at 0, 512, 1024, ... (where a user block may put it)? */
static bool s_has_signature(const char *path, off_t size)
{
    static const unsigned char sig[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
    int fd = open(path, O_RDONLY);
    if (fd < 0) return false;
    bool found = false;
    for (off_t off = 0; off + 8 <= size && off <= (off_t)1 << 20 && !found; off = off ? 2 * off : 512) {
        unsigned char b[8];
        found = pread(fd, b, 8, off) == 8 && !memcmp(b, sig, 8);
    }
    close(fd);
    return found;
}

st_h5_file_t *st_h5_open(const char *path)
{
    pthread_once(&s_once, s_init);
    struct stat st;
    if (stat(path, &st) != 0) {
        BT_ERROR("%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    if (!S_ISREG(st.st_mode)) {
        BT_ERROR("%s: not a regular file", path);
        return NULL;
    }
    if (st.st_size == 0) {
        BT_ERROR("%s: empty file (not HDF5)", path);
        return NULL;
    }
    if (s_check_seal(path, st.st_size)) return NULL;
    st_h5_file_t *f = bt_calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) {
        free(f);
        BT_ERROR("%s: out of memory", path);
        return NULL;
    }
    hid_t fapl = s_fapl();
    f->fid = fapl >= 0 ? H5Fopen(path, H5F_ACC_RDONLY, fapl) : H5I_INVALID_HID;
    if (fapl >= 0) H5Pclose(fapl);
    if (f->fid < 0) {
        s_err_t e;
        const char *cause = s_cause(&e);
        if (!s_has_signature(path, st.st_size))
            BT_ERROR("%s: not an HDF5 file (no HDF5 signature; %lld bytes)", path, (long long)st.st_size);
        else
            BT_ERROR("%s: truncated, corrupt or unfinished HDF5 file (%lld bytes): %s", path, (long long)st.st_size,
                     cause);
        s_file_free(f);
        return NULL;
    }
    return f;
}

void st_h5_close(st_h5_file_t **pf)
{
    st_h5_file_t *f = *pf;
    if (!f) return;
    *pf = NULL;
    if (f->tmp_path) { /* a writer closed without commit: same as abort */
        *pf = f;
        st_h5_abort(pf);
        return;
    }
    H5Fclose(f->fid);
    H5Eclear2(H5E_DEFAULT);
    s_file_free(f);
}

const char *st_h5_path(const st_h5_file_t *f) { return f->path; }

/* ---- groups ---- */

static const char *s_obj(const char *path) { return !path || !path[0] ? "/" : path; }

bool st_h5_exists(st_h5_file_t *f, const char *path)
{
    if (!path || !path[0] || !strcmp(path, "/")) return true;
    char *p = strdup(path);
    if (!p) return false;
    bool ok = true;
    /* H5Lexists needs every parent to exist: check them one level at a time */
    for (char *s = p + (p[0] == '/'); ok; s++) {
        if (*s == '/' || *s == '\0') {
            char c = *s;
            *s = '\0';
            ok = H5Lexists(f->fid, p, H5P_DEFAULT) > 0;
            if (ok && c) { /* a parent must be a group */
                H5O_info_t oi;
                ok = H5Oget_info_by_name(f->fid, p, &oi, H5P_DEFAULT) >= 0 && oi.type == H5O_TYPE_GROUP;
            }
            *s = c;
            if (!c) break;
        }
    }
    H5Eclear2(H5E_DEFAULT);
    free(p);
    return ok;
}

bool st_h5_is_group(st_h5_file_t *f, const char *path)
{
    if (!st_h5_exists(f, path)) return false;
    H5O_info_t oi;
    bool g = H5Oget_info_by_name(f->fid, s_obj(path), &oi, H5P_DEFAULT) >= 0 && oi.type == H5O_TYPE_GROUP;
    H5Eclear2(H5E_DEFAULT);
    return g;
}

int st_h5_group(st_h5_file_t *f, const char *path, bool ordered)
{
    char *p = strdup(path);
    if (!p) return BT_ENOMEM;
    int rc = BT_OK;
    for (char *s = p + (p[0] == '/'); rc == BT_OK; s++) {
        if (*s != '/' && *s != '\0') continue;
        char c = *s;
        *s = '\0';
        if (!st_h5_exists(f, p)) {
            hid_t gcpl = H5Pcreate(H5P_GROUP_CREATE), g = H5I_INVALID_HID;
            if (gcpl >= 0 && H5Pset_obj_track_times(gcpl, 0) >= 0 &&
                (!ordered || c ||
                 H5Pset_link_creation_order(gcpl, H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED) >= 0))
                g = H5Gcreate2(f->fid, p, H5P_DEFAULT, gcpl, H5P_DEFAULT);
            if (gcpl >= 0) H5Pclose(gcpl);
            if (g < 0) {
                s_err_t e;
                BT_ERROR("%s: cannot create group '%s': %s", f->path, p, s_cause(&e));
                rc = BT_EIO;
            } else {
                H5Gclose(g);
            }
        }
        *s = c;
        if (!c) break;
    }
    free(p);
    return rc;
}

int st_h5_copy(st_h5_file_t *dst, const char *dst_path, st_h5_file_t *src, const char *src_path)
{
    if (!dst->tmp_path) return BT_EINVAL;
    if (!st_h5_exists(src, src_path)) {
        BT_ERROR("%s: no '%s' to copy", src->path, src_path);
        return BT_ENOTFOUND;
    }
    if (H5Ocopy(src->fid, src_path, dst->fid, dst_path, H5P_DEFAULT, H5P_DEFAULT) < 0)
        S_FAIL(dst, BT_EIO, "cannot copy '%s' from %s", src_path, src->path);
    return BT_OK;
}

typedef struct {
    char **names;
    int n, cap;
    bool oom;
} s_names_t;

static herr_t s_collect(hid_t g, const char *name, const H5L_info_t *info, void *user)
{
    s_names_t *l = user;
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 64;
        char **p = bt_realloc(l->names, (size_t)cap * sizeof *p);
        if (!p) {
            l->oom = true;
            return -1;
        }
        l->names = p;
        l->cap = cap;
    }
    if (!(l->names[l->n] = strdup(name))) {
        l->oom = true;
        return -1;
    }
    l->n++;
    return 0;
}

void st_h5_free_names(char **names, int n)
{
    for (int i = 0; names && i < n; i++) free(names[i]);
    free(names);
}

int st_h5_list(st_h5_file_t *f, const char *group, char ***names, int *n)
{
    *names = NULL;
    *n = 0;
    if (!st_h5_is_group(f, group)) {
        BT_ERROR("%s: no group '%s'", f->path, s_obj(group));
        return BT_ENOTFOUND;
    }
    hid_t g = H5Gopen2(f->fid, s_obj(group), H5P_DEFAULT);
    if (g < 0) S_FAIL(f, BT_EFORMAT, "cannot open group '%s'", s_obj(group));
    hid_t gcpl = H5Gget_create_plist(g);
    unsigned order = 0;
    if (gcpl >= 0) {
        H5Pget_link_creation_order(gcpl, &order);
        H5Pclose(gcpl);
    }
    s_names_t l = {0};
    hsize_t idx = 0;
    herr_t r = H5Literate(g, (order & H5P_CRT_ORDER_INDEXED) ? H5_INDEX_CRT_ORDER : H5_INDEX_NAME, H5_ITER_INC,
                           &idx, s_collect, &l);
    H5Gclose(g);
    if (r < 0) {
        st_h5_free_names(l.names, l.n);
        if (l.oom) {
            H5Eclear2(H5E_DEFAULT);
            return BT_ENOMEM;
        }
        S_FAIL(f, BT_EFORMAT, "cannot list group '%s'", s_obj(group));
    }
    *names = l.names;
    *n = l.n;
    return BT_OK;
}

/* ---- datasets ---- */

static void s_maybe_stall(st_h5_file_t *f)
{
    const char *hook = getenv("BOOTH_TEST_H5_STALL");
    if (!hook || !f->tmp_path) return;
    const char *colon = strrchr(hook, ':');
    size_t nl = colon ? (size_t)(colon - hook) : 0, pl = strlen(f->path);
    if (!colon || nl == 0 || nl > pl || strncmp(f->path + pl - nl, hook, nl) || atoi(colon + 1) != f->datasets) return;
    H5Fflush(f->fid, H5F_SCOPE_GLOBAL);
    fprintf(stderr, "booth: test hook BOOTH_TEST_H5_STALL: stalled writing %s (dataset %d)\n", f->tmp_path,
            f->datasets);
    fflush(stderr);
    for (;;) pause();
}

int st_h5_create_dataset(st_h5_file_t *f, const char *name, st_h5_dtype_t dtype, int ndim, const int64_t *shape,
                         const st_h5_opts_t *opts)
{
    hid_t ftype = s_file_type(dtype);
    if (!f->tmp_path || ftype < 0 || ndim < 1 || ndim > ST_H5_MAX_DIMS) {
        BT_ERROR("%s: dataset '%s': bad arguments (dtype %s, %d dims)", f->path, name, st_h5_dtype_name(dtype), ndim);
        return BT_EINVAL;
    }
    f->datasets++;
    s_maybe_stall(f);
    hsize_t dims[ST_H5_MAX_DIMS], chunk[ST_H5_MAX_DIMS];
    int64_t row_bytes = (int64_t)st_h5_dtype_size(dtype);
    bool empty = false;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) {
            BT_ERROR("%s: dataset '%s': negative dimension", f->path, name);
            return BT_EINVAL;
        }
        dims[i] = chunk[i] = (hsize_t)shape[i];
        empty |= shape[i] == 0;
        if (i) row_bytes *= shape[i];
    }
    int64_t rows = opts && opts->rows_per_chunk > 0 ? opts->rows_per_chunk
                   : row_bytes > 0                  ? ((int64_t)1 << 20) / row_bytes
                                                    : shape[0];
    if (rows < 1) rows = 1;
    if (rows < shape[0]) chunk[0] = (hsize_t)rows;
    int rc = BT_OK;
    hid_t space = H5Screate_simple(ndim, dims, NULL), dcpl = H5Pcreate(H5P_DATASET_CREATE), d = H5I_INVALID_HID;
    /* zero-filled when a chunk is first allocated: a chunk written a row at a
     * time never carries uninitialised memory into the file */
    if (space < 0 || dcpl < 0 || H5Pset_obj_track_times(dcpl, 0) < 0 ||
        H5Pset_fill_time(dcpl, H5D_FILL_TIME_ALLOC) < 0)
        rc = BT_EINTERNAL;
    if (rc == BT_OK && !empty) { /* a zero-size dataset stays contiguous: chunks cannot be empty */
        if (H5Pset_chunk(dcpl, ndim, chunk) < 0 || H5Pset_fletcher32(dcpl) < 0 ||
            (opts && opts->deflate > 0 && H5Pset_deflate(dcpl, (unsigned)(opts->deflate > 9 ? 9 : opts->deflate)) < 0))
            rc = BT_EINTERNAL;
    }
    if (rc == BT_OK) d = H5Dcreate2(f->fid, name, ftype, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    if (space >= 0) H5Sclose(space);
    if (dcpl >= 0) H5Pclose(dcpl);
    if (d < 0) S_FAIL(f, BT_EIO, "cannot create dataset '%s'", name);
    H5Dclose(d);
    return BT_OK;
}

/* Selects rows [first, first + count) of dataset d; *mspace receives the memory space. */
static int s_select_rows(hid_t d, int64_t first, int64_t count, hid_t *fspace, hid_t *mspace, st_h5_info_t *info)
{
    hid_t type = H5Dget_type(d);
    *fspace = H5Dget_space(d);
    *mspace = H5I_INVALID_HID;
    int rc = type >= 0 && *fspace >= 0 ? s_info_of(type, *fspace, info) : BT_EFORMAT;
    if (type >= 0) H5Tclose(type);
    if (rc) return rc;
    if (info->ndim < 1 || first < 0 || count < 0 || first > info->shape[0] || count > info->shape[0] - first)
        return BT_ESHAPE;
    hsize_t start[ST_H5_MAX_DIMS] = {0}, cnt[ST_H5_MAX_DIMS];
    for (int i = 0; i < info->ndim; i++) cnt[i] = (hsize_t)info->shape[i];
    start[0] = (hsize_t)first;
    cnt[0] = (hsize_t)count;
    if (H5Sselect_hyperslab(*fspace, H5S_SELECT_SET, start, NULL, cnt, NULL) < 0) return BT_EINTERNAL;
    *mspace = H5Screate_simple(info->ndim, cnt, NULL);
    return *mspace < 0 ? BT_EINTERNAL : BT_OK;
}

int st_h5_write_rows(st_h5_file_t *f, const char *name, int64_t first, int64_t count, const void *data)
{
    hid_t d = H5Dopen2(f->fid, name, H5P_DEFAULT);
    if (d < 0) S_FAIL(f, BT_ENOTFOUND, "no dataset '%s' to write", name);
    hid_t fspace, mspace;
    st_h5_info_t info = {0};
    int rc = s_select_rows(d, first, count, &fspace, &mspace, &info);
    hid_t mt = rc == BT_OK ? s_mem_type(info.dtype) : H5I_INVALID_HID;
    if (rc == BT_OK && count > 0 && (mt < 0 || H5Dwrite(d, mt, mspace, fspace, H5P_DEFAULT, data) < 0)) rc = BT_EIO;
    if (fspace >= 0) H5Sclose(fspace);
    if (mspace >= 0) H5Sclose(mspace);
    H5Dclose(d);
    if (rc == BT_ESHAPE) {
        H5Eclear2(H5E_DEFAULT);
        BT_ERROR("%s: rows %lld..%lld are outside dataset '%s'", f->path, (long long)first,
                 (long long)(first + count), name);
        return rc;
    }
    if (rc) S_FAIL(f, rc, "cannot write dataset '%s'", name);
    return BT_OK;
}

int st_h5_write(st_h5_file_t *f, const char *name, st_h5_dtype_t dtype, int ndim, const int64_t *shape,
                const void *data, const st_h5_opts_t *opts)
{
    int rc = st_h5_create_dataset(f, name, dtype, ndim, shape, opts);
    return rc ? rc : st_h5_write_rows(f, name, 0, shape[0], data);
}

int st_h5_write_strings(st_h5_file_t *f, const char *name, int64_t n, const char *const *strs)
{
    if (!f->tmp_path || n < 0) return BT_EINVAL;
    f->datasets++;
    s_maybe_stall(f);
    size_t len = 1; /* fixed length: the longest string and its NUL */
    for (int64_t i = 0; i < n; i++)
        if (strs[i] && strlen(strs[i]) + 1 > len) len = strlen(strs[i]) + 1;
    if ((uint64_t)n > SIZE_MAX / len) return BT_ENOMEM;
    char *v = bt_calloc((size_t)(n ? n : 1), len);
    if (!v) {
        BT_ERROR("%s: out of memory writing strings '%s'", f->path, name);
        return BT_ENOMEM;
    }
    for (int64_t i = 0; i < n; i++)
        if (strs[i]) memcpy(v + (size_t)i * len, strs[i], strlen(strs[i]));
    hsize_t dims[1] = {(hsize_t)n};
    hid_t t = s_fstr_type(len), space = H5Screate_simple(1, dims, NULL), dcpl = H5Pcreate(H5P_DATASET_CREATE);
    hid_t d = H5I_INVALID_HID;
    int rc = BT_OK;
    if (t >= 0 && space >= 0 && dcpl >= 0 && H5Pset_obj_track_times(dcpl, 0) >= 0)
        d = H5Dcreate2(f->fid, name, t, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    if (d < 0 || (n > 0 && H5Dwrite(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, v) < 0)) rc = BT_EIO;
    if (d >= 0) H5Dclose(d);
    if (t >= 0) H5Tclose(t);
    if (space >= 0) H5Sclose(space);
    if (dcpl >= 0) H5Pclose(dcpl);
    free(v);
    if (rc) S_FAIL(f, rc, "cannot write strings '%s'", name);
    return BT_OK;
}

int st_h5_info(st_h5_file_t *f, const char *name, st_h5_info_t *info)
{
    if (!st_h5_exists(f, name) || st_h5_is_group(f, name)) {
        BT_ERROR("%s: no dataset '%s'", f->path, name);
        return BT_ENOTFOUND;
    }
    hid_t d = H5Dopen2(f->fid, name, H5P_DEFAULT);
    if (d < 0) S_FAIL(f, BT_EFORMAT, "cannot open dataset '%s'", name);
    hid_t t = H5Dget_type(d), s = H5Dget_space(d);
    int rc = t >= 0 && s >= 0 ? s_info_of(t, s, info) : BT_EFORMAT;
    if (t >= 0) H5Tclose(t);
    if (s >= 0) H5Sclose(s);
    H5Dclose(d);
    if (rc) S_FAIL(f, rc, "dataset '%s' has an unreadable type or shape", name);
    return BT_OK;
}

/* Is a file element type readable as dtype? */
static int s_check_type(st_h5_file_t *f, const char *name, const st_h5_info_t *info, st_h5_dtype_t dtype)
{
    bool ok = s_is_int(dtype) ? s_is_int(info->dtype) : s_is_float(dtype) ? s_is_float(info->dtype) : false;
    if (!ok) {
        BT_ERROR("%s: dataset '%s' holds %s, expected %s", f->path, name, st_h5_dtype_name(info->dtype),
                 st_h5_dtype_name(dtype));
        return BT_EFORMAT;
    }
    return BT_OK;
}

int st_h5_read(st_h5_file_t *f, const char *name, st_h5_dtype_t dtype, int ndim, const int64_t *shape, void *out)
{
    st_h5_info_t info;
    int rc = st_h5_info(f, name, &info);
    if (rc) return rc;
    bool same = info.ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = shape[i] < 0 || shape[i] == info.shape[i];
    if (!same) {
        char a[160], b[160];
        BT_ERROR("%s: dataset '%s' has shape %s, expected %s", f->path, name,
                 s_shape_str(info.ndim, info.shape, a, sizeof a), s_shape_str(ndim, shape, b, sizeof b));
        return BT_ESHAPE;
    }
    if ((rc = s_check_type(f, name, &info, dtype))) return rc;
    if (info.numel == 0) return BT_OK;
    hid_t d = H5Dopen2(f->fid, name, H5P_DEFAULT);
    if (d < 0) S_FAIL(f, BT_EFORMAT, "cannot open dataset '%s'", name);
    herr_t r = H5Dread(d, s_mem_type(dtype), H5S_ALL, H5S_ALL, H5P_DEFAULT, out);
    H5Dclose(d);
    if (r < 0) S_FAIL(f, BT_EFORMAT, "cannot read dataset '%s'", name);
    return BT_OK;
}

int st_h5_read_rows(st_h5_file_t *f, const char *name, st_h5_dtype_t dtype, int64_t first, int64_t count, void *out)
{
    st_h5_info_t info;
    int rc = st_h5_info(f, name, &info);
    if (rc || (rc = s_check_type(f, name, &info, dtype))) return rc;
    hid_t d = H5Dopen2(f->fid, name, H5P_DEFAULT);
    if (d < 0) S_FAIL(f, BT_EFORMAT, "cannot open dataset '%s'", name);
    hid_t fspace, mspace;
    rc = s_select_rows(d, first, count, &fspace, &mspace, &info);
    if (rc == BT_OK && count > 0 && H5Dread(d, s_mem_type(dtype), mspace, fspace, H5P_DEFAULT, out) < 0)
        rc = BT_EFORMAT;
    if (fspace >= 0) H5Sclose(fspace);
    if (mspace >= 0) H5Sclose(mspace);
    H5Dclose(d);
    if (rc == BT_ESHAPE) {
        H5Eclear2(H5E_DEFAULT);
        BT_ERROR("%s: rows %lld..%lld are outside dataset '%s' (%lld rows)", f->path, (long long)first,
                 (long long)(first + count), name, (long long)(info.ndim ? info.shape[0] : 0));
        return rc;
    }
    if (rc) S_FAIL(f, rc, "cannot read dataset '%s'", name);
    return BT_OK;
}

/* Reads n strings (variable or fixed length) from an attribute or dataset. */
static int s_read_strs(hid_t obj, bool is_attr, hid_t ftype, int64_t n, char **out)
{
    int rc = BT_OK;
    if (H5Tis_variable_str(ftype) > 0) {
        hid_t mt = s_vstr_type();
        char **v = bt_calloc((size_t)(n ? n : 1), sizeof *v);
        if (mt < 0 || !v) rc = BT_ENOMEM;
        herr_t r = rc ? -1 : is_attr ? H5Aread(obj, mt, v) : H5Dread(obj, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, v);
        if (rc == BT_OK && r < 0) rc = BT_EFORMAT;
        for (int64_t i = 0; i < n && v; i++) {
            if (rc == BT_OK && !(out[i] = strdup(v[i] ? v[i] : ""))) rc = BT_ENOMEM;
            if (r >= 0 && v[i]) H5free_memory(v[i]);
        }
        free(v);
        if (mt >= 0) H5Tclose(mt);
        return rc;
    }
    size_t len = H5Tget_size(ftype);
    if (len == 0 || len > (1u << 24) || (uint64_t)n > ((uint64_t)1 << 30) / len) return BT_EFORMAT;
    hid_t mt = H5Tcopy(H5T_C_S1);
    char *buf = bt_malloc(len * (size_t)(n ? n : 1));
    H5T_cset_t cset = H5Tget_cset(ftype); /* HDF5 converts no character set into another */
    if (mt < 0 || !buf || H5Tset_size(mt, len) < 0 || H5Tset_strpad(mt, H5T_STR_NULLPAD) < 0 ||
        (cset >= 0 && H5Tset_cset(mt, cset) < 0))
        rc = BT_ENOMEM;
    if (rc == BT_OK && (is_attr ? H5Aread(obj, mt, buf) : H5Dread(obj, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf)) < 0)
        rc = BT_EFORMAT;
    for (int64_t i = 0; i < n && rc == BT_OK; i++)
        if (!(out[i] = strndup(buf + (size_t)i * len, len))) rc = BT_ENOMEM;
    free(buf);
    if (mt >= 0) H5Tclose(mt);
    return rc;
}

int st_h5_read_strings(st_h5_file_t *f, const char *name, int64_t n, char ***out)
{
    *out = NULL;
    st_h5_info_t info;
    int rc = st_h5_info(f, name, &info);
    if (rc) return rc;
    if (info.dtype != ST_H5_STR || info.ndim != 1 || info.shape[0] != n) {
        char a[160];
        BT_ERROR("%s: dataset '%s' is %s %s, expected %lld strings", f->path, name, st_h5_dtype_name(info.dtype),
                 s_shape_str(info.ndim, info.shape, a, sizeof a), (long long)n);
        return BT_EFORMAT;
    }
    char **v = bt_calloc((size_t)(n ? n : 1), sizeof *v);
    if (!v) return BT_ENOMEM;
    hid_t d = H5Dopen2(f->fid, name, H5P_DEFAULT), t = d >= 0 ? H5Dget_type(d) : H5I_INVALID_HID;
    rc = t >= 0 ? s_read_strs(d, false, t, n, v) : BT_EFORMAT;
    if (t >= 0) H5Tclose(t);
    if (d >= 0) H5Dclose(d);
    if (rc) {
        st_h5_free_names(v, (int)n);
        if (rc == BT_ENOMEM) return rc;
        S_FAIL(f, rc, "cannot read strings '%s'", name);
    }
    *out = v;
    return BT_OK;
}

/* ---- attributes ---- */

static int s_attr_write(st_h5_file_t *f, const char *obj, const char *key, hid_t ftype, hid_t mtype,
                        const void *value)
{
    hid_t o = H5Oopen(f->fid, s_obj(obj), H5P_DEFAULT);
    if (o < 0) S_FAIL(f, BT_ENOTFOUND, "no object '%s' for attribute '%s'", s_obj(obj), key);
    if (H5Aexists(o, key) > 0) H5Adelete(o, key);
    hid_t s = H5Screate(H5S_SCALAR), a = H5I_INVALID_HID;
    if (s >= 0) a = H5Acreate2(o, key, ftype, s, H5P_DEFAULT, H5P_DEFAULT);
    int rc = a >= 0 && H5Awrite(a, mtype, value) >= 0 ? BT_OK : BT_EIO;
    if (a >= 0) H5Aclose(a);
    if (s >= 0) H5Sclose(s);
    H5Oclose(o);
    if (rc) S_FAIL(f, rc, "cannot write attribute '%s' of '%s'", key, s_obj(obj));
    return BT_OK;
}

int st_h5_attr_set_str(st_h5_file_t *f, const char *obj, const char *key, const char *value)
{
    const char *v = value ? value : "";
    hid_t t = s_fstr_type(strlen(v) + 1);
    if (t < 0) return BT_EINTERNAL;
    int rc = s_attr_write(f, obj, key, t, t, v);
    H5Tclose(t);
    return rc;
}

int st_h5_attr_set_i64(st_h5_file_t *f, const char *obj, const char *key, int64_t value)
{
    return s_attr_write(f, obj, key, H5T_STD_I64LE, H5T_NATIVE_INT64, &value);
}

int st_h5_attr_set_u64(st_h5_file_t *f, const char *obj, const char *key, uint64_t value)
{
    return s_attr_write(f, obj, key, H5T_STD_U64LE, H5T_NATIVE_UINT64, &value);
}

int st_h5_attr_set_f64(st_h5_file_t *f, const char *obj, const char *key, double value)
{
    return s_attr_write(f, obj, key, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &value);
}

int st_h5_attr_set_f32(st_h5_file_t *f, const char *obj, const char *key, float value)
{
    return s_attr_write(f, obj, key, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, &value);
}

bool st_h5_attr_exists(st_h5_file_t *f, const char *obj, const char *key)
{
    if (!st_h5_exists(f, obj)) return false;
    bool r = H5Aexists_by_name(f->fid, s_obj(obj), key, H5P_DEFAULT) > 0;
    H5Eclear2(H5E_DEFAULT);
    return r;
}

/* Opens attribute key of obj and checks it holds one value of the wanted kind. */
static hid_t s_attr_open(st_h5_file_t *f, const char *obj, const char *key, bool want_str, hid_t *type)
{
    *type = H5I_INVALID_HID;
    if (!st_h5_attr_exists(f, obj, key)) {
        BT_ERROR("%s: '%s' has no attribute '%s'", f->path, s_obj(obj), key);
        return H5I_INVALID_HID;
    }
    hid_t a = H5Aopen_by_name(f->fid, s_obj(obj), key, H5P_DEFAULT, H5P_DEFAULT);
    if (a < 0) {
        s_err_t e;
        BT_ERROR("%s: cannot open attribute '%s' of '%s': %s", f->path, key, s_obj(obj), s_cause(&e));
        return a;
    }
    hid_t t = H5Aget_type(a), s = H5Aget_space(a);
    bool ok = t >= 0 && s >= 0 && H5Sget_simple_extent_npoints(s) == 1;
    st_h5_dtype_t dt = t >= 0 ? s_classify(t) : ST_H5_OTHER;
    ok = ok && (want_str ? dt == ST_H5_STR : s_is_int(dt) || s_is_float(dt));
    if (s >= 0) H5Sclose(s);
    if (!ok) {
        BT_ERROR("%s: attribute '%s' of '%s' is not one %s", f->path, key, s_obj(obj), want_str ? "string" : "number");
        if (t >= 0) H5Tclose(t);
        H5Aclose(a);
        return H5I_INVALID_HID;
    }
    *type = t;
    return a;
}

int st_h5_attr_str(st_h5_file_t *f, const char *obj, const char *key, char **value)
{
    *value = NULL;
    hid_t t, a = s_attr_open(f, obj, key, true, &t);
    if (a < 0) return st_h5_attr_exists(f, obj, key) ? BT_EFORMAT : BT_ENOTFOUND;
    int rc = s_read_strs(a, true, t, 1, value);
    H5Tclose(t);
    H5Aclose(a);
    if (rc && rc != BT_ENOMEM) S_FAIL(f, rc, "cannot read attribute '%s' of '%s'", key, s_obj(obj));
    return rc;
}

static int s_attr_num(st_h5_file_t *f, const char *obj, const char *key, hid_t mtype, void *out)
{
    hid_t t, a = s_attr_open(f, obj, key, false, &t);
    if (a < 0) return st_h5_attr_exists(f, obj, key) ? BT_EFORMAT : BT_ENOTFOUND;
    herr_t r = H5Aread(a, mtype, out);
    H5Tclose(t);
    H5Aclose(a);
    if (r < 0) S_FAIL(f, BT_EFORMAT, "cannot read attribute '%s' of '%s'", key, s_obj(obj));
    return BT_OK;
}

int st_h5_attr_i64(st_h5_file_t *f, const char *obj, const char *key, int64_t *value)
{
    return s_attr_num(f, obj, key, H5T_NATIVE_INT64, value);
}

int st_h5_attr_u64(st_h5_file_t *f, const char *obj, const char *key, uint64_t *value)
{
    return s_attr_num(f, obj, key, H5T_NATIVE_UINT64, value);
}

int st_h5_attr_f64(st_h5_file_t *f, const char *obj, const char *key, double *value)
{
    return s_attr_num(f, obj, key, H5T_NATIVE_DOUBLE, value);
}

static herr_t s_collect_attr(hid_t o, const char *name, const H5A_info_t *info, void *user)
{
    return s_collect(o, name, NULL, user);
}

int st_h5_attr_list(st_h5_file_t *f, const char *obj, char ***names, int *n)
{
    *names = NULL;
    *n = 0;
    hid_t o = st_h5_exists(f, obj) ? H5Oopen(f->fid, s_obj(obj), H5P_DEFAULT) : H5I_INVALID_HID;
    if (o < 0) {
        H5Eclear2(H5E_DEFAULT);
        BT_ERROR("%s: no object '%s'", f->path, s_obj(obj));
        return BT_ENOTFOUND;
    }
    s_names_t l = {0};
    hsize_t idx = 0;
    herr_t r = H5Aiterate2(o, H5_INDEX_NAME, H5_ITER_INC, &idx, s_collect_attr, &l);
    H5Oclose(o);
    if (r < 0) {
        st_h5_free_names(l.names, l.n);
        if (l.oom) {
            H5Eclear2(H5E_DEFAULT);
            return BT_ENOMEM;
        }
        S_FAIL(f, BT_EFORMAT, "cannot list the attributes of '%s'", s_obj(obj));
    }
    *names = l.names;
    *n = l.n;
    return BT_OK;
}

int st_h5_attr_info(st_h5_file_t *f, const char *obj, const char *key, st_h5_info_t *info)
{
    if (!st_h5_attr_exists(f, obj, key)) {
        BT_ERROR("%s: '%s' has no attribute '%s'", f->path, s_obj(obj), key);
        return BT_ENOTFOUND;
    }
    hid_t a = H5Aopen_by_name(f->fid, s_obj(obj), key, H5P_DEFAULT, H5P_DEFAULT);
    if (a < 0) S_FAIL(f, BT_EFORMAT, "cannot open attribute '%s' of '%s'", key, s_obj(obj));
    hid_t t = H5Aget_type(a), s = H5Aget_space(a);
    int rc = t >= 0 && s >= 0 ? s_info_of(t, s, info) : BT_EFORMAT;
    if (t >= 0) H5Tclose(t);
    if (s >= 0) H5Sclose(s);
    H5Aclose(a);
    if (rc) S_FAIL(f, rc, "attribute '%s' of '%s' has an unreadable type", key, s_obj(obj));
    return BT_OK;
}
