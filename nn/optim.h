/*
 * optim.h — optimiser kernels: squared norms (for gradient clipping) and the
 * AdamW update, on flat parameter/gradient/moment arrays.
 */
#ifndef BOOTH_NN_OPTIM_H
#define BOOTH_NN_OPTIM_H

#include "nn/ops.h"

/* *out (host) = sum of x[i]^2, in double, summed in a fixed order. */
static inline int nn_sum_squares(nn_ctx_t *ctx, double *out, const float *x, int64_t n)
{
    return ctx->ops->sum_squares(ctx, out, x, n);
}

/* One AdamW step (step = 1, 2, ...), PyTorch's formulation:
 *   p *= 1 - lr * wd;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
 *   p -= lr / (1 - b1^step) * m / (sqrt(v) / sqrt(1 - b2^step) + eps) */
static inline int nn_adamw_step(nn_ctx_t *ctx, float *p, float *m, float *v, const float *g, int64_t n, float lr,
                                float beta1, float beta2, float eps, float weight_decay, int64_t step)
{
    return ctx->ops->adamw_step(ctx, p, m, v, g, n, lr, beta1, beta2, eps, weight_decay, step);
}

#endif
