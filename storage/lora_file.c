/*
 * lora_file.c — the key spelling table of LoRA files, layout detection and the
 * metadata conventions. A key is prefix + module (kohya: '.' -> '_') + suffix;
 * the two tables below are the only place that spells one, for reading and for
 * writing.
 */
#include "storage/lora_file.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "common/alloc.h"
#include "common/json.h"
#include "common/log.h"
#include "common/status.h"

typedef struct {
    st_lora_layout_t layout;
    st_lora_part_t part; /* ST_LORA_UNPREFIXED: the empty prefix */
    const char *prefix;
    bool write; /* the spelling booth writes; others are read only */
} s_prefix_t;

typedef struct {
    st_lora_layout_t layout;
    bool any_part;       /* used with every prefix of the layout */
    st_lora_part_t part; /* otherwise only with this part's prefix */
    st_lora_role_t role;
    const char *suffix;
    bool write;
} s_suffix_t;

/* Reading tries prefixes in this order, so the empty ones come last. */
static const s_prefix_t s_prefixes[] = {
    {ST_LORA_KOHYA, ST_LORA_PART_UNET, "lora_unet_", true},
    {ST_LORA_KOHYA, ST_LORA_PART_TEXT, "lora_te_", true},
    {ST_LORA_PEFT, ST_LORA_PART_UNET, "unet.", true},
    {ST_LORA_PEFT, ST_LORA_PART_TEXT, "text_encoder.", true},
    {ST_LORA_DIFFUSERS, ST_LORA_PART_UNET, "unet.", true},
    {ST_LORA_DIFFUSERS, ST_LORA_PART_TEXT, "text_encoder.", true},
    /* peft's own state dicts and diffusers' pre-0.17 files name modules of one part without a prefix */
    {ST_LORA_PEFT, ST_LORA_UNPREFIXED, "", false},
    {ST_LORA_DIFFUSERS, ST_LORA_UNPREFIXED, "", false},
};

static const s_suffix_t s_suffixes[] = {
    {ST_LORA_PEFT, true, 0, ST_LORA_A, ".lora_A.weight", true},
    {ST_LORA_PEFT, true, 0, ST_LORA_B, ".lora_B.weight", true},
    {ST_LORA_PEFT, true, 0, ST_LORA_A, ".lora_A.default.weight", false}, /* peft model state_dict() */
    {ST_LORA_PEFT, true, 0, ST_LORA_B, ".lora_B.default.weight", false},
    /* "<part>.<module>.alpha": diffusers' network_alphas spelling; not written (the
     * diffusers layout has no alpha and peft keeps it in its config) */
    {ST_LORA_PEFT, true, 0, ST_LORA_ALPHA, ".alpha", false},
    {ST_LORA_DIFFUSERS, false, ST_LORA_PART_UNET, ST_LORA_A, ".lora.down.weight", true},
    {ST_LORA_DIFFUSERS, false, ST_LORA_PART_UNET, ST_LORA_B, ".lora.up.weight", true},
    {ST_LORA_DIFFUSERS, false, ST_LORA_PART_TEXT, ST_LORA_A, ".lora_linear_layer.down.weight", true},
    {ST_LORA_DIFFUSERS, false, ST_LORA_PART_TEXT, ST_LORA_B, ".lora_linear_layer.up.weight", true},
    /* diffusers itself uses both spellings in either part (e.g. text-encoder MLPs) */
    {ST_LORA_DIFFUSERS, true, 0, ST_LORA_A, ".lora.down.weight", false},
    {ST_LORA_DIFFUSERS, true, 0, ST_LORA_B, ".lora.up.weight", false},
    {ST_LORA_DIFFUSERS, true, 0, ST_LORA_A, ".lora_linear_layer.down.weight", false},
    {ST_LORA_DIFFUSERS, true, 0, ST_LORA_B, ".lora_linear_layer.up.weight", false},
    {ST_LORA_KOHYA, true, 0, ST_LORA_A, ".lora_down.weight", true},
    {ST_LORA_KOHYA, true, 0, ST_LORA_B, ".lora_up.weight", true},
    {ST_LORA_KOHYA, true, 0, ST_LORA_ALPHA, ".alpha", true},
};

#define S_COUNT(a) (sizeof(a) / sizeof((a)[0]))
#define S_PEFT_WRAPPER "base_model.model."

static const char *const s_layout_names[ST_LORA_LAYOUT_COUNT] = {"peft", "diffusers", "kohya"};

const char *st_lora_layout_name(st_lora_layout_t layout)
{
    if (layout == ST_LORA_ABSENT) return "absent";
    return (unsigned)layout < ST_LORA_LAYOUT_COUNT ? s_layout_names[layout] : "?";
}

int st_lora_layout_parse(const char *name, st_lora_layout_t *layout)
{
    for (int i = 0; i < ST_LORA_LAYOUT_COUNT; i++)
        if (name && !strcmp(name, s_layout_names[i])) {
            *layout = (st_lora_layout_t)i;
            return BT_OK;
        }
    BT_ERROR("unknown LoRA layout '%s' (expected peft, diffusers or kohya)", name ? name : "");
    return BT_EINVAL;
}

const char *st_lora_part_name(st_lora_part_t part)
{
    switch (part) {
    case ST_LORA_PART_UNET: return "unet";
    case ST_LORA_PART_TEXT: return "text_encoder";
    default: return "unprefixed";
    }
}

static bool s_starts(const char *s, const char *prefix)
{
    return !strncmp(s, prefix, strlen(prefix));
}

static bool s_module_ok(st_lora_layout_t layout, const char *m, size_t n)
{
    if (n == 0) return false;
    if (layout == ST_LORA_KOHYA) return memchr(m, '.', n) == NULL; /* a stem is one component */
    return m[0] != '.' && m[n - 1] != '.';
}

bool st_lora_parse_key(const char *key, st_lora_key_t *out)
{
    if (s_starts(key, S_PEFT_WRAPPER)) key += strlen(S_PEFT_WRAPPER);
    size_t klen = strlen(key);
    for (size_t p = 0; p < S_COUNT(s_prefixes); p++) {
        const s_prefix_t *pr = &s_prefixes[p];
        if (!s_starts(key, pr->prefix)) continue;
        const char *rest = key + strlen(pr->prefix);
        size_t rlen = klen - strlen(pr->prefix);
        for (size_t s = 0; s < S_COUNT(s_suffixes); s++) {
            const s_suffix_t *sf = &s_suffixes[s];
            if (sf->layout != pr->layout || (!sf->any_part && sf->part != pr->part)) continue;
            size_t slen = strlen(sf->suffix);
            if (rlen <= slen || strcmp(rest + rlen - slen, sf->suffix)) continue;
            const char *m = rest;
            size_t mlen = rlen - slen;
            if (pr->layout != ST_LORA_KOHYA && mlen > strlen(S_PEFT_WRAPPER) && s_starts(m, S_PEFT_WRAPPER)) {
                m += strlen(S_PEFT_WRAPPER);
                mlen -= strlen(S_PEFT_WRAPPER);
            }
            if (!s_module_ok(pr->layout, m, mlen) || mlen >= sizeof out->module) continue;
            out->layout = pr->layout;
            out->part = pr->part;
            out->role = sf->role;
            memcpy(out->module, m, mlen);
            out->module[mlen] = '\0';
            return true;
        }
    }
    return false;
}

int st_lora_spell_module(char *buf, size_t len, st_lora_layout_t layout, const char *module)
{
    size_t n = strlen(module);
    if (n + 1 > len) return BT_EINVAL;
    for (size_t i = 0; i <= n; i++)
        buf[i] = layout == ST_LORA_KOHYA && module[i] == '.' ? '_' : module[i];
    return BT_OK;
}

int st_lora_key(char *buf, size_t len, st_lora_layout_t layout, st_lora_part_t part, st_lora_role_t role,
                const char *module)
{
    const s_prefix_t *pr = NULL;
    const s_suffix_t *sf = NULL;
    for (size_t p = 0; p < S_COUNT(s_prefixes) && !pr; p++)
        if (s_prefixes[p].write && s_prefixes[p].layout == layout && s_prefixes[p].part == part) pr = &s_prefixes[p];
    for (size_t s = 0; s < S_COUNT(s_suffixes) && !sf; s++) {
        const s_suffix_t *c = &s_suffixes[s];
        if (c->write && c->layout == layout && c->role == role && (c->any_part || c->part == part)) sf = c;
    }
    if (!pr || !sf) return BT_EINVAL;
    char spelled[ST_LORA_NAME_MAX];
    if (st_lora_spell_module(spelled, sizeof spelled, layout, module)) return BT_EINVAL;
    int n = snprintf(buf, len, "%s%s%s", pr->prefix, spelled, sf->suffix);
    return n < 0 || (size_t)n >= len ? BT_EINVAL : BT_OK;
}

int st_lora_detect(const st_file_t *f, st_lora_layouts_t *out)
{
    const char *first[ST_LORA_PART_COUNT + 1] = {0}; /* the key that decided each part's layout */
    st_lora_layout_t *slot[ST_LORA_PART_COUNT + 1];
    for (int p = 0; p < ST_LORA_PART_COUNT; p++) {
        out->part[p] = ST_LORA_ABSENT;
        slot[p] = &out->part[p];
    }
    out->unprefixed = ST_LORA_ABSENT;
    slot[ST_LORA_PART_COUNT] = &out->unprefixed;
    for (int i = 0; i < st_count(f); i++) {
        const char *name = st_at(f, i)->name;
        st_lora_key_t k;
        if (!st_lora_parse_key(name, &k)) {
            BT_ERROR("%s: tensor '%s' is not a LoRA key in a layout booth reads (peft, diffusers or kohya)", st_path(f),
                     name);
            return BT_EFORMAT;
        }
        if (k.role == ST_LORA_ALPHA) continue; /* ".alpha" alone does not tell peft from diffusers */
        int s = k.part == ST_LORA_UNPREFIXED ? ST_LORA_PART_COUNT : (int)k.part;
        if (*slot[s] == ST_LORA_ABSENT) {
            *slot[s] = k.layout;
            first[s] = name;
        } else if (*slot[s] != k.layout) {
            BT_ERROR("%s: tensor '%s' is in the %s layout but '%s' is in the %s layout (one part, one layout)",
                     st_path(f), name, st_lora_layout_name(k.layout), first[s], st_lora_layout_name(*slot[s]));
            return BT_EFORMAT;
        }
    }
    return BT_OK;
}

/* A positive number (an integer for a rank) from metadata `key`: 1 if found, 0
 * if absent, or BT_EFORMAT (logged) if malformed and `strict`; a malformed value
 * under a third-party key is warned about and treated as absent. */
static int s_meta_number(const st_file_t *f, const char *key, bool integer, bool strict, double *out)
{
    const char *v = st_metadata(f, key);
    if (!v) return 0;
    char *end;
    double x = strtod(v, &end);
    while (*end == ' ')
        end++;
    bool ok = end != v && *end == '\0' && isfinite(x) && x > 0 && (!integer || (x == floor(x) && x <= 1e9));
    if (ok) {
        *out = x;
        return 1;
    }
    if (strict) {
        BT_ERROR("%s: metadata '%s' = '%s' is not a positive %s", st_path(f), key, v, integer ? "integer" : "number");
        return BT_EFORMAT;
    }
    BT_WARN("%s: ignoring metadata '%s' = '%s' (not a positive %s)", st_path(f), key, v,
            integer ? "integer" : "number");
    return 0;
}

int st_lora_meta_key(char *buf, size_t len, st_lora_part_t part, const char *what)
{
    int n = snprintf(buf, len, "booth.%s%s", part == ST_LORA_PART_TEXT ? "text_encoder." : "", what);
    return n < 0 || (size_t)n >= len ? BT_EINVAL : BT_OK;
}

/* ---- peft LoraConfig fields: lora_adapter_metadata and adapter_config.json ---- */

#define S_ADAPTER_META_KEY "lora_adapter_metadata" /* diffusers' LORA_ADAPTER_METADATA_KEY */
#define S_MAX_PATTERNS 100000

void st_lora_adapter_cfg_free(st_lora_adapter_cfg_t *c)
{
    for (int i = 0; i < c->n_alpha; i++) free(c->alpha_pattern[i].key);
    for (int i = 0; i < c->n_rank; i++) free(c->rank_pattern[i].key);
    free(c->alpha_pattern);
    free(c->rank_pattern);
    memset(c, 0, sizeof *c);
}

bool st_lora_pattern_is_literal(const char *key)
{
    if (!*key) return false;
    for (const char *p = key; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '_' ||
              *p == '.'))
            return false;
    return true;
}

const st_lora_pattern_t *st_lora_pattern_find(const st_lora_adapter_cfg_t *c, bool rank, const char *module)
{
    const st_lora_pattern_t *ps = rank ? c->rank_pattern : c->alpha_pattern;
    int n = rank ? c->n_rank : c->n_alpha;
    size_t ml = strlen(module);
    for (int i = 0; i < n; i++) { /* the first key that matches wins, as in peft's get_pattern_key */
        size_t kl = strlen(ps[i].key);
        if (kl > ml || strcmp(module + ml - kl, ps[i].key)) continue;
        if (kl == ml || module[ml - kl - 1] == '.') return &ps[i];
    }
    return NULL;
}

/* One pattern object ({"module": number}) into an owned array. */
static int s_patterns(const bt_json_t *j, const char *key, bool rank, st_lora_pattern_t **out, int *n)
{
    const cJSON *o = bt_json_get(j, key);
    if (!o) return BT_OK;
    if (!cJSON_IsObject(o)) {
        bt_json_error(j, key, "must be an object of module names and numbers, not %s", bt_json_type_name(o));
        return BT_EFORMAT;
    }
    int count = cJSON_GetArraySize(o);
    if (count > S_MAX_PATTERNS) {
        bt_json_error(j, key, "has %d entries (at most %d)", count, S_MAX_PATTERNS);
        return BT_EFORMAT;
    }
    if (count == 0) return BT_OK;
    if (!(*out = bt_calloc((size_t)count, sizeof **out))) {
        BT_ERROR("%s: out of memory reading '%s'", j->name, key);
        return BT_ENOMEM;
    }
    for (const cJSON *e = o->child; e; e = e->next) {
        double v = e->valuedouble;
        bool ok = cJSON_IsNumber(e) && isfinite(v) && v > 0 && v <= 1e6 && (!rank || v == floor(v));
        if (!ok) {
            bt_json_error(j, key, "entry '%.80s' must be a positive %s up to 1e6, not %s", e->string,
                          rank ? "integer" : "number", cJSON_IsNumber(e) ? "that" : bt_json_type_name(e));
            return BT_EFORMAT;
        }
        if (!((*out)[*n].key = strdup(e->string))) {
            BT_ERROR("%s: out of memory reading '%s'", j->name, key);
            return BT_ENOMEM;
        }
        (*out)[(*n)++].value = v;
    }
    return BT_OK;
}

/* The LoraConfig fields "<prefix><field>" of j into c (prefix "" for adapter_config.json). */
static int s_adapter_cfg(const bt_json_t *j, const char *prefix, st_lora_adapter_cfg_t *c)
{
    char key[5][64];
    static const char *const fields[5] = {"r", "lora_alpha", "use_rslora", "use_dora", "alpha_pattern"};
    for (int i = 0; i < 5; i++) snprintf(key[i], sizeof key[i], "%s%s", prefix, fields[i]);
    char rank_key[64];
    snprintf(rank_key, sizeof rank_key, "%srank_pattern", prefix);
    size_t pl = strlen(prefix);
    for (const cJSON *e = j->root ? j->root->child : NULL; e && !c->present; e = e->next)
        c->present = !strncmp(e->string, prefix, pl);
    if (!c->present) return BT_OK;
    int rc = bt_json_int64(j, key[0], 0, 1, 1000000000, &c->r);
    if (rc == BT_OK) rc = bt_json_double(j, key[1], 0, 1e-30, 1e6, &c->lora_alpha);
    if (rc == BT_OK) rc = bt_json_bool(j, key[2], false, &c->use_rslora);
    if (rc == BT_OK) rc = bt_json_bool(j, key[3], false, &c->use_dora);
    if (rc == BT_OK) rc = s_patterns(j, key[4], false, &c->alpha_pattern, &c->n_alpha);
    if (rc == BT_OK) rc = s_patterns(j, rank_key, true, &c->rank_pattern, &c->n_rank);
    return rc;
}

int st_lora_adapter_config_read(const char *path, st_lora_adapter_cfg_t *out)
{
    memset(out, 0, sizeof *out);
    bt_json_t j;
    FILE *probe = fopen(path, "rb");
    if (!probe) return BT_ENOTFOUND;
    fclose(probe);
    int rc = bt_json_open(&j, path);
    if (rc) return rc == BT_ENOTFOUND ? BT_EIO : rc;
    const char *tail = strrchr(path, '/');
    snprintf(out->source, sizeof out->source, "%s", tail ? tail + 1 : path);
    rc = s_adapter_cfg(&j, "", out);
    if (rc == BT_OK && !out->present) {
        BT_ERROR("%s: an empty adapter config", path);
        rc = BT_EFORMAT;
    }
    bt_json_free(&j);
    if (rc) st_lora_adapter_cfg_free(out);
    return rc;
}

void st_lora_meta_free(st_lora_meta_t *m)
{
    for (int p = 0; p < ST_LORA_PART_COUNT; p++) st_lora_adapter_cfg_free(&m->adapter[p]);
}

/* diffusers' lora_adapter_metadata: one JSON object, keys "<part>.<field>". */
static int s_adapter_meta(const st_file_t *f, st_lora_meta_t *m)
{
    const char *v = st_metadata(f, S_ADAPTER_META_KEY);
    if (!v) return BT_OK;
    char name[4096 + 64];
    snprintf(name, sizeof name, "%s: metadata '%s'", st_path(f), S_ADAPTER_META_KEY);
    bt_json_t j;
    int rc = bt_json_parse(&j, v, strlen(v), name);
    for (int p = 0; p < ST_LORA_PART_COUNT && rc == BT_OK; p++) {
        char prefix[32];
        snprintf(prefix, sizeof prefix, "%s.", st_lora_part_name((st_lora_part_t)p));
        snprintf(m->adapter[p].source, sizeof m->adapter[p].source, "metadata '%s'", S_ADAPTER_META_KEY);
        rc = s_adapter_cfg(&j, prefix, &m->adapter[p]);
    }
    bt_json_free(&j);
    return rc;
}

int st_lora_meta_read(const st_file_t *f, st_lora_meta_t *m)
{
    memset(m, 0, sizeof *m);
    int arc = s_adapter_meta(f, m);
    if (arc) {
        st_lora_meta_free(m);
        return arc;
    }
    for (int p = 0; p < ST_LORA_PART_COUNT; p++) {
        char own_rank[64], own_alpha[64];
        st_lora_meta_key(own_rank, sizeof own_rank, (st_lora_part_t)p, ST_LORA_META_RANK);
        st_lora_meta_key(own_alpha, sizeof own_alpha, (st_lora_part_t)p, ST_LORA_META_ALPHA);
        /* most specific first; booth's own keys are checked strictly */
        const struct {
            const char *key;
            bool strict;
        } ranks[] = {{own_rank, true}, {"booth.rank", true}, {"rank", false}},
          alphas[] = {{own_alpha, true}, {"booth.alpha", true}, {"alpha", false}, {"ss_network_alpha", false}};
        double x = 0;
        int rc = 0;
        for (size_t i = 0; i < S_COUNT(ranks) && rc == 0; i++)
            rc = s_meta_number(f, ranks[i].key, true, ranks[i].strict, &x);
        if (rc < 0) {
            st_lora_meta_free(m);
            return rc;
        }
        if (rc) m->rank[p] = (int64_t)x;
        rc = 0;
        for (size_t i = 0; i < S_COUNT(alphas) && rc == 0; i++)
            rc = s_meta_number(f, alphas[i].key, false, alphas[i].strict, &x);
        if (rc < 0) {
            st_lora_meta_free(m);
            return rc;
        }
        if (rc) m->alpha[p] = x;
    }
    return BT_OK;
}
