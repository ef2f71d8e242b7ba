/*
 * args.h — declarative command-line options for booth's subcommands.
 *
 * Each subcommand lists its options once (name, kind, destination, help); the
 * parser handles "--name value" and "--name=value", checks that numbers are
 * whole numbers, writes the --help text from the same table, and reports a bad
 * option in one line naming the option and the value.
 */
#ifndef BOOTH_CLI_ARGS_H
#define BOOTH_CLI_ARGS_H

#include <stdbool.h>
#include <stdint.h>

typedef enum cli_kind {
    CLI_STR,        /* const char ** */
    CLI_TEXT,       /* const char **: text that must be valid UTF-8 (prompts: they reach the tokenizer,
                       PNG text chunks and checkpoints' JSON) */
    CLI_INT,        /* int * */
    CLI_I64,        /* int64_t * */
    CLI_U64,        /* uint64_t * */
    CLI_FLOAT,      /* float * */
    CLI_FLAG,       /* bool *, no value */
    CLI_FLOAT_LIST, /* cli_floats_t *: "1,0.5,0" */
    CLI_NOTE,       /* a flag of diffusers' scripts with no meaning here, taking a value: accepted, and
                       help (what booth does instead) printed as one note; dst unused */
    CLI_NOTE_FLAG,  /* the same without a value */
} cli_kind_t;

#define CLI_MAX_LIST 64
typedef struct cli_floats {
    int n;
    float v[CLI_MAX_LIST];
} cli_floats_t;

typedef struct cli_opt {
    const char *name; /* "--steps" */
    cli_kind_t kind;
    void *dst;
    const char *metavar; /* "N" (NULL for flags) */
    const char *help;    /* one line; the default is stated in it */
    bool *seen;          /* optional: set when the option was given */
} cli_opt_t;

/* Table rows: CLI_OPT(name, kind, &dst, metavar, help); CLI_OPT_SEEN adds a "was given" flag. */
#define CLI_OPT(name, kind, dst, metavar, help) {name, kind, dst, metavar, help, NULL}
#define CLI_OPT_SEEN(name, kind, dst, metavar, help, seen) {name, kind, dst, metavar, help, seen}
#define CLI_END {NULL, CLI_FLAG, NULL, NULL, NULL, NULL}

typedef struct cli_spec {
    const char *command;     /* "generate" */
    const char *synopsis;    /* "--model DIR --prompt P [options]" */
    const char *description; /* a paragraph */
    const cli_opt_t *opts;   /* terminated by {NULL} */
    int max_positional;      /* positional arguments allowed */
    const char *positional_name;
} cli_spec_t;

/* Returns -1 to go on, or an exit status (0 after --help, 2 after a usage error).
 * Positional arguments go to pos[0..*npos). */
int cli_parse(const cli_spec_t *spec, int argc, char **argv, const char **pos, int *npos);
void cli_usage(const cli_spec_t *spec);

#endif
