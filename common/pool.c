/*
 * pool.c — persistent worker threads woken per job by a generation counter.
 *
 * Jobs are rare and large (one per kernel call over a whole tensor), so a mutex
 * and two condition variables are enough; the caller works as thread 0 instead of
 * sleeping, which also makes a 1-thread pool free of any synchronisation.
 */
#include "common/pool.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <unistd.h>

#include "common/log.h"

struct bt_pool {
    int threads;
    pthread_t *tids;
    pthread_mutex_t mu;
    pthread_cond_t cv_work;
    pthread_cond_t cv_done;
    uint64_t generation; /* bumped for every job; workers run when it moves */
    int pending;         /* workers that have not finished the current job */
    bool stop;
    /* the current job */
    bt_task_fn fn;
    void *arg;
    int64_t n, grain;
};

typedef struct {
    bt_pool_t *pool;
    int tid;
} s_worker_arg_t;

static void s_run_share(bt_pool_t *p, int tid)
{
    int64_t chunks = (p->n + p->grain - 1) / p->grain;
    int64_t c0 = chunks * tid / p->threads, c1 = chunks * (tid + 1) / p->threads;
    int64_t begin = c0 * p->grain, end = c1 * p->grain;
    if (end > p->n) end = p->n;
    if (begin < end) p->fn(p->arg, begin, end, tid);
}

static void *s_worker(void *varg)
{
    s_worker_arg_t wa = *(s_worker_arg_t *)varg;
    free(varg);
    bt_pool_t *p = wa.pool;
    uint64_t seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stop && p->generation == seen) pthread_cond_wait(&p->cv_work, &p->mu);
        if (p->stop) break;
        seen = p->generation;
        pthread_mutex_unlock(&p->mu);
        s_run_share(p, wa.tid);
        pthread_mutex_lock(&p->mu);
        if (--p->pending == 0) pthread_cond_signal(&p->cv_done);
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
    bt_pool_t *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->threads = threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv_work, NULL);
    pthread_cond_init(&p->cv_done, NULL);
    p->tids = calloc((size_t)threads, sizeof *p->tids);
    if (!p->tids) goto out_free_pool;
    for (int t = 1; t < threads; t++) {
        s_worker_arg_t *wa = malloc(sizeof *wa);
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
    p->pending = p->threads - 1;
    p->generation++;
    pthread_cond_broadcast(&p->cv_work);
    pthread_mutex_unlock(&p->mu);

    s_run_share(p, 0);

    pthread_mutex_lock(&p->mu);
    while (p->pending > 0) pthread_cond_wait(&p->cv_done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}
