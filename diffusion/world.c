/*
 * world.c — the synthetic world's scenes, captions, renderer and prompt parser (world.h).
 */
#include "diffusion/world.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "common/log.h"
#include "common/rng.h"
#include "common/status.h"

/* ---- vocabulary ---- */

static const char *const s_shape_names[SD_SHAPE_COUNT] = {"circle", "square", "triangle", "star", "heart"};
static const char *const s_colour_names[SD_COLOUR_ALL] = {"red",    "orange", "yellow", "green",   "blue",
                                                          "purple", "white",  "black",  "magenta", "cyan"};
/* Saturated and far apart: the closest pair of the palette (orange, yellow) is 108 apart in RGB,
 * the subject's colours are 154 or more from every palette colour. */
static const uint32_t s_colour_rgb[SD_COLOUR_ALL] = {0xdc141e, 0xff8200, 0xffe628, 0x14a028, 0x1e3cdc,
                                                     0x821eaa, 0xfafafa, 0x0f0f0f, 0xff00ff, 0x00e6f0};
static const char *const s_size_names[SD_SIZE_COUNT] = {"small", "", "big"};
static const char *const s_pos_phrases[SD_POS_COUNT] = {"",
                                                        "on the left",
                                                        "on the right",
                                                        "at the top",
                                                        "at the bottom",
                                                        "in the top left corner",
                                                        "in the top right corner",
                                                        "in the bottom left corner",
                                                        "in the bottom right corner"};
static const char *const s_pos_names[SD_POS_COUNT] = {"centre",   "left",      "right",       "top",         "bottom",
                                                      "top left", "top right", "bottom left", "bottom right"};
static const char *const s_bg_names[SD_BG_COUNT] = {"flat", "gradient", "horizontal stripes", "vertical stripes"};

const char *sd_shape_name(sd_shape_t s)
{
    return s >= 0 && s < SD_SHAPE_COUNT ? s_shape_names[s] : "none";
}
const char *sd_colour_name(sd_colour_t c)
{
    return c >= 0 && c < SD_COLOUR_ALL ? s_colour_names[c] : "none";
}
const char *sd_size_name(sd_size_t s)
{
    return s >= 0 && s < SD_SIZE_COUNT ? s_size_names[s] : "none";
}
const char *sd_pos_phrase(sd_pos_t p)
{
    return p >= 0 && p < SD_POS_COUNT ? s_pos_phrases[p] : "none";
}
const char *sd_pos_name(sd_pos_t p)
{
    return p >= 0 && p < SD_POS_COUNT ? s_pos_names[p] : "none";
}
const char *sd_bg_kind_name(sd_bg_kind_t k)
{
    return k >= 0 && k < SD_BG_COUNT ? s_bg_names[k] : "none";
}
uint32_t sd_colour_rgb(sd_colour_t c)
{
    return c >= 0 && c < SD_COLOUR_ALL ? s_colour_rgb[c] : 0;
}

/* ---- geometry ---- */

/* radius (fraction of the side) of each size, and how far from the centre the side and corner
 * positions put a shape of that size: small 0.15 at 0.30 from the edge, medium 0.23 at 0.38; with
 * the jitter below every shape stays 0.13 of the side from the border (2 px at 16 px). */
static const double s_size_r[SD_SIZE_COUNT] = {0.15, 0.23, 0.33};
static const double s_size_off[SD_SIZE_COUNT] = {0.20, 0.12, 0.0};
#define S_JITTER_POS 0.01 /* centre moves up to this (fraction of the side) either way */
#define S_JITTER_R 0.04   /* radius changes up to this fraction either way */
/* A shape's colour is at least this far (RGB) from every colour its background shows (a gradient:
 * every colour on the way), so the shape always stands out. */
#define S_MIN_CONTRAST 90.0

static const double s_star_inner = 0.42; /* inner radius of the star's points (outer 1) */
/* The heart (x^2 + y^2 - 1)^3 = x^2 y^3 (y up) has its area centroid at y = 0.293485 and reaches
 * 1.28999 from it: scaled into the unit disc around the centroid. */
#define S_HEART_CY 0.293485
#define S_HEART_SCALE 1.29

bool sd_shape_inside(sd_shape_t s, double u, double v)
{
    switch (s) {
    case SD_SHAPE_CIRCLE: return u * u + v * v <= 0.85 * 0.85;
    case SD_SHAPE_SQUARE: return fabs(u) <= 0.7 && fabs(v) <= 0.7;
    case SD_SHAPE_TRIANGLE: /* pointing up: (0, -1), (+-sqrt(3)/2, 1/2) */
        return v <= 0.5 && 1.7320508075688772 * fabs(u) <= v + 1.0;
    case SD_SHAPE_STAR: {
        /* one point up; fold the angle into the half-arm [0, 36 deg] from a point's axis and test
         * against the edge from the point (1, 0) to the inner corner */
        double rr = sqrt(u * u + v * v);
        if (rr > 1.0) return false;
        if (rr < s_star_inner * 0.809) return true; /* inside the inner pentagon's incircle */
        double a = atan2(u, -v);                    /* 0 at the top point, clockwise */
        const double arm = 2.0 * M_PI / 5.0;
        a = fmod(a + 10.0 * arm + arm / 2.0, arm) - arm / 2.0;
        a = fabs(a);
        double qx = rr * cos(a), qy = rr * sin(a);
        double ix = s_star_inner * cos(arm / 2.0), iy = s_star_inner * sin(arm / 2.0);
        /* inside when q is on the origin's side of the line (1, 0) -> (ix, iy) */
        double ex = ix - 1.0, ey = iy;
        return ex * qy - ey * (qx - 1.0) >= 0.0;
    }
    case SD_SHAPE_HEART: {
        double x = u * S_HEART_SCALE, y = -v * S_HEART_SCALE + S_HEART_CY, q = x * x + y * y - 1.0;
        return q * q * q - x * x * y * y * y <= 0.0;
    }
    default: return false;
    }
}

/* ---- scenes ---- */

#define S_STREAM_WORLD 0x776f726c64ull /* "world" */
enum { S_KIND_WORLD, S_KIND_SUBJECT };
/* draw numbers of the scene's stream: one per decision */
enum { D_SHAPE, D_SIZE, D_POS, D_BG, D_BG1, D_BG2, D_COLOUR, D_JX, D_JY, D_JR };

static double s_dist(uint32_t a, uint32_t b)
{
    double dr = (double)((a >> 16) & 255) - (double)((b >> 16) & 255);
    double dg = (double)((a >> 8) & 255) - (double)((b >> 8) & 255);
    double db = (double)(a & 255) - (double)(b & 255);
    return sqrt(dr * dr + dg * dg + db * db);
}

/* Distance from colour c to the nearest colour the background shows. */
static double s_bg_contrast(const sd_scene_t *s, sd_colour_t c)
{
    uint32_t rgb = s_colour_rgb[c], a = s_colour_rgb[s->bg1];
    if (s->bg == SD_BG_FLAT) return s_dist(rgb, a);
    uint32_t b = s_colour_rgb[s->bg2];
    if (s->bg != SD_BG_GRADIENT) return fmin(s_dist(rgb, a), s_dist(rgb, b));
    double best = 1e9;
    for (int k = 0; k <= 64; k++) { /* the segment a..b, finely enough for a 90-unit margin */
        double t = k / 64.0, d = 0;
        for (int sh = 16; sh >= 0; sh -= 8) {
            double ca = (a >> sh) & 255, cb = (b >> sh) & 255, cc = (rgb >> sh) & 255;
            double m = ca + (cb - ca) * t - cc;
            d += m * m;
        }
        best = fmin(best, sqrt(d));
    }
    return best;
}

static void s_place(sd_scene_t *s, uint64_t key)
{
    double ox = 0, oy = 0, off = s_size_off[s->size];
    switch (s->pos) {
    case SD_POS_LEFT: ox = -off; break;
    case SD_POS_RIGHT: ox = off; break;
    case SD_POS_TOP: oy = -off; break;
    case SD_POS_BOTTOM: oy = off; break;
    case SD_POS_TOP_LEFT: ox = oy = -off; break;
    case SD_POS_TOP_RIGHT: ox = off, oy = -off; break;
    case SD_POS_BOTTOM_LEFT: ox = -off, oy = off; break;
    case SD_POS_BOTTOM_RIGHT: ox = oy = off; break;
    default: break;
    }
    s->cx = 0.5 + ox + S_JITTER_POS * (2.0 * bt_rng_uniform(key, D_JX) - 1.0);
    s->cy = 0.5 + oy + S_JITTER_POS * (2.0 * bt_rng_uniform(key, D_JY) - 1.0);
    s->r = s_size_r[s->size] * (1.0 + S_JITTER_R * (2.0 * bt_rng_uniform(key, D_JR) - 1.0));
}

void sd_world_scene(uint64_t seed, uint64_t index, sd_scene_t *out)
{
    uint64_t key = bt_rng_key(seed, bt_rng_stream(S_STREAM_WORLD, index, S_KIND_WORLD));
    sd_scene_t s = {0};
    s.shape = (sd_shape_t)bt_rng_below(key, D_SHAPE, SD_SHAPE_COUNT);
    /* sizes 1:2:1; big shapes at the centre, medium ones at the centre half the time and on a side
     * otherwise, small ones anywhere of the nine places */
    uint64_t u = bt_rng_below(key, D_SIZE, 4);
    s.size = u == 0 ? SD_SIZE_SMALL : u == 3 ? SD_SIZE_BIG : SD_SIZE_MEDIUM;
    if (s.size == SD_SIZE_SMALL) {
        s.pos = (sd_pos_t)bt_rng_below(key, D_POS, SD_POS_COUNT);
    } else if (s.size == SD_SIZE_MEDIUM) {
        uint64_t p = bt_rng_below(key, D_POS, 8);
        s.pos = p < 4 ? SD_POS_CENTRE : (sd_pos_t)(SD_POS_LEFT + (p - 4));
    } else {
        s.pos = SD_POS_CENTRE;
    }
    /* backgrounds: flat half the time, else a gradient or stripes either way */
    uint64_t b = bt_rng_below(key, D_BG, 8);
    s.bg = b < 4 ? SD_BG_FLAT : b < 6 ? SD_BG_GRADIENT : b < 7 ? SD_BG_HSTRIPES : SD_BG_VSTRIPES;
    s.bg1 = (sd_colour_t)bt_rng_below(key, D_BG1, SD_COLOUR_COUNT);
    s.bg2 = (sd_colour_t)((s.bg1 + 1 + (int)bt_rng_below(key, D_BG2, SD_COLOUR_COUNT - 1)) % SD_COLOUR_COUNT);
    if (s.bg == SD_BG_FLAT) s.bg2 = SD_COLOUR_NONE;
    /* the shape's colour: uniform over the palette colours that stand out from this background
     * (never empty: test_world checks every background) */
    sd_colour_t ok[SD_COLOUR_COUNT];
    int n = 0;
    for (int c = 0; c < SD_COLOUR_COUNT; c++)
        if (s_bg_contrast(&s, (sd_colour_t)c) >= S_MIN_CONTRAST) ok[n++] = (sd_colour_t)c;
    s.colour = n ? ok[bt_rng_below(key, D_COLOUR, (uint64_t)n)] : SD_COLOUR_NONE;
    s_place(&s, key);
    *out = s;
}

void sd_world_subject_scene(uint64_t seed, uint64_t index, sd_scene_t *out)
{
    uint64_t key = bt_rng_key(seed, bt_rng_stream(S_STREAM_WORLD, index, S_KIND_SUBJECT));
    sd_scene_t s = {0};
    s.shape = SD_SHAPE_STAR;
    s.subject = true;
    s.colour = SD_COLOUR_NONE;
    s.size = bt_rng_below(key, D_SIZE, 3) == 0 ? SD_SIZE_BIG : SD_SIZE_MEDIUM;
    s.pos = SD_POS_CENTRE;
    s.bg = SD_BG_FLAT;
    s.bg1 = (sd_colour_t)bt_rng_below(key, D_BG1, SD_COLOUR_COUNT);
    s.bg2 = SD_COLOUR_NONE;
    s_place(&s, key);
    *out = s;
}

/* ---- captions ---- */

/* "an orange star", "a red star" */
static const char *s_article(const char *next)
{
    return next[0] && strchr("aeiou", next[0]) ? "an" : "a";
}

int sd_world_caption(const sd_scene_t *s, const char *identifier, char *buf, size_t cap)
{
    return sd_world_caption_parts(s, identifier, SD_CAPTION_ALL, buf, cap);
}

int sd_world_caption_parts(const sd_scene_t *s, const char *identifier, unsigned parts, char *buf, size_t cap)
{
    char bg[128];
    switch (s->bg) {
    case SD_BG_FLAT:
        snprintf(bg, sizeof bg, "%s %s background", s_article(sd_colour_name(s->bg1)), sd_colour_name(s->bg1));
        break;
    case SD_BG_GRADIENT:
        snprintf(bg, sizeof bg, "a gradient from %s to %s", sd_colour_name(s->bg1), sd_colour_name(s->bg2));
        break;
    default:
        snprintf(bg, sizeof bg, "%s %s and %s stripes", s->bg == SD_BG_HSTRIPES ? "horizontal" : "vertical",
                 sd_colour_name(s->bg1), sd_colour_name(s->bg2));
        break;
    }
    const char *size = sd_size_name(s->size), *pos = sd_pos_phrase(s->pos);
    const char *what = s->subject ? (identifier ? identifier : "sks")
                       : parts & SD_CAPTION_COLOUR ? sd_colour_name(s->colour)
                                                    : "";
    const char *first = *size ? size : *what ? what : sd_shape_name(s->shape);
    bool with_bg = (parts & SD_CAPTION_BACKGROUND) != 0;
    int n = snprintf(buf, cap, "%s%s%s%s%s %s%s%s%s%s", s_article(first), *size ? " " : "", size, *what ? " " : "", what,
                     sd_shape_name(s->shape), *pos ? " " : "", pos, with_bg ? " on " : "", with_bg ? bg : "");
    return n < 0 || (size_t)n >= cap ? BT_EINVAL : n;
}

/* ---- rendering ---- */

#define S_SUB 4 /* subsamples per pixel along each axis */

static void s_rgb(uint32_t c, double out[3])
{
    out[0] = (c >> 16) & 255;
    out[1] = (c >> 8) & 255;
    out[2] = c & 255;
}

bt_img_t *sd_world_render(const sd_scene_t *s, int side)
{
    if (side < 16 || side > BT_IMG_MAX_SIDE) {
        BT_ERROR("world: a side of %d pixels is outside 16..%d", side, BT_IMG_MAX_SIDE);
        return NULL;
    }
    if (s->shape < 0 || s->shape >= SD_SHAPE_COUNT || s->bg < 0 || s->bg >= SD_BG_COUNT || s->bg1 < 0 ||
        s->bg1 >= SD_COLOUR_ALL || (s->bg != SD_BG_FLAT && (s->bg2 < 0 || s->bg2 >= SD_COLOUR_ALL)) ||
        (!s->subject && (s->colour < 0 || s->colour >= SD_COLOUR_ALL)) || !(s->r > 0)) {
        BT_ERROR("world: the scene is not one the world can draw");
        return NULL;
    }
    bt_img_t *img = bt_img_new(side, side, 3);
    if (!img) return NULL;
    double c1[3], c2[3], fg[3], top[3], bottom[3];
    s_rgb(s_colour_rgb[s->bg1], c1);
    s_rgb(s->bg == SD_BG_FLAT ? s_colour_rgb[s->bg1] : s_colour_rgb[s->bg2], c2);
    s_rgb(s->subject ? 0 : s_colour_rgb[s->colour], fg);
    s_rgb(s_colour_rgb[SD_COLOUR_MAGENTA], top);
    s_rgb(s_colour_rgb[SD_COLOUR_CYAN], bottom);
    /* pixels the shape's disc can touch */
    int x0 = (int)floor((s->cx - s->r) * side) - 1, x1 = (int)ceil((s->cx + s->r) * side) + 1;
    int y0 = (int)floor((s->cy - s->r) * side) - 1, y1 = (int)ceil((s->cy + s->r) * side) + 1;
    for (int y = 0; y < side; y++)
        for (int x = 0; x < side; x++) {
            double acc[3] = {0, 0, 0};
            bool near = x >= x0 && x <= x1 && y >= y0 && y <= y1;
            for (int j = 0; j < S_SUB; j++)
                for (int i = 0; i < S_SUB; i++) {
                    double xf = (x + (i + 0.5) / S_SUB) / side, yf = (y + (j + 0.5) / S_SUB) / side;
                    const double *c = NULL;
                    double mix[3];
                    if (near) {
                        double u = (xf - s->cx) / s->r, v = (yf - s->cy) / s->r;
                        if (sd_shape_inside(s->shape, u, v)) c = s->subject ? (v < 0 ? top : bottom) : fg;
                    }
                    if (!c) {
                        switch (s->bg) {
                        case SD_BG_FLAT: c = c1; break;
                        case SD_BG_GRADIENT:
                            for (int k = 0; k < 3; k++)
                                mix[k] = c1[k] + (c2[k] - c1[k]) * yf;
                            c = mix;
                            break;
                        case SD_BG_HSTRIPES: c = ((int)floor(yf * 8.0) & 1) ? c2 : c1; break;
                        default: c = ((int)floor(xf * 8.0) & 1) ? c2 : c1; break;
                        }
                    }
                    for (int k = 0; k < 3; k++)
                        acc[k] += c[k];
                }
            uint8_t *p = bt_img_pixel(img, x, y);
            for (int k = 0; k < 3; k++) {
                double v = floor(acc[k] / (S_SUB * S_SUB) + 0.5);
                p[k] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
            }
        }
    return img;
}

/* ---- the parser ---- */

static int s_find(const char *const *names, int n, const char *w)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(names[i], w)) return i;
    return -1;
}

#define S_MAX_WORDS 96

void sd_world_parse(const char *prompt, const char *identifier, sd_world_expect_t *out)
{
    sd_world_expect_t e = {SD_SHAPE_NONE, SD_COLOUR_NONE, false,          SD_SIZE_MEDIUM,
                           SD_POS_CENTRE, SD_BG_NONE,     SD_COLOUR_NONE, SD_COLOUR_NONE};
    const char *id = identifier ? identifier : "sks";
    char words[S_MAX_WORDS][24];
    int n = 0;
    for (const char *p = prompt ? prompt : ""; *p && n < S_MAX_WORDS;) {
        while (*p && !isalnum((unsigned char)*p))
            p++;
        int len = 0;
        while (isalnum((unsigned char)*p)) {
            if (len < 23) words[n][len++] = (char)tolower((unsigned char)*p);
            p++;
        }
        if (len) words[n][len] = '\0', n++;
    }
    /* the object: the first shape word; its colour and size are the words before it */
    int k = 0;
    while (k < n && s_find(s_shape_names, SD_SHAPE_COUNT, words[k]) < 0)
        k++;
    if (k < n) e.shape = (sd_shape_t)s_find(s_shape_names, SD_SHAPE_COUNT, words[k]);
    for (int i = 0; i < n; i++)
        if (!strcmp(words[i], id)) e.subject = true;
    for (int i = 0; i < k; i++) {
        int c = s_find(s_colour_names, SD_COLOUR_COUNT, words[i]);
        if (c >= 0 && e.colour == SD_COLOUR_NONE) e.colour = (sd_colour_t)c;
        if (!strcmp(words[i], "small")) e.size = SD_SIZE_SMALL;
        if (!strcmp(words[i], "big")) e.size = SD_SIZE_BIG;
    }
    /* after it: the position (until the background's "on"), then the background */
    int bg_at = n;
    for (int i = k + 1; i < n; i++)
        if (!strcmp(words[i], "background") || !strcmp(words[i], "gradient") || !strcmp(words[i], "stripes")) {
            bg_at = i;
            break;
        }
    bool top = false, bottom = false, left = false, right = false;
    for (int i = k + 1; i < n && i < bg_at; i++) {
        /* the background's own words (its colours, "horizontal") come after its "on"; position
         * words come before it */
        top |= !strcmp(words[i], "top");
        bottom |= !strcmp(words[i], "bottom");
        left |= !strcmp(words[i], "left");
        right |= !strcmp(words[i], "right");
    }
    if (top && left)
        e.pos = SD_POS_TOP_LEFT;
    else if (top && right)
        e.pos = SD_POS_TOP_RIGHT;
    else if (bottom && left)
        e.pos = SD_POS_BOTTOM_LEFT;
    else if (bottom && right)
        e.pos = SD_POS_BOTTOM_RIGHT;
    else if (top)
        e.pos = SD_POS_TOP;
    else if (bottom)
        e.pos = SD_POS_BOTTOM;
    else if (left)
        e.pos = SD_POS_LEFT;
    else if (right)
        e.pos = SD_POS_RIGHT;
    if (bg_at < n) {
        /* the colours between the last "on" before it and the end of the background phrase */
        int on = bg_at;
        while (on > k && strcmp(words[on], "on"))
            on--;
        sd_colour_t cs[2] = {SD_COLOUR_NONE, SD_COLOUR_NONE};
        int nc = 0;
        bool horizontal = false, vertical = false;
        int end = !strcmp(words[bg_at], "gradient") ? n : bg_at;
        for (int i = on + 1; i < end && nc < 2; i++) {
            int c = s_find(s_colour_names, SD_COLOUR_COUNT, words[i]);
            if (c >= 0) cs[nc++] = (sd_colour_t)c;
            horizontal |= !strcmp(words[i], "horizontal");
            vertical |= !strcmp(words[i], "vertical");
        }
        if (!strcmp(words[bg_at], "background") && nc == 1) {
            e.bg = SD_BG_FLAT;
            e.bg1 = cs[0];
        } else if (!strcmp(words[bg_at], "gradient") && nc == 2) {
            e.bg = SD_BG_GRADIENT;
            e.bg1 = cs[0], e.bg2 = cs[1];
        } else if (!strcmp(words[bg_at], "stripes") && nc == 2 && horizontal != vertical) {
            e.bg = horizontal ? SD_BG_HSTRIPES : SD_BG_VSTRIPES;
            e.bg1 = cs[0], e.bg2 = cs[1];
        }
    }
    *out = e;
}

void sd_world_expect_of(const sd_scene_t *s, sd_world_expect_t *out)
{
    *out =
        (sd_world_expect_t){s->shape, s->subject ? SD_COLOUR_NONE : s->colour,      s->subject, s->size, s->pos, s->bg,
                            s->bg1,   s->bg == SD_BG_FLAT ? SD_COLOUR_NONE : s->bg2};
}
