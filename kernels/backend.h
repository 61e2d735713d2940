// The backend interface: one object per backend (kernels/cpu, kernels/cuda), created from an
// options struct and passed to every op as its first argument, as ggml's backends are.
// Pointers are backend memory (host memory for the CPU backend, device memory for CUDA),
// except where an argument says "host": small per-rank tables (at most MOE_MAX_RANKS + 1
// values) and the offsets a launch is shaped by, which a device backend passes by value.
// Activations are float32 row-major; weights keep their checkpoint dtype and widen on the fly.
// kernels/ knows nothing of files, MPI or Llama: the runtime calls these in model order.
#pragma once
#include "base/common.h"
#include "base/moe_wire.h"

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

// ---------------------------------------------------------------------------- MoE exchange
// The messages of the expert-parallel exchange are laid out as base/moe_wire.h says; the
// ops below write (moe_pack) and read (moe_group, combine) them at the offsets they are given.

// Where a layer's experts live. The router picks logical experts (n_logical); the exchange
// moves pairs to physical ones (n_experts: the logical experts and their redundant copies,
// parallel/placement.h). Physical expert p lives on rank owner[p] as its local expert
// local[p]. The copies of logical expert e are physical experts
// replica[replica_start[e] .. replica_start[e + 1]). All arrays are backend memory; without
// redundant experts physical expert e is logical expert e.
typedef struct {
    const int32_t *owner, *local;              // [n_experts]
    const int32_t *replica_start, *replica;    // [n_logical + 1], [n_experts]
    int n_experts, n_ranks, n_logical;
} moe_map;

// Where an op may be timed: a timestamp marks the point the backend's work reaches it.
typedef uint64_t backend_mark;

typedef struct {
    int threads;               // CPU: threads of every op; 0: every core this process may use
    int device;                // CUDA: the GPU, an ordinal of the visible devices
    const char *expert_gemm;   // CUDA, experts with more than a few rows: "grouped" (default:
                               // one grouped GEMM per projection), "loop" (one GEMM per expert)
                               // or "gemv" (the small-batch kernel for every count)
} backend_options;

// Copies between host and backend memory since creation (upload/download calls and
// upload_async). A device backend's MoE layer makes at most one download; tests count them.
typedef struct {
    int64_t uploads, downloads;
    size_t bytes_up, bytes_down;
} backend_copies;

typedef struct backend backend;
struct backend {
    const char *name;
    int device_memory;   // 0: pointers are host memory (weights may be mmapped views)
    void *ctx;           // the implementation's state
    backend_copies copies;
    void (*destroy)(backend *be);

    // ------------------------------------------------------------------ memory
    void *(*alloc)(backend *be, size_t bytes);   // zeroed; dies on failure
    // Like alloc but NULL when memory runs out, so memory mode can say what did not fit.
    void *(*try_alloc)(backend *be, size_t bytes);
    void (*free)(backend *be, void *p);
    void (*upload)(backend *be, void *dst, const void *src, size_t bytes);
    // Copies a rows x row_bytes block whose rows are src_pitch bytes apart into packed rows
    // (a strided weight view becomes a packed device copy in one call).
    void (*upload_2d)(backend *be, void *dst, const void *src, size_t src_pitch, size_t row_bytes, size_t rows);
    void (*download)(backend *be, void *dst, const void *src, size_t bytes);   // waits
    void (*memset0)(backend *be, void *dst, size_t bytes);
    void (*sync)(backend *be);
    // Timing of backend work (CUDA events on a GPU, the clock on the CPU): mark records a
    // point in the work issued so far; seconds(a, b) waits for b and returns the time between.
    backend_mark (*mark)(backend *be);
    double (*seconds)(backend *be, backend_mark a, backend_mark b);

    // ------------------------------------------------------------------ dense ops
    // out[i, :] = table[ids[i], :] as float32 (ids: host)
    void (*embed)(backend *be, float *out, const weight_t *table, const int32_t *ids, int n);
    // out[i, :] = x[i, :] / sqrt(mean(x[i, :]^2) + eps) * w   (w float32 [dim])
    void (*rmsnorm)(backend *be, float *out, const float *x, const float *w, int n, int dim, float eps);
    // out[n, w.rows] = x[n, w.cols] . W^T. Each output element is computed the same way
    // whatever n is, so results do not depend on how tokens are batched (1 vs N ranks).
    void (*matmul)(backend *be, float *out, const float *x, const weight_t *w, int n);
    // Rotate-half RoPE in place on x[n, n_heads * head_dim] at positions pos[n] (host);
    // inv_freq[head_dim / 2] (host) already carries any llama3 scaling.
    void (*rope)(backend *be, float *x, int n, int n_heads, int head_dim, const int32_t *pos, const float *inv_freq);
    // Stores token i's k/v rows at cache[slot[i] * slot_stride + pos[i] * kv_dim] (slot, pos: host).
    void (*kv_write)(backend *be, float *k_cache, float *v_cache, const float *k, const float *v,
                     const int32_t *slot, const int32_t *pos, int n, int kv_dim, int64_t slot_stride);
    // Causal grouped-query attention: token i (query q[i, n_heads * head_dim]) attends to
    // positions 0..pos[i] of its sequence's cache; out has the shape of q (slot, pos: host).
    void (*attention)(backend *be, float *out, const float *q, const float *k_cache, const float *v_cache,
                      const int32_t *slot, const int32_t *pos, int n,
                      int n_heads, int n_kv_heads, int head_dim, int64_t slot_stride);
    // out = silu(gate) * up, elementwise over n values (out may alias gate)
    void (*swiglu)(backend *be, float *out, const float *gate, const float *up, int64_t n);
    // x += y over n values
    void (*add)(backend *be, float *x, const float *y, int64_t n);
    // out[i, :] = x[rows[i], :] for rows[i] >= 0; rows[i] < 0 leaves out[i, :] as it is.
    // rows: backend memory.
    void (*gather_rows)(backend *be, float *out, const float *x, const int32_t *rows, int n, int dim);
    // out[i] = index of the largest logits[i, :] (lowest index on ties); out: host.
    void (*argmax)(backend *be, int32_t *out, const float *logits, int n, int vocab);

    // ------------------------------------------------------------------ MoE ops
    // Router: softmax over logits[i, :n_experts], keep the top k (ties to the lower index),
    // renormalise; each token's k choices are written in ascending expert order. expert and
    // weight [n * k]: backend memory.
    void (*router_topk)(backend *be, int32_t *expert, float *weight, const float *logits, int n, int n_experts, int k);
    // The route plan of n tokens with logical experts expert[n * k] (each token's ascending),
    // S = map->n_experts physical experts on P ranks:
    //   pair_expert[n*k] for pair (t, j): the physical expert that computes it, copy
    //                   (i + salt) mod c of the c copies of e = expert[t * k + j], where i is
    //                   the number of earlier tokens (t' < t) routed to e: each rank deals its
    //                   tokens of e round the copies, starting where salt says (the runtime
    //                   passes rank + step), so the choice never depends on timing
    //   counts[S + P]   pairs per physical expert (S values), then rows per destination rank (P)
    //   row_slot[n * k] for pair (t, j): the index of token t's row among the rows sent to
    //                   owner[pair_expert] when j is the token's first pair to that rank, else -1
    //   pair_slot[n*k]  for pair (t, j): its index among the pairs sent to its rank
    // Rows and pairs keep token order (a stable scatter). With tally non-NULL (int64 [S + P]),
    // the counts are also added to it (statistics that stay on the backend).
    void (*moe_plan)(backend *be, int32_t *counts, int32_t *row_slot, int32_t *pair_slot, int32_t *pair_expert,
                     int64_t *tally, const int32_t *expert, int n, int k, int salt, const moe_map *map);
    // Writes every peer's message into send at the offsets of `at`: header (rows and pairs
    // from counts), token rows x[t, :] at msg + MOE_HEADER_BYTES + row * d floats, pairs
    // (row, local expert) at msg + pairs. expert: moe_plan's pair_expert (physical).
    void (*moe_pack)(backend *be, void *send, const moe_layout *at, const float *x, const int32_t *expert,
                     const int32_t *row_slot, const int32_t *pair_slot, const int32_t *counts,
                     int n, int k, int d, const moe_map *map);
    // Owner side: groups the pairs of the n_src received messages (recv, offsets `at`, counts
    // read from each header) by local expert into xe[M, d], stable by (source, pair order):
    //   offsets[n_local + 1] (backend) the rows of local expert i are offsets[i] .. offsets[i+1]
    //   ret_row[...]        for pair q of source s: ret_row[ret_base[s] + q] = its xe row
    //                       (ret_base: host, n_src + 1 entries; source s owns entries
    //                       ret_base[s] .. ret_base[s+1]-1, those no pair fills are -1)
    void (*moe_group)(backend *be, float *xe, int64_t *offsets, int32_t *ret_row, const void *recv,
                      const moe_layout *at, const int64_t *ret_base, int n_src, int n_local, int d);
    // Grouped expert FFN: rows offsets[e] .. offsets[e+1] of x[., d] go through expert e:
    // out = w2 (silu(w1 x) * (w3 x)), float32. offsets: backend memory; offsets_host: the same
    // values on the host when the caller has them (the launch is shaped by them), or NULL: the
    // backend reads offsets itself and max_rows bounds offsets[E] (the fixed-capacity exchange).
    void (*expert_ffn)(backend *be, float *out, const float *x, const int64_t *offsets,
                       const int64_t *offsets_host, int64_t max_rows, const expert_set *experts);
    // The exact combine: out[t, :] = sum_j weight[t*k + j] * y[ret_base[owner] + pair_slot, :]
    // for j = 0 .. k-1 in that order (the router's: ascending logical expert), each term one
    // fma onto the running sum from 0. expert: moe_plan's pair_expert (physical: whose owner
    // returned the row); ret_base: host, the first row of each owner's returned rows in y.
    void (*combine)(backend *be, float *out, const float *y, const int32_t *expert, const int32_t *pair_slot,
                    const float *weight, const int64_t *ret_base, int n, int k, int dim, const moe_map *map);

    // ------------------------------------------------------------------ optional (may be NULL)
    // An asynchronous weight copy engine (a GPU copy stream) for memory mode. NULL: upload is
    // synchronous and the fences below are never needed. Tickets are opaque, increasing, 0 =
    // nothing to wait for.
    //   upload_async  enqueues a host -> device copy on the copy stream; returns its ticket
    //   compute_wait  makes compute issued after this call wait for copy ticket t
    //   compute_fence returns a ticket for the compute issued so far (an event on the stream)
    //   copy_wait     makes copies enqueued after this call wait for compute ticket t (a pool
    //                 slot is overwritten only once the kernels reading it are done)
    uint64_t (*upload_async)(backend *be, void *dst, const void *src, size_t bytes);
    void (*compute_wait)(backend *be, uint64_t copy_ticket);
    uint64_t (*compute_fence)(backend *be);
    void (*copy_wait)(backend *be, uint64_t compute_ticket);
};

backend *backend_cpu_new(const backend_options *o);
#ifdef LLAMOE_CUDA
// NULL with err when the device cannot be used (none visible, bad ordinal, bad option).
backend *backend_cuda_new(const backend_options *o, llamoe_err *err);
#endif
static inline void backend_free(backend *be) { if (be) be->destroy(be); }
