// Grouped expert GEMM variants on the shapes of the MoE layers (the up/gate projection of
// every local expert of one layer: out_e[n_e, ff] = x_e[n_e, d] . W_e^T, bf16 weights and
// activations, fp32 accumulation), against one dense cuBLASLt GEMM of the same FLOPs.
//   bench_grouped_gemm [--json FILE] [--quick]
// Variants:
//   lt-loop       one cuBLASLt GEMM per expert in order on one stream (expert_ffn's path for
//                 experts with more than 8 tokens; plans cached)
//   lt-streams    the same spread over 4 streams (cuBLASLt workspace per stream)
//   cublas-grouped  cublasGemmGroupedBatchedEx (cuBLAS 12.5+): one call for all experts
//   lt-grouped    cuBLASLt's grouped matrix layouts (CUBLASLT_BATCH_MODE_GROUPED, cuBLAS 13.3+):
//                 reported unavailable when the headers lack it
//   gemv          the backend's small-batch kernel (expert_ffn's path for <= 8 tokens),
//                 all experts in one launch; only for n_e <= 8
// Columns as nccl-tests: the regime, the variant, time, TFLOP/s, weight GB/s, time relative
// to the dense GEMM, and the normalised difference from lt-loop (correctness check).
#include "kernels/cuda/cuda_common.cuh"

#include <cublas_v2.h>
#include <stdio.h>
#include <stdlib.h>

#define N_STREAMS 4

typedef struct {
    const char *name;
    int E, n, d, ff;   // n tokens per expert
} regime;

static const regime regimes[] = {
    // decode: identity:8 on the 8B (every expert one token, ff = 14336 / 8), upcycle:8:2
    {"decode identity:8 (8 x n=1, 1792x4096)", 8, 1, 4096, 1792},
    {"decode upcycle:8:2 (2 x n=1, 14336x4096)", 2, 1, 4096, 14336},
    {"decode batch 8, identity:8 (8 x n=8)", 8, 8, 4096, 1792},
    {"small batch 32 identity:8 (8 x n=32)", 8, 32, 4096, 1792},
    // prefill 2048 tokens: identity:8 (every expert every token), upcycle:8:2 (2048*2/8 each)
    {"prefill identity:8 (8 x n=2048, 1792x4096)", 8, 2048, 4096, 1792},
    {"prefill upcycle:8:2 (8 x n=512, 14336x4096)", 8, 512, 4096, 14336},
};

__global__ void fill_bf16(__nv_bfloat16 *p, size_t n, uint32_t seed, float scale) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 2654435761u ^ seed;
        h ^= h >> 15; h *= 2246822519u; h ^= h >> 13; h *= 3266489917u; h ^= h >> 16;
        p[i] = __float2bfloat16((h * (1.0f / 4294967296.0f) - 0.5f) * scale);
    }
}

static double now_ms_events(cudaEvent_t a, cudaEvent_t b) {
    float ms = 0;
    cudaCheck(cudaEventElapsedTime(&ms, a, b));
    return ms;
}

// A plain cuBLASLt plan for out[n, ff] = x[n, d] . W^T (the layout of lt_gemm).
typedef struct { cublasLtMatmulDesc_t op; cublasLtMatrixLayout_t lw, lx, lo; cublasLtMatmulAlgo_t algo; } plan;
static plan make_plan(int n, int d, int ff, size_t ws) {
    plan p;
    cublasCheck(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t t = CUBLAS_OP_T, nn = CUBLAS_OP_N;
    cublasCheck(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof t));
    cublasCheck(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &nn, sizeof nn));
    cublasCheck(cublasLtMatrixLayoutCreate(&p.lw, CUDA_R_16BF, d, ff, d));
    cublasCheck(cublasLtMatrixLayoutCreate(&p.lx, CUDA_R_16BF, d, n, d));
    cublasCheck(cublasLtMatrixLayoutCreate(&p.lo, CUDA_R_32F, ff, n, ff));
    cublasLtMatmulPreference_t pref;
    cublasCheck(cublasLtMatmulPreferenceCreate(&pref));
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    cublasLtMatmulHeuristicResult_t r;
    int found = 0;
    cublasCheck(cublasLtMatmulAlgoGetHeuristic(cuda_lt(), p.op, p.lw, p.lx, p.lo, p.lo, pref, 1, &r, &found));
    if (!found) die("no cuBLASLt algorithm for n=%d d=%d ff=%d", n, d, ff);
    p.algo = r.algo;
    cublasLtMatmulPreferenceDestroy(pref);
    return p;
}
static void free_plan(plan *p) {
    cublasLtMatmulDescDestroy(p->op);
    cublasLtMatrixLayoutDestroy(p->lw);
    cublasLtMatrixLayoutDestroy(p->lx);
    cublasLtMatrixLayoutDestroy(p->lo);
}

static double max_norm_diff(const float *a, const float *ref, size_t n) {
    double e = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - ref[i]);
        if (!(d <= e)) e = d;
        if (fabs(ref[i]) > m) m = fabs(ref[i]);
    }
    return e / (m > 0 ? m : 1);
}

typedef struct { const char *variant; double ms, diff; const char *note; } result;

int main(int argc, char **argv) {
    const char *json_path = NULL;
    int quick = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json") && i + 1 < argc) json_path = argv[++i];
        else if (!strcmp(argv[i], "--quick")) quick = 1;
        else die("usage: bench_grouped_gemm [--json FILE] [--quick]");
    }
    if (cuda_device_count() == 0) {
        printf("bench_grouped_gemm: no CUDA device: skipped\n");
        return 77;
    }
    backend_cuda();
    cudaStream_t s0 = cuda_stream();
    FILE *js = json_path ? fopen(json_path, "w") : NULL;
    if (json_path && !js) die("%s: cannot create", json_path);
    const char *dev = cuda_device_description();
    if (js) fprintf(js, "{\"device\": \"%s\", \"cublas_version\": %d, \"lt_grouped_in_headers\": %s, \"regimes\": [",
                    dev, CUBLAS_VERSION,
#if CUBLAS_VERSION >= 130300
                    "true"
#else
                    "false"
#endif
    );
    printf("device: %s, cuBLAS %d\n", dev, CUBLAS_VERSION);
    printf("%-46s %-15s %9s %8s %8s %8s %9s\n", "regime", "variant", "ms", "TFLOP/s", "W GB/s", "x dense", "diff");

    cublasHandle_t blas;
    cublasCheck(cublasCreate(&blas));
    cublasCheck(cublasSetStream(blas, s0));
    cudaStream_t st[N_STREAMS];
    void *ws[N_STREAMS];
    size_t ws_bytes = (size_t)32 << 20;
    for (int i = 0; i < N_STREAMS; i++) {
        cudaCheck(cudaStreamCreateWithFlags(&st[i], cudaStreamNonBlocking));
        cudaCheck(cudaMalloc(&ws[i], ws_bytes));
    }
    cudaEvent_t ev0, ev1, fork, join[N_STREAMS];
    cudaCheck(cudaEventCreate(&ev0));
    cudaCheck(cudaEventCreate(&ev1));
    cudaCheck(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming));
    for (int i = 0; i < N_STREAMS; i++) cudaCheck(cudaEventCreateWithFlags(&join[i], cudaEventDisableTiming));

    int n_regimes = (int)(sizeof regimes / sizeof regimes[0]);
    for (int ri = 0; ri < n_regimes; ri++) {
        regime R = regimes[ri];
        if (quick && R.n > 64) continue;
        int E = R.E, n = R.n, d = R.d, ff = R.ff, iters = R.n >= 512 ? 10 : 50;
        size_t wcount = (size_t)ff * d, xcount = (size_t)n * d, ocount = (size_t)n * ff;
        __nv_bfloat16 *W, *X, *Xd;
        float *O, *Oref, *Od;
        cudaCheck(cudaMalloc(&W, wcount * E * 2));
        cudaCheck(cudaMalloc(&X, xcount * E * 2));
        cudaCheck(cudaMalloc(&Xd, xcount * E * 2));
        cudaCheck(cudaMalloc(&O, ocount * E * 4));
        cudaCheck(cudaMalloc(&Oref, ocount * E * 4));
        cudaCheck(cudaMalloc(&Od, ocount * E * 4));
        float *Xf;   // fp32 copy of X for the GEMV path (it reads fp32 activations)
        cudaCheck(cudaMalloc(&Xf, xcount * E * 4));
        fill_bf16<<<1024, 256, 0, s0>>>(W, wcount * E, 1234u + ri, 0.05f);
        fill_bf16<<<1024, 256, 0, s0>>>(X, xcount * E, 99u + ri, 2.0f);
        cudaCheckLaunch();
        {   // Xf = X widened
            __nv_bfloat16 *h = (__nv_bfloat16 *)xmalloc(xcount * E * 2);
            float *f = (float *)xmalloc(xcount * E * 4);
            cudaCheck(cudaMemcpyAsync(h, X, xcount * E * 2, cudaMemcpyDeviceToHost, s0));
            cudaCheck(cudaStreamSynchronize(s0));
            for (size_t i = 0; i < xcount * E; i++) f[i] = __bfloat162float(h[i]);
            cudaCheck(cudaMemcpy(Xf, f, xcount * E * 4, cudaMemcpyHostToDevice));
            free(h);
            free(f);
        }
        weight_t *wt = (weight_t *)xcalloc(E, sizeof(weight_t));
        for (int e = 0; e < E; e++) wt[e] = (weight_t){W + (size_t)e * wcount, DT_BF16, ff, d, d};
        double flops = 2.0 * E * n * (double)d * ff, wbytes = 2.0 * E * (double)wcount;
        result res[8];
        int nres = 0;

#define TIME(label, note_, body)                                                           \
    do {                                                                                   \
        for (int w = 0; w < 2; w++) { body; }                                              \
        cudaCheck(cudaEventRecord(ev0, s0));                                               \
        for (int it = 0; it < iters; it++) { body; }                                       \
        cudaCheck(cudaEventRecord(ev1, s0));                                               \
        cudaCheck(cudaEventSynchronize(ev1));                                              \
        res[nres++] = (result){label, now_ms_events(ev0, ev1) / iters, -1, note_};         \
    } while (0)

        // dense: the same FLOPs as one GEMM of E*n tokens through one expert's weights
        weight_t dense = wt[0];
        TIME("dense-lt", "", lt_gemm(Od, ff, X, d, &dense, (int64_t)E * n));
        // lt-loop (the reference for the diff column)
        TIME("lt-loop", "", for (int e = 0; e < E; e++) lt_gemm(Oref + e * ocount, ff, X + e * xcount, d, &wt[e], n));
        float *ref = (float *)xmalloc(ocount * E * 4), *got = (float *)xmalloc(ocount * E * 4);
        cudaCheck(cudaMemcpyAsync(ref, Oref, ocount * E * 4, cudaMemcpyDeviceToHost, s0));
        cudaCheck(cudaStreamSynchronize(s0));
        res[nres - 1].diff = 0;
#define DIFF()                                                                                      \
    do {                                                                                            \
        cudaCheck(cudaMemcpyAsync(got, O, ocount * E * 4, cudaMemcpyDeviceToHost, s0));            \
        cudaCheck(cudaStreamSynchronize(s0));                                                       \
        res[nres - 1].diff = max_norm_diff(got, ref, ocount * E);                                   \
        cudaCheck(cudaMemsetAsync(O, 0, ocount * E * 4, s0));                                       \
    } while (0)

        // lt-streams
        plan p = make_plan(n, d, ff, ws_bytes);
        const float one = 1.0f, zero = 0.0f;
        TIME("lt-streams", "", {
            cudaCheck(cudaEventRecord(fork, s0));
            for (int i = 0; i < N_STREAMS; i++) cudaCheck(cudaStreamWaitEvent(st[i], fork, 0));
            for (int e = 0; e < E; e++) {
                int si = e % N_STREAMS;
                cublasCheck(cublasLtMatmul(cuda_lt(), p.op, &one, W + e * wcount, p.lw, X + e * xcount, p.lx, &zero,
                                           O + e * ocount, p.lo, O + e * ocount, p.lo, &p.algo, ws[si], ws_bytes, st[si]));
            }
            for (int i = 0; i < N_STREAMS; i++) {
                cudaCheck(cudaEventRecord(join[i], st[i]));
                cudaCheck(cudaStreamWaitEvent(s0, join[i], 0));
            }
        });
        DIFF();
        free_plan(&p);

        // cublas-grouped: one group per expert (group_size 1), bf16 in, fp32 out if supported
        {
            int *m_a = (int *)xmalloc(E * sizeof(int)), *n_a = (int *)xmalloc(E * sizeof(int)), *k_a = (int *)xmalloc(E * sizeof(int));
            int *lda = (int *)xmalloc(E * sizeof(int)), *ldb = (int *)xmalloc(E * sizeof(int)), *ldc = (int *)xmalloc(E * sizeof(int));
            int *gs = (int *)xmalloc(E * sizeof(int));
            float *alpha = (float *)xmalloc(E * sizeof(float)), *beta = (float *)xmalloc(E * sizeof(float));
            cublasOperation_t *ta = (cublasOperation_t *)xmalloc(E * sizeof(cublasOperation_t));
            cublasOperation_t *tb = (cublasOperation_t *)xmalloc(E * sizeof(cublasOperation_t));
            const void **hA = (const void **)xmalloc(E * sizeof(void *)), **hB = (const void **)xmalloc(E * sizeof(void *));
            void **hC = (void **)xmalloc(E * sizeof(void *));
            for (int e = 0; e < E; e++) {
                m_a[e] = ff; n_a[e] = n; k_a[e] = d; lda[e] = d; ldb[e] = d; ldc[e] = ff; gs[e] = 1;
                alpha[e] = 1; beta[e] = 0; ta[e] = CUBLAS_OP_T; tb[e] = CUBLAS_OP_N;
                hA[e] = W + e * wcount; hB[e] = X + e * xcount; hC[e] = O + e * ocount;
            }
            void **dA, **dB, **dC;
            cudaCheck(cudaMalloc(&dA, E * sizeof(void *)));
            cudaCheck(cudaMalloc(&dB, E * sizeof(void *)));
            cudaCheck(cudaMalloc(&dC, E * sizeof(void *)));
            cudaCheck(cudaMemcpy(dA, hA, E * sizeof(void *), cudaMemcpyHostToDevice));
            cudaCheck(cudaMemcpy(dB, hB, E * sizeof(void *), cudaMemcpyHostToDevice));
            cudaCheck(cudaMemcpy(dC, hC, E * sizeof(void *), cudaMemcpyHostToDevice));
            cublasStatus_t stt = cublasGemmGroupedBatchedEx(blas, ta, tb, m_a, n_a, k_a, alpha, (const void *const *)dA, CUDA_R_16BF, lda,
                                                            (const void *const *)dB, CUDA_R_16BF, ldb, beta, (void *const *)dC,
                                                            CUDA_R_32F, ldc, E, gs, CUBLAS_COMPUTE_32F);
            cudaCheck(cudaStreamSynchronize(s0));
            if (stt == CUBLAS_STATUS_SUCCESS) {
                TIME("cublas-grouped", "bf16 in, fp32 out",
                     cublasCheck(cublasGemmGroupedBatchedEx(blas, ta, tb, m_a, n_a, k_a, alpha, (const void *const *)dA, CUDA_R_16BF, lda,
                                                            (const void *const *)dB, CUDA_R_16BF, ldb, beta, (void *const *)dC,
                                                            CUDA_R_32F, ldc, E, gs, CUBLAS_COMPUTE_32F)));
                DIFF();
            } else {
                // bf16 output (the combination cuBLAS documents for this call); diff not comparable
                stt = cublasGemmGroupedBatchedEx(blas, ta, tb, m_a, n_a, k_a, alpha, (const void *const *)dA, CUDA_R_16BF, lda,
                                                 (const void *const *)dB, CUDA_R_16BF, ldb, beta, (void *const *)dC,
                                                 CUDA_R_16BF, ldc, E, gs, CUBLAS_COMPUTE_32F);
                cudaCheck(cudaStreamSynchronize(s0));
                if (stt == CUBLAS_STATUS_SUCCESS)
                    TIME("cublas-grouped", "bf16 out (fp32 out not supported)",
                         cublasCheck(cublasGemmGroupedBatchedEx(blas, ta, tb, m_a, n_a, k_a, alpha, (const void *const *)dA, CUDA_R_16BF,
                                                                lda, (const void *const *)dB, CUDA_R_16BF, ldb, beta, (void *const *)dC,
                                                                CUDA_R_16BF, ldc, E, gs, CUBLAS_COMPUTE_32F)));
                else
                    res[nres++] = (result){"cublas-grouped", -1, -1, "not supported for these types"};
                cudaCheck(cudaMemsetAsync(O, 0, ocount * E * 4, s0));
            }
            cudaFree(dA); cudaFree(dB); cudaFree(dC);
            free(m_a); free(n_a); free(k_a); free(lda); free(ldb); free(ldc); free(gs); free(alpha); free(beta);
            free(ta); free(tb); free(hA); free(hB); free(hC);
        }

        res[nres++] = (result){"lt-grouped", -1, -1,
#if CUBLAS_VERSION >= 130300
                               "in these headers, but no variant of this benchmark uses it (not measured)"
#else
                               "CUBLASLT_BATCH_MODE_GROUPED not in this cuBLAS's headers"
#endif
        };

        // gemv: the backend's small-batch kernel (fp32 activations), one launch for all experts
        if (n <= GEMV_MAX_TOKENS) {
            gemv_job *jobs = (gemv_job *)xcalloc(E, sizeof(gemv_job));
            TIME("gemv", "fp32 activations", {
                for (int e = 0; e < E; e++) {
                    memset(&jobs[e], 0, sizeof jobs[e]);
                    jobs[e].w = W + e * wcount; jobs[e].ld = d; jobs[e].rows = ff; jobs[e].cols = d;
                    jobs[e].x = Xf + e * xcount; jobs[e].ldx = d; jobs[e].out = O + e * ocount; jobs[e].ldo = ff; jobs[e].n = n;
                }
                gemv_run(jobs, E, DT_BF16, 0);
            });
            DIFF();
            free(jobs);
        }

        double dense_ms = res[0].ms;
        if (js) fprintf(js, "%s\n  {\"regime\": \"%s\", \"experts\": %d, \"tokens_per_expert\": %d, \"d\": %d, \"ff\": %d, "
                            "\"flops\": %.6g, \"weight_bytes\": %.6g, \"variants\": [", ri ? "," : "", R.name, E, n, d, ff, flops, wbytes);
        for (int i = 0; i < nres; i++) {
            result *r = &res[i];
            if (r->ms > 0)
                printf("%-46.46s %-15s %9.4f %8.2f %8.1f %8.2f %9.2g %s\n", R.name, r->variant, r->ms, flops / r->ms / 1e9,
                       wbytes / r->ms / 1e6, r->ms / dense_ms, r->diff, r->note);
            else
                printf("%-46.46s %-15s %9s %8s %8s %8s %9s %s\n", R.name, r->variant, "-", "-", "-", "-", "-", r->note);
            if (js)
                fprintf(js, "%s\n    {\"variant\": \"%s\", \"ms\": %.6g, \"tflops\": %.6g, \"weight_gbs\": %.6g, \"vs_dense\": %.4g, "
                            "\"diff_vs_lt_loop\": %.3g, \"note\": \"%s\"}",
                        i ? "," : "", r->variant, r->ms, r->ms > 0 ? flops / r->ms / 1e9 : 0, r->ms > 0 ? wbytes / r->ms / 1e6 : 0,
                        r->ms > 0 ? r->ms / dense_ms : 0, r->diff, r->note);
        }
        if (js) fprintf(js, "]}");
        fflush(stdout);
        free(ref); free(got); free(wt);
        cudaFree(W); cudaFree(X); cudaFree(Xd); cudaFree(O); cudaFree(Oref); cudaFree(Od); cudaFree(Xf);
    }
    if (js) {
        fprintf(js, "\n]}\n");
        fclose(js);
    }
    cublasDestroy(blas);
    return 0;
}
