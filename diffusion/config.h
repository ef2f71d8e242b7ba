/*
 * config.h — the architecture of each model part, read from its config.json.
 *
 * Every field the SD 1.x / 2.x family varies is represented, resolved to one
 * value per block the way diffusers resolves it (scalars broadcast to lists;
 * the up path uses the lists reversed; `attention_head_dim` is the head COUNT
 * in legacy configs unless `num_attention_heads` is given). Keys that select
 * architectures booth does not implement (SDXL's addition embeddings, class
 * embeddings, ...) are rejected with an error naming the file and the key.
 */
#ifndef BOOTH_DIFFUSION_CONFIG_H
#define BOOTH_DIFFUSION_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#define SD_MAX_BLOCKS 8

typedef enum sd_act { SD_ACT_SILU, SD_ACT_GELU, SD_ACT_QUICK_GELU, SD_ACT_GELU_TANH } sd_act_t;

typedef struct sd_unet_config {
    int64_t sample_size;
    int64_t in_channels, out_channels;
    bool flip_sin_to_cos;
    float freq_shift;
    int n_blocks;                                 /* down blocks = up blocks */
    bool down_cross[SD_MAX_BLOCKS];               /* CrossAttnDownBlock2D vs DownBlock2D */
    bool up_cross[SD_MAX_BLOCKS];                 /* CrossAttnUpBlock2D vs UpBlock2D, in up order */
    bool mid_cross;                               /* UNetMidBlock2DCrossAttn (else no mid attention) */
    bool has_mid;                                 /* mid_block_type is not null */
    int64_t block_out_channels[SD_MAX_BLOCKS];
    int64_t layers_per_block[SD_MAX_BLOCKS];      /* per down block */
    int64_t transformer_layers[SD_MAX_BLOCKS];    /* per down block */
    int64_t heads[SD_MAX_BLOCKS];                 /* attention heads per down block */
    int64_t cross_attention_dim[SD_MAX_BLOCKS];   /* per down block */
    bool only_cross_attention[SD_MAX_BLOCKS];     /* per down block */
    bool mid_only_cross_attention;
    int64_t downsample_padding;
    float mid_block_scale_factor;
    int64_t norm_num_groups;
    float norm_eps;
    bool use_linear_projection;
    int64_t conv_in_kernel, conv_out_kernel;
    int64_t time_embed_dim;   /* block_out_channels[0] * 4 unless time_embedding_dim */
    bool upcast_attention;    /* fp16-only effect: noted, harmless in float32 */
} sd_unet_config_t;

typedef struct sd_vae_config {
    int64_t in_channels, out_channels, latent_channels;
    int n_blocks;
    int64_t block_out_channels[SD_MAX_BLOCKS];
    int64_t layers_per_block;
    int64_t norm_num_groups;
    float scaling_factor;
    float shift_factor; /* 0 when absent (SD 1.x/2.x) */
    int64_t sample_size;
    bool mid_attention; /* mid_block_add_attention (default true) */
} sd_vae_config_t;

typedef struct sd_clip_config {
    int64_t vocab_size, hidden_size, intermediate_size;
    int64_t num_layers, num_heads, max_positions;
    sd_act_t act; /* quick_gelu (SD 1.x) or gelu (SD 2.x) */
    float layer_norm_eps;
    int64_t eos_token_id; /* 2 in legacy configs: pooled output uses argmax(ids) */
} sd_clip_config_t;

/* Each returns 0, or an error (one log line naming the file and the key). */
int sd_unet_config_load(const char *path, sd_unet_config_t *cfg);
int sd_vae_config_load(const char *path, sd_vae_config_t *cfg);
int sd_clip_config_load(const char *path, sd_clip_config_t *cfg);

/* Writes the config as diffusers would (used by `booth init-model`). */
int sd_unet_config_save(const char *path, const sd_unet_config_t *cfg);
int sd_vae_config_save(const char *path, const sd_vae_config_t *cfg);
int sd_clip_config_save(const char *path, const sd_clip_config_t *cfg);

#endif
