/*
 * image.c — the image type, geometry, PIL-exact resampling, format conversions,
 * drawing primitives and the sample-sheet grid.
 *
 * Resampling follows the algorithm PIL documents and implements in
 * libImaging/Resample.c, written out here from that description: for each output
 * coordinate a window of input samples centred on (i + 0.5) * scale, the filter
 * stretched by max(scale, 1) so downscaling averages instead of aliasing,
 * weights normalised to sum 1 and converted to 22-bit fixed point, and the two
 * passes (horizontal first, over only the rows the vertical pass will read)
 * each rounded to uint8. Matching those details is what makes the result equal
 * PIL's to the last bit rather than merely close.
 */
#include "common/image.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/status.h"

/* ------------------------------------------------------------------ objects */

bool bt_img_size_ok(int width, int height, int channels)
{
    return width >= 1 && height >= 1 && width <= BT_IMG_MAX_SIDE && height <= BT_IMG_MAX_SIDE &&
           (channels == 1 || channels == 3 || channels == 4);
}

bt_img_t *bt_img_new(int width, int height, int channels)
{
    if (!bt_img_size_ok(width, height, channels)) {
        BT_ERROR("image: cannot create a %dx%d image with %d channels (sides 1..%d, channels 1, 3 or 4)", width, height,
                 channels, BT_IMG_MAX_SIDE);
        return NULL;
    }
    bt_img_t *img = bt_calloc(1, sizeof *img);
    size_t n = (size_t)width * (size_t)height * (size_t)channels;
    if (img) img->data = bt_calloc(n, 1);
    if (!img || !img->data) {
        BT_ERROR("image: out of memory for a %dx%dx%d image (%zu bytes)", width, height, channels, n);
        free(img);
        return NULL;
    }
    img->width = width;
    img->height = height;
    img->channels = channels;
    return img;
}

void bt_img_destroy(bt_img_t **img)
{
    if (!img || !*img) return;
    free((*img)->data);
    free(*img);
    *img = NULL;
}

static size_t s_nbytes(const bt_img_t *img)
{
    return (size_t)img->width * (size_t)img->height * (size_t)img->channels;
}

bt_img_t *bt_img_clone(const bt_img_t *img)
{
    bt_img_t *out = bt_img_new(img->width, img->height, img->channels);
    if (out) memcpy(out->data, img->data, s_nbytes(img));
    return out;
}

/* ----------------------------------------------------------------- geometry */

bt_img_t *bt_img_crop(const bt_img_t *img, int x, int y, int w, int h)
{
    bt_img_t *out = bt_img_new(w, h, img->channels);
    if (!out) return NULL;
    /* the part of the rectangle that lies inside the source */
    int x0 = x < 0 ? 0 : x, y0 = y < 0 ? 0 : y;
    long long x1 = (long long)x + w, y1 = (long long)y + h;
    if (x1 > img->width) x1 = img->width;
    if (y1 > img->height) y1 = img->height;
    if (x0 >= x1 || y0 >= y1) return out;
    size_t row = (size_t)(x1 - x0) * (size_t)img->channels;
    for (int yy = y0; yy < y1; yy++)
        memcpy(bt_img_pixel(out, x0 - x, yy - y), bt_img_pixel(img, x0, yy), row);
    return out;
}

/* torchvision's offset along one axis: int(round((in - crop) / 2.0)) with
 * Python's half-to-even round, or, when the crop is larger, the left/top zero
 * padding (crop - in) // 2 as a negative offset. */
static int s_center_offset(int in, int crop)
{
    if (crop > in) return -((crop - in) / 2);
    int d = in - crop, k = d / 2;
    if (d % 2 == 0) return k;
    return k + (k & 1); /* k + 0.5 rounds to the even neighbour */
}

bt_img_t *bt_img_center_crop(const bt_img_t *img, int w, int h)
{
    return bt_img_crop(img, s_center_offset(img->width, w), s_center_offset(img->height, h), w, h);
}

bt_img_t *bt_img_center_crop_square(const bt_img_t *img)
{
    int side = img->width < img->height ? img->width : img->height;
    return bt_img_center_crop(img, side, side);
}

bt_img_t *bt_img_center_crop_aspect(const bt_img_t *img, int aspect_w, int aspect_h)
{
    if (aspect_w <= 0 || aspect_h <= 0) {
        BT_ERROR("image: aspect ratio %d:%d is not positive", aspect_w, aspect_h);
        return NULL;
    }
    long long w = img->width, h = img->height;
    if (w * aspect_h > h * aspect_w) /* too wide: keep the height */
        w = h * aspect_w / aspect_h;
    else
        h = w * aspect_h / aspect_w;
    if (w < 1) w = 1;
    if (h < 1) h = 1;
    return bt_img_center_crop(img, (int)w, (int)h);
}

void bt_img_flip_h(bt_img_t *img)
{
    int c = img->channels;
    for (int y = 0; y < img->height; y++) {
        uint8_t *a = bt_img_pixel(img, 0, y), *b = bt_img_pixel(img, img->width - 1, y);
        for (; a < b; a += c, b -= c)
            for (int k = 0; k < c; k++) {
                uint8_t t = a[k];
                a[k] = b[k];
                b[k] = t;
            }
    }
}

bt_img_t *bt_img_transform(const bt_img_t *img, bt_img_transform_t t)
{
    int W = img->width, H = img->height, c = img->channels;
    bool swap = t == BT_IMG_ROTATE_90 || t == BT_IMG_ROTATE_270 || t == BT_IMG_TRANSPOSE || t == BT_IMG_TRANSVERSE;
    bt_img_t *out = bt_img_new(swap ? H : W, swap ? W : H, c);
    if (!out) return NULL;
    for (int y = 0; y < out->height; y++)
        for (int x = 0; x < out->width; x++) {
            int sx, sy; /* the source pixel that lands on (x, y) */
            switch (t) {
            case BT_IMG_FLIP_LEFT_RIGHT: sx = W - 1 - x, sy = y; break;
            case BT_IMG_FLIP_TOP_BOTTOM: sx = x, sy = H - 1 - y; break;
            case BT_IMG_ROTATE_180: sx = W - 1 - x, sy = H - 1 - y; break;
            case BT_IMG_ROTATE_90: sx = W - 1 - y, sy = x; break;  /* counter-clockwise */
            case BT_IMG_ROTATE_270: sx = y, sy = H - 1 - x; break; /* clockwise */
            case BT_IMG_TRANSPOSE: sx = y, sy = x; break;
            case BT_IMG_TRANSVERSE: sx = W - 1 - y, sy = H - 1 - x; break;
            default: sx = x, sy = y; break;
            }
            memcpy(bt_img_pixel(out, x, y), bt_img_pixel(img, sx, sy), (size_t)c);
        }
    return out;
}

bt_img_t *bt_img_apply_exif_orientation(const bt_img_t *img, int orientation)
{
    /* TIFF Orientation: where row 0 / column 0 of the stored image belong. */
    switch (orientation) {
    case 2: return bt_img_transform(img, BT_IMG_FLIP_LEFT_RIGHT);
    case 3: return bt_img_transform(img, BT_IMG_ROTATE_180);
    case 4: return bt_img_transform(img, BT_IMG_FLIP_TOP_BOTTOM);
    case 5: return bt_img_transform(img, BT_IMG_TRANSPOSE);
    case 6: return bt_img_transform(img, BT_IMG_ROTATE_270);
    case 7: return bt_img_transform(img, BT_IMG_TRANSVERSE);
    case 8: return bt_img_transform(img, BT_IMG_ROTATE_90);
    default: return bt_img_clone(img);
    }
}

/* --------------------------------------------------------------- resampling */

#define S_PRECISION 22 /* fixed-point bits: 8 for the pixel, 2 for filter overshoot */

static double s_sinc(double x)
{
    if (x == 0.0) return 1.0;
    x *= M_PI;
    return sin(x) / x;
}

static double s_filter(bt_img_filter_t f, double x)
{
    switch (f) {
    case BT_IMG_BILINEAR: return fabs(x) < 1.0 ? 1.0 - fabs(x) : 0.0;
    case BT_IMG_BICUBIC: {
        const double a = -0.5; /* Keys' cubic convolution, as PIL */
        x = fabs(x);
        if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
        if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
        return 0.0;
    }
    case BT_IMG_LANCZOS: return (x >= -3.0 && x < 3.0) ? s_sinc(x) * s_sinc(x / 3) : 0.0;
    }
    return 0.0;
}

static double s_support(bt_img_filter_t f)
{
    return f == BT_IMG_BILINEAR ? 1.0 : f == BT_IMG_BICUBIC ? 2.0 : 3.0;
}

/* Weights of one pass: output i reads input[first[i] .. first[i] + count[i]) with
 * weights k[i * ksize ..]. */
typedef struct {
    int ksize;
    int *first, *count;
    int32_t *k;
} s_coeffs_t;

static void s_coeffs_free(s_coeffs_t *c)
{
    free(c->first);
    free(c->count);
    free(c->k);
    memset(c, 0, sizeof *c);
}

static int s_coeffs_init(s_coeffs_t *c, int in_size, int out_size, bt_img_filter_t f)
{
    memset(c, 0, sizeof *c);
    double scale = (double)in_size / out_size;
    double fscale = scale < 1.0 ? 1.0 : scale;
    double support = s_support(f) * fscale;
    c->ksize = (int)ceil(support) * 2 + 1;
    double *w = bt_malloc((size_t)c->ksize * sizeof *w);
    c->first = bt_malloc((size_t)out_size * sizeof *c->first);
    c->count = bt_malloc((size_t)out_size * sizeof *c->count);
    c->k = bt_calloc((size_t)out_size * (size_t)c->ksize, sizeof *c->k);
    if (!w || !c->first || !c->count || !c->k) {
        BT_ERROR("image: out of memory for the weights of a %d -> %d resampling pass", in_size, out_size);
        free(w);
        s_coeffs_free(c);
        return BT_ENOMEM;
    }
    for (int i = 0; i < out_size; i++) {
        double center = (i + 0.5) * scale;
        int lo = (int)(center - support + 0.5), hi = (int)(center + support + 0.5);
        if (lo < 0) lo = 0;
        if (hi > in_size) hi = in_size;
        int n = hi - lo;
        if (n > c->ksize) n = c->ksize; /* cannot happen; keeps the writes in bounds regardless */
        double sum = 0.0;
        for (int j = 0; j < n; j++) {
            w[j] = s_filter(f, (j + lo - center + 0.5) / fscale);
            sum += w[j];
        }
        int32_t *k = c->k + (size_t)i * (size_t)c->ksize;
        for (int j = 0; j < n; j++) {
            double v = sum != 0.0 ? w[j] / sum : w[j];
            v *= (double)(1 << S_PRECISION);
            k[j] = (int32_t)(v < 0 ? v - 0.5 : v + 0.5);
        }
        c->first[i] = lo;
        c->count[i] = n;
    }
    free(w);
    return BT_OK;
}

static inline uint8_t s_clip8(int32_t acc)
{
    if (acc < 0) return 0;
    acc >>= S_PRECISION;
    return acc > 255 ? 255 : (uint8_t)acc;
}

/* out (ow x rows) from in rows [row0, row0 + rows), resampled along x. */
static void s_pass_h(bt_img_t *out, const bt_img_t *in, int row0, const s_coeffs_t *c)
{
    int ch = in->channels;
    for (int y = 0; y < out->height; y++) {
        const uint8_t *src = bt_img_pixel(in, 0, row0 + y);
        uint8_t *dst = bt_img_pixel(out, 0, y);
        for (int x = 0; x < out->width; x++) {
            const int32_t *k = c->k + (size_t)x * (size_t)c->ksize;
            const uint8_t *s = src + (size_t)c->first[x] * (size_t)ch;
            for (int b = 0; b < ch; b++) {
                int32_t acc = 1 << (S_PRECISION - 1);
                for (int j = 0; j < c->count[x]; j++)
                    acc += s[(size_t)j * (size_t)ch + (size_t)b] * k[j];
                dst[(size_t)x * (size_t)ch + (size_t)b] = s_clip8(acc);
            }
        }
    }
}

/* out (w x oh) from in, resampled along y; first[] is relative to in's row 0. */
static void s_pass_v(bt_img_t *out, const bt_img_t *in, const s_coeffs_t *c)
{
    size_t row = (size_t)in->width * (size_t)in->channels;
    for (int y = 0; y < out->height; y++) {
        const int32_t *k = c->k + (size_t)y * (size_t)c->ksize;
        const uint8_t *src = in->data + (size_t)c->first[y] * row;
        uint8_t *dst = bt_img_pixel(out, 0, y);
        for (size_t i = 0; i < row; i++) {
            int32_t acc = 1 << (S_PRECISION - 1);
            for (int j = 0; j < c->count[y]; j++)
                acc += src[(size_t)j * row + i] * k[j];
            dst[i] = s_clip8(acc);
        }
    }
}

/* PIL's RGBA -> RGBa: c * a / 255 rounded, via the ((t >> 8) + t) >> 8 trick. */
static void s_premultiply(bt_img_t *img)
{
    size_t n = (size_t)img->width * (size_t)img->height;
    for (size_t i = 0; i < n; i++) {
        uint8_t *p = img->data + i * 4;
        for (int b = 0; b < 3; b++) {
            unsigned t = (unsigned)p[b] * p[3] + 128;
            p[b] = (uint8_t)(((t >> 8) + t) >> 8);
        }
    }
}

/* PIL's RGBa -> RGBA: c * 255 / a truncated, alpha 0 and 255 untouched. */
static void s_unpremultiply(bt_img_t *img)
{
    size_t n = (size_t)img->width * (size_t)img->height;
    for (size_t i = 0; i < n; i++) {
        uint8_t *p = img->data + i * 4;
        if (p[3] == 0 || p[3] == 255) continue;
        for (int b = 0; b < 3; b++) {
            unsigned v = 255u * p[b] / p[3];
            p[b] = (uint8_t)(v > 255 ? 255 : v);
        }
    }
}

static bt_img_t *s_resample(const bt_img_t *img, int w, int h, bt_img_filter_t filter)
{
    bt_img_t *tmp = NULL, *out = NULL;
    s_coeffs_t cv, chz;
    if (s_coeffs_init(&cv, img->height, h, filter) != 0) return NULL;
    const bt_img_t *src = img;
    if (w != img->width) {
        /* only the rows the vertical pass will read */
        int row0 = cv.first[0], row1 = cv.first[h - 1] + cv.count[h - 1];
        if (s_coeffs_init(&chz, img->width, w, filter) != 0) goto out_free_cv;
        tmp = bt_img_new(w, row1 - row0, img->channels);
        if (tmp) s_pass_h(tmp, img, row0, &chz);
        s_coeffs_free(&chz);
        if (!tmp) goto out_free_cv;
        for (int i = 0; i < h; i++)
            cv.first[i] -= row0;
        src = tmp;
    }
    if (h != img->height) {
        out = bt_img_new(w, h, img->channels);
        if (out) s_pass_v(out, src, &cv);
        bt_img_destroy(&tmp);
    } else {
        out = tmp;
    }
    s_coeffs_free(&cv);
    return out;
out_free_cv:
    s_coeffs_free(&cv);
    return NULL;
}

bt_img_t *bt_img_resize(const bt_img_t *img, int w, int h, bt_img_filter_t filter)
{
    if (!bt_img_size_ok(w, h, img->channels)) {
        BT_ERROR("image: cannot resize %dx%d to %dx%d (sides 1..%d)", img->width, img->height, w, h, BT_IMG_MAX_SIDE);
        return NULL;
    }
    if (filter != BT_IMG_BILINEAR && filter != BT_IMG_BICUBIC && filter != BT_IMG_LANCZOS) {
        BT_ERROR("image: unknown resampling filter %d", (int)filter);
        return NULL;
    }
    if (w == img->width && h == img->height) return bt_img_clone(img);
    if (img->channels != 4) return s_resample(img, w, h, filter);
    /* PIL resizes RGBA premultiplied, so transparent pixels do not bleed colour */
    bt_img_t *pre = bt_img_clone(img);
    if (!pre) return NULL;
    s_premultiply(pre);
    bt_img_t *out = s_resample(pre, w, h, filter);
    bt_img_destroy(&pre);
    if (out) s_unpremultiply(out);
    return out;
}

bt_img_t *bt_img_resize_shorter_side(const bt_img_t *img, int res, bt_img_filter_t filter)
{
    if (res < 1 || res > BT_IMG_MAX_SIDE) {
        BT_ERROR("image: resolution %d is outside 1..%d", res, BT_IMG_MAX_SIDE);
        return NULL;
    }
    /* torchvision's _compute_resized_output_size: int(res * long / short), the
     * division in double exactly as Python's true division of two ints */
    int w = img->width, h = img->height;
    int sh = w <= h ? w : h, lg = w <= h ? h : w;
    double nl = (double)((long long)res * lg) / (double)sh;
    if (nl > BT_IMG_MAX_SIDE) {
        BT_ERROR("image: resizing %dx%d so its shorter side is %d would make the other side %.0f (max %d)", w, h, res,
                 nl, BT_IMG_MAX_SIDE);
        return NULL;
    }
    int new_long = (int)nl;
    int nw = w <= h ? res : new_long, nh = w <= h ? new_long : res;
    return bt_img_resize(img, nw, nh, filter);
}

bt_img_t *bt_img_resize_shorter_side_and_center_crop(const bt_img_t *img, int res, bt_img_filter_t filter)
{
    bt_img_t *resized = bt_img_resize_shorter_side(img, res, filter);
    if (!resized) return NULL;
    bt_img_t *out = bt_img_center_crop(resized, res, res);
    bt_img_destroy(&resized);
    return out;
}

/* ------------------------------------------------------------ pixel formats */

static inline uint8_t s_luma(const uint8_t *rgb)
{
    return (uint8_t)((rgb[0] * 19595u + rgb[1] * 38470u + rgb[2] * 7471u + 0x8000u) >> 16);
}

bt_img_t *bt_img_convert(const bt_img_t *img, int channels)
{
    bt_img_t *out = bt_img_new(img->width, img->height, channels);
    if (!out) return NULL;
    size_t n = (size_t)img->width * (size_t)img->height;
    int ci = img->channels;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *s = img->data + i * (size_t)ci;
        uint8_t *d = out->data + i * (size_t)channels;
        uint8_t rgb[3] = {s[0], ci == 1 ? s[0] : s[1], ci == 1 ? s[0] : s[2]};
        if (channels == 1) {
            d[0] = ci == 1 ? s[0] : s_luma(rgb);
        } else {
            memcpy(d, rgb, 3);
            if (channels == 4) d[3] = ci == 4 ? s[3] : 255;
        }
    }
    return out;
}

void bt_img_to_f32_chw(const bt_img_t *img, float *out)
{
    float lut[256];
    for (int v = 0; v < 256; v++) {
        float t = (float)v / 255.0f; /* ToTensor */
        lut[v] = (t - 0.5f) / 0.5f;  /* Normalize([0.5], [0.5]) */
    }
    size_t plane = (size_t)img->width * (size_t)img->height;
    int c = img->channels;
    for (int b = 0; b < c; b++)
        for (size_t i = 0; i < plane; i++)
            out[(size_t)b * plane + i] = lut[img->data[i * (size_t)c + (size_t)b]];
}

bt_img_t *bt_img_from_f32_chw(const float *x, int channels, int height, int width, bt_img_range_t range)
{
    bt_img_t *img = bt_img_new(width, height, channels);
    if (!img) return NULL;
    size_t plane = (size_t)width * (size_t)height;
    for (int b = 0; b < channels; b++)
        for (size_t i = 0; i < plane; i++) {
            float v = x[(size_t)b * plane + i];
            if (range == BT_IMG_RANGE_PM1) v = v / 2.0f + 0.5f;
            if (!(v >= 0.0f)) v = 0.0f; /* also NaN */
            if (v > 1.0f) v = 1.0f;
            img->data[i * (size_t)channels + (size_t)b] = (uint8_t)nearbyintf(v * 255.0f); /* half to even */
        }
    return img;
}

/* ------------------------------------------------------------------ drawing */

static void s_color(const bt_img_t *img, uint32_t rgb, uint8_t px[4])
{
    uint8_t c[3] = {(uint8_t)(rgb >> 16), (uint8_t)(rgb >> 8), (uint8_t)rgb};
    if (img->channels == 1) {
        px[0] = s_luma(c);
    } else {
        memcpy(px, c, 3);
        px[3] = 255;
    }
}

void bt_img_fill_rect(bt_img_t *img, int x, int y, int w, int h, uint32_t rgb)
{
    long long x1 = (long long)x + w, y1 = (long long)y + h;
    if (x < 0) x = 0;
    if (y < 0) y = 0;
    if (x1 > img->width) x1 = img->width;
    if (y1 > img->height) y1 = img->height;
    uint8_t px[4];
    s_color(img, rgb, px);
    for (int yy = y; yy < y1; yy++)
        for (int xx = x; xx < x1; xx++)
            memcpy(bt_img_pixel(img, xx, yy), px, (size_t)img->channels);
}

void bt_img_fill(bt_img_t *img, uint32_t rgb)
{
    bt_img_fill_rect(img, 0, 0, img->width, img->height, rgb);
}

void bt_img_blend_pixel(bt_img_t *img, int x, int y, uint32_t rgb, float a)
{
    if (x < 0 || y < 0 || x >= img->width || y >= img->height || !(a > 0.0f)) return;
    if (a > 1.0f) a = 1.0f;
    uint8_t px[4];
    s_color(img, rgb, px);
    uint8_t *p = bt_img_pixel(img, x, y);
    int n = img->channels == 4 ? 3 : img->channels;
    for (int b = 0; b < n; b++)
        p[b] = (uint8_t)lrintf((float)p[b] + ((float)px[b] - (float)p[b]) * a);
    if (img->channels == 4) p[3] = (uint8_t)lrintf((float)p[3] + (255.0f - (float)p[3]) * a);
}

void bt_img_paste(bt_img_t *dst, const bt_img_t *src, int x, int y)
{
    for (int sy = 0; sy < src->height; sy++) {
        int dy = y + sy;
        if (dy < 0 || dy >= dst->height) continue;
        for (int sx = 0; sx < src->width; sx++) {
            int dx = x + sx;
            if (dx < 0 || dx >= dst->width) continue;
            const uint8_t *s = bt_img_pixel(src, sx, sy);
            uint8_t *d = bt_img_pixel(dst, dx, dy);
            if (src->channels == dst->channels) {
                memcpy(d, s, (size_t)src->channels);
                continue;
            }
            uint8_t rgb[3] = {s[0], src->channels == 1 ? s[0] : s[1], src->channels == 1 ? s[0] : s[2]};
            if (dst->channels == 1) {
                d[0] = s_luma(rgb);
            } else {
                memcpy(d, rgb, 3);
                if (dst->channels == 4) d[3] = src->channels == 4 ? s[3] : 255;
            }
        }
    }
}

/* Distance from (px, py) to the segment (x0, y0)-(x1, y1). */
static double s_seg_dist(double px, double py, double x0, double y0, double x1, double y1)
{
    double dx = x1 - x0, dy = y1 - y0, len2 = dx * dx + dy * dy;
    double t = len2 > 0 ? ((px - x0) * dx + (py - y0) * dy) / len2 : 0.0;
    if (t < 0) t = 0;
    if (t > 1) t = 1;
    double ex = px - (x0 + t * dx), ey = py - (y0 + t * dy);
    return sqrt(ex * ex + ey * ey);
}

/* Coverage of one thick segment, max-combined into mask (the clip rectangle
 * [mx, mx + mw) x [my, my + mh)). Walks the major axis, so the work is
 * proportional to length x width, not to the bounding box. */
static void s_cover_segment(float *mask, int mx, int my, int mw, int mh, double x0, double y0, double x1, double y1,
                            double r)
{
    bool steep = fabs(y1 - y0) > fabs(x1 - x0);
    double u0 = steep ? y0 : x0, v0 = steep ? x0 : y0, u1 = steep ? y1 : x1, v1 = steep ? x1 : y1;
    if (u0 > u1) {
        double t = u0;
        u0 = u1, u1 = t;
        t = v0, v0 = v1, v1 = t;
    }
    int umin = steep ? my : mx, umax = steep ? my + mh - 1 : mx + mw - 1;
    int vmin = steep ? mx : my, vmax = steep ? mx + mw - 1 : my + mh - 1;
    double slope = u1 > u0 ? (v1 - v0) / (u1 - u0) : 0.0;
    int ua = (int)floor(u0 - r - 1), ub = (int)ceil(u1 + r + 1);
    if (ua < umin) ua = umin;
    if (ub > umax) ub = umax;
    for (int u = ua; u <= ub; u++) {
        double lo = u - r - 1 < u0 ? u0 : u - r - 1, hi = u + r + 1 > u1 ? u1 : u + r + 1;
        if (lo > hi) lo = hi = (u < u0 ? u0 : u1);
        double va = v0 + (lo - u0) * slope, vb = v0 + (hi - u0) * slope;
        int v_lo = (int)floor(fmin(va, vb) - r - 1), v_hi = (int)ceil(fmax(va, vb) + r + 1);
        if (v_lo < vmin) v_lo = vmin;
        if (v_hi > vmax) v_hi = vmax;
        for (int v = v_lo; v <= v_hi; v++) {
            double d = s_seg_dist(u, v, u0, v0, u1, v1);
            float cov = (float)(r + 0.5 - d);
            if (cov <= 0) continue;
            if (cov > 1) cov = 1;
            int x = steep ? v : u, y = steep ? u : v;
            float *m = &mask[(size_t)(y - my) * (size_t)mw + (size_t)(x - mx)];
            if (cov > *m) *m = cov;
        }
    }
}

void bt_img_draw_line(bt_img_t *img, double x0, double y0, double x1, double y1, uint32_t rgb, double width)
{
    double xs[2] = {x0, x1}, ys[2] = {y0, y1};
    bt_img_draw_polyline(img, xs, ys, 2, rgb, width);
}

void bt_img_draw_polyline(bt_img_t *img, const double *xs, const double *ys, int n, uint32_t rgb, double width)
{
    if (n < 1) return;
    double r = (width < 1 ? 1 : width) / 2;
    double bx0 = INFINITY, by0 = INFINITY, bx1 = -INFINITY, by1 = -INFINITY;
    for (int i = 0; i < n; i++) {
        if (!isfinite(xs[i]) || !isfinite(ys[i])) return; /* callers split at non-finite points */
        bx0 = fmin(bx0, xs[i]), by0 = fmin(by0, ys[i]), bx1 = fmax(bx1, xs[i]), by1 = fmax(by1, ys[i]);
    }
    /* the part of the bounding box inside the image */
    double fx0 = fmax(floor(bx0 - r - 1), 0), fy0 = fmax(floor(by0 - r - 1), 0);
    double fx1 = fmin(ceil(bx1 + r + 1), img->width - 1), fy1 = fmin(ceil(by1 + r + 1), img->height - 1);
    if (fx0 > fx1 || fy0 > fy1) return;
    int mx = (int)fx0, my = (int)fy0, mw = (int)(fx1 - fx0) + 1, mh = (int)(fy1 - fy0) + 1;
    float *mask = bt_calloc((size_t)mw * (size_t)mh, sizeof *mask);
    if (!mask) return; /* drawing is best effort: a plot without a line beats no plot */
    if (n == 1) s_cover_segment(mask, mx, my, mw, mh, xs[0], ys[0], xs[0], ys[0], r);
    for (int i = 0; i + 1 < n; i++)
        s_cover_segment(mask, mx, my, mw, mh, xs[i], ys[i], xs[i + 1], ys[i + 1], r);
    for (int y = 0; y < mh; y++)
        for (int x = 0; x < mw; x++) {
            float a = mask[(size_t)y * (size_t)mw + (size_t)x];
            if (a > 0) bt_img_blend_pixel(img, mx + x, my + y, rgb, a);
        }
    free(mask);
}

/* --------------------------------------------------------------------- grid */

#define S_LABEL_MAX 4096

/* src drawn k x k per pixel (nearest neighbour): a small picture made legible, not smoothed. */
static bt_img_t *s_upscale(const bt_img_t *src, int k)
{
    bt_img_t *out = bt_img_new(src->width * k, src->height * k, src->channels);
    if (!out) return NULL;
    size_t c = (size_t)src->channels;
    for (int y = 0; y < out->height; y++)
        for (int x = 0; x < out->width; x++) memcpy(bt_img_pixel(out, x, y), bt_img_pixel(src, x / k, y / k), c);
    return out;
}

bt_img_t *bt_img_grid(const bt_img_t *const *tiles, int rows, int cols, const bt_img_grid_opts_t *opts)
{
    bt_img_grid_opts_t def = BT_IMG_GRID_OPTS_INIT;
    const bt_img_grid_opts_t *o = opts ? opts : &def;
    int m = o->margin, s = o->font_scale < 1 ? 1 : o->font_scale;
    if (rows < 1 || cols < 1 || rows > BT_IMG_MAX_SIDE || cols > BT_IMG_MAX_SIDE || m < 0 || m > BT_IMG_MAX_SIDE) {
        BT_ERROR("image grid: %d x %d tiles with margin %d is not a valid layout", rows, cols, m);
        return NULL;
    }
    const bt_img_t *first = NULL;
    for (int i = 0; i < rows * cols && !first; i++)
        first = tiles[i];
    if (!first) {
        BT_ERROR("image grid: all %d tiles are empty", rows * cols);
        return NULL;
    }
    int tw = first->width, th = first->height;
    for (int i = 0; i < rows * cols; i++)
        if (tiles[i] && (tiles[i]->width != tw || tiles[i]->height != th)) {
            BT_ERROR("image grid: tile (%d, %d) is %dx%d, tile (0, 0) is %dx%d; all tiles must have the same size",
                     i / cols, i % cols, tiles[i]->width, tiles[i]->height, tw, th);
            return NULL;
        }
    int k = o->min_tile > tw ? (o->min_tile + tw - 1) / tw : 1; /* small tiles drawn k x k per pixel */
    tw *= k;
    th *= k;
    int line = BT_FONT_LINE * s;
    char *buf = bt_malloc(S_LABEL_MAX);
    if (!buf) return NULL;

    /* row label column: as wide as the widest label, at most one tile */
    int label_w = 0, label_col = 0;
    if (o->row_labels) {
        for (int r = 0; r < rows; r++)
            if (o->row_labels[r]) {
                int w = bt_img_text_width(o->row_labels[r], s);
                label_w = w > label_w ? w : label_w;
            }
        int cap = tw > 20 * BT_FONT_ADVANCE * s ? tw : 20 * BT_FONT_ADVANCE * s;
        if (label_w > cap) label_w = cap;
        if (label_w > 0) label_col = label_w + m;
    }
    /* column labels: wrapped to the tile width, up to three lines */
    int col_lines = 0;
    if (o->col_labels)
        for (int c = 0; c < cols; c++)
            if (o->col_labels[c] && *o->col_labels[c]) {
                int n = bt_img_text_wrap(o->col_labels[c], tw, s, 3, buf, S_LABEL_MAX);
                col_lines = n > col_lines ? n : col_lines;
            }
    int col_h = col_lines ? col_lines * line + m / 2 : 0;

    long long W = 2LL * m + label_col + (long long)cols * tw + (long long)(cols - 1) * m;
    int title_lines = 0;
    if (o->title && *o->title && W - 2 * m > 0)
        title_lines = bt_img_text_wrap(o->title, (int)(W - 2 * m), s, 2, buf, S_LABEL_MAX);
    int title_h = title_lines ? title_lines * line + m : 0;
    long long H = 2LL * m + title_h + col_h + (long long)rows * th + (long long)(rows - 1) * m;
    if (W > BT_IMG_MAX_SIDE || H > BT_IMG_MAX_SIDE) {
        BT_ERROR("image grid: %d x %d tiles of %dx%d make a %lldx%lld sheet (max %d per side)", rows, cols, tw, th, W,
                 H, BT_IMG_MAX_SIDE);
        free(buf);
        return NULL;
    }
    bt_img_t *out = bt_img_new((int)W, (int)H, 3);
    if (!out) {
        free(buf);
        return NULL;
    }
    bt_img_fill(out, o->background);

    int y = m;
    if (title_lines) {
        bt_img_text_wrap(o->title, (int)(W - 2 * m), s, 2, buf, S_LABEL_MAX);
        for (char *ln = buf, *next; ln; ln = next) {
            next = strchr(ln, '\n');
            if (next) *next++ = '\0';
            bt_img_draw_text(out, (int)(W - bt_img_text_width(ln, s)) / 2, y, ln, s, o->foreground);
            y += line;
        }
        y += m;
    }
    int x0 = m + label_col;
    if (col_h)
        for (int c = 0; c < cols; c++) {
            if (!o->col_labels[c] || !*o->col_labels[c]) continue;
            int n = bt_img_text_wrap(o->col_labels[c], tw, s, 3, buf, S_LABEL_MAX);
            int ly = y + (col_lines - n) * line, cx = x0 + c * (tw + m); /* sits on the tiles */
            for (char *ln = buf, *next; ln; ln = next) {
                next = strchr(ln, '\n');
                if (next) *next++ = '\0';
                bt_img_draw_text(out, cx + (tw - bt_img_text_width(ln, s)) / 2, ly, ln, s, o->foreground);
                ly += line;
            }
        }
    y += col_h;
    for (int r = 0; r < rows; r++) {
        int ty = y + r * (th + m);
        if (label_col && o->row_labels[r]) {
            int max_lines = th / line < 1 ? 1 : th / line;
            int n = bt_img_text_wrap(o->row_labels[r], label_w, s, max_lines, buf, S_LABEL_MAX);
            int ly = ty + (th - n * line) / 2;
            bt_img_draw_text(out, m, ly < ty ? ty : ly, buf, s, o->foreground);
        }
        for (int c = 0; c < cols; c++) {
            const bt_img_t *t = tiles[r * cols + c];
            if (!t) continue;
            if (k == 1) {
                bt_img_paste(out, t, x0 + c * (tw + m), ty);
                continue;
            }
            bt_img_t *big = s_upscale(t, k);
            if (!big) {
                bt_img_destroy(&out);
                break;
            }
            bt_img_paste(out, big, x0 + c * (tw + m), ty);
            bt_img_destroy(&big);
        }
        if (!out) break;
    }
    free(buf);
    return out;
}
