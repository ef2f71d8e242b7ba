/* tape.c — saved-activation stack for backward passes. */
#include "diffusion/tape.h"

#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/status.h"
#include "nn/memory.h"

static void *s_alloc(void *user, size_t bytes) { return nn_alloc(user, bytes); }
static void s_free(void *user, void *p) { nn_free(user, p); }

void sd_tape_init(sd_tape_t *t, nn_ctx_t *ctx)
{
    memset(t, 0, sizeof *t);
    bt_stack_init(&t->mem, "activation tape", 256u << 20, s_alloc, s_free, ctx);
}

void sd_tape_free(sd_tape_t *t)
{
    bt_stack_free(&t->mem);
    free(t->e);
    memset(t, 0, sizeof *t);
}

static int s_record(sd_tape_t *t, float *p, bt_stack_mark_t before)
{
    if (t->n == t->cap) {
        int cap = t->cap ? 2 * t->cap : 256;
        sd_tape_entry_t *e = bt_realloc(t->e, (size_t)cap * sizeof *e);
        if (!e) return BT_ENOMEM;
        t->e = e;
        t->cap = cap;
    }
    t->e[t->n++] = (sd_tape_entry_t){p, before};
    t->top = t->n;
    return BT_OK;
}

float *sd_tape_alloc(sd_tape_t *t, int64_t n)
{
    bt_stack_mark_t before = bt_stack_mark(&t->mem);
    float *p = bt_stack_alloc(&t->mem, (size_t)n * sizeof(float));
    if (!p) return NULL;
    if (s_record(t, p, before) != BT_OK) {
        bt_stack_reset(&t->mem, before);
        return NULL;
    }
    return p;
}

float *sd_tape_save(sd_tape_t *t, nn_ctx_t *ctx, const float *src, int64_t n)
{
    float *p = sd_tape_alloc(t, n);
    if (p && nn_copy(ctx, p, src, (size_t)n * sizeof(float)) != BT_OK) return NULL;
    return p;
}

int sd_tape_ref(sd_tape_t *t, const float *p) { return s_record(t, (float *)p, bt_stack_mark(&t->mem)); }

float *sd_tape_pop(sd_tape_t *t)
{
    if (t->n == 0) {
        BT_ERROR("activation tape: popped more than was pushed (a backward pass does not mirror its forward)");
        return NULL;
    }
    return t->e[--t->n].p;
}

void sd_tape_trim(sd_tape_t *t)
{
    if (t->n < t->top) {
        bt_stack_reset(&t->mem, t->e[t->n].before);
        t->top = t->n;
    }
}
