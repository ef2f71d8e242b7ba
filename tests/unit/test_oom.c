/*
 * test_oom.c — out of memory is never silent and never changes a result.
 *
 * The runner is linked with -Wl,--wrap for malloc, calloc, realloc,
 * posix_memalign and aligned_alloc (Makefile), so every allocation booth's own
 * code makes passes through here. A scenario (load the tiny model and draw an
 * image; train two steps with a checkpoint and write the LoRA) runs once to
 * record every allocation site (the caller's address) in the order first met;
 * then, for each site, a forked child runs it again with the first allocation
 * from that site failing. Each child must end one of two ways:
 *   - it fails, and said so: at least one error line was logged;
 *   - it succeeds with the same result as the reference run (the same image
 *     digest, the same LoRA file bytes): a failure it recovered from may cost
 *     time (a smaller buffer, a copy instead of a shared frame), never a
 *     different result.
 * A crash (NULL dereference), a hang or a silent failure fails the test, naming
 * the site (addr2line turns the address into a line).
 */
#include <dlfcn.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/fileio.h"
#include "common/hash.h"
#include "common/log.h"
#include "diffusion/checkpoint.h"
#include "diffusion/loop.h"
#include "diffusion/pipeline.h"
#include "diffusion/train.h"
#include "nn/nn.h"
#include "test.h"
#include "testutil.h"

/* ---- the wrappers ---- */

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t m);
void *__real_realloc(void *p, size_t n);
int __real_posix_memalign(void **p, size_t a, size_t n);
void *__real_aligned_alloc(size_t a, size_t n);

enum { S_OFF, S_RECORD, S_FAIL };
#define S_MAX_SITES 8192
static int s_mode = S_OFF;
static void *s_sites[S_MAX_SITES];
static int s_nsites;
static void *s_fail_site;
static atomic_int s_failed;

static bool s_should_fail(void *site)
{
    if (s_mode == S_RECORD) {
        for (int i = s_nsites - 1; i >= 0; i--)
            if (s_sites[i] == site) return false;
        if (s_nsites < S_MAX_SITES) s_sites[s_nsites++] = site;
        return false;
    }
    if (s_mode == S_FAIL && site == s_fail_site) {
        int was = 0;
        return atomic_compare_exchange_strong(&s_failed, &was, 1);
    }
    return false;
}

void *__wrap_malloc(size_t n)
{
    if (s_mode && s_should_fail(__builtin_return_address(0))) return errno = ENOMEM, NULL;
    return __real_malloc(n);
}

void *__wrap_calloc(size_t n, size_t m)
{
    if (s_mode && s_should_fail(__builtin_return_address(0))) return errno = ENOMEM, NULL;
    return __real_calloc(n, m);
}

void *__wrap_realloc(void *p, size_t n)
{
    if (s_mode && s_should_fail(__builtin_return_address(0))) return errno = ENOMEM, NULL;
    return __real_realloc(p, n);
}

int __wrap_posix_memalign(void **p, size_t a, size_t n)
{
    if (s_mode && s_should_fail(__builtin_return_address(0))) return ENOMEM;
    return __real_posix_memalign(p, a, n);
}

void *__wrap_aligned_alloc(size_t a, size_t n)
{
    if (s_mode && s_should_fail(__builtin_return_address(0))) return errno = ENOMEM, NULL;
    return __real_aligned_alloc(a, n);
}

/* ---- counting log lines ---- */

static atomic_int s_errors;

static void s_sink(bt_log_level_t level, const char *msg, void *user)
{
    (void)user;
    if (level <= BT_LOG_WARN) atomic_fetch_add(&s_errors, 1);
    fprintf(stderr, "booth: %s\n", msg);
}

/* ---- the scenarios: 0 and a digest of the result, or an error ---- */

typedef int (*s_scenario_fn)(const char *dir, uint64_t *digest);

static int s_generate(const char *dir, uint64_t *digest)
{
    (void)dir;
    int rc = BT_ENOMEM;
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 1);
    sd_model_t *m = ctx ? sd_model_load(ctx, tu_fixture_path("tiny-sd"), SD_PART_ALL) : NULL;
    float *cond = NULL, *uncond = NULL, *lat = NULL, *img = NULL;
    if (!m) goto out;
    int64_t T = sd_prompt_tokens(m), C = m->clip->cfg.hidden_size, L = m->unet->cfg.in_channels, h = 2, w = 2;
    cond = nn_alloc(ctx, (size_t)(T * C) * sizeof(float));
    uncond = nn_alloc(ctx, (size_t)(T * C) * sizeof(float));
    lat = malloc((size_t)(L * h * w) * sizeof(float));
    img = malloc((size_t)(3 * 8 * h * 8 * w) * sizeof(float));
    if (!cond || !uncond || !lat || !img) {
        BT_ERROR("test: out of memory");
        goto out;
    }
    if ((rc = sd_encode_prompt(m, cond, "a photo of sks robot", 0)) || (rc = sd_encode_prompt(m, uncond, "", 0)))
        goto out;
    sd_sample_params_t p = {.guidance = 7.5f, .steps = 2, .sampler = m->default_sampler, .seed = 7};
    if ((rc = sd_sample(m, &p, cond, uncond, T, lat, false, 1, h, w)) || (rc = sd_decode(m, img, NULL, lat, 1, h, w)))
        goto out;
    *digest = bt_xxh64(img, (size_t)(3 * 8 * h * 8 * w) * sizeof(float), 0);
out:
    if (cond) nn_free(ctx, cond);
    if (uncond) nn_free(ctx, uncond);
    free(lat);
    free(img);
    sd_model_destroy(&m);
    nn_ctx_destroy(&ctx);
    return rc;
}

static int s_train(const char *dir, uint64_t *digest)
{
    int rc = BT_ENOMEM;
    char out[600], lora[700];
    snprintf(out, sizeof out, "%s/train", dir);
    sd_train_config_t c;
    sd_train_config_defaults(&c);
    c.model_dir = tu_fixture_path("tiny-sd");
    c.instance_dir = "scripts/demo/subject";
    c.instance_prompt = "a photo of sks robot";
    c.resolution = 16;
    c.max_train_steps = 2;
    c.checkpointing_steps = 1;
    c.rank = 2;
    c.seed = 5;
    sd_train_config_resolve(&c);
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 1);
    sd_model_t *m = ctx ? sd_model_load(ctx, c.model_dir, SD_PART_ALL) : NULL;
    sd_trainer_t *t = NULL;
    sd_optim_t *o = NULL;
    sd_loop_t *loop = NULL;
    sd_train_history_t hist = {0};
    sd_model_ids_t ids;
    memset(&ids, 0, sizeof ids);
    if (!m || (rc = sd_model_ids(c.model_dir, &ids))) goto out;
    rc = BT_ENOMEM;
    if (!(t = sd_trainer_new(&m, &c, NULL, NULL)) || !(o = sd_trainer_optim(t))) goto out;
    if (!(loop = sd_loop_new_in(out, NULL, &t->cfg, NULL, &hist, false))) goto out;
    if ((rc = sd_train_local(t, o, loop, &ids, NULL))) goto out;
    snprintf(lora, sizeof lora, "%s/pytorch_lora_weights.safetensors", out);
    rc = bt_xxh64_file(lora, digest);
out:
    sd_loop_destroy(&loop);
    sd_history_free(&hist);
    sd_optim_destroy(&o);
    sd_trainer_destroy(&t);
    sd_model_destroy(&m);
    nn_ctx_destroy(&ctx);
    return rc;
}

/* Runs fn in a child with site failing (NULL: none); the child writes its status,
 * its error-line count and its digest to a pipe. False if it crashed or hung. */
typedef struct {
    int rc, errors, failed;
    uint64_t digest;
} s_outcome_t;

static bool s_run(s_scenario_fn fn, const char *dir, void *site, int mode, s_outcome_t *res)
{
    int fds[2];
    if (pipe(fds)) return false;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        bt_log_set_sink(s_sink, NULL);
        bt_log_set_level(BT_LOG_WARN);
        char sub[700];
        snprintf(sub, sizeof sub, "rm -rf '%s/train'", dir);
        if (system(sub)) _exit(99);
        s_outcome_t r = {0};
        s_fail_site = site;
        s_mode = mode;
        r.rc = fn(dir, &r.digest);
        s_mode = S_OFF;
        r.errors = atomic_load(&s_errors);
        r.failed = atomic_load(&s_failed);
        if (write(fds[1], &r, sizeof r) != (ssize_t)sizeof r) _exit(98);
        if (mode == S_RECORD && (write(fds[1], &s_nsites, sizeof s_nsites) != (ssize_t)sizeof s_nsites ||
                                 write(fds[1], s_sites, (size_t)s_nsites * sizeof *s_sites) < 0))
            _exit(97);
        _exit(0);
    }
    close(fds[1]);
    bool ok = read(fds[0], res, sizeof *res) == (ssize_t)sizeof *res;
    if (ok && mode == S_RECORD) {
        ok = read(fds[0], &s_nsites, sizeof s_nsites) == (ssize_t)sizeof s_nsites;
        size_t want = (size_t)s_nsites * sizeof *s_sites, got = 0;
        while (ok && got < want) {
            ssize_t k = read(fds[0], (char *)s_sites + got, want - got);
            if (k <= 0) ok = false;
            got += k > 0 ? (size_t)k : 0;
        }
    }
    close(fds[0]);
    int st;
    waitpid(pid, &st, 0);
    return ok && WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

/* "FILE+0xOFFSET": what addr2line -e FILE takes (the runner is position-independent). */
static const char *s_where(void *site)
{
    static char buf[600];
    Dl_info info;
    if (dladdr(site, &info) && info.dli_fname)
        snprintf(buf, sizeof buf, "%s+%#lx", info.dli_fname, (unsigned long)((char *)site - (char *)info.dli_fbase));
    else
        snprintf(buf, sizeof buf, "%p", site);
    return buf;
}

static void s_check(const char *what, s_scenario_fn fn)
{
    const char *dir = tu_tmpdir();
    s_outcome_t ref;
    REQUIRE(s_run(fn, dir, NULL, S_RECORD, &ref));
    REQUIRE(ref.rc == 0);
    int nsites = s_nsites, failed_loudly = 0, recovered = 0, untouched = 0;
    printf("%s: %d allocation sites\n", what, nsites);
    void *sites[S_MAX_SITES];
    memcpy(sites, s_sites, (size_t)nsites * sizeof *sites);
    for (int i = 0; i < nsites; i++) {
        s_outcome_t r;
        if (!s_run(fn, dir, sites[i], S_FAIL, &r)) {
            bt_test_fail(__FILE__, __LINE__, "%s: crashed when the allocation at %s failed", what, s_where(sites[i]));
            continue;
        }
        if (!r.failed) {
            untouched++; /* that site was not reached again (an order that depends on the run) */
        } else if (r.rc) {
            failed_loudly++;
            CHECKF(r.errors > 0, "%s: failed (status %d) without a line when the allocation at %s failed", what, r.rc,
                   s_where(sites[i]));
        } else {
            recovered++;
            CHECKF(r.digest == ref.digest, "%s: a different result after the allocation at %s failed", what,
                   s_where(sites[i]));
        }
    }
    printf("%s: %d failed with a line, %d recovered with the same result, %d not reached again\n", what,
           failed_loudly, recovered, untouched);
}

TEST_TIMEOUT(out_of_memory_is_never_silent_generate, 600) { s_check("generate", s_generate); }
TEST_TIMEOUT(out_of_memory_is_never_silent_train, 600) { s_check("train", s_train); }
