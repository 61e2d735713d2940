// Hugging Face tokenizer.json in C: BPE (byte-level like Llama 3, or SentencePiece-style with
// byte fallback like Llama 2), with the normalizer / pre-tokenizer / decoder / post-processor
// components those two families use. The pipeline is the one Hugging Face tokenizers runs:
//
//   text -> split on added tokens -> per segment: normalizers -> pre-tokenizers -> BPE per piece
//        -> post-processor template (BOS)
//   ids  -> token strings -> decoder chain -> bytes -> lossy UTF-8 (U+FFFD for invalid bytes)
//
// Reading order: small containers (byte strings, string lists, hash maps), UTF-8 helpers, the
// tokenizer struct, loading (one function per tokenizer.json section), encoding, decoding,
// streaming decode.
#include "runtime/tokenizer_internal.h"

#define CACHE_MAX_PIECE 256                   // longer pieces are rare; not worth caching
#define CACHE_MAX_ENTRIES ((size_t)1 << 16)   // bound on one encode call's word cache

// ---------------------------------------------------------------------------- encoding: scratch
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

static void emit(encoder *e, int32_t id) {
    if (e->n_ids == e->cap_ids) {
        e->cap_ids = e->cap_ids ? 2 * e->cap_ids : 256;
        e->ids = xrealloc(e->ids, e->cap_ids * sizeof *e->ids);
    }
    e->ids[e->n_ids++] = id;
}

static void heap_push(encoder *e, uint32_t rank, uint32_t pos) {
    if (e->n_heap == e->cap_heap) {
        e->cap_heap = e->cap_heap ? 2 * e->cap_heap : 64;
        e->heap = xrealloc(e->heap, e->cap_heap * sizeof *e->heap);
    }
    size_t i = e->n_heap++;
    bpe_merge m = {rank, pos};
    while (i > 0) {   // sift up; ties go to the leftmost pair, as in Hugging Face
        size_t p = (i - 1) / 2;
        bpe_merge q = e->heap[p];
        if (q.rank < m.rank || (q.rank == m.rank && q.pos < m.pos)) break;
        e->heap[i] = q;
        i = p;
    }
    e->heap[i] = m;
}

static bpe_merge heap_pop(encoder *e) {
    bpe_merge top = e->heap[0], m = e->heap[--e->n_heap];
    size_t i = 0, n = e->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && (e->heap[c + 1].rank < e->heap[c].rank ||
                          (e->heap[c + 1].rank == e->heap[c].rank && e->heap[c + 1].pos < e->heap[c].pos))) c++;
        if (m.rank < e->heap[c].rank || (m.rank == e->heap[c].rank && m.pos < e->heap[c].pos)) break;
        e->heap[i] = e->heap[c];
        i = c;
    }
    if (n) e->heap[i] = m;
    return top;
}

// ---------------------------------------------------------------------------- encoding: BPE
static void push_pair(encoder *e, int32_t left) {
    const bpe_symbol *s = e->sym;
    if (left < 0 || s[left].next < 0) return;
    const pair_slot *m = pairmap_get(&e->t->merges, s[left].id, s[s[left].next].id);
    if (m) heap_push(e, m->rank, (uint32_t)left);
}

// Initial symbols: one per character; characters outside the vocab become byte tokens
// (byte_fallback), else unk (consecutive unks fused with fuse_unk), else are dropped.
static size_t bpe_symbols(encoder *e, const char *s, size_t n) {
    const tokenizer *t = e->t;
    if (n > e->cap_sym) {
        e->cap_sym = n;
        free(e->sym);
        e->sym = xmalloc(n * sizeof *e->sym);
    }
    size_t ns = 0;
    for (size_t i = 0; i < n;) {
        size_t cl = utf8_len(s + i, n - i);
        int32_t id = strmap_get(&t->vocab, s + i, cl);
        if (id >= 0) {
            e->sym[ns++] = (bpe_symbol){id, 0, 0, (uint32_t)cl};
        } else {
            bool all_bytes = t->byte_fallback;
            for (size_t k = 0; k < cl && all_bytes; k++) all_bytes = t->byte_id[(uint8_t)s[i + k]] >= 0;
            if (all_bytes) {
                for (size_t k = 0; k < cl; k++) e->sym[ns++] = (bpe_symbol){t->byte_id[(uint8_t)s[i + k]], 0, 0, 1};
            } else if (t->unk_id >= 0) {
                if (t->fuse_unk && ns > 0 && e->sym[ns - 1].id == t->unk_id) e->sym[ns - 1].len += (uint32_t)cl;
                else e->sym[ns++] = (bpe_symbol){t->unk_id, 0, 0, (uint32_t)cl};
            }
        }
        i += cl;
    }
    for (size_t i = 0; i < ns; i++) {
        e->sym[i].prev = (int32_t)i - 1;
        e->sym[i].next = i + 1 < ns ? (int32_t)i + 1 : -1;
    }
    return ns;
}

// Applies merges lowest rank first until none applies: O(n log n) with the heap. Heap entries
// go stale when a neighbour merges; they are checked against the current pair when popped.
static void bpe_merge_all(encoder *e, size_t ns) {
    bpe_symbol *s = e->sym;
    e->n_heap = 0;
    for (size_t i = 0; i + 1 < ns; i++) push_pair(e, (int32_t)i);
    while (e->n_heap) {
        bpe_merge top = heap_pop(e);
        int32_t p = (int32_t)top.pos, q = s[p].next;
        if (s[p].len == 0 || q < 0) continue;
        const pair_slot *m = pairmap_get(&e->t->merges, s[p].id, s[q].id);
        if (!m || m->rank != top.rank) continue;
        s[p].id = m->merged;
        s[p].len += s[q].len;
        s[p].next = s[q].next;
        if (s[q].next >= 0) s[s[q].next].prev = p;
        s[q].len = 0;
        push_pair(e, s[p].prev);
        push_pair(e, p);
    }
}

static void bpe_piece(encoder *e, const char *s, size_t n) {
    const tokenizer *t = e->t;
    if (n == 0) return;
    if (t->ignore_merges) {   // a whole piece in the vocab is one token, merges or not
        int32_t id = strmap_get(&t->vocab, s, n);
        if (id >= 0) { emit(e, id); return; }
    }
    bool cacheable = n <= CACHE_MAX_PIECE;
    if (cacheable) {
        int32_t c = strmap_get(&e->cache, s, n);
        if (c >= 0) {
            for (size_t k = 0; k < e->cache_n[c]; k++) emit(e, e->cache_ids[e->cache_off[c] + k]);
            return;
        }
    }
    size_t first = e->n_ids, ns = bpe_symbols(e, s, n);
    if (ns == 0) return;
    bpe_merge_all(e, ns);
    for (int32_t i = 0; i >= 0; i = e->sym[i].next) emit(e, e->sym[i].id);
    if (cacheable && e->cache.n < CACHE_MAX_ENTRIES) {
        size_t c = e->cache.n, k = e->n_ids - first;
        if (c == e->cap_cache) {
            e->cap_cache = e->cap_cache ? 2 * e->cap_cache : 256;
            e->cache_off = xrealloc(e->cache_off, e->cap_cache * sizeof *e->cache_off);
            e->cache_n = xrealloc(e->cache_n, e->cap_cache * sizeof *e->cache_n);
        }
        if (e->n_cache_ids + k > e->cap_cache_ids) {
            while (e->n_cache_ids + k > e->cap_cache_ids) e->cap_cache_ids = e->cap_cache_ids ? 2 * e->cap_cache_ids : 1024;
            e->cache_ids = xrealloc(e->cache_ids, e->cap_cache_ids * sizeof *e->cache_ids);
        }
        memcpy(e->cache_ids + e->n_cache_ids, e->ids + first, k * sizeof *e->ids);
        e->cache_off[c] = e->n_cache_ids;
        e->cache_n[c] = k;
        e->n_cache_ids += k;
        strmap_put(&e->cache, s, n, (int32_t)c);
    }
}

// ---------------------------------------------------------------------------- encoding: normalizers
static void normalize(encoder *e, const char *s, size_t n) {
    e->na.len = 0;
    bytes_put(&e->na, s, n);
    for (size_t k = 0; k < e->t->n_norm; k++) {
        const norm_step *st = &e->t->norm[k];
        e->nb.len = 0;
        if (st->kind == NORM_PREPEND) {
            if (e->na.len) bytes_put(&e->nb, st->from, st->from_len);   // not on an empty string
            bytes_put(&e->nb, e->na.p, e->na.len);
        } else {
            replace_all(&e->nb, e->na.p, e->na.len, st->from, st->from_len, st->to, st->to_len);
        }
        bytes t = e->na; e->na = e->nb; e->nb = t;
    }
}

// ---------------------------------------------------------------------------- encoding: pre-tokenizers
// Splits s by the regex: matches and the stretches between them become pieces (Isolated), or
// only the stretches (Removed). Empty matches are skipped.
static void regex_split(encoder *e, const pcre2_code *re, bool removed, const char *s, size_t n, strlist *out) {
    size_t pos = 0, last = 0;
    while (pos < n) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, e->md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) { e->regex_error = rc; break; }   // reported by tokenizer_encode
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->md);
        size_t ms = ov[0], me = ov[1];
        if (me == ms) {   // empty match: look again one character on
            pos = ms + utf8_len(s + ms, n - ms);
            continue;
        }
        if (ms > last) strlist_add(out, s + last, ms - last);
        if (!removed) strlist_add(out, s + ms, me - ms);
        pos = last = me;
    }
    if (last < n) strlist_add(out, s + last, n - last);
}

static void pre_bytelevel(encoder *e, const pre_step *st, const char *s, size_t n, strlist *out) {
    const tokenizer *t = e->t;
    const char *src = s;
    size_t len = n;
    if (st->add_prefix_space && (n == 0 || s[0] != ' ')) {
        e->tmp.len = 0;
        bytes_put(&e->tmp, " ", 1);
        bytes_put(&e->tmp, s, n);
        src = e->tmp.p; len = e->tmp.len;
    }
    size_t n_parts = 1;
    if (st->re) {
        strlist_clear(&e->pc);
        regex_split(e, st->re, false, src, len, &e->pc);
        n_parts = e->pc.n;
    }
    for (size_t i = 0; i < n_parts; i++) {   // every byte becomes its visible stand-in character
        const uint8_t *p = (const uint8_t *)(st->re ? strlist_at(&e->pc, i) : src);
        size_t plen = st->re ? e->pc.len[i] : len;
        size_t start = strlist_begin(out);
        bytes_reserve(&out->buf, 2 * plen);
        for (size_t k = 0; k < plen; k++) {
            memcpy(out->buf.p + out->buf.len, t->byte_char[p[k]], t->byte_char_len[p[k]]);
            out->buf.len += t->byte_char_len[p[k]];
        }
        out->buf.p[out->buf.len] = 0;
        strlist_end(out, start);
    }
}

static void pre_metaspace(encoder *e, const pre_step *st, const char *s, size_t n, bool at_start, strlist *out) {
    e->tmp.len = 0;
    bool prepend = st->prepend == PREPEND_ALWAYS || (st->prepend == PREPEND_FIRST && at_start);
    if (prepend && !(n >= st->repl_len && !memcmp(s, st->repl, st->repl_len))) bytes_put(&e->tmp, st->repl, st->repl_len);
    replace_all(&e->tmp, s, n, " ", 1, st->repl, st->repl_len);
    const char *p = e->tmp.p;
    size_t len = e->tmp.len;
    if (!st->split) { strlist_add(out, p, len); return; }
    size_t start = 0;   // each replacement character starts a new piece (MergedWithNext)
    for (size_t i = 1; i + st->repl_len <= len; i++) {
        if (!memcmp(p + i, st->repl, st->repl_len)) {
            strlist_add(out, p + start, i - start);
            start = i;
        }
    }
    if (len > start) strlist_add(out, p + start, len - start);
}

// Normalizes and pre-tokenizes one segment (text between added tokens), then BPEs each piece.
static void encode_segment(encoder *e, const char *s, size_t n, bool at_start) {
    const tokenizer *t = e->t;
    if (n == 0) return;
    normalize(e, s, n);
    strlist_clear(&e->pa);
    strlist_add(&e->pa, e->na.p, e->na.len);
    for (size_t k = 0; k < t->n_pre; k++) {
        const pre_step *st = &t->pre[k];
        strlist_clear(&e->pb);
        for (size_t i = 0; i < e->pa.n; i++) {
            const char *p = strlist_at(&e->pa, i);
            size_t len = e->pa.len[i];
            if (len == 0) continue;
            if (st->kind == PRE_SPLIT) regex_split(e, st->re, st->removed, p, len, &e->pb);
            else if (st->kind == PRE_BYTELEVEL) pre_bytelevel(e, st, p, len, &e->pb);
            else pre_metaspace(e, st, p, len, at_start && i == 0, &e->pb);
        }
        strlist_swap(&e->pa, &e->pb);
    }
    for (size_t i = 0; i < e->pa.n; i++) bpe_piece(e, strlist_at(&e->pa, i), e->pa.len[i]);
}

// The added token that starts at s[0..n), longest first; NULL if none.
static const added_token *match_added(const tokenizer *t, const char *s, size_t n, bool parse_special) {
    uint8_t b = (uint8_t)s[0];
    for (size_t k = t->added_first[b]; k < t->added_first[b + 1]; k++) {
        const added_token *a = &t->added[k];
        if (a->special && !parse_special) continue;
        if (a->len <= n && !memcmp(s, a->text, a->len)) return a;
    }
    return NULL;
}

int tokenizer_encode(const tokenizer *t, const char *text, size_t len, int add_special,
                     int parse_special, int32_t **ids, int *n_ids, llamoe_err *err) {
    *ids = NULL;
    *n_ids = 0;
    size_t bad = utf8_check(text, len);
    if (bad < len) return fail(err, "text: invalid UTF-8 at byte %zu", bad);
    if (len > INT32_MAX / 2) return fail(err, "text: %zu bytes is too long to encode at once", len);

    encoder e = {.t = t};
    e.md = pcre2_match_data_create(1, NULL);
    strmap_init(&e.cache, 1024);
    if (add_special) for (size_t i = 0; i < t->n_before; i++) emit(&e, t->tmpl_before[i]);
    size_t seg = 0;
    for (size_t i = 0; i < len;) {
        const added_token *a = t->n_added ? match_added(t, text + i, len - i, parse_special) : NULL;
        if (!a) { i++; continue; }
        encode_segment(&e, text + seg, i - seg, seg == 0);
        emit(&e, a->id);
        i += a->len;
        seg = i;
    }
    encode_segment(&e, text + seg, len - seg, seg == 0);
    if (add_special) for (size_t i = 0; i < t->n_after; i++) emit(&e, t->tmpl_after[i]);

    pcre2_match_data_free(e.md);
    strlist_free(&e.pa); strlist_free(&e.pb); strlist_free(&e.pc);
    bytes_free(&e.na); bytes_free(&e.nb); bytes_free(&e.tmp);
    free(e.sym); free(e.heap);
    strmap_free(&e.cache);
    free(e.cache_ids); free(e.cache_off); free(e.cache_n);
    if (e.regex_error) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(e.regex_error, msg, sizeof msg);
        free(e.ids);
        return fail(err, "text: pre-tokenizer regex failed: %s", (char *)msg);
    }
    if (e.n_ids > INT32_MAX) { free(e.ids); return fail(err, "text: too many tokens"); }
    *ids = e.ids ? e.ids : xmalloc(sizeof(int32_t));
    *n_ids = (int)e.n_ids;
    return 0;
}

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
