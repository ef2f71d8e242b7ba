/*
 * ps.c — the parameter server's event loop (ps.h): sockets, registration with
 * the coordinator, and the translation between messages and the store's calls
 * (ps/store.h), which hold every decision about the state.
 *
 * What is checked here is the message's shape (which blobs, of which kind and
 * shape); what a message means for a job is the store's to judge. Either way a
 * message that makes no sense costs one log line naming the peer and an answer
 * that says so (an Error, or a PushAck with accepted = false), and the server
 * goes on.
 */
#include "ps/ps.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/status.h"
#include "nn/nn.h"
#include "ps/store.h"

#define S_DRAIN 64 /* messages taken off one socket per turn, so the others are not starved */

typedef struct s_ps {
    const ps_opts_t *o;
    pr_node_t node;
    void *router; /* workers: Pull, Push */
    void *dealer; /* the coordinator */
    nn_ctx_t *ctx;
    ps_store_t *store;
    char name[128];       /* host:pid */
    char bound[256];      /* the endpoint bound, real port */
    char advertised[256]; /* the endpoint the Hello names */
    bool welcomed;        /* a Welcome came, and no Error{reregister} since */
    char peer_id[64];     /* the last Welcome's: every Heartbeat names it */
    int heartbeat_ms;
    int64_t next_hello_ms, next_beat_ms;
    int status; /* BT_OK while running; a failure stops the loop */
    /* The weights of one version as frames, built at its first pull and shared by every later one
     * (ZeroMQ counts references): N workers pulling cost one copy, not N. */
    zmq_msg_t *wframes;
    int nwframes;
    const sd_optim_t *wopt; /* whose weights they are (NULL: none) */
    int64_t wversion;
} s_ps_t;

/* Drops the shared weight frames (a new version, a reload, a release). */
static void s_weights_forget(s_ps_t *ps)
{
    for (int i = 0; i < ps->nwframes; i++) zmq_msg_close(&ps->wframes[i]);
    free(ps->wframes);
    ps->wframes = NULL;
    ps->nwframes = 0;
    ps->wopt = NULL;
}

static int64_t s_now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static const char *s_str(const char *s)
{
    return s ? s : "";
}

/* ---- sending ----------------------------------------------------------------------- */

static int s_to_coordinator(s_ps_t *ps, Booth__Envelope *env, const pr_blob_t *blobs, int n)
{
    return pr_send(ps->dealer, NULL, env, blobs, n);
}

/* An Error to the coordinator (rid NULL) or to the worker at rid. */
static void s_send_error(s_ps_t *ps, const zmq_msg_t *rid, const char *message)
{
    Booth__Error e = BOOTH__ERROR__INIT;
    e.message = (char *)message;
    Booth__Envelope env = PR_ENVELOPE_INIT(ERROR, error, &e);
    if (rid)
        pr_send(ps->router, rid, &env, NULL, 0);
    else
        s_to_coordinator(ps, &env, NULL, 0);
}

/* Weights{job, version} + blob NAME [rows, cols] per tensor, to the worker at rid. */
static void s_send_weights(s_ps_t *ps, const zmq_msg_t *rid, const ps_job_t *j)
{
    const sd_optim_t *o = j->opt;
    pr_blob_t *blobs = bt_calloc((size_t)(o->n ? o->n : 1), sizeof *blobs);
    if (!blobs) {
        BT_ERROR("ps: out of memory answering a pull of job %s", j->id);
        s_send_error(ps, rid, "the parameter server is out of memory");
        return;
    }
    if (ps->wopt != o || ps->wversion != o->step) { /* the first pull of this version: its frames */
        s_weights_forget(ps);
        if ((ps->wframes = bt_calloc((size_t)(o->n ? o->n : 1), sizeof *ps->wframes))) {
            for (; ps->nwframes < o->n; ps->nwframes++)
                if (pr_frame_of(&ps->wframes[ps->nwframes], o->t[ps->nwframes].p,
                                (size_t)o->t[ps->nwframes].numel * sizeof(float)))
                    break;
            if (ps->nwframes == o->n) {
                ps->wopt = o;
                ps->wversion = o->step;
            } else {
                s_weights_forget(ps); /* out of memory: copy per pull instead */
            }
        }
    }
    for (int i = 0; i < o->n; i++) {
        blobs[i] = pr_blob_of_f32(o->t[i].name, o->t[i].p, 2, o->t[i].shape);
        if (ps->wopt == o) blobs[i].frame = &ps->wframes[i];
    }
    Booth__Weights w = BOOTH__WEIGHTS__INIT;
    w.job_id = (char *)j->id;
    w.version = o->step;
    Booth__Envelope env = PR_ENVELOPE_INIT(WEIGHTS, weights, &w);
    pr_send(ps->router, rid, &env, blobs, o->n); /* a gone worker: pr_send says so */
    free(blobs);
}

/* Answers every waiting pull that the last change decided. */
static void s_answer_pulls(s_ps_t *ps)
{
    ps_pull_t q;
    ps_verdict_t v;
    char why[512];
    while (ps_store_pop_pull(ps->store, &q, &v, why, sizeof why)) {
        zmq_msg_t rid;
        if (zmq_msg_init_size(&rid, q.rid_len)) {
            BT_ERROR("%s: cannot answer its pull of job %s: %s", q.peer, q.job_id, zmq_strerror(zmq_errno()));
            continue;
        }
        memcpy(zmq_msg_data(&rid), q.rid, q.rid_len);
        const ps_job_t *j = ps_store_job(ps->store, q.job_id);
        if (v == PS_DONE && j)
            s_send_weights(ps, &rid, j);
        else
            s_send_error(ps, &rid, why);
        zmq_msg_close(&rid);
    }
}

/* ---- registration ------------------------------------------------------------------ */

static void s_hello(s_ps_t *ps)
{
    Booth__Hello h = BOOTH__HELLO__INIT;
    h.role = BOOTH__ROLE__ROLE_PS;
    h.name = ps->name;
    h.endpoint = ps->advertised;
    h.public_key = ps->node.o.insecure ? (char *)"" : ps->node.keys.public_z85;
    h.threads = ps->ctx->threads;
    Booth__Envelope env = PR_ENVELOPE_INIT(HELLO, hello, &h);
    s_to_coordinator(ps, &env, NULL, 0);
}

static void s_heartbeat(s_ps_t *ps)
{
    char state[256] = "idle";
    int n = ps_store_njobs(ps->store);
    if (n > 0) {
        /* the job loaded last is the one running */
        const ps_job_t *j = ps_store_job_at(ps->store, n - 1);
        int have = 0;
        for (int k = 0; k < j->microbatches; k++)
            have += j->have[k];
        snprintf(state, sizeof state, "busy job %.80s step %" PRId64 " (%d of %d gradients)%s", j->id, j->opt->step,
                 have, j->microbatches, n > 1 ? " and other jobs held" : "");
    }
    Booth__Heartbeat hb = BOOTH__HEARTBEAT__INIT;
    hb.state = state;
    hb.peer_id = ps->peer_id;
    Booth__Envelope env = PR_ENVELOPE_INIT(HEARTBEAT, heartbeat, &hb);
    s_to_coordinator(ps, &env, NULL, 0);
}

/* ---- the coordinator's messages ---------------------------------------------------- */

/* A PsLoad's tensors from its blobs: the i-th "p/NAME" blob is tensor i (global
 * index index[i]); "m/NAME" and "v/NAME" may come anywhere. Returns the cause of
 * a refusal, or NULL with t[0..n) filled. The caller checked there are 3 n blobs. */
static const char *s_load_tensors(pr_msg_t *m, ps_tensor_in_t *t, size_t n, char *buf, size_t cap)
{
    const Booth__Envelope *env = m->env;
    const int32_t *index = env->ps_load->index;
    size_t k = 0;
    for (size_t b = 0; b < env->n_blobs; b++) {
        const char *nm = s_str(env->blobs[b]->name);
        if (strncmp(nm, "p/", 2)) continue;
        if (k == n) return snprintf(buf, cap, "more p/ blobs than the %zu indices", n), buf;
        t[k].name = nm + 2;
        t[k].index = index[k];
        k++;
    }
    if (k != n) return snprintf(buf, cap, "%zu p/ blobs for %zu indices", k, n), buf;
    for (size_t i = 0; i < n; i++) {
        if (strlen(t[i].name) >= SD_OPTIM_NAME_MAX)
            return snprintf(buf, cap, "tensor name '%.80s...' is too long", t[i].name), buf;
        const float **dst[3] = {&t[i].p, &t[i].m, &t[i].v};
        static const char pre[3] = {'p', 'm', 'v'};
        for (int q = 0; q < 3; q++) {
            char bn[SD_OPTIM_NAME_MAX + 4];
            snprintf(bn, sizeof bn, "%c/%s", pre[q], t[i].name);
            int b = pr_blob_find(m, bn);
            if (b < 0) return snprintf(buf, cap, "blob '%.120s' is missing", bn), buf;
            const Booth__Blob *d = env->blobs[b];
            if (d->kind != BOOTH__BLOB__KIND__F32 || d->n_shape != 2)
                return snprintf(buf, cap, "blob '%.120s' is not a 2-D F32 tensor", bn), buf;
            if (q == 0) {
                t[i].shape[0] = d->shape[0];
                t[i].shape[1] = d->shape[1];
            } else if (d->shape[0] != t[i].shape[0] || d->shape[1] != t[i].shape[1]) {
                return snprintf(buf, cap,
                                "blob '%.120s' is [%" PRId64 ", %" PRId64 "], p/ is [%" PRId64 ", %" PRId64 "]", bn,
                                d->shape[0], d->shape[1], t[i].shape[0], t[i].shape[1]),
                       buf;
            }
            int64_t numel;
            if (!(*dst[q] = pr_blob_f32_at(m, b, &numel))) return "a blob cannot be read";
        }
    }
    return NULL;
}

static void s_on_ps_load(s_ps_t *ps, pr_msg_t *m)
{
    const Booth__PsLoad *l = m->env->ps_load;
    char why[640], buf[400];
    size_t n = l->n_index, nb = m->env->n_blobs;
    ps_tensor_in_t *t = NULL;
    const char *bad = NULL;
    if (n > nb / 3 || nb != 3 * n) /* before allocating for n: the frames bound it */
        bad =
            (snprintf(buf, sizeof buf, "%zu blobs for %zu indices: expected p/, m/ and v/ of each tensor", nb, n), buf);
    else if (!(t = bt_calloc(n ? n : 1, sizeof *t)))
        bad = "out of memory";
    else
        bad = s_load_tensors(m, t, n, buf, sizeof buf);
    if (bad) {
        snprintf(why, sizeof why, "ps_load of job %.80s refused: %s", s_str(l->job_id), bad);
        BT_WARN("%s: %s", m->peer, why);
        s_send_error(ps, NULL, why);
        free(t);
        return;
    }
    ps_load_t load = {.job_id = l->job_id,
                      .job_json = s_str(l->job_json),
                      .job_json_len = strlen(s_str(l->job_json)),
                      .step = l->step,
                      .microbatches = l->microbatches,
                      .t = t,
                      .n = (int)n};
    s_weights_forget(ps); /* the state is replaced: its frames must not outlive it */
    ps_verdict_t v = ps_store_load(ps->store, m->peer, &load, why, sizeof why);
    free(t);
    if (v != PS_DONE) {
        s_send_error(ps, NULL, why);
        return;
    }
    Booth__PsLoaded r = BOOTH__PS_LOADED__INIT;
    r.job_id = l->job_id;
    r.step = l->step;
    Booth__Envelope env = PR_ENVELOPE_INIT(PS_LOADED, ps_loaded, &r);
    s_to_coordinator(ps, &env, NULL, 0);
    s_answer_pulls(ps); /* a reload may have reached (or passed) a waiting version */
}

static void s_on_apply(s_ps_t *ps, pr_msg_t *m)
{
    const Booth__Apply *a = m->env->apply;
    char why[512];
    int64_t step = 0;
    float lr = 0;
    s_weights_forget(ps);
    ps_verdict_t v = ps_store_apply(ps->store, m->peer, a->job_id, a->step, a->grad_norm, &step, &lr, why, sizeof why);
    if (v == PS_REFUSED) {
        s_send_error(ps, NULL, why);
        return;
    }
    Booth__Applied r = BOOTH__APPLIED__INIT;
    r.job_id = a->job_id;
    r.step = step;
    r.lr = lr;
    Booth__Envelope env = PR_ENVELOPE_INIT(APPLIED, applied, &r);
    s_to_coordinator(ps, &env, NULL, 0);
    if (v == PS_DONE) s_answer_pulls(ps);
}

/* State{job, step, index} + blobs p/NAME, m/NAME, v/NAME per tensor. */
static void s_on_get_state(s_ps_t *ps, pr_msg_t *m)
{
    const char *id = s_str(m->env->get_state->job_id);
    const ps_job_t *j = ps_store_job(ps->store, id);
    char why[256];
    if (!j) {
        snprintf(why, sizeof why, "get_state of job %.80s refused: job not loaded here", id);
        BT_WARN("%s: %s", m->peer, why);
        s_send_error(ps, NULL, why);
        return;
    }
    const sd_optim_t *o = j->opt;
    size_t nb = 3 * (size_t)o->n;
    pr_blob_t *blobs = bt_calloc(nb ? nb : 1, sizeof *blobs);
    char(*names)[SD_OPTIM_NAME_MAX + 4] = bt_calloc(nb ? nb : 1, sizeof *names);
    if (!blobs || !names) {
        snprintf(why, sizeof why, "get_state of job %.80s: out of memory", id);
        BT_ERROR("%s: %s", m->peer, why);
        s_send_error(ps, NULL, why);
    } else {
        for (int i = 0; i < o->n; i++) {
            const sd_optim_tensor_t *t = &o->t[i];
            const float *src[3] = {t->p, t->m, t->v};
            static const char pre[3] = {'p', 'm', 'v'};
            for (int q = 0; q < 3; q++) {
                size_t b = 3 * (size_t)i + (size_t)q;
                snprintf(names[b], sizeof names[b], "%c/%s", pre[q], t->name);
                blobs[b] = pr_blob_of_f32(names[b], src[q], 2, t->shape);
            }
        }
        Booth__State r = BOOTH__STATE__INIT;
        r.job_id = (char *)j->id;
        r.step = o->step;
        r.n_index = (size_t)o->n;
        r.index = (int32_t *)j->index;
        Booth__Envelope env = PR_ENVELOPE_INIT(STATE, state, &r);
        s_to_coordinator(ps, &env, blobs, (int)nb);
    }
    free(blobs);
    free(names);
}

static void s_on_welcome(s_ps_t *ps, pr_msg_t *m)
{
    const Booth__Welcome *w = m->env->welcome;
    bool again = ps->welcomed;
    snprintf(ps->peer_id, sizeof ps->peer_id, "%s", s_str(w->peer_id));
    if (again) { /* the answer to a repeated Hello */
        BT_DEBUG("%s: welcome again (peer id %s)", m->peer, ps->peer_id);
        return;
    }
    ps->welcomed = true;
    ps->heartbeat_ms = w->heartbeat_ms > 0 ? w->heartbeat_ms : PS_HEARTBEAT_MS;
    ps->next_beat_ms = s_now_ms() + ps->heartbeat_ms;
    BT_INFO("ps: registered with the coordinator at %s as peer %s; workers reach this PS at %s", ps->o->coordinator,
            s_str(w->peer_id), ps->advertised);
}

static void s_on_coordinator(s_ps_t *ps, pr_msg_t *m)
{
    pr_msg_name_peer(m, "coordinator");
    switch (m->env->body_case) {
    case BOOTH__ENVELOPE__BODY_WELCOME: s_on_welcome(ps, m); break;
    case BOOTH__ENVELOPE__BODY_HEARTBEAT: break;
    case BOOTH__ENVELOPE__BODY_ERROR: {
        const Booth__Error *e = m->env->error;
        if (e->reregister) {
            /* the jobs held stay: the coordinator decides whether to load them again */
            if (ps->welcomed)
                BT_INFO("the coordinator at %s does not know this parameter server (it restarted, or declared it "
                        "dead): registering again",
                        ps->o->coordinator);
            else /* a Hello is out already; this answers something sent before it */
                BT_DEBUG("the coordinator at %s does not know this parameter server yet: hello again",
                         ps->o->coordinator);
            ps->welcomed = false;
            s_hello(ps);
            ps->next_hello_ms = s_now_ms() + PS_HELLO_RESEND_MS;
        } else if (e->fatal) {
            BT_ERROR("%s refused this parameter server: %s", m->peer, s_str(e->message));
            ps->status = BT_EINVAL;
        } else {
            BT_WARN("%s says: %s", m->peer, s_str(e->message));
        }
        break;
    }
    case BOOTH__ENVELOPE__BODY_PS_LOAD: s_on_ps_load(ps, m); break;
    case BOOTH__ENVELOPE__BODY_APPLY: s_on_apply(ps, m); break;
    case BOOTH__ENVELOPE__BODY_GET_STATE: s_on_get_state(ps, m); break;
    case BOOTH__ENVELOPE__BODY_RELEASE:
        s_weights_forget(ps);
        if (ps_store_release(ps->store, m->peer, s_str(m->env->release->job_id)) == PS_DONE) s_answer_pulls(ps);
        break;
    default:
        BT_WARN("%s: unexpected '%s' for a parameter server; dropped", m->peer, pr_body_name(m->env->body_case));
        break;
    }
}

/* ---- the workers' messages --------------------------------------------------------- */

static void s_on_pull(s_ps_t *ps, pr_msg_t *m)
{
    const Booth__Pull *p = m->env->pull;
    char why[512];
    ps_verdict_t v = ps_store_pull(ps->store, m->peer, s_str(p->job_id), p->version, zmq_msg_data(&m->routing_id),
                                   zmq_msg_size(&m->routing_id), why, sizeof why);
    if (v == PS_DONE)
        s_send_weights(ps, &m->routing_id, ps_store_job(ps->store, s_str(p->job_id)));
    else if (v == PS_REFUSED)
        s_send_error(ps, &m->routing_id, why);
}

static void s_on_push(s_ps_t *ps, pr_msg_t *m)
{
    const Booth__Push *p = m->env->push;
    const Booth__Envelope *env = m->env;
    size_t n = env->n_blobs;
    char why[512];
    bool ready = false;
    ps_verdict_t v = PS_REFUSED;
    ps_grad_in_t *g = bt_calloc(n ? n : 1, sizeof *g);
    const char *bad = g ? NULL : "out of memory";
    for (size_t b = 0; !bad && b < n; b++) {
        if (env->blobs[b]->kind != BOOTH__BLOB__KIND__F32) {
            snprintf(why, sizeof why, "push of job %.80s step %" PRId64 " micro %d refused: blob '%.80s' is not F32",
                     s_str(p->job_id), p->step, p->micro, s_str(env->blobs[b]->name));
            bad = why;
            break;
        }
        g[b].name = s_str(env->blobs[b]->name);
        if (!(g[b].data = pr_blob_f32_at(m, (int)b, &g[b].numel))) bad = "a blob cannot be read";
    }
    if (bad) {
        if (bad != why) snprintf(why, sizeof why, "push of job %.80s refused: %s", s_str(p->job_id), bad);
        BT_WARN("%s: %s", m->peer, why);
    } else {
        v = ps_store_push(ps->store, m->peer, s_str(p->job_id), p->step, p->micro, g, (int)n, &ready, why, sizeof why);
    }
    free(g);

    Booth__PushAck ack = BOOTH__PUSH_ACK__INIT;
    ack.job_id = p->job_id;
    ack.step = p->step;
    ack.micro = p->micro;
    ack.accepted = v == PS_DONE;
    Booth__Envelope aenv = PR_ENVELOPE_INIT(PUSH_ACK, push_ack, &ack);
    pr_send(ps->router, &m->routing_id, &aenv, NULL, 0);

    if (ready) {
        const ps_job_t *j = ps_store_job(ps->store, s_str(p->job_id));
        Booth__GradReady r = BOOTH__GRAD_READY__INIT;
        r.job_id = (char *)j->id;
        r.step = j->opt->step;
        r.n_index = (size_t)j->opt->n;
        r.index = (int32_t *)j->index;
        r.n_sum_squares = (size_t)j->opt->n;
        r.sum_squares = (double *)j->sum_squares;
        Booth__Envelope renv = PR_ENVELOPE_INIT(GRAD_READY, grad_ready, &r);
        s_to_coordinator(ps, &renv, NULL, 0);
    }
}

static void s_on_worker(s_ps_t *ps, pr_msg_t *m)
{
    switch (m->env->body_case) {
    case BOOTH__ENVELOPE__BODY_PULL: s_on_pull(ps, m); break;
    case BOOTH__ENVELOPE__BODY_PUSH: s_on_push(ps, m); break;
    default:
        /* the state is the coordinator's to change: a PsLoad or Apply here is refused too */
        BT_WARN("%s: unexpected '%s' on the workers' socket; dropped", m->peer, pr_body_name(m->env->body_case));
        break;
    }
}

/* ---- the loop ---------------------------------------------------------------------- */

int ps_advertise_endpoint(const char *bound, char *out, size_t cap)
{
    static const char *const wild[] = {"tcp://0.0.0.0:", "tcp://*:", "tcp://[::]:", "tcp://[*]:"};
    for (size_t i = 0; i < sizeof wild / sizeof wild[0]; i++) {
        size_t k = strlen(wild[i]);
        if (!strncmp(bound, wild[i], k)) {
            int w = snprintf(out, cap, "tcp://127.0.0.1:%s", bound + k);
            return w < 0 || (size_t)w >= cap ? BT_EINVAL : BT_OK;
        }
    }
    int w = snprintf(out, cap, "%s", bound);
    return w < 0 || (size_t)w >= cap ? BT_EINVAL : BT_OK;
}

/* Takes up to S_DRAIN messages off sock and hands each to fn. */
static void s_drain(s_ps_t *ps, void *sock, bool router, void (*fn)(s_ps_t *, pr_msg_t *))
{
    for (int k = 0; k < S_DRAIN && ps->status == BT_OK; k++) {
        pr_msg_t m;
        int r = pr_recv_nowait(sock, router, ps->node.max_bytes, &m);
        if (r == BT_OK) fn(ps, &m);
        pr_msg_free(&m);
        if (r == BT_EAGAIN) break;
        if (r == BT_EIO) ps->status = BT_EIO; /* logged by pr_recv */
    }
}

static int s_setup(s_ps_t *ps)
{
    const ps_opts_t *o = ps->o;
    pr_node_opts_t no = o->node;
    if (no.io_threads <= 0) no.io_threads = 2; /* pushes and pulls of many workers: more than one mover */
    if (pr_node_init(&ps->node, &no, "ps", true, true)) return BT_EINVAL;
    const char *bind = o->bind ? o->bind : PS_DEFAULT_BIND;
    if (!(ps->router = pr_node_bind(&ps->node, bind))) return BT_EIO;
    if (pr_last_endpoint(ps->router, ps->bound, sizeof ps->bound)) snprintf(ps->bound, sizeof ps->bound, "%s", bind);
    if (o->advertise) {
        snprintf(ps->advertised, sizeof ps->advertised, "%s", o->advertise);
    } else if (ps_advertise_endpoint(ps->bound, ps->advertised, sizeof ps->advertised)) {
        BT_ERROR("ps: endpoint %s is too long to advertise", ps->bound);
        return BT_EINVAL;
    }
    if (!(ps->dealer = pr_node_connect(&ps->node, o->coordinator, NULL))) return BT_EIO;
    if (!(ps->ctx = nn_ctx_new(NN_BACKEND_CPU, o->threads))) return BT_EINTERNAL;
    if (!(ps->store = ps_store_new(ps->ctx))) return BT_ENOMEM;
    pr_node_name(ps->name, sizeof ps->name);
    BT_INFO("ps %s: listening on %s, advertised to workers as %s%s; coordinator %s; %d thread%s", ps->name, ps->bound,
            ps->advertised,
            !o->advertise && strcmp(ps->bound, ps->advertised) ? " (workers on other hosts need --advertise)" : "",
            o->coordinator, ps->ctx->threads, ps->ctx->threads == 1 ? "" : "s");
    return BT_OK;
}

int ps_run(const ps_opts_t *o)
{
    s_ps_t ps;
    memset(&ps, 0, sizeof ps);
    ps.o = o;
    pr_node_catch_signals();
    ps.status = s_setup(&ps);
    if (ps.status == BT_OK) {
        s_hello(&ps);
        ps.next_hello_ms = s_now_ms() + PS_HELLO_RESEND_MS;
    }
    while (ps.status == BT_OK && !pr_node_stopping()) {
        int64_t now = s_now_ms(), due = ps.welcomed ? ps.next_beat_ms : ps.next_hello_ms;
        zmq_pollitem_t items[3] = {{ps.dealer, 0, ZMQ_POLLIN, 0},
                                   {ps.router, 0, ZMQ_POLLIN, 0},
                                   {pr_node_zap_socket(&ps.node), 0, ZMQ_POLLIN, 0}};
        int nitems = items[2].socket ? 3 : 2;
        long wait = due > now ? (long)(due - now) : 0;
        if (zmq_poll(items, nitems, wait) < 0) {
            if (zmq_errno() == EINTR) continue; /* a signal: the loop's test decides */
            BT_ERROR("ps: poll failed: %s", zmq_strerror(zmq_errno()));
            ps.status = BT_EIO;
            break;
        }
        if (nitems == 3 && (items[2].revents & ZMQ_POLLIN)) pr_node_zap_serve(&ps.node);
        if (items[0].revents & ZMQ_POLLIN) s_drain(&ps, ps.dealer, false, s_on_coordinator);
        if (items[1].revents & ZMQ_POLLIN) s_drain(&ps, ps.router, true, s_on_worker);
        now = s_now_ms();
        if (!ps.welcomed && now >= ps.next_hello_ms) {
            s_hello(&ps);
            ps.next_hello_ms = now + PS_HELLO_RESEND_MS;
        } else if (ps.welcomed && now >= ps.next_beat_ms) {
            s_heartbeat(&ps);
            ps.next_beat_ms = now + ps.heartbeat_ms;
        }
    }
    if (ps.status == BT_OK) BT_INFO("ps: stopping");
    if (ps.welcomed && pr_node_stopping()) { /* the coordinator reloads the others now, not after a timeout */
        Booth__Goodbye g = BOOTH__GOODBYE__INIT;
        g.reason = "stopped (SIGTERM)";
        Booth__Envelope env = PR_ENVELOPE_INIT(GOODBYE, goodbye, &g);
        s_to_coordinator(&ps, &env, NULL, 0);
    }
    s_weights_forget(&ps);
    ps_store_destroy(&ps.store);
    nn_ctx_destroy(&ps.ctx);
    if (ps.dealer) zmq_close(ps.dealer);
    if (ps.router) zmq_close(ps.router);
    pr_node_free(&ps.node);
    return ps.status;
}
