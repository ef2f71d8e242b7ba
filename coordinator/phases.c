/*
 * phases.c — running one job: the prior farm, the preparation of the job's
 * data, and training step by step over the workers and parameter servers,
 * with the run loop (diffusion/loop.h) writing what `booth train` writes.
 *
 * The coordinator never waits: each phase is a state (co_job_t.state, and
 * while training co_job_t.wait), advanced by the message that completes it;
 * co_schedule hands out the tasks that are ready to idle workers. The
 * order of every reduction is fixed — losses summed in micro-batch order,
 * the gradient norm from per-tensor sums in global tensor order — so the
 * result does not depend on which worker finished first.
 */
#include "common/alloc.h"
#include "coordinator/internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/fileio.h"
#include "common/log.h"
#include "common/status.h"

/* ---- tasks ---- */

static co_task_t *s_task_add(co_job_t *j, Booth__Task__Kind kind, uint64_t id)
{
    if (j->ntasks == j->tasks_cap) {
        int cap = j->tasks_cap ? 2 * j->tasks_cap : 16;
        co_task_t *p = bt_realloc(j->tasks, (size_t)cap * sizeof *p);
        if (!p) return NULL;
        j->tasks = p;
        j->tasks_cap = cap;
    }
    co_task_t *t = &j->tasks[j->ntasks++];
    memset(t, 0, sizeof *t);
    t->id = id;
    t->kind = kind;
    t->peer = -1;
    return t;
}

static co_task_t *s_task_find(co_job_t *j, uint64_t id)
{
    for (int i = 0; i < j->ntasks; i++)
        if (j->tasks[i].id == id) return &j->tasks[i];
    return NULL;
}

static bool s_tasks_done(const co_job_t *j)
{
    for (int i = 0; i < j->ntasks; i++)
        if (!j->tasks[i].done) return false;
    return true;
}

static int s_send_task(co_t *c, co_job_t *j, co_task_t *t, int w)
{
    Booth__Task m = BOOTH__TASK__INIT;
    Booth__PsInfo *infos = bt_calloc((size_t)(j->nps ? j->nps : 1), sizeof *infos);
    Booth__PsInfo **ptrs = bt_calloc((size_t)(j->nps ? j->nps : 1), sizeof *ptrs);
    if (!infos || !ptrs) {
        free(infos);
        free(ptrs);
        return BT_ENOMEM;
    }
    m.task_id = t->id;
    m.job_id = j->id;
    m.kind = t->kind;
    m.job_json = j->json;
    m.first = t->first;
    m.count = t->count;
    m.step = t->step;
    m.micro = t->micro;
    m.version = t->version;
    m.data_hash = j->data_hash;
    if (t->kind == BOOTH__TASK__KIND__MICROBATCH || t->kind == BOOTH__TASK__KIND__VALIDATE) {
        for (int k = 0; k < j->nps; k++) {
            booth__ps_info__init(&infos[k]);
            infos[k].endpoint = c->peers[j->ps[k]].endpoint;
            infos[k].public_key = c->peers[j->ps[k]].public_key;
            ptrs[k] = &infos[k];
        }
        m.n_ps = (size_t)j->nps;
        m.ps = ptrs;
    }
    Booth__Envelope env = PR_ENVELOPE_INIT(TASK, task, &m);
    int rc = co_send(c, w, &env, NULL, 0);
    free(infos);
    free(ptrs);
    if (rc == BT_OK) {
        t->peer = w;
        c->peers[w].task = t->id;
        c->peers[w].task_t0 = co_now();
    }
    return rc;
}

/* Hands every task not yet out to an idle worker with the job's model. */
static void s_hand_out(co_t *c, co_job_t *j)
{
    for (int i = 0; i < j->ntasks; i++) {
        co_task_t *t = &j->tasks[i];
        if (t->done || t->peer >= 0) continue;
        int w = co_idle_worker(c, j);
        if (w < 0) return;
        if (s_send_task(c, j, t, w)) { /* it has disconnected (or its queue is full): gone */
            co_peer_dead(c, w, "unreachable");
            if (c->running < 0 || c->jobs[c->running] != j) return;
            i--; /* this task again, to the next worker */
        }
    }
}

static void s_clear_tasks(co_job_t *j) { j->ntasks = 0; }

/* ---- ending a job ---- */

static void s_release_ps(co_t *c, co_job_t *j)
{
    Booth__Release r = BOOTH__RELEASE__INIT;
    r.job_id = j->id;
    for (int k = 0; k < j->nps; k++) {
        Booth__Envelope env = PR_ENVELOPE_INIT(RELEASE, release, &r);
        co_send(c, j->ps[k], &env, NULL, 0);
        c->peers[j->ps[k]].ntensors = 0;
    }
}

void co_job_abort(co_t *c, co_job_t *j)
{
    s_release_ps(c, j);
    for (int i = 0; i < CO_MAX_PEERS; i++) /* in-flight results will be ignored: the tasks are gone */
        if (c->peers[i].used && c->peers[i].role == BOOTH__ROLE__ROLE_WORKER) {
            for (int t = 0; t < j->ntasks; t++)
                if (c->peers[i].task == j->tasks[t].id) c->peers[i].task = 0;
        }
    co_job_free_run(j);
}

static void s_fail(co_t *c, co_job_t *j, const char *why)
{
    co_job_abort(c, j);
    co_job_set_state(c, j, CO_FAILED, "%s", why);
    c->running = -1;
}

static void s_done(co_t *c, co_job_t *j)
{
    s_release_ps(c, j);
    co_job_free_run(j);
    co_job_set_state(c, j, CO_DONE, NULL);
    BT_INFO("job %s done in %.1f s; outputs in %s/output", j->id, j->finished - j->started, j->dir);
    c->running = -1;
}

/* ---- phase 1: the prior farm ---- */

/* A string the job keeps (its sd_job_t frees it), or fallback when out of room or memory. */
static const char *s_keep(co_job_t *j, const char *s, const char *fallback)
{
    if (!s[0] || j->job.nstrings == (int)(sizeof j->job.strings / sizeof j->job.strings[0])) return fallback;
    char *d = strdup(s);
    if (!d) return fallback;
    j->job.strings[j->job.nstrings++] = d;
    return d;
}

/* The job's model as the first worker that has it describes it. */
static int s_origin(co_t *c, co_job_t *j)
{
    if (j->origin.latent_channels) return BT_OK;
    int w = co_idle_worker(c, j);
    if (w < 0) return BT_EAGAIN;
    const co_peer_t *p = &c->peers[w];
    sd_train_config_t *cf = &j->job.cfg;
    j->origin.model_dir = cf->model_dir;
    snprintf(j->origin.model_hash, sizeof j->origin.model_hash, "%s", p->model_hash);
    snprintf(j->origin.vae_hash, sizeof j->origin.vae_hash, "%s", p->vae_hash);
    j->origin.sampler = s_keep(j, p->sampler, "?"); /* the job keeps it: peers come and go */
    j->origin.latent_channels = p->latent_channels;
    j->origin.latent_scale = p->latent_scale;
    cf->base_weights = s_keep(j, p->weights, "exact");
    sd_train_config_resolve(cf);
    j->spec = (sd_prior_spec_t){.prompt = cf->class_prompt,
                                .seed = cf->seed,
                                .steps = cf->class_steps,
                                .guidance = cf->class_guidance,
                                .resolution = cf->resolution,
                                .weights = cf->base_weights};
    return BT_OK;
}

static void s_start_priors(co_t *c, co_job_t *j)
{
    const sd_prior_spec_t *s = &j->spec;
    /* the cache key: everything that makes image i what it is */
    char nums[160], hex[BT_HASH_HEX];
    snprintf(nums, sizeof nums, "|%llu|%d|%.9g|%d|", (unsigned long long)s->seed, s->steps, (double)s->guidance,
             s->resolution);
    bt_xxh64_t h;
    bt_xxh64_init(&h, 0);
    const char *parts[4] = {j->origin.model_hash, s->prompt, nums, s->weights};
    for (int i = 0; i < 4; i++) bt_xxh64_update(&h, parts[i], strlen(parts[i]) + 1);
    bt_hash_hex(bt_xxh64_digest(&h), hex);
    snprintf(j->priors_path, sizeof j->priors_path, "%s/%s.h5", c->priors_dir, hex);
    j->job.cfg.class_dir = j->priors_path;
    int want = j->job.cfg.num_class_images, n = 0;
    int *missing = bt_malloc((size_t)want * sizeof *missing);
    if (!missing || sd_priors_missing(j->priors_path, s, &j->origin, want, missing, &n)) {
        free(missing);
        s_fail(c, j, bt_log_last_error());
        return;
    }
    j->priors_total = want;
    j->priors_done = want - n;
    if (n < want)
        BT_INFO("job %s: %d of %d prior images already in %s", j->id, want - n, want, j->priors_path);
    /* contiguous runs of missing indices, cut so every live worker gets a share */
    int workers = 0;
    for (int i = 0; i < CO_MAX_PEERS; i++) workers += c->peers[i].used && c->peers[i].role == BOOTH__ROLE__ROLE_WORKER;
    int per = c->o.priors_per_task > 0 ? c->o.priors_per_task : (n + 2 * (workers ? workers : 1) - 1) / (2 * (workers ? workers : 1));
    if (per < 1) per = 1;
    if (per > 16) per = 16;
    for (int i = 0; i < n;) {
        int k = 1;
        while (i + k < n && k < per && missing[i + k] == missing[i] + k) k++;
        co_task_t *t = s_task_add(j, BOOTH__TASK__KIND__PRIORS, c->next_task++);
        if (!t) break;
        t->first = missing[i];
        t->count = k;
        i += k;
    }
    free(missing);
    if (n) BT_INFO("job %s: %d prior images to generate in %d tasks", j->id, n, j->ntasks);
}

static void s_start_prepare(co_t *c, co_job_t *j);

static void s_priors_finished(co_t *c, co_job_t *j)
{
    if (sd_priors_assemble(j->priors_path, &j->spec, &j->origin, j->job.cfg.num_class_images)) {
        s_fail(c, j, bt_log_last_error());
        return;
    }
    s_clear_tasks(j);
    if (j->priors_only) {
        char out[4400], dst[4500], *data = NULL;
        size_t len;
        snprintf(out, sizeof out, "%s/output", j->dir);
        snprintf(dst, sizeof dst, "%s/priors.h5", out);
        if (bt_mkdirs(out) || bt_read_file(j->priors_path, &data, &len) || bt_write_file_atomic(dst, data, len)) {
            free(data);
            s_fail(c, j, bt_log_last_error());
            return;
        }
        free(data);
        s_done(c, j);
        return;
    }
    s_start_prepare(c, j);
}

static void s_on_priors_result(co_t *c, co_job_t *j, co_task_t *t, pr_msg_t *m)
{
    int64_t R = j->spec.resolution, C = j->origin.latent_channels, h = sd_prior_latent_side(&j->origin, R), np, nm,
            nl;
    size_t nb;
    const uint8_t *pix = pr_blob_bytes(m, "pixels", &nb);
    const float *mean = pr_blob_f32(m, "mean", &nm), *logvar = pr_blob_f32(m, "logvar", &nl);
    np = (int64_t)nb;
    if (!pix || !mean || !logvar || np != (int64_t)t->count * R * R * 3 || nm != (int64_t)t->count * C * h * h ||
        nl != nm) {
        BT_WARN("%s: prior images %lld+%d: blobs missing or of the wrong size; the range is handed out again",
                m->peer, (long long)t->first, t->count);
        t->peer = -1;
        return;
    }
    char parts[4400], part[4500];
    if (sd_priors_parts_dir(parts, sizeof parts, j->priors_path) ||
        sd_priors_part_path(part, sizeof part, j->priors_path, t->first)) {
        s_fail(c, j, "the prior set's path is too long for its part files");
        return;
    }
    if (bt_mkdirs(parts) ||
        sd_priors_part_write(part, &j->spec, &j->origin, t->first, t->count, pix, mean, logvar)) {
        s_fail(c, j, bt_log_last_error());
        return;
    }
    t->done = true;
    j->priors_done += t->count;
    BT_INFO("job %s: prior images %lld..%lld from %s (%d/%d)", j->id, (long long)t->first,
            (long long)(t->first + t->count - 1), c->peers[t->peer].name, j->priors_done, j->priors_total);
    if (s_tasks_done(j)) s_priors_finished(c, j);
}

/* ---- phase 2: the job's data ---- */

/* What checkpoints record besides the optimizer state: the job, its data, the model. */
static void s_ckpt_data(const co_job_t *j, sd_ckpt_data_t *d)
{
    *d = (sd_ckpt_data_t){.cfg = &j->job.cfg,
                          .instances = &j->inst,
                          .classes = j->job.cfg.prior_preservation ? &j->cls : NULL,
                          .sampler = j->origin.sampler};
    snprintf(d->ids.model, sizeof d->ids.model, "%s", j->origin.model_hash);
    snprintf(d->ids.vae, sizeof d->ids.vae, "%s", j->origin.vae_hash);
}

static void s_start_prepare(co_t *c, co_job_t *j)
{
    co_job_set_state(c, j, CO_PREPARE, NULL);
    s_task_add(j, BOOTH__TASK__KIND__PREPARE, c->next_task++);
}

/* An image set from blobs PREFIX/pixels, mean, logvar[, mean_f, logvar_f], names. */
static int s_read_set(pr_msg_t *m, const char *prefix, int res, int64_t side, sd_image_set_t *s)
{
    char name[64];
    memset(s, 0, sizeof *s);
    snprintf(name, sizeof name, "%s/mean", prefix);
    int bi = pr_blob_find(m, name);
    if (bi < 0 || m->env->blobs[bi]->n_shape != 4) {
        BT_WARN("%s: no 4-D blob %s", m->peer, name);
        return BT_EFORMAT;
    }
    const int64_t *sh = m->env->blobs[bi]->shape;
    if (sh[0] < 1 || sh[0] > 100000 || sh[1] < 1 || sh[2] < 1 || sh[3] < 1 || sh[2] != side || sh[3] != side) {
        BT_WARN("%s: %s has shape [%lld, %lld, %lld, %lld] for %d px images", m->peer, name, (long long)sh[0],
                (long long)sh[1], (long long)sh[2], (long long)sh[3], res);
        return BT_ESHAPE;
    }
    s->n = (int)sh[0];
    s->C = sh[1];
    s->h = sh[2];
    s->w = sh[3];
    s->res = res;
    int64_t per = s->C * s->h * s->w, npix = (int64_t)res * res * 3;
    const char *const arrays[4] = {"mean", "logvar", "mean_f", "logvar_f"};
    float **dst[4] = {&s->mean, &s->logvar, &s->mean_f, &s->logvar_f};
    for (int k = 0; k < 4; k++) {
        int64_t n;
        snprintf(name, sizeof name, "%s/%s", prefix, arrays[k]);
        if (k >= 2 && pr_blob_find(m, name) < 0) break; /* no flips */
        const float *src = pr_blob_f32(m, name, &n);
        if (!src || n != s->n * per) return BT_EFORMAT;
        if (!(*dst[k] = bt_malloc((size_t)n * sizeof(float)))) return BT_ENOMEM;
        memcpy(*dst[k], src, (size_t)n * sizeof(float));
    }
    size_t nb, nn;
    snprintf(name, sizeof name, "%s/pixels", prefix);
    const uint8_t *pix = pr_blob_bytes(m, name, &nb);
    snprintf(name, sizeof name, "%s/names", prefix);
    const uint8_t *names = pr_blob_bytes(m, name, &nn);
    if (!pix || (int64_t)nb != s->n * npix || !names) return BT_EFORMAT;
    if (!(s->pixels = bt_malloc(nb)) || !(s->paths = bt_calloc((size_t)s->n + 1, sizeof *s->paths))) return BT_ENOMEM;
    memcpy(s->pixels, pix, nb);
    const char *p = (const char *)names, *end = p + nn;
    for (int i = 0; i < s->n; i++) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t len = nl ? (size_t)(nl - p) : (size_t)(end - p);
        if (!(s->paths[i] = strndup(p, len))) return BT_ENOMEM;
        p = nl ? nl + 1 : end;
    }
    return BT_OK;
}

static void s_start_training(co_t *c, co_job_t *j);

static void s_on_prepare_result(co_t *c, co_job_t *j, co_task_t *t, pr_msg_t *m)
{
    const sd_train_config_t *cf = &j->job.cfg;
    int64_t side = sd_prior_latent_side(&j->origin, cf->resolution);
    int rc = s_read_set(m, "inst", cf->resolution, side, &j->inst);
    if (rc == BT_OK && cf->prior_preservation) rc = s_read_set(m, "cls", cf->resolution, side, &j->cls);
    /* the initial LoRA: p/NAME in the job's global order */
    int nt = 0;
    for (size_t i = 0; i < m->env->n_blobs; i++) nt += !strncmp(m->env->blobs[i]->name, "p/", 2);
    int64_t total = 0;
    if (rc == BT_OK && (nt < 2 || !(j->tnames = bt_calloc((size_t)nt, sizeof *j->tnames)) ||
                        !(j->tshape = bt_calloc((size_t)nt, sizeof *j->tshape))))
        rc = nt < 2 ? BT_EFORMAT : BT_ENOMEM;
    for (size_t i = 0, k = 0; i < m->env->n_blobs && rc == BT_OK; i++) {
        const Booth__Blob *b = m->env->blobs[i];
        if (strncmp(b->name, "p/", 2)) continue;
        if (b->kind != BOOTH__BLOB__KIND__F32 || b->n_shape != 2 || b->shape[0] < 1 || b->shape[1] < 1 ||
            strlen(b->name + 2) >= SD_OPTIM_NAME_MAX) {
            BT_WARN("%s: LoRA tensor blob '%s' is not a 2-D F32 matrix", m->peer, b->name);
            rc = BT_EFORMAT;
            break;
        }
        snprintf(j->tnames[k], SD_OPTIM_NAME_MAX, "%s", b->name + 2);
        j->tshape[k][0] = b->shape[0];
        j->tshape[k][1] = b->shape[1];
        total += b->shape[0] * b->shape[1];
        k++;
    }
    j->ntensors = nt;
    if (rc == BT_OK && !(j->init = bt_malloc((size_t)total * sizeof(float)))) rc = BT_ENOMEM;
    for (int k = 0, at = 0; k < nt && rc == BT_OK; k++) {
        char name[SD_OPTIM_NAME_MAX + 4];
        int64_t n;
        snprintf(name, sizeof name, "p/%s", j->tnames[k]);
        const float *v = pr_blob_f32(m, name, &n);
        if (!v) rc = BT_EFORMAT;
        else memcpy(j->init + at, v, (size_t)n * sizeof(float));
        at += (int)n;
    }
    if (rc) {
        char why[1200];
        snprintf(why, sizeof why, "the prepared data from %s is malformed (%s)", m->peer, bt_status_str(rc));
        s_fail(c, j, why);
        return;
    }
    /* the encoded sets as one file: every other worker loads them instead of encoding again */
    sd_ckpt_data_t d;
    s_ckpt_data(j, &d);
    char *bytes = NULL;
    size_t len = 0;
    snprintf(j->data_path, sizeof j->data_path, "%s/data.h5", j->dir);
    if (sd_job_data_write(j->data_path, &d) || bt_read_file(j->data_path, &bytes, &len)) {
        j->data_path[0] = '\0';
        s_fail(c, j, bt_log_last_error());
        return;
    }
    j->data_hash = bt_xxh64(bytes, len, 0) | 1; /* never 0: 0 means "the uploaded files" */
    free(bytes);
    t->done = true;
    BT_INFO("job %s: %d instance and %d class images encoded by %s; %d LoRA tensors (%lld parameters)", j->id,
            j->inst.n, j->cls.n, c->peers[t->peer].name, nt, (long long)total);
    s_clear_tasks(j);
    s_start_training(c, j);
}

/* ---- phase 3: training ----
 *
 * The parameter servers are loaded from the restore point (j->restore: the
 * initial LoRA at step 0, then the state of every checkpoint) and compute
 * steps j->step = restore step, ... A PS that dies costs the steps since the
 * restore point: every live PS is loaded again from it (the tensors spread
 * over the PS that are left) and the steps are computed again. Each step is a
 * pure function of the state before it, so the replayed steps give the bits
 * the lost ones had; they are not recorded twice (the run loop already has
 * them). A gathered state is only promoted to restore point once complete. */

static void s_start_step(co_t *c, co_job_t *j);
static void s_after_step(co_t *c, co_job_t *j);

static sd_optim_t *s_new_state(co_t *c, co_job_t *j)
{
    sd_optim_spec_t *spec = bt_calloc((size_t)j->ntensors, sizeof *spec);
    if (!spec) return NULL;
    for (int i = 0; i < j->ntensors; i++)
        spec[i] = (sd_optim_spec_t){.name = j->tnames[i], .index = i, .shape = {j->tshape[i][0], j->tshape[i][1]}};
    sd_optim_config_t oc;
    sd_optim_config_from_train(&oc, &j->job.cfg);
    sd_optim_t *o = sd_optim_new(c->nn, &oc, spec, j->ntensors);
    free(spec);
    return o;
}

static void s_start_training(co_t *c, co_job_t *j)
{
    co_job_set_state(c, j, CO_TRAINING, NULL);
    sd_train_config_t *cf = &j->job.cfg;
    char out[4400], ckpt[4500] = "";
    snprintf(out, sizeof out, "%s/output", j->dir);
    j->M = sd_train_num_microbatches(cf);
    j->mb_loss = bt_calloc((size_t)j->M, sizeof(double));
    j->mb_li = bt_calloc((size_t)j->M, sizeof(double));
    j->mb_lp = bt_calloc((size_t)j->M, sizeof(double));
    j->ss = bt_calloc((size_t)j->ntensors, sizeof(double));
    j->restore = s_new_state(c, j);
    j->gather = s_new_state(c, j);
    if (!j->restore || !j->gather || !j->mb_loss || !j->mb_li || !j->mb_lp || !j->ss) {
        s_fail(c, j, "out of memory");
        return;
    }
    for (int i = 0, at = 0; i < j->ntensors; at += (int)j->restore->t[i].numel, i++) /* step 0: the initial LoRA */
        memcpy(j->restore->t[i].p, j->init + at, (size_t)j->restore->t[i].numel * sizeof(float));
    /* a job that ran before the coordinator restarted goes on from its last checkpoint */
    sd_train_history_t hist = {0};
    int found = sd_checkpoint_latest(out, ckpt, sizeof ckpt);
    if (found > 0) {
        sd_ckpt_data_t d;
        s_ckpt_data(j, &d);
        if (sd_checkpoint_resume(ckpt, j->restore, &d, &hist)) {
            sd_history_free(&hist);
            s_fail(c, j, bt_log_last_error());
            return;
        }
        BT_INFO("job %s: resumes from %s at step %lld", j->id, ckpt, (long long)j->restore->step);
    }
    j->loop = sd_loop_new(out, cf, found > 0 ? ckpt : NULL, &hist, false);
    sd_history_free(&hist);
    if (!j->loop) {
        s_fail(c, j, bt_log_last_error());
        return;
    }
    j->after_done = -1; /* unknown: whatever is owed for the last recorded step is done (again) */
    j->wait = CO_W_LOADED; /* the parameter servers are loaded as soon as there is one (co_schedule) */
    j->nps = 0;
}

/* Spreads the restore point over the live parameter servers (tensor i on slot i % K) and goes on
 * from its step. */
static void s_load_ps(co_t *c, co_job_t *j)
{
    int K = co_count_ps(c);
    if (K == 0) return; /* status says "waiting for a parameter server" */
    free(j->ps);
    if (!(j->ps = bt_calloc((size_t)K, sizeof *j->ps))) return;
    for (int i = 0, k = 0; i < CO_MAX_PEERS && k < K; i++)
        if (c->peers[i].used && c->peers[i].role == BOOTH__ROLE__ROLE_PS) j->ps[k++] = i;
    j->nps = K;
    const sd_optim_t *r = j->restore;
    int32_t *index = bt_calloc((size_t)j->ntensors, sizeof *index);
    pr_blob_t *blobs = bt_calloc((size_t)(3 * j->ntensors), sizeof *blobs);
    char (*names)[SD_OPTIM_NAME_MAX + 4] = bt_calloc((size_t)(3 * j->ntensors), sizeof *names);
    int rc = index && blobs && names ? BT_OK : BT_ENOMEM;
    for (int k = 0; k < K && rc == BT_OK; k++) {
        int n = 0, nb = 0;
        for (int i = 0; i < j->ntensors; i++) {
            if (i % K != k) continue;
            index[n++] = i;
            const float *src[3] = {r->t[i].p, r->t[i].m, r->t[i].v};
            static const char *const pre[3] = {"p", "m", "v"};
            for (int q = 0; q < 3; q++) {
                snprintf(names[nb], sizeof names[nb], "%s/%s", pre[q], j->tnames[i]);
                blobs[nb] = pr_blob_of_f32(names[nb], src[q], 2, j->tshape[i]);
                nb++;
            }
        }
        Booth__PsLoad l = BOOTH__PS_LOAD__INIT;
        l.job_id = j->id;
        l.job_json = j->json;
        l.step = r->step;
        l.n_index = (size_t)n;
        l.index = index;
        l.microbatches = j->M;
        Booth__Envelope env = PR_ENVELOPE_INIT(PS_LOAD, ps_load, &l);
        rc = co_send(c, j->ps[k], &env, blobs, nb);
        c->peers[j->ps[k]].ntensors = n;
    }
    free(index);
    free(blobs);
    free(names);
    if (rc) {
        s_fail(c, j, "cannot load the parameter servers");
        return;
    }
    j->step = r->step;
    j->applied = 0;
    j->wait = CO_W_LOADED;
    BT_INFO("job %s: %d LoRA tensors on %d parameter server%s from step %lld; %d micro-batch%s per step", j->id,
            j->ntensors, K, K == 1 ? "" : "s", (long long)j->step, j->M, j->M == 1 ? "" : "es");
    if (j->step < sd_loop_steps(j->loop))
        BT_INFO("job %s: steps %lld..%lld are computed again (they were lost with a parameter server)", j->id,
                (long long)j->step + 1, (long long)sd_loop_steps(j->loop));
}

void co_worker_lost(co_t *c, co_job_t *j, int peer)
{
    int n = 0;
    for (int i = 0; i < j->ntasks; i++)
        if (!j->tasks[i].done && j->tasks[i].peer == peer) {
            j->tasks[i].peer = -1; /* handed out again; a late result from the lost worker still counts once */
            n++;
        }
    if (n) BT_WARN("job %s: %d task%s of worker %s handed out again", j->id, n, n == 1 ? "" : "s", c->peers[peer].name);
}

void co_ps_lost(co_t *c, co_job_t *j, int peer)
{
    bool ours = false;
    for (int k = 0; k < j->nps; k++) ours |= j->ps[k] == peer;
    if (!ours || j->state != CO_TRAINING) return;
    BT_WARN("job %s: lost parameter server %s at step %lld; reloading the live ones from step %lld", j->id,
            c->peers[peer].name, (long long)j->step, (long long)j->restore->step);
    s_clear_tasks(j); /* results of the abandoned step are ignored: its tasks are gone */
    free(j->ps);
    j->ps = NULL;
    j->nps = 0;
    j->wait = CO_W_LOADED; /* co_schedule loads them (now, or once a PS registers) */
}

static void s_start_step(co_t *c, co_job_t *j)
{
    s_clear_tasks(j);
    for (int k = 0; k < j->M; k++) {
        co_task_t *t = s_task_add(j, BOOTH__TASK__KIND__MICROBATCH, c->next_task++);
        if (!t) {
            s_fail(c, j, "out of memory");
            return;
        }
        t->step = j->step;
        t->micro = k;
        t->version = j->step;
    }
    j->results = j->ready = j->applied = 0;
    j->step_t0 = co_now();
    j->wait = CO_W_STEP;
    s_hand_out(c, j);
}

static void s_gather(co_t *c, co_job_t *j, bool final)
{
    Booth__GetState g = BOOTH__GET_STATE__INIT;
    g.job_id = j->id;
    j->states = 0;
    j->gather_final = final;
    j->wait = CO_W_STATE;
    for (int k = 0; k < j->nps; k++) {
        Booth__Envelope env = PR_ENVELOPE_INIT(GET_STATE, get_state, &g);
        co_send(c, j->ps[k], &env, NULL, 0);
    }
}

static void s_finish(co_t *c, co_job_t *j, const sd_optim_t *state)
{
    if (sd_loop_finish(j->loop, state, j->job.cfg.model_dir)) {
        s_fail(c, j, bt_log_last_error());
        return;
    }
    s_done(c, j);
}

static void s_next_or_finish(co_t *c, co_job_t *j)
{
    j->after_done = sd_loop_steps(j->loop);
    if (sd_loop_steps(j->loop) < j->job.cfg.max_train_steps) {
        s_start_step(c, j);
        return;
    }
    if (j->restore->step == sd_loop_steps(j->loop)) { /* the last checkpoint's state is the final one */
        s_finish(c, j, j->restore);
        return;
    }
    s_gather(c, j, true);
}

/* After a step's checkpoint (if due): the validation render (if due), then on. */
static void s_after_checkpoint(co_t *c, co_job_t *j)
{
    if (sd_loop_validation_due(j->loop)) {
        s_clear_tasks(j);
        co_task_t *t = s_task_add(j, BOOTH__TASK__KIND__VALIDATE, c->next_task++);
        if (!t) {
            s_fail(c, j, "out of memory");
            return;
        }
        t->step = t->version = j->step;
        j->wait = CO_W_VALIDATE;
        s_hand_out(c, j);
        return;
    }
    s_next_or_finish(c, j);
}

static void s_after_step(co_t *c, co_job_t *j)
{
    if (sd_loop_checkpoint_due(j->loop) && j->restore->step != j->step) {
        s_gather(c, j, false);
        return;
    }
    s_after_checkpoint(c, j);
}

/* Every micro-batch result and every PS's sums are in: the global norm, then Apply. */
static void s_maybe_apply(co_t *c, co_job_t *j)
{
    if (j->wait != CO_W_STEP || j->results < j->M || j->ready < j->nps) return;
    double norm = sd_grad_norm(j->ss, j->ntensors);
    Booth__Apply a = BOOTH__APPLY__INIT;
    a.job_id = j->id;
    a.step = j->step;
    a.grad_norm = norm;
    j->applied = 0;
    j->wait = CO_W_APPLIED;
    for (int k = 0; k < j->nps; k++) {
        Booth__Envelope env = PR_ENVELOPE_INIT(APPLY, apply, &a);
        co_send(c, j->ps[k], &env, NULL, 0);
    }
}

static co_job_t *s_running(co_t *c) { return c->running >= 0 ? c->jobs[c->running] : NULL; }

/* The running job if the message is about it, else NULL (one debug line). */
static co_job_t *s_job_for(co_t *c, const char *job_id, pr_msg_t *m)
{
    co_job_t *j = s_running(c);
    if (!j || !job_id || strcmp(j->id, job_id)) {
        BT_DEBUG("%s: '%s' for job %s, which is not running; ignored", m->peer, pr_body_name(m->env->body_case),
                 job_id ? job_id : "?");
        return NULL;
    }
    return j;
}

static int s_slot_of(const co_job_t *j, int peer)
{
    for (int k = 0; k < j->nps; k++)
        if (j->ps[k] == peer) return k;
    return -1;
}

void co_on_ps_loaded(co_t *c, int peer, pr_msg_t *m)
{
    const Booth__PsLoaded *l = m->env->ps_loaded;
    co_job_t *j = s_job_for(c, l->job_id, m);
    if (!j || j->wait != CO_W_LOADED || s_slot_of(j, peer) < 0 || l->step != j->step) return;
    if (++j->applied < j->nps) return;
    if (j->step < sd_loop_steps(j->loop) || j->after_done == sd_loop_steps(j->loop))
        s_start_step(c, j); /* a replay, or on after the step's checkpoint and validation */
    else
        s_after_step(c, j); /* the step's checkpoint or validation may be owed (each is idempotent) */
}

void co_on_grad_ready(co_t *c, int peer, pr_msg_t *m)
{
    const Booth__GradReady *g = m->env->grad_ready;
    co_job_t *j = s_job_for(c, g->job_id, m);
    if (!j) return;
    int slot = s_slot_of(j, peer);
    if (j->wait != CO_W_STEP || slot < 0 || g->step != j->step || g->n_index != g->n_sum_squares) {
        BT_DEBUG("%s: gradient sums for step %lld out of turn; ignored", m->peer, (long long)g->step);
        return;
    }
    for (size_t i = 0; i < g->n_index; i++) {
        int idx = g->index[i];
        if (idx < 0 || idx >= j->ntensors || idx % j->nps != slot) {
            BT_WARN("%s: gradient sums name tensor %d, which it does not hold; ignored", m->peer, idx);
            return;
        }
        j->ss[idx] = g->sum_squares[i];
    }
    j->ready++;
    s_maybe_apply(c, j);
}

void co_on_applied(co_t *c, int peer, pr_msg_t *m)
{
    const Booth__Applied *a = m->env->applied;
    co_job_t *j = s_job_for(c, a->job_id, m);
    if (!j || j->wait != CO_W_APPLIED || s_slot_of(j, peer) < 0 || a->step != j->step + 1) return;
    j->lr = a->lr;
    if (++j->applied < j->nps) return;
    /* the step is taken: record it as booth train does */
    sd_step_stats_t st = {.lr = j->lr, .grad_norm = sd_grad_norm(j->ss, j->ntensors)};
    for (int k = 0; k < j->M; k++) {
        st.loss += j->mb_loss[k];
        st.loss_instance += j->mb_li[k];
        st.loss_prior += j->mb_lp[k];
    }
    st.loss_instance /= j->job.cfg.train_batch_size;
    st.loss_prior /= j->job.cfg.train_batch_size;
    j->step++;
    int64_t s = j->step;
    if (s <= sd_loop_steps(j->loop)) { /* a replayed step: recorded already, and it must agree */
        const sd_train_history_t *h = &j->loop->hist;
        if (h->loss[s - 1] != st.loss || h->grad_norm[s - 1] != st.grad_norm)
            BT_WARN("job %s: step %lld computed again gives loss %.9g (was %.9g): the run is not deterministic here",
                    j->id, (long long)s, st.loss, h->loss[s - 1]);
        if (s < sd_loop_steps(j->loop) || j->after_done == s) s_start_step(c, j);
        else s_after_step(c, j);
        if (s == sd_loop_steps(j->loop)) BT_INFO("job %s: caught up at step %lld", j->id, (long long)s);
        return;
    }
    if (sd_loop_step_done(j->loop, &st, co_now() - j->step_t0)) {
        s_fail(c, j, bt_log_last_error());
        return;
    }
    if (s == 1 || s % 10 == 0 || s == j->job.cfg.max_train_steps)
        BT_INFO("job %s: step %lld/%lld loss %.4f lr %.3g (%.2f s)", j->id, (long long)s,
                (long long)j->job.cfg.max_train_steps, st.loss, st.lr, co_now() - j->step_t0);
    s_after_step(c, j);
}

void co_on_state(co_t *c, int peer, pr_msg_t *m)
{
    const Booth__State *s = m->env->state;
    co_job_t *j = s_job_for(c, s->job_id, m);
    if (!j) return;
    int slot = s_slot_of(j, peer);
    if (j->wait != CO_W_STATE || slot < 0 || s->step != j->step) {
        BT_DEBUG("%s: state at step %lld out of turn; ignored", m->peer, (long long)s->step);
        return;
    }
    for (size_t i = 0; i < s->n_index; i++) {
        int idx = s->index[i];
        if (idx < 0 || idx >= j->ntensors) {
            BT_WARN("%s: state names tensor %d of %d; ignored", m->peer, idx, j->ntensors);
            return;
        }
        sd_optim_tensor_t *t = &j->gather->t[idx];
        float *dst[3] = {t->p, t->m, t->v};
        static const char *const pre[3] = {"p", "m", "v"};
        for (int q = 0; q < 3; q++) {
            char name[SD_OPTIM_NAME_MAX + 4];
            int64_t n;
            snprintf(name, sizeof name, "%s/%s", pre[q], t->name);
            const float *v = pr_blob_f32(m, name, &n);
            if (!v || n != t->numel) {
                BT_WARN("%s: state blob %s missing or of the wrong size; ignored", m->peer, name);
                return;
            }
            memcpy(dst[q], v, (size_t)n * sizeof(float));
        }
    }
    if (++j->states < j->nps) return;
    j->gather->step = j->step;
    if (j->gather_final) {
        s_finish(c, j, j->gather);
        return;
    }
    sd_ckpt_data_t d;
    s_ckpt_data(j, &d);
    if (sd_loop_checkpoint(j->loop, j->gather, &d, j->job.cfg.prior_preservation ? j->priors_path : NULL)) {
        s_fail(c, j, bt_log_last_error());
        return;
    }
    BT_INFO("job %s: %s", j->id, j->loop->last_ckpt);
    sd_optim_t *tmp = j->restore; /* the complete state is the new restore point */
    j->restore = j->gather;
    j->gather = tmp;
    s_after_checkpoint(c, j);
}

/* ---- results ---- */

void co_on_task_result(co_t *c, int peer, pr_msg_t *m)
{
    const Booth__TaskResult *r = m->env->task_result;
    co_peer_t *p = &c->peers[peer];
    if (p->task == r->task_id) {
        p->task = 0;
        p->tasks_done++;
        p->busy_s += co_now() - p->task_t0;
    }
    co_job_t *j = s_job_for(c, r->job_id, m);
    if (!j) return;
    co_task_t *t = s_task_find(j, r->task_id);
    if (!t || t->done) { /* a late copy of a result counted already, or of an abandoned step */
        BT_DEBUG("%s: result of task %llu, which is not outstanding; ignored", m->peer,
                 (unsigned long long)r->task_id);
        return;
    }
    if (t->peer != peer) /* it was handed out again after this worker was declared dead: first answer counts */
        BT_INFO("job %s: task %llu answered by %s, declared dead before; counted", j->id, (unsigned long long)t->id,
                p->name);
    t->peer = peer;
    if (!r->ok) {
        char why[1400];
        snprintf(why, sizeof why, "worker %s: %s", p->name, r->error && r->error[0] ? r->error : "task failed");
        s_fail(c, j, why);
        return;
    }
    switch (t->kind) {
    case BOOTH__TASK__KIND__PRIORS: s_on_priors_result(c, j, t, m); break;
    case BOOTH__TASK__KIND__PREPARE: s_on_prepare_result(c, j, t, m); break;
    case BOOTH__TASK__KIND__MICROBATCH:
        t->done = true;
        j->mb_loss[t->micro] = r->loss;
        j->mb_li[t->micro] = r->loss_instance;
        j->mb_lp[t->micro] = r->loss_prior;
        j->results++;
        s_maybe_apply(c, j);
        break;
    case BOOTH__TASK__KIND__VALIDATE: {
        size_t len;
        const uint8_t *png = pr_blob_bytes(m, "grid.png", &len);
        if (!png || sd_loop_validation_png(j->loop, png, len)) {
            s_fail(c, j, png ? bt_log_last_error() : "the validation render came without its grid.png");
            return;
        }
        t->done = true;
        s_next_or_finish(c, j);
        break;
    }
    default: break;
    }
}

/* ---- the schedule ---- */

void co_schedule(co_t *c)
{
    co_job_t *j = s_running(c);
    if (!j) {
        for (int i = 0; i < c->njobs; i++)
            if (c->jobs[i]->state == CO_QUEUED) {
                c->running = i;
                j = c->jobs[i];
                j->started = co_now();
                s_clear_tasks(j);
                break;
            }
        if (!j) return;
        if (s_origin(c, j)) { /* no worker with the job's model yet: stay queued */
            c->running = -1;
            return;
        }
        BT_INFO("job %s started", j->id);
        if (j->priors_only || j->job.cfg.prior_preservation) {
            co_job_set_state(c, j, CO_PRIORS, NULL);
            s_start_priors(c, j);
            if (c->running < 0) return;
            if (j->ntasks == 0) s_priors_finished(c, j);
        } else {
            s_start_prepare(c, j);
        }
        if (!(j = s_running(c))) return;
    }
    if (j->state == CO_TRAINING && j->wait == CO_W_LOADED && j->nps == 0) s_load_ps(c, j);
    co_check_workers(c, j);
    s_hand_out(c, j);
}
