/*
 * world_eval.c — measuring pictures of the world and scoring them against prompts (world_eval.h).
 */
#include "diffusion/world_eval.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/status.h"

#define S_FLAT_DEV 30.0                 /* a profile within this of its mean is one flat colour */
#define S_CORE_MIN 40.0                 /* distance from the background that makes a pixel surely shape */
#define S_EDGE_MIN 10.0                 /* ... and that a pixel next to the shape needs to count at all */
#define S_SKIP_NEAR_BG 50.0             /* a colour this close to the background cannot be unmixed from it */
#define S_SUB 4                         /* template subsamples per pixel along each axis */
#define S_MAX_PIXELS ((int64_t)1 << 24) /* 24 bytes of work memory per pixel: 400 MB at most */

/* ---- templates: each shape's area and second moments in its unit disc ---- */

static double s_t_mxx[SD_SHAPE_COUNT], s_t_myy[SD_SHAPE_COUNT];
static pthread_once_t s_t_once = PTHREAD_ONCE_INIT;

static void s_templates(void)
{
    enum { N = 600 };
    for (int s = 0; s < SD_SHAPE_COUNT; s++) {
        double a = 0, xx = 0, yy = 0;
        for (int j = 0; j < N; j++)
            for (int i = 0; i < N; i++) {
                double u = -1.0 + (i + 0.5) * 2.0 / N, v = -1.0 + (j + 0.5) * 2.0 / N;
                if (!sd_shape_inside((sd_shape_t)s, u, v)) continue;
                a += 1, xx += u * u, yy += v * v;
            }
        s_t_mxx[s] = xx / a;
        s_t_myy[s] = yy / a;
    }
}

/* ---- colours ---- */

static void s_rgb(uint32_t c, double out[3])
{
    out[0] = (c >> 16) & 255;
    out[1] = (c >> 8) & 255;
    out[2] = c & 255;
}

static double s_d2(const double *a, const double *b)
{
    double d0 = a[0] - b[0], d1 = a[1] - b[1], d2 = a[2] - b[2];
    return d0 * d0 + d1 * d1 + d2 * d2;
}

/* the nearest colour of the world's palette (not the subject's colours: backgrounds never have them) */
static sd_colour_t s_nearest(const double *p)
{
    sd_colour_t best = SD_COLOUR_NONE;
    double bd = 1e30, c[3];
    for (int k = 0; k < SD_COLOUR_COUNT; k++) {
        s_rgb(sd_colour_rgb((sd_colour_t)k), c);
        double d = s_d2(p, c);
        if (d < bd) bd = d, best = (sd_colour_t)k;
    }
    return best;
}

/* ---- 1. the background ---- */

/* the median of four values: the mean of the middle two */
static double s_med4(double a, double b, double c, double d)
{
    double v[4] = {a, b, c, d};
    for (int i = 1; i < 4; i++)
        for (int j = i; j > 0 && v[j] < v[j - 1]; j--) {
            double t = v[j];
            v[j] = v[j - 1], v[j - 1] = t;
        }
    return 0.5 * (v[1] + v[2]);
}

/* Classifies a profile of L colours (3 doubles each): flat, stripes or a gradient. */
static void s_profile(const double *P, int L, bool rows, sd_world_measure_t *m)
{
    double mean[3] = {0, 0, 0}, dev = 0;
    for (int t = 0; t < L; t++)
        for (int k = 0; k < 3; k++)
            mean[k] += P[3 * t + k] / L;
    for (int t = 0; t < L; t++)
        dev = fmax(dev, sqrt(s_d2(P + 3 * t, mean)));
    m->bg2 = SD_COLOUR_NONE;
    if (dev < S_FLAT_DEV) {
        m->bg = SD_BG_FLAT;
        m->bg1 = s_nearest(mean);
        return;
    }
    /* a line a + (b - a) t', t' = (t + 0.5) / L, by least squares per channel */
    double a[3], b[3], res_g = 0;
    double st = 0, stt = 0;
    for (int t = 0; t < L; t++) {
        double x = (t + 0.5) / L;
        st += x, stt += x * x;
    }
    for (int k = 0; k < 3; k++) {
        double sy = 0, sty = 0;
        for (int t = 0; t < L; t++) {
            double x = (t + 0.5) / L;
            sy += P[3 * t + k], sty += x * P[3 * t + k];
        }
        double slope = (L * sty - st * sy) / (L * stt - st * st), icpt = (sy - slope * st) / L;
        a[k] = icpt, b[k] = icpt + slope;
    }
    for (int t = 0; t < L; t++) {
        double x = (t + 0.5) / L, f[3];
        for (int k = 0; k < 3; k++)
            f[k] = a[k] + (b[k] - a[k]) * x;
        res_g += s_d2(P + 3 * t, f);
    }
    /* two colours by 2-means, started from the first sample and the one farthest from it */
    double c[2][3];
    int far = 0;
    for (int t = 1; t < L; t++)
        if (s_d2(P + 3 * t, P) > s_d2(P + 3 * far, P)) far = t;
    memcpy(c[0], P, sizeof c[0]);
    memcpy(c[1], P + 3 * far, sizeof c[1]);
    double res_s = 0;
    int runs = 0;
    for (int it = 0; it < 10; it++) {
        double sum[2][3] = {{0}}, cnt[2] = {0, 0};
        res_s = 0, runs = 0;
        int prev = -1;
        for (int t = 0; t < L; t++) {
            double d0 = s_d2(P + 3 * t, c[0]), d1 = s_d2(P + 3 * t, c[1]);
            int g = d1 < d0;
            res_s += g ? d1 : d0;
            runs += g != prev;
            prev = g;
            cnt[g] += 1;
            for (int k = 0; k < 3; k++)
                sum[g][k] += P[3 * t + k];
        }
        for (int g = 0; g < 2; g++)
            if (cnt[g] > 0)
                for (int k = 0; k < 3; k++)
                    c[g][k] = sum[g][k] / cnt[g];
    }
    if (runs >= 3 && res_s < res_g) {
        m->bg = rows ? SD_BG_HSTRIPES : SD_BG_VSTRIPES;
        int g0 = s_d2(P, c[1]) < s_d2(P, c[0]); /* the cluster of the first stripe */
        m->bg1 = s_nearest(c[g0]);
        m->bg2 = s_nearest(c[1 - g0]);
    } else if (rows) {
        double e0[3], e1[3]; /* the line at the first and last samples */
        for (int k = 0; k < 3; k++) {
            e0[k] = a[k] + (b[k] - a[k]) * 0.5 / L;
            e1[k] = a[k] + (b[k] - a[k]) * (L - 0.5) / L;
        }
        m->bg = SD_BG_GRADIENT;
        m->bg1 = s_nearest(e0);
        m->bg2 = s_nearest(e1);
    } else {
        m->bg = SD_BG_NONE; /* a gradient from left to right: not the world's */
        m->bg1 = SD_COLOUR_NONE;
    }
}

/* ---- 2.-6. the shape ---- */

typedef struct {
    int W, H;
    const double *px; /* W * H * 3 */
    double *bg;       /* the background model: a row or column profile */
    bool rows;
    float *alpha;  /* coverage per pixel (0 outside the mask) */
    int8_t *label; /* colour per pixel, -1 outside */
} s_ctx_t;

static const double *s_bg_at(const s_ctx_t *c, int x, int y)
{
    return c->bg + 3 * (c->rows ? y : x);
}

/* Explains pixel p over background b as alpha * colour + (1 - alpha) * b; the best colour. */
static int s_unmix(const double *p, const double *b, float *alpha)
{
    int best = -1;
    double bres = 1e30, ba = 0, col[3];
    for (int k = 0; k < SD_COLOUR_ALL; k++) {
        s_rgb(sd_colour_rgb((sd_colour_t)k), col);
        double d[3] = {col[0] - b[0], col[1] - b[1], col[2] - b[2]};
        double dd = d[0] * d[0] + d[1] * d[1] + d[2] * d[2];
        if (dd < S_SKIP_NEAR_BG * S_SKIP_NEAR_BG) continue;
        double q[3] = {p[0] - b[0], p[1] - b[1], p[2] - b[2]};
        double a = (q[0] * d[0] + q[1] * d[1] + q[2] * d[2]) / dd;
        a = a < 0 ? 0 : a > 1 ? 1 : a;
        double r = 0;
        for (int i = 0; i < 3; i++)
            r += (q[i] - a * d[i]) * (q[i] - a * d[i]);
        if (r < bres) bres = r, best = k, ba = a;
    }
    *alpha = (float)ba;
    return best;
}

/* Soft IoU of the mask with shape s's template at the centroid (cx, cy), radii (rx, ry) pixels. */
static double s_iou(const s_ctx_t *c, double area, sd_shape_t s, double cx, double cy, double rx, double ry)
{
    int x0 = (int)floor(cx - rx) - 1, x1 = (int)ceil(cx + rx) + 1;
    int y0 = (int)floor(cy - ry) - 1, y1 = (int)ceil(cy + ry) + 1;
    double inter = 0, tsum = 0;
    for (int y = y0; y <= y1; y++)
        for (int x = x0; x <= x1; x++) {
            int hits = 0;
            for (int j = 0; j < S_SUB; j++)
                for (int i = 0; i < S_SUB; i++) {
                    double u = (x + (i + 0.5) / S_SUB - cx) / rx, v = (y + (j + 0.5) / S_SUB - cy) / ry;
                    hits += sd_shape_inside(s, u, v);
                }
            double t = (double)hits / (S_SUB * S_SUB);
            if (t == 0) continue;
            tsum += t;
            if (x >= 0 && x < c->W && y >= 0 && y < c->H) inter += fmin(t, c->alpha[(size_t)y * c->W + x]);
        }
    double uni = area + tsum - inter;
    return uni > 0 ? inter / uni : 0;
}

static int s_measure_shape(s_ctx_t *c, double noise, sd_world_measure_t *m)
{
    int W = c->W, H = c->H, rc = BT_OK;
    size_t np = (size_t)W * H;
    double core_min = fmax(S_CORE_MIN, 4 * noise), edge_min = fmax(S_EDGE_MIN, 3 * noise);
    uint8_t *core = bt_calloc(np, 1);
    int *comp = bt_malloc(np * sizeof *comp), *stack = bt_malloc(np * sizeof *stack);
    if (!core || !comp || !stack) {
        rc = BT_ENOMEM;
        goto out_free;
    }
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            size_t i = (size_t)y * W + x;
            core[i] = sqrt(s_d2(c->px + 3 * i, s_bg_at(c, x, y))) > core_min;
            comp[i] = -1;
        }
    /* the largest 8-connected blob of core pixels */
    int best = -1, best_n = 0, ncomp = 0;
    for (size_t i0 = 0; i0 < np; i0++) {
        if (!core[i0] || comp[i0] >= 0) continue;
        int n = 0, sp = 0;
        stack[sp++] = (int)i0;
        comp[i0] = ncomp;
        while (sp) {
            int i = stack[--sp], x = i % W, y = i / W;
            n++;
            for (int dy = -1; dy <= 1; dy++)
                for (int dx = -1; dx <= 1; dx++) {
                    int xx = x + dx, yy = y + dy;
                    if (xx < 0 || yy < 0 || xx >= W || yy >= H) continue;
                    int j = yy * W + xx;
                    if (core[j] && comp[j] < 0) comp[j] = ncomp, stack[sp++] = j;
                }
        }
        if (n > best_n) best_n = n, best = ncomp;
        ncomp++;
    }
    if (best < 0) goto out_free; /* nothing stands out: found stays false */
    /* the blob grown by one pixel, each pixel unmixed into a colour and its coverage */
    double cover[SD_COLOUR_ALL] = {0}, area = 0, sx = 0, sy = 0;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            size_t i = (size_t)y * W + x;
            bool in = false;
            for (int dy = -1; dy <= 1 && !in; dy++)
                for (int dx = -1; dx <= 1 && !in; dx++) {
                    int xx = x + dx, yy = y + dy;
                    in = xx >= 0 && yy >= 0 && xx < W && yy < H && comp[(size_t)yy * W + xx] == best;
                }
            const double *b = s_bg_at(c, x, y);
            if (!in || sqrt(s_d2(c->px + 3 * i, b)) <= edge_min) continue;
            float a;
            int k = s_unmix(c->px + 3 * i, b, &a);
            if (k < 0 || a <= 0) continue;
            c->alpha[i] = a;
            c->label[i] = (int8_t)k;
            cover[k] += a;
            area += a, sx += a * (x + 0.5), sy += a * (y + 0.5);
        }
    if (area <= 0) goto out_free;
    m->found = true;
    double cx = sx / area, cy = sy / area, mxx = 0, myy = 0;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            double a = c->alpha[(size_t)y * W + x];
            if (a <= 0) continue;
            mxx += a * ((x + 0.5 - cx) * (x + 0.5 - cx) + 1.0 / 12); /* + a pixel's own spread */
            myy += a * ((y + 0.5 - cy) * (y + 0.5 - cy) + 1.0 / 12);
        }
    mxx /= area, myy /= area;
    int kbest = 0;
    for (int k = 1; k < SD_COLOUR_ALL; k++)
        if (cover[k] > cover[kbest]) kbest = k;
    m->colour = (sd_colour_t)kbest;
    m->colour_share = cover[kbest] / area;
    /* the shape: the template with the best soft IoU, scaled to the mask's moments */
    pthread_once(&s_t_once, s_templates);
    double best_iou = -1, brx = 1, bry = 1;
    for (int s = 0; s < SD_SHAPE_COUNT; s++) {
        double rx = sqrt(mxx / s_t_mxx[s]), ry = sqrt(myy / s_t_myy[s]);
        m->iou[s] = s_iou(c, area, (sd_shape_t)s, cx, cy, rx, ry);
        if (m->iou[s] > best_iou) best_iou = m->iou[s], m->shape = (sd_shape_t)s, brx = rx, bry = ry;
    }
    m->cx = cx / W, m->cy = cy / H;
    m->r = sqrt((brx / W) * (bry / H));
    m->area = area / (double)np;
    m->size = m->r < 0.186 ? SD_SIZE_SMALL : m->r < 0.275 ? SD_SIZE_MEDIUM : SD_SIZE_BIG;
    int hx = m->cx < 0.44 ? -1 : m->cx > 0.56 ? 1 : 0, vy = m->cy < 0.44 ? -1 : m->cy > 0.56 ? 1 : 0;
    static const sd_pos_t grid[3][3] = {{SD_POS_TOP_LEFT, SD_POS_TOP, SD_POS_TOP_RIGHT},
                                        {SD_POS_LEFT, SD_POS_CENTRE, SD_POS_RIGHT},
                                        {SD_POS_BOTTOM_LEFT, SD_POS_BOTTOM, SD_POS_BOTTOM_RIGHT}};
    m->pos = grid[vy + 1][hx + 1];
    /* the pattern: magenta above the centroid's row, cyan below */
    double above = 0, below = 0, mag = 0, cyan = 0;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            size_t i = (size_t)y * W + x;
            double a = c->alpha[i];
            if (a <= 0) continue;
            if (y + 0.5 < cy) {
                above += a;
                if (c->label[i] == SD_COLOUR_MAGENTA) mag += a;
            } else {
                below += a;
                if (c->label[i] == SD_COLOUR_CYAN) cyan += a;
            }
        }
    m->pattern = above > 0 && below > 0 ? fmin(mag / above, cyan / below) : 0;
    m->is_pattern = m->pattern >= 0.5;
    m->is_subject = m->is_pattern && m->shape == SD_SHAPE_STAR;
out_free:
    free(core);
    free(comp);
    free(stack);
    return rc;
}

int sd_world_measure(const bt_img_t *img, sd_world_measure_t *out)
{
    sd_world_measure_t m;
    memset(&m, 0, sizeof m);
    m.bg = SD_BG_NONE, m.bg1 = m.bg2 = m.colour = SD_COLOUR_NONE, m.shape = SD_SHAPE_NONE;
    m.size = SD_SIZE_NONE, m.pos = SD_POS_NONE;
    if (img->width < 16 || img->height < 16 || (int64_t)img->width * img->height > S_MAX_PIXELS) {
        BT_ERROR("world: a %dx%d picture is too %s to measure (16x16 at least, 16 megapixels at most)", img->width,
                 img->height, img->width < 16 || img->height < 16 ? "small" : "big");
        return BT_EINVAL;
    }
    int W = img->width, H = img->height, rc = BT_OK;
    size_t np = (size_t)W * H;
    bt_img_t *rgb = img->channels == 3 ? NULL : bt_img_convert(img, 3);
    const bt_img_t *src = rgb ? rgb : img;
    double *px = bt_malloc(np * 3 * sizeof *px), *rowp = bt_malloc((size_t)H * 3 * sizeof *rowp),
           *colp = bt_malloc((size_t)W * 3 * sizeof *colp);
    float *alpha = bt_calloc(np, sizeof *alpha);
    int8_t *label = bt_malloc(np);
    if ((img->channels != 3 && !rgb) || !px || !rowp || !colp || !alpha || !label) {
        rc = BT_ENOMEM;
        goto out_free;
    }
    memset(label, -1, np);
    for (size_t i = 0; i < np * 3; i++)
        px[i] = src->data[i];
#define PX(x, y, k) px[3 * ((size_t)(y)*W + (x)) + (k)]
    for (int y = 0; y < H; y++)
        for (int k = 0; k < 3; k++)
            rowp[3 * y + k] = s_med4(PX(0, y, k), PX(1, y, k), PX(W - 2, y, k), PX(W - 1, y, k));
    for (int x = 0; x < W; x++)
        for (int k = 0; k < 3; k++)
            colp[3 * x + k] = s_med4(PX(x, 0, k), PX(x, 1, k), PX(x, H - 2, k), PX(x, H - 1, k));
    /* which model explains the other border: rows predict the top and bottom rows, columns the
     * left and right columns */
    double res_row = 0, res_col = 0;
    const int rr[4] = {0, 1, H - 2, H - 1}, cc[4] = {0, 1, W - 2, W - 1};
    for (int e = 0; e < 4; e++) {
        for (int x = 0; x < W; x++)
            res_row += s_d2(&PX(x, rr[e], 0), rowp + 3 * rr[e]);
        for (int y = 0; y < H; y++)
            res_col += s_d2(&PX(cc[e], y, 0), colp + 3 * cc[e]);
    }
#undef PX
    res_row /= 4.0 * W, res_col /= 4.0 * H;
    bool rows = res_row <= res_col;
    m.noise = sqrt(rows ? res_row : res_col);
    s_profile(rows ? rowp : colp, rows ? H : W, rows, &m);
    s_ctx_t c = {W, H, px, rows ? rowp : colp, rows, alpha, label};
    rc = s_measure_shape(&c, m.noise, &m);
out_free:
    bt_img_destroy(&rgb);
    free(px);
    free(rowp);
    free(colp);
    free(alpha);
    free(label);
    if (rc == BT_OK) *out = m;
    return rc;
}

/* ---- metrics ---- */

bool sd_world_colour_ok(const sd_world_expect_t *e, const sd_world_measure_t *m)
{
    return e->colour != SD_COLOUR_NONE && m->found && m->colour == e->colour;
}

bool sd_world_shape_ok(const sd_world_expect_t *e, const sd_world_measure_t *m)
{
    return e->shape != SD_SHAPE_NONE && m->found && m->shape == e->shape;
}

bool sd_world_bg_ok(const sd_world_expect_t *e, const sd_world_measure_t *m)
{
    if (e->bg == SD_BG_NONE || m->bg != e->bg) return false;
    if (e->bg == SD_BG_FLAT) return m->bg1 == e->bg1;
    if (e->bg == SD_BG_GRADIENT) return m->bg1 == e->bg1 && m->bg2 == e->bg2;
    return (m->bg1 == e->bg1 && m->bg2 == e->bg2) || (m->bg1 == e->bg2 && m->bg2 == e->bg1);
}

void sd_world_tally_add(sd_world_tally_t *t, const sd_world_expect_t *e, const sd_world_measure_t *m)
{
    t->n++;
    if (e->colour != SD_COLOUR_NONE && !e->subject) t->colour_n++, t->colour_ok += sd_world_colour_ok(e, m);
    if (e->shape != SD_SHAPE_NONE) {
        t->shape_n++, t->shape_ok += sd_world_shape_ok(e, m);
        t->size_n++, t->size_ok += m->found && m->size == e->size;
        t->pos_n++, t->pos_ok += m->found && m->pos == e->pos;
    }
    if (e->bg != SD_BG_NONE) t->bg_n++, t->bg_ok += sd_world_bg_ok(e, m);
    if (e->subject) {
        t->subject_n++, t->subject_ok += m->found && m->is_subject;
        t->subject_colours += m->found && (m->colour == SD_COLOUR_MAGENTA || m->colour == SD_COLOUR_CYAN);
        if (e->bg != SD_BG_NONE) t->subject_bg_n++, t->subject_bg_ok += sd_world_bg_ok(e, m);
    } else {
        t->plain_n++, t->plain_pattern += m->found && m->is_pattern;
        if (e->colour == SD_COLOUR_NONE) {
            t->div_n++;
            t->div_count[m->found && m->colour >= 0 ? m->colour : SD_COLOUR_ALL]++;
        }
    }
}

static double s_rate(int ok, int n)
{
    return n ? (double)ok / n : NAN;
}

void sd_world_metrics(const sd_world_tally_t *t, sd_world_metrics_t *out)
{
    sd_world_metrics_t r;
    r.colour_acc = s_rate(t->colour_ok, t->colour_n);
    r.shape_acc = s_rate(t->shape_ok, t->shape_n);
    r.bg_acc = s_rate(t->bg_ok, t->bg_n);
    r.size_acc = s_rate(t->size_ok, t->size_n);
    r.pos_acc = s_rate(t->pos_ok, t->pos_n);
    r.subject_fidelity = s_rate(t->subject_ok, t->subject_n);
    r.subject_bg_acc = s_rate(t->subject_bg_ok, t->subject_bg_n);
    r.subject_colours_rate = s_rate(t->subject_colours, t->subject_n);
    r.pattern_rate = s_rate(t->plain_pattern, t->plain_n);
    r.distinct_colours = 0;
    int found = t->div_n - t->div_count[SD_COLOUR_ALL]; /* pictures with no shape have no colour */
    r.colour_entropy = found ? 0 : NAN;
    r.subject_colour_rate = s_rate(t->div_count[SD_COLOUR_MAGENTA] + t->div_count[SD_COLOUR_CYAN], found);
    for (int k = 0; k < SD_COLOUR_ALL; k++) {
        if (!t->div_count[k]) continue;
        r.distinct_colours++;
        double p = (double)t->div_count[k] / found;
        r.colour_entropy -= p * log2(p);
    }
    *out = r;
}
