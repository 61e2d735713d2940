// Reading tokenizer.json: the BPE model (vocab, merges, byte fallback, unk), the added tokens,
// and the pipeline components (normalizer, pre-tokenizer, decoder, post-processor), one function
// per section, each Sequence flattened into consecutive steps; then loading and freeing the whole.
// Every error names the file and the field (docs/tokenizer.md lists what is supported).
#include "runtime/tokenizer_internal.h"
#include "runtime/json_read.h"


#define TOKENIZER_MAX_FILE_BYTES ((size_t)1 << 30)
#define TOKENIZER_MAX_ID ((int64_t)1 << 24)   // larger ids in a file are an error, not an allocation

// ---------------------------------------------------------------------------- loading: helpers
typedef struct { const char *path; llamoe_err *err; } loader;

static int get_string(loader *L, json_object *o, const char *where, const char *key, const char **s, size_t *n) {
    json_object *v = json_read_member(o, key);
    if (!v) return fail(L->err, "%s: %s.%s: missing", L->path, where, key);
    if (!json_object_is_type(v, json_type_string)) return fail(L->err, "%s: %s.%s: expected a string", L->path, where, key);
    *s = json_object_get_string(v);
    *n = (size_t)json_object_get_string_len(v);
    return 0;
}

// Optional boolean: def when absent.
static int get_bool(loader *L, json_object *o, const char *where, const char *key, bool def, bool *out) {
    json_object *v = json_read_member(o, key);
    if (!v) { *out = def; return 0; }
    if (!json_object_is_type(v, json_type_boolean)) return fail(L->err, "%s: %s.%s: expected true or false", L->path, where, key);
    *out = json_object_get_boolean(v);
    return 0;
}

static int get_int(loader *L, json_object *o, const char *where, const char *key, int64_t def, int64_t *out) {
    json_object *v = json_read_member(o, key);
    if (!v) { *out = def; return 0; }
    if (!json_object_is_type(v, json_type_int)) return fail(L->err, "%s: %s.%s: expected an integer", L->path, where, key);
    *out = json_object_get_int64(v);
    return 0;
}

static const char *type_of(json_object *o) {
    json_object *t = json_read_member(o, "type");
    return t && json_object_is_type(t, json_type_string) ? json_object_get_string(t) : NULL;
}

// Replace patterns are {"String": s}; {"Regex": r} is not supported (no file we target uses it).
static int get_pattern(loader *L, json_object *o, const char *where, const char **s, size_t *n) {
    json_object *p = json_read_member(o, "pattern");
    if (!p || !json_object_is_type(p, json_type_object)) return fail(L->err, "%s: %s.pattern: missing", L->path, where);
    if (json_read_member(p, "String")) return get_string(L, p, where, "String", s, n);
    if (json_read_member(p, "Regex")) return fail(L->err, "%s: %s.pattern: Regex patterns are unsupported here", L->path, where);
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
    json_object *model = json_read_member(root, "model");
    if (!model || !json_object_is_type(model, json_type_object)) return fail(L->err, "%s: model: missing", L->path);
    const char *type = type_of(model);
    if (!type) return fail(L->err, "%s: model.type: missing", L->path);
    if (strcmp(type, "BPE")) return fail(L->err, "%s: model.type: unsupported model type \"%s\" (only BPE)", L->path, type);
    if (json_read_member(model, "continuing_subword_prefix") || json_read_member(model, "end_of_word_suffix"))
        return fail(L->err, "%s: model: continuing_subword_prefix / end_of_word_suffix are unsupported", L->path);
    json_object *dropout = json_read_member(model, "dropout");
    if (dropout && json_object_get_double(dropout) > 0)
        return fail(L->err, "%s: model.dropout: BPE dropout is unsupported", L->path);
    if (get_bool(L, model, "model", "ignore_merges", false, &t->ignore_merges) ||
        get_bool(L, model, "model", "byte_fallback", false, &t->byte_fallback) ||
        get_bool(L, model, "model", "fuse_unk", false, &t->fuse_unk)) return -1;

    // The vocab: ids decide the size of the id -> piece table, so check them before allocating.
    json_object *vocab = json_read_member(model, "vocab");
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
    json_object *unk = json_read_member(model, "unk_token");
    if (unk) {
        if (!json_object_is_type(unk, json_type_string)) return fail(L->err, "%s: model.unk_token: expected a string", L->path);
        t->unk_id = strmap_get(&t->vocab, json_object_get_string(unk), (size_t)json_object_get_string_len(unk));
        if (t->unk_id < 0) return fail(L->err, "%s: model.unk_token: \"%s\" is not in the vocab", L->path, json_object_get_string(unk));
    }
    return load_merges(L, t, json_read_member(model, "merges"));
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
        bool special = false, lstrip = false, rstrip = false, single_word = false;
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
// A "Sequence" step: each element of o[key] loaded by fn, named where.key[i] in errors.
typedef int (*load_step_fn)(loader *, tokenizer *, json_object *, const char *);
static int load_sequence(loader *L, tokenizer *t, json_object *o, const char *where, const char *key, load_step_fn fn) {
    json_object *list = json_read_member(o, key);
    if (!list || !json_object_is_type(list, json_type_array)) return fail(L->err, "%s: %s.%s: missing", L->path, where, key);
    for (size_t i = 0; i < json_object_array_length(list); i++) {
        char sub[128];
        snprintf(sub, sizeof sub, "%s.%s[%zu]", where, key, i);
        if (fn(L, t, json_object_array_get_idx(list, i), sub)) return -1;
    }
    return 0;
}

static int load_normalizer(loader *L, tokenizer *t, json_object *o, const char *where) {
    if (!o) return 0;
    const char *type = type_of(o);
    if (!type) return fail(L->err, "%s: %s.type: missing", L->path, where);
    if (!strcmp(type, "Sequence")) {
        return load_sequence(L, t, o, where, "normalizers", load_normalizer);
    }
    norm_step st = {0};
    const char *a = "", *b = "";
    size_t na = 0, nb = 0;
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
    json_object *scheme = json_read_member(o, "prepend_scheme");
    if (scheme) {
        const char *s = json_object_get_string(scheme);
        if (!strcmp(s, "always")) *ps = PREPEND_ALWAYS;
        else if (!strcmp(s, "first")) *ps = PREPEND_FIRST;
        else if (!strcmp(s, "never")) *ps = PREPEND_NEVER;
        else return fail(L->err, "%s: %s.prepend_scheme: unknown value \"%s\"", L->path, where, s);
    } else {   // older files: add_prefix_space
        bool aps = false;
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
        return load_sequence(L, t, o, where, "pretokenizers", load_pre_tokenizer);
    } else if (!strcmp(type, "Split")) {
        st.kind = PRE_SPLIT;
        json_object *p = json_read_member(o, "pattern");
        const char *s = "", *behavior = "";
        size_t n = 0, nb = 0;
        bool invert = false;
        if (get_string(L, o, where, "behavior", &behavior, &nb) || get_bool(L, o, where, "invert", false, &invert)) return -1;
        if (!strcmp(behavior, "Removed")) st.removed = true;
        else if (strcmp(behavior, "Isolated")) return fail(L->err, "%s: %s.behavior: unsupported split behavior %s", L->path, where, behavior);
        if (invert) return fail(L->err, "%s: %s.invert: true is unsupported", L->path, where);
        if (p && json_read_member(p, "Regex")) {
            if (get_string(L, p, where, "Regex", &s, &n)) return -1;
            if (!(st.re = compile_regex(L, where, s, n))) return -1;
        } else if (p && json_read_member(p, "String")) {   // a literal: quote it for PCRE2
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
        bool use_regex = false;
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
        return load_sequence(L, t, o, where, "decoders", load_decoder);
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
    json_object *single = json_read_member(o, "single"), *specials = json_read_member(o, "special_tokens");
    if (!single || !json_object_is_type(single, json_type_array)) return fail(L->err, "%s: %s.single: missing", L->path, where);
    if (t->tmpl_before || t->tmpl_after) return fail(L->err, "%s: %s: more than one TemplateProcessing", L->path, where);
    size_t n = json_object_array_length(single);
    int32_t **dst = &t->tmpl_before;
    size_t *ndst = &t->n_before;
    bool seen_a = false;
    t->tmpl_before = xmalloc(1); t->tmpl_after = xmalloc(1);
    for (size_t i = 0; i < n; i++) {
        json_object *item = json_object_array_get_idx(single, i), *sp = json_read_member(item, "SpecialToken"), *seq = json_read_member(item, "Sequence");
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
        json_object *def = json_read_member(specials, name), *ids = json_read_member(def, "ids");
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
        return load_sequence(L, t, o, where, "processors", load_post_processor);
    }
    if (!strcmp(type, "ByteLevel")) return 0;   // only adjusts offsets, which we do not return
    if (!strcmp(type, "TemplateProcessing")) return load_template(L, t, o, where);
    return fail(L->err, "%s: %s: unsupported post_processor %s", L->path, where, type);
}

static int load_json(loader *L, tokenizer *t, json_object *root) {
    if (!json_object_is_type(root, json_type_object)) return fail(L->err, "%s: expected a JSON object", L->path);
    json_object *added = json_read_member(root, "added_tokens");
    if (added && !json_object_is_type(added, json_type_array)) return fail(L->err, "%s: added_tokens: expected an array", L->path);
    init_byte_map(t);
    if (load_model(L, t, root, added) || load_added(L, t, added) ||
        load_normalizer(L, t, json_read_member(root, "normalizer"), "normalizer") ||
        load_pre_tokenizer(L, t, json_read_member(root, "pre_tokenizer"), "pre_tokenizer") ||
        load_decoder(L, t, json_read_member(root, "decoder"), "decoder") ||
        load_post_processor(L, t, json_read_member(root, "post_processor"), "post_processor")) return -1;
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
