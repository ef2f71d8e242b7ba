/*
 * dataset.h — the images a DreamBooth run trains on, encoded once.
 *
 * An image set is a folder of JPEG/PNG files (sorted by name, so the order does
 * not depend on the file system). Each image is oriented by its EXIF tag,
 * resized so its shorter side is the training resolution (antialiased
 * bilinear, as diffusers' transforms do on PIL images), center-cropped, scaled to
 * [-1, 1] and encoded by the VAE once. The set keeps the posterior (mean and
 * log-variance), not a sample: training draws latents = mean + std * eps with eps
 * from the step's RNG stream, as diffusers does when it encodes every step. With
 * random flips the mirrored image is encoded too.
 */
#ifndef BOOTH_DIFFUSION_DATASET_H
#define BOOTH_DIFFUSION_DATASET_H

#include "diffusion/pipeline.h"

typedef struct sd_image_set {
    int n;
    char **paths;
    int64_t C, h, w;          /* latent channels and size */
    float *mean, *logvar;     /* [n, C, h, w] (host) */
    float *mean_f, *logvar_f; /* the mirrored images' (NULL without flips) */
} sd_image_set_t;

/* Image files of dir (".jpg", ".jpeg", ".png", any case), sorted. *paths is a
 * NULL-terminated malloc'd array (free with sd_free_paths). Returns the count,
 * or a negative status (a missing folder is an error). */
int sd_list_images(const char *dir, char ***paths);
void sd_free_paths(char **paths);

/* Loads and encodes up to max images (all if max <= 0) of dir. progress may be NULL. */
int sd_image_set_load(sd_image_set_t *s, sd_model_t *m, const char *dir, int resolution, bool flips, int max,
                      sd_progress_fn progress, void *user);
void sd_image_set_free(sd_image_set_t *s);

/* latents [C, h, w] = (mean + exp(logvar/2) * eps) * scaling_factor for image i
 * (mirrored if flip), eps from RNG key. */
void sd_image_set_sample(const sd_image_set_t *s, const sd_model_t *m, int i, bool flip, uint64_t key,
                         float *latents);

/* Class images: makes sure dir holds at least `want` images, generating the
 * missing ones with the frozen base model from `prompt` (image index i uses the
 * RNG stream (seed, i), so reruns and other workers make the same files) at
 * resolution x resolution, written as class-%05d.png. Returns the number
 * generated, or a negative status. */
int sd_class_images_ensure(sd_model_t *m, const char *dir, const char *prompt, int want, int resolution,
                           uint64_t seed, int steps, float guidance, sd_progress_fn progress, void *user);

#endif
