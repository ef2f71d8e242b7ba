/*
 * pool.c — persistent worker threads woken per job by a generation counter.
 *
 * A job's items are cut into shares (a few per thread, fixed by n, grain and the
 * thread count) that threads claim from an atomic counter; the caller works as
 * thread 0 instead of sleeping. Waking a sleeping thread takes tens of
 * microseconds on a virtual machine, longer than many small kernels run, so the
 * caller never waits for a worker to wake: once every share is claimed it closes
 * the job and waits only for the workers that joined it. A worker that wakes
 * after that finds the job closed and goes back to sleep. Shares also balance a
 * core that another process slows down. A 1-thread pool needs no
 * synchronisation at all.
 *
 * Kernels come back to back (a training step runs thousands), so after a job a
 * worker first watches the generation for a short while (SPIN_NS, 50
 * microseconds) and only then sleeps; the caller likewise watches
 * the workers it waits for before it sleeps. A job that follows within that
 * window starts on every thread at once, with no system call.
 */
#include "common/pool.h"

#include <pthread.h>
#include <stdatomic.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define S_PAUSE() _mm_pause()
#else
#define S_PAUSE() ((void)0)
#endif
#include <stdbool.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/log.h"

struct bt_pool {
    int threads;
    pthread_t *tids;
    pthread_mutex_t mu;
    pthread_cond_t cv_work;
    pthread_cond_t cv_done;
    uint64_t generation; /* bumped for every job; workers look when it moves */
    bool open;           /* the current job still takes workers */
    atomic_int active;   /* workers inside the current job (changed under mu) */
    bool stop;
    atomic_uint_fast64_t spied; /* generation and stop (bit 0), for spinning workers */
    int sleepers;               /* workers waiting on cv_work */
    bool caller_sleeps;         /* the caller waits on cv_done */
    /* the current job */
    bt_task_fn fn;
    void *arg;
    int64_t n, grain, chunks, shares;
    atomic_int_fast64_t next; /* the next unclaimed share */
};

#define SHARES_PER_THREAD 4
#define SPIN_NS 50000 /* how long a worker (or the caller) watches before it sleeps */

static int64_t s_now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static bool s_moved(const bt_pool_t *p, uint64_t seen)
{
    return atomic_load_explicit(&p->spied, memory_order_relaxed) != seen << 1;
}

static bool s_idle(const bt_pool_t *p, uint64_t unused)
{
    return atomic_load_explicit(&p->active, memory_order_acquire) == 0;
}

/* Watches for up to SPIN_NS until ready(p, arg): true if it came. The clock is
 * read every 32 pauses (a pause takes 1 to 50 ns depending on the CPU). */
static bool s_spin(const bt_pool_t *p, bool (*ready)(const bt_pool_t *, uint64_t), uint64_t arg)
{
    int64_t until = s_now_ns() + SPIN_NS;
    do {
        for (int i = 0; i < 32; i++) {
            if (ready(p, arg)) return true;
            S_PAUSE();
        }
    } while (s_now_ns() < until);
    return false;
}

typedef struct {
    bt_pool_t *pool;
    int tid;
} s_worker_arg_t;

/* Claims and runs shares until none is left. Share i is items [chunks i / shares,
 * chunks (i + 1) / shares) x grain: which thread runs it never changes what it is. */
static void s_run_shares(bt_pool_t *p, int tid)
{
    for (;;) {
        int64_t i = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed);
        if (i >= p->shares) return;
        int64_t c0 = p->chunks * i / p->shares, c1 = p->chunks * (i + 1) / p->shares;
        int64_t begin = c0 * p->grain, end = c1 * p->grain;
        if (end > p->n) end = p->n;
        if (begin < end) p->fn(p->arg, begin, end, tid);
    }
}

static void *s_worker(void *varg)
{
    s_worker_arg_t wa = *(s_worker_arg_t *)varg;
    free(varg);
    bt_pool_t *p = wa.pool;
    uint64_t seen = 0;
    for (;;) {
        (void)s_spin(p, s_moved, seen); /* then, under the lock, the generation decides */
        pthread_mutex_lock(&p->mu);
        while (!p->stop && p->generation == seen) {
            p->sleepers++;
            pthread_cond_wait(&p->cv_work, &p->mu);
            p->sleepers--;
        }
        if (p->stop) break;
        seen = p->generation;
        if (!p->open) { /* too late: the caller ran it all */
            pthread_mutex_unlock(&p->mu);
            continue;
        }
        atomic_fetch_add_explicit(&p->active, 1, memory_order_relaxed);
        pthread_mutex_unlock(&p->mu);
        s_run_shares(p, wa.tid);
        pthread_mutex_lock(&p->mu);
        if (atomic_fetch_sub_explicit(&p->active, 1, memory_order_release) == 1 && p->caller_sleeps)
            pthread_cond_signal(&p->cv_done);
        pthread_mutex_unlock(&p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

int bt_default_threads(void)
{
    const char *e = getenv("BOOTH_THREADS");
    if (e && *e) {
        char *end;
        long v = strtol(e, &end, 10);
        if (*end == '\0' && v >= 1 && v <= 1024) return (int)v;
        BT_WARN("BOOTH_THREADS='%s' is not a thread count in 1..1024; using the CPU count", e);
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n >= 1 ? (int)n : 1;
}

bt_pool_t *bt_pool_new(int threads)
{
    if (threads < 1) threads = 1;
    bt_pool_t *p = bt_calloc(1, sizeof *p);
    if (!p) return NULL;
    p->threads = threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv_work, NULL);
    pthread_cond_init(&p->cv_done, NULL);
    p->tids = bt_calloc((size_t)threads, sizeof *p->tids);
    if (!p->tids) goto out_free_pool;
    for (int t = 1; t < threads; t++) {
        s_worker_arg_t *wa = bt_malloc(sizeof *wa);
        if (!wa) goto out_stop;
        wa->pool = p;
        wa->tid = t;
        if (pthread_create(&p->tids[t], NULL, s_worker, wa) != 0) {
            free(wa);
            BT_ERROR("thread pool: cannot start thread %d of %d", t, threads);
            p->threads = t; /* join the ones that started */
            goto out_stop;
        }
    }
    return p;

out_stop:
    bt_pool_destroy(&p);
    return NULL;
out_free_pool:
    free(p);
    return NULL;
}

void bt_pool_destroy(bt_pool_t **pp)
{
    bt_pool_t *p = *pp;
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->stop = true;
    atomic_store_explicit(&p->spied, 1, memory_order_relaxed);
    pthread_cond_broadcast(&p->cv_work);
    pthread_mutex_unlock(&p->mu);
    for (int t = 1; t < p->threads; t++)
        if (p->tids[t]) pthread_join(p->tids[t], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv_work);
    pthread_cond_destroy(&p->cv_done);
    free(p->tids);
    free(p);
    *pp = NULL;
}

int bt_pool_threads(const bt_pool_t *p) { return p ? p->threads : 1; }

void bt_pool_run(bt_pool_t *p, int64_t n, int64_t grain, bt_task_fn fn, void *arg)
{
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    if (!p || p->threads == 1 || n <= grain) {
        fn(arg, 0, n, 0);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->arg = arg;
    p->n = n;
    p->grain = grain;
    p->chunks = (n + grain - 1) / grain;
    p->shares = p->chunks < (int64_t)p->threads * SHARES_PER_THREAD ? p->chunks : (int64_t)p->threads * SHARES_PER_THREAD;
    atomic_store_explicit(&p->next, 0, memory_order_relaxed);
    p->open = true;
    p->generation++;
    atomic_store_explicit(&p->spied, p->generation << 1, memory_order_relaxed);
    if (p->sleepers) pthread_cond_broadcast(&p->cv_work);
    pthread_mutex_unlock(&p->mu);

    s_run_shares(p, 0);

    pthread_mutex_lock(&p->mu);
    p->open = false; /* no worker joins from here on: only those inside are waited for */
    pthread_mutex_unlock(&p->mu);
    if (!s_spin(p, s_idle, 0)) {
        pthread_mutex_lock(&p->mu);
        p->caller_sleeps = true;
        while (atomic_load_explicit(&p->active, memory_order_acquire) > 0) pthread_cond_wait(&p->cv_done, &p->mu);
        p->caller_sleeps = false;
        pthread_mutex_unlock(&p->mu);
    }
}
