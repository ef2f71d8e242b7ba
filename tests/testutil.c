/* testutil.c — RNG, fixtures and comparisons for tests. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint64_t tu_next(tu_rng_t *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

double tu_uniform(tu_rng_t *r) { return (double)(tu_next(r) >> 11) * (1.0 / 9007199254740992.0); }

double tu_normal(tu_rng_t *r)
{
    double u1 = tu_uniform(r), u2 = tu_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

void tu_fill_normal(tu_rng_t *r, float *x, int64_t n, float scale)
{
    for (int64_t i = 0; i < n; i++) x[i] = (float)(tu_normal(r) * scale);
}

void tu_fill_uniform(tu_rng_t *r, float *x, int64_t n, float lo, float hi)
{
    for (int64_t i = 0; i < n; i++) x[i] = (float)(lo + (hi - lo) * tu_uniform(r));
}

const char *tu_fixture_path(const char *name)
{
    static char path[4096];
    const char *dir = getenv("BOOTH_FIXTURES");
    snprintf(path, sizeof path, "%s/%s", dir && *dir ? dir : "tests/fixtures", name);
    return path;
}

st_file_t *tu_fixture(const char *name)
{
    const char *path = tu_fixture_path(name);
    st_file_t *f = st_open(path);
    if (!f) bt_test_fail(__FILE__, __LINE__, "cannot open fixture %s", path);
    return f;
}

float *tu_load_f32(const st_file_t *f, const char *name, int64_t *numel)
{
    const st_tensor_t *t = st_find(f, name);
    if (!t) {
        bt_test_fail(__FILE__, __LINE__, "%s: no tensor '%s'", st_path(f), name);
        return NULL;
    }
    int64_t n = st_numel(t);
    float *x = malloc((size_t)(n ? n : 1) * sizeof *x);
    if (x) st_read_f32(t, x);
    if (numel) *numel = n;
    return x;
}

double *tu_load_f64(const st_file_t *f, const char *name, int64_t *numel)
{
    const st_tensor_t *t = st_find(f, name);
    if (!t) {
        bt_test_fail(__FILE__, __LINE__, "%s: no tensor '%s'", st_path(f), name);
        return NULL;
    }
    int64_t n = st_numel(t);
    double *x = malloc((size_t)(n ? n : 1) * sizeof *x);
    if (x) st_read_f64(t, x);
    if (numel) *numel = n;
    return x;
}

double tu_max_abs_diff(const float *a, const float *b, int64_t n)
{
    double m = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > m || isnan(d)) m = isnan(d) ? INFINITY : d;
    }
    return m;
}

double tu_max_abs_diff_f64(const float *a, const double *b, int64_t n)
{
    double m = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > m || isnan(d)) m = isnan(d) ? INFINITY : d;
    }
    return m;
}

double tu_max_abs(const float *a, int64_t n)
{
    double m = 0;
    for (int64_t i = 0; i < n; i++)
        if (fabs(a[i]) > m) m = fabs(a[i]);
    return m;
}

double tu_rel_l2(const float *a, const float *b, int64_t n)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    if (den == 0) return num == 0 ? 0 : INFINITY;
    return sqrt(num / den);
}

double tu_check_close_at(const char *file, int line, const char *what, const float *a, const float *b, int64_t n,
                         double atol)
{
    double d = tu_max_abs_diff(a, b, n);
    if (!(d <= atol)) bt_test_fail(file, line, "%s: max abs diff %.3g > %.3g", what, d, atol);
    return d;
}

double tu_check_close_f64_at(const char *file, int line, const char *what, const float *a, const double *b,
                             int64_t n, double atol)
{
    double d = tu_max_abs_diff_f64(a, b, n);
    if (!(d <= atol)) bt_test_fail(file, line, "%s: max abs diff %.3g > %.3g", what, d, atol);
    return d;
}

const char *tu_tmpdir(void)
{
    const char *d = getenv("BOOTH_TEST_TMPDIR");
    return d && *d ? d : "/tmp";
}

void tu_intermediates_hook(void *user, const char *name, const float *data, int ndim, const int64_t *shape)
{
    tu_intermediates_t *h = user;
    char key[256];
    snprintf(key, sizeof key, "intermediate.%s", name);
    const st_tensor_t *t = st_find(h->fx, key);
    if (!t) return; /* the reference records a subset */
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    if (st_numel(t) != n) {
        bt_test_fail(__FILE__, __LINE__, "%s: %lld elements, reference has %lld", name, (long long)n,
                     (long long)st_numel(t));
        return;
    }
    float *want = malloc((size_t)n * sizeof(float));
    st_read_f32(t, want);
    double d = tu_max_abs_diff(data, want, n), rel = tu_rel_l2(data, want, n);
    if (!(d <= h->atol || rel <= h->rtol))
        bt_test_fail(__FILE__, __LINE__, "intermediate %s: max abs %.3g, rel %.3g", name, d, rel);
    if (d > h->worst) {
        h->worst = d;
        snprintf(h->worst_name, sizeof h->worst_name, "%s", name);
    }
    h->checked++;
    free(want);
}

int tu_intermediates_recorded(const st_file_t *fx)
{
    int n = 0;
    for (int i = 0; i < st_count(fx); i++) n += !strncmp(st_at(fx, i)->name, "intermediate.", 13);
    return n;
}
