/*
 * tasks.c — what a worker does with each Task (docs/CLUSTER.md), one function
 * per kind, and the one TaskResult each is answered with.
 *
 * A task that fails is answered ok = false with the one error line it logged,
 * and the worker goes on serving. A task cut short because the worker is
 * stopping is not answered: the job should not fail for that.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/fileio.h"
#include "common/log.h"
#include "common/progress.h"
#include "common/status.h"
#include "storage/png.h"
#include "worker/wk.h"

/* One task in progress. */
typedef struct {
    wk_t *w;
    const Booth__Task *task;
    Booth__TaskResult r;
    double t0;
    char what[160]; /* "micro-batch 1 of step 3", for the log line */
    bool answered;
} s_run_t;

/* Answers ok = true with the blobs (their data is read during the call only). */
static int s_answer(s_run_t *run, const pr_blob_t *blobs, int n)
{
    run->r.ok = true;
    run->r.seconds = bt_now() - run->t0;
    Booth__Envelope env = PR_ENVELOPE_INIT(TASK_RESULT, task_result, &run->r);
    run->answered = true;
    return wk_send_coord(run->w, &env, blobs, n);
}

/* BOOTH_TEST_TASK_DELAY_MS (worker.c): the answer waits; registration goes on meanwhile. */
static int s_test_delay(s_run_t *run)
{
    wk_t *w = run->w;
    if (w->test_delay_ms <= 0) return BT_OK;
    BT_DEBUG("test hook: %s waits %d ms before its answer", run->what, w->test_delay_ms);
    int rc = wk_wait(w, NULL, 0, w->test_delay_ms / 1000.0, NULL, NULL);
    return rc == BT_EAGAIN ? BT_OK : rc; /* BT_EIO: stopping, the task is not answered */
}

static void s_progress(void *user, int done, int total, const float *latents)
{
    (void)done;
    (void)total;
    (void)latents;
    wk_tick(user);
}

/* ---- PRIORS: prior images [first, first + count) from the bare model ------------- */

static int s_priors(s_run_t *run)
{
    wk_t *w = run->w;
    const Booth__Task *task = run->task;
    snprintf(run->what, sizeof run->what, "prior images %lld..%lld", (long long)task->first,
             (long long)task->first + task->count - 1);
    sd_job_t job;
    int rc = sd_job_parse(&job, task->job_json, strlen(task->job_json), w->o->coordinator);
    if (rc) return rc;
    const sd_train_config_t *c = &job.cfg;
    int64_t R = c->resolution, C = w->origin.latent_channels, h = sd_prior_latent_side(&w->origin, R),
            count = task->count;
    uint8_t *pixels = NULL;
    float *mean = NULL, *logvar = NULL;
    if (!c->class_prompt || !c->class_prompt[0]) {
        BT_ERROR("job %s has no class prompt to draw prior images from", task->job_id);
        rc = BT_EINVAL;
        goto out;
    }
    if (R < 8 || R % 8 || R > 4096 || count < 1 || task->first < 0) {
        BT_ERROR("job %s: cannot draw %lld prior images from index %lld at %lld px", task->job_id, (long long)count,
                 (long long)task->first, (long long)R);
        rc = BT_EINVAL;
        goto out;
    }
    double bytes = (double)count * (double)(R * R * 3 + 2 * C * h * h * (int64_t)sizeof(float));
    if (bytes > (double)w->node.max_bytes) {
        BT_ERROR("job %s: %lld prior images of %lld px are %.0f MiB, more than a message may hold (%.0f MiB, "
                 "--max-message-mb)",
                 task->job_id, (long long)count, (long long)R, bytes / 1048576.0,
                 (double)w->node.max_bytes / 1048576.0);
        rc = BT_EINVAL;
        goto out;
    }
    /* prior images come from the frozen base model: a job's LoRA must not be attached */
    wk_job_release(w);
    pixels = bt_malloc((size_t)(count * R * R * 3));
    mean = bt_malloc((size_t)(count * C * h * h) * sizeof(float));
    logvar = bt_malloc((size_t)(count * C * h * h) * sizeof(float));
    if (!pixels || !mean || !logvar) {
        BT_ERROR("job %s: out of memory for %lld prior images", task->job_id, (long long)count);
        rc = BT_ENOMEM;
        goto out;
    }
    sd_prior_spec_t spec = {.prompt = c->class_prompt,
                            .seed = c->seed,
                            .steps = c->class_steps,
                            .guidance = c->class_guidance,
                            .resolution = (int)R,
                            .weights = w->weights};
    if ((rc = sd_priors_generate(w->model, &spec, task->first, (int)count, pixels, mean, logvar, s_progress, w)))
        goto out;
    if ((rc = s_test_delay(run))) goto out;
    const int64_t pshape[4] = {count, R, R, 3}, lshape[4] = {count, C, h, h};
    pr_blob_t blobs[3] = {pr_blob_of_u8("pixels", pixels, 4, pshape), pr_blob_of_f32("mean", mean, 4, lshape),
                          pr_blob_of_f32("logvar", logvar, 4, lshape)};
    rc = s_answer(run, blobs, 3);
out:
    free(pixels);
    free(mean);
    free(logvar);
    sd_job_free(&job);
    return rc;
}

/* ---- PREPARE: the job's encoded image sets and initial LoRA ----------------------- */

/* A set's blobs: PREFIX/pixels, mean, logvar (mean_f, logvar_f with flips), names. */
typedef struct {
    char names[6][32];
    char *joined; /* the image sources, one a line */
} s_set_blobs_t;

static int s_set_blobs(const char *prefix, const sd_image_set_t *s, s_set_blobs_t *sb, pr_blob_t *blobs, int *n)
{
    const int64_t pshape[4] = {s->n, s->res, s->res, 3}, lshape[4] = {s->n, s->C, s->h, s->w};
    const float *lat[4] = {s->mean, s->logvar, s->mean_f, s->logvar_f};
    static const char *const lname[4] = {"mean", "logvar", "mean_f", "logvar_f"};
    int k = 0;
    if (s->pixels) {
        snprintf(sb->names[k], sizeof sb->names[k], "%s/pixels", prefix);
        blobs[(*n)++] = pr_blob_of_u8(sb->names[k++], s->pixels, 4, pshape);
    }
    for (int j = 0; j < 4; j++) {
        if (!lat[j]) continue;
        snprintf(sb->names[k], sizeof sb->names[k], "%s/%s", prefix, lname[j]);
        blobs[(*n)++] = pr_blob_of_f32(sb->names[k++], lat[j], 4, lshape);
    }
    /* where each image came from, as a file name: the worker's folders mean nothing elsewhere */
    size_t len = 1;
    for (int i = 0; i < s->n; i++)
        len += strlen(s->paths[i]) + 1;
    if (!(sb->joined = bt_malloc(len))) {
        BT_ERROR("worker: out of memory");
        return BT_ENOMEM;
    }
    size_t at = 0;
    for (int i = 0; i < s->n; i++) {
        const char *slash = strrchr(s->paths[i], '/'), *base = slash ? slash + 1 : s->paths[i];
        at += (size_t)sprintf(sb->joined + at, "%s%s", i ? "\n" : "", base);
    }
    snprintf(sb->names[k], sizeof sb->names[k], "%s/names", prefix);
    blobs[(*n)++] = pr_blob_of_bytes(sb->names[k], sb->joined, at);
    return BT_OK;
}

static int s_prepare(s_run_t *run)
{
    wk_t *w = run->w;
    snprintf(run->what, sizeof run->what, "prepare");
    int rc = wk_job_ensure(w, run->task);
    if (rc) return rc;
    sd_trainer_t *t = w->trainer;
    int nt = t->ntensors, n = 0;
    s_set_blobs_t inst = {0}, cls = {0};
    pr_blob_t *blobs = bt_malloc((size_t)(12 + nt) * sizeof *blobs);
    char(*pnames)[SD_OPTIM_NAME_MAX + 2] = bt_malloc((size_t)(nt ? nt : 1) * sizeof *pnames);
    float **owned = bt_calloc((size_t)(nt ? nt : 1), sizeof *owned);
    if (!blobs || !pnames || !owned) {
        BT_ERROR("worker: out of memory");
        rc = BT_ENOMEM;
        goto out;
    }
    if ((rc = s_set_blobs("inst", &t->instances, &inst, blobs, &n))) goto out;
    if (t->cfg.prior_preservation && (rc = s_set_blobs("cls", &t->classes, &cls, blobs, &n))) goto out;
    for (int i = 0; i < nt; i++) { /* the initial LoRA, in the job's global tensor order */
        const sd_optim_spec_t *s = &t->tensors[i];
        const float *p = wk_host_f32(w, s->params, s->shape[0] * s->shape[1], &owned[i]);
        if (!p) {
            rc = BT_EIO;
            goto out;
        }
        snprintf(pnames[i], sizeof pnames[i], "p/%s", s->name);
        blobs[n++] = pr_blob_of_f32(pnames[i], p, 2, s->shape);
    }
    snprintf(run->what, sizeof run->what, "prepare: %d instance, %d class images, %d LoRA tensors", t->instances.n,
             t->cfg.prior_preservation ? t->classes.n : 0, nt);
    rc = s_answer(run, blobs, n);
out:
    for (int i = 0; owned && i < nt; i++)
        free(owned[i]);
    free(owned);
    free(pnames);
    free(blobs);
    free(inst.joined);
    free(cls.joined);
    return rc;
}

/* ---- MICROBATCH: loss and gradient of (step, micro), the gradient to the PS -------- */

static int s_microbatch(s_run_t *run)
{
    wk_t *w = run->w;
    const Booth__Task *task = run->task;
    snprintf(run->what, sizeof run->what, "micro-batch %d of step %lld", task->micro, (long long)task->step);
    int rc;
    if ((rc = wk_job_ensure(w, task)) || (rc = wk_ps_use(w, task))) return rc;
    int M = sd_trainer_num_microbatches(w->trainer);
    if (task->step < 0 || task->micro < 0 || task->micro >= M || task->version < 0) {
        BT_ERROR("job %s: no micro-batch %d of step %lld at version %lld (a step has %d micro-batches)", task->job_id,
                 task->micro, (long long)task->step, (long long)task->version, M);
        return BT_EINVAL;
    }
    double loss = 0, li = 0, lp = 0;
    if ((rc = wk_ps_pull(w, task->version)) ||
        (rc = sd_trainer_microbatch(w->trainer, task->step, task->micro, &loss, &li, &lp)) ||
        (rc = wk_ps_push(w, task->step, task->micro)) || (rc = s_test_delay(run)))
        return rc;
    run->r.loss = loss;
    run->r.loss_instance = li;
    run->r.loss_prior = lp;
    return s_answer(run, NULL, 0);
}

/* ---- VALIDATE: the validation grid at LoRA version `version`, as PNG ---------------- */

static int s_validate(s_run_t *run)
{
    wk_t *w = run->w;
    const Booth__Task *task = run->task;
    snprintf(run->what, sizeof run->what, "validation at version %lld", (long long)task->version);
    int rc;
    if ((rc = wk_job_ensure(w, task)) || (rc = wk_ps_use(w, task))) return rc;
    if (!w->trainer->cfg.validation_prompt) {
        BT_ERROR("job %s has no validation prompt", task->job_id);
        return BT_EINVAL;
    }
    if (task->version < 0) {
        BT_ERROR("job %s: no LoRA version %lld", task->job_id, (long long)task->version);
        return BT_EINVAL;
    }
    bt_img_t *grid = NULL;
    char *png = NULL;
    size_t len = 0;
    char path[WK_PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/validation-%llu.png", w->work_dir, (unsigned long long)task->task_id);
    if ((rc = wk_ps_pull(w, task->version)) || (rc = sd_trainer_validate(w->trainer, task->version, &grid)) ||
        (rc = st_png_write(path, grid, NULL, 0)))
        goto out;
    rc = bt_read_file(path, &png, &len);
    unlink(path);
    if (rc) goto out;
    pr_blob_t blob = pr_blob_of_bytes("grid.png", png, len);
    rc = s_answer(run, &blob, 1);
out:
    bt_img_destroy(&grid);
    free(png);
    return rc;
}

void wk_task_run(wk_t *w, const Booth__Task *task)
{
    s_run_t run = {.w = w, .task = task, .t0 = bt_now()};
    booth__task_result__init(&run.r);
    run.r.task_id = task->task_id;
    run.r.job_id = task->job_id;
    wk_set_state(w, "busy task %llu", (unsigned long long)task->task_id);
    int rc;
    switch (task->kind) {
    case BOOTH__TASK__KIND__PRIORS: rc = s_priors(&run); break;
    case BOOTH__TASK__KIND__PREPARE: rc = s_prepare(&run); break;
    case BOOTH__TASK__KIND__MICROBATCH: rc = s_microbatch(&run); break;
    case BOOTH__TASK__KIND__VALIDATE: rc = s_validate(&run); break;
    default:
        snprintf(run.what, sizeof run.what, "task of kind %d", (int)task->kind);
        BT_ERROR("coordinator %s: task %llu is of a kind this worker does not know (%d)", w->o->coordinator,
                 (unsigned long long)task->task_id, (int)task->kind);
        rc = BT_EPROTO;
        break;
    }
    double secs = bt_now() - run.t0;
    if (rc == BT_OK) {
        BT_INFO("task %llu: %s (%s) in %.2f s", (unsigned long long)task->task_id, run.what, task->job_id, secs);
    } else if (run.answered) { /* pr_send said why */
        BT_INFO("task %llu: %s (%s) done in %.2f s, but its result did not go out", (unsigned long long)task->task_id,
                run.what, task->job_id, secs);
    } else if (pr_node_stopping()) {
        BT_INFO("task %llu: %s (%s) abandoned: the worker is stopping", (unsigned long long)task->task_id, run.what,
                task->job_id);
    } else {
        char err[1024];
        run.r.ok = false;
        run.r.error = (char *)wk_task_error(run.what, rc, err, sizeof err);
        run.r.seconds = secs;
        Booth__Envelope env = PR_ENVELOPE_INIT(TASK_RESULT, task_result, &run.r);
        wk_send_coord(w, &env, NULL, 0);
        /* the cause is the error line logged above */
        BT_INFO("task %llu: %s (%s) failed after %.2f s", (unsigned long long)task->task_id, run.what, task->job_id,
                secs);
    }
}
