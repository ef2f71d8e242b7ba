/*
 * alloc.h — allocations that say when they fail.
 *
 * Out of memory is never silent in booth (docs/RELIABILITY.md): bt_malloc,
 * bt_calloc and bt_realloc are malloc, calloc and realloc that log one error
 * line naming the function that asked and the size when they return NULL
 * ("out of memory: s_tensors asked for 12.0 MiB"), so a caller that returns
 * BT_ENOMEM has said what failed even where it adds nothing. They are inlined
 * at the call site (tests/unit/test_oom.c fails allocations by call site).
 */
#ifndef BOOTH_COMMON_ALLOC_H
#define BOOTH_COMMON_ALLOC_H

#include <stdint.h>
#include <stdlib.h>

void bt_alloc_failed(const char *fn, size_t bytes);

static inline __attribute__((always_inline)) void *bt_malloc_in(size_t n, const char *fn)
{
    void *p = malloc(n);
    if (!p && n) bt_alloc_failed(fn, n);
    return p;
}

static inline __attribute__((always_inline)) void *bt_calloc_in(size_t n, size_t size, const char *fn)
{
    void *p = calloc(n, size);
    if (!p && n && size) bt_alloc_failed(fn, n > SIZE_MAX / size ? SIZE_MAX : n * size);
    return p;
}

static inline __attribute__((always_inline)) void *bt_realloc_in(void *old, size_t n, const char *fn)
{
    void *p = realloc(old, n);
    if (!p && n) bt_alloc_failed(fn, n);
    return p;
}

#define bt_malloc(n) bt_malloc_in((n), __func__)
#define bt_calloc(n, size) bt_calloc_in((n), (size), __func__)
#define bt_realloc(p, n) bt_realloc_in((p), (n), __func__)

#endif
