/*
 * wire.h — one booth message on a ZeroMQ socket: receive and check it, send it,
 * and set up the sockets that carry it.
 *
 * A message is one ZeroMQ multipart message (proto/booth.proto):
 *
 *   [routing id, ROUTER side only] [Envelope] [blob 0] [blob 1] ...
 *
 * pr_recv() takes a whole message off the socket (every part, also when it drops
 * it), decodes the envelope and checks it against the frames before any handler
 * sees it: the protocol version, the total size, one frame per blob descriptor,
 * each frame's length against the descriptor (and, for F32 and U8, against the
 * shape), a body. A message that fails is dropped with one warning naming the
 * peer and the cause, and pr_recv returns BT_EPROTO: the process goes on, as
 * STYLE.md asks (ps-lite aborts a node on one bad packet; booth must not).
 *
 * Tensors travel as raw frames beside the protobuf, never inside it: pr_send()
 * packs the envelope and sends each blob's bytes as its own frame, and a received
 * blob is read straight from its frame.
 *
 * Sockets: a process binds one ROUTER (pr_router_bind) and connects DEALERs
 * (pr_dealer_connect). Both are CURVE-encrypted and authenticated unless the
 * caller asks for plain TCP (pr_sockopts_t.insecure), which should be announced
 * with pr_warn_insecure(). Keys and the ZAP handler that checks client keys
 * against an allow-list are in proto/keys.h.
 */
#ifndef BOOTH_PROTO_WIRE_H
#define BOOTH_PROTO_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <zmq.h>

#include "proto/booth.pb-c.h"
#include "proto/keys.h"

#define PR_MAX_DIMS 4            /* dimensions of a blob's shape ([count, C, h, w]) */
#define PR_MAX_BLOBS 65536       /* blob frames in one message: a protocol limit, checked */
#define PR_PEER_LEN 160          /* pr_msg_t.peer */
#define PR_SEND_TIMEOUT_MS 10000 /* default ZMQ_SNDTIMEO: a dead peer's queue fills, sends fail */
#define PR_LINGER_MS 200         /* how long close waits to flush unsent messages */

/* ---- receiving ---------------------------------------------------------------- */

/* A received, checked message. Zero it (or let pr_recv fill it); pr_msg_free. */
typedef struct pr_msg {
    Booth__Envelope *env; /* unpacked; version, blobs and body checked */
    zmq_msg_t *frames;    /* env->n_blobs frames: frames[i] holds blob env->blobs[i] */
    void **aligned;       /* per blob: a float-aligned copy, made by pr_blob_f32 only when
                             the frame's data is not 4-byte aligned (libzmq's decoder may
                             place a frame at any offset of its receive buffer) */
    zmq_msg_t routing_id; /* ROUTER only: pr_send(sock, &m->routing_id, ...) answers the
                             sender; zmq_msg_copy it to answer later */
    bool routed;          /* routing_id holds a routing id */
    char key[41];         /* sender's CURVE public key (Z85) as the ZAP handler accepted
                             it; "" on a plain socket */
    char peer[PR_PEER_LEN]; /* for log lines: "0080000001@10.0.0.7" (routing id in hex,
                               address) on a ROUTER, the endpoint on a DEALER; after
                               pr_msg_name_peer: "NAME (0080000001@10.0.0.7)" */
} pr_msg_t;

/* Receives one whole message, waiting as long as the socket's ZMQ_RCVTIMEO says
 * (-1, the default: forever). `router`: the socket is a ROUTER, so the first part
 * is the sender's routing id. `max_bytes`: the largest envelope + blobs accepted.
 * Returns 0 with *m filled; BT_EAGAIN when no message came (timeout, EINTR: check
 * your signal flags and poll again); BT_EPROTO when the message was malformed and
 * dropped (one warning logged; go on); BT_ENOMEM (dropped, logged); BT_EIO when
 * the socket itself failed (logged; the context is being closed, say). *m is
 * always initialised, so pr_msg_free(m) is harmless after any return. */
int pr_recv(void *sock, bool router, size_t max_bytes, pr_msg_t *m);
/* The same, but never waits (ZMQ_DONTWAIT): BT_EAGAIN when nothing is queued. */
int pr_recv_nowait(void *sock, bool router, size_t max_bytes, pr_msg_t *m);
/* Frees the envelope (booth__envelope__free_unpacked), the frames and any copies,
 * and zeroes *m. Safe twice and on a zeroed message. */
void pr_msg_free(pr_msg_t *m);
/* Names the sender in m->peer once the process knows it (from a Hello, or its own
 * table of peers): "NAME (0080000001@10.0.0.7)". */
void pr_msg_name_peer(pr_msg_t *m, const char *name);
/* The body's field name in booth.proto ("hello", "push", ...; "none" if unset). */
const char *pr_body_name(int body_case);

/* Index of the first blob called `name`, or -1 (no log line: for optional blobs). */
int pr_blob_find(const pr_msg_t *m, const char *name);
/* Blob `name` as floats, *numel elements (prod(shape)). NULL with one warning naming
 * the peer if it is missing or not F32. Points into the frame when it is aligned,
 * else into a copy owned by m; valid until pr_msg_free. The shape is in
 * m->env->blobs[pr_blob_find(m, name)]. */
const float *pr_blob_f32(pr_msg_t *m, const char *name, int64_t *numel);
/* Blob i (0 <= i < n_blobs) as floats; NULL (with a warning) unless it is F32. */
const float *pr_blob_f32_at(pr_msg_t *m, int i, int64_t *numel);
/* Blob `name`'s bytes, whatever its kind (BYTES: a file; U8: pixels). NULL with one
 * warning naming the peer if it is missing. Valid until pr_msg_free; any alignment. */
const uint8_t *pr_blob_bytes(const pr_msg_t *m, const char *name, size_t *nbytes);

/* ---- sending ------------------------------------------------------------------ */

/* One blob to send: the descriptor plus where its bytes are. */
typedef struct pr_blob {
    const char *name;
    Booth__Blob__Kind kind;
    int64_t shape[PR_MAX_DIMS]; /* F32, U8: the array's shape; BYTES: none (ndim 0) */
    int ndim;
    const void *data; /* nbytes bytes; read during pr_send only */
    size_t nbytes;    /* F32: 4 * prod(shape); U8: prod(shape) */
    zmq_msg_t *frame; /* optional: a frame holding exactly these bytes (pr_frame_of), sent as a shared
                         reference instead of a fresh copy — what a PS does when many workers pull
                         the same version */
} pr_blob_t;

/* A frame holding a copy of data, for sending many times (pr_blob_t.frame): ZeroMQ shares its
 * buffer among the messages, counted by reference. zmq_msg_close it when done. */
int pr_frame_of(zmq_msg_t *f, const void *data, size_t nbytes);

/* Blob constructors that compute nbytes from the shape. */
pr_blob_t pr_blob_of_f32(const char *name, const float *data, int ndim, const int64_t *shape);
pr_blob_t pr_blob_of_u8(const char *name, const uint8_t *data, int ndim, const int64_t *shape);
pr_blob_t pr_blob_of_bytes(const char *name, const void *data, size_t nbytes);

/* An envelope carrying one body, for instance
 *   Booth__Push push = BOOTH__PUSH__INIT;  ... fill push ...
 *   Booth__Envelope env = PR_ENVELOPE_INIT(PUSH, push, &push);
 * CASE is the BOOTH__ENVELOPE__BODY_ suffix, field the union member. */
#define PR_ENVELOPE_INIT(CASE, field, msg)                                                                     \
    {                                                                                                          \
        .base = PROTOBUF_C_MESSAGE_INIT(&booth__envelope__descriptor),                                         \
        .version = BOOTH__PROTOCOL__PROTOCOL_VERSION, .body_case = BOOTH__ENVELOPE__BODY_##CASE, .field = (msg) \
    }

/* Sends env and the blobs as one message: [routing id] envelope blob0 blob1 ...
 * Sets env->version and describes the blobs in env->blobs while packing (restored
 * afterwards, so env can be sent again). routing_id: where a ROUTER sends it
 * (&m->routing_id of a received message, or a copy of it); NULL on a DEALER. Each
 * blob's bytes are copied once, into ZeroMQ's frame (not into protobuf): handing
 * ZeroMQ the caller's buffer without a copy would oblige the caller to keep it until
 * ZeroMQ's I/O thread has sent it, which no caller can know. Does not block longer
 * than the socket's ZMQ_SNDTIMEO (pr_*_bind/connect set PR_SEND_TIMEOUT_MS).
 * Returns 0; BT_EINVAL for a malformed blob or envelope without a body (a bug in the
 * caller, logged); BT_EIO when the peer cannot be reached (unknown routing id on a
 * ROUTER_MANDATORY socket, timeout: the peer is gone or not reading), one warning
 * naming the peer. */
int pr_send(void *sock, const zmq_msg_t *routing_id, Booth__Envelope *env, const pr_blob_t *blobs, int n);

/* ---- sockets ------------------------------------------------------------------ */

typedef struct pr_sockopts {
    size_t max_bytes;         /* largest message accepted: ZMQ_MAXMSGSIZE (libzmq drops a peer
                                 that sends a bigger frame) and the limit to give pr_recv */
    int send_timeout_ms;      /* ZMQ_SNDTIMEO; 0: PR_SEND_TIMEOUT_MS */
    int heartbeat_ms;         /* ZMTP heartbeats every N ms, peer dead after 3 N; 0: none */
    bool insecure;            /* plain TCP: no encryption, anyone may connect (pr_warn_insecure) */
    const pr_keypair_t *keys; /* this process's keypair (required unless insecure) */
    const char *server_key;   /* DEALER: the server's public key, Z85 (required unless insecure) */
    const pr_zap_t *zap;      /* ROUTER: the ZAP handler of the same context, which decides
                                 which client keys may connect (required unless insecure:
                                 without one libzmq lets every key in) */
} pr_sockopts_t;

/* A ROUTER bound to endpoint (tcp://HOST:PORT, HOST and PORT may be "*": all
 * interfaces, any free port; ipc://, inproc://), with ZMQ_ROUTER_MANDATORY (a send
 * to a gone peer fails instead of vanishing), small linger, the size limit, send
 * timeout and heartbeats of o, and CURVE as server unless o->insecure. NULL with one
 * error line ("tcp://0.0.0.0:5555: address already in use"). */
void *pr_router_bind(void *ctx, const char *endpoint, const pr_sockopts_t *o);
/* A DEALER connected to endpoint, CURVE client of o->server_key unless insecure.
 * ZeroMQ connects in the background and reconnects by itself. NULL with one line. */
void *pr_dealer_connect(void *ctx, const char *endpoint, const pr_sockopts_t *o);
/* Whether endpoint is one ZeroMQ can bind (bind) or connect to: tcp://HOST:PORT
 * (bind: HOST may be *, PORT may be * or 0), ipc://PATH, inproc://NAME. False with
 * one error line saying what is wrong. */
bool pr_endpoint_ok(const char *endpoint, bool bind);
/* The endpoint a socket last bound or connected to (with the real port after
 * binding port *). Returns 0 or BT_EINVAL if it does not fit in cap. */
int pr_last_endpoint(void *sock, char *buf, size_t cap);
/* The next event of a socket monitor (zmq_socket_monitor's PAIR: [u16 event, u32 value]
 * [endpoint]) without waiting: true with *event set, false when none is queued. */
bool pr_monitor_next(void *monitor, uint16_t *event);
/* One loud warning line: "INSECURE: plain TCP without CURVE keys: anyone who can
 * reach ADDR can WHAT". what: NULL for a generic "talk to this process". */
void pr_warn_insecure(const char *addr, const char *what);

#endif
