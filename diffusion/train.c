/*
 * train.c — the DreamBooth LoRA trainer: example plans, micro-batch gradients,
 * clipping and AdamW.
 *
 * Example order: the instance images form a stream of epochs; epoch e visits
 * max(#instances, #class images) positions in the order of a permutation drawn
 * from (seed, e), position i using instance i % #instances and class image
 * i % #classes (diffusers' DreamBoothDataset indexing). A step takes the next
 * train_batch_size positions. Everything random about an example (its
 * timestep, noise, latent sample, flip) comes from RNG streams keyed by (seed,
 * step, slot), so any worker can rebuild any example without replaying others.
 */
#include "diffusion/train.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/image.h"
#include "common/log.h"
#include "common/rng.h"
#include "common/status.h"
#include "diffusion/layout.h"
#include "diffusion/optim.h"
#include "diffusion/vae.h"
#include "nn/nn.h"
#include "storage/lora_file.h"

/* RNG stream tags of an example's random choices */
enum {
    TAG_TIMESTEP = 1,
    TAG_NOISE,
    TAG_LATENT,
    TAG_FLIP,
    TAG_OFFSET,
    TAG_EPOCH = 100,
    TAG_LORA_UNET,
    TAG_LORA_TEXT,
    TAG_EVAL,
    TAG_CROP_INSTANCE,
    TAG_CROP_CLASS
};

static const char *const s_lr_names[] = {"constant", "constant_with_warmup", "linear", "cosine",
                                         "cosine_with_restarts", "polynomial"};
#define S_NLR ((int)(sizeof s_lr_names / sizeof s_lr_names[0]))

bool sd_lr_sched_parse(const char *name, sd_lr_sched_t *out)
{
    const char *const *names = s_lr_names;
    for (int i = 0; i < S_NLR; i++)
        if (!strcmp(name, names[i])) {
            *out = (sd_lr_sched_t)i;
            return true;
        }
    return false;
}

const char *sd_lr_sched_name(sd_lr_sched_t s) { return (unsigned)s < (unsigned)S_NLR ? s_lr_names[s] : "?"; }

float sd_lr_at(sd_lr_sched_t s, float lr, int64_t step, int64_t warmup, int64_t total)
{
    return sd_lr_at_ex(s, lr, step, warmup, total, 1, 1.0f);
}

/* transformers/diffusers optimization.py, lr_lambda by lr_lambda, in double as Python computes them;
 * LambdaLR then multiplies the base lr by the factor. */
float sd_lr_at_ex(sd_lr_sched_t s, float lr, int64_t step, int64_t warmup, int64_t total, int num_cycles, float power)
{
    double f = 1.0, decay = (double)(total - warmup > 1 ? total - warmup : 1); /* max(1, total - warmup) */
    double progress = (double)(step - warmup) / decay;
    if (s != SD_LR_CONSTANT && step < warmup) {
        f = (double)step / (double)(warmup > 1 ? warmup : 1);
    } else if (s == SD_LR_LINEAR) {
        f = (double)(total - step) / decay;
        if (f < 0) f = 0;
    } else if (s == SD_LR_COSINE) { /* num_cycles 0.5: half a cosine down to zero */
        f = 0.5 * (1.0 + cos(M_PI * 0.5 * 2.0 * progress));
        if (f < 0) f = 0;
    } else if (s == SD_LR_COSINE_RESTARTS) { /* get_cosine_with_hard_restarts_schedule_with_warmup */
        if (progress >= 1.0) {
            f = 0.0;
        } else {
            f = 0.5 * (1.0 + cos(M_PI * fmod((double)num_cycles * progress, 1.0)));
            if (f < 0) f = 0;
        }
    } else if (s == SD_LR_POLYNOMIAL) { /* get_polynomial_decay_schedule_with_warmup, lr_end 1e-7 */
        double init = (double)lr, end = SD_LR_POLY_END;
        if (step > total) {
            f = end / init;
        } else {
            /* decay_steps = total - warmup, not max(1, ...): step == total == warmup divides 0 by 0 in
             * Python (an error there); here the warm-up's end, factor 1 */
            double steps = (double)(total - warmup);
            double remaining = steps > 0 ? 1.0 - (double)(step - warmup) / steps : 1.0;
            f = ((init - end) * pow(remaining, (double)power) + end) / init;
        }
    }
    return (float)(lr * f);
}

void sd_train_config_defaults(sd_train_config_t *c)
{
    memset(c, 0, sizeof *c);
    c->prior_loss_weight = 1.0f;
    c->num_class_images = 100;
    c->class_steps = 25;
    c->class_guidance = 7.5f;
    c->resolution = 512;
    c->train_batch_size = 1;
    c->max_train_steps = 500;
    c->learning_rate = 1e-4f;
    c->lr_scheduler = SD_LR_CONSTANT;
    c->lr_num_cycles = 1;
    c->lr_power = 1.0f;
    c->center_crop = true; /* the library's behaviour before the flag; booth train and job files default to false */
    c->rank = 4;
    c->lora_alpha = 0; /* 0: = rank */
    c->max_grad_norm = 1.0f;
    c->adam_beta1 = 0.9f;
    c->adam_beta2 = 0.999f;
    c->adam_epsilon = 1e-8f;
    c->adam_weight_decay = 1e-2f;
    c->num_validation_images = 4;
}

/* floats in a LoRA set's parameter block (64-byte aligned parts, as allocated) */
static int64_t s_block_floats(const sd_lora_set_t *s)
{
    const sd_param_t *last = &s->params.p[s->params.n - 1];
    int64_t n = 1;
    for (int d = 0; d < last->ndim; d++) n *= last->shape[d];
    return (last->data - s->params.mem) + n;
}


/* Full fine-tuning's tensor table: every UNet parameter in model order, "unet.<diffusers name>",
 * then (when it trains) every text-encoder parameter, "text_encoder.<transformers name>", each
 * shaped [first dimension, the rest] as the optimizer and the parameter server hold tensors. */
static int s_tensors_full(sd_trainer_t *t)
{
    sd_params_t *parts[2] = {&t->model->unet->params, t->base_text ? &t->model->clip->params : NULL};
    static const char *const prefix[2] = {"unet", "text_encoder"};
    int n = parts[0]->n + (parts[1] ? parts[1]->n : 0), i = 0;
    t->tensors = bt_calloc((size_t)(n ? n : 1), sizeof *t->tensors);
    t->grads = bt_calloc((size_t)(n ? n : 1), sizeof *t->grads);
    t->names = bt_calloc((size_t)(n ? n : 1), sizeof *t->names);
    if (!t->tensors || !t->grads || !t->names) return BT_ENOMEM;
    for (int k = 0; k < 2; k++) {
        if (!parts[k]) continue;
        i = sd_optim_spec_params(parts[k], prefix[k], i, t->tensors, t->names, t->grads);
        t->nblock[k] = sd_params_block_floats(parts[k]);
    }
    t->ntensors = n;
    return BT_OK;
}

/* Full fine-tuning: a part's gradient block (allocated, every slot pointed into it) and a host
 * copy of its weights as loaded (*base), which the model gets back when the trainer gives it up. */
static int s_full_part(nn_ctx_t *ctx, sd_params_t *ps, float **base)
{
    size_t bytes = (size_t)sd_params_block_floats(ps) * sizeof(float);
    int rc = sd_params_alloc_grads(ps);
    if (rc) return rc;
    if (!(*base = bt_malloc(bytes))) return BT_ENOMEM;
    return nn_download(ctx, *base, ps->mem, bytes);
}

/* The weights a part came with back in place (base NULL: never changed), its gradients freed. */
static int s_full_restore(nn_ctx_t *ctx, sd_params_t *ps, const float *base)
{
    int rc = base ? nn_upload(ctx, ps->mem, base, (size_t)sd_params_block_floats(ps) * sizeof(float)) : BT_OK;
    sd_params_free_grads(ps);
    return rc;
}

/* The tensor table: every LoRA parameter in global order, named as checkpoints name them. */
static int s_tensors(sd_trainer_t *t)
{
    if (t->cfg.full_unet) return s_tensors_full(t);
    sd_lora_set_t *sets[2] = {t->lora_unet, t->lora_text};
    int n = 0;
    for (int k = 0; k < 2; k++) n += sets[k] ? sets[k]->params.n : 0;
    t->tensors = bt_calloc((size_t)(n ? n : 1), sizeof *t->tensors);
    t->grads = bt_calloc((size_t)(n ? n : 1), sizeof *t->grads);
    char (*names)[SD_OPTIM_NAME_MAX] = bt_calloc((size_t)(n ? n : 1), sizeof *names);
    if (!t->tensors || !t->grads || !names) {
        free(names);
        return BT_ENOMEM;
    }
    t->names = names;
    int i = 0;
    for (int k = 0; k < 2; k++) {
        if (!sets[k]) continue;
        sd_lora_set_t *s = sets[k];
        t->nblock[k] = s_block_floats(s);
        st_lora_part_t part = s->part == SD_LORA_TEXT ? ST_LORA_PART_TEXT : ST_LORA_PART_UNET;
        for (int j = 0; j < s->params.n; j++, i++) {
            const sd_param_t *p = &s->params.p[j];
            if (st_lora_key(names[i], SD_OPTIM_NAME_MAX, ST_LORA_PEFT, part, j % 2 ? ST_LORA_B : ST_LORA_A,
                            s->modules[j / 2])) {
                BT_ERROR("train: module name '%s' is too long", s->modules[j / 2]);
                return BT_EINVAL;
            }
            t->tensors[i] = (sd_optim_spec_t){.name = names[i], .index = i, .shape = {p->shape[0], p->shape[1]},
                                              .params = p->data};
            t->grads[i] = s->grad + (p->data - s->params.mem);
        }
    }
    t->ntensors = n;
    return BT_OK;
}

void sd_trainer_destroy(sd_trainer_t **pt)
{
    sd_trainer_t *t = *pt;
    if (!t) return;
    free(t->tensors);
    free(t->grads);
    free(t->names);
    free(t->base_unet);
    free(t->base_text);
    free(t->ids_instance);
    free(t->ids_class);
    if (t->ehs && t->model) nn_free(t->model->ctx, t->ehs);
    sd_db_destroy(&t->db);
    sd_lora_destroy(&t->lora_unet);
    sd_lora_destroy(&t->lora_text);
    sd_image_set_free(&t->instances);
    sd_image_set_free(&t->classes);
    sd_model_destroy(&t->model);
    free(t);
    *pt = NULL;
}

sd_model_t *sd_trainer_take_model(sd_trainer_t **pt)
{
    sd_trainer_t *t = *pt;
    if (!t) return NULL;
    sd_model_t *m = t->model;
    if (m && t->cfg.full_unet) { /* full fine-tuning: the model goes back with the weights it came with */
        int rc = m->unet ? s_full_restore(m->ctx, &m->unet->params, t->base_unet) : BT_OK;
        if (rc == BT_OK && m->clip) rc = s_full_restore(m->ctx, &m->clip->params, t->base_text);
        if (rc) {
            BT_ERROR("train: cannot restore the model's weights after full fine-tuning; the model is dropped");
            sd_model_destroy(&m);
        }
    }
    t->model = NULL;
    if (t->ehs && m) nn_free(m->ctx, t->ehs);
    t->ehs = NULL;
    sd_trainer_destroy(pt);
    return m;
}

/* keep: on failure the model goes back to *model (LoRA detached) instead of being destroyed */
static sd_trainer_t *s_trainer_new(sd_model_t **model, const sd_train_config_t *cfg, sd_progress_fn progress,
                                   void *user, bool keep)
{
    sd_trainer_t *t = bt_calloc(1, sizeof *t);
    if (!t) {
        BT_ERROR("train: out of memory");
        if (!keep) sd_model_destroy(model);
        return NULL;
    }
    t->model = *model;
    *model = NULL;
    nn_ctx_t *ctx = t->model->ctx;
    t->cfg = *cfg;
    sd_train_config_t *c = &t->cfg;
    c->base_weights = sd_model_weights(t->model);
    sd_train_config_resolve(c);
    if (c->train_batch_size < 1 || c->max_train_steps < 0 || c->rank < 1) {
        BT_ERROR("train: batch size and rank must be positive");
        goto out_fail;
    }
    if (!t->model->tok || !t->model->clip || !t->model->unet || !t->model->vae) {
        BT_ERROR("%s: training needs every part of the model folder", t->model->dir);
        goto out_fail;
    }
    t->T = sd_prompt_tokens(t->model);
    if (!(t->ids_instance = bt_calloc((size_t)t->T, sizeof(int32_t))) ||
        !(t->ids_class = bt_calloc((size_t)t->T, sizeof(int32_t)))) {
        BT_ERROR("train: out of memory for %lld prompt tokens", (long long)t->T);
        goto out_fail;
    }
    if (sd_prompt_ids(t->model, c->instance_prompt, t->ids_instance)) goto out_fail;
    if (c->prior_preservation && sd_prompt_ids(t->model, c->class_prompt, t->ids_class)) goto out_fail;

    if (c->full_unet) { /* every UNet (and text-encoder) weight trains: gradients for all, and the weights as
                         * loaded kept aside */
        if (s_full_part(ctx, &t->model->unet->params, &t->base_unet) ||
            (c->train_text_encoder && s_full_part(ctx, &t->model->clip->params, &t->base_text)))
            goto out_fail;
    } else if (!(t->lora_unet = sd_lora_attach_unet(t->model->unet, c->rank, c->lora_alpha, NULL)) ||
               sd_lora_alloc(t->lora_unet, ctx, true) ||
               sd_lora_init(t->lora_unet, bt_rng_key(c->seed, TAG_LORA_UNET))) {
        goto out_fail;
    }
    if (c->train_text_encoder && !c->full_unet &&
        (!(t->lora_text = sd_lora_attach_clip(t->model->clip, c->rank, c->lora_alpha, NULL)) ||
         sd_lora_alloc(t->lora_text, ctx, true) || sd_lora_init(t->lora_text, bt_rng_key(c->seed, TAG_LORA_TEXT))))
        goto out_fail;
    if (!(t->db = sd_db_new(t->model, t->lora_unet, t->lora_text, c->gradient_checkpointing))) goto out_fail;
    t->db->text_full = t->base_text != NULL;
    if (!c->train_text_encoder) { /* the embeddings never change: once, not every micro-batch */
        int64_t cd = t->model->clip->cfg.hidden_size;
        sd_run_t r = {.nn = ctx, .scratch = &t->model->scratch};
        if (!(t->ehs = nn_alloc(ctx, (size_t)(4 * t->T * cd) * sizeof(float))) ||
            sd_clip_forward(&r, t->model->clip, t->ehs, NULL, t->ids_instance, 1, t->T, t->db->clip_skip) ||
            (c->prior_preservation &&
             sd_clip_forward(&r, t->model->clip, t->ehs + t->T * cd, NULL, t->ids_class, 1, t->T, t->db->clip_skip)) ||
            /* validation renders encode like `booth generate` (sd_encode_prompt), not like training */
            (c->validation_prompt && (sd_encode_prompt(t->model, t->ehs + 2 * t->T * cd, c->validation_prompt, 0) ||
                                      sd_encode_prompt(t->model, t->ehs + 3 * t->T * cd, "", 0))))
            goto out_fail;
    }

    /* a folder of photos, or an HDF5 file that stores them encoded (a checkpoint, a cluster job's data file,
     * whose pixels are cut to a square already) */
    uint64_t crop_inst = bt_rng_key(c->seed, TAG_CROP_INSTANCE), crop_class = bt_rng_key(c->seed, TAG_CROP_CLASS);
    if (sd_is_prior_file(c->instance_dir)
            ? sd_image_set_load_h5(&t->instances, t->model, c->instance_dir, SD_H5_INSTANCE, c->resolution,
                                   c->random_flip, 0, progress, user)
            : sd_image_set_load_crop(&t->instances, t->model, c->instance_dir, c->resolution, c->random_flip, 0,
                                     c->center_crop ? NULL : &crop_inst, progress, user))
        goto out_fail;
    if (c->prior_preservation &&
        sd_image_set_load_crop(&t->classes, t->model, c->class_dir, c->resolution, c->random_flip, c->num_class_images,
                               c->center_crop ? NULL : &crop_class, progress, user))
        goto out_fail;

    if (s_tensors(t)) goto out_fail;
    return t;
out_fail:
    if (keep) *model = sd_trainer_take_model(&t);
    sd_trainer_destroy(&t);
    return NULL;
}

sd_trainer_t *sd_trainer_new(sd_model_t **model, const sd_train_config_t *cfg, sd_progress_fn progress, void *user)
{
    return s_trainer_new(model, cfg, progress, user, false);
}

sd_trainer_t *sd_trainer_new_keep(sd_model_t **model, const sd_train_config_t *cfg, sd_progress_fn progress,
                                  void *user)
{
    return s_trainer_new(model, cfg, progress, user, true);
}

void sd_trainer_release_text_encoder(sd_trainer_t *t)
{
    if (t->ehs && t->model->clip) sd_clip_destroy(&t->model->clip);
}

/* A batch's precomputed embeddings: example i's prompt (class when is_class[i];
 * is_class NULL: all instance) into row i of a new buffer in the context's
 * memory; NULL without a cache (or memory: *rc says). */
static float *s_batch_ehs(const sd_trainer_t *t, const bool *is_class, int n, int *rc)
{
    if (!t->ehs) return NULL;
    nn_ctx_t *ctx = t->model->ctx;
    size_t row = (size_t)(t->T * t->model->unet->cfg.cross_attention_dim[0]);
    float *e = nn_alloc(ctx, (size_t)n * row * sizeof(float));
    if (!e) {
        *rc = BT_ENOMEM;
        return NULL;
    }
    for (int i = 0; i < n && !*rc; i++) *rc = nn_copy(ctx, e + i * row, t->ehs + (is_class && is_class[i] ? row : 0), row * sizeof(float));
    if (*rc) {
        nn_free(ctx, e);
        return NULL;
    }
    return e;
}

void sd_train_config_resolve(sd_train_config_t *c)
{
    if (c->lora_alpha <= 0) c->lora_alpha = (float)c->rank;
    if (c->micro_batch_size <= 0) c->micro_batch_size = c->prior_preservation ? 2 : 1;
}

int sd_train_num_microbatches(const sd_train_config_t *c)
{
    int n = c->train_batch_size * (c->prior_preservation ? 2 : 1), mb = c->micro_batch_size;
    if (mb <= 0) mb = c->prior_preservation ? 2 : 1;
    return (n + mb - 1) / mb;
}

int sd_trainer_num_microbatches(const sd_trainer_t *t) { return sd_train_num_microbatches(&t->cfg); }

/* Position p of the example stream -> dataset index (a permutation per epoch); -1 (logged) out of memory. */
static int64_t s_dataset_index(const sd_trainer_t *t, int64_t p)
{
    int64_t L = t->instances.n;
    if (t->cfg.prior_preservation && t->classes.n > L) L = t->classes.n;
    int64_t epoch = p / L, q = p % L;
    /* Fisher-Yates over [0, L) keyed by (seed, epoch); L is small (tens to hundreds) */
    int64_t *perm = bt_malloc((size_t)L * sizeof *perm);
    if (!perm) { /* never another example: the step fails, saying why */
        BT_ERROR("train: out of memory for the order of %lld examples", (long long)L);
        return -1;
    }
    for (int64_t i = 0; i < L; i++) perm[i] = i;
    uint64_t key = bt_rng_key(t->cfg.seed, bt_rng_stream(TAG_EPOCH, (uint64_t)epoch, 0));
    for (int64_t i = L - 1; i > 0; i--) {
        int64_t j = (int64_t)bt_rng_below(key, (uint64_t)i, (uint64_t)(i + 1));
        int64_t tmp = perm[i];
        perm[i] = perm[j];
        perm[j] = tmp;
    }
    int64_t r = perm[q];
    free(perm);
    return r;
}

int sd_trainer_plan(const sd_trainer_t *t, int64_t step, sd_train_example_t *ex, int *n)
{
    const sd_train_config_t *c = &t->cfg;
    int B = c->train_batch_size, k = 0;
    int64_t N = t->db->table.num_train_timesteps;
    float snr_w[256];
    if (B > 128) {
        BT_ERROR("train: --train-batch-size %d is over 128", B);
        return BT_EINVAL;
    }
    for (int j = 0; j < B; j++) {
        int64_t idx = s_dataset_index(t, step * B + j);
        if (idx < 0) return BT_ENOMEM;
        for (int kind = 0; kind < (c->prior_preservation ? 2 : 1); kind++) {
            sd_train_example_t *e = &ex[k];
            memset(e, 0, sizeof *e); /* padding too: plans compare with memcmp */
            uint64_t slot = (uint64_t)k;
            e->is_class = kind == 1;
            e->image = (int)(idx % (kind ? t->classes.n : t->instances.n));
            e->timestep = (int64_t)bt_rng_below(
                bt_rng_key(c->seed, bt_rng_stream((uint64_t)step, slot, TAG_TIMESTEP)), 0, (uint64_t)N);
            e->noise_key = bt_rng_key(c->seed, bt_rng_stream((uint64_t)step, slot, TAG_NOISE));
            e->latent_key = bt_rng_key(c->seed, bt_rng_stream((uint64_t)step, slot, TAG_LATENT));
            e->offset_key = bt_rng_key(c->seed, bt_rng_stream((uint64_t)step, slot, TAG_OFFSET));
            e->flip = c->random_flip &&
                      bt_rng_uniform(bt_rng_key(c->seed, bt_rng_stream((uint64_t)step, slot, TAG_FLIP)), 0) < 0.5;
            e->weight = kind ? c->prior_loss_weight / (float)B : 1.0f / (float)B;
            k++;
        }
    }
    if (c->snr_gamma > 0) { /* min-SNR weighting of the instance examples (diffusers applies it there only) */
        int64_t ts[256] = {0};
        for (int i = 0; i < k; i++) ts[i] = ex[i].timestep;
        int rc = sd_sched_snr(&t->db->table, snr_w, ts, k);
        if (rc) return rc;
        for (int i = 0; i < k; i++) {
            if (ex[i].is_class) continue;
            float snr = snr_w[i], m = snr < c->snr_gamma ? snr : c->snr_gamma;
            ex[i].weight *= t->db->prediction == SD_PRED_V ? m / (snr + 1.0f) : m / snr;
        }
    }
    *n = k;
    return BT_OK;
}

int sd_trainer_microbatch(sd_trainer_t *t, int64_t step, int k, double *loss, double *loss_inst, double *loss_prior)
{
    sd_train_example_t ex[256];
    int n;
    int rc = sd_trainer_plan(t, step, ex, &n);
    if (rc) return rc;
    int mb = t->cfg.micro_batch_size, first = k * mb;
    if (k < 0 || first >= n) return BT_EINVAL;
    int cnt = n - first < mb ? n - first : mb;
    const sd_image_set_t *set = &t->instances;
    int64_t C = set->C, h = set->h, w = set->w, per = C * h * w, T = t->T;
    int32_t *ids = bt_malloc((size_t)(cnt * T) * sizeof(int32_t));
    float *lat = bt_malloc((size_t)(cnt * per) * sizeof(float)), *noise = bt_malloc((size_t)(cnt * per) * sizeof(float));
    float weights[256], per_ex[256], off[64], *ehs = NULL;
    int64_t ts[256] = {0};
    if (!ids || !lat || !noise) {
        rc = BT_ENOMEM;
        goto out;
    }
    for (int i = 0; i < cnt; i++) {
        const sd_train_example_t *e = &ex[first + i];
        memcpy(ids + i * T, e->is_class ? t->ids_class : t->ids_instance, (size_t)T * sizeof(int32_t));
        sd_image_set_sample(e->is_class ? &t->classes : &t->instances, t->model, e->image, e->flip, e->latent_key,
                            lat + i * per);
        bt_rng_normal_fill(noise + i * per, per, e->noise_key);
        if (t->cfg.noise_offset != 0 && C <= 64) { /* noise += offset * N(0,1) per (example, channel) */
            bt_rng_normal_fill(off, C, e->offset_key);
            for (int64_t c = 0; c < C; c++)
                for (int64_t j = 0; j < h * w; j++) noise[i * per + c * h * w + j] += t->cfg.noise_offset * off[c];
        }
        ts[i] = e->timestep;
        weights[i] = e->weight;
    }
    if (t->cfg.full_unet) {
        rc = nn_fill(t->model->ctx, t->model->unet->params.grad, t->nblock[0], 0.0f);
        if (rc == BT_OK && t->base_text) rc = nn_fill(t->model->ctx, t->model->clip->params.grad, t->nblock[1], 0.0f);
    } else {
        rc = sd_lora_zero_grad(t->lora_unet);
    }
    if (rc || (t->lora_text && (rc = sd_lora_zero_grad(t->lora_text)))) goto out;
    bool is_class[256];
    for (int i = 0; i < cnt; i++) is_class[i] = ex[first + i].is_class;
    if (!(ehs = s_batch_ehs(t, is_class, cnt, &rc)) && rc) goto out;
    sd_db_batch_t b = {.n = cnt, .T = T, .h = h, .w = w, .ids = ids, .latents = lat, .noise = noise,
                       .timesteps = ts, .weights = weights, .ehs = ehs};
    if ((rc = sd_db_step(t->db, &b, loss, per_ex))) goto out;
    *loss_inst = *loss_prior = 0;
    for (int i = 0; i < cnt; i++) *(ex[first + i].is_class ? loss_prior : loss_inst) += per_ex[i];
out:
    if (ehs) nn_free(t->model->ctx, ehs);
    free(ids);
    free(lat);
    free(noise);
    return rc;
}

sd_optim_t *sd_trainer_optim(const sd_trainer_t *t)
{
    sd_optim_config_t oc;
    sd_optim_config_from_train(&oc, &t->cfg);
    return sd_optim_new(t->model->ctx, &oc, t->tensors, t->ntensors);
}

int sd_trainer_step(sd_trainer_t *t, sd_optim_t *o, sd_step_stats_t *st)
{
    int nmb = sd_trainer_num_microbatches(t), rc = BT_OK;
    double loss = 0, li = 0, lp = 0;
    if (o->n != t->ntensors) return BT_EINVAL;
    for (int k = 0; k < nmb; k++) {
        double l, a, b;
        if ((rc = sd_trainer_microbatch(t, o->step, k, &l, &a, &b))) return rc;
        loss += l;
        li += a;
        lp += b;
        /* the step's gradient: micro-batch gradients added in order, as the parameter server does */
        for (int i = 0; i < o->n && rc == BT_OK; i++) rc = sd_optim_add_grad(o, i, k, t->grads[i]);
        if (rc) return rc;
    }
    int B = t->cfg.train_batch_size;
    st->loss = loss;
    st->loss_instance = li / B;
    st->loss_prior = lp / B;
    return sd_optim_step(o, &st->lr, &st->grad_norm);
}

int sd_trainer_set_tensor(sd_trainer_t *t, const char *name, const float *data, int64_t n)
{
    for (int i = 0; i < t->ntensors; i++) {
        const sd_optim_spec_t *s = &t->tensors[i];
        if (strcmp(s->name, name)) continue;
        if (n != s->shape[0] * s->shape[1]) {
            BT_ERROR("train: tensor '%s' has %lld values, the model's adapter %lld", name, (long long)n,
                     (long long)(s->shape[0] * s->shape[1]));
            return BT_ESHAPE;
        }
        return nn_upload(t->model->ctx, s->params, data, (size_t)n * sizeof(float));
    }
    BT_ERROR("train: no %s tensor '%s' in this model", t->cfg.full_unet ? "trained" : "LoRA", name);
    return BT_ENOTFOUND;
}

int sd_trainer_validate(sd_trainer_t *t, int64_t step, bt_img_t **grid)
{
    sd_model_t *m = t->model;
    const char *prompt = t->cfg.validation_prompt;
    int num = t->cfg.num_validation_images;
    int64_t h = t->instances.h, w = t->instances.w, C = t->instances.C, T = t->T;
    int64_t sc = sd_vae_scale(m->vae); /* pixels per latent */
    int64_t cd = m->unet->cfg.cross_attention_dim[0], npix = 3 * h * sc * w * sc;
    int rc = BT_OK;
    *grid = NULL;
    if (!prompt) return BT_EINVAL;
    /* with a frozen text encoder the prompts were embedded at the start ([2] prompt, [3] ""); else now,
     * with the text encoder as it trains (LoRA or full) */
    float *own = t->ehs ? NULL : nn_alloc(m->ctx, (size_t)(2 * T * cd) * sizeof(float));
    const float *embeds = t->ehs ? t->ehs + 2 * T * cd : own;
    float *lat = bt_malloc((size_t)(C * h * w) * sizeof(float)), *img = bt_malloc((size_t)npix * sizeof(float));
    bt_img_t *tiles[16] = {0};
    if (num > 16) num = 16;
    if (!embeds || !lat || !img) {
        rc = BT_ENOMEM;
        goto out;
    }
    if (own && ((rc = sd_encode_prompt(m, own, prompt, 0)) || (rc = sd_encode_prompt(m, own + T * cd, "", 0))))
        goto out;
    sd_sample_params_t p = {.guidance = 7.5f, .steps = 25, .sampler = m->default_sampler, .seed = t->cfg.seed};
    for (int i = 0; i < num; i++) {
        p.first_index = i; /* the same noise at every validation: the grids are comparable */
        if ((rc = sd_sample(m, &p, embeds, embeds + T * cd, T, lat, false, 1, h, w)) ||
            (rc = sd_decode(m, img, NULL, lat, 1, h, w)))
            goto out;
        if (!(tiles[i] = bt_img_from_f32_chw(img, 3, (int)(h * sc), (int)(w * sc), BT_IMG_RANGE_01))) {
            rc = BT_ENOMEM;
            goto out;
        }
    }
    char title[512];
    snprintf(title, sizeof title, "step %lld: %s", (long long)step, prompt);
    bt_img_grid_opts_t o = BT_IMG_GRID_OPTS_INIT;
    o.title = title;
    int cols = num < 4 ? num : 4, rows = (num + cols - 1) / cols;
    if (!(*grid = bt_img_grid((const bt_img_t *const *)tiles, rows, cols, &o))) rc = BT_ENOMEM;
out:
    for (int i = 0; i < 16; i++) bt_img_destroy(&tiles[i]);
    if (own) nn_free(m->ctx, own);
    free(lat);
    free(img);
    return rc;
}

int sd_trainer_eval(sd_trainer_t *t, double *loss)
{
    const sd_image_set_t *set = &t->instances;
    int nt = 5, n = set->n * nt, rc = BT_OK;
    int64_t per = set->C * set->h * set->w, T = t->T, N = t->db->table.num_train_timesteps;
    int32_t *ids = bt_malloc((size_t)(n * T) * sizeof(int32_t));
    float *lat = bt_malloc((size_t)(n * per) * sizeof(float)), *noise = bt_malloc((size_t)(n * per) * sizeof(float));
    float *weights = bt_malloc((size_t)n * sizeof(float));
    int64_t *ts = bt_malloc((size_t)n * sizeof(int64_t));
    if (!ids || !lat || !noise || !weights || !ts) {
        rc = BT_ENOMEM;
        goto out;
    }
    for (int i = 0; i < n; i++) {
        int img = i / nt, k = i % nt;
        memcpy(ids + i * T, t->ids_instance, (size_t)T * sizeof(int32_t));
        sd_image_set_sample(set, t->model, img, false, bt_rng_key(t->cfg.seed, bt_rng_stream(TAG_EVAL, (uint64_t)i, 1)),
                            lat + i * per);
        bt_rng_normal_fill(noise + i * per, per, bt_rng_key(t->cfg.seed, bt_rng_stream(TAG_EVAL, (uint64_t)i, 2)));
        ts[i] = (int64_t)((2 * k + 1) * N / (2 * nt));
        weights[i] = 1.0f / (float)n;
    }
    float *ehs = s_batch_ehs(t, NULL, n, &rc);
    if (rc) goto out;
    sd_db_batch_t b = {.n = n, .T = T, .h = set->h, .w = set->w, .ids = ids, .latents = lat, .noise = noise,
                       .timesteps = ts, .weights = weights, .ehs = ehs};
    rc = sd_db_eval(t->db, &b, loss, NULL);
    if (ehs) nn_free(t->model->ctx, ehs);
out:
    free(ids);
    free(lat);
    free(noise);
    free(weights);
    free(ts);
    return rc;
}
