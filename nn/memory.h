/*
 * memory.h — allocation and host<->backend copies through the context.
 */
#ifndef BOOTH_NN_MEMORY_H
#define BOOTH_NN_MEMORY_H

#include "nn/ops.h"

/* 64-byte aligned memory in the backend's space; NULL if out of memory. */
static inline void *nn_alloc(nn_ctx_t *ctx, size_t bytes) { return ctx->ops->alloc(ctx, bytes); }
static inline void nn_free(nn_ctx_t *ctx, void *p) { ctx->ops->free(ctx, p); }
static inline int nn_upload(nn_ctx_t *ctx, void *dst, const void *host_src, size_t bytes)
{
    return ctx->ops->upload(ctx, dst, host_src, bytes);
}
static inline int nn_download(nn_ctx_t *ctx, void *host_dst, const void *src, size_t bytes)
{
    return ctx->ops->download(ctx, host_dst, src, bytes);
}
static inline int nn_copy(nn_ctx_t *ctx, void *dst, const void *src, size_t bytes)
{
    return ctx->ops->copy(ctx, dst, src, bytes);
}
/* dst[n] = the float32 values of n 16-bit floats (dtype NN_F16 or NN_BF16) at
 * src; both in the context's space. Exact (NaNs stay NaNs). */
static inline int nn_widen(nn_ctx_t *ctx, float *dst, const void *src, nn_dtype_t dtype, int64_t n)
{
    return ctx->ops->widen(ctx, dst, src, dtype, n);
}
/* Bytes per element of a storage type. */
static inline size_t nn_dtype_size(nn_dtype_t dtype) { return dtype == NN_F32 ? 4 : 2; }
/* "fp32", "fp16", "bf16" */
static inline const char *nn_dtype_name(nn_dtype_t dtype)
{
    return dtype == NN_F16 ? "fp16" : dtype == NN_BF16 ? "bf16" : "fp32";
}

/* Waits until every queued kernel has finished (a no-op on the CPU). */
static inline int nn_sync(nn_ctx_t *ctx) { return ctx->ops->sync(ctx); }

#endif
