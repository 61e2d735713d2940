// The MoE exchange's timing under mpirun -np P on the CPU backend, nccl-tests style: one line
// per size, the same columns every time. Tokens per rank 1 .. 256 (powers of two), d = 4096,
// E = 8, k = 2, uniform seeded routing, the experts replaced by ye = xe (no compute: this
// measures the plan, packing, the two all-to-alls, grouping and the combine).
//   mpirun -np 3 bench_dispatch [--d 4096] [--experts 8] [--k 2] [--max-tokens 256]
//                               [--plan counts|fixed] [--seconds 0.2] [--json FILE]
// Columns: bytes each rank sent / received to other ranks per exchange (max over ranks),
// dispatch and combine time (max over ranks of the mean), algbw = the bytes a rank moves
// (dispatch + combine, its own share included, mean over ranks) / time, busbw = algbw (P-1)/P
// as nccl-tests reports all-to-all, and #wrong: output rows that differ from the token's row
// (the first expert has weight 1, the others 0) after the last exchange (must be 0).
#include "base/rng.h"
#include "parallel/comm.h"
#include "runtime/moe.h"

#include <string.h>
#include <unistd.h>

static void copy_rows(void *ctx, moe_state *s, const moe_exchange_plan *plan) {
    memcpy(s->ye, s->xe, (size_t)s->offsets[s->n_local] * s->d * sizeof(float));
}


typedef struct {
    int tokens;
    double sent, recv, moved, dispatch_us, combine_us, total_us, algbw, busbw;
    long long wrong;
} bench_row;

int main(int argc, char **argv) {
    comm *c = comm_mpi_init(&argc, &argv);
    int d = 4096, E = 8, k = 2, max_tokens = 256;
    double seconds = 0.2;
    const char *json = NULL, *plan = "counts";
    for (int i = 1; i < argc; i++) {
        if (i + 1 < argc && !strcmp(argv[i], "--d")) d = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--experts")) E = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--k")) k = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--max-tokens")) max_tokens = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--seconds")) seconds = atof(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--json")) json = argv[++i];
        else if (i + 1 < argc && !strcmp(argv[i], "--plan")) plan = argv[++i];
        else die("bench_dispatch: unknown argument %s", argv[i]);
    }
    expert_placement p;
    llamoe_err err = {{0}};
    if (placement_init(&p, E, c->size, &err)) die("%s", err.msg);
    if (k < 1 || k > E || d < 1 || max_tokens < 1) die("bench_dispatch: need 1 <= k <= E, d >= 1, max tokens >= 1");
    if (strcmp(plan, "counts") && strcmp(plan, "fixed")) die("bench_dispatch: --plan %s: expected counts or fixed", plan);
    backend *be = backend_cpu_new(NULL);
    float *x = xmalloc((size_t)max_tokens * d * sizeof(float));
    float *y = xmalloc((size_t)max_tokens * d * sizeof(float));
    float *w = xcalloc((size_t)max_tokens * k, sizeof(float));
    int32_t *expert = xmalloc((size_t)max_tokens * k * sizeof(int32_t));
    for (int t = 0; t < max_tokens; t++) w[(size_t)t * k] = 1.0f;   // out = the token's own row
    rng_t rng = {rng_derive(1, 0x6469737061746368ull, (uint64_t)c->rank)};
    for (size_t i = 0; i < (size_t)max_tokens * d; i++) x[i] = (float)(rng_next(&rng) % 1000) / 999.0f;
    for (int t = 0; t < max_tokens; t++) {       // k distinct experts, ascending
        int32_t *e = expert + (size_t)t * k;
        for (int j = 0; j < k; j++) {
            int again;
            do { e[j] = (int32_t)(rng_next(&rng) % (uint64_t)E); again = 0; for (int i = 0; i < j; i++) again |= e[i] == e[j]; } while (again);
        }
        for (int a = 1; a < k; a++)
            for (int b = a; b > 0 && e[b] < e[b - 1]; b--) { int32_t tmp = e[b]; e[b] = e[b - 1]; e[b - 1] = tmp; }
    }

    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (c->rank == 0) {
        printf("# bench_dispatch: np %d (%d on this node), %ld cores on the node%s, d %d, E %d, k %d, transport %s, %s plan\n",
               c->size, c->local_size, cores, c->local_size > cores ? " (oversubscribed: timings are not speed)" : "",
               d, E, k, c->name, plan);
        printf("# %8s %12s %12s %12s %12s %12s %10s %10s %7s\n", "tokens", "sent_B", "recv_B", "dispatch_us",
               "combine_us", "total_us", "algbw_GB/s", "busbw_GB/s", "#wrong");
    }
    bench_row rows[32];
    int n_rows = 0;
    for (int n = 1; n <= max_tokens && n_rows < 32; n *= 2, n_rows++) {
        // One state per size: the fixed plan's capacity is the step's token count.
        moe_shape sh = {.n_experts = E, .top_k = k, .d = d, .n_layers = 1, .rank = c->rank, .n_ranks = c->size,
                        .max_tokens = n, .capacity = n, .kind = strcmp(plan, "fixed") ? MOE_EXCHANGE_COUNTS : MOE_EXCHANGE_FIXED};
        moe_state s;
        moe_state_init(&s, be, &sh);
        // warm up (first touch of the buffers), then size the loop so a point takes about `seconds`
        int iters = 3;
        for (int phase = 0; phase < 2; phase++) {
            moe_stats_reset(&s);
            c->barrier(c);
            double t0 = now_seconds();
            for (int it = 0; it < iters; it++) {
                moe_step_begin(&s, n, 1);
                moe_exchange_layer(&s, c, 0, x, n, expert, w, copy_rows, NULL, y);
                moe_step_end(&s);
            }
            if (phase == 0) {
                double per[1] = {(now_seconds() - t0) / iters};
                c->allreduce_max_f64(c, per, 1);
                int want = (int)(seconds / (per[0] > 1e-9 ? per[0] : 1e-9));
                iters = want < 5 ? 5 : want > 2000 ? 2000 : want;
            }
        }
        long long wrong = 0;
        for (int t = 0; t < n; t++) wrong += memcmp(y + (size_t)t * d, x + (size_t)t * d, (size_t)d * sizeof(float)) != 0;
        moe_stats_fetch(&s);
        const moe_traffic *tr = &s.stats.traffic;
        double sent = (double)(tr->dispatch_sent + tr->combine_sent) / iters, recv = (double)(tr->dispatch_recv + tr->combine_recv) / iters;
        double mx[4] = {s.stats.t_dispatch / iters, s.stats.t_combine / iters, sent, recv};
        c->allreduce_max_f64(c, mx, 4);
        int64_t sums[2] = {(int64_t)((tr->dispatch_sent + tr->combine_sent + tr->local) / (size_t)iters), wrong};
        c->allreduce_sum_i64(c, sums, 2);
        moe_state_free(&s);
        bench_row *r = &rows[n_rows];
        r->tokens = n;
        r->dispatch_us = mx[0] * 1e6;
        r->combine_us = mx[1] * 1e6;
        r->total_us = r->dispatch_us + r->combine_us;
        r->sent = mx[2];
        r->recv = mx[3];
        r->moved = (double)sums[0] / c->size;
        r->algbw = r->moved / (r->total_us * 1e-6) / 1e9;
        r->busbw = r->algbw * (c->size - 1) / c->size;
        r->wrong = sums[1];
        if (c->rank == 0)
            printf("  %8d %12.0f %12.0f %12.1f %12.1f %12.1f %10.3f %10.3f %7lld\n", n, r->sent, r->recv,
                   r->dispatch_us, r->combine_us, r->total_us, r->algbw, r->busbw, r->wrong);
    }
    if (c->rank == 0 && json) {
        out_file of;   // written whole or not at all (base/common.h)
        llamoe_err err;
        if (out_file_open(&of, json, &err) != 0) die("%s", err.msg);
        FILE *f = of.f;
        fprintf(f, "{\"bench\": \"dispatch\", \"np\": %d, \"local_size\": %d, \"node_cores\": %ld, \"oversubscribed\": %s,\n"
                   " \"d\": %d, \"experts\": %d, \"k\": %d, \"transport\": \"%s\", \"plan\": \"%s\",\n \"results\": [\n",
                c->size, c->local_size, cores, c->local_size > cores ? "true" : "false", d, E, k, c->name, plan);
        for (int i = 0; i < n_rows; i++) {
            bench_row *r = &rows[i];
            fprintf(f, "  {\"tokens_per_rank\": %d, \"bytes_sent\": %.0f, \"bytes_recv\": %.0f, \"bytes_moved\": %.0f, "
                       "\"dispatch_us\": %.2f, \"combine_us\": %.2f, \"total_us\": %.2f, \"algbw_gbs\": %.4f, "
                       "\"busbw_gbs\": %.4f, \"wrong\": %lld}%s\n", r->tokens, r->sent, r->recv, r->moved,
                    r->dispatch_us, r->combine_us, r->total_us, r->algbw, r->busbw, r->wrong, i + 1 < n_rows ? "," : "");
        }
        fprintf(f, " ]}\n");
        if (out_file_commit(&of, &err) != 0) die("%s", err.msg);
    }
    int64_t bad[1] = {n_rows ? rows[n_rows - 1].wrong : 0};
    free(x); free(y); free(w); free(expert);
    backend_free(be);
    comm_free(c);
    return bad[0] ? 1 : 0;
}
