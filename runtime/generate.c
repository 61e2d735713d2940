// The step loop and sampling.
#include "runtime/generate.h"
#include "runtime/fault.h"

#include <errno.h>
#include <math.h>
#include <string.h>

// ---------------------------------------------------------------------------- sequences
int sequence_check(const model *m, int ctx, const int32_t *prompt, int n_prompt, llamoe_err *err) {
    const llama_config *c = &m->cfg;
    if (n_prompt < 1) return fail(err, "prompt: empty (no tokens, not even BOS)");
    if (n_prompt > c->max_position_embeddings)
        return fail(err, "prompt: %d tokens is longer than the model's max_position_embeddings %d (config.json)",
                    n_prompt, c->max_position_embeddings);
    if (n_prompt > ctx)
        return fail(err, "prompt: %d tokens is longer than the context of %d (--ctx)", n_prompt, ctx);
    for (int i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= c->vocab_size)
            return fail(err, "prompt: token id %d at position %d is out of range (vocab_size %d in config.json)",
                        prompt[i], i, c->vocab_size);
    return 0;
}

void sequence_init(sequence *q, int index, const int32_t *prompt, int n_prompt, int slot,
                   const gen_options *o) {
    memset(q, 0, sizeof *q);
    q->index = index;
    q->prompt = prompt;
    q->n_prompt = n_prompt;
    q->out = xmalloc((size_t)(o->max_new > 0 ? o->max_new : 1) * sizeof(int32_t));
    q->slot = slot;
    q->max_new = o->max_new;
    q->temperature = o->temperature;
    q->top_p = o->top_p;
    q->end_token = -1;
    // One stream per sequence, by its global index: results do not depend on the rank.
    q->rng.state = rng_derive(o->seed, 0x73616d706c65ull, (uint64_t)index);
    if (o->max_new == 0) q->stop = STOP_LENGTH;
}

void sequence_free(sequence *q) {
    free(q->out);
    q->out = NULL;
}

// ---------------------------------------------------------------------------- sampling
static int by_prob_desc(const void *a, const void *b) {
    const prob_index *x = a, *y = b;
    if (x->p != y->p) return x->p > y->p ? -1 : 1;
    return x->i - y->i;
}

int32_t sample_token(const float *logits, int vocab, float temperature, float top_p, rng_t *rng,
                     prob_index *probs) {
    if (temperature <= 0.0f) {
        int32_t best = 0;
        for (int i = 1; i < vocab; i++)
            if (logits[i] > logits[best]) best = i;
        return best;
    }
    float maxl = logits[0];
    for (int i = 1; i < vocab; i++) maxl = fmaxf(maxl, logits[i]);
    double sum = 0;
    for (int i = 0; i < vocab; i++) {
        probs[i] = (prob_index){expf((logits[i] - maxl) / temperature), i};
        sum += probs[i].p;
    }
    int n = vocab;
    if (top_p < 1.0f) {
        // Nucleus: the smallest set of most likely tokens whose mass reaches top_p.
        qsort(probs, (size_t)vocab, sizeof *probs, by_prob_desc);
        double cum = 0;
        for (n = 0; n < vocab;) {
            cum += probs[n++].p;
            if (cum >= top_p * sum) break;
        }
        sum = cum;
    }
    double r = rng_uniform(rng) * sum, acc = 0;
    for (int i = 0; i < n; i++) {
        acc += probs[i].p;
        if (r < acc) return probs[i].i;
    }
    return probs[n - 1].i;
}

// ---------------------------------------------------------------------------- one step
void step_batch_init(step_batch *b, const model *m, int max_tokens) {
    memset(b, 0, sizeof *b);
    size_t T = (size_t)max_tokens, V = (size_t)m->cfg.vocab_size;
    b->max_tokens = max_tokens;
    b->tokens = xmalloc(T * sizeof(int32_t));
    b->slot = xmalloc(T * sizeof(int32_t));
    b->pos = xmalloc(T * sizeof(int32_t));
    b->logit_rows = xmalloc(T * sizeof(int32_t));
    b->logit_seq = xmalloc(T * sizeof(sequence *));
    b->probs = xmalloc(V * sizeof(prob_index));
    b->logits = m->be->alloc(m->be, T * V * sizeof(float));
    if (m->be->device_memory) b->host_logits = xmalloc(T * V * sizeof(float));
}

void step_batch_free(step_batch *b, const model *m) {
    free(b->tokens); free(b->slot); free(b->pos); free(b->logit_rows); free(b->logit_seq); free(b->probs);
    free(b->host_logits);
    if (b->logits) m->be->free(m->be, b->logits);
    memset(b, 0, sizeof *b);
}

void step_batch_clear(step_batch *b) { b->n = b->n_prompt_tokens = b->n_logits = 0; }

int step_batch_add(step_batch *b, sequence *q, int room) {
    int n0 = b->n;
    if (room > b->max_tokens - b->n) room = b->max_tokens - b->n;
    if (q->stop != STOP_NONE || room <= 0) return 0;
    if (q->n_fed == q->n_prompt) {   // decoding: the last generated token
        b->tokens[b->n] = q->out[q->n_out - 1];
        b->slot[b->n] = q->slot;
        b->pos[b->n] = q->n_prompt + q->n_out - 1;
        b->logit_seq[b->n_logits] = q;
        b->logit_rows[b->n_logits++] = b->n++;
        return 1;
    }
    while (q->n_fed < q->n_prompt && b->n - n0 < room) {
        b->tokens[b->n] = q->prompt[q->n_fed];
        b->slot[b->n] = q->slot;
        b->pos[b->n++] = q->n_fed++;
    }
    b->n_prompt_tokens += b->n - n0;
    if (q->n_fed == q->n_prompt) {
        b->logit_seq[b->n_logits] = q;
        b->logit_rows[b->n_logits++] = b->n - 1;
    }
    return b->n - n0;
}

int step_run(const model *m, run_state *s, comm *c, step_batch *b, int max_tokens_any, int decode_only,
             const gen_options *o, llamoe_err *err) {
    const llama_config *cfg = &m->cfg;
    int V = cfg->vocab_size;
    forward_step_hint(s, max_tokens_any, decode_only);
    forward(m, s, c, b->tokens, b->slot, b->pos, b->n, b->logit_rows, b->n_logits, b->logits);
    const float *lg = b->logits;
    if (b->host_logits) {
        m->be->download(m->be, b->host_logits, b->logits, (size_t)b->n_logits * V * sizeof(float));
        lg = b->host_logits;
    }
    for (int j = 0; j < b->n_logits; j++) {
        sequence *q = b->logit_seq[j];
        const float *row = lg + (size_t)j * V;
        if (q->index == 0 && o && o->dump_logits && fwrite(row, sizeof(float), (size_t)V, o->dump_logits) != (size_t)V)
            return fail(err, "--dump-logits: write failed: %s", strerror(errno));
        int32_t next = sample_token(row, V, q->temperature, q->top_p, &q->rng, b->probs);
        q->out[q->n_out++] = next;
        if (q->index == 0 && o && o->on_token) o->on_token(o->on_token_ctx, next);
        if ((!q->ignore_eos && config_is_eos(cfg, next)) || next == q->end_token) q->stop = STOP_EOS;
        else if (q->n_out >= q->max_new) q->stop = STOP_LENGTH;
        else if (q->n_prompt + q->n_out >= s->ctx) q->stop = STOP_CONTEXT;
    }
    return 0;
}

// ---------------------------------------------------------------------------- the loop
int generate(const model *m, run_state *s, comm *c, sequence *seqs, int n_seqs,
             const gen_options *o, gen_stats *stats, llamoe_err *err) {
    int T = o->step_tokens < s->max_tokens ? o->step_tokens : s->max_tokens;
    step_batch b;
    step_batch_init(&b, m, T);
    memset(stats, 0, sizeof *stats);
    int rc = 0;

    for (;;) {
        // Build this rank's batch: decode tokens first (one per generating sequence), then
        // prompt chunks while the step has room.
        step_batch_clear(&b);
        for (int i = 0; i < n_seqs && b.n < T; i++)
            if (seqs[i].n_fed == seqs[i].n_prompt) step_batch_add(&b, &seqs[i], 1);
        for (int i = 0; i < n_seqs && b.n < T; i++)
            if (seqs[i].n_fed < seqs[i].n_prompt) step_batch_add(&b, &seqs[i], T - b.n);
        // Lockstep: every rank steps while any rank has work (idle ranks still serve experts).
        // The same agreement tells the MoE layers the step's shape: the most tokens on any
        // rank, and whether any rank still has prompt tokens.
        double agree[3] = {b.n > 0, b.n_prompt_tokens > 0, b.n};
        if (c->allreduce_max_f64(c, agree, 3) != 0) { rc = fail(err, "allreduce failed"); break; }
        if (agree[0] == 0) break;
        fault_step(stats->steps);   // LLAMOE_FAULT test hook (runtime/fault.h); no-op when unset

        double t0 = now_seconds();
        if (step_run(m, s, c, &b, (int)agree[2], agree[1] == 0, o, err) != 0) { rc = -1; break; }
        double dt = now_seconds() - t0;
        if (agree[1] > 0) stats->prefill_s += dt;
        else stats->decode_s += dt;
        stats->prefill_tokens += b.n_prompt_tokens;
        stats->decode_tokens += b.n - b.n_prompt_tokens;
        stats->steps++;
    }
    step_batch_free(&b, m);
    return rc;
}
