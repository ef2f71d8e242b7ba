/*
 * lora_io.h — LoRA files in and out: the UNet and text-encoder adapters of one
 * model in any of the layouts of storage/lora_file.h (peft, diffusers, kohya).
 *
 * Loading reads any layout, finds each entry's layer by building every
 * adaptable module's name in the file's spelling and looking it up (kohya's
 * '.' -> '_' is not invertible), and attaches one set per part present with the
 * file's rank and alpha. Saving writes one file atomically. Both are what
 * `booth generate --lora` and the training export call:
 *
 *     sd_lora_set_t *ul, *tl;
 *     if (sd_lora_load(path, ctx, unet, clip, NULL, &ul, &tl)) goto fail;
 *     if (ul) sd_lora_set_scale(ul, scale_unet);
 *     if (tl) sd_lora_set_scale(tl, scale_text);
 *     ...
 *     sd_lora_save(out, ST_LORA_KOHYA, ST_F16, ul, tl, (const char *const[]){"booth.base_model", id, NULL});
 */
#ifndef BOOTH_DIFFUSION_LORA_IO_H
#define BOOTH_DIFFUSION_LORA_IO_H

#include "diffusion/lora.h"
#include "storage/lora_file.h"

typedef struct sd_lora_load_opts {
    /* Alpha when the file states none (no metadata, no kohya ".alpha"); <= 0
     * means alpha = rank (scale 1), the diffusers convention. */
    float default_alpha;
    bool with_grad; /* allocate gradient buffers too (to train on from the file) */
} sd_lora_load_opts_t;

/* Reads a LoRA file and attaches its adapters. `unet` / `clip` may be NULL when
 * the file has no entries for that part. On success *unet_set / *text_set hold
 * the new sets (NULL for a part the file does not adapt; both may be NULL only
 * on error: a file without entries is an error) with scale 1. Projections the
 * file adapts in some layers but not others get zero adapters elsewhere (no
 * effect). Modules booth cannot adapt, a missing A or B, rank mismatches, wrong
 * shapes or non-float data are one error naming the file and the key; on any
 * error nothing stays attached. opts may be NULL (defaults above). */
int sd_lora_load(const char *path, nn_ctx_t *ctx, sd_unet_t *unet, sd_clip_t *clip, const sd_lora_load_opts_t *opts,
                 sd_lora_set_t **unet_set, sd_lora_set_t **text_set);

/* Writes the adapters of `unet` and/or `text` (either may be NULL, not both) in
 * `layout`, A and B stored as dtype (F32, F16, BF16 or F64), atomically.
 * Alpha: kohya stores every adapter's own alpha; the diffusers and peft layouts
 * carry none their loaders read (they assume alpha == rank), so alpha/rank is
 * folded into B (the original alpha is kept in booth.alpha_folded) and the file
 * means the same in every loader. metadata_kv: NULL-terminated key/value pairs added to booth's own
 * ("format", "booth.layout", "booth.rank", "booth.alpha", "booth.targets", ...);
 * pass "booth.base_model" there. The user's inference scale is not saved. */
int sd_lora_save(const char *path, st_lora_layout_t layout, st_dtype_t dtype, const sd_lora_set_t *unet,
                 const sd_lora_set_t *text, const char *const *metadata_kv);

/* One part's adapters as plain records, the writer's input: what a LoRA file
 * needs and nothing of a model (the parameter server's or a checkpoint's
 * tensors become a file through these). Data on the host. */
typedef struct sd_lora_records {
    st_lora_part_t part;
    int64_t rank;
    float alpha;                  /* the set's */
    int n;                        /* adapters */
    const char **modules;         /* dotted module names */
    const float *alphas;          /* per adapter (NULL: all alpha) */
    const float **a, **b;         /* A [rank, in] and B [out, rank] of each adapter */
    int64_t (*a_shape)[2], (*b_shape)[2];
    /* owned storage */
    int cap;                      /* entries of the arrays */
    char **modules_mem;
    float *alphas_mem, *host;
} sd_lora_records_t;

int sd_lora_save_records(const char *path, st_lora_layout_t layout, st_dtype_t dtype, const sd_lora_records_t *unet,
                         const sd_lora_records_t *text, const char *const *metadata_kv);
void sd_lora_records_free(sd_lora_records_t *r);

/* Records of both parts (out[0] UNet, out[1] text encoder; n == 0 for a part
 * without tensors) from tensors named as checkpoints name them (peft keys
 * with the part prefix), A then B of each module, in model order. data is
 * borrowed. One error line naming `what` on a name, order or shape problem. */
int sd_lora_records_from_named(sd_lora_records_t out[2], const char *what, const char *const *names,
                               const int64_t (*shapes)[2], const float *const *data, int n, int64_t rank, float alpha);

#endif
