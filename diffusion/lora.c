/*
 * lora.c — attaching LoRA adapters to attention projections.
 */
#include "diffusion/lora.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/status.h"
#include "nn/elementwise.h"
#include "nn/memory.h"

static const char *const s_unet_default[] = {"to_q", "to_k", "to_v", "to_out.0", NULL};
static const char *const s_text_default[] = {"q_proj", "k_proj", "v_proj", "out_proj", NULL};

typedef struct {
    sd_lora_set_t *set;
    const char *const *targets;
    int cap;
    bool failed;
    bool text;
} s_attach_t;

static bool s_wanted(const char *const *targets, const char *name)
{
    for (; *targets; targets++)
        if (!strcmp(*targets, name)) return true;
    return false;
}

static void s_add(s_attach_t *a, const char *module, sd_linear_t *layer)
{
    sd_lora_set_t *s = a->set;
    if (a->failed) return;
    if (s->n == a->cap) {
        int cap = a->cap ? 2 * a->cap : 64;
        sd_lora_t *ad = bt_realloc(s->adapters, (size_t)cap * sizeof *ad);
        if (ad) s->adapters = ad;
        sd_linear_t **ly = bt_realloc(s->layers, (size_t)cap * sizeof *ly);
        if (ly) s->layers = ly;
        char(*md)[SD_NAME_MAX] = bt_realloc(s->modules, (size_t)cap * sizeof *md);
        if (md) s->modules = md;
        if (!ad || !ly || !md) {
            a->failed = true;
            return;
        }
        a->cap = cap;
    }
    int i = s->n++;
    sd_lora_t *l = &s->adapters[i];
    memset(l, 0, sizeof *l);
    l->rank = s->rank;
    l->alpha = s->alpha;
    l->scale = 1.0f;
    s->layers[i] = layer;
    if (snprintf(s->modules[i], SD_NAME_MAX, "%s", module) >= SD_NAME_MAX) {
        a->failed = true;
        return;
    }
    /* registered with NULL slots: pointers are set after allocation (the adapter array may still move) */
    sd_params_add(&s->params, NULL, SD_INIT_NORMAL, 1.0f / (float)s->rank, 2, (int64_t[]){s->rank, layer->in},
                  "%s.lora_A.weight", module);
    sd_params_add(&s->params, NULL, SD_INIT_ZERO, 0, 2, (int64_t[]){layer->out, s->rank}, "%s.lora_B.weight",
                  module);
}

static void s_visit(void *user, const char *name, sd_attention_t *attn)
{
    s_attach_t *a = user;
    char module[2 * SD_NAME_MAX];
    struct {
        const char *unet, *text;
        sd_linear_t *layer;
    } proj[4] = {{"to_q", "q_proj", &attn->to_q},
                 {"to_k", "k_proj", &attn->to_k},
                 {"to_v", "v_proj", &attn->to_v},
                 {"to_out.0", "out_proj", &attn->to_out}};
    for (int i = 0; i < 4; i++) {
        const char *pn = a->text ? proj[i].text : proj[i].unet;
        if (!s_wanted(a->targets, pn)) continue;
        snprintf(module, sizeof module, "%s.%s", name, pn);
        s_add(a, module, proj[i].layer);
    }
}

static sd_lora_set_t *s_new(sd_lora_part_t part, int64_t rank, float alpha)
{
    if (rank < 1 || rank > 4096 || !(alpha > 0)) {
        BT_ERROR("lora: rank %lld and alpha %g must be positive (rank at most 4096)", (long long)rank, alpha);
        return NULL;
    }
    sd_lora_set_t *s = bt_calloc(1, sizeof *s);
    if (!s) return NULL;
    s->part = part;
    s->rank = rank;
    s->alpha = alpha;
    sd_params_init(&s->params, part == SD_LORA_UNET ? "unet lora" : "text encoder lora");
    return s;
}

static sd_lora_set_t *s_finish(sd_lora_set_t *s, s_attach_t *a)
{
    if (a->failed || s->params.failed) {
        BT_ERROR("lora: out of memory attaching adapters");
        sd_lora_destroy(&s);
        return NULL;
    }
    if (s->n == 0) {
        BT_ERROR("lora: no layer matches the requested targets");
        sd_lora_destroy(&s);
        return NULL;
    }
    for (int i = 0; i < s->n; i++) s->layers[i]->lora = &s->adapters[i];
    return s;
}

sd_lora_set_t *sd_lora_attach_unet(sd_unet_t *u, int64_t rank, float alpha, const char *const *targets)
{
    sd_lora_set_t *s = s_new(SD_LORA_UNET, rank, alpha);
    if (!s) return NULL;
    s_attach_t a = {.set = s, .targets = targets ? targets : s_unet_default};
    sd_unet_visit_attentions(u, s_visit, &a);
    return s_finish(s, &a);
}

sd_lora_set_t *sd_lora_attach_clip(sd_clip_t *c, int64_t rank, float alpha, const char *const *targets)
{
    sd_lora_set_t *s = s_new(SD_LORA_TEXT, rank, alpha);
    if (!s) return NULL;
    s_attach_t a = {.set = s, .targets = targets ? targets : s_text_default, .text = true};
    sd_clip_visit_attentions(c, s_visit, &a);
    return s_finish(s, &a);
}

void sd_lora_destroy(sd_lora_set_t **ps)
{
    sd_lora_set_t *s = *ps;
    if (!s) return;
    for (int i = 0; i < s->n; i++)
        if (s->layers[i]->lora == &s->adapters[i]) s->layers[i]->lora = NULL;
    if (s->grad && s->params.ctx) nn_free(s->params.ctx, s->grad);
    sd_params_free(&s->params);
    free(s->adapters);
    free(s->layers);
    free(s->modules);
    free(s);
    *ps = NULL;
}

int sd_lora_alloc(sd_lora_set_t *s, nn_ctx_t *ctx, bool with_grad)
{
    int rc = sd_params_alloc(&s->params, ctx);
    if (rc) return rc;
    for (int i = 0; i < s->n; i++) {
        s->adapters[i].A = s->params.p[2 * i].data;
        s->adapters[i].B = s->params.p[2 * i + 1].data;
    }
    if (!with_grad) return BT_OK;
    size_t bytes = 0; /* the same 64-byte aligned layout as the parameter block */
    for (int i = 0; i < s->params.n; i++) {
        int64_t n = 1;
        for (int d = 0; d < s->params.p[i].ndim; d++) n *= s->params.p[i].shape[d];
        bytes += (size_t)((n + 15) / 16 * 16) * sizeof(float);
    }
    if (!(s->grad = nn_alloc(ctx, bytes))) {
        BT_ERROR("lora: cannot allocate %zu bytes of gradients", bytes);
        return BT_ENOMEM;
    }
    for (int i = 0; i < s->n; i++) {
        s->adapters[i].dA = s->grad + (s->params.p[2 * i].data - s->params.mem);
        s->adapters[i].dB = s->grad + (s->params.p[2 * i + 1].data - s->params.mem);
    }
    return sd_lora_zero_grad(s);
}

int sd_lora_init(sd_lora_set_t *s, uint64_t seed) { return sd_params_init_random(&s->params, seed); }

void sd_lora_set_scale(sd_lora_set_t *s, float scale)
{
    for (int i = 0; i < s->n; i++) s->adapters[i].scale = scale;
}

int64_t sd_lora_numel(const sd_lora_set_t *s) { return s->params.numel; }

int sd_lora_zero_grad(sd_lora_set_t *s)
{
    if (!s->grad) return BT_OK;
    int64_t n = 0;
    const sd_param_t *last = &s->params.p[s->params.n - 1];
    int64_t ln = 1;
    for (int d = 0; d < last->ndim; d++) ln *= last->shape[d];
    n = (last->data - s->params.mem) + ln;
    return nn_fill(s->params.ctx, s->grad, n, 0.0f);
}
