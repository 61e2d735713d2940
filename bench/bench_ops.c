// CPU backend kernel benchmark: matmul at Llama 3.1 8B shapes (decode n = 1, prefill n = 64
// and 512), decode attention at several context lengths and a 512-token prompt's attention,
// for 1 and 2 threads.
// Fixed columns like nccl-tests; GFLOP/s and GB/s come from the best time; `wrong` counts output elements that differ from the
// 1-thread run (the kernels are deterministic, so it must be 0).
//   bench_ops [--full] [--threads 1,2] [--json FILE]
//   bench_ops --read-bandwidth [--threads 2] [--json FILE]   plain read of 2 GiB (rows = MiB)
//   bench_ops --only matmul|attention                         one part of the default set
//   bench_ops --peak          fp32 fma vs AVX512-BF16 vdpbf16ps throughput on one core (the fma
//                             figure is a peak on AVX-512 builds only)
//   --cpu-time                time kernels by CPU time / threads (for a machine shared with other jobs)
// The default set stays under a minute on 2 cores; --full adds prefill n = 512 on the
// 14336-wide shapes, F32 prefill and a 2048-token prompt's attention.
#include "kernels/backend.h"

#include <math.h>
#include <omp.h>
#include <string.h>
#include <time.h>

static uint64_t rng = 1;
static float frand(void) {
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((rng >> 40) * (2.0 / 16777216.0) - 1.0);
}

static weight_t make_weight(int64_t rows, int64_t cols, dtype_t dt) {
    size_t count = (size_t)rows * (size_t)cols;
    void *p = xmalloc(count * dtype_size(dt));
    for (size_t i = 0; i < count; i++) {
        float v = 0.02f * frand();
        if (dt == DT_F32) ((float *)p)[i] = v;
        else ((uint16_t *)p)[i] = dt == DT_BF16 ? f32_to_bf16(v) : f32_to_f16(v);
    }
    return (weight_t){p, dt, rows, cols, cols};
}

static float *make_floats(size_t n) {
    float *p = xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = frand();
    return p;
}

// ---------------------------------------------------------------------------- results
typedef struct {
    char op[16], dtype[8];
    int64_t rows, cols, n, ctx;
    int threads, iters;
    double ms, mean_ms, gflops, gbps;
    int64_t wrong;
} result;

static result results[256];
static int n_results = 0;

static void print_header(void) {
    printf("%-9s %-5s %6s %6s %5s %6s %3s %5s %10s %10s %9s %8s %6s\n",
           "op", "dtype", "rows", "cols", "n", "ctx", "thr", "iters", "best_ms", "mean_ms", "GFLOP/s", "GB/s", "wrong");
}
static void print_result(const result *r) {
    printf("%-9s %-5s %6lld %6lld %5lld %6lld %3d %5d %10.3f %10.3f %9.2f %8.2f %6lld\n", r->op, r->dtype,
           (long long)r->rows, (long long)r->cols, (long long)r->n, (long long)r->ctx, r->threads, r->iters,
           r->ms, r->mean_ms, r->gflops, r->gbps, (long long)r->wrong);
    fflush(stdout);
}

static int64_t count_wrong(const float *a, const float *b, size_t n) {
    int64_t w = 0;
    for (size_t i = 0; i < n; i++) w += memcmp(a + i, b + i, sizeof(float)) != 0;
    return w;
}

// Repeats fn (after a warm-up call) until min_s has passed and at least 3 runs; returns the
// best time and sets the mean. The best is the figure reported: the containers share their
// cores with other jobs, so the mean mostly measures the neighbours.
// With --cpu-time a run is timed by the process's CPU time divided by the thread count: on
// a loaded machine the wall clock mostly measures the time slices other jobs take.
static int cpu_time = 0, timed_threads = 1;
static double process_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}
static double run_seconds(void) { return cpu_time ? process_seconds() / timed_threads : now_seconds(); }

typedef void (*bench_fn)(void *);
static double time_it(bench_fn fn, void *arg, double min_s, int *iters, double *mean) {
    fn(arg);
    double t0 = now_seconds(), best = 1e30;
    int k = 0;
    do {
        double t1 = run_seconds();
        fn(arg);
        double t = run_seconds() - t1;
        best = t < best ? t : best;
        k++;
    } while (k < 3 || now_seconds() - t0 < min_s);
    *iters = k;
    *mean = (now_seconds() - t0) / k;
    return best;
}

// ---------------------------------------------------------------------------- matmul
typedef struct { backend *be; float *out; const float *x; const weight_t *w; int n; } mm_args;
static void run_matmul(void *p) { mm_args *a = p; a->be->matmul(a->be, a->out, a->x, a->w, a->n); }

static void bench_matmul(int64_t rows, int64_t cols, dtype_t dt, const int *ns, int n_ns, const int *threads, int n_threads) {
    weight_t w = make_weight(rows, cols, dt);
    int max_n = 0;
    for (int i = 0; i < n_ns; i++) max_n = ns[i] > max_n ? ns[i] : max_n;
    float *x = make_floats((size_t)max_n * cols), *out = xmalloc(sizeof(float) * max_n * rows), *first = xmalloc(sizeof(float) * max_n * rows);
    for (int i = 0; i < n_ns; i++)
        for (int j = 0; j < n_threads; j++) {
            backend *be = backend_cpu_new(&(backend_options){.threads = threads[j]});
            mm_args a = {be, out, x, &w, ns[i]};
            timed_threads = threads[j];
            result r = {.rows = rows, .cols = cols, .n = ns[i], .threads = threads[j]};
            snprintf(r.op, sizeof r.op, "matmul");
            snprintf(r.dtype, sizeof r.dtype, "%s", dtype_name(dt));
            double mean, s = time_it(run_matmul, &a, 0.3, &r.iters, &mean);
            r.mean_ms = mean * 1e3;
            double bytes = (double)rows * cols * dtype_size(dt) + 4.0 * ns[i] * (rows + cols);
            r.ms = s * 1e3;
            r.gflops = 2.0 * rows * cols * ns[i] / s * 1e-9;
            r.gbps = bytes / s * 1e-9;
            size_t count = (size_t)ns[i] * rows;
            if (j == 0) memcpy(first, out, count * sizeof(float));
            r.wrong = count_wrong(first, out, count);
            print_result(&r);
            results[n_results++] = r;
            backend_free(be);
        }
    free(x); free(out); free(first); free((void *)w.data);
}

// ---------------------------------------------------------------------------- attention
// Decode (prefill = 0): one token of each of `n` sequences at position ctx - 1. Prefill: one
// sequence's n = ctx tokens at positions 0..ctx-1 (causal). Llama 3.1 8B heads.
typedef struct { backend *be; float *out; const float *q, *k, *v; const int32_t *slot, *pos; int n; int64_t stride; } att_args;
static void run_attention(void *p) {
    att_args *a = p;
    a->be->attention(a->be, a->out, a->q, a->k, a->v, a->slot, a->pos, a->n, 32, 8, 128, a->stride);
}

static void bench_attention(int ctx, int n, int prefill, const int *threads, int n_threads) {
    int64_t kv_dim = 8 * 128, stride = (int64_t)ctx * kv_dim, seqs = prefill ? 1 : n;
    float *k = make_floats((size_t)seqs * stride), *v = make_floats((size_t)seqs * stride), *q = make_floats((size_t)n * 4096);
    float *out = xmalloc(sizeof(float) * n * 4096), *first = xmalloc(sizeof(float) * n * 4096);
    int32_t *slot = xmalloc(sizeof(int32_t) * n), *pos = xmalloc(sizeof(int32_t) * n);
    double positions = 0;   // (token, position) pairs: each one q.k and one p.v per head
    for (int i = 0; i < n; i++) {
        slot[i] = prefill ? 0 : i;
        pos[i] = prefill ? i : ctx - 1;
        positions += pos[i] + 1;
    }
    for (int j = 0; j < n_threads; j++) {
        backend *be = backend_cpu_new(&(backend_options){.threads = threads[j]});
        att_args a = {be, out, q, k, v, slot, pos, n, stride};
        timed_threads = threads[j];
        result r = {.rows = 32, .cols = 128, .n = n, .ctx = ctx, .threads = threads[j]};
        snprintf(r.op, sizeof r.op, "attention");
        snprintf(r.dtype, sizeof r.dtype, "F32");
        double mean, s = time_it(run_attention, &a, 0.3, &r.iters, &mean);
        r.mean_ms = mean * 1e3;
        r.ms = s * 1e3;
        r.gflops = 4.0 * 32 * 128 * positions / s * 1e-9;
        r.gbps = 2.0 * 4 * (double)ctx * kv_dim * seqs / s * 1e-9;   // K and V read once
        if (j == 0) memcpy(first, out, sizeof(float) * n * 4096);
        r.wrong = count_wrong(first, out, (size_t)n * 4096);
        print_result(&r);
        results[n_results++] = r;
        backend_free(be);
    }
    free(k); free(v); free(q); free(out); free(first); free(slot); free(pos);
}

// ---------------------------------------------------------------------------- read bandwidth
// The bound a decode step is held to: a plain read of a buffer far larger than the caches
// (2 GiB), each thread summing its contiguous share with 8 independent accumulators.
static double read_sum(const float *p, size_t n, int threads) {
    double total = 0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        size_t lo = n / nt * t, hi = t + 1 == nt ? n : n / nt * (t + 1);
        typedef float v16 __attribute__((vector_size(64)));
        v16 acc[8] = {{0}};
        size_t i = lo;
        for (; i + 128 <= hi; i += 128)
            for (int k = 0; k < 8; k++) {
                v16 v;
                memcpy(&v, p + i + 16 * k, sizeof v);
                acc[k] += v;
            }
        float s = 0;
        for (int k = 0; k < 8; k++)
            for (int l = 0; l < 16; l++) s += acc[k][l];
        for (; i < hi; i++) s += p[i];
        total += s;
    }
    return total;
}

static void bench_read_bandwidth(size_t bytes, const int *threads, int n_threads) {
    size_t n = bytes / sizeof(float);
    float *p = xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = (float)(i & 1023);   // touch every page
    for (int j = 0; j < n_threads; j++) {
        double best = 1e30, sum = 0, t0 = now_seconds();
        int k = 0;
        timed_threads = threads[j];
        for (; k < 3 || (k < 20 && now_seconds() - t0 < 2.0); k++) {
            double t1 = run_seconds();
            sum += read_sum(p, n, threads[j]);
            double t = run_seconds() - t1;
            best = t < best ? t : best;
        }
        result r = {.rows = (int64_t)(bytes >> 20), .cols = 1, .n = 1, .threads = threads[j], .iters = k};
        snprintf(r.op, sizeof r.op, "read");
        snprintf(r.dtype, sizeof r.dtype, "F32");
        r.ms = best * 1e3;
        r.mean_ms = (now_seconds() - t0) / k * 1e3;
        r.gbps = (double)bytes / best * 1e-9;
        r.wrong = sum == sum ? 0 : 1;   // (keeps the sums alive)
        print_result(&r);
        results[n_results++] = r;
    }
    free(p);
}

// ---------------------------------------------------------------------------- peak
// Instruction throughput of the two ways to run a dot product on this core, in registers
// (24 independent accumulators): fp32 fma (32 flop per 16-lane instruction) and, where the
// CPU has AVX512-BF16, vdpbf16ps (64 flop: 32 bf16 pairs into 16 fp32 lanes). Timed in the
// thread's CPU time, so that other jobs on the core do not count. Tells whether a bf16
// compute path could beat fp32 on this CPU.
#define PEAK_ACC 24
static double thread_seconds(void) {   // the peak loops run on the calling thread only
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

typedef float v16f __attribute__((vector_size(64)));
__attribute__((noinline)) static float peak_fma(long iters) {
    v16f acc[PEAK_ACC], a = {0}, b = {0};
    a += 1.0f; b += 0.5f;
    for (int i = 0; i < PEAK_ACC; i++) acc[i] = a * (float)i;   // distinct, so none is merged
    for (long it = 0; it < iters; it++) {
#pragma GCC unroll 24
        for (int i = 0; i < PEAK_ACC; i++) acc[i] += a * b;
#ifdef __AVX512F__
        __asm__ volatile("" : "+v"(a));   // a is unknown to the compiler: nothing is hoisted
#else
        __asm__ volatile("" : : "r"(&a) : "memory");   // (a 64-byte vector is two registers)
#endif
    }
    float s = 0;
    for (int i = 0; i < PEAK_ACC; i++) s += acc[i][0];
    return s;
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
__attribute__((noinline, target("avx512f,avx512bf16"))) static float peak_dpbf16(long iters) {
    __m512 acc[PEAK_ACC];
    for (int i = 0; i < PEAK_ACC; i++) acc[i] = _mm512_set1_ps((float)i);
    __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80), b = (__m512bh)_mm512_set1_epi16(0x3f00);
    for (long it = 0; it < iters; it++) {
#pragma GCC unroll 24
        for (int i = 0; i < PEAK_ACC; i++) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
        __asm__ volatile("" : "+v"(a));
    }
    float s = 0;
    for (int i = 0; i < PEAK_ACC; i++) s += _mm512_reduce_add_ps(acc[i]);
    return s;
}
static int have_dpbf16(void) { return __builtin_cpu_supports("avx512bf16"); }
#else
static float peak_dpbf16(long iters) { return (float)iters; }
static int have_dpbf16(void) { return 0; }
#endif

static void bench_peak(void) {
    const long iters = 4000000;
    struct { const char *name; float (*fn)(long); double flop; int ok; } kinds[] = {
        {"fma-fp32", peak_fma, 32, 1}, {"dpbf16", peak_dpbf16, 64, have_dpbf16()}};
    for (int k = 0; k < 2; k++) {
        if (!kinds[k].ok) {
            printf("%-9s (this CPU lacks AVX512-BF16)\n", kinds[k].name);
            continue;
        }
        double best = 1e30;
        float sink = 0;
        for (int r = 0; r < 7; r++) {
            double t0 = thread_seconds();
            sink += kinds[k].fn(iters);
            double t = thread_seconds() - t0;
            best = t < best ? t : best;
        }
        result r = {.rows = PEAK_ACC, .cols = 16, .n = iters, .threads = 1, .iters = 7};
        snprintf(r.op, sizeof r.op, "%s", kinds[k].name);
        snprintf(r.dtype, sizeof r.dtype, k ? "BF16" : "F32");
        r.ms = best * 1e3;
        r.mean_ms = best * 1e3;
        r.gflops = kinds[k].flop * PEAK_ACC * (double)iters / best * 1e-9;
        r.wrong = sink == sink ? 0 : 1;
        print_result(&r);
        results[n_results++] = r;
    }
}

// ---------------------------------------------------------------------------- main
static void write_json(const char *path) {
    out_file of;   // written whole or not at all (base/common.h)
    llamoe_err err;
    if (out_file_open(&of, path, &err) != 0) die("%s", err.msg);
    FILE *f = of.f;
    char cpu[256] = "unknown";
    FILE *ci = fopen("/proc/cpuinfo", "r");
    if (ci) {
        char line[512];
        while (fgets(line, sizeof line, ci))
            if (!strncmp(line, "model name", 10) && strchr(line, ':')) {
                snprintf(cpu, sizeof cpu, "%s", strchr(line, ':') + 2);
                cpu[strcspn(cpu, "\n\"\\")] = 0;
                break;
            }
        fclose(ci);
    }
    fprintf(f, "{\n  \"cpu\": \"%s\",\n  \"clock\": \"%s\",\n  \"results\": [\n", cpu, cpu_time ? "cpu time / threads" : "wall");
    for (int i = 0; i < n_results; i++) {
        const result *r = &results[i];
        fprintf(f, "    {\"op\": \"%s\", \"dtype\": \"%s\", \"rows\": %lld, \"cols\": %lld, \"n\": %lld, \"ctx\": %lld, "
                   "\"threads\": %d, \"iters\": %d, \"best_ms\": %.4f, \"mean_ms\": %.4f, \"gflops\": %.3f, \"gbps\": %.3f, \"wrong\": %lld}%s\n",
                r->op, r->dtype, (long long)r->rows, (long long)r->cols, (long long)r->n, (long long)r->ctx,
                r->threads, r->iters, r->ms, r->mean_ms, r->gflops, r->gbps, (long long)r->wrong, i + 1 < n_results ? "," : "");
    }
    fprintf(f, "  ]\n}\n");
    if (out_file_commit(&of, &err) != 0) die("%s", err.msg);
}

int main(int argc, char **argv) {
    const char *json = NULL;
    int full = 0, read_bw = 0, peak = 0, threads[8] = {1, 2}, n_threads = 2;
    const char *only = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json") && i + 1 < argc) json = argv[++i];
        else if (!strcmp(argv[i], "--full")) full = 1;
        else if (!strcmp(argv[i], "--read-bandwidth")) read_bw = 1;
        else if (!strcmp(argv[i], "--peak")) peak = 1;
        else if (!strcmp(argv[i], "--cpu-time")) cpu_time = 1;
        else if (!strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
            n_threads = 0;
            for (char *s = argv[++i]; *s && n_threads < 8; s += *s == ',') threads[n_threads++] = (int)strtol(s, &s, 10);
        } else die("usage: bench_ops [--full | --read-bandwidth | --peak] [--only matmul|attention] [--cpu-time] [--threads 1,2] [--json FILE]");
    }
    print_header();
    if (read_bw || peak) {
        if (read_bw) bench_read_bandwidth((size_t)2 << 30, threads, n_threads);
        if (peak) bench_peak();
        if (json) write_json(json);
        return 0;
    }
    const int64_t shapes[3][2] = {{4096, 4096}, {14336, 4096}, {4096, 14336}};
    const int decode[] = {1}, prefill[] = {1, 64, 512}, prefill_short[] = {1, 64};
    for (int s = 0; s < 3 && !(only && strcmp(only, "matmul")); s++) {
        // BF16 (the checkpoint dtype): decode and prefill; F32: decode (bandwidth) unless --full
        if (full || s == 0) bench_matmul(shapes[s][0], shapes[s][1], DT_BF16, prefill, 3, threads, n_threads);
        else bench_matmul(shapes[s][0], shapes[s][1], DT_BF16, prefill_short, 2, threads, n_threads);
        if (full) bench_matmul(shapes[s][0], shapes[s][1], DT_F32, prefill, 3, threads, n_threads);
        else bench_matmul(shapes[s][0], shapes[s][1], DT_F32, decode, 1, threads, n_threads);
    }
    const int ctxs[] = {128, 1024, 4096};
    for (int c = 0; c < 3 && !(only && strcmp(only, "attention")); c++) bench_attention(ctxs[c], 1, 0, threads, n_threads);
    if (!(only && strcmp(only, "attention"))) bench_attention(512, 512, 1, threads, n_threads);   // a prompt in one step
    if (full) bench_attention(2048, 2048, 1, threads, n_threads);
    if (json) write_json(json);
    return 0;
}
