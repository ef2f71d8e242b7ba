/*
 * node.h — what every booth process of a cluster sets up the same way: the
 * ZeroMQ context, its CURVE identity, and (servers) the ZAP handler with the
 * allow-list; then sockets made from them.
 *
 * Keys (booth keygen, proto/keys.h): --keys DIR names this process's keypair
 * (DIR/secret.key) and, on servers (coordinator, PS), DIR/authorized_keys, the
 * client keys let in. A process that connects to the coordinator must know
 * its public key: --coordinator-key FILE|Z85, by default DIR/coordinator.pub if
 * it exists, else DIR/public.key (a cluster that shares one keypair). A PS's
 * public key travels in its hello; the coordinator hands it to workers.
 * --insecure: plain TCP, said loudly at start.
 */
#ifndef BOOTH_PROTO_NODE_H
#define BOOTH_PROTO_NODE_H

#include "proto/keys.h"
#include "proto/wire.h"

#define PR_DEFAULT_MAX_MB 1024

typedef struct pr_node_opts {
    const char *keys_dir;        /* --keys DIR */
    const char *coordinator_key; /* --coordinator-key FILE|Z85 (NULL: from keys_dir) */
    bool insecure;               /* --insecure */
    int max_message_mb;          /* --max-message-mb (0: PR_DEFAULT_MAX_MB) */
    int io_threads;              /* ZeroMQ I/O threads (0: libzmq's 1); a PS that many workers pull
                                  * from moves its bytes on more than one */
} pr_node_opts_t;

typedef struct pr_node {
    void *ctx;
    pr_node_opts_t o;
    pr_keypair_t keys;
    pr_allowlist_t allow;
    pr_zap_t *zap;               /* servers only */
    char coordinator_key[41];    /* "" for the coordinator itself or when insecure */
    size_t max_bytes;
    char who[64];                /* "coordinator", "ps", "worker", "client": for log lines */
} pr_node_t;

/* server: this process binds a socket others connect to (load the allow-list,
 * start the ZAP handler). connects: it connects to the coordinator. One error
 * line and nonzero on failure (missing keys, unreadable allow-list...). */
int pr_node_init(pr_node_t *n, const pr_node_opts_t *o, const char *who, bool server, bool connects);
void pr_node_free(pr_node_t *n);

/* A ROUTER bound to endpoint (CURVE server unless insecure); NULL with one line. */
void *pr_node_bind(pr_node_t *n, const char *endpoint);
/* A DEALER connected to endpoint; server_key NULL: the coordinator's. */
void *pr_node_connect(pr_node_t *n, const char *endpoint, const char *server_key);

/* The ZAP socket to poll (NULL for a client), and its handler: call on POLLIN. */
void *pr_node_zap_socket(const pr_node_t *n);
void pr_node_zap_serve(pr_node_t *n);

/* "host:pid", for hellos and logs. */
void pr_node_name(char *buf, size_t cap);

/* SIGINT and SIGTERM set a flag (and interrupt zmq_poll with EINTR) instead of
 * killing the process, so its loop can finish what it owes and close its
 * sockets; pr_node_stopping() reads the flag. */
void pr_node_catch_signals(void);
bool pr_node_stopping(void);

#endif
