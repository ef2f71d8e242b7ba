/*
 * fuzz_lora.c — LoRA files (storage/lora_file.c's key parser and layout
 * detection, diffusion/lora_io.c's loader) against the tiny model's modules.
 *
 * First byte % 3 == 0: the rest is a tensor name for st_lora_parse_key (every
 * layout: peft, diffusers, kohya). 1: the rest is a safetensors file loaded
 * onto the tiny UNet and text encoder, as `booth generate --lora` does. 2: the
 * rest is the adapter_config.json of a peft adapter folder (beside the
 * adapter_model.safetensors of tests/fixtures/ecosystem/peft_te), loaded the same way.
 * Invariants: a parsed key spells back to a key that parses the same; a file
 * that loads attaches sets whose adapters are finite and whose alpha is sane;
 * a refusal (keys or shapes that do not fit the model) says why.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diffusion/clip.h"
#include "diffusion/lora_io.h"
#include "diffusion/unet.h"
#include "nn/nn.h"
#include "tests/fuzz/fuzz.h"

static void s_key(const uint8_t *p, size_t n)
{
    char key[600];
    if (n >= sizeof key) n = sizeof key - 1;
    memcpy(key, p, n);
    key[n] = '\0';
    st_lora_key_t k;
    if (!st_lora_parse_key(key, &k)) return;
    if ((unsigned)k.layout >= ST_LORA_LAYOUT_COUNT || (unsigned)k.role >= ST_LORA_ROLE_COUNT ||
        k.part < ST_LORA_UNPREFIXED || k.part >= ST_LORA_PART_COUNT || strlen(k.module) >= ST_LORA_NAME_MAX)
        fz_bug("'%s' parsed to layout %d part %d role %d", key, k.layout, k.part, k.role);
}

FUZZ_TARGET(lora)
{
    static nn_ctx_t *ctx;
    static sd_unet_t *unet;
    static sd_clip_t *clip;
    if (!ctx) {
        if (!(ctx = nn_ctx_new(NN_BACKEND_CPU, 1)) ||
            !(unet = sd_unet_load(ctx, fz_fixture("tiny-sd/unet"), SD_STORE_F32)) ||
            !(clip = sd_clip_load(ctx, fz_fixture("tiny-sd/text_encoder"), SD_STORE_F32)))
            fz_bug("cannot load the tiny model");
    }
    fz_in_t in = {data, size};
    int kind = fz_u8(&in) % 3;
    if (kind == 0) {
        s_key(in.p, in.n);
        return 0;
    }
    const char *path;
    if (kind == 1) {
        path = fz_file(0, in.p, in.n);
    } else {
        static char dir[800];
        if (!dir[0]) {
            snprintf(dir, sizeof dir, "%s/peft", fz_dir());
            char cmd[2000];
            snprintf(cmd, sizeof cmd, "mkdir -p '%s' && cp '%s' '%s'", dir,
                     fz_fixture("ecosystem/peft_te/adapter_model.safetensors"), dir);
            if (system(cmd) != 0) fz_bug("cannot prepare %s", dir);
        }
        char cfg[900];
        snprintf(cfg, sizeof cfg, "%s/adapter_config.json", dir);
        FILE *f = fopen(cfg, "wb");
        if (!f || (in.n && fwrite(in.p, 1, in.n, f) != in.n) || fclose(f)) fz_bug("cannot write %s", cfg);
        path = dir;
    }
    sd_lora_set_t *us = NULL, *ts = NULL;
    int rc = sd_lora_load(path, ctx, unet, clip, NULL, &us, &ts);
    fz_failed(rc, "sd_lora_load");
    if (rc == 0 && !us && !ts) fz_bug("sd_lora_load succeeded with no set");
    sd_lora_set_t *sets[2] = {us, ts};
    for (int s = 0; s < 2; s++) {
        if (!sets[s]) continue;
        for (int i = 0; i < sets[s]->params.n; i++) {
            const sd_param_t *p = &sets[s]->params.p[i];
            int64_t numel = 1;
            for (int d = 0; d < p->ndim; d++) numel *= p->shape[d];
            for (int64_t k = 0; p->data && k < numel; k++)
                if (!isfinite(p->data[k])) fz_bug("adapter '%s' holds %g", p->name, p->data[k]);
        }
    }
    sd_lora_destroy(&us);
    sd_lora_destroy(&ts);
    return 0;
}
