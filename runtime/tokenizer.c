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

#include <json-c/json.h>

#define TOKENIZER_MAX_FILE_BYTES ((size_t)1 << 30)
#define TOKENIZER_MAX_ID ((int64_t)1 << 24)   // larger ids in a file are an error, not an allocation
#define CACHE_MAX_PIECE 256                   // longer pieces are rare; not worth caching
#define CACHE_MAX_ENTRIES ((size_t)1 << 16)   // bound on one encode call's word cache

// ---------------------------------------------------------------------------- loading: helpers
typedef struct { const char *path; llamoe_err *err; } loader;

// Object member, NULL when absent or JSON null.
static json_object *member(json_object *o, const char *key) {
    json_object *v = NULL;
    if (!o || !json_object_is_type(o, json_type_object) || !json_object_object_get_ex(o, key, &v)) return NULL;
    return v;
}

static int get_string(loader *L, json_object *o, const char *where, const char *key, const char **s, size_t *n) {
    json_object *v = member(o, key);
    if (!v) return fail(L->err, "%s: %s.%s: missing", L->path, where, key);
    if (!json_object_is_type(v, json_type_string)) return fail(L->err, "%s: %s.%s: expected a string", L->path, where, key);
    *s = json_object_get_string(v);
    *n = (size_t)json_object_get_string_len(v);
    return 0;
}

// Optional boolean: def when absent.
static int get_bool(loader *L, json_object *o, const char *where, const char *key, bool def, bool *out) {
    json_object *v = member(o, key);
    if (!v) { *out = def; return 0; }
    if (!json_object_is_type(v, json_type_boolean)) return fail(L->err, "%s: %s.%s: expected true or false", L->path, where, key);
    *out = json_object_get_boolean(v);
    return 0;
}

static int get_int(loader *L, json_object *o, const char *where, const char *key, int64_t def, int64_t *out) {
    json_object *v = member(o, key);
    if (!v) { *out = def; return 0; }
    if (!json_object_is_type(v, json_type_int)) return fail(L->err, "%s: %s.%s: expected an integer", L->path, where, key);
    *out = json_object_get_int64(v);
    return 0;
}

static const char *type_of(json_object *o) {
    json_object *t = member(o, "type");
    return t && json_object_is_type(t, json_type_string) ? json_object_get_string(t) : NULL;
}

// Replace patterns are {"String": s}; {"Regex": r} is not supported (no file we target uses it).
static int get_pattern(loader *L, json_object *o, const char *where, const char **s, size_t *n) {
    json_object *p = member(o, "pattern");
    if (!p || !json_object_is_type(p, json_type_object)) return fail(L->err, "%s: %s.pattern: missing", L->path, where);
    if (member(p, "String")) return get_string(L, p, where, "String", s, n);
    if (member(p, "Regex")) return fail(L->err, "%s: %s.pattern: Regex patterns are unsupported here", L->path, where);
    return fail(L->err, "%s: %s.pattern: expected String or Regex", L->path, where);
}

static char *dup_bytes(const char *s, size_t n) {
    char *p = xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}

static pcre2_code *compile_regex(loader *L, const char *where, const char *pattern, size_t n) {
    int code;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, n, PCRE2_UTF | PCRE2_UCP, &code, &off, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(code, msg, sizeof msg);
        fail(L->err, "%s: %s: regex does not compile at offset %zu: %s", L->path, where, (size_t)off, (char *)msg);
        return NULL;
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);   // optional: without JIT pcre2_match interprets
    return re;
}

// The GPT-2 map: printable Latin-1 bytes stand for themselves, the other 68 bytes take the
// code points 256.. in order, so every byte has a visible character in the vocab.
static void init_byte_map(tokenizer *t) {
    for (int i = 0; i < 324; i++) t->char_byte[i] = -1;
    int next = 256;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
        int cp = printable ? b : next++;
        t->char_byte[cp] = (int16_t)b;
        t->byte_char_len[b] = (uint8_t)utf8_encode((uint32_t)cp, t->byte_char[b]);
    }
}

// ---------------------------------------------------------------------------- loading: model
static void set_piece(tokenizer *t, int32_t id, const char *s, size_t n) {
    t->piece_off[id] = t->pieces.len;
    t->piece_len[id] = (int32_t)n;
    bytes_put(&t->pieces, s, n);
    bytes_put(&t->pieces, "", 1);   // each piece NUL-terminated, for tokenizer_piece
}

// Looks up the two halves of merge i and their concatenation.
static int add_merge(loader *L, tokenizer *t, size_t i, const char *a, size_t na, const char *b, size_t nb, bytes *tmp) {
    int32_t ia = strmap_get(&t->vocab, a, na), ib = strmap_get(&t->vocab, b, nb);
    if (ia < 0) return fail(L->err, "%s: model.merges[%zu]: token \"%.*s\" is not in the vocab", L->path, i, (int)na, a);
    if (ib < 0) return fail(L->err, "%s: model.merges[%zu]: token \"%.*s\" is not in the vocab", L->path, i, (int)nb, b);
    tmp->len = 0;
    bytes_put(tmp, a, na);
    bytes_put(tmp, b, nb);
    int32_t im = strmap_get(&t->vocab, tmp->p, tmp->len);
    if (im < 0) return fail(L->err, "%s: model.merges[%zu]: merged token \"%s\" is not in the vocab", L->path, i, tmp->p);
    if (i > UINT32_MAX) return fail(L->err, "%s: model.merges: too many merges", L->path);
    pairmap_put(&t->merges, ia, ib, (uint32_t)i, im);
    return 0;
}

static int load_merges(loader *L, tokenizer *t, json_object *merges) {
    if (!merges || !json_object_is_type(merges, json_type_array)) return fail(L->err, "%s: model.merges: missing or not an array", L->path);
    size_t n = json_object_array_length(merges);
    pairmap_init(&t->merges, n);
    bytes tmp = {0};
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        json_object *m = json_object_array_get_idx(merges, i);
        if (json_object_is_type(m, json_type_string)) {          // "a b"
            const char *s = json_object_get_string(m);
            size_t len = (size_t)json_object_get_string_len(m);
            const char *sp = memchr(s, ' ', len);
            if (!sp || memchr(sp + 1, ' ', len - (size_t)(sp - s) - 1)) {
                rc = fail(L->err, "%s: model.merges[%zu]: expected \"a b\" with exactly one space", L->path, i);
                break;
            }
            rc = add_merge(L, t, i, s, (size_t)(sp - s), sp + 1, len - (size_t)(sp - s) - 1, &tmp);
        } else if (json_object_is_type(m, json_type_array) && json_object_array_length(m) == 2 &&
                   json_object_is_type(json_object_array_get_idx(m, 0), json_type_string) &&
                   json_object_is_type(json_object_array_get_idx(m, 1), json_type_string)) {   // ["a", "b"]
            json_object *a = json_object_array_get_idx(m, 0), *b = json_object_array_get_idx(m, 1);
            rc = add_merge(L, t, i, json_object_get_string(a), (size_t)json_object_get_string_len(a),
                           json_object_get_string(b), (size_t)json_object_get_string_len(b), &tmp);
        } else {
            rc = fail(L->err, "%s: model.merges[%zu]: expected \"a b\" or [\"a\", \"b\"]", L->path, i);
        }
    }
    bytes_free(&tmp);
    return rc;
}

static int load_model(loader *L, tokenizer *t, json_object *root, json_object *added) {
    json_object *model = member(root, "model");
    if (!model || !json_object_is_type(model, json_type_object)) return fail(L->err, "%s: model: missing", L->path);
    const char *type = type_of(model);
    if (!type) return fail(L->err, "%s: model.type: missing", L->path);
    if (strcmp(type, "BPE")) return fail(L->err, "%s: model.type: unsupported model type \"%s\" (only BPE)", L->path, type);
    if (member(model, "continuing_subword_prefix") || member(model, "end_of_word_suffix"))
        return fail(L->err, "%s: model: continuing_subword_prefix / end_of_word_suffix are unsupported", L->path);
    json_object *dropout = member(model, "dropout");
    if (dropout && json_object_get_double(dropout) > 0)
        return fail(L->err, "%s: model.dropout: BPE dropout is unsupported", L->path);
    if (get_bool(L, model, "model", "ignore_merges", false, &t->ignore_merges) ||
        get_bool(L, model, "model", "byte_fallback", false, &t->byte_fallback) ||
        get_bool(L, model, "model", "fuse_unk", false, &t->fuse_unk)) return -1;

    // The vocab: ids decide the size of the id -> piece table, so check them before allocating.
    json_object *vocab = member(model, "vocab");
    if (!vocab || !json_object_is_type(vocab, json_type_object)) return fail(L->err, "%s: model.vocab: missing or not an object", L->path);
    int64_t max_id = -1;
    json_object_object_foreach(vocab, key0, val0) {
        if (!json_object_is_type(val0, json_type_int)) return fail(L->err, "%s: model.vocab[\"%s\"]: expected an integer id", L->path, key0);
        int64_t id = json_object_get_int64(val0);
        if (id < 0 || id >= TOKENIZER_MAX_ID) return fail(L->err, "%s: model.vocab[\"%s\"]: id %lld out of range", L->path, key0, (long long)id);
        if (id > max_id) max_id = id;
    }
    size_t n_added = added ? json_object_array_length(added) : 0;
    for (size_t i = 0; i < n_added; i++) {
        int64_t id = -1;
        if (get_int(L, json_object_array_get_idx(added, i), "added_tokens[]", "id", -1, &id)) return -1;
        if (id < 0 || id >= TOKENIZER_MAX_ID) return fail(L->err, "%s: added_tokens[%zu].id: missing or out of range", L->path, i);
        if (id > max_id) max_id = id;
    }
    // The id -> piece table has max_id + 1 entries: a tiny file naming id 16777215 would make
    // it 200 MB. Real vocabularies are dense (Llama 3: 128000 + 256 ids, no gap), so ids far
    // beyond the number of tokens listed are refused.
    size_t listed = (size_t)json_object_object_length(vocab) + n_added;
    if (max_id >= 0 && (uint64_t)max_id >= 2 * (uint64_t)listed + 256)
        return fail(L->err, "%s: model.vocab: id %lld but only %zu tokens listed (ids must be dense)", L->path,
                    (long long)max_id, listed);
    t->n_ids = (int32_t)(max_id + 1);
    t->piece_off = xcalloc((size_t)t->n_ids, sizeof *t->piece_off);
    t->piece_len = xmalloc((size_t)t->n_ids * sizeof *t->piece_len);
    t->is_special = xcalloc((size_t)t->n_ids, 1);
    for (int32_t i = 0; i < t->n_ids; i++) t->piece_len[i] = -1;

    strmap_init(&t->vocab, (size_t)json_object_object_length(vocab));
    struct json_object_iterator it = json_object_iter_begin(vocab), end = json_object_iter_end(vocab);
    for (; !json_object_iter_equal(&it, &end); json_object_iter_next(&it)) {
        // json-c keys are NUL-terminated C strings; a key with an embedded NUL ("\u0000") is cut
        // there, which only affects a piece no text can produce.
        const char *key = json_object_iter_peek_name(&it);
        int32_t id = (int32_t)json_object_get_int64(json_object_iter_peek_value(&it));
        size_t n = strlen(key);
        if (t->piece_len[id] >= 0)
            return fail(L->err, "%s: model.vocab[\"%s\"]: id %d is also used by \"%.*s\"", L->path, key, id,
                        (int)t->piece_len[id], t->pieces.p + t->piece_off[id]);
        strmap_put(&t->vocab, key, n, id);
        set_piece(t, id, key, n);
    }
    if (t->vocab.n == 0) return fail(L->err, "%s: model.vocab: empty", L->path);

    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        t->byte_id[b] = strmap_get(&t->vocab, name, 6);
    }
    t->unk_id = -1;
    json_object *unk = member(model, "unk_token");
    if (unk) {
        if (!json_object_is_type(unk, json_type_string)) return fail(L->err, "%s: model.unk_token: expected a string", L->path);
        t->unk_id = strmap_get(&t->vocab, json_object_get_string(unk), (size_t)json_object_get_string_len(unk));
        if (t->unk_id < 0) return fail(L->err, "%s: model.unk_token: \"%s\" is not in the vocab", L->path, json_object_get_string(unk));
    }
    return load_merges(L, t, member(model, "merges"));
}

// ---------------------------------------------------------------------------- loading: added tokens
static int cmp_added(const void *pa, const void *pb) {
    const added_token *a = pa, *b = pb;
    uint8_t fa = a->len ? (uint8_t)a->text[0] : 0, fb = b->len ? (uint8_t)b->text[0] : 0;
    if (fa != fb) return fa < fb ? -1 : 1;
    if (a->len != b->len) return a->len > b->len ? -1 : 1;   // longest first: leftmost-longest match
    return 0;
}

static int load_added(loader *L, tokenizer *t, json_object *added) {
    if (!added) return 0;
    size_t n = json_object_array_length(added);
    t->added = xcalloc(n, sizeof *t->added);
    for (size_t i = 0; i < n; i++) {
        json_object *a = json_object_array_get_idx(added, i);
        char where[64];
        snprintf(where, sizeof where, "added_tokens[%zu]", i);
        const char *s = "";
        size_t len = 0;
        int64_t id = -1;
        bool special, lstrip, rstrip, single_word;
        if (get_string(L, a, where, "content", &s, &len) || get_int(L, a, where, "id", -1, &id) ||
            get_bool(L, a, where, "special", false, &special) || get_bool(L, a, where, "lstrip", false, &lstrip) ||
            get_bool(L, a, where, "rstrip", false, &rstrip) || get_bool(L, a, where, "single_word", false, &single_word))
            return -1;
        if (len == 0) return fail(L->err, "%s: %s.content: empty", L->path, where);
        if (lstrip || rstrip || single_word)
            return fail(L->err, "%s: %s: lstrip/rstrip/single_word are unsupported", L->path, where);
        t->added[t->n_added++] = (added_token){dup_bytes(s, len), len, (int32_t)id, special};
        set_piece(t, (int32_t)id, s, len);
        t->is_special[id] = special;
    }
    qsort(t->added, t->n_added, sizeof *t->added, cmp_added);
    size_t k = 0;
    for (int b = 0; b <= 256; b++) {
        while (k < t->n_added && (uint8_t)t->added[k].text[0] < b) k++;
        t->added_first[b] = k;
    }
    return 0;
}

// ---------------------------------------------------------------------------- loading: pipeline
static int load_normalizer(loader *L, tokenizer *t, json_object *o, const char *where) {
    if (!o) return 0;
    const char *type = type_of(o);
    if (!type) return fail(L->err, "%s: %s.type: missing", L->path, where);
    if (!strcmp(type, "Sequence")) {
        json_object *list = member(o, "normalizers");
        if (!list || !json_object_is_type(list, json_type_array)) return fail(L->err, "%s: %s.normalizers: missing", L->path, where);
        for (size_t i = 0; i < json_object_array_length(list); i++) {
            char sub[128];
            snprintf(sub, sizeof sub, "%s.normalizers[%zu]", where, i);
            if (load_normalizer(L, t, json_object_array_get_idx(list, i), sub)) return -1;
        }
        return 0;
    }
    norm_step st = {0};
    const char *a, *b = "";
    size_t na, nb = 0;
    if (!strcmp(type, "Prepend")) {
        st.kind = NORM_PREPEND;
        if (get_string(L, o, where, "prepend", &a, &na)) return -1;
    } else if (!strcmp(type, "Replace")) {
        st.kind = NORM_REPLACE;
        if (get_pattern(L, o, where, &a, &na) || get_string(L, o, where, "content", &b, &nb)) return -1;
        if (na == 0) return fail(L->err, "%s: %s.pattern: empty", L->path, where);
    } else {
        return fail(L->err, "%s: %s: unsupported normalizer %s", L->path, where, type);
    }
    st.from = dup_bytes(a, na); st.from_len = na;
    st.to = dup_bytes(b, nb); st.to_len = nb;
    t->norm = xrealloc(t->norm, (t->n_norm + 1) * sizeof *t->norm);
    t->norm[t->n_norm++] = st;
    return 0;
}

// The GPT-2 pre-tokenizer regex, used by ByteLevel with use_regex: true.
static const char GPT2_REGEX[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static int push_pre(tokenizer *t, pre_step st) {
    t->pre = xrealloc(t->pre, (t->n_pre + 1) * sizeof *t->pre);
    t->pre[t->n_pre++] = st;
    return 0;
}

// Metaspace's replacement character and prepend scheme, shared by pre-tokenizer and decoder.
static int load_metaspace(loader *L, json_object *o, const char *where, char *repl, size_t *repl_len, prepend_scheme *ps) {
    const char *r = "";
    size_t n = 0;
    if (get_string(L, o, where, "replacement", &r, &n)) return -1;
    if (n == 0 || n > 4 || utf8_len(r, n) != n) return fail(L->err, "%s: %s.replacement: expected one character", L->path, where);
    memcpy(repl, r, n);
    *repl_len = n;
    json_object *scheme = member(o, "prepend_scheme");
    if (scheme) {
        const char *s = json_object_get_string(scheme);
        if (!strcmp(s, "always")) *ps = PREPEND_ALWAYS;
        else if (!strcmp(s, "first")) *ps = PREPEND_FIRST;
        else if (!strcmp(s, "never")) *ps = PREPEND_NEVER;
        else return fail(L->err, "%s: %s.prepend_scheme: unknown value \"%s\"", L->path, where, s);
    } else {   // older files: add_prefix_space
        bool aps;
        if (get_bool(L, o, where, "add_prefix_space", true, &aps)) return -1;
        *ps = aps ? PREPEND_ALWAYS : PREPEND_NEVER;
    }
    return 0;
}

static int load_pre_tokenizer(loader *L, tokenizer *t, json_object *o, const char *where) {
    if (!o) return 0;
    const char *type = type_of(o);
    if (!type) return fail(L->err, "%s: %s.type: missing", L->path, where);
    pre_step st = {0};
    if (!strcmp(type, "Sequence")) {
        json_object *list = member(o, "pretokenizers");
        if (!list || !json_object_is_type(list, json_type_array)) return fail(L->err, "%s: %s.pretokenizers: missing", L->path, where);
        for (size_t i = 0; i < json_object_array_length(list); i++) {
            char sub[128];
            snprintf(sub, sizeof sub, "%s.pretokenizers[%zu]", where, i);
            if (load_pre_tokenizer(L, t, json_object_array_get_idx(list, i), sub)) return -1;
        }
        return 0;
    } else if (!strcmp(type, "Split")) {
        st.kind = PRE_SPLIT;
        json_object *p = member(o, "pattern");
        const char *s = "", *behavior = "";
        size_t n = 0, nb = 0;
        bool invert = false;
        if (get_string(L, o, where, "behavior", &behavior, &nb) || get_bool(L, o, where, "invert", false, &invert)) return -1;
        if (!strcmp(behavior, "Removed")) st.removed = true;
        else if (strcmp(behavior, "Isolated")) return fail(L->err, "%s: %s.behavior: unsupported split behavior %s", L->path, where, behavior);
        if (invert) return fail(L->err, "%s: %s.invert: true is unsupported", L->path, where);
        if (p && member(p, "Regex")) {
            if (get_string(L, p, where, "Regex", &s, &n)) return -1;
            if (!(st.re = compile_regex(L, where, s, n))) return -1;
        } else if (p && member(p, "String")) {   // a literal: quote it for PCRE2
            if (get_string(L, p, where, "String", &s, &n)) return -1;
            bytes q = {0};
            bytes_put(&q, "\\Q", 2); bytes_put(&q, s, n); bytes_put(&q, "\\E", 2);
            st.re = compile_regex(L, where, q.p, q.len);
            bytes_free(&q);
            if (!st.re) return -1;
        } else {
            return fail(L->err, "%s: %s.pattern: expected Regex or String", L->path, where);
        }
    } else if (!strcmp(type, "ByteLevel")) {
        st.kind = PRE_BYTELEVEL;
        bool use_regex;
        if (get_bool(L, o, where, "add_prefix_space", false, &st.add_prefix_space) ||
            get_bool(L, o, where, "use_regex", true, &use_regex)) return -1;
        if (use_regex && !(st.re = compile_regex(L, where, GPT2_REGEX, sizeof GPT2_REGEX - 1))) return -1;
    } else if (!strcmp(type, "Metaspace")) {
        st.kind = PRE_METASPACE;
        if (load_metaspace(L, o, where, st.repl, &st.repl_len, &st.prepend) ||
            get_bool(L, o, where, "split", true, &st.split)) return -1;
    } else {
        return fail(L->err, "%s: %s: unsupported pre_tokenizer %s", L->path, where, type);
    }
    return push_pre(t, st);
}

static int load_decoder(loader *L, tokenizer *t, json_object *o, const char *where) {
    if (!o) return 0;
    const char *type = type_of(o);
    if (!type) return fail(L->err, "%s: %s.type: missing", L->path, where);
    t->has_decoder = true;
    if (!strcmp(type, "Sequence")) {
        json_object *list = member(o, "decoders");
        if (!list || !json_object_is_type(list, json_type_array)) return fail(L->err, "%s: %s.decoders: missing", L->path, where);
        for (size_t i = 0; i < json_object_array_length(list); i++) {
            char sub[128];
            snprintf(sub, sizeof sub, "%s.decoders[%zu]", where, i);
            if (load_decoder(L, t, json_object_array_get_idx(list, i), sub)) return -1;
        }
        return 0;
    }
    dec_step st = {0};
    const char *a = "", *b = "";
    size_t na = 0, nb = 0;
    char repl[8];
    if (!strcmp(type, "ByteLevel")) st.kind = DEC_BYTELEVEL;
    else if (!strcmp(type, "ByteFallback")) st.kind = DEC_BYTEFALLBACK;
    else if (!strcmp(type, "Fuse")) st.kind = DEC_FUSE;
    else if (!strcmp(type, "Replace")) {
        st.kind = DEC_REPLACE;
        if (get_pattern(L, o, where, &a, &na) || get_string(L, o, where, "content", &b, &nb)) return -1;
        if (na == 0) return fail(L->err, "%s: %s.pattern: empty", L->path, where);
    } else if (!strcmp(type, "Strip")) {
        st.kind = DEC_STRIP;
        if (get_string(L, o, where, "content", &a, &na) || get_int(L, o, where, "start", 0, &st.start) ||
            get_int(L, o, where, "stop", 0, &st.stop)) return -1;
        if (na == 0 || utf8_len(a, na) != na) return fail(L->err, "%s: %s.content: expected one character", L->path, where);
        if (st.start < 0 || st.stop < 0) return fail(L->err, "%s: %s: start/stop must not be negative", L->path, where);
    } else if (!strcmp(type, "Metaspace")) {
        st.kind = DEC_METASPACE;   // replacement -> " ", then the first token's leading space goes
        prepend_scheme ps;
        if (load_metaspace(L, o, where, repl, &na, &ps)) return -1;
        a = repl; b = " "; nb = 1;
        st.strip_first = ps != PREPEND_NEVER;
    } else {
        return fail(L->err, "%s: %s: unsupported decoder %s", L->path, where, type);
    }
    st.from = dup_bytes(a, na); st.from_len = na;
    st.to = dup_bytes(b, nb); st.to_len = nb;
    t->dec = xrealloc(t->dec, (t->n_dec + 1) * sizeof *t->dec);
    t->dec[t->n_dec++] = st;
    return 0;
}

// TemplateProcessing: only the "single" template matters for one prompt.
static int load_template(loader *L, tokenizer *t, json_object *o, const char *where) {
    json_object *single = member(o, "single"), *specials = member(o, "special_tokens");
    if (!single || !json_object_is_type(single, json_type_array)) return fail(L->err, "%s: %s.single: missing", L->path, where);
    if (t->tmpl_before || t->tmpl_after) return fail(L->err, "%s: %s: more than one TemplateProcessing", L->path, where);
    size_t n = json_object_array_length(single);
    int32_t **dst = &t->tmpl_before;
    size_t *ndst = &t->n_before;
    bool seen_a = false;
    t->tmpl_before = xmalloc(1); t->tmpl_after = xmalloc(1);
    for (size_t i = 0; i < n; i++) {
        json_object *item = json_object_array_get_idx(single, i), *sp = member(item, "SpecialToken"), *seq = member(item, "Sequence");
        if (seq) {
            if (seen_a) return fail(L->err, "%s: %s.single: more than one sequence", L->path, where);
            seen_a = true;
            dst = &t->tmpl_after; ndst = &t->n_after;
            continue;
        }
        const char *name = "";
        size_t nn = 0;
        char sub[128];
        snprintf(sub, sizeof sub, "%s.single[%zu].SpecialToken", where, i);
        if (!sp) return fail(L->err, "%s: %s.single[%zu]: expected SpecialToken or Sequence", L->path, where, i);
        if (get_string(L, sp, sub, "id", &name, &nn)) return -1;
        json_object *def = member(specials, name), *ids = member(def, "ids");
        if (!ids || !json_object_is_type(ids, json_type_array))
            return fail(L->err, "%s: %s.special_tokens: \"%s\" missing or has no ids", L->path, where, name);
        for (size_t k = 0; k < json_object_array_length(ids); k++) {
            json_object *v = json_object_array_get_idx(ids, k);
            int64_t id = json_object_is_type(v, json_type_int) ? json_object_get_int64(v) : -1;
            if (id < 0 || id >= t->n_ids || t->piece_len[id] < 0)
                return fail(L->err, "%s: %s.special_tokens[\"%s\"].ids[%zu]: not a token id", L->path, where, name, k);
            *dst = xrealloc(*dst, (*ndst + 1) * sizeof **dst);
            (*dst)[(*ndst)++] = (int32_t)id;
        }
    }
    if (!seen_a) return fail(L->err, "%s: %s.single: no Sequence", L->path, where);
    return 0;
}

static int load_post_processor(loader *L, tokenizer *t, json_object *o, const char *where) {
    if (!o) return 0;
    const char *type = type_of(o);
    if (!type) return fail(L->err, "%s: %s.type: missing", L->path, where);
    if (!strcmp(type, "Sequence")) {
        json_object *list = member(o, "processors");
        if (!list || !json_object_is_type(list, json_type_array)) return fail(L->err, "%s: %s.processors: missing", L->path, where);
        for (size_t i = 0; i < json_object_array_length(list); i++) {
            char sub[128];
            snprintf(sub, sizeof sub, "%s.processors[%zu]", where, i);
            if (load_post_processor(L, t, json_object_array_get_idx(list, i), sub)) return -1;
        }
        return 0;
    }
    if (!strcmp(type, "ByteLevel")) return 0;   // only adjusts offsets, which we do not return
    if (!strcmp(type, "TemplateProcessing")) return load_template(L, t, o, where);
    return fail(L->err, "%s: %s: unsupported post_processor %s", L->path, where, type);
}

static int load_json(loader *L, tokenizer *t, json_object *root) {
    if (!json_object_is_type(root, json_type_object)) return fail(L->err, "%s: expected a JSON object", L->path);
    json_object *added = member(root, "added_tokens");
    if (added && !json_object_is_type(added, json_type_array)) return fail(L->err, "%s: added_tokens: expected an array", L->path);
    init_byte_map(t);
    if (load_model(L, t, root, added) || load_added(L, t, added) ||
        load_normalizer(L, t, member(root, "normalizer"), "normalizer") ||
        load_pre_tokenizer(L, t, member(root, "pre_tokenizer"), "pre_tokenizer") ||
        load_decoder(L, t, member(root, "decoder"), "decoder") ||
        load_post_processor(L, t, member(root, "post_processor"), "post_processor")) return -1;
    return 0;
}

tokenizer *tokenizer_load(const char *path, llamoe_err *err) {
    size_t len;
    char *text = read_text_file(path, TOKENIZER_MAX_FILE_BYTES, &len, err);
    if (!text) return NULL;
    tokenizer *t = tokenizer_load_mem(path, text, len, err);
    free(text);
    return t;
}

tokenizer *tokenizer_load_mem(const char *path, const char *text, size_t len, llamoe_err *err) {
    if (len > INT32_MAX) { fail(err, "%s: file too large", path); return NULL; }
    json_tokener *tok = json_tokener_new();
    CHECK(tok);
    json_object *root = json_tokener_parse_ex(tok, text, (int)len);
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    size_t at = json_tokener_get_parse_end(tok);
    json_tokener_free(tok);
    while (root && at < len && (text[at] == ' ' || text[at] == '\n' || text[at] == '\r' || text[at] == '\t')) at++;
    if (root && jerr == json_tokener_success && at < len) {
        fail(err, "%s: invalid JSON: unexpected data after the top-level value at byte %zu", path, at);
        json_object_put(root);
        return NULL;
    }
    if (!root || jerr != json_tokener_success) {
        if (jerr == json_tokener_continue) fail(err, "%s: invalid JSON: unexpected end of file", path);
        else fail(err, "%s: invalid JSON at byte %zu: %s", path, at, json_tokener_error_desc(jerr));
        json_object_put(root);
        return NULL;
    }
    tokenizer *t = xcalloc(1, sizeof *t);
    loader L = {path, err};
    int rc = load_json(&L, t, root);
    json_object_put(root);
    if (rc) { tokenizer_free(t); return NULL; }
    return t;
}

void tokenizer_free(tokenizer *t) {
    if (!t) return;
    strmap_free(&t->vocab);
    free(t->merges.slot);
    bytes_free(&t->pieces);
    free(t->piece_off); free(t->piece_len); free(t->is_special);
    for (size_t i = 0; i < t->n_added; i++) free(t->added[i].text);
    free(t->added);
    for (size_t i = 0; i < t->n_norm; i++) { free(t->norm[i].from); free(t->norm[i].to); }
    free(t->norm);
    for (size_t i = 0; i < t->n_pre; i++) pcre2_code_free(t->pre[i].re);
    free(t->pre);
    for (size_t i = 0; i < t->n_dec; i++) { free(t->dec[i].from); free(t->dec[i].to); }
    free(t->dec);
    free(t->tmpl_before); free(t->tmpl_after);
    free(t);
}

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
static void replace_all(bytes *out, const char *s, size_t n, const char *from, size_t nf, const char *to, size_t nt) {
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

// ---------------------------------------------------------------------------- decoding
typedef struct { strlist a, b; bytes raw; } decoder_scratch;

static void decoder_scratch_free(decoder_scratch *d) { strlist_free(&d->a); strlist_free(&d->b); bytes_free(&d->raw); }

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
static void decode_raw(const tokenizer *t, const int32_t *ids, size_t n, decoder_scratch *d) {
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

static bool valid_id(const tokenizer *t, int32_t id) { return id >= 0 && id < t->n_ids && t->piece_len[id] >= 0; }

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

// ---------------------------------------------------------------------------- streaming decode
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
