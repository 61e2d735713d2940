// Llama forward: embed -> [RMSNorm -> GQA attention -> residual -> RMSNorm -> FFN or MoE ->
// residual] x layers -> RMSNorm -> LM head.
#include "runtime/forward.h"

#include <string.h>

int run_state_init(run_state *s, const model *m, int max_tokens, int n_slots, int ctx) {
    memset(s, 0, sizeof *s);
    const llama_config *c = &m->cfg;
    const backend *be = m->be;
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
#define ALLOC(field, count) (s->field = be->alloc((size_t)(count) * sizeof(float)), s->bytes += (size_t)(count) * sizeof(float))
    ALLOC(x, T * d);
    ALLOC(xn, T * d);
    ALLOC(q, T * q_dim);
    ALLOC(k, T * kv_dim);
    ALLOC(v, T * kv_dim);
    ALLOC(att, T * q_dim);
    ALLOC(gate, T * ffn_width);
    ALLOC(up, T * ffn_width);
    ALLOC(ffn_out, T * d);
    s->k_cache = xcalloc((size_t)c->n_layers, sizeof(float *));
    s->v_cache = xcalloc((size_t)c->n_layers, sizeof(float *));
    for (int l = 0; l < c->n_layers; l++) {
        ALLOC(k_cache[l], (int64_t)n_slots * s->slot_stride);
        ALLOC(v_cache[l], (int64_t)n_slots * s->slot_stride);
    }
#undef ALLOC
    if (m->moe.kind != MOE_DENSE) moe_state_init(&s->moe, m, max_tokens);
    return 0;
}

void run_state_free(run_state *s, const model *m) {
    const backend *be = m->be;
    float *bufs[] = {s->x, s->xn, s->q, s->k, s->v, s->att, s->gate, s->up, s->ffn_out};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) be->free(bufs[i]);
    for (int l = 0; s->k_cache && l < m->cfg.n_layers; l++) {
        be->free(s->k_cache[l]);
        be->free(s->v_cache[l]);
    }
    free(s->k_cache);
    free(s->v_cache);
    if (m->moe.kind != MOE_DENSE) moe_state_free(&s->moe);
    memset(s, 0, sizeof *s);
}

int forward(const model *m, run_state *s, comm *c, const int32_t *tokens, const int32_t *slot,
            const int32_t *pos, int n, const int32_t *logit_rows, int n_logits, float *logits) {
    const llama_config *cfg = &m->cfg;
    const backend *be = m->be;
    int d = cfg->hidden_size, hd = cfg->head_dim, kv_dim = cfg->n_kv_heads * hd;
    CHECK(n <= s->max_tokens && n_logits <= n);
    double t0 = now_seconds();
    if (n > 0) be->embed(s->x, &m->embed, tokens, n);

    for (int l = 0; l < cfg->n_layers; l++) {
        const layer_weights *L = &m->layers[l];
        double ta = now_seconds();
        if (n > 0) {
            be->rmsnorm(s->xn, s->x, L->attn_norm, n, d, cfg->rms_norm_eps);
            be->matmul(s->q, s->xn, &L->wq, n);
            be->matmul(s->k, s->xn, &L->wk, n);
            be->matmul(s->v, s->xn, &L->wv, n);
            be->rope(s->q, n, cfg->n_heads, hd, pos, m->inv_freq);
            be->rope(s->k, n, cfg->n_kv_heads, hd, pos, m->inv_freq);
            be->kv_write(s->k_cache[l], s->v_cache[l], s->k, s->v, slot, pos, n, kv_dim, s->slot_stride);
            be->attention(s->att, s->q, s->k_cache[l], s->v_cache[l], slot, pos, n, cfg->n_heads,
                          cfg->n_kv_heads, hd, s->slot_stride);
            be->matmul(s->ffn_out, s->att, &L->wo, n);
            be->add(s->x, s->ffn_out, (int64_t)n * d);
            be->rmsnorm(s->xn, s->x, L->ffn_norm, n, d, cfg->rms_norm_eps);
        }
        double tf = now_seconds();
        s->time.attention += tf - ta;
        if (m->moe.kind == MOE_DENSE) {
            if (n > 0) {
                be->matmul(s->gate, s->xn, &L->dense_gate, n);
                be->matmul(s->up, s->xn, &L->dense_up, n);
                be->swiglu(s->gate, s->gate, s->up, (int64_t)n * cfg->intermediate_size);
                be->matmul(s->ffn_out, s->gate, &L->dense_down, n);
            }
        } else if (moe_forward(m, l, &s->moe, c, s->xn, n, s->ffn_out) != 0) {
            return -1;
        }
        if (s->ffn_hook) s->ffn_hook(s->ffn_hook_ctx, l, s->xn, s->ffn_out, n);
        if (n > 0) be->add(s->x, s->ffn_out, (int64_t)n * d);
        s->time.ffn += now_seconds() - tf;
    }

    double th = now_seconds();
    if (n_logits > 0) {
        // Only the rows that predict a token go through the final norm and the LM head.
        float *rows = s->xn;
        be->gather_rows(rows, s->x, logit_rows, n_logits, d);
        be->rmsnorm(rows, rows, m->final_norm, n_logits, d, cfg->rms_norm_eps);
        be->matmul(logits, rows, &m->lm_head, n_logits);
    }
    double te = now_seconds();
    s->time.lm_head += te - th;
    s->time.total += te - t0;
    return 0;
}
