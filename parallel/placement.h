// Expert placement: which rank owns which experts of every MoE layer. Rank r owns one
// contiguous block; when P does not divide E the first E % P ranks own one expert more
// (8 experts on 3 ranks: 0-2, 3-5, 6-7). Contiguous blocks keep a token's experts, which the
// router lists in ascending order, grouped by owner, so a token goes once to each owner.
//
// Every rank must own at least one expert: E < P is an error at start-up rather than ranks
// that hold no weights (they would still work in the exchange, but the runtime would carry a
// special case for an idle configuration nobody wants to run).
#pragma once
#include "base/common.h"

typedef struct {
    int n_experts, n_ranks;
} expert_placement;

// 0, or -1 with err: "cannot place 2 experts on 3 ranks: every rank must own at least one".
int placement_init(expert_placement *p, int n_experts, int n_ranks, llamoe_err *err);
int placement_owner(const expert_placement *p, int expert);   // rank owning global expert id
int placement_first(const expert_placement *p, int rank);     // rank's first global expert id
int placement_count(const expert_placement *p, int rank);     // how many experts rank owns
