/*
 * dataset.h — the images a DreamBooth run trains on, encoded once.
 *
 * An image set is a folder of JPEG/PNG files (sorted by name, so the order does
 * not depend on the file system). Each image is oriented by its EXIF tag,
 * resized so its shorter side is the training resolution (antialiased
 * bilinear, as diffusers' transforms do on PIL images), cropped to a square (the
 * centre, or a random square: sd_image_set_load_crop), scaled to
 * [-1, 1] and encoded by the VAE once. The set keeps the posterior (mean and
 * log-variance), not a sample: training draws latents = mean + std * eps with eps
 * from the step's RNG stream, as diffusers does when it encodes every step. With
 * random flips the mirrored image is encoded too.
 *
 * A set can also come from a prior-set file (an HDF5 file written by `booth
 * priors`, docs/FORMAT.md): "DIR" ending in ".h5" names one. Its images are
 * used in index order; their stored VAE latents are used as they are when the
 * file was made at this resolution with this model's VAE (the same numbers an
 * encode would give), otherwise the stored pixels are resized and encoded.
 */
#ifndef BOOTH_DIFFUSION_DATASET_H
#define BOOTH_DIFFUSION_DATASET_H

#include "common/image.h"
#include "diffusion/pipeline.h"

typedef struct sd_image_set {
    int n;
    char **paths;             /* where each image came from ("priors.h5[17]" for a prior set) */
    int64_t C, h, w;          /* latent channels and size */
    float *mean, *logvar;     /* [n, C, h, w] (host) */
    float *mean_f, *logvar_f; /* the mirrored images' (NULL without flips) */
    int res;                  /* the images are res x res pixels */
    uint8_t *pixels;          /* [n, res, res, 3] RGB as encoded (resized, cropped): what checkpoints store */
    /* A prior-set file's generation settings (gen_prompt NULL for a folder). */
    char *gen_prompt;
    uint64_t gen_seed;
    int gen_steps;
    float gen_guidance;
} sd_image_set_t;

/* True if path names a prior-set file rather than a folder (it ends in ".h5"). */
bool sd_is_prior_file(const char *path);

/* VAE posterior of one RGB image of the training resolution (res x res): mean
 * and logvar [C, res/8, res/8] on the host. */
int sd_encode_image(sd_model_t *m, const bt_img_t *img, float *mean, float *logvar);

/* Image files of dir (".jpg", ".jpeg", ".png", any case), sorted. *paths is a
 * NULL-terminated malloc'd array (free with sd_free_paths). Returns the count,
 * or a negative status (a missing folder is an error). */
int sd_list_images(const char *dir, char ***paths);
void sd_free_paths(char **paths);

/* Loads and encodes up to max images (all if max <= 0) of dir (a folder or a
 * prior-set file). progress may be NULL. */
int sd_image_set_load(sd_image_set_t *s, sd_model_t *m, const char *dir, int resolution, bool flips, int max,
                      sd_progress_fn progress, void *user);
/* The same, each photo cut to a square at random (crop_key: offsets from (key, photo index), one
 * crop per photo per run, since photos are encoded once) or at its centre (crop_key NULL, as
 * sd_image_set_load does). A photo smaller than resolution is named in a warning. */
int sd_image_set_load_crop(sd_image_set_t *s, sd_model_t *m, const char *dir, int resolution, bool flips, int max,
                           const uint64_t *crop_key, sd_progress_fn progress, void *user);
void sd_image_set_free(sd_image_set_t *s);

/* The image-set group `group` ("instance", "prior") of a booth HDF5 file: a
 * checkpoint, a prior set, or a cluster job's data file. The stored latents
 * (and mirrored latents) are used as they are when the group records the VAE
 * hash of this model and the size matches; otherwise the stored pixels are
 * encoded. */
int sd_image_set_load_h5(sd_image_set_t *s, sd_model_t *m, const char *path, const char *group, int resolution,
                         bool flips, int max, sd_progress_fn progress, void *user);

/* latents [C, h, w] = (mean + exp(logvar/2) * eps) * scaling_factor for image i
 * (mirrored if flip), eps from RNG key. */
void sd_image_set_sample(const sd_image_set_t *s, const sd_model_t *m, int i, bool flip, uint64_t key,
                         float *latents);

/* Class images: makes sure dir holds at least `want` images, generating the
 * missing ones with the frozen base model from `prompt` (image index i uses the
 * RNG stream (seed, i), so reruns and other workers make the same files) at
 * resolution x resolution, written as class-%05d.png — or, when dir is a
 * prior-set file, into that file (sd_priors_ensure, diffusion/priors.h).
 * Returns the number generated, or a negative status. */
int sd_class_images_ensure(sd_model_t *m, const char *dir, const char *prompt, int want, int resolution,
                           uint64_t seed, int steps, float guidance, sd_progress_fn progress, void *user);

#endif
