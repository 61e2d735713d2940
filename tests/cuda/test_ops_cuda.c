// Every op of the CUDA backend against the CPU backend on the cases of tests/data/ops_cases.txt
// plus tests/data/ops_cases_cuda.txt (GPU regimes: decode GEMV, cuBLASLt prefill, split-KV
// decode attention, prefill attention tiles, mixed small/large expert groups), with one
// normalised-error tolerance per op (the table below: bf16 activations in the cuBLASLt GEMMs
// cost about 2^-9 relative), then bitwise batch-invariance checks of the decode kernels.
// Stops at the first failure, naming the op, the case and the error.
//   test_ops_cuda SOURCE_DIR [--json FILE]
// Exits 77 (ctest: skipped) when no GPU is present.
#include "kernels/backend.h"
#include "tests/ops_harness.h"
#include "kernels/cuda/backend_cuda.h"

#include <math.h>
#include <string.h>

static const backend *cpu, *gpu;

// ---------------------------------------------------------------------------- tolerances
// max |cuda - cpu| / max |cpu| per op. GEMMs: the cuBLASLt path rounds activations to bf16
// (relative 2^-9 per element, about 1e-3 on a dot product of random signs); the expert FFN
// rounds twice (x and the hidden activations). Everything else is fp32 with the same formulas,
// differing only in summation order and in expf/sinf/cosf ulps.
static const struct { const char *op; double tol; } tolerances[] = {
    {"matmul", 1e-2}, {"expert_ffn", 2e-2}, {"attention", 1e-4}, {"rmsnorm", 1e-5},
    {"rope", 1e-5}, {"swiglu", 1e-6}, {"add", 0}, {"embed", 0}, {"gather_rows", 0},
    {"combine", 1e-6}, {"router_topk", 1e-5}, {"argmax", 0},
};

static double tolerance(const char *op) {
    for (size_t i = 0; i < sizeof tolerances / sizeof tolerances[0]; i++)
        if (!strcmp(tolerances[i].op, op)) return tolerances[i].tol;
    die("no CUDA tolerance for op %s", op);
}

// Host weight with NaN padding columns (a kernel reading past cols shows it), and its device
// copy with the same row stride (views of bigger matrices stay views on the GPU too).
typedef struct { weight_t host, dev; } weight_pair;

static weight_pair rand_weight(int64_t rows, int64_t cols, int64_t ld, dtype_t dt, float scale) {
    size_t count = (size_t)(rows ? rows : 1) * (size_t)ld * dtype_size(dt);
    weight_pair w;
    w.host = rand_weight_host(rows, cols, ld, dt, scale);
    w.dev = w.host;
    void *d = gpu->alloc(count);
    gpu->upload(d, w.host.data, count);
    w.dev.data = d;
    return w;
}
static void free_weight(weight_pair *w) { free((void *)w->host.data); gpu->free((void *)w->dev.data); }

static float *to_dev(const float *h, size_t n) {
    float *d = gpu->alloc((n ? n : 1) * sizeof(float));
    gpu->upload(d, h, n * sizeof(float));
    return d;
}
static float *from_dev(const float *d, size_t n) {
    float *h = xmalloc((n ? n : 1) * sizeof(float));
    gpu->download(h, d, n * sizeof(float));
    return h;
}

// Compares a device result with the host one and frees both.
static double cmp_free(float *dev, float *ref, size_t n) {
    float *got = from_dev(dev, n);
    double e = norm_err(got, ref, n);
    free(got);
    gpu->free(dev);
    free(ref);
    return e;
}

static double case_matmul(const test_case *c) {
    int n = (int)iparam(c, "n");
    weight_pair w = rand_weight(iparam(c, "rows"), iparam(c, "cols"), iparam(c, "ld"), dtparam(c), 1);
    size_t nin = (size_t)n * w.host.cols, nout = (size_t)n * w.host.rows;
    float *x = rand_floats(nin, 1), *ref = xmalloc(nout * sizeof(float));
    float *dx = to_dev(x, nin), *dout = gpu->alloc(nout * sizeof(float));
    cpu->matmul(ref, x, &w.host, n);
    gpu->matmul(dout, dx, &w.dev, n);
    double e = cmp_free(dout, ref, nout);
    gpu->free(dx); free(x); free_weight(&w);
    return e;
}

static double case_embed(const test_case *c) {
    int n = (int)iparam(c, "n");
    weight_pair t = rand_weight(iparam(c, "rows"), iparam(c, "cols"), iparam(c, "ld"), dtparam(c), 1);
    int32_t *ids = xmalloc((size_t)n * sizeof(int32_t));
    for (int i = 0; i < n; i++) ids[i] = rng_int((int)t.host.rows);
    size_t count = (size_t)n * t.host.cols;
    float *ref = xmalloc(count * sizeof(float)), *dout = gpu->alloc(count * sizeof(float));
    cpu->embed(ref, &t.host, ids, n);
    gpu->embed(dout, &t.dev, ids, n);
    double e = cmp_free(dout, ref, count);
    free(ids); free_weight(&t);
    return e;
}

static double case_rmsnorm(const test_case *c) {
    int n = (int)iparam(c, "n"), dim = (int)iparam(c, "dim");
    size_t count = (size_t)n * dim;
    float *x = rand_floats(count, 3), *w = rand_floats(dim, 1), *ref = xmalloc(count * sizeof(float));
    float *dx = to_dev(x, count), *dw = to_dev(w, dim), *dout = gpu->alloc(count * sizeof(float));
    cpu->rmsnorm(ref, x, w, n, dim, 1e-5f);
    gpu->rmsnorm(dout, dx, dw, n, dim, 1e-5f);
    double e = cmp_free(dout, ref, count);
    gpu->free(dx); gpu->free(dw); free(x); free(w);
    return e;
}

static double case_rope(const test_case *c) {
    int n = (int)iparam(c, "n"), heads = (int)iparam(c, "heads"), hd = (int)iparam(c, "head_dim");
    int32_t *pos = xmalloc((size_t)n * sizeof(int32_t));
    for (int i = 0; i < n; i++) pos[i] = i == 0 ? (int)iparam(c, "max_pos") : rng_int((int)iparam(c, "max_pos") + 1);
    size_t count = (size_t)n * heads * hd;
    float *x = rand_floats(count, 1), *f = xmalloc(sizeof(float) * (hd / 2));
    for (int j = 0; j < hd / 2; j++) f[j] = (float)pow(500000.0, -2.0 * j / hd);
    float *dx = to_dev(x, count);
    cpu->rope(x, n, heads, hd, pos, f);
    gpu->rope(dx, n, heads, hd, pos, f);   // inv_freq is host memory on every backend
    double e = cmp_free(dx, x, count);
    free(f); free(pos);
    return e;
}

// A random cache, the batch's own k/v written by kv_write at distinct (slot, pos), attention.
// n may exceed the CPU test's 64 (prefill tiles); slots=1 makes every token one sequence.
static double case_attention(const test_case *c) {
    int n = (int)iparam(c, "n"), heads = (int)iparam(c, "heads"), kvh = (int)iparam(c, "kv_heads");
    int hd = (int)iparam(c, "head_dim"), max_pos = (int)iparam(c, "max_pos"), slots = (int)iparam(c, "slots");
    int kv_dim = kvh * hd;
    int64_t stride = (int64_t)(max_pos + 1) * kv_dim;
    size_t cache = (size_t)slots * stride, qn = (size_t)n * heads * hd, kn = (size_t)n * kv_dim;
    CHECK((int64_t)n <= (int64_t)slots * (max_pos + 1));
    float *kc = rand_floats(cache, 1), *vc = rand_floats(cache, 1);
    float *q = rand_floats(qn, 2), *k = rand_floats(kn, 1), *v = rand_floats(kn, 1);
    int32_t *slot = xmalloc((size_t)n * sizeof(int32_t)), *pos = xmalloc((size_t)n * sizeof(int32_t));
    for (int i = 0; i < n; i++) {
        for (int again = 1; again;) {
            slot[i] = rng_int(slots);
            pos[i] = i == 0 ? max_pos : rng_int(max_pos + 1);
            again = 0;
            for (int j = 0; j < i; j++) again |= slot[j] == slot[i] && pos[j] == pos[i];
        }
    }
    float *dkc = to_dev(kc, cache), *dvc = to_dev(vc, cache), *dq = to_dev(q, qn), *dk = to_dev(k, kn), *dv = to_dev(v, kn);
    cpu->kv_write(kc, vc, k, v, slot, pos, n, kv_dim, stride);
    gpu->kv_write(dkc, dvc, dk, dv, slot, pos, n, kv_dim, stride);
    float *got = from_dev(dkc, cache);
    double e = memcmp(got, kc, cache * sizeof(float)) ? INFINITY : 0;
    free(got);
    got = from_dev(dvc, cache);
    if (memcmp(got, vc, cache * sizeof(float))) e = INFINITY;
    free(got);
    float *ref = xmalloc(qn * sizeof(float)), *dout = gpu->alloc(qn * sizeof(float));
    cpu->attention(ref, q, kc, vc, slot, pos, n, heads, kvh, hd, stride);
    gpu->attention(dout, dq, dkc, dvc, slot, pos, n, heads, kvh, hd, stride);
    double ea = cmp_free(dout, ref, qn);
    gpu->free(dkc); gpu->free(dvc); gpu->free(dq); gpu->free(dk); gpu->free(dv);
    free(kc); free(vc); free(q); free(k); free(v); free(slot); free(pos);
    return ea > e ? ea : e;
}

static double case_swiglu(const test_case *c) {
    int64_t n = iparam(c, "count");
    float *g = rand_floats(n, 6), *u = rand_floats(n, 2), *ref = xmalloc(sizeof(float) * n);
    float *dg = to_dev(g, n), *du = to_dev(u, n);
    cpu->swiglu(ref, g, u, n);
    gpu->swiglu(dg, dg, du, n);   // in place, as the runtime uses it
    double e = cmp_free(dg, ref, n);
    gpu->free(du); free(g); free(u);
    return e;
}

static double case_add(const test_case *c) {
    int64_t n = iparam(c, "count");
    float *x = rand_floats(n, 1), *y = rand_floats(n, 1);
    float *dx = to_dev(x, n), *dy = to_dev(y, n);
    cpu->add(x, y, n);
    gpu->add(dx, dy, n);
    double e = cmp_free(dx, x, n);
    gpu->free(dy); free(y);
    return e;
}

static double case_router_topk(const test_case *c) {
    int n = (int)iparam(c, "n"), E = (int)iparam(c, "experts"), k = (int)iparam(c, "k");
    float *logits = rand_floats((size_t)n * E, 3);
    if (iparam(c, "ties"))
        for (int i = 0; i < n * E; i++) logits[i] = (float)rng_int(3);
    float *dl = to_dev(logits, (size_t)n * E);
    int32_t *ex = xmalloc(sizeof(int32_t) * n * k), *rex = xmalloc(sizeof(int32_t) * n * k);
    float *w = xmalloc(sizeof(float) * n * k), *rw = xmalloc(sizeof(float) * n * k);
    cpu->router_topk(rex, rw, logits, n, E, k);
    gpu->router_topk(ex, w, dl, n, E, k);   // outputs are host arrays
    double e = memcmp(ex, rex, sizeof(int32_t) * n * k) ? INFINITY : norm_err(w, rw, (size_t)n * k);
    gpu->free(dl); free(logits); free(ex); free(rex); free(w); free(rw);
    return e;
}

static double case_gather_rows(const test_case *c) {
    int n = (int)iparam(c, "n"), dim = (int)iparam(c, "dim"), src = (int)iparam(c, "src");
    float *x = rand_floats((size_t)src * dim, 1), *ref = xmalloc(sizeof(float) * n * dim);
    int32_t *rows = xmalloc((size_t)n * sizeof(int32_t));
    for (int i = 0; i < n; i++) rows[i] = rng_int(src);
    float *dx = to_dev(x, (size_t)src * dim), *dout = gpu->alloc(sizeof(float) * n * dim);
    cpu->gather_rows(ref, x, rows, n, dim);
    gpu->gather_rows(dout, dx, rows, n, dim);
    double e = cmp_free(dout, ref, (size_t)n * dim);
    gpu->free(dx); free(x); free(rows);
    return e;
}

static double case_expert_ffn(const test_case *c) {
    int64_t ff[64], counts[64], d = iparam(c, "d");
    int E = lparam(c, "ff", ff, 64);
    if (lparam(c, "counts", counts, 64) != E) die("ops cases: %s: ff and counts differ in length", c->text);
    dtype_t dt = dtparam(c);
    weight_pair w1[64], w3[64], w2[64];
    weight_t h1[64], h3[64], h2[64], d1[64], d3[64], d2[64];
    int64_t offsets[65] = {0};
    for (int e = 0; e < E; e++) {
        w1[e] = rand_weight(ff[e], d, d + e % 3, dt, 0.3f);
        w3[e] = rand_weight(ff[e], d, d + 1, dt, 0.3f);
        w2[e] = rand_weight(d, ff[e], ff[e] + e % 2, dt, 0.3f);
        h1[e] = w1[e].host; h3[e] = w3[e].host; h2[e] = w2[e].host;
        d1[e] = w1[e].dev; d3[e] = w3[e].dev; d2[e] = w2[e].dev;
        offsets[e + 1] = offsets[e] + counts[e];
    }
    expert_set hx = {E, h1, h3, h2}, dx_set = {E, d1, d3, d2};
    size_t count = (size_t)offsets[E] * d;
    float *x = rand_floats(count, 1), *ref = xmalloc(sizeof(float) * (count + 1));
    float *dx = to_dev(x, count), *dout = gpu->alloc(sizeof(float) * (count + 1));
    cpu->expert_ffn(ref, x, offsets, &hx);
    gpu->expert_ffn(dout, dx, offsets, &dx_set);
    double e = cmp_free(dout, ref, count);
    for (int j = 0; j < E; j++) { free_weight(&w1[j]); free_weight(&w3[j]); free_weight(&w2[j]); }
    gpu->free(dx); free(x);
    return e;
}

static double case_combine(const test_case *c) {
    int n = (int)iparam(c, "n"), k = (int)iparam(c, "k"), dim = (int)iparam(c, "dim"), src = (int)iparam(c, "src");
    float *y = rand_floats((size_t)src * dim, 1), *w = rand_floats((size_t)n * k, 1);
    int32_t *row = xmalloc(sizeof(int32_t) * n * k);
    for (int i = 0; i < n * k; i++) row[i] = rng_int(src);
    float *ref = xmalloc(sizeof(float) * n * dim), *dy = to_dev(y, (size_t)src * dim), *dout = gpu->alloc(sizeof(float) * n * dim);
    cpu->combine(ref, y, row, w, n, k, dim);
    gpu->combine(dout, dy, row, w, n, k, dim);   // row and weight are host arrays
    double e = cmp_free(dout, ref, (size_t)n * dim);
    gpu->free(dy); free(y); free(w); free(row);
    return e;
}

static double case_argmax(const test_case *c) {
    int n = (int)iparam(c, "n"), vocab = (int)iparam(c, "vocab");
    float *l = rand_floats((size_t)n * vocab, 10);
    if (iparam(c, "ties"))
        for (int i = 0; i < n * vocab; i++) l[i] = (float)rng_int(4);
    float *dl = to_dev(l, (size_t)n * vocab);
    int32_t *out = xmalloc(sizeof(int32_t) * n), *ref = xmalloc(sizeof(int32_t) * n);
    cpu->argmax(ref, l, n, vocab);
    gpu->argmax(out, dl, n, vocab);   // out is host memory
    double e = memcmp(out, ref, sizeof(int32_t) * n) ? INFINITY : 0;
    gpu->free(dl); free(l); free(out); free(ref);
    return e;
}

static const op_case cases[] = {
    {"matmul", case_matmul}, {"embed", case_embed}, {"rmsnorm", case_rmsnorm}, {"rope", case_rope},
    {"attention", case_attention}, {"swiglu", case_swiglu}, {"add", case_add},
    {"router_topk", case_router_topk}, {"gather_rows", case_gather_rows},
    {"expert_ffn", case_expert_ffn}, {"combine", case_combine}, {"argmax", case_argmax},
};

// ---------------------------------------------------------------------------- invariance
// Decode GEMV: token 3 alone, in a batch of 7 and first in a batch of 5 give the same bits;
// 1-8 tokens all take the GEMV path.
static int invariance_matmul(void) {
    int bad = 0, rows = 1000, cols = 4096, who = 3;
    weight_pair w = rand_weight(rows, cols, cols, DT_BF16, 1);
    float *x = rand_floats((size_t)7 * cols, 1);
    float *dx = to_dev(x, (size_t)7 * cols), *d1 = gpu->alloc(sizeof(float) * rows), *d7 = gpu->alloc(sizeof(float) * 7 * rows);
    float *d5 = gpu->alloc(sizeof(float) * 5 * rows);
    gpu->matmul(d1, dx + (size_t)who * cols, &w.dev, 1);
    gpu->matmul(d7, dx, &w.dev, 7);
    gpu->matmul(d5, dx + (size_t)who * cols, &w.dev, 5);
    float *a = from_dev(d1, rows), *b = from_dev(d7, (size_t)7 * rows), *c5 = from_dev(d5, (size_t)5 * rows);
    bad |= bitwise("matmul decode: alone vs in a batch of 7", a, b + (size_t)who * rows, rows);
    bad |= bitwise("matmul decode: alone vs first of 5", a, c5, rows);
    free(a); free(b); free(c5); free(x);
    gpu->free(dx); gpu->free(d1); gpu->free(d7); gpu->free(d5); free_weight(&w);
    return bad;
}

// Small-batch expert FFN: the same bits as matmul + swiglu + matmul, and an expert's rows do
// not depend on the other experts' counts.
static int invariance_expert_ffn(void) {
    int bad = 0, E = 3, d = 512, ff = 384;
    weight_pair w1[3], w3[3], w2[3];
    weight_t a1[3], a3[3], a2[3];
    for (int e = 0; e < E; e++) {
        w1[e] = rand_weight(ff, d, d, DT_BF16, 0.3f);
        w3[e] = rand_weight(ff, d, d, DT_BF16, 0.3f);
        w2[e] = rand_weight(d, ff, ff, DT_BF16, 0.3f);
        a1[e] = w1[e].dev; a3[e] = w3[e].dev; a2[e] = w2[e].dev;
    }
    expert_set ex = {E, a1, a3, a2};
    float *x = rand_floats((size_t)9 * d, 1), *dx = to_dev(x, (size_t)9 * d);
    float *dout = gpu->alloc(sizeof(float) * 9 * d), *dout1 = gpu->alloc(sizeof(float) * d);
    int64_t offs[4] = {0, 4, 5, 9};
    gpu->expert_ffn(dout, dx, offs, &ex);
    int64_t alone[4] = {0, 0, 0, 1};   // row 6 (expert 2) alone
    gpu->expert_ffn(dout1, dx + 6 * d, alone, &ex);
    float *out = from_dev(dout, (size_t)9 * d), *one = from_dev(dout1, d);
    bad |= bitwise("expert_ffn decode: token alone vs among 4 of its expert", one, out + 6 * d, d);
    float *g = gpu->alloc(sizeof(float) * ff), *u = gpu->alloc(sizeof(float) * ff);
    gpu->matmul(g, dx + 6 * d, &a1[2], 1);
    gpu->matmul(u, dx + 6 * d, &a3[2], 1);
    gpu->swiglu(g, g, u, ff);
    gpu->matmul(dout1, g, &a2[2], 1);
    free(one);
    one = from_dev(dout1, d);
    bad |= bitwise("expert_ffn decode vs matmul + swiglu + matmul", one, out + 6 * d, d);
    for (int e = 0; e < E; e++) { free_weight(&w1[e]); free_weight(&w3[e]); free_weight(&w2[e]); }
    free(x); free(out); free(one);
    gpu->free(dx); gpu->free(dout); gpu->free(dout1); gpu->free(g); gpu->free(u);
    return bad;
}

// Prefill attention (no key split): a token alone vs in a batch of consecutive tokens.
static int invariance_attention(void) {
    int bad = 0, heads = 32, kvh = 8, hd = 128, ctx = 64, n = 40, kv_dim = kvh * hd;
    int64_t stride = (int64_t)ctx * kv_dim;
    size_t qd = (size_t)heads * hd;
    float *kc = rand_floats((size_t)stride, 1), *vc = rand_floats((size_t)stride, 1), *q = rand_floats(n * qd, 2);
    float *dkc = to_dev(kc, stride), *dvc = to_dev(vc, stride), *dq = to_dev(q, n * qd);
    float *dout = gpu->alloc(sizeof(float) * n * qd), *done = gpu->alloc(sizeof(float) * qd);
    int32_t slot[40], pos[40];
    for (int i = 0; i < n; i++) { slot[i] = 0; pos[i] = i + 10; }
    gpu->attention(dout, dq, dkc, dvc, slot, pos, n, heads, kvh, hd, stride);
    float *out = from_dev(dout, n * qd);
    for (int i = 0; i < n; i += 13) {
        gpu->attention(done, dq + i * qd, dkc, dvc, slot + i, pos + i, 1, heads, kvh, hd, stride);
        float *one = from_dev(done, qd);
        bad |= bitwise("attention prefill: token alone vs in a batch of 40", one, out + i * qd, qd);
        free(one);
    }
    free(kc); free(vc); free(q); free(out);
    gpu->free(dkc); gpu->free(dvc); gpu->free(dq); gpu->free(dout); gpu->free(done);
    return bad;
}

// ---------------------------------------------------------------------------- main
typedef struct { int passed, failed; FILE *json; int first; } tally;

static void json_row(tally *t, const char *op, const char *args, double err, double tol, int ok) {
    if (!t->json) return;
    fprintf(t->json, "%s\n    {\"op\": \"%s\", \"case\": \"%s\", \"error\": %.6g, \"tol\": %.3g, \"ok\": %s}",
            t->first ? "" : ",", op, args, isinf(err) ? 1e308 : err, tol, ok ? "true" : "false");
    t->first = 0;
}

static int run_case(const test_case *c, void *ctx) {
    tally *t = ctx;
    double tol = tolerance(c->op), e = op_case_find(cases, sizeof cases / sizeof cases[0], c)(c);
    int ok = e <= tol;   // the case's tol= is the CPU-vs-reference one: not used here
    printf("%-12s %-64.64s %10.3g %8.2g %s\n", c->op, c->args, e, tol, ok ? "ok" : "FAIL");
    fflush(stdout);
    json_row(t, c->op, c->args, e, tol, ok);
    if (ok) { t->passed++; return 0; }
    t->failed++;
    fprintf(stderr, "FAIL %s: %s: normalised error %.3g over tolerance %.2g (CUDA vs CPU)\n", c->op, c->args, e, tol);
    return 1;
}

static int run_file(const char *path, tally *t) { return ops_for_each_case(path, run_case, t); }

int main(int argc, char **argv) {
    if (argc < 2) die("usage: test_ops_cuda SOURCE_DIR [--json FILE]");
    if (cuda_device_count() == 0) {
        printf("test_ops_cuda: no CUDA device: skipped\n");
        return 77;
    }
    tally t = {0, 0, NULL, 1};
    if (argc >= 4 && !strcmp(argv[2], "--json")) {
        t.json = fopen(argv[3], "w");
        if (!t.json) die("%s: cannot create", argv[3]);
        fprintf(t.json, "{\"cases\": [");
    }
    cpu = backend_cpu();
    backend_cpu_set_threads(4);
    gpu = backend_cuda();
    printf("device: %s\n", cuda_device_description());
    printf("%-12s %-64s %10s %8s\n", "op", "case (CUDA vs CPU)", "max_err", "tol");
    char path[4096];
    const char *files[] = {"ops_cases.txt", "ops_cases_cuda.txt"};
    for (int f = 0; f < 2 && !t.failed; f++) {
        snprintf(path, sizeof path, "%s/tests/data/%s", argv[1], files[f]);
        run_file(path, &t);
    }
    if (!t.failed) {
        rng_state = 42;
        struct { const char *name; int (*run)(void); } inv[] = {
            {"invariance matmul decode (batch, position)", invariance_matmul},
            {"invariance expert_ffn decode (grouping, = single ops)", invariance_expert_ffn},
            {"invariance attention prefill (batch)", invariance_attention},
        };
        for (size_t i = 0; i < sizeof inv / sizeof inv[0]; i++) {
            int bad = inv[i].run();
            printf("%-77s %s\n", inv[i].name, bad ? "FAIL" : "bitwise equal");
            json_row(&t, "invariance", inv[i].name, bad ? INFINITY : 0, 0, !bad);
            if (bad) { t.failed++; break; }
            t.passed++;
        }
    }
    if (t.json) {
        fprintf(t.json, "\n  ], \"device\": \"%s\", \"passed\": %d, \"failed\": %d}\n", cuda_device_description(), t.passed, t.failed);
        fclose(t.json);
    }
    printf("ops_cuda: %d passed, %d failed\n", t.passed, t.failed);
    return t.failed ? 1 : 0;
}
