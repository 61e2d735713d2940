// Tokenizer benchmark: load time and encode/decode throughput of the Llama 3 tokenizer.
//   bench_tokenizer [-m DIR] [--mb N] [--file TEXT] [--json FILE]
// The text is every case of DIR/cases.json (English, code, CJK, Arabic, Cyrillic, emoji, a chat
// transcript) plus the stories260k cases, repeated to N MB (default 2); or, with --file, that
// file as it is (for text without repeats). Each figure is the best of 3 runs. "encode 1 call"
// is the whole text in one call (the word cache sees the repeats); "encode per text" is one call
// per case text (per line with --file), so every call starts with an empty cache.
#include "runtime/tokenizer.h"

#include <json-c/json.h>
#include <string.h>

typedef struct { const char *name; double seconds, mb_per_s, tokens_per_s; int64_t tokens; } row;

static void append_texts(const char *path, const char *array_key, char **buf, size_t *len, size_t *cap,
                         size_t **ends, size_t *n_ends) {
    json_object *root = json_object_from_file(path), *cases = root;
    if (!root) die("%s: cannot read", path);
    if (array_key && !json_object_object_get_ex(root, array_key, &cases)) die("%s: no %s", path, array_key);
    for (size_t i = 0; i < json_object_array_length(cases); i++) {
        json_object *text;
        if (!json_object_object_get_ex(json_object_array_get_idx(cases, i), "text", &text)) continue;
        size_t n = (size_t)json_object_get_string_len(text);
        if (n == 0) continue;
        if (*len + n + 1 > *cap) { *cap = 2 * (*len + n + 1); *buf = xrealloc(*buf, *cap); }
        memcpy(*buf + *len, json_object_get_string(text), n);
        *len += n;
        (*buf)[(*len)++] = '\n';   // texts are separated so words do not run together
        *ends = xrealloc(*ends, (*n_ends + 1) * sizeof **ends);
        (*ends)[(*n_ends)++] = *len;
    }
    json_object_put(root);
}

int main(int argc, char **argv) {
    const char *dir = LLAMOE_SOURCE_DIR "/models/llama3-tokenizer", *json_path = NULL, *file = NULL;
    double mb = 2;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-m") && i + 1 < argc) dir = argv[++i];
        else if (!strcmp(argv[i], "--mb") && i + 1 < argc) mb = atof(argv[++i]);
        else if (!strcmp(argv[i], "--json") && i + 1 < argc) json_path = argv[++i];
        else if (!strcmp(argv[i], "--file") && i + 1 < argc) file = argv[++i];
        else die("usage: bench_tokenizer [-m DIR] [--mb N] [--file TEXT] [--json FILE]");
    }
    if (!(mb > 0 && mb <= 1024)) die("--mb: expected a size in MB between 0 and 1024");
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);

    // load: best of 3
    llamoe_err err;
    double load_s = 1e9;
    tokenizer *t = NULL;
    for (int r = 0; r < 3; r++) {
        tokenizer_free(t);
        double t0 = now_seconds();
        t = tokenizer_load(path, &err);
        if (!t) die("%s", err.msg);
        double dt = now_seconds() - t0;
        if (dt < load_s) load_s = dt;
    }

    // the corpus: one round of case texts, then repeated to the target size
    char *one = NULL;
    size_t one_len = 0, one_cap = 0, *ends = NULL, n_texts = 0;
    if (file) {
        one = read_text_file(file, (size_t)1 << 30, &one_len, &err);
        if (!one) die("%s", err.msg);
        for (size_t i = 0; i < one_len; i++) {
            if (one[i] != '\n' && i + 1 < one_len) continue;
            ends = xrealloc(ends, (n_texts + 1) * sizeof *ends);
            ends[n_texts++] = i + 1;
        }
    } else {
        snprintf(path, sizeof path, "%s/cases.json", dir);
        append_texts(path, NULL, &one, &one_len, &one_cap, &ends, &n_texts);
        snprintf(path, sizeof path, "%s/models/stories260k/tokenizer_cases.json", LLAMOE_SOURCE_DIR);
        if (file_exists(path)) append_texts(path, "cases", &one, &one_len, &one_cap, &ends, &n_texts);
    }
    if (one_len == 0) die("no text to encode");
    size_t target = (size_t)(mb * 1e6), reps = file ? 1 : target / one_len + 1, len = reps * one_len;
    char *text = xmalloc(len + 1);
    for (size_t r = 0; r < reps; r++) memcpy(text + r * one_len, one, one_len);
    text[len] = 0;

    row rows[4];
    int n_rows = 0;
    int32_t *ids = NULL;
    int n_ids = 0;

    row enc = {"encode 1 call", 1e9, 0, 0, 0};
    for (int r = 0; r < 3; r++) {
        free(ids);
        double t0 = now_seconds();
        if (tokenizer_encode(t, text, len, 1, 1, &ids, &n_ids, &err)) die("%s", err.msg);
        double dt = now_seconds() - t0;
        if (dt < enc.seconds) enc.seconds = dt;
    }
    enc.tokens = n_ids;
    rows[n_rows++] = enc;

    row per = {"encode per text", 1e9, 0, 0, 0};
    for (int r = 0; r < 3; r++) {
        int64_t tokens = 0;
        double t0 = now_seconds();
        for (size_t k = 0; k < reps; k++) {
            for (size_t i = 0; i < n_texts; i++) {
                size_t start = i ? ends[i - 1] : 0;
                int32_t *part;
                int n;
                if (tokenizer_encode(t, text + k * one_len + start, ends[i] - start, 1, 1, &part, &n, &err)) die("%s", err.msg);
                tokens += n;
                free(part);
            }
        }
        double dt = now_seconds() - t0;
        if (dt < per.seconds) per.seconds = dt;
        per.tokens = tokens;
    }
    rows[n_rows++] = per;

    row dec = {"decode 1 call", 1e9, 0, 0, n_ids};
    for (int r = 0; r < 3; r++) {
        char *out;
        size_t out_len;
        double t0 = now_seconds();
        if (tokenizer_decode(t, ids, n_ids, &out, &out_len, &err)) die("%s", err.msg);
        double dt = now_seconds() - t0;
        if (dt < dec.seconds) dec.seconds = dt;
        if (out_len < len) die("decode: %zu bytes, fewer than the %zu encoded", out_len, len);
        free(out);
    }
    rows[n_rows++] = dec;

    row str = {"stream decode", 1e9, 0, 0, n_ids};
    for (int r = 0; r < 3; r++) {
        tokenizer_stream *s = tokenizer_stream_new(t);
        size_t total = 0, n;
        double t0 = now_seconds();
        for (int i = 0; i < n_ids; i++) { tokenizer_stream_push(s, ids[i], &n); total += n; }
        tokenizer_stream_flush(s, &n);
        double dt = now_seconds() - t0;
        if (dt < str.seconds) str.seconds = dt;
        tokenizer_stream_free(s);
        (void)total;
    }
    rows[n_rows++] = str;

    printf("tokenizer %s: load %.3f s, vocab %d; text %.2f MB (%zu texts x %zu), %d tokens\n", dir, load_s,
           tokenizer_vocab_size(t), len / 1e6, n_texts, reps, n_ids);
    printf("%-16s %10s %10s %12s %12s\n", "what", "seconds", "MB/s", "tokens", "tokens/s");
    for (int i = 0; i < n_rows; i++) {
        rows[i].mb_per_s = len / 1e6 / rows[i].seconds;
        rows[i].tokens_per_s = rows[i].tokens / rows[i].seconds;
        printf("%-16s %10.4f %10.2f %12lld %12.0f\n", rows[i].name, rows[i].seconds, rows[i].mb_per_s,
               (long long)rows[i].tokens, rows[i].tokens_per_s);
    }

    if (json_path) {   // through json-c, so any path in "tokenizer" is escaped properly
        json_object *root = json_object_new_object(), *list = json_object_new_array();
        json_object_object_add(root, "tokenizer", json_object_new_string(dir));
        json_object_object_add(root, "load_seconds", json_object_new_double(load_s));
        json_object_object_add(root, "text", json_object_new_string(file ? file : "cases.json texts, repeated"));
        json_object_object_add(root, "text_bytes", json_object_new_int64((int64_t)len));
        for (int i = 0; i < n_rows; i++) {
            json_object *r = json_object_new_object();
            json_object_object_add(r, "what", json_object_new_string(rows[i].name));
            json_object_object_add(r, "seconds", json_object_new_double(rows[i].seconds));
            json_object_object_add(r, "mb_per_s", json_object_new_double(rows[i].mb_per_s));
            json_object_object_add(r, "tokens", json_object_new_int64(rows[i].tokens));
            json_object_object_add(r, "tokens_per_s", json_object_new_double(rows[i].tokens_per_s));
            json_object_array_add(list, r);
        }
        json_object_object_add(root, "rows", list);
        if (json_object_to_file_ext(json_path, root, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE)) die("%s: cannot write", json_path);
        json_object_put(root);
    }
    free(ids); free(text); free(one); free(ends);
    tokenizer_free(t);
    return 0;
}
