/*
 * worker.c — `booth worker`: a cluster worker (worker/worker.h,
 * docs/CLUSTER.md). It loads the model once, registers with the coordinator
 * and computes prior images, micro-batch gradients and validation grids until
 * SIGINT or SIGTERM.
 */
#include <stdio.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "worker/worker.h"

int cmd_worker(int argc, char **argv)
{
    wk_opts_t o = {0};
    const char *base_dtype = NULL, *prediction_s = NULL;
    const cli_opt_t opts[] = {
        CLI_OPT("--coordinator", CLI_STR, &o.coordinator, "ADDR", "the coordinator, tcp://HOST:PORT (required)"),
        CLI_OPT("--model", CLI_STR, &o.model_dir, "DIR|FILE",
                "diffusers model folder or single-file checkpoint, the same model as the jobs' (loaded once) " CLI_MODEL_DEFAULT_HELP),
        CLI_OPT("--base-dtype", CLI_STR, &base_dtype, "TYPE", CLI_BASE_DTYPE_HELP),
        CLI_OPT("--prediction-type", CLI_STR, &prediction_s, "TYPE", CLI_PREDICTION_HELP),
        CLI_OPT("--threads", CLI_INT, &o.threads, "N", "compute threads (default BOOTH_THREADS or the CPU count)"),
        CLI_OPT("--work-dir", CLI_STR, &o.work_dir, "DIR",
                "where jobs' files are kept while they run (default $TMPDIR/booth-worker-PID, removed at exit)"),
        CLI_OPT("--name", CLI_STR, &o.name, "NAME", "how the coordinator's logs name this worker (default host:pid)"),
        CLI_NODE_OPTS(&o.node),
        CLI_END,
    };
    const cli_spec_t spec = {
        "worker",
        "--coordinator ADDR --model DIR [options]",
        "Joins a booth cluster as a worker: loads the model once, registers with the coordinator, and computes\n"
        "what it is handed (prior images, micro-batch gradients pushed to the parameter servers, validation\n"
        "grids) until SIGINT or SIGTERM. Job data comes over the network; no shared filesystem is needed.\n"
        "Sockets are CURVE-encrypted with --keys DIR (booth keygen) unless --insecure.",
        opts,
        0,
        NULL};
    const char *pos[1];
    int npos, rc = cli_parse(&spec, argc, argv, pos, &npos);
    if (rc >= 0) return rc;
    if (!o.coordinator) {
        fprintf(stderr, "booth worker: --coordinator is required\n");
        return 2;
    }
    if (!o.model_dir && !(o.model_dir = cli_default_model("worker"))) return 2;
    if (o.threads < 0 || o.node.max_message_mb < 0) {
        fprintf(stderr, "booth worker: --threads and --max-message-mb must not be negative\n");
        return 2;
    }
    if (!cli_base_dtype("worker", base_dtype, &o.store)) return 2;
    if (!cli_prediction_type("worker", prediction_s, o.model_dir, &o.prediction)) return 2;
    return wk_run(&o);
}
