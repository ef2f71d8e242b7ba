/*
 * clip.h — the CLIP text encoder (transformers' CLIPTextModel) that turns token
 * ids into Stable Diffusion's encoder_hidden_states; forward, clip-skip, and the
 * backward that text-encoder training needs: LoRA gradients, or (full
 * fine-tuning, once sd_params_alloc_grads(&clip->params) has pointed every
 * gradient slot into one block) the gradient of every weight.
 */
#ifndef BOOTH_DIFFUSION_CLIP_H
#define BOOTH_DIFFUSION_CLIP_H

#include "diffusion/config.h"
#include "diffusion/layers.h"

typedef struct sd_clip_layer {
    sd_norm_t ln1, ln2;
    sd_attention_t attn; /* q_proj/k_proj/v_proj/out_proj, causal */
    sd_linear_t fc1, fc2;
} sd_clip_layer_t;

typedef struct sd_clip {
    sd_clip_config_t cfg;
    sd_params_t params;
    sd_weight_t tok_emb; /* [vocab, C] (16-bit like the weight matrices when they are) */
    float *pos_emb;      /* [max_positions, C] */
    float *dtok_emb, *dpos_emb; /* their gradients (+=) when the encoder trains in full, else NULL */
    sd_clip_layer_t *layers;
    sd_norm_t final_ln;
} sd_clip_t;

sd_clip_t *sd_clip_new(const sd_clip_config_t *cfg);
void sd_clip_destroy(sd_clip_t **c);
/* config.json + weights of a model folder's text_encoder/ directory, the weight matrices kept as
 * `store` says (params.h); NULL on error (logged). */
sd_clip_t *sd_clip_load(nn_ctx_t *ctx, const char *dir, sd_store_t store);

/* ids [B, T] (host, T <= max_positions) -> out [B, T, C] = final_layer_norm of the
 * last hidden state, or with clip_skip k > 0 of hidden_states[-(k+1)] (the
 * output of layer L-k), as diffusers' pipelines do. pooled [B, C] (host, may be
 * NULL): out at the EOS position (argmax of ids when eos_token_id == 2). */
int sd_clip_forward(sd_run_t *r, const sd_clip_t *c, float *out, float *pooled, const int32_t *ids, int64_t B,
                    int64_t T, int clip_skip);
/* LoRA gradients (+=) from dout [B, T, C], and every weight's (+=) when the encoder trains in full
 * (then the layers clip_skip leaves out get none, as they took no part); needs the tape of the
 * matching forward and its ids [B, T] (host: the token embedding's gradient is a scatter by id). */
int sd_clip_backward(sd_run_t *r, const sd_clip_t *c, const float *dout, const int32_t *ids, int64_t B, int64_t T,
                     int clip_skip);

/* Visits each layer's attention ("text_model.encoder.layers.3.self_attn"). */
void sd_clip_visit_attentions(sd_clip_t *c, sd_attention_visit_fn fn, void *user);

#endif
