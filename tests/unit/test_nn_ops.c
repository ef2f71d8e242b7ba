/*
 * test_nn_ops.c — every nn/ op, forward and backward, three ways:
 *
 *   f64    the float32 kernel against an independent float64 implementation
 *          written here (plain loops, no shared code with nn/cpu);
 *   fd     the float32 backward against central finite differences of that
 *          float64 forward (so the gradient is checked against the math, not
 *          against a second copy of the same derivation);
 *   torch  forward and backward against PyTorch's on the inputs stored in
 *          tests/fixtures/nn_ops.safetensors (scripts/gen_nn_fixtures.py).
 *
 * Backward conventions are checked on the way: activation gradients are
 * pre-filled with NaN (they must be overwritten), parameter gradients with 0.25
 * (they must be accumulated into). Each case also runs with 1 and 3 threads and
 * must give identical bytes.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/half.h"
#include "common/log.h"
#include "common/status.h"
#include "nn/cpu/cpu.h"
#include "nn/nn.h"
#include "testutil.h"

#define MAXIN 4

enum { IN_ACT, IN_PARAM, IN_CONST, IN_IDS };

typedef struct tcase tcase_t;

typedef struct {
    const char *name;
    int64_t numel;
    int kind;
    float lo, hi; /* uniform range; lo == hi: normal with std hi (1 if 0) */
} tin_t;

struct tcase {
    const char *name;
    int (*fwd)(nn_ctx_t *ctx, const tcase_t *c, float *const *in, float *out, float *saved);
    int (*bwd)(nn_ctx_t *ctx, const tcase_t *c, float *const *in, const float *out, const float *saved,
               const float *dout, float *const *din);
    void (*ref)(const tcase_t *c, const double *const *in, double *out);
    int nin;
    tin_t in[MAXIN];
    int64_t out_numel, saved_numel;
    int64_t p[12];
    float f[2];
    double fwd_tol, fd_tol;
};

/* ------------------------------------------------------------------ linear */

static int linear_fwd(nn_ctx_t *ctx, const tcase_t *c, float *const *in, float *out, float *saved)
{
    return nn_linear_forward(ctx, out, in[0], in[1], c->nin > 2 ? in[2] : NULL, c->p[0], c->p[1], c->p[2]);
}
static int linear_bwd(nn_ctx_t *ctx, const tcase_t *c, float *const *in, const float *out, const float *saved,
                      const float *dout, float *const *din)
{
    return nn_linear_backward(ctx, din[0], din[1], c->nin > 2 ? din[2] : NULL, dout, in[0], in[1], c->p[0], c->p[1],
                              c->p[2]);
}
static void linear_ref(const tcase_t *c, const double *const *in, double *out)
{
    int64_t M = c->p[0], K = c->p[1], N = c->p[2];
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double s = c->nin > 2 ? in[2][n] : 0;
            for (int64_t k = 0; k < K; k++) s += in[0][m * K + k] * in[1][n * K + k];
            out[m * N + n] = s;
        }
}

/* ------------------------------------------------------------------ conv2d */

static nn_conv2d_dims_t conv_dims(const tcase_t *c)
{
    const int64_t *p = c->p;
    return (nn_conv2d_dims_t){.B = p[0], .C = p[1], .H = p[2], .W = p[3], .OC = p[4], .KH = p[5], .KW = p[6],
                              .stride = (int)p[7], .pad_t = (int)p[8], .pad_b = (int)p[9], .pad_l = (int)p[10],
                              .pad_r = (int)p[11]};
}
static int conv_fwd(nn_ctx_t *ctx, const tcase_t *c, float *const *in, float *out, float *saved)
{
    nn_conv2d_dims_t d = conv_dims(c);
    return nn_conv2d_forward(ctx, out, in[0], in[1], in[2], &d);
}
static int conv_bwd(nn_ctx_t *ctx, const tcase_t *c, float *const *in, const float *out, const float *saved,
                    const float *dout, float *const *din)
{
    nn_conv2d_dims_t d = conv_dims(c);
    return nn_conv2d_backward(ctx, din[0], din[1], din[2], dout, in[0], in[1], &d);
}
static void conv_ref(const tcase_t *c, const double *const *in, double *out)
{
    nn_conv2d_dims_t d = conv_dims(c);
    int64_t OH = nn_conv2d_out_h(&d), OW = nn_conv2d_out_w(&d);
    for (int64_t b = 0; b < d.B; b++)
        for (int64_t o = 0; o < d.OC; o++)
            for (int64_t y = 0; y < OH; y++)
                for (int64_t x = 0; x < OW; x++) {
                    double s = in[2][o];
                    for (int64_t ci = 0; ci < d.C; ci++)
                        for (int64_t ky = 0; ky < d.KH; ky++)
                            for (int64_t kx = 0; kx < d.KW; kx++) {
                                int64_t iy = y * d.stride - d.pad_t + ky, ix = x * d.stride - d.pad_l + kx;
                                if (iy < 0 || iy >= d.H || ix < 0 || ix >= d.W) continue;
                                s += in[0][((b * d.C + ci) * d.H + iy) * d.W + ix] *
                                     in[1][((o * d.C + ci) * d.KH + ky) * d.KW + kx];
                            }
                    out[((b * d.OC + o) * OH + y) * OW + x] = s;
                }
}

/* -------------------------------------------------------------- group norm */

static int gn_fwd(nn_ctx_t *ctx, const tcase_t *c, float *const *in, float *out, float *saved)
{
    int64_t BG = c->p[0] * c->p[3];
    return nn_group_norm_forward(ctx, out, saved, saved + BG, in[0], in[1], in[2], c->p[0], c->p[1], c->p[2],
                                 c->p[3], c->f[0]);
}
static int gn_bwd(nn_ctx_t *ctx, const tcase_t *c, float *const *in, const float *out, const float *saved,
                  const float *dout, float *const *din)
{
    int64_t BG = c->p[0] * c->p[3];
    return nn_group_norm_backward(ctx, din[0], din[1], din[2], dout, in[0], saved, saved + BG, in[1], c->p[0],
                                  c->p[1], c->p[2], c->p[3]);
}
static void gn_ref(const tcase_t *c, const double *const *in, double *out)
{
    int64_t B = c->p[0], C = c->p[1], HW = c->p[2], G = c->p[3], cpg = C / G;
    for (int64_t b = 0; b < B; b++)
        for (int64_t g = 0; g < G; g++) {
            const double *x = in[0] + (b * C + g * cpg) * HW;
            double m = 0, v = 0;
            for (int64_t i = 0; i < cpg * HW; i++) m += x[i];
            m /= (double)(cpg * HW);
            for (int64_t i = 0; i < cpg * HW; i++) v += (x[i] - m) * (x[i] - m);
            v /= (double)(cpg * HW);
            for (int64_t ch = 0; ch < cpg; ch++)
                for (int64_t j = 0; j < HW; j++) {
                    int64_t cc = g * cpg + ch;
                    out[(b * C + cc) * HW + j] = (x[ch * HW + j] - m) / sqrt(v + c->f[0]) * in[1][cc] + in[2][cc];
                }
        }
}

/* -------------------------------------------------------------- layer norm */

static int ln_fwd(nn_ctx_t *ctx, const tcase_t *c, float *const *in, float *out, float *saved)
{
    return nn_layer_norm_forward(ctx, out, saved, saved + c->p[0], in[0], in[1], in[2], c->p[0], c->p[1], c->f[0]);
}
static int ln_bwd(nn_ctx_t *ctx, const tcase_t *c, float *const *in, const float *out, const float *saved,
                  const float *dout, float *const *din)
{
    return nn_layer_norm_backward(ctx, din[0], din[1], din[2], dout, in[0], saved, saved + c->p[0], in[1], c->p[0],
                                  c->p[1]);
}
static void ln_ref(const tcase_t *c, const double *const *in, double *out)
{
    int64_t N = c->p[0], C = c->p[1];
    for (int64_t r = 0; r < N; r++) {
        const double *x = in[0] + r * C;
        double m = 0, v = 0;
        for (int64_t j = 0; j < C; j++) m += x[j];
        m /= (double)C;
        for (int64_t j = 0; j < C; j++) v += (x[j] - m) * (x[j] - m);
        v /= (double)C;
        for (int64_t j = 0; j < C; j++) out[r * C + j] = (x[j] - m) / sqrt(v + c->f[0]) * in[1][j] + in[2][j];
    }
}

/* ------------------------------------------------------------- activations */

static int act_fwd(nn_ctx_t *ctx, const tcase_t *c, float *const *in, float *out, float *saved)
{
    return nn_act_forward(ctx, out, in[0], c->p[0], (nn_act_t)c->p[1]);
}
static int act_bwd(nn_ctx_t *ctx, const tcase_t *c, float *const *in, const float *out, const float *saved,
                   const float *dout, float *const *din)
{
    return nn_act_backward(ctx, din[0], dout, in[0], c->p[0], (nn_act_t)c->p[1]);
}
static double ref_gelu(double x) { return 0.5 * x * (1 + erf(x / sqrt(2.0))); }
static double ref_act(double x, nn_act_t a)
{
    switch (a) {
    case NN_ACT_SILU: return x / (1 + exp(-x));
    case NN_ACT_GELU: return ref_gelu(x);
    case NN_ACT_GELU_TANH: return 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
    case NN_ACT_QUICK_GELU: return x / (1 + exp(-1.702 * x));
    }
    return NAN;
}
static void act_ref(const tcase_t *c, const double *const *in, double *out)
{
    for (int64_t i = 0; i < c->p[0]; i++) out[i] = ref_act(in[0][i], (nn_act_t)c->p[1]);
}

static int geglu_fwd(nn_ctx_t *ctx, const tcase_t *c, float *const *in, float *out, float *saved)
{
    return nn_geglu_forward(ctx, out, in[0], c->p[0], c->p[1]);
}
static int geglu_bwd(nn_ctx_t *ctx, const tcase_t *c, float *const *in, const float *out, const float *saved,
                     const float *dout, float *const *din)
{
    return nn_geglu_backward(ctx, din[0], dout, in[0], c->p[0], c->p[1]);
}
static void geglu_ref(const tcase_t *c, const double *const *in, double *out)
{
    int64_t M = c->p[0], H = c->p[1];
    for (int64_t r = 0; r < M; r++)
        for (int64_t i = 0; i < H; i++) out[r * H + i] = in[0][r * 2 * H + i] * ref_gelu(in[0][r * 2 * H + H + i]);
}

static int softmax_fwd(nn_ctx_t *ctx, const tcase_t *c, float *const *in, float *out, float *saved)
{
    return nn_softmax_forward(ctx, out, in[0], c->p[0], c->p[1]);
}
static int softmax_bwd(nn_ctx_t *ctx, const tcase_t *c, float *const *in, const float *out, const float *saved,
                       const float *dout, float *const *din)
{
    return nn_softmax_backward(ctx, din[0], dout, out, c->p[0], c->p[1]);
}
static void softmax_ref(const tcase_t *c, const double *const *in, double *out)
{
    int64_t R = c->p[0], C = c->p[1];
    for (int64_t r = 0; r < R; r++) {
        double m = -INFINITY, s = 0;
        for (int64_t j = 0; j < C; j++) m = fmax(m, in[0][r * C + j]);
        for (int64_t j = 0; j < C; j++) s += exp(in[0][r * C + j] - m);
        for (int64_t j = 0; j < C; j++) out[r * C + j] = exp(in[0][r * C + j] - m) / s;
    }
}

/* --------------------------------------------------------------- attention */

static nn_attn_dims_t attn_dims(const tcase_t *c)
{
    return (nn_attn_dims_t){.B = c->p[0], .Tq = c->p[1], .Tk = c->p[2], .H = c->p[3], .D = c->p[4],
                            .scale = 1.0f / sqrtf((float)c->p[4]), .causal = c->p[5] != 0};
}
static int attn_fwd(nn_ctx_t *ctx, const tcase_t *c, float *const *in, float *out, float *saved)
{
    nn_attn_dims_t d = attn_dims(c);
    return nn_attention_forward(ctx, out, saved, in[0], in[1], in[2], &d);
}
static int attn_bwd(nn_ctx_t *ctx, const tcase_t *c, float *const *in, const float *out, const float *saved,
                    const float *dout, float *const *din)
{
    nn_attn_dims_t d = attn_dims(c);
    return nn_attention_backward(ctx, din[0], din[1], din[2], dout, in[0], in[1], in[2], out, saved, &d);
}
static void attn_ref(const tcase_t *c, const double *const *in, double *out)
{
    int64_t B = c->p[0], Tq = c->p[1], Tk = c->p[2], H = c->p[3], D = c->p[4], HD = H * D;
    double *s = malloc((size_t)Tk * sizeof *s);
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t i = 0; i < Tq; i++) {
                double m = -INFINITY, z = 0;
                for (int64_t j = 0; j < Tk; j++) {
                    double dot = 0;
                    for (int64_t e = 0; e < D; e++)
                        dot += in[0][(b * Tq + i) * HD + h * D + e] * in[1][(b * Tk + j) * HD + h * D + e];
                    s[j] = (c->p[5] && j > i) ? -INFINITY : dot / sqrt((double)D);
                    m = fmax(m, s[j]);
                }
                for (int64_t j = 0; j < Tk; j++) z += (s[j] = exp(s[j] - m));
                for (int64_t e = 0; e < D; e++) {
                    double o = 0;
                    for (int64_t j = 0; j < Tk; j++) o += s[j] / z * in[2][(b * Tk + j) * HD + h * D + e];
                    out[(b * Tq + i) * HD + h * D + e] = o;
                }
            }
    free(s);
}

/* ------------------------------------------------------ layout and glue ops */

static int up_fwd(nn_ctx_t *ctx, const tcase_t *c, float *const *in, float *out, float *saved)
{
    return nn_upsample2x_forward(ctx, out, in[0], c->p[0], c->p[1], c->p[2]);
}
static int up_bwd(nn_ctx_t *ctx, const tcase_t *c, float *const *in, const float *out, const float *saved,
                  const float *dout, float *const *din)
{
    return nn_upsample2x_backward(ctx, din[0], dout, c->p[0], c->p[1], c->p[2]);
}
static void up_ref(const tcase_t *c, const double *const *in, double *out)
{
    int64_t BC = c->p[0], H = c->p[1], W = c->p[2];
    for (int64_t i = 0; i < BC; i++)
        for (int64_t y = 0; y < 2 * H; y++)
            for (int64_t x = 0; x < 2 * W; x++) out[(i * 2 * H + y) * 2 * W + x] = in[0][(i * H + y / 2) * W + x / 2];
}

static int concat_fwd(nn_ctx_t *ctx, const tcase_t *c, float *const *in, float *out, float *saved)
{
    return nn_concat_channels(ctx, out, in[0], in[1], c->p[0], c->p[1], c->p[2], c->p[3]);
}
static int concat_bwd(nn_ctx_t *ctx, const tcase_t *c, float *const *in, const float *out, const float *saved,
                      const float *dout, float *const *din)
{
    return nn_split_channels(ctx, din[0], din[1], dout, c->p[0], c->p[1], c->p[2], c->p[3]);
}
static void concat_ref(const tcase_t *c, const double *const *in, double *out)
{
    int64_t B = c->p[0], C1 = c->p[1], C2 = c->p[2], HW = c->p[3];
    for (int64_t b = 0; b < B; b++)
        for (int64_t ch = 0; ch < C1 + C2; ch++)
            for (int64_t j = 0; j < HW; j++)
                out[(b * (C1 + C2) + ch) * HW + j] =
                    ch < C1 ? in[0][(b * C1 + ch) * HW + j] : in[1][(b * C2 + ch - C1) * HW + j];
}

/* split: out = [a | b] flattened */
static int split_fwd(nn_ctx_t *ctx, const tcase_t *c, float *const *in, float *out, float *saved)
{
    return nn_split_channels(ctx, out, out + c->p[0] * c->p[1] * c->p[3], in[0], c->p[0], c->p[1], c->p[2], c->p[3]);
}
static int split_bwd(nn_ctx_t *ctx, const tcase_t *c, float *const *in, const float *out, const float *saved,
                     const float *dout, float *const *din)
{
    return nn_concat_channels(ctx, din[0], dout, dout + c->p[0] * c->p[1] * c->p[3], c->p[0], c->p[1], c->p[2],
                              c->p[3]);
}
static void split_ref(const tcase_t *c, const double *const *in, double *out)
{
    int64_t B = c->p[0], C1 = c->p[1], C2 = c->p[2], HW = c->p[3], o = 0;
    for (int64_t part = 0; part < 2; part++)
        for (int64_t b = 0; b < B; b++)
            for (int64_t ch = part ? C1 : 0; ch < (part ? C1 + C2 : C1); ch++)
                for (int64_t j = 0; j < HW; j++) out[o++] = in[0][(b * (C1 + C2) + ch) * HW + j];
}

static int add_fwd(nn_ctx_t *ctx, const tcase_t *c, float *const *in, float *out, float *saved)
{
    return nn_add_forward(ctx, out, in[0], in[1], c->p[0]);
}
static int add_bwd(nn_ctx_t *ctx, const tcase_t *c, float *const *in, const float *out, const float *saved,
                   const float *dout, float *const *din)
{
    return nn_add_backward(ctx, din[0], din[1], dout, c->p[0]);
}
static void add_ref(const tcase_t *c, const double *const *in, double *out)
{
    for (int64_t i = 0; i < c->p[0]; i++) out[i] = in[0][i] + in[1][i];
}

static int chbias_fwd(nn_ctx_t *ctx, const tcase_t *c, float *const *in, float *out, float *saved)
{
    memcpy(out, in[0], (size_t)(c->p[0] * c->p[1] * c->p[2]) * sizeof(float));
    return nn_add_channel_bias_forward(ctx, out, in[1], c->p[0], c->p[1], c->p[2]);
}
static int chbias_bwd(nn_ctx_t *ctx, const tcase_t *c, float *const *in, const float *out, const float *saved,
                      const float *dout, float *const *din)
{
    memcpy(din[0], dout, (size_t)(c->p[0] * c->p[1] * c->p[2]) * sizeof(float));
    return nn_add_channel_bias_backward(ctx, din[1], dout, c->p[0], c->p[1], c->p[2]);
}
static void chbias_ref(const tcase_t *c, const double *const *in, double *out)
{
    int64_t BC = c->p[0] * c->p[1], HW = c->p[2];
    for (int64_t i = 0; i < BC; i++)
        for (int64_t j = 0; j < HW; j++) out[i * HW + j] = in[0][i * HW + j] + in[1][i];
}

static int tr_fwd(nn_ctx_t *ctx, const tcase_t *c, float *const *in, float *out, float *saved)
{
    return nn_transpose(ctx, out, in[0], c->p[0], c->p[1], c->p[2]);
}
static int tr_bwd(nn_ctx_t *ctx, const tcase_t *c, float *const *in, const float *out, const float *saved,
                  const float *dout, float *const *din)
{
    return nn_transpose(ctx, din[0], dout, c->p[0], c->p[2], c->p[1]);
}
static void tr_ref(const tcase_t *c, const double *const *in, double *out)
{
    int64_t B = c->p[0], M = c->p[1], N = c->p[2];
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) out[(b * N + j) * M + i] = in[0][(b * M + i) * N + j];
}

/* -------------------------------------------------------------- embeddings */

static void ids_to_i32(const float *f, int32_t *ids, int64_t n)
{
    for (int64_t i = 0; i < n; i++) ids[i] = (int32_t)f[i];
}
static int emb_fwd(nn_ctx_t *ctx, const tcase_t *c, float *const *in, float *out, float *saved)
{
    int32_t ids[64];
    ids_to_i32(in[0], ids, c->p[0]);
    return nn_embedding_forward(ctx, out, ids, in[1], c->p[0], c->p[1], c->p[2]);
}
static int emb_bwd(nn_ctx_t *ctx, const tcase_t *c, float *const *in, const float *out, const float *saved,
                   const float *dout, float *const *din)
{
    int32_t ids[64];
    ids_to_i32(in[0], ids, c->p[0]);
    return nn_embedding_backward(ctx, din[1], dout, ids, c->p[0], c->p[1], c->p[2]);
}
static void emb_ref(const tcase_t *c, const double *const *in, double *out)
{
    int64_t N = c->p[0], C = c->p[1];
    for (int64_t i = 0; i < N; i++)
        for (int64_t j = 0; j < C; j++) out[i * C + j] = in[1][(int64_t)in[0][i] * C + j];
}

static int temb_fwd(nn_ctx_t *ctx, const tcase_t *c, float *const *in, float *out, float *saved)
{
    return nn_timestep_embedding_forward(ctx, out, in[0], c->p[0], c->p[1], c->p[2] != 0, c->f[0]);
}
static int temb_bwd(nn_ctx_t *ctx, const tcase_t *c, float *const *in, const float *out, const float *saved,
                    const float *dout, float *const *din)
{
    return nn_timestep_embedding_backward(ctx, din[0], dout, in[0], c->p[0], c->p[1], c->p[2] != 0, c->f[0]);
}
static void temb_ref(const tcase_t *c, const double *const *in, double *out)
{
    int64_t B = c->p[0], C = c->p[1], half = C / 2;
    for (int64_t b = 0; b < B; b++) {
        for (int64_t i = 0; i < half; i++) {
            double a = in[0][b] * exp(-log(10000.0) * (double)i / ((double)half - c->f[0]));
            out[b * C + i] = c->p[2] ? cos(a) : sin(a);
            out[b * C + half + i] = c->p[2] ? sin(a) : cos(a);
        }
        if (C % 2) out[b * C + C - 1] = 0;
    }
}

static int mse_fwd(nn_ctx_t *ctx, const tcase_t *c, float *const *in, float *out, float *saved)
{
    return nn_mse_forward(ctx, out, in[0], in[1], c->p[0]);
}
static int mse_bwd(nn_ctx_t *ctx, const tcase_t *c, float *const *in, const float *out, const float *saved,
                   const float *dout, float *const *din)
{
    return nn_mse_backward(ctx, din[0], dout[0], in[0], in[1], c->p[0]);
}
static void mse_ref(const tcase_t *c, const double *const *in, double *out)
{
    double s = 0;
    for (int64_t i = 0; i < c->p[0]; i++) s += (in[0][i] - in[1][i]) * (in[0][i] - in[1][i]);
    out[0] = s / (double)c->p[0];
}

/* ------------------------------------------------------------------ cases */

#define X(n, k) {#n, k, IN_ACT, 0, 0}
#define W(n, k) {#n, k, IN_PARAM, 0, 0}
#define CONV(nm, B, C, H, Wd, OC, KH, KW, s, pt, pb, pl, pr, OH, OW)                                          \
    {nm, conv_fwd, conv_bwd, conv_ref, 3,                                                                   \
     {X(x, B * C * H * Wd), {"w", OC * C * KH * KW, IN_PARAM, 0, 0.3f}, W(b, OC)},                            \
     B * OC * OH * OW, 0, {B, C, H, Wd, OC, KH, KW, s, pt, pb, pl, pr}, {0}, 1e-5, 1e-4}
#define ACT(nm, a) {nm, act_fwd, act_bwd, act_ref, 1, {{"x", 64, IN_ACT, -6, 6}}, 64, 0, {64, a}, {0}, 2e-6, 1e-4}
#define ATTN(nm, B, Tq, Tk, H, D, causal)                                                                       \
    {nm, attn_fwd, attn_bwd, attn_ref, 3, {X(q, B * Tq * H * D), X(k, B * Tk * H * D), X(v, B * Tk * H * D)},  \
     B * Tq * H * D, B * H * Tq, {B, Tq, Tk, H, D, causal}, {0}, 1e-5, 1e-4}
#define TEMB(nm, C, flip, shift)                                                                                \
    {nm, temb_fwd, temb_bwd, temb_ref, 1, {{"t", 3, IN_ACT, 0, 1000}}, 3 * C, 0, {3, C, flip}, {shift}, 2e-4, 1e-3}

static const tcase_t s_cases[] = {
    {"linear", linear_fwd, linear_bwd, linear_ref, 3, {X(x, 30), W(w, 35), W(b, 7)}, 42, 0, {6, 5, 7}, {0}, 1e-5,
     1e-4},
    {"linear_nobias", linear_fwd, linear_bwd, linear_ref, 2, {X(x, 30), W(w, 35)}, 42, 0, {6, 5, 7}, {0}, 1e-5,
     1e-4},
    CONV("conv3x3_s1", 2, 3, 7, 6, 4, 3, 3, 1, 1, 1, 1, 1, 7, 6),
    CONV("conv3x3_s2", 2, 3, 7, 6, 4, 3, 3, 2, 1, 1, 1, 1, 4, 3),
    CONV("conv1x1", 2, 5, 4, 3, 6, 1, 1, 1, 0, 0, 0, 0, 4, 3),
    CONV("conv3x3_s2_vae", 1, 3, 8, 6, 2, 3, 3, 2, 0, 1, 0, 1, 4, 3),
    CONV("conv5x3_s1", 1, 2, 6, 7, 3, 5, 3, 1, 2, 2, 1, 1, 6, 7),
    CONV("conv3x3_nopad", 2, 2, 5, 5, 3, 3, 3, 1, 0, 0, 0, 0, 3, 3),
    /* the algorithm each of these gets (conv2d.c): forward / input gradient / weight gradient */
    CONV("conv3x3_wino", 1, 16, 16, 15, 9, 3, 3, 1, 1, 1, 1, 1, 16, 15),      /* winograd / im2col conv / winograd */
    CONV("conv3x3_wino_pads", 1, 16, 16, 16, 16, 3, 3, 1, 0, 2, 2, 1, 16, 17), /* winograd throughout, pads 0-2 */
    CONV("conv3x3_c1", 2, 1, 6, 5, 12, 3, 3, 1, 1, 1, 1, 1, 6, 5),           /* im2col / direct / im2col */
    CONV("conv3x3_oc1", 1, 12, 5, 7, 1, 3, 3, 1, 1, 1, 1, 1, 5, 7),          /* direct / im2col conv / direct */
    CONV("conv3x3_col2im", 1, 9, 5, 4, 32, 3, 3, 1, 1, 1, 1, 1, 5, 4),       /* im2col / col2im / im2col */
    {"group_norm", gn_fwd, gn_bwd, gn_ref, 3, {{"x", 240, IN_ACT, 0, 2}, W(w, 6), W(b, 6)}, 240, 12, {2, 6, 20, 3},
     {1e-5f}, 1e-5, 1e-4},
    {"group_norm_eps6", gn_fwd, gn_bwd, gn_ref, 3, {X(x, 288), W(w, 8), W(b, 8)}, 288, 4, {1, 8, 36, 2}, {1e-6f},
     1e-5, 1e-4},
    {"layer_norm", ln_fwd, ln_bwd, ln_ref, 3, {{"x", 40, IN_ACT, 0, 3}, W(w, 8), W(b, 8)}, 40, 10, {5, 8}, {1e-5f},
     1e-5, 1e-4},
    ACT("silu", NN_ACT_SILU),
    ACT("gelu", NN_ACT_GELU),
    ACT("gelu_tanh", NN_ACT_GELU_TANH),
    ACT("quick_gelu", NN_ACT_QUICK_GELU),
    {"geglu", geglu_fwd, geglu_bwd, geglu_ref, 1, {{"x", 48, IN_ACT, 0, 2}}, 24, 0, {4, 6}, {0}, 2e-6, 1e-4},
    {"softmax", softmax_fwd, softmax_bwd, softmax_ref, 1, {{"x", 36, IN_ACT, 0, 3}}, 36, 0, {4, 9}, {0}, 1e-6, 1e-4},
    ATTN("attn_self", 2, 6, 6, 4, 4, 0),
    ATTN("attn_cross", 2, 6, 5, 4, 3, 0),
    ATTN("attn_causal", 2, 6, 6, 4, 2, 1),
    ATTN("attn_self_1head", 1, 7, 7, 1, 5, 0),
    ATTN("attn_cross_2head", 1, 5, 9, 2, 3, 0),
    ATTN("attn_causal_2head", 1, 6, 6, 2, 3, 1),
    /* several blocks per head (64 queries; 128 keys forward, 64 backward), ends not multiples of them */
    ATTN("attn_d40_blocks", 1, 20, 136, 1, 40, 0),
    ATTN("attn_d64_blocks", 1, 66, 20, 1, 64, 0),
    ATTN("attn_causal_blocks", 1, 140, 140, 1, 8, 1),
    ATTN("attn_heads8_blocks", 2, 72, 72, 4, 4, 0), /* B*H = 8: per-head backward */
    ATTN("attn_causal_heads8", 1, 80, 80, 8, 2, 1),
    {"upsample2x", up_fwd, up_bwd, up_ref, 1, {X(x, 72)}, 288, 0, {6, 3, 4}, {0}, 0, 1e-5},
    {"concat", concat_fwd, concat_bwd, concat_ref, 2, {X(a, 30), X(b, 20)}, 50, 0, {2, 3, 2, 5}, {0}, 0, 1e-5},
    {"split", split_fwd, split_bwd, split_ref, 1, {X(x, 50)}, 50, 0, {2, 3, 2, 5}, {0}, 0, 1e-5},
    {"add", add_fwd, add_bwd, add_ref, 2, {X(a, 21), X(b, 21)}, 21, 0, {21}, {0}, 1e-7, 1e-5},
    {"channel_bias", chbias_fwd, chbias_bwd, chbias_ref, 2, {X(x, 24), X(bias, 6)}, 24, 0, {2, 3, 4}, {0}, 1e-7,
     1e-5},
    {"transpose", tr_fwd, tr_bwd, tr_ref, 1, {X(x, 30)}, 30, 0, {2, 5, 3}, {0}, 0, 1e-5},
    {"embedding", emb_fwd, emb_bwd, emb_ref, 2, {{"ids", 6, IN_IDS, 0, 10}, W(table, 40)}, 24, 0, {6, 4, 10}, {0},
     0, 1e-5},
    TEMB("temb_flip", 8, 1, 0.0f),
    TEMB("temb_noflip_shift1", 8, 0, 1.0f),
    TEMB("temb_odd", 9, 1, 0.0f),
    {"mse", mse_fwd, mse_bwd, mse_ref, 2, {X(a, 60), {"b", 60, IN_CONST, 0, 0}}, 1, 0, {60}, {0}, 1e-6, 1e-4},
};
#define NCASES ((int)(sizeof s_cases / sizeof s_cases[0]))

/* ---------------------------------------------------------------- harness */

typedef struct {
    float *in[MAXIN], *din[MAXIN], *out, *saved, *dout;
} bufs_t;

static void bufs_alloc(const tcase_t *c, bufs_t *b)
{
    memset(b, 0, sizeof *b);
    for (int i = 0; i < c->nin; i++) {
        b->in[i] = calloc((size_t)c->in[i].numel, sizeof(float));
        b->din[i] = calloc((size_t)c->in[i].numel, sizeof(float));
    }
    b->out = calloc((size_t)c->out_numel, sizeof(float));
    b->dout = calloc((size_t)c->out_numel, sizeof(float));
    b->saved = calloc((size_t)c->saved_numel + 1, sizeof(float));
}

static void bufs_free(const tcase_t *c, bufs_t *b)
{
    for (int i = 0; i < c->nin; i++) {
        free(b->in[i]);
        free(b->din[i]);
    }
    free(b->out);
    free(b->dout);
    free(b->saved);
}

static void random_inputs(const tcase_t *c, bufs_t *b, uint64_t seed)
{
    tu_rng_t r = tu_rng(seed);
    for (int i = 0; i < c->nin; i++) {
        const tin_t *t = &c->in[i];
        if (t->kind == IN_IDS) {
            for (int64_t j = 0; j < t->numel; j++) b->in[i][j] = (float)(tu_next(&r) % (uint64_t)t->hi);
            b->in[i][0] = b->in[i][t->numel - 1]; /* a repeated id: its gradient rows must add up */
        } else if (t->lo != t->hi) {
            tu_fill_uniform(&r, b->in[i], t->numel, t->lo, t->hi);
        } else {
            tu_fill_normal(&r, b->in[i], t->numel, t->hi != 0 ? t->hi : 1.0f);
        }
    }
    tu_fill_normal(&r, b->dout, c->out_numel, 1.0f);
}

/* Pre-fill gradients to check "=" (activations) and "+=" (parameters). */
static void prefill_grads(const tcase_t *c, bufs_t *b)
{
    for (int i = 0; i < c->nin; i++)
        for (int64_t j = 0; j < c->in[i].numel; j++) b->din[i][j] = c->in[i].kind == IN_PARAM ? 0.25f : NAN;
}

static void unprefill_grads(const tcase_t *c, bufs_t *b)
{
    for (int i = 0; i < c->nin; i++)
        if (c->in[i].kind == IN_PARAM)
            for (int64_t j = 0; j < c->in[i].numel; j++) b->din[i][j] -= 0.25f;
}

static bool has_grad(const tin_t *t) { return t->kind == IN_ACT || t->kind == IN_PARAM; }

static double ref_loss(const tcase_t *c, double **in, const float *dout, double *out)
{
    c->ref(c, (const double *const *)in, out);
    double l = 0;
    for (int64_t i = 0; i < c->out_numel; i++) l += out[i] * dout[i];
    return l;
}

/* float64 forward, and finite-difference gradients */
static void check_f64_and_fd(nn_ctx_t *ctx, const tcase_t *c)
{
    bufs_t b;
    bufs_alloc(c, &b);
    random_inputs(c, &b, 1000 + (uint64_t)(c - s_cases));
    double *in64[MAXIN], *out64 = calloc((size_t)c->out_numel, sizeof(double));
    for (int i = 0; i < c->nin; i++) {
        in64[i] = calloc((size_t)c->in[i].numel, sizeof(double));
        for (int64_t j = 0; j < c->in[i].numel; j++) in64[i][j] = b.in[i][j];
    }

    /* forward against float64 */
    CHECK_INT_EQ(c->fwd(ctx, c, b.in, b.out, b.saved), 0);
    c->ref(c, (const double *const *)in64, out64);
    double scale = 0, err = 0;
    for (int64_t j = 0; j < c->out_numel; j++) {
        scale = fmax(scale, fabs(out64[j]));
        err = fmax(err, fabs(b.out[j] - out64[j]));
        if (isnan(b.out[j])) err = INFINITY;
    }
    double rel = err / fmax(scale, 1e-2);
    CHECKF(rel <= c->fwd_tol, "%s forward vs float64: max err %.3g (scale %.3g) rel %.3g > %.3g", c->name, err, scale,
           rel, c->fwd_tol);

    /* backward against central differences of the float64 forward */
    prefill_grads(c, &b);
    CHECK_INT_EQ(c->bwd(ctx, c, b.in, b.out, b.saved, b.dout, b.din), 0);
    unprefill_grads(c, &b);
    tu_rng_t r = tu_rng(77);
    for (int i = 0; i < c->nin; i++) {
        if (!has_grad(&c->in[i])) continue;
        int64_t n = c->in[i].numel, probes = n <= 32 ? n : 32;
        double gmax = 0, emax = 0;
        int64_t worst = -1;
        double worst_fd = 0;
        for (int64_t pi = 0; pi < probes; pi++) {
            int64_t j = n <= 32 ? pi : (int64_t)(tu_next(&r) % (uint64_t)n);
            double x0 = in64[i][j], h = 1e-6 * fmax(1.0, fabs(x0));
            in64[i][j] = x0 + h;
            double lp = ref_loss(c, in64, b.dout, out64);
            in64[i][j] = x0 - h;
            double lm = ref_loss(c, in64, b.dout, out64);
            in64[i][j] = x0;
            double fd = (lp - lm) / (2 * h);
            gmax = fmax(gmax, fabs(fd));
            double e = fabs(fd - b.din[i][j]);
            if (isnan(b.din[i][j])) e = INFINITY;
            if (e > emax) {
                emax = e;
                worst = j;
                worst_fd = fd;
            }
        }
        double relg = emax / fmax(gmax, 1e-3);
        CHECKF(relg <= c->fd_tol, "%s d/d%s vs finite differences: rel err %.3g > %.3g (element %lld: %.7g vs %.7g)",
               c->name, c->in[i].name, relg, c->fd_tol, (long long)worst, worst >= 0 ? b.din[i][worst] : 0.0,
               worst_fd);
    }
    for (int i = 0; i < c->nin; i++) free(in64[i]);
    free(out64);
    bufs_free(c, &b);
}

/* PyTorch's outputs and gradients on the stored inputs */
static void check_torch(nn_ctx_t *ctx, const tcase_t *c, const st_file_t *fx)
{
    char name[128];
    bufs_t b;
    bufs_alloc(c, &b);
    for (int i = 0; i < c->nin; i++) {
        snprintf(name, sizeof name, "%s.in.%s", c->name, c->in[i].name);
        const st_tensor_t *t = st_find(fx, name);
        REQUIRE(t);
        REQUIRE(st_numel(t) == c->in[i].numel);
        st_read_f32(t, b.in[i]);
    }
    snprintf(name, sizeof name, "%s.dout", c->name);
    const st_tensor_t *td = st_find(fx, name);
    REQUIRE(td && st_numel(td) == c->out_numel);
    st_read_f32(td, b.dout);

    float *want = malloc((size_t)c->out_numel * sizeof(float));
    snprintf(name, sizeof name, "%s.out", c->name);
    const st_tensor_t *to = st_find(fx, name);
    REQUIRE(to && st_numel(to) == c->out_numel);
    st_read_f32(to, want);
    CHECK_INT_EQ(c->fwd(ctx, c, b.in, b.out, b.saved), 0);
    double scale = fmax(tu_max_abs(want, c->out_numel), 1e-2);
    double err = tu_max_abs_diff(b.out, want, c->out_numel) / scale;
    CHECKF(err <= 2e-5 + c->fwd_tol, "%s forward vs torch: rel err %.3g", c->name, err);

    prefill_grads(c, &b);
    CHECK_INT_EQ(c->bwd(ctx, c, b.in, b.out, b.saved, b.dout, b.din), 0);
    unprefill_grads(c, &b);
    for (int i = 0; i < c->nin; i++) {
        if (!has_grad(&c->in[i])) continue;
        snprintf(name, sizeof name, "%s.grad.%s", c->name, c->in[i].name);
        const st_tensor_t *tg = st_find(fx, name);
        REQUIRE(tg && st_numel(tg) == c->in[i].numel);
        float *g = malloc((size_t)c->in[i].numel * sizeof(float));
        st_read_f32(tg, g);
        double gs = fmax(tu_max_abs(g, c->in[i].numel), 1e-2);
        double ge = tu_max_abs_diff(b.din[i], g, c->in[i].numel) / gs;
        CHECKF(ge <= 5e-5 + c->fwd_tol, "%s d/d%s vs torch: rel err %.3g", c->name, c->in[i].name, ge);
        free(g);
    }
    free(want);
    bufs_free(c, &b);
}

/* Same bytes with 1 and 3 threads. */
static void check_threads(const tcase_t *c)
{
    bufs_t b1, b3;
    bufs_alloc(c, &b1);
    bufs_alloc(c, &b3);
    random_inputs(c, &b1, 5);
    random_inputs(c, &b3, 5);
    nn_ctx_t *c1 = nn_ctx_new(NN_BACKEND_CPU, 1), *c3 = nn_ctx_new(NN_BACKEND_CPU, 3);
    REQUIRE(c1 && c3);
    c->fwd(c1, c, b1.in, b1.out, b1.saved);
    c->fwd(c3, c, b3.in, b3.out, b3.saved);
    CHECKF(!memcmp(b1.out, b3.out, (size_t)c->out_numel * sizeof(float)), "%s forward differs with 3 threads",
           c->name);
    prefill_grads(c, &b1);
    prefill_grads(c, &b3);
    c->bwd(c1, c, b1.in, b1.out, b1.saved, b1.dout, b1.din);
    c->bwd(c3, c, b3.in, b3.out, b3.saved, b3.dout, b3.din);
    for (int i = 0; i < c->nin; i++)
        if (has_grad(&c->in[i]))
            CHECKF(!memcmp(b1.din[i], b3.din[i], (size_t)c->in[i].numel * sizeof(float)),
                   "%s d/d%s differs with 3 threads", c->name, c->in[i].name);
    nn_ctx_destroy(&c1);
    nn_ctx_destroy(&c3);
    bufs_free(c, &b1);
    bufs_free(c, &b3);
}

static void run_case(const void *arg)
{
    const tcase_t *c = arg;
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    REQUIRE(ctx);
    check_f64_and_fd(ctx, c);
    st_file_t *fx = tu_fixture("nn_ops.safetensors");
    if (fx) {
        check_torch(ctx, c, fx);
        st_close(&fx);
    }
    check_threads(c);
    nn_ctx_destroy(&ctx);
}

__attribute__((constructor)) static void s_register_cases(void)
{
    static char names[NCASES][64];
    for (int i = 0; i < NCASES; i++) {
        snprintf(names[i], sizeof names[i], "nn_op/%s", s_cases[i].name);
        bt_test_register_arg(names[i], __FILE__, run_case, &s_cases[i], 120);
    }
}

/* Every case of the fixture file has a C case (catches a generator that grew). */
TEST(nn_ops_fixture_covers_cases)
{
    st_file_t *fx = tu_fixture("nn_ops.safetensors");
    REQUIRE(fx);
    for (int i = 0; i < st_count(fx); i++) {
        const char *n = st_at(fx, i)->name;
        const char *dot = strchr(n, '.');
        REQUIRE(dot);
        bool found = false;
        for (int k = 0; k < NCASES && !found; k++)
            found = strlen(s_cases[k].name) == (size_t)(dot - n) && !strncmp(s_cases[k].name, n, (size_t)(dot - n));
        CHECKF(found, "fixture tensor %s has no case in test_nn_ops.c", n);
    }
    st_close(&fx);
}

/* Attention's other kernel sets (generic C, AVX2; the cases above ran the best
 * this CPU has) on every attention case. */
TEST(nn_attn_kernel_sets)
{
    int best = nn_cpu_attention_kernels(0);
    for (int which = 1; which < best; which++) {
        if (nn_cpu_attention_kernels(which) != which) continue; /* this CPU lacks it */
        for (int i = 0; i < NCASES; i++)
            if (s_cases[i].fwd == attn_fwd) run_case(&s_cases[i]);
    }
    nn_cpu_attention_kernels(0);
}

/* Attention on shapes with many blocks per head: the same bytes with 1 and 3
 * threads (with every kernel set this CPU has; heads whole or split into key
 * groups), the output close to float64, and each kernel set's gradients close
 * to the generic C ones. */
static void s_attn_big(int64_t B, int64_t T, int64_t H, int64_t D, bool causal)
{
    nn_attn_dims_t d = {.B = B, .Tq = T, .Tk = T, .H = H, .D = D, .scale = 1.0f / sqrtf((float)D), .causal = causal};
    int64_t n = B * T * H * D, nl = B * H * T;
    enum { Q, K, V, DO, NIN, NSETS = 4 };
    float *in[NIN], *res[NSETS][2][5] = {{{0}}}; /* [kernel set][threads 1, 3][out, lse, dq, dk, dv] */
    tu_rng_t r = tu_rng(31);
    for (int i = 0; i < NIN; i++) {
        in[i] = malloc((size_t)n * sizeof(float));
        tu_fill_normal(&r, in[i], n, 1.0f);
    }
    double *in64[3], *out64 = malloc((size_t)n * sizeof(double));
    for (int i = 0; i < 3; i++) {
        in64[i] = malloc((size_t)n * sizeof(double));
        for (int64_t j = 0; j < n; j++) in64[i][j] = in[i][j];
    }
    tcase_t c = {.p = {B, T, T, H, D, causal}};
    attn_ref(&c, (const double *const *)in64, out64);
    nn_ctx_t *ctx[2] = {nn_ctx_new(NN_BACKEND_CPU, 1), nn_ctx_new(NN_BACKEND_CPU, 3)};
    REQUIRE(ctx[0] && ctx[1]);
    for (int set = 1; set < NSETS; set++) {
        if (nn_cpu_attention_kernels(set) != set) continue;
        for (int t = 0; t < 2; t++) {
            float **o = res[set][t];
            for (int j = 0; j < 5; j++) o[j] = malloc((size_t)(j == 1 ? nl : n) * sizeof(float));
            CHECK_INT_EQ(nn_attention_forward(ctx[t], o[0], o[1], in[Q], in[K], in[V], &d), 0);
            CHECK_INT_EQ(nn_attention_backward(ctx[t], o[2], o[3], o[4], in[DO], in[Q], in[K], in[V], o[0], o[1], &d),
                         0);
        }
        for (int j = 0; j < 5; j++)
            CHECKF(!memcmp(res[set][0][j], res[set][1][j], (size_t)(j == 1 ? nl : n) * sizeof(float)),
                   "attention B%lld T%lld H%lld D%lld causal %d, kernel set %d: tensor %d differs with 3 threads",
                   (long long)B, (long long)T, (long long)H, (long long)D, causal, set, j);
        double scale = 0, err = 0;
        for (int64_t j = 0; j < n; j++) {
            scale = fmax(scale, fabs(out64[j]));
            err = fmax(err, isnan(res[set][0][0][j]) ? INFINITY : fabs(res[set][0][0][j] - out64[j]));
        }
        CHECKF(err / scale <= 1e-5, "attention B%lld T%lld H%lld D%lld, kernel set %d vs float64: rel err %.3g",
               (long long)B, (long long)T, (long long)H, (long long)D, set, err / scale);
        for (int j = 2; j < 5 && set > 1; j++) {
            double gs = fmax(tu_max_abs(res[1][0][j], n), 1e-2);
            double ge = tu_max_abs_diff(res[set][0][j], res[1][0][j], n) / gs;
            CHECKF(ge <= 2e-5, "attention B%lld T%lld H%lld D%lld: gradient %d, kernel sets %d and 1 differ by %.3g",
                   (long long)B, (long long)T, (long long)H, (long long)D, j, set, ge);
        }
    }
    nn_cpu_attention_kernels(0);
    for (int i = 0; i < 3; i++) free(in64[i]);
    free(out64);
    for (int set = 0; set < NSETS; set++)
        for (int t = 0; t < 2; t++)
            for (int j = 0; j < 5; j++) free(res[set][t][j]);
    for (int i = 0; i < NIN; i++) free(in[i]);
    nn_ctx_destroy(&ctx[0]);
    nn_ctx_destroy(&ctx[1]);
}

TEST(nn_attn_threads_big_shapes)
{
    s_attn_big(1, 300, 2, 40, false); /* B*H < 8: key groups, dQ shares added up */
    s_attn_big(2, 256, 8, 40, false); /* one task per head */
    s_attn_big(1, 200, 3, 64, true);
    s_attn_big(1, 77, 12, 64, true); /* CLIP's text encoder */
}

/* Attention's gradients in float64 by the formulas: P, dP = dO V^T, dS = P (dP - rowsum(P dP)),
 * dQ = scale dS K, dK = scale dS^T Q, dV = P^T dO (any of dq/dk/dv may be NULL). */
static void s_attn_ref_bwd(const nn_attn_dims_t *d, const double *q, const double *k, const double *v,
                           const double *dout, double *dq, double *dk, double *dv)
{
    int64_t HD = d->H * d->D, D = d->D;
    double *pr = malloc((size_t)d->Tk * sizeof *pr), *dp = malloc((size_t)d->Tk * sizeof *dp);
    if (dq) memset(dq, 0, (size_t)(d->B * d->Tq * HD) * sizeof *dq);
    if (dk) memset(dk, 0, (size_t)(d->B * d->Tk * HD) * sizeof *dk);
    if (dv) memset(dv, 0, (size_t)(d->B * d->Tk * HD) * sizeof *dv);
    for (int64_t b = 0; b < d->B; b++)
        for (int64_t h = 0; h < d->H; h++)
            for (int64_t i = 0; i < d->Tq; i++) {
                const double *qi = q + (b * d->Tq + i) * HD + h * D, *doi = dout + (b * d->Tq + i) * HD + h * D;
                double m = -INFINITY, z = 0, delta = 0;
                for (int64_t j = 0; j < d->Tk; j++) {
                    const double *kj = k + (b * d->Tk + j) * HD + h * D, *vj = v + (b * d->Tk + j) * HD + h * D;
                    double sdot = 0, pdot = 0;
                    for (int64_t e = 0; e < D; e++) {
                        sdot += qi[e] * kj[e];
                        pdot += doi[e] * vj[e];
                    }
                    pr[j] = d->causal && j > i ? -INFINITY : sdot * d->scale;
                    dp[j] = pdot;
                    m = fmax(m, pr[j]);
                }
                for (int64_t j = 0; j < d->Tk; j++) z += (pr[j] = exp(pr[j] - m));
                for (int64_t j = 0; j < d->Tk; j++) delta += (pr[j] /= z) * dp[j];
                for (int64_t j = 0; j < d->Tk; j++) {
                    double ds = pr[j] * (dp[j] - delta) * d->scale;
                    const double *kj = k + (b * d->Tk + j) * HD + h * D;
                    for (int64_t e = 0; e < D; e++) {
                        if (dq) dq[(b * d->Tq + i) * HD + h * D + e] += ds * kj[e];
                        if (dk) dk[(b * d->Tk + j) * HD + h * D + e] += ds * qi[e];
                        if (dv) dv[(b * d->Tk + j) * HD + h * D + e] += pr[j] * doi[e];
                    }
                }
            }
    free(pr);
    free(dp);
}

/* Attention on odd shapes (one token, one key, D = 1 or 17 or 100, ends of every
 * kind) and with some gradients not wanted, against float64 forward and
 * backward, with every kernel set this CPU has. */
static void s_attn_odd(int64_t B, int64_t Tq, int64_t Tk, int64_t H, int64_t D, bool causal, unsigned want)
{
    nn_attn_dims_t d = {.B = B, .Tq = Tq, .Tk = Tk, .H = H, .D = D, .scale = 1.0f / sqrtf((float)D), .causal = causal};
    int64_t nq = B * Tq * H * D, nk = B * Tk * H * D, n[4] = {nq, nk, nk, nq};
    float *in[4], *out = malloc((size_t)nq * sizeof(float)), *lse = malloc((size_t)(B * H * Tq) * sizeof(float));
    double *in64[4], *g64[3];
    tu_rng_t r = tu_rng(7 + (uint64_t)(Tq * 131 + Tk * 7 + D));
    for (int i = 0; i < 4; i++) {
        in[i] = malloc((size_t)n[i] * sizeof(float));
        in64[i] = malloc((size_t)n[i] * sizeof(double));
        tu_fill_normal(&r, in[i], n[i], i == 0 ? 2.0f : 1.0f);
        for (int64_t j = 0; j < n[i]; j++) in64[i][j] = in[i][j];
    }
    for (int i = 0; i < 3; i++) g64[i] = malloc((size_t)n[i] * sizeof(double));
    double *out64 = malloc((size_t)nq * sizeof(double));
    tcase_t c = {.p = {B, Tq, Tk, H, D, causal}};
    attn_ref(&c, (const double *const *)in64, out64);
    s_attn_ref_bwd(&d, in64[0], in64[1], in64[2], in64[3], g64[0], g64[1], g64[2]);
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 2);
    REQUIRE(ctx);
    for (int set = 1; set < 4; set++) {
        if (nn_cpu_attention_kernels(set) != set) continue;
        float *g[3];
        for (int i = 0; i < 3; i++) {
            g[i] = want >> i & 1 ? malloc((size_t)n[i] * sizeof(float)) : NULL;
            for (int64_t j = 0; g[i] && j < n[i]; j++) g[i][j] = NAN;
        }
        CHECK_INT_EQ(nn_attention_forward(ctx, out, lse, in[0], in[1], in[2], &d), 0);
        CHECK_INT_EQ(nn_attention_backward(ctx, g[0], g[1], g[2], in[3], in[0], in[1], in[2], out, lse, &d), 0);
        double err = tu_max_abs_diff_f64(out, out64, nq), scale = 1e-2;
        for (int64_t j = 0; j < nq; j++) scale = fmax(scale, fabs(out64[j]));
        CHECKF(err / scale <= 1e-5,
               "attention B%lld Tq%lld Tk%lld H%lld D%lld causal %d, kernel set %d: output rel err %.3g", (long long)B,
               (long long)Tq, (long long)Tk, (long long)H, (long long)D, causal, set, err / scale);
        for (int i = 0; i < 3; i++) {
            if (!g[i]) continue;
            /* floor 0.1: with one key, dQ and dK are 0 up to rounding in dS = P (dP - Delta) */
            double gs = 0.1, ge = tu_max_abs_diff_f64(g[i], g64[i], n[i]);
            for (int64_t j = 0; j < n[i]; j++) gs = fmax(gs, fabs(g64[i][j]));
            CHECKF(ge / gs <= 2e-5,
                   "attention B%lld Tq%lld Tk%lld H%lld D%lld causal %d, kernel set %d, grads %u: d%c rel err %.3g",
                   (long long)B, (long long)Tq, (long long)Tk, (long long)H, (long long)D, causal, set, want, "qkv"[i],
                   ge / gs);
            free(g[i]);
        }
    }
    nn_cpu_attention_kernels(0);
    nn_ctx_destroy(&ctx);
    for (int i = 0; i < 4; i++) {
        free(in[i]);
        free(in64[i]);
    }
    for (int i = 0; i < 3; i++) free(g64[i]);
    free(out64);
    free(out);
    free(lse);
}

TEST(nn_attn_odd_shapes)
{
    s_attn_odd(1, 1, 1, 1, 1, false, 7);
    s_attn_odd(1, 1, 1, 1, 3, true, 7);
    s_attn_odd(1, 1, 300, 3, 17, false, 7);
    s_attn_odd(2, 130, 1, 2, 5, false, 7);
    s_attn_odd(1, 65, 65, 1, 33, true, 7);
    s_attn_odd(1, 200, 129, 3, 100, false, 7);
    s_attn_odd(1, 20, 70, 1, 512, false, 7);
    s_attn_odd(3, 70, 90, 3, 24, false, 7); /* B*H = 9: one task per head */
    s_attn_odd(3, 90, 90, 3, 24, true, 7);
    for (unsigned want = 1; want < 7; want++) {
        s_attn_odd(1, 100, 150, 2, 40, false, want); /* key groups */
        s_attn_odd(2, 100, 100, 4, 40, true, want);  /* one task per head */
    }
}

/* matmul, all four transpose combinations with alpha and beta, against float64 */
TEST(nn_matmul_transposes)
{
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    REQUIRE(ctx);
    const int64_t M = 5, N = 7, K = 6;
    tu_rng_t r = tu_rng(9);
    float a[42], bm[42], c0[35], c[35];
    tu_fill_normal(&r, a, 30, 1);
    tu_fill_normal(&r, bm, 42, 1);
    tu_fill_normal(&r, c0, 35, 1);
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            memcpy(c, c0, sizeof c);
            REQUIRE(nn_matmul(ctx, c, a, bm, M, N, K, ta, tb, 0.5f, 2.0f) == 0);
            for (int64_t i = 0; i < M; i++)
                for (int64_t j = 0; j < N; j++) {
                    double s = 0;
                    for (int64_t k = 0; k < K; k++)
                        s += (double)(ta ? a[k * M + i] : a[i * K + k]) * (tb ? bm[j * K + k] : bm[k * N + j]);
                    double want = 0.5 * s + 2.0 * c0[i * N + j];
                    CHECKF(fabs(c[i * N + j] - want) < 1e-5, "matmul ta=%d tb=%d [%lld,%lld]: %g vs %g", ta, tb,
                           (long long)i, (long long)j, c[i * N + j], want);
                }
        }
    nn_ctx_destroy(&ctx);
}

/* nn_cpu_gemm on shapes that cross every block boundary of gemm.c (tasks, 144-row
 * blocks, 12-row groups, 64-column panels, K blocks of up to 384), with leading
 * dimensions wider than the matrices: both kernel sets against float64, the
 * same bytes for 1, 2 and 3 threads and from nn_cpu_gemm1 on one thread, each
 * row the same alone as in the whole product (a sample's result does not depend
 * on the batch size), and a bias (per column for nn_cpu_gemm, per row for
 * nn_cpu_gemm1) the same bytes as C filled with it and beta 1. */
static void s_gemm_case(nn_ctx_t *const ctx[3], bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
                        float beta)
{
    int64_t lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 5, ldc = N + 2;
    size_t na = (size_t)(ta ? K : M) * lda, nb = (size_t)(tb ? N : K) * ldb, nc = (size_t)M * ldc;
    float *a = malloc(na * sizeof *a), *b = malloc(nb * sizeof *b), *c0 = malloc(nc * sizeof *c0);
    float *c[3], *crow = malloc(nc * sizeof *crow), *cb = malloc(nc * sizeof *cb), *cf = malloc(nc * sizeof *cf);
    float *bias_n = malloc((size_t)N * sizeof *bias_n), *bias_m = malloc((size_t)M * sizeof *bias_m);
    tu_rng_t r = tu_rng((uint64_t)(M * 1000003 + N * 1009 + K * 7 + ta * 2 + tb));
    tu_fill_normal(&r, a, (int64_t)na, 1);
    tu_fill_normal(&r, b, (int64_t)nb, 1);
    tu_fill_normal(&r, c0, (int64_t)nc, 1);
    tu_fill_normal(&r, bias_n, N, 1);
    tu_fill_normal(&r, bias_m, M, 1);
    if (beta == 0.0f)
        for (size_t i = 0; i < nc; i++) c0[i] = NAN; /* beta 0: C is not read */
    for (int set = 1; set <= 2; set++) {
        if (nn_cpu_gemm_kernels(set == 1 ? 1 : 0) != set) continue; /* no AVX-512 here */
        for (int t = 0; t < 3; t++) {
            c[t] = malloc(nc * sizeof *c[t]);
            memcpy(c[t], c0, nc * sizeof *c0);
            CHECK_INT_EQ(nn_cpu_gemm(ctx[t], ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, c[t], ldc, NULL), 0);
        }
        double err = 0, scale = 0;
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) {
                double s = 0;
                for (int64_t k = 0; k < K; k++)
                    s += (double)(ta ? a[k * lda + i] : a[i * lda + k]) * (tb ? b[j * ldb + k] : b[k * ldb + j]);
                double want = alpha * s + (beta == 0.0f ? 0.0 : beta * (double)c0[i * ldc + j]);
                err = fmax(err, fabs(c[0][i * ldc + j] - want));
                if (isnan(c[0][i * ldc + j])) err = INFINITY;
                scale = fmax(scale, fabs(want));
            }
        CHECKF(err <= 1e-5 * fmax(scale, 1.0) * sqrt((double)K),
               "gemm set %d ta %d tb %d %lldx%lldx%lld: max err %.3g (scale %.3g)", set, ta, tb, (long long)M,
               (long long)N, (long long)K, err, scale);
        for (int64_t i = 0; i < M; i++) /* padding between rows untouched */
            for (int64_t j = N; j < ldc; j++) CHECK(memcmp(&c[0][i * ldc + j], &c0[i * ldc + j], sizeof(float)) == 0);
        CHECKF(!memcmp(c[0], c[1], nc * sizeof(float)) && !memcmp(c[0], c[2], nc * sizeof(float)),
               "gemm set %d ta %d tb %d %lldx%lldx%lld: bytes differ between 1, 2 and 3 threads", set, ta, tb,
               (long long)M, (long long)N, (long long)K);
        float *pack = nn_cpu_gemm_packs(ctx[2]);
        REQUIRE(pack);
        memcpy(crow, c0, nc * sizeof *c0);
        nn_cpu_gemm1(pack + NN_GEMM_PACK_FLOATS, ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, crow, ldc, NULL);
        if (set == 2) /* OpenBLAS's bytes depend on the blocks it is given */
            CHECKF(!memcmp(c[0], crow, nc * sizeof(float)), "gemm1 ta %d tb %d %lldx%lldx%lld: not gemm's bytes", ta,
                   tb, (long long)M, (long long)N, (long long)K);
        /* biases: per column (gemm), per row (gemm1) */
        memcpy(cb, c0, nc * sizeof *c0);
        memcpy(cf, c0, nc * sizeof *c0);
        for (int64_t i = 0; i < M; i++) memcpy(cf + i * ldc, bias_n, (size_t)N * sizeof(float));
        CHECK_INT_EQ(nn_cpu_gemm(ctx[1], ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, cb, ldc, bias_n), 0);
        CHECK_INT_EQ(nn_cpu_gemm(ctx[1], ta, tb, M, N, K, alpha, a, lda, b, ldb, 1.0f, cf, ldc, NULL), 0);
        CHECKF(!memcmp(cb, cf, nc * sizeof(float)), "gemm set %d ta %d tb %d %lldx%lldx%lld: column bias", set, ta,
               tb, (long long)M, (long long)N, (long long)K);
        memcpy(cb, c0, nc * sizeof *c0);
        memcpy(cf, c0, nc * sizeof *c0);
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) cf[i * ldc + j] = bias_m[i];
        nn_cpu_gemm1(pack, ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, cb, ldc, bias_m);
        nn_cpu_gemm1(pack, ta, tb, M, N, K, alpha, a, lda, b, ldb, 1.0f, cf, ldc, NULL);
        CHECKF(!memcmp(cb, cf, nc * sizeof(float)), "gemm1 set %d ta %d tb %d %lldx%lldx%lld: row bias", set, ta, tb,
               (long long)M, (long long)N, (long long)K);
        if (set == 2) { /* rows 0..4 and 17 one at a time */
            memcpy(crow, c0, nc * sizeof *c0);
            for (int64_t i = 0; i < M && i < 18; i = i < 4 ? i + 1 : i < 17 ? 17 : 18)
                CHECK_INT_EQ(nn_cpu_gemm(ctx[1], ta, tb, 1, N, K, alpha, ta ? a + i : a + i * lda, lda, b, ldb, beta,
                                         crow + i * ldc, ldc, NULL),
                             0);
            for (int64_t i = 0; i < M && i < 18; i = i < 4 ? i + 1 : i < 17 ? 17 : 18)
                CHECKF(!memcmp(crow + i * ldc, c[0] + i * ldc, (size_t)N * sizeof(float)),
                       "gemm ta %d tb %d %lldx%lldx%lld: row %lld alone differs from the batch", ta, tb, (long long)M,
                       (long long)N, (long long)K, (long long)i);
        }
        for (int t = 0; t < 3; t++) free(c[t]);
    }
    nn_cpu_gemm_kernels(0);
    free(a);
    free(b);
    free(c0);
    free(crow);
    free(cb);
    free(cf);
    free(bias_n);
    free(bias_m);
}

TEST(nn_gemm_blocks)
{
    nn_ctx_t *ctx[3] = {nn_ctx_new(NN_BACKEND_CPU, 1), nn_ctx_new(NN_BACKEND_CPU, 2), nn_ctx_new(NN_BACKEND_CPU, 3)};
    REQUIRE(ctx[0] && ctx[1] && ctx[2]);
    static const int64_t shapes[][3] = {
        {1, 1, 1},     {7, 5, 3},    {13, 17, 1},  {25, 63, 20},  {150, 65, 385}, {290, 129, 100},
        {31, 300, 77}, {600, 20, 9}, {12, 48, 800}, {145, 4, 320}, {18, 320, 4},
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++)
                s_gemm_case(ctx, ta, tb, shapes[i][0], shapes[i][1], shapes[i][2], i % 3 ? 1.0f : 0.5f,
                            i % 2 ? 0.0f : i % 4 ? 1.0f : -0.75f);
    for (int t = 0; t < 3; t++) nn_ctx_destroy(&ctx[t]);
}

/* Out-of-vocabulary ids and impossible dimensions are errors, not crashes. */
TEST(nn_bad_arguments)
{
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    REQUIRE(ctx);
    float table[8] = {0}, out[8];
    int32_t ids[2] = {1, 4};
    CHECK(nn_embedding_forward(ctx, out, ids, table, 2, 2, 4) != 0);
    CHECK(strstr(bt_log_last_error(), "outside the vocabulary") != NULL);
    nn_conv2d_dims_t d = {.B = 1, .C = 1, .H = 2, .W = 2, .OC = 1, .KH = 3, .KW = 3, .stride = 1};
    CHECK(nn_conv2d_forward(ctx, out, table, table, NULL, &d) != 0);
    nn_attn_dims_t ad = {.B = 1, .Tq = 3, .Tk = 4, .H = 1, .D = 2, .scale = 1, .causal = true};
    CHECK(nn_attention_forward(ctx, out, NULL, table, table, table, &ad) != 0);
    CHECK(nn_group_norm_forward(ctx, out, NULL, NULL, table, NULL, NULL, 1, 6, 1, 4, 1e-5f) != 0);
    nn_ctx_destroy(&ctx);
}

/* ------------------------------------------------- conv2d: every algorithm */

/* Every conv case again with each algorithm forced wherever it applies, and with
 * bands of one row, so that the small shapes above reach every code path and
 * cross band boundaries: against float64, finite differences and 1 vs 3 threads;
 * with booth's matrix kernel and with OpenBLAS's (CPUs without AVX-512), whose
 * bytes may depend on a product's shape, so paths that regroup products must
 * not run on it. */
TEST(nn_conv2d_every_algorithm)
{
    static const struct {
        nn_conv_alg_t alg;
        bool tiny;
    } modes[] = {{NN_CONV_AUTO, true},      {NN_CONV_IM2COL, false},  {NN_CONV_IM2COL, true},
                 {NN_CONV_COL2IM, false},   {NN_CONV_COL2IM, true},   {NN_CONV_WINOGRAD, false},
                 {NN_CONV_WINOGRAD, true}};
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    REQUIRE(ctx);
    for (int set = 0; set < 2; set++) {
        int in_use = nn_cpu_gemm_kernels(set);
        for (size_t m = 0; m < sizeof modes / sizeof modes[0]; m++) {
            nn_cpu_conv2d_test_force(modes[m].alg, modes[m].tiny);
            for (int i = 0; i < NCASES; i++) {
                if (s_cases[i].fwd != conv_fwd) continue;
                int before = bt_test_failures();
                check_f64_and_fd(ctx, &s_cases[i]);
                check_threads(&s_cases[i]);
                CHECKF(bt_test_failures() == before,
                       "(the failures above: algorithm %d, one-row bands %d, matrix kernels %d)", (int)modes[m].alg,
                       (int)modes[m].tiny, in_use);
            }
        }
    }
    nn_cpu_gemm_kernels(0);
    nn_cpu_conv2d_test_force(NN_CONV_AUTO, false);
    nn_ctx_destroy(&ctx);
}

/* A 3x3 convolution's random operands: x [B,C,H,W], w [OC,C,3,3], b [OC], dy
 * [B,OC,OH,OW] (freed by s_conv_operands_free); the sizes in *nx, *nw, *ny. */
typedef struct {
    float *x, *w, *b, *dy;
    size_t nx, nw, ny;
} s_conv_operands_t;

static bool s_conv_operands(tu_rng_t *r, const nn_conv2d_dims_t *d, s_conv_operands_t *o)
{
    o->nx = (size_t)(d->B * d->C * d->H * d->W);
    o->nw = (size_t)(d->OC * d->C * d->KH * d->KW);
    o->ny = (size_t)(d->B * d->OC * nn_conv2d_out_h(d) * nn_conv2d_out_w(d));
    o->x = malloc(o->nx * sizeof(float));
    o->w = malloc(o->nw * sizeof(float));
    o->b = malloc((size_t)d->OC * sizeof(float));
    o->dy = malloc(o->ny * sizeof(float));
    if (!o->x || !o->w || !o->b || !o->dy) return false;
    tu_fill_normal(r, o->x, (int64_t)o->nx, 1.0f);
    tu_fill_normal(r, o->w, (int64_t)o->nw, 0.2f);
    tu_fill_normal(r, o->b, d->OC, 1.0f);
    tu_fill_normal(r, o->dy, (int64_t)o->ny, 1.0f);
    return true;
}

static void s_conv_operands_free(s_conv_operands_t *o)
{
    free(o->x);
    free(o->w);
    free(o->b);
    free(o->dy);
}

/* Winograd's hand-vectorised transforms (AVX-512 CPUs) against the portable
 * loops: the same additions in the same order, so the same bytes, on shapes that
 * reach their masked edges (widths not a multiple of 16 tiles, odd sizes, a
 * plane narrower than a vector, every pad, bottom/right-only padding) and their
 * band boundaries (one-row bands). Where AVX-512 is absent both runs take the
 * portable path and the test still checks that they agree. */
TEST(nn_winograd_transforms_match_portable)
{
    static const nn_conv2d_dims_t shapes[] = {
        {.B = 2, .C = 3, .H = 7, .W = 37, .OC = 5, .KH = 3, .KW = 3, .stride = 1, 1, 1, 1, 1},
        {.B = 1, .C = 17, .H = 33, .W = 16, .OC = 9, .KH = 3, .KW = 3, .stride = 1, 0, 0, 0, 0},
        {.B = 1, .C = 4, .H = 5, .W = 3, .OC = 6, .KH = 3, .KW = 3, .stride = 1, 2, 2, 2, 2},
        {.B = 2, .C = 24, .H = 20, .W = 70, .OC = 40, .KH = 3, .KW = 3, .stride = 1, 1, 1, 1, 1},
        {.B = 1, .C = 8, .H = 12, .W = 65, .OC = 8, .KH = 3, .KW = 3, .stride = 1, 0, 1, 0, 1},
        {.B = 1, .C = 2, .H = 1, .W = 1, .OC = 3, .KH = 3, .KW = 3, .stride = 1, 1, 1, 1, 1},
    };
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 2);
    REQUIRE(ctx);
    tu_rng_t r = tu_rng(77);
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        const nn_conv2d_dims_t *d = &shapes[i];
        s_conv_operands_t o;
        REQUIRE(s_conv_operands(&r, d, &o));
        size_t nx = o.nx, nw = o.nw, ny = o.ny;
        const float *x = o.x, *w = o.w, *b = o.b, *dy = o.dy;
        float *res[2][3];
        for (int tiny = 0; tiny < 2; tiny++) {
            nn_cpu_conv2d_test_force(NN_CONV_WINOGRAD, tiny);
            for (int port = 0; port < 2; port++) {
                nn_cpu_winograd_test_portable(port);
                res[port][0] = malloc(ny * sizeof(float));
                res[port][1] = malloc(nx * sizeof(float));
                res[port][2] = calloc(nw, sizeof(float));
                REQUIRE(res[port][0] && res[port][1] && res[port][2]);
                CHECK_INT_EQ(nn_conv2d_forward(ctx, res[port][0], x, w, b, d), 0);
                CHECK_INT_EQ(nn_conv2d_backward(ctx, res[port][1], res[port][2], NULL, dy, x, w, d), 0);
            }
            static const char *const what[3] = {"forward", "input gradient", "weight gradient"};
            size_t n[3] = {ny, nx, nw};
            for (int k = 0; k < 3; k++) {
                CHECKF(!memcmp(res[0][k], res[1][k], n[k] * sizeof(float)),
                       "shape %zu (one-row bands %d): the %s differs from the portable transforms'", i, tiny, what[k]);
                free(res[0][k]);
                free(res[1][k]);
            }
        }
        s_conv_operands_free(&o);
    }
    nn_cpu_winograd_test_portable(false);
    nn_cpu_conv2d_test_force(NN_CONV_AUTO, false);
    nn_ctx_destroy(&ctx);
}

/* Small images (the UNet's 8x8 and 4x4 levels) go through one product for the
 * whole batch, forward and input gradient: the same bytes as image by image and
 * as each image alone. Shapes: input gradient by col2im (OC >= 32) and by the
 * rotated-kernel convolution (OC < 32), stride 2, a 1x5 image. */
TEST(nn_conv2d_small_images_batched)
{
    static const nn_conv2d_dims_t shapes[] = {
        {.B = 3, .C = 20, .H = 8, .W = 8, .OC = 40, .KH = 3, .KW = 3, .stride = 1, 1, 1, 1, 1},
        {.B = 3, .C = 24, .H = 4, .W = 4, .OC = 16, .KH = 3, .KW = 3, .stride = 1, 1, 1, 1, 1},
        {.B = 2, .C = 12, .H = 9, .W = 7, .OC = 36, .KH = 3, .KW = 3, .stride = 2, 1, 1, 1, 1},
        {.B = 4, .C = 8, .H = 1, .W = 5, .OC = 33, .KH = 3, .KW = 3, .stride = 1, 1, 1, 1, 1},
    };
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 2);
    REQUIRE(ctx);
    tu_rng_t r = tu_rng(91);
    /* with OpenBLAS's kernels (whose bytes may depend on a product's shape) images stay apart */
    for (size_t i = 0; i < 2 * sizeof shapes / sizeof shapes[0]; i++) {
        nn_cpu_gemm_kernels(i % 2);
        nn_conv2d_dims_t d = shapes[i / 2], one = d;
        one.B = 1;
        s_conv_operands_t o;
        REQUIRE(s_conv_operands(&r, &d, &o));
        size_t nx = o.nx, ny = o.ny, ix = nx / (size_t)d.B, iy = ny / (size_t)d.B;
        const float *x = o.x, *w = o.w, *b = o.b, *dy = o.dy;
        float *y[3], *dx[3];
        for (int k = 0; k < 3; k++) {
            y[k] = malloc(ny * sizeof(float));
            dx[k] = malloc(nx * sizeof(float));
            REQUIRE(y[k] && dx[k]);
        }
        /* 0: batched; 1: image by image; 2: each image alone */
        for (int k = 0; k < 2; k++) {
            nn_cpu_conv2d_test_unbatched(k == 1);
            CHECK_INT_EQ(nn_conv2d_forward(ctx, y[k], x, w, b, &d), 0);
            CHECK_INT_EQ(nn_conv2d_backward(ctx, dx[k], NULL, NULL, dy, x, w, &d), 0);
        }
        nn_cpu_conv2d_test_unbatched(false);
        for (int64_t n = 0; n < d.B; n++) {
            CHECK_INT_EQ(nn_conv2d_forward(ctx, y[2] + n * iy, x + n * ix, w, b, &one), 0);
            CHECK_INT_EQ(nn_conv2d_backward(ctx, dx[2] + n * ix, NULL, NULL, dy + n * iy, x + n * ix, w, &one), 0);
        }
        for (int k = 1; k < 3; k++) {
            const char *how = k == 1 ? "image by image" : "each image alone";
            CHECKF(!memcmp(y[0], y[k], ny * sizeof(float)), "shape %zu (kernels %zu): the batched forward differs from %s",
                   i / 2, i % 2, how);
            CHECKF(!memcmp(dx[0], dx[k], nx * sizeof(float)),
                   "shape %zu (kernels %zu): the batched input gradient differs from %s", i / 2, i % 2, how);
        }
        for (int k = 0; k < 3; k++) {
            free(y[k]);
            free(dx[k]);
        }
        s_conv_operands_free(&o);
    }
    nn_cpu_gemm_kernels(0);
    nn_ctx_destroy(&ctx);
}

/* float64 forward and all three gradients of sum(out * dout), by the definition */
static void s_conv_ref_all(const nn_conv2d_dims_t *d, const float *x, const float *w, const float *b,
                           const float *dout, double *out, double *dx, double *dw, double *db)
{
    int64_t OH = nn_conv2d_out_h(d), OW = nn_conv2d_out_w(d);
    memset(dx, 0, (size_t)(d->B * d->C * d->H * d->W) * sizeof *dx);
    memset(dw, 0, (size_t)(d->OC * d->C * d->KH * d->KW) * sizeof *dw);
    memset(db, 0, (size_t)d->OC * sizeof *db);
    for (int64_t n = 0; n < d->B; n++)
        for (int64_t o = 0; o < d->OC; o++)
            for (int64_t y = 0; y < OH; y++)
                for (int64_t xo = 0; xo < OW; xo++) {
                    int64_t yi = ((n * d->OC + o) * OH + y) * OW + xo;
                    double s = b[o], g = dout[yi];
                    for (int64_t c = 0; c < d->C; c++)
                        for (int64_t ky = 0; ky < d->KH; ky++)
                            for (int64_t kx = 0; kx < d->KW; kx++) {
                                int64_t iy = y * d->stride - d->pad_t + ky, ix = xo * d->stride - d->pad_l + kx;
                                if (iy < 0 || iy >= d->H || ix < 0 || ix >= d->W) continue;
                                int64_t xi = ((n * d->C + c) * d->H + iy) * d->W + ix;
                                int64_t wi = ((o * d->C + c) * d->KH + ky) * d->KW + kx;
                                s += (double)x[xi] * w[wi];
                                dx[xi] += g * w[wi];
                                dw[wi] += g * x[xi];
                            }
                    out[yi] = s;
                    db[o] += g;
                }
}

static double s_rel_err(const float *a, const double *want, int64_t n)
{
    double scale = 1e-2, err = 0;
    for (int64_t i = 0; i < n; i++) {
        scale = fmax(scale, fabs(want[i]));
        err = fmax(err, isnan(a[i]) ? INFINITY : fabs(a[i] - want[i]));
    }
    return err / scale;
}

/* Shapes big enough for several bands (Winograd, im2col) or row tasks (direct)
 * in their natural algorithm: the same bytes with 1, 2, 3 and 4 threads, and
 * close to float64. */
static void s_conv_big(const nn_conv2d_dims_t *d)
{
    int64_t OH = nn_conv2d_out_h(d), OW = nn_conv2d_out_w(d);
    int64_t nx = d->B * d->C * d->H * d->W, nw = d->OC * d->C * d->KH * d->KW, ny = d->B * d->OC * OH * OW;
    int64_t n[4] = {ny, nx, nw, d->OC};
    float *x = malloc((size_t)nx * sizeof(float)), *w = malloc((size_t)nw * sizeof(float));
    float *b = malloc((size_t)d->OC * sizeof(float)), *dout = malloc((size_t)ny * sizeof(float));
    tu_rng_t r = tu_rng(17);
    tu_fill_normal(&r, x, nx, 1.0f);
    tu_fill_normal(&r, w, nw, 1.0f / sqrtf((float)(d->C * d->KH * d->KW)));
    tu_fill_normal(&r, b, d->OC, 1.0f);
    tu_fill_normal(&r, dout, ny, 1.0f);
    double *ref[4];
    for (int k = 0; k < 4; k++) ref[k] = malloc((size_t)n[k] * sizeof(double));
    s_conv_ref_all(d, x, w, b, dout, ref[0], ref[1], ref[2], ref[3]);
    float *res[4][4]; /* [threads - 1][out, dx, dw, db] */
    for (int t = 0; t < 4; t++) {
        nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, t + 1);
        REQUIRE(ctx);
        for (int k = 0; k < 4; k++) res[t][k] = calloc((size_t)n[k], sizeof(float));
        CHECK_INT_EQ(nn_conv2d_forward(ctx, res[t][0], x, w, b, d), 0);
        CHECK_INT_EQ(nn_conv2d_backward(ctx, res[t][1], res[t][2], res[t][3], dout, x, w, d), 0);
        nn_ctx_destroy(&ctx);
    }
    static const char *const what[4] = {"forward", "d/dx", "d/dw", "d/db"};
    for (int k = 0; k < 4; k++) {
        double e = s_rel_err(res[0][k], ref[k], n[k]);
        CHECKF(e <= 1e-5, "conv B%lld C%lld %lldx%lld OC%lld stride %d: %s vs float64: rel err %.3g", (long long)d->B,
               (long long)d->C, (long long)d->H, (long long)d->W, (long long)d->OC, d->stride, what[k], e);
        for (int t = 1; t < 4; t++)
            CHECKF(!memcmp(res[0][k], res[t][k], (size_t)n[k] * sizeof(float)),
                   "conv B%lld C%lld %lldx%lld OC%lld stride %d: %s differs with %d threads", (long long)d->B,
                   (long long)d->C, (long long)d->H, (long long)d->W, (long long)d->OC, d->stride, what[k], t + 1);
    }
    for (int k = 0; k < 4; k++) {
        free(ref[k]);
        for (int t = 0; t < 4; t++) free(res[t][k]);
    }
    free(x);
    free(w);
    free(b);
    free(dout);
}

TEST(nn_conv2d_threads_big_shapes)
{
    /* Winograd: 960 tiles, two bands; input gradient and weight gradient too */
    s_conv_big(&(nn_conv2d_dims_t){.B = 2, .C = 32, .H = 48, .W = 40, .OC = 40, .KH = 3, .KW = 3, .stride = 1,
                                   .pad_t = 1, .pad_b = 1, .pad_l = 1, .pad_r = 1});
    /* im2col, stride 2: two bands, col2im input gradient */
    s_conv_big(&(nn_conv2d_dims_t){.B = 1, .C = 64, .H = 130, .W = 130, .OC = 24, .KH = 3, .KW = 3, .stride = 2,
                                   .pad_t = 1, .pad_b = 1, .pad_l = 1, .pad_r = 1});
    /* direct (3 output channels): five row tasks; the input gradient by im2col */
    s_conv_big(&(nn_conv2d_dims_t){.B = 1, .C = 40, .H = 33, .W = 33, .OC = 3, .KH = 3, .KW = 3, .stride = 1,
                                   .pad_t = 1, .pad_b = 1, .pad_l = 1, .pad_r = 1});
}

/* nn_widen: every fp16 and bf16 bit pattern, with each fp16 kernel this CPU has
 * and split over 3 threads, against common/half.h's bit-by-bit conversion. */
TEST(nn_widen_every_pattern)
{
    enum { N = 65536 + 5 }; /* a tail the 8-wide loop does not cover */
    uint16_t *src = malloc(N * sizeof *src);
    float *dst = malloc(N * sizeof *dst);
    REQUIRE(src && dst);
    for (int i = 0; i < N; i++) src[i] = (uint16_t)i;
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 3);
    REQUIRE(ctx);
    for (int k = 1; k <= 2; k++) {
        if (nn_cpu_widen_kernels(k) != k) continue; /* no F16C here */
        for (int dt = NN_F16; dt <= NN_BF16; dt++) {
            memset(dst, 0xff, N * sizeof *dst);
            CHECK_INT_EQ(nn_widen(ctx, dst, src, (nn_dtype_t)dt, N), 0);
            int bad = 0;
            for (int i = 0; i < N; i++) {
                float want = dt == NN_F16 ? bt_f16_to_f32(src[i]) : bt_bf16_to_f32(src[i]);
                bool ok = isnan(want) ? isnan(dst[i]) && signbit(dst[i]) == signbit(want)
                                      : !memcmp(&dst[i], &want, sizeof want);
                if (!ok && bad++ < 3)
                    CHECKF(ok, "%s pattern 0x%04x (kernel %d): %a, want %a", nn_dtype_name((nn_dtype_t)dt), src[i],
                           k, dst[i], want);
            }
            CHECKF(bad == 0, "%s kernel %d: %d patterns wrong", nn_dtype_name((nn_dtype_t)dt), k, bad);
        }
    }
    nn_cpu_widen_kernels(0);
    CHECK(nn_widen(ctx, dst, src, NN_F32, 4) == BT_EINVAL); /* nothing to widen */
    nn_ctx_destroy(&ctx);
    free(src);
    free(dst);
}
