/*
 * rare_tokens.h — identifiers for DreamBooth's subject: short words the tokenizer keeps as one
 * token and that mean little to the model.
 *
 * DreamBooth binds the subject to a rare token ("a photo of sks dog"). A good one is one token (a
 * word that splits, like "zwx" into z + wx, spreads the subject over pieces other words share),
 * short, and rare in the text the tokenizer was built from. BPE merges pairs in order of frequency,
 * so a token's merge rank orders the vocabulary from common (early) to rare (late): a word token
 * made by one of the last merges was among the rarest the tokenizer still gave a token of its own.
 * Words that are English words or names carry meaning the model already holds, so the candidates
 * leave out the 3- and 4-letter words of a committed list (diffusion/common_words.c, from SCOWL,
 * scripts/make_common_words.py) and a few abusive ones.
 *
 * The merges are read beside the tokenizer's own loader (diffusion/tokenizer.c): merges.txt, or the
 * "merges" of tokenizer.json (pairs or "a b" strings), or booth's built-in CLIP vocabulary.
 */
#ifndef BOOTH_DIFFUSION_RARE_TOKENS_H
#define BOOTH_DIFFUSION_RARE_TOKENS_H

#include <stdbool.h>
#include <stdint.h>

#include "diffusion/tokenizer.h"

typedef struct sd_rare_token {
    char word[8];  /* "sks" */
    int32_t id;    /* the token "sks</w>"'s id */
    int rank;      /* its merge's rank, 0 = the first merge */
} sd_rare_token_t;

/* The 3-4-letter word tokens of t that tokenize to themselves alone and are not common words,
 * latest merge first: up to max into out, *n the number written, *n_merges the merges read.
 * tok_dir: the tokenizer folder t was loaded from (NULL: booth's built-in CLIP vocabulary).
 * 0, or a negative status with one log line naming the file. */
int sd_rare_tokens(const sd_tokenizer_t *t, const char *tok_dir, sd_rare_token_t *out, int max, int *n,
                   int *n_merges);

/* True for a lower-case 3-4-letter word of the committed list (or an abusive one). */
bool sd_is_common_word(const char *word);

/* The list (diffusion/common_words.c, sorted). */
extern const char *const sd_common_words[];
extern const int sd_n_common_words;

#endif
