/*
 * test_nn_resample.c — nearest-neighbour resizing and clamping (nn/elementwise.h).
 *
 * The resize is checked against a float64 implementation written here from
 * PyTorch's rule (plain loops, no code shared with nn/cpu) on the sizes the UNet
 * meets — 2x, 2x cropped to an odd skip, 2x + 1 — and on other ratios, shrinking
 * included. Its backward is checked against the float64 sums, for "=" (a NaN
 * pre-fill must be overwritten, also where no output reads a source), as the
 * adjoint of the forward (<up(x), g> == <x, up_backward(g)>), and for the same
 * bytes with 1 and 3 threads. These cases are not in test_nn_ops: that table
 * also compares every op with PyTorch fixtures, which have no such entries.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "nn/nn.h"
#include "testutil.h"

typedef struct {
    int64_t BC, H, W, OH, OW;
} s_size_t;

static const s_size_t s_sizes[] = {
    {3, 4, 5, 8, 10},  /* 2x (the fast path) */
    {2, 4, 5, 7, 9},   /* 2x cropped: the skip after a padded stride-2 conv of an odd size */
    {2, 3, 4, 7, 9},   /* 2x + 1 (downsample_padding 0) */
    {2, 3, 5, 7, 12},  /* non-integer ratios */
    {1, 5, 7, 3, 4},   /* shrinking: some sources are read by no output */
    {2, 4, 4, 4, 4},   /* identity */
    {1, 1, 1, 3, 5},   /* one pixel */
    {2, 3, 2, 8, 5},   /* different rule on each axis */
    {1, 7, 6, 21, 18}, /* 3x */
    {1, 6, 9, 13, 10}, /* one axis grows, the other barely */
};
#define NSIZES ((int)(sizeof s_sizes / sizeof s_sizes[0]))

/* The source of output index o, as PyTorch's nearest_idx computes it for
 * F.interpolate(size=...): exact for equal and doubled sizes, else floor(o * scale)
 * with scale = in / out in float, kept below in. */
static int64_t ref_src(int64_t o, int64_t in, int64_t out)
{
    if (out == in) return o;
    if (out == 2 * in) return o / 2;
    float scale = (float)in / (float)out;
    int64_t s = (int64_t)floorf((float)o * scale);
    return s < in - 1 ? s : in - 1;
}

static void ref_forward(const s_size_t *s, const double *x, double *y)
{
    for (int64_t c = 0; c < s->BC; c++)
        for (int64_t i = 0; i < s->OH; i++)
            for (int64_t j = 0; j < s->OW; j++)
                y[(c * s->OH + i) * s->OW + j] =
                    x[(c * s->H + ref_src(i, s->H, s->OH)) * s->W + ref_src(j, s->W, s->OW)];
}

/* scatter-add: every output's gradient goes to its source */
static void ref_backward(const s_size_t *s, const double *g, double *dx)
{
    memset(dx, 0, (size_t)(s->BC * s->H * s->W) * sizeof *dx);
    for (int64_t c = 0; c < s->BC; c++)
        for (int64_t i = 0; i < s->OH; i++)
            for (int64_t j = 0; j < s->OW; j++)
                dx[(c * s->H + ref_src(i, s->H, s->OH)) * s->W + ref_src(j, s->W, s->OW)] +=
                    g[(c * s->OH + i) * s->OW + j];
}

static double *s_widen(const float *x, int64_t n)
{
    double *d = malloc((size_t)n * sizeof *d);
    for (int64_t i = 0; i < n; i++)
        d[i] = x[i];
    return d;
}

TEST(nn_upsample_nearest)
{
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    REQUIRE(ctx);
    for (int k = 0; k < NSIZES; k++) {
        const s_size_t *s = &s_sizes[k];
        int64_t n = s->BC * s->H * s->W, m = s->BC * s->OH * s->OW;
        float *x = malloc((size_t)n * sizeof *x), *y = malloc((size_t)m * sizeof *y);
        float *g = malloc((size_t)m * sizeof *g), *dx = malloc((size_t)n * sizeof *dx);
        double *y64 = malloc((size_t)m * sizeof *y64), *dx64 = malloc((size_t)n * sizeof *dx64);
        tu_rng_t r = tu_rng(100 + (uint64_t)k);
        tu_fill_normal(&r, x, n, 1.0f);
        tu_fill_normal(&r, g, m, 1.0f);
        double *x64 = s_widen(x, n), *g64 = s_widen(g, m);

        /* forward: copies, so exactly the reference */
        for (int64_t i = 0; i < m; i++)
            y[i] = NAN;
        CHECK_INT_EQ(nn_upsample_nearest_forward(ctx, y, x, s->BC, s->H, s->W, s->OH, s->OW), 0);
        ref_forward(s, x64, y64);
        int64_t wrong = 0;
        for (int64_t i = 0; i < m; i++)
            wrong += (double)y[i] != y64[i];
        CHECKF(wrong == 0, "[%lld,%lld,%lld] -> [%lld,%lld]: %lld outputs differ from the reference", (long long)s->BC,
               (long long)s->H, (long long)s->W, (long long)s->OH, (long long)s->OW, (long long)wrong);

        /* backward: "=" over a NaN pre-fill, against the float64 sums */
        for (int64_t i = 0; i < n; i++)
            dx[i] = NAN;
        CHECK_INT_EQ(nn_upsample_nearest_backward(ctx, dx, g, s->BC, s->H, s->W, s->OH, s->OW), 0);
        ref_backward(s, g64, dx64);
        double err = 0, scale = 0;
        for (int64_t i = 0; i < n; i++) {
            err = fmax(err, isnan(dx[i]) ? INFINITY : fabs(dx[i] - dx64[i]));
            scale = fmax(scale, fabs(dx64[i]));
        }
        CHECKF(err <= 1e-6 * fmax(scale, 1), "[%lld,%lld] -> [%lld,%lld] backward: max err %.3g (scale %.3g)",
               (long long)s->H, (long long)s->W, (long long)s->OH, (long long)s->OW, err, scale);

        /* adjoint: <up(x), g> == <x, up_backward(g)> */
        double lhs = 0, rhs = 0, mag = 0;
        for (int64_t i = 0; i < m; i++) {
            lhs += (double)y[i] * g[i];
            mag += fabs((double)y[i] * g[i]);
        }
        for (int64_t i = 0; i < n; i++)
            rhs += (double)x[i] * dx[i];
        CHECKF(fabs(lhs - rhs) <= 1e-6 * fmax(mag, 1),
               "[%lld,%lld] -> [%lld,%lld]: <up x, g> = %.9g, <x, up' g> = %.9g", (long long)s->H, (long long)s->W,
               (long long)s->OH, (long long)s->OW, lhs, rhs);

        /* thread count does not change a byte */
        nn_ctx_t *c1 = nn_ctx_new(NN_BACKEND_CPU, 1), *c3 = nn_ctx_new(NN_BACKEND_CPU, 3);
        REQUIRE(c1 && c3);
        float *y1 = malloc((size_t)m * sizeof *y1), *d3 = malloc((size_t)n * sizeof *d3);
        float *d1 = malloc((size_t)n * sizeof *d1);
        CHECK_INT_EQ(nn_upsample_nearest_forward(c1, y1, x, s->BC, s->H, s->W, s->OH, s->OW), 0);
        CHECK(!memcmp(y1, y, (size_t)m * sizeof *y));
        CHECK_INT_EQ(nn_upsample_nearest_backward(c1, d1, g, s->BC, s->H, s->W, s->OH, s->OW), 0);
        CHECK_INT_EQ(nn_upsample_nearest_backward(c3, d3, g, s->BC, s->H, s->W, s->OH, s->OW), 0);
        CHECK(!memcmp(d1, d3, (size_t)n * sizeof *d1));
        nn_ctx_destroy(&c1);
        nn_ctx_destroy(&c3);
        free(y1), free(d1), free(d3);
        free(x), free(y), free(g), free(dx), free(y64), free(dx64), free(x64), free(g64);
    }
    nn_ctx_destroy(&ctx);
}

/* A larger plane than the pool's grain, so the rows really are split over threads. */
TEST(nn_upsample_nearest_threads)
{
    const s_size_t s = {4, 33, 47, 65, 93}; /* 2x - 1 on both axes: the general path */
    int64_t n = s.BC * s.H * s.W, m = s.BC * s.OH * s.OW;
    float *x = malloc((size_t)n * sizeof *x), *g = malloc((size_t)m * sizeof *g);
    float *y[2], *dx[2];
    tu_rng_t r = tu_rng(9);
    tu_fill_normal(&r, x, n, 1.0f);
    tu_fill_normal(&r, g, m, 1.0f);
    for (int t = 0; t < 2; t++) {
        nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, t ? 4 : 1);
        REQUIRE(ctx);
        y[t] = malloc((size_t)m * sizeof(float));
        dx[t] = malloc((size_t)n * sizeof(float));
        CHECK_INT_EQ(nn_upsample_nearest_forward(ctx, y[t], x, s.BC, s.H, s.W, s.OH, s.OW), 0);
        CHECK_INT_EQ(nn_upsample_nearest_backward(ctx, dx[t], g, s.BC, s.H, s.W, s.OH, s.OW), 0);
        nn_ctx_destroy(&ctx);
    }
    CHECK(!memcmp(y[0], y[1], (size_t)m * sizeof(float)));
    CHECK(!memcmp(dx[0], dx[1], (size_t)n * sizeof(float)));
    /* cropping the 2x result gives the same outputs, and the block sums agree with the 2x backward of the
     * zero-padded gradient (the way the UNet computed them before this op) */
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    REQUIRE(ctx);
    float *full = malloc((size_t)(n * 4) * sizeof(float)), *gfull = calloc((size_t)(n * 4), sizeof(float));
    float *dfull = malloc((size_t)n * sizeof(float));
    CHECK_INT_EQ(nn_upsample2x_forward(ctx, full, x, s.BC, s.H, s.W), 0);
    int64_t wrong = 0;
    for (int64_t c = 0; c < s.BC; c++)
        for (int64_t i = 0; i < s.OH; i++)
            for (int64_t j = 0; j < s.OW; j++) {
                wrong += y[0][(c * s.OH + i) * s.OW + j] != full[(c * 2 * s.H + i) * 2 * s.W + j];
                gfull[(c * 2 * s.H + i) * 2 * s.W + j] = g[(c * s.OH + i) * s.OW + j];
            }
    CHECK_INT_EQ(wrong, 0);
    CHECK_INT_EQ(nn_upsample2x_backward(ctx, dfull, gfull, s.BC, s.H, s.W), 0);
    wrong = 0;
    for (int64_t i = 0; i < n; i++)
        wrong += dfull[i] != dx[0][i];
    CHECK_INT_EQ(wrong, 0);
    nn_ctx_destroy(&ctx);
    free(full), free(gfull), free(dfull);
    for (int t = 0; t < 2; t++)
        free(y[t]), free(dx[t]);
    free(x), free(g);
}

TEST(nn_upsample_nearest_bad_sizes)
{
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    REQUIRE(ctx);
    float x[4] = {1, 2, 3, 4}, y[16];
    CHECK(nn_upsample_nearest_forward(ctx, y, x, 1, 2, 2, 0, 4) == BT_EINVAL);
    CHECK(nn_upsample_nearest_forward(ctx, y, x, 1, 0, 2, 4, 4) == BT_EINVAL);
    CHECK(nn_upsample_nearest_backward(ctx, x, y, 1, 2, 2, 4, -1) == BT_EINVAL);
    CHECK(nn_upsample_nearest_forward(ctx, y, x, -1, 2, 2, 4, 4) == BT_EINVAL);
    CHECK(nn_upsample_nearest_forward(ctx, y, x, 0, 2, 2, 3, 3) == BT_OK); /* no planes: nothing to do */
    nn_ctx_destroy(&ctx);
}

TEST(nn_clamp)
{
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    REQUIRE(ctx);
    enum { N = 40000 }; /* several pool chunks */
    float *x = malloc(N * sizeof *x), *y = malloc(N * sizeof *y);
    tu_rng_t r = tu_rng(3);
    tu_fill_uniform(&r, x, N, -50.0f, 40.0f);
    x[0] = -30.0f, x[1] = 20.0f, x[2] = -INFINITY, x[3] = INFINITY, x[4] = NAN, x[5] = -0.0f;
    x[6] = nextafterf(-30.0f, -INFINITY), x[7] = nextafterf(20.0f, INFINITY), x[8] = nextafterf(20.0f, 0);
    CHECK_INT_EQ(nn_clamp(ctx, y, x, N, -30.0f, 20.0f), 0);
    int64_t wrong = 0;
    for (int i = 0; i < N; i++) {
        double v = x[i], want = isnan(v) ? v : fmin(fmax(v, -30.0), 20.0);
        wrong += isnan(want) ? !isnan(y[i]) : (double)y[i] != want;
    }
    CHECK_INT_EQ(wrong, 0);
    CHECK(y[8] == nextafterf(20.0f, 0) && y[6] == -30.0f && y[7] == 20.0f && isnan(y[4]));
    /* in place, as the VAE uses it */
    CHECK_INT_EQ(nn_clamp(ctx, x, x, N, -30.0f, 20.0f), 0);
    CHECK(!memcmp(x + 5, y + 5, (N - 5) * sizeof *x) && isnan(x[4]));
    CHECK(nn_clamp(ctx, y, x, N, 1.0f, -1.0f) == BT_EINVAL);
    CHECK(nn_clamp(ctx, y, x, N, NAN, 1.0f) == BT_EINVAL);
    free(x), free(y);
    nn_ctx_destroy(&ctx);
}
