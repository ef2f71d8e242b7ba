/*
 * activation.c — SiLU, GELU (erf, tanh), quick-GELU, GEGLU and softmax on the CPU.
 *
 * Transcendentals come from vecmath.h so these loops vectorise; derivatives
 * are written out analytically:
 *   silu'(x)       = s (1 + x (1 - s)),            s = sigmoid(x)
 *   gelu'(x)       = Phi(x) + x phi(x)
 *   gelu_tanh'(x)  = (1 + t)/2 + x (1 - t^2) c (1 + 3k x^2) / 2,  t = tanh(c (x + k x^3))
 *   quick_gelu'(x) = s + 1.702 x s (1 - s),        s = sigmoid(1.702 x)
 */
/* GCC's -O2 uses the "very cheap" vectorizer cost model, which leaves every loop
 * here that needs a remainder loop or a runtime alias check scalar (SiLU, GEGLU,
 * norms, add, axpy...: 5-15x slower). The dynamic model vectorizes them; each
 * element's arithmetic is unchanged (no reassociation), so results are the same
 * bits as the scalar loops'. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("vect-cost-model=dynamic")
#endif

#include <math.h>

#include "common/status.h"
#include "nn/cpu/cpu.h"
#include "nn/cpu/vecmath.h"

#define SQRT_2_OVER_PI 0.7978845608028654f
#define GELU_K 0.044715f
#define INV_SQRT2 0.7071067811865476f
#define INV_SQRT_2PI 0.3989422804014327f

static inline float s_gelu(float x) { return 0.5f * x * (1.0f + nn_erff(x * INV_SQRT2)); }

static inline float s_gelu_grad(float x)
{
    return 0.5f * (1.0f + nn_erff(x * INV_SQRT2)) + x * INV_SQRT_2PI * nn_expf(-0.5f * x * x);
}

static inline float s_tanhf(float u) { return 1.0f - 2.0f / (1.0f + nn_expf(2.0f * u)); }

typedef struct {
    float *y;
    const float *x, *g;
    int64_t H, cols;
    nn_act_t act;
} s_args_t;

NN_CLONES static void s_act_fwd(void *arg, int64_t i0, int64_t i1, int tid)
{
    s_args_t *p = arg;
    float *y = p->y; /* may alias x */
    const float *x = p->x;
    switch (p->act) {
    case NN_ACT_SILU:
        for (int64_t i = i0; i < i1; i++) y[i] = x[i] * nn_sigmoidf(x[i]);
        break;
    case NN_ACT_GELU:
        for (int64_t i = i0; i < i1; i++) y[i] = s_gelu(x[i]);
        break;
    case NN_ACT_GELU_TANH:
        for (int64_t i = i0; i < i1; i++) {
            float v = x[i];
            y[i] = 0.5f * v * (1.0f + s_tanhf(SQRT_2_OVER_PI * (v + GELU_K * v * v * v)));
        }
        break;
    case NN_ACT_QUICK_GELU:
        for (int64_t i = i0; i < i1; i++) y[i] = x[i] * nn_sigmoidf(1.702f * x[i]);
        break;
    }
}

NN_CLONES static void s_act_bwd(void *arg, int64_t i0, int64_t i1, int tid)
{
    s_args_t *p = arg;
    float *dx = p->y; /* may alias g */
    const float *x = p->x, *g = p->g;
    switch (p->act) {
    case NN_ACT_SILU:
        for (int64_t i = i0; i < i1; i++) {
            float s = nn_sigmoidf(x[i]);
            dx[i] = g[i] * s * (1.0f + x[i] * (1.0f - s));
        }
        break;
    case NN_ACT_GELU:
        for (int64_t i = i0; i < i1; i++) dx[i] = g[i] * s_gelu_grad(x[i]);
        break;
    case NN_ACT_GELU_TANH:
        for (int64_t i = i0; i < i1; i++) {
            float v = x[i];
            float t = s_tanhf(SQRT_2_OVER_PI * (v + GELU_K * v * v * v));
            float d = 0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * SQRT_2_OVER_PI * (1.0f + 3.0f * GELU_K * v * v);
            dx[i] = g[i] * d;
        }
        break;
    case NN_ACT_QUICK_GELU:
        for (int64_t i = i0; i < i1; i++) {
            float s = nn_sigmoidf(1.702f * x[i]);
            dx[i] = g[i] * (s + 1.702f * x[i] * s * (1.0f - s));
        }
        break;
    }
}

static int s_check_act(nn_act_t act)
{
    return act == NN_ACT_SILU || act == NN_ACT_GELU || act == NN_ACT_GELU_TANH || act == NN_ACT_QUICK_GELU
               ? BT_OK
               : BT_EINVAL;
}

int nn_cpu_act_forward(nn_ctx_t *ctx, float *out, const float *inp, int64_t n, nn_act_t act)
{
    if (s_check_act(act)) return BT_EINVAL;
    s_args_t a = {.y = out, .x = inp, .act = act};
    nn_cpu_parallel(ctx, n, NN_GRAIN, s_act_fwd, &a);
    return BT_OK;
}

int nn_cpu_act_backward(nn_ctx_t *ctx, float *dinp, const float *dout, const float *inp, int64_t n, nn_act_t act)
{
    if (s_check_act(act)) return BT_EINVAL;
    s_args_t a = {.y = dinp, .x = inp, .g = dout, .act = act};
    nn_cpu_parallel(ctx, n, NN_GRAIN, s_act_bwd, &a);
    return BT_OK;
}

/* item = one row */
NN_CLONES static void s_geglu_fwd(void *arg, int64_t r0, int64_t r1, int tid)
{
    s_args_t *p = arg;
    int64_t H = p->H;
    for (int64_t r = r0; r < r1; r++) {
        const float *restrict a = p->x + r * 2 * H, *restrict g = a + H;
        float *restrict y = p->y + r * H;
        for (int64_t i = 0; i < H; i++) y[i] = a[i] * s_gelu(g[i]);
    }
}

NN_CLONES static void s_geglu_bwd(void *arg, int64_t r0, int64_t r1, int tid)
{
    s_args_t *p = arg;
    int64_t H = p->H;
    for (int64_t r = r0; r < r1; r++) {
        const float *restrict a = p->x + r * 2 * H, *restrict g = a + H;
        const float *restrict dy = p->g + r * H;
        float *restrict da = p->y + r * 2 * H, *restrict dg = da + H;
        for (int64_t i = 0; i < H; i++) {
            da[i] = dy[i] * s_gelu(g[i]);
            dg[i] = dy[i] * a[i] * s_gelu_grad(g[i]);
        }
    }
}

int nn_cpu_geglu_forward(nn_ctx_t *ctx, float *out, const float *inp, int64_t M, int64_t H)
{
    s_args_t a = {.y = out, .x = inp, .H = H};
    nn_cpu_parallel(ctx, M, H >= NN_GRAIN ? 1 : NN_GRAIN / (H ? H : 1), s_geglu_fwd, &a);
    return BT_OK;
}

int nn_cpu_geglu_backward(nn_ctx_t *ctx, float *dinp, const float *dout, const float *inp, int64_t M, int64_t H)
{
    s_args_t a = {.y = dinp, .x = inp, .g = dout, .H = H};
    nn_cpu_parallel(ctx, M, H >= NN_GRAIN ? 1 : NN_GRAIN / (H ? H : 1), s_geglu_bwd, &a);
    return BT_OK;
}

NN_CLONES static void s_softmax_fwd(void *arg, int64_t r0, int64_t r1, int tid)
{
    s_args_t *p = arg;
    int64_t n = p->cols;
    for (int64_t r = r0; r < r1; r++) {
        const float *x = p->x + r * n;
        float *y = p->y + r * n; /* may alias x */
        float m = -INFINITY;
        for (int64_t i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
        if (m == -INFINITY) m = 0; /* a fully masked row stays finite (all zeros) */
        float s = 0;
        for (int64_t i = 0; i < n; i++) {
            y[i] = nn_expf(x[i] - m);
            s += y[i];
        }
        float inv = s > 0 ? 1.0f / s : 0.0f;
        for (int64_t i = 0; i < n; i++) y[i] *= inv;
    }
}

NN_CLONES static void s_softmax_bwd(void *arg, int64_t r0, int64_t r1, int tid)
{
    s_args_t *p = arg;
    int64_t n = p->cols;
    for (int64_t r = r0; r < r1; r++) {
        const float *y = p->x + r * n, *g = p->g + r * n;
        float *dx = p->y + r * n; /* may alias g */
        float dot = 0;
        for (int64_t i = 0; i < n; i++) dot += g[i] * y[i];
        for (int64_t i = 0; i < n; i++) dx[i] = y[i] * (g[i] - dot);
    }
}

int nn_cpu_softmax_forward(nn_ctx_t *ctx, float *out, const float *inp, int64_t rows, int64_t cols)
{
    s_args_t a = {.y = out, .x = inp, .cols = cols};
    nn_cpu_parallel(ctx, rows, cols >= NN_GRAIN ? 1 : NN_GRAIN / (cols ? cols : 1), s_softmax_fwd, &a);
    return BT_OK;
}

int nn_cpu_softmax_backward(nn_ctx_t *ctx, float *dinp, const float *dout, const float *out, int64_t rows,
                            int64_t cols)
{
    s_args_t a = {.y = dinp, .x = out, .g = dout, .cols = cols};
    nn_cpu_parallel(ctx, rows, cols >= NN_GRAIN ? 1 : NN_GRAIN / (cols ? cols : 1), s_softmax_bwd, &a);
    return BT_OK;
}
