/*
 * single_file.c — original (LDM) names of a Stable Diffusion checkpoint, the
 * architecture its shapes imply, and views that give the model folder's names.
 *
 * The mapping goes from a parameter's diffusers name (what unet.c, vae.c and
 * clip.c register) to the LDM name, so it is a function of one name and the
 * config rather than a pass of string replacements over the file's keys:
 *
 *   UNet   conv_in -> input_blocks.0.0; down_blocks.b.resnets.j -> input_blocks.(1+b(L+1)+j).0
 *          (norm1/conv1/norm2/conv2/time_emb_proj/conv_shortcut -> in_layers.0/in_layers.2/
 *          out_layers.0/out_layers.3/emb_layers.1/skip_connection); .attentions.j ->
 *          input_blocks.(..).1 (inner names equal); downsamplers.0.conv -> input_blocks.(1+b(L+1)+L).0.op;
 *          mid_block.resnets.0/attentions.0/resnets.1 -> middle_block.0/1/2; up_blocks.b.resnets.j ->
 *          output_blocks.(b(L+1)+j).0, .attentions.j -> .1, upsamplers.0.conv -> output_blocks.(b(L+1)+L).(2
 *          with attention, else 1).conv; time_embedding.linear_1/2 -> time_embed.0/2; conv_norm_out -> out.0;
 *          conv_out -> out.2.
 *   VAE    encoder.down_blocks.i.resnets.j -> encoder.down.i.block.j (conv_shortcut -> nin_shortcut),
 *          downsamplers.0.conv -> downsample.conv; decoder.up_blocks.i -> decoder.up.(N-1-i) (reversed),
 *          upsamplers.0.conv -> upsample.conv; mid_block.resnets.0/1 -> mid.block_1/2,
 *          mid_block.attentions.0.group_norm/to_q/to_k/to_v/to_out.0 -> mid.attn_1.norm/q/k/v/proj_out
 *          (1x1 convs [C, C, 1, 1] there; the loader takes them for [C, C]); conv_norm_out -> norm_out.
 *   CLIP   SD 1.x: the transformers names under cond_stage_model.transformer.; SD 2.x (OpenCLIP):
 *          token_embedding, positional_embedding, ln_final, transformer.resblocks.k.{ln_1, ln_2,
 *          mlp.c_fc, mlp.c_proj, attn.out_proj}, and q/k/v = rows [0,H), [H,2H), [2H,3H) of
 *          attn.in_proj_weight / in_proj_bias. SD 2.x uses the penultimate layer: the last
 *          resblock is not loaded (diffusers' text encoder config has one layer fewer).
 */
#include "diffusion/single_file.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/status.h"
#include "diffusion/init.h"

#define S_UNET "model.diffusion_model."
#define S_CLIP "cond_stage_model.transformer."
#define S_OPENCLIP "cond_stage_model.model."
#define S_NAME 320

static const char *const s_part_what[SD_SF_NPARTS] = {"UNet", "VAE", "text encoder"};

bool sd_single_file_is(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && !S_ISDIR(st.st_mode);
}

/* ---------------------------------------------------------------- lookups */

/* The tensor prefix+fmt, or NULL. */
static const st_tensor_t *s_t(const st_file_t *f, const char *prefix, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static const st_tensor_t *s_t(const st_file_t *f, const char *prefix, const char *fmt, ...)
{
    char name[S_NAME];
    int n = snprintf(name, sizeof name, "%s", prefix);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name + n, sizeof name - (size_t)n, fmt, ap);
    va_end(ap);
    return st_find(f, name);
}

/* Like s_t, but a missing tensor or one of another rank is one error. */
static const st_tensor_t *s_need(const st_file_t *f, int ndim, const char *prefix, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static const st_tensor_t *s_need(const st_file_t *f, int ndim, const char *prefix, const char *fmt, ...)
{
    char name[S_NAME];
    int n = snprintf(name, sizeof name, "%s", prefix);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name + n, sizeof name - (size_t)n, fmt, ap);
    va_end(ap);
    const st_tensor_t *t = st_find(f, name);
    char b[96];
    if (!t)
        BT_ERROR("%s: tensor '%s' is missing (an incomplete or non-SD single-file checkpoint)", st_path(f), name);
    else if (t->ndim != ndim || st_numel(t) <= 0) {
        BT_ERROR("%s: tensor '%s' has shape %s, expected %d dimensions", st_path(f), name,
                 st_shape_str(t->ndim, t->shape, b, sizeof b), ndim);
        t = NULL;
    }
    return t;
}

/* How many consecutive k from 0 have prefix+fmt(k). */
static int s_count(const st_file_t *f, const char *prefix, const char *fmt)
{
    int k = 0;
    while (k < 4096 && s_t(f, prefix, fmt, k)) k++;
    return k;
}

static bool s_has_prefix(const st_file_t *f, const char *prefix)
{
    size_t n = strlen(prefix);
    for (int i = 0; i < st_count(f); i++)
        if (!strncmp(st_at(f, i)->name, prefix, n)) return true;
    return false;
}

/* ---------------------------------------------------------------- inference */

static int s_infer_unet(sd_single_file_t *sf)
{
    const st_file_t *f = sf->file;
    const char *path = sf->path;
    sd_unet_config_t *u = &sf->unet;
    const st_tensor_t *conv_in = s_need(f, 4, S_UNET, "input_blocks.0.0.weight");
    const st_tensor_t *out = s_need(f, 4, S_UNET, "out.2.weight");
    const st_tensor_t *temb = s_need(f, 2, S_UNET, "time_embed.0.weight");
    if (!conv_in || !out || !temb) return BT_EFORMAT;
    if (s_t(f, S_UNET, "label_emb.0.0.weight")) {
        BT_ERROR("%s: the UNet has a class embedding (label_emb: an upscaler or unCLIP model); booth runs "
                 "text-to-image SD 1.x / 2.x",
                 path);
        return BT_EFORMAT;
    }
    u->in_channels = conv_in->shape[1];
    u->out_channels = out->shape[0];
    if (u->in_channels != 4 || u->out_channels != 4) {
        BT_ERROR("%s: the UNet has %lld input and %lld output channels (an inpainting, depth or edit model); "
                 "booth runs text-to-image models with 4",
                 path, (long long)u->in_channels, (long long)u->out_channels);
        return BT_EFORMAT;
    }
    int first_op = 0;
    for (int i = 1; i < 64 && !first_op; i++)
        if (s_t(f, S_UNET, "input_blocks.%d.0.op.weight", i)) first_op = i;
    /* input_blocks = conv_in, then per level L resnets and a downsample (not after the last):
     * with the downsamples counted, N (L + 1) entries in all */
    int n_total = 1;
    while (n_total < 4096 && (s_t(f, S_UNET, "input_blocks.%d.0.in_layers.0.weight", n_total) ||
                              s_t(f, S_UNET, "input_blocks.%d.0.op.weight", n_total)))
        n_total++;
    int L = first_op ? first_op - 1 : n_total - 1;
    int N = L > 0 ? n_total / (L + 1) : 0;
    if (L < 1 || N < 1 || N > SD_MAX_BLOCKS || N * (L + 1) != n_total) {
        BT_ERROR("%s: %d UNet input blocks (first downsample at %d) do not form levels of equal depth", path, n_total,
                 first_op);
        return BT_EFORMAT;
    }
    u->n_blocks = N;
    const st_tensor_t *proj = NULL, *to_k = NULL;
    for (int b = 0; b < N; b++) {
        int i = 1 + b * (L + 1);
        const st_tensor_t *c2 = s_need(f, 4, S_UNET, "input_blocks.%d.0.out_layers.3.weight", i);
        if (!c2) return BT_EFORMAT;
        u->block_out_channels[b] = c2->shape[0];
        u->layers_per_block[b] = L;
        const st_tensor_t *p = s_t(f, S_UNET, "input_blocks.%d.1.proj_in.weight", i);
        u->down_cross[b] = p != NULL;
        u->transformer_layers[b] = 1;
        if (p) {
            char pre[96];
            snprintf(pre, sizeof pre, S_UNET "input_blocks.%d.1.", i);
            u->transformer_layers[b] = s_count(f, pre, "transformer_blocks.%d.attn1.to_q.weight");
            if (!u->transformer_layers[b]) {
                BT_ERROR("%s: tensor '%sproj_in.weight' has no transformer_blocks.0 beside it", path, pre);
                return BT_EFORMAT;
            }
            if (!proj) {
                proj = p;
                to_k = s_need(f, 2, pre, "transformer_blocks.0.attn2.to_k.weight");
                if (!to_k) return BT_EFORMAT;
            }
        }
        u->up_cross[b] = s_t(f, S_UNET, "output_blocks.%d.1.proj_in.weight", b * (L + 1)) != NULL;
    }
    if (s_count(f, S_UNET, "output_blocks.%d.0.in_layers.0.weight") != N * (L + 1)) {
        BT_ERROR("%s: %d UNet output blocks, expected %d (%d levels of %d)", path,
                 s_count(f, S_UNET, "output_blocks.%d.0.in_layers.0.weight"), N * (L + 1), N, L + 1);
        return BT_EFORMAT;
    }
    u->has_mid = s_t(f, S_UNET, "middle_block.0.in_layers.0.weight") != NULL;
    u->mid_cross = s_t(f, S_UNET, "middle_block.1.proj_in.weight") != NULL;
    if (!proj) {
        BT_ERROR("%s: the UNet has no cross-attention (no input_blocks.*.1.proj_in): not a text-to-image SD model",
                 path);
        return BT_EFORMAT;
    }
    u->use_linear_projection = proj->ndim == 2;
    u->time_embed_dim = temb->shape[0];
    for (int b = 0; b < N; b++) {
        u->cross_attention_dim[b] = to_k->shape[1];
        /* SD 1.x: num_heads 8; SD 2.x: num_head_channels 64 (diffusers' attention_head_dim list) */
        int64_t c = u->block_out_channels[b];
        u->heads[b] = !sf->sd2 ? 8 : c % 64 == 0 ? c / 64 : 0;
    }
    return BT_OK;
}

static int s_infer_vae(sd_single_file_t *sf)
{
    const st_file_t *f = sf->file;
    const char *P = sf->vae_prefix;
    sd_vae_config_t *v = &sf->vae;
    const st_tensor_t *cin = s_need(f, 4, P, "encoder.conv_in.weight");
    const st_tensor_t *cout = s_need(f, 4, P, "decoder.conv_out.weight");
    const st_tensor_t *q = s_need(f, 4, P, "quant_conv.weight");
    if (!cin || !cout || !q) return BT_EFORMAT;
    int N = s_count(f, P, "encoder.down.%d.block.0.conv1.weight");
    int L = s_count(f, P, "encoder.down.0.block.%d.conv1.weight");
    if (N < 1 || N > SD_MAX_BLOCKS || L < 1 || q->shape[0] % 2) {
        BT_ERROR("%s: the VAE has %d down blocks of %d resnets and quant_conv of %lld channels: not an SD VAE",
                 sf->path, N, L, (long long)q->shape[0]);
        return BT_EFORMAT;
    }
    v->n_blocks = N;
    for (int b = 0; b < N; b++) {
        const st_tensor_t *c2 = s_need(f, 4, P, "encoder.down.%d.block.0.conv2.weight", b);
        if (!c2) return BT_EFORMAT;
        v->block_out_channels[b] = c2->shape[0];
    }
    v->layers_per_block = L;
    v->in_channels = cin->shape[1];
    v->out_channels = cout->shape[0];
    v->latent_channels = q->shape[0] / 2;
    v->mid_attention = s_t(f, P, "encoder.mid.attn_1.q.weight") != NULL;
    return BT_OK;
}

static int s_infer_clip(sd_single_file_t *sf)
{
    const st_file_t *f = sf->file;
    sd_clip_config_t *c = &sf->clip;
    const st_tensor_t *tok, *pos, *fc1;
    if (sf->sd2) {
        tok = s_need(f, 2, S_OPENCLIP, "token_embedding.weight");
        pos = s_need(f, 2, S_OPENCLIP, "positional_embedding");
        fc1 = s_need(f, 2, S_OPENCLIP, "transformer.resblocks.0.mlp.c_fc.weight");
        if (!tok || !pos || !fc1) return BT_EFORMAT;
        int n = s_count(f, S_OPENCLIP, "transformer.resblocks.%d.ln_1.weight");
        c->num_layers = n - 1; /* SD 2.x conditions on the penultimate layer */
        c->act = SD_ACT_GELU;
    } else {
        const char *P = sf->old_clip_names ? S_CLIP : S_CLIP "text_model.";
        tok = s_need(f, 2, P, "embeddings.token_embedding.weight");
        pos = s_need(f, 2, P, "embeddings.position_embedding.weight");
        fc1 = s_need(f, 2, P, "encoder.layers.0.mlp.fc1.weight");
        if (!tok || !pos || !fc1) return BT_EFORMAT;
        c->num_layers = s_count(f, P, "encoder.layers.%d.self_attn.q_proj.weight");
        c->act = SD_ACT_QUICK_GELU;
    }
    c->vocab_size = tok->shape[0];
    c->hidden_size = tok->shape[1];
    c->max_positions = pos->shape[0];
    c->intermediate_size = fc1->shape[0];
    c->num_heads = c->hidden_size % 64 == 0 ? c->hidden_size / 64 : 0; /* ViT-L/14 and ViT-H/14: 64 per head */
    c->layer_norm_eps = 1e-5f;
    c->eos_token_id = 2;
    if (c->num_layers < 1 || pos->shape[1] != c->hidden_size) {
        BT_ERROR("%s: the text encoder has %lld layers and positions of width %lld for width %lld", sf->path,
                 (long long)c->num_layers, (long long)pos->shape[1], (long long)c->hidden_size);
        return BT_EFORMAT;
    }
    return BT_OK;
}

/* config_dir's three configs replace the inferred ones. */
static int s_load_configs(sd_single_file_t *sf, const char *dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/unet/config.json", dir);
    int rc = sd_unet_config_load(path, &sf->unet);
    snprintf(path, sizeof path, "%s/vae/config.json", dir);
    if (rc == BT_OK) rc = sd_vae_config_load(path, &sf->vae);
    snprintf(path, sizeof path, "%s/text_encoder/config.json", dir);
    if (rc == BT_OK) rc = sd_clip_config_load(path, &sf->clip);
    return rc;
}

/* The suffix of a pickle, or NULL. */
static const char *s_pickle_suffix(const char *path)
{
    static const char *const ext[] = {".ckpt", ".bin", ".pt", ".pth", ".pkl"};
    size_t n = strlen(path);
    for (size_t i = 0; i < sizeof ext / sizeof ext[0]; i++) {
        size_t e = strlen(ext[i]);
        if (n > e && !strcasecmp(path + n - e, ext[i])) return ext[i];
    }
    return NULL;
}

sd_single_file_t *sd_single_file_open(const char *path, const sd_single_file_opts_t *opts)
{
    static const sd_single_file_opts_t defaults = {.prediction = -1};
    if (!opts) opts = &defaults;
    if (s_pickle_suffix(path)) {
        BT_ERROR("%s: a Python pickle checkpoint, which booth does not open (unpickling runs code the file "
                 "contains); convert it where you trust it: python3 -c \"import torch, safetensors.torch as st; "
                 "d = torch.load('%s', map_location='cpu', weights_only=True); d = d.get('state_dict', d); "
                 "st.save_file({k: v.contiguous() for k, v in d.items() if torch.is_tensor(v)}, 'model.safetensors')\"",
                 path, path);
        return NULL;
    }
    sd_single_file_t *sf = bt_calloc(1, sizeof *sf);
    if (!sf || !(sf->path = strdup(path))) {
        BT_ERROR("%s: out of memory", path);
        free(sf);
        return NULL;
    }
    sf->config_dir = opts->config_dir;
    if (!(sf->file = st_open(path))) goto out_fail;
    const st_file_t *f = sf->file;
    if (!st_find(f, S_UNET "input_blocks.0.0.weight")) {
        if (s_has_prefix(f, "conditioner.embedders."))
            BT_ERROR("%s: an SDXL checkpoint (conditioner.embedders.*); booth runs SD 1.x and 2.x", path);
        else if (s_has_prefix(f, "lora_unet_") || s_has_prefix(f, "unet.") || s_has_prefix(f, "lora_te_"))
            BT_ERROR("%s: a LoRA file, not a model (pass it with --lora)", path);
        else
            BT_ERROR("%s: not a Stable Diffusion single-file checkpoint (no %sinput_blocks.0.0.weight; a model "
                     "folder is given as the folder)",
                     path, S_UNET);
        goto out_fail;
    }
    if (s_has_prefix(f, S_OPENCLIP)) {
        sf->sd2 = true;
    } else if (!st_find(f, S_CLIP "text_model.embeddings.token_embedding.weight")) {
        if (!st_find(f, S_CLIP "embeddings.token_embedding.weight")) {
            BT_ERROR("%s: no text encoder (neither %s* for SD 1.x nor %s* for SD 2.x)", path, S_CLIP, S_OPENCLIP);
            goto out_fail;
        }
        sf->old_clip_names = true;
    }
    sf->vae_prefix = st_find(f, "first_stage_model.encoder.conv_in.weight") ? "first_stage_model."
                     : st_find(f, "vae.encoder.conv_in.weight")             ? "vae."
                                                                            : NULL;
    if (!sf->vae_prefix) {
        BT_ERROR("%s: no VAE (first_stage_model.*): booth needs a complete checkpoint", path);
        goto out_fail;
    }
    sd_arch_configs(sf->sd2 ? SD_ARCH_SD21 : SD_ARCH_SD15, &sf->unet, &sf->vae, &sf->clip);
    if (s_infer_unet(sf) || s_infer_vae(sf) || s_infer_clip(sf)) goto out_fail;
    if (opts->config_dir && s_load_configs(sf, opts->config_dir)) goto out_fail;
    sf->prediction_given = opts->prediction >= 0;
    sf->prediction = opts->prediction >= 0 ? (sd_sched_pred_t)opts->prediction : sf->sd2 ? SD_PRED_V : SD_PRED_EPSILON;
    if (sf->sd2 && opts->prediction < 0 && !opts->config_dir)
        BT_INFO("%s: SD 2.x checkpoint: v-prediction assumed (the 768-v models; a 512-base model predicts noise: "
                "booth convert --prediction-type epsilon)",
                path);
    BT_DEBUG("%s: SD %s single file: UNet %d levels x %lld layers, channels %lld..%lld, text encoder %lld x %lld",
             path, sf->sd2 ? "2.x" : "1.x", sf->unet.n_blocks, (long long)sf->unet.layers_per_block[0],
             (long long)sf->unet.block_out_channels[0], (long long)sf->unet.block_out_channels[sf->unet.n_blocks - 1],
             (long long)sf->clip.num_layers, (long long)sf->clip.hidden_size);
    return sf;
out_fail:
    sd_single_file_close(&sf);
    return NULL;
}

void sd_single_file_close(sd_single_file_t **psf)
{
    sd_single_file_t *sf = *psf;
    if (!sf) return;
    st_close(&sf->file);
    free(sf->path);
    free(sf);
    *psf = NULL;
}

/* ---------------------------------------------------------------- the name mapping */

static const char *const s_resnet[][2] = {{"norm1", "in_layers.0"},        {"conv1", "in_layers.2"},
                                          {"norm2", "out_layers.0"},       {"conv2", "out_layers.3"},
                                          {"time_emb_proj", "emb_layers.1"}, {"conv_shortcut", "skip_connection"}};

/* "<module>.<rest>" of a UNet resnet in LDM spelling; false if module is none of them. */
static bool s_resnet_ldm(const char *rest, char *out, size_t n, const char *at)
{
    for (size_t i = 0; i < sizeof s_resnet / sizeof s_resnet[0]; i++) {
        size_t k = strlen(s_resnet[i][0]);
        if (!strncmp(rest, s_resnet[i][0], k) && rest[k] == '.') {
            snprintf(out, n, "%s%s%s", at, s_resnet[i][1], rest + k);
            return true;
        }
    }
    return false;
}

static bool s_unet_ldm(const sd_unet_config_t *c, const char *name, char *out, size_t n)
{
    static const char *const fixed[][2] = {{"time_embedding.linear_1.", "time_embed.0."},
                                           {"time_embedding.linear_2.", "time_embed.2."},
                                           {"conv_in.", "input_blocks.0.0."},
                                           {"conv_norm_out.", "out.0."},
                                           {"conv_out.", "out.2."}};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
        size_t k = strlen(fixed[i][0]);
        if (!strncmp(name, fixed[i][0], k)) {
            snprintf(out, n, S_UNET "%s%s", fixed[i][1], name + k);
            return true;
        }
    }
    int64_t L = c->layers_per_block[0];
    int b, j, pos = 0;
    char at[96];
    if (sscanf(name, "down_blocks.%d.resnets.%d.%n", &b, &j, &pos) == 2 && pos) {
        snprintf(at, sizeof at, S_UNET "input_blocks.%lld.0.", (long long)(1 + b * (L + 1) + j));
        return s_resnet_ldm(name + pos, out, n, at);
    }
    pos = 0;
    if (sscanf(name, "down_blocks.%d.attentions.%d.%n", &b, &j, &pos) == 2 && pos) {
        snprintf(out, n, S_UNET "input_blocks.%lld.1.%s", (long long)(1 + b * (L + 1) + j), name + pos);
        return true;
    }
    pos = 0;
    if (sscanf(name, "down_blocks.%d.downsamplers.0.conv.%n", &b, &pos) == 1 && pos) {
        snprintf(out, n, S_UNET "input_blocks.%lld.0.op.%s", (long long)(1 + b * (L + 1) + L), name + pos);
        return true;
    }
    pos = 0;
    if (sscanf(name, "mid_block.resnets.%d.%n", &j, &pos) == 1 && pos) {
        snprintf(at, sizeof at, S_UNET "middle_block.%d.", 2 * j);
        return s_resnet_ldm(name + pos, out, n, at);
    }
    pos = 0;
    if (sscanf(name, "mid_block.attentions.0.%n", &pos) == 0 && pos) {
        snprintf(out, n, S_UNET "middle_block.1.%s", name + pos);
        return true;
    }
    /* up blocks have L + 1 resnets each */
    pos = 0;
    if (sscanf(name, "up_blocks.%d.resnets.%d.%n", &b, &j, &pos) == 2 && pos) {
        snprintf(at, sizeof at, S_UNET "output_blocks.%lld.0.", (long long)(b * (L + 1) + j));
        return s_resnet_ldm(name + pos, out, n, at);
    }
    pos = 0;
    if (sscanf(name, "up_blocks.%d.attentions.%d.%n", &b, &j, &pos) == 2 && pos) {
        snprintf(out, n, S_UNET "output_blocks.%lld.1.%s", (long long)(b * (L + 1) + j), name + pos);
        return true;
    }
    pos = 0;
    if (sscanf(name, "up_blocks.%d.upsamplers.0.conv.%n", &b, &pos) == 1 && pos && b >= 0 && b < c->n_blocks) {
        snprintf(out, n, S_UNET "output_blocks.%lld.%d.conv.%s", (long long)(b * (L + 1) + L), c->up_cross[b] ? 2 : 1,
                 name + pos);
        return true;
    }
    return false;
}

static bool s_vae_ldm(const sd_single_file_t *sf, const char *name, char *out, size_t n)
{
    const char *P = sf->vae_prefix;
    int N = sf->vae.n_blocks, b, j, pos = 0;
    char side[8];
    if (!strncmp(name, "quant_conv.", 11) || !strncmp(name, "post_quant_conv.", 16) ||
        !strncmp(name, "encoder.conv_in.", 16) || !strncmp(name, "encoder.conv_out.", 17) ||
        !strncmp(name, "decoder.conv_in.", 16) || !strncmp(name, "decoder.conv_out.", 17)) {
        snprintf(out, n, "%s%s", P, name);
        return true;
    }
    if (sscanf(name, "%7[a-z].conv_norm_out.%n", side, &pos) == 1 && pos) {
        snprintf(out, n, "%s%s.norm_out.%s", P, side, name + pos);
        return true;
    }
    pos = 0;
    if (sscanf(name, "%7[a-z].mid_block.resnets.%d.%n", side, &j, &pos) == 2 && pos) {
        const char *rest = name + pos;
        bool sc = !strncmp(rest, "conv_shortcut.", 14);
        snprintf(out, n, "%s%s.mid.block_%d.%s%s", P, side, j + 1, sc ? "nin_shortcut." : "", sc ? rest + 14 : rest);
        return true;
    }
    pos = 0;
    if (sscanf(name, "%7[a-z].mid_block.attentions.0.%n", side, &pos) == 1 && pos) {
        static const char *const attn[][2] = {
            {"group_norm.", "norm."}, {"to_q.", "q."}, {"to_k.", "k."}, {"to_v.", "v."}, {"to_out.0.", "proj_out."}};
        for (size_t i = 0; i < sizeof attn / sizeof attn[0]; i++) {
            size_t k = strlen(attn[i][0]);
            if (!strncmp(name + pos, attn[i][0], k)) {
                snprintf(out, n, "%s%s.mid.attn_1.%s%s", P, side, attn[i][1], name + pos + k);
                return true;
            }
        }
        return false;
    }
    bool enc = !strncmp(name, "encoder.down_blocks.", 20), dec = !strncmp(name, "decoder.up_blocks.", 18);
    if (!enc && !dec) return false;
    const char *blk = name + (enc ? 20 : 18);
    pos = 0;
    if (sscanf(blk, "%d.%n", &b, &pos) != 1 || !pos || b < 0 || b >= N) return false;
    int ldm_b = enc ? b : N - 1 - b; /* the decoder's LDM up list runs from the lowest resolution */
    const char *rest = blk + pos;
    int p2 = 0;
    if (sscanf(rest, "resnets.%d.%n", &j, &p2) == 1 && p2) {
        const char *r = rest + p2;
        bool sc = !strncmp(r, "conv_shortcut.", 14);
        snprintf(out, n, "%s%s.%s.%d.block.%d.%s%s", P, enc ? "encoder" : "decoder", enc ? "down" : "up", ldm_b, j,
                 sc ? "nin_shortcut." : "", sc ? r + 14 : r);
        return true;
    }
    const char *samp = enc ? "downsamplers.0.conv." : "upsamplers.0.conv.";
    if (!strncmp(rest, samp, strlen(samp))) {
        snprintf(out, n, "%s%s.%s.%d.%s.conv.%s", P, enc ? "encoder" : "decoder", enc ? "down" : "up", ldm_b,
                 enc ? "downsample" : "upsample", rest + strlen(samp));
        return true;
    }
    return false;
}

/* The LDM name of a text-encoder parameter; for OpenCLIP's fused q/k/v, *slice is
 * 0/1/2 (q/k/v rows of in_proj) and the name is in_proj's, else -1. */
static bool s_clip_ldm(const sd_single_file_t *sf, const char *name, char *out, size_t n, int *slice)
{
    *slice = -1;
    if (!sf->sd2) {
        const char *tail = name;
        if (sf->old_clip_names && !strncmp(name, "text_model.", 11)) tail = name + 11;
        snprintf(out, n, S_CLIP "%s", tail);
        return true;
    }
    static const char *const fixed[][2] = {{"text_model.embeddings.token_embedding.weight", "token_embedding.weight"},
                                           {"text_model.embeddings.position_embedding.weight", "positional_embedding"},
                                           {"text_model.final_layer_norm.weight", "ln_final.weight"},
                                           {"text_model.final_layer_norm.bias", "ln_final.bias"}};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        if (!strcmp(name, fixed[i][0])) {
            snprintf(out, n, S_OPENCLIP "%s", fixed[i][1]);
            return true;
        }
    int k, pos = 0;
    if (sscanf(name, "text_model.encoder.layers.%d.%n", &k, &pos) != 1 || !pos) return false;
    const char *rest = name + pos;
    static const char *const layer[][2] = {{"layer_norm1.", "ln_1."},
                                           {"layer_norm2.", "ln_2."},
                                           {"mlp.fc1.", "mlp.c_fc."},
                                           {"mlp.fc2.", "mlp.c_proj."},
                                           {"self_attn.out_proj.", "attn.out_proj."}};
    for (size_t i = 0; i < sizeof layer / sizeof layer[0]; i++) {
        size_t l = strlen(layer[i][0]);
        if (!strncmp(rest, layer[i][0], l)) {
            snprintf(out, n, S_OPENCLIP "transformer.resblocks.%d.%s%s", k, layer[i][1], rest + l);
            return true;
        }
    }
    static const char *const qkv[3] = {"self_attn.q_proj.", "self_attn.k_proj.", "self_attn.v_proj."};
    for (int s = 0; s < 3; s++)
        if (!strncmp(rest, qkv[s], strlen(qkv[s]))) {
            *slice = s;
            snprintf(out, n, S_OPENCLIP "transformer.resblocks.%d.attn.in_proj_%s", k, rest + strlen(qkv[s]));
            return true;
        }
    return false;
}

int sd_single_file_check_heads(const sd_single_file_t *sf)
{
    for (int b = 0; b < sf->unet.n_blocks; b++)
        if (!sf->unet.heads[b]) {
            BT_ERROR("%s: UNet block %d has %lld channels, not a multiple of SD 2.x's 64 per attention head; give "
                     "a diffusers config folder (booth convert --config DIR)",
                     sf->path, b, (long long)sf->unet.block_out_channels[b]);
            return BT_EFORMAT;
        }
    if (!sf->clip.num_heads) {
        BT_ERROR("%s: the text encoder is %lld wide, not a multiple of CLIP's 64 per attention head; give a "
                 "diffusers config folder (booth convert --config DIR)",
                 sf->path, (long long)sf->clip.hidden_size);
        return BT_EFORMAT;
    }
    return BT_OK;
}

int sd_single_file_view(const sd_single_file_t *sf, sd_sf_part_t part, const sd_params_t *ps, st_file_t **view)
{
    char label[4200];
    snprintf(label, sizeof label, "%s", sf->path);
    *view = st_view_new(label);
    if (!*view) return BT_ENOMEM;
    int rc = BT_OK;
    for (int i = 0; i < ps->n && rc == BT_OK; i++) {
        const char *name = ps->p[i].name;
        char ldm[S_NAME];
        int slice = -1;
        bool ok = part == SD_SF_UNET  ? s_unet_ldm(&sf->unet, name, ldm, sizeof ldm)
                  : part == SD_SF_VAE ? s_vae_ldm(sf, name, ldm, sizeof ldm)
                                      : s_clip_ldm(sf, name, ldm, sizeof ldm, &slice);
        if (!ok) {
            BT_ERROR("%s: internal: no single-file name for the %s's '%s'", sf->path, s_part_what[part], name);
            rc = BT_EINTERNAL;
            break;
        }
        const st_tensor_t *t = st_find(sf->file, ldm);
        if (!t) {
            BT_ERROR("%s: tensor '%s' (the %s's '%s') is missing", sf->path, ldm, s_part_what[part], name);
            rc = BT_ENOTFOUND;
            break;
        }
        /* sizes are checked here, before the loader allocates what the config asks for:
         * a shape inferred from one tensor must not ask for more than the file holds */
        const sd_param_t *p = &ps->p[i];
        int64_t want = 1;
        for (int d = 0; d < p->ndim; d++) want *= p->shape[d];
        if (slice < 0) {
            if (st_numel(t) != want) {
                char a[96], b[96];
                BT_ERROR("%s: tensor '%s' has shape %s; the model its shapes describe needs %s for the %s's '%s'",
                         sf->path, ldm, st_shape_str(t->ndim, t->shape, a, sizeof a),
                         st_shape_str(p->ndim, p->shape, b, sizeof b), s_part_what[part], name);
                rc = BT_ESHAPE;
                break;
            }
            rc = st_view_add(*view, name, t->dtype, t->ndim, t->shape, t->data);
            continue;
        }
        /* rows [s H, (s+1) H) of in_proj_weight [3H, H] or in_proj_bias [3H] */
        int64_t H = sf->clip.hidden_size;
        bool w = t->ndim == 2;
        if (!(t->ndim == 1 || (w && t->shape[1] == H)) || t->shape[0] != 3 * H) {
            char b[96];
            BT_ERROR("%s: tensor '%s' has shape %s, expected [%lld%s] (q, k and v of width %lld)", sf->path, ldm,
                     st_shape_str(t->ndim, t->shape, b, sizeof b), (long long)(3 * H), w ? ", H" : "", (long long)H);
            rc = BT_ESHAPE;
            break;
        }
        if (want != (w ? H * H : H)) {
            BT_ERROR("%s: the text encoder's '%s' needs %lld values, a third of '%s' holds %lld", sf->path, name,
                     (long long)want, ldm, (long long)(w ? H * H : H));
            rc = BT_ESHAPE;
            break;
        }
        size_t row = (size_t)(w ? H : 1) * st_dtype_size(t->dtype);
        int64_t shape[2] = {H, H};
        rc = st_view_add(*view, name, t->dtype, t->ndim, shape, (const char *)t->data + (size_t)(slice * H) * row);
    }
    if (rc == BT_OK) rc = st_view_seal(*view);
    if (rc) st_close(view);
    return rc;
}

/* ---------------------------------------------------------------- scheduler */

char *sd_single_file_sched_json(const sd_single_file_t *sf)
{
    /* diffusers' defaults for SD checkpoints (SCHEDULER_DEFAULT_CONFIG), in the class the
     * SD 1.5 / 2.1 snapshots name */
    static const char *const pred[] = {"epsilon", "v_prediction", "sample"};
    char *s = bt_malloc(1024);
    if (!s) {
        BT_ERROR("%s: out of memory", sf->path);
        return NULL;
    }
    snprintf(s, 1024,
             "{\n  \"_class_name\": \"%s\",\n  \"_diffusers_version\": \"0.25.1\",\n  \"beta_end\": 0.012,\n"
             "  \"beta_schedule\": \"scaled_linear\",\n  \"beta_start\": 0.00085,\n  \"clip_sample\": false,\n"
             "  \"num_train_timesteps\": 1000,\n  \"prediction_type\": \"%s\",\n  \"set_alpha_to_one\": false,\n"
             "  \"skip_prk_steps\": true,\n  \"steps_offset\": 1,\n  \"timestep_spacing\": \"leading\",\n"
             "  \"trained_betas\": null\n}\n",
             sf->sd2 ? "DDIMScheduler" : "PNDMScheduler", pred[sf->prediction <= SD_PRED_SAMPLE ? sf->prediction : 0]);
    return s;
}

int sd_single_file_sched(const sd_single_file_t *sf, sd_sched_config_t *cfg)
{
    if (sf->config_dir) {
        char path[4096];
        snprintf(path, sizeof path, "%s/scheduler/scheduler_config.json", sf->config_dir);
        struct stat st;
        if (stat(path, &st) == 0) {
            int rc = sd_sched_config_load(cfg, path);
            if (rc == BT_OK && sf->prediction_given) cfg->prediction_type = sf->prediction;
            return rc;
        }
    }
    char *json = sd_single_file_sched_json(sf);
    if (!json) return BT_ENOMEM;
    char origin[4200];
    snprintf(origin, sizeof origin, "%s (SD scheduler defaults)", sf->path);
    int rc = sd_sched_config_parse(cfg, json, strlen(json), origin);
    free(json);
    if (rc == BT_OK && sf->prediction != cfg->prediction_type) cfg->prediction_type = sf->prediction;
    return rc;
}
