/*
 * test_world.c — the synthetic world (diffusion/world.h) and its measurement
 * (diffusion/world_eval.h).
 *
 *   determinism   the same (seed, index) renders the same bytes; other seeds differ; scene i
 *                 does not depend on how many scenes are drawn or in which order;
 *   vocabulary    every word of every caption is one token of booth's built-in CLIP tokenizer;
 *   grammar       every background leaves colours that stand out; captions parse back into
 *                 their scenes;
 *   measurement   on 500 rendered scenes at 64 px and at 32 px, every measured attribute
 *                 (background kind and colours in order, colour, shape, size, position) equals
 *                 the scene's for >= 99% of them (the figures are printed; a failing attribute
 *                 prints its confusion); the subject is found on every subject render and on no
 *                 world scene;
 *   robustness    pictures a model might draw: blurred (64 -> 32 -> 64 px, bicubic), with noise
 *                 (sigma 8) and every channel shifted by up to 20: >= 97% per attribute, the subject
 *                 still found, the pattern still never on the world;
 *   metrics       the tally on rendered scenes gives the rates it should.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rng.h"
#include "diffusion/tokenizer.h"
#include "diffusion/world.h"
#include "diffusion/world_eval.h"
#include "testutil.h"

static bool s_same_img(const bt_img_t *a, const bt_img_t *b)
{
    return a && b && a->width == b->width && a->height == b->height && a->channels == b->channels &&
           !memcmp(a->data, b->data, (size_t)a->width * a->height * a->channels);
}

TEST(world_deterministic)
{
    for (uint64_t i = 0; i < 20; i++) {
        sd_scene_t a, b, c;
        sd_world_scene(7, i, &a);
        sd_world_scene(7, i, &b);
        sd_world_scene(8, i, &c);
        bt_img_t *ia = sd_world_render(&a, 64), *ib = sd_world_render(&b, 64), *ic = sd_world_render(&c, 64);
        CHECKF(s_same_img(ia, ib), "scene %d of seed 7 rendered twice differs", (int)i);
        CHECKF(!s_same_img(ia, ic), "scene %d: seeds 7 and 8 give the same picture", (int)i);
        bt_img_destroy(&ia);
        bt_img_destroy(&ib);
        bt_img_destroy(&ic);
    }
    /* scene i depends on (seed, i) only: drawn backwards, or far out, it is the same */
    sd_scene_t fwd[50], s;
    for (int i = 0; i < 50; i++)
        sd_world_scene(3, (uint64_t)i, &fwd[i]);
    for (int i = 49; i >= 0; i--) {
        sd_world_scene(3, (uint64_t)i, &s);
        CHECK(!memcmp(&s, &fwd[i], sizeof s));
    }
    /* different indices make different worlds: 50 captions, mostly distinct */
    char caps[50][160];
    int distinct = 0;
    for (int i = 0; i < 50; i++) {
        sd_world_caption(&fwd[i], NULL, caps[i], sizeof caps[i]);
        bool seen = false;
        for (int j = 0; j < i; j++)
            seen |= !strcmp(caps[i], caps[j]);
        distinct += !seen;
    }
    CHECKF(distinct >= 45, "only %d distinct captions of 50", distinct);
    /* the subject's stream is not the world's */
    sd_world_subject_scene(3, 0, &s);
    CHECK(s.subject && s.shape == SD_SHAPE_STAR && s.bg == SD_BG_FLAT);
}

TEST(world_render_sizes)
{
    sd_scene_t s;
    sd_world_scene(1, 0, &s);
    bt_img_t *img = sd_world_render(&s, 16);
    CHECK(img && img->width == 16 && img->height == 16 && img->channels == 3);
    bt_img_destroy(&img);
    img = sd_world_render(&s, 37);
    CHECK(img && img->width == 37);
    bt_img_destroy(&img);
    CHECK(sd_world_render(&s, 15) == NULL); /* with one line saying why */
}

TEST(world_captions_are_single_tokens)
{
    sd_tokenizer_t *t = sd_tokenizer_load_builtin(NULL);
    REQUIRE(t);
    /* every word the grammar can say, and 300 whole captions */
    char words[4096] = "a on the to from and background gradient horizontal vertical stripes sks";
    for (int k = 0; k < SD_SHAPE_COUNT; k++)
        strcat(strcat(words, " "), sd_shape_name((sd_shape_t)k));
    for (int k = 0; k < SD_COLOUR_COUNT; k++)
        strcat(strcat(words, " "), sd_colour_name((sd_colour_t)k));
    for (int k = 0; k < SD_SIZE_COUNT; k++)
        strcat(strcat(words, " "), sd_size_name((sd_size_t)k));
    for (int k = 0; k < SD_POS_COUNT; k++)
        strcat(strcat(words, " "), sd_pos_phrase((sd_pos_t)k));
    char buf[300][200];
    for (int i = 0; i < 300; i++) {
        sd_scene_t s;
        if (i % 10 == 9)
            sd_world_subject_scene(5, (uint64_t)i, &s);
        else
            sd_world_scene(5, (uint64_t)i, &s);
        REQUIRE(sd_world_caption(&s, NULL, buf[i], sizeof buf[i]) > 0);
    }
    for (int i = -1; i < 300; i++) {
        const char *text = i < 0 ? words : buf[i];
        char copy[4096];
        snprintf(copy, sizeof copy, "%s", text);
        for (char *save = NULL, *w = strtok_r(copy, " ", &save); w; w = strtok_r(NULL, " ", &save)) {
            sd_tok_result_t r;
            REQUIRE(sd_tokenize(t, w, &r) == 0);
            CHECKF(r.n_tokens == 1, "'%s' (in \"%s\") is %d tokens", w, i < 0 ? "the vocabulary" : text, r.n_tokens);
            sd_tok_result_free(&r);
        }
    }
    sd_tokenizer_destroy(&t);
}

/* Every background the world can draw (each kind and pair of colours: 20000 scenes draw each of
 * the 176 about 45 times or more) leaves at least 3 palette colours that stand out from it; every
 * shape keeps clear of the border. */
#define NC ((int)SD_COLOUR_COUNT)
TEST(world_every_background_has_colours)
{
    static uint8_t seen[SD_BG_COUNT][NC][NC + 1]; /* colours drawn per (kind, bg1, bg2 or NC for flat) */
    int counts[NC] = {0};
    for (uint64_t i = 0; i < 20000; i++) {
        sd_scene_t s;
        sd_world_scene(11, i, &s);
        REQUIRE(s.colour >= 0 && (int)s.colour < NC && s.bg >= 0 && s.bg < SD_BG_COUNT);
        CHECK(s.colour != s.bg1 && s.colour != s.bg2 && s.bg1 != s.bg2);
        counts[s.colour]++;
        seen[s.bg][s.bg1][s.bg == SD_BG_FLAT ? NC : s.bg2] |= (uint8_t)(1u << s.colour);
        CHECK(s.cx - s.r >= 0.125 && s.cx + s.r <= 0.875 && s.cy - s.r >= 0.125 && s.cy + s.r <= 0.875);
    }
    for (int k = 0; k < NC; k++)
        CHECKF(counts[k] > 1250, "%s drawn %d times of 20000", sd_colour_name((sd_colour_t)k), counts[k]);
    int combos = 0;
    for (int b = 0; b < SD_BG_COUNT; b++)
        for (int c1 = 0; c1 < NC; c1++)
            for (int c2 = 0; c2 <= NC; c2++) {
                if ((b == SD_BG_FLAT) != (c2 == NC) || c1 == c2) continue;
                combos++;
                CHECKF(__builtin_popcount(seen[b][c1][c2]) >= 3, "%s %s/%s: colours 0x%02x",
                       sd_bg_kind_name((sd_bg_kind_t)b), sd_colour_name((sd_colour_t)c1),
                       sd_colour_name((sd_colour_t)c2), seen[b][c1][c2]);
            }
    CHECK_INT_EQ(combos, 8 + 3 * 56);
}
#undef NC

TEST(world_parse_round_trip)
{
    for (uint64_t i = 0; i < 1000; i++) {
        sd_scene_t s;
        if (i % 5 == 4)
            sd_world_subject_scene(2, i, &s);
        else
            sd_world_scene(2, i, &s);
        char cap[200];
        REQUIRE(sd_world_caption(&s, NULL, cap, sizeof cap) > 0);
        sd_world_expect_t want, got;
        sd_world_expect_of(&s, &want);
        sd_world_parse(cap, NULL, &got);
        bool same = want.shape == got.shape && want.colour == got.colour && want.subject == got.subject &&
                    want.size == got.size && want.pos == got.pos && want.bg == got.bg && want.bg1 == got.bg1 &&
                    want.bg2 == got.bg2;
        CHECKF(same, "\"%s\" parses to shape %d colour %d subject %d size %d pos %d bg %d %d %d", cap, got.shape,
               got.colour, got.subject, got.size, got.pos, got.bg, got.bg1, got.bg2);
    }
    /* looser prompts: what is not said is NONE (size and position: the world's defaults) */
    sd_world_expect_t e;
    sd_world_parse("a star", NULL, &e);
    CHECK(e.shape == SD_SHAPE_STAR && e.colour == SD_COLOUR_NONE && !e.subject && e.bg == SD_BG_NONE &&
          e.size == SD_SIZE_MEDIUM && e.pos == SD_POS_CENTRE);
    sd_world_parse("A sks star on a Green background.", NULL, &e);
    CHECK(e.shape == SD_SHAPE_STAR && e.subject && e.colour == SD_COLOUR_NONE && e.bg == SD_BG_FLAT &&
          e.bg1 == SD_COLOUR_GREEN);
    sd_world_parse("a photo of zwx star", "zwx", &e);
    CHECK(e.subject && e.shape == SD_SHAPE_STAR);
    sd_world_parse("a small red heart on the right on red and white stripes", NULL, &e);
    CHECK(e.size == SD_SIZE_SMALL && e.colour == SD_COLOUR_RED && e.pos == SD_POS_RIGHT && e.bg == SD_BG_NONE);
    sd_world_parse("", NULL, &e);
    CHECK(e.shape == SD_SHAPE_NONE && e.bg == SD_BG_NONE);
}

/* Partial captions (what booth pretrain mixes in): the parts left out parse as unsaid, the rest as
 * the full caption says; every part set gives a caption of single tokens. */
TEST(world_partial_captions)
{
    for (uint64_t i = 0; i < 400; i++) {
        sd_scene_t s;
        sd_world_scene(4, i, &s);
        sd_world_expect_t want;
        sd_world_expect_of(&s, &want);
        for (unsigned parts = 0; parts <= SD_CAPTION_ALL; parts++) {
            char cap[200], full[200];
            REQUIRE(sd_world_caption_parts(&s, NULL, parts, cap, sizeof cap) > 0);
            REQUIRE(sd_world_caption(&s, NULL, full, sizeof full) > 0);
            if (parts == SD_CAPTION_ALL) CHECKF(!strcmp(cap, full), "\"%s\" vs \"%s\"", cap, full);
            sd_world_expect_t got;
            sd_world_parse(cap, NULL, &got);
            sd_colour_t colour = parts & SD_CAPTION_COLOUR ? want.colour : SD_COLOUR_NONE;
            sd_bg_kind_t bg = parts & SD_CAPTION_BACKGROUND ? want.bg : SD_BG_NONE;
            CHECKF(got.shape == want.shape && got.colour == colour && got.size == want.size && got.pos == want.pos &&
                       got.bg == bg,
                   "\"%s\" (parts %u) parses to shape %d colour %d size %d pos %d bg %d", cap, parts, got.shape,
                   got.colour, got.size, got.pos, got.bg);
        }
    }
    sd_scene_t s;
    sd_world_scene(4, 0, &s);
    s.size = SD_SIZE_MEDIUM;
    s.pos = SD_POS_CENTRE;
    s.shape = SD_SHAPE_STAR;
    char cap[200];
    REQUIRE(sd_world_caption_parts(&s, NULL, 0, cap, sizeof cap) > 0);
    CHECKF(!strcmp(cap, "a star"), "\"%s\"", cap);
}

/* Renders n scenes (world, or the subject's) at side px and measures them; prints the accuracy per
 * attribute and, where one is under 99%, its confusions. */
typedef struct {
    int n, bg, colour, shape, size, pos, subject;
} s_acc_t;

static const char *s_bg_str(sd_bg_kind_t k, sd_colour_t a, sd_colour_t b, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s %s%s%s", sd_bg_kind_name(k), sd_colour_name(a), b >= 0 ? "/" : "",
             b >= 0 ? sd_colour_name(b) : "");
    return buf;
}

static s_acc_t s_measure_world(int side, int n, bool subject, int *shape_conf /* SHAPE_COUNT^2 or NULL */)
{
    s_acc_t a = {0};
    int printed = 0;
    for (int i = 0; i < n; i++) {
        sd_scene_t s;
        if (subject)
            sd_world_subject_scene(9, (uint64_t)i, &s);
        else
            sd_world_scene(9, (uint64_t)i, &s);
        bt_img_t *img = sd_world_render(&s, side);
        sd_world_measure_t m;
        if (!img || sd_world_measure(img, &m)) {
            bt_img_destroy(&img);
            continue;
        }
        bt_img_destroy(&img);
        a.n++;
        bool bg = m.bg == s.bg && m.bg1 == s.bg1 && m.bg2 == s.bg2;
        bool colour = subject || (m.found && m.colour == s.colour);
        bool shape = m.found && m.shape == s.shape, size = m.found && m.size == s.size;
        bool pos = m.found && m.pos == s.pos;
        a.bg += bg, a.colour += colour, a.shape += shape, a.size += size, a.pos += pos;
        a.subject += m.found && m.is_subject;
        if (shape_conf && m.found) shape_conf[s.shape * SD_SHAPE_COUNT + m.shape]++;
        if ((!bg || !colour || !shape || !size || !pos) && printed++ < 12) {
            char cap[200], b1[64], b2[64];
            sd_world_caption(&s, NULL, cap, sizeof cap);
            fprintf(stderr,
                    "    %d px, scene %d \"%s\": measured bg %s, %s %s (share %.2f), size %s (r %.3f vs %.3f), "
                    "pos %d (%.3f, %.3f), iou c%.2f s%.2f t%.2f *%.2f h%.2f; scene bg %s\n",
                    side, i, cap, s_bg_str(m.bg, m.bg1, m.bg2, b1, sizeof b1), sd_colour_name(m.colour),
                    sd_shape_name(m.shape), m.colour_share, sd_size_name(m.size), m.r, s.r, m.pos, m.cx, m.cy, m.iou[0],
                    m.iou[1], m.iou[2], m.iou[3], m.iou[4], s_bg_str(s.bg, s.bg1, s.bg2, b2, sizeof b2));
        }
    }
    return a;
}

static void s_check_acc(const char *what, int side, s_acc_t a, const int *conf)
{
    fprintf(stderr,
            "%s at %d px over %d: background %.1f%%, colour %.1f%%, shape %.1f%%, size %.1f%%, position %.1f%%\n", what,
            side, a.n, 100.0 * a.bg / a.n, 100.0 * a.colour / a.n, 100.0 * a.shape / a.n, 100.0 * a.size / a.n,
            100.0 * a.pos / a.n);
    int min = (int)ceil(0.99 * a.n);
    CHECKF(a.bg >= min, "%s %d px: background %d of %d", what, side, a.bg, a.n);
    CHECKF(a.colour >= min, "%s %d px: colour %d of %d", what, side, a.colour, a.n);
    CHECKF(a.shape >= min, "%s %d px: shape %d of %d", what, side, a.shape, a.n);
    CHECKF(a.size >= min, "%s %d px: size %d of %d", what, side, a.size, a.n);
    CHECKF(a.pos >= min, "%s %d px: position %d of %d", what, side, a.pos, a.n);
    if (conf && a.shape < a.n) {
        fprintf(stderr, "    shape confusion (rows: drawn, columns: measured):\n");
        for (int r = 0; r < SD_SHAPE_COUNT; r++) {
            fprintf(stderr, "    %-9s", sd_shape_name((sd_shape_t)r));
            for (int c = 0; c < SD_SHAPE_COUNT; c++)
                fprintf(stderr, " %4d", conf[r * SD_SHAPE_COUNT + c]);
            fprintf(stderr, "\n");
        }
    }
}

TEST(world_measure_64px)
{
    int conf[SD_SHAPE_COUNT * SD_SHAPE_COUNT] = {0};
    s_acc_t a = s_measure_world(64, 500, false, conf);
    REQUIRE(a.n == 500);
    s_check_acc("world", 64, a, conf);
    CHECKF(a.subject == 0, "the subject measured on %d world scenes", a.subject);
}

TEST(world_measure_32px)
{
    int conf[SD_SHAPE_COUNT * SD_SHAPE_COUNT] = {0};
    s_acc_t a = s_measure_world(32, 500, false, conf);
    REQUIRE(a.n == 500);
    s_check_acc("world", 32, a, conf);
    CHECKF(a.subject == 0, "the subject measured on %d world scenes", a.subject);
}

TEST(world_measure_subject)
{
    for (int side = 32; side <= 64; side *= 2) {
        s_acc_t a = s_measure_world(side, 100, true, NULL);
        REQUIRE(a.n == 100);
        s_check_acc("subject", side, a, NULL);
        CHECKF(a.subject == a.n, "%d px: the subject found on %d of %d subject renders", side, a.subject, a.n);
    }
    /* the subject in the world's other contexts: small, in a corner, on stripes */
    sd_scene_t s;
    sd_world_scene(4, 0, &s);
    s.subject = true, s.shape = SD_SHAPE_STAR, s.size = SD_SIZE_SMALL, s.pos = SD_POS_TOP_LEFT;
    s.cx = s.cy = 0.3, s.r = 0.15, s.bg = SD_BG_VSTRIPES, s.bg1 = SD_COLOUR_GREEN, s.bg2 = SD_COLOUR_WHITE;
    bt_img_t *img = sd_world_render(&s, 64);
    sd_world_measure_t m;
    REQUIRE(img && sd_world_measure(img, &m) == 0);
    CHECKF(m.is_subject && m.pos == SD_POS_TOP_LEFT && m.bg == SD_BG_VSTRIPES, "pattern %.2f pos %d bg %d", m.pattern,
           m.pos, m.bg);
    bt_img_destroy(&img);
}

/* A render as a model might draw it: blurred, noisy, its colours off by up to shift per channel. */
static void s_degrade(bt_img_t **img, uint64_t i, double sigma, double shift)
{
    bt_img_t *half = bt_img_resize(*img, (*img)->width / 2, (*img)->height / 2, BT_IMG_BICUBIC);
    bt_img_t *back = half ? bt_img_resize(half, (*img)->width, (*img)->height, BT_IMG_BICUBIC) : NULL;
    bt_img_destroy(&half);
    bt_img_destroy(img);
    if (!back) return;
    int64_t n = (int64_t)back->width * back->height * 3;
    float *z = malloc((size_t)n * sizeof *z);
    if (!z) {
        bt_img_destroy(&back);
        return;
    }
    bt_rng_normal_fill(z, n, bt_rng_key(99, i));
    double off[3];
    for (int k = 0; k < 3; k++)
        off[k] = shift * (2.0 * bt_rng_uniform(bt_rng_key(98, i), (uint64_t)k) - 1.0);
    for (int64_t k = 0; k < n; k++) {
        double v = round(back->data[k] + sigma * z[k] + off[k % 3]);
        back->data[k] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
    }
    free(z);
    *img = back;
}

TEST(world_measure_robust)
{
    int n = 200, bg = 0, colour = 0, shape = 0, size = 0, pos = 0, pattern = 0, subject = 0;
    for (int i = 0; i < n; i++) {
        sd_scene_t s;
        sd_world_scene(13, (uint64_t)i, &s);
        bt_img_t *img = sd_world_render(&s, 64);
        s_degrade(&img, (uint64_t)i, 8, 20);
        sd_world_measure_t m;
        REQUIRE(img && sd_world_measure(img, &m) == 0);
        bt_img_destroy(&img);
        sd_world_expect_t e;
        sd_world_expect_of(&s, &e);
        bg += sd_world_bg_ok(&e, &m), colour += sd_world_colour_ok(&e, &m), shape += sd_world_shape_ok(&e, &m);
        size += m.found && m.size == s.size, pos += m.found && m.pos == s.pos, pattern += m.is_pattern;
        sd_world_subject_scene(13, (uint64_t)i, &s);
        img = sd_world_render(&s, 64);
        s_degrade(&img, (uint64_t)i + 1000, 8, 20);
        REQUIRE(img && sd_world_measure(img, &m) == 0);
        bt_img_destroy(&img);
        subject += m.is_subject;
    }
    fprintf(stderr,
            "degraded world at 64 px over %d: background %d, colour %d, shape %d, size %d, position %d; "
            "subject found on %d of %d\n",
            n, bg, colour, shape, size, pos, subject, n);
    int min = (int)ceil(0.97 * n);
    CHECK(bg >= min && colour >= min && shape >= min && size >= min && pos >= min);
    CHECK(subject >= min && pattern == 0);
}

TEST(world_metrics)
{
    sd_world_tally_t t = {0};
    /* world scenes measured against their captions, the subject against "a sks star ...", and
     * plain "a star" pictures */
    for (uint64_t i = 0; i < 60; i++) {
        sd_scene_t s;
        if (i < 20)
            sd_world_scene(6, i, &s);
        else if (i < 40)
            sd_world_subject_scene(6, i, &s);
        else {
            sd_world_scene(6, i, &s);
            s.shape = SD_SHAPE_STAR;
        }
        char cap[200];
        sd_world_caption(&s, NULL, cap, sizeof cap);
        sd_world_expect_t e;
        sd_world_parse(i < 40 ? cap : "a star", NULL, &e);
        bt_img_t *img = sd_world_render(&s, 64);
        sd_world_measure_t m;
        REQUIRE(img && sd_world_measure(img, &m) == 0);
        bt_img_destroy(&img);
        sd_world_tally_add(&t, &e, &m);
    }
    sd_world_metrics_t r;
    sd_world_metrics(&t, &r);
    CHECKF(r.colour_acc == 1.0 && r.shape_acc == 1.0 && r.bg_acc == 1.0, "%g %g %g", r.colour_acc, r.shape_acc,
           r.bg_acc);
    CHECKF(r.subject_fidelity == 1.0 && r.subject_bg_acc == 1.0 && r.subject_colours_rate == 1.0, "%g %g %g",
           r.subject_fidelity, r.subject_bg_acc, r.subject_colours_rate);
    CHECKF(r.pattern_rate == 0.0, "%g", r.pattern_rate);
    CHECK(t.div_n == 20 && r.distinct_colours >= 4 && r.colour_entropy > 1.5 && r.colour_entropy <= 3.0);
    CHECKF(r.subject_colour_rate == 0.0, "%g", r.subject_colour_rate);
    /* the class drifting: 5 subject pictures among the plain "a star" ones */
    for (uint64_t i = 0; i < 5; i++) {
        sd_scene_t s;
        sd_world_subject_scene(7, i, &s);
        sd_world_expect_t e;
        sd_world_parse("a star", NULL, &e);
        bt_img_t *img = sd_world_render(&s, 64);
        sd_world_measure_t m;
        REQUIRE(img && sd_world_measure(img, &m) == 0);
        bt_img_destroy(&img);
        sd_world_tally_add(&t, &e, &m);
    }
    sd_world_metrics(&t, &r);
    /* the pattern rate counts every prompt without the identifier (45), the colour rate the colourless ones (25) */
    CHECKF(r.subject_colour_rate == 0.2 && fabs(r.pattern_rate - 5.0 / 45) < 1e-12, "%g %g", r.subject_colour_rate,
           r.pattern_rate);
    /* empty sets are NaN */
    sd_world_tally_t z = {0};
    sd_world_metrics(&z, &r);
    CHECK(isnan(r.colour_acc) && isnan(r.subject_fidelity) && isnan(r.colour_entropy) && r.distinct_colours == 0);
    /* a blank picture: nothing found, background flat */
    bt_img_t *blank = bt_img_new(32, 32, 3);
    REQUIRE(blank);
    bt_img_fill(blank, 0x1e3cdc);
    sd_world_measure_t m;
    REQUIRE(sd_world_measure(blank, &m) == 0);
    CHECK(!m.found && m.bg == SD_BG_FLAT && m.bg1 == SD_COLOUR_BLUE && m.shape == SD_SHAPE_NONE);
    bt_img_destroy(&blank);
}
