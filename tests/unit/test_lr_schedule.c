/*
 * test_lr_schedule.c — the learning-rate schedules against diffusers' get_scheduler
 * (transformers' formulas in diffusers/optimization.py). The expected values were computed in
 * Python with those lr_lambda functions, as LambdaLR applies them (base lr 1e-4, 10 warm-up steps,
 * 100 training steps):
 *
 *   polynomial: step < W: step / max(1, W); step > T: lr_end / lr_init; else
 *               ((lr_init - lr_end) * (1 - (step - W) / (T - W)) ** power + lr_end) / lr_init
 *   cosine_with_restarts: step < W: step / max(1, W); progress = (step - W) / max(1, T - W);
 *               0 if progress >= 1 else max(0, 0.5 * (1 + cos(pi * ((num_cycles * progress) % 1))))
 *   cosine:     max(0, 0.5 * (1 + cos(pi * 0.5 * 2 * progress)))  (num_cycles is never passed to it)
 */
#include <math.h>
#include <string.h>

#include "diffusion/optim.h"
#include "diffusion/train.h"
#include "testutil.h"

typedef struct {
    sd_lr_sched_t s;
    int64_t step;
    int cycles;
    float power;
    double want;
} s_case_t;

static const s_case_t s_cases[] = {
    {SD_LR_POLYNOMIAL, 0, 1, 1.0f, 0.0},
    {SD_LR_POLYNOMIAL, 5, 1, 1.0f, 5e-05},
    {SD_LR_POLYNOMIAL, 10, 1, 1.0f, 0.0001},
    {SD_LR_POLYNOMIAL, 37, 1, 1.0f, 7.003e-05},
    {SD_LR_POLYNOMIAL, 55, 1, 1.0f, 5.005000000000001e-05},
    {SD_LR_POLYNOMIAL, 99, 1, 1.0f, 1.209999999999996e-06},
    {SD_LR_POLYNOMIAL, 100, 1, 1.0f, 9.999999999999998e-08},
    {SD_LR_POLYNOMIAL, 101, 1, 1.0f, 9.999999999999998e-08},
    {SD_LR_POLYNOMIAL, 150, 1, 1.0f, 9.999999999999998e-08},
    {SD_LR_POLYNOMIAL, 37, 1, 2.0f, 4.9050999999999995e-05},
    {SD_LR_POLYNOMIAL, 55, 1, 2.0f, 2.5075e-05},
    {SD_LR_POLYNOMIAL, 99, 1, 2.0f, 1.1233333333333324e-07},
    {SD_LR_POLYNOMIAL, 37, 1, 0.5f, 8.368233665075415e-05},
    {SD_LR_POLYNOMIAL, 55, 1, 0.5f, 7.07399674405361e-05},
    {SD_LR_POLYNOMIAL, 99, 1, 0.5f, 1.0630384608360686e-05},
    {SD_LR_COSINE_RESTARTS, 0, 1, 1.0f, 0.0},
    {SD_LR_COSINE_RESTARTS, 5, 1, 1.0f, 5e-05},
    {SD_LR_COSINE_RESTARTS, 10, 1, 1.0f, 0.0001},
    {SD_LR_COSINE_RESTARTS, 25, 1, 1.0f, 9.330127018922194e-05},
    {SD_LR_COSINE_RESTARTS, 32, 1, 1.0f, 8.596699001693255e-05},
    {SD_LR_COSINE_RESTARTS, 40, 1, 1.0f, 7.500000000000001e-05},
    {SD_LR_COSINE_RESTARTS, 55, 1, 1.0f, 5e-05},
    {SD_LR_COSINE_RESTARTS, 70, 1, 1.0f, 2.500000000000001e-05},
    {SD_LR_COSINE_RESTARTS, 99, 1, 1.0f, 3.04586490452119e-08},
    {SD_LR_COSINE_RESTARTS, 100, 1, 1.0f, 0.0},
    {SD_LR_COSINE_RESTARTS, 120, 1, 1.0f, 0.0},
    {SD_LR_COSINE_RESTARTS, 25, 3, 1.0f, 5e-05},
    {SD_LR_COSINE_RESTARTS, 32, 3, 1.0f, 1.6543469682057106e-05},
    {SD_LR_COSINE_RESTARTS, 40, 3, 1.0f, 0.0001},
    {SD_LR_COSINE_RESTARTS, 55, 3, 1.0f, 5e-05},
    {SD_LR_COSINE_RESTARTS, 70, 3, 1.0f, 0.0001},
    {SD_LR_COSINE_RESTARTS, 99, 3, 1.0f, 2.7390523158633e-07},
    /* cosine takes no cycles or power: the same values whatever they are */
    {SD_LR_COSINE, 10, 3, 2.0f, 0.0001},
    {SD_LR_COSINE, 33, 3, 2.0f, 8.473291852294987e-05},
    {SD_LR_COSINE, 55, 1, 1.0f, 5e-05},
    {SD_LR_COSINE, 77, 1, 1.0f, 1.526708147705013e-05},
    {SD_LR_COSINE, 100, 1, 1.0f, 0.0},
    /* nor do the others */
    {SD_LR_LINEAR, 55, 3, 2.0f, 5e-05},
    {SD_LR_CONSTANT_WARMUP, 5, 3, 2.0f, 5e-05},
    {SD_LR_CONSTANT, 5, 3, 2.0f, 1e-4},
};

TEST(lr_schedules_match_diffusers)
{
    for (size_t i = 0; i < sizeof s_cases / sizeof s_cases[0]; i++) {
        const s_case_t *c = &s_cases[i];
        float got = sd_lr_at_ex(c->s, 1e-4f, c->step, 10, 100, c->cycles, c->power);
        /* the factor is exact in double; the lr is a float, and the base lr 1e-4f is not Python's 1e-4 */
        CHECKF(fabs((double)got - c->want) <= 1e-6 * c->want + 1e-13, "%s step %lld cycles %d power %g: %.9g, want %.9g",
               sd_lr_sched_name(c->s), (long long)c->step, c->cycles, (double)c->power, (double)got, c->want);
    }
    /* the optimizer's lr is the same function of its config */
    sd_optim_config_t oc = {.learning_rate = 1e-4f, .lr_scheduler = SD_LR_COSINE_RESTARTS, .lr_warmup_steps = 10,
                            .max_train_steps = 100, .lr_num_cycles = 3, .lr_power = 1.0f};
    CHECK(sd_optim_lr(&oc, 32) == sd_lr_at_ex(SD_LR_COSINE_RESTARTS, 1e-4f, 32, 10, 100, 3, 1.0f));
    /* the defaults (num_cycles 1, power 1) are sd_lr_at's */
    CHECK(sd_lr_at(SD_LR_POLYNOMIAL, 1e-4f, 37, 10, 100) == sd_lr_at_ex(SD_LR_POLYNOMIAL, 1e-4f, 37, 10, 100, 1, 1.0f));
    /* no warm-up and no decay steps (step == total == warm-up): the factor 1, not a division by zero */
    CHECK(sd_lr_at_ex(SD_LR_POLYNOMIAL, 1e-4f, 10, 10, 10, 1, 1.0f) == 1e-4f);
}

TEST(lr_schedule_names)
{
    const char *names[] = {"constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"};
    for (int i = 0; i < 6; i++) {
        sd_lr_sched_t s;
        CHECK(sd_lr_sched_parse(names[i], &s) && !strcmp(sd_lr_sched_name(s), names[i]));
    }
    sd_lr_sched_t s;
    CHECK(!sd_lr_sched_parse("exponential", &s));
    CHECK(!sd_lr_sched_parse("piecewise_constant", &s));
}
