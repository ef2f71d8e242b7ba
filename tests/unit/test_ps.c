/*
 * test_ps.c — the parameter server's state machine (ps/store.h) without
 * sockets: micro-batch gradients pushed out of order are summed to the bits of
 * the ordered sum, and their GradReady sums of squares and the applied step are
 * those of one sd_optim_t that did the same in order (memcmp); duplicate, stale
 * and malformed pushes change nothing (one log line each for the refused ones);
 * an Apply taken twice applies once; a Pull for a future version waits for the
 * Apply that reaches it; loads that make no sense are refused and leave the old
 * state; release answers the pulls still waiting. Plus the advertised endpoint,
 * and the server itself (ps_run in a thread) between a fake coordinator and a
 * fake worker on loopback sockets: hello, load, pulls, pushes, GradReady, Apply,
 * the waiting pull answered, State, release, and a clean stop on SIGTERM.
 */
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "diffusion/job.h"
#include "nn/nn.h"
#include "proto/wire.h"
#include "ps/ps.h"
#include "ps/store.h"
#include "test.h"
#include "testutil.h"

#define NT 3 /* tensors this PS holds */
#define M 3  /* micro-batches per step */
#define MAXN 64

static const char *const s_names[NT] = {"unet.down.0.lora_A.weight", "unet.down.0.lora_B.weight",
                                        "text_encoder.q.lora_A.weight"};
static const int32_t s_index[NT] = {4, 5, 1}; /* global indices, in local order */
static const int64_t s_shape[NT][2] = {{3, 5}, {4, 3}, {2, 7}};
static const char s_json[] = "{\"learning_rate\": 0.01, \"lr_scheduler\": \"cosine\", \"lr_warmup_steps\": 2, "
                             "\"max_train_steps\": 20, \"max_grad_norm\": 0.5, \"adam_weight_decay\": 0.01}";

/* ---- log capture: the lines at warn and above ---------------------------------- */

static int s_nwarn;
static char s_last[512];

static void s_sink(bt_log_level_t level, const char *msg, void *user)
{
    if (level <= BT_LOG_WARN) {
        s_nwarn++;
        snprintf(s_last, sizeof s_last, "%s", msg);
    }
    fprintf(stderr, "log: %s\n", msg);
}

/* ---- fixture ----------------------------------------------------------------------- */

typedef struct {
    nn_ctx_t *ctx;
    ps_store_t *store;
    sd_optim_t *ref; /* the same tensors in one optimizer that adds in order */
    float p[NT][MAXN], m[NT][MAXN], v[NT][MAXN];
    float g[2][M][NT][MAXN]; /* gradients of two steps */
    ps_tensor_in_t t[NT];
} s_fx_t;

static int64_t s_numel(int i)
{
    return s_shape[i][0] * s_shape[i][1];
}

static bool s_fx_open(s_fx_t *f, int64_t step)
{
    memset(f, 0, sizeof *f);
    bt_log_set_sink(s_sink, NULL);
    tu_rng_t r = tu_rng(7);
    for (int i = 0; i < NT; i++) {
        tu_fill_normal(&r, f->p[i], s_numel(i), 0.1f);
        tu_fill_normal(&r, f->m[i], s_numel(i), 0.01f);
        tu_fill_uniform(&r, f->v[i], s_numel(i), 0.0f, 1e-4f);
        for (int s = 0; s < 2; s++)
            for (int k = 0; k < M; k++)
                tu_fill_normal(&r, f->g[s][k][i], s_numel(i), 0.3f);
        f->t[i] = (ps_tensor_in_t){.name = s_names[i],
                                   .index = s_index[i],
                                   .shape = {s_shape[i][0], s_shape[i][1]},
                                   .p = f->p[i],
                                   .m = f->m[i],
                                   .v = f->v[i]};
    }
    if (!(f->ctx = nn_ctx_new(NN_BACKEND_CPU, 2)) || !(f->store = ps_store_new(f->ctx))) return false;

    sd_job_t job;
    if (sd_job_parse(&job, s_json, strlen(s_json), "test")) return false;
    sd_optim_config_t cfg;
    sd_optim_config_from_train(&cfg, &job.cfg);
    sd_job_free(&job);
    sd_optim_spec_t spec[NT];
    for (int i = 0; i < NT; i++)
        spec[i] = (sd_optim_spec_t){
            .name = s_names[i], .index = s_index[i], .shape = {s_shape[i][0], s_shape[i][1]}, .params = NULL};
    if (!(f->ref = sd_optim_new(f->ctx, &cfg, spec, NT))) return false;
    for (int i = 0; i < NT; i++) {
        size_t bytes = (size_t)s_numel(i) * sizeof(float);
        memcpy(f->ref->t[i].p, f->p[i], bytes);
        memcpy(f->ref->t[i].m, f->m[i], bytes);
        memcpy(f->ref->t[i].v, f->v[i], bytes);
    }
    f->ref->step = step;
    return true;
}

static void s_fx_close(s_fx_t *f)
{
    ps_store_destroy(&f->store);
    ps_store_destroy(&f->store); /* safe twice */
    sd_optim_destroy(&f->ref);
    nn_ctx_destroy(&f->ctx);
    bt_log_set_sink(NULL, NULL);
}

static ps_load_t s_load_of(s_fx_t *f, const char *job, int64_t step)
{
    return (ps_load_t){.job_id = job,
                       .job_json = s_json,
                       .job_json_len = strlen(s_json),
                       .step = step,
                       .microbatches = M,
                       .t = f->t,
                       .n = NT};
}

/* Pushes step s's micro-batch k (gradient set gs) with the tensors in `order`. */
static ps_verdict_t s_push(s_fx_t *f, const char *job, int64_t step, int k, int gs, bool *ready)
{
    ps_grad_in_t g[NT];
    int kd = k >= 0 && k < M ? k : 0; /* out-of-range micro-batches (refused) carry any data */
    for (int b = 0; b < NT; b++) {
        int i = (b + kd) % NT; /* a different blob order per micro-batch: the store maps by name */
        g[b] = (ps_grad_in_t){.name = s_names[i], .data = f->g[gs][kd][i], .numel = s_numel(i)};
    }
    char why[512];
    return ps_store_push(f->store, "worker", job, step, k, g, NT, ready, why, sizeof why);
}

/* The store's job state equals the reference optimizer's, bit for bit. */
static void s_check_same(const s_fx_t *f, const char *job, bool grads, const char *what)
{
    const ps_job_t *j = ps_store_job(f->store, job);
    if (!j) {
        bt_test_fail(__FILE__, __LINE__, "%s: job %s missing", what, job);
        return;
    }
    CHECKF(j->opt->step == f->ref->step, "%s: step %lld, reference %lld", what, (long long)j->opt->step,
           (long long)f->ref->step);
    for (int i = 0; i < NT; i++) {
        size_t bytes = (size_t)s_numel(i) * sizeof(float);
        const sd_optim_tensor_t *a = &j->opt->t[i], *b = &f->ref->t[i];
        CHECKF(!memcmp(a->p, b->p, bytes), "%s: %s p differs", what, s_names[i]);
        CHECKF(!memcmp(a->m, b->m, bytes), "%s: %s m differs", what, s_names[i]);
        CHECKF(!memcmp(a->v, b->v, bytes), "%s: %s v differs", what, s_names[i]);
        if (grads) CHECKF(!memcmp(a->g, b->g, bytes), "%s: %s gradient sum differs", what, s_names[i]);
    }
}

/* The global norm as the coordinator forms it: sums of squares in global order. */
static double s_norm(const ps_job_t *j)
{
    double ss[8] = {0};
    for (int i = 0; i < NT; i++)
        ss[j->index[i]] = j->sum_squares[i];
    return sd_grad_norm(ss, 8);
}

TEST(ps_out_of_order_pushes_sum_in_order_and_apply_once)
{
    s_fx_t f;
    REQUIRE(s_fx_open(&f, 5));
    char why[512];
    REQUIRE(ps_store_load(f.store, "coordinator", &(ps_load_t){0}, why, sizeof why) == PS_REFUSED);
    ps_load_t l = s_load_of(&f, "job1", 5);
    REQUIRE(ps_store_load(f.store, "coordinator", &l, why, sizeof why) == PS_DONE);
    s_check_same(&f, "job1", false, "after load");
    const ps_job_t *j = ps_store_job(f.store, "job1");
    REQUIRE(j);
    for (int i = 0; i < NT; i++)
        CHECK_INT_EQ(j->index[i], s_index[i]);

    /* a Pull for the next version waits; the current one is answered at once */
    static const uint8_t rid1[] = {0, 0x80, 0, 0, 1}, rid2[] = {0, 0x80, 0, 0, 2};
    CHECK(ps_store_pull(f.store, "w1", "job1", 6, rid1, sizeof rid1, why, sizeof why) == PS_QUEUED);
    CHECK(ps_store_pull(f.store, "w1", "job1", 6, rid1, sizeof rid1, why, sizeof why) == PS_QUEUED);
    CHECK_INT_EQ(ps_store_npulls(f.store), 1); /* asked twice, queued once */
    CHECK(ps_store_pull(f.store, "w2", "job1", 5, rid2, sizeof rid2, why, sizeof why) == PS_DONE);
    s_nwarn = 0;
    CHECK(ps_store_pull(f.store, "w2", "job1", 4, rid2, sizeof rid2, why, sizeof why) == PS_REFUSED);
    CHECK(ps_store_pull(f.store, "w2", "nojob", 5, rid2, sizeof rid2, why, sizeof why) == PS_REFUSED);
    CHECK(strstr(why, "nojob") != NULL);
    CHECK_INT_EQ(s_nwarn, 2);
    ps_pull_t q;
    ps_verdict_t pv;
    CHECK(!ps_store_pop_pull(f.store, &q, &pv, why, sizeof why));

    /* micro-batches 2, 0, 1; malformed and early pushes in between change nothing */
    bool ready = true;
    CHECK(s_push(&f, "job1", 5, 2, 0, &ready) == PS_DONE);
    CHECK(!ready);
    CHECK(s_push(&f, "job1", 5, 2, 0, &ready) == PS_IGNORED); /* duplicate of an early one */
    CHECK(s_push(&f, "job1", 5, 0, 0, &ready) == PS_DONE);
    CHECK(!ready);
    CHECK(s_push(&f, "job1", 5, 0, 0, &ready) == PS_IGNORED); /* duplicate of a summed one */
    CHECK(s_push(&f, "job1", 4, 1, 0, &ready) == PS_IGNORED); /* stale */
    s_nwarn = 0;
    CHECK(s_push(&f, "job1", 6, 1, 0, &ready) == PS_REFUSED); /* a step not reached */
    CHECK(s_push(&f, "job1", 5, M, 0, &ready) == PS_REFUSED); /* micro out of range */
    CHECK(s_push(&f, "job1", 5, -1, 0, &ready) == PS_REFUSED);
    CHECK(s_push(&f, "nojob", 5, 1, 0, &ready) == PS_REFUSED);
    {
        ps_grad_in_t g[NT + 1];
        for (int i = 0; i < NT; i++)
            g[i] = (ps_grad_in_t){s_names[i], f.g[0][1][i], s_numel(i)};
        CHECK(ps_store_push(f.store, "w", "job1", 5, 1, g, NT - 1, &ready, why, sizeof why) == PS_REFUSED);
        g[NT] = (ps_grad_in_t){"unet.other.lora_A.weight", f.g[0][1][0], s_numel(0)};
        CHECK(ps_store_push(f.store, "w", "job1", 5, 1, g, NT + 1, &ready, why, sizeof why) == PS_REFUSED);
        g[2] = g[NT]; /* a tensor this PS does not hold */
        CHECK(ps_store_push(f.store, "w", "job1", 5, 1, g, NT, &ready, why, sizeof why) == PS_REFUSED);
        CHECK(strstr(why, "unet.other.lora_A.weight") != NULL);
        g[2] = g[0]; /* one twice */
        CHECK(ps_store_push(f.store, "w", "job1", 5, 1, g, NT, &ready, why, sizeof why) == PS_REFUSED);
        g[2] = (ps_grad_in_t){s_names[2], f.g[0][1][2], s_numel(2) - 1}; /* wrong size */
        CHECK(ps_store_push(f.store, "w", "job1", 5, 1, g, NT, &ready, why, sizeof why) == PS_REFUSED);
    }
    CHECK_INT_EQ(s_nwarn, 9); /* one line per refusal, none for the harmless repeats */
    int64_t step = -1;
    float lr = -1;
    CHECK(ps_store_apply(f.store, "c", "job1", 5, 1.0, &step, &lr, why, sizeof why) == PS_REFUSED); /* 2 of 3 in */
    CHECK(!j->ready);
    CHECK(s_push(&f, "job1", 5, 1, 0, &ready) == PS_DONE);
    CHECK(ready);
    CHECK(j->ready);
    CHECK(s_push(&f, "job1", 5, 1, 0, &ready) == PS_IGNORED);
    CHECK(!ready);

    /* the ordered sum: bit for bit, and the sums of squares of it */
    for (int k = 0; k < M; k++)
        for (int i = 0; i < NT; i++)
            REQUIRE(sd_optim_add_grad(f.ref, i, k, f.g[0][k][i]) == 0);
    s_check_same(&f, "job1", true, "after the pushes");
    for (int i = 0; i < NT; i++) {
        double ss;
        REQUIRE(sd_optim_sum_squares(f.ref, i, &ss) == 0);
        CHECKF(memcmp(&ss, &j->sum_squares[i], sizeof ss) == 0, "%s: sum of squares %.17g, reference %.17g", s_names[i],
               j->sum_squares[i], ss);
    }

    /* Apply: a future step refused, the step applied once, a repeat answered without applying */
    double norm = s_norm(j);
    CHECK(norm > 0.5); /* so clipping happens */
    CHECK(ps_store_apply(f.store, "c", "job1", 6, norm, &step, &lr, why, sizeof why) == PS_REFUSED);
    CHECK(ps_store_apply(f.store, "c", "nojob", 5, norm, &step, &lr, why, sizeof why) == PS_REFUSED);
    CHECK(ps_store_apply(f.store, "c", "job1", 5, norm, &step, &lr, why, sizeof why) == PS_DONE);
    float ref_lr = -2;
    REQUIRE(sd_optim_apply(f.ref, norm, &ref_lr) == 0);
    CHECK_INT_EQ(step, 6);
    CHECKF(lr == ref_lr, "lr %g, reference %g", (double)lr, (double)ref_lr);
    s_check_same(&f, "job1", false, "after apply");
    step = -1;
    lr = -1;
    CHECK(ps_store_apply(f.store, "c", "job1", 5, norm, &step, &lr, why, sizeof why) == PS_IGNORED);
    CHECK_INT_EQ(step, 6);
    CHECKF(lr == ref_lr, "repeated apply: lr %g, reference %g", (double)lr, (double)ref_lr);
    s_check_same(&f, "job1", false, "after a repeated apply");
    CHECK(ps_store_apply(f.store, "c", "job1", 6, norm, &step, &lr, why, sizeof why) == PS_REFUSED); /* none in */

    /* the waiting pull is answerable now, once */
    CHECK(ps_store_pop_pull(f.store, &q, &pv, why, sizeof why));
    CHECK(pv == PS_DONE);
    CHECK_INT_EQ(q.version, 6);
    CHECK(q.rid_len == sizeof rid1 && !memcmp(q.rid, rid1, sizeof rid1));
    CHECK(!strcmp(q.job_id, "job1"));
    CHECK(!ps_store_pop_pull(f.store, &q, &pv, why, sizeof why));
    CHECK_INT_EQ(ps_store_npulls(f.store), 0);

    /* a second step, pushed 1, 2, 0: stale pushes of the first are ignored */
    CHECK(s_push(&f, "job1", 5, 1, 0, &ready) == PS_IGNORED);
    CHECK(s_push(&f, "job1", 6, 1, 1, &ready) == PS_DONE);
    CHECK(s_push(&f, "job1", 6, 2, 1, &ready) == PS_DONE);
    CHECK(!ready);
    CHECK(s_push(&f, "job1", 6, 0, 1, &ready) == PS_DONE);
    CHECK(ready);
    for (int k = 0; k < M; k++)
        for (int i = 0; i < NT; i++)
            REQUIRE(sd_optim_add_grad(f.ref, i, k, f.g[1][k][i]) == 0);
    s_check_same(&f, "job1", true, "second step's sum");
    norm = s_norm(j);
    CHECK(ps_store_apply(f.store, "c", "job1", 6, norm, &step, &lr, why, sizeof why) == PS_DONE);
    REQUIRE(sd_optim_apply(f.ref, norm, &ref_lr) == 0);
    CHECK_INT_EQ(step, 7);
    CHECK(lr == ref_lr);
    s_check_same(&f, "job1", false, "after the second apply");

    /* release: the job is gone, a pull that waited for it is refused */
    CHECK(ps_store_pull(f.store, "w1", "job1", 9, rid1, sizeof rid1, why, sizeof why) == PS_QUEUED);
    CHECK(ps_store_release(f.store, "c", "job1") == PS_DONE);
    CHECK(ps_store_release(f.store, "c", "job1") == PS_IGNORED);
    CHECK(ps_store_job(f.store, "job1") == NULL);
    CHECK_INT_EQ(ps_store_njobs(f.store), 0);
    CHECK(ps_store_pop_pull(f.store, &q, &pv, why, sizeof why));
    CHECK(pv == PS_REFUSED);
    CHECK(strstr(why, "released") != NULL);
    CHECK(!ps_store_pop_pull(f.store, &q, &pv, why, sizeof why));
    s_fx_close(&f);
}

TEST(ps_load_refusals_keep_the_old_state_and_reload_replaces_it)
{
    s_fx_t f;
    REQUIRE(s_fx_open(&f, 3));
    char why[512];
    ps_load_t l = s_load_of(&f, "job2", 3);
    REQUIRE(ps_store_load(f.store, "c", &l, why, sizeof why) == PS_DONE);
    bool ready;
    CHECK(s_push(&f, "job2", 3, 1, 0, &ready) == PS_DONE); /* an early gradient, to be dropped by a reload */

    ps_tensor_in_t t[NT];
    s_nwarn = 0;
    int refused = 0;
#define S_REFUSE(setup)                                                                                                \
    do {                                                                                                               \
        memcpy(t, f.t, sizeof t);                                                                                      \
        ps_load_t b = s_load_of(&f, "job2", 9);                                                                        \
        b.t = t;                                                                                                       \
        setup;                                                                                                         \
        CHECKF(ps_store_load(f.store, "c", &b, why, sizeof why) == PS_REFUSED, "load not refused: %s", #setup);        \
        refused++;                                                                                                     \
    } while (0)
    S_REFUSE(b.microbatches = 0);
    S_REFUSE(b.microbatches = PS_MAX_MICROBATCHES + 1);
    S_REFUSE(b.step = -1);
    S_REFUSE(b.job_id = "");
    S_REFUSE(t[1].shape[0] = 0);
    S_REFUSE(t[2].name = t[0].name);
    S_REFUSE(t[2].index = t[0].index);
    S_REFUSE(t[0].index = -1);
    S_REFUSE(t[1].v = NULL);
    S_REFUSE((b.job_json = "{\"learning_rate\": \"fast\"}", b.job_json_len = strlen(b.job_json)));
    S_REFUSE((b.job_json = "{\"no_such_field\": 1}", b.job_json_len = strlen(b.job_json)));
#undef S_REFUSE
    CHECK_INT_EQ(s_nwarn, refused); /* one line each */
    const ps_job_t *j = ps_store_job(f.store, "job2");
    REQUIRE(j);
    CHECK_INT_EQ(j->opt->step, 3);
    CHECK(j->have[1]);
    s_check_same(&f, "job2", false, "after refused reloads");

    /* a reload at another step: new state, the old step's gradients gone */
    CHECK(ps_store_pull(f.store, "w", "job2", 8, "r", 1, why, sizeof why) == PS_QUEUED);
    f.p[0][0] += 1.0f;
    l.step = 9;
    REQUIRE(ps_store_load(f.store, "c", &l, why, sizeof why) == PS_DONE);
    CHECK_INT_EQ(ps_store_njobs(f.store), 1);
    j = ps_store_job(f.store, "job2");
    REQUIRE(j);
    CHECK_INT_EQ(j->opt->step, 9);
    CHECK(!j->have[1]);
    CHECK(j->opt->t[0].p[0] == f.p[0][0]);
    ps_pull_t q;
    ps_verdict_t v;
    CHECK(ps_store_pop_pull(f.store, &q, &v, why, sizeof why)); /* version 8 will never come */
    CHECK(v == PS_REFUSED);
    CHECK(s_push(&f, "job2", 3, 1, 0, &ready) == PS_IGNORED);
    CHECK(s_push(&f, "job2", 9, 1, 0, &ready) == PS_DONE);

    /* several jobs side by side, each its own state */
    ps_load_t l3 = s_load_of(&f, "job3", 0);
    REQUIRE(ps_store_load(f.store, "c", &l3, why, sizeof why) == PS_DONE);
    CHECK_INT_EQ(ps_store_njobs(f.store), 2);
    CHECK(ps_store_job_at(f.store, 1) == ps_store_job(f.store, "job3"));
    CHECK(s_push(&f, "job3", 0, 1, 0, &ready) == PS_DONE);
    CHECK_INT_EQ(ps_store_job(f.store, "job3")->opt->step, 0);

    /* a PS that holds no tensor of the job: empty pushes complete its steps */
    ps_load_t l4 = {.job_id = "job4", .job_json = "{}", .job_json_len = 2, .step = 0, .microbatches = 2, .n = 0};
    REQUIRE(ps_store_load(f.store, "c", &l4, why, sizeof why) == PS_DONE);
    CHECK(ps_store_push(f.store, "w", "job4", 0, 1, NULL, 0, &ready, why, sizeof why) == PS_DONE);
    CHECK(!ready);
    CHECK(ps_store_push(f.store, "w", "job4", 0, 0, NULL, 0, &ready, why, sizeof why) == PS_DONE);
    CHECK(ready);
    int64_t step;
    float lr;
    CHECK(ps_store_apply(f.store, "c", "job4", 0, 0.0, &step, &lr, why, sizeof why) == PS_DONE);
    CHECK_INT_EQ(step, 1);
    s_fx_close(&f);
}

TEST(ps_advertised_endpoint)
{
    char out[64];
    CHECK(ps_advertise_endpoint("tcp://0.0.0.0:5555", out, sizeof out) == 0 && !strcmp(out, "tcp://127.0.0.1:5555"));
    CHECK(ps_advertise_endpoint("tcp://*:41000", out, sizeof out) == 0 && !strcmp(out, "tcp://127.0.0.1:41000"));
    CHECK(ps_advertise_endpoint("tcp://[::]:7", out, sizeof out) == 0 && !strcmp(out, "tcp://127.0.0.1:7"));
    CHECK(ps_advertise_endpoint("tcp://10.1.2.3:7", out, sizeof out) == 0 && !strcmp(out, "tcp://10.1.2.3:7"));
    CHECK(ps_advertise_endpoint("ipc:///tmp/ps", out, sizeof out) == 0 && !strcmp(out, "ipc:///tmp/ps"));
    CHECK(ps_advertise_endpoint("tcp://0.0.0.0:5555", out, 8) != 0);
}

/* ---- the server over real sockets -------------------------------------------------- */

#define S_MAX_BYTES (1 << 24)

typedef struct {
    ps_opts_t o;
    int rc;
} s_run_t;

static void *s_ps_thread(void *arg)
{
    s_run_t *r = arg;
    r->rc = ps_run(&r->o);
    return NULL;
}

/* The next message of kind `body` on sock (skipping hellos and heartbeats); false on
 * a timeout or another kind (a test failure). */
static bool s_expect_at(int line, void *sock, bool router, int body, pr_msg_t *m)
{
    for (;;) {
        if (pr_recv(sock, router, S_MAX_BYTES, m) != 0) {
            bt_test_fail(__FILE__, line, "no '%s' arrived", pr_body_name(body));
            return false;
        }
        int got = m->env->body_case;
        if (got == body) return true;
        if (got == BOOTH__ENVELOPE__BODY_HEARTBEAT || got == BOOTH__ENVELOPE__BODY_HELLO) {
            pr_msg_free(m);
            continue;
        }
        bt_test_fail(__FILE__, line, "'%s' arrived, expected '%s' (%s)", pr_body_name(got), pr_body_name(body),
                     got == BOOTH__ENVELOPE__BODY_ERROR ? m->env->error->message : "");
        pr_msg_free(m);
        return false;
    }
}
#define s_expect(sock, router, body, m) s_expect_at(__LINE__, sock, router, BOOTH__ENVELOPE__BODY_##body, m)

/* PsLoad of the fixture's tensors; without_v: the last tensor's v/ blob misnamed. */
static void s_send_load(void *coord, const zmq_msg_t *rid, s_fx_t *f, const char *job, int64_t step, bool without_v)
{
    static char names[3 * NT][SD_OPTIM_NAME_MAX + 4];
    pr_blob_t blobs[3 * NT];
    int nb = 0;
    for (int i = 0; i < NT; i++) {
        const float *src[3] = {f->p[i], f->m[i], f->v[i]};
        for (int q = 0; q < 3; q++) {
            bool odd = without_v && i == NT - 1 && q == 2;
            snprintf(names[nb], sizeof names[nb], "%c/%s", odd ? 'w' : "pmv"[q], s_names[i]);
            blobs[nb] = pr_blob_of_f32(names[nb], src[q], 2, s_shape[i]);
            nb++;
        }
    }
    Booth__PsLoad l = BOOTH__PS_LOAD__INIT;
    l.job_id = (char *)job;
    l.job_json = (char *)s_json;
    l.step = step;
    l.n_index = NT;
    l.index = (int32_t *)s_index;
    l.microbatches = M;
    Booth__Envelope env = PR_ENVELOPE_INIT(PS_LOAD, ps_load, &l);
    CHECK(pr_send(coord, rid, &env, blobs, nb) == 0);
}

static void s_send_push(void *w, s_fx_t *f, const char *job, int64_t step, int k)
{
    pr_blob_t blobs[NT];
    for (int i = 0; i < NT; i++)
        blobs[i] = pr_blob_of_f32(s_names[NT - 1 - i], f->g[0][k][NT - 1 - i], 2, s_shape[NT - 1 - i]);
    Booth__Push p = BOOTH__PUSH__INIT;
    p.job_id = (char *)job;
    p.step = step;
    p.micro = k;
    Booth__Envelope env = PR_ENVELOPE_INIT(PUSH, push, &p);
    CHECK(pr_send(w, NULL, &env, blobs, NT) == 0);
}

static void s_send_pull(void *w, const char *job, int64_t version)
{
    Booth__Pull p = BOOTH__PULL__INIT;
    p.job_id = (char *)job;
    p.version = version;
    Booth__Envelope env = PR_ENVELOPE_INIT(PULL, pull, &p);
    CHECK(pr_send(w, NULL, &env, NULL, 0) == 0);
}

/* Blob `prefix NAME` of every tensor equals the reference's array (q: 0 p, 1 m, 2 v). */
static void s_check_blobs(pr_msg_t *m, const sd_optim_t *ref, const char *prefix, int q, const char *what)
{
    for (int i = 0; i < NT; i++) {
        char name[SD_OPTIM_NAME_MAX + 4];
        snprintf(name, sizeof name, "%s%s", prefix, s_names[i]);
        int64_t n = 0;
        const float *x = pr_blob_f32(m, name, &n);
        const float *want = q == 0 ? ref->t[i].p : q == 1 ? ref->t[i].m : ref->t[i].v;
        CHECKF(x && n == s_numel(i) && !memcmp(x, want, (size_t)n * sizeof *x), "%s: blob %s differs", what, name);
        int b = pr_blob_find(m, name);
        CHECKF(b >= 0 && m->env->blobs[b]->n_shape == 2 && m->env->blobs[b]->shape[0] == s_shape[i][0] &&
                   m->env->blobs[b]->shape[1] == s_shape[i][1],
               "%s: blob %s has the wrong shape", what, name);
    }
}

TEST_TIMEOUT(ps_serves_coordinator_and_workers_over_sockets, 120)
{
    s_fx_t f;
    REQUIRE(s_fx_open(&f, 5));
    bt_log_set_sink(NULL, NULL);
    void *zctx = zmq_ctx_new();
    pr_sockopts_t so = {.max_bytes = S_MAX_BYTES, .insecure = true, .send_timeout_ms = 2000};
    void *coord = pr_router_bind(zctx, "tcp://127.0.0.1:*", &so);
    REQUIRE(coord);
    int ms = 10000;
    zmq_setsockopt(coord, ZMQ_RCVTIMEO, &ms, sizeof ms);
    s_run_t run = {.o = {.node = {.insecure = true}, .bind = "tcp://127.0.0.1:*", .threads = 1}};
    char cep[256];
    REQUIRE(pr_last_endpoint(coord, cep, sizeof cep) == 0);
    run.o.coordinator = cep;
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, s_ps_thread, &run) == 0);

    /* Hello: role, endpoint, no key; the Welcome starts heartbeats */
    pr_msg_t m;
    zmq_msg_t crid;
    zmq_msg_init(&crid);
    char psep[256] = "";
    if (s_expect(coord, true, HELLO, &m)) {
        const Booth__Hello *h = m.env->hello;
        CHECK(h->role == BOOTH__ROLE__ROLE_PS);
        CHECK(!strncmp(h->endpoint, "tcp://127.0.0.1:", 16));
        CHECK(h->public_key[0] == '\0');
        CHECK_INT_EQ(h->threads, 1);
        snprintf(psep, sizeof psep, "%s", h->endpoint);
        zmq_msg_copy(&crid, &m.routing_id);
    }
    pr_msg_free(&m);
    Booth__Welcome w = BOOTH__WELCOME__INIT;
    w.peer_id = "7";
    w.heartbeat_ms = 100;
    Booth__Envelope wenv = PR_ENVELOPE_INIT(WELCOME, welcome, &w);
    CHECK(pr_send(coord, &crid, &wenv, NULL, 0) == 0);
    if (s_expect(coord, true, HEARTBEAT, &m)) CHECK(!strcmp(m.env->heartbeat->state, "idle"));
    pr_msg_free(&m);

    /* a load without one blob is refused with an Error; the whole one answered */
    s_send_load(coord, &crid, &f, "J", 5, true);
    if (s_expect(coord, true, ERROR, &m)) CHECK(strstr(m.env->error->message, "v/text_encoder.q.lora_A.weight"));
    pr_msg_free(&m);
    s_send_load(coord, &crid, &f, "J", 5, false);
    if (s_expect(coord, true, PS_LOADED, &m)) {
        CHECK(!strcmp(m.env->ps_loaded->job_id, "J"));
        CHECK_INT_EQ(m.env->ps_loaded->step, 5);
    }
    pr_msg_free(&m);

    /* a worker: a pull ahead waits, the current one is answered */
    void *wk = pr_dealer_connect(zctx, psep, &so);
    REQUIRE(wk);
    zmq_setsockopt(wk, ZMQ_RCVTIMEO, &ms, sizeof ms);
    s_send_pull(wk, "J", 6);
    s_send_pull(wk, "J", 5);
    if (s_expect(wk, false, WEIGHTS, &m)) {
        CHECK_INT_EQ(m.env->weights->version, 5);
        CHECK_INT_EQ(m.env->n_blobs, NT);
        s_check_blobs(&m, f.ref, "", 0, "weights 5");
    }
    pr_msg_free(&m);

    /* pushes 2, 0, a duplicate, 1; the ack says which were taken */
    static const int order[4] = {2, 0, 0, 1};
    for (int s = 0; s < 4; s++) {
        s_send_push(wk, &f, "J", 5, order[s]);
        if (s_expect(wk, false, PUSH_ACK, &m)) {
            CHECK_INT_EQ(m.env->push_ack->micro, order[s]);
            CHECK_INT_EQ(m.env->push_ack->step, 5);
            CHECKF(m.env->push_ack->accepted == (s != 2), "push %d: accepted %d", s, m.env->push_ack->accepted);
        }
        pr_msg_free(&m);
    }
    for (int k = 0; k < M; k++)
        for (int i = 0; i < NT; i++)
            REQUIRE(sd_optim_add_grad(f.ref, i, k, f.g[0][k][i]) == 0);
    double ss[8] = {0};
    if (s_expect(coord, true, GRAD_READY, &m)) {
        const Booth__GradReady *g = m.env->grad_ready;
        CHECK_INT_EQ(g->step, 5);
        REQUIRE(g->n_index == NT && g->n_sum_squares == NT);
        for (int i = 0; i < NT; i++) {
            double want;
            REQUIRE(sd_optim_sum_squares(f.ref, i, &want) == 0);
            CHECK_INT_EQ(g->index[i], s_index[i]);
            CHECKF(!memcmp(&g->sum_squares[i], &want, sizeof want), "sum of squares %d: %.17g, want %.17g", i,
                   g->sum_squares[i], want);
            ss[g->index[i]] = g->sum_squares[i];
        }
    }
    pr_msg_free(&m);

    /* Apply twice: one step taken, both answered with step 6; the waiting pull gets version 6 */
    double norm = sd_grad_norm(ss, 8);
    float lr;
    REQUIRE(sd_optim_apply(f.ref, norm, &lr) == 0);
    for (int rep = 0; rep < 2; rep++) {
        Booth__Apply a = BOOTH__APPLY__INIT;
        a.job_id = "J";
        a.step = 5;
        a.grad_norm = norm;
        Booth__Envelope aenv = PR_ENVELOPE_INIT(APPLY, apply, &a);
        CHECK(pr_send(coord, &crid, &aenv, NULL, 0) == 0);
        if (s_expect(coord, true, APPLIED, &m)) {
            CHECK_INT_EQ(m.env->applied->step, 6);
            CHECK(m.env->applied->lr == lr);
        }
        pr_msg_free(&m);
    }
    if (s_expect(wk, false, WEIGHTS, &m)) {
        CHECK_INT_EQ(m.env->weights->version, 6);
        s_check_blobs(&m, f.ref, "", 0, "weights 6");
    }
    pr_msg_free(&m);

    /* GetState: p, m, v of the applied step */
    Booth__GetState gs = BOOTH__GET_STATE__INIT;
    gs.job_id = "J";
    Booth__Envelope genv = PR_ENVELOPE_INIT(GET_STATE, get_state, &gs);
    CHECK(pr_send(coord, &crid, &genv, NULL, 0) == 0);
    if (s_expect(coord, true, STATE, &m)) {
        CHECK_INT_EQ(m.env->state->step, 6);
        CHECK_INT_EQ(m.env->state->n_index, NT);
        CHECK_INT_EQ(m.env->n_blobs, 3 * NT);
        s_check_blobs(&m, f.ref, "p/", 0, "state");
        s_check_blobs(&m, f.ref, "m/", 1, "state");
        s_check_blobs(&m, f.ref, "v/", 2, "state");
    }
    pr_msg_free(&m);

    /* a worker may not drive the state: an Apply on its socket is dropped; after a
     * Release its pulls are refused, and the server still answers */
    Booth__Apply a = BOOTH__APPLY__INIT;
    a.job_id = "J";
    a.step = 6;
    Booth__Envelope aenv = PR_ENVELOPE_INIT(APPLY, apply, &a);
    CHECK(pr_send(wk, NULL, &aenv, NULL, 0) == 0);
    Booth__Release rel = BOOTH__RELEASE__INIT;
    rel.job_id = "J";
    Booth__Envelope renv = PR_ENVELOPE_INIT(RELEASE, release, &rel);
    CHECK(pr_send(coord, &crid, &renv, NULL, 0) == 0);
    /* a heartbeat after the release says idle: the release was handled */
    for (int tries = 0; tries < 50; tries++) {
        if (!s_expect(coord, true, HEARTBEAT, &m)) break;
        bool idle = !strcmp(m.env->heartbeat->state, "idle");
        pr_msg_free(&m);
        if (idle) break;
    }
    s_send_pull(wk, "J", 6);
    if (s_expect(wk, false, ERROR, &m)) CHECK(strstr(m.env->error->message, "J") != NULL);
    pr_msg_free(&m);

    /* SIGTERM: a clean stop */
    pthread_kill(th, SIGTERM);
    pthread_join(th, NULL);
    CHECK_INT_EQ(run.rc, 0);
    zmq_msg_close(&crid);
    zmq_close(wk);
    zmq_close(coord);
    zmq_ctx_term(zctx);
    s_fx_close(&f);
}
