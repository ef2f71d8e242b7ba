/*
 * fuzz_ps.c — the parameter server's message handlers (ps/ps.c, ps/store.c):
 * a live `booth ps` in a thread, the harness as its coordinator and as a worker,
 * on loopback.
 *
 * Before each input the coordinator loads job "fz" (two tensors, two
 * micro-batches per step), so the handlers work on a real state. The input's
 * first byte says who speaks (even: the coordinator, odd: a worker); the rest
 * is one multipart message, frames as fz_piece pieces (the envelope, then blob
 * frames). Then the harness asks a question on the same connection — GetState
 * or Pull of a job that does not exist — and the PS must answer it: the PS
 * neither crashed nor hung nor stopped serving that peer.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ps/ps.h"
#include "tests/fuzz/fuzz.h"

static struct {
    void *ctx, *co, *wk;
    zmq_msg_t rid; /* the PS's routing id at the coordinator's ROUTER */
    ps_opts_t opts;
    char co_ep[256], ps_ep[256];
    pthread_t thread;
    int64_t n;
} S;

static void *s_ps_main(void *arg)
{
    int rc = ps_run(arg);
    fz_bug("the parameter server stopped (status %d)", rc);
}

static void s_welcome(const zmq_msg_t *rid)
{
    Booth__Welcome w = BOOTH__WELCOME__INIT;
    w.peer_id = "ps-fuzz";
    w.heartbeat_ms = 3600 * 1000;
    Booth__Envelope env = PR_ENVELOPE_INIT(WELCOME, welcome, &w);
    pr_send(S.co, rid, &env, NULL, 0);
}

/* At the coordinator's socket: a Hello (again, after an Error{reregister}) is welcomed. */
static bool s_co_other(pr_msg_t *m, void *user)
{
    (void)user;
    if (m->env->body_case == BOOTH__ENVELOPE__BODY_HELLO) s_welcome(&m->routing_id);
    return false;
}

static bool s_is_hello(pr_msg_t *m, void *user)
{
    (void)user;
    if (m->env->body_case != BOOTH__ENVELOPE__BODY_HELLO) return false;
    zmq_msg_init(&S.rid);
    zmq_msg_copy(&S.rid, &m->routing_id);
    snprintf(S.ps_ep, sizeof S.ps_ep, "%s", m->env->hello->endpoint ? m->env->hello->endpoint : "");
    s_welcome(&m->routing_id);
    return true;
}

static bool s_is_loaded(pr_msg_t *m, void *user)
{
    (void)user;
    return m->env->body_case == BOOTH__ENVELOPE__BODY_PS_LOADED ||
           (m->env->body_case == BOOTH__ENVELOPE__BODY_ERROR && m->env->error->message &&
            strstr(m->env->error->message, "ps_load of job fz "));
}

/* The Error that answers the sync question (its text names the job asked for). */
static bool s_is_sync(pr_msg_t *m, void *user)
{
    return m->env->body_case == BOOTH__ENVELOPE__BODY_ERROR && m->env->error->message &&
           strstr(m->env->error->message, (const char *)user);
}

static void s_start(void)
{
    S.ctx = zmq_ctx_new();
    S.co = fz_router(S.ctx, S.co_ep, sizeof S.co_ep);
    S.opts = (ps_opts_t){.node = {.insecure = true}, .coordinator = S.co_ep, .bind = "tcp://127.0.0.1:*",
                         .threads = 1};
    if (pthread_create(&S.thread, NULL, s_ps_main, &S.opts)) fz_bug("cannot start the PS thread");
    fz_wait(S.co, true, s_is_hello, NULL, NULL, 20000, "the PS's Hello");
    S.wk = fz_dealer(S.ctx, S.ps_ep);
}

/* Job "fz": tensors a [2, 3] and b [4, 1], step 3, two micro-batches per step. */
static void s_load(void)
{
    static const float zero[8] = {0}, w[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    static const int64_t sa[2] = {2, 3}, sb[2] = {4, 1};
    pr_blob_t blobs[6] = {pr_blob_of_f32("p/a", w, 2, sa), pr_blob_of_f32("m/a", zero, 2, sa),
                          pr_blob_of_f32("v/a", zero, 2, sa), pr_blob_of_f32("p/b", w, 2, sb),
                          pr_blob_of_f32("m/b", zero, 2, sb), pr_blob_of_f32("v/b", zero, 2, sb)};
    int32_t index[2] = {0, 1};
    Booth__PsLoad l = BOOTH__PS_LOAD__INIT;
    l.job_id = "fz";
    l.job_json = "{}";
    l.step = 3;
    l.microbatches = 2;
    l.n_index = 2;
    l.index = index;
    Booth__Envelope env = PR_ENVELOPE_INIT(PS_LOAD, ps_load, &l);
    pr_send(S.co, &S.rid, &env, blobs, 6);
    fz_wait(S.co, true, s_is_loaded, s_co_other, NULL, 20000, "the PsLoad of job fz");
}

FUZZ_TARGET(ps)
{
    if (!S.ctx) s_start();
    s_load();
    fz_in_t in = {data, size};
    bool from_worker = fz_u8(&in) & 1;
    /* what the daemon is told to stop by is not a finding: the coordinator's fatal Error */
    fz_in_t peek = in;
    size_t len;
    const uint8_t *first = fz_piece(&peek, &len);
    Booth__Envelope *env = booth__envelope__unpack(NULL, len, first);
    bool fatal = env && env->body_case == BOOTH__ENVELOPE__BODY_ERROR && env->error->fatal;
    if (env) booth__envelope__free_unpacked(env, NULL);
    if (fatal && !from_worker) return 0;

    fz_send_input(from_worker ? S.wk : S.co, from_worker ? NULL : &S.rid, &in, &env);
    if (env) booth__envelope__free_unpacked(env, NULL);

    char job[64];
    snprintf(job, sizeof job, "sync-%" PRId64, S.n++);
    char want[96];
    if (from_worker) {
        Booth__Pull p = BOOTH__PULL__INIT;
        p.job_id = job;
        Booth__Envelope q = PR_ENVELOPE_INIT(PULL, pull, &p);
        pr_send(S.wk, NULL, &q, NULL, 0);
        snprintf(want, sizeof want, "pull of job %s version", job);
        fz_wait(S.wk, false, s_is_sync, NULL, want, 20000, "a worker's Pull");
    } else {
        Booth__GetState g = BOOTH__GET_STATE__INIT;
        g.job_id = job;
        Booth__Envelope q = PR_ENVELOPE_INIT(GET_STATE, get_state, &g);
        pr_send(S.co, &S.rid, &q, NULL, 0);
        snprintf(want, sizeof want, "get_state of job %s refused", job);
        fz_wait(S.co, true, s_is_sync, s_co_other, want, 20000, "the coordinator's GetState");
    }
    return 0;
}
