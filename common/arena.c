/* arena.c — 64-byte aligned bump allocator. */
#include "common/arena.h"

#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"

int bt_arena_init(bt_arena_t *a, const char *name, size_t size)
{
    memset(a, 0, sizeof *a);
    a->name = name;
    size = bt_align_up(size ? size : BT_ARENA_ALIGN);
    a->base = aligned_alloc(BT_ARENA_ALIGN, size);
    if (!a->base) {
        BT_ERROR("arena %s: cannot allocate %zu bytes", name, size);
        return BT_ENOMEM;
    }
    a->size = size;
    a->owns = true;
    return BT_OK;
}

void bt_arena_init_from(bt_arena_t *a, const char *name, void *mem, size_t size)
{
    memset(a, 0, sizeof *a);
    a->name = name;
    a->base = mem;
    a->size = size;
}

void bt_arena_free(bt_arena_t *a)
{
    if (a->owns) free(a->base);
    memset(a, 0, sizeof *a);
}

void *bt_arena_alloc(bt_arena_t *a, size_t bytes)
{
    size_t need = bt_align_up(bytes);
    if (need < bytes || need > a->size - a->used) {
        BT_ERROR("arena %s: out of space (%zu bytes requested, %zu of %zu free)", a->name ? a->name : "?",
                 bytes, a->size - a->used, a->size);
        return NULL;
    }
    void *p = a->base + a->used;
    a->used += need;
    if (a->used > a->peak) a->peak = a->used;
    return p;
}

void *bt_arena_calloc(bt_arena_t *a, size_t bytes)
{
    void *p = bt_arena_alloc(a, bytes);
    if (p) memset(p, 0, bytes);
    return p;
}
