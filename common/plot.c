/*
 * plot.c — training-curve plots: layout, nice ticks, lines, legend.
 *
 * Layout is computed from the text sizes first (the left margin must fit the
 * widest y tick label), then everything is drawn onto a white canvas. Data are
 * mapped in double so that even float extremes (+-3.4e38) cannot overflow the
 * range arithmetic.
 */
#include "common/plot.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/status.h"

#define S_BG 0xffffff
#define S_FG 0x202020
#define S_GRID 0xe4e4e4
#define S_MAX_TICKS 12

/* Distinguishable on white and in gray scale (matplotlib-like hues). */
static const uint32_t s_palette[] = {0x1f77b4, 0xff7f0e, 0x2ca02c, 0xd62728, 0x9467bd, 0x8c564b, 0xe377c2, 0x7f7f7f};

int bt_plot_moving_average(const float *y, int n, int window, float *out)
{
    if (window < 1 || n < 0) {
        BT_ERROR("plot: moving average window %d over %d points is invalid", window, n);
        return BT_EINVAL;
    }
    /* the window's values are needed after out[i] overwrote y[i] when out == y */
    float *ring = bt_malloc((size_t)window * sizeof *ring);
    if (!ring) return BT_ENOMEM;
    double sum = 0;
    int count = 0;
    for (int i = 0; i < n; i++) {
        float v = y[i];
        if (i >= window) {
            float old = ring[i % window];
            if (isfinite(old)) sum -= old, count--;
        }
        ring[i % window] = v;
        if (isfinite(v)) sum += v, count++;
        if (count == 0) sum = 0; /* no drift carried across an all-NaN stretch */
        out[i] = count ? (float)(sum / count) : NAN;
    }
    free(ring);
    return BT_OK;
}

typedef struct {
    double lo, hi; /* axis range */
    double ticks[S_MAX_TICKS];
    int nticks;
    int decimals; /* for the tick labels: %.<decimals>f, or %.<-decimals>g if negative */
} s_axis_t;

static double s_nice_step(double raw)
{
    /* the nearest of 1, 2, 5, 10 (times a power of ten), so the tick count
     * stays within about 1.5x of the target either way */
    double p = pow(10, floor(log10(raw))), f = raw / p;
    return (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * p;
}

/* Ticks at multiples of a nice step inside [lo, hi], about `target` of them. */
static void s_axis_ticks(s_axis_t *a, int target)
{
    if (target < 2) target = 2;
    if (target > S_MAX_TICKS - 2) target = S_MAX_TICKS - 2;
    double step = s_nice_step((a->hi - a->lo) / (target - 1));
    a->nticks = 0;
    if (!(step > 0) || !isfinite(step)) return;
    double first = ceil(a->lo / step - 1e-9);
    for (double k = first; a->nticks < S_MAX_TICKS; k++) {
        double v = k * step;
        if (v > a->hi + step * 1e-9) break;
        if (fabs(v) < step * 1e-9) v = 0; /* no "-0" */
        a->ticks[a->nticks++] = v;
    }
    double mag = fmax(fabs(a->lo), fabs(a->hi));
    if (mag >= 1e6 || step < 1e-4) {
        /* %g with enough significant digits to tell neighbouring ticks apart */
        int digits = (int)ceil(log10(mag / step)) + 1;
        a->decimals = -(digits < 3 ? 3 : digits > 10 ? 10 : digits);
    } else
        a->decimals = step >= 1 ? 0 : (int)ceil(-log10(step) - 1e-9);
}

static void s_fmt(const s_axis_t *a, double v, char *buf, size_t len)
{
    if (a->decimals < 0)
        snprintf(buf, len, "%.*g", -a->decimals, v);
    else
        snprintf(buf, len, "%.*f", a->decimals, v);
}

/* Axis range from finite data: a constant gets a window around its value,
 * anything else 4% padding either side. */
static void s_axis_range(s_axis_t *a, double lo, double hi, bool any, double pad_frac)
{
    if (!any) {
        a->lo = 0, a->hi = 1;
        return;
    }
    if (lo == hi) {
        double d = fabs(lo) * 0.1;
        if (d == 0) d = 1;
        a->lo = lo - d, a->hi = hi + d;
        return;
    }
    double pad = (hi - lo) * pad_frac;
    a->lo = lo - pad, a->hi = hi + pad;
}

/* Text rotated a quarter turn counter-clockwise, its top-left at (x, y). */
static void s_draw_text_vertical(bt_img_t *img, int x, int y, const char *text, int scale, uint32_t rgb)
{
    int w = bt_img_text_width(text, scale), h = bt_img_text_height(text, scale);
    if (w < 1 || h < 1 || w > BT_IMG_MAX_SIDE) return;
    bt_img_t *mask = bt_img_new(w, h, 1);
    if (!mask) return;
    bt_img_draw_text(mask, 0, 0, text, scale, 0xffffff);
    bt_img_t *rot = bt_img_transform(mask, BT_IMG_ROTATE_90);
    if (rot)
        for (int yy = 0; yy < rot->height; yy++)
            for (int xx = 0; xx < rot->width; xx++)
                if (rot->data[(size_t)yy * (size_t)rot->width + (size_t)xx])
                    bt_img_blend_pixel(img, x + xx, y + yy, rgb, 1.0f);
    bt_img_destroy(&rot);
    bt_img_destroy(&mask);
}

static double s_xat(const bt_plot_series_t *s, int i)
{
    return s->x ? (double)s->x[i] : (double)i;
}

bt_img_t *bt_img_plot_lines(int width, int height, const bt_plot_series_t *series, int nseries,
                            const bt_plot_opts_t *opts)
{
    if (nseries < 0 || (nseries > 0 && !series)) {
        BT_ERROR("plot: %d series given without data", nseries);
        return NULL;
    }
    for (int k = 0; k < nseries; k++)
        if (series[k].n < 0 || (series[k].n > 0 && !series[k].y)) {
            BT_ERROR("plot: series %d ('%s') has %d points and no y values", k, series[k].label ? series[k].label : "",
                     series[k].n);
            return NULL;
        }
    bt_img_t *img = bt_img_new(width, height, 3);
    if (!img) return NULL;
    bt_img_fill(img, S_BG);
    bt_plot_opts_t none = {0};
    const bt_plot_opts_t *o = opts ? opts : &none;
    int sc = o->font_scale > 0 ? o->font_scale : (width < height ? width : height) / 400 + 1;
    if (sc > 8) sc = 8;
    int L = BT_FONT_LINE * sc, adv = BT_FONT_ADVANCE * sc, pad = 6 * sc, tick = 4 * sc;

    /* data extent over points where both coordinates are finite */
    double xlo = INFINITY, xhi = -INFINITY, ylo = INFINITY, yhi = -INFINITY;
    bool any = false;
    for (int k = 0; k < nseries; k++)
        for (int i = 0; i < series[k].n; i++) {
            double x = s_xat(&series[k], i), y = series[k].y[i];
            if (!isfinite(x) || !isfinite(y)) continue;
            any = true;
            xlo = fmin(xlo, x), xhi = fmax(xhi, x), ylo = fmin(ylo, y), yhi = fmax(yhi, y);
        }
    s_axis_t ax, ay;
    s_axis_range(&ax, xlo, xhi, any, 0.0);
    s_axis_range(&ay, ylo, yhi, any, 0.04);

    /* layout: margins from the text they hold */
    int top = pad + (o->title && *o->title ? L + pad : 0);
    int bottom = pad + tick + L + (o->x_label && *o->x_label ? L + pad / 2 : 0);
    s_axis_ticks(&ay, (height - top - bottom) / (3 * L));
    char buf[64];
    int ylab_w = 0;
    for (int i = 0; i < ay.nticks; i++) {
        s_fmt(&ay, ay.ticks[i], buf, sizeof buf);
        int w = bt_img_text_width(buf, sc);
        ylab_w = w > ylab_w ? w : ylab_w;
    }
    int left = pad + (o->y_label && *o->y_label ? L + pad / 2 : 0) + ylab_w + tick + pad / 2;
    int right = pad + 3 * adv;
    int pw = width - left - right, ph = height - top - bottom;

    if (o->title && *o->title) {
        int tw = bt_img_text_width(o->title, sc);
        bt_img_draw_text(img, (width - tw) / 2 > 0 ? (width - tw) / 2 : 0, pad, o->title, sc, S_FG);
    }
    if (pw < 8 || ph < 8) return img; /* too small for axes: the title (if any) is all that fits */

    /* x ticks: as many as their labels allow */
    char lo_buf[64], hi_buf[64];
    s_axis_t probe = ax;
    s_axis_ticks(&probe, 8);
    s_fmt(&probe, ax.lo, lo_buf, sizeof lo_buf);
    s_fmt(&probe, ax.hi, hi_buf, sizeof hi_buf);
    int xlab_w = (int)(strlen(lo_buf) > strlen(hi_buf) ? strlen(lo_buf) : strlen(hi_buf)) * adv;
    s_axis_ticks(&ax, pw / (xlab_w + 4 * adv));

    double xs = (pw - 1) / (ax.hi - ax.lo), ys = (ph - 1) / (ay.hi - ay.lo);
#define S_PX(x) (left + ((x)-ax.lo) * xs)
#define S_PY(y) (top + (ay.hi - (y)) * ys)

    /* grid, ticks and tick labels */
    for (int i = 0; i < ay.nticks; i++) {
        int py = (int)lround(S_PY(ay.ticks[i]));
        bt_img_fill_rect(img, left, py, pw, 1, S_GRID);
        bt_img_fill_rect(img, left - tick, py, tick, sc, S_FG);
        s_fmt(&ay, ay.ticks[i], buf, sizeof buf);
        int w = bt_img_text_width(buf, sc);
        bt_img_draw_text(img, left - tick - pad / 2 - w, py - 7 * sc / 2, buf, sc, S_FG);
    }
    for (int i = 0; i < ax.nticks; i++) {
        int px = (int)lround(S_PX(ax.ticks[i]));
        bt_img_fill_rect(img, px, top, 1, ph, S_GRID);
        bt_img_fill_rect(img, px, top + ph, sc, tick, S_FG);
        s_fmt(&ax, ax.ticks[i], buf, sizeof buf);
        int w = bt_img_text_width(buf, sc);
        bt_img_draw_text(img, px - w / 2, top + ph + tick + sc, buf, sc, S_FG);
    }
    if (o->x_label && *o->x_label) {
        int w = bt_img_text_width(o->x_label, sc);
        bt_img_draw_text(img, left + (pw - w) / 2, height - pad - L, o->x_label, sc, S_FG);
    }
    if (o->y_label && *o->y_label) {
        int w = bt_img_text_width(o->y_label, sc);
        s_draw_text_vertical(img, pad, top + (ph - w) / 2, o->y_label, sc, S_FG);
    }
    if (!any) {
        const char *msg = "no data";
        int w = bt_img_text_width(msg, sc);
        bt_img_draw_text(img, left + (pw - w) / 2, top + ph / 2 - L / 2, msg, sc, 0x808080);
    }

    /* the series, each as one polyline through its finite points */
    int auto_color = 0;
    uint32_t colors[64];
    for (int k = 0; k < nseries; k++) {
        const bt_plot_series_t *s = &series[k];
        uint32_t c = s->color ? s->color : s_palette[auto_color++ % (sizeof s_palette / sizeof s_palette[0])];
        if (k < 64) colors[k] = c;
        double lw = (s->line_width > 0 ? s->line_width : 1.5f) * sc;
        if (s->n == 0) continue;
        double *px = bt_malloc((size_t)s->n * sizeof *px), *py = bt_malloc((size_t)s->n * sizeof *py);
        if (!px || !py) {
            free(px);
            free(py);
            continue; /* best effort: the other series still draw */
        }
        int m = 0;
        for (int i = 0; i < s->n; i++) {
            double x = s_xat(s, i), y = s->y[i];
            if (!isfinite(x) || !isfinite(y)) continue;
            px[m] = S_PX(x), py[m] = S_PY(y), m++;
        }
        bt_img_draw_polyline(img, px, py, m, c, m == 1 ? lw * 3 : lw);
        free(px);
        free(py);
    }

    /* the frame, over the ends of the lines */
    bt_img_fill_rect(img, left, top, pw, sc, S_FG);
    bt_img_fill_rect(img, left, top + ph - sc, pw, sc, S_FG);
    bt_img_fill_rect(img, left, top, sc, ph, S_FG);
    bt_img_fill_rect(img, left + pw - sc, top, sc, ph, S_FG);

    /* legend: top-right inside the frame */
    int nlab = 0, lab_w = 0;
    for (int k = 0; k < nseries; k++)
        if (series[k].label && *series[k].label) {
            nlab++;
            int w = bt_img_text_width(series[k].label, sc);
            lab_w = w > lab_w ? w : lab_w;
        }
    int swatch = 4 * adv;
    int lw_box = pad + swatch + pad + lab_w + pad, lh_box = pad + nlab * L;
    if (nlab && lw_box < pw - 2 * pad && lh_box < ph - 2 * pad) {
        int bx = left + pw - pad - lw_box, by = top + pad;
        bt_img_fill_rect(img, bx, by, lw_box, lh_box, S_BG);
        bt_img_fill_rect(img, bx, by, lw_box, 1, 0xb0b0b0);
        bt_img_fill_rect(img, bx, by + lh_box - 1, lw_box, 1, 0xb0b0b0);
        bt_img_fill_rect(img, bx, by, 1, lh_box, 0xb0b0b0);
        bt_img_fill_rect(img, bx + lw_box - 1, by, 1, lh_box, 0xb0b0b0);
        int row = 0;
        for (int k = 0; k < nseries; k++) {
            if (!series[k].label || !*series[k].label) continue;
            int ty = by + pad + row * L;
            uint32_t c = k < 64 ? colors[k] : S_FG;
            double ly = ty + 7 * sc / 2.0;
            bt_img_draw_line(img, bx + pad, ly, bx + pad + swatch, ly, c, 2.0 * sc);
            bt_img_draw_text(img, bx + pad + swatch + pad, ty, series[k].label, sc, S_FG);
            row++;
        }
    }
#undef S_PX
#undef S_PY
    return img;
}

bt_img_t *bt_plot_loss(const char *title, const float *y, int n)
{
    float *avg = bt_malloc((size_t)(n ? n : 1) * sizeof(float)), *x = bt_malloc((size_t)(n ? n : 1) * sizeof(float));
    bt_img_t *img = NULL;
    if (avg && x) {
        for (int i = 0; i < n; i++) x[i] = (float)(i + 1);
        bt_plot_moving_average(y, n, n >= 50 ? 10 : 3, avg);
        bt_plot_series_t s[2] = {
            {.label = "loss", .x = x, .y = y, .n = n, .color = 0x9ecae1, .line_width = 1.0f},
            {.label = "moving average", .x = x, .y = avg, .n = n, .color = 0x08519c, .line_width = 2.0f}};
        bt_plot_opts_t o = {.title = title, .x_label = "step", .y_label = "loss"};
        img = bt_img_plot_lines(960, 540, s, 2, &o);
    }
    free(avg);
    free(x);
    return img;
}
