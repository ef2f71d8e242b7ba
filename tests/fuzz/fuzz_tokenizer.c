/*
 * fuzz_tokenizer.c — CLIP's BPE tokenizer (diffusion/tokenizer.c) on arbitrary
 * bytes: valid and invalid UTF-8, control characters, very long words.
 *
 * Invariants: ids are inside the vocabulary, input_ids is exactly
 * model_max_length long and starts with BOS, the untruncated ids are BOS,
 * the tokens, EOS.
 */
#include <stdlib.h>
#include <string.h>

#include "diffusion/tokenizer.h"
#include "tests/fuzz/fuzz.h"

FUZZ_TARGET(tokenizer)
{
    static sd_tokenizer_t *tok;
    if (!tok && !(tok = sd_tokenizer_load(fz_fixture("tiny-sd/tokenizer")))) fz_bug("cannot load the tokenizer");
    char *text = malloc(size + 1);
    if (!text) abort();
    memcpy(text, data, size);
    text[size] = '\0';
    sd_tok_result_t r = {0};
    int rc = sd_tokenize(tok, text, &r);
    fz_failed(rc, "sd_tokenize");
    if (rc == 0) {
        int vocab = sd_tok_vocab_size(tok);
        if (r.max_length != sd_tok_max_length(tok) || r.n_ids != r.n_tokens + 2)
            fz_bug("lengths: max %d (tokenizer %d), %d ids for %d tokens", r.max_length, sd_tok_max_length(tok),
                   r.n_ids, r.n_tokens);
        if (r.ids[0] != sd_tok_bos_id(tok) || r.ids[r.n_ids - 1] != sd_tok_eos_id(tok) ||
            r.input_ids[0] != sd_tok_bos_id(tok))
            fz_bug("BOS/EOS missing");
        for (int i = 0; i < r.n_ids; i++)
            if (r.ids[i] < 0 || r.ids[i] >= vocab) fz_bug("id %d outside the vocabulary of %d", r.ids[i], vocab);
        for (int i = 0; i < r.max_length; i++)
            if (r.input_ids[i] < 0 || r.input_ids[i] >= vocab || (r.attention_mask[i] != 0 && r.attention_mask[i] != 1))
                fz_bug("input_ids[%d] = %d, mask %d", i, r.input_ids[i], r.attention_mask[i]);
        if (r.truncated != (r.n_tokens > r.max_length - 2)) fz_bug("truncated flag wrong");
        for (int i = 0; i < r.n_tokens; i++)
            if (!r.tokens[i] || sd_tok_token_id(tok, r.tokens[i]) != r.ids[i + 1])
                fz_bug("token %d '%s' is not id %d", i, r.tokens[i] ? r.tokens[i] : "(null)", r.ids[i + 1]);
    }
    sd_tok_result_free(&r);
    free(text);
    return 0;
}
