/*
 * wire.c — receiving, checking and sending booth messages; socket setup.
 *
 * Everything a peer sends is checked here, before a handler sees it, against the
 * frames that actually arrived: a descriptor never makes us read past a frame or
 * allocate more than the message holds. A bad message costs one warning line and
 * is dropped whole (every part taken off the socket), so the next one is read
 * from its first part. Sending copies each blob once, into ZeroMQ's frame.
 */
#include "proto/wire.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/status.h"

/* Blobs are little-endian on the wire and read in place. */
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "booth's wire format is little-endian; this host is not"
#endif

/* zmq_msg_data takes a non-const message though it only reads it. */
static void *s_data(const zmq_msg_t *f) { return zmq_msg_data((zmq_msg_t *)f); }

/* zmq_strerror with a lowercase first letter, to read as the rest of booth's lines. */
static const char *s_zerr(int e, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s", zmq_strerror(e));
    if (buf[0] >= 'A' && buf[0] <= 'Z' && !(buf[1] >= 'A' && buf[1] <= 'Z')) buf[0] = (char)(buf[0] - 'A' + 'a');
    return buf;
}

/* Copies peer-controlled text for a log line: non-printable bytes become '?', and at
 * most cap - 1 bytes ("..." marks a cut). */
static void s_printable(char *dst, size_t cap, const char *src, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n && k + 1 < cap; i++) {
        if (cap >= 4 && k + 4 >= cap && i + 1 < n) {
            memcpy(dst + k, "...", 3);
            k += 3;
            break;
        }
        unsigned char c = (unsigned char)src[i];
        dst[k++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    dst[k] = '\0';
}

static void s_socket_name(void *sock, char *buf, size_t cap)
{
    if (pr_last_endpoint(sock, buf, cap) != 0 || !buf[0]) snprintf(buf, cap, "socket");
}

/* "0080000001@10.0.0.7": the routing id in hex (at most 16 bytes shown), the address. */
static void s_routed_peer(char *buf, size_t cap, const zmq_msg_t *rid, const char *addr)
{
    const uint8_t *p = s_data(rid);
    size_t n = zmq_msg_size(rid), k = 0;
    char hex[40];
    for (size_t i = 0; i < n && i < 16; i++) k += (size_t)snprintf(hex + k, sizeof hex - k, "%02x", p[i]);
    if (n > 16) snprintf(hex + k, sizeof hex - k, "..");
    if (n == 0) snprintf(hex, sizeof hex, "-");
    char a[64] = "";
    if (addr) s_printable(a, sizeof a, addr, strlen(addr));
    snprintf(buf, cap, "%s%s%s", hex, a[0] ? "@" : "", a);
}

/* ---- receiving ---------------------------------------------------------------- */

void pr_msg_free(pr_msg_t *m)
{
    if (m->frames) {
        size_t n = m->env ? m->env->n_blobs : 0;
        for (size_t i = 0; i < n; i++) zmq_msg_close(&m->frames[i]);
        free(m->frames);
    }
    if (m->aligned) {
        for (size_t i = 0; i < (m->env ? m->env->n_blobs : 0); i++) free(m->aligned[i]);
        free(m->aligned);
    }
    if (m->env) booth__envelope__free_unpacked(m->env, NULL);
    if (m->routed) zmq_msg_close(&m->routing_id);
    memset(m, 0, sizeof *m);
}

void pr_msg_name_peer(pr_msg_t *m, const char *name)
{
    /* keeps the routing id and address: a name alone may be forged or repeated */
    char who[64], was[PR_PEER_LEN];
    s_printable(who, sizeof who, name, strlen(name));
    memcpy(was, m->peer, sizeof was);
    snprintf(m->peer, sizeof m->peer, "%s (%.*s)", who, (int)(sizeof m->peer - strlen(who) - 4), was);
}

const char *pr_body_name(int body_case)
{
    const ProtobufCFieldDescriptor *f =
        body_case ? protobuf_c_message_descriptor_get_field(&booth__envelope__descriptor, (unsigned)body_case)
                  : NULL;
    return f ? f->name : "none";
}

/* Elements of a shape, or -1 when a dimension is negative or the product overflows. */
static int64_t s_numel(const int64_t *shape, size_t ndim)
{
    int64_t n = 1;
    for (size_t d = 0; d < ndim; d++) {
        if (shape[d] < 0 || __builtin_mul_overflow(n, shape[d], &n)) return -1;
    }
    return n;
}

static const char *s_kind_name(int kind)
{
    switch (kind) {
    case BOOTH__BLOB__KIND__F32: return "F32";
    case BOOTH__BLOB__KIND__BYTES: return "BYTES";
    case BOOTH__BLOB__KIND__U8: return "U8";
    }
    return "unknown";
}

/* Checks one blob descriptor against its frame's length; cause into why. */
static bool s_blob_ok(const Booth__Blob *b, size_t frame_len, size_t i, char *why, size_t cap)
{
    char name[48];
    s_printable(name, sizeof name, b->name, strlen(b->name));
    if (b->nbytes != (uint64_t)frame_len) {
        snprintf(why, cap, "blob %zu ('%s'): frame of %zu bytes, descriptor says %" PRIu64, i, name, frame_len,
                 b->nbytes);
        return false;
    }
    if (b->kind == BOOTH__BLOB__KIND__BYTES) {
        if (b->n_shape == 0) return true;
        snprintf(why, cap, "blob %zu ('%s'): a BYTES blob has no shape, this one has %zu dimensions", i, name,
                 b->n_shape);
        return false;
    }
    if (b->kind != BOOTH__BLOB__KIND__F32 && b->kind != BOOTH__BLOB__KIND__U8) {
        snprintf(why, cap, "blob %zu ('%s'): unknown kind %d", i, name, (int)b->kind);
        return false;
    }
    if (b->n_shape > PR_MAX_DIMS) {
        snprintf(why, cap, "blob %zu ('%s'): %zu dimensions, at most %d", i, name, b->n_shape, PR_MAX_DIMS);
        return false;
    }
    int64_t numel = s_numel(b->shape, b->n_shape), need;
    int esize = b->kind == BOOTH__BLOB__KIND__F32 ? 4 : 1;
    if (numel < 0 || __builtin_mul_overflow(numel, (int64_t)esize, &need)) {
        snprintf(why, cap, "blob %zu ('%s'): shape has a negative dimension or overflows", i, name);
        return false;
    }
    if ((uint64_t)need != b->nbytes) {
        snprintf(why, cap, "blob %zu ('%s'): %s of %" PRId64 " elements needs %" PRId64 " bytes, nbytes is %" PRIu64,
                 i, name, s_kind_name(b->kind), numel, need, b->nbytes);
        return false;
    }
    return true;
}

/* Receives the next part of a message whose first part has arrived: libzmq delivers
 * multipart messages whole, so this does not wait (it may be interrupted). */
static int s_recv_part(void *sock, zmq_msg_t *f)
{
    int rc;
    do rc = zmq_msg_recv(f, sock, 0);
    while (rc < 0 && zmq_errno() == EINTR);
    return rc;
}

static int s_recv(void *sock, bool router, size_t max_bytes, int flags, pr_msg_t *m)
{
    memset(m, 0, sizeof *m);
    char ebuf[96], why[256] = "";
    zmq_msg_t first;
    zmq_msg_init(&first);
    if (zmq_msg_recv(&first, sock, flags) < 0) {
        int e = zmq_errno();
        zmq_msg_close(&first);
        if (e == EAGAIN || e == EINTR) return BT_EAGAIN;
        char name[128];
        s_socket_name(sock, name, sizeof name);
        BT_ERROR("%s: cannot receive: %s", name, s_zerr(e, ebuf, sizeof ebuf));
        return BT_EIO;
    }

    /* From here on the whole message is queued: take every part off the socket,
     * whatever is wrong with it, so the next receive starts at a message boundary. */
    int status = BT_OK;
    zmq_msg_t envf; /* the envelope frame */
    zmq_msg_init(&envf);
    bool more = true, have_env = false;
    if (router) {
        zmq_msg_init(&m->routing_id);
        zmq_msg_move(&m->routing_id, &first);
        m->routed = true;
        more = zmq_msg_more(&m->routing_id);
        if (!more) {
            snprintf(why, sizeof why, "no envelope after the routing id");
            status = BT_EPROTO;
        } else if (s_recv_part(sock, &envf) >= 0) {
            have_env = true;
        }
    } else {
        zmq_msg_move(&envf, &first);
        have_env = true;
    }
    zmq_msg_close(&first);
    if (more && !have_env) {
        zmq_msg_close(&envf);
        goto out_sock_failed;
    }

    /* who sent it, for the log lines: metadata rides on the frames of the message */
    const char *addr = have_env ? zmq_msg_gets(&envf, "Peer-Address") : NULL;
    if (router) {
        s_routed_peer(m->peer, sizeof m->peer, &m->routing_id, addr);
    } else {
        s_socket_name(sock, m->peer, sizeof m->peer);
    }
    const char *uid = have_env ? zmq_msg_gets(&envf, "User-Id") : NULL;
    if (uid && strlen(uid) == 40) memcpy(m->key, uid, 41);

    size_t total = 0, n_blobs = 0, nframes = 0;
    if (have_env) {
        more = zmq_msg_more(&envf);
        total = zmq_msg_size(&envf);
        m->env = booth__envelope__unpack(NULL, zmq_msg_size(&envf), s_data(&envf));
        if (!m->env) {
            snprintf(why, sizeof why, "envelope of %zu bytes does not decode", zmq_msg_size(&envf));
            status = BT_EPROTO;
        } else if (m->env->n_blobs > PR_MAX_BLOBS) {
            snprintf(why, sizeof why, "%zu blobs, at most %d", m->env->n_blobs, PR_MAX_BLOBS);
            status = BT_EPROTO;
        } else if (m->env->n_blobs) {
            n_blobs = m->env->n_blobs;
            if (!(m->frames = bt_malloc(n_blobs * sizeof *m->frames))) {
                snprintf(why, sizeof why, "no memory for %zu blob frames", n_blobs);
                status = BT_ENOMEM;
                n_blobs = 0;
            }
            for (size_t i = 0; i < n_blobs; i++) zmq_msg_init(&m->frames[i]);
        }
    }
    zmq_msg_close(&envf);

    /* the blob frames: kept while they match the descriptors, else only drained */
    while (more) {
        zmq_msg_t spare, *f = nframes < n_blobs ? &m->frames[nframes] : &spare;
        if (f == &spare) zmq_msg_init(&spare);
        if (s_recv_part(sock, f) < 0) {
            if (f == &spare) zmq_msg_close(&spare);
            goto out_sock_failed;
        }
        more = zmq_msg_more(f);
        size_t len = zmq_msg_size(f);
        total = total > SIZE_MAX - len ? SIZE_MAX : total + len;
        if (f == &spare) zmq_msg_close(&spare);
        nframes++;
    }

    if (status == BT_OK && m->env->version != BOOTH__PROTOCOL__PROTOCOL_VERSION) {
        snprintf(why, sizeof why, "protocol version %d, this booth speaks %d", (int)m->env->version,
                 (int)BOOTH__PROTOCOL__PROTOCOL_VERSION);
        status = BT_EPROTO;
    }
    if (status == BT_OK && total > max_bytes) {
        snprintf(why, sizeof why, "%zu bytes, more than the limit of %zu", total, max_bytes);
        status = BT_EPROTO;
    }
    if (status == BT_OK && nframes != n_blobs) {
        snprintf(why, sizeof why, "%zu frames after the envelope for %zu blob descriptors", nframes, n_blobs);
        status = BT_EPROTO;
    }
    for (size_t i = 0; status == BT_OK && i < n_blobs; i++)
        if (!s_blob_ok(m->env->blobs[i], zmq_msg_size(&m->frames[i]), i, why, sizeof why)) status = BT_EPROTO;
    if (status == BT_OK && m->env->body_case == BOOTH__ENVELOPE__BODY__NOT_SET) {
        snprintf(why, sizeof why, "no body (a message type this booth does not know?)");
        status = BT_EPROTO;
    }
    if (status != BT_OK) {
        const char *body = m->env ? pr_body_name(m->env->body_case) : "message";
        BT_WARN("%s: dropped %s: %s", m->peer, m->env && m->env->body_case ? body : "a message", why);
        pr_msg_free(m);
    }
    return status;

out_sock_failed: {
    /* only when the context is being terminated or the socket closed under us */
    int e = zmq_errno();
    char name[128];
    s_socket_name(sock, name, sizeof name);
    BT_ERROR("%s: receive failed in the middle of a message: %s", name, s_zerr(e, ebuf, sizeof ebuf));
    pr_msg_free(m);
    return BT_EIO;
}
}

int pr_recv(void *sock, bool router, size_t max_bytes, pr_msg_t *m) { return s_recv(sock, router, max_bytes, 0, m); }

int pr_recv_nowait(void *sock, bool router, size_t max_bytes, pr_msg_t *m)
{
    return s_recv(sock, router, max_bytes, ZMQ_DONTWAIT, m);
}

int pr_blob_find(const pr_msg_t *m, const char *name)
{
    if (!m->env) return -1;
    for (size_t i = 0; i < m->env->n_blobs; i++)
        if (!strcmp(m->env->blobs[i]->name, name)) return (int)i;
    return -1;
}

static void s_missing(const pr_msg_t *m, const char *name)
{
    BT_WARN("%s: %s has no blob '%s'", m->peer, m->env ? pr_body_name(m->env->body_case) : "message", name);
}

const float *pr_blob_f32_at(pr_msg_t *m, int i, int64_t *numel)
{
    if (!m->env || i < 0 || (size_t)i >= m->env->n_blobs) {
        BT_ERROR("pr_blob_f32_at: blob %d of a message with %zu", i, m->env ? m->env->n_blobs : 0);
        return NULL;
    }
    const Booth__Blob *b = m->env->blobs[i];
    if (b->kind != BOOTH__BLOB__KIND__F32) {
        char name[48];
        s_printable(name, sizeof name, b->name, strlen(b->name));
        BT_WARN("%s: blob '%s' of %s is %s, expected F32", m->peer, name, pr_body_name(m->env->body_case),
                s_kind_name(b->kind));
        return NULL;
    }
    const void *p = s_data(&m->frames[i]);
    size_t n = zmq_msg_size(&m->frames[i]);
    if (numel) *numel = (int64_t)(n / sizeof(float));
    if ((uintptr_t)p % _Alignof(float) == 0) return p;
    /* libzmq may hand us a frame at any offset of its receive buffer: copy it once */
    if (!m->aligned && !(m->aligned = bt_calloc(m->env->n_blobs, sizeof *m->aligned))) goto out_nomem;
    if (!m->aligned[i]) {
        if (!(m->aligned[i] = bt_malloc(n ? n : 1))) goto out_nomem;
        memcpy(m->aligned[i], p, n);
    }
    return m->aligned[i];
out_nomem:
    BT_ERROR("%s: no memory to align a blob of %zu bytes", m->peer, n);
    return NULL;
}

const float *pr_blob_f32(pr_msg_t *m, const char *name, int64_t *numel)
{
    int i = pr_blob_find(m, name);
    if (i < 0) {
        s_missing(m, name);
        return NULL;
    }
    return pr_blob_f32_at(m, i, numel);
}

const uint8_t *pr_blob_bytes(const pr_msg_t *m, const char *name, size_t *nbytes)
{
    int i = pr_blob_find(m, name);
    if (i < 0) {
        s_missing(m, name);
        return NULL;
    }
    if (nbytes) *nbytes = zmq_msg_size(&m->frames[i]);
    return s_data(&m->frames[i]);
}

/* ---- sending ------------------------------------------------------------------ */

static pr_blob_t s_blob_of(const char *name, Booth__Blob__Kind kind, size_t esize, const void *data, int ndim,
                           const int64_t *shape)
{
    pr_blob_t b = {.name = name, .kind = kind, .ndim = ndim, .data = data};
    int64_t numel = 1;
    for (int d = 0; d < ndim && d < PR_MAX_DIMS; d++) {
        b.shape[d] = shape[d];
        numel *= shape[d];
    }
    b.nbytes = numel < 0 ? 0 : (size_t)numel * esize; /* pr_send checks it against the shape */
    return b;
}

pr_blob_t pr_blob_of_f32(const char *name, const float *data, int ndim, const int64_t *shape)
{
    return s_blob_of(name, BOOTH__BLOB__KIND__F32, sizeof(float), data, ndim, shape);
}

pr_blob_t pr_blob_of_u8(const char *name, const uint8_t *data, int ndim, const int64_t *shape)
{
    return s_blob_of(name, BOOTH__BLOB__KIND__U8, 1, data, ndim, shape);
}

pr_blob_t pr_blob_of_bytes(const char *name, const void *data, size_t nbytes)
{
    return (pr_blob_t){.name = name, .kind = BOOTH__BLOB__KIND__BYTES, .data = data, .nbytes = nbytes};
}

/* Who a send goes to, for its log line. */
static void s_send_peer(void *sock, const zmq_msg_t *rid, char *buf, size_t cap)
{
    if (rid)
        s_routed_peer(buf, cap, rid, NULL);
    else
        s_socket_name(sock, buf, cap);
}

/* A caller's blob that the receiver would refuse (a bug in the caller): what is wrong. */
static const char *s_send_blob_bad(const pr_blob_t *b)
{
    if (!b->name) return "no name";
    if (b->ndim < 0 || b->ndim > PR_MAX_DIMS) return "ndim out of range";
    if (b->nbytes && !b->data) return "no data";
    if (b->kind == BOOTH__BLOB__KIND__BYTES) return b->ndim ? "a BYTES blob with a shape" : NULL;
    if (b->kind != BOOTH__BLOB__KIND__F32 && b->kind != BOOTH__BLOB__KIND__U8) return "unknown kind";
    int64_t numel = s_numel(b->shape, (size_t)b->ndim), need;
    if (numel < 0 || __builtin_mul_overflow(numel, (int64_t)(b->kind == BOOTH__BLOB__KIND__F32 ? 4 : 1), &need) ||
        (uint64_t)need != (uint64_t)b->nbytes)
        return "nbytes does not match the shape";
    return NULL;
}

/* Sends one frame; zmq owns f's content afterwards (closed here on failure). */
static int s_send_frame(void *sock, zmq_msg_t *f, int flags)
{
    int rc;
    do rc = zmq_msg_send(f, sock, flags);
    while (rc < 0 && zmq_errno() == EINTR);
    if (rc < 0) {
        int e = zmq_errno();
        zmq_msg_close(f);
        errno = e;
        return -1;
    }
    return 0;
}

static int s_send_copy(void *sock, const void *data, size_t n, int flags)
{
    zmq_msg_t f;
    if (zmq_msg_init_size(&f, n) != 0) return -1;
    if (n) memcpy(zmq_msg_data(&f), data, n);
    return s_send_frame(sock, &f, flags);
}

int pr_frame_of(zmq_msg_t *f, const void *data, size_t nbytes)
{
    if (zmq_msg_init_size(f, nbytes) != 0) {
        BT_ERROR("no memory for a frame of %zu bytes", nbytes);
        return BT_ENOMEM;
    }
    if (nbytes) memcpy(zmq_msg_data(f), data, nbytes);
    return BT_OK;
}

int pr_send(void *sock, const zmq_msg_t *routing_id, Booth__Envelope *env, const pr_blob_t *blobs, int n)
{
    char peer[PR_PEER_LEN], why[160] = "", ebuf[96];
    s_send_peer(sock, routing_id, peer, sizeof peer);
    if (!env || env->body_case == BOOTH__ENVELOPE__BODY__NOT_SET)
        snprintf(why, sizeof why, "an envelope without a body");
    else if (n < 0 || n > PR_MAX_BLOBS || (n && !blobs))
        snprintf(why, sizeof why, "%d blobs", n);
    for (int i = 0; !why[0] && i < n; i++) {
        const char *bad = s_send_blob_bad(&blobs[i]);
        if (bad) snprintf(why, sizeof why, "blob %d ('%.40s'): %s", i, blobs[i].name ? blobs[i].name : "", bad);
    }
    if (why[0]) {
        BT_ERROR("%s: not sending %s: %s", peer, env ? pr_body_name(env->body_case) : "a message", why);
        return BT_EINVAL;
    }
    const char *body = pr_body_name(env->body_case);

    /* describe the blobs in the envelope just while packing it */
    Booth__Blob *desc = n ? bt_calloc((size_t)n, sizeof *desc) : NULL;
    Booth__Blob **ptrs = n ? bt_calloc((size_t)n, sizeof *ptrs) : NULL;
    if (n && (!desc || !ptrs)) {
        free(desc);
        free(ptrs);
        BT_ERROR("%s: no memory to describe %d blobs", peer, n);
        return BT_ENOMEM;
    }
    for (int i = 0; i < n; i++) {
        booth__blob__init(&desc[i]);
        desc[i].name = (char *)blobs[i].name;
        desc[i].kind = blobs[i].kind;
        desc[i].n_shape = (size_t)blobs[i].ndim;
        desc[i].shape = (int64_t *)blobs[i].shape;
        desc[i].nbytes = blobs[i].nbytes;
        ptrs[i] = &desc[i];
    }
    size_t saved_n = env->n_blobs;
    Booth__Blob **saved = env->blobs;
    env->version = BOOTH__PROTOCOL__PROTOCOL_VERSION;
    env->n_blobs = (size_t)n;
    env->blobs = ptrs;
    zmq_msg_t envf;
    int rc = zmq_msg_init_size(&envf, booth__envelope__get_packed_size(env));
    if (rc == 0) booth__envelope__pack(env, zmq_msg_data(&envf));
    env->n_blobs = saved_n;
    env->blobs = saved;
    free(desc);
    free(ptrs);
    if (rc != 0) {
        BT_ERROR("%s: no memory to pack %s", peer, body);
        return BT_ENOMEM;
    }

    /* The first frame decides: once it is queued, libzmq takes the rest of the
     * message on the same pipe (the high-water mark counts whole messages). */
    int sent = 0;
    if (routing_id) {
        if (s_send_copy(sock, s_data(routing_id), zmq_msg_size(routing_id), ZMQ_SNDMORE) != 0) {
            zmq_msg_close(&envf);
            goto out_failed;
        }
        sent++;
    }
    if (s_send_frame(sock, &envf, n ? ZMQ_SNDMORE : 0) != 0) goto out_failed;
    sent++;
    for (int i = 0; i < n; i++) {
        int flags = i + 1 < n ? ZMQ_SNDMORE : 0;
        if (blobs[i].frame) { /* a shared reference, no copy */
            zmq_msg_t f;
            zmq_msg_init(&f);
            if (zmq_msg_copy(&f, blobs[i].frame) != 0) {
                zmq_msg_close(&f);
                goto out_failed;
            }
            if (s_send_frame(sock, &f, flags) != 0) goto out_failed;
        } else if (s_send_copy(sock, blobs[i].data, blobs[i].nbytes, flags) != 0) {
            goto out_failed;
        }
        sent++;
    }
    return BT_OK;

out_failed: {
    int e = zmq_errno();
    const char *cause = e == EHOSTUNREACH ? "no such peer (disconnected, or never connected)"
                        : e == EAGAIN    ? "send timed out (the peer is gone or not reading)"
                                         : s_zerr(e, ebuf, sizeof ebuf);
    if (sent) {
        /* end the half-sent message, so it is not glued to the next one; the receiver
         * drops it for its missing frames */
        s_send_copy(sock, "", 0, 0);
        BT_WARN("%s: sending %s failed after %d frames: %s", peer, body, sent, cause);
    } else {
        BT_WARN("%s: cannot send %s: %s", peer, body, cause);
    }
    return BT_EIO;
}
}

/* ---- sockets ------------------------------------------------------------------ */

int pr_last_endpoint(void *sock, char *buf, size_t cap)
{
    size_t len = cap;
    if (cap == 0) return BT_EINVAL;
    buf[0] = '\0';
    if (zmq_getsockopt(sock, ZMQ_LAST_ENDPOINT, buf, &len) != 0) {
        buf[0] = '\0';
        return BT_EINVAL;
    }
    return BT_OK;
}

void pr_warn_insecure(const char *addr, const char *what)
{
    BT_WARN("INSECURE: plain TCP without CURVE keys: anyone who can reach %s can %s", addr,
            what ? what : "send this process commands and read everything it sends");
}

static bool s_port_ok(const char *p, bool bind)
{
    if (bind && !strcmp(p, "*")) return true;
    if (!*p || strlen(p) > 5) return false;
    long v = 0;
    for (const char *c = p; *c; c++) {
        if (*c < '0' || *c > '9') return false;
        v = v * 10 + (*c - '0');
    }
    return v <= 65535 && (bind || v > 0);
}

bool pr_endpoint_ok(const char *ep, bool bind)
{
    static const char *const schemes[] = {"tcp://", "ipc://", "inproc://"};
    const char *rest = NULL;
    int scheme = -1;
    for (int i = 0; ep && i < 3 && scheme < 0; i++)
        if (!strncmp(ep, schemes[i], strlen(schemes[i]))) {
            scheme = i;
            rest = ep + strlen(schemes[i]);
        }
    if (scheme < 0) {
        BT_ERROR("'%s': not a ZeroMQ endpoint (tcp://HOST:PORT, ipc://PATH or inproc://NAME)", ep ? ep : "");
        return false;
    }
    for (const char *c = rest; *c; c++)
        if ((unsigned char)*c <= ' ' || *c == 0x7f) {
            BT_ERROR("'%s': blanks or control characters in an endpoint", ep);
            return false;
        }
    if (!*rest) {
        BT_ERROR("'%s': nothing after %s", ep, schemes[scheme]);
        return false;
    }
    if (scheme != 0) return true;
    const char *colon = strrchr(rest, ':');
    if (!colon || colon == rest) {
        BT_ERROR("%s: give tcp://HOST:PORT", ep);
        return false;
    }
    if (!bind && colon - rest == 1 && rest[0] == '*') {
        BT_ERROR("%s: cannot connect to host '*'; name the host", ep);
        return false;
    }
    if (!s_port_ok(colon + 1, bind)) {
        BT_ERROR("%s: port '%s' is not %s", ep, colon + 1, bind ? "a number from 0 to 65535 or *" : "a number from 1 to 65535");
        return false;
    }
    return true;
}

static bool s_setopt(void *s, const char *ep, int opt, const char *optname, const void *v, size_t len)
{
    if (zmq_setsockopt(s, opt, v, len) == 0) return true;
    char ebuf[96];
    BT_ERROR("%s: cannot set %s: %s", ep, optname, s_zerr(zmq_errno(), ebuf, sizeof ebuf));
    return false;
}
#define S_SETINT(s, ep, opt, val) s_setopt(s, ep, opt, #opt, &(int){val}, sizeof(int))

static void *s_socket(void *ctx, int type, const char *ep, const pr_sockopts_t *o)
{
    bool server = type == ZMQ_ROUTER;
    if (!pr_endpoint_ok(ep, server)) return NULL;
    const char *missing = o->max_bytes == 0                              ? "max_bytes"
                          : o->insecure                                  ? NULL
                          : !o->keys                                     ? "a keypair (or insecure)"
                          : server && !o->zap                            ? "a ZAP handler (pr_zap_new; or insecure)"
                          : server && pr_zap_context(o->zap) != ctx      ? "a ZAP handler of the same context"
                          : !server && !pr_key_z85_ok(o->server_key)     ? "the server's public key (or insecure)"
                                                                         : NULL;
    if (missing) {
        BT_ERROR("%s: socket options lack %s", ep, missing);
        return NULL;
    }
    char ebuf[96];
    void *s = zmq_socket(ctx, type);
    if (!s) {
        BT_ERROR("%s: cannot create a socket: %s", ep, s_zerr(zmq_errno(), ebuf, sizeof ebuf));
        return NULL;
    }
    int64_t maxmsg = o->max_bytes > (size_t)INT64_MAX ? -1 : (int64_t)o->max_bytes;
    bool ok = S_SETINT(s, ep, ZMQ_LINGER, PR_LINGER_MS) &&
              s_setopt(s, ep, ZMQ_MAXMSGSIZE, "ZMQ_MAXMSGSIZE", &maxmsg, sizeof maxmsg) &&
              S_SETINT(s, ep, ZMQ_SNDTIMEO, o->send_timeout_ms > 0 ? o->send_timeout_ms : PR_SEND_TIMEOUT_MS);
    if (ok && o->heartbeat_ms > 0)
        ok = S_SETINT(s, ep, ZMQ_HEARTBEAT_IVL, o->heartbeat_ms) &&
             S_SETINT(s, ep, ZMQ_HEARTBEAT_TIMEOUT, o->heartbeat_ms > INT32_MAX / 3 ? INT32_MAX : 3 * o->heartbeat_ms);
    if (ok && server) ok = S_SETINT(s, ep, ZMQ_ROUTER_MANDATORY, 1);
    if (ok && !server) ok = S_SETINT(s, ep, ZMQ_RECONNECT_IVL_MAX, 2000);
    if (ok && !o->insecure) {
        if (server) {
            ok = s_setopt(s, ep, ZMQ_ZAP_DOMAIN, "ZMQ_ZAP_DOMAIN", PR_ZAP_DOMAIN, strlen(PR_ZAP_DOMAIN)) &&
                 S_SETINT(s, ep, ZMQ_CURVE_SERVER, 1) &&
                 s_setopt(s, ep, ZMQ_CURVE_SECRETKEY, "ZMQ_CURVE_SECRETKEY", o->keys->secret_z85, 41);
        } else {
            ok = s_setopt(s, ep, ZMQ_CURVE_SERVERKEY, "ZMQ_CURVE_SERVERKEY", o->server_key, 41) &&
                 s_setopt(s, ep, ZMQ_CURVE_PUBLICKEY, "ZMQ_CURVE_PUBLICKEY", o->keys->public_z85, 41) &&
                 s_setopt(s, ep, ZMQ_CURVE_SECRETKEY, "ZMQ_CURVE_SECRETKEY", o->keys->secret_z85, 41);
        }
    }
    if (ok) {
        int rc = server ? zmq_bind(s, ep) : zmq_connect(s, ep);
        if (rc != 0) {
            BT_ERROR("%s: %s", ep, s_zerr(zmq_errno(), ebuf, sizeof ebuf));
            ok = false;
        }
    }
    if (!ok) {
        zmq_close(s);
        return NULL;
    }
    return s;
}

void *pr_router_bind(void *ctx, const char *endpoint, const pr_sockopts_t *o)
{
    return s_socket(ctx, ZMQ_ROUTER, endpoint, o);
}

void *pr_dealer_connect(void *ctx, const char *endpoint, const pr_sockopts_t *o)
{
    return s_socket(ctx, ZMQ_DEALER, endpoint, o);
}

bool pr_monitor_next(void *monitor, uint16_t *event)
{
    zmq_msg_t f;
    zmq_msg_init(&f);
    if (zmq_msg_recv(&f, monitor, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&f);
        return false;
    }
    uint16_t ev = 0;
    if (zmq_msg_size(&f) >= sizeof ev) memcpy(&ev, zmq_msg_data(&f), sizeof ev);
    while (zmq_msg_more(&f)) { /* the endpoint frame */
        zmq_msg_close(&f);
        zmq_msg_init(&f);
        if (zmq_msg_recv(&f, monitor, 0) < 0) break;
    }
    zmq_msg_close(&f);
    *event = ev;
    return true;
}
