#define _GNU_SOURCE   // O_TMPFILE (out_file)
#include "base/common.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

// ---------------------------------------------------------------------------- errors
int fail(llamoe_err *err, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return -1;
}

// ---------------------------------------------------------------------------- sanitizer build
// LLAMOE_SANITIZE=ON: leaks are checked when a process ends normally, not after die(). die()
// abandons the process's state on purpose (a tokenizer still loaded, buffers of a half-done
// step), so a leak report there would be noise that hides real ones. LeakSanitizer's own
// at-exit check is off (default option below) and this atexit handler runs it unless dying.
#ifdef LLAMOE_SANITIZE
#include <sanitizer/lsan_interface.h>
static int dying;
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "leak_check_at_exit=0"; }
static void leak_check_unless_dying(void) { if (!dying) __lsan_do_leak_check(); }
__attribute__((constructor)) static void install_leak_check(void) { atexit(leak_check_unless_dying); }
#define MARK_DYING() (dying = 1)
#else
#define MARK_DYING() ((void)0)
#endif

static abort_fn process_abort = NULL;   // set once by the MPI layer; NULL means exit()

static char error_prefix[32] = "";      // "rank 2: " once the MPI layer knows the rank

void set_abort_handler(abort_fn fn) { process_abort = fn; }
void set_error_prefix(const char *prefix) { snprintf(error_prefix, sizeof error_prefix, "%s", prefix ? prefix : ""); }

// Named temporaries of out_file (only where O_TMPFILE is missing) that die() removes.
#define MAX_PENDING 8
static char *pending_tmp[MAX_PENDING];

static void pending_add(char *tmp) {
    for (int i = 0; i < MAX_PENDING; i++)
        if (!pending_tmp[i]) { pending_tmp[i] = tmp; return; }
}
static void pending_remove(const char *tmp) {
    for (int i = 0; i < MAX_PENDING; i++)
        if (pending_tmp[i] == tmp) pending_tmp[i] = NULL;
}

#define MAX_DIE_HOOKS 4
static void (*die_hooks[MAX_DIE_HOOKS])(void);

void on_die(void (*fn)(void)) {
    for (int i = 0; i < MAX_DIE_HOOKS; i++) {
        if (die_hooks[i] == fn) return;
        if (!die_hooks[i]) { die_hooks[i] = fn; return; }
    }
    CHECK(!"more than MAX_DIE_HOOKS die hooks");
}

_Noreturn void die(const char *fmt, ...) {
    char line[2 * LLAMOE_ERR_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "llamoe: %s%s\n", error_prefix, line);
    fflush(stderr);
    for (int i = 0; i < MAX_PENDING; i++)
        if (pending_tmp[i]) unlink(pending_tmp[i]);
    for (int i = 0; i < MAX_DIE_HOOKS; i++) {   // each once, even if it dies itself
        void (*fn)(void) = die_hooks[i];
        die_hooks[i] = NULL;
        if (fn) fn();
    }
    MARK_DYING();
    if (process_abort) process_abort(1);
    exit(1);
}

static int fail_allocations;   // LLAMOE_FAULT oom
void fault_fail_allocations(void) { fail_allocations = 1; }

void *xmalloc(size_t n) {
    void *p = fail_allocations ? NULL : malloc(n ? n : 1);
    if (!p) die("out of memory allocating %zu bytes", n);
    return p;
}

void *xcalloc(size_t n, size_t size) {
    void *p = fail_allocations ? NULL : calloc(n ? n : 1, size ? size : 1);
    if (!p) die("out of memory allocating %zu x %zu bytes", n, size);
    return p;
}

void *xrealloc(void *p, size_t n) {
    void *q = fail_allocations ? NULL : realloc(p, n ? n : 1);   // realloc(p, 0) may free p
    if (!q) die("out of memory allocating %zu bytes", n);
    return q;
}

char *xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = xmalloc(n);
    memcpy(p, s, n);
    return p;
}

// ---------------------------------------------------------------------------- dtypes
size_t dtype_size(dtype_t t) { return t == DT_F32 ? 4 : 2; }

const char *dtype_name(dtype_t t) {
    switch (t) {
    case DT_F32: return "F32";
    case DT_BF16: return "BF16";
    case DT_F16: return "F16";
    }
    return "?";
}

int dtype_parse(const char *s, dtype_t *out) {
    if (!strcmp(s, "F32")) *out = DT_F32;
    else if (!strcmp(s, "BF16")) *out = DT_BF16;
    else if (!strcmp(s, "F16")) *out = DT_F16;
    else return -1;
    return 0;
}

float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (exp == 0) {
        if (man == 0) u = sign;
        else {                         // subnormal: normalise
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) { man <<= 1; exp--; }
            u = sign | (exp << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) u = sign | 0x7f800000 | (man << 13);
    else u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    union { uint32_t u; float f; } v = { u };
    return v.f;
}

uint16_t f32_to_f16(float f) {
    union { float f; uint32_t u; } v = { f };
    uint32_t sign = (v.u >> 16) & 0x8000, exp = (v.u >> 23) & 0xff, man = v.u & 0x7fffff;
    if (exp == 0xff) return (uint16_t)(sign | 0x7c00 | (man ? 0x200 : 0));
    int e = (int)exp - 127 + 15;
    if (e >= 31) return (uint16_t)(sign | 0x7c00);
    if (e <= 0) {                      // subnormal or zero, round to nearest even
        if (e < -10) return (uint16_t)sign;
        man |= 0x800000;
        int shift = 14 - e;
        uint32_t half = 1u << (shift - 1), rest = man & ((1u << shift) - 1), q = man >> shift;
        if (rest > half || (rest == half && (q & 1))) q++;
        return (uint16_t)(sign | q);
    }
    uint32_t q = (uint32_t)(e << 10) | (man >> 13), rest = man & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (q & 1))) q++;   // may carry into the exponent: correct
    return (uint16_t)(sign | q);
}

void to_f32(float *dst, const void *src, dtype_t t, size_t n) {
    if (t == DT_F32) { memcpy(dst, src, n * 4); return; }
    const uint16_t *s = src;
    if (t == DT_BF16) for (size_t i = 0; i < n; i++) dst[i] = bf16_to_f32(s[i]);
    else for (size_t i = 0; i < n; i++) dst[i] = f16_to_f32(s[i]);
}

// ---------------------------------------------------------------------------- files
char *read_text_file(const char *path, size_t max_bytes, size_t *len, llamoe_err *err) {
    FILE *f = fopen(path, "rb");
    if (!f) { fail(err, "%s: cannot open: %s", path, strerror(errno)); return NULL; }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        fail(err, "%s: not a regular file", path);
        return NULL;
    }
    if ((size_t)st.st_size > max_bytes) {
        fclose(f);
        fail(err, "%s: file is %lld bytes, more than the %zu allowed", path, (long long)st.st_size, max_bytes);
        return NULL;
    }
    char *buf = xmalloc((size_t)st.st_size + 1);
    size_t n = fread(buf, 1, (size_t)st.st_size, f);
    fclose(f);
    if (n != (size_t)st.st_size) {
        free(buf);
        fail(err, "%s: short read (%zu of %lld bytes)", path, n, (long long)st.st_size);
        return NULL;
    }
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

int file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// ---------------------------------------------------------------------------- output files
int out_file_open(out_file *o, const char *path, llamoe_err *err) {
    memset(o, 0, sizeof *o);
    char *copy = xstrdup(path);
    int fd = -1;
#ifdef O_TMPFILE
    fd = open(dirname(copy), O_TMPFILE | O_WRONLY | O_CLOEXEC, 0644);
#endif
    free(copy);
    if (fd < 0) {   // no O_TMPFILE here (EOPNOTSUPP, EISDIR on old kernels): a named temporary
        size_t n = strlen(path) + 32;
        o->tmp = xmalloc(n);
        snprintf(o->tmp, n, "%s.tmp.%ld", path, (long)getpid());
        fd = open(o->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0) {
            fail(err, "%s: cannot create: %s", o->tmp, strerror(errno));
            free(o->tmp);
            o->tmp = NULL;
            return -1;
        }
        pending_add(o->tmp);
    }
    o->f = fdopen(fd, "wb");
    CHECK(o->f);
    o->path = xstrdup(path);
    return 0;
}

static void out_file_free(out_file *o) {
    if (o->tmp) pending_remove(o->tmp);
    free(o->tmp);
    free(o->path);
    memset(o, 0, sizeof *o);
}

void out_file_discard(out_file *o) {
    if (!o->f) return;
    fclose(o->f);
    if (o->tmp) unlink(o->tmp);
    out_file_free(o);
}

int out_file_commit(out_file *o, llamoe_err *err) {
    int rc = 0;
    if (fflush(o->f) != 0 || fsync(fileno(o->f)) != 0) rc = fail(err, "%s: write failed: %s", o->path, strerror(errno));
    char *tmp = o->tmp;
    char named[4200];
    if (rc == 0 && !tmp) {
        // Give the unnamed file a temporary name (link, via /proc: no privilege needed), then
        // rename it over the target, which replaces an old file atomically.
        char proc[64];
        snprintf(proc, sizeof proc, "/proc/self/fd/%d", fileno(o->f));
        snprintf(named, sizeof named, "%s.tmp.%ld", o->path, (long)getpid());
        if (linkat(AT_FDCWD, proc, AT_FDCWD, named, AT_SYMLINK_FOLLOW) != 0)
            rc = fail(err, "%s: cannot link the finished file: %s", o->path, strerror(errno));
        else tmp = named;
    }
    if (fclose(o->f) != 0 && rc == 0) rc = fail(err, "%s: write failed: %s", o->path, strerror(errno));
    if (rc == 0 && rename(tmp, o->path) != 0) rc = fail(err, "%s: cannot rename %s into place: %s", o->path, tmp, strerror(errno));
    if (rc != 0 && tmp) unlink(tmp);
    out_file_free(o);
    return rc;
}
