/*
 * init.c — architecture presets and random model folders (`booth init-model`).
 */
#include "diffusion/init.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/fileio.h"
#include "common/log.h"
#include "common/status.h"
#include "diffusion/clip.h"
#include "diffusion/params.h"
#include "diffusion/unet.h"
#include "diffusion/vae.h"

/* The CLIP vocabulary embedded by clip_tokenizer.S. */
extern const char sd_clip_vocab_json[], sd_clip_vocab_json_end[];
extern const char sd_clip_merges_txt[], sd_clip_merges_txt_end[];

bool sd_arch_parse(const char *name, sd_arch_t *arch)
{
    static const char *const names[] = {"tiny", "sd15", "sd21"};
    for (int i = 0; i < 3; i++)
        if (!strcmp(name, names[i])) {
            *arch = (sd_arch_t)i;
            return true;
        }
    return false;
}

const char *sd_arch_name(sd_arch_t arch)
{
    return arch == SD_ARCH_SD15 ? "sd15" : arch == SD_ARCH_SD21 ? "sd21" : "tiny";
}

void sd_arch_configs(sd_arch_t arch, sd_unet_config_t *u, sd_vae_config_t *v, sd_clip_config_t *c)
{
    memset(u, 0, sizeof *u);
    memset(v, 0, sizeof *v);
    memset(c, 0, sizeof *c);
    bool tiny = arch == SD_ARCH_TINY, sd21 = arch == SD_ARCH_SD21;
    /* UNet: CrossAttnDown x3 + Down, UNetMidBlock2DCrossAttn, Up + CrossAttnUp x3 */
    u->n_blocks = 4;
    u->in_channels = u->out_channels = 4;
    u->flip_sin_to_cos = true;
    u->has_mid = u->mid_cross = true;
    u->downsample_padding = 1;
    u->mid_block_scale_factor = 1;
    u->norm_num_groups = 32;
    u->norm_eps = 1e-5f;
    u->conv_in_kernel = u->conv_out_kernel = 3;
    u->use_linear_projection = sd21;
    u->upcast_attention = sd21;
    u->sample_size = tiny ? 16 : sd21 ? 96 : 64;
    const int64_t tiny_ch[4] = {32, 64, 64, 64}, sd_ch[4] = {320, 640, 1280, 1280};
    const int64_t sd21_heads[4] = {5, 10, 20, 20};
    for (int i = 0; i < 4; i++) {
        u->down_cross[i] = i < 3;
        u->up_cross[i] = i > 0;
        u->block_out_channels[i] = tiny ? tiny_ch[i] : sd_ch[i];
        u->layers_per_block[i] = 2;
        u->transformer_layers[i] = 1;
        u->heads[i] = sd21 ? sd21_heads[i] : 8;
        u->cross_attention_dim[i] = tiny ? 32 : sd21 ? 1024 : 768;
    }
    u->time_embed_dim = 4 * u->block_out_channels[0];
    /* VAE */
    v->in_channels = v->out_channels = 3;
    v->latent_channels = 4;
    v->n_blocks = 4;
    const int64_t tiny_vae[4] = {32, 32, 64, 64}, sd_vae[4] = {128, 256, 512, 512};
    for (int i = 0; i < 4; i++) v->block_out_channels[i] = tiny ? tiny_vae[i] : sd_vae[i];
    v->layers_per_block = tiny ? 1 : 2;
    v->norm_num_groups = 32;
    v->scaling_factor = 0.18215f;
    v->sample_size = tiny ? 128 : sd21 ? 768 : 512;
    v->mid_attention = true;
    /* CLIP text encoder: ViT-L/14 (SD 1.x), OpenCLIP ViT-H/14 minus its last layer (SD 2.x) */
    c->vocab_size = 49408;
    c->max_positions = 77;
    c->layer_norm_eps = 1e-5f;
    c->eos_token_id = 2;
    if (tiny) {
        c->hidden_size = 32;
        c->intermediate_size = 37;
        c->num_layers = 3;
        c->num_heads = 4;
        c->act = SD_ACT_QUICK_GELU;
    } else if (sd21) {
        c->hidden_size = 1024;
        c->intermediate_size = 4096;
        c->num_layers = 23;
        c->num_heads = 16;
        c->act = SD_ACT_GELU;
    } else {
        c->hidden_size = 768;
        c->intermediate_size = 3072;
        c->num_layers = 12;
        c->num_heads = 12;
        c->act = SD_ACT_QUICK_GELU;
    }
}

static int s_write_text(const char *path, const char *text, size_t len)
{
    bt_atomic_file_t af;
    int rc = bt_atomic_open(&af, path);
    if (rc) return rc;
    if (fwrite(text, 1, len, af.f) != len) {
        BT_ERROR("%s: write failed", path);
        bt_atomic_abort(&af);
        return BT_EIO;
    }
    return bt_atomic_commit(&af);
}

static int s_write_str(const char *dir, const char *name, const char *text)
{
    char path[8192];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return s_write_text(path, text, strlen(text));
}

static const char s_model_index[] =
    "{\n  \"_class_name\": \"StableDiffusionPipeline\",\n  \"_diffusers_version\": \"0.25.1\",\n"
    "  \"feature_extractor\": [null, null],\n  \"requires_safety_checker\": false,\n"
    "  \"safety_checker\": [null, null],\n  \"scheduler\": [\"diffusers\", \"%s\"],\n"
    "  \"text_encoder\": [\"transformers\", \"CLIPTextModel\"],\n"
    "  \"tokenizer\": [\"transformers\", \"CLIPTokenizer\"],\n"
    "  \"unet\": [\"diffusers\", \"UNet2DConditionModel\"],\n  \"vae\": [\"diffusers\", \"AutoencoderKL\"]\n}\n";

static const char s_sched_sd1[] =
    "{\n  \"_class_name\": \"PNDMScheduler\",\n  \"_diffusers_version\": \"0.25.1\",\n  \"beta_end\": 0.012,\n"
    "  \"beta_schedule\": \"scaled_linear\",\n  \"beta_start\": 0.00085,\n  \"clip_sample\": false,\n"
    "  \"num_train_timesteps\": 1000,\n  \"prediction_type\": \"epsilon\",\n  \"set_alpha_to_one\": false,\n"
    "  \"skip_prk_steps\": true,\n  \"steps_offset\": 1,\n  \"timestep_spacing\": \"leading\",\n"
    "  \"trained_betas\": null\n}\n";

static const char s_sched_sd21[] =
    "{\n  \"_class_name\": \"DDIMScheduler\",\n  \"_diffusers_version\": \"0.25.1\",\n  \"beta_end\": 0.012,\n"
    "  \"beta_schedule\": \"scaled_linear\",\n  \"beta_start\": 0.00085,\n  \"clip_sample\": false,\n"
    "  \"num_train_timesteps\": 1000,\n  \"prediction_type\": \"v_prediction\",\n  \"set_alpha_to_one\": false,\n"
    "  \"skip_prk_steps\": true,\n  \"steps_offset\": 1,\n  \"timestep_spacing\": \"leading\",\n"
    "  \"trained_betas\": null\n}\n";

/* SD 1.x tokenizer folders pad with <|endoftext|>; SD 2.x ones with "!" (id 0). */
static const char s_tok_config[] =
    "{\n  \"add_prefix_space\": false,\n  \"bos_token\": \"<|startoftext|>\",\n  \"do_lower_case\": true,\n"
    "  \"eos_token\": \"<|endoftext|>\",\n  \"errors\": \"replace\",\n  \"model_max_length\": 77,\n"
    "  \"pad_token\": \"%s\",\n  \"tokenizer_class\": \"CLIPTokenizer\",\n  \"unk_token\": \"<|endoftext|>\"\n}\n";
static const char s_special_tokens[] =
    "{\n  \"bos_token\": \"<|startoftext|>\",\n  \"eos_token\": \"<|endoftext|>\",\n  \"pad_token\": \"%s\",\n"
    "  \"unk_token\": \"<|endoftext|>\"\n}\n";

int sd_model_write_tokenizer(const char *dir, bool sd2)
{
    char sub[4096], path[8192], text[2048];
    snprintf(sub, sizeof sub, "%s/tokenizer", dir);
    int rc = bt_mkdirs(sub);
    if (rc) return rc;
    snprintf(path, sizeof path, "%s/vocab.json", sub);
    if ((rc = s_write_text(path, sd_clip_vocab_json, (size_t)(sd_clip_vocab_json_end - sd_clip_vocab_json))))
        return rc;
    snprintf(path, sizeof path, "%s/merges.txt", sub);
    if ((rc = s_write_text(path, sd_clip_merges_txt, (size_t)(sd_clip_merges_txt_end - sd_clip_merges_txt))))
        return rc;
    const char *pad = sd2 ? "!" : "<|endoftext|>";
    snprintf(text, sizeof text, s_tok_config, pad);
    if ((rc = s_write_str(sub, "tokenizer_config.json", text))) return rc;
    snprintf(text, sizeof text, s_special_tokens, pad);
    return s_write_str(sub, "special_tokens_map.json", text);
}

int sd_model_write_index(const char *dir, const char *scheduler_class)
{
    char text[2048];
    snprintf(text, sizeof text, s_model_index, scheduler_class);
    return s_write_str(dir, "model_index.json", text);
}

static int s_save_part(nn_ctx_t *ctx, sd_params_t *ps, const char *path, uint64_t seed, st_dtype_t dtype)
{
    int rc = sd_params_alloc(ps, ctx);
    if (rc == BT_OK) rc = sd_params_init_random(ps, seed);
    if (rc == BT_OK) rc = sd_params_save(ps, path, dtype, (const char *const[]){"format", "pt", NULL});
    return rc;
}

int sd_model_init(nn_ctx_t *ctx, const char *dir, sd_arch_t arch, uint64_t seed, st_dtype_t dtype,
                  sd_init_progress_fn progress, void *user)
{
    sd_unet_config_t ucfg;
    sd_vae_config_t vcfg;
    sd_clip_config_t ccfg;
    sd_arch_configs(arch, &ucfg, &vcfg, &ccfg);
    char sub[4096], path[8192];
    int rc = BT_OK;
    const char *suffix = dtype == ST_F16 ? ".fp16" : dtype == ST_BF16 ? ".bf16" : "";
    static const char *const parts[] = {"unet", "vae", "text_encoder", "tokenizer", "scheduler"};
    for (int i = 0; i < 5; i++) {
        snprintf(sub, sizeof sub, "%s/%s", dir, parts[i]);
        if ((rc = bt_mkdirs(sub))) return rc;
    }
    bool sd21 = arch == SD_ARCH_SD21;
    /* tokenizer and scheduler first: small, and what a partial folder most needs */
    if ((rc = sd_model_write_tokenizer(dir, sd21))) return rc;
    snprintf(sub, sizeof sub, "%s/scheduler", dir);
    if ((rc = s_write_str(sub, "scheduler_config.json", sd21 ? s_sched_sd21 : s_sched_sd1))) return rc;

    /* the three networks, one at a time (an SD 1.5 UNet alone is 3.4 GB in float32) */
    if (progress) progress(user, "text_encoder", 0, 3);
    snprintf(path, sizeof path, "%s/text_encoder/config.json", dir);
    if ((rc = sd_clip_config_save(path, &ccfg))) return rc;
    sd_clip_t *clip = sd_clip_new(&ccfg);
    if (!clip) return BT_ENOMEM;
    snprintf(path, sizeof path, "%s/text_encoder/model%s.safetensors", dir, suffix);
    rc = s_save_part(ctx, &clip->params, path, seed * 3 + 0, dtype);
    sd_clip_destroy(&clip);
    if (rc) return rc;

    if (progress) progress(user, "vae", 1, 3);
    snprintf(path, sizeof path, "%s/vae/config.json", dir);
    if ((rc = sd_vae_config_save(path, &vcfg))) return rc;
    sd_vae_t *vae = sd_vae_new(&vcfg);
    if (!vae) return BT_ENOMEM;
    snprintf(path, sizeof path, "%s/vae/diffusion_pytorch_model%s.safetensors", dir, suffix);
    rc = s_save_part(ctx, &vae->params, path, seed * 3 + 1, dtype);
    sd_vae_destroy(&vae);
    if (rc) return rc;

    if (progress) progress(user, "unet", 2, 3);
    snprintf(path, sizeof path, "%s/unet/config.json", dir);
    if ((rc = sd_unet_config_save(path, &ucfg))) return rc;
    sd_unet_t *unet = sd_unet_new(&ucfg);
    if (!unet) return BT_ENOMEM;
    snprintf(path, sizeof path, "%s/unet/diffusion_pytorch_model%s.safetensors", dir, suffix);
    rc = s_save_part(ctx, &unet->params, path, seed * 3 + 2, dtype);
    sd_unet_destroy(&unet);
    if (rc) return rc;

    /* model_index.json last: its presence marks a complete folder */
    if ((rc = sd_model_write_index(dir, sd21 ? "DDIMScheduler" : "PNDMScheduler"))) return rc;
    if (progress) progress(user, "done", 3, 3);
    return BT_OK;
}
