/*
 * runner.c — runs every registered C test and every shell script in tests/cli/.
 *
 * Each test runs in its own forked process group with its own temporary
 * directory and a time limit; its output goes to a log that is shown only when
 * it fails. The last line is "N passed, N failed" (the exit status is 1 if any
 * failed).
 *
 *   runner [--list] [--no-fork] [--exclude PATTERN]... [PATTERN...]   PATTERN: substring of a test name
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <glob.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "nn/nn.h"
#include "test.h"

typedef struct {
    const char *name;
    const char *file;
    void (*fn)(void);
    void (*fn_arg)(const void *); /* table-driven test, called with arg */
    const void *arg;
    const char *script; /* shell test: path of the script */
    int timeout_s;
} s_test_t;

static s_test_t s_tests[1024];
static int s_ntests;
static int s_failures;

void bt_test_register(const char *name, const char *file, void (*fn)(void), int timeout_s)
{
    if (s_ntests == (int)(sizeof s_tests / sizeof s_tests[0])) {
        fprintf(stderr, "runner: too many tests\n");
        abort();
    }
    s_tests[s_ntests++] = (s_test_t){name, file, fn, NULL, NULL, NULL, timeout_s};
}

void bt_test_register_arg(const char *name, const char *file, void (*fn)(const void *), const void *arg,
                          int timeout_s)
{
    if (s_ntests == (int)(sizeof s_tests / sizeof s_tests[0])) {
        fprintf(stderr, "runner: too many tests\n");
        abort();
    }
    s_tests[s_ntests++] = (s_test_t){name, file, NULL, fn, arg, NULL, timeout_s};
}

void bt_test_fail(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "    %s:%d: ", file, line);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    s_failures++;
}

int bt_test_failures(void) { return s_failures; }

static double s_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int s_rm(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(path);
}

static bool s_selected(const s_test_t *t, int npat, char **pat)
{
    if (npat == 0) return true;
    for (int i = 0; i < npat; i++)
        if (strstr(t->name, pat[i])) return true;
    return false;
}

static void s_child(const s_test_t *t, const char *tmpdir)
{
    setenv("BOOTH_TEST_TMPDIR", tmpdir, 1);
    if (t->script) {
        execlp("bash", "bash", "-eu", "-o", "pipefail", t->script, (char *)NULL);
        fprintf(stderr, "cannot run bash: %s\n", strerror(errno));
        _exit(127);
    }
    if (t->fn_arg)
        t->fn_arg(t->arg);
    else
        t->fn();
    fflush(NULL);
    _exit(s_failures ? 1 : 0);
}

static void s_show_log(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) return;
    /* the end is what matters: show at most the last 60 lines */
    char *lines[60] = {0};
    size_t cap = 0;
    char *line = NULL;
    int n = 0;
    while (getline(&line, &cap, f) >= 0) {
        free(lines[n % 60]);
        lines[n % 60] = strdup(line);
        n++;
    }
    free(line);
    fclose(f);
    int first = n > 60 ? n - 60 : 0;
    if (first) printf("    ... (%d earlier lines)\n", first);
    for (int i = first; i < n; i++) {
        printf("    | %s", lines[i % 60]);
        free(lines[i % 60]);
    }
}

/* Returns true if the test passed. */
static bool s_run(const s_test_t *t, bool fork_tests)
{
    char tmpl[] = "/tmp/booth-test-XXXXXX";
    char *tmpdir = mkdtemp(tmpl);
    if (!tmpdir) {
        printf("FAIL %s: cannot create a temporary directory\n", t->name);
        return false;
    }
    if (!fork_tests) {
        printf("---- %s\n", t->name);
        fflush(stdout);
        setenv("BOOTH_TEST_TMPDIR", tmpdir, 1);
        int before = s_failures;
        if (t->script) {
            char *cmd;
            if (asprintf(&cmd, "bash -eu -o pipefail '%s'", t->script) < 0) return false;
            if (system(cmd) != 0) s_failures++;
            free(cmd);
        } else if (t->fn_arg) {
            t->fn_arg(t->arg);
        } else {
            t->fn();
        }
        nftw(tmpdir, s_rm, 16, FTW_DEPTH | FTW_PHYS);
        return s_failures == before;
    }
    char logpath[64];
    snprintf(logpath, sizeof logpath, "%s.log", tmpdir);
    double t0 = s_now();
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        setpgid(0, 0);
        int fd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        s_child(t, tmpdir);
    }
    int status = 0;
    bool timed_out = false;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid) break;
        if (r < 0 && errno != EINTR) break;
        if (s_now() - t0 > t->timeout_s) {
            kill(-pid, SIGKILL);
            waitpid(pid, &status, 0);
            timed_out = true;
            break;
        }
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    kill(-pid, SIGKILL); /* anything the test left running */
    double dt = s_now() - t0;
    bool ok = !timed_out && WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (ok) {
        printf("ok   %-50s %7.2fs\n", t->name, dt);
    } else {
        if (timed_out)
            printf("FAIL %-50s timed out after %d s\n", t->name, t->timeout_s);
        else if (WIFSIGNALED(status))
            printf("FAIL %-50s killed by signal %d (%s)\n", t->name, WTERMSIG(status), strsignal(WTERMSIG(status)));
        else
            printf("FAIL %-50s exit status %d\n", t->name, WEXITSTATUS(status));
        s_show_log(logpath);
    }
    fflush(stdout);
    unlink(logpath);
    nftw(tmpdir, s_rm, 16, FTW_DEPTH | FTW_PHYS);
    return ok;
}

static int s_cmp(const void *a, const void *b)
{
    const s_test_t *x = a, *y = b;
    int c = strcmp(x->file, y->file);
    return c ? c : strcmp(x->name, y->name);
}

int main(int argc, char **argv)
{
    nn_process_init(argc, argv);
    if (!getenv("BOOTH")) { /* the booth binary beside this runner's directory */
        char self[4096];
        ssize_t len = readlink("/proc/self/exe", self, sizeof self - 16);
        if (len > 0) {
            self[len] = '\0';
            char *slash = strrchr(self, '/');
            if (slash) {
                strcpy(slash, "/../booth");
                setenv("BOOTH", self, 1);
            }
        }
    }
    bool fork_tests = true, list = false;
    char **pat = calloc((size_t)argc, sizeof *pat), **excl = calloc((size_t)argc, sizeof *excl);
    int npat = 0, nexcl = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--exclude") && i + 1 < argc)
            excl[nexcl++] = argv[++i];
        else if (!strcmp(argv[i], "--no-fork"))
            fork_tests = false;
        else if (!strcmp(argv[i], "--list"))
            list = true;
        else
            pat[npat++] = argv[i];
    }
    /* C tests in file order, then the CLI scripts */
    qsort(s_tests, (size_t)s_ntests, sizeof s_tests[0], s_cmp);
    glob_t g = {0};
    if (glob("tests/cli/*.sh", 0, NULL, &g) == 0) {
        for (size_t i = 0; i < g.gl_pathc && s_ntests < 1024; i++) {
            const char *base = strrchr(g.gl_pathv[i], '/') + 1;
            char *name;
            if (asprintf(&name, "cli/%s", base) < 0) return 2;
            s_tests[s_ntests++] = (s_test_t){name, g.gl_pathv[i], NULL, NULL, NULL, g.gl_pathv[i], 900};
        }
    }
    int passed = 0, failed = 0;
    double t0 = s_now();
    for (int i = 0; i < s_ntests; i++) {
        if (!s_selected(&s_tests[i], npat, pat)) continue;
        if (nexcl && s_selected(&s_tests[i], nexcl, excl)) {
            if (!list) printf("--   %-50s excluded (--exclude)\n", s_tests[i].name);
            continue;
        }
        if (list) {
            printf("%s\n", s_tests[i].name);
            continue;
        }
        if (s_run(&s_tests[i], fork_tests))
            passed++;
        else
            failed++;
    }
    if (!list) {
        printf("(%.1f s)\n", s_now() - t0);
        printf("%d passed, %d failed\n", passed, failed);
    }
    free(pat);
    free(excl);
    globfree(&g);
    return failed ? 1 : 0;
}
