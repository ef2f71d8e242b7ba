/*
 * heartbeat.c — the worker's heartbeat thread (wk.h, wk_beat_t).
 *
 * The loop's thread computes a micro-batch without reading a socket, for tens
 * of seconds with a real model on a CPU: longer than a sane heartbeat timeout.
 * So the heartbeats come from a thread of their own, over a DEALER of their
 * own (ZeroMQ contexts are thread-safe, sockets are not: this socket is made,
 * used and closed by the thread alone). Each heartbeat names the peer id the
 * Welcome gave, so the coordinator can tell whose it is although it comes over
 * another connection than the worker's Hello.
 *
 * The thread talks to the loop's thread only through wk_beat_t, under its
 * mutex: the loop publishes the state and peer id, and reads one flag back
 * (the coordinator answered a heartbeat with Error{reregister}); the loop then
 * stops the thread and says Hello again (worker.c). The thread blocks SIGINT
 * and SIGTERM, so they interrupt the loop's zmq_poll, not its own.
 */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/log.h"
#include "common/progress.h"
#include "common/status.h"
#include "worker/wk.h"

#define S_POLL_MS 100         /* how soon the thread sees `stop`: wk_beat_stop waits about this long */
#define S_SEND_TIMEOUT_MS 500 /* the longest a heartbeat may block (ZMQ_SNDTIMEO) */

int wk_beat_init(wk_beat_t *b)
{
    memset(b, 0, sizeof *b);
    snprintf(b->state, sizeof b->state, "idle");
    b->interval_s = WK_HEARTBEAT_S;
    int e = pthread_mutex_init(&b->mu, NULL);
    if (e) {
        BT_ERROR("worker: cannot make the heartbeat mutex: %s", strerror(e));
        return BT_EINTERNAL;
    }
    return BT_OK;
}

void wk_beat_free(wk_beat_t *b)
{
    wk_beat_stop(b);
    pthread_mutex_destroy(&b->mu);
}

void wk_set_state(wk_t *w, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    pthread_mutex_lock(&w->beat.mu);
    vsnprintf(w->beat.state, sizeof w->beat.state, fmt, ap);
    pthread_mutex_unlock(&w->beat.mu);
    va_end(ap);
}

bool wk_beat_take_reregister(wk_beat_t *b)
{
    pthread_mutex_lock(&b->mu);
    bool r = b->reregister;
    b->reregister = false;
    pthread_mutex_unlock(&b->mu);
    return r;
}

/* What came back on the thread's socket: only an Error means anything here. Returns
 * true for Error{reregister}. */
static bool s_on_reply(wk_t *w, pr_msg_t *m)
{
    const Booth__Envelope *e = m->env;
    if (e->body_case != BOOTH__ENVELOPE__BODY_ERROR) {
        BT_DEBUG("%s: a '%s' on the heartbeat connection; ignored", m->peer, pr_body_name(e->body_case));
        return false;
    }
    if (e->error->reregister) return true; /* the loop's thread says so in its one line */
    BT_WARN("coordinator %s (heartbeat): %s", w->o->coordinator, e->error->message ? e->error->message : "");
    return false;
}

static void *s_main(void *arg)
{
    wk_t *w = arg;
    wk_beat_t *b = &w->beat;
    void *sock = pr_node_connect(&w->node, w->o->coordinator, NULL); /* the error said there */
    /* a queue filled while the coordinator is away must not hold a stop up for PR_SEND_TIMEOUT_MS */
    if (sock) zmq_setsockopt(sock, ZMQ_SNDTIMEO, &(int){S_SEND_TIMEOUT_MS}, sizeof(int));
    char state[WK_STATE_MAX], peer_id[WK_PEER_ID_MAX];
    double next = 0;    /* the first heartbeat at once: the coordinator learns this connection */
    bool quiet = false; /* told to register again: nothing to say until the loop restarts us */
    for (;;) {
        pthread_mutex_lock(&b->mu);
        bool stop = b->stop;
        double interval = b->interval_s;
        memcpy(state, b->state, sizeof state);
        memcpy(peer_id, b->peer_id, sizeof peer_id);
        pthread_mutex_unlock(&b->mu);
        if (stop || !sock) break;
        double now = bt_now();
        if (!quiet && now >= next) {
            Booth__Heartbeat hb = BOOTH__HEARTBEAT__INIT;
            hb.state = state;
            hb.peer_id = peer_id;
            Booth__Envelope env = PR_ENVELOPE_INIT(HEARTBEAT, heartbeat, &hb);
            pr_send(sock, NULL, &env, NULL, 0); /* a failure is logged; the next one may pass */
            next = now + interval;
        }
        long ms = quiet ? S_POLL_MS : (long)((next - bt_now()) * 1000) + 1;
        if (ms > S_POLL_MS) ms = S_POLL_MS;
        if (ms < 1) ms = 1;
        zmq_pollitem_t item = {.socket = sock, .events = ZMQ_POLLIN};
        if (zmq_poll(&item, 1, ms) < 0) {
            if (zmq_errno() == EINTR) continue;
            BT_ERROR("worker: heartbeat thread: zmq_poll: %s", zmq_strerror(zmq_errno()));
            break;
        }
        if (!(item.revents & ZMQ_POLLIN)) continue;
        for (;;) {
            pr_msg_t m;
            int rc = pr_recv_nowait(sock, false, w->node.max_bytes, &m);
            if (rc == BT_OK && s_on_reply(w, &m) && !quiet) {
                quiet = true;
                pthread_mutex_lock(&b->mu);
                b->reregister = true;
                pthread_mutex_unlock(&b->mu);
            }
            pr_msg_free(&m);
            if (rc == BT_EAGAIN || rc == BT_EIO) break;
        }
    }
    if (sock) zmq_close(sock);
    return NULL;
}

int wk_beat_start(wk_t *w, const char *peer_id, double interval_s)
{
    wk_beat_t *b = &w->beat;
    wk_beat_stop(b);
    pthread_mutex_lock(&b->mu);
    snprintf(b->peer_id, sizeof b->peer_id, "%s", peer_id ? peer_id : "");
    b->interval_s = interval_s > 0 ? interval_s : WK_HEARTBEAT_S;
    b->stop = false;
    b->reregister = false;
    pthread_mutex_unlock(&b->mu);
    /* the thread inherits this mask: SIGINT and SIGTERM stay with the loop's thread */
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    int e = pthread_create(&b->thread, NULL, s_main, w);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (e) {
        BT_ERROR("worker: cannot start the heartbeat thread: %s", strerror(e));
        return BT_EINTERNAL;
    }
    b->running = true;
    return BT_OK;
}

void wk_beat_stop(wk_beat_t *b)
{
    if (!b->running) return;
    pthread_mutex_lock(&b->mu);
    b->stop = true;
    pthread_mutex_unlock(&b->mu);
    pthread_join(b->thread, NULL);
    b->running = false;
    pthread_mutex_lock(&b->mu);
    b->reregister = false; /* what a stopped thread heard belongs to the registration that ended */
    pthread_mutex_unlock(&b->mu);
}
