/*
 * convert.c — `booth convert`: a single-file checkpoint (A1111 / ComfyUI
 * .safetensors, original LDM names) into a diffusers model folder.
 *
 * Every command's --model already takes the file itself; the folder is for
 * those who want one (diffusers, other tools, or a model whose architecture
 * needs --config). The model is read exactly as --model reads it
 * (sd_model_load_file) and written as init-model writes a folder, so loading
 * the folder gives the same numbers as loading the file.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "common/fileio.h"
#include "common/log.h"
#include "common/status.h"
#include "diffusion/init.h"
#include "diffusion/pipeline.h"
#include "nn/nn.h"

static void s_usage(FILE *f)
{
    fprintf(f,
            "usage: booth convert FILE.safetensors --out DIR [--config DIR] [--prediction-type epsilon|v_prediction]\n"
            "                     [--dtype auto|fp32|fp16|bf16]\n"
            "\n"
            "Writes a single-file Stable Diffusion 1.x / 2.x checkpoint (original LDM names, as A1111 and\n"
            "ComfyUI use) as a diffusers model folder. The architecture comes from the tensor shapes, as\n"
            "diffusers' from_single_file infers it; every --model also takes the file itself.\n"
            "  --config DIR           a diffusers folder whose unet/vae/text_encoder configs (and scheduler,\n"
            "                         tokenizer) replace the inferred ones, like from_single_file(config=DIR)\n"
            "  --prediction-type T    epsilon or v_prediction (default: epsilon for SD 1.x, v_prediction for\n"
            "                         SD 2.x, the 768-v models; a 512-base SD 2.x model needs epsilon)\n"
            "  --dtype D              weights as stored: auto (the file's type, default), fp32, fp16, bf16\n"
            ".ckpt / .bin files are Python pickles, which booth does not open (unpickling runs code);\n"
            "the error message shows a one-line conversion to safetensors.\n");
}

static int s_write_file(const char *dir, const char *name, const char *text)
{
    char path[8300];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) {
        BT_ERROR("%s: cannot create", path);
        return BT_EIO;
    }
    bool ok = fwrite(text, 1, strlen(text), f) == strlen(text);
    if (fclose(f) != 0 || !ok) {
        BT_ERROR("%s: write failed", path);
        return BT_EIO;
    }
    return BT_OK;
}

/* One network: its config, then its weights. */
static int s_save_part(const char *out, const char *sub, const char *weights, sd_params_t *ps, st_dtype_t dtype,
                       int (*save_cfg)(const char *, const void *), const void *cfg)
{
    char path[8192];
    snprintf(path, sizeof path, "%s/%s", out, sub);
    int rc = bt_mkdirs(path);
    snprintf(path, sizeof path, "%s/%s/config.json", out, sub);
    if (rc == BT_OK) rc = save_cfg(path, cfg);
    snprintf(path, sizeof path, "%s/%s/%s.safetensors", out, sub, weights);
    if (rc == BT_OK) rc = sd_params_save(ps, path, dtype, (const char *const[]){"format", "pt", NULL});
    return rc;
}

static int s_unet_cfg(const char *p, const void *c) { return sd_unet_config_save(p, c); }
static int s_vae_cfg(const char *p, const void *c) { return sd_vae_config_save(p, c); }
static int s_clip_cfg(const char *p, const void *c) { return sd_clip_config_save(p, c); }

int cmd_convert(int argc, char **argv)
{
    const char *in = NULL, *out = NULL, *pred_s = NULL, *dtype_s = "auto";
    sd_single_file_opts_t opts = {.prediction = -1};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            s_usage(stdout);
            return 0;
        }
        if (a[0] != '-') {
            if (in) {
                fprintf(stderr, "booth convert: one checkpoint at a time ('%s' and '%s')\n", in, a);
                return 2;
            }
            in = a;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "booth convert: '%s' needs a value (or is unknown); see --help\n", a);
            return 2;
        }
        if (!strcmp(a, "--out") || !strcmp(a, "--output-dir"))
            out = argv[++i];
        else if (!strcmp(a, "--config"))
            opts.config_dir = argv[++i];
        else if (!strcmp(a, "--prediction-type") || !strcmp(a, "--prediction_type"))
            pred_s = argv[++i];
        else if (!strcmp(a, "--dtype"))
            dtype_s = argv[++i];
        else {
            fprintf(stderr, "booth convert: unknown option '%s'; see --help\n", a);
            return 2;
        }
    }
    if (!in || !out) {
        fprintf(stderr, "booth convert: a checkpoint FILE and --out DIR are required; see --help\n");
        return 2;
    }
    if (pred_s) {
        if (!strcmp(pred_s, "epsilon"))
            opts.prediction = SD_PRED_EPSILON;
        else if (!strcmp(pred_s, "v_prediction") || !strcmp(pred_s, "v-prediction"))
            opts.prediction = SD_PRED_V;
        else {
            fprintf(stderr, "booth convert: --prediction-type '%s' is not epsilon or v_prediction\n", pred_s);
            return 2;
        }
    }
    int dt = !strcmp(dtype_s, "auto") ? -1
             : !strcmp(dtype_s, "fp32") ? ST_F32
             : !strcmp(dtype_s, "fp16") ? ST_F16
             : !strcmp(dtype_s, "bf16") ? ST_BF16
                                        : -2;
    if (dt == -2) {
        fprintf(stderr, "booth convert: --dtype '%s' is not auto, fp32, fp16 or bf16\n", dtype_s);
        return 2;
    }
    if (!sd_single_file_is(in)) {
        fprintf(stderr, "booth convert: %s is a folder; convert takes a single-file checkpoint\n", in);
        return 2;
    }
    sd_single_file_t *sf = sd_single_file_open(in, &opts);
    if (!sf) return 1;
    if (dt == -1) { /* the type the file's UNet weights have */
        const st_tensor_t *t = st_find(sf->file, "model.diffusion_model.input_blocks.0.0.weight");
        dt = t && (t->dtype == ST_F16 || t->dtype == ST_BF16) ? (int)t->dtype : ST_F32;
    }
    char *sched = sd_single_file_sched_json(sf);
    bool sd2 = sf->sd2;
    opts.prediction = (int)sf->prediction; /* decided (and said) once */
    sd_single_file_close(&sf);
    nn_ctx_t *ctx = sched ? nn_ctx_new(NN_BACKEND_CPU, 0) : NULL; /* both said why when NULL */
    sd_model_t *m = ctx && sched ? sd_model_load_file(ctx, in, SD_PART_TEXT | SD_PART_UNET | SD_PART_VAE | SD_PART_SCHEDULER,
                                                      SD_STORE_AUTO, &opts)
                                 : NULL;
    int rc = m ? BT_OK : BT_EINVAL;
    char sub[8192];
    snprintf(sub, sizeof sub, "%s/scheduler", out);
    if (rc == BT_OK) rc = bt_mkdirs(sub);
    if (rc == BT_OK && opts.config_dir && opts.prediction < 0) { /* the config folder's own scheduler */
        char path[8192], *text = NULL;
        size_t len;
        snprintf(path, sizeof path, "%s/scheduler/scheduler_config.json", opts.config_dir);
        if (bt_read_file(path, &text, &len) == BT_OK) {
            free(sched);
            sched = text;
        }
    }
    if (rc == BT_OK) rc = s_write_file(sub, "scheduler_config.json", sched);
    if (rc == BT_OK) rc = sd_model_write_tokenizer(out, sd2);
    if (rc == BT_OK)
        rc = s_save_part(out, "text_encoder", "model", &m->clip->params, (st_dtype_t)dt, s_clip_cfg, &m->clip->cfg);
    if (rc == BT_OK)
        rc = s_save_part(out, "vae", "diffusion_pytorch_model", &m->vae->params, (st_dtype_t)dt, s_vae_cfg,
                         &m->vae->cfg);
    if (rc == BT_OK)
        rc = s_save_part(out, "unet", "diffusion_pytorch_model", &m->unet->params, (st_dtype_t)dt, s_unet_cfg,
                         &m->unet->cfg);
    if (rc == BT_OK)
        rc = sd_model_write_index(out, m->sched_cfg.class_name[0] ? m->sched_cfg.class_name
                                       : sd2                      ? "DDIMScheduler"
                                                                  : "PNDMScheduler");
    if (rc == BT_OK)
        fprintf(stderr, "booth convert: wrote %s (SD %s, %s weights)\n", out, sd2 ? "2.x" : "1.x",
                st_dtype_name((st_dtype_t)dt));
    sd_model_destroy(&m);
    nn_ctx_destroy(&ctx);
    free(sched);
    return rc ? 1 : 0;
}
