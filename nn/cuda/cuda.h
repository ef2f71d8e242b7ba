/*
 * cuda.h — entry points of the CUDA backend.
 *
 * Built only when nvcc is found (BOOTH_HAVE_CUDA); without it these inline stubs
 * say "not supported", so no .c file needs an #ifdef. The kernels themselves
 * implement the same nn_ops_t entries as nn/cpu/ (see nn/ops.h).
 */
#ifndef BOOTH_NN_CUDA_CUDA_H
#define BOOTH_NN_CUDA_CUDA_H

#include "common/status.h"
#include "nn/ops.h"

#ifdef BOOTH_HAVE_CUDA
/* Creates the device state (stream, cuBLAS handle) in ctx->backend; fills *ops. */
int nn_cuda_init(nn_ctx_t *ctx, const nn_ops_t **ops);
void nn_cuda_shutdown(nn_ctx_t *ctx);
/* A CUDA device is present and usable. */
bool nn_cuda_available(void);
#else
static inline bool nn_cuda_available(void) { return false; }
static inline int nn_cuda_init(nn_ctx_t *ctx, const nn_ops_t **ops)
{
    (void)ctx;
    *ops = NULL;
    return BT_EUNSUPPORTED;
}
static inline void nn_cuda_shutdown(nn_ctx_t *ctx) { (void)ctx; }
#endif

#endif
