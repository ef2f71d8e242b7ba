/*
 * ps.c — `booth ps`: run a parameter server of the booth cluster (ps/ps.h,
 * docs/CLUSTER.md) until SIGINT or SIGTERM.
 */
#include <stdio.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "ps/ps.h"

int cmd_ps(int argc, char **argv)
{
    ps_opts_t o = {0};
    const cli_opt_t opts[] = {
        CLI_OPT("--coordinator", CLI_STR, &o.coordinator, "ADDR",
                "the coordinator's endpoint, tcp://HOST:PORT (required)"),
        CLI_OPT("--bind", CLI_STR, &o.bind, "ENDPOINT",
                "where workers connect (default " PS_DEFAULT_BIND ": every interface, any free port; logged)"),
        CLI_OPT("--advertise", CLI_STR, &o.advertise, "ENDPOINT",
                "the endpoint workers are told to use (default: the bound one, with a wildcard host "
                "replaced by 127.0.0.1: right on one host; give tcp://THIS-HOST:PORT for workers elsewhere)"),
        CLI_OPT("--threads", CLI_INT, &o.threads, "N",
                "threads for the optimizer (default BOOTH_THREADS or the CPU count)"),
        CLI_NODE_OPTS(&o.node),
        CLI_END,
    };
    const cli_spec_t spec = {
        "ps",
        "--coordinator ADDR [--bind ENDPOINT] [--advertise ENDPOINT] [--keys DIR | --insecure] [options]",
        "Runs a parameter server: it registers with the coordinator, which gives it some of a training job's\n"
        "LoRA tensors with their AdamW state. Workers push it their micro-batch gradients, which it sums in\n"
        "micro-batch order; on the coordinator's word it clips and takes the AdamW step, and it serves each\n"
        "version of its tensors to the workers that pull them. The results have the bits `booth train` gives.\n"
        "With --keys DIR, workers must have their public keys in DIR/authorized_keys. Runs until SIGINT or\n"
        "SIGTERM.",
        opts,
        0,
        NULL};
    const char *pos[1];
    int npos, rc = cli_parse(&spec, argc, argv, pos, &npos);
    if (rc >= 0) return rc;
    if (!o.coordinator) {
        fprintf(stderr, "booth ps: --coordinator ADDR is required (see --help)\n");
        return 2;
    }
    if (o.threads < 0 || o.threads > 4096) {
        fprintf(stderr, "booth ps: --threads %d: expected 0..4096 (0: the default)\n", o.threads);
        return 2;
    }
    if (o.node.max_message_mb < 0 || o.node.max_message_mb > 1 << 20) {
        fprintf(stderr, "booth ps: --max-message-mb %d: expected 1..%d\n", o.node.max_message_mb, 1 << 20);
        return 2;
    }
    /* each says what is wrong with the endpoint in one line */
    if (!pr_endpoint_ok(o.coordinator, false) || (o.bind && !pr_endpoint_ok(o.bind, true)) ||
        (o.advertise && !pr_endpoint_ok(o.advertise, false)))
        return 2;
    return ps_run(&o) == 0 ? 0 : 1;
}
