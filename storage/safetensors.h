/*
 * safetensors.h — the safetensors file format: read (memory-mapped) and write.
 *
 * Format: u64 little-endian header length N, N bytes of JSON
 *   {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
 *    "__metadata__": {"key": "string", ...}}
 * then the raw little-endian data; offsets are relative to the end of the header.
 *
 * storage/ knows formats, not models: a file is a list of neutral records
 * (name, dtype, shape, bytes). Opening validates everything the header claims
 * against the real file size before anything is used, and a lie (offsets past the
 * end, a byte count that does not match dtype x shape, overlapping tensors) is one
 * error line naming the file, the tensor and both sizes.
 */
#ifndef BOOTH_STORAGE_SAFETENSORS_H
#define BOOTH_STORAGE_SAFETENSORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ST_MAX_DIMS 8

typedef enum st_dtype {
    ST_F64, ST_F32, ST_F16, ST_BF16,
    ST_I64, ST_I32, ST_I16, ST_I8, ST_U8, ST_BOOL,
    ST_DTYPE_COUNT
} st_dtype_t;

typedef struct st_tensor {
    const char *name;
    st_dtype_t dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data; /* inside the mapping: not necessarily aligned */
    size_t nbytes;
} st_tensor_t;

typedef struct st_file st_file_t;

const char *st_dtype_name(st_dtype_t dt);
size_t st_dtype_size(st_dtype_t dt);
/* Returns 0 and sets *dt, or BT_EFORMAT for an unknown name. */
int st_dtype_parse(const char *name, st_dtype_t *dt);

/* Maps and validates the file; NULL and one log line on any problem. */
st_file_t *st_open(const char *path);
void st_close(st_file_t **f);

const char *st_path(const st_file_t *f);
int st_count(const st_file_t *f);
/* Tensors in file order (ascending data offset). */
const st_tensor_t *st_at(const st_file_t *f, int i);
/* NULL if absent (no log line: absence is often expected). */
const st_tensor_t *st_find(const st_file_t *f, const char *name);
/* A __metadata__ string, or NULL. */
const char *st_metadata(const st_file_t *f, const char *key);
int st_metadata_count(const st_file_t *f);
/* i-th metadata pair, in file order. */
void st_metadata_at(const st_file_t *f, int i, const char **key, const char **value);

int64_t st_numel(const st_tensor_t *t);
/* "[3, 77, 32]" into buf; returns buf. */
char *st_shape_str(int ndim, const int64_t *shape, char *buf, size_t len);

/* Converts any float dtype (F64/F32/F16/BF16) to float32; dst holds st_numel floats.
 * Integer dtypes are converted by value. Never fails for a validated tensor. */
void st_read_f32(const st_tensor_t *t, float *dst);
/* Converts to float64 (fixtures in F64). */
void st_read_f64(const st_tensor_t *t, double *dst);
/* Integer tensors (I64/I32/I16/I8/U8/BOOL) to int64. Returns BT_EFORMAT for floats. */
int st_read_i64(const st_tensor_t *t, int64_t *dst);

/* Looks up `name`, checks it has exactly the expected shape (ndim dims; a -1 dim
 * matches anything), logs "file: tensor 'name' has shape [..], expected [..]"
 * otherwise. Returns the tensor or NULL. */
const st_tensor_t *st_expect(const st_file_t *f, const char *name, int ndim, const int64_t *shape);

/* ---- views ----
 * A file-like list of records over data that other open files own: tensors of a
 * format whose names (or row ranges) differ from what a reader looks up, such as
 * a single-file checkpoint seen as a model folder's part. st_find, st_at,
 * st_count, st_path work on it; st_close frees the view, never the data. Add the
 * records, then seal (sorts for st_find; a name added twice is an error). */
st_file_t *st_view_new(const char *label);
/* data must hold numel(shape) x dtype bytes for as long as the view is used. */
int st_view_add(st_file_t *v, const char *name, st_dtype_t dtype, int ndim, const int64_t *shape, const void *data);
int st_view_seal(st_file_t *v);

/* ---- writing ---- */
typedef struct st_writer st_writer_t;

st_writer_t *st_writer_new(void);
void st_writer_destroy(st_writer_t **w);
/* Adds a tensor whose data the writer references until save: keep it alive.
 * Names must be unique (BT_EINVAL otherwise). */
int st_writer_add(st_writer_t *w, const char *name, st_dtype_t dtype, int ndim, const int64_t *shape,
                  const void *data);
/* Same, but the writer keeps its own copy. */
int st_writer_add_copy(st_writer_t *w, const char *name, st_dtype_t dtype, int ndim, const int64_t *shape,
                       const void *data);
/* float32 data stored as dtype (F32, F16, BF16 or F64); the writer converts and owns the copy. */
int st_writer_add_f32_as(st_writer_t *w, const char *name, st_dtype_t dtype, int ndim, const int64_t *shape,
                         const float *data);
int st_writer_set_metadata(st_writer_t *w, const char *key, const char *value);
/* Writes atomically (temp file, fsync, rename). */
int st_writer_save(st_writer_t *w, const char *path);

#endif
