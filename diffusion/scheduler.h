/*
 * scheduler.h — the noise schedulers of diffusers 0.25.1 that Stable Diffusion
 * ships with or users pick: DDPM (ancestral), DDIM, Euler discrete and PNDM (PLMS,
 * optionally with its Runge-Kutta warm-up), built from a model folder's
 * scheduler/scheduler_config.json, plus the training side (add_noise,
 * get_velocity, SNR).
 *
 * Three layers:
 *   sd_sched_config_t  what the JSON file says (caller-owned: _init/_load/_free);
 *   sd_sched_table_t   betas and alphas_cumprod for N training timesteps;
 *   sd_sched_t         a sampler of one kind for one num_inference_steps.
 *
 * The sampler kind need not be the config's _class_name (`booth generate
 * --sampler` picks one); as with diffusers' from_config, the file's numbers are
 * shared and a key the file does not give takes the default of the *sampler's*
 * class. Four keys have class-dependent defaults: timestep_spacing (Euler:
 * linspace, others: leading), clip_sample (DDPM/DDIM: true), set_alpha_to_one
 * (DDIM: true, PNDM: false) and skip_prk_steps (PNDM: false). Keys listed in the
 * file's "_use_default_values" count as absent, as diffusers does.
 *
 * Numerics: everything is host float32. The tables reproduce torch's float32
 * bits (see scheduler.c for the linspace and cumprod details). Per-element math
 * is float32 in the same order of operations as diffusers (whose scalar
 * coefficients are 0-dim float32 tensors), with the scalar coefficients computed
 * in float32 too: that reproduces the reference to a few ulps, closer than
 * double arithmetic would (the reference itself is float32). Only the
 * index-space arithmetic numpy does in float64 (timestep spacing, sigma
 * interpolation, squaredcos_cap_v2 betas) is done in double here.
 *
 * Known diffusers 0.25.1 behaviours kept on purpose: DDPM/DDIM/PNDM step from t
 * to t - N/n (integer division) whatever the spacing; steps_offset only shifts
 * "leading" timesteps. One deliberately not kept: for some n (61, 103, ...),
 * numpy's float arange gives "trailing" spacing an extra timestep -1; booth takes
 * exactly n timesteps.
 */
#ifndef BOOTH_DIFFUSION_SCHEDULER_H
#define BOOTH_DIFFUSION_SCHEDULER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum sd_sched_kind { SD_SCHED_DDPM, SD_SCHED_DDIM, SD_SCHED_EULER, SD_SCHED_PNDM } sd_sched_kind_t;

typedef enum sd_sched_beta {
    SD_BETA_LINEAR,            /* linspace(beta_start, beta_end, N) */
    SD_BETA_SCALED_LINEAR,     /* linspace(sqrt(beta_start), sqrt(beta_end), N)^2 (SD) */
    SD_BETA_SQUAREDCOS_CAP_V2, /* Nichol & Dhariwal's cosine schedule, betas capped at 0.999 */
} sd_sched_beta_t;

typedef enum sd_sched_pred {
    SD_PRED_EPSILON, /* the model predicts the noise */
    SD_PRED_V,       /* v = sqrt(a)*eps - sqrt(1-a)*x0 (SD 2.x 768) */
    SD_PRED_SAMPLE,  /* the model predicts x0 (not for PNDM) */
} sd_sched_pred_t;

typedef enum sd_sched_spacing { SD_SPACING_LEADING, SD_SPACING_TRAILING, SD_SPACING_LINSPACE } sd_sched_spacing_t;

/* Bits of sd_sched_config_t.present: which keys the file gave. */
enum {
    SD_SCHED_HAS_TIMESTEP_SPACING = 1u << 0,
    SD_SCHED_HAS_CLIP_SAMPLE = 1u << 1,
    SD_SCHED_HAS_SET_ALPHA_TO_ONE = 1u << 2,
    SD_SCHED_HAS_SKIP_PRK_STEPS = 1u << 3,
    SD_SCHED_HAS_TRAINED_BETAS = 1u << 4,
};

typedef struct sd_sched_config {
    char *path;                  /* origin named in error lines (malloc'd) */
    char class_name[64];         /* _class_name, "" if absent */
    int num_train_timesteps;     /* N */
    double beta_start, beta_end; /* as written (float64, like Python) */
    sd_sched_beta_t beta_schedule;
    float *trained_betas; /* [N] when given: replaces beta_schedule; else NULL */
    sd_sched_pred_t prediction_type;
    sd_sched_spacing_t timestep_spacing; /* meaningful only with SD_SCHED_HAS_TIMESTEP_SPACING */
    int steps_offset;                    /* added to "leading" timesteps (SD 1.x: 1) */
    bool set_alpha_to_one;               /* DDIM/PNDM: alpha_prev past t=0 is 1, else alphas_cumprod[0] */
    bool clip_sample;                    /* DDPM/DDIM: clamp predicted x0 to +-clip_sample_range */
    double clip_sample_range;
    bool skip_prk_steps;         /* PNDM: false = 3 Runge-Kutta steps (12 UNet calls) first */
    bool thresholding;           /* DDPM/DDIM dynamic thresholding: unsupported, rejected */
    bool rescale_betas_zero_snr; /* DDPM/DDIM/Euler: rescale to zero terminal SNR */
    bool use_karras_sigmas;      /* Euler: unsupported, rejected */
    char interpolation_type[32]; /* Euler: only "linear" */
    char variance_type[32];      /* DDPM: "fixed_small" or "fixed_large" */
    char timestep_type[32];      /* Euler: "discrete", or "continuous" (rejected with v_prediction) */
    unsigned present;            /* SD_SCHED_HAS_* */
} sd_sched_config_t;

/* SD-neutral defaults (those of diffusers' DDPMScheduler), path "<defaults>". */
void sd_sched_config_init(sd_sched_config_t *cfg);
/* Replaces *cfg (which must be initialised or zeroed) with the file's settings.
 * Returns 0, BT_ENOTFOUND/BT_EIO (file), BT_EFORMAT (not JSON, a key of the wrong
 * type, a value out of range or unknown) with one line naming the file and key.
 * Unknown keys are ignored. On failure *cfg holds defaults. */
int sd_sched_config_load(sd_sched_config_t *cfg, const char *path);
/* The same from memory; origin is used in error lines. */
int sd_sched_config_parse(sd_sched_config_t *cfg, const char *json, size_t len, const char *origin);
void sd_sched_config_free(sd_sched_config_t *cfg);

/* "ddpm", "ddim", "euler", "pndm" (also "plms"). No log line: the caller knows
 * where the name came from. */
bool sd_sched_kind_parse(const char *name, sd_sched_kind_t *kind);
const char *sd_sched_kind_name(sd_sched_kind_t kind);
/* DDPMScheduler, DDIMScheduler, EulerDiscreteScheduler, PNDMScheduler. */
bool sd_sched_kind_from_class(const char *class_name, sd_sched_kind_t *kind);

/* ---- tables ---- */

typedef struct sd_sched_table {
    int num_train_timesteps; /* N */
    float *betas;            /* [N] */
    float *alphas_cumprod;   /* [N] a_t = prod_{s<=t} (1 - beta_s) */
} sd_sched_table_t;

/* The tables the scheduler class `kind` builds from cfg: the same for every kind
 * except that PNDM ignores rescale_betas_zero_snr (diffusers' PNDM has no such
 * option) and Euler replaces a zero final alphas_cumprod by 2^-24. Training uses
 * SD_SCHED_DDPM (diffusers' DreamBooth script loads a DDPMScheduler). Returns 0,
 * BT_EFORMAT (betas outside [0, 1)) or BT_ENOMEM. */
int sd_sched_table_init(sd_sched_table_t *tab, const sd_sched_config_t *cfg, sd_sched_kind_t kind);
void sd_sched_table_free(sd_sched_table_t *tab);

/* Training. x0, eps, out: [B, n] (n elements per batch item); t: [B] in [0, N).
 * out may alias x0 or eps. Returns 0 or BT_EINVAL (a timestep out of range).
 *   add_noise:    out = sqrt(a_t)*x0 + sqrt(1-a_t)*eps
 *   get_velocity: out = sqrt(a_t)*eps - sqrt(1-a_t)*x0  (v-prediction target) */
int sd_sched_add_noise(const sd_sched_table_t *tab, float *out, const float *x0, const float *eps, const int64_t *t,
                       int64_t B, int64_t n);
int sd_sched_get_velocity(const sd_sched_table_t *tab, float *out, const float *x0, const float *eps, const int64_t *t,
                          int64_t B, int64_t n);
/* snr[b] = a_t/(1-a_t), computed as diffusers' compute_snr does ((sqrt(a)/sqrt(1-a))^2
 * in float32), for min-SNR loss weighting. Returns 0 or BT_EINVAL. */
int sd_sched_snr(const sd_sched_table_t *tab, float *snr, const int64_t *t, int64_t B);

/* ---- samplers ---- */

typedef struct sd_sched sd_sched_t;

/* A sampler of `kind` for num_inference_steps steps. NULL with one log line for
 * settings this kind cannot honour (thresholding, karras sigmas, an unsupported
 * variance or interpolation type, PNDM with prediction "sample", PNDM with
 * Runge-Kutta steps and fewer than 4 steps, num_inference_steps outside [1, N],
 * a timestep past the table). */
sd_sched_t *sd_sched_new(const sd_sched_config_t *cfg, sd_sched_kind_t kind, int num_inference_steps);
void sd_sched_destroy(sd_sched_t **s);

sd_sched_kind_t sd_sched_kind(const sd_sched_t *s);
int sd_sched_num_inference_steps(const sd_sched_t *s);
/* Number of model calls = entries of sd_sched_timesteps: num_inference_steps,
 * except PNDM: n+1 with PLMS only (the second timestep repeats), n+9 with its
 * Runge-Kutta warm-up. */
int sd_sched_num_steps(const sd_sched_t *s);
/* The timestep to give the model at each call (integers except Euler with
 * linspace spacing); [sd_sched_num_steps]. */
const float *sd_sched_timesteps(const sd_sched_t *s);
/* Euler: sigma at each call plus a final 0, [sd_sched_num_steps + 1]; NULL otherwise. */
const float *sd_sched_sigmas(const sd_sched_t *s);
/* Multiply standard normal noise by this to get the starting latents (1 except Euler). */
float sd_sched_init_noise_sigma(const sd_sched_t *s);
/* alphas_cumprod used past t = 0: DDPM 1, DDIM/PNDM per set_alpha_to_one, Euler 1. */
float sd_sched_final_alpha_cumprod(const sd_sched_t *s);
const sd_sched_table_t *sd_sched_get_table(const sd_sched_t *s);

/* DDIM only: eta > 0 adds that fraction of the ancestral noise (then sd_sched_step
 * needs `noise`). Default 0. Returns 0 or BT_EINVAL. */
int sd_sched_set_eta(sd_sched_t *s, float eta);

/* out = the model input for call step_index: x/sqrt(sigma^2+1) for Euler, x
 * otherwise. out may alias x. x, out: [n]. Returns 0 or BT_EINVAL. */
int sd_sched_scale_model_input(const sd_sched_t *s, float *out, const float *x, int step_index, int64_t n);

/*
 * One sampler step: x_prev from the current sample x and the model's output for
 * call step_index. x_prev may alias x (in place). pred_x0 (may be NULL) receives
 * the predicted clean sample (PNDM: the x0 implied by its combined noise
 * estimate; not in diffusers, for previews). noise: standard normal [n], needed
 * by DDPM for t > 0 and by DDIM with eta > 0; NULL otherwise. x, model_output,
 * noise, x_prev, pred_x0: [n] (the whole batch shares the timestep).
 *
 * PNDM keeps the previous model outputs inside the object: its calls must come in
 * order 0, 1, 2, ... with the same n until sd_sched_reset. The other kinds are
 * stateless. Returns 0, BT_EINVAL (step out of range or out of order, missing
 * noise), BT_ESHAPE (PNDM: n changed) or BT_ENOMEM.
 */
int sd_sched_step(sd_sched_t *s, float *x_prev, float *pred_x0, const float *x, const float *model_output,
                  const float *noise, int step_index, int64_t n);
/* Forget PNDM's history (start a new image). No-op for the other kinds. */
void sd_sched_reset(sd_sched_t *s);

#endif
