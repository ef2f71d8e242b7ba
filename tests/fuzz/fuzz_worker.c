/*
 * fuzz_worker.c — the worker's message handlers (worker/): a live `booth
 * worker` on the tiny model in a thread, the harness as its coordinator on
 * loopback.
 *
 * First byte % 3 == 0: the rest is one message from the coordinator to the
 * idle worker (Welcome, Error, Task, Release, anything). 1: the harness gives
 * the worker a training task of a fresh job; the worker asks for the job's
 * data (GetJob) and the rest of the input is the answer, the JobData message
 * whose blobs (instance images, data.h5, priors.h5) and job spec the worker
 * writes, parses and loads. 2: a training task of job "fzps" whose parameter
 * server is the harness; the worker pulls the LoRA and the input is the PS's
 * answer (Weights: every tensor by name, or anything else); a worker that
 * takes it computes the micro-batch and pushes, and the harness acknowledges.
 * Frames are fz_piece pieces, the envelope first. Then the harness must hear
 * from the worker: after a coordinator message it asks it to register again
 * (Error{reregister}) and waits for the Hello; after a JobData or a PS answer
 * it waits for the task's result (ok, or a result that says why not).
 *
 * Not sent: the coordinator's fatal Error (it stops the worker: that is its
 * meaning) and PRIORS and VALIDATE tasks (they render images for as long as
 * the task asks: work by design, not a handler's decision).
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/fileio.h"
#include "common/status.h"
#include "tests/fuzz/fuzz.h"
#include "worker/worker.h"

#define S_JOB                                                                                                  \
    "{\"pretrained_model_name_or_path\": \"tests/fixtures/tiny-sd\", \"instance_data_dir\": \"x\", "          \
    "\"instance_prompt\": \"a photo of sks robot\", \"resolution\": 16, \"max_train_steps\": 2, \"rank\": 1}"

/* How long an input the worker may have skipped is given before the nudge (s_wait_result). A good
 * answer still being worked on then meets the nudge after it, in order, where it is harmless; so
 * this bounds the wait per skipped input, not what an input exercises. */
#define S_NUDGE_S 0.005

static struct {
    void *ctx, *co, *ps;
    zmq_msg_t rid;
    wk_opts_t opts;
    char ep[256], ps_ep[256], work[700];
    pthread_t thread;
    uint64_t task;
} S;

static double s_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void *s_main(void *arg)
{
    int rc = wk_run(arg);
    fz_bug("the worker stopped (status %d)", rc);
}

static void s_send(Booth__Envelope *env)
{
    pr_send(S.co, &S.rid, env, NULL, 0);
}

/* Whatever else the worker says: a Hello is welcomed, a GetJob refused. */
static bool s_other(pr_msg_t *m, void *user)
{
    (void)user;
    if (m->env->body_case == BOOTH__ENVELOPE__BODY_HELLO) {
        zmq_msg_close(&S.rid);
        zmq_msg_init(&S.rid);
        zmq_msg_copy(&S.rid, &m->routing_id);
        Booth__Welcome w = BOOTH__WELCOME__INIT;
        w.peer_id = "worker-fuzz";
        w.heartbeat_ms = 3600 * 1000;
        Booth__Envelope env = PR_ENVELOPE_INIT(WELCOME, welcome, &w);
        s_send(&env);
    } else if (m->env->body_case == BOOTH__ENVELOPE__BODY_GET_JOB && !strcmp(m->env->get_job->job_id, "fzps")) {
        /* job fzps: one photo, the job as the task says */
        static uint8_t *png;
        static size_t png_len;
        if (!png && bt_read_file(fz_fixture("images/gray.png"), (char **)&png, &png_len)) fz_bug("no gray.png");
        pr_blob_t b = pr_blob_of_bytes("gray.png", png, png_len);
        Booth__JobData d = BOOTH__JOB_DATA__INIT;
        d.job_id = "fzps";
        d.job_json = S_JOB;
        d.data_hash = 1;
        Booth__Envelope env = PR_ENVELOPE_INIT(JOB_DATA, job_data, &d);
        pr_send(S.co, &S.rid, &env, &b, 1);
    } else if (m->env->body_case == BOOTH__ENVELOPE__BODY_GET_JOB) {
        Booth__Error e = BOOTH__ERROR__INIT;
        e.message = "no such job here";
        Booth__Envelope env = PR_ENVELOPE_INIT(ERROR, error, &e);
        s_send(&env);
    }
    return false;
}

static bool s_is_hello(pr_msg_t *m, void *user)
{
    if (m->env->body_case != BOOTH__ENVELOPE__BODY_HELLO) return false;
    s_other(m, user);
    return true;
}

static bool s_is_get_job(pr_msg_t *m, void *user)
{
    return m->env->body_case == BOOTH__ENVELOPE__BODY_GET_JOB && !strcmp(m->env->get_job->job_id, user);
}

static bool s_is_result(pr_msg_t *m, void *user)
{
    return m->env->body_case == BOOTH__ENVELOPE__BODY_TASK_RESULT && m->env->task_result->task_id == *(uint64_t *)user;
}

static void s_start(void)
{
    S.ctx = zmq_ctx_new();
    S.co = fz_router(S.ctx, S.ep, sizeof S.ep);
    S.ps = fz_router(S.ctx, S.ps_ep, sizeof S.ps_ep);
    zmq_msg_init(&S.rid);
    snprintf(S.work, sizeof S.work, "%s/worker", fz_dir());
    S.opts = (wk_opts_t){.coordinator = S.ep, .model_dir = fz_fixture("tiny-sd"), .store = SD_STORE_F32,
                         .threads = 1, .work_dir = S.work, .name = "fuzz-worker", .node = {.insecure = true}};
    if (pthread_create(&S.thread, NULL, s_main, &S.opts)) fz_bug("cannot start the worker thread");
    fz_wait(S.co, true, s_is_hello, NULL, NULL, 60000, "the worker's Hello");
}

typedef void (*s_patch_fn)(Booth__Envelope *env, void *arg, char **saved);
static void s_send_answer(void *sock, const zmq_msg_t *rid, fz_in_t *in, int body, s_patch_fn patch, void *arg);
static void s_patch_task(Booth__Envelope *env, void *arg, char **saved);
static void s_wait_hello(void);

/* The coordinator's message to the idle worker; then Error{reregister} -> Hello. */
static void s_coordinator_message(fz_in_t *in)
{
    fz_in_t peek = *in;
    size_t len;
    const uint8_t *first = fz_piece(&peek, &len);
    Booth__Envelope *env = booth__envelope__unpack(NULL, len, first);
    bool skip = env && ((env->body_case == BOOTH__ENVELOPE__BODY_ERROR && env->error->fatal) ||
                        (env->body_case == BOOTH__ENVELOPE__BODY_TASK &&
                         (env->task->kind == BOOTH__TASK__KIND__PRIORS || env->task->kind == BOOTH__TASK__KIND__VALIDATE)));
    if (env) booth__envelope__free_unpacked(env, NULL);
    if (skip) return;
    s_send_answer(S.co, &S.rid, in, BOOTH__ENVELOPE__BODY_TASK, s_patch_task, S.ps_ep);
    Booth__Error e = BOOTH__ERROR__INIT;
    e.message = "register again";
    e.reregister = true;
    Booth__Envelope q = PR_ENVELOPE_INIT(ERROR, error, &e);
    s_send(&q);
    s_wait_hello();
}

/* What makes an input the answer the worker waits for: its job (and version) set to the ones asked
 * for; called again with arg NULL to put back what it borrowed before the envelope is freed. */

static void s_patch_job_data(Booth__Envelope *env, void *arg, char **saved)
{
    if (arg) *saved = env->job_data->job_id;
    env->job_data->job_id = arg ? arg : *saved;
}

/* A Task's parameter servers all become the harness's PS, which answers at once: a fuzzed task
 * naming a PS that is not there would make the worker wait its PS timeout (20 s) by design, and the
 * run would measure waits, not handlers. The endpoints borrowed are put back from a saved array. */
static void s_patch_task(Booth__Envelope *env, void *arg, char **saved)
{
    Booth__Task *t = env->task;
    char **ep = (char **)*saved;
    if (arg && t->n_ps && !(ep = malloc(t->n_ps * sizeof *ep))) abort();
    for (size_t i = 0; i < t->n_ps; i++) {
        if (arg) ep[i] = t->ps[i]->endpoint;
        t->ps[i]->endpoint = arg ? arg : ep[i];
    }
    if (arg)
        *saved = (char *)ep;
    else
        free(ep);
}

static void s_patch_weights(Booth__Envelope *env, void *arg, char **saved)
{
    if (arg) {
        *saved = env->weights->job_id;
        env->weights->version = *(int64_t *)arg;
    }
    env->weights->job_id = arg ? "fzps" : *saved;
}

/* Sends the input to rid at sock as one message, frames as fz_piece pieces, its envelope patched
 * when it is a `body` (a worker left waiting by anything else is nudged by s_wait_result). */
static void s_send_answer(void *sock, const zmq_msg_t *rid, fz_in_t *in, int body, s_patch_fn patch, void *arg)
{
    const uint8_t *frame[512];
    size_t len[512];
    int n = 0;
    while (n < 512 && (n == 0 || in->n > 0)) frame[n] = fz_piece(in, &len[n]), n++;
    Booth__Envelope *env = booth__envelope__unpack(NULL, len[0], frame[0]);
    uint8_t *packed = NULL;
    if (env && (int)env->body_case == body) {
        char *saved = NULL;
        patch(env, arg, &saved);
        if (!(packed = malloc(booth__envelope__get_packed_size(env)))) abort();
        len[0] = booth__envelope__pack(env, packed);
        frame[0] = packed;
        patch(env, NULL, &saved);
    } else if (env && sock == S.co && env->body_case == BOOTH__ENVELOPE__BODY_ERROR && env->error->fatal) {
        /* the coordinator's fatal Error stops the worker, by design (as in s_coordinator_message): sent
         * as a plain Error, which ends the worker's wait all the same */
        env->error->fatal = false;
        if (!(packed = malloc(booth__envelope__get_packed_size(env)))) abort();
        len[0] = booth__envelope__pack(env, packed);
        frame[0] = packed;
    }
    if (env) booth__envelope__free_unpacked(env, NULL);
    zmq_msg_t r;
    zmq_msg_init(&r);
    zmq_msg_copy(&r, (zmq_msg_t *)rid);
    zmq_msg_send(&r, sock, ZMQ_SNDMORE);
    for (int i = 0; i < n; i++) zmq_send(sock, frame[i], len[i], i + 1 < n ? ZMQ_SNDMORE : 0);
    free(packed);
}

static void s_answer_pull(fz_in_t *in, const zmq_msg_t *rid, int64_t version);

static void s_ack_push(pr_msg_t *m)
{
    Booth__PushAck a = BOOTH__PUSH_ACK__INIT;
    a.job_id = m->env->push->job_id;
    a.step = m->env->push->step;
    a.micro = m->env->push->micro;
    a.accepted = true;
    Booth__Envelope env = PR_ENVELOPE_INIT(PUSH_ACK, push_ack, &a);
    pr_send(S.ps, &m->routing_id, &env, NULL, 0);
}

/* Waits for the worker's Hello after Error{reregister}, serving it meanwhile as s_other does and
 * as a PS with no weights: a Pull at the harness's PS (a fuzzed task's, see s_patch_task) is
 * refused at once, a Push acknowledged. */
static void s_wait_hello(void)
{
    double t0 = s_now();
    while (s_now() - t0 < 60) {
        zmq_pollitem_t items[2] = {{S.co, 0, ZMQ_POLLIN, 0}, {S.ps, 0, ZMQ_POLLIN, 0}};
        if (zmq_poll(items, 2, 100) <= 0) continue;
        pr_msg_t m;
        if ((items[1].revents & ZMQ_POLLIN) && pr_recv(S.ps, true, 64 << 20, &m) == BT_OK) {
            if (m.env->body_case == BOOTH__ENVELOPE__BODY_PULL) {
                Booth__Error e = BOOTH__ERROR__INIT;
                e.message = "no weights for this job here";
                Booth__Envelope q = PR_ENVELOPE_INIT(ERROR, error, &e);
                pr_send(S.ps, &m.routing_id, &q, NULL, 0);
            } else if (m.env->body_case == BOOTH__ENVELOPE__BODY_PUSH) {
                s_ack_push(&m);
            }
            pr_msg_free(&m);
        }
        if ((items[0].revents & ZMQ_POLLIN) && pr_recv(S.co, true, 64 << 20, &m) == BT_OK) {
            bool hello = s_is_hello(&m, NULL);
            if (!hello) s_other(&m, NULL);
            pr_msg_free(&m);
            if (hello) return;
        }
    }
    fz_bug("no Hello in 60 s after an Error{reregister}");
}

/* Waits for task id's result, serving the worker meanwhile: a Pull at the harness's PS is answered
 * with the input (pull_answer; NULL: none expected), a Push acknowledged, a Hello welcomed, another
 * job's GetJob refused. A worker that dropped the input as malformed (its log says so), or is
 * without a result S_NUDGE_S after it (it may have skipped it), is waiting for an answer that will not
 * come: it gets an Error at `nudge`, the socket it waits on, as a real peer's timeout would end its
 * wait, only sooner. (A worker still busy with a good answer meets that Error later: an idle worker
 * logs it, a PS reply is drained before its next request.) */
static void s_wait_result(uint64_t id, fz_in_t *pull_answer, void *nudge)
{
    bool pulled = false, nudged = false;
    zmq_msg_t nudge_rid;
    zmq_msg_init(&nudge_rid);
    if (nudge == S.co) zmq_msg_copy(&nudge_rid, &S.rid);
    double t0 = s_now(), answered = nudge == S.co ? t0 : -1; /* when the input went out */
    int dropped = fz_dropped();
    while (s_now() - t0 < 60) {
        /* dropped as malformed (the worker said so): no answer will come; else give it S_NUDGE_S */
        if (!nudged && answered >= 0 && (fz_dropped() > dropped || s_now() - answered > S_NUDGE_S)) {
            Booth__Error e = BOOTH__ERROR__INIT;
            e.message = "nothing more for you";
            Booth__Envelope q = PR_ENVELOPE_INIT(ERROR, error, &e);
            pr_send(nudge, &nudge_rid, &q, NULL, 0);
            nudged = true;
        }
        zmq_pollitem_t items[2] = {{S.co, 0, ZMQ_POLLIN, 0}, {S.ps, 0, ZMQ_POLLIN, 0}};
        /* wake for the nudge when it is due, not a whole poll later */
        int wait_ms = 100;
        if (!nudged && answered >= 0) wait_ms = (int)((answered + S_NUDGE_S - s_now()) * 1000) + 1;
        if (zmq_poll(items, 2, wait_ms < 1 ? 1 : wait_ms > 100 ? 100 : wait_ms) <= 0) continue;
        pr_msg_t m;
        if (items[1].revents & ZMQ_POLLIN) {
            if (pr_recv(S.ps, true, 64 << 20, &m) == BT_OK) {
                int body = m.env->body_case;
                if (body == BOOTH__ENVELOPE__BODY_PULL && !pulled && pull_answer) {
                    pulled = true;
                    answered = s_now();
                    dropped = fz_dropped();
                    zmq_msg_copy(&nudge_rid, &m.routing_id);
                    s_answer_pull(pull_answer, &m.routing_id, m.env->pull->version);
                } else if (body == BOOTH__ENVELOPE__BODY_PUSH) {
                    s_ack_push(&m);
                }
            }
            pr_msg_free(&m);
        }
        if ((items[0].revents & ZMQ_POLLIN) && pr_recv(S.co, true, 64 << 20, &m) == BT_OK) {
            bool result = s_is_result(&m, &id);
            if (!result) s_other(&m, NULL);
            pr_msg_free(&m);
            if (result) {
                zmq_msg_close(&nudge_rid);
                return;
            }
        }
    }
    fz_bug("no result for task %llu in 60 s (%s)", (unsigned long long)id,
           pulled ? "after the PS's answer" : pull_answer ? "no pull either" : "after the JobData");
}

/* A MICROBATCH task of a fresh job; the input answers its GetJob. */
static void s_job_data(fz_in_t *in)
{
    char job[64];
    uint64_t id = ++S.task;
    snprintf(job, sizeof job, "fzjob-%" PRIu64, id);
    Booth__Task t = BOOTH__TASK__INIT;
    t.task_id = id;
    t.job_id = job;
    t.kind = BOOTH__TASK__KIND__MICROBATCH;
    t.job_json = S_JOB;
    t.data_hash = id;
    Booth__Envelope q = PR_ENVELOPE_INIT(TASK, task, &t);
    s_send(&q);
    fz_wait(S.co, true, s_is_get_job, s_other, job, 60000, "a MICROBATCH task");

    /* the input, with the job id the worker waits for when it is a JobData */
    s_send_answer(S.co, &S.rid, in, BOOTH__ENVELOPE__BODY_JOB_DATA, s_patch_job_data, job);
    s_wait_result(id, NULL, S.co);
}

/* The input, as the PS's answer to the worker's Pull from routing id rid (a Weights gets the job and
 * version asked for). */
static void s_answer_pull(fz_in_t *in, const zmq_msg_t *rid, int64_t version)
{
    s_send_answer(S.ps, rid, in, BOOTH__ENVELOPE__BODY_WEIGHTS, s_patch_weights, &version);
}

/* Task MICROBATCH of job fzps at a new version (so the worker pulls), its PS the harness; the
 * input answers the Pull, pushes are acknowledged, and the task's result ends it. */
static void s_ps_reply(fz_in_t *in)
{
    uint64_t id = ++S.task;
    Booth__PsInfo pi = BOOTH__PS_INFO__INIT;
    pi.endpoint = S.ps_ep;
    pi.public_key = "";
    Booth__PsInfo *pis[1] = {&pi};
    Booth__Task t = BOOTH__TASK__INIT;
    t.task_id = id;
    t.job_id = "fzps";
    t.kind = BOOTH__TASK__KIND__MICROBATCH;
    t.job_json = S_JOB;
    t.data_hash = 1;
    t.step = 0;
    t.micro = 0;
    t.version = (int64_t)id;
    t.n_ps = 1;
    t.ps = pis;
    Booth__Envelope q = PR_ENVELOPE_INIT(TASK, task, &t);
    s_send(&q);
    s_wait_result(id, in, S.ps);
}

FUZZ_TARGET(worker)
{
    if (!S.ctx) s_start();
    fz_in_t in = {data, size};
    switch (fz_u8(&in) % 3) {
    case 0: s_coordinator_message(&in); break;
    case 1: s_job_data(&in); break;
    default: s_ps_reply(&in); break;
    }
    return 0;
}
