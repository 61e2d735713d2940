// Hugging Face tokenizer.json: byte-level BPE (Llama 3) and SentencePiece-style BPE with
// byte fallback (Llama 2 / the bundled stories260k model). The code is runtime/tokenizer*.c, one
// file per stage of the pipeline; runtime/tokenizer.c lists them.
#pragma once
#include "base/common.h"

typedef struct tokenizer tokenizer;

tokenizer *tokenizer_load(const char *path, llamoe_err *err);   // NULL + err on failure
// The same from tokenizer.json text already in memory (text[0..len), need not be
// NUL-terminated); path only names the file in messages. The fuzzer's entry point.
tokenizer *tokenizer_load_mem(const char *path, const char *text, size_t len, llamoe_err *err);
void tokenizer_free(tokenizer *t);

// Encodes text[0..len). add_special: apply the post-processor (BOS for Llama).
// parse_special: match added special tokens in the text (else they are plain text).
// *ids is malloc'd and owned by the caller. Text that is not valid UTF-8 is an error.
int tokenizer_encode(const tokenizer *t, const char *text, size_t len, int add_special,
                     int parse_special, int32_t **ids, int *n_ids, llamoe_err *err);

// Decodes ids to bytes (malloc'd, NUL-terminated; *len excludes the NUL). Special tokens are
// kept (as Hugging Face's skip_special_tokens=False); invalid UTF-8 from byte tokens becomes
// U+FFFD, so the result is always valid UTF-8. An id outside the vocab is an error.
int tokenizer_decode(const tokenizer *t, const int32_t *ids, int n_ids, char **text,
                     size_t *len, llamoe_err *err);

// Streaming decode for printing as tokens arrive: push one id, get the bytes that are now
// complete (never half a UTF-8 character). The buffer is owned by the stream and valid until
// the next call. push returns "" (len 0) while a character is unfinished and NULL for an id
// that is not in the vocab (the id is then ignored). flush returns what is left (an unfinished
// character as U+FFFD) and resets the stream. The concatenated output equals tokenizer_decode
// of all pushed ids.
typedef struct tokenizer_stream tokenizer_stream;
tokenizer_stream *tokenizer_stream_new(const tokenizer *t);
const char *tokenizer_stream_push(tokenizer_stream *s, int32_t id, size_t *len);
const char *tokenizer_stream_flush(tokenizer_stream *s, size_t *len);  // what is left at the end
void tokenizer_stream_free(tokenizer_stream *s);

int tokenizer_vocab_size(const tokenizer *t);              // model vocab + added tokens
int tokenizer_token_id(const tokenizer *t, const char *piece);   // -1 if absent
int tokenizer_bos_id(const tokenizer *t);                  // from the post-processor; -1 if none

// Added in the tokenizer branch:
// Whether id is an added token marked special (BOS, EOS, <|eot_id|>...): for callers that
// print generated text without them.
int tokenizer_is_special(const tokenizer *t, int32_t id);
// The token's string as stored in tokenizer.json (NUL-terminated, owned by t), e.g. "Ġthe" or
// "<0x0A>"; NULL if no token has this id. For --ids style debugging output.
const char *tokenizer_piece(const tokenizer *t, int32_t id, size_t *len);
