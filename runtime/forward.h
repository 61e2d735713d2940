// The forward pass over a batch of tokens from any number of sequences, with a KV cache
// per sequence slot. Prefill (many tokens of one sequence), decode (one token of each of
// many sequences) and anything between go through the same call.
#pragma once
#include "runtime/model.h"
#include "runtime/moe.h"

typedef struct {
    double total, attention, ffn, lm_head;   // seconds, accumulated (MoE parts in moe.*)
} forward_timings;

typedef struct {
    int max_tokens;            // per forward call
    int n_slots, ctx;          // KV cache: n_slots sequences of up to ctx positions
    int64_t slot_stride;       // ctx * kv_dim
    float *x, *xn, *q, *k, *v, *att, *gate, *up, *ffn_out, *logits;
    float **k_cache, **v_cache;   // [n_layers][n_slots * slot_stride]
    moe_state moe;             // only for MoE models
    // Called after every layer's FFN with its input (normalised) and output, or NULL.
    // For tests and tracing: the parity test checks each layer against the dense FFN here.
    void (*ffn_hook)(void *ctx, int layer, const float *xn, const float *ffn_out, int n);
    void *ffn_hook_ctx;
    forward_timings time;
    size_t bytes;              // activation + KV cache memory
} run_state;

int run_state_init(run_state *s, const model *m, int max_tokens, int n_slots, int ctx);
void run_state_free(run_state *s, const model *m);

// Runs tokens[i] of sequence slot[i] at position pos[i] through the model (every token's
// K/V goes into the cache first, so several tokens of one sequence may come in one call).
// logits[j, :] receives the logits of token logit_rows[j] for j < n_logits.
// Collective for MoE models: every rank calls it each step, with n = 0 if idle.
int forward(const model *m, run_state *s, comm *c, const int32_t *tokens, const int32_t *slot,
            const int32_t *pos, int n, const int32_t *logit_rows, int n_logits, float *logits);
