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

// ---------------------------------------------------------------------------- encoding: normalizers
// Leaves the normalized segment in e->na.
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
