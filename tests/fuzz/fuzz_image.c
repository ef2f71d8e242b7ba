/*
 * fuzz_image.c — the PNG and JPEG readers (storage/png.c, storage/jpeg.c,
 * through storage/imageio.c's format sniffing) and the EXIF orientation parser.
 *
 * Invariants: an image that loads is within common/image.h's limits (a header
 * declaring 100000 x 100000 is refused before decoding: the fuzzer runs with a
 * memory limit, so a decode that allocates for it is a finding); a refusal says why.
 */
#include <stdlib.h>

#include "common/image.h"
#include "storage/imageio.h"
#include "storage/jpeg.h"
#include "storage/png.h"
#include "tests/fuzz/fuzz.h"

static void s_check(const bt_img_t *img, const char *what)
{
    if (!img || img->width < 1 || img->height < 1 || img->width > BT_IMG_MAX_SIDE || img->height > BT_IMG_MAX_SIDE ||
        (img->channels != 1 && img->channels != 3 && img->channels != 4))
        fz_bug("%s returned an image outside the limits", what);
    /* touch every byte: a short buffer shows under ASan */
    unsigned sum = 0;
    size_t n = (size_t)img->width * (size_t)img->height * (size_t)img->channels;
    for (size_t i = 0; i < n; i++) sum += img->data[i];
    (void)sum;
}

FUZZ_TARGET(image)
{
    const char *path = fz_file(0, data, size);
    bt_img_t *img = NULL;
    int rc = st_image_load_rgb(path, &img);
    fz_failed(rc, "st_image_load_rgb");
    if (rc == 0) s_check(img, "st_image_load_rgb");
    bt_img_destroy(&img);

    /* PNG text chunks, and JPEG without applying the orientation */
    st_png_text_t *text = NULL;
    int ntext = 0;
    if (size >= 8 && data[0] == 0x89) {
        rc = st_png_read_with_text(path, &img, &text, &ntext);
        fz_failed(rc, "st_png_read_with_text");
        if (rc == 0) s_check(img, "st_png_read_with_text");
        for (int i = 0; i < ntext; i++)
            if (!text[i].key || !text[i].value) fz_bug("PNG text %d without key or value", i);
        st_png_text_free(&text);
        bt_img_destroy(&img);
    } else if (size >= 3 && data[0] == 0xFF) {
        int orientation = 0;
        rc = st_jpeg_read_ex(path, &img, false, &orientation);
        fz_failed(rc, "st_jpeg_read_ex");
        if (rc == 0) s_check(img, "st_jpeg_read_ex");
        if (rc == 0 && (orientation < 1 || orientation > 8)) fz_bug("orientation %d", orientation);
        bt_img_destroy(&img);
    }
    /* the EXIF parser on the raw bytes, as if they were an APP1 payload */
    int o = st_exif_orientation(data, size);
    if (o < 1 || o > 8) fz_bug("st_exif_orientation returned %d", o);
    return 0;
}
