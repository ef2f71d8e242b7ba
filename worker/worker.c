/*
 * worker.c — the worker's event loop (docs/CLUSTER.md, "Registration").
 *
 * One DEALER to the coordinator, polled with zmq_poll. A Hello registers the
 * worker; it is sent once per connection: the coordinator's ROUTER gives every
 * new connection a new routing id, so after a reconnect (a restarted
 * coordinator, a network cut) the worker is a stranger there until it says
 * Hello again. A socket monitor reports the connections. A DEALER queues what
 * it sends while it is not connected and delivers it on connection, so a Hello
 * sent before the coordinator is up is not repeated (that would only pile up
 * Hellos in the queue); it is repeated when a live connection brings no Welcome
 * within WK_HELLO_RESEND_S (the coordinator dropped it), and on a timer until
 * the monitor has said anything (its first event can pass before it listens).
 * A connection that never drops can still reach a coordinator that does not
 * know the worker (ZeroMQ reconnected to a restarted one before the monitor
 * told, or it declared the worker dead while it was stopped): it answers with
 * Error{reregister}, and the worker says Hello again at once.
 *
 * Heartbeats come from a thread of their own (heartbeat.c), started by each
 * Welcome and stopped when the registration ends, so that a task computing for
 * longer than the coordinator's heartbeat timeout does not make the worker
 * look dead; the loop's thread sends none itself.
 *
 * Tasks run in the loop's thread, one at a time; a task that needs another
 * peer's answer (JobData, Weights, PushAck) waits in wk_wait, which answers
 * registration messages at once and keeps the coordinator's other messages for
 * the loop, in order. SIGINT/SIGTERM end the loop between messages (and any
 * such wait).
 *
 * Test hook: BOOTH_TEST_TASK_DELAY_MS=N makes the worker wait N ms before it answers each PRIORS and
 * MICROBATCH task (after computing, and after the pushes were acknowledged), so that a fault test can
 * stop or kill it mid-job at a point it picks by watching `booth status`; heartbeats go on meanwhile.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/fileio.h"
#include "common/log.h"
#include "common/progress.h"
#include "common/status.h"
#include "diffusion/single_file.h"
#include "nn/nn.h"
#include "worker/wk.h"

#define S_MONITOR_ENDPOINT "inproc://booth-worker-monitor"
#define S_POLL_MS 200 /* the loop's timers (hello, heartbeat) are checked this often */

const char *wk_task_error(const char *what, int rc, char *buf, size_t cap)
{
    /* every failure is logged where it is detected: the last error line is the task's */
    const char *last = bt_log_last_error();
    if (last[0])
        snprintf(buf, cap, "%s", last);
    else
        snprintf(buf, cap, "%s: %s", what, bt_status_str(rc));
    return buf;
}

/* ---- the coordinator ---------------------------------------------------------- */

int wk_send_coord(wk_t *w, Booth__Envelope *env, const pr_blob_t *blobs, int n)
{
    return pr_send(w->coord, NULL, env, blobs, n);
}

static void s_hello(wk_t *w)
{
    Booth__Hello h = BOOTH__HELLO__INIT;
    h.role = BOOTH__ROLE__ROLE_WORKER;
    h.name = w->name;
    h.model_hash = w->origin.model_hash;
    h.model_weights = (char *)w->weights;
    h.threads = w->ctx->threads;
    h.vae_hash = w->origin.vae_hash;
    h.sampler = (char *)w->origin.sampler;
    h.latent_channels = (int32_t)w->origin.latent_channels;
    h.latent_scale = (int32_t)w->origin.latent_scale;
    h.model_dir = (char *)w->origin.model_dir;
    Booth__Envelope env = PR_ENVELOPE_INIT(HELLO, hello, &h);
    w->last_hello = bt_now();
    BT_DEBUG("hello to %s (%s)", w->o->coordinator, w->connected ? "connected" : "queued until connected");
    if (wk_send_coord(w, &env, NULL, 0) == BT_OK) w->hello_queued = !w->connected;
}

/* The registration ended: no heartbeats until the next Welcome. */
static void s_unregister(wk_t *w)
{
    w->registered = false;
    wk_beat_stop(&w->beat);
}

/* The coordinator answered with Error{reregister}: it does not know this worker. */
static void s_reregister(wk_t *w)
{
    if (w->registered)
        BT_INFO("the coordinator at %s does not know this worker (it restarted, or declared it dead): registering "
                "again",
                w->o->coordinator);
    else /* a Hello is out already; this answers something sent before it */
        BT_DEBUG("the coordinator at %s does not know this worker yet: hello again", w->o->coordinator);
    s_unregister(w);
    s_hello(w);
}

static void s_welcome(wk_t *w, const Booth__Welcome *wel)
{
    const char *id = wel->peer_id ? wel->peer_id : "";
    if (wel->heartbeat_ms > 0) w->heartbeat_s = wel->heartbeat_ms / 1000.0;
    if (w->registered && !strcmp(id, w->peer_id)) return; /* the answer to a repeated Hello */
    snprintf(w->peer_id, sizeof w->peer_id, "%s", id);
    if (!w->registered) BT_INFO("worker %s registered with %s as peer %s", w->name, w->o->coordinator, id);
    w->registered = true;
    wk_beat_start(w, w->peer_id, w->heartbeat_s); /* a failure is logged; the worker goes on without */
}

/* Acts on a registration message from the coordinator: a Welcome, an Error{reregister}.
 * Returns whether m was one. */
static bool s_registration(wk_t *w, const pr_msg_t *m)
{
    const Booth__Envelope *e = m->env;
    if (e->body_case == BOOTH__ENVELOPE__BODY_WELCOME) {
        s_welcome(w, e->welcome);
        return true;
    }
    if (e->body_case == BOOTH__ENVELOPE__BODY_ERROR && e->error->reregister) {
        s_reregister(w);
        return true;
    }
    return false;
}

/* Hello when due, and what the heartbeat thread heard. */
static void s_timers(wk_t *w)
{
    wk_tick(w);
    if (!w->registered && (w->connected || !w->events_seen) && bt_now() - w->last_hello >= WK_HELLO_RESEND_S)
        s_hello(w);
}

void wk_tick(wk_t *w)
{
    if (wk_beat_take_reregister(&w->beat)) s_reregister(w);
}

/* One event of the coordinator socket's monitor: [u16 event, u32 value] [endpoint]. */
static void s_monitor_event(wk_t *w, uint16_t ev)
{
    static uint16_t s_warned; /* the handshake failure last reported, until one succeeds */
    w->events_seen = true;
    BT_DEBUG("%s: connection event 0x%x", w->o->coordinator, (unsigned)ev);
    switch (ev) {
    case ZMQ_EVENT_HANDSHAKE_SUCCEEDED: {
        bool carried = w->hello_queued; /* this connection delivered the Hello queued before it */
        w->connected = true;
        s_unregister(w);
        w->hello_queued = false;
        s_warned = 0;
        if (carried)
            w->last_hello = bt_now(); /* it goes out now: the resend timer starts here */
        else
            s_hello(w);
        break;
    }
    case ZMQ_EVENT_DISCONNECTED:
        if (w->registered && !pr_node_stopping())
            BT_WARN("lost the coordinator at %s; registering again when it is back", w->o->coordinator);
        w->connected = false;
        s_unregister(w);
        break;
    case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH:
        if (s_warned != ev)
            BT_ERROR("the coordinator at %s refused this worker's key: add its public key to the coordinator's "
                     "authorized_keys",
                     w->o->coordinator);
        s_warned = ev;
        w->connected = false;
        break;
    case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL:
    case ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        if (s_warned != ev)
            BT_WARN("handshake with the coordinator at %s failed (another --coordinator-key, --insecure on one side "
                    "only, or not a booth coordinator); retrying",
                    w->o->coordinator);
        s_warned = ev;
        w->connected = false;
        break;
    default:                  /* ZMQ_EVENT_CONNECT_RETRIED */
        w->connected = false; /* nobody listens there yet */
        break;
    }
}

static void s_monitor_drain(wk_t *w)
{
    uint16_t ev;
    while (pr_monitor_next(w->mon, &ev)) {
        s_monitor_event(w, ev);
    }
}

static int s_coord_open(wk_t *w)
{
    if (!(w->coord = pr_node_connect(&w->node, w->o->coordinator, NULL))) return BT_EIO;
    int events = ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_CONNECT_RETRIED |
                 ZMQ_EVENT_HANDSHAKE_FAILED_AUTH | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                 ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL;
    if (zmq_socket_monitor(w->coord, S_MONITOR_ENDPOINT, events) != 0 ||
        !(w->mon = zmq_socket(w->node.ctx, ZMQ_PAIR)) || zmq_setsockopt(w->mon, ZMQ_LINGER, &(int){0}, sizeof(int)) ||
        zmq_connect(w->mon, S_MONITOR_ENDPOINT) != 0) {
        BT_ERROR("%s: cannot monitor the connection: %s", w->o->coordinator, zmq_strerror(zmq_errno()));
        return BT_EINTERNAL;
    }
    s_hello(w);
    return BT_OK;
}

static void s_coord_close(wk_t *w)
{
    if (w->coord) zmq_socket_monitor(w->coord, NULL, 0);
    if (w->mon) zmq_close(w->mon);
    if (w->coord) zmq_close(w->coord);
    w->mon = w->coord = NULL;
}

const float *wk_host_f32(wk_t *w, const float *p, int64_t n, float **owned)
{
    *owned = NULL;
    if (w->ctx->kind == NN_BACKEND_CPU) return p;
    if (!(*owned = bt_malloc((size_t)n * sizeof(float)))) {
        BT_ERROR("worker: out of memory for %lld floats", (long long)n);
        return NULL;
    }
    if (nn_download(w->ctx, *owned, p, (size_t)n * sizeof(float))) {
        free(*owned);
        *owned = NULL;
        return NULL;
    }
    return *owned;
}

/* ---- waiting for a peer inside a task ------------------------------------------ */

/* Keeps a coordinator message for the loop. pr_msg_t of a DEALER (no routing id)
 * may be moved by copying the struct: its frames live in a heap array. */
static void s_defer(wk_t *w, pr_msg_t *m)
{
    if (w->ndeferred == WK_DEFERRED_MAX) {
        BT_WARN("%s: %d messages are waiting already; dropped %s", m->peer, WK_DEFERRED_MAX,
                pr_body_name(m->env->body_case));
        pr_msg_free(m);
        return;
    }
    w->deferred[w->ndeferred++] = *m;
    memset(m, 0, sizeof *m);
}

int wk_wait(wk_t *w, void **socks, int n, double timeout_s, wk_on_msg_fn fn, void *arg)
{
    zmq_pollitem_t items[n + 2];
    int coord_i = -1;
    for (int i = 0; i < n; i++) {
        items[i] = (zmq_pollitem_t){.socket = socks[i], .events = ZMQ_POLLIN};
        if (socks[i] == w->coord) coord_i = i;
    }
    int ni = n;
    if (coord_i < 0) items[ni++] = (zmq_pollitem_t){.socket = w->coord, .events = ZMQ_POLLIN};
    items[ni++] = (zmq_pollitem_t){.socket = w->mon, .events = ZMQ_POLLIN};
    double deadline = bt_now() + timeout_s;
    for (;;) {
        if (pr_node_stopping()) return BT_EIO;
        wk_tick(w);
        double left = deadline - bt_now();
        if (left <= 0) return BT_EAGAIN;
        long ms = left * 1000 < S_POLL_MS ? (long)(left * 1000) + 1 : S_POLL_MS;
        if (zmq_poll(items, ni, ms) < 0) {
            if (zmq_errno() == EINTR) continue;
            BT_ERROR("worker: zmq_poll: %s", zmq_strerror(zmq_errno()));
            return BT_EIO;
        }
        if (items[ni - 1].revents & ZMQ_POLLIN) s_monitor_drain(w);
        for (int i = 0; i < ni - 1; i++) {
            if (!(items[i].revents & ZMQ_POLLIN)) continue;
            for (;;) {
                pr_msg_t m;
                int rc = pr_recv_nowait(items[i].socket, false, w->node.max_bytes, &m);
                if (rc == BT_EAGAIN) break;
                if (rc == BT_EPROTO || rc == BT_ENOMEM) continue; /* dropped, logged */
                if (rc) return BT_EIO;
                bool coord = items[i].socket == w->coord;
                if (coord && s_registration(w, &m) && (i >= n || m.env->body_case == BOOTH__ENVELOPE__BODY_WELCOME)) {
                    pr_msg_free(&m); /* done with; an Error also goes to a caller awaiting the coordinator */
                    continue;
                }
                int r = i < n ? fn(w, i, &m, arg) : WK_WAIT_SKIP;
                if (r == WK_WAIT_SKIP && coord) {
                    s_defer(w, &m);
                    continue;
                }
                if (r == WK_WAIT_SKIP) BT_DEBUG("%s: ignored a late %s", m.peer, pr_body_name(m.env->body_case));
                pr_msg_free(&m);
                if (r == WK_WAIT_DONE) return BT_OK;
                if (r < 0) return r;
            }
        }
    }
}

/* ---- the loop ----------------------------------------------------------------- */

static void s_handle(wk_t *w, pr_msg_t *m)
{
    Booth__Envelope *e = m->env;
    switch (e->body_case) {
    case BOOTH__ENVELOPE__BODY_WELCOME: s_welcome(w, e->welcome); break;
    case BOOTH__ENVELOPE__BODY_ERROR:
        if (e->error->reregister) {
            s_reregister(w);
        } else if (e->error->fatal) {
            BT_ERROR("coordinator %s: %s", w->o->coordinator, e->error->message);
            w->fatal = true;
        } else {
            BT_WARN("coordinator %s: %s", w->o->coordinator, e->error->message);
        }
        break;
    case BOOTH__ENVELOPE__BODY_TASK: wk_task_run(w, e->task); break;
    case BOOTH__ENVELOPE__BODY_RELEASE:
        if (w->trainer && (!e->release->job_id[0] || !strcmp(e->release->job_id, w->job_id))) {
            BT_INFO("released job %s", w->job_id);
            wk_job_release(w);
        }
        break;
    case BOOTH__ENVELOPE__BODY_JOB_DATA: /* the answer to a GetJob that timed out */
        BT_DEBUG("%s: ignored a late job_data", m->peer);
        break;
    default: BT_WARN("%s: a worker does not take %s; ignored", m->peer, pr_body_name(e->body_case)); break;
    }
    wk_set_state(w, "idle");
}

static int s_loop(wk_t *w)
{
    zmq_pollitem_t items[2] = {{.socket = w->coord, .events = ZMQ_POLLIN}, {.socket = w->mon, .events = ZMQ_POLLIN}};
    while (!pr_node_stopping() && !w->fatal) {
        if (w->ndeferred) { /* what came while a task waited came before what is queued now */
            pr_msg_t m = w->deferred[0];
            memmove(w->deferred, w->deferred + 1, (size_t)--w->ndeferred * sizeof *w->deferred);
            s_handle(w, &m);
            pr_msg_free(&m);
            continue;
        }
        s_timers(w);
        if (zmq_poll(items, 2, S_POLL_MS) < 0) {
            if (zmq_errno() == EINTR) continue;
            BT_ERROR("worker: zmq_poll: %s", zmq_strerror(zmq_errno()));
            return BT_EIO;
        }
        if (items[1].revents & ZMQ_POLLIN) s_monitor_drain(w);
        if (items[0].revents & ZMQ_POLLIN) {
            pr_msg_t m;
            int rc = pr_recv_nowait(w->coord, false, w->node.max_bytes, &m);
            if (rc == BT_OK) s_handle(w, &m);
            pr_msg_free(&m);
            if (rc == BT_EIO) return rc;
        }
    }
    return BT_OK;
}

static int s_work_dir(wk_t *w)
{
    if (w->o->work_dir) {
        snprintf(w->work_dir, sizeof w->work_dir, "%s", w->o->work_dir);
    } else {
        const char *tmp = getenv("TMPDIR");
        snprintf(w->work_dir, sizeof w->work_dir, "%s/booth-worker-%d", tmp && *tmp ? tmp : "/tmp", (int)getpid());
        w->own_work_dir = true;
    }
    return bt_mkdirs(w->work_dir);
}

/* BOOTH_TEST_TASK_DELAY_MS (the test hook at the top). 0, or BT_EINVAL with one line. */
static int s_test_hook(wk_t *w)
{
    const char *v = getenv("BOOTH_TEST_TASK_DELAY_MS");
    if (!v || !*v) return BT_OK;
    char *end;
    errno = 0;
    long ms = strtol(v, &end, 10);
    if (errno || *end || ms < 0 || ms > 3600 * 1000) {
        BT_ERROR("BOOTH_TEST_TASK_DELAY_MS=%.40s: expected milliseconds, 0 to 3600000", v);
        return BT_EINVAL;
    }
    w->test_delay_ms = (int)ms;
    if (ms) BT_INFO("test hook BOOTH_TEST_TASK_DELAY_MS: prior and micro-batch tasks are answered %ld ms late", ms);
    return BT_OK;
}

int wk_run(const wk_opts_t *o)
{
    pr_node_catch_signals();
    bt_log_set_timestamps(true);
    int status = 1;
    wk_t *w = bt_calloc(1, sizeof *w);
    if (!w) {
        BT_ERROR("worker: out of memory");
        goto out;
    }
    w->o = o;
    w->version = -1;
    w->heartbeat_s = WK_HEARTBEAT_S;
    if (wk_beat_init(&w->beat)) goto out_free;
    if (o->name && *o->name)
        snprintf(w->name, sizeof w->name, "%s", o->name);
    else
        pr_node_name(w->name, sizeof w->name);
    if (!pr_endpoint_ok(o->coordinator, false) || s_test_hook(w)) goto out_beat;
    /* keys before the model: a missing key file should not wait for a model to load */
    if (pr_node_init(&w->node, &o->node, "worker", false, true)) goto out_beat;
    if (o->node.insecure)
        BT_WARN("INSECURE: plain TCP without CURVE keys: whoever can reach %s or the PS can read and alter this "
                "worker's data and pose as them",
                o->coordinator);
    if (!(w->ctx = nn_ctx_new(NN_BACKEND_CPU, o->threads))) goto out_node;
    sd_single_file_opts_t sfo = {.prediction = o->prediction};
    if (!(w->model = o->prediction >= 0 && sd_single_file_is(o->model_dir)
                         ? sd_model_load_file(w->ctx, o->model_dir, SD_PART_ALL, o->store, &sfo)
                         : sd_model_load_as(w->ctx, o->model_dir, SD_PART_ALL, o->store)))
        goto out_ctx;
    if (sd_prior_origin_of(w->model, &w->origin)) goto out_model;
    w->weights = sd_model_weights(w->model);
    if (s_work_dir(w)) goto out_model;
    BT_INFO("worker %s: model %s (%s, %s weights), %d threads, files in %s", w->name, o->model_dir,
            w->origin.model_hash, w->weights, w->ctx->threads, w->work_dir);
    if (s_coord_open(w) == BT_OK && s_loop(w) == BT_OK) status = w->fatal ? 1 : 0;
    if (w->registered && pr_node_stopping()) { /* hand back what it was doing now, not after a timeout */
        Booth__Goodbye g = BOOTH__GOODBYE__INIT;
        g.reason = "stopped (SIGTERM)";
        Booth__Envelope env = PR_ENVELOPE_INIT(GOODBYE, goodbye, &g);
        wk_send_coord(w, &env, NULL, 0);
    }

    for (int i = 0; i < w->ndeferred; i++)
        pr_msg_free(&w->deferred[i]);
    w->ndeferred = 0;
    wk_beat_stop(&w->beat); /* its socket is closed before the context is */
    s_coord_close(w);
    wk_ps_close(w);
    wk_job_release(w);
    if (w->own_work_dir) wk_remove_tree(w->work_dir);
out_model:
    sd_model_destroy(&w->model);
out_ctx:
    nn_ctx_destroy(&w->ctx);
out_node:
    pr_node_free(&w->node);
out_beat:
    wk_beat_free(&w->beat);
out_free:
    free(w);
out:
    return status;
}
