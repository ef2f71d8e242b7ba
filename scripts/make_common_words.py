#!/usr/bin/env python3
"""make_common_words.py — writes diffusion/common_words.c: the 3- and 4-letter English words (and
names) of SCOWL's word list as Debian's wamerican package ships it (/usr/share/dict/american-english),
lowercased, that CLIP's BPE vocabulary (diffusion/clip_tokenizer/merges.txt) holds as one word token.
`booth rare-tokens` leaves them out: a DreamBooth identifier should carry no meaning of its own.

    apt-get install wamerican && python3 scripts/make_common_words.py
"""
import re

words = set()
with open("/usr/share/dict/american-english", encoding="utf-8") as f:
    for line in f:
        w = line.strip()
        if w.endswith("'s"):
            continue
        w = w.lower()
        if re.fullmatch("[a-z]{3,4}", w):
            words.add(w)
vocab = set()
with open("diffusion/clip_tokenizer/merges.txt", encoding="utf-8") as f:
    for line in f:
        if line.startswith("#version") or not line.strip():
            continue
        a, b = line.rstrip("\n").split(" ")
        t = a + b
        if t.endswith("</w>") and re.fullmatch("[a-z]{3,4}", t[:-4]):
            vocab.add(t[:-4])
keep = sorted(words & vocab)
with open("diffusion/common_words.c", "w", encoding="utf-8") as out:
    out.write("""/*
 * common_words.c — made by scripts/make_common_words.py; do not edit. The %d three- and
 * four-letter words and names of SCOWL's American English list (Debian's wamerican) that CLIP's
 * vocabulary holds as one word token, sorted: `booth rare-tokens` leaves them out.
 *
 * SCOWL: Copyright 2000-2011 by Kevin Atkinson. Permission to use, copy, modify, distribute and sell
 * these word lists, the associated scripts, the output created from the scripts, and its
 * documentation for any purpose is hereby granted without fee, provided that the above copyright
 * notice appears in all copies and that both that copyright notice and this permission notice appear
 * in supporting documentation. Kevin Atkinson makes no representations about the suitability of this
 * array for any purpose. It is provided "as is" without express or implied warranty.
 */
#include "diffusion/rare_tokens.h"

const char *const sd_common_words[] = {
""" % len(keep))
    line = "   "
    for w in keep:
        item = ' "%s",' % w
        if len(line) + len(item) > 110:
            out.write(line + "\n")
            line = "   "
        line += item
    out.write(line + "\n};\nconst int sd_n_common_words = (int)(sizeof sd_common_words / sizeof sd_common_words[0]);\n")
