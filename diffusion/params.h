/*
 * params.h — the named parameters of a model part, and their storage.
 *
 * Building a model from its config registers every parameter under its
 * diffusers/transformers state-dict name with its shape and the address of the
 * module field that will point at it. One allocation then backs all of them, and
 * they are filled from safetensors files (any float dtype, converted once), from
 * a seeded random initialisation (`booth init-model`), or saved back. The same
 * registry type holds LoRA adapters, so weights, fixtures, checkpoints and LoRA
 * files all load by name.
 *
 * The weight matrices of linear and convolution layers (registered with
 * sd_params_add_weight) may instead stay resident in 16 bits: fp16 or bf16 as
 * the snapshot ships them, widened to float32 per use (exact, so the results
 * are the same bits), which halves the memory of a frozen model. Everything
 * else (norms, biases, LoRA) is float32.
 */
#ifndef BOOTH_DIFFUSION_PARAMS_H
#define BOOTH_DIFFUSION_PARAMS_H

#include <stdbool.h>
#include <stdint.h>

#include "nn/backend.h"
#include "nn/ops.h"
#include "storage/safetensors.h"

#define SD_NAME_MAX 160

/* A frozen weight matrix of a linear or convolution layer: float32, or 16 bits
 * widened to float32 where it is used (layers.c). */
typedef struct sd_weight {
    float *f32;        /* float32 storage, or NULL */
    const uint16_t *h; /* else 16-bit storage of type dtype (NULL with f32: absent) */
    nn_dtype_t dtype;
} sd_weight_t;

static inline bool sd_weight_present(const sd_weight_t *w) { return w->f32 || w->h; }

/* How a model's weight matrices are kept in memory. */
typedef enum sd_store {
    SD_STORE_AUTO, /* as the files hold them: fp16/bf16 stay 16-bit (exact), float32 stays float32 */
    SD_STORE_F32,  /* float32 (the fastest: nothing to widen) */
    SD_STORE_F16,  /* fp16, rounded from float32 files (lossy there, as diffusers' fp16 weight_dtype) */
    SD_STORE_BF16, /* bf16, likewise */
} sd_store_t;

/* "auto", "fp32", "fp16", "bf16" (also "float32"...). false if unknown. */
bool sd_store_parse(const char *s, sd_store_t *out);
const char *sd_store_name(sd_store_t s);

typedef enum sd_init {
    SD_INIT_ZERO,
    SD_INIT_ONE,
    SD_INIT_NORMAL, /* N(0, std) */
} sd_init_t;

typedef struct sd_param {
    char name[SD_NAME_MAX];
    int ndim;
    int64_t shape[4];
    float **slot;   /* the module field that points at this parameter's data */
    sd_weight_t *wslot; /* or the weight a 16-bit-capable matrix fills (sd_params_add_weight) */
    nn_dtype_t dtype;   /* storage: NN_F32 unless wslot and loaded 16-bit */
    float *data;        /* float32 storage in the context's memory space, after allocation */
    uint16_t *data16;   /* 16-bit storage (dtype) instead, or NULL */
    sd_init_t init; /* how `init-model` fills it */
    float init_std;
    float **gslot; /* the module field that points at its gradient when the part trains (full fine-tuning) */
} sd_param_t;

typedef struct sd_params {
    const char *what; /* "unet", "vae", "text_encoder", "lora": for messages */
    sd_param_t *p;
    int n, cap;
    nn_ctx_t *ctx; /* owner of mem */
    float *mem;
    void *mem16;   /* the 16-bit parameters' block, or NULL */
    int64_t numel; /* parameters, both blocks */
    int64_t numel16; /* of which stored in 16 bits */
    int rounded;     /* parameters rounded at load (a wider file value kept in fewer bits) */
    bool failed; /* a registration failed (out of memory, name too long, sizes): reported at alloc */
    int64_t planned; /* parameters registered so far (the sum of their shapes' products) */
    char why[256];   /* why a registration failed, when the sizes are the cause */
    float *grad;     /* gradients (sd_params_alloc_grads): laid out as mem, so grad + (data - mem) is a
                      * parameter's; NULL while the part is frozen */
} sd_params_t;

/* More parameters than this in one part is a config no model of the family has (SD 2.x's
 * UNet has 865 M): refused at registration, before anything is allocated. */
#define SD_PARAMS_MAX ((int64_t)1 << 33)

void sd_params_init(sd_params_t *ps, const char *what);
void sd_params_free(sd_params_t *ps);

/* Registers a parameter named by printf-style fmt. Errors are remembered and
 * reported by sd_params_alloc, so builders can register without checking each call. */
void sd_params_add(sd_params_t *ps, float **slot, sd_init_t init, float init_std, int ndim, const int64_t *shape,
                   const char *fmt, ...) __attribute__((format(printf, 7, 8)));

/* A layer's weight matrix: like sd_params_add, but it may be stored in 16 bits. */
void sd_params_add_weight(sd_params_t *ps, sd_weight_t *w, sd_init_t init, float init_std, int ndim,
                          const int64_t *shape, const char *fmt, ...) __attribute__((format(printf, 7, 8)));

/* Names the module field that points at the gradient of the parameter registered last (full
 * fine-tuning): builders call it after each sd_params_add / sd_params_add_weight. */
void sd_params_grad_slot(sd_params_t *ps, float **gslot);

/* Full fine-tuning: one zeroed float32 block for the gradients of every parameter (laid out as
 * the parameters' block), every gradient slot pointed into it, so each module's backward adds its
 * weight gradients (+=). Every parameter must be float32 (a 16-bit weight cannot be trained in
 * place: load with SD_STORE_F32) and have a gradient slot. 0, or one line and an error. */
int sd_params_alloc_grads(sd_params_t *ps);
/* Frees the gradient block and clears the slots: the part is frozen again. */
void sd_params_free_grads(sd_params_t *ps);
/* Floats in the parameters' float32 block, padding included (what the gradient block holds). */
int64_t sd_params_block_floats(const sd_params_t *ps);

/* Allocates one block for all parameters (float32) in ctx's memory space and
 * points every slot at its part. Returns 0 or an error. */
/* 0, or one line saying why registering failed (sizes past SD_PARAMS_MAX, out of memory)
 * and BT_EINVAL / BT_ENOMEM: what a model's constructor calls before it returns. */
int sd_params_check(const sd_params_t *ps);
int sd_params_alloc(sd_params_t *ps, nn_ctx_t *ctx);

/* Bytes the parameters occupy (both blocks). */
size_t sd_params_bytes(const sd_params_t *ps);

const sd_param_t *sd_params_find(const sd_params_t *ps, const char *name);

/* Loads every registered parameter from the safetensors file(s) of a model part:
 * `dir/base.safetensors`, `dir/base.fp16.safetensors`, or a sharded
 * `dir/base.safetensors.index.json`. A missing tensor or a wrong shape is an
 * error naming the file, the tensor and both shapes; tensors the model does not
 * use are ignored. Legacy VAE attention names (query/key/value/proj_attn) are
 * accepted for to_q/to_k/to_v/to_out.0, and [C,C,1,1] for [C,C] and back. */
int sd_params_load_dir(sd_params_t *ps, const char *dir, const char *base);
/* Allocation and loading in one: the same files, with the weight matrices kept
 * as `store` says (SD_STORE_AUTO: in the type each has in the file). */
int sd_params_load_model(sd_params_t *ps, nn_ctx_t *ctx, const char *dir, const char *base, sd_store_t store);
/* Same, from one open file (or several: a parameter comes from the first that has it). */
int sd_params_load_files(sd_params_t *ps, st_file_t *const *files, int nfiles);
/* sd_params_load_model from open files (or views: a single-file checkpoint's part). */
int sd_params_load_model_files(sd_params_t *ps, nn_ctx_t *ctx, st_file_t *const *files, int nfiles, sd_store_t store);

/* Seeded initialisation: every parameter from its own stream (seed, name), so
 * the values do not depend on registration order. */
int sd_params_init_random(sd_params_t *ps, uint64_t seed);

/* Writes all parameters to one safetensors file, stored as dtype (F32/F16/BF16). */
int sd_params_save(const sd_params_t *ps, const char *path, st_dtype_t dtype, const char *const *metadata_kv);

#endif
