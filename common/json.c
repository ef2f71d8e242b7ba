/*
 * json.c — typed fields of a JSON object file, with defaults, range checks and
 * one error line naming the file, the key and the cause (see json.h).
 */
#include "common/json.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/fileio.h"
#include "common/log.h"
#include "common/status.h"

int bt_json_parse(bt_json_t *j, const char *text, size_t len, const char *name)
{
    memset(j, 0, sizeof *j);
    if (!name) name = "<memory>";
    /* the parse end pointer, unlike cJSON_GetErrorPtr, is not a global */
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, false);
    if (!root) {
        size_t at = end && end >= text ? (size_t)(end - text) : 0;
        BT_ERROR("%s: not valid JSON (error at byte %zu of %zu)", name, at, len);
        return BT_EFORMAT;
    }
    if (!cJSON_IsObject(root)) {
        BT_ERROR("%s: the top level must be a JSON object, not %s", name, bt_json_type_name(root));
        cJSON_Delete(root);
        return BT_EFORMAT;
    }
    j->name = strdup(name);
    if (!j->name) {
        BT_ERROR("%s: out of memory", name);
        cJSON_Delete(root);
        return BT_ENOMEM;
    }
    j->root = root;
    j->null_is_absent = true;
    return BT_OK;
}

int bt_json_open(bt_json_t *j, const char *path)
{
    memset(j, 0, sizeof *j);
    char *text = NULL;
    size_t len = 0;
    int rc = bt_read_file(path, &text, &len);
    if (rc == BT_ENOMEM) BT_ERROR("%s: out of memory reading the file", path); /* bt_read_file logs the others */
    if (rc) return rc;
    rc = bt_json_parse(j, text, len, path);
    free(text);
    return rc;
}

void bt_json_free(bt_json_t *j)
{
    if (!j) return;
    cJSON_Delete(j->root);
    free(j->name);
    memset(j, 0, sizeof *j);
}

const char *bt_json_type_name(const cJSON *v)
{
    if (!v) return "absent";
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsArray(v)) return "an array";
    if (cJSON_IsObject(v)) return "an object";
    return "invalid";
}

/* "name: 'key' cause" or, for a list element, "name: 'key'[idx] cause"; returns BT_EFORMAT. */
static int s_vfail(const bt_json_t *j, const char *key, int idx, const char *fmt, va_list ap)
{
    char cause[512];
    vsnprintf(cause, sizeof cause, fmt, ap);
    if (idx >= 0)
        BT_ERROR("%s: '%s'[%d] %s", j->name, key, idx, cause);
    else
        BT_ERROR("%s: '%s' %s", j->name, key, cause);
    return BT_EFORMAT;
}

__attribute__((format(printf, 4, 5))) static int s_fail(const bt_json_t *j, const char *key, int idx, const char *fmt,
                                                        ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = s_vfail(j, key, idx, fmt, ap);
    va_end(ap);
    return rc;
}

void bt_json_error(const bt_json_t *j, const char *key, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    s_vfail(j, key, -1, fmt, ap);
    va_end(ap);
}

int bt_json_use_defaults(bt_json_t *j, const char *key)
{
    const cJSON *v = bt_json_get(j, key);
    if (v && !cJSON_IsArray(v))
        return s_fail(j, key, -1, "must be an array of key names, not %s", bt_json_type_name(v));
    j->use_defaults = v;
    return BT_OK;
}

const cJSON *bt_json_get(const bt_json_t *j, const char *key)
{
    const cJSON *v = j->root ? cJSON_GetObjectItemCaseSensitive(j->root, key) : NULL;
    if (!v || (j->null_is_absent && cJSON_IsNull(v))) return NULL;
    const cJSON *d;
    cJSON_ArrayForEach(d, j->use_defaults)
    {
        if (cJSON_IsString(d) && !strcmp(d->valuestring, key)) return NULL;
    }
    return v;
}

/* ------------------------------------------------------------- integers */

/* One integer value (a field, or element idx of a list). */
static int s_int64_value(const bt_json_t *j, const char *key, int idx, const cJSON *v, int64_t min, int64_t max,
                         int64_t *out)
{
    if (!cJSON_IsNumber(v)) return s_fail(j, key, idx, "must be an integer, not %s", bt_json_type_name(v));
    double d = v->valuedouble;
    if (d != floor(d)) return s_fail(j, key, idx, "must be an integer, not %.15g", d);
    /* [-2^63, 2^63) converts exactly; then the caller's bounds */
    if (!(d >= -0x1p63 && d < 0x1p63) || (int64_t)d < min || (int64_t)d > max) {
        if (min == INT64_MIN && max == INT64_MAX) return s_fail(j, key, idx, "is %.15g, must fit in 64 bits", d);
        if (max == INT64_MAX) return s_fail(j, key, idx, "is %.15g, must be >= %lld", d, (long long)min);
        if (min == INT64_MIN) return s_fail(j, key, idx, "is %.15g, must be <= %lld", d, (long long)max);
        return s_fail(j, key, idx, "is %.15g, must be in [%lld, %lld]", d, (long long)min, (long long)max);
    }
    *out = (int64_t)d;
    return BT_OK;
}

int bt_json_int64(const bt_json_t *j, const char *key, int64_t def, int64_t min, int64_t max, int64_t *out)
{
    const cJSON *v = bt_json_get(j, key);
    if (!v) {
        *out = def;
        return BT_OK;
    }
    return s_int64_value(j, key, -1, v, min, max, out);
}

int bt_json_int(const bt_json_t *j, const char *key, int def, int min, int max, int *out)
{
    int64_t v;
    int rc = bt_json_int64(j, key, def, min, max, &v);
    if (rc == BT_OK) *out = (int)v; /* in [min, max]: fits */
    return rc;
}

int bt_json_int64_list(const bt_json_t *j, const char *key, int n, int64_t def, int64_t min, int64_t max, int64_t *out)
{
    const cJSON *v = bt_json_get(j, key);
    int64_t x = def;
    int rc = BT_OK;
    if (cJSON_IsArray(v)) {
        int size = cJSON_GetArraySize(v);
        if (size != n) return s_fail(j, key, -1, "has %d values, must be one integer or a list of %d", size, n);
        /* check every element before writing any: on failure *out is untouched */
        int i = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, v)
        {
            if ((rc = s_int64_value(j, key, i++, e, min, max, &x))) return rc;
        }
        i = 0;
        cJSON_ArrayForEach(e, v) out[i++] = (int64_t)e->valuedouble;
        return BT_OK;
    }
    if (v && !cJSON_IsNumber(v))
        return s_fail(j, key, -1, "must be an integer or a list of %d integers, not %s", n, bt_json_type_name(v));
    if (v && (rc = s_int64_value(j, key, -1, v, min, max, &x))) return rc;
    for (int i = 0; i < n; i++)
        out[i] = x;
    return BT_OK;
}

/* ---------------------------------------------------- numbers, booleans */

int bt_json_double(const bt_json_t *j, const char *key, double def, double min, double max, double *out)
{
    const cJSON *v = bt_json_get(j, key);
    if (!v) {
        *out = def;
        return BT_OK;
    }
    if (!cJSON_IsNumber(v)) return s_fail(j, key, -1, "must be a number, not %s", bt_json_type_name(v));
    double d = v->valuedouble;
    if (!(d >= min && d <= max)) {
        if (max == INFINITY) return s_fail(j, key, -1, "is %.15g, must be >= %.15g", d, min);
        if (min == -INFINITY) return s_fail(j, key, -1, "is %.15g, must be <= %.15g", d, max);
        return s_fail(j, key, -1, "is %.15g, must be in [%.15g, %.15g]", d, min, max);
    }
    *out = d;
    return BT_OK;
}

int bt_json_float(const bt_json_t *j, const char *key, float def, float min, float max, float *out)
{
    double d;
    int rc = bt_json_double(j, key, def, min, max, &d);
    if (rc == BT_OK) *out = (float)d;
    return rc;
}

int bt_json_bool(const bt_json_t *j, const char *key, bool def, bool *out)
{
    const cJSON *v = bt_json_get(j, key);
    if (!v) {
        *out = def;
        return BT_OK;
    }
    if (!cJSON_IsBool(v)) return s_fail(j, key, -1, "must be true or false, not %s", bt_json_type_name(v));
    *out = cJSON_IsTrue(v);
    return BT_OK;
}

int bt_json_bool_list(const bt_json_t *j, const char *key, int n, bool def, bool *out)
{
    const cJSON *v = bt_json_get(j, key);
    if (cJSON_IsArray(v)) {
        int size = cJSON_GetArraySize(v);
        if (size != n) return s_fail(j, key, -1, "has %d values, must be true/false or a list of %d", size, n);
        int i = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, v)
        {
            if (!cJSON_IsBool(e)) return s_fail(j, key, i, "must be true or false, not %s", bt_json_type_name(e));
            i++;
        }
        i = 0;
        cJSON_ArrayForEach(e, v) out[i++] = cJSON_IsTrue(e);
        return BT_OK;
    }
    if (v && !cJSON_IsBool(v))
        return s_fail(j, key, -1, "must be true/false or a list of %d of them, not %s", n, bt_json_type_name(v));
    for (int i = 0; i < n; i++)
        out[i] = v ? cJSON_IsTrue(v) : def;
    return BT_OK;
}

/* --------------------------------------------------------------- strings */

int bt_json_string(const bt_json_t *j, const char *key, const char *def, const char **out)
{
    const cJSON *v = bt_json_get(j, key);
    if (!v) {
        *out = def;
        return BT_OK;
    }
    if (!cJSON_IsString(v)) return s_fail(j, key, -1, "must be a string, not %s", bt_json_type_name(v));
    *out = v->valuestring;
    return BT_OK;
}

int bt_json_enum(const bt_json_t *j, const char *key, const char *const *names, int count, int def, int *out)
{
    const char *s = NULL;
    int rc = bt_json_string(j, key, NULL, &s);
    if (rc) return rc;
    if (!s) {
        *out = def;
        return BT_OK;
    }
    for (int i = 0; i < count; i++)
        if (!strcmp(s, names[i])) {
            *out = i;
            return BT_OK;
        }
    char list[256] = "";
    for (int i = 0; i < count; i++) {
        size_t len = strlen(list);
        snprintf(list + len, sizeof list - len, "%s%s", i ? ", " : "", names[i]);
    }
    return s_fail(j, key, -1, "is \"%.64s\", booth supports %s", s, list);
}
