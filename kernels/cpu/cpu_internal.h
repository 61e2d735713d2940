// Shared by the CPU kernels: thread count, the 16-lane vector type, and the two reductions
// every deterministic kernel goes through (the matmul tile and the fixed-order dot product).
#pragma once
#include "kernels/backend.h"

#include <math.h>
#include <string.h>

// Threads used by every parallel region of this CPU backend (backend_options.threads).
int cpu_threads(backend *be);

// Grow-only scratch for the ops, so that a step allocates nothing once the largest step has
// been seen (decode after prefill: none at all). One buffer per CPU_SCRATCH_* id, owned by
// the backend object. Ops of one backend are called from one host thread (the runtime's),
// never concurrently, so ids are per op, not per thread. Contents are not kept across calls.
enum { CPU_SCRATCH_ATTENTION, CPU_SCRATCH_ROUTER, CPU_SCRATCH_FFN_G, CPU_SCRATCH_FFN_U, CPU_SCRATCH_FFN_ITEMS,
       CPU_SCRATCH_MOE, CPU_SCRATCH_MATMUL, CPU_SCRATCH_FFN_MATMUL, CPU_SCRATCH_N };
void *cpu_scratch(backend *be, int id, size_t bytes);

// ---------------------------------------------------------------------------- vectors
// 16 fp32 lanes: one AVX-512 register, two AVX2 registers. Lane-wise vector arithmetic has
// the same IEEE result whatever the ISA, so the lane count (not the register width) fixes
// the accumulation order. a * b + c is contracted to one fma by GCC (-ffp-contract=fast is
// the GNU C default) wherever it appears, so all paths round the same way.
#define LANES 16
typedef float v16 __attribute__((vector_size(64)));

static inline v16 v16_load(const float *p) { v16 v; memcpy(&v, p, sizeof v); return v; }
static inline void v16_store(float *p, v16 v) { memcpy(p, &v, sizeof v); }

// Fixed reduction tree of the 16 lanes: (l, l+8), then (l, l+4), (l, l+2), (l, l+1).
static inline float v16_sum(v16 a) {
    float s[8];
    for (int l = 0; l < 8; l++) s[l] = a[l] + a[l + 8];
    for (int l = 0; l < 4; l++) s[l] = s[l] + s[l + 4];
    for (int l = 0; l < 2; l++) s[l] = s[l] + s[l + 2];
    return s[0] + s[1];
}

// The last m < 16 elements at p + c, zero-padded (0 * 0 adds nothing to a lane).
static inline v16 v16_load_tail(const float *p, int64_t c, int64_t m) {
    float t[LANES] = {0};
    memcpy(t, p + c, (size_t)m * sizeof(float));
    return v16_load(t);
}

// The one dot product of the backend (attention scores, rmsnorm, every matmul element):
// lane l accumulates the elements i with i % 16 == l in increasing i with fma, the tail is
// zero-padded, then v16_sum. Kernels that run several dots side by side (cpu_dot4, the
// matmul tile) keep this scheme for each of them, so a dot is a dot everywhere.
static inline float cpu_dot(const float *a, const float *b, int64_t n) {
    v16 acc = {0};
    int64_t c = 0;
    for (; c + LANES <= n; c += LANES) acc += v16_load(a + c) * v16_load(b + c);
    if (c < n) acc += v16_load_tail(a, c, n - c) * v16_load_tail(b, c, n - c);
    return v16_sum(acc);
}

// Four dots of rows a, a + lda, a + 2 lda, a + 3 lda with b: four independent fma chains
// that share the loads of b.
static inline void cpu_dot4(float *res, const float *a, int64_t lda, const float *b, int64_t n) {
    v16 acc[4] = {{0}, {0}, {0}, {0}};
    int64_t c = 0;
    for (; c + LANES <= n; c += LANES) {
        v16 bv = v16_load(b + c);
        for (int i = 0; i < 4; i++) acc[i] += v16_load(a + i * lda + c) * bv;
    }
    if (c < n) {
        v16 bv = v16_load_tail(b, c, n - c);
        for (int i = 0; i < 4; i++) acc[i] += v16_load_tail(a + i * lda, c, n - c) * bv;
    }
    for (int i = 0; i < 4; i++) res[i] = v16_sum(acc[i]);
}

// out[t * ldo + (r - r0)] = x[t * ldx, :] . w[r, :] for t < n and r0 <= r < r1, serial (the
// caller parallelises over row ranges). Each element goes through cpu_dot's scheme, so the
// result does not depend on n, r0, r1 or on which thread calls it. scratch: the calling
// thread's own CPU_MATMUL_SCRATCH bytes, 64-byte aligned (cpu_thread_scratch).
// Row ranges of CPU_MATMUL_ROWS (n = 1) or CPU_MATMUL_ROWS_MANY (n > 1) rows balance the
// threads and let several tokens share each widened block of W.
#define CPU_MATMUL_ROWS 40          // a multiple of both tile heights (8 and 5)
#define CPU_MATMUL_ROWS_MANY 160
#define CPU_MATMUL_SCRATCH ((size_t)1 << 20)
void cpu_matmul_rows(float *out, int64_t ldo, const float *x, int64_t ldx, int64_t n,
                     const weight_t *w, int64_t r0, int64_t r1, void *scratch);
// The row range for n tokens of a matrix of `rows` rows: the long one only when there are
// enough of them to keep every thread busy (small matrices are all barrier otherwise).
static inline int64_t cpu_matmul_chunk(int64_t rows, int64_t n, int threads) {
    return n > 1 && rows >= 4 * (int64_t)threads * CPU_MATMUL_ROWS_MANY ? CPU_MATMUL_ROWS_MANY : CPU_MATMUL_ROWS;
}

// One buffer of `per_thread` bytes (rounded up to 64) for each of `threads` threads from
// scratch `id`; thread t's is at the result + t * cpu_thread_stride(per_thread), 64-aligned.
void *cpu_thread_scratch(backend *be, int id, int threads, size_t per_thread);
static inline size_t cpu_thread_stride(size_t per_thread) { return (per_thread + 63) / 64 * 64; }

// silu(g) * u in fp32, the form torch uses for silu: g / (1 + exp(-g)).
static inline float cpu_swiglu1(float g, float u) { return g / (1.0f + expf(-g)) * u; }

// ---------------------------------------------------------------------------- the ops
// One function per entry of the backend table (documented in kernels/backend.h).
void cpu_embed(backend *be, float *out, const weight_t *table, const int32_t *ids, int n);
void cpu_rmsnorm(backend *be, float *out, const float *x, const float *w, int n, int dim, float eps);
void cpu_matmul(backend *be, float *out, const float *x, const weight_t *w, int n);
void cpu_rope(backend *be, float *x, int n, int n_heads, int head_dim, const int32_t *pos, const float *inv_freq);
void cpu_kv_write(backend *be, float *k_cache, float *v_cache, const float *k, const float *v,
                  const int32_t *slot, const int32_t *pos, int n, int kv_dim, int64_t slot_stride);
void cpu_attention(backend *be, float *out, const float *q, const float *k_cache, const float *v_cache,
                   const int32_t *slot, const int32_t *pos, int n,
                   int n_heads, int n_kv_heads, int head_dim, int64_t slot_stride);
void cpu_swiglu(backend *be, float *out, const float *gate, const float *up, int64_t n);
void cpu_add(backend *be, float *x, const float *y, int64_t n);
void cpu_gather_rows(backend *be, float *out, const float *x, const int32_t *rows, int n, int dim);
void cpu_argmax(backend *be, int32_t *out, const float *logits, int n, int vocab);
void cpu_router_topk(backend *be, int32_t *expert, float *weight, const float *logits, int n, int n_experts, int k);
void cpu_moe_plan(backend *be, int32_t *counts, int32_t *row_slot, int32_t *pair_slot, int32_t *pair_expert,
                  int64_t *tally, const int32_t *expert, int n, int k, int salt, const moe_map *map);
void cpu_moe_pack(backend *be, void *send, const moe_layout *at, const float *x, const int32_t *expert,
                  const int32_t *row_slot, const int32_t *pair_slot, const int32_t *counts,
                  int n, int k, int d, const moe_map *map);
void cpu_moe_group(backend *be, float *xe, int64_t *offsets, int32_t *ret_row, const void *recv,
                   const moe_layout *at, const int64_t *ret_base, int n_src, int n_local, int d);
void cpu_expert_ffn(backend *be, float *out, const float *x, const int64_t *offsets,
                    const int64_t *offsets_host, int64_t max_rows, const expert_set *experts);
void cpu_combine(backend *be, float *out, const float *y, const int32_t *expert, const int32_t *pair_slot,
                 const float *weight, const int64_t *ret_base, int n, int k, int dim, const moe_map *map);
