/*
 * keys.c — CURVE key files, the allow-list of client keys, and the ZAP handler.
 *
 * Key files are small text files a person reads and edits, so their errors name the
 * file and line. The secret key file is created 0600 before a byte of it is written
 * and replaced through the crash-safe writer; one that others can read is refused,
 * as ssh refuses a private key with loose permissions. The ZAP handler answers
 * libzmq's ZAP requests (RFC 27) for the sockets of one context: a CURVE client key
 * on the allow-list gets 200 and its Z85 text as the User-Id (which pr_recv puts
 * in pr_msg_t.key), anything else 400.
 */
#include "proto/keys.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "common/alloc.h"
#include "common/fileio.h"
#include "common/log.h"
#include "common/status.h"

#define S_ZAP_ENDPOINT "inproc://zeromq.zap.01" /* fixed by libzmq */
#define S_REFUSED_LOGGED_MAX 1024               /* distinct refused keys logged, then silence */

static bool s_blank(char c) { return c == ' ' || c == '\t' || c == '\r'; }

/* zmq_strerror with a lowercase first letter, to read as the rest of booth's lines. */
static const char *s_zerr(int e, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s", zmq_strerror(e));
    if (buf[0] >= 'A' && buf[0] <= 'Z' && !(buf[1] >= 'A' && buf[1] <= 'Z')) buf[0] = (char)(buf[0] - 'A' + 'a');
    return buf;
}

/* Z85 key text to 32 bytes; false if s is not exactly one key. */
static bool s_decode(const char *s, size_t len, uint8_t out[32])
{
    char z[41];
    if (len != 40) return false;
    memcpy(z, s, 40);
    z[40] = '\0';
    return zmq_z85_decode(out, z) != NULL;
}

bool pr_key_z85_ok(const char *s)
{
    uint8_t bin[32];
    return s && s_decode(s, strlen(s), bin);
}

/* Calls fn on each line of a file, trimmed of blanks at both ends, with its number;
 * stops at fn's first nonzero return. BT_EIO (logged) if the file cannot be read. */
static int s_each_line(const char *path, int (*fn)(void *user, const char *line, size_t len, int lineno),
                       void *user)
{
    char *text;
    size_t len;
    int rc = bt_read_file(path, &text, &len);
    if (rc) return rc;
    int lineno = 0;
    for (char *p = text; rc == 0 && p < text + len;) {
        char *nl = memchr(p, '\n', (size_t)(text + len - p));
        char *end = nl ? nl : text + len;
        lineno++;
        char *a = p, *b = end;
        while (a < b && s_blank(*a)) a++;
        while (b > a && s_blank(b[-1])) b--;
        rc = fn(user, a, (size_t)(b - a), lineno);
        p = nl ? nl + 1 : end;
    }
    free(text);
    return rc;
}

/* A line of an authorized_keys or public.key file: 1 and the key in out for a key
 * (optionally followed by blanks and a # comment), 0 for a blank or comment line,
 * -1 for anything else. Z85 characters include '#' but a key never starts with it. */
static int s_key_line(const char *line, size_t len, uint8_t out[32])
{
    if (len == 0) return 0;
    if (len >= 40 && (len == 40 || s_blank(line[40])) && s_decode(line, 40, out)) {
        size_t k = 40;
        while (k < len && s_blank(line[k])) k++;
        if (k == len || line[k] == '#') return 1;
    }
    return line[0] == '#' ? 0 : -1;
}

/* ---- keypairs ------------------------------------------------------------------ */

int pr_keys_generate(pr_keypair_t *kp)
{
    if (!zmq_has("curve") || zmq_curve_keypair(kp->public_z85, kp->secret_z85) != 0) {
        BT_ERROR("this libzmq cannot make CURVE keys (built without libsodium/tweetnacl?)");
        return BT_EUNSUPPORTED;
    }
    return BT_OK;
}

static char *s_join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = bt_malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    if (!p) BT_ERROR("%s: out of memory", dir);
    return p;
}

/* Writes text to path through the crash-safe writer; mode 0600 before any byte when
 * secret (the temporary file is renamed with its mode). */
static int s_write(const char *path, const char *text, bool secret)
{
    bt_atomic_file_t af;
    int rc = bt_atomic_open(&af, path);
    if (rc) return rc;
    if (secret && fchmod(fileno(af.f), 0600) != 0) {
        BT_ERROR("%s: cannot make it private (chmod 600): %s", af.tmp_path, strerror(errno));
        bt_atomic_abort(&af);
        return BT_EIO;
    }
    if (fputs(text, af.f) == EOF) {
        BT_ERROR("%s: write failed: %s", af.tmp_path, strerror(errno));
        bt_atomic_abort(&af);
        return BT_EIO;
    }
    return bt_atomic_commit(&af);
}

int pr_keys_write(const char *dir, const pr_keypair_t *kp, bool force)
{
    int rc = BT_ENOMEM;
    char *sec = s_join(dir, PR_SECRET_KEY_FILE), *pub = s_join(dir, PR_PUBLIC_KEY_FILE), text[512];
    if (!sec || !pub) goto out_free;
    if ((rc = bt_mkdirs(dir))) goto out_free;
    struct stat st;
    const char *exists = lstat(sec, &st) == 0 ? sec : lstat(pub, &st) == 0 ? pub : NULL;
    if (exists && !force) {
        BT_ERROR("%s: already exists; not replacing a key (--force does, and locks out whoever holds the old "
                 "public key)",
                 exists);
        rc = BT_EINVAL;
        goto out_free;
    }
    snprintf(text, sizeof text,
             "# booth CURVE secret key, from `booth keygen`. Keep it on this host, readable by\n"
             "# you only (mode 0600); other hosts get public.key.\n"
             "public-key = %s\n"
             "secret-key = %s\n",
             kp->public_z85, kp->secret_z85);
    rc = s_write(sec, text, true);
    explicit_bzero(text, sizeof text);
    if (rc) goto out_free;
    snprintf(text, sizeof text, "%s\n", kp->public_z85);
    rc = s_write(pub, text, false);
out_free:
    free(sec);
    free(pub);
    return rc;
}

typedef struct {
    const char *path;
    pr_keypair_t *kp;
    bool have_pub, have_sec;
} s_secret_parse_t;

static int s_secret_line(void *user, const char *line, size_t len, int lineno)
{
    s_secret_parse_t *p = user;
    if (len == 0 || line[0] == '#') return 0;
    const char *eq = memchr(line, '=', len);
    size_t llen = eq ? (size_t)(eq - line) : 0;
    while (llen && s_blank(line[llen - 1])) llen--;
    const char *v = eq ? eq + 1 : NULL;
    while (v && v < line + len && s_blank(*v)) v++;
    size_t vlen = v ? (size_t)(line + len - v) : 0;
    char *dst = NULL;
    bool *seen = NULL;
    if (llen == 10 && !memcmp(line, "public-key", 10)) {
        dst = p->kp->public_z85;
        seen = &p->have_pub;
    } else if (llen == 10 && !memcmp(line, "secret-key", 10)) {
        dst = p->kp->secret_z85;
        seen = &p->have_sec;
    }
    uint8_t bin[32];
    if (!dst || !s_decode(v, vlen, bin)) {
        BT_ERROR("%s:%d: expected 'public-key = KEY' or 'secret-key = KEY' with a 40-character Z85 key", p->path,
                 lineno);
        return BT_EFORMAT;
    }
    if (*seen) {
        BT_ERROR("%s:%d: a second %.10s line", p->path, lineno, line);
        return BT_EFORMAT;
    }
    memcpy(dst, v, 40);
    dst[40] = '\0';
    *seen = true;
    return 0;
}

int pr_keys_load(const char *dir, pr_keypair_t *kp)
{
    memset(kp, 0, sizeof *kp);
    char *path = s_join(dir, PR_SECRET_KEY_FILE);
    if (!path) return BT_ENOMEM;
    int rc;
    struct stat st;
    if (stat(path, &st) != 0) {
        BT_ERROR("%s: %s (`booth keygen --out %s` makes one)", path, strerror(errno), dir);
        rc = errno == ENOENT ? BT_ENOTFOUND : BT_EIO;
        goto out_free;
    }
    if (st.st_mode & 077) {
        BT_ERROR("%s: others may read it (mode %04o); a secret key must be private: chmod 600 %s", path,
                 (unsigned)(st.st_mode & 07777), path);
        rc = BT_EINVAL;
        goto out_free;
    }
    s_secret_parse_t p = {path, kp, false, false};
    if ((rc = s_each_line(path, s_secret_line, &p))) goto out_wipe;
    if (!p.have_pub || !p.have_sec) {
        BT_ERROR("%s: no %s line", path, p.have_pub ? "secret-key" : "public-key");
        rc = BT_EFORMAT;
        goto out_wipe;
    }
    char derived[41];
    if (zmq_curve_public(derived, kp->secret_z85) != 0 || strcmp(derived, kp->public_z85) != 0) {
        BT_ERROR("%s: the public-key line does not belong to the secret key", path);
        rc = BT_EFORMAT;
        goto out_wipe;
    }
    rc = BT_OK;
    goto out_free;
out_wipe:
    memset(kp, 0, sizeof *kp);
out_free:
    free(path);
    return rc;
}

typedef struct {
    const char *path;
    char *out;
    bool found;
} s_pub_parse_t;

static int s_pub_line(void *user, const char *line, size_t len, int lineno)
{
    s_pub_parse_t *p = user;
    uint8_t bin[32];
    int kind = s_key_line(line, len, bin);
    if (kind == 0) return 0;
    if (kind < 0 || p->found) {
        BT_ERROR("%s:%d: %s", p->path, lineno,
                 kind < 0 ? "not a Z85 CURVE public key (40 characters)" : "a second key; expected one");
        return BT_EFORMAT;
    }
    memcpy(p->out, line, 40);
    p->out[40] = '\0';
    p->found = true;
    return 0;
}

int pr_public_key_load(const char *path, char z85[41])
{
    s_pub_parse_t p = {path, z85, false};
    z85[0] = '\0';
    int rc = s_each_line(path, s_pub_line, &p);
    if (rc == 0 && !p.found) {
        BT_ERROR("%s: no public key in it", path);
        rc = BT_EFORMAT;
    }
    if (rc) z85[0] = '\0';
    return rc;
}

/* ---- allow-list --------------------------------------------------------------- */

void pr_allowlist_init(pr_allowlist_t *a) { memset(a, 0, sizeof *a); }

void pr_allowlist_free(pr_allowlist_t *a)
{
    free(a->keys);
    memset(a, 0, sizeof *a);
}

static int s_push(pr_allowlist_t *a, const uint8_t key[32])
{
    if (a->n == a->cap) {
        size_t cap = a->cap ? 2 * a->cap : 16;
        void *k = bt_realloc(a->keys, cap * sizeof *a->keys);
        if (!k) {
            BT_ERROR("out of memory for %zu keys", cap);
            return BT_ENOMEM;
        }
        a->keys = k;
        a->cap = cap;
    }
    memcpy(a->keys[a->n++], key, 32);
    return BT_OK;
}

bool pr_allowlist_has(const pr_allowlist_t *a, const uint8_t key[32])
{
    for (size_t i = 0; i < a->n; i++)
        if (!memcmp(a->keys[i], key, 32)) return true;
    return false;
}

int pr_allowlist_add(pr_allowlist_t *a, const char *z85)
{
    uint8_t bin[32];
    if (!z85 || !s_decode(z85, strlen(z85), bin)) {
        BT_ERROR("'%.60s': not a Z85 CURVE public key (40 characters)", z85 ? z85 : "");
        return BT_EINVAL;
    }
    return pr_allowlist_has(a, bin) ? BT_OK : s_push(a, bin);
}

typedef struct {
    const char *path;
    pr_allowlist_t *list;
} s_allow_parse_t;

static int s_allow_line(void *user, const char *line, size_t len, int lineno)
{
    s_allow_parse_t *p = user;
    uint8_t bin[32];
    int kind = s_key_line(line, len, bin);
    if (kind < 0) {
        BT_ERROR("%s:%d: not a Z85 CURVE public key (40 characters, then nothing or a # comment)", p->path, lineno);
        return BT_EFORMAT;
    }
    return kind && !pr_allowlist_has(p->list, bin) ? s_push(p->list, bin) : 0;
}

int pr_allowlist_load(pr_allowlist_t *a, const char *path)
{
    /* into a copy, so a malformed file leaves a as it was */
    pr_allowlist_t tmp;
    pr_allowlist_init(&tmp);
    int rc = BT_OK;
    for (size_t i = 0; rc == 0 && i < a->n; i++) rc = s_push(&tmp, a->keys[i]);
    s_allow_parse_t p = {path, &tmp};
    if (rc == 0) rc = s_each_line(path, s_allow_line, &p);
    if (rc) {
        pr_allowlist_free(&tmp);
        return rc;
    }
    pr_allowlist_free(a);
    *a = tmp;
    return BT_OK;
}

/* ---- ZAP handler -------------------------------------------------------------- */

struct pr_zap {
    void *ctx;
    void *sock;             /* REP bound to inproc://zeromq.zap.01 */
    pr_allowlist_t allow;   /* a copy: the caller's list may go away */
    pr_allowlist_t logged;  /* refused keys already logged once */
    bool logged_full;       /* S_REFUSED_LOGGED_MAX keys logged; said that no more will be */
    uint64_t refusals;
};

pr_zap_t *pr_zap_new(void *zmq_ctx, const pr_allowlist_t *allow)
{
    char ebuf[96];
    pr_zap_t *z = bt_calloc(1, sizeof *z);
    if (!z) {
        BT_ERROR("%s: out of memory", S_ZAP_ENDPOINT);
        return NULL;
    }
    z->ctx = zmq_ctx;
    for (size_t i = 0; allow && i < allow->n; i++)
        if (s_push(&z->allow, allow->keys[i])) goto out_destroy;
    if (!(z->sock = zmq_socket(zmq_ctx, ZMQ_REP))) {
        BT_ERROR("%s: cannot create the ZAP socket: %s", S_ZAP_ENDPOINT, s_zerr(zmq_errno(), ebuf, sizeof ebuf));
        goto out_destroy;
    }
    int linger = 0;
    zmq_setsockopt(z->sock, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_bind(z->sock, S_ZAP_ENDPOINT) != 0) {
        int e = zmq_errno();
        BT_ERROR("%s: %s%s", S_ZAP_ENDPOINT, s_zerr(e, ebuf, sizeof ebuf),
                 e == EADDRINUSE ? " (one ZAP handler per ZeroMQ context)" : "");
        goto out_destroy;
    }
    return z;
out_destroy:
    pr_zap_destroy(&z);
    return NULL;
}

void *pr_zap_socket(const pr_zap_t *z) { return z->sock; }
void *pr_zap_context(const pr_zap_t *z) { return z->ctx; }
uint64_t pr_zap_refusals(const pr_zap_t *z) { return z->refusals; }

void pr_zap_destroy(pr_zap_t **zp)
{
    pr_zap_t *z = *zp;
    if (!z) return;
    if (z->sock) zmq_close(z->sock);
    pr_allowlist_free(&z->allow);
    pr_allowlist_free(&z->logged);
    free(z);
    *zp = NULL;
}

static bool s_frame_is(zmq_msg_t *f, const char *s)
{
    return zmq_msg_size(f) == strlen(s) && !memcmp(zmq_msg_data(f), s, strlen(s));
}

/* The first refusal of each key gets a line; after S_REFUSED_LOGGED_MAX distinct keys,
 * one line says that no more will (a scan of keys must not flood the log). */
static void s_log_refusal(pr_zap_t *z, const uint8_t key[32], zmq_msg_t *addr_frame)
{
    if (pr_allowlist_has(&z->logged, key)) return;
    if (z->logged.n >= S_REFUSED_LOGGED_MAX || s_push(&z->logged, key) != 0) {
        if (!z->logged_full) BT_WARN("refused %d different CURVE keys; not logging more", S_REFUSED_LOGGED_MAX);
        z->logged_full = true;
        return;
    }
    char z85[41], addr[64];
    zmq_z85_encode(z85, key, 32);
    size_t n = zmq_msg_size(addr_frame) < sizeof addr ? zmq_msg_size(addr_frame) : sizeof addr - 1;
    const char *src = zmq_msg_data(addr_frame);
    for (size_t i = 0; i < n; i++) addr[i] = (src[i] > ' ' && src[i] < 0x7f) ? src[i] : '?';
    addr[n] = '\0';
    BT_WARN("refused CURVE key %s from %s (not in the allow-list)", z85, n ? addr : "?");
}

int pr_zap_handle(pr_zap_t *z)
{
    /* request: version, request id, domain, address, routing id, mechanism, credentials */
    enum { VERSION, REQUEST_ID, DOMAIN, ADDRESS, IDENTITY, MECHANISM, CREDENTIAL, NPARTS };
    zmq_msg_t part[NPARTS];
    int np = 0;
    bool more = true, extra = false;
    for (int i = 0; i < NPARTS; i++) zmq_msg_init(&part[i]);
    int rc = zmq_msg_recv(&part[0], z->sock, ZMQ_DONTWAIT);
    if (rc < 0) {
        int e = zmq_errno();
        for (int i = 0; i < NPARTS; i++) zmq_msg_close(&part[i]);
        if (e == EAGAIN || e == EINTR) return BT_EAGAIN;
        char ebuf[96];
        BT_ERROR("%s: cannot receive: %s", S_ZAP_ENDPOINT, s_zerr(e, ebuf, sizeof ebuf));
        return BT_EIO;
    }
    np = 1;
    more = zmq_msg_more(&part[0]);
    while (more) { /* the rest is queued: libzmq delivers a multipart message whole */
        zmq_msg_t spare, *f = np < NPARTS ? &part[np] : &spare;
        if (f == &spare) zmq_msg_init(&spare);
        if (zmq_msg_recv(f, z->sock, 0) < 0) {
            if (zmq_errno() == EINTR) continue;
            if (f == &spare) zmq_msg_close(&spare);
            break;
        }
        more = zmq_msg_more(f);
        if (f == &spare) {
            zmq_msg_close(&spare);
            extra = true;
        } else {
            np++;
        }
    }

    const char *status = "400", *text = "not authorized";
    char user_id[41] = "";
    if (np < NPARTS || extra || !s_frame_is(&part[VERSION], "1.0") || zmq_msg_size(&part[CREDENTIAL]) != 32) {
        /* libzmq itself sends these; a malformed one means a ZAP client we do not know */
        status = "500";
        text = "malformed ZAP request";
        BT_WARN("%s: malformed ZAP request (%d parts); refused", S_ZAP_ENDPOINT, np);
    } else if (!s_frame_is(&part[MECHANISM], "CURVE")) {
        text = "booth accepts CURVE clients only";
        z->refusals++;
    } else {
        const uint8_t *key = zmq_msg_data(&part[CREDENTIAL]);
        if (pr_allowlist_has(&z->allow, key)) {
            status = "200";
            text = "OK";
            zmq_z85_encode(user_id, key, 32);
        } else {
            z->refusals++;
            s_log_refusal(z, key, &part[ADDRESS]);
        }
    }

    /* reply: version, request id, status code, status text, user id, metadata */
    zmq_msg_t *rid = np > REQUEST_ID ? &part[REQUEST_ID] : NULL;
    rc = BT_OK;
    if (zmq_send(z->sock, "1.0", 3, ZMQ_SNDMORE) < 0 ||
        zmq_send(z->sock, rid ? zmq_msg_data(rid) : "", rid ? zmq_msg_size(rid) : 0, ZMQ_SNDMORE) < 0 ||
        zmq_send(z->sock, status, 3, ZMQ_SNDMORE) < 0 || zmq_send(z->sock, text, strlen(text), ZMQ_SNDMORE) < 0 ||
        zmq_send(z->sock, user_id, strlen(user_id), ZMQ_SNDMORE) < 0 || zmq_send(z->sock, "", 0, 0) < 0) {
        char ebuf[96];
        BT_ERROR("%s: cannot answer: %s", S_ZAP_ENDPOINT, s_zerr(zmq_errno(), ebuf, sizeof ebuf));
        rc = BT_EIO;
    }
    for (int i = 0; i < NPARTS; i++) zmq_msg_close(&part[i]);
    return rc;
}
