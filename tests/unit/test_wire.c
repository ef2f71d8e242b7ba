/*
 * test_wire.c — the wire layer (proto/wire.h, proto/keys.h) on loopback sockets:
 * a round trip with F32 and BYTES blobs and a reply routed back; every kind of
 * malformed message dropped with one warning naming the peer while the next valid
 * one on the same socket still arrives; a float blob read from an unaligned frame;
 * send errors; endpoints; CURVE with the ZAP handler letting an allow-listed key in
 * and keeping an unknown one (and a plain client) out; key files and allow-lists.
 *
 * Every test bounds its waits (ZMQ_RCVTIMEO, poll deadlines) and closes every
 * socket and context it opens.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "common/log.h"
#include "common/status.h"
#include "proto/keys.h"
#include "proto/wire.h"
#include "test.h"
#include "testutil.h"

#define MAX_BYTES (1u << 20)

/* ---- log capture --------------------------------------------------------------- */

static char s_log[64][1024];
static int s_nlog;

static void s_sink(bt_log_level_t level, const char *msg, void *user)
{
    if (s_nlog < 64) snprintf(s_log[s_nlog++], sizeof s_log[0], "%s", msg);
    fprintf(stderr, "log: %s\n", msg);
}

/* Lines logged so far that contain every non-NULL needle. */
static int s_logged(const char *a, const char *b)
{
    int n = 0;
    for (int i = 0; i < s_nlog; i++)
        if (strstr(s_log[i], a) && (!b || strstr(s_log[i], b))) n++;
    return n;
}

/* ---- helpers -------------------------------------------------------------------- */

typedef struct {
    void *ctx, *router, *dealer;
    char ep[256];
} s_pair_t;

static void s_timeouts(void *sock, int ms)
{
    zmq_setsockopt(sock, ZMQ_RCVTIMEO, &ms, sizeof ms);
}

/* A plain ROUTER on a free loopback port and a DEALER connected to it. */
static bool s_pair_open(s_pair_t *p)
{
    memset(p, 0, sizeof *p);
    p->ctx = zmq_ctx_new();
    pr_sockopts_t o = {.max_bytes = MAX_BYTES, .insecure = true, .send_timeout_ms = 2000};
    p->router = p->ctx ? pr_router_bind(p->ctx, "tcp://127.0.0.1:*", &o) : NULL;
    if (!p->router || pr_last_endpoint(p->router, p->ep, sizeof p->ep)) return false;
    p->dealer = pr_dealer_connect(p->ctx, p->ep, &o);
    if (!p->dealer) return false;
    s_timeouts(p->router, 3000);
    s_timeouts(p->dealer, 3000);
    return true;
}

static void s_pair_close(s_pair_t *p)
{
    if (p->dealer) zmq_close(p->dealer);
    if (p->router) zmq_close(p->router);
    if (p->ctx) zmq_ctx_term(p->ctx);
    memset(p, 0, sizeof *p);
}

/* A valid Heartbeat with state `state` and no blobs, sent from the DEALER. */
static int s_send_heartbeat(void *dealer, const char *state)
{
    Booth__Heartbeat hb = BOOTH__HEARTBEAT__INIT;
    hb.state = (char *)state;
    Booth__Envelope env = PR_ENVELOPE_INIT(HEARTBEAT, heartbeat, &hb);
    return pr_send(dealer, NULL, &env, NULL, 0);
}

/* Sends raw frames as one multipart message. */
static void s_send_raw(void *sock, const void *const *data, const size_t *len, int n)
{
    for (int i = 0; i < n; i++) CHECK(zmq_send(sock, data[i], len[i], i + 1 < n ? ZMQ_SNDMORE : 0) >= 0);
}

static double s_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* ---- round trip ------------------------------------------------------------------ */

TEST_TIMEOUT(wire_round_trip_blobs_and_routed_reply, 20)
{
    bt_log_set_sink(s_sink, NULL);
    s_pair_t p;
    REQUIRE(s_pair_open(&p));

    float w[2 * 3 * 5], g[1000];
    for (int i = 0; i < 30; i++) w[i] = (float)i * 0.25f - 3.0f;
    for (int i = 0; i < 1000; i++) g[i] = 1.0f / (float)(i + 1);
    const char png[] = "\x89PNG\r\n\x1a\n not really";
    pr_blob_t blobs[3] = {
        pr_blob_of_f32("w", w, 3, (const int64_t[]){2, 3, 5}),
        pr_blob_of_bytes("grid.png", png, sizeof png),
        pr_blob_of_f32("g", g, 1, (const int64_t[]){1000}),
    };
    Booth__Push push = BOOTH__PUSH__INIT;
    push.job_id = "job-1";
    push.step = 7;
    push.micro = 3;
    Booth__Envelope env = PR_ENVELOPE_INIT(PUSH, push, &push);
    CHECK_INT_EQ(pr_send(p.dealer, NULL, &env, blobs, 3), 0);
    CHECK(env.n_blobs == 0 && env.blobs == NULL); /* restored: env can be sent again */

    pr_msg_t m;
    REQUIRE(pr_recv(p.router, true, MAX_BYTES, &m) == 0);
    CHECK(m.routed);
    CHECK(m.key[0] == '\0'); /* plain socket: no CURVE key */
    CHECKF(strstr(m.peer, "@127.0.0.1") != NULL, "peer '%s'", m.peer);
    REQUIRE(m.env->body_case == BOOTH__ENVELOPE__BODY_PUSH);
    CHECK(!strcmp(pr_body_name(m.env->body_case), "push"));
    CHECK(!strcmp(m.env->push->job_id, "job-1"));
    CHECK_INT_EQ(m.env->push->step, 7);
    CHECK_INT_EQ(m.env->push->micro, 3);
    REQUIRE(m.env->n_blobs == 3);
    CHECK_INT_EQ(m.env->blobs[0]->n_shape, 3);
    CHECK_INT_EQ(m.env->blobs[0]->shape[2], 5);

    int64_t n = 0;
    const float *rw = pr_blob_f32(&m, "w", &n);
    REQUIRE(rw);
    CHECK_INT_EQ(n, 30);
    CHECK(!memcmp(rw, w, sizeof w));
    const float *rg = pr_blob_f32(&m, "g", &n);
    REQUIRE(rg);
    CHECK_INT_EQ(n, 1000);
    CHECK(!memcmp(rg, g, sizeof g));
    size_t nb = 0;
    const uint8_t *rpng = pr_blob_bytes(&m, "grid.png", &nb);
    REQUIRE(rpng);
    CHECK_INT_EQ(nb, sizeof png);
    CHECK(!memcmp(rpng, png, sizeof png));
    /* wrong kind and missing names: NULL and a warning naming the peer */
    s_nlog = 0;
    CHECK(pr_blob_f32(&m, "grid.png", &n) == NULL);
    CHECK(pr_blob_f32(&m, "nope", &n) == NULL);
    CHECK(pr_blob_find(&m, "nope") == -1);
    CHECK_INT_EQ(s_logged(m.peer, "expected F32"), 1);
    CHECK_INT_EQ(s_logged(m.peer, "no blob 'nope'"), 1);

    /* the reply goes back by the routing id, with a blob of its own */
    Booth__PushAck ack = BOOTH__PUSH_ACK__INIT;
    ack.job_id = "job-1";
    ack.step = 7;
    ack.micro = 3;
    ack.accepted = true;
    Booth__Envelope renv = PR_ENVELOPE_INIT(PUSH_ACK, push_ack, &ack);
    float one = 42.5f;
    pr_blob_t rb = pr_blob_of_f32("x", &one, 0, NULL);
    CHECK_INT_EQ(pr_send(p.router, &m.routing_id, &renv, &rb, 1), 0);
    pr_msg_free(&m);
    pr_msg_free(&m); /* safe twice */

    pr_msg_t r;
    REQUIRE(pr_recv(p.dealer, false, MAX_BYTES, &r) == 0);
    CHECK(!r.routed);
    CHECKF(!strcmp(r.peer, p.ep), "peer '%s', endpoint '%s'", r.peer, p.ep);
    REQUIRE(r.env->body_case == BOOTH__ENVELOPE__BODY_PUSH_ACK);
    CHECK(r.env->push_ack->accepted);
    CHECK_INT_EQ(r.env->push_ack->step, 7);
    const float *x = pr_blob_f32(&r, "x", &n);
    CHECK(x && n == 1 && *x == 42.5f);
    pr_msg_name_peer(&r, "coordinator");
    CHECKF(!strncmp(r.peer, "coordinator (", 13), "peer '%s'", r.peer);
    pr_msg_free(&r);

    /* nothing more queued */
    CHECK_INT_EQ(pr_recv_nowait(p.dealer, false, MAX_BYTES, &r), BT_EAGAIN);
    pr_msg_free(&r);
    s_pair_close(&p);
    bt_log_set_sink(NULL, NULL);
}

/* ZeroMQ may hand over a frame at any address; over inproc a frame made with
 * zmq_msg_init_data keeps its pointer, so an odd one reaches pr_blob_f32 as is. */
TEST_TIMEOUT(wire_f32_blob_from_unaligned_frame, 20)
{
    void *ctx = zmq_ctx_new();
    pr_sockopts_t o = {.max_bytes = MAX_BYTES, .insecure = true};
    void *router = pr_router_bind(ctx, "inproc://wire-align", &o);
    void *dealer = pr_dealer_connect(ctx, "inproc://wire-align", &o);
    REQUIRE(router && dealer);
    s_timeouts(router, 3000);

    enum { N = 257 };
    static uint8_t buf[4 * N + 8];
    float ref[N];
    for (int i = 0; i < N; i++) ref[i] = (float)i * 1.5f + 0.125f;
    memcpy(buf + 1, ref, sizeof ref);

    Booth__Blob b = BOOTH__BLOB__INIT, *bp = &b;
    b.name = "odd";
    b.kind = BOOTH__BLOB__KIND__F32;
    int64_t shape[1] = {N};
    b.n_shape = 1;
    b.shape = shape;
    b.nbytes = sizeof ref;
    Booth__Heartbeat hb = BOOTH__HEARTBEAT__INIT;
    Booth__Envelope env = PR_ENVELOPE_INIT(HEARTBEAT, heartbeat, &hb);
    env.n_blobs = 1;
    env.blobs = &bp;
    uint8_t packed[256];
    size_t plen = booth__envelope__pack(&env, packed);
    REQUIRE(plen < sizeof packed);
    zmq_msg_t f;
    CHECK(zmq_send(dealer, packed, plen, ZMQ_SNDMORE) >= 0);
    REQUIRE(zmq_msg_init_data(&f, buf + 1, sizeof ref, NULL, NULL) == 0);
    CHECK(zmq_msg_send(&f, dealer, 0) >= 0);

    pr_msg_t m;
    REQUIRE(pr_recv(router, true, MAX_BYTES, &m) == 0);
    CHECKF(((uintptr_t)zmq_msg_data(&m.frames[0]) & 3) != 0, "the frame arrived aligned; the test proves nothing");
    int64_t n = 0;
    const float *x = pr_blob_f32(&m, "odd", &n);
    REQUIRE(x);
    CHECK(((uintptr_t)x & 3) == 0);
    CHECK_INT_EQ(n, N);
    CHECK(!memcmp(x, ref, sizeof ref));
    CHECK(pr_blob_f32(&m, "odd", &n) == x); /* copied once */
    pr_msg_free(&m);
    zmq_close(dealer);
    zmq_close(router);
    zmq_ctx_term(ctx);
}

/* ---- malformed messages ------------------------------------------------------------ */

/* Packs a Heartbeat envelope with `nblobs` identical blob descriptors, as told. */
static size_t s_pack(uint8_t *out, size_t cap, int version, bool body, int nblobs, Booth__Blob__Kind kind,
                     const int64_t *shape, size_t ndim, uint64_t nbytes)
{
    Booth__Blob b[4], *bp[4];
    int64_t sh[8]; /* room for the 5-dimension case */
    if (ndim) memcpy(sh, shape, ndim * sizeof *sh);
    for (int i = 0; i < nblobs; i++) {
        booth__blob__init(&b[i]);
        b[i].name = "t";
        b[i].kind = kind;
        b[i].n_shape = ndim;
        b[i].shape = sh;
        b[i].nbytes = nbytes;
        bp[i] = &b[i];
    }
    Booth__Heartbeat hb = BOOTH__HEARTBEAT__INIT;
    Booth__Envelope env = PR_ENVELOPE_INIT(HEARTBEAT, heartbeat, &hb);
    env.version = (Booth__Protocol)version;
    if (!body) env.body_case = BOOTH__ENVELOPE__BODY__NOT_SET;
    env.n_blobs = (size_t)nblobs;
    env.blobs = bp;
    if (booth__envelope__get_packed_size(&env) > cap) return 0;
    return booth__envelope__pack(&env, out);
}

typedef struct {
    const char *what; /* test case */
    const char *cause; /* a piece of the warning line */
} s_bad_t;

/* Sends bad message number `k` of the table below; false when k is past its end. */
static bool s_send_bad(void *dealer, int k, s_bad_t *info)
{
    static const uint8_t garbage[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01};
    static uint8_t big[8192];
    static float f4[4];
    uint8_t env[256];
    size_t n;
    const void *d[4];
    size_t l[4];
    switch (k) {
    case 0:
        *info = (s_bad_t){"garbage bytes", "does not decode"};
        d[0] = garbage, l[0] = sizeof garbage;
        s_send_raw(dealer, d, l, 1);
        return true;
    case 1: /* two blobs described, one sent */
        *info = (s_bad_t){"truncated message", "1 frames after the envelope for 2 blob descriptors"};
        n = s_pack(env, sizeof env, 1, true, 2, BOOTH__BLOB__KIND__F32, (const int64_t[]){4}, 1, 16);
        d[0] = env, l[0] = n, d[1] = f4, l[1] = 16;
        s_send_raw(dealer, d, l, 2);
        return true;
    case 2:
        *info = (s_bad_t){"frame of the wrong length", "frame of 12 bytes, descriptor says 16"};
        n = s_pack(env, sizeof env, 1, true, 1, BOOTH__BLOB__KIND__F32, (const int64_t[]){4}, 1, 16);
        d[0] = env, l[0] = n, d[1] = f4, l[1] = 12;
        s_send_raw(dealer, d, l, 2);
        return true;
    case 3: /* nbytes matches the frame but not the shape */
        *info = (s_bad_t){"F32 shape and nbytes disagree", "needs 12 bytes, nbytes is 16"};
        n = s_pack(env, sizeof env, 1, true, 1, BOOTH__BLOB__KIND__F32, (const int64_t[]){3}, 1, 16);
        d[0] = env, l[0] = n, d[1] = f4, l[1] = 16;
        s_send_raw(dealer, d, l, 2);
        return true;
    case 4:
        *info = (s_bad_t){"oversized message", "more than the limit of 4096"};
        n = s_pack(env, sizeof env, 1, true, 1, BOOTH__BLOB__KIND__BYTES, NULL, 0, sizeof big);
        d[0] = env, l[0] = n, d[1] = big, l[1] = sizeof big;
        s_send_raw(dealer, d, l, 2);
        return true;
    case 5:
        *info = (s_bad_t){"wrong protocol version", "protocol version 2"};
        n = s_pack(env, sizeof env, 2, true, 0, BOOTH__BLOB__KIND__F32, NULL, 0, 0);
        d[0] = env, l[0] = n;
        s_send_raw(dealer, d, l, 1);
        return true;
    case 6:
        *info = (s_bad_t){"no version (an empty frame)", "protocol version 0"};
        d[0] = "", l[0] = 0;
        s_send_raw(dealer, d, l, 1);
        return true;
    case 7:
        *info = (s_bad_t){"no body", "no body"};
        n = s_pack(env, sizeof env, 1, false, 0, BOOTH__BLOB__KIND__F32, NULL, 0, 0);
        d[0] = env, l[0] = n;
        s_send_raw(dealer, d, l, 1);
        return true;
    case 8:
        *info = (s_bad_t){"negative dimension", "negative dimension or overflows"};
        n = s_pack(env, sizeof env, 1, true, 1, BOOTH__BLOB__KIND__U8, (const int64_t[]){-4, -4}, 2, 16);
        d[0] = env, l[0] = n, d[1] = f4, l[1] = 16;
        s_send_raw(dealer, d, l, 2);
        return true;
    case 9:
        *info = (s_bad_t){"overflowing shape", "negative dimension or overflows"};
        n = s_pack(env, sizeof env, 1, true, 1, BOOTH__BLOB__KIND__F32,
                   (const int64_t[]){INT64_C(1) << 32, INT64_C(1) << 32, 4}, 3, 16);
        d[0] = env, l[0] = n, d[1] = f4, l[1] = 16;
        s_send_raw(dealer, d, l, 2);
        return true;
    case 10:
        *info = (s_bad_t){"more frames than blobs", "3 frames after the envelope for 1 blob descriptors"};
        n = s_pack(env, sizeof env, 1, true, 1, BOOTH__BLOB__KIND__F32, (const int64_t[]){4}, 1, 16);
        d[0] = env, l[0] = n, d[1] = f4, l[1] = 16, d[2] = f4, l[2] = 16, d[3] = f4, l[3] = 16;
        s_send_raw(dealer, d, l, 4);
        return true;
    case 11:
        *info = (s_bad_t){"five dimensions", "5 dimensions, at most 4"};
        n = s_pack(env, sizeof env, 1, true, 1, BOOTH__BLOB__KIND__U8, (const int64_t[]){1, 1, 1, 2, 8}, 5, 16);
        d[0] = env, l[0] = n, d[1] = f4, l[1] = 16;
        s_send_raw(dealer, d, l, 2);
        return true;
    case 12:
        *info = (s_bad_t){"BYTES with a shape", "a BYTES blob has no shape"};
        n = s_pack(env, sizeof env, 1, true, 1, BOOTH__BLOB__KIND__BYTES, (const int64_t[]){16}, 1, 16);
        d[0] = env, l[0] = n, d[1] = f4, l[1] = 16;
        s_send_raw(dealer, d, l, 2);
        return true;
    case 13:
        *info = (s_bad_t){"unknown blob kind", "unknown kind 7"};
        n = s_pack(env, sizeof env, 1, true, 1, (Booth__Blob__Kind)7, (const int64_t[]){16}, 1, 16);
        d[0] = env, l[0] = n, d[1] = f4, l[1] = 16;
        s_send_raw(dealer, d, l, 2);
        return true;
    }
    return false;
}

TEST_TIMEOUT(wire_drops_malformed_and_reads_the_next, 30)
{
    bt_log_set_sink(s_sink, NULL);
    s_pair_t p;
    REQUIRE(s_pair_open(&p));
    s_bad_t info;
    for (int k = 0; s_send_bad(p.dealer, k, &info); k++) {
        char state[32];
        snprintf(state, sizeof state, "after %d", k);
        REQUIRE(s_send_heartbeat(p.dealer, state) == 0);
        s_nlog = 0;
        pr_msg_t m;
        int rc = pr_recv(p.router, true, 4096, &m);
        CHECKF(rc == BT_EPROTO, "%s: pr_recv returned %d (%s), expected BT_EPROTO", info.what, rc,
               bt_status_str(rc));
        CHECK(m.env == NULL && m.frames == NULL && !m.routed); /* nothing left to free */
        CHECKF(s_nlog == 1 && s_logged("@127.0.0.1: dropped", info.cause) == 1,
               "%s: expected one warning naming the peer and '%s', got %d lines: '%s'", info.what, info.cause,
               s_nlog, s_nlog ? s_log[0] : "");
        rc = pr_recv(p.router, true, 4096, &m);
        CHECKF(rc == 0, "%s: the next valid message: pr_recv returned %d", info.what, rc);
        if (rc == 0) {
            CHECKF(m.env->body_case == BOOTH__ENVELOPE__BODY_HEARTBEAT && !strcmp(m.env->heartbeat->state, state),
                   "%s: the next message is not heartbeat '%s'", info.what, state);
        }
        pr_msg_free(&m);
    }
    s_pair_close(&p);
    bt_log_set_sink(NULL, NULL);
}

/* ---- sending errors, endpoints ----------------------------------------------------- */

TEST_TIMEOUT(wire_send_refuses_bad_blobs_and_unknown_peers, 20)
{
    bt_log_set_sink(s_sink, NULL);
    s_pair_t p;
    REQUIRE(s_pair_open(&p));
    Booth__Heartbeat hb = BOOTH__HEARTBEAT__INIT;
    Booth__Envelope env = PR_ENVELOPE_INIT(HEARTBEAT, heartbeat, &hb);
    float x[6] = {0};

    pr_blob_t b = pr_blob_of_f32("x", x, 2, (const int64_t[]){2, 3});
    b.nbytes = 20; /* does not match 2x3 floats */
    CHECK_INT_EQ(pr_send(p.dealer, NULL, &env, &b, 1), BT_EINVAL);
    b = pr_blob_of_bytes("f", x, sizeof x);
    b.ndim = 1;
    CHECK_INT_EQ(pr_send(p.dealer, NULL, &env, &b, 1), BT_EINVAL);
    Booth__Envelope empty = BOOTH__ENVELOPE__INIT;
    CHECK_INT_EQ(pr_send(p.dealer, NULL, &empty, NULL, 0), BT_EINVAL);

    /* ROUTER_MANDATORY: a routing id nobody has fails at once, with a warning */
    zmq_msg_t rid;
    REQUIRE(zmq_msg_init_size(&rid, 5) == 0);
    memcpy(zmq_msg_data(&rid), "\0\x12\x34\x56\x78", 5);
    s_nlog = 0;
    double t0 = s_now();
    CHECK_INT_EQ(pr_send(p.router, &rid, &env, NULL, 0), BT_EIO);
    CHECK(s_now() - t0 < 1.0);
    CHECKF(s_logged("0012345678", "no such peer") == 1, "got '%s'", s_nlog ? s_log[0] : "");
    zmq_msg_close(&rid);

    /* and the socket still works */
    CHECK_INT_EQ(s_send_heartbeat(p.dealer, "still here"), 0);
    pr_msg_t m;
    CHECK_INT_EQ(pr_recv(p.router, true, MAX_BYTES, &m), 0);
    pr_msg_free(&m);
    s_pair_close(&p);
    bt_log_set_sink(NULL, NULL);
}

TEST_TIMEOUT(wire_endpoints_and_bind_errors, 20)
{
    bt_log_set_sink(s_sink, NULL);
    CHECK(pr_endpoint_ok("tcp://*:5555", true));
    CHECK(pr_endpoint_ok("tcp://127.0.0.1:*", true));
    CHECK(pr_endpoint_ok("tcp://node7.cluster:5555", false));
    CHECK(pr_endpoint_ok("tcp://[::1]:5555", false));
    CHECK(pr_endpoint_ok("ipc:///tmp/booth.sock", true));
    CHECK(pr_endpoint_ok("inproc://x", false));
    static const char *const bad_connect[] = {
        "", "5555", "http://host:80", "tcp://host", "tcp://:5555", "tcp://*:5555", "tcp://host:0",
        "tcp://host:65536", "tcp://host:55a", "tcp://host:*", "tcp://ho st:5555", "inproc://",
    };
    for (size_t i = 0; i < sizeof bad_connect / sizeof *bad_connect; i++) {
        s_nlog = 0;
        CHECKF(!pr_endpoint_ok(bad_connect[i], false), "'%s' accepted", bad_connect[i]);
        CHECKF(s_nlog == 1, "'%s': %d log lines", bad_connect[i], s_nlog);
    }

    void *ctx = zmq_ctx_new();
    pr_sockopts_t o = {.max_bytes = MAX_BYTES, .insecure = true};
    void *a = pr_router_bind(ctx, "tcp://127.0.0.1:*", &o);
    REQUIRE(a);
    char ep[256];
    CHECK_INT_EQ(pr_last_endpoint(a, ep, sizeof ep), 0);
    s_nlog = 0;
    void *b = pr_router_bind(ctx, ep, &o);
    CHECK(b == NULL);
    CHECKF(s_nlog == 1 && s_logged(ep, ": address already in use") == 1, "got '%s'", s_nlog ? s_log[0] : "");
    if (b) zmq_close(b);
    /* security is on unless asked off: no keys, no socket */
    pr_sockopts_t secure = {.max_bytes = MAX_BYTES};
    s_nlog = 0;
    CHECK(pr_router_bind(ctx, "tcp://127.0.0.1:*", &secure) == NULL);
    CHECK(pr_dealer_connect(ctx, ep, &secure) == NULL);
    CHECK_INT_EQ(s_logged("socket options lack", NULL), 2);
    s_nlog = 0;
    pr_warn_insecure("tcp://*:5555", NULL);
    CHECK(s_logged("INSECURE: ", "anyone who can reach tcp://*:5555 can") == 1);
    zmq_close(a);
    zmq_ctx_term(ctx);
    bt_log_set_sink(NULL, NULL);
}

/* ---- CURVE ---------------------------------------------------------------------- */

typedef struct {
    void *ctx, *router;
    pr_zap_t *zap;
    pr_keypair_t server, client;
    char ep[256];
} s_curve_t;

static bool s_curve_open(s_curve_t *c)
{
    memset(c, 0, sizeof *c);
    if (pr_keys_generate(&c->server) || pr_keys_generate(&c->client)) return false;
    pr_allowlist_t allow;
    pr_allowlist_init(&allow);
    bool ok = pr_allowlist_add(&allow, c->client.public_z85) == 0;
    c->ctx = zmq_ctx_new();
    c->zap = ok ? pr_zap_new(c->ctx, &allow) : NULL;
    pr_allowlist_free(&allow); /* the handler keeps a copy */
    if (!c->zap) return false;
    pr_sockopts_t o = {.max_bytes = MAX_BYTES, .keys = &c->server, .zap = c->zap};
    c->router = pr_router_bind(c->ctx, "tcp://127.0.0.1:*", &o);
    return c->router && pr_last_endpoint(c->router, c->ep, sizeof c->ep) == 0;
}

static void s_curve_close(s_curve_t *c)
{
    if (c->router) zmq_close(c->router);
    pr_zap_destroy(&c->zap);
    pr_zap_destroy(&c->zap);
    if (c->ctx) zmq_ctx_term(c->ctx);
}

/* Polls the ZAP handler, the server and the client for up to `seconds`: the server
 * answers each Heartbeat with a Welcome; returns the client's first reply's status
 * (0) or BT_EAGAIN if none came. *server_got counts the server's messages. */
static int s_curve_run(s_curve_t *c, void *dealer, double seconds, int *server_got, char *key_seen)
{
    double t0 = s_now();
    while (s_now() - t0 < seconds) {
        zmq_pollitem_t items[3] = {{pr_zap_socket(c->zap), 0, ZMQ_POLLIN, 0},
                                   {c->router, 0, ZMQ_POLLIN, 0},
                                   {dealer, 0, ZMQ_POLLIN, 0}};
        if (zmq_poll(items, 3, 50) < 0) continue;
        if (items[0].revents & ZMQ_POLLIN)
            while (pr_zap_handle(c->zap) == 0) {
            }
        pr_msg_t m;
        if ((items[1].revents & ZMQ_POLLIN) && pr_recv_nowait(c->router, true, MAX_BYTES, &m) == 0) {
            (*server_got)++;
            snprintf(key_seen, 41, "%s", m.key);
            Booth__Welcome w = BOOTH__WELCOME__INIT;
            w.peer_id = "w1";
            Booth__Envelope env = PR_ENVELOPE_INIT(WELCOME, welcome, &w);
            CHECK_INT_EQ(pr_send(c->router, &m.routing_id, &env, NULL, 0), 0);
            pr_msg_free(&m);
        }
        if ((items[2].revents & ZMQ_POLLIN) && pr_recv_nowait(dealer, false, MAX_BYTES, &m) == 0) {
            bool welcome = m.env->body_case == BOOTH__ENVELOPE__BODY_WELCOME && !strcmp(m.env->welcome->peer_id, "w1");
            pr_msg_free(&m);
            CHECK(welcome);
            return 0;
        }
    }
    return BT_EAGAIN;
}

TEST_TIMEOUT(wire_curve_allowed_key_gets_reply, 20)
{
    s_curve_t c;
    REQUIRE(s_curve_open(&c));
    pr_sockopts_t o = {.max_bytes = MAX_BYTES, .keys = &c.client, .server_key = c.server.public_z85};
    void *dealer = pr_dealer_connect(c.ctx, c.ep, &o);
    REQUIRE(dealer);
    CHECK_INT_EQ(s_send_heartbeat(dealer, "idle"), 0);
    int got = 0;
    char key[41] = "";
    CHECK_INT_EQ(s_curve_run(&c, dealer, 5.0, &got, key), 0);
    CHECK_INT_EQ(got, 1);
    CHECKF(!strcmp(key, c.client.public_z85), "server saw key '%s', client's is '%s'", key, c.client.public_z85);
    CHECK_INT_EQ(pr_zap_refusals(c.zap), 0);
    zmq_close(dealer);
    s_curve_close(&c);
}

TEST_TIMEOUT(wire_curve_unknown_key_refused, 20)
{
    bt_log_set_sink(s_sink, NULL);
    s_curve_t c;
    REQUIRE(s_curve_open(&c));
    pr_keypair_t stranger;
    REQUIRE(pr_keys_generate(&stranger) == 0);
    pr_sockopts_t o = {.max_bytes = MAX_BYTES, .keys = &stranger, .server_key = c.server.public_z85};
    void *dealer = pr_dealer_connect(c.ctx, c.ep, &o);
    REQUIRE(dealer);
    CHECK_INT_EQ(s_send_heartbeat(dealer, "let me in"), 0);
    int got = 0;
    char key[41] = "";
    /* libzmq retries the handshake every 100 ms: several refusals, one log line */
    CHECK_INT_EQ(s_curve_run(&c, dealer, 0.8, &got, key), BT_EAGAIN);
    CHECK_INT_EQ(got, 0);
    CHECK(pr_zap_refusals(c.zap) >= 1);
    char want[128];
    snprintf(want, sizeof want, "refused CURVE key %s from 127.0.0.1", stranger.public_z85);
    CHECKF(s_logged(want, NULL) == 1, "expected one line '%s'; %d lines logged", want, s_nlog);
    zmq_close(dealer);

    /* a plain client gets nothing either */
    pr_sockopts_t plain = {.max_bytes = MAX_BYTES, .insecure = true};
    dealer = pr_dealer_connect(c.ctx, c.ep, &plain);
    REQUIRE(dealer);
    CHECK_INT_EQ(s_send_heartbeat(dealer, "no keys"), 0);
    CHECK_INT_EQ(s_curve_run(&c, dealer, 0.5, &got, key), BT_EAGAIN);
    CHECK_INT_EQ(got, 0);
    zmq_close(dealer);

    /* one ZAP handler per context */
    s_nlog = 0;
    pr_zap_t *second = pr_zap_new(c.ctx, NULL);
    CHECK(second == NULL);
    CHECK(s_logged("inproc://zeromq.zap.01", "one ZAP handler per ZeroMQ context") == 1);
    pr_zap_destroy(&second);
    s_curve_close(&c);
    bt_log_set_sink(NULL, NULL);
}

/* ---- key files -------------------------------------------------------------------- */

static void s_write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    REQUIRE(f);
    fputs(text, f);
    fclose(f);
}

TEST_TIMEOUT(keys_write_load_modes_and_force, 20)
{
    bt_log_set_sink(s_sink, NULL);
    char dir[512], sec[600], pub[600];
    snprintf(dir, sizeof dir, "%s/keys/host1", tu_tmpdir());
    snprintf(sec, sizeof sec, "%s/secret.key", dir);
    snprintf(pub, sizeof pub, "%s/public.key", dir);
    pr_keypair_t kp, back;
    REQUIRE(pr_keys_generate(&kp) == 0);
    CHECK(pr_key_z85_ok(kp.public_z85) && pr_key_z85_ok(kp.secret_z85));
    REQUIRE(pr_keys_write(dir, &kp, false) == 0);
    struct stat st;
    REQUIRE(stat(sec, &st) == 0);
    CHECKF((st.st_mode & 0777) == 0600, "secret.key mode %o", (unsigned)(st.st_mode & 0777));
    REQUIRE(stat(pub, &st) == 0);
    CHECK((st.st_mode & 0600) == 0600);
    CHECK_INT_EQ(pr_keys_load(dir, &back), 0);
    CHECK(!strcmp(back.public_z85, kp.public_z85) && !strcmp(back.secret_z85, kp.secret_z85));
    char pk[41];
    CHECK_INT_EQ(pr_public_key_load(pub, pk), 0);
    CHECK(!strcmp(pk, kp.public_z85));

    /* no overwrite without force; force writes a new pair that loads */
    s_nlog = 0;
    pr_keypair_t kp2;
    REQUIRE(pr_keys_generate(&kp2) == 0);
    CHECK_INT_EQ(pr_keys_write(dir, &kp2, false), BT_EINVAL);
    CHECK(s_logged(sec, "already exists") == 1);
    CHECK_INT_EQ(pr_keys_load(dir, &back), 0);
    CHECK(!strcmp(back.public_z85, kp.public_z85));
    CHECK_INT_EQ(pr_keys_write(dir, &kp2, true), 0);
    CHECK_INT_EQ(pr_keys_load(dir, &back), 0);
    CHECK(!strcmp(back.secret_z85, kp2.secret_z85));

    /* a secret key others can read is refused */
    REQUIRE(chmod(sec, 0644) == 0);
    s_nlog = 0;
    CHECK_INT_EQ(pr_keys_load(dir, &back), BT_EINVAL);
    CHECK(s_logged(sec, "chmod 600") == 1);
    /* a public key that is not the secret key's */
    char text[512];
    snprintf(text, sizeof text, "public-key = %s\nsecret-key = %s\n", kp.public_z85, kp2.secret_z85);
    s_write_text(sec, text);
    REQUIRE(chmod(sec, 0600) == 0);
    s_nlog = 0;
    CHECK_INT_EQ(pr_keys_load(dir, &back), BT_EFORMAT);
    CHECK(s_logged(sec, "does not belong") == 1);
    /* a malformed line names file:line */
    snprintf(text, sizeof text, "# comment\npublic-key = %s\nsecret-key: %s\n", kp2.public_z85, kp2.secret_z85);
    s_write_text(sec, text);
    s_nlog = 0;
    CHECK_INT_EQ(pr_keys_load(dir, &back), BT_EFORMAT);
    char where[620];
    snprintf(where, sizeof where, "%s:3:", sec);
    CHECK(s_logged(where, NULL) == 1);
    /* missing directory */
    s_nlog = 0;
    CHECK_INT_EQ(pr_keys_load("/nonexistent/keys", &back), BT_ENOTFOUND);
    CHECK(s_logged("/nonexistent/keys/secret.key", "booth keygen") == 1);
    bt_log_set_sink(NULL, NULL);
}

TEST_TIMEOUT(keys_allowlist_file, 20)
{
    bt_log_set_sink(s_sink, NULL);
    pr_keypair_t a, b;
    REQUIRE(pr_keys_generate(&a) == 0 && pr_keys_generate(&b) == 0);
    char path[512], text[1024];
    snprintf(path, sizeof path, "%s/authorized_keys", tu_tmpdir());
    snprintf(text, sizeof text,
             "# workers of the lab\n"
             "\n"
             "   %s\n"
             "%s   # gpu-node-3\r\n"
             "%s\n" /* a duplicate: kept once */
             "  # indented comment\n",
             a.public_z85, b.public_z85, a.public_z85);
    s_write_text(path, text);
    pr_allowlist_t l;
    pr_allowlist_init(&l);
    REQUIRE(pr_allowlist_load(&l, path) == 0);
    CHECK_INT_EQ(l.n, 2);
    uint8_t bin[32];
    REQUIRE(zmq_z85_decode(bin, b.public_z85));
    CHECK(pr_allowlist_has(&l, bin));

    /* a malformed line: error naming file:line, the list unchanged */
    snprintf(text, sizeof text, "%s\n\n%.39s\n", a.public_z85, b.public_z85);
    s_write_text(path, text);
    s_nlog = 0;
    CHECK_INT_EQ(pr_allowlist_load(&l, path), BT_EFORMAT);
    char where[600];
    snprintf(where, sizeof where, "%s:3:", path);
    CHECKF(s_logged(where, "not a Z85 CURVE public key") == 1, "got '%s'", s_nlog ? s_log[0] : "");
    CHECK_INT_EQ(l.n, 2);
    snprintf(text, sizeof text, "%s trailing-words\n", a.public_z85);
    s_write_text(path, text);
    CHECK_INT_EQ(pr_allowlist_load(&l, path), BT_EFORMAT);
    CHECK_INT_EQ(pr_allowlist_add(&l, "short"), BT_EINVAL);
    pr_allowlist_free(&l);
    pr_allowlist_free(&l);
    bt_log_set_sink(NULL, NULL);
}
