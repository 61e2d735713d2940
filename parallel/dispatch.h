// The expert-parallel exchange of one MoE layer: planning its messages (base/moe_wire.h) and
// moving them. The backend's ops fill and read the buffers (kernels/backend.h: moe_plan,
// moe_pack, moe_group, combine); this module decides where every message starts and how many
// bytes cross, and runs the two all-to-alls over the communicator, in whatever memory the
// communicator carries (device buffers over NCCL, host buffers over MPI).
//
// Two plans:
//   counts: the home ranks' route counts (rows and pairs per peer, pairs per expert) travel
//           first in a small all-to-all of int64 values, and every message is sized exactly;
//           the owners also learn how many rows each local expert gets before any row arrives.
//   fixed:  every message has room for `capacity` rows and capacity * min(k, experts per rank)
//           pairs; the real counts travel in each message's header, so nothing is exchanged
//           or copied to the host first (the decode exchange: no host synchronisation).
// Both give the same rows to the same experts in the same order, so the same results.
//
// Every call here is collective over the ranks of the exchange, every layer of every step,
// also for a rank with no tokens.
#pragma once
#include "base/moe_wire.h"
#include "parallel/comm.h"
#include "parallel/placement.h"

typedef struct {
    int fixed;                     // 1: the fixed-capacity plan
    int n_ranks, rank;
    // per peer (home side: what this rank sends; owner side: what it receives)
    int64_t rows_to[MOE_MAX_RANKS], pairs_to[MOE_MAX_RANKS];      // counts, or capacities
    int64_t rows_from[MOE_MAX_RANKS], pairs_from[MOE_MAX_RANKS];
    moe_layout send, recv;         // dispatch messages
    size_t send_bytes[MOE_MAX_RANKS], recv_bytes[MOE_MAX_RANKS];
    // combine: the owner returns one row per pair received, source s's at rows
    // owner_ret[s] .. owner_ret[s+1]-1 of its buffer; the home finds owner r's at home_ret[r].
    int64_t owner_ret[MOE_MAX_RANKS + 1], home_ret[MOE_MAX_RANKS + 1];
    // counts plan only: rows of each local expert on this rank (offsets, n_local + 1 values)
    int64_t *expert_offsets;
    int64_t rows_owned;            // pairs received = rows of the experts' input (counts plan)
} moe_exchange_plan;

// Bytes sent and received in the all-to-alls (other ranks only; a rank's share for its own
// experts is a local copy, counted apart), accumulated over every call.
typedef struct {
    size_t dispatch_sent, dispatch_recv, combine_sent, combine_recv, local;
    int64_t exchanges_counts, exchanges_fixed;
} moe_traffic;

typedef struct moe_exchange moe_exchange;

// An exchange of d-float rows among the ranks of placement p (this rank: `rank`), for steps of
// up to max_tokens tokens with k experts each; the fixed plan holds `capacity` tokens per rank
// (0: no fixed plan). Buffer sizes below are for the worst case of either plan.
moe_exchange *moe_exchange_new(const expert_placement *p, int rank, int d, int k, int max_tokens, int capacity);
void moe_exchange_free(moe_exchange *ex);

// The largest buffers the two plans need: dispatch send and receive, and the combine's rows
// (its send on the owner side and receive on the home side), in bytes and rows.
typedef struct {
    size_t dispatch_send, dispatch_recv;
    int64_t owner_rows;            // rows computed here (experts' input and output)
    int64_t combine_send_rows, combine_recv_rows;
} moe_exchange_sizes;
void moe_exchange_max_sizes(const moe_exchange *ex, moe_exchange_sizes *s);

// The counts plan from this rank's route counts (host copies of moe_plan's counts: pairs per
// expert [E], then rows per rank [P]). Collective. 0, or -1 with err on every rank when the
// ranks disagree on the shape (d, E) or one of them reports local_failed.
int moe_exchange_plan_counts(moe_exchange *ex, comm *c, const int32_t *counts, int local_failed,
                             const moe_exchange_plan **plan, llamoe_err *err);
// The fixed plan (local; the same every step). NULL when built with capacity 0.
const moe_exchange_plan *moe_exchange_plan_fixed(const moe_exchange *ex);

// The two all-to-alls of a plan. 0, or -1 with err (the transport failed).
int moe_exchange_dispatch(moe_exchange *ex, comm *c, const moe_exchange_plan *plan, const void *send, void *recv,
                          llamoe_err *err);
int moe_exchange_combine(moe_exchange *ex, comm *c, const moe_exchange_plan *plan, const void *send, void *recv,
                         llamoe_err *err);

void moe_exchange_traffic(const moe_exchange *ex, moe_traffic *t);
