/*
 * lora_file.h — LoRA safetensors files: the three key layouts users meet, and
 * the one table of key spellings that maps (layout, part, module, role) to a
 * tensor name and back.
 *
 * Layouts (A = lora_A = "down" [rank, in], B = lora_B = "up" [out, rank]):
 *   peft       "unet.<module>.lora_A.weight", "text_encoder.<module>.lora_B.weight"
 *              (booth in memory, peft, diffusers >= 0.26); read also without the
 *              part prefix, with peft's "base_model.model." prefix and with the
 *              ".default" adapter name.
 *   diffusers  "unet.<module>.lora.down.weight" / ".lora.up.weight",
 *              "text_encoder.<module>.lora_linear_layer.down.weight" / ".up.weight"
 *              (diffusers 0.2x, pytorch_lora_weights.safetensors). No alpha:
 *              loaders assume alpha == rank.
 *   kohya      "lora_unet_<module with '.' -> '_'>.lora_down.weight", ".lora_up.weight",
 *              ".alpha" (0-dim), text encoder "lora_te_..." (sd-scripts, A1111, ComfyUI).
 *
 * storage/ knows formats, not models: a parsed key gives the module as it is
 * spelled in the file. Kohya's '.' -> '_' cannot be undone by string replacement
 * ("to_out_0", "transformer_blocks"), so callers that know the model spell each
 * of their modules with st_lora_spell_module() and look the parsed spelling up.
 *
 * Alpha beside the tensors: diffusers' "lora_adapter_metadata" metadata and peft's
 * adapter_config.json (st_lora_adapter_cfg_t below).
 *
 * Metadata (all strings): booth writes "format" = "pt", "booth.layout",
 * "booth.rank", "booth.alpha", "booth.targets" (JSON list) for the UNet and the
 * same under "booth.text_encoder." for the text encoder, and reads rank/alpha
 * from those, else from "rank"/"alpha" (as the oracle's files), else (alpha)
 * from kohya's "ss_network_alpha".
 */
#ifndef BOOTH_STORAGE_LORA_FILE_H
#define BOOTH_STORAGE_LORA_FILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "storage/safetensors.h"

#define ST_LORA_NAME_MAX 256

typedef enum st_lora_layout {
    ST_LORA_ABSENT = -1, /* detection: the part has no entries */
    ST_LORA_PEFT,
    ST_LORA_DIFFUSERS,
    ST_LORA_KOHYA,
    ST_LORA_LAYOUT_COUNT
} st_lora_layout_t;

/* The model part a key prefix names. Unprefixed (peft or old diffusers) keys
 * carry no part: the caller decides by looking the module up. */
typedef enum st_lora_part {
    ST_LORA_UNPREFIXED = -1,
    ST_LORA_PART_UNET,
    ST_LORA_PART_TEXT,
    ST_LORA_PART_COUNT
} st_lora_part_t;

typedef enum st_lora_role {
    ST_LORA_A,     /* down [rank, in] */
    ST_LORA_B,     /* up [out, rank] */
    ST_LORA_ALPHA, /* scalar (kohya; read in the other layouts too) */
    ST_LORA_ROLE_COUNT
} st_lora_role_t;

/* "peft", "diffusers", "kohya". */
const char *st_lora_layout_name(st_lora_layout_t layout);
/* Accepts the names above; BT_EINVAL (logged) otherwise. */
int st_lora_layout_parse(const char *name, st_lora_layout_t *layout);
/* "unet", "text_encoder" (also the key prefixes of the peft/diffusers layouts). */
const char *st_lora_part_name(st_lora_part_t part);

typedef struct st_lora_key {
    st_lora_layout_t layout;
    st_lora_part_t part;
    st_lora_role_t role;
    char module[ST_LORA_NAME_MAX]; /* as spelled in the key: dotted, or kohya's underscored stem */
} st_lora_key_t;

/* Parses a tensor name. False (nothing logged) for a name in no known layout. */
bool st_lora_parse_key(const char *key, st_lora_key_t *out);

/* The tensor name booth writes for (layout, part, role, dotted module name).
 * BT_EINVAL for a combination with no spelling (alpha in the diffusers layout,
 * an unprefixed part) or a name that does not fit in len. Nothing logged. */
int st_lora_key(char *buf, size_t len, st_lora_layout_t layout, st_lora_part_t part, st_lora_role_t role,
                const char *module);

/* The dotted module name as keys of `layout` spell it (kohya: '.' -> '_'). BT_EINVAL if it does not fit. */
int st_lora_spell_module(char *buf, size_t len, st_lora_layout_t layout, const char *module);

/* The layout of each part of an open file. Every tensor name must parse and one
 * part must not mix layouts; otherwise one error naming the file and the key. */
typedef struct st_lora_layouts {
    st_lora_layout_t part[ST_LORA_PART_COUNT]; /* ST_LORA_ABSENT: no entries with that prefix */
    st_lora_layout_t unprefixed;               /* layout of entries without a part prefix, or ABSENT */
} st_lora_layouts_t;
int st_lora_detect(const st_file_t *f, st_lora_layouts_t *out);

/* What a peft LoraConfig says about one part's scale: diffusers' (>= 0.34)
 * "lora_adapter_metadata" (a JSON string in __metadata__ whose keys are
 * "<part>.<LoraConfig field>": "unet.r", "unet.lora_alpha", "text_encoder.alpha_pattern",
 * ...) or peft's adapter_config.json (the same fields without a prefix). Only the
 * fields that change what the file means are kept; patterns map a module name
 * (matched as peft does: the whole name or a suffix after a '.') to a value. */
typedef struct st_lora_pattern {
    char *key;    /* as written in the file */
    double value; /* alpha, or a rank (an integer) */
} st_lora_pattern_t;

typedef struct st_lora_adapter_cfg {
    bool present;      /* the source had fields for this part */
    int64_t r;         /* 0: not stated */
    double lora_alpha; /* 0: not stated */
    bool use_rslora;   /* scale alpha / sqrt(r) instead of alpha / r */
    bool use_dora;     /* weight-decomposed LoRA: not a plain A/B update */
    int n_alpha, n_rank;
    st_lora_pattern_t *alpha_pattern, *rank_pattern; /* owned */
    char source[96];   /* for messages: "metadata 'lora_adapter_metadata'" or the config's path tail */
} st_lora_adapter_cfg_t;

/* Rank and alpha a file's metadata states for each part (0: not stated). For the
 * text encoder, "booth.text_encoder.*" wins over the shared keys. A value that is
 * not a positive number is one error naming the file and the key. adapter[] is
 * diffusers' lora_adapter_metadata per part (present false without it); a
 * malformed one is one error naming the file and the field. Release with
 * st_lora_meta_free (safe on a zeroed struct and after a failed read). */
typedef struct st_lora_meta {
    int64_t rank[ST_LORA_PART_COUNT];
    double alpha[ST_LORA_PART_COUNT];
    st_lora_adapter_cfg_t adapter[ST_LORA_PART_COUNT];
} st_lora_meta_t;
int st_lora_meta_read(const st_file_t *f, st_lora_meta_t *m);
void st_lora_meta_free(st_lora_meta_t *m);

/* peft's adapter_config.json at path: BT_OK with out->present, BT_ENOTFOUND
 * (nothing logged) when there is no such file, or one error naming the file and
 * the field. Release with st_lora_adapter_cfg_free. */
int st_lora_adapter_config_read(const char *path, st_lora_adapter_cfg_t *out);
void st_lora_adapter_cfg_free(st_lora_adapter_cfg_t *c);

/* The pattern of `c` (alpha: rank false) that applies to dotted module name
 * `module`, or NULL. Matching is peft's re.match(r"(.*\.)?(KEY)$") for keys made of
 * letters, digits, '_' and '.' (read literally); st_lora_pattern_is_literal tells
 * which keys those are. */
const st_lora_pattern_t *st_lora_pattern_find(const st_lora_adapter_cfg_t *c, bool rank, const char *module);
bool st_lora_pattern_is_literal(const char *key);

/* Metadata key names, for writers. booth.alpha_folded: the alpha a diffusers-
 * layout file had folded into B (the file itself then means alpha == rank). */
#define ST_LORA_META_LAYOUT "booth.layout"
#define ST_LORA_META_RANK "rank"
#define ST_LORA_META_ALPHA "alpha"
#define ST_LORA_META_TARGETS "targets"
#define ST_LORA_META_ALPHA_FOLDED "alpha_folded"
/* "booth.<what>" for the UNet, "booth.text_encoder.<what>" for the text encoder. */
int st_lora_meta_key(char *buf, size_t len, st_lora_part_t part, const char *what);

#endif
