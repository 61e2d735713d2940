// The one-process communicator, the chunking arithmetic of the MPI transport, and a
// dispatch/combine round trip over comm_self (P = 1: everything is a local copy).
#include "parallel/comm.h"
#include "parallel/dispatch.h"

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

// P = 1 round trip with y = x * (e + 1) + e as the "expert"; y_pairs must match bitwise.
static void test_round_trip(int E, int k, int n, int d) {
    comm *c = comm_self();
    expert_placement p;
    EXPECT(placement_init(&p, E, 1, NULL) == 0);
    moe_exchange *ex = moe_exchange_new(&p, 0, d);
    float *x = xmalloc((size_t)n * d * sizeof(float));
    int32_t *expert = xmalloc((size_t)n * k * sizeof(int32_t));
    float *y = xmalloc((size_t)n * k * d * sizeof(float));
    for (int t = 0; t < n; t++) {
        for (int i = 0; i < d; i++) x[(size_t)t * d + i] = (float)((t * 31 + i * 7) % 101) / 13.0f - 3.0f;
        for (int j = 0; j < k; j++) expert[t * k + j] = (t + j * (E / k)) % E;   // distinct, then sorted
        for (int a = 1; a < k; a++)
            for (int b = a; b > 0 && expert[t * k + b] < expert[t * k + b - 1]; b--) {
                int32_t tmp = expert[t * k + b]; expert[t * k + b] = expert[t * k + b - 1]; expert[t * k + b - 1] = tmp;
            }
    }
    const float *xe;
    const int64_t *off;
    int64_t m = -1;
    llamoe_err err = {{0}};
    EXPECT(moe_dispatch(ex, c, x, n, expert, k, &xe, &off, &m, &err) == 0);
    EXPECT(m == (int64_t)n * k && off[0] == 0 && off[E] == m);
    float *ye = xmalloc((size_t)(m ? m : 1) * d * sizeof(float));
    for (int e = 0; e < E; e++)
        for (int64_t r = off[e]; r < off[e + 1]; r++)
            for (int i = 0; i < d; i++) ye[r * d + i] = xe[r * d + i] * (float)(e + 1) + (float)e;
    EXPECT(moe_combine(ex, c, ye, y, &err) == 0);
    for (int t = 0; t < n; t++)
        for (int j = 0; j < k; j++) {
            int e = expert[t * k + j];
            for (int i = 0; i < d; i++) {
                float want = x[(size_t)t * d + i] * (float)(e + 1) + (float)e;
                if (memcmp(&want, &y[((size_t)t * k + j) * d + i], sizeof want)) {
                    fprintf(stderr, "round trip E=%d k=%d: token %d expert %d elem %d: %g != %g\n",
                            E, k, t, e, i, y[((size_t)t * k + j) * d + i], want);
                    failures++;
                    t = n; j = k; break;
                }
            }
        }
    moe_traffic tr;
    moe_exchange_traffic(ex, &tr);
    EXPECT(tr.bytes_sent == 0 && tr.bytes_recv == 0 && tr.pairs_home == (int64_t)n * k);
    // Bad input: descending ids give -1 with a message, and the exchange stays usable.
    if (k >= 2 && n >= 1) {
        int32_t saved = expert[0];
        expert[0] = expert[1];
        EXPECT(moe_dispatch(ex, c, x, n, expert, k, &xe, &off, &m, &err) == -1);
        EXPECT(strstr(err.msg, "not strictly ascending") != NULL);
        expert[0] = saved;
        EXPECT(moe_dispatch(ex, c, x, n, expert, k, &xe, &off, &m, &err) == 0);
        EXPECT(moe_combine(ex, c, ye, y, &err) == 0);
    }
    free(x); free(expert); free(y); free(ye);
    moe_exchange_free(ex);
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
