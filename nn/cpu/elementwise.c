/*
 * elementwise.c — fill, scale, axpy, add, channel bias, concat/split,
 * transpose and nearest upsampling on the CPU.
 *
 * Every loop is split by the pool into contiguous ranges; each output element
 * is computed by exactly one thread from the same inputs, so results do not
 * depend on the thread count.
 */
/* GCC's -O2 uses the "very cheap" vectorizer cost model, which leaves every loop
 * here that needs a remainder loop or a runtime alias check scalar (SiLU, GEGLU,
 * norms, add, axpy...: 5-15x slower). The dynamic model vectorizes them; each
 * element's arithmetic is unchanged (no reassociation), so results are the same
 * bits as the scalar loops'. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("vect-cost-model=dynamic")
#endif

#include <string.h>

#include "common/status.h"
#include "nn/cpu/cpu.h"

typedef struct {
    float *y;
    const float *a, *b;
    float alpha;
    int64_t B, C, C1, C2, HW, M, N, H, W;
    float *y2;
} s_args_t;

NN_CLONES static void s_fill(void *arg, int64_t i0, int64_t i1, int tid)
{
    s_args_t *p = arg;
    float *restrict y = p->y;
    float v = p->alpha;
    for (int64_t i = i0; i < i1; i++) y[i] = v;
}

int nn_cpu_fill(nn_ctx_t *ctx, float *x, int64_t n, float value)
{
    s_args_t a = {.y = x, .alpha = value};
    nn_cpu_parallel(ctx, n, NN_GRAIN * 4, s_fill, &a);
    return BT_OK;
}

NN_CLONES static void s_scale(void *arg, int64_t i0, int64_t i1, int tid)
{
    s_args_t *p = arg;
    float *restrict y = p->y;
    float s = p->alpha;
    for (int64_t i = i0; i < i1; i++) y[i] *= s;
}

int nn_cpu_scale(nn_ctx_t *ctx, float *x, int64_t n, float alpha)
{
    s_args_t a = {.y = x, .alpha = alpha};
    nn_cpu_parallel(ctx, n, NN_GRAIN, s_scale, &a);
    return BT_OK;
}

NN_CLONES static void s_axpy(void *arg, int64_t i0, int64_t i1, int tid)
{
    s_args_t *p = arg;
    float *restrict y = p->y;
    const float *restrict x = p->a;
    float s = p->alpha;
    for (int64_t i = i0; i < i1; i++) y[i] += s * x[i];
}

int nn_cpu_axpy(nn_ctx_t *ctx, float *y, const float *x, int64_t n, float alpha)
{
    s_args_t a = {.y = y, .a = x, .alpha = alpha};
    nn_cpu_parallel(ctx, n, NN_GRAIN, s_axpy, &a);
    return BT_OK;
}

/* out may alias a or b, so no restrict here. */
NN_CLONES static void s_add(void *arg, int64_t i0, int64_t i1, int tid)
{
    s_args_t *p = arg;
    float *y = p->y;
    const float *a = p->a, *b = p->b;
    for (int64_t i = i0; i < i1; i++) y[i] = a[i] + b[i];
}

int nn_cpu_add_forward(nn_ctx_t *ctx, float *out, const float *a, const float *b, int64_t n)
{
    s_args_t args = {.y = out, .a = a, .b = b};
    nn_cpu_parallel(ctx, n, NN_GRAIN, s_add, &args);
    return BT_OK;
}

static void s_copy2(void *arg, int64_t i0, int64_t i1, int tid)
{
    s_args_t *p = arg;
    size_t bytes = (size_t)(i1 - i0) * sizeof(float);
    if (p->y && p->y != p->a) memcpy(p->y + i0, p->a + i0, bytes);
    if (p->y2 && p->y2 != p->a) memcpy(p->y2 + i0, p->a + i0, bytes);
}

int nn_cpu_add_backward(nn_ctx_t *ctx, float *da, float *db, const float *dout, int64_t n)
{
    s_args_t args = {.y = da, .y2 = db, .a = dout};
    nn_cpu_parallel(ctx, n, NN_GRAIN * 4, s_copy2, &args);
    return BT_OK;
}

/* item = one (b, c) plane */
NN_CLONES static void s_chbias(void *arg, int64_t i0, int64_t i1, int tid)
{
    s_args_t *p = arg;
    for (int64_t i = i0; i < i1; i++) {
        float *restrict x = p->y + i * p->HW;
        float v = p->a[i];
        for (int64_t j = 0; j < p->HW; j++) x[j] += v;
    }
}

int nn_cpu_add_channel_bias_forward(nn_ctx_t *ctx, float *x, const float *bias, int64_t B, int64_t C, int64_t HW)
{
    s_args_t a = {.y = x, .a = bias, .HW = HW};
    nn_cpu_parallel(ctx, B * C, HW >= NN_GRAIN ? 1 : NN_GRAIN / (HW ? HW : 1), s_chbias, &a);
    return BT_OK;
}

NN_CLONES static void s_chbias_back(void *arg, int64_t i0, int64_t i1, int tid)
{
    s_args_t *p = arg;
    for (int64_t i = i0; i < i1; i++) {
        const float *restrict g = p->a + i * p->HW;
        double s = 0;
        for (int64_t j = 0; j < p->HW; j++) s += g[j];
        p->y[i] = (float)s;
    }
}

int nn_cpu_add_channel_bias_backward(nn_ctx_t *ctx, float *dbias, const float *dout, int64_t B, int64_t C,
                                     int64_t HW)
{
    s_args_t a = {.y = dbias, .a = dout, .HW = HW};
    nn_cpu_parallel(ctx, B * C, HW >= NN_GRAIN ? 1 : NN_GRAIN / (HW ? HW : 1), s_chbias_back, &a);
    return BT_OK;
}

/* item = one output channel plane (b, c) of the concatenation */
static void s_concat(void *arg, int64_t i0, int64_t i1, int tid)
{
    s_args_t *p = arg;
    int64_t CT = p->C1 + p->C2;
    size_t bytes = (size_t)p->HW * sizeof(float);
    for (int64_t i = i0; i < i1; i++) {
        int64_t b = i / CT, c = i % CT;
        const float *src = c < p->C1 ? p->a + (b * p->C1 + c) * p->HW : p->b + (b * p->C2 + c - p->C1) * p->HW;
        memcpy(p->y + i * p->HW, src, bytes);
    }
}

int nn_cpu_concat_channels(nn_ctx_t *ctx, float *out, const float *a, const float *b, int64_t B, int64_t C1,
                           int64_t C2, int64_t HW)
{
    s_args_t args = {.y = out, .a = a, .b = b, .C1 = C1, .C2 = C2, .HW = HW};
    nn_cpu_parallel(ctx, B * (C1 + C2), HW >= NN_GRAIN ? 1 : NN_GRAIN / (HW ? HW : 1), s_concat, &args);
    return BT_OK;
}

static void s_split(void *arg, int64_t i0, int64_t i1, int tid)
{
    s_args_t *p = arg;
    int64_t CT = p->C1 + p->C2;
    size_t bytes = (size_t)p->HW * sizeof(float);
    for (int64_t i = i0; i < i1; i++) {
        int64_t b = i / CT, c = i % CT;
        float *dst = c < p->C1 ? (p->y ? p->y + (b * p->C1 + c) * p->HW : NULL)
                               : (p->y2 ? p->y2 + (b * p->C2 + c - p->C1) * p->HW : NULL);
        if (dst) memcpy(dst, p->a + i * p->HW, bytes);
    }
}

int nn_cpu_split_channels(nn_ctx_t *ctx, float *a, float *b, const float *inp, int64_t B, int64_t C1, int64_t C2,
                          int64_t HW)
{
    s_args_t args = {.y = a, .y2 = b, .a = inp, .C1 = C1, .C2 = C2, .HW = HW};
    nn_cpu_parallel(ctx, B * (C1 + C2), HW >= NN_GRAIN ? 1 : NN_GRAIN / (HW ? HW : 1), s_split, &args);
    return BT_OK;
}

/* item = one 32-row band of one batch element; tiles of 32x32 keep both sides in cache */
#define TT 32
static void s_transpose(void *arg, int64_t i0, int64_t i1, int tid)
{
    s_args_t *p = arg;
    int64_t M = p->M, N = p->N, bands = (M + TT - 1) / TT;
    for (int64_t it = i0; it < i1; it++) {
        int64_t b = it / bands, r0 = (it % bands) * TT;
        int64_t r1 = r0 + TT < M ? r0 + TT : M;
        const float *src = p->a + b * M * N;
        float *dst = p->y + b * M * N;
        for (int64_t c0 = 0; c0 < N; c0 += TT) {
            int64_t c1 = c0 + TT < N ? c0 + TT : N;
            for (int64_t r = r0; r < r1; r++)
                for (int64_t c = c0; c < c1; c++) dst[c * M + r] = src[r * N + c];
        }
    }
}

int nn_cpu_transpose(nn_ctx_t *ctx, float *out, const float *inp, int64_t B, int64_t M, int64_t N)
{
    s_args_t a = {.y = out, .a = inp, .M = M, .N = N};
    int64_t bands = (M + TT - 1) / TT;
    int64_t per_band = TT * N;
    nn_cpu_parallel(ctx, B * bands, per_band >= NN_GRAIN ? 1 : NN_GRAIN / per_band, s_transpose, &a);
    return BT_OK;
}

/* item = one input row (bc, y) */
NN_CLONES static void s_up(void *arg, int64_t i0, int64_t i1, int tid)
{
    s_args_t *p = arg;
    int64_t W = p->W;
    for (int64_t i = i0; i < i1; i++) {
        const float *restrict src = p->a + i * W;
        float *restrict d0 = p->y + i * 4 * W; /* rows 2y and 2y+1 of the same plane are adjacent */
        float *restrict d1 = d0 + 2 * W;
        for (int64_t x = 0; x < W; x++) {
            d0[2 * x] = d0[2 * x + 1] = src[x];
        }
        memcpy(d1, d0, (size_t)(2 * W) * sizeof(float));
    }
}

int nn_cpu_upsample2x_forward(nn_ctx_t *ctx, float *out, const float *inp, int64_t BC, int64_t H, int64_t W)
{
    s_args_t a = {.y = out, .a = inp, .W = W};
    nn_cpu_parallel(ctx, BC * H, W >= NN_GRAIN ? 1 : NN_GRAIN / (4 * W), s_up, &a);
    return BT_OK;
}

NN_CLONES static void s_up_back(void *arg, int64_t i0, int64_t i1, int tid)
{
    s_args_t *p = arg;
    int64_t W = p->W;
    for (int64_t i = i0; i < i1; i++) {
        float *restrict dst = p->y + i * W;
        const float *restrict g0 = p->a + i * 4 * W;
        const float *restrict g1 = g0 + 2 * W;
        for (int64_t x = 0; x < W; x++) dst[x] = (g0[2 * x] + g0[2 * x + 1]) + (g1[2 * x] + g1[2 * x + 1]);
    }
}

int nn_cpu_upsample2x_backward(nn_ctx_t *ctx, float *dinp, const float *dout, int64_t BC, int64_t H, int64_t W)
{
    s_args_t a = {.y = dinp, .a = dout, .W = W};
    nn_cpu_parallel(ctx, BC * H, W >= NN_GRAIN ? 1 : NN_GRAIN / (4 * W), s_up_back, &a);
    return BT_OK;
}
