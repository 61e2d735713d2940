// Tokenizer test, driven by the reference vectors next to each model:
//   models/llama3-tokenizer/cases.json    ids from transformers.js, tiktoken and @lenml/tokenizers
//   models/stories260k/tokenizer_cases.json  ids from transformers.js, checked against llama2.c
// plus decode round trips, streaming decode against whole decode, and bad input files.
// Usage: test_tokenizer <source dir>. The Llama 3 tokenizer (9 MB) is looked for in the source
// tree, then in $LLAMOE_LLAMA3_TOKENIZER (a directory), then in ../shared/models; when none has
// it, its checks are reported as skipped.
#include "runtime/tokenizer.h"

#include <json-c/json.h>
#include <stdarg.h>
#include <stdbool.h>
#include <string.h>
#include <unistd.h>

static int n_passed, n_failed, n_skipped;

__attribute__((format(printf, 2, 3)))
static bool check(bool ok, const char *fmt, ...) {
    if (ok) { n_passed++; return true; }
    n_failed++;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "FAIL: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    return false;
}

// A short printable form of a case text for failure messages.
static const char *label(const char *text) {
    static char buf[48];
    size_t k = 0;
    for (size_t i = 0; text[i] && k + 4 < sizeof buf; i++) buf[k++] = (text[i] == '\n' || text[i] == '\r' || text[i] == '\t') ? ' ' : text[i];
    buf[k] = 0;
    return buf;
}

static bool valid_utf8(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        size_t len = u[i] < 0x80 ? 1 : (u[i] >> 5) == 6 ? 2 : (u[i] >> 4) == 14 ? 3 : (u[i] >> 3) == 30 ? 4 : 0;
        if (!len || i + len > n) return false;
        for (size_t k = 1; k < len; k++) if ((u[i + k] & 0xC0) != 0x80) return false;
        i += len;
    }
    return true;
}

static int32_t *json_ids(json_object *arr, int *n) {
    *n = (int)json_object_array_length(arr);
    int32_t *ids = xmalloc((size_t)(*n ? *n : 1) * sizeof *ids);
    for (int i = 0; i < *n; i++) ids[i] = (int32_t)json_object_get_int(json_object_array_get_idx(arr, (size_t)i));
    return ids;
}

// ---------------------------------------------------------------------------- checks
static void check_encode(const tokenizer *t, const char *what, const char *text, size_t len, int add_special,
                         int parse_special, const int32_t *want, int n_want) {
    int32_t *ids;
    int n;
    llamoe_err err = {{0}};
    if (!check(tokenizer_encode(t, text, len, add_special, parse_special, &ids, &n, &err) == 0,
               "%s \"%s\": encode failed: %s", what, label(text), err.msg)) return;
    int at = 0;
    while (at < n && at < n_want && ids[at] == want[at]) at++;
    check(n == n_want && at == n, "%s \"%s\": %d ids, want %d; first difference at %d (got %d, want %d)", what,
          label(text), n, n_want, at, at < n ? ids[at] : -1, at < n_want ? want[at] : -1);
    free(ids);
}

static void check_decode(const tokenizer *t, const char *what, const int32_t *ids, int n, const char *want, size_t want_len) {
    char *text;
    size_t len;
    llamoe_err err = {{0}};
    if (!check(tokenizer_decode(t, ids, n, &text, &len, &err) == 0, "%s: decode failed: %s", what, err.msg)) return;
    check(len == want_len && !memcmp(text, want, len), "%s \"%s\": decode gives \"%s\"", what, label(want), label(text));
    free(text);
}

// Pushes ids one at a time; the pieces must be whole characters and add up to the decode.
// Returns how many pushes held bytes back (a character split across tokens).
static int check_stream(const tokenizer *t, const char *what, const int32_t *ids, int n) {
    char *whole;
    size_t whole_len;
    llamoe_err err = {{0}};
    if (tokenizer_decode(t, ids, n, &whole, &whole_len, &err)) { check(false, "%s: decode failed: %s", what, err.msg); return 0; }
    tokenizer_stream *s = tokenizer_stream_new(t);
    char *acc = xmalloc(whole_len + 64);
    size_t acc_len = 0;
    int held = 0;
    bool pieces_ok = true, fits = true;
    for (int i = 0; i < n; i++) {
        size_t len;
        const char *p = tokenizer_stream_push(s, ids[i], &len);
        if (!p) { pieces_ok = false; break; }
        if (len == 0) held++;
        if (!valid_utf8(p, len)) pieces_ok = false;
        if (acc_len + len > whole_len) { fits = false; break; }
        memcpy(acc + acc_len, p, len);
        acc_len += len;
    }
    size_t len;
    const char *p = tokenizer_stream_flush(s, &len);
    if (fits && acc_len + len <= whole_len) { memcpy(acc + acc_len, p, len); acc_len += len; } else fits = false;
    check(pieces_ok && fits && acc_len == whole_len && !memcmp(acc, whole, whole_len),
          "%s \"%s\": streamed decode differs from whole decode (or emitted half a character)", what, label(whole));
    tokenizer_stream_free(s);
    free(acc);
    free(whole);
    return held;
}

static bool has_special_marker(const char *text) { return strstr(text, "<|") || strstr(text, "<s>") || strstr(text, "</s>") || strstr(text, "<unk>"); }

// ---------------------------------------------------------------------------- variants
static char tmpdir[256];

// Loads DIR/tokenizer.json after edit() has changed its JSON: the same model with another
// pipeline, for components the bundled files do not use.
static tokenizer *load_variant(const char *path, const char *name, void (*edit)(json_object *root)) {
    json_object *root = json_object_from_file(path);
    CHECK(root);
    edit(root);
    char out[512];
    snprintf(out, sizeof out, "%s/%s.json", tmpdir, name);
    CHECK(json_object_to_file(out, root) == 0);
    json_object_put(root);
    llamoe_err err = {{0}};
    tokenizer *t = tokenizer_load(out, &err);
    check(t != NULL, "variant %s: %s", name, err.msg);
    unlink(out);
    return t;
}

// Llama 2 as newer transformers writes it: no normalizer, a Metaspace pre-tokenizer that
// prepends "▁" to the start of the text only, and a Metaspace decoder.
static void to_metaspace(json_object *root) {
    json_object_object_add(root, "normalizer", NULL);
    json_object *pre = json_tokener_parse("{\"type\": \"Metaspace\", \"replacement\": \"\u2581\", \"prepend_scheme\": \"first\", \"split\": false}");
    json_object_object_add(root, "pre_tokenizer", pre);
    json_object *dec = json_tokener_parse("{\"type\": \"Sequence\", \"decoders\": [{\"type\": \"ByteFallback\"}, {\"type\": \"Fuse\"}, "
                                          "{\"type\": \"Metaspace\", \"replacement\": \"\u2581\", \"prepend_scheme\": \"first\", \"split\": false}]}");
    json_object_object_add(root, "decoder", dec);
}

// GPT-2 style: ByteLevel with its own regex instead of Split, and merges as [a, b] pairs.
static void to_gpt2(json_object *root) {
    json_object *pre = json_tokener_parse("{\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"use_regex\": true}");
    json_object_object_add(root, "pre_tokenizer", pre);
    json_object *model, *merges;
    json_object_object_get_ex(root, "model", &model);
    json_object_object_get_ex(model, "merges", &merges);
    for (size_t i = 0; i < json_object_array_length(merges); i++) {
        const char *m = json_object_get_string(json_object_array_get_idx(merges, i));
        const char *sp = strchr(m, ' ');
        json_object *pair = json_object_new_array();
        json_object_array_add(pair, json_object_new_string_len(m, (int)(sp - m)));
        json_object_array_add(pair, json_object_new_string(sp + 1));
        json_object_array_put_idx(merges, i, pair);
    }
}

// ---------------------------------------------------------------------------- Llama 3
static void test_llama3(const char *dir) {
    char path[1200], cases_path[1200];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    snprintf(cases_path, sizeof cases_path, "%s/cases.json", dir);
    llamoe_err err = {{0}};
    double t0 = now_seconds();
    tokenizer *t = tokenizer_load(path, &err);
    if (!check(t != NULL, "llama3: load: %s", err.msg)) return;
    printf("llama3: loaded %s in %.3f s, vocab %d\n", path, now_seconds() - t0, tokenizer_vocab_size(t));
    check(tokenizer_vocab_size(t) == 128256, "llama3: vocab size %d, want 128256", tokenizer_vocab_size(t));
    check(tokenizer_bos_id(t) == 128000, "llama3: bos %d, want 128000", tokenizer_bos_id(t));
    check(tokenizer_token_id(t, "<|eot_id|>") == 128009, "llama3: <|eot_id|> id");
    check(tokenizer_is_special(t, 128009) && !tokenizer_is_special(t, 9906), "llama3: is_special");

    json_object *cases = json_object_from_file(cases_path);
    if (!check(cases && json_object_is_type(cases, json_type_array), "llama3: cannot read %s", cases_path)) { tokenizer_free(t); return; }
    int held = 0;
    size_t n_cases = json_object_array_length(cases);
    for (size_t c = 0; c < n_cases; c++) {
        json_object *cs = json_object_array_get_idx(cases, c), *v;
        json_object_object_get_ex(cs, "text", &v);
        const char *text = json_object_get_string(v);
        size_t len = (size_t)json_object_get_string_len(v);
        int n_bos, n_plain;
        json_object_object_get_ex(cs, "ids_with_bos", &v);
        int32_t *with_bos = json_ids(v, &n_bos);
        json_object_object_get_ex(cs, "ids_no_special", &v);
        int32_t *plain = json_ids(v, &n_plain);
        // cases.json: ids_no_special = add_special_tokens=false, special strings still matched.
        check_encode(t, "llama3 bos+special", text, len, 1, 1, with_bos, n_bos);
        check_encode(t, "llama3 no-bos", text, len, 0, 1, plain, n_plain);
        if (!has_special_marker(text))   // --no-special: no BOS, no matching; same ids here
            check_encode(t, "llama3 no-special", text, len, 0, 0, plain, n_plain);
        check_decode(t, "llama3 round trip", plain, n_plain, text, len);
        held += check_stream(t, "llama3 stream", with_bos, n_bos);
        free(with_bos);
        free(plain);
    }
    printf("llama3: %zu cases; %d streaming pushes held back part of a character\n", n_cases, held);
    check(held > 0, "llama3: no case split a character across tokens; the streaming check proved nothing");

    // Special strings as plain text: never a special id, and still lossless.
    const char *chat = "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>";
    int32_t *ids;
    int n;
    if (check(tokenizer_encode(t, chat, strlen(chat), 0, 0, &ids, &n, &err) == 0, "llama3 plain specials: %s", err.msg)) {
        bool none = true;
        for (int i = 0; i < n; i++) none = none && ids[i] < 128000;
        check(none && n > 10, "llama3 plain specials: got a special id or too few tokens (%d)", n);
        check_decode(t, "llama3 plain specials round trip", ids, n, chat, strlen(chat));
        free(ids);
    }
    // A 4-byte character streamed one byte token at a time: nothing until the last byte.
    const char *emoji = "\xF0\x9F\xA6\x99";   // U+1F999, the llama
    char piece[3] = {0};
    int32_t byte_ids[4];
    static const unsigned short stand_in[4] = {0x00F0, 0x0141, 0x00A6, 0x013B};   // GPT-2 map of F0 9F A6 99: "ðŁ¦Ļ"
    for (int i = 0; i < 4; i++) {
        unsigned short cp = stand_in[i];
        piece[0] = (char)(0xC0 | (cp >> 6)); piece[1] = (char)(0x80 | (cp & 0x3F)); piece[2] = 0;
        byte_ids[i] = tokenizer_token_id(t, piece);
    }
    tokenizer_stream *s = tokenizer_stream_new(t);
    size_t len;
    bool held_back = true;
    for (int i = 0; i < 3; i++) { const char *p = tokenizer_stream_push(s, byte_ids[i], &len); held_back = held_back && p && len == 0; }
    const char *p = tokenizer_stream_push(s, byte_ids[3], &len);
    check(held_back && p && len == 4 && !memcmp(p, emoji, 4), "llama3: byte tokens of U+1F999 not streamed as one character");
    tokenizer_stream_free(s);

    // GPT-2 ByteLevel regex + pair-form merges: same ids where both regexes split alike.
    tokenizer *g = load_variant(path, "gpt2", to_gpt2);
    if (g) {
        const char *fox = "The quick brown fox jumps over the lazy dog.";
        json_object *v;
        json_object_object_get_ex(json_object_array_get_idx(cases, 1), "text", &v);
        if (check(!strcmp(json_object_get_string(v), fox), "llama3: cases.json[1] is not the fox")) {
            json_object_object_get_ex(json_object_array_get_idx(cases, 1), "ids_no_special", &v);
            int32_t *want = json_ids(v, &n);
            check_encode(g, "llama3 gpt2-regex", fox, strlen(fox), 0, 0, want, n);
            check_decode(g, "llama3 gpt2-regex round trip", want, n, fox, strlen(fox));
            free(want);
        }
        tokenizer_free(g);
    }

    json_object_put(cases);
    tokenizer_free(t);
}

static const char *find_llama3(const char *src, char *buf, size_t cap) {
    snprintf(buf, cap, "%s/models/llama3-tokenizer", src);
    char probe[1100];
    snprintf(probe, sizeof probe, "%s/tokenizer.json", buf);
    if (file_exists(probe)) return buf;
    const char *env = getenv("LLAMOE_LLAMA3_TOKENIZER");
    if (env && *env) {
        snprintf(probe, sizeof probe, "%s/tokenizer.json", env);
        if (file_exists(probe)) return env;
    }
    snprintf(buf, cap, "%s/../shared/models/llama3-tokenizer", src);
    snprintf(probe, sizeof probe, "%s/tokenizer.json", buf);
    if (file_exists(probe)) return buf;
    return NULL;
}

// ---------------------------------------------------------------------------- stories260k
static void test_stories(const char *src) {
    char path[1024], cases_path[1024];
    snprintf(path, sizeof path, "%s/models/stories260k/tokenizer.json", src);
    snprintf(cases_path, sizeof cases_path, "%s/models/stories260k/tokenizer_cases.json", src);
    llamoe_err err = {{0}};
    tokenizer *t = tokenizer_load(path, &err);
    if (!check(t != NULL, "stories: load: %s", err.msg)) return;
    check(tokenizer_vocab_size(t) == 512 && tokenizer_bos_id(t) == 1, "stories: vocab %d bos %d", tokenizer_vocab_size(t), tokenizer_bos_id(t));

    json_object *root = json_object_from_file(cases_path), *cases = NULL;
    if (!check(root && json_object_object_get_ex(root, "cases", &cases), "stories: cannot read %s", cases_path)) { tokenizer_free(t); return; }
    int held = 0;
    size_t n_cases = json_object_array_length(cases);
    for (size_t c = 0; c < n_cases; c++) {
        json_object *cs = json_object_array_get_idx(cases, c), *v;
        json_object_object_get_ex(cs, "text", &v);
        const char *text = json_object_get_string(v);
        size_t len = (size_t)json_object_get_string_len(v);
        int n;
        json_object_object_get_ex(cs, "ids", &v);
        int32_t *want = json_ids(v, &n);   // with BOS
        check_encode(t, "stories", text, len, 1, 1, want, n);
        check_encode(t, "stories no-special", text, len, 0, 0, want + 1, n - 1);
        check_decode(t, "stories round trip", want + 1, n - 1, text, len);   // BOS would decode as "<s>"
        held += check_stream(t, "stories stream", want, n);
        held += check_stream(t, "stories stream no bos", want + 1, n - 1);
        free(want);
    }
    printf("stories260k: %zu cases; %d streaming pushes held back part of a character\n", n_cases, held);
    check(held > 0, "stories: no case split a character across byte-fallback tokens");

    // Byte fallback tokens of "€" one at a time, then a lone lead byte at the end.
    int32_t euro[3] = {tokenizer_token_id(t, "<0xE2>"), tokenizer_token_id(t, "<0x82>"), tokenizer_token_id(t, "<0xAC>")};
    tokenizer_stream *s = tokenizer_stream_new(t);
    size_t len;
    const char *p1 = tokenizer_stream_push(s, euro[0], &len);
    bool first_held = p1 && len == 0;
    tokenizer_stream_push(s, euro[1], &len);
    first_held = first_held && len == 0;
    const char *p = tokenizer_stream_push(s, euro[2], &len);
    check(first_held && p && len == 3 && !memcmp(p, "\xE2\x82\xAC", 3), "stories: <0xE2><0x82><0xAC> not streamed as one character");
    tokenizer_stream_push(s, euro[0], &len);
    p = tokenizer_stream_flush(s, &len);
    check(len == 3 && !memcmp(p, "\xEF\xBF\xBD", 3), "stories: unfinished character at flush is not U+FFFD");
    check(tokenizer_stream_push(s, 100000, &len) == NULL, "stories: stream push of an unknown id is not NULL");
    tokenizer_stream_free(s);

    // The leading space that Strip removes, across a stream: "▁Hello" first gives "Hello".
    int32_t *ids;
    int n;
    if (tokenizer_encode(t, " Hi  there", 10, 0, 0, &ids, &n, &err) == 0) {
        check_decode(t, "stories leading spaces", ids, n, " Hi  there", 10);
        check_stream(t, "stories leading spaces stream", ids, n);
        free(ids);
    }

    // Bad text and ids.
    check(tokenizer_encode(t, "ab\xFF", 3, 1, 1, &ids, &n, &err) == -1 && strstr(err.msg, "invalid UTF-8"), "stories: invalid UTF-8 accepted");
    check(tokenizer_encode(t, "ab\xE2\x82", 4, 1, 1, &ids, &n, &err) == -1 && strstr(err.msg, "invalid UTF-8"), "stories: truncated UTF-8 accepted");
    char *text;
    int32_t bad[2] = {5, 512};
    check(tokenizer_decode(t, bad, 2, &text, &len, &err) == -1 && strstr(err.msg, "512"), "stories: decode of id 512 not an error");
    int32_t lone[1] = {tokenizer_token_id(t, "<0xE2>")};
    check_decode(t, "stories lone byte", lone, 1, "\xEF\xBF\xBD", 3);

    // The Metaspace form of the same tokenizer gives the same ids and text.
    tokenizer *m = load_variant(path, "metaspace", to_metaspace);
    for (size_t c = 0; m && c < n_cases; c++) {
        json_object *cs = json_object_array_get_idx(cases, c), *v;
        json_object_object_get_ex(cs, "text", &v);
        const char *text = json_object_get_string(v);
        size_t tl = (size_t)json_object_get_string_len(v);
        json_object_object_get_ex(cs, "ids", &v);
        int32_t *want = json_ids(v, &n);
        check_encode(m, "stories metaspace", text, tl, 1, 1, want, n);
        check_decode(m, "stories metaspace round trip", want + 1, n - 1, text, tl);
        check_stream(m, "stories metaspace stream", want + 1, n - 1);
        free(want);
    }
    // "first": after a special token the text gets no "▁"; the Prepend normalizer gives one.
    int32_t want_first[3] = {1, tokenizer_token_id(t, "h"), tokenizer_token_id(t, "i")};
    if (m) check_encode(m, "stories metaspace after special", "<s>hi", 5, 0, 1, want_first, 3);
    tokenizer_free(m);

    json_object_put(root);
    tokenizer_free(t);
}

// ---------------------------------------------------------------------------- merge priority
// A hand-made BPE whose answers depend on the merge order: the lowest-ranked pair merges
// first, wherever it is. "abcd": (b, c) ranks before (a, b), so a bc d; merging by reversed
// rank or leftmost first would give ab cd.
static void test_merge_priority(void) {
    static const char json[] = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"c\": 2, \"d\": 3, "
                               "\"ab\": 4, \"bc\": 5, \"cd\": 6}, \"merges\": [\"b c\", \"a b\", \"c d\"]}}";
    llamoe_err err = {{0}};
    tokenizer *t = tokenizer_load_mem("merges.json", json, sizeof json - 1, &err);
    if (!check(t != NULL, "merge priority: load: %s", err.msg)) return;
    check_encode(t, "merge priority", "abcd", 4, 0, 0, (const int32_t[]){0, 5, 3}, 3);
    check_encode(t, "merge priority", "dabc", 4, 0, 0, (const int32_t[]){3, 0, 5}, 3);
    check_encode(t, "merge priority", "cdab", 4, 0, 0, (const int32_t[]){6, 4}, 2);
    tokenizer_free(t);
}

// ---------------------------------------------------------------------------- bad files

static void expect_load_error(const char *name, const char *content, size_t len, const char *want) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s.json", tmpdir, name);
    FILE *f = fopen(path, "wb");
    CHECK(f);
    fwrite(content, 1, len, f);
    fclose(f);
    llamoe_err err = {{0}};
    tokenizer *t = tokenizer_load(path, &err);
    check(!t && strstr(err.msg, path) && (!want || strstr(err.msg, want)) && !strchr(err.msg, '\n'),
          "bad file %s: want an error naming the file and \"%s\", got \"%s\"", name, want ? want : "", t ? "(loaded)" : err.msg);
    tokenizer_free(t);
    unlink(path);
}

#define BAD(name, json, want) expect_load_error(name, json, sizeof json - 1, want)

static void test_bad_files(const char *src) {
    BAD("empty", "", "invalid JSON");
    BAD("malformed", "{\"model\": {\"type\": \"BPE\",", "invalid JSON");
    BAD("garbage", "{} trailing", "invalid JSON");
    BAD("not_object", "[1, 2]", "expected a JSON object");
    BAD("no_model", "{}", "model");
    BAD("unknown_type", "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"a\": 0}}}", "unsupported model type \"WordPiece\"");
    BAD("missing_vocab", "{\"model\": {\"type\": \"BPE\", \"merges\": []}}", "model.vocab");
    BAD("vocab_not_int", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": \"x\"}, \"merges\": []}}", "model.vocab[\"a\"]");
    BAD("negative_id", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -1}, \"merges\": []}}", "out of range");
    BAD("huge_id", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 4000000000}, \"merges\": []}}", "out of range");
    BAD("duplicate_id", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 0}, \"merges\": []}}", "also used");
    BAD("missing_merges", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}}}", "model.merges");
    BAD("merge_unknown", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [\"a b\", \"a c\"]}}",
        "model.merges[1]: token \"c\" is not in the vocab");
    BAD("merge_result_unknown", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [[\"a\", \"b\"]]}}", "merged token \"ab\"");
    BAD("merge_shape", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a\"]}}", "model.merges[0]");
    BAD("unk_unknown", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [], \"unk_token\": \"<unk>\"}}", "unk_token");
#define MODEL "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}"
    BAD("nfc", "{" MODEL ", \"normalizer\": {\"type\": \"NFC\"}}", "unsupported normalizer NFC");
    BAD("nested_nfc", "{" MODEL ", \"normalizer\": {\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"NFKC\"}]}}", "normalizer.normalizers[0]: unsupported normalizer NFKC");
    BAD("whitespace_pre", "{" MODEL ", \"pre_tokenizer\": {\"type\": \"Whitespace\"}}", "unsupported pre_tokenizer Whitespace");
    BAD("bad_regex", "{" MODEL ", \"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"(a\"}, \"behavior\": \"Isolated\", \"invert\": false}}", "regex does not compile");
    BAD("split_behavior", "{" MODEL ", \"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"a\"}, \"behavior\": \"Contiguous\", \"invert\": false}}", "unsupported split behavior");
    BAD("wordpiece_dec", "{" MODEL ", \"decoder\": {\"type\": \"WordPiece\"}}", "unsupported decoder WordPiece");
    BAD("bert_post", "{" MODEL ", \"post_processor\": {\"type\": \"BertProcessing\"}}", "unsupported post_processor BertProcessing");
    BAD("template_unknown", "{" MODEL ", \"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": [{\"SpecialToken\": {\"id\": \"<s>\"}}, {\"Sequence\": {\"id\": \"A\"}}], \"special_tokens\": {}}}", "\"<s>\"");
    BAD("added_not_array", "{\"added_tokens\": 5, " MODEL "}", "added_tokens");
    BAD("added_no_content", "{\"added_tokens\": [{\"id\": 1}], " MODEL "}", "added_tokens[0].content");
    BAD("added_lstrip", "{\"added_tokens\": [{\"id\": 1, \"content\": \"<mask>\", \"lstrip\": true}], " MODEL "}", "lstrip");

    char path[1024];
    snprintf(path, sizeof path, "%s/models/does-not-exist/tokenizer.json", src);
    llamoe_err err = {{0}};
    tokenizer *t = tokenizer_load(path, &err);
    check(!t && strstr(err.msg, path) && strstr(err.msg, "cannot open"), "missing file: got \"%s\"", err.msg);

    // Every cut of the real file must fail cleanly (no crash, an error naming the file).
    snprintf(path, sizeof path, "%s/models/stories260k/tokenizer.json", src);
    size_t len;
    char *full = read_text_file(path, 1 << 20, &len, &err);
    if (!check(full != NULL, "read %s: %s", path, err.msg)) return;
    int cuts_ok = 0, n_cuts = 0;
    for (size_t cut = 0; cut < len - 2; cut += len / 37 + 1, n_cuts++) {
        char p[512];
        snprintf(p, sizeof p, "%s/cut.json", tmpdir);
        FILE *f = fopen(p, "wb");
        CHECK(f);
        fwrite(full, 1, cut, f);
        fclose(f);
        tokenizer *tc = tokenizer_load(p, &err);
        if (!tc && strstr(err.msg, p)) cuts_ok++;
        tokenizer_free(tc);
        unlink(p);
    }
    check(cuts_ok == n_cuts, "truncated tokenizer.json: %d of %d cuts gave a clean error", cuts_ok, n_cuts);
    free(full);
}

int main(int argc, char **argv) {
    const char *src = argc > 1 ? argv[1] : LLAMOE_SOURCE_DIR;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_tokenizer.XXXXXX");
    CHECK(mkdtemp(tmpdir));
    test_stories(src);
    test_merge_priority();
    test_bad_files(src);
    char buf[1024];
    const char *llama3 = find_llama3(src, buf, sizeof buf);
    if (llama3) test_llama3(llama3);
    else {
        n_skipped++;
        printf("llama3: SKIPPED: no tokenizer.json in models/llama3-tokenizer, $LLAMOE_LLAMA3_TOKENIZER or ../shared/models\n");
    }
    rmdir(tmpdir);
    printf("tokenizer: %d passed, %d failed, %d skipped\n", n_passed, n_failed, n_skipped);
    return n_failed ? 1 : 0;
}
