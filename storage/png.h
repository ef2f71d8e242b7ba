/*
 * png.h — PNG files in and out (libpng).
 *
 * Reading gives 8-bit RGB, or RGBA when the file has alpha (an alpha channel,
 * or a tRNS chunk): gray is replicated, palettes are expanded, 16-bit samples
 * keep their high byte (as PIL does), 1/2/4-bit gray is scaled to 0..255,
 * interlaced files are deinterlaced. An eXIf chunk's Orientation is applied,
 * as PIL's ImageOps.exif_transpose would. A corrupt, truncated or oversized
 * file is one error line naming the file and the cause and a negative status;
 * nothing is returned.
 *
 * Writing stores gray, RGB or RGBA 8-bit through bt_atomic_open/commit (temp
 * file, fsync, rename), with optional text chunks such as a "parameters" entry
 * recording how an image was made: tEXt for ASCII values, iTXt (UTF-8) otherwise.
 */
#ifndef BOOTH_STORAGE_PNG_H
#define BOOTH_STORAGE_PNG_H

#include "common/image.h"

typedef struct st_png_text {
    const char *key;   /* 1..79 printable ASCII characters, no leading, trailing or double spaces */
    const char *value; /* UTF-8 */
} st_png_text_t;

/* *out receives the image (caller destroys it). Returns 0 or a negative status. */
int st_png_read(const char *path, bt_img_t **out);
/* Same, and *text receives the file's text chunks (tEXt, zTXt, iTXt; Latin-1
 * turned into UTF-8) in file order: one malloc'd block to release with
 * st_png_text_free; *ntext their count. text may be NULL. */
int st_png_read_with_text(const char *path, bt_img_t **out, st_png_text_t **text, int *ntext);
void st_png_text_free(st_png_text_t **text);
/* The value of the first entry named key, or NULL. */
const char *st_png_text_get(const st_png_text_t *text, int ntext, const char *key);

/* Writes img (1, 3 or 4 channels) and ntext text entries atomically: on any
 * failure the old file, if there was one, is untouched and no temporary is left. */
int st_png_write(const char *path, const bt_img_t *img, const st_png_text_t *text, int ntext);

#endif
