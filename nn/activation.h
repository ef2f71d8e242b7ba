/*
 * activation.h — SiLU, GELU (erf and tanh), quick-GELU, GEGLU and softmax.
 */
#ifndef BOOTH_NN_ACTIVATION_H
#define BOOTH_NN_ACTIVATION_H

#include "nn/ops.h"

/* out[i] = act(inp[i]); out may alias inp. */
static inline int nn_act_forward(nn_ctx_t *ctx, float *out, const float *inp, int64_t n, nn_act_t act)
{
    return ctx->ops->act_forward(ctx, out, inp, n, act);
}
/* dinp[i] = dout[i] * act'(inp[i]) (=); dinp may alias dout. */
static inline int nn_act_backward(nn_ctx_t *ctx, float *dinp, const float *dout, const float *inp, int64_t n,
                                  nn_act_t act)
{
    return ctx->ops->act_backward(ctx, dinp, dout, inp, n, act);
}

/* GEGLU as diffusers computes it: inp[M, 2H] = [a | g] (the projection's two
 * halves), out[M,H] = a * gelu(g) (exact gelu). */
static inline int nn_geglu_forward(nn_ctx_t *ctx, float *out, const float *inp, int64_t M, int64_t H)
{
    return ctx->ops->geglu_forward(ctx, out, inp, M, H);
}
/* dinp[M,2H] (=). */
static inline int nn_geglu_backward(nn_ctx_t *ctx, float *dinp, const float *dout, const float *inp, int64_t M,
                                    int64_t H)
{
    return ctx->ops->geglu_backward(ctx, dinp, dout, inp, M, H);
}

/* Row-wise softmax of inp[rows, cols]; out may alias inp. */
static inline int nn_softmax_forward(nn_ctx_t *ctx, float *out, const float *inp, int64_t rows, int64_t cols)
{
    return ctx->ops->softmax_forward(ctx, out, inp, rows, cols);
}
/* dinp = out * (dout - sum(dout * out)) per row (=); needs only the forward output. */
static inline int nn_softmax_backward(nn_ctx_t *ctx, float *dinp, const float *dout, const float *out, int64_t rows,
                                      int64_t cols)
{
    return ctx->ops->softmax_backward(ctx, dinp, dout, out, rows, cols);
}

#endif
