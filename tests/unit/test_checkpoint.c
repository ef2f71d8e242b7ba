/*
 * test_checkpoint.c — checkpoints and prior sets on the tiny model: a trainer
 * written and read back continues to the same bytes as one that never stopped;
 * resume refuses another model, job or data set and then leaves the trainer as
 * it was; checkpoint rotation and "latest"; prior-set generation is a function
 * of the index range, parts and reruns give the same file, and a prior set
 * trains like the same images as PNG files; the model hash follows the files.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/fileio.h"
#include "common/hash.h"
#include "common/image.h"
#include "common/log.h"
#include "common/status.h"
#include "diffusion/checkpoint.h"
#include "diffusion/lora_io.h"
#include "diffusion/model_hash.h"
#include "diffusion/priors.h"
#include "storage/h5.h"
#include "storage/png.h"
#include "testutil.h"

/* A small subject: coloured discs on plain backgrounds. */
static void s_make_subject(const char *dir, int n, unsigned tint)
{
    char path[600];
    bt_mkdirs(dir);
    for (int i = 0; i < n; i++) {
        bt_img_t *img = bt_img_new(72 + 8 * i, 64, 3);
        bt_img_fill(img, 0x80a0c0u + 0x101010u * (unsigned)i + tint);
        for (int y = 0; y < 64; y++)
            for (int x = 0; x < img->width; x++)
                if ((x - 30) * (x - 30) + (y - 32) * (y - 32) < 300) bt_img_fill_rect(img, x, y, 1, 1, 0xd02020u);
        snprintf(path, sizeof path, "%s/subject-%d.png", dir, i);
        CHECK(st_png_write(path, img, NULL, 0) == 0);
        bt_img_destroy(&img);
    }
}

typedef struct {
    char dir[512], inst[600], cls[600], model[512];
    sd_train_config_t cfg;
} s_job_t;

static void s_job(s_job_t *j, bool prior)
{
    memset(j, 0, sizeof *j);
    snprintf(j->dir, sizeof j->dir, "%s", tu_tmpdir());
    snprintf(j->inst, sizeof j->inst, "%s/instance", j->dir);
    snprintf(j->cls, sizeof j->cls, "%s/class.h5", j->dir);
    snprintf(j->model, sizeof j->model, "%s", tu_fixture_path("tiny-sd"));
    struct stat st;
    if (stat(j->inst, &st) != 0) s_make_subject(j->inst, 3, 0);
    sd_train_config_defaults(&j->cfg);
    sd_train_config_t *c = &j->cfg;
    c->model_dir = j->model;
    c->instance_dir = j->inst;
    c->instance_prompt = "a photo of sks toy";
    c->class_dir = j->cls;
    c->class_prompt = "a photo of toy";
    c->prior_preservation = prior;
    c->num_class_images = 2;
    c->class_steps = 2;
    c->resolution = 64;
    c->max_train_steps = 6;
    c->learning_rate = 1e-2f;
    c->train_text_encoder = true;
    c->random_flip = true;
    c->seed = 21;
}

/* A trainer and the optimizer over its LoRA: `booth train` in one process. */
typedef struct {
    sd_trainer_t *t;
    sd_optim_t *o;
} s_tr_t;

static void s_destroy(s_tr_t **pt)
{
    if (!*pt) return;
    sd_optim_destroy(&(*pt)->o);
    sd_trainer_destroy(&(*pt)->t);
    free(*pt);
    *pt = NULL;
}

static s_tr_t *s_trainer(nn_ctx_t *ctx, const sd_train_config_t *c)
{
    sd_model_t *m = sd_model_load(ctx, c->model_dir, SD_PART_ALL);
    if (m && c->prior_preservation &&
        sd_class_images_ensure(m, c->class_dir, c->class_prompt, c->num_class_images, c->resolution, c->seed,
                               c->class_steps, c->class_guidance, NULL, NULL) < 0)
        sd_model_destroy(&m);
    s_tr_t *r = calloc(1, sizeof *r);
    if (!m || !r || !(r->t = sd_trainer_new(&m, c, NULL, NULL)) || !(r->o = sd_trainer_optim(r->t))) {
        sd_model_destroy(&m);
        s_destroy(&r);
    }
    return r;
}

static int s_steps(s_tr_t *t, int n, sd_train_history_t *h)
{
    for (int i = 0; i < n; i++) {
        sd_step_stats_t st;
        int rc = sd_trainer_step(t->t, t->o, &st);
        if (rc || (h && (rc = sd_history_push(h, &st, 0.5)))) return rc;
    }
    return BT_OK;
}

static int s_save(const char *path, const s_tr_t *t, const sd_model_ids_t *ids, const sd_train_history_t *h,
                  const char *reuse)
{
    sd_ckpt_data_t d;
    sd_trainer_ckpt_data(t->t, ids, &d);
    return sd_checkpoint_save(path, t->o, &d, h, reuse);
}

static int s_resume(const char *path, s_tr_t *t, const sd_model_ids_t *ids, sd_train_history_t *h)
{
    sd_ckpt_data_t d;
    sd_trainer_ckpt_data(t->t, ids, &d);
    return sd_checkpoint_resume(path, t->o, &d, h);
}

static bool s_same_state(const s_tr_t *a, const s_tr_t *b)
{
    if (a->o->n != b->o->n) return false;
    for (int i = 0; i < a->o->n; i++) {
        const sd_optim_tensor_t *x = &a->o->t[i], *y = &b->o->t[i];
        size_t bytes = (size_t)x->numel * sizeof(float);
        if (x->numel != y->numel || memcmp(x->p, y->p, bytes) || memcmp(x->m, y->m, bytes) ||
            memcmp(x->v, y->v, bytes))
            return false;
    }
    return a->o->step == b->o->step;
}

/* Stop after 3 steps, write, read into a fresh trainer, go on: the same bytes as 6 steps straight. */
TEST_TIMEOUT(checkpoint_resume_is_byte_identical, 600)
{
    s_job_t j;
    s_job(&j, true);
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    REQUIRE(ctx);
    sd_model_ids_t ids;
    REQUIRE(sd_model_ids(j.model, &ids) == 0);
    s_tr_t *a = s_trainer(ctx, &j.cfg), *b = s_trainer(ctx, &j.cfg);
    REQUIRE(a && b);
    sd_train_history_t ha = {0}, hb = {0};
    REQUIRE(s_steps(a, 6, &ha) == 0);
    REQUIRE(s_steps(b, 3, &hb) == 0);
    char path[600];
    snprintf(path, sizeof path, "%s/checkpoint-3.h5", j.dir);
    REQUIRE(s_save(path, b, &ids, &hb, NULL) == 0);
    s_destroy(&b);

    s_tr_t *c = s_trainer(ctx, &j.cfg);
    REQUIRE(c);
    sd_train_history_t hc = {0};
    REQUIRE(s_resume(path, c, &ids, &hc) == 0);
    CHECK_INT_EQ(c->o->step, 3);
    CHECK_INT_EQ(hc.n, 3);
    for (int i = 0; i < 3; i++) CHECK(hc.loss[i] == ha.loss[i] && hc.grad_norm[i] == ha.grad_norm[i]);
    REQUIRE(s_steps(c, 3, &hc) == 0);
    CHECK(s_same_state(a, c));
    for (int i = 0; i < 6; i++)
        CHECKF(hc.loss[i] == ha.loss[i], "step %d: loss %.9g vs %.9g", i + 1, hc.loss[i], ha.loss[i]);

    /* the same file written twice is the same bytes (the history's seconds are the only clock) */
    char p1[600], p2[600];
    snprintf(p1, sizeof p1, "%s/x1.h5", j.dir);
    snprintf(p2, sizeof p2, "%s/x2.h5", j.dir);
    REQUIRE(s_save(p1, a, &ids, &ha, NULL) == 0 && s_save(p2, a, &ids, &ha, NULL) == 0);
    char *d1, *d2;
    size_t l1, l2;
    REQUIRE(bt_read_file(p1, &d1, &l1) == 0 && bt_read_file(p2, &d2, &l2) == 0);
    CHECK(l1 == l2 && !memcmp(d1, d2, l1));
    free(d1);
    free(d2);
    /* with the images copied from the step-3 checkpoint: the same arrays */
    char p3[600];
    snprintf(p3, sizeof p3, "%s/x3.h5", j.dir);
    REQUIRE(s_save(p3, a, &ids, &ha, path) == 0);
    st_h5_file_t *f1 = st_h5_open(p1), *f3 = st_h5_open(p3);
    REQUIRE(f1 && f3);
    const char *arrays[] = {"prior/images",
                            "prior/latent_mean",
                            "prior/latent_logvar_flip",
                            "instance/images",
                            "instance/latent_mean_flip",
                            "prior/index",
                            "lora/unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_v.lora_B.weight"};
    for (int i = 0; i < 7; i++) {
        st_h5_info_t i1, i3;
        REQUIRE(st_h5_info(f1, arrays[i], &i1) == 0 && st_h5_info(f3, arrays[i], &i3) == 0);
        CHECK(i1.numel == i3.numel && i1.dtype == i3.dtype);
        double *x1 = malloc((size_t)i1.numel * sizeof(double)), *x3 = malloc((size_t)i1.numel * sizeof(double));
        st_h5_dtype_t dt = i1.dtype == ST_H5_U8 || i1.dtype == ST_H5_I64 ? ST_H5_I64 : ST_H5_F64;
        REQUIRE(x1 && x3);
        REQUIRE(st_h5_read(f1, arrays[i], dt, i1.ndim, i1.shape, x1) == 0);
        REQUIRE(st_h5_read(f3, arrays[i], dt, i3.ndim, i1.shape, x3) == 0);
        CHECKF(!memcmp(x1, x3, (size_t)i1.numel * sizeof(double)), "%s differs", arrays[i]);
        free(x1);
        free(x3);
    }
    st_h5_close(&f1);
    st_h5_close(&f3);

    /* export == what the trainer itself writes */
    char e1[600], e2[600];
    snprintf(e1, sizeof e1, "%s/trainer.safetensors", j.dir);
    snprintf(e2, sizeof e2, "%s/export.safetensors", j.dir);
    const char *meta[] = {"booth.base_model", j.model, NULL};
    for (int layout = 0; layout < ST_LORA_LAYOUT_COUNT; layout++) {
        REQUIRE(sd_lora_save(e1, (st_lora_layout_t)layout, ST_F16, a->t->lora_unet, a->t->lora_text, meta) == 0);
        REQUIRE(sd_checkpoint_export(p1, e2, (st_lora_layout_t)layout, ST_F16) == 0);
        REQUIRE(bt_read_file(e1, &d1, &l1) == 0 && bt_read_file(e2, &d2, &l2) == 0);
        CHECKF(l1 == l2 && !memcmp(d1, d2, l1), "layout %s differs", st_lora_layout_name((st_lora_layout_t)layout));
        free(d1);
        free(d2);
    }
    sd_history_free(&ha);
    sd_history_free(&hb);
    sd_history_free(&hc);
    s_destroy(&a);
    s_destroy(&c);
    nn_ctx_destroy(&ctx);
}

static bool s_same_set(const sd_image_set_t *a, const sd_image_set_t *b)
{
    size_t per = (size_t)(a->C * a->h * a->w) * sizeof(float), npix = (size_t)a->res * (size_t)a->res * 3;
    if (a->n != b->n || a->C != b->C || a->h != b->h || a->res != b->res || !!a->mean_f != !!b->mean_f) return false;
    return !memcmp(a->pixels, b->pixels, a->n * npix) && !memcmp(a->mean, b->mean, a->n * per) &&
           !memcmp(a->logvar, b->logvar, a->n * per) &&
           (!a->mean_f || (!memcmp(a->mean_f, b->mean_f, a->n * per) && !memcmp(a->logvar_f, b->logvar_f, a->n * per)));
}

/* The image sets a checkpoint or a cluster job's data file stores load back as the very numbers the
 * run encoded (latents and mirrored latents as stored, nothing encoded again), and a trainer built on
 * them computes the same step. */
TEST_TIMEOUT(checkpoint_image_sets_load_as_encoded, 600)
{
    s_job_t j;
    s_job(&j, true);
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    REQUIRE(ctx);
    sd_model_ids_t ids;
    REQUIRE(sd_model_ids(j.model, &ids) == 0);
    s_tr_t *a = s_trainer(ctx, &j.cfg);
    REQUIRE(a);
    char ck[600], data[600];
    snprintf(ck, sizeof ck, "%s/checkpoint-0.h5", j.dir);
    snprintf(data, sizeof data, "%s/data.h5", j.dir);
    REQUIRE(s_save(ck, a, &ids, NULL, NULL) == 0);
    sd_ckpt_data_t d;
    sd_trainer_ckpt_data(a->t, &ids, &d);
    REQUIRE(sd_job_data_write(data, &d) == 0);
    const char *files[2] = {ck, data};
    for (int f = 0; f < 2; f++) {
        sd_image_set_t in, cl;
        REQUIRE(sd_image_set_load_h5(&in, a->t->model, files[f], "instance", 64, true, 0, NULL, NULL) == 0);
        REQUIRE(sd_image_set_load_h5(&cl, a->t->model, files[f], "prior", 64, true, 0, NULL, NULL) == 0);
        CHECKF(s_same_set(&in, &a->t->instances), "%s: instance set differs", files[f]);
        CHECKF(s_same_set(&cl, &a->t->classes), "%s: class set differs", files[f]);
        sd_image_set_free(&in);
        sd_image_set_free(&cl);
    }
    /* a trainer on the data file: the same steps */
    sd_train_config_t c = j.cfg;
    c.instance_dir = data;
    c.class_dir = data;
    sd_model_t *m = sd_model_load(ctx, c.model_dir, SD_PART_ALL); /* as a worker does: no class-image check */
    s_tr_t *b = calloc(1, sizeof *b);
    REQUIRE(m && b && (b->t = sd_trainer_new(&m, &c, NULL, NULL)) && (b->o = sd_trainer_optim(b->t)));
    REQUIRE(s_steps(a, 2, NULL) == 0 && s_steps(b, 2, NULL) == 0);
    CHECK(s_same_state(a, b));
    s_destroy(&a);
    s_destroy(&b);
    nn_ctx_destroy(&ctx);
}

/* Another model, job or data set: refused in one line, and the trainer is untouched. */
TEST_TIMEOUT(checkpoint_resume_refuses_mismatches, 600)
{
    s_job_t j;
    s_job(&j, false);
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    REQUIRE(ctx);
    sd_model_ids_t ids;
    REQUIRE(sd_model_ids(j.model, &ids) == 0);
    s_tr_t *a = s_trainer(ctx, &j.cfg);
    REQUIRE(a);
    REQUIRE(s_steps(a, 2, NULL) == 0);
    char path[600];
    snprintf(path, sizeof path, "%s/ck.h5", j.dir);
    REQUIRE(s_save(path, a, &ids, NULL, NULL) == 0); /* no history: NaN rows */

    bt_log_set_level(BT_LOG_ERROR);
    struct {
        const char *what, *want;
        void (*edit)(sd_train_config_t *);
    } cases[] = {
        {"snr gamma", "--snr-gamma 0, this run has 5", NULL},
        {"text encoder", "--train-text-encoder true, this run has false", NULL},
        {"instance prompt", "--instance-prompt \"a photo of sks toy\", this run has \"a sks toy\"", NULL},
        {"seed", "--seed 21, this run has 22", NULL},
    };
    for (int i = 0; i < 4; i++) {
        sd_train_config_t c = j.cfg;
        if (i == 0) c.snr_gamma = 5;
        if (i == 1) c.train_text_encoder = false;
        if (i == 2) c.instance_prompt = "a sks toy";
        if (i == 3) c.seed = 22;
        s_tr_t *b = s_trainer(ctx, &c);
        REQUIRE(b);
        s_tr_t *fresh = s_trainer(ctx, &c);
        REQUIRE(fresh);
        CHECKF(s_resume(path, b, &ids, NULL) == BT_EINVAL, "%s accepted", cases[i].what);
        CHECKF(strstr(bt_log_last_error(), cases[i].want) != NULL, "%s: '%s'", cases[i].what, bt_log_last_error());
        CHECK(s_same_state(b, fresh));
        s_destroy(&b);
        s_destroy(&fresh);
    }
    /* a different base model (hash), other instance images */
    sd_model_ids_t other = ids;
    other.model[0] = other.model[0] == '0' ? '1' : '0';
    s_tr_t *b = s_trainer(ctx, &j.cfg);
    REQUIRE(b);
    CHECK(s_resume(path, b, &other, NULL) == BT_EINVAL);
    CHECK(strstr(bt_log_last_error(), "base model has content hash"));
    s_destroy(&b);
    char inst2[700];
    snprintf(inst2, sizeof inst2, "%s/instance2", j.dir);
    s_make_subject(inst2, 3, 0x010101u);
    sd_train_config_t c = j.cfg;
    c.instance_dir = inst2;
    REQUIRE((b = s_trainer(ctx, &c)));
    CHECK(s_resume(path, b, &ids, NULL) == BT_EINVAL);
    CHECK(strstr(bt_log_last_error(), "resume needs the same --instance-data-dir"));
    CHECK_INT_EQ(b->o->step, 0);
    s_destroy(&b);
    /* a learning-rate schedule that depends on the total makes --max-train-steps part of the job */
    c = j.cfg;
    c.max_train_steps = 9;
    REQUIRE((b = s_trainer(ctx, &c)));
    CHECK(s_resume(path, b, &ids, NULL) == 0); /* constant lr: a longer run may go on */
    CHECK_INT_EQ(b->o->step, 2);
    s_destroy(&b);
    s_destroy(&a);
    nn_ctx_destroy(&ctx);
}

TEST(checkpoint_latest_and_prune)
{
    char dir[600], path[700];
    snprintf(dir, sizeof dir, "%s/run", tu_tmpdir());
    REQUIRE(bt_mkdirs(dir) == 0);
    CHECK(sd_checkpoint_latest(dir, path, sizeof path) == 0);
    /* a writer that is gone: a child that has exited */
    pid_t gone = fork();
    if (gone == 0) _exit(0);
    REQUIRE(gone > 0);
    waitpid(gone, NULL, 0);
    char dead[64];
    snprintf(dead, sizeof dead, "checkpoint-99.h5.tmp.%ld", (long)gone);
    const char *names[] = {"checkpoint-1.h5", "checkpoint-10.h5", "checkpoint-2.h5", "checkpoint-3.h5",
                           dead, "checkpoint-x.h5", "checkpoint-7.h5.bak", "checkpoint-11.h5.tmp.1"};
    for (int i = 0; i < 8; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        FILE *f = fopen(path, "w");
        REQUIRE(f);
        fclose(f);
    }
    CHECK(sd_checkpoint_latest(dir, path, sizeof path) == 1);
    size_t pl = strlen(path);
    CHECKF(pl > 17 && !strcmp(path + pl - 17, "/checkpoint-10.h5"), "latest: %s", path);
    REQUIRE(sd_checkpoint_prune(dir, 2) == 0);
    const bool kept[] = {false, true, false, true, false, true, true, true}; /* pid 1 is alive: not ours to judge */
    for (int i = 0; i < 8; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        CHECKF((access(path, F_OK) == 0) == kept[i], "%s %s", names[i], kept[i] ? "deleted" : "kept");
    }
}

/* Image i is the same whichever range it is generated in; the set's latents are what training encodes. */
TEST_TIMEOUT(priors_are_a_function_of_the_index, 600)
{
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    REQUIRE(ctx);
    sd_model_t *m = sd_model_load(ctx, tu_fixture_path("tiny-sd"), SD_PART_ALL);
    REQUIRE(m);
    sd_prior_spec_t spec = {.prompt = "a photo of toy", .seed = 3, .steps = 2, .guidance = 7.5f, .resolution = 64};
    int64_t npix = 64 * 64 * 3, per = 4 * 8 * 8;
    uint8_t *all = malloc((size_t)(3 * npix)), *one = malloc((size_t)npix);
    float *mean = malloc((size_t)(3 * per) * sizeof(float)), *logvar = malloc((size_t)(3 * per) * sizeof(float));
    float *m1 = malloc((size_t)per * sizeof(float)), *l1 = malloc((size_t)per * sizeof(float));
    REQUIRE(all && one && mean && logvar && m1 && l1);
    REQUIRE(sd_priors_generate(m, &spec, 0, 3, all, mean, logvar, NULL, NULL) == 0);
    REQUIRE(sd_priors_generate(m, &spec, 1, 1, one, m1, l1, NULL, NULL) == 0);
    CHECK(!memcmp(all + npix, one, (size_t)npix));
    CHECK(!memcmp(mean + per, m1, (size_t)per * sizeof(float)) &&
          !memcmp(logvar + per, l1, (size_t)per * sizeof(float)));
    CHECK(memcmp(all, all + npix, (size_t)npix) != 0);

    /* parts from "workers" (out of order, overlapping) + ensure == ensure alone, byte for byte */
    char dir[512], a[600], b[600], part[700];
    snprintf(dir, sizeof dir, "%s", tu_tmpdir());
    snprintf(a, sizeof a, "%s/a.h5", dir);
    snprintf(b, sizeof b, "%s/b.h5", dir);
    CHECK_INT_EQ(sd_priors_ensure(m, a, &spec, 4, NULL, NULL), 4);
    sd_prior_origin_t origin;
    REQUIRE(sd_prior_origin_of(m, &origin) == 0);
    snprintf(part, sizeof part, "%s/b.h5.parts", dir);
    REQUIRE(bt_mkdirs(part) == 0);
    snprintf(part, sizeof part, "%s/b.h5.parts/part-00000002.h5", dir);
    REQUIRE(sd_priors_write_part(m, &spec, &origin, 2, 2, part) == 0);
    snprintf(part, sizeof part, "%s/b.h5.parts/part-00000000.h5", dir);
    REQUIRE(sd_priors_write_part(m, &spec, &origin, 0, 1, part) == 0);
    CHECK_INT_EQ(sd_priors_ensure(m, b, &spec, 4, NULL, NULL), 1); /* only index 1 was missing */
    char *da, *db;
    size_t la, lb;
    REQUIRE(bt_read_file(a, &da, &la) == 0 && bt_read_file(b, &db, &lb) == 0);
    CHECK(la == lb && !memcmp(da, db, la));
    free(da);
    free(db);

    /* the stored latents are what the data set would encode from the stored pixels */
    sd_image_set_t s1, s2;
    REQUIRE(sd_image_set_load(&s1, m, a, 64, true, 3, NULL, NULL) == 0);
    CHECK_INT_EQ(s1.n, 3);
    CHECK(!memcmp(s1.pixels, all, (size_t)(3 * npix)));
    CHECK(!memcmp(s1.mean, mean, (size_t)(3 * per) * sizeof(float)));
    CHECK(s1.gen_prompt && !strcmp(s1.gen_prompt, "a photo of toy") && s1.gen_seed == 3 && s1.gen_steps == 2);
    /* ... as PNG files in a folder: the same set */
    char pngdir[600];
    snprintf(pngdir, sizeof pngdir, "%s/png", dir);
    CHECK_INT_EQ(sd_class_images_ensure(m, pngdir, "a photo of toy", 3, 64, 3, 2, 7.5f, NULL, NULL), 3);
    REQUIRE(sd_image_set_load(&s2, m, pngdir, 64, true, 0, NULL, NULL) == 0);
    CHECK(s2.n == 3 && !memcmp(s1.pixels, s2.pixels, (size_t)(3 * npix)));
    size_t lb2 = (size_t)(3 * per) * sizeof(float);
    CHECK(!memcmp(s1.mean, s2.mean, lb2) && !memcmp(s1.logvar, s2.logvar, lb2));
    CHECK(!memcmp(s1.mean_f, s2.mean_f, lb2) && !memcmp(s1.logvar_f, s2.logvar_f, lb2));
    sd_image_set_free(&s1);
    /* at another resolution the stored pixels are resized and encoded afresh */
    REQUIRE(sd_image_set_load(&s1, m, a, 32, false, 0, NULL, NULL) == 0);
    CHECK(s1.n == 4 && s1.h == 4 && s1.res == 32);
    sd_image_set_free(&s1);
    sd_image_set_free(&s2);

    /* another seed on an existing set: refused */
    bt_log_set_level(BT_LOG_ERROR);
    sd_prior_spec_t other = spec;
    other.seed = 4;
    CHECK(sd_priors_ensure(m, a, &other, 5, NULL, NULL) == BT_EINVAL);
    CHECK(strstr(bt_log_last_error(), "made with --seed 3, this run asks for 4"));
    free(all);
    free(one);
    free(mean);
    free(logvar);
    free(m1);
    free(l1);
    sd_model_destroy(&m);
    nn_ctx_destroy(&ctx);
}

static void s_write(const char *dir, const char *rel, const char *text)
{
    char path[700];
    snprintf(path, sizeof path, "%s/%s", dir, rel);
    bt_mkdirs_for(path);
    FILE *f = fopen(path, "w");
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

/* The manifest lists the files the loader reads, in order; any byte changes the hash. */
TEST(model_hash_follows_the_files)
{
    char dir[600];
    snprintf(dir, sizeof dir, "%s/model", tu_tmpdir());
    const char *files[][2] = {{"model_index.json", "{}"},
                              {"scheduler/scheduler_config.json", "{\"a\": 1}"},
                              {"text_encoder/config.json", "{}"},
                              {"text_encoder/model.safetensors", "te weights"},
                              {"text_encoder/model.fp16.safetensors", "ignored: the fp32 file wins"},
                              {"tokenizer/merges.txt", "#version"},
                              {"tokenizer/vocab.json", "{}"},
                              {"unet/config.json", "{}"},
                              {"unet/diffusion_pytorch_model.safetensors.index.json",
                               "{\"weight_map\": {\"a\": \"s-2.safetensors\", \"b\": \"s-1.safetensors\", "
                               "\"c\": \"s-2.safetensors\"}}"},
                              {"unet/s-1.safetensors", "shard one"},
                              {"unet/s-2.safetensors", "shard two"},
                              {"vae/config.json", "{}"},
                              {"vae/diffusion_pytorch_model.fp16.safetensors", "vae"}};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) s_write(dir, files[i][0], files[i][1]);
    char h1[BT_HASH_HEX], h2[BT_HASH_HEX], hv[BT_HASH_HEX], *manifest = NULL;
    REQUIRE(sd_model_hash(dir, SD_PART_ALL, h1, &manifest) == 0);
    const char *order[] = {"model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
                           "text_encoder/model.safetensors", "tokenizer/merges.txt", "tokenizer/vocab.json",
                           "unet/config.json", "unet/diffusion_pytorch_model.safetensors.index.json",
                           "unet/s-1.safetensors", "unet/s-2.safetensors", "vae/config.json",
                           "vae/diffusion_pytorch_model.fp16.safetensors"};
    const char *line = manifest;
    for (int i = 0; i < 12; i++) {
        char want[256], hex[BT_HASH_HEX];
        char path[700];
        snprintf(path, sizeof path, "%s/%s", dir, order[i]);
        uint64_t d;
        REQUIRE(bt_xxh64_file(path, &d) == 0);
        bt_hash_hex(d, hex);
        snprintf(want, sizeof want, "%s  %s\n", hex, order[i]);
        CHECKF(line && !strncmp(line, want, strlen(want)), "manifest line %d: want %s", i, want);
        line = line ? strchr(line, '\n') : NULL;
        if (line) line++;
    }
    CHECK(line && *line == '\0');
    bt_hash_hex(bt_xxh64(manifest, strlen(manifest), 0), h2);
    CHECK(!strcmp(h1, h2));
    free(manifest);
    REQUIRE(sd_model_hash(dir, SD_PART_VAE, hv, NULL) == 0);
    CHECK(strcmp(hv, h1));
    s_write(dir, "unet/s-1.safetensors", "shard 1");
    REQUIRE(sd_model_hash(dir, SD_PART_ALL, h2, NULL) == 0);
    CHECK(strcmp(h1, h2));
    REQUIRE(sd_model_hash(dir, SD_PART_VAE, h2, NULL) == 0);
    CHECK(!strcmp(hv, h2)); /* the VAE's own hash ignores the UNet */
    char path[700];
    snprintf(path, sizeof path, "%s/vae/diffusion_pytorch_model.fp16.safetensors", dir);
    unlink(path);
    bt_log_set_level(BT_LOG_ERROR);
    CHECK(sd_model_hash(dir, SD_PART_ALL, h2, NULL) == BT_ENOTFOUND);
    CHECK(strstr(bt_log_last_error(), "vae: no diffusion_pytorch_model.safetensors"));
}

/* ---- the storage benchmark (docs/BENCHMARKS.md, "Storage") ----
 *
 * An SD 1.5 rank-16 UNet LoRA (to_q/k/v/out of all 32 attentions: 3.19 M
 * parameters) with AdamW state, 400 steps of history, 5 instance images and a
 * 200-image prior set at 512 px with their VAE latents: written as a
 * checkpoint, resumed from, read back whole. Runs only with
 * BOOTH_BENCH_STORAGE=1 (it writes ~0.5 GB); the UNet is built from the SD 1.5
 * config without its weights, which a checkpoint does not hold. */

#include "diffusion/init.h"
#include "storage/h5_images.h"

static double s_secs(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Photo-like pixels: smooth gradients and shapes, fine texture and sensor-like noise
 * (what gzip meets in generated images; flat synthetic art would flatter it). */
static void s_photo(uint8_t *px, int res, uint64_t seed)
{
    tu_rng_t r = tu_rng(seed);
    double cx = tu_uniform(&r) * res, cy = tu_uniform(&r) * res, rad = (0.2 + 0.3 * tu_uniform(&r)) * res;
    double base[3] = {60 + 120 * tu_uniform(&r), 60 + 120 * tu_uniform(&r), 60 + 120 * tu_uniform(&r)};
    for (int y = 0; y < res; y++)
        for (int x = 0; x < res; x++) {
            bool in = (x - cx) * (x - cx) + (y - cy) * (y - cy) < rad * rad;
            for (int c = 0; c < 3; c++) {
                double v = base[c] + 50.0 * x / res - 40.0 * y / res + (in ? 60 - 30 * c : 0) +
                           12 * sin(x * 0.07 + c) * cos(y * 0.05) + 5 * tu_normal(&r);
                px[((size_t)y * res + x) * 3 + c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
            }
        }
}

static void s_fake_set(sd_image_set_t *s, int n, int res, uint64_t seed)
{
    memset(s, 0, sizeof *s);
    s->n = n;
    s->res = res;
    s->C = 4;
    s->h = s->w = res / 8;
    int64_t per = s->C * s->h * s->w;
    s->pixels = malloc((size_t)n * res * res * 3);
    s->mean = malloc((size_t)(n * per) * sizeof(float));
    s->logvar = malloc((size_t)(n * per) * sizeof(float));
    s->paths = calloc((size_t)n + 1, sizeof *s->paths);
    tu_rng_t r = tu_rng(seed);
    for (int i = 0; i < n; i++) {
        s_photo(s->pixels + (size_t)i * res * res * 3, res, seed * 1000 + (uint64_t)i);
        char p[64];
        snprintf(p, sizeof p, "photos/img-%04d.png", i);
        s->paths[i] = strdup(p);
    }
    tu_fill_normal(&r, s->mean, n * per, 1.0f);
    tu_fill_uniform(&r, s->logvar, n * per, -12.0f, -4.0f);
}

TEST_TIMEOUT(checkpoint_bench_sd15, 3600)
{
    if (!getenv("BOOTH_BENCH_STORAGE")) {
        printf("skipped: set BOOTH_BENCH_STORAGE=1 to run the storage benchmark\n");
        return;
    }
    sd_unet_config_t uc;
    sd_vae_config_t vc;
    sd_clip_config_t cc;
    sd_arch_configs(SD_ARCH_SD15, &uc, &vc, &cc);
    sd_unet_t *unet = sd_unet_new(&uc);
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    REQUIRE(unet && ctx);
    char dir[512];
    snprintf(dir, sizeof dir, "%s", getenv("BOOTH_BENCH_DIR") ? getenv("BOOTH_BENCH_DIR") : tu_tmpdir());
    /* a checkpoint is optimizer state and plain records: no model, no trainer */
    sd_train_config_t cfg;
    sd_train_config_defaults(&cfg);
    cfg.model_dir = "sd15";
    cfg.instance_dir = "photos";
    cfg.instance_prompt = "a photo of sks dog";
    cfg.class_dir = "priors.h5";
    cfg.class_prompt = "a photo of dog";
    cfg.prior_preservation = true;
    cfg.num_class_images = 200;
    cfg.resolution = 512;
    cfg.rank = 16;
    cfg.lora_alpha = 16;
    cfg.micro_batch_size = 2;
    cfg.max_train_steps = 800;
    cfg.base_weights = "exact";
    sd_lora_set_t *lora = sd_lora_attach_unet(unet, 16, 16.0f, NULL);
    REQUIRE(lora);
    REQUIRE(sd_lora_alloc(lora, ctx, false) == 0);
    sd_optim_spec_t *spec = calloc((size_t)lora->params.n, sizeof *spec);
    char(*names)[SD_OPTIM_NAME_MAX] = calloc((size_t)lora->params.n, sizeof *names);
    REQUIRE(spec && names);
    for (int i = 0; i < lora->params.n; i++) {
        REQUIRE(st_lora_key(names[i], SD_OPTIM_NAME_MAX, ST_LORA_PEFT, ST_LORA_PART_UNET, i % 2 ? ST_LORA_B : ST_LORA_A,
                            lora->modules[i / 2]) == 0);
        spec[i] = (sd_optim_spec_t){.name = names[i], .index = i,
                                    .shape = {lora->params.p[i].shape[0], lora->params.p[i].shape[1]}};
    }
    sd_optim_config_t oc;
    sd_optim_config_from_train(&oc, &cfg);
    sd_optim_t *opt = sd_optim_new(ctx, &oc, spec, lora->params.n);
    REQUIRE(opt);
    opt->step = 400;
    tu_rng_t r = tu_rng(5);
    for (int i = 0; i < opt->n; i++) {
        tu_fill_normal(&r, opt->t[i].p, opt->t[i].numel, 0.01f);
        tu_fill_normal(&r, opt->t[i].m, opt->t[i].numel, 1e-4f);
        tu_fill_uniform(&r, opt->t[i].v, opt->t[i].numel, 0.0f, 1e-8f);
    }
    sd_image_set_t instances = {0}, classes = {0};
    s_fake_set(&instances, 5, 512, 1);
    s_fake_set(&classes, 200, 512, 2);
    sd_train_history_t h = {0};
    for (int i = 0; i < 400; i++) {
        sd_step_stats_t st = {.loss = 0.1 + 0.01 * tu_uniform(&r), .loss_instance = 0.05, .loss_prior = 0.05,
                              .grad_norm = 0.5, .lr = 1e-4f};
        REQUIRE(sd_history_push(&h, &st, 42.0) == 0);
    }
    sd_ckpt_data_t d = {.cfg = &cfg, .instances = &instances, .classes = &classes, .sampler = "pndm",
                        .ids = {.model = "0123456789abcdef", .vae = "fedcba9876543210"}};
    int64_t nparams = sd_lora_numel(lora);
    printf("SD 1.5 UNet LoRA rank 16: %lld parameters (%.1f MB fp32; with m and v %.1f MB); 5 + 200 images at 512 px\n",
           (long long)nparams, nparams * 4 / 1e6, 3 * nparams * 4 / 1e6);

    char path[700];
    snprintf(path, sizeof path, "%s/checkpoint-400.h5", dir);
    double t0 = s_secs();
    REQUIRE(sd_checkpoint_save(path, opt, &d, &h, NULL) == 0);
    double t_write = s_secs() - t0;
    struct stat st;
    REQUIRE(stat(path, &st) == 0);
    double raw = (205.0 * 512 * 512 * 3 + 2 * 205.0 * 4 * 64 * 64 * 4 + 3.0 * nparams * 4) / 1e6;
    printf("write (temp file, fsync, rename): %.2f s, %.1f MB on disk (%.1f MB raw)\n", t_write, st.st_size / 1e6,
           raw);
    /* the next checkpoint of the run: images and latents copied from this one */
    char path2[700];
    snprintf(path2, sizeof path2, "%s/checkpoint-401.h5", dir);
    opt->step = 401;
    sd_step_stats_t st1 = {.loss = 0.1};
    REQUIRE(sd_history_push(&h, &st1, 42.0) == 0);
    t0 = s_secs();
    REQUIRE(sd_checkpoint_save(path2, opt, &d, &h, path) == 0);
    double t_next = s_secs() - t0;
    REQUIRE(stat(path2, &st) == 0);
    printf("next checkpoint, images copied from the previous one: %.2f s, %.1f MB\n", t_next, st.st_size / 1e6);
    unlink(path2);
    opt->step = 400;
    h.n = 400;

    t0 = s_secs();
    REQUIRE(sd_checkpoint_resume(path, opt, &d, NULL) == 0);
    double t_resume = s_secs() - t0;
    printf("resume (open, check job/model/data, read LoRA + m + v + history): %.3f s\n", t_resume);

    /* everything back, images and latents included */
    t0 = s_secs();
    st_h5_file_t *f = st_h5_open(path);
    REQUIRE(f);
    uint8_t *img = malloc(512 * 512 * 3);
    float *lat = malloc(4 * 64 * 64 * sizeof(float));
    const char *groups[2] = {"instance", "prior"};
    int64_t counts[2] = {5, 200};
    for (int g = 0; g < 2; g++)
        for (int64_t i = 0; i < counts[g]; i++) {
            char p[64];
            snprintf(p, sizeof p, "%s/images", groups[g]);
            REQUIRE(st_h5_read_rows(f, p, ST_H5_U8, i, 1, img) == 0);
            snprintf(p, sizeof p, "%s/latent_mean", groups[g]);
            REQUIRE(st_h5_read_rows(f, p, ST_H5_F32, i, 1, lat) == 0);
            snprintf(p, sizeof p, "%s/latent_logvar", groups[g]);
            REQUIRE(st_h5_read_rows(f, p, ST_H5_F32, i, 1, lat) == 0);
        }
    st_h5_close(&f);
    double t_images = s_secs() - t0;
    printf("read every image and latent (205 x 512 px): %.2f s; full read incl. resume: %.2f s\n", t_images,
           t_images + t_resume);

    /* the gzip level of the images */
    for (int level = 0; level <= 9; level += level < 1 ? 1 : level < 4 ? 3 : 5) {
        char p2[700];
        snprintf(p2, sizeof p2, "%s/gz%d.h5", dir, level);
        t0 = s_secs();
        st_h5_file_t *w = st_h5_create(p2);
        REQUIRE(w);
        st_h5_opts_t o = {.deflate = level, .rows_per_chunk = 1};
        REQUIRE(st_h5_create_dataset(w, "images", ST_H5_U8, 4, (int64_t[]){200, 512, 512, 3}, &o) == 0);
        for (int i = 0; i < 200; i++)
            REQUIRE(st_h5_write_rows(w, "images", i, 1, classes.pixels + (size_t)i * 512 * 512 * 3) == 0);
        REQUIRE(st_h5_commit(&w) == 0);
        double tw = s_secs() - t0;
        REQUIRE(stat(p2, &st) == 0);
        t0 = s_secs();
        REQUIRE((f = st_h5_open(p2)));
        for (int i = 0; i < 200; i++) REQUIRE(st_h5_read_rows(f, "images", ST_H5_U8, i, 1, img) == 0);
        st_h5_close(&f);
        printf("200 images, gzip level %d: write %.2f s, read %.2f s, %.1f MB (%.0f%% of raw)\n", level, tw,
               s_secs() - t0, st.st_size / 1e6, 100.0 * st.st_size / (200.0 * 512 * 512 * 3));
        unlink(p2);
    }
    unlink(path);
    free(img);
    free(lat);
    sd_history_free(&h);
    sd_image_set_free(&instances);
    sd_image_set_free(&classes);
    sd_optim_destroy(&opt);
    free(spec);
    free(names);
    sd_lora_destroy(&lora);
    sd_unet_destroy(&unet);
    nn_ctx_destroy(&ctx);
}
