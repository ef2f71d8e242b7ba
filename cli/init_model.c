/*
 * init_model.c — `booth init-model`: write a randomly initialised model folder.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/cli.h"
#include "common/log.h"
#include "common/progress.h"
#include "diffusion/init.h"
#include "nn/nn.h"

static void s_usage(FILE *f)
{
    fprintf(f, "usage: booth init-model --arch tiny|sd15|sd21 --out DIR [--seed S] [--dtype fp32|fp16|bf16]\n"
               "\n"
               "Writes a randomly initialised Stable Diffusion model folder in the diffusers layout\n"
               "(model_index.json, unet/, vae/, text_encoder/, tokenizer/ with the real CLIP vocabulary,\n"
               "scheduler/). Weights depend only on --arch and --seed (default 0).\n"
               "  tiny  the oracle's tiny model (3.2 M UNet parameters): tests and the demo\n"
               "  sd15  Stable Diffusion 1.5's architecture (860 M UNet parameters, 3.4 GB in fp32)\n"
               "  sd21  Stable Diffusion 2.1's (head dim 64, linear projections, OpenCLIP text encoder,\n"
               "        v-prediction DDIM scheduler)\n");
}

/* One line as each network starts and as it is written, with its time (an SD 1.5 UNet is most of a
 * minute and 3.4 GB in fp32: the lines say what is being made while nothing else moves). */
static void s_progress(void *user, const char *part, int done, int total)
{
    double *t0 = user, now = bt_now();
    if (done > 0) fprintf(stderr, "booth init-model: [%d/%d] done in %.1f s\n", done, total, now - *t0);
    if (strcmp(part, "done")) fprintf(stderr, "booth init-model: [%d/%d] %s: random weights, then written\n", done + 1,
                                      total, part);
    *t0 = now;
}

int cmd_init_model(int argc, char **argv)
{
    const char *arch_s = NULL, *out = NULL, *dtype_s = "fp32";
    uint64_t seed = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            s_usage(stdout);
            return 0;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "booth init-model: '%s' needs a value (or is unknown); see --help\n", a);
            return 2;
        }
        if (!strcmp(a, "--arch"))
            arch_s = argv[++i];
        else if (!strcmp(a, "--out"))
            out = argv[++i];
        else if (!strcmp(a, "--dtype"))
            dtype_s = argv[++i];
        else if (!strcmp(a, "--seed")) {
            char *end;
            seed = strtoull(argv[++i], &end, 10);
            if (*end || !*argv[i]) {
                fprintf(stderr, "booth init-model: --seed '%s' is not a non-negative integer\n", argv[i]);
                return 2;
            }
        } else {
            fprintf(stderr, "booth init-model: unknown option '%s'; see --help\n", a);
            return 2;
        }
    }
    sd_arch_t arch;
    if (!arch_s || !out) {
        fprintf(stderr, "booth init-model: --arch and --out are required; see --help\n");
        return 2;
    }
    if (!sd_arch_parse(arch_s, &arch)) {
        fprintf(stderr, "booth init-model: --arch '%s' is not tiny, sd15 or sd21\n", arch_s);
        return 2;
    }
    st_dtype_t dtype;
    if (!strcmp(dtype_s, "fp32"))
        dtype = ST_F32;
    else if (!strcmp(dtype_s, "fp16"))
        dtype = ST_F16;
    else if (!strcmp(dtype_s, "bf16"))
        dtype = ST_BF16;
    else {
        fprintf(stderr, "booth init-model: --dtype '%s' is not fp32, fp16 or bf16\n", dtype_s);
        return 2;
    }
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    if (!ctx) return 1;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    double part_t0 = bt_now();
    int rc = sd_model_init(ctx, out, arch, seed, dtype, s_progress, &part_t0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    nn_ctx_destroy(&ctx);
    if (rc) return 1;
    fprintf(stderr, "booth init-model: wrote %s (%s, seed %llu, %s) in %.1f s\n", out, sd_arch_name(arch),
            (unsigned long long)seed, dtype_s, (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9);
    return 0;
}
