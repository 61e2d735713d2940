// MoE ops: router top-k, the combine that sums each token's expert outputs in a fixed order,
// and the grouped expert FFN.
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

// expert and weight are host arrays (the dispatch plans on the host): this op waits.
void cuda_router_topk(int32_t *expert, float *weight, const float *logits, int n, int n_experts, int k) {
    CHECK(k >= 1 && k <= n_experts && n_experts <= ROUTER_MAX_E);
    if (n <= 0) return;
    size_t pairs = (size_t)n * k;
    char *d = (char *)cuda_scratch(SCR_SMALL_OUT, pairs * (sizeof(int32_t) + sizeof(float)));
    int32_t *d_expert = (int32_t *)d;
    float *d_weight = (float *)(d + pairs * sizeof(int32_t));
    router_topk_kernel<<<grid_for(n, 128), 128, 0, cuda_stream()>>>(d_expert, d_weight, logits, n, n_experts, k);
    cudaCheckLaunch();
    cudaCheck(cudaMemcpyAsync(expert, d_expert, pairs * sizeof(int32_t), cudaMemcpyDeviceToHost, cuda_stream()));
    cuda_download_now(weight, d_weight, pairs * sizeof(float));
}

// ---------------------------------------------------------------------------- combine
// out[t, c] = sum_j weight[t*k + j] * y[row[t*k + j], c], j in order, one fma per term (the
// CPU's o += w * y contracts to the same fma).
__global__ void combine_kernel(float *out, const float *y, const int32_t *row, const float *weight, int k, int dim, int64_t count) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < count; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t t = i / dim, c = i % dim;
        float o = 0.0f;
        for (int j = 0; j < k; j++) o = fmaf(weight[t * k + j], y[(int64_t)row[t * k + j] * dim + c], o);
        out[i] = o;
    }
}

void cuda_combine(float *out, const float *y, const int32_t *row, const float *weight, int n, int k, int dim) {
    if (n <= 0) return;
    size_t pairs = (size_t)n * k;
    const int32_t *d_row = (const int32_t *)cuda_args(row, pairs * sizeof(int32_t));
    const float *d_weight = (const float *)cuda_args(weight, pairs * sizeof(float));
    int64_t count = (int64_t)n * dim;
    unsigned g = grid_for(count, 256), cap = (unsigned)cuda_sm_count() * 16;
    combine_kernel<<<g < cap ? g : cap, 256, 0, cuda_stream()>>>(out, y, d_row, d_weight, k, dim, count);
    cudaCheckLaunch();
}

// ---------------------------------------------------------------------------- expert FFN
// Rows offsets[e] .. offsets[e+1] of x go through expert e. Each expert's path depends on its
// own token count only (so results do not depend on how many ranks share the experts):
//   - at most GEMV_MAX_TOKENS tokens (decode): the small-batch kernel, all such experts of the
//     layer in one launch for gate+up (fused with silu * up) and one for down;
//   - more: cuBLASLt, per expert gate and up GEMMs, silu * up narrowed to bf16, down GEMM
//     straight into the expert's output rows.
// "gemv" (backend_cuda_set_grouped) sends every count through the small-batch kernel in
// chunks of GEMV_MAX_TOKENS tokens (slow for prefill; for tests and the benchmark).
static int grouped_mode;   // 0 auto, 1 lt, 2 gemv

extern "C" int backend_cuda_set_grouped(const char *name) {
    if (!strcmp(name, "auto")) grouped_mode = 0;
    else if (!strcmp(name, "lt")) grouped_mode = 1;
    else if (!strcmp(name, "gemv")) grouped_mode = 2;
    else return -1;
    return 0;
}

__global__ void swiglu_narrow_bf16_kernel(__nv_bfloat16 *h, const float *g, const float *u, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float a = g[i];
        h[i] = __float2bfloat16_rn(a / (1.0f + expf(-a)) * u[i]);
    }
}
__global__ void swiglu_narrow_f16_kernel(__half *h, const float *g, const float *u, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float a = g[i];
        h[i] = __float2half_rn(a / (1.0f + expf(-a)) * u[i]);
    }
}

static void swiglu_narrow(void *h, dtype_t dt, const float *g, const float *u, int64_t n) {
    unsigned grid = grid_for(n, 256), cap = (unsigned)cuda_sm_count() * 16;
    grid = grid < cap ? grid : cap;
    if (dt == DT_BF16) swiglu_narrow_bf16_kernel<<<grid, 256, 0, cuda_stream()>>>((__nv_bfloat16 *)h, g, u, n);
    else if (dt == DT_F16) swiglu_narrow_f16_kernel<<<grid, 256, 0, cuda_stream()>>>((__half *)h, g, u, n);
    else cuda_swiglu((float *)h, g, u, n);
    cudaCheckLaunch();
}

// One expert with ne > GEMV_MAX_TOKENS rows through cuBLASLt.
static void expert_lt(float *out, const float *x, int64_t ne, const weight_t *w1, const weight_t *w3, const weight_t *w2) {
    int64_t d = w1->cols, ff = w1->rows;
    dtype_t dt = w1->dtype;
    size_t es = dtype_size(dt);
    const void *act = x;
    if (dt != DT_F32) {
        void *a = cuda_scratch(SCR_ACT16, (size_t)(ne * d) * es);
        cuda_narrow(a, dt, x, ne * d);
        act = a;
    }
    float *g = (float *)cuda_scratch(SCR_FFN_G, (size_t)(ne * ff) * sizeof(float));
    float *u = (float *)cuda_scratch(SCR_FFN_U, (size_t)(ne * ff) * sizeof(float));
    lt_gemm(g, ff, act, d, w1, ne);
    lt_gemm(u, ff, act, d, w3, ne);
    void *h = dt == DT_F32 ? (void *)g : cuda_scratch(SCR_ACT16_B, (size_t)(ne * ff) * es);
    swiglu_narrow(h, dt, g, u, ne * ff);   // F32: in place into g
    lt_gemm(out, d, h, ff, w2, ne);
}

// Each expert's slice of the hidden activations starts at a 16-byte boundary, so whether the
// down projection may use 16-byte loads depends on the expert's own shape only.
static size_t h_slice(int64_t nt, int64_t ff) { return ((size_t)nt * (size_t)ff + 3) / 4 * 4; }

void cuda_expert_ffn(float *out, const float *x, const int64_t *offsets, const expert_set *ex) {
    int E = ex->n_experts;
    if (E <= 0 || offsets[E] <= offsets[0]) return;
    int64_t d = ex->w2[0].rows;
    dtype_t dt = ex->w1[0].dtype;
    int small_max = grouped_mode == 2 ? INT32_MAX : GEMV_MAX_TOKENS;
    // Experts with no rows of their own (ff = 0) still owe zeros for their tokens.
    size_t h_total = 0;
    for (int e = 0; e < E; e++) {
        int64_t ne = offsets[e + 1] - offsets[e], ff = ex->w1[e].rows;
        CHECK(ne >= 0);
        CHECK(ex->w1[e].cols == d && ex->w3[e].cols == d && ex->w3[e].rows == ff);
        CHECK(ex->w2[e].rows == d && ex->w2[e].cols == ff);
        CHECK(ex->w1[e].dtype == dt && ex->w3[e].dtype == dt && ex->w2[e].dtype == dt);
        if (ne > 0 && ne <= small_max) h_total += h_slice((ne < GEMV_MAX_TOKENS ? ne : GEMV_MAX_TOKENS), ff);
    }

    // Small experts: gate+up jobs, then down jobs, token chunks of at most GEMV_MAX_TOKENS.
    // Every chunk of every expert has its own slice of h, so one launch covers them all.
    float *h = (float *)cuda_scratch(SCR_FFN_H, (h_total ? h_total : 1) * sizeof(float));
    int cap = 2 * E, n_up = 0, n_down = 0;
    gemv_job *up = (gemv_job *)xcalloc((size_t)cap, sizeof(gemv_job));
    gemv_job *down = (gemv_job *)xcalloc((size_t)cap, sizeof(gemv_job));
    for (int pass = 0;; pass++) {
        int more = 0;
        size_t h_at = 0;
        n_up = n_down = 0;
        for (int e = 0; e < E; e++) {
            int64_t ne = offsets[e + 1] - offsets[e], ff = ex->w1[e].rows;
            if (ne <= 0 || ne > small_max) continue;
            int64_t t0 = (int64_t)pass * GEMV_MAX_TOKENS;
            if (t0 >= ne) continue;
            int nt = (int)(ne - t0 < GEMV_MAX_TOKENS ? ne - t0 : GEMV_MAX_TOKENS);
            more |= t0 + nt < ne;
            const float *xe = x + (size_t)(offsets[e] + t0) * (size_t)d;
            float *oe = out + (size_t)(offsets[e] + t0) * (size_t)d;
            if (ff == 0) {
                cudaCheck(cudaMemsetAsync(oe, 0, (size_t)nt * (size_t)d * sizeof(float), cuda_stream()));
                continue;
            }
            if (n_up == cap) {
                cap *= 2;
                up = (gemv_job *)realloc(up, (size_t)cap * sizeof(gemv_job));
                down = (gemv_job *)realloc(down, (size_t)cap * sizeof(gemv_job));
                CHECK(up && down);
            }
            gemv_job *u = &up[n_up++], *dn = &down[n_down++];
            memset(u, 0, sizeof *u);
            memset(dn, 0, sizeof *dn);
            u->w = ex->w1[e].data; u->ld = ex->w1[e].ld;
            u->w_up = ex->w3[e].data; u->ld_up = ex->w3[e].ld;
            u->rows = ff; u->cols = d; u->x = xe; u->ldx = d; u->out = h + h_at; u->ldo = ff; u->n = nt;
            dn->w = ex->w2[e].data; dn->ld = ex->w2[e].ld; dn->rows = d; dn->cols = ff;
            dn->x = h + h_at; dn->ldx = ff; dn->out = oe; dn->ldo = d; dn->n = nt;
            h_at += h_slice(nt, ff);
        }
        gemv_run(up, n_up, dt, 1);
        gemv_run(down, n_down, dt, 0);
        if (!more) break;
        // The next pass reuses h: the launches above are ordered before the next ones.
    }
    free(up);
    free(down);

    // Large experts: one cuBLASLt sequence each, in expert order on the backend stream.
    for (int e = 0; e < E; e++) {
        int64_t ne = offsets[e + 1] - offsets[e];
        if (ne <= small_max) continue;
        float *oe = out + (size_t)offsets[e] * (size_t)d;
        if (ex->w1[e].rows == 0) {
            cudaCheck(cudaMemsetAsync(oe, 0, (size_t)ne * (size_t)d * sizeof(float), cuda_stream()));
            continue;
        }
        expert_lt(oe, x + (size_t)offsets[e] * (size_t)d, ne, &ex->w1[e], &ex->w3[e], &ex->w2[e]);
    }
}
