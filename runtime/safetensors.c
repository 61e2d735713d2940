// safetensors: mmap reader (single file or sharded with model.safetensors.index.json) and a
// streaming writer. Format: u64 little-endian header length n, n bytes of JSON header
// {"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then the
// data section; offsets are relative to the start of the data section.
//
// Everything in a file is untrusted: every field is checked before it is used, and every
// failure is one line "FILE: tensor NAME: FIELD ..." in the caller's llamoe_err.
#include "runtime/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <libgen.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_MAX_HEADER ((uint64_t)100 << 20)   // real headers are tens of KB; refuse to parse more
#define ST_MAX_INDEX ((size_t)64 << 20)
#define ST_MAX_SHARDS 100000

// ---------------------------------------------------------------------------- small helpers
static char *path_join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = xmalloc(a + b + 2);
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

// "[2, 3, 4]" into buf, for messages.
static const char *shape_str(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t n = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (n < cap) snprintf(buf + n, cap - n, "]");
    return buf;
}

// Parses exactly text[0..len): one JSON value, then only whitespace (headers are space padded).
// Returns NULL with a description in why (static or owned by json-c) on failure.
static json_object *parse_json_exact(const char *text, size_t len, char *why, size_t why_cap) {
    if (len > INT32_MAX) { snprintf(why, why_cap, "too large"); return NULL; }
    if (memchr(text, 0, len)) { snprintf(why, why_cap, "contains a NUL byte"); return NULL; }
    json_tokener *tok = json_tokener_new();
    CHECK(tok);
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_ALLOW_TRAILING_CHARS);
    json_object *obj = json_tokener_parse_ex(tok, text, (int)len);
    enum json_tokener_error e = json_tokener_get_error(tok);
    size_t end = json_tokener_get_parse_end(tok);
    json_tokener_free(tok);
    if (!obj || e != json_tokener_success) {
        if (obj) json_object_put(obj);
        if (e == json_tokener_continue) snprintf(why, why_cap, "malformed JSON: ends early");
        else snprintf(why, why_cap, "malformed JSON at byte %zu: %s", end, json_tokener_error_desc(e));
        return NULL;
    }
    for (size_t i = end; i < len; i++) {
        char c = text[i];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
            json_object_put(obj);
            snprintf(why, why_cap, "malformed JSON: unexpected text at byte %zu after the value", i);
            return NULL;
        }
    }
    return obj;
}

// A non-negative JSON integer (json-c keeps integers above INT64_MAX as uint64).
static int json_get_u64(json_object *v, uint64_t *out) {
    if (!v || !json_object_is_type(v, json_type_int)) return -1;
    if (json_object_get_int64(v) < 0) return -1;
    *out = json_object_get_uint64(v);
    return 0;
}

static int name_ok(const char *s) {   // printable, so that error lines stay one line
    if (!*s) return 0;
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f) return 0;
    return 1;
}

// ---------------------------------------------------------------------------- header parsing
typedef struct { uint64_t begin, end; int tensor; } byte_range;

static int cmp_range(const void *a, const void *b) {
    const byte_range *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

// Validates one header entry into t (name already set) and r. data_base is the offset of the
// data section in the file, used for the alignment check.
static int parse_entry(const char *path, const char *name, json_object *entry, uint64_t data_size,
                       uint64_t data_base, st_tensor *t, byte_range *r, llamoe_err *err) {
    if (!json_object_is_type(entry, json_type_object))
        return fail(err, "%s: tensor %s: entry is not a JSON object", path, name);

    json_object *v;
    if (!json_object_object_get_ex(entry, "dtype", &v))
        return fail(err, "%s: tensor %s: dtype missing", path, name);
    if (!json_object_is_type(v, json_type_string))
        return fail(err, "%s: tensor %s: dtype is not a string", path, name);
    const char *dt = json_object_get_string(v);
    if (dtype_parse(dt, &t->dtype) != 0)
        return fail(err, "%s: tensor %s: dtype \"%.32s\" is not supported (F32, BF16, F16)", path, name,
                    name_ok(dt) ? dt : "?");

    if (!json_object_object_get_ex(entry, "shape", &v))
        return fail(err, "%s: tensor %s: shape missing", path, name);
    if (!json_object_is_type(v, json_type_array))
        return fail(err, "%s: tensor %s: shape is not a list", path, name);
    size_t nd = json_object_array_length(v);
    if (nd > ST_MAX_DIMS)
        return fail(err, "%s: tensor %s: shape has %zu dims, more than %d", path, name, nd, ST_MAX_DIMS);
    t->ndim = (int)nd;
    size_t count = 1;
    int overflow = 0;
    for (size_t i = 0; i < nd; i++) {
        json_object *d = json_object_array_get_idx(v, i);
        uint64_t u;
        if (json_get_u64(d, &u) != 0)
            return fail(err, "%s: tensor %s: shape[%zu] is %.32s, not a non-negative integer",
                        path, name, i, d ? json_object_to_json_string(d) : "null");
        if (u > INT64_MAX)
            return fail(err, "%s: tensor %s: shape[%zu] %llu is too large", path, name, i, (unsigned long long)u);
        t->shape[i] = (int64_t)u;
        if (!mul_ok(count, (size_t)u, &count)) overflow = 1;
    }
    char sh[160];
    if (overflow || !mul_ok(count, dtype_size(t->dtype), &t->nbytes))
        return fail(err, "%s: tensor %s: shape %s overflows the byte count", path, name,
                    shape_str(sh, sizeof sh, t->ndim, t->shape));

    if (!json_object_object_get_ex(entry, "data_offsets", &v))
        return fail(err, "%s: tensor %s: data_offsets missing", path, name);
    if (!json_object_is_type(v, json_type_array) || json_object_array_length(v) != 2)
        return fail(err, "%s: tensor %s: data_offsets is not a list of two integers", path, name);
    if (json_get_u64(json_object_array_get_idx(v, 0), &r->begin) != 0 ||
        json_get_u64(json_object_array_get_idx(v, 1), &r->end) != 0)
        return fail(err, "%s: tensor %s: data_offsets %.64s are not non-negative integers", path, name,
                    json_object_to_json_string(v));
    unsigned long long b = r->begin, e = r->end;
    if (r->begin > r->end)
        return fail(err, "%s: tensor %s: data_offsets [%llu, %llu] begin after end", path, name, b, e);
    if (r->end > data_size)
        return fail(err, "%s: tensor %s: data_offsets [%llu, %llu] end past the data section (size %llu)",
                    path, name, b, e, (unsigned long long)data_size);
    if (r->end - r->begin != t->nbytes)
        return fail(err, "%s: tensor %s: shape %s x %s is %zu bytes but data_offsets [%llu, %llu] span %llu",
                    path, name, shape_str(sh, sizeof sh, t->ndim, t->shape), dtype_name(t->dtype),
                    t->nbytes, b, e, e - b);
    // Kernels read the mmapped data in place as float/uint16 arrays; the map is page aligned,
    // so the file offset decides alignment. Every real checkpoint satisfies this.
    if (t->nbytes > 0 && (data_base + r->begin) % dtype_size(t->dtype) != 0)
        return fail(err, "%s: tensor %s: data_offsets [%llu, %llu] put the data at file offset %llu, "
                    "not aligned to its dtype size %zu", path, name, b, e,
                    (unsigned long long)(data_base + r->begin), dtype_size(t->dtype));
    return 0;
}

static void free_tensors(st_tensor *ts, int n) {
    for (int i = 0; i < n; i++) free(ts[i].name);
    free(ts);
}

int st_parse(const char *path, const uint8_t *buf, size_t size, st_tensor **tensors,
             int *n_tensors, llamoe_err *err) {
    *tensors = NULL;
    *n_tensors = 0;
    if (size < 8)
        return fail(err, "%s: file is %zu bytes, shorter than the 8-byte header length", path, size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | buf[i];
    if (hlen > size - 8)
        return fail(err, "%s: header length %llu runs past the end of the file (size %zu)", path,
                    (unsigned long long)hlen, size);
    if (hlen > ST_MAX_HEADER)
        return fail(err, "%s: header length %llu is more than the %llu allowed", path,
                    (unsigned long long)hlen, (unsigned long long)ST_MAX_HEADER);

    char why[160];
    json_object *root = parse_json_exact((const char *)buf + 8, (size_t)hlen, why, sizeof why);
    if (!root) return fail(err, "%s: header: %s", path, why);
    if (!json_object_is_type(root, json_type_object)) {
        json_object_put(root);
        return fail(err, "%s: header: not a JSON object", path);
    }

    uint64_t data_base = 8 + hlen, data_size = size - data_base;
    int cap = json_object_object_length(root);
    st_tensor *ts = xcalloc((size_t)cap, sizeof *ts);
    byte_range *rs = xcalloc((size_t)cap, sizeof *rs);
    int n = 0, rc = 0;
    json_object_object_foreach(root, key, val) {
        if (!strcmp(key, "__metadata__")) continue;   // free-form strings; nothing we need
        if (!name_ok(key)) { rc = fail(err, "%s: header: a tensor name is empty or has control characters", path); break; }
        st_tensor *t = &ts[n];
        if (parse_entry(path, key, val, data_size, data_base, t, &rs[n], err) != 0) { rc = -1; break; }
        t->name = xstrdup(key);
        t->data = buf + data_base + rs[n].begin;
        rs[n].tensor = n;
        n++;
    }
    json_object_put(root);

    // No two tensors may share bytes. Empty tensors own no bytes and are skipped.
    if (rc == 0) {
        qsort(rs, (size_t)n, sizeof *rs, cmp_range);
        int owner = -1;                    // the range with the largest end so far
        for (int i = 0; i < n && rc == 0; i++) {
            if (rs[i].begin == rs[i].end) continue;
            if (owner >= 0 && rs[i].begin < rs[owner].end)
                rc = fail(err, "%s: tensor %s: data_offsets [%llu, %llu] overlap tensor %s [%llu, %llu]",
                          path, ts[rs[i].tensor].name, (unsigned long long)rs[i].begin,
                          (unsigned long long)rs[i].end, ts[rs[owner].tensor].name,
                          (unsigned long long)rs[owner].begin, (unsigned long long)rs[owner].end);
            if (owner < 0 || rs[i].end > rs[owner].end) owner = i;
        }
    }
    free(rs);
    if (rc != 0) { free_tensors(ts, n); return -1; }
    *tensors = ts;
    *n_tensors = n;
    return n;
}

// ---------------------------------------------------------------------------- opening files
static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

// mmaps path into f and parses it; on failure f is left unmapped.
static int map_and_parse(st_file *f, const char *path, st_tensor **ts, int *n, llamoe_err *err) {
    memset(f, 0, sizeof *f);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return fail(err, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return fail(err, "%s: not a regular file", path);
    }
    size_t size = (size_t)st.st_size;
    if (size < 8) {   // also keeps mmap away from empty files
        close(fd);
        return fail(err, "%s: file is %zu bytes, shorter than the 8-byte header length", path, size);
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return fail(err, "%s: mmap of %zu bytes failed: %s", path, size, strerror(errno));
    if (st_parse(path, map, size, ts, n, err) < 0) {
        munmap(map, size);
        return -1;
    }
    f->path = xstrdup(path);
    f->map = map;
    f->size = size;
    return 0;
}

void st_close(st_set *s) {
    if (!s) return;
    free_tensors(s->tensors, s->n_tensors);
    for (int i = 0; i < s->n_files; i++) {
        if (s->files[i].map) munmap(s->files[i].map, s->files[i].size);
        free(s->files[i].path);
    }
    free(s->files);
    memset(s, 0, sizeof *s);
}

int st_open_file(st_set *s, const char *path, llamoe_err *err) {
    memset(s, 0, sizeof *s);
    s->files = xcalloc(1, sizeof *s->files);
    if (map_and_parse(&s->files[0], path, &s->tensors, &s->n_tensors, err) != 0) {
        st_close(s);
        return -1;
    }
    s->n_files = 1;
    qsort(s->tensors, (size_t)s->n_tensors, sizeof *s->tensors, cmp_tensor_name);
    return 0;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

// A shard name from the index must be a plain file name in the model directory.
static int shard_name_ok(const char *s) {
    return name_ok(s) && !strchr(s, '/') && strcmp(s, ".") && strcmp(s, "..");
}

// The weight_map of an index file: name -> shard pairs, pointers into *root_out (alive until
// json_object_put). On failure everything is freed and -1 returned with err.
static int index_parse(const char *index_path, const char *text, size_t len, json_object **root_out,
                       const char ***names_out, const char ***shards_out, int *n_out, llamoe_err *err) {
    *root_out = NULL;
    *names_out = *shards_out = NULL;
    *n_out = 0;
    char why[160];
    json_object *root = parse_json_exact(text, len, why, sizeof why);
    if (!root) return fail(err, "%s: %s", index_path, why);

    json_object *wm = NULL;
    int rc = 0;
    const char **names = NULL, **shards = NULL;
    int n_map = 0;
    if (!json_object_is_type(root, json_type_object))
        rc = fail(err, "%s: not a JSON object", index_path);
    else if (!json_object_object_get_ex(root, "weight_map", &wm) || !json_object_is_type(wm, json_type_object))
        rc = fail(err, "%s: weight_map missing or not an object", index_path);
    else if (json_object_object_length(wm) == 0)
        rc = fail(err, "%s: weight_map is empty", index_path);

    // name -> shard pairs (pointers into the JSON tree, alive until json_object_put below)
    if (rc == 0) {
        int cap = json_object_object_length(wm);
        names = xcalloc((size_t)cap, sizeof *names);
        shards = xcalloc((size_t)cap, sizeof *shards);
        json_object_object_foreach(wm, key, val) {
            if (!name_ok(key)) { rc = fail(err, "%s: weight_map: a tensor name is empty or has control characters", index_path); break; }
            if (!json_object_is_type(val, json_type_string) || !shard_name_ok(json_object_get_string(val))) {
                rc = fail(err, "%s: weight_map: tensor %s: shard is not a plain file name", index_path, key);
                break;
            }
            names[n_map] = key;
            shards[n_map] = json_object_get_string(val);
            n_map++;
        }
    }
    if (rc != 0) {
        free(names);
        free(shards);
        json_object_put(root);
        return -1;
    }
    *root_out = root;
    *names_out = names;
    *shards_out = shards;
    *n_out = n_map;
    return 0;
}

int st_index_parse(const char *path, const char *text, size_t len, int *n_entries, llamoe_err *err) {
    json_object *root;
    const char **names, **shards;
    if (index_parse(path, text, len, &root, &names, &shards, n_entries, err) != 0) return -1;
    free(names);
    free(shards);
    json_object_put(root);
    return 0;
}

static int open_index(st_set *s, const char *dir, const char *index_path, llamoe_err *err) {
    size_t len;
    char *text = read_text_file(index_path, ST_MAX_INDEX, &len, err);
    if (!text) return -1;
    json_object *root;
    const char **names, **shards;
    int n_map, rc = index_parse(index_path, text, len, &root, &names, &shards, &n_map, err);
    free(text);
    if (rc != 0) return -1;

    // Each distinct shard is opened once; file_index is its place in the sorted unique list.
    const char **uniq = NULL;
    int n_uniq = 0;
    if (rc == 0) {
        uniq = xcalloc((size_t)n_map, sizeof *uniq);
        memcpy(uniq, shards, (size_t)n_map * sizeof *uniq);
        qsort(uniq, (size_t)n_map, sizeof *uniq, cmp_str);
        for (int i = 0; i < n_map; i++)
            if (n_uniq == 0 || strcmp(uniq[n_uniq - 1], uniq[i])) uniq[n_uniq++] = uniq[i];
        if (n_uniq > ST_MAX_SHARDS) rc = fail(err, "%s: %d shards, more than %d", index_path, n_uniq, ST_MAX_SHARDS);
    }
    if (rc == 0) {
        s->files = xcalloc((size_t)n_uniq, sizeof *s->files);
        for (int f = 0; f < n_uniq && rc == 0; f++) {
            char *path = path_join(dir, uniq[f]);
            st_tensor *ts;
            int n;
            if (!file_exists(path))
                rc = fail(err, "%s: named by model.safetensors.index.json but does not exist", path);
            else if (map_and_parse(&s->files[f], path, &ts, &n, err) != 0) rc = -1;
            else if (n > INT32_MAX - 1 - s->n_tensors) {   // the count is an int: bound the sum over shards
                s->n_files = f + 1;
                free_tensors(ts, n);
                rc = fail(err, "%s: more than %d tensors over all shards", path, INT32_MAX - 1);
            } else {
                s->n_files = f + 1;
                s->tensors = xrealloc(s->tensors, ((size_t)s->n_tensors + (size_t)n + 1) * sizeof *s->tensors);
                for (int i = 0; i < n; i++) ts[i].file_index = f;
                memcpy(s->tensors + s->n_tensors, ts, (size_t)n * sizeof *ts);
                s->n_tensors += n;
                free(ts);
            }
            free(path);
        }
    }
    if (rc == 0) {
        qsort(s->tensors, (size_t)s->n_tensors, sizeof *s->tensors, cmp_tensor_name);
        for (int i = 1; i < s->n_tensors && rc == 0; i++)
            if (!strcmp(s->tensors[i - 1].name, s->tensors[i].name))
                rc = fail(err, "%s: tensor %s: also in %s", s->files[s->tensors[i].file_index].path,
                          s->tensors[i].name, s->files[s->tensors[i - 1].file_index].path);
    }
    // Every tensor the index names must be in the shard it names. Tensors in a shard that the
    // index does not name are harmless and stay findable.
    for (int i = 0; i < n_map && rc == 0; i++) {
        const st_tensor *t = st_find(s, names[i]);
        const char **u = bsearch(&shards[i], uniq, (size_t)n_uniq, sizeof *uniq, cmp_str);
        int f = (int)(u - uniq);
        if (!t || t->file_index != f)
            rc = fail(err, "%s: tensor %s: named by model.safetensors.index.json but missing from this shard",
                      s->files[f].path, names[i]);
    }
    free(uniq);
    free(names);
    free(shards);
    json_object_put(root);
    if (rc != 0) st_close(s);
    return rc;
}

int st_open_dir(st_set *s, const char *dir, llamoe_err *err) {
    memset(s, 0, sizeof *s);
    char *index = path_join(dir, "model.safetensors.index.json");
    int rc;
    if (file_exists(index)) rc = open_index(s, dir, index, err);
    else {
        char *single = path_join(dir, "model.safetensors");
        if (file_exists(single)) rc = st_open_file(s, single, err);
        else rc = fail(err, "%s: no model.safetensors or model.safetensors.index.json", dir);
        free(single);
    }
    free(index);
    return rc;
}

// ---------------------------------------------------------------------------- lookups
const st_tensor *st_find(const st_set *s, const char *name) {
    int lo = 0, hi = s->n_tensors - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(s->tensors[mid].name, name);
        if (c == 0) return &s->tensors[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return NULL;
}

int st_expect(const st_set *s, const char *name, int ndim, const int64_t *shape,
              const st_tensor **out, llamoe_err *err) {
    if (out) *out = NULL;
    const st_tensor *t = st_find(s, name);
    if (!t) {
        if (s->n_files == 1) return fail(err, "%s: tensor %s: missing", s->files[0].path, name);
        return fail(err, "%s (and %d other shards): tensor %s: missing", s->n_files ? s->files[0].path : "?",
                    s->n_files - 1, name);
    }
    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
    if (!same) {
        char a[160], b[160];
        return fail(err, "%s: tensor %s: shape %s but the config implies %s", s->files[t->file_index].path,
                    name, shape_str(a, sizeof a, t->ndim, t->shape), shape_str(b, sizeof b, ndim, shape));
    }
    if (out) *out = t;
    return 0;
}

size_t st_total_bytes(const st_set *s) {
    size_t total = 0;
    for (int i = 0; i < s->n_tensors; i++) total += s->tensors[i].nbytes;
    return total;
}

// ---------------------------------------------------------------------------- writer
struct st_writer {
    char *path;
    out_file out;          // unnamed until committed: a killed writer leaves no half file
    int fd;                // fileno(out.f); data goes through write(2), not the FILE
    int n, cur;            // tensors in the header; the one being written
    char **names;          // for messages
    size_t *nbytes;
    size_t cur_written;    // bytes of tensor cur written so far
    int failed;
};

static int write_all(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

// Makes a rename durable; failure here is not worth failing the write for.
static void fsync_parent_dir(const char *path) {
    char *copy = xstrdup(path);
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) { fsync(fd); close(fd); }
    free(copy);
}

static char *tmp_name(const char *path) {
    size_t n = strlen(path) + 32;
    char *p = xmalloc(n);
    snprintf(p, n, "%s.tmp.%ld", path, (long)getpid());
    return p;
}

// Writes data to path.tmp.<pid>, fsyncs and renames it to path.
static int write_file_atomic(const char *path, const void *data, size_t len, llamoe_err *err) {
    char *tmp = tmp_name(path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int rc = 0;
    if (fd < 0) rc = fail(err, "%s: cannot create: %s", tmp, strerror(errno));
    else {
        if (write_all(fd, data, len) != 0 || fsync(fd) != 0) rc = fail(err, "%s: write failed: %s", tmp, strerror(errno));
        if (close(fd) != 0 && rc == 0) rc = fail(err, "%s: close failed: %s", tmp, strerror(errno));
        if (rc == 0 && rename(tmp, path) != 0) rc = fail(err, "%s: rename to %s failed: %s", tmp, path, strerror(errno));
        if (rc != 0) unlink(tmp);
        else fsync_parent_dir(path);
    }
    free(tmp);
    return rc;
}

static int cmp_spec_name(const void *a, const void *b) {
    return strcmp((*(const st_write_spec *const *)a)->name, (*(const st_write_spec *const *)b)->name);
}

// Checks the specs and builds the JSON header (without padding). NULL + err on bad input.
static json_object *build_header(const char *path, const st_write_spec *specs, int n,
                                 const char *metadata_json, size_t *nbytes, llamoe_err *err) {
    json_object *meta = json_object_new_object();
    json_object_object_add(meta, "format", json_object_new_string("pt"));
    if (metadata_json) {
        char why[160];
        json_object *extra = parse_json_exact(metadata_json, strlen(metadata_json), why, sizeof why);
        if (!extra || !json_object_is_type(extra, json_type_object)) {
            if (extra) json_object_put(extra);
            json_object_put(meta);
            fail(err, "%s: metadata is not a JSON object", path);
            return NULL;
        }
        int bad = 0;
        json_object_object_foreach(extra, k, v) {
            if (!json_object_is_type(v, json_type_string)) bad = 1;
            else if (strcmp(k, "format")) json_object_object_add(meta, k, json_object_get(v));
        }
        json_object_put(extra);
        if (bad) {
            json_object_put(meta);
            fail(err, "%s: metadata values must be strings", path);
            return NULL;
        }
    }

    // Names must be unique: sort pointers and compare neighbours.
    const st_write_spec **sorted = xcalloc((size_t)n, sizeof *sorted);
    for (int i = 0; i < n; i++) sorted[i] = &specs[i];
    qsort(sorted, (size_t)n, sizeof *sorted, cmp_spec_name);
    int rc = 0;
    for (int i = 1; i < n && rc == 0; i++)
        if (!strcmp(sorted[i - 1]->name, sorted[i]->name))
            rc = fail(err, "%s: tensor %s: named twice", path, sorted[i]->name);
    free(sorted);

    json_object *root = json_object_new_object();
    json_object_object_add(root, "__metadata__", meta);
    size_t offset = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        const st_write_spec *sp = &specs[i];
        if (!sp->name || !name_ok(sp->name) || !strcmp(sp->name, "__metadata__")) {
            rc = fail(err, "%s: tensor %d: name is empty, reserved or has control characters", path, i);
            break;
        }
        if (sp->ndim < 0 || sp->ndim > ST_MAX_DIMS || (unsigned)sp->dtype > DT_F16) {
            rc = fail(err, "%s: tensor %s: ndim %d or dtype %d out of range", path, sp->name, sp->ndim, (int)sp->dtype);
            break;
        }
        size_t bytes = dtype_size(sp->dtype);
        json_object *shape = json_object_new_array();
        for (int d = 0; d < sp->ndim; d++) {
            if (sp->shape[d] < 0 || !mul_ok(bytes, (size_t)sp->shape[d], &bytes)) rc = -1;
            json_object_array_add(shape, json_object_new_int64(sp->shape[d]));
        }
        size_t end;
        if (rc != 0 || !add_ok(offset, bytes, &end)) {
            json_object_put(shape);
            char sh[160];
            rc = fail(err, "%s: tensor %s: shape %s is negative or overflows", path, sp->name,
                      shape_str(sh, sizeof sh, sp->ndim, sp->shape));
            break;
        }
        // Offsets stay contiguous (Hugging Face's reader insists), so an order that puts a
        // 4-byte dtype after an odd number of 2-byte values cannot be written aligned.
        if (bytes > 0 && offset % dtype_size(sp->dtype) != 0) {
            json_object_put(shape);
            rc = fail(err, "%s: tensor %s: would start at data offset %zu, not aligned to its dtype size %zu "
                      "(put wider dtypes first)", path, sp->name, offset, dtype_size(sp->dtype));
            break;
        }
        json_object *offs = json_object_new_array();
        json_object_array_add(offs, json_object_new_uint64(offset));
        json_object_array_add(offs, json_object_new_uint64(end));
        json_object *e = json_object_new_object();
        json_object_object_add(e, "dtype", json_object_new_string(dtype_name(sp->dtype)));
        json_object_object_add(e, "shape", shape);
        json_object_object_add(e, "data_offsets", offs);
        json_object_object_add(root, sp->name, e);
        nbytes[i] = bytes;
        offset = end;
    }
    if (rc != 0) {
        json_object_put(root);
        return NULL;
    }
    return root;
}

st_writer *st_writer_open(const char *path, const st_write_spec *specs, int n,
                          const char *metadata_json, llamoe_err *err) {
    if (n < 0) { fail(err, "%s: negative tensor count", path); return NULL; }
    size_t *nbytes = xcalloc((size_t)n, sizeof *nbytes);
    json_object *root = build_header(path, specs, n, metadata_json, nbytes, err);
    if (!root) { free(nbytes); return NULL; }

    // The header is padded with spaces so the data section starts 8-byte aligned.
    const char *json = json_object_to_json_string_ext(root, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    size_t jlen = strlen(json), hlen = (jlen + 7) & ~(size_t)7;
    uint8_t *head = xmalloc(8 + hlen);
    for (int i = 0; i < 8; i++) head[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    memcpy(head + 8, json, jlen);
    memset(head + 8 + jlen, ' ', hlen - jlen);
    json_object_put(root);

    st_writer *w = xcalloc(1, sizeof *w);
    w->path = xstrdup(path);
    w->fd = -1;
    w->n = n;
    w->nbytes = nbytes;
    w->names = xcalloc((size_t)n, sizeof *w->names);
    for (int i = 0; i < n; i++) w->names[i] = xstrdup(specs[i].name);
    int rc = out_file_open(&w->out, path, err);
    if (rc == 0) {
        w->fd = fileno(w->out.f);
        if (write_all(w->fd, head, 8 + hlen) != 0) rc = fail(err, "%s: write failed: %s", w->path, strerror(errno));
    }
    free(head);
    if (rc != 0) {
        st_writer_close(w, 0, NULL);
        return NULL;
    }
    while (w->cur < w->n && w->nbytes[w->cur] == 0) w->cur++;   // empty tensors need no put
    return w;
}

int st_writer_put(st_writer *w, const void *data, size_t nbytes, llamoe_err *err) {
    if (w->failed) return fail(err, "%s: st_writer_put after an earlier failure", w->path);
    if (nbytes == 0) return 0;
    if (w->cur >= w->n) {
        w->failed = 1;
        return fail(err, "%s: %zu bytes put after the last tensor", w->path, nbytes);
    }
    size_t left = w->nbytes[w->cur] - w->cur_written;
    if (nbytes > left) {
        w->failed = 1;
        return fail(err, "%s: tensor %s: %zu bytes put but only %zu of its %zu remain", w->path,
                    w->names[w->cur], nbytes, left, w->nbytes[w->cur]);
    }
    if (write_all(w->fd, data, nbytes) != 0) {
        w->failed = 1;
        return fail(err, "%s: tensor %s: write failed: %s", w->path, w->names[w->cur], strerror(errno));
    }
    w->cur_written += nbytes;
    if (w->cur_written == w->nbytes[w->cur]) {
        w->cur_written = 0;
        do w->cur++; while (w->cur < w->n && w->nbytes[w->cur] == 0);
    }
    return 0;
}

int st_writer_fd(const st_writer *w) { return w->fd; }

int st_writer_close(st_writer *w, int commit, llamoe_err *err) {
    if (!w) return 0;
    int rc = 0;
    if (commit) {
        if (w->failed) rc = fail(err, "%s: not written: an earlier put failed", w->path);
        else if (w->cur < w->n)
            rc = fail(err, "%s: tensor %s: only %zu of %zu bytes written", w->path, w->names[w->cur],
                      w->cur_written, w->nbytes[w->cur]);
    }
    if (commit && rc == 0) {   // fsync, link, rename over path
        if (out_file_commit(&w->out, err) != 0) rc = -1;
        else fsync_parent_dir(w->path);
    } else {
        out_file_discard(&w->out);
    }
    for (int i = 0; i < w->n; i++) free(w->names[i]);
    free(w->names);
    free(w->nbytes);
    free(w->path);
    free(w);
    return rc;
}

int st_write_index(const char *dir, const char *const *names, const char *const *shard_of,
                   int n, size_t total_size, llamoe_err *err) {
    char *path = path_join(dir, "model.safetensors.index.json");
    json_object *root = json_object_new_object();
    json_object *meta = json_object_new_object();
    json_object_object_add(meta, "total_size", json_object_new_uint64(total_size));
    json_object_object_add(root, "metadata", meta);
    json_object *wm = json_object_new_object();
    json_object_object_add(root, "weight_map", wm);
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        if (!name_ok(names[i]) || !shard_name_ok(shard_of[i]))
            rc = fail(err, "%s: entry %d: bad tensor or shard name", path, i);
        else if (json_object_object_get_ex(wm, names[i], NULL))
            rc = fail(err, "%s: tensor %s: named twice", path, names[i]);
        else json_object_object_add(wm, names[i], json_object_new_string(shard_of[i]));
    }
    if (rc == 0) {
        const char *text = json_object_to_json_string_ext(root, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED |
                                                                    JSON_C_TO_STRING_NOSLASHESCAPE);
        size_t len = strlen(text);
        char *buf = xmalloc(len + 2);
        memcpy(buf, text, len);
        buf[len] = '\n';
        rc = write_file_atomic(path, buf, len + 1, err);
        free(buf);
    }
    json_object_put(root);
    free(path);
    return rc;
}
