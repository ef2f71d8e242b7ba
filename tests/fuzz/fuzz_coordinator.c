/*
 * fuzz_coordinator.c — the coordinator's message handlers (coordinator/):
 * a live `booth coordinator` in a thread (its state folder in memory), the
 * harness as a client, a worker and a parameter server on loopback.
 *
 * The input's first byte picks the sender (0: a client that never said hello,
 * 1: a registered worker, 2: a registered PS; the worker and the PS say hello
 * again before each input, so a hostile Hello cannot leave them unknown); the
 * rest is one multipart message, frames as fz_piece pieces. Then the harness
 * asks for the status on the same connection and the coordinator must answer:
 * it neither crashed nor hung nor stopped serving that peer. Jobs the inputs
 * submit stay queued and running; their tasks and loads reach the harness's
 * worker and PS, which never answer them.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/coordinator.h"
#include "tests/fuzz/fuzz.h"

static struct {
    void *ctx, *peer[3];
    co_opts_t opts;
    char ep[64], state[700];
    pthread_t thread;
} S;

static void *s_main(void *arg)
{
    int rc = co_run(arg);
    fz_bug("the coordinator stopped (status %d)", rc);
}

static bool s_is_welcome(pr_msg_t *m, void *user)
{
    (void)user;
    return m->env->body_case == BOOTH__ENVELOPE__BODY_WELCOME;
}

static bool s_is_status(pr_msg_t *m, void *user)
{
    (void)user;
    return m->env->body_case == BOOTH__ENVELOPE__BODY_STATUS_REPLY;
}

static void s_hello(int who)
{
    Booth__Hello h = BOOTH__HELLO__INIT;
    h.name = who == 1 ? "fuzz-worker" : "fuzz-ps";
    if (who == 1) {
        h.role = BOOTH__ROLE__ROLE_WORKER;
        h.model_hash = "0123456789abcdef";
        h.vae_hash = "fedcba9876543210";
        h.model_weights = "exact";
        h.sampler = "pndm";
        h.latent_channels = 4;
        h.model_dir = "tests/fixtures/tiny-sd";
        h.threads = 1;
    } else {
        h.role = BOOTH__ROLE__ROLE_PS;
        h.endpoint = "tcp://127.0.0.1:9";
        h.public_key = "";
        h.threads = 1;
    }
    Booth__Envelope env = PR_ENVELOPE_INIT(HELLO, hello, &h);
    pr_send(S.peer[who], NULL, &env, NULL, 0);
    fz_wait(S.peer[who], false, s_is_welcome, NULL, NULL, 20000, "a Hello");
}

static void s_start(void)
{
    snprintf(S.state, sizeof S.state, "%s/coordinator-state", fz_dir());
    snprintf(S.ep, sizeof S.ep, "tcp://127.0.0.1:%d", fz_free_port());
    S.opts = (co_opts_t){.bind = S.ep, .state_dir = S.state, .node = {.insecure = true},
                         .heartbeat_ms = 3600 * 1000, .dead_after_ms = 4 * 3600 * 1000};
    if (pthread_create(&S.thread, NULL, s_main, &S.opts)) fz_bug("cannot start the coordinator thread");
    S.ctx = zmq_ctx_new();
    for (int i = 0; i < 3; i++) S.peer[i] = fz_dealer(S.ctx, S.ep);
}

FUZZ_TARGET(coordinator)
{
    if (!S.ctx) s_start();
    fz_in_t in = {data, size};
    int who = fz_u8(&in) % 3;
    if (who) s_hello(who);
    Booth__Envelope *env;
    fz_send_input(S.peer[who], NULL, &in, &env);
    if (env) booth__envelope__free_unpacked(env, NULL);
    Booth__StatusRequest sr = BOOTH__STATUS_REQUEST__INIT;
    Booth__Envelope q = PR_ENVELOPE_INIT(STATUS_REQUEST, status_request, &sr);
    pr_send(S.peer[who], NULL, &q, NULL, 0);
    fz_wait(S.peer[who], false, s_is_status, NULL, NULL, 20000, "a StatusRequest");
    return 0;
}
