/* status.c — names for bt_status codes. */
#include "common/status.h"

const char *bt_status_str(int status)
{
    switch ((bt_status_t)status) {
    case BT_OK: return "ok";
    case BT_EIO: return "i/o error";
    case BT_EFORMAT: return "malformed input";
    case BT_ENOMEM: return "out of memory";
    case BT_EINVAL: return "invalid argument";
    case BT_ESHAPE: return "shape mismatch";
    case BT_ENOTFOUND: return "not found";
    case BT_EUNSUPPORTED: return "not supported";
    case BT_EINTERNAL: return "internal error";
    case BT_EPROTO: return "protocol violation";
    case BT_EAGAIN: return "nothing to receive";
    case BT_ESTOPPED: return "stopped";
    }
    return "unknown status";
}
