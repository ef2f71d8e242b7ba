/* args.c — option parsing and --help text from one table. */
#include "cli/args.h"
#include "cli/cli.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/fileio.h"
#include "diffusion/pipeline.h"
#include "diffusion/scheduler.h"
#include "diffusion/single_file.h"

void cli_usage(const cli_spec_t *s)
{
    printf("usage: booth %s %s\n\n%s\n\noptions:\n", s->command, s->synopsis, s->description);
    int notes = 0;
    for (const cli_opt_t *o = s->opts; o->name; o++) {
        if (o->kind == CLI_NOTE || o->kind == CLI_NOTE_FLAG) {
            notes++;
            continue;
        }
        char left[64];
        snprintf(left, sizeof left, "%s%s%s", o->name, o->metavar ? " " : "", o->metavar ? o->metavar : "");
        printf("  %-28s %s\n", left, o->help);
    }
    printf("  %-28s %s\n", "--help", "show this help");
    if (!notes) return;
    printf("\naccepted from diffusers' scripts, without effect (each says what booth does instead):\n ");
    int col = 1;
    for (const cli_opt_t *o = s->opts; o->name; o++) {
        if (o->kind != CLI_NOTE && o->kind != CLI_NOTE_FLAG) continue;
        int len = (int)strlen(o->name) + (o->kind == CLI_NOTE ? 2 : 0) + 1;
        if (col + len > 100) {
            printf("\n ");
            col = 1;
        }
        printf(" %s%s", o->name, o->kind == CLI_NOTE ? " X" : "");
        col += len;
    }
    printf("\n");
}

/* Well-formed UTF-8: no stray continuation bytes, no overlong forms, no surrogates, nothing past U+10FFFF. */
static bool s_utf8_ok(const char *v)
{
    const unsigned char *p = (const unsigned char *)v;
    while (*p) {
        unsigned c = *p;
        int n = c < 0x80 ? 0 : (c & 0xe0) == 0xc0 ? 1 : (c & 0xf0) == 0xe0 ? 2 : (c & 0xf8) == 0xf0 ? 3 : -1;
        if (n < 0 || (n == 1 && c < 0xc2)) return false;
        unsigned cp = n == 0 ? c : c & (0x3f >> n);
        for (int k = 1; k <= n; k++) {
            if ((p[k] & 0xc0) != 0x80) return false;
            cp = (cp << 6) | (p[k] & 0x3f);
        }
        if ((n == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) || (n == 3 && (cp < 0x10000 || cp > 0x10ffff)))
            return false;
        p += n + 1;
    }
    return true;
}

static int s_set(const cli_spec_t *s, const cli_opt_t *o, const char *v)
{
    char *end = NULL;
    errno = 0;
    switch (o->kind) {
    case CLI_STR:
        *(const char **)o->dst = v;
        return 0;
    case CLI_TEXT:
        if (!s_utf8_ok(v)) {
            fprintf(stderr, "booth %s: %s is not valid UTF-8 text\n", s->command, o->name);
            return 2;
        }
        *(const char **)o->dst = v;
        return 0;
    case CLI_INT: {
        long x = strtol(v, &end, 10);
        if (*v && !*end && !errno && x >= -2147483647L && x <= 2147483647L) {
            *(int *)o->dst = (int)x;
            return 0;
        }
        break;
    }
    case CLI_I64: {
        long long x = strtoll(v, &end, 10);
        if (*v && !*end && !errno) {
            *(int64_t *)o->dst = x;
            return 0;
        }
        break;
    }
    case CLI_U64: {
        unsigned long long x = strtoull(v, &end, 10);
        if (*v && !*end && !errno && v[0] != '-') {
            *(uint64_t *)o->dst = x;
            return 0;
        }
        break;
    }
    case CLI_FLOAT: {
        float x = strtof(v, &end);
        if (*v && !*end && !errno && isfinite(x)) {
            *(float *)o->dst = x;
            return 0;
        }
        break;
    }
    case CLI_FLOAT_LIST: {
        cli_floats_t *l = o->dst;
        l->n = 0;
        const char *p = v;
        while (*p) {
            if (l->n == CLI_MAX_LIST) {
                fprintf(stderr, "booth %s: %s: at most %d values\n", s->command, o->name, CLI_MAX_LIST);
                return 2;
            }
            float x = strtof(p, &end);
            if (end == p || !isfinite(x) || (*end && *end != ',')) goto bad;
            l->v[l->n++] = x;
            p = *end ? end + 1 : end;
        }
        if (l->n > 0) return 0;
        break;
    }
    case CLI_FLAG:
    case CLI_NOTE:
    case CLI_NOTE_FLAG:
        break;
    }
bad:
    fprintf(stderr, "booth %s: %s '%s' is not a valid %s\n", s->command, o->name, v,
            o->kind == CLI_FLOAT_LIST ? "comma-separated list of numbers"
            : o->kind == CLI_FLOAT    ? "number"
            : o->kind == CLI_U64      ? "non-negative integer"
                                      : "integer");
    return 2;
}

int cli_parse(const cli_spec_t *s, int argc, char **argv, const char **pos, int *npos)
{
    *npos = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            cli_usage(s);
            return 0;
        }
        if (a[0] != '-' || a[1] != '-') {
            if (*npos >= s->max_positional) {
                fprintf(stderr, "booth %s: unexpected argument '%s' (see --help)\n", s->command, a);
                return 2;
            }
            pos[(*npos)++] = a;
            continue;
        }
        const char *eq = strchr(a, '=');
        size_t len = eq ? (size_t)(eq - a) : strlen(a);
        /* diffusers' scripts spell flags with underscores (--pretrained_model_name_or_path): the same flag */
        const cli_opt_t *o = s->opts;
        for (; o->name; o++) {
            if (strlen(o->name) != len) continue;
            size_t k = 2;
            while (k < len && (a[k] == o->name[k] || (a[k] == '_' && o->name[k] == '-'))) k++;
            if (k == len && !strncmp(o->name, a, 2)) break;
        }
        if (!o->name) {
            fprintf(stderr, "booth %s: unknown option '%.*s' (see --help)\n", s->command, (int)len, a);
            return 2;
        }
        if (o->seen) *o->seen = true;
        if (o->kind == CLI_NOTE_FLAG || o->kind == CLI_NOTE) {
            const char *v = NULL;
            if (o->kind == CLI_NOTE && !(v = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL))) {
                fprintf(stderr, "booth %s: %s needs a value\n", s->command, o->name);
                return 2;
            }
            if (o->kind == CLI_NOTE_FLAG && eq) v = eq + 1; /* --push_to_hub=True: the same */
            fprintf(stderr, "booth %s: note: %s%s%s ignored: %s\n", s->command, o->name, v ? " " : "", v ? v : "",
                    o->help);
            continue;
        }
        if (o->kind == CLI_FLAG) {
            if (eq) {
                fprintf(stderr, "booth %s: %s takes no value\n", s->command, o->name);
                return 2;
            }
            *(bool *)o->dst = true;
            continue;
        }
        const char *v = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
        if (!v) {
            fprintf(stderr, "booth %s: %s needs a value (%s)\n", s->command, o->name, o->metavar ? o->metavar : "");
            return 2;
        }
        int rc = s_set(s, o, v);
        if (rc) return rc;
    }
    return -1;
}

static bool s_is_model(const char *dir)
{
    char p[4096];
    struct stat st;
    return snprintf(p, sizeof p, "%s/model_index.json", dir) < (int)sizeof p && stat(p, &st) == 0 &&
           S_ISREG(st.st_mode);
}

const char *cli_default_model(const char *command)
{
    static char path[4096];
    const char *env = getenv("BOOTH_MODEL");
    if (env && *env) {
        if (snprintf(path, sizeof path, "%s", env) >= (int)sizeof path || !s_is_model(path)) {
            fprintf(stderr, "booth %s: --model not given, and $BOOTH_MODEL (%s) is not a diffusers model folder\n",
                    command, env);
            return NULL;
        }
        fprintf(stderr, "booth %s: model %s (the default, from $BOOTH_MODEL; --model to choose)\n", command, path);
        return path;
    }
    /* beside the binary's folder (build/booth), then the source tree it was built from */
    char exe[4096], tried[2][4096 + 32];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    char *slash = n > 0 ? (exe[n] = 0, strrchr(exe, '/')) : NULL;
    if (slash) *slash = 0;
    snprintf(tried[0], sizeof tried[0], "%s/../models/world", slash ? exe : ".");
    snprintf(tried[1], sizeof tried[1], "%s/models/world", BOOTH_SOURCE_DIR);
    for (int i = 0; i < 2; i++)
        if (s_is_model(tried[i]) && realpath(tried[i], path)) {
            fprintf(stderr, "booth %s: model %s (the default; --model to choose)\n", command, path);
            return path;
        }
    fprintf(stderr, "booth %s: --model not given, and booth's world model is in neither %s nor %s; pass --model DIR "
                    "or set BOOTH_MODEL\n",
            command, tried[0], tried[1]);
    return NULL;
}

bool cli_prediction_type(const char *command, const char *value, const char *model, int *out)
{
    *out = -1;
    if (!value) return true;
    if (!strcmp(value, "epsilon")) {
        *out = SD_PRED_EPSILON;
    } else if (!strcmp(value, "v_prediction") || !strcmp(value, "v-prediction")) {
        *out = SD_PRED_V;
    } else {
        fprintf(stderr, "booth %s: --prediction-type '%s': expected epsilon or v_prediction\n", command, value);
        return false;
    }
    if (model && !sd_single_file_is(model)) {
        fprintf(stderr,
                "booth %s: --prediction-type is for a single-file --model; %s is a folder, whose "
                "scheduler/scheduler_config.json says it\n",
                command, model);
        return false;
    }
    return true;
}

sd_model_t *cli_model_load(nn_ctx_t *ctx, const char *model, unsigned parts, sd_store_t store, int prediction)
{
    if (prediction < 0 || !sd_single_file_is(model)) return sd_model_load_as(ctx, model, parts, store);
    sd_single_file_opts_t o = {.prediction = prediction};
    return sd_model_load_file(ctx, model, parts, store, &o);
}

bool cli_base_dtype(const char *command, const char *value, sd_store_t *out)
{
    if (!value) {
        *out = SD_STORE_AUTO;
        return true;
    }
    if (sd_store_parse(value, out)) return true;
    fprintf(stderr, "booth %s: --base-dtype '%s': expected auto, fp32, fp16 or bf16\n", command, value);
    return false;
}

void cli_join_path(char *buf, size_t cap, const char *dir, const char *name)
{
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/') n--;
    if (!name) snprintf(buf, cap, "%.*s", (int)n, dir);
    else if (n == 1 && dir[0] == '/') snprintf(buf, cap, "/%s", name);
    else snprintf(buf, cap, "%.*s/%s", (int)n, dir, name);
}

int cli_check_ranges(const char *command, const cli_irange_t *r, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (r[i].v < r[i].lo || r[i].v > r[i].hi) {
            fprintf(stderr, "booth %s: %s %lld is outside %lld..%lld\n", command, r[i].flag, (long long)r[i].v,
                    (long long)r[i].lo, (long long)r[i].hi);
            return 2;
        }
    return 0;
}

int cli_check_output(const char *command, const char *flag, const char *path)
{
    struct stat st;
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
        fprintf(stderr, "booth %s: %s %s: not a regular file (%s); nothing was drawn\n", command, flag, path,
                S_ISDIR(st.st_mode) ? "a folder" : "a FIFO, device or socket");
        return 1;
    }
    if (bt_mkdirs_for(path)) return 1;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash) snprintf(dir, sizeof dir, ".");
    else if (slash == dir) dir[1] = '\0';
    else *slash = '\0';
    if (access(dir, W_OK | X_OK)) {
        fprintf(stderr, "booth %s: %s %s: the folder %s is not writable (%s); nothing was drawn\n", command, flag,
                path, dir, strerror(errno));
        return 1;
    }
    return 0;
}
