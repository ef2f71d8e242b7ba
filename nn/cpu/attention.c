/*
 * attention.c — multi-head scaled dot-product attention on the CPU: a fused,
 * flash-attention style kernel. No [Tq, Tk] score matrix ever exists; memory is
 * O(threads x Tk x D) (a head's packed K and V, dK/dV accumulators) plus small
 * per-block buffers.
 *
 * Layout: everything is vectorised along 16 query "lanes". A block of up to
 * BQ = 64 queries is packed transposed (Qt [D][64], scaled), so the scores of a
 * block of keys come out transposed too, St [keys][64], and each lane is one
 * query: the online softmax (running max m, sum l, rescale) is lane-wise vector
 * code with no horizontal reductions, and D needs no padding. All eight
 * products of forward and backward are one micro-kernel (s_lgemm):
 *
 *   C[r][lanes] = [C[r][lanes] cs[lanes] +] sum_k A[r*sr + k*sk] * B[k][lanes]
 *
 * a register tile of up to 6 rows x 4 vectors of 16 floats (AVX-512), A read
 * one broadcast scalar at a time with any strides (rows or columns of K and V,
 * which each thread first packs contiguously), B a packed run of lanes.
 *
 * Forward, per (batch, head, query block), for each block of BK_FWD keys:
 *   St = K_blk Qt                               (A = K rows,    B = Qt)
 *   m' = max(m, max_j St), P = exp(St - m'), l = l e^(m - m') + sum_j P
 *   Ot = Ot e^(m - m') + V_blk^T P              (A = V columns, B = P)
 * then out = Ot^T / l and lse = m + log l, saved for backward.
 *
 * Backward (FlashAttention-2 order): per query block, Delta = rowsum(dO * O)
 * and, for each block of BK_BWD keys, P recomputed from lse:
 *   St = K Qt, dPt = V dOt, dSt = P (dPt - Delta)
 *   dQt += K^T dSt                              (lanes: queries)
 *   dV += P^T dO, dK += dS^T Q                  (lanes: D, padded to 16)
 * A task is (batch, head, group of key blocks): it walks every query block and
 * owns its keys' dK/dV. From 8 (batch, head) pairs up a head is one group and
 * writes dQ directly; below, a head's keys are split into groups (SD 2's five
 * heads, the VAE's one) whose dQ shares go to scratch and are added up in group
 * order afterwards: no atomics, no recomputation.
 *
 * Determinism: the tasks and every sum's order follow from the dimensions
 * alone, so the bytes do not depend on the thread count.
 *
 * Kernel sets: AVX-512 and AVX2 intrinsics, and generic C on GCC vector types
 * (what runs elsewhere; NN_CLONES builds it for AVX-512, AVX2 and baseline
 * x86-64). The best the CPU has is chosen at run time; the tests run all three
 * (nn_cpu_attention_kernels), BOOTH_ATTN_KERNELS=generic|avx2 caps the choice.
 * Their results differ only by rounding (FMA or not).
 *
 * Block sizes, measured on a 2-core Xeon (AVX-512): BQ 64 beats 32 and 48;
 * BK_FWD and BK_BWD matter little from 32 to 256.
 */
#include <float.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"
#include "nn/cpu/cpu.h"
#include "nn/cpu/vecmath.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define S_X86 1
#include <immintrin.h>

#include "nn/cpu/avx512.h"
#define S_AVX2 __attribute__((target("avx2,fma")))
#else
#define S_X86 0
#endif

#define LANES 16
#define QV 4                                  /* vectors of 16 queries per block */
#define BQ (QV * LANES)                       /* queries per block; also the row length of every lanes buffer */
#define BK_FWD 128                            /* keys per block, forward */
#define BK_BWD 64                             /* keys per block, backward */
#define S_ALIGN(n) (((n) + 15) & ~(size_t)15) /* floats, to 64 bytes */

/* C[r][v*16 + l] = [C[r][v*16 + l] cs[v*16 + l] +] sum_{k<K} a[r*sr + k*sk] * b[k*ldb + v*16 + l]
 * for r < rows, v < nv; the bracket when acc (cs NULL: 1). The sum starts from 0
 * and is added at the end, which keeps long accumulations two-level (accuracy). */
typedef void (*s_lgemm_fn)(float *c, int64_t ldc, const float *a, int64_t sr, int64_t sk, const float *b, int64_t ldb,
                           int64_t K, int64_t rows, int64_t nv, bool acc, const float *cs);
/* Online softmax over keys [k0, k0+nk) of nv query vectors (St, ld BQ): masks
 * (causal: key > query, queries qi0 + lane), updates m and l, writes P into St
 * and e^(m_old - m_new), the factor for the output so far, into alpha. */
typedef void (*s_softmax_fn)(float *st, int64_t nk, int64_t nv, float *m, float *l, float *alpha, int64_t qi0,
                             int64_t k0, bool mask);
/* Backward: St -> P = exp(St - lse) (masked as above), dPt -> dS = P (dPt - delta). */
typedef void (*s_probs_fn)(float *st, float *dpt, int64_t nk, int64_t nv, const float *lse, const float *delta,
                           int64_t qi0, int64_t k0, bool mask);

/* Lanes layout: dst[c][i] = scale * src[i*ld + c], c < D, i < BQ, 0 from row n on. */
typedef void (*s_pack_fn)(float *dst, const float *src, int64_t ld, int64_t n, int64_t D, float scale);
/* Back from the lanes layout: dst[i*ld + c] = f[i] * src[c][i], i < n, c < D. */
typedef void (*s_unpack_fn)(float *dst, int64_t ld, const float *src, int64_t n, int64_t D, const float *f);
/* Padded rows: dst[i][c] = scale * src[i*ld + c], rows of Dp floats zero-padded, rows n..BQ zero. */
typedef void (*s_rows_fn)(float *dst, const float *src, int64_t ld, int64_t n, int64_t D, int64_t Dp, float scale);

typedef struct {
    s_lgemm_fn lgemm;
    s_softmax_fn softmax;
    s_probs_fn probs;
    s_pack_fn pack;
    s_unpack_fn unpack;
    s_rows_fn rows;
} s_kern_t;

/* Splits n rows into tiles of at most rt_max rows, sizes differing by at most one. */
static inline int64_t s_tiles(int64_t n, int rt_max)
{
    return (n + rt_max - 1) / rt_max;
}
static inline int64_t s_tile_start(int64_t n, int64_t tiles, int64_t t)
{
    return t * (n / tiles) + (t < n % tiles ? t : n % tiles);
}

/* ------------------------------------------------------------ generic C */

typedef float s_v16 __attribute__((vector_size(64)));

/* Unaligned loads and stores (macros: a 64-byte vector passed by value would change the ABI between clones). */
#define S_LD(v, p) memcpy(&(v), (p), sizeof(s_v16))
#define S_ST(p, v) memcpy((p), &(v), sizeof(s_v16))

/* One tile of RT rows x 1 vector (few registers, so no spills on AVX2/SSE). */
static inline __attribute__((always_inline)) void s_mk_generic(float *c, int64_t ldc, const float *a, int64_t sr,
                                                               int64_t sk, const float *b, int64_t ldb, int64_t K,
                                                               const int RT, bool acc, const float *cs)
{
    s_v16 x[4], f = {0}, old;
    for (int r = 0; r < RT; r++)
        x[r] = (s_v16){0};
    for (int64_t k = 0; k < K; k++) {
        s_v16 bv;
        S_LD(bv, b + k * ldb);
        const float *ak = a + k * sk;
        for (int r = 0; r < RT; r++)
            x[r] += ak[r * sr] * bv;
    }
    if (acc && cs) S_LD(f, cs);
    for (int r = 0; r < RT; r++) {
        if (acc) {
            S_LD(old, c + r * ldc);
            x[r] = cs ? old * f + x[r] : old + x[r];
        }
        S_ST(c + r * ldc, x[r]);
    }
}

NN_CLONES static void s_lgemm_generic(float *c, int64_t ldc, const float *a, int64_t sr, int64_t sk, const float *b,
                                      int64_t ldb, int64_t K, int64_t rows, int64_t nv, bool acc, const float *cs)
{
    for (int64_t v = 0; v < nv; v++) {
        const float *csv = cs ? cs + v * LANES : NULL;
        int64_t r = 0;
        for (; r + 4 <= rows; r += 4)
            s_mk_generic(c + r * ldc + v * LANES, ldc, a + r * sr, sr, sk, b + v * LANES, ldb, K, 4, acc, csv);
        float *cr = c + r * ldc + v * LANES;
        const float *ar = a + r * sr, *bv = b + v * LANES;
        switch (rows - r) {
        case 3: s_mk_generic(cr, ldc, ar, sr, sk, bv, ldb, K, 3, acc, csv); break;
        case 2: s_mk_generic(cr, ldc, ar, sr, sk, bv, ldb, K, 2, acc, csv); break;
        case 1: s_mk_generic(cr, ldc, ar, sr, sk, bv, ldb, K, 1, acc, csv); break;
        default: break;
        }
    }
}

/* y = nn_expf(x - sub) on 16 lanes, as explicit vector code: the compiler
 * vectorises nn_expf's loop only for AVX-512 (elsewhere its float-to-int
 * conversion counts as control flow). Same operations, same results. */
typedef int32_t s_i16 __attribute__((vector_size(64)));
static inline void s_exp16(float *y, const float *x, const float *sub)
{
    const s_v16 zero = {0}, lo = zero - 87.3f, hi = zero + 88.7f;
    s_v16 a, b;
    S_LD(a, x);
    S_LD(b, sub);
    a -= b;
    s_i16 under = a<lo, over = a> hi;
    s_v16 t = (s_v16)(((s_i16)a & ~under) | ((s_i16)lo & under));
    t = (s_v16)(((s_i16)t & ~over) | ((s_i16)hi & over));
    s_v16 n = (t * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    s_v16 r = t - n * 0.693145751953125f;
    r = r - n * 1.428606765330187045e-06f;
    s_v16 p = zero + 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    s_i16 bits = (__builtin_convertvector(n, s_i16) + 127) << 23;
    p = p * (s_v16)bits;
    p = (s_v16)((s_i16)p & ~under);
    S_ST(y, p);
}
static inline void s_max16(float *restrict m, const float *restrict x)
{
    for (int i = 0; i < LANES; i++)
        m[i] = x[i] > m[i] ? x[i] : m[i];
}
static inline void s_add16(float *restrict acc, const float *restrict x)
{
    for (int i = 0; i < LANES; i++)
        acc[i] += x[i];
}
/* x[i] = value where key kj is after query qi0 + i */
static inline void s_mask16(float *restrict x, int64_t qi0, int64_t kj, float value)
{
    for (int i = 0; i < LANES; i++)
        if (kj > qi0 + i) x[i] = value;
}

NN_CLONES static void s_softmax_generic(float *st, int64_t nk, int64_t nv, float *m, float *l, float *alpha,
                                        int64_t qi0, int64_t k0, bool mask)
{
    for (int64_t v = 0; v < nv; v++) {
        float *sv = st + v * LANES, *mv = m + v * LANES, *lv = l + v * LANES, *av = alpha + v * LANES;
        if (mask)
            for (int64_t j = 0; j < nk; j++)
                s_mask16(sv + j * BQ, qi0 + v * LANES, k0 + j, -INFINITY);
        float mx[LANES], sum[4][LANES] = {{0}}; /* four chains, as the AVX-512 code */
        memcpy(mx, mv, sizeof mx);
        for (int64_t j = 0; j < nk; j++)
            s_max16(mx, sv + j * BQ);
        for (int64_t j = 0; j < nk; j++) {
            s_exp16(sv + j * BQ, sv + j * BQ, mx);
            s_add16(sum[j % 4], sv + j * BQ);
        }
        s_exp16(av, mv, mx);
        for (int i = 0; i < LANES; i++)
            lv[i] = lv[i] * av[i] + ((sum[0][i] + sum[1][i]) + (sum[2][i] + sum[3][i]));
        memcpy(mv, mx, sizeof mx);
    }
}

NN_CLONES static void s_probs_generic(float *st, float *dpt, int64_t nk, int64_t nv, const float *lse,
                                      const float *delta, int64_t qi0, int64_t k0, bool mask)
{
    for (int64_t j = 0; j < nk; j++)
        for (int64_t v = 0; v < nv; v++) {
            float *s = st + j * BQ + v * LANES, *dp = dpt + j * BQ + v * LANES, p[LANES];
            const float *dl = delta + v * LANES;
            s_exp16(p, s, lse + v * LANES);
            if (mask) s_mask16(p, qi0 + v * LANES, k0 + j, 0.0f);
            for (int i = 0; i < LANES; i++) {
                s[i] = p[i];
                dp[i] = p[i] * (dp[i] - dl[i]);
            }
        }
}

static void s_pack_generic(float *dst, const float *src, int64_t ld, int64_t n, int64_t D, float scale)
{
    for (int64_t c = 0; c < D; c++) {
        float *row = dst + c * BQ;
        for (int64_t i = 0; i < n; i++)
            row[i] = scale * src[i * ld + c];
        for (int64_t i = n; i < BQ; i++)
            row[i] = 0.0f;
    }
}

static void s_unpack_generic(float *dst, int64_t ld, const float *src, int64_t n, int64_t D, const float *f)
{
    for (int64_t i = 0; i < n; i++)
        for (int64_t c = 0; c < D; c++)
            dst[i * ld + c] = f[i] * src[c * BQ + i];
}

static void s_rows_generic(float *dst, const float *src, int64_t ld, int64_t n, int64_t D, int64_t Dp, float scale)
{
    for (int64_t i = 0; i < BQ; i++) {
        float *row = dst + i * Dp;
        int64_t c = 0;
        if (i < n)
            for (; c < D; c++)
                row[c] = scale * src[i * ld + c];
        for (; c < Dp; c++)
            row[c] = 0.0f;
    }
}

static const s_kern_t s_kern_generic = {s_lgemm_generic, s_softmax_generic, s_probs_generic,
                                        s_pack_generic,  s_unpack_generic,  s_rows_generic};

/* ------------------------------------------------------------- AVX-512 */

#if S_X86

/* Register tile: RT rows x NV vectors of accumulators (RT * NV <= 24 of the 32
 * zmm registers), B's NV vectors loaded once per k, A broadcast per row. */
NN_AVX512 static inline __attribute__((always_inline)) void s_mk512(float *c, int64_t ldc, const float *a, int64_t sr,
                                                                    int64_t sk, const float *b, int64_t ldb, int64_t K,
                                                                    const int RT, const int NV, bool acc,
                                                                    const float *cs)
{
    __m512 x[12][4];
    nn_tile_sum(x, K, a, sr, sk, b, ldb, RT, NV);
    if (acc) {
        __m512 f[4];
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            f[v] = cs ? _mm512_loadu_ps(cs + v * 16) : _mm512_set1_ps(1.0f);
#pragma GCC unroll 12
        for (int r = 0; r < RT; r++)
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++)
                x[r][v] = _mm512_fmadd_ps(_mm512_loadu_ps(c + r * ldc + v * 16), f[v], x[r][v]);
    }
#pragma GCC unroll 12
    for (int r = 0; r < RT; r++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            _mm512_storeu_ps(c + r * ldc + v * 16, x[r][v]);
}

/* One function per tile shape (a table picks it); the assertion takes the ';'. */
#define S_MK512(RT, NV)                                                                                                \
    NN_AVX512 static void s_mk512_##RT##_##NV(float *c, int64_t ldc, const float *a, int64_t sr, int64_t sk,           \
                                              const float *b, int64_t ldb, int64_t K, bool acc, const float *cs)       \
    {                                                                                                                  \
        s_mk512(c, ldc, a, sr, sk, b, ldb, K, RT, NV, acc, cs);                                                        \
    }                                                                                                                  \
    _Static_assert((RT) * (NV) <= 24 && (RT) <= 12, "tile exceeds the registers")
S_MK512(1, 4);
S_MK512(2, 4);
S_MK512(3, 4);
S_MK512(4, 4);
S_MK512(5, 4);
S_MK512(6, 4);
S_MK512(1, 3);
S_MK512(2, 3);
S_MK512(3, 3);
S_MK512(4, 3);
S_MK512(5, 3);
S_MK512(6, 3);
S_MK512(7, 3);
S_MK512(8, 3);
S_MK512(1, 2);
S_MK512(2, 2);
S_MK512(3, 2);
S_MK512(4, 2);
S_MK512(5, 2);
S_MK512(6, 2);
S_MK512(7, 2);
S_MK512(8, 2);
S_MK512(9, 2);
S_MK512(10, 2);
S_MK512(11, 2);
S_MK512(12, 2);
S_MK512(1, 1);
S_MK512(2, 1);
S_MK512(3, 1);
S_MK512(4, 1);
S_MK512(5, 1);
S_MK512(6, 1);
S_MK512(7, 1);
S_MK512(8, 1);
S_MK512(9, 1);
S_MK512(10, 1);
S_MK512(11, 1);
S_MK512(12, 1);

typedef void (*s_mk_fn)(float *c, int64_t ldc, const float *a, int64_t sr, int64_t sk, const float *b, int64_t ldb,
                        int64_t K, bool acc, const float *cs);
static const int s_rt512[5] = {0, 12, 12, 8, 6}; /* most rows per tile, by vectors */
static const s_mk_fn s_mk512_tab[5][13] = {
    {0},
    {0, s_mk512_1_1, s_mk512_2_1, s_mk512_3_1, s_mk512_4_1, s_mk512_5_1, s_mk512_6_1, s_mk512_7_1, s_mk512_8_1,
     s_mk512_9_1, s_mk512_10_1, s_mk512_11_1, s_mk512_12_1},
    {0, s_mk512_1_2, s_mk512_2_2, s_mk512_3_2, s_mk512_4_2, s_mk512_5_2, s_mk512_6_2, s_mk512_7_2, s_mk512_8_2,
     s_mk512_9_2, s_mk512_10_2, s_mk512_11_2, s_mk512_12_2},
    {0, s_mk512_1_3, s_mk512_2_3, s_mk512_3_3, s_mk512_4_3, s_mk512_5_3, s_mk512_6_3, s_mk512_7_3, s_mk512_8_3},
    {0, s_mk512_1_4, s_mk512_2_4, s_mk512_3_4, s_mk512_4_4, s_mk512_5_4, s_mk512_6_4},
};

static void s_lgemm_avx512(float *c, int64_t ldc, const float *a, int64_t sr, int64_t sk, const float *b, int64_t ldb,
                           int64_t K, int64_t rows, int64_t nv, bool acc, const float *cs)
{
    for (int64_t v0 = 0; v0 < nv; v0 += 4) {
        int nvc = nv - v0 < 4 ? (int)(nv - v0) : 4;
        int64_t tiles = s_tiles(rows, s_rt512[nvc]);
        for (int64_t t = 0; t < tiles; t++) {
            int64_t r0 = s_tile_start(rows, tiles, t), r1 = s_tile_start(rows, tiles, t + 1);
            s_mk512_tab[nvc][r1 - r0](c + r0 * ldc + v0 * LANES, ldc, a + r0 * sr, sr, sk, b + v0 * LANES, ldb, K, acc,
                                      cs ? cs + v0 * LANES : NULL);
        }
    }
}

/* nn_expf's method on 16 lanes, cheaper: e^x = 2^n e^r, n = round(x / ln2), r =
 * x - n ln2 in one FMA (ln2's float error moves r by |n| 2e-9, nothing where
 * e^x matters), e^r by a degree-6 minimax polynomial (relative error 1.7e-8 on
 * |r| <= ln2/2), 2^n by scalef. 0 below -87.3 and for -inf; x must be < 88. */
NN_AVX512 static inline __m512 s_exp512(__m512 x)
{
    __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.3f), _CMP_GE_OQ);
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693147180559945309f), x);
    __m512 p = _mm512_set1_ps(1.384140458e-03f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.374841884e-03f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.166814312e-02f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.666641980e-01f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.999999106e-01f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_maskz_scalef_ps(live, p, n);
}

/* Lanes whose query index (qi0 + lane) is below key index kj. */
NN_AVX512 static inline __mmask16 s_masked512(int64_t qi0, int64_t kj)
{
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    __m512i q = _mm512_add_epi32(_mm512_set1_epi32((int)qi0), iota);
    return _mm512_cmpgt_epi32_mask(_mm512_set1_epi32((int)kj), q);
}

NN_AVX512 static void s_softmax_avx512(float *st, int64_t nk, int64_t nv, float *m, float *l, float *alpha, int64_t qi0,
                                       int64_t k0, bool mask)
{
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    for (int64_t v = 0; v < nv; v++) {
        float *sv = st + v * LANES;
        if (mask)
            for (int64_t j = 0; j < nk; j++)
                _mm512_mask_storeu_ps(sv + j * BQ, s_masked512(qi0 + v * LANES, k0 + j), ninf);
        __m512 mo = _mm512_loadu_ps(m + v * LANES);
        __m512 m0 = mo, m1 = mo, m2 = mo, m3 = mo; /* max is exact: four chains for speed */
        int64_t j = 0;
        for (; j + 4 <= nk; j += 4) {
            m0 = _mm512_max_ps(m0, _mm512_loadu_ps(sv + j * BQ));
            m1 = _mm512_max_ps(m1, _mm512_loadu_ps(sv + (j + 1) * BQ));
            m2 = _mm512_max_ps(m2, _mm512_loadu_ps(sv + (j + 2) * BQ));
            m3 = _mm512_max_ps(m3, _mm512_loadu_ps(sv + (j + 3) * BQ));
        }
        for (; j < nk; j++)
            m0 = _mm512_max_ps(m0, _mm512_loadu_ps(sv + j * BQ));
        __m512 mx = _mm512_max_ps(_mm512_max_ps(m0, m1), _mm512_max_ps(m2, m3));
        __m512 sum[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
        for (j = 0; j < nk; j++) { /* four chains: speed, and shorter sums */
            __m512 p = s_exp512(_mm512_sub_ps(_mm512_loadu_ps(sv + j * BQ), mx));
            _mm512_storeu_ps(sv + j * BQ, p);
            sum[j % 4] = _mm512_add_ps(sum[j % 4], p);
        }
        __m512 a = s_exp512(_mm512_sub_ps(mo, mx));
        __m512 total = _mm512_add_ps(_mm512_add_ps(sum[0], sum[1]), _mm512_add_ps(sum[2], sum[3]));
        _mm512_storeu_ps(alpha + v * LANES, a);
        _mm512_storeu_ps(l + v * LANES, _mm512_fmadd_ps(_mm512_loadu_ps(l + v * LANES), a, total));
        _mm512_storeu_ps(m + v * LANES, mx);
    }
}

NN_AVX512 static void s_probs_avx512(float *st, float *dpt, int64_t nk, int64_t nv, const float *lse,
                                     const float *delta, int64_t qi0, int64_t k0, bool mask)
{
    for (int64_t v = 0; v < nv; v++) {
        __m512 lv = _mm512_loadu_ps(lse + v * LANES), dl = _mm512_loadu_ps(delta + v * LANES);
        for (int64_t j = 0; j < nk; j++) {
            float *s = st + j * BQ + v * LANES, *dp = dpt + j * BQ + v * LANES;
            __m512 p = s_exp512(_mm512_sub_ps(_mm512_loadu_ps(s), lv));
            if (mask) p = _mm512_maskz_mov_ps(~s_masked512(qi0 + v * LANES, k0 + j), p);
            _mm512_storeu_ps(s, p);
            _mm512_storeu_ps(dp, _mm512_mul_ps(p, _mm512_sub_ps(_mm512_loadu_ps(dp), dl)));
        }
    }
}

/* Stores the first n (1..16) floats of x; whole-register stores where n allows. */
NN_AVX512 static inline __attribute__((always_inline)) void s_store_n(float *dst, __m512 x, int64_t n)
{
    if (n == 16)
        _mm512_storeu_ps(dst, x);
    else if (n == 8)
        _mm256_storeu_ps(dst, _mm512_castps512_ps256(x));
    else
        _mm512_mask_storeu_ps(dst, nn_first16(n), x);
}

NN_AVX512 static void s_pack512(float *dst, const float *src, int64_t ld, int64_t n, int64_t D, float scale)
{
    const __m512 sc = _mm512_set1_ps(scale);
    for (int64_t i0 = 0; i0 < BQ; i0 += 16)
        for (int64_t c0 = 0; c0 < D; c0 += 16) {
            int64_t nc = D - c0 < 16 ? D - c0 : 16;
            __m512 r[16];
            if (i0 >= n) {
                for (int64_t j = 0; j < nc; j++)
                    _mm512_storeu_ps(dst + (c0 + j) * BQ + i0, _mm512_setzero_ps());
                continue;
            }
            __mmask16 cm = nn_first16(nc);
#pragma GCC unroll 16
            for (int j = 0; j < 16; j++)
                r[j] = i0 + j < n ? _mm512_maskz_loadu_ps(cm, src + (i0 + j) * ld + c0) : _mm512_setzero_ps();
            nn_tr16(r);
#pragma GCC unroll 16
            for (int j = 0; j < 16; j++)
                if (j < nc) _mm512_storeu_ps(dst + (c0 + j) * BQ + i0, _mm512_mul_ps(sc, r[j]));
        }
}

NN_AVX512 static void s_unpack512(float *dst, int64_t ld, const float *src, int64_t n, int64_t D, const float *f)
{
    for (int64_t i0 = 0; i0 < n; i0 += 16)
        for (int64_t c0 = 0; c0 < D; c0 += 16) {
            int64_t nc = D - c0 < 16 ? D - c0 : 16, ni = n - i0 < 16 ? n - i0 : 16;
            __m512 r[16];
#pragma GCC unroll 16
            for (int j = 0; j < 16; j++)
                r[j] = j < nc ? _mm512_loadu_ps(src + (c0 + j) * BQ + i0) : _mm512_setzero_ps();
            nn_tr16(r);
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++)
                if (i < ni) s_store_n(dst + (i0 + i) * ld + c0, _mm512_mul_ps(_mm512_set1_ps(f[i0 + i]), r[i]), nc);
        }
}

NN_AVX512 static void s_rows512(float *dst, const float *src, int64_t ld, int64_t n, int64_t D, int64_t Dp, float scale)
{
    const __m512 sc = _mm512_set1_ps(scale);
    for (int64_t i = 0; i < BQ; i++)
        for (int64_t c0 = 0; c0 < Dp; c0 += 16) {
            __m512 x =
                i < n && c0 < D ? _mm512_maskz_loadu_ps(nn_first16(D - c0), src + i * ld + c0) : _mm512_setzero_ps();
            _mm512_storeu_ps(dst + i * Dp + c0, _mm512_mul_ps(sc, x));
        }
}

static const s_kern_t s_kern_avx512 = {s_lgemm_avx512, s_softmax_avx512, s_probs_avx512,
                                       s_pack512,      s_unpack512,      s_rows512};

/* ---------------------------------------------------------------- AVX2 */

/* RT rows x one 16-lane vector (two ymm): 12 accumulators of the 16 ymm registers. */
S_AVX2 static inline __attribute__((always_inline)) void s_mk256(float *c, int64_t ldc, const float *a, int64_t sr,
                                                                 int64_t sk, const float *b, int64_t ldb, int64_t K,
                                                                 const int RT, bool acc, const float *cs)
{
    __m256 x[6][2];
#pragma GCC unroll 6
    for (int r = 0; r < RT; r++)
        x[r][0] = x[r][1] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; k++) {
        const float *bk = b + k * ldb, *ak = a + k * sk;
        __m256 b0 = _mm256_loadu_ps(bk), b1 = _mm256_loadu_ps(bk + 8);
#pragma GCC unroll 6
        for (int r = 0; r < RT; r++) {
            __m256 av = _mm256_broadcast_ss(ak + r * sr);
            x[r][0] = _mm256_fmadd_ps(av, b0, x[r][0]);
            x[r][1] = _mm256_fmadd_ps(av, b1, x[r][1]);
        }
    }
    if (acc) {
        __m256 f0 = cs ? _mm256_loadu_ps(cs) : _mm256_set1_ps(1.0f), f1 = cs ? _mm256_loadu_ps(cs + 8) : f0;
#pragma GCC unroll 6
        for (int r = 0; r < RT; r++) {
            x[r][0] = _mm256_fmadd_ps(_mm256_loadu_ps(c + r * ldc), f0, x[r][0]);
            x[r][1] = _mm256_fmadd_ps(_mm256_loadu_ps(c + r * ldc + 8), f1, x[r][1]);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < RT; r++) {
        _mm256_storeu_ps(c + r * ldc, x[r][0]);
        _mm256_storeu_ps(c + r * ldc + 8, x[r][1]);
    }
}

#define S_MK256(RT)                                                                                                    \
    S_AVX2 static void s_mk256_##RT(float *c, int64_t ldc, const float *a, int64_t sr, int64_t sk, const float *b,     \
                                    int64_t ldb, int64_t K, bool acc, const float *cs)                                 \
    {                                                                                                                  \
        s_mk256(c, ldc, a, sr, sk, b, ldb, K, RT, acc, cs);                                                            \
    }                                                                                                                  \
    _Static_assert((RT) <= 6, "tile exceeds the registers")
S_MK256(1);
S_MK256(2);
S_MK256(3);
S_MK256(4);
S_MK256(5);
S_MK256(6);
static const s_mk_fn s_mk256_tab[7] = {0, s_mk256_1, s_mk256_2, s_mk256_3, s_mk256_4, s_mk256_5, s_mk256_6};

static void s_lgemm_avx2(float *c, int64_t ldc, const float *a, int64_t sr, int64_t sk, const float *b, int64_t ldb,
                         int64_t K, int64_t rows, int64_t nv, bool acc, const float *cs)
{
    int64_t tiles = s_tiles(rows, 6);
    for (int64_t v = 0; v < nv; v++)
        for (int64_t t = 0; t < tiles; t++) {
            int64_t r0 = s_tile_start(rows, tiles, t), r1 = s_tile_start(rows, tiles, t + 1);
            s_mk256_tab[r1 - r0](c + r0 * ldc + v * LANES, ldc, a + r0 * sr, sr, sk, b + v * LANES, ldb, K, acc,
                                 cs ? cs + v * LANES : NULL);
        }
}

/* The softmax steps are the generic ones, which NN_CLONES compiles for AVX2. */
static const s_kern_t s_kern_avx2 = {s_lgemm_avx2,   s_softmax_generic, s_probs_generic,
                                     s_pack_generic, s_unpack_generic,  s_rows_generic};
#endif

/* ------------------------------------------------------------ dispatch */

enum { S_BEST, S_GENERIC, S_AVX2_SET, S_AVX512_SET };
static atomic_int s_default; /* S_BEST: not chosen yet */
static atomic_int s_forced;  /* nn_cpu_attention_kernels(); S_BEST: none */

/* The richest set up to `want` that this CPU runs. */
static int s_supported(int want)
{
#if S_X86
    if (want >= S_AVX512_SET && nn_avx512_cpu()) return S_AVX512_SET;
    if (want >= S_AVX2_SET && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return S_AVX2_SET;
#endif
    return S_GENERIC;
}

static int s_which(void)
{
    int which = atomic_load(&s_forced);
    if (which) return which;
    which = atomic_load(&s_default);
    if (!which) {
        const char *e = getenv("BOOTH_ATTN_KERNELS");
        int want = !e                      ? S_AVX512_SET
                   : !strcmp(e, "generic") ? S_GENERIC
                   : !strcmp(e, "avx2")    ? S_AVX2_SET
                                           : S_AVX512_SET;
        which = s_supported(want);
        atomic_store(&s_default, which);
    }
    return which;
}

int nn_cpu_attention_kernels(int which)
{
    atomic_store(&s_forced, which <= S_BEST ? S_BEST : s_supported(which));
    return s_which();
}

static const s_kern_t *s_kernels(void)
{
    switch (s_which()) {
#if S_X86
    case S_AVX512_SET: return &s_kern_avx512;
    case S_AVX2_SET: return &s_kern_avx2;
#endif
    default: return &s_kern_generic;
    }
}

/* --------------------------------------------------------- packing, shared */

typedef struct {
    const nn_attn_dims_t *d;
    const s_kern_t *kern;
    int64_t HD;           /* row stride of q/k/v/out: H * D */
    int64_t Dp;           /* D rounded up to 16: rows of the padded Q/dO copies */
    int64_t nqb, nkb;     /* query blocks (BQ), key blocks (BK_BWD in backward) per head */
    int64_t kgroups, kgb; /* backward: key groups per head, key blocks per group */
    float *out, *lse, *dq, *dk, *dv;
    const float *q, *k, *v, *o, *dout, *clse;
    float *dqpart;    /* [B*H][kgroups][nqb][D][BQ] the key groups' dQ shares, or NULL */
    float scales[BQ]; /* backward: the scale, once per lane (dQ = scale dS K) */
    float *scratch;
    size_t per_thread; /* floats of scratch per thread */
    size_t kv_floats;  /* floats of each of a thread's packed K and V */
    size_t acc_floats; /* backward: floats of each of the dK and dV accumulators */
} s_attn_t;

/* Rows [k0, k1) of head bh's K and V into kp/vp, contiguous: read in place, H*D
 * floats apart, they would cost the micro-kernels a quarter of their speed in
 * cache and TLB misses. */
static void s_pack_kv(const s_attn_t *p, float *kp, float *vp, int64_t bh, int64_t k0, int64_t k1)
{
    const nn_attn_dims_t *d = p->d;
    int64_t b = bh / d->H, h = bh % d->H;
    for (int64_t r = k0; r < k1; r++) {
        size_t src = (size_t)((b * d->Tk + r) * p->HD + h * d->D), dst = (size_t)((r - k0) * d->D);
        memcpy(kp + dst, p->k + src, (size_t)d->D * sizeof(float));
        memcpy(vp + dst, p->v + src, (size_t)d->D * sizeof(float));
    }
}

/* Carves scratch into `extra` floats (p->dqpart, when > 0) and threads x per_thread floats. */
static int s_scratch(nn_ctx_t *ctx, s_attn_t *p, size_t extra)
{
    extra = S_ALIGN(extra);
    float *mem = nn_ctx_scratch(ctx, (extra + (size_t)ctx->threads * p->per_thread) * sizeof(float));
    if (!mem) return BT_ENOMEM;
    p->dqpart = extra ? mem : NULL;
    p->scratch = mem + extra;
    return BT_OK;
}

static int s_check(const nn_attn_dims_t *d)
{
    if (d->B < 0 || d->Tq <= 0 || d->Tk <= 0 || d->H <= 0 || d->D <= 0 || (d->causal && d->Tq != d->Tk) ||
        d->Tq >= INT32_MAX - BQ || d->Tk >= INT32_MAX - BQ) {
        BT_ERROR("attention: invalid dimensions (B %lld, Tq %lld, Tk %lld, H %lld, D %lld, causal %d)", (long long)d->B,
                 (long long)d->Tq, (long long)d->Tk, (long long)d->H, (long long)d->D, d->causal);
        return BT_EINVAL;
    }
    return BT_OK;
}

/* ---------------------------------------------------------------- forward */

static void s_fwd_task(void *arg, int64_t i0, int64_t i1, int tid)
{
    s_attn_t *p = arg;
    const nn_attn_dims_t *d = p->d;
    const s_kern_t *kern = p->kern;
    int64_t D = d->D, HD = p->HD, packed = -1; /* the head whose K and V are in kp, vp */
    float *kp = p->scratch + (size_t)tid * p->per_thread, *vp = kp + p->kv_floats; /* [Tk][D] */
    float *qt = vp + p->kv_floats;                                                 /* [D][BQ] */
    float *ot = qt + S_ALIGN(D * BQ);                                              /* [D][BQ] */
    float *st = ot + S_ALIGN(D * BQ);                                              /* [BK_FWD][BQ] */
    float *m = st + BK_FWD * BQ, *l = m + BQ, *alpha = l + BQ;
    for (int64_t it = i0; it < i1; it++) {
        int64_t bh = it / p->nqb, b = bh / d->H, h = bh % d->H;
        int64_t q0 = (it % p->nqb) * BQ, nq = q0 + BQ < d->Tq ? BQ : d->Tq - q0, nv = (nq + LANES - 1) / LANES;
        if (bh != packed) { /* a thread's tasks are consecutive: a head or two each */
            s_pack_kv(p, kp, vp, bh, 0, d->Tk);
            packed = bh;
        }
        kern->pack(qt, p->q + (b * d->Tq + q0) * HD + h * D, HD, nq, D, d->scale);
        for (int i = 0; i < BQ; i++) {
            m[i] = -FLT_MAX;
            l[i] = 0.0f;
        }
        int64_t kend = d->causal ? q0 + nq : d->Tk; /* later keys are masked for the whole block */
        for (int64_t k0 = 0; k0 < kend; k0 += BK_FWD) {
            int64_t nk = k0 + BK_FWD < kend ? BK_FWD : kend - k0;
            kern->lgemm(st, BQ, kp + k0 * D, D, 1, qt, BQ, D, nk, nv, false, NULL);
            kern->softmax(st, nk, nv, m, l, alpha, q0, k0, d->causal && k0 + nk - 1 > q0);
            kern->lgemm(ot, BQ, vp + k0 * D, 1, D, st, BQ, nk, D, nv, k0 > 0, alpha); /* Ot = Ot alpha + V^T P */
        }
        float inv[BQ];
        for (int64_t i = 0; i < nq; i++) {
            inv[i] = 1.0f / l[i];
            if (p->lse) p->lse[bh * d->Tq + q0 + i] = m[i] + logf(l[i]);
        }
        kern->unpack(p->out + (b * d->Tq + q0) * HD + h * D, HD, ot, nq, D, inv);
    }
}

int nn_cpu_attention_forward(nn_ctx_t *ctx, float *out, float *lse, const float *q, const float *k, const float *v,
                             const nn_attn_dims_t *d)
{
    int rc = s_check(d);
    if (rc || d->B == 0) return rc;
    s_attn_t p = {.d = d, .kern = s_kernels(), .HD = d->H * d->D, .out = out, .lse = lse, .q = q, .k = k, .v = v};
    p.nqb = (d->Tq + BQ - 1) / BQ;
    p.kv_floats = S_ALIGN((size_t)(d->Tk * d->D));
    p.per_thread = 2 * p.kv_floats + 2 * S_ALIGN(d->D * BQ) + (BK_FWD + 3) * BQ;
    if (s_scratch(ctx, &p, 0)) return BT_ENOMEM;
    nn_cpu_parallel(ctx, d->B * d->H * p.nqb, 1, s_fwd_task, &p);
    return BT_OK;
}

/* --------------------------------------------------------------- backward */

typedef struct {
    float *qt, *dot;      /* [D][BQ] scaled Q, dO: B of St = K Qt and dPt = V dOt */
    float *ot;            /* [D][BQ] O, for Delta */
    float *qp, *dop;      /* [BQ][Dp] scaled Q, dO: B of dK += dS^T Q and dV += P^T dO */
    float *lse, *delta;   /* [BQ]; padding lanes: lse +inf (so P = 0), delta 0 */
    float *st, *dpt;      /* [BK_BWD][BQ] P and dS */
    float *dqt;           /* [D][BQ] */
    float *dkacc, *dvacc; /* [keys][Dp] */
    float *kp, *vp;       /* [keys][D] the key group's K and V */
} s_bwd_buf_t;

static size_t s_bwd_floats(int64_t D, int64_t Dp, int64_t keys)
{
    return 4 * S_ALIGN(D * BQ) + 2 * S_ALIGN(BQ * Dp) + 2 * BQ + 2 * BK_BWD * BQ + 2 * S_ALIGN(keys * Dp) +
           2 * S_ALIGN(keys * D);
}

static s_bwd_buf_t s_bwd_buf(const s_attn_t *p, int tid)
{
    int64_t D = p->d->D, Dp = p->Dp;
    float *f = p->scratch + (size_t)tid * p->per_thread;
    s_bwd_buf_t w;
    w.qt = f, f += S_ALIGN(D * BQ);
    w.dot = f, f += S_ALIGN(D * BQ);
    w.dqt = f, f += S_ALIGN(D * BQ);
    w.ot = f, f += S_ALIGN(D * BQ);
    w.qp = f, f += S_ALIGN(BQ * Dp);
    w.dop = f, f += S_ALIGN(BQ * Dp);
    w.lse = f, f += BQ;
    w.delta = f, f += BQ;
    w.st = f, f += BK_BWD * BQ;
    w.dpt = f, f += BK_BWD * BQ;
    w.dkacc = f, f += p->acc_floats;
    w.dvacc = f, f += p->acc_floats;
    w.kp = f, f += p->kv_floats;
    w.vp = f;
    return w;
}

/* delta[i] = sum_c dot[c][i] ot[c][i] (Delta = rowsum(dO * O) in the lanes layout). */
static void s_delta(float *delta, const float *dot, const float *ot, int64_t D)
{
    for (int v = 0; v < QV; v++) {
        s_v16 acc = {0}, x, y;
        for (int64_t c = 0; c < D; c++) {
            S_LD(x, dot + c * BQ + v * LANES);
            S_LD(y, ot + c * BQ + v * LANES);
            acc += x * y;
        }
        S_ST(delta + v * LANES, acc);
    }
}

/* All query blocks x key group g of head bh: dK/dV rows of the group's keys,
 * and dQ — final when the head has one group, else this group's share, which
 * s_dq_reduce_task adds up. */
static void s_bwd_group(const s_attn_t *p, s_bwd_buf_t *w, int64_t bh, int64_t g)
{
    const nn_attn_dims_t *d = p->d;
    const s_kern_t *kern = p->kern;
    int64_t D = d->D, HD = p->HD, Dp = p->Dp, b = bh / d->H, h = bh % d->H;
    int64_t ka = g * p->kgb * BK_BWD, kz = ka + p->kgb * BK_BWD < d->Tk ? ka + p->kgb * BK_BWD : d->Tk;
    const float *kb = w->kp, *vb = w->vp; /* row j: key ka + j */
    s_pack_kv(p, w->kp, w->vp, bh, ka, kz);
    bool do_dq = p->dq, do_dk = p->dk, do_dv = p->dv, need_dp = do_dq || do_dk;
    if (do_dk) memset(w->dkacc, 0, (size_t)((kz - ka) * Dp) * sizeof(float));
    if (do_dv) memset(w->dvacc, 0, (size_t)((kz - ka) * Dp) * sizeof(float));
    for (int64_t qb = 0; qb < p->nqb; qb++) {
        int64_t q0 = qb * BQ, nq = q0 + BQ < d->Tq ? BQ : d->Tq - q0, nv = (nq + LANES - 1) / LANES;
        float *dqt = p->kgroups == 1 ? w->dqt : p->dqpart + ((bh * p->kgroups + g) * p->nqb + qb) * D * BQ;
        if (do_dq) memset(dqt, 0, (size_t)(D * BQ) * sizeof(float));
        int64_t kend = d->causal && q0 + nq < kz ? q0 + nq : kz;
        if (kend <= ka) continue; /* causal: this block sees none of the group's keys */
        const float *qrow = p->q + (b * d->Tq + q0) * HD + h * D;
        const float *dorow = p->dout + (b * d->Tq + q0) * HD + h * D;
        const float *orow = p->o + (b * d->Tq + q0) * HD + h * D;
        kern->pack(w->qt, qrow, HD, nq, D, d->scale);
        kern->pack(w->dot, dorow, HD, nq, D, 1.0f);
        kern->pack(w->ot, orow, HD, nq, D, 1.0f);
        if (do_dk) kern->rows(w->qp, qrow, HD, nq, D, Dp, d->scale);
        if (do_dv) kern->rows(w->dop, dorow, HD, nq, D, Dp, 1.0f);
        s_delta(w->delta, w->dot, w->ot, D);
        for (int64_t i = 0; i < BQ; i++)
            w->lse[i] = i < nq ? p->clse[bh * d->Tq + q0 + i] : INFINITY;
        for (int64_t k0 = ka; k0 < kend; k0 += BK_BWD) {
            int64_t nk = k0 + BK_BWD < kend ? BK_BWD : kend - k0;
            kern->lgemm(w->st, BQ, kb + (k0 - ka) * D, D, 1, w->qt, BQ, D, nk, nv, false, NULL);
            if (need_dp)
                kern->lgemm(w->dpt, BQ, vb + (k0 - ka) * D, D, 1, w->dot, BQ, D, nk, nv, false, NULL);
            else
                memset(w->dpt, 0, (size_t)(nk * BQ) * sizeof(float));
            kern->probs(w->st, w->dpt, nk, nv, w->lse, w->delta, q0, k0, d->causal && k0 + nk - 1 > q0);
            if (do_dq) kern->lgemm(dqt, BQ, kb + (k0 - ka) * D, 1, D, w->dpt, BQ, nk, D, nv, true, NULL);
            if (do_dv)
                kern->lgemm(w->dvacc + (k0 - ka) * Dp, Dp, w->st, BQ, 1, w->dop, Dp, nv * LANES, nk, Dp / LANES, true,
                            NULL);
            if (do_dk)
                kern->lgemm(w->dkacc + (k0 - ka) * Dp, Dp, w->dpt, BQ, 1, w->qp, Dp, nv * LANES, nk, Dp / LANES, true,
                            NULL);
        }
        if (do_dq && p->kgroups == 1) kern->unpack(p->dq + (b * d->Tq + q0) * HD + h * D, HD, dqt, nq, D, p->scales);
    }
    for (int64_t j = ka; j < kz; j++) {
        if (do_dk) memcpy(p->dk + (b * d->Tk + j) * HD + h * D, w->dkacc + (j - ka) * Dp, (size_t)D * sizeof(float));
        if (do_dv) memcpy(p->dv + (b * d->Tk + j) * HD + h * D, w->dvacc + (j - ka) * Dp, (size_t)D * sizeof(float));
    }
}

static void s_bwd_task(void *arg, int64_t i0, int64_t i1, int tid)
{
    s_attn_t *p = arg;
    s_bwd_buf_t w = s_bwd_buf(p, tid);
    for (int64_t it = i0; it < i1; it++)
        s_bwd_group(p, &w, it / p->kgroups, it % p->kgroups);
}

/* dQ of one query block: scale x the groups' shares, added in group order. */
static void s_dq_reduce_task(void *arg, int64_t i0, int64_t i1, int tid)
{
    s_attn_t *p = arg;
    const nn_attn_dims_t *d = p->d;
    int64_t D = d->D, G = p->kgroups, share = p->nqb * D * BQ; /* floats between groups */
    float *sum = s_bwd_buf(p, tid).dqt;
    for (int64_t it = i0; it < i1; it++) {
        int64_t bh = it / p->nqb, qb = it % p->nqb, b = bh / d->H, h = bh % d->H;
        int64_t q0 = qb * BQ, nq = q0 + BQ < d->Tq ? BQ : d->Tq - q0;
        const float *part = p->dqpart + (bh * G * p->nqb + qb) * D * BQ;
        memcpy(sum, part, (size_t)(D * BQ) * sizeof(float));
        for (int64_t g = 1; g < G; g++)
            for (int64_t j = 0; j < D * BQ; j++)
                sum[j] += part[g * share + j];
        p->kern->unpack(p->dq + (b * d->Tq + q0) * p->HD + h * D, p->HD, sum, nq, D, p->scales);
    }
}

int nn_cpu_attention_backward(nn_ctx_t *ctx, float *dq, float *dk, float *dv, const float *dout, const float *q,
                              const float *k, const float *v, const float *out, const float *lse,
                              const nn_attn_dims_t *d)
{
    int rc = s_check(d);
    if (rc || d->B == 0 || (!dq && !dk && !dv)) return rc;
    s_attn_t p = {.d = d,
                  .kern = s_kernels(),
                  .HD = d->H * d->D,
                  .dq = dq,
                  .dk = dk,
                  .dv = dv,
                  .dout = dout,
                  .q = q,
                  .k = k,
                  .v = v,
                  .o = out,
                  .clse = lse};
    p.Dp = (d->D + LANES - 1) / LANES * LANES;
    p.nqb = (d->Tq + BQ - 1) / BQ;
    p.nkb = (d->Tk + BK_BWD - 1) / BK_BWD;
    for (int i = 0; i < BQ; i++)
        p.scales[i] = d->scale;
    /* Key groups per head: one from 8 (batch, head) pairs up, else enough for
     * about 8 tasks, fewer (not below 2) if their dQ shares would pass 32 MiB. */
    int64_t BH = d->B * d->H, part1 = BH * p.nqb * d->D * BQ; /* floats of one group's dQ shares */
    int64_t G = BH >= 8 ? 1 : (8 + BH - 1) / BH, gmax = ((int64_t)8 << 20) / part1;
    if (G > gmax) G = gmax > 2 ? gmax : 2;
    if (G > p.nkb) G = p.nkb;
    p.kgb = (p.nkb + G - 1) / G;
    p.kgroups = (p.nkb + p.kgb - 1) / p.kgb;
    int64_t keys = p.kgb * BK_BWD < d->Tk ? p.kgb * BK_BWD : d->Tk;
    p.acc_floats = S_ALIGN(keys * p.Dp);
    p.kv_floats = S_ALIGN(keys * d->D);
    p.per_thread = s_bwd_floats(d->D, p.Dp, keys);
    if (s_scratch(ctx, &p, dq && p.kgroups > 1 ? (size_t)(p.kgroups * part1) : 0)) return BT_ENOMEM;
    nn_cpu_parallel(ctx, BH * p.kgroups, 1, s_bwd_task, &p);
    if (p.dqpart) nn_cpu_parallel(ctx, BH * p.nqb, 1, s_dq_reduce_task, &p);
    return BT_OK;
}
