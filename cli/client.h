/*
 * client.h — what `booth submit`, `status`, `cancel` and `fetch` share: one
 * DEALER socket to the coordinator, and "send a request, wait for its answer"
 * (docs/CLUSTER.md, Clients).
 *
 * A client sends no hello; each request is answered by exactly one message of
 * a known kind, or by an Error. The wait is bounded (--timeout): a coordinator
 * that is not running, or one whose CURVE handshake fails because the client
 * has the wrong --coordinator-key, looks the same from here — silence — and
 * the client says so in one line instead of hanging.
 *
 * A coordinator may be killed and restarted while a client waits (it reloads
 * its jobs from its --state-dir). ZeroMQ reconnects by itself, but a request
 * that went to the coordinator that died is lost with it, and so is an answer
 * addressed to a connection that dropped. So:
 *  - a request is handed to ZeroMQ only over a connection whose handshake is
 *    done (ZMQ_IMMEDIATE): copies sent while nobody listens would otherwise
 *    queue up and all reach the next coordinator, each answered in full;
 *  - the connection carries heartbeats, so that a coordinator that vanished
 *    without closing it (a dead host, a cut cable) counts as gone in seconds;
 *  - an idempotent request (StatusRequest, Cancel, Fetch) is sent again when
 *    its last copy can have been lost: a new connection to the coordinator
 *    has been made since that copy went out (the socket monitor says so), and
 *    it goes out over that one. Over a connection that stays up, TCP delivers
 *    the copy and the coordinator answers it however busy it is: a copy more
 *    would only make it do the work twice (a Fetch sends every output file
 *    again). The answer to any copy is taken: they are equivalent;
 *  - Submit is not idempotent (a copy more is a second job) and is never sent
 *    twice: when its answer does not come, the caller says that the job may or
 *    may not have been queued.
 */
#ifndef BOOTH_CLI_CLIENT_H
#define BOOTH_CLI_CLIENT_H

#include <stdbool.h>
#include <stdint.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "proto/node.h"
#include "proto/wire.h"

#define CLI_CLIENT_TIMEOUT_S 30.0f
#define CLI_CLIENT_HEARTBEAT_MS 1000 /* ZMTP pings; the coordinator counts as gone after 3 s without a pong */
#define CLI_CLIENT_SILENCE_HINT "(is it running? right --coordinator-key?)"

typedef struct cli_client {
    /* options (CLI_CLIENT_OPTS rows) */
    const char *coordinator; /* --coordinator ADDR */
    float timeout_s;         /* --timeout S: the longest wait for one answer */
    pr_node_opts_t node_opts;
    /* connection (cli_client_open) */
    pr_node_t node;
    void *sock;           /* DEALER to the coordinator */
    void *mon;            /* PAIR receiving sock's connection events (zmq_socket_monitor) */
    bool node_live;       /* node holds a context to free */
    uint64_t connections; /* handshakes with the coordinator done so far (the monitor's count): a copy sent
                             before the last one may have gone to a coordinator that died */
} cli_client_t;

/* Zeroes c and sets the defaults; call before building the option table. */
void cli_client_init(cli_client_t *c);

/* The client's rows of an option table: --coordinator, --timeout, then the node
 * options (--keys, --coordinator-key, --insecure, --max-message-mb). */
#define CLI_CLIENT_OPTS(c)                                                                                             \
    CLI_OPT("--coordinator", CLI_STR, &(c)->coordinator, "ADDR",                                                       \
            "the coordinator's endpoint, e.g. tcp://head:5555 (required)"),                                            \
        CLI_OPT("--timeout", CLI_FLOAT, &(c)->timeout_s, "S",                                                          \
                "give up when the coordinator has not answered for S seconds (default 30)"),                           \
        CLI_NODE_OPTS(&(c)->node_opts)

/* After parsing: --coordinator given and well formed, --timeout > 0. Returns 0,
 * or 2 after one usage line ("booth COMMAND: ..."). */
int cli_client_check(const cli_client_t *c, const char *command);

/* The context, keys, the DEALER (ZMQ_IMMEDIATE, heartbeats) and its monitor. BT_OK,
 * or a negative status after one line. */
int cli_client_open(cli_client_t *c);
/* Closes the socket (unsent messages get PR_LINGER_MS) and the context. Safe twice. */
void cli_client_close(cli_client_t *c);

/* Sends env (+ blobs) and waits up to wait_s seconds for the answer whose body
 * case is `want` (BOOTH__ENVELOPE__BODY_*); messages of other kinds are skipped
 * with a DEBUG line. A copy goes out only over a live connection; with resend
 * (idempotent requests only) it is sent again over each new connection made
 * after the last copy went out. *copies (may be NULL) is how many copies went out.
 * Returns BT_OK with *reply filled (pr_msg_free it); otherwise *reply is empty:
 * BT_EAGAIN when no answer came, without a line (the caller says what silence
 * means: cli_client_no_answer); after one line, BT_EINVAL "ADDR: MESSAGE" for an
 * Error answer, or pr_send's or pr_recv's status when packing the request or
 * waiting failed (a send that fails because the connection just went is tried
 * again, not returned). */
int cli_client_exchange(cli_client_t *c, Booth__Envelope *env, const pr_blob_t *blobs, int n, int want, bool resend,
                        double wait_s, int *copies, pr_msg_t *reply);

/* An idempotent request (StatusRequest, Cancel, Fetch: no blobs): cli_client_exchange
 * with resends for --timeout; silence is said in one line (cli_client_no_answer). */
int cli_client_request(cli_client_t *c, Booth__Envelope *env, int want, pr_msg_t *reply);

/* The one line for silence: "ADDR: no answer from the coordinator in S s (is it
 * running? right --coordinator-key?)" followed by `more` (may be NULL). */
void cli_client_no_answer(const cli_client_t *c, double s, const char *more);

#endif
