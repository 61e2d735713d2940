// Memory mode: a per-rank cache of expert weights with a byte budget (--expert-budget).
//
// The experts of every layer stay in host memory (views into the mmapped checkpoint, or the
// buffers production mode builds at load); a pool of at most `budget` bytes on the backend
// holds the ones in use, packed (w1, w3, w2 of one expert per slot). Each MoE layer asks the
// cache for the experts that received rows in this step; misses are copied in through the
// backend's upload (synchronous on the CPU; a copy stream on a GPU through the optional
// upload_async / compute_wait / compute_fence / copy_wait hooks of kernels/backend.h).
// The experts are computed from the pool copies with the same kernel as in throughput mode,
// so logits do not change with the budget (bitwise on the CPU).
//
// Prefetch copies a layer's predicted experts before they are needed. On the CPU the copy is
// synchronous, so it only moves work; the counters say what an asynchronous copy would have
// hidden (a prefetch hit is a use served by a copy issued earlier, off the critical path).
#pragma once
#include "runtime/model.h"


typedef struct {
    size_t budget_bytes;      // pool size limit (per rank)
    expert_prefetch prefetch;
    expert_evict evict;
    int release_pages;        // CPU: madvise(MADV_DONTNEED) a file-backed source after its copy
    int any_expert;           // slots hold the largest expert of a layer, not only of this
                              // rank's: rebalancing may bring any expert here
} expert_cache_options;

typedef struct {
    int64_t lookups;          // (layer, expert) pairs with rows, over all steps
    int64_t hits;             // resident from an earlier step or an earlier demand fetch
    int64_t prefetch_hits;    // resident because a prefetch brought it (a GPU hides that copy)
    int64_t misses;           // demand fetches: a GPU would wait for these copies
    int64_t prefetches;       // prefetch copies issued
    int64_t prefetch_wasted;  // prefetched experts evicted before any use
    int64_t evictions;
    int64_t groups;           // expert_ffn calls (more than one per layer when the pool is too
                              // small for all of a layer's active experts at once)
    size_t bytes_moved;       // demand + prefetch copies
    size_t bytes_prefetched;
    size_t bytes_released;    // source pages handed back with MADV_DONTNEED
    double t_demand, t_prefetch;   // seconds spent copying (synchronous on the CPU)
} expert_cache_stats;

typedef struct expert_cache expert_cache;

// Bytes of the largest expert of this rank (w1 + w3 + w2, packed): one pool slot; with
// any_expert, of the largest expert of any layer.
size_t expert_cache_slot_bytes(const model *m);
size_t expert_cache_slot_bytes_any(const model *m);

// Builds the cache for m's local experts (m loaded with experts_on_host). NULL with err when
// the budget is below one expert or the pool cannot be allocated (err names both sizes).
expert_cache *expert_cache_new(const model *m, const expert_cache_options *o, llamoe_err *err);
void expert_cache_free(expert_cache *ec);

// The step hooks, in the order moe_forward calls them for layer l:
//   expert_cache_routed(ec, l, pairs)          after the route plan (pairs per expert [E]
//                                              of this rank's tokens)
//   expert_cache_begin(ec, l, offsets)         after the dispatch (rows per local expert)
//   while (expert_cache_next(ec, &set, &first)) be->expert_ffn(be, ye, xe, offsets + first, ...);
// Each expert_set covers local experts first .. first + set.n_experts - 1; every expert with
// rows in it is resident. Usually there is one group per layer; a pool too small for all of a
// layer's active experts at once gives several (results do not depend on the grouping).
void expert_cache_routed(expert_cache *ec, int l, const int32_t *pairs_per_expert);
void expert_cache_begin(expert_cache *ec, int l, const int64_t *offsets);
int expert_cache_next(expert_cache *ec, expert_set *set, int *first);

// Slot i of layer l now holds another expert (rebalancing): its pool copy, if any, is dropped
// and the next use fetches the new weights.
void expert_cache_reload(expert_cache *ec, int l, int i);

void expert_cache_get_stats(const expert_cache *ec, expert_cache_stats *s);
// Slots in the pool and the effective policy (LAYER_LRU falls back to LRU below one slot per
// layer).
int expert_cache_slots(const expert_cache *ec);
expert_evict expert_cache_policy(const expert_cache *ec);

