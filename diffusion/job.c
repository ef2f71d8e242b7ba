/*
 * job.c — the job spec's one field table, and its JSON writer, parser and
 * resume comparison (job.h).
 */
#include "diffusion/job.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"

typedef enum { J_STR, J_BOOL, J_INT, J_I64, J_U64, J_F32, J_SCHED } s_jkind_t;

/* Every setting of sd_train_config_t, by diffusers' flag name. math: a resumed
 * run must agree on it (the others are covered by the content hashes, or do not
 * change the numbers: gradient checkpointing recomputes the same values). */
typedef struct {
    const char *key;
    s_jkind_t kind;
    size_t off;
    bool math;
    const char *absent; /* JSON of the value a checkpoint written before the field existed had, or NULL */
    const char *flag;   /* how messages name it, when not --key with '-' for '_' */
} s_jfield_t;

#define F(key, kind, field, math) {key, kind, offsetof(sd_train_config_t, field), math, NULL, NULL}
static const s_jfield_t s_job[] = {
    F("pretrained_model_name_or_path", J_STR, model_dir, false),
    F("instance_data_dir", J_STR, instance_dir, false),
    F("instance_prompt", J_STR, instance_prompt, true),
    F("class_data_dir", J_STR, class_dir, false),
    F("class_prompt", J_STR, class_prompt, true),
    F("with_prior_preservation", J_BOOL, prior_preservation, true),
    F("prior_loss_weight", J_F32, prior_loss_weight, true),
    F("num_class_images", J_INT, num_class_images, true),
    F("class_inference_steps", J_INT, class_steps, false),
    F("class_guidance", J_F32, class_guidance, false),
    F("resolution", J_INT, resolution, true),
    /* absent: a checkpoint from before the flag existed, when every photo was cut at its centre */
    {"center_crop", J_BOOL, offsetof(sd_train_config_t, center_crop), true, "true", NULL},
    F("random_flip", J_BOOL, random_flip, true),
    F("train_batch_size", J_INT, train_batch_size, true),
    F("micro_batch_size", J_INT, micro_batch_size, true),
    F("max_train_steps", J_I64, max_train_steps, true), /* math only for schedules that depend on it */
    F("learning_rate", J_F32, learning_rate, true),
    F("lr_scheduler", J_SCHED, lr_scheduler, true),
    F("lr_warmup_steps", J_I64, lr_warmup_steps, true),
    {"lr_num_cycles", J_INT, offsetof(sd_train_config_t, lr_num_cycles), true, "1", NULL},
    {"lr_power", J_F32, offsetof(sd_train_config_t, lr_power), true, "1", NULL},
    F("rank", J_I64, rank, true),
    F("lora_alpha", J_F32, lora_alpha, true),
    /* absent: a checkpoint from before full fine-tuning existed, which trained LoRA */
    {"full_finetune", J_BOOL, offsetof(sd_train_config_t, full_unet), true, "false", "train-unet"},
    F("train_text_encoder", J_BOOL, train_text_encoder, true),
    F("seed", J_U64, seed, true),
    F("gradient_checkpointing", J_BOOL, gradient_checkpointing, false),
    F("snr_gamma", J_F32, snr_gamma, true),
    F("noise_offset", J_F32, noise_offset, true),
    F("max_grad_norm", J_F32, max_grad_norm, true),
    F("adam_beta1", J_F32, adam_beta1, true),
    F("adam_beta2", J_F32, adam_beta2, true),
    F("adam_epsilon", J_F32, adam_epsilon, true),
    F("adam_weight_decay", J_F32, adam_weight_decay, true),
    /* "exact", or the 16-bit type --base-dtype rounded the model's weights to (absent before booth kept
     * weights in 16 bits: exact) */
    {"base_weights", J_STR, offsetof(sd_train_config_t, base_weights), true, "\"exact\"", "base-dtype (weights)"},
    /* what the run writes beside the LoRA; none changes the numbers */
    F("checkpointing_steps", J_INT, checkpointing_steps, false),
    F("checkpoints_total_limit", J_INT, checkpoints_total_limit, false),
    F("validation_prompt", J_STR, validation_prompt, false),
    F("validation_steps", J_INT, validation_steps, false),
    F("num_validation_images", J_INT, num_validation_images, false),
};
#undef F
#define S_NJOB ((int)(sizeof s_job / sizeof s_job[0]))

/* The shortest decimal that reads back (through double, as JSON readers do) as f. */
static void s_fmt_f32(char *buf, size_t len, float f)
{
    for (int p = 1; p <= 9; p++) {
        snprintf(buf, len, "%.*g", p, (double)f);
        if ((float)strtod(buf, NULL) == f) return;
    }
}

/* One field's value as JSON text (numbers and booleans raw, strings quoted by cJSON). */
static cJSON *s_job_item(const s_jfield_t *j, const sd_train_config_t *c)
{
    const char *base = (const char *)c;
    char buf[64];
    switch (j->kind) {
    case J_STR: {
        const char *s = *(const char *const *)(base + j->off);
        return s ? cJSON_CreateString(s) : cJSON_CreateNull();
    }
    case J_BOOL: return cJSON_CreateBool(*(const bool *)(base + j->off));
    case J_INT: snprintf(buf, sizeof buf, "%d", *(const int *)(base + j->off)); break;
    case J_I64: snprintf(buf, sizeof buf, "%lld", (long long)*(const int64_t *)(base + j->off)); break;
    case J_U64: { /* JSON readers hold numbers as doubles: a seed past 2^53 travels as a string */
        uint64_t u = *(const uint64_t *)(base + j->off);
        snprintf(buf, sizeof buf, "%llu", (unsigned long long)u);
        if (u > (1ull << 53)) return cJSON_CreateString(buf);
        break;
    }
    case J_F32: s_fmt_f32(buf, sizeof buf, *(const float *)(base + j->off)); break;
    case J_SCHED: return cJSON_CreateString(sd_lr_sched_name(*(const sd_lr_sched_t *)(base + j->off)));
    }
    return cJSON_CreateRaw(buf);
}

char *sd_train_job_json(const sd_train_config_t *c)
{
    cJSON *o = cJSON_CreateObject();
    bool ok = o != NULL;
    for (int i = 0; i < S_NJOB && ok; i++) {
        cJSON *v = s_job_item(&s_job[i], c);
        ok = v && cJSON_AddItemToObject(o, s_job[i].key, v);
    }
    char *text = ok ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (!text) return NULL;
    char *copy = strdup(text); /* cJSON_free and free may differ */
    cJSON_free(text);
    return copy;
}

/* The checkpoint's job against this run's; one line naming the first difference. */
int sd_job_compare(const char *path, const char *json, const sd_train_config_t *c)
{
    cJSON *o = cJSON_Parse(json);
    if (!cJSON_IsObject(o)) {
        cJSON_Delete(o);
        BT_ERROR("%s: the 'job' attribute is not a JSON object", path);
        return BT_EFORMAT;
    }
    int rc = BT_OK;
    bool sched_needs_total = c->lr_scheduler == SD_LR_LINEAR || c->lr_scheduler == SD_LR_COSINE ||
                             c->lr_scheduler == SD_LR_COSINE_RESTARTS || c->lr_scheduler == SD_LR_POLYNOMIAL;
    for (int i = 0; i < S_NJOB && rc == BT_OK; i++) {
        const s_jfield_t *j = &s_job[i];
        if (!j->math || j->kind == J_U64) continue; /* the seed is compared exactly, from its own attribute */
        if (!strcmp(j->key, "max_train_steps") && !sched_needs_total) continue;
        if (!strcmp(j->key, "lr_num_cycles") && c->lr_scheduler != SD_LR_COSINE_RESTARTS) continue;
        if (!strcmp(j->key, "lr_power") && c->lr_scheduler != SD_LR_POLYNOMIAL) continue;
        if (!c->prior_preservation && (!strcmp(j->key, "class_prompt") || !strcmp(j->key, "num_class_images") ||
                                       !strcmp(j->key, "prior_loss_weight")))
            continue;
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, j->key);
        cJSON *absent = NULL;
        if (!v && j->absent) v = absent = cJSON_Parse(j->absent);
        cJSON *mine = s_job_item(j, c);
        char *a = v ? cJSON_PrintUnformatted(v) : NULL, *b = mine ? cJSON_PrintUnformatted(mine) : NULL;
        bool same;
        if (!v || !mine) {
            same = false;
        } else if (j->kind == J_F32) { /* numbers compare as the float they were printed from */
            same = cJSON_IsNumber(v) && (float)v->valuedouble == *(const float *)((const char *)c + j->off);
        } else if (j->kind == J_INT || j->kind == J_I64) {
            const char *base = (const char *)c;
            double want = j->kind == J_INT ? *(const int *)(base + j->off) : (double)*(const int64_t *)(base + j->off);
            same = cJSON_IsNumber(v) && v->valuedouble == want;
        } else {
            same = a && b && !strcmp(a, b);
        }
        if (!same) {
            char flag[64];
            snprintf(flag, sizeof flag, "%s", j->flag ? j->flag : j->key);
            for (char *p = flag; *p && !j->flag; p++) *p = *p == '_' ? '-' : *p;
            const char *was = a ? a : "(missing)", *now = b ? b : "?";
            if (j->off == offsetof(sd_train_config_t, full_unet)) { /* a bool spelled as its flag's values */
                was = cJSON_IsTrue(v) ? "full" : "lora";
                now = c->full_unet ? "full" : "lora";
            }
            BT_ERROR("%s: the checkpoint was trained with --%s %s, this run has %s; resume needs the same settings "
                     "(or a new --output-dir)",
                     path, flag, was, now);
            rc = BT_EINVAL;
        }
        cJSON_free(a);
        cJSON_free(b);
        cJSON_Delete(mine);
        cJSON_Delete(absent);
    }
    cJSON_Delete(o);
    return rc;
}


/* ---- parsing ---- */

static int s_dup(sd_job_t *j, const char *s, const char **out)
{
    if (j->nstrings == (int)(sizeof j->strings / sizeof j->strings[0])) return BT_EINTERNAL;
    if (!(j->strings[j->nstrings] = strdup(s))) return BT_ENOMEM;
    *out = j->strings[j->nstrings++];
    return BT_OK;
}

static int s_parse_field(sd_job_t *j, const s_jfield_t *f, const cJSON *v, const char *what)
{
    char *base = (char *)&j->cfg;
    const char *type = NULL;
    double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    switch (f->kind) {
    case J_STR:
        if (cJSON_IsNull(v)) *(const char **)(base + f->off) = NULL;
        else if (!cJSON_IsString(v)) type = "a string";
        else return s_dup(j, v->valuestring, (const char **)(base + f->off));
        break;
    case J_BOOL:
        if (!cJSON_IsBool(v)) type = "true or false";
        else *(bool *)(base + f->off) = cJSON_IsTrue(v);
        break;
    case J_INT:
        if (!(d == floor(d) && fabs(d) <= 2147483647.0)) type = "a 32-bit integer";
        else *(int *)(base + f->off) = (int)d;
        break;
    case J_I64:
        if (!(d == floor(d) && fabs(d) <= 9007199254740992.0)) type = "an integer";
        else *(int64_t *)(base + f->off) = (int64_t)d;
        break;
    case J_U64: {
        char *end = NULL;
        if (cJSON_IsString(v) && v->valuestring[0] >= '0' && v->valuestring[0] <= '9') {
            unsigned long long u = strtoull(v->valuestring, &end, 10);
            if (*end) type = "an unsigned integer";
            else *(uint64_t *)(base + f->off) = u;
        } else if (d == floor(d) && d >= 0 && d <= 9007199254740992.0) {
            *(uint64_t *)(base + f->off) = (uint64_t)d;
        } else {
            type = "an unsigned integer";
        }
        break;
    }
    case J_F32:
        if (!isfinite(d) || fabs(d) > 3.0e38) type = "a finite number";
        else *(float *)(base + f->off) = (float)d;
        break;
    case J_SCHED:
        if (!cJSON_IsString(v) || !sd_lr_sched_parse(v->valuestring, (sd_lr_sched_t *)(base + f->off)))
            type = SD_LR_NAMES;
        break;
    }
    if (type) {
        BT_ERROR("%s: job field '%s' must be %s", what, f->key, type);
        return BT_EFORMAT;
    }
    return BT_OK;
}

/* The ranges booth train's flags enforce (cli/train_flags.c reads this table), and a job that did not
 * come through them: a job file, or a Submit over the network. Sizes a worker or PS allocates by
 * (rank, resolution, class images, batch) are bounded before anything is. lora_alpha 0 means "the
 * rank" here (sd_train_config_resolve); the flag refuses 0 itself (it would train nothing). */
static const sd_job_range_t s_ranges[] = {
    {"rank", 1, 1024, false},
    {"lora_alpha", 0, 1e6, true},
    {"train_batch_size", 1, 128, false},
    {"micro_batch_size", 0, 256, false},
    {"max_train_steps", 1, 1e8, false},
    {"num_class_images", 1, 100000, false},
    {"class_inference_steps", 1, 1000, false},
    {"resolution", 8, 4096, false},
    {"lr_warmup_steps", 0, 1e8, false},
    {"lr_num_cycles", 1, 1e6, false},
    {"checkpointing_steps", 0, 1e8, false},
    {"checkpoints_total_limit", 0, 1e6, false},
    {"validation_steps", 0, 1e8, false},
    {"num_validation_images", 1, 16, false},
    {"adam_beta1", 0, 1, true},
    {"adam_beta2", 0, 1, true},
    {"adam_epsilon", 1e-30, 1, true},
    {"adam_weight_decay", 0, 1, true},
    {"snr_gamma", 0, 1e6, true},
    {"noise_offset", 0, 100, true},
    {"prior_loss_weight", 0, 1e6, true},
    {"max_grad_norm", 0, 1e30, true},
    {"learning_rate", 0, 1e3, true},
    {"class_guidance", 0, 1e3, true},
    {"lr_power", 0, 1e3, true},
};

const sd_job_range_t *sd_job_ranges(int *n)
{
    *n = (int)(sizeof s_ranges / sizeof s_ranges[0]);
    return s_ranges;
}

bool sd_job_value(const sd_train_config_t *c, const char *key, double *v)
{
    const char *base = (const char *)c;
    for (int i = 0; i < S_NJOB; i++) {
        const s_jfield_t *f = &s_job[i];
        if (strcmp(f->key, key)) continue;
        switch (f->kind) {
        case J_INT: *v = *(const int *)(base + f->off); return true;
        case J_I64: *v = (double)*(const int64_t *)(base + f->off); return true;
        case J_F32: *v = *(const float *)(base + f->off); return true;
        default: return false;
        }
    }
    return false;
}

static int s_check_ranges(const sd_job_t *j, const char *what)
{
    for (size_t r = 0; r < sizeof s_ranges / sizeof s_ranges[0]; r++) {
        double v;
        if (!sd_job_value(&j->cfg, s_ranges[r].key, &v)) continue;
        if (!sd_job_in_range(&s_ranges[r], v)) {
            BT_ERROR("%s: job field '%s' is %g, must be in [%g, %g%c", what, s_ranges[r].key, v, s_ranges[r].lo,
                     s_ranges[r].hi, s_ranges[r].real ? ')' : ']');
            return BT_EINVAL;
        }
    }
    if (j->cfg.resolution % 8) {
        BT_ERROR("%s: job field 'resolution' is %d, not a multiple of 8", what, j->cfg.resolution);
        return BT_EINVAL;
    }
    return BT_OK;
}

void sd_job_free(sd_job_t *j)
{
    for (int i = 0; i < j->nstrings; i++) free(j->strings[i]);
    memset(j, 0, sizeof *j);
}

int sd_job_parse(sd_job_t *j, const char *json, size_t len, const char *what)
{
    memset(j, 0, sizeof *j);
    sd_train_config_defaults(&j->cfg);
    j->cfg.center_crop = false; /* a job file follows diffusers' defaults, as booth train's flags do */
    cJSON *o = cJSON_ParseWithLength(json, len);
    int rc = BT_OK;
    if (!cJSON_IsObject(o)) {
        BT_ERROR("%s: the job is not a JSON object", what);
        rc = BT_EFORMAT;
        goto out;
    }
    for (const cJSON *v = o->child; v && rc == BT_OK; v = v->next) {
        const s_jfield_t *f = NULL;
        for (int i = 0; i < S_NJOB && !f; i++)
            if (!strcmp(s_job[i].key, v->string)) f = &s_job[i];
        if (!f) {
            BT_ERROR("%s: unknown job field '%s'", what, v->string);
            rc = BT_EFORMAT;
        } else {
            rc = s_parse_field(j, f, v, what);
        }
    }
    if (rc == BT_OK) rc = s_check_ranges(j, what);
out:
    cJSON_Delete(o);
    if (rc) sd_job_free(j);
    return rc;
}
