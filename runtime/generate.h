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
    // Sampling and stopping, from gen_options at sequence_init; a server sets its own per
    // request before the first step.
    int max_new;
    float temperature, top_p;
    int32_t end_token;         // ends the sequence besides the config's eos ids (<|eot_id|> of a
                               // chat turn), or -1
    int ignore_eos;            // run to max_new or the context, whatever the config's eos ids
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

// ---------------------------------------------------------------------------- one step
// The step both generate() and the serving engine (runtime/engine.h) run: a batch of tokens of
// this rank's sequences through one forward call, then a new token for every sequence whose
// next token the batch predicts. Who joins the batch is the caller's choice.
typedef struct {
    int max_tokens;            // per step (the run state's max_tokens)
    int n, n_prompt_tokens;    // tokens in the batch; of those, prompt tokens
    int32_t *tokens, *slot, *pos;
    int n_logits;              // sequences that get a new token from this step
    int32_t *logit_rows;       // [n_logits] the batch row predicting it
    sequence **logit_seq;      // [n_logits]
    prob_index *probs;         // sampling scratch [vocab]
    float *logits, *host_logits;   // backend [max_tokens, vocab]; host copy on device backends
} step_batch;

void step_batch_init(step_batch *b, const model *m, int max_tokens);
void step_batch_free(step_batch *b, const model *m);
void step_batch_clear(step_batch *b);
// Adds q's next tokens: its last generated token when it is decoding, else up to room tokens
// of its prompt (a chunk; the last one asks for a logits row). Returns the tokens added.
int step_batch_add(step_batch *b, sequence *q, int room);
// Runs the batch (collective for MoE models: every rank calls it, n = 0 when idle), samples
// each logit_seq sequence's next token and marks its stop. max_tokens_any and decode_only
// describe the step over all ranks (forward_step_hint: the MoE exchange's plan follows them;
// every rank must pass the same). o->dump_logits and o->on_token apply to the sequence with
// index 0; o may be NULL.
int step_run(const model *m, run_state *s, comm *c, step_batch *b, int max_tokens_any, int decode_only,
             const gen_options *o, llamoe_err *err);

