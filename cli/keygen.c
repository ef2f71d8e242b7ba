/*
 * keygen.c — `booth keygen`: a CURVE keypair for the cluster's sockets.
 *
 * Every coordinator, parameter server, worker and client talks over CURVE-encrypted
 * ZeroMQ sockets unless told --insecure. A server lets in the clients whose public
 * keys are listed in its authorized_keys; this writes the keypair each host needs
 * (proto/keys.h has the file formats).
 */
#include <stdio.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "proto/keys.h"

int cmd_keygen(int argc, char **argv)
{
    const char *out = NULL;
    bool force = false;
    const cli_opt_t opts[] = {
        CLI_OPT("--out", CLI_STR, &out, "DIR", "where to write secret.key and public.key (required; created)"),
        CLI_OPT("--force", CLI_FLAG, &force, NULL,
                "replace existing keys (hosts that trust the old public key are then refused)"),
        CLI_END,
    };
    const cli_spec_t spec = {
        "keygen", "--out DIR [--force]",
        "Writes a CURVE keypair for booth's encrypted cluster sockets:\n"
        "  DIR/secret.key  the public and secret key (mode 0600; keep it on this host)\n"
        "  DIR/public.key  the public key, one line: give it to the other hosts\n"
        "A server (coordinator, parameter server) lets in the clients whose public keys are\n"
        "listed in its DIR/authorized_keys, one per line (`cat public.key >> authorized_keys`);\n"
        "a client needs the server's public.key. Existing keys are kept unless --force.",
        opts, 0, NULL};
    const char *pos[1];
    int npos, rc = cli_parse(&spec, argc, argv, pos, &npos);
    if (rc >= 0) return rc;
    if (!out) {
        fprintf(stderr, "booth keygen: give --out DIR (see --help)\n");
        return 2;
    }
    pr_keypair_t kp;
    if (pr_keys_generate(&kp)) return 1;
    rc = pr_keys_write(out, &kp, force) ? 1 : 0;
    if (rc == 0)
        printf("wrote %s/%s (keep it here) and %s/%s\npublic key: %s\n", out, PR_SECRET_KEY_FILE, out,
               PR_PUBLIC_KEY_FILE, kp.public_z85);
    explicit_bzero(&kp, sizeof kp);
    return rc;
}
