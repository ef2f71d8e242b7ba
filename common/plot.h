/*
 * plot.h — line plots of training curves (loss per step, its moving average,
 * learning rate) rendered straight into an RGB image, no plotting library.
 *
 * Axes get "nice" round ticks (1, 2 or 5 x 10^k), light grid lines, tick labels,
 * axis titles, a legend for the labelled series and a title. Non-finite points
 * (NaN, inf: a diverged step) are skipped, the line joining their finite
 * neighbours; a series with one finite point is drawn as a dot; a constant
 * series gets a range around its value; no finite data at all still gives the
 * axes and a "no data" note. The image always has the requested size.
 */
#ifndef BOOTH_COMMON_PLOT_H
#define BOOTH_COMMON_PLOT_H

#include <stdint.h>

#include "common/image.h"

typedef struct bt_plot_series {
    const char *label; /* legend text; NULL or "": not in the legend */
    const float *x;    /* NULL: 0, 1, ..., n - 1 */
    const float *y;
    int n;
    uint32_t color;   /* 0xRRGGBB; 0 picks the next palette colour (black is 0x010101) */
    float line_width; /* pixels; 0: 1.5 */
} bt_plot_series_t;

typedef struct bt_plot_opts {
    const char *title, *x_label, *y_label; /* each may be NULL */
    int font_scale;                        /* 0: from the image size */
} bt_plot_opts_t;

/* An RGB width x height image (sides 1..BT_IMG_MAX_SIDE), or NULL with one log
 * line for a bad size or argument. opts may be NULL. */
bt_img_t *bt_img_plot_lines(int width, int height, const bt_plot_series_t *series, int nseries,
                            const bt_plot_opts_t *opts);

/* Trailing moving average: out[i] = mean of the finite y[j], i - window < j <= i,
 * NaN when there are none. out may be y. Returns 0 or BT_EINVAL (window < 1). */
int bt_plot_moving_average(const float *y, int n, int window, float *out);

/* A training curve, 960 x 540: y[i] at step i + 1 in light blue, its moving average (window 10 from
 * 50 points on, else 3) in dark blue. NULL (logged) when out of memory. */
bt_img_t *bt_plot_loss(const char *title, const float *y, int n);

#endif
