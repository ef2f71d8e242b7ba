/*
 * h5_images.h — an image set inside an HDF5 file: the group layout that
 * checkpoints (/instance, /prior) and prior-set files (/prior) share.
 *
 *   GROUP/images         uint8 [n, H, W, 3]   RGB, one gzip-compressed chunk per image
 *   GROUP/latent_mean    float32 [n, C, h, w] VAE posterior mean of each image (optional)
 *   GROUP/latent_logvar  float32 [n, C, h, w] and its log-variance (with latent_mean)
 *   GROUP/latent_mean_flip, GROUP/latent_logvar_flip   the same for the mirrored images (optional)
 *   GROUP/index          int64 [n]    the image's index in its set (prior sets: its RNG stream)
 *   GROUP/seed           uint64 [n]   the seed it was generated with (optional)
 *   GROUP/prompt         string [n]   the prompt it was generated with or trained under (optional)
 *   GROUP/source         string [n]   the file it was read from (optional)
 *
 * Like the rest of storage/, this knows arrays, not models: what the latents
 * mean and which settings go into the group's attributes is the caller's.
 */
#ifndef BOOTH_STORAGE_H5_IMAGES_H
#define BOOTH_STORAGE_H5_IMAGES_H

#include "storage/h5.h"

/* gzip level of the images: level 1 is most of level 9's gain on photos at a
 * fraction of the time (docs/BENCHMARKS.md, Storage). */
#define ST_H5_IMAGES_DEFLATE 1
/* Most images a set may claim (a sanity bound: claimed sizes decide allocations). */
#define ST_H5_IMAGES_MAX 1000000

typedef struct st_h5_imgset {
    int64_t n, height, width;
    int64_t lat_c, lat_h, lat_w; /* 0: no latents */
    bool flips;                  /* with latents: the mirrored images' latents too */
    /* whole arrays, for st_h5_imgset_write */
    const uint8_t *images;                                 /* [n, height, width, 3] */
    const float *mean, *logvar, *mean_flip, *logvar_flip; /* [n, lat_c, lat_h, lat_w] */
    /* per image, for st_h5_imgset_end/write */
    const int64_t *index;                      /* NULL: 0..n-1 */
    const uint64_t *seed;                      /* NULL: none stored */
    const char *const *prompt, *const *source; /* NULL: none stored */
} st_h5_imgset_t;

/* Streaming: begin creates GROUP and the (empty) image and latent datasets of
 * s's sizes; put writes rows [first, first + count) of them (latent pointers
 * may be NULL when the set has none); end writes the per-image datasets. */
int st_h5_imgset_begin(st_h5_file_t *f, const char *group, const st_h5_imgset_t *s);
int st_h5_imgset_put(st_h5_file_t *f, const char *group, int64_t first, int64_t count, const uint8_t *images,
                     const float *mean, const float *logvar, const float *mean_flip, const float *logvar_flip);
int st_h5_imgset_end(st_h5_file_t *f, const char *group, const st_h5_imgset_t *s);
/* All three, from the whole arrays in s. */
int st_h5_imgset_write(st_h5_file_t *f, const char *group, const st_h5_imgset_t *s);

/* What GROUP holds, with every dataset's shape checked against the others
 * (a disagreement is BT_ESHAPE with one line naming both). */
typedef struct st_h5_imgset_info {
    int64_t n, height, width;
    int64_t lat_c, lat_h, lat_w; /* 0 when there are no latents */
    bool has_flip, has_seed, has_prompt, has_source;
} st_h5_imgset_info_t;
int st_h5_imgset_probe(st_h5_file_t *f, const char *group, st_h5_imgset_info_t *info);

/* "GROUP/NAME" into buf (names above without the group). BT_EINVAL if it does not fit. */
int st_h5_imgset_path(char *buf, size_t len, const char *group, const char *name);

#endif
