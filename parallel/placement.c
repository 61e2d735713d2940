#include "parallel/placement.h"

#include <string.h>

int placement_init(expert_placement *p, int n_experts, int n_ranks, llamoe_err *err) {
    if (n_ranks < 1) return fail(err, "cannot place experts on %d ranks", n_ranks);
    if (n_experts < 1) return fail(err, "cannot place %d experts: need at least one", n_experts);
    if (n_experts < n_ranks)
        return fail(err, "cannot place %d experts on %d ranks: every rank must own at least one "
                    "(run with at most %d ranks)", n_experts, n_ranks, n_experts);
    p->n_experts = n_experts;
    p->n_ranks = n_ranks;
    return 0;
}

// With base = E / P and extra = E % P, ranks 0 .. extra-1 own base + 1 experts, the rest base.
int placement_count(const expert_placement *p, int rank) {
    int base = p->n_experts / p->n_ranks, extra = p->n_experts % p->n_ranks;
    return base + (rank < extra);
}

int placement_first(const expert_placement *p, int rank) {
    int base = p->n_experts / p->n_ranks, extra = p->n_experts % p->n_ranks;
    return rank * base + (rank < extra ? rank : extra);
}

int placement_owner(const expert_placement *p, int expert) {
    int base = p->n_experts / p->n_ranks, extra = p->n_experts % p->n_ranks;
    int big = extra * (base + 1);           // experts held by the ranks with one more
    return expert < big ? expert / (base + 1) : extra + (expert - big) / base;
}

// ---------------------------------------------------------------------------- replicas
int placement_table_alloc(placement_table *t, int n_layers, int n_experts, int n_physical, int n_ranks,
                          llamoe_err *err) {
    memset(t, 0, sizeof *t);
    expert_placement p = {0, 0};
    if (n_layers < 1) return fail(err, "cannot place the experts of %d layers", n_layers);
    if (n_physical < n_experts)
        return fail(err, "%d slots cannot hold %d experts", n_physical, n_experts);
    if (placement_init(&p, n_physical, n_ranks, err) != 0) return -1;
    // One copy per rank at most: a second copy on the same rank would add memory, not balance.
    if ((int64_t)n_physical > (int64_t)n_experts * n_ranks)
        return fail(err, "%d redundant experts for %d experts on %d ranks: at most %lld (one copy of each expert per rank)",
                    n_physical - n_experts, n_experts, n_ranks, (long long)n_experts * (n_ranks - 1));
    size_t n;
    CHECK(mul_ok((size_t)n_layers, (size_t)n_physical, &n));
    *t = (placement_table){.n_layers = n_layers, .n_logical = n_experts, .n_physical = n_physical, .n_ranks = n_ranks};
    t->logical = xmalloc(n * sizeof(int32_t));
    for (size_t i = 0; i < n; i++) t->logical[i] = -1;
    return 0;
}

int placement_table_contiguous(placement_table *t, int n_layers, int n_experts, int n_ranks, llamoe_err *err) {
    if (placement_table_alloc(t, n_layers, n_experts, n_experts, n_ranks, err) != 0) return -1;
    for (int l = 0; l < n_layers; l++)
        for (int e = 0; e < n_experts; e++) t->logical[(size_t)l * n_experts + e] = e;
    return 0;
}

void placement_table_copy(placement_table *dst, const placement_table *src) {
    *dst = *src;
    size_t n = (size_t)src->n_layers * (size_t)src->n_physical * sizeof(int32_t);
    dst->logical = xmalloc(n);
    memcpy(dst->logical, src->logical, n);
}

void placement_table_free(placement_table *t) {
    free(t->logical);
    memset(t, 0, sizeof *t);
}

int placement_table_check(const placement_table *t, llamoe_err *err) {
    int E = t->n_logical, S = t->n_physical, P = t->n_ranks;
    expert_placement p = {0, 0};
    if (E < 1 || S < E) return fail(err, "%d slots cannot hold %d experts", S, E);
    if (placement_init(&p, S, P, err) != 0) return -1;
    int *copies = xmalloc((size_t)E * sizeof(int)), *last_rank = xmalloc((size_t)E * sizeof(int));
    int rc = 0;
    for (int l = 0; l < t->n_layers && rc == 0; l++) {
        const int32_t *row = placement_layer(t, l);
        for (int e = 0; e < E; e++) { copies[e] = 0; last_rank[e] = -1; }
        for (int s = 0; s < S && rc == 0; s++) {   // slots are rank-major: a rank's slots are adjacent
            int e = row[s], r = placement_owner(&p, s);
            if (e < 0 || e >= E)
                rc = fail(err, "layer %d: slot %d (rank %d) holds expert %d, not one of the %d experts", l, s, r, e, E);
            else if (last_rank[e] == r)
                rc = fail(err, "layer %d: rank %d holds expert %d twice", l, r, e);
            else {
                copies[e]++;
                last_rank[e] = r;
            }
        }
        for (int e = 0; e < E && rc == 0; e++)
            if (copies[e] == 0) rc = fail(err, "layer %d: expert %d has no slot (the placement loses it)", l, e);
    }
    free(copies);
    free(last_rank);
    return rc;
}

void placement_replicas(const placement_table *t, int l, int32_t *start, int32_t *replica) {
    int E = t->n_logical, S = t->n_physical;
    const int32_t *row = placement_layer(t, l);
    for (int e = 0; e <= E; e++) start[e] = 0;
    for (int s = 0; s < S; s++) start[row[s] + 1]++;
    for (int e = 0; e < E; e++) start[e + 1] += start[e];
    int32_t *next = xmalloc((size_t)E * sizeof(int32_t));
    memcpy(next, start, (size_t)E * sizeof(int32_t));
    for (int s = 0; s < S; s++) replica[next[row[s]]++] = s;
    free(next);
}
