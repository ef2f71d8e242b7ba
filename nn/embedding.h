/*
 * embedding.h — token embedding lookup and the sinusoidal timestep embedding.
 */
#ifndef BOOTH_NN_EMBEDDING_H
#define BOOTH_NN_EMBEDDING_H

#include "nn/ops.h"

/* out[N,C] = table[ids[n], :]; an id outside [0, V) is BT_EINVAL. */
static inline int nn_embedding_forward(nn_ctx_t *ctx, float *out, const int32_t *ids, const float *table, int64_t N,
                                       int64_t C, int64_t V)
{
    return ctx->ops->embedding_forward(ctx, out, ids, table, N, C, V);
}
/* dtable[V,C] += scatter of dout rows (repeated ids accumulate). */
static inline int nn_embedding_backward(nn_ctx_t *ctx, float *dtable, const float *dout, const int32_t *ids,
                                        int64_t N, int64_t C, int64_t V)
{
    return ctx->ops->embedding_backward(ctx, dtable, dout, ids, N, C, V);
}

/* Stable Diffusion's timestep features out[B,C] for t[B] (float timesteps):
 * half = C/2, freq_i = exp(-ln(10000) * i / (half - freq_shift)),
 * [sin(t freq), cos(t freq)], or [cos, sin] with flip_sin_to_cos; a zero column
 * pads odd C. Computed in float32 exactly as the reference does. */
static inline int nn_timestep_embedding_forward(nn_ctx_t *ctx, float *out, const float *t, int64_t B, int64_t C,
                                                bool flip_sin_to_cos, float freq_shift)
{
    return ctx->ops->timestep_embedding_forward(ctx, out, t, B, C, flip_sin_to_cos, freq_shift);
}
/* dt[B] = sum_i dout[b,i] * d out[b,i] / dt (=). */
static inline int nn_timestep_embedding_backward(nn_ctx_t *ctx, float *dt, const float *dout, const float *t,
                                                 int64_t B, int64_t C, bool flip_sin_to_cos, float freq_shift)
{
    return ctx->ops->timestep_embedding_backward(ctx, dt, dout, t, B, C, flip_sin_to_cos, freq_shift);
}

#endif
