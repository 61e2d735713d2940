// Hostile sizes from files and the command line are refused before anything is sized from
// them. The test runs under an address-space limit of what it already uses plus 64 MiB (not
// under ASan, which reserves terabytes of shadow): a parser that allocated in proportion to
// a claimed size instead of checking it would die in xmalloc here, failing the test.
#include <string.h>
#include <sys/resource.h>

#include "runtime/config.h"
#include "runtime/ep_cli.h"
#include "runtime/safetensors.h"
#include "runtime/tokenizer.h"

static int failures;
#define EXPECT(cond) do { if (!(cond)) { fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond); failures++; } } while (0)

// The error must mention `want`.
static void expect_err(int rc, const llamoe_err *err, const char *want, const char *what) {
    if (rc == 0) { fprintf(stderr, "FAIL %s: accepted\n", what); failures++; return; }
    if (!strstr(err->msg, want)) { fprintf(stderr, "FAIL %s: error \"%s\" lacks \"%s\"\n", what, err->msg, want); failures++; return; }
    if (getenv("VERBOSE")) fprintf(stderr, "ok %s: %s\n", what, err->msg);
}

// ---------------------------------------------------------------------------- safetensors
static void st_case(const char *header, size_t data_bytes, const char *want, const char *what) {
    size_t h = strlen(header), n = 8 + h + data_bytes;
    uint8_t *buf = xcalloc(n, 1);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)h >> (8 * i));
    memcpy(buf + 8, header, h);
    st_tensor *ts;
    int nt;
    llamoe_err err;
    int rc = st_parse(what, buf, n, &ts, &nt, &err);
    if (rc >= 0) { for (int i = 0; i < nt; i++) free(ts[i].name); free(ts); }
    expect_err(rc >= 0 ? 0 : -1, &err, want, what);
    free(buf);
}

static void test_safetensors(void) {
    // A header length of 2^40 (a terabyte of JSON) in a 16-byte file.
    uint8_t small[16] = {0, 0, 0, 0, 0, 1, 0, 0, '{', '}'};
    st_tensor *ts;
    int nt;
    llamoe_err err;
    expect_err(st_parse("tb_header", small, sizeof small, &ts, &nt, &err), &err, "runs past the end", "tb_header");
    // A 2^31-element F32 tensor (8 GiB) whose bytes the file does not have.
    st_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[2147483648],\"data_offsets\":[0,8589934592]}}", 16,
            "end past the data section", "2^31 elements");
    // Terabytes claimed, consistently with the shape.
    st_case("{\"a\":{\"dtype\":\"BF16\",\"shape\":[1048576,1048576],\"data_offsets\":[0,2199023255552]}}", 16,
            "end past the data section", "terabytes");
    // A shape whose element count overflows 64 bits, and one that overflows only times the dtype size.
    st_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,16]}}", 16,
            "overflows", "dims overflow");
    st_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904],\"data_offsets\":[0,16]}}", 16,
            "overflows", "bytes overflow");
    st_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[18446744073709551615],\"data_offsets\":[0,16]}}", 16,
            "too large", "u64 dim");
    st_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 16,
            "more than 8", "nine dims");
    st_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[18446744073709551615,7]}}", 16,
            "begin after end", "offset wrap");
    // A million tensors would need a million entries; refusing the first bad one is enough,
    // but a huge valid-looking count must not be allocated up front from a claim: the count
    // comes from the parsed JSON, so the cost is bounded by the header bytes (100 MB max).
    int64_t idx = 0;
    EXPECT(st_index_parse("index", "{\"weight_map\": {}}", 18, (int *)&idx, &err) != 0);
}

// ---------------------------------------------------------------------------- config.json
static void config_case(const char *json, const char *want, const char *what) {
    llama_config c;
    llamoe_err err;
    expect_err(config_parse(&c, "config.json", json, &err), &err, want, what);
}

#define CFG(extra) "{\"model_type\":\"llama\",\"hidden_size\":64,\"intermediate_size\":172,\"num_attention_heads\":8," \
    "\"max_position_embeddings\":512,\"rms_norm_eps\":1e-5,\"rope_theta\":10000" extra "}"

static void test_config(void) {
    config_case(CFG(",\"num_hidden_layers\":1000000,\"vocab_size\":512"), "num_hidden_layers is 1000000", "million layers");
    config_case(CFG(",\"num_hidden_layers\":5,\"vocab_size\":0"), "vocab_size is 0", "vocab zero");
    config_case(CFG(",\"num_hidden_layers\":5,\"vocab_size\":4294967297"), "vocab_size is 4294967297", "vocab 2^32+1");
    config_case("{\"model_type\":\"llama\",\"hidden_size\":64,\"intermediate_size\":172,\"num_attention_heads\":4096,"
                "\"head_dim\":4096,\"num_hidden_layers\":1,\"vocab_size\":8,\"max_position_embeddings\":8,"
                "\"rms_norm_eps\":1e-5,\"rope_theta\":10000}", "num_attention_heads x head_dim", "heads x head_dim overflow");
    config_case(CFG(",\"num_hidden_layers\":5,\"vocab_size\":512,\"max_position_embeddings\":2147483648"),
                "max_position_embeddings is 2147483648", "positions 2^31");
    config_case("{\"model_type\":\"mixtral\",\"hidden_size\":64,\"intermediate_size\":172,\"num_attention_heads\":8,"
                "\"num_hidden_layers\":1,\"vocab_size\":8,\"max_position_embeddings\":8,\"rms_norm_eps\":1e-5,"
                "\"rope_theta\":10000,\"num_local_experts\":1000000,\"num_experts_per_tok\":2}",
                "num_local_experts is 1000000", "million experts");
}

// ---------------------------------------------------------------------------- tokenizer.json
static void tok_case(const char *json, const char *want, const char *what) {
    llamoe_err err;
    tokenizer *t = tokenizer_load_mem(what, json, strlen(json), &err);
    expect_err(t ? 0 : -1, &err, want, what);
    tokenizer_free(t);
}

static void test_tokenizer(void) {
    tok_case("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":16777215},\"merges\":[]}}", "ids must be dense", "sparse id");
    tok_case("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},\"added_tokens\":[{\"id\":9999999,"
             "\"content\":\"x\"}]}", "ids must be dense", "sparse added id");
    tok_case("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":2147483648},\"merges\":[]}}", "out of range", "id 2^31");
    tok_case("{\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]}}", "empty", "vocab zero");
    // Dense ids with a few gaps still load (Hugging Face files have no gaps, but need not fail on some).
    llamoe_err err;
    const char *gaps = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":200},\"merges\":[]}}";
    tokenizer *t = tokenizer_load_mem("gaps", gaps, strlen(gaps), &err);
    EXPECT(t && tokenizer_vocab_size(t) == 201);
    tokenizer_free(t);
}

// ---------------------------------------------------------------------------- command line, prompts
static void test_cli(void) {
    ep_options o;
    llamoe_err err;
    char *a1[] = {"llamoe-ep", "-n", "16777217", NULL};
    expect_err(ep_parse_args(3, a1, &o, &err), &err, "expected an integer in [0, 16777216]", "-n 2^24+1");
    char *a2[] = {"llamoe-ep", "--ctx", "99999999999999999999", NULL};
    expect_err(ep_parse_args(3, a2, &o, &err), &err, "expected an integer", "--ctx 1e20");
    char *a3[] = {"llamoe-ep", "--step-tokens", "65537", NULL};
    expect_err(ep_parse_args(3, a3, &o, &err), &err, "expected an integer in [1, 65536]", "--step-tokens");
    char *a4[] = {"llamoe-ep", "--seed", "-1", NULL};
    expect_err(ep_parse_args(3, a4, &o, &err), &err, "--seed: expected an integer in [0, 18446744073709551615], got '-1'", "--seed -1");
    char *a5[] = {"llamoe-ep", "--seed", "18446744073709551616", NULL};
    expect_err(ep_parse_args(3, a5, &o, &err), &err, "--seed", "--seed 2^64");

    // Prompt files: a NUL byte, more than EP_MAX_PROMPTS lines, an id that is not an int32.
    prompt *ps;
    int n;
    char nul[] = "1,2\n\0003\n";
    expect_err(prompts_parse("p", nul, sizeof nul - 1, NULL, 0, &ps, &n, &err), &err, "NUL byte", "prompts NUL");
    char big[] = "1,2147483648\n";   // not ids, so text, and there is no tokenizer
    expect_err(prompts_parse("p", big, sizeof big - 1, NULL, 0, &ps, &n, &err), &err, "no tokenizer.json", "id 2^31");
}

// More than EP_MAX_PROMPTS lines. Memory here grows with the file (a prompt per line, up to
// the cap), not with a claim, so this runs before the address-space limit.
static void test_many_prompts(void) {
    prompt *ps;
    int n;
    llamoe_err err;
    size_t lines = (size_t)EP_MAX_PROMPTS + 1, len = 2 * lines;
    char *many = xmalloc(len + 1);
    for (size_t i = 0; i < lines; i++) { many[2 * i] = '1'; many[2 * i + 1] = '\n'; }
    many[len] = 0;
    expect_err(prompts_parse("p", many, len, NULL, 0, &ps, &n, &err), &err, "more than 1048576 prompts", "2^20+1 prompts");
    free(many);
}

int main(void) {
    test_many_prompts();
#ifndef __SANITIZE_ADDRESS__
    // What the process maps now (libraries, stacks of OpenMP threads that may come) + 64 MiB.
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long pages = 0;
    if (f && fscanf(f, "%lu", &pages) == 1) {
        struct rlimit rl;
        rl.rlim_cur = rl.rlim_max = (rlim_t)pages * 4096 + ((rlim_t)64 << 20);
        if (setrlimit(RLIMIT_AS, &rl) != 0) perror("setrlimit");
    }
    if (f) fclose(f);
#endif
    test_safetensors();
    test_config();
    test_tokenizer();
    test_cli();
    printf("test_limits: %s\n", failures ? "FAILED" : "ok");
    return failures != 0;
}
