/*
 * bench_ops.c — forward and forward+backward time of nn/ ops on Stable Diffusion
 * 1.5 shapes at 512 px (batch 1), one JSON line per row.
 *
 *   bench_ops [--row NAME] [--iters N] [--threads T] [--list]
 *   bench_ops --gemm [--iters N] [--threads T]
 *
 * bench/ops.py runs this and the same rows in PyTorch side by side and prints
 * the ratios; see docs/BENCHMARKS.md. Each figure is the median of N samples
 * after one warm-up run; a sample is one run, or the mean of as many runs as
 * fill 20 ms for rows faster than that.
 *
 * --gemm: booth's matrix product (nn/cpu/gemm.c) against OpenBLAS's sgemm on
 * the products of an SD 1.5 training step at 512 px (batch 2), the two kernel
 * sets alternating shape by shape in this one process; a markdown table.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/pool.h"
#include "nn/cpu/cpu.h"
#include "nn/nn.h"

static double s_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static float *s_buf(int64_t n, uint64_t seed)
{
    float *x = aligned_alloc(64, (size_t)((n * 4 + 63) / 64 * 64));
    uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
    for (int64_t i = 0; i < n; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        x[i] = (float)((double)(s >> 11) / 9007199254740992.0 - 0.5);
    }
    return x;
}

static int s_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct row row_t;
typedef void (*step_fn)(nn_ctx_t *ctx, row_t *r, int mode);

enum { MODE_FWD, MODE_FWDBWD, MODE_FWDBWD_FROZEN };

struct row {
    const char *name;
    const char *what;
    step_fn fn;
    int64_t p[8];
    float *buf[12];
    bool frozen_row; /* has a separate "weights frozen" backward (LoRA's case) */
};

/* ---- conv3x3, stride 1, pad 1: p = {C, H, W, OC, B} (OC 0: OC = C; B 0: 1) ---- */
static void s_conv(nn_ctx_t *ctx, row_t *r, int mode)
{
    int64_t C = r->p[0], H = r->p[1], W = r->p[2], OC = r->p[3] ? r->p[3] : C, B = r->p[4] ? r->p[4] : 1;
    nn_conv2d_dims_t d = {.B = B, .C = C, .H = H, .W = W, .OC = OC, .KH = 3, .KW = 3, .stride = 1,
                          .pad_t = 1, .pad_b = 1, .pad_l = 1, .pad_r = 1};
    if (!r->buf[0]) {
        r->buf[0] = s_buf(B * C * H * W, 1);  /* x */
        r->buf[1] = s_buf(OC * C * 9, 2);     /* w */
        r->buf[2] = s_buf(OC, 3);             /* b */
        r->buf[3] = s_buf(B * OC * H * W, 4); /* y */
        r->buf[4] = s_buf(B * OC * H * W, 5); /* dy */
        r->buf[5] = s_buf(B * C * H * W, 6);  /* dx */
        r->buf[6] = s_buf(OC * C * 9, 7);     /* dw */
        r->buf[7] = s_buf(OC, 8);             /* db */
    }
    nn_conv2d_forward(ctx, r->buf[3], r->buf[0], r->buf[1], r->buf[2], &d);
    if (mode == MODE_FWDBWD)
        nn_conv2d_backward(ctx, r->buf[5], r->buf[6], r->buf[7], r->buf[4], r->buf[0], r->buf[1], &d);
    else if (mode == MODE_FWDBWD_FROZEN)
        nn_conv2d_backward(ctx, r->buf[5], NULL, NULL, r->buf[4], r->buf[0], r->buf[1], &d);
}

/* ---- group norm: p = {C, HW, G} ---- */
static void s_gn(nn_ctx_t *ctx, row_t *r, int mode)
{
    int64_t C = r->p[0], HW = r->p[1], G = r->p[2];
    if (!r->buf[0]) {
        r->buf[0] = s_buf(C * HW, 1);
        r->buf[1] = s_buf(C, 2);
        r->buf[2] = s_buf(C, 3);
        r->buf[3] = s_buf(C * HW, 4);
        r->buf[4] = s_buf(G, 5);
        r->buf[5] = s_buf(G, 6);
        r->buf[6] = s_buf(C * HW, 7);
        r->buf[7] = s_buf(C * HW, 8);
        r->buf[8] = s_buf(C, 9);
        r->buf[9] = s_buf(C, 10);
    }
    nn_group_norm_forward(ctx, r->buf[3], r->buf[4], r->buf[5], r->buf[0], r->buf[1], r->buf[2], 1, C, HW, G, 1e-5f);
    if (mode != MODE_FWD)
        nn_group_norm_backward(ctx, r->buf[7], mode == MODE_FWDBWD ? r->buf[8] : NULL,
                               mode == MODE_FWDBWD ? r->buf[9] : NULL, r->buf[6], r->buf[0], r->buf[4], r->buf[5],
                               r->buf[1], 1, C, HW, G);
}

/* ---- attention core: p = {Tq, Tk, H, D, causal} ---- */
static void s_attn(nn_ctx_t *ctx, row_t *r, int mode)
{
    int64_t Tq = r->p[0], Tk = r->p[1], H = r->p[2], D = r->p[3];
    nn_attn_dims_t d = {.B = 1, .Tq = Tq, .Tk = Tk, .H = H, .D = D, .scale = 1.0f / sqrtf((float)D),
                        .causal = r->p[4] != 0};
    if (!r->buf[0]) {
        r->buf[0] = s_buf(Tq * H * D, 1);
        r->buf[1] = s_buf(Tk * H * D, 2);
        r->buf[2] = s_buf(Tk * H * D, 3);
        r->buf[3] = s_buf(Tq * H * D, 4);
        r->buf[4] = s_buf(H * Tq, 5);
        r->buf[5] = s_buf(Tq * H * D, 6);
        r->buf[6] = s_buf(Tq * H * D, 7);
        r->buf[7] = s_buf(Tk * H * D, 8);
        r->buf[8] = s_buf(Tk * H * D, 9);
    }
    nn_attention_forward(ctx, r->buf[3], mode == MODE_FWD ? NULL : r->buf[4], r->buf[0], r->buf[1], r->buf[2], &d);
    if (mode != MODE_FWD)
        nn_attention_backward(ctx, r->buf[6], r->buf[7], r->buf[8], r->buf[5], r->buf[0], r->buf[1], r->buf[2],
                              r->buf[3], r->buf[4], &d);
}

/* ---- cross-attention with projections: p = {Tq, Tk, C, Cctx, H} ----
 * q = x Wq^T, k = ctx Wk^T, v = ctx Wv^T, o = attn(q,k,v), y = o Wo^T + bo */
static void s_xattn(nn_ctx_t *ctx, row_t *r, int mode)
{
    int64_t Tq = r->p[0], Tk = r->p[1], C = r->p[2], Cc = r->p[3], H = r->p[4], D = C / H;
    nn_attn_dims_t d = {.B = 1, .Tq = Tq, .Tk = Tk, .H = H, .D = D, .scale = 1.0f / sqrtf((float)D)};
    float **b = r->buf;
    if (!b[0]) {
        b[0] = s_buf(Tq * C, 1);          /* x */
        b[1] = s_buf(Tk * Cc, 2);         /* context */
        b[2] = s_buf(C * C + 2 * C * Cc + C * C + C, 3); /* Wq | Wk | Wv | Wo | bo */
        b[3] = s_buf(Tq * C, 4);          /* q */
        b[4] = s_buf(2 * Tk * C, 5);      /* k | v */
        b[5] = s_buf(Tq * C, 6);          /* o */
        b[6] = s_buf(Tq * C, 7);          /* y */
        b[7] = s_buf(H * Tq, 8);          /* lse */
        b[8] = s_buf(Tq * C, 9);          /* dy */
        b[9] = s_buf(Tq * C * 2, 10);     /* do | dq */
        b[10] = s_buf(2 * Tk * C, 11);    /* dk | dv */
        b[11] = s_buf(Tq * C + 2 * Tk * Cc, 12); /* dx | dctx x2 */
    }
    float *Wq = b[2], *Wk = Wq + C * C, *Wv = Wk + C * Cc, *Wo = Wv + C * Cc, *bo = Wo + C * C;
    float *k = b[4], *v = k + Tk * C, *dO = b[9], *dq = dO + Tq * C, *dk = b[10], *dv = dk + Tk * C;
    nn_linear_forward(ctx, b[3], b[0], Wq, NULL, Tq, C, C);
    nn_linear_forward(ctx, k, b[1], Wk, NULL, Tk, Cc, C);
    nn_linear_forward(ctx, v, b[1], Wv, NULL, Tk, Cc, C);
    nn_attention_forward(ctx, b[5], mode == MODE_FWD ? NULL : b[7], b[3], k, v, &d);
    nn_linear_forward(ctx, b[6], b[5], Wo, bo, Tq, C, C);
    if (mode == MODE_FWD) return;
    /* frozen projections: gradients w.r.t. x and the context only (as with LoRA on a frozen base) */
    nn_linear_backward(ctx, dO, NULL, NULL, b[8], b[5], Wo, Tq, C, C);
    nn_attention_backward(ctx, dq, dk, dv, dO, b[3], k, v, b[5], b[7], &d);
    nn_linear_backward(ctx, b[11], NULL, NULL, dq, b[0], Wq, Tq, C, C);
    nn_linear_backward(ctx, b[11] + Tq * C, NULL, NULL, dk, b[1], Wk, Tk, Cc, C);
    nn_linear_backward(ctx, b[11] + Tq * C + Tk * Cc, NULL, NULL, dv, b[1], Wv, Tk, Cc, C);
}

/* ---- linear: p = {M, K, N} ---- */
static void s_linear(nn_ctx_t *ctx, row_t *r, int mode)
{
    int64_t M = r->p[0], K = r->p[1], N = r->p[2];
    float **b = r->buf;
    if (!b[0]) {
        b[0] = s_buf(M * K, 1);
        b[1] = s_buf(N * K, 2);
        b[2] = s_buf(N, 3);
        b[3] = s_buf(M * N, 4);
        b[4] = s_buf(M * N, 5);
        b[5] = s_buf(M * K, 6);
        b[6] = s_buf(N * K, 7);
        b[7] = s_buf(N, 8);
    }
    nn_linear_forward(ctx, b[3], b[0], b[1], b[2], M, K, N);
    if (mode == MODE_FWDBWD)
        nn_linear_backward(ctx, b[5], b[6], b[7], b[4], b[0], b[1], M, K, N);
    else if (mode == MODE_FWDBWD_FROZEN)
        nn_linear_backward(ctx, b[5], NULL, NULL, b[4], b[0], b[1], M, K, N);
}

static row_t s_rows[] = {
    {"conv3x3_320_64", "conv3x3 320->320 @64x64", s_conv, {320, 64, 64}, {0}, true},
    {"conv3x3_640_32", "conv3x3 640->640 @32x32", s_conv, {640, 32, 32}, {0}, true},
    {"conv3x3_1280_16", "conv3x3 1280->1280 @16x16", s_conv, {1280, 16, 16}, {0}, true},
    {"conv3x3_1280_8", "conv3x3 1280->1280 @8x8", s_conv, {1280, 8, 8}, {0}, true},
    {"conv3x3_1280_8_b2", "conv3x3 1280->1280 @8x8, batch 2 (256 px step)", s_conv, {1280, 8, 8, 0, 2}, {0}, true},
    {"conv3x3_1280_4_b2", "conv3x3 1280->1280 @4x4, batch 2 (256 px step)", s_conv, {1280, 4, 4, 0, 2}, {0}, true},
    {"conv_in_4_320_64", "conv3x3 4->320 @64x64 (UNet conv_in)", s_conv, {4, 64, 64, 320}, {0}, true},
    {"conv_out_320_4_64", "conv3x3 320->4 @64x64 (UNet conv_out)", s_conv, {320, 64, 64, 4}, {0}, true},
    {"vae_conv_512_128", "conv3x3 512->512 @128x128 (VAE decoder)", s_conv, {512, 128, 128}, {0}, true},
    {"vae_conv_256_256", "conv3x3 256->256 @256x256 (VAE decoder)", s_conv, {256, 256, 256}, {0}, true},
    {"vae_conv_128_512", "conv3x3 128->128 @512x512 (VAE decoder)", s_conv, {128, 512, 512}, {0}, true},
    {"tiny_conv_32_128", "conv3x3 32->32 @128x128 (tiny VAE decoder)", s_conv, {32, 128, 128}, {0}, true},
    {"tiny_conv_64_32", "conv3x3 64->64 @32x32 (tiny VAE decoder)", s_conv, {64, 32, 32}, {0}, true},
    {"groupnorm_320_64", "group norm 32 groups, 320x64x64", s_gn, {320, 4096, 32}, {0}, false},
    {"self_attn_4096", "self-attention 4096 tok x 8 heads x 40", s_attn, {4096, 4096, 8, 40}, {0}, false},
    {"self_attn_1024", "self-attention 1024 tok x 8 heads x 80", s_attn, {1024, 1024, 8, 80}, {0}, false},
    {"self_attn_256", "self-attention 256 tok x 8 heads x 160", s_attn, {256, 256, 8, 160}, {0}, false},
    {"self_attn_sd2_4096", "self-attention 4096 tok x 5 heads x 64 (SD 2.x)", s_attn, {4096, 4096, 5, 64}, {0},
     false},
    {"self_attn_sd2_1024", "self-attention 1024 tok x 10 heads x 64 (SD 2.x)", s_attn, {1024, 1024, 10, 64}, {0},
     false},
    {"self_attn_sd2_256", "self-attention 256 tok x 20 heads x 64 (SD 2.x)", s_attn, {256, 256, 20, 64}, {0},
     false},
    {"clip_attn_77", "causal self-attention 77 tok x 12 heads x 64 (CLIP)", s_attn, {77, 77, 12, 64, 1}, {0},
     false},
    {"tiny_attn_77", "causal self-attention 77 tok x 4 heads x 8 (tiny CLIP)", s_attn, {77, 77, 4, 8, 1}, {0},
     false},
    {"cross_attn_4096x77", "cross-attention 4096x77, ctx 768 (+projections)", s_xattn, {4096, 77, 320, 768, 8},
     {0}, false},
    {"linear_4096_320_2560", "linear 4096x320 -> 2560", s_linear, {4096, 320, 2560}, {0}, true},
};
#define NROWS ((int)(sizeof s_rows / sizeof s_rows[0]))

/* Each sample is the mean of enough back-to-back calls to last SAMPLE_S (one
 * call for a row slower than that), so that sub-millisecond rows are not at the
 * mercy of the clock and the scheduler; bench/ops.py times PyTorch the same way. */
#define SAMPLE_S 0.02

static double s_time(nn_ctx_t *ctx, row_t *r, int mode, int iters)
{
    double t[64];
    if (iters > 64) iters = 64;
    r->fn(ctx, r, mode); /* warm-up: first-touch, scratch growth */
    double t0 = s_now();
    r->fn(ctx, r, mode);
    double once = s_now() - t0;
    int reps = once >= SAMPLE_S ? 1 : (int)(SAMPLE_S / (once > 1e-7 ? once : 1e-7)) + 1;
    for (int i = 0; i < iters; i++) {
        t0 = s_now();
        for (int k = 0; k < reps; k++) r->fn(ctx, r, mode);
        t[i] = (s_now() - t0) / reps;
    }
    qsort(t, (size_t)iters, sizeof t[0], s_cmp_double);
    return t[iters / 2] * 1e3;
}

/* ---- --gemm: C[M,N] = op(A) op(B), booth's kernel against OpenBLAS ---- */

typedef struct {
    const char *what;
    bool ta, tb;
    int64_t M, N, K;
} s_gemm_shape_t;

static const s_gemm_shape_t s_gemm_shapes[] = {
    {"to_q/k/v/out 320, 64x64 x 2: forward", false, true, 8192, 320, 320},
    {"to_q/k/v/out 320: input gradient", false, false, 8192, 320, 320},
    {"GEGLU proj 320 -> 2560: forward", false, true, 8192, 2560, 320},
    {"FF out 1280 -> 320: forward", false, true, 8192, 320, 1280},
    {"GEGLU proj: input gradient", false, false, 8192, 320, 2560},
    {"to_q/k/v/out 640, 32x32 x 2: forward", false, true, 2048, 640, 640},
    {"GEGLU proj 1280 -> 10240, 16x16 x 2: forward", false, true, 512, 10240, 1280},
    {"cross-attention to_k/v 768 -> 320, 77 x 2", false, true, 154, 320, 768},
    {"weight gradient 320 x 320 over 8192 tokens", true, false, 320, 320, 8192},
    {"Winograd product 640 x 512 tiles x 640", false, false, 640, 512, 640},
    {"LoRA down 320 -> rank 4", false, true, 8192, 4, 320},
};

static double s_gemm_time(nn_ctx_t *ctx, const s_gemm_shape_t *g, float *a, float *b, float *c, int iters)
{
    double t[64];
    if (iters > 64) iters = 64;
    for (int i = -1; i < iters; i++) {
        double t0 = s_now();
        nn_cpu_gemm(ctx, g->ta, g->tb, g->M, g->N, g->K, 1.0f, a, g->ta ? g->M : g->K, b, g->tb ? g->K : g->N, 0.0f,
                    c, g->N, NULL);
        if (i >= 0) t[i] = s_now() - t0;
    }
    qsort(t, (size_t)iters, sizeof t[0], s_cmp_double);
    return t[iters / 2];
}

static int s_gemm_bench(nn_ctx_t *ctx, int iters)
{
    if (nn_cpu_gemm_kernels(0) != 2) {
        fprintf(stderr, "bench_ops --gemm: this CPU has no AVX-512, so booth uses OpenBLAS: nothing to compare\n");
        nn_cpu_gemm_kernels(0);
        return 1;
    }
    printf("# booth's sgemm (nn/cpu/gemm.c) vs OpenBLAS (%s), %d threads, median of %d\n", nn_blas_info(),
           ctx->threads, iters);
    printf("| product | op | M x N x K | booth ms | GFLOP/s | OpenBLAS ms | GFLOP/s | booth/OpenBLAS |\n");
    printf("|---|---|---|---:|---:|---:|---:|---:|\n");
    for (size_t i = 0; i < sizeof s_gemm_shapes / sizeof s_gemm_shapes[0]; i++) {
        const s_gemm_shape_t *g = &s_gemm_shapes[i];
        float *a = s_buf(g->M * g->K, 1), *b = s_buf(g->K * g->N, 2), *c = s_buf(g->M * g->N, 3);
        nn_cpu_gemm_kernels(0);
        double tb = s_gemm_time(ctx, g, a, b, c, iters);
        nn_cpu_gemm_kernels(1);
        double to = s_gemm_time(ctx, g, a, b, c, iters);
        double fl = 2.0 * (double)g->M * (double)g->N * (double)g->K * 1e-9;
        printf("| %s | %c%c | %lld x %lld x %lld | %.2f | %.0f | %.2f | %.0f | %.2f |\n", g->what, g->ta ? 'T' : 'N',
               g->tb ? 'T' : 'N', (long long)g->M, (long long)g->N, (long long)g->K, tb * 1e3, fl / tb, to * 1e3,
               fl / to, tb / to);
        fflush(stdout);
        free(a);
        free(b);
        free(c);
    }
    nn_cpu_gemm_kernels(0);
    return 0;
}

int main(int argc, char **argv)
{
    nn_process_init(argc, argv);
    const char *only = NULL;
    int iters = 5, threads = 0;
    bool gemm = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--row") && i + 1 < argc)
            only = argv[++i];
        else if (!strcmp(argv[i], "--iters") && i + 1 < argc)
            iters = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--gemm"))
            gemm = true;
        else if (!strcmp(argv[i], "--list")) {
            for (int r = 0; r < NROWS; r++) printf("%s\t%s\n", s_rows[r].name, s_rows[r].what);
            return 0;
        } else {
            fprintf(stderr, "usage: bench_ops [--row NAME] [--iters N] [--threads T] [--list]\n"
                            "       bench_ops --gemm [--iters N] [--threads T]\n");
            return 2;
        }
    }
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, threads);
    if (!ctx) return 1;
    if (gemm) {
        int rc = s_gemm_bench(ctx, iters);
        nn_ctx_destroy(&ctx);
        return rc;
    }
    for (int i = 0; i < NROWS; i++) {
        row_t *r = &s_rows[i];
        if (only && strcmp(only, r->name)) continue;
        double f = s_time(ctx, r, MODE_FWD, iters);
        double fb = s_time(ctx, r, MODE_FWDBWD, iters);
        printf("{\"row\": \"%s\", \"threads\": %d, \"fwd_ms\": %.3f, \"fwdbwd_ms\": %.3f", r->name, ctx->threads, f,
               fb);
        if (r->frozen_row) printf(", \"fwdbwd_frozen_ms\": %.3f", s_time(ctx, r, MODE_FWDBWD_FROZEN, iters));
        printf("}\n");
        fflush(stdout);
        for (int k = 0; k < 12; k++) free(r->buf[k]);
        memset(r->buf, 0, sizeof r->buf);
    }
    nn_ctx_destroy(&ctx);
    return 0;
}
