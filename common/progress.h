/*
 * progress.h — a progress bar on stderr for long work (sampling, training,
 * prior generation): done/total, rate, elapsed, ETA and a caller-supplied tail
 * ("loss 0.1234"). On a terminal it redraws one line; otherwise (logs, CI) it
 * prints a plain line at most every few seconds and at the end.
 */
#ifndef BOOTH_COMMON_PROGRESS_H
#define BOOTH_COMMON_PROGRESS_H

#include <stdbool.h>
#include <stdint.h>

typedef struct bt_progress {
    char label[64];
    int64_t total, done;
    double start, last_print;
    bool tty, quiet, finished;
    char unit[16]; /* "it", "step", "img" */
} bt_progress_t;

void bt_progress_start(bt_progress_t *p, const char *label, int64_t total, const char *unit);
/* Sets done and redraws (throttled); tail may be NULL. */
void bt_progress_update(bt_progress_t *p, int64_t done, const char *tail);
/* Final line with the total time. */
void bt_progress_finish(bt_progress_t *p, const char *tail);
/* Seconds since start. */
double bt_progress_elapsed(const bt_progress_t *p);
/* Monotonic seconds. */
double bt_now(void);

#endif
