/*
 * bench_ps.c — the parameter server's round trip on loopback: every worker
 * pushes its micro-batch gradient, the PS sum them in micro-batch order and
 * report GradReady, the coordinator forms the norm and sends Apply, the PS clip
 * and step AdamW, and every worker pulls the new version. The LoRA is SD 1.5's
 * rank-16 UNet layout (to_q/to_k/to_v/to_out.0 of all 32 attentions: 256
 * tensors, 199,296 x 16 = 3,188,736 parameters, 12.8 MB float32).
 *
 *   bench_ps [--booth PATH] [--workers 1,2,4,8] [--ps 1,2] [--security plain,curve]
 *            [--steps 20] [--warmup 3] [--ps-threads 1] [--rank 16] [--timeout-ms 30000]
 *            [--markdown]
 *
 * The PS are real processes (`$BOOTH ps`, --booth or env BOOTH, default
 * build/booth), with --insecure or with a keypair made here (pr_keys_generate,
 * one key shared by every party, as cluster/local does). This program plays the
 * coordinator (a ROUTER the PS register with: Hello -> Welcome, PsLoad with
 * tensor i on PS i % K, M = N micro-batches a step, GradReady -> Apply ->
 * Applied, Release) and the N workers: one thread each with its own ZeroMQ
 * context (a worker process has its own, and with it its own I/O thread) and
 * one DEALER per PS. A measured step:
 *
 *   t0     the coordinator lets the workers go (the Task of the real cluster)
 *          each worker pushes micro-batch w (fixed random data) to every PS and
 *          waits for every PushAck, as worker/ps.c does
 *   ready  every PS's GradReady is in (all N pushes received and summed in order)
 *   apply  every PS answered Applied{s + 1}
 *          the coordinator tells the workers (the next Task); each sends Pull{s + 1}
 *          to every PS and copies each Weights blob into its own parameters, as a
 *          worker sets them into its trainer
 *   end    the last worker holds the new version
 *
 * round trip = end - t0; its parts: push + sum (t0 -> ready), apply (-> applied),
 * pull (-> end). Median and p90 over --steps steps after --warmup. The floor is
 * the same bytes through memcpy in this process, one thread: each worker's
 * gradient in and the weights out, 2 N x 12.8 MB, each into its own buffer.
 * CPU columns: the PS processes' user + system time (/proc/PID/stat) and this
 * process's (workers + coordinator), per measured step; and the PS processes'
 * minor page faults per step (fresh memory touched: a buffer malloc'd, used, freed).
 *
 * Any protocol error, a PS that exits or a wait past --timeout-ms ends the run
 * with one line and exit status 1; the PS logs stay in the temp folder named.
 * Timings only: nothing here is a test (docs/BENCHMARKS.md, "Parameter server").
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/status.h"
#include "diffusion/optim.h"
#include "proto/keys.h"
#include "proto/node.h"
#include "proto/wire.h"

#define S_MAX_PS 8
#define S_MAX_WORKERS 64
#define S_NAME_MAX 160
#define S_MAX_BYTES ((size_t)1024 << 20)
#define S_HEARTBEAT_MS 2000 /* what the Welcome asks for: the PS default */
#define S_POLL_MS 100       /* waits wake this often to notice a failed worker or a dead PS */

/* ---- the SD 1.5 rank-r UNet LoRA layout ----------------------------------------------- */

typedef struct {
    char name[S_NAME_MAX];     /* "unet.<module>.lora_A.weight", as the trainer names it */
    char pname[3][S_NAME_MAX + 2]; /* "p/NAME", "m/NAME", "v/NAME": PsLoad's blobs */
    int64_t shape[2], numel;
    int64_t offset; /* in a flat buffer of every tensor, global order */
} s_tensor_t;

static s_tensor_t *s_t;
static int s_nt;
static int64_t s_total; /* floats */

static void s_add_tensor(const char *module, const char *ab, int64_t rows, int64_t cols)
{
    s_tensor_t *t = &s_t[s_nt++];
    snprintf(t->name, sizeof t->name, "unet.%s.lora_%s.weight", module, ab);
    for (int q = 0; q < 3; q++)
        snprintf(t->pname[q], sizeof t->pname[q], "%c/unet.%s.lora_%s.weight", "pmv"[q], module, ab);
    t->shape[0] = rows;
    t->shape[1] = cols;
    t->numel = rows * cols;
    t->offset = s_total;
    s_total += t->numel;
}

/* SD 1.5's UNet (block_out_channels 320, 640, 1280, 1280; 2 attentions per down
 * block, 3 per up block, one in the middle; cross-attention dim 768), in the
 * order the trainer visits them: down, mid, up; attn1, attn2; q, k, v, out; A, B.
 * A is [r, in], B is [out, r]; in = 768 for attn2's to_k and to_v, else C. */
static void s_layout(int64_t r)
{
    static const struct {
        const char *block;
        int count;
        int64_t C;
    } att[] = {{"down_blocks.0", 2, 320}, {"down_blocks.1", 2, 640},  {"down_blocks.2", 2, 1280},
               {"mid_block", 1, 1280},    {"up_blocks.1", 3, 1280},   {"up_blocks.2", 3, 640},
               {"up_blocks.3", 3, 320}};
    static const char *const proj[4] = {"to_q", "to_k", "to_v", "to_out.0"};
    s_t = calloc(32 * 4 * 2, sizeof *s_t);
    if (!s_t) {
        fprintf(stderr, "bench_ps: out of memory\n");
        exit(1);
    }
    for (size_t b = 0; b < sizeof att / sizeof att[0]; b++)
        for (int a = 0; a < att[b].count; a++)
            for (int which = 1; which <= 2; which++)
                for (int p = 0; p < 4; p++) {
                    int64_t C = att[b].C, in = which == 2 && (p == 1 || p == 2) ? 768 : C;
                    char module[S_NAME_MAX];
                    snprintf(module, sizeof module, "%s.attentions.%d.transformer_blocks.0.attn%d.%s", att[b].block,
                             a, which, proj[p]);
                    s_add_tensor(module, "A", r, in);
                    s_add_tensor(module, "B", C, r);
                }
}

/* ---- small helpers ---------------------------------------------------------------------- */

static double s_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void s_fill(float *x, int64_t n, uint64_t seed, float scale)
{
    uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
    for (int64_t i = 0; i < n; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        x[i] = scale * (float)((double)(s >> 11) / 9007199254740992.0 - 0.5);
    }
}

static float *s_alloc(int64_t nfloats)
{
    float *x = aligned_alloc(64, (size_t)((nfloats * 4 + 63) / 64 * 64));
    if (!x) {
        fprintf(stderr, "bench_ps: out of memory (%lld floats)\n", (long long)nfloats);
        exit(1);
    }
    return x;
}

static int s_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The q-quantile (0..1) of n values, nearest rank; sorts v. */
static double s_quantile(double *v, int n, double q)
{
    qsort(v, (size_t)n, sizeof *v, s_cmp_double);
    int i = (int)ceil(q * n) - 1;
    return v[i < 0 ? 0 : i >= n ? n - 1 : i];
}

/* user + system seconds and minor page faults of process pid (/proc/PID/stat fields
 * 14, 15 and 10) */
static double s_proc_cpu(pid_t pid, double *minflt)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* the name may hold spaces */
    unsigned long flt = 0, ut = 0, st = 0;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %lu %*u %*u %*u %lu %lu", &flt, &ut, &st) != 3) return 0;
    *minflt += (double)flt;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static double s_self_cpu(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec * 1e-6;
}

/* ---- the run's state, and its one way out on failure ------------------------------------ */

typedef struct {
    pid_t pid;
    char log[512];
    zmq_msg_t rid; /* its DEALER's routing id on the coordinator ROUTER */
    bool registered;
    char name[S_NAME_MAX], endpoint[256], key[41];
    int *held; /* global indices of the tensors it holds, ascending */
    int nheld;
    int64_t held_floats;
} s_ps_t;

typedef struct s_worker s_worker_t;

typedef struct {
    const char *booth;
    int ps_threads, timeout_ms;
    char tmp[64];  /* the temp folder: keys, PS logs */
    char keys[96]; /* tmp/keys when CURVE is on */
    bool curve;
    pr_node_t node; /* the coordinator's context, keys and ZAP handler */
    void *router;
    s_ps_t ps[S_MAX_PS];
    int K;
    char job[64];

    pthread_mutex_t mu;
    pthread_cond_t cv;
    int64_t push_step, pull_step; /* workers push step s once push_step >= s, pull once pull_step >= s */
    int done;                     /* workers holding this step's new version */
    bool failed, stop;
    char why[600]; /* the first failure: the one line printed */
} s_bench_t;

static s_bench_t s_b;
static volatile sig_atomic_t s_interrupted;

static void s_on_signal(int sig)
{
    (void)sig;
    s_interrupted = 1;
}

/* Records the first failure (any thread) and wakes every wait. */
static void s_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void s_fail(const char *fmt, ...)
{
    pthread_mutex_lock(&s_b.mu);
    if (!s_b.failed) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(s_b.why, sizeof s_b.why, fmt, ap);
        va_end(ap);
        s_b.failed = true;
    }
    pthread_cond_broadcast(&s_b.cv);
    pthread_mutex_unlock(&s_b.mu);
}

static bool s_failed(void)
{
    pthread_mutex_lock(&s_b.mu);
    bool f = s_b.failed;
    pthread_mutex_unlock(&s_b.mu);
    return f;
}

static void s_stop_ps(void)
{
    for (int k = 0; k < s_b.K; k++)
        if (s_b.ps[k].pid > 0) kill(s_b.ps[k].pid, SIGTERM);
    for (int k = 0; k < s_b.K; k++) {
        s_ps_t *p = &s_b.ps[k];
        if (p->pid <= 0) continue;
        int st;
        double t0 = s_now();
        while (waitpid(p->pid, &st, WNOHANG) == 0) {
            if (s_now() - t0 > 5) {
                kill(p->pid, SIGKILL);
                waitpid(p->pid, &st, 0);
                break;
            }
            usleep(10000);
        }
        p->pid = 0;
    }
}

/* Only main() exits: the caller (main's thread) prints the one line and leaves;
 * worker threads still blocked end with the process. */
static void s_die(void)
{
    s_stop_ps();
    fprintf(stderr, "bench_ps: %s (PS logs in %s)\n", s_b.why, s_b.tmp);
    exit(1);
}

/* A PS that exited is a failure: say which and where its log is. */
static void s_check_ps_alive(void)
{
    for (int k = 0; k < s_b.K; k++) {
        s_ps_t *p = &s_b.ps[k];
        int st;
        if (p->pid > 0 && waitpid(p->pid, &st, WNOHANG) == p->pid) {
            p->pid = 0;
            s_fail("PS %d exited (%s %d); its log: %s", k, WIFEXITED(st) ? "status" : "signal",
                   WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st), p->log);
        }
    }
    if (s_interrupted) s_fail("interrupted");
}

/* ---- the PS processes ------------------------------------------------------------------- */

static void s_spawn_ps(int k, const char *coord_ep)
{
    s_ps_t *p = &s_b.ps[k];
    snprintf(p->log, sizeof p->log, "%s/ps%d-%s.log", s_b.tmp, k, s_b.curve ? "curve" : "plain");
    char threads[16];
    snprintf(threads, sizeof threads, "%d", s_b.ps_threads);
    const char *argv[16];
    int a = 0;
    argv[a++] = s_b.booth;
    argv[a++] = "ps";
    argv[a++] = "--coordinator";
    argv[a++] = coord_ep;
    argv[a++] = "--bind";
    argv[a++] = "tcp://127.0.0.1:*";
    argv[a++] = "--threads";
    argv[a++] = threads;
    if (s_b.curve) {
        argv[a++] = "--keys";
        argv[a++] = s_b.keys;
    } else {
        argv[a++] = "--insecure";
    }
    argv[a] = NULL;
    pid_t pid = fork();
    if (pid < 0) {
        s_fail("fork: %s", strerror(errno));
        s_die();
    }
    if (pid == 0) { /* the child: async-signal-safe calls only, then exec */
        int fd = open(p->log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        prctl(PR_SET_PDEATHSIG, SIGTERM); /* never outlive the bench */
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    p->pid = pid;
}

/* The PS a message on the coordinator ROUTER came from, or -1. */
static int s_ps_of(const pr_msg_t *m)
{
    for (int k = 0; k < s_b.K; k++) {
        const s_ps_t *p = &s_b.ps[k];
        if (p->registered && zmq_msg_size((zmq_msg_t *)&p->rid) == zmq_msg_size((zmq_msg_t *)&m->routing_id) &&
            !memcmp(zmq_msg_data((zmq_msg_t *)&p->rid), zmq_msg_data((zmq_msg_t *)&m->routing_id),
                    zmq_msg_size((zmq_msg_t *)&m->routing_id)))
            return k;
    }
    return -1;
}

/* The next message on the coordinator ROUTER other than a heartbeat or a repeated
 * hello, serving ZAP meanwhile. Fails the run on a timeout, a failure elsewhere,
 * an Error from a PS, or (body >= 0) a message of another kind. *from: the PS. */
static void s_coord_recv(int body, pr_msg_t *m, int *from)
{
    double deadline = s_now() + s_b.timeout_ms / 1000.0;
    for (;;) {
        s_check_ps_alive();
        if (s_failed()) s_die();
        double left = deadline - s_now();
        if (left <= 0) {
            s_fail("no '%s' from the PS within %d ms", pr_body_name(body), s_b.timeout_ms);
            s_die();
        }
        zmq_pollitem_t it[2] = {{s_b.router, 0, ZMQ_POLLIN, 0}, {pr_node_zap_socket(&s_b.node), 0, ZMQ_POLLIN, 0}};
        int n = it[1].socket ? 2 : 1;
        long ms = left * 1000 < S_POLL_MS ? (long)(left * 1000) + 1 : S_POLL_MS;
        if (zmq_poll(it, n, ms) < 0 && zmq_errno() != EINTR) {
            s_fail("poll: %s", zmq_strerror(zmq_errno()));
            s_die();
        }
        if (n == 2 && (it[1].revents & ZMQ_POLLIN)) pr_node_zap_serve(&s_b.node);
        if (!(it[0].revents & ZMQ_POLLIN)) continue;
        int rc = pr_recv_nowait(s_b.router, true, S_MAX_BYTES, m);
        if (rc == BT_EAGAIN) continue;
        if (rc != BT_OK) {
            s_fail("a malformed message on the coordinator socket (%s)", bt_status_str(rc));
            s_die();
        }
        int k = s_ps_of(m);
        int got = m->env->body_case;
        if (got == BOOTH__ENVELOPE__BODY_HEARTBEAT || (got == BOOTH__ENVELOPE__BODY_HELLO && k >= 0)) {
            pr_msg_free(m);
            continue;
        }
        if (got == BOOTH__ENVELOPE__BODY_ERROR) {
            s_fail("PS %d (%s) sent an Error: %s", k, m->peer, m->env->error->message);
            pr_msg_free(m);
            s_die();
        }
        /* a new PS's Hello comes from no known peer; everything else from a registered PS */
        if (body >= 0 && (got != body || (k < 0) != (body == BOOTH__ENVELOPE__BODY_HELLO))) {
            s_fail("'%s' from %s (%s PS), expected '%s'", pr_body_name(got), m->peer, k < 0 ? "an unknown" : "a known",
                   pr_body_name(body));
            pr_msg_free(m);
            s_die();
        }
        *from = k;
        return;
    }
}

static void s_coord_send(int k, Booth__Envelope *env, const pr_blob_t *blobs, int n)
{
    if (pr_send(s_b.router, &s_b.ps[k].rid, env, blobs, n)) {
        s_fail("cannot send '%s' to PS %d", pr_body_name(env->body_case), k);
        s_die();
    }
}

/* K PS processes started and registered (Hello -> Welcome). */
static void s_start_ps(int K)
{
    memset(s_b.ps, 0, sizeof s_b.ps);
    s_b.K = K;
    pr_node_opts_t no = {.keys_dir = s_b.curve ? s_b.keys : NULL, .insecure = !s_b.curve};
    if (pr_node_init(&s_b.node, &no, "bench-coordinator", true, false)) {
        s_fail("cannot set up the coordinator's ZeroMQ context and keys");
        s_die();
    }
    pr_sockopts_t so = {.max_bytes = S_MAX_BYTES,
                        .insecure = !s_b.curve,
                        .keys = s_b.curve ? &s_b.node.keys : NULL,
                        .zap = s_b.node.zap};
    if (!(s_b.router = pr_router_bind(s_b.node.ctx, "tcp://127.0.0.1:*", &so))) {
        s_fail("cannot bind the coordinator's socket");
        s_die();
    }
    char ep[256];
    pr_last_endpoint(s_b.router, ep, sizeof ep);
    for (int k = 0; k < K; k++)
        s_spawn_ps(k, ep);
    int registered = 0;
    while (registered < K) {
        pr_msg_t m;
        int from;
        s_coord_recv(BOOTH__ENVELOPE__BODY_HELLO, &m, &from);
        const Booth__Hello *h = m.env->hello;
        if (h->role != BOOTH__ROLE__ROLE_PS || !h->endpoint || !*h->endpoint) {
            s_fail("a Hello that is not a PS's from %s", m.peer);
            s_die();
        }
        s_ps_t *p = &s_b.ps[registered++];
        zmq_msg_init(&p->rid);
        zmq_msg_copy(&p->rid, &m.routing_id);
        p->registered = true;
        snprintf(p->name, sizeof p->name, "%s", h->name ? h->name : "");
        snprintf(p->endpoint, sizeof p->endpoint, "%s", h->endpoint);
        snprintf(p->key, sizeof p->key, "%s", h->public_key ? h->public_key : "");
        pr_msg_free(&m);
        Booth__Welcome w = BOOTH__WELCOME__INIT;
        char id[16];
        snprintf(id, sizeof id, "ps%d", registered);
        w.peer_id = id;
        w.heartbeat_ms = S_HEARTBEAT_MS;
        Booth__Envelope env = PR_ENVELOPE_INIT(WELCOME, welcome, &w);
        s_coord_send(registered - 1, &env, NULL, 0);
    }
    /* PS k in hello order is not process k: match pids by the Hello's "host:pid" */
    pid_t pids[S_MAX_PS];
    char logs[S_MAX_PS][512];
    for (int k = 0; k < K; k++) {
        pids[k] = s_b.ps[k].pid;
        memcpy(logs[k], s_b.ps[k].log, sizeof logs[k]);
    }
    for (int k = 0; k < K; k++) {
        const char *colon = strrchr(s_b.ps[k].name, ':');
        pid_t hp = colon ? (pid_t)atoi(colon + 1) : 0;
        for (int j = 0; j < K; j++)
            if (pids[j] == hp) {
                s_b.ps[k].pid = hp;
                memcpy(s_b.ps[k].log, logs[j], sizeof s_b.ps[k].log);
            }
    }
}

static void s_end_ps(void)
{
    s_stop_ps();
    for (int k = 0; k < s_b.K; k++) {
        zmq_msg_close(&s_b.ps[k].rid);
        free(s_b.ps[k].held);
        s_b.ps[k].held = NULL;
    }
    zmq_close(s_b.router);
    s_b.router = NULL;
    pr_node_free(&s_b.node);
    s_b.K = 0;
}

/* ---- the job: PsLoad, Release --------------------------------------------------------- */

static const char s_job_json[] = "{\"learning_rate\": 0.0001, \"max_train_steps\": 100000, \"max_grad_norm\": 1.0}";

static void s_load(const float *p0, const float *zeros, int M)
{
    for (int k = 0; k < s_b.K; k++) {
        s_ps_t *p = &s_b.ps[k];
        free(p->held);
        p->held = calloc((size_t)s_nt, sizeof *p->held);
        int32_t *index = calloc((size_t)s_nt, sizeof *index);
        pr_blob_t *blobs = calloc(3 * (size_t)s_nt, sizeof *blobs);
        if (!p->held || !index || !blobs) {
            s_fail("out of memory");
            s_die();
        }
        p->nheld = 0;
        p->held_floats = 0;
        int nb = 0;
        for (int i = k; i < s_nt; i += s_b.K) {
            const s_tensor_t *t = &s_t[i];
            index[p->nheld] = i;
            p->held[p->nheld++] = i;
            p->held_floats += t->numel;
            blobs[nb++] = pr_blob_of_f32(t->pname[0], p0 + t->offset, 2, t->shape);
            blobs[nb++] = pr_blob_of_f32(t->pname[1], zeros + t->offset, 2, t->shape);
            blobs[nb++] = pr_blob_of_f32(t->pname[2], zeros + t->offset, 2, t->shape);
        }
        Booth__PsLoad l = BOOTH__PS_LOAD__INIT;
        l.job_id = s_b.job;
        l.job_json = (char *)s_job_json;
        l.step = 0;
        l.n_index = (size_t)p->nheld;
        l.index = index;
        l.microbatches = M;
        Booth__Envelope env = PR_ENVELOPE_INIT(PS_LOAD, ps_load, &l);
        s_coord_send(k, &env, blobs, nb);
        free(index);
        free(blobs);
    }
    for (int n = 0; n < s_b.K; n++) {
        pr_msg_t m;
        int from;
        s_coord_recv(BOOTH__ENVELOPE__BODY_PS_LOADED, &m, &from);
        pr_msg_free(&m);
    }
}

static void s_release(void)
{
    for (int k = 0; k < s_b.K; k++) {
        Booth__Release r = BOOTH__RELEASE__INIT;
        r.job_id = s_b.job;
        Booth__Envelope env = PR_ENVELOPE_INIT(RELEASE, release, &r);
        s_coord_send(k, &env, NULL, 0);
    }
}

/* ---- a worker ---------------------------------------------------------------------------- */

struct s_worker {
    int w;      /* its micro-batch index */
    int nsteps; /* warm-up + measured */
    void *ctx;  /* its own ZeroMQ context (and I/O thread), as a worker process has */
    void *sock[S_MAX_PS];
    const float *grad; /* its micro-batch gradient, global order */
    float *params;     /* where the pulled weights go (a worker's trainer) */
    pr_blob_t *blobs[S_MAX_PS];
    double t_done; /* when it held every PS's weights of the step */
    pthread_t th;
};

/* One reply from each of the K PS: PushAck{step, w} (pull false) or Weights{step}
 * copied into params (pull true). False after recording the failure. */
static bool s_worker_replies(s_worker_t *wk, bool pull, int64_t step)
{
    bool got[S_MAX_PS] = {false};
    int ngot = 0;
    double deadline = s_now() + s_b.timeout_ms / 1000.0;
    const char *want = pull ? "weights" : "push_ack";
    while (ngot < s_b.K) {
        zmq_pollitem_t it[S_MAX_PS];
        for (int k = 0; k < s_b.K; k++)
            it[k] = (zmq_pollitem_t){wk->sock[k], 0, ZMQ_POLLIN, 0};
        double left = deadline - s_now();
        if (left <= 0 || s_failed()) {
            s_fail("worker %d: no '%s' of step %lld from every PS within %d ms", wk->w, want, (long long)step,
                   s_b.timeout_ms);
            return false;
        }
        if (zmq_poll(it, s_b.K, left * 1000 < S_POLL_MS ? (long)(left * 1000) + 1 : S_POLL_MS) < 0 &&
            zmq_errno() != EINTR) {
            s_fail("worker %d: poll: %s", wk->w, zmq_strerror(zmq_errno()));
            return false;
        }
        for (int k = 0; k < s_b.K; k++) {
            if (!(it[k].revents & ZMQ_POLLIN)) continue;
            pr_msg_t m;
            int rc = pr_recv_nowait(wk->sock[k], false, S_MAX_BYTES, &m);
            if (rc == BT_EAGAIN) continue;
            if (rc != BT_OK) {
                s_fail("worker %d: a malformed message from PS %d (%s)", wk->w, k, bt_status_str(rc));
                return false;
            }
            const Booth__Envelope *e = m.env;
            bool ok = !got[k];
            if (e->body_case == BOOTH__ENVELOPE__BODY_ERROR) {
                s_fail("worker %d: PS %d sent an Error: %s", wk->w, k, e->error->message);
                ok = false;
            } else if (!pull) {
                ok = ok && e->body_case == BOOTH__ENVELOPE__BODY_PUSH_ACK && e->push_ack->step == step &&
                     e->push_ack->micro == wk->w && e->push_ack->accepted;
            } else {
                ok = ok && e->body_case == BOOTH__ENVELOPE__BODY_WEIGHTS && e->weights->version == step + 1 &&
                     e->n_blobs == (size_t)s_b.ps[k].nheld;
                for (size_t b = 0; ok && b < e->n_blobs; b++) { /* the PS sends its tensors in load order */
                    const s_tensor_t *t = &s_t[s_b.ps[k].held[b]];
                    int64_t numel = 0;
                    const float *x = pr_blob_f32_at(&m, (int)b, &numel);
                    ok = x && numel == t->numel && !strcmp(e->blobs[b]->name, t->name);
                    if (ok) memcpy(wk->params + t->offset, x, (size_t)numel * sizeof *x);
                }
            }
            if (!ok && !s_failed())
                s_fail("worker %d: from PS %d a '%s' that is not the %s of step %lld it waits for", wk->w, k,
                       pr_body_name(e->body_case), want, (long long)step);
            pr_msg_free(&m);
            if (!ok) return false;
            got[k] = true;
            ngot++;
        }
    }
    return true;
}

static bool s_worker_wait(s_worker_t *wk, const int64_t *gate, int64_t s)
{
    pthread_mutex_lock(&s_b.mu);
    while (*gate < s && !s_b.failed && !s_b.stop)
        pthread_cond_wait(&s_b.cv, &s_b.mu);
    bool go = !s_b.failed && !s_b.stop;
    pthread_mutex_unlock(&s_b.mu);
    (void)wk;
    return go;
}

static bool s_worker_send(s_worker_t *wk, int k, Booth__Envelope *env, const pr_blob_t *blobs, int n)
{
    if (pr_send(wk->sock[k], NULL, env, blobs, n) == 0) return true;
    s_fail("worker %d: cannot send '%s' to PS %d", wk->w, pr_body_name(env->body_case), k);
    return false;
}

static bool s_worker_pull(s_worker_t *wk, int64_t step) /* version step + 1 */
{
    Booth__Pull p = BOOTH__PULL__INIT;
    p.job_id = s_b.job;
    p.version = step + 1;
    Booth__Envelope env = PR_ENVELOPE_INIT(PULL, pull, &p);
    for (int k = 0; k < s_b.K; k++)
        if (!s_worker_send(wk, k, &env, NULL, 0)) return false;
    return s_worker_replies(wk, true, step);
}

static void *s_worker_main(void *arg)
{
    s_worker_t *wk = arg;
    /* version 0 first, as a worker's first task does: connections made, untimed */
    if (!s_worker_pull(wk, -1)) return NULL;
    for (int64_t s = 0; s < wk->nsteps; s++) {
        if (!s_worker_wait(wk, &s_b.push_step, s)) return NULL;
        Booth__Push p = BOOTH__PUSH__INIT;
        p.job_id = s_b.job;
        p.step = s;
        p.micro = wk->w;
        Booth__Envelope env = PR_ENVELOPE_INIT(PUSH, push, &p);
        for (int k = 0; k < s_b.K; k++)
            if (!s_worker_send(wk, k, &env, wk->blobs[k], s_b.ps[k].nheld)) return NULL;
        if (!s_worker_replies(wk, false, s)) return NULL;
        if (!s_worker_wait(wk, &s_b.pull_step, s)) return NULL;
        if (!s_worker_pull(wk, s)) return NULL;
        pthread_mutex_lock(&s_b.mu);
        wk->t_done = s_now();
        s_b.done++;
        pthread_cond_broadcast(&s_b.cv);
        pthread_mutex_unlock(&s_b.mu);
    }
    return NULL;
}

static void s_worker_open(s_worker_t *wk)
{
    if (!(wk->ctx = zmq_ctx_new())) {
        s_fail("worker %d: no ZeroMQ context", wk->w);
        s_die();
    }
    for (int k = 0; k < s_b.K; k++) {
        pr_sockopts_t so = {.max_bytes = S_MAX_BYTES,
                            .insecure = !s_b.curve,
                            .keys = s_b.curve ? &s_b.node.keys : NULL,
                            .server_key = s_b.curve ? s_b.ps[k].key : NULL};
        if (!(wk->sock[k] = pr_dealer_connect(wk->ctx, s_b.ps[k].endpoint, &so))) {
            s_fail("worker %d: cannot connect to PS %d at %s", wk->w, k, s_b.ps[k].endpoint);
            s_die();
        }
        wk->blobs[k] = calloc((size_t)(s_b.ps[k].nheld ? s_b.ps[k].nheld : 1), sizeof *wk->blobs[k]);
        if (!wk->blobs[k]) {
            s_fail("out of memory");
            s_die();
        }
        for (int j = 0; j < s_b.ps[k].nheld; j++) {
            const s_tensor_t *t = &s_t[s_b.ps[k].held[j]];
            wk->blobs[k][j] = pr_blob_of_f32(t->name, wk->grad + t->offset, 2, t->shape);
        }
    }
}

static void s_worker_close(s_worker_t *wk)
{
    for (int k = 0; k < s_b.K; k++) {
        zmq_close(wk->sock[k]);
        free(wk->blobs[k]);
    }
    zmq_ctx_term(wk->ctx);
}

/* ---- one row: N workers, K PS, one security setting ------------------------------------ */

typedef struct {
    int N, K;
    bool curve;
    double med, p90, push_med, apply_med, pull_med, floor_ms, ps_cpu_ms, self_cpu_ms, ps_faults;
} s_row_t;

/* The coordinator waits until every worker holds step s's new version. */
static void s_wait_done(int N)
{
    pthread_mutex_lock(&s_b.mu);
    double deadline = s_now() + s_b.timeout_ms / 1000.0;
    while (s_b.done < N && !s_b.failed) {
        if (s_now() > deadline) {
            pthread_mutex_unlock(&s_b.mu);
            s_fail("the workers did not all pull within %d ms", s_b.timeout_ms);
            s_die();
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += S_POLL_MS * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&s_b.cv, &s_b.mu, &ts);
        pthread_mutex_unlock(&s_b.mu);
        s_check_ps_alive();
        pthread_mutex_lock(&s_b.mu);
    }
    bool failed = s_b.failed;
    pthread_mutex_unlock(&s_b.mu);
    if (failed) s_die();
}

static void s_gate(int64_t *gate, int64_t s)
{
    pthread_mutex_lock(&s_b.mu);
    *gate = s;
    pthread_cond_broadcast(&s_b.cv);
    pthread_mutex_unlock(&s_b.mu);
}

/* Median over reps of memcpy of each worker's gradient in and the weights out:
 * 2 N x the LoRA's bytes, each into its own buffer, one thread. */
static double s_floor_ms(float *const *grads, const float *p0, int N)
{
    size_t bytes = (size_t)s_total * sizeof(float);
    float **dst = calloc(2 * (size_t)N, sizeof *dst);
    if (!dst) {
        s_fail("out of memory");
        s_die();
    }
    for (int i = 0; i < 2 * N; i++) {
        dst[i] = s_alloc(s_total);
        memset(dst[i], 0, bytes); /* the pages exist before timing */
    }
    enum { REPS = 7 };
    double t[REPS];
    for (int r = 0; r < REPS; r++) {
        double t0 = s_now();
        for (int w = 0; w < N; w++)
            memcpy(dst[w], grads[w], bytes);
        for (int w = 0; w < N; w++)
            memcpy(dst[N + w], p0, bytes);
        t[r] = (s_now() - t0) * 1e3;
    }
    for (int i = 0; i < 2 * N; i++)
        free(dst[i]);
    free(dst);
    return s_quantile(t, REPS, 0.5);
}

static s_row_t s_run_row(int N, int warmup, int steps, float *const *grads, const float *p0, const float *zeros,
                         float *const *params)
{
    s_row_t row = {.N = N, .K = s_b.K, .curve = s_b.curve};
    snprintf(s_b.job, sizeof s_b.job, "bench-%dw-%dps-%s", N, s_b.K, s_b.curve ? "curve" : "plain");
    s_load(p0, zeros, N);

    s_worker_t *wk = calloc((size_t)N, sizeof *wk);
    double *rt = calloc((size_t)steps, sizeof *rt), *ph[3];
    for (int q = 0; q < 3; q++)
        ph[q] = calloc((size_t)steps, sizeof *ph[q]);
    double *ss = calloc((size_t)s_nt, sizeof *ss);
    if (!wk || !rt || !ph[0] || !ph[1] || !ph[2] || !ss) {
        s_fail("out of memory");
        s_die();
    }
    pthread_mutex_lock(&s_b.mu);
    s_b.push_step = s_b.pull_step = -1;
    s_b.done = 0;
    s_b.stop = false;
    pthread_mutex_unlock(&s_b.mu);
    for (int w = 0; w < N; w++) {
        wk[w] = (s_worker_t){.w = w, .nsteps = warmup + steps, .grad = grads[w], .params = params[w]};
        s_worker_open(&wk[w]);
        if (pthread_create(&wk[w].th, NULL, s_worker_main, &wk[w])) {
            s_fail("cannot start a worker thread");
            s_die();
        }
    }

    double cpu_ps0 = 0, cpu_self0 = 0, flt0 = 0;
    for (int64_t s = 0; s < warmup + steps; s++) {
        if (s == warmup) {
            cpu_ps0 = flt0 = 0;
            for (int k = 0; k < s_b.K; k++)
                cpu_ps0 += s_proc_cpu(s_b.ps[k].pid, &flt0);
            cpu_self0 = s_self_cpu();
        }
        pthread_mutex_lock(&s_b.mu);
        s_b.done = 0;
        pthread_mutex_unlock(&s_b.mu);
        double t0 = s_now();
        s_gate(&s_b.push_step, s);

        /* GradReady from every PS: the norm from the per-tensor sums in global order */
        for (int n = 0; n < s_b.K; n++) {
            pr_msg_t m;
            int k;
            s_coord_recv(BOOTH__ENVELOPE__BODY_GRAD_READY, &m, &k);
            const Booth__GradReady *g = m.env->grad_ready;
            if (g->step != s || g->n_index != (size_t)s_b.ps[k].nheld || g->n_sum_squares != g->n_index) {
                s_fail("PS %d: a GradReady for step %lld with %zu sums, expected step %lld with %d", k,
                       (long long)g->step, g->n_sum_squares, (long long)s, s_b.ps[k].nheld);
                s_die();
            }
            for (size_t i = 0; i < g->n_index; i++) {
                if (g->index[i] < 0 || g->index[i] >= s_nt) {
                    s_fail("PS %d: a GradReady with index %d", k, g->index[i]);
                    s_die();
                }
                ss[g->index[i]] = g->sum_squares[i];
            }
            pr_msg_free(&m);
        }
        double t_ready = s_now();
        double norm = sd_grad_norm(ss, s_nt);
        for (int k = 0; k < s_b.K; k++) {
            Booth__Apply a = BOOTH__APPLY__INIT;
            a.job_id = s_b.job;
            a.step = s;
            a.grad_norm = norm;
            Booth__Envelope env = PR_ENVELOPE_INIT(APPLY, apply, &a);
            s_coord_send(k, &env, NULL, 0);
        }
        for (int n = 0; n < s_b.K; n++) {
            pr_msg_t m;
            int k;
            s_coord_recv(BOOTH__ENVELOPE__BODY_APPLIED, &m, &k);
            if (m.env->applied->step != s + 1) {
                s_fail("PS %d: Applied{%lld} for step %lld", k, (long long)m.env->applied->step, (long long)s);
                s_die();
            }
            pr_msg_free(&m);
        }
        double t_applied = s_now();
        s_gate(&s_b.pull_step, s);
        s_wait_done(N);
        double t_end = 0;
        for (int w = 0; w < N; w++)
            t_end = wk[w].t_done > t_end ? wk[w].t_done : t_end;
        if (s >= warmup) {
            int i = (int)(s - warmup);
            rt[i] = (t_end - t0) * 1e3;
            ph[0][i] = (t_ready - t0) * 1e3;
            ph[1][i] = (t_applied - t_ready) * 1e3;
            ph[2][i] = (t_end - t_applied) * 1e3;
        }
    }
    double cpu_ps = 0, flt = 0;
    for (int k = 0; k < s_b.K; k++)
        cpu_ps += s_proc_cpu(s_b.ps[k].pid, &flt);
    row.ps_cpu_ms = (cpu_ps - cpu_ps0) * 1e3 / steps;
    row.ps_faults = (flt - flt0) / steps;
    row.self_cpu_ms = (s_self_cpu() - cpu_self0) * 1e3 / steps;

    for (int w = 0; w < N; w++) {
        pthread_join(wk[w].th, NULL);
        s_worker_close(&wk[w]);
    }
    s_release();
    row.med = s_quantile(rt, steps, 0.5);
    row.p90 = s_quantile(rt, steps, 0.9);
    row.push_med = s_quantile(ph[0], steps, 0.5);
    row.apply_med = s_quantile(ph[1], steps, 0.5);
    row.pull_med = s_quantile(ph[2], steps, 0.5);
    row.floor_ms = s_floor_ms(grads, p0, N);
    free(wk);
    free(rt);
    for (int q = 0; q < 3; q++)
        free(ph[q]);
    free(ss);
    return row;
}

/* ---- main -------------------------------------------------------------------------------- */

static int s_parse_list(const char *s, int *out, int cap, int lo, int hi)
{
    int n = 0;
    char *end;
    while (*s) {
        long v = strtol(s, &end, 10);
        if (end == s || v < lo || v > hi || n == cap) return -1;
        out[n++] = (int)v;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',') return -1;
    }
    return n;
}

static void s_usage(void)
{
    fprintf(stderr, "usage: bench_ps [--booth PATH] [--workers 1,2,4,8] [--ps 1,2] [--security plain,curve]\n"
                    "                [--steps 20] [--warmup 3] [--ps-threads 1] [--rank 16] [--timeout-ms 30000]\n"
                    "                [--markdown]\n");
}

static void s_print_row(const s_row_t *r, bool md)
{
    if (md)
        printf("| %d | %d | %s | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.0f | %.0f | %.0f |\n", r->N, r->K,
               r->curve ? "yes" : "no", r->med, r->p90, r->push_med, r->apply_med, r->pull_med, r->floor_ms,
               r->med / r->floor_ms, r->ps_cpu_ms, r->ps_faults, r->self_cpu_ms);
    else
        printf("workers %d  ps %d  %-5s  round trip %7.1f ms (p90 %7.1f): push+sum %6.1f  apply %5.1f  pull %6.1f  "
               "| floor %5.1f ms  ratio %5.1f | per step: ps %4.0f ms cpu, %5.0f page faults; workers+coordinator "
               "%4.0f ms cpu\n",
               r->N, r->K, r->curve ? "curve" : "plain", r->med, r->p90, r->push_med, r->apply_med, r->pull_med,
               r->floor_ms, r->med / r->floor_ms, r->ps_cpu_ms, r->ps_faults, r->self_cpu_ms);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    int workers[16] = {1, 2, 4, 8}, nw = 4, pss[S_MAX_PS] = {1, 2}, nps = 2, steps = 20, warmup = 3, rank = 16;
    bool sec[2] = {true, true}, md = false; /* plain, curve */
    const char *booth = getenv("BOOTH");
    s_b.ps_threads = 1;
    s_b.timeout_ms = 30000;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool ok = true;
        if (!strcmp(a, "--markdown")) {
            md = true;
            continue;
        } else if (!v) {
            ok = false;
        } else if (!strcmp(a, "--booth")) {
            booth = v;
        } else if (!strcmp(a, "--workers")) {
            ok = (nw = s_parse_list(v, workers, 16, 1, S_MAX_WORKERS)) > 0;
        } else if (!strcmp(a, "--ps")) {
            ok = (nps = s_parse_list(v, pss, S_MAX_PS, 1, S_MAX_PS)) > 0;
        } else if (!strcmp(a, "--security")) {
            sec[0] = strstr(v, "plain") != NULL;
            sec[1] = strstr(v, "curve") != NULL;
            ok = sec[0] || sec[1];
        } else if (!strcmp(a, "--steps")) {
            ok = (steps = atoi(v)) >= 1;
        } else if (!strcmp(a, "--warmup")) {
            ok = (warmup = atoi(v)) >= 0;
        } else if (!strcmp(a, "--ps-threads")) {
            ok = (s_b.ps_threads = atoi(v)) >= 1;
        } else if (!strcmp(a, "--rank")) {
            ok = (rank = atoi(v)) >= 1 && rank <= 1024;
        } else if (!strcmp(a, "--timeout-ms")) {
            ok = (s_b.timeout_ms = atoi(v)) >= 100;
        } else {
            ok = false;
        }
        if (!ok) {
            fprintf(stderr, "bench_ps: bad option %s%s%s\n", a, v ? " " : "", v ? v : "");
            s_usage();
            return 2;
        }
        i++;
    }
    s_b.booth = booth && *booth ? booth : "build/booth";
    if (access(s_b.booth, X_OK)) {
        fprintf(stderr, "bench_ps: %s is not an executable booth (--booth PATH or BOOTH=PATH)\n", s_b.booth);
        return 2;
    }
    bt_log_set_level(BT_LOG_WARN);
    pthread_mutex_init(&s_b.mu, NULL);
    pthread_cond_init(&s_b.cv, NULL);
    struct sigaction sa = {.sa_handler = s_on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    s_layout(rank);
    if (s_total != 199296LL * rank || s_nt != 256) {
        fprintf(stderr, "bench_ps: the layout has %d tensors, %lld parameters; SD 1.5 has 256 and 199296 x %d\n", s_nt,
                (long long)s_total, rank);
        return 1;
    }

    snprintf(s_b.tmp, sizeof s_b.tmp, "/tmp/bench_ps.XXXXXX");
    if (!mkdtemp(s_b.tmp)) {
        fprintf(stderr, "bench_ps: mkdtemp: %s\n", strerror(errno));
        return 1;
    }
    if (sec[1]) {
        pr_keypair_t kp;
        snprintf(s_b.keys, sizeof s_b.keys, "%s/keys", s_b.tmp);
        char path[160];
        snprintf(path, sizeof path, "%s/%s", s_b.keys, PR_AUTHORIZED_KEYS_FILE);
        FILE *f = NULL;
        if (pr_keys_generate(&kp) || pr_keys_write(s_b.keys, &kp, false) || !(f = fopen(path, "w")) ||
            fprintf(f, "%s\n", kp.public_z85) < 0 || fclose(f)) {
            fprintf(stderr, "bench_ps: cannot make CURVE keys in %s\n", s_b.keys);
            return 1;
        }
    }

    int maxN = 0;
    for (int i = 0; i < nw; i++)
        maxN = workers[i] > maxN ? workers[i] : maxN;
    float *p0 = s_alloc(s_total), *zeros = s_alloc(s_total);
    s_fill(p0, s_total, 1, 0.02f);
    memset(zeros, 0, (size_t)s_total * sizeof *zeros);
    float **grads = calloc((size_t)maxN, sizeof *grads), **params = calloc((size_t)maxN, sizeof *params);
    if (!grads || !params) {
        fprintf(stderr, "bench_ps: out of memory\n");
        return 1;
    }
    for (int w = 0; w < maxN; w++) {
        grads[w] = s_alloc(s_total);
        s_fill(grads[w], s_total, 100 + (uint64_t)w, 1e-3f);
        params[w] = s_alloc(s_total);
        memcpy(params[w], p0, (size_t)s_total * sizeof *p0);
    }

    printf("%sSD 1.5 rank-%d UNet LoRA: %d tensors, %lld parameters, %.1f MB float32; %d warm-up + %d measured "
           "steps per row; PS: %s ps --threads %d on loopback; %d CPUs\n",
           md ? "" : "# ", rank, s_nt, (long long)s_total, (double)s_total * 4 / 1e6, warmup, steps, s_b.booth,
           s_b.ps_threads, (int)sysconf(_SC_NPROCESSORS_ONLN));
    if (md)
        printf("\n| workers | PS | CURVE | round trip ms (median) | p90 | push + sum | apply | pull | memcpy floor ms "
               "| round trip / floor | PS CPU ms/step | PS page faults/step | bench CPU ms/step |\n"
               "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (int c = 0; c < 2; c++) {
        if (!sec[c]) continue;
        s_b.curve = c == 1;
        for (int j = 0; j < nps; j++) {
            s_start_ps(pss[j]);
            for (int i = 0; i < nw; i++) {
                s_row_t r = s_run_row(workers[i], warmup, steps, grads, p0, zeros, params);
                s_print_row(&r, md);
            }
            s_end_ps();
        }
    }

    /* the temp folder: the keys and the PS logs, gone after a clean run */
    char path[600];
    for (int c = 0; c < 2; c++)
        for (int k = 0; k < S_MAX_PS; k++) {
            snprintf(path, sizeof path, "%s/ps%d-%s.log", s_b.tmp, k, c ? "curve" : "plain");
            unlink(path);
        }
    if (sec[1]) {
        static const char *const files[] = {PR_SECRET_KEY_FILE, PR_PUBLIC_KEY_FILE, PR_AUTHORIZED_KEYS_FILE};
        for (int i = 0; i < 3; i++) {
            snprintf(path, sizeof path, "%s/%s", s_b.keys, files[i]);
            unlink(path);
        }
        rmdir(s_b.keys);
    }
    rmdir(s_b.tmp);
    for (int w = 0; w < maxN; w++) {
        free(grads[w]);
        free(params[w]);
    }
    free(grads);
    free(params);
    free(p0);
    free(zeros);
    free(s_t);
    return 0;
}
