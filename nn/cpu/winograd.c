/*
 * winograd.c — 3x3 stride-1 convolution by Winograd's minimal filtering
 * F(2x2, 3x3): each 2x2 block of outputs costs 16 multiplies per (in, out)
 * channel pair instead of 36, and the 16 products become 16 independent
 * matrix products (nn_cpu_gemm1, one thread each) that run near the CPU's peak.
 *
 *   U = G g G^T       weights, once per call: 16 matrices [OC, C]
 *   V = B^T d B       4x4 input patches (stride 2): 16 matrices [C, T]
 *   M_xi = U_xi V_xi  16 sgemms [OC, T]
 *   y = A^T M A       2x2 outputs per tile (+ bias)
 *
 * Tiles are numbered along rows of tiles; each image's rows of tiles are cut
 * into bands of whole tile rows (the same for every image of a batch, so an
 * image's result does not depend on the batch around it), sized from the
 * dimensions alone (enough tiles for an efficient sgemm, few enough that a
 * band's V and M stay a few tens of MiB). Each band runs in three parallel
 * steps: input transform (split over channels), the 16 sgemms (one thread
 * each, split over xi), output transform (split over output channels). Every
 * number is computed by the same arithmetic in the same order whatever the
 * thread count, so results are byte-identical for any number of threads.
 * With few channels (C K < SMALL_CK) those steps are too short to share out,
 * so bands are smaller and whole bands run in parallel instead (forward and input
 * gradient: the same arithmetic per band; weight gradient: bands in a fixed
 * number of groups, each summed in order, the groups then added in order).
 *
 * The input gradient of a stride-1 3x3 convolution is itself one: dout
 * convolved with the kernel rotated by 180 degrees and transposed (in <-> out
 * channels), padded by 2 - pad on every side. The weight gradient uses the dual
 * algorithm F(3x3, 2x2): the same input patches V, the 2x2 dout tiles lifted to
 * 4x4 by A u A^T, Mh_xi = sum over tiles of D_xi V_xi^T (16 sgemms accumulated
 * band after band, in order), and dw += G^T Mh G.
 *
 * Rounding: the transforms only add, subtract and halve. On UNet-like shapes
 * (320-1280 channels, unit-variance outputs) the maximum error against float64
 * is about 1.4 times im2col's (2e-6 vs 1.5e-6). F(4x4, 3x3) would need a
 * quarter of the multiplies but errs 15-20 times more than direct
 * convolution, which is why it is not used.
 *
 * The transforms are portable loops that GCC vectorises, and on AVX-512 CPUs
 * hand-written register versions of the same arithmetic (same bytes).
 */
#include <string.h>

#include "nn/conv2d.h"
#include "nn/cpu/cpu.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define W_X86 1
#include "nn/cpu/avx512.h"
#else
#define W_X86 0
#endif

#define NXI 16 /* points of the transformed 4x4 tile */

/* The transforms work on blocks of L neighbouring tiles (or channels) with
 * fixed-length inner loops, which GCC turns into whole vectors under NN_CLONES
 * (at -O2 it does not vectorise loops of unknown length). A block that would
 * run past the end goes through a small local copy instead. */
#define L 16

/* The block helpers must be inlined into each NN_CLONES copy of their caller to be
 * compiled for its instruction set; GCC's size heuristics would otherwise keep
 * one out-of-line copy built for the baseline target. */
#if defined(__GNUC__)
#define S_BLOCK static inline __attribute__((always_inline))
#else
#define S_BLOCK static inline
#endif

/* Band sizing: aim for this many tiles per sgemm (its N) ... */
#define BAND_TILES 512
/* ... except with few channels (C K below SMALL_CK), where a band's three steps
 * are too short to share out (waking a thread costs more): then an image gets at
 * least 4 bands of at least SMALL_BAND_TILES tiles, and whole bands run in
 * parallel, each thread with its own V and M. The bands' arithmetic is the same
 * either way, so the results are too. */
#define SMALL_CK (256 * 256)
#define SMALL_BAND_TILES 64
/* ... unless a band's V and M (16 (in + out) channels x tiles floats) would exceed this. */
#define BAND_BYTES ((int64_t)32 << 20)

/* One stride-1 3x3 convolution problem: out[B,K,OH,OW] = conv(inp[B,C,H,W]) + bias. */
typedef struct {
    int64_t B, C, H, W, K, OH, OW;
    int64_t pt, pl;     /* top/left zero padding; bottom/right follow from OH, OW */
    int64_t TH, TW;     /* tiles per image: ceil(OH/2) x ceil(OW/2) */
    int64_t RB, nbands; /* tile rows per band, bands per image */
    bool small;         /* C K < SMALL_CK: bands in parallel (forward and input gradient) */
    int64_t PWp;        /* padded row length the transforms read: 2 TW rounded up to 2 L, + 2 */
} s_geom_t;

typedef struct {
    s_geom_t g;
    const float *inp, *bias, *w;
    float *out;
    float *U;   /* [16][K0][C0]: the forward's [K][C], the input gradient's [C][K] */
    float *V;   /* [16][C][Tb] for the current band */
    float *M;   /* [16][K][Tb] */
    float *buf; /* threads x buf_floats: a thread's padded input rows */
    size_t buf_floats;
    bool flip;      /* the input gradient: kernels rotated, U used transposed */
    int64_t K0, C0; /* w is [K0][C0][3][3] */
    int64_t b, r0, r1; /* current band: image b, tile rows [r0, r1) */
    /* weight gradient */
    const float *dout;
    float *D;  /* [16][K][Tb]: lifted dout tiles */
    float *Mh; /* [16][K][C] */
    float *dw;
    float beta; /* 0 for the first band, then 1 */
    float *packs; /* the context's packing buffers for nn_cpu_gemm1, one per thread */
} s_wino_t;

static bool s_tiny; /* test hook: one tile row per band */

void nn_cpu_winograd_test_tiny_bands(bool on) { s_tiny = on; }

static void s_geom(s_geom_t *g, int64_t B, int64_t C, int64_t H, int64_t W, int64_t K, int64_t OH, int64_t OW,
                   int64_t pt, int64_t pl)
{
    *g = (s_geom_t){.B = B, .C = C, .H = H, .W = W, .K = K, .OH = OH, .OW = OW, .pt = pt, .pl = pl};
    g->TH = (OH + 1) / 2;
    g->TW = (OW + 1) / 2;
    g->PWp = 2 * ((g->TW + L - 1) / L * L) + 2;
    int64_t rows = g->TH;
    int64_t per_tile = NXI * (C + K) * (int64_t)sizeof(float);
    int64_t tiles = BAND_TILES, cap = BAND_BYTES / per_tile;
    g->small = C * K < SMALL_CK;
    if (g->small) {
        int64_t quarter = (g->TH * g->TW + 3) / 4;
        if (tiles > quarter) tiles = quarter;
        if (tiles < SMALL_BAND_TILES) tiles = SMALL_BAND_TILES;
    }
    if (tiles > cap) tiles = cap;
    int64_t rb = (tiles + g->TW - 1) / g->TW;
    if (rb < 1 || s_tiny) rb = 1;
    if (rb > rows) rb = rows;
    g->nbands = (rows + rb - 1) / rb;
    g->RB = (rows + g->nbands - 1) / g->nbands; /* even the bands out */
}

/* Floats from one point's matrix to the next (U, and a band's V, M, D): a cache line
 * more than the matrix, so that the 16 streams a transform reads or writes do not
 * all fall into one set of the L1 cache when the matrix size is a power of two. */
static inline int64_t s_pitch(int64_t floats) { return floats + 16; }

static size_t s_band_floats(const s_geom_t *g)
{
    return (size_t)(NXI * (s_pitch(g->C * g->RB * g->TW) + s_pitch(g->K * g->RB * g->TW)));
}

/* per thread: the input transform's 4 padded rows */
static size_t s_thread_floats(const s_geom_t *g)
{
    return (size_t)((4 * g->PWp + 15) / 16 * 16); /* whole cache lines: threads never share one */
}

/* ---- the transforms with AVX-512 ----
 *
 * The portable loops below leave their intermediate rows on the stack, and the
 * input transform's column step then reads them back at an offset of two
 * floats, which store-to-load forwarding cannot serve: on AVX-512 CPUs that
 * stall was half of the input transform's time. These versions keep every
 * intermediate in registers, read the input straight from its plane (masked
 * loads give the zero padding) and write straight to it. They do the portable
 * versions' additions in the same order, with exact shuffles in place of the
 * column indexing, so they give the same bytes (tested). */

static bool s_portable; /* test hook: the portable transforms even where AVX-512 runs */

void nn_cpu_winograd_test_portable(bool on) { s_portable = on; }

#if W_X86
static bool s_use512(void)
{
    static int have = -1; /* benign race: every thread computes the same value */
    if (have < 0) have = nn_avx512_cpu();
    return have && !s_portable;
}

/* Lanes i of a 16-float load from plane column x0 + i that fall inside [0, W). */
static inline __mmask16 s_cols(int64_t x0, int64_t W)
{
    int64_t lo = x0 < 0 ? -x0 : 0, hi = W - x0 < 16 ? W - x0 : 16;
    if (hi <= lo) return 0;
    return (__mmask16)(((1u << hi) - 1) & ~((1u << lo) - 1));
}

/* 16 floats from row + x0 (x0 may be negative), lanes outside m zero: the
 * address is formed in integers because it may point before the row. */
NN_AVX512 static inline __attribute__((always_inline)) __m512 s_load(const float *row, int64_t x0, __mmask16 m)
{
    if (!m) return _mm512_setzero_ps();
    return _mm512_maskz_loadu_ps(m, (const void *)((uintptr_t)row + (uintptr_t)(x0 * (int64_t)sizeof(float))));
}

/* Indices of lanes first, first + 2, ..., first + 30 of a pair of vectors (for
 * _mm512_permutex2var_ps): the even (0) or odd (1) columns of 32. */
NN_AVX512 static inline __m512i s_every_other(int first)
{
    return _mm512_add_epi32(_mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30),
                            _mm512_set1_epi32(first));
}

NN_AVX512 static void s_input_channel_512(const s_wino_t *p, int64_t c)
{
    const s_geom_t *g = &p->g;
    int64_t TW = g->TW, W = g->W, Tb = (p->r1 - p->r0) * TW, CT = s_pitch(g->C * Tb);
    const float *plane = p->inp + (p->b * g->C + c) * g->H * W;
    const __m512i even = s_every_other(0), odd = s_every_other(1);
    const int off[4] = {0, 16, 2, 18}; /* the padded columns 2 l + {0, 1} and 2 l + {2, 3} */
    for (int64_t r = p->r0; r < p->r1; r++) {
        int64_t iy = 2 * r - g->pt;
        float *dst = p->V + c * Tb + (r - p->r0) * TW;
        for (int64_t j = 0; j < TW; j += L) {
            int64_t x = 2 * j - g->pl; /* plane column of the block's first padded column */
            __m512 d[4][4];
#pragma GCC unroll 4
            for (int q = 0; q < 4; q++) {
                __mmask16 m = s_cols(x + off[q], W);
#pragma GCC unroll 4
                for (int i = 0; i < 4; i++)
                    d[i][q] = iy + i >= 0 && iy + i < g->H ? s_load(plane + (iy + i) * W, x + off[q], m)
                                                           : _mm512_setzero_ps();
            }
            __m512 v[NXI];
#pragma GCC unroll 4
            for (int a = 0; a < 4; a++) {
                __m512 e[4]; /* B^T d: row a, at the four load offsets */
#pragma GCC unroll 4
                for (int q = 0; q < 4; q++)
                    e[q] = a == 0   ? _mm512_sub_ps(d[0][q], d[2][q])
                           : a == 1 ? _mm512_add_ps(d[1][q], d[2][q])
                           : a == 2 ? _mm512_sub_ps(d[2][q], d[1][q])
                                    : _mm512_sub_ps(d[1][q], d[3][q]);
                __m512 x0 = _mm512_permutex2var_ps(e[0], even, e[1]), x1 = _mm512_permutex2var_ps(e[0], odd, e[1]);
                __m512 x2 = _mm512_permutex2var_ps(e[2], even, e[3]), x3 = _mm512_permutex2var_ps(e[2], odd, e[3]);
                v[4 * a + 0] = _mm512_sub_ps(x0, x2);
                v[4 * a + 1] = _mm512_add_ps(x1, x2);
                v[4 * a + 2] = _mm512_sub_ps(x2, x1);
                v[4 * a + 3] = _mm512_sub_ps(x1, x3);
            }
            __mmask16 n = nn_first16(TW - j);
#pragma GCC unroll 16
            for (int xi = 0; xi < NXI; xi++) _mm512_mask_storeu_ps(dst + xi * CT + j, n, v[xi]);
        }
    }
}

/* out[2 l], out[2 l + 1] = e[l], o[l] for the first n of 32 floats */
NN_AVX512 static inline __attribute__((always_inline)) void s_store_pairs(float *out, __m512 e, __m512 o, int64_t n)
{
    const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    _mm512_mask_storeu_ps(out, nn_first16(n), _mm512_permutex2var_ps(e, lo, o));
    _mm512_mask_storeu_ps(out + 16, nn_first16(n - 16), _mm512_permutex2var_ps(e, hi, o));
}

NN_AVX512 static void s_output_channel_512(const s_wino_t *p, int64_t k)
{
    const s_geom_t *g = &p->g;
    int64_t TW = g->TW, Tb = (p->r1 - p->r0) * TW, KT = s_pitch(g->K * Tb);
    __m512 bias = _mm512_set1_ps(p->bias ? p->bias[k] : 0.0f);
    for (int64_t r = p->r0; r < p->r1; r++) {
        const float *m = p->M + k * Tb + (r - p->r0) * TW;
        float *o0 = p->out + ((p->b * g->K + k) * g->OH + 2 * r) * g->OW, *o1 = o0 + g->OW;
        bool two = 2 * r + 1 < g->OH;
        for (int64_t j = 0; j < TW; j += L) {
            __mmask16 n = nn_first16(TW - j);
            __m512 s0[4], s1[4];
#pragma GCC unroll 4
            for (int a = 0; a < 4; a++) { /* m A */
                __m512 m0 = _mm512_maskz_loadu_ps(n, m + (4 * a) * KT + j);
                __m512 m1 = _mm512_maskz_loadu_ps(n, m + (4 * a + 1) * KT + j);
                __m512 m2 = _mm512_maskz_loadu_ps(n, m + (4 * a + 2) * KT + j);
                __m512 m3 = _mm512_maskz_loadu_ps(n, m + (4 * a + 3) * KT + j);
                s0[a] = _mm512_add_ps(_mm512_add_ps(m0, m1), m2);
                s1[a] = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
            }
            int64_t nx = g->OW - 2 * j;
            s_store_pairs(o0 + 2 * j, _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(s0[0], s0[1]), s0[2]), bias),
                          _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(s1[0], s1[1]), s1[2]), bias), nx);
            if (two)
                s_store_pairs(o1 + 2 * j, _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(s0[1], s0[2]), s0[3]), bias),
                              _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(s1[1], s1[2]), s1[3]), bias), nx);
        }
    }
}

NN_AVX512 static void s_dout_channel_512(const s_wino_t *p, int64_t k)
{
    const s_geom_t *g = &p->g;
    int64_t TW = g->TW, OW = g->OW, Tb = (p->r1 - p->r0) * TW, KT = s_pitch(g->K * Tb);
    const float *plane = p->dout + (p->b * g->K + k) * g->OH * OW;
    const __m512i even = s_every_other(0), odd = s_every_other(1);
    const __m512 sign = _mm512_set1_ps(-0.0f);
    for (int64_t r = p->r0; r < p->r1; r++) {
        float *dd = p->D + k * Tb + (r - p->r0) * TW;
        for (int64_t j = 0; j < TW; j += L) {
            __m512 t[2][4]; /* the two dout rows lifted along x: A u */
#pragma GCC unroll 2
            for (int i = 0; i < 2; i++) {
                int64_t oy = 2 * r + i;
                __m512 u0 = _mm512_setzero_ps(), u1 = _mm512_setzero_ps();
                if (oy < g->OH) {
                    u0 = s_load(plane + oy * OW, 2 * j, s_cols(2 * j, OW));
                    u1 = s_load(plane + oy * OW, 2 * j + 16, s_cols(2 * j + 16, OW));
                }
                __m512 e = _mm512_permutex2var_ps(u0, even, u1), o = _mm512_permutex2var_ps(u0, odd, u1);
                t[i][0] = e;
                t[i][1] = _mm512_add_ps(e, o);
                t[i][2] = _mm512_sub_ps(e, o);
                t[i][3] = _mm512_xor_ps(o, sign);
            }
            __mmask16 n = nn_first16(TW - j);
#pragma GCC unroll 4
            for (int x = 0; x < 4; x++) { /* then along y */
                _mm512_mask_storeu_ps(dd + x * KT + j, n, t[0][x]);
                _mm512_mask_storeu_ps(dd + (4 + x) * KT + j, n, _mm512_add_ps(t[0][x], t[1][x]));
                _mm512_mask_storeu_ps(dd + (8 + x) * KT + j, n, _mm512_sub_ps(t[0][x], t[1][x]));
                _mm512_mask_storeu_ps(dd + (12 + x) * KT + j, n, _mm512_xor_ps(t[1][x], sign));
            }
        }
    }
}

/* rows [k0, k1) of U, as s_weight_rows below: 16 kernels at a time, their taps
 * gathered (reversed for the input gradient) */
NN_AVX512 static void s_weight_rows_512(const s_wino_t *p, int64_t k0, int64_t k1)
{
    int64_t C = p->C0, KC = s_pitch(p->K0 * C);
    const __m512i base = _mm512_setr_epi32(0, 9, 18, 27, 36, 45, 54, 63, 72, 81, 90, 99, 108, 117, 126, 135);
    const __m512 half = _mm512_set1_ps(0.5f);
    for (int64_t k = k0; k < k1; k++)
        for (int64_t c0 = 0; c0 < C; c0 += L) {
            __mmask16 n = nn_first16(C - c0);
            const float *g = p->w + (k * C + c0) * 9;
            __m512 t[9];
#pragma GCC unroll 9
            for (int i = 0; i < 9; i++)
                t[i] = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), n,
                                                _mm512_add_epi32(base, _mm512_set1_epi32(p->flip ? 8 - i : i)), g, 4);
            __m512 r[4][3];
#pragma GCC unroll 3
            for (int x = 0; x < 3; x++) { /* G g */
                __m512 a = t[x], b = t[3 + x], c = t[6 + x];
                r[0][x] = a;
                r[1][x] = _mm512_mul_ps(half, _mm512_add_ps(_mm512_add_ps(a, b), c));
                r[2][x] = _mm512_mul_ps(half, _mm512_add_ps(_mm512_sub_ps(a, b), c));
                r[3][x] = c;
            }
            float *dst = p->U + k * C + c0;
#pragma GCC unroll 4
            for (int y = 0; y < 4; y++) { /* (G g) G^T */
                __m512 a = r[y][0], b = r[y][1], c = r[y][2];
                _mm512_mask_storeu_ps(dst + (4 * y + 0) * KC, n, a);
                _mm512_mask_storeu_ps(dst + (4 * y + 1) * KC, n,
                                      _mm512_mul_ps(half, _mm512_add_ps(_mm512_add_ps(a, b), c)));
                _mm512_mask_storeu_ps(dst + (4 * y + 2) * KC, n,
                                      _mm512_mul_ps(half, _mm512_add_ps(_mm512_sub_ps(a, b), c)));
                _mm512_mask_storeu_ps(dst + (4 * y + 3) * KC, n, c);
            }
        }
}
#else
static bool s_use512(void) { return false; }
#endif

/* ---- weights: U[xi][k][c] = (G g G^T)[xi], G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1] ---- */

/* u[xi][l] = (G t G^T)[xi] for the L kernels t[i][l] (tap i = 3 ky + kx) */
S_BLOCK void s_weight_block(float u[NXI][L], const float t[9][L])
{
    float r[4][3][L];
    for (int x = 0; x < 3; x++) /* G g: combine kernel rows */
        for (int l = 0; l < L; l++) {
            float a = t[x][l], b = t[3 + x][l], c = t[6 + x][l];
            r[0][x][l] = a;
            r[1][x][l] = 0.5f * (a + b + c);
            r[2][x][l] = 0.5f * (a - b + c);
            r[3][x][l] = c;
        }
    for (int y = 0; y < 4; y++) /* (G g) G^T: combine columns */
        for (int l = 0; l < L; l++) {
            float a = r[y][0][l], b = r[y][1][l], c = r[y][2][l];
            u[4 * y + 0][l] = a;
            u[4 * y + 1][l] = 0.5f * (a + b + c);
            u[4 * y + 2][l] = 0.5f * (a - b + c);
            u[4 * y + 3][l] = c;
        }
}

/* Rows [k0, k1) of the 16 matrices U[xi][K0][C0], read from w[K0][C0][3][3] in
 * order. The forward uses U_xi as it is; the input gradient (flip: kernels rotated
 * by 180 degrees) uses it transposed, since its output channels are w's input
 * channels. Either way w is read and U written front to back. */
NN_CLONES static void s_weight_rows(const s_wino_t *p, int64_t k0, int64_t k1)
{
    int64_t C = p->C0, KC = s_pitch(p->K0 * C);
    float t[9][L], u[NXI][L];
#if W_X86
    if (s_use512()) {
        s_weight_rows_512(p, k0, k1);
        return;
    }
#endif
    for (int64_t k = k0; k < k1; k++)
        for (int64_t c0 = 0; c0 < C; c0 += L) {
            int64_t n = C - c0 < L ? C - c0 : L;
            if (n < L) memset(t, 0, sizeof t);
            const float *g = p->w + (k * C + c0) * 9;
            if (p->flip)
                for (int64_t l = 0; l < n; l++)
                    for (int i = 0; i < 9; i++) t[i][l] = g[l * 9 + 8 - i];
            else
                for (int64_t l = 0; l < n; l++)
                    for (int i = 0; i < 9; i++) t[i][l] = g[l * 9 + i];
            s_weight_block(u, t);
            float *dst = p->U + k * C + c0;
            if (n == L)
                for (int xi = 0; xi < NXI; xi++) memcpy(dst + xi * KC, u[xi], sizeof u[xi]);
            else
                for (int xi = 0; xi < NXI; xi++) memcpy(dst + xi * KC, u[xi], (size_t)n * sizeof(float));
        }
}

static void s_weight_task(void *arg, int64_t k0, int64_t k1, int tid)
{
    s_weight_rows(arg, k0, k1);
}

/* ---- input: V[xi][c][t] = (B^T d B)[xi], B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1] ---- */

/* dst[x] = padded input row iy at column x - pl, for x in [0, PWp) */
static void s_padded_row(const s_geom_t *g, float *dst, const float *plane, int64_t iy)
{
    int64_t PW = g->PWp;
    if (iy < 0 || iy >= g->H) {
        memset(dst, 0, (size_t)PW * sizeof(float));
        return;
    }
    int64_t lo = g->pl < PW ? g->pl : PW, hi = g->pl + g->W < PW ? g->pl + g->W : PW;
    memset(dst, 0, (size_t)lo * sizeof(float));
    if (hi > lo) memcpy(dst + lo, plane + iy * g->W + (lo - g->pl), (size_t)(hi - lo) * sizeof(float));
    if (PW > hi) memset(dst + hi, 0, (size_t)(PW - hi) * sizeof(float));
}

/* v[xi][l] = (B^T d B)[xi] for the L tiles whose 4x4 patches start at column 0 of
 * the padded rows d0..d3 */
S_BLOCK void s_input_block(float v[NXI][L], const float *d0, const float *d1, const float *d2, const float *d3)
{
    float e[4][2 * L + 2];
    for (int x = 0; x < 2 * L; x++) { /* B^T d: combine rows (2 L, then the 2 extra columns) */
        e[0][x] = d0[x] - d2[x];
        e[1][x] = d1[x] + d2[x];
        e[2][x] = d2[x] - d1[x];
        e[3][x] = d1[x] - d3[x];
    }
    for (int x = 2 * L; x < 2 * L + 2; x++) {
        e[0][x] = d0[x] - d2[x];
        e[1][x] = d1[x] + d2[x];
        e[2][x] = d2[x] - d1[x];
        e[3][x] = d1[x] - d3[x];
    }
    for (int a = 0; a < 4; a++) /* (B^T d) B: combine columns, 2 apart */
        for (int l = 0; l < L; l++) {
            float x0 = e[a][2 * l], x1 = e[a][2 * l + 1], x2 = e[a][2 * l + 2], x3 = e[a][2 * l + 3];
            v[4 * a + 0][l] = x0 - x2;
            v[4 * a + 1][l] = x1 + x2;
            v[4 * a + 2][l] = x2 - x1;
            v[4 * a + 3][l] = x1 - x3;
        }
}

/* channel c of the band's V; buf: 4 PWp floats */
NN_CLONES static void s_input_channel(const s_wino_t *p, int64_t c, float *buf)
{
    const s_geom_t *g = &p->g;
    int64_t TW = g->TW, PW = g->PWp, Tb = (p->r1 - p->r0) * TW, CT = s_pitch(g->C * Tb);
    float *d0 = buf, *d1 = buf + PW, *d2 = buf + 2 * PW, *d3 = buf + 3 * PW, v[NXI][L];
#if W_X86
    if (s_use512()) {
        s_input_channel_512(p, c);
        return;
    }
#endif
    for (int64_t r = p->r0; r < p->r1; r++) {
        int64_t iy = 2 * r - g->pt;
        const float *plane = p->inp + (p->b * g->C + c) * g->H * g->W;
        s_padded_row(g, d0, plane, iy);
        s_padded_row(g, d1, plane, iy + 1);
        s_padded_row(g, d2, plane, iy + 2);
        s_padded_row(g, d3, plane, iy + 3);
        float *dst = p->V + c * Tb + (r - p->r0) * TW;
        for (int64_t j = 0; j < TW; j += L) {
            int64_t n = TW - j < L ? TW - j : L;
            s_input_block(v, d0 + 2 * j, d1 + 2 * j, d2 + 2 * j, d3 + 2 * j);
            if (n == L)
                for (int xi = 0; xi < NXI; xi++) memcpy(dst + xi * CT + j, v[xi], sizeof v[xi]);
            else
                for (int xi = 0; xi < NXI; xi++) memcpy(dst + xi * CT + j, v[xi], (size_t)n * sizeof(float));
        }
    }
}

/* ---- output: y = A^T m A (+ bias), A^T = [1 1 1 0; 0 1 -1 -1] ---- */

/* y[row][column parity][l] of L tiles from m[xi][l] */
S_BLOCK void s_output_block(float y[2][2][L], const float m[NXI][L], float bias)
{
    float s0[4][L], s1[4][L];
    for (int a = 0; a < 4; a++) /* m A: combine columns */
        for (int l = 0; l < L; l++) {
            s0[a][l] = m[4 * a][l] + m[4 * a + 1][l] + m[4 * a + 2][l];
            s1[a][l] = m[4 * a + 1][l] - m[4 * a + 2][l] - m[4 * a + 3][l];
        }
    for (int l = 0; l < L; l++) { /* A^T (m A): combine rows */
        y[0][0][l] = s0[0][l] + s0[1][l] + s0[2][l] + bias;
        y[0][1][l] = s1[0][l] + s1[1][l] + s1[2][l] + bias;
        y[1][0][l] = s0[1][l] - s0[2][l] - s0[3][l] + bias;
        y[1][1][l] = s1[1][l] - s1[2][l] - s1[3][l] + bias;
    }
}

/* o[x] for x < n (<= 2 L): even columns from y[0], odd ones from y[1] */
S_BLOCK void s_interleave(float *o, const float y[2][L], int64_t n)
{
    float t[2 * L];
    for (int l = 0; l < L; l++) {
        t[2 * l] = y[0][l];
        t[2 * l + 1] = y[1][l];
    }
    if (n == 2 * L)
        memcpy(o, t, sizeof t);
    else
        memcpy(o, t, (size_t)n * sizeof(float));
}

NN_CLONES static void s_output_channel(const s_wino_t *p, int64_t k)
{
    const s_geom_t *g = &p->g;
    int64_t TW = g->TW, Tb = (p->r1 - p->r0) * TW, KT = s_pitch(g->K * Tb);
    float bias = p->bias ? p->bias[k] : 0.0f, y[2][2][L], mt[NXI][L];
#if W_X86
    if (s_use512()) {
        s_output_channel_512(p, k);
        return;
    }
#endif
    for (int64_t r = p->r0; r < p->r1; r++) {
        const float *m = p->M + k * Tb + (r - p->r0) * TW;
        float *o0 = p->out + ((p->b * g->K + k) * g->OH + 2 * r) * g->OW, *o1 = o0 + g->OW;
        bool two = 2 * r + 1 < g->OH;
        for (int64_t j = 0; j < TW; j += L) {
            int64_t n = TW - j < L ? TW - j : L, nx = g->OW - 2 * j < 2 * L ? g->OW - 2 * j : 2 * L;
            if (n == L) {
                for (int xi = 0; xi < NXI; xi++) memcpy(mt[xi], m + xi * KT + j, sizeof mt[xi]);
            } else {
                memset(mt, 0, sizeof mt);
                for (int xi = 0; xi < NXI; xi++) memcpy(mt[xi], m + xi * KT + j, (size_t)n * sizeof(float));
            }
            s_output_block(y, mt, bias);
            s_interleave(o0 + 2 * j, y[0], nx);
            if (two) s_interleave(o1 + 2 * j, y[1], nx);
        }
    }
}

/* ---- the banded driver ---- */

static void s_band(s_wino_t *p, int64_t band)
{
    p->r0 = band * p->g.RB;
    p->r1 = p->r0 + p->g.RB < p->g.TH ? p->r0 + p->g.RB : p->g.TH;
}

static void s_input_task(void *arg, int64_t c0, int64_t c1, int tid)
{
    s_wino_t *p = arg;
    float *buf = p->buf + (size_t)tid * p->buf_floats;
    for (int64_t c = c0; c < c1; c++) s_input_channel(p, c, buf);
}

static void s_gemm_task(void *arg, int64_t x0, int64_t x1, int tid)
{
    s_wino_t *p = arg;
    const s_geom_t *g = &p->g;
    int64_t Tb = (p->r1 - p->r0) * g->TW;
    for (int64_t xi = x0; xi < x1; xi++)
        nn_cpu_gemm1(p->packs + (size_t)tid * NN_GEMM_PACK_FLOATS, p->flip, false, g->K, Tb, g->C, 1.0f,
                     p->U + xi * s_pitch(g->K * g->C), p->flip ? g->K : g->C, p->V + xi * s_pitch(g->C * Tb), Tb, 0.0f,
                     p->M + xi * s_pitch(g->K * Tb), Tb, NULL);
}

static void s_output_task(void *arg, int64_t k0, int64_t k1, int tid)
{
    s_wino_t *p = arg;
    for (int64_t k = k0; k < k1; k++) s_output_channel(p, k);
}

/* scratch layout: U | V | M | per-thread rows; small problems: U | per thread (V | M | rows) */
static size_t s_conv_floats(const s_geom_t *g, int threads)
{
    if (g->small && threads > 1)
        return (size_t)(NXI * s_pitch(g->K * g->C)) + (size_t)threads * (s_band_floats(g) + s_thread_floats(g));
    return (size_t)(NXI * s_pitch(g->K * g->C)) + s_band_floats(g) + (size_t)threads * s_thread_floats(g);
}

/* small problems: item = (image, band), all three steps on this thread's V and M */
static void s_band_task(void *arg, int64_t i0, int64_t i1, int tid)
{
    const s_wino_t *p = arg;
    const s_geom_t *g = &p->g;
    s_wino_t q = *p;
    float *mine = p->V + (size_t)tid * (s_band_floats(g) + s_thread_floats(g));
    q.V = mine;
    q.M = q.V + NXI * s_pitch(g->C * g->RB * g->TW);
    q.buf = q.M + NXI * s_pitch(g->K * g->RB * g->TW);
    for (int64_t i = i0; i < i1; i++) {
        q.b = i / g->nbands;
        s_band(&q, i % g->nbands);
        for (int64_t c = 0; c < g->C; c++) s_input_channel(&q, c, q.buf);
        s_gemm_task(&q, 0, NXI, tid);
        s_output_task(&q, 0, g->K, tid);
    }
}

static void s_conv_run(nn_ctx_t *ctx, s_wino_t *p, float *scratch)
{
    const s_geom_t *g = &p->g;
    p->packs = ctx->packs; /* conv2d.c made sure of them */
    p->U = scratch;
    p->V = p->U + NXI * s_pitch(g->K * g->C);
    if (g->small && ctx->threads > 1) {
        nn_cpu_parallel(ctx, p->K0, 1, s_weight_task, p);
        nn_cpu_blas_threads(1);
        nn_cpu_parallel(ctx, g->B * g->nbands, 1, s_band_task, p);
        return;
    }
    p->M = p->V + NXI * s_pitch(g->C * g->RB * g->TW);
    p->buf = p->M + NXI * s_pitch(g->K * g->RB * g->TW);
    p->buf_floats = s_thread_floats(g);
    nn_cpu_parallel(ctx, p->K0, 1, s_weight_task, p);
    nn_cpu_blas_threads(1);
    for (p->b = 0; p->b < g->B; p->b++)
        for (int64_t band = 0; band < g->nbands; band++) {
            s_band(p, band);
            nn_cpu_parallel(ctx, g->C, 1, s_input_task, p);
            nn_cpu_parallel(ctx, NXI, 1, s_gemm_task, p);
            nn_cpu_parallel(ctx, g->K, 1, s_output_task, p);
        }
}

/* ---- weight gradient: F(3x3, 2x2) ---- */

/* d[xi][l] = (A u A^T)[xi] for L 2x2 dout tiles, u0/u1 (2 L floats each) their two rows */
S_BLOCK void s_dout_block(float d[NXI][L], const float *u0, const float *u1)
{
    float p[2 * L], q[2 * L], a[4][L], c[4][L]; /* the two rows lifted along x */
    memcpy(p, u0, sizeof p);
    memcpy(q, u1, sizeof q);
    for (int l = 0; l < L; l++) {
        float p0 = p[2 * l], p1 = p[2 * l + 1], q0 = q[2 * l], q1 = q[2 * l + 1];
        a[0][l] = p0;
        a[1][l] = p0 + p1;
        a[2][l] = p0 - p1;
        a[3][l] = -p1;
        c[0][l] = q0;
        c[1][l] = q0 + q1;
        c[2][l] = q0 - q1;
        c[3][l] = -q1;
    }
    for (int x = 0; x < 4; x++) /* then along y */
        for (int l = 0; l < L; l++) {
            d[0 + x][l] = a[x][l];
            d[4 + x][l] = a[x][l] + c[x][l];
            d[8 + x][l] = a[x][l] - c[x][l];
            d[12 + x][l] = -c[x][l];
        }
}

/* D[xi][k][t] = (A u A^T)[xi] for the 2x2 dout tiles of channel k, A = [1 0; 1 1; 1 -1; 0 -1];
 * buf: 2 PWp floats */
NN_CLONES static void s_dout_channel(const s_wino_t *p, int64_t k, float *buf)
{
    const s_geom_t *g = &p->g;
    int64_t TW = g->TW, Tb = (p->r1 - p->r0) * TW, KT = s_pitch(g->K * Tb), PW = g->PWp;
    float *u0 = buf, *u1 = buf + PW, d[NXI][L];
#if W_X86
    if (s_use512()) {
        s_dout_channel_512(p, k);
        return;
    }
#endif
    for (int64_t r = p->r0; r < p->r1; r++) {
        const float *plane = p->dout + (p->b * g->K + k) * g->OH * g->OW;
        for (int i = 0; i < 2; i++) {
            float *u = i ? u1 : u0;
            int64_t oy = 2 * r + i;
            if (oy < g->OH) {
                memcpy(u, plane + oy * g->OW, (size_t)g->OW * sizeof(float));
                memset(u + g->OW, 0, (size_t)(PW - g->OW) * sizeof(float));
            } else {
                memset(u, 0, (size_t)PW * sizeof(float));
            }
        }
        float *dd = p->D + k * Tb + (r - p->r0) * TW;
        for (int64_t j = 0; j < TW; j += L) {
            int64_t n = TW - j < L ? TW - j : L;
            s_dout_block(d, u0 + 2 * j, u1 + 2 * j);
            if (n == L)
                for (int xi = 0; xi < NXI; xi++) memcpy(dd + xi * KT + j, d[xi], sizeof d[xi]);
            else
                for (int xi = 0; xi < NXI; xi++) memcpy(dd + xi * KT + j, d[xi], (size_t)n * sizeof(float));
        }
    }
}

static void s_dw_transform_task(void *arg, int64_t i0, int64_t i1, int tid)
{
    s_wino_t *p = arg;
    float *buf = p->buf + (size_t)tid * p->buf_floats;
    for (int64_t i = i0; i < i1; i++) {
        if (i < p->g.C)
            s_input_channel(p, i, buf);
        else
            s_dout_channel(p, i - p->g.C, buf);
    }
}

static void s_dw_gemm_task(void *arg, int64_t x0, int64_t x1, int tid)
{
    s_wino_t *p = arg;
    const s_geom_t *g = &p->g;
    int64_t Tb = (p->r1 - p->r0) * g->TW;
    for (int64_t xi = x0; xi < x1; xi++)
        nn_cpu_gemm1(p->packs + (size_t)tid * NN_GEMM_PACK_FLOATS, false, true, g->K, g->C, Tb, 1.0f,
                     p->D + xi * s_pitch(g->K * Tb), Tb, p->V + xi * s_pitch(g->C * Tb), Tb, p->beta, p->Mh + xi * g->K * g->C, g->C, NULL);
}

/* dw[k][c] += G^T Mh G, G^T = [1 .5 .5 0; 0 .5 -.5 0; 0 .5 .5 1] */
NN_CLONES static void s_dw_rows(const s_wino_t *p, int64_t k0, int64_t k1)
{
    int64_t C = p->g.C, KC = p->g.K * C;
    float m[NXI][L], t[4][3][L], y[9][L];
    for (int64_t k = k0; k < k1; k++)
        for (int64_t c0 = 0; c0 < C; c0 += L) {
            int64_t n = C - c0 < L ? C - c0 : L;
            const float *src = p->Mh + k * C + c0;
            if (n == L) {
                for (int xi = 0; xi < NXI; xi++) memcpy(m[xi], src + xi * KC, sizeof m[xi]);
            } else {
                memset(m, 0, sizeof m);
                for (int xi = 0; xi < NXI; xi++) memcpy(m[xi], src + xi * KC, (size_t)n * sizeof(float));
            }
            for (int a = 0; a < 4; a++) /* Mh G: combine columns */
                for (int l = 0; l < L; l++) {
                    float m0 = m[4 * a][l], m1 = m[4 * a + 1][l], m2 = m[4 * a + 2][l], m3 = m[4 * a + 3][l];
                    t[a][0][l] = m0 + 0.5f * (m1 + m2);
                    t[a][1][l] = 0.5f * (m1 - m2);
                    t[a][2][l] = 0.5f * (m1 + m2) + m3;
                }
            for (int x = 0; x < 3; x++) /* G^T (Mh G): combine rows */
                for (int l = 0; l < L; l++) {
                    float a = t[0][x][l], b = t[1][x][l], c = t[2][x][l], d = t[3][x][l];
                    y[x][l] = a + 0.5f * (b + c);
                    y[3 + x][l] = 0.5f * (b - c);
                    y[6 + x][l] = 0.5f * (b + c) + d;
                }
            float *dst = p->dw + (k * C + c0) * 9;
            for (int64_t l = 0; l < n; l++)
                for (int i = 0; i < 9; i++) dst[l * 9 + i] += y[i][l];
        }
}

static void s_dw_task(void *arg, int64_t k0, int64_t k1, int tid)
{
    s_dw_rows(arg, k0, k1);
}

/* scratch layout: Mh | V | D | per-thread rows */
/* Small problems: the bands are cut into DW_GROUPS fixed groups (by the band
 * count only) that run in parallel, each adding its bands in order into its own
 * Mh; the groups' Mh are then added in group order. */
#define DW_GROUPS 4

static int64_t s_dw_groups(const s_geom_t *g)
{
    int64_t items = g->B * g->nbands;
    return g->small ? (items < DW_GROUPS ? items : DW_GROUPS) : 1;
}

/* scratch layout: Mh (groups of them) | V | D | per-thread rows; small: Mh x groups | per thread (V | D | rows) */
static size_t s_dw_floats(const s_geom_t *g, int threads)
{
    size_t mh = (size_t)(NXI * g->K * g->C);
    if (g->small) return mh * (size_t)s_dw_groups(g) + (size_t)threads * (s_band_floats(g) + s_thread_floats(g));
    return mh + s_band_floats(g) + (size_t)threads * s_thread_floats(g);
}

static void s_dw_group_task(void *arg, int64_t g0, int64_t g1, int tid)
{
    const s_wino_t *p = arg;
    const s_geom_t *g = &p->g;
    int64_t items = g->B * g->nbands, groups = s_dw_groups(g);
    s_wino_t q = *p;
    q.V = p->V + (size_t)tid * (s_band_floats(g) + s_thread_floats(g));
    q.D = q.V + NXI * s_pitch(g->C * g->RB * g->TW);
    q.buf = q.D + NXI * s_pitch(g->K * g->RB * g->TW);
    for (int64_t grp = g0; grp < g1; grp++) {
        q.Mh = p->Mh + grp * NXI * g->K * g->C;
        int64_t i0 = items * grp / groups, i1 = items * (grp + 1) / groups;
        for (int64_t i = i0; i < i1; i++) {
            q.b = i / g->nbands;
            s_band(&q, i % g->nbands);
            q.beta = i > i0 ? 1.0f : 0.0f;
            s_dw_transform_task(&q, 0, g->C + g->K, 0);
            s_dw_gemm_task(&q, 0, NXI, tid);
        }
    }
}

static void s_dw_sum_task(void *arg, int64_t j0, int64_t j1, int tid)
{
    const s_wino_t *p = arg;
    const s_geom_t *g = &p->g;
    int64_t groups = s_dw_groups(g), n = NXI * g->K * g->C;
    for (int64_t grp = 1; grp < groups; grp++) {
        const float *src = p->Mh + grp * n;
        for (int64_t j = j0; j < j1; j++) p->Mh[j] += src[j];
    }
}

static void s_dw_run(nn_ctx_t *ctx, s_wino_t *p, float *scratch)
{
    const s_geom_t *g = &p->g;
    p->packs = ctx->packs; /* conv2d.c made sure of them */
    p->Mh = scratch;
    p->buf_floats = s_thread_floats(g);
    nn_cpu_blas_threads(1);
    if (g->small) {
        p->V = p->Mh + (size_t)s_dw_groups(g) * NXI * g->K * g->C;
        nn_cpu_parallel(ctx, s_dw_groups(g), 1, s_dw_group_task, p);
        nn_cpu_parallel(ctx, NXI * g->K * g->C, 4096, s_dw_sum_task, p);
        nn_cpu_parallel(ctx, g->K, 1, s_dw_task, p);
        return;
    }
    p->V = p->Mh + NXI * g->K * g->C;
    p->D = p->V + NXI * s_pitch(g->C * g->RB * g->TW);
    p->buf = p->D + NXI * s_pitch(g->K * g->RB * g->TW);
    for (p->b = 0; p->b < g->B; p->b++)
        for (int64_t band = 0; band < g->nbands; band++) {
            s_band(p, band);
            p->beta = p->b || band ? 1.0f : 0.0f;
            nn_cpu_parallel(ctx, g->C + g->K, 1, s_dw_transform_task, p);
            nn_cpu_parallel(ctx, NXI, 1, s_dw_gemm_task, p);
        }
    nn_cpu_parallel(ctx, g->K, 1, s_dw_task, p);
}

/* ---- entry points ---- */

bool nn_cpu_winograd_suits(const nn_conv2d_dims_t *d)
{
    /* the input gradient is a convolution padded by 2 - pad, so pads stop at 2 */
    return d->KH == 3 && d->KW == 3 && d->stride == 1 && d->pad_t <= 2 && d->pad_b <= 2 && d->pad_l <= 2 &&
           d->pad_r <= 2 && nn_conv2d_out_h(d) >= 1 && nn_conv2d_out_w(d) >= 1;
}

static void s_fwd_geom(s_geom_t *g, const nn_conv2d_dims_t *d)
{
    s_geom(g, d->B, d->C, d->H, d->W, d->OC, nn_conv2d_out_h(d), nn_conv2d_out_w(d), d->pad_t, d->pad_l);
}

/* the input gradient as a convolution of dout: in and out channels swap, pads become 2 - pad */
static void s_dinp_geom(s_geom_t *g, const nn_conv2d_dims_t *d)
{
    s_geom(g, d->B, d->OC, nn_conv2d_out_h(d), nn_conv2d_out_w(d), d->C, d->H, d->W, 2 - d->pad_t, 2 - d->pad_l);
}

size_t nn_cpu_winograd_floats(const nn_conv2d_dims_t *d, nn_wino_part_t part, int threads)
{
    s_geom_t g;
    if (part == NN_WINO_DINP)
        s_dinp_geom(&g, d);
    else
        s_fwd_geom(&g, d);
    return part == NN_WINO_DW ? s_dw_floats(&g, threads) : s_conv_floats(&g, threads);
}

void nn_cpu_winograd_forward(nn_ctx_t *ctx, float *scratch, float *out, const float *inp, const float *w,
                             const float *b, const nn_conv2d_dims_t *d)
{
    s_wino_t p = {.inp = inp, .out = out, .bias = b, .w = w, .K0 = d->OC, .C0 = d->C};
    s_fwd_geom(&p.g, d);
    s_conv_run(ctx, &p, scratch);
}

void nn_cpu_winograd_dinp(nn_ctx_t *ctx, float *scratch, float *dinp, const float *dout, const float *w,
                          const nn_conv2d_dims_t *d)
{
    s_wino_t p = {.inp = dout, .out = dinp, .w = w, .flip = true, .K0 = d->OC, .C0 = d->C};
    s_dinp_geom(&p.g, d);
    s_conv_run(ctx, &p, scratch);
}

void nn_cpu_winograd_dw(nn_ctx_t *ctx, float *scratch, float *dw, const float *dout, const float *inp,
                        const nn_conv2d_dims_t *d)
{
    s_wino_t p = {.inp = inp, .dout = dout, .dw = dw, .K0 = d->OC, .C0 = d->C};
    s_fwd_geom(&p.g, d);
    s_dw_run(ctx, &p, scratch);
}
