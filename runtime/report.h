// The run report of llamoe-ep: every rank's generated ids and statistics, gathered on rank 0
// in input order, then printed as text or as one JSON object (the fields bench/ reads).
#pragma once
#include "parallel/comm.h"
#include "runtime/expert_cache.h"
#include "runtime/ep_cli.h"
#include "runtime/generate.h"
#include "runtime/tokenizer.h"

// Per-rank figures of the breakdown, as gathered (max, mean and min over ranks).
enum {
    REPORT_ATTENTION, REPORT_ROUTER, REPORT_DISPATCH, REPORT_EXPERTS, REPORT_COMBINE, REPORT_DENSE_FFN,
    REPORT_LM_HEAD, REPORT_OTHER, REPORT_FORWARD, REPORT_BYTES_SENT, REPORT_BYTES_RECV,
    REPORT_DISPATCH_SENT, REPORT_ROWS_SENT, REPORT_ROWS_RECV, REPORT_EXPERT_MB, REPORT_N
};

// Memory mode's counters, summed over ranks (copy times in ns).
enum {
    CACHE_LOOKUPS, CACHE_HITS, CACHE_PREFETCH_HITS, CACHE_MISSES, CACHE_PREFETCHES, CACHE_WASTED,
    CACHE_EVICTIONS, CACHE_GROUPS, CACHE_MOVED, CACHE_PREFETCHED, CACHE_RELEASED, CACHE_T_DEMAND,
    CACHE_T_PREFETCH, CACHE_SLOTS, CACHE_N
};

typedef struct {
    // rank 0: each prompt's generated ids (views into the gathered records) and stop reason
    int n_prompts;
    int32_t **ids;
    int *n_ids, *stop;
    int32_t *records;
    gen_stats gen;                  // this rank's (the ranks step together)
    double load_s, peak_rss_mb;     // load time; peak RSS of the largest rank
    double max[REPORT_N], mean[REPORT_N], min[REPORT_N];
    int64_t *tokens_per_expert;     // [layers * E] summed over ranks (MoE models)
    int64_t bytes_sent, bytes_recv; // summed over ranks
    int has_cache;
    expert_evict cache_policy;      // the effective eviction policy
    int64_t cache[CACHE_N];
    // Expert balance (MoE models): pairs each rank's experts computed per layer over the run
    // [layers * P], and per layer-step the most any rank computed and the sum over ranks
    // [n_steps * layers] (max < 0: a fixed-plan step, not measured).
    int64_t *rank_pairs;
    double *step_max;
    int64_t *step_sum;
    int n_steps;
    moe_rebalance_stats rebalance;  // counts and bytes summed over ranks, seconds the max
} run_report;

// Collective: every rank's sequences and statistics to rank 0. rs's MoE statistics are
// fetched from the backend here.
void report_gather(run_report *r, comm *c, const model *m, run_state *rs, const sequence *seqs, int n_local,
                   int n_prompts, const gen_stats *gs, expert_cache *cache, double load_s);
void report_free(run_report *r);

// Rank 0: the JSON object on stdout, or the texts (unless already streamed) on stdout and the
// summary lines on stderr; --stats adds tokens per expert.
typedef struct {
    const ep_options *o;
    const model *m;
    const backend *be;
    const comm *c;
    const tokenizer *tok;           // NULL: ids only
    const prompt *prompts;
    int streamed;                   // the single prompt's text went out as it was generated
    const char *device;             // the GPU, or NULL
    double device_bandwidth_gbs;
} report_context;
void report_print(const run_report *r, const report_context *x);

// The placement table, one line per layer and rank (--verbose); with a load profile, also
// the imbalance it gives each layer on that load, next to the contiguous placement's.
void report_print_placement(const placement_table *t, const char *load_profile, const llama_config *c, FILE *f);
