/*
 * stack.h — a growable stack allocator for activations and temporaries.
 *
 * Memory comes in chunks from a caller-supplied allocator (host malloc, or a
 * compute backend's device memory), is handed out 64-byte aligned in stack
 * order, and is released by resetting to a mark. Chunks are kept for reuse, so
 * after the first training step no allocation happens at all; `peak` reports the
 * high-water mark for memory tables.
 */
#ifndef BOOTH_COMMON_STACK_H
#define BOOTH_COMMON_STACK_H

#include <stdbool.h>
#include <stddef.h>

typedef void *(*bt_alloc_fn)(void *user, size_t bytes);
typedef void (*bt_free_fn)(void *user, void *p);

typedef struct bt_stack_chunk {
    char *base;
    size_t size;
} bt_stack_chunk_t;

typedef struct bt_stack {
    const char *name;
    bt_stack_chunk_t *chunks;
    int nchunks, cap;
    int cur;        /* chunk being filled */
    size_t used;    /* bytes used in chunks[cur] */
    size_t live;    /* bytes handed out and not released, all chunks */
    size_t peak;    /* high-water mark of live */
    size_t chunk_size;
    bt_alloc_fn alloc;
    bt_free_fn free;
    void *user;
} bt_stack_t;

typedef struct bt_stack_mark {
    int chunk;
    size_t used, live;
} bt_stack_mark_t;

/* alloc/free NULL: aligned_alloc/free. chunk_size: minimum bytes per chunk. */
void bt_stack_init(bt_stack_t *s, const char *name, size_t chunk_size, bt_alloc_fn alloc, bt_free_fn free,
                   void *user);
void bt_stack_free(bt_stack_t *s);
/* NULL (and one log line) if memory runs out. */
void *bt_stack_alloc(bt_stack_t *s, size_t bytes);
static inline bt_stack_mark_t bt_stack_mark(const bt_stack_t *s)
{
    return (bt_stack_mark_t){s->cur, s->used, s->live};
}
void bt_stack_reset(bt_stack_t *s, bt_stack_mark_t mark);
/* Bytes held in chunks (reserved, not necessarily live). */
size_t bt_stack_reserved(const bt_stack_t *s);

#endif
