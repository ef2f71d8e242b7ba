/*
 * test_json.c — the JSON field reader behind the configs and tokenizer files:
 * absent and null keys give the defaults, wrong types and out-of-range values
 * fail with one line naming the file and the key and leave the output alone,
 * and malformed JSON names the file.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "common/json.h"
#include "common/log.h"
#include "common/status.h"
#include "test.h"
#include "testutil.h"

#define NAME "dir/config.json"

static void s_quiet(bt_log_level_t level, const char *msg, void *user)
{
    (void)level, (void)msg, (void)user; /* the test reads bt_log_last_error() instead */
}

static bool s_parse(bt_json_t *j, const char *text)
{
    return bt_json_parse(j, text, strlen(text), NAME) == BT_OK;
}

/* The last error line names the file, the key and every one of the causes. */
#define CHECK_ERROR(key, ...)                                                                                          \
    do {                                                                                                               \
        const char *_msg = bt_log_last_error(), *_want[] = {NAME, "'" key "'", __VA_ARGS__};                           \
        for (size_t _i = 0; _i < sizeof _want / sizeof _want[0]; _i++)                                                 \
            CHECKF(strstr(_msg, _want[_i]) != NULL, "error line \"%s\" lacks \"%s\"", _msg, _want[_i]);                \
    } while (0)

TEST(json_defaults)
{
    bt_json_t j;
    REQUIRE(s_parse(&j, "{\"i\": null, \"f\": null, \"b\": null, \"s\": null, \"l\": null, \"e\": null}"));
    static const char *const keys[] = {"i", "missing"}; /* null, then absent */
    for (int k = 0; k < 2; k++) {
        const char *key = keys[k];
        int64_t i64 = 0;
        int i = 0;
        double d = 0;
        float f = 0;
        bool b = false;
        const char *s = NULL;
        int64_t list[3] = {0};
        bool blist[2] = {false, false};
        CHECK(bt_json_int64(&j, key, -7, -10, 10, &i64) == BT_OK && i64 == -7);
        CHECK(bt_json_int(&j, key, 5, 0, 9, &i) == BT_OK && i == 5);
        CHECK(bt_json_double(&j, key, 0.25, 0, 1, &d) == BT_OK && d == 0.25);
        CHECK(bt_json_float(&j, key, 1.5f, -INFINITY, INFINITY, &f) == BT_OK && f == 1.5f);
        CHECK(bt_json_bool(&j, key, true, &b) == BT_OK && b);
        CHECK(bt_json_string(&j, key, "dflt", &s) == BT_OK && s && !strcmp(s, "dflt"));
        CHECK(bt_json_int64_list(&j, key, 3, 4, 1, 9, list) == BT_OK && list[0] == 4 && list[1] == 4 && list[2] == 4);
        CHECK(bt_json_bool_list(&j, key, 2, true, blist) == BT_OK && blist[0] && blist[1]);
        static const char *const names[] = {"a", "b"};
        CHECK(bt_json_enum(&j, key, names, 2, 1, &i) == BT_OK && i == 1);
        CHECK(bt_json_get(&j, key) == NULL);
    }
    bt_json_free(&j);
    bt_json_free(&j); /* safe twice */

    /* keys listed in _use_default_values read as absent */
    REQUIRE(s_parse(&j, "{\"a\": 3, \"b\": \"wrong type\", \"_use_default_values\": [\"b\", 7]}"));
    REQUIRE(bt_json_use_defaults(&j, "_use_default_values") == BT_OK);
    int64_t v = 0;
    CHECK(bt_json_int64(&j, "a", 1, 0, 9, &v) == BT_OK && v == 3);
    CHECK(bt_json_int64(&j, "b", 1, 0, 9, &v) == BT_OK && v == 1);
    bt_json_free(&j);
    /* absent list: no effect */
    REQUIRE(s_parse(&j, "{\"a\": 3}"));
    CHECK(bt_json_use_defaults(&j, "_use_default_values") == BT_OK);
    bt_json_free(&j);
}

TEST(json_values)
{
    bt_json_t j;
    REQUIRE(s_parse(&j, "{\"big\": 9007199254740992, \"neg\": -3, \"x\": 0.1, \"t\": true, \"s\": \"text\","
                        " \"one\": 6, \"three\": [1, 2, 3], \"bt\": false, \"bl\": [true, false],"
                        " \"e\": \"beta\", \"whole\": 2.0}"));
    int64_t i64 = 0, list[3] = {0};
    int i = 0;
    double d = 0;
    float f = 0;
    bool b = false, bl[2] = {false, true};
    const char *s = NULL;
    CHECK(bt_json_int64(&j, "big", 0, 0, INT64_MAX, &i64) == BT_OK && i64 == 9007199254740992LL);
    CHECK(bt_json_int(&j, "neg", 0, -3, 3, &i) == BT_OK && i == -3);
    CHECK(bt_json_int(&j, "whole", 0, 0, 3, &i) == BT_OK && i == 2);
    CHECK(bt_json_double(&j, "x", 0, 0, 1, &d) == BT_OK && d == 0.1);
    CHECK(bt_json_float(&j, "x", 0, 0, 1, &f) == BT_OK && f == 0.1f);
    CHECK(bt_json_bool(&j, "t", false, &b) == BT_OK && b);
    CHECK(bt_json_string(&j, "s", NULL, &s) == BT_OK && s && !strcmp(s, "text"));
    CHECK(bt_json_int64_list(&j, "one", 3, 0, 1, 9, list) == BT_OK && list[0] == 6 && list[2] == 6);
    CHECK(bt_json_int64_list(&j, "three", 3, 0, 1, 9, list) == BT_OK && list[0] == 1 && list[1] == 2 && list[2] == 3);
    CHECK(bt_json_bool_list(&j, "bt", 2, true, bl) == BT_OK && !bl[0] && !bl[1]);
    CHECK(bt_json_bool_list(&j, "bl", 2, false, bl) == BT_OK && bl[0] && !bl[1]);
    static const char *const names[] = {"alpha", "beta", "gamma"};
    CHECK(bt_json_enum(&j, "e", names, 3, 0, &i) == BT_OK && i == 1);
    bt_json_free(&j);
}

TEST(json_type_errors)
{
    bt_log_set_sink(s_quiet, NULL);
    bt_json_t j;
    REQUIRE(s_parse(&j, "{\"str\": \"1\", \"num\": 1.5, \"arr\": [1], \"obj\": {}, \"t\": true, \"z\": null}"));
    int64_t i64 = 42, list[2] = {42, 42};
    int i = 42;
    double d = 42;
    bool b = true, bl[2] = {true, true};
    const char *s = "keep";

    CHECK(bt_json_int64(&j, "str", 0, 0, 9, &i64) == BT_EFORMAT && i64 == 42);
    CHECK_ERROR("str", "must be an integer", "not a string");
    CHECK(bt_json_int64(&j, "num", 0, 0, 9, &i64) == BT_EFORMAT && i64 == 42);
    CHECK_ERROR("num", "must be an integer", "1.5");
    CHECK(bt_json_int(&j, "t", 0, 0, 9, &i) == BT_EFORMAT && i == 42);
    CHECK_ERROR("t", "must be an integer", "not a boolean");
    CHECK(bt_json_double(&j, "arr", 0, 0, 9, &d) == BT_EFORMAT && d == 42);
    CHECK_ERROR("arr", "must be a number", "not an array");
    CHECK(bt_json_bool(&j, "num", false, &b) == BT_EFORMAT && b);
    CHECK_ERROR("num", "true or false", "not a number");
    CHECK(bt_json_string(&j, "obj", NULL, &s) == BT_EFORMAT && !strcmp(s, "keep"));
    CHECK_ERROR("obj", "must be a string", "not an object");
    CHECK(bt_json_int64_list(&j, "obj", 2, 0, 0, 9, list) == BT_EFORMAT && list[0] == 42);
    CHECK_ERROR("obj", "list of 2", "not an object");
    CHECK(bt_json_bool_list(&j, "str", 2, false, bl) == BT_EFORMAT && bl[0] && bl[1]);
    CHECK_ERROR("str", "list of 2", "not a string");
    static const char *const names[] = {"a", "b"};
    CHECK(bt_json_enum(&j, "num", names, 2, 0, &i) == BT_EFORMAT && i == 42);
    CHECK_ERROR("num", "must be a string", "not a number");
    CHECK(bt_json_use_defaults(&j, "num") == BT_EFORMAT);
    CHECK_ERROR("num", "array", "not a number");

    /* where null is not "absent", it is a value of the wrong type */
    j.null_is_absent = false;
    CHECK(bt_json_get(&j, "z") != NULL);
    CHECK(bt_json_int64(&j, "z", 0, 0, 9, &i64) == BT_EFORMAT && i64 == 42);
    CHECK_ERROR("z", "must be an integer", "not null");

    /* a caller's own check reads alike */
    bt_json_error(&j, "obj", "is not what booth expects");
    CHECK_ERROR("obj", "is not what booth expects");
    bt_json_free(&j);
    bt_log_set_sink(NULL, NULL);
}

TEST(json_range_errors)
{
    bt_log_set_sink(s_quiet, NULL);
    bt_json_t j;
    REQUIRE(s_parse(&j, "{\"zero\": 0, \"big\": 1e30, \"huge\": 9223372036854775808, \"neg\": -5, \"half\": 1.25,"
                        " \"l\": [3, 0, 3], \"short\": [3, 3], \"bl\": [true, 1], \"e\": \"delta\"}"));
    int64_t i64 = 42, list[3] = {42, 42, 42};
    int i = 42;
    double d = 42;
    float f = 42;
    bool bl[3] = {true, true, true};

    CHECK(bt_json_int64(&j, "zero", 1, 1, 100, &i64) == BT_EFORMAT && i64 == 42);
    CHECK_ERROR("zero", "is 0", "[1, 100]");
    CHECK(bt_json_int64(&j, "zero", 1, 1, INT64_MAX, &i64) == BT_EFORMAT);
    CHECK_ERROR("zero", "is 0", ">= 1");
    CHECK(bt_json_int64(&j, "neg", 0, INT64_MIN, -6, &i64) == BT_EFORMAT);
    CHECK_ERROR("neg", "is -5", "<= -6");
    CHECK(bt_json_int64(&j, "big", 0, INT64_MIN, INT64_MAX, &i64) == BT_EFORMAT && i64 == 42);
    CHECK_ERROR("big", "1e+30", "64 bits");
    CHECK(bt_json_int64(&j, "huge", 0, 0, INT64_MAX, &i64) == BT_EFORMAT && i64 == 42); /* 2^63 */
    CHECK_ERROR("huge", "9.22337203685478e+18");
    CHECK(bt_json_int(&j, "big", 0, 0, 9, &i) == BT_EFORMAT && i == 42);
    CHECK_ERROR("big", "[0, 9]");
    CHECK(bt_json_double(&j, "half", 0, 0, 1, &d) == BT_EFORMAT && d == 42);
    CHECK_ERROR("half", "is 1.25", "[0, 1]");
    CHECK(bt_json_double(&j, "neg", 0, 0, INFINITY, &d) == BT_EFORMAT);
    CHECK_ERROR("neg", "is -5", ">= 0");
    CHECK(bt_json_float(&j, "big", 0, -INFINITY, 1e20f, &f) == BT_EFORMAT && f == 42);
    CHECK_ERROR("big", "<= 1");

    /* lists: the element is named; nothing is written on failure */
    CHECK(bt_json_int64_list(&j, "l", 3, 0, 1, 9, list) == BT_EFORMAT && list[0] == 42 && list[2] == 42);
    CHECK_ERROR("l", "[1]", "is 0", "[1, 9]");
    CHECK(bt_json_int64_list(&j, "zero", 3, 0, 1, 9, list) == BT_EFORMAT && list[0] == 42);
    CHECK_ERROR("zero", "is 0");
    CHECK(bt_json_int64_list(&j, "short", 3, 0, 1, 9, list) == BT_EFORMAT && list[0] == 42);
    CHECK_ERROR("short", "has 2 values", "list of 3");
    CHECK(bt_json_bool_list(&j, "bl", 2, false, bl) == BT_EFORMAT && bl[0] && bl[1]);
    CHECK_ERROR("bl", "[1]", "not a number");

    static const char *const names[] = {"alpha", "beta", "gamma"};
    CHECK(bt_json_enum(&j, "e", names, 3, 0, &i) == BT_EFORMAT && i == 42);
    CHECK_ERROR("e", "\"delta\"", "alpha, beta, gamma");
    bt_json_free(&j);
    bt_log_set_sink(NULL, NULL);
}

TEST(json_malformed)
{
    bt_log_set_sink(s_quiet, NULL);
    bt_json_t j;
    static const char *const bad[] = {"", "not json", "{\"a\": 1,", "{\"a\": }"};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        CHECKF(bt_json_parse(&j, bad[k], strlen(bad[k]), NAME) == BT_EFORMAT, "'%s' should not parse", bad[k]);
        CHECK(j.root == NULL && j.name == NULL);
        CHECKF(strstr(bt_log_last_error(), NAME ": not valid JSON (error at byte") != NULL, "'%s': %s", bad[k],
               bt_log_last_error());
        bt_json_free(&j); /* safe after a failure */
    }
    /* a buffer without a terminating NUL: only len bytes are read */
    const char buf[] = {'{', '}', '!'};
    CHECK(bt_json_parse(&j, buf, 2, NAME) == BT_OK);
    bt_json_free(&j);
    CHECK(bt_json_parse(&j, "[1, 2]", 6, NAME) == BT_EFORMAT);
    CHECK(strstr(bt_log_last_error(), NAME ": the top level must be a JSON object, not an array") != NULL);
    CHECK(bt_json_parse(&j, "{", 1, NULL) == BT_EFORMAT);
    CHECK(strstr(bt_log_last_error(), "<memory>") != NULL);

    /* from files: the message names the path */
    char path[4096];
    snprintf(path, sizeof path, "%s/broken.json", tu_tmpdir());
    FILE *fp = fopen(path, "w");
    REQUIRE(fp);
    fputs("{\"in_channels\": 4,\n \"out_channels\": }", fp);
    fclose(fp);
    CHECK(bt_json_open(&j, path) == BT_EFORMAT);
    CHECK(strstr(bt_log_last_error(), path) && strstr(bt_log_last_error(), "not valid JSON"));
    snprintf(path, sizeof path, "%s/no/such/config.json", tu_tmpdir());
    CHECK(bt_json_open(&j, path) == BT_ENOTFOUND);
    CHECK(strstr(bt_log_last_error(), path) != NULL);
    bt_json_free(&j);

    snprintf(path, sizeof path, "%s/good.json", tu_tmpdir());
    fp = fopen(path, "w");
    REQUIRE(fp);
    fputs("{\"in_channels\": 0}", fp);
    fclose(fp);
    REQUIRE(bt_json_open(&j, path) == BT_OK);
    int64_t v = 42;
    CHECK(bt_json_int64(&j, "in_channels", 4, 1, 100, &v) == BT_EFORMAT && v == 42);
    CHECK(strstr(bt_log_last_error(), path) && strstr(bt_log_last_error(), "'in_channels' is 0"));
    bt_json_free(&j);
    bt_log_set_sink(NULL, NULL);
}
