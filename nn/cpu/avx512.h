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
