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
 * Layout (docs/FORMAT.md): root attributes booth_format = "booth-priors",
 * booth_format_version; group /prior with the generation settings as
 * attributes and the image-set datasets of storage/h5_images.h (images,
 * latent_mean/latent_logvar from the model's VAE, index, seed, prompt).
 */
#ifndef BOOTH_DIFFUSION_PRIORS_H
#define BOOTH_DIFFUSION_PRIORS_H

#include "diffusion/pipeline.h"
#include "storage/h5.h"

#define SD_PRIOR_GROUP "prior"
#define SD_PRIORS_FORMAT "booth-priors"
#define SD_PRIORS_FORMAT_VERSION 1

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
 * of each image [count, C, R/8, R/8] (what training encodes). progress (may be
 * NULL) is called after each image with (done, count). */
int sd_priors_generate(sd_model_t *m, const sd_prior_spec_t *spec, int64_t first, int count, uint8_t *pixels,
                       float *mean, float *logvar, sd_progress_fn progress, void *user);

/* Generates images [first, first + count) into a prior-set file of their own
 * (a part; what a cluster worker would hand back). model_hash / vae_hash:
 * sd_model_hash of the model folder (every part / the VAE). */
int sd_priors_write_part(sd_model_t *m, const sd_prior_spec_t *spec, const char *model_hash, const char *vae_hash,
                         int64_t first, int count, const char *path);

/* Makes the prior-set file `path` hold at least `want` images (see above).
 * An existing file or part made with other settings or another base model is
 * an error naming the setting. Returns the number of images generated (0 if
 * the file was complete), or a negative status. progress: (done, to do). */
int sd_priors_ensure(sd_model_t *m, const char *path, const sd_prior_spec_t *spec, int want, sd_progress_fn progress,
                     void *user);

/* Writes the /prior group's settings attributes (shared with checkpoints). */
int sd_priors_write_attrs(bt_h5_file_t *f, const char *group, const sd_prior_spec_t *spec, const char *sampler,
                          const char *model_dir, const char *model_hash, const char *vae_hash);

#endif
