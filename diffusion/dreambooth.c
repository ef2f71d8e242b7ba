/*
 * dreambooth.c — loss and gradients (LoRA, or every weight of a part that
 * trains in full) of a DreamBooth micro-batch.
 */
#include "diffusion/dreambooth.h"

#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/status.h"
#include "nn/nn.h"

sd_db_t *sd_db_new(sd_model_t *model, sd_lora_set_t *lora_unet, sd_lora_set_t *lora_text, bool checkpoint)
{
    if (!model->unet || !model->clip) {
        BT_ERROR("%s: training needs the text encoder and the UNet", model->dir);
        return NULL;
    }
    sd_db_t *db = bt_calloc(1, sizeof *db);
    if (!db) return NULL;
    db->model = model;
    db->lora_unet = lora_unet;
    db->lora_text = lora_text;
    db->checkpoint = checkpoint;
    db->prediction = model->sched_cfg.prediction_type;
    /* training noises with DDPM's table, as diffusers' scripts do */
    if (sd_sched_table_init(&db->table, &model->sched_cfg, SD_SCHED_DDPM)) {
        free(db);
        return NULL;
    }
    sd_tape_init(&db->tape, model->ctx);
    return db;
}

void sd_db_destroy(sd_db_t **pdb)
{
    sd_db_t *db = *pdb;
    if (!db) return;
    sd_sched_table_free(&db->table);
    sd_tape_free(&db->tape);
    free(db);
    *pdb = NULL;
}

static int s_run(sd_db_t *db, const sd_db_batch_t *b, double *loss, float *per_example, bool backward);

int sd_db_step(sd_db_t *db, const sd_db_batch_t *b, double *loss, float *per_example)
{
    return s_run(db, b, loss, per_example, true);
}

int sd_db_eval(sd_db_t *db, const sd_db_batch_t *b, double *loss, float *per_example)
{
    return s_run(db, b, loss, per_example, false);
}

static int s_run(sd_db_t *db, const sd_db_batch_t *b, double *loss, float *per_example, bool backward)
{
    sd_model_t *m = db->model;
    nn_ctx_t *ctx = m->ctx;
    int64_t n = b->n, C = m->unet->cfg.in_channels, per = C * b->h * b->w;
    int64_t cd = m->unet->cfg.cross_attention_dim[0], T = b->T;
    if (m->clip && m->clip->cfg.hidden_size != cd) {
        BT_ERROR("%s: the UNet expects %lld-wide text embeddings, the text encoder makes %lld", m->dir,
                 (long long)cd, (long long)m->clip->cfg.hidden_size);
        return BT_EINVAL;
    }
    bool text_trains = db->lora_text || db->text_full;
    if (db->text_full && (!m->clip || !m->clip->params.grad)) {
        BT_ERROR("%s: the text encoder trains in full but has no gradient block", m->dir);
        return BT_EINTERNAL;
    }
    if (b->ehs ? text_trains : !m->clip) {
        BT_ERROR("%s: %s", m->dir,
                 b->ehs ? "precomputed text embeddings with a text encoder that trains"
                        : "no text encoder to embed the prompts (and no precomputed embeddings)");
        return BT_EINVAL;
    }
    int rc = BT_OK;
    bt_stack_mark_t mk = bt_stack_mark(&m->scratch);
    sd_run_t r = {.nn = ctx, .scratch = &m->scratch, .tape = backward ? &db->tape : NULL, .checkpoint = db->checkpoint};
    sd_run_t r_frozen = {.nn = ctx, .scratch = &m->scratch};
    float *host = bt_malloc((size_t)(2 * n * per) * sizeof(float)), *noisy = host, *target = host + n * per;
    float *tf = bt_malloc((size_t)n * sizeof(float));
    const float *ehs = b->ehs;
    float *ehs_buf = b->ehs ? NULL : sd_scratch(&r, n * T * cd), *dehs = NULL, *x = sd_scratch(&r, n * per);
    float *pred = sd_scratch(&r, n * per), *tgt = sd_scratch(&r, n * per), *dpred = sd_scratch(&r, n * per);
    if (!host || !tf || (!ehs && !ehs_buf) || !x || !pred || !tgt || !dpred) {
        rc = BT_ENOMEM;
        goto out;
    }
    for (int64_t i = 0; i < n; i++) tf[i] = (float)b->timesteps[i];

    /* text embeddings: through the tape only when the text encoder trains */
    if (!ehs) {
        if ((rc = sd_clip_forward(text_trains && backward ? &r : &r_frozen, m->clip, ehs_buf, NULL, b->ids, n, T,
                                  db->clip_skip)))
            goto out;
        ehs = ehs_buf;
    }
    if ((rc = sd_sched_add_noise(&db->table, noisy, b->latents, b->noise, b->timesteps, n, per))) goto out;
    if (db->prediction == SD_PRED_V)
        rc = sd_sched_get_velocity(&db->table, target, b->latents, b->noise, b->timesteps, n, per);
    else
        memcpy(target, db->prediction == SD_PRED_SAMPLE ? b->latents : b->noise, (size_t)(n * per) * sizeof(float));
    if (rc || (rc = nn_upload(ctx, x, noisy, (size_t)(n * per) * sizeof(float))) ||
        (rc = nn_upload(ctx, tgt, target, (size_t)(n * per) * sizeof(float))))
        goto out;
    if (db->phase) db->phase(db->phase_user, backward ? "UNet forward" : "UNet (loss only)");
    if ((rc = sd_unet_forward(&r, m->unet, pred, x, tf, ehs, n, b->h, b->w, T))) goto out;

    /* loss and its gradient, example by example (each example's mean is its own) */
    double total = 0;
    for (int64_t i = 0; i < n; i++) {
        float li;
        if ((rc = nn_mse_forward(ctx, &li, pred + i * per, tgt + i * per, per)) ||
            (rc = nn_mse_backward(ctx, dpred + i * per, b->weights[i], pred + i * per, tgt + i * per, per)))
            goto out;
        if (per_example) per_example[i] = li;
        total += (double)b->weights[i] * li;
    }
    *loss = total;
    if (!backward) goto out;

    if (text_trains) {
        if (!(dehs = sd_scratch(&r, n * T * cd))) {
            rc = BT_ENOMEM;
            goto out;
        }
        if ((rc = nn_fill(ctx, dehs, n * T * cd, 0.0f))) goto out;
    }
    if (db->phase) db->phase(db->phase_user, "UNet backward");
    if ((rc = sd_unet_backward(&r, m->unet, dehs, dpred, tf, ehs, n, b->h, b->w, T))) goto out;
    if (text_trains && (rc = sd_clip_backward(&r, m->clip, dehs, b->ids, n, T, db->clip_skip))) goto out;
    if (db->tape.n != 0) {
        BT_ERROR("training step: %d saved tensors left on the tape (forward and backward disagree)", db->tape.n);
        rc = BT_EINTERNAL;
    }
out:
    /* a failed step leaves nothing behind for the next one */
    db->tape.n = 0;
    sd_tape_trim(&db->tape);
    free(host);
    free(tf);
    bt_stack_reset(&m->scratch, mk);
    return rc;
}
