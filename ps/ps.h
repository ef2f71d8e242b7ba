/*
 * ps.h — `booth ps`: a parameter server of the booth cluster (docs/CLUSTER.md).
 *
 * It holds some of a job's LoRA tensors with their AdamW state (ps/store.h on
 * diffusion/optim.h), takes the workers' gradient pushes, sums them in
 * micro-batch order, reports their sums of squares to the coordinator, applies
 * the step it is told to, and serves the weights of each version to the
 * workers that pull them.
 *
 * Sockets: a ROUTER bound for the workers (CURVE server, ZAP allow-list), a
 * DEALER to the coordinator (Hello until Welcome, then a Heartbeat naming the
 * Welcome's peer id every heartbeat_ms), and the ZAP handler's socket: one
 * zmq_poll loop over the three, until SIGINT or SIGTERM. A coordinator that does
 * not know the PS (it restarted, or declared the PS dead) answers with
 * Error{reregister}: the PS says Hello again, until the next Welcome, and keeps
 * the tensors it holds.
 */
#ifndef BOOTH_PS_PS_H
#define BOOTH_PS_PS_H

#include <stddef.h>

#include "proto/node.h"

#define PS_DEFAULT_BIND "tcp://*:0"
#define PS_HELLO_RESEND_MS 2000 /* a Hello is repeated this often until the Welcome */
#define PS_HEARTBEAT_MS 2000    /* when the Welcome does not say */

typedef struct ps_opts {
    pr_node_opts_t node;     /* --keys, --coordinator-key, --insecure, --max-message-mb */
    const char *coordinator; /* the coordinator's endpoint (required) */
    const char *bind;        /* where workers connect; NULL: PS_DEFAULT_BIND (any free port) */
    const char *advertise;   /* what the Hello tells workers; NULL: ps_advertise_endpoint(bound) */
    int threads;             /* the optimizer's CPU threads; <= 0: BOOTH_THREADS or the CPU count */
} ps_opts_t;

/* Runs the parameter server until SIGINT/SIGTERM (0), or until it cannot go on:
 * setup failed, the coordinator refused it (a fatal Error), a socket failed
 * (a negative bt_status; the cause logged once). */
int ps_run(const ps_opts_t *o);

/* The endpoint to advertise for a bound one: a tcp endpoint whose host is a
 * wildcard (0.0.0.0, '*', [::]) gets host 127.0.0.1 and keeps its port, which
 * works on one host; any other endpoint is returned as it is. BT_EINVAL if out
 * is too small. */
int ps_advertise_endpoint(const char *bound, char *out, size_t cap);

#endif
