/*
 * train.h — DreamBooth LoRA training, split into the pieces a cluster spreads:
 *
 *   sd_trainer_t         the gradient computer (what a worker holds): the model
 *                        with LoRA attached (or, full fine-tuning, with every
 *                        UNet weight training, and every text-encoder weight
 *                        with train_text_encoder), the encoded image sets, and
 *     plan(step)           which examples a step uses, with their timesteps, flips,
 *                          noise and latent streams: a pure function of (seed, step)
 *     microbatch(step, k)  the loss and LoRA gradient of the step's k-th fixed
 *                          micro-batch
 *   sd_optim_t           the optimizer state (what the parameter server holds,
 *                        diffusion/optim.h): the ordered sum of the micro-batch
 *                        gradients, the global norm, clipping and AdamW
 *   sd_loop_t            the run loop (what the coordinator drives,
 *                        diffusion/loop.h): history, loss log, checkpoints,
 *                        validation grids, the final LoRA files
 *
 * `booth train` is the three in one process (sd_trainer_step below), summing
 * the micro-batch gradients one by one in order, so a cluster that reduces in
 * the same order produces byte-identical LoRA weights.
 */
#ifndef BOOTH_DIFFUSION_TRAIN_H
#define BOOTH_DIFFUSION_TRAIN_H

#include "diffusion/dataset.h"
#include "diffusion/dreambooth.h"

#define SD_OPTIM_NAME_MAX 256 /* a LoRA tensor's checkpoint name ("unet.<module>.lora_A.weight") */
typedef struct sd_optim_spec sd_optim_spec_t;
typedef struct sd_optim sd_optim_t;

typedef enum sd_lr_sched {
    SD_LR_CONSTANT,
    SD_LR_CONSTANT_WARMUP,
    SD_LR_LINEAR,
    SD_LR_COSINE,
    SD_LR_COSINE_RESTARTS, /* "cosine_with_restarts": num_cycles hard restarts */
    SD_LR_POLYNOMIAL,      /* "polynomial": to lr_end = 1e-7 with exponent power */
} sd_lr_sched_t;

#define SD_LR_NAMES "constant, constant_with_warmup, linear, cosine, cosine_with_restarts or polynomial"
#define SD_LR_POLY_END 1e-7 /* transformers' lr_end of get_polynomial_decay_schedule_with_warmup */

bool sd_lr_sched_parse(const char *name, sd_lr_sched_t *out);
const char *sd_lr_sched_name(sd_lr_sched_t s);
/* diffusers' get_scheduler (transformers' formulas): lr at optimizer step `step` (0-based),
 * with num_cycles 1 and power 1 (their defaults). */
float sd_lr_at(sd_lr_sched_t s, float lr, int64_t step, int64_t warmup, int64_t total);
/* The same with --lr-num-cycles (cosine_with_restarts only; cosine is always half a cycle, as
 * diffusers passes num_cycles to no other schedule) and --lr-power (polynomial only). */
float sd_lr_at_ex(sd_lr_sched_t s, float lr, int64_t step, int64_t warmup, int64_t total, int num_cycles, float power);

typedef struct sd_train_config {
    const char *model_dir;
    const char *instance_dir, *instance_prompt;
    const char *class_dir, *class_prompt;
    bool prior_preservation;
    float prior_loss_weight;   /* lambda */
    int num_class_images;
    int class_steps;           /* sampling steps for generated class images */
    float class_guidance;
    int resolution;
    bool center_crop;          /* false: a random square per photo, from (seed, photo index); diffusers' default */
    bool random_flip;
    int train_batch_size;      /* instance examples per step (as many class examples with priors) */
    int micro_batch_size;      /* examples per micro-batch (default: 1 instance + 1 class pair) */
    int64_t max_train_steps;
    float learning_rate;
    sd_lr_sched_t lr_scheduler;
    int64_t lr_warmup_steps;
    int lr_num_cycles;         /* cosine_with_restarts' hard restarts (default 1) */
    float lr_power;            /* polynomial's exponent (default 1) */
    int64_t rank;
    float lora_alpha;
    bool full_unet;            /* full fine-tuning (diffusers' train_dreambooth.py): every UNet weight trains, not
                                * LoRA adapters; the model must be loaded in float32 */
    bool train_text_encoder;   /* the text encoder trains too: LoRA, or in full with full_unet */
    uint64_t seed;
    bool gradient_checkpointing;
    float snr_gamma;           /* 0: off */
    float noise_offset;        /* 0: off */
    float max_grad_norm;       /* <= 0: no clipping */
    float adam_beta1, adam_beta2, adam_epsilon, adam_weight_decay;
    const char *base_weights;  /* set by sd_trainer_new: sd_model_weights() of the model it trains */
    /* what the run writes besides the LoRA (diffusion/loop.h); none changes the numbers */
    int checkpointing_steps;     /* 0: none */
    int checkpoints_total_limit; /* 0: keep all */
    const char *validation_prompt;
    int validation_steps;        /* 0: at the end only */
    int num_validation_images;
} sd_train_config_t;

/* diffusers' defaults (lr 1e-4 ... rank 4, alpha = rank at prepare time). */
void sd_train_config_defaults(sd_train_config_t *c);
/* The settings left to be derived: alpha = rank when unset, the default
 * micro-batch (1 instance + 1 class example with prior preservation). */
void sd_train_config_resolve(sd_train_config_t *c);
/* Micro-batches per step. */
int sd_train_num_microbatches(const sd_train_config_t *c);

typedef struct sd_train_example {
    bool is_class;
    int image;        /* index in its image set */
    bool flip;
    int64_t timestep;
    uint64_t noise_key, latent_key, offset_key;
    float weight;     /* its share of the step's loss */
} sd_train_example_t;

typedef struct sd_trainer {
    sd_train_config_t cfg;
    sd_model_t *model;
    sd_lora_set_t *lora_unet, *lora_text;
    sd_db_t *db;
    sd_image_set_t instances, classes;
    int32_t *ids_instance, *ids_class; /* [T] each: the prompts' token ids */
    int64_t T;
    float *ehs;        /* [4, T, C] instance, class, validation and empty prompt embeddings (context
                        * memory), computed once when the text encoder is frozen; NULL when it trains */
    int64_t nblock[2]; /* floats in each set's parameter block (0 for an absent set); full fine-tuning: in
                        * the UNet's and the text encoder's gradient blocks */
    /* the LoRA tensors in the job's global order (UNet then text encoder, model order, A then B):
     * names, shapes, and params pointing into the sets' blocks; grads[i] is tensor i's gradient.
     * Full fine-tuning: every UNet parameter ("unet.<name>"), then every text-encoder parameter
     * when it trains ("text_encoder.<name>"), in model order, shaped [first dimension, the rest] */
    sd_optim_spec_t *tensors;
    float **grads;
    int ntensors;
    float *base_unet; /* full fine-tuning: the UNet's weights before training (host copy of its parameter block),
                       * put back when the model is given back (sd_trainer_take_model); NULL for LoRA */
    float *base_text; /* the same for the text encoder when it trains in full; else NULL */
    char (*names)[SD_OPTIM_NAME_MAX]; /* storage of tensors[i].name */
} sd_trainer_t;

/* Takes the model (loaded with SD_PART_ALL; *model becomes NULL, also on
 * failure), attaches and initialises the LoRA sets, encodes instance (and class)
 * images. Class images must already exist (see sd_class_images_ensure). NULL
 * with one log line on failure. */
sd_trainer_t *sd_trainer_new(sd_model_t **model, const sd_train_config_t *cfg, sd_progress_fn progress, void *user);
/* The same, but on failure *model is given back (LoRA detached), not destroyed:
 * a worker's model outlives a job it could not start. */
sd_trainer_t *sd_trainer_new_keep(sd_model_t **model, const sd_train_config_t *cfg, sd_progress_fn progress,
                                  void *user);
void sd_trainer_destroy(sd_trainer_t **t);
/* Destroys the trainer but not its model, which it returns with the LoRA
 * detached (a worker keeps its model loaded from job to job). The text
 * encoder is gone if sd_trainer_release_text_encoder freed it. */
sd_model_t *sd_trainer_take_model(sd_trainer_t **t);

/* With a frozen text encoder every prompt it will see is embedded already (the
 * instance and class prompts by sd_trainer_new; the caller's validation prompts
 * by then too): frees it, as diffusers' --pre_compute_text_embeddings does.
 * No-op when it trains. */
void sd_trainer_release_text_encoder(sd_trainer_t *t);

/* Examples of a step in micro-batch order; *n receives the count (<= 2 * batch). */
int sd_trainer_plan(const sd_trainer_t *t, int64_t step, sd_train_example_t *ex, int *n);
int sd_trainer_num_microbatches(const sd_trainer_t *t);
/* The k-th micro-batch of `step`: loss parts and gradient in the LoRA sets'
 * gradient buffers (overwritten). loss_inst/loss_prior: unweighted per-kind sums. */
int sd_trainer_microbatch(sd_trainer_t *t, int64_t step, int k, double *loss, double *loss_inst, double *loss_prior);
/* The optimizer over this trainer's LoRA, in place (booth train). */
sd_optim_t *sd_trainer_optim(const sd_trainer_t *t);

typedef struct sd_step_stats {
    double loss, loss_instance, loss_prior, grad_norm;
    float lr;
} sd_step_stats_t;

/* Mean instance loss over a fixed evaluation set (every instance image at 5
 * timesteps spread over the schedule, noise from fixed streams): comparable
 * across steps, unlike the per-step loss, whose timesteps are random. */
int sd_trainer_eval(sd_trainer_t *t, double *loss);

/* One optimizer step in one process: every micro-batch of step o->step in
 * order, each added to o (sd_optim_add_grad), then sd_optim_step. */
int sd_trainer_step(sd_trainer_t *t, sd_optim_t *o, sd_step_stats_t *stats);

/* Copies LoRA values into the trainer's sets by tensor name (a worker after a
 * pull); every name must be one of the trainer's, with n floats. */
int sd_trainer_set_tensor(sd_trainer_t *t, const char *name, const float *data, int64_t n);

/* num (<= 16) images of the validation prompt at the current LoRA, as one
 * labelled grid (4 columns) titled with the step; the same noise at every
 * step, so grids compare. */
int sd_trainer_validate(sd_trainer_t *t, int64_t step, bt_img_t **grid);

#endif
