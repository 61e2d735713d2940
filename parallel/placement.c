#include "parallel/placement.h"

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
