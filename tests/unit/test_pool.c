/*
 * test_pool.c — the thread pool: every item runs exactly once, on a valid thread,
 * in the shares that n, grain and the thread count fix, however the threads race
 * (jobs far shorter than a thread's wake-up included).
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/pool.h"
#include "test.h"

#define MAX_ITEMS 5000
#define MAX_CALLS 64

typedef struct {
    int threads;
    atomic_int hits[MAX_ITEMS];
    atomic_int calls;
    int64_t begin[MAX_CALLS], end[MAX_CALLS];
    atomic_int bad_tid;
    atomic_int busy[16]; /* calls running on each tid right now */
    atomic_int overlap;  /* a tid ran two calls at once */
} s_job_t;

static void s_task(void *arg, int64_t begin, int64_t end, int tid)
{
    s_job_t *j = arg;
    if (tid < 0 || tid >= j->threads) {
        atomic_fetch_add(&j->bad_tid, 1);
        return;
    }
    if (atomic_fetch_add(&j->busy[tid], 1) != 0) atomic_fetch_add(&j->overlap, 1);
    int c = atomic_fetch_add(&j->calls, 1);
    if (c < MAX_CALLS) {
        j->begin[c] = begin;
        j->end[c] = end;
    }
    for (int64_t i = begin; i < end; i++) atomic_fetch_add(&j->hits[i], 1);
    atomic_fetch_sub(&j->busy[tid], 1);
}

static int s_cmp(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Runs one job and checks coverage and the shares; returns the calls' begins,
 * sorted, in begins[] (count in *ncalls). */
static void s_run(bt_pool_t *pool, int threads, int64_t n, int64_t grain, int64_t *begins, int *ncalls)
{
    s_job_t *j = calloc(1, sizeof *j);
    REQUIRE(j);
    j->threads = threads;
    bt_pool_run(pool, n, grain, s_task, j);
    CHECK_INT_EQ(atomic_load(&j->bad_tid), 0);
    CHECK_INT_EQ(atomic_load(&j->overlap), 0);
    for (int64_t i = 0; i < n; i++)
        CHECKF(atomic_load(&j->hits[i]) == 1, "threads %d n %lld grain %lld: item %lld ran %d times", threads,
               (long long)n, (long long)grain, (long long)i, atomic_load(&j->hits[i]));
    int calls = atomic_load(&j->calls);
    CHECK(calls <= MAX_CALLS);
    if (calls > MAX_CALLS) calls = MAX_CALLS;
    for (int c = 0; c < calls; c++) {
        CHECK(j->begin[c] < j->end[c]);
        CHECK(j->begin[c] % grain == 0); /* shares are made of whole chunks */
        CHECK(j->end[c] % grain == 0 || j->end[c] == n);
    }
    memcpy(begins, j->begin, (size_t)calls * sizeof *begins);
    qsort(begins, (size_t)calls, sizeof *begins, s_cmp);
    *ncalls = calls;
    free(j);
}

TEST(pool_runs_every_item_once)
{
    static const int threads[] = {1, 2, 3, 5};
    static const int64_t ns[] = {0, 1, 2, 7, 64, 100, 1000, MAX_ITEMS};
    static const int64_t grains[] = {1, 3, 64, 10000};
    for (size_t t = 0; t < sizeof threads / sizeof *threads; t++) {
        bt_pool_t *pool = bt_pool_new(threads[t]);
        REQUIRE(pool);
        CHECK_INT_EQ(bt_pool_threads(pool), threads[t]);
        for (size_t a = 0; a < sizeof ns / sizeof *ns; a++)
            for (size_t g = 0; g < sizeof grains / sizeof *grains; g++) {
                int64_t first[MAX_CALLS], again[MAX_CALLS];
                int n1 = 0, n2 = 0;
                s_run(pool, threads[t], ns[a], grains[g], first, &n1);
                s_run(pool, threads[t], ns[a], grains[g], again, &n2);
                /* the same shares whichever thread claimed them */
                CHECK_INT_EQ(n1, n2);
                for (int c = 0; c < n1 && c < n2; c++) CHECK_INT_EQ(first[c], again[c]);
            }
        bt_pool_destroy(&pool);
        CHECK(pool == NULL);
    }
}

static void s_add(void *arg, int64_t begin, int64_t end, int tid)
{
    atomic_fetch_add((atomic_llong *)arg, end - begin);
}

/* Items that take a while: a worker still inside the job when the caller is
 * done makes the caller wait, past its spinning, asleep. */
static void s_add_slowly(void *arg, int64_t begin, int64_t end, int tid)
{
    if (tid) usleep(400);
    atomic_fetch_add((atomic_llong *)arg, end - begin);
}

/* `jobs` jobs of base + i % spread items on 3 threads, every slow_every-th
 * (0: none) slow, a pause past the spin window after every pause_every-th
 * (0: none): each must run every item exactly once. */
static void s_jobs(int jobs, int64_t base, int64_t spread, int slow_every, int pause_every)
{
    bt_pool_t *pool = bt_pool_new(3);
    REQUIRE(pool);
    atomic_llong total = 0;
    long long want = 0;
    for (int i = 0; i < jobs; i++) {
        int64_t n = base + i % spread;
        bool slow = slow_every && i % slow_every == slow_every - 1;
        bt_pool_run(pool, n, 1, slow ? s_add_slowly : s_add, &total);
        want += n;
        CHECK_INT_EQ(atomic_load(&total), want);
        if (atomic_load(&total) != want) break;
        if (pause_every && i % pause_every == pause_every - 1) usleep(2000); /* the workers sleep */
    }
    bt_pool_destroy(&pool);
}

/* Jobs that finish before a worker can wake: the caller runs them alone and late
 * workers must neither run nor miss anything of the next job. */
TEST(pool_back_to_back_tiny_jobs)
{
    s_jobs(20000, 2, 13, 0, 0);
}

/* Workers spin for a while after a job, then sleep: jobs that come right away,
 * after the spin window (workers asleep) and slow ones that the caller waits
 * for asleep, mixed, must each run every item exactly once. */
TEST(pool_jobs_across_spin_and_sleep)
{
    s_jobs(300, 3, 7, 3, 5);
}

TEST(pool_null_and_one_thread_run_inline)
{
    atomic_llong total = 0;
    bt_pool_run(NULL, 10, 1, s_add, &total);
    CHECK_INT_EQ(atomic_load(&total), 10);
    bt_pool_t *pool = bt_pool_new(0); /* clamps to one thread */
    REQUIRE(pool);
    CHECK_INT_EQ(bt_pool_threads(pool), 1);
    bt_pool_run(pool, 5, 2, s_add, &total);
    CHECK_INT_EQ(atomic_load(&total), 15);
    bt_pool_destroy(&pool);
}
