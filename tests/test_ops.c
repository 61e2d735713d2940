// Every backend op on one table of cases (tests/data/ops_cases.txt, and on a GPU also
// tests/data/ops_cases_cuda.txt), written once and run on every backend: the CPU backend
// against the naive references of tests/ops_reference.h, the CUDA backend against the CPU
// backend. Every case runs and every failure is reported with its shape; then the
// determinism properties the project relies on (a token's results are bitwise the same alone
// or in a batch, with any thread count, with F32 or BF16 weights of the same values).
//   test_ops SOURCE_DIR [--backend cpu|cuda] [--json FILE] [--from N] [--force-fail OP]
// --from N starts at the N-th case (after a case that ended the process); --force-fail OP
// makes OP's cases fail (a check that a failure does not stop the others). Without a GPU,
// --backend cuda exits 77 (ctest: skipped).
#include "kernels/backend.h"
#include "parallel/balance.h"
#include "parallel/placement.h"
#include "tests/ops_harness.h"
#include "tests/ops_reference.h"
#ifdef LLAMOE_CUDA
#include "kernels/cuda/backend_cuda.h"
#endif

#include <math.h>
#include <string.h>

static backend *be;    // under test
static backend *ref;   // the CPU backend as the reference of a device backend; NULL: naive

// ---------------------------------------------------------------------------- backend memory
static void *to_be(const void *host, size_t bytes) {
    void *p = be->alloc(be, bytes ? bytes : 1);
    be->upload(be, p, host, bytes);
    return p;
}
static void *from_be(const void *p, size_t bytes) {
    void *h = xmalloc(bytes ? bytes : 1);
    be->download(be, h, p, bytes);
    return h;
}
static void be_free(const void *p) { be->free(be, (void *)p); }

// A weight's backend copy, with its row stride (views of bigger matrices stay views).
static weight_t weight_to_be(const weight_t *w) {
    weight_t d = *w;
    d.data = to_be(w->data, (size_t)(w->rows ? w->rows : 1) * (size_t)w->ld * dtype_size(w->dtype));
    return d;
}

// Frees out and want and returns their normalised error.
static double compare_free(float *got, float *want, size_t n) {
    double e = norm_err(got, want, n);
    free(got);
    free(want);
    return e;
}

// ---------------------------------------------------------------------------- dense ops
// Each case returns the normalised error (INFINITY for a wrong integer or exact output).
static double case_matmul(const test_case *c) {
    int n = (int)iparam(c, "n");
    weight_t w = rand_weight_host(iparam(c, "rows"), iparam(c, "cols"), iparam(c, "ld"), dtparam(c), 1);
    size_t nx = (size_t)n * w.cols, ny = (size_t)n * w.rows;
    float *x = rand_floats(nx, 1), *want = xmalloc(sizeof(float) * (ny + 1));
    weight_t dw = weight_to_be(&w);
    float *dx = to_be(x, nx * 4), *dy = be->alloc(be, ny * 4 + 4);
    be->matmul(be, dy, dx, &dw, n);
    if (ref) ref->matmul(ref, want, x, &w, n);
    else ref_matmul(want, x, &w, n);
    double e = compare_free(from_be(dy, ny * 4), want, ny);
    be_free(dw.data); be_free(dx); be_free(dy);
    free(x); free((void *)w.data);
    return e;
}

static double case_embed(const test_case *c) {
    int n = (int)iparam(c, "n");
    weight_t t = rand_weight_host(iparam(c, "rows"), iparam(c, "cols"), iparam(c, "ld"), dtparam(c), 1);
    int32_t ids[64];
    for (int i = 0; i < n; i++) ids[i] = rand_int((int)t.rows);
    size_t ny = (size_t)n * t.cols;
    float *want = xmalloc(sizeof(float) * ny);
    weight_t dt = weight_to_be(&t);
    float *dy = be->alloc(be, ny * 4);
    be->embed(be, dy, &dt, ids, n);
    if (ref) ref->embed(ref, want, &t, ids, n);
    else ref_embed(want, &t, ids, n);
    double e = compare_free(from_be(dy, ny * 4), want, ny);
    be_free(dt.data); be_free(dy); free((void *)t.data);
    return e;
}

static double case_rmsnorm(const test_case *c) {
    int n = (int)iparam(c, "n"), dim = (int)iparam(c, "dim");
    size_t nx = (size_t)n * dim;
    float *x = rand_floats(nx, (float)dparam(c, "scale")), *w = rand_floats(dim, 1), *want = xmalloc(sizeof(float) * nx);
    float *dx = to_be(x, nx * 4), *dw = to_be(w, (size_t)dim * 4), *dy = be->alloc(be, nx * 4);
    be->rmsnorm(be, dy, dx, dw, n, dim, 1e-5f);
    if (ref) ref->rmsnorm(ref, want, x, w, n, dim, 1e-5f);
    else ref_rmsnorm(want, x, w, n, dim, 1e-5f);
    double e = compare_free(from_be(dy, nx * 4), want, nx);
    be_free(dx); be_free(dw); be_free(dy); free(x); free(w);
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
    for (int i = 0; i < n; i++) pos[i] = i == 0 ? (int)iparam(c, "max_pos") : rand_int((int)iparam(c, "max_pos") + 1);
    size_t count = (size_t)n * heads * hd;
    float *x = rand_floats(count, 1), *want = xmalloc(sizeof(float) * count), *f = llama_inv_freq(hd);
    memcpy(want, x, sizeof(float) * count);
    float *dx = to_be(x, count * 4);
    be->rope(be, dx, n, heads, hd, pos, f);
    if (ref) ref->rope(ref, want, n, heads, hd, pos, f);
    else ref_rope(want, n, heads, hd, pos, f);
    double e = compare_free(from_be(dx, count * 4), want, count);
    be_free(dx); free(x); free(f);
    return e;
}

// Fills a random cache, writes the batch's own k/v rows with kv_write (distinct (slot, pos)
// pairs), checks they landed, then runs attention.
static double case_attention(const test_case *c) {
    int n = (int)iparam(c, "n"), heads = (int)iparam(c, "heads"), kvh = (int)iparam(c, "kv_heads");
    int hd = (int)iparam(c, "head_dim"), max_pos = (int)iparam(c, "max_pos"), slots = (int)iparam(c, "slots");
    int kv_dim = kvh * hd;
    int64_t stride = (int64_t)(max_pos + 1) * kv_dim;
    size_t cache = (size_t)slots * stride, qn = (size_t)n * heads * hd;
    float *kc = rand_floats(cache, 1), *vc = rand_floats(cache, 1);
    float *q = rand_floats(qn, 2), *k = rand_floats((size_t)n * kv_dim, 1), *v = rand_floats((size_t)n * kv_dim, 1);
    int32_t slot[128], pos[128];
    for (int i = 0; i < n; i++) {
        for (int again = 1; again;) {
            slot[i] = rand_int(slots);
            pos[i] = i == 0 ? max_pos : rand_int(max_pos + 1);
            again = 0;
            for (int j = 0; j < i; j++) again |= slot[j] == slot[i] && pos[j] == pos[i];
        }
    }
    float *dkc = to_be(kc, cache * 4), *dvc = to_be(vc, cache * 4), *dq = to_be(q, qn * 4);
    float *dk = to_be(k, (size_t)n * kv_dim * 4), *dv = to_be(v, (size_t)n * kv_dim * 4), *dout = be->alloc(be, qn * 4);
    be->kv_write(be, dkc, dvc, dk, dv, slot, pos, n, kv_dim, stride);
    float *kc2 = from_be(dkc, cache * 4), *vc2 = from_be(dvc, cache * 4);
    double e = 0;
    for (int i = 0; i < n; i++) {
        size_t at = (size_t)slot[i] * stride + (size_t)pos[i] * kv_dim;
        memcpy(kc + at, k + (size_t)i * kv_dim, sizeof(float) * kv_dim);   // what the reference attends to
        memcpy(vc + at, v + (size_t)i * kv_dim, sizeof(float) * kv_dim);
    }
    if (memcmp(kc, kc2, cache * 4) || memcmp(vc, vc2, cache * 4)) e = INFINITY;
    float *want = xmalloc(sizeof(float) * qn);
    be->attention(be, dout, dq, dkc, dvc, slot, pos, n, heads, kvh, hd, stride);
    if (ref) ref->attention(ref, want, q, kc, vc, slot, pos, n, heads, kvh, hd, stride);
    else ref_attention(want, q, kc, vc, slot, pos, n, heads, kvh, hd, stride);
    double ea = compare_free(from_be(dout, qn * 4), want, qn);
    be_free(dkc); be_free(dvc); be_free(dq); be_free(dk); be_free(dv); be_free(dout);
    free(kc); free(vc); free(kc2); free(vc2); free(q); free(k); free(v);
    return ea > e ? ea : e;
}

static double case_swiglu(const test_case *c) {
    int64_t n = iparam(c, "count");
    float *g = rand_floats(n, 6), *u = rand_floats(n, 2), *want = xmalloc(sizeof(float) * n);
    float *dg = to_be(g, n * 4), *du = to_be(u, n * 4), *dy = be->alloc(be, n * 4);
    be->swiglu(be, dy, dg, du, n);
    if (ref) ref->swiglu(ref, want, g, u, n);
    else ref_swiglu(want, g, u, n);
    float *got = from_be(dy, n * 4);
    be->swiglu(be, dg, dg, du, n);   // in place, as the runtime uses it
    float *inplace = from_be(dg, n * 4);
    double e = memcmp(inplace, got, sizeof(float) * n) ? INFINITY : norm_err(got, want, n);
    free(got); free(want); free(inplace);
    be_free(dg); be_free(du); be_free(dy); free(g); free(u);
    return e;
}

static double case_add(const test_case *c) {
    int64_t n = iparam(c, "count");
    float *x = rand_floats(n, 1), *y = rand_floats(n, 1), *want = xmalloc(sizeof(float) * n);
    for (int64_t i = 0; i < n; i++) want[i] = x[i] + y[i];
    float *dx = to_be(x, n * 4), *dy = to_be(y, n * 4);
    be->add(be, dx, dy, n);
    double e = compare_free(from_be(dx, n * 4), want, n);
    be_free(dx); be_free(dy); free(x); free(y);
    return e;
}

static double case_gather_rows(const test_case *c) {
    int n = (int)iparam(c, "n"), dim = (int)iparam(c, "dim"), src = (int)iparam(c, "src");
    size_t ny = (size_t)n * dim;
    float *x = rand_floats((size_t)src * dim, 1), *before = rand_floats(ny, 1), *want = xmalloc(sizeof(float) * ny);
    int32_t rows[128];
    for (int i = 0; i < n; i++) rows[i] = i % 4 == 3 ? -1 : rand_int(src);   // -1: left as it was
    for (int i = 0; i < n; i++)
        memcpy(want + (size_t)i * dim, rows[i] < 0 ? before + (size_t)i * dim : x + (size_t)rows[i] * dim, sizeof(float) * dim);
    float *dx = to_be(x, (size_t)src * dim * 4), *dy = to_be(before, ny * 4);
    int32_t *drows = to_be(rows, sizeof(int32_t) * n);
    be->gather_rows(be, dy, dx, drows, n, dim);
    float *got = from_be(dy, ny * 4);
    double e = memcmp(got, want, ny * 4) ? INFINITY : 0;
    free(got); free(want); free(x); free(before);
    be_free(dx); be_free(dy); be_free(drows);
    return e;
}

static double case_argmax(const test_case *c) {
    int n = (int)iparam(c, "n"), vocab = (int)iparam(c, "vocab");
    size_t nl = (size_t)n * vocab;
    float *l = rand_floats(nl, 10);
    if (iparam(c, "ties"))
        for (size_t i = 0; i < nl; i++) l[i] = (float)rand_int(4);
    int32_t out[64], want[64];
    float *dl = to_be(l, nl * 4);
    be->argmax(be, out, dl, n, vocab);
    ref_argmax(want, l, n, vocab);
    be_free(dl);
    free(l);
    return memcmp(out, want, sizeof(int32_t) * n) ? INFINITY : 0;
}

// ---------------------------------------------------------------------------- MoE ops
static double case_router_topk(const test_case *c) {
    int n = (int)iparam(c, "n"), E = (int)iparam(c, "experts"), k = (int)iparam(c, "k");
    size_t nl = (size_t)n * E, np = (size_t)n * k;
    float *logits = rand_floats(nl, 3);
    if (iparam(c, "ties"))   // few distinct values: ties at the top and at the cut
        for (size_t i = 0; i < nl; i++) logits[i] = (float)rand_int(3);
    int32_t *want_e = xmalloc(sizeof(int32_t) * np);
    float *want_w = xmalloc(sizeof(float) * np);
    float *dl = to_be(logits, nl * 4), *dw = be->alloc(be, np * 4);
    int32_t *de = be->alloc(be, np * 4);
    be->router_topk(be, de, dw, dl, n, E, k);
    if (ref) ref->router_topk(ref, want_e, want_w, logits, n, E, k);
    else ref_router_topk(want_e, want_w, logits, n, E, k);
    int32_t *got_e = from_be(de, np * 4);
    double e = memcmp(got_e, want_e, sizeof(int32_t) * np) ? INFINITY : compare_free(from_be(dw, np * 4), want_w, np);
    if (isinf(e)) free(want_w);
    free(got_e); free(want_e); free(logits);
    be_free(dl); be_free(dw); be_free(de);
    return e;
}

static double case_expert_ffn(const test_case *c) {
    int64_t ff[64], counts[64], d = iparam(c, "d");
    int E = lparam(c, "ff", ff, 64);
    if (lparam(c, "counts", counts, 64) != E) die("ops cases: %s: ff and counts differ in length", c->text);
    dtype_t dt = dtparam(c);
    int device_offsets = (int)iparam_or(c, "device_offsets", 0);   // the backend reads offsets itself
    weight_t w1[64], w3[64], w2[64], b1[64], b3[64], b2[64];
    int64_t offsets[65] = {0};
    for (int e = 0; e < E; e++) {   // odd row strides: experts are views of bigger matrices
        w1[e] = rand_weight_host(ff[e], d, d + e % 3, dt, 0.3f);
        w3[e] = rand_weight_host(ff[e], d, d + 1, dt, 0.3f);
        w2[e] = rand_weight_host(d, ff[e], ff[e] + e % 2, dt, 0.3f);
        b1[e] = weight_to_be(&w1[e]);
        b3[e] = weight_to_be(&w3[e]);
        b2[e] = weight_to_be(&w2[e]);
        offsets[e + 1] = offsets[e] + counts[e];
    }
    expert_set host = {E, w1, w3, w2}, dev = {E, b1, b3, b2};
    size_t count = (size_t)offsets[E] * d;
    float *x = rand_floats(count, 1), *want = xmalloc(sizeof(float) * (count + 1));
    float *dx = to_be(x, count * 4), *dy = be->alloc(be, count * 4 + 4);
    int64_t *doff = to_be(offsets, sizeof(int64_t) * (E + 1));
    be->expert_ffn(be, dy, dx, doff, device_offsets ? NULL : offsets, offsets[E], &dev);
    if (ref) ref->expert_ffn(ref, want, x, offsets, offsets, offsets[E], &host);
    else ref_expert_ffn(want, x, offsets, &host);
    double e = compare_free(from_be(dy, count * 4 + 4), want, count);
    for (int j = 0; j < E; j++) {
        free((void *)w1[j].data); free((void *)w3[j].data); free((void *)w2[j].data);
        be_free(b1[j].data); be_free(b3[j].data); be_free(b2[j].data);
    }
    be_free(dx); be_free(dy); be_free(doff); free(x);
    return e;
}

// Where a MoE case's experts live: E logical experts as S = E + R physical ones in contiguous
// blocks on P ranks (owner, local). Without redundant experts physical p is logical p; with
// them the placement is balance_layer's for random loads (copies of the heavy experts, no
// rank holding one twice). Host and backend copies, and the backend's moe_map.
typedef struct {
    int E, S, P;
    int32_t *owner, *local, *start, *replica;
    int32_t *d_owner, *d_local, *d_start, *d_replica;
    moe_map map;
} moe_where;

static void moe_where_init(moe_where *w, int E, int R, int P) {
    *w = (moe_where){.E = E, .S = E + R, .P = P};
    placement_table t;
    llamoe_err err;
    if (placement_table_alloc(&t, 1, E, E + R, P, &err) != 0) die("ops cases: %s", err.msg);
    int64_t load[512];
    for (int e = 0; e < E; e++) load[e] = R ? rand_int(100) : 1;
    if (R) balance_layer(t.logical, load, E, E + R, P, NULL);
    else for (int e = 0; e < E; e++) t.logical[e] = e;
    if (placement_table_check(&t, &err) != 0) die("ops cases: %s", err.msg);
    expert_placement pl;
    CHECK(placement_init(&pl, w->S, P, NULL) == 0);
    w->owner = xmalloc(sizeof(int32_t) * w->S);
    w->local = xmalloc(sizeof(int32_t) * w->S);
    w->start = xmalloc(sizeof(int32_t) * (E + 1));
    w->replica = xmalloc(sizeof(int32_t) * w->S);
    for (int p = 0; p < w->S; p++) {
        w->owner[p] = placement_owner(&pl, p);
        w->local[p] = p - placement_first(&pl, w->owner[p]);
    }
    placement_replicas(&t, 0, w->start, w->replica);
    placement_table_free(&t);
    w->d_owner = to_be(w->owner, sizeof(int32_t) * w->S);
    w->d_local = to_be(w->local, sizeof(int32_t) * w->S);
    w->d_start = to_be(w->start, sizeof(int32_t) * (E + 1));
    w->d_replica = to_be(w->replica, sizeof(int32_t) * w->S);
    w->map = (moe_map){.owner = w->d_owner, .local = w->d_local, .replica_start = w->d_start,
                       .replica = w->d_replica, .n_experts = w->S, .n_ranks = P, .n_logical = E};
}

static void moe_where_free(moe_where *w) {
    free(w->owner); free(w->local); free(w->start); free(w->replica);
    be_free(w->d_owner); be_free(w->d_local); be_free(w->d_start); be_free(w->d_replica);
}

// A MoE case's routing: n tokens, each with k distinct logical experts of E in ascending
// order, and each pair's physical expert as the reference chooses it (salt: a random start).
typedef struct {
    int n, k, d, salt;
    const moe_where *w;
    int32_t *expert, *phys;
    int32_t *d_expert, *d_phys;
} moe_case;

static void random_experts(int32_t *ids, int E, int k) {
    int32_t pool[512];
    for (int e = 0; e < E; e++) pool[e] = e;
    for (int j = 0; j < k; j++) {
        int pick = j + rand_int(E - j);
        int32_t t = pool[j]; pool[j] = pool[pick]; pool[pick] = t;
    }
    for (int j = 0; j < k; j++) ids[j] = pool[j];
    for (int a = 1; a < k; a++)
        for (int b = a; b > 0 && ids[b] < ids[b - 1]; b--) { int32_t t = ids[b]; ids[b] = ids[b - 1]; ids[b - 1] = t; }
}

static void moe_case_init(moe_case *m, const moe_where *w, int n, int k, int d) {
    *m = (moe_case){.n = n, .k = k, .d = d, .w = w, .salt = w->S > w->E ? rand_int(1000) : 0};
    size_t np = (size_t)n * k + 1;
    m->expert = xmalloc(sizeof(int32_t) * np);
    m->phys = xmalloc(sizeof(int32_t) * np);
    for (int t = 0; t < n; t++) random_experts(m->expert + (size_t)t * k, w->E, k);
    ref_moe_assign(m->phys, m->expert, n, k, m->salt, w->start, w->replica);
    m->d_expert = to_be(m->expert, sizeof(int32_t) * np);
    m->d_phys = to_be(m->phys, sizeof(int32_t) * np);
}

static void moe_case_free(moe_case *m) {
    free(m->expert); free(m->phys);
    be_free(m->d_expert); be_free(m->d_phys);
}

// Pairs and rows sent to each rank (from the reference plan's counts).
static void peer_counts(const moe_where *w, const int32_t *counts, int64_t *rows, int64_t *pairs) {
    for (int r = 0; r < w->P; r++) {
        rows[r] = counts[w->S + r];
        pairs[r] = 0;
    }
    for (int p = 0; p < w->S; p++) pairs[w->owner[p]] += counts[p];
}

// Message offsets for peers with rows[r] rows and pairs[r] pairs (fixed: every message has
// room for `cap` rows and cap * k pairs).
static size_t layout(moe_layout *at, const int64_t *rows, const int64_t *pairs, int P, int d, int cap, int k) {
    size_t off = 0;
    for (int r = 0; r < P; r++) {
        int64_t rr = cap ? cap : rows[r], pp = cap ? (int64_t)cap * k : pairs[r];
        at->msg[r] = off;
        at->pairs[r] = moe_pairs_offset(rr, d);
        off += moe_message_bytes(rr, pp, d);
    }
    return off;
}

static int differs(const void *a, const void *b, size_t bytes) { return memcmp(a, b, bytes) != 0; }

static void where_of_case(moe_where *w, const test_case *c) {
    moe_where_init(w, (int)iparam(c, "experts"), (int)iparam_or(c, "redundant", 0), (int)iparam(c, "ranks"));
}

static double case_moe_plan(const test_case *c) {
    moe_where w;
    moe_case m;
    where_of_case(&w, c);
    moe_case_init(&m, &w, (int)iparam(c, "n"), (int)iparam(c, "k"), 1);
    size_t np = (size_t)m.n * m.k + 1, nc = (size_t)w.S + w.P;
    int32_t *counts = xmalloc(nc * 4), *row_slot = xmalloc(np * 4), *pair_slot = xmalloc(np * 4);
    int64_t *tally = xmalloc(nc * 8);
    for (size_t i = 0; i < nc; i++) tally[i] = rand_int(1000);   // the plan adds to it
    ref_moe_plan(counts, row_slot, pair_slot, m.phys, m.n, m.k, w.owner, w.S, w.P);
    int32_t *dc = be->alloc(be, nc * 4), *dr = be->alloc(be, np * 4), *dp = be->alloc(be, np * 4);
    int32_t *dphys = be->alloc(be, np * 4);
    int64_t *dt = to_be(tally, nc * 8);
    be->moe_plan(be, dc, dr, dp, dphys, dt, m.d_expert, m.n, m.k, m.salt, &w.map);
    int32_t *gc = from_be(dc, nc * 4), *gr = from_be(dr, np * 4), *gp = from_be(dp, np * 4);
    int32_t *gphys = from_be(dphys, np * 4);
    int64_t *gt = from_be(dt, nc * 8);
    for (size_t i = 0; i < nc; i++) tally[i] += counts[i];
    np -= 1;
    int bad = differs(gc, counts, nc * 4) || differs(gr, row_slot, np * 4) || differs(gp, pair_slot, np * 4) ||
              differs(gphys, m.phys, np * 4) || differs(gt, tally, nc * 8);
    free(counts); free(row_slot); free(pair_slot); free(tally); free(gc); free(gr); free(gp); free(gphys); free(gt);
    be_free(dc); be_free(dr); be_free(dp); be_free(dphys); be_free(dt);
    moe_case_free(&m);
    moe_where_free(&w);
    return bad ? INFINITY : 0;
}

static double case_moe_pack(const test_case *c) {
    moe_where w;
    moe_case m;
    int fixed = (int)iparam(c, "fixed");
    where_of_case(&w, c);
    moe_case_init(&m, &w, (int)iparam(c, "n"), (int)iparam(c, "k"), (int)iparam(c, "d"));
    size_t np = (size_t)m.n * m.k + 1, nc = (size_t)w.S + w.P, nx = (size_t)m.n * m.d + 1;
    int32_t *counts = xmalloc(nc * 4), *row_slot = xmalloc(np * 4), *pair_slot = xmalloc(np * 4);
    ref_moe_plan(counts, row_slot, pair_slot, m.phys, m.n, m.k, w.owner, w.S, w.P);
    int64_t rows[MOE_MAX_RANKS], pairs[MOE_MAX_RANKS];
    peer_counts(&w, counts, rows, pairs);
    moe_layout at;
    size_t bytes = layout(&at, rows, pairs, w.P, m.d, fixed ? m.n : 0, m.k);
    float *x = rand_floats(nx, 1);
    uint8_t *want = xcalloc(bytes + 1, 1);
    for (int r = 0; r < w.P; r++)
        ref_moe_message(want + at.msg[r], at.pairs[r], r, x, m.phys, m.n, m.k, m.d, w.owner, w.local);
    int32_t *dc = to_be(counts, nc * 4), *dr = to_be(row_slot, np * 4), *dp = to_be(pair_slot, np * 4);
    float *dx = to_be(x, nx * 4);
    uint8_t *ds = be->alloc(be, bytes + 1);
    be->moe_pack(be, ds, &at, dx, m.d_phys, dr, dp, dc, m.n, m.k, m.d, &w.map);
    uint8_t *got = from_be(ds, bytes + 1);
    int bad = 0;   // the defined parts of every message: header, rows, pairs
    for (int r = 0; r < w.P; r++) {
        const uint8_t *g = got + at.msg[r], *wt = want + at.msg[r];
        bad |= differs(g, wt, MOE_HEADER_BYTES + (size_t)rows[r] * m.d * 4);
        bad |= differs(g + at.pairs[r], wt + at.pairs[r], (size_t)pairs[r] * MOE_PAIR_BYTES);
    }
    free(counts); free(row_slot); free(pair_slot); free(x); free(want); free(got);
    be_free(dc); be_free(dr); be_free(dp); be_free(dx); be_free(ds);
    moe_case_free(&m);
    moe_where_free(&w);
    return bad ? INFINITY : 0;
}

// Rank `rank` receives from each of P sources the message that source's random tokens make.
static double case_moe_group(const test_case *c) {
    int P = (int)iparam(c, "ranks"), k = (int)iparam(c, "k"), d = (int)iparam(c, "d");
    int rank = (int)iparam(c, "rank"), n_max = (int)iparam(c, "n"), fixed = (int)iparam(c, "fixed");
    moe_where w;
    where_of_case(&w, c);
    int S = w.S;
    moe_case src[MOE_MAX_RANKS];
    int64_t rows_from[MOE_MAX_RANKS], pairs_from[MOE_MAX_RANKS], ret_base[MOE_MAX_RANKS + 1] = {0};
    float *xs[MOE_MAX_RANKS];
    int L = 0;
    for (int s = 0; s < P; s++) {
        moe_case_init(&src[s], &w, rand_int(n_max + 1), k, d);
        int32_t *counts = xmalloc(((size_t)S + P) * 4), *rs = xmalloc(((size_t)src[s].n * k + 1) * 4),
                *ps = xmalloc(((size_t)src[s].n * k + 1) * 4);
        ref_moe_plan(counts, rs, ps, src[s].phys, src[s].n, k, w.owner, S, P);
        int64_t rows[MOE_MAX_RANKS], pairs[MOE_MAX_RANKS];
        peer_counts(&w, counts, rows, pairs);
        rows_from[s] = rows[rank];
        pairs_from[s] = pairs[rank];
        xs[s] = rand_floats((size_t)src[s].n * d + 1, 1);
        free(counts); free(rs); free(ps);
    }
    for (int p = 0; p < S; p++) L += w.owner[p] == rank;
    int cap_pairs = fixed ? n_max * (k < L ? k : L) : 0;
    for (int s = 0; s < P; s++) ret_base[s + 1] = ret_base[s] + (fixed ? cap_pairs : pairs_from[s]);
    moe_layout at;
    size_t off = 0;
    for (int s = 0; s < P; s++) {   // what this rank receives: one message per source
        int64_t rr = fixed ? n_max : rows_from[s], pp = fixed ? cap_pairs : pairs_from[s];
        at.msg[s] = off;
        at.pairs[s] = moe_pairs_offset(rr, d);
        off += moe_message_bytes(rr, pp, d);
    }
    uint8_t *recv = xcalloc(off + 1, 1);
    for (int s = 0; s < P; s++)
        ref_moe_message(recv + at.msg[s], at.pairs[s], rank, xs[s], src[s].phys, src[s].n, k, d, w.owner, w.local);
    int64_t M = ret_base[P];
    float *want_xe = xcalloc((size_t)M * d + 1, 4);
    int64_t want_off[MOE_MAX_RANKS + 1];
    int32_t *want_ret = xmalloc(((size_t)M + 1) * 4);
    ref_moe_group(want_xe, want_off, want_ret, recv, &at, ret_base, P, L, d);
    uint8_t *drecv = to_be(recv, off + 1);
    float *dxe = be->alloc(be, ((size_t)M * d + 1) * 4);
    int64_t *doff = be->alloc(be, ((size_t)L + 1) * 8);
    int32_t *dret = be->alloc(be, ((size_t)M + 1) * 4);
    be->moe_group(be, dxe, doff, dret, drecv, &at, ret_base, P, L, d);
    float *gxe = from_be(dxe, ((size_t)M * d + 1) * 4);
    int64_t *goff = from_be(doff, ((size_t)L + 1) * 8);
    int32_t *gret = from_be(dret, ((size_t)M + 1) * 4);
    int64_t rows_owned = want_off[L];
    int bad = differs(goff, want_off, ((size_t)L + 1) * 8) || differs(gret, want_ret, (size_t)M * 4) ||
              differs(gxe, want_xe, (size_t)rows_owned * d * 4);
    for (int s = 0; s < P; s++) { moe_case_free(&src[s]); free(xs[s]); }
    free(recv); free(want_xe); free(want_ret); free(gxe); free(goff); free(gret);
    be_free(drecv); be_free(dxe); be_free(doff); be_free(dret);
    moe_where_free(&w);
    return bad ? INFINITY : 0;
}

// The exact combine, bitwise against accumulating fmaf in ascending expert index. Each
// owner's returned rows are laid out as the counts plan does: in its pair order.
static double case_combine(const test_case *c) {
    moe_where w;
    moe_case m;
    where_of_case(&w, c);
    moe_case_init(&m, &w, (int)iparam(c, "n"), (int)iparam(c, "k"), (int)iparam(c, "dim"));
    size_t np = (size_t)m.n * m.k + 1, nc = (size_t)w.S + w.P;
    int32_t *counts = xmalloc(nc * 4), *row_slot = xmalloc(np * 4), *pair_slot = xmalloc(np * 4);
    ref_moe_plan(counts, row_slot, pair_slot, m.phys, m.n, m.k, w.owner, w.S, w.P);
    int64_t rows[MOE_MAX_RANKS], pairs[MOE_MAX_RANKS], ret_base[MOE_MAX_RANKS + 1] = {0};
    peer_counts(&w, counts, rows, pairs);
    for (int r = 0; r < w.P; r++) ret_base[r + 1] = ret_base[r] + pairs[r];
    size_t ny = (size_t)ret_base[w.P] * m.d + 1, no = (size_t)m.n * m.d;
    float *y = rand_floats(ny, 1), *wt = rand_floats(np, 1), *want = xmalloc(sizeof(float) * (no + 1));
    ref_combine(want, y, m.expert, m.phys, pair_slot, wt, ret_base, w.owner, m.n, m.k, m.d);
    float *dy = to_be(y, ny * 4), *dw = to_be(wt, np * 4), *dout = be->alloc(be, no * 4 + 4);
    int32_t *dp = to_be(pair_slot, np * 4);
    be->combine(be, dout, dy, m.d_phys, dp, dw, ret_base, m.n, m.k, m.d, &w.map);
    float *got = from_be(dout, no * 4 + 4);
    double e = differs(got, want, no * 4) ? fmax(norm_err(got, want, no), 1e-30) : 0;
    free(got); free(want); free(y); free(wt); free(counts); free(row_slot); free(pair_slot);
    be_free(dy); be_free(dw); be_free(dout); be_free(dp);
    moe_case_free(&m);
    moe_where_free(&w);
    return e;
}

static const op_case cases[] = {
    {"matmul", case_matmul}, {"embed", case_embed}, {"rmsnorm", case_rmsnorm}, {"rope", case_rope},
    {"attention", case_attention}, {"swiglu", case_swiglu}, {"add", case_add},
    {"gather_rows", case_gather_rows}, {"argmax", case_argmax}, {"router_topk", case_router_topk},
    {"expert_ffn", case_expert_ffn}, {"moe_plan", case_moe_plan}, {"moe_pack", case_moe_pack},
    {"moe_group", case_moe_group}, {"combine", case_combine},
};

// ---------------------------------------------------------------------------- tolerances
// The CPU backend against the naive references: each case's tol=. A device backend against
// the CPU backend: one tolerance per op. GEMMs: cuBLASLt rounds activations to bf16 (relative
// 2^-9 per element, about 1e-3 on a dot product of random signs); the expert FFN rounds twice
// (x and the hidden activations). Moves and the combine are exact; the rest is fp32 with the
// same formulas, differing in summation order and in expf/sinf/cosf ulps.
static const struct { const char *op; double tol; } device_tolerances[] = {
    {"matmul", 1e-2}, {"expert_ffn", 2e-2}, {"attention", 1e-4}, {"rmsnorm", 1e-5}, {"rope", 1e-5},
    {"swiglu", 1e-6}, {"add", 0}, {"embed", 0}, {"gather_rows", 0}, {"argmax", 0}, {"router_topk", 1e-5},
    {"moe_plan", 0}, {"moe_pack", 0}, {"moe_group", 0}, {"combine", 0},
};

static double tolerance(const test_case *c) {
    if (!ref) return dparam(c, "tol");
    for (size_t i = 0; i < sizeof device_tolerances / sizeof device_tolerances[0]; i++)
        if (!strcmp(device_tolerances[i].op, c->op)) return device_tolerances[i].tol;
    die("no device tolerance for op %s", c->op);
}

// ---------------------------------------------------------------------------- invariance
// Each returns 0 when every compared output is bitwise equal, else prints what differed.
// CPU: token `who` of a batch of 7 alone (n = 1), at its place in the batch, first in a batch
// of 5, with 1, 2 and 3 threads; and the same weights in F32 vs BF16 (vs F16 when the values
// fit). rows and cols are odd so every tile edge and tail is exercised.
static backend *cpu_with_threads(int threads) {
    backend_options o = {.threads = threads};
    return backend_cpu_new(&o);
}

static int invariance_matmul_cpu(void) {
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

    backend *one = cpu_with_threads(1);
    one->matmul(one, alone, x + (size_t)who * cols, &wb, 1);
    for (int threads = 1; threads <= 3; threads++) {
        backend *b = cpu_with_threads(threads);
        for (int d = 0; d < 3; d++) {
            char what[128];
            b->matmul(b, batch, x, ws[d], 7);
            snprintf(what, sizeof what, "matmul %s threads=%d: alone vs in a batch of 7", dtype_name(ws[d]->dtype), threads);
            bad |= bitwise(what, alone, batch + (size_t)who * rows, rows);
            b->matmul(b, b5, x5, ws[d], 5);
            snprintf(what, sizeof what, "matmul %s threads=%d: alone vs first of 5", dtype_name(ws[d]->dtype), threads);
            bad |= bitwise(what, alone, b5, rows);
            if (d == 0 && threads == 1) memcpy(other, batch, sizeof(float) * 7 * rows);
            snprintf(what, sizeof what, "matmul %s threads=%d vs BF16 threads=1, batch of 7", dtype_name(ws[d]->dtype), threads);
            bad |= bitwise(what, other, batch, (size_t)7 * rows);
            // each token alone vs its row of the batch
            for (int t = 0; t < 7; t++) {
                b->matmul(b, alone, x + (size_t)t * cols, ws[d], 1);
                snprintf(what, sizeof what, "matmul %s threads=%d token %d alone vs in batch", dtype_name(ws[d]->dtype), threads, t);
                bad |= bitwise(what, alone, batch + (size_t)t * rows, rows);
            }
            b->matmul(b, alone, x + (size_t)who * cols, &wb, 1);
        }
        backend_free(b);
    }
    // A view (rows 5..44, the first 2000 columns, the full matrix's ld) of the F32 and of
    // the BF16 matrix: same bits, and a token alone matches its row of the batch.
    weight_t vf = {(const float *)wf.data + 5 * ld, DT_F32, 40, 2000, ld};
    weight_t vb = {(const uint16_t *)wb.data + 5 * ld, DT_BF16, 40, 2000, ld};
    float *xs = rand_floats((size_t)7 * 2000, 1);
    one->matmul(one, batch, xs, &vf, 7);
    one->matmul(one, other, xs, &vb, 7);
    bad |= bitwise("matmul view F32 vs BF16", batch, other, (size_t)7 * 40);
    one->matmul(one, alone, xs + 6 * 2000, &vb, 1);
    bad |= bitwise("matmul view: last token alone vs in batch", alone, other + 6 * 40, 40);
    backend_free(one);
    free(xs); free(x); free(x5); free(alone); free(batch); free(other); free(b5);
    free((void *)wb.data); free((void *)wf.data); free((void *)wh.data);
    return bad;
}

// The expert FFN: a token alone in its expert, or among others in a grouped call, gives the
// same bits, and the same bits as matmul + swiglu + matmul (CPU: also with 1 or 2 threads).
// On a device backend the small-batch (decode) path.
static int invariance_expert_ffn(void) {
    int bad = 0, E = 3, d = 512;
    int64_t ff[3] = {384, 77, 384};
    weight_t w1[3], w3[3], w2[3];
    for (int e = 0; e < E; e++) {
        weight_t h1 = rand_weight_host(ff[e], d, d, DT_BF16, 0.2f), h3 = rand_weight_host(ff[e], d, d, DT_BF16, 0.2f);
        weight_t h2 = rand_weight_host(d, ff[e], ff[e], DT_BF16, 0.2f);
        w1[e] = weight_to_be(&h1); w3[e] = weight_to_be(&h3); w2[e] = weight_to_be(&h2);
        free((void *)h1.data); free((void *)h3.data); free((void *)h2.data);
    }
    expert_set ex = {E, w1, w3, w2};
    float *x = rand_floats((size_t)9 * d, 1), *dx = to_be(x, (size_t)9 * d * 4);
    float *dout = be->alloc(be, (size_t)9 * d * 4), *done = be->alloc(be, (size_t)d * 4);
    int64_t offs[4] = {0, 4, 5, 9};   // expert 1 has one token: x row 4
    int64_t *doffs = to_be(offs, sizeof offs);
    be->expert_ffn(be, dout, dx, doffs, offs, 9, &ex);
    float *out = from_be(dout, (size_t)9 * d * 4);
    if (!be->device_memory) {
        backend *one = cpu_with_threads(1);
        float *out1 = xmalloc(sizeof(float) * 9 * d);
        one->expert_ffn(one, out1, x, offs, offs, 9, &ex);
        bad |= bitwise("expert_ffn threads 1 vs the backend's", out1, out, (size_t)9 * d);
        free(out1);
        backend_free(one);
    }
    int64_t alone[4] = {0, 0, 0, 1};   // row 6 (expert 2) alone: only expert 2 gets a token
    int64_t *dalone = to_be(alone, sizeof alone);
    be->expert_ffn(be, done, dx + 6 * d, dalone, alone, 1, &ex);
    float *one_out = from_be(done, (size_t)d * 4);
    bad |= bitwise("expert_ffn token alone vs among 4 of its expert", one_out, out + 6 * d, d);
    free(one_out);
    float *g = be->alloc(be, sizeof(float) * 384), *u = be->alloc(be, sizeof(float) * 384);
    be->matmul(be, g, dx + 6 * d, &w1[2], 1);
    be->matmul(be, u, dx + 6 * d, &w3[2], 1);
    be->swiglu(be, g, g, u, 384);
    be->matmul(be, done, g, &w2[2], 1);
    one_out = from_be(done, (size_t)d * 4);
    bad |= bitwise("expert_ffn vs matmul + swiglu + matmul", one_out, out + 6 * d, d);
    for (int e = 0; e < E; e++) { be_free(w1[e].data); be_free(w3[e].data); be_free(w2[e].data); }
    free(x); free(out); free(one_out);
    be_free(dx); be_free(dout); be_free(done); be_free(g); be_free(u); be_free(doffs); be_free(dalone);
    return bad;
}

// A token alone vs in a batch (decode GEMV on a device backend), at any position.
static int invariance_matmul_batch(void) {
    int bad = 0, rows = 1000, cols = 4096, who = 3;
    weight_t h = rand_weight_host(rows, cols, cols, DT_BF16, 1), w = weight_to_be(&h);
    float *x = rand_floats((size_t)7 * cols, 1), *dx = to_be(x, (size_t)7 * cols * 4);
    float *x5 = rand_floats((size_t)5 * cols, 1);
    memcpy(x5, x + (size_t)who * cols, sizeof(float) * cols);   // token `who` first in a batch of 5
    float *dx5 = to_be(x5, (size_t)5 * cols * 4);
    float *d1 = be->alloc(be, sizeof(float) * rows), *d7 = be->alloc(be, sizeof(float) * 7 * rows);
    float *d5 = be->alloc(be, sizeof(float) * 5 * rows);
    be->matmul(be, d1, dx + (size_t)who * cols, &w, 1);
    be->matmul(be, d7, dx, &w, 7);
    be->matmul(be, d5, dx5, &w, 5);
    float *a = from_be(d1, (size_t)rows * 4), *b = from_be(d7, (size_t)7 * rows * 4), *c5 = from_be(d5, (size_t)5 * rows * 4);
    bad |= bitwise("matmul: alone vs in a batch of 7", a, b + (size_t)who * rows, rows);
    bad |= bitwise("matmul: alone vs first of 5", a, c5, rows);
    free(a); free(b); free(c5); free(x); free(x5); free((void *)h.data);
    be_free(dx); be_free(dx5); be_free(d1); be_free(d7); be_free(d5); be_free(w.data);
    return bad;
}

// attention and rmsnorm: a token alone vs in a batch of 7 (at another index).
static int invariance_attention_rmsnorm(void) {
    int bad = 0, heads = 8, kvh = 2, hd = 64, max_pos = 200, kv_dim = kvh * hd, n = 7;
    int64_t stride = (int64_t)(max_pos + 1) * kv_dim;
    float *kc = rand_floats((size_t)2 * stride, 1), *vc = rand_floats((size_t)2 * stride, 1);
    float *q = rand_floats((size_t)n * heads * hd, 2);
    // Tokens 3-4 and 5-6 share a sequence in the batch (a prompt's scores, 8 positions at a
    // time) and are alone in their one-token calls (decode's path): both must agree bitwise.
    int32_t slot[7] = {0, 1, 0, 1, 1, 0, 0}, pos[7] = {200, 3, 17, 150, 0, 99, 5};
    size_t qd = (size_t)heads * hd;
    float *dkc = to_be(kc, (size_t)2 * stride * 4), *dvc = to_be(vc, (size_t)2 * stride * 4), *dq = to_be(q, n * qd * 4);
    float *dout = be->alloc(be, sizeof(float) * n * qd), *done = be->alloc(be, sizeof(float) * qd);
    be->attention(be, dout, dq, dkc, dvc, slot, pos, n, heads, kvh, hd, stride);
    float *out = from_be(dout, n * qd * 4);
    for (int i = 0; i < n; i++) {
        be->attention(be, done, dq + i * qd, dkc, dvc, slot + i, pos + i, 1, heads, kvh, hd, stride);
        float *one = from_be(done, qd * 4);
        bad |= bitwise("attention alone vs in a batch of 7", one, out + i * qd, qd);
        free(one);
    }
    float *x = rand_floats((size_t)n * 4097, 2), *w = rand_floats(4097, 1);
    float *dxn = to_be(x, (size_t)n * 4097 * 4), *dw = to_be(w, 4097 * 4);
    float *dnb = be->alloc(be, sizeof(float) * n * 4097), *dn1 = be->alloc(be, sizeof(float) * 4097);
    be->rmsnorm(be, dnb, dxn, dw, n, 4097, 1e-5f);
    be->rmsnorm(be, dn1, dxn + 5 * 4097, dw, 1, 4097, 1e-5f);
    float *nb = from_be(dnb, (size_t)n * 4097 * 4), *n1 = from_be(dn1, 4097 * 4);
    bad |= bitwise("rmsnorm alone vs in a batch of 7", n1, nb + 5 * 4097, 4097);
    free(kc); free(vc); free(q); free(out); free(x); free(w); free(nb); free(n1);
    be_free(dkc); be_free(dvc); be_free(dq); be_free(dout); be_free(done); be_free(dxn); be_free(dw); be_free(dnb); be_free(dn1);
    return bad;
}

// ---------------------------------------------------------------------------- main
typedef struct {
    int passed, failed;
    FILE *json;
    int first;
    const char *force_fail;
    const char *current;   // the case running now (named in the JSON if the process ends in it)
} tally;

static tally *the_tally;

static void json_row(tally *t, const char *op, const char *args, double err, double tol, int ok) {
    if (!t->json) return;
    fprintf(t->json, "%s\n    {\"op\": \"%s\", \"case\": \"%s\", \"error\": %.6g, \"tol\": %.3g, \"ok\": %s}",
            t->first ? "" : ",", op, args, isinf(err) ? 1e308 : err, tol, ok ? "true" : "false");
    fflush(t->json);
    t->first = 0;
}

// A case that ends the process (die() inside a library call) still leaves valid JSON that
// names it; the check script reruns from the next case (--from).
static void close_json_at_exit(void) {
    tally *t = the_tally;
    if (!t || !t->json) return;
    fprintf(t->json, "\n  ], \"passed\": %d, \"failed\": %d, \"ended_in\": \"%s\"}\n", t->passed, t->failed,
            t->current ? t->current : "");
    fclose(t->json);
    t->json = NULL;
}

static void run_case(const test_case *c, void *ctx) {
    tally *t = ctx;
    t->current = c->text;
    double tol = tolerance(c), e = op_case_find(cases, sizeof cases / sizeof cases[0], c)(c);
    if (t->force_fail && !strcmp(t->force_fail, c->op)) e = INFINITY;
    int ok = e <= tol;
    printf("%-12s %-64.64s %10.3g %8.2g %s\n", c->op, c->args, e, tol, ok ? "ok" : "FAIL");
    fflush(stdout);
    json_row(t, c->op, c->args, e, tol, ok);
    t->current = NULL;
    if (ok) { t->passed++; return; }
    t->failed++;
    fprintf(stderr, "FAIL %s %s: error %.3g over tolerance %.2g (%s vs %s)\n", c->op, c->args, e, tol, be->name,
            ref ? ref->name : "reference");
}

int main(int argc, char **argv) {
    if (argc < 2) die("usage: test_ops SOURCE_DIR [--backend cpu|cuda] [--json FILE] [--from N] [--force-fail OP]");
    const char *which = "cpu", *json = NULL, *force = NULL;
    int from = 0;
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--backend")) which = argv[i + 1];
        else if (!strcmp(argv[i], "--json")) json = argv[i + 1];
        else if (!strcmp(argv[i], "--from")) from = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--force-fail")) force = argv[i + 1];
        else die("test_ops: unknown option %s", argv[i]);
    }
    const char *device = "CPU";
    if (!strcmp(which, "cuda")) {
#ifdef LLAMOE_CUDA
        if (cuda_device_count() == 0) {
            printf("test_ops --backend cuda: no CUDA device: skipped\n");
            return 77;
        }
        llamoe_err err;
        backend_options o = {0};
        if (!(be = backend_cuda_new(&o, &err))) die("%s", err.msg);
        device = backend_cuda_description(be);
        ref = cpu_with_threads(0);
#else
        printf("test_ops --backend cuda: this build has no CUDA backend: skipped\n");
        return 77;
#endif
    } else if (!strcmp(which, "cpu")) {
        be = cpu_with_threads(0);
    } else {
        die("test_ops: --backend %s: expected cpu or cuda", which);
    }
    tally t = {0, 0, NULL, 1, force, NULL};
    the_tally = &t;
    if (json) {
        if (!(t.json = fopen(json, "w"))) die("%s: cannot create", json);
        fprintf(t.json, "{\"backend\": \"%s\", \"device\": \"%s\", \"from\": %d, \"cases\": [", be->name, device, from);
        atexit(close_json_at_exit);
    }
    printf("backend %s (%s), reference: %s\n", be->name, device, ref ? "the CPU backend" : "the naive references");
    printf("%-12s %-64s %10s %8s\n", "op", "case", "max_err", "tol");
    char path[4096];
    int index = 0;
    const char *files[] = {"ops_cases.txt", "ops_cases_cuda.txt"};
    for (int f = 0; f < (ref ? 2 : 1); f++) {
        snprintf(path, sizeof path, "%s/tests/data/%s", argv[1], files[f]);
        ops_for_each_case(path, from, &index, run_case, &t);
    }

    case_rng.state = 42;
    struct { const char *name; int (*run)(void); int cpu_only; } inv[] = {
        {"invariance matmul (batch, position, threads, F32/BF16/F16)", invariance_matmul_cpu, 1},
        {"invariance matmul (alone, in a batch, first of a batch)", invariance_matmul_batch, 0},
        {"invariance expert_ffn (grouping, = single ops)", invariance_expert_ffn, 0},
        {"invariance attention, rmsnorm (batch)", invariance_attention_rmsnorm, 0},
    };
    for (size_t i = 0; i < sizeof inv / sizeof inv[0]; i++) {
        if (inv[i].cpu_only && be->device_memory) continue;
        if (index++ < from) continue;
        t.current = inv[i].name;
        int bad = inv[i].run();
        printf("%-77s %s\n", inv[i].name, bad ? "FAIL" : "bitwise equal");
        json_row(&t, "invariance", inv[i].name, bad ? INFINITY : 0, 0, !bad);
        t.current = NULL;
        if (bad) t.failed++;
        else t.passed++;
    }
    printf("ops (%s): %d passed, %d failed\n", be->name, t.passed, t.failed);
    int failed = t.failed;
    close_json_at_exit();
    backend_free(be);
    backend_free(ref);
    return failed ? 1 : 0;
}
