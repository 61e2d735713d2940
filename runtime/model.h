// The model plan: config, weights (views into the mmapped checkpoint where the layout is
// already right), the MoE layers this rank serves, and RoPE tables.
#pragma once
#include "kernels/backend.h"
#include "parallel/placement.h"
#include "runtime/config.h"
#include "runtime/moe_mode.h"
#include "runtime/safetensors.h"

typedef struct {
    float *attn_norm, *ffn_norm;          // float32 [hidden], owned
    weight_t wq, wk, wv, wo;
    weight_t w_gate, w_up, w_down;        // dense FFN: host views of the checkpoint (the
                                          // source of the experts); placed on the backend
                                          // only in dense mode, as dense_*
    weight_t dense_gate, dense_up, dense_down;
    // MoE (kind != MOE_DENSE)
    weight_t router;                      // [E, hidden]; unused by identity
    weight_t *w1, *w3, *w2;               // [n_local_experts], owned arrays of views/buffers
    expert_set experts;                   // points at w1/w3/w2
    void *expert_memory;                  // weights built at load (production), owned
    void **moved;                         // [n_local_experts] host backends: the blocks of the
                                          // experts rebalancing brought here (runtime/rebalance.h),
                                          // owned; NULL entries where none
} layer_weights;

typedef struct {
    llama_config cfg;
    moe_mode moe;                         // kind MOE_CHECKPOINT for Mixtral directories
    backend *be;
    st_set st;                            // keeps the mmap alive
    char *dir;

    weight_t embed, lm_head;              // lm_head aliases embed when tied
    float *final_norm;                    // float32 [hidden], owned
    float *inv_freq;                      // float32 [head_dim / 2], llama3-scaled, owned
    layer_weights *layers;

    // expert parallelism: this rank serves the expert slots [first_expert, first_expert +
    // n_local) of every layer; placement says which logical expert each slot holds (the slots
    // are the logical experts themselves unless placed with redundant copies)
    int rank, n_ranks;
    int first_expert, n_local_experts;
    placement_table placement;            // MoE models, owned (parallel/placement.h)
    size_t expert_bytes;                  // bytes of this rank's expert weights (all layers)
    size_t weight_bytes;                  // bytes of every other weight
    int experts_on_host;                  // memory mode: w1/w3/w2 stay host memory (views or
                                          // production buffers); runtime/expert_cache.c copies
                                          // the ones in use into a bounded backend pool
} model;

// (runtime/model_load.c) Opens DIR, validates config and tensors against each other, and
// builds the layers for `mode` (NULL: the checkpoint's own layout: dense for Llama,
// MOE_CHECKPOINT for Mixtral). Only the experts of `rank` out of `n_ranks` are built.
// Returns -1 with err on bad input.
int model_load(model *m, const char *dir, const moe_mode *mode, backend *be,
               int rank, int n_ranks, llamoe_err *err);

typedef struct {
    int experts_on_host;   // memory mode (--expert-budget): never place experts on the backend
    const placement_table *placement;   // the expert slots of every layer (runtime/placement_io.h);
                                        // NULL: the logical experts in contiguous blocks
} model_options;
// model_load with options (o may be NULL: the defaults, as model_load).
int model_load_opts(model *m, const char *dir, const moe_mode *mode, backend *be,
                    int rank, int n_ranks, const model_options *o, llamoe_err *err);
void model_free(model *m);

// A host view of tensor `name`, which must be [rows, cols]; err names file/tensor/field.
int model_find_matrix(const model *m, const char *name, int64_t rows, int64_t cols, weight_t *w,
                      llamoe_err *err);
// The weight as the backend uses it: the view itself on host backends, a packed device copy
// (owned by the caller, freed with be->free) otherwise.
weight_t model_place_weight(const model *m, weight_t host);
// An expert's gate and up placed together on a device backend: one [2 ff, d] allocation, gate
// first (a grouped FFN runs both as one GEMM); the device copy is freed through gate->data.
// Host backends keep the views.
void model_place_gate_up(const model *m, weight_t *gate, weight_t *up);

// inv_freq[i] for i < head_dim/2 with the llama3 frequency scaling when configured.
void rope_inv_freq(const llama_config *c, float *inv_freq);
