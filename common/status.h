/*
 * status.h — the one status enum every booth function returns.
 *
 * Functions return BT_OK (0) or a negative bt_status; constructors return NULL.
 * The detail (which file, which tensor, which peer) goes into one log line at the
 * place that detected the problem; callers only pass the code up.
 */
#ifndef BOOTH_COMMON_STATUS_H
#define BOOTH_COMMON_STATUS_H

typedef enum bt_status {
    BT_OK = 0,
    BT_EIO = -1,          /* open/read/write/fsync/rename failed */
    BT_EFORMAT = -2,      /* a file or message is malformed or truncated */
    BT_ENOMEM = -3,       /* allocation failed or a size overflows */
    BT_EINVAL = -4,       /* bad argument or flag value */
    BT_ESHAPE = -5,       /* a tensor has the wrong shape */
    BT_ENOTFOUND = -6,    /* a named tensor, key or file is missing */
    BT_EUNSUPPORTED = -7, /* valid input that this build cannot handle (e.g. no CUDA) */
    BT_EINTERNAL = -8,    /* a library call failed for a reason we did not expect */
    BT_EPROTO = -9,       /* a peer's message broke the protocol; it was dropped, go on */
    BT_EAGAIN = -10,      /* nothing to receive yet (timeout, non-blocking, interrupted) */
    BT_ESTOPPED = -11,    /* stopped on request (SIGINT/SIGTERM), after saving what it owed */
} bt_status_t;

/* A short lowercase phrase for the code ("malformed input", ...). */
const char *bt_status_str(int status);

#endif
