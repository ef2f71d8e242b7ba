/*
 * unet.c — UNet2DConditionModel: build, forward, backward.
 *
 * Forward (diffusers' order): time embedding; conv_in; down blocks of
 * (resnet, transformer) x layers then a stride-2 conv, every output pushed on a
 * skip stack (conv_in's first); mid block; up blocks of (concat skip, resnet,
 * transformer) x (layers + 1) then nearest-2x + conv (to the next skip's size, so
 * odd latent sizes work); GN, SiLU, conv_out.
 *
 * Backward walks the same path in reverse. Skip gradients are kept until the
 * down path reaches the tensor they belong to. Nothing upstream of the first
 * trainable (attention) module computes an input gradient.
 *
 * Gradient checkpointing recomputes only what is cheap to recompute and costly
 * to keep: each transformer keeps its input and, from its attentions, the
 * output and log-sum-exp (and q, k, v from 640 channels: sd_attention_kept),
 * and re-runs itself during backward without the attention core and without
 * the work whose output the backward does not pop (the last block's FFN
 * output, proj_out, the residual). Norm outputs and the FFN's GEGLU input (8
 * floats a channel) are what it drops. ResNets are not checkpointed (they keep
 * two tensors; re-running one costs a 3x3 convolution). Measured in
 * docs/BENCHMARKS.md: SD 1.5 at 512 px, about +10 % time for a sixth less peak
 * memory.
 */
#include "diffusion/unet.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/status.h"
#include "diffusion/run_macros.h"

#define MAX_SKIPS (1 + SD_MAX_BLOCKS * (SD_MAX_LAYERS + 1))

/* ------------------------------------------------------------------- build */

sd_unet_t *sd_unet_new(const sd_unet_config_t *cfg)
{
    sd_unet_t *u = bt_calloc(1, sizeof *u);
    if (!u) {
        BT_ERROR("unet: out of memory");
        return NULL;
    }
    u->cfg = *cfg;
    sd_params_init(&u->params, "unet");
    sd_params_t *ps = &u->params;
    const sd_unet_config_t *c = &u->cfg;
    char name[2 * SD_NAME_MAX];
    int n = c->n_blocks;
    int64_t c0 = c->block_out_channels[0], td = c->time_embed_dim, G = c->norm_num_groups;
    for (int i = 0; i < n; i++)
        if (c->layers_per_block[i] + 1 > SD_MAX_LAYERS) {
            BT_ERROR("unet: %lld layers per block (at most %d supported)", (long long)c->layers_per_block[i],
                     SD_MAX_LAYERS - 1);
            goto out_fail;
        }
    sd_conv_build(&u->conv_in, ps, c->in_channels, c0, c->conv_in_kernel, 1, (int)(c->conv_in_kernel - 1) / 2,
                  "conv_in");
    sd_linear_build(&u->time_l1, ps, c0, td, true, "time_embedding.linear_1");
    sd_linear_build(&u->time_l2, ps, td, td, true, "time_embedding.linear_2");

    int64_t ch = c0;
    for (int i = 0; i < n; i++) {
        sd_unet_block_t *b = &u->down[i];
        int64_t out = c->block_out_channels[i];
        b->cross = c->down_cross[i];
        b->n_layers = c->layers_per_block[i];
        b->out_channels = out;
        for (int64_t j = 0; j < b->n_layers; j++) {
            snprintf(name, sizeof name, "down_blocks.%d.resnets.%lld", i, (long long)j);
            sd_resnet_build(&b->resnets[j], ps, j == 0 ? ch : out, out, td, G, c->norm_eps, 1.0f, name);
            if (b->cross) {
                snprintf(name, sizeof name, "down_blocks.%d.attentions.%lld", i, (long long)j);
                if (sd_transformer_build(&b->attns[j], ps, out, c->heads[i], c->transformer_layers[i],
                                         c->cross_attention_dim[i], G, c->use_linear_projection,
                                         c->only_cross_attention[i], name))
                    goto out_fail;
            }
        }
        b->has_sampler = i < n - 1;
        if (b->has_sampler) {
            snprintf(name, sizeof name, "down_blocks.%d.downsamplers.0.conv", i);
            sd_conv_build(&b->sampler, ps, out, out, 3, 2, (int)c->downsample_padding, name);
            if (c->downsample_padding == 0) { /* diffusers pads right and bottom, then convolves unpadded */
                b->sampler.pad_b = b->sampler.pad_r = 1;
            }
        }
        ch = out;
    }
    int64_t cl = c->block_out_channels[n - 1];
    if (c->has_mid) {
        sd_resnet_build(&u->mid_res[0], ps, cl, cl, td, G, c->norm_eps, c->mid_block_scale_factor,
                        "mid_block.resnets.0");
        if (c->mid_cross &&
            sd_transformer_build(&u->mid_attn, ps, cl, c->heads[n - 1], c->transformer_layers[n - 1],
                                 c->cross_attention_dim[n - 1], G, c->use_linear_projection,
                                 c->mid_only_cross_attention, "mid_block.attentions.0"))
            goto out_fail;
        sd_resnet_build(&u->mid_res[1], ps, cl, cl, td, G, c->norm_eps, c->mid_block_scale_factor,
                        "mid_block.resnets.1");
    }
    int64_t prev = cl;
    for (int i = 0; i < n; i++) {
        sd_unet_block_t *b = &u->up[i];
        int rev = n - 1 - i; /* this up block mirrors down block rev */
        int64_t out = c->block_out_channels[rev];
        int64_t in = c->block_out_channels[rev > 0 ? rev - 1 : 0];
        b->cross = c->up_cross[i];
        b->n_layers = c->layers_per_block[rev] + 1;
        b->out_channels = out;
        for (int64_t j = 0; j < b->n_layers; j++) {
            int64_t skip = j == b->n_layers - 1 ? in : out;
            int64_t res_in = j == 0 ? prev : out;
            snprintf(name, sizeof name, "up_blocks.%d.resnets.%lld", i, (long long)j);
            sd_resnet_build(&b->resnets[j], ps, res_in + skip, out, td, G, c->norm_eps, 1.0f, name);
            if (b->cross) {
                snprintf(name, sizeof name, "up_blocks.%d.attentions.%lld", i, (long long)j);
                if (sd_transformer_build(&b->attns[j], ps, out, c->heads[rev], c->transformer_layers[rev],
                                         c->cross_attention_dim[rev], G, c->use_linear_projection,
                                         c->only_cross_attention[rev], name))
                    goto out_fail;
            }
        }
        b->has_sampler = i < n - 1;
        if (b->has_sampler) {
            snprintf(name, sizeof name, "up_blocks.%d.upsamplers.0.conv", i);
            sd_conv_build(&b->sampler, ps, out, out, 3, 1, 1, name);
        }
        prev = out;
    }
    sd_norm_build(&u->norm_out, ps, c0, G, c->norm_eps, "conv_norm_out");
    sd_conv_build(&u->conv_out, ps, c0, c->out_channels, c->conv_out_kernel, 1, (int)(c->conv_out_kernel - 1) / 2,
                  "conv_out");
    if (sd_params_check(ps)) goto out_fail;
    return u;
out_fail:
    sd_unet_destroy(&u);
    return NULL;
}

void sd_unet_destroy(sd_unet_t **pu)
{
    sd_unet_t *u = *pu;
    if (!u) return;
    sd_params_free(&u->params); /* first: it clears slots inside the transformer blocks */
    for (int i = 0; i < SD_MAX_BLOCKS; i++)
        for (int j = 0; j < SD_MAX_LAYERS; j++) {
            sd_transformer_free(&u->down[i].attns[j]);
            sd_transformer_free(&u->up[i].attns[j]);
        }
    sd_transformer_free(&u->mid_attn);
    free(u);
    *pu = NULL;
}

void sd_unet_visit_attentions(sd_unet_t *u, sd_attention_visit_fn fn, void *user)
{
    char name[2 * SD_NAME_MAX];
    const sd_transformer_t *list[SD_MAX_BLOCKS * SD_MAX_LAYERS * 2 + 1];
    int n = 0;
    for (int i = 0; i < u->cfg.n_blocks; i++)
        if (u->down[i].cross)
            for (int64_t j = 0; j < u->down[i].n_layers; j++) list[n++] = &u->down[i].attns[j];
    if (u->cfg.has_mid && u->cfg.mid_cross) list[n++] = &u->mid_attn;
    for (int i = 0; i < u->cfg.n_blocks; i++)
        if (u->up[i].cross)
            for (int64_t j = 0; j < u->up[i].n_layers; j++) list[n++] = &u->up[i].attns[j];
    for (int k = 0; k < n; k++)
        for (int64_t b = 0; b < list[k]->n_blocks; b++) {
            sd_tblock_t *blk = &list[k]->blocks[b];
            snprintf(name, sizeof name, "%s.transformer_blocks.%lld.attn1", list[k]->name, (long long)b);
            fn(user, name, &blk->attn1);
            snprintf(name, sizeof name, "%s.transformer_blocks.%lld.attn2", list[k]->name, (long long)b);
            fn(user, name, &blk->attn2);
        }
}

/* ------------------------------------------------------------ shape plan */

/* Sizes of every stage, so forward and backward agree without saving them. */
typedef struct {
    int64_t h[SD_MAX_BLOCKS + 1], w[SD_MAX_BLOCKS + 1]; /* down block i runs at h[i] x w[i] */
    int nskips;
    int64_t skip_c[MAX_SKIPS], skip_h[MAX_SKIPS], skip_w[MAX_SKIPS];
    int consumed[SD_MAX_BLOCKS][SD_MAX_LAYERS]; /* skip index read by up block i, layer j */
    int down_skip[SD_MAX_BLOCKS][SD_MAX_LAYERS + 1]; /* skip index written by down block i, layer j (j = n: sampler) */
} s_plan_t;

static void s_plan(const sd_unet_t *u, int64_t H, int64_t W, s_plan_t *p)
{
    memset(p, 0, sizeof *p);
    int n = u->cfg.n_blocks, k = 0;
    p->h[0] = H;
    p->w[0] = W;
    p->skip_c[k] = u->cfg.block_out_channels[0];
    p->skip_h[k] = H;
    p->skip_w[k++] = W;
    for (int i = 0; i < n; i++) {
        const sd_unet_block_t *b = &u->down[i];
        for (int64_t j = 0; j < b->n_layers; j++) {
            p->down_skip[i][j] = k;
            p->skip_c[k] = b->out_channels;
            p->skip_h[k] = p->h[i];
            p->skip_w[k++] = p->w[i];
        }
        p->h[i + 1] = p->h[i];
        p->w[i + 1] = p->w[i];
        if (b->has_sampler) {
            p->h[i + 1] = sd_conv_out_size(&b->sampler, p->h[i]);
            p->w[i + 1] = (p->w[i] + b->sampler.pad_l + b->sampler.pad_r - 3) / 2 + 1;
            p->down_skip[i][b->n_layers] = k;
            p->skip_c[k] = b->out_channels;
            p->skip_h[k] = p->h[i + 1];
            p->skip_w[k++] = p->w[i + 1];
        }
    }
    p->nskips = k;
    for (int i = 0; i < n; i++)
        for (int64_t j = 0; j < u->up[i].n_layers; j++) p->consumed[i][j] = --k;
}

/* --------------------------------------------------- checkpointed units */

/* ResNets are not checkpointed: they keep only their input and conv1's output
 * (two tensors), and re-running them would cost a 3x3 convolution each. */
static int s_res_fwd(sd_run_t *r, const sd_resnet_t *m, float *out, const float *x, const float *temb, int64_t B,
                     int64_t H, int64_t W)
{
    return sd_resnet_forward(r, m, out, x, temb, B, H, W);
}

static int s_res_bwd(sd_run_t *r, const sd_resnet_t *m, float *dx, float *dtemb, const float *dout,
                     const float *temb, int64_t B, int64_t H, int64_t W)
{
    return sd_resnet_backward(r, m, dx, dtemb, dout, temb, B, H, W);
}

static int s_tr_fwd(sd_run_t *r, const sd_transformer_t *m, float *out, const float *x, const float *ctx, int64_t B,
                    int64_t H, int64_t W, int64_t T)
{
    if (!r->tape || !r->checkpoint) return sd_transformer_forward(r, m, out, x, ctx, B, H, W, T);
    if (!sd_tape_save(r->tape, r->nn, x, B * m->channels * H * W)) return BT_ENOMEM;
    sd_run_t r2 = *r;
    r2.tape = NULL;
    r2.keep = r->tape; /* each attention's output and log-sum-exp, above x */
    return sd_transformer_forward(&r2, m, out, x, ctx, B, H, W, T);
}

static int s_tr_bwd(sd_run_t *r, const sd_transformer_t *m, float *dx, float *dctx, const float *dout,
                    const float *ctx, int64_t B, int64_t H, int64_t W, int64_t T)
{
    if (!r->checkpoint) return sd_transformer_backward(r, m, dx, dctx, dout, B, H, W, T);
    /* what the attentions kept (two a block), then x */
    int nkept = 0;
    for (int64_t i = 0; i < m->n_blocks; i++)
        nkept += sd_attention_kept(&m->blocks[i].attn1) + sd_attention_kept(&m->blocks[i].attn2);
    float **kept = malloc((size_t)nkept * sizeof *kept);
    if (!kept) {
        bt_alloc_failed("gradient checkpointing's list of kept attention outputs", (size_t)nkept * sizeof *kept);
        return BT_ENOMEM;
    }
    for (int i = nkept - 1; i >= 0; i--)
        if (!(kept[i] = sd_tape_pop(r->tape))) {
            free(kept);
            return BT_EINTERNAL;
        }
    float *x = sd_tape_pop(r->tape);
    if (!x) {
        free(kept);
        return BT_EINTERNAL;
    }
    bt_stack_mark_t mk = bt_stack_mark(r->scratch);
    float *tmp = sd_scratch(r, B * m->channels * H * W);
    sd_reuse_t reuse = {.p = kept, .n = nkept};
    sd_run_t r2 = *r;
    r2.reuse = &reuse;
    int rc = tmp ? sd_transformer_forward(&r2, m, tmp, x, ctx, B, H, W, T) : BT_ENOMEM;
    if (rc == BT_OK && reuse.next != reuse.n) {
        BT_ERROR("gradient checkpointing: a block re-ran %d of its %d kept attention tensors", reuse.next, reuse.n);
        rc = BT_EINTERNAL;
    }
    free(kept);
    if (rc == BT_OK) rc = sd_transformer_backward(r, m, dx, dctx, dout, B, H, W, T);
    bt_stack_reset(r->scratch, mk);
    return rc;
}

/* --------------------------------------------------------------- forward */

/* The time embedding's intermediates, all [B, td] but tp [B, c0]: what its backward needs. */
typedef struct s_temb {
    float *tp, *a1, *s1, *a2, *silu; /* sinusoids; linear_1; its SiLU; linear_2; silu(temb) for the ResNets */
} s_temb_t;

/* silu(temb) for every ResNet: [B, time_embed_dim] in scratch (*e holds the rest, may be NULL). */
static int s_time_embedding(sd_run_t *r, const sd_unet_t *u, float **silu_temb, const float *t, int64_t B,
                            s_temb_t *e)
{
    int rc = BT_OK;
    int64_t c0 = u->cfg.block_out_channels[0], td = u->cfg.time_embed_dim;
    float *tt, *tp, *a1, *e1, *e2;
    ALLOC(tt, B);
    ALLOC(tp, B * c0);
    ALLOC(a1, B * td);
    ALLOC(e1, B * td);
    ALLOC(e2, B * td);
    TRY(nn_upload(r->nn, tt, t, (size_t)B * sizeof(float)));
    TRY(nn_timestep_embedding_forward(r->nn, tp, tt, B, c0, u->cfg.flip_sin_to_cos, u->cfg.freq_shift));
    sd_hook(r, tp, 2, (int64_t[]){B, c0}, "time_proj");
    TRY(sd_linear_forward(r, &u->time_l1, a1, tp, B, 1));
    TRY(nn_act_forward(r->nn, e1, a1, B * td, NN_ACT_SILU));
    TRY(sd_linear_forward(r, &u->time_l2, e2, e1, B, 1));
    sd_hook(r, e2, 2, (int64_t[]){B, td}, "time_embedding");
    float *silu;
    ALLOC(silu, B * td);
    TRY(nn_act_forward(r->nn, silu, e2, B * td, NN_ACT_SILU));
    *silu_temb = silu;
    if (e) *e = (s_temb_t){.tp = tp, .a1 = a1, .s1 = e1, .a2 = e2, .silu = silu};
out:
    return rc;
}

/* The time embedding's weight gradients from dsilu, the gradient of silu(temb) the ResNets summed. */
static int s_time_embedding_backward(sd_run_t *r, const sd_unet_t *u, const s_temb_t *e, const float *dsilu,
                                     int64_t B)
{
    int rc = BT_OK;
    int64_t td = u->cfg.time_embed_dim;
    float *d2, *d1;
    ALLOC(d2, B * td);
    ALLOC(d1, B * td);
    TRY(nn_act_backward(r->nn, d2, dsilu, e->a2, B * td, NN_ACT_SILU));
    TRY(sd_linear_backward(r, &u->time_l2, d1, d2, e->s1, B));
    TRY(nn_act_backward(r->nn, d2, d1, e->a1, B * td, NN_ACT_SILU));
    TRY(sd_linear_backward(r, &u->time_l1, NULL, d2, e->tp, B));
out:
    return rc;
}

/* A buffer reused across blocks, sized for the largest tensor it will hold. */
typedef struct {
    float *p;
    int64_t cap;
} s_slab_t;

static float *s_slab(s_slab_t *s, int64_t n)
{
    if (n > s->cap) {
        BT_ERROR("unet: a %lld-float tensor in a %lld-float buffer (the path's sizes were misjudged)", (long long)n,
                 (long long)s->cap);
        return NULL;
    }
    return s->p;
}

/* The largest activation (B x channels x pixels) along the UNet's path at this
 * size, the largest concatenation of the up path and the largest upsampled
 * tensor: what the reused buffers of forward and backward hold. */
static void s_path_sizes(const sd_unet_t *u, const s_plan_t *p, int64_t B, int64_t *act, int64_t *cat, int64_t *up)
{
    const sd_unet_config_t *c = &u->cfg;
    int n = c->n_blocks;
    *act = *cat = *up = 1;
#define S_MAX(x_, v_) (*(x_) = (v_) > *(x_) ? (v_) : *(x_))
    int64_t ch = c->block_out_channels[0];
    S_MAX(act, B * ch * p->h[0] * p->w[0]);
    for (int i = 0; i < n; i++) {
        const sd_unet_block_t *b = &u->down[i];
        int64_t area = p->h[i] * p->w[i];
        for (int64_t j = 0; j < b->n_layers; j++) {
            S_MAX(act, B * b->resnets[j].in * area);
            S_MAX(act, B * b->out_channels * area);
        }
        if (b->has_sampler) S_MAX(act, B * b->out_channels * p->h[i + 1] * p->w[i + 1]);
        ch = b->out_channels;
    }
    int64_t hh = p->h[n], ww = p->w[n];
    S_MAX(act, B * ch * hh * ww);
    for (int i = 0; i < n; i++) {
        const sd_unet_block_t *b = &u->up[i];
        int64_t oc = b->out_channels;
        for (int64_t j = 0; j < b->n_layers; j++) {
            int64_t sc = p->skip_c[p->consumed[i][j]];
            S_MAX(cat, B * (ch + sc) * hh * ww);
            S_MAX(act, B * (ch > oc ? ch : oc) * hh * ww);
            S_MAX(act, B * sc * hh * ww);
            ch = oc;
        }
        if (b->has_sampler) {
            int k = p->consumed[i][b->n_layers - 1] - 1;
            hh = p->skip_h[k];
            ww = p->skip_w[k];
            S_MAX(up, B * oc * hh * ww);
            S_MAX(act, B * oc * hh * ww);
        }
    }
#undef S_MAX
}

/* The four buffers, from the scratch stack (whose chunks stay from step to step). */
static int s_slabs(sd_run_t *r, const sd_unet_t *u, const s_plan_t *p, int64_t B, s_slab_t slab[4])
{
    int64_t size[4];
    s_path_sizes(u, p, B, &size[0], &size[2], &size[3]);
    size[1] = size[0];
    for (int i = 0; i < 4; i++) {
        if (!(slab[i].p = sd_scratch(r, size[i]))) return BT_ENOMEM;
        slab[i].cap = size[i];
    }
    return BT_OK;
}

/* In sd_unet_forward/backward: the next buffer of the ping-pong pair (slab[0],
 * slab[1]) for the activation or gradient flowing along the path, and a
 * block's other temporaries in their own reused buffers. */
#define SLAB(p_, i_, n_) NEED(p_, s_slab(&slab[i_], (n_)))
#define NEXT_DH(p_, n_)                                                                                        \
    do {                                                                                                       \
        cur ^= 1;                                                                                              \
        SLAB(p_, cur, n_);                                                                                     \
    } while (0)

int sd_unet_forward(sd_run_t *r, const sd_unet_t *u, float *out, const float *sample, const float *t,
                    const float *ctx, int64_t B, int64_t H, int64_t W, int64_t T)
{
    int rc = BT_OK;
    bt_stack_mark_t mk = bt_stack_mark(r->scratch);
    const sd_unet_config_t *c = &u->cfg;
    int n = c->n_blocks;
    s_plan_t p;
    s_plan(u, H, W, &p);
    float *temb, *skips[MAX_SKIPS], *h, *nh;
    int ns = 0;
    /* the up path's activations and temporaries: reused buffers (the down path's are skips) */
    s_slab_t slab[4] = {{0}};
    int cur = 0;
    TRY(s_slabs(r, u, &p, B, slab));
    TRY(s_time_embedding(r, u, &temb, t, B, NULL));

    int64_t c0 = c->block_out_channels[0];
    bool trains = u->conv_in.dw != NULL; /* full fine-tuning: the convolutions outside the blocks keep their inputs */
    if (r->tape && trains && !sd_tape_save(r->tape, r->nn, sample, B * c->in_channels * H * W)) {
        rc = BT_ENOMEM;
        goto out;
    }
    ALLOC(h, B * c0 * H * W);
    TRY(sd_conv_forward(r, &u->conv_in, h, sample, B, H, W));
    sd_hook(r, h, 4, (int64_t[]){B, c0, H, W}, "conv_in");
    skips[ns++] = h;
    int64_t ch = c0;
    for (int i = 0; i < n; i++) {
        const sd_unet_block_t *b = &u->down[i];
        int64_t hh = p.h[i], ww = p.w[i], oc = b->out_channels;
        const int64_t shape[4] = {B, oc, hh, ww};
        for (int64_t j = 0; j < b->n_layers; j++) {
            ALLOC(nh, B * oc * hh * ww);
            TRY(s_res_fwd(r, &b->resnets[j], nh, h, temb, B, hh, ww));
            sd_hook(r, nh, 4, shape, "down_blocks.%d.resnets.%lld", i, (long long)j);
            h = nh;
            if (b->cross) {
                ALLOC(nh, B * oc * hh * ww);
                TRY(s_tr_fwd(r, &b->attns[j], nh, h, ctx, B, hh, ww, T));
                sd_hook(r, nh, 4, shape, "down_blocks.%d.attentions.%lld", i, (long long)j);
                h = nh;
            }
            skips[ns++] = h;
        }
        if (b->has_sampler) {
            if (r->tape && trains && !sd_tape_save(r->tape, r->nn, h, B * oc * hh * ww)) {
                rc = BT_ENOMEM;
                goto out;
            }
            ALLOC(nh, B * oc * p.h[i + 1] * p.w[i + 1]);
            TRY(sd_conv_forward(r, &b->sampler, nh, h, B, hh, ww));
            h = nh;
            sd_hook(r, h, 4, (int64_t[]){B, oc, p.h[i + 1], p.w[i + 1]}, "down_blocks.%d.downsamplers.0", i);
            skips[ns++] = h;
        }
        sd_hook(r, h, 4, (int64_t[]){B, oc, p.h[i + 1], p.w[i + 1]}, "down_blocks.%d", i);
        ch = oc;
    }
    int64_t hh = p.h[n], ww = p.w[n];
    if (c->has_mid) {
        const int64_t shape[4] = {B, ch, hh, ww};
        ALLOC(nh, B * ch * hh * ww);
        TRY(s_res_fwd(r, &u->mid_res[0], nh, h, temb, B, hh, ww));
        h = nh;
        if (c->mid_cross) {
            ALLOC(nh, B * ch * hh * ww);
            TRY(s_tr_fwd(r, &u->mid_attn, nh, h, ctx, B, hh, ww, T));
            h = nh;
        }
        ALLOC(nh, B * ch * hh * ww);
        TRY(s_res_fwd(r, &u->mid_res[1], nh, h, temb, B, hh, ww));
        h = nh;
        sd_hook(r, h, 4, shape, "mid_block");
    }
    for (int i = 0; i < n; i++) {
        const sd_unet_block_t *b = &u->up[i];
        int64_t oc = b->out_channels;
        const int64_t shape[4] = {B, oc, hh, ww};
        for (int64_t j = 0; j < b->n_layers; j++) {
            int k = p.consumed[i][j];
            int64_t sc = p.skip_c[k], cat_c = ch + sc;
            float *cat;
            SLAB(cat, 2, B * cat_c * hh * ww);
            TRY(nn_concat_channels(r->nn, cat, h, skips[k], B, ch, sc, hh * ww));
            NEXT_DH(nh, B * oc * hh * ww);
            TRY(s_res_fwd(r, &b->resnets[j], nh, cat, temb, B, hh, ww));
            h = nh;
            ch = oc;
            if (b->cross) {
                NEXT_DH(nh, B * oc * hh * ww);
                TRY(s_tr_fwd(r, &b->attns[j], nh, h, ctx, B, hh, ww, T));
                h = nh;
            }
        }
        if (b->has_sampler) {
            int k = p.consumed[i][b->n_layers - 1] - 1; /* the next skip decides the size */
            int64_t oh = p.skip_h[k], ow = p.skip_w[k];
            float *upx;
            if (r->tape && trains && !sd_tape_save(r->tape, r->nn, h, B * oc * hh * ww)) {
                rc = BT_ENOMEM;
                goto out;
            }
            SLAB(upx, 3, B * oc * oh * ow);
            TRY(nn_upsample_nearest_forward(r->nn, upx, h, B * oc, hh, ww, oh, ow));
            NEXT_DH(nh, B * oc * oh * ow);
            TRY(sd_conv_forward(r, &b->sampler, nh, upx, B, oh, ow));
            h = nh;
            hh = oh;
            ww = ow;
            sd_hook(r, h, 4, (int64_t[]){B, oc, hh, ww}, "up_blocks.%d.upsamplers.0", i);
        }
        sd_hook(r, h, 4, b->has_sampler ? (int64_t[]){B, oc, hh, ww} : shape, "up_blocks.%d", i);
    }
    /* out: GN (hooked before its SiLU), SiLU, conv */
    float *mean = NULL, *rstd = NULL, *hs = h, *g;
    int64_t G = u->norm_out.groups;
    if (r->tape) {
        if (!(hs = sd_tape_save(r->tape, r->nn, h, B * c0 * H * W)) || !(mean = sd_tape_alloc(r->tape, B * G)) ||
            !(rstd = sd_tape_alloc(r->tape, B * G))) {
            rc = BT_ENOMEM;
            goto out;
        }
    }
    ALLOC(g, B * c0 * H * W);
    TRY(sd_group_norm_forward(r, &u->norm_out, g, mean, rstd, hs, B, H * W, false));
    sd_hook(r, g, 4, (int64_t[]){B, c0, H, W}, "conv_norm_out");
    TRY(nn_act_forward(r->nn, g, g, B * c0 * H * W, NN_ACT_SILU));
    TRY(sd_conv_forward(r, &u->conv_out, out, g, B, H, W));
    sd_hook(r, out, 4, (int64_t[]){B, c->out_channels, H, W}, "conv_out");
out:
    bt_stack_reset(r->scratch, mk);
    return rc;
}

/* -------------------------------------------------------------- backward */

int sd_unet_backward(sd_run_t *r, const sd_unet_t *u, float *dctx, const float *dout, const float *t,
                     const float *ctx, int64_t B, int64_t H, int64_t W, int64_t T)
{
    int rc = BT_OK;
    bt_stack_mark_t mk = bt_stack_mark(r->scratch);
    const sd_unet_config_t *c = &u->cfg;
    int n = c->n_blocks;
    s_plan_t p;
    s_plan(u, H, W, &p);
    float *temb = NULL, *dtemb = NULL, *dskip[MAX_SKIPS] = {0}, *dh, *nd, *x;
    /* The gradient flowing down the path lives in two buffers in turn, the
     * concatenation's and the upsampler's in their own: each is reused block
     * after block, so the scratch stack holds only them, the skip gradients,
     * allocated first, and one block's temporaries. */
    s_slab_t slab[4] = {{0}};
    int cur = 0;
    TRY(s_slabs(r, u, &p, B, slab));
    bool trains = u->conv_in.dw != NULL;
    s_temb_t te;
    int64_t td = c->time_embed_dim;
    if (trains) TRY(s_time_embedding(r, u, &temb, t, B, &te)); /* ResNets train */
    if (trains) {
        ALLOC(dtemb, B * td);
        TRY(nn_fill(r->nn, dtemb, B * td, 0.0f));
    }

    /* first module in forward order that trains: the first cross-attention down block (LoRA), or
     * conv_in (full fine-tuning); no input gradient is computed before it */
    int first = n;
    for (int i = 0; i < n && first == n; i++)
        if (u->down[i].cross) first = i;
    if (trains) first = -1;

    int64_t c0 = c->block_out_channels[0];
    float *rstd = sd_tape_pop(r->tape), *mean = sd_tape_pop(r->tape), *hs = sd_tape_pop(r->tape), *g, *a = NULL;
    if (!rstd || !mean || !hs) {
        rc = BT_EINTERNAL;
        goto out;
    }
    ALLOC(g, B * c0 * H * W);
    ALLOC(dh, B * c0 * H * W);
    if (trains) { /* conv_out's input: silu(GN(h)), recomputed */
        ALLOC(a, B * c0 * H * W);
        TRY(sd_group_norm_forward(r, &u->norm_out, a, NULL, NULL, hs, B, H * W, true));
    }
    TRY(sd_conv_backward(r, &u->conv_out, g, dout, a, B, H, W));
    TRY(sd_group_norm_backward(r, &u->norm_out, dh, g, hs, mean, rstd, B, H * W, true));
    sd_tape_trim(r->tape);

    for (int k = 0; k < p.nskips; k++) ALLOC(dskip[k], B * p.skip_c[k] * p.skip_h[k] * p.skip_w[k]);

    int64_t hh = H, ww = W;
    for (int i = n - 1; i >= 0; i--) {
        const sd_unet_block_t *b = &u->up[i];
        int64_t oc = b->out_channels;
        if (b->has_sampler) {
            int64_t ih = p.skip_h[p.consumed[i][b->n_layers - 1]], iw = p.skip_w[p.consumed[i][b->n_layers - 1]];
            float *dup, *upx = NULL;
            if (trains) { /* the conv's input: the nearest 2x upsampling of the saved h */
                if (!(x = sd_tape_pop(r->tape))) {
                    rc = BT_EINTERNAL;
                    goto out;
                }
                ALLOC(upx, B * oc * hh * ww);
                TRY(nn_upsample_nearest_forward(r->nn, upx, x, B * oc, ih, iw, hh, ww));
            }
            SLAB(dup, 3, B * oc * hh * ww);
            TRY(sd_conv_backward(r, &b->sampler, dup, dh, upx, B, hh, ww));
            NEXT_DH(nd, B * oc * ih * iw);
            TRY(nn_upsample_nearest_backward(r->nn, nd, dup, B * oc, ih, iw, hh, ww));
            dh = nd;
            hh = ih;
            ww = iw;
        }
        for (int64_t j = b->n_layers - 1; j >= 0; j--) {
            if (b->cross) {
                NEXT_DH(nd, B * oc * hh * ww);
                TRY(s_tr_bwd(r, &b->attns[j], nd, dctx, dh, ctx, B, hh, ww, T));
                sd_tape_trim(r->tape);
                dh = nd;
            }
            int k = p.consumed[i][j];
            int64_t sc = p.skip_c[k];
            int64_t prev_c = j == 0 ? (i == 0 ? c->block_out_channels[n - 1] : u->up[i - 1].out_channels) : oc;
            float *dcat;
            if (p.skip_h[k] != hh || p.skip_w[k] != ww) {
                BT_ERROR("unet backward: skip %d is %lldx%lld, the up path %lldx%lld", k, (long long)p.skip_h[k],
                         (long long)p.skip_w[k], (long long)hh, (long long)ww);
                rc = BT_EINTERNAL;
                goto out;
            }
            SLAB(dcat, 2, B * (prev_c + sc) * hh * ww);
            TRY(s_res_bwd(r, &b->resnets[j], dcat, dtemb, dh, temb, B, hh, ww));
            sd_tape_trim(r->tape);
            NEXT_DH(nd, B * prev_c * hh * ww);
            TRY(nn_split_channels(r->nn, nd, dskip[k], dcat, B, prev_c, sc, hh * ww));
            dh = nd;
        }
    }
    int64_t cl = c->block_out_channels[n - 1];
    if (c->has_mid) {
        NEXT_DH(nd, B * cl * hh * ww);
        TRY(s_res_bwd(r, &u->mid_res[1], nd, dtemb, dh, temb, B, hh, ww));
        sd_tape_trim(r->tape);
        dh = nd;
        if (c->mid_cross) {
            NEXT_DH(nd, B * cl * hh * ww);
            TRY(s_tr_bwd(r, &u->mid_attn, nd, dctx, dh, ctx, B, hh, ww, T));
            sd_tape_trim(r->tape);
            dh = nd;
        }
        NEXT_DH(nd, B * cl * hh * ww);
        TRY(s_res_bwd(r, &u->mid_res[0], nd, dtemb, dh, temb, B, hh, ww));
        sd_tape_trim(r->tape);
        dh = nd;
    }
    for (int i = n - 1; i >= 0; i--) {
        const sd_unet_block_t *b = &u->down[i];
        int64_t oc = b->out_channels, bh = p.h[i], bw = p.w[i];
        if (b->has_sampler) {
            int k = p.down_skip[i][b->n_layers];
            if (dh) TRY(nn_axpy(r->nn, dh, dskip[k], B * oc * hh * ww, 1.0f));
            nd = NULL;
            x = NULL;
            if (trains && !(x = sd_tape_pop(r->tape))) {
                rc = BT_EINTERNAL;
                goto out;
            }
            if (dh && i >= first) {
                NEXT_DH(nd, B * oc * bh * bw);
                TRY(sd_conv_backward(r, &b->sampler, nd, dh, x, B, bh, bw));
            }
            dh = nd;
            hh = bh;
            ww = bw;
        }
        for (int64_t j = b->n_layers - 1; j >= 0; j--) {
            int k = p.down_skip[i][j];
            if (dh) TRY(nn_axpy(r->nn, dh, dskip[k], B * oc * hh * ww, 1.0f));
            if (b->cross) {
                NEXT_DH(nd, B * oc * hh * ww);
                TRY(s_tr_bwd(r, &b->attns[j], nd, dctx, dh, ctx, B, hh, ww, T));
                sd_tape_trim(r->tape);
                dh = nd;
            }
            bool need_dx = i > first || (i == first && j > 0);
            int64_t in_c = b->resnets[j].in;
            nd = NULL;
            if (need_dx) NEXT_DH(nd, B * in_c * hh * ww);
            TRY(s_res_bwd(r, &b->resnets[j], nd, dtemb, dh, temb, B, hh, ww));
            sd_tape_trim(r->tape);
            dh = nd;
        }
    }
    if (trains) { /* conv_in (its input, the sample, was kept first), then the time embedding */
        if (!(x = sd_tape_pop(r->tape))) {
            rc = BT_EINTERNAL;
            goto out;
        }
        TRY(nn_axpy(r->nn, dh, dskip[0], B * c0 * H * W, 1.0f));
        TRY(sd_conv_backward(r, &u->conv_in, NULL, dh, x, B, H, W));
        TRY(s_time_embedding_backward(r, u, &te, dtemb, B));
        sd_tape_trim(r->tape);
    }
out:
    bt_stack_reset(r->scratch, mk);
    return rc;
}

sd_unet_t *sd_unet_load(nn_ctx_t *ctx, const char *dir, sd_store_t store)
{
    char path[4096];
    sd_unet_config_t cfg;
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (sd_unet_config_load(path, &cfg)) return NULL;
    sd_unet_t *u = sd_unet_new(&cfg);
    if (u && sd_params_load_model(&u->params, ctx, dir, "diffusion_pytorch_model", store))
        sd_unet_destroy(&u);
    return u;
}
