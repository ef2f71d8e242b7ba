/*
 * jpeg.c — JPEG decoding with libjpeg-turbo behind a longjmp error manager, and
 * a small bounds-checked EXIF reader for the Orientation tag.
 *
 * libjpeg's default error handler prints and calls exit(); ours formats the
 * message and longjmps back to the reader. Warnings are not errors to libjpeg,
 * but one of them is to us: JWRN_JPEG_EOF means the file ended and libjpeg is
 * inventing the rest of the image, so it is reported as truncation. Other
 * corrupt-data warnings (stray bytes before a marker, ...) decode the way PIL
 * decodes them and are noted in the log once. The decoder state lives on the
 * heap, set up before setjmp, so nothing is left indeterminate by the jump.
 */
#include "storage/jpeg.h"

#include <errno.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jerror.h>
#include <jpeglib.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/status.h"

#define S_MAX_SCANS 1000 /* a progressive JPEG needs ~10; thousands are a denial of service */

/* ------------------------------------------------------------------- EXIF */

static uint32_t s_rd16(const uint8_t *p, bool le)
{
    return le ? p[0] | p[1] << 8 : p[0] << 8 | p[1];
}

static uint32_t s_rd32(const uint8_t *p, bool le)
{
    return le ? (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24
              : (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

int st_exif_orientation(const uint8_t *d, size_t len)
{
    if (!d) return 1;
    if (len >= 6 && !memcmp(d, "Exif\0\0", 6)) d += 6, len -= 6;
    if (len < 8) return 1;
    bool le;
    if (d[0] == 'I' && d[1] == 'I')
        le = true;
    else if (d[0] == 'M' && d[1] == 'M')
        le = false;
    else
        return 1;
    if (s_rd16(d + 2, le) != 42) return 1;
    uint32_t ifd = s_rd32(d + 4, le); /* offsets are from the start of the TIFF header */
    if (ifd < 8 || ifd > len - 2) return 1;
    uint32_t n = s_rd16(d + ifd, le);
    size_t room = (len - ifd - 2) / 12; /* entries that really fit: a count that lies is cut */
    if (n > room) n = (uint32_t)room;
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *e = d + ifd + 2 + (size_t)i * 12;
        if (s_rd16(e, le) != 0x0112) continue;
        uint32_t type = s_rd16(e + 2, le), count = s_rd32(e + 4, le), v;
        if (count < 1) return 1;
        /* a value of 4 bytes or less sits in the entry itself */
        switch (type) {
        case 1: v = e[8]; break;                               /* BYTE */
        case 3: v = s_rd16(e + 8, le); break;                  /* SHORT: what the standard says */
        case 4: v = count == 1 ? s_rd32(e + 8, le) : 0; break; /* LONG, seen in the wild */
        default: v = 0; break;
        }
        return v >= 1 && v <= 8 ? (int)v : 1;
    }
    return 1;
}

/* ------------------------------------------------------------------ decoding */

typedef struct {
    struct jpeg_error_mgr pub; /* first: libjpeg sees only this */
    jmp_buf jump;
    bool truncated;
    char msg[JMSG_LENGTH_MAX];  /* the error */
    char warn[JMSG_LENGTH_MAX]; /* the first corrupt-data warning */
    int nwarn;
} s_err_t;

typedef struct {
    struct jpeg_decompress_struct cinfo;
    s_err_t err;
    struct jpeg_progress_mgr progress;
    FILE *f;
    bt_img_t *img;
    uint8_t *row; /* one CMYK row */
} s_ctx_t;

static void s_error_exit(j_common_ptr cinfo)
{
    s_err_t *e = (s_err_t *)cinfo->err;
    cinfo->err->format_message(cinfo, e->msg);
    longjmp(e->jump, 1);
}

static void s_emit_message(j_common_ptr cinfo, int level)
{
    s_err_t *e = (s_err_t *)cinfo->err;
    if (level >= 0) return; /* trace output */
    if (cinfo->err->msg_code == JWRN_JPEG_EOF) {
        e->truncated = true;
        cinfo->err->format_message(cinfo, e->msg);
        longjmp(e->jump, 1);
    }
    if (e->nwarn++ == 0) cinfo->err->format_message(cinfo, e->warn);
}

static void s_output_message(j_common_ptr cinfo)
{
    (void)cinfo;
}

static void s_progress(j_common_ptr cinfo)
{
    if (!cinfo->is_decompressor) return;
    j_decompress_ptr d = (j_decompress_ptr)cinfo;
    if (d->input_scan_number > S_MAX_SCANS) {
        s_err_t *e = (s_err_t *)cinfo->err;
        snprintf(e->msg, sizeof e->msg, "more than %d progressive scans", S_MAX_SCANS);
        longjmp(e->jump, 1);
    }
}

/* PIL's CMYK;I unpacking followed by its cmyk2rgb: stored values are inverted
 * ink, so K' = stored K and C = 255 - stored C. */
static void s_cmyk_to_rgb(const uint8_t *in, uint8_t *out, int n)
{
    for (int i = 0; i < n; i++, in += 4, out += 3) {
        int nk = in[3];
        for (int b = 0; b < 3; b++) {
            int t = (255 - in[b]) * nk + 128;
            int v = nk - (((t >> 8) + t) >> 8);
            out[b] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
        }
    }
}

static int s_orientation(j_decompress_ptr cinfo)
{
    for (jpeg_saved_marker_ptr m = cinfo->marker_list; m; m = m->next)
        if (m->marker == JPEG_APP0 + 1 && m->data_length >= 6 && !memcmp(m->data, "Exif\0\0", 6))
            return st_exif_orientation(m->data, m->data_length); /* the first EXIF block, as PIL */
    return 1;
}

int st_jpeg_read_ex(const char *path, bt_img_t **out, bool apply_orientation, int *orientation)
{
    *out = NULL;
    if (orientation) *orientation = 1;
    s_ctx_t *c = bt_calloc(1, sizeof *c);
    if (!c) return BT_ENOMEM;
    volatile int rc = BT_OK; /* assigned on both sides of setjmp */
    c->f = fopen(path, "rb");
    if (!c->f) {
        rc = errno == ENOENT ? BT_ENOTFOUND : BT_EIO;
        BT_ERROR("%s: cannot open: %s", path, strerror(errno));
        goto out_free_ctx;
    }
    j_decompress_ptr cinfo = &c->cinfo;
    cinfo->err = jpeg_std_error(&c->err.pub);
    c->err.pub.error_exit = s_error_exit;
    c->err.pub.emit_message = s_emit_message;
    c->err.pub.output_message = s_output_message;
    if (setjmp(c->err.jump)) {
        if (c->err.truncated) {
            rc = BT_EFORMAT;
            BT_ERROR("%s: truncated JPEG (the file ends before the image does)", path);
        } else if (ferror(c->f)) {
            rc = BT_EIO;
            BT_ERROR("%s: read error", path);
        } else {
            rc = BT_EFORMAT;
            BT_ERROR("%s: invalid JPEG: %s", path, c->err.msg);
        }
        goto out_destroy;
    }
    jpeg_create_decompress(cinfo);
    c->progress.progress_monitor = s_progress;
    cinfo->progress = &c->progress;
    jpeg_stdio_src(cinfo, c->f);
    jpeg_save_markers(cinfo, JPEG_APP0 + 1, 0xFFFF);
    jpeg_read_header(cinfo, TRUE);

    if (cinfo->image_width > BT_IMG_MAX_SIDE || cinfo->image_height > BT_IMG_MAX_SIDE ||
        (int64_t)cinfo->image_width * (int64_t)cinfo->image_height > BT_IMG_MAX_PIXELS) {
        rc = BT_EUNSUPPORTED;
        BT_ERROR("%s: JPEG is %ux%u pixels, more than booth accepts (%d per side, %lld in all); nothing was "
                 "decoded",
                 path, cinfo->image_width, cinfo->image_height, BT_IMG_MAX_SIDE, (long long)BT_IMG_MAX_PIXELS);
        goto out_destroy;
    }
    bool cmyk = cinfo->jpeg_color_space == JCS_CMYK || cinfo->jpeg_color_space == JCS_YCCK;
    cinfo->out_color_space = cmyk ? JCS_CMYK : JCS_RGB; /* libjpeg-turbo expands gray to RGB itself */
    jpeg_start_decompress(cinfo);
    int want = cmyk ? 4 : 3;
    if (cinfo->output_components != want) {
        rc = BT_EUNSUPPORTED;
        BT_ERROR("%s: JPEG decodes to %d components, expected %d", path, cinfo->output_components, want);
        goto out_destroy;
    }
    c->img = bt_img_new((int)cinfo->output_width, (int)cinfo->output_height, 3);
    if (!c->img) {
        rc = BT_ENOMEM;
        goto out_destroy;
    }
    if (cmyk && !(c->row = bt_malloc((size_t)cinfo->output_width * 4))) {
        rc = BT_ENOMEM;
        BT_ERROR("%s: out of memory for a CMYK row", path);
        goto out_destroy;
    }
    while (cinfo->output_scanline < cinfo->output_height) {
        uint8_t *dst = bt_img_pixel(c->img, 0, (int)cinfo->output_scanline);
        JSAMPROW row = cmyk ? c->row : dst;
        if (jpeg_read_scanlines(cinfo, &row, 1) != 1) {
            rc = BT_EFORMAT;
            BT_ERROR("%s: invalid JPEG: no data for row %u", path, cinfo->output_scanline);
            goto out_destroy;
        }
        if (cmyk) s_cmyk_to_rgb(c->row, dst, (int)cinfo->output_width);
    }
    /* Every pixel is in; what follows the last scan (EOI, trailing junk, or
     * nothing) does not change the image, so it is not read. */
    if (c->err.nwarn)
        BT_WARN("%s: JPEG has %d corrupt-data warning(s), decoded anyway: %s", path, c->err.nwarn, c->err.warn);
    int orient = s_orientation(cinfo);
    if (orientation) *orientation = orient;
    if (apply_orientation && orient != 1) {
        bt_img_t *t = bt_img_apply_exif_orientation(c->img, orient);
        if (!t) {
            rc = BT_ENOMEM;
            goto out_destroy;
        }
        bt_img_destroy(&c->img);
        c->img = t;
    }
    *out = c->img;
    c->img = NULL;
out_destroy:
    jpeg_destroy_decompress(cinfo);
    bt_img_destroy(&c->img);
    free(c->row);
    fclose(c->f);
out_free_ctx:
    free(c);
    return rc;
}

int st_jpeg_read(const char *path, bt_img_t **out)
{
    return st_jpeg_read_ex(path, out, true, NULL);
}
