/*
 * lora_grad.c — `booth lora-grad`: the DreamBooth loss and LoRA gradients of
 * one given batch, optionally with one AdamW step from zero moments. The check
 * that training computes the reference's numbers, and a tool for debugging a
 * LoRA.
 *
 * Batch file (safetensors; the oracle's DreamBooth fixtures are valid batch
 * files): instance_input_ids [n,77] I64, instance_latents / instance_noise
 * [n,4,h,w], instance_timesteps [n] I64, and the same class_* tensors (optional:
 * without them the loss is the instance term alone).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "cli/args.h"
#include "cli/cli.h"
#include "common/fileio.h"
#include "common/log.h"
#include "common/status.h"
#include "diffusion/dreambooth.h"
#include "diffusion/lora_io.h"
#include "nn/nn.h"

typedef struct {
    int64_t n, h, w, T;
    int32_t *ids;
    float *latents, *noise;
    int64_t *ts;
} s_part_t;

static void s_part_free(s_part_t *p)
{
    free(p->ids);
    free(p->latents);
    free(p->noise);
    free(p->ts);
    memset(p, 0, sizeof *p);
}

/* Reads prefix_{input_ids,latents,noise,timesteps}; returns 1 if absent, 0 if read, < 0 on error. */
static int s_read_part(const st_file_t *f, const char *prefix, int64_t C, s_part_t *p)
{
    char name[64], sb[96];
    memset(p, 0, sizeof *p);
    snprintf(name, sizeof name, "%s_input_ids", prefix);
    const st_tensor_t *ids = st_find(f, name);
    if (!ids) return 1;
    snprintf(name, sizeof name, "%s_latents", prefix);
    const st_tensor_t *lat = st_find(f, name);
    snprintf(name, sizeof name, "%s_noise", prefix);
    const st_tensor_t *nz = st_find(f, name);
    snprintf(name, sizeof name, "%s_timesteps", prefix);
    const st_tensor_t *ts = st_find(f, name);
    if (!lat || !nz || !ts) {
        BT_ERROR("%s: %s_input_ids needs %s_latents, %s_noise and %s_timesteps beside it", st_path(f), prefix, prefix,
                 prefix, prefix);
        return BT_EFORMAT;
    }
    if (ids->ndim != 2 || lat->ndim != 4 || lat->shape[1] != C || lat->shape[0] != ids->shape[0] ||
        nz->ndim != 4 || memcmp(nz->shape, lat->shape, 4 * sizeof(int64_t)) || st_numel(ts) != ids->shape[0] ||
        ids->shape[0] < 1 || ids->shape[0] > 64) {
        BT_ERROR("%s: %s tensors disagree: input_ids %s, latents %s (expected [n, 2] ids, [n, %lld, h, w] latents "
                 "and noise, [n] timesteps, n <= 64)",
                 st_path(f), prefix, st_shape_str(ids->ndim, ids->shape, sb, sizeof sb),
                 st_shape_str(lat->ndim, lat->shape, name, sizeof name), (long long)C);
        return BT_ESHAPE;
    }
    p->n = ids->shape[0];
    p->T = ids->shape[1];
    p->h = lat->shape[2];
    p->w = lat->shape[3];
    int64_t *tmp = bt_malloc((size_t)st_numel(ids) * sizeof(int64_t));
    p->ids = bt_malloc((size_t)st_numel(ids) * sizeof(int32_t));
    p->latents = bt_malloc((size_t)st_numel(lat) * sizeof(float));
    p->noise = bt_malloc((size_t)st_numel(nz) * sizeof(float));
    p->ts = bt_malloc((size_t)p->n * sizeof(int64_t));
    if (!tmp || !p->ids || !p->latents || !p->noise || !p->ts || st_read_i64(ids, tmp) || st_read_i64(ts, p->ts)) {
        free(tmp);
        s_part_free(p);
        BT_ERROR("%s: %s_input_ids and %s_timesteps must be integer tensors", st_path(f), prefix, prefix);
        return BT_EFORMAT;
    }
    for (int64_t i = 0; i < st_numel(ids); i++) p->ids[i] = (int32_t)tmp[i];
    free(tmp);
    st_read_f32(lat, p->latents);
    st_read_f32(nz, p->noise);
    return 0;
}

/* Adds the set's gradients (and, with adamw, the parameters after one step) to the writer. */
static int s_emit(st_writer_t *w, nn_ctx_t *ctx, const sd_lora_set_t *set, const char *part, bool adamw, float lr,
                  float b1, float b2, float eps, float wd)
{
    char name[512];
    int rc = BT_OK;
    for (int i = 0; set && i < set->params.n && rc == BT_OK; i++) {
        const sd_param_t *p = &set->params.p[i];
        int64_t n = 1;
        for (int d = 0; d < p->ndim; d++) n *= p->shape[d];
        const float *g = set->grad + (p->data - set->params.mem);
        snprintf(name, sizeof name, "grad.%s.%s", part, p->name);
        if ((rc = st_writer_add_copy(w, name, ST_F32, p->ndim, p->shape, g))) break;
        if (!adamw) continue;
        float *q = bt_malloc((size_t)n * sizeof(float)), *m = bt_calloc((size_t)n, sizeof(float));
        float *v = bt_calloc((size_t)n, sizeof(float));
        if (!q || !m || !v)
            rc = BT_ENOMEM;
        else {
            memcpy(q, p->data, (size_t)n * sizeof(float));
            rc = nn_adamw_step(ctx, q, m, v, g, n, lr, b1, b2, eps, wd, 1);
            snprintf(name, sizeof name, "adamw_step1.%s.%s", part, p->name);
            if (rc == BT_OK) rc = st_writer_add_copy(w, name, ST_F32, p->ndim, p->shape, q);
        }
        free(q);
        free(m);
        free(v);
    }
    return rc;
}

int cmd_lora_grad(int argc, char **argv)
{
    const char *base_dtype = NULL, *prediction_s = NULL;
    const char *model = NULL, *batch = NULL, *lora = NULL, *out = NULL;
    float lambda = 1.0f, alpha = 0, lr = 1e-4f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, wd = 1e-2f;
    bool adamw = false;
    const cli_opt_t opts[] = {
        CLI_OPT("--model", CLI_STR, &model, "DIR|FILE", "a diffusers model folder, or a single-file checkpoint (.safetensors) " CLI_MODEL_DEFAULT_HELP),
        CLI_OPT("--base-dtype", CLI_STR, &base_dtype, "TYPE", CLI_BASE_DTYPE_HELP),
        CLI_OPT("--prediction-type", CLI_STR, &prediction_s, "TYPE", CLI_PREDICTION_HELP),
        CLI_OPT("--batch", CLI_STR, &batch, "FILE", "batch safetensors (see the description; required)"),
        CLI_OPT("--lora", CLI_STR, &lora, "FILE", "LoRA file in any layout; its text-encoder entries train too"),
        CLI_OPT("--out", CLI_STR, &out, "FILE", "output safetensors (required)"),
        CLI_OPT("--prior-loss-weight", CLI_FLOAT, &lambda, "L", "weight of the class examples' loss (default 1)"),
        CLI_OPT("--lora-alpha", CLI_FLOAT, &alpha, "A", "alpha when the file states none (default: the rank)"),
        CLI_OPT("--adamw", CLI_FLAG, &adamw, NULL, "also write the parameters after one AdamW step"),
        CLI_OPT("--learning-rate", CLI_FLOAT, &lr, "LR", "AdamW lr (default 1e-4)"),
        CLI_OPT("--adam-beta1", CLI_FLOAT, &b1, "B", "default 0.9"),
        CLI_OPT("--adam-beta2", CLI_FLOAT, &b2, "B", "default 0.999"),
        CLI_OPT("--adam-epsilon", CLI_FLOAT, &eps, "E", "default 1e-8"),
        CLI_OPT("--adam-weight-decay", CLI_FLOAT, &wd, "W", "default 1e-2"),
        CLI_END,
    };
    const cli_spec_t spec = {
        "lora-grad", "--model DIR --batch FILE --lora FILE --out FILE [--adamw] [options]",
        "Computes the DreamBooth loss of one batch (instance MSE + lambda * class MSE) and the gradients of\n"
        "every LoRA matrix; writes loss, loss_instance, loss_prior ([1]) and grad.unet.<module>.lora_A.weight,\n"
        "... (grad.text_encoder.... when the file adapts the text encoder), and adamw_step1.<same> with --adamw.\n"
        "Batch tensors: {instance,class}_{input_ids,latents,noise,timesteps} (class_* optional).",
        opts, 0, NULL};
    const char *pos[1];
    int npos, rc = cli_parse(&spec, argc, argv, pos, &npos);
    if (rc >= 0) return rc;
    if (!batch || !lora || !out) {
        fprintf(stderr, "booth lora-grad: --batch, --lora and --out are required (see --help)\n");
        return 2;
    }
    if (!model && !(model = cli_default_model("lora-grad"))) return 2;
    if (bt_mkdirs_for(out)) return 1;
    sd_store_t store;
    if (!cli_base_dtype("lora-grad", base_dtype, &store)) return 2;
    int prediction;
    if (!cli_prediction_type("lora-grad", prediction_s, model, &prediction)) return 2;
    nn_ctx_t *ctx = nn_ctx_new(NN_BACKEND_CPU, 0);
    if (!ctx) return 1;
    int status = 1;
    s_part_t inst = {0}, cls = {0};
    st_file_t *bf = NULL;
    sd_lora_set_t *lu = NULL, *lt = NULL;
    sd_db_t *db = NULL;
    st_writer_t *w = NULL;
    int32_t *ids = NULL;
    float *lat = NULL, *noise = NULL, *weights = NULL, *per = NULL;
    int64_t *ts = NULL;
    sd_model_t *m = cli_model_load(ctx, model, SD_PART_TEXT | SD_PART_UNET | SD_PART_SCHEDULER, store, prediction);
    if (!m || !(bf = st_open(batch))) goto out;
    int64_t C = m->unet->cfg.in_channels;
    rc = s_read_part(bf, "instance", C, &inst);
    if (rc == 1) BT_ERROR("%s: no instance_input_ids", batch);
    if (rc) goto out;
    if ((rc = s_read_part(bf, "class", C, &cls)) < 0) goto out;
    if (cls.n && (cls.T != inst.T || cls.h != inst.h || cls.w != inst.w)) {
        BT_ERROR("%s: class tensors have another size than the instance tensors", batch);
        goto out;
    }
    sd_lora_load_opts_t lo = {.default_alpha = alpha, .with_grad = true};
    if (sd_lora_load(lora, ctx, m->unet, m->clip, &lo, &lu, &lt)) goto out;
    if (!lu) {
        BT_ERROR("%s: the LoRA adapts no UNet layer", lora);
        goto out;
    }
    if (!(db = sd_db_new(m, lu, lt, false))) goto out;
    int64_t n = inst.n + cls.n, pe = C * inst.h * inst.w;
    ids = bt_malloc((size_t)(n * inst.T) * sizeof(int32_t));
    lat = bt_malloc((size_t)(n * pe) * sizeof(float));
    noise = bt_malloc((size_t)(n * pe) * sizeof(float));
    weights = bt_malloc((size_t)n * sizeof(float));
    per = bt_malloc((size_t)n * sizeof(float));
    ts = bt_malloc((size_t)n * sizeof(int64_t));
    if (!ids || !lat || !noise || !weights || !per || !ts) goto out;
    for (int k = 0; k < 2; k++) {
        const s_part_t *p = k ? &cls : &inst;
        int64_t o = k ? inst.n : 0;
        memcpy(ids + o * inst.T, p->ids, (size_t)(p->n * inst.T) * sizeof(int32_t));
        memcpy(lat + o * pe, p->latents, (size_t)(p->n * pe) * sizeof(float));
        memcpy(noise + o * pe, p->noise, (size_t)(p->n * pe) * sizeof(float));
        for (int64_t i = 0; i < p->n; i++) {
            ts[o + i] = p->ts[i];
            weights[o + i] = (k ? lambda : 1.0f) / (float)p->n;
        }
    }
    sd_db_batch_t b = {.n = n, .T = inst.T, .h = inst.h, .w = inst.w, .ids = ids, .latents = lat, .noise = noise,
                       .timesteps = ts, .weights = weights};
    double loss;
    if (sd_db_step(db, &b, &loss, per)) goto out;
    float li = 0, lp = 0;
    for (int64_t i = 0; i < inst.n; i++) li += per[i] / (float)inst.n;
    for (int64_t i = 0; i < cls.n; i++) lp += per[inst.n + i] / (float)cls.n;
    float lf = (float)loss;
    const int64_t one[1] = {1};
    if (!(w = st_writer_new()) || st_writer_add_copy(w, "loss", ST_F32, 1, one, &lf) ||
        st_writer_add_copy(w, "loss_instance", ST_F32, 1, one, &li) ||
        st_writer_add_copy(w, "loss_prior", ST_F32, 1, one, &lp) ||
        s_emit(w, ctx, lu, "unet", adamw, lr, b1, b2, eps, wd) ||
        s_emit(w, ctx, lt, "text_encoder", adamw, lr, b1, b2, eps, wd) || st_writer_set_metadata(w, "model", model) ||
        st_writer_set_metadata(w, "lora", lora) || st_writer_save(w, out))
        goto out;
    fprintf(stderr, "booth lora-grad: loss %.7f (instance %.7f, prior %.7f); %d + %d adapters -> %s\n", loss, li, lp,
            lu->n, lt ? lt->n : 0, out);
    status = 0;
out:
    st_writer_destroy(&w);
    free(ids);
    free(lat);
    free(noise);
    free(weights);
    free(per);
    free(ts);
    s_part_free(&inst);
    s_part_free(&cls);
    sd_db_destroy(&db);
    sd_lora_destroy(&lu);
    sd_lora_destroy(&lt);
    st_close(&bf);
    sd_model_destroy(&m);
    nn_ctx_destroy(&ctx);
    return status;
}
