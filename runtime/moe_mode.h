// --moe MODE: how the dense FFN of every layer becomes a Mixture-of-Experts layer.
#pragma once
#include "common.h"

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
