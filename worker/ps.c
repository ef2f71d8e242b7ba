/*
 * ps.c — the worker's side of the parameter servers (docs/CLUSTER.md, "Training").
 *
 * A task names the PS that hold the job's LoRA (endpoint, public key); the
 * worker keeps one DEALER per PS for as long as it runs. Which tensor lives on
 * which PS is the coordinator's business: the worker learns it from what each
 * PS sends back to a Pull (every tensor must come from exactly one of them), and
 * pushes each PS the gradients of exactly those tensors. So when the set of PS
 * changes, the worker pulls again before it pushes anything.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/status.h"
#include "worker/wk.h"

void wk_ps_forget(wk_t *w)
{
    for (int i = 0; i < w->nps; i++) {
        w->ps[i].known = false;
        w->ps[i].nheld = 0;
    }
}

void wk_ps_close(wk_t *w)
{
    for (int i = 0; i < w->nps; i++) {
        if (w->ps[i].sock) zmq_close(w->ps[i].sock);
        free(w->ps[i].held);
    }
    free(w->ps);
    free(w->cur);
    w->ps = NULL;
    w->cur = NULL;
    w->nps = w->ncur = 0;
}

/* The index in w->ps of a connection to (endpoint, key), made if needed; < 0 on failure. */
static int s_connect(wk_t *w, const char *endpoint, const char *key)
{
    for (int i = 0; i < w->nps; i++) {
        wk_ps_t *p = &w->ps[i];
        if (strcmp(p->endpoint, endpoint)) continue;
        if (!strcmp(p->key, key)) return i;
        zmq_close(p->sock); /* the PS came back with another key */
        if (!(p->sock = pr_node_connect(&w->node, endpoint, key))) return BT_EIO;
        snprintf(p->key, sizeof p->key, "%s", key);
        p->known = false;
        return i;
    }
    wk_ps_t *grown = bt_realloc(w->ps, (size_t)(w->nps + 1) * sizeof *grown);
    if (!grown) {
        BT_ERROR("worker: out of memory");
        return BT_ENOMEM;
    }
    w->ps = grown;
    wk_ps_t *p = &w->ps[w->nps];
    memset(p, 0, sizeof *p);
    snprintf(p->endpoint, sizeof p->endpoint, "%s", endpoint);
    snprintf(p->key, sizeof p->key, "%s", key);
    if (!(p->sock = pr_node_connect(&w->node, endpoint, w->node.o.insecure ? NULL : key))) return BT_EIO;
    return w->nps++;
}

int wk_ps_use(wk_t *w, const Booth__Task *task)
{
    int n = (int)task->n_ps; /* 0: wk_ps_pull refuses unless the worker holds the version already */
    int *cur = bt_malloc((size_t)(n ? n : 1) * sizeof *cur);
    if (!cur) {
        BT_ERROR("worker: out of memory");
        return BT_ENOMEM;
    }
    for (int k = 0; k < n; k++) {
        const Booth__PsInfo *pi = task->ps[k];
        const char *ep = pi->endpoint ? pi->endpoint : "", *key = pi->public_key ? pi->public_key : "";
        if (strlen(ep) >= sizeof w->ps[0].endpoint || !pr_endpoint_ok(ep, false)) {
            free(cur);
            return BT_EPROTO;
        }
        if (w->node.o.insecure) {
            key = "";
        } else if (!pr_key_z85_ok(key)) {
            BT_ERROR("coordinator %s: PS %s comes without a valid public key (this worker uses CURVE)",
                     w->o->coordinator, ep);
            free(cur);
            return BT_EPROTO;
        }
        int i = s_connect(w, ep, key);
        if (i < 0) {
            free(cur);
            return i;
        }
        cur[k] = i;
    }
    /* another set of PS may split the tensors another way: learn it again */
    if (n != w->ncur || (n && memcmp(cur, w->cur, (size_t)n * sizeof *cur))) { /* (memcmp: never with NULL) */
        wk_ps_forget(w);
        w->version = -1;
    }
    free(w->cur);
    w->cur = cur;
    w->ncur = n;
    return BT_OK;
}

static int s_tensor_index(const sd_trainer_t *t, const char *name)
{
    for (int i = 0; i < t->ntensors; i++)
        if (!strcmp(t->tensors[i].name, name)) return i;
    return -1;
}

/* ---- pull ---------------------------------------------------------------------- */

typedef struct {
    int64_t version;
    bool *done; /* per current PS */
    int ndone;
    bool *covered; /* per tensor: some PS sent it */
} s_pull_t;

static int s_on_weights(wk_t *w, int i, pr_msg_t *m, void *arg)
{
    s_pull_t *p = arg;
    wk_ps_t *ps = &w->ps[w->cur[i]];
    Booth__Envelope *e = m->env;
    if (e->body_case == BOOTH__ENVELOPE__BODY_ERROR) {
        BT_ERROR("PS %s: %s", ps->endpoint, e->error->message);
        return BT_EPROTO;
    }
    if (e->body_case != BOOTH__ENVELOPE__BODY_WEIGHTS || p->done[i] || strcmp(e->weights->job_id, w->job_id) ||
        e->weights->version < p->version) /* a late answer to an earlier pull */
        return WK_WAIT_SKIP;
    if (e->weights->version > p->version) {
        BT_ERROR("PS %s sent LoRA version %lld; the task is at version %lld", ps->endpoint,
                 (long long)e->weights->version, (long long)p->version);
        return BT_EPROTO;
    }
    sd_trainer_t *t = w->trainer;
    int *held = bt_realloc(ps->held, (e->n_blobs ? e->n_blobs : 1) * sizeof *held);
    if (!held) {
        BT_ERROR("worker: out of memory");
        return BT_ENOMEM;
    }
    ps->held = held;
    ps->nheld = 0;
    for (size_t b = 0; b < e->n_blobs; b++) {
        const Booth__Blob *d = e->blobs[b];
        int k = s_tensor_index(t, d->name);
        if (k < 0) {
            BT_ERROR("PS %s sent '%.200s', not a LoRA tensor of job %s", ps->endpoint, d->name, w->job_id);
            return BT_EPROTO;
        }
        if (d->n_shape != 2 || d->shape[0] != t->tensors[k].shape[0] || d->shape[1] != t->tensors[k].shape[1]) {
            BT_ERROR("PS %s sent '%s' of another shape than [%lld, %lld]", ps->endpoint, d->name,
                     (long long)t->tensors[k].shape[0], (long long)t->tensors[k].shape[1]);
            return BT_ESHAPE;
        }
        if (p->covered[k]) {
            BT_ERROR("PS %s sent '%s', which another PS holds", ps->endpoint, d->name);
            return BT_EPROTO;
        }
        int64_t numel = 0;
        const float *data = pr_blob_f32_at(m, (int)b, &numel);
        int rc = data ? sd_trainer_set_tensor(t, d->name, data, numel) : BT_EPROTO;
        if (rc) return rc;
        p->covered[k] = true;
        ps->held[ps->nheld++] = k;
    }
    ps->known = true;
    p->done[i] = true;
    return ++p->ndone == w->ncur ? WK_WAIT_DONE : WK_WAIT_TAKEN;
}

/* Drops what a PS sent after an earlier request was given up on (a late Weights, Error or
 * PushAck): a reply read now must answer the request about to be sent, and an Error carries no
 * job or version to tell. */
static void s_drain(wk_t *w, wk_ps_t *ps)
{
    for (int k = 0; k < 4096; k++) {
        pr_msg_t m;
        int rc = pr_recv_nowait(ps->sock, false, w->node.max_bytes, &m);
        if (rc == BT_OK)
            BT_DEBUG("PS %s: a late '%s' dropped before the next request", ps->endpoint, pr_body_name(m.env->body_case));
        pr_msg_free(&m);
        if (rc == BT_EAGAIN || rc == BT_EIO) return;
    }
}

int wk_ps_pull(wk_t *w, int64_t version)
{
    bool known = true;
    for (int k = 0; k < w->ncur; k++)
        known = known && w->ps[w->cur[k]].known;
    if (w->version == version && known && w->ncur) return BT_OK;
    if (!w->ncur) {
        if (w->version == version) return BT_OK;
        BT_ERROR("coordinator %s: the task names no PS to pull LoRA version %lld of job %s from", w->o->coordinator,
                 (long long)version, w->job_id);
        return BT_EPROTO;
    }
    sd_trainer_t *t = w->trainer;
    w->version = -1; /* a failed pull leaves a mixture */
    s_pull_t p = {.version = version};
    void **socks = bt_malloc((size_t)w->ncur * sizeof *socks);
    p.done = bt_calloc((size_t)w->ncur, sizeof *p.done);
    p.covered = bt_calloc((size_t)(t->ntensors ? t->ntensors : 1), sizeof *p.covered);
    int rc = BT_OK;
    if (!socks || !p.done || !p.covered) {
        BT_ERROR("worker: out of memory");
        rc = BT_ENOMEM;
        goto out;
    }
    Booth__Pull pull = BOOTH__PULL__INIT;
    pull.job_id = w->job_id;
    pull.version = version;
    Booth__Envelope env = PR_ENVELOPE_INIT(PULL, pull, &pull);
    for (int k = 0; k < w->ncur && rc == BT_OK; k++) {
        wk_ps_t *ps = &w->ps[w->cur[k]];
        ps->known = false;
        socks[k] = ps->sock;
        s_drain(w, ps);
        rc = pr_send(ps->sock, NULL, &env, NULL, 0);
    }
    if (rc) goto out;
    rc = wk_wait(w, socks, w->ncur, WK_PS_TIMEOUT_S, s_on_weights, &p);
    if (rc == BT_EAGAIN) {
        for (int k = 0; k < w->ncur; k++)
            if (!p.done[k]) {
                BT_ERROR("PS %s did not send LoRA version %lld of job %s within %.0f s", w->ps[w->cur[k]].endpoint,
                         (long long)version, w->job_id, WK_PS_TIMEOUT_S);
                break;
            }
    }
    if (rc) goto out;
    for (int k = 0; k < t->ntensors; k++)
        if (!p.covered[k]) {
            BT_ERROR("no PS sent LoRA tensor '%s' of job %s", t->tensors[k].name, w->job_id);
            rc = BT_ENOTFOUND;
            goto out;
        }
    w->version = version;
out:
    if (rc) wk_ps_forget(w);
    free(socks);
    free(p.done);
    free(p.covered);
    return rc;
}

/* ---- push ---------------------------------------------------------------------- */

typedef struct {
    int64_t step;
    int micro;
    bool *done;
    int ndone;
} s_push_t;

static int s_on_ack(wk_t *w, int i, pr_msg_t *m, void *arg)
{
    s_push_t *p = arg;
    wk_ps_t *ps = &w->ps[w->cur[i]];
    Booth__Envelope *e = m->env;
    if (e->body_case == BOOTH__ENVELOPE__BODY_ERROR) {
        BT_ERROR("PS %s: %s", ps->endpoint, e->error->message);
        return BT_EPROTO;
    }
    if (e->body_case != BOOTH__ENVELOPE__BODY_PUSH_ACK || p->done[i]) return WK_WAIT_SKIP;
    const Booth__PushAck *a = e->push_ack;
    if (strcmp(a->job_id, w->job_id) || a->step != p->step || a->micro != p->micro) return WK_WAIT_SKIP;
    if (!a->accepted) /* a duplicate (it has this micro-batch already), or it is at another step */
        BT_WARN("PS %s did not take micro-batch %d of step %lld of job %s (a repeat, or it is at another step)",
                ps->endpoint, p->micro, (long long)p->step, w->job_id);
    p->done[i] = true;
    return ++p->ndone == w->ncur ? WK_WAIT_DONE : WK_WAIT_TAKEN;
}

int wk_ps_push(wk_t *w, int64_t step, int micro)
{
    sd_trainer_t *t = w->trainer;
    s_push_t p = {.step = step, .micro = micro};
    void **socks = bt_malloc((size_t)(w->ncur ? w->ncur : 1) * sizeof *socks);
    pr_blob_t *blobs = bt_malloc((size_t)(t->ntensors ? t->ntensors : 1) * sizeof *blobs);
    float **owned = bt_calloc((size_t)(t->ntensors ? t->ntensors : 1), sizeof *owned);
    p.done = bt_calloc((size_t)(w->ncur ? w->ncur : 1), sizeof *p.done);
    int rc = BT_OK;
    if (!socks || !blobs || !owned || !p.done) {
        BT_ERROR("worker: out of memory");
        rc = BT_ENOMEM;
        goto out;
    }
    if (!w->ncur) {
        BT_ERROR("coordinator %s: the task names no PS to push the gradient of job %s to", w->o->coordinator,
                 w->job_id);
        rc = BT_EPROTO;
        goto out;
    }
    Booth__Push push = BOOTH__PUSH__INIT;
    push.job_id = w->job_id;
    push.step = step;
    push.micro = micro;
    Booth__Envelope env = PR_ENVELOPE_INIT(PUSH, push, &push);
    for (int k = 0; k < w->ncur && rc == BT_OK; k++) {
        wk_ps_t *ps = &w->ps[w->cur[k]];
        socks[k] = ps->sock;
        for (int j = 0; j < ps->nheld; j++) { /* known: wk_ps_pull ran for this set of PS */
            const sd_optim_spec_t *s = &t->tensors[ps->held[j]];
            int64_t n = s->shape[0] * s->shape[1];
            const float *g = wk_host_f32(w, t->grads[ps->held[j]], n, &owned[ps->held[j]]);
            if (!g) {
                rc = BT_EIO;
                goto out;
            }
            blobs[j] = pr_blob_of_f32(s->name, g, 2, s->shape);
        }
        s_drain(w, ps);
        rc = pr_send(ps->sock, NULL, &env, blobs, ps->nheld);
    }
    if (rc) goto out;
    rc = wk_wait(w, socks, w->ncur, WK_PS_TIMEOUT_S, s_on_ack, &p);
    if (rc == BT_EAGAIN)
        for (int k = 0; k < w->ncur; k++)
            if (!p.done[k]) {
                BT_ERROR("PS %s did not acknowledge micro-batch %d of step %lld within %.0f s",
                         w->ps[w->cur[k]].endpoint, micro, (long long)step, WK_PS_TIMEOUT_S);
                break;
            }
out:
    for (int k = 0; owned && k < t->ntensors; k++)
        free(owned[k]);
    free(owned);
    free(blobs);
    free(socks);
    free(p.done);
    return rc;
}
