// Expert-parallel load balancing (balance.h): replicate, pack, keep slots.
#include "parallel/balance.h"

#include <string.h>

typedef struct {
    int e;
    double share;   // load per copy
} copy_item;

// Heaviest first, ties to the lower expert: a total order, so qsort's result is one.
static int by_share(const void *a, const void *b) {
    const copy_item *x = a, *y = b;
    if (x->share != y->share) return x->share > y->share ? -1 : 1;
    return x->e - y->e;
}

// Step 1: how many copies of each expert (copies[E]).
static void replicate(int *copies, const int64_t *load, int E, int S, int P) {
    for (int e = 0; e < E; e++) copies[e] = 1;
    for (int i = E; i < S; i++) {
        int best = -1;
        for (int e = 0; e < E; e++) {
            if (copies[e] >= P) continue;
            // load[e] / copies[e] > load[best] / copies[best], in integers
            if (best < 0 || load[e] * copies[best] > load[best] * copies[e]) best = e;
        }
        CHECK(best >= 0);   // S <= E * P (placement_table_alloc)
        copies[best]++;
    }
}

typedef struct {
    int E, P;
    double *rank_load;         // [P]
    int *free_slots;           // [P]
    unsigned char *holds;      // [P * E]
    int *item_rank;            // [S] rank of each placed item (-1: not yet)
    const copy_item *items;
    const unsigned char *held_before;   // [P * E] or NULL
} packing;

static void put(packing *k, int i, int r) {
    int e = k->items[i].e;
    k->item_rank[i] = r;
    k->holds[(size_t)r * k->E + e] = 1;
    k->free_slots[r]--;
    k->rank_load[r] += k->items[i].share;
}

static void take(packing *k, int i) {
    int e = k->items[i].e, r = k->item_rank[i];
    k->item_rank[i] = -1;
    k->holds[(size_t)r * k->E + e] = 0;
    k->free_slots[r]++;
    k->rank_load[r] -= k->items[i].share;
}

// The free slots left all sit on ranks that already hold item i's expert. A rank a without it
// has no free slot, and (slot counts differing by at most one) holds some expert f that the
// free rank b lacks: f moves to b and item i takes its place on a.
static void repair(packing *k, int i, int n_placed) {
    int e = k->items[i].e, b = -1;
    for (int r = 0; r < k->P && b < 0; r++)
        if (k->free_slots[r] > 0) b = r;
    CHECK(b >= 0);
    for (int a = 0; a < k->P; a++) {
        if (a == b || k->holds[(size_t)a * k->E + e]) continue;
        for (int j = 0; j < n_placed; j++) {
            if (k->item_rank[j] != a || k->holds[(size_t)b * k->E + k->items[j].e]) continue;
            take(k, j);
            put(k, j, b);
            put(k, i, a);
            return;
        }
    }
    die("balance: no rank can take another copy of expert %d", e);   // ruled out above
}

// Step 2b: greedy packing ends with the light copies wherever slots are left, which can leave
// a rank with more slots than others overloaded. Swap a copy on the busiest rank with a
// lighter one elsewhere while that lowers the larger of the two ranks' loads below the busiest
// load (best swap first, ties to the lower indices; a bounded number of rounds).
static void refine(packing *k, int S) {
    double total = 0;
    for (int r = 0; r < k->P; r++) total += k->rank_load[r];
    double eps = 1e-12 * (total > 0 ? total : 1);
    for (int round = 0; round < 4 * S; round++) {
        int a = 0;
        for (int r = 1; r < k->P; r++)
            if (k->rank_load[r] > k->rank_load[a]) a = r;
        double best = k->rank_load[a] - eps;
        int bi = -1, bj = -1;
        for (int i = 0; i < S; i++) {
            if (k->item_rank[i] != a) continue;
            for (int j = 0; j < S; j++) {
                int b = k->item_rank[j];
                double d = k->items[i].share - k->items[j].share;
                if (b == a || d <= 0) continue;
                int ei = k->items[i].e, ej = k->items[j].e;
                if (k->holds[(size_t)b * k->E + ei] || k->holds[(size_t)a * k->E + ej]) continue;
                double la = k->rank_load[a] - d, lb = k->rank_load[b] + d, worse = la > lb ? la : lb;
                if (worse < best) {
                    best = worse;
                    bi = i;
                    bj = j;
                }
            }
        }
        if (bi < 0) return;
        int b = k->item_rank[bj];
        take(k, bi);
        take(k, bj);
        put(k, bi, b);
        put(k, bj, a);
    }
}

// Step 3a: ranks are interchangeable in the packing, so each new rank's set of experts goes
// to the old rank (with as many slots) that held most of them: the loads stay, fewer weights
// move. Greedy on the largest overlap, ties to the lower ranks. holds is rewritten.
static void relabel(packing *k, const expert_placement *blocks) {
    int P = k->P, E = k->E;
    int *to = xmalloc((size_t)P * sizeof(int)), *taken = xcalloc((size_t)P, sizeof(int));
    for (int r = 0; r < P; r++) to[r] = -1;
    for (int round = 0; round < P; round++) {
        int bn = -1, bo = -1, best = -1;
        for (int rn = 0; rn < P; rn++) {
            if (to[rn] >= 0) continue;
            for (int ro = 0; ro < P; ro++) {
                if (taken[ro] || placement_count(blocks, ro) != placement_count(blocks, rn)) continue;
                int overlap = 0;
                for (int e = 0; e < E; e++)
                    overlap += k->holds[(size_t)rn * E + e] && k->held_before[(size_t)ro * E + e];
                if (overlap > best) { best = overlap; bn = rn; bo = ro; }
            }
        }
        CHECK(bn >= 0);
        to[bn] = bo;
        taken[bo] = 1;
    }
    unsigned char *moved = xmalloc((size_t)P * E);
    for (int rn = 0; rn < P; rn++) memcpy(moved + (size_t)to[rn] * E, k->holds + (size_t)rn * E, (size_t)E);
    memcpy(k->holds, moved, (size_t)P * E);
    free(moved);
    free(to);
    free(taken);
}

void balance_layer(int32_t *logical, const int64_t *load, int E, int S, int P, const int32_t *previous) {
    expert_placement blocks;
    CHECK(E >= 1 && S >= E && (int64_t)S <= (int64_t)E * P && placement_init(&blocks, S, P, NULL) == 0);
    for (int e = 0; e < E; e++) CHECK(load[e] >= 0 && load[e] <= BALANCE_MAX_LOAD);
    int *copies = xmalloc((size_t)E * sizeof(int));
    replicate(copies, load, E, S, P);

    copy_item *items = xmalloc((size_t)S * sizeof(copy_item));
    for (int e = 0, i = 0; e < E; e++)
        for (int c = 0; c < copies[e]; c++) items[i++] = (copy_item){e, (double)load[e] / copies[e]};
    qsort(items, (size_t)S, sizeof *items, by_share);

    unsigned char *before = NULL;
    if (previous) {
        before = xcalloc((size_t)P * E, 1);
        for (int s = 0; s < S; s++) before[(size_t)placement_owner(&blocks, s) * E + previous[s]] = 1;
    }
    packing k = {.E = E, .P = P, .rank_load = xcalloc((size_t)P, sizeof(double)),
                 .free_slots = xmalloc((size_t)P * sizeof(int)), .holds = xcalloc((size_t)P * E, 1),
                 .item_rank = xmalloc((size_t)S * sizeof(int)), .items = items, .held_before = before};
    for (int r = 0; r < P; r++) k.free_slots[r] = placement_count(&blocks, r);
    for (int i = 0; i < S; i++) k.item_rank[i] = -1;

    // Step 2: greedy packing.
    for (int i = 0; i < S; i++) {
        int e = items[i].e, best = -1;
        for (int r = 0; r < P; r++) {
            if (k.free_slots[r] == 0 || k.holds[(size_t)r * E + e]) continue;
            if (best < 0 || k.rank_load[r] < k.rank_load[best]) best = r;
        }
        if (best >= 0) put(&k, i, best);
        else repair(&k, i, i);
    }
    refine(&k, S);
    if (previous) relabel(&k, &blocks);

    // Step 3: slots. A rank's experts: first those keeping their previous slot, then the rest
    // in ascending order into the slots left.
    for (int s = 0; s < S; s++) logical[s] = -1;
    for (int r = 0; r < P; r++) {
        int first = placement_first(&blocks, r), count = placement_count(&blocks, r);
        if (previous)
            for (int s = first; s < first + count; s++)
                if (k.holds[(size_t)r * E + previous[s]]) {
                    logical[s] = previous[s];
                    k.holds[(size_t)r * E + previous[s]] = 0;
                }
        int s = first;
        for (int e = 0; e < E; e++) {
            if (!k.holds[(size_t)r * E + e]) continue;
            while (logical[s] >= 0) s++;
            logical[s] = e;
        }
    }
    free(copies); free(items); free(before);
    free(k.rank_load); free(k.free_slots); free(k.holds); free(k.item_rank);
}

void balance_table(placement_table *t, const int64_t *load, const placement_table *previous) {
    CHECK(!previous || (previous->n_layers == t->n_layers && previous->n_logical == t->n_logical &&
                        previous->n_physical == t->n_physical && previous->n_ranks == t->n_ranks));
    for (int l = 0; l < t->n_layers; l++)
        balance_layer(t->logical + (size_t)l * t->n_physical, load + (size_t)l * t->n_logical, t->n_logical,
                      t->n_physical, t->n_ranks, previous ? placement_layer(previous, l) : NULL);
}

// ---------------------------------------------------------------------------- evaluation
void balance_rank_loads(double *rank_load, const int32_t *logical, const int64_t *load, int E, int S, int P) {
    expert_placement blocks;
    CHECK(placement_init(&blocks, S, P, NULL) == 0);
    int *copies = xcalloc((size_t)E, sizeof(int));
    for (int s = 0; s < S; s++) copies[logical[s]]++;
    for (int r = 0; r < P; r++) rank_load[r] = 0;
    for (int s = 0; s < S; s++) rank_load[placement_owner(&blocks, s)] += (double)load[logical[s]] / copies[logical[s]];
    free(copies);
}

double balance_imbalance(const int32_t *logical, const int64_t *load, int E, int S, int P) {
    double *rank_load = xmalloc((size_t)P * sizeof(double)), sum = 0, max = 0;
    balance_rank_loads(rank_load, logical, load, E, S, P);
    for (int r = 0; r < P; r++) {
        sum += rank_load[r];
        if (rank_load[r] > max) max = rank_load[r];
    }
    free(rank_load);
    return sum > 0 ? max * P / sum : 0.0;
}
