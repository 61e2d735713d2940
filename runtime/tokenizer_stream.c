// Streaming decode, for printing tokens as they are generated: each push returns the text that
// is now complete, never half a UTF-8 character, and the pieces concatenate to tokenizer_decode
// of all ids.
#include "runtime/tokenizer_internal.h"

// The decoder chain is not per token (Strip acts on the start of the text, byte runs span
// tokens), so the stream decodes a small window: ids[prefix..read) were already printed,
// ids[read..n) not yet. It decodes the window with and without the new ids and prints the
// difference. Both decodes start at the same token, so start-of-text effects (Strip's leading
// space) cancel out, and only the first window starts at the real beginning of the text.
// The window is printed only when it does not end inside a UTF-8 character.
struct tokenizer_stream {
    const tokenizer *t;
    int32_t *ids;
    size_t n, cap, prefix, read;
    decoder_scratch d;
    bytes prev, cur;
};

tokenizer_stream *tokenizer_stream_new(const tokenizer *t) {
    tokenizer_stream *s = xcalloc(1, sizeof *s);
    s->t = t;
    s->cap = 16;   // never NULL: a flush before any push decodes the empty window ids + 0
    s->ids = xmalloc(s->cap * sizeof *s->ids);
    return s;
}

// Decodes ids[prefix..read) into prev and ids[prefix..n) into cur; returns the length of an
// unfinished character at the end of cur (with keep_tail) that must not be printed yet.
static size_t stream_decode(tokenizer_stream *s, bool keep_tail) {
    s->prev.len = 0; s->cur.len = 0;
    decode_raw(s->t, s->ids + s->prefix, s->read - s->prefix, &s->d);
    utf8_lossy(&s->prev, s->d.raw.p, s->d.raw.len, false);
    decode_raw(s->t, s->ids + s->prefix, s->n - s->prefix, &s->d);
    bytes_put(&s->prev, "", 0);
    size_t tail = utf8_lossy(&s->cur, s->d.raw.p, s->d.raw.len, keep_tail);
    bytes_put(&s->cur, "", 0);
    return tail;
}

// The part of cur after prev; cur starts with prev whenever prev ends on a character boundary,
// which the window rule guarantees.
static const char *stream_new_text(tokenizer_stream *s, size_t *len) {
    size_t skip = s->prev.len <= s->cur.len ? s->prev.len : s->cur.len;
    *len = s->cur.len - skip;
    return s->cur.p + skip;
}

const char *tokenizer_stream_push(tokenizer_stream *s, int32_t id, size_t *len) {
    *len = 0;
    if (!valid_id(s->t, id)) return NULL;
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 16;
        s->ids = xrealloc(s->ids, s->cap * sizeof *s->ids);
    }
    s->ids[s->n++] = id;
    size_t tail = stream_decode(s, true);
    if (tail > 0 || s->cur.len <= s->prev.len) return "";   // wait for the rest of the character
    const char *out = stream_new_text(s, len);
    s->prefix = s->read;
    s->read = s->n;
    // Keep only the window: drop the ids before it so a long generation stays O(1) per token.
    memmove(s->ids, s->ids + s->prefix, (s->n - s->prefix) * sizeof *s->ids);
    s->n -= s->prefix; s->read -= s->prefix; s->prefix = 0;
    return out;
}

const char *tokenizer_stream_flush(tokenizer_stream *s, size_t *len) {
    stream_decode(s, false);
    const char *out = stream_new_text(s, len);
    s->n = s->prefix = s->read = 0;   // a later push starts a new text
    return out;
}

void tokenizer_stream_free(tokenizer_stream *s) {
    if (!s) return;
    free(s->ids);
    decoder_scratch_free(&s->d);
    bytes_free(&s->prev); bytes_free(&s->cur);
    free(s);
}
