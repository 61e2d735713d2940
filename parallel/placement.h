// Expert placement: which rank holds which experts of every MoE layer.
//
// Blocks. Rank r holds one contiguous block of expert slots; when P does not divide the
// number of slots the first (slots % P) ranks hold one more (8 on 3 ranks: 0-2, 3-5, 6-7).
// Without redundant experts the slots are the logical experts themselves, so contiguous
// blocks keep a token's experts, which the router lists in ascending order, grouped by owner.
//
// Replicas. With R redundant experts a layer's E logical experts become S = E + R physical
// ones: the slots. The blocks above place the S slots (rank r holds the same slot ids in every
// layer, so each rank's memory and local expert count stay fixed), and a placement table says,
// per layer, which logical expert each slot holds a copy of. The contiguous placement is the
// identity table with S = E; a balanced one (parallel/balance.h) replicates the heaviest
// experts and spreads the copies so that every rank gets the same load.
//
// Every rank must hold at least one slot: S < P is an error at start-up rather than ranks
// that hold no weights (they would still work in the exchange, but the runtime would carry a
// special case for an idle configuration nobody wants to run).
#pragma once
#include "base/common.h"

typedef struct {
    int n_experts, n_ranks;   // n_experts: the slots placed (logical experts, or E + R)
} expert_placement;

// 0, or -1 with err: "cannot place 2 experts on 3 ranks: every rank must own at least one".
int placement_init(expert_placement *p, int n_experts, int n_ranks, llamoe_err *err);
int placement_owner(const expert_placement *p, int expert);   // rank owning global expert id
int placement_first(const expert_placement *p, int rank);     // rank's first global expert id
int placement_count(const expert_placement *p, int rank);     // how many experts rank owns

// ---------------------------------------------------------------------------- replicas
// The logical expert held by every slot (physical expert) of every layer.
typedef struct {
    int n_layers, n_logical, n_physical, n_ranks;
    int32_t *logical;   // [n_layers * n_physical], owned: layer l's row starts at l * n_physical
} placement_table;

// The contiguous placement: S = E slots, slot p holds logical expert p in every layer.
// 0, or -1 with err as placement_init.
int placement_table_contiguous(placement_table *t, int n_layers, int n_experts, int n_ranks, llamoe_err *err);
// A table of S slots to be filled by the caller (every entry -1); 0, or -1 with err when the
// slots cannot be placed or a logical expert would need two copies on one rank (R > E (P - 1)).
int placement_table_alloc(placement_table *t, int n_layers, int n_experts, int n_physical, int n_ranks,
                          llamoe_err *err);
void placement_table_copy(placement_table *dst, const placement_table *src);   // dst allocated here
void placement_table_free(placement_table *t);
static inline const int32_t *placement_layer(const placement_table *t, int l) {
    return t->logical + (size_t)l * (size_t)t->n_physical;
}
// Redundant experts per layer (S - E).
static inline int placement_redundant(const placement_table *t) { return t->n_physical - t->n_logical; }

// 0 when every slot holds a logical expert in range, every logical expert has at least one
// slot in every layer, and no rank holds two copies of one expert; else -1 with err naming
// the first problem ("layer 2: expert 5 has no slot (lost)").
int placement_table_check(const placement_table *t, llamoe_err *err);

// Layer l's replicas grouped by logical expert: the slots of expert e are
// replica[start[e] .. start[e + 1]), ascending. start has n_logical + 1 entries, replica
// n_physical.
void placement_replicas(const placement_table *t, int l, int32_t *start, int32_t *replica);
