/*
 * world_model.h — the architecture of booth's own base model, the one `booth pretrain` trains from
 * scratch on the synthetic world (world.h) and that ships at models/world/ (docs/WORLD.md).
 *
 * It is a Stable Diffusion model folder of the real layout (diffusers' configs, safetensors, a CLIP
 * BPE tokenizer), so every booth command and diffusers' StableDiffusionPipeline load it, but sized
 * for the world:
 *
 *   tokenizer     CLIP's byte-level BPE with a vocabulary of the world's words only: the 512 byte
 *                 symbols, merges that make every word of every world caption (and the identifier
 *                 "sks") one token, and the two specials — a few hundred entries instead of 49408,
 *                 so the token table is kilobytes, not megabytes. model_max_length 24 (the longest
 *                 caption is under 20 tokens).
 *   text_encoder  CLIPTextModel, hidden 64, 3 layers, 4 heads, MLP 256, quick_gelu.
 *   unet          UNet2DConditionModel at the image's own resolution: blocks of 64, 128, 128
 *                 channels (DownBlock2D, then two CrossAttnDownBlock2D; the mirror going up), one
 *                 ResNet per block, a cross-attention mid block, 4 heads.
 *   vae           AutoencoderKL with one 8-channel block and no downsampling, whose weights are
 *                 constructed, not trained: an exact codec between RGB in [-1, 1] and the first
 *                 three latent channels (the fourth is 0), so decoded images are as sharp as the
 *                 world's own pixels. How: the encoder's conv_in writes each colour twice, as +e x
 *                 and -e x (e = 1e-5), into one GroupNorm group of two channels, whose mean is then
 *                 exactly 0 and whose variance (e^2 E[x^2] <= 1e-10) is swamped by the norm's eps
 *                 (1e-6): the norm multiplies by 1/sqrt(eps) to a relative 5e-5; SiLU(y) - SiLU(-y)
 *                 = y exactly, so conv_out recovers x from the pair; every ResNet's conv2 is zero
 *                 (a ResNet is then the identity), logvar is -30. The decoder does the same in
 *                 reverse. scaling_factor 1: the latents are the pixels.
 *   scheduler     the cosine schedule (squaredcos_cap_v2, 1000 steps, v prediction), as a
 *                 DDIMScheduler config with clip_sample (the latents are pixels in [-1, 1]) and
 *                 trailing timesteps (sampling starts at the last one). Not SD's scaled-linear
 *                 schedule: its last step keeps a signal-to-noise ratio of 0.005, which for
 *                 SD's latents is noise, but for 32-px pixels whose colours fill large flat
 *                 regions is not — averaged over a background, the colour is still readable at
 *                 t = 999, so a model trained on it learns to read colour from the noise, and at
 *                 sampling time, where x_T is pure noise, draws the colour the noise suggests
 *                 whatever the prompt says (seen: two runs of 2-4 k steps ignored every colour
 *                 word, shapes right). The cosine schedule ends at SNR ~ 0 (Nichol & Dhariwal's
 *                 schedule for 32-px pixels; Lin et al., "Common Diffusion Noise Schedules and
 *                 Sample Steps are Flawed"), and, as Lin et al. say it must, predicts v, not the
 *                 noise: at SNR ~ 0, x_t is the noise, so an epsilon target teaches nothing about
 *                 the picture there and its x0 (x_t - sqrt(1 - abar) eps) / sqrt(abar) divides by
 *                 ~5e-5 (seen: 2,000 steps with epsilon still took colours from the seed); v at
 *                 t = 999 is -x0, the picture the prompt asks for.
 *
 * Initialisation (seeded): booth's usual N(0, 1/sqrt(fan_in)) for every network weight, with one
 * zero at the end of each UNet residual branch (a ResNet's conv2, a transformer's proj_out) and at
 * the UNet's conv_out, so that every block starts as the identity and the untrained UNet predicts
 * zero — ADM's way to start a diffusion model from scratch. Only one: with the attentions' to_out
 * and the feed-forward's last layer at zero too, the cross-attention's keys and values got no
 * gradient until two zero layers had grown, and a run of 1,700 steps had not yet used the caption
 * at all (its loss the same with every caption shuffled). The text encoder is random throughout,
 * as CLIP's own initialisation is.
 */
#ifndef BOOTH_DIFFUSION_WORLD_MODEL_H
#define BOOTH_DIFFUSION_WORLD_MODEL_H

#include <stdint.h>

#include "diffusion/config.h"
#include "nn/backend.h"

#define SD_WORLD_MAX_TOKENS 24 /* the tokenizer's model_max_length and the text encoder's positions */

/* The configs at a resolution (the side of the square images, a multiple of 8) and vocabulary size. */
void sd_world_configs(int resolution, int64_t vocab_size, sd_unet_config_t *unet, sd_vae_config_t *vae,
                      sd_clip_config_t *clip);

/* dir/tokenizer/ (vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json) with the
 * world's vocabulary; *vocab_size receives its size. */
int sd_world_tokenizer_write(const char *dir, int64_t *vocab_size);

/* A new model folder at dir: configs, tokenizer, the constructed VAE, a seeded initialisation of
 * the text encoder and UNet, float32, model_index.json last. */
int sd_world_model_init(nn_ctx_t *ctx, const char *dir, int resolution, uint64_t seed);

#endif
