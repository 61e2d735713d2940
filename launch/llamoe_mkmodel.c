// llamoe-mkmodel: writes a synthetic Hugging Face Llama model directory with seeded random
// weights (config.json, generation_config.json, model.safetensors or N shards + index; with
// --tokenizer also tokenizer.json, tokenizer_config.json and special_tokens_map.json).
//
// Values. Element i of a tensor is a pure function of (--seed, the tensor's name, i): the
// counter-based generator of base/rng.h (rng_at, rng_from) gives 64 random bits,
// rng_irwin_hall4 turns them into a bell-shaped integer (the sum of four 16-bit uniforms,
// centred: Irwin-Hall with 4 terms, mean 0, never beyond 3.46 std, excess kurtosis -0.3),
// and one float multiply scales it to the tensor's std. So the values do not depend on
// dtype, sharding, thread count or on which other tensors exist: the same --seed written as
// F32 --bf16-values and as BF16 --shards 3 holds bit-identical weights, and --threads 1 and
// --threads 16 write the same bytes.
//
// Initialisation (chosen so that greedy decoding of a random model is meaningful):
//   - RMSNorm weights are 1.
//   - Projections (q, k, v, o, gate, up, down) have std 1/sqrt(fan_in): a unit-RMS input gives
//     unit-scale outputs, so the residual stream grows only slowly with depth and attention
//     scores q.k/sqrt(head_dim) have a std of about 1 (soft, but position- and token-dependent).
//   - The embedding has std 1 when untied, so the current token stays visible in the residual.
//   - The LM head has std LOGIT_STD / sqrt(hidden): the final RMSNorm gives a unit-RMS vector,
//     so each logit is a sum of hidden terms with std LOGIT_STD overall. With logits of std 8
//     over a vocabulary V, the expected gap between the top two logits is about
//     8 / sqrt(2 ln V) (1.7 at V = 128256, 2.3 at V = 512): far above float32 rounding, so
//     greedy tokens are stable across backends except on rare near-ties. Tied models use the
//     LM head's scale for the shared matrix.
//
// Writing. The tensors are cut into chunks of CHUNK_ELEMS values; --threads generator threads
// (default: every CPU this process may use) fill chunks into a ring of buffers in any order,
// and the main thread writes them in file order, one large write(2) each, so the disk never
// waits for the generator. Writeback follows 64 MB behind (write_behind, base/outdir.h) and
// written pages leave the page cache: a 16 GB model does not fill memory with dirty pages,
// which on the 2-core test machine cut the kernel's time per GB by 4x. Even the 8B-shape
// embedding (1 GB at BF16) never sits in memory.
#define _GNU_SOURCE   // sched_getaffinity
#include "base/args.h"
#include "base/outdir.h"
#include "base/rng.h"
#include "runtime/config.h"
#include "runtime/safetensors.h"
#include "runtime/tokenizer.h"

#include <getopt.h>
#include <json-c/json.h>
#include <libgen.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <unistd.h>

#define LOGIT_STD 8.0
#define CHUNK_ELEMS ((size_t)1 << 21)   // 4 MB at BF16, 8 MB at F32: large writes

// ---------------------------------------------------------------------------- options
typedef struct {
    const char *out, *tokenizer, *preset;
    int hidden, ffn, layers, heads, kv_heads, vocab, max_pos, head_dim;   // head_dim 0: hidden/heads
    double rope_theta, rms_eps;
    int rope_llama3, rope_orig_max_pos;
    dtype_t dtype;
    int shards, tie, bf16_values, force, threads;
    uint64_t seed;
    int bos, eos;
} mk_options;

static void usage(FILE *f) {
    fprintf(f,
        "usage: llamoe-mkmodel -o DIR [--preset tiny|llama3.1-8b] [--hidden N] [--ffn N] [--layers N]\n"
        "         [--heads N] [--kv-heads N] [--vocab N] [--max-pos N] [--head-dim N] [--rope-theta X]\n"
        "         [--dtype F32|BF16|F16] [--shards N] [--seed S] [--rope-llama3] [--tie] [--bf16-values]\n"
        "         [--tokenizer FILE] [--threads N] [--force]\n"
        "Writes a Hugging Face Llama directory with seeded random weights. The directory is built\n"
        "as DIR.tmp.<pid> and renamed to DIR at the end; an existing DIR is an error without --force.\n"
        "--bf16-values rounds every weight to a bf16-representable value (for F32/BF16 parity).\n"
        "--tokenizer FILE copies a tokenizer.json and writes tokenizer_config.json and\n"
        "special_tokens_map.json for it (bos and eos as in config.json; the chat template of a\n"
        "tokenizer_config.json beside FILE, if there is one).\n"
        "--threads N generator threads (default: all CPUs); the bytes do not depend on N.\n");
}

static int cpu_count(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static void set_preset(mk_options *o, const char *name) {
    if (!strcmp(name, "tiny")) {   // stories260k-like, so its tokenizer (512 tokens) fits
        o->hidden = 64; o->ffn = 192; o->layers = 2; o->heads = 4; o->kv_heads = 2;
        o->vocab = 512; o->max_pos = 512; o->rope_theta = 10000.0; o->rms_eps = 1e-5;
        o->rope_llama3 = 0; o->rope_orig_max_pos = 64; o->tie = 0; o->bos = 1; o->eos = 2;
    } else if (!strcmp(name, "llama3.1-8b")) {   // models/llama-3.1-8b-config/config.json
        o->hidden = 4096; o->ffn = 14336; o->layers = 32; o->heads = 32; o->kv_heads = 8;
        o->vocab = 128256; o->max_pos = 131072; o->rope_theta = 500000.0; o->rms_eps = 1e-5;
        o->rope_llama3 = 1; o->rope_orig_max_pos = 8192; o->tie = 0; o->bos = 128000; o->eos = 128001;
    } else die("--preset: expected tiny or llama3.1-8b, got '%s'", name);
    o->preset = name;
}

static void parse_args(mk_options *o, int argc, char **argv) {
    enum { O_PRESET = 256, O_HIDDEN, O_FFN, O_LAYERS, O_HEADS, O_KV, O_VOCAB, O_MAXPOS, O_HEADDIM, O_THETA,
           O_DTYPE, O_SHARDS, O_SEED, O_ROPE, O_TIE, O_BF16V, O_TOK, O_FORCE, O_THREADS };
    static const struct option longs[] = {
        {"preset", 1, 0, O_PRESET}, {"hidden", 1, 0, O_HIDDEN}, {"ffn", 1, 0, O_FFN}, {"layers", 1, 0, O_LAYERS},
        {"heads", 1, 0, O_HEADS}, {"kv-heads", 1, 0, O_KV}, {"vocab", 1, 0, O_VOCAB}, {"max-pos", 1, 0, O_MAXPOS},
        {"head-dim", 1, 0, O_HEADDIM}, {"rope-theta", 1, 0, O_THETA}, {"dtype", 1, 0, O_DTYPE},
        {"shards", 1, 0, O_SHARDS}, {"seed", 1, 0, O_SEED}, {"rope-llama3", 0, 0, O_ROPE}, {"tie", 0, 0, O_TIE},
        {"bf16-values", 0, 0, O_BF16V}, {"tokenizer", 1, 0, O_TOK}, {"force", 0, 0, O_FORCE},
        {"threads", 1, 0, O_THREADS}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    memset(o, 0, sizeof *o);
    o->dtype = DT_F32;
    o->shards = 1;
    o->seed = 1234;
    o->threads = cpu_count();
    set_preset(o, "tiny");
    // The preset goes first whatever its place, so that dimension flags override it.
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--preset")) set_preset(o, argv[i + 1]);
        else if (!strncmp(argv[i], "--preset=", 9)) set_preset(o, argv[i] + 9);
    const int big = 1 << 30;
    llamoe_err err;
    int c, rc = 0;
    opterr = 0;
    while (rc == 0 && (c = getopt_long(argc, argv, ":o:h", longs, NULL)) != -1) {
        switch (c) {
        case 'o': o->out = optarg; break;
        case O_PRESET: break;
        case O_HIDDEN: rc = arg_int("--hidden", optarg, 1, big, &o->hidden, &err); break;
        case O_FFN: rc = arg_int("--ffn", optarg, 1, big, &o->ffn, &err); break;
        case O_LAYERS: rc = arg_int("--layers", optarg, 1, big, &o->layers, &err); break;
        case O_HEADS: rc = arg_int("--heads", optarg, 1, big, &o->heads, &err); break;
        case O_KV: rc = arg_int("--kv-heads", optarg, 1, big, &o->kv_heads, &err); break;
        case O_VOCAB: rc = arg_int("--vocab", optarg, 1, big, &o->vocab, &err); break;
        case O_MAXPOS: rc = arg_int("--max-pos", optarg, 1, big, &o->max_pos, &err); break;
        case O_HEADDIM: rc = arg_int("--head-dim", optarg, 1, big, &o->head_dim, &err); break;
        case O_THETA: rc = arg_double("--rope-theta", optarg, 1.0, 1e12, &o->rope_theta, &err); break;
        case O_DTYPE:
            if (dtype_parse(optarg, &o->dtype) != 0) rc = fail(&err, "--dtype: expected F32, BF16 or F16, got '%s'", optarg);
            break;
        case O_SHARDS: rc = arg_int("--shards", optarg, 1, 99999, &o->shards, &err); break;
        case O_SEED: rc = arg_u64("--seed", optarg, 0, UINT64_MAX, &o->seed, &err); break;
        case O_ROPE: o->rope_llama3 = 1; break;
        case O_TIE: o->tie = 1; break;
        case O_BF16V: o->bf16_values = 1; break;
        case O_TOK: o->tokenizer = optarg; break;
        case O_FORCE: o->force = 1; break;
        case O_THREADS: rc = arg_int("--threads", optarg, 1, 4096, &o->threads, &err); break;
        case 'h': usage(stdout); exit(0);
        default: rc = arg_getopt_error(c, argv, &err); break;
        }
    }
    if (rc != 0) die("%s", err.msg);
    if (optind < argc) die("%s: unexpected argument (see --help)", argv[optind]);
    if (!o->out) die("-o DIR is required (see --help)");
    if (!o->head_dim) {
        if (o->hidden % o->heads) die("--hidden %d is not a multiple of --heads %d (or give --head-dim)", o->hidden, o->heads);
        o->head_dim = o->hidden / o->heads;
    }
    // Small vocabularies cannot hold the preset's special ids.
    if (o->bos >= o->vocab || o->eos >= o->vocab) { o->bos = 1 % o->vocab; o->eos = 2 % o->vocab; }
}

// ---------------------------------------------------------------------------- config files
// Writes config.json text into buf. The text is then parsed by config_parse, so mkmodel never
// writes a model that the loader would refuse.
static void format_config(const mk_options *o, char *buf, size_t cap) {
    char rope[512] = "null";
    if (o->rope_llama3)
        snprintf(rope, sizeof rope,
                 "{\n    \"factor\": 8.0,\n    \"low_freq_factor\": 1.0,\n    \"high_freq_factor\": 4.0,\n"
                 "    \"original_max_position_embeddings\": %d,\n    \"rope_type\": \"llama3\"\n  }",
                 o->rope_orig_max_pos);
    const char *torch_dtype = o->dtype == DT_F32 ? "float32" : o->dtype == DT_BF16 ? "bfloat16" : "float16";
    int n = snprintf(buf, cap,
        "{\n"
        "  \"architectures\": [\"LlamaForCausalLM\"],\n"
        "  \"model_type\": \"llama\",\n"
        "  \"hidden_size\": %d,\n"
        "  \"intermediate_size\": %d,\n"
        "  \"num_hidden_layers\": %d,\n"
        "  \"num_attention_heads\": %d,\n"
        "  \"num_key_value_heads\": %d,\n"
        "  \"head_dim\": %d,\n"
        "  \"vocab_size\": %d,\n"
        "  \"max_position_embeddings\": %d,\n"
        "  \"rms_norm_eps\": %g,\n"
        "  \"rope_theta\": %.1f,\n"
        "  \"rope_scaling\": %s,\n"
        "  \"hidden_act\": \"silu\",\n"
        "  \"attention_bias\": false,\n"
        "  \"mlp_bias\": false,\n"
        "  \"tie_word_embeddings\": %s,\n"
        "  \"torch_dtype\": \"%s\",\n"
        "  \"bos_token_id\": %d,\n"
        "  \"eos_token_id\": %d,\n"
        "  \"llamoe_synthetic\": {\"seed\": %llu, \"bf16_values\": %s, \"preset\": \"%s\", \"values\": \"splitmix64 irwin-hall4\"}\n"
        "}\n",
        o->hidden, o->ffn, o->layers, o->heads, o->kv_heads, o->head_dim, o->vocab, o->max_pos, o->rms_eps,
        o->rope_theta, rope, o->tie ? "true" : "false", torch_dtype, o->bos, o->eos,
        (unsigned long long)o->seed, o->bf16_values ? "true" : "false", o->preset);
    CHECK(n > 0 && (size_t)n < cap);
}

// ---------------------------------------------------------------------------- tokenizer files
// tokenizer.json alone makes AutoTokenizer fall back to the Llama 2 defaults of config.json's
// model type (adding a "<s>" past the vocabulary) and stops llama.cpp's converter, so the
// directory also gets tokenizer_config.json and special_tokens_map.json, laid out as the real
// Llama 3.1 ones (models/llama3-tokenizer/): added_tokens_decoder from tokenizer.json, bos and
// eos as config.json names them, model_max_length = max_position_embeddings, and the chat
// template of a tokenizer_config.json next to the given file.
static json_object *added_tokens_decoder(const char *path, const char *text, size_t len) {
    json_tokener *tk = json_tokener_new();
    json_object *root = json_tokener_parse_ex(tk, text, (int)len), *added = NULL;
    json_tokener_free(tk);
    if (!root) die("--tokenizer %s: cannot parse", path);
    json_object *out = json_object_new_object();
    if (json_object_object_get_ex(root, "added_tokens", &added) && json_object_is_type(added, json_type_array)) {
        for (size_t i = 0; i < json_object_array_length(added); i++) {
            json_object *tok = json_object_array_get_idx(added, i), *id;
            if (!json_object_object_get_ex(tok, "id", &id)) die("--tokenizer %s: added_tokens[%zu] has no id", path, i);
            json_object *entry = json_object_new_object();
            json_object_object_foreach(tok, k, v)
                if (strcmp(k, "id")) json_object_object_add(entry, k, json_object_get(v));
            char key[32];
            snprintf(key, sizeof key, "%lld", (long long)json_object_get_int64(id));
            json_object_object_add(out, key, entry);
        }
    }
    json_object_put(root);
    return out;
}

static const char *special_token(const tokenizer *t, int id, const char *what, const char *path) {
    size_t len;
    const char *piece = tokenizer_piece(t, id, &len);
    if (!piece) die("--tokenizer %s: has no token %d (the model's %s)", path, id, what);
    return piece;
}

static void put_text(const out_dir *d, const char *name, json_object *o) {
    const char *text = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED |
                                                             JSON_C_TO_STRING_NOSLASHESCAPE);
    size_t len = strlen(text);
    char *buf = xmalloc(len + 2);
    memcpy(buf, text, len);
    buf[len] = '\n';
    llamoe_err err;
    if (out_dir_write(d, name, buf, len + 1, &err) != 0) die("%s", err.msg);
    free(buf);
}

static void write_tokenizer_files(const out_dir *d, const mk_options *o) {
    llamoe_err err;
    size_t len;
    char *text = read_text_file(o->tokenizer, (size_t)1 << 28, &len, &err);
    if (!text) die("--tokenizer: %s", err.msg);
    tokenizer *t = tokenizer_load_mem(o->tokenizer, text, len, &err);
    if (!t) die("--tokenizer: %s", err.msg);
    if (tokenizer_vocab_size(t) > o->vocab)
        die("--tokenizer %s: %d tokens, more than the model's vocabulary of %d", o->tokenizer, tokenizer_vocab_size(t), o->vocab);
    const char *bos = special_token(t, o->bos, "bos_token_id", o->tokenizer);
    const char *eos = special_token(t, o->eos, "eos_token_id", o->tokenizer);

    // What a tokenizer_config.json beside the file says about chat and decoding.
    char *dir_copy = xstrdup(o->tokenizer), beside[8192];
    snprintf(beside, sizeof beside, "%s/tokenizer_config.json", dirname(dir_copy));
    free(dir_copy);
    json_object *theirs = NULL, *chat_template = NULL, *cleanup = NULL;
    if (file_exists(beside)) {
        theirs = json_object_from_file(beside);
        if (!theirs || !json_object_is_type(theirs, json_type_object)) die("%s: cannot parse", beside);
        json_object_object_get_ex(theirs, "chat_template", &chat_template);
        json_object_object_get_ex(theirs, "clean_up_tokenization_spaces", &cleanup);
    }

    json_object *cfg = json_object_new_object();
    json_object_object_add(cfg, "added_tokens_decoder", added_tokens_decoder(o->tokenizer, text, len));
    json_object_object_add(cfg, "bos_token", json_object_new_string(bos));
    if (chat_template) json_object_object_add(cfg, "chat_template", json_object_get(chat_template));
    json_object_object_add(cfg, "clean_up_tokenization_spaces", cleanup ? json_object_get(cleanup) : json_object_new_boolean(0));
    json_object_object_add(cfg, "eos_token", json_object_new_string(eos));
    json_object *names = json_object_new_array();
    json_object_array_add(names, json_object_new_string("input_ids"));
    json_object_array_add(names, json_object_new_string("attention_mask"));
    json_object_object_add(cfg, "model_input_names", names);
    json_object_object_add(cfg, "model_max_length", json_object_new_int(o->max_pos));
    json_object_object_add(cfg, "tokenizer_class", json_object_new_string("PreTrainedTokenizerFast"));
    put_text(d, "tokenizer_config.json", cfg);
    json_object_put(cfg);

    json_object *map = json_object_new_object();
    json_object_object_add(map, "bos_token", json_object_new_string(bos));
    json_object_object_add(map, "eos_token", json_object_new_string(eos));
    put_text(d, "special_tokens_map.json", map);
    json_object_put(map);

    if (out_dir_write(d, "tokenizer.json", text, len, &err) != 0) die("%s", err.msg);
    if (theirs) json_object_put(theirs);
    tokenizer_free(t);
    free(text);
}

// ---------------------------------------------------------------------------- tensor list
typedef enum { INIT_ONES, INIT_PROJ, INIT_EMBED, INIT_HEAD } init_kind;

typedef struct {
    st_write_spec spec;
    char name[128];
    init_kind init;
    double std;       // of the values (not INIT_ONES)
    uint64_t seed;    // of the tensor's stream: from --seed and the name
    size_t elems, nbytes;
    int shard;
} mk_tensor;

static uint64_t tensor_seed(uint64_t seed, const char *name) {
    uint64_t h = 0xcbf29ce484222325ull;   // FNV-1a of the name
    for (const char *p = name; *p; p++) h = (h ^ (uint8_t)*p) * 0x100000001b3ull;
    return rng_derive(seed, h, 0);
}

static int add_tensor(mk_tensor *ts, int n, const mk_options *o, const char *name, init_kind init, int ndim,
                      int64_t d0, int64_t d1) {
    mk_tensor *t = &ts[n];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->spec.name = t->name;
    t->spec.dtype = o->dtype;
    t->spec.ndim = ndim;
    t->spec.shape[0] = d0;
    t->spec.shape[1] = d1;
    t->init = init;
    t->std = init == INIT_EMBED ? 1.0 : init == INIT_HEAD ? LOGIT_STD / sqrt((double)o->hidden)
           : init == INIT_PROJ ? 1.0 / sqrt((double)d1) : 0.0;
    t->seed = tensor_seed(o->seed, name);
    t->elems = (size_t)d0 * (size_t)(ndim == 2 ? d1 : 1);   // bounded by config_parse's limits
    CHECK(mul_ok(t->elems, dtype_size(o->dtype), &t->nbytes));
    return n + 1;
}

// Module order, as transformers saves them (models/llama-3.1-8b-config/tensors.json).
static int list_tensors(const llama_config *c, const mk_options *o, mk_tensor *ts) {
    int64_t h = c->hidden_size, f = c->intermediate_size, q = (int64_t)c->n_heads * c->head_dim,
            kv = (int64_t)c->n_kv_heads * c->head_dim;
    int n = 0;
    n = add_tensor(ts, n, o, "model.embed_tokens.weight", c->tie_word_embeddings ? INIT_HEAD : INIT_EMBED, 2,
                   c->vocab_size, h);
    for (int l = 0; l < c->n_layers; l++) {
        char p[128];
#define LAYER(suffix, init, nd, a, b) (snprintf(p, sizeof p, "model.layers.%d.%s", l, suffix), \
                                       n = add_tensor(ts, n, o, p, init, nd, a, b))
        LAYER("self_attn.q_proj.weight", INIT_PROJ, 2, q, h);
        LAYER("self_attn.k_proj.weight", INIT_PROJ, 2, kv, h);
        LAYER("self_attn.v_proj.weight", INIT_PROJ, 2, kv, h);
        LAYER("self_attn.o_proj.weight", INIT_PROJ, 2, h, q);
        LAYER("mlp.gate_proj.weight", INIT_PROJ, 2, f, h);
        LAYER("mlp.up_proj.weight", INIT_PROJ, 2, f, h);
        LAYER("mlp.down_proj.weight", INIT_PROJ, 2, h, f);
        LAYER("input_layernorm.weight", INIT_ONES, 1, h, 0);
        LAYER("post_attention_layernorm.weight", INIT_ONES, 1, h, 0);
#undef LAYER
    }
    n = add_tensor(ts, n, o, "model.norm.weight", INIT_ONES, 1, h, 0);
    if (!c->tie_word_embeddings) n = add_tensor(ts, n, o, "lm_head.weight", INIT_HEAD, 2, c->vocab_size, h);
    return n;
}

// Contiguous runs of tensors of roughly equal bytes; every shard gets at least one tensor.
// Tensor i goes to the shard its middle byte falls in, clamped so that shard numbers never
// decrease or skip and enough tensors remain for the shards still to fill.
static void assign_shards(mk_tensor *ts, int n, int shards) {
    size_t total = 0, before = 0;
    for (int i = 0; i < n; i++) total += ts[i].nbytes;
    int prev = 0;
    for (int i = 0; i < n; i++) {
        double mid = (double)before + 0.5 * (double)ts[i].nbytes;
        int s = total ? (int)(mid * shards / (double)total) : 0;
        int lo = prev > shards - (n - i) ? prev : shards - (n - i);
        int hi = i == 0 ? 0 : (prev + 1 < shards - 1 ? prev + 1 : shards - 1);
        s = s < lo ? lo : s > hi ? hi : s;
        ts[i].shard = prev = s;
        before += ts[i].nbytes;
    }
}

// ---------------------------------------------------------------------------- values
// The next value of the tensor's stream: rng_from(seed, i) then n calls give elements i..i+n-1.
static inline float next_value(rng_t *r, float scale) { return (float)rng_irwin_hall4(rng_next(r)) * scale; }

// Elements [first, first + n) of tensor t in its dtype. One loop per case, so that each
// compiles to vector code; the float value is the same in every case.
static void fill_chunk(const mk_tensor *t, size_t first, size_t n, int bf16_values, void *out) {
    dtype_t dt = t->spec.dtype;
    float *f = out;
    uint16_t *h = out;
    if (t->init == INIT_ONES) {
        for (size_t i = 0; i < n; i++)
            if (dt == DT_F32) f[i] = 1.0f;
            else h[i] = dt == DT_BF16 ? 0x3f80 : 0x3c00;
        return;
    }
    const float scale = (float)(t->std / RNG_IRWIN_HALL4_STD);
    rng_t r = rng_from(t->seed, first);
    if (dt == DT_BF16)
        for (size_t i = 0; i < n; i++) h[i] = f32_to_bf16(next_value(&r, scale));
    else if (dt == DT_F32 && !bf16_values)
        for (size_t i = 0; i < n; i++) f[i] = next_value(&r, scale);
    else if (dt == DT_F32)
        for (size_t i = 0; i < n; i++) f[i] = bf16_to_f32(f32_to_bf16(next_value(&r, scale)));
    else if (!bf16_values)
        for (size_t i = 0; i < n; i++) h[i] = f32_to_f16(next_value(&r, scale));
    else
        for (size_t i = 0; i < n; i++) h[i] = f32_to_f16(bf16_to_f32(f32_to_bf16(next_value(&r, scale))));
}

// ---------------------------------------------------------------------------- generator threads
// Chunk k (in file order) is filled by whichever generator claims it, into slot k % n_slots
// once the writer has written chunk k - n_slots; the writer takes the chunks in order.
typedef struct {
    int tensor;
    size_t first, n;
} mk_chunk;

typedef struct {
    const mk_tensor *ts;
    const mk_chunk *chunks;
    size_t n_chunks;
    int bf16_values;
    int n_slots;
    uint8_t **slots;
    size_t *slot_holds;      // 1 + the chunk a slot holds, filled; 0 while free or being filled
    size_t next, written;    // the next chunk to claim; chunks written so far
    pthread_mutex_t lock;
    pthread_cond_t changed;
} pipeline;

static void *generator(void *arg) {
    pipeline *p = arg;
    pthread_mutex_lock(&p->lock);
    for (size_t k; (k = p->next) < p->n_chunks;) {
        p->next++;
        while (k >= p->written + (size_t)p->n_slots) pthread_cond_wait(&p->changed, &p->lock);
        pthread_mutex_unlock(&p->lock);
        const mk_chunk *c = &p->chunks[k];
        fill_chunk(&p->ts[c->tensor], c->first, c->n, p->bf16_values, p->slots[k % (size_t)p->n_slots]);
        pthread_mutex_lock(&p->lock);
        p->slot_holds[k % (size_t)p->n_slots] = k + 1;
        pthread_cond_broadcast(&p->changed);
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

static const void *pipeline_take(pipeline *p, size_t k) {
    pthread_mutex_lock(&p->lock);
    while (p->slot_holds[k % (size_t)p->n_slots] != k + 1) pthread_cond_wait(&p->changed, &p->lock);
    pthread_mutex_unlock(&p->lock);
    return p->slots[k % (size_t)p->n_slots];
}

static void pipeline_release(pipeline *p, size_t k) {
    pthread_mutex_lock(&p->lock);
    p->slot_holds[k % (size_t)p->n_slots] = 0;
    p->written = k + 1;
    pthread_cond_broadcast(&p->changed);
    pthread_mutex_unlock(&p->lock);
}

// ---------------------------------------------------------------------------- writing weights
typedef struct {
    size_t done, total;
    double start, last_print;
    int tty;
} progress;

static void progress_update(progress *p, size_t add, int final) {
    p->done += add;
    if (!p->tty) return;
    double now = now_seconds();
    if (!final && now - p->last_print < 0.2) return;
    p->last_print = now;
    double mb = (double)p->done / 1e6;
    fprintf(stderr, "\rllamoe-mkmodel: %.0f / %.0f MB (%.0f MB/s)%s", mb, (double)p->total / 1e6,
            mb / (now - p->start + 1e-9), final ? "\n" : "");
}

// Shard s of `shards` (from 0), as Hugging Face names them; one shard is model.safetensors.
static void shard_name(char *name, size_t cap, int s, int shards) {
    if (shards == 1) snprintf(name, cap, "model.safetensors");
    else snprintf(name, cap, "model-%05d-of-%05d.safetensors", s + 1, shards);
}

// Writes every shard: the generators fill chunks, this thread writes them in order.
static void write_weights(const out_dir *d, const mk_tensor *ts, int n, const mk_options *o, progress *prog) {
    pipeline p = {.ts = ts, .bf16_values = o->bf16_values};
    for (int i = 0; i < n; i++) p.n_chunks += (ts[i].elems + CHUNK_ELEMS - 1) / CHUNK_ELEMS;
    mk_chunk *chunks = xcalloc(p.n_chunks, sizeof *chunks);
    size_t k = 0;
    for (int i = 0; i < n; i++)
        for (size_t at = 0; at < ts[i].elems; at += CHUNK_ELEMS)
            chunks[k++] = (mk_chunk){i, at, ts[i].elems - at < CHUNK_ELEMS ? ts[i].elems - at : CHUNK_ELEMS};
    p.chunks = chunks;
    p.n_slots = 2 * o->threads + 2;   // every generator busy while the writer holds one
    p.slots = xcalloc((size_t)p.n_slots, sizeof *p.slots);
    p.slot_holds = xcalloc((size_t)p.n_slots, sizeof *p.slot_holds);
    for (int s = 0; s < p.n_slots; s++) p.slots[s] = xmalloc(CHUNK_ELEMS * dtype_size(o->dtype));
    CHECK(pthread_mutex_init(&p.lock, NULL) == 0 && pthread_cond_init(&p.changed, NULL) == 0);
    pthread_t *threads = xcalloc((size_t)o->threads, sizeof *threads);
    for (int t = 0; t < o->threads; t++) CHECK(pthread_create(&threads[t], NULL, generator, &p) == 0);

    llamoe_err err;
    k = 0;
    for (int s = 0, first = 0; s < o->shards; s++) {
        int last = first;
        while (last < n && ts[last].shard == s) last++;
        st_write_spec *specs = xcalloc((size_t)(last - first), sizeof *specs);
        for (int i = first; i < last; i++) specs[i - first] = ts[i].spec;
        char name[64];
        shard_name(name, sizeof name, s, o->shards);
        char *path = out_dir_file(d, name);
        st_writer *w = st_writer_open(path, specs, last - first, NULL, &err);
        free(specs);
        free(path);
        if (!w) die("%s", err.msg);
        write_behind wb;
        write_behind_init(&wb, st_writer_fd(w));
        for (; k < p.n_chunks && chunks[k].tensor < last; k++) {
            size_t bytes = chunks[k].n * dtype_size(o->dtype);
            if (st_writer_put(w, pipeline_take(&p, k), bytes, &err) != 0) die("%s", err.msg);
            pipeline_release(&p, k);
            write_behind_add(&wb, bytes);
            progress_update(prog, bytes, 0);
        }
        if (st_writer_close(w, 1, &err) != 0) die("%s", err.msg);
        first = last;
    }
    for (int t = 0; t < o->threads; t++) pthread_join(threads[t], NULL);
    free(threads);
    pthread_cond_destroy(&p.changed);
    pthread_mutex_destroy(&p.lock);
    for (int s = 0; s < p.n_slots; s++) free(p.slots[s]);
    free(p.slots);
    free(p.slot_holds);
    free(chunks);
}

static void write_index(const out_dir *d, const mk_tensor *ts, int n, int shards, size_t total) {
    char (*shard_names)[64] = xcalloc((size_t)shards, sizeof *shard_names);
    const char **names = xcalloc((size_t)n, sizeof *names), **shard_of = xcalloc((size_t)n, sizeof *shard_of);
    for (int s = 0; s < shards; s++) shard_name(shard_names[s], sizeof shard_names[s], s, shards);
    for (int i = 0; i < n; i++) { names[i] = ts[i].name; shard_of[i] = shard_names[ts[i].shard]; }
    llamoe_err err;
    if (st_write_index(d->tmp, names, shard_of, n, total, &err) != 0) die("%s", err.msg);
    free(names);
    free(shard_of);
    free(shard_names);
}

int main(int argc, char **argv) {
    mk_options o;
    parse_args(&o, argc, argv);

    char cfg_text[4096];
    format_config(&o, cfg_text, sizeof cfg_text);
    llama_config cfg;
    llamoe_err err;
    if (config_parse(&cfg, "config.json", cfg_text, &err) != 0) die("these options make a bad model: %s", err.msg);
    if (o.tokenizer && !file_exists(o.tokenizer)) die("--tokenizer: %s does not exist", o.tokenizer);

    int max_tensors = 3 + 9 * cfg.n_layers;
    mk_tensor *ts = xcalloc((size_t)max_tensors, sizeof *ts);
    int n = list_tensors(&cfg, &o, ts);
    if (o.shards > n) die("--shards %d is more than the %d tensors", o.shards, n);
    assign_shards(ts, n, o.shards);

    double start = now_seconds();
    out_dir d;
    if (out_dir_open(&d, o.out, o.force, &err) != 0) die("%s", err.msg);
    if (out_dir_write(&d, "config.json", cfg_text, strlen(cfg_text), &err) != 0) die("%s", err.msg);
    char gen[256];
    snprintf(gen, sizeof gen, "{\n  \"bos_token_id\": %d,\n  \"eos_token_id\": %d,\n  \"do_sample\": false\n}\n",
             o.bos, o.eos);
    if (out_dir_write(&d, "generation_config.json", gen, strlen(gen), &err) != 0) die("%s", err.msg);
    if (o.tokenizer) write_tokenizer_files(&d, &o);

    progress prog = {0, 0, now_seconds(), 0, isatty(2)};
    for (int i = 0; i < n; i++) prog.total += ts[i].nbytes;
    write_weights(&d, ts, n, &o, &prog);
    if (o.shards > 1) write_index(&d, ts, n, o.shards, prog.total);
    progress_update(&prog, 0, 1);
    free(ts);
    if (out_dir_commit(&d, &err) != 0) die("%s", err.msg);
    double secs = now_seconds() - start;
    fprintf(stderr, "llamoe-mkmodel: wrote %s: %d layers, hidden %d, vocab %d, %s, %d file%s, %.1f MB in %.1f s "
            "(%.0f MB/s, %d threads)\n", o.out, cfg.n_layers, cfg.hidden_size, cfg.vocab_size, dtype_name(o.dtype),
            o.shards, o.shards > 1 ? "s" : "", (double)prog.total / 1e6, secs, (double)prog.total / 1e6 / secs, o.threads);
    return 0;
}
