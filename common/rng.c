/* rng.c — SplitMix64-style counter-based generator. */
#include "common/rng.h"

#include <math.h>

static uint64_t s_mix(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint64_t bt_rng_key(uint64_t seed, uint64_t stream)
{
    return s_mix(s_mix(seed ^ 0x6a09e667f3bcc909ull) + stream * 0x9e3779b97f4a7c15ull);
}

uint64_t bt_rng_stream(uint64_t a, uint64_t b, uint64_t c)
{
    return s_mix(s_mix(s_mix(a + 0x243f6a8885a308d3ull) ^ b) + c * 0xbb67ae8584caa73bull);
}

uint64_t bt_rng_u64(uint64_t key, uint64_t i) { return s_mix(key + (i + 1) * 0x9e3779b97f4a7c15ull); }

double bt_rng_uniform(uint64_t key, uint64_t i) { return (double)(bt_rng_u64(key, i) >> 11) * 0x1p-53; }

void bt_rng_normal_fill(float *x, int64_t n, uint64_t key)
{
    for (int64_t j = 0; j < n; j += 2) {
        double u1 = bt_rng_uniform(key, (uint64_t)j), u2 = bt_rng_uniform(key, (uint64_t)j + 1);
        if (u1 < 0x1p-60) u1 = 0x1p-60;
        double r = sqrt(-2.0 * log(u1)), a = 6.283185307179586 * u2;
        x[j] = (float)(r * cos(a));
        if (j + 1 < n) x[j + 1] = (float)(r * sin(a));
    }
}

uint64_t bt_rng_below(uint64_t key, uint64_t i, uint64_t n)
{
    /* rejection from the top of the range keeps every value equally likely */
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    for (uint64_t k = 0;; k++) {
        uint64_t v = bt_rng_u64(key, i + k * 0x100000000ull);
        if (v < limit) return v % n;
    }
}
