/*
 * tape.h — what a forward pass saves for its backward pass.
 *
 * Modules push the tensors their backward needs, in forward order, and pop them
 * in reverse order during backward. A push either allocates tape memory (the
 * forward computes straight into it, or copies in), or records a reference to
 * memory that outlives the pass.
 *
 * Popping does not free: popped tensors stay valid (a checkpointed block pops its
 * saved input, then re-runs its forward, which pushes above it). sd_tape_trim()
 * frees the memory of everything popped so far; the model calls it after each
 * block's backward, so memory shrinks as the backward pass proceeds.
 */
#ifndef BOOTH_DIFFUSION_TAPE_H
#define BOOTH_DIFFUSION_TAPE_H

#include <stdint.h>

#include "common/stack.h"
#include "nn/backend.h"

typedef struct sd_tape_entry {
    float *p;
    bt_stack_mark_t before; /* the memory mark before this entry's allocation */
} sd_tape_entry_t;

typedef struct sd_tape {
    bt_stack_t mem;
    sd_tape_entry_t *e;
    int n;   /* entries pushed and not popped */
    int top; /* entries recorded (n <= top); e[n..top) are popped but not trimmed */
    int cap;
} sd_tape_t;

/* Memory comes from ctx (host or device). */
void sd_tape_init(sd_tape_t *t, nn_ctx_t *ctx);
void sd_tape_free(sd_tape_t *t);

/* New tape memory for n floats (uninitialised); NULL if out of memory. */
float *sd_tape_alloc(sd_tape_t *t, int64_t n);
/* A copy of src[0..n) on the tape; NULL if out of memory. */
float *sd_tape_save(sd_tape_t *t, nn_ctx_t *ctx, const float *src, int64_t n);
/* Records a reference (no copy); returns 0 or BT_ENOMEM. */
int sd_tape_ref(sd_tape_t *t, const float *p);
/* The most recent unpopped entry (NULL and a log line when empty). */
float *sd_tape_pop(sd_tape_t *t);
/* Frees the memory of popped entries. */
void sd_tape_trim(sd_tape_t *t);
/* Bytes currently held for live entries, and the high-water mark. */
static inline size_t sd_tape_live(const sd_tape_t *t) { return t->mem.live; }
static inline size_t sd_tape_peak(const sd_tape_t *t) { return t->mem.peak; }

#endif
