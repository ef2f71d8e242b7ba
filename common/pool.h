/*
 * pool.h — a fixed thread pool and a portable parallel loop.
 *
 * bt_pool_run(pool, n, grain, fn, arg) splits [0, n) into chunks of `grain` items
 * and gives each thread one contiguous run of chunks (the caller is thread 0).
 * The split depends only on n, grain and the thread count, never on timing, so a
 * kernel that computes each item independently gives the same bytes on every run.
 * Thread count: BOOTH_THREADS, else the number of online CPUs.
 */
#ifndef BOOTH_COMMON_POOL_H
#define BOOTH_COMMON_POOL_H

#include <stdint.h>

typedef struct bt_pool bt_pool_t;

/* Called once per thread that has work: items [begin, end), tid in [0, threads). */
typedef void (*bt_task_fn)(void *arg, int64_t begin, int64_t end, int tid);

bt_pool_t *bt_pool_new(int threads);
void bt_pool_destroy(bt_pool_t **pool);
int bt_pool_threads(const bt_pool_t *pool);
void bt_pool_run(bt_pool_t *pool, int64_t n, int64_t grain, bt_task_fn fn, void *arg);

/* BOOTH_THREADS if set and valid, else the online CPU count (at least 1). */
int bt_default_threads(void);

#endif
