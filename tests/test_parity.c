// The parity test the project exists for: identity:E and upcycle:E:k against the dense model.
//   test_parity SRC_DIR [-m MODEL_DIR] [--steps N] [--ids 1,2,3] [--modes identity:8,upcycle:8:2]
// Two checks, derived in docs/parity.md:
//  1. per layer and element (rigorous): with the same input, the MoE FFN output differs from
//     the dense FFN by at most the floating-point summation bound of the changed order,
//     identity: 2 gamma_I sum_i |W_ji h_i|; upcycle: gamma_{2k+1} |y_j|;
//  2. end to end: logits within tol = 2 L lambda sqrt(n) u max|logit| (the probabilistic
//     rounding bound, n = I or 2k+1, lambda = 8, over L layers), and the greedy tokens
//     identical over all steps. The smallest top-1 margin of the dense run is printed: a
//     margin above 2 tol means the tolerance alone guarantees the same greedy token.
#include <math.h>
#include <string.h>

#include "tests/greedy.h"

#define U 5.9604644775390625e-08   // 2^-24, unit roundoff of float32
#define LAMBDA 8.0

static double gamma_n(double n) { return n * U / (1.0 - n * U); }

// ---------------------------------------------------------------------------- layer check
typedef struct {
    const model *m;
    int upcycle_k;             // 0 for identity
    float *gate, *up, *y;      // dense FFN scratch
    double worst_ratio;        // max |diff| / bound over everything seen
    int violations;
    int64_t checked;
} layer_check;

static void check_layer(void *ctx, int l, const float *xn, const float *ffn_out, int n) {
    layer_check *lc = ctx;
    if (n == 0) return;
    const model *m = lc->m;
    backend *be = m->be;
    const layer_weights *L = &m->layers[l];
    int d = m->cfg.hidden_size, I = m->cfg.intermediate_size;
    be->matmul(be, lc->gate, xn, &L->w_gate, n);
    be->matmul(be, lc->up, xn, &L->w_up, n);
    be->swiglu(be, lc->gate, lc->gate, lc->up, (int64_t)n * I);
    be->matmul(be, lc->y, lc->gate, &L->w_down, n);
    float *row = xmalloc((size_t)I * sizeof(float));
    for (int t = 0; t < n; t++)
        for (int j = 0; j < d; j++) {
            double bound;
            double y = lc->y[(size_t)t * d + j], got = ffn_out[(size_t)t * d + j];
            if (lc->upcycle_k) {
                bound = gamma_n(2 * lc->upcycle_k + 1) * fabs(y);
            } else {
                to_f32(row, (const uint8_t *)L->w_down.data + (size_t)j * L->w_down.ld * dtype_size(L->w_down.dtype),
                       L->w_down.dtype, (size_t)I);
                double s = 0;
                for (int i = 0; i < I; i++) s += fabs((double)row[i] * lc->gate[(size_t)t * I + i]);
                bound = 2 * gamma_n(I) * s;
            }
            double diff = fabs(got - y);
            if (diff > bound) lc->violations++;
            if (bound > 0 && diff / bound > lc->worst_ratio) lc->worst_ratio = diff / bound;
            lc->checked++;
        }
    free(row);
}

// ---------------------------------------------------------------------------- one run
typedef struct {
    int32_t *ids;
    int n_ids;
    float *logits;             // [n_ids, V]
} run_result;

static void run(const char *dir, const char *mode_str, const int32_t *prompt, int n_prompt, int steps,
                run_result *r, layer_check *lc) {
    llamoe_err err;
    moe_mode mode;
    if (moe_mode_parse(mode_str, &mode, &err) != 0) die("%s", err.msg);
    model m;
    backend *cpu = backend_cpu_new(&(backend_options){.threads = 2});
    if (model_load(&m, dir, &mode, cpu, 0, 1, &err) != 0) die("%s", err.msg);
    int V = m.cfg.vocab_size, T = 64;
    FILE *dump = tmpfile();
    CHECK(dump);
    sequence q;
    run_state rs;
    run_state_init(&rs, &m, &(run_options){.max_tokens = T, .n_slots = 1, .ctx = n_prompt + steps + 1});
    if (lc) {
        int64_t I = m.cfg.intermediate_size, d = m.cfg.hidden_size;
        lc->m = &m;
        lc->gate = xmalloc((size_t)(T * I) * sizeof(float));
        lc->up = xmalloc((size_t)(T * I) * sizeof(float));
        lc->y = xmalloc((size_t)(T * d) * sizeof(float));
        rs.ffn_hook = check_layer;
        rs.ffn_hook_ctx = lc;
    }
    greedy_generate(&m, &rs, prompt, n_prompt, steps, T, dump, &q);
    r->n_ids = q.n_out;
    r->ids = xmalloc((size_t)q.n_out * sizeof(int32_t));
    memcpy(r->ids, q.out, (size_t)q.n_out * sizeof(int32_t));
    r->logits = xmalloc((size_t)q.n_out * V * sizeof(float));
    rewind(dump);
    CHECK(fread(r->logits, sizeof(float), (size_t)q.n_out * V, dump) == (size_t)q.n_out * V);
    fclose(dump);
    if (lc) { free(lc->gate); free(lc->up); free(lc->y); }
    sequence_free(&q);
    run_state_free(&rs, &m);
    model_free(&m);
    backend_free(cpu);
}

int main(int argc, char **argv) {
    const char *src = argc > 1 ? argv[1] : LLAMOE_SOURCE_DIR;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/models/stories260k", src);
    const char *modes_arg = NULL, *ids_arg = "1,403,407,261,378";   // "Once upon a time"
    int steps = 64;
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "-m")) snprintf(dir, sizeof dir, "%s", argv[i + 1]);
        else if (!strcmp(argv[i], "--steps")) steps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--ids")) ids_arg = argv[i + 1];
        else if (!strcmp(argv[i], "--modes")) modes_arg = argv[i + 1];
        else die("%s: unknown option (-m DIR, --steps N, --ids LIST, --modes LIST)", argv[i]);
    }
    llamoe_err err;
    llama_config cfg;
    if (config_load(&cfg, dir, &err) != 0) die("%s", err.msg);
    int I = cfg.intermediate_size, V = cfg.vocab_size;

    int32_t prompt[1024];
    int n_prompt = 0;
    for (char *s = (char *)ids_arg; *s && n_prompt < 1024;) {
        prompt[n_prompt++] = (int32_t)strtol(s, &s, 10);
        while (*s == ',' || *s == ' ') s++;
    }
    // Default modes: powers of two, E that do not divide I, E = I, and upcycle.
    char modes_buf[512];
    if (!modes_arg) {
        snprintf(modes_buf, sizeof modes_buf, "identity:1,identity:2,identity:4,identity:8,identity:7,identity:%d,upcycle:8:2",
                 I <= 4096 ? I : 12);
        modes_arg = modes_buf;
    }

    run_result dense;
    run(dir, "dense", prompt, n_prompt, steps, &dense, NULL);
    double max_logit = 0, min_margin = INFINITY;
    for (int s = 0; s < dense.n_ids; s++) {
        const float *row = dense.logits + (size_t)s * V;
        float top1 = -INFINITY, top2 = -INFINITY;
        for (int v = 0; v < V; v++) {
            max_logit = fmax(max_logit, fabs(row[v]));
            if (row[v] > top1) { top2 = top1; top1 = row[v]; }
            else if (row[v] > top2) top2 = row[v];
        }
        min_margin = fmin(min_margin, (double)top1 - top2);
    }
    printf("model %s: %d layers, FFN %d, vocab %d; %d greedy steps; max |logit| %.3f, smallest top-1 margin %.4g\n",
           dir, cfg.n_layers, I, V, dense.n_ids, max_logit, min_margin);
    printf("%-16s %12s %12s %12s %10s %14s %8s\n", "mode", "max|diff|", "/max|logit|", "tolerance", "tokens",
           "layer diff/bnd", "result");

    int passed = 0, failed = 0;
    char modes[512];
    snprintf(modes, sizeof modes, "%s", modes_arg);
    for (char *save, *mode = strtok_r(modes, ",", &save); mode; mode = strtok_r(NULL, ",", &save)) {
        moe_mode mm;
        if (moe_mode_parse(mode, &mm, &err) != 0) die("%s", err.msg);
        layer_check lc = {.upcycle_k = mm.kind == MOE_UPCYCLE ? mm.top_k : 0};
        run_result r;
        run(dir, mode, prompt, n_prompt, steps, &r, &lc);
        double n_terms = mm.kind == MOE_UPCYCLE ? 2 * mm.top_k + 1 : I;
        double tol = 2.0 * cfg.n_layers * LAMBDA * sqrt(n_terms) * U * max_logit;
        double max_diff = 0, max_rel = 0;
        int n_cmp = r.n_ids < dense.n_ids ? r.n_ids : dense.n_ids;
        for (size_t i = 0; i < (size_t)n_cmp * V; i++) {
            double dlt = fabs((double)r.logits[i] - dense.logits[i]);
            max_diff = fmax(max_diff, dlt);
            max_rel = fmax(max_rel, dlt / max_logit);
        }
        int same = r.n_ids == dense.n_ids && !memcmp(r.ids, dense.ids, (size_t)r.n_ids * sizeof(int32_t));
        int ok = same && max_diff <= tol && lc.violations == 0;
        printf("%-16s %12.3e %12.3e %12.3e %10s %14.3f %8s\n", mode, max_diff, max_rel, tol,
               same ? "identical" : "DIFFER", lc.worst_ratio, ok ? "ok" : "FAIL");
        if (lc.violations) printf("  %d of %lld layer outputs over the summation bound\n", lc.violations, (long long)lc.checked);
        if (ok) passed++;
        else failed++;
        free(r.ids);
        free(r.logits);
    }
    free(dense.ids);
    free(dense.logits);
    printf("parity: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
