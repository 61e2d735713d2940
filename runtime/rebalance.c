// Rebalancing while serving (rebalance.h): the window's loads, a new placement, the moves.
#include "runtime/rebalance.h"

#include <string.h>

#include "parallel/balance.h"
#include "runtime/moe_build.h"

// `bytes` from rank src to rank dst (either may be this rank, or neither): an all-to-all in
// which that pair has the only message. Every rank calls it, in the same order.
static void transfer(comm *c, int src, int dst, const void *send, void *recv, size_t bytes, moe_rebalance_stats *st) {
    size_t sb[MOE_MAX_RANKS] = {0}, sd[MOE_MAX_RANKS] = {0}, rb[MOE_MAX_RANKS] = {0}, rd[MOE_MAX_RANKS] = {0};
    if (c->rank == src) sb[dst] = bytes;
    if (c->rank == dst) rb[src] = bytes;
    if (c->alltoallv(c, send, sb, sd, recv, rb, rd) != 0)
        die("rebalance: moving expert weights from rank %d to rank %d failed on %s", src, dst, c->name);
    if (src == dst) {
        if (c->rank == src) st->bytes_local += bytes;
    } else if (c->rank == src) {
        st->bytes_sent += bytes;
    } else if (c->rank == dst) {
        st->bytes_recv += bytes;
    }
}

// The slot that sends logical expert e to rank dst: one on dst itself when it has e already
// (a local copy), else the first slot holding e (old: the layer's row before the move).
static int source_slot(const expert_placement *slots, const int32_t *old, int S, int e, int dst) {
    int first = -1;
    for (int q = 0; q < S; q++) {
        if (old[q] != e) continue;
        if (placement_owner(slots, q) == dst) return q;
        if (first < 0) first = q;
    }
    CHECK(first >= 0);   // the old placement passed placement_table_check
    return first;
}

// The expert that arrived in b equals what this rank builds from its own checkpoint.
static void check_arrival(const model *m, int l, int e, int src, const expert_blocks *b) {
    backend *be = m->be;
    size_t bytes;
    uint8_t *want = moe_expert_build(m, l, e, &bytes);
    CHECK(bytes == b->gate_up_bytes + b->down_bytes);
    uint8_t *got = xmalloc(bytes + 1);
    be->download(be, got, b->gate_up, b->gate_up_bytes);
    be->download(be, got + b->gate_up_bytes, b->down, b->down_bytes);
    for (size_t i = 0; i < bytes; i++)
        if (got[i] != want[i])
            die("rebalance: layer %d expert %d from rank %d differs from this rank's build at byte %zu of %zu", l, e, src,
                i, bytes);
    free(got);
    free(want);
}

// Refills the slots of layer l whose expert changes from old to next. Every slot's expert
// arrives in new blocks; the old weights go only once the whole layer has moved (a slot's old
// expert may be the source of another slot's new one).
static void move_layer(const model *m, moe_state *s, comm *c, int l, const int32_t *old, const int32_t *next) {
    int S = s->n_physical, me = c->rank, first = placement_first(&s->slots, me);
    moe_rebalance_stats *st = &s->stats.rebalance;
    expert_blocks *incoming = xcalloc((size_t)s->n_local, sizeof *incoming);
    unsigned char *filled = xcalloc((size_t)s->n_local, 1);
    for (int q = 0; q < S; q++) {
        if (next[q] == old[q]) continue;
        int e = next[q], dst = placement_owner(&s->slots, q);
        int from = source_slot(&s->slots, old, S, e, dst), src = placement_owner(&s->slots, from);
        weight_t w[3];
        moe_expert_shape(m, l, e, w);
        size_t es = dtype_size(w[0].dtype), gate_up = (size_t)(w[0].rows * w[0].cols + w[1].rows * w[1].cols) * es,
               down = (size_t)(w[2].rows * w[2].cols) * es;
        expert_blocks out = {0}, *in = NULL;
        if (me == src) {
            moe_expert_source(m, l, from - first, &out);
            CHECK(out.gate_up_bytes == gate_up && out.down_bytes == down);
        }
        if (me == dst) {
            in = &incoming[q - first];
            moe_expert_alloc(m, l, e, in);
            filled[q - first] = 1;
        }
        transfer(c, src, dst, out.gate_up, in ? in->gate_up : NULL, gate_up, st);
        transfer(c, src, dst, out.down, in ? in->down : NULL, down, st);
        if (me == src) moe_expert_source_done(&out);
        if (me == dst && s->rebalance_check) {
            check_arrival(m, l, e, src, in);
            st->experts_checked++;
        }
    }
    s->be->sync(s->be);   // every copy has landed, and no kernel still reads the old weights
    for (int i = 0; i < s->n_local; i++) {
        if (!filled[i]) continue;
        moe_expert_install(m, l, i, &incoming[i]);
        if (s->cache) expert_cache_reload(s->cache, l, i);
        st->experts_moved++;
    }
    free(incoming);
    free(filled);
}

void moe_rebalance(const model *m, moe_state *s, comm *c) {
    double t0 = now_seconds();
    int L = s->n_layers, E = s->n_experts, S = s->n_physical, P = s->n_ranks;
    if (m->be->device_memory && m->experts_on_host)
        die("--rebalance: memory mode keeps experts on the host, which the %s backend does not move", m->be->name);
    moe_rebalance_stats *st = &s->stats.rebalance;

    // The window: every rank's tokens per logical expert since the last fold.
    int64_t *load = xcalloc((size_t)L * E, sizeof(int64_t));
    moe_tally_fold(s, load);
    if (c->allreduce_sum_i64(c, load, L * E) != 0) die("rebalance: adding up the expert loads failed on %s", c->name);
    for (size_t i = 0; i < (size_t)L * E; i++)
        if (load[i] > BALANCE_MAX_LOAD) load[i] = BALANCE_MAX_LOAD;

    // The new placement, layer by layer; a layer whose imbalance would hardly fall keeps its own.
    placement_table next;
    placement_table_copy(&next, &s->table);
    balance_table(&next, load, &s->table);
    unsigned char *changes = xcalloc((size_t)L, 1);
    for (int l = 0; l < L; l++) {
        const int32_t *old = placement_layer(&s->table, l);
        int32_t *row = next.logical + (size_t)l * S;
        const int64_t *ll = load + (size_t)l * E;
        double before = balance_imbalance(old, ll, E, S, P), after = balance_imbalance(row, ll, E, S, P);
        changes[l] = memcmp(row, old, (size_t)S * sizeof(int32_t)) != 0 && after < before * (1 - REBALANCE_MIN_GAIN);
        if (!changes[l]) memcpy(row, old, (size_t)S * sizeof(int32_t));
    }
    llamoe_err err;
    if (placement_table_check(&next, &err) != 0) die("rebalance: the new placement is invalid: %s", err.msg);

    for (int l = 0; l < L; l++) {
        if (!changes[l]) continue;
        move_layer(m, s, c, l, placement_layer(&s->table, l), placement_layer(&next, l));
        st->layers_changed++;
    }
    // The model's table says what its layers hold (read by the report), like the state's.
    memcpy(m->placement.logical, next.logical, (size_t)L * S * sizeof(int32_t));
    placement_table_free(&s->table);
    s->table = next;
    moe_maps_upload(s);
    st->rebalances++;
    st->seconds += now_seconds() - t0;
    free(changes);
    free(load);
}
