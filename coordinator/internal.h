/*
 * internal.h — the coordinator's state, shared by its files: coordinator.c (the
 * event loop, peers, sending), jobs.c (the queue, persistence and the client
 * requests), phases.c (a job's priors, prepare and training phases).
 */
#ifndef BOOTH_COORDINATOR_INTERNAL_H
#define BOOTH_COORDINATOR_INTERNAL_H

#include "common/hash.h"
#include "coordinator/coordinator.h"
#include "diffusion/job.h"
#include "diffusion/loop.h"
#include "diffusion/optim.h"
#include "diffusion/priors.h"

#define CO_MAX_PEERS 256
#define CO_RID_MAX 256

typedef struct co_peer {
    bool used;
    uint8_t rid[CO_RID_MAX]; /* routing id on the ROUTER */
    size_t rid_len;
    char name[128];
    char peer[PR_PEER_LEN];  /* for log lines */
    char token[40];          /* Welcome.peer_id: "SLOT.RANDOM"; a heartbeat naming it keeps this peer alive */
    Booth__Role role;
    double last_seen;
    /* worker */
    char model_hash[BT_HASH_HEX], vae_hash[BT_HASH_HEX], weights[16], sampler[32], model_dir[1024];
    int latent_channels, latent_scale;
    uint64_t task;           /* the task in flight (0: idle) */
    int64_t tasks_done;
    double busy_s, task_t0;
    char refused_job[32];    /* the job this worker was refused for (model mismatch) */
    /* PS */
    char endpoint[256], public_key[41];
    int ntensors;            /* of the running job */
} co_peer_t;

#define CO_MAX_OPEN_JOBS 256 /* the default of --max-open-jobs */

typedef enum co_state {
    CO_QUEUED,
    CO_PRIORS,
    CO_PREPARE,
    CO_TRAINING,
    CO_DONE,
    CO_FAILED,
    CO_CANCELLED,
} co_state_t;

/* what the training phase waits for */
typedef enum co_wait {
    CO_W_NONE,
    CO_W_LOADED,   /* PsLoaded from every PS */
    CO_W_STEP,     /* task results and GradReady */
    CO_W_APPLIED,  /* Applied from every PS */
    CO_W_STATE,    /* State from every PS (checkpoint or final) */
    CO_W_VALIDATE, /* the validation render */
} co_wait_t;

typedef struct co_task {
    uint64_t id;
    Booth__Task__Kind kind;
    int64_t first, step, version;
    int count, micro;
    int peer;  /* worker it went to, -1 not yet handed out */
    bool done;
} co_task_t;

typedef struct co_job {
    char id[32];
    char dir[4300];           /* STATE/jobs/ID */
    char *json;               /* the job spec as submitted */
    sd_job_t job;             /* parsed; cfg.model_dir etc. point into it */
    bool priors_only;
    char model_hash[BT_HASH_HEX]; /* "" until known */
    co_state_t state;
    char error[1024];
    double submitted, started, finished;
    /* the instance images, as uploaded */
    int nfiles;
    char **fnames;
    uint8_t **fdata;
    size_t *flen;
    /* priors */
    char priors_path[4300];
    sd_prior_spec_t spec;
    sd_prior_origin_t origin;
    int priors_total, priors_done;
    /* prepared data (PREPARE's answer) */
    sd_image_set_t inst, cls;
    int ntensors;
    char (*tnames)[SD_OPTIM_NAME_MAX];
    int64_t (*tshape)[2];
    float *init;              /* initial LoRA values, tensors back to back */
    /* training */
    sd_loop_t *loop;
    co_wait_t wait;
    int nps, *ps;             /* peer index of PS slot k (tensor i lives on slot i % nps) */
    int M;                    /* micro-batches per step */
    double *mb_loss, *mb_li, *mb_lp;
    int results, ready, applied, states;
    double *ss;               /* per-tensor sums of squares, global order */
    float lr;
    double step_t0;
    int64_t step;             /* the step the PS are at (their LoRA version); < the loop's while replaying */
    int64_t after_done;       /* the last step whose checkpoint and validation are done */
    sd_optim_t *restore;      /* the last complete state: the initial LoRA, then each checkpoint's */
    sd_optim_t *gather;       /* a state being gathered from the PS processes */
    bool gather_final;        /* gathering for the end, not a checkpoint */
    /* tasks of the current phase */
    co_task_t *tasks;
    int ntasks, tasks_cap;
    char data_path[4400];     /* STATE/jobs/ID/data.h5 once PREPARE is in: the encoded sets ("" before) */
    uint64_t data_hash;       /* its content hash (0: the data is the uploaded files) */
} co_job_t;

typedef struct co {
    co_opts_t o;
    pr_node_t node;
    void *sock;
    nn_ctx_t *nn;             /* CPU, for the gathered optimizer state */
    co_peer_t peers[CO_MAX_PEERS];
    co_job_t **jobs;          /* every job known, in submission order */
    int njobs, jobs_cap;
    int running;              /* index in jobs of the running job, -1 none */
    uint64_t next_task;
    int next_job;
    char jobs_dir[4200], priors_dir[4200];
} co_t;

/* coordinator.c */
double co_now(void);
int co_send(co_t *c, int peer, Booth__Envelope *env, const pr_blob_t *blobs, int n);
int co_send_error(co_t *c, int peer, const char *msg, bool fatal);
/* Workers that may serve job j (alive, same model), first idle one or -1. */
int co_idle_worker(co_t *c, co_job_t *j);
/* Tells every registered worker with another model than job j's that it is not used for j (once per job). */
void co_check_workers(co_t *c, co_job_t *j);
int co_count_ps(const co_t *c);
/* Peer i is gone (why: "silent for 3.1 s", "disconnected"): its work is handed to the live ones. */
void co_peer_dead(co_t *c, int i, const char *why);

/* jobs.c */
const char *co_state_name(co_state_t s);
void co_job_set_state(co_t *c, co_job_t *j, co_state_t s, const char *error_fmt, ...)
    __attribute__((format(printf, 4, 5)));
int co_jobs_load(co_t *c);
void co_on_submit(co_t *c, int peer, pr_msg_t *m);
void co_on_status(co_t *c, int peer, pr_msg_t *m);
void co_on_cancel(co_t *c, int peer, pr_msg_t *m);
void co_on_fetch(co_t *c, int peer, pr_msg_t *m);
void co_on_get_job(co_t *c, int peer, pr_msg_t *m);
void co_job_free_run(co_job_t *j); /* the running state */
void co_job_free(co_job_t *j);     /* everything */

/* phases.c */
void co_schedule(co_t *c);  /* start the next job, hand out tasks */
void co_on_task_result(co_t *c, int peer, pr_msg_t *m);
void co_on_ps_loaded(co_t *c, int peer, pr_msg_t *m);
void co_on_grad_ready(co_t *c, int peer, pr_msg_t *m);
void co_on_applied(co_t *c, int peer, pr_msg_t *m);
void co_on_state(co_t *c, int peer, pr_msg_t *m);
void co_job_abort(co_t *c, co_job_t *j); /* release the PS, forget tasks */
/* A parameter server died (peer): if it held the running job's tensors, reload the live ones. */
void co_ps_lost(co_t *c, co_job_t *j, int peer);
/* A worker died (peer): its outstanding tasks go to live workers. */
void co_worker_lost(co_t *c, co_job_t *j, int peer);

#endif
