/*
 * world_eval.h — what a picture of the world shows, measured from its pixels, and the metrics
 * that score a model's pictures against their prompts (docs/WORLD.md, "Metrics").
 *
 * A separate file from world.c because it is the other side of the world: world.c makes pictures
 * from scenes, this reads scenes back from pictures that anybody drew (booth's renderer, or a
 * model), and it must hold up on the second kind; only sd_shape_inside is shared.
 *
 * Measurement, in order:
 *   1. Background, from the border (the world keeps 2 pixels clear of the shape at 16 px, 0.13 of
 *      the side): a row model (the colour of row y is the median of its two outermost pixels at
 *      either end) and a column model (the same for columns); the one that predicts the other
 *      border better wins. Its 1-D profile is flat (every sample within 30 of the mean), stripes
 *      (two colours, 2-means clustering, at least 3 runs, fitting better than a line) or a gradient
 *      (a straight line from one colour to another, least squares); colours are the nearest
 *      palette colours of the flat mean, of the stripes' clusters (c1 the one at the top or left),
 *      of the line's ends. A gradient across the columns is no world background: NONE.
 *   2. Subject mask: a pixel belongs to the shape when it is far from the background model at its
 *      row (or column): the largest 8-connected blob of pixels over max(40, 4 x border noise),
 *      grown by one pixel to pixels over max(10, 3 x noise). Each such pixel is explained as a mix
 *      alpha * c + (1 - alpha) * background for every colour c of the palette and the subject's two
 *      colours; the c with the smallest residual is its label, alpha its coverage. Unmixing, not
 *      the nearest colour, keeps the edge of a red star on yellow from reading as orange.
 *   3. Colour: the label with the largest total coverage (share: its fraction).
 *   4. Shape: template matching. For each shape, its unit template is scaled (separately in x
 *      and y) so its second moments equal the mask's, placed at the mask's centroid, drawn with
 *      4 x 4 subsamples, and compared with the mask by soft IoU (sum of min / sum of max of the
 *      coverages); the best IoU wins. Moments fit the scale without a search and tolerate a
 *      stretched drawing; IoU tells a star from a circle where moment invariants of a blurred
 *      32-px star barely differ.
 *   5. Size and position: the fitted radius (small < 0.186 of the side <= medium < 0.275 <= big,
 *      the geometric means of the world's radii) and the centroid (left of 0.44 of the width,
 *      right of 0.56, likewise for the height).
 *   6. Pattern: the mask is split at its centroid's row; pattern = min(share of coverage labelled
 *      magenta above, share labelled cyan below). is_pattern: pattern >= 0.5; is_subject:
 *      is_pattern and the shape is a star.
 *
 * Metrics over a set of (prompt, picture) pairs, each prompt read by sd_world_parse:
 *   colour accuracy      over prompts naming a colour (not the subject): measured colour == asked
 *   shape accuracy       over prompts naming a shape: measured shape == asked
 *   background accuracy  over prompts naming a background: kind and colours equal (a gradient's in
 *                        order, top first; stripes' as a set: "red and white stripes" does not say
 *                        which comes first)
 *   size / position acc. over every prompt with a shape (unstated: medium, centre)
 *   subject fidelity     over prompts with the identifier: the rate of is_subject
 *   subject background   over prompts with the identifier and a background: background accuracy
 *   pattern rate         over plain prompts (no identifier): the rate of is_pattern (the
 *                        DreamBooth paper's PRES in miniature: low means the class kept its look)
 *   diversity            over plain prompts that name no colour: the number of distinct measured
 *                        colours and their Shannon entropy in bits (log2 8 = 3 at most for the
 *                        palette; DIV in miniature)
 * A picture where no shape was found counts as wrong for colour, shape, size, position and subject.
 */
#ifndef BOOTH_DIFFUSION_WORLD_EVAL_H
#define BOOTH_DIFFUSION_WORLD_EVAL_H

#include <stdbool.h>

#include "common/image.h"
#include "diffusion/world.h"

typedef struct sd_world_measure {
    sd_bg_kind_t bg;
    sd_colour_t bg1, bg2; /* bg2 NONE for flat */
    double noise;         /* RMS distance of the border from the background model (0 for a render) */
    bool found;           /* a shape stands out from the background; if not, the rest is NONE / 0 */
    sd_colour_t colour;   /* palette or subject colour with the most coverage */
    double colour_share;  /* its share of the coverage, 0..1 */
    sd_shape_t shape;     /* the best template */
    double iou[SD_SHAPE_COUNT];
    sd_size_t size;
    sd_pos_t pos;
    double cx, cy, r; /* centroid and fitted radius as fractions of the width/height/side */
    double area;      /* covered fraction of the picture */
    double pattern;   /* min(magenta share above the centroid, cyan share below), 0..1 */
    bool is_pattern;  /* pattern >= 0.5 */
    bool is_subject;  /* is_pattern and a star */
} sd_world_measure_t;

/* Measures an RGB (or gray/RGBA: converted) picture of 16 x 16 pixels to 16 megapixels. 0, or a
 * negative status with one log line (too small or too big, out of memory). */
int sd_world_measure(const bt_img_t *img, sd_world_measure_t *out);

/* Whether a measurement answers what the prompt asked, one attribute at a time (false where the
 * prompt does not ask). */
bool sd_world_colour_ok(const sd_world_expect_t *e, const sd_world_measure_t *m);
bool sd_world_shape_ok(const sd_world_expect_t *e, const sd_world_measure_t *m);
bool sd_world_bg_ok(const sd_world_expect_t *e, const sd_world_measure_t *m);

/* Counts behind the metrics above; zero-initialise, add one pair at a time. */
typedef struct sd_world_tally {
    int n;
    int colour_n, colour_ok, shape_n, shape_ok, bg_n, bg_ok, size_n, size_ok, pos_n, pos_ok;
    int subject_n, subject_ok, subject_bg_n, subject_bg_ok, subject_colours;
    int plain_n, plain_pattern;
    int div_n, div_count[SD_COLOUR_ALL + 1]; /* measured colours over plain colourless prompts; [ALL]: none found */
} sd_world_tally_t;

void sd_world_tally_add(sd_world_tally_t *t, const sd_world_expect_t *e, const sd_world_measure_t *m);

/* The metrics; a rate whose set is empty is NaN (printed as null). */
typedef struct sd_world_metrics {
    double colour_acc, shape_acc, bg_acc, size_acc, pos_acc;
    double subject_fidelity, subject_bg_acc, pattern_rate;
    double subject_colours_rate; /* identifier prompts whose shape is drawn magenta or cyan: the colours without the pattern */
    double subject_colour_rate; /* plain colourless prompts whose shape is drawn magenta or cyan (of those with a shape) */
    int distinct_colours;
    double colour_entropy; /* bits */
} sd_world_metrics_t;

void sd_world_metrics(const sd_world_tally_t *t, sd_world_metrics_t *out);

#endif
