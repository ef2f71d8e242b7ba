/* log.c — leveled one-line messages to stderr or an installed sink. */
#include "common/log.h"
#include "common/alloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int s_level = -1; /* -1: not yet read from BOOTH_LOG */
static bool s_stamps; /* long-running processes: each line starts with the local time */
static bt_log_sink_fn s_sink;
static void *s_sink_user;
static _Thread_local char s_last_error[1024];

static int s_level_from_env(void)
{
    const char *e = getenv("BOOTH_LOG");
    if (!e || !*e) return BT_LOG_INFO;
    if (!strcmp(e, "error")) return BT_LOG_ERROR;
    if (!strcmp(e, "warn")) return BT_LOG_WARN;
    if (!strcmp(e, "debug")) return BT_LOG_DEBUG;
    return BT_LOG_INFO;
}

bt_log_level_t bt_log_get_level(void)
{
    if (s_level < 0) s_level = s_level_from_env();
    return (bt_log_level_t)s_level;
}

void bt_log_set_level(bt_log_level_t level) { s_level = (int)level; }

void bt_log_set_timestamps(bool on) { s_stamps = on; }

void bt_log_set_sink(bt_log_sink_fn fn, void *user)
{
    s_sink = fn;
    s_sink_user = user;
}

const char *bt_log_last_error(void) { return s_last_error; }

void bt_vlog(bt_log_level_t level, const char *fmt, va_list ap)
{
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    if (level == BT_LOG_ERROR) memcpy(s_last_error, msg, sizeof msg);
    if ((int)level > (int)bt_log_get_level()) return;
    if (s_sink) {
        s_sink(level, msg, s_sink_user);
        return;
    }
    static const char *const prefix[] = {"error: ", "warning: ", "", ""};
    if (s_stamps) {
        struct timespec ts;
        struct tm tm;
        clock_gettime(CLOCK_REALTIME, &ts);
        localtime_r(&ts.tv_sec, &tm);
        fprintf(stderr, "%04d-%02d-%02d %02d:%02d:%02d.%03ld booth: %s%s\n", tm.tm_year + 1900, tm.tm_mon + 1,
                tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000, prefix[level], msg);
        return;
    }
    fprintf(stderr, "booth: %s%s\n", prefix[level], msg);
}

void bt_log(bt_log_level_t level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    bt_vlog(level, fmt, ap);
    va_end(ap);
}

/* common/alloc.h: the one line of a failed allocation */
void bt_alloc_failed(const char *fn, size_t bytes)
{
    if (bytes >= (size_t)1 << 30)
        bt_log(BT_LOG_ERROR, "out of memory: %s asked for %.1f GiB", fn, (double)bytes / (1 << 30));
    else if (bytes >= (size_t)1 << 20)
        bt_log(BT_LOG_ERROR, "out of memory: %s asked for %.1f MiB", fn, (double)bytes / (1 << 20));
    else
        bt_log(BT_LOG_ERROR, "out of memory: %s asked for %zu bytes", fn, bytes);
}
