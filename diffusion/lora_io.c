/*
 * lora_io.c — loading and saving LoRA files for a UNet and a CLIP text encoder.
 *
 * storage/lora_file.c spells keys; this file knows which layers exist. Loading
 * lists every projection lora.c can adapt (module name, kohya spelling, layer),
 * files each tensor of the file under its module, validates the whole file,
 * and only then attaches and fills the sets, so a bad file leaves the model as
 * it was.
 */
#include "diffusion/lora_io.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/status.h"
#include "nn/elementwise.h"
#include "nn/memory.h"

/* The projections lora.c adapts, as its attach functions name them (lora.c owns
 * the attaching; this list lets a file's modules be found before attaching). */
#define S_NPROJ 4
static const char *const s_proj_unet[S_NPROJ] = {"to_q", "to_k", "to_v", "to_out.0"};
static const char *const s_proj_text[S_NPROJ] = {"q_proj", "k_proj", "v_proj", "out_proj"};

/* One adaptable layer of the model and the file's tensors for it. */
typedef struct {
    char module[SD_NAME_MAX]; /* "down_blocks.0....attn1.to_q" */
    char kohya[SD_NAME_MAX];  /* the same as kohya spells it */
    int proj;                 /* index into s_proj_* */
    sd_linear_t *layer;
    const st_tensor_t *t[ST_LORA_ROLE_COUNT]; /* the file's A, B, alpha (NULL: absent) */
} s_module_t;

typedef struct {
    s_module_t *m;
    int n, cap;
    bool text;
    bool failed; /* out of memory or a name too long while listing */
    int used;    /* modules with at least one tensor */
} s_modules_t;

static const char *s_part_what(int part)
{
    return part == ST_LORA_PART_TEXT ? "text encoder" : "UNet";
}

static void s_list_visit(void *user, const char *name, sd_attention_t *attn)
{
    s_modules_t *ms = user;
    sd_linear_t *layers[S_NPROJ] = {&attn->to_q, &attn->to_k, &attn->to_v, &attn->to_out};
    for (int i = 0; i < S_NPROJ && !ms->failed; i++) {
        if (ms->n == ms->cap) {
            int cap = ms->cap ? 2 * ms->cap : 128;
            s_module_t *m = bt_realloc(ms->m, (size_t)cap * sizeof *m);
            if (!m) {
                ms->failed = true;
                return;
            }
            ms->m = m;
            ms->cap = cap;
        }
        s_module_t *m = &ms->m[ms->n];
        memset(m, 0, sizeof *m);
        int len = snprintf(m->module, sizeof m->module, "%s.%s", name, ms->text ? s_proj_text[i] : s_proj_unet[i]);
        if (len < 0 || len >= (int)sizeof m->module ||
            st_lora_spell_module(m->kohya, sizeof m->kohya, ST_LORA_KOHYA, m->module)) {
            ms->failed = true;
            return;
        }
        m->proj = i;
        m->layer = layers[i];
        ms->n++;
    }
}

/* transformers 5's CLIPTextModel has no text_model level, so LoRA files saved
 * with it name "encoder.layers.0.self_attn.k_proj" what older ones (and booth)
 * name "text_model.encoder.layers.0.self_attn.k_proj"; diffusers 0.42 reads both. */
#define S_TEXT_MODEL "text_model."
#define S_TEXT_MODEL_KOHYA "text_model_"

static s_module_t *s_find(s_modules_t *ms, st_lora_layout_t layout, const char *spelled)
{
    for (int i = 0; i < ms->n; i++)
        if (!strcmp(layout == ST_LORA_KOHYA ? ms->m[i].kohya : ms->m[i].module, spelled)) return &ms->m[i];
    const char *level = layout == ST_LORA_KOHYA ? S_TEXT_MODEL_KOHYA : S_TEXT_MODEL;
    size_t ln = strlen(level);
    for (int i = 0; ms->text && i < ms->n; i++) {
        const char *name = layout == ST_LORA_KOHYA ? ms->m[i].kohya : ms->m[i].module;
        if (!strncmp(name, level, ln) && !strcmp(name + ln, spelled)) return &ms->m[i];
    }
    return NULL;
}

static bool s_is_float(const st_tensor_t *t)
{
    return t->dtype == ST_F32 || t->dtype == ST_F16 || t->dtype == ST_BF16 || t->dtype == ST_F64;
}

/* Files tensor `t` under its module. */
static int s_file_tensor(const st_file_t *f, const st_tensor_t *t, s_modules_t ms[ST_LORA_PART_COUNT],
                         const bool given[ST_LORA_PART_COUNT])
{
    st_lora_key_t k;
    if (!st_lora_parse_key(t->name, &k)) { /* st_lora_detect has vetted every name; kept for safety */
        BT_ERROR("%s: tensor '%s' is not a LoRA key", st_path(f), t->name);
        return BT_EFORMAT;
    }
    s_module_t *m = NULL;
    if (k.part == ST_LORA_UNPREFIXED) {
        for (int p = 0; p < ST_LORA_PART_COUNT && !m; p++)
            m = s_find(&ms[p], k.layout, k.module);
        if (!m) {
            BT_ERROR("%s: tensor '%s': '%s' is no layer booth can adapt in the %s given (LoRA attaches to "
                     "attention to_q/to_k/to_v/to_out.0 and CLIP q_proj/k_proj/v_proj/out_proj)",
                     st_path(f), t->name, k.module,
                     given[0] && given[1] ? "UNet or text encoder"
                     : given[0]           ? "UNet"
                                          : "text encoder");
            return BT_ENOTFOUND;
        }
    } else {
        if (!given[k.part]) {
            BT_ERROR("%s: tensor '%s' adapts the %s, but no %s was given to load it into", st_path(f), t->name,
                     s_part_what(k.part), s_part_what(k.part));
            return BT_EINVAL;
        }
        if (!(m = s_find(&ms[k.part], k.layout, k.module))) {
            BT_ERROR("%s: tensor '%s': the %s has no adaptable layer '%s' (LoRA attaches to %s; a file for "
                     "another architecture?)",
                     st_path(f), t->name, s_part_what(k.part), k.module,
                     k.part == ST_LORA_PART_TEXT ? "q_proj/k_proj/v_proj/out_proj of each CLIP layer"
                                                 : "to_q/to_k/to_v/to_out.0 of each attention");
            return BT_ENOTFOUND;
        }
    }
    if (m->t[k.role]) {
        BT_ERROR("%s: tensors '%s' and '%s' are the same LoRA entry", st_path(f), m->t[k.role]->name, t->name);
        return BT_EFORMAT;
    }
    m->t[k.role] = t;
    return BT_OK;
}

/* Reads a scalar alpha tensor (0-dim as kohya writes it, or any shape of one element). */
static int s_read_alpha(const st_file_t *f, const st_tensor_t *t, float *alpha)
{
    if (!s_is_float(t) || st_numel(t) != 1) {
        char b[96];
        BT_ERROR("%s: tensor '%s' is %s %s, expected one float (alpha)", st_path(f), t->name, st_dtype_name(t->dtype),
                 st_shape_str(t->ndim, t->shape, b, sizeof b));
        return BT_EFORMAT;
    }
    float a;
    st_read_f32(t, &a);
    if (!(a > 0) || !isfinite(a) || a > 1e6f) { /* alpha/rank scales every update: 1e30 is no LoRA */
        BT_ERROR("%s: tensor '%s': alpha %g is not a positive number up to 1e6", st_path(f), t->name, a);
        return BT_EFORMAT;
    }
    *alpha = a;
    return BT_OK;
}

/* Per part: every used module has A and B of consistent shapes; finds the rank,
 * the first alpha tensor and the projections to adapt. */
typedef struct {
    int64_t rank;
    float first_alpha; /* 0: no alpha tensor */
    bool proj[S_NPROJ];
    const char *rank_key; /* the tensor that set the rank, for messages */
} s_part_info_t;

static int s_check_part(const st_file_t *f, s_modules_t *ms, s_part_info_t *info)
{
    char a[96], b[96];
    memset(info, 0, sizeof *info);
    for (int i = 0; i < ms->n; i++) {
        s_module_t *m = &ms->m[i];
        const st_tensor_t *A = m->t[ST_LORA_A], *B = m->t[ST_LORA_B], *al = m->t[ST_LORA_ALPHA];
        if (!A && !B && !al) continue;
        ms->used++;
        if (!A || !B) {
            const st_tensor_t *have = A ? A : B ? B : al;
            BT_ERROR("%s: tensor '%s' has no matching %s for module '%s'", st_path(f), have->name,
                     !A && !B ? "A/B (lora down/up) weights"
                     : !A     ? "A (lora down) weight"
                              : "B (lora up) weight",
                     m->module);
            return BT_EFORMAT;
        }
        for (int r = 0; r < 2; r++) {
            const st_tensor_t *t = r ? B : A;
            if (!s_is_float(t)) {
                BT_ERROR("%s: tensor '%s' has dtype %s (expected a float type)", st_path(f), t->name,
                         st_dtype_name(t->dtype));
                return BT_EFORMAT;
            }
        }
        int64_t in = m->layer->in, out = m->layer->out, rank = A->ndim == 2 ? A->shape[0] : -1;
        if (A->ndim != 2 || A->shape[1] != in || rank < 1 || rank > 4096) {
            BT_ERROR("%s: tensor '%s' has shape %s, the layer needs [rank, %lld] with 1 <= rank <= 4096", st_path(f),
                     A->name, st_shape_str(A->ndim, A->shape, a, sizeof a), (long long)in);
            return BT_ESHAPE;
        }
        if (B->ndim != 2 || B->shape[0] != out || B->shape[1] != rank) {
            BT_ERROR("%s: tensor '%s' has shape %s, expected %s (its A '%s' has rank %lld)", st_path(f), B->name,
                     st_shape_str(B->ndim, B->shape, a, sizeof a), st_shape_str(2, (int64_t[]){out, rank}, b, sizeof b),
                     A->name, (long long)rank);
            return BT_ESHAPE;
        }
        if (info->rank && rank != info->rank) {
            BT_ERROR("%s: tensor '%s' has rank %lld but '%s' has rank %lld (one rank per model part)", st_path(f),
                     A->name, (long long)rank, info->rank_key, (long long)info->rank);
            return BT_ESHAPE;
        }
        info->rank = rank;
        if (!info->rank_key) info->rank_key = A->name;
        if (al) {
            float v;
            int rc = s_read_alpha(f, al, &v);
            if (rc) return rc;
            if (!info->first_alpha) info->first_alpha = v;
        }
        info->proj[m->proj] = true;
    }
    return BT_OK;
}

/* A weight that is NaN or infinite poisons every image the LoRA touches: one line naming the tensor. */
static int s_finite(const char *path, const st_tensor_t *t, const float *v, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(v[i])) {
            BT_ERROR("%s: tensor '%s' holds %g at element %lld: a LoRA's weights must be finite numbers", path,
                     t->name, (double)v[i], (long long)i);
            return BT_EFORMAT;
        }
    return BT_OK;
}

static int s_fill(const char *path, nn_ctx_t *ctx, float *dst, const st_tensor_t *t, float **staging,
                  size_t *staging_n)
{
    int64_t n = st_numel(t);
    if (ctx->kind == NN_BACKEND_CPU) {
        st_read_f32(t, dst);
        return s_finite(path, t, dst, n);
    }
    if ((size_t)n > *staging_n) {
        free(*staging);
        *staging = bt_malloc((size_t)n * sizeof(float));
        *staging_n = *staging ? (size_t)n : 0;
        if (!*staging) return BT_ENOMEM;
    }
    st_read_f32(t, *staging);
    int rc = s_finite(path, t, *staging, n);
    return rc ? rc : nn_upload(ctx, dst, *staging, (size_t)n * sizeof(float));
}

/* Attaches, allocates and fills the set of one part. */
static int s_build_part(const char *path, nn_ctx_t *ctx, void *model, int part, s_modules_t *ms,
                        const s_part_info_t *info, double meta_alpha, const st_lora_adapter_cfg_t *ac,
                        const sd_lora_load_opts_t *opts, sd_lora_set_t **out)
{
    const char *const *names = part == ST_LORA_PART_TEXT ? s_proj_text : s_proj_unet;
    const char *targets[S_NPROJ + 1];
    int nt = 0;
    for (int i = 0; i < S_NPROJ; i++)
        if (info->proj[i]) targets[nt++] = names[i];
    targets[nt] = NULL;
    /* Alpha without a per-module tensor: the LoRA config (diffusers' adapter metadata or
     * peft's adapter_config.json), else other metadata, else the caller's default, else
     * rank (scale 1). rsLoRA scales alpha / sqrt(r): booth's alpha / r with alpha·sqrt(r). */
    double rs = ac && ac->use_rslora ? sqrt((double)info->rank) : 1.0;
    float fallback = ac && ac->lora_alpha > 0  ? (float)(ac->lora_alpha * rs)
                     : meta_alpha > 0          ? (float)meta_alpha
                     : opts->default_alpha > 0 ? opts->default_alpha
                                               : (float)info->rank;
    if (ac && ac->use_rslora && !(ac->lora_alpha > 0)) fallback = (float)(fallback * rs);
    float set_alpha = ac && ac->lora_alpha > 0 ? fallback
                      : meta_alpha > 0        ? (float)meta_alpha
                      : info->first_alpha > 0 ? info->first_alpha
                                              : fallback;
    sd_lora_set_t *s = part == ST_LORA_PART_TEXT ? sd_lora_attach_clip(model, info->rank, set_alpha, targets)
                                                 : sd_lora_attach_unet(model, info->rank, set_alpha, targets);
    if (!s) return BT_ENOMEM; /* logged by lora.c */
    int rc = sd_lora_alloc(s, ctx, opts->with_grad);
    float *staging = NULL;
    size_t staging_n = 0;
    int j = 0; /* the set's adapters are the listed modules in order, filtered by target */
    for (int i = 0; i < s->n && rc == BT_OK; i++) {
        while (j < ms->n && strcmp(ms->m[j].module, s->modules[i]))
            j++;
        if (j == ms->n) {
            BT_ERROR("%s: internal: adapter '%s' is not among the listed modules", path, s->modules[i]);
            rc = BT_EINTERNAL;
            break;
        }
        const s_module_t *m = &ms->m[j++];
        sd_lora_t *ad = &s->adapters[i];
        if (m->t[ST_LORA_A]) {
            if ((rc = s_fill(path, ctx, ad->A, m->t[ST_LORA_A], &staging, &staging_n))) break;
            if ((rc = s_fill(path, ctx, ad->B, m->t[ST_LORA_B], &staging, &staging_n))) break;
            ad->alpha = fallback;
            const st_lora_pattern_t *pat = ac ? st_lora_pattern_find(ac, false, m->module) : NULL;
            if (pat) ad->alpha = (float)(pat->value * rs);
            if (m->t[ST_LORA_ALPHA]) st_read_f32(m->t[ST_LORA_ALPHA], &ad->alpha); /* validated */
        } else { /* the file adapts this projection in other layers only: a zero adapter changes nothing */
            if ((rc = nn_fill(ctx, ad->A, ad->rank * m->layer->in, 0.0f))) break;
            rc = nn_fill(ctx, ad->B, m->layer->out * ad->rank, 0.0f);
        }
    }
    free(staging);
    if (rc) {
        sd_lora_destroy(&s);
        return rc;
    }
    *out = s;
    return BT_OK;
}

#define S_PEFT_MODEL "adapter_model.safetensors"
#define S_PEFT_CONFIG "adapter_config.json"

/* What booth cannot apply from a LoRA config is refused, not ignored. */
static int s_check_adapter_cfg(const char *path, const st_lora_adapter_cfg_t *c)
{
    if (c->use_dora) {
        BT_ERROR("%s: %s sets use_dora: a DoRA adapter rescales the weight itself, which booth does not apply",
                 path, c->source);
        return BT_EFORMAT;
    }
    for (int r = 0; r < 2; r++) {
        const st_lora_pattern_t *ps = r ? c->rank_pattern : c->alpha_pattern;
        for (int i = 0; i < (r ? c->n_rank : c->n_alpha); i++)
            if (!st_lora_pattern_is_literal(ps[i].key)) {
                BT_ERROR("%s: %s: %s key '%s' is a regular expression; booth applies patterns that are module "
                         "names (letters, digits, '_', '.') and refuses the others",
                         path, c->source, r ? "rank_pattern" : "alpha_pattern", ps[i].key);
                return BT_EFORMAT;
            }
    }
    return BT_OK;
}

/* The config's r and rank_pattern against the ranks the tensors have. */
static int s_check_ranks(const char *path, const s_modules_t *ms, const s_part_info_t *info,
                         const st_lora_adapter_cfg_t *c)
{
    if (!c) return BT_OK;
    for (int i = 0; i < ms->n; i++) {
        const s_module_t *m = &ms->m[i];
        if (!m->t[ST_LORA_A]) continue;
        const st_lora_pattern_t *pat = st_lora_pattern_find(c, true, m->module);
        int64_t want = pat ? (int64_t)pat->value : c->r;
        if (want && want != info->rank) {
            if (pat)
                BT_ERROR("%s: %s: rank_pattern '%s' gives rank %lld but tensor '%s' has rank %lld", path, c->source,
                         pat->key, (long long)want, m->t[ST_LORA_A]->name, (long long)info->rank);
            else
                BT_ERROR("%s: %s gives r = %lld but tensor '%s' has rank %lld", path, c->source, (long long)want,
                         m->t[ST_LORA_A]->name, (long long)info->rank);
            return BT_ESHAPE;
        }
    }
    return BT_OK;
}

int sd_lora_load(const char *path, nn_ctx_t *ctx, sd_unet_t *unet, sd_clip_t *clip, const sd_lora_load_opts_t *opts,
                 sd_lora_set_t **unet_set, sd_lora_set_t **text_set)
{
    static const sd_lora_load_opts_t defaults = {0};
    if (!opts) opts = &defaults;
    *unet_set = *text_set = NULL;
    char file_path[4096], cfg_path[4096];
    struct stat st;
    /* a peft adapter folder: adapter_model.safetensors beside adapter_config.json */
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        snprintf(file_path, sizeof file_path, "%s/%s", path, S_PEFT_MODEL);
        if (access(file_path, F_OK) != 0) {
            BT_ERROR("%s: a folder without %s (not a peft adapter folder)", path, S_PEFT_MODEL);
            return BT_ENOTFOUND;
        }
        path = file_path;
    }
    st_lora_adapter_cfg_t peft_cfg = {0};
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    if (!strcmp(base, S_PEFT_MODEL)) {
        snprintf(cfg_path, sizeof cfg_path, "%.*s%s", (int)(base - path), path, S_PEFT_CONFIG);
        int crc = st_lora_adapter_config_read(cfg_path, &peft_cfg);
        if (crc && crc != BT_ENOTFOUND) return crc;
    }
    st_file_t *f = st_open(path);
    if (!f) {
        st_lora_adapter_cfg_free(&peft_cfg);
        return access(path, F_OK) ? BT_ENOTFOUND : BT_EFORMAT; /* st_open logged why */
    }
    s_modules_t ms[ST_LORA_PART_COUNT] = {{.text = false}, {.text = true}};
    bool given[ST_LORA_PART_COUNT] = {unet != NULL, clip != NULL};
    sd_lora_set_t *sets[ST_LORA_PART_COUNT] = {NULL, NULL};
    s_part_info_t info[ST_LORA_PART_COUNT];
    st_lora_layouts_t layouts;
    st_lora_meta_t meta = {0};
    const st_lora_adapter_cfg_t *ac[ST_LORA_PART_COUNT];
    int rc = st_lora_detect(f, &layouts);
    if (rc == BT_OK) rc = st_lora_meta_read(f, &meta);
    if (rc) goto out_close;
    for (int p = 0; p < ST_LORA_PART_COUNT; p++) {
        ac[p] = meta.adapter[p].present ? &meta.adapter[p] : peft_cfg.present ? &peft_cfg : NULL;
        if (ac[p] && (rc = s_check_adapter_cfg(path, ac[p]))) goto out_close;
    }

    if (unet) sd_unet_visit_attentions(unet, s_list_visit, &ms[ST_LORA_PART_UNET]);
    if (clip) sd_clip_visit_attentions(clip, s_list_visit, &ms[ST_LORA_PART_TEXT]);
    if (ms[0].failed || ms[1].failed) {
        BT_ERROR("%s: out of memory listing the model's layers", path);
        rc = BT_ENOMEM;
        goto out_free;
    }
    for (int i = 0; i < st_count(f) && rc == BT_OK; i++)
        rc = s_file_tensor(f, st_at(f, i), ms, given);
    for (int p = 0; p < ST_LORA_PART_COUNT && rc == BT_OK; p++)
        rc = s_check_part(f, &ms[p], &info[p]);
    if (rc) goto out_free;
    if (!ms[0].used && !ms[1].used) {
        BT_ERROR("%s: no LoRA entries", path);
        rc = BT_EFORMAT;
        goto out_free;
    }
    for (int p = 0; p < ST_LORA_PART_COUNT; p++) {
        if (!ms[p].used) continue;
        if ((rc = s_check_ranks(path, &ms[p], &info[p], ac[p]))) goto out_free;
        if (meta.rank[p] && meta.rank[p] != info[p].rank) {
            BT_ERROR("%s: metadata gives the %s rank %lld but tensor '%s' has rank %lld", path, s_part_what(p),
                     (long long)meta.rank[p], info[p].rank_key, (long long)info[p].rank);
            rc = BT_ESHAPE;
            goto out_free;
        }
        for (int i = 0; i < ms[p].n; i++)
            if (ms[p].m[i].layer->lora) {
                BT_ERROR("%s: the %s already has LoRA adapters attached (layer '%s'); remove them first", path,
                         s_part_what(p), ms[p].m[i].module);
                rc = BT_EINVAL;
                goto out_free;
            }
    }
    for (int p = 0; p < ST_LORA_PART_COUNT && rc == BT_OK; p++)
        if (ms[p].used)
            rc = s_build_part(path, ctx, p == ST_LORA_PART_TEXT ? (void *)clip : (void *)unet, p, &ms[p], &info[p],
                              meta.alpha[p], ac[p], opts, &sets[p]);
    if (rc) {
        for (int p = 0; p < ST_LORA_PART_COUNT; p++)
            sd_lora_destroy(&sets[p]);
        goto out_free;
    }
    BT_DEBUG("%s: LoRA (%s / %s layout): UNet %d modules, text encoder %d modules", path,
             st_lora_layout_name(layouts.part[0] != ST_LORA_ABSENT ? layouts.part[0] : layouts.unprefixed),
             st_lora_layout_name(layouts.part[1] != ST_LORA_ABSENT ? layouts.part[1] : layouts.unprefixed), ms[0].used,
             ms[1].used);
    for (int p = 0; p < ST_LORA_PART_COUNT; p++) /* one line per file, not per part */
        if (ms[p].used && !(ac[p] && ac[p]->lora_alpha > 0) && !(meta.alpha[p] > 0) && !info[p].first_alpha &&
            !(opts->default_alpha > 0)) {
            BT_INFO("%s: the file states no LoRA alpha (no alpha metadata, .alpha tensors or adapter_config.json); "
                    "alpha = rank (%lld) is assumed, as diffusers does",
                    path, (long long)info[p].rank);
            break;
        }
    *unet_set = sets[ST_LORA_PART_UNET];
    *text_set = sets[ST_LORA_PART_TEXT];
out_free:
    free(ms[0].m);
    free(ms[1].m);
out_close:
    st_close(&f);
    st_lora_meta_free(&meta);
    st_lora_adapter_cfg_free(&peft_cfg);
    return rc;
}

/* ---- saving ---- */

static int s_meta_set(st_writer_t *w, st_lora_part_t part, const char *what, const char *value)
{
    char key[96];
    int rc = st_lora_meta_key(key, sizeof key, part, what);
    return rc ? rc : st_writer_set_metadata(w, key, value);
}

static int s_save_set(st_writer_t *w, const char *path, st_lora_layout_t layout, st_dtype_t dtype,
                      const sd_lora_records_t *s)
{
    st_lora_part_t part = s->part;
    /* What alpha a reader of this layout will apply to every adapter; an adapter
     * with another alpha gets alpha / file_alpha folded into B. The diffusers and
     * peft layouts carry no alpha their usual loaders read (diffusers assumes
     * alpha == rank, and ignores booth's metadata), so there the whole
     * alpha / rank goes into B: the file means the same in every loader. The
     * original alpha is kept in booth.alpha_folded. Kohya stores alphas. */
    float file_alpha = layout == ST_LORA_KOHYA ? s->alpha : (float)s->rank;
    bool folded = false;
    float *host = NULL;
    size_t host_n = 0;
    int rc = BT_OK;
    char key[2 * ST_LORA_NAME_MAX];
    for (int i = 0; i < s->n && rc == BT_OK; i++) {
        float alpha = s->alphas ? s->alphas[i] : s->alpha;
        for (int r = 0; r < 2 && rc == BT_OK; r++) {
            const int64_t *shape = r ? s->b_shape[i] : s->a_shape[i];
            const float *data = r ? s->b[i] : s->a[i];
            int64_t n = shape[0] * shape[1];
            if (r == 1 && layout != ST_LORA_KOHYA && alpha != file_alpha) {
                if ((size_t)n > host_n) {
                    free(host);
                    host = bt_malloc((size_t)n * sizeof(float));
                    host_n = host ? (size_t)n : 0;
                    if (!host) {
                        BT_ERROR("%s: out of memory scaling '%s'", path, s->modules[i]);
                        rc = BT_ENOMEM;
                        break;
                    }
                }
                float fold = (float)((double)alpha / (double)file_alpha);
                for (int64_t k = 0; k < n; k++) host[k] = data[k] * fold;
                data = host;
                folded = true;
            }
            if (st_lora_key(key, sizeof key, layout, part, r ? ST_LORA_B : ST_LORA_A, s->modules[i])) {
                BT_ERROR("%s: module name '%s' is too long for a LoRA key", path, s->modules[i]);
                rc = BT_EINVAL;
                break;
            }
            rc = st_writer_add_f32_as(w, key, dtype, 2, shape, data);
        }
        if (rc == BT_OK && layout == ST_LORA_KOHYA) {
            st_lora_key(key, sizeof key, layout, part, ST_LORA_ALPHA, s->modules[i]);
            rc = st_writer_add_copy(w, key, ST_F32, 0, (int64_t[]){1}, &alpha);
        }
    }
    free(host);
    if (rc) return rc;

    char num[64], targets[128] = "[";
    const char *const *names = part == ST_LORA_PART_TEXT ? s_proj_text : s_proj_unet;
    for (int t = 0; t < S_NPROJ; t++) {
        char tail[32];
        snprintf(tail, sizeof tail, ".%s", names[t]);
        for (int i = 0; i < s->n; i++) {
            size_t ml = strlen(s->modules[i]), tl = strlen(tail);
            if (ml > tl && !strcmp(s->modules[i] + ml - tl, tail)) {
                snprintf(targets + strlen(targets), sizeof targets - strlen(targets), "%s\"%s\"",
                         targets[1] ? ", " : "", names[t]);
                break;
            }
        }
    }
    strcat(targets, "]");
    snprintf(num, sizeof num, "%lld", (long long)s->rank);
    rc = s_meta_set(w, part, ST_LORA_META_RANK, num);
    snprintf(num, sizeof num, "%.9g", file_alpha);
    if (rc == BT_OK) rc = s_meta_set(w, part, ST_LORA_META_ALPHA, num);
    if (rc == BT_OK) rc = s_meta_set(w, part, ST_LORA_META_TARGETS, targets);
    if (rc == BT_OK && folded) {
        snprintf(num, sizeof num, "%.9g", s->alpha);
        rc = s_meta_set(w, part, ST_LORA_META_ALPHA_FOLDED, num);
    }
    return rc;
}

int sd_lora_save_records(const char *path, st_lora_layout_t layout, st_dtype_t dtype, const sd_lora_records_t *unet,
                         const sd_lora_records_t *text, const char *const *metadata_kv)
{
    if ((!unet || !unet->n) && (!text || !text->n)) {
        BT_ERROR("%s: no LoRA adapters to save", path);
        return BT_EINVAL;
    }
    if ((unsigned)layout >= ST_LORA_LAYOUT_COUNT ||
        (dtype != ST_F32 && dtype != ST_F16 && dtype != ST_BF16 && dtype != ST_F64)) {
        BT_ERROR("%s: cannot save a LoRA in layout %d as %s", path, (int)layout, st_dtype_name(dtype));
        return BT_EINVAL;
    }
    if ((unet && unet->n && unet->part != ST_LORA_PART_UNET) || (text && text->n && text->part != ST_LORA_PART_TEXT)) {
        BT_ERROR("%s: LoRA adapters passed for the wrong model parts", path);
        return BT_EINVAL;
    }
    st_writer_t *w = st_writer_new();
    if (!w) {
        BT_ERROR("%s: out of memory", path);
        return BT_ENOMEM;
    }
    int rc = BT_OK;
    for (int i = 0; metadata_kv && metadata_kv[i] && rc == BT_OK; i += 2) {
        if (!metadata_kv[i + 1]) {
            BT_ERROR("%s: metadata key '%s' has no value", path, metadata_kv[i]);
            rc = BT_EINVAL;
            break;
        }
        rc = st_writer_set_metadata(w, metadata_kv[i], metadata_kv[i + 1]);
    }
    if (rc == BT_OK) rc = st_writer_set_metadata(w, "format", "pt");
    if (rc == BT_OK) rc = st_writer_set_metadata(w, ST_LORA_META_LAYOUT, st_lora_layout_name(layout));
    if (rc == BT_OK && unet && unet->n) rc = s_save_set(w, path, layout, dtype, unet);
    if (rc == BT_OK && text && text->n) rc = s_save_set(w, path, layout, dtype, text);
    if (rc == BT_OK && layout == ST_LORA_KOHYA) { /* kohya's own keys, shown by A1111 and read by its tools */
        const sd_lora_records_t *s = unet && unet->n ? unet : text;
        char num[64];
        rc = st_writer_set_metadata(w, "ss_network_module", "networks.lora");
        snprintf(num, sizeof num, "%lld", (long long)s->rank);
        if (rc == BT_OK) rc = st_writer_set_metadata(w, "ss_network_dim", num);
        snprintf(num, sizeof num, "%.9g", s->alpha);
        if (rc == BT_OK) rc = st_writer_set_metadata(w, "ss_network_alpha", num);
    }
    if (rc == BT_OK) rc = st_writer_save(w, path);
    st_writer_destroy(&w);
    return rc;
}

void sd_lora_records_free(sd_lora_records_t *r)
{
    for (int i = 0; r->modules_mem && i < r->cap; i++) free(r->modules_mem[i]);
    free(r->modules_mem);
    free(r->modules);
    free(r->alphas_mem);
    free(r->a);
    free(r->b);
    free(r->a_shape);
    free(r->b_shape);
    free(r->host);
    memset(r, 0, sizeof *r);
}

static int s_records_alloc(sd_lora_records_t *r, int n)
{
    r->cap = n;
    r->modules = bt_calloc((size_t)(n ? n : 1), sizeof *r->modules);
    r->modules_mem = bt_calloc((size_t)(n ? n : 1), sizeof *r->modules_mem);
    r->a = bt_calloc((size_t)(n ? n : 1), sizeof *r->a);
    r->b = bt_calloc((size_t)(n ? n : 1), sizeof *r->b);
    r->a_shape = bt_calloc((size_t)(n ? n : 1), sizeof *r->a_shape);
    r->b_shape = bt_calloc((size_t)(n ? n : 1), sizeof *r->b_shape);
    if (r->modules && r->modules_mem && r->a && r->b && r->a_shape && r->b_shape) return BT_OK;
    BT_ERROR("out of memory for the records of %d LoRA adapters", n);
    return BT_ENOMEM;
}

/* A set's adapters as records (device memory downloaded into r->host). */
static int s_records_from_set(sd_lora_records_t *r, const sd_lora_set_t *s)
{
    memset(r, 0, sizeof *r);
    if (!s) return BT_OK;
    if (!s->params.mem || s->params.n != 2 * s->n) {
        BT_ERROR("the %s LoRA set is not allocated", s->part == SD_LORA_TEXT ? "text encoder" : "UNet");
        return BT_EINVAL;
    }
    r->part = s->part == SD_LORA_TEXT ? ST_LORA_PART_TEXT : ST_LORA_PART_UNET;
    r->rank = s->rank;
    r->alpha = s->alpha;
    r->n = s->n;
    int rc = s_records_alloc(r, s->n);
    if (rc == BT_OK && !(r->alphas = r->alphas_mem = bt_malloc((size_t)(s->n ? s->n : 1) * sizeof(float)))) {
        BT_ERROR("out of memory for the alphas of %d LoRA adapters", s->n);
        rc = BT_ENOMEM;
    }
    const float *base = s->params.mem;
    if (rc == BT_OK && s->params.ctx->kind != NN_BACKEND_CPU) {
        const sd_param_t *last = &s->params.p[s->params.n - 1];
        size_t bytes = (size_t)((last->data - s->params.mem) + last->shape[0] * last->shape[1]) * sizeof(float);
        if (!(r->host = bt_malloc(bytes))) {
            BT_ERROR("out of memory: %zu bytes to copy a LoRA set off the device", bytes);
            rc = BT_ENOMEM;
        }
        else rc = nn_download(s->params.ctx, r->host, s->params.mem, bytes);
        base = r->host;
    }
    for (int i = 0; i < s->n && rc == BT_OK; i++) {
        const sd_param_t *pa = &s->params.p[2 * i], *pb = &s->params.p[2 * i + 1];
        r->modules[i] = s->modules[i];
        r->alphas_mem[i] = s->adapters[i].alpha;
        r->a[i] = base + (pa->data - s->params.mem);
        r->b[i] = base + (pb->data - s->params.mem);
        memcpy(r->a_shape[i], pa->shape, sizeof r->a_shape[i]);
        memcpy(r->b_shape[i], pb->shape, sizeof r->b_shape[i]);
    }
    return rc;
}

int sd_lora_save(const char *path, st_lora_layout_t layout, st_dtype_t dtype, const sd_lora_set_t *unet,
                 const sd_lora_set_t *text, const char *const *metadata_kv)
{
    if (!unet && !text) {
        BT_ERROR("%s: no LoRA set to save", path);
        return BT_EINVAL;
    }
    if ((unet && unet->part != SD_LORA_UNET) || (text && text->part != SD_LORA_TEXT)) {
        BT_ERROR("%s: LoRA sets passed for the wrong model parts", path);
        return BT_EINVAL;
    }
    sd_lora_records_t r[2];
    int rc = s_records_from_set(&r[0], unet);
    if (rc == BT_OK) rc = s_records_from_set(&r[1], text);
    else memset(&r[1], 0, sizeof r[1]);
    if (rc == BT_OK) rc = sd_lora_save_records(path, layout, dtype, &r[0], &r[1], metadata_kv);
    sd_lora_records_free(&r[0]);
    sd_lora_records_free(&r[1]);
    return rc;
}

int sd_lora_records_from_named(sd_lora_records_t out[2], const char *what, const char *const *names,
                               const int64_t (*shapes)[2], const float *const *data, int n, int64_t rank, float alpha)
{
    memset(out, 0, 2 * sizeof *out);
    int count[2] = {0, 0}, rc = BT_OK;
    st_lora_key_t k;
    for (int i = 0; i < n; i++) {
        if (!st_lora_parse_key(names[i], &k) || k.layout != ST_LORA_PEFT ||
            (k.part != ST_LORA_PART_UNET && k.part != ST_LORA_PART_TEXT) || (k.role != ST_LORA_A && k.role != ST_LORA_B)) {
            BT_ERROR("%s: '%s' is not a LoRA tensor name (peft, with the part prefix)", what, names[i]);
            return BT_EFORMAT;
        }
        count[k.part == ST_LORA_PART_TEXT]++;
    }
    for (int p = 0; p < 2 && rc == BT_OK; p++) {
        if (count[p] % 2) {
            BT_ERROR("%s: the %s LoRA has an odd number of tensors", what, s_part_what(p ? ST_LORA_PART_TEXT : ST_LORA_PART_UNET));
            rc = BT_EFORMAT;
            break;
        }
        out[p].part = p ? ST_LORA_PART_TEXT : ST_LORA_PART_UNET;
        out[p].rank = rank;
        out[p].alpha = alpha;
        rc = s_records_alloc(&out[p], count[p] / 2);
    }
    /* tensors come as A then B of each module, in model order */
    for (int i = 0; i < n && rc == BT_OK; i++) {
        st_lora_parse_key(names[i], &k);
        sd_lora_records_t *r = &out[k.part == ST_LORA_PART_TEXT];
        bool want_b = r->n < count[k.part == ST_LORA_PART_TEXT] / 2 && r->modules_mem[r->n] != NULL;
        if (k.role != (want_b ? ST_LORA_B : ST_LORA_A) || (want_b && strcmp(k.module, r->modules_mem[r->n]))) {
            BT_ERROR("%s: '%s' is out of order (expected A then B of each module)", what, names[i]);
            rc = BT_EFORMAT;
            break;
        }
        const int64_t *sh = shapes[i];
        if (sh[want_b ? 1 : 0] != rank || sh[0] < 1 || sh[1] < 1) {
            BT_ERROR("%s: '%s' has shape [%lld, %lld], expected a %s of rank %lld", what, names[i], (long long)sh[0],
                     (long long)sh[1], want_b ? "B [out, rank]" : "A [rank, in]", (long long)rank);
            rc = BT_ESHAPE;
            break;
        }
        if (!want_b) {
            if (!(r->modules_mem[r->n] = strdup(k.module))) {
                BT_ERROR("%s: out of memory", what);
                rc = BT_ENOMEM;
                break;
            }
            r->modules[r->n] = r->modules_mem[r->n];
            r->a[r->n] = data[i];
            memcpy(r->a_shape[r->n], sh, sizeof r->a_shape[0]);
        } else {
            r->b[r->n] = data[i];
            memcpy(r->b_shape[r->n], sh, sizeof r->b_shape[0]);
            r->n++;
        }
    }
    for (int p = 0; p < 2 && rc == BT_OK; p++)
        if (out[p].modules && out[p].n != count[p] / 2) {
            BT_ERROR("%s: the %s LoRA tensors do not pair up as A and B", what,
                     s_part_what(p ? ST_LORA_PART_TEXT : ST_LORA_PART_UNET));
            rc = BT_EFORMAT;
        }
    if (rc) {
        sd_lora_records_free(&out[0]);
        sd_lora_records_free(&out[1]);
    }
    return rc;
}
