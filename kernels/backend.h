// The backend interface: one table of ops, filled by kernels/cpu (now) and kernels/cuda.
// Pointers are backend memory (host memory for the CPU backend, device memory for CUDA).
// Activations are float32 row-major; weights keep their checkpoint dtype and widen on the fly.
// Small index arrays (ids, slot, pos, rows, expert, weight, offsets) are host memory on
// every backend: a device backend copies them itself, so the runtime never branches on it.
// kernels/ knows nothing of files, MPI or Llama: the runtime calls these in model order.
#pragma once
#include "base/common.h"

// A weight matrix [rows, cols] used as y = W x (rows outputs from cols inputs), the layout
// of every Hugging Face Linear. ld >= cols is the distance between rows in elements, so a
// block of columns of a larger matrix (an identity-mode slice of down_proj) is a view.
typedef struct {
    const void *data;
    dtype_t dtype;
    int64_t rows, cols, ld;
} weight_t;

// One layer's experts held by this rank: w1 = gate [ff, d], w3 = up [ff, d], w2 = down [d, ff].
// Each expert may have its own ff (identity slices of an FFN that E does not divide).
// An expert with zero rows is never read: in memory mode (runtime/expert_cache.h) its data
// may be a host pointer or a pool slot that now holds another expert; only shapes are valid.
typedef struct {
    int n_experts;
    const weight_t *w1, *w3, *w2;   // arrays of n_experts
} expert_set;

typedef struct backend {
    const char *name;
    int device_memory;   // 0: pointers are host memory (weights may be mmapped views)

    // memory
    void *(*alloc)(size_t bytes);                    // zeroed; dies on failure
    void (*free)(void *p);
    void (*upload)(void *dst, const void *src, size_t bytes);
    void (*download)(void *dst, const void *src, size_t bytes);
    void (*sync)(void);

    // out[i, :] = table[ids[i], :] as float32
    void (*embed)(float *out, const weight_t *table, const int32_t *ids, int n);
    // out[i, :] = x[i, :] / sqrt(mean(x[i, :]^2) + eps) * w   (w float32 [dim])
    void (*rmsnorm)(float *out, const float *x, const float *w, int n, int dim, float eps);
    // out[n, w.rows] = x[n, w.cols] . W^T. Each output element is computed the same way
    // whatever n is, so results do not depend on how tokens are batched (1 vs N ranks).
    void (*matmul)(float *out, const float *x, const weight_t *w, int n);
    // Rotate-half RoPE in place on x[n, n_heads * head_dim] at positions pos[n];
    // inv_freq[head_dim / 2] already carries any llama3 scaling.
    void (*rope)(float *x, int n, int n_heads, int head_dim, const int32_t *pos, const float *inv_freq);
    // Stores token i's k/v rows at cache[slot[i] * slot_stride + pos[i] * kv_dim].
    void (*kv_write)(float *k_cache, float *v_cache, const float *k, const float *v,
                     const int32_t *slot, const int32_t *pos, int n, int kv_dim, int64_t slot_stride);
    // Causal grouped-query attention: token i (query q[i, n_heads * head_dim]) attends to
    // positions 0..pos[i] of its sequence's cache; out has the shape of q.
    void (*attention)(float *out, const float *q, const float *k_cache, const float *v_cache,
                      const int32_t *slot, const int32_t *pos, int n,
                      int n_heads, int n_kv_heads, int head_dim, int64_t slot_stride);
    // out = silu(gate) * up, elementwise over n values (out may alias gate)
    void (*swiglu)(float *out, const float *gate, const float *up, int64_t n);
    // x += y over n values
    void (*add)(float *x, const float *y, int64_t n);

    // MoE. Router: softmax over logits[i, :n_experts], keep the top k (ties to the lower
    // index), renormalise; each token's k choices are written in ascending expert order.
    void (*router_topk)(int32_t *expert, float *weight, const float *logits, int n, int n_experts, int k);
    // out[i, :] = x[rows[i], :]  (the permutation that groups tokens by expert)
    void (*gather_rows)(float *out, const float *x, const int32_t *rows, int n, int dim);
    // Grouped expert FFN: rows offsets[e] .. offsets[e+1] of x[., d] go through expert e:
    // out = w2 (silu(w1 x) * (w3 x)). out is float32 [offsets[n_experts], d].
    void (*expert_ffn)(float *out, const float *x, const int64_t *offsets, const expert_set *experts);
    // out[t, :] = sum_j weight[t*k + j] * y[row[t*k + j], :] for j = 0..k-1 in that order
    // (the runtime orders j by expert index: the exact combine).
    void (*combine)(float *out, const float *y, const int32_t *row, const float *weight, int n, int k, int dim);
    // out[i] = index of the largest logits[i, :] (lowest index on ties)
    void (*argmax)(int32_t *out, const float *logits, int n, int vocab);

    // ------------------------------------------------------------------ optional (may be NULL)
    // Memory mode (runtime/expert_cache.c) uses these when present and falls back otherwise.
    // try_alloc: like alloc but returns NULL when memory runs out, so a pool that does not fit
    // is reported with its size instead of ending the process. NULL: alloc is used.
    void *(*try_alloc)(size_t bytes);
    // An asynchronous weight copy engine (a GPU copy stream). NULL: upload is synchronous and
    // the fences below are never needed. Tickets are opaque, increasing, 0 = nothing to wait for.
    //   upload_async  enqueues a host -> device copy on the copy stream; returns its ticket
    //   compute_wait  makes compute issued after this call wait for copy ticket t
    //   compute_fence returns a ticket for the compute issued so far (an event on the stream)
    //   copy_wait     makes copies enqueued after this call wait for compute ticket t (a pool
    //                 slot is overwritten only once the kernels reading it are done)
    uint64_t (*upload_async)(void *dst, const void *src, size_t bytes);
    void (*compute_wait)(uint64_t copy_ticket);
    uint64_t (*compute_fence)(void);
    void (*copy_wait)(uint64_t compute_ticket);
} backend;

const backend *backend_cpu(void);
// Set the number of threads of the CPU backend (0: all cores of this rank's binding).
void backend_cpu_set_threads(int n);
#ifdef LLAMOE_CUDA
const backend *backend_cuda(void);
#endif
