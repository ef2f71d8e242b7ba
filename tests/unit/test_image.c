/*
 * test_image.c — image I/O and pixel processing against PIL.
 *
 * tests/fixtures/images/ (scripts/gen_image_fixtures.py) holds PNG and JPEG
 * files of every kind and reference.safetensors with what PIL 9.4 decoded,
 * resized and cropped from them. The bars:
 *   PNG decode      exactly PIL's pixels (lossless, so no excuse);
 *   JPEG decode     within 2 per channel (a different libjpeg build may round
 *                   its IDCT or upsampling differently; run with --no-fork to
 *                   see the measured figures, which are 0 against Debian's PIL);
 *   resize, crop    within 1 of PIL (measured: identical);
 *   float I/O       bit-identical to torchvision's and diffusers' float32 math.
 * EXIF orientation is checked three ways: against PIL, against the stored
 * pixels transformed by hand, and against hand-written 3x2 expectations.
 * Broken inputs must fail with exactly one error line that names the file,
 * return no image and leave no output file.
 */
#include <dirent.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include "common/fileio.h"
#include "common/image.h"
#include "common/log.h"
#include "common/plot.h"
#include "common/status.h"
#include "storage/imageio.h"
#include "storage/jpeg.h"
#include "storage/png.h"
#include "testutil.h"

#define IMG(name) s_path(name)

static const char *s_path(const char *name)
{
    static char buf[8][512];
    static int k;
    char *p = buf[k++ % 8];
    char rel[256];
    snprintf(rel, sizeof rel, "images/%s", name);
    snprintf(p, 512, "%s", tu_fixture_path(rel));
    return p;
}

/* Max |a - b| over all samples, -1 on a shape mismatch; *ndiff counts samples
 * that differ at all. */
static int s_diff(const bt_img_t *img, const st_tensor_t *t, long *ndiff)
{
    *ndiff = 0;
    if (!img || !t || t->dtype != ST_U8 || t->ndim != 3 || t->shape[0] != img->height || t->shape[1] != img->width ||
        t->shape[2] != img->channels)
        return -1;
    const uint8_t *r = t->data;
    int worst = 0;
    size_t n = (size_t)img->width * img->height * img->channels;
    for (size_t i = 0; i < n; i++) {
        int d = abs((int)img->data[i] - (int)r[i]);
        if (d) (*ndiff)++;
        if (d > worst) worst = d;
    }
    return worst;
}

/* Compares img with reference tensor `name`; fails above tol. Returns the max diff. */
static int s_check_ref(const st_file_t *refs, const char *name, const bt_img_t *img, int tol)
{
    const st_tensor_t *t = st_find(refs, name);
    CHECKF(t != NULL, "reference %s missing", name);
    if (!t) return -1;
    long ndiff;
    int d = s_diff(img, t, &ndiff);
    char shape[64];
    CHECKF(d >= 0, "%s: got %dx%dx%d, PIL %s", name, img ? img->height : 0, img ? img->width : 0,
           img ? img->channels : 0, st_shape_str(t->ndim, t->shape, shape, sizeof shape));
    CHECKF(d <= tol, "%s: max diff %d (> %d), %ld samples differ", name, d, tol, ndiff);
    printf("    %-36s max diff %d, %ld of %lld samples differ\n", name, d, ndiff, (long long)st_numel(t));
    return d;
}

static bool s_same(const bt_img_t *a, const bt_img_t *b)
{
    return a && b && a->width == b->width && a->height == b->height && a->channels == b->channels &&
           !memcmp(a->data, b->data, (size_t)a->width * a->height * a->channels);
}

/* Error lines seen by the log sink. */
typedef struct {
    int errors;
    char last[1024];
} s_errlog_t;

static void s_sink(bt_log_level_t level, const char *msg, void *user)
{
    s_errlog_t *e = user;
    if (level == BT_LOG_ERROR) {
        e->errors++;
        snprintf(e->last, sizeof e->last, "%s", msg);
    }
}

static int s_count_files(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

/* ------------------------------------------------------------------ decoding */

TEST(image_png_decode_matches_pil)
{
    st_file_t *refs = tu_fixture("images/reference.safetensors");
    REQUIRE(refs);
    static const char *const names[] = {"rgb",   "rgba",       "gray",     "gray_alpha",   "gray16",
                                        "rgb16", "rgba16",     "palette",  "palette_trns", "gray1",
                                        "gray4", "interlaced", "rgb_trns", "exif6",        "text"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char file[64], ref[64];
        snprintf(file, sizeof file, "%s.png", names[i]);
        snprintf(ref, sizeof ref, "png.%s", names[i]);
        bt_img_t *img = NULL;
        int rc = st_png_read(IMG(file), &img);
        CHECKF(rc == 0, "%s: %s", file, bt_log_last_error());
        if (rc == 0) s_check_ref(refs, ref, img, 0);
        /* the generic loader takes the same path */
        bt_img_t *img2 = NULL;
        CHECK(st_image_load(IMG(file), &img2) == 0 && s_same(img, img2));
        bt_img_destroy(&img);
        bt_img_destroy(&img2);
    }
    st_close(&refs);
}

TEST(image_png_text_chunks)
{
    bt_img_t *img = NULL;
    st_png_text_t *text = NULL;
    int n = 0;
    REQUIRE(st_png_read_with_text(IMG("text.png"), &img, &text, &n) == 0);
    CHECK_INT_EQ(n, 4);
    const char *p = st_png_text_get(text, n, "parameters");
    CHECK(p && !strcmp(p, "a photo of sks dog\nSteps: 30, Sampler: DDIM"));
    const char *c = st_png_text_get(text, n, "comment"); /* zTXt */
    CHECK(c && strlen(c) == 7 * 20 && !strncmp(c, "zipped zipped ", 14));
    const char *t = st_png_text_get(text, n, "title"); /* iTXt, UTF-8 */
    CHECK(t && !strcmp(t, "Caf\xc3\xa9 \xe2\x98\x95"));
    const char *l = st_png_text_get(text, n, "latin"); /* tEXt in Latin-1, returned as UTF-8 */
    CHECK(l && !strcmp(l, "na\xc3\xafve"));
    CHECK(st_png_text_get(text, n, "absent") == NULL);
    st_png_text_free(&text);
    CHECK(text == NULL);
    st_png_text_free(&text);
    bt_img_destroy(&img);
}

TEST(image_jpeg_decode_matches_pil)
{
    st_file_t *refs = tu_fixture("images/reference.safetensors");
    REQUIRE(refs);
    static const char *const names[] = {"photo", "photo444", "progressive", "gray", "cmyk", "exif_two_blocks"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char file[64], ref[64];
        snprintf(file, sizeof file, "%s.jpg", names[i]);
        snprintf(ref, sizeof ref, "jpeg.%s", names[i]);
        bt_img_t *img = NULL;
        int rc = st_jpeg_read(IMG(file), &img);
        CHECKF(rc == 0, "%s: %s", file, bt_log_last_error());
        if (rc == 0) s_check_ref(refs, ref, img, 2);
        bt_img_destroy(&img);
    }
    st_close(&refs);
}

/* A 3x2 image with a distinct value per pixel, and where each pixel must land
 * for each orientation (written out by hand from the TIFF definition: the
 * stored row 0 / column 0 is the visual top/left, right/top, ...). */
TEST(image_exif_orientation_by_hand)
{
    bt_img_t *src = bt_img_new(3, 2, 1);
    REQUIRE(src);
    /* a b c
     * d e f */
    memcpy(src->data, "abcdef", 6);
    static const struct {
        int w, h;
        const char *px;
    } want[9] = {
        {0, 0, NULL},     {3, 2, "abcdef"}, {3, 2, "cbafed"},
        {3, 2, "fedcba"}, {3, 2, "defabc"}, {2, 3, "adbecf"}, /* 5: transpose */
        {2, 3, "daebfc"},                                     /* 6: rotate 90 clockwise */
        {2, 3, "fcebda"},                                     /* 7: transverse */
        {2, 3, "cfbead"},                                     /* 8: rotate 90 counter-clockwise */
    };
    for (int o = 1; o <= 8; o++) {
        bt_img_t *r = bt_img_apply_exif_orientation(src, o);
        REQUIRE(r);
        CHECKF(r->width == want[o].w && r->height == want[o].h && !memcmp(r->data, want[o].px, 6),
               "orientation %d: %dx%d '%.6s', want %dx%d '%s'", o, r->width, r->height, (const char *)r->data,
               want[o].w, want[o].h, want[o].px);
        bt_img_destroy(&r);
    }
    bt_img_t *same = bt_img_apply_exif_orientation(src, 9);
    CHECK(s_same(same, src));
    bt_img_destroy(&same);
    bt_img_destroy(&src);
}

TEST(image_exif_orientations_match_pil)
{
    st_file_t *refs = tu_fixture("images/reference.safetensors");
    REQUIRE(refs);
    bt_img_t *stored1 = NULL;
    REQUIRE(st_jpeg_read_ex(IMG("orient1.jpg"), &stored1, false, NULL) == 0);
    for (int o = 1; o <= 8; o++) {
        char file[32], ref[32];
        snprintf(file, sizeof file, "orient%d.jpg", o);
        snprintf(ref, sizeof ref, "jpeg.orient%d", o);
        bt_img_t *raw = NULL, *img = NULL;
        int found = 0;
        REQUIRE(st_jpeg_read_ex(IMG(file), &raw, false, &found) == 0);
        CHECKF(found == o, "%s: orientation %d read as %d", file, o, found);
        CHECKF(s_same(raw, stored1), "%s: stored pixels differ from orient1.jpg's", file);
        REQUIRE(st_jpeg_read(IMG(file), &img) == 0);
        bt_img_t *want = bt_img_apply_exif_orientation(raw, o);
        CHECKF(s_same(img, want), "%s: st_jpeg_read differs from raw + transform", file);
        s_check_ref(refs, ref, img, 2);
        bt_img_destroy(&want);
        bt_img_destroy(&raw);
        bt_img_destroy(&img);
    }
    bt_img_destroy(&stored1);
    st_close(&refs);
}

/* Hostile EXIF blocks still decode; what each yields agrees with PIL 9.4 (which
 * cannot open exif_short.jpg at all). */
TEST(image_exif_hostile_files)
{
    static const struct {
        const char *file;
        int orientation;
    } cases[] = {
        {"exif_ifd_past_end.jpg", 1}, {"exif_loop.jpg", 1},  {"exif_count_lies.jpg", 6}, {"exif_entry_cut.jpg", 1},
        {"exif_bad_value.jpg", 1},    {"exif_short.jpg", 1}, {"exif_two_blocks.jpg", 3}, /* the first EXIF block wins */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bt_img_t *img = NULL;
        int o = 0;
        int rc = st_jpeg_read_ex(IMG(cases[i].file), &img, true, &o);
        CHECKF(rc == 0, "%s: %s", cases[i].file, bt_log_last_error());
        CHECKF(o == cases[i].orientation, "%s: orientation %d, expected %d", cases[i].file, o, cases[i].orientation);
        bool swapped = cases[i].orientation >= 5;
        CHECK(img && img->width == (swapped ? 16 : 24) && img->height == (swapped ? 24 : 16));
        bt_img_destroy(&img);
    }
}

static void s_put16(uint8_t *p, unsigned v, bool le)
{
    p[le ? 0 : 1] = (uint8_t)v;
    p[le ? 1 : 0] = (uint8_t)(v >> 8);
}
static void s_put32(uint8_t *p, uint32_t v, bool le)
{
    for (int i = 0; i < 4; i++)
        p[le ? i : 3 - i] = (uint8_t)(v >> (8 * i));
}

/* TIFF header + IFD0 with one entry. */
static size_t s_tiff(uint8_t *b, bool le, uint32_t ifd, unsigned count, unsigned tag, unsigned type, uint32_t n,
                     uint32_t value)
{
    memcpy(b, le ? "II" : "MM", 2);
    s_put16(b + 2, 42, le);
    s_put32(b + 4, ifd, le);
    s_put16(b + 8, count, le);
    s_put16(b + 10, tag, le);
    s_put16(b + 12, type, le);
    s_put32(b + 14, n, le);
    memset(b + 18, 0, 4);
    if (type == 3)
        s_put16(b + 18, value, le);
    else if (type == 4)
        s_put32(b + 18, value, le);
    else
        b[18] = (uint8_t)value;
    s_put32(b + 22, 0, le);
    return 26;
}

TEST(image_exif_parser)
{
    uint8_t b[64];
    for (int le = 0; le < 2; le++)
        for (int v = 1; v <= 8; v++) {
            size_t n = s_tiff(b, le, 8, 1, 0x0112, 3, 1, (uint32_t)v);
            CHECK_INT_EQ(st_exif_orientation(b, n), v);
        }
    size_t n = s_tiff(b, true, 8, 1, 0x0112, 4, 1, 6); /* LONG */
    CHECK_INT_EQ(st_exif_orientation(b, n), 6);
    n = s_tiff(b, false, 8, 1, 0x0112, 1, 1, 3); /* BYTE */
    CHECK_INT_EQ(st_exif_orientation(b, n), 3);
    n = s_tiff(b, true, 8, 1, 0x0112, 3, 0, 6); /* count 0 */
    CHECK_INT_EQ(st_exif_orientation(b, n), 1);
    n = s_tiff(b, true, 8, 1, 0x0112, 3, 1, 0); /* value 0 */
    CHECK_INT_EQ(st_exif_orientation(b, n), 1);
    n = s_tiff(b, true, 8, 1, 0x0112, 7, 1, 6); /* UNDEFINED type */
    CHECK_INT_EQ(st_exif_orientation(b, n), 1);
    n = s_tiff(b, true, 8, 1, 0x0110, 3, 1, 6); /* another tag */
    CHECK_INT_EQ(st_exif_orientation(b, n), 1);
    /* offsets that point anywhere but inside */
    uint32_t bad[] = {0, 7, 25, 26, 27, 0x7fffffff, 0xfffffff0, 0xffffffff};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        n = s_tiff(b, true, bad[i], 1, 0x0112, 3, 1, 6);
        CHECKF(st_exif_orientation(b, n) == 1, "IFD offset %u", bad[i]);
    }
    /* every truncation of a valid block: 6 only when the entry is whole */
    uint8_t e[64];
    memcpy(e, "Exif\0\0", 6);
    n = 6 + s_tiff(e + 6, false, 8, 1, 0x0112, 3, 1, 6);
    for (size_t len = 0; len <= n; len++) {
        int want = len >= 6 + 22 ? 6 : 1;
        CHECKF(st_exif_orientation(e, len) == want, "truncated to %zu bytes", len);
    }
    CHECK_INT_EQ(st_exif_orientation(NULL, 10), 1);
    memcpy(b, "IIxx", 4);
    CHECK_INT_EQ(st_exif_orientation(b, 26), 1);
    /* random blocks behind a valid header: never out of range, never out of bounds (ASan) */
    tu_rng_t r = tu_rng(7);
    for (int it = 0; it < 20000; it++) {
        size_t len = 8 + tu_next(&r) % 56;
        uint8_t *buf = malloc(len); /* exact size so ASan sees any overread */
        for (size_t i = 0; i < len; i++)
            buf[i] = (uint8_t)tu_next(&r);
        bool le = it & 1;
        memcpy(buf, le ? "II" : "MM", 2);
        s_put16(buf + 2, 42, le);
        if (it % 3) s_put32(buf + 4, 8 + (uint32_t)(tu_next(&r) % 16), le);
        int o = st_exif_orientation(buf, len);
        CHECK(o >= 1 && o <= 8);
        free(buf);
    }
}

/* ------------------------------------------------------------- broken files */

TEST(image_bad_files_fail_cleanly)
{
    static const struct {
        const char *file;
        int (*fn)(const char *, bt_img_t **);
        const char *cause; /* must appear in the error line, with the path */
    } cases[] = {
        {"truncated.png", st_image_load, "truncated PNG"},
        {"corrupt_crc.png", st_image_load, "CRC error"},
        {"corrupt_data.png", st_image_load, "corrupt PNG"},
        {"huge.png", st_image_load, "16384"},
        {"empty.png", st_image_load, "not a PNG or JPEG image"},
        {"empty.png", st_png_read, "not a PNG file"},
        {"truncated.jpg", st_image_load, "truncated JPEG"},
        {"huge.jpg", st_image_load, "16384"},
        {"corrupt.jpg", st_image_load, "invalid JPEG: Bogus DHT index"},
        {"not_image.txt", st_image_load, "not a PNG or JPEG image"},
        {"photo.heic", st_image_load, "HEIC"},
        {"photo.jpg", st_png_read, "not a PNG file"},
        {"rgb.png", st_jpeg_read, "invalid JPEG: Not a JPEG file"},
        {"does_not_exist.png", st_image_load, "No such file"},
        {"does_not_exist.png", st_png_read, "No such file"},
        {"does_not_exist.jpg", st_jpeg_read, "No such file"},
    };
    s_errlog_t log = {0};
    bt_log_set_sink(s_sink, &log);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *path = IMG(cases[i].file);
        bt_img_t *img = (bt_img_t *)&log; /* must be reset to NULL */
        log.errors = 0;
        int rc = cases[i].fn(path, &img);
        CHECKF(rc < 0, "%s: status %d", cases[i].file, rc);
        CHECKF(img == NULL, "%s: an image came back", cases[i].file);
        CHECKF(log.errors == 1, "%s: %d error lines", cases[i].file, log.errors);
        CHECKF(strstr(bt_log_last_error(), path) != NULL, "%s: error does not name the file: %s", cases[i].file,
               bt_log_last_error());
        CHECKF(strstr(bt_log_last_error(), cases[i].cause) != NULL, "%s: error lacks '%s': %s", cases[i].file,
               cases[i].cause, bt_log_last_error());
        printf("    %-20s -> %s\n", cases[i].file, bt_log_last_error());
    }
    bt_log_set_sink(NULL, NULL);
}

/* The type comes from the bytes, not the name. */
TEST(image_load_sniffs_content)
{
    char *data = NULL;
    size_t len = 0;
    REQUIRE(bt_read_file(IMG("rgb.png"), &data, &len) == 0);
    char path[512];
    snprintf(path, sizeof path, "%s/really_a_png.jpg", tu_tmpdir());
    FILE *f = fopen(path, "wb");
    REQUIRE(f);
    fwrite(data, 1, len, f);
    fclose(f);
    free(data);
    bt_img_t *a = NULL, *b = NULL;
    REQUIRE(st_image_load(path, &a) == 0);
    REQUIRE(st_png_read(IMG("rgb.png"), &b) == 0);
    CHECK(s_same(a, b));
    bt_img_destroy(&a);
    bt_img_destroy(&b);
    /* RGBA and gray come out as RGB from the _rgb variant */
    REQUIRE(st_image_load_rgb(IMG("rgba.png"), &a) == 0);
    REQUIRE(st_png_read(IMG("rgba.png"), &b) == 0);
    CHECK(a->channels == 3 && b->channels == 4);
    bt_img_t *c = bt_img_convert(b, 3);
    CHECK(s_same(a, c));
    bt_img_destroy(&a);
    bt_img_destroy(&b);
    bt_img_destroy(&c);
}

/* -------------------------------------------------------------- PNG writing */

TEST(image_png_write_roundtrip)
{
    tu_rng_t r = tu_rng(3);
    const char *dir = tu_tmpdir();
    for (int ch = 1; ch <= 4; ch++) {
        if (ch == 2) continue;
        bt_img_t *img = bt_img_new(31, 17, ch);
        REQUIRE(img);
        for (size_t i = 0; i < (size_t)31 * 17 * ch; i++)
            img->data[i] = (uint8_t)tu_next(&r);
        char path[512];
        snprintf(path, sizeof path, "%s/out%d.png", dir, ch);
        const st_png_text_t text[] = {
            {"parameters", "a photo of sks dog, seed 42\nsteps: 30"},
            {"Prompt", "Caf\xc3\xa9 \xe2\x98\x95"}, /* non-ASCII: iTXt */
            {"empty", ""},
        };
        REQUIRE(st_png_write(path, img, text, 3) == 0);
        bt_img_t *back = NULL;
        st_png_text_t *rt = NULL;
        int n = 0;
        REQUIRE(st_png_read_with_text(path, &back, &rt, &n) == 0);
        /* gray comes back as RGB */
        bt_img_t *want = ch == 1 ? bt_img_convert(img, 3) : bt_img_clone(img);
        CHECKF(s_same(back, want), "%d channels: pixels differ after the round trip", ch);
        CHECK_INT_EQ(n, 3);
        for (int i = 0; i < 3; i++) {
            const char *v = st_png_text_get(rt, n, text[i].key);
            CHECKF(v && !strcmp(v, text[i].value), "text '%s' came back as '%s'", text[i].key, v ? v : "(none)");
        }
        st_png_text_free(&rt);
        bt_img_destroy(&want);
        bt_img_destroy(&back);
        bt_img_destroy(&img);
    }
    /* no temporary left behind */
    CHECK_INT_EQ(s_count_files(dir), 3);
}

TEST(image_png_write_failures)
{
    const char *dir = tu_tmpdir();
    bt_img_t *img = bt_img_new(4, 3, 3);
    REQUIRE(img);
    s_errlog_t log = {0};
    bt_log_set_sink(s_sink, &log);
    char path[512];

    /* a directory that does not exist */
    snprintf(path, sizeof path, "%s/no/such/dir/x.png", dir);
    CHECK(st_png_write(path, img, NULL, 0) < 0);
    CHECK_INT_EQ(log.errors, 1);
    CHECK(strstr(log.last, "x.png") != NULL);

    /* bad text keys are refused before anything is created, and an existing
     * file is left as it was */
    snprintf(path, sizeof path, "%s/keep.png", dir);
    bt_img_fill(img, 0x112233);
    REQUIRE(st_png_write(path, img, NULL, 0) == 0);
    static const char *const bad_keys[] = {
        "",
        " lead",
        "trail ",
        "dou  ble",
        "tab\there",
        "k\xc3\xa9y",
        "0123456789012345678901234567890123456789012345678901234567890123456789012345678901"};
    bt_img_fill(img, 0x445566);
    for (size_t i = 0; i < sizeof bad_keys / sizeof bad_keys[0]; i++) {
        st_png_text_t t = {bad_keys[i], "v"};
        log.errors = 0;
        CHECKF(st_png_write(path, img, &t, 1) == BT_EINVAL, "key '%s' accepted", bad_keys[i]);
        CHECK_INT_EQ(log.errors, 1);
        CHECK(strstr(log.last, path) != NULL);
    }
    st_png_text_t bad_utf8 = {"k", "\xff\xfe"};
    CHECK(st_png_write(path, img, &bad_utf8, 1) == BT_EINVAL);
    bt_img_t *back = NULL;
    REQUIRE(st_png_read(path, &back) == 0);
    CHECK(back->data[0] == 0x11 && back->data[1] == 0x22 && back->data[2] == 0x33);
    bt_img_destroy(&back);
    CHECK_INT_EQ(s_count_files(dir), 1);

    /* an invalid image */
    bt_img_t fake = {.width = 0, .height = 3, .channels = 3, .data = img->data};
    snprintf(path, sizeof path, "%s/fake.png", dir);
    CHECK(st_png_write(path, &fake, NULL, 0) == BT_EINVAL);
    CHECK_INT_EQ(s_count_files(dir), 1);

    /* a target that cannot be replaced (a directory): the temporary is removed */
    snprintf(path, sizeof path, "%s/adir", dir);
    REQUIRE(mkdir(path, 0777) == 0);
    log.errors = 0;
    CHECK(st_png_write(path, img, NULL, 0) < 0);
    CHECK_INT_EQ(log.errors, 1);
    CHECK_INT_EQ(s_count_files(dir), 2);
    bt_log_set_sink(NULL, NULL);
    bt_img_destroy(&img);
}

/* --------------------------------------------------------------- resampling */

static bt_img_filter_t s_filter_named(const char *s)
{
    return !strcmp(s, "bilinear") ? BT_IMG_BILINEAR : !strcmp(s, "bicubic") ? BT_IMG_BICUBIC : BT_IMG_LANCZOS;
}

static bt_img_t *s_source(const char *name)
{
    bt_img_t *img = NULL;
    const char *file = !strcmp(name, "gray") ? "gray.png" : !strcmp(name, "rgba") ? "rgba.png" : "rgb.png";
    if (st_png_read(IMG(file), &img) != 0) return NULL;
    if (!strcmp(name, "gray")) {
        bt_img_t *g = bt_img_convert(img, 1);
        bt_img_destroy(&img);
        img = g;
    } else if (!strcmp(name, "rgbT")) {
        bt_img_t *t = bt_img_transform(img, BT_IMG_TRANSPOSE);
        bt_img_destroy(&img);
        img = t;
    }
    return img;
}

TEST(image_resize_matches_pil)
{
    st_file_t *refs = tu_fixture("images/reference.safetensors");
    REQUIRE(refs);
    int cases = 0, worst = 0;
    for (int i = 0; i < st_count(refs); i++) {
        const char *name = st_at(refs, i)->name;
        char src[16], filt[16];
        int w, h, res;
        bt_img_t *out = NULL, *in = NULL;
        if (sscanf(name, "resize.%15[^.].%15[^.].%dx%d", src, filt, &w, &h) == 4) {
            in = s_source(src);
            REQUIRE(in);
            out = bt_img_resize(in, w, h, s_filter_named(filt));
        } else if (sscanf(name, "crop.%15[^.].%15[^.].%d", src, filt, &res) == 3) {
            in = s_source(src);
            REQUIRE(in);
            out = bt_img_resize_shorter_side_and_center_crop(in, res, s_filter_named(filt));
        } else {
            continue;
        }
        CHECKF(out != NULL, "%s: %s", name, bt_log_last_error());
        int d = s_check_ref(refs, name, out, 1);
        worst = d > worst ? d : worst;
        cases++;
        bt_img_destroy(&in);
        bt_img_destroy(&out);
    }
    CHECKF(cases >= 25, "only %d resize/crop references", cases);
    printf("    %d resize/crop cases, worst difference from PIL %d\n", cases, worst);
    st_close(&refs);
}

TEST(image_resize_properties)
{
    bt_img_t *img = bt_img_new(40, 30, 3);
    REQUIRE(img);
    bt_img_fill(img, 0x7f40c0);
    /* a constant image stays constant under every filter and size */
    bt_img_filter_t f[] = {BT_IMG_BILINEAR, BT_IMG_BICUBIC, BT_IMG_LANCZOS};
    int sizes[][2] = {{1, 1}, {7, 5}, {40, 9}, {3, 30}, {120, 77}};
    for (int i = 0; i < 3; i++)
        for (int s = 0; s < 5; s++) {
            bt_img_t *r = bt_img_resize(img, sizes[s][0], sizes[s][1], f[i]);
            REQUIRE(r);
            bool ok = true;
            for (size_t k = 0; k < (size_t)r->width * r->height; k++)
                ok = ok && r->data[3 * k] == 0x7f && r->data[3 * k + 1] == 0x40 && r->data[3 * k + 2] == 0xc0;
            CHECKF(ok, "filter %d to %dx%d changed a constant image", i, sizes[s][0], sizes[s][1]);
            bt_img_destroy(&r);
        }
    bt_img_t *same = bt_img_resize(img, 40, 30, BT_IMG_BICUBIC);
    CHECK(s_same(same, img));
    bt_img_destroy(&same);
    s_errlog_t log = {0};
    bt_log_set_sink(s_sink, &log);
    CHECK(bt_img_resize(img, 0, 5, BT_IMG_BILINEAR) == NULL);
    CHECK(bt_img_resize(img, 16385, 5, BT_IMG_BILINEAR) == NULL);
    CHECK(bt_img_resize(img, 5, 5, (bt_img_filter_t)42) == NULL);
    CHECK(bt_img_resize_shorter_side_and_center_crop(img, 0, BT_IMG_BILINEAR) == NULL);
    CHECK_INT_EQ(log.errors, 4);
    /* 1 x 16384 at res 512 would need a 8388608-pixel side */
    bt_img_t *thin = bt_img_new(1, 16384, 1);
    REQUIRE(thin);
    log.errors = 0;
    CHECK(bt_img_resize_shorter_side_and_center_crop(thin, 512, BT_IMG_BILINEAR) == NULL);
    CHECK_INT_EQ(log.errors, 1);
    bt_img_destroy(&thin);
    bt_log_set_sink(NULL, NULL);
    bt_img_destroy(&img);
}

/* -------------------------------------------------------------- geometry */

TEST(image_crop_and_flip)
{
    bt_img_t *img = bt_img_new(9, 4, 1);
    REQUIRE(img);
    for (int i = 0; i < 36; i++)
        img->data[i] = (uint8_t)i;
    /* torchvision rounds (in - crop) / 2 half to even */
    static const struct {
        int crop, left;
    } cases[] = {{9, 0}, {8, 0}, {7, 1}, {6, 2}, {5, 2}, {4, 2}, {3, 3}, {2, 4}, {1, 4}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bt_img_t *c = bt_img_center_crop(img, cases[i].crop, 4);
        REQUIRE(c);
        CHECKF(c->width == cases[i].crop && c->data[0] == cases[i].left, "crop %d: left %d, want %d", cases[i].crop,
               c->data[0], cases[i].left);
        bt_img_destroy(&c);
    }
    /* a larger crop pads with zeros, (crop - in) // 2 before */
    bt_img_t *p = bt_img_center_crop(img, 12, 7);
    REQUIRE(p);
    CHECK(p->width == 12 && p->height == 7);
    /* source (x, y) lands on (x + 1, y + 1); outside is 0 */
    CHECK(*bt_img_pixel(p, 2, 1) == 1 && *bt_img_pixel(p, 9, 1) == 8 && *bt_img_pixel(p, 10, 1) == 0);
    CHECK(*bt_img_pixel(p, 1, 3) == 18 && *bt_img_pixel(p, 2, 4) == 28 && *bt_img_pixel(p, 2, 5) == 0);
    CHECK(*bt_img_pixel(p, 0, 0) == 0 && *bt_img_pixel(p, 11, 6) == 0);
    bt_img_destroy(&p);
    bt_img_t *sq = bt_img_center_crop_square(img);
    CHECK(sq && sq->width == 4 && sq->height == 4 && sq->data[0] == 2);
    bt_img_destroy(&sq);
    bt_img_t *a = bt_img_center_crop_aspect(img, 3, 2);
    CHECK(a && a->width == 6 && a->height == 4);
    bt_img_destroy(&a);
    a = bt_img_center_crop_aspect(img, 1, 2);
    CHECK(a && a->width == 2 && a->height == 4);
    bt_img_destroy(&a);

    /* flips and rotations compose as they should */
    bt_img_t *rgb = bt_img_new(5, 3, 3);
    REQUIRE(rgb);
    for (int i = 0; i < 45; i++)
        rgb->data[i] = (uint8_t)(i * 5);
    bt_img_t *f = bt_img_transform(rgb, BT_IMG_FLIP_LEFT_RIGHT), *g = bt_img_clone(rgb);
    bt_img_flip_h(g);
    CHECK(s_same(f, g));
    bt_img_flip_h(g);
    CHECK(s_same(g, rgb));
    bt_img_t *r = bt_img_clone(rgb);
    for (int k = 0; k < 4; k++) {
        bt_img_t *n = bt_img_transform(r, BT_IMG_ROTATE_90);
        bt_img_destroy(&r);
        r = n;
    }
    CHECK(s_same(r, rgb));
    bt_img_t *r90 = bt_img_transform(rgb, BT_IMG_ROTATE_90), *back = bt_img_transform(r90, BT_IMG_ROTATE_270);
    CHECK(s_same(back, rgb) && r90->width == 3 && r90->height == 5);
    bt_img_t *t1 = bt_img_transform(rgb, BT_IMG_TRANSVERSE), *t2 = bt_img_transform(t1, BT_IMG_TRANSVERSE);
    CHECK(s_same(t2, rgb));
    bt_img_destroy(&f), bt_img_destroy(&g), bt_img_destroy(&r), bt_img_destroy(&r90), bt_img_destroy(&back);
    bt_img_destroy(&t1), bt_img_destroy(&t2), bt_img_destroy(&rgb), bt_img_destroy(&img);
}

TEST(image_new_limits_and_convert)
{
    s_errlog_t log = {0};
    bt_log_set_sink(s_sink, &log);
    CHECK(bt_img_new(16385, 1, 3) == NULL);
    CHECK(strstr(log.last, "16384") != NULL);
    CHECK(bt_img_new(0, 1, 3) == NULL);
    CHECK(bt_img_new(1, -1, 3) == NULL);
    CHECK(bt_img_new(1, 1, 2) == NULL);
    CHECK_INT_EQ(log.errors, 4);
    bt_log_set_sink(NULL, NULL);
    bt_img_t *big = bt_img_new(16384, 2, 1);
    CHECK(big != NULL);
    bt_img_destroy(&big);
    bt_img_destroy(&big);

    bt_img_t *img = bt_img_new(2, 1, 4);
    REQUIRE(img);
    memcpy(img->data, "\xff\x00\x00\x80\x10\x80\xf0\x00", 8);
    bt_img_t *g = bt_img_convert(img, 1), *c = bt_img_convert(img, 3), *b = bt_img_convert(g, 4);
    REQUIRE(g && c && b);
    /* PIL: L = (19595 R + 38470 G + 7471 B + 0x8000) >> 16 */
    CHECK_INT_EQ(g->data[0], (19595 * 255 + 0x8000) >> 16);
    CHECK_INT_EQ(g->data[1], (19595 * 0x10 + 38470 * 0x80 + 7471 * 0xf0 + 0x8000) >> 16);
    CHECK(!memcmp(c->data, "\xff\x00\x00\x10\x80\xf0", 6));
    CHECK(b->data[0] == g->data[0] && b->data[2] == g->data[0] && b->data[3] == 255);
    bt_img_destroy(&g), bt_img_destroy(&c), bt_img_destroy(&b), bt_img_destroy(&img);
}

/* ---------------------------------------------------------- float formats */

TEST(image_float_conversions)
{
    st_file_t *refs = tu_fixture("images/reference.safetensors");
    REQUIRE(refs);
    const st_tensor_t *in = st_find(refs, "f32.to_chw.in"), *out = st_find(refs, "f32.to_chw.out");
    REQUIRE(in && out && in->ndim == 3);
    bt_img_t *img = bt_img_new((int)in->shape[1], (int)in->shape[0], 3);
    REQUIRE(img);
    memcpy(img->data, in->data, in->nbytes);
    size_t n = (size_t)3 * img->width * img->height;
    float *x = malloc(n * sizeof *x), *want = malloc(n * sizeof *want);
    REQUIRE(x && want);
    bt_img_to_f32_chw(img, x);
    st_read_f32(out, want);
    CHECKF(!memcmp(x, want, n * sizeof *x), "to_chw differs from torchvision's float32 bits (max %g)",
           tu_max_abs_diff(x, want, (int64_t)n));
    for (size_t i = 0; i < n; i++)
        if (fabsf(x[i] - ((float)img->data[(i % (n / 3)) * 3 + i / (n / 3)] / 127.5f - 1.0f)) > 1e-6f) {
            CHECKF(0, "sample %zu: %g is not x / 127.5 - 1", i, x[i]);
            break;
        }
    /* and back, exactly */
    bt_img_t *rt = bt_img_from_f32_chw(x, 3, img->height, img->width, BT_IMG_RANGE_PM1);
    CHECK(s_same(rt, img));
    bt_img_destroy(&rt);
    for (size_t i = 0; i < n; i++)
        x[i] = x[i] * 0.5f + 0.5f;
    rt = bt_img_from_f32_chw(x, 3, img->height, img->width, BT_IMG_RANGE_01);
    CHECK(s_same(rt, img));
    bt_img_destroy(&rt);

    /* diffusers' postprocess on values that round half to even */
    const st_tensor_t *fin = st_find(refs, "f32.from_chw.in");
    REQUIRE(fin && fin->ndim == 3);
    int C = (int)fin->shape[0], H = (int)fin->shape[1], W = (int)fin->shape[2];
    float *y = malloc((size_t)C * H * W * sizeof *y);
    REQUIRE(y);
    st_read_f32(fin, y);
    bt_img_t *u = bt_img_from_f32_chw(y, C, H, W, BT_IMG_RANGE_PM1);
    s_check_ref(refs, "f32.from_chw.out", u, 0);
    bt_img_destroy(&u);
    y[0] = NAN, y[1] = INFINITY, y[2] = -INFINITY;
    u = bt_img_from_f32_chw(y, C, H, W, BT_IMG_RANGE_PM1);
    REQUIRE(u);
    CHECK(u->data[0] == 0 && u->data[C] == 255 && u->data[2 * C] == 0);
    bt_img_destroy(&u);
    free(y), free(x), free(want);
    bt_img_destroy(&img);
    st_close(&refs);
}

/* --------------------------------------------------------------------- text */

static long s_ink(const bt_img_t *img, int x, int y, int w, int h, uint32_t bg)
{
    long n = 0;
    uint8_t b[3] = {(uint8_t)(bg >> 16), (uint8_t)(bg >> 8), (uint8_t)bg};
    for (int yy = y; yy < y + h && yy < img->height; yy++)
        for (int xx = x; xx < x + w && xx < img->width; xx++)
            if (memcmp(bt_img_pixel(img, xx, yy), b, 3)) n++;
    return n;
}

TEST(image_font_and_text)
{
    /* every printable glyph has ink and no two glyphs are the same */
    static uint8_t glyph[95][6 * 10];
    bt_img_t *cell = bt_img_new(6, 10, 1);
    REQUIRE(cell);
    for (int c = 33; c <= 126; c++) {
        char s[2] = {(char)c, 0};
        memset(cell->data, 0, 60);
        bt_img_draw_text(cell, 0, 0, s, 1, 0xffffff);
        memcpy(glyph[c - 32], cell->data, 60);
        long ink = 0;
        for (int i = 0; i < 60; i++)
            ink += cell->data[i] != 0;
        CHECKF(ink > 0, "glyph '%c' is empty", c);
        for (int x = 0; x < 10; x++)
            CHECKF(cell->data[x * 6 + 5] == 0, "glyph '%c' touches the spacing column", c);
        for (int d = 33; d < c; d++)
            CHECKF(memcmp(glyph[c - 32], glyph[d - 32], 60), "'%c' looks like '%c'", c, d);
    }
    bt_img_destroy(&cell);

    CHECK_INT_EQ(bt_img_text_width("", 1), 0);
    CHECK_INT_EQ(bt_img_text_width("abc", 1), 17);
    CHECK_INT_EQ(bt_img_text_width("abc", 3), 51);
    CHECK_INT_EQ(bt_img_text_width("ab\nlonger\nc", 2), 2 * (6 * 6 - 1));
    CHECK_INT_EQ(bt_img_text_width("caf\xc3\xa9", 1), 4 * 6 - 1); /* one box per UTF-8 character */
    CHECK_INT_EQ(bt_img_text_height("a\nb", 2), 40);

    /* scaled text lands where asked and nowhere else; clipping is safe */
    bt_img_t *img = bt_img_new(60, 30, 3);
    REQUIRE(img);
    bt_img_fill(img, 0xffffff);
    bt_img_draw_text(img, 5, 4, "Hi!", 2, 0x000000);
    CHECK(s_ink(img, 5, 4, bt_img_text_width("Hi!", 2), 18, 0xffffff) > 20);
    CHECK(s_ink(img, 0, 0, 60, 30, 0xffffff) == s_ink(img, 5, 4, bt_img_text_width("Hi!", 2), 18, 0xffffff));
    bt_img_draw_text(img, -7, -3, "clipped \x01\xff text", 3, 0xff0000);
    bt_img_draw_text(img, 55, 25, "edge", 4, 0x00ff00);
    bt_img_draw_text(img, 0, 0, NULL, 1, 0);
    bt_img_destroy(&img);

    char out[256];
    CHECK_INT_EQ(bt_img_text_wrap("a photo of sks dog", 6 * 10 - 1, 1, 0, out, sizeof out), 2);
    CHECK(!strcmp(out, "a photo of\nsks dog"));
    CHECK_INT_EQ(bt_img_text_wrap("abcdefghijkl", 6 * 5 - 1, 1, 0, out, sizeof out), 3);
    CHECK(!strcmp(out, "abcde\nfghij\nkl"));
    CHECK_INT_EQ(bt_img_text_wrap("one two three four five six", 6 * 9 - 1, 1, 2, out, sizeof out), 2);
    CHECK(!strcmp(out, "one two\nthree...")); /* cut, within the width */
    CHECK_INT_EQ(bt_img_text_wrap("x\ny\nz", 100, 1, 0, out, sizeof out), 3);
    CHECK_INT_EQ(bt_img_text_wrap("", 100, 1, 0, out, sizeof out), 0);
    char tiny[6];
    bt_img_text_wrap("a long sentence here", 1000, 1, 0, tiny, sizeof tiny);
    CHECK(strlen(tiny) <= 5);
}

/* -------------------------------------------------------------------- grid */

TEST(image_grid)
{
    bt_img_t *tiles[6];
    for (int i = 0; i < 6; i++) {
        tiles[i] = bt_img_new(20, 16, i == 4 ? 1 : 3);
        REQUIRE(tiles[i]);
        bt_img_fill(tiles[i], 0x102030 * (uint32_t)(i + 1));
    }
    const bt_img_t *t6[6] = {tiles[0], tiles[1], tiles[2], tiles[3], tiles[4], NULL};
    bt_img_grid_opts_t plain = BT_IMG_GRID_OPTS_INIT;
    plain.margin = 4;
    plain.min_tile = 0; /* the tiles as they are */
    bt_img_t *g = bt_img_grid(t6, 2, 3, &plain);
    REQUIRE(g);
    CHECK_INT_EQ(g->width, 4 + 3 * 20 + 2 * 4 + 4);
    CHECK_INT_EQ(g->height, 4 + 2 * 16 + 4 + 4);
    CHECK(g->channels == 3);
    /* tile (1, 0) sits at (4, 24) */
    const uint8_t *p = bt_img_pixel(g, 4 + 3, 4 + 16 + 4 + 3);
    uint32_t c4 = 0x102030 * 4;
    CHECK(p[0] == (uint8_t)(c4 >> 16) && p[1] == (uint8_t)(c4 >> 8) && p[2] == (uint8_t)c4);
    /* the empty cell is background */
    CHECK_INT_EQ(s_ink(g, 4 + 2 * 24, 24, 20, 16, 0xffffff), 0);
    bt_img_destroy(&g);

    /* small tiles drawn larger by default: 20 px wide -> 7 x 7 per pixel (140 >= 128), nearest */
    plain.min_tile = 128;
    g = bt_img_grid(t6, 2, 3, &plain);
    REQUIRE(g);
    CHECK_INT_EQ(g->width, 4 + 3 * 140 + 2 * 4 + 4);
    CHECK_INT_EQ(g->height, 4 + 2 * 112 + 4 + 4);
    p = bt_img_pixel(g, 4 + 139, 4 + 112 + 4 + 111); /* the last pixel of tile (1, 0) */
    CHECK(p[0] == (uint8_t)(c4 >> 16) && p[1] == (uint8_t)(c4 >> 8) && p[2] == (uint8_t)c4);
    bt_img_destroy(&g);

    const char *rows[] = {"seed 1", "a much longer row label that wraps"};
    const char *cols[] = {"step 100", "step 200", NULL};
    bt_img_grid_opts_t o = BT_IMG_GRID_OPTS_INIT;
    o.font_scale = 1;
    o.min_tile = 0;
    o.title = "sks dog, 3 checkpoints";
    o.row_labels = rows;
    o.col_labels = cols;
    g = bt_img_grid(t6, 2, 3, &o);
    REQUIRE(g);
    int tiles_w = 3 * 20 + 2 * 8, tiles_h = 2 * 16 + 8;
    CHECK(g->width > tiles_w + 16 && g->height > tiles_h + 16 + 2 * BT_FONT_LINE);
    /* ink in the title strip, the column-label strip and the row-label column */
    CHECK(s_ink(g, 0, 0, g->width, 8 + BT_FONT_LINE, 0xffffff) > 20);
    int label_col = g->width - 16 - tiles_w;
    CHECK(s_ink(g, 8, g->height - 8 - tiles_h, label_col - 8, tiles_h, 0xffffff) > 20);
    CHECK(s_ink(g, g->width - 8 - tiles_w, 8 + BT_FONT_LINE + 8, tiles_w, BT_FONT_LINE, 0xffffff) > 20);
    bt_img_destroy(&g);

    s_errlog_t log = {0};
    bt_log_set_sink(s_sink, &log);
    bt_img_t *odd = bt_img_new(21, 16, 3);
    const bt_img_t *mixed[2] = {tiles[0], odd};
    CHECK(bt_img_grid(mixed, 1, 2, NULL) == NULL);
    const bt_img_t *none[2] = {NULL, NULL};
    CHECK(bt_img_grid(none, 1, 2, NULL) == NULL);
    CHECK(bt_img_grid(t6, 0, 3, NULL) == NULL);
    CHECK_INT_EQ(log.errors, 3);
    bt_log_set_sink(NULL, NULL);
    bt_img_destroy(&odd);
    for (int i = 0; i < 6; i++)
        bt_img_destroy(&tiles[i]);
}

/* -------------------------------------------------------------------- plot */

static long s_color_count(const bt_img_t *img, uint32_t rgb)
{
    long n = 0;
    for (int y = 0; y < img->height; y++)
        for (int x = 0; x < img->width; x++) {
            const uint8_t *p = bt_img_pixel(img, x, y);
            n += p[0] == (uint8_t)(rgb >> 16) && p[1] == (uint8_t)(rgb >> 8) && p[2] == (uint8_t)rgb;
        }
    return n;
}

TEST(image_plot)
{
    enum { N = 500 };
    float loss[N], avg[N], steps[N];
    tu_rng_t r = tu_rng(11);
    for (int i = 0; i < N; i++) {
        steps[i] = (float)(i * 10);
        loss[i] = (float)(0.1 + 0.4 * exp(-i / 120.0) + 0.05 * tu_uniform(&r));
    }
    loss[77] = NAN, loss[300] = INFINITY;
    REQUIRE(bt_plot_moving_average(loss, N, 25, avg) == 0);
    bt_plot_series_t s[2] = {
        {.label = "loss", .x = steps, .y = loss, .n = N, .color = 0x1f77b4, .line_width = 1},
        {.label = "moving average (25)", .x = steps, .y = avg, .n = N, .color = 0xd62728, .line_width = 2},
    };
    bt_plot_opts_t o = {.title = "DreamBooth LoRA: sks dog", .x_label = "step", .y_label = "loss"};
    bt_img_t *img = bt_img_plot_lines(640, 400, s, 2, &o);
    REQUIRE(img);
    CHECK(img->width == 640 && img->height == 400 && img->channels == 3);
    CHECK(s_color_count(img, 0x1f77b4) > 100);
    CHECK(s_color_count(img, 0xd62728) > 100);
    CHECK(s_ink(img, 0, 0, 640, 20, 0xffffff) > 50); /* the title */
    char path[512];
    snprintf(path, sizeof path, "%s/plot.png", tu_tmpdir());
    CHECK(st_png_write(path, img, NULL, 0) == 0);
    bt_img_destroy(&img);

    /* edge cases: each gives an image of the requested size */
    float nan3[3] = {NAN, INFINITY, -INFINITY}, one[1] = {0.25f}, flat[4] = {2, 2, 2, 2};
    float huge[3] = {-3.4e38f, 0, 3.4e38f}, tiny[3] = {1.0f, 1.0000001f, 1.0000002f}, xnan[4] = {0, NAN, 2, 3};
    struct {
        bt_plot_series_t s;
        int w, h;
    } edge[] = {
        {{.label = "empty", .y = NULL, .n = 0}, 320, 200},
        {{.label = "nan", .y = nan3, .n = 3}, 320, 200},
        {{.label = "one point", .y = one, .n = 1}, 320, 200},
        {{.label = "constant", .y = flat, .n = 4}, 320, 200},
        {{.label = "huge", .y = huge, .n = 3}, 320, 200},
        {{.label = "tiny range", .y = tiny, .n = 3}, 320, 200},
        {{.label = "x has nan", .x = xnan, .y = flat, .n = 4}, 320, 200},
        {{.label = "small", .y = flat, .n = 4}, 12, 9},
        {{.label = "1x1", .y = flat, .n = 4}, 1, 1},
    };
    for (size_t i = 0; i < sizeof edge / sizeof edge[0]; i++) {
        bt_img_t *e = bt_img_plot_lines(edge[i].w, edge[i].h, &edge[i].s, 1, &o);
        CHECKF(e && e->width == edge[i].w && e->height == edge[i].h, "edge case '%s'", edge[i].s.label);
        bt_img_destroy(&e);
    }
    bt_img_t *e = bt_img_plot_lines(300, 200, NULL, 0, NULL);
    CHECK(e && e->width == 300 && e->height == 200);
    bt_img_destroy(&e);
    /* one point shows up as a dot */
    bt_plot_series_t dot = {.y = one, .n = 1, .color = 0x00aa00};
    e = bt_img_plot_lines(300, 200, &dot, 1, NULL);
    CHECK(e && s_color_count(e, 0x00aa00) >= 4);
    bt_img_destroy(&e);

    s_errlog_t log = {0};
    bt_log_set_sink(s_sink, &log);
    CHECK(bt_img_plot_lines(0, 100, NULL, 0, NULL) == NULL);
    bt_plot_series_t bad = {.y = NULL, .n = 5};
    CHECK(bt_img_plot_lines(100, 100, &bad, 1, NULL) == NULL);
    CHECK_INT_EQ(log.errors, 2);
    bt_log_set_sink(NULL, NULL);
}

TEST(image_moving_average)
{
    float y[7] = {1, 2, NAN, 4, NAN, NAN, NAN}, out[7];
    REQUIRE(bt_plot_moving_average(y, 7, 2, out) == 0);
    CHECK(out[0] == 1.0f && out[1] == 1.5f && out[2] == 2.0f && out[3] == 4.0f && out[4] == 4.0f);
    CHECK(isnan(out[5]) && isnan(out[6]));
    float z[4] = {1, 3, 5, 7};
    REQUIRE(bt_plot_moving_average(z, 4, 3, z) == 0); /* in place */
    CHECK(z[0] == 1 && z[1] == 2 && z[2] == 3 && z[3] == 5);
    bt_log_set_level(BT_LOG_ERROR);
    s_errlog_t log = {0};
    bt_log_set_sink(s_sink, &log);
    CHECK(bt_plot_moving_average(z, 4, 0, z) == BT_EINVAL);
    bt_log_set_sink(NULL, NULL);
}

/* --------------------------------------------------------- damaged inputs */

/* Every truncation and a few hundred random corruptions of valid files: each
 * load either succeeds or fails with exactly one error line and no image (ASan
 * and LSan watch the error paths). A PNG cut anywhere before IEND must fail. */
TEST_TIMEOUT(image_decoders_survive_damage, 600)
{
    static const char *const files[] = {"rgb.png",   "interlaced.png",  "palette_trns.png", "gray16.png",
                                        "photo.jpg", "progressive.jpg", "cmyk.jpg",         "orient6.jpg"};
    char path[512];
    snprintf(path, sizeof path, "%s/damaged", tu_tmpdir());
    s_errlog_t log = {0};
    bt_log_set_sink(s_sink, &log);
    tu_rng_t r = tu_rng(5);
    long loads = 0, failures = 0;
    for (size_t fi = 0; fi < sizeof files / sizeof files[0]; fi++) {
        char *data = NULL;
        size_t len = 0;
        REQUIRE(bt_read_file(IMG(files[fi]), &data, &len) == 0);
        bool is_png = strstr(files[fi], ".png") != NULL;
        for (int it = 0; it < (int)len + 300; it++) {
            size_t n = len;
            char *buf = malloc(len);
            REQUIRE(buf);
            memcpy(buf, data, len);
            if (it < (int)len) {
                n = (size_t)it; /* truncated to it bytes */
            } else {
                int flips = 1 + (int)(tu_next(&r) % 4);
                for (int k = 0; k < flips; k++)
                    buf[tu_next(&r) % len] ^= (char)(1 + tu_next(&r) % 255);
            }
            FILE *f = fopen(path, "wb");
            REQUIRE(f);
            fwrite(buf, 1, n, f);
            fclose(f);
            free(buf);
            bt_img_t *img = NULL;
            log.errors = 0;
            int rc = st_image_load(path, &img);
            loads++;
            if (rc == 0) {
                CHECKF(img && log.errors == 0, "%s, case %d: success with %d error lines", files[fi], it, log.errors);
                CHECKF(!(is_png && it < (int)len), "%s cut to %d of %zu bytes loaded", files[fi], it, len);
            } else {
                failures++;
                CHECKF(!img && log.errors == 1, "%s, case %d: status %d, %d error lines", files[fi], it, rc,
                       log.errors);
            }
            bt_img_destroy(&img);
            if (bt_test_failures() > 20) break;
        }
        free(data);
    }
    bt_log_set_sink(NULL, NULL);
    printf("    %ld damaged loads, %ld refused\n", loads, failures);
}

/* A write that fails half-way (file size limit) leaves neither the target nor
 * a temporary, and says so once. */
TEST(image_png_write_fails_midway)
{
    const char *dir = tu_tmpdir();
    bt_img_t *img = bt_img_new(256, 256, 3);
    REQUIRE(img);
    tu_rng_t r = tu_rng(9);
    for (size_t i = 0; i < (size_t)256 * 256 * 3; i++)
        img->data[i] = (uint8_t)tu_next(&r); /* incompressible */
    struct rlimit old;
    REQUIRE(getrlimit(RLIMIT_FSIZE, &old) == 0);
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    struct rlimit lim = {.rlim_cur = 20000, .rlim_max = old.rlim_max};
    REQUIRE(setrlimit(RLIMIT_FSIZE, &lim) == 0);
    char path[512];
    snprintf(path, sizeof path, "%s/big.png", dir);
    s_errlog_t log = {0};
    bt_log_set_sink(s_sink, &log);
    int rc = st_png_write(path, img, NULL, 0);
    bt_log_set_sink(NULL, NULL);
    setrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, old_handler);
    CHECK(rc == BT_EIO);
    CHECK_INT_EQ(log.errors, 1);
    CHECK(strstr(log.last, "big.png") != NULL && strstr(log.last, "write failed") != NULL);
    CHECK_INT_EQ(s_count_files(dir), 0);
    bt_img_destroy(&img);
}
