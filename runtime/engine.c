// The continuous-batching engine (see engine.h): rank 0's plan of each step, its broadcast,
// every rank's part of the step, and the gather of the new tokens.
#include "runtime/engine.h"

#include <string.h>

// ---------------------------------------------------------------------------- the plan
// A plan travels as a header of two int64 (the body's length in int32 words, flags) and a
// body of int32 words:
//   n_events, events in the order they happened:
//     EV_JOIN seq n_prompt max_new end_token ignore_eos temperature top_p seed_lo seed_hi prompt...
//     EV_LEAVE seq
//   n_entries, entries (seq, n): feed n tokens of sequence seq (1 when it is decoding)
// Floats travel as their bits. A sequence handle is rank * kv_slots + slot.
enum { EV_JOIN = 1, EV_LEAVE = 2 };
enum { PLAN_IDLE = 1, PLAN_SHUTDOWN = 2 };
#define JOIN_WORDS 10   // EV_JOIN and its fields before the prompt

typedef struct {
    int used;
    int n_prompt, n_fed;
} slot_plan;   // rank 0's view of one KV slot of one rank

struct engine {
    const model *m;
    comm *c;
    engine_options o;
    int n_handles;                 // P * kv_slots
    run_state rs;
    step_batch batch;
    // This rank's KV slots.
    sequence *seqs;                // [kv_slots]
    int32_t **prompts;             // [kv_slots] owned copies
    uint8_t *active;               // [kv_slots]
    int *logit_entry;              // [step_tokens] plan entry of each logits row of the batch
    // Every rank: the last plan said idle, so the next header comes through bcast_idle.
    int idle;
    // Rank 0: every rank's slots, the running sequences in join order, the events to send.
    slot_plan *slots;              // [n_handles]
    int *running, n_running;       // handles
    int32_t *events;
    size_t n_event_words, events_cap;
    int n_events;
    int *expect_token;             // [n_handles] entry index -> 1 if it yields a token
    // The wire: the plan body, the gather, the tokens handed out.
    int32_t *body;
    size_t body_cap;
    int64_t *gather;
    size_t gather_cap;
    engine_token *out;
    int n_counters;                // layers * experts (MoE), appended to the gather
    int64_t *tokens_per_expert;    // rank 0: the sums over ranks
    int *rank_tokens;              // [P] scratch: tokens of each rank in this step
    engine_stats stats;
};

static void *grow(void *p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return p;
    size_t cap2 = *cap ? *cap : 64;
    while (cap2 < need) cap2 *= 2;
    p = xrealloc(p, cap2 * elem);
    *cap = cap2;
    return p;
}

static void event_words(engine *e, const int32_t *w, size_t n) {
    e->events = grow(e->events, &e->events_cap, e->n_event_words + n, sizeof *e->events);
    memcpy(e->events + e->n_event_words, w, n * sizeof *w);
    e->n_event_words += n;
}

static int32_t float_bits(float f) { int32_t i; memcpy(&i, &f, sizeof i); return i; }
static float bits_float(int32_t i) { float f; memcpy(&f, &i, sizeof f); return f; }

// ---------------------------------------------------------------------------- lifecycle
engine *engine_new(const model *m, comm *c, const engine_options *o) {
    CHECK(o->kv_slots >= 1 && o->ctx >= 1 && o->step_tokens >= 1);
    engine *e = xcalloc(1, sizeof *e);
    e->m = m;
    e->c = c;
    e->o = *o;
    e->n_handles = c->size * o->kv_slots;
    // The MoE exchange's fixed plan holds a decode step of a full rank (the same on every rank).
    run_state_init(&e->rs, m, &(run_options){.max_tokens = o->step_tokens, .n_slots = o->kv_slots, .ctx = o->ctx,
                                            .moe_exchange = MOE_EXCHANGE_AUTO, .moe_capacity = o->kv_slots});
    step_batch_init(&e->batch, m, o->step_tokens);
    e->seqs = xcalloc((size_t)o->kv_slots, sizeof *e->seqs);
    e->prompts = xcalloc((size_t)o->kv_slots, sizeof *e->prompts);
    e->active = xcalloc((size_t)o->kv_slots, 1);
    e->logit_entry = xcalloc((size_t)o->step_tokens, sizeof *e->logit_entry);
    e->slots = xcalloc((size_t)e->n_handles, sizeof *e->slots);
    e->running = xcalloc((size_t)e->n_handles, sizeof *e->running);
    e->expect_token = xcalloc((size_t)e->n_handles, sizeof *e->expect_token);
    e->out = xcalloc((size_t)e->n_handles, sizeof *e->out);
    e->rank_tokens = xcalloc((size_t)c->size, sizeof *e->rank_tokens);
    if (m->moe.kind != MOE_DENSE) {
        e->n_counters = m->cfg.n_layers * m->moe.n_experts;
        e->tokens_per_expert = xcalloc((size_t)e->n_counters, sizeof(int64_t));
    }
    return e;
}

void engine_free(engine *e) {
    if (!e) return;
    for (int i = 0; i < e->o.kv_slots; i++) {
        sequence_free(&e->seqs[i]);
        free(e->prompts[i]);
    }
    free(e->seqs); free(e->prompts); free(e->active); free(e->logit_entry);
    free(e->slots); free(e->running); free(e->expect_token); free(e->out); free(e->rank_tokens);
    free(e->events); free(e->body); free(e->gather); free(e->tokens_per_expert);
    step_batch_free(&e->batch, e->m);
    run_state_free(&e->rs, e->m);
    free(e);
}

// ---------------------------------------------------------------------------- rank 0: joins and leaves
int engine_free_slots(const engine *e) { return e->n_handles - e->n_running; }
int engine_running(const engine *e) { return e->n_running; }
const engine_stats *engine_get_stats(const engine *e) { return &e->stats; }
const int64_t *engine_tokens_per_expert(const engine *e) { return e->tokens_per_expert; }

int engine_join(engine *e, const int32_t *prompt, int n_prompt, const engine_request *r) {
    CHECK(e->c->rank == 0 && n_prompt >= 1 && n_prompt <= e->o.ctx && r->max_new >= 1);
    // The rank with the most free slots (the lowest on ties), its lowest free slot: sequences
    // spread over the ranks' attention.
    int best = -1, best_free = 0;
    for (int rank = 0; rank < e->c->size; rank++) {
        int n_free = 0;
        for (int s = 0; s < e->o.kv_slots; s++) n_free += !e->slots[rank * e->o.kv_slots + s].used;
        if (n_free > best_free) { best = rank; best_free = n_free; }
    }
    if (best < 0) return -1;
    int seq = best * e->o.kv_slots;
    while (e->slots[seq].used) seq++;
    e->slots[seq] = (slot_plan){.used = 1, .n_prompt = n_prompt};
    e->running[e->n_running++] = seq;
    int32_t w[JOIN_WORDS] = {EV_JOIN, seq, n_prompt, r->max_new, r->end_token, r->ignore_eos,
                             float_bits(r->temperature), float_bits(r->top_p),
                             (int32_t)(uint32_t)r->seed, (int32_t)(uint32_t)(r->seed >> 32)};
    event_words(e, w, JOIN_WORDS);
    event_words(e, prompt, (size_t)n_prompt);
    e->n_events++;
    return seq;
}

static void forget(engine *e, int seq) {
    e->slots[seq].used = 0;
    int j = 0;
    while (j < e->n_running && e->running[j] != seq) j++;
    CHECK(j < e->n_running);
    memmove(e->running + j, e->running + j + 1, (size_t)(e->n_running - j - 1) * sizeof *e->running);
    e->n_running--;
}

void engine_leave(engine *e, int seq) {
    CHECK(e->c->rank == 0 && seq >= 0 && seq < e->n_handles && e->slots[seq].used);
    forget(e, seq);
    int32_t w[2] = {EV_LEAVE, seq};
    event_words(e, w, 2);
    e->n_events++;
}

// Rank 0: the body of the next plan from the events and the running sequences. Each rank's
// budget goes to decode tokens first (in join order), then to prompt chunks.
static size_t build_plan(engine *e, int *n_entries) {
    int P = e->c->size, K = e->o.kv_slots;
    size_t need = 2 + e->n_event_words + 2 * (size_t)e->n_running;
    e->body = grow(e->body, &e->body_cap, need, sizeof *e->body);
    int32_t *w = e->body;
    size_t n = 0;
    w[n++] = e->n_events;
    if (e->n_event_words) memcpy(w + n, e->events, e->n_event_words * sizeof *w);
    n += e->n_event_words;
    e->n_events = 0;
    e->n_event_words = 0;

    size_t count_at = n++;
    int entries = 0, budget[P];
    for (int r = 0; r < P; r++) budget[r] = e->o.step_tokens;
    for (int pass = 0; pass < 2; pass++)
        for (int j = 0; j < e->n_running; j++) {
            int seq = e->running[j], rank = seq / K;
            slot_plan *s = &e->slots[seq];
            int decoding = s->n_fed == s->n_prompt;
            if (budget[rank] == 0 || decoding != (pass == 0)) continue;
            int take = decoding ? 1 : s->n_prompt - s->n_fed;
            if (take > budget[rank]) take = budget[rank];
            budget[rank] -= take;
            if (!decoding) s->n_fed += take;
            e->expect_token[entries++] = decoding || s->n_fed == s->n_prompt;
            w[n++] = seq;
            w[n++] = take;
            if (!decoding) e->stats.prefill_tokens += take;
            else e->stats.decode_tokens++;
            e->stats.last_step_tokens += take;
        }
    w[count_at] = entries;
    *n_entries = entries;
    return n;
}

// ---------------------------------------------------------------------------- every rank
// Applies the plan's events to this rank's slots; returns the index of the entry count.
static size_t apply_events(engine *e, const int32_t *w) {
    int K = e->o.kv_slots, me = e->c->rank;
    size_t i = 1;
    for (int k = 0; k < w[0]; k++) {
        int kind = w[i], seq = w[i + 1];
        if (kind == EV_LEAVE) {
            if (seq / K == me) e->active[seq % K] = 0;
            i += 2;
            continue;
        }
        CHECK(kind == EV_JOIN);
        int n_prompt = w[i + 2];
        if (seq / K == me) {
            int s = seq % K;
            sequence *q = &e->seqs[s];
            sequence_free(q);
            free(e->prompts[s]);
            e->prompts[s] = xmalloc((size_t)n_prompt * sizeof(int32_t));
            memcpy(e->prompts[s], w + i + JOIN_WORDS, (size_t)n_prompt * sizeof(int32_t));
            uint64_t seed = (uint64_t)(uint32_t)w[i + 8] | (uint64_t)(uint32_t)w[i + 9] << 32;
            gen_options go = {.max_new = w[i + 3], .temperature = bits_float(w[i + 6]),
                              .top_p = bits_float(w[i + 7]), .seed = seed};
            // Index 0: the sampling stream of llamoe-ep's first (or only) prompt.
            sequence_init(q, 0, e->prompts[s], n_prompt, s, &go);
            q->end_token = w[i + 4];
            q->ignore_eos = w[i + 5];
            e->active[s] = 1;
        }
        i += JOIN_WORDS + (size_t)n_prompt;
    }
    return i;
}

static int send_plan(engine *e, int64_t header[2], llamoe_err *err) {
    comm *c = e->c;
    int (*bcast)(comm *, void *, size_t, int) = e->idle && c->bcast_idle ? c->bcast_idle : c->bcast;
    if (bcast(c, header, 2 * sizeof(int64_t), 0) != 0) return fail(err, "broadcasting the step plan failed");
    size_t words = (size_t)header[0];
    if (c->rank != 0) e->body = grow(e->body, &e->body_cap, words, sizeof *e->body);
    if (words && c->bcast(c, e->body, words * sizeof(int32_t), 0) != 0)
        return fail(err, "broadcasting the step plan failed");
    e->idle = (header[1] & PLAN_IDLE) != 0;
    return 0;
}

int engine_step(engine *e, const engine_token **tokens, int *n_tokens, llamoe_err *err) {
    comm *c = e->c;
    int K = e->o.kv_slots, me = c->rank;
    *tokens = e->out;
    *n_tokens = 0;
    double t0 = now_seconds();
    int64_t header[2] = {0, 0};
    int n_plan_entries = 0;
    if (me == 0) {
        // Idle and already said so: nothing to tell the other ranks.
        if (e->n_running == 0 && e->n_events == 0 && e->idle) return ENGINE_IDLE;
        e->stats.last_step_tokens = 0;
        header[0] = (int64_t)build_plan(e, &n_plan_entries);
        header[1] = n_plan_entries == 0 ? PLAN_IDLE : 0;
    }
    if (send_plan(e, header, err) != 0) return -1;
    if (header[1] & PLAN_SHUTDOWN) return ENGINE_SHUTDOWN;
    size_t i = apply_events(e, e->body);
    if (header[1] & PLAN_IDLE) return ENGINE_IDLE;

    // This rank's part of the batch, in plan order: decode tokens, then prompt chunks.
    int n_entries = e->body[i++];
    const int32_t *entry = e->body + i;
    step_batch *b = &e->batch;
    step_batch_clear(b);
    for (int k = 0; k < n_entries; k++) {
        int seq = entry[2 * k], n = entry[2 * k + 1];
        if (seq / K != me) continue;
        sequence *q = &e->seqs[seq % K];
        CHECK(e->active[seq % K]);
        int had = b->n_logits;
        CHECK(step_batch_add(b, q, n) == n);
        if (b->n_logits > had) e->logit_entry[had] = k;
    }
    // The step's shape over all ranks, from the plan every rank holds: the most tokens of a
    // rank, and whether every entry is a single token (decode-like).
    int max_tokens_any = 0, decode_only = 1;
    int *per_rank = e->rank_tokens;
    memset(per_rank, 0, (size_t)c->size * sizeof *per_rank);
    for (int k = 0; k < n_entries; k++) {
        per_rank[entry[2 * k] / K] += entry[2 * k + 1];
        decode_only &= entry[2 * k + 1] == 1;
    }
    for (int r = 0; r < c->size; r++) max_tokens_any = per_rank[r] > max_tokens_any ? per_rank[r] : max_tokens_any;
    if (step_run(e->m, &e->rs, c, b, max_tokens_any, decode_only, NULL, err) != 0) return -1;

    // Gather: (token, stop) per entry, written by the entry's rank; the expert counters after.
    size_t len = 2 * (size_t)n_entries + (size_t)e->n_counters;
    e->gather = grow(e->gather, &e->gather_cap, len ? len : 1, sizeof *e->gather);
    memset(e->gather, 0, len * sizeof *e->gather);
    for (int j = 0; j < b->n_logits; j++) {
        sequence *q = b->logit_seq[j];
        int k = e->logit_entry[j];
        e->gather[2 * k] = q->out[q->n_out - 1];
        e->gather[2 * k + 1] = q->stop;
        if (q->stop != STOP_NONE) e->active[q->slot] = 0;
    }
    if (e->n_counters) {
        moe_stats_fetch(&e->rs.moe);   // tokens per expert since the start, on this rank
        memcpy(e->gather + 2 * n_entries, e->rs.moe.stats.tokens_per_expert, (size_t)e->n_counters * sizeof(int64_t));
    }
    if (c->allreduce_sum_i64(c, e->gather, (int)len) != 0) return fail(err, "gathering the step's tokens failed");
    if (me != 0) return ENGINE_STEPPED;

    int n_out = 0;
    for (int k = 0; k < n_entries; k++) {
        if (!e->expect_token[k]) continue;
        int seq = entry[2 * k];
        engine_token *t = &e->out[n_out++];
        *t = (engine_token){.seq = seq, .token = (int32_t)e->gather[2 * k], .stop = (stop_reason)e->gather[2 * k + 1]};
        if (t->stop != STOP_NONE) forget(e, seq);
    }
    if (e->n_counters) memcpy(e->tokens_per_expert, e->gather + 2 * n_entries, (size_t)e->n_counters * sizeof(int64_t));
    *n_tokens = n_out;
    e->stats.steps++;
    e->stats.last_step_s = now_seconds() - t0;
    e->stats.busy_s += e->stats.last_step_s;
    return ENGINE_STEPPED;
}

int engine_shutdown(engine *e, llamoe_err *err) {
    CHECK(e->c->rank == 0);
    int64_t header[2] = {0, PLAN_SHUTDOWN};
    return send_plan(e, header, err);
}
