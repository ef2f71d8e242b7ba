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
    int64_t first_done; /* done and time at the first update with done > 0: rates come from the work */
    double first_t;     /* after it, so a bar started once the first item was already done shows no
                         * absurd first-tick rate */
    bool tty, quiet, finished;
    char unit[16]; /* "it", "step", "img" */
} bt_progress_t;

void bt_progress_start(bt_progress_t *p, const char *label, int64_t total, const char *unit);
/* Sets done and redraws (throttled); tail may be NULL. */
void bt_progress_update(bt_progress_t *p, int64_t done, const char *tail);
/* One line of its own on stderr ("checkpoint: out/checkpoint-3.h5") without breaking the bar: on a
 * terminal the bar's line is cleared first and drawn again at the next update. */
void bt_progress_line(bt_progress_t *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Final line with the total time. */
void bt_progress_finish(bt_progress_t *p, const char *tail);
/* Seconds since start. */
double bt_progress_elapsed(const bt_progress_t *p);
/* Monotonic seconds. */
double bt_now(void);

#endif
