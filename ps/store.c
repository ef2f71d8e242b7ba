/*
 * store.c — a parameter server's per-job state: load, ordered gradient sums
 * from pushes in any order, apply, and the pulls waiting for a version
 * (store.h). No sockets here: every input arrives as plain arrays, every
 * answer leaves as a verdict.
 */
#include "ps/store.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/status.h"
#include "diffusion/job.h"

struct ps_store {
    nn_ctx_t *ctx;
    ps_job_t **jobs; /* held jobs, in load order */
    int njobs, cap_jobs;
    ps_pull_t *pulls; /* waiting pulls, in arrival order */
    int npulls, cap_pulls;
};

/* Writes the cause into why and logs it once, at `level`, naming the peer. */
__attribute__((format(printf, 5, 6))) static void s_say(bt_log_level_t level, const char *peer, char *why, size_t cap,
                                                        const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (why && cap) snprintf(why, cap, "%s", buf);
    bt_log(level, "%s: %s", peer ? peer : "?", buf);
}

/* ---- jobs ------------------------------------------------------------------------ */

static void s_job_destroy(ps_job_t **pj)
{
    ps_job_t *j = *pj;
    if (!j) return;
    if (j->early)
        for (int k = 0; k < j->microbatches; k++)
            free(j->early[k]);
    free(j->early);
    for (int k = 0; j->spare && k < j->nspare; k++) free(j->spare[k]);
    free(j->spare);
    free(j->have);
    free(j->offset);
    free(j->sum_squares);
    free(j->index);
    free(j->seen);
    free(j->slot);
    sd_optim_destroy(&j->opt);
    free(j);
    *pj = NULL;
}

static int s_find(const ps_store_t *s, const char *job_id)
{
    for (int i = 0; i < s->njobs; i++)
        if (!strcmp(s->jobs[i]->id, job_id)) return i;
    return -1;
}

static ps_job_t *s_job(const ps_store_t *s, const char *job_id)
{
    int i = job_id ? s_find(s, job_id) : -1;
    return i < 0 ? NULL : s->jobs[i];
}

ps_store_t *ps_store_new(nn_ctx_t *ctx)
{
    ps_store_t *s = bt_calloc(1, sizeof *s);
    if (!s) {
        BT_ERROR("ps: out of memory for the store");
        return NULL;
    }
    s->ctx = ctx;
    return s;
}

void ps_store_destroy(ps_store_t **ps)
{
    ps_store_t *s = *ps;
    if (!s) return;
    for (int i = 0; i < s->njobs; i++)
        s_job_destroy(&s->jobs[i]);
    free(s->jobs);
    free(s->pulls);
    free(s);
    *ps = NULL;
}

const ps_job_t *ps_store_job(const ps_store_t *s, const char *job_id)
{
    return s_job(s, job_id);
}
int ps_store_njobs(const ps_store_t *s)
{
    return s->njobs;
}
const ps_job_t *ps_store_job_at(const ps_store_t *s, int i)
{
    return i >= 0 && i < s->njobs ? s->jobs[i] : NULL;
}
int ps_store_npulls(const ps_store_t *s)
{
    return s->npulls;
}

/* Forgets the step's gradients (after an apply): the next step starts empty. */
/* An early buffer goes back to the spares (at most M are ever out, so they fit). */
static void s_spare(ps_job_t *j, float *buf)
{
    if (buf) j->spare[j->nspare++] = buf;
}

static void s_job_clear_step(ps_job_t *j)
{
    for (int k = 0; k < j->microbatches; k++) {
        s_spare(j, j->early[k]);
        j->early[k] = NULL;
        j->have[k] = false;
    }
    j->added = 0;
    j->ready = false;
}

/* ---- load ------------------------------------------------------------------------ */

/* The load's inputs that do not need the optimizer: ids, counts, shapes, names,
 * indices. Returns the cause, or NULL when they are fine. */
static const char *s_load_bad(const ps_load_t *l, char *buf, size_t cap)
{
    if (!l->job_id || !l->job_id[0] || strlen(l->job_id) >= PS_JOB_ID_MAX)
        return snprintf(buf, cap, "a job id of 1 to %d bytes is required", PS_JOB_ID_MAX - 1), buf;
    if (l->microbatches < 1 || l->microbatches > PS_MAX_MICROBATCHES)
        return snprintf(buf, cap, "microbatches %d, expected 1..%d", l->microbatches, PS_MAX_MICROBATCHES), buf;
    if (l->step < 0) return snprintf(buf, cap, "step %" PRId64 " is negative", l->step), buf;
    if (l->n < 0) return snprintf(buf, cap, "%d tensors", l->n), buf;
    if (!l->job_json) return "no job_json";
    for (int i = 0; i < l->n; i++) {
        const ps_tensor_in_t *t = &l->t[i];
        if (!t->name || !t->name[0] || strlen(t->name) >= SD_OPTIM_NAME_MAX)
            return snprintf(buf, cap, "tensor %d has no name or one of %d bytes or more", i, SD_OPTIM_NAME_MAX), buf;
        if (t->shape[0] < 1 || t->shape[1] < 1 || t->shape[0] > (1 << 20) || t->shape[1] > (1 << 20))
            return snprintf(buf, cap, "tensor '%.80s' has shape [%" PRId64 ", %" PRId64 "]", t->name, t->shape[0],
                            t->shape[1]),
                   buf;
        if (!t->p || !t->m || !t->v) return snprintf(buf, cap, "tensor '%.80s' lacks p, m or v", t->name), buf;
        if (t->index < 0) return snprintf(buf, cap, "tensor '%.80s' has index %d", t->name, (int)t->index), buf;
        for (int k = 0; k < i; k++) {
            if (!strcmp(l->t[k].name, t->name)) return snprintf(buf, cap, "tensor '%.80s' comes twice", t->name), buf;
            if (l->t[k].index == t->index)
                return snprintf(buf, cap, "index %d comes twice ('%.80s', '%.80s')", (int)t->index, l->t[k].name,
                                t->name),
                       buf;
        }
    }
    return NULL;
}

ps_verdict_t ps_store_load(ps_store_t *s, const char *peer, const ps_load_t *l, char *why, size_t cap)
{
    char buf[400];
    const char *bad = s_load_bad(l, buf, sizeof buf);
    const char *id = l->job_id && strlen(l->job_id) < PS_JOB_ID_MAX ? l->job_id : "?";
    if (bad) {
        s_say(BT_LOG_WARN, peer, why, cap, "ps_load of job %.80s refused: %s", id, bad);
        return PS_REFUSED;
    }

    /* the optimizer settings: sd_job_parse names the peer in its own line */
    char what[PS_PEER_MAX + PS_JOB_ID_MAX + 32];
    snprintf(what, sizeof what, "%s: job %s", peer ? peer : "?", id);
    sd_job_t job;
    if (sd_job_parse(&job, l->job_json, l->job_json_len, what)) {
        if (why && cap) snprintf(why, cap, "ps_load of job %s refused: %s", id, bt_log_last_error());
        return PS_REFUSED;
    }
    sd_optim_config_t cfg;
    sd_optim_config_from_train(&cfg, &job.cfg);
    sd_job_free(&job);

    int n = l->n, M = l->microbatches;
    size_t nn = (size_t)(n ? n : 1);
    ps_job_t *j = bt_calloc(1, sizeof *j);
    sd_optim_spec_t *spec = bt_calloc(nn, sizeof *spec);
    if (!j || !spec || !(j->have = bt_calloc((size_t)M, sizeof *j->have)) ||
        !(j->early = bt_calloc((size_t)M, sizeof *j->early)) || !(j->spare = bt_calloc((size_t)M, sizeof *j->spare)) ||
        !(j->offset = bt_calloc(nn, sizeof *j->offset)) ||
        !(j->sum_squares = bt_calloc(nn, sizeof *j->sum_squares)) || !(j->index = bt_calloc(nn, sizeof *j->index)) ||
        !(j->seen = bt_calloc(nn, sizeof *j->seen)) || !(j->slot = bt_calloc(nn, sizeof *j->slot))) {
        if (j) j->microbatches = M;
        s_job_destroy(&j);
        free(spec);
        s_say(BT_LOG_ERROR, peer, why, cap, "ps_load of job %s refused: out of memory", id);
        return PS_REFUSED;
    }
    snprintf(j->id, sizeof j->id, "%s", l->job_id);
    j->microbatches = M;
    for (int i = 0; i < n; i++) {
        spec[i] = (sd_optim_spec_t){.name = l->t[i].name,
                                    .index = l->t[i].index,
                                    .shape = {l->t[i].shape[0], l->t[i].shape[1]},
                                    .params = NULL};
        j->index[i] = l->t[i].index;
        j->offset[i] = j->total;
        j->total += l->t[i].shape[0] * l->t[i].shape[1];
    }
    j->opt = sd_optim_new(s->ctx, &cfg, spec, n); /* logs its own line on failure */
    free(spec);
    if (!j->opt) {
        if (why && cap) snprintf(why, cap, "ps_load of job %s refused: %s", id, bt_log_last_error());
        s_job_destroy(&j);
        return PS_REFUSED;
    }
    int rc = BT_OK;
    for (int i = 0; i < n && rc == BT_OK; i++) {
        sd_optim_tensor_t *t = &j->opt->t[i];
        size_t bytes = (size_t)t->numel * sizeof(float);
        rc = nn_upload(s->ctx, t->p, l->t[i].p, bytes);
        if (rc == BT_OK) rc = nn_upload(s->ctx, t->m, l->t[i].m, bytes);
        if (rc == BT_OK) rc = nn_upload(s->ctx, t->v, l->t[i].v, bytes);
    }
    if (rc) {
        s_say(BT_LOG_ERROR, peer, why, cap, "ps_load of job %s refused: cannot copy the tensors: %s", id,
              bt_status_str(rc));
        s_job_destroy(&j);
        return PS_REFUSED;
    }
    j->opt->step = l->step;

    /* complete: replace the old state, or add a slot */
    int at = s_find(s, j->id);
    if (at >= 0) {
        s_job_destroy(&s->jobs[at]);
        s->jobs[at] = j;
    } else {
        if (s->njobs == s->cap_jobs) {
            int c = s->cap_jobs ? 2 * s->cap_jobs : 4;
            ps_job_t **p = bt_realloc(s->jobs, (size_t)c * sizeof *p);
            if (!p) {
                s_job_destroy(&j);
                s_say(BT_LOG_ERROR, peer, why, cap, "ps_load of job %s refused: out of memory", id);
                return PS_REFUSED;
            }
            s->jobs = p;
            s->cap_jobs = c;
        }
        s->jobs[s->njobs++] = j;
    }
    BT_INFO("%s: job %s %s: %d tensor%s (%.1f MiB of parameters) at step %" PRId64 ", %d micro-batch%s per step",
            peer ? peer : "?", j->id, at >= 0 ? "reloaded" : "loaded", n, n == 1 ? "" : "s",
            (double)j->total * 4 / 1048576.0, l->step, M, M == 1 ? "" : "es");
    return PS_DONE;
}

/* ---- push ------------------------------------------------------------------------ */

/* Adds micro-batch k (the next in order) from g (blob b -> tensor slot[b]), or
 * from its early buffer. */
static int s_add(ps_job_t *j, int k, const ps_grad_in_t *g, int n, bool from_early)
{
    int rc = BT_OK;
    if (!from_early) {
        for (int b = 0; b < n && rc == BT_OK; b++)
            rc = sd_optim_add_grad(j->opt, j->slot[b], k, g[b].data);
    } else {
        for (int i = 0; i < j->opt->n && rc == BT_OK; i++)
            rc = sd_optim_add_grad(j->opt, i, k, j->early[k] + j->offset[i]);
        s_spare(j, j->early[k]);
        j->early[k] = NULL;
    }
    return rc;
}

ps_verdict_t ps_store_push(ps_store_t *s, const char *peer, const char *job_id, int64_t step, int micro,
                           const ps_grad_in_t *g, int n, bool *ready, char *why, size_t cap)
{
    *ready = false;
    ps_job_t *j = s_job(s, job_id);
    const char *id = job_id ? job_id : "";
    if (!j) {
        s_say(BT_LOG_WARN, peer, why, cap, "push of job %.80s step %" PRId64 " micro %d refused: job not loaded here",
              id, step, micro);
        return PS_REFUSED;
    }
    const int64_t cur = j->opt->step;
    if (micro < 0 || micro >= j->microbatches) {
        s_say(BT_LOG_WARN, peer, why, cap, "push of job %s step %" PRId64 " micro %d refused: micro-batches are 0..%d",
              id, step, micro, j->microbatches - 1);
        return PS_REFUSED;
    }
    if (step > cur) {
        s_say(BT_LOG_WARN, peer, why, cap,
              "push of job %s step %" PRId64 " micro %d refused: step %" PRId64 " is not applied yet", id, step, micro,
              cur);
        return PS_REFUSED;
    }
    if (step < cur) {
        s_say(BT_LOG_DEBUG, peer, why, cap, "push of job %s step %" PRId64 " micro %d ignored: stale, at step %" PRId64,
              id, step, micro, cur);
        return PS_IGNORED;
    }
    if (j->have[micro]) {
        s_say(BT_LOG_DEBUG, peer, why, cap, "push of job %s step %" PRId64 " micro %d ignored: a duplicate", id, step,
              micro);
        return PS_IGNORED;
    }

    /* exactly this PS's tensors, each once, each of its size */
    const int nt = j->opt->n;
    if (n != nt) {
        s_say(BT_LOG_WARN, peer, why, cap,
              "push of job %s step %" PRId64 " micro %d refused: %d gradients, this PS holds %d tensors", id, step,
              micro, n, nt);
        return PS_REFUSED;
    }
    memset(j->seen, 0, (size_t)nt * sizeof *j->seen);
    for (int b = 0; b < n; b++) {
        const char *name = g[b].name ? g[b].name : "";
        /* pushes normally list the tensors in this PS's order: try that first */
        int i = !strcmp(j->opt->t[b].name, name) ? b : sd_optim_find(j->opt, name);
        const char *bad = i < 0                                            ? "is not a tensor of this PS"
                          : j->seen[i]                                     ? "comes twice"
                          : g[b].numel != j->opt->t[i].numel || !g[b].data ? "has the wrong size"
                                                                           : NULL;
        if (bad) {
            s_say(BT_LOG_WARN, peer, why, cap, "push of job %s step %" PRId64 " micro %d refused: gradient '%.80s' %s",
                  id, step, micro, name, bad);
            return PS_REFUSED;
        }
        j->seen[i] = true;
        j->slot[b] = i;
    }

    int rc = BT_OK;
    if (micro == j->added) {
        rc = s_add(j, micro, g, n, false);
        for (j->added++; rc == BT_OK && j->added < j->microbatches && j->early[j->added]; j->added++)
            rc = s_add(j, j->added, NULL, 0, true);
    } else {
        float *buf = j->nspare ? j->spare[--j->nspare] : bt_malloc((size_t)(j->total ? j->total : 1) * sizeof *buf);
        if (!buf) {
            s_say(BT_LOG_ERROR, peer, why, cap, "push of job %s step %" PRId64 " micro %d refused: out of memory", id,
                  step, micro);
            return PS_REFUSED;
        }
        for (int b = 0; b < n; b++)
            memcpy(buf + j->offset[j->slot[b]], g[b].data, (size_t)g[b].numel * sizeof *buf);
        j->early[micro] = buf;
    }
    if (rc) {
        /* a kernel failed on the CPU: nothing a peer could cause; the step cannot complete */
        s_say(BT_LOG_ERROR, peer, why, cap, "push of job %s step %" PRId64 " micro %d: summing failed: %s", id, step,
              micro, bt_status_str(rc));
        return PS_REFUSED;
    }
    j->have[micro] = true;
    if (j->added == j->microbatches) {
        for (int i = 0; i < nt && rc == BT_OK; i++)
            rc = sd_optim_sum_squares(j->opt, i, &j->sum_squares[i]);
        if (rc) {
            s_say(BT_LOG_ERROR, peer, why, cap, "job %s step %" PRId64 ": sum of squares failed: %s", id, step,
                  bt_status_str(rc));
            return PS_REFUSED;
        }
        j->ready = true;
        *ready = true;
        BT_DEBUG("job %s step %" PRId64 ": all %d gradients summed", id, step, j->microbatches);
    }
    return PS_DONE;
}

/* ---- apply ----------------------------------------------------------------------- */

ps_verdict_t ps_store_apply(ps_store_t *s, const char *peer, const char *job_id, int64_t step, double grad_norm,
                            int64_t *new_step, float *lr, char *why, size_t cap)
{
    ps_job_t *j = s_job(s, job_id);
    const char *id = job_id ? job_id : "";
    if (!j) {
        s_say(BT_LOG_WARN, peer, why, cap, "apply of job %.80s step %" PRId64 " refused: job not loaded here", id,
              step);
        return PS_REFUSED;
    }
    sd_optim_t *o = j->opt;
    const sd_optim_config_t *c = &o->cfg;
    if (step < o->step) {
        *new_step = o->step;
        *lr = sd_optim_lr(c, o->step - 1);
        BT_INFO("%s: apply of job %s step %" PRId64 " again: already at step %" PRId64 ", not applied twice",
                peer ? peer : "?", id, step, o->step);
        return PS_IGNORED;
    }
    if (step > o->step || !j->ready || grad_norm < 0) {
        int have = 0;
        for (int k = 0; k < j->microbatches; k++)
            have += j->have[k];
        if (step > o->step)
            s_say(BT_LOG_WARN, peer, why, cap, "apply of job %s step %" PRId64 " refused: at step %" PRId64, id, step,
                  o->step);
        else if (!j->ready)
            s_say(BT_LOG_WARN, peer, why, cap,
                  "apply of job %s step %" PRId64 " refused: %d of %d gradients are in, no GradReady sent yet", id,
                  step, have, j->microbatches);
        else
            s_say(BT_LOG_WARN, peer, why, cap, "apply of job %s step %" PRId64 " refused: gradient norm %g", id, step,
                  grad_norm);
        return PS_REFUSED;
    }
    float used = 0;
    int rc = sd_optim_apply(o, grad_norm, &used);
    if (rc) {
        /* the CPU kernels fail only on a programming error; say so and keep serving */
        s_say(BT_LOG_ERROR, peer, why, cap, "apply of job %s step %" PRId64 " failed: %s", id, step, bt_status_str(rc));
        return PS_REFUSED;
    }
    s_job_clear_step(j);
    *new_step = o->step;
    *lr = used;
    BT_DEBUG("job %s: applied step %" PRId64 " (norm %g, lr %g)", id, step, grad_norm, (double)used);
    return PS_DONE;
}

/* ---- pulls ----------------------------------------------------------------------- */

ps_verdict_t ps_store_pull(ps_store_t *s, const char *peer, const char *job_id, int64_t version, const void *rid,
                           size_t rid_len, char *why, size_t cap)
{
    const ps_job_t *j = s_job(s, job_id);
    const char *id = job_id ? job_id : "";
    if (!j) {
        s_say(BT_LOG_WARN, peer, why, cap, "pull of job %.80s version %" PRId64 " refused: job not loaded here", id,
              version);
        return PS_REFUSED;
    }
    if (version < j->opt->step) {
        s_say(BT_LOG_WARN, peer, why, cap,
              "pull of job %s version %" PRId64 " refused: at version %" PRId64 ", older ones are gone", id, version,
              j->opt->step);
        return PS_REFUSED;
    }
    if (version == j->opt->step) return PS_DONE;
    if (rid_len > PS_ROUTING_ID_MAX) {
        s_say(BT_LOG_WARN, peer, why, cap, "pull of job %s version %" PRId64 " refused: routing id of %zu bytes", id,
              version, rid_len);
        return PS_REFUSED;
    }
    for (int i = 0; i < s->npulls; i++) {
        const ps_pull_t *q = &s->pulls[i];
        if (q->version == version && q->rid_len == rid_len && !memcmp(q->rid, rid, rid_len) &&
            !strcmp(q->job_id, j->id))
            return PS_QUEUED; /* asked again: one answer is enough */
    }
    if (s->npulls == PS_MAX_PULLS) {
        s_say(BT_LOG_WARN, peer, why, cap, "pull of job %s version %" PRId64 " refused: %d pulls wait already", id,
              version, PS_MAX_PULLS);
        return PS_REFUSED;
    }
    if (s->npulls == s->cap_pulls) {
        int c = s->cap_pulls ? 2 * s->cap_pulls : 16;
        ps_pull_t *p = bt_realloc(s->pulls, (size_t)c * sizeof *p);
        if (!p) {
            s_say(BT_LOG_ERROR, peer, why, cap, "pull of job %s version %" PRId64 " refused: out of memory", id,
                  version);
            return PS_REFUSED;
        }
        s->pulls = p;
        s->cap_pulls = c;
    }
    ps_pull_t *q = &s->pulls[s->npulls++];
    memset(q, 0, sizeof *q);
    snprintf(q->job_id, sizeof q->job_id, "%s", j->id);
    q->version = version;
    memcpy(q->rid, rid, rid_len);
    q->rid_len = rid_len;
    snprintf(q->peer, sizeof q->peer, "%s", peer ? peer : "?");
    BT_DEBUG("%s: pull of job %s version %" PRId64 " waits (at %" PRId64 ")", q->peer, id, version, j->opt->step);
    return PS_QUEUED;
}

bool ps_store_pop_pull(ps_store_t *s, ps_pull_t *out, ps_verdict_t *verdict, char *why, size_t cap)
{
    for (int i = 0; i < s->npulls; i++) {
        const ps_pull_t *q = &s->pulls[i];
        const ps_job_t *j = s_job(s, q->job_id);
        if (j && j->opt->step < q->version) continue; /* still ahead: keep waiting */
        *out = *q;
        memmove(&s->pulls[i], &s->pulls[i + 1], (size_t)(s->npulls - i - 1) * sizeof *s->pulls);
        s->npulls--;
        if (j && j->opt->step == out->version) {
            *verdict = PS_DONE;
        } else {
            *verdict = PS_REFUSED;
            if (j)
                s_say(BT_LOG_WARN, out->peer, why, cap,
                      "pull of job %s version %" PRId64 " refused: the job was reloaded at version %" PRId64,
                      out->job_id, out->version, j->opt->step);
            else
                s_say(BT_LOG_WARN, out->peer, why, cap,
                      "pull of job %s version %" PRId64 " refused: the job was released", out->job_id, out->version);
        }
        return true;
    }
    return false;
}

/* ---- release --------------------------------------------------------------------- */

ps_verdict_t ps_store_release(ps_store_t *s, const char *peer, const char *job_id)
{
    int i = job_id ? s_find(s, job_id) : -1;
    if (i < 0) {
        BT_DEBUG("%s: release of job %.80s: not held here (released already?)", peer ? peer : "?",
                 job_id ? job_id : "");
        return PS_IGNORED;
    }
    BT_INFO("%s: job %s released at step %" PRId64, peer ? peer : "?", job_id, s->jobs[i]->opt->step);
    s_job_destroy(&s->jobs[i]);
    memmove(&s->jobs[i], &s->jobs[i + 1], (size_t)(s->njobs - i - 1) * sizeof *s->jobs);
    s->njobs--;
    return PS_DONE;
}
