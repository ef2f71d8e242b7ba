/*
 * client.h — what `booth submit`, `status`, `cancel` and `fetch` share: one
 * DEALER socket to the coordinator, and "send one request, wait for its one
 * answer" (docs/CLUSTER.md, Clients).
 *
 * A client sends no hello; each request is answered by exactly one message of
 * a known kind, or by an Error. The wait is bounded (--timeout): ZeroMQ
 * connects in the background and queues what is sent meanwhile, so a
 * coordinator that is not running, or one whose CURVE handshake fails because
 * the client has the wrong --coordinator-key, looks the same from here —
 * silence — and the client says so in one line instead of hanging.
 */
#ifndef BOOTH_CLI_CLIENT_H
#define BOOTH_CLI_CLIENT_H

#include <stdbool.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "proto/node.h"
#include "proto/wire.h"

#define CLI_CLIENT_TIMEOUT_S 30.0f

typedef struct cli_client {
    /* options (CLI_CLIENT_OPTS rows) */
    const char *coordinator; /* --coordinator ADDR */
    float timeout_s;         /* --timeout S: the longest wait for one answer */
    pr_node_opts_t node_opts;
    /* connection (cli_client_open) */
    pr_node_t node;
    void *sock;     /* DEALER to the coordinator */
    bool node_live; /* node holds a context to free */
} cli_client_t;

/* Zeroes c and sets the defaults; call before building the option table. */
void cli_client_init(cli_client_t *c);

/* The client's rows of an option table: --coordinator, --timeout, then the node
 * options (--keys, --coordinator-key, --insecure, --max-message-mb). */
#define CLI_CLIENT_OPTS(c)                                                                                             \
    CLI_OPT("--coordinator", CLI_STR, &(c)->coordinator, "ADDR",                                                       \
            "the coordinator's endpoint, e.g. tcp://head:5555 (required)"),                                            \
        CLI_OPT("--timeout", CLI_FLOAT, &(c)->timeout_s, "S",                                                          \
                "give up when the coordinator does not answer a request in S seconds (default 30)"),                   \
        CLI_NODE_OPTS(&(c)->node_opts)

/* After parsing: --coordinator given and well formed, --timeout > 0. Returns 0,
 * or 2 after one usage line ("booth COMMAND: ..."). */
int cli_client_check(const cli_client_t *c, const char *command);

/* The context, keys and the DEALER. BT_OK, or a negative status after one line. */
int cli_client_open(cli_client_t *c);
/* Closes the socket (unsent messages get PR_LINGER_MS) and the context. Safe twice. */
void cli_client_close(cli_client_t *c);

/* Sends env (+ blobs) and waits up to --timeout for the answer whose body case is
 * `want` (BOOTH__ENVELOPE__BODY_*); messages of other kinds are skipped with a
 * DEBUG line. Returns BT_OK with *reply filled (pr_msg_free it); otherwise *reply
 * is empty and one line was logged: BT_EAGAIN "ADDR: no answer from the
 * coordinator in S s (...)", BT_EINVAL "ADDR: MESSAGE" for an Error answer, BT_EIO
 * when the request could not be sent. */
int cli_client_request(cli_client_t *c, Booth__Envelope *env, const pr_blob_t *blobs, int n, int want, pr_msg_t *reply);

#endif
