/*
 * norm.c — group norm and layer norm, forward and backward, on the CPU.
 *
 * Group norm: one task per (batch, group) computes the statistics in double and
 * normalises the group. Backward runs one task per group and loops over the
 * batch inside, so dgamma/dbeta for a channel are summed by one thread in a
 * fixed order (no atomics, same bytes for any thread count).
 * Layer norm: rows in parallel; dw/db in a second pass over column ranges, for
 * the same reason.
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
#include <string.h>

#include "common/status.h"
#include "nn/cpu/cpu.h"

typedef struct {
    float *out, *mean, *rstd, *dw, *db;
    const float *inp, *dout, *w, *b, *cmean, *crstd;
    int64_t B, C, HW, G, N;
    float eps;
} s_args_t;

/* ---- group norm ---- */

/* The reductions below add blocks of 256 elements in 16 float lanes, then the
 * block totals in double: vectorised, accurate (no lane sums more than 16 terms
 * in float), and the same order whatever the thread count. */
#define LANES 16
#define BLOCK 256

/* Sum and sum of squares of x[0..n). */
NN_CLONES static void s_sums(const float *restrict x, int64_t n, double *sum, double *sumsq)
{
    double s = 0, ss = 0;
    int64_t i = 0;
    for (; i + BLOCK <= n; i += BLOCK) {
        float a[LANES] = {0}, q[LANES] = {0};
        for (int64_t k = 0; k < BLOCK; k += LANES)
            for (int l = 0; l < LANES; l++) {
                float v = x[i + k + l];
                a[l] += v;
                q[l] += v * v;
            }
        float ta = 0, tq = 0;
        for (int l = 0; l < LANES; l++) {
            ta += a[l];
            tq += q[l];
        }
        s += ta;
        ss += tq;
    }
    for (; i < n; i++) {
        s += x[i];
        ss += (double)x[i] * x[i];
    }
    *sum = s;
    *sumsq = ss;
}

/* Sums of dy and dy * xhat over one channel plane, xhat = (x - m) * rs. */
NN_CLONES static void s_grad_sums(const float *restrict x, const float *restrict dy, int64_t n, float m, float rs,
                                  double *sdy, double *sdyx)
{
    double s1 = 0, s2 = 0;
    int64_t i = 0;
    for (; i + BLOCK <= n; i += BLOCK) {
        float a[LANES] = {0}, b[LANES] = {0};
        for (int64_t k = 0; k < BLOCK; k += LANES)
            for (int l = 0; l < LANES; l++) {
                float g = dy[i + k + l];
                a[l] += g;
                b[l] += g * ((x[i + k + l] - m) * rs);
            }
        float ta = 0, tb = 0;
        for (int l = 0; l < LANES; l++) {
            ta += a[l];
            tb += b[l];
        }
        s1 += ta;
        s2 += tb;
    }
    for (; i < n; i++) {
        s1 += dy[i];
        s2 += (double)(dy[i] * ((x[i] - m) * rs));
    }
    *sdy = s1;
    *sdyx = s2;
}

NN_CLONES static void s_gn_fwd(void *arg, int64_t i0, int64_t i1, int tid)
{
    s_args_t *p = arg;
    int64_t cpg = p->C / p->G, HW = p->HW;
    for (int64_t i = i0; i < i1; i++) {
        int64_t b = i / p->G, g = i % p->G;
        const float *x = p->inp + (b * p->C + g * cpg) * HW;
        int64_t n = cpg * HW;
        double s, ss;
        s_sums(x, n, &s, &ss);
        double mean = s / (double)n;
        double var = ss / (double)n - mean * mean;
        if (var < 0) var = 0;
        float rstd = (float)(1.0 / sqrt(var + p->eps));
        float m = (float)mean;
        if (p->mean) p->mean[i] = m;
        if (p->rstd) p->rstd[i] = rstd;
        float *y = p->out + (b * p->C + g * cpg) * HW;
        for (int64_t c = 0; c < cpg; c++) {
            int64_t ch = g * cpg + c;
            float gam = p->w ? p->w[ch] : 1.0f, bet = p->b ? p->b[ch] : 0.0f;
            float sc = rstd * gam, sh = bet - m * sc;
            const float *restrict xc = x + c * HW;
            float *restrict yc = y + c * HW;
            for (int64_t j = 0; j < HW; j++) yc[j] = xc[j] * sc + sh;
        }
    }
}

int nn_cpu_group_norm_forward(nn_ctx_t *ctx, float *out, float *mean, float *rstd, const float *inp,
                              const float *gamma, const float *beta, int64_t B, int64_t C, int64_t HW, int64_t G,
                              float eps)
{
    if (G <= 0 || C % G) return BT_EINVAL;
    s_args_t a = {.out = out, .mean = mean, .rstd = rstd, .inp = inp, .w = gamma, .b = beta,
                  .B = B, .C = C, .HW = HW, .G = G, .eps = eps};
    int64_t per = C / G * HW;
    nn_cpu_parallel(ctx, B * G, per >= NN_GRAIN ? 1 : NN_GRAIN / per, s_gn_fwd, &a);
    return BT_OK;
}

/* item = one group g, all batch elements */
NN_CLONES static void s_gn_bwd(void *arg, int64_t g0, int64_t g1, int tid)
{
    s_args_t *p = arg;
    int64_t cpg = p->C / p->G, HW = p->HW, n = cpg * HW;
    for (int64_t g = g0; g < g1; g++) {
        for (int64_t b = 0; b < p->B; b++) {
            int64_t i = b * p->G + g;
            float m = p->cmean[i], rs = p->crstd[i];
            const float *x = p->inp + (b * p->C + g * cpg) * HW;
            const float *dy = p->dout + (b * p->C + g * cpg) * HW;
            /* sums of dxhat and dxhat * xhat over the group, dxhat = dy * gamma */
            double s1 = 0, s2 = 0;
            for (int64_t c = 0; c < cpg; c++) {
                int64_t ch = g * cpg + c;
                float gam = p->w ? p->w[ch] : 1.0f;
                double a1, a2;
                s_grad_sums(x + c * HW, dy + c * HW, HW, m, rs, &a1, &a2);
                if (p->db) p->db[ch] += (float)a1;
                if (p->dw) p->dw[ch] += (float)a2;
                s1 += a1 * gam;
                s2 += a2 * gam;
            }
            if (!p->out) continue;
            float mean1 = (float)(s1 / (double)n), mean2 = (float)(s2 / (double)n);
            float *dx = p->out + (b * p->C + g * cpg) * HW;
            for (int64_t c = 0; c < cpg; c++) {
                int64_t ch = g * cpg + c;
                float gam = p->w ? p->w[ch] : 1.0f;
                const float *restrict xc = x + c * HW, *restrict dc = dy + c * HW;
                float *restrict dxc = dx + c * HW;
                for (int64_t j = 0; j < HW; j++) {
                    dxc[j] = rs * (dc[j] * gam - mean1 - (xc[j] - m) * rs * mean2);
                }
            }
        }
    }
}

int nn_cpu_group_norm_backward(nn_ctx_t *ctx, float *dinp, float *dgamma, float *dbeta, const float *dout,
                               const float *inp, const float *mean, const float *rstd, const float *gamma,
                               int64_t B, int64_t C, int64_t HW, int64_t G)
{
    if (G <= 0 || C % G) return BT_EINVAL;
    s_args_t a = {.out = dinp, .dw = dgamma, .db = dbeta, .dout = dout, .inp = inp, .cmean = mean, .crstd = rstd,
                  .w = gamma, .B = B, .C = C, .HW = HW, .G = G};
    int64_t per = B * C / G * HW;
    nn_cpu_parallel(ctx, G, per >= NN_GRAIN ? 1 : NN_GRAIN / per, s_gn_bwd, &a);
    return BT_OK;
}

/* ---- layer norm ---- */

NN_CLONES static void s_ln_fwd(void *arg, int64_t r0, int64_t r1, int tid)
{
    s_args_t *p = arg;
    int64_t C = p->C;
    for (int64_t r = r0; r < r1; r++) {
        const float *restrict x = p->inp + r * C;
        float *restrict y = p->out + r * C;
        double s = 0, ss = 0;
        for (int64_t j = 0; j < C; j++) s += x[j];
        double mean = s / (double)C;
        for (int64_t j = 0; j < C; j++) {
            double d = x[j] - mean;
            ss += d * d;
        }
        float rstd = (float)(1.0 / sqrt(ss / (double)C + p->eps));
        float m = (float)mean;
        if (p->mean) p->mean[r] = m;
        if (p->rstd) p->rstd[r] = rstd;
        for (int64_t j = 0; j < C; j++) {
            float v = (x[j] - m) * rstd;
            y[j] = v * (p->w ? p->w[j] : 1.0f) + (p->b ? p->b[j] : 0.0f);
        }
    }
}

int nn_cpu_layer_norm_forward(nn_ctx_t *ctx, float *out, float *mean, float *rstd, const float *inp, const float *w,
                              const float *b, int64_t N, int64_t C, float eps)
{
    s_args_t a = {.out = out, .mean = mean, .rstd = rstd, .inp = inp, .w = w, .b = b, .N = N, .C = C, .eps = eps};
    nn_cpu_parallel(ctx, N, C >= NN_GRAIN ? 1 : NN_GRAIN / (C ? C : 1), s_ln_fwd, &a);
    return BT_OK;
}

NN_CLONES static void s_ln_bwd_dx(void *arg, int64_t r0, int64_t r1, int tid)
{
    s_args_t *p = arg;
    int64_t C = p->C;
    for (int64_t r = r0; r < r1; r++) {
        const float *restrict x = p->inp + r * C, *restrict dy = p->dout + r * C;
        float *restrict dx = p->out + r * C;
        float m = p->cmean[r], rs = p->crstd[r];
        double s1 = 0, s2 = 0;
        for (int64_t j = 0; j < C; j++) {
            float g = dy[j] * (p->w ? p->w[j] : 1.0f);
            s1 += g;
            s2 += g * ((x[j] - m) * rs);
        }
        float mean1 = (float)(s1 / (double)C), mean2 = (float)(s2 / (double)C);
        for (int64_t j = 0; j < C; j++) {
            float g = dy[j] * (p->w ? p->w[j] : 1.0f);
            dx[j] = rs * (g - mean1 - (x[j] - m) * rs * mean2);
        }
    }
}

/* item = one column j: sums over all rows in row order */
NN_CLONES static void s_ln_bwd_dwdb(void *arg, int64_t j0, int64_t j1, int tid)
{
    s_args_t *p = arg;
    int64_t C = p->C;
    double sw[64], sb[64];
    for (int64_t c0 = j0; c0 < j1; c0 += 64) {
        int64_t c1 = c0 + 64 < j1 ? c0 + 64 : j1;
        memset(sw, 0, sizeof sw);
        memset(sb, 0, sizeof sb);
        for (int64_t r = 0; r < p->N; r++) {
            const float *x = p->inp + r * C, *dy = p->dout + r * C;
            float m = p->cmean[r], rs = p->crstd[r];
            for (int64_t j = c0; j < c1; j++) {
                sw[j - c0] += dy[j] * ((x[j] - m) * rs);
                sb[j - c0] += dy[j];
            }
        }
        for (int64_t j = c0; j < c1; j++) {
            if (p->dw) p->dw[j] += (float)sw[j - c0];
            if (p->db) p->db[j] += (float)sb[j - c0];
        }
    }
}

int nn_cpu_layer_norm_backward(nn_ctx_t *ctx, float *dinp, float *dw, float *db, const float *dout,
                               const float *inp, const float *mean, const float *rstd, const float *w, int64_t N,
                               int64_t C)
{
    s_args_t a = {.out = dinp, .dw = dw, .db = db, .dout = dout, .inp = inp, .cmean = mean, .crstd = rstd, .w = w,
                  .N = N, .C = C};
    if (dinp) nn_cpu_parallel(ctx, N, C >= NN_GRAIN ? 1 : NN_GRAIN / (C ? C : 1), s_ln_bwd_dx, &a);
    if (dw || db) nn_cpu_parallel(ctx, C, 64, s_ln_bwd_dwdb, &a);
    return BT_OK;
}
