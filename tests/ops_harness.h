// The op test's harness (tests/test_ops.c): seeded random data, the case-file format of
// tests/data/ops_cases*.txt, and comparisons. Header-only (static functions).
#pragma once
#include "base/rng.h"
#include "kernels/backend.h"

#include <math.h>
#include <string.h>

// ---------------------------------------------------------------------------- random data
static rng_t case_rng;   // reseeded per case by ops_for_each_case: cases are reorderable
static float rand_unit(void) { return (float)((rng_next(&case_rng) >> 40) * (2.0 / 16777216.0) - 1.0); }   // [-1, 1)
static inline int rand_int(int n) { return (int)(rng_next(&case_rng) % (uint64_t)n); }

static inline float *rand_floats(size_t n, float scale) {
    float *p = xmalloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = scale * rand_unit();
    return p;
}

// A rows x cols host weight with row stride ld, random values in dtype; padding columns hold
// NaN so a kernel that reads past cols shows it.
static inline weight_t rand_weight_host(int64_t rows, int64_t cols, int64_t ld, dtype_t dt, float scale) {
    size_t es = dtype_size(dt), count = (size_t)(rows ? rows : 1) * (size_t)ld;
    char *p = xmalloc(count * es);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < ld; c++) {
            float v = c < cols ? scale * rand_unit() : NAN;
            char *at = p + ((size_t)r * ld + c) * es;
            if (dt == DT_F32) memcpy(at, &v, 4);
            else { uint16_t h = dt == DT_BF16 ? f32_to_bf16(v) : f32_to_f16(v); memcpy(at, &h, 2); }
        }
    return (weight_t){p, dt, rows, cols, ld};
}

// ---------------------------------------------------------------------------- comparisons
// max |out - ref| / max |ref|: the error relative to the output's scale; NaN is infinite.
static inline double norm_err(const float *out, const float *ref, size_t n) {
    double e = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)out[i] - ref[i]);
        if (!(d <= e)) e = d;
        if (fabs(ref[i]) > m) m = fabs(ref[i]);
    }
    return isnan(e) ? INFINITY : e / (m > 0 ? m : 1);
}

// 0 when a and b are bitwise equal, else prints the first difference and returns 1.
static inline int bitwise(const char *what, const float *a, const float *b, size_t n) {
    if (!memcmp(a, b, n * sizeof(float))) return 0;
    for (size_t i = 0; i < n; i++)
        if (memcmp(a + i, b + i, sizeof(float))) {
            fprintf(stderr, "FAIL %s: element %zu differs: %.9g vs %.9g\n", what, i, a[i], b[i]);
            break;
        }
    return 1;
}

// ---------------------------------------------------------------------------- case lines
// One case per line: "op key=value key=value ...", '#' comments.
typedef struct { char key[32]; char val[256]; } kv;
typedef struct { char op[32]; kv p[16]; int np; char text[512]; char args[512]; } test_case;

static const char *param(const test_case *c, const char *key) {
    for (int i = 0; i < c->np; i++) if (!strcmp(c->p[i].key, key)) return c->p[i].val;
    die("ops cases: %s: missing parameter %s", c->text, key);
}
static inline int64_t iparam(const test_case *c, const char *key) { return strtoll(param(c, key), NULL, 10); }
static inline int64_t iparam_or(const test_case *c, const char *key, int64_t fallback) {   // optional
    for (int i = 0; i < c->np; i++) if (!strcmp(c->p[i].key, key)) return strtoll(c->p[i].val, NULL, 10);
    return fallback;
}
static inline double dparam(const test_case *c, const char *key) { return strtod(param(c, key), NULL); }
static inline dtype_t dtparam(const test_case *c) {
    dtype_t t;
    if (dtype_parse(param(c, "dtype"), &t)) die("ops cases: %s: bad dtype", c->text);
    return t;
}
static inline int lparam(const test_case *c, const char *key, int64_t *out, int max) {   // comma list
    const char *s = param(c, key);
    int n = 0;
    while (*s && n < max) {
        char *end;
        out[n++] = strtoll(s, &end, 10);
        s = *end == ',' ? end + 1 : end;
    }
    return n;
}

// Calls fn for every case of the file from the `first`-th on (cases count across calls in
// *index), with case_rng seeded from the line number and c->args holding the parameters
// without tol= (printed in its own column). Every case runs, whatever the others gave.
static void ops_for_each_case(const char *path, int first, int *index, void (*fn)(const test_case *c, void *ctx), void *ctx) {
    llamoe_err err;
    char *text = read_text_file(path, 1 << 20, NULL, &err);
    if (!text) die("%s", err.msg);
    int line_no = 0;
    for (char *save, *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        line_no++;
        while (*line == ' ') line++;
        if (!*line || *line == '#') continue;
        test_case c;
        memset(&c, 0, sizeof c);
        snprintf(c.text, sizeof c.text, "%s", line);
        snprintf(c.args, sizeof c.args, "%s", strchr(c.text, ' ') ? strchr(c.text, ' ') + 1 : "");
        char *t = strstr(c.args, "tol=");
        if (t) *(t > c.args ? t - 1 : t) = 0;
        char *tok_save, *tok = strtok_r(line, " \t", &tok_save);
        snprintf(c.op, sizeof c.op, "%s", tok);
        while ((tok = strtok_r(NULL, " \t", &tok_save)) && c.np < 16) {
            char *eq = strchr(tok, '=');
            if (!eq) die("%s: line %d: expected key=value, got '%s'", path, line_no, tok);
            *eq = 0;
            snprintf(c.p[c.np].key, sizeof c.p[c.np].key, "%s", tok);
            snprintf(c.p[c.np].val, sizeof c.p[c.np].val, "%s", eq + 1);
            c.np++;
        }
        if ((*index)++ < first) continue;
        case_rng.state = 0x1234u + (uint64_t)line_no;
        fn(&c, ctx);
    }
    free(text);
}

// The op of a case line -> the function that runs it (both tests have one table each).
typedef struct { const char *op; double (*run)(const test_case *); } op_case;
static double (*op_case_find(const op_case *table, size_t n, const test_case *c))(const test_case *) {
    for (size_t i = 0; i < n; i++) if (!strcmp(table[i].op, c->op)) return table[i].run;
    die("ops cases: unknown op '%s' in: %s", c->op, c->text);
}
