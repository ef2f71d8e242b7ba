/*
 * pretrain.c — the world model trained from scratch (pretrain.h).
 */
#include "diffusion/pretrain.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/alloc.h"
#include "common/fileio.h"
#include "common/image.h"
#include "common/log.h"
#include "common/plot.h"
#include "common/rng.h"
#include "common/status.h"
#include "diffusion/clip.h"
#include "diffusion/dreambooth.h"
#include "diffusion/optim.h"
#include "diffusion/pipeline.h"
#include "diffusion/tokenizer.h"
#include "diffusion/unet.h"
#include "diffusion/vae.h"
#include "diffusion/world.h"
#include "diffusion/world_model.h"
#include "storage/png.h"
#include "storage/safetensors.h"

/* streams of the run's seed (the world's scenes come from world_seed) */
enum { S_TAG_NOISE = 101, S_TAG_TIMESTEP, S_TAG_UNCOND, S_TAG_PARTS };

void sd_pretrain_defaults(sd_pretrain_config_t *c)
{
    memset(c, 0, sizeof *c);
    c->resolution = 32;
    c->batch = 32;
    c->steps = 20000;
    c->warmup = 500;
    c->lr = 5e-4f;
    c->weight_decay = 0.0f;
    c->max_grad_norm = 1.0f;
    c->ema = 0.999f;
    c->uncond = 0.1f;
    c->partial = 0.3f;
    c->save_every = 500;
    c->show_progress = true;
}

typedef struct {
    sd_model_t *m;
    sd_params_t *parts[2]; /* the UNet, then the text encoder when it trains */
    const char *prefix[2];
    int nparts;
    int n; /* tensors */
    sd_optim_spec_t *spec;
    char (*names)[SD_OPTIM_NAME_MAX];
    float **grads;
    float *ema;      /* every tensor's average, one host block */
    int64_t *ema_at; /* tensor i's offset in it */
    sd_optim_t *o;
    sd_db_t *db;
} s_run_t;

/* The settings a resumed run must share (the others do not change the numbers, or are the goal). */
static void s_settings(const sd_pretrain_config_t *c, const s_run_t *r, char *buf, size_t len)
{
    snprintf(buf, len,
             "{\"seed\": %llu, \"world_seed\": %llu, \"batch\": %d, \"warmup\": %lld, \"lr\": %.9g, "
             "\"weight_decay\": %.9g, \"max_grad_norm\": %.9g, \"ema\": %.9g, \"uncond\": %.9g, "
             "\"partial\": %.9g, \"resolution\": %lld, \"text_encoder\": %s}",
             (unsigned long long)c->seed, (unsigned long long)c->world_seed, c->batch, (long long)c->warmup,
             (double)c->lr, (double)c->weight_decay, (double)c->max_grad_norm, (double)c->ema, (double)c->uncond,
             (double)c->partial, (long long)r->m->unet->cfg.sample_size, r->nparts > 1 ? "true" : "false");
}

static int64_t s_numel(const sd_optim_spec_t *s) { return s->shape[0] * s->shape[1]; }

static int s_tensors(s_run_t *r)
{
    int n = 0;
    for (int k = 0; k < r->nparts; k++) n += r->parts[k]->n;
    r->spec = bt_calloc((size_t)n, sizeof *r->spec);
    r->names = bt_calloc((size_t)n, sizeof *r->names);
    r->grads = bt_calloc((size_t)n, sizeof *r->grads);
    r->ema_at = bt_calloc((size_t)n, sizeof *r->ema_at);
    if (!r->spec || !r->names || !r->grads || !r->ema_at) return BT_ENOMEM;
    int i = 0;
    for (int k = 0; k < r->nparts; k++)
        i = sd_optim_spec_params(r->parts[k], r->prefix[k], i, r->spec, r->names, r->grads);
    int64_t total = 0;
    for (i = 0; i < n; i++) {
        r->ema_at[i] = total;
        total += s_numel(&r->spec[i]);
    }
    r->n = n;
    if (!(r->ema = bt_malloc((size_t)(total ? total : 1) * sizeof(float)))) return BT_ENOMEM;
    for (i = 0; i < n; i++) {
        int rc = nn_download(r->m->ctx, r->ema + r->ema_at[i], r->spec[i].params,
                             (size_t)s_numel(&r->spec[i]) * sizeof(float));
        if (rc) return rc;
    }
    return BT_OK;
}


/* ---- state ---- */

static int s_save_state(const s_run_t *r, const char *path, const char *settings)
{
    st_writer_t *w = st_writer_new();
    if (!w) return BT_ENOMEM;
    nn_ctx_t *ctx = r->m->ctx;
    int rc = BT_OK;
    char step[32], key[SD_OPTIM_NAME_MAX + 8];
    snprintf(step, sizeof step, "%lld", (long long)r->o->step);
    rc = st_writer_set_metadata(w, "booth.pretrain.step", step);
    if (rc == BT_OK) rc = st_writer_set_metadata(w, "booth.pretrain.settings", settings);
    float *tmp = NULL;
    for (int i = 0; i < r->n && rc == BT_OK; i++) {
        const sd_optim_tensor_t *t = &r->o->t[i];
        int64_t shape[2] = {r->spec[i].shape[0], r->spec[i].shape[1]}, n = s_numel(&r->spec[i]);
        const float *src[4] = {r->spec[i].params, r->ema + r->ema_at[i], t->m, t->v};
        static const char *const what[4] = {"param", "ema", "m", "v"};
        free(tmp);
        if (!(tmp = bt_malloc((size_t)n * sizeof(float)))) {
            rc = BT_ENOMEM;
            break;
        }
        for (int k = 0; k < 4 && rc == BT_OK; k++) {
            snprintf(key, sizeof key, "%s.%s", what[k], r->names[i]);
            if (k == 1) {
                rc = st_writer_add(w, key, ST_F32, 2, shape, src[k]);
            } else {
                rc = nn_download(ctx, tmp, src[k], (size_t)n * sizeof(float));
                if (rc == BT_OK) rc = st_writer_add_copy(w, key, ST_F32, 2, shape, tmp);
            }
        }
    }
    free(tmp);
    if (rc == BT_OK) rc = st_writer_save(w, path);
    st_writer_destroy(&w);
    return rc;
}

static int s_load_state(s_run_t *r, const char *path, const char *settings)
{
    st_file_t *f = st_open(path);
    if (!f) return BT_EFORMAT;
    int rc = BT_OK;
    const char *have = st_metadata(f, "booth.pretrain.settings"), *step = st_metadata(f, "booth.pretrain.step");
    if (!have || !step) {
        BT_ERROR("%s: not a booth pretrain state (no booth.pretrain metadata)", path);
        rc = BT_EFORMAT;
    } else if (strcmp(have, settings)) {
        BT_ERROR("%s: a run with other settings (%s; this one: %s): give another --state, or the same flags", path,
                 have, settings);
        rc = BT_EINVAL;
    }
    char key[SD_OPTIM_NAME_MAX + 8];
    float *tmp = NULL;
    for (int i = 0; i < r->n && rc == BT_OK; i++) {
        sd_optim_tensor_t *t = &r->o->t[i];
        int64_t n = s_numel(&r->spec[i]);
        float *dst[4] = {r->spec[i].params, r->ema + r->ema_at[i], t->m, t->v};
        static const char *const what[4] = {"param", "ema", "m", "v"};
        free(tmp);
        if (!(tmp = bt_malloc((size_t)n * sizeof(float)))) {
            rc = BT_ENOMEM;
            break;
        }
        for (int k = 0; k < 4 && rc == BT_OK; k++) {
            snprintf(key, sizeof key, "%s.%s", what[k], r->names[i]);
            const st_tensor_t *ts = st_find(f, key);
            if (!ts || st_numel(ts) != n) {
                BT_ERROR("%s: %s '%s'", path, ts ? "a misshapen" : "no tensor", key);
                rc = BT_ESHAPE;
                break;
            }
            st_read_f32(ts, tmp);
            rc = k == 1 ? (memcpy(dst[k], tmp, (size_t)n * sizeof(float)), BT_OK)
                        : nn_upload(r->m->ctx, dst[k], tmp, (size_t)n * sizeof(float));
        }
    }
    free(tmp);
    if (rc == BT_OK) r->o->step = strtoll(step, NULL, 10);
    st_close(&f);
    return rc;
}

/* The model folder's networks from the average (dtype F32 or F16), each file replaced atomically. */
static int s_write_folder(const s_run_t *r, const char *dir, st_dtype_t dtype)
{
    static const char *const meta[] = {"format", "pt", NULL};
    nn_ctx_t *host = nn_ctx_new(NN_BACKEND_CPU, 1);
    int rc = host ? BT_OK : BT_ENOMEM;
    for (int k = 0; k < r->nparts && rc == BT_OK; k++) {
        sd_unet_t *u = k == 0 ? sd_unet_new(&r->m->unet->cfg) : NULL;
        sd_clip_t *c = k == 1 ? sd_clip_new(&r->m->clip->cfg) : NULL;
        sd_params_t *ps = u ? &u->params : c ? &c->params : NULL;
        char path[4200];
        snprintf(path, sizeof path, k == 0 ? "%s/unet/diffusion_pytorch_model.safetensors" : "%s/text_encoder/model.safetensors",
                 dir);
        rc = ps ? sd_params_alloc(ps, host) : BT_ENOMEM;
        for (int j = 0; rc == BT_OK && j < ps->n; j++) {
            char name[SD_OPTIM_NAME_MAX];
            snprintf(name, sizeof name, "%s.%s", r->prefix[k], ps->p[j].name);
            int i = sd_optim_find(r->o, name);
            if (i < 0) {
                BT_ERROR("pretrain: no tensor %s", name);
                rc = BT_EINTERNAL;
                break;
            }
            memcpy(ps->p[j].data, r->ema + r->ema_at[i], (size_t)s_numel(&r->spec[i]) * sizeof(float));
        }
        if (rc == BT_OK) rc = sd_params_save(ps, path, dtype, meta);
        sd_unet_destroy(&u);
        sd_clip_destroy(&c);
    }
    nn_ctx_destroy(&host);
    return rc;
}

/* ---- one step ---- */

typedef struct {
    int B;
    int64_t S, T, per;
    float *images, *mean, *logvar, *noise, *weights;
    int32_t *ids;
    int64_t *ts;
} s_batch_t;

static int s_batch(const sd_pretrain_config_t *c, s_run_t *r, s_batch_t *b, int64_t step)
{
    sd_model_t *m = r->m;
    int64_t S = b->S, n3 = 3 * S * S;
    uint64_t kn = bt_rng_key(c->seed, S_TAG_NOISE), kt = bt_rng_key(c->seed, S_TAG_TIMESTEP),
             ku = bt_rng_key(c->seed, S_TAG_UNCOND), kp = bt_rng_key(c->seed, S_TAG_PARTS);
    int64_t nt = m->sched_cfg.num_train_timesteps;
    int rc = BT_OK;
    for (int i = 0; i < b->B && rc == BT_OK; i++) {
        uint64_t ex = (uint64_t)step * (uint64_t)b->B + (uint64_t)i; /* the example's global index */
        sd_scene_t s;
        sd_world_scene(c->world_seed, ex, &s);
        bt_img_t *img = sd_world_render(&s, (int)S);
        if (!img) return BT_ENOMEM;
        bt_img_to_f32_chw(img, b->images + i * n3);
        bt_img_destroy(&img);
        char cap[256] = "";
        double u = bt_rng_uniform(kp, ex); /* which parts the caption says: c->partial of them leave some out */
        unsigned parts = u >= c->partial               ? SD_CAPTION_ALL
                         : u < c->partial / 3          ? 0
                         : u < 2 * c->partial / 3      ? SD_CAPTION_BACKGROUND
                                                       : SD_CAPTION_COLOUR;
        if (bt_rng_uniform(ku, ex) >= c->uncond && sd_world_caption_parts(&s, NULL, parts, cap, sizeof cap) < 0)
            return BT_EINTERNAL;
        sd_tok_result_t tr;
        if ((rc = sd_tokenize(m->tok, cap, &tr))) return rc;
        memcpy(b->ids + i * b->T, tr.input_ids, (size_t)b->T * sizeof(int32_t));
        sd_tok_result_free(&tr);
        bt_rng_normal_fill(b->noise + i * b->per, b->per, bt_rng_stream(kn, ex, 0));
        b->ts[i] = (int64_t)bt_rng_below(kt, ex, (uint64_t)nt);
        b->weights[i] = 1.0f / (float)b->B;
    }
    sd_run_t run = {.nn = m->ctx, .scratch = &m->scratch};
    if (rc == BT_OK) rc = sd_vae_encode(&run, m->vae, b->mean, b->logvar, b->images, b->B, S, S);
    if (rc == BT_OK && m->vae->cfg.scaling_factor != 1.0f)
        for (int64_t k = 0; k < b->B * b->per; k++) b->mean[k] *= m->vae->cfg.scaling_factor;
    return rc;
}

static void s_ema(s_run_t *r, float decay)
{
    for (int i = 0; i < r->n; i++) {
        float *e = r->ema + r->ema_at[i];
        const float *p = r->spec[i].params; /* host memory on the CPU backend */
        int64_t n = s_numel(&r->spec[i]);
        for (int64_t k = 0; k < n; k++) e[k] = decay * e[k] + (1.0f - decay) * p[k];
    }
}

/* The loss history: loss.csv's rows up to `step` (a run killed between saves logged steps its
 * state does not have; they are computed again), rewritten without the others. */
static int s_history_load(const char *path, int64_t step, float **hist, int64_t *n)
{
    char *text = NULL;
    size_t len = 0;
    *hist = NULL;
    *n = 0;
    if (bt_read_file(path, &text, &len)) return BT_OK; /* none yet */
    float *h = bt_malloc((size_t)(step > 0 ? step : 1) * sizeof(float));
    bt_atomic_file_t af;
    int rc = h ? bt_atomic_open(&af, path) : BT_ENOMEM;
    if (rc == BT_OK) {
        fprintf(af.f, "step,loss,lr,grad_norm,seconds\n");
        for (char *save = NULL, *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
            long long st;
            float loss;
            if (sscanf(line, "%lld,%f", &st, &loss) != 2 || st < 1 || st > step || st != *n + 1) continue;
            h[(*n)++] = loss;
            fprintf(af.f, "%s\n", line);
        }
        rc = bt_atomic_commit(&af);
    }
    free(text);
    *hist = h;
    return rc;
}

static int s_history_plot(const char *csv, const float *h, int64_t n)
{
    char png[4200];
    size_t len = strlen(csv);
    snprintf(png, sizeof png, "%.*s.png", (int)(len > 4 && !strcmp(csv + len - 4, ".csv") ? len - 4 : len), csv);
    bt_img_t *img = bt_plot_loss("booth pretrain: the world model's training loss", h, (int)n);
    int rc = img ? st_png_write(png, img, NULL, 0) : BT_ENOMEM;
    bt_img_destroy(&img);
    return rc;
}

static bool s_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

int sd_pretrain(nn_ctx_t *ctx, const sd_pretrain_config_t *c)
{
    if (ctx->kind != NN_BACKEND_CPU) {
        BT_ERROR("pretrain: the CPU backend only (the average is kept in host memory)");
        return BT_EINVAL;
    }
    char path[4200], settings[1024];
    snprintf(path, sizeof path, "%s/model_index.json", c->model_dir);
    int rc = BT_OK;
    if (!s_exists(path)) {
        BT_INFO("pretrain: a new world model in %s (%d px, seed %llu)", c->model_dir, c->resolution,
                (unsigned long long)c->seed);
        if ((rc = sd_world_model_init(ctx, c->model_dir, c->resolution, c->seed))) return rc;
    }
    s_run_t r = {.prefix = {"unet", "text_encoder"}};
    s_batch_t b = {.B = c->batch};
    FILE *log = NULL;
    float *hist = NULL; /* the loss of steps 1..nhist */
    int64_t nhist = 0;
    if (!(r.m = sd_model_load_as(ctx, c->model_dir, SD_PART_ALL, SD_STORE_F32))) return BT_EFORMAT;
    if (r.m->vae->cfg.n_blocks != 1 || r.m->unet->cfg.in_channels != 4) {
        BT_ERROR("%s: not a world model (world_model.h): its VAE downsamples", c->model_dir);
        rc = BT_EINVAL;
        goto out;
    }
    r.parts[r.nparts++] = &r.m->unet->params;
    r.parts[r.nparts++] = &r.m->clip->params; /* both from scratch */
    for (int k = 0; k < r.nparts && rc == BT_OK; k++) rc = sd_params_alloc_grads(r.parts[k]);
    if (rc || (rc = s_tensors(&r))) goto out;
    sd_optim_config_t oc = {.learning_rate = c->lr, .lr_scheduler = SD_LR_CONSTANT_WARMUP,
                            .lr_warmup_steps = c->warmup, .max_train_steps = c->steps, .lr_num_cycles = 1,
                            .lr_power = 1.0f, .beta1 = 0.9f, .beta2 = 0.999f, .epsilon = 1e-8f,
                            .weight_decay = c->weight_decay, .max_grad_norm = c->max_grad_norm};
    if (!(r.o = sd_optim_new(ctx, &oc, r.spec, r.n)) || !(r.db = sd_db_new(r.m, NULL, NULL, false))) {
        rc = BT_ENOMEM;
        goto out;
    }
    r.db->text_full = true;
    s_settings(c, &r, settings, sizeof settings);
    if (c->state_path && s_exists(c->state_path)) {
        if ((rc = s_load_state(&r, c->state_path, settings))) goto out;
        BT_INFO("pretrain: resumed from %s at step %lld", c->state_path, (long long)r.o->step);
    }
    b.S = r.m->unet->cfg.sample_size;
    b.T = sd_prompt_tokens(r.m);
    b.per = r.m->unet->cfg.in_channels * b.S * b.S;
    b.images = bt_malloc((size_t)(b.B * 3 * b.S * b.S) * sizeof(float));
    b.mean = bt_malloc((size_t)(b.B * b.per) * sizeof(float));
    b.logvar = bt_malloc((size_t)(b.B * b.per) * sizeof(float));
    b.noise = bt_malloc((size_t)(b.B * b.per) * sizeof(float));
    b.weights = bt_malloc((size_t)b.B * sizeof(float));
    b.ids = bt_malloc((size_t)(b.B * b.T) * sizeof(int32_t));
    b.ts = bt_malloc((size_t)b.B * sizeof(int64_t));
    if (!b.images || !b.mean || !b.logvar || !b.noise || !b.weights || !b.ids || !b.ts) {
        rc = BT_ENOMEM;
        goto out;
    }
    if (c->log_path) {
        bool fresh = !s_exists(c->log_path) || r.o->step == 0;
        if (!fresh && (rc = s_history_load(c->log_path, r.o->step, &hist, &nhist))) goto out;
        if (!(hist = bt_realloc(hist, (size_t)(c->steps > nhist ? c->steps : nhist + 1) * sizeof(float)))) {
            rc = BT_ENOMEM;
            goto out;
        }
        if (!(log = fopen(c->log_path, fresh ? "w" : "a"))) {
            BT_ERROR("%s: cannot write the log", c->log_path);
            rc = BT_EIO;
            goto out;
        }
        if (fresh) fprintf(log, "step,loss,lr,grad_norm,seconds\n");
    }
    bt_progress_t bar;
    if (c->show_progress) bt_progress_start(&bar, "pretraining", c->steps, "step");
    double avg = NAN;
    while (r.o->step < c->steps) {
        double t0 = bt_now(), loss = 0, gnorm = 0;
        float lr = 0;
        int64_t step = r.o->step;
        if ((rc = s_batch(c, &r, &b, step))) break;
        for (int k = 0; k < r.nparts && rc == BT_OK; k++)
            rc = nn_fill(ctx, r.parts[k]->grad, sd_params_block_floats(r.parts[k]), 0.0f);
        if (rc) break;
        sd_db_batch_t db = {.n = b.B, .T = b.T, .h = b.S, .w = b.S, .ids = b.ids, .latents = b.mean,
                            .noise = b.noise, .timesteps = b.ts, .weights = b.weights};
        if ((rc = sd_db_step(r.db, &db, &loss, NULL))) break;
        for (int i = 0; i < r.n && rc == BT_OK; i++) rc = sd_optim_add_grad(r.o, i, 0, r.grads[i]);
        if (rc || (rc = sd_optim_step(r.o, &lr, &gnorm))) break;
        if (!isfinite(loss)) {
            BT_ERROR("pretrain: the loss is %g at step %lld; the state saved before it is in %s", loss,
                     (long long)step + 1, c->state_path ? c->state_path : "(none)");
            rc = BT_EINVAL;
            break;
        }
        float d = c->ema, warm = (float)(1 + r.o->step) / (float)(10 + r.o->step);
        s_ema(&r, d < warm ? d : warm);
        avg = isnan(avg) ? loss : 0.98 * avg + 0.02 * loss;
        if (log) {
            fprintf(log, "%lld,%.6f,%.6g,%.6g,%.3f\n", (long long)r.o->step, loss, lr, gnorm, bt_now() - t0);
            hist[nhist++] = (float)loss;
        }
        if (c->show_progress) {
            char tail[96];
            snprintf(tail, sizeof tail, "loss %.4f (avg %.4f) lr %.2g", loss, avg, lr);
            bt_progress_update(&bar, r.o->step, tail);
        }
        if (c->save_every > 0 && r.o->step % c->save_every == 0 && r.o->step < c->steps) {
            if (log) fflush(log);
            if (log && (rc = s_history_plot(c->log_path, hist, nhist))) break;
            if (c->state_path && (rc = s_save_state(&r, c->state_path, settings))) break;
            if ((rc = s_write_folder(&r, c->model_dir, ST_F32))) break;
        }
    }
    if (c->show_progress) bt_progress_finish(&bar, NULL);
    /* the end (also of a run resumed at its last step: --fp16 then only rewrites the folder) */
    if (log) fflush(log);
    if (rc == BT_OK && log) rc = s_history_plot(c->log_path, hist, nhist);
    if (rc == BT_OK && c->state_path) rc = s_save_state(&r, c->state_path, settings);
    if (rc == BT_OK) rc = s_write_folder(&r, c->model_dir, c->final_fp16 ? ST_F16 : ST_F32);
out:
    if (log) fclose(log);
    free(hist);
    free(b.images);
    free(b.mean);
    free(b.logvar);
    free(b.noise);
    free(b.weights);
    free(b.ids);
    free(b.ts);
    sd_db_destroy(&r.db);
    sd_optim_destroy(&r.o);
    free(r.spec);
    free(r.names);
    free(r.grads);
    free(r.ema);
    free(r.ema_at);
    sd_model_destroy(&r.m);
    return rc;
}
