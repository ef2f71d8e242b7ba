/*
 * wk.h — the worker's state, shared by its files (not an API):
 *
 *   worker.c     the event loop: registration with the coordinator, dispatch,
 *                and wk_wait (a nested wait that answers registration at once
 *                and keeps the coordinator's other messages for the loop)
 *   heartbeat.c  the heartbeat thread, which says the worker is alive while
 *                the loop's thread computes
 *   job.c        the job's gradient computer: GetJob -> JobData -> files -> trainer
 *   ps.c         the parameter servers: connections, Pull -> Weights, Push -> PushAck
 *   tasks.c      one function per Task kind, each answering one TaskResult
 *
 * Everything runs on the loop's thread except the heartbeat thread, which
 * shares only wk_beat_t (its mutex says what) and reads w->node and w->o,
 * which nobody changes while it runs.
 */
#ifndef BOOTH_WORKER_WK_H
#define BOOTH_WORKER_WK_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "diffusion/job.h"
#include "diffusion/optim.h"
#include "diffusion/priors.h"
#include "diffusion/train.h"
#include "proto/node.h"
#include "worker/worker.h"

#define WK_HELLO_RESEND_S 3.0   /* no Welcome this long after a Hello on a live connection: say it again */
#define WK_HEARTBEAT_S 2.0      /* unless the Welcome names another interval */
#define WK_STATE_MAX 64         /* a heartbeat's state: "idle", "busy task N" */
#define WK_PEER_ID_MAX 64       /* the Welcome's peer id */
#define WK_REPLY_TIMEOUT_S 60.0 /* JobData: a coordinator silent this long has failed the task */
#define WK_PS_TIMEOUT_S 20.0    /* Weights, PushAck: a PS silent this long is gone (the coordinator reloads
                                 * the live ones); the task fails and the worker is free again */
#define WK_DEFERRED_MAX 64      /* coordinator messages kept while a task waits for another peer */
#define WK_ID_MAX 128           /* a job id (also a folder name under the work dir) */
#define WK_PATH_MAX 4096        /* the work dir's path */

/* The heartbeat thread and what it shares with the loop's thread (heartbeat.c).
 * A micro-batch of a real model computes for tens of seconds on a CPU, and the
 * loop's thread reads no socket meanwhile; the thread says Heartbeat{state,
 * peer_id} every interval over a DEALER of its own (same context and keys), so
 * the coordinator, which knows the worker by that peer id, does not declare it
 * dead. It runs while the worker is registered: started by a Welcome, stopped
 * and joined when the registration ends (a lost connection, a coordinator that
 * no longer knows the worker) and at exit. */
typedef struct wk_beat {
    pthread_mutex_t mu;           /* guards the fields down to `reregister` */
    char state[WK_STATE_MAX];     /* published by the loop's thread (wk_set_state) */
    char peer_id[WK_PEER_ID_MAX]; /* the Welcome's, for the thread's heartbeats */
    double interval_s;
    bool stop;       /* loop -> thread: close the socket and return */
    bool reregister; /* thread -> loop: the coordinator answered a heartbeat with
                        Error{reregister}: it does not know this worker */
    /* the loop's thread only */
    pthread_t thread;
    bool running; /* thread was started and not joined yet */
} wk_beat_t;

/* One parameter server, as a task names it. */
typedef struct wk_ps {
    char endpoint[256];
    char key[41]; /* its CURVE public key, "" when insecure */
    void *sock;   /* DEALER to its ROUTER */
    int *held;    /* trainer tensor indices it holds, from its last Weights (valid while known) */
    int nheld;
    bool known; /* held describes this PS for the current trainer */
} wk_ps_t;

typedef struct wk {
    const wk_opts_t *o;
    pr_node_t node;
    nn_ctx_t *ctx;
    sd_model_t *model;        /* the base model while no trainer holds it (trainer->model otherwise) */
    sd_prior_origin_t origin; /* what Hello reports about the model */
    const char *weights;      /* sd_model_weights of the model */
    char name[128];
    char work_dir[WK_PATH_MAX];
    bool own_work_dir; /* made by us: removed at exit */

    /* the coordinator */
    void *coord;                  /* DEALER */
    void *mon;                    /* PAIR receiving coord's connection events (zmq_socket_monitor) */
    bool registered;              /* a Welcome came on the current connection, and no Error{reregister} since */
    char peer_id[WK_PEER_ID_MAX]; /* the last Welcome's */
    bool connected;               /* the monitor saw a handshake and no disconnect since */
    bool events_seen;             /* the monitor has said anything (its first event may be missed) */
    bool hello_queued;            /* a Hello was sent while not connected: the next connection carries it */
    double last_hello, heartbeat_s;
    bool fatal; /* the coordinator refused us for good: stop with status 1 */
    wk_beat_t beat;
    int test_delay_ms; /* BOOTH_TEST_TASK_DELAY_MS (worker.c): answer PRIORS and MICROBATCH this late */
    pr_msg_t deferred[WK_DEFERRED_MAX];
    int ndeferred;

    /* the job whose trainer is loaded */
    char job_id[WK_ID_MAX];
    uint64_t data_hash;
    sd_job_t job;                              /* owns the strings trainer->cfg points to */
    char job_dir[WK_PATH_MAX + WK_ID_MAX + 1]; /* WORK_DIR/JOB_ID */
    char instance_dir[WK_PATH_MAX + WK_ID_MAX + 32], priors_path[WK_PATH_MAX + WK_ID_MAX + 32];
    sd_trainer_t *trainer;
    int64_t version; /* LoRA version in the trainer; -1: unknown (pull before use) */

    /* parameter servers: every connection made, and the ones the current task names */
    wk_ps_t *ps;
    int nps;
    int *cur; /* indices into ps of the current task's PS, in the task's order */
    int ncur;
} wk_t;

/* ---- worker.c ---- */

/* Called while a long computation runs (progress callbacks) and by wk_wait:
 * registers again if the heartbeat thread heard that the coordinator does not
 * know this worker. */
void wk_tick(wk_t *w);
/* Sends a message to the coordinator. */
int wk_send_coord(wk_t *w, Booth__Envelope *env, const pr_blob_t *blobs, int n);

/* What a wk_wait callback says about a message from socks[i]: */
enum {
    WK_WAIT_SKIP = 0,  /* not an awaited one: a coordinator message is kept for the loop, a PS's dropped */
    WK_WAIT_TAKEN = 1, /* one of the awaited answers; wait for the others */
    WK_WAIT_DONE = 2,  /* the last awaited answer */
};                     /* or < 0: fail the wait (the cause logged) */
typedef int (*wk_on_msg_fn)(wk_t *w, int i, pr_msg_t *m, void *arg);
/* Waits on socks[0..n) (plus the coordinator, whose other messages are kept for
 * the loop) until fn says done. A Welcome or an Error{reregister} from the
 * coordinator is acted on at once (an Error still goes to fn when the
 * coordinator is one of socks). n may be 0 (fn unused): a pause that goes on
 * registering. Returns 0, BT_EAGAIN after timeout_s (not logged: the caller
 * names what was awaited), fn's error, or BT_EIO when the process is stopping
 * or a socket failed. */
int wk_wait(wk_t *w, void **socks, int n, double timeout_s, wk_on_msg_fn fn, void *arg);

/* Host floats of n values at p in the compute context's memory: p itself on
 * the CPU, else a copy in *owned (free it). NULL with one line on failure. */
const float *wk_host_f32(wk_t *w, const float *p, int64_t n, float **owned);

/* The one line a failed task reports: the last error line logged (whoever
 * detected the failure logged it), else "<what>: <status phrase>". */
const char *wk_task_error(const char *what, int rc, char *buf, size_t cap);

/* ---- heartbeat.c ---- */

/* Mutex and fields; "idle". 0, or BT_EINTERNAL with one line. */
int wk_beat_init(wk_beat_t *b);
/* Stops the thread if it runs; frees the mutex. */
void wk_beat_free(wk_beat_t *b);
/* Starts the thread for a registration with peer_id (a running one is stopped
 * first). 0, or an error (logged): the worker then has no heartbeats. */
int wk_beat_start(wk_t *w, const char *peer_id, double interval_s);
/* Stops the thread and joins it (within about 100 ms); nothing if none runs. */
void wk_beat_stop(wk_beat_t *b);
/* Publishes the state the heartbeats report ("idle", "busy task N"). */
void wk_set_state(wk_t *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Whether the thread heard Error{reregister} since the last call (clears it). */
bool wk_beat_take_reregister(wk_beat_t *b);

/* ---- job.c ---- */

/* Makes the trainer of task's job current: keeps it, or releases the old one,
 * fetches the job's data (GetJob), and builds it. 0 or an error (logged). */
int wk_job_ensure(wk_t *w, const Booth__Task *task);
/* Frees the trainer (the model comes back to w->model) and the job's files. */
void wk_job_release(wk_t *w);
/* Whether s may be used as one file or folder name (no '/', not "." or "..", not empty). */
bool wk_name_ok(const char *s);
/* rm -r path (nothing if it does not exist); one warning if something stays. */
void wk_remove_tree(const char *path);

/* ---- ps.c ---- */

/* Connects to the PS the task names (reusing connections) and makes them current. */
int wk_ps_use(wk_t *w, const Booth__Task *task);
/* Makes the trainer hold LoRA `version`, pulling it from the current PS if it does not. */
int wk_ps_pull(wk_t *w, int64_t version);
/* Pushes the trainer's gradients (micro-batch `micro` of `step`) to the PS that hold
 * each tensor and waits for every acknowledgement. */
int wk_ps_push(wk_t *w, int64_t step, int micro);
/* Forgets which tensors each PS holds (a new trainer). */
void wk_ps_forget(wk_t *w);
/* Closes every PS connection. */
void wk_ps_close(wk_t *w);

/* ---- tasks.c ---- */

/* Runs one task and answers the coordinator (TaskResult), whatever happens. */
void wk_task_run(wk_t *w, const Booth__Task *task);

#endif
