/*
 * world_model.c — booth's own base model's architecture, tokenizer, constructed VAE and
 * initialisation (world_model.h).
 */
#include "diffusion/world_model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/fileio.h"
#include "common/log.h"
#include "common/status.h"
#include "diffusion/clip.h"
#include "diffusion/init.h"
#include "diffusion/unet.h"
#include "diffusion/vae.h"
#include "diffusion/world.h"

#define S_VAE_CH 8
#define S_VAE_E 1e-5f /* the encoder's and decoder's input scale: its square is far below the norms' eps */

void sd_world_configs(int resolution, int64_t vocab_size, sd_unet_config_t *u, sd_vae_config_t *v,
                      sd_clip_config_t *c)
{
    memset(u, 0, sizeof *u);
    memset(v, 0, sizeof *v);
    memset(c, 0, sizeof *c);
    c->vocab_size = vocab_size;
    c->hidden_size = 64;
    c->intermediate_size = 256;
    c->num_layers = 3;
    c->num_heads = 4;
    c->max_positions = SD_WORLD_MAX_TOKENS;
    c->act = SD_ACT_QUICK_GELU;
    c->layer_norm_eps = 1e-5f;
    c->eos_token_id = vocab_size - 1; /* <|endoftext|> is the last entry */

    v->in_channels = v->out_channels = 3;
    v->latent_channels = 4;
    v->n_blocks = 1;
    v->block_out_channels[0] = S_VAE_CH;
    v->layers_per_block = 1;
    v->norm_num_groups = S_VAE_CH / 2; /* groups of two channels: +e x and -e x */
    v->scaling_factor = 1.0f;
    v->sample_size = resolution;
    v->mid_attention = false;

    const int64_t ch[3] = {32, 64, 128};
    u->sample_size = resolution;
    u->in_channels = u->out_channels = 4;
    u->flip_sin_to_cos = true;
    u->n_blocks = 3;
    u->has_mid = u->mid_cross = true;
    u->downsample_padding = 1;
    u->mid_block_scale_factor = 1;
    u->norm_num_groups = 16;
    u->norm_eps = 1e-5f;
    u->conv_in_kernel = u->conv_out_kernel = 3;
    for (int i = 0; i < 3; i++) {
        u->down_cross[i] = i > 0;
        u->up_cross[i] = i < 2;
        u->block_out_channels[i] = ch[i];
        u->layers_per_block[i] = 1;
        u->transformer_layers[i] = 1;
        u->heads[i] = 4;
        u->cross_attention_dim[i] = c->hidden_size;
    }
    u->time_embed_dim = 4 * ch[0];
}

/* ---- the tokenizer ---- */

typedef struct {
    char **tok; /* vocabulary, by id */
    int n, cap;
    char (*merge)[2][64]; /* merges, by rank */
    int nm, capm;
} s_vocab_t;

static int s_vocab_find(const s_vocab_t *v, const char *t)
{
    for (int i = 0; i < v->n; i++)
        if (!strcmp(v->tok[i], t)) return i;
    return -1;
}

static int s_vocab_add(s_vocab_t *v, const char *t)
{
    if (s_vocab_find(v, t) >= 0) return BT_OK;
    if (v->n == v->cap) {
        int cap = v->cap ? 2 * v->cap : 1024;
        char **p = bt_realloc(v->tok, (size_t)cap * sizeof *p);
        if (!p) return BT_ENOMEM;
        v->tok = p;
        v->cap = cap;
    }
    if (!(v->tok[v->n] = strdup(t))) return BT_ENOMEM;
    v->n++;
    return BT_OK;
}

static int s_merge_add(s_vocab_t *v, const char *a, const char *b)
{
    if (strlen(a) + strlen(b) >= 64) return BT_EINVAL;
    if (v->nm == v->capm) {
        int cap = v->capm ? 2 * v->capm : 256;
        void *p = bt_realloc(v->merge, (size_t)cap * sizeof *v->merge);
        if (!p) return BT_ENOMEM;
        v->merge = p;
        v->capm = cap;
    }
    snprintf(v->merge[v->nm][0], 64, "%s", a);
    snprintf(v->merge[v->nm][1], 64, "%s", b);
    v->nm++;
    char joined[128];
    snprintf(joined, sizeof joined, "%s%s", a, b);
    return s_vocab_add(v, joined);
}

/* GPT-2's bytes_to_unicode order: the printable Latin-1 bytes as themselves, then the other 68
 * bytes numbered from U+0100 — CLIP's ids 0..255 (and 256..511 with "</w>"). */
static int s_utf8(char *out, unsigned cp)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        out[1] = 0;
        return 1;
    }
    out[0] = (char)(0xC0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3F));
    out[2] = 0;
    return 2;
}

static int s_base_symbols(s_vocab_t *v)
{
    char sym[256][8];
    int n = 0, extra = 0, rc = BT_OK;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        if (printable) s_utf8(sym[n++], (unsigned)b);
    }
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        if (!printable) s_utf8(sym[n++], 256u + (unsigned)extra++);
    }
    for (int i = 0; i < 256 && rc == BT_OK; i++) rc = s_vocab_add(v, sym[i]);
    for (int i = 0; i < 256 && rc == BT_OK; i++) {
        char t[16];
        snprintf(t, sizeof t, "%.4s</w>", sym[i]);
        rc = s_vocab_add(v, t);
    }
    return rc;
}

/* a += b, for pieces of one word of at most 30 letters plus "</w>": they always fit */
static void s_join(char a[64], const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la + lb < 64) memcpy(a + la, b, lb + 1);
}

/* Makes word (lower-case ASCII letters) one token: BPE with the merges so far, then merges that
 * join what is left from the left. Added merges rank after every earlier one, so they never change
 * how an earlier word splits (each step of an earlier word has a lower-ranked merge available until
 * it is one token). */
static int s_word(s_vocab_t *v, const char *word)
{
    char piece[32][64];
    int n = 0, len = (int)strlen(word);
    if (len == 0 || len > 30) return BT_EINVAL;
    for (int i = 0; i < len; i++) snprintf(piece[n++], 64, i == len - 1 ? "%c</w>" : "%c", word[i]);
    for (;;) { /* BPE: merge the lowest-ranked adjacent pair */
        int best = -1, at = -1;
        for (int i = 0; i + 1 < n; i++)
            for (int r = 0; r < v->nm && (best < 0 || r < best); r++)
                if (!strcmp(v->merge[r][0], piece[i]) && !strcmp(v->merge[r][1], piece[i + 1])) {
                    best = r;
                    at = i;
                }
        if (best < 0) break;
        s_join(piece[at], piece[at + 1]);
        memmove(piece[at + 1], piece[at + 2], (size_t)(n - at - 2) * sizeof piece[0]);
        n--;
    }
    int rc = BT_OK;
    while (n > 1 && rc == BT_OK) {
        rc = s_merge_add(v, piece[0], piece[1]);
        s_join(piece[0], piece[1]);
        memmove(piece[1], piece[2], (size_t)(n - 2) * sizeof piece[0]);
        n--;
    }
    return rc;
}

static int s_cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Every word of the world's captions (its first 20000 scenes and its subject's 2000 cover every
 * choice many times over), the identifier, and words a user types around them. */
static int s_world_words(char ***out, int *n)
{
    static const char *const extra[] = {"sks", "photo", "of", "picture", "with", "and", "the", "a", "an"};
    char **w = NULL;
    int nw = 0, cap = 0, rc = BT_OK;
    char cap_text[256];
    for (int i = 0; i < 22000 + (int)(sizeof extra / sizeof extra[0]) && rc == BT_OK; i++) {
        const char *text;
        if (i < 22000) {
            sd_scene_t s;
            if (i < 20000)
                sd_world_scene(0, (uint64_t)i, &s);
            else
                sd_world_subject_scene(0, (uint64_t)(i - 20000), &s);
            if (sd_world_caption(&s, NULL, cap_text, sizeof cap_text) < 0) return BT_EINTERNAL;
            text = cap_text;
        } else {
            text = extra[i - 22000];
        }
        char buf[256];
        snprintf(buf, sizeof buf, "%s", text);
        for (char *save = NULL, *t = strtok_r(buf, " ", &save); t && rc == BT_OK; t = strtok_r(NULL, " ", &save)) {
            bool seen = false;
            for (int k = 0; k < nw && !seen; k++) seen = !strcmp(w[k], t);
            if (seen) continue;
            if (nw == cap) {
                cap = cap ? 2 * cap : 64;
                char **p = bt_realloc(w, (size_t)cap * sizeof *p);
                if (!p) {
                    rc = BT_ENOMEM;
                    break;
                }
                w = p;
            }
            if (!(w[nw] = strdup(t))) rc = BT_ENOMEM;
            else nw++;
        }
    }
    if (rc == BT_OK) qsort(w, (size_t)nw, sizeof *w, s_cmp_str);
    *out = w;
    *n = nw;
    return rc;
}

/* JSON string body of t (the byte alphabet has '"' and '\\'). */
static void s_json_str(FILE *f, const char *t)
{
    fputc('"', f);
    for (; *t; t++) {
        if (*t == '"' || *t == '\\') fputc('\\', f);
        fputc(*t, f);
    }
    fputc('"', f);
}

static int s_write_vocab(const char *path, const s_vocab_t *v)
{
    bt_atomic_file_t af;
    int rc = bt_atomic_open(&af, path);
    if (rc) return rc;
    fputc('{', af.f);
    for (int i = 0; i < v->n; i++) {
        if (i) fputs(", ", af.f);
        s_json_str(af.f, v->tok[i]);
        fprintf(af.f, ": %d", i);
    }
    fputs("}\n", af.f);
    return bt_atomic_commit(&af);
}

static int s_write_merges(const char *path, const s_vocab_t *v)
{
    bt_atomic_file_t af;
    int rc = bt_atomic_open(&af, path);
    if (rc) return rc;
    fputs("#version: 0.2\n", af.f);
    for (int i = 0; i < v->nm; i++) fprintf(af.f, "%s %s\n", v->merge[i][0], v->merge[i][1]);
    return bt_atomic_commit(&af);
}

static int s_write_text(const char *path, const char *text)
{
    return bt_write_file_atomic(path, text, strlen(text));
}

int sd_world_tokenizer_write(const char *dir, int64_t *vocab_size)
{
    s_vocab_t v = {0};
    char **words = NULL, sub[4096], path[4200], text[1024];
    int nw = 0, rc = s_base_symbols(&v);
    if (rc == BT_OK) rc = s_world_words(&words, &nw);
    for (int i = 0; i < nw && rc == BT_OK; i++) rc = s_word(&v, words[i]);
    if (rc == BT_OK) rc = s_vocab_add(&v, "<|startoftext|>");
    if (rc == BT_OK) rc = s_vocab_add(&v, "<|endoftext|>");
    snprintf(sub, sizeof sub, "%s/tokenizer", dir);
    if (rc == BT_OK) rc = bt_mkdirs(sub);
    snprintf(path, sizeof path, "%s/vocab.json", sub);
    if (rc == BT_OK) rc = s_write_vocab(path, &v);
    snprintf(path, sizeof path, "%s/merges.txt", sub);
    if (rc == BT_OK) rc = s_write_merges(path, &v);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", sub);
    snprintf(text, sizeof text,
             "{\n  \"add_prefix_space\": false,\n  \"bos_token\": \"<|startoftext|>\",\n  \"do_lower_case\": true,\n"
             "  \"eos_token\": \"<|endoftext|>\",\n  \"errors\": \"replace\",\n  \"model_max_length\": %d,\n"
             "  \"pad_token\": \"<|endoftext|>\",\n  \"tokenizer_class\": \"CLIPTokenizer\",\n"
             "  \"unk_token\": \"<|endoftext|>\"\n}\n",
             SD_WORLD_MAX_TOKENS);
    if (rc == BT_OK) rc = s_write_text(path, text);
    snprintf(path, sizeof path, "%s/special_tokens_map.json", sub);
    if (rc == BT_OK)
        rc = s_write_text(path, "{\n  \"bos_token\": \"<|startoftext|>\",\n  \"eos_token\": \"<|endoftext|>\",\n"
                                "  \"pad_token\": \"<|endoftext|>\",\n  \"unk_token\": \"<|endoftext|>\"\n}\n");
    if (rc == BT_ENOMEM) BT_ERROR("world tokenizer: out of memory");
    else if (rc == BT_EINVAL) BT_ERROR("world tokenizer: a caption word longer than 30 letters");
    *vocab_size = v.n;
    for (int i = 0; i < v.n; i++) free(v.tok[i]);
    free(v.tok);
    free(v.merge);
    for (int i = 0; i < nw; i++) free(words[i]);
    free(words);
    return rc;
}

/* ---- the constructed VAE ---- */

static float *s_param(sd_params_t *ps, const char *name)
{
    const sd_param_t *p = sd_params_find(ps, name);
    if (!p) BT_ERROR("world vae: no parameter %s", name);
    return p ? p->data : NULL;
}

/* w[o, i, ky, kx] of a [O, I, k, k] convolution's centre tap. */
#define S_TAP(w, I, k, o, i) ((w)[(((o) * (I) + (i)) * (k) + (k) / 2) * (k) + (k) / 2])

static int s_vae_construct(sd_vae_t *vae)
{
    sd_params_t *ps = &vae->params;
    /* zero everything (every ResNet then is the identity), norms' scales 1 */
    for (int i = 0; i < ps->n; i++) {
        sd_param_t *p = &ps->p[i];
        int64_t n = 1;
        for (int d = 0; d < p->ndim; d++) n *= p->shape[d];
        bool scale = p->ndim == 1 && strstr(p->name, "norm") && strstr(p->name, ".weight");
        for (int64_t k = 0; k < n; k++) p->data[k] = scale ? 1.0f : 0.0f;
    }
    const float e = S_VAE_E, a = 1e-3f / S_VAE_E; /* 1e-3 = sqrt(the norms' eps 1e-6) */
    float *ein = s_param(ps, "encoder.conv_in.weight"), *eout = s_param(ps, "encoder.conv_out.weight"),
          *eoutb = s_param(ps, "encoder.conv_out.bias"), *q = s_param(ps, "quant_conv.weight"),
          *pq = s_param(ps, "post_quant_conv.weight"), *din = s_param(ps, "decoder.conv_in.weight"),
          *dout = s_param(ps, "decoder.conv_out.weight");
    if (!ein || !eout || !eoutb || !q || !pq || !din || !dout) return BT_EINTERNAL;
    const int C = S_VAE_CH, L = 4;
    for (int c = 0; c < 3; c++) {
        S_TAP(ein, 3, 3, 2 * c, c) = e; /* encoder: x -> (+e x, -e x) */
        S_TAP(ein, 3, 3, 2 * c + 1, c) = -e;
        S_TAP(eout, C, 3, c, 2 * c) = a; /* mean = a (SiLU(y) - SiLU(-y)) = x */
        S_TAP(eout, C, 3, c, 2 * c + 1) = -a;
        S_TAP(din, L, 3, 2 * c, c) = e; /* decoder: the same pair from latent channel c */
        S_TAP(din, L, 3, 2 * c + 1, c) = -e;
        S_TAP(dout, C, 3, c, 2 * c) = a;
        S_TAP(dout, C, 3, c, 2 * c + 1) = -a;
    }
    for (int c = 0; c < L; c++) eoutb[L + c] = -30.0f; /* logvar: std e^-15, the posterior is its mean */
    for (int c = 0; c < 2 * L; c++) q[c * 2 * L + c] = 1.0f;
    for (int c = 0; c < L; c++) pq[c * L + c] = 1.0f;
    return BT_OK;
}

/* ---- the folder ---- */

/* Zero the projections that close a residual branch, so each block starts as the identity. */
static void s_zero_residual_outputs(sd_params_t *ps)
{
    /* one zero per residual branch, at its end: a ResNet's conv2, a transformer's proj_out (its
     * attention and feed-forward layers inside stay random, so that the cross-attention learns from
     * the first step once proj_out moves), and the UNet's conv_out */
    static const char *const tails[] = {".conv2.weight", ".conv2.bias", ".proj_out.weight", ".proj_out.bias"};
    for (int i = 0; i < ps->n; i++) {
        sd_param_t *p = &ps->p[i];
        size_t len = strlen(p->name);
        bool zero = !strcmp(p->name, "conv_out.weight") || !strcmp(p->name, "conv_out.bias");
        for (size_t k = 0; k < sizeof tails / sizeof tails[0] && !zero; k++) {
            size_t t = strlen(tails[k]);
            zero = len >= t && !strcmp(p->name + len - t, tails[k]);
        }
        if (!zero) continue;
        int64_t n = 1;
        for (int d = 0; d < p->ndim; d++) n *= p->shape[d];
        memset(p->data, 0, (size_t)n * sizeof(float));
    }
}

static const char *const s_meta[] = {"format", "pt", NULL};

int sd_world_model_init(nn_ctx_t *ctx, const char *dir, int resolution, uint64_t seed)
{
    if (resolution < 16 || resolution % 8) {
        BT_ERROR("world model: resolution %d is not a multiple of 8 of at least 16", resolution);
        return BT_EINVAL;
    }
    char sub[4096], path[4200];
    static const char *const parts[] = {"unet", "vae", "text_encoder", "scheduler"};
    int rc = BT_OK;
    for (int i = 0; i < 4 && rc == BT_OK; i++) {
        snprintf(sub, sizeof sub, "%s/%s", dir, parts[i]);
        rc = bt_mkdirs(sub);
    }
    int64_t vocab = 0;
    if (rc == BT_OK) rc = sd_world_tokenizer_write(dir, &vocab);
    if (rc) return rc;
    sd_unet_config_t uc;
    sd_vae_config_t vc;
    sd_clip_config_t cc;
    sd_world_configs(resolution, vocab, &uc, &vc, &cc);
    snprintf(path, sizeof path, "%s/scheduler/scheduler_config.json", dir);
    /* the cosine schedule, not SD's scaled-linear one: see world_model.h */
    rc = s_write_text(path, "{\n  \"_class_name\": \"DDIMScheduler\",\n  \"_diffusers_version\": \"0.25.1\",\n"
                            "  \"beta_end\": 0.02,\n  \"beta_schedule\": \"squaredcos_cap_v2\",\n"
                            "  \"beta_start\": 0.0001,\n  \"clip_sample\": true,\n  \"clip_sample_range\": 1.0,\n"
                            "  \"num_train_timesteps\": 1000,\n  \"prediction_type\": \"v_prediction\",\n"
                            "  \"set_alpha_to_one\": false,\n  \"steps_offset\": 0,\n"
                            "  \"timestep_spacing\": \"trailing\",\n  \"trained_betas\": null\n}\n");

    snprintf(path, sizeof path, "%s/vae/config.json", dir);
    if (rc == BT_OK) rc = sd_vae_config_save(path, &vc);
    sd_vae_t *vae = rc == BT_OK ? sd_vae_new(&vc) : NULL;
    if (rc == BT_OK && !vae) rc = BT_ENOMEM;
    if (rc == BT_OK) rc = sd_params_alloc(&vae->params, ctx);
    if (rc == BT_OK) rc = s_vae_construct(vae);
    snprintf(path, sizeof path, "%s/vae/diffusion_pytorch_model.safetensors", dir);
    if (rc == BT_OK) rc = sd_params_save(&vae->params, path, ST_F32, s_meta);
    sd_vae_destroy(&vae);

    snprintf(path, sizeof path, "%s/text_encoder/config.json", dir);
    if (rc == BT_OK) rc = sd_clip_config_save(path, &cc);
    sd_clip_t *clip = rc == BT_OK ? sd_clip_new(&cc) : NULL;
    if (rc == BT_OK && !clip) rc = BT_ENOMEM;
    if (rc == BT_OK) rc = sd_params_alloc(&clip->params, ctx);
    if (rc == BT_OK) rc = sd_params_init_random(&clip->params, seed * 2 + 0);
    snprintf(path, sizeof path, "%s/text_encoder/model.safetensors", dir);
    if (rc == BT_OK) rc = sd_params_save(&clip->params, path, ST_F32, s_meta);
    sd_clip_destroy(&clip);

    snprintf(path, sizeof path, "%s/unet/config.json", dir);
    if (rc == BT_OK) rc = sd_unet_config_save(path, &uc);
    sd_unet_t *unet = rc == BT_OK ? sd_unet_new(&uc) : NULL;
    if (rc == BT_OK && !unet) rc = BT_ENOMEM;
    if (rc == BT_OK) rc = sd_params_alloc(&unet->params, ctx);
    if (rc == BT_OK) rc = sd_params_init_random(&unet->params, seed * 2 + 1);
    if (rc == BT_OK) s_zero_residual_outputs(&unet->params);
    snprintf(path, sizeof path, "%s/unet/diffusion_pytorch_model.safetensors", dir);
    if (rc == BT_OK) rc = sd_params_save(&unet->params, path, ST_F32, s_meta);
    sd_unet_destroy(&unet);

    if (rc == BT_OK) rc = sd_model_write_index(dir, "DDIMScheduler");
    return rc;
}
