/*
 * coordinator.h — `booth coordinator`: the cluster's hub (docs/CLUSTER.md).
 *
 * It accepts jobs from clients, keeps them in a FIFO queue persisted under
 * the state dir, and runs one at a time: the prior farm over the workers, the
 * preparation of the job's data, then training step by step — micro-batches
 * to the workers, the ordered gradient sums and AdamW on the parameter
 * servers, and the run loop (diffusion/loop.h) here, which writes exactly the
 * files `booth train` writes. It loads no model.
 */
#ifndef BOOTH_COORDINATOR_COORDINATOR_H
#define BOOTH_COORDINATOR_COORDINATOR_H

#include "proto/node.h"

typedef struct co_opts {
    const char *bind;      /* ROUTER endpoint, e.g. tcp://HOST:5555 (HOST * for every interface) */
    const char *state_dir; /* jobs, prior sets, outputs */
    pr_node_opts_t node;
    int priors_per_task;   /* prior images per PRIORS task (0: spread over the live workers) */
    int heartbeat_ms;      /* how often workers and PS say they are alive (0: 2000) */
    int dead_after_ms;     /* silent for this long: declared dead, its work handed out again (0: 10000) */
    int max_open_jobs;     /* jobs queued or running at once; a Submit beyond is refused (0: 256) */
} co_opts_t;

/* Runs until SIGINT/SIGTERM. 0 on a clean stop, 1 if it could not start. */
int co_run(const co_opts_t *o);

#endif
