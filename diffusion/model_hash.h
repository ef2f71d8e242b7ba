/*
 * model_hash.h — the content hash of a diffusers model folder, so that a
 * checkpoint or a prior set can say which base model it belongs to.
 *
 * The hash is XXH64 (common/hash.h) of a manifest with one line per file,
 * "<XXH64 of the file, 16 hex digits>  <path relative to the folder>\n" — exactly
 * what `xxhsum -H1` prints when run inside the folder — over these files, in this
 * order, skipping those that do not exist (docs/FORMAT.md has the definition):
 *
 *   model_index.json                         (only when every part is hashed)
 *   scheduler/scheduler_config.json
 *   text_encoder/config.json, text_encoder/<weights>
 *   tokenizer/merges.txt, tokenizer/special_tokens_map.json,
 *   tokenizer/tokenizer_config.json, tokenizer/vocab.json
 *   unet/config.json, unet/<weights>
 *   vae/config.json, vae/<weights>
 *
 * <weights> are the files the loader reads (diffusion/params.c): the first of
 * <base>.safetensors, <base>.safetensors.index.json, then the .fp16 and .bf16
 * variants; for a sharded index, the index file and then its shards by name.
 * So the same weights give the same hash wherever the folder is, and any change
 * to a config or a weight changes it.
 */
#ifndef BOOTH_DIFFUSION_MODEL_HASH_H
#define BOOTH_DIFFUSION_MODEL_HASH_H

#include "common/hash.h"

/* parts: SD_PART_* mask (diffusion/pipeline.h). manifest (may be NULL) receives
 * the manifest text (malloc'd). Errors: one log line naming the file. */
int sd_model_hash(const char *dir, unsigned parts, char hex[BT_HASH_HEX], char **manifest);

#endif
