/*
 * fuzz_single_file.c — single-file checkpoints (diffusion/single_file.c): the
 * architecture inferred from tensor names and shapes, SD 1.x or 2.x, and the
 * views that present each part under diffusers' names.
 *
 * The input is a safetensors header without offsets — {"NAME": {"dtype": "F16",
 * "shape": [...]}, ...} — and the harness lays the tensors out one after the
 * other in a sparse file (zeros cost nothing), so the fuzzer works on names
 * and shapes, not on megabytes of weights (the safetensors harness covers the
 * bytes of the format). Invariants: what opens has configs that build models
 * of sane size, and each part's view gives every parameter its exact bytes; a
 * refusal says why.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "diffusion/clip.h"
#include "diffusion/single_file.h"
#include "diffusion/unet.h"
#include "diffusion/vae.h"
#include "storage/safetensors.h"
#include "tests/fuzz/fuzz.h"

#define S_MAX_FILE ((int64_t)1 << 33) /* sparse: only the header is written */

/* The header with data_offsets, into a sparse memfd; NULL when the input is not such a header. */
static const char *s_file(const uint8_t *data, size_t size)
{
    static int fd = -1;
    static char path[64];
    cJSON *j = cJSON_ParseWithLength((const char *)data, size);
    if (!j || !cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return NULL;
    }
    int64_t off = 0;
    bool ok = true;
    cJSON *t;
    cJSON_ArrayForEach(t, j)
    {
        if (!strcmp(t->string, "__metadata__")) continue;
        const cJSON *dt = cJSON_GetObjectItemCaseSensitive(t, "dtype"), *sh = cJSON_GetObjectItemCaseSensitive(t, "shape");
        st_dtype_t d;
        if (!cJSON_IsString(dt) || st_dtype_parse(dt->valuestring, &d) || !cJSON_IsArray(sh)) {
            ok = false;
            break;
        }
        int64_t n = (int64_t)st_dtype_size(d);
        const cJSON *e;
        cJSON_ArrayForEach(e, sh)
        {
            if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble > 1e9 ||
                __builtin_mul_overflow(n, (int64_t)e->valuedouble, &n))
                ok = false;
        }
        if (!ok || n > S_MAX_FILE || off + n > S_MAX_FILE) {
            ok = false;
            break;
        }
        cJSON *offs = cJSON_CreateArray();
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(off + n)));
        cJSON_DeleteItemFromObjectCaseSensitive(t, "data_offsets");
        cJSON_AddItemToObject(t, "data_offsets", offs);
        off += n;
    }
    char *text = ok ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    if (!text) return NULL;
    if (fd < 0) {
        if ((fd = memfd_create("single-file", 0)) < 0) abort();
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }
    uint64_t hl = strlen(text);
    uint8_t le[8];
    for (int i = 0; i < 8; i++) le[i] = (uint8_t)(hl >> (8 * i));
    if (ftruncate(fd, 0) || pwrite(fd, le, 8, 0) != 8 || pwrite(fd, text, hl, 8) != (ssize_t)hl ||
        ftruncate(fd, (off_t)(8 + hl + (uint64_t)off)))
        abort();
    free(text);
    return path;
}

static void s_view(const sd_single_file_t *sf, sd_sf_part_t part, const sd_params_t *ps)
{
    st_file_t *view = NULL;
    int rc = sd_single_file_view(sf, part, ps, &view);
    fz_failed(rc, "sd_single_file_view");
    if (rc) return;
    for (int i = 0; i < ps->n; i++) {
        const sd_param_t *p = &ps->p[i];
        const st_tensor_t *t = st_find(view, p->name);
        if (!t) fz_bug("the view has no '%s'", p->name);
        int64_t n = 1;
        for (int d = 0; d < p->ndim; d++) n *= p->shape[d];
        if (st_numel(t) != n) fz_bug("'%s': %lld elements for a parameter of %lld", p->name, (long long)st_numel(t),
                                     (long long)n);
    }
    st_close(&view);
}

FUZZ_TARGET(single_file)
{
    const char *path = s_file(data, size);
    if (!path) return 0;
    sd_single_file_t *sf = sd_single_file_open(path, NULL);
    fz_failed(!sf, "sd_single_file_open");
    if (!sf) return 0;
    if (sd_single_file_check_heads(sf) == 0) {
        sd_unet_t *u = sd_unet_new(&sf->unet);
        fz_failed(!u, "sd_unet_new");
        if (u) s_view(sf, SD_SF_UNET, &u->params);
        sd_unet_destroy(&u);
        sd_vae_t *v = sd_vae_new(&sf->vae);
        fz_failed(!v, "sd_vae_new");
        if (v) s_view(sf, SD_SF_VAE, &v->params);
        sd_vae_destroy(&v);
        sd_clip_t *c = sd_clip_new(&sf->clip);
        fz_failed(!c, "sd_clip_new");
        if (c) s_view(sf, SD_SF_TEXT, &c->params);
        sd_clip_destroy(&c);
    } else {
        fz_failed(1, "sd_single_file_check_heads");
    }
    char *sched = sd_single_file_sched_json(sf);
    free(sched);
    sd_single_file_close(&sf);
    return 0;
}
