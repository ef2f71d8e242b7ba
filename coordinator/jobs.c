/*
 * jobs.c — the coordinator's job queue: submissions checked and persisted
 * under STATE/jobs/ID (job.json, meta.json, instance/, status.json, output/,
 * each written crash-safe), the queue rebuilt from there at start, and the
 * client requests: status, cancel, fetch, and a worker's GetJob.
 */
#include "common/alloc.h"
#include "coordinator/internal.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/fileio.h"
#include "common/log.h"
#include "common/status.h"
#include "diffusion/dataset.h"

const char *co_state_name(co_state_t s)
{
    static const char *const names[] = {"queued", "priors", "prepare", "training", "done", "failed", "cancelled"};
    return (unsigned)s < sizeof names / sizeof names[0] ? names[s] : "?";
}

static bool s_state_parse(const char *name, co_state_t *out)
{
    for (int s = CO_QUEUED; s <= CO_CANCELLED; s++)
        if (!strcmp(name, co_state_name((co_state_t)s))) {
            *out = (co_state_t)s;
            return true;
        }
    return false;
}

static int s_write_json(const char *path, cJSON *o)
{
    char *text = cJSON_Print(o);
    int rc = text ? bt_write_file_atomic(path, text, strlen(text)) : BT_ENOMEM;
    cJSON_free(text);
    return rc;
}

static void s_save_status(co_job_t *j)
{
    char path[4400];
    snprintf(path, sizeof path, "%s/status.json", j->dir);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "state", co_state_name(j->state));
    if (j->error[0]) cJSON_AddStringToObject(o, "error", j->error);
    s_write_json(path, o);
    cJSON_Delete(o);
}

void co_job_set_state(co_t *c, co_job_t *j, co_state_t s, const char *fmt, ...)
{
    (void)c;
    j->state = s;
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(j->error, sizeof j->error, fmt, ap);
        va_end(ap);
    }
    if (s >= CO_DONE) j->finished = co_now();
    if (s == CO_FAILED) BT_ERROR("job %s failed: %s", j->id, j->error);
    else BT_INFO("job %s: %s", j->id, co_state_name(s));
    s_save_status(j);
}

void co_job_free_run(co_job_t *j)
{
    sd_loop_destroy(&j->loop);
    sd_optim_destroy(&j->gather);
    sd_optim_destroy(&j->restore);
    sd_image_set_free(&j->inst);
    sd_image_set_free(&j->cls);
    free(j->tnames);
    free(j->tshape);
    free(j->init);
    free(j->ps);
    free(j->mb_loss);
    free(j->mb_li);
    free(j->mb_lp);
    free(j->ss);
    free(j->tasks);
    j->tnames = NULL;
    j->tshape = NULL;
    j->init = NULL;
    j->ps = NULL;
    j->mb_loss = j->mb_li = j->mb_lp = j->ss = NULL;
    j->tasks = NULL;
    j->ntasks = j->tasks_cap = j->ntensors = 0;
    j->data_path[0] = '\0';
    j->data_hash = 0;
    j->wait = CO_W_NONE;
}

void co_job_free(co_job_t *j)
{
    co_job_free_run(j);
    for (int i = 0; i < j->nfiles; i++) {
        free(j->fnames[i]);
        free(j->fdata[i]);
    }
    free(j->fnames);
    free(j->fdata);
    free(j->flen);
    sd_job_free(&j->job);
    free(j->json);
}

/* A name a client may give a file: no path, nothing hidden, printable. */
static bool s_safe_name(const char *n)
{
    size_t len = strlen(n);
    if (len == 0 || len > 200 || n[0] == '.') return false;
    for (size_t i = 0; i < len; i++)
        if (n[i] == '/' || n[i] == '\\' || (unsigned char)n[i] < 0x20) return false;
    return true;
}

static int s_add_job(co_t *c, co_job_t *j)
{
    if (c->njobs == c->jobs_cap) {
        int cap = c->jobs_cap ? 2 * c->jobs_cap : 16;
        co_job_t **p = bt_realloc(c->jobs, (size_t)cap * sizeof *p);
        if (!p) return BT_ENOMEM;
        c->jobs = p;
        c->jobs_cap = cap;
    }
    c->jobs[c->njobs++] = j;
    return BT_OK;
}

static co_job_t *s_find(co_t *c, const char *id)
{
    for (int i = 0; id && i < c->njobs; i++)
        if (!strcmp(c->jobs[i]->id, id)) return c->jobs[i];
    return NULL;
}

/* The job's settings checked as `booth train` (or `booth priors`) checks its flags. */
static int s_check_job(const co_job_t *j, char *why, size_t len)
{
    const sd_train_config_t *cf = &j->job.cfg;
    if (!cf->model_dir) return snprintf(why, len, "the job names no model"), BT_EINVAL;
    if (cf->resolution < 8 || cf->resolution % 8 || cf->resolution > 4096)
        return snprintf(why, len, "resolution %d is not a multiple of 8 up to 4096", cf->resolution), BT_EINVAL;
    if (j->priors_only || cf->prior_preservation) {
        if (!cf->class_prompt) return snprintf(why, len, "prior images need a class prompt"), BT_EINVAL;
        if (cf->num_class_images < 1 || cf->num_class_images > 100000 || cf->class_steps < 1 || cf->class_steps > 1000)
            return snprintf(why, len, "class images 1..100000 and class inference steps 1..1000"), BT_EINVAL;
    }
    if (j->priors_only) return BT_OK;
    if (!cf->instance_prompt) return snprintf(why, len, "the job has no instance prompt"), BT_EINVAL;
    if (j->nfiles < 1) return snprintf(why, len, "no instance images were uploaded"), BT_EINVAL;
    if (cf->rank < 1 || cf->rank > 1024 || cf->train_batch_size < 1 || cf->train_batch_size > 128 ||
        cf->max_train_steps < 1 || cf->max_train_steps > 100000000 || cf->micro_batch_size < 0 ||
        cf->checkpointing_steps < 0 || cf->validation_steps < 0 || cf->num_validation_images < 0 ||
        !(cf->learning_rate >= 0))
        return snprintf(why, len, "rank 1..1024, batch 1..128, steps >= 1, intervals >= 0"), BT_EINVAL;
    return BT_OK;
}

void co_on_submit(co_t *c, int peer, pr_msg_t *m)
{
    const Booth__Submit *s = m->env->submit;
    /* jobs waiting or running hold their photos in memory: a client that submits without end is
     * told to wait, before anything is allocated for its job */
    int open = 0;
    for (int i = 0; i < c->njobs; i++) open += c->jobs[i]->state < CO_DONE;
    if (open >= c->o.max_open_jobs) {
        char full[160];
        snprintf(full, sizeof full, "the queue is full: %d jobs are waiting or running; cancel some or submit later",
                 open);
        BT_WARN("%s: job refused: %s", m->peer, full);
        co_send_error(c, peer, full, false);
        return;
    }
    co_job_t *j = bt_calloc(1, sizeof *j);
    char why[512] = "";
    int rc = j ? BT_OK : BT_ENOMEM;
    if (rc == BT_OK) {
        snprintf(j->id, sizeof j->id, "job-%06d", ++c->next_job);
        snprintf(j->dir, sizeof j->dir, "%s/%s", c->jobs_dir, j->id);
        j->priors_only = s->priors_only;
        snprintf(j->model_hash, sizeof j->model_hash, "%s",
                 s->model_hash && strlen(s->model_hash) + 1 == BT_HASH_HEX ? s->model_hash : "");
        j->submitted = co_now();
        if (!s->job_json || sd_job_parse(&j->job, s->job_json, strlen(s->job_json), m->peer)) {
            snprintf(why, sizeof why, "the job spec does not parse: %s", bt_log_last_error());
            rc = BT_EFORMAT;
        }
    }
    size_t nb = m->env->n_blobs;
    if (rc == BT_OK && (!(j->fnames = bt_calloc(nb + 1, sizeof *j->fnames)) || !(j->fdata = bt_calloc(nb + 1, sizeof *j->fdata)) ||
                        !(j->flen = bt_calloc(nb + 1, sizeof *j->flen))))
        rc = BT_ENOMEM;
    for (size_t i = 0; i < nb && rc == BT_OK; i++) {
        const Booth__Blob *b = m->env->blobs[i];
        size_t len;
        const uint8_t *data = pr_blob_bytes(m, b->name, &len);
        if (!s_safe_name(b->name) || !data) {
            snprintf(why, sizeof why, "instance file name '%.100s' is not a plain file name", b->name);
            rc = BT_EINVAL;
            break;
        }
        for (int k = 0; k < j->nfiles; k++)
            if (!strcmp(j->fnames[k], b->name)) {
                snprintf(why, sizeof why, "instance file '%.100s' uploaded twice", b->name);
                rc = BT_EINVAL;
            }
        if (rc) break;
        if (!(j->fnames[j->nfiles] = strdup(b->name)) || !(j->fdata[j->nfiles] = bt_malloc(len ? len : 1))) {
            free(j->fnames[j->nfiles]);
            rc = BT_ENOMEM;
            break;
        }
        memcpy(j->fdata[j->nfiles], data, len);
        j->flen[j->nfiles++] = len;
    }
    if (rc == BT_OK) rc = s_check_job(j, why, sizeof why);
    if (rc == BT_OK) { /* persist before saying yes */
        char path[4600];
        cJSON *meta = cJSON_CreateObject();
        cJSON_AddBoolToObject(meta, "priors_only", j->priors_only);
        cJSON_AddStringToObject(meta, "model_hash", j->model_hash);
        snprintf(path, sizeof path, "%s/instance", j->dir);
        rc = bt_mkdirs(path);
        for (int k = 0; k < j->nfiles && rc == BT_OK; k++) {
            snprintf(path, sizeof path, "%s/instance/%s", j->dir, j->fnames[k]);
            rc = bt_write_file_atomic(path, j->fdata[k], j->flen[k]);
        }
        snprintf(path, sizeof path, "%s/meta.json", j->dir);
        if (rc == BT_OK) rc = s_write_json(path, meta);
        cJSON_Delete(meta);
        snprintf(path, sizeof path, "%s/job.json", j->dir);
        if (rc == BT_OK) rc = bt_write_file_atomic(path, s->job_json, strlen(s->job_json));
        if (rc) snprintf(why, sizeof why, "the coordinator cannot store the job: %s", bt_log_last_error());
    }
    if (rc == BT_OK && !(j->json = strdup(s->job_json))) rc = BT_ENOMEM;
    if (rc == BT_OK) rc = s_add_job(c, j);
    if (rc) {
        if (!why[0]) snprintf(why, sizeof why, "%s", bt_status_str(rc));
        BT_WARN("%s: job refused: %s", m->peer, why);
        co_send_error(c, peer, why, false);
        if (j) {
            co_job_free(j);
            free(j);
        }
        return;
    }
    j->state = CO_QUEUED;
    s_save_status(j);
    BT_INFO("job %s submitted by %s: %s, %d instance image%s", j->id, m->peer,
            j->priors_only ? "prior images only" : "DreamBooth LoRA", j->nfiles, j->nfiles == 1 ? "" : "s");
    Booth__Submitted r = BOOTH__SUBMITTED__INIT;
    r.job_id = j->id;
    Booth__Envelope env = PR_ENVELOPE_INIT(SUBMITTED, submitted, &r);
    co_send(c, peer, &env, NULL, 0);
}

/* ---- the state dir at start ---- */

static int s_load_job(co_t *c, const char *id)
{
    co_job_t *j = bt_calloc(1, sizeof *j);
    char path[4500], *text = NULL, **names = NULL;
    size_t len;
    int rc = j ? BT_OK : BT_ENOMEM, n = 0;
    if (rc) return rc;
    snprintf(j->id, sizeof j->id, "%s", id);
    snprintf(j->dir, sizeof j->dir, "%s/%s", c->jobs_dir, id);
    snprintf(path, sizeof path, "%s/job.json", j->dir);
    if ((rc = bt_read_file(path, &j->json, &len)) || (rc = sd_job_parse(&j->job, j->json, len, path))) goto out;
    snprintf(path, sizeof path, "%s/meta.json", j->dir);
    if ((rc = bt_read_file(path, &text, &len))) goto out;
    cJSON *meta = cJSON_Parse(text);
    const cJSON *po = cJSON_GetObjectItem(meta, "priors_only"), *mh = cJSON_GetObjectItem(meta, "model_hash");
    j->priors_only = cJSON_IsTrue(po);
    snprintf(j->model_hash, sizeof j->model_hash, "%s", cJSON_IsString(mh) ? mh->valuestring : "");
    cJSON_Delete(meta);
    free(text);
    text = NULL;
    snprintf(path, sizeof path, "%s/status.json", j->dir);
    if ((rc = bt_read_file(path, &text, &len))) goto out;
    cJSON *st = cJSON_Parse(text);
    const cJSON *sv = cJSON_GetObjectItem(st, "state"), *ev = cJSON_GetObjectItem(st, "error");
    if (!cJSON_IsString(sv) || !s_state_parse(sv->valuestring, &j->state)) {
        BT_ERROR("%s: no valid state", path);
        rc = BT_EFORMAT;
    }
    if (cJSON_IsString(ev)) snprintf(j->error, sizeof j->error, "%s", ev->valuestring);
    cJSON_Delete(st);
    if (rc) goto out;
    snprintf(path, sizeof path, "%s/instance", j->dir);
    if (!j->priors_only && (n = sd_list_images(path, &names)) < 0) {
        rc = n;
        goto out;
    }
    j->fnames = bt_calloc((size_t)n + 1, sizeof *j->fnames);
    j->fdata = bt_calloc((size_t)n + 1, sizeof *j->fdata);
    j->flen = bt_calloc((size_t)n + 1, sizeof *j->flen);
    if (!j->fnames || !j->fdata || !j->flen) rc = BT_ENOMEM;
    for (int k = 0; k < n && rc == BT_OK; k++) {
        const char *base = strrchr(names[k], '/');
        if (!(j->fnames[k] = strdup(base ? base + 1 : names[k]))) rc = BT_ENOMEM;
        else rc = bt_read_file(names[k], (char **)&j->fdata[k], &j->flen[k]);
        j->nfiles = k + 1;
    }
    if (rc) goto out;
    if (j->state > CO_QUEUED && j->state < CO_DONE) { /* the coordinator stopped mid-job: it goes on first */
        BT_INFO("job %s was %s when the coordinator stopped: it goes on (prior parts, prior set and checkpoints "
                "kept)", j->id, co_state_name(j->state));
        co_job_set_state(c, j, CO_QUEUED, NULL);
    }
    rc = s_add_job(c, j);
out:
    if (names) sd_free_paths(names);
    free(text);
    if (rc) {
        BT_WARN("%s: job not reloaded", j->dir);
        co_job_free(j);
        free(j);
        return BT_OK; /* one broken job folder does not stop the coordinator */
    }
    return BT_OK;
}

static int s_cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static bool s_is_job(const char *name, void *user)
{
    int *next = user, num;
    char tail;
    if (sscanf(name, "job-%d%c", &num, &tail) != 1) return false;
    if (num > *next) *next = num;
    return true;
}

int co_jobs_load(co_t *c)
{
    char **ids = NULL;
    int n = 0, rc = bt_list_dir(c->jobs_dir, s_is_job, &c->next_job, false, &ids, &n);
    for (int i = 0; i < n && rc == BT_OK; i++) rc = s_load_job(c, ids[i]);
    bt_free_list(ids, n);
    int queued = 0;
    for (int i = 0; i < c->njobs; i++) queued += c->jobs[i]->state == CO_QUEUED;
    if (c->njobs) BT_INFO("coordinator: %d job%s in %s, %d queued", c->njobs, c->njobs == 1 ? "" : "s", c->jobs_dir, queued);
    return rc;
}

/* ---- client requests ---- */

static cJSON *s_job_status(const co_t *c, const co_job_t *j)
{
    cJSON *o = cJSON_CreateObject();
    const sd_train_config_t *cf = &j->job.cfg;
    cJSON_AddStringToObject(o, "id", j->id);
    cJSON_AddStringToObject(o, "state", co_state_name(j->state));
    cJSON_AddStringToObject(o, "phase", j->priors_only ? "priors" : "dreambooth");
    int64_t step = j->loop ? sd_loop_steps(j->loop) : j->state == CO_DONE && !j->priors_only ? cf->max_train_steps : 0;
    cJSON_AddNumberToObject(o, "step", (double)step);
    cJSON_AddNumberToObject(o, "total", j->priors_only ? 0 : (double)cf->max_train_steps);
    if (j->loop && j->loop->hist.n) {
        const sd_train_history_t *h = &j->loop->hist;
        int64_t k = h->n, from = k > 10 ? k - 10 : 0;
        double s = 0;
        for (int64_t i = from; i < k; i++) s += h->seconds[i];
        cJSON_AddNumberToObject(o, "loss", h->loss[k - 1]);
        cJSON_AddNumberToObject(o, "seconds_per_step", s / (double)(k - from));
    }
    cJSON_AddNumberToObject(o, "priors_done", j->priors_done);
    cJSON_AddNumberToObject(o, "priors_total", j->priors_total);
    if (j->error[0]) cJSON_AddStringToObject(o, "error", j->error);
    if (j->state == CO_TRAINING && j->nps == 0) cJSON_AddStringToObject(o, "waiting", "for a parameter server");
    else if (j->state < CO_DONE && j->model_hash[0]) { /* a queued job too: nothing can start it */
        bool any = false;
        for (int i = 0; i < CO_MAX_PEERS; i++)
            any |= c->peers[i].used && c->peers[i].role == BOOTH__ROLE__ROLE_WORKER &&
                   !strcmp(c->peers[i].model_hash, j->model_hash);
        if (!any) cJSON_AddStringToObject(o, "waiting", "for a worker with the job's model");
    }
    return o;
}

void co_on_status(co_t *c, int peer, pr_msg_t *m)
{
    const char *id = m->env->status_request->job_id;
    cJSON *o = cJSON_CreateObject(), *jobs = cJSON_AddArrayToObject(o, "jobs");
    if (id && id[0]) {
        co_job_t *j = s_find(c, id);
        if (!j) {
            char msg[128];
            snprintf(msg, sizeof msg, "no job '%.60s'", id);
            co_send_error(c, peer, msg, false);
            cJSON_Delete(o);
            return;
        }
        cJSON_AddItemToArray(jobs, s_job_status(c, j));
    } else {
        for (int i = 0; i < c->njobs; i++) cJSON_AddItemToArray(jobs, s_job_status(c, c->jobs[i]));
    }
    cJSON *ws = cJSON_AddArrayToObject(o, "workers"), *ps = cJSON_AddArrayToObject(o, "ps");
    for (int i = 0; i < CO_MAX_PEERS; i++) {
        const co_peer_t *p = &c->peers[i];
        if (!p->used) continue;
        if (p->role == BOOTH__ROLE__ROLE_WORKER) {
            cJSON *w = cJSON_CreateObject();
            cJSON_AddStringToObject(w, "name", p->name);
            cJSON_AddStringToObject(w, "state", p->task ? "busy" : "idle");
            cJSON_AddNumberToObject(w, "tasks_done", (double)p->tasks_done);
            cJSON_AddNumberToObject(w, "seconds_busy", p->busy_s);
            cJSON_AddStringToObject(w, "model_hash", p->model_hash);
            cJSON_AddItemToArray(ws, w);
        } else if (p->role == BOOTH__ROLE__ROLE_PS) {
            cJSON *w = cJSON_CreateObject();
            cJSON_AddStringToObject(w, "name", p->name);
            cJSON_AddStringToObject(w, "endpoint", p->endpoint);
            cJSON_AddNumberToObject(w, "tensors", p->ntensors);
            cJSON_AddItemToArray(ps, w);
        }
    }
    char *text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!text) return;
    Booth__StatusReply r = BOOTH__STATUS_REPLY__INIT;
    r.json = text;
    Booth__Envelope env = PR_ENVELOPE_INIT(STATUS_REPLY, status_reply, &r);
    co_send(c, peer, &env, NULL, 0);
    cJSON_free(text);
}

void co_on_cancel(co_t *c, int peer, pr_msg_t *m)
{
    co_job_t *j = s_find(c, m->env->cancel->job_id);
    if (!j) {
        co_send_error(c, peer, "no such job", false);
        return;
    }
    if (j->state < CO_DONE) {
        if (c->running >= 0 && c->jobs[c->running] == j) {
            co_job_abort(c, j);
            c->running = -1;
        }
        co_job_set_state(c, j, CO_CANCELLED, "cancelled by %s", m->peer);
    }
    Booth__Cancelled r = BOOTH__CANCELLED__INIT;
    r.job_id = j->id;
    r.state = (char *)co_state_name(j->state);
    Booth__Envelope env = PR_ENVELOPE_INIT(CANCELLED, cancelled, &r);
    co_send(c, peer, &env, NULL, 0);
}

/* Every regular file under dir (recursively), paths relative to root. */
static int s_list_files(const char *root, const char *rel, char ***out, int *n, int *cap)
{
    char dir[4400];
    snprintf(dir, sizeof dir, "%s%s%s", root, rel[0] ? "/" : "", rel);
    DIR *d = opendir(dir);
    if (!d) return errno == ENOENT ? BT_OK : BT_EIO;
    struct dirent *e;
    int rc = BT_OK;
    while ((e = readdir(d)) && rc == BT_OK) {
        if (e->d_name[0] == '.' || strstr(e->d_name, ".tmp.")) continue;
        char r[4400], full[8900];
        snprintf(r, sizeof r, "%s%s%s", rel, rel[0] ? "/" : "", e->d_name);
        snprintf(full, sizeof full, "%s/%s", root, r);
        struct stat st;
        if (stat(full, &st)) continue;
        if (S_ISDIR(st.st_mode)) {
            rc = s_list_files(root, r, out, n, cap);
        } else if (S_ISREG(st.st_mode)) {
            if (*n == *cap) {
                *cap = *cap ? 2 * *cap : 32;
                char **p = bt_realloc(*out, (size_t)*cap * sizeof *p);
                if (!p) {
                    rc = BT_ENOMEM;
                    break;
                }
                *out = p;
            }
            if (!((*out)[*n] = strdup(r))) rc = BT_ENOMEM;
            else (*n)++;
        }
    }
    closedir(d);
    return rc;
}

void co_on_fetch(co_t *c, int peer, pr_msg_t *m)
{
    co_job_t *j = s_find(c, m->env->fetch->job_id);
    if (!j || j->state != CO_DONE) {
        char msg[256];
        snprintf(msg, sizeof msg, j ? "job %s is %s: outputs are fetched when it is done" : "no job '%.60s'",
                 j ? j->id : m->env->fetch->job_id, j ? co_state_name(j->state) : "");
        co_send_error(c, peer, msg, false);
        return;
    }
    char root[4400], **names = NULL;
    int n = 0, cap = 0;
    snprintf(root, sizeof root, "%s/output", j->dir);
    int rc = s_list_files(root, "", &names, &n, &cap);
    if (names) qsort(names, (size_t)n, sizeof *names, s_cmp_str);
    char **data = bt_calloc((size_t)n + 1, sizeof *data);
    pr_blob_t *blobs = bt_calloc((size_t)n + 1, sizeof *blobs);
    if (!data || !blobs) rc = BT_ENOMEM;
    for (int i = 0; i < n && rc == BT_OK; i++) {
        char path[8900];
        size_t len;
        snprintf(path, sizeof path, "%s/%s", root, names[i]);
        if (!(rc = bt_read_file(path, &data[i], &len))) blobs[i] = pr_blob_of_bytes(names[i], data[i], len);
    }
    if (rc) {
        co_send_error(c, peer, "the coordinator cannot read the job's outputs", false);
    } else {
        Booth__FetchReply r = BOOTH__FETCH_REPLY__INIT;
        r.job_id = j->id;
        r.state = (char *)co_state_name(j->state);
        Booth__Envelope env = PR_ENVELOPE_INIT(FETCH_REPLY, fetch_reply, &r);
        co_send(c, peer, &env, blobs, n);
        BT_INFO("job %s: %d output files sent to %s", j->id, n, m->peer);
    }
    for (int i = 0; i < n; i++) {
        free(names[i]);
        if (data) free(data[i]);
    }
    free(names);
    free(data);
    free(blobs);
}

void co_on_get_job(co_t *c, int peer, pr_msg_t *m)
{
    co_job_t *j = s_find(c, m->env->get_job->job_id);
    if (!j || j->state >= CO_DONE) {
        co_send_error(c, peer, "no such running job", false);
        return;
    }
    int n = 0;
    pr_blob_t *blobs = bt_calloc((size_t)j->nfiles + 1, sizeof *blobs);
    char *priors = NULL;
    size_t plen = 0;
    if (!blobs) return;
    if (j->data_path[0]) { /* encoded: the one file */
        if (bt_read_file(j->data_path, &priors, &plen)) {
            co_send_error(c, peer, "the coordinator cannot read the job's data file", false);
            free(blobs);
            return;
        }
        blobs[n++] = pr_blob_of_bytes("data.h5", priors, plen);
    } else {
        for (int i = 0; i < j->nfiles; i++) blobs[n++] = pr_blob_of_bytes(j->fnames[i], j->fdata[i], j->flen[i]);
    }
    if (!j->data_path[0] && j->job.cfg.prior_preservation && j->priors_path[0]) {
        if (bt_read_file(j->priors_path, &priors, &plen)) {
            co_send_error(c, peer, "the coordinator cannot read the job's prior set", false);
            free(blobs);
            return;
        }
        blobs[n++] = pr_blob_of_bytes("priors.h5", priors, plen);
    }
    Booth__JobData r = BOOTH__JOB_DATA__INIT;
    r.job_id = j->id;
    r.job_json = j->json;
    r.data_hash = j->data_hash;
    Booth__Envelope env = PR_ENVELOPE_INIT(JOB_DATA, job_data, &r);
    co_send(c, peer, &env, blobs, n);
    free(priors);
    free(blobs);
}
