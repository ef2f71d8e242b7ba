/*
 * priors.c — `booth priors`: generate the class images of prior preservation
 * into one HDF5 prior-set file (docs/FORMAT.md), which `booth train
 * --class-data-dir FILE.h5` then uses.
 *
 * Reruns are cheap and safe: an existing file (or the parts an interrupted run
 * left beside it) keeps its images, only the missing indices are generated,
 * and the result is the same file a single uninterrupted run writes.
 */
#include <stdio.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "cli/train_flags.h"
#include "common/progress.h"
#include "diffusion/priors.h"
#include "nn/nn.h"

typedef struct {
    bt_progress_t bar;
} s_prog_t;

static void s_progress(void *user, int done, int total, const float *latents)
{
    s_prog_t *p = user;
    if (done == 1) bt_progress_start(&p->bar, "prior images", total, "img");
    bt_progress_update(&p->bar, done, NULL);
    if (done == total) bt_progress_finish(&p->bar, NULL);
}

int cmd_priors(int argc, char **argv)
{
    const char *base_dtype = NULL, *prediction_s = NULL;
    const char *model = NULL, *prompt = NULL, *out = NULL;
    int num = 0, steps = 25, resolution = 0;
    float guidance = 7.5f;
    uint64_t seed = 0;
    const cli_opt_t opts[] = {
        CLI_OPT("--model", CLI_STR, &model, "DIR|FILE", "a diffusers model folder, or a single-file checkpoint (.safetensors) " CLI_MODEL_DEFAULT_HELP),
        CLI_OPT("--base-dtype", CLI_STR, &base_dtype, "TYPE", CLI_BASE_DTYPE_HELP),
        CLI_OPT("--prediction-type", CLI_STR, &prediction_s, "TYPE", CLI_PREDICTION_HELP),
        CLI_OPT("--class-prompt", CLI_TEXT, &prompt, "TEXT", "e.g. \"a photo of dog\" (required)"),
        CLI_OPT("--num", CLI_INT, &num, "N", "images the set must hold: indices 0..N-1 (required)"),
        CLI_OPT("--out", CLI_STR, &out, "FILE.h5", "the prior-set file (required)"),
        CLI_OPT("--steps", CLI_INT, &steps, "K", "sampler steps per image (default 25)"),
        CLI_OPT("--guidance", CLI_FLOAT, &guidance, "G", "classifier-free guidance scale (default 7.5)"),
        CLI_OPT("--seed", CLI_U64, &seed, "S", "image i starts from noise stream (S, i) (default 0)"),
        CLI_OPT("--resolution", CLI_INT, &resolution, "PX",
                "square images of PX pixels, a multiple of 8 (default: the model's own, UNet sample_size x the "
                "VAE's scale: 512 for SD 1.5)"),
        CLI_END,
    };
    const cli_spec_t spec = {
        "priors", "--model DIR --class-prompt TEXT --num N --out FILE.h5 [options]",
        "Generates the class images of DreamBooth's prior preservation with the frozen model (the model's\n"
        "default sampler) and stores them, with their prompt, seed, index and VAE latents, in one HDF5 file.\n"
        "Rerunning fills in only missing indices: an interrupted run continues, and a larger --num extends\n"
        "the set; the file is the same as one uninterrupted run would write. `booth train --class-data-dir\n"
        "FILE.h5` trains on it.",
        opts, 0, NULL};
    const char *pos[1];
    int npos, rc = cli_parse(&spec, argc, argv, pos, &npos);
    if (rc >= 0) return rc;
    if (!prompt || !out || !num) {
        fprintf(stderr, "booth priors: --class-prompt, --num and --out are required\n");
        return 2;
    }
    if (!model && !(model = cli_default_model("priors"))) return 2;
    if (!resolution && !(resolution = cli_native_resolution(model))) return 2; /* the config loader said why */
    const cli_irange_t ranges[] = {{"--num", num, 1, 100000}, {"--steps", steps, 1, 1000},
                                   {"--resolution", resolution, 8, 4096}};
    if ((rc = cli_check_ranges("priors", ranges, sizeof ranges / sizeof ranges[0]))) return rc;
    if (resolution % 8) {
        fprintf(stderr, "booth priors: --resolution %d is not a multiple of 8\n", resolution);
        return 2;
    }
    size_t ol = strlen(out);
    if (ol < 4 || strcmp(out + ol - 3, ".h5")) {
        fprintf(stderr, "booth priors: --out '%s' must end in .h5\n", out);
        return 2;
    }
    sd_store_t store;
    if (!cli_base_dtype("priors", base_dtype, &store)) return 2;
    int prediction;
    if (!cli_prediction_type("priors", prediction_s, model, &prediction)) return 2;
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    if (!ctx) return 1;
    int status = 1;
    sd_model_t *m = cli_model_load(ctx, model, SD_PART_ALL, store, prediction);
    if (m) {
        sd_prior_spec_t ps = {.prompt = prompt, .seed = seed, .steps = steps, .guidance = guidance,
                              .resolution = resolution};
        s_prog_t prog = {0};
        int made = sd_priors_ensure(m, out, &ps, num, s_progress, &prog);
        if (made >= 0) {
            fprintf(stderr, "booth priors: %s: generated %d image%s (%d requested)\n", out, made,
                    made == 1 ? "" : "s", num);
            printf("%s\n", out);
            status = 0;
        }
    }
    sd_model_destroy(&m);
    nn_ctx_destroy(&ctx);
    return status;
}
