// Expert-parallel load balancing: a layer's placement from its measured load, after
// DeepSeek's EPLB algorithm (replicate the heaviest experts, then pack the copies onto the
// ranks so that every rank carries the same load), per layer. The result is a row of a
// placement table (parallel/placement.h): the logical expert of each of the S = E + R slots,
// the slots placed on the P ranks in the usual blocks.
//
// Only integers and doubles in a fixed order: every rank computes the same table from the
// same loads, so the ranks never have to agree on it by communication.
#pragma once
#include "parallel/placement.h"

// The largest load (tokens per expert) the algorithm takes: products of a load and a copy
// count stay far inside int64.
#define BALANCE_MAX_LOAD ((int64_t)1 << 48)

// Fills logical[S] from load[E] (0 <= load <= BALANCE_MAX_LOAD):
//   1. replicate: S - E times, one more copy of the expert with the highest load per copy
//      (ties to the lower expert; at most one copy per rank);
//   2. pack: the copies by load per copy, heaviest first (ties to the lower expert), each to
//      the least-loaded rank with a free slot and no copy of that expert yet (ties to the
//      lower rank); then swaps of a copy on the
//      busiest rank with a lighter one elsewhere while they lower the busiest load (ranks
//      with one slot more than others end up with the light copies greedy packing leaves);
//   3. slots: with `previous`, each rank's new set of experts goes to the rank (with as many
//      slots) that held most of them, and an expert a rank held keeps its slot there (fewer
//      weights move); the others take the free slots in ascending expert order.
// previous: the layer's current row (S entries), or NULL.
void balance_layer(int32_t *logical, const int64_t *load, int E, int S, int P, const int32_t *previous);

// Every layer of t (allocated by the caller with its E, S and P) from load[n_layers * E];
// previous: the current table (the same shape) or NULL.
void balance_table(placement_table *t, const int64_t *load, const placement_table *previous);

// The load a layer row gives each rank (rank_load[P]), each expert's load split evenly over
// its copies, and max / mean of it (1: balanced; 0 when the load is all zero).
void balance_rank_loads(double *rank_load, const int32_t *logical, const int64_t *load, int E, int S, int P);
double balance_imbalance(const int32_t *logical, const int64_t *load, int E, int S, int P);
