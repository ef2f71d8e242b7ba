/*
 * scheduler.c — DDPM, DDIM, Euler discrete and PNDM/PLMS as diffusers 0.25.1
 * runs them on PyTorch 1.13 CPU, bit-for-bit where that is cheap.
 *
 * Where the reference's numbers come from:
 *   - betas: torch.linspace in float32, whose CPU kernel is not start + i*step
 *     (s_torch_linspace_f32 says what it is); the squared values then match the
 *     fixture exactly, plain float arithmetic is off by up to 3 ulp in 128 of 1000.
 *   - alphas_cumprod: torch's CPU cumprod accumulates float32 inputs in double
 *     (acc_type) and rounds each output; a float32 running product drifts from it.
 *   - timesteps: numpy float64 (linspace, arange, round-half-even), done in
 *     double here, including numpy's arange fill start + i*((start+step)-start).
 *   - sampler steps: 0-dim float32 tensor arithmetic on coefficients, then
 *     elementwise float32 ops, each rounded separately (no FMA contraction: C11
 *     mode compiles with -ffp-contract=off), in diffusers' order.
 */
#include "diffusion/scheduler.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/fileio.h"
#include "common/json.h"
#include "common/log.h"
#include "common/status.h"

#define S_MAX_TRAIN_TIMESTEPS (1 << 20)
#define S_PNDM_ORDER 4

struct sd_sched {
    sd_sched_kind_t kind;
    char *path; /* config origin, for error lines */
    sd_sched_table_t tab;
    sd_sched_pred_t pred;
    bool clip_sample;
    float clip_range;
    float final_alpha; /* a_prev when the previous timestep is < 0 */
    bool fixed_large;  /* DDPM variance_type */
    float eta;         /* DDIM */
    int n_inf;         /* num_inference_steps */
    int ratio;         /* N / n (integer): the step from t to the previous timestep */
    int ncalls;
    float *timesteps; /* [ncalls] */
    float *sigmas;    /* Euler: [ncalls + 1] */
    float init_sigma;

    /* PNDM running state (diffusers' counter, ets, cur_sample, cur_model_output) */
    bool prk;                 /* Runge-Kutta warm-up on (skip_prk_steps false) */
    int nprk;                 /* calls that are Runge-Kutta steps (12 or 0) */
    int counter;              /* calls done since reset */
    int64_t numel;            /* element count the buffers below hold; 0 = not allocated */
    float *ets[S_PNDM_ORDER]; /* last model outputs, ets[0] the oldest */
    int nets;
    float *cur_sample; /* x at the start of the current multi-call step */
    float *cur_output; /* PRK: weighted sum of the model outputs so far */
    float *comb;       /* the combined model output of this call */
    float *buf;        /* ets storage: S_PNDM_ORDER + 3 arrays of numel */
};

/* ------------------------------------------------------------------ names */

bool sd_sched_kind_parse(const char *name, sd_sched_kind_t *kind)
{
    static const struct {
        const char *name;
        sd_sched_kind_t kind;
    } names[] = {{"ddpm", SD_SCHED_DDPM},
                 {"ddim", SD_SCHED_DDIM},
                 {"euler", SD_SCHED_EULER},
                 {"pndm", SD_SCHED_PNDM},
                 {"plms", SD_SCHED_PNDM}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (name && !strcmp(name, names[i].name)) {
            *kind = names[i].kind;
            return true;
        }
    return false;
}

const char *sd_sched_kind_name(sd_sched_kind_t kind)
{
    switch (kind) {
    case SD_SCHED_DDPM: return "ddpm";
    case SD_SCHED_DDIM: return "ddim";
    case SD_SCHED_EULER: return "euler";
    case SD_SCHED_PNDM: return "pndm";
    }
    return "?";
}

bool sd_sched_kind_from_class(const char *class_name, sd_sched_kind_t *kind)
{
    static const struct {
        const char *name;
        sd_sched_kind_t kind;
    } names[] = {{"DDPMScheduler", SD_SCHED_DDPM},
                 {"DDIMScheduler", SD_SCHED_DDIM},
                 {"EulerDiscreteScheduler", SD_SCHED_EULER},
                 {"PNDMScheduler", SD_SCHED_PNDM}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (class_name && !strcmp(class_name, names[i].name)) {
            *kind = names[i].kind;
            return true;
        }
    return false;
}

/* ----------------------------------------------------------------- config */

void sd_sched_config_init(sd_sched_config_t *cfg)
{
    *cfg = (sd_sched_config_t){
        .num_train_timesteps = 1000,
        .beta_start = 0.0001,
        .beta_end = 0.02,
        .beta_schedule = SD_BETA_LINEAR,
        .prediction_type = SD_PRED_EPSILON,
        .timestep_spacing = SD_SPACING_LEADING,
        .set_alpha_to_one = true,
        .clip_sample = true,
        .clip_sample_range = 1.0,
    };
    cfg->path = strdup("<defaults>");
    strcpy(cfg->interpolation_type, "linear");
    strcpy(cfg->variance_type, "fixed_small");
    strcpy(cfg->timestep_type, "discrete");
}

void sd_sched_config_free(sd_sched_config_t *cfg)
{
    if (!cfg) return;
    free(cfg->path);
    free(cfg->trained_betas);
    cfg->path = NULL;
    cfg->trained_betas = NULL;
}

/* A string key copied into buf (truncation is an error: no known value is long). */
static int s_get_str(const bt_json_t *j, const char *key, char *buf, size_t cap)
{
    const char *v = NULL;
    int rc = bt_json_string(j, key, NULL, &v);
    if (rc || !v) return rc;
    if (strlen(v) >= cap) {
        bt_json_error(j, key, "is too long (%zu characters, at most %zu)", strlen(v), cap - 1);
        return BT_EFORMAT;
    }
    strcpy(buf, v);
    return BT_OK;
}

/* The JSON null is allowed where diffusers takes None. */
static int s_get_trained_betas(const bt_json_t *j, sd_sched_config_t *cfg)
{
    const cJSON *it = bt_json_get(j, "trained_betas");
    if (!it || cJSON_IsNull(it)) return BT_OK;
    if (!cJSON_IsArray(it)) {
        bt_json_error(j, "trained_betas", "must be null or an array of numbers, not %s", bt_json_type_name(it));
        return BT_EFORMAT;
    }
    int n = cJSON_GetArraySize(it);
    if (n != cfg->num_train_timesteps) {
        bt_json_error(j, "trained_betas", "has %d values, num_train_timesteps is %d", n, cfg->num_train_timesteps);
        return BT_EFORMAT;
    }
    cfg->trained_betas = bt_malloc((size_t)n * sizeof(float));
    if (!cfg->trained_betas) return BT_ENOMEM;
    int i = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, it)
    {
        if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0 && v->valuedouble < 1)) {
            if (cJSON_IsNumber(v))
                BT_ERROR("%s: 'trained_betas'[%d] is %.15g, must be in [0, 1)", j->name, i, v->valuedouble);
            else
                BT_ERROR("%s: 'trained_betas'[%d] must be a number in [0, 1), not %s", j->name, i,
                         bt_json_type_name(v));
            return BT_EFORMAT;
        }
        cfg->trained_betas[i++] = (float)v->valuedouble; /* torch.tensor(list, float32) */
    }
    cfg->present |= SD_SCHED_HAS_TRAINED_BETAS;
    return BT_OK;
}

/* A boolean whose presence is recorded in cfg->present (diffusers' defaults differ per sampler). */
static int s_get_flag(const bt_json_t *j, const char *key, bool *out, sd_sched_config_t *cfg, unsigned present)
{
    int rc = bt_json_bool(j, key, *out, out);
    if (rc == BT_OK && bt_json_get(j, key)) cfg->present |= present;
    return rc;
}

/* Absent keys keep the defaults sd_sched_config_init wrote. */
static int s_parse_object(sd_sched_config_t *cfg, const bt_json_t *j)
{
    static const char *const schedules[] = {"linear", "scaled_linear", "squaredcos_cap_v2"};
    static const char *const preds[] = {"epsilon", "v_prediction", "sample"};
    static const char *const spacings[] = {"leading", "trailing", "linspace"};
    int rc, e;
    if ((rc = s_get_str(j, "_class_name", cfg->class_name, sizeof cfg->class_name))) return rc;
    if ((rc = bt_json_int(j, "num_train_timesteps", cfg->num_train_timesteps, 2, S_MAX_TRAIN_TIMESTEPS,
                          &cfg->num_train_timesteps)))
        return rc;
    if ((rc = bt_json_double(j, "beta_start", cfg->beta_start, 0, 1, &cfg->beta_start))) return rc;
    if ((rc = bt_json_double(j, "beta_end", cfg->beta_end, 0, 1, &cfg->beta_end))) return rc;
    if ((rc = bt_json_enum(j, "beta_schedule", schedules, 3, (int)cfg->beta_schedule, &e))) return rc;
    cfg->beta_schedule = (sd_sched_beta_t)e;
    if ((rc = s_get_trained_betas(j, cfg))) return rc;
    if ((rc = bt_json_enum(j, "prediction_type", preds, 3, (int)cfg->prediction_type, &e))) return rc;
    cfg->prediction_type = (sd_sched_pred_t)e;
    if ((rc = bt_json_enum(j, "timestep_spacing", spacings, 3, (int)cfg->timestep_spacing, &e))) return rc;
    cfg->timestep_spacing = (sd_sched_spacing_t)e;
    if (bt_json_get(j, "timestep_spacing")) cfg->present |= SD_SCHED_HAS_TIMESTEP_SPACING;
    if ((rc = bt_json_int(j, "steps_offset", cfg->steps_offset, 0, S_MAX_TRAIN_TIMESTEPS, &cfg->steps_offset)))
        return rc;
    if ((rc = s_get_flag(j, "set_alpha_to_one", &cfg->set_alpha_to_one, cfg, SD_SCHED_HAS_SET_ALPHA_TO_ONE)) ||
        (rc = s_get_flag(j, "clip_sample", &cfg->clip_sample, cfg, SD_SCHED_HAS_CLIP_SAMPLE)))
        return rc;
    if ((rc = bt_json_double(j, "clip_sample_range", cfg->clip_sample_range, 0, INFINITY, &cfg->clip_sample_range)))
        return rc;
    if ((rc = s_get_flag(j, "skip_prk_steps", &cfg->skip_prk_steps, cfg, SD_SCHED_HAS_SKIP_PRK_STEPS))) return rc;
    if ((rc = bt_json_bool(j, "thresholding", cfg->thresholding, &cfg->thresholding)) ||
        (rc = bt_json_bool(j, "rescale_betas_zero_snr", cfg->rescale_betas_zero_snr, &cfg->rescale_betas_zero_snr)) ||
        (rc = bt_json_bool(j, "use_karras_sigmas", cfg->use_karras_sigmas, &cfg->use_karras_sigmas)))
        return rc;
    if ((rc = s_get_str(j, "interpolation_type", cfg->interpolation_type, sizeof cfg->interpolation_type)) ||
        (rc = s_get_str(j, "variance_type", cfg->variance_type, sizeof cfg->variance_type)) ||
        (rc = s_get_str(j, "timestep_type", cfg->timestep_type, sizeof cfg->timestep_type)))
        return rc;
    return BT_OK;
}

int sd_sched_config_parse(sd_sched_config_t *cfg, const char *json, size_t len, const char *origin)
{
    sd_sched_config_free(cfg);
    sd_sched_config_init(cfg);
    free(cfg->path);
    cfg->path = strdup(origin ? origin : "<memory>");
    if (!cfg->path) return BT_ENOMEM;
    bt_json_t j;
    int rc = bt_json_parse(&j, json, len, cfg->path);
    if (rc == BT_OK) {
        j.null_is_absent = false; /* a null is an error, except where diffusers takes None (trained_betas) */
        rc = bt_json_use_defaults(&j, "_use_default_values");
    }
    if (rc == BT_OK) rc = s_parse_object(cfg, &j);
    bt_json_free(&j);
    if (rc) {
        /* leave defaults, keeping the origin for the caller's messages */
        char *path = cfg->path;
        cfg->path = NULL;
        sd_sched_config_free(cfg);
        sd_sched_config_init(cfg);
        free(cfg->path);
        cfg->path = path;
    }
    return rc;
}

int sd_sched_config_load(sd_sched_config_t *cfg, const char *path)
{
    char *data = NULL;
    size_t len = 0;
    int rc = bt_read_file(path, &data, &len);
    if (rc) {
        sd_sched_config_free(cfg);
        sd_sched_config_init(cfg);
        return rc;
    }
    rc = sd_sched_config_parse(cfg, data, len, path);
    free(data);
    return rc;
}

/* ----------------------------------------------------------------- tables */

/*
 * torch.linspace(start, end, n, dtype=float32) as PyTorch 1.13's CPU kernel
 * computes it on an AVX2 machine (the reference's): with step = (end-start)/(n-1)
 * in float, element i is start + step*i below n/2 and end - step*(n-1-i) from
 * n/2 on, each a fused multiply-add (the kernel file is built with -mfma and
 * GCC contracts). The vectorised loop, which covers the first floor(n/16)*16
 * elements, evaluates that only at the first index of each 8-lane vector and
 * fills the lanes with base + j*step (fused too), taking the side of the split
 * from the vector's first index. This reproduces SD's 1000 betas bit for bit.
 */
static void s_torch_linspace_f32(float *out, double start_d, double end_d, int n)
{
    float start = (float)start_d, end = (float)end_d;
    if (n == 1) {
        out[0] = start;
        return;
    }
    float step = (end - start) / (float)(n - 1);
    int half = n / 2, nvec = n / 16 * 16;
    for (int i = 0; i < n; i++) {
        if (i < nvec && i % 8 != 0)
            out[i] = fmaf((float)(i % 8), step, out[i - i % 8]);
        else if (i < half)
            out[i] = fmaf(step, (float)i, start);
        else
            out[i] = fmaf(-step, (float)(n - 1 - i), end);
    }
}

/* torch.cumprod of a float32 tensor on CPU: the running product is a double. */
static void s_cumprod_alphas(float *ac, const float *betas, int n)
{
    double p = 1.0;
    for (int i = 0; i < n; i++) {
        p *= (double)(1.0f - betas[i]);
        ac[i] = (float)p;
    }
}

/* diffusers' betas_for_alpha_bar (cosine), in Python float64, then to float32. */
static void s_squaredcos_betas(float *betas, int n)
{
    for (int i = 0; i < n; i++) {
        double t1 = (double)i / n, t2 = (double)(i + 1) / n;
        double c1 = cos((t1 + 0.008) / 1.008 * M_PI / 2), c2 = cos((t2 + 0.008) / 1.008 * M_PI / 2);
        double b = 1 - (c2 * c2) / (c1 * c1);
        betas[i] = (float)(b < 0.999 ? b : 0.999);
    }
}

/* diffusers' rescale_zero_terminal_snr (Lin et al. 2023, algorithm 1) in torch float32:
 * shift and scale sqrt(alphas_cumprod) so the last is 0 and the first unchanged. */
static int s_rescale_zero_snr(float *betas, int n)
{
    float *s = bt_malloc((size_t)n * sizeof *s);
    if (!s) return BT_ENOMEM;
    s_cumprod_alphas(s, betas, n);
    for (int i = 0; i < n; i++)
        s[i] = sqrtf(s[i]);
    float s0 = s[0], sT = s[n - 1];
    float scale = s0 / (s0 - sT);
    for (int i = 0; i < n; i++)
        s[i] = (s[i] - sT) * scale;
    float prev = 0;
    for (int i = 0; i < n; i++) {
        float ab = s[i] * s[i];
        float alpha = i == 0 ? ab : ab / prev;
        betas[i] = 1.0f - alpha;
        prev = ab;
    }
    free(s);
    return BT_OK;
}

void sd_sched_table_free(sd_sched_table_t *tab)
{
    if (!tab) return;
    free(tab->betas);
    free(tab->alphas_cumprod);
    tab->betas = tab->alphas_cumprod = NULL;
    tab->num_train_timesteps = 0;
}

int sd_sched_table_init(sd_sched_table_t *tab, const sd_sched_config_t *cfg, sd_sched_kind_t kind)
{
    int n = cfg->num_train_timesteps;
    *tab = (sd_sched_table_t){.num_train_timesteps = n};
    tab->betas = bt_malloc((size_t)n * sizeof(float));
    tab->alphas_cumprod = bt_malloc((size_t)n * sizeof(float));
    if (!tab->betas || !tab->alphas_cumprod) {
        sd_sched_table_free(tab);
        return BT_ENOMEM;
    }
    if (cfg->trained_betas) {
        memcpy(tab->betas, cfg->trained_betas, (size_t)n * sizeof(float));
    } else {
        switch (cfg->beta_schedule) {
        case SD_BETA_LINEAR: s_torch_linspace_f32(tab->betas, cfg->beta_start, cfg->beta_end, n); break;
        case SD_BETA_SCALED_LINEAR:
            s_torch_linspace_f32(tab->betas, sqrt(cfg->beta_start), sqrt(cfg->beta_end), n);
            for (int i = 0; i < n; i++)
                tab->betas[i] *= tab->betas[i];
            break;
        case SD_BETA_SQUAREDCOS_CAP_V2: s_squaredcos_betas(tab->betas, n); break;
        }
    }
    for (int i = 0; i < n; i++)
        if (!(tab->betas[i] >= 0 && tab->betas[i] < 1)) {
            BT_ERROR("%s: beta[%d] = %g is outside [0, 1)", cfg->path, i, (double)tab->betas[i]);
            sd_sched_table_free(tab);
            return BT_EFORMAT;
        }
    if (cfg->rescale_betas_zero_snr && kind != SD_SCHED_PNDM) {
        int rc = s_rescale_zero_snr(tab->betas, n);
        if (rc) {
            sd_sched_table_free(tab);
            return rc;
        }
    }
    s_cumprod_alphas(tab->alphas_cumprod, tab->betas, n);
    /* Euler: sigma = sqrt((1-a)/a) must stay finite at the zero-SNR end */
    if (kind == SD_SCHED_EULER && cfg->rescale_betas_zero_snr) tab->alphas_cumprod[n - 1] = 0x1p-24f;
    return BT_OK;
}

static int s_check_t(const sd_sched_table_t *tab, const int64_t *t, int64_t B, const char *what)
{
    for (int64_t b = 0; b < B; b++)
        if (t[b] < 0 || t[b] >= tab->num_train_timesteps) {
            BT_ERROR("%s: timestep[%lld] = %lld is outside [0, %d)", what, (long long)b, (long long)t[b],
                     tab->num_train_timesteps);
            return BT_EINVAL;
        }
    return BT_OK;
}

int sd_sched_add_noise(const sd_sched_table_t *tab, float *out, const float *x0, const float *eps, const int64_t *t,
                       int64_t B, int64_t n)
{
    int rc = s_check_t(tab, t, B, "add_noise");
    if (rc) return rc;
    for (int64_t b = 0; b < B; b++) {
        float a = tab->alphas_cumprod[t[b]];
        float sa = sqrtf(a), sb = sqrtf(1.0f - a);
        for (int64_t i = b * n; i < (b + 1) * n; i++)
            out[i] = sa * x0[i] + sb * eps[i];
    }
    return BT_OK;
}

int sd_sched_get_velocity(const sd_sched_table_t *tab, float *out, const float *x0, const float *eps, const int64_t *t,
                          int64_t B, int64_t n)
{
    int rc = s_check_t(tab, t, B, "get_velocity");
    if (rc) return rc;
    for (int64_t b = 0; b < B; b++) {
        float a = tab->alphas_cumprod[t[b]];
        float sa = sqrtf(a), sb = sqrtf(1.0f - a);
        for (int64_t i = b * n; i < (b + 1) * n; i++)
            out[i] = sa * eps[i] - sb * x0[i];
    }
    return BT_OK;
}

int sd_sched_snr(const sd_sched_table_t *tab, float *snr, const int64_t *t, int64_t B)
{
    int rc = s_check_t(tab, t, B, "snr");
    if (rc) return rc;
    for (int64_t b = 0; b < B; b++) {
        float a = tab->alphas_cumprod[t[b]];
        float r = sqrtf(a) / sqrtf(1.0f - a);
        snr[b] = r * r;
    }
    return BT_OK;
}

/* -------------------------------------------------------------- timesteps */

/*
 * The n "base" timesteps of numpy's spacing formulas, descending, as float64
 * before any rounding (N = num_train_timesteps):
 *   leading   k*(N//n) + steps_offset, k = n-1..0
 *   trailing  round(arange(N, 0, -N/n)) - 1   (numpy fills arange as
 *             start + i*((start+step)-start); round is half-to-even)
 *   linspace  linspace(0, N-1, n) reversed: i*((N-1)/(n-1)), the last exactly N-1
 * Linspace values are left unrounded (Euler keeps them fractional).
 */
static void s_base_timesteps(double *ts, sd_sched_spacing_t spacing, int N, int n, int offset)
{
    switch (spacing) {
    case SD_SPACING_LEADING:
        for (int k = 0; k < n; k++)
            ts[n - 1 - k] = (double)k * (N / n) + offset;
        break;
    case SD_SPACING_TRAILING: {
        double start = N, second = (double)N + -((double)N / n), d = second - start;
        for (int i = 0; i < n; i++) {
            double v = i == 0 ? start : i == 1 ? second : start + i * d;
            ts[i] = nearbyint(v) - 1;
        }
        break;
    }
    case SD_SPACING_LINSPACE: {
        double step = n > 1 ? (double)(N - 1) / (n - 1) : 0;
        for (int i = 0; i < n; i++)
            ts[n - 1 - i] = (n > 1 && i == n - 1) ? (double)(N - 1) : i * step;
        break;
    }
    }
}

/* np.interp(x, arange(N), fp) */
static double s_interp(double x, const float *fp, int N)
{
    if (x <= 0) return fp[0];
    if (x >= N - 1) return fp[N - 1];
    int j = (int)floor(x);
    if (x == j) return fp[j];
    double slope = ((double)fp[j + 1] - fp[j]) / 1.0;
    return slope * (x - j) + fp[j];
}

/* PNDM's call list from the ascending base timesteps ts[n]; returns the count. */
static int s_pndm_timesteps(float *out, const int64_t *ts, int n, bool prk, int N)
{
    int k = 0;
    if (!prk) {
        /* concat(ts[:-1], ts[-2:-1], ts[-1:]) reversed: the second-to-last repeats */
        out[k++] = (float)ts[n - 1];
        if (n >= 2) out[k++] = (float)ts[n - 2];
        for (int i = n - 2; i >= 0; i--)
            out[k++] = (float)ts[i];
        return k;
    }
    /* prk: ts[-4:] each followed by itself + N//n//2, then [:-1].repeat(2)[1:-1] reversed */
    int64_t p[2 * S_PNDM_ORDER];
    for (int i = 0; i < S_PNDM_ORDER; i++) {
        p[2 * i] = ts[n - S_PNDM_ORDER + i];
        p[2 * i + 1] = ts[n - S_PNDM_ORDER + i] + N / n / 2;
    }
    int64_t q[14];
    for (int i = 0; i < 7; i++)
        q[2 * i] = q[2 * i + 1] = p[i];
    for (int i = 12; i >= 1; i--)
        out[k++] = (float)q[i]; /* q[1..12] reversed */
    for (int i = n - S_PNDM_ORDER; i >= 0; i--)
        out[k++] = (float)ts[i]; /* ts[:-3] reversed */
    return k;
}

/* ---------------------------------------------------------------- sampler */

void sd_sched_destroy(sd_sched_t **ps)
{
    if (!ps || !*ps) return;
    sd_sched_t *s = *ps;
    sd_sched_table_free(&s->tab);
    free(s->timesteps);
    free(s->sigmas);
    free(s->buf);
    free(s->path);
    free(s);
    *ps = NULL;
}

/* Settings that this kind reads, with its class's defaults for absent keys;
 * an error for the ones booth does not implement. */
static int s_resolve(sd_sched_t *s, const sd_sched_config_t *cfg, sd_sched_spacing_t *spacing)
{
    const char *kn = sd_sched_kind_name(s->kind);
    unsigned has = cfg->present;
    *spacing = (has & SD_SCHED_HAS_TIMESTEP_SPACING) ? cfg->timestep_spacing
               : s->kind == SD_SCHED_EULER           ? SD_SPACING_LINSPACE
                                                     : SD_SPACING_LEADING;
    s->pred = cfg->prediction_type;
    if (s->kind == SD_SCHED_DDPM || s->kind == SD_SCHED_DDIM) {
        if (cfg->thresholding) {
            BT_ERROR("%s: thresholding true is not supported (%s sampler)", cfg->path, kn);
            return BT_EUNSUPPORTED;
        }
        s->clip_sample = (has & SD_SCHED_HAS_CLIP_SAMPLE) ? cfg->clip_sample : true;
        s->clip_range = (float)cfg->clip_sample_range;
    }
    if (s->kind == SD_SCHED_DDPM) {
        if (!strcmp(cfg->variance_type, "fixed_large"))
            s->fixed_large = true;
        else if (strcmp(cfg->variance_type, "fixed_small")) {
            BT_ERROR("%s: variance_type \"%s\" is not supported (ddpm sampler: fixed_small, fixed_large)", cfg->path,
                     cfg->variance_type);
            return BT_EUNSUPPORTED;
        }
    }
    if (s->kind == SD_SCHED_DDIM || s->kind == SD_SCHED_PNDM) {
        bool one = (has & SD_SCHED_HAS_SET_ALPHA_TO_ONE) ? cfg->set_alpha_to_one : s->kind == SD_SCHED_DDIM;
        s->final_alpha = one ? 1.0f : s->tab.alphas_cumprod[0];
    } else {
        s->final_alpha = 1.0f;
    }
    if (s->kind == SD_SCHED_EULER) {
        if (cfg->use_karras_sigmas) {
            BT_ERROR("%s: use_karras_sigmas true is not supported (euler sampler)", cfg->path);
            return BT_EUNSUPPORTED;
        }
        if (strcmp(cfg->interpolation_type, "linear")) {
            BT_ERROR("%s: interpolation_type \"%s\" is not supported (euler sampler: linear)", cfg->path,
                     cfg->interpolation_type);
            return BT_EUNSUPPORTED;
        }
        if (strcmp(cfg->timestep_type, "discrete") &&
            (strcmp(cfg->timestep_type, "continuous") || s->pred == SD_PRED_V)) {
            BT_ERROR("%s: timestep_type \"%s\" is not supported (euler sampler%s)", cfg->path, cfg->timestep_type,
                     s->pred == SD_PRED_V ? " with v_prediction" : "");
            return BT_EUNSUPPORTED;
        }
    }
    if (s->kind == SD_SCHED_PNDM) {
        if (s->pred == SD_PRED_SAMPLE) {
            BT_ERROR("%s: prediction_type \"sample\" is not supported by the pndm sampler", cfg->path);
            return BT_EUNSUPPORTED;
        }
        s->prk = (has & SD_SCHED_HAS_SKIP_PRK_STEPS) ? !cfg->skip_prk_steps : true;
    }
    return BT_OK;
}

static int s_build_timesteps(sd_sched_t *s, sd_sched_spacing_t spacing, int steps_offset)
{
    int N = s->tab.num_train_timesteps, n = s->n_inf;
    double *base = bt_malloc((size_t)n * sizeof *base);
    int64_t *asc = bt_malloc((size_t)n * sizeof *asc);
    s->timesteps = bt_malloc((size_t)(n + 9) * sizeof(float));
    if (s->kind == SD_SCHED_EULER) s->sigmas = bt_malloc((size_t)(n + 1) * sizeof(float));
    int rc = BT_ENOMEM;
    if (!base || !asc || !s->timesteps || (s->kind == SD_SCHED_EULER && !s->sigmas)) goto out_free;
    s_base_timesteps(base, spacing, N, n, steps_offset);
    rc = BT_OK;
    if (s->kind == SD_SCHED_EULER) {
        /* numpy float32 timesteps; sigma table in torch float32; interp in float64 */
        float *sig = bt_malloc((size_t)N * sizeof *sig);
        if (!sig) {
            rc = BT_ENOMEM;
            goto out_free;
        }
        for (int t = 0; t < N; t++) {
            float a = s->tab.alphas_cumprod[t];
            sig[t] = sqrtf((1.0f - a) / a);
        }
        float smax = 0;
        for (int i = 0; i < n; i++) {
            s->timesteps[i] = (float)base[i];
            s->sigmas[i] = (float)s_interp(s->timesteps[i], sig, N);
            if (s->sigmas[i] > smax) smax = s->sigmas[i];
        }
        s->sigmas[n] = 0.0f;
        free(sig);
        s->ncalls = n;
        s->init_sigma = spacing == SD_SPACING_LEADING ? sqrtf(smax * smax + 1.0f) : smax;
        goto out_free;
    }
    /* integer timesteps (np.round then int64); they index the table */
    for (int i = 0; i < n; i++) {
        asc[n - 1 - i] = (int64_t)nearbyint(base[i]);
        if (asc[n - 1 - i] < 0 || asc[n - 1 - i] >= N) {
            BT_ERROR("%s: %d inference steps with steps_offset %d give timestep %lld, outside [0, %d)", s->path, n,
                     steps_offset, (long long)asc[n - 1 - i], N);
            rc = BT_EINVAL;
            goto out_free;
        }
    }
    if (s->kind == SD_SCHED_PNDM) {
        if (s->prk && n < S_PNDM_ORDER) {
            BT_ERROR("%s: pndm with Runge-Kutta steps (skip_prk_steps false) needs at least %d steps, not %d", s->path,
                     S_PNDM_ORDER, n);
            rc = BT_EINVAL;
            goto out_free;
        }
        s->ncalls = s_pndm_timesteps(s->timesteps, asc, n, s->prk, N);
        s->nprk = s->prk ? 12 : 0;
        /* PRK's half steps may pass the top of the table */
        for (int i = 0; i < s->ncalls; i++)
            if (s->timesteps[i] >= (float)N) {
                BT_ERROR("%s: pndm timestep %g is outside [0, %d)", s->path, (double)s->timesteps[i], N);
                rc = BT_EINVAL;
                goto out_free;
            }
    } else {
        for (int i = 0; i < n; i++)
            s->timesteps[i] = (float)asc[n - 1 - i];
        s->ncalls = n;
    }
    s->init_sigma = 1.0f;
out_free:
    free(base);
    free(asc);
    return rc;
}

sd_sched_t *sd_sched_new(const sd_sched_config_t *cfg, sd_sched_kind_t kind, int num_inference_steps)
{
    if (kind < SD_SCHED_DDPM || kind > SD_SCHED_PNDM) {
        BT_ERROR("sd_sched_new: unknown sampler kind %d", (int)kind);
        return NULL;
    }
    int N = cfg->num_train_timesteps;
    if (num_inference_steps < 1 || num_inference_steps > N) {
        BT_ERROR("%s: %d inference steps: must be in [1, num_train_timesteps = %d]", cfg->path, num_inference_steps, N);
        return NULL;
    }
    sd_sched_t *s = bt_calloc(1, sizeof *s);
    if (!s) return NULL;
    s->kind = kind;
    s->n_inf = num_inference_steps;
    s->ratio = N / num_inference_steps;
    s->path = strdup(cfg->path ? cfg->path : "<config>");
    if (!s->path || sd_sched_table_init(&s->tab, cfg, kind)) goto out_destroy;
    sd_sched_spacing_t spacing;
    if (s_resolve(s, cfg, &spacing)) goto out_destroy;
    if (s_build_timesteps(s, spacing, cfg->steps_offset)) goto out_destroy;
    return s;
out_destroy:
    sd_sched_destroy(&s);
    return NULL;
}

sd_sched_kind_t sd_sched_kind(const sd_sched_t *s)
{
    return s->kind;
}
int sd_sched_num_inference_steps(const sd_sched_t *s)
{
    return s->n_inf;
}
int sd_sched_num_steps(const sd_sched_t *s)
{
    return s->ncalls;
}
const float *sd_sched_timesteps(const sd_sched_t *s)
{
    return s->timesteps;
}
const float *sd_sched_sigmas(const sd_sched_t *s)
{
    return s->sigmas;
}
float sd_sched_init_noise_sigma(const sd_sched_t *s)
{
    return s->init_sigma;
}
float sd_sched_final_alpha_cumprod(const sd_sched_t *s)
{
    return s->final_alpha;
}
const sd_sched_table_t *sd_sched_get_table(const sd_sched_t *s)
{
    return &s->tab;
}

int sd_sched_set_eta(sd_sched_t *s, float eta)
{
    if (s->kind != SD_SCHED_DDIM || !(eta >= 0 && eta <= 1)) {
        BT_ERROR("%s sampler: eta %g: only ddim takes an eta, in [0, 1]", sd_sched_kind_name(s->kind), (double)eta);
        return BT_EINVAL;
    }
    s->eta = eta;
    return BT_OK;
}

void sd_sched_reset(sd_sched_t *s)
{
    s->counter = 0;
    s->nets = 0;
}

static int s_check_step(const sd_sched_t *s, int step_index, int64_t n)
{
    if (step_index < 0 || step_index >= s->ncalls || n <= 0) {
        BT_ERROR("%s sampler: step %d of %d with %lld elements", sd_sched_kind_name(s->kind), step_index, s->ncalls,
                 (long long)n);
        return BT_EINVAL;
    }
    return BT_OK;
}

int sd_sched_scale_model_input(const sd_sched_t *s, float *out, const float *x, int step_index, int64_t n)
{
    int rc = s_check_step(s, step_index, n);
    if (rc) return rc;
    if (s->kind == SD_SCHED_EULER) {
        float sigma = s->sigmas[step_index];
        float d = sqrtf(sigma * sigma + 1.0f);
        for (int64_t i = 0; i < n; i++)
            out[i] = x[i] / d;
    } else if (out != x) {
        memcpy(out, x, (size_t)n * sizeof *out);
    }
    return BT_OK;
}

static float s_clamp(float v, float r)
{
    return v < -r ? -r : v > r ? r : v;
}

static float s_alpha(const sd_sched_t *s, int t)
{
    return t >= 0 ? s->tab.alphas_cumprod[t] : s->final_alpha;
}

static int s_step_ddpm(sd_sched_t *s, float *x_prev, float *pred_x0, const float *x, const float *m, const float *noise,
                       int step_index, int64_t n)
{
    int t = (int)s->timesteps[step_index], prev_t = t - s->ratio;
    if (t > 0 && !noise) {
        BT_ERROR("ddpm sampler: step %d (t = %d) needs noise", step_index, t);
        return BT_EINVAL;
    }
    float a_t = s->tab.alphas_cumprod[t], a_prev = s_alpha(s, prev_t);
    float beta_t = 1.0f - a_t, beta_prev = 1.0f - a_prev;
    float cur_alpha = a_t / a_prev, cur_beta = 1.0f - cur_alpha;
    float sa = sqrtf(a_t), sb = sqrtf(beta_t);
    float c0 = sqrtf(a_prev) * cur_beta / beta_t;
    float c1 = sqrtf(cur_alpha) * beta_prev / beta_t;
    float std = 0;
    if (t > 0) {
        float var = beta_prev / beta_t * cur_beta;
        var = var < 1e-20f ? 1e-20f : var;
        std = sqrtf(s->fixed_large ? cur_beta : var);
    }
    for (int64_t i = 0; i < n; i++) {
        float xi = x[i], mi = m[i], x0;
        switch (s->pred) {
        case SD_PRED_EPSILON: x0 = (xi - sb * mi) / sa; break;
        case SD_PRED_V: x0 = sa * xi - sb * mi; break;
        default: x0 = mi; break;
        }
        if (s->clip_sample) x0 = s_clamp(x0, s->clip_range);
        float mean = c0 * x0 + c1 * xi;
        if (t > 0) mean = mean + std * noise[i];
        if (pred_x0) pred_x0[i] = x0;
        x_prev[i] = mean;
    }
    return BT_OK;
}

static int s_step_ddim(sd_sched_t *s, float *x_prev, float *pred_x0, const float *x, const float *m, const float *noise,
                       int step_index, int64_t n)
{
    int t = (int)s->timesteps[step_index], prev_t = t - s->ratio;
    if (s->eta > 0 && !noise) {
        BT_ERROR("ddim sampler: eta %g needs noise (step %d)", (double)s->eta, step_index);
        return BT_EINVAL;
    }
    float a_t = s->tab.alphas_cumprod[t], a_prev = s_alpha(s, prev_t);
    float beta_t = 1.0f - a_t, beta_prev = 1.0f - a_prev;
    float sa = sqrtf(a_t), sb = sqrtf(beta_t);
    float var = beta_prev / beta_t * (1.0f - a_t / a_prev);
    float std = s->eta * sqrtf(var);
    float cdir = sqrtf(1.0f - a_prev - std * std), cx0 = sqrtf(a_prev);
    for (int64_t i = 0; i < n; i++) {
        float xi = x[i], mi = m[i], x0, e;
        switch (s->pred) {
        case SD_PRED_EPSILON:
            x0 = (xi - sb * mi) / sa;
            e = mi;
            break;
        case SD_PRED_V:
            x0 = sa * xi - sb * mi;
            e = sa * mi + sb * xi;
            break;
        default:
            x0 = mi;
            e = (xi - sa * x0) / sb;
            break;
        }
        if (s->clip_sample) x0 = s_clamp(x0, s->clip_range);
        float v = cx0 * x0 + cdir * e;
        if (s->eta > 0) v = v + std * noise[i];
        if (pred_x0) pred_x0[i] = x0;
        x_prev[i] = v;
    }
    return BT_OK;
}

static int s_step_euler(sd_sched_t *s, float *x_prev, float *pred_x0, const float *x, const float *m, int step_index,
                        int64_t n)
{
    /* s_churn = 0: gamma = 0, sigma_hat = sigma, no noise */
    float sigma = s->sigmas[step_index], dt = s->sigmas[step_index + 1] - sigma;
    float s2p1 = sigma * sigma + 1.0f;
    float cv = -sigma / sqrtf(s2p1);
    for (int64_t i = 0; i < n; i++) {
        float xi = x[i], mi = m[i], x0;
        switch (s->pred) {
        case SD_PRED_EPSILON: x0 = xi - sigma * mi; break;
        case SD_PRED_V: x0 = mi * cv + xi / s2p1; break;
        default: x0 = mi; break;
        }
        float deriv = (xi - x0) / sigma;
        if (pred_x0) pred_x0[i] = x0;
        x_prev[i] = xi + deriv * dt;
    }
    return BT_OK;
}

/* PNDM's transfer from t to prev_t (diffusers' _get_prev_sample) with the
 * combined model output e (converted per element from v-prediction). */
static void s_pndm_transfer(const sd_sched_t *s, float *x_prev, float *pred_x0, const float *x, const float *e, int t,
                            int prev_t, int64_t n)
{
    float a_t = s->tab.alphas_cumprod[t], a_prev = s_alpha(s, prev_t);
    float beta_t = 1.0f - a_t, beta_prev = 1.0f - a_prev;
    float sa = sqrtf(a_t), sb = sqrtf(beta_t);
    float sc = sqrtf(a_prev / a_t);
    float denom = a_t * sqrtf(beta_prev) + sqrtf(a_t * beta_t * a_prev);
    float diff = a_prev - a_t;
    for (int64_t i = 0; i < n; i++) {
        float xi = x[i], ei = e[i];
        if (s->pred == SD_PRED_V) ei = sa * ei + sb * xi;
        if (pred_x0) pred_x0[i] = (xi - sb * ei) / sa;
        x_prev[i] = sc * xi - diff * ei / denom;
    }
}

static int s_pndm_alloc(sd_sched_t *s, int64_t n)
{
    if (s->numel == n) return BT_OK;
    if (s->counter != 0) {
        BT_ERROR("pndm sampler: step %d has %lld elements, earlier steps had %lld (reset between images)", s->counter,
                 (long long)n, (long long)s->numel);
        return BT_ESHAPE;
    }
    free(s->buf);
    s->numel = 0;
    s->buf = bt_malloc((size_t)n * (S_PNDM_ORDER + 3) * sizeof(float));
    if (!s->buf) {
        BT_ERROR("pndm sampler: cannot allocate history for %lld elements", (long long)n);
        return BT_ENOMEM;
    }
    for (int k = 0; k < S_PNDM_ORDER; k++)
        s->ets[k] = s->buf + k * n;
    s->cur_sample = s->buf + S_PNDM_ORDER * n;
    s->cur_output = s->buf + (S_PNDM_ORDER + 1) * n;
    s->comb = s->buf + (S_PNDM_ORDER + 2) * n;
    s->numel = n;
    return BT_OK;
}

/* ets.append(m), keeping the last S_PNDM_ORDER (diffusers keeps ets[-3:] + new). */
static void s_pndm_push(sd_sched_t *s, const float *m, int64_t n)
{
    if (s->nets == S_PNDM_ORDER) {
        float *oldest = s->ets[0];
        memmove(s->ets, s->ets + 1, (S_PNDM_ORDER - 1) * sizeof s->ets[0]);
        s->ets[S_PNDM_ORDER - 1] = oldest;
        s->nets--;
    }
    memcpy(s->ets[s->nets++], m, (size_t)n * sizeof *m);
}

/* One Runge-Kutta call (diffusers' step_prk): four calls make one RK4 step of
 * size N//n from prk_timesteps[counter//4*4], always from the sample that
 * started it. */
static void s_pndm_prk(sd_sched_t *s, float *x_prev, float *pred_x0, const float *x, const float *m, int64_t n)
{
    int c = s->counter;
    int t_arg = (int)s->timesteps[c];
    int prev_t = t_arg - (c % 2 ? 0 : s->ratio / 2);
    int t = (int)s->timesteps[c / 4 * 4];
    const float sixth = (float)(1.0 / 6), third = (float)(1.0 / 3);
    const float *e = m; /* calls 0-2 of a step transfer with their own output */
    switch (c % 4) {
    case 0:
        for (int64_t i = 0; i < n; i++)
            s->cur_output[i] = sixth * m[i];
        s_pndm_push(s, m, n);
        memcpy(s->cur_sample, x, (size_t)n * sizeof *x);
        break;
    case 1:
    case 2:
        for (int64_t i = 0; i < n; i++)
            s->cur_output[i] = s->cur_output[i] + third * m[i];
        break;
    default:
        for (int64_t i = 0; i < n; i++)
            s->comb[i] = s->cur_output[i] + sixth * m[i];
        e = s->comb;
        break;
    }
    s_pndm_transfer(s, x_prev, pred_x0, s->cur_sample, e, t, prev_t, n);
}

/* One linear multistep call (diffusers' step_plms). */
static void s_pndm_plms(sd_sched_t *s, float *x_prev, float *pred_x0, const float *x, const float *m, int64_t n)
{
    int c = s->counter;
    int t = (int)s->timesteps[c], prev_t = t - s->ratio;
    const float *sample = x;
    float *e = s->comb;
    if (c != 1) {
        s_pndm_push(s, m, n);
    } else {
        /* the repeated timestep: redo the first step from its start sample with
         * the average of both outputs */
        prev_t = t;
        t = t + s->ratio;
    }
    const float *e1 = s->ets[s->nets - 1];
    if (s->nets == 1 && c == 0) {
        memcpy(e, m, (size_t)n * sizeof *m);
        memcpy(s->cur_sample, x, (size_t)n * sizeof *x);
    } else if (s->nets == 1 && c == 1) {
        for (int64_t i = 0; i < n; i++)
            e[i] = (m[i] + e1[i]) / 2.0f;
        sample = s->cur_sample;
    } else if (s->nets == 2) {
        const float *e2 = s->ets[0];
        for (int64_t i = 0; i < n; i++)
            e[i] = (3.0f * e1[i] - e2[i]) / 2.0f;
    } else if (s->nets == 3) {
        const float *e2 = s->ets[1], *e3 = s->ets[0];
        for (int64_t i = 0; i < n; i++)
            e[i] = (23.0f * e1[i] - 16.0f * e2[i] + 5.0f * e3[i]) / 12.0f;
    } else {
        const float *e2 = s->ets[2], *e3 = s->ets[1], *e4 = s->ets[0];
        const float k = (float)(1.0 / 24);
        for (int64_t i = 0; i < n; i++)
            e[i] = k * (55.0f * e1[i] - 59.0f * e2[i] + 37.0f * e3[i] - 9.0f * e4[i]);
    }
    s_pndm_transfer(s, x_prev, pred_x0, sample, e, t, prev_t, n);
}

static int s_step_pndm(sd_sched_t *s, float *x_prev, float *pred_x0, const float *x, const float *m, int step_index,
                       int64_t n)
{
    if (step_index != s->counter) {
        BT_ERROR("pndm sampler: step %d called, expected step %d (pndm steps must run in order; reset to restart)",
                 step_index, s->counter);
        return BT_EINVAL;
    }
    int rc = s_pndm_alloc(s, n);
    if (rc) return rc;
    if (s->counter < s->nprk)
        s_pndm_prk(s, x_prev, pred_x0, x, m, n);
    else
        s_pndm_plms(s, x_prev, pred_x0, x, m, n);
    s->counter++;
    return BT_OK;
}

int sd_sched_step(sd_sched_t *s, float *x_prev, float *pred_x0, const float *x, const float *model_output,
                  const float *noise, int step_index, int64_t n)
{
    int rc = s_check_step(s, step_index, n);
    if (rc) return rc;
    switch (s->kind) {
    case SD_SCHED_DDPM: return s_step_ddpm(s, x_prev, pred_x0, x, model_output, noise, step_index, n);
    case SD_SCHED_DDIM: return s_step_ddim(s, x_prev, pred_x0, x, model_output, noise, step_index, n);
    case SD_SCHED_EULER: return s_step_euler(s, x_prev, pred_x0, x, model_output, step_index, n);
    case SD_SCHED_PNDM: return s_step_pndm(s, x_prev, pred_x0, x, model_output, step_index, n);
    }
    return BT_EINTERNAL;
}
