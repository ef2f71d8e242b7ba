/*
 * world.c — `booth world`: the synthetic captioned world as a folder of PNGs (diffusion/world.h),
 * and `booth world --measure`: what pictures of it show (diffusion/world_eval.h).
 *
 * The folder is what Hugging Face's imagefolder loader reads (diffusers' text-to-image scripts
 * take it as --train_data_dir): DIR/00000.png ..., each with its caption as the first line of
 * its "parameters" text chunk (where `booth generate` puts the prompt), and DIR/metadata.jsonl
 * with {"file_name": ..., "text": ...} per line. --subject writes the subject's instance images
 * instead ("a sks star on a blue background": DreamBooth's photos of the subject).
 *
 * --measure reads pictures back: background, colour, shape, size, position, the subject's
 * pattern; with a prompt (--prompt, or the first line of a picture's "parameters" chunk) it says
 * which attributes match and ends with the metrics over all pictures that had one.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "common/alloc.h"
#include "common/fileio.h"
#include "common/image.h"
#include "common/progress.h"
#include "common/status.h"
#include "diffusion/world.h"
#include "diffusion/world_eval.h"
#include "storage/imageio.h"
#include "storage/png.h"

#define S_SHEET_MAX 64 /* pictures on the contact sheet */
#define S_THUMB 128    /* a sheet tile's picture side at least (small pictures are enlarged) */

/* Nearest-neighbour enlargement by a whole factor: a 64-px world picture stays crisp on the sheet. */
static bt_img_t *s_enlarge(const bt_img_t *img, int k)
{
    bt_img_t *o = bt_img_new(img->width * k, img->height * k, 3);
    if (!o) return NULL;
    for (int y = 0; y < o->height; y++)
        for (int x = 0; x < o->width; x++)
            memcpy(bt_img_pixel(o, x, y), bt_img_pixel(img, x / k, y / k), 3);
    return o;
}

/* A sheet tile: the picture enlarged to S_THUMB or more, its caption wrapped below. */
static bt_img_t *s_tile(const bt_img_t *img, const char *caption)
{
    int k = (S_THUMB + img->width - 1) / img->width;
    bt_img_t *big = s_enlarge(img, k);
    if (!big) return NULL;
    char wrapped[512];
    int lines = bt_img_text_wrap(caption, big->width - 4, 1, 5, wrapped, sizeof wrapped);
    bt_img_t *t = bt_img_new(big->width, big->height + 4 + 5 * BT_FONT_LINE, 3);
    if (t) {
        bt_img_fill(t, 0xffffff);
        bt_img_paste(t, big, 0, 0);
        if (lines > 0) bt_img_draw_text(t, 2, big->height + 3, wrapped, 1, 0x000000);
    }
    bt_img_destroy(&big);
    return t;
}

static int s_write_world(const char *out, int64_t num, uint64_t seed, int64_t start, int side, bool subject,
                         const char *identifier, bool grid)
{
    struct stat st;
    if (stat(out, &st) == 0 && !S_ISDIR(st.st_mode)) {
        fprintf(stderr, "booth world: --out %s: not a folder\n", out);
        return 1;
    }
    if (bt_mkdirs(out)) return 1;
    int digits = 5;
    for (int64_t last = start + num - 1; last >= 100000; last /= 10)
        digits++;
    char meta_path[4200], path[4200], name[64], caption[256], params[512];
    cli_join_path(meta_path, sizeof meta_path, out, "metadata.jsonl");
    if (bt_replaceable(meta_path)) return 1;
    bt_atomic_file_t meta = {0};
    if (bt_atomic_open(&meta, meta_path)) return 1;
    int status = 1, ntiles = 0;
    bt_img_t *tiles[S_SHEET_MAX] = {0};
    bt_progress_t bar;
    bt_progress_start(&bar, subject ? "subject" : "world", num, "img");
    for (int64_t i = 0; i < num; i++) {
        sd_scene_t s;
        uint64_t index = (uint64_t)(start + i);
        if (subject)
            sd_world_subject_scene(seed, index, &s);
        else
            sd_world_scene(seed, index, &s);
        if (sd_world_caption(&s, identifier, caption, sizeof caption) < 0) {
            fprintf(stderr, "booth world: the caption of picture %lld does not fit %zu bytes\n", (long long)index,
                    sizeof caption);
            goto out;
        }
        snprintf(name, sizeof name, "%0*lld.png", digits, (long long)index);
        cli_join_path(path, sizeof path, out, name);
        snprintf(params, sizeof params, "%s\nWorld seed: %llu, Index: %llu, Size: %dx%d%s", caption,
                 (unsigned long long)seed, (unsigned long long)index, side, side, subject ? ", Subject: yes" : "");
        bt_img_t *img = sd_world_render(&s, side);
        st_png_text_t text = {"parameters", params};
        int wrc = img ? st_png_write(path, img, &text, 1) : BT_ENOMEM;
        if (wrc == BT_OK && grid && ntiles < S_SHEET_MAX && !(tiles[ntiles++] = s_tile(img, caption))) wrc = BT_ENOMEM;
        bt_img_destroy(&img);
        if (wrc) goto out;
        cJSON *line = cJSON_CreateObject();
        char *js = NULL;
        if (line && cJSON_AddStringToObject(line, "file_name", name) && cJSON_AddStringToObject(line, "text", caption))
            js = cJSON_PrintUnformatted(line);
        cJSON_Delete(line);
        bool ok = js && fprintf(meta.f, "%s\n", js) > 0;
        free(js);
        if (!ok) {
            fprintf(stderr, "booth world: %s: write failed: %s\n", meta_path, js ? strerror(errno) : "out of memory");
            goto out;
        }
        bt_progress_update(&bar, i + 1, NULL);
    }
    bt_progress_finish(&bar, NULL);
    if (bt_atomic_commit(&meta)) goto out;
    if (grid) {
        char title[256], grid_path[4200];
        snprintf(title, sizeof title, "booth world: seed %llu, %s %lld..%lld%s", (unsigned long long)seed,
                 subject ? "subject pictures" : "pictures", (long long)start, (long long)(start + ntiles - 1),
                 num > ntiles ? " (the first 64)" : "");
        int cols = 1;
        while (cols * cols < ntiles)
            cols++;
        bt_img_grid_opts_t o = BT_IMG_GRID_OPTS_INIT;
        o.title = title;
        o.margin = 4;
        o.font_scale = 1;
        bt_img_t *sheet = bt_img_grid((const bt_img_t *const *)tiles, (ntiles + cols - 1) / cols, cols, &o);
        cli_join_path(grid_path, sizeof grid_path, out, "grid.png");
        int wrc = sheet ? st_png_write(grid_path, sheet, NULL, 0) : BT_ENOMEM;
        bt_img_destroy(&sheet);
        if (wrc) goto out;
    }
    printf("%s: %lld %s picture%s %dx%d (seed %llu, from %lld), metadata.jsonl%s\n", out, (long long)num,
           subject ? "subject" : "world", CLI_PLURAL(num), side, side, (unsigned long long)seed, (long long)start,
           grid ? ", grid.png" : "");
    status = 0;
out:
    bt_atomic_abort(&meta); /* nothing after a commit */
    for (int i = 0; i < ntiles; i++)
        bt_img_destroy(&tiles[i]);
    return status;
}

/* ---- --measure ---- */

static const char *s_size_word(sd_size_t s)
{
    return s == SD_SIZE_MEDIUM ? "medium" : sd_size_name(s);
}

static double s_round(double v, double q)
{
    return round(v / q) * q;
}

static cJSON *s_measure_json(const char *file, const sd_world_measure_t *m, const char *prompt,
                             const sd_world_expect_t *e)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "file", file);
    cJSON *bg = cJSON_AddObjectToObject(o, "background");
    cJSON_AddStringToObject(bg, "kind", sd_bg_kind_name(m->bg));
    cJSON *cs = cJSON_AddArrayToObject(bg, "colours");
    if (m->bg1 >= 0) cJSON_AddItemToArray(cs, cJSON_CreateString(sd_colour_name(m->bg1)));
    if (m->bg2 >= 0) cJSON_AddItemToArray(cs, cJSON_CreateString(sd_colour_name(m->bg2)));
    cJSON_AddNumberToObject(bg, "noise", s_round(m->noise, 0.01));
    cJSON_AddBoolToObject(o, "found", m->found);
    if (m->found) {
        cJSON_AddStringToObject(o, "colour", sd_colour_name(m->colour));
        cJSON_AddNumberToObject(o, "colour_share", s_round(m->colour_share, 0.001));
        cJSON_AddStringToObject(o, "shape", sd_shape_name(m->shape));
        cJSON *iou = cJSON_AddObjectToObject(o, "iou");
        for (int s = 0; s < SD_SHAPE_COUNT; s++)
            cJSON_AddNumberToObject(iou, sd_shape_name((sd_shape_t)s), s_round(m->iou[s], 0.001));
        cJSON_AddStringToObject(o, "size", s_size_word(m->size));
        cJSON_AddStringToObject(o, "position", sd_pos_name(m->pos));
        cJSON_AddNumberToObject(o, "cx", s_round(m->cx, 0.001));
        cJSON_AddNumberToObject(o, "cy", s_round(m->cy, 0.001));
        cJSON_AddNumberToObject(o, "r", s_round(m->r, 0.001));
        cJSON_AddNumberToObject(o, "area", s_round(m->area, 0.001));
        cJSON_AddNumberToObject(o, "pattern", s_round(m->pattern, 0.001));
    }
    cJSON_AddBoolToObject(o, "is_subject", m->is_subject);
    if (prompt) {
        cJSON_AddStringToObject(o, "prompt", prompt);
        cJSON *ok = cJSON_AddObjectToObject(o, "ok");
        if (e->colour != SD_COLOUR_NONE && !e->subject) cJSON_AddBoolToObject(ok, "colour", sd_world_colour_ok(e, m));
        if (e->shape != SD_SHAPE_NONE) cJSON_AddBoolToObject(ok, "shape", sd_world_shape_ok(e, m));
        if (e->bg != SD_BG_NONE) cJSON_AddBoolToObject(ok, "background", sd_world_bg_ok(e, m));
        if (e->subject) cJSON_AddBoolToObject(ok, "subject", m->found && m->is_subject);
    }
    return o;
}

static void s_measure_text(const char *file, const sd_world_measure_t *m, const char *prompt,
                           const sd_world_expect_t *e)
{
    printf("%s: background %s %s%s%s", file, sd_bg_kind_name(m->bg), sd_colour_name(m->bg1), m->bg2 >= 0 ? "/" : "",
           m->bg2 >= 0 ? sd_colour_name(m->bg2) : "");
    if (m->found)
        printf("; %s %s %s at %s (colour share %.2f, shape IoU %.2f, r %.3f); pattern %.2f%s", s_size_word(m->size),
               sd_colour_name(m->colour), sd_shape_name(m->shape), sd_pos_name(m->pos), m->colour_share,
               m->iou[m->shape], m->r, m->pattern, m->is_subject ? " (the subject)" : "");
    else
        printf("; no shape found");
    printf("\n");
    if (prompt) {
        printf("  prompt \"%s\":", prompt);
        if (e->colour != SD_COLOUR_NONE && !e->subject) printf(" colour %s", sd_world_colour_ok(e, m) ? "ok" : "wrong");
        if (e->shape != SD_SHAPE_NONE) printf(" shape %s", sd_world_shape_ok(e, m) ? "ok" : "wrong");
        if (e->bg != SD_BG_NONE) printf(" background %s", sd_world_bg_ok(e, m) ? "ok" : "wrong");
        if (e->subject) printf(" subject %s", m->found && m->is_subject ? "ok" : "missing");
        printf("\n");
    }
}

static void s_metric_json(cJSON *o, const char *key, double v)
{
    if (isnan(v))
        cJSON_AddNullToObject(o, key);
    else
        cJSON_AddNumberToObject(o, key, s_round(v, 0.0001));
}

static void s_metric_text(const char *name, double v, int ok, int n)
{
    if (n) printf("  %-20s %.3f (%d of %d)\n", name, v, ok, n);
}

static int s_measure(const char **files, int n, const char *prompt_flag, const char *identifier, bool json)
{
    sd_world_tally_t tally = {0};
    cJSON *root = json ? cJSON_CreateObject() : NULL, *arr = root ? cJSON_AddArrayToObject(root, "images") : NULL;
    if (json && !arr) {
        fprintf(stderr, "booth world: out of memory\n");
        cJSON_Delete(root);
        return 1;
    }
    int status = 1;
    for (int i = 0; i < n; i++) {
        bt_img_t *img = NULL;
        st_png_text_t *text = NULL;
        int ntext = 0, rc;
        /* a PNG's own prompt, when --prompt does not give one */
        FILE *f = fopen(files[i], "rb");
        unsigned char sig[8] = {0};
        bool png = f && fread(sig, 1, 8, f) == 8 && !memcmp(sig, "\x89PNG\r\n\x1a\n", 8);
        if (f) fclose(f);
        rc = png ? st_png_read_with_text(files[i], &img, &text, &ntext) : st_image_load(files[i], &img);
        if (rc) goto out;
        char own[1024] = "";
        const char *p = st_png_text_get(text, ntext, "parameters");
        if (p) snprintf(own, sizeof own, "%.*s", (int)strcspn(p, "\n"), p);
        st_png_text_free(&text);
        sd_world_measure_t m;
        rc = sd_world_measure(img, &m);
        bt_img_destroy(&img);
        if (rc) {
            fprintf(stderr, "booth world: %s: cannot measure (%s)\n", files[i], bt_status_str(rc));
            goto out;
        }
        const char *prompt = prompt_flag ? prompt_flag : own[0] ? own : NULL;
        sd_world_expect_t e;
        if (prompt) {
            sd_world_parse(prompt, identifier, &e);
            sd_world_tally_add(&tally, &e, &m);
        }
        if (json) {
            cJSON *item = s_measure_json(files[i], &m, prompt, &e);
            if (!item || !cJSON_AddItemToArray(arr, item)) {
                fprintf(stderr, "booth world: out of memory for the JSON of %s\n", files[i]);
                cJSON_Delete(item);
                goto out;
            }
        } else {
            s_measure_text(files[i], &m, prompt, &e);
        }
    }
    sd_world_metrics_t r;
    sd_world_metrics(&tally, &r);
    if (json) {
        if (tally.n) {
            cJSON *mo = cJSON_AddObjectToObject(root, "metrics");
            cJSON_AddNumberToObject(mo, "pictures", tally.n);
            s_metric_json(mo, "colour_accuracy", r.colour_acc);
            s_metric_json(mo, "shape_accuracy", r.shape_acc);
            s_metric_json(mo, "background_accuracy", r.bg_acc);
            s_metric_json(mo, "size_accuracy", r.size_acc);
            s_metric_json(mo, "position_accuracy", r.pos_acc);
            s_metric_json(mo, "subject_fidelity", r.subject_fidelity);
            s_metric_json(mo, "subject_background_accuracy", r.subject_bg_acc);
            s_metric_json(mo, "pattern_rate", r.pattern_rate);
            cJSON_AddNumberToObject(mo, "distinct_colours", r.distinct_colours);
            s_metric_json(mo, "colour_entropy_bits", r.colour_entropy);
        }
        char *s = cJSON_PrintUnformatted(root);
        if (!s) {
            fprintf(stderr, "booth world: out of memory\n");
            goto out;
        }
        printf("%s\n", s);
        free(s);
    } else if (tally.n) {
        printf("metrics over %d picture%s with a prompt:\n", tally.n, CLI_PLURAL(tally.n));
        s_metric_text("colour accuracy", r.colour_acc, tally.colour_ok, tally.colour_n);
        s_metric_text("shape accuracy", r.shape_acc, tally.shape_ok, tally.shape_n);
        s_metric_text("background accuracy", r.bg_acc, tally.bg_ok, tally.bg_n);
        s_metric_text("size accuracy", r.size_acc, tally.size_ok, tally.size_n);
        s_metric_text("position accuracy", r.pos_acc, tally.pos_ok, tally.pos_n);
        s_metric_text("subject fidelity", r.subject_fidelity, tally.subject_ok, tally.subject_n);
        s_metric_text("subject background", r.subject_bg_acc, tally.subject_bg_ok, tally.subject_bg_n);
        s_metric_text("pattern rate", r.pattern_rate, tally.plain_pattern, tally.plain_n);
        if (tally.div_n)
            printf("  %-20s %d colours, entropy %.2f bits (over %d picture%s naming no colour)\n", "diversity",
                   r.distinct_colours, r.colour_entropy, tally.div_n, CLI_PLURAL(tally.div_n));
    }
    status = 0;
out:
    cJSON_Delete(root);
    return status;
}

int cmd_world(int argc, char **argv)
{
    const char *out = NULL, *prompt = NULL, *identifier = NULL;
    int64_t num = 16, start = 0;
    uint64_t seed = 0;
    int resolution = 64;
    bool subject = false, grid = false, measure = false, json = false;
    const cli_opt_t opts[] = {
        CLI_OPT("--out", CLI_STR, &out, "DIR",
                "the folder to write (made if missing; pictures of the same name are replaced)"),
        CLI_OPT("--num", CLI_I64, &num, "N", "how many pictures (default 16)"),
        CLI_OPT("--seed", CLI_U64, &seed, "S", "the world's seed: picture i is scene i of world S (default 0)"),
        CLI_OPT("--start", CLI_I64, &start, "I",
                "the first scene's index (default 0): any range regenerates the same pictures; metadata.jsonl lists "
                "this run's"),
        CLI_OPT("--resolution", CLI_INT, &resolution, "R", "pictures of R x R pixels, 16..2048 (default 64)"),
        CLI_OPT("--subject", CLI_FLAG, &subject, NULL,
                "the subject's instance pictures instead: the magenta-over-cyan star, captioned \"a sks star on ...\""),
        CLI_OPT("--identifier", CLI_STR, &identifier, "WORD",
                "the subject's identifier in captions and prompts (default sks)"),
        CLI_OPT("--grid", CLI_FLAG, &grid, NULL, "also DIR/grid.png: the first 64 pictures with their captions"),
        CLI_OPT(
            "--measure", CLI_FLAG, &measure, NULL,
            "measure the pictures IMG... instead: background, colour, shape, size, position, the subject's pattern"),
        CLI_OPT("--prompt", CLI_TEXT, &prompt, "TEXT",
                "with --measure: score every picture against this prompt (default: each PNG's own, if it has one)"),
        CLI_OPT("--json", CLI_FLAG, &json, NULL, "with --measure: one JSON object"),
        CLI_END,
    };
    const cli_spec_t spec = {
        "world",
        "--out DIR [--num N] [--seed S] [--resolution R] [--subject] [--grid] | --measure [--json] IMG...",
        "Writes booth's synthetic captioned world: coloured circles, squares, triangles, stars and hearts,\n"
        "small or big, in nine places, on flat, gradient or striped backgrounds, captioned in plain English\n"
        "(\"a small green circle in the top left corner on a white background\"; every word one CLIP token).\n"
        "DIR gets 00000.png ... (the caption in each PNG's parameters chunk) and metadata.jsonl, the Hugging\n"
        "Face imagefolder layout. Scene i of seed S is always the same picture. --subject writes DreamBooth's\n"
        "instance pictures of a subject the world never shows: a star, magenta above its centre, cyan below.\n"
        "--measure reads pictures back and, given prompts, prints the metrics of docs/WORLD.md.",
        opts,
        argc,
        "IMG"};
    const char **pos = bt_calloc((size_t)argc + 1, sizeof *pos);
    if (!pos) return 1;
    int npos, rc = cli_parse(&spec, argc, argv, pos, &npos);
    if (rc >= 0) goto out;
    rc = 2;
    if (measure) {
        if (out || subject || grid) {
            fprintf(stderr, "booth world: --measure reads pictures; --out, --subject and --grid write them\n");
            goto out;
        }
        if (npos == 0) {
            fprintf(stderr, "booth world: --measure needs one or more pictures (IMG...)\n");
            goto out;
        }
        rc = s_measure(pos, npos, prompt, identifier, json);
        goto out;
    }
    if (npos > 0) {
        fprintf(stderr, "booth world: unexpected argument '%s' (pictures are for --measure)\n", pos[0]);
        goto out;
    }
    if (!out) {
        fprintf(stderr, "booth world: --out is required (see --help)\n");
        goto out;
    }
    if (prompt || json) {
        fprintf(stderr, "booth world: --%s is for --measure\n", prompt ? "prompt" : "json");
        goto out;
    }
    const cli_irange_t ranges[] = {
        {"--num", num, 1, 10000000}, {"--start", start, 0, INT64_MAX / 2}, {"--resolution", resolution, 16, 2048}};
    if ((rc = cli_check_ranges("world", ranges, sizeof ranges / sizeof ranges[0]))) goto out;
    if (identifier &&
        (!*identifier || strspn(identifier, "abcdefghijklmnopqrstuvwxyz0123456789") != strlen(identifier))) {
        fprintf(stderr, "booth world: --identifier '%s' must be one lower-case word of letters and digits\n",
                identifier);
        rc = 2;
        goto out;
    }
    rc = s_write_world(out, num, seed, start, resolution, subject, identifier, grid);
out:
    free(pos);
    return rc;
}
