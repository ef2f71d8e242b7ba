/*
 * job.c — the gradient computer of the worker's current job.
 *
 * No filesystem is shared with the coordinator: the first task of a job that
 * needs the trainer asks for the job's data (GetJob -> JobData: the instance
 * files by name and the prior-set file, or, once a worker has encoded them,
 * one data.h5 with both sets and their latents), writes it under
 * WORK_DIR/JOB_ID/ and builds the trainer on those files, as `booth train`
 * would on the client's (from data.h5 it encodes nothing).
 * The model outlives the job: the trainer is built with sd_trainer_new_keep and
 * taken apart with sd_trainer_take_model, and the text encoder is kept (a
 * later job may train it).
 */
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/fileio.h"
#include "common/log.h"
#include "common/progress.h"
#include "common/status.h"
#include "worker/wk.h"

#define S_PRIORS_BLOB "priors.h5"
#define S_DATA_BLOB "data.h5" /* the job's image sets already encoded (sd_job_data_write) */
#define S_INSTANCE_SUBDIR "instance"

bool wk_name_ok(const char *s)
{
    return s && *s && !strchr(s, '/') && strcmp(s, ".") && strcmp(s, "..") && strlen(s) < 256;
}

static int s_rm(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    if (remove(path) != 0 && errno != ENOENT) BT_WARN("%s: cannot remove: %s", path, strerror(errno));
    return 0;
}

void wk_remove_tree(const char *path)
{
    struct stat st;
    if (!path[0] || lstat(path, &st) != 0) return;
    nftw(path, s_rm, 16, FTW_DEPTH | FTW_PHYS);
}

void wk_job_release(wk_t *w)
{
    if (w->trainer) w->model = sd_trainer_take_model(&w->trainer);
    sd_job_free(&w->job);
    if (w->job_dir[0]) wk_remove_tree(w->job_dir);
    w->job_dir[0] = w->job_id[0] = '\0';
    w->data_hash = 0;
    w->version = -1;
    wk_ps_forget(w);
}

/* What a GetJob waits for: the JobData of that job (or the coordinator's Error). */
typedef struct {
    const char *job_id;
    pr_msg_t data; /* moved out of the wait */
} s_getjob_t;

static int s_on_job_data(wk_t *w, int i, pr_msg_t *m, void *arg)
{
    (void)i;
    s_getjob_t *g = arg;
    Booth__Envelope *e = m->env;
    if (e->body_case == BOOTH__ENVELOPE__BODY_ERROR) {
        BT_ERROR("coordinator %s: %s", w->o->coordinator, e->error->message);
        if (e->error->fatal) w->fatal = true;
        return BT_EPROTO;
    }
    if (e->body_case != BOOTH__ENVELOPE__BODY_JOB_DATA || strcmp(e->job_data->job_id, g->job_id)) return 0;
    g->data = *m; /* a DEALER's message: moved by copy (see wk_wait) */
    memset(m, 0, sizeof *m);
    return WK_WAIT_DONE;
}

/* Writes JobData's blobs: the instance files into instance_dir, priors.h5 to priors_path, or the one
 * data.h5 (*data_path set) that holds both sets encoded. */
static int s_write_files(wk_t *w, pr_msg_t *m, bool *have_priors, char *data_path, size_t cap)
{
    char path[sizeof w->instance_dir + 256];
    *have_priors = false;
    data_path[0] = '\0';
    int nimages = 0;
    for (size_t i = 0; i < m->env->n_blobs; i++) {
        const char *name = m->env->blobs[i]->name;
        if (!wk_name_ok(name)) {
            BT_ERROR("%s: job %s has a file named '%.64s', which is not one file name", m->peer, w->job_id, name);
            return BT_EPROTO;
        }
        size_t n = 0;
        const uint8_t *data = pr_blob_bytes(m, name, &n);
        if (!data) return BT_EPROTO;
        if (!strcmp(name, S_PRIORS_BLOB)) {
            snprintf(path, sizeof path, "%s", w->priors_path);
            *have_priors = true;
        } else if (!strcmp(name, S_DATA_BLOB)) {
            snprintf(path, sizeof path, "%s/%s", w->job_dir, S_DATA_BLOB);
            snprintf(data_path, cap, "%s", path);
            *have_priors = true;
        } else {
            snprintf(path, sizeof path, "%s/%s", w->instance_dir, name);
            nimages++;
        }
        int rc = bt_write_file_atomic(path, data, n);
        if (rc) return rc;
    }
    if (!nimages && !data_path[0]) {
        BT_ERROR("%s: job %s came without instance images", m->peer, w->job_id);
        return BT_EPROTO;
    }
    return BT_OK;
}

static void s_progress(void *user, int done, int total, const float *latents)
{
    (void)done;
    (void)total;
    (void)latents;
    wk_tick(user);
}

int wk_job_ensure(wk_t *w, const Booth__Task *task)
{
    if (w->trainer && !strcmp(w->job_id, task->job_id) && (!task->data_hash || task->data_hash == w->data_hash))
        return BT_OK;
    wk_job_release(w);
    if (!wk_name_ok(task->job_id) || strlen(task->job_id) >= WK_ID_MAX) {
        BT_ERROR("coordinator %s: job id '%.64s' cannot name a folder", w->o->coordinator, task->job_id);
        return BT_EPROTO;
    }

    /* the job's data */
    Booth__GetJob gj = BOOTH__GET_JOB__INIT;
    gj.job_id = task->job_id;
    Booth__Envelope env = PR_ENVELOPE_INIT(GET_JOB, get_job, &gj);
    int rc = wk_send_coord(w, &env, NULL, 0);
    if (rc) return rc;
    s_getjob_t g = {.job_id = task->job_id};
    double t0 = bt_now();
    rc = wk_wait(w, &w->coord, 1, WK_REPLY_TIMEOUT_S, s_on_job_data, &g);
    if (rc == BT_EAGAIN)
        BT_ERROR("coordinator %s: no data for job %s within %.0f s", w->o->coordinator, task->job_id,
                 WK_REPLY_TIMEOUT_S);
    if (rc) goto out;

    snprintf(w->job_id, sizeof w->job_id, "%s", task->job_id);
    snprintf(w->job_dir, sizeof w->job_dir, "%s/%s", w->work_dir, w->job_id);
    snprintf(w->instance_dir, sizeof w->instance_dir, "%s/%s", w->job_dir, S_INSTANCE_SUBDIR);
    snprintf(w->priors_path, sizeof w->priors_path, "%s/%s", w->job_dir, S_PRIORS_BLOB);
    wk_remove_tree(w->job_dir); /* a leftover of an earlier run of this job */
    bool have_priors;
    char data_path[sizeof w->instance_dir + 256];
    if ((rc = bt_mkdirs(w->instance_dir)) ||
        (rc = s_write_files(w, &g.data, &have_priors, data_path, sizeof data_path)))
        goto out;

    /* the job spec: JobData's, else the task's (the same text) */
    const char *json = g.data.env->job_data->job_json[0] ? g.data.env->job_data->job_json : task->job_json;
    if ((rc = sd_job_parse(&w->job, json, strlen(json), w->o->coordinator))) goto out;
    sd_train_config_t cfg = w->job.cfg;
    cfg.model_dir = w->o->model_dir;
    cfg.instance_dir = data_path[0] ? data_path : w->instance_dir;
    cfg.class_dir = NULL;
    if (cfg.prior_preservation) {
        if (!have_priors) {
            BT_ERROR("%s: job %s uses prior preservation but its data has no %s", g.data.peer, w->job_id,
                     S_PRIORS_BLOB);
            rc = BT_EPROTO;
            goto out;
        }
        cfg.class_dir = data_path[0] ? data_path : w->priors_path;
    }
    if (!(w->trainer = sd_trainer_new_keep(&w->model, &cfg, s_progress, w))) {
        rc = BT_EINVAL;
        goto out;
    }
    w->data_hash = g.data.env->job_data->data_hash;
    w->version = -1; /* the PS may hold a later LoRA than the initial one (a resumed job) */
    BT_INFO("job %s: %d instance, %d class images (%s), %d %s tensors ready in %.2f s", w->job_id,
            w->trainer->instances.n, w->trainer->classes.n,
            data_path[0] ? "latents as stored in data.h5" : "encoded here", w->trainer->ntensors,
            w->trainer->cfg.full_unet ? "model" : "LoRA", bt_now() - t0);
out:
    pr_msg_free(&g.data);
    if (rc) wk_job_release(w);
    return rc;
}
