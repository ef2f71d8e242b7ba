/*
 * init.h — writing a randomly initialised Stable Diffusion model folder.
 *
 * Real weights cannot be downloaded here; `booth init-model` gives the demo,
 * the tests and the benchmarks a model of the real architecture in the real
 * layout (configs, safetensors, the CLIP vocabulary, scheduler config,
 * model_index.json). Values depend only on (arch, seed): each parameter is drawn
 * from its own stream keyed by its name.
 */
#ifndef BOOTH_DIFFUSION_INIT_H
#define BOOTH_DIFFUSION_INIT_H

#include <stdint.h>

#include "diffusion/config.h"
#include "nn/backend.h"
#include "storage/safetensors.h"

typedef enum sd_arch { SD_ARCH_TINY, SD_ARCH_SD15, SD_ARCH_SD21 } sd_arch_t;

/* "tiny", "sd15", "sd21"; false for anything else. */
bool sd_arch_parse(const char *name, sd_arch_t *arch);
const char *sd_arch_name(sd_arch_t arch);

/* The configs of an architecture (tiny = the oracle's tiny model). */
void sd_arch_configs(sd_arch_t arch, sd_unet_config_t *unet, sd_vae_config_t *vae, sd_clip_config_t *clip);

typedef void (*sd_init_progress_fn)(void *user, const char *part, int done, int total);

/* Writes the folder (created if needed; existing model files are replaced
 * atomically, one file at a time). dtype: F32, F16 or BF16 weights. */
int sd_model_init(nn_ctx_t *ctx, const char *dir, sd_arch_t arch, uint64_t seed, st_dtype_t dtype,
                  sd_init_progress_fn progress, void *user);

/* The parts of a model folder that are not networks, as init-model writes them
 * (also `booth convert`): tokenizer/ with the built-in CLIP vocabulary (SD 2.x
 * pads with "!"), and model_index.json naming the scheduler class (write it
 * last: its presence marks a complete folder). */
int sd_model_write_tokenizer(const char *dir, bool sd2);
int sd_model_write_index(const char *dir, const char *scheduler_class);

#endif
