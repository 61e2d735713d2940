// Normalizing and pre-tokenizing: one segment of text (between added tokens) through the
// normalizers (Prepend, Replace) and the pre-tokenizers (Split by a PCRE2 regex, ByteLevel,
// Metaspace) into the pieces that BPE sees, as Hugging Face runs them.
#include "runtime/tokenizer_internal.h"

// ---------------------------------------------------------------------------- normalizers
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

// ---------------------------------------------------------------------------- pre-tokenizers
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

// ---------------------------------------------------------------------------- one segment
// Normalizes one segment (text between added tokens), then runs the pre-tokenizers over it:
// the pieces are left in e->pa.
void pre_tokenize_segment(encoder *e, const char *s, size_t n, bool at_start) {
    const tokenizer *t = e->t;
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
}
