// config.json (+ generation_config.json) of a Llama 3.x or Mixtral model directory.
//
// Strict on purpose: a missing or mistyped field is an error naming the file and the field,
// never a silent default, except where Hugging Face itself defines the default
// (num_key_value_heads = num_attention_heads, head_dim = hidden_size / num_attention_heads,
// tie_word_embeddings = false, rope_scaling = none). Every dimension is bounded so that hostile
// values are refused before anyone sizes an allocation from them.
#include "runtime/config.h"
#include "runtime/json_read.h"

#include <math.h>
#include <string.h>

#define CONFIG_MAX_BYTES ((size_t)1 << 20)

// Upper bounds, generous next to the largest public models (405B: hidden 16384, 126 layers,
// FFN 53248, vocab 128256; DeepSeek/Qwen vocabularies ~152k; contexts up to 10M).
#define MAX_HIDDEN (65536 * 4)
#define MAX_FFN (1 << 20)
#define MAX_LAYERS 4096
#define MAX_HEADS 4096
#define MAX_HEAD_DIM 4096
#define MAX_VOCAB (1 << 24)
#define MAX_POSITIONS (1 << 26)
#define MAX_EXPERTS 4096

// ---------------------------------------------------------------------------- field readers
// Each returns 0 if the field is present and valid, 1 if absent (when optional), -1 on error.

static int get_int(json_object *o, const char *path, const char *key, int required, int lo, int hi,
                   int *out, llamoe_err *err) {
    json_object *v = json_read_member(o, key);
    if (!v) return required ? fail(err, "%s: %s missing", path, key) : 1;
    if (!json_object_is_type(v, json_type_int))
        return fail(err, "%s: %s is %.40s, not an integer", path, key, json_object_to_json_string(v));
    int64_t x = json_object_get_int64(v);
    if (x < lo || x > hi)
        return fail(err, "%s: %s is %lld, outside [%d, %d]", path, key, (long long)x, lo, hi);
    *out = (int)x;
    return 0;
}

// Integers are numbers too ("rope_theta": 10000).
static int get_float(json_object *o, const char *path, const char *key, int required, double lo, double hi,
                     float *out, llamoe_err *err) {
    json_object *v = json_read_member(o, key);
    if (!v) return required ? fail(err, "%s: %s missing", path, key) : 1;
    if (!json_object_is_type(v, json_type_double) && !json_object_is_type(v, json_type_int))
        return fail(err, "%s: %s is %.40s, not a number", path, key, json_object_to_json_string(v));
    double x = json_object_get_double(v);
    if (!isfinite(x) || x < lo || x > hi)
        return fail(err, "%s: %s is %g, outside [%g, %g]", path, key, x, lo, hi);
    *out = (float)x;
    return 0;
}

static int get_bool(json_object *o, const char *path, const char *key, int *out, llamoe_err *err) {
    json_object *v = json_read_member(o, key);
    if (!v) return 1;
    if (!json_object_is_type(v, json_type_boolean))
        return fail(err, "%s: %s is %.40s, not true or false", path, key, json_object_to_json_string(v));
    *out = json_object_get_boolean(v);
    return 0;
}

// Strings from the file go into one-line messages only if they are printable.
static const char *printable(const char *s) {
    for (const char *p = s; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f) return "?";
    return s;
}

// Adds eos ids (an int or a list of ints; null or absent adds nothing) without duplicates.
static int add_eos(llama_config *c, json_object *o, const char *path, llamoe_err *err) {
    json_object *v = json_read_member(o, "eos_token_id");
    if (!v) return 0;
    int n = 1, is_list = json_object_is_type(v, json_type_array);
    if (is_list) n = (int)json_object_array_length(v);
    else if (!json_object_is_type(v, json_type_int))
        return fail(err, "%s: eos_token_id is %.40s, not an integer or a list of integers", path,
                    json_object_to_json_string(v));
    for (int i = 0; i < n; i++) {
        json_object *e = is_list ? json_object_array_get_idx(v, (size_t)i) : v;
        if (!e || !json_object_is_type(e, json_type_int))
            return fail(err, "%s: eos_token_id[%d] is not an integer", path, i);
        int64_t id = json_object_get_int64(e);
        if (id < 0 || id >= c->vocab_size)
            return fail(err, "%s: eos_token_id %lld is outside the vocabulary [0, %d)", path, (long long)id,
                        c->vocab_size);
        if (config_is_eos(c, (int)id)) continue;
        if (c->n_eos == CONFIG_MAX_EOS)
            return fail(err, "%s: eos_token_id: more than %d distinct ids", path, CONFIG_MAX_EOS);
        c->eos_ids[c->n_eos++] = (int)id;
    }
    return 0;
}

// bos_token_id: an integer, null or absent (-1).
static int get_bos(llama_config *c, json_object *o, const char *path, llamoe_err *err) {
    json_object *v = json_read_member(o, "bos_token_id");
    if (!v) return 0;
    int id;
    if (get_int(o, path, "bos_token_id", 1, 0, c->vocab_size - 1, &id, err) != 0) return -1;
    c->bos_id = id;
    return 0;
}

// rope_scaling: null/absent, or {"rope_type" (or legacy "type"): "llama3", factor,
// low_freq_factor, high_freq_factor, original_max_position_embeddings}. "default" means none.
static int parse_rope_scaling(llama_config *c, json_object *root, const char *path, llamoe_err *err) {
    json_object *rs = json_read_member(root, "rope_scaling");
    if (!rs) return 0;
    if (!json_object_is_type(rs, json_type_object))
        return fail(err, "%s: rope_scaling is %.40s, not null or an object", path, json_object_to_json_string(rs));
    json_object *t = json_read_member(rs, "rope_type");
    if (!t) t = json_read_member(rs, "type");
    if (!t || !json_object_is_type(t, json_type_string))
        return fail(err, "%s: rope_scaling.rope_type missing or not a string", path);
    const char *type = json_object_get_string(t);
    if (!strcmp(type, "default")) return 0;
    if (strcmp(type, "llama3"))
        return fail(err, "%s: rope_scaling.rope_type \"%.40s\" is not supported (llama3)", path, printable(type));

    char p[LLAMOE_ERR_LEN / 2];   // "config.json: rope_scaling" as the path of the nested fields
    snprintf(p, sizeof p, "%s: rope_scaling", path);
    // The smoothing band divides by (high - low), so the two must differ.
    if (get_float(rs, p, "factor", 1, 1.0, 1e6, &c->rope_factor, err) != 0 ||
        get_float(rs, p, "low_freq_factor", 1, 1e-6, 1e6, &c->rope_low_freq_factor, err) != 0 ||
        get_float(rs, p, "high_freq_factor", 1, 1e-6, 1e6, &c->rope_high_freq_factor, err) != 0 ||
        get_int(rs, p, "original_max_position_embeddings", 1, 1, MAX_POSITIONS, &c->rope_original_max_position, err) != 0)
        return -1;
    if (!(c->rope_high_freq_factor > c->rope_low_freq_factor))
        return fail(err, "%s: rope_scaling.high_freq_factor %g must be above low_freq_factor %g", path,
                    c->rope_high_freq_factor, c->rope_low_freq_factor);
    c->rope_llama3 = 1;
    return 0;
}

// ---------------------------------------------------------------------------- config.json
static int parse_fields(llama_config *c, json_object *root, const char *path, llamoe_err *err) {
    json_object *mt = json_read_member(root, "model_type");
    if (!mt) return fail(err, "%s: model_type missing", path);
    if (!json_object_is_type(mt, json_type_string))
        return fail(err, "%s: model_type is not a string", path);
    const char *type = json_object_get_string(mt);
    if (!strcmp(type, "mixtral")) c->is_mixtral = 1;
    else if (strcmp(type, "llama"))
        return fail(err, "%s: model_type \"%.40s\" is not supported (llama, mixtral)", path, printable(type));

    if (get_int(root, path, "hidden_size", 1, 1, MAX_HIDDEN, &c->hidden_size, err) != 0 ||
        get_int(root, path, "intermediate_size", 1, 1, MAX_FFN, &c->intermediate_size, err) != 0 ||
        get_int(root, path, "num_hidden_layers", 1, 1, MAX_LAYERS, &c->n_layers, err) != 0 ||
        get_int(root, path, "num_attention_heads", 1, 1, MAX_HEADS, &c->n_heads, err) != 0 ||
        get_int(root, path, "vocab_size", 1, 1, MAX_VOCAB, &c->vocab_size, err) != 0 ||
        get_int(root, path, "max_position_embeddings", 1, 1, MAX_POSITIONS, &c->max_position_embeddings, err) != 0 ||
        get_float(root, path, "rms_norm_eps", 1, 1e-12, 1.0, &c->rms_norm_eps, err) != 0 ||
        get_float(root, path, "rope_theta", 1, 1.0, 1e12, &c->rope_theta, err) != 0)
        return -1;

    int r = get_int(root, path, "num_key_value_heads", 0, 1, MAX_HEADS, &c->n_kv_heads, err);
    if (r < 0) return -1;
    if (r == 1) c->n_kv_heads = c->n_heads;
    if (c->n_heads % c->n_kv_heads != 0)
        return fail(err, "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d", path,
                    c->n_heads, c->n_kv_heads);

    // head_dim: explicit (may differ from hidden/heads) or null/absent.
    json_object *hd = json_read_member(root, "head_dim");
    if (hd) {   // json-c gives null as NULL, so null counts as absent
        if (get_int(root, path, "head_dim", 1, 1, MAX_HEAD_DIM, &c->head_dim, err) != 0) return -1;
    } else {
        if (c->hidden_size % c->n_heads != 0)
            return fail(err, "%s: hidden_size %d is not a multiple of num_attention_heads %d (and no head_dim)",
                        path, c->hidden_size, c->n_heads);
        c->head_dim = c->hidden_size / c->n_heads;
    }
    if (c->head_dim % 2 != 0)   // RoPE rotates pairs
        return fail(err, "%s: head_dim %d is odd", path, c->head_dim);
    if ((int64_t)c->n_heads * c->head_dim > MAX_HIDDEN)
        return fail(err, "%s: num_attention_heads x head_dim = %lld is more than %d", path,
                    (long long)c->n_heads * c->head_dim, MAX_HIDDEN);

    if (get_bool(root, path, "tie_word_embeddings", &c->tie_word_embeddings, err) < 0) return -1;
    if (parse_rope_scaling(c, root, path, err) != 0) return -1;

    if (c->is_mixtral) {
        if (get_int(root, path, "num_local_experts", 1, 1, MAX_EXPERTS, &c->n_experts, err) != 0 ||
            get_int(root, path, "num_experts_per_tok", 1, 1, MAX_EXPERTS, &c->n_experts_per_tok, err) != 0)
            return -1;
        if (c->n_experts_per_tok > c->n_experts)
            return fail(err, "%s: num_experts_per_tok %d is more than num_local_experts %d", path,
                        c->n_experts_per_tok, c->n_experts);
    }

    if (get_bos(c, root, path, err) != 0 || add_eos(c, root, path, err) != 0) return -1;
    return 0;
}

int config_parse(llama_config *c, const char *path, const char *json_text, llamoe_err *err) {
    memset(c, 0, sizeof *c);
    c->bos_id = -1;
    json_object *root = json_read_object(path, json_text, err);
    if (!root) return -1;
    int rc = parse_fields(c, root, path, err);
    json_object_put(root);
    if (rc != 0) {
        memset(c, 0, sizeof *c);
        c->bos_id = -1;
    }
    return rc;
}

// ---------------------------------------------------------------------------- generation_config.json
int config_parse_generation(llama_config *c, const char *path, const char *json_text, llamoe_err *err) {
    json_object *root = json_read_object(path, json_text, err);
    if (!root) return -1;
    int rc = add_eos(c, root, path, err);
    if (rc == 0 && c->bos_id < 0) rc = get_bos(c, root, path, err);   // only fills a gap
    json_object_put(root);
    return rc;
}

int config_load(llama_config *c, const char *dir, llamoe_err *err) {
    size_t n = strlen(dir) + 32;
    char *path = xmalloc(n);
    snprintf(path, n, "%s/config.json", dir);
    char *text = read_text_file(path, CONFIG_MAX_BYTES, NULL, err);
    int rc = text ? config_parse(c, path, text, err) : -1;
    free(text);
    if (rc == 0) {
        snprintf(path, n, "%s/generation_config.json", dir);
        if (file_exists(path)) {
            text = read_text_file(path, CONFIG_MAX_BYTES, NULL, err);
            rc = text ? config_parse_generation(c, path, text, err) : -1;
            free(text);
        }
    }
    free(path);
    return rc;
}

int config_is_eos(const llama_config *c, int token) {
    for (int i = 0; i < c->n_eos; i++)
        if (c->eos_ids[i] == token) return 1;
    return 0;
}
