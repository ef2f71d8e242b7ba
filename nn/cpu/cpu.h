/*
 * cpu.h — what the CPU kernels share (internal to nn/).
 *
 * Threading: element-wise and normalisation kernels split their work with the
 * context's pool (common/pool.h); matrix products go to nn_cpu_gemm (booth's
 * kernel on AVX-512 CPUs, else OpenBLAS in fixed blocks). A kernel that runs
 * many small products inside its own parallel loop (conv bands, Winograd) calls
 * nn_cpu_gemm1 on its thread's packing buffers, after switching OpenBLAS to one
 * thread with nn_cpu_blas_threads(1), so the two thread pools never compete for
 * the same cores.
 */
#ifndef BOOTH_NN_CPU_CPU_H
#define BOOTH_NN_CPU_CPU_H

#include <stdbool.h>
#include <stdint.h>

#include "common/pool.h"
#include "nn/ops.h"

/* Hot loops are compiled for AVX-512, AVX2 and plain x86-64; the loader picks. */
#if defined(__x86_64__) && !defined(__clang__)
#define NN_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define NN_CLONES
#endif

/* Items per chunk for element-wise loops: big enough to amortise waking threads. */
#define NN_GRAIN 16384

static inline void nn_cpu_parallel(nn_ctx_t *ctx, int64_t n, int64_t grain, bt_task_fn fn, void *arg)
{
    bt_pool_run(ctx->pool, n, grain, fn, arg);
}

/* Sets OpenBLAS's thread count (cached: a no-op when unchanged). */
void nn_cpu_blas_threads(int n);

/* Row-major sgemm: c[M,N] = alpha op(a) op(b) + beta c with explicit leading
 * dimensions. Returns BT_EINVAL if a dimension exceeds BLAS's int range. */
int nn_cpu_sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float *a,
                 int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc);

/* The same, split over the pool in fixed blocks of output rows/columns (the
 * split depends on the dimensions only: results are thread-count independent). */
int nn_cpu_sgemm_mt(nn_ctx_t *ctx, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                    const float *a, int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc);

/* The product every layer uses: booth's packed AVX-512 kernel (gemm.c) where
 * the CPU has it, nn_cpu_sgemm_mt elsewhere. Same contract as nn_cpu_sgemm_mt
 * (thread-count independent bytes); runs on the context's pool and packing
 * buffers (nn_cpu_gemm_packs), not its scratch. With col_bias, C = alpha
 * op(A) op(B) + col_bias[j] (beta unused): the bytes of filling C with the
 * bias and adding with beta 1. */
int nn_cpu_gemm(nn_ctx_t *ctx, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                const float *a, int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc,
                const float *col_bias);
/* The same product on the calling thread alone (inside a parallel task), with
 * that thread's NN_GEMM_PACK_FLOATS of nn_cpu_gemm_packs(ctx): with booth's
 * kernel, the same bytes as nn_cpu_gemm. With row_bias, C = alpha op(A) op(B) + row_bias[i] (beta
 * unused): the bytes of filling C with the bias and adding with beta 1. */
#define NN_GEMM_PACK_FLOATS ((size_t)384 * 256 + (size_t)144 * 384)
void nn_cpu_gemm1(float *pack, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                  const float *a, int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc,
                  const float *row_bias);
/* ctx->threads x NN_GEMM_PACK_FLOATS, kept by the context (NULL and a log line
 * if it cannot be allocated). Call outside parallel regions. */
float *nn_cpu_gemm_packs(nn_ctx_t *ctx);
/* Which kernels nn_cpu_gemm uses, for tests and benchmarks: 0 the best the CPU
 * has (default; BOOTH_GEMM_KERNELS=openblas makes it OpenBLAS), 1 OpenBLAS.
 * Returns the set now in use (1 OpenBLAS, 2 AVX-512). */
int nn_cpu_gemm_kernels(int which);
/* Whether products run on booth's kernel, whose bytes depend neither on M or N
 * nor on how a product is split into blocks; OpenBLAS's may (its edge kernels
 * differ), so a caller that regroups products (several images in one) may do so
 * only when this holds. */
bool nn_cpu_gemm_exact(void);

/* ---- the table's entries ---- */
void *nn_cpu_alloc(nn_ctx_t *ctx, size_t bytes);
void nn_cpu_free(nn_ctx_t *ctx, void *p);
int nn_cpu_copy(nn_ctx_t *ctx, void *dst, const void *src, size_t bytes);
int nn_cpu_sync(nn_ctx_t *ctx);
int nn_cpu_widen(nn_ctx_t *ctx, float *dst, const void *src, nn_dtype_t dtype, int64_t n);
/* Tests: which fp16 widening kernel runs (1 generic C, 2 F16C; 0 the best this
 * CPU has). Returns the one now in use. */
int nn_cpu_widen_kernels(int which);

int nn_cpu_fill(nn_ctx_t *ctx, float *x, int64_t n, float value);
int nn_cpu_scale(nn_ctx_t *ctx, float *x, int64_t n, float alpha);
int nn_cpu_axpy(nn_ctx_t *ctx, float *y, const float *x, int64_t n, float alpha);
int nn_cpu_add_forward(nn_ctx_t *ctx, float *out, const float *a, const float *b, int64_t n);
int nn_cpu_add_backward(nn_ctx_t *ctx, float *da, float *db, const float *dout, int64_t n);
int nn_cpu_add_channel_bias_forward(nn_ctx_t *ctx, float *x, const float *bias, int64_t B, int64_t C, int64_t HW);
int nn_cpu_add_channel_bias_backward(nn_ctx_t *ctx, float *dbias, const float *dout, int64_t B, int64_t C,
                                     int64_t HW);
int nn_cpu_concat_channels(nn_ctx_t *ctx, float *out, const float *a, const float *b, int64_t B, int64_t C1,
                           int64_t C2, int64_t HW);
int nn_cpu_split_channels(nn_ctx_t *ctx, float *a, float *b, const float *inp, int64_t B, int64_t C1, int64_t C2,
                          int64_t HW);
int nn_cpu_transpose(nn_ctx_t *ctx, float *out, const float *inp, int64_t B, int64_t M, int64_t N);
int nn_cpu_upsample_nearest_forward(nn_ctx_t *ctx, float *out, const float *inp, int64_t BC, int64_t H, int64_t W,
                                    int64_t OH, int64_t OW);
int nn_cpu_upsample_nearest_backward(nn_ctx_t *ctx, float *dinp, const float *dout, int64_t BC, int64_t H, int64_t W,
                                     int64_t OH, int64_t OW);
int nn_cpu_clamp(nn_ctx_t *ctx, float *out, const float *inp, int64_t n, float lo, float hi);

int nn_cpu_matmul(nn_ctx_t *ctx, float *c, const float *a, const float *b, int64_t M, int64_t N, int64_t K,
                  bool trans_a, bool trans_b, float alpha, float beta);
int nn_cpu_linear_forward(nn_ctx_t *ctx, float *out, const float *inp, const float *w, const float *b, int64_t M,
                          int64_t K, int64_t N);
int nn_cpu_linear_backward(nn_ctx_t *ctx, float *dinp, float *dw, float *db, const float *dout, const float *inp,
                           const float *w, int64_t M, int64_t K, int64_t N);
int nn_cpu_conv2d_forward(nn_ctx_t *ctx, float *out, const float *inp, const float *w, const float *b,
                          const nn_conv2d_dims_t *d);
int nn_cpu_conv2d_backward(nn_ctx_t *ctx, float *dinp, float *dw, float *db, const float *dout, const float *inp,
                           const float *w, const nn_conv2d_dims_t *d);

/* Winograd F(2x2,3x3) for 3x3 stride-1 convolutions (winograd.c); conv2d.c
 * decides from the dimensions alone when to use it. Each part runs on
 * nn_cpu_winograd_floats() floats of caller-provided scratch (64-byte aligned).
 * forward: out = conv + b (b may be NULL); dinp: "="; dw: "+=". */
typedef enum { NN_WINO_FWD, NN_WINO_DINP, NN_WINO_DW } nn_wino_part_t;
bool nn_cpu_winograd_suits(const nn_conv2d_dims_t *d);
size_t nn_cpu_winograd_floats(const nn_conv2d_dims_t *d, nn_wino_part_t part, int threads);
void nn_cpu_winograd_forward(nn_ctx_t *ctx, float *scratch, float *out, const float *inp, const float *w,
                             const float *b, const nn_conv2d_dims_t *d);
void nn_cpu_winograd_dinp(nn_ctx_t *ctx, float *scratch, float *dinp, const float *dout, const float *w,
                          const nn_conv2d_dims_t *d);
void nn_cpu_winograd_dw(nn_ctx_t *ctx, float *scratch, float *dw, const float *dout, const float *inp,
                        const nn_conv2d_dims_t *d);

/* Test hooks (conv2d.c): run every 2-D convolution with one algorithm wherever
 * it applies (IM2COL: im2col forward and weight gradient, stride-1 input
 * gradients as im2col convolutions; COL2IM: the same but every input gradient
 * by col2im; WINOGRAD: Winograd for any 3x3 stride-1 shape), and/or with bands
 * of one row (of output or of 2x2 tiles), so that small shapes reach every code
 * path and cross band boundaries. (NN_CONV_AUTO, false) restores the normal
 * choice. nn_cpu_winograd_test_tiny_bands is winograd.c's part of it. */
typedef enum { NN_CONV_AUTO, NN_CONV_IM2COL, NN_CONV_COL2IM, NN_CONV_WINOGRAD } nn_conv_alg_t;
void nn_cpu_conv2d_test_force(nn_conv_alg_t alg, bool tiny_bands);
void nn_cpu_winograd_test_tiny_bands(bool on);
/* Test hook (conv2d.c): small images image by image, not in one product for the whole batch. */
void nn_cpu_conv2d_test_unbatched(bool on);
/* Test hook (winograd.c): the portable transforms even on AVX-512 CPUs. */
void nn_cpu_winograd_test_portable(bool on);

int nn_cpu_group_norm_forward(nn_ctx_t *ctx, float *out, float *mean, float *rstd, const float *inp,
                              const float *gamma, const float *beta, int64_t B, int64_t C, int64_t HW, int64_t G,
                              float eps);
int nn_cpu_group_norm_backward(nn_ctx_t *ctx, float *dinp, float *dgamma, float *dbeta, const float *dout,
                               const float *inp, const float *mean, const float *rstd, const float *gamma,
                               int64_t B, int64_t C, int64_t HW, int64_t G);
int nn_cpu_layer_norm_forward(nn_ctx_t *ctx, float *out, float *mean, float *rstd, const float *inp, const float *w,
                              const float *b, int64_t N, int64_t C, float eps);
int nn_cpu_layer_norm_backward(nn_ctx_t *ctx, float *dinp, float *dw, float *db, const float *dout,
                               const float *inp, const float *mean, const float *rstd, const float *w, int64_t N,
                               int64_t C);

int nn_cpu_act_forward(nn_ctx_t *ctx, float *out, const float *inp, int64_t n, nn_act_t act);
int nn_cpu_act_backward(nn_ctx_t *ctx, float *dinp, const float *dout, const float *inp, int64_t n, nn_act_t act);
int nn_cpu_geglu_forward(nn_ctx_t *ctx, float *out, const float *inp, int64_t M, int64_t H);
int nn_cpu_geglu_backward(nn_ctx_t *ctx, float *dinp, const float *dout, const float *inp, int64_t M, int64_t H);
int nn_cpu_softmax_forward(nn_ctx_t *ctx, float *out, const float *inp, int64_t rows, int64_t cols);
int nn_cpu_softmax_backward(nn_ctx_t *ctx, float *dinp, const float *dout, const float *out, int64_t rows,
                            int64_t cols);

int nn_cpu_attention_forward(nn_ctx_t *ctx, float *out, float *lse, const float *q, const float *k, const float *v,
                             const nn_attn_dims_t *d);
int nn_cpu_attention_backward(nn_ctx_t *ctx, float *dq, float *dk, float *dv, const float *dout, const float *q,
                              const float *k, const float *v, const float *out, const float *lse,
                              const nn_attn_dims_t *d);
/* Which kernels attention uses, for tests: 0 the best the CPU has (default), 1
 * generic C, 2 AVX2, 3 AVX-512; a set the CPU lacks gives the next simpler one.
 * Returns the set now in use. BOOTH_ATTN_KERNELS=generic|avx2 caps the default. */
int nn_cpu_attention_kernels(int which);

int nn_cpu_embedding_forward(nn_ctx_t *ctx, float *out, const int32_t *ids, const float *table, int64_t N, int64_t C,
                             int64_t V);
int nn_cpu_embedding_backward(nn_ctx_t *ctx, float *dtable, const float *dout, const int32_t *ids, int64_t N,
                              int64_t C, int64_t V);
int nn_cpu_timestep_embedding_forward(nn_ctx_t *ctx, float *out, const float *t, int64_t B, int64_t C,
                                      bool flip_sin_to_cos, float freq_shift);
int nn_cpu_timestep_embedding_backward(nn_ctx_t *ctx, float *dt, const float *dout, const float *t, int64_t B,
                                       int64_t C, bool flip_sin_to_cos, float freq_shift);
int nn_cpu_mse_forward(nn_ctx_t *ctx, float *loss, const float *a, const float *b, int64_t n);
int nn_cpu_mse_backward(nn_ctx_t *ctx, float *da, float dloss, const float *a, const float *b, int64_t n);
int nn_cpu_sum_squares(nn_ctx_t *ctx, double *out, const float *x, int64_t n);
int nn_cpu_adamw_step(nn_ctx_t *ctx, float *p, float *m, float *v, const float *g, int64_t n, float lr, float beta1,
                      float beta2, float eps, float weight_decay, int64_t step);

#endif
