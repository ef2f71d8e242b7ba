/*
 * grid.c — `booth grid`: sweep the LoRA knobs (UNet scale, text-encoder scale,
 * guidance) with the same seed in every cell, as labelled PNG grids.
 *
 * The first knob with several values runs along the columns, the second down
 * the rows; a third multi-valued knob gives one grid per value (OUT-<knob><v>.png).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "cli/args.h"
#include "cli/cli.h"
#include "common/fileio.h"
#include "common/image.h"
#include "common/log.h"
#include "common/progress.h"
#include "common/status.h"
#include "diffusion/lora_io.h"
#include "diffusion/pipeline.h"
#include "nn/nn.h"
#include "storage/png.h"

enum { K_UNET, K_TEXT, K_CFG };
static const char *const s_knob_label[] = {"unet", "text", "cfg"};

typedef struct {
    bt_progress_t *bar;
    int64_t done, cells;
} s_prog_t;

static void s_on_step(void *user, int done, int total, const float *latents)
{
    (void)latents;
    s_prog_t *p = user;
    p->bar->total = p->cells * total; /* the sampler's own count of model calls */
    bt_progress_update(p->bar, p->done + done, NULL);
    if (done == total) p->done += total;
}

int cmd_grid(int argc, char **argv)
{
    const char *base_dtype = NULL, *prediction_s = NULL;
    const char *model = NULL, *lora = NULL, *prompt = NULL, *negative = "", *sampler_s = NULL, *out = "grid.png";
    cli_floats_t lists[3] = {{1, {1.0f}}, {1, {1.0f}}, {1, {7.5f}}};
    int steps = 30;
    uint64_t seed = 0;
    int64_t width = 0, height = 0;
    const cli_opt_t opts[] = {
        CLI_OPT("--model", CLI_STR, &model, "DIR|FILE", "a diffusers model folder, or a single-file checkpoint (.safetensors) " CLI_MODEL_DEFAULT_HELP),
        CLI_OPT("--base-dtype", CLI_STR, &base_dtype, "TYPE", CLI_BASE_DTYPE_HELP),
        CLI_OPT("--prediction-type", CLI_STR, &prediction_s, "TYPE", CLI_PREDICTION_HELP),
        CLI_OPT("--lora", CLI_STR, &lora, "FILE", "LoRA file, any layout (required)"),
        CLI_OPT("--prompt", CLI_TEXT, &prompt, "TEXT", "what to draw (required)"),
        CLI_OPT("--negative-prompt", CLI_TEXT, &negative, "TEXT", "what to steer away from"),
        CLI_OPT("--lora-scales-unet", CLI_FLOAT_LIST, &lists[K_UNET], "S,S,...", "UNet LoRA scales (default 1)"),
        CLI_OPT("--lora-scales-text", CLI_FLOAT_LIST, &lists[K_TEXT], "S,S,...",
                "text-encoder LoRA scales (default 1)"),
        CLI_OPT("--guidance", CLI_FLOAT_LIST, &lists[K_CFG], "G,G,...", "guidance scales (default 7.5)"),
        CLI_OPT("--steps", CLI_INT, &steps, "N", "sampling steps (default 30)"),
        CLI_OPT("--sampler", CLI_STR, &sampler_s, "NAME", "ddim, euler, pndm or ddpm (default: the model's)"),
        CLI_OPT("--seed", CLI_U64, &seed, "S", "the seed of every cell (default 0)"),
        CLI_OPT("--width", CLI_I64, &width, "W", "cell width (default: the model's size)"),
        CLI_OPT("--height", CLI_I64, &height, "H", "cell height (default: the model's size)"),
        CLI_OPT("--out", CLI_STR, &out, "PATH", "output PNG (default grid.png)"),
        CLI_END,
    };
    const cli_spec_t spec = {"grid", "--model DIR --lora FILE --prompt TEXT [--lora-scales-unet ...] [options]",
                             "Draws the prompt for every combination of the knob values, same seed everywhere, as\n"
                             "labelled grids: the first multi-valued knob (unet, text, guidance) is the columns, the\n"
                             "second the rows, a third makes one grid per value.",
                             opts, 0, NULL};
    const char *pos[1];
    int npos, rc = cli_parse(&spec, argc, argv, pos, &npos);
    if (rc >= 0) return rc;
    if (!lora || !prompt) {
        fprintf(stderr, "booth grid: --lora and --prompt are required (see --help)\n");
        return 2;
    }
    if (!model && !(model = cli_default_model("grid"))) return 2;
    const cli_irange_t ranges[] = {{"--steps", steps, 1, 1000},
                                   {"--width", width ? width : 8, 8, 8192},
                                   {"--height", height ? height : 8, 8, 8192}};
    if ((rc = cli_check_ranges("grid", ranges, sizeof ranges / sizeof ranges[0]))) return rc;
    if (width % 8 || height % 8) {
        fprintf(stderr, "booth grid: --%s %lld is not a multiple of 8\n", width % 8 ? "width" : "height",
                (long long)(width % 8 ? width : height));
        return 2;
    }
    int axes[3], na = 0;
    int64_t cells = 1;
    for (int k = 0; k < 3; k++)
        if (lists[k].n > 1) axes[na++] = k;
    for (int k = 0; k < 3; k++) cells *= lists[k].n;
    if (cells > 256) {
        fprintf(stderr, "booth grid: %lld cells (the product of the list lengths) is over the limit of 256\n",
                (long long)cells);
        return 2;
    }
    int col = na > 0 ? axes[0] : -1, row = na > 1 ? axes[1] : -1, page = na > 2 ? axes[2] : -1;

    if (cli_check_output("grid", "--out", out)) return 1;
    sd_store_t store;
    if (!cli_base_dtype("grid", base_dtype, &store)) return 2;
    int prediction;
    if (!cli_prediction_type("grid", prediction_s, model, &prediction)) return 2;
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    if (!ctx) return 1;
    int status = 1;
    sd_lora_set_t *lu = NULL, *lt = NULL;
    float *embeds = NULL, *lat = NULL, *img = NULL;
    bt_img_t **tiles = bt_calloc((size_t)cells, sizeof *tiles);
    sd_model_t *m = cli_model_load(ctx, model, SD_PART_ALL, store, prediction);
    if (!m || !tiles || sd_lora_load(lora, ctx, m->unet, m->clip, NULL, &lu, &lt)) goto out;
    sd_sched_kind_t sampler = m->default_sampler;
    if (sampler_s && !sd_sched_kind_parse(sampler_s, &sampler)) {
        fprintf(stderr, "booth grid: --sampler '%s' is not ddim, euler, pndm or ddpm\n", sampler_s);
        status = 2;
        goto out;
    }
    int64_t h = height ? sd_vae_latent_size(m->vae, height) : m->unet->cfg.sample_size;
    int64_t w = width ? sd_vae_latent_size(m->vae, width) : m->unet->cfg.sample_size;
    int64_t sc = sd_vae_scale(m->vae); /* pixels per latent */
    int64_t T = sd_prompt_tokens(m), cd = m->clip->cfg.hidden_size, C = m->unet->cfg.in_channels;
    embeds = nn_alloc(ctx, (size_t)(2 * T * cd) * sizeof(float));
    lat = bt_malloc((size_t)(C * h * w) * sizeof(float));
    img = bt_malloc((size_t)(3 * h * sc * w * sc) * sizeof(float));
    if (!embeds || !lat || !img) goto out;

    bt_progress_t bar;
    bt_progress_start(&bar, "grid", cells * (sampler == SD_SCHED_PNDM && steps > 1 ? steps + 1 : steps), "step");
    s_prog_t prog = {&bar, 0, cells};
    int64_t idx = 0;
    float cur_text = -1e30f;
    /* cells in a fixed order: unet fastest, then text, then guidance */
    for (int g = 0; g < lists[K_CFG].n; g++)
        for (int tx = 0; tx < lists[K_TEXT].n; tx++)
            for (int u = 0; u < lists[K_UNET].n; u++, idx++) {
                float su = lists[K_UNET].v[u], st = lists[K_TEXT].v[tx], cfg = lists[K_CFG].v[g];
                if (lu) sd_lora_set_scale(lu, su);
                if (lt) sd_lora_set_scale(lt, st);
                if (st != cur_text) { /* the text encoder's LoRA scale changes the embeddings */
                    if (sd_encode_prompt(m, embeds + T * cd, prompt, 0) || sd_encode_prompt(m, embeds, negative, 0))
                        goto out;
                    cur_text = st;
                }
                sd_sample_params_t p = {.guidance = cfg, .steps = steps, .sampler = sampler, .seed = seed,
                                        .progress = s_on_step, .progress_user = &prog};
                if (sd_sample(m, &p, embeds + T * cd, embeds, T, lat, false, 1, h, w) ||
                    sd_decode(m, img, NULL, lat, 1, h, w))
                    goto out;
                if (!(tiles[idx] = bt_img_from_f32_chw(img, 3, (int)(h * sc), (int)(w * sc), BT_IMG_RANGE_01))) goto out;
            }
    bt_progress_finish(&bar, NULL);

    /* lay the cells out: idx = (g * nt + tx) * nu + u */
    int npages = page >= 0 ? lists[page].n : 1, ncols = col >= 0 ? lists[col].n : 1, nrows = row >= 0 ? lists[row].n : 1;
    char labels[2][CLI_MAX_LIST][32];
    const char *rl[CLI_MAX_LIST], *cl[CLI_MAX_LIST];
    for (int i = 0; i < ncols; i++) {
        snprintf(labels[0][i], 32, "%s %g", col >= 0 ? s_knob_label[col] : "", col >= 0 ? lists[col].v[i] : 0.0f);
        cl[i] = labels[0][i];
    }
    for (int i = 0; i < nrows; i++) {
        snprintf(labels[1][i], 32, "%s %g", row >= 0 ? s_knob_label[row] : "", row >= 0 ? lists[row].v[i] : 0.0f);
        rl[i] = labels[1][i];
    }
    for (int pg = 0; pg < npages; pg++) {
        const bt_img_t **grid_tiles = bt_calloc((size_t)(nrows * ncols), sizeof *grid_tiles);
        if (!grid_tiles) goto out;
        for (int r = 0; r < nrows; r++)
            for (int c = 0; c < ncols; c++) {
                int sel[3] = {0, 0, 0};
                if (col >= 0) sel[col] = c;
                if (row >= 0) sel[row] = r;
                if (page >= 0) sel[page] = pg;
                int64_t i = ((int64_t)sel[K_CFG] * lists[K_TEXT].n + sel[K_TEXT]) * lists[K_UNET].n + sel[K_UNET];
                grid_tiles[r * ncols + c] = tiles[i];
            }
        char title[1024], path[4096];
        int fixed = snprintf(title, sizeof title, "%s | seed %llu", prompt, (unsigned long long)seed);
        for (int k = 0; k < 3 && fixed > 0 && (size_t)fixed < sizeof title; k++)
            if (k != col && k != row)
                fixed += snprintf(title + fixed, sizeof title - (size_t)fixed, " | %s %g", s_knob_label[k],
                                  lists[k].v[k == page ? pg : 0]);
        bt_img_grid_opts_t o = BT_IMG_GRID_OPTS_INIT;
        o.title = title;
        o.col_labels = col >= 0 ? cl : NULL;
        o.row_labels = row >= 0 ? rl : NULL;
        bt_img_t *grid = bt_img_grid(grid_tiles, nrows, ncols, &o);
        free(grid_tiles);
        if (page >= 0) {
            const char *dot = strrchr(out, '.');
            int stem = dot ? (int)(dot - out) : (int)strlen(out);
            snprintf(path, sizeof path, "%.*s-%s%g%s", stem, out, s_knob_label[page], lists[page].v[pg],
                     dot ? dot : ".png");
        } else {
            snprintf(path, sizeof path, "%s", out);
        }
        int wrc = grid ? st_png_write(path, grid, NULL, 0) : BT_ENOMEM;
        bt_img_destroy(&grid);
        if (wrc) goto out;
        printf("%s\n", path);
    }
    status = 0;
out:
    for (int64_t i = 0; tiles && i < cells; i++) bt_img_destroy(&tiles[i]);
    free(tiles);
    if (embeds) nn_free(ctx, embeds);
    free(lat);
    free(img);
    sd_lora_destroy(&lu);
    sd_lora_destroy(&lt);
    sd_model_destroy(&m);
    nn_ctx_destroy(&ctx);
    return status;
}
