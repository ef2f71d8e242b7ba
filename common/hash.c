/* hash.c — XXH64 from its specification: four 64-bit lanes over 32-byte stripes,
 * a merge, the tail in 8/4/1-byte steps and a final avalanche. */
#include "common/hash.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/status.h"

#define P1 0x9E3779B185EBCA87ull
#define P2 0xC2B2AE3D27D4EB4Full
#define P3 0x165667B19E3779F9ull
#define P4 0x85EBCA77C2B2AE63ull
#define P5 0x27D4EB2F165667C5ull

static inline uint64_t s_rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

/* Little-endian loads (one unaligned load on little-endian hosts). */
static inline uint64_t s_le64(const uint8_t *p)
{
    uint64_t x;
    memcpy(&x, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    x = __builtin_bswap64(x);
#endif
    return x;
}

static inline uint32_t s_le32(const uint8_t *p)
{
    uint32_t x;
    memcpy(&x, p, 4);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    x = __builtin_bswap32(x);
#endif
    return x;
}

static inline uint64_t s_round(uint64_t acc, uint64_t in) { return s_rotl(acc + in * P2, 31) * P1; }

static inline uint64_t s_merge(uint64_t acc, uint64_t lane) { return (acc ^ s_round(0, lane)) * P1 + P4; }

void bt_xxh64_init(bt_xxh64_t *h, uint64_t seed)
{
    memset(h, 0, sizeof *h);
    h->v[0] = seed + P1 + P2;
    h->v[1] = seed + P2;
    h->v[2] = seed;
    h->v[3] = seed - P1;
}

static void s_stripe(uint64_t v[4], const uint8_t *p)
{
    for (int i = 0; i < 4; i++) v[i] = s_round(v[i], s_le64(p + 8 * i));
}

void bt_xxh64_update(bt_xxh64_t *h, const void *data, size_t len)
{
    const uint8_t *p = data;
    h->total += len;
    if (h->nbuf) {
        size_t take = 32 - h->nbuf < len ? 32 - h->nbuf : len;
        memcpy(h->buf + h->nbuf, p, take);
        h->nbuf += (unsigned)take;
        p += take;
        len -= take;
        if (h->nbuf < 32) return;
        s_stripe(h->v, h->buf);
        h->nbuf = 0;
    }
    uint64_t v0 = h->v[0], v1 = h->v[1], v2 = h->v[2], v3 = h->v[3];
    for (; len >= 32; p += 32, len -= 32) {
        v0 = s_round(v0, s_le64(p));
        v1 = s_round(v1, s_le64(p + 8));
        v2 = s_round(v2, s_le64(p + 16));
        v3 = s_round(v3, s_le64(p + 24));
    }
    h->v[0] = v0, h->v[1] = v1, h->v[2] = v2, h->v[3] = v3;
    memcpy(h->buf, p, len);
    h->nbuf = (unsigned)len;
}

uint64_t bt_xxh64_digest(const bt_xxh64_t *h)
{
    uint64_t x;
    if (h->total >= 32) {
        x = s_rotl(h->v[0], 1) + s_rotl(h->v[1], 7) + s_rotl(h->v[2], 12) + s_rotl(h->v[3], 18);
        for (int i = 0; i < 4; i++) x = s_merge(x, h->v[i]);
    } else {
        x = h->v[2] + P5; /* v[2] is the seed */
    }
    x += h->total;
    const uint8_t *p = h->buf;
    size_t n = h->nbuf;
    for (; n >= 8; p += 8, n -= 8) x = s_rotl(x ^ s_round(0, s_le64(p)), 27) * P1 + P4;
    if (n >= 4) {
        x = s_rotl(x ^ (uint64_t)s_le32(p) * P1, 23) * P2 + P3;
        p += 4;
        n -= 4;
    }
    for (; n; p++, n--) x = s_rotl(x ^ (uint64_t)*p * P5, 11) * P1;
    x ^= x >> 33;
    x *= P2;
    x ^= x >> 29;
    x *= P3;
    x ^= x >> 32;
    return x;
}

uint64_t bt_xxh64(const void *data, size_t len, uint64_t seed)
{
    bt_xxh64_t h;
    bt_xxh64_init(&h, seed);
    bt_xxh64_update(&h, data, len);
    return bt_xxh64_digest(&h);
}

void bt_hash_hex(uint64_t d, char out[BT_HASH_HEX]) { snprintf(out, BT_HASH_HEX, "%016llx", (unsigned long long)d); }

int bt_xxh64_file(const char *path, uint64_t *digest)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        BT_ERROR("%s: cannot open: %s", path, strerror(errno));
        return errno == ENOENT ? BT_ENOTFOUND : BT_EIO;
    }
    size_t cap = 1 << 20;
    uint8_t *buf = bt_malloc(cap);
    if (!buf) {
        fclose(f);
        return BT_ENOMEM;
    }
    bt_xxh64_t h;
    bt_xxh64_init(&h, 0);
    size_t n;
    while ((n = fread(buf, 1, cap, f)) > 0) bt_xxh64_update(&h, buf, n);
    int rc = BT_OK;
    if (ferror(f)) {
        BT_ERROR("%s: read failed: %s", path, strerror(errno));
        rc = BT_EIO;
    }
    free(buf);
    fclose(f);
    *digest = bt_xxh64_digest(&h);
    return rc;
}
