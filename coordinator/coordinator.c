/*
 * coordinator.c — the coordinator's event loop: one ROUTER socket that every
 * worker, parameter server and client talks to, the table of peers, and the
 * dispatch of each checked message to its handler (jobs.c, phases.c).
 */
#include "common/alloc.h"
#include "coordinator/internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/fileio.h"
#include "common/log.h"
#include "common/status.h"

double co_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The peer with this routing id, or a new slot for it (-1 when the table is full). */
static int s_peer_of(co_t *c, const pr_msg_t *m)
{
    const void *rid = zmq_msg_data((zmq_msg_t *)&m->routing_id);
    size_t len = zmq_msg_size((zmq_msg_t *)&m->routing_id);
    int free_slot = -1;
    if (len == 0 || len > CO_RID_MAX) return -1;
    for (int i = 0; i < CO_MAX_PEERS; i++) {
        co_peer_t *p = &c->peers[i];
        if (p->used && p->rid_len == len && !memcmp(p->rid, rid, len)) return i;
        if (!p->used && free_slot < 0) free_slot = i;
    }
    if (free_slot < 0) { /* full: the longest-idle client makes room */
        double oldest = 0;
        for (int i = 0; i < CO_MAX_PEERS; i++)
            if (c->peers[i].role == BOOTH__ROLE__ROLE_CLIENT && (free_slot < 0 || c->peers[i].last_seen < oldest)) {
                free_slot = i;
                oldest = c->peers[i].last_seen;
            }
    }
    if (free_slot < 0) {
        BT_WARN("%s: too many peers (%d); message dropped", m->peer, CO_MAX_PEERS);
        return -1;
    }
    co_peer_t *p = &c->peers[free_slot];
    memset(p, 0, sizeof *p);
    p->used = true;
    memcpy(p->rid, rid, len);
    p->rid_len = len;
    p->role = BOOTH__ROLE__ROLE_CLIENT;
    snprintf(p->peer, sizeof p->peer, "%s", m->peer);
    return free_slot;
}

int co_send(co_t *c, int peer, Booth__Envelope *env, const pr_blob_t *blobs, int n)
{
    co_peer_t *p = &c->peers[peer];
    zmq_msg_t rid;
    if (zmq_msg_init_size(&rid, p->rid_len)) return BT_ENOMEM;
    memcpy(zmq_msg_data(&rid), p->rid, p->rid_len);
    int rc = pr_send(c->sock, &rid, env, blobs, n);
    zmq_msg_close(&rid);
    return rc;
}

int co_send_error(co_t *c, int peer, const char *msg, bool fatal)
{
    Booth__Error e = BOOTH__ERROR__INIT;
    e.message = (char *)msg;
    e.fatal = fatal;
    Booth__Envelope env = PR_ENVELOPE_INIT(ERROR, error, &e);
    return co_send(c, peer, &env, NULL, 0);
}

int co_count_ps(const co_t *c)
{
    int n = 0;
    for (int i = 0; i < CO_MAX_PEERS; i++) n += c->peers[i].used && c->peers[i].role == BOOTH__ROLE__ROLE_PS;
    return n;
}

/* Whether worker i may serve job j; a worker with another model is told once per job, and logged. */
static bool s_fits(co_t *c, co_job_t *j, int i)
{
    co_peer_t *p = &c->peers[i];
    if (!j->model_hash[0]) { /* the client had no copy of the model: the first worker's decides */
        snprintf(j->model_hash, sizeof j->model_hash, "%s", p->model_hash);
        BT_INFO("job %s: base model hash %s (from worker %s)", j->id, j->model_hash, p->name);
    }
    if (!strcmp(p->model_hash, j->model_hash)) return true;
    if (strcmp(p->refused_job, j->id)) {
        char msg[512];
        snprintf(msg, sizeof msg,
                 "job %s trains base model %s; this worker's model (%s) has hash %s: not used for this job", j->id,
                 j->model_hash, p->model_dir, p->model_hash);
        BT_WARN("worker %s refused for job %s: its model has hash %s, the job's %s", p->name, j->id, p->model_hash,
                j->model_hash);
        co_send_error(c, i, msg, false);
        snprintf(p->refused_job, sizeof p->refused_job, "%s", j->id);
    }
    return false;
}

void co_check_workers(co_t *c, co_job_t *j)
{
    for (int i = 0; i < CO_MAX_PEERS; i++)
        if (c->peers[i].used && c->peers[i].role == BOOTH__ROLE__ROLE_WORKER) s_fits(c, j, i);
}

int co_idle_worker(co_t *c, co_job_t *j)
{
    for (int i = 0; i < CO_MAX_PEERS; i++) {
        co_peer_t *p = &c->peers[i];
        if (!p->used || p->role != BOOTH__ROLE__ROLE_WORKER || p->task) continue;
        if (s_fits(c, j, i)) return i;
    }
    return -1;
}

static void s_on_hello(co_t *c, int peer, pr_msg_t *m)
{
    const Booth__Hello *h = m->env->hello;
    co_peer_t *p = &c->peers[peer];
    bool again = p->role == h->role && p->name[0];
    if (h->role != BOOTH__ROLE__ROLE_WORKER && h->role != BOOTH__ROLE__ROLE_PS) {
        BT_WARN("%s: hello with role %d; ignored", m->peer, (int)h->role);
        return;
    }
    p->role = h->role;
    snprintf(p->name, sizeof p->name, "%.120s", h->name && h->name[0] ? h->name : m->peer);
    if (h->role == BOOTH__ROLE__ROLE_WORKER) {
        if (!h->model_hash || strlen(h->model_hash) + 1 != BT_HASH_HEX || h->latent_channels < 1 ||
            h->latent_channels > 1024 || h->latent_scale < 0 || h->latent_scale > 64 ||
            (h->latent_scale & (h->latent_scale - 1))) {
            BT_WARN("%s: worker hello without a valid model hash or latent channels; refused", m->peer);
            co_send_error(c, peer, "hello: a worker must state its model hash and latent channels", true);
            p->used = false;
            return;
        }
        snprintf(p->model_hash, sizeof p->model_hash, "%s", h->model_hash);
        snprintf(p->vae_hash, sizeof p->vae_hash, "%s", h->vae_hash ? h->vae_hash : "");
        snprintf(p->weights, sizeof p->weights, "%s", h->model_weights && h->model_weights[0] ? h->model_weights : "exact");
        snprintf(p->sampler, sizeof p->sampler, "%s", h->sampler ? h->sampler : "");
        snprintf(p->model_dir, sizeof p->model_dir, "%s", h->model_dir ? h->model_dir : "");
        p->latent_channels = h->latent_channels;
        p->latent_scale = h->latent_scale ? h->latent_scale : 8; /* a worker from before the field: SD's 8 */
    } else {
        if (!h->endpoint || !pr_endpoint_ok(h->endpoint, false) ||
            (!c->node.o.insecure && (!h->public_key || !pr_key_z85_ok(h->public_key)))) {
            BT_WARN("%s: PS hello without a usable endpoint or public key; refused", m->peer);
            co_send_error(c, peer, "hello: a PS must state its endpoint and (with CURVE) its public key", true);
            p->used = false;
            return;
        }
        snprintf(p->endpoint, sizeof p->endpoint, "%s", h->endpoint);
        snprintf(p->public_key, sizeof p->public_key, "%s", h->public_key ? h->public_key : "");
    }
    char label[PR_PEER_LEN];
    snprintf(label, sizeof label, "%.60s (%.90s)", p->name, m->peer);
    memcpy(p->peer, label, sizeof label);
    p->last_seen = co_now();
    if (!again) {
        if (p->role == BOOTH__ROLE__ROLE_WORKER)
            BT_INFO("worker %s registered: model %s (hash %s, %s weights)", p->name, p->model_dir, p->model_hash,
                    p->weights);
        else
            BT_INFO("parameter server %s registered at %s", p->name, p->endpoint);
    }
    Booth__Welcome w = BOOTH__WELCOME__INIT;
    if (!again) /* slot and a token no earlier run of the coordinator gave out */
        snprintf(p->token, sizeof p->token, "%d.%016llx", peer,
                 (unsigned long long)bt_xxh64(p->rid, p->rid_len, (uint64_t)(co_now() * 1e9) ^ (uint64_t)getpid()));
    w.peer_id = p->token;
    w.heartbeat_ms = c->o.heartbeat_ms;
    Booth__Envelope env = PR_ENVELOPE_INIT(WELCOME, welcome, &w);
    co_send(c, peer, &env, NULL, 0);
}

static void s_dispatch(co_t *c, pr_msg_t *m)
{
    int peer = s_peer_of(c, m);
    if (peer < 0) return;
    co_peer_t *p = &c->peers[peer];
    p->last_seen = co_now();
    if (p->name[0]) pr_msg_name_peer(m, p->name);
    int body = m->env->body_case;
    bool registered = p->role == BOOTH__ROLE__ROLE_WORKER || p->role == BOOTH__ROLE__ROLE_PS;
    switch (body) {
    case BOOTH__ENVELOPE__BODY_HELLO: s_on_hello(c, peer, m); return;
    case BOOTH__ENVELOPE__BODY_HEARTBEAT: {
        /* a worker's heartbeat thread has a connection of its own: the peer id says whose */
        const char *id = m->env->heartbeat->peer_id;
        char *end = NULL;
        long k = id && id[0] ? strtol(id, &end, 10) : -1;
        if (!registered && end && *end == '.' && k >= 0 && k < CO_MAX_PEERS && c->peers[k].used &&
            c->peers[k].role != BOOTH__ROLE__ROLE_CLIENT && !strcmp(c->peers[k].token, id)) {
            c->peers[k].last_seen = co_now();
            p->role = BOOTH__ROLE__ROLE_CLIENT; /* this connection stays a side channel */
            return;
        }
        if (registered) return;
        break; /* from a peer that is not registered: tell it to say hello */
    }
    case BOOTH__ENVELOPE__BODY_SUBMIT: co_on_submit(c, peer, m); return;
    case BOOTH__ENVELOPE__BODY_STATUS_REQUEST: co_on_status(c, peer, m); return;
    case BOOTH__ENVELOPE__BODY_CANCEL: co_on_cancel(c, peer, m); return;
    case BOOTH__ENVELOPE__BODY_FETCH: co_on_fetch(c, peer, m); return;
    case BOOTH__ENVELOPE__BODY_ERROR:
        BT_WARN("%s says: %s", m->peer, m->env->error->message ? m->env->error->message : "(no message)");
        return;
    default: break;
    }
    if (!registered) {
        /* a worker or PS the coordinator does not know: it restarted, or declared that peer dead */
        BT_WARN("%s: '%s' from a peer that has not said hello; dropped, and asked to register", m->peer,
                pr_body_name(body));
        Booth__Error e = BOOTH__ERROR__INIT;
        e.message = "this coordinator does not know you (it restarted, or declared you dead): say hello again";
        e.reregister = true;
        Booth__Envelope env = PR_ENVELOPE_INIT(ERROR, error, &e);
        co_send(c, peer, &env, NULL, 0);
        return;
    }
    switch (body) {
    case BOOTH__ENVELOPE__BODY_GOODBYE: {
        char why[160];
        snprintf(why, sizeof why, "left (%.100s)", m->env->goodbye->reason ? m->env->goodbye->reason : "goodbye");
        co_peer_dead(c, peer, why);
        break;
    }
    case BOOTH__ENVELOPE__BODY_GET_JOB: co_on_get_job(c, peer, m); break;
    case BOOTH__ENVELOPE__BODY_TASK_RESULT: co_on_task_result(c, peer, m); break;
    case BOOTH__ENVELOPE__BODY_PS_LOADED: co_on_ps_loaded(c, peer, m); break;
    case BOOTH__ENVELOPE__BODY_GRAD_READY: co_on_grad_ready(c, peer, m); break;
    case BOOTH__ENVELOPE__BODY_APPLIED: co_on_applied(c, peer, m); break;
    case BOOTH__ENVELOPE__BODY_STATE: co_on_state(c, peer, m); break;
    default: BT_WARN("%s: unexpected '%s' for a coordinator; dropped", m->peer, pr_body_name(body)); break;
    }
}

/* Workers and PS silent for longer than dead_after_ms are declared dead: their slot is freed (a
 * later message from them gets "say hello again"), a worker's tasks are handed out again, a PS's
 * job is reloaded over the live ones. Client slots idle for a minute are freed. */
static void s_liveness(co_t *c)
{
    double now = co_now(), dead = c->o.dead_after_ms / 1000.0;
    for (int i = 0; i < CO_MAX_PEERS; i++) {
        co_peer_t *p = &c->peers[i];
        if (!p->used) continue;
        if (p->role == BOOTH__ROLE__ROLE_CLIENT) {
            if (now - p->last_seen > 60) p->used = false;
            continue;
        }
        if (now - p->last_seen <= dead) continue;
        char why[64];
        snprintf(why, sizeof why, "silent for %.1f s", now - p->last_seen);
        co_peer_dead(c, i, why);
    }
}

void co_peer_dead(co_t *c, int i, const char *why)
{
    co_peer_t *p = &c->peers[i];
    co_job_t *j = c->running >= 0 ? c->jobs[c->running] : NULL;
    bool worker = p->role == BOOTH__ROLE__ROLE_WORKER;
    if (!p->used) return;
    BT_WARN("%s %s: %s; declared dead", worker ? "worker" : "parameter server", p->name, why);
    if (j && worker) co_worker_lost(c, j, i);
    if (j && !worker) co_ps_lost(c, j, i);
    p->used = false;
}

int co_run(const co_opts_t *o)
{
    co_t *c = bt_calloc(1, sizeof *c);
    int status = 1;
    if (!c) return 1;
    c->o = *o;
    if (c->o.heartbeat_ms <= 0) c->o.heartbeat_ms = 2000;
    if (c->o.dead_after_ms <= 0) c->o.dead_after_ms = 10000;
    if (c->o.max_open_jobs <= 0) c->o.max_open_jobs = CO_MAX_OPEN_JOBS;
    c->running = -1;
    bt_log_set_timestamps(true);
    c->next_task = 1;
    snprintf(c->jobs_dir, sizeof c->jobs_dir, "%s/jobs", o->state_dir);
    snprintf(c->priors_dir, sizeof c->priors_dir, "%s/priors", o->state_dir);
    if (bt_mkdirs(c->jobs_dir) || bt_mkdirs(c->priors_dir)) goto out;
    if (pr_node_init(&c->node, &o->node, "coordinator", true, false)) goto out;
    if (!(c->nn = nn_ctx_new(NN_BACKEND_CPU, 1))) goto out;
    if (!(c->sock = pr_node_bind(&c->node, o->bind))) goto out;
    if (co_jobs_load(c)) goto out;
    char ep[256] = "";
    pr_last_endpoint(c->sock, ep, sizeof ep);
    BT_INFO("coordinator listening on %s (state in %s, %s)", ep, o->state_dir,
            o->node.insecure ? "INSECURE: no CURVE" : "CURVE on");
    pr_node_catch_signals();
    double last_tick = 0;
    while (!pr_node_stopping()) {
        zmq_pollitem_t items[2] = {{c->sock, 0, ZMQ_POLLIN, 0}, {pr_node_zap_socket(&c->node), 0, ZMQ_POLLIN, 0}};
        int nitems = items[1].socket ? 2 : 1;
        int rc = zmq_poll(items, nitems, 200);
        if (rc < 0) {
            if (zmq_errno() == EINTR) continue;
            BT_ERROR("coordinator: poll failed: %s", zmq_strerror(zmq_errno()));
            break;
        }
        if (nitems > 1 && (items[1].revents & ZMQ_POLLIN)) pr_node_zap_serve(&c->node);
        if (items[0].revents & ZMQ_POLLIN) {
            for (int k = 0; k < 64; k++) { /* drain, but let the ZAP socket and the schedule in */
                pr_msg_t m;
                int r = pr_recv_nowait(c->sock, true, c->node.max_bytes, &m);
                if (r == BT_OK) s_dispatch(c, &m);
                pr_msg_free(&m);
                if (r == BT_EAGAIN || r == BT_EIO) break;
            }
        }
        double now = co_now();
        if (now - last_tick > 0.05) {
            s_liveness(c);
            co_schedule(c);
            last_tick = now;
        }
    }
    BT_INFO("coordinator stopping");
    status = 0;
out:
    for (int i = 0; i < c->njobs; i++) {
        co_job_free(c->jobs[i]);
        free(c->jobs[i]);
    }
    free(c->jobs);
    if (c->sock) zmq_close(c->sock);
    nn_ctx_destroy(&c->nn);
    pr_node_free(&c->node);
    free(c);
    return status;
}
