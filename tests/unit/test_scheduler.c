/*
 * test_scheduler.c — diffusion/scheduler against diffusers 0.25.1.
 *
 *   fixture   every tensor of tests/fixtures/scheduler.safetensors (copied from
 *             shared/oracle): tables, add_noise/get_velocity, timesteps and
 *             sigmas for 5 and 50 steps, and the DDPM, DDIM (+v), Euler (+v) and
 *             PNDM trajectories. The configs come from the fixture's `configs`
 *             metadata, written to files and read back through the parser.
 *   by hand   trailing and linspace spacing from diffusers' formulas, the
 *             squaredcos_cap_v2 betas from a float64 formula, PNDM's Runge-Kutta
 *             call list.
 *   laws      with a model that knows the true x0 (it returns the exact noise or
 *             v), every sampler must land on x0 (or on the DDIM end point), which
 *             checks step bookkeeping the fixture does not reach (PRK, trailing,
 *             linspace, eta, zero-SNR).
 *   errors    malformed and unsupported configs fail with one line, not a crash.
 *
 * Trajectories are chained through booth's own outputs (as a real sampler
 * runs), and compared with max abs <= 1e-4; the errors seen are printed.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"
#include "diffusion/scheduler.h"
#include "testutil.h"

#define TOL 1e-4
#define NLAT (4 * 16 * 16) /* one [1, 4, 16, 16] sample */

/* ---------------------------------------------------------------- helpers */

static char *s_write_tmp(const char *name, const char *text)
{
    static char path[4096];
    snprintf(path, sizeof path, "%s/%s", tu_tmpdir(), name);
    FILE *f = fopen(path, "w");
    if (!f) return NULL;
    fputs(text, f);
    fclose(f);
    return path;
}

/* configs[which] from the fixture metadata, optionally with prediction_type
 * replaced, written to <tmp>/<which>.json and loaded through the parser. */
static int s_fixture_config(const st_file_t *f, const char *which, const char *pred, sd_sched_config_t *cfg)
{
    const char *meta = st_metadata(f, "configs");
    if (!meta) return BT_ENOTFOUND;
    cJSON *all = cJSON_Parse(meta);
    if (!all) return BT_EFORMAT;
    cJSON *one = cJSON_GetObjectItemCaseSensitive(all, which);
    int rc = BT_ENOTFOUND;
    if (one) {
        if (pred) cJSON_ReplaceItemInObjectCaseSensitive(one, "prediction_type", cJSON_CreateString(pred));
        char *text = cJSON_Print(one);
        char name[64];
        snprintf(name, sizeof name, "%s%s.json", which, pred ? "_v" : "");
        const char *path = text ? s_write_tmp(name, text) : NULL;
        rc = path ? sd_sched_config_load(cfg, path) : BT_EIO;
        free(text);
    }
    cJSON_Delete(all);
    return rc;
}

static sd_sched_t *s_fixture_sched(const st_file_t *f, const char *which, const char *pred, sd_sched_kind_t kind,
                                   int steps)
{
    sd_sched_config_t cfg;
    sd_sched_config_init(&cfg);
    sd_sched_t *s = NULL;
    if (s_fixture_config(f, which, pred, &cfg) == 0) s = sd_sched_new(&cfg, kind, steps);
    sd_sched_config_free(&cfg);
    return s;
}

/* A config from JSON text, through a file. */
static int s_config_from_text(sd_sched_config_t *cfg, const char *text)
{
    const char *path = s_write_tmp("scheduler_config.json", text);
    return path ? sd_sched_config_load(cfg, path) : BT_EIO;
}

static sd_sched_t *s_sched_from_text(const char *text, sd_sched_kind_t kind, int steps)
{
    sd_sched_config_t cfg;
    sd_sched_config_init(&cfg);
    sd_sched_t *s = NULL;
    if (s_config_from_text(&cfg, text) == 0) s = sd_sched_new(&cfg, kind, steps);
    sd_sched_config_free(&cfg);
    return s;
}

/* The model folder's config (PNDMScheduler, SD 1.x numbers). */
static const char *s_sd_config =
    "{\"_class_name\": \"PNDMScheduler\", \"_diffusers_version\": \"0.25.1\", \"beta_end\": 0.012,"
    " \"beta_schedule\": \"scaled_linear\", \"beta_start\": 0.00085, \"clip_sample\": false,"
    " \"num_train_timesteps\": 1000, \"prediction_type\": \"epsilon\", \"set_alpha_to_one\": false,"
    " \"skip_prk_steps\": true, \"steps_offset\": 1, \"timestep_spacing\": \"%s\", \"trained_betas\": null}";

static sd_sched_t *s_sd_sched(const char *spacing, sd_sched_kind_t kind, int steps)
{
    char text[1024];
    snprintf(text, sizeof text, s_sd_config, spacing);
    return s_sched_from_text(text, kind, steps);
}

/* Timesteps of s against an I64 or F32 fixture tensor, exactly. */
static void s_check_timesteps(const sd_sched_t *s, const st_file_t *f, const char *name)
{
    int64_t n = 0;
    float *want = tu_load_f32(f, name, &n);
    if (!want) return;
    CHECKF(sd_sched_num_steps(s) == n, "%s: %d timesteps, fixture has %lld", name, sd_sched_num_steps(s), (long long)n);
    if (sd_sched_num_steps(s) == n)
        for (int64_t i = 0; i < n; i++)
            CHECKF(sd_sched_timesteps(s)[i] == want[i], "%s[%lld] = %.9g, expected %.9g", name, (long long)i,
                   (double)sd_sched_timesteps(s)[i], (double)want[i]);
    free(want);
}

/* ------------------------------------------------------------- fixture */

TEST(sched_fixture_tables)
{
    st_file_t *f = tu_fixture("scheduler.safetensors");
    REQUIRE(f);
    float *betas = tu_load_f32(f, "ddpm.betas", NULL), *ac = tu_load_f32(f, "ddpm.alphas_cumprod", NULL);
    REQUIRE(betas && ac);
    /* every scheduler's config gives the same tables (only rescale_zero_snr differs per class) */
    static const struct {
        const char *which;
        sd_sched_kind_t kind;
    } cases[] = {{"ddpm", SD_SCHED_DDPM}, {"ddim", SD_SCHED_DDIM}, {"euler", SD_SCHED_EULER}, {"pndm", SD_SCHED_PNDM}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        sd_sched_config_t cfg;
        sd_sched_config_init(&cfg);
        CHECK(s_fixture_config(f, cases[c].which, NULL, &cfg) == 0);
        sd_sched_table_t tab;
        CHECK(sd_sched_table_init(&tab, &cfg, cases[c].kind) == 0);
        CHECK_INT_EQ(tab.num_train_timesteps, 1000);
        int bad_b = 0, bad_a = 0;
        for (int i = 0; i < 1000 && tab.betas; i++) {
            bad_b += memcmp(&tab.betas[i], &betas[i], sizeof(float)) != 0;
            bad_a += memcmp(&tab.alphas_cumprod[i], &ac[i], sizeof(float)) != 0;
        }
        /* bit-exact: see s_torch_linspace_f32 and s_cumprod_alphas */
        CHECKF(bad_b == 0 && bad_a == 0, "%s: %d betas and %d alphas_cumprod differ in bits from torch's",
               cases[c].which, bad_b, bad_a);
        if (c == 0) printf("tables: betas %d / alphas_cumprod %d of 1000 differ in bits\n", bad_b, bad_a);
        sd_sched_table_free(&tab);
        sd_sched_table_free(&tab); /* safe twice */
        sd_sched_config_free(&cfg);
    }
    free(betas);
    free(ac);
    st_close(&f);
}

TEST(sched_fixture_add_noise)
{
    st_file_t *f = tu_fixture("scheduler.safetensors");
    REQUIRE(f);
    sd_sched_config_t cfg;
    sd_sched_config_init(&cfg);
    REQUIRE(s_fixture_config(f, "ddpm", NULL, &cfg) == 0);
    sd_sched_table_t tab;
    REQUIRE(sd_sched_table_init(&tab, &cfg, SD_SCHED_DDPM) == 0);
    int64_t n = 0, nt = 0;
    float *x0 = tu_load_f32(f, "ddpm.add_noise.original", &n), *eps = tu_load_f32(f, "ddpm.add_noise.noise", NULL);
    float *noisy = tu_load_f32(f, "ddpm.add_noise.noisy", NULL), *vel = tu_load_f32(f, "ddpm.add_noise.velocity", NULL);
    const st_tensor_t *tt = st_find(f, "ddpm.add_noise.timesteps");
    REQUIRE(x0 && eps && noisy && vel && tt);
    nt = st_numel(tt);
    int64_t t[8];
    REQUIRE(nt == 3 && st_read_i64(tt, t) == 0);
    float *out = malloc((size_t)n * sizeof *out);
    REQUIRE(out);
    CHECK(sd_sched_add_noise(&tab, out, x0, eps, t, nt, n / nt) == 0);
    double e1 = tu_check_close("add_noise.noisy", out, noisy, n, TOL);
    CHECK(sd_sched_get_velocity(&tab, out, x0, eps, t, nt, n / nt) == 0);
    double e2 = tu_check_close("add_noise.velocity", out, vel, n, TOL);
    printf("add_noise: noisy %.3g, velocity %.3g\n", e1, e2);

    /* SNR = a/(1-a) */
    float snr[3];
    CHECK(sd_sched_snr(&tab, snr, t, 3) == 0);
    for (int b = 0; b < 3; b++) {
        double a = tab.alphas_cumprod[t[b]];
        CHECKF(fabs(snr[b] - a / (1 - a)) <= 1e-5 * (a / (1 - a)), "snr[%d] = %g, expected %g", b, (double)snr[b],
               a / (1 - a));
    }
    /* out-of-range timesteps are an error, not a read past the table */
    int64_t bad[2] = {5, 1000};
    CHECK(sd_sched_add_noise(&tab, out, x0, eps, bad, 2, n / nt) == BT_EINVAL);
    CHECK(sd_sched_snr(&tab, snr, bad, 2) == BT_EINVAL);
    free(out);
    free(x0);
    free(eps);
    free(noisy);
    free(vel);
    sd_sched_table_free(&tab);
    sd_sched_config_free(&cfg);
    st_close(&f);
}

TEST(sched_fixture_timesteps)
{
    st_file_t *f = tu_fixture("scheduler.safetensors");
    REQUIRE(f);
    static const struct {
        const char *which, *name;
        sd_sched_kind_t kind;
        int steps;
    } cases[] = {
        {"ddpm", "ddpm.timesteps", SD_SCHED_DDPM, 5},        {"ddim", "ddim.timesteps", SD_SCHED_DDIM, 5},
        {"ddim", "ddim.timesteps_50", SD_SCHED_DDIM, 50},    {"euler", "euler.timesteps", SD_SCHED_EULER, 5},
        {"euler", "euler.timesteps_50", SD_SCHED_EULER, 50}, {"pndm", "pndm.timesteps", SD_SCHED_PNDM, 5},
        {"pndm", "pndm.timesteps_50", SD_SCHED_PNDM, 50},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        sd_sched_t *s = s_fixture_sched(f, cases[c].which, NULL, cases[c].kind, cases[c].steps);
        CHECKF(s != NULL, "%s: no sampler", cases[c].name);
        if (!s) continue;
        s_check_timesteps(s, f, cases[c].name);
        CHECK_INT_EQ(sd_sched_num_inference_steps(s), cases[c].steps);
        CHECK(cases[c].kind == SD_SCHED_EULER ? sd_sched_sigmas(s) != NULL : sd_sched_sigmas(s) == NULL);
        if (cases[c].kind == SD_SCHED_EULER) {
            const char *sname = cases[c].steps == 5 ? "euler.sigmas" : "euler.sigmas_50";
            int64_t n = 0;
            float *want = tu_load_f32(f, sname, &n);
            if (want && n == cases[c].steps + 1) {
                double e = tu_check_close(sname, sd_sched_sigmas(s), want, n, TOL);
                printf("%s: max abs %.3g\n", sname, e);
                CHECK(sd_sched_sigmas(s)[cases[c].steps] == 0.0f);
            }
            free(want);
        } else {
            CHECK(sd_sched_init_noise_sigma(s) == 1.0f);
        }
        sd_sched_destroy(&s);
        sd_sched_destroy(&s); /* safe twice */
    }
    st_close(&f);
}

TEST(sched_fixture_ddpm)
{
    st_file_t *f = tu_fixture("scheduler.safetensors");
    REQUIRE(f);
    sd_sched_t *s = s_fixture_sched(f, "ddpm", NULL, SD_SCHED_DDPM, 5);
    float *x = tu_load_f32(f, "ddpm.x_T", NULL), *m = tu_load_f32(f, "ddpm.model_outputs", NULL);
    float *z = tu_load_f32(f, "ddpm.variance_noise", NULL), *want = tu_load_f32(f, "ddpm.prev_samples", NULL);
    REQUIRE(s && x && m && z && want);
    REQUIRE(sd_sched_num_steps(s) == 5);
    double worst = 0;
    for (int i = 0; i < 5; i++) {
        CHECK(sd_sched_scale_model_input(s, x, x, i, NLAT) == 0); /* identity, in place */
        CHECK(sd_sched_step(s, x, NULL, x, m + i * NLAT, z + i * NLAT, i, NLAT) == 0);
        char what[64];
        snprintf(what, sizeof what, "ddpm.prev_samples[%d]", i);
        double e = tu_check_close(what, x, want + i * NLAT, NLAT, TOL);
        worst = e > worst ? e : worst;
    }
    printf("ddpm: prev_samples max abs %.3g\n", worst);
    /* DDPM needs its noise for t > 0 */
    CHECK(sd_sched_step(s, x, NULL, x, m, NULL, 0, NLAT) == BT_EINVAL);
    free(x);
    free(m);
    free(z);
    free(want);
    sd_sched_destroy(&s);
    st_close(&f);
}

static void s_run_ddim(const st_file_t *f, const char *pred, const char *prev_name)
{
    sd_sched_t *s = s_fixture_sched(f, "ddim", pred, SD_SCHED_DDIM, 5);
    float *x = tu_load_f32(f, "ddim.x_T", NULL), *m = tu_load_f32(f, "ddim.model_outputs", NULL);
    float *want = tu_load_f32(f, prev_name, NULL);
    float *want_x0 = pred ? NULL : tu_load_f32(f, "ddim.pred_original_samples", NULL);
    float *fa = tu_load_f32(f, "ddim.final_alpha_cumprod", NULL);
    float x0[NLAT], out[NLAT];
    if (!s || !x || !m || !want || !fa || (!pred && !want_x0)) {
        CHECK(!"ddim fixture or sampler missing");
        goto out;
    }
    CHECK(sd_sched_final_alpha_cumprod(s) == fa[0]);
    double worst = 0, worst_x0 = 0;
    for (int i = 0; i < 5; i++) {
        /* out of place this time; x stays the input */
        CHECK(sd_sched_step(s, out, x0, x, m + i * NLAT, NULL, i, NLAT) == 0);
        char what[64];
        snprintf(what, sizeof what, "%s[%d]", prev_name, i);
        double e = tu_check_close(what, out, want + i * NLAT, NLAT, TOL);
        worst = e > worst ? e : worst;
        if (want_x0) {
            snprintf(what, sizeof what, "ddim.pred_original_samples[%d]", i);
            e = tu_check_close(what, x0, want_x0 + i * NLAT, NLAT, TOL);
            worst_x0 = e > worst_x0 ? e : worst_x0;
        }
        memcpy(x, out, sizeof out);
    }
    printf("%s: prev_samples max abs %.3g", pred ? "ddim_v" : "ddim", worst);
    if (want_x0) printf(", pred_original_samples %.3g", worst_x0);
    printf("\n");
out:
    free(x);
    free(m);
    free(want);
    free(want_x0);
    free(fa);
    sd_sched_destroy(&s);
}

TEST(sched_fixture_ddim)
{
    st_file_t *f = tu_fixture("scheduler.safetensors");
    REQUIRE(f);
    s_run_ddim(f, NULL, "ddim.prev_samples");
    s_run_ddim(f, "v_prediction", "ddim_v.prev_samples");
    st_close(&f);
}

static void s_run_euler(const st_file_t *f, const char *pred, const char *prev_name)
{
    sd_sched_t *s = s_fixture_sched(f, "euler", pred, SD_SCHED_EULER, 5);
    float *noise = tu_load_f32(f, "euler.noise", NULL), *xT = tu_load_f32(f, "euler.x_T", NULL);
    float *m = tu_load_f32(f, "euler.model_outputs", NULL), *want = tu_load_f32(f, prev_name, NULL);
    float *scaled = tu_load_f32(f, "euler.scaled_model_inputs", NULL);
    float *ins = tu_load_f32(f, "euler.init_noise_sigma", NULL);
    float x[NLAT], in[NLAT];
    if (!s || !noise || !xT || !m || !want || !scaled || !ins) {
        CHECK(!"euler fixture or sampler missing");
        goto out;
    }
    float sigma0 = sd_sched_init_noise_sigma(s);
    CHECKF(fabs(sigma0 - ins[0]) <= TOL, "init_noise_sigma %.9g, expected %.9g", (double)sigma0, (double)ins[0]);
    for (int i = 0; i < NLAT; i++)
        x[i] = noise[i] * sigma0;
    double ex = tu_check_close("euler.x_T", x, xT, NLAT, TOL);
    double worst = 0, worst_in = 0;
    for (int i = 0; i < 5; i++) {
        char what[64];
        CHECK(sd_sched_scale_model_input(s, in, x, i, NLAT) == 0);
        if (!pred) {
            snprintf(what, sizeof what, "euler.scaled_model_inputs[%d]", i);
            double e = tu_check_close(what, in, scaled + i * NLAT, NLAT, TOL);
            worst_in = e > worst_in ? e : worst_in;
        }
        CHECK(sd_sched_step(s, x, NULL, x, m + i * NLAT, NULL, i, NLAT) == 0);
        snprintf(what, sizeof what, "%s[%d]", prev_name, i);
        double e = tu_check_close(what, x, want + i * NLAT, NLAT, TOL);
        worst = e > worst ? e : worst;
    }
    printf("%s: init_noise_sigma %.3g, x_T %.3g, prev_samples max abs %.3g", pred ? "euler_v" : "euler",
           fabs(sigma0 - ins[0]), ex, worst);
    if (!pred) printf(", scaled_model_inputs %.3g", worst_in);
    printf("\n");
out:
    free(noise);
    free(xT);
    free(m);
    free(want);
    free(scaled);
    free(ins);
    sd_sched_destroy(&s);
}

TEST(sched_fixture_euler)
{
    st_file_t *f = tu_fixture("scheduler.safetensors");
    REQUIRE(f);
    s_run_euler(f, NULL, "euler.prev_samples");
    s_run_euler(f, "v_prediction", "euler_v.prev_samples");
    st_close(&f);
}

TEST(sched_fixture_pndm)
{
    st_file_t *f = tu_fixture("scheduler.safetensors");
    REQUIRE(f);
    sd_sched_t *s = s_fixture_sched(f, "pndm", NULL, SD_SCHED_PNDM, 5);
    float *xT = tu_load_f32(f, "pndm.x_T", NULL), *m = tu_load_f32(f, "pndm.model_outputs", NULL);
    float *want = tu_load_f32(f, "pndm.prev_samples", NULL);
    REQUIRE(s && xT && m && want);
    REQUIRE(sd_sched_num_steps(s) == 6);
    static float x[NLAT], first[6][NLAT];
    memcpy(x, xT, sizeof x);
    double worst = 0;
    for (int i = 0; i < 6; i++) {
        CHECK(sd_sched_step(s, x, NULL, x, m + i * NLAT, NULL, i, NLAT) == 0);
        char what[64];
        snprintf(what, sizeof what, "pndm.prev_samples[%d]", i);
        double e = tu_check_close(what, x, want + i * NLAT, NLAT, TOL);
        worst = e > worst ? e : worst;
        memcpy(first[i], x, sizeof x);
    }
    printf("pndm: prev_samples max abs %.3g\n", worst);

    /* the history is in the object: out of order is refused, reset replays bit for bit */
    CHECK(sd_sched_step(s, x, NULL, x, m, NULL, 0, NLAT) == BT_EINVAL);
    sd_sched_reset(s);
    CHECK(sd_sched_step(s, x, NULL, xT, m, NULL, 1, NLAT) == BT_EINVAL);
    memcpy(x, xT, sizeof x);
    for (int i = 0; i < 6; i++) {
        CHECK(sd_sched_step(s, x, NULL, x, m + i * NLAT, NULL, i, NLAT) == 0);
        CHECKF(memcmp(x, first[i], sizeof x) == 0, "pndm replay after reset differs at step %d", i);
        if (i == 2) CHECK(sd_sched_step(s, x, NULL, x, m, NULL, 3, NLAT / 2) == BT_ESHAPE);
    }
    free(xT);
    free(m);
    free(want);
    sd_sched_destroy(&s);
    st_close(&f);
}

/* --------------------------------------------------------------- by hand */

/* diffusers 0.25.1, "trailing" (DDPM, DDIM, Euler, PNDM alike):
 *   step_ratio = N / n;  timesteps = round(arange(N, 0, -step_ratio)) - 1
 * i.e. t_k = round_half_even(N - k*N/n) - 1 for k = 0..n-1, descending.
 * PNDM (PLMS) then repeats the second: t_0, t_1, t_1, t_2, ..., t_{n-1}. */
TEST(sched_spacing_trailing)
{
    const int N = 1000, ns[] = {1, 2, 3, 7, 10, 13, 16, 25, 50};
    for (size_t c = 0; c < sizeof ns / sizeof ns[0]; c++) {
        int n = ns[c];
        int want[64];
        for (int k = 0; k < n; k++)
            want[k] = (int)nearbyint(N - k * ((double)N / n)) - 1;
        for (int kind = SD_SCHED_DDPM; kind <= SD_SCHED_PNDM; kind++) {
            sd_sched_t *s = s_sd_sched("trailing", (sd_sched_kind_t)kind, n);
            CHECKF(s != NULL, "trailing %s n=%d", sd_sched_kind_name((sd_sched_kind_t)kind), n);
            if (!s) continue;
            const float *ts = sd_sched_timesteps(s);
            if (kind == SD_SCHED_PNDM) {
                CHECK_INT_EQ(sd_sched_num_steps(s), n == 1 ? 1 : n + 1);
                for (int i = 0; i < sd_sched_num_steps(s); i++)
                    CHECKF(ts[i] == want[i <= 1 ? i : i - 1], "pndm trailing n=%d: ts[%d] = %g, expected %d", n, i,
                           (double)ts[i], want[i <= 1 ? i : i - 1]);
            } else {
                CHECK_INT_EQ(sd_sched_num_steps(s), n);
                for (int i = 0; i < n; i++)
                    CHECKF(ts[i] == want[i], "%s trailing n=%d: ts[%d] = %g, expected %d",
                           sd_sched_kind_name((sd_sched_kind_t)kind), n, i, (double)ts[i], want[i]);
            }
            /* steps_offset only applies to "leading"; Euler's initial sigma is sigma_max itself */
            if (kind == SD_SCHED_EULER) CHECK(sd_sched_init_noise_sigma(s) == sd_sched_sigmas(s)[0]);
            sd_sched_destroy(&s);
        }
    }
    /* the same list as printed by diffusers for n = 13 (github.com/huggingface/diffusers/issues/9261) */
    static const int ref13[] = {999, 922, 845, 768, 691, 614, 537, 461, 384, 307, 230, 153, 76};
    sd_sched_t *s = s_sd_sched("trailing", SD_SCHED_DDIM, 13);
    REQUIRE(s);
    for (int i = 0; i < 13; i++)
        CHECK(sd_sched_timesteps(s)[i] == ref13[i]);
    sd_sched_destroy(&s);
    /* n = 61: numpy's arange yields 62 values there (the last one -1); booth keeps 61 */
    s = s_sd_sched("trailing", SD_SCHED_DDIM, 61);
    REQUIRE(s);
    CHECK_INT_EQ(sd_sched_num_steps(s), 61);
    CHECK(sd_sched_timesteps(s)[60] == 15.0f);
    sd_sched_destroy(&s);
}

/* diffusers 0.25.1, "linspace":
 *   DDPM/DDIM: timesteps = round(linspace(0, N-1, n))[::-1]  (round half to even)
 *   PNDM:      the same ascending, then the PLMS list (second repeated)
 *   Euler:     timesteps = linspace(0, N-1, n, dtype=float32)[::-1]  (not rounded),
 *              sigma = np.interp(t, arange(N), sqrt((1-a)/a)), init_noise_sigma = max sigma
 * where linspace(0, N-1, n)[i] = i*(N-1)/(n-1). */
TEST(sched_spacing_linspace)
{
    const int N = 1000, ns[] = {1, 2, 4, 5, 10, 50};
    for (size_t c = 0; c < sizeof ns / sizeof ns[0]; c++) {
        int n = ns[c];
        double lin[64];
        for (int i = 0; i < n; i++)
            lin[i] = n == 1 ? 0 : i * (double)(N - 1) / (n - 1);
        for (int kind = SD_SCHED_DDPM; kind <= SD_SCHED_PNDM; kind++) {
            sd_sched_t *s = s_sd_sched("linspace", (sd_sched_kind_t)kind, n);
            CHECKF(s != NULL, "linspace %s n=%d", sd_sched_kind_name((sd_sched_kind_t)kind), n);
            if (!s) continue;
            const float *ts = sd_sched_timesteps(s);
            for (int i = 0; i < sd_sched_num_steps(s); i++) {
                int k = kind == SD_SCHED_PNDM && i >= 2 ? i - 1 : i; /* index into the descending list */
                double v = lin[n - 1 - k];
                double want = kind == SD_SCHED_EULER ? (double)(float)v : nearbyint(v);
                CHECKF(ts[i] == want, "%s linspace n=%d: ts[%d] = %.9g, expected %.9g",
                       sd_sched_kind_name((sd_sched_kind_t)kind), n, i, (double)ts[i], want);
            }
            if (kind == SD_SCHED_EULER) {
                const sd_sched_table_t *tab = sd_sched_get_table(s);
                for (int i = 0; i < n; i++) {
                    double t = ts[i];
                    int j = (int)floor(t);
                    double sj = sqrt((1.0 - tab->alphas_cumprod[j]) / tab->alphas_cumprod[j]);
                    double sj1 = j + 1 < N ? sqrt((1.0 - tab->alphas_cumprod[j + 1]) / tab->alphas_cumprod[j + 1]) : sj;
                    double want = sj + (sj1 - sj) * (t - j);
                    CHECKF(fabs(sd_sched_sigmas(s)[i] - want) <= 1e-6 * want,
                           "euler linspace n=%d sigma[%d] %.9g vs %.9g", n, i, (double)sd_sched_sigmas(s)[i], want);
                }
                CHECK(sd_sched_init_noise_sigma(s) == sd_sched_sigmas(s)[0]);
            }
            sd_sched_destroy(&s);
        }
    }
}

/* Euler without timestep_spacing in the file uses Euler's own default, linspace
 * (diffusers' from_config); DDIM's default is leading. Keys named in
 * _use_default_values count as absent. */
TEST(sched_class_defaults)
{
    const char *text = "{\"beta_schedule\": \"scaled_linear\", \"beta_start\": 0.00085, \"beta_end\": 0.012,"
                       " \"steps_offset\": 1, \"set_alpha_to_one\": false, \"clip_sample\": false}";
    sd_sched_t *e = s_sched_from_text(text, SD_SCHED_EULER, 4), *d = s_sched_from_text(text, SD_SCHED_DDIM, 4);
    REQUIRE(e && d);
    CHECK(sd_sched_timesteps(e)[0] == 999.0f && sd_sched_timesteps(e)[1] == 666.0f);
    CHECK(sd_sched_timesteps(d)[0] == 751.0f && sd_sched_timesteps(d)[3] == 1.0f);
    sd_sched_destroy(&e);
    sd_sched_destroy(&d);

    /* set_alpha_to_one absent: DDIM's default true, PNDM's false */
    const char *bare = "{\"beta_schedule\": \"scaled_linear\", \"beta_start\": 0.00085, \"beta_end\": 0.012}";
    d = s_sched_from_text(bare, SD_SCHED_DDIM, 10);
    sd_sched_t *p = s_sched_from_text(bare, SD_SCHED_PNDM, 10);
    REQUIRE(d && p);
    CHECK(sd_sched_final_alpha_cumprod(d) == 1.0f);
    CHECK(sd_sched_final_alpha_cumprod(p) == sd_sched_get_table(p)->alphas_cumprod[0]);
    /* skip_prk_steps absent: PNDM's default false, 4 Runge-Kutta calls per step for 3 steps */
    CHECK_INT_EQ(sd_sched_num_steps(p), 10 + 9);
    sd_sched_destroy(&d);
    sd_sched_destroy(&p);

    sd_sched_config_t cfg;
    sd_sched_config_init(&cfg);
    CHECK(s_config_from_text(&cfg, "{\"timestep_spacing\": \"trailing\", \"clip_sample\": false,"
                                   " \"_use_default_values\": [\"timestep_spacing\"]}") == 0);
    CHECK(!(cfg.present & SD_SCHED_HAS_TIMESTEP_SPACING));
    CHECK(cfg.present & SD_SCHED_HAS_CLIP_SAMPLE);
    CHECK(cfg.beta_schedule == SD_BETA_LINEAR && cfg.num_train_timesteps == 1000);
    sd_sched_config_free(&cfg);

    sd_sched_kind_t k;
    CHECK(sd_sched_kind_parse("plms", &k) && k == SD_SCHED_PNDM);
    CHECK(sd_sched_kind_parse("euler", &k) && k == SD_SCHED_EULER);
    CHECK(!sd_sched_kind_parse("euler_a", &k));
    CHECK(sd_sched_kind_from_class("DDIMScheduler", &k) && k == SD_SCHED_DDIM);
    CHECK(!sd_sched_kind_from_class("DPMSolverMultistepScheduler", &k));
}

/* PNDM with its Runge-Kutta warm-up (skip_prk_steps false), leading, n = 5: the
 * last 4 base timesteps [201, 401, 601, 801] each followed by +N//n//2 = +100,
 * [:-1].repeat(2)[1:-1] reversed, then base[:-3] reversed. */
TEST(sched_pndm_prk_timesteps)
{
    char text[1024];
    snprintf(text, sizeof text, s_sd_config, "leading");
    char *p = strstr(text, "\"skip_prk_steps\": true");
    REQUIRE(p);
    memcpy(p, "\"skip_prk_steps\":false", 22);
    sd_sched_t *s = s_sched_from_text(text, SD_SCHED_PNDM, 5);
    REQUIRE(s);
    static const float want[] = {801, 701, 701, 601, 601, 501, 501, 401, 401, 301, 301, 201, 201, 1};
    REQUIRE(sd_sched_num_steps(s) == 14);
    for (int i = 0; i < 14; i++)
        CHECK(sd_sched_timesteps(s)[i] == want[i]);
    sd_sched_destroy(&s);
    /* fewer than 4 steps cannot fill the Runge-Kutta list (diffusers fails too) */
    CHECK(s_sched_from_text(text, SD_SCHED_PNDM, 3) == NULL);
}

/* squaredcos_cap_v2: beta_i = min(1 - abar((i+1)/N)/abar(i/N), 0.999),
 * abar(t) = cos((t + 0.008)/1.008 * pi/2)^2, in float64 then float32. */
TEST(sched_squaredcos_betas)
{
    sd_sched_config_t cfg;
    sd_sched_config_init(&cfg);
    REQUIRE(s_config_from_text(&cfg, "{\"beta_schedule\": \"squaredcos_cap_v2\", \"num_train_timesteps\": 1000}") == 0);
    sd_sched_table_t tab;
    REQUIRE(sd_sched_table_init(&tab, &cfg, SD_SCHED_DDPM) == 0);
    const double pi = 3.14159265358979323846;
    for (int i = 0; i < 1000; i += 111) {
        double a1 = pow(cos((i / 1000.0 + 0.008) / 1.008 * pi / 2), 2);
        double a2 = pow(cos(((i + 1) / 1000.0 + 0.008) / 1.008 * pi / 2), 2);
        double b = fmin(1 - a2 / a1, 0.999);
        CHECKF(fabs(tab.betas[i] - b) <= 1e-7 * b, "beta[%d] = %.9g, expected %.9g", i, (double)tab.betas[i], b);
    }
    double b0 = 1 - pow(cos((0.001 + 0.008) / 1.008 * pi / 2), 2) / pow(cos(0.008 / 1.008 * pi / 2), 2);
    CHECKF(fabs(tab.betas[0] - b0) <= 1e-7 * b0, "first beta %.9g, expected %.9g", (double)tab.betas[0], b0);
    CHECKF(tab.betas[0] > 3e-5 && tab.betas[0] < 5e-5, "first beta %.9g", (double)tab.betas[0]);
    CHECK(tab.betas[999] == 0.999f); /* abar(1) = cos(pi/2)^2 ~ 0: capped */
    CHECK(tab.alphas_cumprod[999] > 0 && tab.alphas_cumprod[999] < 1e-6f);
    for (int i = 1; i < 1000; i++)
        CHECK(tab.alphas_cumprod[i] < tab.alphas_cumprod[i - 1]);
    sd_sched_table_free(&tab);
    sd_sched_config_free(&cfg);
}

/* ---------------------------------------------------------------- laws */

typedef enum { M_EPS, M_V } s_model_t;

/*
 * Runs s from x_T = sqrt(a)*x0 + sqrt(1-a)*eps (Euler: x0 + sigma*eps) with a
 * model that returns the exact noise or v for the current sample and the known
 * x0; returns the max abs distance of the result from `target`.
 */
static double s_run_oracle_model(sd_sched_t *s, s_model_t model, const float *x0, const float *eps, const float *target,
                                 int n)
{
    const sd_sched_table_t *tab = sd_sched_get_table(s);
    const float *ts = sd_sched_timesteps(s);
    bool euler = sd_sched_kind(s) == SD_SCHED_EULER;
    float *x = malloc((size_t)n * sizeof *x), *in = malloc((size_t)n * sizeof *in);
    float *m = malloc((size_t)n * sizeof *m), *zero = calloc((size_t)n, sizeof *zero);
    double a = tab->alphas_cumprod[(int)ts[0]];
    for (int i = 0; i < n; i++)
        x[i] = euler ? (float)(x0[i] + sd_sched_sigmas(s)[0] * (double)eps[i])
                     : (float)(sqrt(a) * x0[i] + sqrt(1 - a) * eps[i]);
    for (int k = 0; k < sd_sched_num_steps(s); k++) {
        CHECK(sd_sched_scale_model_input(s, in, x, k, n) == 0);
        /* the model sees the scaled input as a variance-preserving sample at level a */
        double sg = euler ? sd_sched_sigmas(s)[k] : 0;
        double ak = euler ? 1 / (sg * sg + 1) : tab->alphas_cumprod[(int)ts[k]];
        for (int i = 0; i < n; i++) {
            double e = (in[i] - sqrt(ak) * x0[i]) / sqrt(1 - ak);
            m[i] = (float)(model == M_EPS ? e : sqrt(ak) * e - sqrt(1 - ak) * x0[i]);
        }
        CHECK(sd_sched_step(s, x, NULL, x, m, zero, k, n) == 0);
    }
    double d = tu_max_abs_diff(x, target, n);
    free(x);
    free(in);
    free(m);
    free(zero);
    return d;
}

/* Step counts are chosen so that diffusers' step from t to t - N//n (and PRK's
 * half step N//n//2) lands on the next listed timestep: elsewhere (trailing with
 * n = 7: 999 steps to 857 but the model is next asked at 856; linspace for
 * DDIM/PNDM) diffusers itself leaves the exact path, and booth reproduces that. */
TEST(sched_oracle_model)
{
    enum { N = 512 };
    tu_rng_t r = tu_rng(7);
    float x0[N], eps[N], end[N];
    tu_fill_normal(&r, x0, N, 1);
    tu_fill_normal(&r, eps, N, 1);
    static const struct {
        const char *spacing;
        sd_sched_kind_t kind;
        int steps;
        s_model_t model;
        bool prk;
    } cases[] = {
        {"leading", SD_SCHED_DDIM, 50, M_EPS, false},   {"trailing", SD_SCHED_DDIM, 8, M_EPS, false},
        {"leading", SD_SCHED_DDIM, 20, M_V, false},     {"leading", SD_SCHED_DDPM, 20, M_EPS, false},
        {"trailing", SD_SCHED_DDPM, 10, M_V, false},    {"leading", SD_SCHED_EULER, 30, M_EPS, false},
        {"linspace", SD_SCHED_EULER, 30, M_EPS, false}, {"leading", SD_SCHED_EULER, 30, M_V, false},
        {"leading", SD_SCHED_PNDM, 50, M_EPS, false},   {"trailing", SD_SCHED_PNDM, 20, M_EPS, false},
        {"leading", SD_SCHED_PNDM, 10, M_EPS, true},    {"trailing", SD_SCHED_PNDM, 10, M_EPS, true},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        char text[1024];
        snprintf(text, sizeof text, s_sd_config, cases[c].spacing);
        if (cases[c].model == M_V) {
            char *p = strstr(text, "\"epsilon\"");
            memmove(p + 14, p + 9, strlen(p + 9) + 1);
            memcpy(p, "\"v_prediction\"", 14);
        }
        if (cases[c].prk) memcpy(strstr(text, "\"skip_prk_steps\": true"), "\"skip_prk_steps\":false", 22);
        sd_sched_t *s = s_sched_from_text(text, cases[c].kind, cases[c].steps);
        CHECKF(s != NULL, "case %zu", c);
        if (!s) continue;
        /* DDPM and Euler end on x0; DDIM and PNDM on the t = -1 point of the ODE */
        double af = sd_sched_final_alpha_cumprod(s);
        for (int i = 0; i < N; i++)
            end[i] = (cases[c].kind == SD_SCHED_DDIM || cases[c].kind == SD_SCHED_PNDM)
                         ? (float)(sqrt(af) * x0[i] + sqrt(1 - af) * eps[i])
                         : x0[i];
        double d = s_run_oracle_model(s, cases[c].model, x0, eps, end, N);
        CHECKF(d <= 2e-4, "%s %s %d steps %s%s: ends %.3g from the exact point", sd_sched_kind_name(cases[c].kind),
               cases[c].spacing, cases[c].steps, cases[c].model == M_V ? "v" : "eps", cases[c].prk ? " prk" : "", d);
        sd_sched_destroy(&s);
    }
}

/* DDIM with eta = 1 is DDPM's ancestral step (same variance, same mean, written
 * differently), wherever the previous timestep is >= 0 (at the end DDPM uses
 * alpha 1, DDIM alphas_cumprod[0]). */
TEST(sched_ddim_eta)
{
    enum { N = 256 };
    char text[1024];
    snprintf(text, sizeof text, s_sd_config, "leading");
    sd_sched_t *s = s_sched_from_text(text, SD_SCHED_DDIM, 10), *p = s_sched_from_text(text, SD_SCHED_DDPM, 10);
    REQUIRE(s && p);
    CHECK(sd_sched_set_eta(s, -1) == BT_EINVAL);
    CHECK(sd_sched_set_eta(p, 1) == BT_EINVAL);
    CHECK(sd_sched_set_eta(s, 1.0f) == 0);
    float x[N], m[N], z[N], a[N], b[N];
    tu_rng_t r = tu_rng(3);
    tu_fill_normal(&r, x, N, 1);
    tu_fill_normal(&r, m, N, 1);
    tu_fill_normal(&r, z, N, 1);
    CHECK(sd_sched_step(s, a, NULL, x, m, NULL, 0, N) == BT_EINVAL); /* eta > 0 needs noise */
    for (int k = 0; k < 9; k++) {
        CHECK(sd_sched_step(s, a, NULL, x, m, z, k, N) == 0);
        CHECK(sd_sched_step(p, b, NULL, x, m, z, k, N) == 0);
        double d = tu_max_abs_diff(a, b, N);
        CHECKF(d <= 1e-5, "step %d: ddim eta=1 and ddpm differ by %.3g", k, d);
    }
    sd_sched_destroy(&s);
    sd_sched_destroy(&p);
    s = s_sched_from_text(text, SD_SCHED_EULER, 10);
    REQUIRE(s);
    CHECK(sd_sched_set_eta(s, 0.5f) == BT_EINVAL);
    CHECK(sd_sched_step(s, x, NULL, x, m, NULL, 10, 16) == BT_EINVAL); /* step out of range */
    CHECK(sd_sched_scale_model_input(s, x, x, -1, 16) == BT_EINVAL);
    sd_sched_destroy(&s);
}

/* rescale_betas_zero_snr: sqrt(abar) is shifted and scaled so the last is 0 and the
 * first unchanged (Lin et al. 2023); Euler stores 2^-24 there; PNDM has no such option. */
TEST(sched_zero_snr)
{
    sd_sched_config_t cfg;
    sd_sched_config_init(&cfg);
    REQUIRE(s_config_from_text(&cfg,
                               "{\"beta_schedule\": \"scaled_linear\", \"beta_start\": 0.00085,"
                               " \"beta_end\": 0.012, \"rescale_betas_zero_snr\": true,"
                               " \"timestep_spacing\": \"trailing\", \"prediction_type\": \"v_prediction\"}") == 0);
    sd_sched_table_t plain, z, ze, zp;
    cfg.rescale_betas_zero_snr = false;
    REQUIRE(sd_sched_table_init(&plain, &cfg, SD_SCHED_DDPM) == 0);
    cfg.rescale_betas_zero_snr = true;
    REQUIRE(sd_sched_table_init(&z, &cfg, SD_SCHED_DDIM) == 0);
    REQUIRE(sd_sched_table_init(&ze, &cfg, SD_SCHED_EULER) == 0);
    REQUIRE(sd_sched_table_init(&zp, &cfg, SD_SCHED_PNDM) == 0);
    CHECK(z.alphas_cumprod[999] == 0.0f);
    CHECK(z.betas[999] == 1.0f);
    CHECK(fabs(z.alphas_cumprod[0] - plain.alphas_cumprod[0]) <= 1e-6);
    CHECK(ze.alphas_cumprod[999] == 0x1p-24f);
    CHECK(memcmp(zp.alphas_cumprod, plain.alphas_cumprod, 1000 * sizeof(float)) == 0);
    /* sqrt(abar) is an affine map of the original */
    double s0 = sqrt(plain.alphas_cumprod[0]), sT = sqrt(plain.alphas_cumprod[999]);
    for (int i = 0; i < 1000; i += 99) {
        double want = (sqrt(plain.alphas_cumprod[i]) - sT) * s0 / (s0 - sT);
        CHECKF(fabs(sqrt(z.alphas_cumprod[i]) - want) <= 1e-5, "zero-snr sqrt(abar)[%d] %.7g vs %.7g", i,
               sqrt(z.alphas_cumprod[i]), want);
    }
    /* DDIM trailing v-prediction starts at t = 999 where SNR is 0: still finite */
    sd_sched_t *s = sd_sched_new(&cfg, SD_SCHED_DDIM, 10);
    REQUIRE(s);
    CHECK(sd_sched_timesteps(s)[0] == 999.0f);
    float x[8] = {1, -1, 2, 0.5f, 0, 3, -2, 1}, m[8] = {0.3f, 0.1f, -0.2f, 1, 0, 0.5f, -1, 2};
    CHECK(sd_sched_step(s, x, NULL, x, m, NULL, 0, 8) == 0);
    for (int i = 0; i < 8; i++)
        CHECK(isfinite(x[i]));
    sd_sched_destroy(&s);
    sd_sched_table_free(&plain);
    sd_sched_table_free(&z);
    sd_sched_table_free(&ze);
    sd_sched_table_free(&zp);
    sd_sched_config_free(&cfg);
}

/* -------------------------------------------------------------- errors */

/* The config loads (or not) with rc, and the one error line names the file and `what`. */
static void s_expect_config_error(const char *text, int rc, const char *what)
{
    sd_sched_config_t cfg;
    sd_sched_config_init(&cfg);
    int got = s_config_from_text(&cfg, text);
    CHECKF(got == rc, "config %s: rc %d, expected %d", text, got, rc);
    if (rc) {
        const char *msg = bt_log_last_error();
        CHECKF(strstr(msg, "scheduler_config.json") && strstr(msg, what), "error line \"%s\" should name %s", msg,
               what);
        /* on failure the struct holds defaults and can be used or freed */
        CHECK(cfg.num_train_timesteps == 1000 && cfg.trained_betas == NULL);
    }
    sd_sched_config_free(&cfg);
    sd_sched_config_free(&cfg);
}

TEST(sched_config_errors)
{
    s_expect_config_error("this is not json", BT_EFORMAT, "JSON");
    s_expect_config_error("{\"beta_start\": 0.00085,", BT_EFORMAT, "JSON");
    s_expect_config_error("[1, 2]", BT_EFORMAT, "object");
    s_expect_config_error("{\"steps_offset\": \"1\"}", BT_EFORMAT, "steps_offset");
    s_expect_config_error("{\"steps_offset\": 1.5}", BT_EFORMAT, "steps_offset");
    s_expect_config_error("{\"num_train_timesteps\": -3}", BT_EFORMAT, "num_train_timesteps");
    s_expect_config_error("{\"num_train_timesteps\": null}", BT_EFORMAT, "num_train_timesteps");
    s_expect_config_error("{\"beta_start\": \"0.1\"}", BT_EFORMAT, "beta_start");
    s_expect_config_error("{\"beta_end\": 7}", BT_EFORMAT, "beta_end");
    s_expect_config_error("{\"clip_sample\": 0}", BT_EFORMAT, "clip_sample");
    s_expect_config_error("{\"set_alpha_to_one\": \"false\"}", BT_EFORMAT, "set_alpha_to_one");
    s_expect_config_error("{\"beta_schedule\": \"sigmoid\"}", BT_EFORMAT, "beta_schedule");
    s_expect_config_error("{\"beta_schedule\": 3}", BT_EFORMAT, "beta_schedule");
    s_expect_config_error("{\"prediction_type\": \"x0\"}", BT_EFORMAT, "prediction_type");
    s_expect_config_error("{\"timestep_spacing\": \"karras\"}", BT_EFORMAT, "timestep_spacing");
    s_expect_config_error("{\"trained_betas\": [0.1, 0.2]}", BT_EFORMAT, "trained_betas");
    s_expect_config_error("{\"num_train_timesteps\": 2, \"trained_betas\": [0.1, 1.5]}", BT_EFORMAT, "trained_betas");
    s_expect_config_error("{\"trained_betas\": {}}", BT_EFORMAT, "trained_betas");
    s_expect_config_error("{\"_use_default_values\": 1}", BT_EFORMAT, "_use_default_values");
    s_expect_config_error("{\"interpolation_type\": [\"linear\"]}", BT_EFORMAT, "interpolation_type");
    /* unknown keys, nulls diffusers allows, and a type error in an ignored key's place are fine */
    s_expect_config_error("{\"foo\": [1, {}], \"sigma_min\": null, \"trained_betas\": null}", 0, "");

    /* a missing file: the error names it */
    sd_sched_config_t cfg;
    sd_sched_config_init(&cfg);
    char path[4096];
    snprintf(path, sizeof path, "%s/no/such/scheduler_config.json", tu_tmpdir());
    CHECK(sd_sched_config_load(&cfg, path) == BT_ENOTFOUND);
    CHECK(strstr(bt_log_last_error(), path) != NULL);
    sd_sched_config_free(&cfg);

    /* trained_betas of the right length replace the schedule */
    sd_sched_config_init(&cfg);
    REQUIRE(s_config_from_text(&cfg, "{\"num_train_timesteps\": 4, \"trained_betas\": [0.1, 0.2, 0.3, 0.4]}") == 0);
    sd_sched_table_t tab;
    REQUIRE(sd_sched_table_init(&tab, &cfg, SD_SCHED_DDPM) == 0);
    CHECK(tab.betas[2] == 0.3f);
    CHECK(fabs(tab.alphas_cumprod[3] - 0.9 * 0.8 * 0.7 * 0.6) < 1e-6);
    sd_sched_table_free(&tab);
    sd_sched_config_free(&cfg);
}

/* Valid configs whose settings booth does not implement: sd_sched_new says which. */
TEST(sched_unsupported)
{
    static const struct {
        const char *json;
        sd_sched_kind_t kind;
        int steps;
        const char *what;
    } cases[] = {
        {"{\"thresholding\": true}", SD_SCHED_DDIM, 10, "thresholding"},
        {"{\"thresholding\": true}", SD_SCHED_DDPM, 10, "thresholding"},
        {"{\"use_karras_sigmas\": true}", SD_SCHED_EULER, 10, "use_karras_sigmas"},
        {"{\"interpolation_type\": \"log_linear\"}", SD_SCHED_EULER, 10, "interpolation_type"},
        {"{\"timestep_type\": \"continuous\", \"prediction_type\": \"v_prediction\"}", SD_SCHED_EULER, 10,
         "timestep_type"},
        {"{\"variance_type\": \"learned_range\"}", SD_SCHED_DDPM, 10, "variance_type"},
        {"{\"prediction_type\": \"sample\"}", SD_SCHED_PNDM, 10, "sample"},
        {"{}", SD_SCHED_DDIM, 0, "inference steps"},
        {"{}", SD_SCHED_DDIM, 1001, "inference steps"},
        {"{\"steps_offset\": 5}", SD_SCHED_DDIM, 1000, "steps_offset"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        sd_sched_t *s = s_sched_from_text(cases[c].json, cases[c].kind, cases[c].steps);
        CHECKF(s == NULL, "%s for %s should be refused", cases[c].json, sd_sched_kind_name(cases[c].kind));
        CHECKF(strstr(bt_log_last_error(), cases[c].what) && strstr(bt_log_last_error(), "scheduler_config.json"),
               "error line \"%s\" should name %s", bt_log_last_error(), cases[c].what);
        sd_sched_destroy(&s);
    }
    /* the same settings are ignored by samplers that do not read them (as in diffusers) */
    sd_sched_t *s = s_sched_from_text("{\"thresholding\": true, \"use_karras_sigmas\": true}", SD_SCHED_PNDM, 10);
    CHECK(s != NULL);
    sd_sched_destroy(&s);
    s = s_sched_from_text("{\"variance_type\": \"fixed_large\", \"clip_sample\": true}", SD_SCHED_DDPM, 10);
    CHECK(s != NULL);
    sd_sched_destroy(&s);
}
