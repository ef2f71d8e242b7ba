/*
 * blas.c — OpenBLAS: choosing its kernels, its thread count, and the sgemm
 * wrappers the matrix products fall back to where booth's own kernel (gemm.c)
 * does not run (no AVX-512, or BOOTH_GEMM_KERNELS=openblas).
 *
 * OpenBLAS 0.3.21 (Debian 12) does not know recent Xeons (e.g. family 6 model
 * 207) and silently uses its generic "Prescott" SSE3 kernels there: 64 GFLOP/s
 * instead of 310 on two cores. OPENBLAS_CORETYPE fixes that, but OpenBLAS reads
 * it while the library is loaded, before main() runs; so nn_process_init() sets
 * it (and OPENBLAS_NUM_THREADS=1, see there) and re-executes the program once.
 *
 * Threads: OpenBLAS always runs single-threaded. Its own worker threads would
 * spin on sched_yield between calls and fight booth's pool for the same cores;
 * instead nn_cpu_sgemm_mt() cuts big products into fixed blocks of 256 output
 * rows (or columns) and runs them on booth's pool. The blocks depend only on the
 * dimensions, so every output element is computed by the same call whatever the
 * thread count.
 */
#include <cblas.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "common/log.h"
#include "common/status.h"
#include "nn/backend.h"
#include "nn/cpu/cpu.h"

/* Declared by OpenBLAS's cblas.h; repeated here for BLAS headers that lack them. */
extern char *openblas_get_corename(void);
extern char *openblas_get_config(void);
extern void openblas_set_num_threads(int num_threads);
extern int openblas_get_num_threads(void);

static bool s_in_list(const char *name, const char *const *list)
{
    for (; *list; list++)
        if (!strcasecmp(name, *list)) return true;
    return false;
}

/* The OpenBLAS kernels this CPU should use, or NULL when its choice is fine (or
 * the user made it with OPENBLAS_CORETYPE). */
static const char *s_wanted_core(void)
{
    if (getenv("OPENBLAS_CORETYPE")) return NULL; /* the user chose */
    __builtin_cpu_init();
    static const char *const avx512_cores[] = {"SkylakeX", "Cooperlake", "SapphireRapids", NULL};
    static const char *const avx2_cores[] = {"Haswell", "Zen", "SkylakeX", "Cooperlake", "SapphireRapids", NULL};
    const char *want;
    const char *const *good;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")) {
        want = "SkylakeX";
        good = avx512_cores;
    } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        want = "Haswell";
        good = avx2_cores;
    } else {
        return NULL;
    }
    const char *core = openblas_get_corename();
    return !core || s_in_list(core, good) ? NULL : want;
}

void nn_process_init(int argc, char **argv)
{
    (void)argc;
    /* OpenBLAS starts one thread per core when it is loaded, and after start-up
     * (and after every multi-threaded call) they spin on sched_yield for a while:
     * long enough to halve the speed of booth's pool on short runs (a small
     * convolution measured 0.9 ms without them, 1.7 ms with). booth never runs
     * OpenBLAS multi-threaded, so it asks for none of them. */
    const char *want = s_wanted_core();
    bool threads = openblas_get_num_threads() > 1;
    if (!want && !threads) return;
    if (getenv("BOOTH_BLAS_REEXEC")) {
        if (want)
            BT_WARN("OpenBLAS still uses its '%s' kernels; set OPENBLAS_CORETYPE=%s for full speed",
                    openblas_get_corename(), want);
        return;
    }
    if (want) setenv("OPENBLAS_CORETYPE", want, 1);
    if (threads) setenv("OPENBLAS_NUM_THREADS", "1", 1);
    setenv("BOOTH_BLAS_REEXEC", "1", 1);
    fflush(NULL);
    execv("/proc/self/exe", argv);
    BT_WARN("re-executing with OPENBLAS_CORETYPE=%s OPENBLAS_NUM_THREADS=1 failed: %s", want ? want : "(unset)",
            strerror(errno));
}

const char *nn_blas_info(void)
{
    static char buf[256];
    snprintf(buf, sizeof buf, "%s (kernels: %s)", openblas_get_config(), openblas_get_corename());
    return buf;
}

static int s_blas_threads = -1;

void nn_cpu_blas_threads(int n)
{
    if (n == s_blas_threads) return;
    openblas_set_num_threads(n);
    s_blas_threads = n;
}

int nn_cpu_sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float *a,
                 int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc)
{
    if (M < 0 || N < 0 || K < 0 || M > INT_MAX || N > INT_MAX || K > INT_MAX || lda > INT_MAX || ldb > INT_MAX ||
        ldc > INT_MAX) {
        BT_ERROR("sgemm: dimensions %lld x %lld x %lld exceed the BLAS interface", (long long)M, (long long)N,
                 (long long)K);
        return BT_EINVAL;
    }
    if (M == 0 || N == 0) return BT_OK;
    if (K == 0) { /* BLAS leaves c alone when alpha*op(a)op(b) is empty except for beta */
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) c[i * ldc + j] = beta == 0 ? 0 : beta * c[i * ldc + j];
        return BT_OK;
    }
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, (int)M,
                (int)N, (int)K, alpha, a, (int)lda, b, (int)ldb, beta, c, (int)ldc);
    return BT_OK;
}

typedef struct {
    bool ta, tb, split_m;
    int64_t M, N, K, lda, ldb, ldc;
    float alpha, beta;
    const float *a, *b;
    float *c;
    int rc;
} s_gemm_t;

#define GEMM_BLOCK 256

static void s_gemm_task(void *arg, int64_t i0, int64_t i1, int tid)
{
    s_gemm_t *g = arg;
    for (int64_t i = i0; i < i1; i++) {
        int64_t o = i * GEMM_BLOCK, len;
        int rc;
        if (g->split_m) {
            len = g->M - o < GEMM_BLOCK ? g->M - o : GEMM_BLOCK;
            const float *a = g->ta ? g->a + o : g->a + o * g->lda;
            rc = nn_cpu_sgemm(g->ta, g->tb, len, g->N, g->K, g->alpha, a, g->lda, g->b, g->ldb, g->beta,
                              g->c + o * g->ldc, g->ldc);
        } else {
            len = g->N - o < GEMM_BLOCK ? g->N - o : GEMM_BLOCK;
            const float *b = g->tb ? g->b + o * g->ldb : g->b + o;
            rc = nn_cpu_sgemm(g->ta, g->tb, g->M, len, g->K, g->alpha, g->a, g->lda, b, g->ldb, g->beta, g->c + o,
                              g->ldc);
        }
        if (rc) g->rc = rc;
    }
}

int nn_cpu_sgemm_mt(nn_ctx_t *ctx, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                    const float *a, int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc)
{
    nn_cpu_blas_threads(1);
    s_gemm_t g = {.ta = trans_a, .tb = trans_b, .split_m = M >= N, .M = M, .N = N, .K = K, .lda = lda, .ldb = ldb,
                  .ldc = ldc, .alpha = alpha, .beta = beta, .a = a, .b = b, .c = c};
    int64_t blocks = ((g.split_m ? M : N) + GEMM_BLOCK - 1) / GEMM_BLOCK;
    if (blocks <= 1) return nn_cpu_sgemm(trans_a, trans_b, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc);
    nn_cpu_parallel(ctx, blocks, 1, s_gemm_task, &g);
    return g.rc;
}
