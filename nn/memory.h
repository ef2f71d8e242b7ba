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
/* Waits until every queued kernel has finished (a no-op on the CPU). */
static inline int nn_sync(nn_ctx_t *ctx) { return ctx->ops->sync(ctx); }

#endif
