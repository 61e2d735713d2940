// --moe MODE: how the dense FFN of every layer becomes a Mixture-of-Experts layer.
#pragma once
#include "base/common.h"

typedef enum {
    MOE_DENSE,        // the dense FFN, no experts: the baseline
    MOE_IDENTITY,     // E slices of the FFN, all active with weight exactly 1: equals dense
    MOE_UPCYCLE,      // E copies of the FFN, seeded random router, top-k: equals dense
    MOE_PRODUCTION,   // drop-upcycled copies, seeded random router, top-k: realistic routing
    MOE_CHECKPOINT,   // experts and router read from a Mixtral-layout checkpoint
} moe_kind;

typedef struct {
    moe_kind kind;
    int n_experts;    // E (0 for dense)
    int top_k;        // k (E for identity)
    float drop;       // production: fraction of each expert's neurons re-initialised
    uint64_t seed;    // router and drop initialisation
} moe_mode;

// Parses "dense", "identity:E", "upcycle:E:k", "production:E:k". Ranges that need the
// model (E <= FFN size) are checked by moe_mode_check.
int moe_mode_parse(const char *s, moe_mode *m, llamoe_err *err);
int moe_mode_check(const moe_mode *m, int ffn_size, llamoe_err *err);
// Writes the canonical spelling ("upcycle:8:2") into buf.
const char *moe_mode_str(const moe_mode *m, char *buf, size_t len);

// Memory mode (--expert-budget): how a rank's expert cache prefetches and evicts
// (runtime/expert_cache.c). Here with the other mode flags so that parsers need no runtime.
typedef enum {
    PREFETCH_NONE,        // fetch on demand, after the dispatch says which experts have rows
    PREFETCH_ROUTER,      // after layer l's router: this rank's own tokens' choices for layer l
                          // (exact on one rank; overlaps the dispatch all-to-all on a GPU)
    PREFETCH_PREV_LAYER,  // while layer l runs: layer l's experts, guessed for layer l + 1
    PREFETCH_PREV_TOKEN,  // while layer l runs: the experts layer l + 1 used in the last step
} expert_prefetch;

typedef enum {
    EVICT_LRU,            // one LRU list over all layers
    EVICT_LAYER_LRU,      // the pool split evenly between layers, LRU inside each share
} expert_evict;

int expert_prefetch_parse(const char *s, expert_prefetch *out);   // none|router|prev-layer|prev-token
const char *expert_prefetch_name(expert_prefetch p);
int expert_evict_parse(const char *s, expert_evict *out);         // lru|layer-lru
const char *expert_evict_name(expert_evict p);
