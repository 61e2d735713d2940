// Load profiles and placement files (placement_io.h).
#include "runtime/placement_io.h"

#include <string.h>

#include "base/moe_wire.h"
#include "parallel/balance.h"
#include "runtime/json_read.h"

#define PLACEMENT_MAX_BYTES ((size_t)64 << 20)

// ---------------------------------------------------------------------------- reading
static json_object *read_json(const char *path, llamoe_err *err) {
    char *text = read_text_file(path, PLACEMENT_MAX_BYTES, NULL, err);
    if (!text) return NULL;
    json_object *root = json_read_object(path, text, err);
    free(text);
    return root;
}

static int get_int64(json_object *v, const char *path, const char *what, int64_t lo, int64_t hi, int64_t *out,
                     llamoe_err *err) {
    if (!v) return fail(err, "%s: %s missing", path, what);
    if (!json_object_is_type(v, json_type_int))
        return fail(err, "%s: %s is %.40s, not an integer", path, what, json_object_to_json_string(v));
    int64_t x = json_object_get_int64(v);
    if (x < lo || x > hi) return fail(err, "%s: %s is %lld, outside [%lld, %lld]", path, what, (long long)x, (long long)lo, (long long)hi);
    *out = x;
    return 0;
}

// The file's "format" and the shape of the model it was made for, against this model.
static int check_model(json_object *root, const char *path, const char *format, const llama_config *c, int E,
                       llamoe_err *err) {
    json_object *f = json_read_member(root, "format");
    if (!f || !json_object_is_type(f, json_type_string) || strcmp(json_object_get_string(f), format))
        return fail(err, "%s: format is not \"%s\"", path, format);
    struct { const char *key, *what; int64_t model; } shape[] = {
        {"layers", "layers (config.json num_hidden_layers)", c->n_layers},
        {"experts", "experts per layer", E},
        {"hidden_size", "hidden_size (config.json)", c->hidden_size},
    };
    for (size_t i = 0; i < sizeof shape / sizeof shape[0]; i++) {
        int64_t v;
        if (get_int64(json_read_member(root, shape[i].key), path, shape[i].key, 0, INT32_MAX, &v, err) != 0) return -1;
        if (v != shape[i].model)
            return fail(err, "%s: %s is %lld, but the model has %lld %s: a file made for another model", path,
                        shape[i].key, (long long)v, (long long)shape[i].model, shape[i].what);
    }
    return 0;
}

// root[key] as an array of n entries.
static json_object *get_array(json_object *v, const char *path, const char *what, size_t n, llamoe_err *err) {
    if (!v || !json_object_is_type(v, json_type_array)) {
        fail(err, "%s: %s missing or not an array", path, what);
        return NULL;
    }
    if (json_object_array_length(v) != n) {
        fail(err, "%s: %s has %zu entries, expected %zu", path, what, json_object_array_length(v), n);
        return NULL;
    }
    return v;
}

int load_profile_read(const char *path, const llama_config *c, int E, int64_t **tokens, llamoe_err *err) {
    *tokens = NULL;
    json_object *root = read_json(path, err);
    if (!root) return -1;
    int L = c->n_layers, rc = -1;
    int64_t *t = xcalloc((size_t)L * E, sizeof(int64_t));
    json_object *layers;
    char what[96];
    if (check_model(root, path, "llamoe-load-profile", c, E, err) != 0) goto done;
    if (!(layers = get_array(json_read_member(root, "tokens_per_expert"), path, "tokens_per_expert", (size_t)L, err))) goto done;
    for (int l = 0; l < L; l++) {
        snprintf(what, sizeof what, "tokens_per_expert[%d]", l);
        json_object *row = get_array(json_object_array_get_idx(layers, (size_t)l), path, what, (size_t)E, err);
        if (!row) goto done;
        for (int e = 0; e < E; e++) {
            snprintf(what, sizeof what, "tokens_per_expert[%d][%d]", l, e);
            if (get_int64(json_object_array_get_idx(row, (size_t)e), path, what, 0, BALANCE_MAX_LOAD,
                          &t[(size_t)l * E + e], err) != 0)
                goto done;
        }
    }
    *tokens = t;
    t = NULL;
    rc = 0;
done:
    free(t);
    json_object_put(root);
    return rc;
}

int placement_read(const char *path, const llama_config *c, int E, int P, placement_table *t, llamoe_err *err) {
    memset(t, 0, sizeof *t);
    json_object *root = read_json(path, err);
    if (!root) return -1;
    int L = c->n_layers, rc = -1;
    int64_t ranks, redundant;
    json_object *layers;
    char what[96];
    if (check_model(root, path, "llamoe-placement", c, E, err) != 0) goto done;
    if (get_int64(json_read_member(root, "ranks"), path, "ranks", 1, MOE_MAX_RANKS, &ranks, err) != 0) goto done;
    if (ranks != P) {
        fail(err, "%s: ranks is %lld, but the job has %d ranks", path, (long long)ranks, P);
        goto done;
    }
    if (get_int64(json_read_member(root, "redundant"), path, "redundant", 0, (int64_t)E * (P - 1), &redundant, err) != 0) goto done;
    llamoe_err e;
    if (placement_table_alloc(t, L, E, E + (int)redundant, P, &e) != 0) {
        fail(err, "%s: %s", path, e.msg);
        goto done;
    }
    expert_placement blocks;
    CHECK(placement_init(&blocks, t->n_physical, P, NULL) == 0);
    if (!(layers = get_array(json_read_member(root, "slots"), path, "slots", (size_t)L, err))) goto done;
    for (int l = 0; l < L; l++) {
        snprintf(what, sizeof what, "slots[%d]", l);
        json_object *per_rank = get_array(json_object_array_get_idx(layers, (size_t)l), path, what, (size_t)P, err);
        if (!per_rank) goto done;
        for (int r = 0; r < P; r++) {
            int first = placement_first(&blocks, r), count = placement_count(&blocks, r);
            snprintf(what, sizeof what, "slots[%d][%d] (rank %d's slots)", l, r, r);
            json_object *list = get_array(json_object_array_get_idx(per_rank, (size_t)r), path, what, (size_t)count, err);
            if (!list) goto done;
            for (int i = 0; i < count; i++) {
                int64_t ex;
                snprintf(what, sizeof what, "slots[%d][%d][%d]", l, r, i);
                if (get_int64(json_object_array_get_idx(list, (size_t)i), path, what, 0, E - 1, &ex, err) != 0) goto done;
                t->logical[(size_t)l * t->n_physical + first + i] = (int32_t)ex;
            }
        }
    }
    if (placement_table_check(t, &e) != 0) {
        fail(err, "%s: %s", path, e.msg);
        goto done;
    }
    rc = 0;
done:
    if (rc != 0) placement_table_free(t);
    json_object_put(root);
    return rc;
}

int placement_choose(placement_table *t, const placement_options *o, const llama_config *c, int E, int P,
                     llamoe_err *err) {
    const char *policy = o->policy ? o->policy : "contiguous";
    int L = c->n_layers;
    if (!strcmp(policy, "contiguous")) {
        if (o->redundant > 0)
            return fail(err, "--redundant-experts %d: the contiguous placement has no copies (use --placement balanced)",
                        o->redundant);
        return placement_table_contiguous(t, L, E, P, err);
    }
    if (strcmp(policy, "balanced")) {
        if (o->redundant > 0)
            return fail(err, "--redundant-experts %d: the placement file %s says how many copies there are", o->redundant,
                        policy);
        return placement_read(policy, c, E, P, t, err);
    }
    llamoe_err e;
    if (placement_table_alloc(t, L, E, E + o->redundant, P, &e) != 0)
        return fail(err, "--placement balanced --redundant-experts %d: %s", o->redundant, e.msg);
    int64_t *load = NULL;
    if (o->load_profile) {
        if (load_profile_read(o->load_profile, c, E, &load, err) != 0) {
            placement_table_free(t);
            return -1;
        }
    } else {
        load = xmalloc((size_t)L * E * sizeof(int64_t));
        for (size_t i = 0; i < (size_t)L * E; i++) load[i] = 1;
    }
    balance_table(t, load, NULL);
    free(load);
    return placement_table_check(t, err);
}

// ---------------------------------------------------------------------------- writing
static json_object *model_header(const char *format, const llama_config *c, int E) {
    json_object *o = json_object_new_object();
    json_object_object_add(o, "format", json_object_new_string(format));
    json_object_object_add(o, "hidden_size", json_object_new_int(c->hidden_size));
    json_object_object_add(o, "layers", json_object_new_int(c->n_layers));
    json_object_object_add(o, "experts", json_object_new_int(E));
    return o;
}

json_object *placement_to_json(const placement_table *t, const llama_config *c) {
    json_object *o = model_header("llamoe-placement", c, t->n_logical);
    json_object_object_add(o, "ranks", json_object_new_int(t->n_ranks));
    json_object_object_add(o, "redundant", json_object_new_int(placement_redundant(t)));
    expert_placement blocks;
    CHECK(placement_init(&blocks, t->n_physical, t->n_ranks, NULL) == 0);
    json_object *layers = json_object_new_array();
    for (int l = 0; l < t->n_layers; l++) {
        json_object *per_rank = json_object_new_array();
        for (int r = 0; r < t->n_ranks; r++) {
            json_object *list = json_object_new_array();
            for (int i = 0; i < placement_count(&blocks, r); i++)
                json_object_array_add(list, json_object_new_int(placement_layer(t, l)[placement_first(&blocks, r) + i]));
            json_object_array_add(per_rank, list);
        }
        json_object_array_add(layers, per_rank);
    }
    json_object_object_add(o, "slots", layers);
    return o;
}

int load_profile_write(const char *path, const char *model_dir, const char *moe, const llama_config *c, int E,
                       int top_k, const int64_t *tokens, llamoe_err *err) {
    json_object *o = model_header("llamoe-load-profile", c, E);
    json_object_object_add(o, "model", json_object_new_string(model_dir));
    json_object_object_add(o, "moe", json_object_new_string(moe));
    json_object_object_add(o, "top_k", json_object_new_int(top_k));
    json_object *layers = json_object_new_array();
    for (int l = 0; l < c->n_layers; l++) {
        json_object *row = json_object_new_array();
        for (int e = 0; e < E; e++) json_object_array_add(row, json_object_new_int64(tokens[(size_t)l * E + e]));
        json_object_array_add(layers, row);
    }
    json_object_object_add(o, "tokens_per_expert", layers);
    out_file f;
    int rc = out_file_open(&f, path, err);
    if (rc == 0) {
        fprintf(f.f, "%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
        rc = out_file_commit(&f, err);
    }
    json_object_put(o);
    return rc;
}
