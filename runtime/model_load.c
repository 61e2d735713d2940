// Loading the model plan: config + safetensors -> weight views, the dense layers and this
// rank's MoE layers (runtime/moe_build.c), and freeing it again.
#include "runtime/model.h"

#include <string.h>

#include "parallel/placement.h"
#include "runtime/moe_build.h"

static int load_matrix(model *m, const char *name, int64_t rows, int64_t cols, weight_t *w,
                       llamoe_err *err) {
    if (model_find_matrix(m, name, rows, cols, w, err) != 0) return -1;
    *w = model_place_weight(m, *w);
    return 0;
}

// Norm weights are small: widened to float32 once (on the backend).
static int load_vector(model *m, const char *name, int64_t n, float **out, llamoe_err *err) {
    const st_tensor *t;
    if (st_expect(&m->st, name, 1, &n, &t, err) != 0) return -1;
    float *host = xmalloc((size_t)n * sizeof(float));
    to_f32(host, t->data, t->dtype, (size_t)n);
    *out = m->be->alloc(m->be, (size_t)n * sizeof(float));
    m->be->upload(m->be, *out, host, (size_t)n * sizeof(float));
    free(host);
    return 0;
}

static size_t weight_bytes(const weight_t *w) { return (size_t)(w->rows * w->cols) * dtype_size(w->dtype); }

int model_load(model *m, const char *dir, const moe_mode *mode, backend *be,
               int rank, int n_ranks, llamoe_err *err) {
    return model_load_opts(m, dir, mode, be, rank, n_ranks, NULL, err);
}

int model_load_opts(model *m, const char *dir, const moe_mode *mode, backend *be,
                    int rank, int n_ranks, const model_options *o, llamoe_err *err) {
    memset(m, 0, sizeof *m);
    m->be = be;
    m->experts_on_host = o && o->experts_on_host;
    m->rank = rank;
    m->n_ranks = n_ranks;
    m->dir = xstrdup(dir);
    if (config_load(&m->cfg, dir, err) != 0) goto fail;
    if (st_open_dir(&m->st, dir, err) != 0) goto fail;
    const llama_config *c = &m->cfg;

    // Which MoE mode: a Mixtral checkpoint brings its own experts and router.
    if (c->is_mixtral) {
        if (mode && mode->kind != MOE_CHECKPOINT) {
            char buf[64];
            fail(err, "%s: --moe %s cannot be applied to a Mixtral checkpoint (it already has %d experts)",
                 dir, moe_mode_str(mode, buf, sizeof buf), c->n_experts);
            goto fail;
        }
        m->moe = (moe_mode){.kind = MOE_CHECKPOINT, .n_experts = c->n_experts, .top_k = c->n_experts_per_tok};
    } else if (mode) {
        m->moe = *mode;
        if (m->moe.kind == MOE_CHECKPOINT) { fail(err, "%s: not a Mixtral checkpoint", dir); goto fail; }
        if (moe_mode_check(&m->moe, c->intermediate_size, err) != 0) goto fail;
    } else {
        m->moe = (moe_mode){.kind = MOE_DENSE};
    }

    // Expert placement: rank r owns a contiguous block of the slots, each slot a logical
    // expert or a copy of one (parallel/placement.h).
    if (m->moe.kind != MOE_DENSE) {
        const placement_table *want = o ? o->placement : NULL;
        if (want) {
            if (want->n_layers != c->n_layers || want->n_logical != m->moe.n_experts || want->n_ranks != n_ranks) {
                fail(err, "%s: the placement is for %d layers of %d experts on %d ranks, the model has %d layers of %d experts on %d ranks",
                     dir, want->n_layers, want->n_logical, want->n_ranks, c->n_layers, m->moe.n_experts, n_ranks);
                goto fail;
            }
            if (placement_table_check(want, err) != 0) goto fail;
            placement_table_copy(&m->placement, want);
        } else if (placement_table_contiguous(&m->placement, c->n_layers, m->moe.n_experts, n_ranks, err) != 0) {
            goto fail;
        }
        expert_placement p;
        if (placement_init(&p, m->placement.n_physical, n_ranks, err) != 0) goto fail;
        m->n_local_experts = placement_count(&p, rank);
        m->first_expert = placement_first(&p, rank);
    }

    int d = c->hidden_size, q_dim = c->n_heads * c->head_dim, kv_dim = c->n_kv_heads * c->head_dim;
    char name[256];
    if (load_matrix(m, "model.embed_tokens.weight", c->vocab_size, d, &m->embed, err) != 0) goto fail;
    if (c->tie_word_embeddings) m->lm_head = m->embed;
    else if (load_matrix(m, "lm_head.weight", c->vocab_size, d, &m->lm_head, err) != 0) goto fail;
    if (load_vector(m, "model.norm.weight", d, &m->final_norm, err) != 0) goto fail;
    m->weight_bytes = weight_bytes(&m->embed) + (c->tie_word_embeddings ? 0 : weight_bytes(&m->lm_head));

    m->layers = xcalloc((size_t)c->n_layers, sizeof(layer_weights));
    for (int l = 0; l < c->n_layers; l++) {
        layer_weights *L = &m->layers[l];
#define LAYER(field) (snprintf(name, sizeof name, "model.layers.%d.%s", l, field), name)
        if (load_vector(m, LAYER("input_layernorm.weight"), d, &L->attn_norm, err) != 0 ||
            load_vector(m, LAYER("post_attention_layernorm.weight"), d, &L->ffn_norm, err) != 0 ||
            load_matrix(m, LAYER("self_attn.q_proj.weight"), q_dim, d, &L->wq, err) != 0 ||
            load_matrix(m, LAYER("self_attn.k_proj.weight"), kv_dim, d, &L->wk, err) != 0 ||
            load_matrix(m, LAYER("self_attn.v_proj.weight"), kv_dim, d, &L->wv, err) != 0 ||
            load_matrix(m, LAYER("self_attn.o_proj.weight"), d, q_dim, &L->wo, err) != 0)
            goto fail;
#undef LAYER
        m->weight_bytes += weight_bytes(&L->wq) + weight_bytes(&L->wk) + weight_bytes(&L->wv) +
                           weight_bytes(&L->wo);
        if (moe_build_layer(m, l, err) != 0) goto fail;
    }
    m->inv_freq = xmalloc((size_t)(c->head_dim / 2) * sizeof(float));
    rope_inv_freq(c, m->inv_freq);
    return 0;
fail:
    model_free(m);
    return -1;
}

void model_free(model *m) {
    backend *be = m->be;
    if (m->layers) {
        for (int l = 0; l < m->cfg.n_layers; l++) {
            layer_weights *L = &m->layers[l];
            be->free(be, L->attn_norm);
            be->free(be, L->ffn_norm);
            if (be->device_memory) {
                const void *w[] = {L->wq.data, L->wk.data, L->wv.data, L->wo.data};
                for (int i = 0; i < 4; i++) be->free(be, (void *)w[i]);
            }
            moe_free_layer(m, L);
        }
        free(m->layers);
    }
    if (be && be->device_memory) {
        be->free(be, (void *)m->embed.data);
        if (!m->cfg.tie_word_embeddings) be->free(be, (void *)m->lm_head.data);
    }
    if (be) be->free(be, m->final_norm);
    free(m->inv_freq);
    free(m->dir);
    placement_table_free(&m->placement);
    st_close(&m->st);
    memset(m, 0, sizeof *m);
}
