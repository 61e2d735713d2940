// The expert-parallel exchange of one MoE layer for one step: dispatch sends each token's
// hidden row to the ranks owning its experts, the runtime computes the experts on what arrived,
// and combine returns every (token, expert) output to the token's home rank.
//
// Home side: n tokens (rows of d floats) on this rank, each with k expert ids in strictly
// ascending order (the router's top-k). A token goes ONCE to each rank owning at least one of
// its experts, with the list of those experts. Owner side: the received (row, local expert)
// pairs are grouped by local expert - within an expert by (source rank, position at the
// source), so the order is deterministic - as xe[M, d] with offsets[n_local + 1].
// The runtime computes ye[M, d] (fp32, same order) and calls moe_combine, which fills
// y_pairs[n * k, d] on the home: row t * k + j is token t's j-th expert's output. Summing it
// in j order (ascending expert id) gives a result that does not depend on the number of ranks.
//
// Both calls are collective: every rank calls them every step, also with n = 0 tokens.
// See docs/parallel.md for the wire format.
#pragma once
#include "parallel/comm.h"
#include "parallel/placement.h"

typedef struct moe_exchange moe_exchange;

// Traffic of the last dispatch + combine on this rank. "sent"/"recv" count bytes that crossed
// to or from other ranks (rows, metadata, output rows); the share a rank keeps for its own
// experts is a local copy and counted apart. The counts exchange is not included.
typedef struct {
    size_t bytes_sent, bytes_recv;       // dispatch + combine, other ranks only
    size_t dispatch_sent, dispatch_recv; // of which dispatch (rows + 8 bytes per pair)
    size_t bytes_local;                  // dispatch + combine bytes kept on this rank
    int64_t rows_sent, rows_recv;        // token rows dispatched to / received from other ranks
    int64_t pairs_home, pairs_owned;     // (token, expert) pairs: of this rank's tokens (n * k),
                                         // and computed here (M, all sources)
} moe_traffic;

// Owns every buffer of the exchange; they grow to the largest step seen and are reused across
// steps and layers (one exchange can serve all layers: a layer's xe is dead after its combine).
moe_exchange *moe_exchange_new(const expert_placement *p, int rank, int d);
void moe_exchange_free(moe_exchange *ex);

// Home side planning, exposed for tests and statistics: counts rows and (token, expert)
// pairs per destination rank (rows_to[P], pairs_to[P]) and checks the expert lists.
// 0, or -1 with err for ids out of range or not strictly ascending. Local, not collective.
int moe_dispatch_plan(const expert_placement *p, const int32_t *expert, int n, int k,
                      int64_t *rows_to, int64_t *pairs_to, llamoe_err *err);

// Collective. x[n, d], expert[n, k]. On return (0), *xe [*n_rows, d] and *offsets
// [n_local + 1] (rows of local expert i are offsets[i] .. offsets[i+1]) stay valid until the
// next dispatch on this exchange. -1 with err on every rank if any rank's input was invalid
// (bad expert ids, or a d or E that differs between ranks): no rank is left waiting.
int moe_dispatch(moe_exchange *ex, comm *c, const float *x, int n, const int32_t *expert, int k,
                 const float **xe, const int64_t **offsets, int64_t *n_rows, llamoe_err *err);

// Collective, after moe_dispatch. ye [n_rows, d] in the order of xe (may be xe itself);
// fills y_pairs [n * k, d] of the last dispatch. 0, or -1 with err.
int moe_combine(moe_exchange *ex, comm *c, const float *ye, float *y_pairs, llamoe_err *err);

void moe_exchange_traffic(const moe_exchange *ex, moe_traffic *t);
