// The MoE exchange's ops on the device (kernels/backend.h): the route plan (with the choice
// of each pair's copy of its expert), packing every peer's message, and grouping what arrived
// by local expert. Tested bitwise against the CPU
// backend's loops (kernels/cpu/moe_exchange.c). Index arrays stay on the device; the message
// offsets and per-rank tables travel by value in the launch.
#include "kernels/cuda/cuda_common.cuh"

#include <cub/block/block_scan.cuh>

#define PLAN_THREADS 256

struct add_int2 {
    __device__ int2 operator()(int2 a, int2 b) const { return make_int2(a.x + b.x, a.y + b.y); }
};

// ---------------------------------------------------------------------------- plan
// The copy of each pair's expert: one block per logical expert e scans the tokens in order;
// the exclusive prefix sum of "token t has e" is the number of earlier tokens dealt to e's
// copies, which picks copy (i + salt) mod copies (the CPU's round robin, bit for bit).
__global__ void __launch_bounds__(PLAN_THREADS) moe_assign_kernel(int32_t *pair_expert, const int32_t *expert,
                                                                  const int32_t *replica_start, const int32_t *replica,
                                                                  int n, int k, int salt) {
    typedef cub::BlockScan<int, PLAN_THREADS> scan_t;
    __shared__ typename scan_t::TempStorage scratch;
    __shared__ int carry;
    int e = blockIdx.x, first = replica_start[e], copies = replica_start[e + 1] - first;
    if (threadIdx.x == 0) carry = 0;
    __syncthreads();
    for (int t0 = 0; t0 < n; t0 += PLAN_THREADS) {
        int t = t0 + threadIdx.x, at = -1;   // token t's pair with expert e, if any
        if (t < n)
            for (int j = 0; j < k; j++)
                if (expert[(int64_t)t * k + j] == e) at = j;
        int before, total;
        scan_t(scratch).ExclusiveSum(at >= 0 ? 1 : 0, before, total);
        if (at >= 0)
            pair_expert[(int64_t)t * k + at] = replica[first + (int)(((int64_t)carry + before + salt) % copies)];
        __syncthreads();   // every thread has read carry
        if (threadIdx.x == 0) carry += total;
        __syncthreads();
    }
}

// One block per destination rank r scans the tokens in order: token t sends r one row if one
// of its pairs' physical experts lives there, and one pair per such expert; the exclusive
// prefix sums over the tokens are the slots. Per-expert counts are integer atomics (the same
// sum in any order).
__global__ void __launch_bounds__(PLAN_THREADS) moe_plan_kernel(int32_t *counts, int32_t *row_slot, int32_t *pair_slot,
                                                                const int32_t *pair_expert, const int32_t *owner, int n,
                                                                int k, int S) {
    typedef cub::BlockScan<int2, PLAN_THREADS> scan_t;
    __shared__ typename scan_t::TempStorage scratch;
    __shared__ int2 carry;
    int r = blockIdx.x;
    if (threadIdx.x == 0) carry = make_int2(0, 0);
    __syncthreads();
    for (int t0 = 0; t0 < n; t0 += PLAN_THREADS) {
        int t = t0 + threadIdx.x;
        int2 mine = make_int2(0, 0);   // (rows, pairs) token t sends rank r
        const int32_t *phys = pair_expert + (int64_t)t * k;
        if (t < n)
            for (int j = 0; j < k; j++)
                if (owner[phys[j]] == r) {
                    mine.y++;
                    mine.x = 1;
                }
        int2 before, total;
        scan_t(scratch).ExclusiveScan(mine, before, make_int2(0, 0), add_int2(), total);
        if (t < n) {
            int row = carry.x + before.x, pair = carry.y + before.y, first = 1;
            for (int j = 0; j < k; j++) {
                int p = phys[j];
                if (owner[p] != r) continue;
                int64_t at = (int64_t)t * k + j;
                row_slot[at] = first ? row : -1;
                pair_slot[at] = pair++;
                first = 0;
                atomicAdd(&counts[p], 1);
            }
        }
        __syncthreads();   // every thread has read carry
        if (threadIdx.x == 0) carry = make_int2(carry.x + total.x, carry.y + total.y);
        __syncthreads();
    }
    if (threadIdx.x == 0) counts[S + r] = carry.x;
}

__global__ void tally_kernel(int64_t *tally, const int32_t *counts, int count) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) tally[i] += counts[i];
}

void cuda_moe_plan(backend *be, int32_t *counts, int32_t *row_slot, int32_t *pair_slot, int32_t *pair_expert,
                   int64_t *tally, const int32_t *expert, int n, int k, int salt, const moe_map *map) {
    cuda_ctx *cx = cuda_of(be);
    int S = map->n_experts, P = map->n_ranks, E = map->n_logical;
    CHECK(P >= 1 && P <= MOE_MAX_RANKS && k >= 1 && k <= E && E <= S && salt >= 0);
    cudaCheck(cudaMemsetAsync(counts, 0, (size_t)(S + P) * sizeof(int32_t), cx->stream));
    if (n > 0) {
        moe_assign_kernel<<<E, PLAN_THREADS, 0, cx->stream>>>(pair_expert, expert, map->replica_start, map->replica, n,
                                                              k, salt);
        cudaCheckLaunch();
    }
    moe_plan_kernel<<<P, PLAN_THREADS, 0, cx->stream>>>(counts, row_slot, pair_slot, pair_expert, map->owner, n, k, S);
    cudaCheckLaunch();
    if (tally) {
        tally_kernel<<<grid_for(S + P, 256), 256, 0, cx->stream>>>(tally, counts, S + P);
        cudaCheckLaunch();
    }
}

// ---------------------------------------------------------------------------- pack
// Headers: rows and pairs of each peer from the plan's counts.
__global__ void moe_headers_kernel(char *send, const __grid_constant__ moe_layout at, const int32_t *counts,
                                   const int32_t *owner, int S, int P, int d) {
    int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= P) return;
    int pairs = 0;
    for (int p = 0; p < S; p++) pairs += owner[p] == r ? counts[p] : 0;
    int4 h = make_int4(counts[S + r], pairs, d, 0);
    *(int4 *)(send + at.msg[r]) = h;
}

// One block per pair: its (row, local expert) entry, and the token's row when the pair is the
// first of its token on that rank. expert: the pairs' physical experts (the plan's).
__global__ void moe_pack_kernel(char *send, const __grid_constant__ moe_layout at, const float *x, const int32_t *expert,
                                const int32_t *row_slot, const int32_t *pair_slot, const int32_t *owner,
                                const int32_t *local, int k, int d) {
    int64_t p = blockIdx.x;
    int64_t t = p / k;
    int j = (int)(p % k), e = expert[p], r = owner[e];
    char *msg = send + at.msg[r];
    int first = j;   // the pair that carries token t's row to rank r
    for (int i = 0; i < j; i++)
        if (owner[expert[t * k + i]] == r) { first = i; break; }
    int row = row_slot[t * k + first];
    if (threadIdx.x == 0) {
        int2 pair = make_int2(row, local[e]);
        *(int2 *)(msg + at.pairs[r] + (size_t)pair_slot[p] * MOE_PAIR_BYTES) = pair;
    }
    if (row_slot[p] >= 0) {
        float *dst = (float *)(msg + MOE_HEADER_BYTES) + (int64_t)row * d;
        const float *src = x + t * d;
        for (int c = threadIdx.x; c < d; c += blockDim.x) dst[c] = src[c];
    }
}

void cuda_moe_pack(backend *be, void *send, const moe_layout *at, const float *x, const int32_t *expert,
                   const int32_t *row_slot, const int32_t *pair_slot, const int32_t *counts,
                   int n, int k, int d, const moe_map *map) {
    cuda_ctx *cx = cuda_of(be);
    int S = map->n_experts, P = map->n_ranks;
    moe_headers_kernel<<<grid_for(P, 128), 128, 0, cx->stream>>>((char *)send, *at, counts, map->owner, S, P, d);
    cudaCheckLaunch();
    if (n <= 0) return;
    moe_pack_kernel<<<(unsigned)((int64_t)n * k), 128, 0, cx->stream>>>((char *)send, *at, x, expert, row_slot, pair_slot,
                                                                        map->owner, map->local, k, d);
    cudaCheckLaunch();
}

// ---------------------------------------------------------------------------- group
// Owner side, in three passes over the n_src received messages:
//   1. per source, pairs per local expert (hist[s * L + le]), after checking the header;
//   2. one block: offsets[le] and each source's first row of every expert (base[s * L + le]);
//   3. per source, one warp ranks the pairs in order (stable): pair q of expert le is row
//      base[s, le] + (earlier pairs of le in s); its row is copied to xe, its xe row noted in
//      ret_row for the return.

static __device__ const int2 *pairs_of(const char *recv, const moe_layout &at, int s) {
    return (const int2 *)(recv + at.msg[s] + at.pairs[s]);
}

__global__ void moe_group_hist_kernel(int64_t *hist, const char *recv, const __grid_constant__ moe_layout at,
                                      const __grid_constant__ rank_table ret_base, int L, int d) {
    int s = blockIdx.x;
    int4 h = *(const int4 *)(recv + at.msg[s]);
    int64_t cap = ret_base.v[s + 1] - ret_base.v[s];
    if (h.x < 0 || h.y < 0 || h.y > cap || h.z != d) {
        if (threadIdx.x == 0)
            printf("moe exchange: message from rank %d says %d rows, %d pairs, d = %d (room for %lld pairs, d = %d here)\n",
                   s, h.x, h.y, h.z, (long long)cap, d);
        __trap();
    }
    for (int le = threadIdx.x; le < L; le += blockDim.x) hist[(int64_t)s * L + le] = 0;
    __syncthreads();
    const int2 *pr = pairs_of(recv, at, s);
    for (int q = threadIdx.x; q < h.y; q += blockDim.x) {
        int2 pq = pr[q];
        if (pq.x < 0 || pq.x >= h.x || pq.y < 0 || pq.y >= L) {
            printf("moe exchange: pair %d from rank %d names row %d of %d, local expert %d of %d\n", q, s, pq.x, h.x, pq.y, L);
            __trap();
        }
        atomicAdd((unsigned long long *)&hist[(int64_t)s * L + pq.y], 1ull);
    }
}

__global__ void moe_group_base_kernel(int64_t *offsets, int64_t *base, const int64_t *hist, int n_src, int L) {
    if (threadIdx.x != 0) return;
    int64_t row = 0;
    for (int le = 0; le < L; le++) {
        offsets[le] = row;
        for (int s = 0; s < n_src; s++) {
            base[(int64_t)s * L + le] = row;
            row += hist[(int64_t)s * L + le];
        }
    }
    offsets[L] = row;
}

__global__ void moe_group_rank_kernel(int32_t *ret_row, int64_t *base, const char *recv, const __grid_constant__ moe_layout at,
                                      const __grid_constant__ rank_table ret_base, int L) {
    int s = blockIdx.x, lane = threadIdx.x;   // one warp per source
    int4 h = *(const int4 *)(recv + at.msg[s]);
    int64_t cap = ret_base.v[s + 1] - ret_base.v[s];
    const int2 *pr = pairs_of(recv, at, s);
    int64_t *next = base + (int64_t)s * L;   // next xe row of each expert for this source
    unsigned below = (1u << lane) - 1;
    for (int q0 = 0; q0 < h.y; q0 += WARP_LANES) {
        int q = q0 + lane, le = q < h.y ? pr[q].y : -1;
        unsigned peers = __match_any_sync(0xffffffffu, le);   // lanes with the same expert
        int64_t at_row = le >= 0 ? next[le] + __popc(peers & below) : 0;
        __syncwarp();
        if (le >= 0) {
            ret_row[ret_base.v[s] + q] = (int32_t)at_row;
            if ((peers & below) == 0) next[le] += __popc(peers);   // the group's first lane moves on
        }
        __syncwarp();
    }
    for (int64_t q = h.y + lane; q < cap; q += WARP_LANES) ret_row[ret_base.v[s] + q] = -1;
}

// One block per returned slot: the pair's row into its xe row.
__global__ void moe_group_copy_kernel(float *xe, const int32_t *ret_row, const char *recv, const __grid_constant__ moe_layout at,
                                      const __grid_constant__ rank_table ret_base, int n_src, int d) {
    int64_t i = blockIdx.x;
    int32_t to = ret_row[i];
    if (to < 0) return;
    int s = 0;
    while (s + 1 < n_src && ret_base.v[s + 1] <= i) s++;
    int row = pairs_of(recv, at, s)[i - ret_base.v[s]].x;
    const float *src = (const float *)(recv + at.msg[s] + MOE_HEADER_BYTES) + (int64_t)row * d;
    float *dst = xe + (int64_t)to * d;
    for (int c = threadIdx.x; c < d; c += blockDim.x) dst[c] = src[c];
}

void cuda_moe_group(backend *be, float *xe, int64_t *offsets, int32_t *ret_row, const void *recv,
                    const moe_layout *at, const int64_t *ret_base, int n_src, int n_local, int d) {
    cuda_ctx *cx = cuda_of(be);
    CHECK(n_src >= 1 && n_src <= MOE_MAX_RANKS && n_local >= 1);
    rank_table rb;
    memcpy(rb.v, ret_base, ((size_t)n_src + 1) * sizeof(int64_t));
    int64_t *hist = (int64_t *)cuda_scratch(cx, SCR_MOE, (size_t)2 * n_src * n_local * sizeof(int64_t)),
            *base = hist + (size_t)n_src * n_local;
    moe_group_hist_kernel<<<n_src, 256, 0, cx->stream>>>(hist, (const char *)recv, *at, rb, n_local, d);
    cudaCheckLaunch();
    moe_group_base_kernel<<<1, 32, 0, cx->stream>>>(offsets, base, hist, n_src, n_local);
    cudaCheckLaunch();
    moe_group_rank_kernel<<<n_src, WARP_LANES, 0, cx->stream>>>(ret_row, base, (const char *)recv, *at, rb, n_local);
    cudaCheckLaunch();
    if (ret_base[n_src] > 0) {
        moe_group_copy_kernel<<<(unsigned)ret_base[n_src], 128, 0, cx->stream>>>(xe, ret_row, (const char *)recv, *at, rb,
                                                                                   n_src, d);
        cudaCheckLaunch();
    }
}
