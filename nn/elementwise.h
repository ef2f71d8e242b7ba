/*
 * elementwise.h — fills, scaling, sums, channel concat/split, transposes,
 * nearest-neighbour resizing and clamping: the glue between the heavy kernels.
 *
 * Backward conventions (all of nn/): activation gradients are written with "="
 * and parameter gradients accumulated with "+="; a NULL gradient pointer means
 * "frozen: skip this work".
 */
#ifndef BOOTH_NN_ELEMENTWISE_H
#define BOOTH_NN_ELEMENTWISE_H

#include "nn/ops.h"

/* x[i] = value */
static inline int nn_fill(nn_ctx_t *ctx, float *x, int64_t n, float value) { return ctx->ops->fill(ctx, x, n, value); }
/* x[i] *= alpha */
static inline int nn_scale(nn_ctx_t *ctx, float *x, int64_t n, float alpha) { return ctx->ops->scale(ctx, x, n, alpha); }
/* y[i] += alpha * x[i] */
static inline int nn_axpy(nn_ctx_t *ctx, float *y, const float *x, int64_t n, float alpha)
{
    return ctx->ops->axpy(ctx, y, x, n, alpha);
}

/* out = a + b (out may alias a or b). Backward: da = dout, db = dout (either NULL skips). */
static inline int nn_add_forward(nn_ctx_t *ctx, float *out, const float *a, const float *b, int64_t n)
{
    return ctx->ops->add_forward(ctx, out, a, b, n);
}
static inline int nn_add_backward(nn_ctx_t *ctx, float *da, float *db, const float *dout, int64_t n)
{
    return ctx->ops->add_backward(ctx, da, db, dout, n);
}

/* x[B,C,HW] += bias[B,C] broadcast over HW (a ResNet's time embedding).
 * Backward: dbias[B,C] = sum over HW of dout (=). */
static inline int nn_add_channel_bias_forward(nn_ctx_t *ctx, float *x, const float *bias, int64_t B, int64_t C,
                                              int64_t HW)
{
    return ctx->ops->add_channel_bias_forward(ctx, x, bias, B, C, HW);
}
static inline int nn_add_channel_bias_backward(nn_ctx_t *ctx, float *dbias, const float *dout, int64_t B, int64_t C,
                                               int64_t HW)
{
    return ctx->ops->add_channel_bias_backward(ctx, dbias, dout, B, C, HW);
}

/* out[B, C1+C2, HW] = concat(a[B,C1,HW], b[B,C2,HW]) on channels. Its backward is
 * nn_split_channels, and the other way round. */
static inline int nn_concat_channels(nn_ctx_t *ctx, float *out, const float *a, const float *b, int64_t B, int64_t C1,
                                     int64_t C2, int64_t HW)
{
    return ctx->ops->concat_channels(ctx, out, a, b, B, C1, C2, HW);
}
/* a[B,C1,HW], b[B,C2,HW] = split(inp[B,C1+C2,HW]); a or b NULL skips that part. */
static inline int nn_split_channels(nn_ctx_t *ctx, float *a, float *b, const float *inp, int64_t B, int64_t C1,
                                    int64_t C2, int64_t HW)
{
    return ctx->ops->split_channels(ctx, a, b, inp, B, C1, C2, HW);
}

/* out[B,N,M] = inp[B,M,N] transposed per batch: NCHW [B,C,HW] <-> tokens [B,HW,C].
 * Its own adjoint: the backward of transpose(M, N) is transpose(N, M). */
static inline int nn_transpose(nn_ctx_t *ctx, float *out, const float *inp, int64_t B, int64_t M, int64_t N)
{
    return ctx->ops->transpose(ctx, out, inp, B, M, N);
}

/* Nearest-neighbour resize of BC planes: out[BC, OH, OW] from inp[BC, H, W] (all
 * sizes >= 1), out[c, y, x] = inp[c, sy(y), sx(x)] with the source index of
 * PyTorch's F.interpolate(size=(OH, OW), mode="nearest"): sy(y) = y when OH == H,
 * y / 2 when OH == 2H, else min(floor(y * ((float)H / OH)), H - 1) in float (sx
 * likewise). So it is Upsample2D's 2x, and its resize to a skip of any size (2H - 1
 * after a padded stride-2 conv of an odd size, 2H + 1 with downsample_padding 0).
 * Backward: dinp[c, i, j] = the sum of dout over the outputs whose source is
 * (i, j) (=; 0 where no output reads it), summed row by row in a fixed order. */
static inline int nn_upsample_nearest_forward(nn_ctx_t *ctx, float *out, const float *inp, int64_t BC, int64_t H,
                                              int64_t W, int64_t OH, int64_t OW)
{
    return ctx->ops->upsample_nearest_forward(ctx, out, inp, BC, H, W, OH, OW);
}
static inline int nn_upsample_nearest_backward(nn_ctx_t *ctx, float *dinp, const float *dout, int64_t BC, int64_t H,
                                               int64_t W, int64_t OH, int64_t OW)
{
    return ctx->ops->upsample_nearest_backward(ctx, dinp, dout, BC, H, W, OH, OW);
}

/* Nearest 2x, the usual case: nn_upsample_nearest_* with OH = 2H, OW = 2W.
 * Backward: dinp = sum of the 2x2 block (=). */
static inline int nn_upsample2x_forward(nn_ctx_t *ctx, float *out, const float *inp, int64_t BC, int64_t H, int64_t W)
{
    return ctx->ops->upsample_nearest_forward(ctx, out, inp, BC, H, W, 2 * H, 2 * W);
}
static inline int nn_upsample2x_backward(nn_ctx_t *ctx, float *dinp, const float *dout, int64_t BC, int64_t H,
                                         int64_t W)
{
    return ctx->ops->upsample_nearest_backward(ctx, dinp, dout, BC, H, W, 2 * H, 2 * W);
}

/* out[i] = inp[i] clamped to [lo, hi] (out may alias inp); NaN stays NaN, as in
 * torch.clamp. No backward: nothing trains through a clamp (the VAE posterior's
 * logvar is the one user). */
static inline int nn_clamp(nn_ctx_t *ctx, float *out, const float *inp, int64_t n, float lo, float hi)
{
    return ctx->ops->clamp(ctx, out, inp, n, lo, hi);
}

#endif
