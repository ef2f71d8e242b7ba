/*
 * testutil.h — what tests share: a seeded RNG, fixture access, array comparison.
 *
 * Fixtures live in tests/fixtures/ (BOOTH_FIXTURES overrides) and are read with
 * the same safetensors reader that loads models.
 */
#ifndef BOOTH_TESTS_TESTUTIL_H
#define BOOTH_TESTS_TESTUTIL_H

#include <stdint.h>

#include "storage/safetensors.h"
#include "test.h"

/* splitmix64-based generator: same sequence on every machine. */
typedef struct {
    uint64_t s;
} tu_rng_t;
static inline tu_rng_t tu_rng(uint64_t seed) { return (tu_rng_t){seed * 0x9e3779b97f4a7c15ull + 1}; }
uint64_t tu_next(tu_rng_t *r);
double tu_uniform(tu_rng_t *r); /* [0, 1) */
double tu_normal(tu_rng_t *r);
void tu_fill_normal(tu_rng_t *r, float *x, int64_t n, float scale);
void tu_fill_uniform(tu_rng_t *r, float *x, int64_t n, float lo, float hi);

/* Path of a fixture file (static buffer). */
const char *tu_fixture_path(const char *name);
/* Opens tests/fixtures/<name>; NULL (and a test failure) if missing. */
st_file_t *tu_fixture(const char *name);
/* Copies tensor `name` as float32 into a malloc'd array; NULL + failure if absent.
 * *numel (may be NULL) receives the element count. */
float *tu_load_f32(const st_file_t *f, const char *name, int64_t *numel);
double *tu_load_f64(const st_file_t *f, const char *name, int64_t *numel);

double tu_max_abs_diff(const float *a, const float *b, int64_t n);
double tu_max_abs_diff_f64(const float *a, const double *b, int64_t n);
double tu_max_abs(const float *a, int64_t n);
/* ||a - b|| / ||b|| (0 when both are zero). */
double tu_rel_l2(const float *a, const float *b, int64_t n);

/* Fails the test with both figures if max|a-b| > atol. Returns the max diff. */
double tu_check_close_at(const char *file, int line, const char *what, const float *a, const float *b, int64_t n,
                         double atol);
double tu_check_close_f64_at(const char *file, int line, const char *what, const float *a, const double *b,
                             int64_t n, double atol);
#define tu_check_close(what, a, b, n, atol) tu_check_close_at(__FILE__, __LINE__, what, a, b, n, atol)
#define tu_check_close_f64(what, a, b, n, atol) tu_check_close_f64_at(__FILE__, __LINE__, what, a, b, n, atol)

/* Compares forward-hook tensors against "intermediate.<name>" tensors of a
 * fixture: pass tu_intermediates_hook as sd_run_t.hook and this as hook_user.
 * A tensor passes if max abs <= atol or relative L2 <= rtol. */
typedef struct {
    st_file_t *fx;
    double atol, rtol;
    int checked;
    double worst;
    char worst_name[128];
} tu_intermediates_t;
void tu_intermediates_hook(void *user, const char *name, const float *data, int ndim, const int64_t *shape);
/* How many "intermediate." tensors the fixture holds. */
int tu_intermediates_recorded(const st_file_t *fx);

/* A temporary directory for this test (removed by the runner afterwards). */
const char *tu_tmpdir(void);

#endif
