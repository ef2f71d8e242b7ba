/*
 * fuzz.h — booth's fuzz harnesses: one FUZZ_TARGET per decoder or message handler.
 *
 * A harness is one function of (data, size). Built by `make fuzz` (clang,
 * -fsanitize=fuzzer,address,undefined, -DBOOTH_LIBFUZZER) it is libFuzzer's
 * LLVMFuzzerTestOneInput; built into the test runner (every other build) it is a
 * test, fuzz_NAME, that replays the committed corpus tests/fuzz/corpus/NAME/ and
 * the regression inputs tests/fuzz/regress/NAME/ (every crash the fuzzer ever
 * found), so `make test` and `make asan` run them as ordinary tests.
 *
 * Harnesses check more than "no crash": fz_failed(rc) aborts when a decoder
 * returned an error without a log line (every failure says what failed), and a
 * harness aborts when a decoder accepted something that breaks the invariant
 * it promises (a tensor outside its file, an image bigger than the limits).
 */
#ifndef BOOTH_TESTS_FUZZ_H
#define BOOTH_TESTS_FUZZ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef int (*fz_fn)(const uint8_t *data, size_t size);

#ifdef BOOTH_LIBFUZZER
#define FUZZ_TARGET(name)                                                                                      \
    static int fuzz_##name(const uint8_t *data, size_t size);                                                  \
    int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)                                               \
    {                                                                                                          \
        fz_begin(#name);                                                                                       \
        return fuzz_##name(data, size);                                                                        \
    }                                                                                                          \
    static int fuzz_##name(const uint8_t *data, size_t size)
#else
void fz_register(const char *name, const char *file, fz_fn fn);
#define FUZZ_TARGET(name)                                                                                      \
    static int fuzz_##name(const uint8_t *data, size_t size);                                                  \
    __attribute__((constructor)) static void s_register_fuzz_##name(void)                                      \
    {                                                                                                          \
        fz_register(#name, __FILE__, fuzz_##name);                                                             \
    }                                                                                                          \
    static int fuzz_##name(const uint8_t *data, size_t size)
#endif

/* Once per input: logging goes to a counter (and, under BOOTH_FUZZ_VERBOSE=1,
 * to stderr) instead of the terminal. */
void fz_begin(const char *name);
/* Aborts with a message naming the harness: the invariant `what` does not hold. */
void fz_bug(const char *what, ...) __attribute__((noreturn, format(printf, 1, 2)));
/* rc != 0 must have logged at least one error or warning since fz_begin/the last call. */
void fz_failed(int rc, const char *call);
/* Error/warning lines logged since fz_begin. */
int fz_logged(void);
/* Messages the wire layer has dropped as malformed so far ("...: dropped ...", proto/wire.c), in
 * every thread: a harness waiting on a daemon knows its input will get no answer. */
int fz_dropped(void);

/* The bytes as a file: a path that reads them (a memfd: no disk, no cleanup). The
 * path stays valid until the next fz_file call with the same slot (0..3). */
const char *fz_file(int slot, const void *data, size_t size);
/* A scratch folder for this process (made once, under $TMPDIR or /tmp). */
const char *fz_dir(void);
/* Writes data to DIR/NAME (fz_dir()'s folder); returns the path (static per name slot). */
const char *fz_write(const char *name, const void *data, size_t size);
/* tests/fixtures/NAME (BOOTH_FIXTURES overrides the folder). */
const char *fz_fixture(const char *name);

/* Reading the input as a stream of fields: the harnesses that need several
 * pieces (a selector byte, then a file; frames of a message) take them from here. */
typedef struct fz_in {
    const uint8_t *p;
    size_t n;
} fz_in_t;
uint8_t fz_u8(fz_in_t *in);
uint32_t fz_u32(fz_in_t *in);
/* The next piece: a 2-byte little-endian length then that many bytes (the rest if fewer). */
const uint8_t *fz_piece(fz_in_t *in, size_t *len);

#endif

/* ---- the message handlers' harnesses: a daemon in a thread, the harness as its peers ---- */

#include <zmq.h>

#include "proto/wire.h"

/* A ROUTER bound on 127.0.0.1, any port (plain TCP); its endpoint into ep. */
void *fz_router(void *ctx, char *ep, size_t cap);
/* A DEALER connected to ep (plain TCP), receive timeout 1 s (fz_wait loops). */
void *fz_dealer(void *ctx, const char *ep);
/* A free TCP port on 127.0.0.1 (bound and released: the daemon binds it next). */
int fz_free_port(void);
/* Sends the rest of the input as one message: pieces (fz_piece) as frames, the first
 * the envelope, at most 64; after the routing id rid when sock is a ROUTER (rid
 * non-NULL). *env receives the first frame unpacked (NULL if it does not decode:
 * the daemon must drop it all the same); free with booth__envelope__free_unpacked. */
void fz_send_input(void *sock, const zmq_msg_t *rid, fz_in_t *in, Booth__Envelope **env);
/* Receives on sock until done(m, user) says true, giving every other message to
 * other(m, user) (may be NULL); fz_bug when timeout_ms passes first (the daemon
 * stopped answering: a hang or a crash in its thread). */
typedef bool (*fz_msg_fn)(pr_msg_t *m, void *user);
void fz_wait(void *sock, bool router, fz_msg_fn done, fz_msg_fn other, void *user, int timeout_ms,
             const char *what);
