/*
 * job.h — the job spec: every `booth train` setting as one JSON object.
 *
 * One table (job.c) names each field of sd_train_config_t by diffusers' flag
 * name and drives all three uses: writing the JSON (the checkpoint's `job`
 * attribute, the job a client submits, the task a worker is handed), parsing
 * it back (the coordinator, the worker, a `--job FILE.json`), and comparing a
 * checkpoint's job with a run that wants to resume it. A field added to the
 * table is carried everywhere at once.
 */
#ifndef BOOTH_DIFFUSION_JOB_H
#define BOOTH_DIFFUSION_JOB_H

#include <stddef.h>

#include "diffusion/train.h"

/* A parsed job: the settings and the strings they point to (owned). */
typedef struct sd_job {
    sd_train_config_t cfg;
    char *strings[16]; /* copies the cfg's string fields point into */
    int nstrings;
} sd_job_t;

/* The job as JSON (every setting, diffusers' flag names); malloc'd, NULL if out of memory. */
char *sd_train_job_json(const sd_train_config_t *c);

/* Parses a job: fields absent from the JSON keep sd_train_config_defaults'
 * values; an unknown key, a value of the wrong type or out of range is one
 * error line naming `what` (a file or peer) and the key. On error *j is empty. */
int sd_job_parse(sd_job_t *j, const char *json, size_t len, const char *what);
void sd_job_free(sd_job_t *j);

/* The range every numeric setting is held to, wherever the job comes from: booth train's flags
 * (cli/train_flags.c names the flag), a job file, a Submit over the network (sd_job_parse names the
 * field). Counts: lo <= v <= hi; real numbers: lo <= v < hi (NaN is never inside). */
typedef struct sd_job_range {
    const char *key; /* the job field, diffusers' flag name ("adam_beta1"; the flag is --adam-beta1) */
    double lo, hi;
    bool real;       /* a float setting: hi itself is outside */
} sd_job_range_t;

/* The table, in the order booth train checks it; *n receives its length. */
const sd_job_range_t *sd_job_ranges(int *n);
/* The value of the numeric setting `key` in c; false for a key that is not one. */
bool sd_job_value(const sd_train_config_t *c, const char *key, double *v);
/* Whether v is inside r. */
static inline bool sd_job_in_range(const sd_job_range_t *r, double v)
{
    return v >= r->lo && (r->real ? v < r->hi : v <= r->hi);
}

/* The checks a resume makes: `json` (a checkpoint's job, read from `path`)
 * against the run's settings c; one error line naming the first setting that
 * changes the numbers and differs. */
int sd_job_compare(const char *path, const char *json, const sd_train_config_t *c);

#endif
