// Shared basics: dtypes, error reporting, checked arithmetic. Everything else includes this.
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

// ---------------------------------------------------------------------------- errors
// Errors from outside input travel as a message in a caller-owned buffer so that parsers
// can be tested and fuzzed without exiting; programs print it with die().
#define LLAMOE_ERR_LEN 512
typedef struct { char msg[LLAMOE_ERR_LEN]; } llamoe_err;

// Formats into err (if non-NULL) and returns -1, so parsers can `return fail(err, ...)`.
int fail(llamoe_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

// Prints "llamoe: <msg>" on stderr and ends the process (all ranks, once MPI is up).
_Noreturn void die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

// The process-wide abort path. die() calls it; the MPI layer installs MPI_Abort so that one
// failing rank stops the others instead of leaving them waiting in a collective.
typedef void (*abort_fn)(int code);   // must not return (C11 cannot say _Noreturn on a pointer)
void set_abort_handler(abort_fn fn);
// Runs fn in die() before the process ends, for output that must not outlive a failure (the
// temporary of an output directory, base/outdir.c); each runs once. At most 4.
void on_die(void (*fn)(void));
// Text put between "llamoe: " and die()'s message, e.g. "rank 2: " under MPI (at most 31 chars).
void set_error_prefix(const char *prefix);

// For calls that must not fail (malloc of internal buffers): names the call, file and line.
#define CHECK(cond) do { if (!(cond)) die("%s:%d: check failed: %s", __FILE__, __LINE__, #cond); } while (0)
void *xmalloc(size_t n);               // die()s with the size on failure
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);     // p may be NULL; die()s with the size on failure
char *xstrdup(const char *s);
// Test hook (runtime/fault.c): from now on xmalloc/xcalloc/xrealloc fail as if malloc returned NULL.
void fault_fail_allocations(void);

// ---------------------------------------------------------------------------- arithmetic
// Products of sizes read from files go through these: they return 0 on overflow.
static inline int mul_ok(size_t a, size_t b, size_t *out) { return !__builtin_mul_overflow(a, b, out); }
static inline int add_ok(size_t a, size_t b, size_t *out) { return !__builtin_add_overflow(a, b, out); }

// ---------------------------------------------------------------------------- dtypes
typedef enum { DT_F32 = 0, DT_BF16 = 1, DT_F16 = 2 } dtype_t;
size_t dtype_size(dtype_t t);
const char *dtype_name(dtype_t t);
int dtype_parse(const char *s, dtype_t *out);   // "F32" | "BF16" | "F16"; 0 on success

static inline float bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v = { (uint32_t)h << 16 };
    return v.f;
}
static inline uint16_t f32_to_bf16(float f) {   // round to nearest even; NaN stays NaN
    union { float f; uint32_t u; } v = { f };
    if ((v.u & 0x7fffffff) > 0x7f800000) return (uint16_t)((v.u >> 16) | 0x40);
    return (uint16_t)((v.u + 0x7fff + ((v.u >> 16) & 1)) >> 16);
}
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

// Converts n values of dtype t at src into float32.
void to_f32(float *dst, const void *src, dtype_t t, size_t n);

// ---------------------------------------------------------------------------- files
// Reads a whole (small) file into a NUL-terminated buffer; NULL with err on failure.
char *read_text_file(const char *path, size_t max_bytes, size_t *len, llamoe_err *err);
int file_exists(const char *path);

// An output file that appears complete under its name or not at all. Data goes to an unnamed
// file in the target's directory (O_TMPFILE), linked and renamed into place by
// out_file_commit: a process that fails or is killed (even by SIGKILL) before that leaves
// nothing. Where the file system lacks O_TMPFILE, PATH.tmp.PID stands in; out_file_discard
// and die() remove it (a SIGKILL can leave it, never a half PATH).
typedef struct {
    FILE *f;              // write through this (or fileno(f))
    char *path, *tmp;     // tmp: the named fallback, NULL with O_TMPFILE
} out_file;
int out_file_open(out_file *o, const char *path, llamoe_err *err);
int out_file_commit(out_file *o, llamoe_err *err);   // flush, fsync, rename; closes either way
void out_file_discard(out_file *o);
double now_seconds(void);
