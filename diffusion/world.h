/*
 * world.h — booth's synthetic captioned world: simple coloured shapes on simple backgrounds, with
 * captions in plain English, generated deterministically (docs/WORLD.md, "The world").
 *
 * A scene is a shape (circle, square, triangle, star, heart) of one palette colour, a size (small,
 * unstated medium, big), a position (unstated centre, four sides, four corners for small shapes)
 * and a background (one flat colour, a gradient from one colour at the top to another at the
 * bottom, or horizontal or vertical stripes of two colours):
 *
 *   "a red star on a blue background"
 *   "a small green circle in the top left corner on a white background"
 *   "a big yellow heart on a gradient from purple to black"
 *   "a blue square on the left on vertical red and white stripes"
 *
 * Every word of every caption is one token of CLIP's BPE vocabulary (tests/unit/test_world.c
 * checks it against booth's built-in tokenizer).
 *
 * Scene i of the world with seed S is a pure function of (S, i) through common/rng.h's
 * counter-based generator, so any subset of a world regenerates identically, whatever N or the
 * order. The rendering is a pure function of the scene and the side length: each pixel is the
 * average of 4 x 4 subsamples (antialiased edges), rounded once, in double precision.
 *
 * The subject (DreamBooth's "sks star") is a five-pointed star whose upper half (above its
 * centre) is magenta and lower half cyan: two colours outside the world's palette, on one
 * shape, split along a horizontal line so that a horizontal flip (training's random flip) leaves
 * it unchanged. No world scene has it; world_eval.h detects it.
 *
 * Geometry: every shape is defined in a unit disc around its area centroid and drawn with
 * radius r = size * side; shapes stay 2 pixels clear of a 16-pixel image's border (0.125 of the
 * side), so the border always shows background only (world_eval.h reads the background there).
 */
#ifndef BOOTH_DIFFUSION_WORLD_H
#define BOOTH_DIFFUSION_WORLD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/image.h"

typedef enum sd_shape {
    SD_SHAPE_CIRCLE,
    SD_SHAPE_SQUARE,
    SD_SHAPE_TRIANGLE,
    SD_SHAPE_STAR,
    SD_SHAPE_HEART,
    SD_SHAPE_COUNT,
    SD_SHAPE_NONE = -1, /* measured: nothing found; expected: the prompt does not say */
} sd_shape_t;

/* The world's palette (SD_COLOUR_COUNT entries), then the subject's two colours, which no world
 * scene uses. */
typedef enum sd_colour {
    SD_COLOUR_RED,
    SD_COLOUR_ORANGE,
    SD_COLOUR_YELLOW,
    SD_COLOUR_GREEN,
    SD_COLOUR_BLUE,
    SD_COLOUR_PURPLE,
    SD_COLOUR_WHITE,
    SD_COLOUR_BLACK,
    SD_COLOUR_COUNT,
    SD_COLOUR_MAGENTA = SD_COLOUR_COUNT, /* the subject's upper half */
    SD_COLOUR_CYAN,                      /* the subject's lower half */
    SD_COLOUR_ALL,                       /* palette + subject colours */
    SD_COLOUR_NONE = -1,
} sd_colour_t;

typedef enum sd_size { SD_SIZE_SMALL, SD_SIZE_MEDIUM, SD_SIZE_BIG, SD_SIZE_COUNT, SD_SIZE_NONE = -1 } sd_size_t;

/* Where the shape's centre is; the caption says nothing for the centre. */
typedef enum sd_pos {
    SD_POS_CENTRE,
    SD_POS_LEFT,
    SD_POS_RIGHT,
    SD_POS_TOP,
    SD_POS_BOTTOM,
    SD_POS_TOP_LEFT, /* corners: small shapes only */
    SD_POS_TOP_RIGHT,
    SD_POS_BOTTOM_LEFT,
    SD_POS_BOTTOM_RIGHT,
    SD_POS_COUNT,
    SD_POS_NONE = -1,
} sd_pos_t;

typedef enum sd_bg_kind {
    SD_BG_FLAT,     /* c1 */
    SD_BG_GRADIENT, /* c1 at the top to c2 at the bottom, linear in y */
    SD_BG_HSTRIPES, /* 8 horizontal stripes of side/8, c1 first (at the top) */
    SD_BG_VSTRIPES, /* 8 vertical stripes, c1 first (at the left) */
    SD_BG_COUNT,
    SD_BG_NONE = -1,
} sd_bg_kind_t;

typedef struct sd_scene {
    sd_shape_t shape;
    sd_colour_t colour; /* a palette colour; ignored when subject */
    bool subject;       /* the magenta-over-cyan star ("a sks star"); shape is SD_SHAPE_STAR */
    sd_size_t size;
    sd_pos_t pos;
    sd_bg_kind_t bg;
    sd_colour_t bg1, bg2; /* bg2 unused for SD_BG_FLAT */
    double cx, cy;        /* centre (area centroid) as fractions of the side: the position plus jitter */
    double r;             /* radius of the shape's unit disc as a fraction of the side: the size plus jitter */
} sd_scene_t;

/* The words (single CLIP tokens): "red", "star", "small", ... and the position phrases
 * ("" for the centre, "in the top left corner"). */
const char *sd_shape_name(sd_shape_t s);
const char *sd_colour_name(sd_colour_t c);
const char *sd_size_name(sd_size_t s); /* "" for medium */
const char *sd_pos_phrase(sd_pos_t p);
/* "centre", "left", ..., "top left": the position's short name (measurements, JSON). */
const char *sd_pos_name(sd_pos_t p);
const char *sd_bg_kind_name(sd_bg_kind_t k); /* "flat", "gradient", "horizontal stripes", "vertical stripes" */
/* 0xRRGGBB of a palette or subject colour. */
uint32_t sd_colour_rgb(sd_colour_t c);
/* Whether the point (u, v) of the unit disc (v down, the shape's area centroid at 0) is inside the
 * shape. The renderer and world_eval.h's templates both draw through it. */
bool sd_shape_inside(sd_shape_t s, double u, double v);

/* Scene index of the world with seed (every world scene: never the subject). */
void sd_world_scene(uint64_t seed, uint64_t index, sd_scene_t *out);
/* Scene index of the subject's instance images under seed: the patterned star on a flat
 * background of a varied colour, medium or big, at the centre (DreamBooth's "photos of the
 * subject", varied but plain). A separate stream from the world's: never equal to a world scene. */
void sd_world_subject_scene(uint64_t seed, uint64_t index, sd_scene_t *out);

/* The caption: "a [small|big] COLOUR SHAPE [POSITION] on BACKGROUND", or "a [small|big] sks star
 * [POSITION] on BACKGROUND" for the subject (identifier NULL: "sks"). Returns the length, or a
 * negative status if it does not fit cap. */
int sd_world_caption(const sd_scene_t *s, const char *identifier, char *buf, size_t cap);
/* The same with only some parts said (the shape, size and position always are, as the world's
 * captions leave the medium size and the centre unsaid): a caption without its colour ("a big star
 * on a blue background"), without its background ("a red star"), or neither ("a star") — what
 * `booth pretrain` mixes in so that a model also answers prompts that leave them open. */
enum { SD_CAPTION_COLOUR = 1, SD_CAPTION_BACKGROUND = 2, SD_CAPTION_ALL = 3 };
int sd_world_caption_parts(const sd_scene_t *s, const char *identifier, unsigned parts, char *buf, size_t cap);

/* An RGB image of side x side pixels (16 .. BT_IMG_MAX_SIDE), or NULL with one log line. */
bt_img_t *sd_world_render(const sd_scene_t *s, int side);

/* What a prompt asks for, as far as the world's grammar tells. Unstated size and position are
 * medium and centre (what the world's captions mean by saying nothing); unstated colour, shape
 * and background are NONE (anything goes: "a star" asks for no colour). */
typedef struct sd_world_expect {
    sd_shape_t shape;
    sd_colour_t colour;
    bool subject; /* the identifier appears */
    sd_size_t size;
    sd_pos_t pos;
    sd_bg_kind_t bg;
    sd_colour_t bg1, bg2; /* NONE when bg is NONE; bg2 NONE for flat */
} sd_world_expect_t;

/* Reads a prompt of the world's grammar (and looser ones: missing parts become NONE, words it does
 * not know are skipped). identifier NULL: "sks". Case and punctuation are ignored. */
void sd_world_parse(const char *prompt, const char *identifier, sd_world_expect_t *out);
/* The expectation a scene's own caption gives (sd_world_parse of sd_world_caption, directly). */
void sd_world_expect_of(const sd_scene_t *s, sd_world_expect_t *out);

#endif
