/*
 * loss.h — mean-squared error, the DreamBooth objective's building block.
 */
#ifndef BOOTH_NN_LOSS_H
#define BOOTH_NN_LOSS_H

#include "nn/ops.h"

/* *loss = mean((a - b)^2) over n elements; loss is a host pointer. Summed in
 * double in a fixed order, so the value does not depend on the thread count. */
static inline int nn_mse_forward(nn_ctx_t *ctx, float *loss, const float *a, const float *b, int64_t n)
{
    return ctx->ops->mse_forward(ctx, loss, a, b, n);
}
/* da = dloss * 2 (a - b) / n (=). */
static inline int nn_mse_backward(nn_ctx_t *ctx, float *da, float dloss, const float *a, const float *b, int64_t n)
{
    return ctx->ops->mse_backward(ctx, da, dloss, a, b, n);
}

#endif
