/*
 * h5.h — HDF5 files as booth uses them: groups, n-d arrays and attributes,
 * written crash-safely and read with every size checked first.
 *
 * storage/ knows formats, not models: this layer moves neutral records (a name,
 * an element type, a shape, bytes) and string/number attributes; what the
 * groups of a checkpoint or a prior set mean is docs/FORMAT.md's and
 * diffusion/checkpoint.c's business.
 *
 * Writing: st_h5_create() makes "<path>.tmp.<pid>" in the target's directory;
 * st_h5_commit() closes it, fsyncs it, renames it over <path> and fsyncs the
 * directory. A writer that dies before the rename leaves the old file intact
 * (and a stale temporary that no reader looks at). Files are written with the
 * 1.8+ object format (checksummed superblock and object headers), numeric
 * datasets are chunked with a Fletcher-32 checksum per chunk, and no object
 * records a modification time, so the same content gives the same bytes.
 *
 * Reading: st_h5_open() tells a missing, empty, foreign (not HDF5) or
 * truncated file apart in one line. Readers ask for a dataset's shape before
 * allocating, and st_h5_read() refuses a shape or element type other than
 * the one expected.
 *
 * HDF5's automatic error printing is replaced by a handler that prints nothing
 * and keeps the innermost message of the failing call's error stack; that is
 * translated into the one log line ("ckpt.h5: cannot read dataset 'lora/x':
 * data error detected by Fletcher32 checksum"). Nothing here asserts on file
 * content. A writer killed before its commit leaves a temporary whose
 * superblock still says "open for writing", which readers refuse.
 *
 * The seal. Every file st_h5_create writes starts with a 512-byte HDF5 user
 * block (which libhdf5, h5py and h5dump skip) holding a text header:
 *
 *     booth-hdf5-seal 1\nbytes 1234567\nxxh64 0123456789abcdef\n   (NUL padding)
 *
 * the file's length and the XXH64 of every byte after the block, written at
 * commit. st_h5_open checks both before libhdf5 reads a byte of the file, so a
 * truncated, bit-flipped or partly copied file is refused with one line and
 * never reaches libhdf5's parsers, some of which crash on corrupt input (the
 * global heap of variable-length strings among them). Files without the
 * header (written by other tools, or by booth before the seal) open as
 * before; a sealed file edited in place by another tool (h5py "r+") no longer
 * matches its seal and is refused: write a new file instead. booth writes
 * fixed-length strings only (attributes and datasets), so its files have no
 * global heap at all.
 *
 * Test hook: BOOTH_TEST_H5_STALL="NAME:N" makes a writer whose target path ends
 * in NAME flush what it has written and stop for good (printing one line on
 * stderr) when it is about to create its N-th dataset, so that a test can kill -9
 * it in the middle of a file deterministically. Nothing else reads it.
 */
#ifndef BOOTH_STORAGE_H5_H
#define BOOTH_STORAGE_H5_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ST_H5_MAX_DIMS 8

typedef enum st_h5_dtype {
    ST_H5_U8,
    ST_H5_I32,
    ST_H5_I64,
    ST_H5_U64,
    ST_H5_F32,
    ST_H5_F64,
    ST_H5_STR,   /* variable- or fixed-length strings (UTF-8 when booth writes them) */
    ST_H5_OTHER, /* anything else a foreign file may hold (compound, enum, ...) */
} st_h5_dtype_t;

typedef struct st_h5_file st_h5_file_t;

typedef struct st_h5_info {
    st_h5_dtype_t dtype;
    int ndim;
    int64_t shape[ST_H5_MAX_DIMS];
    int64_t numel;
} st_h5_info_t;

typedef struct st_h5_opts {
    int deflate;            /* 0: stored as is; 1..9: gzip level (images) */
    int64_t rows_per_chunk; /* 0: about 1 MiB per chunk; else this many rows (1 for data written row by row) */
} st_h5_opts_t;

/* "u8", "i32", "i64", "u64", "f32", "f64", "str", "other". */
const char *st_h5_dtype_name(st_h5_dtype_t dt);
size_t st_h5_dtype_size(st_h5_dtype_t dt);

/* ---- files ---- */

/* The temporary file for writing path. NULL with one log line. */
st_h5_file_t *st_h5_create(const char *path);
/* Close, fsync, rename over the target, fsync the directory; *f becomes NULL.
 * On failure the temporary file is removed and the old target is untouched. */
int st_h5_commit(st_h5_file_t **f);
/* Close and delete the temporary file. Safe with *f == NULL. */
void st_h5_abort(st_h5_file_t **f);

/* Deletes "<path>.tmp.<pid>" files that writers no longer running left behind
 * (killed before their commit). Returns how many went. */
int st_h5_remove_stale_temps(const char *path);

/* Read-only. NULL with one log line naming the file and whether it is missing,
 * empty, not HDF5 at all, or an HDF5 file that is truncated or corrupt. */
st_h5_file_t *st_h5_open(const char *path);
void st_h5_close(st_h5_file_t **f);
/* The name the caller gave (the target, also while writing). */
const char *st_h5_path(const st_h5_file_t *f);

/* ---- groups ---- */

/* Creates group `path` ("a/b/c") and any missing parents. ordered: its members
 * are listed in creation order (else by name). Existing groups are fine. */
int st_h5_group(st_h5_file_t *f, const char *path, bool ordered);
/* True if a link `path` exists (every parent must exist too). No log line. */
bool st_h5_exists(st_h5_file_t *f, const char *path);
/* Member names of a group, in creation order when the group tracks it, else by
 * name. *names is a malloc'd array of malloc'd strings (st_h5_free_names). */
int st_h5_list(st_h5_file_t *f, const char *group, char ***names, int *n);
void st_h5_free_names(char **names, int n);
/* True if path names a group (false for a dataset or nothing). */
bool st_h5_is_group(st_h5_file_t *f, const char *path);

/* Copies group or dataset src_path of src (with everything under it and its
 * attributes) to dst_path of dst, whose parent must exist. Chunks move as they
 * are stored — compressed data is not decompressed and compressed again — so
 * copying a prior set is a fraction of writing it. */
int st_h5_copy(st_h5_file_t *dst, const char *dst_path, st_h5_file_t *src, const char *src_path);

/* ---- datasets ---- */

/* A numeric dataset of shape[ndim] (ndim 1..8), to be filled with
 * st_h5_write_rows. Chunked along dim 0 (opts->rows_per_chunk, or about 1 MiB
 * per chunk), Fletcher-32, gzip if opts->deflate; opts may be NULL. A dataset
 * written a row at a time should have one row per chunk: every call opens the
 * dataset afresh, so a chunk spanning calls would be rewritten by each. */
int st_h5_create_dataset(st_h5_file_t *f, const char *name, st_h5_dtype_t dtype, int ndim, const int64_t *shape,
                         const st_h5_opts_t *opts);
/* Rows [first, first + count) along dim 0 of a dataset created above; data
 * holds count rows of the dataset's element type. */
int st_h5_write_rows(st_h5_file_t *f, const char *name, int64_t first, int64_t count, const void *data);
/* create_dataset + write everything. */
int st_h5_write(st_h5_file_t *f, const char *name, st_h5_dtype_t dtype, int ndim, const int64_t *shape,
                const void *data, const st_h5_opts_t *opts);
/* A 1-D dataset of n variable-length UTF-8 strings (NULL entries are ""). */
int st_h5_write_strings(st_h5_file_t *f, const char *name, int64_t n, const char *const *strs);

/* Element type and shape of a dataset. A missing name is BT_ENOTFOUND with one
 * log line. */
int st_h5_info(st_h5_file_t *f, const char *name, st_h5_info_t *info);
/* Reads a whole numeric dataset converted to dtype (integers to integers,
 * floats to floats) into out, after checking it has exactly ndim dimensions of
 * the expected sizes (-1 matches any size; the caller then must have sized out
 * from st_h5_info). A wrong shape is BT_ESHAPE with both shapes in the line. */
int st_h5_read(st_h5_file_t *f, const char *name, st_h5_dtype_t dtype, int ndim, const int64_t *shape, void *out);
/* Rows [first, first + count) along dim 0, converted to dtype. */
int st_h5_read_rows(st_h5_file_t *f, const char *name, st_h5_dtype_t dtype, int64_t first, int64_t count,
                    void *out);
/* A 1-D string dataset of exactly n entries: *out is a malloc'd array of n
 * malloc'd strings (st_h5_free_names(*out, n)). */
int st_h5_read_strings(st_h5_file_t *f, const char *name, int64_t n, char ***out);

/* ---- attributes (on a group or dataset; "/" or "" is the root) ---- */

int st_h5_attr_set_str(st_h5_file_t *f, const char *obj, const char *key, const char *value);
int st_h5_attr_set_i64(st_h5_file_t *f, const char *obj, const char *key, int64_t value);
int st_h5_attr_set_u64(st_h5_file_t *f, const char *obj, const char *key, uint64_t value);
int st_h5_attr_set_f64(st_h5_file_t *f, const char *obj, const char *key, double value);
/* Stored as IEEE float32: settings that are float32 in booth read back exactly and print short. */
int st_h5_attr_set_f32(st_h5_file_t *f, const char *obj, const char *key, float value);

bool st_h5_attr_exists(st_h5_file_t *f, const char *obj, const char *key);
/* Readers: a missing attribute is BT_ENOTFOUND with one log line; a string
 * where a number is expected (or the reverse) is BT_EFORMAT. *value of
 * st_h5_attr_str is malloc'd. Numbers are converted as HDF5 converts them. */
int st_h5_attr_str(st_h5_file_t *f, const char *obj, const char *key, char **value);
int st_h5_attr_i64(st_h5_file_t *f, const char *obj, const char *key, int64_t *value);
int st_h5_attr_u64(st_h5_file_t *f, const char *obj, const char *key, uint64_t *value);
int st_h5_attr_f64(st_h5_file_t *f, const char *obj, const char *key, double *value);
/* Attribute names of an object, by name. */
int st_h5_attr_list(st_h5_file_t *f, const char *obj, char ***names, int *n);
/* Type and shape of an attribute (a scalar has ndim 0). */
int st_h5_attr_info(st_h5_file_t *f, const char *obj, const char *key, st_h5_info_t *info);

#endif
