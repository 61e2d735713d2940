// Generation: sequences, sampling, and the step loop that batches every sequence of this
// rank (prompt chunks and decode tokens together) and keeps all ranks in lockstep.
#pragma once
#include "runtime/forward.h"
#include "base/rng.h"

typedef enum { STOP_NONE, STOP_EOS, STOP_LENGTH, STOP_CONTEXT } stop_reason;

typedef struct {
    int index;                 // position in the user's input (global over ranks)
    const int32_t *prompt;     // not owned
    int n_prompt;
    int32_t *out;              // generated ids, owned, capacity max_new
    int n_out;
    int n_fed;                 // prompt tokens already through the model
    int slot;                  // KV cache slot on this rank
    stop_reason stop;
    rng_t rng;
} sequence;

typedef struct {
    int max_new;               // -n
    float temperature;         // 0: greedy
    float top_p;               // 1: off
    uint64_t seed;
    int step_tokens;           // most tokens in one forward call (prefill chunking)
    FILE *dump_logits;         // raw float32 rows of the sequence with index 0, or NULL
    // Called on each new token of the sequence with index 0 (streaming output), or NULL.
    void (*on_token)(void *ctx, int32_t token);
    void *on_token_ctx;
} gen_options;

typedef struct {
    double prefill_s, decode_s;       // wall time of steps with / without prompt tokens
    int64_t prefill_tokens, decode_tokens;
    int steps;
} gen_stats;

// Validates each prompt (ids in range, length within max_position_embeddings and ctx).
int sequence_check(const model *m, int ctx, const int32_t *prompt, int n_prompt, llamoe_err *err);
void sequence_init(sequence *q, int index, const int32_t *prompt, int n_prompt, int slot,
                   const gen_options *o);
void sequence_free(sequence *q);

// Runs every sequence to its stop. Collective: all ranks call it, even with n_seqs = 0.
int generate(const model *m, run_state *s, comm *c, sequence *seqs, int n_seqs,
             const gen_options *o, gen_stats *stats, llamoe_err *err);

// Picks the next token from one row of logits (greedy when temperature is 0; ties to the
// lower id). probs is scratch of vocab entries.
typedef struct { float p; int32_t i; } prob_index;
int32_t sample_token(const float *logits, int vocab, float temperature, float top_p, rng_t *rng,
                     prob_index *probs);
