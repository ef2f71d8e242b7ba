/*
 * info.c — `booth info`: what this booth computes with.
 */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "common/pool.h"
#include "nn/nn.h"

int cmd_info(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: booth info\n\nPrints the compute backends, the BLAS library and the thread count.\n");
            return 0;
        }
        fprintf(stderr, "booth info: unknown option '%s'\n", argv[i]);
        return 2;
    }
    printf("threads: %d (BOOTH_THREADS overrides)\n", bt_default_threads());
    printf("blas:    %s\n", nn_blas_info());
    printf("cuda:    %s\n", nn_backend_available(NN_BACKEND_CUDA) ? "available" : "not available in this build");
    return 0;
}
