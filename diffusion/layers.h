/*
 * layers.h — the building blocks of the UNet, VAE and CLIP text encoder, each a
 * forward and (where training needs it) a backward function.
 *
 * Conventions (the same as nn/): outputs first, then inputs, then dimensions;
 * backward writes input gradients with "=" and accumulates parameter gradients
 * with "+="; a NULL input gradient skips that work. Base weights are frozen
 * (only LoRA adapters receive gradients) unless the part trains in full: then
 * sd_params_alloc_grads points every layer's dw/db into one gradient block and
 * each backward adds its weight gradients there (full fine-tuning).
 *
 * Plain layers (linear, conv, norms) take what their backward needs as explicit
 * arguments. Composite modules (attention, transformer blocks, ResNet blocks)
 * keep their saved tensors on run->tape during forward when one is given, and
 * pop them in backward in reverse order. Temporaries come from run->scratch and
 * are released before a function returns.
 */
#ifndef BOOTH_DIFFUSION_LAYERS_H
#define BOOTH_DIFFUSION_LAYERS_H

#include <stdbool.h>
#include <stdint.h>

#include "common/stack.h"
#include "diffusion/config.h"
#include "diffusion/params.h"
#include "diffusion/tape.h"
#include "nn/nn.h"

/* Called with a module's output during forward when set (tests and debugging
 * compare these against the reference's intermediates). Data is in the
 * context's memory space. */
typedef void (*sd_hook_fn)(void *user, const char *name, const float *data, int ndim, const int64_t *shape);

/* Everything a forward/backward call needs besides the module. */
typedef struct sd_run {
    nn_ctx_t *nn;
    bt_stack_t *scratch; /* temporaries, released before each call returns */
    sd_tape_t *tape;     /* non-NULL: save what backward needs */
    bool checkpoint;     /* gradient checkpointing: transformers keep little, recompute in backward (unet.c) */
    /* Checkpointing's refinements (unet.c). keep: during a checkpointed
     * forward (tape NULL), attention puts its output and log-sum-exp here (and
     * its q, k, v: sd_attention_kept), so that the recomputation need not redo
     * the attention itself. reuse: during that recomputation, attention takes
     * them from here (in forward order) instead, and the work whose output
     * backward does not need is skipped. */
    sd_tape_t *keep;
    struct sd_reuse *reuse;
    sd_hook_fn hook;
    void *hook_user;
} sd_run_t;

/* The tensors a recomputation takes over, in forward order. */
typedef struct sd_reuse {
    float **p;
    int n, next;
} sd_reuse_t;

/* Reports a tensor to run->hook (name from printf-style fmt); no-op without a hook. */
void sd_hook(const sd_run_t *r, const float *data, int ndim, const int64_t *shape, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* A LoRA adapter on a linear layer: y += scale * (alpha / rank) * B (A x). */
typedef struct sd_lora {
    float *A, *B;   /* [rank, in], [out, rank] */
    float *dA, *dB; /* gradients (+=), NULL when not training */
    int64_t rank;
    float alpha;
    float scale;    /* user's inference scale (1 in training) */
} sd_lora_t;

typedef struct sd_linear {
    sd_weight_t w; /* [out, in] */
    float *b;      /* [out] or NULL */
    float *dw, *db; /* their gradients (+=) when the layer trains in full, else NULL */
    int64_t in, out;
    sd_lora_t *lora; /* NULL: plain layer */
} sd_linear_t;

typedef struct sd_conv {
    sd_weight_t w; /* [out, in, k, k] */
    float *b;      /* [out] */
    float *dw, *db; /* their gradients (+=) when the layer trains in full, else NULL */
    int64_t in, out, k;
    int stride, pad_t, pad_b, pad_l, pad_r;
} sd_conv_t;

typedef struct sd_norm {
    float *w, *b; /* [C] */
    float *dw, *db; /* their gradients (+=) when the layer trains in full, else NULL */
    int64_t C, groups; /* groups 0: layer norm over C */
    float eps;
} sd_norm_t;

/* diffusers' Attention (UNet self/cross attention, VAE mid-block attention). */
typedef struct sd_attention {
    sd_linear_t to_q, to_k, to_v, to_out;
    int64_t heads, head_dim, query_dim, kv_dim;
    bool cross; /* keys/values come from the context */
} sd_attention_t;

typedef struct sd_ffn {
    sd_linear_t proj; /* GEGLU projection: [2 * inner, dim] */
    sd_linear_t out;  /* [dim, inner] */
    int64_t dim, inner;
} sd_ffn_t;

typedef struct sd_tblock {
    sd_norm_t norm1, norm2, norm3;
    sd_attention_t attn1, attn2;
    sd_ffn_t ff;
} sd_tblock_t;

/* Transformer2DModel: GN, proj_in, blocks, proj_out, + input. */
typedef struct sd_transformer {
    char name[128]; /* state-dict prefix, for hooks */
    sd_norm_t norm;
    bool linear_proj; /* proj_in/proj_out are Linear on tokens, else 1x1 convs */
    sd_linear_t proj_in_lin, proj_out_lin;
    sd_conv_t proj_in_conv, proj_out_conv;
    sd_tblock_t *blocks;
    int64_t n_blocks, channels;
} sd_transformer_t;

typedef struct sd_resnet {
    sd_norm_t norm1, norm2;
    sd_conv_t conv1, conv2;
    sd_linear_t time_proj; /* absent in the VAE (no weight) */
    bool has_shortcut;
    sd_conv_t shortcut; /* 1x1 when in != out */
    int64_t in, out;
    float output_scale; /* output = (x + h) / output_scale */
} sd_resnet_t;

/* Visits an attention module with its state-dict prefix (models offer this to
 * attach LoRA adapters). */
typedef void (*sd_attention_visit_fn)(void *user, const char *name, sd_attention_t *attn);

/* ---- building: registers parameters under `prefix` ---- */
void sd_linear_build(sd_linear_t *m, sd_params_t *ps, int64_t in, int64_t out, bool bias, const char *prefix);
void sd_conv_build(sd_conv_t *m, sd_params_t *ps, int64_t in, int64_t out, int64_t k, int stride, int pad,
                   const char *prefix);
void sd_norm_build(sd_norm_t *m, sd_params_t *ps, int64_t C, int64_t groups, float eps, const char *prefix);
void sd_attention_build(sd_attention_t *m, sd_params_t *ps, int64_t query_dim, int64_t kv_dim, int64_t heads,
                        int64_t head_dim, bool cross, bool qkv_bias, const char *prefix);
void sd_resnet_build(sd_resnet_t *m, sd_params_t *ps, int64_t in, int64_t out, int64_t temb_dim, int64_t groups,
                     float eps, float output_scale, const char *prefix);
/* Allocates the block array (free with sd_transformer_free). Returns 0 or BT_ENOMEM. */
int sd_transformer_build(sd_transformer_t *m, sd_params_t *ps, int64_t channels, int64_t heads, int64_t n_blocks,
                         int64_t ctx_dim, int64_t groups, bool linear_proj, bool only_cross, const char *prefix);
void sd_transformer_free(sd_transformer_t *m);

/* ---- plain layers ---- */

/* out[B*N, out] = x[B*N, in] W^T + b (+ LoRA), one product per batch item of N rows
 * (so an item's result does not depend on the batch it is in). */
int sd_linear_forward(sd_run_t *r, const sd_linear_t *m, float *out, const float *x, int64_t B, int64_t N);
/* dx (=, may be NULL); dw/db and LoRA dA/dB (+=) when the layer has gradient buffers. x is the
 * forward input (may be NULL when the layer has no weight gradient to compute). */
int sd_linear_backward(sd_run_t *r, const sd_linear_t *m, float *dx, const float *dy, const float *x, int64_t M);

/* out[B, out, OH, OW]; dims of the input are B, H, W. */
int sd_conv_forward(sd_run_t *r, const sd_conv_t *m, float *out, const float *x, int64_t B, int64_t H, int64_t W);
/* dx (=, may be NULL); dw/db (+=) when the layer trains, from x, the forward input (may be NULL
 * when it does not). */
int sd_conv_backward(sd_run_t *r, const sd_conv_t *m, float *dx, const float *dy, const float *x, int64_t B,
                     int64_t H, int64_t W);
int64_t sd_conv_out_size(const sd_conv_t *m, int64_t size);

/* Group norm over x[B, C, HW] (optionally followed by SiLU). mean/rstd [B*groups]
 * may be NULL (inference). */
int sd_group_norm_forward(sd_run_t *r, const sd_norm_t *m, float *out, float *mean, float *rstd, const float *x,
                          int64_t B, int64_t HW, bool silu);
int sd_group_norm_backward(sd_run_t *r, const sd_norm_t *m, float *dx, const float *dy, const float *x,
                           const float *mean, const float *rstd, int64_t B, int64_t HW, bool silu);
/* dx (=, may be NULL); the norm's dw/db (+=) when it trains. */
/* Layer norm over rows of x[N, C]. */
int sd_layer_norm_forward(sd_run_t *r, const sd_norm_t *m, float *out, float *mean, float *rstd, const float *x,
                          int64_t N);
int sd_layer_norm_backward(sd_run_t *r, const sd_norm_t *m, float *dx, const float *dy, const float *x,
                           const float *mean, const float *rstd, int64_t N);

/* ---- composite modules (use the tape) ---- */

/* x [B, N, query_dim]; ctx [B, T, kv_dim] for cross attention (NULL for self);
 * causal for CLIP. out [B, N, query_dim]. */
/* Tensors a checkpointed forward keeps for an attention (run->keep): its output
 * and log-sum-exp (2), and from 640 channels on its q, k and v too (5): there
 * recomputing them would cost 2 x 640+ multiply-adds per float kept, while at 320
 * channels, SD's 4096-token level, their memory matters more. */
int sd_attention_kept(const sd_attention_t *m);
/* Tests: the channel count from which q, k, v are kept (640; 0 for all). */
void sd_attention_test_keep_qkv_from(int64_t channels);
int sd_attention_forward(sd_run_t *r, const sd_attention_t *m, float *out, const float *x, const float *ctx,
                         int64_t B, int64_t N, int64_t T, bool causal);
/* dx (=); dctx (+=, may be NULL) for cross attention. */
int sd_attention_backward(sd_run_t *r, const sd_attention_t *m, float *dx, float *dctx, const float *dout,
                          int64_t B, int64_t N, int64_t T, bool causal);

/* x [B, C, H, W] -> out [B, C, H, W]; ctx [B, T, ctx_dim]. */
int sd_transformer_forward(sd_run_t *r, const sd_transformer_t *m, float *out, const float *x, const float *ctx,
                           int64_t B, int64_t H, int64_t W, int64_t T);
int sd_transformer_backward(sd_run_t *r, const sd_transformer_t *m, float *dx, float *dctx, const float *dout,
                            int64_t B, int64_t H, int64_t W, int64_t T);

/* x [B, in, H, W] -> out [B, out, H, W]; silu_temb [B, temb_dim] (SiLU already
 * applied) or NULL when the block has no time projection. */
int sd_resnet_forward(sd_run_t *r, const sd_resnet_t *m, float *out, const float *x, const float *silu_temb,
                      int64_t B, int64_t H, int64_t W);
/* dx (=, may be NULL); the block's weight gradients (+=) when it trains, and then the gradient of
 * silu_temb (dtemb +=, may be NULL): silu_temb is the forward's (needed when the block trains). */
int sd_resnet_backward(sd_run_t *r, const sd_resnet_t *m, float *dx, float *dtemb, const float *dout,
                       const float *silu_temb, int64_t B, int64_t H, int64_t W);

/* ---- helpers shared by the models ---- */
float *sd_scratch(sd_run_t *r, int64_t n); /* NULL + log line when out of memory */
/* A weight's n float32 values: its own storage, or a copy widened from 16 bits
 * into scratch (freed with the caller's scratch mark). NULL when out of memory. */
const float *sd_weight_f32(sd_run_t *r, const sd_weight_t *w, int64_t n);

#endif
