/* fileio.c — temp-file + fsync + rename, whole-file reads, mkdir -p. */
#include "common/fileio.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/status.h"

static int s_fsync_dir_of(const char *path)
{
    char *copy = strdup(path);
    if (!copy) return BT_ENOMEM;
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY);
    int rc = BT_OK;
    if (fd >= 0) {
        if (fsync(fd) != 0 && errno != EINVAL) rc = BT_EIO; /* some filesystems refuse dir fsync */
        close(fd);
    }
    free(copy);
    return rc;
}

int bt_replaceable(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0 || S_ISREG(st.st_mode)) return BT_OK;
    BT_ERROR("%s: exists and is not a regular file (%s); booth writes only regular files", path,
             S_ISDIR(st.st_mode)    ? "a folder"
             : S_ISLNK(st.st_mode)  ? "a symbolic link"
             : S_ISFIFO(st.st_mode) ? "a FIFO"
             : S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) ? "a device"
                                                          : "a socket or special file");
    return BT_EINVAL;
}

int bt_atomic_open(bt_atomic_file_t *af, const char *path)
{
    memset(af, 0, sizeof *af);
    if (bt_replaceable(path)) return BT_EINVAL;
    size_t n = strlen(path) + 32;
    af->path = strdup(path);
    af->tmp_path = bt_malloc(n);
    if (!af->path || !af->tmp_path) goto out_nomem;
    snprintf(af->tmp_path, n, "%s.tmp.%ld", path, (long)getpid());
    af->f = fopen(af->tmp_path, "wb");
    if (!af->f) {
        BT_ERROR("%s: cannot create: %s", af->tmp_path, strerror(errno));
        bt_atomic_abort(af);
        return BT_EIO;
    }
    return BT_OK;
out_nomem:
    bt_atomic_abort(af);
    return BT_ENOMEM;
}

void bt_atomic_abort(bt_atomic_file_t *af)
{
    if (af->f) fclose(af->f);
    if (af->tmp_path) unlink(af->tmp_path);
    free(af->tmp_path);
    free(af->path);
    memset(af, 0, sizeof *af);
}

int bt_fsync_rename(const char *tmp_path, const char *path)
{
    int fd = open(tmp_path, O_RDONLY);
    if (fd < 0 || fsync(fd) != 0) {
        BT_ERROR("%s: cannot fsync: %s", tmp_path, strerror(errno));
        if (fd >= 0) close(fd);
        return BT_EIO;
    }
    close(fd);
    if (rename(tmp_path, path) != 0) {
        BT_ERROR("%s: cannot rename to %s: %s", tmp_path, path, strerror(errno));
        return BT_EIO;
    }
    return s_fsync_dir_of(path);
}

int bt_atomic_commit(bt_atomic_file_t *af)
{
    int rc = BT_OK;
    if (fflush(af->f) != 0 || ferror(af->f)) {
        BT_ERROR("%s: write failed: %s", af->path, strerror(errno));
        rc = BT_EIO;
        goto out_abort;
    }
    if (fsync(fileno(af->f)) != 0) {
        BT_ERROR("%s: fsync failed: %s", af->path, strerror(errno));
        rc = BT_EIO;
        goto out_abort;
    }
    if (fclose(af->f) != 0) {
        af->f = NULL;
        BT_ERROR("%s: close failed: %s", af->path, strerror(errno));
        rc = BT_EIO;
        goto out_abort;
    }
    af->f = NULL;
    if (rename(af->tmp_path, af->path) != 0) {
        BT_ERROR("%s: cannot rename temporary file into place: %s", af->path, strerror(errno));
        rc = BT_EIO;
        goto out_abort;
    }
    rc = s_fsync_dir_of(af->path);
    free(af->tmp_path);
    af->tmp_path = NULL; /* renamed: nothing to unlink */
    free(af->path);
    af->path = NULL;
    return rc;
out_abort:
    bt_atomic_abort(af);
    return rc;
}

int bt_read_file(const char *path, char **data, size_t *len)
{
    *data = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        BT_ERROR("%s: cannot open: %s", path, strerror(errno));
        return errno == ENOENT ? BT_ENOTFOUND : BT_EIO;
    }
    int rc = BT_EIO;
    if (fseek(f, 0, SEEK_END) != 0) goto out_close;
    long size = ftell(f);
    if (size < 0 || fseek(f, 0, SEEK_SET) != 0) goto out_close;
    char *buf = bt_malloc((size_t)size + 1);
    if (!buf) {
        rc = BT_ENOMEM;
        goto out_close;
    }
    if (fread(buf, 1, (size_t)size, f) != (size_t)size) {
        free(buf);
        goto out_close;
    }
    buf[size] = '\0';
    *data = buf;
    if (len) *len = (size_t)size;
    rc = BT_OK;
out_close:
    if (rc == BT_EIO) BT_ERROR("%s: read failed", path);
    fclose(f);
    return rc;
}

int bt_mkdirs(const char *path)
{
    char *p = strdup(path);
    if (!p) return BT_ENOMEM;
    int rc = BT_OK;
    for (char *s = p + 1;; s++) {
        if (*s == '/' || *s == '\0') {
            char c = *s;
            *s = '\0';
            if (mkdir(p, 0777) != 0 && errno != EEXIST) {
                BT_ERROR("%s: cannot create directory: %s", p, strerror(errno));
                rc = BT_EIO;
                break;
            }
            *s = c;
            if (c == '\0') break;
        }
    }
    free(p);
    return rc;
}

int bt_mkdirs_for(const char *file_path)
{
    const char *slash = strrchr(file_path, '/');
    if (!slash || slash == file_path) return BT_OK;
    char *dir = strndup(file_path, (size_t)(slash - file_path));
    if (!dir) return BT_ENOMEM;
    int rc = bt_mkdirs(dir);
    free(dir);
    return rc;
}

int bt_write_file_atomic(const char *path, const void *data, size_t len)
{
    bt_atomic_file_t af;
    int rc = bt_atomic_open(&af, path);
    if (rc) return rc;
    if (len && fwrite(data, 1, len, af.f) != len) {
        BT_ERROR("%s: write failed: %s", path, strerror(errno));
        bt_atomic_abort(&af);
        return BT_EIO;
    }
    return bt_atomic_commit(&af);
}

int bt_space_free(const char *path, uint64_t *avail)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == dir) dir[1] = '\0';
    else if (slash) *slash = '\0';
    else snprintf(dir, sizeof dir, ".");
    struct statvfs v;
    if (statvfs(dir, &v) != 0) return BT_EIO;
    *avail = (uint64_t)v.f_bavail * (uint64_t)v.f_frsize;
    return BT_OK;
}

static int s_cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

void bt_free_list(char **list, int n)
{
    for (int i = 0; list && i < n; i++) free(list[i]);
    free(list);
}

int bt_list_dir(const char *dir, bool (*keep)(const char *name, void *user), void *user, bool full_paths, char ***out,
                int *n)
{
    *out = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) {
        if (errno == ENOENT) return BT_OK;
        BT_ERROR("%s: cannot list: %s", dir, strerror(errno));
        return BT_EIO;
    }
    char **v = NULL;
    int cap = 0, rc = BT_OK;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") || (keep && !keep(e->d_name, user))) continue;
        if (*n == cap) {
            cap = cap ? 2 * cap : 32;
            char **p = bt_realloc(v, (size_t)cap * sizeof *p);
            if (!p) {
                rc = BT_ENOMEM;
                break;
            }
            v = p;
        }
        size_t len = (full_paths ? strlen(dir) + 1 : 0) + strlen(e->d_name) + 1;
        if (!(v[*n] = bt_malloc(len))) {
            rc = BT_ENOMEM;
            break;
        }
        snprintf(v[(*n)++], len, "%s%s%s", full_paths ? dir : "", full_paths ? "/" : "", e->d_name);
    }
    closedir(d);
    if (rc) {
        BT_ERROR("%s: out of memory listing it", dir);
        bt_free_list(v, *n);
        *n = 0;
        return rc;
    }
    if (v) qsort(v, (size_t)*n, sizeof *v, s_cmp_str);
    *out = v;
    return BT_OK;
}
