/*
 * attention.h — multi-head scaled dot-product attention, self or cross.
 *
 * q [B,Tq,H*D], k and v [B,Tk,H*D] (head h is columns h*D .. h*D+D-1, as the
 * to_q/to_k/to_v projections produce them), out [B,Tq,H*D].
 * out = softmax(scale * q.k^T [+ causal mask]) . v per head.
 *
 * Score matrices are never kept: forward works on blocks of query rows and
 * saves only the log-sum-exp of each row (lse [B,H,Tq]); backward recomputes
 * each block's probabilities from it. Memory is O(threads x block x Tk), not
 * O(B x H x Tq x Tk) (4096 tokens x 8 heads would be 512 MiB per image).
 */
#ifndef BOOTH_NN_ATTENTION_H
#define BOOTH_NN_ATTENTION_H

#include "nn/ops.h"

/* lse may be NULL when no backward will follow. */
static inline int nn_attention_forward(nn_ctx_t *ctx, float *out, float *lse, const float *q, const float *k,
                                       const float *v, const nn_attn_dims_t *d)
{
    return ctx->ops->attention_forward(ctx, out, lse, q, k, v, d);
}

/* dq, dk, dv (=), each may be NULL; out and lse are the forward's. */
static inline int nn_attention_backward(nn_ctx_t *ctx, float *dq, float *dk, float *dv, const float *dout,
                                        const float *q, const float *k, const float *v, const float *out,
                                        const float *lse, const nn_attn_dims_t *d)
{
    return ctx->ops->attention_backward(ctx, dq, dk, dv, dout, q, k, v, out, lse, d);
}

#endif
