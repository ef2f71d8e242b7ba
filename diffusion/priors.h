/*
 * priors.h — prior-preservation ("class") images in one HDF5 file.
 *
 * DreamBooth's prior loss needs a few hundred images of the class drawn by the
 * frozen base model. Image i of a prior set is a pure function of (model,
 * prompt, seed, steps, guidance, resolution, i): its starting noise is RNG
 * stream (seed, i), as in `booth generate`. So generation is a function of an
 * index range, sd_priors_generate(first, count) -> images: one process loops
 * over the ranges, a cluster hands ranges to workers, and the results are the
 * same images either way.
 *
 * sd_priors_ensure makes a prior-set file hold the first N images. Each
 * generated range is written at once as its own small part file
 * ("<file>.parts/part-<first>.h5", atomically), so a killed run loses at most
 * the range in progress; a rerun reads the parts (and the indices the file
 * already has), generates only the missing indices, then writes the complete
 * file in index order (temporary file, fsync, rename) and removes the parts it
 * took in (parts with later indices stay for a later, larger run).
 * The file therefore comes out byte-identical however often the run was
 * interrupted, and a file that exists is always complete.
 *
 * Layout (docs/FORMAT.md; the names in diffusion/layout.h): root attributes
 * booth_format = "booth-priors", booth_format_version; group /prior with the
 * generation settings as attributes and the image-set datasets of
 * storage/h5_images.h (images, latent_mean/latent_logvar from the model's VAE,
 * index, seed, prompt).
 */
#ifndef BOOTH_DIFFUSION_PRIORS_H
#define BOOTH_DIFFUSION_PRIORS_H

#include "common/hash.h"
#include "diffusion/layout.h"
#include "diffusion/pipeline.h"
#include "storage/h5.h"

typedef struct sd_prior_spec {
    const char *prompt;
    uint64_t seed;
    int steps;      /* sampler steps per image */
    float guidance; /* classifier-free guidance scale */
    int resolution; /* square images of this many pixels a side (a multiple of 8) */
    const char *weights; /* sd_model_weights() of the model that drew them ("exact", "fp16", "bf16");
                          * NULL: filled in from the model where one is given, else "exact" */
} sd_prior_spec_t;

/* Images [first, first + count) with the model's default sampler: pixels
 * [count, R, R, 3] (RGB), and when mean/logvar are not NULL the VAE posterior
 * of each image [count, C, R/s, R/s], s = sd_vae_scale (what training encodes). progress (may be
 * NULL) is called after each image with (done, count). */
int sd_priors_generate(sd_model_t *m, const sd_prior_spec_t *spec, int64_t first, int count, uint8_t *pixels,
                       float *mean, float *logvar, sd_progress_fn progress, void *user);

/* Where a prior set's images come from, as a prior-set file records it: no
 * model needed (the coordinator of a cluster has none; its workers report
 * these in their hello). */
typedef struct sd_prior_origin {
    const char *model_dir;  /* as the user named it */
    char model_hash[BT_HASH_HEX], vae_hash[BT_HASH_HEX]; /* sd_model_hash: every part / the VAE */
    const char *sampler;    /* the model's default sampler (sd_sched_kind_name) */
    int64_t latent_channels;
    int64_t latent_scale; /* pixels per latent a side (sd_vae_scale: 8 for SD; 0 read as 8) */
} sd_prior_origin_t;

/* The side of a prior image's latents: resolution / the origin's latent scale. */
int64_t sd_prior_latent_side(const sd_prior_origin_t *o, int64_t resolution);

/* A loaded model's origin (hashes its folder). */
int sd_prior_origin_of(sd_model_t *m, sd_prior_origin_t *o);

/* Writes images [first, first + count) — pixels [count, R, R, 3], VAE
 * posterior mean/logvar [count, C, R/s, R/s] as sd_priors_generate makes
 * them — as a prior-set file of their own (a part), atomically. */
int sd_priors_part_write(const char *path, const sd_prior_spec_t *spec, const sd_prior_origin_t *origin, int64_t first,
                         int count, const uint8_t *pixels, const float *mean, const float *logvar);

/* Generates images [first, first + count) into a part file (sd_priors_generate + sd_priors_part_write). */
int sd_priors_write_part(sd_model_t *m, const sd_prior_spec_t *spec, const sd_prior_origin_t *origin, int64_t first,
                         int count, const char *path);

/* The indices below `want` that neither the prior-set file `path` nor its
 * parts ("<path>.parts/") hold yet, ascending, into missing (want entries);
 * *n receives their count. A file or part made with other settings is an
 * error naming the setting; an unreadable part is deleted with a warning. */
int sd_priors_missing(const char *path, const sd_prior_spec_t *spec, const sd_prior_origin_t *origin, int want,
                      int *missing, int *n);

/* Writes the complete file from the existing file and the parts (every index
 * below want must be present: sd_priors_missing says none is), rows in index
 * order (temporary file, fsync, rename), and removes the parts it took in. */
int sd_priors_assemble(const char *path, const sd_prior_spec_t *spec, const sd_prior_origin_t *origin, int want);

/* Makes the prior-set file `path` hold at least `want` images (see above).
 * An existing file or part made with other settings or another base model is
 * an error naming the setting. Returns the number of images generated (0 if
 * the file was complete), or a negative status. progress: (done, to do). */
int sd_priors_ensure(sd_model_t *m, const char *path, const sd_prior_spec_t *spec, int want, sd_progress_fn progress,
                     void *user);

/* Writes the /prior group's settings attributes (shared with checkpoints). */
int sd_priors_write_attrs(st_h5_file_t *f, const char *group, const sd_prior_spec_t *spec, const char *sampler,
                          const char *model_dir, const char *model_hash, const char *vae_hash);

#endif
