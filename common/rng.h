/*
 * rng.h — counter-based random numbers: value i of stream s under seed k is a
 * pure function of (k, s, i).
 *
 * That is what makes booth's results independent of batching, thread counts and
 * the number of workers: an image's initial noise is stream "image index", a
 * training example's noise is stream (step, example), and nobody has to replay
 * anyone else's draws to get there. The mixer is SplitMix64's finaliser applied
 * to a Weyl sequence over the key; normals use Box-Muller on pairs.
 */
#ifndef BOOTH_COMMON_RNG_H
#define BOOTH_COMMON_RNG_H

#include <stdint.h>

/* A 64-bit key for (seed, stream): streams of different seeds never coincide. */
uint64_t bt_rng_key(uint64_t seed, uint64_t stream);
/* Derives a stream id from several small integers (step, example index, ...). */
uint64_t bt_rng_stream(uint64_t a, uint64_t b, uint64_t c);

uint64_t bt_rng_u64(uint64_t key, uint64_t i);
/* Uniform in [0, 1) with 53 bits. */
double bt_rng_uniform(uint64_t key, uint64_t i);
/* x[0..n) standard normal (float), element j from the key's pair j/2. */
void bt_rng_normal_fill(float *x, int64_t n, uint64_t key);
/* An integer uniform in [0, n) (n > 0), without modulo bias. */
uint64_t bt_rng_below(uint64_t key, uint64_t i, uint64_t n);

#endif
