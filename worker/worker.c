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
 *
 * Tasks run in the loop's thread, one at a time; a task that needs another
 * peer's answer (JobData, Weights, PushAck) waits in wk_wait, which keeps the
 * heartbeats going and keeps the coordinator's other messages for the loop, in
 * order. SIGINT/SIGTERM end the loop between messages (and any such wait).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/fileio.h"
#include "common/log.h"
#include "common/progress.h"
#include "common/status.h"
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
    h.model_dir = (char *)w->origin.model_dir;
    Booth__Envelope env = PR_ENVELOPE_INIT(HELLO, hello, &h);
    w->last_hello = bt_now();
    BT_DEBUG("hello to %s (%s)", w->o->coordinator, w->connected ? "connected" : "queued until connected");
    if (wk_send_coord(w, &env, NULL, 0) == BT_OK) w->hello_queued = !w->connected;
}

static void s_heartbeat(wk_t *w)
{
    Booth__Heartbeat hb = BOOTH__HEARTBEAT__INIT;
    hb.state = w->state;
    Booth__Envelope env = PR_ENVELOPE_INIT(HEARTBEAT, heartbeat, &hb);
    w->last_heartbeat = bt_now();
    wk_send_coord(w, &env, NULL, 0);
}

/* Hello and heartbeat when due. */
static void s_timers(wk_t *w)
{
    double now = bt_now();
    if (!w->registered && (w->connected || !w->events_seen) && now - w->last_hello >= WK_HELLO_RESEND_S) s_hello(w);
    if (w->registered && now - w->last_heartbeat >= w->heartbeat_s) s_heartbeat(w);
}

void wk_tick(wk_t *w)
{
    if (w->registered && bt_now() - w->last_heartbeat >= w->heartbeat_s) s_heartbeat(w);
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
        w->registered = false;
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
        w->registered = false;
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
    for (;;) {
        zmq_msg_t f;
        zmq_msg_init(&f);
        if (zmq_msg_recv(&f, w->mon, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&f);
            return;
        }
        uint16_t ev = 0;
        if (zmq_msg_size(&f) >= sizeof ev) memcpy(&ev, zmq_msg_data(&f), sizeof ev);
        while (zmq_msg_more(&f)) { /* the endpoint frame */
            zmq_msg_close(&f);
            zmq_msg_init(&f);
            if (zmq_msg_recv(&f, w->mon, 0) < 0) break;
        }
        zmq_msg_close(&f);
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
    if (!(*owned = malloc((size_t)n * sizeof(float)))) {
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
                int r = i < n ? fn(w, i, &m, arg) : WK_WAIT_SKIP;
                if (r == WK_WAIT_SKIP && items[i].socket == w->coord) {
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
    case BOOTH__ENVELOPE__BODY_WELCOME:
        if (w->registered) break; /* the answer to a repeated Hello */
        w->registered = true;
        if (e->welcome->heartbeat_ms > 0) w->heartbeat_s = e->welcome->heartbeat_ms / 1000.0;
        BT_INFO("worker %s registered with %s", w->name, w->o->coordinator);
        s_heartbeat(w);
        break;
    case BOOTH__ENVELOPE__BODY_ERROR:
        if (e->error->fatal) {
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
    snprintf(w->state, sizeof w->state, "idle");
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

int wk_run(const wk_opts_t *o)
{
    pr_node_catch_signals();
    bt_log_set_timestamps(true);
    int status = 1;
    wk_t *w = calloc(1, sizeof *w);
    if (!w) {
        BT_ERROR("worker: out of memory");
        goto out;
    }
    w->o = o;
    w->version = -1;
    w->heartbeat_s = WK_HEARTBEAT_S;
    snprintf(w->state, sizeof w->state, "idle");
    if (o->name && *o->name)
        snprintf(w->name, sizeof w->name, "%s", o->name);
    else
        pr_node_name(w->name, sizeof w->name);
    if (!pr_endpoint_ok(o->coordinator, false)) goto out_free;
    /* keys before the model: a missing key file should not wait for a model to load */
    if (pr_node_init(&w->node, &o->node, "worker", false, true)) goto out_free;
    if (o->node.insecure)
        BT_WARN("INSECURE: plain TCP without CURVE keys: whoever can reach %s or the PS can read and alter this "
                "worker's data and pose as them",
                o->coordinator);
    if (!(w->ctx = nn_ctx_new(NN_BACKEND_CPU, o->threads))) goto out_node;
    if (!(w->model = sd_model_load_as(w->ctx, o->model_dir, SD_PART_ALL, o->store))) goto out_ctx;
    if (sd_prior_origin_of(w->model, &w->origin)) goto out_model;
    w->weights = sd_model_weights(w->model);
    if (s_work_dir(w)) goto out_model;
    BT_INFO("worker %s: model %s (%s, %s weights), %d threads, files in %s", w->name, o->model_dir,
            w->origin.model_hash, w->weights, w->ctx->threads, w->work_dir);
    if (s_coord_open(w) == BT_OK && s_loop(w) == BT_OK) status = w->fatal ? 1 : 0;

    for (int i = 0; i < w->ndeferred; i++)
        pr_msg_free(&w->deferred[i]);
    w->ndeferred = 0;
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
out_free:
    free(w);
out:
    return status;
}
