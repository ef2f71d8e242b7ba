/*
 * clip.c — CLIPTextModel: token + position embeddings, pre-LN transformer
 * layers with causal self-attention and a quick-GELU/GELU MLP, final layer norm.
 *
 * Per layer: x += out_proj(attn(LN1(x))); x += fc2(act(fc1(LN2(x)))).
 * No padding mask: as in Stable Diffusion, pad tokens are ordinary tokens.
 *
 * Training: LoRA adapters on the attention projections, or (full fine-tuning,
 * diffusers' train_dreambooth.py --train_text_encoder) every weight, the
 * embeddings included. A layer that trains in full recomputes the inputs of its
 * MLP's weight gradients (LN2's output, the activation) from what the tape
 * holds for the input gradients, so the tape is the same in both modes.
 */
#include "diffusion/clip.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/status.h"
#include "diffusion/run_macros.h"

static nn_act_t s_act(sd_act_t a)
{
    switch (a) {
    case SD_ACT_GELU: return NN_ACT_GELU;
    case SD_ACT_GELU_TANH: return NN_ACT_GELU_TANH;
    case SD_ACT_SILU: return NN_ACT_SILU;
    case SD_ACT_QUICK_GELU: break;
    }
    return NN_ACT_QUICK_GELU;
}

sd_clip_t *sd_clip_new(const sd_clip_config_t *cfg)
{
    sd_clip_t *c = bt_calloc(1, sizeof *c);
    if (!c) {
        BT_ERROR("text_encoder: out of memory");
        return NULL;
    }
    c->cfg = *cfg;
    sd_params_init(&c->params, "text_encoder");
    sd_params_t *ps = &c->params;
    int64_t C = cfg->hidden_size, L = cfg->num_layers;
    c->layers = bt_calloc((size_t)L, sizeof *c->layers);
    if (!c->layers) {
        BT_ERROR("text_encoder: out of memory for %lld layers", (long long)L);
        goto out_fail;
    }
    sd_params_add_weight(ps, &c->tok_emb, SD_INIT_NORMAL, 0.02f, 2, (int64_t[]){cfg->vocab_size, C},
                         "text_model.embeddings.token_embedding.weight");
    sd_params_grad_slot(ps, &c->dtok_emb);
    sd_params_add(ps, &c->pos_emb, SD_INIT_NORMAL, 0.01f, 2, (int64_t[]){cfg->max_positions, C},
                  "text_model.embeddings.position_embedding.weight");
    sd_params_grad_slot(ps, &c->dpos_emb);
    char p[2 * SD_NAME_MAX], name[3 * SD_NAME_MAX];
    for (int64_t i = 0; i < L; i++) {
        sd_clip_layer_t *l = &c->layers[i];
        snprintf(p, sizeof p, "text_model.encoder.layers.%lld", (long long)i);
        snprintf(name, sizeof name, "%s.layer_norm1", p);
        sd_norm_build(&l->ln1, ps, C, 0, cfg->layer_norm_eps, name);
        sd_attention_t *a = &l->attn;
        a->heads = cfg->num_heads;
        a->head_dim = C / cfg->num_heads;
        a->query_dim = a->kv_dim = C;
        snprintf(name, sizeof name, "%s.self_attn.q_proj", p);
        sd_linear_build(&a->to_q, ps, C, C, true, name);
        snprintf(name, sizeof name, "%s.self_attn.k_proj", p);
        sd_linear_build(&a->to_k, ps, C, C, true, name);
        snprintf(name, sizeof name, "%s.self_attn.v_proj", p);
        sd_linear_build(&a->to_v, ps, C, C, true, name);
        snprintf(name, sizeof name, "%s.self_attn.out_proj", p);
        sd_linear_build(&a->to_out, ps, C, C, true, name);
        snprintf(name, sizeof name, "%s.layer_norm2", p);
        sd_norm_build(&l->ln2, ps, C, 0, cfg->layer_norm_eps, name);
        snprintf(name, sizeof name, "%s.mlp.fc1", p);
        sd_linear_build(&l->fc1, ps, C, cfg->intermediate_size, true, name);
        snprintf(name, sizeof name, "%s.mlp.fc2", p);
        sd_linear_build(&l->fc2, ps, cfg->intermediate_size, C, true, name);
    }
    sd_norm_build(&c->final_ln, ps, C, 0, cfg->layer_norm_eps, "text_model.final_layer_norm");
    if (sd_params_check(ps)) goto out_fail;
    return c;
out_fail:
    sd_clip_destroy(&c);
    return NULL;
}

void sd_clip_destroy(sd_clip_t **pc)
{
    sd_clip_t *c = *pc;
    if (!c) return;
    sd_params_free(&c->params);
    free(c->layers);
    free(c);
    *pc = NULL;
}

void sd_clip_visit_attentions(sd_clip_t *c, sd_attention_visit_fn fn, void *user)
{
    char name[SD_NAME_MAX];
    for (int64_t i = 0; i < c->cfg.num_layers; i++) {
        snprintf(name, sizeof name, "text_model.encoder.layers.%lld.self_attn", (long long)i);
        fn(user, name, &c->layers[i].attn);
    }
}

static int64_t s_layers_run(const sd_clip_t *c, int clip_skip)
{
    int64_t n = c->cfg.num_layers - (clip_skip > 0 ? clip_skip : 0);
    return n < 0 ? 0 : n;
}

/* Saved per layer: x, LN1 stats, attention, x1, LN2 stats, fc1 output. */
static int s_layer_forward(sd_run_t *r, const sd_clip_layer_t *l, float *out, const float *x, int64_t B, int64_t T,
                           nn_act_t act)
{
    int rc = BT_OK;
    bt_stack_mark_t mk = bt_stack_mark(r->scratch);
    int64_t C = l->ln1.C, M = B * T, I = l->fc1.out;
    float *xs, *m1 = NULL, *s1 = NULL, *m2 = NULL, *s2 = NULL, *h, *a, *x1, *f, *g;
    if (r->tape) {
        if (!(xs = sd_tape_save(r->tape, r->nn, x, M * C))) {
            rc = BT_ENOMEM;
            goto out;
        }
        KEEP(m1, M);
        KEEP(s1, M);
    } else {
        xs = (float *)x;
    }
    ALLOC(h, M * C);
    ALLOC(a, M * C);
    TRY(sd_layer_norm_forward(r, &l->ln1, h, m1, s1, xs, M));
    TRY(sd_attention_forward(r, &l->attn, a, h, NULL, B, T, T, true));
    KEEP(x1, M * C);
    TRY(nn_add_forward(r->nn, x1, xs, a, M * C));
    if (r->tape) {
        KEEP(m2, M);
        KEEP(s2, M);
    }
    TRY(sd_layer_norm_forward(r, &l->ln2, h, m2, s2, x1, M));
    KEEP(f, M * I);
    TRY(sd_linear_forward(r, &l->fc1, f, h, B, T));
    ALLOC(g, M * I);
    TRY(nn_act_forward(r->nn, g, f, M * I, act));
    TRY(sd_linear_forward(r, &l->fc2, a, g, B, T));
    TRY(nn_add_forward(r->nn, out, x1, a, M * C));
out:
    bt_stack_reset(r->scratch, mk);
    return rc;
}

static int s_layer_backward(sd_run_t *r, const sd_clip_layer_t *l, float *dx, const float *dout, int64_t B,
                            int64_t T, nn_act_t act)
{
    int rc = BT_OK;
    bt_stack_mark_t mk = bt_stack_mark(r->scratch);
    int64_t C = l->ln1.C, M = B * T, I = l->fc1.out;
    float *f, *s2, *m2, *x1, *s1, *m1, *xs, *dg, *df, *dh, *d1, *dn, *gi = NULL, *hi = NULL;
    POP(f);
    POP(s2);
    POP(m2);
    POP(x1);
    ALLOC(dg, M * I);
    ALLOC(df, M * I);
    ALLOC(dh, M * C);
    ALLOC(d1, M * C);
    ALLOC(dn, M * C);
    if (l->fc2.dw) { /* fc2's input, act(f), recomputed for its weight gradient */
        ALLOC(gi, M * I);
        TRY(nn_act_forward(r->nn, gi, f, M * I, act));
    }
    TRY(sd_linear_backward(r, &l->fc2, dg, dout, gi, M));
    TRY(nn_act_backward(r->nn, df, dg, f, M * I, act));
    if (l->fc1.dw) { /* fc1's input, LN2(x1) */
        ALLOC(hi, M * C);
        TRY(sd_layer_norm_forward(r, &l->ln2, hi, NULL, NULL, x1, M));
    }
    TRY(sd_linear_backward(r, &l->fc1, dh, df, hi, M));
    TRY(sd_layer_norm_backward(r, &l->ln2, d1, dh, x1, m2, s2, M));
    TRY(nn_axpy(r->nn, d1, dout, M * C, 1.0f));
    TRY(sd_attention_backward(r, &l->attn, dn, NULL, d1, B, T, T, true));
    POP(s1);
    POP(m1);
    POP(xs);
    if (dx) {
        TRY(sd_layer_norm_backward(r, &l->ln1, dx, dn, xs, m1, s1, M));
        TRY(nn_axpy(r->nn, dx, d1, M * C, 1.0f));
    } else if (l->ln1.dw) {
        TRY(sd_layer_norm_backward(r, &l->ln1, NULL, dn, xs, m1, s1, M));
    }
out:
    bt_stack_reset(r->scratch, mk);
    return rc;
}

int sd_clip_forward(sd_run_t *r, const sd_clip_t *c, float *out, float *pooled, const int32_t *ids, int64_t B,
                    int64_t T, int clip_skip)
{
    int rc = BT_OK;
    bt_stack_mark_t mk = bt_stack_mark(r->scratch);
    int64_t C = c->cfg.hidden_size, M = B * T, L = s_layers_run(c, clip_skip);
    nn_act_t act = s_act(c->cfg.act);
    if (T > c->cfg.max_positions || T < 1) {
        BT_ERROR("text encoder: %lld tokens (the model has %lld positions)", (long long)T,
                 (long long)c->cfg.max_positions);
        return BT_EINVAL;
    }
    int32_t *dids = (int32_t *)sd_scratch(r, M); /* same size as floats */
    float *x, *y, *pos, *mean = NULL, *rstd = NULL, *xs;
    if (!dids) {
        rc = BT_ENOMEM;
        goto out;
    }
    TRY(nn_upload(r->nn, dids, ids, (size_t)M * sizeof(int32_t)));
    ALLOC(x, M * C);
    ALLOC(y, M * C);
    ALLOC(pos, T * C);
    if (c->tok_emb.f32) {
        TRY(nn_embedding_forward(r->nn, x, dids, c->tok_emb.f32, M, C, c->cfg.vocab_size));
    } else { /* 16-bit table: widen just the rows the ids pick */
        for (int64_t i = 0; i < M; i++) {
            if (ids[i] < 0 || ids[i] >= c->cfg.vocab_size) {
                BT_ERROR("text encoder: token id %d at position %lld is outside the vocabulary of %lld", ids[i],
                         (long long)i, (long long)c->cfg.vocab_size);
                rc = BT_EINVAL;
                goto out;
            }
            TRY(nn_widen(r->nn, x + i * C, c->tok_emb.h + (int64_t)ids[i] * C, c->tok_emb.dtype, C));
        }
    }
    for (int64_t b = 0; b < B; b++) TRY(nn_add_forward(r->nn, x + b * T * C, x + b * T * C, c->pos_emb, T * C));
    sd_hook(r, x, 3, (int64_t[]){B, T, C}, "hidden_states.0");
    for (int64_t i = 0; i < L; i++) {
        TRY(s_layer_forward(r, &c->layers[i], y, x, B, T, act));
        float *sw = x;
        x = y;
        y = sw;
        sd_hook(r, x, 3, (int64_t[]){B, T, C}, "hidden_states.%lld", (long long)(i + 1));
    }
    xs = x;
    if (r->tape) {
        if (!(xs = sd_tape_save(r->tape, r->nn, x, M * C)) || !(mean = sd_tape_alloc(r->tape, M)) ||
            !(rstd = sd_tape_alloc(r->tape, M))) {
            rc = BT_ENOMEM;
            goto out;
        }
    }
    TRY(sd_layer_norm_forward(r, &c->final_ln, out, mean, rstd, xs, M));
    if (pooled)
        for (int64_t b = 0; b < B; b++) {
            const int32_t *row = ids + b * T;
            int64_t at = 0;
            if (c->cfg.eos_token_id == 2) { /* legacy configs: argmax of the ids (the first 49407) */
                for (int64_t t = 1; t < T; t++)
                    if (row[t] > row[at]) at = t;
            } else {
                for (at = 0; at < T - 1 && row[at] != c->cfg.eos_token_id; at++) {
                }
            }
            TRY(nn_download(r->nn, pooled + b * C, out + (b * T + at) * C, (size_t)C * sizeof(float)));
        }
out:
    bt_stack_reset(r->scratch, mk);
    return rc;
}

int sd_clip_backward(sd_run_t *r, const sd_clip_t *c, const float *dout, const int32_t *ids, int64_t B, int64_t T,
                     int clip_skip)
{
    int rc = BT_OK;
    bt_stack_mark_t mk = bt_stack_mark(r->scratch);
    int64_t C = c->cfg.hidden_size, M = B * T, L = s_layers_run(c, clip_skip);
    nn_act_t act = s_act(c->cfg.act);
    bool embeddings = c->dtok_emb && c->dpos_emb; /* the encoder trains in full: the embeddings too */
    float *rstd, *mean, *xs, *dx, *dy;
    int32_t *dids;
    POP(rstd);
    POP(mean);
    POP(xs);
    ALLOC(dx, M * C);
    ALLOC(dy, M * C);
    TRY(sd_layer_norm_backward(r, &c->final_ln, dx, dout, xs, mean, rstd, M));
    for (int64_t i = L - 1; i >= 0; i--) {
        /* frozen embeddings: layer 0 needs no input gradient */
        TRY(s_layer_backward(r, &c->layers[i], i > 0 || embeddings ? dy : NULL, dx, B, T, act));
        sd_tape_trim(r->tape);
        float *sw = dx;
        dx = dy;
        dy = sw;
    }
    if (!embeddings) goto out;
    if (!ids) {
        BT_ERROR("text encoder backward: the embeddings train, but no token ids were given");
        rc = BT_EINTERNAL;
        goto out;
    }
    /* dx: the gradient of x = token_embedding[ids] + position_embedding[0..T) */
    for (int64_t b = 0; b < B; b++) TRY(nn_axpy(r->nn, c->dpos_emb, dx + b * T * C, T * C, 1.0f));
    if (!(dids = (int32_t *)sd_scratch(r, M))) { /* same size as floats */
        rc = BT_ENOMEM;
        goto out;
    }
    TRY(nn_upload(r->nn, dids, ids, (size_t)M * sizeof(int32_t)));
    TRY(nn_embedding_backward(r->nn, c->dtok_emb, dx, dids, M, C, c->cfg.vocab_size));
out:
    bt_stack_reset(r->scratch, mk);
    return rc;
}

sd_clip_t *sd_clip_load(nn_ctx_t *ctx, const char *dir, sd_store_t store)
{
    char path[4096];
    sd_clip_config_t cfg;
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (sd_clip_config_load(path, &cfg)) return NULL;
    sd_clip_t *c = sd_clip_new(&cfg);
    if (c && sd_params_load_model(&c->params, ctx, dir, "model", store))
        sd_clip_destroy(&c);
    return c;
}
