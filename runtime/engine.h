// The serving engine: continuous batching over the expert-parallel ranks. Sequences join and
// leave between steps; each step is one forward call on every rank over that rank's share of
// the batch. Attention is data-parallel (a sequence lives in one rank's KV cache, as with
// llamoe-ep --prompts), experts stay expert-parallel.
//
// Rank 0 plans every step: the sequences that joined (with their prompt and sampling) or left
// since the last one, and the tokens each rank feeds - decode tokens first, then prompt chunks
// while the rank's --step-tokens budget lasts. It broadcasts the plan; every rank runs its part
// with step_run (runtime/generate.h), samples its sequences' next tokens, and one allreduce
// brings them to rank 0. A sequence samples exactly as llamoe-ep's sequence index 0 with the
// same seed, and the CPU kernels are batch-invariant, so its tokens do not depend on what
// else is in the batch.
//
// Every call is made from the thread that owns the communicator (MPI from one thread only).
#pragma once
#include "runtime/generate.h"

typedef struct {
    int kv_slots;      // sequences per rank (KV cache slots)
    int ctx;           // positions per sequence: prompt plus generated tokens
    int step_tokens;   // most tokens one rank runs in one step
} engine_options;

// What a sequence asks for; rank 0 gives it, the rank holding the sequence samples with it.
typedef struct {
    int max_new;            // >= 1
    float temperature, top_p;
    uint64_t seed;          // llamoe-ep --seed: the stream of its sequence index 0
    int32_t end_token;      // an extra end token (<|eot_id|> of a chat turn), or -1
    int ignore_eos;         // run to max_new or the context
} engine_request;

// One new token of one sequence, as rank 0 receives it after a step.
typedef struct {
    int seq;                // the handle from engine_join
    int32_t token;
    stop_reason stop;       // not STOP_NONE: this was the last token, the sequence has left
} engine_token;

typedef struct {
    int64_t steps, prefill_tokens, decode_tokens;   // over all ranks
    double busy_s;          // wall time in steps
    double last_step_s;
    int last_step_tokens;
} engine_stats;

typedef enum { ENGINE_STEPPED = 0, ENGINE_IDLE = 1, ENGINE_SHUTDOWN = 2 } engine_status;

typedef struct engine engine;

// Every rank, with the same options: the run state (KV cache of kv_slots x ctx) and buffers.
engine *engine_new(const model *m, comm *c, const engine_options *o);
void engine_free(engine *e);

// One step. Collective. Rank 0 plans, broadcasts and runs it; the tokens of this step are in
// (*tokens)[0 .. *n_tokens) until the next call. Returns ENGINE_STEPPED; ENGINE_IDLE when no
// sequence is running (rank 0 then waits for a join before calling again; the other ranks wait
// in the next call without spinning); ENGINE_SHUTDOWN, on ranks other than 0, once rank 0
// called engine_shutdown; -1 with err on failure.
int engine_step(engine *e, const engine_token **tokens, int *n_tokens, llamoe_err *err);

// ---------------------------------------------------------------------------- rank 0
// Adds a sequence; it starts with the next step. The prompt is copied and must pass
// sequence_check for the engine's ctx. Returns its handle (>= 0), or -1 when every KV slot of
// every rank is taken.
int engine_join(engine *e, const int32_t *prompt, int n_prompt, const engine_request *r);
// Removes a running sequence (a cancelled request); its slot is free for the next join.
void engine_leave(engine *e, int seq);
int engine_free_slots(const engine *e);
int engine_running(const engine *e);
// Ends engine_step's loop on the other ranks. Collective (they are in engine_step).
int engine_shutdown(engine *e, llamoe_err *err);
const engine_stats *engine_get_stats(const engine *e);
// Tokens routed to each expert of each layer over all ranks since the start ([n_layers *
// n_experts]); NULL for a dense model.
const int64_t *engine_tokens_per_expert(const engine *e);
