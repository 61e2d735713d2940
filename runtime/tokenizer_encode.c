// Encoding: the text split on added tokens (matched in the raw text, leftmost-longest), each
// segment between them pre-tokenized and BPE'd, the post-processor template (BOS) around it all.
// The scratch belongs to the call, so several threads may encode with one tokenizer at once.
#include "runtime/tokenizer_internal.h"

// Normalizes and pre-tokenizes one segment (text between added tokens), then BPEs each piece.
static void encode_segment(encoder *e, const char *s, size_t n, bool at_start) {
    if (n == 0) return;
    pre_tokenize_segment(e, s, n, at_start);
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
