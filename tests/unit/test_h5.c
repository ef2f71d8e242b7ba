/*
 * test_h5.c — the HDF5 layer: write -> read round trips of every element type,
 * strings and attributes; the same content gives the same bytes; truncated,
 * foreign and corrupted files are one error line, never a crash; a writer
 * killed in the middle of a file leaves the previous file loadable; XXH64
 * against published values.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/hash.h"
#include "common/log.h"
#include "common/status.h"
#include "storage/h5.h"
#include "testutil.h"

static char *s_slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    *len = (size_t)n;
    return b;
}

static void s_spit(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f) return;
    fwrite(data, 1, len, f);
    fclose(f);
}

/* A small file with one of everything. */
static int s_write_sample(const char *path, float bias)
{
    st_h5_file_t *f = st_h5_create(path);
    if (!f) return BT_EIO;
    float w[6 * 5];
    uint8_t img[3 * 4 * 4 * 3];
    int64_t idx[3] = {7, 8, 9};
    uint64_t seeds[3] = {1, UINT64_MAX, 3};
    double hist[4] = {0.5, 0.25, 0.125, 1e-300};
    for (int i = 0; i < 30; i++) w[i] = (float)i * 0.5f + bias;
    for (int i = 0; i < (int)sizeof img; i++) img[i] = (uint8_t)(i * 7);
    const char *prompts[3] = {"a photo of dog", "ünïcode ✓", NULL};
    int rc = st_h5_group(f, "lora", true);
    if (!rc) rc = st_h5_group(f, "prior/sub", false);
    if (!rc) rc = st_h5_write(f, "lora/zeta.lora_A.weight", ST_H5_F32, 2, (int64_t[]){6, 5}, w, NULL);
    if (!rc) rc = st_h5_write(f, "lora/alpha.lora_B.weight", ST_H5_F32, 2, (int64_t[]){5, 6}, w, NULL);
    if (!rc)
        rc = st_h5_create_dataset(f, "prior/images", ST_H5_U8, 4, (int64_t[]){3, 4, 4, 3},
                                  &(st_h5_opts_t){.deflate = 4});
    for (int i = 0; i < 3 && !rc; i++) rc = st_h5_write_rows(f, "prior/images", i, 1, img + i * 48);
    if (!rc) rc = st_h5_write(f, "prior/index", ST_H5_I64, 1, (int64_t[]){3}, idx, NULL);
    if (!rc) rc = st_h5_write(f, "prior/seed", ST_H5_U64, 1, (int64_t[]){3}, seeds, NULL);
    if (!rc) rc = st_h5_write(f, "prior/sub/hist", ST_H5_F64, 1, (int64_t[]){4}, hist, NULL);
    if (!rc) rc = st_h5_write(f, "prior/empty", ST_H5_F32, 2, (int64_t[]){0, 4}, NULL, NULL);
    if (!rc) rc = st_h5_write_strings(f, "prior/prompt", 3, prompts);
    if (!rc) rc = st_h5_attr_set_str(f, "/", "job", "{\"seed\": 1}");
    if (!rc) rc = st_h5_attr_set_i64(f, "/", "step", -42);
    if (!rc) rc = st_h5_attr_set_u64(f, "", "seed", UINT64_MAX);
    if (!rc) rc = st_h5_attr_set_f64(f, "lora", "alpha", 0.1);
    if (!rc) rc = st_h5_attr_set_str(f, "lora/zeta.lora_A.weight", "note", "");
    if (rc) {
        st_h5_abort(&f);
        return rc;
    }
    return st_h5_commit(&f);
}

TEST(h5_round_trip)
{
    char path[512];
    snprintf(path, sizeof path, "%s/a.h5", tu_tmpdir());
    REQUIRE(s_write_sample(path, 0) == 0);
    st_h5_file_t *f = st_h5_open(path);
    REQUIRE(f);
    /* creation order where asked for, names elsewhere */
    char **names;
    int n;
    REQUIRE(st_h5_list(f, "lora", &names, &n) == 0);
    CHECK(n == 2 && !strcmp(names[0], "zeta.lora_A.weight") && !strcmp(names[1], "alpha.lora_B.weight"));
    st_h5_free_names(names, n);
    REQUIRE(st_h5_list(f, "prior", &names, &n) == 0);
    CHECK(n == 6 && !strcmp(names[0], "empty") && !strcmp(names[5], "sub"));
    st_h5_free_names(names, n);
    CHECK(st_h5_is_group(f, "prior/sub") && !st_h5_is_group(f, "prior/index") && !st_h5_exists(f, "nope/x"));

    float w[30];
    REQUIRE(st_h5_read(f, "lora/zeta.lora_A.weight", ST_H5_F32, 2, (int64_t[]){6, 5}, w) == 0);
    for (int i = 0; i < 30; i++) CHECK(w[i] == (float)i * 0.5f);
    double wd[30]; /* float -> double conversion on read */
    REQUIRE(st_h5_read(f, "lora/alpha.lora_B.weight", ST_H5_F64, 2, (int64_t[]){-1, 6}, wd) == 0);
    CHECK(wd[29] == 14.5);
    uint8_t img[48];
    REQUIRE(st_h5_read_rows(f, "prior/images", ST_H5_U8, 2, 1, img) == 0);
    for (int i = 0; i < 48; i++) CHECK(img[i] == (uint8_t)((96 + i) * 7));
    uint64_t seeds[3];
    REQUIRE(st_h5_read(f, "prior/seed", ST_H5_U64, 1, (int64_t[]){3}, seeds) == 0);
    CHECK(seeds[1] == UINT64_MAX);
    int64_t idx[3];
    REQUIRE(st_h5_read(f, "prior/index", ST_H5_I64, 1, (int64_t[]){3}, idx) == 0);
    CHECK(idx[0] == 7 && idx[2] == 9);
    st_h5_info_t info;
    REQUIRE(st_h5_info(f, "prior/empty", &info) == 0);
    CHECK(info.ndim == 2 && info.shape[0] == 0 && info.shape[1] == 4 && info.dtype == ST_H5_F32);
    char **s;
    REQUIRE(st_h5_read_strings(f, "prior/prompt", 3, &s) == 0);
    CHECK(!strcmp(s[0], "a photo of dog") && !strcmp(s[1], "ünïcode ✓") && !strcmp(s[2], ""));
    st_h5_free_names(s, 3);

    char *job;
    int64_t step;
    uint64_t seed;
    double alpha;
    REQUIRE(st_h5_attr_str(f, "/", "job", &job) == 0);
    CHECK(!strcmp(job, "{\"seed\": 1}"));
    free(job);
    CHECK(st_h5_attr_i64(f, "/", "step", &step) == 0 && step == -42);
    CHECK(st_h5_attr_u64(f, "/", "seed", &seed) == 0 && seed == UINT64_MAX);
    CHECK(st_h5_attr_f64(f, "lora", "alpha", &alpha) == 0 && alpha == 0.1);
    CHECK(st_h5_attr_list(f, "/", &names, &n) == 0 && n == 3);
    st_h5_free_names(names, n);

    /* wrong expectations are errors, not crashes */
    bt_log_set_level(BT_LOG_ERROR);
    CHECK(st_h5_read(f, "lora/zeta.lora_A.weight", ST_H5_F32, 2, (int64_t[]){5, 6}, w) == BT_ESHAPE);
    CHECK(strstr(bt_log_last_error(), "[6, 5], expected [5, 6]"));
    CHECK(st_h5_read(f, "prior/prompt", ST_H5_F32, 1, (int64_t[]){3}, w) == BT_EFORMAT);
    CHECK(st_h5_read(f, "lora/missing", ST_H5_F32, 1, (int64_t[]){3}, w) == BT_ENOTFOUND);
    CHECK(strstr(bt_log_last_error(), "no dataset 'lora/missing'"));
    CHECK(st_h5_read_rows(f, "prior/images", ST_H5_U8, 3, 1, img) == BT_ESHAPE);
    CHECK(st_h5_attr_i64(f, "/", "job", &step) == BT_EFORMAT);
    CHECK(st_h5_attr_str(f, "/", "nothing", &job) == BT_ENOTFOUND);
    CHECK(st_h5_read_strings(f, "prior/prompt", 4, &s) == BT_EFORMAT);
    st_h5_close(&f);
    st_h5_close(&f); /* safe twice */
}

/* The same content gives the same bytes (no timestamps), different content does not. */
TEST(h5_is_deterministic)
{
    char a[512], b[512], c[512];
    snprintf(a, sizeof a, "%s/a.h5", tu_tmpdir());
    snprintf(b, sizeof b, "%s/b.h5", tu_tmpdir());
    snprintf(c, sizeof c, "%s/c.h5", tu_tmpdir());
    REQUIRE(s_write_sample(a, 0) == 0);
    sleep(1);
    REQUIRE(s_write_sample(b, 0) == 0);
    REQUIRE(s_write_sample(c, 1) == 0);
    size_t la, lb, lc;
    char *da = s_slurp(a, &la), *db = s_slurp(b, &lb), *dc = s_slurp(c, &lc);
    REQUIRE(da && db && dc);
    CHECK(la == lb && !memcmp(da, db, la));
    CHECK(la != lc || memcmp(da, dc, la));
    free(da);
    free(db);
    free(dc);
}

TEST(h5_bad_files_are_one_line)
{
    char path[512], bad[512];
    snprintf(path, sizeof path, "%s/a.h5", tu_tmpdir());
    REQUIRE(s_write_sample(path, 0) == 0);
    size_t len;
    char *data = s_slurp(path, &len);
    REQUIRE(data && len > 2000);
    bt_log_set_level(BT_LOG_ERROR);

    snprintf(bad, sizeof bad, "%s/missing.h5", tu_tmpdir());
    CHECK(!st_h5_open(bad) && strstr(bt_log_last_error(), "No such file"));
    snprintf(bad, sizeof bad, "%s/empty.h5", tu_tmpdir());
    s_spit(bad, "", 0);
    CHECK(!st_h5_open(bad) && strstr(bt_log_last_error(), "empty file"));
    snprintf(bad, sizeof bad, "%s/foreign.h5", tu_tmpdir());
    s_spit(bad, "{\"this\": \"is json\"}\n", 20);
    CHECK(!st_h5_open(bad) && strstr(bt_log_last_error(), "not an HDF5 file"));
    size_t seal_text = strnlen(data, 512); /* "booth-hdf5-seal 1\nbytes N\nxxh64 H\n" */
    CHECK(!strncmp(data, "booth-hdf5-seal 1\nbytes ", 24) && seal_text > 40 && seal_text < 100);
    /* every truncation length: never opens, never crashes */
    snprintf(bad, sizeof bad, "%s/trunc.h5", tu_tmpdir());
    for (size_t cut = 1; cut < len; cut += cut < 64 ? 7 : len / 23) {
        s_spit(bad, data, cut);
        st_h5_file_t *f = st_h5_open(bad);
        CHECKF(!f, "a file cut to %zu of %zu bytes opened", cut, len);
        st_h5_close(&f);
        const char *e = bt_log_last_error();
        CHECKF(strstr(e, "trunc.h5") && !strchr(e, '\n'), "cut %zu: '%s'", cut, e);
        /* the seal's magic cut short: an unsealed file without an HDF5 signature; then the seal
         * unreadable; then the length it states */
        CHECKF(cut < 16          ? strstr(e, "not an HDF5") != NULL
               : cut < seal_text ? strstr(e, "seal (the first 512 bytes) cannot be read") != NULL
                          : strstr(e, "truncated: ") && strstr(e, "bytes booth wrote"),
               "cut %zu: %s", cut, e);
    }
    /* without the seal (another tool's file, or booth's before the seal), a cut file reaches
     * libhdf5, which refuses it */
    memset(data, 0, 512);
    for (size_t cut = 600; cut < len; cut += len / 23) {
        s_spit(bad, data, cut);
        st_h5_file_t *f = st_h5_open(bad);
        CHECKF(!f, "an unsealed file cut to %zu of %zu bytes opened", cut, len);
        st_h5_close(&f);
        const char *e = bt_log_last_error();
        CHECKF(strstr(e, "truncated, corrupt or unfinished") && !strchr(e, '\n'), "unsealed cut %zu: %s", cut, e);
    }
    s_spit(bad, data, len);
    st_h5_file_t *unsealed = st_h5_open(bad);
    CHECK(unsealed != NULL);
    st_h5_close(&unsealed);
    free(data);
    data = s_slurp(path, &len);
    REQUIRE(data);
    /* a flipped byte anywhere: open or read fails with one line, or the values
     * read are still right (the byte was in unused space); never a crash, never
     * a silently wrong number. Checksums cover the superblock, object headers,
     * chunk indexes and (Fletcher-32) every chunk of data. */
    snprintf(bad, sizeof bad, "%s/flip.h5", tu_tmpdir());
    for (int sealed = 1; sealed >= 0; sealed--) {
    if (!sealed) memset(data, 0, 512);
    int detected = 0, trials = 0;
    for (size_t pos = sealed ? 0 : 512; pos < len; pos += 1 + len / 500) {
        data[pos] ^= 0x5a;
        s_spit(bad, data, len);
        data[pos] ^= 0x5a;
        trials++;
        st_h5_file_t *f = st_h5_open(bad);
        if (!f) {
            detected++;
            continue;
        }
        float w[30];
        uint8_t img[144];
        uint64_t seeds[3];
        int rc = st_h5_read(f, "lora/zeta.lora_A.weight", ST_H5_F32, 2, (int64_t[]){6, 5}, w);
        if (rc == 0) rc = st_h5_read(f, "prior/images", ST_H5_U8, 4, (int64_t[]){3, 4, 4, 3}, img);
        if (rc == 0) rc = st_h5_read(f, "prior/seed", ST_H5_U64, 1, (int64_t[]){3}, seeds);
        if (rc) {
            detected++;
            CHECKF(!strchr(bt_log_last_error(), '\n'), "byte %zu: %s", pos, bt_log_last_error());
        } else {
            for (int i = 0; i < 30; i++) CHECKF(w[i] == (float)i * 0.5f, "byte %zu flipped: w[%d] = %g", pos, i, w[i]);
            for (int i = 0; i < 144; i++) CHECKF(img[i] == (uint8_t)(i * 7), "byte %zu flipped: img[%d]", pos, i);
            CHECK(seeds[0] == 1 && seeds[1] == UINT64_MAX && seeds[2] == 3);
        }
        st_h5_close(&f);
    }
    if (sealed) {
        /* the seal covers every byte */
        printf("sealed: flipped bytes detected: %d of %d\n", detected, trials);
        CHECK(detected == trials);
    } else {
        printf("unsealed: flipped bytes detected: %d of %d (the rest fell in unused space)\n", detected, trials);
        CHECK(detected > 0);
    }
    }
    free(data);
}

/* A writer killed in the middle of replacing a file leaves the old one. */
TEST(h5_killed_writer_keeps_old_file)
{
    char path[512];
    snprintf(path, sizeof path, "%s/ckpt.h5", tu_tmpdir());
    REQUIRE(s_write_sample(path, 0) == 0);
    size_t len0;
    char *before = s_slurp(path, &len0);
    REQUIRE(before);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        setenv("BOOTH_TEST_H5_STALL", "ckpt.h5:3", 1);
        freopen("/dev/null", "w", stderr);
        s_write_sample(path, 1); /* stalls at its third dataset */
        _exit(0);
    }
    REQUIRE(pid > 0);
    /* wait until the temporary file exists and has data in it */
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)pid);
    size_t tl = 0;
    for (int i = 0; i < 500 && tl < 1000; i++) {
        usleep(10000);
        char *t = s_slurp(tmp, &tl);
        if (!t) tl = 0;
        free(t);
    }
    CHECKF(tl >= 1000, "the stalled writer's temporary file has %zu bytes", tl);
    kill(pid, SIGKILL);
    int st;
    waitpid(pid, &st, 0);
    CHECK(WIFSIGNALED(st));
    size_t len1;
    char *after = s_slurp(path, &len1);
    REQUIRE(after);
    CHECK(len0 == len1 && !memcmp(before, after, len0));
    st_h5_file_t *f = st_h5_open(path);
    CHECK(f != NULL);
    st_h5_close(&f);
    /* the killed writer's temporary still says "open for writing": readers refuse it */
    bt_log_set_level(BT_LOG_ERROR);
    f = st_h5_open(tmp);
    CHECK(!f);
    printf("opening the killed writer's file: %s\n", bt_log_last_error());
    st_h5_close(&f);
    free(before);
    free(after);
}

TEST(hash_xxh64_known_values)
{
    char hex[BT_HASH_HEX];
    bt_hash_hex(bt_xxh64("", 0, 0), hex);
    CHECK(!strcmp(hex, "ef46db3751d8e999"));
    bt_hash_hex(bt_xxh64("abc", 3, 0), hex);
    CHECK(!strcmp(hex, "44bc2cf5ad770999"));
    /* streaming in uneven pieces equals one shot, at every length around the stripe size */
    uint8_t buf[300];
    for (int i = 0; i < 300; i++) buf[i] = (uint8_t)(i * 131 + 7);
    for (size_t n = 0; n < 300; n += 1 + n / 9) {
        bt_xxh64_t h;
        bt_xxh64_init(&h, 0);
        for (size_t o = 0, k = 1; o < n; k = k * 5 % 37 + 1) {
            size_t t = k < n - o ? k : n - o;
            bt_xxh64_update(&h, buf + o, t);
            o += t;
        }
        CHECKF(bt_xxh64_digest(&h) == bt_xxh64(buf, n, 0), "length %zu", n);
    }
}
