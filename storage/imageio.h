/*
 * imageio.h — load a user's photo whatever its format, as long as it is PNG or
 * JPEG: the type comes from the first bytes, not from the file name (phones and
 * browsers produce ".jpg" files that are PNG and the other way round).
 */
#ifndef BOOTH_STORAGE_IMAGEIO_H
#define BOOTH_STORAGE_IMAGEIO_H

#include "common/image.h"

/* PNG or JPEG with its EXIF orientation applied: RGB, or RGBA for a PNG with
 * alpha. Anything else is BT_EUNSUPPORTED and one line saying "not a PNG or
 * JPEG image" (with the format's name when it is a common one: HEIC, WebP...). */
int st_image_load(const char *path, bt_img_t **out);
/* The same converted to RGB (alpha dropped, as PIL's convert("RGB")): what the
 * DreamBooth data pipeline wants. */
int st_image_load_rgb(const char *path, bt_img_t **out);

#endif
