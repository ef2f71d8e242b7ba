/*
 * config.c — reading and writing the config.json of a UNet, VAE or CLIP text
 * encoder, resolving diffusers' legacy conventions into per-block values.
 */
#include "diffusion/config.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/fileio.h"
#include "common/json.h"
#include "common/log.h"
#include "common/status.h"

/* Sizes above this are a corrupt file, not a model (and products of two stay far
 * inside int64). */
#define S_MAX_CH 16384 /* channels and widths: SD 2.x has 1280 (UNet), 1024 (CLIP); an absurd value is
                       * refused naming its field, before any size is computed from it */

/* A list of block type names; *n receives the count. */
static int s_types(const bt_json_t *j, const char *key, const char *cross, const char *plain, bool *is_cross, int *n)
{
    const cJSON *v = bt_json_get(j, key);
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) < 1 || cJSON_GetArraySize(v) > SD_MAX_BLOCKS) {
        if (cJSON_IsArray(v))
            bt_json_error(j, key, "has %d entries, must be a list of 1 to %d block types", cJSON_GetArraySize(v),
                          SD_MAX_BLOCKS);
        else
            bt_json_error(j, key, "must be a list of 1 to %d block types, not %s", SD_MAX_BLOCKS,
                          bt_json_type_name(v));
        return BT_EFORMAT;
    }
    *n = cJSON_GetArraySize(v);
    for (int i = 0; i < *n; i++) {
        const cJSON *e = cJSON_GetArrayItem(v, i);
        if (cJSON_IsString(e) && cross && !strcmp(e->valuestring, cross))
            is_cross[i] = true;
        else if (cJSON_IsString(e) && !strcmp(e->valuestring, plain))
            is_cross[i] = false;
        else {
            BT_ERROR("%s: %s[%d] = '%s' is not supported (booth implements %s%s%s)", j->name, key, i,
                     cJSON_IsString(e) ? e->valuestring : bt_json_type_name(e), plain, cross ? " and " : "",
                     cross ? cross : "");
            return BT_EUNSUPPORTED;
        }
    }
    return BT_OK;
}

/* A key that must be absent/null/false (or equal to `allowed`) because booth does not implement it. */
static int s_unsupported(const bt_json_t *j, const char *key, const char *allowed)
{
    const cJSON *v = bt_json_get(j, key);
    if (!v || cJSON_IsFalse(v)) return BT_OK;
    if (allowed && cJSON_IsString(v) && !strcmp(v->valuestring, allowed)) return BT_OK;
    char *txt = cJSON_PrintUnformatted(v);
    BT_ERROR("%s: '%s': %s is not supported (Stable Diffusion 1.x/2.x models do not use it)", j->name, key,
             txt ? txt : "?");
    free(txt);
    return BT_EUNSUPPORTED;
}

int sd_unet_config_load(const char *path, sd_unet_config_t *c)
{
    bt_json_t j;
    memset(c, 0, sizeof *c);
    int rc = bt_json_open(&j, path);
    if (rc) return rc;
    const char *cls, *mid, *act;
    if ((rc = bt_json_string(&j, "_class_name", NULL, &cls)) ||
        (rc = bt_json_string(&j, "mid_block_type", NULL, &mid)) || (rc = bt_json_string(&j, "act_fn", NULL, &act)))
        goto out;
    if (cls && strcmp(cls, "UNet2DConditionModel")) {
        BT_ERROR("%s: _class_name '%s' is not UNet2DConditionModel", path, cls);
        rc = BT_EUNSUPPORTED;
        goto out;
    }
    int nup = 0;
    if ((rc = s_types(&j, "down_block_types", "CrossAttnDownBlock2D", "DownBlock2D", c->down_cross, &c->n_blocks)) ||
        (rc = s_types(&j, "up_block_types", "CrossAttnUpBlock2D", "UpBlock2D", c->up_cross, &nup)))
        goto out;
    if (nup != c->n_blocks) {
        BT_ERROR("%s: %d down blocks but %d up blocks", path, c->n_blocks, nup);
        rc = BT_EFORMAT;
        goto out;
    }
    int n = c->n_blocks;
    c->has_mid = mid != NULL;
    if (mid && !strcmp(mid, "UNetMidBlock2DCrossAttn"))
        c->mid_cross = true;
    else if (mid && strcmp(mid, "UNetMidBlock2D")) {
        BT_ERROR("%s: mid_block_type '%s' is not supported", path, mid);
        rc = BT_EUNSUPPORTED;
        goto out;
    }
    int64_t heads[SD_MAX_BLOCKS], head_dim[SD_MAX_BLOCKS];
    bool have_num_heads = bt_json_get(&j, "num_attention_heads") != NULL;
    /* latents of at most 1024 a side: 8192 px, the largest --width/--height (a bigger default would
     * size buffers past any memory: 100000 asked for a 160 GB calloc) */
    if ((rc = bt_json_int64(&j, "sample_size", 64, 1, 1024, &c->sample_size)) ||
        (rc = bt_json_int64(&j, "in_channels", 4, 1, 1024, &c->in_channels)) ||
        (rc = bt_json_int64(&j, "out_channels", 4, 1, 1024, &c->out_channels)) ||
        (rc = bt_json_bool(&j, "flip_sin_to_cos", true, &c->flip_sin_to_cos)) ||
        (rc = bt_json_float(&j, "freq_shift", 0, -INFINITY, INFINITY, &c->freq_shift)) ||
        (rc = bt_json_int64_list(&j, "block_out_channels", n, 0, 1, S_MAX_CH, c->block_out_channels)) ||
        (rc = bt_json_int64_list(&j, "layers_per_block", n, 2, 1, 64, c->layers_per_block)) ||
        (rc = bt_json_int64_list(&j, "transformer_layers_per_block", n, 1, 1, 64, c->transformer_layers)) ||
        (rc = bt_json_int64_list(&j, "attention_head_dim", n, 8, 1, 4096, head_dim)) ||
        (rc = bt_json_int64_list(&j, "num_attention_heads", n, 8, 1, 4096, heads)) ||
        (rc = bt_json_int64_list(&j, "cross_attention_dim", n, 1280, 1, S_MAX_CH, c->cross_attention_dim)) ||
        (rc = bt_json_bool_list(&j, "only_cross_attention", n, false, c->only_cross_attention)) ||
        (rc = bt_json_int64(&j, "downsample_padding", 1, 0, 16, &c->downsample_padding)) ||
        (rc = bt_json_float(&j, "mid_block_scale_factor", 1, -INFINITY, INFINITY, &c->mid_block_scale_factor)) ||
        (rc = bt_json_int64(&j, "norm_num_groups", 32, 1, S_MAX_CH, &c->norm_num_groups)) ||
        (rc = bt_json_float(&j, "norm_eps", 1e-5f, -INFINITY, INFINITY, &c->norm_eps)) ||
        (rc = bt_json_bool(&j, "use_linear_projection", false, &c->use_linear_projection)) ||
        (rc = bt_json_int64(&j, "conv_in_kernel", 3, 1, 15, &c->conv_in_kernel)) ||
        (rc = bt_json_int64(&j, "conv_out_kernel", 3, 1, 15, &c->conv_out_kernel)) ||
        (rc = bt_json_int64(&j, "time_embedding_dim", 0, 0, S_MAX_CH, &c->time_embed_dim)) ||
        (rc = bt_json_bool(&j, "upcast_attention", false, &c->upcast_attention)))
        goto out;
    /* UNetMidBlock2DCrossAttn takes no only_cross_attention: its first attention is
     * always self-attention (mid_block_only_cross_attention belongs to
     * UNetMidBlock2DSimpleCrossAttn, which booth does not implement) */
    c->mid_only_cross_attention = false;
    /* legacy naming: without num_attention_heads, attention_head_dim is the head count */
    for (int i = 0; i < n; i++) c->heads[i] = have_num_heads ? heads[i] : head_dim[i];
    if (!c->time_embed_dim) c->time_embed_dim = 4 * c->block_out_channels[0];
    static const char *const unsupported[] = {"class_embed_type", "addition_embed_type", "encoder_hid_dim",
                                              "time_cond_proj_dim", "dual_cross_attention", "center_input_sample",
                                              "timestep_post_act", "time_embedding_act_fn", "cross_attention_norm",
                                              "resnet_skip_time_act", "num_class_embeds", NULL};
    for (int i = 0; unsupported[i]; i++)
        if ((rc = s_unsupported(&j, unsupported[i], NULL))) goto out;
    if ((rc = s_unsupported(&j, "resnet_time_scale_shift", "default")) ||
        (rc = s_unsupported(&j, "time_embedding_type", "positional")) ||
        (rc = s_unsupported(&j, "attention_type", "default")))
        goto out;
    if (act && strcmp(act, "silu") && strcmp(act, "swish")) {
        BT_ERROR("%s: act_fn '%s' is not supported (silu)", path, act);
        rc = BT_EUNSUPPORTED;
        goto out;
    }
    float rosf = 1;
    if ((rc = bt_json_float(&j, "resnet_out_scale_factor", 1, -INFINITY, INFINITY, &rosf))) goto out;
    if (rosf != 1.0f) {
        BT_ERROR("%s: resnet_out_scale_factor %g is not supported (1.0)", path, rosf);
        rc = BT_EUNSUPPORTED;
        goto out;
    }
    for (int i = 0; i < n; i++) {
        int64_t ch = c->block_out_channels[i];
        if (ch % c->norm_num_groups || (c->down_cross[i] && ch % c->heads[i])) {
            BT_ERROR("%s: block %d has %lld channels, not divisible by %lld groups / %lld heads", path, i,
                     (long long)ch, (long long)c->norm_num_groups, (long long)c->heads[i]);
            rc = BT_EFORMAT;
            goto out;
        }
    }
    if (c->conv_in_kernel % 2 == 0 || c->conv_out_kernel % 2 == 0) {
        BT_ERROR("%s: conv_in_kernel and conv_out_kernel must be odd", path);
        rc = BT_EFORMAT;
    }
out:
    bt_json_free(&j);
    return rc;
}

int sd_vae_config_load(const char *path, sd_vae_config_t *c)
{
    bt_json_t j;
    memset(c, 0, sizeof *c);
    int rc = bt_json_open(&j, path);
    if (rc) return rc;
    bool cross[SD_MAX_BLOCKS];
    int nup = 0;
    const char *cls;
    if ((rc = bt_json_string(&j, "_class_name", NULL, &cls))) goto out;
    if (cls && strcmp(cls, "AutoencoderKL")) {
        BT_ERROR("%s: _class_name '%s' is not AutoencoderKL", path, cls);
        rc = BT_EUNSUPPORTED;
        goto out;
    }
    if ((rc = s_types(&j, "down_block_types", NULL, "DownEncoderBlock2D", cross, &c->n_blocks)) ||
        (rc = s_types(&j, "up_block_types", NULL, "UpDecoderBlock2D", cross, &nup)))
        goto out;
    if (nup != c->n_blocks) {
        BT_ERROR("%s: %d down blocks but %d up blocks", path, c->n_blocks, nup);
        rc = BT_EFORMAT;
        goto out;
    }
    if ((rc = bt_json_int64(&j, "in_channels", 3, 1, 1024, &c->in_channels)) ||
        (rc = bt_json_int64(&j, "out_channels", 3, 1, 1024, &c->out_channels)) ||
        (rc = bt_json_int64(&j, "latent_channels", 4, 1, 1024, &c->latent_channels)) ||
        (rc = bt_json_int64_list(&j, "block_out_channels", c->n_blocks, 64, 1, S_MAX_CH, c->block_out_channels)) ||
        (rc = bt_json_int64(&j, "layers_per_block", 1, 1, 64, &c->layers_per_block)) ||
        (rc = bt_json_int64(&j, "norm_num_groups", 32, 1, S_MAX_CH, &c->norm_num_groups)) ||
        (rc = bt_json_float(&j, "scaling_factor", 0.18215f, -INFINITY, INFINITY, &c->scaling_factor)) ||
        (rc = bt_json_float(&j, "shift_factor", 0, -INFINITY, INFINITY, &c->shift_factor)) ||
        (rc = bt_json_int64(&j, "sample_size", 512, 8, 8192, &c->sample_size)) || /* pixels, as --width */
        (rc = bt_json_bool(&j, "mid_block_add_attention", true, &c->mid_attention)))
        goto out;
    const cJSON *uq = bt_json_get(&j, "use_quant_conv"), *upq = bt_json_get(&j, "use_post_quant_conv");
    if ((uq && cJSON_IsFalse(uq)) || (upq && cJSON_IsFalse(upq))) {
        BT_ERROR("%s: VAEs without quant_conv/post_quant_conv are not supported", path);
        rc = BT_EUNSUPPORTED;
        goto out;
    }
    for (int i = 0; i < c->n_blocks; i++)
        if (c->block_out_channels[i] % c->norm_num_groups) {
            BT_ERROR("%s: block %d has %lld channels, not divisible by %lld groups", path, i,
                     (long long)c->block_out_channels[i], (long long)c->norm_num_groups);
            rc = BT_EFORMAT;
            goto out;
        }
out:
    bt_json_free(&j);
    return rc;
}

int sd_clip_config_load(const char *path, sd_clip_config_t *c)
{
    bt_json_t j;
    memset(c, 0, sizeof *c);
    int rc = bt_json_open(&j, path);
    if (rc) return rc;
    if ((rc = bt_json_int64(&j, "vocab_size", 49408, 1, (1 << 22), &c->vocab_size)) ||
        (rc = bt_json_int64(&j, "hidden_size", 512, 1, S_MAX_CH, &c->hidden_size)) ||
        (rc = bt_json_int64(&j, "intermediate_size", 2048, 1, (4 * S_MAX_CH), &c->intermediate_size)) ||
        (rc = bt_json_int64(&j, "num_hidden_layers", 12, 1, 1024, &c->num_layers)) ||
        (rc = bt_json_int64(&j, "num_attention_heads", 8, 1, 4096, &c->num_heads)) ||
        (rc = bt_json_int64(&j, "max_position_embeddings", 77, 1, S_MAX_CH, &c->max_positions)) ||
        (rc = bt_json_float(&j, "layer_norm_eps", 1e-5f, -INFINITY, INFINITY, &c->layer_norm_eps)) ||
        (rc = bt_json_int64(&j, "eos_token_id", 2, 0, (1 << 22), &c->eos_token_id)))
        goto out;
    const char *act;
    if ((rc = bt_json_string(&j, "hidden_act", NULL, &act))) goto out;
    if (!act || !strcmp(act, "quick_gelu"))
        c->act = SD_ACT_QUICK_GELU;
    else if (!strcmp(act, "gelu"))
        c->act = SD_ACT_GELU;
    else if (!strcmp(act, "gelu_new") || !strcmp(act, "gelu_pytorch_tanh"))
        c->act = SD_ACT_GELU_TANH;
    else {
        BT_ERROR("%s: hidden_act '%s' is not supported (quick_gelu, gelu, gelu_new)", path, act);
        rc = BT_EUNSUPPORTED;
        goto out;
    }
    if (c->hidden_size % c->num_heads) {
        BT_ERROR("%s: hidden_size %lld is not divisible by num_attention_heads %lld", path,
                 (long long)c->hidden_size, (long long)c->num_heads);
        rc = BT_EFORMAT;
    }
out:
    bt_json_free(&j);
    return rc;
}

/* ---- writing ---- */

static cJSON *s_int_array(const int64_t *v, int n)
{
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber((double)v[i]));
    return a;
}

static bool s_all_equal(const int64_t *v, int n)
{
    for (int i = 1; i < n; i++)
        if (v[i] != v[0]) return false;
    return true;
}

/* Scalar when all entries agree (as SD 1.x configs write it), else a list. */
static void s_add_int_or_list(cJSON *o, const char *key, const int64_t *v, int n)
{
    if (s_all_equal(v, n))
        cJSON_AddNumberToObject(o, key, (double)v[0]);
    else
        cJSON_AddItemToObject(o, key, s_int_array(v, n));
}

static int s_save(const char *path, cJSON *root)
{
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    if (!text) return BT_ENOMEM;
    bt_atomic_file_t af;
    int rc = bt_atomic_open(&af, path);
    if (rc == BT_OK) {
        fputs(text, af.f);
        fputc('\n', af.f);
        rc = bt_atomic_commit(&af);
    }
    free(text);
    return rc;
}

int sd_unet_config_save(const char *path, const sd_unet_config_t *c)
{
    int n = c->n_blocks;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "_class_name", "UNet2DConditionModel");
    cJSON_AddStringToObject(o, "_diffusers_version", "0.25.1");
    cJSON_AddStringToObject(o, "act_fn", "silu");
    s_add_int_or_list(o, "attention_head_dim", c->heads, n);
    cJSON_AddItemToObject(o, "block_out_channels", s_int_array(c->block_out_channels, n));
    cJSON_AddNumberToObject(o, "conv_in_kernel", (double)c->conv_in_kernel);
    cJSON_AddNumberToObject(o, "conv_out_kernel", (double)c->conv_out_kernel);
    s_add_int_or_list(o, "cross_attention_dim", c->cross_attention_dim, n);
    cJSON *down = cJSON_CreateArray(), *up = cJSON_CreateArray();
    for (int i = 0; i < n; i++) {
        cJSON_AddItemToArray(down, cJSON_CreateString(c->down_cross[i] ? "CrossAttnDownBlock2D" : "DownBlock2D"));
        cJSON_AddItemToArray(up, cJSON_CreateString(c->up_cross[i] ? "CrossAttnUpBlock2D" : "UpBlock2D"));
    }
    cJSON_AddItemToObject(o, "down_block_types", down);
    cJSON_AddNumberToObject(o, "downsample_padding", (double)c->downsample_padding);
    cJSON_AddBoolToObject(o, "flip_sin_to_cos", c->flip_sin_to_cos);
    cJSON_AddNumberToObject(o, "freq_shift", c->freq_shift);
    cJSON_AddNumberToObject(o, "in_channels", (double)c->in_channels);
    s_add_int_or_list(o, "layers_per_block", c->layers_per_block, n);
    cJSON_AddNumberToObject(o, "mid_block_scale_factor", c->mid_block_scale_factor);
    if (c->has_mid)
        cJSON_AddStringToObject(o, "mid_block_type", c->mid_cross ? "UNetMidBlock2DCrossAttn" : "UNetMidBlock2D");
    else
        cJSON_AddNullToObject(o, "mid_block_type");
    cJSON_AddNumberToObject(o, "norm_eps", c->norm_eps);
    cJSON_AddNumberToObject(o, "norm_num_groups", (double)c->norm_num_groups);
    bool any_oca = false;
    for (int i = 0; i < n; i++) any_oca |= c->only_cross_attention[i];
    cJSON_AddBoolToObject(o, "only_cross_attention", any_oca);
    cJSON_AddNumberToObject(o, "out_channels", (double)c->out_channels);
    cJSON_AddNumberToObject(o, "sample_size", (double)c->sample_size);
    s_add_int_or_list(o, "transformer_layers_per_block", c->transformer_layers, n);
    cJSON_AddItemToObject(o, "up_block_types", up);
    cJSON_AddBoolToObject(o, "upcast_attention", c->upcast_attention);
    cJSON_AddBoolToObject(o, "use_linear_projection", c->use_linear_projection);
    return s_save(path, o);
}

int sd_vae_config_save(const char *path, const sd_vae_config_t *c)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "_class_name", "AutoencoderKL");
    cJSON_AddStringToObject(o, "_diffusers_version", "0.25.1");
    cJSON_AddStringToObject(o, "act_fn", "silu");
    cJSON_AddItemToObject(o, "block_out_channels", s_int_array(c->block_out_channels, c->n_blocks));
    cJSON *down = cJSON_CreateArray(), *up = cJSON_CreateArray();
    for (int i = 0; i < c->n_blocks; i++) {
        cJSON_AddItemToArray(down, cJSON_CreateString("DownEncoderBlock2D"));
        cJSON_AddItemToArray(up, cJSON_CreateString("UpDecoderBlock2D"));
    }
    cJSON_AddItemToObject(o, "down_block_types", down);
    cJSON_AddNumberToObject(o, "in_channels", (double)c->in_channels);
    cJSON_AddNumberToObject(o, "latent_channels", (double)c->latent_channels);
    cJSON_AddNumberToObject(o, "layers_per_block", (double)c->layers_per_block);
    if (!c->mid_attention) cJSON_AddFalseToObject(o, "mid_block_add_attention"); /* diffusers' default: true */
    cJSON_AddNumberToObject(o, "norm_num_groups", (double)c->norm_num_groups);
    cJSON_AddNumberToObject(o, "out_channels", (double)c->out_channels);
    cJSON_AddNumberToObject(o, "sample_size", (double)c->sample_size);
    cJSON_AddNumberToObject(o, "scaling_factor", c->scaling_factor);
    cJSON_AddItemToObject(o, "up_block_types", up);
    return s_save(path, o);
}

int sd_clip_config_save(const char *path, const sd_clip_config_t *c)
{
    cJSON *o = cJSON_CreateObject();
    cJSON *arch = cJSON_CreateArray();
    cJSON_AddItemToArray(arch, cJSON_CreateString("CLIPTextModel"));
    cJSON_AddItemToObject(o, "architectures", arch);
    cJSON_AddNumberToObject(o, "bos_token_id", 0);
    cJSON_AddNumberToObject(o, "eos_token_id", (double)c->eos_token_id);
    cJSON_AddStringToObject(o, "hidden_act", c->act == SD_ACT_QUICK_GELU ? "quick_gelu"
                                             : c->act == SD_ACT_GELU     ? "gelu"
                                                                         : "gelu_new");
    cJSON_AddNumberToObject(o, "hidden_size", (double)c->hidden_size);
    cJSON_AddNumberToObject(o, "intermediate_size", (double)c->intermediate_size);
    cJSON_AddNumberToObject(o, "layer_norm_eps", c->layer_norm_eps);
    cJSON_AddNumberToObject(o, "max_position_embeddings", (double)c->max_positions);
    cJSON_AddStringToObject(o, "model_type", "clip_text_model");
    cJSON_AddNumberToObject(o, "num_attention_heads", (double)c->num_heads);
    cJSON_AddNumberToObject(o, "num_hidden_layers", (double)c->num_layers);
    cJSON_AddNumberToObject(o, "pad_token_id", 1);
    cJSON_AddStringToObject(o, "torch_dtype", "float32");
    cJSON_AddNumberToObject(o, "vocab_size", (double)c->vocab_size);
    return s_save(path, o);
}
