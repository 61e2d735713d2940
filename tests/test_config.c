// config.json parsing: the real configs parse to the right values; each file in
// tests/data/config/ parses or fails as the table says. Usage: test_config SOURCE_DIR
#include "runtime/config.h"

#include <math.h>
#include <string.h>

static int passed, failed;
static const char *src;

#define EXPECT(cond, ...) do { \
    if (cond) passed++; \
    else { failed++; printf("FAIL %s:%d: ", __FILE__, __LINE__); printf(__VA_ARGS__); printf("\n"); } \
} while (0)

static char *path_of(const char *rel) {
    static char buf[4][1024];
    static int k;
    char *p = buf[k++ % 4];
    snprintf(p, 1024, "%s/%s", src, rel);
    return p;
}

// Parses config.json text from a file; then, if gen is given, a generation_config.json.
static int parse_files(llama_config *c, const char *rel, const char *gen_rel, llamoe_err *err) {
    const char *path = path_of(rel);
    char *text = read_text_file(path, 1 << 20, NULL, err);
    if (!text) return -1;
    int rc = config_parse(c, path, text, err);
    free(text);
    if (rc == 0 && gen_rel) {
        path = path_of(gen_rel);
        text = read_text_file(path, 1 << 20, NULL, err);
        if (!text) return -1;
        rc = config_parse_generation(c, path, text, err);
        free(text);
    }
    return rc;
}

static int eos_is(const llama_config *c, int n, const int *ids) {
    if (c->n_eos != n) return 0;
    for (int i = 0; i < n; i++)
        if (c->eos_ids[i] != ids[i]) return 0;
    return 1;
}

// ---------------------------------------------------------------------------- real configs
static void test_stories(void) {
    llama_config c;
    llamoe_err err = {{0}};
    int rc = config_load(&c, path_of("models/stories260k"), &err);
    EXPECT(rc == 0, "stories260k: %s", err.msg);
    if (rc) return;
    EXPECT(!c.is_mixtral && c.hidden_size == 64 && c.intermediate_size == 172 && c.n_layers == 5 && c.n_heads == 8 &&
           c.n_kv_heads == 4 && c.head_dim == 8 && c.vocab_size == 512 && c.max_position_embeddings == 512,
           "stories260k dims");
    EXPECT(c.rms_norm_eps == 1e-5f && c.rope_theta == 10000.0f && !c.rope_llama3 && c.tie_word_embeddings,
           "stories260k eps/rope/tie");
    EXPECT(c.bos_id == 1 && eos_is(&c, 2, (int[]){2, 1}), "stories260k bos %d, %d eos", c.bos_id, c.n_eos);
    EXPECT(config_is_eos(&c, 1) && config_is_eos(&c, 2) && !config_is_eos(&c, 0), "config_is_eos");
}

static void check_8b(const llama_config *c) {
    EXPECT(!c->is_mixtral && c->hidden_size == 4096 && c->intermediate_size == 14336 && c->n_layers == 32 &&
           c->n_heads == 32 && c->n_kv_heads == 8 && c->head_dim == 128 && c->vocab_size == 128256 &&
           c->max_position_embeddings == 131072 && !c->tie_word_embeddings && c->bos_id == 128000,
           "8B dims");
    EXPECT(c->rope_llama3 && c->rope_factor == 8.0f && c->rope_low_freq_factor == 1.0f &&
           c->rope_high_freq_factor == 4.0f && c->rope_original_max_position == 8192 && c->rope_theta == 500000.0f &&
           c->rms_norm_eps == 1e-5f, "8B rope");
}

static void test_8b(void) {
    llama_config c;
    llamoe_err err = {{0}};
    const int instruct_eos[3] = {128001, 128008, 128009};
    EXPECT(parse_files(&c, "models/llama-3.1-8b-config/config.json", NULL, &err) == 0, "8B: %s", err.msg);
    check_8b(&c);
    EXPECT(eos_is(&c, 1, (int[]){128001}), "8B base eos");
    EXPECT(config_load(&c, path_of("models/llama-3.1-8b-config"), &err) == 0, "8B dir: %s", err.msg);
    check_8b(&c);
    EXPECT(eos_is(&c, 1, (int[]){128001}), "8B base eos with its generation_config");
    EXPECT(parse_files(&c, "models/llama-3.1-8b-config/config.json",
                       "models/llama-3.1-8b-config/generation_config-instruct.json", &err) == 0, "8B+gen: %s", err.msg);
    EXPECT(eos_is(&c, 3, instruct_eos), "8B with the instruct generation_config: %d eos", c.n_eos);
    EXPECT(parse_files(&c, "models/llama-3.1-8b-config/config-instruct.json", NULL, &err) == 0, "instruct: %s", err.msg);
    check_8b(&c);
    EXPECT(eos_is(&c, 3, instruct_eos), "instruct eos list");
}

// ---------------------------------------------------------------------------- table of cases
typedef struct {
    const char *file;     // under tests/data/config/
    const char *expect;   // NULL: parses; else a substring of the error (after the file name)
} config_case;

static const config_case cases[] = {
    {"ok_no_head_dim", NULL},
    {"ok_mixtral", NULL},
    {"bad_model_type", "model_type \"gpt2\" is not supported (llama, mixtral)"},
    {"bad_model_type_missing", "model_type missing"},
    {"bad_rope_yarn", "rope_scaling.rope_type \"yarn\" is not supported (llama3)"},
    {"bad_rope_llama3_missing_factor", "rope_scaling: factor missing"},
    {"bad_missing_hidden", "hidden_size missing"},
    {"bad_kv_heads", "num_attention_heads 8 is not a multiple of num_key_value_heads 3"},
    {"bad_vocab_zero", "vocab_size is 0, outside"},
    {"bad_million_layers", "num_hidden_layers is 1000000, outside [1, 4096]"},
    {"bad_hidden_2_40", "hidden_size is 1099511627776, outside"},
    {"bad_string_number", "intermediate_size is \"172\", not an integer"},
    {"bad_float_int", "num_hidden_layers is 5.5, not an integer"},
    {"bad_head_dim_odd", "head_dim 7 is odd"},
    {"bad_heads_divide", "hidden_size 64 is not a multiple of num_attention_heads 6"},
    {"bad_eos_out_of_vocab", "eos_token_id 512 is outside the vocabulary [0, 512)"},
    {"bad_eos_string", "eos_token_id is \"2\", not an integer or a list"},
    {"bad_mixtral_topk", "num_experts_per_tok 3 is more than num_local_experts 2"},
    {"bad_mixtral_no_experts", "num_local_experts missing"},
    {"bad_tie_string", "tie_word_embeddings is \"true\", not true or false"},
    {"bad_negative_eps", "rms_norm_eps is -1e-05, outside"},
    {"bad_not_object", "not a JSON object"},
    {"bad_malformed", "malformed JSON"},
};

static void test_cases(void) {
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const config_case *k = &cases[i];
        char rel[256], file[128];
        snprintf(file, sizeof file, "%s.json", k->file);
        snprintf(rel, sizeof rel, "tests/data/config/%s", file);
        llama_config c;
        llamoe_err err = {{0}};
        int rc = parse_files(&c, rel, NULL, &err);
        if (getenv("VERBOSE")) printf("  %s: %s\n", k->file, rc ? err.msg : "ok");
        if (!k->expect) EXPECT(rc == 0, "%s: %s", k->file, err.msg);
        else EXPECT(rc == -1 && strstr(err.msg, file) && strstr(err.msg, k->expect),
                    "%s: rc %d, message \"%s\", wanted \"%s\"", k->file, rc, err.msg, k->expect);
        if (!strcmp(k->file, "ok_no_head_dim"))
            EXPECT(rc == 0 && c.head_dim == 8 && c.n_kv_heads == 8, "defaults: head_dim %d kv %d", c.head_dim, c.n_kv_heads);
        if (!strcmp(k->file, "ok_mixtral"))
            EXPECT(rc == 0 && c.is_mixtral && c.n_experts == 8 && c.n_experts_per_tok == 2 && c.rope_llama3 &&
                   c.rope_original_max_position == 64 && c.bos_id == -1 && eos_is(&c, 2, (int[]){2, 3}),
                   "mixtral values");
    }
}

// generation_config.json alone: bad eos is an error naming that file.
static void test_generation(void) {
    llama_config c;
    llamoe_err err = {{0}};
    CHECK(parse_files(&c, "models/stories260k/config.json", NULL, &err) == 0);
    EXPECT(config_parse_generation(&c, "generation_config.json", "{\"eos_token_id\": [2, \"x\"]}", &err) == -1 &&
           strstr(err.msg, "generation_config.json: eos_token_id[1] is not an integer"), "gen: %s", err.msg);
    EXPECT(config_parse_generation(&c, "generation_config.json", "{\"eos_token_id\": [3, 2, 3]}", &err) == 0 &&
           eos_is(&c, 2, (int[]){2, 3}), "gen adds without duplicates: %d", c.n_eos);
}

int main(int argc, char **argv) {
    src = argc > 1 ? argv[1] : LLAMOE_SOURCE_DIR;
    test_stories();
    test_8b();
    test_cases();
    test_generation();
    printf("config: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
