// Causal grouped-query attention over the fp32 KV cache, and the cache write.
//
// One kernel for prefill and decode. The host cuts the batch into tiles of consecutive tokens
// of one sequence (slot), at most ATT_ROWS query rows each (tokens x the query heads of one KV
// head). A block takes one tile, one KV head and one range of key positions: it streams the
// keys in chunks of ATT_TK through shared memory with an online softmax (running max and sum
// per row), so the score matrix is never materialised and every K/V row loaded serves all the
// rows of the tile. Prefill tiles share each key chunk among up to ATT_ROWS / group tokens.
// Decode (few tiles, long contexts) splits the key range over several blocks (flash-decoding)
// whose partial (max, sum, output) are merged by a second kernel.
//
// Numerics: fp32 throughout. A row's keys are visited in the same chunks whatever its tile
// holds (chunks past its position leave its state bitwise unchanged), so without a split a
// token's output does not depend on the batch; the number of splits depends on the number of
// tiles and the longest context, so decode results can depend on the batch in the last bits.
#include "kernels/cuda/cuda_common.cuh"

#include <stdlib.h>

#define ATT_TK 32          // keys per chunk (= warp size: one lane per key in the softmax update)
#define ATT_ROWS 32        // query rows per tile
#define ATT_THREADS 256
#define ATT_MAX_SPLIT 64
#define ATT_MAX_HEAD_DIM 256

// ---------------------------------------------------------------------------- kv_write
__global__ void kv_write_kernel(float *kc, float *vc, const float *k, const float *v, const int32_t *slot,
                                const int32_t *pos, int kv_dim, int64_t slot_stride, int64_t count) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < count; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t t = i / kv_dim, j = i % kv_dim;
        int64_t at = (int64_t)slot[t] * slot_stride + (int64_t)pos[t] * kv_dim + j;
        kc[at] = k[i];
        vc[at] = v[i];
    }
}

void cuda_kv_write(backend *be, float *k_cache, float *v_cache, const float *k, const float *v,
                   const int32_t *slot, const int32_t *pos, int n, int kv_dim, int64_t slot_stride) {
    cuda_ctx *cx = cuda_of(be);
    if (n <= 0) return;
    const int32_t *d_slot = (const int32_t *)cuda_args(cx, slot, (size_t)n * sizeof(int32_t));
    const int32_t *d_pos = (const int32_t *)cuda_args(cx, pos, (size_t)n * sizeof(int32_t));
    int64_t count = (int64_t)n * kv_dim;
    kv_write_kernel<<<grid_capped(cx, count, 256), 256, 0, cx->stream>>>(k_cache, v_cache, k, v, d_slot, d_pos, kv_dim,
                                                                  slot_stride, count);
    cudaCheckLaunch();
}

// ---------------------------------------------------------------------------- attention
typedef struct { int first, count, slot, max_pos; } att_tile;

typedef struct {
    float *out, *partial;
    const float *q, *kc, *vc;
    const att_tile *tiles;
    const int32_t *pos;          // per token
    int n_heads, n_kv_heads, group, hd, kv_dim, nsplit, split_len;
    int64_t slot_stride;
    float scale;
} att_args;

// Shared memory, in floats: Q [ATT_ROWS][hd], K [ATT_TK][hd + 1] (odd stride: the score loop
// reads one row per lane without bank conflicts), V [ATT_TK][hd], P [ATT_ROWS][ATT_TK + 1],
// O [ATT_ROWS][hd], and per row m, l, alpha.
static size_t att_smem_floats(int hd) {
    return (size_t)ATT_ROWS * hd + (size_t)ATT_TK * (hd + 1) + (size_t)ATT_TK * hd +
           (size_t)ATT_ROWS * (ATT_TK + 1) + (size_t)ATT_ROWS * hd + 3 * ATT_ROWS;
}

// Partial layout per (tile, kv head, split): ATT_ROWS rows of [hd outputs, m, l].
__global__ void __launch_bounds__(ATT_THREADS) attention_kernel(const att_args a) {
    const att_tile tile = a.tiles[blockIdx.x];
    const int g = blockIdx.y, s = blockIdx.z, hd = a.hd, group = a.group;
    const int R = tile.count * group;
    const int k0 = s * a.split_len;
    const int k1 = min(k0 + a.split_len, tile.max_pos + 1);
    extern __shared__ float sm[];
    float *Q = sm, *K = Q + ATT_ROWS * hd, *V = K + ATT_TK * (hd + 1), *P = V + ATT_TK * hd;
    float *O = P + ATT_ROWS * (ATT_TK + 1), *M = O + ATT_ROWS * hd, *L = M + ATT_ROWS, *A = L + ATT_ROWS;
    const int tid = threadIdx.x, lane = tid % WARP_LANES, warp = tid / WARP_LANES;
    const int q_dim = a.n_heads * hd;

    for (int i = tid; i < R * hd; i += ATT_THREADS) {
        int r = i / hd, j = i % hd, t = tile.first + r / group, h = g * group + r % group;
        Q[i] = a.q[(int64_t)t * q_dim + (int64_t)h * hd + j] * a.scale;
        O[i] = 0.0f;
    }
    for (int r = tid; r < R; r += ATT_THREADS) {
        M[r] = -INFINITY;
        L[r] = 0.0f;
    }
    const float *kb = a.kc + (int64_t)tile.slot * a.slot_stride + (int64_t)g * hd;
    const float *vb = a.vc + (int64_t)tile.slot * a.slot_stride + (int64_t)g * hd;
    __syncthreads();

    for (int kt = k0; kt < k1; kt += ATT_TK) {
        const int nk = min(ATT_TK, k1 - kt);
        for (int i = tid; i < nk * hd; i += ATT_THREADS) {
            int p = i / hd, j = i % hd;
            int64_t at = (int64_t)(kt + p) * a.kv_dim + j;
            K[p * (hd + 1) + j] = kb[at];
            V[p * hd + j] = vb[at];
        }
        __syncthreads();
        // scores: one (row, key) per thread step; a warp shares its row (Q broadcast)
        for (int i = tid; i < R * ATT_TK; i += ATT_THREADS) {
            int r = i / ATT_TK, p = i % ATT_TK;
            float sc = -INFINITY;
            if (p < nk && kt + p <= a.pos[tile.first + r / group]) {
                const float *qr = Q + r * hd, *kr = K + p * (hd + 1);
                float d = 0.0f;
                for (int j = 0; j < hd; j++) d = fmaf(qr[j], kr[j], d);
                sc = d;
            }
            P[r * (ATT_TK + 1) + p] = sc;
        }
        __syncthreads();
        // online softmax update: one warp per row, one lane per key
        for (int r = warp; r < R; r += ATT_THREADS / WARP_LANES) {
            float v = P[r * (ATT_TK + 1) + lane];
            float m_old = M[r], m_new = fmaxf(m_old, warp_max(v));
            float p = m_new == -INFINITY ? 0.0f : expf(v - m_new);
            float alpha = m_new == -INFINITY ? 1.0f : expf(m_old - m_new);
            float ps = warp_sum(p);
            P[r * (ATT_TK + 1) + lane] = p;
            if (lane == 0) {
                L[r] = L[r] * alpha + ps;
                M[r] = m_new;
                A[r] = alpha;
            }
        }
        __syncthreads();
        for (int i = tid; i < R * hd; i += ATT_THREADS) {
            int r = i / hd, j = i % hd;
            float o = O[i] * A[r];
            const float *pr = P + r * (ATT_TK + 1);
            for (int p = 0; p < nk; p++) o = fmaf(pr[p], V[p * hd + j], o);
            O[i] = o;
        }
        __syncthreads();
    }

    if (a.nsplit == 1) {
        for (int i = tid; i < R * hd; i += ATT_THREADS) {
            int r = i / hd, j = i % hd, t = tile.first + r / group, h = g * group + r % group;
            a.out[(int64_t)t * q_dim + (int64_t)h * hd + j] = L[r] > 0.0f ? O[i] / L[r] : 0.0f;
        }
    } else {
        float *part = a.partial + (((int64_t)blockIdx.x * a.n_kv_heads + g) * a.nsplit + s) * ATT_ROWS * (hd + 2);
        for (int i = tid; i < R * hd; i += ATT_THREADS) part[(i / hd) * (hd + 2) + i % hd] = O[i];
        for (int r = tid; r < R; r += ATT_THREADS) {
            part[r * (hd + 2) + hd] = M[r];
            part[r * (hd + 2) + hd + 1] = L[r];
        }
    }
}

// Merges the splits of one (tile, kv head): out = sum_s O_s e^(m_s - M) / sum_s l_s e^(m_s - M).
__global__ void attention_merge_kernel(const att_args a) {
    const att_tile tile = a.tiles[blockIdx.x];
    const int g = blockIdx.y, hd = a.hd, R = tile.count * a.group, q_dim = a.n_heads * hd;
    const float *base = a.partial + ((int64_t)blockIdx.x * a.n_kv_heads + g) * a.nsplit * ATT_ROWS * (hd + 2);
    const int64_t split_stride = (int64_t)ATT_ROWS * (hd + 2);
    for (int i = threadIdx.x; i < R * hd; i += blockDim.x) {
        int r = i / hd, j = i % hd;
        float M = -INFINITY;
        for (int s = 0; s < a.nsplit; s++) M = fmaxf(M, base[s * split_stride + r * (hd + 2) + hd]);
        float o = 0.0f, l = 0.0f;
        for (int s = 0; s < a.nsplit; s++) {
            const float *pr = base + s * split_stride + r * (hd + 2);
            if (pr[hd] == -INFINITY) continue;   // no key of this split was visible to the row
            float w = expf(pr[hd] - M);
            o = fmaf(pr[j], w, o);
            l = fmaf(pr[hd + 1], w, l);
        }
        int t = tile.first + r / a.group, h = g * a.group + r % a.group;
        a.out[(int64_t)t * q_dim + (int64_t)h * hd + j] = l > 0.0f ? o / l : 0.0f;
    }
}

void cuda_attention(backend *be, float *out, const float *q, const float *k_cache, const float *v_cache,
                    const int32_t *slot, const int32_t *pos, int n,
                    int n_heads, int n_kv_heads, int head_dim, int64_t slot_stride) {
    cuda_ctx *cx = cuda_of(be);
    if (n <= 0) return;
    CHECK(n_kv_heads > 0 && n_heads % n_kv_heads == 0);
    int group = n_heads / n_kv_heads;
    if (group > ATT_ROWS) die("cuda attention: %d query heads per KV head (at most %d)", group, ATT_ROWS);
    if (head_dim > ATT_MAX_HEAD_DIM) die("cuda attention: head_dim %d (at most %d)", head_dim, ATT_MAX_HEAD_DIM);
    int per_tile = ATT_ROWS / group;

    // Tiles of consecutive tokens of one slot.
    att_tile *tiles = (att_tile *)xmalloc((size_t)n * sizeof(att_tile));
    int n_tiles = 0, max_pos = 0;
    for (int i = 0; i < n; i++) {
        att_tile *t = n_tiles ? &tiles[n_tiles - 1] : NULL;
        if (!t || t->slot != slot[i] || t->count == per_tile) {
            tiles[n_tiles++] = (att_tile){i, 0, slot[i], 0};
            t = &tiles[n_tiles - 1];
        }
        t->count++;
        if (pos[i] > t->max_pos) t->max_pos = pos[i];
        if (pos[i] > max_pos) max_pos = pos[i];
    }
    // Split the keys when the tiles alone leave most of the GPU idle.
    int blocks = n_tiles * n_kv_heads, len = max_pos + 1, nsplit = 1;
    if (blocks < 2 * cx->sm_count && len > 4 * ATT_TK) {
        nsplit = (2 * cx->sm_count + blocks - 1) / blocks;
        int by_len = (len + 4 * ATT_TK - 1) / (4 * ATT_TK);   // at least 4 chunks per split
        nsplit = nsplit < by_len ? nsplit : by_len;
        nsplit = nsplit < ATT_MAX_SPLIT ? nsplit : ATT_MAX_SPLIT;
    }
    int split_len = (len + nsplit - 1) / nsplit;
    split_len = (split_len + ATT_TK - 1) / ATT_TK * ATT_TK;
    nsplit = (len + split_len - 1) / split_len;

    att_args a;
    memset(&a, 0, sizeof a);
    a.out = out;
    a.q = q;
    a.kc = k_cache;
    a.vc = v_cache;
    a.tiles = (const att_tile *)cuda_args(cx, tiles, (size_t)n_tiles * sizeof(att_tile));
    a.pos = (const int32_t *)cuda_args(cx, pos, (size_t)n * sizeof(int32_t));
    a.n_heads = n_heads;
    a.n_kv_heads = n_kv_heads;
    a.group = group;
    a.hd = head_dim;
    a.kv_dim = n_kv_heads * head_dim;
    a.nsplit = nsplit;
    a.split_len = split_len;
    a.slot_stride = slot_stride;
    a.scale = 1.0f / sqrtf((float)head_dim);
    if (nsplit > 1)
        a.partial = (float *)cuda_scratch(cx, SCR_ATT, (size_t)blocks * nsplit * ATT_ROWS * (head_dim + 2) * sizeof(float));
    free(tiles);

    size_t smem = att_smem_floats(head_dim) * sizeof(float);
    if (smem > cx->att_smem_allowed) {
        cudaCheck(cudaFuncSetAttribute(attention_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        cx->att_smem_allowed = smem;
    }
    attention_kernel<<<dim3(n_tiles, n_kv_heads, nsplit), ATT_THREADS, smem, cx->stream>>>(a);
    cudaCheckLaunch();
    if (nsplit > 1) {
        attention_merge_kernel<<<dim3(n_tiles, n_kv_heads), 256, 0, cx->stream>>>(a);
        cudaCheckLaunch();
    }
}
