// Llama forward: embed -> [RMSNorm -> GQA attention -> residual -> RMSNorm -> FFN or MoE ->
// residual] x layers -> RMSNorm -> LM head.
#include "runtime/forward.h"

#include <string.h>

void run_state_init(run_state *s, const model *m, const run_options *o) {
    memset(s, 0, sizeof *s);
    const llama_config *c = &m->cfg;
    backend *be = m->be;
    int max_tokens = o->max_tokens, n_slots = o->n_slots, ctx = o->ctx;
    int64_t d = c->hidden_size, q_dim = (int64_t)c->n_heads * c->head_dim,
            kv_dim = (int64_t)c->n_kv_heads * c->head_dim, T = max_tokens;
    int64_t ffn_width = m->moe.kind == MOE_DENSE ? c->intermediate_size : 0;
    s->max_tokens = max_tokens;
    s->n_slots = n_slots;
    s->ctx = ctx;
    s->slot_stride = (int64_t)ctx * kv_dim;
    // Sizes come from config.json and the command line (--ctx, --prompts lines): a product
    // that wraps would allocate a small buffer and write far past it.
    size_t kv_bytes, widest = (size_t)(d > q_dim ? d : q_dim), step_bytes;
    if (ffn_width > (int64_t)widest) widest = (size_t)ffn_width;
    if (!mul_ok((size_t)n_slots, (size_t)s->slot_stride, &kv_bytes) || !mul_ok(kv_bytes, sizeof(float), &kv_bytes) ||
        !mul_ok((size_t)T, widest, &step_bytes) || !mul_ok(step_bytes, sizeof(float), &step_bytes))
        die("KV cache of %d sequence(s) x %d positions x %lld floats per layer does not fit in memory",
            n_slots, ctx, (long long)kv_dim);
#define ALLOC(field, count) (s->field = be->alloc(be, (size_t)(count) * sizeof(float)), s->bytes += (size_t)(count) * sizeof(float))
    ALLOC(x, T * d);
    ALLOC(xn, T * d);
    ALLOC(q, T * q_dim);
    ALLOC(k, T * kv_dim);
    ALLOC(v, T * kv_dim);
    ALLOC(att, T * q_dim);
    ALLOC(gate, T * ffn_width);
    ALLOC(up, T * ffn_width);
    ALLOC(ffn_out, T * d);
    ALLOC(logit_rows, T);   // int32, the size of a float
    s->k_cache = xcalloc((size_t)c->n_layers, sizeof(float *));
    s->v_cache = xcalloc((size_t)c->n_layers, sizeof(float *));
    for (int l = 0; l < c->n_layers; l++) {
        ALLOC(k_cache[l], (int64_t)n_slots * s->slot_stride);
        ALLOC(v_cache[l], (int64_t)n_slots * s->slot_stride);
    }
#undef ALLOC
    s->marks = xcalloc(3 * (size_t)c->n_layers + 3, sizeof(backend_mark));
    if (m->moe.kind != MOE_DENSE) {
        moe_shape shape = moe_shape_of(m, max_tokens, o->moe_capacity, o->moe_exchange);
        moe_state_init(&s->moe, be, &shape);
    }
}

void run_state_free(run_state *s, const model *m) {
    backend *be = m->be;
    void *bufs[] = {s->x, s->xn, s->q, s->k, s->v, s->att, s->gate, s->up, s->ffn_out, s->logit_rows};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) be->free(be, bufs[i]);
    for (int l = 0; s->k_cache && l < m->cfg.n_layers; l++) {
        be->free(be, s->k_cache[l]);
        be->free(be, s->v_cache[l]);
    }
    free(s->k_cache);
    free(s->v_cache);
    free(s->marks);
    if (m->moe.kind != MOE_DENSE) moe_state_free(&s->moe);
    memset(s, 0, sizeof *s);
}

void forward_step_hint(run_state *s, int max_tokens_any, int decode_only) {
    s->step_hint = 1;
    if (s->moe.be) moe_step_begin(&s->moe, max_tokens_any, decode_only);
}

void forward(const model *m, run_state *s, comm *c, const int32_t *tokens, const int32_t *slot,
             const int32_t *pos, int n, const int32_t *logit_rows, int n_logits, float *logits) {
    const llama_config *cfg = &m->cfg;
    backend *be = m->be;
    int d = cfg->hidden_size, hd = cfg->head_dim, kv_dim = cfg->n_kv_heads * hd, L = cfg->n_layers;
    CHECK(n <= s->max_tokens && n_logits <= n);
    if (s->moe.be && !s->step_hint) moe_step_begin(&s->moe, s->max_tokens + 1, 0);   // the counts plan
    s->step_hint = 0;
    backend_mark *mk = s->marks;   // start, (attention start, FFN start, FFN end) per layer, LM head start, end
    mk[0] = be->mark(be);
    if (n > 0) be->embed(be, s->x, &m->embed, tokens, n);

    for (int l = 0; l < L; l++) {
        const layer_weights *Lw = &m->layers[l];
        mk[1 + 3 * l] = be->mark(be);
        if (n > 0) {
            be->rmsnorm(be, s->xn, s->x, Lw->attn_norm, n, d, cfg->rms_norm_eps);
            be->matmul(be, s->q, s->xn, &Lw->wq, n);
            be->matmul(be, s->k, s->xn, &Lw->wk, n);
            be->matmul(be, s->v, s->xn, &Lw->wv, n);
            be->rope(be, s->q, n, cfg->n_heads, hd, pos, m->inv_freq);
            be->rope(be, s->k, n, cfg->n_kv_heads, hd, pos, m->inv_freq);
            be->kv_write(be, s->k_cache[l], s->v_cache[l], s->k, s->v, slot, pos, n, kv_dim, s->slot_stride);
            be->attention(be, s->att, s->q, s->k_cache[l], s->v_cache[l], slot, pos, n, cfg->n_heads,
                          cfg->n_kv_heads, hd, s->slot_stride);
            be->matmul(be, s->ffn_out, s->att, &Lw->wo, n);
            be->add(be, s->x, s->ffn_out, (int64_t)n * d);
            be->rmsnorm(be, s->xn, s->x, Lw->ffn_norm, n, d, cfg->rms_norm_eps);
        }
        mk[2 + 3 * l] = be->mark(be);
        if (m->moe.kind == MOE_DENSE) {
            if (n > 0) {
                be->matmul(be, s->gate, s->xn, &Lw->dense_gate, n);
                be->matmul(be, s->up, s->xn, &Lw->dense_up, n);
                be->swiglu(be, s->gate, s->gate, s->up, (int64_t)n * cfg->intermediate_size);
                be->matmul(be, s->ffn_out, s->gate, &Lw->dense_down, n);
            }
        } else {
            moe_forward(m, l, &s->moe, c, s->xn, n, s->ffn_out);
        }
        if (s->ffn_hook) s->ffn_hook(s->ffn_hook_ctx, l, s->xn, s->ffn_out, n);
        if (n > 0) be->add(be, s->x, s->ffn_out, (int64_t)n * d);
        mk[3 + 3 * l] = be->mark(be);
    }

    mk[1 + 3 * L] = be->mark(be);
    if (n_logits > 0) {
        // Only the rows that predict a token go through the final norm and the LM head.
        float *rows = s->xn;
        be->upload(be, s->logit_rows, logit_rows, (size_t)n_logits * sizeof(int32_t));
        be->gather_rows(be, rows, s->x, s->logit_rows, n_logits, d);
        be->rmsnorm(be, rows, rows, m->final_norm, n_logits, d, cfg->rms_norm_eps);
        be->matmul(be, logits, rows, &m->lm_head, n_logits);
    }
    mk[2 + 3 * L] = be->mark(be);

    // Backend time of each phase (waits for this call's work).
    for (int l = 0; l < L; l++) {
        s->time.attention += be->seconds(be, mk[1 + 3 * l], mk[2 + 3 * l]);
        s->time.ffn += be->seconds(be, mk[2 + 3 * l], mk[3 + 3 * l]);
    }
    s->time.lm_head += be->seconds(be, mk[1 + 3 * L], mk[2 + 3 * L]);
    s->time.total += be->seconds(be, mk[0], mk[2 + 3 * L]);
    if (s->moe.be) moe_step_end(&s->moe);
}
