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

// ---------------------------------------------------------------------------- the loop
int generate(const model *m, run_state *s, comm *c, sequence *seqs, int n_seqs,
             const gen_options *o, gen_stats *stats, llamoe_err *err) {
    const llama_config *cfg = &m->cfg;
    int T = o->step_tokens < s->max_tokens ? o->step_tokens : s->max_tokens;
    int V = cfg->vocab_size;
    int32_t *tokens = xmalloc((size_t)T * sizeof(int32_t)), *slot = xmalloc((size_t)T * sizeof(int32_t)),
            *pos = xmalloc((size_t)T * sizeof(int32_t)), *logit_rows = xmalloc((size_t)T * sizeof(int32_t)),
            *logit_seq = xmalloc((size_t)T * sizeof(int32_t));
    prob_index *probs = xmalloc((size_t)V * sizeof(prob_index));
    backend *be = m->be;
    float *logits = be->alloc(be, (size_t)T * V * sizeof(float)), *host_logits = NULL;
    if (be->device_memory) host_logits = xmalloc((size_t)T * V * sizeof(float));
    memset(stats, 0, sizeof *stats);
    int rc = 0;

    for (;;) {
        // Build this rank's batch: decode tokens first (one per generating sequence), then
        // prompt chunks while the step has room.
        int n = 0, n_logits = 0, has_prompt = 0, n_prompt_tokens = 0;
        for (int pass = 0; pass < 2; pass++)
            for (int i = 0; i < n_seqs && n < T; i++) {
                sequence *q = &seqs[i];
                if (q->stop != STOP_NONE) continue;
                int prefilling = q->n_fed < q->n_prompt;
                if (pass == 0 && !prefilling) {
                    tokens[n] = q->out[q->n_out - 1];
                    slot[n] = q->slot;
                    pos[n] = q->n_prompt + q->n_out - 1;
                    logit_seq[n_logits] = i;
                    logit_rows[n_logits++] = n++;
                } else if (pass == 1 && prefilling) {
                    has_prompt = 1;
                    while (q->n_fed < q->n_prompt && n < T) {
                        tokens[n] = q->prompt[q->n_fed];
                        slot[n] = q->slot;
                        pos[n] = q->n_fed++;
                        n++;
                        n_prompt_tokens++;
                    }
                    if (q->n_fed == q->n_prompt) {
                        logit_seq[n_logits] = i;
                        logit_rows[n_logits++] = n - 1;
                    }
                }
            }
        // Lockstep: every rank steps while any rank has work (idle ranks still serve experts).
        // The same agreement tells the MoE layers the step's shape: the most tokens on any
        // rank, and whether any rank still has prompt tokens.
        double agree[3] = {n > 0, has_prompt, n};
        if (c->allreduce_max_f64(c, agree, 3) != 0) { rc = fail(err, "allreduce failed"); break; }
        if (agree[0] == 0) break;
        fault_step(stats->steps);   // LLAMOE_FAULT test hook (runtime/fault.h); no-op when unset

        double t0 = now_seconds();
        forward_step_hint(s, (int)agree[2], agree[1] == 0);
        forward(m, s, c, tokens, slot, pos, n, logit_rows, n_logits, logits);
        const float *lg = logits;
        if (host_logits) {
            be->download(be, host_logits, logits, (size_t)n_logits * V * sizeof(float));
            lg = host_logits;
        }
        for (int j = 0; j < n_logits; j++) {
            sequence *q = &seqs[logit_seq[j]];
            const float *row = lg + (size_t)j * V;
            if (q->index == 0 && o->dump_logits && fwrite(row, sizeof(float), (size_t)V, o->dump_logits) != (size_t)V) {
                rc = fail(err, "--dump-logits: write failed: %s", strerror(errno));
                break;
            }
            int32_t next = sample_token(row, V, o->temperature, o->top_p, &q->rng, probs);
            q->out[q->n_out++] = next;
            if (q->index == 0 && o->on_token) o->on_token(o->on_token_ctx, next);
            if (config_is_eos(cfg, next)) q->stop = STOP_EOS;
            else if (q->n_out >= o->max_new) q->stop = STOP_LENGTH;
            else if (q->n_prompt + q->n_out >= s->ctx) q->stop = STOP_CONTEXT;
        }
        if (rc) break;
        double dt = now_seconds() - t0;
        if (agree[1] > 0) stats->prefill_s += dt;
        else stats->decode_s += dt;
        stats->prefill_tokens += n_prompt_tokens;
        stats->decode_tokens += n - n_prompt_tokens;
        stats->steps++;
    }
    free(tokens); free(slot); free(pos); free(logit_rows); free(logit_seq); free(probs);
    free(host_logits);
    be->free(be, logits);
    return rc;
}
