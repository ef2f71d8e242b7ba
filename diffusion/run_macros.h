/*
 * run_macros.h — error-handling and memory macros shared by the model files of
 * diffusion/ (layers.c, clip.c, unet.c, vae.c); private to them.
 *
 * Each expects `int rc`, an `out:` label that cleans up, and `sd_run_t *r` in
 * scope. ALLOC takes forward-only scratch; KEEP takes memory that backward will
 * need (the tape in training, scratch otherwise); KEEP_COPY saves the caller's
 * tensor on the tape in training (the caller may reuse it) and aliases it
 * otherwise; POP takes back, in backward, what the forward kept.
 */
#ifndef BOOTH_DIFFUSION_RUN_MACROS_H
#define BOOTH_DIFFUSION_RUN_MACROS_H

#include "common/status.h"
#include "diffusion/layers.h"
#include "diffusion/tape.h"

#define TRY(x)                                                                                                 \
    do {                                                                                                       \
        if ((rc = (x)) != BT_OK) goto out;                                                                     \
    } while (0)
/* p = expr, or BT_ENOMEM and out when it is NULL (ALLOC, KEEP and unet.c's SLAB) */
#define NEED(p, expr)                                                                                          \
    do {                                                                                                       \
        if (!((p) = (expr))) {                                                                                 \
            rc = BT_ENOMEM;                                                                                    \
            goto out;                                                                                          \
        }                                                                                                      \
    } while (0)
#define ALLOC(p, n) NEED(p, sd_scratch(r, (n)))
#define KEEP(p, n) NEED(p, r->tape ? sd_tape_alloc(r->tape, (n)) : sd_scratch(r, (n)))
#define KEEP_COPY(p, src, n)                                                                                   \
    do {                                                                                                       \
        if (!r->tape)                                                                                          \
            (p) = (float *)(src);                                                                              \
        else if (!((p) = sd_tape_save(r->tape, r->nn, (src), (n)))) {                                          \
            rc = BT_ENOMEM;                                                                                    \
            goto out;                                                                                          \
        }                                                                                                      \
    } while (0)
#define POP(p)                                                                                                 \
    do {                                                                                                       \
        if (!((p) = sd_tape_pop(r->tape))) {                                                                   \
            rc = BT_EINTERNAL;                                                                                 \
            goto out;                                                                                          \
        }                                                                                                      \
    } while (0)

#endif
