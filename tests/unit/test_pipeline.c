/*
 * test_pipeline.c — the whole text-to-image run against the reference: the
 * oracle's 5-step DDIM run with CFG 7.5 on the tiny model, from its prompt and
 * initial latents to the decoded image; and batch independence of seeds.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "diffusion/pipeline.h"
#include "nn/memory.h"
#include "testutil.h"

typedef struct {
    const float *want; /* step_latents [5, 1, 4, 16, 16] */
    int64_t per;
    double worst;
    int steps;
} s_steps_t;

static void s_progress(void *user, int done, int total, const float *latents)
{
    s_steps_t *s = user;
    char what[64];
    snprintf(what, sizeof what, "latents after step %d of %d", done, total);
    double d = tu_check_close(what, latents, s->want + (done - 1) * s->per, s->per, 1e-3);
    if (d > s->worst) s->worst = d;
    s->steps = done;
}

TEST(pipeline_matches_oracle)
{
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    REQUIRE(ctx);
    sd_model_t *m = sd_model_load(ctx, tu_fixture_path("tiny-sd"), SD_PART_ALL);
    REQUIRE(m);
    CHECK_INT_EQ(m->default_sampler, SD_SCHED_PNDM);
    st_file_t *fx = tu_fixture("oracle/pipeline.safetensors");
    REQUIRE(fx);
    int64_t n;
    float *lat = tu_load_f32(fx, "initial_latents", &n);
    float *embeds_want = tu_load_f32(fx, "prompt_embeds", NULL);
    float *steps_want = tu_load_f32(fx, "step_latents", NULL);
    float *image_want = tu_load_f32(fx, "image", NULL);
    float *raw_want = tu_load_f32(fx, "decoded_raw", NULL);

    /* prompt embeddings through the tokenizer and text encoder: [uncond; cond] */
    float *embeds = nn_alloc(ctx, 2 * 77 * 32 * sizeof(float));
    REQUIRE(sd_encode_prompt(m, embeds, "", 0) == 0);
    REQUIRE(sd_encode_prompt(m, embeds + 77 * 32, "a photo of sks dog", 0) == 0);
    tu_check_close("prompt_embeds", embeds, embeds_want, 2 * 77 * 32, 1e-4);

    s_steps_t st = {.want = steps_want, .per = n};
    sd_sample_params_t p = {.guidance = 7.5f, .steps = 5, .sampler = SD_SCHED_DDIM, .progress = s_progress,
                            .progress_user = &st};
    REQUIRE(sd_sample(m, &p, embeds + 77 * 32, embeds, 77, lat, true, 1, 16, 16) == 0);
    CHECK_INT_EQ(st.steps, 5);
    float *img = malloc(3 * 128 * 128 * sizeof(float)), *raw = malloc(3 * 128 * 128 * sizeof(float));
    REQUIRE(sd_decode(m, img, raw, lat, 1, 16, 16) == 0);
    tu_check_close("decoded_raw", raw, raw_want, 3 * 128 * 128, 1e-3);
    /* the reference image is NHWC */
    float *nhwc = malloc(3 * 128 * 128 * sizeof(float));
    for (int c = 0; c < 3; c++)
        for (int i = 0; i < 128 * 128; i++) nhwc[i * 3 + c] = img[c * 128 * 128 + i];
    double d = tu_check_close("image", nhwc, image_want, 3 * 128 * 128, 1e-3);
    printf("step latents: worst %.3g; image: max abs %.3g\n", st.worst, d);

    free(nhwc);
    free(img);
    free(raw);
    nn_free(ctx, embeds);
    free(lat);
    free(embeds_want);
    free(steps_want);
    free(image_want);
    free(raw_want);
    st_close(&fx);
    sd_model_destroy(&m);
    nn_ctx_destroy(&ctx);
}

/* Image i of a batch equals image i generated alone (its noise is its own stream). */
TEST(pipeline_seed_independent_of_batch)
{
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    REQUIRE(ctx);
    sd_model_t *m = sd_model_load(ctx, tu_fixture_path("tiny-sd"), SD_PART_ALL);
    REQUIRE(m);
    float *embeds = nn_alloc(ctx, 2 * 77 * 32 * sizeof(float));
    REQUIRE(sd_encode_prompt(m, embeds, "", 0) == 0);
    REQUIRE(sd_encode_prompt(m, embeds + 77 * 32, "a sks dog in the snow", 0) == 0);
    const int64_t per = 4 * 8 * 12; /* non-square latents */
    float both[2 * 4 * 8 * 12], second[4 * 8 * 12];
    for (int k = 0; k < 3; k++) {
        sd_sched_kind_t kinds[3] = {SD_SCHED_PNDM, SD_SCHED_EULER, SD_SCHED_DDPM};
        sd_sample_params_t p = {.guidance = 5.0f, .steps = 4, .sampler = kinds[k], .seed = 42};
        REQUIRE(sd_sample(m, &p, embeds + 77 * 32, embeds, 77, both, false, 2, 8, 12) == 0);
        p.first_index = 1;
        REQUIRE(sd_sample(m, &p, embeds + 77 * 32, embeds, 77, second, false, 1, 8, 12) == 0);
        char what[64];
        snprintf(what, sizeof what, "%s: image 1 of a batch of 2 vs alone", sd_sched_kind_name(kinds[k]));
        /* same image up to float rounding (BLAS may sum a batch of 2 in another order) */
        tu_check_close(what, second, both + per, per, 2e-6 * tu_max_abs(second, per) + 1e-6);
        CHECK(tu_max_abs_diff(both, both + per, per) > 0.1); /* and the two images differ */
    }
    nn_free(ctx, embeds);
    sd_model_destroy(&m);
    nn_ctx_destroy(&ctx);
}

/* cond_per_image: image k of a batch follows prompt k, as if generated alone with it. */
TEST(pipeline_one_prompt_per_image)
{
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    REQUIRE(ctx);
    sd_model_t *m = sd_model_load(ctx, tu_fixture_path("tiny-sd"), SD_PART_ALL);
    REQUIRE(m);
    float *embeds = nn_alloc(ctx, 3 * 77 * 32 * sizeof(float)); /* uncond, prompt 0, prompt 1 */
    REQUIRE(sd_encode_prompt(m, embeds, "", 0) == 0);
    REQUIRE(sd_encode_prompt(m, embeds + 77 * 32, "a sks dog in the snow", 0) == 0);
    REQUIRE(sd_encode_prompt(m, embeds + 2 * 77 * 32, "a red star on a blue background", 0) == 0);
    const int64_t per = 4 * 8 * 8;
    float both[2 * 4 * 8 * 8], alone[4 * 8 * 8];
    sd_sample_params_t p = {.guidance = 3.0f, .steps = 3, .sampler = SD_SCHED_DDIM, .seed = 9, .first_index = 4,
                            .cond_per_image = true};
    REQUIRE(sd_sample(m, &p, embeds + 77 * 32, embeds, 77, both, false, 2, 8, 8) == 0);
    p.cond_per_image = false;
    for (int k = 0; k < 2; k++) {
        p.first_index = 4 + k;
        REQUIRE(sd_sample(m, &p, embeds + (1 + k) * 77 * 32, embeds, 77, alone, false, 1, 8, 8) == 0);
        tu_check_close(k ? "image 1, prompt 1" : "image 0, prompt 0", alone, both + k * per, per,
                       2e-6 * tu_max_abs(alone, per) + 1e-6);
    }
    /* and prompt 1 matters: image 1 with prompt 0 is another picture */
    REQUIRE(sd_sample(m, &p, embeds + 77 * 32, embeds, 77, alone, false, 1, 8, 8) == 0);
    CHECK(tu_max_abs_diff(alone, both + per, per) > 1e-3);
    nn_free(ctx, embeds);
    sd_model_destroy(&m);
    nn_ctx_destroy(&ctx);
}

TEST(model_folder_errors)
{
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    REQUIRE(ctx);
    sd_model_t *m = sd_model_load(ctx, "/nonexistent/model", SD_PART_ALL);
    CHECK(m == NULL);
    CHECK(strstr(bt_log_last_error(), "model_index.json") != NULL);
    nn_ctx_destroy(&ctx);
}
