/*
 * stack.c — the chunked stack allocator: requests are rounded up to 64 bytes and
 * carved in order from the current chunk; a reset to a mark gives them back.
 * Chunks are kept for reuse (an idle one too small for a request is replaced by a
 * bigger one), so a repeated workload stops allocating after its first pass.
 */
#include "common/stack.h"

#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"

/* Every block starts on a cache line, which also suits AVX-512 loads. */
#define S_ALIGN 64

static size_t s_align_up(size_t n) { return (n + S_ALIGN - 1) & ~(size_t)(S_ALIGN - 1); }

static void *s_default_alloc(void *user, size_t bytes)
{
    (void)user;
    void *p = aligned_alloc(S_ALIGN, s_align_up(bytes));
    if (!p) bt_alloc_failed("scratch memory (bt_stack)", s_align_up(bytes));
    return p;
}

static void s_default_free(void *user, void *p)
{
    (void)user;
    free(p);
}

void bt_stack_init(bt_stack_t *s, const char *name, size_t chunk_size, bt_alloc_fn alloc, bt_free_fn free_fn,
                   void *user)
{
    memset(s, 0, sizeof *s);
    s->name = name;
    s->chunk_size = chunk_size ? chunk_size : (64u << 20);
    s->alloc = alloc ? alloc : s_default_alloc;
    s->free = free_fn ? free_fn : s_default_free;
    s->user = user;
}

void bt_stack_free(bt_stack_t *s)
{
    for (int i = 0; i < s->nchunks; i++) s->free(s->user, s->chunks[i].base);
    free(s->chunks);
    const char *name = s->name;
    size_t cs = s->chunk_size;
    bt_alloc_fn a = s->alloc;
    bt_free_fn f = s->free;
    void *u = s->user;
    bt_stack_init(s, name, cs, a, f, u);
}

void *bt_stack_alloc(bt_stack_t *s, size_t bytes)
{
    size_t need = s_align_up(bytes ? bytes : 1);
    /* first fit in the current chunk, else the next kept chunk; a kept chunk too
     * small for this request is idle (everything after the current one is) and is
     * replaced by a big enough one rather than skipped: skipped chunks stayed
     * reserved, and touched, beside the new one (a VAE decode reserved 1.66 GiB of
     * scratch for a 1.15 GiB peak). Chunks only grow, so after the first pass
     * through a workload no allocation happens. */
    while (s->nchunks == 0 || s->used + need > s->chunks[s->cur].size) {
        int next = s->nchunks > 0 ? s->cur + 1 : 0;
        if (next < s->nchunks && s->chunks[next].size >= need) {
            s->cur = next;
            s->used = 0;
            continue;
        }
        /* replace the current chunk if it holds nothing live, else the next one, else append */
        int at = s->nchunks > 0 && s->used == 0 ? s->cur : next;
        size_t size = need > s->chunk_size ? need : s->chunk_size;
        if (at < s->nchunks) { /* too small: free it first, so the two never coexist */
            s->free(s->user, s->chunks[at].base);
            s->chunks[at] = (bt_stack_chunk_t){NULL, 0};
        } else {
            if (s->nchunks == s->cap) {
                int cap = s->cap ? 2 * s->cap : 8;
                bt_stack_chunk_t *c = bt_realloc(s->chunks, (size_t)cap * sizeof *c);
                if (!c) goto out_nomem;
                s->chunks = c;
                s->cap = cap;
            }
            s->chunks[s->nchunks++] = (bt_stack_chunk_t){NULL, 0};
        }
        char *base = s->alloc(s->user, size);
        if (!base) goto out_nomem;
        s->chunks[at] = (bt_stack_chunk_t){base, size};
        s->cur = at;
        s->used = 0;
    }
    void *p = s->chunks[s->cur].base + s->used;
    s->used += need;
    s->live += need;
    if (s->live > s->peak) s->peak = s->live;
    return p;
out_nomem:
    BT_ERROR("%s: out of memory allocating %zu bytes (%zu in use)", s->name ? s->name : "stack", bytes, s->live);
    return NULL;
}

void bt_stack_reset(bt_stack_t *s, bt_stack_mark_t mark)
{
    s->cur = mark.chunk;
    s->used = mark.used;
    s->live = mark.live;
}

size_t bt_stack_reserved(const bt_stack_t *s)
{
    size_t n = 0;
    for (int i = 0; i < s->nchunks; i++) n += s->chunks[i].size;
    return n;
}
