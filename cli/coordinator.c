/*
 * coordinator.c — `booth coordinator`: the cluster's hub (coordinator/coordinator.h).
 */
#include <stdio.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "coordinator/coordinator.h"

int cmd_coordinator(int argc, char **argv)
{
    co_opts_t o = {.bind = "tcp://*:5555"};
    const cli_opt_t opts[] = {
        CLI_OPT("--bind", CLI_STR, &o.bind, "ENDPOINT", "where workers, PS and clients connect (default tcp://*:5555)"),
        CLI_OPT("--state-dir", CLI_STR, &o.state_dir, "DIR",
                "jobs, their instance images and outputs, and the prior sets kept for reuse (required)"),
        CLI_OPT("--priors-per-task", CLI_INT, &o.priors_per_task, "N",
                "prior images per farm task (default: spread over the live workers, at most 16)"),
        CLI_OPT("--heartbeat-ms", CLI_INT, &o.heartbeat_ms, "MS",
                "how often workers and parameter servers report (told in the welcome; default 2000)"),
        CLI_OPT("--dead-after-ms", CLI_INT, &o.dead_after_ms, "MS",
                "a worker or parameter server silent this long is declared dead: its tasks go to live workers, "
                "a PS's tensors are reloaded from the last checkpoint (default 10000)"),
        CLI_OPT("--max-open-jobs", CLI_INT, &o.max_open_jobs, "N",
                "jobs queued or running at once; a submit beyond is refused (they hold their photos; default 256)"),
        CLI_NODE_OPTS(&o.node),
        CLI_END,
    };
    const cli_spec_t spec = {
        "coordinator", "--state-dir DIR [--bind ENDPOINT] (--keys DIR | --insecure)",
        "Accepts jobs (booth submit), queues them, and runs one at a time over the registered workers and\n"
        "parameter servers: the prior-image farm, then DreamBooth LoRA training whose files are byte-identical\n"
        "to `booth train` with the same flags. Loads no model. Stops cleanly on SIGINT/SIGTERM.",
        opts, 0, NULL};
    const char *pos[1];
    int npos, rc = cli_parse(&spec, argc, argv, pos, &npos);
    if (rc >= 0) return rc;
    if (!o.state_dir) {
        fprintf(stderr, "booth coordinator: --state-dir is required\n");
        return 2;
    }
    const cli_irange_t ranges[] = {{"--max-open-jobs", o.max_open_jobs, 0, 1000000}};
    if ((rc = cli_check_ranges("coordinator", ranges, 1))) return rc;
    return co_run(&o);
}
