/*
 * ops_cpu.c — the CPU backend's table and its memory functions.
 */
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "common/alloc.h"
#include "nn/cpu/cpu.h"

void *nn_cpu_alloc(nn_ctx_t *ctx, size_t bytes)
{
    (void)ctx;
    size_t size = (bytes + 63) & ~(size_t)63;
    void *p = aligned_alloc(64, size ? size : 64);
    if (!p) bt_alloc_failed("a tensor (nn_alloc)", size); /* every failure says what failed */
    return p;
}

void nn_cpu_free(nn_ctx_t *ctx, void *p)
{
    (void)ctx;
    free(p);
}

int nn_cpu_copy(nn_ctx_t *ctx, void *dst, const void *src, size_t bytes)
{
    (void)ctx;
    if (bytes) memmove(dst, src, bytes);
    return BT_OK;
}

int nn_cpu_sync(nn_ctx_t *ctx)
{
    (void)ctx;
    return BT_OK;
}

const nn_ops_t nn_ops_cpu = {
    .name = "cpu",
    .alloc = nn_cpu_alloc,
    .free = nn_cpu_free,
    .upload = nn_cpu_copy,
    .download = nn_cpu_copy,
    .copy = nn_cpu_copy,
    .sync = nn_cpu_sync,
    .widen = nn_cpu_widen,
    .fill = nn_cpu_fill,
    .scale = nn_cpu_scale,
    .axpy = nn_cpu_axpy,
    .add_forward = nn_cpu_add_forward,
    .add_backward = nn_cpu_add_backward,
    .add_channel_bias_forward = nn_cpu_add_channel_bias_forward,
    .add_channel_bias_backward = nn_cpu_add_channel_bias_backward,
    .concat_channels = nn_cpu_concat_channels,
    .split_channels = nn_cpu_split_channels,
    .transpose = nn_cpu_transpose,
    .upsample_nearest_forward = nn_cpu_upsample_nearest_forward,
    .upsample_nearest_backward = nn_cpu_upsample_nearest_backward,
    .clamp = nn_cpu_clamp,
    .matmul = nn_cpu_matmul,
    .linear_forward = nn_cpu_linear_forward,
    .linear_backward = nn_cpu_linear_backward,
    .conv2d_forward = nn_cpu_conv2d_forward,
    .conv2d_backward = nn_cpu_conv2d_backward,
    .group_norm_forward = nn_cpu_group_norm_forward,
    .group_norm_backward = nn_cpu_group_norm_backward,
    .layer_norm_forward = nn_cpu_layer_norm_forward,
    .layer_norm_backward = nn_cpu_layer_norm_backward,
    .act_forward = nn_cpu_act_forward,
    .act_backward = nn_cpu_act_backward,
    .geglu_forward = nn_cpu_geglu_forward,
    .geglu_backward = nn_cpu_geglu_backward,
    .softmax_forward = nn_cpu_softmax_forward,
    .softmax_backward = nn_cpu_softmax_backward,
    .attention_forward = nn_cpu_attention_forward,
    .attention_backward = nn_cpu_attention_backward,
    .embedding_forward = nn_cpu_embedding_forward,
    .embedding_backward = nn_cpu_embedding_backward,
    .timestep_embedding_forward = nn_cpu_timestep_embedding_forward,
    .timestep_embedding_backward = nn_cpu_timestep_embedding_backward,
    .mse_forward = nn_cpu_mse_forward,
    .mse_backward = nn_cpu_mse_backward,
    .sum_squares = nn_cpu_sum_squares,
    .adamw_step = nn_cpu_adamw_step,
};
