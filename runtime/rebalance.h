// Rebalancing while serving (--rebalance N): every N steps, between two steps, the ranks add
// up the tokens each logical expert got in the window since the last rebalance, compute a new
// placement from it (parallel/balance.h, the same table on every rank), and move the expert
// weights of the slots that change owner through the communicator (NCCL on a GPU), slot by
// slot, before the next step's first MoE layer runs. Generation does not stop, and no logit
// changes: copies are exact and the combine sums in logical-expert order whatever rank
// computed a pair.
//
// A layer keeps its placement unless the new one lowers its rank imbalance on the window by
// more than REBALANCE_MIN_GAIN: no weights move for noise.
#pragma once
#include "runtime/moe.h"

#define REBALANCE_MIN_GAIN 0.01

// Collective: every rank calls it at the same step (moe_forward does, at layer 0, when
// s->rebalance_every says so). Dies with a message when a moved expert does not arrive intact
// (s->rebalance_check) or the transport fails.
void moe_rebalance(const model *m, moe_state *s, comm *c);
