/*
 * image.h — 8-bit images and everything booth does to pixels outside the network.
 *
 * An image is width x height pixels of 1 (gray), 3 (RGB) or 4 (RGBA) interleaved
 * uint8 channels, rows packed with no padding, owned by the struct. Sizes are
 * limited to BT_IMG_MAX_SIDE per side so that a hostile header cannot make us
 * allocate gigabytes before the first pixel is read.
 *
 * The data-pipeline operations reproduce what diffusers' DreamBooth scripts get
 * from PIL + torchvision, so a model trained here sees the same pixels:
 *   - bt_img_resize is PIL's Image.resize (separable convolution whose support
 *     grows with the downscale factor, 22-bit fixed-point coefficients, the
 *     horizontal pass rounded to uint8 before the vertical one, RGBA resized
 *     premultiplied);
 *   - bt_img_center_crop is torchvision's CenterCrop (offsets rounded half to
 *     even, as Python's round(); zero padding when the crop is larger);
 *   - bt_img_to_f32_chw is ToTensor + Normalize([0.5], [0.5]) in float32;
 *   - bt_img_from_f32_chw is diffusers' postprocess + numpy_to_pil.
 *
 * Text drawing (font.c) and the grid composer let booth label sample sheets
 * without a font library; plot.h draws training curves.
 *
 * Colours are 0xRRGGBB. Drawing on a gray image uses the luma of the colour
 * (ITU-R 601, as PIL's convert("L")); on RGBA it writes alpha 255.
 */
#ifndef BOOTH_COMMON_IMAGE_H
#define BOOTH_COMMON_IMAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BT_IMG_MAX_SIDE 16384
/* The most pixels a decoded photo may have (134 MP: a 100 MP medium-format camera's frame fits; a
 * header declaring 16384 x 16384 does not): checked against the header, before decoding. */
#define BT_IMG_MAX_PIXELS ((int64_t)1 << 27)

typedef struct bt_img {
    int width, height;
    int channels;  /* 1, 3 or 4 */
    uint8_t *data; /* height rows of width * channels bytes */
} bt_img_t;

typedef enum bt_img_filter {
    BT_IMG_BILINEAR, /* PIL Image.BILINEAR (triangle, support 1) */
    BT_IMG_BICUBIC,  /* PIL Image.BICUBIC (Keys, a = -0.5, support 2) */
    BT_IMG_LANCZOS,  /* PIL Image.LANCZOS (Lanczos-3) */
} bt_img_filter_t;

/* PIL's names for the eight rotations/mirrors (ROTATE_* are counter-clockwise). */
typedef enum bt_img_transform {
    BT_IMG_FLIP_LEFT_RIGHT,
    BT_IMG_FLIP_TOP_BOTTOM,
    BT_IMG_ROTATE_90,
    BT_IMG_ROTATE_180,
    BT_IMG_ROTATE_270,
    BT_IMG_TRANSPOSE,  /* mirror across the main diagonal: out(x, y) = in(y, x) */
    BT_IMG_TRANSVERSE, /* mirror across the other diagonal */
} bt_img_transform_t;

typedef enum bt_img_range {
    BT_IMG_RANGE_PM1, /* [-1, 1]: what the VAE decodes */
    BT_IMG_RANGE_01,  /* [0, 1] */
} bt_img_range_t;

/* ---- objects ---- */

/* Zero-filled image. NULL (and one log line) for a size outside
 * 1..BT_IMG_MAX_SIDE, channels not 1/3/4, or no memory. */
bt_img_t *bt_img_new(int width, int height, int channels);
void bt_img_destroy(bt_img_t **img);
bt_img_t *bt_img_clone(const bt_img_t *img);
/* True if width, height and channels are within the limits above. */
bool bt_img_size_ok(int width, int height, int channels);
static inline uint8_t *bt_img_pixel(const bt_img_t *img, int x, int y)
{
    return img->data + ((size_t)y * (size_t)img->width + (size_t)x) * (size_t)img->channels;
}

/* ---- geometry (all return a new image, or NULL with one log line) ---- */

/* The w x h rectangle at (x, y); parts outside the source are zero. */
bt_img_t *bt_img_crop(const bt_img_t *img, int x, int y, int w, int h);
/* torchvision.transforms.CenterCrop((h, w)). */
bt_img_t *bt_img_center_crop(const bt_img_t *img, int w, int h);
/* The largest centred square. */
bt_img_t *bt_img_center_crop_square(const bt_img_t *img);
/* The largest centred crop whose width:height is aspect_w:aspect_h. */
bt_img_t *bt_img_center_crop_aspect(const bt_img_t *img, int aspect_w, int aspect_h);
/* In place; the training-time random flip. */
void bt_img_flip_h(bt_img_t *img);
bt_img_t *bt_img_transform(const bt_img_t *img, bt_img_transform_t t);
/* What PIL's ImageOps.exif_transpose does for Orientation 1..8; any other value
 * gives an unchanged copy. */
bt_img_t *bt_img_apply_exif_orientation(const bt_img_t *img, int orientation);

/* PIL Image.resize(size=(w, h), resample=filter). Same size: a copy. */
bt_img_t *bt_img_resize(const bt_img_t *img, int w, int h, bt_img_filter_t filter);
/* transforms.Resize(res, filter): the shorter side becomes res, the longer one
 * int(res * long / short). */
bt_img_t *bt_img_resize_shorter_side(const bt_img_t *img, int res, bt_img_filter_t filter);
/* transforms.Resize(res, filter) then transforms.CenterCrop(res): the shorter
 * side becomes res (the longer one int(res * long / short)), then the centre
 * res x res square is cut out. */
bt_img_t *bt_img_resize_shorter_side_and_center_crop(const bt_img_t *img, int res, bt_img_filter_t filter);

/* ---- pixel formats ---- */

/* PIL convert(): gray -> RGB(A) replicates, RGB(A) -> gray is
 * (19595 R + 38470 G + 7471 B + 32768) >> 16, alpha is dropped or set to 255. */
bt_img_t *bt_img_convert(const bt_img_t *img, int channels);
/* HWC uint8 -> CHW float32, (x / 255 - 0.5) / 0.5 in float32 (= x / 127.5 - 1
 * to the last bit torchvision gets). out holds channels * height * width floats. */
void bt_img_to_f32_chw(const bt_img_t *img, float *out);
/* CHW float32 -> HWC uint8: v = clamp(x / 2 + 0.5, 0, 1) for RANGE_PM1,
 * clamp(x, 0, 1) for RANGE_01, then round-half-even(v * 255), all in float32
 * like diffusers' numpy_to_pil. NaN becomes 0. */
bt_img_t *bt_img_from_f32_chw(const float *x, int channels, int height, int width, bt_img_range_t range);

/* ---- drawing (clipped to the image) ---- */

void bt_img_fill(bt_img_t *img, uint32_t rgb);
void bt_img_fill_rect(bt_img_t *img, int x, int y, int w, int h, uint32_t rgb);
/* Blends rgb into one pixel with coverage a in [0, 1]. */
void bt_img_blend_pixel(bt_img_t *img, int x, int y, uint32_t rgb, float a);
/* Antialiased line of the given width (>= 1) between pixel centres. */
void bt_img_draw_line(bt_img_t *img, double x0, double y0, double x1, double y1, uint32_t rgb, double width);
/* Connected segments through n points, each pixel blended once (joints do not
 * darken); a single point is a dot of diameter width. Non-finite points: nothing. */
void bt_img_draw_polyline(bt_img_t *img, const double *xs, const double *ys, int n, uint32_t rgb, double width);
/* Copies src with its top-left corner at (x, y), converting channels. */
void bt_img_paste(bt_img_t *dst, const bt_img_t *src, int x, int y);

/* ---- text (font.c: a built-in 5x9 bitmap font in a 6x10 cell) ---- */

#define BT_FONT_ADVANCE 6 /* pixels per character at scale 1 */
#define BT_FONT_LINE 10   /* pixels per line at scale 1 */

/* Draws text with its top-left corner at (x, y); '\n' starts a new line.
 * Printable ASCII has glyphs; any other character (a UTF-8 sequence counts as
 * one) is drawn as a hollow box. scale >= 1 multiplies every glyph pixel. */
void bt_img_draw_text(bt_img_t *img, int x, int y, const char *text, int scale, uint32_t rgb);
/* Width in pixels of the longest line, and height of all lines. */
int bt_img_text_width(const char *text, int scale);
int bt_img_text_height(const char *text, int scale);
/* Word-wraps text into out (lines joined by '\n') so that no line is wider than
 * max_width; words longer than a line are broken. At most max_lines lines (0: no
 * limit); text that does not fit ends in "...". Returns the number of lines. */
int bt_img_text_wrap(const char *text, int max_width, int scale, int max_lines, char *out, size_t out_len);

/* ---- sample sheets ---- */

typedef struct bt_img_grid_opts {
    int margin;                    /* pixels around and between tiles */
    int font_scale;                /* glyph scale factor for labels and title */
    const char *title;             /* NULL or "": no title line */
    const char *const *row_labels; /* NULL, or one per row (entries may be NULL) */
    const char *const *col_labels; /* NULL, or one per column */
    uint32_t background, foreground;
    int min_tile; /* tiles narrower than this are drawn k times larger, nearest neighbour (the smallest
                   * integer k that reaches it), so that a 32-px picture stays legible and its labels fit;
                   * 0: as they are */
} bt_img_grid_opts_t;

#define BT_IMG_GRID_OPTS_INIT                                                                                          \
    {                                                                                                                  \
        .margin = 8, .font_scale = 2, .background = 0xffffff, .foreground = 0x000000, .min_tile = 128                  \
    }

/* rows x cols tiles, row-major; all non-NULL tiles must have the same size (a
 * NULL tile leaves its cell blank). Column labels go above the columns, row
 * labels to the left, the title above everything; long labels are wrapped.
 * Returns an RGB image, or NULL with one log line. */
bt_img_t *bt_img_grid(const bt_img_t *const *tiles, int rows, int cols, const bt_img_grid_opts_t *opts);

#endif
