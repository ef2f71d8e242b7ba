/*
 * conv2d.c — 2-D convolution on the CPU by banded im2col + sgemm.
 *
 * The output of each image is cut into bands of whole output rows, sized so
 * that a band's column matrix [C*KH*KW, rows*OW] stays a few MiB; bands depend
 * only on the dimensions, never on the thread count.
 *
 * forward   bands run in parallel, each thread building its own column matrix and
 *           calling a one-thread sgemm straight into the output. A 1x1 stride-1
 *           unpadded conv skips im2col (the input is already the column matrix).
 * dinp      dcol = W^T . dout_band, scattered back (col2im) into dinp. Neighbouring
 *           bands touch overlapping input rows, so even bands run first, then odd
 *           ones: no two threads write the same row, and every element receives
 *           its contributions in the same order whatever the thread count.
 * dw        bands in order, each adding dout_band . col_band^T with a threaded
 *           sgemm (a fixed summation order again).
 */
#include <string.h>

#include "common/log.h"
#include "common/status.h"
#include "nn/conv2d.h"
#include "nn/cpu/cpu.h"

#define COL_TARGET_BYTES (2u << 20)

typedef struct {
    const nn_conv2d_dims_t *d;
    int64_t OH, OW, CKK, R; /* R: output rows per band */
    int64_t nbands;         /* per image */
    bool direct;            /* 1x1, stride 1, no padding: no im2col */
    float *out;             /* forward: output; backward: dinp */
    const float *inp, *w, *bias, *dout;
    float *scratch; /* threads x CKK x (R * OW) */
    int phase;      /* backward: 0 even bands, 1 odd bands */
    float *col;     /* dw pass: the shared column matrix */
    int64_t b, band;
} s_conv_t;

static int s_plan(s_conv_t *p, const nn_conv2d_dims_t *d)
{
    memset(p, 0, sizeof *p);
    if (d->B < 0 || d->C <= 0 || d->H <= 0 || d->W <= 0 || d->OC <= 0 || d->KH <= 0 || d->KW <= 0 || d->stride <= 0 ||
        d->pad_t < 0 || d->pad_b < 0 || d->pad_l < 0 || d->pad_r < 0) {
        BT_ERROR("conv2d: invalid dimensions");
        return BT_EINVAL;
    }
    p->d = d;
    p->OH = nn_conv2d_out_h(d);
    p->OW = nn_conv2d_out_w(d);
    if (p->OH <= 0 || p->OW <= 0) {
        BT_ERROR("conv2d: a %lldx%lld kernel does not fit a padded %lldx%lld input", (long long)d->KH,
                 (long long)d->KW, (long long)d->H, (long long)d->W);
        return BT_EINVAL;
    }
    p->CKK = d->C * d->KH * d->KW;
    p->direct = d->KH == 1 && d->KW == 1 && d->stride == 1 && !d->pad_t && !d->pad_b && !d->pad_l && !d->pad_r;
    int64_t rows = (int64_t)COL_TARGET_BYTES / (int64_t)(p->CKK * p->OW * sizeof(float));
    int64_t nb = (p->OH + (rows > 0 ? rows : 1) - 1) / (rows > 0 ? rows : 1);
    nb = (nb + 3) / 4 * 4; /* a multiple of 4 balances 1, 2 and 4 threads */
    if (nb > p->OH) nb = p->OH;
    p->R = (p->OH + nb - 1) / nb;
    /* backward's even/odd scheme needs a band to span at least the kernel height */
    int64_t min_r = (d->KH - 1 + d->stride - 1) / d->stride + 1;
    if (p->R < min_r) p->R = min_r;
    p->nbands = (p->OH + p->R - 1) / p->R;
    return BT_OK;
}

/* col[(c,ky,kx), (oy-r0)*OW + ox] = padded input, for output rows [r0, r1) */
NN_CLONES static void s_im2col(const s_conv_t *p, float *col, const float *img, int64_t r0, int64_t r1, int64_t c0,
                               int64_t c1)
{
    const nn_conv2d_dims_t *d = p->d;
    int64_t OW = p->OW, P = (r1 - r0) * OW, s = d->stride;
    for (int64_t c = c0; c < c1; c++) {
        const float *plane = img + c * d->H * d->W;
        for (int64_t ky = 0; ky < d->KH; ky++)
            for (int64_t kx = 0; kx < d->KW; kx++) {
                float *row = col + ((c * d->KH + ky) * d->KW + kx) * P;
                /* valid ox: 0 <= ox*s - pl + kx < W */
                int64_t lo = d->pad_l - kx > 0 ? (d->pad_l - kx + s - 1) / s : 0;
                int64_t hi = (d->W - 1 + d->pad_l - kx) / s + 1;
                if (d->W - 1 + d->pad_l - kx < 0) hi = 0;
                if (hi > OW) hi = OW;
                if (lo > hi) lo = hi;
                for (int64_t oy = r0; oy < r1; oy++) {
                    float *dst = row + (oy - r0) * OW;
                    int64_t iy = oy * s - d->pad_t + ky;
                    if (iy < 0 || iy >= d->H) {
                        memset(dst, 0, (size_t)OW * sizeof(float));
                        continue;
                    }
                    const float *src = plane + iy * d->W - d->pad_l + kx;
                    for (int64_t ox = 0; ox < lo; ox++) dst[ox] = 0;
                    if (s == 1)
                        memcpy(dst + lo, src + lo, (size_t)(hi - lo) * sizeof(float));
                    else
                        for (int64_t ox = lo; ox < hi; ox++) dst[ox] = src[ox * s];
                    for (int64_t ox = hi; ox < OW; ox++) dst[ox] = 0;
                }
            }
    }
}

/* dimg += col2im(col) for output rows [r0, r1), channels [c0, c1) */
NN_CLONES static void s_col2im(const s_conv_t *p, float *dimg, const float *col, int64_t r0, int64_t r1, int64_t c0,
                               int64_t c1)
{
    const nn_conv2d_dims_t *d = p->d;
    int64_t OW = p->OW, P = (r1 - r0) * OW, s = d->stride;
    for (int64_t c = c0; c < c1; c++) {
        float *plane = dimg + c * d->H * d->W;
        for (int64_t ky = 0; ky < d->KH; ky++)
            for (int64_t kx = 0; kx < d->KW; kx++) {
                const float *row = col + ((c * d->KH + ky) * d->KW + kx) * P;
                int64_t lo = d->pad_l - kx > 0 ? (d->pad_l - kx + s - 1) / s : 0;
                int64_t hi = (d->W - 1 + d->pad_l - kx) / s + 1;
                if (d->W - 1 + d->pad_l - kx < 0) hi = 0;
                if (hi > OW) hi = OW;
                for (int64_t oy = r0; oy < r1; oy++) {
                    int64_t iy = oy * s - d->pad_t + ky;
                    if (iy < 0 || iy >= d->H) continue;
                    const float *restrict src = row + (oy - r0) * OW;
                    float *restrict dst = plane + iy * d->W - d->pad_l + kx;
                    if (s == 1)
                        for (int64_t ox = lo; ox < hi; ox++) dst[ox] += src[ox];
                    else
                        for (int64_t ox = lo; ox < hi; ox++) dst[ox * s] += src[ox];
                }
            }
    }
}

/* ---- forward ---- */

static void s_fwd_task(void *arg, int64_t i0, int64_t i1, int tid)
{
    s_conv_t *p = arg;
    const nn_conv2d_dims_t *d = p->d;
    int64_t OHW = p->OH * p->OW;
    float *col = p->scratch + (size_t)tid * (size_t)(p->CKK * p->R * p->OW);
    for (int64_t i = i0; i < i1; i++) {
        int64_t b = i / p->nbands, r0 = (i % p->nbands) * p->R;
        int64_t r1 = r0 + p->R < p->OH ? r0 + p->R : p->OH;
        int64_t P = (r1 - r0) * p->OW;
        const float *img = p->inp + b * d->C * d->H * d->W;
        float *out = p->out + b * d->OC * OHW + r0 * p->OW;
        const float *bmat;
        int64_t ldb;
        if (p->direct) {
            bmat = img + r0 * p->OW;
            ldb = OHW;
        } else {
            s_im2col(p, col, img, r0, r1, 0, d->C);
            bmat = col;
            ldb = P;
        }
        if (p->bias)
            for (int64_t oc = 0; oc < d->OC; oc++)
                for (int64_t j = 0; j < P; j++) out[oc * OHW + j] = p->bias[oc];
        nn_cpu_sgemm(false, false, d->OC, P, p->CKK, 1.0f, p->w, p->CKK, bmat, ldb, p->bias ? 1.0f : 0.0f, out, OHW);
    }
}

int nn_cpu_conv2d_forward(nn_ctx_t *ctx, float *out, const float *inp, const float *w, const float *b,
                          const nn_conv2d_dims_t *d)
{
    s_conv_t p;
    int rc = s_plan(&p, d);
    if (rc) return rc;
    if (d->B == 0) return BT_OK;
    p.out = out;
    p.inp = inp;
    p.w = w;
    p.bias = b;
    if (!p.direct) {
        p.scratch = nn_ctx_scratch(ctx, (size_t)ctx->threads * (size_t)(p.CKK * p.R * p.OW) * sizeof(float));
        if (!p.scratch) return BT_ENOMEM;
    }
    nn_cpu_blas_threads(1);
    nn_cpu_parallel(ctx, d->B * p.nbands, 1, s_fwd_task, &p);
    return BT_OK;
}

/* ---- backward: dinp ---- */

static void s_dinp_task(void *arg, int64_t i0, int64_t i1, int tid)
{
    s_conv_t *p = arg;
    const nn_conv2d_dims_t *d = p->d;
    int64_t OHW = p->OH * p->OW, HW = d->H * d->W;
    int64_t half = (p->nbands + 1 - p->phase) / 2; /* bands of this phase per image */
    float *dcol = p->scratch + (size_t)tid * (size_t)(p->CKK * p->R * p->OW);
    for (int64_t i = i0; i < i1; i++) {
        int64_t b = i / half, band = 2 * (i % half) + p->phase;
        int64_t r0 = band * p->R, r1 = r0 + p->R < p->OH ? r0 + p->R : p->OH;
        int64_t P = (r1 - r0) * p->OW;
        const float *g = p->dout + b * d->OC * OHW + r0 * p->OW;
        float *dimg = p->out + b * d->C * HW;
        if (p->direct) { /* bands map 1:1 onto input pixels: write directly */
            nn_cpu_sgemm(true, false, d->C, P, d->OC, 1.0f, p->w, d->C, g, OHW, 0.0f, dimg + r0 * p->OW, HW);
            continue;
        }
        nn_cpu_sgemm(true, false, p->CKK, P, d->OC, 1.0f, p->w, p->CKK, g, OHW, 0.0f, dcol, P);
        s_col2im(p, dimg, dcol, r0, r1, 0, d->C);
    }
}

static void s_zero_task(void *arg, int64_t i0, int64_t i1, int tid)
{
    float *x = arg;
    memset(x + i0, 0, (size_t)(i1 - i0) * sizeof(float));
}

/* ---- backward: dw (bands in order, threaded sgemm; im2col split over channels) ---- */

static void s_im2col_task(void *arg, int64_t c0, int64_t c1, int tid)
{
    s_conv_t *p = arg;
    int64_t r0 = p->band * p->R, r1 = r0 + p->R < p->OH ? r0 + p->R : p->OH;
    s_im2col(p, p->col, p->inp + p->b * p->d->C * p->d->H * p->d->W, r0, r1, c0, c1);
}

typedef struct {
    float *db;
    const float *dout;
    int64_t B, OC, OHW;
} s_db_t;

static void s_db_task(void *arg, int64_t o0, int64_t o1, int tid)
{
    s_db_t *p = arg;
    for (int64_t oc = o0; oc < o1; oc++) {
        double s = 0;
        for (int64_t b = 0; b < p->B; b++) {
            const float *g = p->dout + (b * p->OC + oc) * p->OHW;
            for (int64_t j = 0; j < p->OHW; j++) s += g[j];
        }
        p->db[oc] += (float)s;
    }
}

int nn_cpu_conv2d_backward(nn_ctx_t *ctx, float *dinp, float *dw, float *db, const float *dout, const float *inp,
                           const float *w, const nn_conv2d_dims_t *d)
{
    s_conv_t p;
    int rc = s_plan(&p, d);
    if (rc) return rc;
    if (d->B == 0) return BT_OK;
    p.inp = inp;
    p.w = w;
    p.dout = dout;
    int64_t OHW = p.OH * p.OW, band_floats = p.CKK * p.R * p.OW;
    if (!p.direct) {
        size_t need = (size_t)(dinp ? ctx->threads : 1) * (size_t)band_floats * sizeof(float);
        p.scratch = nn_ctx_scratch(ctx, need);
        if (!p.scratch) return BT_ENOMEM;
    }
    if (dinp) {
        p.out = dinp;
        if (!p.direct) nn_cpu_parallel(ctx, d->B * d->C * d->H * d->W, NN_GRAIN * 4, s_zero_task, dinp);
        nn_cpu_blas_threads(1);
        for (p.phase = 0; p.phase < 2; p.phase++) {
            int64_t half = (p.nbands + 1 - p.phase) / 2;
            nn_cpu_parallel(ctx, d->B * half, 1, s_dinp_task, &p);
        }
    }
    if (dw) {
        nn_cpu_blas_threads(ctx->threads);
        p.col = p.scratch;
        for (p.b = 0; p.b < d->B; p.b++)
            for (p.band = 0; p.band < p.nbands; p.band++) {
                int64_t r0 = p.band * p.R, r1 = r0 + p.R < p.OH ? r0 + p.R : p.OH;
                int64_t P = (r1 - r0) * p.OW;
                const float *g = dout + p.b * d->OC * OHW + r0 * p.OW;
                const float *bmat = p.col;
                int64_t ldb = P;
                if (p.direct) {
                    bmat = inp + p.b * d->C * d->H * d->W + r0 * p.OW;
                    ldb = OHW;
                } else {
                    nn_cpu_parallel(ctx, d->C, 1, s_im2col_task, &p);
                }
                rc = nn_cpu_sgemm(false, true, d->OC, p.CKK, P, 1.0f, g, OHW, bmat, ldb, 1.0f, dw, p.CKK);
                if (rc) return rc;
            }
    }
    if (db) {
        s_db_t a = {.db = db, .dout = dout, .B = d->B, .OC = d->OC, .OHW = OHW};
        nn_cpu_parallel(ctx, d->OC, 1, s_db_task, &a);
    }
    return BT_OK;
}
