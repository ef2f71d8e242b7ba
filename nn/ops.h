/*
 * ops.h — the table every backend fills in.
 *
 * Each entry's contract (shapes, = versus +=, NULL meaning "skip") is documented
 * once, at the public dispatcher in nn/<op>.h. All functions return 0 or a
 * negative bt_status; the CPU backend only fails on bad dimensions.
 */
#ifndef BOOTH_NN_OPS_H
#define BOOTH_NN_OPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "nn/backend.h"

typedef enum nn_act {
    NN_ACT_SILU,       /* x * sigmoid(x) */
    NN_ACT_GELU,       /* exact: 0.5 x (1 + erf(x / sqrt 2)) */
    NN_ACT_GELU_TANH,  /* 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) */
    NN_ACT_QUICK_GELU, /* x * sigmoid(1.702 x) (CLIP) */
} nn_act_t;

/* How a tensor's values are stored. Kernels compute in float32; frozen weights
 * may stay resident in the 16-bit type a snapshot ships and are widened per
 * use (exactly: every fp16 and bf16 value is a float32 value). */
typedef enum nn_dtype {
    NN_F32,
    NN_F16,  /* IEEE binary16 */
    NN_BF16, /* bfloat16: the top half of a float32 */
} nn_dtype_t;

typedef struct nn_conv2d_dims {
    int64_t B, C, H, W; /* input [B, C, H, W] */
    int64_t OC, KH, KW; /* weight [OC, C, KH, KW] */
    int stride;
    int pad_t, pad_b, pad_l, pad_r; /* zero padding; the VAE's downsampler pads only bottom/right */
} nn_conv2d_dims_t;

typedef struct nn_attn_dims {
    int64_t B, Tq, Tk; /* batch, query tokens, key/value tokens */
    int64_t H, D;      /* heads, head size: q/k/v rows are H*D wide */
    float scale;       /* applied to q.k (usually D^-0.5) */
    bool causal;       /* query i sees keys j <= i (needs Tq == Tk) */
} nn_attn_dims_t;

struct nn_ops {
    const char *name;

    /* memory in the backend's space */
    void *(*alloc)(nn_ctx_t *ctx, size_t bytes);
    void (*free)(nn_ctx_t *ctx, void *p);
    int (*upload)(nn_ctx_t *ctx, void *dst, const void *host_src, size_t bytes);
    int (*download)(nn_ctx_t *ctx, void *host_dst, const void *src, size_t bytes);
    int (*copy)(nn_ctx_t *ctx, void *dst, const void *src, size_t bytes);
    int (*sync)(nn_ctx_t *ctx);
    int (*widen)(nn_ctx_t *ctx, float *dst, const void *src, nn_dtype_t dtype, int64_t n);

    /* elementwise and layout */
    int (*fill)(nn_ctx_t *ctx, float *x, int64_t n, float value);
    int (*scale)(nn_ctx_t *ctx, float *x, int64_t n, float alpha);
    int (*axpy)(nn_ctx_t *ctx, float *y, const float *x, int64_t n, float alpha);
    int (*add_forward)(nn_ctx_t *ctx, float *out, const float *a, const float *b, int64_t n);
    int (*add_backward)(nn_ctx_t *ctx, float *da, float *db, const float *dout, int64_t n);
    int (*add_channel_bias_forward)(nn_ctx_t *ctx, float *x, const float *bias, int64_t B, int64_t C, int64_t HW);
    int (*add_channel_bias_backward)(nn_ctx_t *ctx, float *dbias, const float *dout, int64_t B, int64_t C,
                                     int64_t HW);
    int (*concat_channels)(nn_ctx_t *ctx, float *out, const float *a, const float *b, int64_t B, int64_t C1,
                           int64_t C2, int64_t HW);
    int (*split_channels)(nn_ctx_t *ctx, float *a, float *b, const float *inp, int64_t B, int64_t C1, int64_t C2,
                          int64_t HW);
    int (*transpose)(nn_ctx_t *ctx, float *out, const float *inp, int64_t B, int64_t M, int64_t N);
    int (*upsample_nearest_forward)(nn_ctx_t *ctx, float *out, const float *inp, int64_t BC, int64_t H, int64_t W,
                                    int64_t OH, int64_t OW);
    int (*upsample_nearest_backward)(nn_ctx_t *ctx, float *dinp, const float *dout, int64_t BC, int64_t H, int64_t W,
                                     int64_t OH, int64_t OW);
    int (*clamp)(nn_ctx_t *ctx, float *out, const float *inp, int64_t n, float lo, float hi);

    /* matrix products */
    int (*matmul)(nn_ctx_t *ctx, float *c, const float *a, const float *b, int64_t M, int64_t N, int64_t K,
                  bool trans_a, bool trans_b, float alpha, float beta);
    int (*linear_forward)(nn_ctx_t *ctx, float *out, const float *inp, const float *w, const float *b, int64_t M,
                          int64_t K, int64_t N);
    int (*linear_backward)(nn_ctx_t *ctx, float *dinp, float *dw, float *db, const float *dout, const float *inp,
                           const float *w, int64_t M, int64_t K, int64_t N);
    int (*conv2d_forward)(nn_ctx_t *ctx, float *out, const float *inp, const float *w, const float *b,
                          const nn_conv2d_dims_t *d);
    int (*conv2d_backward)(nn_ctx_t *ctx, float *dinp, float *dw, float *db, const float *dout, const float *inp,
                           const float *w, const nn_conv2d_dims_t *d);

    /* normalisation */
    int (*group_norm_forward)(nn_ctx_t *ctx, float *out, float *mean, float *rstd, const float *inp,
                              const float *gamma, const float *beta, int64_t B, int64_t C, int64_t HW, int64_t G,
                              float eps);
    int (*group_norm_backward)(nn_ctx_t *ctx, float *dinp, float *dgamma, float *dbeta, const float *dout,
                               const float *inp, const float *mean, const float *rstd, const float *gamma,
                               int64_t B, int64_t C, int64_t HW, int64_t G);
    int (*layer_norm_forward)(nn_ctx_t *ctx, float *out, float *mean, float *rstd, const float *inp, const float *w,
                              const float *b, int64_t N, int64_t C, float eps);
    int (*layer_norm_backward)(nn_ctx_t *ctx, float *dinp, float *dw, float *db, const float *dout,
                               const float *inp, const float *mean, const float *rstd, const float *w, int64_t N,
                               int64_t C);

    /* activations */
    int (*act_forward)(nn_ctx_t *ctx, float *out, const float *inp, int64_t n, nn_act_t act);
    int (*act_backward)(nn_ctx_t *ctx, float *dinp, const float *dout, const float *inp, int64_t n, nn_act_t act);
    int (*geglu_forward)(nn_ctx_t *ctx, float *out, const float *inp, int64_t M, int64_t H);
    int (*geglu_backward)(nn_ctx_t *ctx, float *dinp, const float *dout, const float *inp, int64_t M, int64_t H);
    int (*softmax_forward)(nn_ctx_t *ctx, float *out, const float *inp, int64_t rows, int64_t cols);
    int (*softmax_backward)(nn_ctx_t *ctx, float *dinp, const float *dout, const float *out, int64_t rows,
                            int64_t cols);

    /* attention */
    int (*attention_forward)(nn_ctx_t *ctx, float *out, float *lse, const float *q, const float *k, const float *v,
                             const nn_attn_dims_t *d);
    int (*attention_backward)(nn_ctx_t *ctx, float *dq, float *dk, float *dv, const float *dout, const float *q,
                              const float *k, const float *v, const float *out, const float *lse,
                              const nn_attn_dims_t *d);

    /* embeddings and loss */
    int (*embedding_forward)(nn_ctx_t *ctx, float *out, const int32_t *ids, const float *table, int64_t N,
                             int64_t C, int64_t V);
    int (*embedding_backward)(nn_ctx_t *ctx, float *dtable, const float *dout, const int32_t *ids, int64_t N,
                              int64_t C, int64_t V);
    int (*timestep_embedding_forward)(nn_ctx_t *ctx, float *out, const float *t, int64_t B, int64_t C,
                                      bool flip_sin_to_cos, float freq_shift);
    int (*timestep_embedding_backward)(nn_ctx_t *ctx, float *dt, const float *dout, const float *t, int64_t B,
                                       int64_t C, bool flip_sin_to_cos, float freq_shift);
    int (*mse_forward)(nn_ctx_t *ctx, float *loss, const float *a, const float *b, int64_t n);
    int (*mse_backward)(nn_ctx_t *ctx, float *da, float dloss, const float *a, const float *b, int64_t n);

    /* optimisation */
    int (*sum_squares)(nn_ctx_t *ctx, double *out, const float *x, int64_t n);
    int (*adamw_step)(nn_ctx_t *ctx, float *p, float *m, float *v, const float *g, int64_t n, float lr, float beta1,
                      float beta2, float eps, float weight_decay, int64_t step);
};

/* The CPU backend's table; the CUDA table comes from nn/cuda/cuda.h. */
extern const nn_ops_t nn_ops_cpu;

#endif
