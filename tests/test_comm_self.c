// The one-process communicator, the chunking arithmetic of the MPI transport, and MoE
// exchange round trips over comm_self (P = 1: everything is a local copy).
#include "parallel/comm.h"
#include "tests/exchange_check.h"

#include <limits.h>
#include <string.h>

static int failures = 0;
#define EXPECT(cond) do { if (!(cond)) { fprintf(stderr, "%s:%d: expected %s\n", __FILE__, __LINE__, #cond); failures++; } } while (0)

static void test_self(void) {
    comm *c = comm_self();
    EXPECT(c->size == 1 && c->rank == 0 && c->local_size == 1 && !strcmp(c->name, "self"));
    char send[16] = "abcdefghijklmno", recv[16] = {0};
    size_t sb[1] = {5}, sd[1] = {3}, rb[1] = {5}, rd[1] = {8};
    EXPECT(c->alltoallv(c, send, sb, sd, recv, rb, rd) == 0);
    EXPECT(!memcmp(recv + 8, "defgh", 5) && recv[7] == 0 && recv[13] == 0);
    int64_t cs[3] = {1, -2, 3}, cr[3] = {0};
    EXPECT(c->exchange_counts(c, cs, cr, 3) == 0 && cr[0] == 1 && cr[1] == -2 && cr[2] == 3);
    int64_t v[2] = {4, 5};
    double f[1] = {2.5};
    EXPECT(c->allreduce_sum_i64(c, v, 2) == 0 && v[0] == 4 && v[1] == 5);
    EXPECT(c->allreduce_max_f64(c, f, 1) == 0 && f[0] == 2.5);
    EXPECT(c->bcast(c, send, sizeof send, 0) == 0 && send[0] == 'a');
    EXPECT(c->bcast(c, send, sizeof send, 1) == -1);
    EXPECT(c->barrier(c) == 0);
    comm_free(c);
}

// Large messages go as chunks of at most `chunk` bytes: check the arithmetic at the edges,
// including a message just past 2 GiB with the MPI transport's largest chunk (INT_MAX).
static void test_chunks(void) {
    EXPECT(comm_n_chunks(0, 1000) == 0);
    EXPECT(comm_n_chunks(1, 1000) == 1 && comm_chunk_size(1, 1000, 0) == 1);
    EXPECT(comm_n_chunks(1000, 1000) == 1 && comm_chunk_size(1000, 1000, 0) == 1000);
    EXPECT(comm_n_chunks(1001, 1000) == 2 && comm_chunk_size(1001, 1000, 1) == 1);
    size_t big = ((size_t)1 << 31) + 5, chunk = INT_MAX;
    EXPECT(comm_n_chunks(big, chunk) == 2);
    EXPECT(comm_chunk_size(big, chunk, 0) == (size_t)INT_MAX && comm_chunk_size(big, chunk, 1) == 6);
    size_t huge = (size_t)5 << 32, sum = 0;   // 20 GiB in 1 GiB chunks
    for (size_t i = 0, n = comm_n_chunks(huge, (size_t)1 << 30); i < n; i++) sum += comm_chunk_size(huge, (size_t)1 << 30, i);
    EXPECT(sum == huge && comm_n_chunks(huge, (size_t)1 << 30) == 20);
}

// P = 1 round trips through the MoE exchange (tests/exchange_check.h) on both plans: the
// fake experts' outputs come back summed bitwise, and nothing crosses to another rank.
static void test_round_trip(int E, int k, int n, int d) {
    comm *c = comm_self();
    backend *be = backend_cpu_new(NULL);
    for (int fixed = 0; fixed < 2; fixed++) {
        moe_shape sh = {.n_experts = E, .top_k = k, .d = d, .n_layers = 1, .rank = 0, .n_ranks = 1,
                        .max_tokens = n > 0 ? n : 1, .capacity = n > 0 ? n : 1,
                        .kind = fixed ? MOE_EXCHANGE_FIXED : MOE_EXCHANGE_COUNTS};
        moe_state s;
        moe_state_init(&s, be, &sh);
        char what[96];
        snprintf(what, sizeof what, "round trip E=%d k=%d n=%d d=%d %s", E, k, n, d, fixed ? "fixed" : "counts");
        for (int step = 0; step < 2; step++) EXPECT(exchange_round_trip(&s, c, n, 77 + step, 1, what) == 0);
        moe_stats_fetch(&s);
        const moe_traffic *tr = &s.stats.traffic;
        EXPECT(tr->dispatch_sent == 0 && tr->dispatch_recv == 0 && tr->combine_sent == 0 && tr->combine_recv == 0);
        EXPECT(fixed ? tr->exchanges_fixed == 2 : tr->exchanges_counts == 2);
        int64_t pairs = 0;
        for (int e = 0; e < E; e++) pairs += s.stats.tokens_per_expert[e];
        EXPECT(pairs == 2 * (int64_t)n * k && s.stats.rows_to[0] == 2 * (int64_t)n);
        moe_state_free(&s);
    }
    backend_free(be);
    comm_free(c);
}

int main(void) {
    test_self();
    test_chunks();
    test_round_trip(8, 2, 37, 16);
    test_round_trip(8, 8, 5, 3);     // identity: every expert
    test_round_trip(4, 1, 0, 8);     // no tokens
    test_round_trip(1, 1, 3, 1);
    if (failures) { fprintf(stderr, "test_comm_self: %d failures\n", failures); return 1; }
    printf("test_comm_self: ok\n");
    return 0;
}
