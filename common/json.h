/*
 * json.h — typed fields of a JSON object file: the one reader behind the model
 * configs, the scheduler config and the tokenizer files.
 *
 * A getter writes its default when the key is absent; otherwise it checks the
 * value's type and range and, when either is wrong, logs one line naming the
 * file, the key and the cause, returns BT_EFORMAT and leaves *out untouched:
 *
 *   unet/config.json: 'in_channels' is 0, must be in [1, 1000000000]
 *   scheduler_config.json: 'clip_sample' must be true or false, not a number
 *
 * "Absent" means: not in the object, or JSON null (configs write Python's None
 * as null) unless null_is_absent is cleared, or named in the list installed by
 * bt_json_use_defaults (diffusers' "_use_default_values").
 */
#ifndef BOOTH_COMMON_JSON_H
#define BOOTH_COMMON_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct cJSON;

/* Caller-owned: filled by bt_json_open or bt_json_parse, released by bt_json_free. */
typedef struct bt_json {
    struct cJSON *root;  /* the top-level object (owned) */
    char *name;          /* the file path, or the caller's name for a buffer: every message starts with it */
    bool null_is_absent; /* true after open/parse; clear it where null is a wrong-typed value */
    const struct cJSON *use_defaults; /* an array of key names that read as absent, or NULL */
} bt_json_t;

/* Reads and parses the file at path. BT_OK with j->root an object; otherwise one
 * log line ("path: cannot open: ...", "path: not valid JSON (error at byte 12 of
 * 40)", "path: the top level must be a JSON object, not an array"), the status
 * (BT_ENOTFOUND for a missing file, BT_EFORMAT for bad JSON) and j holding nothing. */
int bt_json_open(bt_json_t *j, const char *path);
/* The same for text[0..len), which need not be NUL-terminated; name stands for the
 * file in messages (NULL: "<memory>"). */
int bt_json_parse(bt_json_t *j, const char *text, size_t len, const char *name);
/* Frees the tree and the name; safe twice and after a failed open. */
void bt_json_free(bt_json_t *j);

/* From now on the keys named in the array at `key` (absent: none) read as absent.
 * BT_EFORMAT with a log line if it is not an array of strings. */
int bt_json_use_defaults(bt_json_t *j, const char *key);

/* The value at key; NULL when absent (see above). The tree is j's: valid until bt_json_free. */
const struct cJSON *bt_json_get(const bt_json_t *j, const char *key);

/* A number with an integral value in [min, max] (an int64 range: use INT64_MIN or
 * INT64_MAX for no bound). */
int bt_json_int64(const bt_json_t *j, const char *key, int64_t def, int64_t min, int64_t max, int64_t *out);
int bt_json_int(const bt_json_t *j, const char *key, int def, int min, int max, int *out);
/* A number in [min, max] (+-INFINITY for no bound); float rounds the double to nearest. */
int bt_json_double(const bt_json_t *j, const char *key, double def, double min, double max, double *out);
int bt_json_float(const bt_json_t *j, const char *key, float def, float min, float max, float *out);
int bt_json_bool(const bt_json_t *j, const char *key, bool def, bool *out);
/* A string; *out points into the tree (or is def). */
int bt_json_string(const bt_json_t *j, const char *key, const char *def, const char **out);
/* A string that is one of names[0..count); *out gets its index. The error lists the names. */
int bt_json_enum(const bt_json_t *j, const char *key, const char *const *names, int count, int def, int *out);

/* diffusers' per-block settings: a list of exactly n values, or one value meaning
 * "the same for all n" (def for all when absent). */
int bt_json_int64_list(const bt_json_t *j, const char *key, int n, int64_t def, int64_t min, int64_t max, int64_t *out);
int bt_json_bool_list(const bt_json_t *j, const char *key, int n, bool def, bool *out);

/* Logs "name: 'key' <cause>" as one error line, for a caller's own checks, so
 * every message about a field reads alike. */
void bt_json_error(const bt_json_t *j, const char *key, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* "null", "a boolean", "a number", "a string", "an array", "an object" (for "..., not %s"). */
const char *bt_json_type_name(const struct cJSON *v);

#endif
