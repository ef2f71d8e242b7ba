/*
 * test.h — booth's test harness: TEST() registers a function, CHECK records a
 * failure and goes on, REQUIRE records one and leaves the test.
 *
 * The runner (tests/runner.c) forks every test, so a crash or a hang is one
 * failed test, not a lost run, and prints "N passed, N failed" at the end.
 */
#ifndef BOOTH_TESTS_TEST_H
#define BOOTH_TESTS_TEST_H

#include <stdbool.h>
#include <stdint.h>

void bt_test_register(const char *name, const char *file, void (*fn)(void), int timeout_s);
/* For tables of cases: fn(arg) runs as the test `name` (the runner keeps the pointers). */
void bt_test_register_arg(const char *name, const char *file, void (*fn)(const void *), const void *arg,
                          int timeout_s);
void bt_test_fail(const char *file, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int bt_test_failures(void);

#define TEST_TIMEOUT(name, seconds)                                                                            \
    static void test_##name(void);                                                                             \
    __attribute__((constructor)) static void s_register_##name(void)                                           \
    {                                                                                                          \
        bt_test_register(#name, __FILE__, test_##name, seconds);                                               \
    }                                                                                                          \
    static void test_##name(void)

#define TEST(name) TEST_TIMEOUT(name, 300)

#define CHECK(cond)                                                                                            \
    do {                                                                                                       \
        if (!(cond)) bt_test_fail(__FILE__, __LINE__, "CHECK(%s)", #cond);                                     \
    } while (0)

#define CHECKF(cond, ...)                                                                                      \
    do {                                                                                                       \
        if (!(cond)) bt_test_fail(__FILE__, __LINE__, __VA_ARGS__);                                            \
    } while (0)

#define REQUIRE(cond)                                                                                          \
    do {                                                                                                       \
        if (!(cond)) {                                                                                         \
            bt_test_fail(__FILE__, __LINE__, "REQUIRE(%s)", #cond);                                            \
            return;                                                                                            \
        }                                                                                                      \
    } while (0)

#define CHECK_INT_EQ(a, b)                                                                                     \
    do {                                                                                                       \
        long long _a = (long long)(a), _b = (long long)(b);                                                    \
        if (_a != _b) bt_test_fail(__FILE__, __LINE__, "%s == %lld, expected %s == %lld", #a, _a, #b, _b);     \
    } while (0)

#endif
