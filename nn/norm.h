/*
 * norm.h — group norm (UNet/VAE) and layer norm (transformer blocks, CLIP).
 *
 * Forward saves the per-group (per-row) mean and 1/std that backward needs.
 * Statistics are accumulated in double, so large groups (320 ch x 64 x 64 / 32)
 * lose nothing to summation order.
 */
#ifndef BOOTH_NN_NORM_H
#define BOOTH_NN_NORM_H

#include "nn/ops.h"

/* inp[B,C,HW] in G groups of C/G channels; gamma/beta [C] (NULL: 1 / 0).
 * mean, rstd: [B,G] saved for backward (may be NULL for inference). */
static inline int nn_group_norm_forward(nn_ctx_t *ctx, float *out, float *mean, float *rstd, const float *inp,
                                        const float *gamma, const float *beta, int64_t B, int64_t C, int64_t HW,
                                        int64_t G, float eps)
{
    return ctx->ops->group_norm_forward(ctx, out, mean, rstd, inp, gamma, beta, B, C, HW, G, eps);
}
/* dinp (=), dgamma/dbeta [C] (+=); any may be NULL. */
static inline int nn_group_norm_backward(nn_ctx_t *ctx, float *dinp, float *dgamma, float *dbeta, const float *dout,
                                         const float *inp, const float *mean, const float *rstd, const float *gamma,
                                         int64_t B, int64_t C, int64_t HW, int64_t G)
{
    return ctx->ops->group_norm_backward(ctx, dinp, dgamma, dbeta, dout, inp, mean, rstd, gamma, B, C, HW, G);
}

/* inp[N,C] normalised over C; w/b [C] (NULL: 1 / 0); mean, rstd [N] (may be NULL). */
static inline int nn_layer_norm_forward(nn_ctx_t *ctx, float *out, float *mean, float *rstd, const float *inp,
                                        const float *w, const float *b, int64_t N, int64_t C, float eps)
{
    return ctx->ops->layer_norm_forward(ctx, out, mean, rstd, inp, w, b, N, C, eps);
}
/* dinp (=), dw/db [C] (+=); any may be NULL. */
static inline int nn_layer_norm_backward(nn_ctx_t *ctx, float *dinp, float *dw, float *db, const float *dout,
                                         const float *inp, const float *mean, const float *rstd, const float *w,
                                         int64_t N, int64_t C)
{
    return ctx->ops->layer_norm_backward(ctx, dinp, dw, db, dout, inp, mean, rstd, w, N, C);
}

#endif
