// The forward pass over a batch of tokens from any number of sequences, with a KV cache
// per sequence slot. Prefill (many tokens of one sequence), decode (one token of each of
// many sequences) and anything between go through the same call.
#pragma once
#include "runtime/model.h"
#include "runtime/moe.h"

typedef struct {
    double total, attention, ffn, lm_head;   // seconds of backend work, accumulated (MoE parts
                                             // in moe.stats)
} forward_timings;

typedef struct {
    int max_tokens;            // per forward call
    int n_slots, ctx;          // KV cache: n_slots sequences of up to ctx positions
    // The MoE exchange: its kind, and the tokens per rank its fixed plan holds (the same on
    // every rank; 0: the counts plan always).
    moe_exchange_kind moe_exchange;
    int moe_capacity;
} run_options;

typedef struct {
    int max_tokens;            // per forward call
    int n_slots, ctx;          // KV cache: n_slots sequences of up to ctx positions
    int64_t slot_stride;       // ctx * kv_dim
    float *x, *xn, *q, *k, *v, *att, *gate, *up, *ffn_out;
    int32_t *logit_rows;       // [max_tokens] backend copy of the rows that get logits
    float **k_cache, **v_cache;   // [n_layers][n_slots * slot_stride]
    moe_state moe;             // only for MoE models
    // Called after every layer's FFN with its input (normalised) and output, or NULL.
    // For tests and tracing: the parity test checks each layer against the dense FFN here.
    void (*ffn_hook)(void *ctx, int layer, const float *xn, const float *ffn_out, int n);
    void *ffn_hook_ctx;
    int step_hint;             // forward_step_hint was called for the next forward
    backend_mark *marks;       // [3 * n_layers + 3] phase boundaries of one forward call
    forward_timings time;
    size_t bytes;              // activation + KV cache memory
} run_state;

// Dies with the sizes when the KV cache or the activations do not fit.
void run_state_init(run_state *s, const model *m, const run_options *o);
void run_state_free(run_state *s, const model *m);

// Before a forward call that all ranks make together: the most tokens any rank has in it and
// whether every rank only decodes (agreed over the ranks; the MoE layers choose their exchange
// plan from it). Without it, a call uses the counts plan.
void forward_step_hint(run_state *s, int max_tokens_any, int decode_only);

// Runs tokens[i] of sequence slot[i] at position pos[i] through the model (every token's
// K/V goes into the cache first, so several tokens of one sequence may come in one call).
// logits[j, :] (backend memory) receives the logits of token logit_rows[j] for j < n_logits.
// Collective for MoE models: every rank calls it each step, with n = 0 if idle.
// tokens, slot, pos and logit_rows are host arrays.
void forward(const model *m, run_state *s, comm *c, const int32_t *tokens, const int32_t *slot,
             const int32_t *pos, int n, const int32_t *logit_rows, int n_logits, float *logits);
