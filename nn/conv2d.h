/*
 * conv2d.h — 2-D convolution, NCHW, any kernel size, stride and zero padding.
 *
 * 1x1 stride-1 convolutions are a single matrix product per image; 3x3 stride 1
 * and 2 (every UNet/VAE conv) have dedicated paths; anything else goes through
 * the general im2col route.
 */
#ifndef BOOTH_NN_CONV2D_H
#define BOOTH_NN_CONV2D_H

#include "nn/ops.h"

static inline int64_t nn_conv2d_out_h(const nn_conv2d_dims_t *d)
{
    return (d->H + d->pad_t + d->pad_b - d->KH) / d->stride + 1;
}
static inline int64_t nn_conv2d_out_w(const nn_conv2d_dims_t *d)
{
    return (d->W + d->pad_l + d->pad_r - d->KW) / d->stride + 1;
}

/* out[B,OC,OH,OW] = conv(inp[B,C,H,W], w[OC,C,KH,KW]) + b[OC] (b may be NULL). */
static inline int nn_conv2d_forward(nn_ctx_t *ctx, float *out, const float *inp, const float *w, const float *b,
                                    const nn_conv2d_dims_t *d)
{
    return ctx->ops->conv2d_forward(ctx, out, inp, w, b, d);
}

/* dinp (=), dw (+=), db (+=); each may be NULL to skip. */
static inline int nn_conv2d_backward(nn_ctx_t *ctx, float *dinp, float *dw, float *db, const float *dout,
                                     const float *inp, const float *w, const nn_conv2d_dims_t *d)
{
    return ctx->ops->conv2d_backward(ctx, dinp, dw, db, dout, inp, w, d);
}

#endif
