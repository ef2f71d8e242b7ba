/*
 * test_ecosystem.c — files today's Python stack writes, against what that stack
 * computes with them (tests/fixtures/ecosystem/, made by
 * scripts/make_ecosystem_fixtures.py with diffusers 0.42, transformers 5, peft 0.21):
 *
 *   - a transformers-5 tokenizer folder (tokenizer.json only) tokenizes as the same
 *     vocabulary in vocab.json + merges.txt does, and as transformers 5 does where its
 *     fast tokenizer agrees with the slow one; the full CLIP vocabulary as tokenizer.json
 *     reproduces the oracle's 32 prompts;
 *   - LoRA files: text-encoder keys without "text_model." (transformers 5), alpha from
 *     diffusers' lora_adapter_metadata, a peft adapter folder with adapter_config.json
 *     and an alpha_pattern — UNet and text-encoder outputs as diffusers / peft give them;
 *   - a single-file (original LDM names) checkpoint of the tiny model, written here
 *     with the names diffusers' from_single_file read back, loads to the same
 *     outputs, and `booth convert` makes a folder of it.
 * Tolerance: the oracle's, max abs <= 1e-4 for UNet and text-encoder outputs,
 * 3e-4 for the VAE decoder.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/fileio.h"
#include "common/json.h"
#include "common/log.h"
#include "common/stack.h"
#include "diffusion/lora_io.h"
#include "diffusion/model_hash.h"
#include "diffusion/pipeline.h"
#include "diffusion/tokenizer.h"
#include "testutil.h"

static const char *s_tmp(const char *name)
{
    static char path[8][4096];
    static int k;
    k = (k + 1) % 8;
    snprintf(path[k], sizeof path[k], "%s/%s", tu_tmpdir(), name);
    return path[k];
}

/* Every log line of a stretch of code, joined (the test reads them instead of stderr). */
static char s_log[16384];
static void s_sink(bt_log_level_t level, const char *msg, void *user)
{
    (void)level, (void)user;
    size_t n = strlen(s_log);
    snprintf(s_log + n, sizeof s_log - n, "%s\n", msg);
}
static void s_capture_begin(void)
{
    s_log[0] = '\0';
    bt_log_set_sink(s_sink, NULL);
}
static const char *s_capture_end(void)
{
    bt_log_set_sink(NULL, NULL);
    return s_log;
}

static bool s_write(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    if (!f) return false;
    bool ok = fwrite(text, 1, strlen(text), f) == strlen(text);
    return fclose(f) == 0 && ok;
}

/* ---- tokenizer.json ---- */

/* Tokenizes every case of a {"cases": [{"prompt", "input_ids"}, ...]} file with a and b
 * (b may be NULL) and checks a == b and, where want_key's flag is true (or flag_key is
 * NULL), a == the recorded input_ids. */
static void s_check_cases(const char *cases_file, const sd_tokenizer_t *a, const sd_tokenizer_t *b,
                          const char *flag_key, int *n_checked_out)
{
    bt_json_t j;
    REQUIRE(bt_json_open(&j, cases_file) == 0);
    const cJSON *cases = bt_json_get(&j, "cases");
    REQUIRE(cJSON_IsArray(cases) && cJSON_GetArraySize(cases) == 32);
    int n_checked = 0, k = 0;
    for (const cJSON *c = cases->child; c; c = c->next, k++) {
        const cJSON *prompt = cJSON_GetObjectItemCaseSensitive(c, "prompt");
        const cJSON *ids = cJSON_GetObjectItemCaseSensitive(c, "input_ids");
        const cJSON *flag = flag_key ? cJSON_GetObjectItemCaseSensitive(c, flag_key) : NULL;
        REQUIRE(cJSON_IsString(prompt) && cJSON_IsArray(ids) && cJSON_GetArraySize(ids) == 77);
        sd_tok_result_t ra, rb;
        REQUIRE(sd_tokenize(a, prompt->valuestring, &ra) == 0);
        if (b) {
            REQUIRE(sd_tokenize(b, prompt->valuestring, &rb) == 0);
            CHECKF(ra.n_ids == rb.n_ids && !memcmp(ra.ids, rb.ids, (size_t)ra.n_ids * sizeof *ra.ids),
                   "case %d: tokenizer.json and vocab.json + merges.txt give different ids", k);
            for (int i = 0; i < ra.n_tokens && i < rb.n_tokens; i++)
                CHECKF(!strcmp(ra.tokens[i], rb.tokens[i]), "case %d token %d: '%s' vs '%s'", k, i, ra.tokens[i],
                       rb.tokens[i]);
            sd_tok_result_free(&rb);
        }
        if (!flag_key || cJSON_IsTrue(flag)) {
            n_checked++;
            int i = 0;
            for (const cJSON *v = ids->child; v; v = v->next, i++)
                CHECKF(ra.input_ids[i] == (int32_t)v->valuedouble, "case %d ('%.30s'), position %d: id %d, expected %d",
                       k, prompt->valuestring, i, ra.input_ids[i], (int)v->valuedouble);
        }
        sd_tok_result_free(&ra);
    }
    bt_json_free(&j);
    if (n_checked_out) *n_checked_out = n_checked;
}

TEST(ecosystem_tokenizer_json_transformers5)
{
    /* the folder transformers 5 saved: only tokenizer.json and tokenizer_config.json */
    struct stat st;
    CHECK(stat(tu_fixture_path("ecosystem/tok5/vocab.json"), &st) != 0);
    sd_tokenizer_t *fast = sd_tokenizer_load(tu_fixture_path("ecosystem/tok5"));
    sd_tokenizer_t *slow = sd_tokenizer_load(tu_fixture_path("ecosystem/tok_slow"));
    REQUIRE(fast && slow);
    CHECK_INT_EQ(sd_tok_vocab_size(fast), sd_tok_vocab_size(slow));
    CHECK_INT_EQ(sd_tok_bos_id(fast), 512 + 1500);
    CHECK_INT_EQ(sd_tok_eos_id(fast), 513 + 1500);
    CHECK_INT_EQ(sd_tok_pad_id(fast), sd_tok_pad_id(slow));
    CHECK_INT_EQ(sd_tok_max_length(fast), 77);
    int n = 0;
    s_check_cases(tu_fixture_path("ecosystem/tokenizer5.json"), fast, slow, "fast_equals_slow", &n);
    CHECK_INT_EQ(n, 30); /* transformers 5's fast normalizer differs on 2 prompts; booth keeps the slow one's */
    sd_tokenizer_destroy(&fast);
    sd_tokenizer_destroy(&slow);
}

/* The full CLIP vocabulary written as tokenizer.json (merges as pairs, as tokenizers
 * >= 0.20 writes them; and as "a b" strings, as older ones did) reproduces the oracle. */
static char *s_full_tokenizer_json(bool pair_merges)
{
    char *vocab = NULL, *merges = NULL;
    size_t vn, mn;
    if (bt_read_file(tu_fixture_path("tiny-sd/tokenizer/vocab.json"), &vocab, &vn) ||
        bt_read_file(tu_fixture_path("tiny-sd/tokenizer/merges.txt"), &merges, &mn))
        return NULL;
    cJSON *root = cJSON_CreateObject(), *model = cJSON_AddObjectToObject(root, "model");
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON_AddStringToObject(model, "end_of_word_suffix", "</w>");
    cJSON_AddItemToObject(model, "vocab", cJSON_ParseWithLength(vocab, vn));
    cJSON *arr = cJSON_AddArrayToObject(model, "merges");
    char *save = NULL;
    int line = 0;
    for (char *l = strtok_r(merges, "\n", &save); l; l = strtok_r(NULL, "\n", &save), line++) {
        if (line == 0) continue; /* #version */
        char *sp = strchr(l, ' ');
        if (!sp) continue;
        if (pair_merges) {
            *sp = '\0';
            cJSON *pair = cJSON_CreateArray();
            cJSON_AddItemToArray(pair, cJSON_CreateString(l));
            cJSON_AddItemToArray(pair, cJSON_CreateString(sp + 1));
            cJSON_AddItemToArray(arr, pair);
        } else {
            cJSON_AddItemToArray(arr, cJSON_CreateString(l));
        }
    }
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    free(vocab);
    free(merges);
    return text;
}

TEST(ecosystem_tokenizer_json_full_vocab)
{
    for (int pairs = 0; pairs < 2; pairs++) {
        const char *dir = s_tmp(pairs ? "tok_pairs" : "tok_strings");
        REQUIRE(bt_mkdirs(dir) == 0);
        char *text = s_full_tokenizer_json(pairs);
        REQUIRE(text);
        char path[4200];
        snprintf(path, sizeof path, "%s/tokenizer.json", dir);
        CHECK(s_write(path, text));
        free(text);
        snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
        CHECK(s_write(path, "{\"model_max_length\": 77, \"pad_token\": \"<|endoftext|>\"}"));
        sd_tokenizer_t *t = sd_tokenizer_load(dir), *ref = sd_tokenizer_load(tu_fixture_path("tiny-sd/tokenizer"));
        REQUIRE(t && ref);
        CHECK_INT_EQ(sd_tok_vocab_size(t), 49408);
        s_check_cases(tu_fixture_path("tokenizer.json"), t, ref, NULL, NULL);
        sd_tokenizer_destroy(&t);
        sd_tokenizer_destroy(&ref);
    }
    sd_tokenizer_t *b = sd_tokenizer_load_builtin(NULL);
    REQUIRE(b);
    s_check_cases(tu_fixture_path("tokenizer.json"), b, NULL, NULL, NULL);
    sd_tokenizer_destroy(&b);
}

TEST(ecosystem_tokenizer_json_refusals)
{
    static const struct {
        const char *json, *expect;
    } cases[] = {
        {"{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}", "WordPiece"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}", "end_of_word_suffix"},
        {"{\"model\": {\"type\": \"BPE\", \"end_of_word_suffix\": \"</w>\", \"vocab\": {\"a\": 0}, \"merges\": [[1, 2]]}}",
         "model.merges[0]"},
        {"{\"model\": {\"type\": \"BPE\", \"end_of_word_suffix\": \"</w>\", \"vocab\": {\"a\": -1}, \"merges\": []}}",
         "'a' has id -1"},
        {"[1]", "top level"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char dir[64];
        snprintf(dir, sizeof dir, "badtok%zu", i);
        REQUIRE(bt_mkdirs(s_tmp(dir)) == 0);
        char path[4200];
        snprintf(path, sizeof path, "%s/tokenizer.json", s_tmp(dir));
        REQUIRE(s_write(path, cases[i].json));
        s_capture_begin();
        sd_tokenizer_t *t = sd_tokenizer_load(s_tmp(dir));
        const char *log = s_capture_end();
        CHECKF(!t, "case %zu loaded", i);
        CHECKF(strstr(log, "tokenizer.json") && strstr(log, cases[i].expect), "case %zu: log '%s'", i, log);
        sd_tokenizer_destroy(&t);
    }
}

/* ---- LoRA files ---- */

typedef struct {
    nn_ctx_t *ctx;
    sd_unet_t *unet;
    sd_clip_t *clip;
    bt_stack_t scratch;
    sd_run_t run;
    st_file_t *fx;
    float *sample, *ehs, t;
    int32_t ids[77];
} s_env_t;

static bool s_env_open(s_env_t *e)
{
    memset(e, 0, sizeof *e);
    if (!(e->ctx = nn_ctx_new(NN_BACKEND_CPU, 0))) return false;
    e->unet = sd_unet_load(e->ctx, tu_fixture_path("tiny-sd/unet"), SD_STORE_AUTO);
    e->clip = sd_clip_load(e->ctx, tu_fixture_path("tiny-sd/text_encoder"), SD_STORE_AUTO);
    bt_stack_init(&e->scratch, "scratch", 0, NULL, NULL, NULL);
    e->run = (sd_run_t){.nn = e->ctx, .scratch = &e->scratch};
    if (!e->unet || !e->clip || !(e->fx = tu_fixture("ecosystem/expected.safetensors"))) return false;
    e->sample = tu_load_f32(e->fx, "sample", NULL);
    e->ehs = tu_load_f32(e->fx, "encoder_hidden_states", NULL);
    int64_t ids[77], t;
    const st_tensor_t *ti = st_find(e->fx, "input_ids"), *tt = st_find(e->fx, "timestep");
    if (!e->sample || !e->ehs || !ti || st_numel(ti) != 77 || !tt || st_read_i64(ti, ids) || st_read_i64(tt, &t))
        return false;
    for (int i = 0; i < 77; i++) e->ids[i] = (int32_t)ids[i];
    e->t = (float)t;
    return true;
}

static void s_env_close(s_env_t *e)
{
    bt_stack_free(&e->scratch);
    free(e->sample);
    free(e->ehs);
    st_close(&e->fx);
    sd_unet_destroy(&e->unet);
    sd_clip_destroy(&e->clip);
    nn_ctx_destroy(&e->ctx);
}

/* The UNet and text-encoder outputs against expected `<what>.unet` / `<what>.text`
 * (either absent: not compared); returns the largest difference. */
static double s_compare(s_env_t *e, sd_unet_t *unet, sd_clip_t *clip, const char *what)
{
    char name[128];
    double worst = 0;
    snprintf(name, sizeof name, "%s.text", what);
    float *want = st_find(e->fx, name) ? tu_load_f32(e->fx, name, NULL) : NULL;
    if (want) {
        float out[77 * 32];
        CHECK(sd_clip_forward(&e->run, clip, out, NULL, e->ids, 1, 77, 0) == 0);
        double d = tu_check_close(name, out, want, 77 * 32, 1e-4);
        worst = d > worst ? d : worst;
        free(want);
    }
    snprintf(name, sizeof name, "%s.unet", what);
    want = st_find(e->fx, name) ? tu_load_f32(e->fx, name, NULL) : NULL;
    if (want) {
        float out[4 * 16 * 16];
        CHECK(sd_unet_forward(&e->run, unet, out, e->sample, &e->t, e->ehs, 1, 16, 16, 77) == 0);
        double d = tu_check_close(name, out, want, 4 * 16 * 16, 1e-4);
        worst = d > worst ? d : worst;
        free(want);
    }
    return worst;
}

static void s_lora_case(const char *file, const char *what, int64_t rank, float alpha, bool expect_info)
{
    s_env_t e;
    REQUIRE(s_env_open(&e));
    CHECK(s_compare(&e, e.unet, e.clip, "base") <= 1e-4);
    sd_lora_set_t *u = NULL, *t = NULL;
    s_capture_begin();
    int rc = sd_lora_load(tu_fixture_path(file), e.ctx, e.unet, e.clip, NULL, &u, &t);
    const char *log = s_capture_end();
    REQUIRE(rc == 0);
    CHECKF(!!strstr(log, "alpha = rank") == expect_info, "%s: log '%s'", file, log);
    sd_lora_set_t *sets[2] = {u, t};
    for (int p = 0; p < 2; p++)
        if (sets[p]) {
            CHECK_INT_EQ(sets[p]->rank, rank);
            CHECKF(sets[p]->alpha == alpha, "%s: alpha %g, expected %g", file, sets[p]->alpha, alpha);
        }
    /* peft_te's adapter_config.json: alpha_pattern {"layers.1.self_attn.v_proj": 32} */
    for (int i = 0; t && i < t->n; i++) {
        bool pattern = !strcmp(t->modules[i], "text_model.encoder.layers.1.self_attn.v_proj") && !strcmp(what, "peft_te");
        CHECKF(t->adapters[i].alpha == (pattern ? 32.0f : alpha), "%s: '%s' alpha %g", file, t->modules[i],
               t->adapters[i].alpha);
    }
    double d = s_compare(&e, e.unet, e.clip, what);
    printf("  %s: max abs diff to diffusers/peft %.3g\n", file, d);
    sd_lora_destroy(&u);
    sd_lora_destroy(&t);
    s_env_close(&e);
}

TEST(ecosystem_lora_transformers5_keys)
{
    /* text_encoder.encoder.layers.0.self_attn.k_proj.lora_A.weight: no text_model level, no alpha */
    s_lora_case("ecosystem/lora_te5.safetensors", "lora_te5", 4, 4.0f, true);
}

TEST(ecosystem_lora_adapter_metadata)
{
    s_lora_case("ecosystem/lora_meta.safetensors", "lora_meta", 8, 16.0f, false);
}

TEST(ecosystem_lora_peft_folder)
{
    /* the folder itself, and its adapter_model.safetensors: adapter_config.json beside it applies */
    s_lora_case("ecosystem/peft_te", "peft_te", 8, 16.0f, false);
    s_lora_case("ecosystem/peft_te/adapter_model.safetensors", "peft_te", 8, 16.0f, false);
}

/* A copy of the peft folder with a changed adapter_config.json is refused, naming the cause. */
TEST(ecosystem_lora_peft_config_refusals)
{
    static const struct {
        const char *from, *to, *expect;
    } cases[] = {
        {"\"use_dora\": false", "\"use_dora\": true", "use_dora"},
        {"\"layers.1.self_attn.v_proj\": 32", "\"layers\\\\.[0-9]\\\\.self_attn.v_proj\": 32", "regular expression"},
        {"\"rank_pattern\": {}", "\"rank_pattern\": {\"q_proj\": 4}", "rank_pattern 'q_proj' gives rank 4"},
        {"\"r\": 8", "\"r\": 16", "r = 16"},
        {"\"lora_alpha\": 16", "\"lora_alpha\": \"16\"", "'lora_alpha'"},
    };
    char *cfg = NULL, *model = NULL;
    size_t cn, mn;
    REQUIRE(bt_read_file(tu_fixture_path("ecosystem/peft_te/adapter_config.json"), &cfg, &cn) == 0);
    REQUIRE(bt_read_file(tu_fixture_path("ecosystem/peft_te/adapter_model.safetensors"), &model, &mn) == 0);
    s_env_t e;
    REQUIRE(s_env_open(&e));
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char dir[64], path[4200];
        snprintf(dir, sizeof dir, "peft_bad%zu", i);
        REQUIRE(bt_mkdirs(s_tmp(dir)) == 0);
        const char *at = strstr(cfg, cases[i].from);
        REQUIRE(at);
        size_t n = cn + strlen(cases[i].to) + 1;
        char *text = malloc(n);
        snprintf(text, n, "%.*s%s%s", (int)(at - cfg), cfg, cases[i].to, at + strlen(cases[i].from));
        snprintf(path, sizeof path, "%s/adapter_config.json", s_tmp(dir));
        CHECK(s_write(path, text));
        free(text);
        snprintf(path, sizeof path, "%s/adapter_model.safetensors", s_tmp(dir));
        FILE *f = fopen(path, "wb");
        REQUIRE(f && fwrite(model, 1, mn, f) == mn && fclose(f) == 0);
        sd_lora_set_t *u = NULL, *t = NULL;
        s_capture_begin();
        int rc = sd_lora_load(s_tmp(dir), e.ctx, e.unet, e.clip, NULL, &u, &t);
        const char *log = s_capture_end();
        CHECKF(rc != 0 && !u && !t, "case %zu loaded", i);
        CHECKF(strstr(log, cases[i].expect) != NULL, "case %zu: log '%s'", i, log);
        sd_lora_destroy(&u);
        sd_lora_destroy(&t);
    }
    s_env_close(&e);
    free(cfg);
    free(model);
}

/* ---- single-file checkpoints ---- */

/* Writes the tiny model as a single file with the names diffusers' from_single_file
 * read back (single_file_sd1.json); returns its path or NULL. */
static const char *s_make_single_file(void)
{
    static const char *const parts[3][2] = {{"unet.", "tiny-sd/unet/diffusion_pytorch_model.safetensors"},
                                            {"vae.", "tiny-sd/vae/diffusion_pytorch_model.safetensors"},
                                            {"text_encoder.", "tiny-sd/text_encoder/model.safetensors"}};
    const char *out = s_tmp("tiny-sd1.safetensors");
    struct stat st;
    if (stat(out, &st) == 0) return out;
    bt_json_t j;
    if (bt_json_open(&j, tu_fixture_path("ecosystem/single_file_sd1.json"))) return NULL;
    st_file_t *src[3] = {NULL, NULL, NULL};
    st_writer_t *w = st_writer_new();
    bool ok = w != NULL;
    for (int p = 0; p < 3 && ok; p++) ok = (src[p] = tu_fixture(parts[p][1])) != NULL;
    const cJSON *pairs = bt_json_get(&j, "tensors");
    int n = 0;
    for (const cJSON *e = cJSON_IsArray(pairs) ? pairs->child : NULL; e && ok; e = e->next, n++) {
        const char *ldm = cJSON_GetArrayItem(e, 0)->valuestring, *name = cJSON_GetArrayItem(e, 1)->valuestring;
        int p = 0;
        while (p < 3 && strncmp(name, parts[p][0], strlen(parts[p][0]))) p++;
        const st_tensor_t *t = p < 3 ? st_find(src[p], name + strlen(parts[p][0])) : NULL;
        ok = t != NULL;
        if (!ok) break;
        int64_t shape[4] = {t->shape[0], t->ndim > 1 ? t->shape[1] : 1, 1, 1};
        bool conv = strstr(ldm, ".mid.attn_1.") && t->ndim == 2; /* LDM's attention projections are 1x1 convs */
        ok = st_writer_add(w, ldm, t->dtype, conv ? 4 : t->ndim, conv ? shape : t->shape, t->data) == 0;
    }
    ok = ok && n == 916 && st_writer_save(w, out) == 0;
    st_writer_destroy(&w);
    for (int p = 0; p < 3; p++) st_close(&src[p]);
    bt_json_free(&j);
    return ok ? out : NULL;
}

TEST(ecosystem_single_file_infers_the_tiny_architecture)
{
    const char *path = s_make_single_file();
    REQUIRE(path);
    sd_single_file_t *sf = sd_single_file_open(path, NULL);
    REQUIRE(sf);
    sd_unet_config_t u;
    sd_vae_config_t v;
    sd_clip_config_t c;
    REQUIRE(sd_unet_config_load(tu_fixture_path("tiny-sd/unet/config.json"), &u) == 0);
    REQUIRE(sd_vae_config_load(tu_fixture_path("tiny-sd/vae/config.json"), &v) == 0);
    REQUIRE(sd_clip_config_load(tu_fixture_path("tiny-sd/text_encoder/config.json"), &c) == 0);
    CHECK(!sf->sd2);
    CHECK_INT_EQ(sf->unet.n_blocks, u.n_blocks);
    for (int b = 0; b < u.n_blocks; b++) {
        CHECK_INT_EQ(sf->unet.block_out_channels[b], u.block_out_channels[b]);
        CHECK_INT_EQ(sf->unet.layers_per_block[b], u.layers_per_block[b]);
        CHECK_INT_EQ(sf->unet.transformer_layers[b], u.transformer_layers[b]);
        CHECK_INT_EQ(sf->unet.heads[b], u.heads[b]); /* SD 1.x: 8, as the tiny model */
        CHECK_INT_EQ(sf->unet.cross_attention_dim[b], u.cross_attention_dim[b]);
        CHECK_INT_EQ(sf->unet.down_cross[b], u.down_cross[b]);
        CHECK_INT_EQ(sf->unet.up_cross[b], u.up_cross[b]);
    }
    CHECK_INT_EQ(sf->unet.mid_cross, u.mid_cross);
    CHECK_INT_EQ(sf->unet.use_linear_projection, u.use_linear_projection);
    CHECK_INT_EQ(sf->unet.time_embed_dim, u.time_embed_dim);
    CHECK_INT_EQ(sf->vae.n_blocks, v.n_blocks);
    for (int b = 0; b < v.n_blocks; b++) CHECK_INT_EQ(sf->vae.block_out_channels[b], v.block_out_channels[b]);
    CHECK_INT_EQ(sf->vae.layers_per_block, v.layers_per_block);
    CHECK_INT_EQ(sf->vae.latent_channels, v.latent_channels);
    CHECK(sf->vae.scaling_factor == v.scaling_factor);
    CHECK_INT_EQ(sf->clip.hidden_size, c.hidden_size);
    CHECK_INT_EQ(sf->clip.num_layers, c.num_layers);
    CHECK_INT_EQ(sf->clip.intermediate_size, c.intermediate_size);
    CHECK_INT_EQ(sf->clip.vocab_size, c.vocab_size);
    CHECK_INT_EQ(sf->clip.act, c.act);
    CHECK_INT_EQ(sf->clip.num_heads, 0); /* 32 wide: SD's 64-wide heads do not divide it */
    CHECK(sf->prediction == SD_PRED_EPSILON);
    /* so without a config folder the model is refused, saying why */
    s_capture_begin();
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    sd_model_t *m = sd_model_load_as(ctx, path, SD_PART_ALL, SD_STORE_AUTO);
    const char *log = s_capture_end();
    CHECK(!m && strstr(log, "64 per attention head") && strstr(log, "--config"));
    sd_model_destroy(&m);
    nn_ctx_destroy(&ctx);
    sd_single_file_close(&sf);
}

TEST(ecosystem_single_file_matches_from_single_file)
{
    const char *path = s_make_single_file();
    REQUIRE(path);
    s_env_t e;
    REQUIRE(s_env_open(&e));
    const sd_single_file_opts_t opts = {.config_dir = tu_fixture_path("tiny-sd"), .prediction = -1};
    sd_model_t *m = sd_model_load_file(e.ctx, path, SD_PART_ALL, SD_STORE_AUTO, &opts);
    REQUIRE(m);
    double d = s_compare(&e, m->unet, m->clip, "single_file");
    float *lat = tu_load_f32(e.fx, "latents", NULL), *want = tu_load_f32(e.fx, "single_file.vae_decoded", NULL);
    REQUIRE(lat && want);
    float img[3 * 32 * 32];
    CHECK(sd_vae_decode(&e.run, m->vae, img, lat, 1, 4, 4) == 0);
    double dv = tu_check_close("single_file.vae_decoded", img, want, 3 * 32 * 32, 3e-4);
    printf("  single file: max abs diff to diffusers' from_single_file %.3g (UNet, text encoder), %.3g (VAE)\n", d,
           dv);
    CHECK(m->sched_cfg.prediction_type == SD_PRED_EPSILON && m->default_sampler == SD_SCHED_PNDM);
    free(lat);
    free(want);
    sd_model_destroy(&m);
    s_env_close(&e);
}

TEST(ecosystem_single_file_refusals)
{
    const char *pickle = s_tmp("model.ckpt");
    REQUIRE(s_write(pickle, "not read"));
    s_capture_begin();
    sd_single_file_t *sf = sd_single_file_open(pickle, NULL);
    const char *log = s_capture_end();
    CHECK(!sf && strstr(log, "pickle") && strstr(log, "runs code") && strstr(log, "safetensors"));
    /* a LoRA file given as a model */
    s_capture_begin();
    sf = sd_single_file_open(tu_fixture_path("ecosystem/lora_meta.safetensors"), NULL);
    log = s_capture_end();
    CHECK(!sf && strstr(log, "a LoRA file"));
    /* a single file with a tensor missing names both names */
    const char *path = s_make_single_file();
    REQUIRE(path);
    st_file_t *f = st_open(path);
    REQUIRE(f);
    st_writer_t *w = st_writer_new();
    for (int i = 0; i < st_count(f); i++) {
        const st_tensor_t *t = st_at(f, i);
        if (strcmp(t->name, "model.diffusion_model.output_blocks.5.1.proj_out.weight"))
            REQUIRE(st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data) == 0);
    }
    const char *cut = s_tmp("cut.safetensors");
    REQUIRE(st_writer_save(w, cut) == 0);
    st_writer_destroy(&w);
    st_close(&f);
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    const sd_single_file_opts_t opts = {.config_dir = tu_fixture_path("tiny-sd"), .prediction = -1};
    s_capture_begin();
    sd_model_t *m = sd_model_load_file(ctx, cut, SD_PART_UNET, SD_STORE_AUTO, &opts);
    log = s_capture_end();
    CHECKF(!m && strstr(log, "output_blocks.5.1.proj_out.weight") && strstr(log, "up_blocks.1.attentions.2.proj_out"),
           "log '%s'", log);
    sd_model_destroy(&m);
    nn_ctx_destroy(&ctx);
}

/* `booth convert` writes a diffusers folder that loads to the same outputs. */
TEST(ecosystem_convert_command)
{
    const char *path = s_make_single_file(), *booth = getenv("BOOTH");
    REQUIRE(path && booth);
    const char *out = s_tmp("converted");
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "'%s' convert '%s' --config '%s' --out '%s' 2>/dev/null", booth, path,
             tu_fixture_path("tiny-sd"), out);
    REQUIRE(system(cmd) == 0);
    s_env_t e;
    REQUIRE(s_env_open(&e));
    sd_model_t *m = sd_model_load(e.ctx, out, SD_PART_ALL);
    REQUIRE(m);
    double d = s_compare(&e, m->unet, m->clip, "single_file");
    printf("  booth convert: max abs diff to diffusers' from_single_file %.3g\n", d);
    CHECK(m->default_sampler == SD_SCHED_PNDM && m->sched_cfg.prediction_type == SD_PRED_EPSILON);
    CHECK_INT_EQ(sd_tok_pad_id(m->tok), 49407);
    sd_model_destroy(&m);
    s_env_close(&e);
    /* without --config the tiny model's text-encoder heads are unknowable: one line says so */
    snprintf(cmd, sizeof cmd, "'%s' convert '%s' --out '%s' 2>&1 | grep -q 'config DIR'", booth, path,
             s_tmp("converted2"));
    CHECK(system(cmd) == 0);
    snprintf(cmd, sizeof cmd, "'%s' convert '%s' --out '%s' 2>&1 | grep -q 'pickle'", booth, s_tmp("model.ckpt"),
             s_tmp("converted3"));
    CHECK(s_write(s_tmp("model.ckpt"), "x") && system(cmd) == 0);
}

/* SD 2.x's layout: the tiny text encoder as OpenCLIP (fused in_proj, one more resblock
 * than is used) with the names and row ranges diffusers' convert_open_clip_checkpoint
 * read back (single_file_sd2_text_encoder.json), beside the SD 1.x file's UNet and VAE. */
static const char *s_make_sd2_file(void)
{
    const char *out = s_tmp("tiny-sd2.safetensors");
    const char *sd1 = s_make_single_file();
    bt_json_t j;
    if (!sd1 || bt_json_open(&j, tu_fixture_path("ecosystem/single_file_sd2_text_encoder.json"))) return NULL;
    st_file_t *base = st_open(sd1), *te = tu_fixture("tiny-sd/text_encoder/model.safetensors");
    st_writer_t *w = st_writer_new();
    float *fused[64];
    char fused_name[64][256];
    int n_fused = 0;
    bool ok = base && te && w;
    for (int i = 0; ok && i < st_count(base); i++) {
        const st_tensor_t *t = st_at(base, i);
        if (strncmp(t->name, "cond_stage_model.", 17))
            ok = st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data) == 0;
    }
    const cJSON *pairs = bt_json_get(&j, "tensors");
    for (const cJSON *e = cJSON_IsArray(pairs) ? pairs->child : NULL; e && ok; e = e->next) {
        const char *ldm = cJSON_GetArrayItem(e, 0)->valuestring;
        const char *name = cJSON_GetArrayItem(e, 1)->valuestring + strlen("text_encoder.");
        int slice = (int)cJSON_GetArrayItem(e, 2)->valuedouble;
        const st_tensor_t *t = st_find(te, name);
        if (!(ok = t && t->dtype == ST_F32)) break;
        int64_t n = st_numel(t);
        for (int extra = 0; extra < 2 && ok; extra++) { /* resblocks.2 is also written as the unused resblocks.3 */
            char nm[256];
            const char *at = strstr(ldm, "resblocks.2.");
            if (extra && !at) break;
            if (extra)
                snprintf(nm, sizeof nm, "%.*sresblocks.3.%s", (int)(at - ldm), ldm, at + strlen("resblocks.2."));
            else
                snprintf(nm, sizeof nm, "%s", ldm);
            if (slice < 0) {
                ok = st_writer_add(w, nm, t->dtype, t->ndim, t->shape, t->data) == 0;
                continue;
            }
            /* q, k, v rows of the fused in_proj, assembled here; the writer keeps a copy */
            int k = 0;
            while (k < n_fused && strcmp(fused_name[k], nm)) k++;
            if (k == n_fused) {
                if (!(ok = n_fused < 64 && (fused[k] = calloc((size_t)(3 * n), sizeof(float))))) break;
                snprintf(fused_name[k], sizeof fused_name[k], "%s", nm);
                n_fused++;
            }
            st_read_f32(t, fused[k] + slice * n);
            if (slice == 2) {
                int64_t shape[2] = {3 * t->shape[0], t->ndim > 1 ? t->shape[1] : 1};
                ok = st_writer_add_copy(w, nm, ST_F32, t->ndim, shape, fused[k]) == 0;
            }
        }
    }
    ok = ok && st_writer_save(w, out) == 0;
    st_writer_destroy(&w);
    for (int k = 0; k < n_fused; k++) free(fused[k]);
    st_close(&base);
    st_close(&te);
    bt_json_free(&j);
    return ok ? out : NULL;
}

TEST(ecosystem_single_file_sd2_openclip)
{
    const char *path = s_make_sd2_file();
    REQUIRE(path);
    sd_single_file_t *sf = sd_single_file_open(path, NULL);
    REQUIRE(sf);
    CHECK(sf->sd2 && sf->prediction == SD_PRED_V);
    CHECK_INT_EQ(sf->clip.num_layers, 3); /* four resblocks: SD 2.x conditions on the penultimate */
    CHECK_INT_EQ(sf->clip.act, SD_ACT_GELU);
    CHECK_INT_EQ(sf->unet.heads[1], 1); /* 64 channels / 64 per head */
    sd_single_file_close(&sf);
    /* with the tiny model's configs (quick-GELU, 4 heads), the split q/k/v give diffusers' outputs */
    s_env_t e;
    REQUIRE(s_env_open(&e));
    const sd_single_file_opts_t opts = {.config_dir = tu_fixture_path("tiny-sd"), .prediction = -1};
    sd_model_t *m = sd_model_load_file(e.ctx, path, SD_PART_ALL, SD_STORE_AUTO, &opts);
    REQUIRE(m);
    double d = s_compare(&e, m->unet, m->clip, "single_file");
    printf("  SD 2.x layout: max abs diff to diffusers %.3g\n", d);
    CHECK_INT_EQ(sd_tok_pad_id(m->tok), 49407); /* the config folder's tokenizer */
    sd_model_destroy(&m);
    s_env_close(&e);
}

/* The model hash (checkpoints, prior sets) of a single file and of a transformers-5 tokenizer. */
TEST(ecosystem_model_hash)
{
    const char *path = s_make_single_file();
    REQUIRE(path);
    char hex[BT_HASH_HEX], hex_vae[BT_HASH_HEX], *manifest = NULL;
    REQUIRE(sd_model_hash(path, SD_PART_ALL, hex, &manifest) == 0);
    CHECKF(manifest && strstr(manifest, "  tiny-sd1.safetensors\n") && !strchr(strchr(manifest, '\n') + 1, '\n'),
           "manifest '%s'", manifest ? manifest : "");
    CHECK(sd_model_hash(path, SD_PART_VAE, hex_vae, NULL) == 0 && !strcmp(hex, hex_vae));
    free(manifest);
    const char *dir = s_tmp("tok5model");
    char link[4200];
    snprintf(link, sizeof link, "%s/tokenizer", dir);
    REQUIRE(bt_mkdirs(dir) == 0);
    char *target = realpath(tu_fixture_path("ecosystem/tok5"), NULL);
    REQUIRE(target);
    CHECK(symlink(target, link) == 0);
    free(target);
    REQUIRE(sd_model_hash(dir, SD_PART_TOKENIZER, hex, &manifest) == 0);
    CHECKF(manifest && strstr(manifest, "tokenizer/tokenizer.json") && !strstr(manifest, "vocab.json"), "manifest '%s'",
           manifest ? manifest : "");
    free(manifest);
}

/* Older SD 1.x files spell the text encoder without "text_model." (cond_stage_model.transformer.encoder...). */
TEST(ecosystem_single_file_old_clip_names)
{
    const char *path = s_make_single_file();
    REQUIRE(path);
    st_file_t *f = st_open(path);
    REQUIRE(f);
    st_writer_t *w = st_writer_new();
    static const char old_prefix[] = "cond_stage_model.transformer.text_model.";
    for (int i = 0; i < st_count(f); i++) {
        const st_tensor_t *t = st_at(f, i);
        char name[320];
        if (!strncmp(t->name, old_prefix, strlen(old_prefix)))
            snprintf(name, sizeof name, "cond_stage_model.transformer.%s", t->name + strlen(old_prefix));
        else
            snprintf(name, sizeof name, "%s", t->name);
        REQUIRE(st_writer_add(w, name, t->dtype, t->ndim, t->shape, t->data) == 0);
    }
    const char *old = s_tmp("old-names.safetensors");
    REQUIRE(st_writer_save(w, old) == 0);
    st_writer_destroy(&w);
    st_close(&f);
    s_env_t e;
    REQUIRE(s_env_open(&e));
    const sd_single_file_opts_t opts = {.config_dir = tu_fixture_path("tiny-sd"), .prediction = -1};
    sd_model_t *m = sd_model_load_file(e.ctx, old, SD_PART_TEXT | SD_PART_UNET, SD_STORE_AUTO, &opts);
    REQUIRE(m);
    CHECK(s_compare(&e, m->unet, m->clip, "single_file") <= 1e-4);
    sd_model_destroy(&m);
    /* a path that is not there says so */
    s_capture_begin();
    m = sd_model_load_as(e.ctx, s_tmp("missing.safetensors"), SD_PART_ALL, SD_STORE_AUTO);
    const char *log = s_capture_end();
    CHECKF(!m && strstr(log, "missing.safetensors: cannot open"), "log '%s'", log);
    s_env_close(&e);
}
