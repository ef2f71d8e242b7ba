/*
 * linear.h — matrix products (the only way model code reaches BLAS).
 */
#ifndef BOOTH_NN_LINEAR_H
#define BOOTH_NN_LINEAR_H

#include "nn/ops.h"

/* c[M,N] = alpha * op(a) . op(b) + beta * c, row-major; op(a) is [M,K] (a stored
 * [K,M] when trans_a), op(b) is [K,N] (b stored [N,K] when trans_b). */
static inline int nn_matmul(nn_ctx_t *ctx, float *c, const float *a, const float *b, int64_t M, int64_t N, int64_t K,
                            bool trans_a, bool trans_b, float alpha, float beta)
{
    return ctx->ops->matmul(ctx, c, a, b, M, N, K, trans_a, trans_b, alpha, beta);
}

/* out[M,N] = inp[M,K] . w[N,K]^T + b[N] (b may be NULL). */
static inline int nn_linear_forward(nn_ctx_t *ctx, float *out, const float *inp, const float *w, const float *b,
                                    int64_t M, int64_t K, int64_t N)
{
    return ctx->ops->linear_forward(ctx, out, inp, w, b, M, K, N);
}

/* dinp[M,K] = dout . w (=); dw[N,K] += dout^T . inp; db[N] += column sums of dout.
 * Any of dinp, dw, db may be NULL to skip it (frozen weights: dw = db = NULL). */
static inline int nn_linear_backward(nn_ctx_t *ctx, float *dinp, float *dw, float *db, const float *dout,
                                     const float *inp, const float *w, int64_t M, int64_t K, int64_t N)
{
    return ctx->ops->linear_backward(ctx, dinp, dw, db, dout, inp, w, M, K, N);
}

#endif
