/*
 * optim.c — squared norm and AdamW on the CPU.
 *
 * AdamW follows torch.optim.AdamW's single-tensor path operation by operation
 * (decoupled decay first, lerp for the first moment, bias corrections computed
 * in double and applied as float scalars) so one step reproduces PyTorch's
 * parameters to the last few ulps.
 */
#include <math.h>
#include <stdlib.h>

#include "common/alloc.h"
#include "common/status.h"
#include "nn/cpu/cpu.h"

#define CHUNK 4096

typedef struct {
    const float *x;
    double *partial;
    int64_t n;
} s_sq_t;

NN_CLONES static void s_sq(void *arg, int64_t c0, int64_t c1, int tid)
{
    s_sq_t *p = arg;
    for (int64_t c = c0; c < c1; c++) {
        int64_t i0 = c * CHUNK, i1 = i0 + CHUNK < p->n ? i0 + CHUNK : p->n;
        double acc[8] = {0}, s = 0;
        int64_t i = i0;
        for (; i + 8 <= i1; i += 8)
            for (int l = 0; l < 8; l++) acc[l] += (double)p->x[i + l] * p->x[i + l];
        for (; i < i1; i++) s += (double)p->x[i] * p->x[i];
        for (int l = 0; l < 8; l++) s += acc[l];
        p->partial[c] = s;
    }
}

int nn_cpu_sum_squares(nn_ctx_t *ctx, double *out, const float *x, int64_t n)
{
    *out = 0;
    if (n <= 0) return BT_OK;
    int64_t chunks = (n + CHUNK - 1) / CHUNK;
    double *partial = bt_malloc((size_t)chunks * sizeof(double));
    if (!partial) return BT_ENOMEM;
    s_sq_t a = {x, partial, n};
    nn_cpu_parallel(ctx, chunks, 4, s_sq, &a);
    double s = 0;
    for (int64_t c = 0; c < chunks; c++) s += partial[c];
    *out = s;
    free(partial);
    return BT_OK;
}

typedef struct {
    float *p, *m, *v;
    const float *g;
    float decay, b1, b2, eps, step_size, bc2_sqrt;
} s_adamw_t;

NN_CLONES static void s_adamw(void *arg, int64_t i0, int64_t i1, int tid)
{
    s_adamw_t *a = arg;
    float *restrict p = a->p, *restrict m = a->m, *restrict v = a->v;
    const float *restrict g = a->g;
    for (int64_t i = i0; i < i1; i++) {
        p[i] = p[i] * a->decay;
        m[i] = m[i] + (1.0f - a->b1) * (g[i] - m[i]); /* lerp(m, g, 1 - b1) */
        v[i] = v[i] * a->b2 + (1.0f - a->b2) * g[i] * g[i];
        float denom = sqrtf(v[i]) / a->bc2_sqrt + a->eps;
        p[i] = p[i] - a->step_size * (m[i] / denom);
    }
}

int nn_cpu_adamw_step(nn_ctx_t *ctx, float *p, float *m, float *v, const float *g, int64_t n, float lr, float beta1,
                      float beta2, float eps, float weight_decay, int64_t step)
{
    if (step < 1) return BT_EINVAL;
    double bc1 = 1.0 - pow((double)beta1, (double)step), bc2 = 1.0 - pow((double)beta2, (double)step);
    s_adamw_t a = {.p = p, .m = m, .v = v, .g = g, .decay = (float)(1.0 - (double)lr * (double)weight_decay), .b1 = beta1, .b2 = beta2,
                   .eps = eps, .step_size = (float)(lr / bc1), .bc2_sqrt = (float)sqrt(bc2)};
    nn_cpu_parallel(ctx, n, NN_GRAIN, s_adamw, &a);
    return BT_OK;
}
