// safetensors reader and writer: a table of malformed files (each must fail with one line
// naming the file and the field), sharded directories with a broken index, the bundled model,
// and writer round trips. Usage: test_safetensors SOURCE_DIR
#define _GNU_SOURCE   // memmem
#include "runtime/safetensors.h"

#include <dirent.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int passed, failed;
static char tmp[256];

#define EXPECT(cond, ...) do { \
    if (cond) passed++; \
    else { failed++; printf("FAIL %s:%d: ", __FILE__, __LINE__); printf(__VA_ARGS__); printf("\n"); } \
} while (0)

// ---------------------------------------------------------------------------- file builders
static char *tmp_path(const char *name) {
    static char buf[4][512];
    static int k;
    char *p = buf[k++ % 4];
    snprintf(p, 512, "%s/%s", tmp, name);
    return p;
}

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    CHECK(f);
    CHECK(fwrite(data, 1, n, f) == n);
    CHECK(fclose(f) == 0);
}

typedef enum { PLAIN, TRUNCATE_4, SHORT_FILE, HLEN_PAST_END, HLEN_HUGE } corruption;

// A safetensors file: u64 length, header text padded to 8 with spaces, data_len bytes.
static void write_st(const char *path, const char *header, size_t data_len, corruption how) {
    size_t jlen = strlen(header), hlen = (jlen + 7) & ~(size_t)7, size = 8 + hlen + data_len;
    uint64_t stored = hlen;
    if (how == HLEN_PAST_END) stored = hlen + data_len + 1;
    if (how == HLEN_HUGE) stored = (uint64_t)200 << 20;
    uint8_t *buf = xcalloc(size, 1);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(stored >> (8 * i));
    memcpy(buf + 8, header, jlen);
    memset(buf + 8 + jlen, ' ', hlen - jlen);
    for (size_t i = 0; i < data_len; i++) buf[8 + hlen + i] = (uint8_t)i;
    if (how == TRUNCATE_4) size -= 4;
    if (how == SHORT_FILE) size = 5;
    write_bytes(path, buf, size);
    free(buf);
    if (how == HLEN_HUGE) {   // a sparse file big enough that only the bound catches it
        int fd = open(path, O_WRONLY);
        CHECK(fd >= 0 && ftruncate(fd, (off_t)300 << 20) == 0);
        close(fd);
    }
}

// ---------------------------------------------------------------------------- bad single files
typedef struct {
    const char *name;
    const char *header;
    size_t data_len;
    corruption how;
    const char *expect;   // a substring of the error
} bad_file_case;

#define T16 "{\"a\": {\"dtype\": \"F32\", \"shape\": [2, 2], \"data_offsets\": [0, 16]}"
static const bad_file_case bad_files[] = {
    {"truncated", T16 "}", 16, TRUNCATE_4, "tensor a: data_offsets [0, 16] end past the data section (size 12)"},
    {"short", T16 "}", 16, SHORT_FILE, "file is 5 bytes, shorter than the 8-byte header length"},
    {"hlen_past_end", T16 "}", 16, HLEN_PAST_END, "header length 89 runs past the end of the file (size 96)"},
    {"hlen_huge", T16 "}", 16, HLEN_HUGE, "is more than the 104857600 allowed"},
    {"malformed_json", "{\"a\": {\"dtype\": \"F32\",", 0, PLAIN, "header: malformed JSON"},
    {"trailing_text", "{} x", 0, PLAIN, "header: malformed JSON: unexpected text"},
    {"not_object", "[1, 2]", 0, PLAIN, "header: not a JSON object"},
    {"entry_not_object", "{\"a\": 5}", 0, PLAIN, "tensor a: entry is not a JSON object"},
    {"unknown_dtype", "{\"a\": {\"dtype\": \"I64\", \"shape\": [2], \"data_offsets\": [0, 16]}}", 16, PLAIN,
     "tensor a: dtype \"I64\" is not supported"},
    {"dtype_missing", "{\"a\": {\"shape\": [2], \"data_offsets\": [0, 8]}}", 8, PLAIN, "tensor a: dtype missing"},
    {"shape_missing", "{\"a\": {\"dtype\": \"F32\", \"data_offsets\": [0, 8]}}", 8, PLAIN, "tensor a: shape missing"},
    {"size_mismatch", "{\"a\": {\"dtype\": \"F32\", \"shape\": [2, 2], \"data_offsets\": [0, 12]}}", 16, PLAIN,
     "tensor a: shape [2, 2] x F32 is 16 bytes but data_offsets [0, 12] span 12"},
    {"overlap", T16 ", \"b\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [8, 24]}}", 24, PLAIN,
     "tensor b: data_offsets [8, 24] overlap tensor a [0, 16]"},
    {"past_end", "{\"a\": {\"dtype\": \"F32\", \"shape\": [8], \"data_offsets\": [0, 32]}}", 16, PLAIN,
     "tensor a: data_offsets [0, 32] end past the data section (size 16)"},
    {"begin_after_end", "{\"a\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [16, 0]}}", 16, PLAIN,
     "tensor a: data_offsets [16, 0] begin after end"},
    {"offsets_not_int", "{\"a\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0.0, 16]}}", 16, PLAIN,
     "tensor a: data_offsets [ 0.0, 16 ] are not non-negative integers"},
    {"offsets_one", "{\"a\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [16]}}", 16, PLAIN,
     "tensor a: data_offsets is not a list of two integers"},
    {"negative_shape", "{\"a\": {\"dtype\": \"F32\", \"shape\": [-1, 4], \"data_offsets\": [0, 16]}}", 16, PLAIN,
     "tensor a: shape[0] is -1, not a non-negative integer"},
    {"huge_shape", "{\"a\": {\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296, 16], \"data_offsets\": [0, 16]}}",
     16, PLAIN, "tensor a: shape [4294967296, 4294967296, 16] overflows"},
    {"shape_beyond_u64", "{\"a\": {\"dtype\": \"F32\", \"shape\": [99999999999999999999], \"data_offsets\": [0, 16]}}",
     16, PLAIN, "tensor a: shape[0]"},
    {"too_many_dims", "{\"a\": {\"dtype\": \"F32\", \"shape\": [1,1,1,1,1,1,1,1,1], \"data_offsets\": [0, 4]}}", 4,
     PLAIN, "tensor a: shape has 9 dims, more than 8"},
    {"misaligned", "{\"a\": {\"dtype\": \"BF16\", \"shape\": [1], \"data_offsets\": [0, 2]}, "
                   "\"b\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [2, 6]}}", 8, PLAIN,
     "tensor b: data_offsets [2, 6] put the data at file offset"},
};

static void test_bad_files(void) {
    for (size_t i = 0; i < sizeof bad_files / sizeof *bad_files; i++) {
        const bad_file_case *c = &bad_files[i];
        char file[128];
        snprintf(file, sizeof file, "bad_%s.safetensors", c->name);
        const char *path = tmp_path(file);
        write_st(path, c->header, c->data_len, c->how);
        st_set s;
        llamoe_err err = {{0}};
        int rc = st_open_file(&s, path, &err);
        if (getenv("VERBOSE")) printf("  %s\n", err.msg);
        EXPECT(rc == -1 && strstr(err.msg, file) && strstr(err.msg, c->expect) && !strchr(err.msg, '\n'),
               "case %s: rc %d, message \"%s\", wanted \"%s\"", c->name, rc, err.msg, c->expect);
        EXPECT(s.n_tensors == 0 && s.n_files == 0 && !s.tensors && !s.files, "case %s: set not left empty", c->name);
        if (rc == 0) st_close(&s);
        unlink(path);
    }
}

// st_expect is how the model loader checks what the config implies.
static void test_expect(void) {
    const char *path = tmp_path("expect.safetensors");
    write_st(path, T16 "}", 16, PLAIN);
    st_set s;
    llamoe_err err = {{0}};
    CHECK(st_open_file(&s, path, &err) == 0);
    const st_tensor *t;
    int64_t good[2] = {2, 2}, bad[1] = {4};
    EXPECT(st_expect(&s, "a", 2, good, &t, &err) == 0 && t && t->dtype == DT_F32, "st_expect a: %s", err.msg);
    EXPECT(st_expect(&s, "b", 1, bad, &t, &err) == -1 && !t && strstr(err.msg, "expect.safetensors: tensor b: missing"),
           "missing tensor: %s", err.msg);
    EXPECT(st_expect(&s, "a", 1, bad, &t, &err) == -1 &&
           strstr(err.msg, "expect.safetensors: tensor a: shape [2, 2] but the config implies [4]"),
           "wrong shape: %s", err.msg);
    st_close(&s);
    unlink(path);
}

// ---------------------------------------------------------------------------- bad sharded directories
typedef struct {
    const char *name;
    const char *index;          // model.safetensors.index.json
    const char *shard1, *shard2; // headers of model-0000{1,2}-of-00002.safetensors; NULL: no file
    const char *expect_file;    // the file the message must name
    const char *expect;
} bad_dir_case;

#define S1 "model-00001-of-00002.safetensors"
#define S2 "model-00002-of-00002.safetensors"
#define IDX_AB "{\"metadata\": {\"total_size\": 32}, \"weight_map\": {\"a\": \"" S1 "\", \"b\": \"" S2 "\"}}"
#define HDR_A T16 "}"
#define HDR_B "{\"b\": {\"dtype\": \"F32\", \"shape\": [2, 2], \"data_offsets\": [0, 16]}}"
#define HDR_AB T16 ", \"b\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [16, 32]}}"
static const bad_dir_case bad_dirs[] = {
    {"missing_shard", IDX_AB, HDR_A, NULL, S2, "named by model.safetensors.index.json but does not exist"},
    {"tensor_missing_from_shard", IDX_AB, HDR_A, "{\"c\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]}}",
     S2, "tensor b: named by model.safetensors.index.json but missing from this shard"},
    {"duplicate_across_shards", IDX_AB, HDR_AB, HDR_B, S2, "tensor b: also in"},
    {"bad_shard_in_dir", IDX_AB, HDR_A, "{\"b\": {\"dtype\": \"F32\", \"shape\": [2, 2], \"data_offsets\": [0, 99]}}",
     S2, "tensor b: data_offsets [0, 99] end past the data section"},
    {"index_malformed", "{\"weight_map\": {", HDR_A, HDR_B, "model.safetensors.index.json", "malformed JSON"},
    {"index_no_weight_map", "{\"metadata\": {}}", HDR_A, HDR_B, "model.safetensors.index.json", "weight_map missing"},
    {"index_path_escape", "{\"weight_map\": {\"a\": \"../x.safetensors\"}}", HDR_A, HDR_B,
     "model.safetensors.index.json", "tensor a: shard is not a plain file name"},
};

static void remove_dir(const char *dir) {   // flat directories made by these tests only
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char p[1024];
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            unlink(p);
        }
    closedir(d);
    rmdir(dir);
}

static void test_bad_dirs(void) {
    for (size_t i = 0; i < sizeof bad_dirs / sizeof *bad_dirs; i++) {
        const bad_dir_case *c = &bad_dirs[i];
        char dir[512], p[1024];
        snprintf(dir, sizeof dir, "%s/dir_%s", tmp, c->name);
        CHECK(mkdir(dir, 0755) == 0);
        snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
        write_bytes(p, c->index, strlen(c->index));
        snprintf(p, sizeof p, "%s/" S1, dir);
        if (c->shard1) write_st(p, c->shard1, 32, PLAIN);
        snprintf(p, sizeof p, "%s/" S2, dir);
        if (c->shard2) write_st(p, c->shard2, 16, PLAIN);
        st_set s;
        llamoe_err err = {{0}};
        int rc = st_open_dir(&s, dir, &err);
        if (getenv("VERBOSE")) printf("  %s\n", err.msg);
        EXPECT(rc == -1 && strstr(err.msg, c->expect_file) && strstr(err.msg, c->expect),
               "dir case %s: rc %d, message \"%s\", wanted %s and \"%s\"", c->name, rc, err.msg, c->expect_file, c->expect);
        EXPECT(s.n_tensors == 0 && s.n_files == 0, "dir case %s: set not left empty", c->name);
        if (rc == 0) st_close(&s);
        remove_dir(dir);
    }
    st_set s;
    llamoe_err err = {{0}};
    EXPECT(st_open_dir(&s, tmp, &err) == -1 && strstr(err.msg, "no model.safetensors"), "empty dir: %s", err.msg);
}

// ---------------------------------------------------------------------------- the bundled model
static void test_stories(const char *src) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/models/stories260k", src);
    st_set s;
    llamoe_err err = {{0}};
    int rc = st_open_dir(&s, dir, &err);
    EXPECT(rc == 0, "open stories260k: %s", err.msg);
    if (rc != 0) return;
    EXPECT(s.n_tensors == 47 && s.n_files == 1, "stories260k: %d tensors in %d files", s.n_tensors, s.n_files);
    const st_tensor *e;
    int64_t shape[2] = {512, 64};
    EXPECT(st_expect(&s, "model.embed_tokens.weight", 2, shape, &e, &err) == 0 && e->dtype == DT_F32 &&
           e->nbytes == 512 * 64 * 4, "stories260k embed: %s", err.msg);
    EXPECT(!st_find(&s, "lm_head.weight"), "stories260k is tied: no lm_head");
    for (int i = 1; i < s.n_tensors; i++)
        if (strcmp(s.tensors[i - 1].name, s.tensors[i].name) >= 0) { EXPECT(0, "tensors not sorted at %d", i); break; }
    EXPECT(st_total_bytes(&s) == 1044992 - 8 - 4856, "stories260k data bytes %zu", st_total_bytes(&s));
    for (int i = 0; i < s.n_tensors; i++) EXPECT(st_find(&s, s.tensors[i].name) == &s.tensors[i], "st_find %d", i);
    st_close(&s);
}

// ---------------------------------------------------------------------------- writer round trips
#define N_SPECS 6
static const st_write_spec specs[N_SPECS] = {
    {"model.embed_tokens.weight", DT_F32, 2, {3, 5}},
    {"empty", DT_F32, 2, {0, 4}},
    {"scalar", DT_F32, 0, {0}},
    {"c.f16", DT_F16, 3, {2, 2, 3}},
    {"b.bf16", DT_BF16, 1, {7}},
    {"z/with \"quotes\" and slash", DT_BF16, 2, {3, 1}},
};

static size_t spec_bytes(const st_write_spec *sp) {
    size_t n = dtype_size(sp->dtype);
    for (int d = 0; d < sp->ndim; d++) n *= (size_t)sp->shape[d];
    return n;
}

static uint8_t *spec_data(int i) {   // deterministic bytes per tensor
    size_t n = spec_bytes(&specs[i]);
    uint8_t *p = xmalloc(n);
    for (size_t k = 0; k < n; k++) p[k] = (uint8_t)(k * 31 + (size_t)i * 7 + 1);
    return p;
}

// Writes specs[lo..hi) to path, putting the first tensor in two chunks.
static int write_specs(const char *path, int lo, int hi, llamoe_err *err) {
    st_writer *w = st_writer_open(path, specs + lo, hi - lo, "{\"source\": \"test\"}", err);
    if (!w) return -1;
    for (int i = lo; i < hi; i++) {
        uint8_t *d = spec_data(i);
        size_t n = spec_bytes(&specs[i]), half = i == lo ? n / 2 : n;
        int rc = st_writer_put(w, d, half, err);
        if (rc == 0) rc = st_writer_put(w, d + half, n - half, err);
        free(d);
        if (rc != 0) { st_writer_close(w, 0, NULL); return -1; }
    }
    return st_writer_close(w, 1, err);
}

static void check_contents(const st_set *s, int lo, int hi, const char *what) {
    EXPECT(s->n_tensors == hi - lo, "%s: %d tensors", what, s->n_tensors);
    for (int i = lo; i < hi; i++) {
        const st_tensor *t = st_find(s, specs[i].name);
        if (!t) { EXPECT(0, "%s: %s missing", what, specs[i].name); continue; }
        uint8_t *d = spec_data(i);
        int same = t->dtype == specs[i].dtype && t->ndim == specs[i].ndim && t->nbytes == spec_bytes(&specs[i]) &&
                   !memcmp(t->data, d, t->nbytes);
        for (int k = 0; same && k < t->ndim; k++) same = t->shape[k] == specs[i].shape[k];
        EXPECT(same, "%s: %s differs after the round trip", what, specs[i].name);
        EXPECT((uintptr_t)t->data % 8 == 0 || (uintptr_t)t->data % dtype_size(t->dtype) == 0, "%s: alignment", what);
        free(d);
    }
}

static void test_writer(void) {
    llamoe_err err = {{0}};
    const char *path = tmp_path("rt.safetensors");
    EXPECT(write_specs(path, 0, N_SPECS, &err) == 0, "write: %s", err.msg);
    st_set s;
    EXPECT(st_open_file(&s, path, &err) == 0, "reopen: %s", err.msg);
    check_contents(&s, 0, N_SPECS, "single file");
    // The header is padded so that the data section starts 8-byte aligned.
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | ((const uint8_t *)s.files[0].map)[i];
    EXPECT(hlen % 8 == 0, "header length %llu not a multiple of 8", (unsigned long long)hlen);
    EXPECT(memmem(s.files[0].map, 8 + hlen, "\"__metadata__\":{\"format\":\"pt\",\"source\":\"test\"}", 45) != NULL,
           "metadata not in the header");
    st_close(&s);
    unlink(path);

    // Sharded: three shards and an index, opened as a directory.
    char dir[512];
    snprintf(dir, sizeof dir, "%s/sharded", tmp);
    CHECK(mkdir(dir, 0755) == 0);
    const char *names[N_SPECS], *shard_of[N_SPECS];
    const char *shard_names[3] = {"model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                                  "model-00003-of-00003.safetensors"};
    int bounds[4] = {0, 3, 4, N_SPECS};
    size_t total = 0;
    for (int k = 0; k < 3; k++) {
        char p[1024];
        snprintf(p, sizeof p, "%s/%s", dir, shard_names[k]);
        EXPECT(write_specs(p, bounds[k], bounds[k + 1], &err) == 0, "shard %d: %s", k, err.msg);
        for (int i = bounds[k]; i < bounds[k + 1]; i++) {
            names[i] = specs[i].name;
            shard_of[i] = shard_names[k];
            total += spec_bytes(&specs[i]);
        }
    }
    EXPECT(st_write_index(dir, names, shard_of, N_SPECS, total, &err) == 0, "index: %s", err.msg);
    EXPECT(st_open_dir(&s, dir, &err) == 0, "open sharded: %s", err.msg);
    EXPECT(s.n_files == 3 && st_total_bytes(&s) == total, "sharded: %d files, %zu bytes", s.n_files, st_total_bytes(&s));
    check_contents(&s, 0, N_SPECS, "sharded");
    st_close(&s);
    remove_dir(dir);
}

// Whatever goes wrong, nothing appears at the path and no temporary file is left.
static int dir_is_empty(const char *dir) {
    DIR *d = opendir(dir);
    CHECK(d);
    struct dirent *e;
    int n = 0;
    while ((e = readdir(d))) n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    closedir(d);
    return n == 0;
}

static void test_writer_errors(void) {
    llamoe_err err = {{0}};
    char dir[512];
    snprintf(dir, sizeof dir, "%s/werr", tmp);
    CHECK(mkdir(dir, 0755) == 0);
    char path[1024];
    snprintf(path, sizeof path, "%s/w.safetensors", dir);
    uint8_t buf[256] = {0};

    st_writer *w = st_writer_open(path, specs, 2, NULL, &err);
    CHECK(w);
    EXPECT(st_writer_put(w, buf, 64, &err) == -1 && strstr(err.msg, "tensor model.embed_tokens.weight: 64 bytes put but only 60"),
           "too many bytes: %s", err.msg);
    EXPECT(st_writer_close(w, 1, &err) == -1 && strstr(err.msg, "earlier put failed"), "commit after failure: %s", err.msg);
    EXPECT(dir_is_empty(dir), "failed write left files behind");

    w = st_writer_open(path, specs, 3, NULL, &err);
    CHECK(w);
    st_writer_put(w, buf, 60, &err);
    EXPECT(st_writer_close(w, 1, &err) == -1 && strstr(err.msg, "tensor scalar: only 0 of 4 bytes written"),
           "incomplete: %s", err.msg);
    EXPECT(dir_is_empty(dir), "incomplete write left files behind");

    w = st_writer_open(path, specs, 2, NULL, &err);
    CHECK(w);
    EXPECT(st_writer_close(w, 0, &err) == 0 && dir_is_empty(dir), "abort left files behind");

    st_write_spec dup[2] = {specs[4], specs[4]};
    EXPECT(!st_writer_open(path, dup, 2, NULL, &err) && strstr(err.msg, "tensor b.bf16: named twice"), "dup: %s", err.msg);
    st_write_spec misaligned[2] = {specs[4], specs[0]};
    EXPECT(!st_writer_open(path, misaligned, 2, NULL, &err) &&
           strstr(err.msg, "tensor model.embed_tokens.weight: would start at data offset 14, not aligned"),
           "misaligned: %s", err.msg);
    st_write_spec neg = {"neg", DT_F32, 1, {-2}};
    EXPECT(!st_writer_open(path, &neg, 1, NULL, &err) && strstr(err.msg, "tensor neg: shape [-2]"), "neg: %s", err.msg);
    EXPECT(!st_writer_open(path, specs, 1, "[1]", &err) && strstr(err.msg, "metadata"), "metadata: %s", err.msg);
    EXPECT(dir_is_empty(dir), "refused writers left files behind");
    rmdir(dir);
}

int main(int argc, char **argv) {
    const char *src = argc > 1 ? argv[1] : LLAMOE_SOURCE_DIR;
    snprintf(tmp, sizeof tmp, "/tmp/llamoe_st_XXXXXX");
    CHECK(mkdtemp(tmp));
    test_bad_files();
    test_expect();
    test_bad_dirs();
    test_stories(src);
    test_writer();
    test_writer_errors();
    remove_dir(tmp);
    printf("safetensors: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
