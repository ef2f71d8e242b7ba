/*
 * png.c — PNG read and write through libpng, with its errors turned into one
 * log line and a status.
 *
 * libpng reports errors by calling our handler, which records the message and
 * longjmps back to the setjmp in the reading or writing function. Everything
 * that must survive that jump (the open file, the image, row pointers, the text
 * block) lives in a heap context whose pointer is set before setjmp and never
 * changes afterwards, so no local variable is left indeterminate by the jump.
 * Warnings (bad sRGB profiles and the like) go to the debug log only.
 */
#include "storage/png.h"

#include <errno.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/fileio.h"
#include "common/log.h"
#include "common/status.h"
#include "storage/jpeg.h"

static const uint8_t s_signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

typedef struct {
    const char *path;
    FILE *f;             /* reading: the file; writing: af.f */
    bt_atomic_file_t af; /* writing only */
    bool eof;            /* the read callback ran out of file */
    int write_errno;     /* the write callback's failure, 0 if none */
    char msg[256];       /* libpng's error message */
    bt_img_t *img;       /* reading: the result until it is handed out */
    png_bytep *rows;     /* row pointers into img */
    st_png_text_t *text; /* reading: the text block until it is handed out */
    png_text *ptext;     /* writing: the text chunks */
} s_ctx_t;

static void s_error(png_structp png, png_const_charp msg)
{
    s_ctx_t *c = png_get_error_ptr(png);
    snprintf(c->msg, sizeof c->msg, "%s", msg);
    png_longjmp(png, 1);
}

static void s_warning(png_structp png, png_const_charp msg)
{
    s_ctx_t *c = png_get_error_ptr(png);
    BT_DEBUG("%s: libpng warning: %s", c->path, msg);
}

static void s_read_data(png_structp png, png_bytep data, size_t n)
{
    s_ctx_t *c = png_get_io_ptr(png);
    if (fread(data, 1, n, c->f) != n) {
        c->eof = !ferror(c->f);
        png_error(png, c->eof ? "file ends early" : "read error");
    }
}

static void s_write_data(png_structp png, png_bytep data, size_t n)
{
    s_ctx_t *c = png_get_io_ptr(png);
    if (fwrite(data, 1, n, c->f) != n) {
        c->write_errno = errno ? errno : EIO;
        png_error(png, "write failed");
    }
}

static void s_flush(png_structp png)
{
    (void)png;
}

/* ------------------------------------------------------------------ reading */

/* Bytes of s as UTF-8: Latin-1 (tEXt, zTXt) doubles bytes >= 0x80, UTF-8 (iTXt)
 * is kept. dst NULL: only count. */
static size_t s_to_utf8(const char *s, bool latin1, char *dst)
{
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (latin1 && *p >= 0x80) {
            if (dst) dst[n] = (char)(0xC0 | (*p >> 6)), dst[n + 1] = (char)(0x80 | (*p & 0x3F));
            n += 2;
        } else {
            if (dst) dst[n] = (char)*p;
            n++;
        }
    }
    if (dst) dst[n] = '\0';
    return n + 1;
}

/* All text chunks as one block: the array, then the strings it points to. */
static st_png_text_t *s_collect_text(png_structp png, png_infop info, int *ntext)
{
    png_textp tp = NULL;
    int n = png_get_text(png, info, &tp, NULL);
    size_t size = (size_t)(n > 0 ? n : 1) * sizeof(st_png_text_t);
    for (int i = 0; i < n; i++) {
        bool latin1 = tp[i].compression <= PNG_TEXT_COMPRESSION_zTXt;
        size += s_to_utf8(tp[i].key, true, NULL) + s_to_utf8(tp[i].text ? tp[i].text : "", latin1, NULL);
    }
    st_png_text_t *t = bt_malloc(size);
    if (!t) return NULL;
    char *p = (char *)(t + (n > 0 ? n : 1));
    for (int i = 0; i < n; i++) {
        bool latin1 = tp[i].compression <= PNG_TEXT_COMPRESSION_zTXt;
        t[i].key = p;
        p += s_to_utf8(tp[i].key, true, p);
        t[i].value = p;
        p += s_to_utf8(tp[i].text ? tp[i].text : "", latin1, p);
    }
    *ntext = n;
    return t;
}

int st_png_read_with_text(const char *path, bt_img_t **out, st_png_text_t **text, int *ntext)
{
    *out = NULL;
    if (text) *text = NULL;
    if (ntext) *ntext = 0;
    s_ctx_t *c = bt_calloc(1, sizeof *c);
    if (!c) return BT_ENOMEM;
    c->path = path;
    volatile int rc = BT_OK; /* assigned on both sides of setjmp */
    png_structp png = NULL;
    png_infop info = NULL;
    c->f = fopen(path, "rb");
    if (!c->f) {
        rc = errno == ENOENT ? BT_ENOTFOUND : BT_EIO;
        BT_ERROR("%s: cannot open: %s", path, strerror(errno));
        goto out_free_ctx;
    }
    uint8_t sig[8];
    size_t got = fread(sig, 1, sizeof sig, c->f);
    if (got < sizeof sig || memcmp(sig, s_signature, sizeof sig) != 0) {
        rc = BT_EFORMAT;
        if (got < sizeof sig && got == 0)
            BT_ERROR("%s: not a PNG file (empty)", path);
        else if (got < sizeof sig && memcmp(sig, s_signature, got) == 0)
            BT_ERROR("%s: truncated PNG (file ends inside the signature)", path);
        else
            BT_ERROR("%s: not a PNG file (bad signature)", path);
        goto out_close;
    }
    png = png_create_read_struct(PNG_LIBPNG_VER_STRING, c, s_error, s_warning);
    info = png ? png_create_info_struct(png) : NULL;
    if (!info) {
        rc = BT_ENOMEM;
        BT_ERROR("%s: out of memory for the PNG decoder", path);
        goto out_destroy;
    }
    if (setjmp(png_jmpbuf(png))) {
        rc = BT_EFORMAT;
        if (c->eof)
            BT_ERROR("%s: truncated PNG (the file ends before the image does)", path);
        else if (!strcmp(c->msg, "read error"))
            rc = BT_EIO, BT_ERROR("%s: read error", path);
        else
            BT_ERROR("%s: corrupt PNG: %s", path, c->msg);
        goto out_destroy;
    }
    png_set_read_fn(png, c, s_read_data);
    png_set_sig_bytes(png, (int)sizeof sig);
    png_read_info(png, info);

    png_uint_32 w, h;
    int depth, color, interlace;
    png_get_IHDR(png, info, &w, &h, &depth, &color, &interlace, NULL, NULL);
    if (w > BT_IMG_MAX_SIDE || h > BT_IMG_MAX_SIDE || (int64_t)w * (int64_t)h > BT_IMG_MAX_PIXELS) {
        rc = BT_EUNSUPPORTED;
        BT_ERROR("%s: PNG is %lux%lu pixels, more than booth accepts (%d per side, %lld in all); nothing was "
                 "decoded",
                 path, (unsigned long)w, (unsigned long)h, BT_IMG_MAX_SIDE, (long long)BT_IMG_MAX_PIXELS);
        goto out_destroy;
    }
    if (depth == 16) png_set_strip_16(png); /* the high byte, as PIL */
    if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    if (png_get_valid(png, info, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(png);
    if (color == PNG_COLOR_TYPE_GRAY || color == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_gray_to_rgb(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);

    int ch = png_get_channels(png, info);
    if ((ch != 3 && ch != 4) || png_get_rowbytes(png, info) != (size_t)w * (size_t)ch) {
        rc = BT_EINTERNAL;
        BT_ERROR("%s: libpng produced %d channels, %zu bytes per row for a %lu-pixel row", path, ch,
                 (size_t)png_get_rowbytes(png, info), (unsigned long)w);
        goto out_destroy;
    }
    c->img = bt_img_new((int)w, (int)h, ch);
    c->rows = bt_malloc((size_t)h * sizeof *c->rows);
    if (!c->img || !c->rows) {
        rc = BT_ENOMEM;
        if (c->img) BT_ERROR("%s: out of memory for %lu row pointers", path, (unsigned long)h);
        goto out_destroy;
    }
    for (png_uint_32 y = 0; y < h; y++)
        c->rows[y] = bt_img_pixel(c->img, 0, (int)y);
    png_read_image(png, c->rows);
    png_read_end(png, info); /* text and eXIf after the image land in info too */

    png_bytep exif = NULL;
    png_uint_32 exif_len = 0;
    if (png_get_eXIf_1(png, info, &exif_len, &exif) && exif) {
        int orientation = st_exif_orientation(exif, exif_len);
        if (orientation != 1) {
            bt_img_t *t = bt_img_apply_exif_orientation(c->img, orientation);
            if (!t) {
                rc = BT_ENOMEM;
                goto out_destroy;
            }
            bt_img_destroy(&c->img);
            c->img = t;
        }
    }
    if (text) {
        int n = 0;
        c->text = s_collect_text(png, info, &n);
        if (!c->text) {
            rc = BT_ENOMEM;
            BT_ERROR("%s: out of memory for the text chunks", path);
            goto out_destroy;
        }
        *text = c->text;
        c->text = NULL;
        if (ntext) *ntext = n;
    }
    *out = c->img;
    c->img = NULL;
out_destroy:
    png_destroy_read_struct(&png, &info, NULL);
    bt_img_destroy(&c->img);
    free(c->rows);
    free(c->text);
out_close:
    fclose(c->f);
out_free_ctx:
    free(c);
    return rc;
}

int st_png_read(const char *path, bt_img_t **out)
{
    return st_png_read_with_text(path, out, NULL, NULL);
}

void st_png_text_free(st_png_text_t **text)
{
    if (!text) return;
    free(*text);
    *text = NULL;
}

const char *st_png_text_get(const st_png_text_t *text, int ntext, const char *key)
{
    for (int i = 0; text && i < ntext; i++)
        if (!strcmp(text[i].key, key)) return text[i].value;
    return NULL;
}

/* ------------------------------------------------------------------ writing */

static bool s_key_ok(const char *k)
{
    size_t n = strlen(k);
    if (n < 1 || n > 79 || k[0] == ' ' || k[n - 1] == ' ') return false;
    for (size_t i = 0; i < n; i++)
        if (k[i] < 32 || k[i] > 126 || (k[i] == ' ' && k[i + 1] == ' ')) return false;
    return true;
}

static bool s_ascii(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s >= 0x80) return false;
    return true;
}

static bool s_utf8_ok(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        int n = *p < 0x80 ? 0 : (*p & 0xE0) == 0xC0 ? 1 : (*p & 0xF0) == 0xE0 ? 2 : (*p & 0xF8) == 0xF0 ? 3 : -1;
        if (n < 0 || (n == 1 && *p < 0xC2)) return false;
        p++;
        for (int i = 0; i < n; i++, p++)
            if ((*p & 0xC0) != 0x80) return false;
    }
    return true;
}

int st_png_write(const char *path, const bt_img_t *img, const st_png_text_t *text, int ntext)
{
    if (!img || !img->data || !bt_img_size_ok(img->width, img->height, img->channels)) {
        BT_ERROR("%s: cannot write an invalid image as PNG", path);
        return BT_EINVAL;
    }
    if (ntext < 0 || (ntext > 0 && !text)) {
        BT_ERROR("%s: %d text entries given without an array", path, ntext);
        return BT_EINVAL;
    }
    for (int i = 0; i < ntext; i++) {
        if (!text[i].key || !s_key_ok(text[i].key)) {
            BT_ERROR("%s: PNG text key '%s' must be 1-79 printable ASCII characters without leading, trailing or "
                     "double spaces",
                     path, text[i].key ? text[i].key : "(null)");
            return BT_EINVAL;
        }
        if (text[i].value && !s_utf8_ok(text[i].value)) {
            BT_ERROR("%s: PNG text '%s' is not valid UTF-8", path, text[i].key);
            return BT_EINVAL;
        }
    }
    s_ctx_t *c = bt_calloc(1, sizeof *c);
    if (!c) return BT_ENOMEM;
    c->path = path;
    volatile int rc = BT_OK; /* assigned on both sides of setjmp */
    png_structp png = NULL;
    png_infop info = NULL;
    c->rows = bt_malloc((size_t)img->height * sizeof *c->rows);
    c->ptext = bt_calloc((size_t)(ntext > 0 ? ntext : 1), sizeof *c->ptext);
    if (!c->rows || !c->ptext) {
        rc = BT_ENOMEM;
        BT_ERROR("%s: out of memory preparing the PNG", path);
        goto out_free_ctx;
    }
    for (int y = 0; y < img->height; y++)
        c->rows[y] = bt_img_pixel(img, 0, y);
    for (int i = 0; i < ntext; i++) {
        /* libpng does not modify the strings; its struct just is not const */
        c->ptext[i].key = (char *)text[i].key;
        c->ptext[i].text = (char *)(text[i].value ? text[i].value : "");
        c->ptext[i].compression = s_ascii(c->ptext[i].text) ? PNG_TEXT_COMPRESSION_NONE : PNG_ITXT_COMPRESSION_NONE;
        c->ptext[i].lang = (char *)"";
        c->ptext[i].lang_key = (char *)"";
    }
    if ((rc = bt_atomic_open(&c->af, path)) != 0) goto out_free_ctx;
    c->f = c->af.f;

    png = png_create_write_struct(PNG_LIBPNG_VER_STRING, c, s_error, s_warning);
    info = png ? png_create_info_struct(png) : NULL;
    if (!info) {
        rc = BT_ENOMEM;
        BT_ERROR("%s: out of memory for the PNG encoder", path);
        goto out_abort;
    }
    if (setjmp(png_jmpbuf(png))) {
        if (c->write_errno) {
            rc = BT_EIO;
            BT_ERROR("%s: write failed: %s", path, strerror(c->write_errno));
        } else {
            rc = BT_EINTERNAL;
            BT_ERROR("%s: libpng could not encode the image: %s", path, c->msg);
        }
        goto out_abort;
    }
    png_set_write_fn(png, c, s_write_data, s_flush);
    int color = img->channels == 1   ? PNG_COLOR_TYPE_GRAY
                : img->channels == 3 ? PNG_COLOR_TYPE_RGB
                                     : PNG_COLOR_TYPE_RGBA;
    png_set_IHDR(png, info, (png_uint_32)img->width, (png_uint_32)img->height, 8, color, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (ntext > 0) png_set_text(png, info, c->ptext, ntext);
    png_write_info(png, info);
    png_write_image(png, c->rows);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    rc = bt_atomic_commit(&c->af);
    goto out_free_ctx;
out_abort:
    png_destroy_write_struct(&png, &info);
    bt_atomic_abort(&c->af);
out_free_ctx:
    free(c->rows);
    free(c->ptext);
    free(c);
    return rc;
}
