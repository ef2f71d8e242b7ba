/*
 * worker.h — `booth worker`: one cluster worker (docs/CLUSTER.md).
 *
 * A worker loads the base model once and computes what the coordinator hands
 * it: prior images (Task PRIORS), the encoded image sets and initial LoRA of a
 * job (PREPARE), micro-batch gradients that it pushes to the parameter servers
 * (MICROBATCH), and validation grids (VALIDATE). It holds the gradient computer
 * of at most one job (sd_trainer_t, diffusion/train.h) and gives the model back
 * to itself when the coordinator moves on to another job, so the model stays
 * loaded from job to job.
 */
#ifndef BOOTH_WORKER_WORKER_H
#define BOOTH_WORKER_WORKER_H

#include "diffusion/params.h"
#include "proto/node.h"

typedef struct wk_opts {
    const char *coordinator; /* tcp://HOST:PORT of the coordinator's ROUTER */
    const char *model_dir;   /* the base model folder (loaded once) */
    sd_store_t store;        /* --base-dtype: how the frozen weights are kept */
    int prediction;          /* --prediction-type of a single-file model (an sd_sched_pred_t); -1: from
                                its architecture. Zero-initialised options mean epsilon: set -1. */
    int threads;             /* compute threads; <= 0: BOOTH_THREADS or the CPU count */
    const char *work_dir;    /* where a job's files go; NULL: $TMPDIR (or /tmp)/booth-worker-PID,
                                removed at exit (a given folder is kept, its job folders are not) */
    const char *name;        /* for the coordinator's logs; NULL: host:pid */
    pr_node_opts_t node;     /* keys, --insecure, message size limit */
} wk_opts_t;

/* Runs the worker until SIGINT/SIGTERM (0) or a fatal error: a model that does
 * not load, missing keys, a fatal Error from the coordinator (1, one line). */
int wk_run(const wk_opts_t *o);

#endif
