/*
 * backend.h — the compute context every kernel takes first.
 *
 * One context = one backend (CPU now; CUDA sits beside it with the same function
 * signatures) plus what its kernels need: the thread pool and scratch memory on
 * the CPU, later a stream, a cuBLAS handle and device scratch on CUDA. Model code
 * never calls a backend directly: it calls nn_<op>() which dispatches through
 * ctx->ops, so one test can run the same model on both backends and compare.
 *
 * Pointers handed to kernels live in the context's memory space (host memory on
 * the CPU backend, device memory on CUDA); nn_alloc/nn_upload/nn_download move
 * data between the host and that space.
 */
#ifndef BOOTH_NN_BACKEND_H
#define BOOTH_NN_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct bt_pool bt_pool_t;
typedef struct nn_ops nn_ops_t;

typedef enum nn_backend_kind { NN_BACKEND_CPU, NN_BACKEND_CUDA } nn_backend_kind_t;

typedef struct nn_ctx {
    nn_backend_kind_t kind;
    const nn_ops_t *ops;
    int threads;        /* CPU: worker threads (BOOTH_THREADS or the CPU count) */
    bt_pool_t *pool;    /* CPU: the parallel loop's threads */
    void *scratch;      /* per-call temporary memory, grown on demand, never shrunk */
    size_t scratch_size;
    float *packs;       /* CPU: threads x NN_GEMM_PACK_FLOATS for the matrix product (nn/cpu/gemm.c) */
    void *backend;      /* backend-private state (CUDA: stream, handles) */
} nn_ctx_t;

/* Call first in main(): makes OpenBLAS use the kernels this CPU supports. When
 * the installed OpenBLAS does not recognise the CPU it falls back to generic
 * SSE3 ("Prescott") kernels, 5x slower here; then this sets OPENBLAS_CORETYPE
 * and re-executes the program once. Returns normally otherwise. */
void nn_process_init(int argc, char **argv);

/* threads <= 0: bt_default_threads(). NULL (and a log line) if the backend is
 * not available in this build or on this machine. */
nn_ctx_t *nn_ctx_new(nn_backend_kind_t kind, int threads);
void nn_ctx_destroy(nn_ctx_t **ctx);
/* Whether nn_ctx_new(kind) can succeed here (no log line either way). */
bool nn_backend_available(nn_backend_kind_t kind);
const char *nn_backend_name(nn_backend_kind_t kind);

/* Temporary memory for the duration of one kernel call (invalidated by the next
 * call that asks for scratch). NULL if it cannot be grown. */
void *nn_ctx_scratch(nn_ctx_t *ctx, size_t bytes);

/* A one-line description of the BLAS in use ("OpenBLAS 0.3.21 ... SkylakeX"). */
const char *nn_blas_info(void);

#endif
