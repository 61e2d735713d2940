// Expert placement from files, chosen at start-up before any step runs:
//   - the load profile (JSON) that --write-load-profile writes at the end of a run and
//     --load-profile reads: tokens per logical expert per layer, with the model's shape;
//   - the placement table (JSON) that the report holds and --placement FILE reads;
//   - --placement contiguous | balanced | FILE with --redundant-experts R.
// A file that cannot be read, is malformed, was made for another model, or whose placement
// loses an expert is a one-line error naming the file and the field.
//
// Load profile:
//   {"format": "llamoe-load-profile", "model": DIR, "moe": "production:8:2",
//    "hidden_size": 64, "layers": 5, "experts": 8, "top_k": 2,
//    "tokens_per_expert": [[layer 0: E counts], ...]}
// Placement (slots of each rank in order; rank r has the r-th block of E + R slots):
//   {"format": "llamoe-placement", "hidden_size": 64, "layers": 5, "experts": 8, "ranks": 3,
//    "redundant": 3, "slots": [[[layer 0, rank 0: its experts], [rank 1: ...], ...], ...]}
#pragma once
#include "parallel/placement.h"
#include "runtime/config.h"

struct json_object;

typedef struct {
    const char *policy;         // "contiguous" (or NULL), "balanced", or a placement file
    int redundant;              // balanced: R copies per layer besides the E experts
    const char *load_profile;   // balanced: the measured load; NULL: the same for every expert
} placement_options;

// The placement a run starts with, for a model of config c with E experts per layer on P
// ranks: 0, or -1 with err.
int placement_choose(placement_table *t, const placement_options *o, const llama_config *c, int E, int P,
                     llamoe_err *err);

// tokens[c->n_layers * E] (owned by the caller) from a load profile made for this model.
int load_profile_read(const char *path, const llama_config *c, int E, int64_t **tokens, llamoe_err *err);
// Writes a load profile (atomically: the whole file or none). moe: the mode's spelling.
int load_profile_write(const char *path, const char *model_dir, const char *moe, const llama_config *c, int E,
                       int top_k, const int64_t *tokens, llamoe_err *err);

// The table in the placement file's format (for the report), and reading one back.
struct json_object *placement_to_json(const placement_table *t, const llama_config *c);
int placement_read(const char *path, const llama_config *c, int E, int P, placement_table *t, llamoe_err *err);
