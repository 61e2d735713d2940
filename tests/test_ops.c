// Every CPU backend op against its naive reference (tests/ops_reference.h) on seeded random
// data, one case per line of tests/data/ops_cases.txt, then the determinism properties the
// project relies on: a token's results are bitwise the same alone or in a batch, at any
// position, with any thread count, and with F32 or BF16 weights holding the same values.
//   test_ops SOURCE_DIR
#include "kernels/backend.h"
#include "tests/ops_harness.h"
#include "tests/ops_reference.h"

#include <math.h>
#include <string.h>

static const backend *be;

// ---------------------------------------------------------------------------- the cases
// Each returns the normalised error of the case (INFINITY for a wrong integer output).
static double case_matmul(const test_case *c) {
    int n = (int)iparam(c, "n");
    weight_t w = rand_weight_host(iparam(c, "rows"), iparam(c, "cols"), iparam(c, "ld"), dtparam(c), 1);
    float *x = rand_floats((size_t)n * w.cols, 1), *out = xmalloc(sizeof(float) * n * w.rows), *ref = xmalloc(sizeof(float) * n * w.rows);
    be->matmul(out, x, &w, n);
    ref_matmul(ref, x, &w, n);
    double e = norm_err(out, ref, (size_t)n * w.rows);
    free(x); free(out); free(ref); free((void *)w.data);
    return e;
}

static double case_embed(const test_case *c) {
    int n = (int)iparam(c, "n");
    weight_t t = rand_weight_host(iparam(c, "rows"), iparam(c, "cols"), iparam(c, "ld"), dtparam(c), 1);
    int32_t ids[64];
    for (int i = 0; i < n; i++) ids[i] = rng_int((int)t.rows);
    float *out = xmalloc(sizeof(float) * n * t.cols), *ref = xmalloc(sizeof(float) * n * t.cols);
    be->embed(out, &t, ids, n);
    ref_embed(ref, &t, ids, n);
    double e = norm_err(out, ref, (size_t)n * t.cols);
    free(out); free(ref); free((void *)t.data);
    return e;
}

// scale: the inputs' range; at 1e-3 the mean square (about 3e-7) is far below eps = 1e-5, so
// the output is mostly eps's doing and a wrong eps shows at once.
static double case_rmsnorm(const test_case *c) {
    int n = (int)iparam(c, "n"), dim = (int)iparam(c, "dim");
    float *x = rand_floats((size_t)n * dim, (float)dparam(c, "scale")), *w = rand_floats(dim, 1);
    float *out = xmalloc(sizeof(float) * n * dim), *ref = xmalloc(sizeof(float) * n * dim);
    be->rmsnorm(out, x, w, n, dim, 1e-5f);
    ref_rmsnorm(ref, x, w, n, dim, 1e-5f);
    double e = norm_err(out, ref, (size_t)n * dim);
    free(x); free(w); free(out); free(ref);
    return e;
}

static float *llama_inv_freq(int head_dim) {
    float *f = xmalloc(sizeof(float) * (head_dim / 2));
    for (int j = 0; j < head_dim / 2; j++) f[j] = (float)pow(500000.0, -2.0 * j / head_dim);
    return f;
}

static double case_rope(const test_case *c) {
    int n = (int)iparam(c, "n"), heads = (int)iparam(c, "heads"), hd = (int)iparam(c, "head_dim");
    int32_t pos[64];
    for (int i = 0; i < n; i++) pos[i] = i == 0 ? (int)iparam(c, "max_pos") : rng_int((int)iparam(c, "max_pos") + 1);
    size_t count = (size_t)n * heads * hd;
    float *x = rand_floats(count, 1), *ref = xmalloc(sizeof(float) * count), *f = llama_inv_freq(hd);
    memcpy(ref, x, sizeof(float) * count);
    be->rope(x, n, heads, hd, pos, f);
    ref_rope(ref, n, heads, hd, pos, f);
    double e = norm_err(x, ref, count);
    free(x); free(ref); free(f);
    return e;
}

// Fills a random cache, writes the batch's own k/v rows with kv_write (distinct (slot, pos)
// pairs), checks they landed, then runs attention.
static double case_attention(const test_case *c) {
    int n = (int)iparam(c, "n"), heads = (int)iparam(c, "heads"), kvh = (int)iparam(c, "kv_heads");
    int hd = (int)iparam(c, "head_dim"), max_pos = (int)iparam(c, "max_pos"), slots = (int)iparam(c, "slots");
    int kv_dim = kvh * hd;
    int64_t stride = (int64_t)(max_pos + 1) * kv_dim;
    float *kc = rand_floats((size_t)slots * stride, 1), *vc = rand_floats((size_t)slots * stride, 1);
    float *q = rand_floats((size_t)n * heads * hd, 2), *k = rand_floats((size_t)n * kv_dim, 1), *v = rand_floats((size_t)n * kv_dim, 1);
    int32_t slot[64], pos[64];
    for (int i = 0; i < n; i++) {
        for (int again = 1; again;) {
            slot[i] = rng_int(slots);
            pos[i] = i == 0 ? max_pos : rng_int(max_pos + 1);
            again = 0;
            for (int j = 0; j < i; j++) again |= slot[j] == slot[i] && pos[j] == pos[i];
        }
    }
    be->kv_write(kc, vc, k, v, slot, pos, n, kv_dim, stride);
    double e = 0;
    for (int i = 0; i < n; i++) {
        size_t at = (size_t)slot[i] * stride + (size_t)pos[i] * kv_dim;
        if (memcmp(kc + at, k + (size_t)i * kv_dim, sizeof(float) * kv_dim) ||
            memcmp(vc + at, v + (size_t)i * kv_dim, sizeof(float) * kv_dim)) e = INFINITY;
    }
    size_t count = (size_t)n * heads * hd;
    float *out = xmalloc(sizeof(float) * count), *ref = xmalloc(sizeof(float) * count);
    be->attention(out, q, kc, vc, slot, pos, n, heads, kvh, hd, stride);
    ref_attention(ref, q, kc, vc, slot, pos, n, heads, kvh, hd, stride);
    double ea = norm_err(out, ref, count);
    free(kc); free(vc); free(q); free(k); free(v); free(out); free(ref);
    return ea > e ? ea : e;
}

static double case_swiglu(const test_case *c) {
    int64_t n = iparam(c, "count");
    float *g = rand_floats(n, 6), *u = rand_floats(n, 2), *out = xmalloc(sizeof(float) * n), *ref = xmalloc(sizeof(float) * n);
    be->swiglu(out, g, u, n);
    ref_swiglu(ref, g, u, n);
    double e = norm_err(out, ref, n);
    be->swiglu(g, g, u, n);   // in place, as the runtime uses it
    if (memcmp(g, out, sizeof(float) * n)) e = INFINITY;
    free(g); free(u); free(out); free(ref);
    return e;
}

static double case_add(const test_case *c) {
    int64_t n = iparam(c, "count");
    float *x = rand_floats(n, 1), *y = rand_floats(n, 1), *ref = xmalloc(sizeof(float) * n);
    for (int64_t i = 0; i < n; i++) ref[i] = x[i] + y[i];
    be->add(x, y, n);
    double e = norm_err(x, ref, n);
    free(x); free(y); free(ref);
    return e;
}

static double case_router_topk(const test_case *c) {
    int n = (int)iparam(c, "n"), E = (int)iparam(c, "experts"), k = (int)iparam(c, "k");
    float *logits = rand_floats((size_t)n * E, 3);
    if (iparam(c, "ties"))   // few distinct values: ties at the top and at the cut
        for (int i = 0; i < n * E; i++) logits[i] = (float)rng_int(3);
    int32_t *ex = xmalloc(sizeof(int32_t) * n * k), *rex = xmalloc(sizeof(int32_t) * n * k);
    float *w = xmalloc(sizeof(float) * n * k), *rw = xmalloc(sizeof(float) * n * k);
    be->router_topk(ex, w, logits, n, E, k);
    ref_router_topk(rex, rw, logits, n, E, k);
    double e = memcmp(ex, rex, sizeof(int32_t) * n * k) ? INFINITY : norm_err(w, rw, (size_t)n * k);
    free(logits); free(ex); free(rex); free(w); free(rw);
    return e;
}

static double case_gather_rows(const test_case *c) {
    int n = (int)iparam(c, "n"), dim = (int)iparam(c, "dim"), src = (int)iparam(c, "src");
    float *x = rand_floats((size_t)src * dim, 1), *out = xmalloc(sizeof(float) * n * dim);
    int32_t rows[64];
    for (int i = 0; i < n; i++) rows[i] = rng_int(src);
    be->gather_rows(out, x, rows, n, dim);
    double e = 0;
    for (int i = 0; i < n; i++) if (memcmp(out + i * dim, x + rows[i] * dim, sizeof(float) * dim)) e = INFINITY;
    free(x); free(out);
    return e;
}

static double case_expert_ffn(const test_case *c) {
    int64_t ff[64], counts[64], d = iparam(c, "d");
    int E = lparam(c, "ff", ff, 64);
    if (lparam(c, "counts", counts, 64) != E) die("ops_cases.txt: %s: ff and counts differ in length", c->text);
    dtype_t dt = dtparam(c);
    weight_t w1[64], w3[64], w2[64];
    int64_t offsets[65] = {0};
    for (int e = 0; e < E; e++) {   // odd row strides: experts are views of bigger matrices
        w1[e] = rand_weight_host(ff[e], d, d + e % 3, dt, 0.3f);
        w3[e] = rand_weight_host(ff[e], d, d + 1, dt, 0.3f);
        w2[e] = rand_weight_host(d, ff[e], ff[e] + e % 2, dt, 0.3f);
        offsets[e + 1] = offsets[e] + counts[e];
    }
    expert_set ex = {E, w1, w3, w2};
    size_t count = (size_t)offsets[E] * d;
    float *x = rand_floats(count, 1), *out = xmalloc(sizeof(float) * (count + 1)), *ref = xmalloc(sizeof(float) * (count + 1));
    be->expert_ffn(out, x, offsets, &ex);
    ref_expert_ffn(ref, x, offsets, &ex);
    double e = norm_err(out, ref, count);
    for (int j = 0; j < E; j++) { free((void *)w1[j].data); free((void *)w3[j].data); free((void *)w2[j].data); }
    free(x); free(out); free(ref);
    return e;
}

// Each token gets k distinct experts out of `experts`, in ascending order as router_topk
// writes them, each entry a random row of y (src rows) and a random weight. tol=0: bitwise.
static double case_combine(const test_case *c) {
    int n = (int)iparam(c, "n"), k = (int)iparam(c, "k"), dim = (int)iparam(c, "dim"), src = (int)iparam(c, "src");
    int n_experts = (int)iparam(c, "experts");
    if (k > n_experts || n_experts > 256) die("ops_cases.txt: %s: need k <= experts <= 256", c->text);
    float *y = rand_floats((size_t)src * dim, 1), *w = rand_floats((size_t)n * k, 1);
    int32_t *row = xmalloc(sizeof(int32_t) * n * k), *expert = xmalloc(sizeof(int32_t) * n * k);
    for (int t = 0; t < n; t++) {
        unsigned char taken[256] = {0};
        for (int j = 0; j < k; j++) {
            int e = rng_int(n_experts);
            while (taken[e]) e = (e + 1) % n_experts;
            taken[e] = 1;
        }
        for (int e = 0, j = 0; e < n_experts; e++)
            if (taken[e]) expert[t * k + j++] = e;
    }
    for (int i = 0; i < n * k; i++) row[i] = rng_int(src);
    float *out = xmalloc(sizeof(float) * n * dim), *ref = xmalloc(sizeof(float) * n * dim);
    be->combine(out, y, row, w, n, k, dim);
    ref_combine(ref, y, row, w, expert, n, k, dim);
    double e = norm_err(out, ref, (size_t)n * dim);
    if (e == 0 && memcmp(out, ref, sizeof(float) * n * dim)) e = INFINITY;   // only the sign of a zero differs
    free(y); free(w); free(row); free(expert); free(out); free(ref);
    return e;
}

static double case_argmax(const test_case *c) {
    int n = (int)iparam(c, "n"), vocab = (int)iparam(c, "vocab");
    float *l = rand_floats((size_t)n * vocab, 10);
    if (iparam(c, "ties"))
        for (int i = 0; i < n * vocab; i++) l[i] = (float)rng_int(4);
    int32_t out[64], ref[64];
    be->argmax(out, l, n, vocab);
    ref_argmax(ref, l, n, vocab);
    free(l);
    return memcmp(out, ref, sizeof(int32_t) * n) ? INFINITY : 0;
}

static const op_case cases[] = {
    {"matmul", case_matmul}, {"embed", case_embed}, {"rmsnorm", case_rmsnorm}, {"rope", case_rope},
    {"attention", case_attention}, {"swiglu", case_swiglu}, {"add", case_add},
    {"router_topk", case_router_topk}, {"gather_rows", case_gather_rows},
    {"expert_ffn", case_expert_ffn}, {"combine", case_combine}, {"argmax", case_argmax},
};

// ---------------------------------------------------------------------------- invariance
// Each returns 0 when every compared output is bitwise equal, else prints what differed.
// Token `who` of a batch of 7: alone (n = 1), at its place in the batch, first in a batch
// of 5, with 1, 2 and 3 threads; and the same weights in F32 vs BF16 (vs F16 when the
// values fit). rows and cols are odd so every tile edge and tail is exercised.
static int invariance_matmul(void) {
    int bad = 0, rows = 77, cols = 4096 + 9, ld = cols + 3, who = 3;
    weight_t wb = rand_weight_host(rows, cols, ld, DT_BF16, 1);
    // the same values as F32, and as F16 (bf16 values with small exponents and 8 bits fit f16)
    weight_t wf = rand_weight_host(rows, cols, ld, DT_F32, 1), wh = rand_weight_host(rows, cols, ld, DT_F16, 1);
    for (int64_t i = 0; i < (int64_t)rows * ld; i++) {
        float v = bf16_to_f32(((const uint16_t *)wb.data)[i]);
        ((float *)wf.data)[i] = v;
        ((uint16_t *)wh.data)[i] = f32_to_f16(v);
        if (f16_to_f32(f32_to_f16(v)) != v && !isnan(v)) die("invariance: %g does not fit f16", v);
    }
    float *x = rand_floats((size_t)7 * cols, 1), *x5 = rand_floats((size_t)5 * cols, 1);
    memcpy(x5, x + (size_t)who * cols, sizeof(float) * cols);   // token `who` first in the batch of 5
    float *alone = xmalloc(sizeof(float) * rows), *batch = xmalloc(sizeof(float) * 7 * rows);
    float *other = xmalloc(sizeof(float) * 7 * rows), *b5 = xmalloc(sizeof(float) * 5 * rows);
    const weight_t *ws[3] = {&wb, &wf, &wh};

    backend_cpu_set_threads(1);
    be->matmul(alone, x + (size_t)who * cols, &wb, 1);
    for (int threads = 1; threads <= 3; threads++) {
        backend_cpu_set_threads(threads);
        for (int d = 0; d < 3; d++) {
            char what[128];
            be->matmul(batch, x, ws[d], 7);
            snprintf(what, sizeof what, "matmul %s threads=%d: alone vs in a batch of 7", dtype_name(ws[d]->dtype), threads);
            bad |= bitwise(what, alone, batch + (size_t)who * rows, rows);
            be->matmul(b5, x5, ws[d], 5);
            snprintf(what, sizeof what, "matmul %s threads=%d: alone vs first of 5", dtype_name(ws[d]->dtype), threads);
            bad |= bitwise(what, alone, b5, rows);
            if (d == 0 && threads == 1) memcpy(other, batch, sizeof(float) * 7 * rows);
            snprintf(what, sizeof what, "matmul %s threads=%d vs BF16 threads=1, batch of 7", dtype_name(ws[d]->dtype), threads);
            bad |= bitwise(what, other, batch, (size_t)7 * rows);
            // each token alone vs its row of the batch
            for (int t = 0; t < 7; t++) {
                be->matmul(alone + 0, x + (size_t)t * cols, ws[d], 1);
                snprintf(what, sizeof what, "matmul %s threads=%d token %d alone vs in batch", dtype_name(ws[d]->dtype), threads, t);
                bad |= bitwise(what, alone, batch + (size_t)t * rows, rows);
            }
            be->matmul(alone, x + (size_t)who * cols, &wb, 1);
        }
    }
    // A view (rows 5..44, the first 2000 columns, the full matrix's ld) of the F32 and of
    // the BF16 matrix: same bits, and a token alone matches its row of the batch.
    weight_t vf = {(const float *)wf.data + 5 * ld, DT_F32, 40, 2000, ld};
    weight_t vb = {(const uint16_t *)wb.data + 5 * ld, DT_BF16, 40, 2000, ld};
    float *xs = rand_floats((size_t)7 * 2000, 1);
    be->matmul(batch, xs, &vf, 7);
    be->matmul(other, xs, &vb, 7);
    bad |= bitwise("matmul view F32 vs BF16", batch, other, (size_t)7 * 40);
    be->matmul(alone, xs + 6 * 2000, &vb, 1);
    bad |= bitwise("matmul view: last token alone vs in batch", alone, other + 6 * 40, 40);
    free(xs); free(x); free(x5); free(alone); free(batch); free(other); free(b5);
    free((void *)wb.data); free((void *)wf.data); free((void *)wh.data);
    return bad;
}

// expert_ffn: a token alone in its expert, or among others in a grouped call, with 1 or 2
// threads, gives the same bits, and the same bits as matmul + swiglu + matmul.
static int invariance_expert_ffn(void) {
    int bad = 0, E = 3, d = 200;
    int64_t ff[3] = {130, 77, 130};
    weight_t w1[3], w3[3], w2[3];
    for (int e = 0; e < E; e++) {
        w1[e] = rand_weight_host(ff[e], d, d, DT_BF16, 0.2f);
        w3[e] = rand_weight_host(ff[e], d, d, DT_BF16, 0.2f);
        w2[e] = rand_weight_host(d, ff[e], ff[e], DT_BF16, 0.2f);
    }
    expert_set ex = {E, w1, w3, w2};
    float *x = rand_floats((size_t)9 * d, 1), *out = xmalloc(sizeof(float) * 9 * d), *out1 = xmalloc(sizeof(float) * 9 * d);
    int64_t offs[4] = {0, 4, 5, 9};   // expert 1 has one token: x row 4
    backend_cpu_set_threads(2);
    be->expert_ffn(out, x, offs, &ex);
    backend_cpu_set_threads(1);
    be->expert_ffn(out1, x, offs, &ex);
    bad |= bitwise("expert_ffn threads 2 vs 1", out, out1, (size_t)9 * d);
    // row 6 (expert 2) alone: only expert 2 gets a token
    int64_t alone_offs[4] = {0, 0, 0, 1};
    be->expert_ffn(out1, x + 6 * d, alone_offs, &ex);
    bad |= bitwise("expert_ffn token alone vs among 4", out1, out + 6 * d, d);
    // the composition of the single ops
    float *g = xmalloc(sizeof(float) * 130), *u = xmalloc(sizeof(float) * 130);
    be->matmul(g, x + 6 * d, &w1[2], 1);
    be->matmul(u, x + 6 * d, &w3[2], 1);
    be->swiglu(g, g, u, 130);
    be->matmul(out1, g, &w2[2], 1);
    bad |= bitwise("expert_ffn vs matmul+swiglu+matmul", out1, out + 6 * d, d);
    for (int e = 0; e < E; e++) { free((void *)w1[e].data); free((void *)w3[e].data); free((void *)w2[e].data); }
    free(x); free(out); free(out1); free(g); free(u);
    return bad;
}

// attention and rmsnorm: a token alone vs in a batch of 7 (at another index), 1 vs 2 threads.
static int invariance_attention_rmsnorm(void) {
    int bad = 0, heads = 8, kvh = 2, hd = 64, max_pos = 200, kv_dim = kvh * hd, n = 7;
    int64_t stride = (int64_t)(max_pos + 1) * kv_dim;
    float *kc = rand_floats((size_t)2 * stride, 1), *vc = rand_floats((size_t)2 * stride, 1);
    float *q = rand_floats((size_t)n * heads * hd, 2);
    int32_t slot[7] = {0, 1, 0, 1, 1, 0, 0}, pos[7] = {200, 3, 17, 150, 0, 99, 5};
    size_t qd = (size_t)heads * hd;
    float *out = xmalloc(sizeof(float) * n * qd), *one = xmalloc(sizeof(float) * qd);
    backend_cpu_set_threads(2);
    be->attention(out, q, kc, vc, slot, pos, n, heads, kvh, hd, stride);
    backend_cpu_set_threads(1);
    for (int i = 0; i < n; i++) {
        be->attention(one, q + i * qd, kc, vc, slot + i, pos + i, 1, heads, kvh, hd, stride);
        bad |= bitwise("attention alone vs in a batch of 7", one, out + i * qd, qd);
    }
    float *x = rand_floats((size_t)n * 4097, 2), *w = rand_floats(4097, 1);
    float *nb = xmalloc(sizeof(float) * n * 4097), *n1 = xmalloc(sizeof(float) * 4097);
    backend_cpu_set_threads(2);
    be->rmsnorm(nb, x, w, n, 4097, 1e-5f);
    backend_cpu_set_threads(1);
    be->rmsnorm(n1, x + 5 * 4097, w, 1, 4097, 1e-5f);
    bad |= bitwise("rmsnorm alone vs in a batch of 7", n1, nb + 5 * 4097, 4097);
    free(kc); free(vc); free(q); free(out); free(one); free(x); free(w); free(nb); free(n1);
    backend_cpu_set_threads(0);
    return bad;
}

// ---------------------------------------------------------------------------- main
typedef struct { int passed, failed; } tally;

static int run_case(const test_case *c, void *ctx) {
    tally *t = ctx;
    double tol = dparam(c, "tol"), e = op_case_find(cases, sizeof cases / sizeof cases[0], c)(c);
    printf("%-12s %-60.60s %10.3g %8.2g %s\n", c->op, c->args, e, tol, e <= tol ? "ok" : "FAIL");
    if (e <= tol) { t->passed++; return 0; }
    t->failed++;
    fprintf(stderr, "FAIL %s: %s: normalised error %.3g over tolerance %.2g\n", c->op, c->args, e, tol);
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 2) die("usage: test_ops SOURCE_DIR");
    be = backend_cpu();
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/data/ops_cases.txt", argv[1]);
    tally t = {0, 0};
    printf("%-12s %-60s %10s %8s\n", "op", "case", "max_err", "tol");
    ops_for_each_case(path, run_case, &t);
    int passed = t.passed, failed = t.failed;

    if (!failed) {
        rng_state = 42;
        struct { const char *name; int (*run)(void); } inv[] = {
            {"invariance matmul (batch, position, threads, F32/BF16/F16)", invariance_matmul},
            {"invariance expert_ffn (grouping, threads, = single ops)", invariance_expert_ffn},
            {"invariance attention, rmsnorm (batch, threads)", invariance_attention_rmsnorm},
        };
        for (size_t i = 0; i < sizeof inv / sizeof inv[0]; i++) {
            int bad = inv[i].run();
            printf("%-73s %s\n", inv[i].name, bad ? "FAIL" : "bitwise equal");
            if (bad) { failed++; break; }
            passed++;
        }
    }
    printf("ops: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
