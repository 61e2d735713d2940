// The MoE exchange alone (runtime/moe.h: moe_exchange_layer) on the CPU backend, with fake
// experts: expert e computes y = x * (e + 1) + e, which depends only on the row and the
// logical expert id (every copy of e computes the same), so every rank checks its own tokens'
// combined outputs bitwise (fmaf over the token's experts in ascending order) without the
// others. The experts also check that
// their rows arrive grouped in (source rank, position at the source) order: element 0 of
// every row says where it comes from. Shared by tests/test_comm_self.c (one process) and
// tests/check_dispatch.c (under mpirun).
#pragma once
#include "base/rng.h"
#include "parallel/placement.h"
#include "runtime/moe.h"

#include <string.h>

static float fake_expert(float x, int e) { return x * (float)(e + 1) + (float)e; }

typedef struct {
    const int32_t *holds;   // the logical expert of each local slot of this rank (layer 0)
    const char *what;       // names the case in messages
    int bad;
} fake_experts;

static void run_fake_experts(void *ctx, moe_state *s, const moe_exchange_plan *plan) {
    fake_experts *f = ctx;
    int d = s->d;
    for (int le = 0; le < s->n_local; le++)
        for (int64_t r = s->offsets[le]; r < s->offsets[le + 1]; r++) {
            if (r > s->offsets[le] && !(s->xe[r * d] > s->xe[(r - 1) * d])) {
                fprintf(stderr, "%s: slot %d (expert %d) rows out of (source rank, position) order: %.0f after %.0f\n",
                        f->what, le, f->holds[le], s->xe[r * d], s->xe[(r - 1) * d]);
                f->bad = 1;
            }
            for (int i = 0; i < d; i++) s->ye[r * d + i] = fake_expert(s->xe[r * d + i], f->holds[le]);
        }
    if (!plan->fixed && plan->rows_owned != s->offsets[s->n_local]) {
        fprintf(stderr, "%s: the counts plan expects %lld rows, %lld arrived\n", f->what, (long long)plan->rows_owned,
                (long long)s->offsets[s->n_local]);
        f->bad = 1;
    }
}

// k distinct experts of E, ascending.
static void choose_experts(rng_t *rng, int32_t *out, int E, int k) {
    int32_t pool[512];
    for (int e = 0; e < E; e++) pool[e] = e;
    for (int j = 0; j < k; j++) {
        int pick = j + (int)(rng_next(rng) % (uint64_t)(E - j));
        int32_t tmp = pool[j]; pool[j] = pool[pick]; pool[pick] = tmp;
        out[j] = pool[j];
    }
    for (int a = 1; a < k; a++)
        for (int b = a; b > 0 && out[b] < out[b - 1]; b--) { int32_t t = out[b]; out[b] = out[b - 1]; out[b - 1] = t; }
}

// One step of n tokens on this rank (every rank calls it, also with n = 0) through a state
// built for (E, k, d, max_tokens) with the given plan. Returns 0 when every output is bitwise
// what it should be.
static int exchange_round_trip(moe_state *s, comm *c, int n, uint64_t seed, int fixed, const char *what) {
    int E = s->n_experts, k = s->top_k, d = s->d;
    rng_t rng = {seed};
    float *x = xmalloc(((size_t)n * d + 1) * sizeof(float)), *w = xmalloc(((size_t)n * k + 1) * sizeof(float));
    int32_t *expert = xmalloc(((size_t)n * k + 1) * sizeof(int32_t));
    float *out = xmalloc(((size_t)n * d + 1) * sizeof(float));
    for (int t = 0; t < n; t++) {
        x[(size_t)t * d] = (float)(c->rank * 100000 + t);   // exact in float: where the row comes from
        for (int i = 1; i < d; i++) x[(size_t)t * d + i] = (float)((int)(rng_next(&rng) % 20001u) - 10000) / 37.0f;
        for (int j = 0; j < k; j++) w[t * k + j] = (float)(rng_next(&rng) % 1000u) / 997.0f;
        choose_experts(&rng, expert + (size_t)t * k, E, k);
    }
    fake_experts f = {placement_layer(&s->table, 0) + placement_first(&s->slots, c->rank), what, 0};
    moe_step_begin(s, s->max_tokens, fixed);
    moe_exchange_layer(s, c, 0, x, n, expert, w, run_fake_experts, &f, out);
    moe_step_end(s);
    for (int t = 0; t < n && !f.bad; t++)
        for (int i = 0; i < d; i++) {
            float want = 0.0f;
            for (int j = 0; j < k; j++) want = fmaf(w[t * k + j], fake_expert(x[(size_t)t * d + i], expert[t * k + j]), want);
            if (memcmp(&want, &out[(size_t)t * d + i], sizeof want)) {
                fprintf(stderr, "%s: rank %d token %d element %d: got %.9g, expected %.9g\n", what, c->rank, t, i,
                        out[(size_t)t * d + i], want);
                f.bad = 1;
                break;
            }
        }
    free(x); free(w); free(expert); free(out);
    return f.bad;
}
