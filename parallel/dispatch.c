// Dispatch/combine for expert parallelism: planning, packing, one counts exchange and two
// all-to-all-v rounds per layer and step. Wire format (docs/parallel.md has the why):
//
//   counts:   to each peer 3 int64: rows, pairs, shape key (d << 32 | E); -1 rows = bad input
//   dispatch: to each peer one message: its rows [rows, d] float, in home token order, then
//             its pairs [pairs] x {int32 row index in this message, int32 local expert id},
//             in (token, expert) order
//   combine:  to each source one message: one output row [d] float per pair it sent, in the
//             order of its pairs
#include "parallel/dispatch.h"

#include <string.h>

#define N_COUNTS 3   // int64 values per peer in the counts exchange

struct moe_exchange {
    expert_placement place;
    int rank, n_ranks, d, n_local, first_local;
    size_t row_bytes;

    // per peer, length P
    int64_t *counts_send, *counts_recv;    // [P * N_COUNTS]
    int64_t *rows_to, *pairs_to;           // home side plan
    int64_t *rows_from, *pairs_from;       // owner side, from the counts exchange
    int64_t *pair_base_to, *pair_base_from; // prefix sums of pairs_to / pairs_from
    int64_t *row_cur, *pair_cur;           // packing cursors
    size_t *send_bytes, *send_displ, *recv_bytes, *recv_displ;

    // home side
    int n, k;
    int64_t *pair_slot; size_t pair_slot_cap;   // [n * k]: y_pairs row of the i-th pair sent
    char *home_buf; size_t home_cap;            // dispatch send, then combine receive

    // owner side
    int64_t n_rows;                             // M: pairs received = rows of xe
    int64_t *offsets, *expert_cur;              // [n_local + 1], [n_local]
    int64_t *owner_row; size_t owner_row_cap;   // [M]: xe row of the i-th pair received
    float *xe; size_t xe_cap;
    char *owner_buf; size_t owner_cap;          // dispatch receive, then combine send

    int combine_pending;
    moe_traffic traffic;
};

// Grows *buf to hold `bytes` (contents are not kept: every user rewrites them).
static void reserve(void **buf, size_t *cap, size_t bytes) {
    if (bytes <= *cap) return;
    free(*buf);
    *buf = xmalloc(bytes);
    *cap = bytes;
}

static size_t mul3(size_t a, size_t b, size_t c) {
    size_t ab, abc;
    CHECK(mul_ok(a, b, &ab) && mul_ok(ab, c, &abc));
    return abc;
}

// ---------------------------------------------------------------------------- lifecycle
moe_exchange *moe_exchange_new(const expert_placement *p, int rank, int d) {
    CHECK(rank >= 0 && rank < p->n_ranks && d > 0);
    moe_exchange *ex = xcalloc(1, sizeof *ex);
    int P = p->n_ranks;
    ex->place = *p;
    ex->rank = rank;
    ex->n_ranks = P;
    ex->d = d;
    ex->row_bytes = (size_t)d * sizeof(float);
    ex->n_local = placement_count(p, rank);
    ex->first_local = placement_first(p, rank);
    ex->counts_send = xcalloc((size_t)P * N_COUNTS, sizeof(int64_t));
    ex->counts_recv = xcalloc((size_t)P * N_COUNTS, sizeof(int64_t));
    ex->rows_to = xcalloc(P, sizeof(int64_t));
    ex->pairs_to = xcalloc(P, sizeof(int64_t));
    ex->rows_from = xcalloc(P, sizeof(int64_t));
    ex->pairs_from = xcalloc(P, sizeof(int64_t));
    ex->pair_base_to = xcalloc(P + 1, sizeof(int64_t));
    ex->pair_base_from = xcalloc(P + 1, sizeof(int64_t));
    ex->row_cur = xcalloc(P, sizeof(int64_t));
    ex->pair_cur = xcalloc(P, sizeof(int64_t));
    ex->send_bytes = xcalloc(P, sizeof(size_t));
    ex->send_displ = xcalloc(P, sizeof(size_t));
    ex->recv_bytes = xcalloc(P, sizeof(size_t));
    ex->recv_displ = xcalloc(P, sizeof(size_t));
    ex->offsets = xcalloc(ex->n_local + 1, sizeof(int64_t));
    ex->expert_cur = xcalloc(ex->n_local + 1, sizeof(int64_t));
    return ex;
}

void moe_exchange_free(moe_exchange *ex) {
    if (!ex) return;
    free(ex->counts_send); free(ex->counts_recv);
    free(ex->rows_to); free(ex->pairs_to); free(ex->rows_from); free(ex->pairs_from);
    free(ex->pair_base_to); free(ex->pair_base_from); free(ex->row_cur); free(ex->pair_cur);
    free(ex->send_bytes); free(ex->send_displ); free(ex->recv_bytes); free(ex->recv_displ);
    free(ex->pair_slot); free(ex->home_buf);
    free(ex->offsets); free(ex->expert_cur); free(ex->owner_row); free(ex->xe); free(ex->owner_buf);
    free(ex);
}

void moe_exchange_traffic(const moe_exchange *ex, moe_traffic *t) { *t = ex->traffic; }

// ---------------------------------------------------------------------------- planning
// Because placement blocks are contiguous and a token's experts ascend, the owners of a
// token's experts ascend too: a new owner in the j loop starts the token's row to that owner.
// O(n k), whatever P (identity mode, k = E, is n E).
int moe_dispatch_plan(const expert_placement *p, const int32_t *expert, int n, int k,
                      int64_t *rows_to, int64_t *pairs_to, llamoe_err *err) {
    memset(rows_to, 0, (size_t)p->n_ranks * sizeof *rows_to);
    memset(pairs_to, 0, (size_t)p->n_ranks * sizeof *pairs_to);
    if (n < 0) return fail(err, "dispatch: %d tokens", n);
    if (k < 1 || k > p->n_experts) return fail(err, "dispatch: k = %d experts per token, expected 1 .. %d", k, p->n_experts);
    if (n > 0 && !expert) return fail(err, "dispatch: %d tokens without expert ids", n);
    for (int t = 0; t < n; t++) {
        int prev_owner = -1;
        for (int j = 0; j < k; j++) {
            int32_t e = expert[(size_t)t * k + j];
            if (e < 0 || e >= p->n_experts)
                return fail(err, "dispatch: token %d: expert %d of %d out of range (E = %d)", t, j, k, p->n_experts);
            if (j > 0 && e <= expert[(size_t)t * k + j - 1])
                return fail(err, "dispatch: token %d: expert ids not strictly ascending (%d after %d)",
                            t, e, expert[(size_t)t * k + j - 1]);
            int r = placement_owner(p, e);
            if (r != prev_owner) rows_to[r]++;
            prev_owner = r;
            pairs_to[r]++;
        }
    }
    return 0;
}

// ---------------------------------------------------------------------------- dispatch
static int32_t *pairs_of(char *msg, int64_t rows, size_t row_bytes) {   // metadata after the rows
    return (int32_t *)(msg + (size_t)rows * row_bytes);
}

// Packs this rank's outgoing messages into home_buf and records, for every pair sent, the
// y_pairs row its output must return to.
static void pack_dispatch(moe_exchange *ex, const float *x, const int32_t *expert, int n, int k) {
    int P = ex->n_ranks;
    size_t total = 0;
    ex->pair_base_to[0] = 0;
    for (int r = 0; r < P; r++) {
        ex->send_bytes[r] = (size_t)ex->rows_to[r] * ex->row_bytes + (size_t)ex->pairs_to[r] * 2 * sizeof(int32_t);
        ex->send_displ[r] = total;
        total += ex->send_bytes[r];
        ex->pair_base_to[r + 1] = ex->pair_base_to[r] + ex->pairs_to[r];
        ex->row_cur[r] = ex->pair_cur[r] = 0;
    }
    size_t combine_bytes = mul3((size_t)n, (size_t)k, ex->row_bytes);   // same buffer, for combine
    reserve((void **)&ex->home_buf, &ex->home_cap, total > combine_bytes ? total : combine_bytes);
    reserve((void **)&ex->pair_slot, &ex->pair_slot_cap, (size_t)n * k * sizeof(int64_t));

    for (int t = 0; t < n; t++) {
        int prev_owner = -1;
        int64_t row = 0;
        for (int j = 0; j < k; j++) {
            int e = expert[(size_t)t * k + j];
            int r = placement_owner(&ex->place, e);
            char *msg = ex->home_buf + ex->send_displ[r];
            if (r != prev_owner) {
                row = ex->row_cur[r]++;
                memcpy(msg + (size_t)row * ex->row_bytes, x + (size_t)t * ex->d, ex->row_bytes);
                prev_owner = r;
            }
            int64_t q = ex->pair_cur[r]++;
            int32_t *pair = pairs_of(msg, ex->rows_to[r], ex->row_bytes) + 2 * q;
            pair[0] = (int32_t)row;
            pair[1] = e - placement_first(&ex->place, r);
            ex->pair_slot[ex->pair_base_to[r] + q] = (int64_t)t * k + j;
        }
    }
}

// Owner side: groups the received rows by local expert into xe. Counting sort, stable over
// (source rank, pair order at the source) = (source rank, source token position).
static void group_by_expert(moe_exchange *ex) {
    int P = ex->n_ranks, L = ex->n_local;
    memset(ex->expert_cur, 0, (size_t)(L + 1) * sizeof(int64_t));
    for (int s = 0; s < P; s++) {
        const int32_t *pair = pairs_of(ex->owner_buf + ex->recv_displ[s], ex->rows_from[s], ex->row_bytes);
        for (int64_t q = 0; q < ex->pairs_from[s]; q++) {
            int32_t row = pair[2 * q], le = pair[2 * q + 1];
            // Only a protocol bug (or memory corruption) gets here: stop the job, loudly.
            if (row < 0 || row >= ex->rows_from[s] || le < 0 || le >= L)
                die("dispatch: rank %d: pair %lld from rank %d names row %d of %lld, local expert %d of %d",
                    ex->rank, (long long)q, s, row, (long long)ex->rows_from[s], le, L);
            ex->expert_cur[le]++;
        }
    }
    ex->offsets[0] = 0;
    for (int e = 0; e < L; e++) {
        ex->offsets[e + 1] = ex->offsets[e] + ex->expert_cur[e];
        ex->expert_cur[e] = ex->offsets[e];
    }
    reserve((void **)&ex->xe, &ex->xe_cap, mul3((size_t)ex->n_rows, ex->row_bytes, 1));
    reserve((void **)&ex->owner_row, &ex->owner_row_cap, (size_t)ex->n_rows * sizeof(int64_t));
    for (int s = 0; s < P; s++) {
        const char *msg = ex->owner_buf + ex->recv_displ[s];
        const int32_t *pair = pairs_of((char *)msg, ex->rows_from[s], ex->row_bytes);
        for (int64_t q = 0; q < ex->pairs_from[s]; q++) {
            int64_t pos = ex->expert_cur[pair[2 * q + 1]]++;
            memcpy(ex->xe + (size_t)pos * ex->d, msg + (size_t)pair[2 * q] * ex->row_bytes, ex->row_bytes);
            ex->owner_row[ex->pair_base_from[s] + q] = pos;
        }
    }
}

// Reads the counts every peer sent; -1 on every rank when any rank reported bad input or a
// different shape (a mismatch is symmetric, so each rank finds one when not all agree).
static int check_counts(moe_exchange *ex, int local_failed, llamoe_err *err) {
    int P = ex->n_ranks;
    int64_t key = ex->counts_send[ex->rank * N_COUNTS + 2];
    for (int s = 0; s < P; s++) {
        const int64_t *cnt = ex->counts_recv + (size_t)s * N_COUNTS;
        if (cnt[0] < 0) {
            if (local_failed) return -1;   // err already holds our own reason
            return fail(err, "dispatch: rank %d reported invalid input (see its message)", s);
        }
        if (cnt[2] != key)
            return fail(err, "dispatch: rank %d has d = %lld, E = %lld but rank %d has d = %d, E = %d",
                        s, (long long)(cnt[2] >> 32), (long long)(cnt[2] & 0xffffffff),
                        ex->rank, ex->d, ex->place.n_experts);
    }
    return local_failed ? -1 : 0;
}

int moe_dispatch(moe_exchange *ex, comm *c, const float *x, int n, const int32_t *expert, int k,
                 const float **xe, const int64_t **offsets, int64_t *n_rows, llamoe_err *err) {
    int P = ex->n_ranks;
    if (c->size != P || c->rank != ex->rank)
        die("dispatch: exchange built for rank %d of %d, communicator is rank %d of %d",
            ex->rank, P, c->rank, c->size);
    ex->combine_pending = 0;
    memset(&ex->traffic, 0, sizeof ex->traffic);

    // 1. plan; a bad input still takes part in the counts exchange, with -1, so no rank hangs.
    int local_failed = moe_dispatch_plan(&ex->place, expert, n, k, ex->rows_to, ex->pairs_to, err) != 0;
    if (!local_failed && n > 0 && !x) local_failed = fail(err, "dispatch: %d tokens without rows", n) != 0;
    int64_t key = ((int64_t)ex->d << 32) | ex->place.n_experts;
    for (int r = 0; r < P; r++) {
        int64_t *cnt = ex->counts_send + (size_t)r * N_COUNTS;
        cnt[0] = local_failed ? -1 : ex->rows_to[r];
        cnt[1] = local_failed ? -1 : ex->pairs_to[r];
        cnt[2] = key;
    }
    // 2. counts
    if (c->exchange_counts(c, ex->counts_send, ex->counts_recv, N_COUNTS))
        return fail(err, "dispatch: counts exchange failed on %s", c->name);
    if (check_counts(ex, local_failed, err)) return -1;

    // 3. rows + metadata
    ex->n = n;
    ex->k = k;
    pack_dispatch(ex, x, expert, n, k);
    size_t total = 0;
    ex->n_rows = 0;
    ex->pair_base_from[0] = 0;
    for (int s = 0; s < P; s++) {
        ex->rows_from[s] = ex->counts_recv[(size_t)s * N_COUNTS];
        ex->pairs_from[s] = ex->counts_recv[(size_t)s * N_COUNTS + 1];
        ex->recv_bytes[s] = mul3((size_t)ex->rows_from[s], ex->row_bytes, 1) + (size_t)ex->pairs_from[s] * 2 * sizeof(int32_t);
        ex->recv_displ[s] = total;
        total += ex->recv_bytes[s];
        ex->n_rows += ex->pairs_from[s];
        ex->pair_base_from[s + 1] = ex->n_rows;
    }
    size_t combine_bytes = mul3((size_t)ex->n_rows, ex->row_bytes, 1);
    reserve((void **)&ex->owner_buf, &ex->owner_cap, total > combine_bytes ? total : combine_bytes);
    if (c->alltoallv(c, ex->home_buf, ex->send_bytes, ex->send_displ, ex->owner_buf, ex->recv_bytes, ex->recv_displ))
        return fail(err, "dispatch: all-to-all of rows failed on %s", c->name);

    // 4. group by local expert
    group_by_expert(ex);

    moe_traffic *t = &ex->traffic;
    for (int r = 0; r < P; r++) {
        if (r == ex->rank) { t->bytes_local += ex->send_bytes[r]; continue; }
        t->dispatch_sent += ex->send_bytes[r];
        t->dispatch_recv += ex->recv_bytes[r];
        t->rows_sent += ex->rows_to[r];
        t->rows_recv += ex->rows_from[r];
    }
    t->bytes_sent = t->dispatch_sent;
    t->bytes_recv = t->dispatch_recv;
    t->pairs_home = (int64_t)n * k;
    t->pairs_owned = ex->n_rows;

    *xe = ex->xe;
    *offsets = ex->offsets;
    *n_rows = ex->n_rows;
    ex->combine_pending = 1;
    return 0;
}

// ---------------------------------------------------------------------------- combine
int moe_combine(moe_exchange *ex, comm *c, const float *ye, float *y_pairs, llamoe_err *err) {
    if (!ex->combine_pending) die("combine: rank %d: no dispatch to answer", ex->rank);
    ex->combine_pending = 0;
    int P = ex->n_ranks;
    // Owner side: each source gets one output row per pair it sent, in its pair order.
    for (int64_t i = 0; i < ex->n_rows; i++)
        memcpy(ex->owner_buf + (size_t)i * ex->row_bytes, ye + (size_t)ex->owner_row[i] * ex->d, ex->row_bytes);
    for (int r = 0; r < P; r++) {
        ex->send_bytes[r] = (size_t)ex->pairs_from[r] * ex->row_bytes;   // back to the sources
        ex->send_displ[r] = (size_t)ex->pair_base_from[r] * ex->row_bytes;
        ex->recv_bytes[r] = (size_t)ex->pairs_to[r] * ex->row_bytes;     // from the owners
        ex->recv_displ[r] = (size_t)ex->pair_base_to[r] * ex->row_bytes;
    }
    if (c->alltoallv(c, ex->owner_buf, ex->send_bytes, ex->send_displ, ex->home_buf, ex->recv_bytes, ex->recv_displ))
        return fail(err, "combine: all-to-all of expert outputs failed on %s", c->name);
    // Home side: pair i's output goes to its (token, j) row.
    int64_t n_pairs = (int64_t)ex->n * ex->k;
    for (int64_t i = 0; i < n_pairs; i++)
        memcpy(y_pairs + (size_t)ex->pair_slot[i] * ex->d, ex->home_buf + (size_t)i * ex->row_bytes, ex->row_bytes);

    moe_traffic *t = &ex->traffic;
    for (int r = 0; r < P; r++) {
        if (r == ex->rank) { t->bytes_local += ex->send_bytes[r]; continue; }
        t->bytes_sent += ex->send_bytes[r];
        t->bytes_recv += ex->recv_bytes[r];
    }
    return 0;
}
