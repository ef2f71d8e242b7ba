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

#include "common/log.h"
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
