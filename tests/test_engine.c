// The serving engine is batch-invariant: sequences that join at different steps, share the
// batch with others, are chunked by a small step budget and wait for a free KV slot each get
// the tokens they get alone from generate() (greedy and sampled), in every MoE mode; a sequence
// that leaves early changes nothing for the others. One process (comm_self); the MPI side of
// the engine is checked by tests/test_serve.sh at 1 and 3 ranks.
//   test_engine SRC_DIR
#include <string.h>

#include "parallel/comm.h"
#include "runtime/engine.h"

enum { N_SEQS = 7, MAX_NEW = 20, CTX = 64 };

static const int32_t prompts[N_SEQS][12] = {
    {1, 403, 407, 261, 378}, {1, 365, 378, 261, 417, 267, 345}, {1}, {1, 403, 407, 261, 378, 432, 383, 286, 261, 376},
    {1, 282, 295}, {1, 298, 315, 421, 395, 317}, {1, 411, 322, 265}};
static const int prompt_len[N_SEQS] = {5, 7, 1, 10, 3, 6, 4};
static const engine_request sampling[N_SEQS] = {
    {MAX_NEW, 0.0f, 1.0f, 1, -1, 0},  {MAX_NEW, 0.9f, 0.9f, 7, -1, 0},   {MAX_NEW, 1.0f, 1.0f, 42, -1, 1},
    {MAX_NEW, 0.0f, 1.0f, 3, -1, 0},  {MAX_NEW, 0.7f, 0.5f, 1234, -1, 1}, {12, 1.2f, 0.95f, 5, -1, 0},
    {MAX_NEW, 0.0f, 1.0f, 9, -1, 1}};

// What generate() gives for prompt i alone (sequence index 0, its own seed).
static int alone(const model *m, int i, int32_t *out) {
    const engine_request *r = &sampling[i];
    gen_options o = {.max_new = r->max_new, .temperature = r->temperature, .top_p = r->top_p, .seed = r->seed,
                     .step_tokens = 256};
    sequence q;
    sequence_init(&q, 0, prompts[i], prompt_len[i], 0, &o);
    q.ignore_eos = r->ignore_eos;
    run_state rs;
    run_state_init(&rs, m, &(run_options){.max_tokens = 256, .n_slots = 1, .ctx = CTX});
    comm *c = comm_self();
    gen_stats gs;
    llamoe_err err;
    if (generate(m, &rs, c, &q, 1, &o, &gs, &err) != 0) die("%s", err.msg);
    int n = q.n_out;
    memcpy(out, q.out, (size_t)n * sizeof(int32_t));
    c->free(c);
    run_state_free(&rs, m);
    sequence_free(&q);
    return n;
}

// The engine with kv_slots per rank and a step budget of step_tokens against want[i][0..n_want[i]).
static int run_engine(const model *m, const char *mode_str, int kv_slots, int step_tokens,
                      int32_t want[N_SEQS][MAX_NEW], const int *n_want) {
    llamoe_err err;
    int32_t got[N_SEQS][MAX_NEW];
    int n_got[N_SEQS] = {0}, done[N_SEQS] = {0};
    comm *c = comm_self();
    engine_options eo = {.kv_slots = kv_slots, .ctx = CTX, .step_tokens = step_tokens};
    engine *e = engine_new(m, c, &eo);
    int seq_of[N_SEQS], who[64];
    for (int i = 0; i < N_SEQS; i++) seq_of[i] = -1;
    // A sequence that is cancelled after 4 tokens (a client gone): the others must not notice.
    int32_t extra_prompt[3] = {1, 403, 407};
    engine_request extra = {MAX_NEW, 0.8f, 1.0f, 77, -1, 1};
    int extra_seq = -1, extra_tokens = 0, extra_done = 0;
    int next = 0, steps = 0, failures = 0;
    for (; steps < 1000; steps++) {
        // Joins: one new sequence every other step while a slot is free, the extra one at step 1.
        if (steps == 1 && (extra_seq = engine_join(e, extra_prompt, 3, &extra)) >= 0) who[extra_seq] = -1;
        if (steps % 2 == 0 && next < N_SEQS && engine_free_slots(e) > 0) {
            seq_of[next] = engine_join(e, prompts[next], prompt_len[next], &sampling[next]);
            who[seq_of[next]] = next;
            next++;
        }
        const engine_token *t;
        int n;
        int st = engine_step(e, &t, &n, &err);
        if (st < 0) die("%s", err.msg);
        if (st == ENGINE_IDLE && next == N_SEQS) break;
        for (int k = 0; k < n; k++) {
            int i = who[t[k].seq];
            if (i < 0) {
                extra_tokens++;
                if (t[k].stop != STOP_NONE) extra_done = 1;
                continue;
            }
            got[i][n_got[i]++] = t[k].token;
            if (t[k].stop != STOP_NONE) done[i] = 1;
        }
        if (extra_seq >= 0 && !extra_done && extra_tokens == 4) {
            engine_leave(e, extra_seq);
            extra_done = 1;
        }
    }
    for (int i = 0; i < N_SEQS; i++) {
        int same = done[i] && n_got[i] == n_want[i] && !memcmp(got[i], want[i], (size_t)n_want[i] * sizeof(int32_t));
        if (!same) {
            failures++;
            fprintf(stderr, "FAIL %s kv_slots %d step_tokens %d: sequence %d: %d tokens, %d alone%s\n", mode_str, kv_slots,
                    step_tokens, i, n_got[i], n_want[i], done[i] ? "" : " (not finished)");
        }
    }
    const engine_stats *es = engine_get_stats(e);
    printf("%s %-14s kv_slots %d step_tokens %-3d: %d sequences in %lld steps (%lld prefill, %lld decode tokens): %s\n",
           failures ? "FAIL" : "ok  ", mode_str, kv_slots, step_tokens, N_SEQS, (long long)es->steps,
           (long long)es->prefill_tokens, (long long)es->decode_tokens, failures ? "differ from alone" : "each as alone");
    engine_free(e);
    c->free(c);
    return failures;
}

static int run_mode(const char *dir, const char *mode_str) {
    llamoe_err err;
    moe_mode mode;
    CHECK(moe_mode_parse(mode_str, &mode, &err) == 0);
    mode.seed = 1234;
    model m;
    backend *cpu = backend_cpu_new(NULL);
    if (model_load(&m, dir, &mode, cpu, 0, 1, &err) != 0) die("%s", err.msg);
    int32_t want[N_SEQS][MAX_NEW];
    int n_want[N_SEQS];
    for (int i = 0; i < N_SEQS; i++) n_want[i] = alone(&m, i, want[i]);
    int failures = run_engine(&m, mode_str, 3, 4, want, n_want)      // waits for slots; prompts in chunks of 4
                 + run_engine(&m, mode_str, 8, 256, want, n_want);   // everyone at once
    model_free(&m);
    backend_free(cpu);
    return failures;
}

int main(int argc, char **argv) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/models/stories260k", argc > 1 ? argv[1] : LLAMOE_SOURCE_DIR);
    int failures = 0;
    const char *modes[] = {"dense", "identity:8", "upcycle:8:2", "production:8:2"};
    for (int i = 0; i < 4; i++) failures += run_mode(dir, modes[i]);
    printf("test_engine: %s\n", failures ? "FAILED" : "passed");
    return failures ? 1 : 0;
}
