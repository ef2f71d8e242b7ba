/*
 * client.c — the coordinator connection of the client commands (client.h): the
 * DEALER with the client's own options, the monitor that counts its
 * connections, and the request/answer wait that resends idempotent requests
 * over a new connection.
 */
#include "cli/client.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "common/log.h"
#include "common/progress.h"
#include "common/status.h"

#define S_MONITOR_ENDPOINT "inproc://booth-client-monitor"
#define S_SETUP_ENDPOINT "inproc://booth-client-setup" /* bound by nobody: cli_client_open */
#define S_SEND_RETRY_S 1.0 /* a send that failed (the connection went between poll and send) is tried again after */

void cli_client_init(cli_client_t *c)
{
    memset(c, 0, sizeof *c);
    c->timeout_s = CLI_CLIENT_TIMEOUT_S;
}

int cli_client_check(const cli_client_t *c, const char *command)
{
    if (!c->coordinator) {
        fprintf(stderr, "booth %s: --coordinator ADDR is required (e.g. tcp://head:5555)\n", command);
        return 2;
    }
    if (!(c->timeout_s > 0)) {
        fprintf(stderr, "booth %s: --timeout must be more than 0 seconds\n", command);
        return 2;
    }
    if (c->node_opts.max_message_mb < 0) {
        fprintf(stderr, "booth %s: --max-message-mb must be positive\n", command);
        return 2;
    }
    if (!pr_endpoint_ok(c->coordinator, false)) return 2;
    return 0;
}

/* Counts the handshakes the monitor reports: [u16 event, u32 value] [endpoint]. */
static void s_monitor_drain(cli_client_t *c)
{
    uint16_t ev;
    while (pr_monitor_next(c->mon, &ev)) {
        if (ev == ZMQ_EVENT_HANDSHAKE_SUCCEEDED) {
            c->connections++;
            BT_DEBUG("%s: connected (connection %llu)", c->coordinator, (unsigned long long)c->connections);
        } else if (ev == ZMQ_EVENT_DISCONNECTED) {
            BT_DEBUG("%s: connection lost", c->coordinator);
        }
    }
}

int cli_client_open(cli_client_t *c)
{
    int rc = pr_node_init(&c->node, &c->node_opts, "client", false, true);
    if (rc) return rc;
    c->node_live = true;
    c->connections = 0;
    /* pr_node_connect sets the cluster's options (keys, limits, linger) and connects
     * at once, but the client's own (client.h) apply only to connections made after
     * they are set, and the monitor must listen before the first handshake, which it
     * counts. So it is connected to an in-process endpoint nobody binds (nothing
     * passes there: no handshake to miss), given the rest, and then connected to the
     * coordinator. A zero send timeout: a copy is sent only when poll says it can go,
     * and a connection lost in between fails the send at once instead of blocking. */
    if (!(c->sock = pr_node_connect(&c->node, S_SETUP_ENDPOINT, NULL))) {
        cli_client_close(c);
        return BT_EIO;
    }
    int one = 1, zero = 0, ivl = CLI_CLIENT_HEARTBEAT_MS, dead = 3 * CLI_CLIENT_HEARTBEAT_MS;
    if (zmq_setsockopt(c->sock, ZMQ_IMMEDIATE, &one, sizeof one) ||
        zmq_setsockopt(c->sock, ZMQ_HEARTBEAT_IVL, &ivl, sizeof ivl) ||
        zmq_setsockopt(c->sock, ZMQ_HEARTBEAT_TIMEOUT, &dead, sizeof dead) ||
        zmq_setsockopt(c->sock, ZMQ_SNDTIMEO, &zero, sizeof zero) ||
        zmq_socket_monitor(c->sock, S_MONITOR_ENDPOINT, ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_DISCONNECTED) ||
        !(c->mon = zmq_socket(c->node.ctx, ZMQ_PAIR)) || zmq_setsockopt(c->mon, ZMQ_LINGER, &zero, sizeof zero) ||
        zmq_connect(c->mon, S_MONITOR_ENDPOINT) || zmq_disconnect(c->sock, S_SETUP_ENDPOINT) ||
        zmq_connect(c->sock, c->coordinator)) {
        BT_ERROR("%s: cannot set up the connection: %s", c->coordinator, zmq_strerror(zmq_errno()));
        cli_client_close(c);
        return BT_EIO;
    }
    return BT_OK;
}

void cli_client_close(cli_client_t *c)
{
    if (c->sock && c->mon) zmq_socket_monitor(c->sock, NULL, 0);
    if (c->mon) zmq_close(c->mon);
    if (c->sock) zmq_close(c->sock);
    c->mon = c->sock = NULL;
    if (c->node_live) pr_node_free(&c->node);
    c->node_live = false;
}

void cli_client_no_answer(const cli_client_t *c, double s, const char *more)
{
    BT_ERROR("%s: no answer from the coordinator in %g s " CLI_CLIENT_SILENCE_HINT "%s", c->coordinator, s,
             more ? more : "");
}

int cli_client_exchange(cli_client_t *c, Booth__Envelope *env, const pr_blob_t *blobs, int n, int want, bool resend,
                        double wait_s, int *copies, pr_msg_t *reply)
{
    memset(reply, 0, sizeof *reply);
    int sent = 0, rc;
    uint64_t sent_at = 0; /* c->connections when the last copy went out */
    double retry_at = 0;  /* after a failed send: not before this */
    double deadline = bt_now() + wait_s;
    if (copies) *copies = 0;
    for (;;) {
        double now = bt_now();
        if (now >= deadline) break;
        /* A copy goes over a connection the monitor has counted: ZeroMQ hands the
         * socket a new connection a moment before the monitor hears of it, and a copy
         * sent in that moment would be counted as sent before it, and sent again.
         * Counting before the send is safe the other way: once a later connection
         * is counted, the one before is gone from the socket, so a copy cannot go
         * over it (and be lost with it) unseen. */
        bool due = (sent == 0 ? c->connections > 0 : resend && c->connections > sent_at) && now >= retry_at;
        double until = !due && retry_at > now && retry_at < deadline ? retry_at : deadline;
        zmq_pollitem_t items[2] = {{c->sock, 0, (short)(ZMQ_POLLIN | (due ? ZMQ_POLLOUT : 0)), 0},
                                   {c->mon, 0, ZMQ_POLLIN, 0}};
        if (zmq_poll(items, 2, (long)((until - now) * 1000.0) + 1) < 0) {
            if (zmq_errno() == EINTR) continue;
            BT_ERROR("%s: cannot wait for the coordinator: %s", c->coordinator, zmq_strerror(zmq_errno()));
            return BT_EIO;
        }
        if (items[1].revents & ZMQ_POLLIN) {
            s_monitor_drain(c);
            continue; /* due may have changed */
        }
        if (items[0].revents & ZMQ_POLLOUT) {
            uint64_t at = c->connections;
            rc = pr_send(c->sock, NULL, env, blobs, n);
            if (rc == BT_EIO) { /* the connection went since poll (pr_send said so): the next one takes it */
                retry_at = bt_now() + S_SEND_RETRY_S;
            } else if (rc) {
                return rc;
            } else {
                sent++;
                sent_at = at;
                if (copies) *copies = sent;
                if (sent > 1) BT_DEBUG("%s: sent the request again over a new connection", c->coordinator);
            }
        }
        if (!(items[0].revents & ZMQ_POLLIN)) continue;
        rc = pr_recv_nowait(c->sock, false, c->node.max_bytes, reply);
        if (rc == BT_EAGAIN || rc == BT_EPROTO || rc == BT_ENOMEM) continue; /* dropped ones were logged */
        if (rc) return rc;
        int got = (int)reply->env->body_case;
        if (got == want) return BT_OK;
        if (got == BOOTH__ENVELOPE__BODY_ERROR) {
            const char *msg = reply->env->error && reply->env->error->message ? reply->env->error->message : "";
            BT_ERROR("%s: %s", c->coordinator, *msg ? msg : "refused the request (no reason given)");
            pr_msg_free(reply);
            return BT_EINVAL;
        }
        BT_DEBUG("%s: skipped a '%s' message while waiting for '%s'", reply->peer, pr_body_name(got),
                 pr_body_name(want));
        pr_msg_free(reply);
    }
    return BT_EAGAIN;
}

int cli_client_request(cli_client_t *c, Booth__Envelope *env, int want, pr_msg_t *reply)
{
    int rc = cli_client_exchange(c, env, NULL, 0, want, true, (double)c->timeout_s, NULL, reply);
    if (rc == BT_EAGAIN) cli_client_no_answer(c, (double)c->timeout_s, NULL);
    return rc;
}
