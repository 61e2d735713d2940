// MoE ops: router top-k, the combine that sums each token's expert outputs in a fixed order,
// and the grouped expert FFN. The exchange's moves (plan, pack, group) are moe_exchange.cu.
#include "kernels/cuda/cuda_common.cuh"

#include <stdlib.h>

// ---------------------------------------------------------------------------- router
// One thread per token, the CPU's arithmetic in the same order: softmax (max-subtracted,
// summed in expert order), k passes picking the largest probability (ties to the lower
// index), renormalised over the kept ones, written in ascending expert order.
#define ROUTER_MAX_E 256

__global__ void router_topk_kernel(int32_t *expert, float *weight, const float *logits, int n, int E, int k) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float *l = logits + (int64_t)i * E;
    float p[ROUTER_MAX_E];
    unsigned char kept[ROUTER_MAX_E];
    float m = l[0], sum = 0.0f;
    for (int e = 1; e < E; e++) m = l[e] > m ? l[e] : m;
    for (int e = 0; e < E; e++) {
        p[e] = expf(l[e] - m);
        sum += p[e];
    }
    for (int e = 0; e < E; e++) {
        p[e] /= sum;
        kept[e] = 0;
    }
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int e = 0; e < E; e++)
            if (!kept[e] && (best < 0 || p[e] > p[best])) best = e;
        kept[best] = 1;
    }
    float ksum = 0.0f;
    for (int e = 0; e < E; e++)
        if (kept[e]) ksum += p[e];
    int j = 0;
    for (int e = 0; e < E; e++)
        if (kept[e]) {
            expert[(int64_t)i * k + j] = e;
            weight[(int64_t)i * k + j] = p[e] / ksum;
            j++;
        }
}

void cuda_router_topk(backend *be, int32_t *expert, float *weight, const float *logits, int n, int n_experts, int k) {
    cuda_ctx *cx = cuda_of(be);
    CHECK(k >= 1 && k <= n_experts && n_experts <= ROUTER_MAX_E);
    if (n <= 0) return;
    router_topk_kernel<<<grid_for(n, 128), 128, 0, cx->stream>>>(expert, weight, logits, n, n_experts, k);
    cudaCheckLaunch();
}

// ---------------------------------------------------------------------------- combine
// out[t, c] = sum_j weight[t*k + j] * y[ret_base[owner] + pair_slot, c], j in order, one fma
// per term from 0 (the CPU's o += w * y contracts to the same fma): bitwise the CPU's.

__global__ void combine_kernel(float *out, const float *y, const int32_t *expert, const int32_t *pair_slot,
                               const float *weight, const int32_t *owner, const __grid_constant__ rank_table base,
                               int k, int dim, int64_t count) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < count; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t t = i / dim, c = i % dim;
        float o = 0.0f;
        for (int j = 0; j < k; j++) {
            int64_t p = t * k + j;
            int64_t row = base.v[owner[expert[p]]] + pair_slot[p];
            o = fmaf(weight[p], y[row * dim + c], o);
        }
        out[i] = o;
    }
}

void cuda_combine(backend *be, float *out, const float *y, const int32_t *expert, const int32_t *pair_slot,
                  const float *weight, const int64_t *ret_base, int n, int k, int dim, const moe_map *map) {
    cuda_ctx *cx = cuda_of(be);
    if (n <= 0) return;
    rank_table base;
    memcpy(base.v, ret_base, (size_t)map->n_ranks * sizeof(int64_t));
    int64_t count = (int64_t)n * dim;
    combine_kernel<<<grid_capped(cx, count, 256), 256, 0, cx->stream>>>(out, y, expert, pair_slot, weight, map->owner,
                                                                         base, k, dim, count);
    cudaCheckLaunch();
}

// ---------------------------------------------------------------------------- expert FFN
// Rows offsets[e] .. offsets[e+1] of x go through expert e. Each expert's path depends on its
// own row count only (so results do not depend on how many ranks share the experts):
//   - at most GEMV_MAX_TOKENS rows (decode): the small-batch kernel, all such experts of the
//     layer in one launch for gate+up (fused with silu * up) and one for down;
//   - more: GEMMs over all such experts at once: x narrowed to bf16 in one launch, gate and
//     up as one GEMM per expert (their weights are one [2 ff, d] block on the device), SwiGLU
//     and the narrowing of the down projection's input in one launch, the down GEMM straight
//     into the experts' output rows. The GEMMs of all experts go to cuBLAS as one grouped
//     call (cublasGemmGroupedBatchedEx) per projection; "loop" (or a cuBLAS that refuses bf16
//     in, fp32 out for grouped calls) issues one cuBLASLt GEMM per expert instead;
//   - offsets only on the device (the fixed-capacity exchange): the small-batch kernel reads
//     each expert's rows from the device, any number of them in chunks.
// "gemv" sends every count through the small-batch kernel (slow for prefill; for tests and
// the benchmark).

// Each expert's slice of the hidden activations starts at a 16-byte boundary, so whether the
// down projection may use 16-byte loads depends on the expert's own shape only.
static size_t h_slice(int64_t nt, int64_t ff) { return ((size_t)nt * (size_t)ff + 3) / 4 * 4; }

static void check_experts(const expert_set *ex, int64_t d, dtype_t dt) {
    for (int e = 0; e < ex->n_experts; e++) {
        int64_t ff = ex->w1[e].rows;
        CHECK(ex->w1[e].cols == d && ex->w3[e].cols == d && ex->w3[e].rows == ff);
        CHECK(ex->w2[e].rows == d && ex->w2[e].cols == ff);
        CHECK(ex->w1[e].dtype == dt && ex->w3[e].dtype == dt && ex->w2[e].dtype == dt);
    }
}

static void add_gemv_pair(gemv_job **up, gemv_job **down, int *n, int *cap, const expert_set *ex, int e,
                          const float *x, float *out, float *h, int64_t ldh, int nt, const int64_t *row0, const int64_t *row1) {
    int64_t d = ex->w2[e].rows, ff = ex->w1[e].rows;
    if (*n == *cap) {
        *cap = *cap ? 2 * *cap : 16;
        *up = (gemv_job *)xrealloc(*up, (size_t)*cap * sizeof(gemv_job));
        *down = (gemv_job *)xrealloc(*down, (size_t)*cap * sizeof(gemv_job));
    }
    gemv_job *u = &(*up)[*n], *dn = &(*down)[*n];
    (*n)++;
    memset(u, 0, sizeof *u);
    memset(dn, 0, sizeof *dn);
    u->w = ex->w1[e].data; u->ld = ex->w1[e].ld;
    u->w_up = ex->w3[e].data; u->ld_up = ex->w3[e].ld;
    u->rows = ff; u->cols = d; u->x = x; u->ldx = d; u->out = h; u->ldo = ldh; u->n = nt;
    u->row0 = row0; u->row1 = row1;
    dn->w = ex->w2[e].data; dn->ld = ex->w2[e].ld; dn->rows = d; dn->cols = ff;
    dn->x = h; dn->ldx = ldh; dn->out = out; dn->ldo = d; dn->n = nt;
    dn->row0 = row0; dn->row1 = row1;
}

// Experts with at most small_max rows, through the small-batch kernel in token chunks of at
// most GEMV_MAX_TOKENS; every chunk of every expert has its own slice of h, so one launch per
// projection covers them all.
static void experts_gemv(cuda_ctx *cx, float *out, const float *x, const int64_t *offsets, const expert_set *ex,
                         int64_t small_max, dtype_t dt) {
    int E = ex->n_experts;
    int64_t d = ex->w2[0].rows;
    size_t h_total = 0;
    for (int e = 0; e < E; e++) {
        int64_t ne = offsets[e + 1] - offsets[e];
        if (ne > 0 && ne <= small_max) h_total += h_slice(ne < GEMV_MAX_TOKENS ? ne : GEMV_MAX_TOKENS, ex->w1[e].rows);
    }
    float *h = (float *)cuda_scratch(cx, SCR_FFN_H, (h_total ? h_total : 1) * sizeof(float));
    gemv_job *up = NULL, *down = NULL;
    int cap = 0;
    for (int64_t t0 = 0;; t0 += GEMV_MAX_TOKENS) {
        int n = 0, more = 0;
        size_t h_at = 0;
        for (int e = 0; e < E; e++) {
            int64_t ne = offsets[e + 1] - offsets[e], ff = ex->w1[e].rows;
            if (ne <= 0 || ne > small_max || t0 >= ne) continue;
            int nt = (int)(ne - t0 < GEMV_MAX_TOKENS ? ne - t0 : GEMV_MAX_TOKENS);
            more |= t0 + nt < ne;
            float *oe = out + (size_t)(offsets[e] + t0) * (size_t)d;
            if (ff == 0) {   // an expert with no neurons owes zeros
                cudaCheck(cudaMemsetAsync(oe, 0, (size_t)nt * (size_t)d * sizeof(float), cx->stream));
                continue;
            }
            add_gemv_pair(&up, &down, &n, &cap, ex, e, x + (size_t)(offsets[e] + t0) * (size_t)d, oe, h + h_at, ff, nt,
                          NULL, NULL);
            h_at += h_slice(nt, ff);
        }
        gemv_run(cx, up, n, dt, 1);
        gemv_run(cx, down, n, dt, 0);
        if (!more) break;
        // The next chunk reuses h: the launches above are ordered before the next ones.
    }
    free(up);
    free(down);
}

// Zeroes the rows of expert e (read from the device offsets): an expert with no neurons.
__global__ void zero_expert_rows_kernel(float *out, const int64_t *offsets, int e, int64_t d) {
    int64_t r0 = offsets[e], count = (offsets[e + 1] - r0) * d;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < count; i += (int64_t)gridDim.x * blockDim.x)
        out[r0 * d + i] = 0.0f;
}

// The fixed-capacity exchange: row counts only on the device. h is indexed by row (at most
// max_rows rows of the widest expert), each job loops over its expert's rows.
static void experts_gemv_device(cuda_ctx *cx, float *out, const float *x, const int64_t *offsets, int64_t max_rows,
                                const expert_set *ex, dtype_t dt) {
    int E = ex->n_experts;
    int64_t d = ex->w2[0].rows, ldh = 4;
    for (int e = 0; e < E; e++) ldh = ex->w1[e].rows > ldh ? ex->w1[e].rows : ldh;
    ldh = (ldh + 3) / 4 * 4;   // 16-byte rows
    float *h = (float *)cuda_scratch(cx, SCR_FFN_H, (size_t)(max_rows ? max_rows : 1) * (size_t)ldh * sizeof(float));
    gemv_job *up = NULL, *down = NULL;
    int n = 0, cap = 0;
    for (int e = 0; e < E; e++) {
        if (ex->w1[e].rows == 0) {
            zero_expert_rows_kernel<<<grid_capped(cx, max_rows * d, 256), 256, 0, cx->stream>>>(out, offsets, e, d);
            cudaCheckLaunch();
            continue;
        }
        add_gemv_pair(&up, &down, &n, &cap, ex, e, x, out, h, ldh, GEMV_MAX_TOKENS, offsets + e, offsets + e + 1);
    }
    gemv_run(cx, up, n, dt, 1);
    gemv_run(cx, down, n, dt, 0);
    free(up);
    free(down);
}

// ---------------------------------------------------------------------------- GEMMs
// out[t * ldo + r] = act[t * lda, :] . w[r, :] for t < n: one problem of a grouped call.
typedef struct {
    weight_t w;
    const void *act;
    int64_t lda;
    float *out;
    int64_t ldo, n;
} gemm_problem;

// All problems in one cublasGemmGroupedBatchedEx call (one group per problem), in cuBLAS's
// column-major terms the "TN" product of matmul.cu: out^T [rows, n] = W^T-view . act^T.
// 0, or -1 when cuBLAS refuses these types (the caller then loops).
static int gemms_grouped(cuda_ctx *cx, const gemm_problem *g, int count) {
    int *m = (int *)xmalloc((size_t)count * 7 * sizeof(int)), *nn = m + count, *kk = nn + count, *lda = kk + count,
        *ldb = lda + count, *ldc = ldb + count, *size = ldc + count;
    cublasOperation_t *ta = (cublasOperation_t *)xmalloc((size_t)count * 2 * sizeof(cublasOperation_t)), *tb = ta + count;
    float *alpha = (float *)xmalloc((size_t)count * 2 * sizeof(float)), *beta = alpha + count;
    const void **ptrs = (const void **)xmalloc((size_t)count * 3 * sizeof(void *));
    for (int i = 0; i < count; i++) {
        const gemm_problem *p = &g[i];
        CHECK(p->w.rows <= INT32_MAX && p->w.cols <= INT32_MAX && p->n <= INT32_MAX && p->w.ld <= INT32_MAX &&
              p->lda <= INT32_MAX && p->ldo <= INT32_MAX);
        ta[i] = CUBLAS_OP_T;
        tb[i] = CUBLAS_OP_N;
        m[i] = (int)p->w.rows;
        nn[i] = (int)p->n;
        kk[i] = (int)p->w.cols;
        lda[i] = (int)p->w.ld;
        ldb[i] = (int)p->lda;
        ldc[i] = (int)p->ldo;
        size[i] = 1;
        alpha[i] = 1.0f;
        beta[i] = 0.0f;
        ptrs[i] = p->w.data;
        ptrs[count + i] = p->act;
        ptrs[2 * count + i] = p->out;
    }
    // The pointer arrays live on the device (through the argument ring).
    const void *const *dev = (const void *const *)cuda_args(cx, ptrs, (size_t)count * 3 * sizeof(void *));
    cudaDataType_t in = cuda_type(g[0].w.dtype);
    cublasStatus_t st = cublasGemmGroupedBatchedEx(cx->blas, ta, tb, m, nn, kk, alpha, dev, in, lda, dev + count, in, ldb,
                                                   beta, (void *const *)(dev + 2 * count), CUDA_R_32F, ldc, count, size,
                                                   CUBLAS_COMPUTE_32F);
    int m0 = m[0], k0 = kk[0], n0 = nn[0];   // for the message, after the arrays are freed
    free(m); free(ta); free(alpha); free(ptrs);
    if (st == CUBLAS_STATUS_SUCCESS) {
        cx->grouped_ok = 1;
        return 0;
    }
    if (!cx->grouped_ok && (st == CUBLAS_STATUS_NOT_SUPPORTED || st == CUBLAS_STATUS_INVALID_VALUE)) {
        cx->grouped_ok = -1;   // said in the backend's description; the loop runs from now on
        return -1;
    }
    die("cublasGemmGroupedBatchedEx: %s (%d GEMMs, %s in, f32 out; the first [%d x %d] . [%d x %d])",
        cublasGetStatusString(st), count, dtype_name(g[0].w.dtype), m0, k0, k0, n0);
}

static void run_gemms(cuda_ctx *cx, const gemm_problem *g, int count) {
    if (!count) return;
    if (cx->expert_gemm == EXPERT_GEMM_GROUPED && cx->grouped_ok >= 0 && gemms_grouped(cx, g, count) == 0) return;
    for (int i = 0; i < count; i++) lt_gemm(cx, g[i].out, g[i].ldo, g[i].act, g[i].lda, &g[i].w, g[i].n);
}

// silu(g) * u narrowed to the weights' dtype, for every large expert in one launch: expert i
// of the table has rows [0, n) with gu rows of 2 ff (gate, then up) and h rows of ff.
#define SWIGLU_TABLE 64
typedef struct {
    int count;
    int64_t gu_at[SWIGLU_TABLE], h_at[SWIGLU_TABLE], n[SWIGLU_TABLE], ff[SWIGLU_TABLE];
    int64_t first_block[SWIGLU_TABLE + 1];
} swiglu_table;

template <typename HT>
__global__ void swiglu_experts_kernel(HT *h, const float *gu, const __grid_constant__ swiglu_table T) {
    int i = 0;
    while (i + 1 < T.count && T.first_block[i + 1] <= (int64_t)blockIdx.x) i++;
    int64_t count = T.n[i] * T.ff[i], ff = T.ff[i];
    for (int64_t j = ((int64_t)blockIdx.x - T.first_block[i]) * blockDim.x + threadIdx.x; j < count;
         j += (T.first_block[i + 1] - T.first_block[i]) * (int64_t)blockDim.x) {
        int64_t t = j / ff, c = j % ff;
        float g = gu[T.gu_at[i] + t * 2 * ff + c], u = gu[T.gu_at[i] + t * 2 * ff + ff + c];
        h[T.h_at[i] + j] = (HT)cuda_swiglu1(g, u);   // then narrowed
    }
}

static void swiglu_experts(cuda_ctx *cx, void *h, dtype_t dt, const float *gu, swiglu_table *T) {
    if (!T->count) return;
    int64_t blocks = 0;
    for (int i = 0; i < T->count; i++) {
        T->first_block[i] = blocks;
        int64_t b = (T->n[i] * T->ff[i] + 255) / 256;
        blocks += b < 4 * cx->sm_count ? b : 4 * cx->sm_count;
    }
    T->first_block[T->count] = blocks;
    if (dt == DT_BF16) swiglu_experts_kernel<__nv_bfloat16><<<(unsigned)blocks, 256, 0, cx->stream>>>((__nv_bfloat16 *)h, gu, *T);
    else if (dt == DT_F16) swiglu_experts_kernel<__half><<<(unsigned)blocks, 256, 0, cx->stream>>>((__half *)h, gu, *T);
    else swiglu_experts_kernel<float><<<(unsigned)blocks, 256, 0, cx->stream>>>((float *)h, gu, *T);
    cudaCheckLaunch();
    T->count = 0;
}

// Gate and up of one expert as one [2 ff, d] matrix when they lie one after the other.
static int gate_up_fused(const weight_t *w1, const weight_t *w3, weight_t *w13) {
    size_t es = dtype_size(w1->dtype);
    if (w1->ld != w1->cols || w3->ld != w3->cols || (const char *)w3->data != (const char *)w1->data + (size_t)w1->rows * w1->cols * es)
        return 0;
    *w13 = *w1;
    w13->rows = 2 * w1->rows;
    return 1;
}

// Experts with more than small_max rows, through GEMMs.
static void experts_gemm(cuda_ctx *cx, float *out, const float *x, const int64_t *offsets, const expert_set *ex,
                         int64_t small_max, dtype_t dt) {
    int E = ex->n_experts;
    int64_t d = ex->w2[0].rows;
    size_t es = dtype_size(dt);
    int64_t gu_total = 0, h_total = 0, large = 0;
    for (int e = 0; e < E; e++) {
        int64_t ne = offsets[e + 1] - offsets[e], ff = ex->w1[e].rows;
        if (ne <= small_max) continue;
        if (ff == 0) {   // no neurons: zeros
            cudaCheck(cudaMemsetAsync(out + (size_t)offsets[e] * d, 0, (size_t)ne * d * sizeof(float), cx->stream));
            continue;
        }
        gu_total += ne * 2 * ff;
        h_total += (int64_t)h_slice(ne, ff);
        large++;
    }
    if (!large) return;
    // x narrowed once for every row (bf16/f16 weights); F32 weights read x as it is.
    const char *act = (const char *)x;
    if (dt != DT_F32) {
        void *a = cuda_scratch(cx, SCR_ACT16, (size_t)offsets[E] * (size_t)d * es);
        cuda_narrow(cx, a, dt, x, offsets[E] * d);
        act = (const char *)a;
    }
    float *gu = (float *)cuda_scratch(cx, SCR_FFN_GU, (size_t)gu_total * sizeof(float));
    char *h = (char *)cuda_scratch(cx, SCR_ACT16_B, (size_t)h_total * es);
    gemm_problem *g = (gemm_problem *)xcalloc((size_t)2 * large + 1, sizeof(gemm_problem));
    swiglu_table T;
    memset(&T, 0, sizeof T);

    // gate and up: one GEMM per expert into gu rows of 2 ff (two where w1, w3 are apart)
    int count = 0;
    int64_t gu_at = 0, h_at = 0;
    for (int e = 0; e < E; e++) {
        int64_t ne = offsets[e + 1] - offsets[e], ff = ex->w1[e].rows;
        if (ne <= small_max || ff == 0) continue;
        const char *ae = act + (size_t)offsets[e] * d * es;
        weight_t w13;
        if (gate_up_fused(&ex->w1[e], &ex->w3[e], &w13)) {
            g[count++] = (gemm_problem){w13, ae, d, gu + gu_at, 2 * ff, ne};
        } else {
            g[count++] = (gemm_problem){ex->w1[e], ae, d, gu + gu_at, 2 * ff, ne};
            g[count++] = (gemm_problem){ex->w3[e], ae, d, gu + gu_at + ff, 2 * ff, ne};
        }
        gu_at += ne * 2 * ff;
    }
    run_gemms(cx, g, count);

    // silu(gate) * up, narrowed: the down GEMM's input
    gu_at = 0;
    for (int e = 0; e < E; e++) {
        int64_t ne = offsets[e + 1] - offsets[e], ff = ex->w1[e].rows;
        if (ne <= small_max || ff == 0) continue;
        if (T.count == SWIGLU_TABLE) swiglu_experts(cx, h, dt, gu, &T);
        T.gu_at[T.count] = gu_at;
        T.h_at[T.count] = h_at;
        T.n[T.count] = ne;
        T.ff[T.count] = ff;
        T.count++;
        gu_at += ne * 2 * ff;
        h_at += (int64_t)h_slice(ne, ff);
    }
    swiglu_experts(cx, h, dt, gu, &T);

    // down, straight into the experts' output rows
    count = 0;
    h_at = 0;
    for (int e = 0; e < E; e++) {
        int64_t ne = offsets[e + 1] - offsets[e], ff = ex->w1[e].rows;
        if (ne <= small_max || ff == 0) continue;
        g[count++] = (gemm_problem){ex->w2[e], h + (size_t)h_at * es, ff, out + (size_t)offsets[e] * d, d, ne};
        h_at += (int64_t)h_slice(ne, ff);
    }
    run_gemms(cx, g, count);
    free(g);
}

void cuda_expert_ffn(backend *be, float *out, const float *x, const int64_t *offsets, const int64_t *offsets_host,
                     int64_t max_rows, const expert_set *ex) {
    cuda_ctx *cx = cuda_of(be);
    int E = ex->n_experts;
    if (E <= 0) return;
    int64_t d = ex->w2[0].rows;
    dtype_t dt = ex->w1[0].dtype;
    check_experts(ex, d, dt);
    if (!offsets_host) {
        if (max_rows > 0) experts_gemv_device(cx, out, x, offsets, max_rows, ex, dt);
        return;
    }
    if (offsets_host[E] <= offsets_host[0]) return;
    int64_t small_max = cx->expert_gemm == EXPERT_GEMM_GEMV ? INT64_MAX : GEMV_MAX_TOKENS;
    experts_gemv(cx, out, x, offsets_host, ex, small_max, dt);
    experts_gemm(cx, out, x, offsets_host, ex, small_max, dt);
}
