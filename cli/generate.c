/*
 * generate.c — `booth generate`: text to images with a Stable Diffusion model
 * folder, written as PNGs (with the settings in a "parameters" text chunk).
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
#include "storage/safetensors.h"

typedef struct {
    bt_progress_t bar;
    int64_t done_before, total_steps;
    int64_t batches; /* sd_sample calls: the bar counts each one's model calls */
} s_prog_t;

static void s_on_step(void *user, int done, int total, const float *latents)
{
    (void)latents;
    s_prog_t *p = user;
    p->bar.total = p->batches * total; /* the sampler's own count (PNDM's extra call, or none at 1 step) */
    bt_progress_update(&p->bar, p->done_before + done, NULL);
    if (done == total) p->done_before += total;
}

/* out path of image i: PATH itself for one image, else PATH with "-0001" before the extension */
static void s_image_path(char *buf, size_t len, const char *out, int64_t i, int64_t n)
{
    if (n == 1) {
        snprintf(buf, len, "%s", out);
        return;
    }
    const char *dot = strrchr(out, '.'), *slash = strrchr(out, '/');
    if (!dot || (slash && dot < slash)) dot = out + strlen(out);
    snprintf(buf, len, "%.*s-%04lld%s", (int)(dot - out), out, (long long)i, *dot ? dot : ".png");
}

/* Reads `latents` [N, C, h, w] from a safetensors file. */
static float *s_read_latents(const char *path, int64_t *n, int64_t C, int64_t *h, int64_t *w)
{
    st_file_t *f = st_open(path);
    if (!f) return NULL;
    const st_tensor_t *t = st_find(f, "latents");
    float *x = NULL;
    char sbuf[96];
    if (!t)
        BT_ERROR("%s: no tensor named 'latents'", path);
    else if (t->ndim != 4 || t->shape[1] != C || t->shape[0] < 1)
        BT_ERROR("%s: 'latents' has shape %s, expected [N, %lld, H/8, W/8]", path,
                 st_shape_str(t->ndim, t->shape, sbuf, sizeof sbuf), (long long)C);
    else if (!(x = bt_malloc((size_t)st_numel(t) * sizeof(float))))
        BT_ERROR("%s: out of memory", path);
    else {
        st_read_f32(t, x);
        *n = t->shape[0];
        *h = t->shape[2];
        *w = t->shape[3];
    }
    st_close(&f);
    return x;
}

int cmd_generate(int argc, char **argv)
{
    const char *base_dtype = NULL, *prediction_s = NULL;
    const char *model = NULL, *prompt = NULL, *negative = "", *sampler_s = NULL, *out = "generated.png";
    const char *init_latents = NULL, *save_latents = NULL, *lora = NULL;
    float guidance = 7.5f, eta = 0, scale_unet = 1.0f, scale_text = 1.0f;
    int steps = 30, clip_skip = 0;
    uint64_t seed = 0;
    int64_t width = 0, height = 0, num = 1, batch = 1;
    bool num_seen = false;
    const cli_opt_t opts[] = {
        CLI_OPT("--model", CLI_STR, &model, "DIR|FILE", "a diffusers model folder, or a single-file checkpoint (.safetensors) " CLI_MODEL_DEFAULT_HELP),
        CLI_OPT("--base-dtype", CLI_STR, &base_dtype, "TYPE", CLI_BASE_DTYPE_HELP),
        CLI_OPT("--prediction-type", CLI_STR, &prediction_s, "TYPE", CLI_PREDICTION_HELP),
        CLI_OPT("--prompt", CLI_TEXT, &prompt, "TEXT", "what to draw (required)"),
        CLI_OPT("--negative-prompt", CLI_TEXT, &negative, "TEXT", "what to steer away from (default: empty)"),
        CLI_OPT("--guidance", CLI_FLOAT, &guidance, "G", "classifier-free guidance scale; <= 1 turns it off (default 7.5)"),
        CLI_OPT("--steps", CLI_INT, &steps, "N", "sampling steps (default 30)"),
        CLI_OPT("--sampler", CLI_STR, &sampler_s, "NAME", "ddim, euler, pndm or ddpm (default: the model's scheduler)"),
        CLI_OPT("--eta", CLI_FLOAT, &eta, "E", "DDIM eta: 0 is deterministic (default 0)"),
        CLI_OPT("--seed", CLI_U64, &seed, "S", "image i uses noise stream (S, i) (default 0)"),
        CLI_OPT("--width", CLI_I64, &width, "W", "image width, a multiple of 8 (default: the model's size)"),
        CLI_OPT("--height", CLI_I64, &height, "H", "image height, a multiple of 8 (default: the model's size)"),
        CLI_OPT_SEEN("--num-images", CLI_I64, &num, "N", "how many images (default 1)", &num_seen),
        CLI_OPT("--batch-size", CLI_I64, &batch, "B", "images per UNet call; results do not depend on it (default 1)"),
        CLI_OPT("--clip-skip", CLI_INT, &clip_skip, "K", "use the text encoder's output K layers from the end (default 0)"),
        CLI_OPT("--out", CLI_STR, &out, "PATH", "output PNG; several images get -0000, -0001, ... (default generated.png)"),
        CLI_OPT("--init-latents", CLI_STR, &init_latents, "FILE",
                "start from tensor 'latents' [N,4,H/8,W/8] of this safetensors file instead of the seed's noise"),
        CLI_OPT("--save-latents", CLI_STR, &save_latents, "FILE", "write the final latents (before the VAE) as 'latents'"),
        CLI_OPT("--lora", CLI_STR, &lora, "FILE", "a LoRA file: diffusers, kohya (A1111/ComfyUI) or peft layout"),
        CLI_OPT("--lora-scale-unet", CLI_FLOAT, &scale_unet, "S", "LoRA strength on the UNet (default 1)"),
        CLI_OPT("--lora-scale-text", CLI_FLOAT, &scale_text, "S", "LoRA strength on the text encoder (default 1)"),
        CLI_END,
    };
    const cli_spec_t spec = {"generate", "--model DIR --prompt TEXT [options]",
                             "Generates images from a text prompt with a Stable Diffusion 1.x/2.x model folder.\n"
                             "The same seed gives the same image whatever the batch size.",
                             opts, 0, NULL};
    const char *pos[1];
    int npos, rc = cli_parse(&spec, argc, argv, pos, &npos);
    if (rc >= 0) return rc;
    if (!prompt) {
        fprintf(stderr, "booth generate: --prompt is required (see --help)\n");
        return 2;
    }
    if (!model && !(model = cli_default_model("generate"))) return 2;
    const cli_irange_t ranges[] = {{"--steps", steps, 1, 1000},        {"--num-images", num, 1, 10000},
                                   {"--batch-size", batch, 1, 10000},  {"--clip-skip", clip_skip, 0, 1000},
                                   {"--width", width ? width : 8, 8, 8192}, {"--height", height ? height : 8, 8, 8192}};
    if ((rc = cli_check_ranges("generate", ranges, sizeof ranges / sizeof ranges[0]))) return rc;
    if (!(eta >= 0 && eta <= 1000)) {
        fprintf(stderr, "booth generate: --eta %g is outside [0, 1000]\n", (double)eta);
        return 2;
    }
    if (width % 8 || height % 8) {
        fprintf(stderr, "booth generate: --%s %lld is not a multiple of 8\n", width % 8 ? "width" : "height",
                (long long)(width % 8 ? width : height));
        return 2;
    }

    if (cli_check_output("generate", "--out", out) || (save_latents && cli_check_output("generate", "--save-latents", save_latents)))
        return 1;
    sd_store_t store;
    if (!cli_base_dtype("generate", base_dtype, &store)) return 2;
    int prediction;
    if (!cli_prediction_type("generate", prediction_s, model, &prediction)) return 2;
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    if (!ctx) return 1;
    int status = 1;
    float *latents = NULL, *images = NULL, *embeds = NULL;
    sd_lora_set_t *lora_unet = NULL, *lora_text = NULL;
    sd_model_t *m = cli_model_load(ctx, model, SD_PART_ALL, store, prediction);
    if (!m) goto out;
    if (lora) {
        if (sd_lora_load(lora, ctx, m->unet, m->clip, NULL, &lora_unet, &lora_text)) goto out;
        if (lora_unet) sd_lora_set_scale(lora_unet, scale_unet);
        if (lora_text) sd_lora_set_scale(lora_text, scale_text);
        fprintf(stderr, "booth generate: LoRA %s: %d UNet layers (scale %g), %d text-encoder layers (scale %g)\n", lora,
                lora_unet ? lora_unet->n : 0, scale_unet, lora_text ? lora_text->n : 0, scale_text);
    }
    sd_sched_kind_t sampler = m->default_sampler;
    if (sampler_s && !sd_sched_kind_parse(sampler_s, &sampler)) {
        fprintf(stderr, "booth generate: --sampler '%s' is not ddim, euler, pndm or ddpm\n", sampler_s);
        status = 2;
        goto out;
    }
    if (clip_skip >= m->clip->cfg.num_layers) {
        fprintf(stderr, "booth generate: --clip-skip %d leaves no layer of the %lld-layer text encoder\n", clip_skip,
                (long long)m->clip->cfg.num_layers);
        status = 2;
        goto out;
    }
    int64_t C = m->unet->cfg.in_channels, h, w;
    int64_t def = m->unet->cfg.sample_size, sc = sd_vae_scale(m->vae); /* pixels per latent */
    h = height ? sd_vae_latent_size(m->vae, height) : def;
    w = width ? sd_vae_latent_size(m->vae, width) : def;
    if (init_latents) {
        int64_t fn, fh, fw;
        if (!(latents = s_read_latents(init_latents, &fn, C, &fh, &fw))) goto out;
        if ((height && fh != h) || (width && fw != w) || (num_seen && fn != num)) {
            BT_ERROR("%s: latents [%lld, %lld, %lld, %lld] do not match --num-images %lld, --height %lld, --width %lld",
                     init_latents, (long long)fn, (long long)C, (long long)fh, (long long)fw, (long long)num,
                     (long long)(h * sc), (long long)(w * sc));
            goto out;
        }
        num = fn;
        h = fh;
        w = fw;
    }
    int64_t per = C * h * w, img_per = 3 * h * sc * w * sc;
    if (!latents && !(latents = bt_calloc((size_t)(num * per), sizeof(float)))) goto out;
    int64_t T = sd_prompt_tokens(m), cd = m->clip->cfg.hidden_size;
    if (!(embeds = nn_alloc(ctx, (size_t)(2 * T * cd) * sizeof(float))) || !(images = bt_malloc((size_t)img_per * sizeof(float))))
        goto out;
    if (sd_encode_prompt(m, embeds + T * cd, prompt, clip_skip) || sd_encode_prompt(m, embeds, negative, clip_skip))
        goto out;

    fprintf(stderr, "booth generate: %lld image%s %lldx%lld, %s, %d step%s, guidance %g, seed %llu\n", (long long)num,
            CLI_PLURAL(num), (long long)(w * sc), (long long)(h * sc), sd_sched_kind_name(sampler), steps, CLI_PLURAL(steps), guidance,
            (unsigned long long)seed);
    s_prog_t prog = {0};
    sd_sample_params_t p = {.guidance = guidance, .steps = steps, .sampler = sampler, .eta = eta, .seed = seed,
                            .progress = s_on_step, .progress_user = &prog};
    /* PNDM makes one more model call than steps (at 2 steps and more); the bar counts each batch's
     * calls as the sampler reports them */
    int calls = sampler == SD_SCHED_PNDM && steps > 1 ? steps + 1 : steps;
    prog.batches = (num + batch - 1) / batch;
    bt_progress_start(&prog.bar, "sampling", prog.batches * calls, "step");
    for (int64_t i0 = 0; i0 < num; i0 += batch) {
        int64_t nb = num - i0 < batch ? num - i0 : batch;
        p.first_index = i0;
        if (sd_sample(m, &p, embeds + T * cd, embeds, T, latents + i0 * per, init_latents != NULL, nb, h, w)) goto out;
    }
    bt_progress_finish(&prog.bar, NULL);

    if (save_latents) {
        st_writer_t *wr = st_writer_new();
        int64_t shape[4] = {num, C, h, w};
        int wrc = wr ? st_writer_add(wr, "latents", ST_F32, 4, shape, latents) : BT_ENOMEM;
        if (wrc == BT_OK) wrc = st_writer_set_metadata(wr, "prompt", prompt);
        if (wrc == BT_OK) wrc = st_writer_save(wr, save_latents);
        st_writer_destroy(&wr);
        if (wrc) goto out;
        fprintf(stderr, "booth generate: latents -> %s\n", save_latents);
    }
    char params[4096];
    int plen = snprintf(params, sizeof params,
                        "%s\nNegative prompt: %s\nSteps: %d, Sampler: %s, CFG scale: %g, Seed: %llu, Size: %lldx%lld, "
                        "Model: %s",
                        prompt, negative, steps, sd_sched_kind_name(sampler), guidance, (unsigned long long)seed,
                        (long long)(w * sc), (long long)(h * sc), model);
    if (lora && plen > 0 && (size_t)plen < sizeof params)
        snprintf(params + plen, sizeof params - (size_t)plen, ", LoRA: %s (unet %g, text %g)", lora, scale_unet,
                 scale_text);
    for (int64_t i = 0; i < num; i++) {
        if (sd_decode(m, images, NULL, latents + i * per, 1, h, w)) goto out;
        bt_img_t *img = bt_img_from_f32_chw(images, 3, (int)(h * sc), (int)(w * sc), BT_IMG_RANGE_01);
        char path[4096];
        s_image_path(path, sizeof path, out, i, num);
        st_png_text_t text = {"parameters", params};
        int wrc = img ? st_png_write(path, img, &text, 1) : BT_ENOMEM;
        bt_img_destroy(&img);
        if (wrc) goto out;
        printf("%s\n", path);
    }
    status = 0;
out:
    if (embeds) nn_free(ctx, embeds);
    free(latents);
    free(images);
    sd_lora_destroy(&lora_unet);
    sd_lora_destroy(&lora_text);
    sd_model_destroy(&m);
    nn_ctx_destroy(&ctx);
    return status;
}
