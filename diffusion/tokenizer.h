/*
 * tokenizer.h — CLIP's BPE tokenizer, identical to transformers' slow CLIPTokenizer
 * without ftfy (the path every reference fixture was made with).
 *
 * A tokenizer folder holds vocab.json and merges.txt, or (transformers 5) only
 * tokenizer.json, the fast tokenizer's file with the same vocabulary and merges;
 * optionally tokenizer_config.json and special_tokens_map.json (missing keys
 * default to SD 1.x: bos <|startoftext|>, eos = unk = pad = <|endoftext|>,
 * model_max_length 77). Either source tokenizes to the same ids. Text goes through:
 *   1. split at literal special-token strings (bos/eos/unk/pad), which map straight
 *      to their id (SD 2.x's pad "!" makes every "!" its own token, id 0);
 *   2. BERT-style clean-up: drop NUL, U+FFFD and category C* except \t\n\r; \t\n\r
 *      and Zs become ' '; spaces around CJK ideographs; NFC; whitespace split;
 *      Python str.lower() (full mapping: final sigma, U+0130); join with ' ';
 *   3. CLIP's pre-split regex, case-insensitive:
 *      <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
 *   4. bytes -> GPT-2's printable byte alphabet -> BPE by merge rank, "</w>" on the
 *      last symbol -> ids (unknown tokens -> unk);
 *   5. BOS + ids[:max_length-2] + EOS, padded with the pad id.
 * Invalid UTF-8 bytes in the input are read as U+FFFD, which step 2 drops — the same
 * text Python gets from bytes.decode("utf-8", "replace").
 *
 * Not covered: added tokens other than the four specials (tokenizer_config.json's
 * added_tokens_decoder, added_tokens.json) are tokenized as plain text, with a
 * warning at load; AddedToken flags (lstrip, rstrip, single_word) are ignored, which
 * changes nothing for SD's specials. Unicode data is utf8proc's (15.0 on Debian 12):
 * code points assigned after the reference Python's Unicode version are kept here
 * where that Python dropped them as unassigned.
 *
 * A loaded tokenizer is immutable: sd_tokenize may run on it from several threads.
 */
#ifndef BOOTH_DIFFUSION_TOKENIZER_H
#define BOOTH_DIFFUSION_TOKENIZER_H

#include <stdbool.h>
#include <stdint.h>

typedef struct sd_tokenizer sd_tokenizer_t;

/* Result of one sd_tokenize call; owned by the caller, released by sd_tok_result_free. */
typedef struct sd_tok_result {
    int max_length;          /* model_max_length: length of input_ids/attention_mask (77) */
    int32_t *input_ids;      /* BOS, up to max_length-2 tokens, EOS, then pad ids */
    int32_t *attention_mask; /* 1 on BOS..EOS, 0 on padding */
    int n_ids;               /* length of ids: number of tokens + 2 */
    int32_t *ids;            /* untruncated: BOS, every token, EOS */
    bool truncated;          /* more than max_length-2 tokens: input_ids dropped some */
    int n_tokens;            /* tokens of the prompt itself (n_ids - 2) */
    char **tokens;           /* n_tokens BPE strings ("sks</w>", "!"), pointing into token_text */
    char *token_text;        /* the strings, NUL-separated (owned here) */
} sd_tok_result_t;

/* Reads DIR/vocab.json and DIR/merges.txt, or DIR/tokenizer.json when neither is
 * there, and (if present) DIR/tokenizer_config.json and DIR/special_tokens_map.json.
 * NULL on failure, with one log line naming the file. */
sd_tokenizer_t *sd_tokenizer_load(const char *dir);
/* The CLIP vocabulary built into booth (diffusion/clip_tokenizer/), with SD 1.x's
 * specials and model_max_length 77; pad_token NULL keeps <|endoftext|>, SD 2.x
 * uses "!". For models that come without tokenizer files (single-file checkpoints). */
sd_tokenizer_t *sd_tokenizer_load_builtin(const char *pad_token);
void sd_tokenizer_destroy(sd_tokenizer_t **t);

/* Tokenizes NUL-terminated UTF-8 text into *out (whose previous contents are not
 * freed: pass a fresh or freed result). Returns 0, or BT_ENOMEM / BT_EINVAL (NULL
 * argument) / BT_EINTERNAL (utf8proc failed) with out zeroed and one log line. */
int sd_tokenize(const sd_tokenizer_t *t, const char *utf8, sd_tok_result_t *out);
/* Frees the arrays and zeroes the struct; safe twice and on a zeroed struct. */
void sd_tok_result_free(sd_tok_result_t *r);

/* model_max_length (77 for SD). */
int sd_tok_max_length(const sd_tokenizer_t *t);
/* Special-token ids. */
int32_t sd_tok_bos_id(const sd_tokenizer_t *t);
int32_t sd_tok_eos_id(const sd_tokenizer_t *t);
int32_t sd_tok_pad_id(const sd_tokenizer_t *t);
int32_t sd_tok_unk_id(const sd_tokenizer_t *t);
/* Number of entries in vocab.json. */
int sd_tok_vocab_size(const sd_tokenizer_t *t);
/* Id of one token string ("sks</w>"), or -1 if it is not in the vocabulary. */
int32_t sd_tok_token_id(const sd_tokenizer_t *t, const char *token);

#endif
