/*
 * clip_tokenizer.S — the CLIP BPE vocabulary, embedded in the booth binary so
 * `booth init-model` can write a complete model folder with no files around it.
 * The data files live beside this one in diffusion/clip_tokenizer/.
 */
    .section .rodata
    .balign 16
    .global sd_clip_vocab_json
sd_clip_vocab_json:
    .incbin "diffusion/clip_tokenizer/vocab.json"
    .global sd_clip_vocab_json_end
sd_clip_vocab_json_end:
    .byte 0
    .balign 16
    .global sd_clip_merges_txt
sd_clip_merges_txt:
    .incbin "diffusion/clip_tokenizer/merges.txt"
    .global sd_clip_merges_txt_end
sd_clip_merges_txt_end:
    .byte 0
    .section .note.GNU-stack,"",@progbits
