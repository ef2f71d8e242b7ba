/*
 * linear.c — matmul and linear layers on the CPU: products by nn_cpu_gemm
 * (gemm.c), plus the bias sums.
 */
/* GCC's -O2 uses the "very cheap" vectorizer cost model, which leaves every loop
 * here that needs a remainder loop or a runtime alias check scalar (SiLU, GEGLU,
 * norms, add, axpy...: 5-15x slower). The dynamic model vectorizes them; each
 * element's arithmetic is unchanged (no reassociation), so results are the same
 * bits as the scalar loops'. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("vect-cost-model=dynamic")
#endif

#include <string.h>

#include "common/status.h"
#include "nn/cpu/cpu.h"

int nn_cpu_matmul(nn_ctx_t *ctx, float *c, const float *a, const float *b, int64_t M, int64_t N, int64_t K,
                  bool trans_a, bool trans_b, float alpha, float beta)
{
    return nn_cpu_gemm(ctx, trans_a, trans_b, M, N, K, alpha, a, trans_a ? M : K, b, trans_b ? K : N, beta, c, N,
                       NULL);
}

typedef struct {
    float *out;
    const float *bias, *dout;
    int64_t M, N;
} s_args_t;

int nn_cpu_linear_forward(nn_ctx_t *ctx, float *out, const float *inp, const float *w, const float *b, int64_t M,
                          int64_t K, int64_t N)
{
    return nn_cpu_gemm(ctx, false, true, M, N, K, 1.0f, inp, K, w, K, 0.0f, out, N, b);
}

/* item = one column block of 64: sums rows in row order (thread-count independent) */
NN_CLONES static void s_bias_grad(void *arg, int64_t j0, int64_t j1, int tid)
{
    s_args_t *p = arg;
    float acc[64];
    for (int64_t c0 = j0; c0 < j1; c0 += 64) {
        int64_t c1 = c0 + 64 < j1 ? c0 + 64 : j1;
        memset(acc, 0, sizeof acc);
        for (int64_t r = 0; r < p->M; r++) {
            const float *g = p->dout + r * p->N;
            for (int64_t j = c0; j < c1; j++) acc[j - c0] += g[j];
        }
        for (int64_t j = c0; j < c1; j++) p->out[j] += acc[j - c0];
    }
}

int nn_cpu_linear_backward(nn_ctx_t *ctx, float *dinp, float *dw, float *db, const float *dout, const float *inp,
                           const float *w, int64_t M, int64_t K, int64_t N)
{
    int rc = BT_OK;
    if (dinp && (rc = nn_cpu_gemm(ctx, false, false, M, K, N, 1.0f, dout, N, w, K, 0.0f, dinp, K, NULL))) return rc;
    if (dw && (rc = nn_cpu_gemm(ctx, true, false, N, K, M, 1.0f, dout, N, inp, K, 1.0f, dw, K, NULL))) return rc;
    if (db) {
        s_args_t a = {.out = db, .dout = dout, .M = M, .N = N};
        nn_cpu_parallel(ctx, N, 64, s_bias_grad, &a);
    }
    return BT_OK;
}
