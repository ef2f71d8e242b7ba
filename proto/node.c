/*
 * node.c — a cluster process's ZeroMQ context, keys and ZAP handler (node.h).
 */
#include "proto/node.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"
#include "common/status.h"

static bool s_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

int pr_node_init(pr_node_t *n, const pr_node_opts_t *o, const char *who, bool server, bool connects)
{
    memset(n, 0, sizeof *n);
    n->o = *o;
    snprintf(n->who, sizeof n->who, "%s", who);
    pr_allowlist_init(&n->allow);
    n->max_bytes = (size_t)(o->max_message_mb > 0 ? o->max_message_mb : PR_DEFAULT_MAX_MB) << 20;
    if (!(n->ctx = zmq_ctx_new())) {
        BT_ERROR("%s: cannot create a ZeroMQ context: %s", who, zmq_strerror(zmq_errno()));
        return BT_EINTERNAL;
    }
    if (o->io_threads > 1) zmq_ctx_set(n->ctx, ZMQ_IO_THREADS, o->io_threads);
    if (o->insecure) return BT_OK;
    if (!o->keys_dir) {
        BT_ERROR("%s: --keys DIR is required (booth keygen --out DIR makes one), or --insecure for plain TCP", who);
        goto out_fail;
    }
    if (pr_keys_load(o->keys_dir, &n->keys)) goto out_fail;
    if (connects) {
        char path[4096];
        const char *ck = o->coordinator_key;
        if (ck && pr_key_z85_ok(ck)) {
            snprintf(n->coordinator_key, sizeof n->coordinator_key, "%s", ck);
        } else {
            if (!ck) {
                snprintf(path, sizeof path, "%s/coordinator.pub", o->keys_dir);
                if (!s_exists(path)) snprintf(path, sizeof path, "%s/%s", o->keys_dir, PR_PUBLIC_KEY_FILE);
                ck = path;
            }
            if (pr_public_key_load(ck, n->coordinator_key)) goto out_fail;
        }
    }
    if (server) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", o->keys_dir, PR_AUTHORIZED_KEYS_FILE);
        if (!s_exists(path)) {
            BT_ERROR("%s: %s is missing: list the public keys of the processes and clients allowed in", who, path);
            goto out_fail;
        }
        if (pr_allowlist_load(&n->allow, path)) goto out_fail;
        if (!(n->zap = pr_zap_new(n->ctx, &n->allow))) goto out_fail;
    }
    return BT_OK;
out_fail:
    pr_node_free(n);
    return BT_EINVAL;
}

void pr_node_free(pr_node_t *n)
{
    pr_zap_destroy(&n->zap);
    pr_allowlist_free(&n->allow);
    if (n->ctx) zmq_ctx_term(n->ctx);
    n->ctx = NULL;
}

static pr_sockopts_t s_opts(const pr_node_t *n)
{
    return (pr_sockopts_t){.max_bytes = n->max_bytes,
                           .insecure = n->o.insecure,
                           .keys = n->o.insecure ? NULL : &n->keys,
                           .zap = n->zap};
}

void *pr_node_bind(pr_node_t *n, const char *endpoint)
{
    pr_sockopts_t so = s_opts(n);
    void *s = pr_router_bind(n->ctx, endpoint, &so);
    if (s && n->o.insecure) pr_warn_insecure(endpoint, NULL);
    return s;
}

void *pr_node_connect(pr_node_t *n, const char *endpoint, const char *server_key)
{
    pr_sockopts_t so = s_opts(n);
    so.zap = NULL;
    so.server_key = n->o.insecure ? NULL : server_key ? server_key : n->coordinator_key;
    return pr_dealer_connect(n->ctx, endpoint, &so);
}

void *pr_node_zap_socket(const pr_node_t *n) { return n->zap ? pr_zap_socket(n->zap) : NULL; }

void pr_node_zap_serve(pr_node_t *n)
{
    while (n->zap && pr_zap_handle(n->zap) == BT_OK) {
    }
}

void pr_node_name(char *buf, size_t cap)
{
    char host[256] = "?";
    gethostname(host, sizeof host - 1);
    snprintf(buf, cap, "%s:%d", host, (int)getpid());
}

static volatile sig_atomic_t s_stop;

static void s_on_signal(int sig)
{
    (void)sig;
    s_stop = 1;
}

void pr_node_catch_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

bool pr_node_stopping(void) { return s_stop != 0; }
