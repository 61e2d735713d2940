// The MoE exchange: message plans (counts and fixed) and the two all-to-alls. See dispatch.h
// and base/moe_wire.h for the format; docs/parallel.md for the protocol.
#include "parallel/dispatch.h"

#include <string.h>

#define COUNTS_HEAD 3   // rows, pairs, shape key; then pairs per local expert of the peer

struct moe_exchange {
    expert_placement place;
    int rank, n_ranks, d, k, max_tokens, capacity;
    int max_local;                 // most experts any rank owns
    int width;                     // int64 values per peer in the counts exchange
    int64_t *counts_send, *counts_recv;
    moe_exchange_plan counts_plan, fixed_plan;
    int64_t *offsets_counts;       // [n_local + 1] of the counts plan
    moe_traffic traffic;
};

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

static size_t checked_bytes(int64_t rows, int64_t pairs, int d) {
    size_t r, p;
    CHECK(rows >= 0 && pairs >= 0 && mul_ok((size_t)rows, (size_t)d * sizeof(float), &r) &&
          mul_ok((size_t)pairs, MOE_PAIR_BYTES, &p));
    return moe_message_bytes(rows, pairs, d);
}

// Offsets and sizes of messages with rows[p] rows and pairs[p] pairs for each peer p, one
// after the other (counts plan) or at a fixed stride (fixed plan: rows/pairs are capacities).
static void lay_out(moe_layout *at, size_t *bytes, const int64_t *rows, const int64_t *pairs, int P, int d) {
    size_t offset = 0;
    for (int p = 0; p < P; p++) {
        at->msg[p] = offset;
        at->pairs[p] = moe_pairs_offset(rows[p], d);
        bytes[p] = checked_bytes(rows[p], pairs[p], d);
        offset += bytes[p];
    }
}

static void prefix(int64_t *base, const int64_t *count, int P) {
    base[0] = 0;
    for (int p = 0; p < P; p++) base[p + 1] = base[p] + count[p];
}

// Where each message lies and where each peer's returned rows start, from the plan's counts.
static void finish_plan(moe_exchange_plan *pl, int d) {
    int P = pl->n_ranks;
    lay_out(&pl->send, pl->send_bytes, pl->rows_to, pl->pairs_to, P, d);
    lay_out(&pl->recv, pl->recv_bytes, pl->rows_from, pl->pairs_from, P, d);
    prefix(pl->owner_ret, pl->pairs_from, P);
    prefix(pl->home_ret, pl->pairs_to, P);
    pl->rows_owned = pl->owner_ret[P];
}

// ---------------------------------------------------------------------------- lifecycle
moe_exchange *moe_exchange_new(const expert_placement *p, int rank, int d, int k, int max_tokens, int capacity) {
    int P = p->n_ranks;
    CHECK(P >= 1 && P <= MOE_MAX_RANKS && rank >= 0 && rank < P && d > 0 && k >= 1 && k <= p->n_experts);
    CHECK(max_tokens >= 0 && capacity >= 0);
    moe_exchange *ex = xcalloc(1, sizeof *ex);
    ex->place = *p;
    ex->rank = rank;
    ex->n_ranks = P;
    ex->d = d;
    ex->k = k;
    ex->max_tokens = max_tokens;
    ex->capacity = capacity;
    for (int r = 0; r < P; r++)
        if (placement_count(p, r) > ex->max_local) ex->max_local = placement_count(p, r);
    ex->width = COUNTS_HEAD + ex->max_local;
    ex->counts_send = xcalloc((size_t)P * ex->width, sizeof(int64_t));
    ex->counts_recv = xcalloc((size_t)P * ex->width, sizeof(int64_t));
    ex->offsets_counts = xcalloc((size_t)placement_count(p, rank) + 1, sizeof(int64_t));

    // The fixed plan: every message has room for `capacity` token rows and their pairs.
    moe_exchange_plan *f = &ex->fixed_plan;
    f->fixed = 1;
    f->n_ranks = P;
    f->rank = rank;
    int64_t cap_pairs = (int64_t)capacity * min64(k, ex->max_local);
    for (int r = 0; r < P; r++) {
        f->rows_to[r] = f->rows_from[r] = capacity;
        f->pairs_to[r] = f->pairs_from[r] = cap_pairs;
    }
    finish_plan(f, d);
    ex->counts_plan.n_ranks = P;   // the counts plan: fixed = 0 (xcalloc), the rest per step
    ex->counts_plan.rank = rank;
    ex->counts_plan.expert_offsets = ex->offsets_counts;
    return ex;
}

void moe_exchange_free(moe_exchange *ex) {
    if (!ex) return;
    free(ex->counts_send);
    free(ex->counts_recv);
    free(ex->offsets_counts);
    free(ex);
}

void moe_exchange_max_sizes(const moe_exchange *ex, moe_exchange_sizes *s) {
    int P = ex->n_ranks, L = placement_count(&ex->place, ex->rank);
    int64_t T = ex->max_tokens, k = ex->k;
    size_t row_bytes = (size_t)ex->d * sizeof(float);
    // Counts plan, worst case: each token once to each of min(k, P) ranks, k pairs; each
    // source sends at most T rows and T * min(k, L) pairs here.
    size_t send = 0, recv = 0, rb;
    CHECK(mul_ok((size_t)(T * min64(k, P)), row_bytes, &rb));
    send = (size_t)P * (MOE_HEADER_BYTES + 8 + 15) + rb + (size_t)(T * k) * MOE_PAIR_BYTES;   // + alignment
    recv = (size_t)P * checked_bytes(T, T * min64(k, L), ex->d);
    const moe_exchange_plan *f = &ex->fixed_plan;
    size_t fixed = (size_t)P * f->send_bytes[0];
    s->dispatch_send = send > fixed ? send : fixed;
    s->dispatch_recv = recv > fixed ? recv : fixed;
    int64_t owned = (int64_t)P * T * min64(k, L), fixed_rows = f->owner_ret[P];
    s->owner_rows = owned > fixed_rows ? owned : fixed_rows;
    s->combine_send_rows = s->owner_rows;
    s->combine_recv_rows = T * k > f->home_ret[P] ? T * k : f->home_ret[P];
}

// ---------------------------------------------------------------------------- plans
const moe_exchange_plan *moe_exchange_plan_fixed(const moe_exchange *ex) {
    return ex->capacity > 0 ? &ex->fixed_plan : NULL;
}

// Reads the counts every peer sent; -1 on every rank when any rank reported bad input or a
// different shape (a mismatch is symmetric, so each rank finds one when not all agree).
static int check_counts(const moe_exchange *ex, int local_failed, llamoe_err *err) {
    int64_t key = ((int64_t)ex->d << 32) | ex->place.n_experts;
    for (int s = 0; s < ex->n_ranks; s++) {
        const int64_t *cnt = ex->counts_recv + (size_t)s * ex->width;
        if (cnt[0] < 0) {
            if (local_failed) return -1;   // err already holds our own reason
            return fail(err, "moe exchange: rank %d reported invalid input (see its message)", s);
        }
        if (cnt[2] != key)
            return fail(err, "moe exchange: rank %d has d = %lld, E = %lld but rank %d has d = %d, E = %d",
                        s, (long long)(cnt[2] >> 32), (long long)(cnt[2] & 0xffffffff),
                        ex->rank, ex->d, ex->place.n_experts);
    }
    return local_failed ? -1 : 0;
}

int moe_exchange_plan_counts(moe_exchange *ex, comm *c, const int32_t *counts, int local_failed,
                             const moe_exchange_plan **plan, llamoe_err *err) {
    int P = ex->n_ranks, E = ex->place.n_experts, W = ex->width;
    if (c->size != P || c->rank != ex->rank)
        die("moe exchange: built for rank %d of %d, communicator is rank %d of %d", ex->rank, P, c->rank, c->size);
    moe_exchange_plan *pl = &ex->counts_plan;
    int64_t key = ((int64_t)ex->d << 32) | E;
    memset(ex->counts_send, 0, (size_t)P * W * sizeof(int64_t));
    for (int r = 0; r < P; r++) {
        int64_t *msg = ex->counts_send + (size_t)r * W;
        int first = placement_first(&ex->place, r), L = placement_count(&ex->place, r);
        pl->rows_to[r] = counts[E + r];
        pl->pairs_to[r] = 0;
        for (int i = 0; i < L; i++) {
            msg[COUNTS_HEAD + i] = counts[first + i];
            pl->pairs_to[r] += counts[first + i];
        }
        msg[0] = local_failed ? -1 : pl->rows_to[r];
        msg[1] = local_failed ? -1 : pl->pairs_to[r];
        msg[2] = key;
    }
    if (c->exchange_counts(c, ex->counts_send, ex->counts_recv, W))
        return fail(err, "moe exchange: counts exchange failed on %s", c->name);
    if (check_counts(ex, local_failed, err)) return -1;

    int L = placement_count(&ex->place, ex->rank);
    memset(pl->expert_offsets, 0, ((size_t)L + 1) * sizeof(int64_t));
    for (int s = 0; s < P; s++) {
        const int64_t *msg = ex->counts_recv + (size_t)s * W;
        pl->rows_from[s] = msg[0];
        pl->pairs_from[s] = msg[1];
        int64_t sum = 0;
        for (int i = 0; i < L; i++) {
            pl->expert_offsets[i + 1] += msg[COUNTS_HEAD + i];
            sum += msg[COUNTS_HEAD + i];
        }
        if (msg[0] < 0 || msg[0] > ex->max_tokens || sum != msg[1])
            return fail(err, "moe exchange: rank %d sends %lld rows and %lld pairs (%lld by expert); at most %d rows",
                        s, (long long)msg[0], (long long)msg[1], (long long)sum, ex->max_tokens);
    }
    for (int i = 0; i < L; i++) pl->expert_offsets[i + 1] += pl->expert_offsets[i];
    finish_plan(pl, ex->d);
    *plan = pl;
    return 0;
}

// ---------------------------------------------------------------------------- moving
static void account(moe_exchange *ex, const size_t *sent, const size_t *recvd, size_t *out_sent, size_t *out_recv) {
    for (int r = 0; r < ex->n_ranks; r++) {
        if (r == ex->rank) { ex->traffic.local += sent[r]; continue; }
        *out_sent += sent[r];
        *out_recv += recvd[r];
    }
}

int moe_exchange_dispatch(moe_exchange *ex, comm *c, const moe_exchange_plan *pl, const void *send, void *recv,
                          llamoe_err *err) {
    if (c->alltoallv(c, send, pl->send_bytes, pl->send.msg, recv, pl->recv_bytes, pl->recv.msg))
        return fail(err, "moe exchange: all-to-all of rows failed on %s", c->name);
    account(ex, pl->send_bytes, pl->recv_bytes, &ex->traffic.dispatch_sent, &ex->traffic.dispatch_recv);
    if (pl->fixed) ex->traffic.exchanges_fixed++;
    else ex->traffic.exchanges_counts++;
    return 0;
}

int moe_exchange_combine(moe_exchange *ex, comm *c, const moe_exchange_plan *pl, const void *send, void *recv,
                         llamoe_err *err) {
    int P = ex->n_ranks;
    size_t row_bytes = (size_t)ex->d * sizeof(float);
    size_t send_bytes[MOE_MAX_RANKS], send_displ[MOE_MAX_RANKS], recv_bytes[MOE_MAX_RANKS], recv_displ[MOE_MAX_RANKS];
    for (int r = 0; r < P; r++) {
        send_bytes[r] = (size_t)(pl->owner_ret[r + 1] - pl->owner_ret[r]) * row_bytes;   // back to the sources
        send_displ[r] = (size_t)pl->owner_ret[r] * row_bytes;
        recv_bytes[r] = (size_t)(pl->home_ret[r + 1] - pl->home_ret[r]) * row_bytes;     // from the owners
        recv_displ[r] = (size_t)pl->home_ret[r] * row_bytes;
    }
    if (c->alltoallv(c, send, send_bytes, send_displ, recv, recv_bytes, recv_displ))
        return fail(err, "moe exchange: all-to-all of expert outputs failed on %s", c->name);
    account(ex, send_bytes, recv_bytes, &ex->traffic.combine_sent, &ex->traffic.combine_recv);
    return 0;
}

void moe_exchange_traffic(const moe_exchange *ex, moe_traffic *t) { *t = ex->traffic; }
