/*
 * test_lora_io.c — LoRA files: the oracle's LoRA in its three layouts (peft,
 * diffusers, kohya) loads to bit-identical A/B and reproduces the oracle's
 * LoRA UNet and text encoder; save -> load round trips in every layout (alpha
 * equal to and different from rank, per-adapter alphas); the key table both
 * ways; hostile files fail with one error naming the file and the key, leaving
 * the model untouched.
 *
 * With BOOTH_LORA_EXPORT_DIR set, lora_io_export_for_interop also writes booth's
 * exported files and booth's outputs there for scripts/check_lora_interop.py.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/stack.h"
#include "diffusion/lora_io.h"
#include "testutil.h"

/* ---- a model and the oracle's inputs ---- */

typedef struct {
    nn_ctx_t *ctx;
    sd_unet_t *unet;
    sd_clip_t *clip;
    bt_stack_t scratch;
    sd_run_t run;
    float *sample, *ehs, t[3];
    int32_t ids[2 * 77];
    int64_t n_unet, n_text; /* output sizes */
} s_env_t;

static bool s_env_open(s_env_t *e)
{
    memset(e, 0, sizeof *e);
    e->ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    if (!e->ctx) return false;
    e->unet = sd_unet_load(e->ctx, tu_fixture_path("tiny-sd/unet"), SD_STORE_AUTO);
    e->clip = sd_clip_load(e->ctx, tu_fixture_path("tiny-sd/text_encoder"), SD_STORE_AUTO);
    if (!e->unet || !e->clip) return false;
    bt_stack_init(&e->scratch, "scratch", 0, NULL, NULL, NULL);
    e->run = (sd_run_t){.nn = e->ctx, .scratch = &e->scratch};
    st_file_t *base = tu_fixture("oracle/unet.safetensors");
    st_file_t *db = tu_fixture("oracle/dreambooth_unet_te_lora.safetensors");
    if (!base || !db) return false;
    e->sample = tu_load_f32(base, "sample", &e->n_unet);
    e->ehs = tu_load_f32(base, "encoder_hidden_states", NULL);
    int64_t ts[3], ids[77];
    bool ok = e->sample && e->ehs && st_read_i64(st_find(base, "timestep"), ts) == 0;
    for (int i = 0; ok && i < 3; i++)
        e->t[i] = (float)ts[i];
    for (int b = 0; ok && b < 2; b++) {
        const st_tensor_t *t = st_find(db, b ? "class_input_ids" : "instance_input_ids");
        ok = t && st_numel(t) == 77 && st_read_i64(t, ids) == 0;
        for (int i = 0; ok && i < 77; i++)
            e->ids[b * 77 + i] = (int32_t)ids[i];
    }
    e->n_text = 2 * 77 * 32;
    st_close(&base);
    st_close(&db);
    return ok;
}

static void s_env_close(s_env_t *e)
{
    bt_stack_free(&e->scratch);
    free(e->sample);
    free(e->ehs);
    sd_unet_destroy(&e->unet);
    sd_clip_destroy(&e->clip);
    nn_ctx_destroy(&e->ctx);
}

/* UNet on the oracle's [3,4,16,16] batch, and CLIP on ["a photo of sks dog", "a photo of dog"]. */
static float *s_unet_out(s_env_t *e)
{
    float *out = calloc((size_t)e->n_unet, sizeof(float));
    if (out && sd_unet_forward(&e->run, e->unet, out, e->sample, e->t, e->ehs, 3, 16, 16, 77)) {
        free(out);
        return NULL;
    }
    return out;
}

static float *s_text_out(s_env_t *e)
{
    float *out = calloc((size_t)e->n_text, sizeof(float));
    if (out && sd_clip_forward(&e->run, e->clip, out, NULL, e->ids, 2, 77, 0)) {
        free(out);
        return NULL;
    }
    return out;
}

/* ---- copies of a set's A/B, to compare by name ---- */

typedef struct {
    int n;
    char (*name)[SD_NAME_MAX];
    float **data;
    int64_t *numel;
    float *alpha; /* per adapter */
} s_snap_t;

static int64_t s_numel(const sd_param_t *p)
{
    int64_t n = 1;
    for (int d = 0; d < p->ndim; d++)
        n *= p->shape[d];
    return n;
}

static s_snap_t s_snap(const sd_lora_set_t *s)
{
    s_snap_t c = {.n = s->params.n};
    c.name = calloc((size_t)c.n, sizeof *c.name);
    c.data = calloc((size_t)c.n, sizeof *c.data);
    c.numel = calloc((size_t)c.n, sizeof *c.numel);
    c.alpha = calloc((size_t)s->n, sizeof *c.alpha);
    for (int i = 0; i < c.n; i++) {
        const sd_param_t *p = &s->params.p[i];
        memcpy(c.name[i], p->name, SD_NAME_MAX);
        c.numel[i] = s_numel(p);
        c.data[i] = malloc((size_t)c.numel[i] * sizeof(float));
        memcpy(c.data[i], p->data, (size_t)c.numel[i] * sizeof(float));
    }
    for (int i = 0; i < s->n; i++)
        c.alpha[i] = s->adapters[i].alpha;
    return c;
}

static void s_snap_free(s_snap_t *c)
{
    for (int i = 0; i < c->n; i++)
        free(c->data[i]);
    free(c->name);
    free(c->data);
    free(c->numel);
    free(c->alpha);
    memset(c, 0, sizeof *c);
}

/* Every A and B of `s` equals the snapshot's bit for bit, B after scaling by b_scale. */
static void s_check_same(const char *what, const sd_lora_set_t *s, const s_snap_t *c, float b_scale)
{
    CHECKF(s && s->params.n == c->n, "%s: %d parameters, expected %d", what, s ? s->params.n : -1, c->n);
    if (!s || s->params.n != c->n) return;
    int bad = 0;
    for (int i = 0; i < c->n; i++) {
        const sd_param_t *p = &s->params.p[i];
        if (strcmp(p->name, c->name[i]) || s_numel(p) != c->numel[i]) {
            bad++;
            continue;
        }
        bool is_b = i % 2 == 1;
        for (int64_t k = 0; k < c->numel[i]; k++) {
            float want = is_b ? c->data[i][k] * b_scale : c->data[i][k];
            if (memcmp(&p->data[k], &want, sizeof want)) {
                bad++;
                break;
            }
        }
    }
    CHECKF(bad == 0, "%s: %d of %d tensors differ from the reference", what, bad, c->n);
}

static bool s_contains(const char *hay, const char *needle)
{
    return needle && strstr(hay, needle) != NULL;
}

static const char *s_tmp(const char *name)
{
    static char path[8][4096];
    static int k;
    k = (k + 1) % 8;
    snprintf(path[k], sizeof path[k], "%s/%s", tu_tmpdir(), name);
    return path[k];
}

/* ---- the oracle's LoRA in three layouts ---- */

TEST(lora_io_oracle_layouts_agree)
{
    s_env_t e;
    REQUIRE(s_env_open(&e));
    st_file_t *fx = tu_fixture("oracle/lora_unet.safetensors");
    st_file_t *db = tu_fixture("oracle/dreambooth_unet_te_lora.safetensors");
    REQUIRE(fx && db);
    float *want_unet = tu_load_f32(fx, "noise_pred_scale_1.0", NULL);
    float *want_text = tu_load_f32(db, "f32.encoder_hidden_states", NULL);
    REQUIRE(want_unet && want_text);

    /* peft: two unprefixed files, one per part (the text file is offered both models) */
    sd_lora_set_t *u = NULL, *t = NULL, *none = NULL;
    REQUIRE(sd_lora_load(tu_fixture_path("oracle/lora_unet_weights.safetensors"), e.ctx, e.unet, NULL, NULL, &u,
                         &none) == 0);
    CHECK(u && !none);
    REQUIRE(sd_lora_load(tu_fixture_path("oracle/lora_text_encoder_weights.safetensors"), e.ctx, e.unet, e.clip, NULL,
                         &none, &t) == 0);
    REQUIRE(u && t && !none);
    CHECK_INT_EQ(u->n, 128);
    CHECK_INT_EQ(t->n, 12);
    CHECK(u->rank == 4 && u->alpha == 4.0f && t->rank == 4 && t->alpha == 4.0f);
    s_snap_t su = s_snap(u), stx = s_snap(t);
    float *o = s_unet_out(&e), *ot = s_text_out(&e);
    REQUIRE(o && ot);
    double du = tu_check_close("peft: UNet", o, want_unet, e.n_unet, 1e-4);
    double dt = tu_check_close("peft: text encoder", ot, want_text, e.n_text, 1e-4);
    printf("peft: UNet max abs %.3g, text encoder %.3g\n", du, dt);
    free(o);
    free(ot);
    sd_lora_destroy(&u);
    sd_lora_destroy(&t);

    const char *files[] = {"oracle/lora_kohya.safetensors", "oracle/pytorch_lora_weights.safetensors"};
    const st_lora_layout_t layouts[] = {ST_LORA_KOHYA, ST_LORA_DIFFUSERS};
    for (int f = 0; f < 2; f++) {
        st_file_t *sf = tu_fixture(files[f]);
        REQUIRE(sf);
        st_lora_layouts_t det;
        CHECK(st_lora_detect(sf, &det) == 0);
        CHECK(det.part[ST_LORA_PART_UNET] == layouts[f] && det.part[ST_LORA_PART_TEXT] == layouts[f] &&
              det.unprefixed == ST_LORA_ABSENT);
        st_close(&sf);
        REQUIRE(sd_lora_load(tu_fixture_path(files[f]), e.ctx, e.unet, e.clip, NULL, &u, &t) == 0);
        REQUIRE(u && t);
        CHECK(u->rank == 4 && u->alpha == 4.0f && t->rank == 4 && t->alpha == 4.0f);
        s_check_same(files[f], u, &su, 1.0f);
        s_check_same(files[f], t, &stx, 1.0f);
        o = s_unet_out(&e);
        ot = s_text_out(&e);
        REQUIRE(o && ot);
        du = tu_check_close("UNet", o, want_unet, e.n_unet, 1e-4);
        dt = tu_check_close("text encoder", ot, want_text, e.n_text, 1e-4);
        printf("%s: UNet max abs %.3g, text encoder %.3g\n", st_lora_layout_name(layouts[f]), du, dt);
        free(o);
        free(ot);
        sd_lora_destroy(&u);
        sd_lora_destroy(&t);
    }
    s_snap_free(&su);
    s_snap_free(&stx);
    free(want_unet);
    free(want_text);
    st_close(&fx);
    st_close(&db);
    s_env_close(&e);
}

/* ---- save -> load ---- */

/* Loads the oracle's LoRA (both parts) and gives it `alpha` (per adapter: alpha * (1 + i % 3) if varied). */
static bool s_oracle_sets(s_env_t *e, float alpha, bool varied, sd_lora_set_t **u, sd_lora_set_t **t)
{
    if (sd_lora_load(tu_fixture_path("oracle/lora_kohya.safetensors"), e->ctx, e->unet, e->clip, NULL, u, t))
        return false;
    sd_lora_set_t *sets[2] = {*u, *t};
    for (int s = 0; s < 2; s++) {
        sets[s]->alpha = alpha;
        for (int i = 0; i < sets[s]->n; i++)
            sets[s]->adapters[i].alpha = varied ? alpha * (float)(1 + i % 3) : alpha;
    }
    return true;
}

TEST(lora_io_save_load_round_trips)
{
    s_env_t e;
    REQUIRE(s_env_open(&e));
    const struct {
        float alpha;
        bool varied;
    } cases[] = {{4, false}, {8, false}, {4, true}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        sd_lora_set_t *u, *t;
        REQUIRE(s_oracle_sets(&e, cases[c].alpha, cases[c].varied, &u, &t));
        s_snap_t su = s_snap(u), stx = s_snap(t);
        float *ref_u = s_unet_out(&e), *ref_t = s_text_out(&e);
        REQUIRE(ref_u && ref_t);
        sd_lora_destroy(&u);
        sd_lora_destroy(&t);
        for (int l = 0; l < ST_LORA_LAYOUT_COUNT; l++) {
            char name[64], what[160];
            snprintf(name, sizeof name, "rt_%zu_%s.safetensors", c, st_lora_layout_name((st_lora_layout_t)l));
            snprintf(what, sizeof what, "alpha %g%s, %s", cases[c].alpha, cases[c].varied ? " varied" : "",
                     st_lora_layout_name((st_lora_layout_t)l));
            REQUIRE(s_oracle_sets(&e, cases[c].alpha, cases[c].varied, &u, &t));
            const char *path = s_tmp(name);
            CHECK(sd_lora_save(path, (st_lora_layout_t)l, ST_F32, u, t,
                               (const char *const[]){"booth.base_model", "tiny-sd", NULL}) == 0);
            sd_lora_destroy(&u);
            sd_lora_destroy(&t);

            st_file_t *f = st_open(path);
            REQUIRE(f);
            st_lora_layouts_t det;
            CHECK(st_lora_detect(f, &det) == 0 && det.part[0] == l && det.part[1] == l);
            CHECK(s_contains(st_metadata(f, "format"), "pt"));
            CHECK(s_contains(st_metadata(f, "booth.base_model"), "tiny-sd"));
            CHECK(s_contains(st_metadata(f, "booth.targets"), "[\"to_q\", \"to_k\", \"to_v\", \"to_out.0\"]"));
            CHECK(s_contains(st_metadata(f, "booth.text_encoder.targets"), "\"out_proj\"]"));
            /* diffusers and peft fold alpha / rank into B (their loaders read no alpha) */
            bool fold = l != ST_LORA_KOHYA && (cases[c].alpha != 4 || cases[c].varied);
            CHECKF(fold == (st_metadata(f, "booth.alpha_folded") != NULL), "%s: alpha_folded", what);
            st_close(&f);

            REQUIRE(sd_lora_load(path, e.ctx, e.unet, e.clip, NULL, &u, &t) == 0);
            REQUIRE(u && t);
            float *got_u = s_unet_out(&e), *got_t = s_text_out(&e);
            REQUIRE(got_u && got_t);
            snprintf(what + strlen(what), sizeof what - strlen(what), ": UNet");
            /* 1e-6; folding a factor that is not a power of two (varied alphas: x1.5, x3) rounds B */
            double tol = cases[c].varied && l != ST_LORA_KOHYA ? 1e-5 : 1e-6;
            tu_check_close(what, got_u, ref_u, e.n_unet, tol);
            strcpy(what + strlen(what) - 4, "text");
            tu_check_close(what, got_t, ref_t, e.n_text, tol);
            /* exactness: kohya keeps alphas; uniform alphas leave B alone except the fold (x2: exact) */
            if (l == ST_LORA_KOHYA) {
                s_check_same(what, u, &su, 1.0f);
                for (int i = 0; i < u->n; i++)
                    CHECK(u->adapters[i].alpha == su.alpha[i]);
                CHECK(u->alpha == cases[c].alpha);
            } else if (!cases[c].varied) {
                float scale = cases[c].alpha / 4.0f;
                s_check_same(what, u, &su, scale);
                s_check_same(what, t, &stx, scale);
                CHECK(u->alpha == 4.0f);
            }
            free(got_u);
            free(got_t);
            sd_lora_destroy(&u);
            sd_lora_destroy(&t);
        }
        free(ref_u);
        free(ref_t);
        s_snap_free(&su);
        s_snap_free(&stx);
    }
    s_env_close(&e);
}

TEST(lora_io_half_precision_and_single_part)
{
    s_env_t e;
    REQUIRE(s_env_open(&e));
    sd_lora_set_t *u, *t;
    REQUIRE(s_oracle_sets(&e, 4, false, &u, &t));
    s_snap_t su = s_snap(u);
    /* fp16 kohya file with only the UNet; a text-only diffusers file */
    const char *p16 = s_tmp("unet_f16.safetensors"), *pt = s_tmp("text_only.safetensors");
    CHECK(sd_lora_save(p16, ST_LORA_KOHYA, ST_F16, u, NULL, NULL) == 0);
    CHECK(sd_lora_save(pt, ST_LORA_DIFFUSERS, ST_F32, NULL, t, NULL) == 0);
    CHECK(sd_lora_save(pt, ST_LORA_DIFFUSERS, ST_F32, NULL, NULL, NULL) < 0);
    CHECK(sd_lora_save(pt, ST_LORA_PEFT, ST_I64, u, NULL, NULL) < 0);
    CHECK(sd_lora_save(pt, ST_LORA_PEFT, ST_F32, t, NULL, NULL) < 0); /* a text set passed as the UNet's */
    sd_lora_destroy(&u);
    sd_lora_destroy(&t);

    REQUIRE(sd_lora_load(p16, e.ctx, e.unet, e.clip, NULL, &u, &t) == 0);
    CHECK(u && !t);
    if (u) {
        double worst = 0;
        for (int i = 0; i < su.n; i++)
            for (int64_t k = 0; k < su.numel[i]; k++)
                worst = fmax(worst, fabs(u->params.p[i].data[k] - su.data[i][k]) / (fabs(su.data[i][k]) + 1e-3));
        CHECKF(worst < 1e-3, "fp16 round trip: worst relative error %.3g", worst);
    }
    sd_lora_destroy(&u);
    REQUIRE(sd_lora_load(pt, e.ctx, NULL, e.clip, NULL, &u, &t) == 0);
    CHECK(!u && t && t->n == 12);
    sd_lora_destroy(&t);
    /* a file that adapts only some layers: the others get zero adapters */
    st_file_t *src = tu_fixture("oracle/lora_unet_weights.safetensors");
    REQUIRE(src);
    st_writer_t *w = st_writer_new();
    int kept = 0;
    for (int i = 0; i < st_count(src); i++) {
        const st_tensor_t *x = st_at(src, i);
        if (!strncmp(x->name, "mid_block.", 10) && strstr(x->name, "to_v.")) {
            char key[512];
            snprintf(key, sizeof key, "unet.%s", x->name);
            CHECK(st_writer_add(w, key, x->dtype, x->ndim, x->shape, x->data) == 0);
            kept++;
        }
    }
    const char *pm = s_tmp("mid_only.safetensors");
    CHECK(kept == 4 && st_writer_save(w, pm) == 0); /* attn1 and attn2 of the mid block */
    st_writer_destroy(&w);
    REQUIRE(sd_lora_load(pm, e.ctx, e.unet, e.clip, NULL, &u, &t) == 0);
    REQUIRE(u && !t);
    CHECK_INT_EQ(u->n, 32); /* to_v of every attention */
    for (int i = 0; i < u->n; i++) {
        const sd_param_t *pb = &u->params.p[2 * i + 1];
        bool mid = !strncmp(u->modules[i], "mid_block.", 10);
        const st_tensor_t *x = mid ? st_find(src, pb->name) : NULL;
        CHECK(!mid || x);
        float want = 0; /* the file's first B element, or 0 for a zero adapter */
        if (x) {
            float *all = tu_load_f32(src, pb->name, NULL);
            want = all ? all[0] : NAN;
            free(all);
        }
        CHECK(pb->data[0] == want);
        CHECK((u->params.p[2 * i].data[0] != 0) == mid);
    }
    sd_lora_destroy(&u);
    st_close(&src);
    s_snap_free(&su);
    s_env_close(&e);
}

/* ---- the key table ---- */

TEST(lora_io_key_table_both_ways)
{
    const char *m = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0";
    const char *tm = "text_model.encoder.layers.0.self_attn.q_proj";
    const struct {
        st_lora_layout_t layout;
        st_lora_part_t part;
        st_lora_role_t role;
        const char *module, *key;
    } rows[] = {
        {ST_LORA_PEFT, ST_LORA_PART_UNET, ST_LORA_A, m,
         "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.lora_A.weight"},
        {ST_LORA_PEFT, ST_LORA_PART_TEXT, ST_LORA_B, tm,
         "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight"},
        {ST_LORA_DIFFUSERS, ST_LORA_PART_UNET, ST_LORA_A, m,
         "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.lora.down.weight"},
        {ST_LORA_DIFFUSERS, ST_LORA_PART_TEXT, ST_LORA_B, tm,
         "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.up.weight"},
        {ST_LORA_KOHYA, ST_LORA_PART_UNET, ST_LORA_ALPHA, m,
         "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0.alpha"},
        {ST_LORA_KOHYA, ST_LORA_PART_TEXT, ST_LORA_A, tm,
         "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"},
        {ST_LORA_KOHYA, ST_LORA_PART_UNET, ST_LORA_B, m,
         "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0.lora_up.weight"},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        char key[512], spelled[512];
        CHECK(st_lora_key(key, sizeof key, rows[i].layout, rows[i].part, rows[i].role, rows[i].module) == 0);
        CHECKF(!strcmp(key, rows[i].key), "wrote '%s', expected '%s'", key, rows[i].key);
        st_lora_key_t k;
        CHECKF(st_lora_parse_key(rows[i].key, &k), "cannot parse '%s'", rows[i].key);
        CHECK(st_lora_spell_module(spelled, sizeof spelled, rows[i].layout, rows[i].module) == 0);
        CHECKF(k.layout == rows[i].layout && k.part == rows[i].part && k.role == rows[i].role &&
                   !strcmp(k.module, spelled),
               "'%s' parsed as %s/%s/%d '%s'", rows[i].key, st_lora_layout_name(k.layout), st_lora_part_name(k.part),
               (int)k.role, k.module);
    }
    char key[64];
    CHECK(st_lora_key(key, sizeof key, ST_LORA_DIFFUSERS, ST_LORA_PART_UNET, ST_LORA_ALPHA, "x") < 0);
    CHECK(st_lora_key(key, sizeof key, ST_LORA_PEFT, ST_LORA_UNPREFIXED, ST_LORA_A, "x") < 0);
    CHECK(st_lora_key(key, 8, ST_LORA_PEFT, ST_LORA_PART_UNET, ST_LORA_A, "long_module") < 0);
    /* read-only spellings */
    const struct {
        const char *key;
        st_lora_layout_t layout;
        st_lora_part_t part;
        st_lora_role_t role;
        const char *module;
    } reads[] = {
        {"base_model.model.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.default.weight", ST_LORA_PEFT,
         ST_LORA_UNPREFIXED, ST_LORA_B, "mid_block.attentions.0.transformer_blocks.0.attn2.to_k"},
        {"unet.base_model.model.mid_block.x.lora_A.weight", ST_LORA_PEFT, ST_LORA_PART_UNET, ST_LORA_A, "mid_block.x"},
        {"text_encoder.text_model.a.alpha", ST_LORA_PEFT, ST_LORA_PART_TEXT, ST_LORA_ALPHA, "text_model.a"},
        {"mid_block.x.lora.up.weight", ST_LORA_DIFFUSERS, ST_LORA_UNPREFIXED, ST_LORA_B, "mid_block.x"},
        {"unet.mid_block.x.lora_linear_layer.down.weight", ST_LORA_DIFFUSERS, ST_LORA_PART_UNET, ST_LORA_A,
         "mid_block.x"},
    };
    for (size_t i = 0; i < sizeof reads / sizeof reads[0]; i++) {
        st_lora_key_t k;
        CHECKF(st_lora_parse_key(reads[i].key, &k) && k.layout == reads[i].layout && k.part == reads[i].part &&
                   k.role == reads[i].role && !strcmp(k.module, reads[i].module),
               "'%s' misparsed", reads[i].key);
    }
    const char *junk[] = {"lora_unet_a.b.lora_down.weight",
                          "lora_te2_x.lora_down.weight",
                          ".lora_A.weight",
                          "unet..lora_A.weight",
                          "model.diffusion_model.input_blocks.0.0.weight",
                          "lora_A.weight",
                          "unet.x.lora_A.bias",
                          ""};
    for (size_t i = 0; i < sizeof junk / sizeof junk[0]; i++) {
        st_lora_key_t k;
        CHECKF(!st_lora_parse_key(junk[i], &k), "'%s' should not parse", junk[i]);
    }
    st_lora_layout_t l;
    CHECK(st_lora_layout_parse("kohya", &l) == 0 && l == ST_LORA_KOHYA);
    CHECK(st_lora_layout_parse("lycoris", &l) < 0);
}

/* ---- hostile files ---- */

typedef struct {
    const char *name;
    st_dtype_t dtype;
    int ndim;
    int64_t shape[2];
    float value; /* every element (alpha entries: the alpha) */
} s_entry_t;

#define S_UQ "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
#define S_UK "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k"
#define S_KQ "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"

static int s_write_entries(const char *path, const s_entry_t *e, const char *const *meta)
{
    static float buf[4096];
    int64_t big[512];
    st_writer_t *w = st_writer_new();
    int rc = 0;
    for (; e && e->name && !rc; e++) {
        int64_t n = 1;
        for (int d = 0; d < e->ndim; d++)
            n *= e->shape[d];
        if (n > 4096) return -1;
        if (e->dtype == ST_I64) {
            for (int64_t k = 0; k < n && k < 512; k++)
                big[k] = 1;
            rc = st_writer_add_copy(w, e->name, ST_I64, e->ndim, e->shape, big);
        } else {
            for (int64_t k = 0; k < n; k++)
                buf[k] = e->value;
            rc = st_writer_add_f32_as(w, e->name, e->dtype, e->ndim, e->shape, buf);
        }
    }
    for (int i = 0; meta && meta[i]; i += 2)
        st_writer_set_metadata(w, meta[i], meta[i + 1]);
    if (!rc) rc = st_writer_save(w, path);
    st_writer_destroy(&w);
    return rc;
}

static void s_quiet(bt_log_level_t level, const char *msg, void *user)
{
    (void)level, (void)msg, (void)user; /* the test reads bt_log_last_error() instead */
}

TEST(lora_io_hostile_files_fail_cleanly)
{
    s_env_t e;
    REQUIRE(s_env_open(&e));
    const float A = 0.01f;
    const struct {
        const char *file, *expect; /* expect: a substring of the error besides the path */
        s_entry_t entries[4];
        const char *meta[4];
        bool no_clip;
    } cases[] = {
        {.file = "a_without_b",
         .expect = "unet." S_UQ ".lora_A.weight",
         .entries = {{"unet." S_UQ ".lora_A.weight", ST_F32, 2, {4, 32}, A}}},
        {.file = "b_without_a",
         .expect = S_KQ ".lora_up.weight",
         .entries = {{S_KQ ".lora_up.weight", ST_F32, 2, {32, 4}, A}}},
        {.file = "alpha_only", .expect = S_KQ ".alpha", .entries = {{S_KQ ".alpha", ST_F32, 0, {0}, 4}}},
        {.file = "rank_mismatch",
         .expect = "unet." S_UK ".lora_A.weight",
         .entries = {{"unet." S_UQ ".lora_A.weight", ST_F32, 2, {4, 32}, A},
                     {"unet." S_UQ ".lora_B.weight", ST_F32, 2, {32, 4}, A},
                     {"unet." S_UK ".lora_A.weight", ST_F32, 2, {2, 32}, A},
                     {"unet." S_UK ".lora_B.weight", ST_F32, 2, {32, 2}, A}}},
        {.file = "unknown_module",
         .expect = "unet.down_blocks.0.attentions.0.proj_in.lora_A.weight",
         .entries = {{"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight", ST_F32, 2, {4, 32}, A},
                     {"unet.down_blocks.0.attentions.0.proj_in.lora_B.weight", ST_F32, 2, {32, 4}, A}}},
        {.file = "not_lora",
         .expect = "model.diffusion_model.out.0.weight",
         .entries = {{"model.diffusion_model.out.0.weight", ST_F32, 1, {4}, A}}},
        {.file = "kohya_sdxl",
         .expect = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
         .entries =
             {{"lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight", ST_F16, 2, {4, 640}, A},
              {"lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_up.weight", ST_F16, 2, {640, 4}, A},
              {"lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.alpha", ST_F16, 0, {0}, 4}}},
        {.file = "kohya_sd15_dims",
         .expect = S_KQ ".lora_down.weight",
         .entries = {{S_KQ ".lora_down.weight", ST_F16, 2, {4, 320}, A},
                     {S_KQ ".lora_up.weight", ST_F16, 2, {320, 4}, A},
                     {S_KQ ".alpha", ST_F16, 0, {0}, 4}}},
        {.file = "kohya_te2",
         .expect = "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight",
         .entries = {{"lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight", ST_F32, 2, {4, 32}, A},
                     {"lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight", ST_F32, 2, {32, 4}, A}}},
        {.file = "b_wrong_shape",
         .expect = S_KQ ".lora_up.weight",
         .entries = {{S_KQ ".lora_down.weight", ST_F32, 2, {4, 32}, A},
                     {S_KQ ".lora_up.weight", ST_F32, 2, {33, 4}, A}}},
        {.file = "a_3d",
         .expect = S_KQ ".lora_down.weight",
         .entries = {{S_KQ ".lora_down.weight", ST_F32, 1, {128}, A}, {S_KQ ".lora_up.weight", ST_F32, 2, {32, 4}, A}}},
        {.file = "alpha_negative",
         .expect = S_KQ ".alpha",
         .entries = {{S_KQ ".lora_down.weight", ST_F32, 2, {4, 32}, A},
                     {S_KQ ".lora_up.weight", ST_F32, 2, {32, 4}, A},
                     {S_KQ ".alpha", ST_F32, 0, {0}, -4}}},
        {.file = "alpha_vector",
         .expect = S_KQ ".alpha",
         .entries = {{S_KQ ".lora_down.weight", ST_F32, 2, {4, 32}, A},
                     {S_KQ ".lora_up.weight", ST_F32, 2, {32, 4}, A},
                     {S_KQ ".alpha", ST_F32, 1, {2}, 4}}},
        {.file = "alpha_nan",
         .expect = S_KQ ".alpha",
         .entries = {{S_KQ ".lora_down.weight", ST_F32, 2, {4, 32}, A},
                     {S_KQ ".lora_up.weight", ST_F32, 2, {32, 4}, A},
                     {S_KQ ".alpha", ST_F32, 0, {0}, NAN}}},
        {.file = "alpha_huge", /* a kohya alpha of 1e30 scales every update out of range */
         .expect = S_KQ ".alpha",
         .entries = {{S_KQ ".lora_down.weight", ST_F32, 2, {4, 32}, A},
                     {S_KQ ".lora_up.weight", ST_F32, 2, {32, 4}, A},
                     {S_KQ ".alpha", ST_F32, 0, {0}, 1e30f}}},
        {.file = "weights_nan",
         .expect = S_KQ ".lora_up.weight",
         .entries = {{S_KQ ".lora_down.weight", ST_F32, 2, {4, 32}, A}, {S_KQ ".lora_up.weight", ST_F32, 2, {32, 4}, NAN}}},
        {.file = "weights_inf",
         .expect = S_KQ ".lora_down.weight",
         .entries = {{S_KQ ".lora_down.weight", ST_F16, 2, {4, 32}, INFINITY},
                     {S_KQ ".lora_up.weight", ST_F16, 2, {32, 4}, A}}},
        {.file = "int_weights",
         .expect = S_KQ ".lora_down.weight",
         .entries = {{S_KQ ".lora_down.weight", ST_I64, 2, {4, 32}, A},
                     {S_KQ ".lora_up.weight", ST_F32, 2, {32, 4}, A}}},
        {.file = "meta_rank",
         .expect = S_KQ ".lora_down.weight",
         .entries = {{S_KQ ".lora_down.weight", ST_F32, 2, {4, 32}, A},
                     {S_KQ ".lora_up.weight", ST_F32, 2, {32, 4}, A}},
         .meta = {"booth.rank", "8", NULL}},
        {.file = "meta_alpha",
         .expect = "booth.alpha",
         .entries = {{S_KQ ".lora_down.weight", ST_F32, 2, {4, 32}, A},
                     {S_KQ ".lora_up.weight", ST_F32, 2, {32, 4}, A}},
         .meta = {"booth.alpha", "four", NULL}},
        {.file = "mixed_layouts",
         .expect = "unet." S_UK ".lora.down.weight",
         .entries = {{"unet." S_UQ ".lora_A.weight", ST_F32, 2, {4, 32}, A},
                     {"unet." S_UQ ".lora_B.weight", ST_F32, 2, {32, 4}, A},
                     {"unet." S_UK ".lora.down.weight", ST_F32, 2, {4, 32}, A},
                     {"unet." S_UK ".lora.up.weight", ST_F32, 2, {32, 4}, A}}},
        {.file = "duplicate",
         .expect = "unet." S_UQ ".lora_A.default.weight",
         .entries = {{"unet." S_UQ ".lora_A.weight", ST_F32, 2, {4, 32}, A},
                     {"unet." S_UQ ".lora_B.weight", ST_F32, 2, {32, 4}, A},
                     {"unet." S_UQ ".lora_A.default.weight", ST_F32, 2, {4, 32}, A}}},
        {.file = "no_entries", .expect = "no LoRA entries", .entries = {{NULL}}, .meta = {"format", "pt", NULL}},
        {.file = "text_without_clip",
         .expect = "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight",
         .entries = {{"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight", ST_F32, 2, {4, 32}, A},
                     {"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight", ST_F32, 2, {32, 4}, A}},
         .no_clip = true},
    };
    bt_log_set_sink(s_quiet, NULL);
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        char name[128];
        snprintf(name, sizeof name, "hostile_%s.safetensors", cases[c].file);
        const char *path = s_tmp(name);
        CHECKF(s_write_entries(path, cases[c].entries, cases[c].meta) == 0, "%s: writing", cases[c].file);
        static sd_lora_set_t sentinel;
        sd_lora_set_t *u = &sentinel, *t = &sentinel; /* must come back NULL */
        int rc = sd_lora_load(path, e.ctx, e.unet, cases[c].no_clip ? NULL : e.clip, NULL, &u, &t);
        const char *err = bt_log_last_error();
        CHECKF(rc < 0 && !u && !t, "%s: rc %d", cases[c].file, rc);
        printf("%-18s %s\n", cases[c].file, err);
        CHECKF(s_contains(err, path) && s_contains(err, cases[c].expect), "%s: error '%s' should name '%s'",
               cases[c].file, err, cases[c].expect);
    }

    /* truncated, empty and missing files */
    FILE *src = fopen(tu_fixture_path("oracle/lora_kohya.safetensors"), "rb");
    REQUIRE(src);
    static char bytes[1 << 20];
    size_t n = fread(bytes, 1, sizeof bytes, src);
    fclose(src);
    const size_t cuts[] = {n * 6 / 10, 100, 7, 0};
    for (size_t c = 0; c < sizeof cuts / sizeof cuts[0]; c++) {
        const char *path = s_tmp("truncated.safetensors");
        FILE *o = fopen(path, "wb");
        REQUIRE(o);
        fwrite(bytes, 1, cuts[c], o);
        fclose(o);
        sd_lora_set_t *u, *t;
        CHECKF(sd_lora_load(path, e.ctx, e.unet, e.clip, NULL, &u, &t) < 0 && !u && !t, "cut at %zu", cuts[c]);
        CHECKF(s_contains(bt_log_last_error(), path), "cut at %zu: '%s'", cuts[c], bt_log_last_error());
    }
    sd_lora_set_t *u, *t;
    const char *missing = s_tmp("missing.safetensors");
    CHECK(sd_lora_load(missing, e.ctx, e.unet, e.clip, NULL, &u, &t) < 0);
    CHECK(s_contains(bt_log_last_error(), missing));

    /* nothing stayed attached: the good file loads, and loading it twice is refused */
    const char *good = tu_fixture_path("oracle/lora_kohya.safetensors");
    REQUIRE(sd_lora_load(good, e.ctx, e.unet, e.clip, NULL, &u, &t) == 0);
    sd_lora_set_t *u2, *t2;
    CHECK(sd_lora_load(good, e.ctx, e.unet, e.clip, NULL, &u2, &t2) < 0 && !u2 && !t2);
    CHECK(s_contains(bt_log_last_error(), "already has LoRA adapters"));
    bt_log_set_sink(NULL, NULL);
    sd_lora_destroy(&u);
    sd_lora_destroy(&t);
    s_env_close(&e);
}

/* ---- files for scripts/check_lora_interop.py ---- */

/* Not a test: an exporter for scripts/check_lora_interop.py, registered only when
 * BOOTH_LORA_EXPORT_DIR names where to write (a plain run has nothing to check). */
static void s_export_for_interop(void);
__attribute__((constructor)) static void s_register_export(void)
{
    const char *dir = getenv("BOOTH_LORA_EXPORT_DIR");
    if (dir && *dir) bt_test_register("lora_io_export_for_interop", __FILE__, s_export_for_interop, 300);
}

static void s_export_for_interop(void)
{
    const char *dir = getenv("BOOTH_LORA_EXPORT_DIR");
    s_env_t e;
    REQUIRE(s_env_open(&e));
    st_writer_t *w = st_writer_new();
    REQUIRE(w);
    /* variants: the oracle's alpha 4; alpha 8 (kohya keeps it, diffusers folds it); per-adapter alphas */
    const struct {
        const char *name;
        float alpha;
        bool varied;
    } variants[] = {{"alpha4", 4, false}, {"alpha8", 8, false}, {"varied", 4, true}};
    for (size_t v = 0; v < sizeof variants / sizeof variants[0]; v++) {
        sd_lora_set_t *u, *t;
        REQUIRE(s_oracle_sets(&e, variants[v].alpha, variants[v].varied, &u, &t));
        float *ou = s_unet_out(&e), *ot = s_text_out(&e);
        REQUIRE(ou && ot);
        char key[256], path[4096];
        snprintf(key, sizeof key, "%s.unet", variants[v].name);
        CHECK(st_writer_add_copy(w, key, ST_F32, 4, (int64_t[]){3, 4, 16, 16}, ou) == 0);
        snprintf(key, sizeof key, "%s.text", variants[v].name);
        CHECK(st_writer_add_copy(w, key, ST_F32, 3, (int64_t[]){2, 77, 32}, ot) == 0);
        for (int l = 0; l < ST_LORA_LAYOUT_COUNT; l++) {
            snprintf(path, sizeof path, "%s/%s_%s.safetensors", dir, variants[v].name,
                     st_lora_layout_name((st_lora_layout_t)l));
            CHECK(sd_lora_save(path, (st_lora_layout_t)l, ST_F32, u, t, NULL) == 0);
        }
        free(ou);
        free(ot);
        sd_lora_destroy(&u);
        sd_lora_destroy(&t);
    }
    /* the inputs, as the script feeds them to diffusers */
    CHECK(st_writer_add_copy(w, "input.sample", ST_F32, 4, (int64_t[]){3, 4, 16, 16}, e.sample) == 0);
    int64_t ts[3] = {(int64_t)e.t[0], (int64_t)e.t[1], (int64_t)e.t[2]};
    CHECK(st_writer_add_copy(w, "input.timestep", ST_I64, 1, (int64_t[]){3}, ts) == 0);
    CHECK(st_writer_add_copy(w, "input.encoder_hidden_states", ST_F32, 3, (int64_t[]){3, 77, 32}, e.ehs) == 0);
    CHECK(st_writer_add_copy(w, "input.ids", ST_I32, 2, (int64_t[]){2, 77}, e.ids) == 0);
    char path[4096];
    snprintf(path, sizeof path, "%s/booth_outputs.safetensors", dir);
    CHECK(st_writer_save(w, path) == 0);
    st_writer_destroy(&w);
    printf("exported to %s\n", dir);
    s_env_close(&e);
}
