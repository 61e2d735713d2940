// llamoe-mkmodel: writes a synthetic Hugging Face Llama model directory with seeded random
// weights (config.json, generation_config.json, model.safetensors or N shards + index).
//
// Tensors are generated and written one chunk at a time, so even the 8B-shape embedding
// (1 GB at BF16) never sits in memory. Each tensor has its own random stream, seeded from
// --seed and the tensor's name, so the values do not depend on dtype, sharding or on which
// other tensors exist: the same --seed written as F32 --bf16-values and as BF16 --shards 3
// holds bit-identical weights.
//
// Initialisation (chosen so that greedy decoding of a random model is meaningful):
//   - RMSNorm weights are 1.
//   - Projections (q, k, v, o, gate, up, down) are N(0, 1/fan_in): a unit-RMS input gives
//     unit-scale outputs, so the residual stream grows only slowly with depth and attention
//     scores q.k/sqrt(head_dim) have a std of about 1 (soft, but position- and token-dependent).
//   - The embedding is N(0, 1) when untied, so the current token stays visible in the residual.
//   - The LM head is N(0, LOGIT_STD^2 / hidden): the final RMSNorm gives a unit-RMS vector, so
//     each logit is a sum of hidden terms with std LOGIT_STD overall. With logits of std 8
//     over a vocabulary V, the expected gap between the top two logits is about
//     8 / sqrt(2 ln V) (1.7 at V = 128256, 2.3 at V = 512): far above float32 rounding, so
//     greedy tokens are stable across backends except on rare near-ties. Tied models use the
//     LM head's scale for the shared matrix.
#include "runtime/config.h"
#include "runtime/safetensors.h"

#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define LOGIT_STD 8.0
#define CHUNK_ELEMS ((size_t)1 << 20)

// ---------------------------------------------------------------------------- random numbers
// splitmix64 seeds xoshiro256**; Box-Muller turns uniforms into normals. Explicit so that the
// same seed gives the same model on every platform and libc.
typedef struct { uint64_t s[4]; } rng_t;

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t rng_next(rng_t *r) {
    uint64_t *s = r->s, result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

static rng_t rng_for_tensor(uint64_t seed, const char *name) {
    uint64_t h = 0xcbf29ce484222325ull;   // FNV-1a of the name
    for (const char *p = name; *p; p++) h = (h ^ (uint8_t)*p) * 0x100000001b3ull;
    uint64_t x = seed ^ h;
    rng_t r;
    for (int i = 0; i < 4; i++) r.s[i] = splitmix64(&x);
    return r;
}

static double uniform01(rng_t *r) { return (double)(rng_next(r) >> 11) * 0x1.0p-53; }   // [0, 1)

// Fills n standard normals (n even or odd).
static void fill_normal(rng_t *r, float *out, size_t n, double std) {
    for (size_t i = 0; i < n; i += 2) {
        double u1 = 1.0 - uniform01(r), u2 = uniform01(r);   // u1 in (0, 1]: log is finite
        double rad = sqrt(-2.0 * log(u1)) * std, ang = 2.0 * M_PI * u2;
        out[i] = (float)(rad * cos(ang));
        if (i + 1 < n) out[i + 1] = (float)(rad * sin(ang));
    }
}

// ---------------------------------------------------------------------------- options
typedef struct {
    const char *out, *tokenizer, *preset;
    int hidden, ffn, layers, heads, kv_heads, vocab, max_pos, head_dim;   // head_dim 0: hidden/heads
    double rope_theta, rms_eps;
    int rope_llama3, rope_orig_max_pos;
    dtype_t dtype;
    int shards, tie, bf16_values, force;
    uint64_t seed;
    int bos, eos;
} mk_options;

static void usage(FILE *f) {
    fprintf(f,
        "usage: llamoe-mkmodel -o DIR [--preset tiny|llama3.1-8b] [--hidden N] [--ffn N] [--layers N]\n"
        "         [--heads N] [--kv-heads N] [--vocab N] [--max-pos N] [--head-dim N] [--rope-theta X]\n"
        "         [--dtype F32|BF16|F16] [--shards N] [--seed S] [--rope-llama3] [--tie] [--bf16-values]\n"
        "         [--tokenizer FILE] [--force]\n"
        "Writes a Hugging Face Llama directory with seeded random weights. The directory is built\n"
        "as DIR.tmp.<pid> and renamed to DIR at the end; an existing DIR is an error without --force.\n"
        "--bf16-values rounds every weight to a bf16-representable value (for F32/BF16 parity).\n");
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
    } else die("unknown preset \"%s\" (tiny, llama3.1-8b)", name);
    o->preset = name;
}

static int parse_int(const char *opt, const char *s, long lo, long hi) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) die("%s: \"%s\" is not an integer in [%ld, %ld]", opt, s, lo, hi);
    return (int)v;
}

static void parse_args(mk_options *o, int argc, char **argv) {
    enum { O_PRESET = 256, O_HIDDEN, O_FFN, O_LAYERS, O_HEADS, O_KV, O_VOCAB, O_MAXPOS, O_HEADDIM, O_THETA,
           O_DTYPE, O_SHARDS, O_SEED, O_ROPE, O_TIE, O_BF16V, O_TOK, O_FORCE, O_HELP };
    static const struct option longs[] = {
        {"preset", 1, 0, O_PRESET}, {"hidden", 1, 0, O_HIDDEN}, {"ffn", 1, 0, O_FFN}, {"layers", 1, 0, O_LAYERS},
        {"heads", 1, 0, O_HEADS}, {"kv-heads", 1, 0, O_KV}, {"vocab", 1, 0, O_VOCAB}, {"max-pos", 1, 0, O_MAXPOS},
        {"head-dim", 1, 0, O_HEADDIM}, {"rope-theta", 1, 0, O_THETA}, {"dtype", 1, 0, O_DTYPE},
        {"shards", 1, 0, O_SHARDS}, {"seed", 1, 0, O_SEED}, {"rope-llama3", 0, 0, O_ROPE}, {"tie", 0, 0, O_TIE},
        {"bf16-values", 0, 0, O_BF16V}, {"tokenizer", 1, 0, O_TOK}, {"force", 0, 0, O_FORCE},
        {"help", 0, 0, O_HELP}, {0, 0, 0, 0}};
    memset(o, 0, sizeof *o);
    o->dtype = DT_F32;
    o->shards = 1;
    o->seed = 1234;
    set_preset(o, "tiny");
    // The preset goes first whatever its place, so that dimension flags override it.
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--preset")) set_preset(o, argv[i + 1]);
        else if (!strncmp(argv[i], "--preset=", 9)) set_preset(o, argv[i] + 9);
    int c;
    const long big = 1L << 30;
    while ((c = getopt_long(argc, argv, "o:h", longs, NULL)) != -1) {
        switch (c) {
        case 'o': o->out = optarg; break;
        case O_PRESET: break;
        case O_HIDDEN: o->hidden = parse_int("--hidden", optarg, 1, big); break;
        case O_FFN: o->ffn = parse_int("--ffn", optarg, 1, big); break;
        case O_LAYERS: o->layers = parse_int("--layers", optarg, 1, big); break;
        case O_HEADS: o->heads = parse_int("--heads", optarg, 1, big); break;
        case O_KV: o->kv_heads = parse_int("--kv-heads", optarg, 1, big); break;
        case O_VOCAB: o->vocab = parse_int("--vocab", optarg, 1, big); break;
        case O_MAXPOS: o->max_pos = parse_int("--max-pos", optarg, 1, big); break;
        case O_HEADDIM: o->head_dim = parse_int("--head-dim", optarg, 1, big); break;
        case O_THETA: {
            char *end;
            o->rope_theta = strtod(optarg, &end);
            if (end == optarg || *end || !(o->rope_theta >= 1.0)) die("--rope-theta: \"%s\" is not a number >= 1", optarg);
            break;
        }
        case O_DTYPE:
            if (dtype_parse(optarg, &o->dtype) != 0) die("--dtype: \"%s\" is not F32, BF16 or F16", optarg);
            break;
        case O_SHARDS: o->shards = parse_int("--shards", optarg, 1, 99999); break;
        case O_SEED: {
            char *end;
            errno = 0;
            o->seed = strtoull(optarg, &end, 0);
            if (errno || end == optarg || *end) die("--seed: \"%s\" is not an integer", optarg);
            break;
        }
        case O_ROPE: o->rope_llama3 = 1; break;
        case O_TIE: o->tie = 1; break;
        case O_BF16V: o->bf16_values = 1; break;
        case O_TOK: o->tokenizer = optarg; break;
        case O_FORCE: o->force = 1; break;
        case 'h': case O_HELP: usage(stdout); exit(0);
        default: usage(stderr); exit(2);
        }
    }
    if (optind < argc) die("unexpected argument \"%s\" (see --help)", argv[optind]);
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
        "  \"llamoe_synthetic\": {\"seed\": %llu, \"bf16_values\": %s, \"preset\": \"%s\"}\n"
        "}\n",
        o->hidden, o->ffn, o->layers, o->heads, o->kv_heads, o->head_dim, o->vocab, o->max_pos, o->rms_eps,
        o->rope_theta, rope, o->tie ? "true" : "false", torch_dtype, o->bos, o->eos,
        (unsigned long long)o->seed, o->bf16_values ? "true" : "false", o->preset);
    CHECK(n > 0 && (size_t)n < cap);
}

static void write_file(const char *dir, const char *name, const void *data, size_t len) {
    char path[8192];
    if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, name) >= sizeof path) die("%s/%s: path too long", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) die("%s: cannot create: %s", path, strerror(errno));
    if (fwrite(data, 1, len, f) != len || fflush(f) != 0 || fsync(fileno(f)) != 0)
        die("%s: write failed: %s", path, strerror(errno));
    if (fclose(f) != 0) die("%s: close failed: %s", path, strerror(errno));
}

// ---------------------------------------------------------------------------- tensor list
typedef enum { INIT_ONES, INIT_PROJ, INIT_EMBED, INIT_HEAD } init_kind;

typedef struct {
    st_write_spec spec;
    char name[128];
    init_kind init;
    size_t nbytes;
    int shard;
} mk_tensor;

static int add_tensor(mk_tensor *ts, int n, const char *name, init_kind init, dtype_t dt, int ndim, int64_t d0, int64_t d1) {
    mk_tensor *t = &ts[n];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->spec.name = t->name;
    t->spec.dtype = dt;
    t->spec.ndim = ndim;
    t->spec.shape[0] = d0;
    t->spec.shape[1] = d1;
    t->init = init;
    size_t elems = (size_t)d0 * (size_t)(ndim == 2 ? d1 : 1);   // bounded by config_parse's limits
    CHECK(mul_ok(elems, dtype_size(dt), &t->nbytes));
    return n + 1;
}

// Module order, as transformers saves them (models/llama-3.1-8b-config/tensors.json).
static int list_tensors(const llama_config *c, dtype_t dt, mk_tensor *ts) {
    int64_t h = c->hidden_size, f = c->intermediate_size, q = (int64_t)c->n_heads * c->head_dim,
            kv = (int64_t)c->n_kv_heads * c->head_dim;
    int n = 0;
    n = add_tensor(ts, n, "model.embed_tokens.weight", c->tie_word_embeddings ? INIT_HEAD : INIT_EMBED, dt, 2,
                   c->vocab_size, h);
    for (int l = 0; l < c->n_layers; l++) {
        char p[128];
#define LAYER(suffix, init, nd, a, b) (snprintf(p, sizeof p, "model.layers.%d.%s", l, suffix), \
                                       n = add_tensor(ts, n, p, init, dt, nd, a, b))
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
    n = add_tensor(ts, n, "model.norm.weight", INIT_ONES, dt, 1, h, 0);
    if (!c->tie_word_embeddings) n = add_tensor(ts, n, "lm_head.weight", INIT_HEAD, dt, 2, c->vocab_size, h);
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

// Streams one tensor's values into w, CHUNK_ELEMS at a time.
static void write_tensor(st_writer *w, const mk_tensor *t, const mk_options *o, int hidden, float *vals,
                         void *out, progress *prog) {
    size_t elems = t->nbytes / dtype_size(t->spec.dtype);
    double std = t->init == INIT_EMBED ? 1.0
               : t->init == INIT_HEAD ? LOGIT_STD / sqrt((double)hidden)
               : t->init == INIT_PROJ ? 1.0 / sqrt((double)t->spec.shape[1]) : 0.0;
    rng_t rng = rng_for_tensor(o->seed, t->name);
    llamoe_err err;
    for (size_t at = 0; at < elems; at += CHUNK_ELEMS) {
        size_t n = elems - at < CHUNK_ELEMS ? elems - at : CHUNK_ELEMS;
        if (t->init == INIT_ONES) for (size_t i = 0; i < n; i++) vals[i] = 1.0f;
        else fill_normal(&rng, vals, n, std);
        if (t->spec.dtype == DT_F32) {
            if (o->bf16_values)
                for (size_t i = 0; i < n; i++) vals[i] = bf16_to_f32(f32_to_bf16(vals[i]));
            memcpy(out, vals, n * 4);
        } else {
            uint16_t *h = out;
            if (t->spec.dtype == DT_BF16) for (size_t i = 0; i < n; i++) h[i] = f32_to_bf16(vals[i]);
            else for (size_t i = 0; i < n; i++) h[i] = f32_to_f16(o->bf16_values ? bf16_to_f32(f32_to_bf16(vals[i])) : vals[i]);
        }
        size_t bytes = n * dtype_size(t->spec.dtype);
        if (st_writer_put(w, out, bytes, &err) != 0) die("%s", err.msg);
        progress_update(prog, bytes, 0);
    }
}

// Writes the tensors of one shard through one writer.
static void write_shard(const char *path, mk_tensor *ts, int n, int shard, const mk_options *o, int hidden,
                        float *vals, void *out, progress *prog) {
    st_write_spec *specs = xcalloc((size_t)n, sizeof *specs);
    int k = 0;
    for (int i = 0; i < n; i++)
        if (ts[i].shard == shard) specs[k++] = ts[i].spec;
    llamoe_err err;
    st_writer *w = st_writer_open(path, specs, k, NULL, &err);
    free(specs);
    if (!w) die("%s", err.msg);
    for (int i = 0; i < n; i++)
        if (ts[i].shard == shard) write_tensor(w, &ts[i], o, hidden, vals, out, prog);
    if (st_writer_close(w, 1, &err) != 0) die("%s", err.msg);
}

// ---------------------------------------------------------------------------- the directory
// Built under DIR.tmp.<pid>; removed on any exit that did not rename it into place.
static char tmp_dir[4096];
static int committed;

// Removes the regular files in a directory, then the directory. Refuses (returns -1) if it
// holds anything else, since these are our own flat model directories.
static int remove_flat_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    struct dirent *e;
    char p[8192];
    int rc = 0;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        struct stat st;
        if (lstat(p, &st) != 0 || !S_ISREG(st.st_mode) || unlink(p) != 0) rc = -1;
    }
    closedir(d);
    return rc == 0 ? rmdir(dir) : -1;
}

static void cleanup_tmp_dir(void) {
    if (tmp_dir[0] && !committed) remove_flat_dir(tmp_dir);
}

static void copy_tokenizer(const char *src, const char *dir) {
    llamoe_err err;
    size_t len;
    char *text = read_text_file(src, (size_t)1 << 28, &len, &err);
    if (!text) die("--tokenizer: %s", err.msg);
    write_file(dir, "tokenizer.json", text, len);
    free(text);
}

// Renames tmp_dir to out. With --force an existing directory is moved aside first and removed
// after the new one is in place.
static void commit_dir(const mk_options *o) {
    struct stat st;
    char old[4200] = "";
    if (lstat(o->out, &st) == 0) {
        if (!o->force) die("%s already exists (use --force to replace it)", o->out);
        if (!S_ISDIR(st.st_mode)) die("%s exists and is not a directory", o->out);
        snprintf(old, sizeof old, "%s.old.%ld", o->out, (long)getpid());
        if (rename(o->out, old) != 0) die("cannot move %s aside: %s", o->out, strerror(errno));
    }
    if (rename(tmp_dir, o->out) != 0) die("cannot rename %s to %s: %s", tmp_dir, o->out, strerror(errno));
    committed = 1;
    if (old[0] && remove_flat_dir(old) != 0)
        fprintf(stderr, "llamoe-mkmodel: warning: left the old model at %s (it holds more than files)\n", old);
}

int main(int argc, char **argv) {
    mk_options o;
    parse_args(&o, argc, argv);

    char cfg_text[4096];
    format_config(&o, cfg_text, sizeof cfg_text);
    llama_config cfg;
    llamoe_err err;
    if (config_parse(&cfg, "config.json", cfg_text, &err) != 0) die("these options make a bad model: %s", err.msg);

    struct stat st;
    if (lstat(o.out, &st) == 0 && !o.force) die("%s already exists (use --force to replace it)", o.out);
    if (o.tokenizer && !file_exists(o.tokenizer)) die("--tokenizer: %s does not exist", o.tokenizer);

    int max_tensors = 3 + 9 * cfg.n_layers;
    mk_tensor *ts = xcalloc((size_t)max_tensors, sizeof *ts);
    int n = list_tensors(&cfg, o.dtype, ts);
    if (o.shards > n) die("--shards %d is more than the %d tensors", o.shards, n);
    assign_shards(ts, n, o.shards);

    snprintf(tmp_dir, sizeof tmp_dir, "%s.tmp.%ld", o.out, (long)getpid());
    if (mkdir(tmp_dir, 0755) != 0) die("cannot create %s: %s", tmp_dir, strerror(errno));
    atexit(cleanup_tmp_dir);

    write_file(tmp_dir, "config.json", cfg_text, strlen(cfg_text));
    char gen[256];
    snprintf(gen, sizeof gen, "{\n  \"bos_token_id\": %d,\n  \"eos_token_id\": %d,\n  \"do_sample\": false\n}\n",
             o.bos, o.eos);
    write_file(tmp_dir, "generation_config.json", gen, strlen(gen));
    if (o.tokenizer) copy_tokenizer(o.tokenizer, tmp_dir);

    progress prog = {0, 0, now_seconds(), 0, isatty(2)};
    for (int i = 0; i < n; i++) prog.total += ts[i].nbytes;
    float *vals = xmalloc(CHUNK_ELEMS * sizeof *vals);
    void *out = xmalloc(CHUNK_ELEMS * 4);
    char path[8192];
    if (o.shards == 1) {
        snprintf(path, sizeof path, "%s/model.safetensors", tmp_dir);
        write_shard(path, ts, n, 0, &o, cfg.hidden_size, vals, out, &prog);
    } else {
        char (*shard_names)[64] = xcalloc((size_t)o.shards, sizeof *shard_names);
        const char **names = xcalloc((size_t)n, sizeof *names), **shard_of = xcalloc((size_t)n, sizeof *shard_of);
        for (int s = 0; s < o.shards; s++) {
            snprintf(shard_names[s], sizeof shard_names[s], "model-%05d-of-%05d.safetensors", s + 1, o.shards);
            snprintf(path, sizeof path, "%s/%s", tmp_dir, shard_names[s]);
            write_shard(path, ts, n, s, &o, cfg.hidden_size, vals, out, &prog);
        }
        for (int i = 0; i < n; i++) { names[i] = ts[i].name; shard_of[i] = shard_names[ts[i].shard]; }
        if (st_write_index(tmp_dir, names, shard_of, n, prog.total, &err) != 0) die("%s", err.msg);
        free(names);
        free(shard_of);
        free(shard_names);
    }
    progress_update(&prog, 0, 1);
    free(vals);
    free(out);
    free(ts);

    commit_dir(&o);
    fprintf(stderr, "llamoe-mkmodel: wrote %s: %d layers, hidden %d, vocab %d, %s, %d file%s, %.1f MB\n", o.out,
            cfg.n_layers, cfg.hidden_size, cfg.vocab_size, dtype_name(o.dtype), o.shards, o.shards > 1 ? "s" : "",
            (double)prog.total / 1e6);
    return 0;
}
