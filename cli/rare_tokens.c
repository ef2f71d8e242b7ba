/*
 * rare_tokens.c — `booth rare-tokens`: identifiers for the subject that the tokenizer keeps as one
 * token and that were among the rarest words it still gave a token (diffusion/rare_tokens.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "cli/args.h"
#include "cli/cli.h"
#include "diffusion/rare_tokens.h"
#include "diffusion/single_file.h"
#include "diffusion/tokenizer.h"

int cmd_rare_tokens(int argc, char **argv)
{
    const char *model = NULL, *tokdir = NULL;
    int count = 20;
    const cli_opt_t opts[] = {
        CLI_OPT("--model", CLI_STR, &model, "DIR", "a diffusers model folder: its tokenizer/ (default: booth's CLIP vocabulary, SD 1.x and 2.x's)"),
        CLI_OPT("--tokenizer", CLI_STR, &tokdir, "DIR", "a tokenizer folder (vocab.json + merges.txt, or tokenizer.json)"),
        CLI_OPT("--count", CLI_INT, &count, "N", "how many candidates (default 20)"),
        CLI_END,
    };
    const cli_spec_t spec = {
        "rare-tokens", "[--model DIR | --tokenizer DIR] [--count N]",
        "Lists identifiers for DreamBooth's instance prompt (\"a photo of sks dog\"): words of 3-4 letters that\n"
        "the tokenizer keeps as one token, made by the latest BPE merges (merges go from the most frequent\n"
        "pair to the rarest, so a late merge is a rare word), and not English words or names (a committed\n"
        "list from SCOWL, diffusion/common_words.c). The latest first, with the token id and why each was\n"
        "chosen. Check one in context with `booth tokenize --prompt`.",
        opts, 0, NULL};
    const char *pos[1];
    int npos, rc = cli_parse(&spec, argc, argv, pos, &npos);
    if (rc >= 0) return rc;
    const cli_irange_t ranges[] = {{"--count", count, 1, 1000}};
    if ((rc = cli_check_ranges("rare-tokens", ranges, 1))) return rc;
    if (model && tokdir) {
        fprintf(stderr, "booth rare-tokens: give --model or --tokenizer, not both\n");
        return 2;
    }
    char dir[4200];
    bool single = model && sd_single_file_is(model); /* a single file's tokenizer is the built-in one */
    if (model) cli_join_path(dir, sizeof dir, model, "tokenizer");
    const char *from = single ? NULL : model ? dir : tokdir;
    sd_tokenizer_t *t = from ? sd_tokenizer_load(from) : sd_tokenizer_load_builtin(NULL);
    if (!t) return 1;
    sd_rare_token_t *c = bt_calloc((size_t)count, sizeof *c);
    int n = 0, merges = 0, status = 1;
    if (c && sd_rare_tokens(t, from, c, count, &n, &merges) == 0) {
        printf("%d candidate%s from %s (%d merges; latest first):\n", n, CLI_PLURAL(n),
               from ? from : "booth's CLIP vocabulary", merges);
        printf("%-6s %-6s  why\n", "token", "id");
        for (int i = 0; i < n; i++)
            printf("%-6s %-6d  merge %d of %d (the last %.2f%%): one token, not an English word or name\n", c[i].word,
                   (int)c[i].id, c[i].rank + 1, merges, 100.0 * (double)(merges - c[i].rank) / (double)merges);
        status = 0;
    } else if (!c) {
        fprintf(stderr, "booth rare-tokens: out of memory\n");
    }
    free(c);
    sd_tokenizer_destroy(&t);
    return status;
}
