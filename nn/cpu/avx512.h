/*
 * avx512.h — register-level helpers the AVX-512 kernels share (internal to
 * nn/cpu; x86-64 with GCC or clang only). Include after <immintrin.h>.
 */
#ifndef BOOTH_NN_CPU_AVX512_H
#define BOOTH_NN_CPU_AVX512_H

#include <immintrin.h>
#include <stdbool.h>
#include <stdint.h>

#define NN_AVX512 __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,avx2,fma")))

/* Whether this CPU runs the AVX-512 subsets NN_AVX512 compiles for. */
static inline bool nn_avx512_cpu(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw");
}

/* The first n lanes (all 16 from n >= 16, none from n <= 0). */
static inline __mmask16 nn_first16(int64_t n)
{
    return n >= 16 ? (__mmask16)0xffff : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
}

/* The register tile of every product (gemm.c, attention.c):
 *   x[r][v] = sum over k < K of A(r, k) * b[k * ldb + 16 v + (0..15)]
 * for r < MR, v < NV, A(r, k) = a[r * sr + k * sk], summed in k order from
 * zero. MR x NV <= 24 accumulators; each k loads NV vectors of B and broadcasts
 * MR values of A. Constant MR and NV unroll it into registers. */
NN_AVX512 static inline __attribute__((always_inline)) void nn_tile_sum(__m512 x[12][4], int64_t K, const float *a,
                                                                        int64_t sr, int64_t sk, const float *b,
                                                                        int64_t ldb, const int MR, const int NV)
{
    const float *ar[12];
#pragma GCC unroll 12
    for (int r = 0; r < MR; r++) {
        ar[r] = a + r * sr;
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            x[r][v] = _mm512_setzero_ps();
    }
    for (int64_t k = 0; k < K; k++) {
        const float *bk = b + k * ldb;
        __m512 bv[4];
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            bv[v] = _mm512_loadu_ps(bk + v * 16);
#pragma GCC unroll 12
        for (int r = 0; r < MR; r++) {
            __m512 av = _mm512_set1_ps(ar[r][k * sk]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++)
                x[r][v] = _mm512_fmadd_ps(av, bv[v], x[r][v]);
        }
    }
}

/* r[j][i] <-> r[i][j]: 16 x 16 floats in registers, 64 shuffles. */
NN_AVX512 static inline __attribute__((always_inline)) void nn_tr16(__m512 r[16])
{
    __m512 a[16], b[16];
#pragma GCC unroll 8
    for (int k = 0; k < 8; k++) { /* 32-bit interleave of row pairs, per 128-bit lane */
        a[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
        a[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
    }
#pragma GCC unroll 4
    for (int g = 0; g < 4; g++) { /* b[4g+m], lane L: column 4L+m of rows 4g..4g+3 */
        __m512d a0 = _mm512_castps_pd(a[4 * g]), a1 = _mm512_castps_pd(a[4 * g + 1]);
        __m512d a2 = _mm512_castps_pd(a[4 * g + 2]), a3 = _mm512_castps_pd(a[4 * g + 3]);
        b[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, a2));
        b[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, a2));
        b[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, a3));
        b[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, a3));
    }
#pragma GCC unroll 4
    for (int m = 0; m < 4; m++) { /* row 4L+m gathers lane L of b[m], b[4+m], b[8+m], b[12+m] */
        __m512 c0 = _mm512_shuffle_f32x4(b[m], b[4 + m], 0x88), c1 = _mm512_shuffle_f32x4(b[m], b[4 + m], 0xdd);
        __m512 c2 = _mm512_shuffle_f32x4(b[8 + m], b[12 + m], 0x88),
               c3 = _mm512_shuffle_f32x4(b[8 + m], b[12 + m], 0xdd);
        r[m] = _mm512_shuffle_f32x4(c0, c2, 0x88);
        r[4 + m] = _mm512_shuffle_f32x4(c1, c3, 0x88);
        r[8 + m] = _mm512_shuffle_f32x4(c0, c2, 0xdd);
        r[12 + m] = _mm512_shuffle_f32x4(c1, c3, 0xdd);
    }
}

#endif
