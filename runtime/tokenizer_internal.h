// Private to runtime/tokenizer*.c: what the files of the tokenizer share. The small containers
// (byte strings, string lists, the string and pair hash maps) and the UTF-8 helpers are static
// inline here because every stage calls them in its inner loops, as it did when the tokenizer
// was one file. Then the pipeline components as loaded from tokenizer.json, the tokenizer struct
// that holds them, the scratch of one encode and of one decode, and the functions one stage's
// file calls in another's.
#pragma once
#define PCRE2_CODE_UNIT_WIDTH 8
#include "runtime/tokenizer.h"

#include <pcre2.h>
#include <stdbool.h>
#include <string.h>

// ---------------------------------------------------------------------------- byte strings
typedef struct { char *p; size_t len, cap; } bytes;

static inline void bytes_reserve(bytes *b, size_t extra) {
    size_t need;
    CHECK(add_ok(b->len, extra + 1, &need));
    if (need <= b->cap) return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need) cap *= 2;
    b->p = xrealloc(b->p, cap);
    b->cap = cap;
}
static inline void bytes_put(bytes *b, const void *s, size_t n) {
    bytes_reserve(b, n);
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;   // always NUL-terminated so results can be handed out as C strings
}
static inline void bytes_free(bytes *b) { free(b->p); *b = (bytes){0}; }

// A list of strings kept in one buffer: the pieces of pre-tokenization and the tokens of the
// decoder chain. A string is written with bytes_put on .buf between strlist_begin/strlist_end.
typedef struct { bytes buf; size_t *off, *len; size_t n, cap; } strlist;

static inline void strlist_clear(strlist *l) { l->buf.len = 0; l->n = 0; }
static inline size_t strlist_begin(strlist *l) { return l->buf.len; }
static inline void strlist_end(strlist *l, size_t start) {
    bytes_reserve(&l->buf, 0);   // an empty first string still needs a buffer for strlist_at
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 16;
        l->off = xrealloc(l->off, l->cap * sizeof *l->off);
        l->len = xrealloc(l->len, l->cap * sizeof *l->len);
    }
    l->off[l->n] = start;
    l->len[l->n] = l->buf.len - start;
    l->n++;
}
static inline void strlist_add(strlist *l, const char *s, size_t n) {
    size_t start = strlist_begin(l);
    bytes_put(&l->buf, s, n);
    strlist_end(l, start);
}
static inline const char *strlist_at(const strlist *l, size_t i) { return l->buf.p + l->off[i]; }
static inline void strlist_free(strlist *l) { bytes_free(&l->buf); free(l->off); free(l->len); *l = (strlist){0}; }
static inline void strlist_swap(strlist *a, strlist *b) { strlist t = *a; *a = *b; *b = t; }

// Appends s to out with every occurrence of from[0..nf) replaced by to[0..nt).
static inline void replace_all(bytes *out, const char *s, size_t n, const char *from, size_t nf, const char *to, size_t nt) {
    size_t i = 0, start = 0;
    while (i + nf <= n) {
        if (!memcmp(s + i, from, nf)) {
            bytes_put(out, s + start, i - start);
            bytes_put(out, to, nt);
            i += nf;
            start = i;
        } else {
            i++;
        }
    }
    bytes_put(out, s + start, n - start);
}

// ---------------------------------------------------------------------------- hash maps
static inline uint32_t hash_bytes(const char *s, size_t n) {   // FNV-1a; keys are short
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 16777619u;
    return h;
}

// String -> int32, open addressing with linear probing. Keys are copied into an arena so
// the map owns them; slots hold entry index + 1 (0 = empty) and the hash to skip memcmp.
typedef struct {
    bytes keys;
    size_t *key_off;
    uint32_t *key_len;
    int32_t *vals;
    size_t n, cap_n;
    uint32_t *slot, *slot_hash;
    size_t mask;
} strmap;

static inline void strmap_rehash(strmap *m, size_t nslots) {
    free(m->slot); free(m->slot_hash);
    m->slot = xcalloc(nslots, sizeof *m->slot);
    m->slot_hash = xcalloc(nslots, sizeof *m->slot_hash);
    m->mask = nslots - 1;
    for (size_t e = 0; e < m->n; e++) {
        uint32_t h = hash_bytes(m->keys.p + m->key_off[e], m->key_len[e]);
        size_t i = h & m->mask;
        while (m->slot[i]) i = (i + 1) & m->mask;
        m->slot[i] = (uint32_t)e + 1;
        m->slot_hash[i] = h;
    }
}

static inline void strmap_init(strmap *m, size_t expected) {
    *m = (strmap){0};
    size_t nslots = 16;
    while (nslots < 2 * expected) nslots *= 2;
    strmap_rehash(m, nslots);
}

// Index of the slot holding key, or of the empty slot where it would go.
static inline size_t strmap_find(const strmap *m, const char *s, size_t n, uint32_t h) {
    size_t i = h & m->mask;
    while (m->slot[i]) {
        size_t e = m->slot[i] - 1;
        if (m->slot_hash[i] == h && m->key_len[e] == n && !memcmp(m->keys.p + m->key_off[e], s, n)) break;
        i = (i + 1) & m->mask;
    }
    return i;
}

static inline int32_t strmap_get(const strmap *m, const char *s, size_t n) {
    size_t i = strmap_find(m, s, n, hash_bytes(s, n));
    return m->slot[i] ? m->vals[m->slot[i] - 1] : -1;
}

// Inserts or overwrites; returns the previous value or -1.
static inline int32_t strmap_put(strmap *m, const char *s, size_t n, int32_t val) {
    uint32_t h = hash_bytes(s, n);
    size_t i = strmap_find(m, s, n, h);
    if (m->slot[i]) {
        int32_t old = m->vals[m->slot[i] - 1];
        m->vals[m->slot[i] - 1] = val;
        return old;
    }
    if (m->n == m->cap_n) {
        m->cap_n = m->cap_n ? 2 * m->cap_n : 64;
        m->key_off = xrealloc(m->key_off, m->cap_n * sizeof *m->key_off);
        m->key_len = xrealloc(m->key_len, m->cap_n * sizeof *m->key_len);
        m->vals = xrealloc(m->vals, m->cap_n * sizeof *m->vals);
    }
    m->key_off[m->n] = m->keys.len;
    m->key_len[m->n] = (uint32_t)n;
    m->vals[m->n] = val;
    bytes_put(&m->keys, s, n);
    m->slot[i] = (uint32_t)(m->n + 1);
    m->slot_hash[i] = h;
    m->n++;
    if (2 * m->n > m->mask + 1) strmap_rehash(m, 2 * (m->mask + 1));
    return -1;
}

static inline void strmap_free(strmap *m) {
    bytes_free(&m->keys);
    free(m->key_off); free(m->key_len); free(m->vals); free(m->slot); free(m->slot_hash);
    *m = (strmap){0};
}

// (left id, right id) -> (rank, merged id): the merges of the BPE model.
typedef struct { uint64_t key; uint32_t rank; int32_t merged; } pair_slot;
typedef struct { pair_slot *slot; size_t mask; } pairmap;
#define PAIR_EMPTY UINT64_MAX   // ids are < 2^24, so no real key is all ones

static inline uint64_t pair_key(int32_t a, int32_t b) { return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b; }
static inline size_t pair_hash(uint64_t k, size_t mask) { return (size_t)((k * 0x9E3779B97F4A7C15ull) >> 29) & mask; }

static inline void pairmap_init(pairmap *m, size_t expected) {
    size_t nslots = 16;
    while (nslots < 2 * expected) nslots *= 2;
    m->slot = xmalloc(nslots * sizeof *m->slot);
    for (size_t i = 0; i < nslots; i++) m->slot[i].key = PAIR_EMPTY;
    m->mask = nslots - 1;
}

// A pair listed twice keeps the later rank, as Hugging Face's HashMap collect does.
static inline void pairmap_put(pairmap *m, int32_t a, int32_t b, uint32_t rank, int32_t merged) {
    uint64_t k = pair_key(a, b);
    size_t i = pair_hash(k, m->mask);
    while (m->slot[i].key != PAIR_EMPTY && m->slot[i].key != k) i = (i + 1) & m->mask;
    m->slot[i] = (pair_slot){k, rank, merged};
}

static inline const pair_slot *pairmap_get(const pairmap *m, int32_t a, int32_t b) {
    uint64_t k = pair_key(a, b);
    size_t i = pair_hash(k, m->mask);
    while (m->slot[i].key != PAIR_EMPTY) {
        if (m->slot[i].key == k) return &m->slot[i];
        i = (i + 1) & m->mask;
    }
    return NULL;
}

// ---------------------------------------------------------------------------- UTF-8
enum { UTF8_OK, UTF8_INVALID, UTF8_TRUNCATED };

// Classifies the sequence at s[0..n): UTF8_OK with *adv = its length; UTF8_INVALID with *adv =
// the length of the maximal invalid subpart (what one U+FFFD replaces, as in Rust's
// from_utf8_lossy); UTF8_TRUNCATED when all n bytes are a valid start cut short by the end.
static inline int utf8_seq(const uint8_t *s, size_t n, size_t *adv) {
    uint8_t c = s[0];
    size_t need;
    uint8_t lo = 0x80, hi = 0xBF;   // allowed range of the second byte
    if (c < 0x80) { *adv = 1; return UTF8_OK; }
    else if (c >= 0xC2 && c <= 0xDF) need = 1;
    else if (c == 0xE0) { need = 2; lo = 0xA0; }
    else if (c == 0xED) { need = 2; hi = 0x9F; }   // no surrogates
    else if (c >= 0xE1 && c <= 0xEF) need = 2;
    else if (c == 0xF0) { need = 3; lo = 0x90; }
    else if (c == 0xF4) { need = 3; hi = 0x8F; }   // nothing past U+10FFFF
    else if (c >= 0xF1 && c <= 0xF3) need = 3;
    else { *adv = 1; return UTF8_INVALID; }
    for (size_t i = 1; i <= need; i++) {
        if (i >= n) { *adv = n; return UTF8_TRUNCATED; }
        uint8_t b = s[i];
        if (i == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) { *adv = i; return UTF8_INVALID; }
    }
    *adv = need + 1;
    return UTF8_OK;
}

// Byte offset of the first invalid or truncated sequence, or n if s is valid UTF-8.
static inline size_t utf8_check(const char *s, size_t n) {
    size_t i = 0, adv;
    while (i < n) {
        if (utf8_seq((const uint8_t *)s + i, n - i, &adv) != UTF8_OK) return i;
        i += adv;
    }
    return n;
}

// Length of the character at s (1 for a stray byte, so loops over not-quite-UTF-8 still end).
static inline size_t utf8_len(const char *s, size_t n) {
    size_t adv;
    return utf8_seq((const uint8_t *)s, n, &adv) == UTF8_OK ? adv : 1;
}

static inline uint32_t utf8_decode(const char *s, size_t len) {   // len from utf8_len
    const uint8_t *u = (const uint8_t *)s;
    if (len == 1) return u[0];
    if (len == 2) return ((uint32_t)(u[0] & 0x1F) << 6) | (u[1] & 0x3F);
    if (len == 3) return ((uint32_t)(u[0] & 0x0F) << 12) | ((uint32_t)(u[1] & 0x3F) << 6) | (u[2] & 0x3F);
    return ((uint32_t)(u[0] & 0x07) << 18) | ((uint32_t)(u[1] & 0x3F) << 12) | ((uint32_t)(u[2] & 0x3F) << 6) | (u[3] & 0x3F);
}

static inline size_t utf8_encode(uint32_t cp, char *out) {
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) { out[0] = (char)(0xC0 | (cp >> 6)); out[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12)); out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F)); return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18)); out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); out[3] = (char)(0x80 | (cp & 0x3F)); return 4;
}

// Appends s to out with every invalid subpart replaced by U+FFFD. With keep_tail, a truncated
// sequence at the very end is left out and its length returned instead (the stream waits for
// the rest of the character); otherwise it is replaced too and 0 is returned.
static inline size_t utf8_lossy(bytes *out, const char *s, size_t n, bool keep_tail) {
    static const char fffd[3] = {(char)0xEF, (char)0xBF, (char)0xBD};
    size_t i = 0, adv, start = 0;
    while (i < n) {
        int r = utf8_seq((const uint8_t *)s + i, n - i, &adv);
        if (r == UTF8_OK) { i += adv; continue; }
        bytes_put(out, s + start, i - start);
        if (r == UTF8_TRUNCATED && keep_tail) return adv;
        bytes_put(out, fffd, 3);
        i += adv;
        start = i;
    }
    bytes_put(out, s + start, n - start);
    return 0;
}

// ---------------------------------------------------------------------------- the tokenizer
// Pipeline components, flattened: a Sequence becomes consecutive steps.
typedef enum { NORM_PREPEND, NORM_REPLACE } norm_kind;
typedef struct { norm_kind kind; char *from, *to; size_t from_len, to_len; } norm_step;

typedef enum { PRE_SPLIT, PRE_BYTELEVEL, PRE_METASPACE } pre_kind;
typedef enum { PREPEND_NEVER, PREPEND_FIRST, PREPEND_ALWAYS } prepend_scheme;
typedef struct {
    pre_kind kind;
    pcre2_code *re;           // Split, and ByteLevel with use_regex
    bool removed;             // Split behavior Removed (else Isolated)
    bool add_prefix_space;    // ByteLevel
    char repl[8];             // Metaspace replacement character (UTF-8)
    size_t repl_len;
    prepend_scheme prepend;   // Metaspace
    bool split;               // Metaspace
} pre_step;

typedef enum { DEC_BYTELEVEL, DEC_REPLACE, DEC_BYTEFALLBACK, DEC_FUSE, DEC_STRIP, DEC_METASPACE } dec_kind;
typedef struct {
    dec_kind kind;
    char *from, *to;          // Replace; Strip content in from; Metaspace replacement in from
    size_t from_len, to_len;
    int64_t start, stop;      // Strip
    bool strip_first;         // Metaspace: drop the leading space of the first token
} dec_step;

typedef struct { char *text; size_t len; int32_t id; bool special; } added_token;

struct tokenizer {
    // BPE model
    strmap vocab;               // model piece -> id (added tokens are not in it unless the model lists them)
    pairmap merges;
    bool ignore_merges, byte_fallback, fuse_unk;
    int32_t unk_id;             // -1: characters outside the vocab are dropped, as Hugging Face does
    int32_t byte_id[256];       // ids of <0x00>..<0xFF> for byte fallback; -1 where absent

    // id -> piece (added tokens take precedence, as in Hugging Face's id_to_token)
    int32_t n_ids;
    bytes pieces;
    size_t *piece_off;
    int32_t *piece_len;         // -1: no token has this id
    uint8_t *is_special;

    // added tokens, sorted by first byte and then longest first; added_first[b] indexes them
    added_token *added;
    size_t n_added, added_first[257];

    norm_step *norm; size_t n_norm;
    pre_step *pre; size_t n_pre;
    dec_step *dec; size_t n_dec;
    bool has_decoder;

    // post-processor: TemplateProcessing "single" = before ids, $A, after ids
    int32_t *tmpl_before, *tmpl_after;
    size_t n_before, n_after;

    // GPT-2 byte <-> unicode map for ByteLevel
    char byte_char[256][2];
    uint8_t byte_char_len[256];
    int16_t char_byte[324];     // code point -> byte, -1 if not in the map
};

// An id that names a token: the id -> piece table may have gaps.
static inline bool valid_id(const tokenizer *t, int32_t id) { return id >= 0 && id < t->n_ids && t->piece_len[id] >= 0; }

// ---------------------------------------------------------------------------- encoding
// Everything one encode call needs; nothing is written into the tokenizer, so several threads
// may encode with one tokenizer at once.
typedef struct { int32_t id, prev, next; uint32_t len; } bpe_symbol;   // len 0: merged away
typedef struct { uint32_t rank, pos; } bpe_merge;

typedef struct {
    const tokenizer *t;
    int32_t *ids;                 // output
    size_t n_ids, cap_ids;
    strlist pa, pb;               // pre-tokenization pieces, ping-pong
    bytes na, nb;                 // normalization, ping-pong
    strlist pc;                   // ByteLevel's own regex split
    bytes tmp;
    bpe_symbol *sym; size_t cap_sym;
    bpe_merge *heap; size_t n_heap, cap_heap;
    pcre2_match_data *md;
    int regex_error;              // a PCRE2 error other than no-match (e.g. a resource limit)
    strmap cache;                 // piece -> index into cache_off/cache_n
    int32_t *cache_ids; size_t n_cache_ids, cap_cache_ids;
    size_t *cache_off, *cache_n; size_t cap_cache;
} encoder;

// Appends one id to the output.
static inline void emit(encoder *e, int32_t id) {
    if (e->n_ids == e->cap_ids) {
        e->cap_ids = e->cap_ids ? 2 * e->cap_ids : 256;
        e->ids = xrealloc(e->ids, e->cap_ids * sizeof *e->ids);
    }
    e->ids[e->n_ids++] = id;
}

// Normalizes and pre-tokenizes one segment, the pieces left in e->pa (tokenizer_pretok.c).
void pre_tokenize_segment(encoder *e, const char *s, size_t n, bool at_start);
// BPE of one pre-tokenized piece, its ids appended to e->ids (tokenizer_bpe.c).
void bpe_piece(encoder *e, const char *s, size_t n);

// ---------------------------------------------------------------------------- decoding
// Scratch of the decoder chain: two token lists (ping-pong) and the joined bytes.
typedef struct { strlist a, b; bytes raw; } decoder_scratch;
void decoder_scratch_free(decoder_scratch *d);
// ids -> raw decoded bytes in d->raw (before UTF-8 replacement). ids must be valid.
void decode_raw(const tokenizer *t, const int32_t *ids, size_t n, decoder_scratch *d);
