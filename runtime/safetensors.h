// safetensors: mmap reader (single file or sharded with model.safetensors.index.json) and a
// streaming writer that writes to a temporary name and renames on success.
#pragma once
#include "base/common.h"

#define ST_MAX_DIMS 8

typedef struct {
    char *name;                   // owned
    dtype_t dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data;             // points into the mmapped file; never copied
    size_t nbytes;
    int file_index;               // which entry of st_set.files holds it
} st_tensor;

typedef struct {
    char *path;                   // owned
    void *map;                    // whole file, PROT_READ, MAP_PRIVATE
    size_t size;
} st_file;

typedef struct {
    st_tensor *tensors;           // sorted by name (st_find is a binary search)
    int n_tensors;
    st_file *files;
    int n_files;
} st_set;

// Opens DIR/model.safetensors.index.json if present (every shard it names), else
// DIR/model.safetensors. Validates every header completely (see safetensors.c); on failure
// returns -1 with one line in err naming the file, tensor and field, and leaves *s empty.
int st_open_dir(st_set *s, const char *dir, llamoe_err *err);
int st_open_file(st_set *s, const char *path, llamoe_err *err);   // one file, no index
void st_close(st_set *s);

const st_tensor *st_find(const st_set *s, const char *name);      // NULL if absent

// Checks that `name` exists with exactly the given shape (dtype any of F32/BF16/F16).
// Names the file, tensor and field on failure.
int st_expect(const st_set *s, const char *name, int ndim, const int64_t *shape,
              const st_tensor **out, llamoe_err *err);

// Total bytes of tensor data over all files (for progress and memory reports).
size_t st_total_bytes(const st_set *s);

// Validates a safetensors image already in memory (header + data). Used by st_open_file
// and directly by the fuzzer. On success fills tensors (names owned by caller, data points
// into buf) and returns the count; on failure -1.
int st_parse(const char *path_for_errors, const uint8_t *buf, size_t size,
             st_tensor **tensors, int *n_tensors, llamoe_err *err);

// Validates the text of a model.safetensors.index.json (a JSON object with a non-empty
// weight_map of printable tensor names to plain shard file names) without opening any shard.
// Used by st_open_dir and directly by the fuzzer; *n_entries is the number of tensors named.
int st_index_parse(const char *path, const char *text, size_t len, int *n_entries, llamoe_err *err);

// ---------------------------------------------------------------------------- writer
// Usage: st_writer_open with every tensor's name/dtype/shape, then st_writer_put each
// tensor's data in the same order, then st_writer_close(w, 1) to rename into place, or
// st_writer_close(w, 0) to discard. Nothing appears at `path` unless all succeeded.
typedef struct {
    const char *name;
    dtype_t dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
} st_write_spec;

typedef struct st_writer st_writer;
st_writer *st_writer_open(const char *path, const st_write_spec *specs, int n,
                          const char *metadata_json /* NULL or a JSON object of strings */,
                          llamoe_err *err);
int st_writer_put(st_writer *w, const void *data, size_t nbytes, llamoe_err *err);
int st_writer_close(st_writer *w, int commit, llamoe_err *err);
// The file descriptor the data goes to (positioned after what was put), for writers that
// manage its writeback (base/outdir.h's write_behind).
int st_writer_fd(const st_writer *w);

// Writes DIR/model.safetensors.index.json mapping each tensor name to its shard file,
// atomically. names[i] lives in shard_of[i] (a file name relative to DIR).
int st_write_index(const char *dir, const char *const *names, const char *const *shard_of,
                   int n, size_t total_size, llamoe_err *err);
