/*
 * keys.h — CURVE keys for booth's sockets: key files, the allow-list of client
 * keys, and the ZAP handler that enforces it.
 *
 * Every booth process has a keypair in a keys directory written by `booth keygen`:
 *
 *   DIR/secret.key       mode 0600: "public-key = Z85" and "secret-key = Z85" lines
 *   DIR/public.key       the Z85 public key, one line (what other hosts are given)
 *   DIR/authorized_keys  servers: the client public keys allowed in, one per line
 *
 * A server socket (coordinator, PS) encrypts with its secret key; a client (worker,
 * PS, `booth` client) must know the server's public key and is let in only if its
 * own public key is in the server's authorized_keys. libzmq asks a ZAP handler on
 * inproc://zeromq.zap.01 about each connecting key and, with no handler bound,
 * lets every key in: pr_zap_t is that handler, a REP socket that the process's
 * zmq_poll loop includes (pr_zap_socket) and answers with pr_zap_handle.
 */
#ifndef BOOTH_PROTO_KEYS_H
#define BOOTH_PROTO_KEYS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PR_SECRET_KEY_FILE "secret.key"
#define PR_PUBLIC_KEY_FILE "public.key"
#define PR_AUTHORIZED_KEYS_FILE "authorized_keys"
#define PR_ZAP_DOMAIN "booth"

/* Z85 text: 40 characters + NUL, as libzmq's ZMQ_CURVE_* options take them. */
typedef struct pr_keypair {
    char public_z85[41];
    char secret_z85[41];
} pr_keypair_t;

/* A fresh keypair (zmq_curve_keypair). BT_EUNSUPPORTED if libzmq lacks CURVE. */
int pr_keys_generate(pr_keypair_t *kp);
/* Writes DIR/secret.key (0600, crash-safe) and DIR/public.key, creating DIR.
 * Without force, refuses (BT_EINVAL, one line naming the file) if either exists. */
int pr_keys_write(const char *dir, const pr_keypair_t *kp, bool force);
/* Reads DIR/secret.key. Refuses a file others can read (like ssh), a malformed one
 * (file:line), and a public key that does not belong to the secret key. */
int pr_keys_load(const char *dir, pr_keypair_t *kp);
/* Reads a public key file (DIR/public.key: one Z85 key, `#` comment lines allowed). */
int pr_public_key_load(const char *path, char z85[41]);
/* Whether s is a 40-character Z85 CURVE key. */
bool pr_key_z85_ok(const char *s);

/* Client keys allowed to connect, as 32-byte binary keys. */
typedef struct pr_allowlist {
    size_t n, cap;
    uint8_t (*keys)[32];
} pr_allowlist_t;

void pr_allowlist_init(pr_allowlist_t *a);
/* Appends the keys of an authorized_keys file: one Z85 key per line, optionally
 * followed by blanks and a `# comment`; blank lines and lines starting with `#` are
 * skipped (Z85 never starts a key with '#': its first character encodes at most 82
 * of 85). A malformed line fails the whole file (BT_EFORMAT, "FILE:LINE: ...") and
 * leaves a as it was. */
int pr_allowlist_load(pr_allowlist_t *a, const char *path);
/* Adds one Z85 key (BT_EINVAL, logged, if it is not one). */
int pr_allowlist_add(pr_allowlist_t *a, const char *z85);
bool pr_allowlist_has(const pr_allowlist_t *a, const uint8_t key[32]);
void pr_allowlist_free(pr_allowlist_t *a);

/* The ZAP handler of one ZeroMQ context. */
typedef struct pr_zap pr_zap_t;

/* Binds a REP socket to inproc://zeromq.zap.01 in ctx (one handler per context) and
 * keeps a copy of allow. Create it before any CURVE server socket of ctx. NULL with
 * one error line. */
pr_zap_t *pr_zap_new(void *zmq_ctx, const pr_allowlist_t *allow);
/* The socket to include in zmq_poll with ZMQ_POLLIN. */
void *pr_zap_socket(const pr_zap_t *z);
/* The ZeroMQ context it serves (a CURVE server socket must be of the same one). */
void *pr_zap_context(const pr_zap_t *z);
/* Answers one queued ZAP request without waiting: 200 for a CURVE key on the list,
 * 400 for any other; the first refusal of each key is logged ("refused CURVE key
 * Z85 from ADDRESS"). Returns 0 when it answered one, BT_EAGAIN when none was
 * queued, BT_EIO if the socket failed (logged). Call it until BT_EAGAIN whenever
 * zmq_poll reports ZMQ_POLLIN on pr_zap_socket(). */
int pr_zap_handle(pr_zap_t *z);
/* Requests refused so far (every one, not only the logged ones). */
uint64_t pr_zap_refusals(const pr_zap_t *z);
/* Closes the socket and frees; *z = NULL. Safe twice. */
void pr_zap_destroy(pr_zap_t **z);

#endif
