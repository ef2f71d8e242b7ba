/*
 * rare_tokens.c — rare single-token identifiers from a tokenizer's merge order (rare_tokens.h).
 */
#include "diffusion/rare_tokens.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/fileio.h"
#include "common/log.h"
#include "common/status.h"

/* booth's built-in CLIP merges (diffusion/clip_tokenizer.S) */
extern const char sd_clip_merges_txt[], sd_clip_merges_txt_end[];

/* Abusive or profane short words that no word list of English marks as such; never suggested. */
static const char *const s_abusive[] = {"fck", "fuk", "fuq", "jap", "kkk", "nig", "paki", "shit", "spic", "wtf"};

static int s_cmp(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

bool sd_is_common_word(const char *word)
{
    if (bsearch(&word, sd_common_words, (size_t)sd_n_common_words, sizeof *sd_common_words, s_cmp)) return true;
    for (size_t i = 0; i < sizeof s_abusive / sizeof s_abusive[0]; i++)
        if (!strcmp(word, s_abusive[i])) return true;
    return false;
}

typedef struct {
    const sd_tokenizer_t *t;
    sd_rare_token_t *out;
    int max, n, rank;
} s_scan_t;

/* One merge "a b" (rank s->rank): a candidate when a+b is a 3-4-letter word token that the
 * tokenizer gives back as itself alone. Keeps the latest max (merges come in rank order). */
static int s_merge(s_scan_t *s, const char *a, size_t la, const char *b, size_t lb)
{
    int rank = s->rank++;
    char tok[16];
    if (la + lb < 7 || la + lb > 8 || lb < 4 || memcmp(b + lb - 4, "</w>", 4) != 0) return BT_OK; /* b: not NUL-ended */
    memcpy(tok, a, la);
    memcpy(tok + la, b, lb);
    tok[la + lb] = '\0';
    size_t wl = la + lb - 4;
    for (size_t i = 0; i < wl; i++)
        if (tok[i] < 'a' || tok[i] > 'z') return BT_OK;
    char word[8];
    memcpy(word, tok, wl);
    word[wl] = '\0';
    if (sd_is_common_word(word)) return BT_OK;
    int32_t id = sd_tok_token_id(s->t, tok);
    if (id < 0) return BT_OK;
    sd_tok_result_t r;
    int rc = sd_tokenize(s->t, word, &r);
    if (rc) return rc;
    bool one = r.n_tokens == 1 && r.ids[1] == id;
    sd_tok_result_free(&r);
    if (!one) return BT_OK;
    /* a ring of the latest max: shift out the earliest when full */
    if (s->n == s->max) {
        memmove(s->out, s->out + 1, (size_t)(s->max - 1) * sizeof *s->out);
        s->n--;
    }
    sd_rare_token_t *o = &s->out[s->n++];
    snprintf(o->word, sizeof o->word, "%s", word);
    o->id = id;
    o->rank = rank;
    return BT_OK;
}

/* merges.txt: an optional "#version" line, then "a b" per line in rank order */
static int s_scan_text(s_scan_t *s, const char *p, const char *end)
{
    int rc = BT_OK;
    bool first = true;
    while (p < end && rc == BT_OK) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        const char *e = le;
        if (e > p && e[-1] == '\r') e--;
        bool header = first && e - p >= 8 && !strncmp(p, "#version", 8);
        first = false;
        if (!header && e > p) {
            const char *sp = memchr(p, ' ', (size_t)(e - p));
            if (sp) rc = s_merge(s, p, (size_t)(sp - p), sp + 1, (size_t)(e - sp - 1));
            else s->rank++;
        }
        p = nl ? nl + 1 : end;
    }
    return rc;
}

/* tokenizer.json's model.merges: ["a b", ...] or [["a", "b"], ...] */
static int s_scan_json(s_scan_t *s, const char *text, size_t len, const char *path)
{
    cJSON *root = cJSON_ParseWithLength(text, len);
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "model"), "merges");
    int rc = BT_OK;
    if (!cJSON_IsArray(merges)) {
        BT_ERROR("%s: no model.merges array", path);
        rc = BT_EFORMAT;
    }
    const cJSON *m;
    cJSON_ArrayForEach(m, merges)
    {
        if (rc) break;
        if (cJSON_IsString(m)) {
            const char *sp = strchr(m->valuestring, ' ');
            if (sp) {
                rc = s_merge(s, m->valuestring, (size_t)(sp - m->valuestring), sp + 1, strlen(sp + 1));
                continue;
            }
        } else if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2 && cJSON_IsString(cJSON_GetArrayItem(m, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(m, 1))) {
            const char *a = cJSON_GetArrayItem(m, 0)->valuestring, *b = cJSON_GetArrayItem(m, 1)->valuestring;
            rc = s_merge(s, a, strlen(a), b, strlen(b));
            continue;
        }
        s->rank++; /* a merge of another shape still takes its rank */
    }
    cJSON_Delete(root);
    return rc;
}

int sd_rare_tokens(const sd_tokenizer_t *t, const char *tok_dir, sd_rare_token_t *out, int max, int *n,
                   int *n_merges)
{
    s_scan_t s = {.t = t, .out = out, .max = max > 0 ? max : 0};
    *n = *n_merges = 0;
    if (s.max == 0) return BT_OK;
    int rc;
    if (!tok_dir) {
        rc = s_scan_text(&s, sd_clip_merges_txt, sd_clip_merges_txt_end);
    } else {
        char path[4200];
        char *text = NULL;
        size_t len = 0;
        struct stat st;
        snprintf(path, sizeof path, "%s/merges.txt", tok_dir);
        bool txt = stat(path, &st) == 0;
        if (!txt) snprintf(path, sizeof path, "%s/tokenizer.json", tok_dir);
        if ((rc = bt_read_file(path, &text, &len))) return rc;
        rc = txt ? s_scan_text(&s, text, text + len) : s_scan_json(&s, text, len, path);
        free(text);
    }
    if (rc) return rc;
    /* latest first */
    for (int i = 0; i < s.n / 2; i++) {
        sd_rare_token_t tmp = out[i];
        out[i] = out[s.n - 1 - i];
        out[s.n - 1 - i] = tmp;
    }
    *n = s.n;
    *n_merges = s.rank;
    return BT_OK;
}
