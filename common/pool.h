/*
 * pool.h — a fixed thread pool and a portable parallel loop.
 *
 * bt_pool_run(pool, n, grain, fn, arg) splits [0, n) into chunks of `grain` items
 * and the chunks into a few contiguous shares per thread, which the threads claim
 * as they come (the caller is thread 0). The split depends only on n, grain and
 * the thread count, never on timing; which thread runs a share does. A kernel
 * that computes each item independently (per-thread scratch indexed by tid is
 * fine) gives the same bytes on every run and for any thread count.
 * Thread count: BOOTH_THREADS, else the number of online CPUs.
 */
#ifndef BOOTH_COMMON_POOL_H
#define BOOTH_COMMON_POOL_H

#include <stdint.h>

typedef struct bt_pool bt_pool_t;

/* Called once per share: items [begin, end), run by thread tid in [0, threads)
 * (a thread may run several shares of a job, one after another). */
typedef void (*bt_task_fn)(void *arg, int64_t begin, int64_t end, int tid);

bt_pool_t *bt_pool_new(int threads);
void bt_pool_destroy(bt_pool_t **pool);
int bt_pool_threads(const bt_pool_t *pool);
void bt_pool_run(bt_pool_t *pool, int64_t n, int64_t grain, bt_task_fn fn, void *arg);

/* BOOTH_THREADS if set and valid, else the online CPU count (at least 1). */
int bt_default_threads(void);

#endif
