/*
 * arena.h — bump allocation for one lifetime (frozen weights, LoRA state, activations).
 *
 * Sizes are computed first, one block is allocated, and tensors are handed out as
 * 64-byte aligned views into it; nothing inside an arena is freed on its own.
 * mark/reset give stack-like scratch use (forward of one block, then release).
 * The block may be memory owned elsewhere (e.g. a device allocation).
 */
#ifndef BOOTH_COMMON_ARENA_H
#define BOOTH_COMMON_ARENA_H

#include <stdbool.h>
#include <stddef.h>

#define BT_ARENA_ALIGN 64

typedef struct bt_arena {
    char *base;
    size_t size;
    size_t used;
    size_t peak;     /* high-water mark of used, for sizing reports */
    bool owns;       /* base was allocated by bt_arena_init */
    const char *name; /* for the out-of-space message */
} bt_arena_t;

/* Allocates a block of `size` bytes. Returns 0 or BT_ENOMEM. */
int bt_arena_init(bt_arena_t *a, const char *name, size_t size);
/* Uses caller-owned memory (not freed by bt_arena_free). */
void bt_arena_init_from(bt_arena_t *a, const char *name, void *mem, size_t size);
void bt_arena_free(bt_arena_t *a);

/* 64-byte aligned, uninitialised; NULL (and one log line) when the arena is full. */
void *bt_arena_alloc(bt_arena_t *a, size_t bytes);
/* Same, zero-filled. */
void *bt_arena_calloc(bt_arena_t *a, size_t bytes);

static inline size_t bt_arena_mark(const bt_arena_t *a) { return a->used; }
static inline void bt_arena_reset(bt_arena_t *a, size_t mark) { a->used = mark; }

/* Rounds n up to the arena alignment (for computing sizes up front). */
static inline size_t bt_align_up(size_t n) { return (n + BT_ARENA_ALIGN - 1) & ~(size_t)(BT_ARENA_ALIGN - 1); }

#endif
