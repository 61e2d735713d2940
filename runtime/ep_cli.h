// llamoe-ep's command line and prompts file, parsed without exiting: llamoe-ep die()s with
// the message, the tests and the fuzzers (tests/fuzz/) call these directly.
#pragma once
#include "base/common.h"
#include "runtime/moe_mode.h"
#include "parallel/topology.h"
#include "runtime/tokenizer.h"

#define EP_DEFAULT_MODEL LLAMOE_SOURCE_DIR "/models/stories260k"
#define EP_DEFAULT_PROMPT "Once upon a time"
#define EP_MAX_PROMPTS (1 << 20)              // lines of a --prompts file
#define EP_MAX_PROMPTS_BYTES ((size_t)256 << 20)

typedef struct {
    const char *model_dir, *prompt_text, *prompt_ids, *prompts_file, *moe, *dump_logits;
    const char *backend_name, *transport;   // NULL: the default
    const char *moe_exchange;               // auto | counts | fixed (NULL: auto)
    int moe_capacity;                       // tokens per rank of the fixed exchange (0: the
                                            // most sequences any rank decodes)
    const char *expert_gemm;                // CUDA: grouped | loop | gemv (NULL: grouped)
    const char *expert_budget;              // as given, for messages; NULL: throughput mode
    double expert_budget_mib;
    expert_prefetch prefetch;
    expert_evict evict;
    int expert_madvise;
    // Expert placement (runtime/placement_io.h, runtime/rebalance.h)
    const char *placement;                  // contiguous | balanced | FILE (NULL: contiguous)
    int redundant_experts;                  // copies per layer besides the experts (balanced)
    const char *load_profile;               // measured load for --placement balanced
    const char *write_load_profile;         // written at the end: tokens per expert per layer
    int rebalance;                          // new placement every N steps (0: never)
    int rebalance_check;                    // compare every moved expert with the local build
    int n_new, ctx, step_tokens, threads, json, stats, verbose, chat, warmup;
    bind_mode bind;
    float temp, top_p, drop;
    uint64_t seed;
} ep_options;

// Fills o from argv (strings are not copied). Returns 0, 1 for -h/--help (nothing else
// checked after it), or -1 with a one-line message in err.
int ep_parse_args(int argc, char **argv, ep_options *o, llamoe_err *err);

typedef struct {
    int32_t *ids;   // owned
    int n;
} prompt;

// "1,403, 407" or "1 403 407" -> ids; -1 (and p empty) if the text is not a list of integers.
int parse_id_list(const char *s, prompt *p);

// Encodes text (wrapped in the Llama 3 chat header with chat) into p. what starts messages.
int prompt_encode(const tokenizer *tok, const char *text, int chat, prompt *p, const char *what,
                  llamoe_err *err);

// A --prompts file's text[0..len) (NUL-terminated at len, modified in place: lines are cut at
// '\n'): one prompt per non-blank line, ids or text (tok may be NULL for ids only). On success
// *out holds *n >= 1 prompts (free with prompts_free); on failure -1 with err naming the path
// and line.
int prompts_parse(const char *path, char *text, size_t len, const tokenizer *tok, int chat, prompt **out,
                  int *n, llamoe_err *err);
void prompts_free(prompt *ps, int n);
