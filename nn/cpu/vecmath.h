/*
 * vecmath.h — exp, sigmoid and erf written so that the compiler vectorises the
 * loops that call them (glibc's expf/erff are scalar calls and would cost more
 * than the rest of an activation kernel together).
 *
 * nn_expf: range reduction x = n ln2 + r, |r| <= ln2/2, a degree-7 polynomial for
 * e^r (relative error < 2e-7 before rounding), 2^n built in the exponent bits.
 * Inputs below -87.3 give 0 (so masked scores vanish); above 88.7 saturate; a NaN
 * gives NaN (the range reduction runs on 0 instead: converting NaN to an integer is
 * undefined behaviour, which UBSan found with a worker fed NaN weights).
 * nn_erff: erf(x) = 1 - t exp(-x^2 + P(t)), t = 1/(1 + |x|/2), a Chebyshev fit
 * with fractional error < 1.2e-7 on erfc.
 */
#ifndef BOOTH_NN_CPU_VECMATH_H
#define BOOTH_NN_CPU_VECMATH_H

#include <stdint.h>
#include <string.h>

static inline float nn_expf(float x)
{
    const float hi = 88.7f, lo = -87.3f;
    float xc = x > hi ? hi : (x < lo ? lo : x);
    xc = x == x ? xc : 0.0f; /* NaN: a harmless value here, NaN at the end */
    float z = xc * 1.44269504088896341f;
    float n = (z + 12582912.0f) - 12582912.0f; /* round to nearest (1.5 * 2^23 trick) */
    float r = xc - n * 0.693145751953125f;      /* ln2 split in two for an exact product */
    r = r - n * 1.428606765330187045e-06f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t e = (int32_t)n + 127;
    uint32_t bits = (uint32_t)e << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    float y = p * scale;
    return x == x ? (x < lo ? 0.0f : y) : x;
}

static inline float nn_sigmoidf(float x) { return 1.0f / (1.0f + nn_expf(-x)); }

static inline float nn_erff(float x)
{
    float ax = x < 0 ? -x : x;
    float t = 1.0f / (1.0f + 0.5f * ax);
    float p = 0.17087277f;
    p = p * t - 0.82215223f;
    p = p * t + 1.48851587f;
    p = p * t - 1.13520398f;
    p = p * t + 0.27886807f;
    p = p * t - 0.18628806f;
    p = p * t + 0.09678418f;
    p = p * t + 0.37409196f;
    p = p * t + 1.00002368f;
    p = p * t - 1.26551223f;
    float erfc = t * nn_expf(-ax * ax + p);
    float r = 1.0f - erfc;
    return x < 0 ? -r : r;
}

#endif
