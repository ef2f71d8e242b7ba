/*
 * fuzz.c — what the harnesses share (fuzz.h), and, in the test runner, the
 * replay of each harness's committed corpus and regression inputs.
 */
#include "tests/fuzz/fuzz.h"

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"
#include "common/status.h"

static const char *s_name = "?";
static atomic_int s_logged;
static bool s_verbose;

static atomic_int s_dropped;

static void s_sink(bt_log_level_t level, const char *msg, void *user)
{
    (void)user;
    if (level <= BT_LOG_WARN) atomic_fetch_add(&s_logged, 1);
    if (level <= BT_LOG_WARN && strstr(msg, ": dropped ")) atomic_fetch_add(&s_dropped, 1); /* proto/wire.c */
    if (s_verbose) fprintf(stderr, "booth: %s\n", msg);
}

void fz_begin(const char *name)
{
    static bool once;
    if (!once) {
        once = true;
        const char *v = getenv("BOOTH_FUZZ_VERBOSE");
        s_verbose = v && *v == '1';
        bt_log_set_level(s_verbose ? BT_LOG_DEBUG : BT_LOG_WARN);
        bt_log_set_sink(s_sink, NULL);
    }
    s_name = name;
    atomic_store(&s_logged, 0);
}

int fz_logged(void) { return atomic_load(&s_logged); }

int fz_dropped(void) { return atomic_load(&s_dropped); }

void fz_bug(const char *what, ...)
{
    va_list ap;
    va_start(ap, what);
    fprintf(stderr, "fuzz_%s: invariant broken: ", s_name);
    vfprintf(stderr, what, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}

void fz_failed(int rc, const char *call)
{
    if (rc != 0 && atomic_load(&s_logged) == 0) fz_bug("%s failed (status %d) without a log line", call, rc);
    atomic_store(&s_logged, 0);
}

const char *fz_file(int slot, const void *data, size_t size)
{
    static int fd[4] = {-1, -1, -1, -1};
    static char path[4][64];
    if (slot < 0 || slot > 3) fz_bug("fz_file slot %d", slot);
    if (fd[slot] < 0) {
        char nm[32];
        snprintf(nm, sizeof nm, "fuzz-%d", slot);
        if ((fd[slot] = memfd_create(nm, 0)) < 0) {
            perror("memfd_create");
            abort();
        }
        snprintf(path[slot], sizeof path[slot], "/proc/self/fd/%d", fd[slot]);
    }
    if (ftruncate(fd[slot], 0) != 0 || (size && pwrite(fd[slot], data, size, 0) != (ssize_t)size)) {
        perror("fuzz input file");
        abort();
    }
    return path[slot];
}

const char *fz_dir(void)
{
    static char dir[512];
    if (!dir[0]) {
        const char *t = getenv("BOOTH_TEST_TMPDIR");
        struct stat st;
        if (!t && stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode)) t = "/dev/shm"; /* memory, not the disk */
        if (!t) t = getenv("TMPDIR");
        snprintf(dir, sizeof dir, "%s/booth-fuzz-%d", t ? t : "/tmp", (int)getpid());
        if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
            perror(dir);
            abort();
        }
    }
    return dir;
}

const char *fz_write(const char *name, const void *data, size_t size)
{
    static char path[8][600];
    static int next;
    char *p = path[next++ % 8];
    snprintf(p, sizeof path[0], "%s/%s", fz_dir(), name);
    FILE *f = fopen(p, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f) != 0) {
        perror(p);
        abort();
    }
    return p;
}

const char *fz_fixture(const char *name)
{
    static char path[8][600];
    static int next;
    char *p = path[next++ % 8];
    const char *dir = getenv("BOOTH_FIXTURES");
    snprintf(p, sizeof path[0], "%s/%s", dir ? dir : "tests/fixtures", name);
    return p;
}

uint8_t fz_u8(fz_in_t *in)
{
    if (!in->n) return 0;
    in->n--;
    return *in->p++;
}

uint32_t fz_u32(fz_in_t *in)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)fz_u8(in) << (8 * i);
    return v;
}

const uint8_t *fz_piece(fz_in_t *in, size_t *len)
{
    size_t want = fz_u8(in);
    want |= (size_t)fz_u8(in) << 8;
    if (want > in->n) want = in->n;
    const uint8_t *p = in->p;
    in->p += want;
    in->n -= want;
    *len = want;
    return p;
}

#ifndef BOOTH_LIBFUZZER
/* ---- the replay test: every file of corpus/NAME and regress/NAME through the harness ---- */

#include "tests/test.h"

typedef struct s_target {
    const char *name;
    fz_fn fn;
} s_target_t;

static int s_replay_dir(const s_target_t *t, const char *dir, bool required)
{
    DIR *d = opendir(dir);
    if (!d) {
        if (required) bt_test_fail(__FILE__, __LINE__, "%s: cannot open: %s", dir, strerror(errno));
        return 0;
    }
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        FILE *f = fopen(path, "rb");
        if (!f) continue;
        fseek(f, 0, SEEK_END);
        long len = ftell(f);
        rewind(f);
        uint8_t *buf = malloc(len > 0 ? (size_t)len : 1);
        if (!buf || (len > 0 && fread(buf, 1, (size_t)len, f) != (size_t)len)) {
            bt_test_fail(__FILE__, __LINE__, "%s: cannot read", path);
            free(buf);
            fclose(f);
            continue;
        }
        fclose(f);
        fprintf(stderr, "%s\n", path); /* the log names the input that crashed */
        fz_begin(t->name);
        t->fn(buf, (size_t)len);
        free(buf);
        n++;
    }
    closedir(d);
    return n;
}

static void s_replay(const void *arg)
{
    const s_target_t *t = arg;
    char dir[512];
    snprintf(dir, sizeof dir, "tests/fuzz/corpus/%s", t->name);
    int n = s_replay_dir(t, dir, true);
    snprintf(dir, sizeof dir, "tests/fuzz/regress/%s", t->name);
    n += s_replay_dir(t, dir, false);
    CHECKF(n > 0, "fuzz_%s: no corpus to replay", t->name);
    printf("fuzz_%s: %d inputs replayed\n", t->name, n);
}

void fz_register(const char *name, const char *file, fz_fn fn)
{
    s_target_t *t = malloc(sizeof *t);
    char *test = malloc(strlen(name) + 8);
    if (!t || !test) abort();
    *t = (s_target_t){name, fn};
    sprintf(test, "fuzz_%s", name);
    bt_test_register_arg(test, file, s_replay, t, 600);
}
#endif

/* ---- the message handlers' harnesses ---- */

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>

void *fz_router(void *ctx, char *ep, size_t cap)
{
    pr_sockopts_t o = {.max_bytes = 64 << 20, .insecure = true, .send_timeout_ms = 5000};
    void *s = pr_router_bind(ctx, "tcp://127.0.0.1:*", &o);
    if (!s || pr_last_endpoint(s, ep, cap)) fz_bug("cannot bind a ROUTER on 127.0.0.1");
    int ms = 1000;
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &ms, sizeof ms);
    return s;
}

void *fz_dealer(void *ctx, const char *ep)
{
    pr_sockopts_t o = {.max_bytes = 64 << 20, .insecure = true, .send_timeout_ms = 5000};
    void *s = pr_dealer_connect(ctx, ep, &o);
    if (!s) fz_bug("cannot connect a DEALER to %s", ep);
    int ms = 1000;
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &ms, sizeof ms);
    return s;
}

int fz_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) || getsockname(fd, (struct sockaddr *)&a, &len))
        fz_bug("no free port");
    close(fd);
    return ntohs(a.sin_port);
}

void fz_send_input(void *sock, const zmq_msg_t *rid, fz_in_t *in, Booth__Envelope **env)
{
    const uint8_t *frame[512];
    size_t len[512];
    int n = 0;
    while (n < 512 && (n == 0 || in->n > 0)) frame[n] = fz_piece(in, &len[n]), n++;
    *env = booth__envelope__unpack(NULL, len[0], frame[0]);
    if (rid) {
        zmq_msg_t r;
        zmq_msg_init(&r);
        zmq_msg_copy(&r, (zmq_msg_t *)rid);
        if (zmq_msg_send(&r, sock, ZMQ_SNDMORE) < 0) fz_bug("cannot send: %s", zmq_strerror(zmq_errno()));
    }
    for (int i = 0; i < n; i++)
        if (zmq_send(sock, frame[i], len[i], i + 1 < n ? ZMQ_SNDMORE : 0) < 0)
            fz_bug("cannot send: %s", zmq_strerror(zmq_errno()));
}

void fz_wait(void *sock, bool router, fz_msg_fn done, fz_msg_fn other, void *user, int timeout_ms, const char *what)
{
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &t);
        long el = (long)(t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000;
        if (el > timeout_ms) fz_bug("no answer to %s in %d ms", what, timeout_ms);
        pr_msg_t m;
        int r = pr_recv(sock, router, 64 << 20, &m);
        bool stop = false;
        if (r == BT_OK) {
            if (done(&m, user))
                stop = true;
            else if (other)
                other(&m, user);
        }
        pr_msg_free(&m);
        if (stop) return;
    }
}
