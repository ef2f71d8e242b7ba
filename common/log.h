/*
 * log.h — one-line diagnostics on stderr.
 *
 * An error is logged once, where it is detected, with the file or peer and the
 * cause ("model.safetensors: tensor 'x' needs 64 bytes, file has 12"). Levels come
 * from BOOTH_LOG=error|warn|info|debug (default info). Tests install a sink to
 * check what a failing call said.
 */
#ifndef BOOTH_COMMON_LOG_H
#define BOOTH_COMMON_LOG_H

#include <stdarg.h>
#include <stdbool.h>

typedef enum bt_log_level { BT_LOG_ERROR, BT_LOG_WARN, BT_LOG_INFO, BT_LOG_DEBUG } bt_log_level_t;

/* A sink receives every message at or above the current level, without the prefix. */
typedef void (*bt_log_sink_fn)(bt_log_level_t level, const char *msg, void *user);

void bt_log(bt_log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void bt_vlog(bt_log_level_t level, const char *fmt, va_list ap);
void bt_log_set_level(bt_log_level_t level);
bt_log_level_t bt_log_get_level(void);
/* NULL restores stderr. */
/* Prefix every line with the local date and time (the cluster's long-running processes). */
void bt_log_set_timestamps(bool on);
void bt_log_set_sink(bt_log_sink_fn fn, void *user);
/* The last error-level message of this thread ("" if none). */
const char *bt_log_last_error(void);

#define BT_ERROR(...) bt_log(BT_LOG_ERROR, __VA_ARGS__)
#define BT_WARN(...) bt_log(BT_LOG_WARN, __VA_ARGS__)
#define BT_INFO(...) bt_log(BT_LOG_INFO, __VA_ARGS__)
#define BT_DEBUG(...) bt_log(BT_LOG_DEBUG, __VA_ARGS__)

#endif
