/*
 * loss.c — mean-squared error on the CPU.
 *
 * The sum is split into fixed chunks (independent of the thread count), each
 * summed in double, and the chunk sums are added in order.
 */
#include <stdlib.h>

#include "common/alloc.h"
#include "common/status.h"
#include "nn/cpu/cpu.h"

#define CHUNK 4096

typedef struct {
    float *da;
    const float *a, *b;
    double *partial;
    float scale;
    int64_t n;
} s_args_t;

NN_CLONES static void s_mse_fwd(void *arg, int64_t c0, int64_t c1, int tid)
{
    s_args_t *p = arg;
    for (int64_t c = c0; c < c1; c++) {
        int64_t i0 = c * CHUNK, i1 = i0 + CHUNK < p->n ? i0 + CHUNK : p->n;
        double acc[8] = {0};
        int64_t i = i0;
        for (; i + 8 <= i1; i += 8)
            for (int l = 0; l < 8; l++) {
                double d = (double)p->a[i + l] - (double)p->b[i + l];
                acc[l] += d * d;
            }
        double s = 0;
        for (; i < i1; i++) {
            double d = (double)p->a[i] - (double)p->b[i];
            s += d * d;
        }
        for (int l = 0; l < 8; l++) s += acc[l];
        p->partial[c] = s;
    }
}

int nn_cpu_mse_forward(nn_ctx_t *ctx, float *loss, const float *a, const float *b, int64_t n)
{
    if (n <= 0) return BT_EINVAL;
    int64_t chunks = (n + CHUNK - 1) / CHUNK;
    double stack[64], *partial = chunks <= 64 ? stack : bt_malloc((size_t)chunks * sizeof(double));
    if (!partial) return BT_ENOMEM;
    s_args_t args = {.a = a, .b = b, .partial = partial, .n = n};
    nn_cpu_parallel(ctx, chunks, 4, s_mse_fwd, &args);
    double s = 0;
    for (int64_t c = 0; c < chunks; c++) s += partial[c];
    *loss = (float)(s / (double)n);
    if (partial != stack) free(partial);
    return BT_OK;
}

NN_CLONES static void s_mse_bwd(void *arg, int64_t i0, int64_t i1, int tid)
{
    s_args_t *p = arg;
    float *restrict da = p->da;
    const float *restrict a = p->a, *restrict b = p->b;
    float s = p->scale;
    for (int64_t i = i0; i < i1; i++) da[i] = s * (a[i] - b[i]);
}

int nn_cpu_mse_backward(nn_ctx_t *ctx, float *da, float dloss, const float *a, const float *b, int64_t n)
{
    if (n <= 0) return BT_EINVAL;
    s_args_t args = {.da = da, .a = a, .b = b, .scale = (float)(2.0 * dloss / (double)n), .n = n};
    nn_cpu_parallel(ctx, n, NN_GRAIN, s_mse_bwd, &args);
    return BT_OK;
}
