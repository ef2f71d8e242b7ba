/*
 * convert.c — 16-bit weights widened to float32 on the CPU.
 *
 * Frozen weights stay resident in the snapshot's fp16 or bf16 and are widened
 * into scratch right before a product uses them, so this runs once per weight
 * per layer call: about 1.7 G values per SD 1.5 training step with gradient
 * checkpointing. It is memory-bound; F16C converts 8 halves per instruction
 * (AVX2 machines all have it), bf16 is a 16-bit shift the compiler vectorises.
 * Every fp16 and bf16 value is exactly a float32 value, so the result does not
 * depend on the path: the generic C conversion (common/half.c) gives the same
 * bits, which the tests check on all 65,536 patterns.
 */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("vect-cost-model=dynamic")
#endif

#include <stdatomic.h>

#include "common/half.h"
#include "common/log.h"
#include "common/status.h"
#include "nn/cpu/cpu.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define S_X86 1
#else
#define S_X86 0
#endif

typedef struct {
    float *dst;
    const uint16_t *src;
} s_args_t;

#if S_X86
__attribute__((target("avx2,f16c"))) static void s_f16_f16c(void *arg, int64_t i0, int64_t i1, int tid)
{
    (void)tid;
    s_args_t *a = arg;
    int64_t i = i0;
    for (; i + 8 <= i1; i += 8)
        _mm256_storeu_ps(a->dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a->src + i))));
    for (; i < i1; i++) a->dst[i] = bt_f16_to_f32(a->src[i]);
}
#endif

static void s_f16_generic(void *arg, int64_t i0, int64_t i1, int tid)
{
    (void)tid;
    s_args_t *a = arg;
    for (int64_t i = i0; i < i1; i++) a->dst[i] = bt_f16_to_f32(a->src[i]);
}

NN_CLONES static void s_bf16(void *arg, int64_t i0, int64_t i1, int tid)
{
    (void)tid;
    s_args_t *a = arg;
    uint32_t *restrict d = (uint32_t *)(a->dst + i0);
    const uint16_t *restrict s = a->src + i0;
    for (int64_t i = 0; i < i1 - i0; i++) d[i] = (uint32_t)s[i] << 16;
    /* NaNs stay NaNs (bf16 has float32's exponent): nothing to quiet */
}

static atomic_int s_forced; /* nn_cpu_widen_kernels(); 0: none */

static int s_which(void)
{
#if S_X86
#if defined(__clang__) && __clang_major__ < 15 /* clang 14 does not know "f16c" here: every AVX2 CPU has it */
    if (atomic_load(&s_forced) != 1 && __builtin_cpu_supports("avx2")) return 2;
#else
    if (atomic_load(&s_forced) != 1 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c")) return 2;
#endif
#endif
    return 1;
}

int nn_cpu_widen_kernels(int which)
{
    atomic_store(&s_forced, which);
    return s_which();
}

int nn_cpu_widen(nn_ctx_t *ctx, float *dst, const void *src, nn_dtype_t dtype, int64_t n)
{
    if (n < 0 || (dtype != NN_F16 && dtype != NN_BF16)) {
        BT_ERROR("widen: bad arguments (dtype %d, n %lld)", (int)dtype, (long long)n);
        return BT_EINVAL;
    }
    s_args_t a = {dst, src};
    bt_task_fn fn = dtype == NN_BF16 ? s_bf16 : s_f16_generic;
#if S_X86
    if (dtype == NN_F16 && s_which() == 2) fn = s_f16_f16c;
#endif
    nn_cpu_parallel(ctx, n, 1 << 16, fn, &a);
    return BT_OK;
}
