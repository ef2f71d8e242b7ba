/*
 * test_hostile.c — the real `booth coordinator` and `booth ps` processes under
 * hostile frames on loopback: garbage bytes, a wrong protocol version, a
 * message with fewer frames than it describes, a frame of the wrong length and
 * one over --max-message-mb are each dropped with a log line naming the peer,
 * and the process goes on answering valid requests. (An oversized frame is cut
 * by libzmq itself, ZMQ_MAXMSGSIZE: it drops that connection, the peer
 * reconnects, and the test's next request is answered. Plain TCP: with CURVE an
 * unknown peer's frames never reach booth at all, which test_wire and
 * tests/cli/cluster.sh show.)
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/fileio.h"
#include "proto/wire.h"
#include "test.h"
#include "testutil.h"

typedef struct {
    pid_t pid;
    char log[600];
    char ep[256];
} s_proc_t;

/* Starts `booth ARGS...` with stderr into a log; waits for "listening on ENDPOINT" in it. */
static bool s_start(s_proc_t *p, const char *name, const char *const *args)
{
    const char *booth = getenv("BOOTH");
    memset(p, 0, sizeof *p);
    if (!booth) return false;
    snprintf(p->log, sizeof p->log, "%s/%s.log", tu_tmpdir(), name);
    p->pid = fork();
    if (p->pid == 0) {
        if (!freopen(p->log, "w", stderr)) _exit(127);
        const char *argv[32] = {booth};
        int n = 1;
        for (; args[n - 1] && n < 31; n++) argv[n] = args[n - 1];
        argv[n] = NULL;
        execv(booth, (char *const *)argv);
        _exit(127);
    }
    for (int i = 0; i < 200; i++) {
        char *text = NULL;
        size_t len;
        if (access(p->log, R_OK) == 0 && bt_read_file(p->log, &text, &len) == 0) {
            const char *at = strstr(text, "listening on ");
            if (at && sscanf(at + 13, "%255[^ ,\n]", p->ep) == 1) {
                free(text);
                return true;
            }
            free(text);
        }
        usleep(50000);
    }
    return false;
}

/* SIGTERM, then the exit status (-1 if it had to be killed). */
static int s_stop(s_proc_t *p)
{
    if (p->pid <= 0) return -1;
    kill(p->pid, SIGTERM);
    for (int i = 0; i < 100; i++) {
        int st;
        if (waitpid(p->pid, &st, WNOHANG) == p->pid) return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        usleep(50000);
    }
    kill(p->pid, SIGKILL);
    waitpid(p->pid, NULL, 0);
    return -1;
}

static int s_log_count(const s_proc_t *p, const char *needle)
{
    char *text = NULL;
    size_t len;
    int n = 0;
    if (bt_read_file(p->log, &text, &len)) return 0;
    for (const char *at = text; (at = strstr(at, needle)); at++) n++;
    free(text);
    return n;
}

/* Raw multipart message: frames given as (data, len) pairs. */
static void s_raw(void *sock, int n, const void *const *data, const size_t *len)
{
    for (int i = 0; i < n; i++) zmq_send(sock, data[i], len[i], i + 1 < n ? ZMQ_SNDMORE : 0);
}

/* A packed envelope of body `body` with `version`, describing nblobs F32 blobs of nbytes each. */
static size_t s_pack(uint8_t *buf, Booth__Envelope *env, int version, int nblobs, size_t nbytes)
{
    Booth__Blob b = BOOTH__BLOB__INIT, *bp[4] = {&b, &b, &b, &b};
    int64_t shape[1] = {(int64_t)(nbytes / 4)};
    b.name = "x";
    b.kind = BOOTH__BLOB__KIND__F32;
    b.n_shape = 1;
    b.shape = shape;
    b.nbytes = nbytes;
    env->version = (Booth__Protocol)version;
    env->n_blobs = (size_t)nblobs;
    env->blobs = bp;
    size_t n = booth__envelope__pack(env, buf);
    env->n_blobs = 0;
    env->blobs = NULL;
    return n;
}

/* Sends every kind of hostile message through `sock`; body: a valid body to dress them in. */
static void s_hostile(void *sock, Booth__Envelope *env)
{
    static uint8_t buf[4096];
    static char big[3 << 20];
    const char garbage[] = "\x0a\xff\xff\xff\xff\x0f not protobuf at all";
    s_raw(sock, 1, (const void *[]){garbage}, (size_t[]){sizeof garbage});
    size_t n = s_pack(buf, env, 99, 0, 0); /* another protocol version */
    s_raw(sock, 1, (const void *[]){buf}, &n);
    float f[4] = {0};
    n = s_pack(buf, env, BOOTH__PROTOCOL__PROTOCOL_VERSION, 2, 16); /* two blobs described, one sent */
    s_raw(sock, 2, (const void *[]){buf, f}, (size_t[]){n, 16});
    n = s_pack(buf, env, BOOTH__PROTOCOL__PROTOCOL_VERSION, 1, 16); /* a frame of the wrong length */
    s_raw(sock, 2, (const void *[]){buf, f}, (size_t[]){n, 12});
    n = s_pack(buf, env, BOOTH__PROTOCOL__PROTOCOL_VERSION, 1, sizeof big); /* over --max-message-mb 1 */
    s_raw(sock, 2, (const void *[]){buf, big}, (size_t[]){n, sizeof big});
}

/* Sends env (valid) and waits up to 10 s for a reply of body `want`, resending if the
 * connection was dropped (libzmq drops a peer that sends an oversized frame). */
static bool s_answered(void *sock, Booth__Envelope *env, int want)
{
    for (int attempt = 0; attempt < 20; attempt++) {
        if (pr_send(sock, NULL, env, NULL, 0)) return false;
        pr_msg_t m;
        int rc = pr_recv(sock, false, 1 << 20, &m);
        bool ok = rc == 0 && (int)m.env->body_case == want;
        pr_msg_free(&m);
        if (ok) return true;
    }
    return false;
}

static void *s_dealer(void *ctx, const char *ep)
{
    pr_sockopts_t o = {.max_bytes = 1 << 20, .insecure = true, .send_timeout_ms = 2000};
    void *s = pr_dealer_connect(ctx, ep, &o);
    int ms = 500;
    if (s) zmq_setsockopt(s, ZMQ_RCVTIMEO, &ms, sizeof ms);
    return s;
}

TEST_TIMEOUT(hostile_frames_leave_the_coordinator_serving, 120)
{
    char state[600];
    snprintf(state, sizeof state, "%s/state", tu_tmpdir());
    s_proc_t co;
    const char *args[] = {"coordinator", "--insecure", "--bind", "tcp://127.0.0.1:*", "--state-dir", state,
                          "--max-message-mb", "1", NULL};
    REQUIRE(s_start(&co, "coordinator", args));
    void *ctx = zmq_ctx_new(), *sock = s_dealer(ctx, co.ep);
    REQUIRE(sock);
    Booth__StatusRequest sr = BOOTH__STATUS_REQUEST__INIT;
    Booth__Envelope env = PR_ENVELOPE_INIT(STATUS_REQUEST, status_request, &sr);
    CHECK(s_answered(sock, &env, BOOTH__ENVELOPE__BODY_STATUS_REPLY));
    for (int round = 0; round < 3; round++) {
        s_hostile(sock, &env);
        CHECKF(s_answered(sock, &env, BOOTH__ENVELOPE__BODY_STATUS_REPLY), "no answer after hostile round %d", round);
    }
    /* a well-formed message that makes no sense here, and a task result from a stranger */
    Booth__Applied ap = BOOTH__APPLIED__INIT;
    ap.job_id = "job-999999";
    Booth__Envelope env2 = PR_ENVELOPE_INIT(APPLIED, applied, &ap);
    pr_send(sock, NULL, &env2, NULL, 0);
    CHECK(s_answered(sock, &env, BOOTH__ENVELOPE__BODY_STATUS_REPLY));
    zmq_close(sock);
    zmq_ctx_term(ctx);
    CHECK_INT_EQ(s_stop(&co), 0);
    CHECK(s_log_count(&co, "not a booth envelope") + s_log_count(&co, "does not decode") +
              s_log_count(&co, "malformed") >= 1);
    CHECK(s_log_count(&co, "protocol version") >= 3);
    CHECK(s_log_count(&co, "has not said hello") == 1);
    printf("coordinator log:\n");
    fflush(stdout);
    char *text = NULL;
    size_t len;
    if (bt_read_file(co.log, &text, &len) == 0) fputs(text, stdout);
    free(text);
}

TEST_TIMEOUT(hostile_frames_leave_the_ps_serving, 120)
{
    s_proc_t ps;
    const char *args[] = {"ps", "--insecure", "--coordinator", "tcp://127.0.0.1:1", "--bind", "tcp://127.0.0.1:*",
                          "--max-message-mb", "1", NULL};
    REQUIRE(s_start(&ps, "ps", args));
    void *ctx = zmq_ctx_new(), *sock = s_dealer(ctx, ps.ep);
    REQUIRE(sock);
    Booth__Pull pull = BOOTH__PULL__INIT;
    pull.job_id = "job-000001";
    Booth__Envelope env = PR_ENVELOPE_INIT(PULL, pull, &pull);
    CHECK(s_answered(sock, &env, BOOTH__ENVELOPE__BODY_ERROR)); /* no such job: an answer, not a crash */
    for (int round = 0; round < 3; round++) {
        s_hostile(sock, &env);
        CHECKF(s_answered(sock, &env, BOOTH__ENVELOPE__BODY_ERROR), "no answer after hostile round %d", round);
    }
    zmq_close(sock);
    zmq_ctx_term(ctx);
    CHECK_INT_EQ(s_stop(&ps), 0);
    CHECK(s_log_count(&ps, "protocol version") >= 3);
}
