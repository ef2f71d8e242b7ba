/*
 * optim.h — the optimizer state of a LoRA run, with no model attached: the
 * tensors (parameters, AdamW m and v, the step's gradient sum), the step, and
 * the schedule. It is what a parameter server holds, and what `booth train`
 * holds beside its gradient computer (diffusion/train.h).
 *
 * A step is, per tensor:
 *
 *   sd_optim_add_grad(o, i, k, g)   micro-batch k's gradient, in k order:
 *                                   k == 0 copies, k > 0 adds (the ordered sum)
 *   sd_optim_sum_squares(o, i)      the summed gradient's sum of squares
 *   sd_grad_norm(ss, n)             the global norm: per-tensor sums added in
 *                                   global tensor order, in double
 *   sd_optim_apply(o, norm, &lr)    clip by the norm, AdamW, step + 1
 *
 * Every operation is element-wise within one tensor, and the only reduction
 * across tensors is sd_grad_norm's ordered sum, so K processes that each hold
 * some of the tensors compute exactly the bits one process computes, as long
 * as the norm is formed from all K's sums in global order.
 *
 * Tensor names are the checkpoint's: peft LoRA keys with the part prefix
 * ("unet.<module>.lora_A.weight", "text_encoder.<module>.lora_B.weight").
 */
#ifndef BOOTH_DIFFUSION_OPTIM_H
#define BOOTH_DIFFUSION_OPTIM_H

#include "diffusion/train.h"
#include "nn/nn.h"

typedef struct sd_optim_config {
    float learning_rate;
    sd_lr_sched_t lr_scheduler;
    int64_t lr_warmup_steps, max_train_steps; /* the schedule's length */
    int lr_num_cycles;                        /* cosine_with_restarts */
    float lr_power;                           /* polynomial */
    float beta1, beta2, epsilon, weight_decay;
    float max_grad_norm; /* <= 0: no clipping */
} sd_optim_config_t;

void sd_optim_config_from_train(sd_optim_config_t *o, const sd_train_config_t *c);
/* The schedule's learning rate at optimizer step `step` (0-based). */
float sd_optim_lr(const sd_optim_config_t *c, int64_t step);

typedef struct sd_optim_tensor {
    char name[SD_OPTIM_NAME_MAX];
    int index;         /* position in the job's global tensor order */
    int64_t shape[2], numel;
    float *p;          /* parameters: the optimizer's own memory, or a view of a LoRA set's */
    float *m, *v;      /* AdamW moments */
    float *g;          /* the step's gradient sum */
} sd_optim_tensor_t;

typedef struct sd_optim {
    nn_ctx_t *ctx;
    sd_optim_config_t cfg;
    int n;
    sd_optim_tensor_t *t;
    int64_t step;      /* optimizer steps taken (the LoRA version) */
    float *mem;        /* one block: p (when owned), m, v, g of every tensor */
} sd_optim_t;

/* A tensor to hold: name, global index, shape; params: its parameters to use
 * in place (a LoRA set's memory, single process), or NULL for the optimizer's
 * own zeroed copy (a PS; load values with sd_optim_load). */
typedef struct sd_optim_spec {
    const char *name;
    int index;
    int64_t shape[2];
    float *params;
} sd_optim_spec_t;

/* Full training: every parameter of a part as an optimizer tensor, from index `first` on, in model
 * order — named "<prefix>.<name>" into names[], shaped [first dimension, the rest], its params the
 * part's own, grads[] pointing into the part's gradient block (sd_params_alloc_grads). The caller
 * sizes the arrays (first + ps->n entries). Returns the index after the last. */
int sd_optim_spec_params(const sd_params_t *ps, const char *prefix, int first, sd_optim_spec_t *spec,
                         char (*names)[SD_OPTIM_NAME_MAX], float **grads);

/* m, v zeroed, step 0. NULL with one log line on failure. */
sd_optim_t *sd_optim_new(nn_ctx_t *ctx, const sd_optim_config_t *cfg, const sd_optim_spec_t *spec, int n);
void sd_optim_destroy(sd_optim_t **o);

/* The tensor of that name, or -1. */
int sd_optim_find(const sd_optim_t *o, const char *name);

/* Tensor i's gradient of micro-batch k: k == 0 copies, k > 0 adds. Callers add
 * micro-batches in k order (the PS buffers early arrivals). */
int sd_optim_add_grad(sd_optim_t *o, int i, int k, const float *g);

/* Sum of squares of tensor i's gradient sum. */
int sd_optim_sum_squares(const sd_optim_t *o, int i, double *out);

/* The global gradient norm from per-tensor sums of squares in global order. */
double sd_grad_norm(const double *ss, int n);

/* Clips every gradient sum by max_grad_norm / (norm + 1e-6) when that is < 1,
 * takes the AdamW step at the schedule's lr for the current step, step + 1. */
int sd_optim_apply(sd_optim_t *o, double grad_norm, float *lr_used);

/* One process's whole step after the micro-batches were added: the norm from
 * every tensor (sd_grad_norm), then sd_optim_apply. */
int sd_optim_step(sd_optim_t *o, float *lr_used, double *grad_norm);

#endif
