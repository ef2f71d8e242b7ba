/*
 * jpeg.h — JPEG reading (libjpeg-turbo) and the EXIF Orientation tag.
 *
 * Phones store photos sideways and record the fix in EXIF; diffusers' DreamBooth
 * scripts apply it (ImageOps.exif_transpose) before anything else, so
 * st_jpeg_read does too. Output is always RGB: grayscale is replicated and CMYK
 * converted as PIL does (stored CMYK taken as Adobe-inverted, then
 * R = K' - K' * C / 255 with PIL's rounding).
 *
 * libjpeg's errors longjmp back into the reader instead of exiting; a truncated
 * file (which libjpeg would silently pad with gray) is an error too. Each failure
 * is one log line naming the file and the cause.
 */
#ifndef BOOTH_STORAGE_JPEG_H
#define BOOTH_STORAGE_JPEG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/image.h"

/* RGB pixels with the EXIF orientation applied. Returns 0 or a negative status. */
int st_jpeg_read(const char *path, bt_img_t **out);
/* The same with a choice: apply_orientation false gives the pixels as stored.
 * *orientation (may be NULL) receives the file's Orientation, 1 if none. */
int st_jpeg_read_ex(const char *path, bt_img_t **out, bool apply_orientation, int *orientation);

/* The Orientation (tag 0x0112 of IFD0) in EXIF data: an APP1 payload starting
 * "Exif\0\0", or a bare TIFF header ("II*\0" / "MM\0*", as PNG's eXIf chunk).
 * Returns 1..8, or 1 when the tag is absent, out of range or the data are
 * malformed: EXIF is advice, never a reason to reject a photo. Every offset is
 * checked against len, and only IFD0 is read, so no chain of IFDs can loop. */
int st_exif_orientation(const uint8_t *data, size_t len);

#endif
