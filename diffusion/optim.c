/*
 * optim.c — LoRA optimizer state without a model: ordered gradient sums,
 * the global norm, clipping and AdamW, tensor by tensor (optim.h).
 */
#include "diffusion/optim.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/status.h"

void sd_optim_config_from_train(sd_optim_config_t *o, const sd_train_config_t *c)
{
    *o = (sd_optim_config_t){.learning_rate = c->learning_rate,
                             .lr_scheduler = c->lr_scheduler,
                             .lr_warmup_steps = c->lr_warmup_steps,
                             .max_train_steps = c->max_train_steps,
                             .lr_num_cycles = c->lr_num_cycles,
                             .lr_power = c->lr_power,
                             .beta1 = c->adam_beta1,
                             .beta2 = c->adam_beta2,
                             .epsilon = c->adam_epsilon,
                             .weight_decay = c->adam_weight_decay,
                             .max_grad_norm = c->max_grad_norm};
}

float sd_optim_lr(const sd_optim_config_t *c, int64_t step)
{
    return sd_lr_at_ex(c->lr_scheduler, c->learning_rate, step, c->lr_warmup_steps, c->max_train_steps,
                       c->lr_num_cycles, c->lr_power);
}

/* floats a tensor takes in the block, rounded up to 64 bytes so every array stays aligned */
static int64_t s_padded(int64_t numel) { return (numel + 15) / 16 * 16; }

void sd_optim_destroy(sd_optim_t **po)
{
    sd_optim_t *o = *po;
    if (!o) return;
    if (o->mem) nn_free(o->ctx, o->mem);
    free(o->t);
    free(o);
    *po = NULL;
}

sd_optim_t *sd_optim_new(nn_ctx_t *ctx, const sd_optim_config_t *cfg, const sd_optim_spec_t *spec, int n)
{
    sd_optim_t *o = bt_calloc(1, sizeof *o);
    if (!o || !(o->t = bt_calloc((size_t)(n ? n : 1), sizeof *o->t))) {
        free(o);
        BT_ERROR("optimizer: out of memory for %d tensors", n);
        return NULL;
    }
    o->ctx = ctx;
    o->cfg = *cfg;
    o->n = n;
    int64_t total = 0;
    for (int i = 0; i < n; i++) {
        const sd_optim_spec_t *s = &spec[i];
        if (s->shape[0] < 1 || s->shape[1] < 1 || s->shape[0] > (1 << 20) || s->shape[1] > (1 << 20) ||
            strlen(s->name) >= SD_OPTIM_NAME_MAX) {
            BT_ERROR("optimizer: tensor '%.80s' has shape [%lld, %lld] or a name too long", s->name,
                     (long long)s->shape[0], (long long)s->shape[1]);
            goto out_fail;
        }
        sd_optim_tensor_t *t = &o->t[i];
        snprintf(t->name, sizeof t->name, "%s", s->name);
        t->index = s->index;
        t->shape[0] = s->shape[0];
        t->shape[1] = s->shape[1];
        t->numel = s->shape[0] * s->shape[1];
        total += s_padded(t->numel) * (s->params ? 3 : 4);
    }
    if (!(o->mem = nn_alloc(ctx, (size_t)(total ? total : 16) * sizeof(float))) ||
        nn_fill(ctx, o->mem, total ? total : 16, 0)) {
        BT_ERROR("optimizer: cannot allocate %.1f MiB of state", (double)total * 4 / 1048576.0);
        goto out_fail;
    }
    float *q = o->mem;
    for (int i = 0; i < n; i++) {
        sd_optim_tensor_t *t = &o->t[i];
        int64_t pad = s_padded(t->numel);
        if (spec[i].params) {
            t->p = spec[i].params;
        } else {
            t->p = q;
            q += pad;
        }
        t->m = q;
        t->v = q + pad;
        t->g = q + 2 * pad;
        q += 3 * pad;
    }
    return o;
out_fail:
    sd_optim_destroy(&o);
    return NULL;
}

int sd_optim_spec_params(const sd_params_t *ps, const char *prefix, int first, sd_optim_spec_t *spec,
                         char (*names)[SD_OPTIM_NAME_MAX], float **grads)
{
    int i = first;
    for (int j = 0; j < ps->n; j++, i++) {
        const sd_param_t *p = &ps->p[j];
        int64_t rest = 1;
        for (int d = 1; d < p->ndim; d++) rest *= p->shape[d];
        snprintf(names[i], SD_OPTIM_NAME_MAX, "%s.%s", prefix, p->name);
        spec[i] = (sd_optim_spec_t){.name = names[i], .index = i, .shape = {p->shape[0], rest}, .params = p->data};
        grads[i] = ps->grad + (p->data - ps->mem);
    }
    return i;
}

int sd_optim_find(const sd_optim_t *o, const char *name)
{
    for (int i = 0; i < o->n; i++)
        if (!strcmp(o->t[i].name, name)) return i;
    return -1;
}

int sd_optim_add_grad(sd_optim_t *o, int i, int k, const float *g)
{
    sd_optim_tensor_t *t = &o->t[i];
    return k == 0 ? nn_copy(o->ctx, t->g, g, (size_t)t->numel * sizeof(float)) : nn_axpy(o->ctx, t->g, g, t->numel, 1.0f);
}

int sd_optim_sum_squares(const sd_optim_t *o, int i, double *out)
{
    return nn_sum_squares(o->ctx, out, o->t[i].g, o->t[i].numel);
}

double sd_grad_norm(const double *ss, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++) s += ss[i];
    return sqrt(s);
}

int sd_optim_apply(sd_optim_t *o, double norm, float *lr_used)
{
    const sd_optim_config_t *c = &o->cfg;
    int rc = BT_OK;
    if (c->max_grad_norm > 0) {
        double coef = c->max_grad_norm / (norm + 1e-6);
        if (coef < 1.0)
            for (int i = 0; i < o->n && rc == BT_OK; i++) rc = nn_scale(o->ctx, o->t[i].g, o->t[i].numel, (float)coef);
    }
    if (rc) return rc;
    float lr = sd_optim_lr(c, o->step);
    if (lr_used) *lr_used = lr;
    o->step++;
    for (int i = 0; i < o->n && rc == BT_OK; i++) {
        sd_optim_tensor_t *t = &o->t[i];
        rc = nn_adamw_step(o->ctx, t->p, t->m, t->v, t->g, t->numel, lr, c->beta1, c->beta2, c->epsilon,
                           c->weight_decay, o->step);
    }
    return rc;
}

int sd_optim_step(sd_optim_t *o, float *lr_used, double *grad_norm)
{
    double *ss = bt_malloc((size_t)(o->n ? o->n : 1) * sizeof *ss);
    if (!ss) return BT_ENOMEM;
    int rc = BT_OK;
    for (int i = 0; i < o->n && rc == BT_OK; i++) rc = sd_optim_sum_squares(o, i, &ss[i]);
    double norm = rc ? 0 : sd_grad_norm(ss, o->n); /* a failed sum leaves later entries unset */
    free(ss);
    if (rc) return rc;
    if (grad_norm) *grad_norm = norm;
    return sd_optim_apply(o, norm, lr_used);
}
