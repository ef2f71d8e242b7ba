/*
 * backend.c — creating and destroying compute contexts.
 */
#include "nn/backend.h"

#include <stdlib.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/pool.h"
#include "common/status.h"
#include "nn/cpu/cpu.h"
#include "nn/cuda/cuda.h"
#include "nn/ops.h"

const char *nn_backend_name(nn_backend_kind_t kind) { return kind == NN_BACKEND_CUDA ? "cuda" : "cpu"; }

bool nn_backend_available(nn_backend_kind_t kind)
{
    return kind == NN_BACKEND_CPU || (kind == NN_BACKEND_CUDA && nn_cuda_available());
}

nn_ctx_t *nn_ctx_new(nn_backend_kind_t kind, int threads)
{
    nn_ctx_t *ctx = bt_calloc(1, sizeof *ctx);
    if (!ctx) return NULL;
    ctx->kind = kind;
    ctx->threads = threads > 0 ? threads : bt_default_threads();
    ctx->pool = bt_pool_new(ctx->threads);
    if (!ctx->pool) goto out_free;
    if (kind == NN_BACKEND_CPU) {
        ctx->ops = &nn_ops_cpu;
        nn_cpu_blas_threads(1); /* parallelism comes from booth's pool (see nn/cpu/blas.c) */
        return ctx;
    }
    int rc = nn_cuda_init(ctx, &ctx->ops);
    if (rc == BT_OK) return ctx;
    BT_ERROR("cuda backend: %s", rc == BT_EUNSUPPORTED ? "this booth was built without nvcc" : bt_status_str(rc));
    bt_pool_destroy(&ctx->pool);
out_free:
    free(ctx);
    return NULL;
}

void nn_ctx_destroy(nn_ctx_t **pctx)
{
    nn_ctx_t *ctx = *pctx;
    if (!ctx) return;
    if (ctx->scratch) ctx->ops->free(ctx, ctx->scratch);
    if (ctx->packs) ctx->ops->free(ctx, ctx->packs);
    if (ctx->kind == NN_BACKEND_CUDA) nn_cuda_shutdown(ctx);
    bt_pool_destroy(&ctx->pool);
    free(ctx);
    *pctx = NULL;
}

void *nn_ctx_scratch(nn_ctx_t *ctx, size_t bytes)
{
    if (bytes <= ctx->scratch_size) return ctx->scratch;
    if (ctx->scratch) ctx->ops->free(ctx, ctx->scratch);
    size_t size = bytes + bytes / 4; /* some headroom: sizes grow in small steps */
    ctx->scratch = ctx->ops->alloc(ctx, size);
    ctx->scratch_size = ctx->scratch ? size : 0;
    if (!ctx->scratch) BT_ERROR("%s backend: cannot allocate %zu bytes of scratch", ctx->ops->name, size);
    return ctx->scratch;
}
