// Hugging Face tokenizer.json in C: BPE (byte-level like Llama 3, or SentencePiece-style with
// byte fallback like Llama 2), with the normalizer / pre-tokenizer / decoder / post-processor
// components those two families use. The pipeline is the one Hugging Face tokenizers runs:
//
//   text -> split on added tokens -> per segment: normalizers -> pre-tokenizers -> BPE per piece
//        -> post-processor template (BOS)
//   ids  -> token strings -> decoder chain -> bytes -> lossy UTF-8 (U+FFFD for invalid bytes)
//
// One file per stage, in reading order:
//   tokenizer_internal.h  what the files share: containers, UTF-8 helpers, the tokenizer struct,
//                         the scratch of one encode and of one decode
//   tokenizer_load.c      reading tokenizer.json, one function per section
//   tokenizer_encode.c    added tokens, segments, the post-processor template: tokenizer_encode
//   tokenizer_pretok.c    normalizers and pre-tokenizers: a segment into pieces
//   tokenizer_bpe.c       BPE of one piece, the merge heap, the word cache
//   tokenizer_decode.c    the decoder chain: tokenizer_decode
//   tokenizer_stream.c    streaming decode
// This file holds the small queries of the public API.
#include "runtime/tokenizer_internal.h"

// ---------------------------------------------------------------------------- queries
int tokenizer_vocab_size(const tokenizer *t) { return t->n_ids; }

int tokenizer_token_id(const tokenizer *t, const char *piece) {
    size_t n = strlen(piece);
    for (size_t i = 0; i < t->n_added; i++)
        if (t->added[i].len == n && !memcmp(t->added[i].text, piece, n)) return t->added[i].id;
    return strmap_get(&t->vocab, piece, n);
}

int tokenizer_bos_id(const tokenizer *t) { return t->n_before ? t->tmpl_before[0] : -1; }

int tokenizer_is_special(const tokenizer *t, int32_t id) { return id >= 0 && id < t->n_ids && t->is_special[id]; }

const char *tokenizer_piece(const tokenizer *t, int32_t id, size_t *len) {
    if (!valid_id(t, id)) return NULL;
    if (len) *len = (size_t)t->piece_len[id];
    return t->pieces.p + t->piece_off[id];
}
