// Decoding: ids to token strings, the decoder chain over them as lists of strings (ByteLevel,
// Replace, ByteFallback, Fuse, Strip, Metaspace, as Hugging Face runs it), then the bytes with
// invalid UTF-8 replaced once, at the end. The stream (tokenizer_stream.c) decodes through the
// same decode_raw.
#include "runtime/tokenizer_internal.h"

void decoder_scratch_free(decoder_scratch *d) { strlist_free(&d->a); strlist_free(&d->b); bytes_free(&d->raw); }

static bool is_byte_token(const char *s, size_t n, uint8_t *byte) {   // "<0xE2>"
    if (n != 6 || memcmp(s, "<0x", 3) || s[5] != '>') return false;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0) return false;
        v = 16 * v + d;
    }
    *byte = (uint8_t)v;
    return true;
}

// One decoder step over the token list in → out. Byte results stay raw here; invalid UTF-8 is
// replaced once, at the end (see tokenizer_decode).
static void decode_step(const tokenizer *t, const dec_step *st, const strlist *in, strlist *out) {
    size_t start;
    switch (st->kind) {
    case DEC_BYTELEVEL:   // all tokens become one byte string
        start = strlist_begin(out);
        for (size_t i = 0; i < in->n; i++) {
            const char *s = strlist_at(in, i);
            size_t n = in->len[i], mark = out->buf.len;
            for (size_t k = 0; k < n;) {
                size_t cl = utf8_len(s + k, n - k);
                uint32_t cp = utf8_decode(s + k, cl);
                if (cp >= 324 || t->char_byte[cp] < 0) {   // not byte-level text: keep it as is
                    out->buf.len = mark;
                    bytes_put(&out->buf, s, n);
                    break;
                }
                uint8_t b = (uint8_t)t->char_byte[cp];
                bytes_put(&out->buf, &b, 1);
                k += cl;
            }
        }
        strlist_end(out, start);
        break;
    case DEC_REPLACE:
    case DEC_METASPACE:
        for (size_t i = 0; i < in->n; i++) {
            start = strlist_begin(out);
            replace_all(&out->buf, strlist_at(in, i), in->len[i], st->from, st->from_len, st->to, st->to_len);
            if (st->kind == DEC_METASPACE && i == 0 && st->strip_first && out->buf.len > start && out->buf.p[start] == ' ') {
                memmove(out->buf.p + start, out->buf.p + start + 1, out->buf.len - start - 1);
                out->buf.len--;
            }
            strlist_end(out, start);
        }
        break;
    case DEC_BYTEFALLBACK:   // runs of byte tokens (<0x41>, ...) become one token of those bytes
        for (size_t i = 0; i < in->n;) {
            uint8_t b;
            start = strlist_begin(out);
            if (!is_byte_token(strlist_at(in, i), in->len[i], &b)) {
                bytes_put(&out->buf, strlist_at(in, i), in->len[i]);
                i++;
            } else {
                while (i < in->n && is_byte_token(strlist_at(in, i), in->len[i], &b)) { bytes_put(&out->buf, &b, 1); i++; }
            }
            strlist_end(out, start);
        }
        break;
    case DEC_FUSE:
        start = strlist_begin(out);
        for (size_t i = 0; i < in->n; i++) bytes_put(&out->buf, strlist_at(in, i), in->len[i]);
        strlist_end(out, start);
        break;
    case DEC_STRIP:   // per token: up to start leading and stop trailing copies of the character
        for (size_t i = 0; i < in->n; i++) {
            const char *s = strlist_at(in, i);
            size_t a = 0, z = in->len[i], c = st->from_len;
            for (int64_t k = 0; k < st->start && z - a >= c && !memcmp(s + a, st->from, c); k++) a += c;
            for (int64_t k = 0; k < st->stop && z - a >= c && !memcmp(s + z - c, st->from, c); k++) z -= c;
            strlist_add(out, s + a, z - a);
        }
        break;
    }
}

// ids -> raw decoded bytes in d->raw (before UTF-8 replacement). ids must be valid.
void decode_raw(const tokenizer *t, const int32_t *ids, size_t n, decoder_scratch *d) {
    strlist_clear(&d->a);
    for (size_t i = 0; i < n; i++) strlist_add(&d->a, t->pieces.p + t->piece_off[ids[i]], (size_t)t->piece_len[ids[i]]);
    for (size_t k = 0; k < t->n_dec; k++) {
        strlist_clear(&d->b);
        decode_step(t, &t->dec[k], &d->a, &d->b);
        strlist_swap(&d->a, &d->b);
    }
    d->raw.len = 0;
    bytes_put(&d->raw, "", 0);
    for (size_t i = 0; i < d->a.n; i++) {   // without a decoder Hugging Face joins with spaces
        if (i && !t->has_decoder) bytes_put(&d->raw, " ", 1);
        bytes_put(&d->raw, strlist_at(&d->a, i), d->a.len[i]);
    }
}

int tokenizer_decode(const tokenizer *t, const int32_t *ids, int n_ids, char **text, size_t *len, llamoe_err *err) {
    *text = NULL;
    *len = 0;
    for (int i = 0; i < n_ids; i++)
        if (!valid_id(t, ids[i])) return fail(err, "token id %d at position %d is not in the vocab (size %d)", ids[i], i, t->n_ids);
    decoder_scratch d = {0};
    bytes out = {0};
    decode_raw(t, ids, n_ids > 0 ? (size_t)n_ids : 0, &d);
    utf8_lossy(&out, d.raw.p, d.raw.len, false);
    bytes_put(&out, "", 0);
    decoder_scratch_free(&d);
    *text = out.p;
    *len = out.len;
    return 0;
}
