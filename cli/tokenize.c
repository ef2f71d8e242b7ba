/*
 * tokenize.c — `booth tokenize`: how CLIP's tokenizer sees a prompt.
 *
 * DreamBooth prompts hinge on a rare token ("sks"); this shows whether the
 * identifier stays one token, how many of the 75 slots a prompt uses and what gets
 * cut, and names each word that splits into several tokens (a rare-token identifier should
 * not: `booth rare-tokens` lists ones that do not). --json prints exactly what the text
 * encoder receives.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "cli/cli.h"
#include "common/log.h"
#include "diffusion/single_file.h"
#include "diffusion/tokenizer.h"

static void s_usage(FILE *out)
{
    fprintf(out, "usage: booth tokenize (--model DIR | --tokenizer DIR) --prompt TEXT [--json]\n"
                 "\n"
                 "Shows how CLIP's tokenizer splits a prompt: the token count (without the\n"
                 "start/end tokens), whether it fits in the 75 slots, and one line per token\n"
                 "(id, BPE piece; \"</w>\" ends a word, non-ASCII bytes show as GPT-2's byte\n"
                 "alphabet). A word that splits into several tokens is named in a note.\n"
                 "\n"
                 "  --model DIR      a diffusers model folder; the tokenizer is DIR/tokenizer/ (a single-file\n"
                 "                   checkpoint: CLIP's, built into booth)\n"
                 "  --tokenizer DIR  a tokenizer folder (vocab.json, merges.txt, ...)\n"
                 "  --prompt TEXT    the prompt (UTF-8)\n"
                 "  --json           print {\"input_ids\": [...], \"tokens\": [...]}: the padded\n"
                 "                   ids the text encoder gets, and the pieces of the prompt\n");
}

/* {"input_ids": [max_length ints], "tokens": [piece strings]} on stdout. */
static int s_print_json(const sd_tok_result_t *r)
{
    int rc = 1;
    char *text = NULL;
    cJSON *root = cJSON_CreateObject();
    cJSON *ids = root ? cJSON_AddArrayToObject(root, "input_ids") : NULL;
    cJSON *toks = ids ? cJSON_AddArrayToObject(root, "tokens") : NULL;
    if (!toks) goto out_free;
    for (int i = 0; i < r->max_length; i++)
        if (!cJSON_AddItemToArray(ids, cJSON_CreateNumber(r->input_ids[i]))) goto out_free;
    for (int i = 0; i < r->n_tokens; i++)
        if (!cJSON_AddItemToArray(toks, cJSON_CreateString(r->tokens[i]))) goto out_free;
    if (!(text = cJSON_PrintUnformatted(root))) goto out_free;
    printf("%s\n", text);
    rc = 0;
out_free:
    if (rc) fprintf(stderr, "booth tokenize: out of memory\n");
    cJSON_free(text);
    cJSON_Delete(root);
    return rc;
}

static bool s_ends_word(const char *piece)
{
    size_t n = strlen(piece);
    return n >= 4 && !strcmp(piece + n - 4, "</w>");
}

/* A piece without its "</w>". */
static void s_print_piece(const char *piece) { printf("%.*s", (int)strlen(piece) - (s_ends_word(piece) ? 4 : 0), piece); }

static void s_print_human(const sd_tok_result_t *r)
{
    int room = r->max_length - 2;
    printf("%d token%s (without start/end); %s %d\n", r->n_tokens, r->n_tokens == 1 ? "" : "s",
           r->truncated ? "does not fit in" : "fits in", room);
    for (int i = 0; i < r->n_tokens; i++)
        printf("%-6d %s%s\n", (int)r->ids[i + 1], r->tokens[i], i >= room ? "   (cut off)" : "");
    /* words that BPE split: the pieces up to one that ends a word ("</w>") */
    for (int i = 0; i < r->n_tokens;) {
        int j = i;
        while (j < r->n_tokens - 1 && !s_ends_word(r->tokens[j])) j++;
        if (j > i) {
            printf("note: \"");
            for (int k = i; k <= j; k++) s_print_piece(r->tokens[k]);
            printf("\" splits into %d tokens (", j - i + 1);
            for (int k = i; k <= j; k++) {
                if (k > i) printf(" + ");
                s_print_piece(r->tokens[k]);
            }
            printf("): a DreamBooth identifier works best as one token (see `booth rare-tokens`)\n");
        }
        i = j + 1;
    }
    if (r->truncated) {
        printf("warning: %d token%s past the first %d are cut off; the text encoder does not see them "
               "(from \"%s\" on)\n",
               r->n_tokens - room, r->n_tokens - room == 1 ? "" : "s", room, r->tokens[room]);
    }
}

int cmd_tokenize(int argc, char **argv)
{
    const char *model = NULL, *tokdir = NULL, *prompt = NULL;
    bool json = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            s_usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--json")) {
            json = true;
            continue;
        }
        const char **dst = !strcmp(a, "--model")       ? &model
                           : !strcmp(a, "--tokenizer") ? &tokdir
                           : !strcmp(a, "--prompt")    ? &prompt
                                                       : NULL;
        if (!dst) {
            fprintf(stderr, "booth tokenize: unknown option '%s' (see --help)\n", a);
            return 2;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "booth tokenize: %s needs a value\n", a);
            return 2;
        }
        *dst = argv[++i];
    }
    if (!prompt || (!model == !tokdir)) {
        fprintf(stderr, "booth tokenize: give --prompt and one of --model or --tokenizer (see --help)\n");
        return 2;
    }

    char *dir = NULL;
    bool single = model && sd_single_file_is(model); /* a single file's tokenizer is the built-in CLIP one */
    if (model && !single) {
        size_t n = strlen(model) + sizeof "/tokenizer";
        if (!(dir = bt_malloc(n))) {
            fprintf(stderr, "booth tokenize: out of memory\n");
            return 1;
        }
        snprintf(dir, n, "%s/tokenizer", model);
    }
    /* the loader logs the one line that says which file is wrong */
    sd_tokenizer_t *t = single ? sd_tokenizer_load_builtin(NULL) : sd_tokenizer_load(dir ? dir : tokdir);
    free(dir);
    if (!t) return 1;
    sd_tok_result_t r;
    int rc = 1;
    if (sd_tokenize(t, prompt, &r) == 0) {
        if (json)
            rc = s_print_json(&r);
        else {
            s_print_human(&r);
            rc = 0;
        }
        sd_tok_result_free(&r);
    }
    sd_tokenizer_destroy(&t);
    return rc;
}
