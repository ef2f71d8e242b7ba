/*
 * embedding.c — token embedding lookup and sinusoidal timestep features.
 */
#include <math.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"
#include "nn/cpu/cpu.h"

int nn_cpu_embedding_forward(nn_ctx_t *ctx, float *out, const int32_t *ids, const float *table, int64_t N, int64_t C,
                             int64_t V)
{
    (void)ctx;
    for (int64_t i = 0; i < N; i++) {
        if (ids[i] < 0 || ids[i] >= V) {
            BT_ERROR("embedding: token id %d at position %lld is outside the vocabulary of %lld", ids[i],
                     (long long)i, (long long)V);
            return BT_EINVAL;
        }
        memcpy(out + i * C, table + (int64_t)ids[i] * C, (size_t)C * sizeof(float));
    }
    return BT_OK;
}

int nn_cpu_embedding_backward(nn_ctx_t *ctx, float *dtable, const float *dout, const int32_t *ids, int64_t N,
                              int64_t C, int64_t V)
{
    (void)ctx;
    for (int64_t i = 0; i < N; i++) { /* in order: repeated ids accumulate deterministically */
        if (ids[i] < 0 || ids[i] >= V) {
            BT_ERROR("embedding: token id %d at position %lld is outside the vocabulary of %lld", ids[i],
                     (long long)i, (long long)V);
            return BT_EINVAL;
        }
        float *dst = dtable + (int64_t)ids[i] * C;
        const float *src = dout + i * C;
        for (int64_t c = 0; c < C; c++) dst[c] += src[c];
    }
    return BT_OK;
}

/* Frequencies exactly as diffusers' get_timestep_embedding computes them in
 * float32: exp(-ln(10000) * i / (half - shift)). */
static float s_freq(int64_t i, int64_t half, float freq_shift)
{
    float e = (float)-9.210340371976184 * (float)i; /* -math.log(10000) as float32, times i */
    e = e / ((float)half - freq_shift);
    return expf(e);
}

int nn_cpu_timestep_embedding_forward(nn_ctx_t *ctx, float *out, const float *t, int64_t B, int64_t C,
                                      bool flip_sin_to_cos, float freq_shift)
{
    (void)ctx;
    int64_t half = C / 2;
    if (half == 0 || (float)half == freq_shift) return BT_EINVAL;
    for (int64_t b = 0; b < B; b++) {
        float *o = out + b * C;
        for (int64_t i = 0; i < half; i++) {
            float arg = t[b] * s_freq(i, half, freq_shift);
            float sn = sinf(arg), cs = cosf(arg);
            o[i] = flip_sin_to_cos ? cs : sn;
            o[half + i] = flip_sin_to_cos ? sn : cs;
        }
        if (C % 2) o[C - 1] = 0.0f;
    }
    return BT_OK;
}

int nn_cpu_timestep_embedding_backward(nn_ctx_t *ctx, float *dt, const float *dout, const float *t, int64_t B,
                                       int64_t C, bool flip_sin_to_cos, float freq_shift)
{
    (void)ctx;
    int64_t half = C / 2;
    if (half == 0 || (float)half == freq_shift) return BT_EINVAL;
    for (int64_t b = 0; b < B; b++) {
        const float *g = dout + b * C;
        double acc = 0;
        for (int64_t i = 0; i < half; i++) {
            float f = s_freq(i, half, freq_shift);
            float arg = t[b] * f;
            float gs = flip_sin_to_cos ? g[half + i] : g[i]; /* gradient of the sin column */
            float gc = flip_sin_to_cos ? g[i] : g[half + i];
            acc += (double)f * ((double)gs * cos(arg) - (double)gc * sin(arg));
        }
        dt[b] = (float)acc;
    }
    return BT_OK;
}
