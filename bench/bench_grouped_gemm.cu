// The CUDA backend's grouped expert FFN against a dense FFN of the same FLOPs, on the shapes of
// the MoE layers of the Llama 3.1 8B: E experts with n tokens each (ff = 14336 / E for
// identity, 14336 for upcycle) against one dense FFN of E * ff neurons over n tokens, or of ff
// neurons over E * n tokens (bf16 weights, fp32 accumulation). Every variant of the expert
// GEMM runs through the backend op itself (backend_options.expert_gemm):
//   grouped  one cublasGemmGroupedBatchedEx per projection for all experts (the default)
//   loop     one cuBLASLt GEMM per expert and projection
//   gemv     the small-batch kernel for every count (the decode path)
// Columns as nccl-tests: the regime, the variant, time, TFLOP/s, TFLOP/s relative to the dense
// FFN, and the normalised difference from the loop variant (a correctness check).
//   bench_grouped_gemm [--json FILE] [--quick]       (needs one CUDA GPU: H100 or H200)
#include "kernels/cuda/cuda_common.cuh"

#include <stdio.h>
#include <stdlib.h>

typedef struct {
    const char *name;
    int E, n, d, ff;   // n tokens per expert
    int dense_tokens_times_E;   // 1: the dense FFN runs E * n tokens of ff neurons (upcycle)
} regime;

static const regime regimes[] = {
    {"decode identity:8 (8 x n=1, ff 1792)", 8, 1, 4096, 1792, 0},
    {"decode batch 8 identity:8 (8 x n=8)", 8, 8, 4096, 1792, 0},
    {"batch 32 identity:8 (8 x n=32)", 8, 32, 4096, 1792, 0},
    {"prefill 512 identity:8 (8 x n=512)", 8, 512, 4096, 1792, 0},
    {"prefill 2048 identity:8 (8 x n=2048)", 8, 2048, 4096, 1792, 0},
    {"prefill 2048 upcycle:8:2 (8 x n=512, ff 14336)", 8, 512, 4096, 14336, 1},
};

__global__ void fill_kernel(void *p, int bf16, size_t n, uint32_t seed, float scale) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 2654435761u ^ seed;
        h ^= h >> 15; h *= 2246822519u; h ^= h >> 13; h *= 3266489917u; h ^= h >> 16;
        float v = (h * (1.0f / 4294967296.0f) - 0.5f) * scale;
        if (bf16) ((__nv_bfloat16 *)p)[i] = __float2bfloat16(v);
        else ((float *)p)[i] = v;
    }
}

static void *filled(backend *be, size_t n, int bf16, uint32_t seed, float scale) {
    void *p = be->alloc(be, n * (bf16 ? 2 : 4));
    fill_kernel<<<1024, 256, 0, (cudaStream_t)backend_cuda_stream(be)>>>(p, bf16, n, seed, scale);
    cudaCheckLaunch();
    return p;
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

// Seconds per call of fn, best of a few timed repeats after a warm-up.
typedef void (*bench_fn)(backend *be, void *ctx);
static double time_best(backend *be, bench_fn fn, void *ctx, int reps) {
    fn(be, ctx);
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        backend_mark a = be->mark(be);
        fn(be, ctx);
        double s = be->seconds(be, a, be->mark(be));
        best = s < best ? s : best;
    }
    return best;
}

typedef struct { float *out; const float *x; int64_t *offsets, *offsets_host; expert_set set; } ffn_args;
static void run_experts(backend *be, void *p) {
    ffn_args *a = (ffn_args *)p;
    be->expert_ffn(be, a->out, a->x, a->offsets, a->offsets_host, a->offsets_host[a->set.n_experts], &a->set);
}

typedef struct { float *out, *g, *u; const float *x; weight_t w1, w3, w2; int n; } dense_args;
static void run_dense(backend *be, void *p) {
    dense_args *a = (dense_args *)p;
    be->matmul(be, a->g, a->x, &a->w1, a->n);
    be->matmul(be, a->u, a->x, &a->w3, a->n);
    be->swiglu(be, a->g, a->g, a->u, (int64_t)a->n * a->w1.rows);
    be->matmul(be, a->out, a->g, &a->w2, a->n);
}

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
    const char *variants[] = {"grouped", "loop", "gemv"};
    backend *be[3];
    llamoe_err err;
    for (int v = 0; v < 3; v++) {
        backend_options o = {0, 0, variants[v]};
        if (!(be[v] = backend_cuda_new(&o, &err))) die("%s", err.msg);
    }
    FILE *js = json_path ? fopen(json_path, "w") : NULL;
    if (json_path && !js) die("%s: cannot create", json_path);
    printf("device: %s\n", backend_cuda_description(be[0]));
    printf("# %-48s %-8s %10s %8s %9s %10s\n", "regime", "variant", "ms", "TFLOP/s", "vs dense", "diff");
    if (js) fprintf(js, "{\"device\": \"%s\", \"regimes\": [", backend_cuda_description(be[0]));
    int n_regimes = (int)(sizeof regimes / sizeof regimes[0]);
    for (int ri = 0; ri < n_regimes; ri++) {
        const regime *R = &regimes[ri];
        if (quick && R->n > 512) continue;
        int E = R->E, d = R->d, ff = R->ff;
        int64_t rows = (int64_t)E * R->n;
        double flops = 2.0 * 3.0 * (double)rows * ff * d;
        int reps = R->n >= 512 ? 5 : 20;
        float *outs[3] = {0};
        double ms[3] = {0};
        for (int v = 0; v < 3; v++) {
            backend *b = be[v];
            if (v == 2 && R->n > 64) continue;   // the small-batch kernel is for decode
            // One [2 ff, d] block per expert holds gate then up, as the runtime places them.
            weight_t w1[64], w3[64], w2[64];
            for (int e = 0; e < E; e++) {
                char *g13 = (char *)filled(b, (size_t)2 * ff * d, 1, 11 + e, 0.05f);
                w1[e] = (weight_t){g13, DT_BF16, ff, d, d};
                w3[e] = (weight_t){g13 + (size_t)ff * d * 2, DT_BF16, ff, d, d};
                w2[e] = (weight_t){filled(b, (size_t)d * ff, 1, 101 + e, 0.05f), DT_BF16, d, ff, ff};
            }
            int64_t offs[65];
            for (int e = 0; e <= E; e++) offs[e] = (int64_t)e * R->n;
            ffn_args a = {(float *)b->alloc(b, (size_t)rows * d * 4), (const float *)filled(b, (size_t)rows * d, 0, 7, 2.0f),
                          (int64_t *)b->alloc(b, sizeof offs), offs, {E, w1, w3, w2}};
            b->upload(b, a.offsets, offs, (size_t)(E + 1) * sizeof(int64_t));
            ms[v] = time_best(b, run_experts, &a, reps) * 1e3;
            outs[v] = (float *)xmalloc((size_t)rows * d * 4);
            b->download(b, outs[v], a.out, (size_t)rows * d * 4);
            for (int e = 0; e < E; e++) { b->free(b, (void *)w1[e].data); b->free(b, (void *)w2[e].data); }
            b->free(b, a.out); b->free(b, (void *)a.x); b->free(b, a.offsets);
        }
        // The dense FFN of the same FLOPs, through the same backend's matmul.
        backend *b = be[0];
        int dn = R->dense_tokens_times_E ? (int)rows : R->n, dff = R->dense_tokens_times_E ? ff : E * ff;
        dense_args da;
        da.n = dn;
        da.w1 = (weight_t){filled(b, (size_t)dff * d, 1, 3, 0.05f), DT_BF16, dff, d, d};
        da.w3 = (weight_t){filled(b, (size_t)dff * d, 1, 4, 0.05f), DT_BF16, dff, d, d};
        da.w2 = (weight_t){filled(b, (size_t)d * dff, 1, 5, 0.05f), DT_BF16, d, dff, dff};
        da.x = (const float *)filled(b, (size_t)dn * d, 0, 6, 2.0f);
        da.g = (float *)b->alloc(b, (size_t)dn * dff * 4);
        da.u = (float *)b->alloc(b, (size_t)dn * dff * 4);
        da.out = (float *)b->alloc(b, (size_t)dn * d * 4);
        double dense_ms = time_best(b, run_dense, &da, reps) * 1e3;
        b->free(b, (void *)da.w1.data); b->free(b, (void *)da.w3.data); b->free(b, (void *)da.w2.data);
        b->free(b, (void *)da.x); b->free(b, da.g); b->free(b, da.u); b->free(b, da.out);

        double dense_tf = flops / (dense_ms * 1e-3) / 1e12;
        printf("  %-48s %-8s %10.4f %8.1f %9s %10s\n", R->name, "dense", dense_ms, dense_tf, "1.00", "-");
        if (js) fprintf(js, "%s\n  {\"regime\": \"%s\", \"dense_ms\": %.5f, \"dense_tflops\": %.2f, \"variants\": [",
                        ri ? "," : "", R->name, dense_ms, dense_tf);
        int first = 1;
        for (int v = 0; v < 3; v++) {
            if (!outs[v]) continue;
            double tf = flops / (ms[v] * 1e-3) / 1e12;
            double diff = outs[1] ? max_norm_diff(outs[v], outs[1], (size_t)rows * d) : 0;
            printf("  %-48s %-8s %10.4f %8.1f %9.2f %10.2e\n", R->name, variants[v], ms[v], tf, tf / dense_tf, diff);
            if (js) fprintf(js, "%s{\"variant\": \"%s\", \"ms\": %.5f, \"tflops\": %.2f, \"vs_dense\": %.3f, \"diff_vs_loop\": %.3g}",
                            first ? "" : ", ", variants[v], ms[v], tf, tf / dense_tf, diff);
            first = 0;
            free(outs[v]);
        }
        if (js) fprintf(js, "]}");
    }
    printf("expert GEMM of the default backend: %s\n", backend_cuda_description(be[0]));
    if (js) {
        fprintf(js, "\n], \"default\": \"%s\"}\n", backend_cuda_description(be[0]));
        fclose(js);
    }
    for (int v = 0; v < 3; v++) backend_free(be[v]);
    return 0;
}
