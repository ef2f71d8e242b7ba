/*
 * fuzz_config.c — every JSON file of a model folder that booth reads: the
 * UNet's, VAE's and text encoder's config.json (diffusion/config.c), the
 * scheduler's scheduler_config.json (diffusion/scheduler.c) and the tokenizer's
 * tokenizer_config.json, special_tokens_map.json and transformers 5's
 * tokenizer.json (diffusion/tokenizer.c; a small vocabulary beside the first two,
 * ecosystem/tok_slow, so that an input costs microseconds, not a 49408-token load).
 *
 * The first byte picks the file, the rest is its text. Invariants: a config
 * that loads describes a model that can be built and whose parameters fit the
 * family's limits (no overflow, no terabyte allocation later); a scheduler
 * config that loads gives tables for every scheduler kind; a refusal says why.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "diffusion/clip.h"
#include "diffusion/config.h"
#include "diffusion/scheduler.h"
#include "diffusion/tokenizer.h"
#include "diffusion/unet.h"
#include "diffusion/vae.h"
#include "tests/fuzz/fuzz.h"

#define S_MAX_PARAMS SD_PARAMS_MAX

/* A part whose config was accepted either registered sane sizes or failed (and
 * says why when it allocates: sd_params_alloc); never an overflowing plan. */
static void s_check_params(const sd_params_t *ps, const char *what)
{
    if (ps->failed) {
        if (!ps->why[0] && ps->n > 0) fz_bug("%s: registration failed without a reason", what);
        return;
    }
    int64_t total = 0;
    for (int i = 0; i < ps->n; i++) {
        int64_t n = 1;
        for (int d = 0; d < ps->p[i].ndim; d++)
            if (ps->p[i].shape[d] < 1 || __builtin_mul_overflow(n, ps->p[i].shape[d], &n))
                fz_bug("%s: parameter '%s' has an impossible shape", what, ps->p[i].name);
        if (__builtin_add_overflow(total, n, &total) || total > S_MAX_PARAMS)
            fz_bug("%s config accepted with more than %lld parameters", what, (long long)S_MAX_PARAMS);
    }
}

static const char *s_tokenizer_dir(void)
{
    static char dir[700];
    if (!dir[0]) {
        snprintf(dir, sizeof dir, "%s/tokenizer", fz_dir());
        char cmd[2200];
        snprintf(cmd, sizeof cmd, "mkdir -p '%s' && cp '%s' '%s' '%s'", dir, fz_fixture("ecosystem/tok_slow/vocab.json"),
                 fz_fixture("ecosystem/tok_slow/merges.txt"), dir);
        if (system(cmd) != 0) fz_bug("cannot prepare %s", dir);
    }
    return dir;
}

FUZZ_TARGET(config)
{
    fz_in_t in = {data, size};
    int kind = fz_u8(&in) % 7;
    const char *path = fz_file(0, in.p, in.n);
    int rc;
    switch (kind) {
    case 0: {
        sd_unet_config_t c;
        rc = sd_unet_config_load(path, &c);
        fz_failed(rc, "sd_unet_config_load");
        if (rc) break;
        sd_unet_t *u = sd_unet_new(&c);
        fz_failed(!u, "sd_unet_new");
        if (u) s_check_params(&u->params, "unet");
        sd_unet_destroy(&u);
        break;
    }
    case 1: {
        sd_vae_config_t c;
        rc = sd_vae_config_load(path, &c);
        fz_failed(rc, "sd_vae_config_load");
        if (rc) break;
        sd_vae_t *v = sd_vae_new(&c);
        fz_failed(!v, "sd_vae_new");
        if (v) s_check_params(&v->params, "vae");
        sd_vae_destroy(&v);
        break;
    }
    case 2: {
        sd_clip_config_t c;
        rc = sd_clip_config_load(path, &c);
        fz_failed(rc, "sd_clip_config_load");
        if (rc) break;
        sd_clip_t *t = sd_clip_new(&c);
        fz_failed(!t, "sd_clip_new");
        if (t) s_check_params(&t->params, "text_encoder");
        sd_clip_destroy(&t);
        break;
    }
    case 3: {
        sd_sched_config_t c;
        sd_sched_config_init(&c);
        rc = sd_sched_config_parse(&c, (const char *)in.p, in.n, "scheduler_config.json");
        fz_failed(rc, "sd_sched_config_parse");
        for (int k = 0; rc == 0 && k < 4; k++) {
            sd_sched_table_t tab;
            int r = sd_sched_table_init(&tab, &c, (sd_sched_kind_t)k);
            fz_failed(r, "sd_sched_table_init");
            if (r == 0) sd_sched_table_free(&tab);
            sd_sched_t *s = sd_sched_new(&c, (sd_sched_kind_t)k, 1 + (int)(in.n % 50));
            if (s) sd_sched_destroy(&s);
            else fz_failed(1, "sd_sched_new");
        }
        sd_sched_config_free(&c);
        break;
    }
    case 6: { /* tokenizer.json alone, as transformers 5 writes a tokenizer folder */
        char dir[800];
        snprintf(dir, sizeof dir, "%s/tokenizer5", fz_dir());
        char file[900];
        snprintf(file, sizeof file, "%s/tokenizer.json", dir);
        static bool made;
        if (!made) {
            char cmd[1000];
            snprintf(cmd, sizeof cmd, "mkdir -p '%s'", dir);
            if (system(cmd) != 0) fz_bug("cannot make %s", dir);
            made = true;
        }
        FILE *f = fopen(file, "wb");
        if (!f || (in.n && fwrite(in.p, 1, in.n, f) != in.n) || fclose(f)) fz_bug("cannot write %s", file);
        sd_tokenizer_t *t = sd_tokenizer_load(dir);
        fz_failed(!t, "sd_tokenizer_load (tokenizer.json)");
        if (t) {
            sd_tok_result_t r = {0};
            if (sd_tokenize(t, "a photo of sks dog", &r) == 0 && r.n_ids != r.n_tokens + 2) fz_bug("tokenize");
            sd_tok_result_free(&r);
        }
        sd_tokenizer_destroy(&t);
        break;
    }
    default: {
        const char *dir = s_tokenizer_dir();
        char other[800], mine[800];
        snprintf(mine, sizeof mine, "%s/%s", dir, kind == 4 ? "tokenizer_config.json" : "special_tokens_map.json");
        snprintf(other, sizeof other, "%s/%s", dir, kind == 4 ? "special_tokens_map.json" : "tokenizer_config.json");
        unlink(other);
        FILE *f = fopen(mine, "wb");
        if (!f || (in.n && fwrite(in.p, 1, in.n, f) != in.n) || fclose(f)) fz_bug("cannot write %s", mine);
        sd_tokenizer_t *t = sd_tokenizer_load(dir);
        fz_failed(!t, "sd_tokenizer_load");
        if (t) {
            if (sd_tok_max_length(t) < 2) fz_bug("model_max_length %d accepted", sd_tok_max_length(t));
            sd_tok_result_t r = {0};
            if (sd_tokenize(t, "a photo of sks dog", &r) == 0 && r.n_ids != r.n_tokens + 2) fz_bug("tokenize");
            sd_tok_result_free(&r);
        }
        sd_tokenizer_destroy(&t);
        break;
    }
    }
    return 0;
}
