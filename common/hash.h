/*
 * hash.h — content hashes: XXH64 (seed 0), streaming and one-shot.
 *
 * XXH64 is the 64-bit hash of the xxHash family, written here from its
 * published specification. booth uses it where a file or a data set needs a
 * name for its contents — the base-model hash of a checkpoint, the hash of the
 * images a run trained on — because it is fast (about 4 GB/s here: SD 1.5's
 * folder in 1.3 s) and anyone can recompute it with Debian's `xxhsum -H1`.
 * It is not a cryptographic hash: it detects a different model, not a forged one.
 */
#ifndef BOOTH_COMMON_HASH_H
#define BOOTH_COMMON_HASH_H

#include <stddef.h>
#include <stdint.h>

typedef struct bt_xxh64 {
    uint64_t v[4];    /* the four lane accumulators */
    uint64_t total;   /* bytes consumed */
    uint8_t buf[32];  /* a partial 32-byte stripe */
    unsigned nbuf;
} bt_xxh64_t;

void bt_xxh64_init(bt_xxh64_t *h, uint64_t seed);
void bt_xxh64_update(bt_xxh64_t *h, const void *data, size_t len);
uint64_t bt_xxh64_digest(const bt_xxh64_t *h);
uint64_t bt_xxh64(const void *data, size_t len, uint64_t seed);

/* The 16 lowercase hex digits xxhsum prints for a digest, NUL-terminated. */
#define BT_HASH_HEX 17
void bt_hash_hex(uint64_t digest, char out[BT_HASH_HEX]);

/* XXH64 of a whole file, read in blocks. BT_ENOTFOUND / BT_EIO with one log line. */
int bt_xxh64_file(const char *path, uint64_t *digest);

#endif
