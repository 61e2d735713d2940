// The MoE layer keeps its activations in backend memory: counted through the backend's copy
// counters (kernels/backend.h: backend_copies), every MoE layer of a step makes at most one
// copy to the host (the route counts of the counts plan) and none at all with the fixed-
// capacity plan, and never copies to the device; a forward call adds one upload (the rows
// that get logits). Both plans give the same logits, bitwise. On the bundled model, for each
// routed and identity mode; with --backend cuda on a GPU too (exit 77 without one).
//   test_moe_copies SOURCE_DIR [--backend cpu|cuda]
#include "tests/greedy.h"

#include <string.h>

static int failures = 0;
#define EXPECT(cond, ...) do { if (!(cond)) { fprintf(stderr, "FAIL " __VA_ARGS__); fprintf(stderr, "\n"); failures++; } } while (0)

// One prefill step of the prompt then `steps` decode steps of a greedy run, forcing the MoE
// exchange's plan; checks the copies of every MoE layer and returns the logits rows.
static float *run(backend *be, const char *dir, const char *mode_str, moe_exchange_kind kind, int steps) {
    llamoe_err err;
    moe_mode mode;
    if (moe_mode_parse(mode_str, &mode, &err) != 0) die("%s", err.msg);
    model m;
    if (model_load(&m, dir, &mode, be, 0, 1, &err) != 0) die("%s", err.msg);
    int32_t prompt[] = {1, 403, 407, 261, 378};
    int n_prompt = 5, V = m.cfg.vocab_size, L = m.cfg.n_layers;
    CHECK(V == 512);   // the bundled model's vocabulary (main compares rows of it)
    run_state rs;
    run_state_init(&rs, &m, &(run_options){.max_tokens = 8, .n_slots = 1, .ctx = 64, .moe_exchange = kind, .moe_capacity = 8});
    comm *c = self_comm_for(be);
    float *logits = be->alloc(be, (size_t)V * sizeof(float)), *rows = xmalloc((size_t)(steps + 1) * V * sizeof(float));
    int32_t tok[8], slot[8] = {0}, pos[8], last = 0;
    for (int step = 0; step <= steps; step++) {
        int n = step == 0 ? n_prompt : 1;
        for (int i = 0; i < n; i++) {
            tok[i] = step == 0 ? prompt[i] : 0;
            pos[i] = step == 0 ? i : n_prompt + step - 1;
        }
        if (step > 0) tok[0] = last;   // the greedy token
        int32_t logit_row = n - 1;
        backend_copies before = be->copies;
        forward_step_hint(&rs, n, step > 0);
        forward(&m, &rs, c, tok, slot, pos, n, &logit_row, 1, logits);
        backend_copies after = be->copies;
        int64_t up = after.uploads - before.uploads, down = after.downloads - before.downloads;
        int fixed = kind == MOE_EXCHANGE_FIXED;
        EXPECT(up == 1, "%s %s step %d: %lld uploads in a forward call (the logit rows only: 1)", mode_str,
               fixed ? "fixed" : "counts", step, (long long)up);
        EXPECT(down == (fixed ? 0 : L), "%s %s step %d: %lld downloads over %d MoE layers (want %d)", mode_str,
               fixed ? "fixed" : "counts", step, (long long)down, L, fixed ? 0 : L);
        be->download(be, rows + (size_t)step * V, logits, (size_t)V * sizeof(float));
        be->argmax(be, &last, logits, 1, V);
    }
    printf("%-15s %-6s plan: %d steps, %d MoE layers: at most one copy to the host per layer (%s), none to the device\n",
           mode_str, kind == MOE_EXCHANGE_FIXED ? "fixed" : "counts", steps + 1, L,
           kind == MOE_EXCHANGE_FIXED ? "none" : "the counts");
    be->free(be, logits);
    c->free(c);
    run_state_free(&rs, &m);
    model_free(&m);
    return rows;
}

int main(int argc, char **argv) {
    const char *src = argc > 1 ? argv[1] : LLAMOE_SOURCE_DIR;
    backend *be = NULL;
    if (argc > 3 && !strcmp(argv[2], "--backend") && !strcmp(argv[3], "cuda")) {
#ifdef LLAMOE_CUDA
        if (cuda_device_count() == 0) {
            printf("test_moe_copies --backend cuda: no CUDA device: skipped\n");
            return 77;
        }
        llamoe_err err;
        if (!(be = backend_cuda_new(&(backend_options){0}, &err))) die("%s", err.msg);
#else
        printf("test_moe_copies --backend cuda: this build has no CUDA backend: skipped\n");
        return 77;
#endif
    } else {
        be = backend_cpu_new(&(backend_options){.threads = 2});
    }
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/models/stories260k", src);
    const char *modes[] = {"upcycle:8:2", "production:8:2", "identity:8"};
    int steps = 6, V = 512;
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
        float *a = run(be, dir, modes[i], MOE_EXCHANGE_COUNTS, steps), *b = run(be, dir, modes[i], MOE_EXCHANGE_FIXED, steps);
        EXPECT(!memcmp(a, b, (size_t)(steps + 1) * V * sizeof(float)), "%s: the fixed plan's logits differ from the counts plan's",
               modes[i]);
        free(a);
        free(b);
    }
    backend_free(be);
    printf("test_moe_copies: %d failures\n", failures);
    return failures != 0;
}
