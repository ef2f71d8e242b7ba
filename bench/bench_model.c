/*
 * bench_model.c — model-level timings of booth: UNet forward, VAE decode and one
 * DreamBooth LoRA training step, one JSON line per run.
 *
 *   bench_model --model DIR --task unet_fwd|vae_dec|train [--px N] [--checkpoint]
 *               [--store auto|fp32|fp16|bf16] [--iters N] [--threads T] [--breakdown] [--dump FILE]
 *
 * unet_fwd  UNet forward of a classifier-free-guidance pair (batch 2) with a
 *           context of the tokenizer's length (77 for SD), as one sampling step of
 *           `booth generate` runs it.
 * vae_dec   VAE decode of one latent (batch 1).
 * train     one DreamBooth step with prior preservation: batch = 1 instance + 1
 *           class example, LoRA rank 4 (alpha 4) on to_q/to_k/to_v/to_out.0,
 *           text encoder frozen (run forward every step, as diffusers'
 *           train_dreambooth_lora does), UNet forward + backward, gradient
 *           clipping to norm 1 and AdamW (lr 1e-4, wd 1e-2).
 *
 * --px is the image size (latents are px/8; default: the model's sample_size).
 * --store: how the weight matrices are kept (default auto: as the files hold them,
 * so an fp16 folder stays 16-bit and is widened per use).
 * Each figure is the median of N timed runs after one warm-up run; the process's
 * peak RSS (getrusage) is reported, so run every row in its own process.
 * --breakdown times every nn/ kernel call (by wrapping the context's op table)
 * and adds where the time of the timed runs went, per kind of kernel.
 * --dump writes the result of the last run as raw floats (the UNet output, the
 * image, or the last step's LoRA gradients and the parameters after it) to compare builds
 * and thread counts byte for byte.
 * bench/model.py runs this beside the same work in PyTorch; see docs/BENCHMARKS.md.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "common/rng.h"
#include "diffusion/dreambooth.h"
#include "diffusion/lora.h"
#include "diffusion/pipeline.h"
#include "nn/nn.h"

static double s_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static double s_peak_rss_mib(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0; /* KiB on Linux */
}

static double s_rss_mib(void)
{
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f) return 0;
    if (fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
    fclose(f);
    return (double)resident * (double)sysconf(_SC_PAGESIZE) / (1024.0 * 1024.0);
}

static int s_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* ------------------------------------------------------------ breakdown */

enum {
    K_CONV3_FWD, K_CONV3_BWD, K_CONV3S2_FWD, K_CONV3S2_BWD, K_CONVIO_FWD, K_CONVIO_BWD, K_CONV1_FWD, K_CONV1_BWD,
    K_ATTN_SELF_FWD, K_ATTN_SELF_BWD, K_ATTN_CROSS_FWD, K_ATTN_CROSS_BWD,
    K_LIN_FF_FWD, K_LIN_FF_BWD, K_LIN_FWD, K_LIN_BWD, K_MATMUL,
    K_GEGLU_FWD, K_GEGLU_BWD, K_GN_FWD, K_GN_BWD, K_LN_FWD, K_LN_BWD, K_ACT_FWD, K_ACT_BWD, K_SOFTMAX,
    K_ADD, K_AXPY, K_SCALE_FILL, K_BIAS, K_COPY, K_WIDEN, K_TRANSPOSE, K_CONCAT_SPLIT, K_UPSAMPLE, K_OTHER,
    K_N
};

static const char *const s_kname[K_N] = {
    "conv3x3 forward",
    "conv3x3 input-grad",
    "conv3x3 stride-2 forward",
    "conv3x3 stride-2 input-grad",
    "conv3x3 in/out (<=8 ch) forward",
    "conv3x3 in/out (<=8 ch) input-grad",
    "conv1x1 forward",
    "conv1x1 input-grad",
    "self-attention core forward",
    "self-attention core backward",
    "cross-attention core forward",
    "cross-attention core backward",
    "linear GEGLU/FF forward",
    "linear GEGLU/FF input-grad",
    "linear q/k/v/out/proj forward",
    "linear q/k/v/out/proj input-grad",
    "matmul (LoRA adapters)",
    "GEGLU forward",
    "GEGLU backward",
    "group norm forward",
    "group norm backward",
    "layer norm forward",
    "layer norm backward",
    "activation (SiLU/GELU) forward",
    "activation backward",
    "softmax",
    "add",
    "axpy (gradient accumulate)",
    "scale/fill",
    "channel bias",
    "copy/upload/download",
    "widen 16-bit weights",
    "transpose NCHW<->tokens",
    "concat/split channels",
    "upsample nearest",
    "other (embeddings, loss, optimizer)",
};

static struct {
    double t[K_N], flop[K_N];
    long n[K_N];
    bool on;
} s_bd;

static const nn_ops_t *s_base;
static nn_ops_t s_timed;

#define TIMED(k, flops, call)                                                                                  \
    do {                                                                                                       \
        double t0_ = s_now();                                                                                  \
        int rc_ = (call);                                                                                      \
        if (s_bd.on) {                                                                                         \
            s_bd.t[k] += s_now() - t0_;                                                                        \
            s_bd.flop[k] += (flops);                                                                           \
            s_bd.n[k]++;                                                                                       \
        }                                                                                                      \
        return rc_;                                                                                            \
    } while (0)

static int s_conv_kind(const nn_conv2d_dims_t *d, bool fwd)
{
    if (d->KH == 1) return fwd ? K_CONV1_FWD : K_CONV1_BWD;
    if (d->C <= 8 || d->OC <= 8) return fwd ? K_CONVIO_FWD : K_CONVIO_BWD;
    if (d->stride != 1) return fwd ? K_CONV3S2_FWD : K_CONV3S2_BWD;
    return fwd ? K_CONV3_FWD : K_CONV3_BWD;
}

static double s_conv_flop(const nn_conv2d_dims_t *d)
{
    int64_t oh = (d->H + d->pad_t + d->pad_b - d->KH) / d->stride + 1;
    int64_t ow = (d->W + d->pad_l + d->pad_r - d->KW) / d->stride + 1;
    return 2.0 * (double)(d->B * d->OC * oh * ow) * (double)(d->C * d->KH * d->KW);
}

static int w_conv_f(nn_ctx_t *c, float *o, const float *x, const float *w, const float *b, const nn_conv2d_dims_t *d)
{
    TIMED(s_conv_kind(d, true), s_conv_flop(d), s_base->conv2d_forward(c, o, x, w, b, d));
}
static int w_conv_b(nn_ctx_t *c, float *dx, float *dw, float *db, const float *dy, const float *x, const float *w,
                    const nn_conv2d_dims_t *d)
{
    double f = (dx ? 1 : 0) + (dw ? 1 : 0);
    TIMED(s_conv_kind(d, false), f * s_conv_flop(d), s_base->conv2d_backward(c, dx, dw, db, dy, x, w, d));
}
static double s_attn_flop(const nn_attn_dims_t *d)
{
    return 4.0 * (double)(d->B * d->H) * (double)d->Tq * (double)d->Tk * (double)d->D;
}
static int w_attn_f(nn_ctx_t *c, float *o, float *lse, const float *q, const float *k, const float *v,
                    const nn_attn_dims_t *d)
{
    TIMED(d->Tq == d->Tk ? K_ATTN_SELF_FWD : K_ATTN_CROSS_FWD, s_attn_flop(d),
          s_base->attention_forward(c, o, lse, q, k, v, d));
}
static int w_attn_b(nn_ctx_t *c, float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                    const float *v, const float *out, const float *lse, const nn_attn_dims_t *d)
{
    /* nominal: the 4 products of the backward (S = QK^T is recomputed on top) */
    TIMED(d->Tq == d->Tk ? K_ATTN_SELF_BWD : K_ATTN_CROSS_BWD, 2.0 * s_attn_flop(d),
          s_base->attention_backward(c, dq, dk, dv, dout, q, k, v, out, lse, d));
}
static bool s_is_ff(int64_t K, int64_t N) { return N == 8 * K || K == 4 * N; }
static int w_lin_f(nn_ctx_t *c, float *o, const float *x, const float *w, const float *b, int64_t M, int64_t K,
                   int64_t N)
{
    TIMED(s_is_ff(K, N) ? K_LIN_FF_FWD : K_LIN_FWD, 2.0 * (double)M * (double)K * (double)N,
          s_base->linear_forward(c, o, x, w, b, M, K, N));
}
static int w_lin_b(nn_ctx_t *c, float *dx, float *dw, float *db, const float *dy, const float *x, const float *w,
                   int64_t M, int64_t K, int64_t N)
{
    double f = 2.0 * (double)M * (double)K * (double)N * ((dx ? 1 : 0) + (dw ? 1 : 0));
    TIMED(s_is_ff(K, N) ? K_LIN_FF_BWD : K_LIN_BWD, f, s_base->linear_backward(c, dx, dw, db, dy, x, w, M, K, N));
}
static int w_matmul(nn_ctx_t *c, float *C, const float *a, const float *b, int64_t M, int64_t N, int64_t K, bool ta,
                    bool tb, float alpha, float beta)
{
    TIMED(K_MATMUL, 2.0 * (double)M * (double)N * (double)K, s_base->matmul(c, C, a, b, M, N, K, ta, tb, alpha, beta));
}
static int w_gn_f(nn_ctx_t *c, float *o, float *mean, float *rstd, const float *x, const float *g, const float *b,
                  int64_t B, int64_t C, int64_t HW, int64_t G, float eps)
{
    TIMED(K_GN_FWD, 0, s_base->group_norm_forward(c, o, mean, rstd, x, g, b, B, C, HW, G, eps));
}
static int w_gn_b(nn_ctx_t *c, float *dx, float *dg, float *db, const float *dy, const float *x, const float *mean,
                  const float *rstd, const float *g, int64_t B, int64_t C, int64_t HW, int64_t G)
{
    TIMED(K_GN_BWD, 0, s_base->group_norm_backward(c, dx, dg, db, dy, x, mean, rstd, g, B, C, HW, G));
}
static int w_ln_f(nn_ctx_t *c, float *o, float *mean, float *rstd, const float *x, const float *w, const float *b,
                  int64_t N, int64_t C, float eps)
{
    TIMED(K_LN_FWD, 0, s_base->layer_norm_forward(c, o, mean, rstd, x, w, b, N, C, eps));
}
static int w_ln_b(nn_ctx_t *c, float *dx, float *dw, float *db, const float *dy, const float *x, const float *mean,
                  const float *rstd, const float *w, int64_t N, int64_t C)
{
    TIMED(K_LN_BWD, 0, s_base->layer_norm_backward(c, dx, dw, db, dy, x, mean, rstd, w, N, C));
}
static int w_act_f(nn_ctx_t *c, float *o, const float *x, int64_t n, nn_act_t a)
{
    TIMED(K_ACT_FWD, 0, s_base->act_forward(c, o, x, n, a));
}
static int w_act_b(nn_ctx_t *c, float *dx, const float *dy, const float *x, int64_t n, nn_act_t a)
{
    TIMED(K_ACT_BWD, 0, s_base->act_backward(c, dx, dy, x, n, a));
}
static int w_geglu_f(nn_ctx_t *c, float *o, const float *x, int64_t M, int64_t H)
{
    TIMED(K_GEGLU_FWD, 0, s_base->geglu_forward(c, o, x, M, H));
}
static int w_geglu_b(nn_ctx_t *c, float *dx, const float *dy, const float *x, int64_t M, int64_t H)
{
    TIMED(K_GEGLU_BWD, 0, s_base->geglu_backward(c, dx, dy, x, M, H));
}
static int w_softmax_f(nn_ctx_t *c, float *o, const float *x, int64_t r, int64_t n)
{
    TIMED(K_SOFTMAX, 0, s_base->softmax_forward(c, o, x, r, n));
}
static int w_fill(nn_ctx_t *c, float *x, int64_t n, float v) { TIMED(K_SCALE_FILL, 0, s_base->fill(c, x, n, v)); }
static int w_scale(nn_ctx_t *c, float *x, int64_t n, float a) { TIMED(K_SCALE_FILL, 0, s_base->scale(c, x, n, a)); }
static int w_axpy(nn_ctx_t *c, float *y, const float *x, int64_t n, float a)
{
    TIMED(K_AXPY, 0, s_base->axpy(c, y, x, n, a));
}
static int w_add_f(nn_ctx_t *c, float *o, const float *a, const float *b, int64_t n)
{
    TIMED(K_ADD, 0, s_base->add_forward(c, o, a, b, n));
}
static int w_bias_f(nn_ctx_t *c, float *x, const float *b, int64_t B, int64_t C, int64_t HW)
{
    TIMED(K_BIAS, 0, s_base->add_channel_bias_forward(c, x, b, B, C, HW));
}
static int w_copy(nn_ctx_t *c, void *d, const void *s, size_t n) { TIMED(K_COPY, 0, s_base->copy(c, d, s, n)); }
static int w_widen(nn_ctx_t *c, float *d, const void *s, nn_dtype_t t, int64_t n)
{
    TIMED(K_WIDEN, 0, s_base->widen(c, d, s, t, n));
}
static int w_upload(nn_ctx_t *c, void *d, const void *s, size_t n) { TIMED(K_COPY, 0, s_base->upload(c, d, s, n)); }
static int w_download(nn_ctx_t *c, void *d, const void *s, size_t n)
{
    TIMED(K_COPY, 0, s_base->download(c, d, s, n));
}
static int w_transpose(nn_ctx_t *c, float *o, const float *x, int64_t B, int64_t M, int64_t N)
{
    TIMED(K_TRANSPOSE, 0, s_base->transpose(c, o, x, B, M, N));
}
static int w_concat(nn_ctx_t *c, float *o, const float *a, const float *b, int64_t B, int64_t C1, int64_t C2,
                    int64_t HW)
{
    TIMED(K_CONCAT_SPLIT, 0, s_base->concat_channels(c, o, a, b, B, C1, C2, HW));
}
static int w_split(nn_ctx_t *c, float *a, float *b, const float *x, int64_t B, int64_t C1, int64_t C2, int64_t HW)
{
    TIMED(K_CONCAT_SPLIT, 0, s_base->split_channels(c, a, b, x, B, C1, C2, HW));
}
static int w_up_f(nn_ctx_t *c, float *o, const float *x, int64_t BC, int64_t H, int64_t W, int64_t OH, int64_t OW)
{
    TIMED(K_UPSAMPLE, 0, s_base->upsample_nearest_forward(c, o, x, BC, H, W, OH, OW));
}
static int w_up_b(nn_ctx_t *c, float *dx, const float *dy, int64_t BC, int64_t H, int64_t W, int64_t OH, int64_t OW)
{
    TIMED(K_UPSAMPLE, 0, s_base->upsample_nearest_backward(c, dx, dy, BC, H, W, OH, OW));
}
static int w_clamp(nn_ctx_t *c, float *o, const float *x, int64_t n, float lo, float hi)
{
    TIMED(K_OTHER, 0, s_base->clamp(c, o, x, n, lo, hi));
}
static int w_emb_f(nn_ctx_t *c, float *o, const int32_t *ids, const float *t, int64_t N, int64_t C, int64_t V)
{
    TIMED(K_OTHER, 0, s_base->embedding_forward(c, o, ids, t, N, C, V));
}
static int w_temb_f(nn_ctx_t *c, float *o, const float *t, int64_t B, int64_t C, bool flip, float shift)
{
    TIMED(K_OTHER, 0, s_base->timestep_embedding_forward(c, o, t, B, C, flip, shift));
}
static int w_mse_f(nn_ctx_t *c, float *l, const float *a, const float *b, int64_t n)
{
    TIMED(K_OTHER, 0, s_base->mse_forward(c, l, a, b, n));
}
static int w_mse_b(nn_ctx_t *c, float *da, float dl, const float *a, const float *b, int64_t n)
{
    TIMED(K_OTHER, 0, s_base->mse_backward(c, da, dl, a, b, n));
}
static int w_ssq(nn_ctx_t *c, double *o, const float *x, int64_t n) { TIMED(K_OTHER, 0, s_base->sum_squares(c, o, x, n)); }
static int w_adamw(nn_ctx_t *c, float *p, float *m, float *v, const float *g, int64_t n, float lr, float b1, float b2,
                   float eps, float wd, int64_t step)
{
    TIMED(K_OTHER, 0, s_base->adamw_step(c, p, m, v, g, n, lr, b1, b2, eps, wd, step));
}

static void s_install_timers(nn_ctx_t *ctx)
{
    s_base = ctx->ops;
    s_timed = *s_base;
    s_timed.conv2d_forward = w_conv_f;
    s_timed.conv2d_backward = w_conv_b;
    s_timed.attention_forward = w_attn_f;
    s_timed.attention_backward = w_attn_b;
    s_timed.linear_forward = w_lin_f;
    s_timed.linear_backward = w_lin_b;
    s_timed.matmul = w_matmul;
    s_timed.group_norm_forward = w_gn_f;
    s_timed.group_norm_backward = w_gn_b;
    s_timed.layer_norm_forward = w_ln_f;
    s_timed.layer_norm_backward = w_ln_b;
    s_timed.act_forward = w_act_f;
    s_timed.act_backward = w_act_b;
    s_timed.geglu_forward = w_geglu_f;
    s_timed.geglu_backward = w_geglu_b;
    s_timed.softmax_forward = w_softmax_f;
    s_timed.fill = w_fill;
    s_timed.scale = w_scale;
    s_timed.axpy = w_axpy;
    s_timed.add_forward = w_add_f;
    s_timed.add_channel_bias_forward = w_bias_f;
    s_timed.copy = w_copy;
    s_timed.widen = w_widen;
    s_timed.upload = w_upload;
    s_timed.download = w_download;
    s_timed.transpose = w_transpose;
    s_timed.concat_channels = w_concat;
    s_timed.split_channels = w_split;
    s_timed.upsample_nearest_forward = w_up_f;
    s_timed.upsample_nearest_backward = w_up_b;
    s_timed.clamp = w_clamp;
    s_timed.embedding_forward = w_emb_f;
    s_timed.timestep_embedding_forward = w_temb_f;
    s_timed.mse_forward = w_mse_f;
    s_timed.mse_backward = w_mse_b;
    s_timed.sum_squares = w_ssq;
    s_timed.adamw_step = w_adamw;
    ctx->ops = &s_timed;
}

/* "breakdown": [[kind, seconds per run, calls per run, GFLOP/s or 0], ...], largest first */
static void s_print_breakdown(int iters, double total_per_run)
{
    int idx[K_N];
    for (int i = 0; i < K_N; i++) idx[i] = i;
    for (int i = 0; i < K_N; i++) /* selection sort: K_N is small */
        for (int j = i + 1; j < K_N; j++)
            if (s_bd.t[idx[j]] > s_bd.t[idx[i]]) {
                int t = idx[i];
                idx[i] = idx[j];
                idx[j] = t;
            }
    double sum = 0;
    printf(", \"breakdown\": [");
    bool first = true;
    for (int i = 0; i < K_N; i++) {
        int k = idx[i];
        if (s_bd.n[k] == 0) continue;
        sum += s_bd.t[k];
        printf("%s[\"%s\", %.4f, %ld, %.1f]", first ? "" : ", ", s_kname[k], s_bd.t[k] / iters, s_bd.n[k] / iters,
               s_bd.t[k] > 0 ? s_bd.flop[k] / s_bd.t[k] * 1e-9 : 0.0);
        first = false;
    }
    printf(", [\"outside nn/ kernels\", %.4f, 0, 0]]", total_per_run - sum / iters);
}

/* ----------------------------------------------------------------- tasks */

typedef struct bench {
    nn_ctx_t *ctx;
    sd_model_t *m;
    sd_run_t r;
    int64_t h, w, T;
    /* unet_fwd */
    float *x, *out, *t, *ehs;
    /* vae_dec */
    float *z, *img;
    /* train */
    sd_lora_set_t *lora;
    sd_db_t *db;
    int32_t *ids; /* [2, T]: "a photo of sks dog", "a photo of dog" */
    float *lat, *noise, *m1, *v1;
    int64_t ts[2], nblock, step;
    double loss;
} bench_t;

static float *s_host_normal(int64_t n, uint64_t key)
{
    float *p = malloc((size_t)n * sizeof(float));
    if (p) bt_rng_normal_fill(p, n, key);
    return p;
}

static float *s_dev_normal(nn_ctx_t *ctx, int64_t n, uint64_t key, float scale)
{
    float *h = s_host_normal(n, key), *d = nn_alloc(ctx, (size_t)n * sizeof(float));
    if (!h || !d) {
        free(h);
        return NULL;
    }
    for (int64_t i = 0; i < n; i++) h[i] *= scale;
    if (nn_upload(ctx, d, h, (size_t)n * sizeof(float))) d = NULL;
    free(h);
    return d;
}

static int s_unet_fwd(bench_t *b)
{
    return sd_unet_forward(&b->r, b->m->unet, b->out, b->x, b->t, b->ehs, 2, b->h, b->w, b->T);
}

static int s_vae_dec(bench_t *b) { return sd_vae_decode(&b->r, b->m->vae, b->img, b->z, 1, b->h, b->w); }

/* One optimizer step: zero grads, loss + gradients, clip to norm 1, AdamW. */
static int s_train(bench_t *b)
{
    nn_ctx_t *ctx = b->ctx;
    int64_t per = 4 * b->h * b->w;
    float weights[2] = {1.0f, 1.0f}; /* instance MSE + 1.0 * prior MSE */
    sd_db_batch_t batch = {.n = 2, .T = b->T, .h = b->h, .w = b->w, .ids = b->ids, .latents = b->lat,
                           .noise = b->noise, .timesteps = b->ts, .weights = weights};
    (void)per;
    int rc = sd_lora_zero_grad(b->lora);
    if (!rc) rc = sd_db_step(b->db, &batch, &b->loss, NULL);
    double ss = 0;
    if (!rc) rc = nn_sum_squares(ctx, &ss, b->lora->grad, b->nblock);
    double coef = 1.0 / (sqrt(ss) + 1e-6);
    if (!rc && coef < 1.0) rc = nn_scale(ctx, b->lora->grad, b->nblock, (float)coef);
    if (!rc)
        rc = nn_adamw_step(ctx, b->lora->params.mem, b->m1, b->v1, b->lora->grad, b->nblock, 1e-4f, 0.9f, 0.999f,
                           1e-8f, 1e-2f, ++b->step);
    return rc;
}

static void s_usage(void)
{
    fprintf(stderr, "usage: bench_model --model DIR --task unet_fwd|vae_dec|train [--px N] [--checkpoint]\n"
                    "                   [--store auto|fp32|fp16|bf16] [--iters N] [--threads T] [--breakdown]\n"
                    "                   [--dump FILE]\n");
}

int main(int argc, char **argv)
{
    nn_process_init(argc, argv);
    const char *dir = NULL, *task = NULL, *dump = NULL;
    int iters = 3, threads = 0;
    int64_t px = 0;
    bool checkpoint = false, breakdown = false;
    sd_store_t store = SD_STORE_AUTO;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc)
            dir = argv[++i];
        else if (!strcmp(argv[i], "--task") && i + 1 < argc)
            task = argv[++i];
        else if (!strcmp(argv[i], "--px") && i + 1 < argc)
            px = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--iters") && i + 1 < argc)
            iters = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--dump") && i + 1 < argc)
            dump = argv[++i];
        else if (!strcmp(argv[i], "--store") && i + 1 < argc) {
            if (!sd_store_parse(argv[++i], &store)) {
                s_usage();
                return 2;
            }
        } else if (!strcmp(argv[i], "--checkpoint"))
            checkpoint = true;
        else if (!strcmp(argv[i], "--breakdown"))
            breakdown = true;
        else {
            s_usage();
            return 2;
        }
    }
    int which = !task ? -1 : !strcmp(task, "unet_fwd") ? 0 : !strcmp(task, "vae_dec") ? 1 : !strcmp(task, "train") ? 2 : -1;
    if (!dir || which < 0 || iters < 1 || iters > 100 || px < 0 || px % 8) {
        s_usage();
        return 2;
    }
    bench_t b = {0};
    if (!(b.ctx = nn_ctx_new(NN_BACKEND_CPU, threads))) return 1;
    nn_ctx_t *ctx = b.ctx;
    if (breakdown) s_install_timers(ctx);
    unsigned parts = which == 0   ? SD_PART_TOKENIZER | SD_PART_UNET
                     : which == 1 ? SD_PART_VAE
                                  : SD_PART_TOKENIZER | SD_PART_TEXT | SD_PART_UNET | SD_PART_SCHEDULER;
    double t0 = s_now();
    if (!(b.m = sd_model_load_as(ctx, dir, parts, store))) return 1;
    double load_s = s_now() - t0;
    b.r = (sd_run_t){.nn = ctx, .scratch = &b.m->scratch};
    /* the VAE's spatial factor: 2^(blocks - 1), 8 for SD */
    int64_t f = which == 1 ? (int64_t)1 << (b.m->vae->cfg.n_blocks - 1) : 8;
    int64_t sample = which == 1 ? b.m->vae->cfg.sample_size / f : b.m->unet->cfg.sample_size;
    b.h = b.w = px ? px / f : sample;
    px = b.h * f;
    b.T = sd_prompt_tokens(b.m); /* the tokenizer's length, checked against the text encoder's positions */
    int (*fn)(bench_t *) = NULL;
    if (which == 0) {
        int64_t cd = b.m->unet->cfg.cross_attention_dim[0], n = 2 * 4 * b.h * b.w;
        b.x = s_dev_normal(ctx, n, 1, 1.0f);
        b.out = nn_alloc(ctx, (size_t)n * sizeof(float));
        b.ehs = s_dev_normal(ctx, 2 * b.T * cd, 2, 1.0f);
        b.t = malloc(2 * sizeof(float)); /* host, as sd_unet_forward takes it */
        if (!b.x || !b.out || !b.ehs || !b.t) return 1;
        b.t[0] = b.t[1] = 500.0f;
        fn = s_unet_fwd;
    } else if (which == 1) {
        const sd_vae_config_t *vc = &b.m->vae->cfg;
        b.z = s_dev_normal(ctx, vc->latent_channels * b.h * b.w, 3, 1.0f); /* = latents / scaling_factor, N(0, 1) */
        b.img = nn_alloc(ctx, (size_t)(vc->out_channels * f * f * b.h * b.w) * sizeof(float));
        if (!b.z || !b.img) return 1;
        fn = s_vae_dec;
    } else {
        static const char *prompt[2] = {"a photo of sks dog", "a photo of dog"};
        if (!(b.ids = malloc((size_t)(2 * b.T) * sizeof *b.ids))) return 1;
        for (int e = 0; e < 2; e++)
            if (sd_prompt_ids(b.m, prompt[e], b.ids + e * b.T)) return 1;
        int64_t per = 4 * b.h * b.w;
        b.lat = s_host_normal(2 * per, 4);
        b.noise = s_host_normal(2 * per, 5);
        b.ts[0] = 500;
        b.ts[1] = 700;
        if (!b.lat || !b.noise) return 1;
        if (!(b.lora = sd_lora_attach_unet(b.m->unet, 4, 4.0f, NULL)) || sd_lora_alloc(b.lora, ctx, true) ||
            sd_lora_init(b.lora, 7))
            return 1;
        const sd_param_t *last = &b.lora->params.p[b.lora->params.n - 1];
        int64_t n = 1;
        for (int d = 0; d < last->ndim; d++) n *= last->shape[d];
        b.nblock = (last->data - b.lora->params.mem) + n;
        b.m1 = nn_alloc(ctx, (size_t)b.nblock * sizeof(float));
        b.v1 = nn_alloc(ctx, (size_t)b.nblock * sizeof(float));
        if (!b.m1 || !b.v1 || nn_fill(ctx, b.m1, b.nblock, 0) || nn_fill(ctx, b.v1, b.nblock, 0)) return 1;
        if (!(b.db = sd_db_new(b.m, b.lora, NULL, checkpoint))) return 1;
        fn = s_train;
    }
    double rss_loaded = s_rss_mib(), peak_loaded = s_peak_rss_mib();

    double times[100];
    if (fn(&b)) return 1; /* warm-up: first touch, scratch and tape growth */
    s_bd.on = true;
    for (int i = 0; i < iters; i++) {
        double t1 = s_now();
        if (fn(&b)) return 1;
        times[i] = s_now() - t1;
    }
    s_bd.on = false;
    double sorted[100], total = 0;
    memcpy(sorted, times, sizeof(double) * (size_t)iters);
    qsort(sorted, (size_t)iters, sizeof sorted[0], s_cmp_double);
    for (int i = 0; i < iters; i++) total += times[i];

    printf("{\"side\": \"booth\", \"task\": \"%s\", \"model\": \"%s\", \"px\": %lld, \"checkpoint\": %s, "
           "\"threads\": %d, \"iters\": %d, \"median_s\": %.4f, \"min_s\": %.4f, \"max_s\": %.4f, \"times_s\": [",
           task, dir, (long long)px, checkpoint ? "true" : "false", ctx->threads, iters, sorted[iters / 2], sorted[0],
           sorted[iters - 1]);
    for (int i = 0; i < iters; i++) printf("%s%.4f", i ? ", " : "", times[i]);
    printf("], \"store\": \"%s\", \"params_mib\": %.0f", sd_store_name(store),
           (double)sd_model_param_bytes(b.m) / 1048576.0);
    printf(", \"load_s\": %.2f, \"rss_loaded_mib\": %.0f, \"peak_rss_loaded_mib\": %.0f, \"peak_rss_mib\": %.0f, "
           "\"scratch_peak_mib\": %.0f, \"scratch_reserved_mib\": %.0f",
           load_s, rss_loaded, peak_loaded, s_peak_rss_mib(), (double)b.m->scratch.peak / 1048576.0,
           (double)bt_stack_reserved(&b.m->scratch) / 1048576.0);
    if (b.db)
        printf(", \"tape_peak_mib\": %.0f, \"tape_reserved_mib\": %.0f, \"loss\": %.6f",
               (double)sd_tape_peak(&b.db->tape) / 1048576.0, (double)bt_stack_reserved(&b.db->tape.mem) / 1048576.0,
               b.loss);
    if (breakdown) s_print_breakdown(iters, total / iters);
    printf("}\n");
    fflush(stdout);

    if (dump) {
        /* train: the LoRA gradients of the last step, then the parameters after it */
        const float *res[2] = {which == 0 ? b.out : which == 1 ? b.img : b.lora->grad,
                               which == 2 ? b.lora->params.mem : NULL};
        int64_t n = which == 0 ? 2 * 4 * b.h * b.w : which == 1 ? b.m->vae->cfg.out_channels * px * px : b.nblock;
        float *host = malloc((size_t)n * sizeof(float));
        FILE *fp = fopen(dump, "wb");
        bool ok = host && fp;
        for (int k = 0; ok && k < 2 && res[k]; k++)
            ok = !nn_download(ctx, host, res[k], (size_t)n * sizeof(float)) &&
                 fwrite(host, sizeof(float), (size_t)n, fp) == (size_t)n;
        if (fp && fclose(fp)) ok = false;
        free(host);
        if (!ok) {
            fprintf(stderr, "bench_model: cannot write %s\n", dump);
            return 1;
        }
    }
    sd_db_destroy(&b.db);
    sd_lora_destroy(&b.lora);
    free(b.t);
    free(b.lat);
    free(b.noise);
    free(b.ids);
    nn_ctx_t *c = b.ctx;
    if (b.x) nn_free(c, b.x);
    if (b.out) nn_free(c, b.out);
    if (b.ehs) nn_free(c, b.ehs);
    if (b.z) nn_free(c, b.z);
    if (b.img) nn_free(c, b.img);
    if (b.m1) nn_free(c, b.m1);
    if (b.v1) nn_free(c, b.v1);
    sd_model_destroy(&b.m);
    c->ops = s_base ? s_base : c->ops;
    nn_ctx_destroy(&b.ctx);
    return 0;
}
