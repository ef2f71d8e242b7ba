/*
 * attention.c — multi-head scaled dot-product attention on the CPU, streamed
 * over blocks of query rows so no [Tq, Tk] score matrix per head ever exists.
 *
 * Forward, per (batch, head, query block of BQ rows), in a thread's scratch:
 *   S = scale Q_blk K^T      [BQ, Tk]   one-thread sgemm
 *   P = exp(S - rowmax)      row sums l, lse = rowmax + log l   (saved)
 *   O_blk = (P V) / l        [BQ, D]    one-thread sgemm
 *
 * Backward recomputes P = exp(S - lse) block by block:
 *   dP = dO V^T,  Delta_i = sum_d dO_id O_id,  dS = P (dP - Delta)
 *   dQ = scale dS K,  dK = scale dS^T Q,  dV = P^T dO
 * With at least 8 (batch, head) pairs, one task per pair walks its query blocks
 * and owns that head's dK/dV columns. With fewer (the VAE's single-head
 * attention), a first pass over query blocks computes dQ and Delta, and a second
 * pass over key blocks computes dK and dV from full-height column strips of P;
 * both run in parallel and neither needs atomics. Which scheme runs depends on
 * the dimensions alone, so the bytes never depend on the thread count.
 */
#include <math.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"
#include "nn/cpu/cpu.h"
#include "nn/cpu/vecmath.h"

#define LANES 16

typedef struct {
    const nn_attn_dims_t *d;
    int64_t BQ, nqb; /* query rows per block, blocks per head */
    int64_t BK, nkb; /* two-pass backward: key rows per block, blocks per head */
    int64_t HD;      /* row stride of q/k/v/out: H * D */
    float *out, *lse, *dq, *dk, *dv, *delta;
    const float *q, *k, *v, *o, *dout, *clse;
    float *scratch;
    size_t per_thread; /* floats of scratch per thread */
} s_attn_t;

NN_CLONES static float s_row_max(const float *x, int64_t n)
{
    float acc[LANES];
    for (int l = 0; l < LANES; l++) acc[l] = -INFINITY;
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; l++) acc[l] = x[i + l] > acc[l] ? x[i + l] : acc[l];
    float m = -INFINITY;
    for (int l = 0; l < LANES; l++) m = acc[l] > m ? acc[l] : m;
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

/* x[i] = exp(x[i] - m); returns the sum (16 fixed lanes: vectorised, deterministic). */
NN_CLONES static float s_exp_sum(float *x, int64_t n, float m)
{
    float acc[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; l++) {
            x[i + l] = nn_expf(x[i + l] - m);
            acc[l] += x[i + l];
        }
    float s = 0;
    for (; i < n; i++) {
        x[i] = nn_expf(x[i] - m);
        s += x[i];
    }
    for (int l = 0; l < LANES; l++) s += acc[l];
    return s;
}

/* x[i] = exp(x[i] - lse) */
NN_CLONES static void s_exp_shift(float *x, int64_t n, float lse)
{
    for (int64_t i = 0; i < n; i++) x[i] = nn_expf(x[i] - lse);
}

/* ds[i] = p[i] * (dp[i] - delta), in place in dp */
NN_CLONES static void s_dsoftmax(float *restrict dp, const float *restrict p, int64_t n, float delta)
{
    for (int64_t i = 0; i < n; i++) dp[i] = p[i] * (dp[i] - delta);
}

static float s_dot(const float *a, const float *b, int64_t n)
{
    float s = 0;
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* Number of keys query row qi may see. */
static inline int64_t s_visible(const nn_attn_dims_t *d, int64_t qi) { return d->causal ? qi + 1 : d->Tk; }

/* S rows [q0, q0+nq) of head (b, h) into s (ld = Tk), P = exp(S - lse). When lse is
 * NULL, computes the forward softmax instead and writes lse/row sums to rowlse/rowsum. */
static void s_scores(const s_attn_t *p, float *s, int64_t b, int64_t h, int64_t q0, int64_t nq)
{
    const nn_attn_dims_t *d = p->d;
    const float *qb = p->q + (b * d->Tq + q0) * p->HD + h * d->D;
    const float *kb = p->k + b * d->Tk * p->HD + h * d->D;
    int64_t ncols = d->causal ? q0 + nq : d->Tk; /* later keys are masked for every row of the block */
    nn_cpu_sgemm(false, true, nq, ncols, d->D, d->scale, qb, p->HD, kb, p->HD, 0.0f, s, d->Tk);
}

static void s_fwd_task(void *arg, int64_t i0, int64_t i1, int tid)
{
    s_attn_t *p = arg;
    const nn_attn_dims_t *d = p->d;
    float *s = p->scratch + (size_t)tid * p->per_thread;
    for (int64_t it = i0; it < i1; it++) {
        int64_t bh = it / p->nqb, b = bh / d->H, h = bh % d->H;
        int64_t q0 = (it % p->nqb) * p->BQ, nq = q0 + p->BQ < d->Tq ? p->BQ : d->Tq - q0;
        s_scores(p, s, b, h, q0, nq);
        float inv[256];
        for (int64_t r = 0; r < nq; r++) {
            float *row = s + r * d->Tk;
            int64_t n = s_visible(d, q0 + r);
            float m = s_row_max(row, n);
            float sum = s_exp_sum(row, n, m);
            if (n < d->Tk) memset(row + n, 0, (size_t)(d->Tk - n) * sizeof(float));
            inv[r] = 1.0f / sum;
            if (p->lse) p->lse[(b * d->H + h) * d->Tq + q0 + r] = m + logf(sum);
        }
        float *ob = p->out + (b * d->Tq + q0) * p->HD + h * d->D;
        const float *vb = p->v + b * d->Tk * p->HD + h * d->D;
        int64_t ncols = d->causal ? q0 + nq : d->Tk;
        nn_cpu_sgemm(false, false, nq, d->D, ncols, 1.0f, s, d->Tk, vb, p->HD, 0.0f, ob, p->HD);
        for (int64_t r = 0; r < nq; r++)
            for (int64_t j = 0; j < d->D; j++) ob[r * p->HD + j] *= inv[r];
    }
}

static int s_check(const nn_attn_dims_t *d)
{
    if (d->B < 0 || d->Tq <= 0 || d->Tk <= 0 || d->H <= 0 || d->D <= 0 || (d->causal && d->Tq != d->Tk)) {
        BT_ERROR("attention: invalid dimensions (B %lld, Tq %lld, Tk %lld, H %lld, D %lld, causal %d)",
                 (long long)d->B, (long long)d->Tq, (long long)d->Tk, (long long)d->H, (long long)d->D, d->causal);
        return BT_EINVAL;
    }
    return BT_OK;
}

/* Query rows per block: a [BQ, Tk] strip of about 256 KiB, 16..256 rows. */
static int64_t s_block_rows(int64_t cols)
{
    int64_t r = 65536 / cols;
    return r < 16 ? 16 : (r > 256 ? 256 : r);
}

int nn_cpu_attention_forward(nn_ctx_t *ctx, float *out, float *lse, const float *q, const float *k, const float *v,
                             const nn_attn_dims_t *d)
{
    int rc = s_check(d);
    if (rc || d->B == 0) return rc;
    s_attn_t p = {.d = d, .HD = d->H * d->D, .out = out, .lse = lse, .q = q, .k = k, .v = v};
    p.BQ = s_block_rows(d->Tk);
    if (p.BQ > d->Tq) p.BQ = d->Tq;
    p.nqb = (d->Tq + p.BQ - 1) / p.BQ;
    p.per_thread = (size_t)(p.BQ * d->Tk);
    p.scratch = nn_ctx_scratch(ctx, (size_t)ctx->threads * p.per_thread * sizeof(float));
    if (!p.scratch) return BT_ENOMEM;
    nn_cpu_blas_threads(1);
    nn_cpu_parallel(ctx, d->B * d->H * p.nqb, 1, s_fwd_task, &p);
    return BT_OK;
}

/* P (in s) and dS (in dp) for query rows [q0, q0+nq) of head (b, h); fills delta[0..nq). */
static void s_block_grads(const s_attn_t *p, float *s, float *dp, float *delta, int64_t b, int64_t h, int64_t q0,
                          int64_t nq)
{
    const nn_attn_dims_t *d = p->d;
    s_scores(p, s, b, h, q0, nq);
    const float *dob = p->dout + (b * d->Tq + q0) * p->HD + h * d->D;
    const float *ob = p->o + (b * d->Tq + q0) * p->HD + h * d->D;
    const float *vb = p->v + b * d->Tk * p->HD + h * d->D;
    int64_t ncols = d->causal ? q0 + nq : d->Tk;
    nn_cpu_sgemm(false, true, nq, ncols, d->D, 1.0f, dob, p->HD, vb, p->HD, 0.0f, dp, d->Tk);
    for (int64_t r = 0; r < nq; r++) {
        float *srow = s + r * d->Tk, *dprow = dp + r * d->Tk;
        int64_t n = s_visible(d, q0 + r);
        s_exp_shift(srow, n, p->clse[(b * d->H + h) * d->Tq + q0 + r]);
        if (n < d->Tk) {
            memset(srow + n, 0, (size_t)(d->Tk - n) * sizeof(float));
            memset(dprow + n, 0, (size_t)(d->Tk - n) * sizeof(float));
        }
        delta[r] = s_dot(dob + r * p->HD, ob + r * p->HD, d->D);
        s_dsoftmax(dprow, srow, n, delta[r]);
    }
}

/* One (b, h) pair: all query blocks, accumulating dK and dV of that head. */
static void s_bwd_head_task(void *arg, int64_t i0, int64_t i1, int tid)
{
    s_attn_t *p = arg;
    const nn_attn_dims_t *d = p->d;
    float *s = p->scratch + (size_t)tid * p->per_thread;
    float *dp = s + p->BQ * d->Tk;
    float delta[256];
    for (int64_t bh = i0; bh < i1; bh++) {
        int64_t b = bh / d->H, h = bh % d->H;
        float *dkb = p->dk ? p->dk + b * d->Tk * p->HD + h * d->D : NULL;
        float *dvb = p->dv ? p->dv + b * d->Tk * p->HD + h * d->D : NULL;
        for (int64_t r = 0; r < d->Tk; r++) {
            if (dkb) memset(dkb + r * p->HD, 0, (size_t)d->D * sizeof(float));
            if (dvb) memset(dvb + r * p->HD, 0, (size_t)d->D * sizeof(float));
        }
        const float *kb = p->k + b * d->Tk * p->HD + h * d->D;
        for (int64_t qb = 0; qb < p->nqb; qb++) {
            int64_t q0 = qb * p->BQ, nq = q0 + p->BQ < d->Tq ? p->BQ : d->Tq - q0;
            int64_t ncols = d->causal ? q0 + nq : d->Tk;
            s_block_grads(p, s, dp, delta, b, h, q0, nq);
            const float *qblk = p->q + (b * d->Tq + q0) * p->HD + h * d->D;
            const float *dob = p->dout + (b * d->Tq + q0) * p->HD + h * d->D;
            if (p->dq)
                nn_cpu_sgemm(false, false, nq, d->D, ncols, d->scale, dp, d->Tk, kb, p->HD, 0.0f,
                             p->dq + (b * d->Tq + q0) * p->HD + h * d->D, p->HD);
            if (dkb) nn_cpu_sgemm(true, false, ncols, d->D, nq, d->scale, dp, d->Tk, qblk, p->HD, 1.0f, dkb, p->HD);
            if (dvb) nn_cpu_sgemm(true, false, ncols, d->D, nq, 1.0f, s, d->Tk, dob, p->HD, 1.0f, dvb, p->HD);
        }
    }
}

/* Two-pass scheme, pass 1: one query block, writes dQ and Delta. */
static void s_bwd_q_task(void *arg, int64_t i0, int64_t i1, int tid)
{
    s_attn_t *p = arg;
    const nn_attn_dims_t *d = p->d;
    float *s = p->scratch + (size_t)tid * p->per_thread;
    float *dp = s + p->BQ * d->Tk;
    for (int64_t it = i0; it < i1; it++) {
        int64_t bh = it / p->nqb, b = bh / d->H, h = bh % d->H;
        int64_t q0 = (it % p->nqb) * p->BQ, nq = q0 + p->BQ < d->Tq ? p->BQ : d->Tq - q0;
        float *delta = p->delta + bh * d->Tq + q0;
        s_block_grads(p, s, dp, delta, b, h, q0, nq);
        if (p->dq) {
            int64_t ncols = d->causal ? q0 + nq : d->Tk;
            const float *kb = p->k + b * d->Tk * p->HD + h * d->D;
            nn_cpu_sgemm(false, false, nq, d->D, ncols, d->scale, dp, d->Tk, kb, p->HD, 0.0f,
                         p->dq + (b * d->Tq + q0) * p->HD + h * d->D, p->HD);
        }
    }
}

/* Two-pass scheme, pass 2: one key block, all queries; writes dK and dV rows. */
static void s_bwd_kv_task(void *arg, int64_t i0, int64_t i1, int tid)
{
    s_attn_t *p = arg;
    const nn_attn_dims_t *d = p->d;
    float *st = p->scratch + (size_t)tid * p->per_thread; /* [Tq, BK] */
    float *dpt = st + d->Tq * p->BK;
    for (int64_t it = i0; it < i1; it++) {
        int64_t bh = it / p->nkb, b = bh / d->H, h = bh % d->H;
        int64_t k0 = (it % p->nkb) * p->BK, nk = k0 + p->BK < d->Tk ? p->BK : d->Tk - k0;
        const float *qb = p->q + b * d->Tq * p->HD + h * d->D;
        const float *kb = p->k + (b * d->Tk + k0) * p->HD + h * d->D;
        const float *vb = p->v + (b * d->Tk + k0) * p->HD + h * d->D;
        const float *dob = p->dout + b * d->Tq * p->HD + h * d->D;
        /* causal: queries before k0 see none of these keys */
        int64_t qstart = d->causal ? k0 : 0, nqr = d->Tq - qstart;
        nn_cpu_sgemm(false, true, nqr, nk, d->D, d->scale, qb + qstart * p->HD, p->HD, kb, p->HD, 0.0f, st, p->BK);
        nn_cpu_sgemm(false, true, nqr, nk, d->D, 1.0f, dob + qstart * p->HD, p->HD, vb, p->HD, 0.0f, dpt, p->BK);
        for (int64_t r = 0; r < nqr; r++) {
            int64_t qi = qstart + r;
            float *srow = st + r * p->BK, *dprow = dpt + r * p->BK;
            float l = p->clse[bh * d->Tq + qi], dl = p->delta[bh * d->Tq + qi];
            for (int64_t j = 0; j < nk; j++) {
                bool masked = d->causal && k0 + j > qi;
                float pv = masked ? 0.0f : nn_expf(srow[j] - l);
                srow[j] = pv;
                dprow[j] = pv * (dprow[j] - dl);
            }
        }
        if (p->dk)
            nn_cpu_sgemm(true, false, nk, d->D, nqr, d->scale, dpt, p->BK, qb + qstart * p->HD, p->HD, 0.0f,
                         p->dk + (b * d->Tk + k0) * p->HD + h * d->D, p->HD);
        if (p->dv)
            nn_cpu_sgemm(true, false, nk, d->D, nqr, 1.0f, st, p->BK, dob + qstart * p->HD, p->HD, 0.0f,
                         p->dv + (b * d->Tk + k0) * p->HD + h * d->D, p->HD);
    }
}

int nn_cpu_attention_backward(nn_ctx_t *ctx, float *dq, float *dk, float *dv, const float *dout, const float *q,
                              const float *k, const float *v, const float *out, const float *lse,
                              const nn_attn_dims_t *d)
{
    int rc = s_check(d);
    if (rc || d->B == 0 || (!dq && !dk && !dv)) return rc;
    s_attn_t p = {.d = d, .HD = d->H * d->D, .dq = dq, .dk = dk, .dv = dv, .dout = dout, .q = q, .k = k, .v = v,
                  .o = out, .clse = lse};
    p.BQ = s_block_rows(d->Tk);
    if (p.BQ > d->Tq) p.BQ = d->Tq;
    p.nqb = (d->Tq + p.BQ - 1) / p.BQ;
    nn_cpu_blas_threads(1);
    bool per_head = d->B * d->H >= 8;
    if (per_head) {
        p.per_thread = (size_t)(2 * p.BQ * d->Tk);
        p.scratch = nn_ctx_scratch(ctx, (size_t)ctx->threads * p.per_thread * sizeof(float));
        if (!p.scratch) return BT_ENOMEM;
        nn_cpu_parallel(ctx, d->B * d->H, 1, s_bwd_head_task, &p);
        return BT_OK;
    }
    p.BK = s_block_rows(d->Tq);
    if (p.BK > d->Tk) p.BK = d->Tk;
    p.nkb = (d->Tk + p.BK - 1) / p.BK;
    size_t pass1 = (size_t)(2 * p.BQ * d->Tk), pass2 = (size_t)(2 * d->Tq * p.BK);
    p.per_thread = pass1 > pass2 ? pass1 : pass2;
    size_t delta_floats = (size_t)(d->B * d->H * d->Tq);
    float *mem = nn_ctx_scratch(ctx, (delta_floats + (size_t)ctx->threads * p.per_thread) * sizeof(float));
    if (!mem) return BT_ENOMEM;
    p.delta = mem;
    p.scratch = mem + delta_floats;
    nn_cpu_parallel(ctx, d->B * d->H * p.nqb, 1, s_bwd_q_task, &p);
    if (dk || dv) nn_cpu_parallel(ctx, d->B * d->H * p.nkb, 1, s_bwd_kv_task, &p);
    return BT_OK;
}
