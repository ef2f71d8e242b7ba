/*
 * export.c — `booth export`: a checkpoint's LoRA as a LoRA file for diffusers,
 * A1111/ComfyUI (kohya) or peft. The file is byte-for-byte what `booth train`
 * would have written had the run ended at the checkpoint's step.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "cli/args.h"
#include "cli/cli.h"
#include "diffusion/checkpoint.h"

int cmd_export(int argc, char **argv)
{
    const char *format = NULL, *out = NULL, *dtype_name = "f32", *model = NULL;
    const cli_opt_t opts[] = {
        CLI_OPT("--format", CLI_STR, &format, "NAME",
                "diffusers, kohya or peft (required); model for a full fine-tuning checkpoint"),
        CLI_OPT("--out", CLI_STR, &out, "FILE", "the LoRA file (or model folder) to write (required; -o is the same)"),
        CLI_OPT("--dtype", CLI_STR, &dtype_name, "T", "f32, f16 or bf16 (default f32; LoRA files)"),
        CLI_OPT("--model", CLI_STR, &model, "DIR",
                "--format model: the base model folder (default: the one the checkpoint names; its content "
                "must be the same)"),
        CLI_END,
    };
    const cli_spec_t spec = {"export",
                             "CHECKPOINT.h5 --format diffusers|kohya|peft|model --out|-o PATH [--dtype f32|f16|bf16]",
                             "Writes the LoRA of a training checkpoint as a safetensors LoRA file: diffusers'\n"
                             "pytorch_lora_weights layout, kohya's (A1111, ComfyUI) or peft's. A full fine-tuning\n"
                             "checkpoint (--train-unet full) becomes a diffusers model folder (--format model).",
                             opts, 1, "CHECKPOINT.h5"};
    /* "-o" is the one short option: spelled out before the table parser sees it */
    char **args = bt_malloc((size_t)(argc + 1) * sizeof *args);
    if (!args) return 1;
    for (int i = 0; i < argc; i++) args[i] = !strcmp(argv[i], "-o") ? "--out" : argv[i];
    args[argc] = NULL;
    const char *pos[1];
    int npos, rc = cli_parse(&spec, argc, args, pos, &npos);
    free(args);
    if (rc >= 0) return rc;
    if (npos != 1 || !format || !out) {
        fprintf(stderr, "booth export: give a checkpoint, --format and --out (-o) (see --help)\n");
        return 2;
    }
    if (!strcmp(format, "model")) {
        if (sd_checkpoint_export_model(pos[0], out, model)) return 1;
        printf("%s\n", out);
        return 0;
    }
    st_lora_layout_t layout;
    if (st_lora_layout_parse(format, &layout)) return 2;
    st_dtype_t dtype = !strcmp(dtype_name, "f32")    ? ST_F32
                       : !strcmp(dtype_name, "f16")  ? ST_F16
                       : !strcmp(dtype_name, "bf16") ? ST_BF16
                                                     : ST_DTYPE_COUNT;
    if (dtype == ST_DTYPE_COUNT) {
        fprintf(stderr, "booth export: --dtype '%s' is not f32, f16 or bf16\n", dtype_name);
        return 2;
    }
    if (sd_checkpoint_export(pos[0], out, layout, dtype)) return 1;
    printf("%s\n", out);
    return 0;
}
