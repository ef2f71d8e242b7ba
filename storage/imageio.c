/* imageio.c — format sniffing in front of the PNG and JPEG readers. */
#include "storage/imageio.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"
#include "storage/jpeg.h"
#include "storage/png.h"

/* Names of formats people try to train on, for a more useful error. */
static const char *s_other_format(const unsigned char *b, size_t n)
{
    if (n >= 4 && !memcmp(b, "GIF8", 4)) return "GIF";
    if (n >= 12 && !memcmp(b, "RIFF", 4) && !memcmp(b + 8, "WEBP", 4)) return "WebP";
    if (n >= 12 && !memcmp(b + 4, "ftyp", 4)) {
        if (!memcmp(b + 8, "heic", 4) || !memcmp(b + 8, "heix", 4) || !memcmp(b + 8, "mif1", 4)) return "HEIC";
        if (!memcmp(b + 8, "avif", 4)) return "AVIF";
    }
    if (n >= 2 && !memcmp(b, "BM", 2)) return "BMP";
    if (n >= 4 && (!memcmp(b, "II*\0", 4) || !memcmp(b, "MM\0*", 4))) return "TIFF";
    return NULL;
}

int st_image_load(const char *path, bt_img_t **out)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        int rc = errno == ENOENT ? BT_ENOTFOUND : BT_EIO;
        BT_ERROR("%s: cannot open: %s", path, strerror(errno));
        return rc;
    }
    unsigned char b[16];
    size_t n = fread(b, 1, sizeof b, f);
    bool err = ferror(f);
    fclose(f);
    if (err) {
        BT_ERROR("%s: read error", path);
        return BT_EIO;
    }
    static const unsigned char png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    if (n >= 8 && !memcmp(b, png_sig, 8)) return st_png_read(path, out);
    if (n >= 3 && b[0] == 0xFF && b[1] == 0xD8 && b[2] == 0xFF) return st_jpeg_read(path, out);
    const char *other = s_other_format(b, n);
    if (n == 0)
        BT_ERROR("%s: not a PNG or JPEG image (the file is empty)", path);
    else if (other)
        BT_ERROR("%s: not a PNG or JPEG image (it looks like %s; convert it to PNG or JPEG)", path, other);
    else
        BT_ERROR("%s: not a PNG or JPEG image", path);
    return BT_EUNSUPPORTED;
}

int st_image_load_rgb(const char *path, bt_img_t **out)
{
    int rc = st_image_load(path, out);
    if (rc != 0 || (*out)->channels == 3) return rc;
    bt_img_t *rgb = bt_img_convert(*out, 3);
    bt_img_destroy(out);
    if (!rgb) return BT_ENOMEM;
    *out = rgb;
    return BT_OK;
}
