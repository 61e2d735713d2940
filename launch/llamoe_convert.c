// llamoe-convert: a dense Llama directory -> a Hugging Face Mixtral directory for a MoE mode.
//   llamoe-convert -m DENSE --moe identity:8|upcycle:8:2|production:8:2 -o OUT [--seed S]
//                  [--drop R] [--shard-gb G] [--force]
// The experts and routers are exactly those the runtime builds on the fly (same code, same
// seeds), so the converted checkpoint gives the same tokens. Identity export: the gate is
// zero and k = E, so every weight is 1/E; each slice's w2 is scaled by E to compensate (exact
// for E a power of two, see docs/parity.md) and zero-padded to the widest slice. Expert widths
// are padded to a multiple of 8 (transformers 5 needs 16-byte rows).
#include <getopt.h>
#include <json-c/json.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/args.h"
#include "base/outdir.h"
#include "runtime/model.h"

typedef struct {
    char name[160];
    dtype_t dtype;
    int64_t rows, cols;        // 1-D tensors: rows = n, cols = 0
    weight_t src;              // source view (rows x cols of src may be fewer: zero padding)
    float scale;               // applied to every value (1: a byte copy when dtypes agree)
    size_t nbytes;
    int shard;
} out_tensor;

static size_t tensor_bytes(const out_tensor *t) {
    return (size_t)t->rows * (size_t)(t->cols ? t->cols : 1) * dtype_size(t->dtype);
}

// Appends one tensor taken from the checkpoint as it is.
static void add_copy(out_tensor **v, int *n, const st_set *st, const char *name) {
    const st_tensor *t = st_find(st, name);
    if (!t) die("%s: tensor missing", name);
    *v = xrealloc(*v, (size_t)(*n + 1) * sizeof(out_tensor));
    out_tensor *o = &(*v)[(*n)++];
    memset(o, 0, sizeof *o);
    snprintf(o->name, sizeof o->name, "%s", name);
    o->dtype = t->dtype;
    o->rows = t->ndim >= 1 ? t->shape[0] : 1;
    o->cols = t->ndim == 2 ? t->shape[1] : 0;
    o->src = (weight_t){.data = t->data, .dtype = t->dtype, .rows = o->rows, .cols = o->cols ? o->cols : 1,
                        .ld = o->cols ? o->cols : 1};
    if (t->ndim == 1) { o->src.rows = 1; o->src.cols = o->rows; o->src.ld = o->rows; }
    o->scale = 1.0f;
    o->nbytes = tensor_bytes(o);
}

static void add_matrix(out_tensor **v, int *n, const char *name, dtype_t dt, int64_t rows, int64_t cols,
                       weight_t src, float scale) {
    *v = xrealloc(*v, (size_t)(*n + 1) * sizeof(out_tensor));
    out_tensor *o = &(*v)[(*n)++];
    memset(o, 0, sizeof *o);
    snprintf(o->name, sizeof o->name, "%s", name);
    o->dtype = dt;
    o->rows = rows;
    o->cols = cols;
    o->src = src;
    o->scale = scale;
    o->nbytes = tensor_bytes(o);
}

// Streams one tensor into the writer, row by row: source rows/cols beyond the view are zero.
static int put_tensor(st_writer *w, write_behind *wb, const out_tensor *t, llamoe_err *err) {
    int64_t cols = t->cols ? t->cols : t->rows, rows = t->cols ? t->rows : 1;
    size_t out_row = (size_t)cols * dtype_size(t->dtype);
    uint8_t *buf = xcalloc(1, out_row);
    float *f = xmalloc((size_t)cols * sizeof(float));
    int rc = 0;
    for (int64_t r = 0; r < rows && rc == 0; r++) {
        memset(f, 0, (size_t)cols * sizeof(float));
        if (r < t->src.rows && t->src.data)
            to_f32(f, (const uint8_t *)t->src.data + (size_t)(r * t->src.ld) * dtype_size(t->src.dtype),
                   t->src.dtype, (size_t)t->src.cols);
        for (int64_t c = 0; c < cols; c++) {
            float x = f[c] * t->scale;
            if (t->dtype == DT_F32) ((float *)buf)[c] = x;
            else ((uint16_t *)buf)[c] = t->dtype == DT_BF16 ? f32_to_bf16(x) : f32_to_f16(x);
        }
        rc = st_writer_put(w, buf, out_row, err);
        write_behind_add(wb, out_row);
    }
    free(buf);
    free(f);
    return rc;
}

static void write_json(const out_dir *d, const char *name, json_object *o) {
    const char *text = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE);
    llamoe_err err;
    if (out_dir_write(d, name, text, strlen(text), &err) != 0) die("%s", err.msg);
}

static void copy_file_if_present(const char *from_dir, const out_dir *d, const char *name) {
    char from[8192];   // room for any directory (4096) plus the name: no truncation
    snprintf(from, sizeof from, "%s/%s", from_dir, name);
    if (!file_exists(from)) return;
    llamoe_err err;
    size_t len;
    char *text = read_text_file(from, 1u << 30, &len, &err);
    if (!text || out_dir_write(d, name, text, len, &err) != 0) die("%s", err.msg);
    free(text);
}

static void usage(FILE *f) {
    fprintf(f, "usage: llamoe-convert -m DENSE_DIR --moe MODE -o OUT_DIR [--seed S] [--drop R] [--shard-gb G] [--force]\n"
               "Writes a Hugging Face Mixtral directory: MODE identity:E, upcycle:E:k or production:E:k; --seed\n"
               "and --drop (production: fraction of each expert's neurons re-drawn) as llamoe-ep takes them;\n"
               "shards of at most G GB (default 5). OUT_DIR is built as OUT_DIR.tmp.<pid> and renamed at the\n"
               "end; an existing OUT_DIR is an error without --force. Tokenizer and generation files are\n"
               "copied from DENSE_DIR.\n");
}

typedef struct {
    const char *in, *out, *mode;
    uint64_t seed;
    float drop;
    double shard_gb;
    int force;
} convert_options;

static void parse_args(convert_options *o, int argc, char **argv) {
    *o = (convert_options){.seed = 1234, .drop = 0.5f, .shard_gb = 5.0};
    enum { O_MOE = 256, O_SEED, O_DROP, O_SHARD_GB, O_FORCE };
    static const struct option longs[] = {
        {"moe", 1, 0, O_MOE}, {"seed", 1, 0, O_SEED}, {"drop", 1, 0, O_DROP}, {"shard-gb", 1, 0, O_SHARD_GB},
        {"force", 0, 0, O_FORCE}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    llamoe_err err;
    int c, rc = 0;
    opterr = 0;
    while (rc == 0 && (c = getopt_long(argc, argv, ":m:o:h", longs, NULL)) != -1) {
        switch (c) {
        case 'm': o->in = optarg; break;
        case 'o': o->out = optarg; break;
        case O_MOE: o->mode = optarg; break;
        case O_SEED: rc = arg_u64("--seed", optarg, 0, UINT64_MAX, &o->seed, &err); break;
        case O_DROP: rc = arg_float("--drop", optarg, 0.0f, 1.0f, &o->drop, &err); break;
        case O_SHARD_GB: rc = arg_positive("--shard-gb", optarg, 1e6, &o->shard_gb, &err); break;
        case O_FORCE: o->force = 1; break;
        case 'h': usage(stdout); exit(0);
        default: rc = arg_getopt_error(c, argv, &err); break;
        }
    }
    if (rc != 0) die("%s", err.msg);
    if (optind < argc) die("%s: unexpected argument (see --help)", argv[optind]);
    if (!o->in || !o->out || !o->mode) die("-m, --moe and -o are required (see --help)");
}

int main(int argc, char **argv) {
    convert_options opt;
    parse_args(&opt, argc, argv);
    const char *in = opt.in, *out = opt.out;
    llamoe_err err;
    moe_mode mode;
    if (moe_mode_parse(opt.mode, &mode, &err) != 0) die("%s", err.msg);
    if (mode.kind == MOE_DENSE) die("--moe dense: nothing to convert");
    mode.seed = opt.seed;
    mode.drop = opt.drop;
    struct stat sb;
    if (lstat(out, &sb) == 0 && !opt.force) die("%s: already exists (use --force to replace it)", out);

    model m;
    backend *cpu = backend_cpu_new(NULL);
    if (model_load(&m, in, &mode, cpu, 0, 1, &err) != 0) die("%s", err.msg);
    const llama_config *c = &m.cfg;
    int E = mode.n_experts, k = mode.top_k, d = c->hidden_size, I = c->intermediate_size;
    int identity = mode.kind == MOE_IDENTITY;
    // Mixtral needs one width: slices are padded to the widest, and every width to a multiple
    // of 8 values, since transformers 5 runs experts through torch's grouped_mm, which refuses
    // rows that are not a multiple of 16 bytes. Zero neurons add exactly zero.
    int width = identity ? (I + E - 1) / E : I;
    width = (width + 7) / 8 * 8;

    // Every output tensor in order: the non-FFN tensors as they are, then per layer the
    // router and the experts.
    out_tensor *ts = NULL;
    int n = 0;
    char name[sizeof ts->name];   // copied into out_tensor.name, so no longer than it
    add_copy(&ts, &n, &m.st, "model.embed_tokens.weight");
    for (int l = 0; l < c->n_layers; l++) {
        const layer_weights *L = &m.layers[l];
        const char *copy[] = {"input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.q_proj.weight",
                              "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight"};
        for (int j = 0; j < 6; j++) {
            snprintf(name, sizeof name, "model.layers.%d.%s", l, copy[j]);
            add_copy(&ts, &n, &m.st, name);
        }
        snprintf(name, sizeof name, "model.layers.%d.block_sparse_moe.gate.weight", l);
        weight_t none = {0};
        add_matrix(&ts, &n, name, DT_F32, E, d, identity ? none : L->router, 1.0f);
        for (int e = 0; e < E; e++) {
            const char *part[3] = {"w1", "w3", "w2"};
            const weight_t *src[3] = {&L->w1[e], &L->w3[e], &L->w2[e]};
            for (int j = 0; j < 3; j++) {
                snprintf(name, sizeof name, "model.layers.%d.block_sparse_moe.experts.%d.%s.weight", l, e, part[j]);
                float scale = identity && j == 2 ? (float)E : 1.0f;
                add_matrix(&ts, &n, name, src[j]->dtype, j == 2 ? d : width, j == 2 ? width : d, *src[j], scale);
            }
        }
    }
    add_copy(&ts, &n, &m.st, "model.norm.weight");
    if (!c->tie_word_embeddings) add_copy(&ts, &n, &m.st, "lm_head.weight");

    // Shards of at most shard_gb (a tensor larger than that gets a shard of its own).
    size_t limit = (size_t)(opt.shard_gb * 1e9), cur = 0, total = 0;
    int n_shards = 1;
    for (int i = 0; i < n; i++) {
        if (cur > 0 && cur + ts[i].nbytes > limit) { n_shards++; cur = 0; }
        ts[i].shard = n_shards - 1;
        cur += ts[i].nbytes;
        total += ts[i].nbytes;
    }

    out_dir dir;
    if (out_dir_open(&dir, out, opt.force, &err) != 0) die("%s", err.msg);
    int show = isatty(2);
    size_t done = 0;
    double t0 = now_seconds();
    char **shard_names = xcalloc((size_t)n_shards, sizeof(char *));
    for (int s = 0, first = 0; s < n_shards; s++) {
        int last = first;
        while (last < n && ts[last].shard == s) last++;
        shard_names[s] = xmalloc(64);
        if (n_shards == 1) snprintf(shard_names[s], 64, "model.safetensors");
        else snprintf(shard_names[s], 64, "model-%05d-of-%05d.safetensors", s + 1, n_shards);
        st_write_spec *specs = xcalloc((size_t)(last - first), sizeof(st_write_spec));
        for (int i = first; i < last; i++) {
            specs[i - first] = (st_write_spec){.name = ts[i].name, .dtype = ts[i].dtype, .ndim = ts[i].cols ? 2 : 1,
                                               .shape = {ts[i].rows, ts[i].cols}};
        }
        char *path = out_dir_file(&dir, shard_names[s]);
        st_writer *w = st_writer_open(path, specs, last - first, NULL, &err);
        free(path);
        if (!w) die("%s", err.msg);
        write_behind wb;   // a converted 8B model is tens of GB: stream it, do not pile it up in memory
        write_behind_init(&wb, st_writer_fd(w));
        for (int i = first; i < last; i++) {
            if (put_tensor(w, &wb, &ts[i], &err) != 0) { st_writer_close(w, 0, NULL); die("%s", err.msg); }
            done += ts[i].nbytes;
            if (show)
                fprintf(stderr, "\rwriting %.2f / %.2f GB (%.0f MB/s)", done / 1e9, total / 1e9,
                        done / 1e6 / (now_seconds() - t0 + 1e-9));
        }
        if (st_writer_close(w, 1, &err) != 0) die("%s", err.msg);
        free(specs);
        first = last;
    }
    if (show) fprintf(stderr, "\n");
    if (n_shards > 1) {
        const char **names = xcalloc((size_t)n, sizeof(char *)), **shard_of = xcalloc((size_t)n, sizeof(char *));
        for (int i = 0; i < n; i++) { names[i] = ts[i].name; shard_of[i] = shard_names[ts[i].shard]; }
        if (st_write_index(dir.tmp, names, shard_of, n, total, &err) != 0) die("%s", err.msg);
        free(names);
        free(shard_of);
    }

    // config.json: the dense config turned into Mixtral's.
    char path[8192];
    snprintf(path, sizeof path, "%s/config.json", in);
    json_object *cfg = json_object_from_file(path);
    if (!cfg) die("%s: cannot parse", path);
    json_object *arch = json_object_new_array();
    json_object_array_add(arch, json_object_new_string("MixtralForCausalLM"));
    json_object_object_add(cfg, "architectures", arch);
    json_object_object_add(cfg, "model_type", json_object_new_string("mixtral"));
    json_object_object_add(cfg, "num_local_experts", json_object_new_int(E));
    json_object_object_add(cfg, "num_experts_per_tok", json_object_new_int(k));
    json_object_object_add(cfg, "intermediate_size", json_object_new_int(width));
    json_object_object_add(cfg, "router_aux_loss_coef", json_object_new_double(0.0));
    json_object_object_add(cfg, "output_router_logits", json_object_new_boolean(0));
    json_object_object_add(cfg, "sliding_window", NULL);
    char mb[64];
    json_object_object_add(cfg, "llamoe_source_mode", json_object_new_string(moe_mode_str(&mode, mb, sizeof mb)));
    write_json(&dir, "config.json", cfg);
    json_object_put(cfg);
    // What clients need beside the weights: AutoTokenizer and llama.cpp's converter read the
    // tokenizer's config and special tokens map, not only tokenizer.json.
    const char *extra[] = {"generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "LICENSE"};
    for (int i = 0; i < 5; i++) copy_file_if_present(in, &dir, extra[i]);
    if (out_dir_commit(&dir, &err) != 0) die("%s", err.msg);
    fprintf(stderr, "llamoe-convert: %s -> %s (%s, %d shard(s), %.2f GB)\n", in, out, mb, n_shards, total / 1e9);
    for (int s = 0; s < n_shards; s++) free(shard_names[s]);
    free(shard_names);
    free(ts);
    model_free(&m);
    backend_free(cpu);
    return 0;
}
