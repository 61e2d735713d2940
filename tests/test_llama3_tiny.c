// A Llama 3-style model against Hugging Face transformers: tests/data/llama3_tiny is a tiny
// synthetic model (llama3 rope in all three frequency bands, GQA, BF16 weights, byte-level BPE
// tokenizer, rms_norm_eps 1e-3) and expected.json holds what the `tokenizers` library and
// transformers (float64) make of it. Every prompt text must encode to transformers' ids, and
// every prompt must give exactly its greedy ids with every logits row within the tolerance
// below, for the dense model and for MoE modes that keep its output, with prompts in one step
// and in chunks of 3 tokens.
//   test_llama3_tiny SOURCE_DIR
//
// Tolerance (the probabilistic rounding model of docs/parity.md, here for one float32
// evaluation against float64 rather than two float32 ones): a logit passes through a chain
// of float32 reductions; with independent, mean-zero rounding errors and RMSNorm keeping each
// stage's gain near one, their combined relative error stays below lambda sqrt(n) u, where n
// is the total length of the reductions along the chain: per layer two RMSNorms (2 hidden),
// the q/k/v projections (hidden), the scores (head_dim), the softmax sum and the weighted sum
// (2 P, P = positions attended), the output projection (heads * head_dim), gate/up (hidden)
// and down (ffn); then the final RMSNorm and the LM head (2 hidden). lambda = 8 (a failure
// probability below 1e-13 per value), u = 2^-24, scaled by the largest |logit| of the
// reference, plus the 8-significant-digit rounding of the file.
#include <string.h>

#include "tests/greedy.h"
#include "tests/reference_json.h"
#include "runtime/tokenizer.h"

static json_object *get(json_object *o, const char *key) {
    json_object *v;
    if (!json_object_object_get_ex(o, key, &v)) die("expected.json: missing \"%s\"", key);
    return v;
}

// The text of every case through llamoe's tokenizer: transformers' ids, and back to the text.
static void check_tokenizer(const char *dir, json_object *cases, tally *t) {
    char path[4200];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    llamoe_err err;
    tokenizer *tok = tokenizer_load(path, &err);
    if (!tok) die("%s", err.msg);
    for (size_t ci = 0; ci < json_object_array_length(cases); ci++) {
        json_object *cs = json_object_array_get_idx(cases, ci);
        const char *text = json_object_get_string(get(cs, "prompt"));
        size_t len = strlen(text);
        int32_t want[512], *ids;
        int n_want = json_ids(get(cs, "prompt_ids"), want, 512), n;
        if (tokenizer_encode(tok, text, len, 1, 1, &ids, &n, &err) != 0) die("%s", err.msg);
        int ok = n == n_want && !memcmp(ids, want, (size_t)n * sizeof(int32_t));
        char *back;
        size_t back_len;
        if (tokenizer_decode(tok, want + 1, n_want - 1, &back, &back_len, &err) != 0) die("%s", err.msg);
        ok = ok && back_len == len && !memcmp(back, text, len);
        printf("tokenizer %-40.40s %3d ids%s %s\n", text[0] ? text : "(empty)", n,
               json_object_get_boolean(get(cs, "merge_order_sensitive")) ? " (merge-order sensitive)" : "",
               ok ? "ok" : "MISMATCH");
        if (!ok) {
            for (int i = 0; i < n && i < n_want; i++)
                if (ids[i] != want[i]) { fprintf(stderr, "FAIL tokenizer: first difference at %d: %d, want %d\n", i, ids[i], want[i]); break; }
            t->failed++;
        } else t->passed++;
        free(ids);
        free(back);
    }
    tokenizer_free(tok);
}

// The derived tolerance (see the top of the file).
static double tolerance(const llama_config *c, int positions, double max_abs_logit) {
    double n_layer = 2.0 * c->hidden_size + c->hidden_size + c->head_dim + 2.0 * positions +
                     (double)c->n_heads * c->head_dim + c->hidden_size + c->intermediate_size;
    double n = c->n_layers * n_layer + 2.0 * c->hidden_size;
    return 8.0 * sqrt(n) * 0x1p-24 * max_abs_logit + 5e-8 * max_abs_logit;
}

static void run_mode(backend *be, const char *dir, json_object *cases, const char *mode_str, int step_tokens,
                     double max_abs_logit, int positions, tally *t) {
    llamoe_err err;
    moe_mode mode;
    CHECK(moe_mode_parse(mode_str, &mode, &err) == 0);
    model m;
    if (model_load(&m, dir, &mode, be, 0, 1, &err) != 0) die("%s", err.msg);
    int V = m.cfg.vocab_size;
    double tol = tolerance(&m.cfg, positions, max_abs_logit);
    for (size_t ci = 0; ci < json_object_array_length(cases); ci++) {
        json_object *cs = json_object_array_get_idx(cases, ci);
        int32_t prompt[512], expect[512];
        int n_prompt = json_ids(get(cs, "prompt_ids"), prompt, 512);
        int n_expect = json_ids(get(cs, "greedy_ids"), expect, 512);
        const char *ptext = json_object_get_string(get(cs, "prompt"));
        FILE *dump = tmpfile();
        CHECK(dump);
        sequence q;
        run_state rs;
        run_state_init(&rs, &m, &(run_options){.max_tokens = step_tokens, .n_slots = 1, .ctx = 512});
        greedy_generate(&m, &rs, prompt, n_prompt, n_expect, step_tokens, dump, &q);

        int first_bad = first_mismatch(q.out, q.n_out, expect, n_expect), ok = first_bad < 0;
        // Row j of the dump predicts greedy_ids[j], as row j of the reference does.
        json_object *rows = get(cs, "logits");
        CHECK((int)json_object_array_length(rows) == n_expect);
        float *got = xmalloc((size_t)V * sizeof(float));
        double max_diff = 0;
        for (int r = 0; r < q.n_out; r++)
            max_diff = dump_row_max_diff(dump, r, V, json_object_array_get_idx(rows, (size_t)r), got, max_diff);
        free(got);
        ok = ok && max_diff <= tol;
        printf("%-12s step %-2d %-30.30s greedy %2d/%d  logits max |diff| %.2e (tol %.2e) %s\n", mode_str, step_tokens,
               ptext[0] ? ptext : "(empty)", first_bad < 0 ? q.n_out : first_bad, n_expect, max_diff, tol,
               ok ? "ok" : "FAIL");
        fflush(stdout);
        if (ok) t->passed++;
        else t->failed++;
        fclose(dump);
        sequence_free(&q);
        run_state_free(&rs, &m);
    }
    model_free(&m);
}

int main(int argc, char **argv) {
    if (argc < 2) die("usage: test_llama3_tiny SOURCE_DIR");
    char dir[4096], path[4200];
    snprintf(dir, sizeof dir, "%s/tests/data/llama3_tiny", argv[1]);
    snprintf(path, sizeof path, "%s/expected.json", dir);
    json_object *root = json_object_from_file(path);
    if (!root) die("%s: cannot parse", path);
    json_object *cases = get(root, "cases");
    double max_abs_logit = json_object_get_double(get(root, "max_abs_logit"));
    int positions = 0;   // the longest sequence attended to: prompt + generated - 1
    for (size_t ci = 0; ci < json_object_array_length(cases); ci++) {
        json_object *cs = json_object_array_get_idx(cases, ci);
        int p = (int)json_object_array_length(get(cs, "prompt_ids")) + (int)json_object_array_length(get(cs, "greedy_ids")) - 1;
        positions = p > positions ? p : positions;
    }
    printf("reference: transformers %s, torch %s (float64); float32 transformers differs by %.2e; smallest top-1 margin %.3g\n",
           json_object_get_string(get(get(root, "versions"), "transformers")),
           json_object_get_string(get(get(root, "versions"), "torch")),
           json_object_get_double(get(root, "float32_vs_float64_max_abs_diff")),
           json_object_get_double(get(root, "min_top1_margin")));
    backend *be = backend_cpu_new(&(backend_options){.threads = 2});
    tally t = {0, 0};
    check_tokenizer(dir, cases, &t);
    const char *modes[] = {"dense", "identity:4", "upcycle:8:2"};
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) run_mode(be, dir, cases, modes[i], 128, max_abs_logit, positions, &t);
    run_mode(be, dir, cases, "dense", 3, max_abs_logit, positions, &t);   // prompts in chunks of 3 tokens
    json_object_put(root);
    backend_free(be);
    printf("llama3_tiny: %d passed, %d failed\n", t.passed, t.failed);
    return t.failed ? 1 : 0;
}
