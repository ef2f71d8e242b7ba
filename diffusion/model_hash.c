/* model_hash.c — the manifest of a model folder's files and its XXH64. */
#include "diffusion/model_hash.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/fileio.h"
#include "common/log.h"
#include "common/status.h"
#include "diffusion/pipeline.h"

typedef struct {
    char *s;
    size_t len, cap;
    const char *dir;
    int rc;
} s_manifest_t;

/* Hashes dir/rel (if required or present) and appends its manifest line. */
static void s_add(s_manifest_t *m, const char *rel, bool required)
{
    if (m->rc) return;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", m->dir, rel);
    if (!required && access(path, F_OK) != 0) return;
    uint64_t d;
    if ((m->rc = bt_xxh64_file(path, &d))) return;
    size_t need = m->len + strlen(rel) + 32;
    if (need > m->cap) {
        size_t cap = need * 2;
        char *s = bt_realloc(m->s, cap);
        if (!s) {
            m->rc = BT_ENOMEM;
            return;
        }
        m->s = s;
        m->cap = cap;
    }
    char hex[BT_HASH_HEX];
    bt_hash_hex(d, hex);
    m->len += (size_t)snprintf(m->s + m->len, m->cap - m->len, "%s  %s\n", hex, rel);
}

static int s_cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* The weights of one part, as the loader picks them. */
static void s_add_weights(s_manifest_t *m, const char *part, const char *base)
{
    static const char *const variants[] = {"", ".fp16", ".bf16"};
    char rel[512], path[4096];
    for (int v = 0; v < 3 && !m->rc; v++) {
        snprintf(rel, sizeof rel, "%s/%s%s.safetensors", part, base, variants[v]);
        snprintf(path, sizeof path, "%s/%s", m->dir, rel);
        if (access(path, F_OK) == 0) {
            s_add(m, rel, true);
            return;
        }
        snprintf(rel, sizeof rel, "%s/%s%s.safetensors.index.json", part, base, variants[v]);
        snprintf(path, sizeof path, "%s/%s", m->dir, rel);
        if (access(path, F_OK) != 0) continue;
        s_add(m, rel, true);
        char *text = NULL;
        if (m->rc || (m->rc = bt_read_file(path, &text, NULL))) return;
        cJSON *root = cJSON_Parse(text);
        free(text);
        const cJSON *map = root ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL, *e;
        if (!cJSON_IsObject(map)) {
            BT_ERROR("%s: no weight_map object", path);
            m->rc = BT_EFORMAT;
            cJSON_Delete(root);
            return;
        }
        int n = cJSON_GetArraySize(map), k = 0;
        char **shards = bt_calloc((size_t)(n ? n : 1), sizeof *shards);
        if (!shards) m->rc = BT_ENOMEM;
        cJSON_ArrayForEach(e, map) if (shards && cJSON_IsString(e)) shards[k++] = e->valuestring;
        if (shards) qsort(shards, (size_t)k, sizeof *shards, s_cmp);
        for (int i = 0; i < k && !m->rc; i++) {
            if (i && !strcmp(shards[i], shards[i - 1])) continue;
            if (strchr(shards[i], '/') || !strcmp(shards[i], "..")) {
                BT_ERROR("%s: shard '%s' is not a plain file name", path, shards[i]);
                m->rc = BT_EFORMAT;
                break;
            }
            snprintf(rel, sizeof rel, "%s/%s", part, shards[i]);
            s_add(m, rel, true);
        }
        free(shards);
        cJSON_Delete(root);
        return;
    }
    if (!m->rc) {
        BT_ERROR("%s/%s: no %s.safetensors (or .fp16/.bf16 variant, or sharded index) to hash", m->dir, part, base);
        m->rc = BT_ENOTFOUND;
    }
}

static bool s_exists(const char *dir, const char *rel)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, rel);
    return access(path, F_OK) == 0;
}

int sd_model_hash(const char *dir, unsigned parts, char hex[BT_HASH_HEX], char **manifest)
{
    s_manifest_t m = {.dir = dir};
    if (manifest) *manifest = NULL;
    struct stat st;
    if (stat(dir, &st) == 0 && !S_ISDIR(st.st_mode)) {
        /* a single-file checkpoint: the file is every part */
        const char *slash = strrchr(dir, '/');
        char parent[4096];
        snprintf(parent, sizeof parent, "%.*s", slash ? (int)(slash - dir) : 1, slash ? dir : ".");
        m.dir = parent;
        s_add(&m, slash ? slash + 1 : dir, true);
        parts = 0;
    }
    if ((parts & SD_PART_ALL) == SD_PART_ALL) s_add(&m, "model_index.json", true);
    if (parts & SD_PART_SCHEDULER) s_add(&m, "scheduler/scheduler_config.json", true);
    if (parts & SD_PART_TEXT) {
        s_add(&m, "text_encoder/config.json", true);
        s_add_weights(&m, "text_encoder", "model");
    }
    if (parts & SD_PART_TOKENIZER) {
        /* transformers 5 writes tokenizer.json instead of vocab.json + merges.txt */
        bool fast = !s_exists(dir, "tokenizer/vocab.json") && !s_exists(dir, "tokenizer/merges.txt") &&
                    s_exists(dir, "tokenizer/tokenizer.json");
        s_add(&m, "tokenizer/merges.txt", !fast);
        s_add(&m, "tokenizer/special_tokens_map.json", false);
        if (fast) s_add(&m, "tokenizer/tokenizer.json", true);
        s_add(&m, "tokenizer/tokenizer_config.json", false);
        s_add(&m, "tokenizer/vocab.json", !fast);
    }
    if (parts & SD_PART_UNET) {
        s_add(&m, "unet/config.json", true);
        s_add_weights(&m, "unet", "diffusion_pytorch_model");
    }
    if (parts & SD_PART_VAE) {
        s_add(&m, "vae/config.json", true);
        s_add_weights(&m, "vae", "diffusion_pytorch_model");
    }
    if (m.rc == BT_OK && !m.s) m.rc = BT_EINVAL;
    if (m.rc == BT_OK) {
        bt_hash_hex(bt_xxh64(m.s, m.len, 0), hex);
        if (manifest) {
            *manifest = m.s;
            m.s = NULL;
        }
    }
    free(m.s);
    return m.rc;
}
