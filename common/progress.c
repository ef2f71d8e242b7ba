/* progress.c — terminal-aware progress bar. */
#include "common/progress.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

double bt_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

void bt_progress_start(bt_progress_t *p, const char *label, int64_t total, const char *unit)
{
    memset(p, 0, sizeof *p);
    snprintf(p->label, sizeof p->label, "%s", label);
    snprintf(p->unit, sizeof p->unit, "%s", unit ? unit : "it");
    p->total = total;
    p->start = p->last_print = bt_now();
    p->tty = isatty(2);
    const char *q = getenv("BOOTH_QUIET");
    p->quiet = q && *q && strcmp(q, "0");
}

double bt_progress_elapsed(const bt_progress_t *p) { return bt_now() - p->start; }

static void s_fmt_time(char *buf, size_t len, double s)
{
    if (s < 0 || s > 1e7)
        snprintf(buf, len, "?");
    else if (s < 60)
        snprintf(buf, len, "%.1fs", s);
    else if (s < 3600)
        snprintf(buf, len, "%dm%02ds", (int)s / 60, (int)s % 60);
    else
        snprintf(buf, len, "%dh%02dm", (int)s / 3600, ((int)s / 60) % 60);
}

static void s_draw(bt_progress_t *p, const char *tail, bool final)
{
    double el = bt_now() - p->start;
    char elapsed[32], eta[32], rate[48];
    s_fmt_time(elapsed, sizeof elapsed, el);
    /* seconds per item: over the items after the first update when there are any, else over all of them
     * once that is long enough to mean something */
    double per = -1;
    if (p->done > p->first_done && p->first_done > 0)
        per = (bt_now() - p->first_t) / (double)(p->done - p->first_done);
    else if (p->done > 0 && el >= 0.5)
        per = el / (double)p->done;
    s_fmt_time(eta, sizeof eta, per > 0 ? per * (double)(p->total - p->done) : -1);
    if (per >= 1.0)
        snprintf(rate, sizeof rate, "%.2f s/%s", per, p->unit);
    else if (per > 0)
        snprintf(rate, sizeof rate, "%.1f %s/s", 1.0 / per, p->unit);
    else
        snprintf(rate, sizeof rate, "- s/%s", p->unit);
    if (p->tty) {
        char bar[32];
        int width = 24, fill = p->total > 0 ? (int)(width * p->done / p->total) : 0;
        for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
        bar[width] = '\0';
        fprintf(stderr, "\r\033[K%s [%s] %lld/%lld %s %s%s%s%s", p->label, bar, (long long)p->done,
                (long long)p->total, rate, final ? elapsed : eta, final ? "" : " left", tail ? "  " : "",
                tail ? tail : "");
        if (final) fputc('\n', stderr);
    } else {
        fprintf(stderr, "%s: %lld/%lld %s, %s %s%s%s\n", p->label, (long long)p->done, (long long)p->total, rate,
                final ? "took" : "eta", final ? elapsed : eta, tail ? ", " : "", tail ? tail : "");
    }
    fflush(stderr);
}

void bt_progress_update(bt_progress_t *p, int64_t done, const char *tail)
{
    p->done = done;
    if (done > 0 && !p->first_done) {
        p->first_done = done;
        p->first_t = bt_now();
    }
    if (p->quiet || (!p->tty && done >= p->total)) return; /* the final line comes from finish */
    double now = bt_now();
    double every = p->tty ? 0.1 : 5.0;
    if (done < p->total && now - p->last_print < every && done > 1) return;
    p->last_print = now;
    s_draw(p, tail, false);
}

void bt_progress_finish(bt_progress_t *p, const char *tail)
{
    if (p->finished) return;
    p->finished = true;
    if (p->quiet) return;
    s_draw(p, tail, true);
}

void bt_progress_line(bt_progress_t *p, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (p->tty && !p->quiet) fputs("\r\033[K", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    p->last_print = 0; /* the bar comes back at the next update */
    fflush(stderr);
}
