/*
 * elementwise.c — fill, scale, axpy, add, channel bias, concat/split,
 * transpose, nearest resizing and clamping on the CPU.
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

#include <math.h>
#include <string.h>

#include "common/status.h"
#include "nn/cpu/cpu.h"

typedef struct {
    float *y;
    const float *a, *b;
    float alpha, beta;
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

/* ---- nearest resize ---- */

/* Doubling, the common case: item = one input row (bc, y), written to output rows 2y and 2y+1. */
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

/* item = one input row; the block's sum pairs as the general path does: rows first, then the two rows */
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

/* Any other size. The source index is monotone in the output index, so the
 * outputs reading one source form a range [beg, end) on each axis. */
typedef struct {
    float *y;
    const float *a;
    int64_t H, W, OH, OW;
    const int64_t *src_h, *src_w; /* [OH], [OW]: source row/column of each output row/column */
    const int64_t *beg_h, *end_h; /* [H]: the output rows reading each input row */
    const int64_t *beg_w, *end_w; /* [W]: the output columns reading each input column */
} s_resize_t;

/* PyTorch's nearest_idx (aten/src/ATen/native/UpSample.h) for a given output size. */
static int64_t s_nearest_src(int64_t o, int64_t n_in, int64_t n_out)
{
    if (n_out == n_in) return o;
    if (n_out == 2 * n_in) return o >> 1;
    float scale = (float)n_in / (float)n_out;
    int64_t s = (int64_t)floorf((float)o * scale);
    return s < n_in - 1 ? s : n_in - 1;
}

static void s_axis(int64_t n_in, int64_t n_out, int64_t *src, int64_t *beg, int64_t *end)
{
    for (int64_t i = 0; i < n_in; i++) beg[i] = end[i] = 0;
    for (int64_t o = 0; o < n_out; o++) {
        int64_t s = src[o] = s_nearest_src(o, n_in, n_out);
        if (end[s] == 0) beg[s] = o;
        end[s] = o + 1;
    }
}

/* item = one output row (bc, y) */
static void s_resize(void *arg, int64_t i0, int64_t i1, int tid)
{
    const s_resize_t *p = arg;
    for (int64_t i = i0; i < i1; i++) {
        int64_t bc = i / p->OH, y = i % p->OH;
        const float *restrict src = p->a + (bc * p->H + p->src_h[y]) * p->W;
        float *restrict dst = p->y + i * p->OW;
        for (int64_t x = 0; x < p->OW; x++) dst[x] = src[p->src_w[x]];
    }
}

/* item = one input row (bc, iy): each element sums its block's rows, then the rows */
static void s_resize_back(void *arg, int64_t i0, int64_t i1, int tid)
{
    const s_resize_t *p = arg;
    for (int64_t i = i0; i < i1; i++) {
        int64_t bc = i / p->H, iy = i % p->H;
        const float *g = p->a + bc * p->OH * p->OW;
        float *restrict dst = p->y + i * p->W;
        for (int64_t ix = 0; ix < p->W; ix++) {
            float acc = 0;
            for (int64_t y = p->beg_h[iy]; y < p->end_h[iy]; y++) {
                float row = 0;
                for (int64_t x = p->beg_w[ix]; x < p->end_w[ix]; x++) row += g[y * p->OW + x];
                acc += row;
            }
            dst[ix] = acc;
        }
    }
}

/* Index tables in the context's scratch; NULL when it cannot grow. */
static int64_t *s_resize_tables(nn_ctx_t *ctx, s_resize_t *r)
{
    int64_t *t = nn_ctx_scratch(ctx, (size_t)(r->OH + r->OW + 2 * r->H + 2 * r->W) * sizeof(int64_t));
    if (!t) return NULL;
    int64_t *src_h = t, *src_w = src_h + r->OH, *beg_h = src_w + r->OW, *end_h = beg_h + r->H, *beg_w = end_h + r->H,
            *end_w = beg_w + r->W;
    s_axis(r->H, r->OH, src_h, beg_h, end_h);
    s_axis(r->W, r->OW, src_w, beg_w, end_w);
    r->src_h = src_h, r->src_w = src_w, r->beg_h = beg_h, r->end_h = end_h, r->beg_w = beg_w, r->end_w = end_w;
    return t;
}

static bool s_resize_dims_ok(int64_t BC, int64_t H, int64_t W, int64_t OH, int64_t OW)
{
    return BC >= 0 && H >= 1 && W >= 1 && OH >= 1 && OW >= 1;
}

int nn_cpu_upsample_nearest_forward(nn_ctx_t *ctx, float *out, const float *inp, int64_t BC, int64_t H, int64_t W,
                                    int64_t OH, int64_t OW)
{
    if (!s_resize_dims_ok(BC, H, W, OH, OW)) return BT_EINVAL;
    if (OH == 2 * H && OW == 2 * W) {
        s_args_t a = {.y = out, .a = inp, .W = W};
        nn_cpu_parallel(ctx, BC * H, W >= NN_GRAIN ? 1 : NN_GRAIN / (4 * W), s_up, &a);
        return BT_OK;
    }
    s_resize_t r = {.y = out, .a = inp, .H = H, .W = W, .OH = OH, .OW = OW};
    if (!s_resize_tables(ctx, &r)) return BT_ENOMEM;
    nn_cpu_parallel(ctx, BC * OH, OW >= NN_GRAIN ? 1 : NN_GRAIN / OW, s_resize, &r);
    return BT_OK;
}

int nn_cpu_upsample_nearest_backward(nn_ctx_t *ctx, float *dinp, const float *dout, int64_t BC, int64_t H, int64_t W,
                                     int64_t OH, int64_t OW)
{
    if (!s_resize_dims_ok(BC, H, W, OH, OW)) return BT_EINVAL;
    if (OH == 2 * H && OW == 2 * W) {
        s_args_t a = {.y = dinp, .a = dout, .W = W};
        nn_cpu_parallel(ctx, BC * H, W >= NN_GRAIN ? 1 : NN_GRAIN / (4 * W), s_up_back, &a);
        return BT_OK;
    }
    s_resize_t r = {.y = dinp, .a = dout, .H = H, .W = W, .OH = OH, .OW = OW};
    if (!s_resize_tables(ctx, &r)) return BT_ENOMEM;
    int64_t per_row = (OH * OW + H - 1) / H + W; /* outputs read per input row, plus its writes */
    nn_cpu_parallel(ctx, BC * H, per_row >= NN_GRAIN ? 1 : NN_GRAIN / per_row, s_resize_back, &r);
    return BT_OK;
}

/* ---- clamp ---- */

NN_CLONES static void s_clamp(void *arg, int64_t i0, int64_t i1, int tid)
{
    s_args_t *p = arg;
    float *y = p->y;
    const float *x = p->a;
    float lo = p->alpha, hi = p->beta;
    for (int64_t i = i0; i < i1; i++) {
        float v = x[i];
        y[i] = v < lo ? lo : (v > hi ? hi : v); /* NaN fails both tests and stays */
    }
}

int nn_cpu_clamp(nn_ctx_t *ctx, float *out, const float *inp, int64_t n, float lo, float hi)
{
    if (n < 0 || !(lo <= hi)) return BT_EINVAL;
    s_args_t a = {.y = out, .a = inp, .alpha = lo, .beta = hi};
    nn_cpu_parallel(ctx, n, NN_GRAIN, s_clamp, &a);
    return BT_OK;
}
