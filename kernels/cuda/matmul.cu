// matmul: out[n, rows] = x[n, cols] . W^T, and the GEMM helpers the expert FFN shares.
//
// Two regimes:
//   - n <= GEMV_MAX_TOKENS (decode): a bandwidth-bound kernel that streams W once with 16-byte
//     loads and applies it to up to 8 token rows held in L1/L2. One warp (or 2-4 warps for
//     matrices with few rows) per output row; each lane accumulates its columns in order with
//     fma and the warp reduces in a fixed tree, so a token's result does not depend on n.
//   - larger n (prefill): cuBLASLt, x narrowed to W's dtype (bf16) first, fp32 accumulation
//     and fp32 output; descriptors and the heuristic's algorithm cached per shape. Results
//     then depend on the algorithm cuBLASLt picks for the shape (so on n); the pointer
//     alignment given to the heuristic is capped at 16 bytes so that it does not change the
//     choice between calls of the same shape.
#include "kernels/cuda/cuda_common.cuh"

#include <stdlib.h>

// ---------------------------------------------------------------------------- GEMV kernel
#define GEMV_WARPS 8
#define GEMV_THREADS (GEMV_WARPS * WARP_LANES)
#define GEMV_MAX_JOBS 16   // jobs passed by value in one launch

typedef struct { gemv_job job[GEMV_MAX_JOBS]; int n_jobs; } gemv_launch;

template <typename WT> struct wvec;   // 16 bytes of weights as floats
template <> struct wvec<__nv_bfloat16> {
    static constexpr int N = 8;
    static __device__ __forceinline__ void load(const void *p, float *f) {
        uint4 u = __ldg((const uint4 *)p);
        uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            f[2 * i] = __uint_as_float(w[i] << 16);
            f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
        }
    }
};
template <> struct wvec<__half> {
    static constexpr int N = 8;
    static __device__ __forceinline__ void load(const void *p, float *f) {
        uint4 u = __ldg((const uint4 *)p);
        const __half2 *h = (const __half2 *)&u;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            float2 v = __half22float2(h[i]);
            f[2 * i] = v.x;
            f[2 * i + 1] = v.y;
        }
    }
};
template <> struct wvec<float> {
    static constexpr int N = 4;
    static __device__ __forceinline__ void load(const void *p, float *f) {
        float4 v = __ldg((const float4 *)p);
        f[0] = v.x; f[1] = v.y; f[2] = v.z; f[3] = v.w;
    }
};
template <typename WT> __device__ __forceinline__ float wscalar(const WT *p);
template <> __device__ __forceinline__ float wscalar(const __nv_bfloat16 *p) { return __bfloat162float(*p); }
template <> __device__ __forceinline__ float wscalar(const __half *p) { return __half2float(*p); }
template <> __device__ __forceinline__ float wscalar(const float *p) { return *p; }

// acc[t] += W[r, columns of this lane] . x_t[same columns] for t < NT. Tokens past n reuse
// the last row (loads stay in bounds; their results are dropped).
template <typename WT, int NT>
static __device__ __forceinline__ void gemv_row(float *acc, const WT *wr, const gemv_job &J, int part, int lane) {
    constexpr int V = wvec<WT>::N;
    const float *xt[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) xt[t] = J.x + (int64_t)(t < J.n ? t : J.n - 1) * J.ldx;
    if (J.vec) {
        const int64_t step = (int64_t)J.ksplit * WARP_LANES * V;
#pragma unroll 4
        for (int64_t c = ((int64_t)part * WARP_LANES + lane) * V; c < J.cols; c += step) {
            float w[V];
            wvec<WT>::load(wr + c, w);
#pragma unroll
            for (int t = 0; t < NT; t++) {
#pragma unroll
                for (int i = 0; i < V; i += 4) {
                    float4 xv = *(const float4 *)(xt[t] + c + i);
                    acc[t] = fmaf(w[i], xv.x, acc[t]);
                    acc[t] = fmaf(w[i + 1], xv.y, acc[t]);
                    acc[t] = fmaf(w[i + 2], xv.z, acc[t]);
                    acc[t] = fmaf(w[i + 3], xv.w, acc[t]);
                }
            }
        }
    } else {
        for (int64_t c = (int64_t)part * WARP_LANES + lane; c < J.cols; c += (int64_t)J.ksplit * WARP_LANES) {
            float w = wscalar(wr + c);
#pragma unroll
            for (int t = 0; t < NT; t++) acc[t] = fmaf(w, xt[t][c], acc[t]);
        }
    }
}

// Tokens x[0 .. n) of a job through the block's rows (all threads of the block call it).
template <typename WT, int NT, bool SWIGLU>
static __device__ __forceinline__ void gemv_block(const gemv_job &J, const float *x, float *out, int n) {
    int warp = threadIdx.x / WARP_LANES, lane = threadIdx.x % WARP_LANES;
    int rows_per_block = GEMV_WARPS / J.ksplit;
    int64_t r = (int64_t)((int)blockIdx.x - J.first_block) * rows_per_block + warp / J.ksplit;
    int part = warp % J.ksplit;
    gemv_job T = J;   // this chunk of tokens
    T.x = x;
    T.n = n;
    float acc[NT], acc_up[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = acc_up[t] = 0.0f;
    if (r < J.rows) {
        gemv_row<WT, NT>(acc, (const WT *)J.w + r * J.ld, T, part, lane);
        if (SWIGLU) gemv_row<WT, NT>(acc_up, (const WT *)J.w_up + r * J.ld_up, T, part, lane);
    }
    __shared__ float red[GEMV_WARPS][NT], red_up[GEMV_WARPS][NT];
#pragma unroll
    for (int t = 0; t < NT; t++) {
        float s = warp_sum(acc[t]);
        if (lane == 0) red[warp][t] = s;
        if (SWIGLU) {
            float u = warp_sum(acc_up[t]);
            if (lane == 0) red_up[warp][t] = u;
        }
    }
    __syncthreads();
    if (part == 0 && r < J.rows && lane < n) {
        float g = 0.0f, u = 0.0f;
        for (int p = 0; p < J.ksplit; p++) {
            g += red[warp + p][lane];
            if (SWIGLU) u += red_up[warp + p][lane];
        }
        if (SWIGLU) g = cuda_swiglu1(g, u);
        out[(int64_t)lane * J.ldo + r] = g;
    }
    __syncthreads();   // red is reused by the next chunk
}

// One launch over a list of jobs: block b belongs to the last job whose first_block <= b.
// Block = GEMV_WARPS warps = GEMV_WARPS / ksplit rows; the ksplit warps of a row add their
// partial sums in warp order. A job with device row bounds loops over its tokens in chunks.
template <typename WT, int NT, bool SWIGLU>
__global__ void __launch_bounds__(GEMV_THREADS) gemv_kernel(const __grid_constant__ gemv_launch L) {
    int j = 0;
    while (j + 1 < L.n_jobs && L.job[j + 1].first_block <= (int)blockIdx.x) j++;
    const gemv_job &J = L.job[j];
    if (!J.row0) {
        gemv_block<WT, NT, SWIGLU>(J, J.x, J.out, J.n);
        return;
    }
    int64_t r0 = *J.row0, r1 = *J.row1;
    for (int64_t t = r0; t < r1; t += NT)
        gemv_block<WT, NT, SWIGLU>(J, J.x + t * J.ldx, J.out + t * J.ldo, (int)(r1 - t < NT ? r1 - t : NT));
}

static int aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

int gemv_job_prepare(gemv_job *j, dtype_t dt) {
    CHECK(j->row0 || (j->n >= 1 && j->n <= GEMV_MAX_TOKENS));
    // Few rows: split each row's columns over more warps to keep enough loads in flight.
    j->ksplit = j->rows >= 8192 ? 1 : j->rows >= 2048 ? 2 : 4;
    int v = dt == DT_F32 ? 4 : 8;
    j->vec = j->cols % v == 0 && j->ld % v == 0 && aligned16(j->w) && j->ldx % 4 == 0 && aligned16(j->x) &&
             (!j->w_up || (j->ld_up % v == 0 && aligned16(j->w_up)));
    return (int)((j->rows + GEMV_WARPS / j->ksplit - 1) / (GEMV_WARPS / j->ksplit));
}

template <typename WT, bool SWIGLU>
static void gemv_launch_nt(cudaStream_t s, const gemv_launch &L, int blocks, int nt) {
    if (nt == 1) gemv_kernel<WT, 1, SWIGLU><<<blocks, GEMV_THREADS, 0, s>>>(L);
    else if (nt == 2) gemv_kernel<WT, 2, SWIGLU><<<blocks, GEMV_THREADS, 0, s>>>(L);
    else if (nt <= 4) gemv_kernel<WT, 4, SWIGLU><<<blocks, GEMV_THREADS, 0, s>>>(L);
    else gemv_kernel<WT, 8, SWIGLU><<<blocks, GEMV_THREADS, 0, s>>>(L);
    cudaCheckLaunch();
}

template <typename WT>
static void gemv_launch_dt(cudaStream_t s, const gemv_launch &L, int blocks, int nt, int swiglu) {
    if (swiglu) gemv_launch_nt<WT, true>(s, L, blocks, nt);
    else gemv_launch_nt<WT, false>(s, L, blocks, nt);
}

void gemv_run(cuda_ctx *cx, gemv_job *jobs, int n_jobs, dtype_t dt, int swiglu) {
    for (int j0 = 0; j0 < n_jobs; j0 += GEMV_MAX_JOBS) {
        gemv_launch L;
        memset(&L, 0, sizeof L);
        int blocks = 0, nt = 1;
        for (int j = j0; j < n_jobs && j < j0 + GEMV_MAX_JOBS; j++) {
            gemv_job *J = &jobs[j];
            int b = gemv_job_prepare(J, dt);
            J->first_block = blocks;
            blocks += b;
            int jn = J->row0 ? GEMV_MAX_TOKENS : J->n;   // device counts: chunks of the most tokens
            if (jn > nt) nt = jn;
            L.job[L.n_jobs++] = *J;
        }
        if (!blocks) continue;
        if (dt == DT_BF16) gemv_launch_dt<__nv_bfloat16>(cx->stream, L, blocks, nt, swiglu);
        else if (dt == DT_F16) gemv_launch_dt<__half>(cx->stream, L, blocks, nt, swiglu);
        else gemv_launch_dt<float>(cx->stream, L, blocks, nt, swiglu);
    }
}

// ---------------------------------------------------------------------------- cuBLASLt
// The product in column-major terms: D[rows, n] = W^T-view . act, where W [rows, cols] with
// row stride ld is a column-major [cols, rows] matrix with leading dimension ld (op T), act
// [n, cols] with row stride lda is column-major [cols, n] (op N), and out [n, rows] with row
// stride ldo is column-major [rows, n]: the "TN" GEMM, cuBLASLt's fastest layout.
#define LT_CACHE 512
#define LT_WORKSPACE ((size_t)32 << 20)

typedef struct {
    int64_t rows, cols, n, ld, lda, ldo;
    int dtype, align_w, align_a, align_o;
} lt_key;

typedef struct {
    lt_key key;
    int used;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t lw, la, lo;
    cublasLtMatmulAlgo_t algo;
} lt_entry;

struct lt_plans {
    lt_entry *entry;         // [LT_CACHE]
    int used;
    void *workspace;
};

lt_plans *lt_plans_new(void) {
    lt_plans *p = (lt_plans *)xcalloc(1, sizeof *p);
    p->entry = (lt_entry *)xcalloc(LT_CACHE, sizeof(lt_entry));
    cudaCheck(cudaMalloc(&p->workspace, LT_WORKSPACE));
    return p;
}

static int align_of(const void *p) {   // capped at 16 bytes: see the top of this file
    uintptr_t a = (uintptr_t)p;
    return (a & 15) == 0 ? 16 : (a & 7) == 0 ? 8 : (a & 3) == 0 ? 4 : 2;
}

static uint64_t lt_hash(const lt_key *k) {
    const unsigned char *p = (const unsigned char *)k;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < sizeof *k; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

static void lt_entry_free(lt_entry *e) {
    if (!e->used) return;
    cublasLtMatmulDescDestroy(e->op);
    cublasLtMatrixLayoutDestroy(e->lw);
    cublasLtMatrixLayoutDestroy(e->la);
    cublasLtMatrixLayoutDestroy(e->lo);
    e->used = 0;
}

void lt_plans_free(lt_plans *p) {
    if (!p) return;
    for (int i = 0; i < LT_CACHE; i++) lt_entry_free(&p->entry[i]);
    cudaFree(p->workspace);
    free(p->entry);
    free(p);
}

cudaDataType_t cuda_type(dtype_t dt) {
    return dt == DT_BF16 ? CUDA_R_16BF : dt == DT_F16 ? CUDA_R_16F : CUDA_R_32F;
}

static void lt_describe(char *buf, size_t len, const lt_key *k) {
    snprintf(buf, len, "out[%lld x %lld] (ld %lld, f32, align %d) = act[%lld x %lld] (ld %lld, %s, align %d) . W^T, "
             "W [%lld x %lld] (ld %lld, %s, align %d)", (long long)k->n, (long long)k->rows, (long long)k->ldo, k->align_o,
             (long long)k->n, (long long)k->cols, (long long)k->lda, dtype_name((dtype_t)k->dtype), k->align_a,
             (long long)k->rows, (long long)k->cols, (long long)k->ld, dtype_name((dtype_t)k->dtype), k->align_w);
}

static lt_entry *lt_plan(cuda_ctx *cx, const lt_key *k) {
    lt_plans *p = cx->plans;
    // Open addressing; a full table is emptied (shapes repeat: it refills at once).
    if (p->used >= LT_CACHE * 3 / 4) {
        for (int i = 0; i < LT_CACHE; i++) lt_entry_free(&p->entry[i]);
        p->used = 0;
    }
    uint64_t h = lt_hash(k);
    lt_entry *e = NULL;
    for (int i = 0; i < LT_CACHE; i++) {
        lt_entry *c = &p->entry[(h + i) % LT_CACHE];
        if (c->used && !memcmp(&c->key, k, sizeof *k)) return c;
        if (!c->used) { e = c; break; }
    }
    CHECK(e);
    memset(e, 0, sizeof *e);
    e->key = *k;
    cudaDataType_t in = cuda_type((dtype_t)k->dtype);
    cublasCheck(cublasLtMatmulDescCreate(&e->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t tw = CUBLAS_OP_T, ta = CUBLAS_OP_N;
    cublasCheck(cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_TRANSA, &tw, sizeof tw));
    cublasCheck(cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_TRANSB, &ta, sizeof ta));
    cublasCheck(cublasLtMatrixLayoutCreate(&e->lw, in, (uint64_t)k->cols, (uint64_t)k->rows, k->ld));
    cublasCheck(cublasLtMatrixLayoutCreate(&e->la, in, (uint64_t)k->cols, (uint64_t)k->n, k->lda));
    cublasCheck(cublasLtMatrixLayoutCreate(&e->lo, CUDA_R_32F, (uint64_t)k->rows, (uint64_t)k->n, k->ldo));

    cublasLtMatmulPreference_t pref;
    cublasCheck(cublasLtMatmulPreferenceCreate(&pref));
    size_t ws = LT_WORKSPACE;
    uint32_t aw = (uint32_t)k->align_w, aa = (uint32_t)k->align_a, ao = (uint32_t)k->align_o;
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aw, sizeof aw));
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &aa, sizeof aa));
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ao, sizeof ao));
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ao, sizeof ao));
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(cx->lt, e->op, e->lw, e->la, e->lo, e->lo, pref, 1, &res, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (st != CUBLAS_STATUS_SUCCESS || !found) {
        char what[512];
        lt_describe(what, sizeof what, k);
        die("cuBLASLt matmul heuristic: %s for %s", st != CUBLAS_STATUS_SUCCESS ? cublasGetStatusString(st) : "no algorithm", what);
    }
    e->algo = res.algo;
    e->used = 1;
    p->used++;
    return e;
}

void lt_gemm(cuda_ctx *cx, float *out, int64_t ldo, const void *act, int64_t lda, const weight_t *w, int64_t n) {
    if (n <= 0 || w->rows <= 0) return;
    if (w->cols <= 0) {   // an empty sum
        cudaCheck(cudaMemset2DAsync(out, (size_t)ldo * sizeof(float), 0, (size_t)w->rows * sizeof(float), (size_t)n, cx->stream));
        return;
    }
    lt_key k;
    memset(&k, 0, sizeof k);   // padding takes part in the hash and compare
    k.rows = w->rows; k.cols = w->cols; k.n = n; k.ld = w->ld; k.lda = lda; k.ldo = ldo;
    k.dtype = (int)w->dtype;
    k.align_w = align_of(w->data); k.align_a = align_of(act); k.align_o = align_of(out);
    lt_entry *e = lt_plan(cx, &k);
    const float one = 1.0f, zero = 0.0f;
    cublasStatus_t st = cublasLtMatmul(cx->lt, e->op, &one, w->data, e->lw, act, e->la, &zero, out, e->lo, out, e->lo,
                                       &e->algo, cx->plans->workspace, LT_WORKSPACE, cx->stream);
    if (st != CUBLAS_STATUS_SUCCESS) {
        char what[512];
        lt_describe(what, sizeof what, &k);
        die("cuBLASLt matmul: %s for %s", cublasGetStatusString(st), what);
    }
}

// ---------------------------------------------------------------------------- the op
void cuda_matmul(backend *be, float *out, const float *x, const weight_t *w, int n) {
    cuda_ctx *cx = cuda_of(be);
    if (n <= 0 || w->rows <= 0) return;
    if (n <= GEMV_MAX_TOKENS) {
        gemv_job j;
        memset(&j, 0, sizeof j);
        j.w = w->data; j.ld = w->ld; j.rows = w->rows; j.cols = w->cols;
        j.x = x; j.ldx = w->cols; j.out = out; j.ldo = w->rows; j.n = n;
        gemv_run(cx, &j, 1, w->dtype, 0);
        return;
    }
    const void *act = x;
    if (w->dtype != DT_F32) {
        void *a16 = cuda_scratch(cx, SCR_ACT16, (size_t)n * (size_t)w->cols * 2);
        cuda_narrow(cx, a16, w->dtype, x, (int64_t)n * w->cols);
        act = a16;
    }
    lt_gemm(cx, out, w->rows, act, w->cols, w, n);
}
