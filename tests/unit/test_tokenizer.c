/*
 * test_tokenizer.c — the CLIP tokenizer against transformers' slow CLIPTokenizer.
 *
 * tests/fixtures/tokenizer.json holds the reference output (ftfy-free path) for 32
 * prompts: every case must match exactly in input_ids, attention_mask, the
 * untruncated ids, the BPE strings and the truncation flag. The rest checks what
 * the fixture cannot: SD 2.x's pad token "!", defaults without config files,
 * literal special tokens, and that corrupt files and invalid UTF-8 give one error
 * line or a deterministic result, never a crash.
 */
#include <cjson/cJSON.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/fileio.h"
#include "common/log.h"
#include "diffusion/tokenizer.h"
#include "testutil.h"

#define TOK_DIR "diffusion/clip_tokenizer"

static int s_nerrors;
static char s_first_error[1024];

static void s_count_sink(bt_log_level_t level, const char *msg, void *user)
{
    if (level != BT_LOG_ERROR) return;
    fprintf(stderr, "    logged: %s\n", msg); /* shown when the test fails */
    if (!s_nerrors++) snprintf(s_first_error, sizeof s_first_error, "%s", msg);
}

static void s_capture_errors(void)
{
    s_nerrors = 0;
    s_first_error[0] = '\0';
    bt_log_set_sink(s_count_sink, NULL);
}

static double s_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* Compares a JSON int array with n ints. */
static bool s_ints_eq(const cJSON *arr, const int32_t *v, int n)
{
    if (!cJSON_IsArray(arr) || cJSON_GetArraySize(arr) != n) return false;
    int i = 0;
    for (const cJSON *e = arr->child; e; e = e->next, i++)
        if (!cJSON_IsNumber(e) || e->valuedouble != v[i]) return false;
    return true;
}

static bool s_strs_eq(const cJSON *arr, char *const *v, int n)
{
    if (!cJSON_IsArray(arr) || cJSON_GetArraySize(arr) != n) return false;
    int i = 0;
    for (const cJSON *e = arr->child; e; e = e->next, i++)
        if (!cJSON_IsString(e) || strcmp(e->valuestring, v[i])) return false;
    return true;
}

/* Tokenizes p and checks the untruncated ids (BOS/EOS included). */
static void s_check_ids(const sd_tokenizer_t *t, const char *p, const int32_t *want, int n)
{
    sd_tok_result_t r;
    int rc = sd_tokenize(t, p, &r);
    CHECKF(rc == 0, "sd_tokenize(\"%s\") = %d", p, rc);
    if (rc) return;
    bool eq = r.n_ids == n && !memcmp(r.ids, want, (size_t)n * sizeof *want);
    CHECKF(eq, "\"%s\": got %d ids (first after BOS: %d), expected %d", p, r.n_ids, r.n_ids > 1 ? r.ids[1] : -1, n);
    sd_tok_result_free(&r);
}

TEST(tokenizer_fixture)
{
    char *data = NULL;
    size_t len = 0;
    REQUIRE(bt_read_file(tu_fixture_path("tokenizer.json"), &data, &len) == 0);
    cJSON *root = cJSON_ParseWithLength(data, len);
    free(data);
    REQUIRE(root);
    sd_tokenizer_t *t = sd_tokenizer_load(TOK_DIR);
    REQUIRE(t);
    const cJSON *cases = cJSON_GetObjectItemCaseSensitive(root, "cases");
    CHECK_INT_EQ(sd_tok_max_length(t), cJSON_GetObjectItemCaseSensitive(root, "model_max_length")->valuedouble);
    CHECK_INT_EQ(sd_tok_pad_id(t), cJSON_GetObjectItemCaseSensitive(root, "pad_token_id")->valuedouble);
    CHECK_INT_EQ(sd_tok_bos_id(t), cJSON_GetObjectItemCaseSensitive(root, "bos_token_id")->valuedouble);
    CHECK_INT_EQ(sd_tok_eos_id(t), cJSON_GetObjectItemCaseSensitive(root, "eos_token_id")->valuedouble);
    int n = 0;
    for (const cJSON *c = cases ? cases->child : NULL; c; c = c->next, n++) {
        const char *prompt = cJSON_GetObjectItemCaseSensitive(c, "prompt")->valuestring;
        sd_tok_result_t r;
        int rc = sd_tokenize(t, prompt, &r);
        CHECKF(rc == 0, "case %d: sd_tokenize failed", n);
        if (rc) continue;
        const cJSON *tr = cJSON_GetObjectItemCaseSensitive(c, "truncated");
        CHECKF(r.max_length == 77, "case %d: max_length %d", n, r.max_length);
        CHECKF(s_ints_eq(cJSON_GetObjectItemCaseSensitive(c, "input_ids"), r.input_ids, r.max_length),
               "case %d (\"%s\"): input_ids differ", n, prompt);
        CHECKF(s_ints_eq(cJSON_GetObjectItemCaseSensitive(c, "attention_mask"), r.attention_mask, r.max_length),
               "case %d (\"%s\"): attention_mask differs", n, prompt);
        CHECKF(s_ints_eq(cJSON_GetObjectItemCaseSensitive(c, "ids_untruncated"), r.ids, r.n_ids),
               "case %d (\"%s\"): ids_untruncated differ (%d ids)", n, prompt, r.n_ids);
        CHECKF(s_strs_eq(cJSON_GetObjectItemCaseSensitive(c, "bpe_tokens"), r.tokens, r.n_tokens),
               "case %d (\"%s\"): bpe_tokens differ", n, prompt);
        CHECKF(cJSON_IsBool(tr) && cJSON_IsTrue(tr) == r.truncated, "case %d (\"%s\"): truncated is %d", n, prompt,
               r.truncated);
        CHECKF(r.n_ids == cJSON_GetObjectItemCaseSensitive(c, "n_tokens_untruncated")->valuedouble,
               "case %d: n_ids %d", n, r.n_ids);
        CHECK_INT_EQ(r.n_tokens, r.n_ids - 2);
        sd_tok_result_free(&r);
        sd_tok_result_free(&r); /* safe twice */
    }
    CHECKF(n == 32, "fixture has %d cases, expected 32", n);
    sd_tokenizer_destroy(&t);
    sd_tokenizer_destroy(&t); /* safe twice */
    CHECK(t == NULL);
    cJSON_Delete(root);
}

TEST(tokenizer_known_ids)
{
    sd_tokenizer_t *t = sd_tokenizer_load(TOK_DIR);
    REQUIRE(t);
    CHECK_INT_EQ(sd_tok_vocab_size(t), 49408);
    CHECK_INT_EQ(sd_tok_token_id(t, "sks</w>"), 48136);
    CHECK_INT_EQ(sd_tok_token_id(t, "no such token"), -1);
    s_check_ids(t, "a photo of a cat", (const int32_t[]){49406, 320, 1125, 539, 320, 2368, 49407}, 7);
    s_check_ids(t, "sks", (const int32_t[]){49406, 48136, 49407}, 3);
    s_check_ids(t, "", (const int32_t[]){49406, 49407}, 2);
    s_check_ids(t, "hello!!!", (const int32_t[]){49406, 3306, 995, 49407}, 4);
    /* literal specials are split out first; other spellings reach them through the regex */
    s_check_ids(t, "a <|endoftext|> b", (const int32_t[]){49406, 320, 49407, 321, 49407}, 5);
    s_check_ids(t, "x<|startoftext|>y", (const int32_t[]){49406, 343, 49406, 344, 49407}, 5);
    s_check_ids(t, "<|ENDOFTEXT|>", (const int32_t[]){49406, 49407, 49407}, 3);
    /* Python's str.lower(): final sigma and the two-code-point U+0130 */
    s_check_ids(t, "\xce\x9f\xce\x94\xce\x9f\xce\xa3",
                (const int32_t[]){49406, 138, 123, 138, 112, 138, 123, 139, 480, 49407}, 10);
    s_check_ids(t, "\xc4\xb0stanbul", (const int32_t[]){49406, 328, 16384, 11231, 49407}, 5);
    s_check_ids(t, "cafe\xcc\x81", (const int32_t[]){49406, 15304, 49407}, 3); /* NFC */

    sd_tok_result_t r;
    REQUIRE(sd_tokenize(t, "a photo of sks dog", &r) == 0);
    REQUIRE(r.n_tokens == 5);
    CHECK(!strcmp(r.tokens[3], "sks</w>"));
    CHECK(r.tokens[5] == NULL);
    CHECK(!r.truncated);
    CHECK_INT_EQ(r.input_ids[6], 49407);
    CHECK_INT_EQ(r.input_ids[76], 49407);
    CHECK_INT_EQ(r.attention_mask[6], 1);
    CHECK_INT_EQ(r.attention_mask[7], 0);
    sd_tok_result_free(&r);
    sd_tokenizer_destroy(&t);
}

/* "a/b" into buf; false if it does not fit. */
static bool s_path(char *buf, size_t n, const char *a, const char *b)
{
    int k = snprintf(buf, n, "%s/%s", a, b);
    return k >= 0 && (size_t)k < n;
}

/* A tokenizer folder in the test's temp dir: links to the real vocab/merges plus the
 * given config files (NULL: absent). */
static const char *s_make_dir(const char *name, const char *config, const char *special_map)
{
    static char dir[PATH_MAX];
    char path[PATH_MAX], target[PATH_MAX];
    char real[PATH_MAX];
    if (!s_path(dir, sizeof dir, tu_tmpdir(), name) || bt_mkdirs(dir) || !realpath(TOK_DIR, real)) return NULL;
    const char *files[] = {"vocab.json", "merges.txt"};
    for (int i = 0; i < 2; i++)
        if (!s_path(target, sizeof target, real, files[i]) || !s_path(path, sizeof path, dir, files[i]) ||
            symlink(target, path))
            return NULL;
    const char *names[] = {"tokenizer_config.json", "special_tokens_map.json"};
    const char *texts[] = {config, special_map};
    for (int i = 0; i < 2; i++) {
        if (!texts[i]) continue;
        if (!s_path(path, sizeof path, dir, names[i])) return NULL;
        FILE *f = fopen(path, "w");
        if (!f) return NULL;
        fputs(texts[i], f);
        fclose(f);
    }
    return dir;
}

TEST(tokenizer_sd2_pad_token)
{
    /* stabilityai/stable-diffusion-2-1's files: "!" is the pad token in the map
     * (which wins over tokenizer_config.json, as in transformers) */
    const char *dir = s_make_dir(
        "sd2", "{\"model_max_length\": 77, \"pad_token\": \"<|endoftext|>\", \"do_lower_case\": true}",
        "{\"bos_token\": {\"content\": \"<|startoftext|>\", \"lstrip\": false}, \"eos_token\": "
        "{\"content\": \"<|endoftext|>\"}, \"pad_token\": \"!\", \"unk_token\": {\"content\": \"<|endoftext|>\"}}");
    REQUIRE(dir);
    sd_tokenizer_t *t = sd_tokenizer_load(dir);
    REQUIRE(t);
    CHECK_INT_EQ(sd_tok_pad_id(t), 0);
    CHECK_INT_EQ(sd_tok_eos_id(t), 49407);
    sd_tok_result_t r;
    REQUIRE(sd_tokenize(t, "hello!!!", &r) == 0);
    REQUIRE(r.n_tokens == 4);
    CHECK(!strcmp(r.tokens[0], "hello</w>"));
    for (int i = 1; i < 4; i++) CHECKF(!strcmp(r.tokens[i], "!"), "token %d is '%s'", i, r.tokens[i]);
    const int32_t want[] = {49406, 3306, 0, 0, 0, 49407};
    CHECK(r.n_ids == 6 && !memcmp(r.ids, want, sizeof want));
    CHECK(!memcmp(r.input_ids, want, sizeof want));
    for (int i = 6; i < 77; i++) CHECKF(r.input_ids[i] == 0 && r.attention_mask[i] == 0, "position %d", i);
    CHECK_INT_EQ(r.attention_mask[5], 1);
    sd_tok_result_free(&r);
    s_check_ids(t, "wow! a dog", (const int32_t[]){49406, 2781, 0, 320, 1929, 49407}, 6);
    sd_tokenizer_destroy(&t);
}

TEST(tokenizer_defaults_without_config)
{
    const char *dir = s_make_dir("bare", NULL, NULL);
    REQUIRE(dir);
    sd_tokenizer_t *t = sd_tokenizer_load(dir);
    REQUIRE(t);
    CHECK_INT_EQ(sd_tok_max_length(t), 77);
    CHECK_INT_EQ(sd_tok_bos_id(t), 49406);
    CHECK_INT_EQ(sd_tok_eos_id(t), 49407);
    CHECK_INT_EQ(sd_tok_unk_id(t), 49407);
    CHECK_INT_EQ(sd_tok_pad_id(t), 49407);
    sd_tokenizer_destroy(&t);

    /* partial config: another max length, specials default */
    dir = s_make_dir("partial", "{\"model_max_length\": 10}", "{}");
    REQUIRE(dir);
    t = sd_tokenizer_load(dir);
    REQUIRE(t);
    sd_tok_result_t r;
    REQUIRE(sd_tokenize(t, "a a a a a a a a a", &r) == 0);
    CHECK_INT_EQ(r.max_length, 10);
    CHECK(r.truncated);
    CHECK_INT_EQ(r.n_ids, 11);
    CHECK_INT_EQ(r.input_ids[8], 320);
    CHECK_INT_EQ(r.input_ids[9], 49407);
    sd_tok_result_free(&r);
    sd_tokenizer_destroy(&t);
}

/* Writes `text` (n bytes) as name inside a fresh folder that also gets the real
 * vocab/merges unless replaced. Returns the folder. */
static const char *s_corrupt_dir(const char *sub, const char *name, const char *text, size_t n)
{
    static char dir[PATH_MAX];
    char path[PATH_MAX];
    if (!s_path(dir, sizeof dir, tu_tmpdir(), sub) || bt_mkdirs(dir)) return NULL;
    const char *files[] = {"vocab.json", "merges.txt"};
    for (int i = 0; i < 2; i++) {
        if (!strcmp(files[i], name)) continue;
        char src[PATH_MAX];
        char *data = NULL;
        size_t len = 0;
        if (!s_path(src, sizeof src, TOK_DIR, files[i]) || !s_path(path, sizeof path, dir, files[i]) ||
            bt_read_file(src, &data, &len))
            return NULL;
        FILE *f = fopen(path, "wb");
        if (!f) {
            free(data);
            return NULL;
        }
        fwrite(data, 1, len, f);
        fclose(f);
        free(data);
    }
    if (!s_path(path, sizeof path, dir, name)) return NULL;
    FILE *f = fopen(path, "wb");
    if (!f) return NULL;
    fwrite(text, 1, n, f);
    fclose(f);
    return dir;
}

/* Loading dir must fail with exactly one error line that mentions `file`. */
static void s_expect_load_error(const char *what, const char *dir, const char *file)
{
    if (!dir) {
        bt_test_fail(__FILE__, __LINE__, "%s: could not build the test folder", what);
        return;
    }
    s_capture_errors();
    sd_tokenizer_t *t = sd_tokenizer_load(dir);
    bt_log_set_sink(NULL, NULL);
    CHECKF(t == NULL, "%s: loaded anyway", what);
    CHECKF(s_nerrors == 1, "%s: %d error lines (expected 1)", what, s_nerrors);
    CHECKF(strstr(s_first_error, file) != NULL, "%s: error '%s' does not name %s", what, s_first_error, file);
    sd_tokenizer_destroy(&t);
}

TEST(tokenizer_corrupt_files)
{
    char *merges = NULL;
    size_t mlen = 0;
    REQUIRE(bt_read_file(TOK_DIR "/merges.txt", &merges, &mlen) == 0);
    /* cut in the middle: either a one-symbol last line or too few merges */
    s_expect_load_error("half merges.txt", s_corrupt_dir("m_half", "merges.txt", merges, mlen / 2), "merges.txt");
    /* cut at a line boundary: only the count shows it */
    size_t cut = mlen / 3;
    while (cut > 0 && merges[cut - 1] != '\n') cut--;
    s_expect_load_error("merges.txt cut at a line", s_corrupt_dir("m_line", "merges.txt", merges, cut), "merges.txt");
    /* cut inside a line's second symbol... or its first */
    const char *one = "#version: 0.2\ni n\nt";
    s_expect_load_error("one-symbol line", s_corrupt_dir("m_one", "merges.txt", one, strlen(one)), "merges.txt:3");
    const char *three = "#version: 0.2\ni n\nt h e\n";
    s_expect_load_error("three-symbol line", s_corrupt_dir("m_three", "merges.txt", three, strlen(three)),
                        "merges.txt:3");
    s_expect_load_error("empty merges.txt", s_corrupt_dir("m_empty", "merges.txt", "", 0), "merges.txt");
    free(merges);

    const char *notjson = "this is not JSON {";
    s_expect_load_error("vocab not JSON", s_corrupt_dir("v_text", "vocab.json", notjson, strlen(notjson)),
                        "vocab.json");
    s_expect_load_error("vocab truncated", s_corrupt_dir("v_trunc", "vocab.json", "{\"a\": 1, \"b\"", 12),
                        "vocab.json");
    s_expect_load_error("vocab array", s_corrupt_dir("v_arr", "vocab.json", "[1, 2]", 6), "vocab.json");
    s_expect_load_error("vocab string id", s_corrupt_dir("v_str", "vocab.json", "{\"a\": \"1\"}", 10), "vocab.json");
    s_expect_load_error("vocab negative id", s_corrupt_dir("v_neg", "vocab.json", "{\"a\": -1}", 9), "vocab.json");
    s_expect_load_error("vocab fractional id", s_corrupt_dir("v_frac", "vocab.json", "{\"a\": 1.5}", 10),
                        "vocab.json");
    s_expect_load_error("vocab empty object", s_corrupt_dir("v_empty", "vocab.json", "{}", 2), "vocab.json");
    s_expect_load_error("vocab empty file", s_corrupt_dir("v_zero", "vocab.json", "", 0), "vocab.json");
    /* a valid vocabulary without the specials */
    s_expect_load_error("vocab without specials", s_corrupt_dir("v_nospec", "vocab.json", "{\"a\": 0}", 8),
                        "vocab.json");

    s_expect_load_error("missing folder", "/nonexistent/booth/tokenizer", "vocab.json");
    const char *dir = s_make_dir("nomerges", NULL, NULL);
    REQUIRE(dir);
    char path[PATH_MAX];
    REQUIRE(s_path(path, sizeof path, dir, "merges.txt") && unlink(path) == 0);
    s_expect_load_error("missing merges.txt", dir, "merges.txt");

    s_expect_load_error("config not JSON", s_make_dir("c_text", "{\"model_max_length\": ", NULL),
                        "tokenizer_config.json");
    s_expect_load_error("max length too small", s_make_dir("c_len", "{\"model_max_length\": 1}", NULL),
                        "tokenizer_config.json");
    s_expect_load_error("pad not in vocab", s_make_dir("c_pad", NULL, "{\"pad_token\": \"<|pad|>\"}"),
                        "special_tokens_map.json");
    s_expect_load_error("pad of the wrong type", s_make_dir("c_type", NULL, "{\"pad_token\": 5}"),
                        "special_tokens_map.json");
    s_expect_load_error("map is an array", s_make_dir("c_arr", NULL, "[]"), "special_tokens_map.json");
}

TEST(tokenizer_invalid_utf8)
{
    sd_tokenizer_t *t = sd_tokenizer_load(TOK_DIR);
    REQUIRE(t);
    /* invalid bytes read as U+FFFD, which the clean-up drops: same ids as without them */
    s_check_ids(t, "ab\xff" "cd", (const int32_t[]){49406, 596, 4480, 49407}, 4);
    s_check_ids(t, "ab\xef\xbf\xbd" "cd", (const int32_t[]){49406, 596, 4480, 49407}, 4); /* U+FFFD itself */
    static const char *const bad[] = {
        "\xff",     "\xc3",         "a\xe2\x82",     "\xed\xa0\x80 surrogate", "\xf4\x90\x80\x80 too big",
        "\xc0\xaf", "\xf0\x9f\x98", "\x80\x80\x80x", "<|endoftext\xff|>",       "\xe2<|endoftext|>\xe2",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        sd_tok_result_t r;
        int rc = sd_tokenize(t, bad[i], &r);
        CHECKF(rc == 0, "invalid input %zu: rc %d", i, rc);
        if (rc) continue;
        CHECK(r.n_ids >= 2 && r.ids[0] == 49406 && r.ids[r.n_ids - 1] == 49407);
        for (int k = 0; k < r.n_tokens; k++) CHECK(r.tokens[k] && r.tokens[k][0]);
        sd_tok_result_free(&r);
    }
    sd_tokenizer_destroy(&t);
}

TEST(tokenizer_long_input)
{
    sd_tokenizer_t *t = sd_tokenizer_load(TOK_DIR);
    REQUIRE(t);
    /* one 200 kB "word" and 50k short ones: BPE must stay fast, truncation exact */
    size_t n = 200000;
    char *s = malloc(n + 1);
    REQUIRE(s);
    tu_rng_t rng = tu_rng(7);
    for (size_t i = 0; i < n; i++) s[i] = (char)('a' + tu_next(&rng) % 26);
    s[n] = '\0';
    sd_tok_result_t r;
    double t0 = s_now();
    CHECK(sd_tokenize(t, s, &r) == 0);
    double dt = s_now() - t0;
    CHECKF(dt < 5.0, "200 kB word took %.2f s", dt);
    CHECK(r.truncated && r.n_tokens > 75);
    CHECK_INT_EQ(r.input_ids[76], 49407);
    CHECK_INT_EQ(r.attention_mask[76], 1);
    CHECK(!memcmp(r.input_ids, r.ids, 76 * sizeof *r.ids));
    sd_tok_result_free(&r);
    for (size_t i = 0; i + 1 < n; i += 4) memcpy(s + i, "dog ", 4 < n - i ? 4 : n - i);
    CHECK(sd_tokenize(t, s, &r) == 0);
    CHECK(r.n_tokens >= 49999);
    sd_tok_result_free(&r);
    free(s);
    sd_tokenizer_destroy(&t);
}

TEST(tokenizer_speed)
{
    /* reported, not enforced: sanitizer builds are several times slower */
    double t0 = s_now();
    sd_tokenizer_t *t = sd_tokenizer_load(TOK_DIR);
    double load = s_now() - t0;
    REQUIRE(t);
    const char *p = "A highly detailed photograph of a small fluffy golden retriever puppy named sks sitting on a "
                    "wooden porch at sunset, warm golden light, 85mm lens, f/1.4";
    int iters = 1000;
    t0 = s_now();
    for (int i = 0; i < iters; i++) {
        sd_tok_result_t r;
        if (sd_tokenize(t, p, &r)) break;
        sd_tok_result_free(&r);
    }
    double per = (s_now() - t0) / iters;
    printf("tokenizer: load %.1f ms, tokenize %.1f us per prompt\n", load * 1e3, per * 1e6);
    CHECKF(load < 10.0 && per < 0.1, "load %.3f s, tokenize %.6f s", load, per);
    sd_tokenizer_destroy(&t);
}
