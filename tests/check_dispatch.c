// Under mpirun -np P: dispatch -> fake experts -> combine for a table of (E, k, d) cases and
// several steps each, with seeded random tokens and expert choices per rank (one rank with
// no tokens every step). The fake expert y = x * (e + 1) + e depends only on the row and the
// global expert id, so every rank can check its y_pairs bitwise without the others. Owners
// also check that xe is grouped by expert in (source rank, source position) order.
// Ends with a step where one rank passes bad expert ids: every rank must get -1, no hang.
// Exit 0 when every check passed; any failure die()s, which ends all ranks.
#include "parallel/comm.h"
#include "parallel/dispatch.h"

#include <string.h>

static uint64_t rng_state;
static uint32_t rng(void) {   // xorshift64*: the same stream on every machine
    rng_state ^= rng_state >> 12; rng_state ^= rng_state << 25; rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 0x2545F4914F6CDD1DULL) >> 32);
}

// k distinct experts of E, ascending.
static void choose_experts(int32_t *out, int E, int k) {
    int32_t pool[256];
    for (int e = 0; e < E; e++) pool[e] = e;
    for (int j = 0; j < k; j++) {
        int pick = j + (int)(rng() % (uint32_t)(E - j));
        int32_t tmp = pool[j]; pool[j] = pool[pick]; pool[pick] = tmp;
        out[j] = pool[j];
    }
    for (int a = 1; a < k; a++)
        for (int b = a; b > 0 && out[b] < out[b - 1]; b--) { int32_t t = out[b]; out[b] = out[b - 1]; out[b - 1] = t; }
}

static float fake_expert(float x, int e) { return x * (float)(e + 1) + (float)e; }

typedef struct { int E, k, d, max_tokens; } dispatch_case;

static void run_case(comm *c, const dispatch_case *tc, int case_id, uint64_t seed) {
    expert_placement p;
    llamoe_err err = {{0}};
    if (placement_init(&p, tc->E, c->size, &err)) die("%s", err.msg);
    moe_exchange *ex = moe_exchange_new(&p, c->rank, tc->d);
    int d = tc->d, k = tc->k, first = placement_first(&p, c->rank);
    for (int step = 0; step < 4; step++) {
        rng_state = seed * 1000003u + (uint64_t)case_id * 7919u + (uint64_t)step * 104729u + (uint64_t)c->rank * 31337u + 1;
        int n = (int)(rng() % (uint32_t)(tc->max_tokens + 1));
        if (step == 1) n = tc->max_tokens;                  // largest step after a small one: buffers grow
        if (c->rank == (case_id + step) % c->size) n = 0;   // a rank with no tokens takes part
        float *x = xmalloc((size_t)n * d * sizeof(float));
        int32_t *expert = xmalloc((size_t)n * k * sizeof(int32_t));
        float *y = xmalloc((size_t)n * k * d * sizeof(float));
        for (int t = 0; t < n; t++) {
            // element 0 says where the row comes from (exact in float), so owners can check order
            x[(size_t)t * d] = (float)(c->rank * 100000 + t);
            for (int i = 1; i < d; i++) x[(size_t)t * d + i] = (float)((int)(rng() % 20001u) - 10000) / 37.0f;
            choose_experts(expert + (size_t)t * k, tc->E, k);
        }
        const float *xe;
        const int64_t *off;
        int64_t m;
        if (moe_dispatch(ex, c, x, n, expert, k, &xe, &off, &m, &err)) die("%s", err.msg);
        float *ye = xmalloc((size_t)m * d * sizeof(float));
        for (int le = 0; le < placement_count(&p, c->rank); le++)
            for (int64_t r = off[le]; r < off[le + 1]; r++) {
                if (r > off[le] && !(xe[r * d] > xe[(r - 1) * d]))
                    die("case %d step %d: expert %d rows out of (source rank, position) order: %.0f after %.0f",
                        case_id, step, first + le, xe[r * d], xe[(r - 1) * d]);
                for (int i = 0; i < d; i++) ye[r * d + i] = fake_expert(xe[r * d + i], first + le);
            }
        if (moe_combine(ex, c, ye, y, &err)) die("%s", err.msg);
        for (int t = 0; t < n; t++)
            for (int j = 0; j < k; j++)
                for (int i = 0; i < d; i++) {
                    float want = fake_expert(x[(size_t)t * d + i], expert[(size_t)t * k + j]);
                    float got = y[((size_t)t * k + j) * d + i];
                    if (memcmp(&want, &got, sizeof want))
                        die("case %d (E=%d k=%d d=%d) step %d: token %d expert %d element %d: got %.9g, expected %.9g",
                            case_id, tc->E, k, d, step, t, expert[(size_t)t * k + j], i, got, want);
                }
        // Conservation across ranks: every pair computed once, every row sent is received.
        moe_traffic tr;
        moe_exchange_traffic(ex, &tr);
        int64_t sums[6] = {tr.pairs_home, tr.pairs_owned, tr.rows_sent, tr.rows_recv,
                           (int64_t)tr.bytes_sent, (int64_t)tr.bytes_recv};
        c->allreduce_sum_i64(c, sums, 6);
        if (sums[0] != sums[1] || sums[2] != sums[3] || sums[4] != sums[5])
            die("case %d step %d: traffic does not balance: pairs %lld/%lld rows %lld/%lld bytes %lld/%lld",
                case_id, step, (long long)sums[0], (long long)sums[1], (long long)sums[2],
                (long long)sums[3], (long long)sums[4], (long long)sums[5]);
        free(x); free(expert); free(y); free(ye);
    }

    // Bad input on the last rank: every rank returns -1 and the exchange stays usable.
    int n = 2, bad = c->rank == c->size - 1 && k >= 2;
    float x[2 * 64] = {0};
    int32_t expert[2 * 64];
    for (int t = 0; t < n; t++)
        for (int j = 0; j < k; j++) expert[t * k + j] = bad ? k - 1 - j : j;   // descending on the bad rank
    const float *xe;
    const int64_t *off;
    int64_t m;
    if (k >= 2 && d <= 64) {
        int rc = moe_dispatch(ex, c, x, n, expert, k, &xe, &off, &m, &err);
        if (rc != -1) die("case %d: dispatch with bad ids on rank %d returned %d, expected -1", case_id, c->size - 1, rc);
        if (!strstr(err.msg, bad ? "not strictly ascending" : "reported invalid input"))
            die("case %d: unexpected error text: %s", case_id, err.msg);
    }
    moe_exchange_free(ex);
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
    for (int i = 0; i < n_cases; i++) {
        if (cases[i].E < c->size) continue;   // placement refuses E < P (tested in test_placement)
        run_case(c, &cases[i], i, seed);
    }
    c->barrier(c);
    if (c->rank == 0) printf("check_dispatch: np %d, seed %llu: all cases bitwise equal\n", c->size, (unsigned long long)seed);
    comm_free(c);
    return 0;
}
