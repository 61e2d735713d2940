// llamoe-convert: a dense Llama directory -> a Hugging Face Mixtral directory for a MoE mode.
//   llamoe-convert -m DENSE --moe identity:8|upcycle:8:2|production:8:2 -o OUT [--seed S]
//                  [--drop R] [--shard-gb G] [--force]
// The experts and routers are exactly those the runtime builds on the fly (same code, same
// seeds), so the converted checkpoint gives the same tokens. Identity export: the gate is
// zero and k = E, so every weight is 1/E; each slice's w2 is scaled by E to compensate (exact
// for E a power of two, see docs/parity.md) and zero-padded to the widest slice.
#include <errno.h>
#include <json-c/json.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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
static int put_tensor(st_writer *w, const out_tensor *t, llamoe_err *err) {
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
    }
    free(buf);
    free(f);
    return rc;
}

static void write_json(const char *path, json_object *o) {
    if (json_object_to_file_ext(path, o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE) != 0)
        die("%s: cannot write: %s", path, json_util_get_last_err());
}

static void copy_file_if_present(const char *from_dir, const char *to_dir, const char *name) {
    char from[8192], to[8192];   // room for any directory (4096) plus the name: no truncation
    snprintf(from, sizeof from, "%s/%s", from_dir, name);
    snprintf(to, sizeof to, "%s/%s", to_dir, name);
    if (!file_exists(from)) return;
    llamoe_err err;
    size_t len;
    char *text = read_text_file(from, 1u << 30, &len, &err);
    if (!text) die("%s", err.msg);
    FILE *f = fopen(to, "wb");
    if (!f || fwrite(text, 1, len, f) != len || fclose(f) != 0) die("%s: cannot write", to);
    free(text);
}

// The output is built in a temporary directory and renamed into place at the end; if the
// program dies on the way, this removes the half-written directory.
static char tmp_dir_to_remove[4096];
static void remove_tmp_dir(void) {
    if (!tmp_dir_to_remove[0]) return;
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf -- '%s'", tmp_dir_to_remove);
    if (system(cmd) != 0) fprintf(stderr, "llamoe: could not remove %s\n", tmp_dir_to_remove);
}

int main(int argc, char **argv) {
    const char *in = NULL, *out = NULL, *mode_str = NULL;
    uint64_t seed = 1234;
    float drop = 0.5f;
    double shard_gb = 5.0;
    int force = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--force")) { force = 1; continue; }
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            printf("usage: llamoe-convert -m DENSE_DIR --moe MODE -o OUT_DIR [--seed S] [--drop R] [--shard-gb G] [--force]\n");
            return 0;
        }
        if (i + 1 >= argc) die("%s: missing value (see --help)", argv[i]);
        if (!strcmp(argv[i], "-m")) in = argv[++i];
        else if (!strcmp(argv[i], "-o")) out = argv[++i];
        else if (!strcmp(argv[i], "--moe")) mode_str = argv[++i];
        else if (!strcmp(argv[i], "--seed")) seed = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--drop")) drop = strtof(argv[++i], NULL);
        else if (!strcmp(argv[i], "--shard-gb")) shard_gb = strtod(argv[++i], NULL);
        else die("%s: unknown option (see --help)", argv[i]);
    }
    if (!in || !out || !mode_str) die("-m, --moe and -o are required (see --help)");
    if (!(shard_gb > 0)) die("--shard-gb: must be positive");
    llamoe_err err;
    moe_mode mode;
    if (moe_mode_parse(mode_str, &mode, &err) != 0) die("%s", err.msg);
    if (mode.kind == MOE_DENSE) die("--moe dense: nothing to convert");
    mode.seed = seed;
    mode.drop = drop;
    struct stat sb;
    if (stat(out, &sb) == 0 && !force) die("%s: already exists (use --force to replace it)", out);

    model m;
    backend *cpu = backend_cpu_new(NULL);
    if (model_load(&m, in, &mode, cpu, 0, 1, &err) != 0) die("%s", err.msg);
    const llama_config *c = &m.cfg;
    int E = mode.n_experts, k = mode.top_k, d = c->hidden_size, I = c->intermediate_size;
    int identity = mode.kind == MOE_IDENTITY;
    int width = identity ? (I + E - 1) / E : I;   // Mixtral needs one width: pad slices to it

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
    size_t limit = (size_t)(shard_gb * 1e9), cur = 0, total = 0;
    int n_shards = 1;
    for (int i = 0; i < n; i++) {
        if (cur > 0 && cur + ts[i].nbytes > limit) { n_shards++; cur = 0; }
        ts[i].shard = n_shards - 1;
        cur += ts[i].nbytes;
        total += ts[i].nbytes;
    }

    char tmp_dir[4096], path[4200];
    snprintf(tmp_dir, sizeof tmp_dir, "%s.tmp.%d", out, (int)getpid());
    if (strchr(tmp_dir, '\'')) die("%s: a quote in the output path is not supported", out);
    if (mkdir(tmp_dir, 0755) != 0) die("%s: cannot create: %s", tmp_dir, strerror(errno));
    snprintf(tmp_dir_to_remove, sizeof tmp_dir_to_remove, "%s", tmp_dir);
    atexit(remove_tmp_dir);
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
        snprintf(path, sizeof path, "%s/%s", tmp_dir, shard_names[s]);
        st_writer *w = st_writer_open(path, specs, last - first, NULL, &err);
        if (!w) die("%s", err.msg);
        for (int i = first; i < last; i++) {
            if (put_tensor(w, &ts[i], &err) != 0) { st_writer_close(w, 0, NULL); die("%s", err.msg); }
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
        if (st_write_index(tmp_dir, names, shard_of, n, total, &err) != 0) die("%s", err.msg);
        free(names);
        free(shard_of);
    }

    // config.json: the dense config turned into Mixtral's.
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
    snprintf(path, sizeof path, "%s/config.json", tmp_dir);
    write_json(path, cfg);
    json_object_put(cfg);
    const char *extra[] = {"generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "LICENSE"};
    for (int i = 0; i < 5; i++) copy_file_if_present(in, tmp_dir, extra[i]);

    if (force && stat(out, &sb) == 0) {
        char old[4200];
        snprintf(old, sizeof old, "rm -rf -- '%s'", out);
        if (strchr(out, '\'') || system(old) != 0) die("%s: cannot replace", out);
    }
    if (rename(tmp_dir, out) != 0) die("%s: cannot rename %s into place: %s", out, tmp_dir, strerror(errno));
    tmp_dir_to_remove[0] = 0;
    fprintf(stderr, "llamoe-convert: %s -> %s (%s, %d shard(s), %.2f GB)\n", in, out, mb, n_shards, total / 1e9);
    for (int s = 0; s < n_shards; s++) free(shard_names[s]);
    free(shard_names);
    free(ts);
    model_free(&m);
    backend_free(cpu);
    return 0;
}
