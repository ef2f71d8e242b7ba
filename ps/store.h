/*
 * store.h — a parameter server's state, without sockets: per job, the
 * optimizer state it holds (sd_optim_t, diffusion/optim.h), how far the
 * current step's gradients have come, and the workers' pulls that wait for a
 * later version. ps/ps.c turns messages into these calls and their verdicts
 * into replies; tests/unit/test_ps.c drives the same calls without a socket.
 *
 * One job's step, with M micro-batches per step and s = opt->step:
 *
 *   ps_store_load      p, m, v and the step s          -> PsLoaded
 *   ps_store_push  x M gradient of (s, k), any order    -> PushAck; after the
 *                      M-th: GradReady with the sums of squares
 *   ps_store_apply     clip by the global norm, AdamW   -> Applied{s + 1}
 *   ps_store_pop_pull  the pulls that wanted s + 1      -> Weights
 *
 * Why the bits equal `booth train`'s: gradients are summed in micro-batch
 * order whatever order they arrive in. A push whose turn has come (k == the
 * number already summed) is added to the optimizer's sum at once, straight
 * from the message; one that comes early is copied aside and added when its
 * turn comes. The sequence of sd_optim_add_grad calls is therefore exactly
 * 0, 1, ..., M-1, as in sd_trainer_step, and only early arrivals cost memory.
 *
 * Verdicts: the answers here are the protocol's, not errors, so the calls
 * return a ps_verdict_t rather than a bt_status: a duplicate push is an
 * ordinary event that still gets its PushAck. Each call logs one line for what
 * it refuses (naming the peer) and writes the same cause into `why`, which the
 * caller sends back in an Error; nothing is logged again above it.
 */
#ifndef BOOTH_PS_STORE_H
#define BOOTH_PS_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "diffusion/optim.h"
#include "nn/nn.h"

#define PS_JOB_ID_MAX 128        /* a job id's bytes, NUL included */
#define PS_MAX_MICROBATCHES 4096 /* micro-batches per step a PsLoad may ask for */
#define PS_MAX_PULLS 4096        /* pulls waiting at once, over all workers */
#define PS_ROUTING_ID_MAX 256    /* ZeroMQ routing ids are at most 255 bytes */
#define PS_PEER_MAX 160          /* a peer's name in log lines */

typedef enum ps_verdict {
    PS_DONE,    /* did it: answer as the protocol says (Pull: send the weights now) */
    PS_QUEUED,  /* Pull: kept, answered by ps_store_pop_pull once the step reaches it */
    PS_IGNORED, /* a harmless repeat (duplicate or stale push, an Apply already taken):
                   nothing changed; answered all the same (PushAck false, Applied) */
    PS_REFUSED, /* makes no sense now, or malformed: nothing changed, one line logged,
                   `why` says why (for the Error or the PushAck) */
} ps_verdict_t;

/* One job's state. Read-only outside store.c. */
typedef struct ps_job {
    char id[PS_JOB_ID_MAX];
    sd_optim_t *opt;     /* the tensors in local order (PsLoad's); opt->step is the version */
    int microbatches;    /* gradients per step (M) */
    int added;           /* micro-batches 0..added-1 of step opt->step are in opt's sum */
    bool *have;          /* [M]: micro-batch k of this step arrived (summed or waiting) */
    float **early;       /* [M]: a gradient that came before its turn (every tensor, local
                            order, at offset[i]), or NULL */
    int64_t *offset;     /* [n]: tensor i's place in an early buffer */
    float **spare;       /* [M]: early buffers used before, kept for the next early arrival */
    int nspare;
    int64_t total;       /* floats over all tensors: one early buffer */
    bool ready;          /* all M summed: sum_squares is this step's GradReady */
    double *sum_squares; /* [n] */
    int32_t *index;      /* [n]: global index of each tensor (GradReady, State) */
    bool *seen;          /* [n]: scratch of ps_store_push (each tensor once per push) */
    int *slot;           /* [n]: scratch of ps_store_push (blob -> tensor) */
} ps_job_t;

/* A tensor of a PsLoad: its global index, name, shape and values (host memory,
 * read during the call only). */
typedef struct ps_tensor_in {
    const char *name;
    int32_t index;
    int64_t shape[2];
    const float *p, *m, *v;
} ps_tensor_in_t;

typedef struct ps_load {
    const char *job_id;
    const char *job_json; /* diffusion/job.h: the optimizer settings come from it */
    size_t job_json_len;
    int64_t step; /* optimizer steps already taken */
    int microbatches;
    const ps_tensor_in_t *t;
    int n; /* 0 is allowed: a PS that holds no tensor of this job */
} ps_load_t;

/* One tensor's gradient in a Push: name and values (numel floats, read during the call). */
typedef struct ps_grad_in {
    const char *name;
    const float *data;
    int64_t numel;
} ps_grad_in_t;

/* A pull that can be answered now (ps_store_pop_pull). */
typedef struct ps_pull {
    char job_id[PS_JOB_ID_MAX];
    int64_t version;
    uint8_t rid[PS_ROUTING_ID_MAX]; /* the worker's routing id, to answer it */
    size_t rid_len;
    char peer[PS_PEER_MAX];
} ps_pull_t;

typedef struct ps_store ps_store_t;

/* ctx: where the optimizer state lives and its kernels run (the CPU: the state
 * is host memory that replies read in place). NULL with one line if out of memory. */
ps_store_t *ps_store_new(nn_ctx_t *ctx);
/* Frees every job and queued pull; *s = NULL. Safe twice. */
void ps_store_destroy(ps_store_t **s);

/* The job of that id, or NULL. */
const ps_job_t *ps_store_job(const ps_store_t *s, const char *job_id);
/* Jobs held (in load order: the last is the one loaded last); pulls waiting. */
int ps_store_njobs(const ps_store_t *s);
const ps_job_t *ps_store_job_at(const ps_store_t *s, int i);
int ps_store_npulls(const ps_store_t *s);

/* PsLoad: a new state for the job (job_json parsed, its optimizer settings, the
 * tensors' p, m, v copied, step set). A job already held is replaced only once
 * the new state is complete (a reload); a refused load leaves it as it was.
 * PS_DONE or PS_REFUSED (empty or long id, no microbatches, a negative step, a
 * bad shape, a repeated name or index, job_json that does not parse, no memory). */
ps_verdict_t ps_store_load(ps_store_t *s, const char *peer, const ps_load_t *l, char *why, size_t cap);

/* Push: micro-batch `micro` of `step`, one gradient per tensor this PS holds, in
 * any order. PS_DONE: accepted; *ready is set when it was the step's last one,
 * and the job's sum_squares are then the GradReady. PS_IGNORED: a duplicate or a
 * push of a past step (one debug line). PS_REFUSED: unknown job, a future step,
 * micro out of range, or gradients that are not exactly this PS's tensors with
 * their sizes. */
ps_verdict_t ps_store_push(ps_store_t *s, const char *peer, const char *job_id, int64_t step, int micro,
                           const ps_grad_in_t *g, int n, bool *ready, char *why, size_t cap);

/* Apply: clip and step AdamW (sd_optim_apply) when `step` is the current one
 * and its gradients are all in; *new_step, *lr: the Applied to send. PS_IGNORED
 * for a step already applied (a repeat: *new_step is the current step, *lr the
 * rate the step before it used; nothing applied twice). PS_REFUSED: unknown
 * job, a future step, gradients not all in, a negative norm. */
ps_verdict_t ps_store_apply(ps_store_t *s, const char *peer, const char *job_id, int64_t step, double grad_norm,
                            int64_t *new_step, float *lr, char *why, size_t cap);

/* Pull of version `version` by the worker at routing id rid: PS_DONE when the
 * job is at that version (send its weights now), PS_QUEUED when it is behind
 * (the routing id is copied; ps_store_pop_pull hands it back when the version is
 * reached), PS_REFUSED when the job is unknown or already past it, or too many
 * pulls wait. The same worker asking again for the same version is queued once. */
ps_verdict_t ps_store_pull(ps_store_t *s, const char *peer, const char *job_id, int64_t version, const void *rid,
                           size_t rid_len, char *why, size_t cap);

/* Takes out a queued pull that can be decided now: PS_DONE when its job reached
 * the version (send the weights), PS_REFUSED when it never will (the job was
 * released, or reloaded past it; `why` says so, for an Error). Returns false when
 * none can. Call it until false after every apply, load and release. */
bool ps_store_pop_pull(ps_store_t *s, ps_pull_t *out, ps_verdict_t *verdict, char *why, size_t cap);

/* Release: frees the job's state. PS_DONE, or PS_IGNORED if it is not held. */
ps_verdict_t ps_store_release(ps_store_t *s, const char *peer, const char *job_id);

#endif
