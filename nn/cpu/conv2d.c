/*
 * conv2d.c — 2-D convolution on the CPU: picks an algorithm from the dimensions
 * alone, so the bytes never depend on the thread count.
 *
 *   direct    stride 1 with at most DIRECT_MAX_OC output channels (UNet and VAE
 *             conv_out): with so few outputs per input the work is bound by
 *             memory, so it is done in place, without a column matrix;
 *   winograd  3x3 stride 1 with at least WINO_MIN_C input channels and
 *             WINO_MIN_TILES 2x2 output tiles per image (winograd.c; below that
 *             its per-call weight transform, 16 OC C floats, costs too much);
 *   im2col    everything else: banded im2col + matrix product (nn_cpu_gemm1). A 1x1 stride-1 unpadded
 *             convolution skips im2col (the input is already the column matrix).
 * The choice never depends on the batch size either, so an image's result does
 * not depend on the batch around it.
 *
 * The input gradient of a stride-1 convolution whose pads are at most the
 * kernel size - 1 is itself a stride-1 convolution (of dout, by the kernel
 * rotated 180 degrees with in and out channels swapped, padded by K - 1 - pad).
 * It is computed that way when that convolution is Winograd's or direct's, or
 * when OC is small; otherwise (and for strided convolutions) as
 * dcol = W^T . dout scattered back into dinp (col2im), whose sgemm has OC as
 * its inner dimension and needs no rotated copy of the weights.
 *
 * im2col bands: the output of each image is cut into bands of whole rows, big
 * enough for an efficient sgemm (at least COL_MIN_COLS columns) and small
 * enough to bound the column matrix. Each band runs in parallel steps: im2col
 * split over input channels into one shared column matrix, then the sgemm cut
 * into a fixed number of blocks (one-thread sgemms, each output element in
 * exactly one block). The weight gradient adds band after band in order, each
 * block owning its slice of dw; col2im is split over input channels, whose
 * slices of dinp never overlap. No step's result depends on which thread ran it.
 */
#include <string.h>

#include "common/log.h"
#include "common/status.h"
#include "nn/conv2d.h"
#include "nn/cpu/cpu.h"

#define COL_MIN_COLS 1024           /* im2col: aim for at least this many sgemm columns a band ... */
#define COL_TARGET_BYTES (8u << 20) /* ... and a column matrix of about this size ... */
#define COL_MAX_BYTES (24u << 20)   /* ... but never more than this */
#define GEMM_BLOCKS 4               /* one band's sgemm is cut into up to this many blocks */
#define WINO_MIN_C 16               /* Winograd needs this many input channels ... */
#define WINO_MIN_TILES 64           /* ... and 2x2 output tiles per image (its weight transform costs 16 OC C) */
#define DIRECT_MAX_OC 8             /* direct convolution up to this many output channels */
#define DINP_COL2IM_MIN_OC 32       /* input gradients by col2im from this many output channels */
#define LANES 16                    /* direct kernels: output columns per vector block */

/* Kernel helpers are inlined into each NN_CLONES copy of their caller, so that
 * they are compiled for its instruction set (and their constant arguments fold). */
#define S_KERNEL static inline __attribute__((always_inline))

typedef enum { S_IM2COL, S_WINOGRAD, S_DIRECT } s_alg_t;

static bool s_pointwise(const nn_conv2d_dims_t *d)
{
    return d->KH == 1 && d->KW == 1 && d->stride == 1 && !d->pad_t && !d->pad_b && !d->pad_l && !d->pad_r;
}

/* test hooks: nn_cpu_conv2d_test_force() */
static nn_conv_alg_t s_force;
static bool s_tiny;
static bool s_unbatched; /* nn_cpu_conv2d_test_unbatched() */

void nn_cpu_conv2d_test_unbatched(bool on) { s_unbatched = on; }

void nn_cpu_conv2d_test_force(nn_conv_alg_t alg, bool tiny_bands)
{
    s_force = alg;
    s_tiny = tiny_bands;
    nn_cpu_winograd_test_tiny_bands(tiny_bands);
}

static s_alg_t s_choose(const nn_conv2d_dims_t *d)
{
    if (s_force == NN_CONV_IM2COL || s_force == NN_CONV_COL2IM) return S_IM2COL;
    if (s_force == NN_CONV_WINOGRAD && nn_cpu_winograd_suits(d)) return S_WINOGRAD;
    if (d->stride == 1 && d->OC <= DIRECT_MAX_OC && !s_pointwise(d)) return S_DIRECT;
    if (nn_cpu_winograd_suits(d) && d->C >= WINO_MIN_C &&
        ((nn_conv2d_out_h(d) + 1) / 2) * ((nn_conv2d_out_w(d) + 1) / 2) >= WINO_MIN_TILES)
        return S_WINOGRAD;
    return S_IM2COL;
}

static int s_check(const nn_conv2d_dims_t *d)
{
    if (d->B < 0 || d->C <= 0 || d->H <= 0 || d->W <= 0 || d->OC <= 0 || d->KH <= 0 || d->KW <= 0 || d->stride <= 0 ||
        d->pad_t < 0 || d->pad_b < 0 || d->pad_l < 0 || d->pad_r < 0) {
        BT_ERROR("conv2d: invalid dimensions");
        return BT_EINVAL;
    }
    if (nn_conv2d_out_h(d) <= 0 || nn_conv2d_out_w(d) <= 0) {
        BT_ERROR("conv2d: a %lldx%lld kernel does not fit a padded %lldx%lld input", (long long)d->KH,
                 (long long)d->KW, (long long)d->H, (long long)d->W);
        return BT_EINVAL;
    }
    return BT_OK;
}

/* scratch slices stay 64-byte aligned */
static size_t s_round16(size_t n) { return (n + 15) / 16 * 16; }

/* ------------------------------------------------------------------ im2col */

typedef struct {
    nn_conv2d_dims_t d;
    int64_t OH, OW, OHW, CKK;
    bool pointwise;
    int64_t R, nbands; /* output rows per band, bands per image */
    float *out;        /* forward: output; backward: dinp */
    const float *inp, *w, *bias, *dout;
    float *dw;
    float *col; /* [CKK, R * OW]: the band's column matrix (or dinp's dcol) */
    int64_t b, r0, r1;
    int64_t nM, nN; /* the band's sgemm blocks: rows x columns */
    float *packs;   /* the context's packing buffers for nn_cpu_gemm1, one per thread */
} s_conv_t;

static void s_plan(s_conv_t *p, const nn_conv2d_dims_t *d)
{
    memset(p, 0, sizeof *p);
    p->d = *d;
    p->OH = nn_conv2d_out_h(d);
    p->OW = nn_conv2d_out_w(d);
    p->OHW = p->OH * p->OW;
    p->CKK = d->C * d->KH * d->KW;
    p->pointwise = s_pointwise(d);
    int64_t R = p->OH;
    if (!p->pointwise) {
        int64_t row_bytes = p->CKK * p->OW * (int64_t)sizeof(float);
        int64_t want = COL_TARGET_BYTES / row_bytes, min_rows = (COL_MIN_COLS + p->OW - 1) / p->OW;
        int64_t cap = COL_MAX_BYTES / row_bytes;
        if (want < min_rows) want = min_rows;
        if (want > cap) want = cap;
        if (want < 1 || s_tiny) want = 1;
        if (want < R) R = want;
    }
    p->nbands = (p->OH + R - 1) / R;
    p->R = (p->OH + p->nbands - 1) / p->nbands; /* even the bands out */
}

static void s_band(s_conv_t *p, int64_t band)
{
    p->r0 = band * p->R;
    p->r1 = p->r0 + p->R < p->OH ? p->r0 + p->R : p->OH;
}

/* Cut an M x N product into nM x nN blocks: columns first (keeping every block
 * at least 256 wide), then rows (at least 64 tall). */
static void s_split(int64_t M, int64_t N, int64_t *nM, int64_t *nN)
{
    int64_t n = N / 256;
    n = n < 1 ? 1 : (n > GEMM_BLOCKS ? GEMM_BLOCKS : n);
    int64_t m = GEMM_BLOCKS / n, mmax = M / 64;
    if (m > mmax) m = mmax;
    *nM = m < 1 ? 1 : m;
    *nN = n;
}

static void s_block(int64_t i, int64_t n, int64_t total, int64_t *lo, int64_t *hi)
{
    *lo = total * i / n;
    *hi = total * (i + 1) / n;
}

/* col[(c,ky,kx) * ld + (oy-r0)*OW + ox] = padded input, for output rows [r0, r1) */
NN_CLONES static void s_im2col(const s_conv_t *p, float *col, int64_t ld, const float *img, int64_t c0, int64_t c1)
{
    const nn_conv2d_dims_t *d = &p->d;
    int64_t OW = p->OW, r0 = p->r0, r1 = p->r1, P = ld, s = d->stride;
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

/* dimg += col2im(col) for output rows [r0, r1), channels [c0, c1): the column
 * value of (c, ky, kx) at band pixel j is col[((c KH + ky) KW + kx) ts + j ps]
 * (the column matrix: ts = P, ps = 1; its transpose: ts = 1, ps = CKK). For
 * each input pixel, contributions add up in (ky, kx) order either way. */
NN_CLONES static void s_col2im(const s_conv_t *p, float *dimg, const float *col, int64_t ts, int64_t ps, int64_t c0,
                               int64_t c1)
{
    const nn_conv2d_dims_t *d = &p->d;
    int64_t OW = p->OW, r0 = p->r0, r1 = p->r1, s = d->stride;
    for (int64_t c = c0; c < c1; c++) {
        float *plane = dimg + c * d->H * d->W;
        for (int64_t ky = 0; ky < d->KH; ky++)
            for (int64_t kx = 0; kx < d->KW; kx++) {
                const float *row = col + ((c * d->KH + ky) * d->KW + kx) * ts;
                int64_t lo = d->pad_l - kx > 0 ? (d->pad_l - kx + s - 1) / s : 0;
                int64_t hi = (d->W - 1 + d->pad_l - kx) / s + 1;
                if (d->W - 1 + d->pad_l - kx < 0) hi = 0;
                if (hi > OW) hi = OW;
                for (int64_t oy = r0; oy < r1; oy++) {
                    int64_t iy = oy * s - d->pad_t + ky;
                    if (iy < 0 || iy >= d->H) continue;
                    const float *restrict src = row + (oy - r0) * OW * ps;
                    float *restrict dst = plane + iy * d->W - d->pad_l + kx;
                    if (s == 1 && ps == 1)
                        for (int64_t ox = lo; ox < hi; ox++) dst[ox] += src[ox];
                    else
                        for (int64_t ox = lo; ox < hi; ox++) dst[ox * s] += src[ox * ps];
                }
            }
    }
}

static void s_im2col_task(void *arg, int64_t c0, int64_t c1, int tid)
{
    s_conv_t *p = arg;
    s_im2col(p, p->col, (p->r1 - p->r0) * p->OW, p->inp + p->b * p->d.C * p->d.H * p->d.W, c0, c1);
}

/* The band's column matrix and its leading dimension. */
static const float *s_cols(const s_conv_t *p, int64_t *ld)
{
    if (p->pointwise) {
        *ld = p->OHW;
        return p->inp + p->b * p->d.C * p->OHW + p->r0 * p->OW;
    }
    *ld = (p->r1 - p->r0) * p->OW;
    return p->col;
}

/* ---- forward: out_band[OC, P] = W[OC, CKK] . col[CKK, P] (+ bias) ---- */

static void s_fwd_gemm_task(void *arg, int64_t i0, int64_t i1, int tid)
{
    s_conv_t *p = arg;
    const nn_conv2d_dims_t *d = &p->d;
    int64_t P = (p->r1 - p->r0) * p->OW, ldb;
    const float *bmat = s_cols(p, &ldb);
    float *out = p->out + p->b * d->OC * p->OHW + p->r0 * p->OW;
    for (int64_t i = i0; i < i1; i++) {
        int64_t m0, m1, n0, n1;
        s_block(i / p->nN, p->nM, d->OC, &m0, &m1);
        s_block(i % p->nN, p->nN, P, &n0, &n1);
        nn_cpu_gemm1(p->packs + (size_t)tid * NN_GEMM_PACK_FLOATS, false, false, m1 - m0, n1 - n0, p->CKK, 1.0f,
                     p->w + m0 * p->CKK, p->CKK, bmat + n0, ldb, 0.0f, out + m0 * p->OHW + n0, p->OHW,
                     p->bias ? p->bias + m0 : NULL);
    }
}

/* Small images (B OH OW <= SMALL_COLS, one band each: the UNet's 8x8 and 4x4
 * levels): every image's columns side by side in one column matrix, so that one
 * product per block reads W once for the whole batch instead of once per image
 * (at 8x8 and 1280 channels W is 59 MB and the product is bound by reading it).
 * With booth's kernel each output element is the same FMAs in the same order as
 * image by image (its bytes depend on neither M, N nor the split), so the choice
 * may depend on the batch size; with OpenBLAS (no AVX-512) images stay apart.
 * The input gradient does the same the other way round (s_small_dinp_run). */
#define SMALL_COLS 256

static bool s_small(const s_conv_t *p)
{
    return !s_unbatched && !p->pointwise && p->nbands == 1 && p->d.B * p->OHW <= SMALL_COLS && nn_cpu_gemm_exact();
}

/* scratch: columns [CKK, B P] | output [OC, B P] */
static size_t s_small_fwd_floats(const s_conv_t *p)
{
    int64_t n = p->d.B * p->OHW;
    return s_round16((size_t)(p->CKK * n)) + (size_t)(p->d.OC * n);
}

static void s_small_im2col_task(void *arg, int64_t i0, int64_t i1, int tid)
{
    const s_conv_t *p = arg;
    int64_t n = p->d.B * p->OHW, CHW = p->d.C * p->d.H * p->d.W;
    for (int64_t i = i0; i < i1; i++) /* item: (image, channel) */
        s_im2col(p, p->col + i / p->d.C * p->OHW, n, p->inp + i / p->d.C * CHW, i % p->d.C, i % p->d.C + 1);
}

static void s_small_fwd_task(void *arg, int64_t i0, int64_t i1, int tid)
{
    const s_conv_t *p = arg;
    int64_t n = p->d.B * p->OHW, OC = p->d.OC;
    float *y = p->col + s_round16((size_t)(p->CKK * n));
    for (int64_t i = i0; i < i1; i++) {
        int64_t m0, m1, n0, n1;
        s_block(i / p->nN, p->nM, OC, &m0, &m1);
        s_block(i % p->nN, p->nN, n, &n0, &n1);
        nn_cpu_gemm1(p->packs + (size_t)tid * NN_GEMM_PACK_FLOATS, false, false, m1 - m0, n1 - n0, p->CKK, 1.0f,
                     p->w + m0 * p->CKK, p->CKK, p->col + n0, n, 0.0f, y + m0 * n + n0, n,
                     p->bias ? p->bias + m0 : NULL);
    }
}

static void s_small_scatter_task(void *arg, int64_t k0, int64_t k1, int tid)
{
    const s_conv_t *p = arg;
    int64_t n = p->d.B * p->OHW, OC = p->d.OC;
    const float *y = p->col + s_round16((size_t)(p->CKK * n));
    for (int64_t k = k0; k < k1; k++)
        for (int64_t b = 0; b < p->d.B; b++)
            memcpy(p->out + (b * OC + k) * p->OHW, y + k * n + b * p->OHW, (size_t)p->OHW * sizeof(float));
}

static void s_small_forward(nn_ctx_t *ctx, s_conv_t *p)
{
    p->r0 = 0;
    p->r1 = p->OH;
    nn_cpu_parallel(ctx, p->d.B * p->d.C, 1, s_small_im2col_task, p);
    /* one block of rows per thread: each block packs all the columns for itself
     * (with booth's kernel the bytes depend on no split: s_small) */
    p->nN = 1;
    p->nM = ctx->threads < p->d.OC ? ctx->threads : p->d.OC;
    nn_cpu_parallel(ctx, p->nM * p->nN, 1, s_small_fwd_task, p);
    nn_cpu_parallel(ctx, p->d.OC, 64, s_small_scatter_task, p);
}

static size_t s_im2col_fwd_floats(const nn_conv2d_dims_t *d)
{
    s_conv_t p;
    s_plan(&p, d);
    if (s_small(&p)) return s_small_fwd_floats(&p);
    return p.pointwise ? 0 : (size_t)(p.CKK * p.R * p.OW);
}

static void s_im2col_forward(nn_ctx_t *ctx, float *scratch, float *out, const float *inp, const float *w,
                             const float *bias, const nn_conv2d_dims_t *d)
{
    s_conv_t p;
    s_plan(&p, d);
    p.out = out;
    p.inp = inp;
    p.w = w;
    p.bias = bias;
    p.col = scratch;
    p.packs = ctx->packs; /* made sure of by the entry points */
    nn_cpu_blas_threads(1);
    if (s_small(&p)) {
        s_small_forward(ctx, &p);
        return;
    }
    for (p.b = 0; p.b < d->B; p.b++)
        for (int64_t band = 0; band < p.nbands; band++) {
            s_band(&p, band);
            if (!p.pointwise) nn_cpu_parallel(ctx, d->C, 1, s_im2col_task, &p);
            s_split(d->OC, (p.r1 - p.r0) * p.OW, &p.nM, &p.nN);
            nn_cpu_parallel(ctx, p.nM * p.nN, 1, s_fwd_gemm_task, &p);
        }
}

/* ---- input gradient by col2im (dinp = W^T . dout, scattered back) ---- */

/* channel blocks of the input gradient: each owns its channels of dinp */
static int64_t s_dinp_blocks(const nn_conv2d_dims_t *d) { return d->C < 8 ? d->C : 8; }

static void s_dinp_task(void *arg, int64_t i0, int64_t i1, int tid)
{
    s_conv_t *p = arg;
    const nn_conv2d_dims_t *d = &p->d;
    int64_t KK = d->KH * d->KW, P = (p->r1 - p->r0) * p->OW, nb = s_dinp_blocks(d);
    const float *g = p->dout + p->b * d->OC * p->OHW + p->r0 * p->OW;
    float *dimg = p->out + p->b * d->C * d->H * d->W;
    for (int64_t i = i0; i < i1; i++) {
        int64_t c0, c1;
        if (p->pointwise) { /* pixels map 1:1 onto input pixels: blocks of dinp written directly */
            int64_t n0, n1;
            s_block(i / p->nN, p->nM, d->C, &c0, &c1);
            s_block(i % p->nN, p->nN, P, &n0, &n1);
            nn_cpu_gemm1(p->packs + (size_t)tid * NN_GEMM_PACK_FLOATS, true, false, c1 - c0, n1 - n0, d->OC, 1.0f,
                         p->w + c0, d->C, g + n0, p->OHW, 0.0f, dimg + c0 * p->OHW + p->r0 * p->OW + n0, p->OHW, NULL);
            continue;
        }
        s_block(i, nb, d->C, &c0, &c1);
        float *dcol = p->col + c0 * KK * P;
        nn_cpu_gemm1(p->packs + (size_t)tid * NN_GEMM_PACK_FLOATS, true, false, (c1 - c0) * KK, P, d->OC, 1.0f,
                     p->w + c0 * KK, p->CKK, g, p->OHW, 0.0f, dcol, P, NULL);
        s_col2im(p, dimg, p->col, P, 1, c0, c1);
    }
}

static void s_zero_task(void *arg, int64_t i0, int64_t i1, int tid)
{
    float *x = arg;
    memset(x + i0, 0, (size_t)(i1 - i0) * sizeof(float));
}

/* ---- input gradient of small images: dcol^T = dout^T . W, the whole batch at once ----
 *
 * With few output pixels (s_small: the UNet's 8x8 and 4x4 levels), col2im's
 * product dcol = W^T . dout is tall and narrow: W^T is packed again for every
 * image, which costs as much as the arithmetic, and most of the register tile's
 * 64 columns are empty. The same product transposed over all images at once,
 * dcol^T[B P, CKK] = dout^T . W, packs W in its own layout once and fills the
 * tile. With booth's kernel each dcol element is the same FMAs in the same order
 * either way (its bytes depend on neither the orientation nor M or N), and the
 * scatter adds into dinp in s_col2im's order, so the bytes are the banded path's
 * (one band per image): the choice may depend on the batch size. */
/* scratch: dout gathered as [OC, B P] | dcol^T [B P, CKK] */
static size_t s_small_dinp_floats(const s_conv_t *p)
{
    int64_t n = p->d.B * p->OHW;
    return s_round16((size_t)(p->d.OC * n)) + (size_t)(n * p->CKK);
}

static void s_gather_task(void *arg, int64_t k0, int64_t k1, int tid)
{
    const s_conv_t *p = arg;
    int64_t n = p->d.B * p->OHW, OC = p->d.OC;
    for (int64_t k = k0; k < k1; k++)
        for (int64_t b = 0; b < p->d.B; b++)
            memcpy(p->col + k * n + b * p->OHW, p->dout + (b * OC + k) * p->OHW, (size_t)p->OHW * sizeof(float));
}

static void s_small_dinp_task(void *arg, int64_t i0, int64_t i1, int tid)
{
    const s_conv_t *p = arg;
    const nn_conv2d_dims_t *d = &p->d;
    int64_t KK = d->KH * d->KW, n = d->B * p->OHW, nb = s_dinp_blocks(d);
    const float *g = p->col;
    float *dct = p->col + s_round16((size_t)(d->OC * n));
    for (int64_t i = i0; i < i1; i++) {
        int64_t c0, c1;
        s_block(i, nb, d->C, &c0, &c1);
        nn_cpu_gemm1(p->packs + (size_t)tid * NN_GEMM_PACK_FLOATS, true, false, n, (c1 - c0) * KK, d->OC, 1.0f, g, n,
                     p->w + c0 * KK, p->CKK, 0.0f, dct + c0 * KK, p->CKK, NULL);
        for (int64_t b = 0; b < d->B; b++)
            s_col2im(p, p->out + b * d->C * d->H * d->W, dct + b * p->OHW * p->CKK, 1, p->CKK, c0, c1);
    }
}

static void s_small_dinp_run(nn_ctx_t *ctx, s_conv_t *p)
{
    const nn_conv2d_dims_t *d = &p->d;
    p->r0 = 0; /* one band: the whole image */
    p->r1 = p->OH;
    nn_cpu_parallel(ctx, d->OC, 64, s_gather_task, p);
    nn_cpu_parallel(ctx, s_dinp_blocks(d), 1, s_small_dinp_task, p);
}

/* scratch for the input gradient by col2im */
static size_t s_col2im_dinp_floats(const nn_conv2d_dims_t *d)
{
    s_conv_t p;
    s_plan(&p, d);
    return s_small(&p) ? s_small_dinp_floats(&p) : s_im2col_fwd_floats(d);
}

static void s_col2im_dinp(nn_ctx_t *ctx, float *scratch, float *dinp, const float *dout, const float *w,
                          const nn_conv2d_dims_t *d)
{
    s_conv_t p;
    s_plan(&p, d);
    p.out = dinp;
    p.dout = dout;
    p.w = w;
    p.col = scratch;
    p.packs = ctx->packs;
    if (!p.pointwise) nn_cpu_parallel(ctx, d->B * d->C * d->H * d->W, NN_GRAIN * 4, s_zero_task, dinp);
    nn_cpu_blas_threads(1);
    if (s_small(&p)) {
        s_small_dinp_run(ctx, &p);
        return;
    }
    for (p.b = 0; p.b < d->B; p.b++)
        for (int64_t band = 0; band < p.nbands; band++) { /* in order: overlapping rows add up in band order */
            s_band(&p, band);
            s_split(d->C, (p.r1 - p.r0) * p.OW, &p.nM, &p.nN);
            nn_cpu_parallel(ctx, p.pointwise ? p.nM * p.nN : s_dinp_blocks(d), 1, s_dinp_task, &p);
        }
}

/* ---- weight gradient: dw[OC, CKK] += dout_band[OC, P] . col[CKK, P]^T ---- */

static void s_dw_gemm_task(void *arg, int64_t i0, int64_t i1, int tid)
{
    s_conv_t *p = arg;
    const nn_conv2d_dims_t *d = &p->d;
    int64_t P = (p->r1 - p->r0) * p->OW, ldb;
    const float *bmat = s_cols(p, &ldb);
    const float *g = p->dout + p->b * d->OC * p->OHW + p->r0 * p->OW;
    for (int64_t i = i0; i < i1; i++) {
        int64_t m0, m1, n0, n1;
        s_block(i / p->nN, p->nM, d->OC, &m0, &m1);
        s_block(i % p->nN, p->nN, p->CKK, &n0, &n1);
        nn_cpu_gemm1(p->packs + (size_t)tid * NN_GEMM_PACK_FLOATS, false, true, m1 - m0, n1 - n0, P, 1.0f,
                     g + m0 * p->OHW, p->OHW, bmat + n0 * ldb, ldb, 1.0f, p->dw + m0 * p->CKK + n0, p->CKK, NULL);
    }
}

static void s_im2col_dw(nn_ctx_t *ctx, float *scratch, float *dw, const float *dout, const float *inp,
                        const nn_conv2d_dims_t *d)
{
    s_conv_t p;
    s_plan(&p, d);
    p.dw = dw;
    p.dout = dout;
    p.inp = inp;
    p.col = scratch;
    p.packs = ctx->packs;
    s_split(d->OC, p.CKK, &p.nM, &p.nN);
    nn_cpu_blas_threads(1);
    for (p.b = 0; p.b < d->B; p.b++)
        for (int64_t band = 0; band < p.nbands; band++) {
            s_band(&p, band);
            if (!p.pointwise) nn_cpu_parallel(ctx, d->C, 1, s_im2col_task, &p);
            nn_cpu_parallel(ctx, p.nM * p.nN, 1, s_dw_gemm_task, &p);
        }
}

/* ------------------------------------------------------------------ direct */

/* Stride 1, OC <= DIRECT_MAX_OC. A task owns whole output rows (forward) or whole
 * input channels (weight gradient); vectors run along the output row. */
typedef struct {
    const nn_conv2d_dims_t *d;
    int64_t OH, OW, OWp; /* OWp: OW rounded up to 2 LANES */
    int64_t RW;          /* padded input row length the kernels read */
    int64_t DR;          /* forward: output rows per task */
    float *out, *dw;
    const float *inp, *w, *bias, *dout;
    float *wt;  /* forward: w as [C][KH][KW][OC] */
    float *buf; /* per thread */
    size_t buf_floats;
} s_direct_t;

#define DW_OC 4       /* weight gradient: output channels per register tile */
#define DW_KX 3       /* weight gradient: kernel columns per register tile */
#define DIRECT_ROWS 8                      /* output rows per forward task, at most ... */
#define DIRECT_ROWS_FLOATS ((int64_t)1 << 20) /* ... while their padded input rows fit this */

static void s_direct_geom(s_direct_t *p, const nn_conv2d_dims_t *d)
{
    memset(p, 0, sizeof *p);
    p->d = d;
    p->OH = nn_conv2d_out_h(d);
    p->OW = nn_conv2d_out_w(d);
    p->OWp = (p->OW + 2 * LANES - 1) / (2 * LANES) * (2 * LANES);
    p->RW = s_round16((size_t)(p->OWp + d->KW + DW_KX - 2)); /* the weight gradient reads in threes */
    p->DR = DIRECT_ROWS_FLOATS / (d->C * p->RW) - (d->KH - 1);
    if (p->DR > DIRECT_ROWS) p->DR = DIRECT_ROWS;
    if (p->DR < 1 || s_tiny) p->DR = 1;
}

/* dst[x] = input row iy at column x - pl (zero outside), x in [0, RW) */
static void s_direct_row(const s_direct_t *p, float *dst, const float *plane, int64_t iy)
{
    const nn_conv2d_dims_t *d = p->d;
    int64_t RW = p->RW;
    if (iy < 0 || iy >= d->H) {
        memset(dst, 0, (size_t)RW * sizeof(float));
        return;
    }
    int64_t lo = d->pad_l < RW ? d->pad_l : RW, hi = d->pad_l + d->W < RW ? d->pad_l + d->W : RW;
    memset(dst, 0, (size_t)lo * sizeof(float));
    if (hi > lo) memcpy(dst + lo, plane + iy * d->W + (lo - d->pad_l), (size_t)(hi - lo) * sizeof(float));
    if (RW > hi) memset(dst + hi, 0, (size_t)(RW - hi) * sizeof(float));
}

/* per thread: DR + KH - 1 padded input rows of every channel */
static size_t s_direct_fwd_thread_floats(const s_direct_t *p)
{
    return s_round16((size_t)(p->d->C * (p->DR + p->d->KH - 1) * p->RW));
}

/* GCC vector extensions: a whole vector register per variable, on every target
 * NN_CLONES compiles for (the baseline one splits it into SSE registers). */
typedef float s_vec_t __attribute__((vector_size(LANES * sizeof(float))));

/* Output rows [oy0, oy1) of image b. Per LANES output columns, the noc
 * accumulators stay in registers over every (c, ky, kx); noc is a constant
 * after inlining. rows: the padded input rows of every channel, RW apart. */
S_KERNEL void s_direct_fwd_rows(const s_direct_t *p, int64_t b, int64_t oy0, int64_t oy1, float *rows, int noc)
{
    const nn_conv2d_dims_t *d = p->d;
    int64_t RW = p->RW, nr = oy1 - oy0, KK = d->KH * d->KW, CS = (p->DR + d->KH - 1) * RW;
    for (int64_t c = 0; c < d->C; c++) {
        const float *plane = p->inp + (b * d->C + c) * d->H * d->W;
        for (int64_t j = 0; j < nr + d->KH - 1; j++) s_direct_row(p, rows + c * CS + j * RW, plane, oy0 - d->pad_t + j);
    }
    /* up to 4 output channels: two column blocks at once, 8 independent sums */
    int64_t step = noc <= 4 ? 2 * LANES : LANES;
    for (int64_t r = 0; r < nr; r++)
        for (int64_t x0 = 0; x0 < p->OWp; x0 += step) {
            s_vec_t a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0}, a5 = {0}, a6 = {0}, a7 = {0};
            for (int64_t c = 0; c < d->C; c++)
                for (int64_t ky = 0; ky < d->KH; ky++) {
                    const float *src = rows + c * CS + (r + ky) * RW + x0;
                    const float *w = p->wt + (c * KK + ky * d->KW) * noc;
                    for (int64_t kx = 0; kx < d->KW; kx++, w += noc) {
                        s_vec_t v, u;
                        memcpy(&v, src + kx, sizeof v);
                        if (noc <= 4) { /* a0..a3: columns x0.., a4..a7: x0 + LANES.. */
                            memcpy(&u, src + kx + LANES, sizeof u);
                            a0 += w[0] * v, a4 += w[0] * u;
                            if (noc > 1) a1 += w[1] * v, a5 += w[1] * u;
                            if (noc > 2) a2 += w[2] * v, a6 += w[2] * u;
                            if (noc > 3) a3 += w[3] * v, a7 += w[3] * u;
                        } else {
                            a0 += w[0] * v, a1 += w[1] * v, a2 += w[2] * v, a3 += w[3] * v, a4 += w[4] * v;
                            if (noc > 5) a5 += w[5] * v;
                            if (noc > 6) a6 += w[6] * v;
                            if (noc > 7) a7 += w[7] * v;
                        }
                    }
                }
            s_vec_t acc[2 * DIRECT_MAX_OC];
            if (noc <= 4) {
                acc[0] = a0, acc[1] = a1, acc[2] = a2, acc[3] = a3;
                acc[DIRECT_MAX_OC] = a4, acc[DIRECT_MAX_OC + 1] = a5, acc[DIRECT_MAX_OC + 2] = a6,
                acc[DIRECT_MAX_OC + 3] = a7;
            } else {
                acc[0] = a0, acc[1] = a1, acc[2] = a2, acc[3] = a3, acc[4] = a4, acc[5] = a5, acc[6] = a6, acc[7] = a7;
            }
            for (int64_t half = 0; half * LANES < step; half++) {
                int64_t xb = x0 + half * LANES, n = p->OW - xb < LANES ? p->OW - xb : LANES;
                for (int oc = 0; oc < noc; oc++) {
                    float *o = p->out + ((b * d->OC + oc) * p->OH + oy0 + r) * p->OW + xb;
                    float bias = p->bias ? p->bias[oc] : 0.0f;
                    for (int64_t x = 0; x < n; x++) o[x] = acc[half * DIRECT_MAX_OC + oc][x] + bias;
                }
            }
        }
}

NN_CLONES static void s_direct_fwd(const s_direct_t *p, int64_t i0, int64_t i1, float *buf)
{
    int64_t nrb = (p->OH + p->DR - 1) / p->DR;
    for (int64_t i = i0; i < i1; i++) {
        int64_t b = i / nrb, oy0 = (i % nrb) * p->DR;
        int64_t oy1 = oy0 + p->DR < p->OH ? oy0 + p->DR : p->OH;
        switch (p->d->OC) { /* a copy of the kernel per output channel count */
        case 1: s_direct_fwd_rows(p, b, oy0, oy1, buf, 1); break;
        case 2: s_direct_fwd_rows(p, b, oy0, oy1, buf, 2); break;
        case 3: s_direct_fwd_rows(p, b, oy0, oy1, buf, 3); break;
        case 4: s_direct_fwd_rows(p, b, oy0, oy1, buf, 4); break;
        case 5: s_direct_fwd_rows(p, b, oy0, oy1, buf, 5); break;
        case 6: s_direct_fwd_rows(p, b, oy0, oy1, buf, 6); break;
        case 7: s_direct_fwd_rows(p, b, oy0, oy1, buf, 7); break;
        default: s_direct_fwd_rows(p, b, oy0, oy1, buf, 8); break;
        }
    }
}

static void s_direct_fwd_task(void *arg, int64_t i0, int64_t i1, int tid)
{
    s_direct_t *p = arg;
    s_direct_fwd(p, i0, i1, p->buf + (size_t)tid * p->buf_floats);
}

static void s_direct_wt_task(void *arg, int64_t c0, int64_t c1, int tid)
{
    s_direct_t *p = arg;
    const nn_conv2d_dims_t *d = p->d;
    int64_t KK = d->KH * d->KW;
    for (int64_t c = c0; c < c1; c++)
        for (int64_t k = 0; k < KK; k++)
            for (int64_t oc = 0; oc < d->OC; oc++) p->wt[(c * KK + k) * d->OC + oc] = p->w[(oc * d->C + c) * KK + k];
}

static size_t s_direct_fwd_floats(const nn_conv2d_dims_t *d, int threads)
{
    s_direct_t p;
    s_direct_geom(&p, d);
    return s_round16((size_t)(d->C * d->KH * d->KW * d->OC)) + (size_t)threads * s_direct_fwd_thread_floats(&p);
}

static void s_direct_forward(nn_ctx_t *ctx, float *scratch, float *out, const float *inp, const float *w,
                             const float *bias, const nn_conv2d_dims_t *d)
{
    s_direct_t p;
    s_direct_geom(&p, d);
    p.out = out;
    p.inp = inp;
    p.w = w;
    p.bias = bias;
    p.wt = scratch;
    p.buf = scratch + s_round16((size_t)(d->C * d->KH * d->KW * d->OC));
    p.buf_floats = s_direct_fwd_thread_floats(&p);
    s_direct_wt_task(&p, 0, d->C, 0); /* small: not worth waking the pool for */
    nn_cpu_parallel(ctx, d->B * ((p.OH + p.DR - 1) / p.DR), 1, s_direct_fwd_task, &p);
}

/* ---- direct weight gradient: a task owns input channels. Per channel, tiles of
 * 4 output channels x 3 kernel columns keep 12 vectors of partial sums in
 * registers over the whole image; the LANES partial sums of each weight are
 * added up in a fixed order at the end. ---- */

/* dout with each row padded to OWp (zeros), plus one zero row: [B][OC][OH][OWp], [OWp] */
typedef struct {
    const s_direct_t *p;
    float *dpad;
} s_dpad_t;

static void s_dpad_task(void *arg, int64_t i0, int64_t i1, int tid)
{
    s_dpad_t *a = arg;
    const s_direct_t *p = a->p;
    for (int64_t i = i0; i < i1; i++) { /* i: (b, oc, oy) row */
        float *dst = a->dpad + i * p->OWp;
        memcpy(dst, p->dout + i * p->OW, (size_t)p->OW * sizeof(float));
        memset(dst + p->OW, 0, (size_t)(p->OWp - p->OW) * sizeof(float));
    }
}

static size_t s_direct_dw_thread_floats(const s_direct_t *p)
{
    const nn_conv2d_dims_t *d = p->d;
    return s_round16((size_t)(DIRECT_MAX_OC * d->KH * (d->KW + DW_KX) * LANES + (p->OH + d->KH - 1) * p->RW));
}

/* acc[(oc * KH + ky) * KWp + kx][LANES] += the tile (oc0.., ky, kx0..) over image b */
NN_CLONES static void s_direct_dw_tile(const s_direct_t *p, float *acc, int64_t KWp, const float *plane,
                                       const float *const g[DW_OC], int64_t ky, int64_t kx0, int64_t oc0)
{
    int64_t OWp = p->OWp, RW = p->RW;
    s_vec_t a00 = {0}, a01 = {0}, a02 = {0}, a10 = {0}, a11 = {0}, a12 = {0};
    s_vec_t a20 = {0}, a21 = {0}, a22 = {0}, a30 = {0}, a31 = {0}, a32 = {0};
    for (int64_t oy = 0; oy < p->OH; oy++) {
        const float *row = plane + (oy + ky) * RW + kx0;
        int64_t go = oy * OWp;
        for (int64_t x0 = 0; x0 < OWp; x0 += LANES) {
            s_vec_t v0, v1, v2, g0, g1, g2, g3;
            memcpy(&v0, row + x0, sizeof v0);
            memcpy(&v1, row + x0 + 1, sizeof v1);
            memcpy(&v2, row + x0 + 2, sizeof v2);
            memcpy(&g0, g[0] + go + x0, sizeof g0);
            memcpy(&g1, g[1] + go + x0, sizeof g1);
            memcpy(&g2, g[2] + go + x0, sizeof g2);
            memcpy(&g3, g[3] + go + x0, sizeof g3);
            a00 += g0 * v0, a01 += g0 * v1, a02 += g0 * v2;
            a10 += g1 * v0, a11 += g1 * v1, a12 += g1 * v2;
            a20 += g2 * v0, a21 += g2 * v1, a22 += g2 * v2;
            a30 += g3 * v0, a31 += g3 * v1, a32 += g3 * v2;
        }
    }
    s_vec_t t[DW_OC][DW_KX] = {{a00, a01, a02}, {a10, a11, a12}, {a20, a21, a22}, {a30, a31, a32}};
    for (int i = 0; i < DW_OC; i++)
        for (int j = 0; j < DW_KX; j++) {
            float *dst = acc + (((oc0 + i) * p->d->KH + ky) * KWp + kx0 + j) * LANES;
            s_vec_t sum;
            memcpy(&sum, dst, sizeof sum);
            sum += t[i][j];
            memcpy(dst, &sum, sizeof sum);
        }
}

static void s_direct_dw_channel(const s_direct_t *p, const float *dpad, const float *zeros, int64_t c, float *buf)
{
    const nn_conv2d_dims_t *d = p->d;
    int64_t KK = d->KH * d->KW, KWp = (d->KW + DW_KX - 1) / DW_KX * DW_KX, OCp = (d->OC + DW_OC - 1) / DW_OC * DW_OC;
    int64_t plane_rows = p->OH + d->KH - 1, gplane = p->OH * p->OWp;
    float *acc = buf, *plane = acc + OCp * d->KH * KWp * LANES;
    memset(acc, 0, (size_t)(OCp * d->KH * KWp * LANES) * sizeof(float));
    for (int64_t b = 0; b < d->B; b++) {
        const float *src = p->inp + (b * d->C + c) * d->H * d->W;
        for (int64_t j = 0; j < plane_rows; j++) s_direct_row(p, plane + j * p->RW, src, j - d->pad_t);
        for (int64_t oc0 = 0; oc0 < d->OC; oc0 += DW_OC) {
            const float *g[DW_OC];
            for (int i = 0; i < DW_OC; i++) /* missing output channels read zeros */
                g[i] = oc0 + i < d->OC ? dpad + (b * d->OC + oc0 + i) * gplane : zeros;
            for (int64_t ky = 0; ky < d->KH; ky++)
                for (int64_t kx0 = 0; kx0 < d->KW; kx0 += DW_KX) s_direct_dw_tile(p, acc, KWp, plane, g, ky, kx0, oc0);
        }
    }
    for (int64_t oc = 0; oc < d->OC; oc++)
        for (int64_t k = 0; k < KK; k++) {
            const float *a = acc + ((oc * d->KH + k / d->KW) * KWp + k % d->KW) * LANES;
            float sum = 0;
            for (int l = 0; l < LANES; l++) sum += a[l];
            p->dw[(oc * d->C + c) * KK + k] += sum;
        }
}

typedef struct {
    const s_direct_t *p;
    const float *dpad, *zeros;
} s_dw_args_t;

static void s_direct_dw_task(void *arg, int64_t c0, int64_t c1, int tid)
{
    s_dw_args_t *a = arg;
    float *buf = a->p->buf + (size_t)tid * a->p->buf_floats;
    for (int64_t c = c0; c < c1; c++) s_direct_dw_channel(a->p, a->dpad, a->zeros, c, buf);
}

/* scratch: padded dout | a zero plane | per-thread partial sums and padded input plane */
static size_t s_direct_dw_floats(const nn_conv2d_dims_t *d, int threads)
{
    s_direct_t p;
    s_direct_geom(&p, d);
    return s_round16((size_t)(d->B * d->OC * p.OH * p.OWp)) + s_round16((size_t)(p.OH * p.OWp)) +
           (size_t)threads * s_direct_dw_thread_floats(&p);
}

static void s_direct_weight_grad(nn_ctx_t *ctx, float *scratch, float *dw, const float *dout, const float *inp,
                                 const nn_conv2d_dims_t *d)
{
    s_direct_t p;
    s_direct_geom(&p, d);
    p.dw = dw;
    p.dout = dout;
    p.inp = inp;
    size_t nd = s_round16((size_t)(d->B * d->OC * p.OH * p.OWp)), nz = s_round16((size_t)(p.OH * p.OWp));
    s_dw_args_t a = {.p = &p, .dpad = scratch, .zeros = scratch + nd};
    memset(scratch + nd, 0, nz * sizeof(float));
    p.buf = scratch + nd + nz;
    p.buf_floats = s_direct_dw_thread_floats(&p);
    s_dpad_t dp = {.p = &p, .dpad = scratch};
    s_dpad_task(&dp, 0, d->B * d->OC * p.OH, 0); /* a few outputs' worth: not worth waking the pool for */
    nn_cpu_parallel(ctx, d->C, 1, s_direct_dw_task, &a);
}

/* --------------------------------------------------------------- forward */

static size_t s_forward_floats(const nn_conv2d_dims_t *d, s_alg_t alg, int threads)
{
    switch (alg) {
    case S_WINOGRAD: return nn_cpu_winograd_floats(d, NN_WINO_FWD, threads);
    case S_DIRECT: return s_direct_fwd_floats(d, threads);
    default: return s_im2col_fwd_floats(d);
    }
}

static void s_forward(nn_ctx_t *ctx, float *scratch, s_alg_t alg, float *out, const float *inp, const float *w,
                      const float *b, const nn_conv2d_dims_t *d)
{
    switch (alg) {
    case S_WINOGRAD: nn_cpu_winograd_forward(ctx, scratch, out, inp, w, b, d); break;
    case S_DIRECT: s_direct_forward(ctx, scratch, out, inp, w, b, d); break;
    default: s_im2col_forward(ctx, scratch, out, inp, w, b, d); break;
    }
}

int nn_cpu_conv2d_forward(nn_ctx_t *ctx, float *out, const float *inp, const float *w, const float *b,
                          const nn_conv2d_dims_t *d)
{
    int rc = s_check(d);
    if (rc || d->B == 0) return rc;
    s_alg_t alg = s_choose(d);
    float *scratch = NULL;
    if (!nn_cpu_gemm_packs(ctx)) return BT_ENOMEM;
    size_t need = s_forward_floats(d, alg, ctx->threads);
    if (need && !(scratch = nn_ctx_scratch(ctx, need * sizeof(float)))) return BT_ENOMEM;
    s_forward(ctx, scratch, alg, out, inp, w, b, d);
    return BT_OK;
}

/* -------------------------------------------------------------- backward */

/* The input gradient of a stride-1 convolution as a convolution of dout. */
static bool s_dinp_as_conv(const nn_conv2d_dims_t *d, nn_conv2d_dims_t *di)
{
    if (d->stride != 1 || s_pointwise(d) || d->pad_t >= d->KH || d->pad_b >= d->KH || d->pad_l >= d->KW ||
        d->pad_r >= d->KW)
        return false;
    *di = (nn_conv2d_dims_t){.B = d->B, .C = d->OC, .H = nn_conv2d_out_h(d), .W = nn_conv2d_out_w(d), .OC = d->C,
                             .KH = d->KH, .KW = d->KW, .stride = 1, .pad_t = (int)d->KH - 1 - d->pad_t,
                             .pad_b = (int)d->KH - 1 - d->pad_b, .pad_l = (int)d->KW - 1 - d->pad_l,
                             .pad_r = (int)d->KW - 1 - d->pad_r};
    return true;
}

typedef struct {
    const float *w;
    float *wf;
    const nn_conv2d_dims_t *d;
} s_flip_t;

/* wf[c][oc][ky][kx] = w[oc][c][KH-1-ky][KW-1-kx], for c in blocks [c0, c1) of 16
 * channels: 16 x 16 kernels at a time, so that reads and writes both run along rows */
static void s_flip_task(void *arg, int64_t c0, int64_t c1, int tid)
{
    s_flip_t *p = arg;
    const nn_conv2d_dims_t *d = p->d;
    int64_t KK = d->KH * d->KW;
    for (int64_t cb = c0 * 16; cb < c1 * 16 && cb < d->C; cb += 16) {
        int64_t ce = cb + 16 < d->C ? cb + 16 : d->C;
        for (int64_t ob = 0; ob < d->OC; ob += 16) {
            int64_t oe = ob + 16 < d->OC ? ob + 16 : d->OC;
            for (int64_t c = cb; c < ce; c++)
                for (int64_t oc = ob; oc < oe; oc++) {
                    const float *src = p->w + (oc * d->C + c) * KK;
                    float *dst = p->wf + (c * d->OC + oc) * KK;
                    for (int64_t k = 0; k < KK; k++) dst[k] = src[KK - 1 - k];
                }
        }
    }
}

typedef struct {
    float *db;
    const float *dout;
    int64_t B, OC, OHW;
} s_db_t;

/* db[oc] += sum of dout over images and pixels, in double: LANES running sums
 * (pixel j into sum j mod LANES, image after image), added up in order at the end. */
NN_CLONES static void s_db_task(void *arg, int64_t o0, int64_t o1, int tid)
{
    s_db_t *p = arg;
    for (int64_t oc = o0; oc < o1; oc++) {
        double acc[LANES] = {0};
        for (int64_t b = 0; b < p->B; b++) {
            const float *g = p->dout + (b * p->OC + oc) * p->OHW;
            int64_t j = 0;
            for (; j + LANES <= p->OHW; j += LANES)
                for (int l = 0; l < LANES; l++) acc[l] += g[j + l];
            for (; j < p->OHW; j++) acc[j % LANES] += g[j];
        }
        double s = 0;
        for (int l = 0; l < LANES; l++) s += acc[l];
        p->db[oc] += (float)s;
    }
}

int nn_cpu_conv2d_backward(nn_ctx_t *ctx, float *dinp, float *dw, float *db, const float *dout, const float *inp,
                           const float *w, const nn_conv2d_dims_t *d)
{
    int rc = s_check(d);
    if (rc || d->B == 0) return rc;

    /* plan every part first: one scratch buffer serves them in turn */
    nn_conv2d_dims_t di;
    bool as_conv = dinp && s_dinp_as_conv(d, &di);
    s_alg_t dinp_alg = as_conv ? s_choose(&di) : S_IM2COL, dw_alg = S_IM2COL;
    /* col2im's sgemm has OC as its inner dimension: better than rotating the
     * weights for an im2col convolution unless OC is small */
    if (as_conv && dinp_alg == S_IM2COL && d->OC >= DINP_COL2IM_MIN_OC && s_force != NN_CONV_IM2COL) as_conv = false;
    if (s_force == NN_CONV_COL2IM) as_conv = false;
    size_t flip_floats = 0, dinp_floats = 0, dw_floats = 0;
    if (as_conv && dinp_alg == S_WINOGRAD) { /* Winograd rotates the kernels itself */
        dinp_floats = nn_cpu_winograd_floats(d, NN_WINO_DINP, ctx->threads);
    } else if (as_conv) {
        flip_floats = s_round16((size_t)(d->C * d->OC * d->KH * d->KW));
        dinp_floats = flip_floats + s_forward_floats(&di, dinp_alg, ctx->threads);
    } else if (dinp) {
        dinp_floats = s_col2im_dinp_floats(d);
    }
    if (dw) {
        dw_alg = s_choose(d);
        if (dw_alg == S_WINOGRAD)
            dw_floats = nn_cpu_winograd_floats(d, NN_WINO_DW, ctx->threads);
        else if (dw_alg == S_DIRECT)
            dw_floats = s_direct_dw_floats(d, ctx->threads);
        else
            dw_floats = s_im2col_fwd_floats(d);
    }
    size_t need = dinp_floats > dw_floats ? dinp_floats : dw_floats;
    float *scratch = NULL;
    if (!nn_cpu_gemm_packs(ctx)) return BT_ENOMEM;
    if (need && !(scratch = nn_ctx_scratch(ctx, need * sizeof(float)))) return BT_ENOMEM;

    if (as_conv && dinp_alg == S_WINOGRAD) {
        nn_cpu_winograd_dinp(ctx, scratch, dinp, dout, w, d);
    } else if (as_conv) {
        s_flip_t f = {.w = w, .wf = scratch, .d = d};
        nn_cpu_parallel(ctx, (d->C + 15) / 16, 1, s_flip_task, &f);
        s_forward(ctx, scratch + flip_floats, dinp_alg, dinp, dout, scratch, NULL, &di);
    } else if (dinp) {
        s_col2im_dinp(ctx, scratch, dinp, dout, w, d);
    }
    if (dw) {
        if (dw_alg == S_WINOGRAD)
            nn_cpu_winograd_dw(ctx, scratch, dw, dout, inp, d);
        else if (dw_alg == S_DIRECT)
            s_direct_weight_grad(ctx, scratch, dw, dout, inp, d);
        else
            s_im2col_dw(ctx, scratch, dw, dout, inp, d);
    }
    if (db) {
        s_db_t a = {.db = db, .dout = dout, .B = d->B, .OC = d->OC, .OHW = nn_conv2d_out_h(d) * nn_conv2d_out_w(d)};
        nn_cpu_parallel(ctx, d->OC, 1, s_db_task, &a);
    }
    return BT_OK;
}
