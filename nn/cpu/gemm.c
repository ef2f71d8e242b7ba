/*
 * gemm.c — booth's own single-precision matrix product for AVX-512 CPUs:
 *
 *   C[M,N] = alpha op(A) op(B) + beta C        (row-major, any leading dimensions)
 *
 * Debian's OpenBLAS 0.3.21 reaches 200-240 GFLOP/s on the products of a Stable
 * Diffusion step on the 2-core machine booth is measured on; this reaches
 * 400-470 (bench_ops --gemm). It is the classic packed form (Goto; BLIS's loop
 * order) around the register tile attention.c also uses:
 *
 *   tasks: blocks of C, up to G_MS rows x G_NS columns, enough for the threads
 *   for each block of K (an even split into blocks of at most G_KC), in order
 *     pack op(B)[kc, the task's columns] into panels of 64 columns, k-major
 *     for each block of G_MC rows
 *       A read in place (op(A) = A), or packed into groups of 12 rows (A^T)
 *       for each panel, for each tile of rows: micro-kernel
 *
 * A big C is done task by task over all of K (its block stays in cache); a
 * small one (the weight gradients: K is the token count) K block by K block
 * over all tasks, so that each block of A and B is read from memory once.
 *
 * Micro-kernel: a register tile of 6 rows x 64 columns (24 zmm accumulators; 4
 * loads of B and 6 broadcasts of A feed 24 FMAs per k); a narrower last panel
 * uses 1-3 vectors and up to 12 rows. It sums its K block from zero and then
 * adds that to C, or to a bias (per row or per column: the store adds it, no
 * separate pass over C).
 *
 * Determinism: each output element is one sequence of FMAs over its K blocks
 * in order, and the K blocks follow from K alone, so the bytes depend neither
 * on the thread count nor on the task split, nor on M or N (a row of a batch
 * comes out the same whatever the batch size), and nn_cpu_gemm1 (one thread)
 * gives the same bytes as nn_cpu_gemm.
 *
 * Elsewhere (no AVX-512, nn_cpu_gemm_kernels(1), BOOTH_GEMM_KERNELS=openblas)
 * products go to OpenBLAS in fixed blocks (blas.c).
 */
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"
#include "nn/backend.h"
#include "nn/cpu/cpu.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define G_X86 1
#include <immintrin.h>

#include "nn/cpu/avx512.h"
#else
#define G_X86 0
#endif

#define G_KC 384    /* K per packed block (at most; K is split evenly) */
#define G_MC 144    /* rows per packed A block (12 groups of 12) */
#define G_MS 576    /* rows per task */
#define G_NS 256    /* columns per task (4 panels) */
#define G_NR 64     /* columns per panel */
#define G_GR 12     /* rows per packed A group */
#define G_C_SMALL (1u << 20) /* floats of C below which K is the outer loop */
_Static_assert(NN_GEMM_PACK_FLOATS == (size_t)G_KC * G_NS + (size_t)G_MC * G_KC, "a thread's packing buffers");

static int s_kernels = -1; /* in use: 1 OpenBLAS, 2 AVX-512; -1 not chosen yet */

int nn_cpu_gemm_kernels(int which)
{
    bool avx512 = false;
#if G_X86
    avx512 = nn_avx512_cpu();
#endif
    const char *cap = getenv("BOOTH_GEMM_KERNELS"); /* "openblas": the default becomes OpenBLAS */
    if (which == 0 && cap && !strcmp(cap, "openblas")) which = 1;
    s_kernels = which == 1 || !avx512 ? 1 : 2;
    return s_kernels;
}

#if G_X86

/* C[r][v*16 + l] (r < rows, l < cols - v*16) = alpha sum_k A(r, k) bp[k*nr + v*16 + l] + (rb ? rb[r] : cb ?
 * cb[v*16 + l] : beta C), A(r, k) = a[r*sr + k*sk]; beta == 0 does not read C. The sum starts from 0. */
NN_AVX512 static inline __attribute__((always_inline)) void s_mk(int64_t K, const float *a, int64_t sr, int64_t sk,
                                                                 const float *bp, int64_t nr, float *c, int64_t ldc,
                                                                 int rows, int cols, float alpha, float beta,
                                                                 const float *rb, const float *cb, const int MR,
                                                                 const int NV)
{
    __m512 x[12][4];
    nn_tile_sum(x, K, a, sr, sk, bp, nr, MR, NV);
    __mmask16 m[4];
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++)
        m[v] = nn_first16(cols - v * 16);
    const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    __m512 cbv[4];
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++)
        cbv[v] = cb ? _mm512_maskz_loadu_ps(m[v], cb + v * 16) : _mm512_setzero_ps();
#pragma GCC unroll 12
    for (int r = 0; r < MR; r++) {
        if (r >= rows) break;
        float *cr = c + r * ldc;
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) {
            __m512 y;
            if (rb || cb) {
                __m512 bias = rb ? _mm512_set1_ps(rb[r]) : cbv[v];
                y = alpha == 1.0f ? _mm512_add_ps(x[r][v], bias) : _mm512_fmadd_ps(x[r][v], va, bias);
            }
            else if (beta == 0.0f)
                y = alpha == 1.0f ? x[r][v] : _mm512_mul_ps(x[r][v], va);
            else if (alpha == 1.0f)
                y = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m[v], cr + v * 16), vb, x[r][v]);
            else
                y = _mm512_fmadd_ps(x[r][v], va, _mm512_mul_ps(_mm512_maskz_loadu_ps(m[v], cr + v * 16), vb));
            _mm512_mask_storeu_ps(cr + v * 16, m[v], y);
        }
    }
}

/* Two specialisations per tile: A packed (sr 1, sk G_GR: constants) or read in place. */
#define G_MK(MR, NV)                                                                                                   \
    NN_AVX512 static void s_mkp_##MR##_##NV(int64_t K, const float *a, int64_t sr, int64_t sk, const float *bp,       \
                                            int64_t nr, float *c, int64_t ldc, int rows, int cols, float alpha,        \
                                            float beta, const float *rb, const float *cb)                              \
    {                                                                                                                  \
        s_mk(K, a, 1, G_GR, bp, nr, c, ldc, rows, cols, alpha, beta, rb, cb, MR, NV);                                      \
    }                                                                                                                  \
    NN_AVX512 static void s_mku_##MR##_##NV(int64_t K, const float *a, int64_t sr, int64_t sk, const float *bp,       \
                                            int64_t nr, float *c, int64_t ldc, int rows, int cols, float alpha,        \
                                            float beta, const float *rb, const float *cb)                              \
    {                                                                                                                  \
        s_mk(K, a, sr, 1, bp, nr, c, ldc, rows, cols, alpha, beta, rb, cb, MR, NV);                                        \
    }                                                                                                                  \
    _Static_assert((MR) * (NV) <= 24 && (MR) <= G_GR && G_GR % (MR) == 0, "tile exceeds the registers")
G_MK(6, 4);
G_MK(6, 3);
G_MK(12, 2);
G_MK(12, 1);

typedef void (*s_mk_fn)(int64_t K, const float *a, int64_t sr, int64_t sk, const float *bp, int64_t nr, float *c,
                        int64_t ldc, int rows, int cols, float alpha, float beta, const float *rb,
                        const float *cb);
static const s_mk_fn s_mkp_tab[5] = {0, s_mkp_12_1, s_mkp_12_2, s_mkp_6_3, s_mkp_6_4};
static const s_mk_fn s_mku_tab[5] = {0, s_mku_12_1, s_mku_12_2, s_mku_6_3, s_mku_6_4};
static const int s_mr_tab[5] = {0, 12, 12, 6, 6};

/* Packs op(B)[k0:k0+kc, n0:n0+w] (w <= G_NR) as one panel, kc x wp (w rounded
 * up to whole vectors, zero-padded), k-major. */
NN_AVX512 static void s_pack_b(float *dst, bool tb, const float *b, int64_t ldb, int64_t k0, int64_t kc, int64_t n0,
                               int64_t w)
{
    int64_t wp = (w + 15) & ~(int64_t)15;
    if (!tb) {
        for (int64_t k = 0; k < kc; k++) {
            const float *src = b + (k0 + k) * ldb + n0;
            float *d = dst + k * wp;
            for (int64_t j = 0; j < wp; j += 16)
                _mm512_store_ps(d + j, _mm512_maskz_loadu_ps(nn_first16(w - j), src + j));
        }
        return;
    }
    for (int64_t j0 = 0; j0 < wp; j0 += 16) { /* B(k, j) = b[j ldb + k]: 16 x 16 blocks through registers */
        int64_t nj = w - j0 < 16 ? w - j0 : 16;
        const float *src = b + (n0 + j0) * ldb + k0;
        for (int64_t q0 = 0; q0 < kc; q0 += 16) {
            int64_t nq = kc - q0 < 16 ? kc - q0 : 16;
            __mmask16 mq = nn_first16(nq);
            __m512 r[16];
#pragma GCC unroll 16
            for (int j = 0; j < 16; j++)
                r[j] = j < nj ? _mm512_maskz_loadu_ps(mq, src + j * ldb + q0) : _mm512_setzero_ps();
            nn_tr16(r);
#pragma GCC unroll 16
            for (int q = 0; q < 16; q++)
                if (q < nq) _mm512_store_ps(dst + (q0 + q) * wp + j0, r[q]);
        }
    }
}

/* Packs rows [0, h) (h <= G_GR) of A(r, k) = a[r*sr + k], k < kc, as one
 * group: kc x G_GR, k-major, missing rows zero. */
static void s_pack_a(float *dst, const float *a, int64_t sr, int64_t h, int64_t kc)
{
    for (int64_t r = 0; r < G_GR; r++)
        for (int64_t k = 0; k < kc; k++) dst[k * G_GR + r] = r < h ? a[r * sr + k] : 0.0f;
}

/* Packs rows [0, mc) of A(r, k) = a[k*sk + r], k < kc, into groups of G_GR
 * rows (kc x G_GR each, k-major, missing rows zero): one pass over k. */
NN_AVX512 static void s_pack_at(float *dst, const float *a, int64_t sk, int64_t mc, int64_t kc)
{
    const __mmask16 mg = nn_first16(G_GR);
    for (int64_t k = 0; k < kc; k++)
        for (int64_t g0 = 0; g0 < mc; g0 += G_GR)
            _mm512_mask_storeu_ps(dst + g0 * kc + k * G_GR, mg, _mm512_maskz_loadu_ps(nn_first16(mc - g0), a + k * sk + g0));
}

typedef struct {
    bool ta, tb;
    int64_t M, N, K, lda, ldb, ldc;
    int64_t ms, ns, tn; /* a task's rows and columns; tasks along N */
    int64_t kb, kb0, kb1; /* K blocks (an even split); those this round does */
    int64_t tasks;
    float alpha, beta;
    const float *a, *b, *row_bias, *col_bias;
    float *c, *packs;
} s_gemm_t;

/* Task t over K blocks [kb0, kb1): C[rows of t, columns of t] (+)= A[rows, kc] B[kc, columns],
 * on one thread's packing buffers. */
static void s_run(const s_gemm_t *g, float *pack, int64_t t, int64_t kb0, int64_t kb1)
{
    float *bpack = pack, *apack = pack + (size_t)G_KC * G_NS;
    int64_t sr = g->ta ? 1 : g->lda, sk = g->ta ? g->lda : 1; /* A(i, k) = a[i*sr + k*sk] */
    int64_t m0 = (t / g->tn) * g->ms, n0 = (t % g->tn) * g->ns;
    int64_t ms = g->M - m0 < g->ms ? g->M - m0 : g->ms, ns = g->N - n0 < g->ns ? g->N - n0 : g->ns;
    for (int64_t kbi = kb0; kbi < kb1; kbi++) {
        int64_t k0 = g->K * kbi / g->kb, kc = g->K * (kbi + 1) / g->kb - k0;
        float beta = kbi ? 1.0f : g->beta;
        /* B's panels (reading B in place when it is not transposed measured 2-20 % slower) */
        const float *bpan[G_NS / G_NR];
        int64_t bld[G_NS / G_NR];
        float *bnext = bpack;
        for (int64_t p0 = 0, pi = 0; p0 < ns; p0 += G_NR, pi++) {
            int64_t w = ns - p0 < G_NR ? ns - p0 : G_NR, wp = (w + 15) & ~(int64_t)15;
            s_pack_b(bnext, g->tb, g->b, g->ldb, k0, kc, n0 + p0, w);
            bpan[pi] = bnext;
            bld[pi] = wp;
            bnext += kc * wp;
        }
        for (int64_t mb = 0; mb < ms; mb += G_MC) {
            int64_t mc = ms - mb < G_MC ? ms - mb : G_MC;
            const float *ablk = g->a + (m0 + mb) * sr + k0 * sk;
            /* transposed A, and a last group short of G_GR rows, are packed */
            int64_t full = g->ta ? 0 : mc / G_GR * G_GR;
            if (g->ta)
                s_pack_at(apack, ablk, sk, mc, kc);
            else if (full < mc)
                s_pack_a(apack + full * kc, ablk + full * sr, sr, mc - full, kc);
            for (int64_t p0 = 0, pi = 0; p0 < ns; p0 += G_NR, pi++) {
                int64_t w = ns - p0 < G_NR ? ns - p0 : G_NR, nv = (w + 15) / 16;
                int mr = s_mr_tab[nv];
                for (int64_t r0 = 0; r0 < mc; r0 += mr) {
                    int rows = mc - r0 < mr ? (int)(mc - r0) : mr;
                    float *c = g->c + (m0 + mb + r0) * g->ldc + n0 + p0;
                    const float *rb = g->row_bias && !kbi ? g->row_bias + m0 + mb + r0 : NULL;
                    const float *cb = g->col_bias && !kbi ? g->col_bias + n0 + p0 : NULL;
                    if (r0 >= full)
                        s_mkp_tab[nv](kc, apack + (r0 / G_GR) * kc * G_GR + r0 % G_GR, 1, G_GR, bpan[pi], bld[pi], c,
                                      g->ldc, rows, (int)w, g->alpha, beta, rb, cb);
                    else
                        s_mku_tab[nv](kc, ablk + r0 * sr, sr, 1, bpan[pi], bld[pi], c, g->ldc, rows, (int)w, g->alpha,
                                      beta, rb, cb);
                }
            }
        }
    }
}

static void s_task(void *arg, int64_t t0, int64_t t1, int tid)
{
    s_gemm_t *g = arg;
    for (int64_t t = t0; t < t1; t++) s_run(g, g->packs + (size_t)tid * NN_GEMM_PACK_FLOATS, t, g->kb0, g->kb1);
}

/* The plan: K blocks, and tasks enough for `threads` (the split does not change the bytes). */
static s_gemm_t s_plan(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *a, int64_t lda,
                       const float *b, int64_t ldb, float beta, float *c, int64_t ldc, int threads)
{
    s_gemm_t g = {.ta = ta, .tb = tb, .M = M, .N = N, .K = K, .lda = lda, .ldb = ldb, .ldc = ldc, .ms = G_MS,
                  .ns = G_NS, .kb = (K + G_KC - 1) / G_KC, .alpha = alpha, .beta = beta, .a = a, .b = b, .c = c};
    int64_t want = threads > 1 ? 4 * (int64_t)threads : 1;
    while (((M + g.ms - 1) / g.ms) * ((N + g.ns - 1) / g.ns) < want) {
        if (g.ns > G_NR && (g.ns / G_NR >= g.ms / G_MC || g.ms <= G_MC))
            g.ns /= 2;
        else if (g.ms > G_MC)
            g.ms /= 2;
        else
            break;
    }
    g.tn = (N + g.ns - 1) / g.ns;
    g.tasks = ((M + g.ms - 1) / g.ms) * g.tn;
    return g;
}

/* C = a bias or beta C, for K == 0 */
static void s_scale_c(int64_t M, int64_t N, float beta, float *c, int64_t ldc, const float *row_bias,
                      const float *col_bias)
{
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++)
            c[i * ldc + j] = row_bias   ? row_bias[i]
                             : col_bias ? col_bias[j]
                             : beta == 0.0f ? 0.0f
                                            : beta * c[i * ldc + j];
}

/* The fallback: C filled with the bias, then added to with beta 1. */
static float s_fill_bias(int64_t M, int64_t N, float beta, float *c, int64_t ldc, const float *row_bias,
                         const float *col_bias)
{
    if (!row_bias && !col_bias) return beta;
    s_scale_c(M, N, beta, c, ldc, row_bias, col_bias);
    return 1.0f;
}

#endif /* G_X86 */

bool nn_cpu_gemm_exact(void)
{
    if (s_kernels < 0) nn_cpu_gemm_kernels(0);
    return s_kernels == 2;
}

float *nn_cpu_gemm_packs(nn_ctx_t *ctx)
{
    if (!ctx->packs) {
        size_t bytes = (size_t)ctx->threads * NN_GEMM_PACK_FLOATS * sizeof(float);
        ctx->packs = nn_cpu_alloc(ctx, bytes);
        if (!ctx->packs) BT_ERROR("cpu backend: cannot allocate %zu bytes for the matrix product's packing", bytes);
    }
    return ctx->packs;
}

void nn_cpu_gemm1(float *pack, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *a,
                  int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc, const float *row_bias)
{
#if G_X86
    if (s_kernels < 0) nn_cpu_gemm_kernels(0);
    if (s_kernels == 2 && M > 0 && N > 0) {
        if (K <= 0) return s_scale_c(M, N, beta, c, ldc, row_bias, NULL);
        s_gemm_t g = s_plan(ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc, 1);
        g.row_bias = row_bias;
        for (int64_t t = 0; t < g.tasks; t++) s_run(&g, pack, t, 0, g.kb);
        return;
    }
#endif
    if (M > 0 && N > 0) beta = s_fill_bias(M, N, beta, c, ldc, row_bias, NULL);
    nn_cpu_sgemm(ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc);
}

int nn_cpu_gemm(nn_ctx_t *ctx, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *a,
                int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc, const float *col_bias)
{
#if G_X86
    if (s_kernels < 0) nn_cpu_gemm_kernels(0);
    if (s_kernels == 2 && M > 0 && N > 0) {
        if (K <= 0) {
            s_scale_c(M, N, beta, c, ldc, NULL, col_bias);
            return BT_OK;
        }
        s_gemm_t g = s_plan(ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc, ctx->threads);
        g.col_bias = col_bias;
        if (!(g.packs = nn_cpu_gemm_packs(ctx))) return BT_ENOMEM;
        /* A small C is done one K block at a time over all tasks, so that each
         * block of A and B is read from memory once; a big one a task at a time
         * over all K, so that its block of C stays in cache. */
        bool k_outer = (size_t)M * (size_t)N <= G_C_SMALL;
        for (g.kb0 = 0; g.kb0 < g.kb; g.kb0 = g.kb1) {
            g.kb1 = k_outer ? g.kb0 + 1 : g.kb;
            nn_cpu_parallel(ctx, g.tasks, 1, s_task, &g);
        }
        return BT_OK;
    }
#endif
    if (M > 0 && N > 0) beta = s_fill_bias(M, N, beta, c, ldc, NULL, col_bias);
    return nn_cpu_sgemm_mt(ctx, ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc);
}
