/*
 * model_out.h — full fine-tuning's result as a diffusers model folder.
 *
 * LoRA training ends in adapter files (diffusion/lora_io.h); full fine-tuning
 * changes the model itself, so its result is what diffusers'
 * train_dreambooth.py saves: a complete model folder that `booth generate
 * --model`, diffusers' from_pretrained and every other tool load as they load
 * the base. The trained UNet (and text encoder, when it trained) is written
 * from the optimizer's tensors (so the coordinator, which holds no model, writes
 * the same folder); every other part is copied from the base folder file by
 * file.
 */
#ifndef BOOTH_DIFFUSION_MODEL_OUT_H
#define BOOTH_DIFFUSION_MODEL_OUT_H

#include "diffusion/optim.h"

/* Fills dst[0..numel) with the trained tensor `name` ("unet.<diffusers name>" or
 * "text_encoder.<transformers name>"); 0, or one log line and an error (a missing or misshapen
 * tensor names it). */
typedef int (*sd_tensor_get_fn)(void *user, const char *name, float *dst, int64_t numel);

/* out/ = base_dir's folder with unet/ replaced: unet/config.json as the base's, and
 * unet/diffusion_pytorch_model.safetensors (float32) with every parameter the config asks for, from
 * get. With text, text_encoder/ is replaced the same way: its config.json and model.safetensors
 * (transformers' name; none of the base's weight files, .fp16 variants included, is copied). Each
 * file is written crash-safe (fileio.h); a file of the base already there with the same size is
 * kept. 0, or one log line and an error. */
int sd_model_folder_write_from(const char *out, const char *base_dir, bool text, sd_tensor_get_fn get, void *user,
                               const char *const *metadata_kv);
/* The same from the optimizer's tensors (the end of a run, single process or coordinator). */
int sd_model_folder_write(const char *out, const char *base_dir, bool text, const sd_optim_t *o,
                          const char *const *metadata_kv);

#endif
