/*
 * submit.c — the cluster's client commands (docs/CLUSTER.md, Clients):
 *
 *   booth submit   a training job (or only its prior set) with the instance photos
 *   booth status   the coordinator's jobs, workers and parameter servers
 *   booth cancel   stop a job
 *   booth fetch    a finished job's files, written crash-safely under --output-dir
 *
 * They share one file because `submit --wait` follows the job as status does and
 * then fetches as fetch does; the connection and the request/answer wait are in
 * client.c. Nothing here is a path on the coordinator: the photos travel as
 * blobs named by their file names, and the job's folders are reduced to names.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "common/alloc.h"
#include "cli/args.h"
#include "cli/cli.h"
#include "cli/client.h"
#include "cli/train_flags.h"
#include "common/fileio.h"
#include "common/log.h"
#include "common/progress.h"
#include "common/status.h"
#include "diffusion/dataset.h"
#include "diffusion/job.h"
#include "diffusion/model_hash.h"
#include "diffusion/pipeline.h"

#define S_POLL_NS 500000000L /* --wait asks for the job's status every 0.5 s, */
#define S_ANSWER_S 1.0       /* waits this long for each answer before it asks again, */
#define S_SILENT_SHOW_S 2.0  /* and after this long without any answer says so */

/* ---- the status JSON (coordinator/status.c); every field may be missing ---- */

static const char *s_jstr(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) && v->valuestring ? v->valuestring : "";
}

/* The number at key, or `absent`. */
static double s_jnum(const cJSON *o, const char *key, double absent)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : absent;
}

/* One job of the reply, as the printers read it (strings point into the JSON). */
typedef struct {
    const char *id, *state, *phase, *error;
    double step, total, loss, sps;    /* -1: absent */
    double priors_done, priors_total; /* -1: absent */
} s_job_t;

static void s_job_read(const cJSON *j, s_job_t *v)
{
    v->id = s_jstr(j, "id");
    v->state = s_jstr(j, "state");
    v->phase = s_jstr(j, "phase");
    v->error = s_jstr(j, "error");
    v->step = s_jnum(j, "step", -1);
    v->total = s_jnum(j, "total", -1);
    v->loss = s_jnum(j, "loss", -1);
    v->sps = s_jnum(j, "seconds_per_step", -1);
    v->priors_done = s_jnum(j, "priors_done", -1);
    v->priors_total = s_jnum(j, "priors_total", -1);
}

/* Which counter the job's progress is in: the prior images while it makes them,
 * the optimizer steps while it trains (and after: the last step it took). */
static bool s_job_priors(const s_job_t *v)
{
    return !strcmp(v->state, "priors") || (!strcmp(v->phase, "priors") && strcmp(v->state, "training"));
}

static void s_fmt_sps(char *buf, size_t cap, double s)
{
    snprintf(buf, cap, s >= 10 ? "%.0f" : s >= 1 ? "%.1f" : "%.2f", s);
}

/* "loss 0.1234, 1.2 s/step" from what the job has; "" when it has neither. */
static void s_job_tail(const s_job_t *v, char *buf, size_t cap)
{
    char sps[32];
    buf[0] = '\0';
    if (v->loss >= 0 && v->step > 0) snprintf(buf, cap, "loss %.4f", v->loss);
    if (v->sps > 0) {
        s_fmt_sps(sps, sizeof sps, v->sps);
        size_t len = strlen(buf);
        snprintf(buf + len, cap - len, "%s%s s/step", len ? ", " : "", sps);
    }
}

static const cJSON *s_array(const cJSON *root, const char *key)
{
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(root, key);
    return cJSON_IsArray(a) ? a : NULL;
}

/* The width of the widest string field `key` of the array's objects. */
static int s_width(const cJSON *a, const char *key)
{
    int w = 1;
    const cJSON *e;
    cJSON_ArrayForEach(e, a)
    {
        int l = (int)strlen(s_jstr(e, key));
        if (l > w) w = l;
    }
    return w;
}

/* The status printers build each line here, so that padding never trails it. */
typedef struct {
    char buf[1024];
    size_t len;
} s_line_t;

__attribute__((format(printf, 2, 3))) static void s_add(s_line_t *l, const char *fmt, ...)
{
    if (l->len >= sizeof l->buf - 1) return;
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(l->buf + l->len, sizeof l->buf - l->len, fmt, ap);
    va_end(ap);
    if (k > 0) l->len = l->len + (size_t)k < sizeof l->buf ? l->len + (size_t)k : sizeof l->buf - 1;
}

static void s_put(s_line_t *l)
{
    while (l->len && l->buf[l->len - 1] == ' ')
        l->len--;
    printf("%.*s\n", (int)l->len, l->buf);
    l->len = 0;
}

static const char *s_or(const char *s, const char *absent)
{
    return *s ? s : absent;
}

static void s_print_jobs(const cJSON *jobs)
{
    if (!jobs || !cJSON_GetArraySize(jobs)) {
        printf("no jobs\n");
        return;
    }
    int w = s_width(jobs, "id");
    s_line_t l = {.len = 0};
    const cJSON *e;
    cJSON_ArrayForEach(e, jobs)
    {
        s_job_t v;
        s_job_read(e, &v);
        char tail[96];
        s_add(&l, "job %-*s  %-9s", w, s_or(v.id, "?"), s_or(v.state, "?"));
        if (*v.phase && strcmp(v.phase, v.state)) s_add(&l, "  (%s)", v.phase);
        if (s_job_priors(&v) && v.priors_total > 0)
            s_add(&l, "  priors %lld/%lld", (long long)(v.priors_done > 0 ? v.priors_done : 0),
                  (long long)v.priors_total);
        else if (v.total > 0)
            s_add(&l, "  step %lld/%lld", (long long)(v.step > 0 ? v.step : 0), (long long)v.total);
        s_job_tail(&v, tail, sizeof tail);
        if (*tail) s_add(&l, "  %s", tail);
        if (*v.error) s_add(&l, "  error: %s", v.error);
        s_put(&l);
    }
}

static void s_print_workers(const cJSON *workers)
{
    if (!workers || !cJSON_GetArraySize(workers)) {
        printf("no workers\n");
        return;
    }
    int w = s_width(workers, "name");
    s_line_t l = {.len = 0};
    const cJSON *e;
    cJSON_ArrayForEach(e, workers)
    {
        const char *hash = s_jstr(e, "model_hash");
        double tasks = s_jnum(e, "tasks_done", -1), busy = s_jnum(e, "seconds_busy", -1);
        s_add(&l, "worker %-*s  %-6s", w, s_or(s_jstr(e, "name"), "?"), s_or(s_jstr(e, "state"), "?"));
        if (tasks >= 0) s_add(&l, "  %lld task%s", (long long)tasks, tasks == 1 ? "" : "s");
        if (tasks > 0 && busy > 0) { /* throughput: time per task while busy */
            char sps[32];
            s_fmt_sps(sps, sizeof sps, busy / tasks);
            s_add(&l, ", %s s/task", sps);
        }
        if (*hash) s_add(&l, "  model %s", hash);
        s_put(&l);
    }
}

static void s_print_ps(const cJSON *ps)
{
    if (!ps || !cJSON_GetArraySize(ps)) {
        printf("no parameter servers\n");
        return;
    }
    int w = s_width(ps, "name"), we = s_width(ps, "endpoint");
    s_line_t l = {.len = 0};
    const cJSON *e;
    cJSON_ArrayForEach(e, ps)
    {
        double tensors = s_jnum(e, "tensors", -1);
        s_add(&l, "ps %-*s  %-*s", w, s_or(s_jstr(e, "name"), "?"), we, s_jstr(e, "endpoint"));
        if (tensors >= 0) s_add(&l, "  %lld tensor%s", (long long)tensors, tensors == 1 ? "" : "s");
        s_put(&l);
    }
}

/* ---- requests ---- */

/* StatusRequest{job}, answered within wait_s (resent over a new connection) ->
 * *root, the reply's JSON parsed (cJSON_Delete it), and with raw its text (free
 * it). BT_EAGAIN when no answer came, without a line (the caller says what that
 * means); another negative status after one line. */
static int s_status(cli_client_t *c, const char *job, double wait_s, cJSON **root, char **raw)
{
    *root = NULL;
    Booth__StatusRequest sr = BOOTH__STATUS_REQUEST__INIT;
    sr.job_id = (char *)(job ? job : "");
    Booth__Envelope env = PR_ENVELOPE_INIT(STATUS_REQUEST, status_request, &sr);
    pr_msg_t r;
    int rc = cli_client_exchange(c, &env, NULL, 0, BOOTH__ENVELOPE__BODY_STATUS_REPLY, true, wait_s, NULL, &r);
    if (rc) return rc;
    const char *json = r.env->status_reply && r.env->status_reply->json ? r.env->status_reply->json : "";
    cJSON *parsed = cJSON_Parse(json);
    if (!cJSON_IsObject(parsed)) {
        BT_ERROR("%s: the status reply is not a JSON object", c->coordinator);
        cJSON_Delete(parsed);
        rc = BT_EPROTO;
    } else if (raw && !(*raw = strdup(json))) {
        BT_ERROR("out of memory");
        cJSON_Delete(parsed);
        rc = BT_ENOMEM;
    } else {
        *root = parsed;
    }
    pr_msg_free(&r);
    return rc;
}

/* A name the coordinator gave an output file is used under DIR only when it is
 * relative and stays inside: no leading '/', no ".." and no empty component. */
static bool s_safe_name(const char *name)
{
    if (!*name || name[0] == '/') return false;
    for (const char *p = name;;) {
        const char *slash = strchr(p, '/');
        size_t len = slash ? (size_t)(slash - p) : strlen(p);
        if (len == 0 || (len == 2 && p[0] == '.' && p[1] == '.')) return false;
        if (!slash) return true;
        p = slash + 1;
    }
}

static int s_write_file(const char *path, const void *data, size_t n)
{
    bt_atomic_file_t af;
    int rc = bt_mkdirs_for(path);
    if (rc) return rc;
    if ((rc = bt_atomic_open(&af, path))) return rc;
    if (n && fwrite(data, 1, n, af.f) != n) {
        BT_ERROR("%s: cannot write: %s", af.tmp_path, strerror(errno));
        bt_atomic_abort(&af);
        return BT_EIO;
    }
    return bt_atomic_commit(&af);
}

/* Fetch{job} -> each output file under dir, crash-safely; prints each path written.
 * A refused name is one error line and BT_EPROTO at the end (the others are written). */
static int s_fetch(cli_client_t *c, const char *job, const char *dir)
{
    Booth__Fetch fe = BOOTH__FETCH__INIT;
    fe.job_id = (char *)job;
    Booth__Envelope env = PR_ENVELOPE_INIT(FETCH, fetch, &fe);
    pr_msg_t r;
    int rc = cli_client_request(c, &env, BOOTH__ENVELOPE__BODY_FETCH_REPLY, &r);
    if (rc) return rc;
    const char *state = r.env->fetch_reply && r.env->fetch_reply->state ? r.env->fetch_reply->state : "";
    if (*state && strcmp(state, "done")) BT_WARN("job %s is %s; writing the files it has", job, state);
    if (!r.env->n_blobs) BT_WARN("job %s has no output files", job);
    bool refused = false;
    if (r.env->n_blobs && (rc = bt_mkdirs(dir))) goto out_free_msg;
    for (size_t i = 0; i < r.env->n_blobs; i++) {
        const char *name = r.env->blobs[i]->name ? r.env->blobs[i]->name : "";
        char path[PATH_MAX];
        if (!s_safe_name(name)) {
            BT_ERROR("%s: refused the output file name '%s' of job %s (absolute, '..' or an empty component); "
                     "not written",
                     c->coordinator, name, job);
            refused = true;
            continue;
        }
        cli_join_path(path, sizeof path, dir, name); /* "out/" + "x": "out/x" */
        if (strlen(path) + 1 >= sizeof path) {
            BT_ERROR("%s/%s: path too long; not written", dir, name);
            refused = true;
            continue;
        }
        if ((rc = s_write_file(path, zmq_msg_data(&r.frames[i]), zmq_msg_size(&r.frames[i])))) goto out_free_msg;
        printf("%s\n", path);
        fflush(stdout);
    }
    rc = refused ? BT_EPROTO : BT_OK;
out_free_msg:
    pr_msg_free(&r);
    return rc;
}

/* The job `id` of a status reply: the one with that id, or the only one. */
static const cJSON *s_find_job(const cJSON *root, const char *id)
{
    const cJSON *jobs = s_array(root, "jobs"), *e;
    cJSON_ArrayForEach(e, jobs) if (!strcmp(s_jstr(e, "id"), id)) return e;
    if (jobs && cJSON_GetArraySize(jobs) == 1 && !*s_jstr(jobs->child, "id")) return jobs->child;
    return NULL;
}

/* Where a state is in a job's life. A coordinator restarted mid-job takes the job
 * back to "queued", and it goes through its phases again (its prior parts and
 * checkpoints kept). */
static int s_state_rank(const char *state)
{
    static const char *const order[] = {"queued", "priors", "prepare", "training"};
    for (int i = 0; i < (int)(sizeof order / sizeof order[0]); i++)
        if (!strcmp(state, order[i])) return i;
    return 4; /* done, failed, cancelled */
}

/* Redraws the bar now, whatever its throttle, with tail in place of the job's. */
static void s_bar_say(bt_progress_t *bar, const char *tail)
{
    bar->last_print = 0;
    bt_progress_update(bar, bar->done, tail);
}

/* --wait: poll the job's status, draw its phase's progress, until it ends. BT_OK
 * when it is done; a negative status after one line when it failed, was
 * cancelled, or the coordinator did not answer for --timeout seconds.
 *
 * A poll without an answer is not the end: the coordinator may be restarting
 * (it reloads the job and goes on with it). After S_SILENT_SHOW_S without an
 * answer the bar's tail (or, without a bar, one line) says so; the next answer
 * puts the bar back where the job is, and a job taken back to an earlier state
 * keeps its bar, which says so, until its phase comes round again. */
static int s_wait(cli_client_t *c, const char *job)
{
    bt_progress_t bar;
    memset(&bar, 0, sizeof bar);
    bool bar_on = false;
    char shown[64] = "";  /* the state or bar label last shown */
    char behind[64] = ""; /* with the bar on: the earlier state the job went back to, "" if none */
    int64_t drawn = -1;   /* the count the bar last showed: it is drawn when that changes */
    double last_answer = bt_now();
    bool silent = false; /* "not answering" is shown */
    const char *silent_tail = "coordinator not answering, retrying";
    int rc;
    for (;;) {
        cJSON *root = NULL;
        double left = last_answer + (double)c->timeout_s - bt_now();
        rc = s_status(c, job, left < S_ANSWER_S ? (left > 0.001 ? left : 0.001) : S_ANSWER_S, &root, NULL);
        if (rc == BT_EAGAIN) {
            double quiet = bt_now() - last_answer;
            if (quiet >= (double)c->timeout_s) {
                if (bar_on) bt_progress_finish(&bar, silent_tail);
                bar_on = false;
                BT_ERROR("no answer from the coordinator at %s for %g s; job %s may still be running: `booth "
                         "status %s --coordinator %s` tells",
                         c->coordinator, (double)c->timeout_s, job, job, c->coordinator);
                break;
            }
            if (quiet >= S_SILENT_SHOW_S) {
                if (bar_on && silent)
                    bt_progress_update(&bar, bar.done, silent_tail);
                else if (bar_on)
                    s_bar_say(&bar, silent_tail);
                else if (!silent)
                    fprintf(stderr, "booth submit: job %s: the coordinator at %s is not answering, retrying\n", job,
                            c->coordinator);
                silent = true;
            }
            continue; /* the wait for the answer was the pause */
        }
        if (rc) break; /* an Error answer, a broken reply: said */
        last_answer = bt_now();
        if (silent) {
            if (bar_on) { /* redraw at the next answer's count, with its tail */
                drawn = -1;
                bar.last_print = 0;
            } else {
                fprintf(stderr, "booth submit: job %s: the coordinator at %s is answering again\n", job,
                        c->coordinator);
            }
            silent = false;
        }
        const cJSON *j = s_find_job(root, job);
        if (!j) {
            BT_ERROR("%s: the coordinator does not list job %s", c->coordinator, job);
            cJSON_Delete(root);
            rc = BT_ENOTFOUND;
            break;
        }
        s_job_t v;
        s_job_read(j, &v);
        char tail[96];
        s_job_tail(&v, tail, sizeof tail);
        bool priors = s_job_priors(&v);
        const char *label = priors ? "priors" : !strcmp(v.state, "training") ? "training" : NULL;
        double done = priors ? v.priors_done : v.step, total = priors ? v.priors_total : v.total;
        if (bar_on && s_state_rank(v.state) < s_state_rank(shown)) {
            /* taken back by a restarted coordinator: the bar stays, at its count, until the phase is back */
            char why[96];
            snprintf(why, sizeof why, "resuming: job %s", v.state);
            if (strcmp(behind, v.state))
                s_bar_say(&bar, why);
            else
                bt_progress_update(&bar, bar.done, why);
            snprintf(behind, sizeof behind, "%s", v.state);
            drawn = -1; /* the phase's next answer is drawn, even at the same count */
        } else if (label && total > 0) {
            behind[0] = '\0';
            if (!bar_on || strcmp(shown, label) || bar.total != (int64_t)total) {
                if (bar_on) bt_progress_finish(&bar, NULL);
                bt_progress_start(&bar, label, (int64_t)total, priors ? "img" : "step");
                bar_on = true;
                snprintf(shown, sizeof shown, "%s", label);
                /* joined mid-phase: date the start back, so that the rate and ETA are the job's;
                 * without its time per item, draw from the next change on, not a made-up rate */
                drawn = -1;
                if (!priors && done > 0 && v.sps > 0)
                    bar.start -= done * v.sps;
                else if (done > 0)
                    drawn = bar.done = (int64_t)done;
            }
            int64_t now_done = done > 0 ? (int64_t)done : 0;
            if (now_done != drawn) bt_progress_update(&bar, now_done, priors ? NULL : tail);
            drawn = now_done;
        } else if (strcmp(shown, v.state)) {
            behind[0] = '\0';
            if (bar_on) {
                bool ok = strcmp(v.state, "failed") && strcmp(v.state, "cancelled");
                if (!strcmp(shown, "priors") && ok) /* the phase is over: every image is in */
                    bar.done = bar.total;
                else if (bar.done < bar.total && total > 0 && done >= 0)
                    bar.done = (int64_t)done;
                bt_progress_finish(&bar, *tail ? tail : NULL);
                bar_on = false;
            }
            if (strcmp(v.state, "failed") && strcmp(v.state, "cancelled")) /* those end in an error line */
                fprintf(stderr, "booth submit: job %s %s\n", job, v.state);
            snprintf(shown, sizeof shown, "%s", v.state);
        }
        bool ended = true;
        if (!strcmp(v.state, "done")) {
            rc = BT_OK;
        } else if (!strcmp(v.state, "failed")) {
            BT_ERROR("job %s failed: %s", job, *v.error ? v.error : "(no reason given)");
            rc = BT_EINVAL;
        } else if (!strcmp(v.state, "cancelled")) {
            BT_ERROR("job %s was cancelled%s%s", job, *v.error ? ": " : "", v.error);
            rc = BT_EINVAL;
        } else {
            ended = false;
        }
        cJSON_Delete(root);
        if (ended) break;
        struct timespec ts = {0, S_POLL_NS};
        nanosleep(&ts, NULL);
    }
    if (bar_on) bt_progress_finish(&bar, NULL);
    return rc;
}

/* ---- booth submit ---- */

static cli_opt_t *s_row(cli_opt_t *opts, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(opts[i].name, name)) return &opts[i];
    return NULL;
}

/* The folder's own name ("photos" for ./data/photos/): what the coordinator may
 * call the set, since the path means nothing there. */
static void s_dir_name(const char *dir, char *out, size_t cap)
{
    char real[PATH_MAX];
    const char *p = realpath(dir, real) ? real : dir;
    size_t len = strlen(p);
    while (len > 1 && p[len - 1] == '/')
        len--;
    size_t start = len;
    while (start > 0 && p[start - 1] != '/')
        start--;
    snprintf(out, cap, "%.*s", (int)(len - start), p + start);
    if (!*out || !strcmp(out, "/")) snprintf(out, cap, "instance");
}

static const char *s_base(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

/* --priors-only needs the model, the class prompt and sane prior settings only. */
static int s_priors_check(const char *what, const sd_train_config_t *c)
{
    if (!c->model_dir || !c->class_prompt) {
        if (what)
            fprintf(stderr, "booth submit: --priors-only needs pretrained_model_name_or_path and class_prompt in %s\n",
                    what);
        else
            fprintf(stderr, "booth submit: --priors-only needs --model and --class-prompt\n");
        return 2;
    }
    if (c->num_class_images < 1 || c->class_steps < 1 || c->resolution < 8 || c->resolution % 8) {
        fprintf(stderr, "booth submit: --num-class-images and --class-inference-steps >= 1; --resolution a multiple "
                        "of 8\n");
        return 2;
    }
    return 0;
}

int cmd_submit(int argc, char **argv)
{
    cli_train_flags_t f;
    cli_client_t cl;
    cli_client_init(&cl);
    const char *job_file = NULL;
    bool priors_only = false, wait = false;
    cli_opt_t opts[160];
    bool seen[160] = {0}; /* the training settings given, to refuse them beside --job */
    int ntrain = cli_train_opts(&f, opts, 120), n = ntrain;
    int alias_first = ntrain + 2, alias_end = alias_first + 3;
    const cli_opt_t extra[] = {
        CLI_OPT("--job", CLI_STR, &job_file, "FILE.json",
                "the job spec as JSON (diffusion/job.h fields, diffusers' names) instead of the training flags"),
        CLI_OPT("--priors-only", CLI_FLAG, &priors_only, NULL,
                "only make the prior set on the cluster: --model, --class-prompt and the prior options"),
        /* alias_first: `booth priors` names for the prior options */
        CLI_OPT("--num", CLI_INT, &f.c.num_class_images, "N", "same as --num-class-images (booth priors' name)"),
        CLI_OPT("--steps", CLI_INT, &f.c.class_steps, "K", "same as --class-inference-steps (booth priors' name)"),
        CLI_OPT("--guidance", CLI_FLOAT, &f.c.class_guidance, "G", "same as --class-guidance (booth priors' name)"),
        /* alias_end */
        CLI_OPT("--wait", CLI_FLAG, &wait, NULL,
                "follow the job with a progress bar until it ends; exit 0 only when it is done"),
        CLI_CLIENT_OPTS(&cl),
        CLI_END,
    };
    memcpy(opts + n, extra, sizeof extra);
    n += (int)(sizeof extra / sizeof extra[0]) - 1;
    for (int i = 0; i < alias_end; i++)
        if ((i < ntrain || i >= alias_first) && !opts[i].seen) opts[i].seen = &seen[i];
    cli_opt_t *row;
    if ((row = s_row(opts, ntrain, "--output-dir")))
        row->help = "with --wait: write the job's files here when it is done (as booth fetch does)";
    if ((row = s_row(opts, ntrain, "--class-data-dir")))
        row->help = "not used on a cluster: the coordinator makes (or reuses) the prior set";
    if ((row = s_row(opts, ntrain, "--resume-from-checkpoint"))) row->help = "not supported on a cluster yet";
    if ((row = s_row(opts, ntrain, "--base-dtype")))
        row->help = "not a job setting on a cluster: each worker keeps its model as its own --base-dtype says";
    if ((row = s_row(opts, ntrain, "--prediction-type")))
        row->help = "not a job setting on a cluster: each worker reads its model as its own --prediction-type says";
    const cli_spec_t spec = {
        "submit",
        "--coordinator ADDR (--model DIR --instance-data-dir DIR --instance-prompt TEXT [training options] | "
        "--job FILE.json) [--priors-only] [--wait [--output-dir DIR]]",
        "Queues a DreamBooth LoRA job on a booth cluster (docs/CLUSTER.md): the settings of `booth train` (the\n"
        "same flags, or a job file) and the instance photos, sent by file name. Prints the job's id. The\n"
        "coordinator makes the prior set if the job needs one; the workers must hold the same base model\n"
        "(its content hash is sent when --model exists here). --priors-only makes only the prior set\n"
        "(--num, --steps and --guidance as in `booth priors`). --wait follows the job to its end;\n"
        "with --output-dir it then fetches the results (`booth fetch`).",
        opts,
        0,
        NULL};
    const char *pos[1];
    int npos, rc = cli_parse(&spec, argc, argv, pos, &npos);
    if (rc >= 0) return rc;
    if ((rc = cli_client_check(&cl, "submit"))) return rc;
    if (f.resume) {
        fprintf(stderr, "booth submit: --resume-from-checkpoint is not supported on a cluster yet\n");
        return 2;
    }
    if (f.base_dtype || f.prediction) {
        fprintf(stderr, "booth submit: %s is not a job setting on a cluster: start the workers with it\n",
                f.base_dtype ? "--base-dtype" : "--prediction-type");
        return 2;
    }
    if (f.logging_dir)
        fprintf(stderr, "booth submit: note: --logging-dir ignored: the job's loss.csv comes with its files "
                        "(--wait --output-dir, or booth fetch)\n");
    if (f.overwrite) fprintf(stderr, "booth submit: note: --overwrite ignored: every cluster job has its own folder\n");
    if (f.output_dir && !wait) {
        fprintf(stderr, "booth submit: --output-dir needs --wait (or later: booth fetch JOB --output-dir DIR)\n");
        return 2;
    }
    if (job_file)
        for (int i = 0; i < alias_end; i++)
            if (opts[i].seen && *opts[i].seen && (i < ntrain || i >= alias_first) &&
                strcmp(opts[i].name, "--output-dir")) {
                fprintf(stderr,
                        "booth submit: --job FILE.json holds every training setting; %s cannot be given "
                        "with it\n",
                        opts[i].name);
                return 2;
            }

    sd_job_t job;
    memset(&job, 0, sizeof job);
    sd_train_config_t cfg;
    if (job_file) {
        char *text = NULL;
        size_t len = 0;
        if (bt_read_file(job_file, &text, &len)) return 1;
        rc = sd_job_parse(&job, text, len, job_file);
        free(text);
        if (rc) return 1;
        cfg = job.cfg;
        if (priors_only) {
            if ((rc = s_priors_check(job_file, &cfg))) goto out_free_job;
        } else if (!cfg.model_dir || !cfg.instance_dir || !cfg.instance_prompt ||
                   (cfg.prior_preservation && !cfg.class_prompt)) {
            BT_ERROR("%s: a job needs pretrained_model_name_or_path, instance_data_dir, instance_prompt (and "
                     "class_prompt with with_prior_preservation)",
                     job_file);
            rc = 1;
            goto out_free_job;
        }
    } else {
        if (priors_only) {
            if (!f.c.model_dir && f.c.class_prompt && !(f.c.model_dir = cli_default_model("submit"))) return 2;
            if ((rc = s_priors_check(NULL, &f.c))) return rc;
            if (!sd_lr_sched_parse(f.lr_sched, &f.c.lr_scheduler)) {
                fprintf(stderr, "booth submit: --lr-scheduler '%s' is not " SD_LR_NAMES "\n", f.lr_sched);
                return 2;
            }
            f.c.rank = f.rank;
            if (!f.alpha_seen) f.c.lora_alpha = (float)f.rank;
        } else if ((rc = cli_train_finish("submit", &f, false))) {
            return rc;
        }
        cfg = f.c;
    }
    if (cfg.class_dir)
        BT_WARN("class_data_dir %s is not used on a cluster: the coordinator makes (or reuses) the prior set",
                cfg.class_dir);

    rc = 1;
    char **paths = NULL;
    char **data = NULL;
    pr_blob_t *blobs = NULL;
    char *json = NULL;
    int nimg = 0;
    char hash[BT_HASH_HEX] = "", dir_name[256] = "";
    struct stat st;
    if (stat(cfg.model_dir, &st) == 0 && S_ISDIR(st.st_mode)) {
        if (sd_model_hash(cfg.model_dir, SD_PART_ALL, hash, NULL)) goto out;
    } else {
        BT_INFO("%s is not a folder here: the workers' model is not checked against it", cfg.model_dir);
    }
    if (!priors_only) {
        if ((nimg = sd_list_images(cfg.instance_dir, &paths)) < 0) goto out;
        if (nimg == 0) {
            BT_ERROR("%s: no .jpg, .jpeg or .png images", cfg.instance_dir);
            goto out;
        }
        if (!(data = bt_calloc((size_t)nimg, sizeof *data)) || !(blobs = bt_calloc((size_t)nimg, sizeof *blobs))) {
            BT_ERROR("out of memory");
            goto out;
        }
        for (int i = 0; i < nimg; i++) {
            size_t len = 0;
            if (bt_read_file(paths[i], &data[i], &len)) goto out;
            blobs[i] = pr_blob_of_bytes(s_base(paths[i]), data[i], len);
        }
        s_dir_name(cfg.instance_dir, dir_name, sizeof dir_name);
    }
    cfg.instance_dir = priors_only ? NULL : dir_name;
    cfg.class_dir = NULL;
    if (!(json = sd_train_job_json(&cfg))) {
        BT_ERROR("out of memory");
        goto out;
    }

    if (cli_client_open(&cl)) goto out;
    Booth__Submit sub = BOOTH__SUBMIT__INIT;
    sub.job_json = json;
    sub.priors_only = priors_only;
    sub.model_hash = hash;
    Booth__Envelope env = PR_ENVELOPE_INIT(SUBMIT, submit, &sub);
    pr_msg_t r;
    int copies = 0;
    int src = cli_client_exchange(&cl, &env, blobs, nimg, BOOTH__ENVELOPE__BODY_SUBMITTED, false, (double)cl.timeout_s,
                                  &copies, &r);
    if (src == BT_EAGAIN) { /* never sent twice: a copy more would be a second job */
        char more[512];
        if (copies)
            snprintf(more, sizeof more,
                     "; the job was sent and may or may not have been queued: `booth status --coordinator %s` "
                     "tells",
                     cl.coordinator);
        else
            snprintf(more, sizeof more, "; the job was not sent");
        cli_client_no_answer(&cl, (double)cl.timeout_s, more);
    }
    if (src) goto out;
    char job_id[256];
    snprintf(job_id, sizeof job_id, "%s", r.env->submitted && r.env->submitted->job_id ? r.env->submitted->job_id : "");
    pr_msg_free(&r);
    if (!*job_id) {
        BT_ERROR("%s: the coordinator accepted the job without an id", cl.coordinator);
        goto out;
    }
    printf("%s\n", job_id);
    fflush(stdout);
    if (wait && s_wait(&cl, job_id)) goto out;
    if (wait && f.output_dir && s_fetch(&cl, job_id, f.output_dir)) goto out;
    rc = 0;
out:
    cli_client_close(&cl);
    free(json);
    for (int i = 0; data && i < nimg; i++)
        free(data[i]);
    free(data);
    free(blobs);
    if (paths) sd_free_paths(paths);
out_free_job:
    sd_job_free(&job);
    return rc;
}

/* ---- booth status, cancel, fetch ---- */

int cmd_status(int argc, char **argv)
{
    cli_client_t cl;
    cli_client_init(&cl);
    bool json = false;
    const cli_opt_t opts[] = {
        CLI_OPT("--json", CLI_FLAG, &json, NULL, "print the coordinator's status JSON as it is"),
        CLI_CLIENT_OPTS(&cl),
        CLI_END,
    };
    const cli_spec_t spec = {
        "status",
        "[JOB] --coordinator ADDR [options]",
        "Shows what a booth cluster is doing: each job (state, phase, step, loss, time per step, error), each\n"
        "worker (state, tasks done, time per task, model hash) and each parameter server (endpoint, tensors\n"
        "held). With JOB, only that job.",
        opts,
        1,
        "JOB"};
    const char *pos[1];
    int npos, rc = cli_parse(&spec, argc, argv, pos, &npos);
    if (rc >= 0) return rc;
    if ((rc = cli_client_check(&cl, "status"))) return rc;
    const char *job = npos ? pos[0] : NULL;
    rc = 1;
    char *raw = NULL;
    cJSON *root = NULL;
    if (cli_client_open(&cl)) goto out;
    if ((rc = s_status(&cl, job, (double)cl.timeout_s, &root, &raw))) {
        if (rc == BT_EAGAIN) cli_client_no_answer(&cl, (double)cl.timeout_s, NULL);
        rc = 1;
        goto out;
    }
    if (json) {
        printf("%s\n", raw);
    } else {
        s_print_jobs(s_array(root, "jobs"));
        if (!job) {
            s_print_workers(s_array(root, "workers"));
            s_print_ps(s_array(root, "ps"));
        }
    }
    rc = 0;
out:
    cJSON_Delete(root);
    free(raw);
    cli_client_close(&cl);
    return rc;
}

int cmd_cancel(int argc, char **argv)
{
    cli_client_t cl;
    cli_client_init(&cl);
    const cli_opt_t opts[] = {CLI_CLIENT_OPTS(&cl), CLI_END};
    const cli_spec_t spec = {
        "cancel",
        "JOB --coordinator ADDR [options]",
        "Stops a queued or running job. Prints \"JOB: cancelled\", or the state the job already had\n"
        "(done, failed, cancelled).",
        opts,
        1,
        "JOB"};
    const char *pos[1];
    int npos, rc = cli_parse(&spec, argc, argv, pos, &npos);
    if (rc >= 0) return rc;
    if (!npos) {
        fprintf(stderr, "booth cancel: which job? (booth cancel JOB --coordinator ADDR)\n");
        return 2;
    }
    if ((rc = cli_client_check(&cl, "cancel"))) return rc;
    rc = 1;
    Booth__Cancel ca = BOOTH__CANCEL__INIT;
    ca.job_id = (char *)pos[0];
    Booth__Envelope env = PR_ENVELOPE_INIT(CANCEL, cancel, &ca);
    pr_msg_t r;
    if (cli_client_open(&cl) || cli_client_request(&cl, &env, BOOTH__ENVELOPE__BODY_CANCELLED, &r)) goto out;
    const Booth__Cancelled *cd = r.env->cancelled;
    const char *id = cd && cd->job_id && *cd->job_id ? cd->job_id : pos[0];
    printf("%s: %s\n", id, cd && cd->state && *cd->state ? cd->state : "cancelled");
    pr_msg_free(&r);
    rc = 0;
out:
    cli_client_close(&cl);
    return rc;
}

int cmd_fetch(int argc, char **argv)
{
    cli_client_t cl;
    cli_client_init(&cl);
    const char *dir = NULL;
    const cli_opt_t opts[] = {
        CLI_OPT("--output-dir", CLI_STR, &dir, "DIR", "where the job's files go, under their own names (required)"),
        CLI_CLIENT_OPTS(&cl),
        CLI_END,
    };
    const cli_spec_t spec = {
        "fetch",
        "JOB --output-dir DIR --coordinator ADDR [options]",
        "Downloads a finished job's files (the LoRA files, loss.csv and loss.png, and whatever else the job\n"
        "wrote) into DIR under their own names, each written crash-safely (temporary file, fsync, rename).\n"
        "Prints each path written. A name that would leave DIR is refused.",
        opts,
        1,
        "JOB"};
    const char *pos[1];
    int npos, rc = cli_parse(&spec, argc, argv, pos, &npos);
    if (rc >= 0) return rc;
    if (!npos || !dir) {
        fprintf(stderr, "booth fetch: JOB and --output-dir DIR are required\n");
        return 2;
    }
    if ((rc = cli_client_check(&cl, "fetch"))) return rc;
    rc = cli_client_open(&cl) || s_fetch(&cl, pos[0], dir) ? 1 : 0;
    cli_client_close(&cl);
    return rc;
}
