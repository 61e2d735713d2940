// The run report (report.h): gathering over ranks, then text or JSON on rank 0.
#include "runtime/report.h"

#include <json-c/json.h>
#include <math.h>
#include <string.h>
#include <sys/resource.h>

#include "parallel/balance.h"
#include "runtime/placement_io.h"

static const char *const report_names[REPORT_N] = {"attention_s", "router_s", "dispatch_s", "experts_s",
    "combine_s", "dense_ffn_s", "lm_head_s", "other_s", "forward_s", "bytes_sent", "bytes_recv",
    "dispatch_bytes_sent", "rows_sent", "rows_recv", "expert_weights_mb"};

static const char *const cache_names[CACHE_N] = {"lookups", "hits", "prefetch_hits", "misses", "prefetches",
    "prefetch_wasted", "evictions", "groups", "bytes_moved", "bytes_prefetched", "bytes_released",
    "demand_copy_ns", "prefetch_copy_ns", "slots"};

static void check(int rc) { if (rc != 0) die("gathering the results over the ranks failed"); }

// ---------------------------------------------------------------------------- gathering
// Every sequence's ids to rank 0 as [index, stop, n, ids...] records.
static void gather_sequences(run_report *r, comm *c, const sequence *seqs, int n_local) {
    int P = c->size;
    int64_t mine = 0;
    for (int j = 0; j < n_local; j++) mine += 3 + seqs[j].n_out;
    int32_t *send = xmalloc((size_t)(mine ? mine : 1) * sizeof(int32_t)), *w = send;
    for (int j = 0; j < n_local; j++) {
        *w++ = seqs[j].index;
        *w++ = (int32_t)seqs[j].stop;
        *w++ = seqs[j].n_out;
        memcpy(w, seqs[j].out, (size_t)seqs[j].n_out * sizeof(int32_t));
        w += seqs[j].n_out;
    }
    int64_t *send_counts = xcalloc((size_t)P, sizeof(int64_t)), *recv_counts = xcalloc((size_t)P, sizeof(int64_t));
    send_counts[0] = mine;
    check(c->exchange_counts(c, send_counts, recv_counts, 1));
    size_t *sb = xcalloc((size_t)P, sizeof(size_t)), *sd = xcalloc((size_t)P, sizeof(size_t)),
           *rb = xcalloc((size_t)P, sizeof(size_t)), *rd = xcalloc((size_t)P, sizeof(size_t));
    size_t total = 0;
    sb[0] = (size_t)mine * sizeof(int32_t);
    for (int p = 0; p < P; p++) {
        rb[p] = (size_t)recv_counts[p] * sizeof(int32_t);
        rd[p] = total;
        total += rb[p];
    }
    r->records = xmalloc(total ? total : 1);
    check(c->alltoallv(c, send, sb, sd, r->records, rb, rd));
    if (c->rank == 0) {
        r->ids = xcalloc((size_t)r->n_prompts, sizeof(int32_t *));
        r->n_ids = xcalloc((size_t)r->n_prompts, sizeof(int));
        r->stop = xcalloc((size_t)r->n_prompts, sizeof(int));
        for (size_t off = 0; off < total / sizeof(int32_t);) {
            int32_t idx = r->records[off];
            r->stop[idx] = r->records[off + 1];
            r->n_ids[idx] = r->records[off + 2];
            r->ids[idx] = r->records + off + 3;
            off += 3 + (size_t)r->n_ids[idx];
        }
    }
    free(send); free(send_counts); free(recv_counts); free(sb); free(sd); free(rb); free(rd);
}

// max, mean and min over ranks of this rank's values
static void over_ranks(run_report *r, comm *c, const double *mine) {
    double neg[REPORT_N];
    int64_t sum[REPORT_N];
    for (int i = 0; i < REPORT_N; i++) {
        r->max[i] = mine[i];
        neg[i] = -mine[i];
        sum[i] = llround(mine[i] * 1e9);   // seconds as ns, bytes x 1e9: exact enough
    }
    check(c->allreduce_max_f64(c, r->max, REPORT_N));
    check(c->allreduce_max_f64(c, neg, REPORT_N));
    check(c->allreduce_sum_i64(c, sum, REPORT_N));
    for (int i = 0; i < REPORT_N; i++) {
        r->min[i] = -neg[i];
        r->mean[i] = sum[i] / 1e9 / c->size;
    }
}

// Each rank's expert load per layer (the pairs every rank sent it), per layer-step the most
// and the sum over ranks, and the rebalancing counters.
static void gather_balance(run_report *r, comm *c, const model *m, const moe_stats *st) {
    int L = m->cfg.n_layers, P = c->size;
    r->rank_pairs = xmalloc((size_t)L * P * sizeof(int64_t));
    memcpy(r->rank_pairs, st->pairs_to, (size_t)L * P * sizeof(int64_t));
    check(c->allreduce_sum_i64(c, r->rank_pairs, L * P));
    r->n_steps = st->n_steps;
    size_t n = (size_t)st->n_steps * L;
    r->step_max = xmalloc((n ? n : 1) * sizeof(double));
    r->step_sum = xmalloc((n ? n : 1) * sizeof(int64_t));
    for (size_t i = 0; i < n; i++) {
        r->step_max[i] = (double)st->step_pairs[i];
        r->step_sum[i] = st->step_pairs[i];
    }
    if (n) {
        check(c->allreduce_max_f64(c, r->step_max, (int)n));
        check(c->allreduce_sum_i64(c, r->step_sum, (int)n));
    }
    const moe_rebalance_stats *b = &st->rebalance;
    int64_t v[7] = {b->rebalances, b->layers_changed, b->experts_moved, b->experts_checked, (int64_t)b->bytes_sent,
                    (int64_t)b->bytes_recv, (int64_t)b->bytes_local};
    check(c->allreduce_sum_i64(c, v, 7));
    double seconds = b->seconds;
    check(c->allreduce_max_f64(c, &seconds, 1));
    // Every rank counts each rebalance and changed layer once: the job's are one rank's.
    r->rebalance = (moe_rebalance_stats){.rebalances = v[0] / P, .layers_changed = v[1] / P, .experts_moved = v[2],
                                         .experts_checked = v[3], .bytes_sent = (size_t)v[4], .bytes_recv = (size_t)v[5],
                                         .bytes_local = (size_t)v[6], .seconds = seconds};
}

void report_gather(run_report *r, comm *c, const model *m, run_state *rs, const sequence *seqs, int n_local,
                   int n_prompts, const gen_stats *gs, expert_cache *cache, double load_s) {
    memset(r, 0, sizeof *r);
    r->n_prompts = n_prompts;
    r->gen = *gs;
    r->load_s = load_s;
    gather_sequences(r, c, seqs, n_local);

    // Peak resident memory of the largest rank (mmapped weight pages count once touched).
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    r->peak_rss_mb = ru.ru_maxrss / 1024.0;
    check(c->allreduce_max_f64(c, &r->peak_rss_mb, 1));

    int is_moe = m->moe.kind != MOE_DENSE, P = c->size;
    double mine[REPORT_N] = {0};
    const forward_timings *t = &rs->time;
    mine[REPORT_ATTENTION] = t->attention;
    mine[REPORT_LM_HEAD] = t->lm_head;
    mine[REPORT_FORWARD] = t->total;
    mine[REPORT_EXPERT_MB] = m->expert_bytes / 1048576.0;
    if (!is_moe) {
        mine[REPORT_DENSE_FFN] = t->ffn;
        mine[REPORT_OTHER] = t->total - t->attention - t->ffn - t->lm_head;
    } else {
        moe_state *ms = &rs->moe;
        moe_stats_fetch(ms);
        const moe_stats *st = &ms->stats;
        double moe_s = st->t_router + st->t_dispatch + st->t_experts + st->t_combine;
        mine[REPORT_ROUTER] = st->t_router;
        mine[REPORT_DISPATCH] = st->t_dispatch;
        mine[REPORT_EXPERTS] = st->t_experts;
        mine[REPORT_COMBINE] = st->t_combine;
        mine[REPORT_OTHER] = t->total - t->attention - moe_s - t->lm_head;
        mine[REPORT_BYTES_SENT] = (double)(st->traffic.dispatch_sent + st->traffic.combine_sent);
        mine[REPORT_BYTES_RECV] = (double)(st->traffic.dispatch_recv + st->traffic.combine_recv);
        mine[REPORT_DISPATCH_SENT] = (double)st->traffic.dispatch_sent;
        // Rows: what this rank sent to others, and (from every rank's) what it received.
        int64_t *rows = xcalloc((size_t)P * P, sizeof(int64_t));
        for (int q = 0; q < P; q++) {
            rows[(size_t)c->rank * P + q] = q == c->rank ? 0 : st->rows_to[q];
            mine[REPORT_ROWS_SENT] += (double)rows[(size_t)c->rank * P + q];
        }
        check(c->allreduce_sum_i64(c, rows, P * P));
        for (int s = 0; s < P; s++) mine[REPORT_ROWS_RECV] += (double)rows[(size_t)s * P + c->rank];
        free(rows);
        int LE = m->cfg.n_layers * m->moe.n_experts;
        r->tokens_per_expert = xmalloc((size_t)LE * sizeof(int64_t));
        memcpy(r->tokens_per_expert, st->tokens_per_expert, (size_t)LE * sizeof(int64_t));
        int64_t bytes[2] = {(int64_t)mine[REPORT_BYTES_SENT], (int64_t)mine[REPORT_BYTES_RECV]};
        check(c->allreduce_sum_i64(c, r->tokens_per_expert, LE));
        check(c->allreduce_sum_i64(c, bytes, 2));
        r->bytes_sent = bytes[0];
        r->bytes_recv = bytes[1];
        gather_balance(r, c, m, st);
    }
    over_ranks(r, c, mine);

    if (cache) {
        expert_cache_stats es;
        expert_cache_get_stats(cache, &es);
        int64_t v[CACHE_N] = {es.lookups, es.hits, es.prefetch_hits, es.misses, es.prefetches, es.prefetch_wasted,
                              es.evictions, es.groups, (int64_t)es.bytes_moved, (int64_t)es.bytes_prefetched,
                              (int64_t)es.bytes_released, llround(es.t_demand * 1e9), llround(es.t_prefetch * 1e9),
                              expert_cache_slots(cache)};
        memcpy(r->cache, v, sizeof v);
        check(c->allreduce_sum_i64(c, r->cache, CACHE_N));
        r->has_cache = 1;
        r->cache_policy = expert_cache_policy(cache);
    }
}

void report_free(run_report *r) {
    free(r->ids);
    free(r->n_ids);
    free(r->stop);
    free(r->records);
    free(r->tokens_per_expert);
    free(r->rank_pairs);
    free(r->step_max);
    free(r->step_sum);
    memset(r, 0, sizeof *r);
}

// ---------------------------------------------------------------------------- printing
static const char *stop_name(stop_reason s) {
    switch (s) {
    case STOP_EOS: return "eos";
    case STOP_LENGTH: return "length";
    case STOP_CONTEXT: return "context";
    case STOP_NONE: break;
    }
    return "none";
}

static json_object *ids_json(const int32_t *ids, int n) {
    json_object *a = json_object_new_array_ext(n);
    for (int i = 0; i < n; i++) json_object_array_add(a, json_object_new_int(ids[i]));
    return a;
}

// max / mean over a layer's experts of the tokens they got
static double layer_imbalance(const int64_t *t, int E) {
    int64_t sum = 0, max = 0;
    for (int e = 0; e < E; e++) {
        sum += t[e];
        if (t[e] > max) max = t[e];
    }
    return sum ? (double)max * E / (double)sum : 0.0;
}

// Balance of layer l over the ranks: over the run (max / mean of the pairs each rank's
// experts computed), and step by step (the sum over measured steps of the busiest rank's
// pairs over the sum of the mean's: how much longer than balanced the slowest rank kept
// every step waiting), and the worst single step.
typedef struct { double run, steps, worst_step; int measured; } layer_balance;

static layer_balance balance_of(const run_report *r, int l, int L, int P) {
    layer_balance b = {0};
    int64_t sum = 0, max = 0;
    for (int q = 0; q < P; q++) {
        int64_t v = r->rank_pairs[(size_t)l * P + q];
        sum += v;
        max = v > max ? v : max;
    }
    b.run = sum ? (double)max * P / (double)sum : 0;
    double steps_max = 0, steps_mean = 0;
    for (int i = 0; i < r->n_steps; i++) {
        double mx = r->step_max[(size_t)i * L + l];
        int64_t sm = r->step_sum[(size_t)i * L + l];
        if (mx < 0 || sm <= 0) continue;
        b.measured++;
        steps_max += mx;
        steps_mean += (double)sm / P;
        double one = mx * P / (double)sm;
        b.worst_step = one > b.worst_step ? one : b.worst_step;
    }
    b.steps = steps_mean > 0 ? steps_max / steps_mean : 0;
    return b;
}

static double hit_rate(const run_report *r, int with_prefetch) {
    int64_t n = r->cache[CACHE_LOOKUPS];
    return n ? (double)(r->cache[CACHE_HITS] + (with_prefetch ? r->cache[CACHE_PREFETCH_HITS] : 0)) / n : 0;
}

static void print_json(const run_report *r, const report_context *x) {
    const model *m = x->m;
    const ep_options *o = x->o;
    char mb[64];
    llamoe_err err;
    json_object *root = json_object_new_object();
    json_object_object_add(root, "model", json_object_new_string(o->model_dir));
    json_object_object_add(root, "moe", json_object_new_string(moe_mode_str(&m->moe, mb, sizeof mb)));
    json_object_object_add(root, "ranks", json_object_new_int(x->c->size));
    json_object_object_add(root, "backend", json_object_new_string(x->be->name));
    json_object_object_add(root, "transport", json_object_new_string(x->c->name));
    if (x->device) {
        json_object_object_add(root, "device", json_object_new_string(x->device));
        json_object_object_add(root, "device_peak_bandwidth_gbs", json_object_new_double(x->device_bandwidth_gbs));
    }
    json_object *results = json_object_new_array();
    for (int i = 0; i < r->n_prompts; i++) {
        json_object *j = json_object_new_object();
        json_object_object_add(j, "prompt_ids", ids_json(x->prompts[i].ids, x->prompts[i].n));
        json_object_object_add(j, "generated_ids", ids_json(r->ids[i], r->n_ids[i]));
        json_object_object_add(j, "stop", json_object_new_string(stop_name((stop_reason)r->stop[i])));
        char *text;
        size_t len;
        if (x->tok && tokenizer_decode(x->tok, r->ids[i], r->n_ids[i], &text, &len, &err) == 0) {
            json_object_object_add(j, "text", json_object_new_string_len(text, (int)len));
            free(text);
        }
        if (r->n_prompts == 1) {   // a single prompt's fields sit at the top level
            json_object_object_foreach(j, key, val) json_object_object_add(root, key, json_object_get(val));
            json_object_put(j);
        } else {
            json_object_array_add(results, j);
        }
    }
    if (r->n_prompts > 1) json_object_object_add(root, "results", results);
    else json_object_put(results);
    const gen_stats *g = &r->gen;
    json_object *t = json_object_new_object();
    json_object_object_add(t, "load_s", json_object_new_double(r->load_s));
    json_object_object_add(t, "prefill_s", json_object_new_double(g->prefill_s));
    json_object_object_add(t, "decode_s", json_object_new_double(g->decode_s));
    json_object_object_add(t, "prefill_tokens", json_object_new_int64(g->prefill_tokens));
    json_object_object_add(t, "decode_tokens", json_object_new_int64(g->decode_tokens));
    json_object_object_add(t, "steps", json_object_new_int(g->steps));
    json_object_object_add(t, "prefill_tok_s", json_object_new_double(g->prefill_s > 0 ? g->prefill_tokens / g->prefill_s : 0));
    json_object_object_add(t, "decode_tok_s", json_object_new_double(g->decode_s > 0 ? g->decode_tokens / g->decode_s : 0));
    json_object_object_add(t, "peak_rss_mb_max_rank", json_object_new_double(r->peak_rss_mb));
    json_object_object_add(root, "timings", t);
    if (m->moe.kind != MOE_DENSE) {
        json_object_object_add(root, "bytes_sent", json_object_new_int64(r->bytes_sent));
        json_object_object_add(root, "bytes_recv", json_object_new_int64(r->bytes_recv));
    }
    json_object *bmax = json_object_new_object(), *bmean = json_object_new_object(), *bmin = json_object_new_object();
    for (int i = 0; i < REPORT_N; i++) {
        json_object_object_add(bmax, report_names[i], json_object_new_double(r->max[i]));
        json_object_object_add(bmin, report_names[i], json_object_new_double(r->min[i]));
        json_object_object_add(bmean, report_names[i], json_object_new_double(r->mean[i]));
    }
    json_object_object_add(root, "per_rank_max", bmax);
    json_object_object_add(root, "per_rank_mean", bmean);
    json_object_object_add(root, "per_rank_min", bmin);
    if (r->has_cache) {
        json_object *ej = json_object_new_object();
        json_object_object_add(ej, "budget_mib_per_rank", json_object_new_double(o->expert_budget_mib));
        json_object_object_add(ej, "slot_mib", json_object_new_double(expert_cache_slot_bytes(m) / 1048576.0));
        json_object_object_add(ej, "evict", json_object_new_string(expert_evict_name(r->cache_policy)));
        json_object_object_add(ej, "prefetch", json_object_new_string(expert_prefetch_name(o->prefetch)));
        for (int i = 0; i < CACHE_N; i++) json_object_object_add(ej, cache_names[i], json_object_new_int64(r->cache[i]));
        json_object_object_add(ej, "hit_rate", json_object_new_double(hit_rate(r, 0)));
        json_object_object_add(ej, "hit_rate_with_prefetch", json_object_new_double(hit_rate(r, 1)));
        json_object_object_add(root, "expert_cache", ej);
    }
    if (r->rank_pairs) {
        int L = m->cfg.n_layers, P = x->c->size;
        json_object *bj = json_object_new_object(), *layers = json_object_new_array();
        double worst[2] = {0, 0}, mean[2] = {0, 0};
        for (int l = 0; l < L; l++) {
            layer_balance b = balance_of(r, l, L, P);
            json_object *lj = json_object_new_object(), *pairs = json_object_new_array();
            for (int q = 0; q < P; q++) json_object_array_add(pairs, json_object_new_int64(r->rank_pairs[(size_t)l * P + q]));
            json_object_object_add(lj, "rank_pairs", pairs);
            json_object_object_add(lj, "imbalance", json_object_new_double(b.run));
            json_object_object_add(lj, "step_imbalance", json_object_new_double(b.steps));
            json_object_object_add(lj, "worst_step_imbalance", json_object_new_double(b.worst_step));
            json_object_object_add(lj, "steps_measured", json_object_new_int(b.measured));
            json_object_array_add(layers, lj);
            double v[2] = {b.run, b.steps};
            for (int i = 0; i < 2; i++) {
                worst[i] = v[i] > worst[i] ? v[i] : worst[i];
                mean[i] += v[i] / L;
            }
        }
        json_object_object_add(bj, "imbalance_worst_layer", json_object_new_double(worst[0]));
        json_object_object_add(bj, "imbalance_mean", json_object_new_double(mean[0]));
        json_object_object_add(bj, "step_imbalance_worst_layer", json_object_new_double(worst[1]));
        json_object_object_add(bj, "step_imbalance_mean", json_object_new_double(mean[1]));
        json_object_object_add(bj, "layers", layers);
        json_object_object_add(root, "balance", bj);
        json_object *pj = placement_to_json(&m->placement, &m->cfg);
        json_object_object_add(pj, "policy", json_object_new_string(o->placement ? o->placement : "contiguous"));
        json_object_object_add(root, "placement", pj);
        if (o->rebalance) {
            const moe_rebalance_stats *b = &r->rebalance;
            json_object *rj = json_object_new_object();
            json_object_object_add(rj, "every_steps", json_object_new_int(o->rebalance));
            json_object_object_add(rj, "rebalances", json_object_new_int64(b->rebalances));
            json_object_object_add(rj, "layers_changed", json_object_new_int64(b->layers_changed));
            json_object_object_add(rj, "experts_moved", json_object_new_int64(b->experts_moved));
            json_object_object_add(rj, "experts_checked", json_object_new_int64(b->experts_checked));
            json_object_object_add(rj, "bytes_sent", json_object_new_int64((int64_t)b->bytes_sent));
            json_object_object_add(rj, "bytes_recv", json_object_new_int64((int64_t)b->bytes_recv));
            json_object_object_add(rj, "bytes_local", json_object_new_int64((int64_t)b->bytes_local));
            json_object_object_add(rj, "seconds_max_rank", json_object_new_double(b->seconds));
            json_object_object_add(root, "rebalance", rj);
        }
    }
    if (o->stats && r->tokens_per_expert) {
        int E = m->moe.n_experts;
        json_object *st = json_object_new_array();
        for (int l = 0; l < m->cfg.n_layers; l++) {
            json_object *a = json_object_new_array();
            for (int e = 0; e < E; e++) json_object_array_add(a, json_object_new_int64(r->tokens_per_expert[(size_t)l * E + e]));
            json_object_array_add(st, a);
        }
        json_object_object_add(root, "tokens_per_expert", st);
    }
    printf("%s\n", json_object_to_json_string_ext(root, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(root);
}

static void print_text(const run_report *r, const report_context *x) {
    const model *m = x->m;
    const ep_options *o = x->o;
    char mb[64];
    llamoe_err err;
    if (!x->streamed) {
        for (int i = 0; i < r->n_prompts; i++) {
            char *text;
            size_t len;
            printf("[%d] ", i + 1);
            if (x->tok && tokenizer_decode(x->tok, r->ids[i], r->n_ids[i], &text, &len, &err) == 0) {
                fwrite(text, 1, len, stdout);
                free(text);
            } else {
                for (int j = 0; j < r->n_ids[i]; j++) printf("%s%d", j ? " " : "", r->ids[i][j]);
            }
            printf("\n");
        }
    }
    const gen_stats *g = &r->gen;
    fprintf(stderr, "llamoe: %s, %d rank(s), %d prompt(s): load %.2f s; prefill %lld tok %.1f tok/s; decode %lld tok %.1f tok/s; peak RSS %.0f MiB\n",
            moe_mode_str(&m->moe, mb, sizeof mb), x->c->size, r->n_prompts, r->load_s, (long long)g->prefill_tokens,
            g->prefill_s > 0 ? g->prefill_tokens / g->prefill_s : 0.0, (long long)g->decode_tokens,
            g->decode_s > 0 ? g->decode_tokens / g->decode_s : 0.0, r->peak_rss_mb);
    if (r->tokens_per_expert) {
        // Routing and traffic in one line: how uneven the experts' loads were and what the
        // dispatch and combine moved between ranks.
        int E = m->moe.n_experts, L = m->cfg.n_layers;
        double worst = 0, mean = 0;
        for (int l = 0; l < L; l++) {
            double imb = layer_imbalance(r->tokens_per_expert + (size_t)l * E, E);
            worst = imb > worst ? imb : worst;
            mean += imb / L;
        }
        fprintf(stderr, "llamoe: routing %d experts top-%d: load imbalance (max/mean) %.2f mean over layers, %.2f worst; traffic %.1f KiB sent, %.1f KiB received between ranks\n",
                E, m->moe.top_k, mean, worst, r->bytes_sent / 1024.0, r->bytes_recv / 1024.0);
    }
    if (r->rank_pairs && (o->placement || o->rebalance || o->stats)) {
        int L = m->cfg.n_layers, P = x->c->size;
        double worst[2] = {0, 0}, mean[2] = {0, 0};
        for (int l = 0; l < L; l++) {
            layer_balance b = balance_of(r, l, L, P);
            double v[2] = {b.run, b.steps};
            for (int i = 0; i < 2; i++) {
                worst[i] = v[i] > worst[i] ? v[i] : worst[i];
                mean[i] += v[i] / L;
            }
        }
        fprintf(stderr, "llamoe: placement %s, %d redundant experts per layer: rank imbalance (max/mean pairs per rank) %.2f mean over layers, %.2f worst; step by step %.2f mean, %.2f worst\n",
                o->placement ? o->placement : "contiguous", placement_redundant(&m->placement), mean[0], worst[0], mean[1],
                worst[1]);
        if (o->rebalance) {
            const moe_rebalance_stats *b = &r->rebalance;
            fprintf(stderr, "llamoe: rebalanced every %d steps: %lld times, %lld layer placements changed, %lld experts moved (%.1f KiB between ranks, %.1f KiB local), %.3f s\n",
                    o->rebalance, (long long)b->rebalances, (long long)b->layers_changed, (long long)b->experts_moved,
                    b->bytes_sent / 1024.0, b->bytes_local / 1024.0, b->seconds);
        }
    }
    if (r->has_cache)
        fprintf(stderr, "llamoe: memory mode: %s MiB per rank (%lld slots over all ranks); %lld expert uses: hits %.1f%%, with prefetch (%s) %.1f%%; %.1f MiB copied, %lld evictions\n",
                o->expert_budget, (long long)r->cache[CACHE_SLOTS], (long long)r->cache[CACHE_LOOKUPS], 100 * hit_rate(r, 0),
                expert_prefetch_name(o->prefetch), 100 * hit_rate(r, 1), r->cache[CACHE_MOVED] / 1048576.0,
                (long long)r->cache[CACHE_EVICTIONS]);
}

static void print_stats(const run_report *r, const report_context *x, FILE *f) {
    int E = x->m->moe.n_experts, L = x->m->cfg.n_layers, P = x->c->size;
    fprintf(f, "tokens per expert (layer: e0 e1 ... | max/mean):\n");
    for (int l = 0; l < L; l++) {
        const int64_t *t = r->tokens_per_expert + (size_t)l * E;
        fprintf(f, "  %3d:", l);
        for (int e = 0; e < E; e++) fprintf(f, " %lld", (long long)t[e]);
        fprintf(f, " | %.2f\n", layer_imbalance(t, E));
    }
    fprintf(f, "pairs per rank (layer: r0 r1 ... | max/mean over the run, step by step, worst step):\n");
    for (int l = 0; l < L; l++) {
        layer_balance b = balance_of(r, l, L, P);
        fprintf(f, "  %3d:", l);
        for (int q = 0; q < P; q++) fprintf(f, " %lld", (long long)r->rank_pairs[(size_t)l * P + q]);
        fprintf(f, " | %.2f %.2f %.2f\n", b.run, b.steps, b.worst_step);
    }
}

void report_print_placement(const placement_table *t, const char *load_profile, const llama_config *c, FILE *f) {
    int E = t->n_logical, S = t->n_physical, P = t->n_ranks;
    expert_placement blocks;
    CHECK(placement_init(&blocks, S, P, NULL) == 0);
    int64_t *load = NULL;
    llamoe_err err;
    if (load_profile && load_profile_read(load_profile, c, E, &load, &err) != 0) die("%s", err.msg);
    placement_table flat;
    if (load && placement_table_contiguous(&flat, t->n_layers, E, P, &err) != 0) die("%s", err.msg);
    fprintf(f, "llamoe: placement of %d experts + %d copies on %d ranks (layer: rank: experts)%s\n", E, S - E, P,
            load ? "; imbalance on the load profile, contiguous -> this" : "");
    for (int l = 0; l < t->n_layers; l++) {
        fprintf(f, "  %3d:", l);
        for (int r = 0; r < P; r++) {
            fprintf(f, " %s", r ? "| " : "");
            for (int i = 0; i < placement_count(&blocks, r); i++)
                fprintf(f, "%s%d", i ? "," : "", placement_layer(t, l)[placement_first(&blocks, r) + i]);
        }
        if (load)
            fprintf(f, "   %.3f -> %.3f", balance_imbalance(placement_layer(&flat, l), load + (size_t)l * E, E, E, P),
                    balance_imbalance(placement_layer(t, l), load + (size_t)l * E, E, S, P));
        fprintf(f, "\n");
    }
    if (load) placement_table_free(&flat);
    free(load);
}

void report_print(const run_report *r, const report_context *x) {
    if (x->c->rank != 0) return;
    if (x->o->json) print_json(r, x);
    else print_text(r, x);
    if (x->o->stats && r->tokens_per_expert) print_stats(r, x, x->o->json ? stderr : stdout);
}
