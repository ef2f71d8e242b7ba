/*
 * eval.c — `booth eval`: how well a model of the world (booth pretrain) draws what it is asked, and
 * what a DreamBooth LoRA did to it, measured from the pixels of its pictures
 * (diffusion/world_eval.h, docs/WORLD.md "Metrics").
 *
 * Three prompt sets, each image i drawn from seed stream i:
 *   world    N captions of held-out world scenes (world seed 1000003, which training never uses):
 *            colour, shape, background, size and position accuracy;
 *   subject  "a sks star on a COLOUR background", the palette in turn: subject fidelity (the
 *            subject's pattern on a star) and whether the asked background is there;
 *   class    "a star": the pattern rate (the subject leaking into its class: DreamBooth's language
 *            drift) and the diversity of the colours drawn (how many, and their entropy).
 * subject and class run when a LoRA (or an identifier) is given; --sets chooses.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "common/alloc.h"
#include "common/image.h"
#include "common/log.h"
#include "common/progress.h"
#include "common/status.h"
#include "diffusion/lora_io.h"
#include "diffusion/pipeline.h"
#include "diffusion/vae.h"
#include "diffusion/world.h"
#include "diffusion/world_eval.h"
#include "storage/png.h"

#define S_BATCH 8 /* pictures sampled together */
#define S_HELD_OUT_WORLD 1000003u /* scenes nobody trains on (booth pretrain's default world seed is 0) */

enum { S_WORLD, S_SUBJECT, S_CLASS, S_NSETS };
static const char *const s_set_name[S_NSETS] = {"world", "subject", "class"};

typedef struct {
    sd_model_t *m;
    sd_sample_params_t p;
    int64_t h, w, T, cd;
    float *embeds, *lat, *img;
} s_gen_t;

/* Prompt i of a set. */
static void s_prompt(int set, int i, const char *id, const char *cls, char *buf, size_t cap)
{
    if (set == S_WORLD) {
        sd_scene_t s;
        sd_world_scene(S_HELD_OUT_WORLD, (uint64_t)i, &s);
        sd_world_caption(&s, NULL, buf, cap);
    } else if (set == S_SUBJECT) {
        snprintf(buf, cap, "a %s %s on a %s background", id, cls, sd_colour_name((sd_colour_t)(i % SD_COLOUR_COUNT)));
    } else {
        snprintf(buf, cap, "a %s", cls);
    }
}

/* Pictures i0 .. i0 + n - 1 (seed streams i0 ...) of prompts[0 .. n), n <= S_BATCH, in one batch
 * (as one by one, up to rounding): out[k] RGB, or NULL. */
static int s_draw(s_gen_t *g, char (*prompts)[256], int64_t i0, int n, bt_img_t **out)
{
    int64_t sc = sd_vae_scale(g->m->vae), per = g->m->unet->cfg.in_channels * g->h * g->w;
    g->p.first_index = i0;
    g->p.cond_per_image = true;
    for (int k = 0; k < n; k++)
        if (sd_encode_prompt(g->m, g->embeds + (1 + k) * g->T * g->cd, prompts[k], 0)) return BT_EINVAL;
    int rc = sd_sample(g->m, &g->p, g->embeds + g->T * g->cd, g->embeds, g->T, g->lat, false, n, g->h, g->w);
    for (int k = 0; k < n && rc == BT_OK; k++) {
        if ((rc = sd_decode(g->m, g->img, NULL, g->lat + k * per, 1, g->h, g->w))) break;
        if (!(out[k] = bt_img_from_f32_chw(g->img, 3, (int)(g->h * sc), (int)(g->w * sc), BT_IMG_RANGE_01)))
            rc = BT_ENOMEM;
    }
    return rc;
}

static void s_print_rate(const char *what, double v, int ok, int n)
{
    if (n == 0) return;
    printf("  %-22s %.3f (%d of %d)\n", what, v, ok, n);
}

static void s_json_num(const char *key, double v, bool *first)
{
    printf("%s\"%s\": ", *first ? "" : ", ", key);
    if (isnan(v)) printf("null");
    else printf("%.4f", v);
    *first = false;
}

int cmd_eval(int argc, char **argv)
{
    const char *model = NULL, *lora = NULL, *id = NULL, *cls = "star", *sets_s = NULL, *grid = NULL;
    const char *sampler_s = "ddim";
    int num = 100, steps = 25;
    float guidance = 1.5f, scale_unet = 1.0f, scale_text = 1.0f;
    uint64_t seed = 0;
    bool json = false;
    const cli_opt_t opts[] = {
        CLI_OPT("--model", CLI_STR, &model, "DIR", "a model of the world, from `booth pretrain` " CLI_MODEL_DEFAULT_HELP),
        CLI_OPT("--lora", CLI_STR, &lora, "FILE", "a DreamBooth LoRA of it (then the subject and class sets run too)"),
        CLI_OPT("--lora-scale-unet", CLI_FLOAT, &scale_unet, "S", "the LoRA's UNet scale (default 1)"),
        CLI_OPT("--lora-scale-text", CLI_FLOAT, &scale_text, "S", "the LoRA's text-encoder scale (default 1)"),
        CLI_OPT("--identifier", CLI_STR, &id, "WORD", "the subject's identifier (default sks)"),
        CLI_OPT("--class", CLI_STR, &cls, "NOUN", "the subject's class (default star)"),
        CLI_OPT("--sets", CLI_STR, &sets_s, "LIST",
                "world, subject, class, comma-separated (default: world; all three with --lora or --identifier)"),
        CLI_OPT("--num", CLI_INT, &num, "N", "pictures per set (default 100)"),
        CLI_OPT("--steps", CLI_INT, &steps, "N", "sampling steps (default 25)"),
        CLI_OPT("--guidance", CLI_FLOAT, &guidance, "G", "classifier-free guidance (default 1.5: the world model draws its pixels directly, and stronger guidance pushes its colours past the palette, docs/WORLD.md)"),
        CLI_OPT("--sampler", CLI_STR, &sampler_s, "NAME", "ddim, euler, pndm or ddpm (default ddim)"),
        CLI_OPT("--seed", CLI_U64, &seed, "S", "picture i of a set uses seed stream i of S (default 0)"),
        CLI_OPT("--grid", CLI_STR, &grid, "FILE", "also a sheet: the first prompts of each set (rows, labelled) with 4 pictures each"),
        CLI_OPT("--json", CLI_FLAG, &json, NULL, "the metrics as one JSON object"),
        CLI_END,
    };
    const cli_spec_t spec = {
        "eval", "--model DIR [--lora FILE] [--num N] [--sets world,subject,class] [options]",
        "Draws prompt sets with a model of booth's synthetic world and measures the pictures (colour,\n"
        "shape, background, size, position, the subject's pattern) against what each prompt asked:\n"
        "the base model's accuracy, and a DreamBooth LoRA's subject fidelity, its pattern rate on\n"
        "plain class prompts (language drift) and their colour diversity (docs/WORLD.md).",
        opts, 0, NULL};
    const char *pos[1];
    int npos, rc = cli_parse(&spec, argc, argv, pos, &npos);
    if (rc >= 0) return rc;
    if (!model && !(model = cli_default_model("eval"))) return 2;
    const cli_irange_t ranges[] = {{"--num", num, 1, 100000}, {"--steps", steps, 1, 1000}};
    if ((rc = cli_check_ranges("eval", ranges, 2))) return rc;
    bool on[S_NSETS] = {true, lora || id, lora || id};
    if (sets_s) {
        memset(on, 0, sizeof on);
        char buf[256];
        snprintf(buf, sizeof buf, "%s", sets_s);
        for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
            int k = 0;
            while (k < S_NSETS && strcmp(t, s_set_name[k])) k++;
            if (k == S_NSETS) {
                fprintf(stderr, "booth eval: --sets '%s': expected world, subject or class\n", t);
                return 2;
            }
            on[k] = true;
        }
    }
    if (!id) id = "sks";
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    if (!ctx) return 1;
    int status = 1;
    sd_lora_set_t *lu = NULL, *lt = NULL;
    s_gen_t g = {0};
    bt_img_t *tiles[S_NSETS * 8] = {0};
    sd_world_tally_t tally[S_NSETS];
    memset(tally, 0, sizeof tally);
    if (!(g.m = sd_model_load(ctx, model, SD_PART_ALL))) goto out;
    if (lora) {
        if (sd_lora_load(lora, ctx, g.m->unet, g.m->clip, NULL, &lu, &lt)) goto out;
        if (lu) sd_lora_set_scale(lu, scale_unet);
        if (lt) sd_lora_set_scale(lt, scale_text);
    }
    sd_sched_kind_t sampler;
    if (!sd_sched_kind_parse(sampler_s, &sampler)) {
        fprintf(stderr, "booth eval: --sampler '%s' is not ddim, euler, pndm or ddpm\n", sampler_s);
        status = 2;
        goto out;
    }
    g.p = (sd_sample_params_t){.guidance = guidance, .steps = steps, .sampler = sampler, .seed = seed};
    g.h = g.w = g.m->unet->cfg.sample_size;
    g.T = sd_prompt_tokens(g.m);
    g.cd = g.m->clip->cfg.hidden_size;
    int64_t sc = sd_vae_scale(g.m->vae);
    g.embeds = nn_alloc(ctx, (size_t)((1 + S_BATCH) * g.T * g.cd) * sizeof(float));
    g.lat = bt_malloc((size_t)(S_BATCH * g.m->unet->cfg.in_channels * g.h * g.w) * sizeof(float));
    g.img = bt_malloc((size_t)(3 * g.h * sc * g.w * sc) * sizeof(float));
    if (!g.embeds || !g.lat || !g.img || sd_encode_prompt(g.m, g.embeds, "", 0)) goto out;
    int nsets = 0;
    for (int k = 0; k < S_NSETS; k++) nsets += on[k];
    bt_progress_t bar;
    bt_progress_start(&bar, "eval", (int64_t)nsets * num, "img");
    int64_t done = 0;
    for (int k = 0; k < S_NSETS; k++) {
        if (!on[k]) continue;
        for (int i0 = 0; i0 < num; i0 += S_BATCH) {
            char prompts[S_BATCH][256];
            bt_img_t *imgs[S_BATCH] = {0};
            int n = num - i0 < S_BATCH ? num - i0 : S_BATCH, bad = 0;
            for (int j = 0; j < n; j++) s_prompt(k, i0 + j, id, cls, prompts[j], sizeof prompts[j]);
            bad = s_draw(&g, prompts, i0, n, imgs);
            for (int j = 0; j < n; j++) {
                sd_world_measure_t mm;
                if (bad || !imgs[j] || sd_world_measure(imgs[j], &mm)) {
                    bad = 1;
                    bt_img_destroy(&imgs[j]);
                    continue;
                }
                sd_world_expect_t e;
                sd_world_parse(prompts[j], id, &e);
                sd_world_tally_add(&tally[k], &e, &mm);
                if (i0 + j < 8) tiles[k * 8 + i0 + j] = imgs[j];
                else bt_img_destroy(&imgs[j]);
            }
            if (bad) goto out;
            done += n;
            bt_progress_update(&bar, done, s_set_name[k]);
        }
    }
    bt_progress_finish(&bar, NULL);

    sd_world_metrics_t mt[S_NSETS];
    for (int k = 0; k < S_NSETS; k++) sd_world_metrics(&tally[k], &mt[k]);
    if (json) {
        printf("{");
        bool first = true;
        if (on[S_WORLD]) {
            s_json_num("colour_accuracy", mt[S_WORLD].colour_acc, &first);
            s_json_num("shape_accuracy", mt[S_WORLD].shape_acc, &first);
            s_json_num("background_accuracy", mt[S_WORLD].bg_acc, &first);
            s_json_num("size_accuracy", mt[S_WORLD].size_acc, &first);
            s_json_num("position_accuracy", mt[S_WORLD].pos_acc, &first);
        }
        if (on[S_SUBJECT]) {
            s_json_num("subject_fidelity", mt[S_SUBJECT].subject_fidelity, &first);
            s_json_num("subject_background_accuracy", mt[S_SUBJECT].subject_bg_acc, &first);
            s_json_num("subject_colours", mt[S_SUBJECT].subject_colours_rate, &first);
        }
        if (on[S_CLASS]) {
            s_json_num("class_pattern_rate", mt[S_CLASS].pattern_rate, &first);
            s_json_num("class_subject_colour_rate", mt[S_CLASS].subject_colour_rate, &first);
            s_json_num("class_shape_accuracy", mt[S_CLASS].shape_acc, &first);
            s_json_num("class_distinct_colours", mt[S_CLASS].distinct_colours, &first);
            s_json_num("class_colour_entropy_bits", mt[S_CLASS].colour_entropy, &first);
        }
        printf("%s\"num\": %d}\n", first ? "" : ", ", num);
    } else {
        printf("%s%s%s: %d pictures per set, %d %s steps, guidance %g, seed %llu\n", model, lora ? " + " : "",
               lora ? lora : "", num, steps, sampler_s, guidance, (unsigned long long)seed);
        const sd_world_tally_t *t = &tally[S_WORLD];
        if (on[S_WORLD]) {
            printf("world (held-out captions):\n");
            s_print_rate("colour accuracy", mt[S_WORLD].colour_acc, t->colour_ok, t->colour_n);
            s_print_rate("shape accuracy", mt[S_WORLD].shape_acc, t->shape_ok, t->shape_n);
            s_print_rate("background accuracy", mt[S_WORLD].bg_acc, t->bg_ok, t->bg_n);
            s_print_rate("size accuracy", mt[S_WORLD].size_acc, t->size_ok, t->size_n);
            s_print_rate("position accuracy", mt[S_WORLD].pos_acc, t->pos_ok, t->pos_n);
        }
        t = &tally[S_SUBJECT];
        if (on[S_SUBJECT]) {
            printf("subject (\"a %s %s on a COLOUR background\"):\n", id, cls);
            s_print_rate("subject fidelity", mt[S_SUBJECT].subject_fidelity, t->subject_ok, t->subject_n);
            s_print_rate("background accuracy", mt[S_SUBJECT].subject_bg_acc, t->subject_bg_ok, t->subject_bg_n);
            s_print_rate("subject's colours", mt[S_SUBJECT].subject_colours_rate, t->subject_colours, t->subject_n);
        }
        t = &tally[S_CLASS];
        if (on[S_CLASS]) {
            printf("class (\"a %s\"):\n", cls);
            s_print_rate("pattern rate", mt[S_CLASS].pattern_rate, t->plain_pattern, t->plain_n);
            s_print_rate("shape accuracy", mt[S_CLASS].shape_acc, t->shape_ok, t->shape_n);
            int found = t->div_n - t->div_count[SD_COLOUR_ALL];
            s_print_rate("subject colour rate", mt[S_CLASS].subject_colour_rate,
                         t->div_count[SD_COLOUR_MAGENTA] + t->div_count[SD_COLOUR_CYAN], found);
            printf("  %-22s %d colours, entropy %.2f bits\n", "diversity", mt[S_CLASS].distinct_colours,
                   mt[S_CLASS].colour_entropy);
        }
    }
    if (grid) {
        /* rows of S_SHEET_COLS pictures: the world and subject sets' first prompts, each drawn with its
         * own picture and S_SHEET_COLS - 1 more seed streams (past the measured ones), labelled with
         * the prompt; the class set's first pictures ("a star") in rows of their own */
        enum { S_SHEET_ROWS = 6, S_SHEET_COLS = 4, S_SHEET_MAX = 3 * S_SHEET_ROWS };
        const bt_img_t *cells[S_SHEET_MAX * S_SHEET_COLS] = {0};
        bt_img_t *extra[S_SHEET_MAX * S_SHEET_COLS] = {0};
        char labels[S_SHEET_MAX][256];
        const char *rl[S_SHEET_MAX];
        int rows = 0, nextra = 0, ok = 1;
        for (int k = 0; k < S_NSETS && ok; k++) {
            if (!on[k]) continue;
            if (k == S_CLASS) {
                for (int r = 0; r < 2 && r * S_SHEET_COLS < num && r * S_SHEET_COLS < 8; r++, rows++) {
                    s_prompt(k, 0, id, cls, labels[rows], sizeof labels[rows]);
                    rl[rows] = labels[rows];
                    for (int c = 0; c < S_SHEET_COLS; c++) cells[rows * S_SHEET_COLS + c] = tiles[k * 8 + r * S_SHEET_COLS + c];
                }
                continue;
            }
            for (int i = 0; i < S_SHEET_ROWS && i < num && i < 8 && ok; i++, rows++) {
                s_prompt(k, i, id, cls, labels[rows], sizeof labels[rows]);
                rl[rows] = labels[rows];
                cells[rows * S_SHEET_COLS] = tiles[k * 8 + i];
                char same[S_SHEET_COLS - 1][256];
                for (int c = 0; c < S_SHEET_COLS - 1; c++) memcpy(same[c], labels[rows], sizeof same[c]);
                if (s_draw(&g, same, (int64_t)num + (int64_t)i * (S_SHEET_COLS - 1), S_SHEET_COLS - 1,
                           extra + nextra))
                    ok = 0;
                for (int c = 1; c < S_SHEET_COLS; c++) cells[rows * S_SHEET_COLS + c] = extra[nextra++];
            }
        }
        bt_img_grid_opts_t o = BT_IMG_GRID_OPTS_INIT;
        char title[512];
        snprintf(title, sizeof title, "%s%s%s | %d %s steps, guidance %g", model, lora ? " + " : "", lora ? lora : "",
                 steps, sampler_s, guidance);
        o.title = title;
        o.row_labels = rl;
        bt_img_t *sheet = ok ? bt_img_grid(cells, rows, S_SHEET_COLS, &o) : NULL;
        for (int k = 0; k < nextra; k++) bt_img_destroy(&extra[k]);
        if (!sheet || st_png_write(grid, sheet, NULL, 0)) {
            bt_img_destroy(&sheet);
            goto out;
        }
        bt_img_destroy(&sheet);
        fprintf(stderr, "booth eval: wrote %s\n", grid);
    }
    status = 0;
out:
    for (int k = 0; k < S_NSETS * 8; k++) bt_img_destroy(&tiles[k]);
    if (g.embeds) nn_free(ctx, g.embeds);
    free(g.lat);
    free(g.img);
    sd_lora_destroy(&lu);
    sd_lora_destroy(&lt);
    sd_model_destroy(&g.m);
    nn_ctx_destroy(&ctx);
    return status;
}
