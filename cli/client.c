/*
 * client.c — the coordinator connection of the client commands (client.h).
 */
#include "cli/client.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "common/log.h"
#include "common/progress.h"
#include "common/status.h"

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

int cli_client_open(cli_client_t *c)
{
    int rc = pr_node_init(&c->node, &c->node_opts, "client", false, true);
    if (rc) return rc;
    c->node_live = true;
    if (!(c->sock = pr_node_connect(&c->node, c->coordinator, NULL))) {
        cli_client_close(c);
        return BT_EIO;
    }
    return BT_OK;
}

void cli_client_close(cli_client_t *c)
{
    if (c->sock) zmq_close(c->sock);
    c->sock = NULL;
    if (c->node_live) pr_node_free(&c->node);
    c->node_live = false;
}

int cli_client_request(cli_client_t *c, Booth__Envelope *env, const pr_blob_t *blobs, int n, int want, pr_msg_t *reply)
{
    memset(reply, 0, sizeof *reply);
    int rc = pr_send(c->sock, NULL, env, blobs, n);
    if (rc) return rc == BT_EINVAL ? BT_EINVAL : BT_EIO;
    double deadline = bt_now() + (double)c->timeout_s;
    for (;;) {
        double left = deadline - bt_now();
        if (left <= 0) break;
        zmq_pollitem_t item = {.socket = c->sock, .events = ZMQ_POLLIN};
        long ms = (long)(left * 1000.0) + 1;
        if (zmq_poll(&item, 1, ms) < 0) {
            if (zmq_errno() == EINTR) continue;
            BT_ERROR("%s: cannot wait for the coordinator: %s", c->coordinator, zmq_strerror(zmq_errno()));
            return BT_EIO;
        }
        if (!(item.revents & ZMQ_POLLIN)) continue;
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
    BT_ERROR("%s: no answer from the coordinator in %g s (is it running? right --coordinator-key?)", c->coordinator,
             (double)c->timeout_s);
    return BT_EAGAIN;
}
