/*
 * tokenizer.c — CLIP BPE tokenizer (see tokenizer.h for the algorithm).
 *
 * It reproduces transformers' slow CLIPTokenizer without ftfy byte for byte: the
 * Python pieces it imitates are BasicTokenizer(strip_accents=False,
 * do_split_on_punc=False) for the clean-up, str.lower() (full case mapping, with the
 * final-sigma rule), the `regex` module's IGNORECASE matching for the pre-split, and
 * CLIPTokenizer.bpe(). Unicode properties come from utf8proc; where its Unicode
 * version differs from the Python that made a tokenizer's reference output, newly
 * assigned characters can be treated differently (Python drops unassigned ones).
 *
 * Lookups go through two open-addressing hash tables (token -> id, "a b" -> merge
 * rank) over one string block, so loading is one JSON parse plus one pass over
 * merges.txt. BPE itself uses a heap of candidate pairs; merging every occurrence of
 * the lowest-ranked pair per round, left to right, it gives the same result as the
 * quadratic Python loop, in O(n log n) even for a hostile 100 kB "word".
 */
#include "diffusion/tokenizer.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <utf8proc.h>

#include "common/alloc.h"
#include "common/fileio.h"
#include "common/json.h"
#include "common/log.h"
#include "common/status.h"

/* CLIPTokenizer keeps merges.txt lines [1, 49152 - 256 - 2 + 1): the first line is the
 * "#version" header, and anything past 48894 merges is ignored. */
#define S_MERGES_END (49152 - 256 - 2 + 1)
/* transformers' VERY_LARGE_INTEGER marks an unset model_max_length. */
#define S_MAX_LENGTH_LIMIT 1000000

enum { S_BOS, S_EOS, S_UNK, S_PAD, S_NSPECIAL };
static const char *const s_special_keys[S_NSPECIAL] = {"bos_token", "eos_token", "unk_token", "pad_token"};
static const char *const s_special_defaults[S_NSPECIAL] = {"<|startoftext|>", "<|endoftext|>", "<|endoftext|>",
                                                           "<|endoftext|>"};

/* ------------------------------------------------------------------ hash table */

/* One slot: a key (offset + length in the tokenizer's string block) and a value.
 * hash == 0 marks an empty slot (s_hash never returns 0). */
typedef struct {
    uint64_t hash;
    uint32_t off, len;
    int32_t value; /* vocab: token id; merges: rank */
    uint32_t split; /* merges: the key is "a b" with strlen(a) == split */
} s_slot_t;

typedef struct {
    s_slot_t *slots;
    size_t mask; /* capacity - 1, capacity a power of two */
    int n;
} s_map_t;

#define S_FNV_BASIS 0xcbf29ce484222325ull
#define S_FNV_PRIME 0x100000001b3ull

static uint64_t s_fnv(uint64_t h, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * S_FNV_PRIME;
    return h;
}

static uint64_t s_hash_final(uint64_t h) { return h ? h : 1; }

/* Sized for n keys at load factor <= 1/2. */
static int s_map_init(s_map_t *m, size_t n)
{
    size_t cap = 16;
    while (cap < 2 * n) cap *= 2;
    m->slots = bt_calloc(cap, sizeof *m->slots);
    if (!m->slots) return BT_ENOMEM;
    m->mask = cap - 1;
    m->n = 0;
    return BT_OK;
}

static void s_map_free(s_map_t *m)
{
    free(m->slots);
    m->slots = NULL;
}

/* ------------------------------------------------------------------ tokenizer */

struct sd_tokenizer {
    char *strings; /* every vocab token and merge key, NUL-terminated */
    size_t strings_len, strings_cap;
    s_map_t vocab;  /* token -> id */
    s_map_t merges; /* "a b" -> rank */
    int max_length;
    int n_special;          /* distinct special strings, longest first */
    uint32_t *special_cp[S_NSPECIAL]; /* their code points */
    int special_ncp[S_NSPECIAL];
    int32_t special_id[S_NSPECIAL];
    int32_t ids[S_NSPECIAL]; /* bos, eos, unk, pad */
    char byte_utf8[256][3];  /* GPT-2 byte -> printable code point, as UTF-8 */
    uint8_t byte_utf8_len[256];
};

/* Appends s to the string block; *off receives its offset. */
static int s_strings_add(sd_tokenizer_t *t, const char *s, size_t n, uint32_t *off)
{
    if (t->strings_len + n + 1 > t->strings_cap) {
        size_t cap = t->strings_cap ? t->strings_cap : 1 << 16;
        while (cap < t->strings_len + n + 1) cap *= 2;
        if (cap > UINT32_MAX) return BT_ENOMEM;
        char *p = bt_realloc(t->strings, cap);
        if (!p) return BT_ENOMEM;
        t->strings = p;
        t->strings_cap = cap;
    }
    memcpy(t->strings + t->strings_len, s, n);
    t->strings[t->strings_len + n] = '\0';
    *off = (uint32_t)t->strings_len;
    t->strings_len += n + 1;
    return BT_OK;
}

static s_slot_t *s_vocab_find(const sd_tokenizer_t *t, const char *s, size_t n)
{
    uint64_t h = s_hash_final(s_fnv(S_FNV_BASIS, s, n));
    for (size_t i = h & t->vocab.mask;; i = (i + 1) & t->vocab.mask) {
        s_slot_t *sl = &t->vocab.slots[i];
        if (!sl->hash) return sl;
        if (sl->hash == h && sl->len == n && !memcmp(t->strings + sl->off, s, n)) return sl;
    }
}

static int32_t s_vocab_get(const sd_tokenizer_t *t, const char *s, size_t n)
{
    const s_slot_t *sl = s_vocab_find(t, s, n);
    return sl->hash ? sl->value : -1;
}

/* Later duplicates win, as in a Python dict built from the file. */
static int s_vocab_put(sd_tokenizer_t *t, const char *s, size_t n, int32_t id)
{
    s_slot_t *sl = s_vocab_find(t, s, n);
    if (sl->hash) {
        sl->value = id;
        return BT_OK;
    }
    uint32_t off;
    int rc = s_strings_add(t, s, n, &off);
    if (rc) return rc;
    *sl = (s_slot_t){s_hash_final(s_fnv(S_FNV_BASIS, s, n)), off, (uint32_t)n, id, 0};
    t->vocab.n++;
    return BT_OK;
}

static uint64_t s_pair_hash(const char *a, size_t na, const char *b, size_t nb)
{
    return s_hash_final(s_fnv(s_fnv(s_fnv(S_FNV_BASIS, a, na), " ", 1), b, nb));
}

static s_slot_t *s_merge_find(const sd_tokenizer_t *t, uint64_t h, const char *a, size_t na, const char *b,
                              size_t nb)
{
    for (size_t i = h & t->merges.mask;; i = (i + 1) & t->merges.mask) {
        s_slot_t *sl = &t->merges.slots[i];
        if (!sl->hash) return sl;
        if (sl->hash == h && sl->split == na && sl->len == na + 1 + nb && !memcmp(t->strings + sl->off, a, na) &&
            !memcmp(t->strings + sl->off + na + 1, b, nb))
            return sl;
    }
}

/* Rank of the pair (a, b), or INT32_MAX if it is not a merge. */
static int32_t s_merge_rank(const sd_tokenizer_t *t, const char *a, size_t na, const char *b, size_t nb)
{
    const s_slot_t *sl = s_merge_find(t, s_pair_hash(a, na, b, nb), a, na, b, nb);
    return sl->hash ? sl->value : INT32_MAX;
}

static int s_merge_put(sd_tokenizer_t *t, const char *a, size_t na, const char *b, size_t nb, int32_t rank)
{
    uint64_t h = s_pair_hash(a, na, b, nb);
    s_slot_t *sl = s_merge_find(t, h, a, na, b, nb);
    if (sl->hash) {
        sl->value = rank; /* dict(zip(merges, range(...))): the last rank wins */
        return BT_OK;
    }
    char key[512];
    char *k = na + nb + 1 <= sizeof key ? key : bt_malloc(na + nb + 1);
    if (!k) return BT_ENOMEM;
    memcpy(k, a, na);
    k[na] = ' ';
    memcpy(k + na + 1, b, nb);
    uint32_t off;
    int rc = s_strings_add(t, k, na + nb + 1, &off);
    if (k != key) free(k);
    if (rc) return rc;
    *sl = (s_slot_t){h, off, (uint32_t)(na + nb + 1), rank, (uint32_t)na};
    t->merges.n++;
    return BT_OK;
}

/* ------------------------------------------------------------------ Unicode */

/* Decodes one code point; an invalid or truncated sequence reads as U+FFFD and
 * consumes one byte, so every input is read to its end. */
static size_t s_utf8_next(const char *s, size_t n, uint32_t *cp)
{
    utf8proc_int32_t c;
    utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)(n < 4 ? n : 4), &c);
    if (k <= 0 || c < 0) {
        *cp = 0xFFFD;
        return 1;
    }
    *cp = (uint32_t)c;
    return (size_t)k;
}

static size_t s_utf8_put(char *out, uint32_t cp)
{
    return (size_t)utf8proc_encode_char((utf8proc_int32_t)cp, (utf8proc_uint8_t *)out);
}

static utf8proc_category_t s_cat(uint32_t cp) { return utf8proc_category((utf8proc_int32_t)cp); }

static bool s_is_letter(uint32_t cp)
{
    utf8proc_category_t c = s_cat(cp);
    return c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_LO;
}

static bool s_is_number(uint32_t cp)
{
    utf8proc_category_t c = s_cat(cp);
    return c >= UTF8PROC_CATEGORY_ND && c <= UTF8PROC_CATEGORY_NO;
}

/* BERT's _is_control: category C* (Cn included), except \t \n \r. */
static bool s_is_control(uint32_t cp)
{
    if (cp == '\t' || cp == '\n' || cp == '\r') return false;
    utf8proc_category_t c = s_cat(cp);
    return c == UTF8PROC_CATEGORY_CN || c >= UTF8PROC_CATEGORY_CC;
}

/* BERT's _is_whitespace. */
static bool s_is_bert_space(uint32_t cp)
{
    return cp == ' ' || cp == '\t' || cp == '\n' || cp == '\r' || s_cat(cp) == UTF8PROC_CATEGORY_ZS;
}

/* Python's str.isspace (what str.split() splits on). */
static bool s_is_py_space(uint32_t cp)
{
    return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
           cp == 0x3000;
}

/* BERT's _is_chinese_char: the CJK ideograph blocks that get spaces around them. */
static bool s_is_cjk(uint32_t cp)
{
    return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) || (cp >= 0x20000 && cp <= 0x2A6DF) ||
           (cp >= 0x2A700 && cp <= 0x2B73F) || (cp >= 0x2B740 && cp <= 0x2B81F) ||
           (cp >= 0x2B820 && cp <= 0x2CEAF) || (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

/* Unicode's Case_Ignorable: Mn, Me, Cf, Lm, Sk and the Word_Break classes MidLetter,
 * MidNumLet and Single_Quote. Only used for the final-sigma rule. */
static bool s_is_case_ignorable(uint32_t cp)
{
    switch (s_cat(cp)) {
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_SK: return true;
    default: break;
    }
    static const uint32_t mid[] = {0x27,   0x2E,   0x3A,   0xB7,   0x387,  0x55F,  0x5F4,  0x2018, 0x2019,
                                   0x2024, 0x2027, 0xFE13, 0xFE52, 0xFE55, 0xFF07, 0xFF0E, 0xFF1A};
    for (size_t i = 0; i < sizeof mid / sizeof mid[0]; i++)
        if (cp == mid[i]) return true;
    return false;
}

/* Unicode's Cased (Lowercase or Uppercase or Lt), approximated by the categories plus
 * "has a case mapping", which covers Other_Lowercase/Other_Uppercase symbols such as
 * circled letters and Roman numerals; ª and º are the two without a mapping. */
static bool s_is_cased(uint32_t cp)
{
    utf8proc_category_t c = s_cat(cp);
    if (c == UTF8PROC_CATEGORY_LU || c == UTF8PROC_CATEGORY_LL || c == UTF8PROC_CATEGORY_LT) return true;
    if (cp == 0xAA || cp == 0xBA) return true;
    utf8proc_int32_t u = (utf8proc_int32_t)cp;
    return utf8proc_tolower(u) != u || utf8proc_toupper(u) != u;
}

/* CPython's handle_capital_sigma: U+03A3 at i lowercases to final ς when a cased
 * letter precedes it and none follows (case-ignorable characters skipped both ways). */
static bool s_final_sigma(const uint32_t *w, size_t n, size_t i)
{
    size_t j = i;
    while (j > 0 && s_is_case_ignorable(w[j - 1])) j--;
    if (j == 0 || !s_is_cased(w[j - 1])) return false;
    for (j = i + 1; j < n && s_is_case_ignorable(w[j]); j++) {
    }
    return j == n || !s_is_cased(w[j]);
}

/* Python's str.lower(): the simple mapping, except U+0130 (two code points) and
 * capital sigma (context-dependent). out needs room for 2n. Returns its length. */
static size_t s_lower(const uint32_t *w, size_t n, uint32_t *out)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (w[i] == 0x130) {
            out[k++] = 'i';
            out[k++] = 0x307;
        } else if (w[i] == 0x3A3) {
            out[k++] = s_final_sigma(w, n, i) ? 0x3C2 : 0x3C3;
        } else {
            out[k++] = (uint32_t)utf8proc_tolower((utf8proc_int32_t)w[i]);
        }
    }
    return k;
}

/* ------------------------------------------------------------------ scratch buffers */

/* Growable arrays reused across the pieces of one sd_tokenize call. */
typedef struct {
    uint32_t *cp; /* clean-up output */
    size_t cp_cap;
    char *u8; /* UTF-8 for NFC; later the byte-encoded BPE word */
    size_t u8_cap;
    utf8proc_int32_t *nfc;
    size_t nfc_cap;
    uint32_t *low; /* one lowercased word */
    size_t low_cap;
    int *sym; /* BPE symbols: start, end, prev, next (4 per symbol) */
    size_t sym_cap;
    int64_t *heap; /* (rank << 32) | symbol */
    size_t heap_cap, heap_n;
    int *batch;
    size_t batch_cap;
    /* output */
    int32_t *ids; /* token ids, without BOS/EOS */
    size_t n_ids, ids_cap;
    char *text; /* token strings, NUL-separated */
    size_t text_len, text_cap;
} s_work_t;

static int s_grow(void *pp, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap) return BT_OK;
    size_t c = *cap ? *cap : 64;
    while (c < need) {
        if (c > SIZE_MAX / 2 / elem) return BT_ENOMEM;
        c *= 2;
    }
    void *p = bt_realloc(*(void **)pp, c * elem);
    if (!p) return BT_ENOMEM;
    *(void **)pp = p;
    *cap = c;
    return BT_OK;
}

static void s_work_free(s_work_t *w)
{
    free(w->cp);
    free(w->u8);
    free(w->nfc);
    free(w->low);
    free(w->sym);
    free(w->heap);
    free(w->batch);
    free(w->ids);
    free(w->text);
}

static int s_emit(s_work_t *w, const char *tok, size_t n, int32_t id)
{
    if (s_grow(&w->ids, &w->ids_cap, w->n_ids + 1, sizeof *w->ids) ||
        s_grow(&w->text, &w->text_cap, w->text_len + n + 1, 1))
        return BT_ENOMEM;
    w->ids[w->n_ids++] = id;
    memcpy(w->text + w->text_len, tok, n);
    w->text[w->text_len + n] = '\0';
    w->text_len += n + 1;
    return BT_OK;
}

/* ------------------------------------------------------------------ BPE */

static void s_heap_push(s_work_t *w, int64_t v)
{
    int64_t *h = w->heap;
    size_t i = w->heap_n++;
    while (i > 0 && h[(i - 1) / 2] > v) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = v;
}

static int64_t s_heap_pop(s_work_t *w)
{
    int64_t *h = w->heap, top = h[0], v = h[--w->heap_n];
    size_t i = 0, n = w->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && h[c + 1] < h[c]) c++;
        if (h[c] >= v) break;
        h[i] = h[c];
        i = c;
    }
    if (n) h[i] = v;
    return top;
}

static int s_cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

#define S_START(i) sym[4 * (i)]
#define S_END(i) sym[4 * (i) + 1]
#define S_PREV(i) sym[4 * (i) + 2]
#define S_NEXT(i) sym[4 * (i) + 3]

/* Rank of the pair starting at symbol i (INT32_MAX if none). */
static int32_t s_pair_rank(const sd_tokenizer_t *t, const char *s, const int *sym, int i)
{
    int j = S_NEXT(i);
    if (j < 0) return INT32_MAX;
    return s_merge_rank(t, s + S_START(i), (size_t)(S_END(i) - S_START(i)), s + S_START(j),
                        (size_t)(S_END(j) - S_START(j)));
}

static void s_push_pair(const sd_tokenizer_t *t, s_work_t *w, const char *s, int i)
{
    int32_t r = s_pair_rank(t, s, w->sym, i);
    if (r != INT32_MAX) s_heap_push(w, ((int64_t)r << 32) | (uint32_t)i);
}

/* CLIPTokenizer.bpe() on w->u8[0..n) (one pre-split piece, byte-encoded, followed by
 * "</w>" at n..n+4): emits each resulting token with its id. */
static int s_bpe(const sd_tokenizer_t *t, s_work_t *w, size_t n)
{
    const char *s = w->u8;
    /* initial symbols: one per byte-encoded character (1 or 2 UTF-8 bytes) */
    int ns = 0;
    if (s_grow(&w->sym, &w->sym_cap, 4 * (n + 1), sizeof *w->sym)) return BT_ENOMEM;
    int *sym = w->sym;
    for (size_t i = 0; i < n;) {
        size_t k = ((unsigned char)s[i] & 0x80) ? 2 : 1;
        S_START(ns) = (int)i;
        S_END(ns) = (int)(i + k);
        S_PREV(ns) = ns - 1;
        S_NEXT(ns) = ns + 1;
        ns++;
        i += k;
    }
    S_END(ns - 1) += 4; /* the last symbol carries "</w>" */
    S_NEXT(ns - 1) = -1;

    if (s_grow(&w->heap, &w->heap_cap, 3 * (size_t)ns, sizeof *w->heap) ||
        s_grow(&w->batch, &w->batch_cap, 3 * (size_t)ns, sizeof *w->batch))
        return BT_ENOMEM;
    w->heap_n = 0;
    for (int i = 0; i + 1 < ns; i++) s_push_pair(t, w, s, i);

    /* Python merges all occurrences of the lowest-ranked pair, left to right, then
     * recomputes the pairs. Here: pop every entry of the lowest rank, sort by position,
     * and merge those still valid (stale entries — a symbol merged away, a neighbour
     * changed — fail the rank check). Pairs a merge creates never have the same rank
     * (they are longer strings), so they wait for a later round, as in Python. */
    while (w->heap_n) {
        int32_t r = (int32_t)(w->heap[0] >> 32);
        size_t nb = 0;
        while (w->heap_n && (int32_t)(w->heap[0] >> 32) == r) w->batch[nb++] = (int)(s_heap_pop(w) & 0xffffffff);
        qsort(w->batch, nb, sizeof *w->batch, s_cmp_int);
        for (size_t b = 0; b < nb; b++) {
            int i = w->batch[b];
            if (b && i == w->batch[b - 1]) continue;
            if (S_START(i) < 0 || s_pair_rank(t, s, sym, i) != r) continue;
            int j = S_NEXT(i);
            S_END(i) = S_END(j);
            S_NEXT(i) = S_NEXT(j);
            if (S_NEXT(j) >= 0) S_PREV(S_NEXT(j)) = i;
            S_START(j) = -1; /* merged away */
            if (S_PREV(i) >= 0) s_push_pair(t, w, s, S_PREV(i));
            s_push_pair(t, w, s, i);
        }
    }
    for (int i = 0; i >= 0; i = S_NEXT(i)) {
        size_t len = (size_t)(S_END(i) - S_START(i));
        int32_t id = s_vocab_get(t, s + S_START(i), len);
        if (s_emit(w, s + S_START(i), len, id >= 0 ? id : t->ids[S_UNK])) return BT_ENOMEM;
    }
    return BT_OK;
}

#undef S_START
#undef S_END
#undef S_PREV
#undef S_NEXT

/* ------------------------------------------------------------------ pre-split */

/* The `regex` module's IGNORECASE equality of a code point with a lowercase ASCII
 * letter: its case variants plus the two non-ASCII characters whose simple case fold
 * is ASCII (U+017F long s, U+212A Kelvin sign). */
static bool s_ci_eq(uint32_t cp, char c)
{
    if (cp == (uint32_t)c) return true;
    if (c >= 'a' && c <= 'z' && cp == (uint32_t)(c - 'a' + 'A')) return true;
    return (c == 's' && cp == 0x17F) || (c == 'k' && cp == 0x212A);
}

/* Length of a case-insensitive match of ASCII pattern p at w[i..n), or 0. */
static size_t s_match_ci(const uint32_t *w, size_t n, size_t i, const char *p)
{
    size_t k = 0;
    for (; p[k]; k++)
        if (i + k >= n || !s_ci_eq(w[i + k], p[k])) return 0;
    return k;
}

/* U+0345 (a combining mark whose case variants are the letter iota) matches none of
 * the classes under the `regex` module's IGNORECASE: not [\p{L}] (its own category is
 * Mn) and not [^\s\p{L}\p{N}] (a case variant is a letter). Python skips it like a
 * space; it is the only such code point. */
#define S_UNMATCHED 0x345

/* Length of the regex match at w[i] (w holds no whitespace), 0 when nothing matches:
 * <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+ */
static size_t s_piece_len(const uint32_t *w, size_t n, size_t i)
{
    if (w[i] == S_UNMATCHED) return 0;
    static const char *const lit[] = {"<|startoftext|>", "<|endoftext|>", "'s", "'t", "'re", "'ve", "'m", "'ll",
                                      "'d"};
    if (w[i] == '<' || w[i] == '\'')
        for (size_t k = 0; k < sizeof lit / sizeof lit[0]; k++) {
            size_t m = s_match_ci(w, n, i, lit[k]);
            if (m) return m;
        }
    size_t j = i;
    if (s_is_letter(w[i])) {
        while (j < n && s_is_letter(w[j])) j++;
        return j - i;
    }
    if (s_is_number(w[i])) return 1;
    while (j < n && !s_is_letter(w[j]) && !s_is_number(w[j]) && !s_is_py_space(w[j]) && w[j] != S_UNMATCHED) j++;
    return j - i;
}

/* One regex piece: UTF-8 bytes -> byte alphabet -> BPE (or a literal special). */
static int s_piece(const sd_tokenizer_t *t, s_work_t *w, const uint32_t *p, size_t n)
{
    if (s_grow(&w->u8, &w->u8_cap, 8 * n + 8, 1)) return BT_ENOMEM;
    char bytes[4];
    size_t len = 0;
    for (size_t i = 0; i < n; i++) {
        size_t nb = s_utf8_put(bytes, p[i]);
        for (size_t b = 0; b < nb; b++) {
            unsigned char c = (unsigned char)bytes[b];
            memcpy(w->u8 + len, t->byte_utf8[c], t->byte_utf8_len[c]);
            len += t->byte_utf8_len[c];
        }
    }
    /* CLIPTokenizer.bpe's cache starts with these two, mapped to themselves (no </w>) */
    static const char *const cached[] = {"<|startoftext|>", "<|endoftext|>"};
    for (int k = 0; k < 2; k++)
        if (len == strlen(cached[k]) && !memcmp(w->u8, cached[k], len)) {
            int32_t id = s_vocab_get(t, w->u8, len);
            return s_emit(w, w->u8, len, id >= 0 ? id : t->ids[S_UNK]);
        }
    memcpy(w->u8 + len, "</w>", 5);
    return s_bpe(t, w, len);
}

/* Steps 2-4 for text between special tokens. */
static int s_text(const sd_tokenizer_t *t, s_work_t *w, const uint32_t *in, size_t n)
{
    /* clean-up, CJK spacing */
    if (s_grow(&w->cp, &w->cp_cap, 3 * n + 1, sizeof *w->cp)) return BT_ENOMEM;
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t c = in[i];
        if (c == 0 || c == 0xFFFD || s_is_control(c)) continue;
        if (s_is_bert_space(c)) {
            w->cp[m++] = ' ';
        } else if (s_is_cjk(c)) {
            w->cp[m++] = ' ';
            w->cp[m++] = c;
            w->cp[m++] = ' ';
        } else {
            w->cp[m++] = c;
        }
    }
    if (m == 0) return BT_OK;

    /* NFC, through utf8proc's UTF-8 interface */
    if (s_grow(&w->u8, &w->u8_cap, 4 * m + 1, 1)) return BT_ENOMEM;
    size_t len = 0;
    for (size_t i = 0; i < m; i++) len += s_utf8_put(w->u8 + len, w->cp[i]);
    utf8proc_option_t opt = UTF8PROC_STABLE | UTF8PROC_COMPOSE;
    utf8proc_ssize_t nn;
    for (;;) {
        nn = utf8proc_decompose((const utf8proc_uint8_t *)w->u8, (utf8proc_ssize_t)len, w->nfc,
                                (utf8proc_ssize_t)w->nfc_cap, opt);
        if (nn < 0) {
            BT_ERROR("tokenizer: NFC normalisation failed: %s", utf8proc_errmsg(nn));
            return BT_EINTERNAL;
        }
        if ((size_t)nn <= w->nfc_cap) break;
        if (s_grow(&w->nfc, &w->nfc_cap, (size_t)nn, sizeof *w->nfc)) return BT_ENOMEM;
    }
    nn = utf8proc_normalize_utf32(w->nfc, nn, opt);
    if (nn < 0) {
        BT_ERROR("tokenizer: NFC normalisation failed: %s", utf8proc_errmsg(nn));
        return BT_EINTERNAL;
    }

    /* whitespace split, lowercase each word, regex pre-split, BPE */
    const uint32_t *c = (const uint32_t *)w->nfc;
    size_t nc = (size_t)nn;
    if (s_grow(&w->low, &w->low_cap, 2 * nc + 1, sizeof *w->low)) return BT_ENOMEM;
    for (size_t i = 0; i < nc;) {
        if (s_is_py_space(c[i])) {
            i++;
            continue;
        }
        size_t j = i;
        while (j < nc && !s_is_py_space(c[j])) j++;
        size_t nl = s_lower(c + i, j - i, w->low);
        for (size_t k = 0; k < nl;) {
            size_t pl = s_piece_len(w->low, nl, k);
            if (pl == 0) {
                k++; /* findall moves on one character */
                continue;
            }
            int rc = s_piece(t, w, w->low + k, pl);
            if (rc) return rc;
            k += pl;
        }
        i = j;
    }
    return BT_OK;
}

void sd_tok_result_free(sd_tok_result_t *r)
{
    if (!r) return;
    free(r->input_ids);
    free(r->attention_mask);
    free(r->ids);
    free(r->tokens);
    free(r->token_text);
    memset(r, 0, sizeof *r);
}

/* Step 1: the next special-token string at or after in[i] (leftmost; of several
 * starting there, the longest, as the list is sorted). Returns its index or -1. */
static int s_find_special(const sd_tokenizer_t *t, const uint32_t *in, size_t n, size_t *i)
{
    for (; *i < n; (*i)++)
        for (int k = 0; k < t->n_special; k++) {
            size_t sn = (size_t)t->special_ncp[k];
            if (*i + sn <= n && !memcmp(in + *i, t->special_cp[k], sn * sizeof *in)) return k;
        }
    return -1;
}

int sd_tokenize(const sd_tokenizer_t *t, const char *utf8, sd_tok_result_t *out)
{
    memset(out, 0, sizeof *out);
    if (!t || !utf8) {
        BT_ERROR("sd_tokenize: %s is NULL", t ? "the text" : "the tokenizer");
        return BT_EINVAL;
    }
    s_work_t w = {0};
    sd_tok_result_t r = {0};
    uint32_t *in = NULL;
    int rc = BT_ENOMEM;

    /* decode; invalid bytes become U+FFFD */
    size_t len = strlen(utf8), n = 0;
    if (len >= SIZE_MAX / sizeof *in || !(in = bt_malloc((len + 1) * sizeof *in))) goto out_free;
    for (size_t i = 0; i < len;) i += s_utf8_next(utf8 + i, len - i, &in[n++]);

    size_t start = 0, i = 0;
    for (;;) {
        int k = s_find_special(t, in, n, &i);
        if ((rc = s_text(t, &w, in + start, i - start))) goto out_free;
        if (k < 0) break;
        /* a special string stands for its id; its token string is itself */
        rc = BT_ENOMEM;
        size_t sn = (size_t)t->special_ncp[k], sl = 0;
        if (s_grow(&w.u8, &w.u8_cap, 4 * sn + 1, 1)) goto out_free;
        for (size_t c = 0; c < sn; c++) sl += s_utf8_put(w.u8 + sl, t->special_cp[k][c]);
        if ((rc = s_emit(&w, w.u8, sl, t->special_id[k]))) goto out_free;
        i += sn;
        start = i;
    }

    /* step 5: BOS + ids[:L-2] + EOS, padded */
    rc = BT_ENOMEM;
    if (w.n_ids > (size_t)INT_MAX - 2) goto out_free;
    int nt = (int)w.n_ids, L = t->max_length, keep = nt < L - 2 ? nt : L - 2;
    r.max_length = L;
    r.n_tokens = nt;
    r.n_ids = nt + 2;
    r.truncated = nt > L - 2;
    r.input_ids = bt_malloc((size_t)L * sizeof *r.input_ids);
    r.attention_mask = bt_malloc((size_t)L * sizeof *r.attention_mask);
    r.ids = bt_malloc((size_t)(nt + 2) * sizeof *r.ids);
    r.tokens = bt_malloc((size_t)(nt + 1) * sizeof *r.tokens);
    if (!r.input_ids || !r.attention_mask || !r.ids || !r.tokens) goto out_free;
    r.ids[0] = t->ids[S_BOS];
    if (nt) memcpy(r.ids + 1, w.ids, (size_t)nt * sizeof *w.ids);
    r.ids[nt + 1] = t->ids[S_EOS];
    for (int p = 0; p < L; p++) {
        r.input_ids[p] = p <= keep ? r.ids[p] : p == keep + 1 ? t->ids[S_EOS] : t->ids[S_PAD];
        r.attention_mask[p] = p <= keep + 1;
    }
    r.token_text = w.text; /* handed over */
    w.text = NULL;
    char *p = r.token_text;
    for (int k = 0; k < nt; k++) {
        r.tokens[k] = p;
        p += strlen(p) + 1;
    }
    r.tokens[nt] = NULL;
    *out = r;
    rc = BT_OK;

out_free:
    if (rc) {
        if (rc == BT_ENOMEM) BT_ERROR("tokenizer: out of memory (input of %zu bytes)", len);
        sd_tok_result_free(&r);
    }
    s_work_free(&w);
    free(in);
    return rc;
}

/* ------------------------------------------------------------------ loading */

static void s_byte_alphabet(sd_tokenizer_t *t)
{
    /* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the
     * other 68 are numbered from U+0100 in byte order. */
    int extra = 0;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        uint32_t cp = printable ? (uint32_t)b : (uint32_t)(256 + extra++);
        t->byte_utf8_len[b] = (uint8_t)s_utf8_put(t->byte_utf8[b], cp);
    }
}

/* Is s (n bytes) one byte-alphabet character, optionally followed by "</w>"? Such
 * vocab entries are the base symbols that need no merge. */
static bool s_is_base_symbol(const char *s, size_t n)
{
    if (n > 4 && !memcmp(s + n - 4, "</w>", 4)) n -= 4;
    uint32_t cp;
    if (n == 0 || s_utf8_next(s, n, &cp) != n) return false;
    return (cp >= '!' && cp <= '~') || (cp >= 0xA1 && cp <= 0xAC) || (cp >= 0xAE && cp <= 0x143);
}

/* bt_read_file, plus the log line it leaves out for a failed allocation. */
static int s_read(const char *path, char **data, size_t *len)
{
    int rc = bt_read_file(path, data, len);
    if (rc == BT_ENOMEM) BT_ERROR("%s: out of memory reading the file", path);
    return rc;
}

/* The vocabulary object {"token": id, ...} of vocab.json or of tokenizer.json's
 * model.vocab; name is the file for messages. */
static int s_vocab_from_json(sd_tokenizer_t *t, const cJSON *obj, const char *name, int *n_need_merge)
{
    int n = cJSON_GetArraySize(obj);
    if (n <= 0) {
        BT_ERROR("%s: the vocabulary is empty", name);
        return BT_EFORMAT;
    }
    if (s_map_init(&t->vocab, (size_t)n)) {
        BT_ERROR("%s: out of memory for %d tokens", name, n);
        return BT_ENOMEM;
    }
    *n_need_merge = 0;
    for (const cJSON *it = obj->child; it; it = it->next) {
        double v = it->valuedouble;
        if (!cJSON_IsNumber(it) || !(v >= 0 && v <= INT32_MAX - 1) || v != floor(v)) {
            if (cJSON_IsNumber(it))
                BT_ERROR("%s: token '%.40s' has id %.15g, expected an integer in [0, 2^31-2]", name, it->string, v);
            else
                BT_ERROR("%s: token '%.40s' has no valid id (expected an integer in [0, 2^31-2], not %s)", name,
                         it->string, bt_json_type_name(it));
            return BT_EFORMAT;
        }
        size_t sl = strlen(it->string);
        int before = t->vocab.n;
        if (s_vocab_put(t, it->string, sl, (int32_t)v)) {
            BT_ERROR("%s: out of memory", name);
            return BT_ENOMEM;
        }
        if (t->vocab.n > before && !s_is_base_symbol(it->string, sl)) (*n_need_merge)++;
    }
    return BT_OK;
}

/* Python's str.split() separators that can occur in merges.txt (the byte alphabet
 * has no whitespace, so non-ASCII separators never appear in a valid file). */
static bool s_is_ascii_space(char c) { return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1C && c <= 0x1F); }

/* merges.txt's text (data[0..len), path for messages). */
static int s_merges_from_text(sd_tokenizer_t *t, const char *data, size_t len, const char *path, int *n_merges)
{
    /* Python: read().strip().split("\n")[1:48895], each line split on whitespace */
    size_t a = 0, b = len;
    while (a < b && s_is_ascii_space(data[a])) a++;
    while (b > a && s_is_ascii_space(data[b - 1])) b--;
    if (a == b) {
        BT_ERROR("%s: the file is empty", path);
        return BT_EFORMAT;
    }
    size_t lines = 1;
    for (size_t i = a; i < b; i++) lines += data[i] == '\n';
    if (s_map_init(&t->merges, lines < S_MERGES_END ? lines : S_MERGES_END)) {
        BT_ERROR("%s: out of memory", path);
        return BT_ENOMEM;
    }
    int lineno = 1; /* in the file, for messages */
    for (size_t i = 0; i < a; i++) lineno += data[i] == '\n';
    *n_merges = 0;
    size_t p = a;
    for (int line = 0; p <= b && line < S_MERGES_END; line++, lineno++) {
        size_t e = p;
        while (e < b && data[e] != '\n') e++;
        if (line > 0) {
            /* fields: at most 3 counted, 2 kept */
            size_t fs[2] = {0}, fe[2] = {0};
            int nf = 0;
            for (size_t i = p; i < e && nf < 3;) {
                while (i < e && s_is_ascii_space(data[i])) i++;
                if (i == e) break;
                size_t j = i;
                while (j < e && !s_is_ascii_space(data[j])) j++;
                if (nf < 2) {
                    fs[nf] = i;
                    fe[nf] = j;
                }
                nf++;
                i = j;
            }
            if (nf == 2) {
                if (s_merge_put(t, data + fs[0], fe[0] - fs[0], data + fs[1], fe[1] - fs[1], line - 1)) {
                    BT_ERROR("%s: out of memory", path);
                    return BT_ENOMEM;
                }
                (*n_merges)++;
            } else if (nf != 0) {
                BT_ERROR("%s:%d: expected two symbols separated by a space, found %s", path, lineno,
                         nf == 1 ? "one (file truncated?)" : "more");
                return BT_EFORMAT;
            }
        }
        p = e + 1;
    }
    return BT_OK;
}

/* tokenizer.json's model.merges: "a b" strings (tokenizers < 0.20) or ["a", "b"]
 * pairs. There is no "#version" line; rank i is entry i, and as with merges.txt
 * only the first S_MERGES_END - 1 count (CLIP has exactly that many). */
static int s_merges_from_json(sd_tokenizer_t *t, const cJSON *arr, const char *path, int *n_merges)
{
    int n = cJSON_GetArraySize(arr);
    if (n > S_MERGES_END - 1) n = S_MERGES_END - 1;
    if (s_map_init(&t->merges, n > 0 ? (size_t)n : 1)) {
        BT_ERROR("%s: out of memory", path);
        return BT_ENOMEM;
    }
    *n_merges = 0;
    const cJSON *it = arr->child;
    for (int i = 0; i < n; i++, it = it->next) {
        const char *a = NULL, *b = NULL;
        size_t na = 0, nb = 0;
        if (cJSON_IsString(it)) {
            const char *sp = strchr(it->valuestring, ' ');
            if (sp && sp != it->valuestring && sp[1] && !strchr(sp + 1, ' ')) {
                a = it->valuestring;
                na = (size_t)(sp - a);
                b = sp + 1;
                nb = strlen(b);
            }
        } else if (cJSON_IsArray(it) && cJSON_GetArraySize(it) == 2 && cJSON_IsString(it->child) &&
                   cJSON_IsString(it->child->next) && it->child->valuestring[0] && it->child->next->valuestring[0]) {
            a = it->child->valuestring;
            na = strlen(a);
            b = it->child->next->valuestring;
            nb = strlen(b);
        }
        if (!a) {
            BT_ERROR("%s: model.merges[%d] is not a merge (\"a b\" or [\"a\", \"b\"]), but %s", path, i,
                     cJSON_IsString(it) ? "a string without exactly one inner space" : bt_json_type_name(it));
            return BT_EFORMAT;
        }
        if (s_merge_put(t, a, na, b, nb, i)) {
            BT_ERROR("%s: out of memory", path);
            return BT_ENOMEM;
        }
        (*n_merges)++;
    }
    return BT_OK;
}

/* A special-token value: "str" or {"content": "str", ...}; null/absent keeps *out. */
static int s_special_value(const bt_json_t *j, const char *key, const char **out)
{
    const cJSON *v = bt_json_get(j, key);
    if (!v) return BT_OK;
    const cJSON *s = cJSON_IsObject(v) ? cJSON_GetObjectItemCaseSensitive(v, "content") : v;
    if (!cJSON_IsString(s) || !s->valuestring[0]) {
        const char *was = cJSON_IsString(s)   ? "an empty string"
                          : cJSON_IsObject(v) ? "an object without a \"content\" string"
                                              : bt_json_type_name(v);
        bt_json_error(j, key, "must be a non-empty string or an object with a \"content\" string, not %s", was);
        return BT_EFORMAT;
    }
    *out = s->valuestring;
    return BT_OK;
}

/* Parses an optional JSON object file: j->root NULL when the file does not exist. */
static int s_load_optional_json(const char *path, bt_json_t *j)
{
    memset(j, 0, sizeof *j);
    struct stat st;
    if (stat(path, &st) != 0 && errno == ENOENT) return BT_OK;
    return bt_json_open(j, path);
}

static char *s_join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = bt_malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

/* tokenizer_config.json (model_max_length, specials), then special_tokens_map.json,
 * which wins for the specials as in transformers' from_pretrained. dir NULL: no
 * files (the built-in vocabulary). vocab_path names the vocabulary in messages;
 * fast_added is tokenizer.json's added_tokens (or NULL); pad, if not NULL,
 * replaces the pad token. */
static int s_load_config(sd_tokenizer_t *t, const char *dir, const char *vocab_path, const cJSON *fast_added,
                         const char *pad)
{
    char *cfg_path = dir ? s_join(dir, "tokenizer_config.json") : NULL;
    char *map_path = dir ? s_join(dir, "special_tokens_map.json") : NULL;
    bt_json_t cfg = {0}, map = {0}; /* root NULL: the file does not exist, every key reads as absent */
    const char *special[S_NSPECIAL], *from[S_NSPECIAL];
    int rc = BT_ENOMEM;
    if (dir && (!cfg_path || !map_path)) {
        BT_ERROR("%s: out of memory loading the tokenizer", dir);
        goto out_free;
    }
    if (dir && ((rc = s_load_optional_json(cfg_path, &cfg)) || (rc = s_load_optional_json(map_path, &map))))
        goto out_free;

    double ml;
    if ((rc = bt_json_double(&cfg, "model_max_length", 77, 3, INFINITY, &ml))) goto out_free;
    if (ml != floor(ml)) {
        bt_json_error(&cfg, "model_max_length", "must be an integer, not %.15g", ml);
        rc = BT_EFORMAT;
        goto out_free;
    }
    t->max_length = 77;
    if (ml > S_MAX_LENGTH_LIMIT)
        BT_WARN("%s: model_max_length %.0f means \"unset\"; using 77", cfg_path, ml);
    else
        t->max_length = (int)ml;
    for (int k = 0; k < S_NSPECIAL; k++) {
        special[k] = s_special_defaults[k];
        from[k] = NULL;
        const char *before = special[k];
        if ((rc = s_special_value(&cfg, s_special_keys[k], &special[k]))) goto out_free;
        if (special[k] != before) from[k] = cfg_path;
        before = special[k];
        if ((rc = s_special_value(&map, s_special_keys[k], &special[k]))) goto out_free;
        if (special[k] != before) from[k] = map_path;
    }
    if (pad) special[S_PAD] = pad;

    /* Added tokens beyond the four specials (textual-inversion words saved by newer
     * transformers) would also be split out by transformers; they are not supported. */
    const cJSON *added = bt_json_get(&cfg, "added_tokens_decoder");
    for (const cJSON *a = cJSON_IsObject(added) ? added->child : NULL; a; a = a->next) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(a, "content");
        bool known = false;
        for (int k = 0; k < S_NSPECIAL && cJSON_IsString(c); k++) known |= !strcmp(c->valuestring, special[k]);
        if (!known)
            BT_WARN("%s: added token %s is not supported; it is tokenized as ordinary text", cfg_path,
                    cJSON_IsString(c) ? c->valuestring : a->string);
    }
    /* tokenizer.json lists the same in its added_tokens (transformers 5 writes only those) */
    for (const cJSON *a = cJSON_IsArray(fast_added) ? fast_added->child : NULL; a; a = a->next) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(a, "content");
        bool known = false;
        for (int k = 0; k < S_NSPECIAL && cJSON_IsString(c); k++) known |= !strcmp(c->valuestring, special[k]);
        if (!known && cJSON_IsString(c))
            BT_WARN("%s: added token %s is not supported; it is tokenized as ordinary text", vocab_path,
                    c->valuestring);
    }

    char *added_path = dir ? s_join(dir, "added_tokens.json") : NULL;
    struct stat st;
    if (added_path && stat(added_path, &st) == 0)
        BT_WARN("%s: added tokens are not supported; they are tokenized as ordinary text", added_path);
    free(added_path);

    /* ids from the vocabulary; the distinct strings become the split list */
    rc = BT_EFORMAT;
    for (int k = 0; k < S_NSPECIAL; k++) {
        t->ids[k] = s_vocab_get(t, special[k], strlen(special[k]));
        if (t->ids[k] < 0) {
            if (from[k])
                BT_ERROR("%s: %s '%s' is not in %s", from[k], s_special_keys[k], special[k], vocab_path);
            else
                BT_ERROR("%s: has no '%s' (the %s %s)", vocab_path, special[k], pad ? "given" : "default",
                         s_special_keys[k]);
            goto out_free;
        }
        bool dup = false;
        for (int j = 0; j < k; j++) dup |= !strcmp(special[j], special[k]);
        if (dup) continue;
        size_t sl = strlen(special[k]), ncp = 0;
        uint32_t *cp = bt_malloc((sl + 1) * sizeof *cp);
        if (!cp) {
            BT_ERROR("%s: out of memory loading the tokenizer", dir);
            rc = BT_ENOMEM;
            goto out_free;
        }
        for (size_t i = 0; i < sl;) i += s_utf8_next(special[k] + i, sl - i, &cp[ncp++]);
        /* insert sorted, longest first: of two specials starting at one place the longer wins */
        int s = t->n_special++;
        for (; s > 0 && t->special_ncp[s - 1] < (int)ncp; s--) {
            t->special_cp[s] = t->special_cp[s - 1];
            t->special_ncp[s] = t->special_ncp[s - 1];
            t->special_id[s] = t->special_id[s - 1];
        }
        t->special_cp[s] = cp;
        t->special_ncp[s] = (int)ncp;
        t->special_id[s] = t->ids[k];
    }
    rc = BT_OK;
out_free:
    bt_json_free(&cfg);
    bt_json_free(&map);
    free(cfg_path);
    free(map_path);
    return rc;
}

/* CLIP's vocabulary is the 512 base symbols, one token per merge, and the specials:
 * merges cut short (at a line boundary) leave tokens no merge can make. */
static int s_check_merges(const sd_tokenizer_t *t, int n_need, int n_merges, const char *merges_name,
                          const char *vocab_name)
{
    int n_special_tokens = 0;
    for (int k = 0; k < t->n_special; k++) {
        char buf[16];
        size_t sl = 0;
        for (int i = 0; i < t->special_ncp[k] && i < 2; i++) sl += s_utf8_put(buf + sl, t->special_cp[k][i]);
        if (t->special_ncp[k] > 1 || !s_is_base_symbol(buf, sl)) n_special_tokens++;
    }
    if (n_merges < n_need - n_special_tokens) {
        BT_ERROR("%s: %d merges, but %s has %d tokens that need one (file truncated?)", merges_name, n_merges,
                 vocab_name, n_need - n_special_tokens);
        return BT_EFORMAT;
    }
    return BT_OK;
}

/* vocab.json + merges.txt (transformers 4 and every SD snapshot before it). */
static int s_load_slow(sd_tokenizer_t *t, const char *dir)
{
    char *vocab_path = s_join(dir, "vocab.json"), *merges_path = s_join(dir, "merges.txt");
    char *data = NULL;
    size_t len = 0;
    bt_json_t j = {0};
    int n_need = 0, n_merges = 0, rc = BT_ENOMEM;
    if (!vocab_path || !merges_path) {
        BT_ERROR("%s: out of memory loading the tokenizer", dir);
        goto out_free;
    }
    if ((rc = bt_json_open(&j, vocab_path)) || (rc = s_vocab_from_json(t, j.root, vocab_path, &n_need))) goto out_free;
    bt_json_free(&j);
    if ((rc = s_read(merges_path, &data, &len)) || (rc = s_merges_from_text(t, data, len, merges_path, &n_merges)) ||
        (rc = s_load_config(t, dir, vocab_path, NULL, NULL)))
        goto out_free;
    rc = s_check_merges(t, n_need, n_merges, merges_path, "vocab.json");
out_free:
    bt_json_free(&j);
    free(data);
    free(vocab_path);
    free(merges_path);
    return rc;
}

/* tokenizer.json, the fast tokenizer's one file (transformers 5 writes only this
 * and tokenizer_config.json): the same vocabulary and merges under "model", the
 * specials in "added_tokens". Its normalizer and pre-tokenizer describe CLIP's
 * clean-up and split, which booth implements as the slow tokenizer does them; a
 * model other than CLIP's byte-level BPE with "</w>" word ends is refused. */
static int s_load_fast(sd_tokenizer_t *t, const char *dir, const char *path)
{
    bt_json_t j = {0};
    int n_need = 0, n_merges = 0;
    int rc = bt_json_open(&j, path);
    if (rc) return rc;
    rc = BT_EFORMAT;
    const cJSON *model = bt_json_get(&j, "model");
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(model, "type");
    const cJSON *eow = cJSON_GetObjectItemCaseSensitive(model, "end_of_word_suffix");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (!cJSON_IsObject(model)) {
        bt_json_error(&j, "model", "must be an object (the BPE model), not %s", model ? bt_json_type_name(model) : "absent");
    } else if (type && !(cJSON_IsString(type) && !strcmp(type->valuestring, "BPE"))) {
        bt_json_error(&j, "model", "is a %s model; booth reads CLIP's BPE tokenizer",
                      cJSON_IsString(type) ? type->valuestring : "malformed");
    } else if (!cJSON_IsString(eow) || strcmp(eow->valuestring, "</w>")) {
        bt_json_error(&j, "model", "has end_of_word_suffix %s%s%s, CLIP's BPE has \"</w>\" (not a CLIP tokenizer)",
                      cJSON_IsString(eow) ? "\"" : "", cJSON_IsString(eow) ? eow->valuestring : bt_json_type_name(eow),
                      cJSON_IsString(eow) ? "\"" : "");
    } else if (!cJSON_IsObject(vocab) || !cJSON_IsArray(merges)) {
        bt_json_error(&j, "model", "needs a \"vocab\" object and a \"merges\" array");
    } else {
        rc = s_vocab_from_json(t, vocab, path, &n_need);
        if (rc == BT_OK) rc = s_merges_from_json(t, merges, path, &n_merges);
        if (rc == BT_OK) rc = s_load_config(t, dir, path, bt_json_get(&j, "added_tokens"), NULL);
        if (rc == BT_OK) rc = s_check_merges(t, n_need, n_merges, path, "model.vocab");
    }
    bt_json_free(&j);
    return rc;
}

static bool s_exists(const char *dir, const char *name)
{
    char *p = s_join(dir, name);
    struct stat st;
    bool yes = p && stat(p, &st) == 0;
    free(p);
    return yes;
}

sd_tokenizer_t *sd_tokenizer_load(const char *dir)
{
    sd_tokenizer_t *t = bt_calloc(1, sizeof *t);
    if (!t) {
        BT_ERROR("%s: out of memory loading the tokenizer", dir);
        return NULL;
    }
    s_byte_alphabet(t);
    int rc;
    /* vocab.json first: what every loader before transformers 5 reads, and what
     * transformers 4 writes beside tokenizer.json */
    if (s_exists(dir, "vocab.json") || s_exists(dir, "merges.txt")) {
        rc = s_load_slow(t, dir);
    } else if (s_exists(dir, "tokenizer.json")) {
        char *path = s_join(dir, "tokenizer.json");
        rc = path ? s_load_fast(t, dir, path) : BT_ENOMEM;
        if (!path) BT_ERROR("%s: out of memory loading the tokenizer", dir);
        free(path);
    } else {
        BT_ERROR("%s: no tokenizer files (vocab.json and merges.txt, or tokenizer.json)", dir);
        rc = BT_ENOTFOUND;
    }
    if (rc) sd_tokenizer_destroy(&t);
    return t;
}

extern const char sd_clip_vocab_json[], sd_clip_vocab_json_end[];
extern const char sd_clip_merges_txt[], sd_clip_merges_txt_end[];

sd_tokenizer_t *sd_tokenizer_load_builtin(const char *pad_token)
{
    static const char *const vocab_name = "<built-in CLIP vocab.json>", *merges_name = "<built-in CLIP merges.txt>";
    sd_tokenizer_t *t = bt_calloc(1, sizeof *t);
    bt_json_t j = {0};
    int n_need = 0, n_merges = 0;
    int rc = t ? BT_OK : BT_ENOMEM;
    if (!t) BT_ERROR("%s: out of memory loading the tokenizer", vocab_name);
    if (rc == BT_OK) {
        s_byte_alphabet(t);
        rc = bt_json_parse(&j, sd_clip_vocab_json, (size_t)(sd_clip_vocab_json_end - sd_clip_vocab_json), vocab_name);
    }
    if (rc == BT_OK) rc = s_vocab_from_json(t, j.root, vocab_name, &n_need);
    if (rc == BT_OK)
        rc = s_merges_from_text(t, sd_clip_merges_txt, (size_t)(sd_clip_merges_txt_end - sd_clip_merges_txt),
                                merges_name, &n_merges);
    if (rc == BT_OK) rc = s_load_config(t, NULL, vocab_name, NULL, pad_token);
    if (rc == BT_OK) rc = s_check_merges(t, n_need, n_merges, merges_name, vocab_name);
    bt_json_free(&j);
    if (rc) sd_tokenizer_destroy(&t);
    return t;
}

void sd_tokenizer_destroy(sd_tokenizer_t **pt)
{
    if (!pt || !*pt) return;
    sd_tokenizer_t *t = *pt;
    s_map_free(&t->vocab);
    s_map_free(&t->merges);
    free(t->strings);
    for (int k = 0; k < S_NSPECIAL; k++) free(t->special_cp[k]);
    free(t);
    *pt = NULL;
}

int sd_tok_max_length(const sd_tokenizer_t *t) { return t->max_length; }
int32_t sd_tok_bos_id(const sd_tokenizer_t *t) { return t->ids[S_BOS]; }
int32_t sd_tok_eos_id(const sd_tokenizer_t *t) { return t->ids[S_EOS]; }
int32_t sd_tok_pad_id(const sd_tokenizer_t *t) { return t->ids[S_PAD]; }
int32_t sd_tok_unk_id(const sd_tokenizer_t *t) { return t->ids[S_UNK]; }
int sd_tok_vocab_size(const sd_tokenizer_t *t) { return t->vocab.n; }

int32_t sd_tok_token_id(const sd_tokenizer_t *t, const char *token)
{
    return s_vocab_get(t, token, strlen(token));
}
