// Under mpirun -np P: the MoE exchange (plan, pack, dispatch, group, fake experts, return,
// combine) for a table of (E, k, d) cases, several steps each, on both plans (counts and
// fixed), with the contiguous placement and (rows up to 64 floats) with P redundant copies
// placed by the balancer for random loads (the same table on every rank), with seeded random
// tokens per rank and one rank with no tokens every step. Every rank checks its combined
// outputs bitwise (tests/exchange_check.h); then the traffic must balance over the ranks (what
// is sent is received). Exit 0 when every check passed; a failure ends all ranks with a
// message.
#include "parallel/balance.h"
#include "parallel/comm.h"
#include "tests/exchange_check.h"

typedef struct { int E, k, d, max_tokens; } dispatch_case;

// E experts and R copies on P ranks, placed for loads drawn from seed (the same on every rank).
static void replica_table(placement_table *t, int E, int R, int P, uint64_t seed) {
    CHECK(placement_table_alloc(t, 1, E, E + R, P, NULL) == 0);
    rng_t rng = {seed};
    int64_t load[512];
    for (int e = 0; e < E; e++) load[e] = (int64_t)(rng_next(&rng) % 100);
    balance_layer(t->logical, load, E, E + R, P, NULL);
    CHECK(placement_table_check(t, NULL) == 0);
}

static void run_case(comm *c, backend *be, const dispatch_case *tc, int case_id, uint64_t seed) {
    for (int variant = 0; variant < 4; variant++) {
        if (variant >= 2 && tc->d > 64) break;   // copies: the small rows say it all, cheaper
        int fixed = variant & 1, R = variant < 2 ? 0 : c->size;
        if ((int64_t)tc->E + R > (int64_t)tc->E * c->size) R = tc->E * (c->size - 1);   // one copy per rank at most
        placement_table table = {0};
        if (variant >= 2) replica_table(&table, tc->E, R, c->size, seed + (uint64_t)case_id);
        moe_shape sh = {.n_experts = tc->E, .top_k = tc->k, .d = tc->d, .n_layers = 1, .rank = c->rank,
                        .n_ranks = c->size, .placement = variant >= 2 ? &table : NULL, .max_tokens = tc->max_tokens,
                        .capacity = tc->max_tokens, .kind = fixed ? MOE_EXCHANGE_FIXED : MOE_EXCHANGE_COUNTS};
        moe_state s;
        moe_state_init(&s, be, &sh);
        for (int step = 0; step < 4; step++) {
            rng_t r = {seed * 1000003u + (uint64_t)case_id * 7919u + (uint64_t)step * 104729u + (uint64_t)c->rank * 31337u + 1};
            int n = (int)(rng_next(&r) % (uint64_t)(tc->max_tokens + 1));
            if (step == 1) n = tc->max_tokens;                  // largest step after a small one
            if (c->rank == (case_id + step) % c->size) n = 0;   // a rank with no tokens takes part
            char what[128];
            snprintf(what, sizeof what, "case %d (E=%d k=%d d=%d R=%d) step %d, %s plan", case_id, tc->E, tc->k, tc->d, R,
                     step, fixed ? "fixed" : "counts");
            if (exchange_round_trip(&s, c, n, rng_next(&r), 1, what)) die("%s: outputs differ (see above)", what);
        }
        // Conservation across ranks: every byte sent is received.
        moe_stats_fetch(&s);
        const moe_traffic *tr = &s.stats.traffic;
        int64_t sums[4] = {(int64_t)tr->dispatch_sent, (int64_t)tr->dispatch_recv, (int64_t)tr->combine_sent,
                           (int64_t)tr->combine_recv};
        c->allreduce_sum_i64(c, sums, 4);
        if (sums[0] != sums[1] || sums[2] != sums[3])
            die("case %d, %s plan: traffic does not balance: dispatch %lld/%lld, combine %lld/%lld", case_id,
                fixed ? "fixed" : "counts", (long long)sums[0], (long long)sums[1], (long long)sums[2], (long long)sums[3]);
        moe_state_free(&s);
        placement_table_free(&table);
    }
}

int main(int argc, char **argv) {
    comm *c = comm_mpi_init(&argc, &argv);
    uint64_t seed = argc > 1 ? strtoull(argv[1], NULL, 10) : 1234;
    static const dispatch_case cases[] = {
        {8, 1, 16, 40},
        {8, 2, 64, 33},
        {8, 8, 8, 20},    // identity: every token to every rank, all experts
        {4, 3, 5, 17},    // odd row size
        {5, 5, 3, 9},     // E not a multiple of P, identity
        {4, 1, 1, 50},    // E = P at np 4: one expert per rank
        {4, 2, 2048, 24}, // rows of 8 KiB: messages above a small chunk size
    };
    int n_cases = (int)(sizeof cases / sizeof cases[0]);
    backend *be = backend_cpu_new(NULL);
    for (int i = 0; i < n_cases; i++) {
        if (cases[i].E < c->size) continue;   // placement refuses E < P (tested in test_placement)
        run_case(c, be, &cases[i], i, seed);
    }
    backend_free(be);
    c->barrier(c);
    if (c->rank == 0) printf("check_dispatch: np %d, seed %llu: all cases bitwise equal\n", c->size, (unsigned long long)seed);
    comm_free(c);
    return 0;
}
