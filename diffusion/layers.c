/*
 * layers.c — forward and backward of the UNet/VAE/CLIP building blocks.
 *
 * Every function follows the same shape: a scratch mark, temporaries, kernels
 * through nn/, and one exit that releases the temporaries. In training (run->tape
 * set) the tensors a backward needs are computed straight into tape memory, or
 * copied there when they belong to the caller; inference keeps nothing.
 */
#include "diffusion/layers.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/status.h"
#include "diffusion/run_macros.h"

void sd_hook(const sd_run_t *r, const float *data, int ndim, const int64_t *shape, const char *fmt, ...)
{
    if (!r->hook) return;
    char name[2 * SD_NAME_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    r->hook(r->hook_user, name, data, ndim, shape);
}

float *sd_scratch(sd_run_t *r, int64_t n) { return bt_stack_alloc(r->scratch, (size_t)(n > 0 ? n : 1) * sizeof(float)); }

const float *sd_weight_f32(sd_run_t *r, const sd_weight_t *w, int64_t n)
{
    if (w->f32) return w->f32;
    float *f = sd_scratch(r, n);
    if (f && nn_widen(r->nn, f, w->h, w->dtype, n)) return NULL;
    return f;
}

/* ------------------------------------------------------------------ build */

void sd_linear_build(sd_linear_t *m, sd_params_t *ps, int64_t in, int64_t out, bool bias, const char *prefix)
{
    memset(m, 0, sizeof *m);
    m->in = in;
    m->out = out;
    sd_params_add_weight(ps, &m->w, SD_INIT_NORMAL, 1.0f / sqrtf((float)in), 2, (int64_t[]){out, in}, "%s.weight",
                         prefix);
    sd_params_grad_slot(ps, &m->dw);
    if (bias) {
        sd_params_add(ps, &m->b, SD_INIT_ZERO, 0, 1, (int64_t[]){out}, "%s.bias", prefix);
        sd_params_grad_slot(ps, &m->db);
    }
}

void sd_conv_build(sd_conv_t *m, sd_params_t *ps, int64_t in, int64_t out, int64_t k, int stride, int pad,
                   const char *prefix)
{
    memset(m, 0, sizeof *m);
    m->in = in;
    m->out = out;
    m->k = k;
    m->stride = stride;
    m->pad_t = m->pad_b = m->pad_l = m->pad_r = pad;
    sd_params_add_weight(ps, &m->w, SD_INIT_NORMAL, 1.0f / sqrtf((float)(in * k * k)), 4,
                         (int64_t[]){out, in, k, k}, "%s.weight", prefix);
    sd_params_grad_slot(ps, &m->dw);
    sd_params_add(ps, &m->b, SD_INIT_ZERO, 0, 1, (int64_t[]){out}, "%s.bias", prefix);
    sd_params_grad_slot(ps, &m->db);
}

void sd_norm_build(sd_norm_t *m, sd_params_t *ps, int64_t C, int64_t groups, float eps, const char *prefix)
{
    memset(m, 0, sizeof *m);
    m->C = C;
    m->groups = groups;
    m->eps = eps;
    sd_params_add(ps, &m->w, SD_INIT_ONE, 0, 1, (int64_t[]){C}, "%s.weight", prefix);
    sd_params_grad_slot(ps, &m->dw);
    sd_params_add(ps, &m->b, SD_INIT_ZERO, 0, 1, (int64_t[]){C}, "%s.bias", prefix);
    sd_params_grad_slot(ps, &m->db);
}

void sd_attention_build(sd_attention_t *m, sd_params_t *ps, int64_t query_dim, int64_t kv_dim, int64_t heads,
                        int64_t head_dim, bool cross, bool qkv_bias, const char *prefix)
{
    char name[2 * SD_NAME_MAX];
    int64_t inner = heads * head_dim;
    memset(m, 0, sizeof *m);
    m->heads = heads;
    m->head_dim = head_dim;
    m->query_dim = query_dim;
    m->kv_dim = cross ? kv_dim : query_dim;
    m->cross = cross;
    snprintf(name, sizeof name, "%s.to_q", prefix);
    sd_linear_build(&m->to_q, ps, query_dim, inner, qkv_bias, name);
    snprintf(name, sizeof name, "%s.to_k", prefix);
    sd_linear_build(&m->to_k, ps, m->kv_dim, inner, qkv_bias, name);
    snprintf(name, sizeof name, "%s.to_v", prefix);
    sd_linear_build(&m->to_v, ps, m->kv_dim, inner, qkv_bias, name);
    snprintf(name, sizeof name, "%s.to_out.0", prefix);
    sd_linear_build(&m->to_out, ps, inner, query_dim, true, name);
}

void sd_resnet_build(sd_resnet_t *m, sd_params_t *ps, int64_t in, int64_t out, int64_t temb_dim, int64_t groups,
                     float eps, float output_scale, const char *prefix)
{
    char name[2 * SD_NAME_MAX];
    memset(m, 0, sizeof *m);
    m->in = in;
    m->out = out;
    m->output_scale = output_scale;
    snprintf(name, sizeof name, "%s.norm1", prefix);
    sd_norm_build(&m->norm1, ps, in, groups, eps, name);
    snprintf(name, sizeof name, "%s.conv1", prefix);
    sd_conv_build(&m->conv1, ps, in, out, 3, 1, 1, name);
    if (temb_dim > 0) {
        snprintf(name, sizeof name, "%s.time_emb_proj", prefix);
        sd_linear_build(&m->time_proj, ps, temb_dim, out, true, name);
    }
    snprintf(name, sizeof name, "%s.norm2", prefix);
    sd_norm_build(&m->norm2, ps, out, groups, eps, name);
    snprintf(name, sizeof name, "%s.conv2", prefix);
    sd_conv_build(&m->conv2, ps, out, out, 3, 1, 1, name);
    m->has_shortcut = in != out;
    if (m->has_shortcut) {
        snprintf(name, sizeof name, "%s.conv_shortcut", prefix);
        sd_conv_build(&m->shortcut, ps, in, out, 1, 1, 0, name);
    }
}

int sd_transformer_build(sd_transformer_t *m, sd_params_t *ps, int64_t channels, int64_t heads, int64_t n_blocks,
                         int64_t ctx_dim, int64_t groups, bool linear_proj, bool only_cross, const char *prefix)
{
    char name[2 * SD_NAME_MAX];
    memset(m, 0, sizeof *m);
    snprintf(m->name, sizeof m->name, "%s", prefix);
    m->channels = channels;
    m->n_blocks = n_blocks;
    m->linear_proj = linear_proj;
    m->blocks = bt_calloc((size_t)n_blocks, sizeof *m->blocks);
    if (!m->blocks) return BT_ENOMEM;
    snprintf(name, sizeof name, "%s.norm", prefix);
    sd_norm_build(&m->norm, ps, channels, groups, 1e-6f, name);
    snprintf(name, sizeof name, "%s.proj_in", prefix);
    if (linear_proj)
        sd_linear_build(&m->proj_in_lin, ps, channels, channels, true, name);
    else
        sd_conv_build(&m->proj_in_conv, ps, channels, channels, 1, 1, 0, name);
    int64_t head_dim = channels / heads;
    for (int64_t i = 0; i < n_blocks; i++) {
        sd_tblock_t *b = &m->blocks[i];
        char bp[SD_NAME_MAX];
        snprintf(bp, sizeof bp, "%s.transformer_blocks.%lld", prefix, (long long)i);
        snprintf(name, sizeof name, "%s.norm1", bp);
        sd_norm_build(&b->norm1, ps, channels, 0, 1e-5f, name);
        snprintf(name, sizeof name, "%s.attn1", bp);
        sd_attention_build(&b->attn1, ps, channels, ctx_dim, heads, head_dim, only_cross, false, name);
        snprintf(name, sizeof name, "%s.norm2", bp);
        sd_norm_build(&b->norm2, ps, channels, 0, 1e-5f, name);
        snprintf(name, sizeof name, "%s.attn2", bp);
        sd_attention_build(&b->attn2, ps, channels, ctx_dim, heads, head_dim, true, false, name);
        snprintf(name, sizeof name, "%s.norm3", bp);
        sd_norm_build(&b->norm3, ps, channels, 0, 1e-5f, name);
        b->ff.dim = channels;
        b->ff.inner = 4 * channels;
        snprintf(name, sizeof name, "%s.ff.net.0.proj", bp);
        sd_linear_build(&b->ff.proj, ps, channels, 2 * b->ff.inner, true, name);
        snprintf(name, sizeof name, "%s.ff.net.2", bp);
        sd_linear_build(&b->ff.out, ps, b->ff.inner, channels, true, name);
    }
    snprintf(name, sizeof name, "%s.proj_out", prefix);
    if (linear_proj)
        sd_linear_build(&m->proj_out_lin, ps, channels, channels, true, name);
    else
        sd_conv_build(&m->proj_out_conv, ps, channels, channels, 1, 1, 0, name);
    return BT_OK;
}

void sd_transformer_free(sd_transformer_t *m)
{
    free(m->blocks);
    m->blocks = NULL;
}

/* ------------------------------------------------------------------ linear */

static float s_lora_factor(const sd_lora_t *l) { return l->scale * l->alpha / (float)l->rank; }

int sd_linear_forward(sd_run_t *r, const sd_linear_t *m, float *out, const float *x, int64_t B, int64_t N)
{
    int rc = BT_OK;
    bt_stack_mark_t mk = bt_stack_mark(r->scratch);
    const sd_lora_t *l = m->lora;
    bool lora = l && l->scale != 0.0f;
    float *u = NULL;
    const float *w = sd_weight_f32(r, &m->w, m->in * m->out); /* once for the whole batch */
    if (!w) {
        rc = BT_ENOMEM;
        goto out;
    }
    if (lora) ALLOC(u, N * l->rank);
    /* one product per batch item: an item's arithmetic never depends on its batch-mates,
     * so an image comes out the same whatever the batch size */
    for (int64_t b = 0; b < B; b++) {
        const float *xb = x + b * N * m->in;
        float *ob = out + b * N * m->out;
        TRY(nn_linear_forward(r->nn, ob, xb, w, m->b, N, m->in, m->out));
        if (!lora) continue;
        TRY(nn_matmul(r->nn, u, xb, l->A, N, l->rank, m->in, false, true, 1.0f, 0.0f));
        TRY(nn_matmul(r->nn, ob, u, l->B, N, m->out, l->rank, false, true, s_lora_factor(l), 1.0f));
    }
out:
    bt_stack_reset(r->scratch, mk);
    return rc;
}

int sd_linear_backward(sd_run_t *r, const sd_linear_t *m, float *dx, const float *dy, const float *x, int64_t M)
{
    int rc = BT_OK;
    bt_stack_mark_t mk = bt_stack_mark(r->scratch);
    if ((m->dw || m->db) && !x) {
        BT_ERROR("linear backward: a trained layer without its forward input");
        rc = BT_EINTERNAL;
        goto out;
    }
    if (dx || m->dw || m->db) {
        const float *w = dx ? sd_weight_f32(r, &m->w, m->in * m->out) : NULL;
        if (dx && !w) {
            rc = BT_ENOMEM;
            goto out;
        }
        TRY(nn_linear_backward(r->nn, dx, m->dw, m->db, dy, x, w, M, m->in, m->out));
        bt_stack_reset(r->scratch, mk); /* the widened weight is not needed below */
    }
    const sd_lora_t *l = m->lora;
    if (!l || l->scale == 0.0f || (!dx && !l->dA && !l->dB)) goto out;
    float s = s_lora_factor(l), *g;
    ALLOC(g, M * l->rank); /* g = dy B: the gradient at the adapter's bottleneck */
    TRY(nn_matmul(r->nn, g, dy, l->B, M, l->rank, m->out, false, false, 1.0f, 0.0f));
    if (dx) TRY(nn_matmul(r->nn, dx, g, l->A, M, m->in, l->rank, false, false, s, 1.0f));
    if (l->dA) TRY(nn_matmul(r->nn, l->dA, g, x, l->rank, m->in, M, true, false, s, 1.0f));
    if (l->dB) {
        float *u;
        ALLOC(u, M * l->rank);
        TRY(nn_matmul(r->nn, u, x, l->A, M, l->rank, m->in, false, true, 1.0f, 0.0f));
        TRY(nn_matmul(r->nn, l->dB, dy, u, m->out, l->rank, M, true, false, s, 1.0f));
    }
out:
    bt_stack_reset(r->scratch, mk);
    return rc;
}

/* -------------------------------------------------------------------- conv */

int64_t sd_conv_out_size(const sd_conv_t *m, int64_t size)
{
    return (size + m->pad_t + m->pad_b - m->k) / m->stride + 1;
}

static nn_conv2d_dims_t s_conv_dims(const sd_conv_t *m, int64_t B, int64_t H, int64_t W)
{
    return (nn_conv2d_dims_t){.B = B, .C = m->in, .H = H, .W = W, .OC = m->out, .KH = m->k, .KW = m->k,
                              .stride = m->stride, .pad_t = m->pad_t, .pad_b = m->pad_b, .pad_l = m->pad_l,
                              .pad_r = m->pad_r};
}

int sd_conv_forward(sd_run_t *r, const sd_conv_t *m, float *out, const float *x, int64_t B, int64_t H, int64_t W)
{
    nn_conv2d_dims_t d = s_conv_dims(m, B, H, W);
    bt_stack_mark_t mk = bt_stack_mark(r->scratch);
    const float *w = sd_weight_f32(r, &m->w, m->out * m->in * m->k * m->k);
    int rc = w ? nn_conv2d_forward(r->nn, out, x, w, m->b, &d) : BT_ENOMEM;
    bt_stack_reset(r->scratch, mk);
    return rc;
}

int sd_conv_backward(sd_run_t *r, const sd_conv_t *m, float *dx, const float *dy, const float *x, int64_t B,
                     int64_t H, int64_t W)
{
    if ((m->dw || m->db) && !x) {
        BT_ERROR("conv backward: a trained layer without its forward input");
        return BT_EINTERNAL;
    }
    if (!dx && !m->dw && !m->db) return BT_OK;
    nn_conv2d_dims_t d = s_conv_dims(m, B, H, W);
    bt_stack_mark_t mk = bt_stack_mark(r->scratch);
    const float *w = sd_weight_f32(r, &m->w, m->out * m->in * m->k * m->k);
    int rc = w ? nn_conv2d_backward(r->nn, dx, m->dw, m->db, dy, x, w, &d) : BT_ENOMEM;
    bt_stack_reset(r->scratch, mk);
    return rc;
}

/* ------------------------------------------------------------------- norms */

int sd_group_norm_forward(sd_run_t *r, const sd_norm_t *m, float *out, float *mean, float *rstd, const float *x,
                          int64_t B, int64_t HW, bool silu)
{
    int rc = nn_group_norm_forward(r->nn, out, mean, rstd, x, m->w, m->b, B, m->C, HW, m->groups, m->eps);
    if (rc == BT_OK && silu) rc = nn_act_forward(r->nn, out, out, B * m->C * HW, NN_ACT_SILU);
    return rc;
}

int sd_group_norm_backward(sd_run_t *r, const sd_norm_t *m, float *dx, const float *dy, const float *x,
                           const float *mean, const float *rstd, int64_t B, int64_t HW, bool silu)
{
    int rc = BT_OK;
    bt_stack_mark_t mk = bt_stack_mark(r->scratch);
    int64_t n = B * m->C * HW;
    const float *g = dy;
    if (silu) { /* recompute the norm's output, then the SiLU's gradient */
        float *y, *gs;
        ALLOC(y, n);
        ALLOC(gs, n);
        TRY(nn_group_norm_forward(r->nn, y, NULL, NULL, x, m->w, m->b, B, m->C, HW, m->groups, m->eps));
        TRY(nn_act_backward(r->nn, gs, dy, y, n, NN_ACT_SILU));
        g = gs;
    }
    TRY(nn_group_norm_backward(r->nn, dx, m->dw, m->db, g, x, mean, rstd, m->w, B, m->C, HW, m->groups));
out:
    bt_stack_reset(r->scratch, mk);
    return rc;
}

int sd_layer_norm_forward(sd_run_t *r, const sd_norm_t *m, float *out, float *mean, float *rstd, const float *x,
                          int64_t N)
{
    return nn_layer_norm_forward(r->nn, out, mean, rstd, x, m->w, m->b, N, m->C, m->eps);
}

int sd_layer_norm_backward(sd_run_t *r, const sd_norm_t *m, float *dx, const float *dy, const float *x,
                           const float *mean, const float *rstd, int64_t N)
{
    return nn_layer_norm_backward(r->nn, dx, m->dw, m->db, dy, x, mean, rstd, m->w, N, m->C);
}

/* --------------------------------------------------------------- attention */

static int64_t s_keep_qkv_from = 640;

void sd_attention_test_keep_qkv_from(int64_t channels) { s_keep_qkv_from = channels; }

int sd_attention_kept(const sd_attention_t *m) { return m->heads * m->head_dim >= s_keep_qkv_from ? 5 : 2; }

/* Saved: x, q, k, v, o, lse (context by reference). */
int sd_attention_forward(sd_run_t *r, const sd_attention_t *m, float *out, const float *x, const float *ctx,
                         int64_t B, int64_t N, int64_t T, bool causal)
{
    int rc = BT_OK;
    bt_stack_mark_t mk = bt_stack_mark(r->scratch);
    int64_t inner = m->heads * m->head_dim, Tk = m->cross ? T : N;
    float *xs, *q, *k, *v, *o, *lse = NULL;
    const float *kv;
    KEEP_COPY(xs, x, B * N * m->query_dim);
    if (m->cross) {
        kv = ctx;
        if (r->tape && sd_tape_ref(r->tape, ctx)) {
            rc = BT_ENOMEM;
            goto out;
        }
    } else {
        kv = xs;
    }
    bool reuse = r->tape && r->reuse, keep = !r->tape && r->keep;
    bool qkv = sd_attention_kept(m) > 2; /* checkpointing keeps the projections too */
    if (reuse && r->reuse->next + sd_attention_kept(m) > r->reuse->n) {
        BT_ERROR("gradient checkpointing: a block re-ran more attention than it kept");
        rc = BT_EINTERNAL;
        goto out;
    }
    float **next = reuse ? r->reuse->p + r->reuse->next : NULL;
    if (reuse && qkv) { /* a checkpointed block's recomputation: q, k, v were kept */
        q = *next++;
        k = *next++;
        v = *next++;
        if (sd_tape_ref(r->tape, q) || sd_tape_ref(r->tape, k) || sd_tape_ref(r->tape, v)) {
            rc = BT_ENOMEM;
            goto out;
        }
    } else if (keep && qkv) { /* a checkpointed forward: kept for the recomputation */
        if (!(q = sd_tape_alloc(r->keep, B * N * inner)) || !(k = sd_tape_alloc(r->keep, B * Tk * inner)) ||
            !(v = sd_tape_alloc(r->keep, B * Tk * inner))) {
            rc = BT_ENOMEM;
            goto out;
        }
    } else {
        KEEP(q, B * N * inner);
        KEEP(k, B * Tk * inner);
        KEEP(v, B * Tk * inner);
    }
    if (reuse) { /* o and lse were kept */
        o = *next++;
        lse = *next++;
        r->reuse->next = (int)(next - r->reuse->p);
        if (sd_tape_ref(r->tape, o) || sd_tape_ref(r->tape, lse)) {
            rc = BT_ENOMEM;
            goto out;
        }
    } else if (keep) {
        if (!(o = sd_tape_alloc(r->keep, B * N * inner)) || !(lse = sd_tape_alloc(r->keep, B * m->heads * N))) {
            rc = BT_ENOMEM;
            goto out;
        }
    } else {
        KEEP(o, B * N * inner);
        if (r->tape) KEEP(lse, B * m->heads * N);
    }
    if (!(reuse && qkv)) {
        TRY(sd_linear_forward(r, &m->to_q, q, xs, B, N));
        TRY(sd_linear_forward(r, &m->to_k, k, kv, B, Tk));
        TRY(sd_linear_forward(r, &m->to_v, v, kv, B, Tk));
    }
    nn_attn_dims_t d = {.B = B, .Tq = N, .Tk = Tk, .H = m->heads, .D = m->head_dim,
                        .scale = 1.0f / sqrtf((float)m->head_dim), .causal = causal};
    if (!reuse) TRY(nn_attention_forward(r->nn, o, lse, q, k, v, &d));
    TRY(sd_linear_forward(r, &m->to_out, out, o, B, N));
out:
    bt_stack_reset(r->scratch, mk);
    return rc;
}

int sd_attention_backward(sd_run_t *r, const sd_attention_t *m, float *dx, float *dctx, const float *dout,
                          int64_t B, int64_t N, int64_t T, bool causal)
{
    int rc = BT_OK;
    bt_stack_mark_t mk = bt_stack_mark(r->scratch);
    int64_t inner = m->heads * m->head_dim, Tk = m->cross ? T : N;
    float *lse, *o, *v, *k, *q, *ctx = NULL, *x, *dO, *dq, *dk, *dv, *tmp;
    POP(lse);
    POP(o);
    POP(v);
    POP(k);
    POP(q);
    if (m->cross) POP(ctx);
    POP(x);
    ALLOC(dO, B * N * inner);
    ALLOC(dq, B * N * inner);
    ALLOC(dk, B * Tk * inner);
    ALLOC(dv, B * Tk * inner);
    TRY(sd_linear_backward(r, &m->to_out, dO, dout, o, B * N));
    nn_attn_dims_t d = {.B = B, .Tq = N, .Tk = Tk, .H = m->heads, .D = m->head_dim,
                        .scale = 1.0f / sqrtf((float)m->head_dim), .causal = causal};
    TRY(nn_attention_backward(r->nn, dq, dk, dv, dO, q, k, v, o, lse, &d));
    TRY(sd_linear_backward(r, &m->to_q, dx, dq, x, B * N));
    const float *kv = m->cross ? ctx : x;
    float *acc = m->cross ? dctx : dx; /* where the key/value input's gradient goes (+=) */
    tmp = NULL;
    if (acc) ALLOC(tmp, B * Tk * m->kv_dim);
    TRY(sd_linear_backward(r, &m->to_k, tmp, dk, kv, B * Tk));
    if (acc) TRY(nn_axpy(r->nn, acc, tmp, B * Tk * m->kv_dim, 1.0f));
    TRY(sd_linear_backward(r, &m->to_v, tmp, dv, kv, B * Tk));
    if (acc) TRY(nn_axpy(r->nn, acc, tmp, B * Tk * m->kv_dim, 1.0f));
out:
    bt_stack_reset(r->scratch, mk);
    return rc;
}

/* ------------------------------------------------------ transformer blocks */

/* One BasicTransformerBlock on tokens x [B*N, C] -> out. Saved: x, LN1 stats,
 * attn1, x1, LN2 stats, attn2, x2, LN3 stats, GEGLU input. */
static int s_tblock_forward(sd_run_t *r, const sd_tblock_t *b, float *out, const float *x, const float *ctx,
                            int64_t B, int64_t N, int64_t T, const char *name, bool need_out)
{
    int rc = BT_OK;
    bt_stack_mark_t mk = bt_stack_mark(r->scratch);
    int64_t C = b->norm1.C, M = B * N;
    float *xs, *m1 = NULL, *s1 = NULL, *m2 = NULL, *s2 = NULL, *m3 = NULL, *s3 = NULL, *x1, *x2, *p, *h, *a, *g;
    KEEP_COPY(xs, x, M * C);
    if (r->tape) {
        KEEP(m1, M);
        KEEP(s1, M);
    }
    ALLOC(h, M * C);
    ALLOC(a, M * C);
    const int64_t tok[3] = {B, N, C};
    TRY(sd_layer_norm_forward(r, &b->norm1, h, m1, s1, xs, M));
    sd_hook(r, h, 3, tok, "%s.norm1", name);
    TRY(sd_attention_forward(r, &b->attn1, a, h, b->attn1.cross ? ctx : NULL, B, N, T, false));
    sd_hook(r, a, 3, tok, "%s.attn1", name);
    KEEP(x1, M * C);
    TRY(nn_add_forward(r->nn, x1, xs, a, M * C));
    if (r->tape) {
        KEEP(m2, M);
        KEEP(s2, M);
    }
    TRY(sd_layer_norm_forward(r, &b->norm2, h, m2, s2, x1, M));
    TRY(sd_attention_forward(r, &b->attn2, a, h, ctx, B, N, T, false));
    sd_hook(r, a, 3, tok, "%s.attn2", name);
    KEEP(x2, M * C);
    TRY(nn_add_forward(r->nn, x2, x1, a, M * C));
    if (r->tape) {
        KEEP(m3, M);
        KEEP(s3, M);
    }
    TRY(sd_layer_norm_forward(r, &b->norm3, h, m3, s3, x2, M));
    KEEP(p, M * 2 * b->ff.inner);
    TRY(sd_linear_forward(r, &b->ff.proj, p, h, B, N));
    if (!need_out) goto out; /* refilling the tape: the FFN's output is not needed */
    ALLOC(g, M * b->ff.inner);
    TRY(nn_geglu_forward(r->nn, g, p, M, b->ff.inner));
    TRY(sd_linear_forward(r, &b->ff.out, a, g, B, N));
    sd_hook(r, a, 3, tok, "%s.ff", name);
    TRY(nn_add_forward(r->nn, out, x2, a, M * C));
out:
    bt_stack_reset(r->scratch, mk);
    return rc;
}

static int s_tblock_backward(sd_run_t *r, const sd_tblock_t *b, float *dx, float *dctx, const float *dout,
                             int64_t B, int64_t N, int64_t T)
{
    int rc = BT_OK;
    bt_stack_mark_t mk = bt_stack_mark(r->scratch);
    int64_t C = b->norm1.C, M = B * N;
    float *p, *s3, *m3, *x2, *s2, *m2, *x1, *s1, *m1, *xs, *dg, *dp, *dh, *dn, *d2, *d1;
    POP(p);
    POP(s3);
    POP(m3);
    POP(x2);
    ALLOC(dg, M * b->ff.inner);
    ALLOC(dp, M * 2 * b->ff.inner);
    ALLOC(dh, M * C);
    ALLOC(dn, M * C);
    ALLOC(d2, M * C);
    /* x3 = x2 + ff(LN3(x2)); a block that trains recomputes the FFN's inputs (GEGLU, LN3) */
    float *gi = NULL, *hi = NULL;
    if (b->ff.out.dw) {
        ALLOC(gi, M * b->ff.inner);
        TRY(nn_geglu_forward(r->nn, gi, p, M, b->ff.inner));
    }
    TRY(sd_linear_backward(r, &b->ff.out, dg, dout, gi, M));
    TRY(nn_geglu_backward(r->nn, dp, dg, p, M, b->ff.inner));
    if (b->ff.proj.dw) {
        ALLOC(hi, M * C);
        TRY(sd_layer_norm_forward(r, &b->norm3, hi, NULL, NULL, x2, M));
    }
    TRY(sd_linear_backward(r, &b->ff.proj, dh, dp, hi, M));
    TRY(sd_layer_norm_backward(r, &b->norm3, d2, dh, x2, m3, s3, M));
    TRY(nn_axpy(r->nn, d2, dout, M * C, 1.0f));
    /* x2 = x1 + attn2(LN2(x1), ctx) */
    TRY(sd_attention_backward(r, &b->attn2, dn, dctx, d2, B, N, T, false));
    POP(s2);
    POP(m2);
    POP(x1);
    d1 = dh;
    TRY(sd_layer_norm_backward(r, &b->norm2, d1, dn, x1, m2, s2, M));
    TRY(nn_axpy(r->nn, d1, d2, M * C, 1.0f));
    /* x1 = x + attn1(LN1(x)) */
    TRY(sd_attention_backward(r, &b->attn1, dn, b->attn1.cross ? dctx : NULL, d1, B, N, T, false));
    POP(s1);
    POP(m1);
    POP(xs);
    if (dx) {
        TRY(sd_layer_norm_backward(r, &b->norm1, dx, dn, xs, m1, s1, M));
        TRY(nn_axpy(r->nn, dx, d1, M * C, 1.0f));
    } else if (b->norm1.dw) {
        TRY(sd_layer_norm_backward(r, &b->norm1, NULL, dn, xs, m1, s1, M));
    }
out:
    bt_stack_reset(r->scratch, mk);
    return rc;
}

/* Saved: x, GN stats, then each block's. */
int sd_transformer_forward(sd_run_t *r, const sd_transformer_t *m, float *out, const float *x, const float *ctx,
                           int64_t B, int64_t H, int64_t W, int64_t T)
{
    int rc = BT_OK;
    bt_stack_mark_t mk = bt_stack_mark(r->scratch);
    int64_t C = m->channels, HW = H * W, n = B * C * HW;
    float *xs, *mean = NULL, *rstd = NULL, *h, *t0, *t1;
    KEEP_COPY(xs, x, n);
    if (r->tape) {
        KEEP(mean, B * m->norm.groups);
        KEEP(rstd, B * m->norm.groups);
    }
    ALLOC(h, n);
    ALLOC(t0, n);
    ALLOC(t1, n);
    const int64_t nchw[4] = {B, C, H, W}, tok[3] = {B, HW, C};
    TRY(sd_group_norm_forward(r, &m->norm, h, mean, rstd, xs, B, HW, false));
    sd_hook(r, h, 4, nchw, "%s.norm", m->name);
    if (m->linear_proj) { /* tokens first, then Linear */
        TRY(nn_transpose(r->nn, t1, h, B, C, HW));
        TRY(sd_linear_forward(r, &m->proj_in_lin, t0, t1, B, HW));
        sd_hook(r, t0, 3, tok, "%s.proj_in", m->name);
    } else { /* 1x1 conv on NCHW, then tokens */
        TRY(sd_conv_forward(r, &m->proj_in_conv, t1, h, B, H, W));
        sd_hook(r, t1, 4, nchw, "%s.proj_in", m->name);
        TRY(nn_transpose(r->nn, t0, t1, B, C, HW));
    }
    for (int64_t i = 0; i < m->n_blocks; i++) {
        char bname[2 * SD_NAME_MAX];
        snprintf(bname, sizeof bname, "%s.transformer_blocks.%lld", m->name, (long long)i);
        /* a checkpointed transformer's recomputation only refills the tape: its last
         * block's output, proj_out and the residual are not needed */
        bool need_out = !(r->reuse && r->tape && i == m->n_blocks - 1 && !m->proj_out_lin.dw && !m->proj_out_conv.dw);
        TRY(s_tblock_forward(r, &m->blocks[i], t1, t0, ctx, B, HW, T, bname, need_out));
        if (!need_out) goto out;
        sd_hook(r, t1, 3, tok, "%s", bname);
        float *sw = t0;
        t0 = t1;
        t1 = sw;
    }
    if (r->tape && (m->proj_out_lin.dw || m->proj_out_conv.dw)) { /* proj_out's input, for its weight gradient */
        float *keep;
        KEEP_COPY(keep, t0, n);
        (void)keep;
    }
    if (m->linear_proj) {
        TRY(sd_linear_forward(r, &m->proj_out_lin, t1, t0, B, HW));
        sd_hook(r, t1, 3, tok, "%s.proj_out", m->name);
        TRY(nn_transpose(r->nn, h, t1, B, HW, C));
    } else {
        TRY(nn_transpose(r->nn, t1, t0, B, HW, C));
        TRY(sd_conv_forward(r, &m->proj_out_conv, h, t1, B, H, W));
        sd_hook(r, h, 4, nchw, "%s.proj_out", m->name);
    }
    TRY(nn_add_forward(r->nn, out, h, xs, n));
out:
    bt_stack_reset(r->scratch, mk);
    return rc;
}

int sd_transformer_backward(sd_run_t *r, const sd_transformer_t *m, float *dx, float *dctx, const float *dout,
                            int64_t B, int64_t H, int64_t W, int64_t T)
{
    int rc = BT_OK;
    bt_stack_mark_t mk = bt_stack_mark(r->scratch);
    int64_t C = m->channels, HW = H * W, n = B * C * HW;
    float *t0, *t1, *h, *rstd, *mean, *xs, *yo = NULL, *xi = NULL;
    bool trains = m->proj_out_lin.dw || m->proj_out_conv.dw;
    ALLOC(t0, n);
    ALLOC(t1, n);
    ALLOC(h, n);
    if (trains) POP(yo); /* the last block's output, tokens [B, HW, C] */
    if (m->linear_proj) {
        TRY(nn_transpose(r->nn, t1, dout, B, C, HW));
        TRY(sd_linear_backward(r, &m->proj_out_lin, t0, t1, yo, B * HW));
    } else {
        if (trains) {
            ALLOC(xi, n);
            TRY(nn_transpose(r->nn, xi, yo, B, HW, C));
        }
        TRY(sd_conv_backward(r, &m->proj_out_conv, t1, dout, xi, B, H, W));
        TRY(nn_transpose(r->nn, t0, t1, B, C, HW));
    }
    for (int64_t i = m->n_blocks - 1; i >= 0; i--) {
        TRY(s_tblock_backward(r, &m->blocks[i], t1, dctx, t0, B, HW, T));
        float *sw = t0;
        t0 = t1;
        t1 = sw;
    }
    POP(rstd);
    POP(mean);
    POP(xs);
    if (trains) { /* proj_in's input: GN(x), recomputed (as tokens for a Linear) */
        if (!xi) ALLOC(xi, n);
        TRY(sd_group_norm_forward(r, &m->norm, xi, NULL, NULL, xs, B, HW, false));
        if (m->linear_proj) {
            float *tok;
            ALLOC(tok, n);
            TRY(nn_transpose(r->nn, tok, xi, B, C, HW));
            xi = tok;
        }
    }
    if (m->linear_proj) {
        TRY(sd_linear_backward(r, &m->proj_in_lin, t1, t0, xi, B * HW));
        TRY(nn_transpose(r->nn, h, t1, B, HW, C));
    } else {
        TRY(nn_transpose(r->nn, t1, t0, B, HW, C));
        TRY(sd_conv_backward(r, &m->proj_in_conv, h, t1, xi, B, H, W));
    }
    if (dx) {
        TRY(sd_group_norm_backward(r, &m->norm, dx, h, xs, mean, rstd, B, HW, false));
        TRY(nn_axpy(r->nn, dx, dout, n, 1.0f));
    } else if (trains) {
        TRY(sd_group_norm_backward(r, &m->norm, NULL, h, xs, mean, rstd, B, HW, false));
    }
out:
    bt_stack_reset(r->scratch, mk);
    return rc;
}

/* ------------------------------------------------------------------ resnet */

/* Saved: x, GN1 stats, h1 (conv1 output + time bias), GN2 stats. */
int sd_resnet_forward(sd_run_t *r, const sd_resnet_t *m, float *out, const float *x, const float *silu_temb,
                      int64_t B, int64_t H, int64_t W)
{
    int rc = BT_OK;
    bt_stack_mark_t mk = bt_stack_mark(r->scratch);
    int64_t HW = H * W, nin = B * m->in * HW, nout = B * m->out * HW, G = m->norm1.groups;
    float *xs, *m1 = NULL, *s1 = NULL, *m2 = NULL, *s2 = NULL, *a, *h1, *h2, *t, *sc;
    KEEP_COPY(xs, x, nin);
    if (r->tape) {
        KEEP(m1, B * G);
        KEEP(s1, B * G);
    }
    ALLOC(a, nin > nout ? nin : nout);
    TRY(sd_group_norm_forward(r, &m->norm1, a, m1, s1, xs, B, HW, true));
    KEEP(h1, nout);
    TRY(sd_conv_forward(r, &m->conv1, h1, a, B, H, W));
    if (sd_weight_present(&m->time_proj.w) && silu_temb) {
        ALLOC(t, B * m->out);
        TRY(sd_linear_forward(r, &m->time_proj, t, silu_temb, B, 1));
        TRY(nn_add_channel_bias_forward(r->nn, h1, t, B, m->out, HW));
    }
    if (r->tape) {
        KEEP(m2, B * G);
        KEEP(s2, B * G);
    }
    TRY(sd_group_norm_forward(r, &m->norm2, a, m2, s2, h1, B, HW, true));
    ALLOC(h2, nout);
    TRY(sd_conv_forward(r, &m->conv2, h2, a, B, H, W));
    sc = xs;
    if (m->has_shortcut) {
        ALLOC(sc, nout);
        TRY(sd_conv_forward(r, &m->shortcut, sc, xs, B, H, W));
    }
    TRY(nn_add_forward(r->nn, out, sc, h2, nout));
    if (m->output_scale != 1.0f) TRY(nn_scale(r->nn, out, nout, 1.0f / m->output_scale));
out:
    bt_stack_reset(r->scratch, mk);
    return rc;
}

int sd_resnet_backward(sd_run_t *r, const sd_resnet_t *m, float *dx, float *dtemb, const float *dout,
                       const float *silu_temb, int64_t B, int64_t H, int64_t W)
{
    int rc = BT_OK;
    bt_stack_mark_t mk = bt_stack_mark(r->scratch);
    int64_t HW = H * W, nin = B * m->in * HW, nout = B * m->out * HW;
    bool trains = m->conv1.dw != NULL, temb = trains && sd_weight_present(&m->time_proj.w) && silu_temb;
    float *s2, *m2, *h1, *s1, *m1, *xs, *g, *da, *dh1, *dxg, *a = NULL;
    POP(s2);
    POP(m2);
    POP(h1);
    POP(s1);
    POP(m1);
    POP(xs);
    if (!dx && !trains) goto out; /* nothing trainable upstream of this block */
    g = (float *)dout;
    if (m->output_scale != 1.0f) {
        ALLOC(g, nout);
        TRY(nn_copy(r->nn, g, dout, (size_t)nout * sizeof(float)));
        TRY(nn_scale(r->nn, g, nout, 1.0f / m->output_scale));
    }
    if (m->has_shortcut)
        TRY(sd_conv_backward(r, &m->shortcut, dx, g, xs, B, H, W));
    else if (dx)
        TRY(nn_copy(r->nn, dx, g, (size_t)nout * sizeof(float)));
    ALLOC(da, nout > nin ? nout : nin);
    ALLOC(dh1, nout);
    if (trains) { /* conv2's input, silu(GN2(h1)), recomputed */
        ALLOC(a, nout > nin ? nout : nin);
        TRY(sd_group_norm_forward(r, &m->norm2, a, NULL, NULL, h1, B, HW, true));
    }
    TRY(sd_conv_backward(r, &m->conv2, da, g, a, B, H, W));
    TRY(sd_group_norm_backward(r, &m->norm2, dh1, da, h1, m2, s2, B, HW, true));
    if (temb) { /* h1 += time_proj(silu_temb) per channel: its gradient is dh1 summed over the plane */
        float *dt, *ds;
        ALLOC(dt, B * m->out);
        TRY(nn_add_channel_bias_backward(r->nn, dt, dh1, B, m->out, HW));
        ds = NULL;
        if (dtemb) ALLOC(ds, B * m->time_proj.in);
        TRY(sd_linear_backward(r, &m->time_proj, ds, dt, silu_temb, B));
        if (dtemb) TRY(nn_axpy(r->nn, dtemb, ds, B * m->time_proj.in, 1.0f));
    }
    if (trains) /* conv1's input, silu(GN1(x)) */
        TRY(sd_group_norm_forward(r, &m->norm1, a, NULL, NULL, xs, B, HW, true));
    TRY(sd_conv_backward(r, &m->conv1, da, dh1, a, B, H, W));
    dxg = NULL;
    if (dx) ALLOC(dxg, nin);
    TRY(sd_group_norm_backward(r, &m->norm1, dxg, da, xs, m1, s1, B, HW, true));
    if (dx) TRY(nn_axpy(r->nn, dx, dxg, nin, 1.0f));
out:
    bt_stack_reset(r->scratch, mk);
    return rc;
}
