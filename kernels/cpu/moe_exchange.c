// The MoE exchange's ops (kernels/backend.h): the route plan (with the choice of each pair's
// copy of its expert), packing every peer's message, and grouping what arrived by local expert. Plain loops: these move rows, they compute
// nothing, and the CUDA versions are tested against them.
#include "kernels/cpu/cpu_internal.h"

// The earliest j' <= j of token t whose physical expert lives on the same rank as pair (t, j):
// the pair that carries token t's row to that rank.
static int first_pair_on_rank(const int32_t *phys, int j, const moe_map *map) {
    int r = map->owner[phys[j]];
    for (int i = 0; i < j; i++)
        if (map->owner[phys[i]] == r) return i;
    return j;
}

void cpu_moe_plan(backend *be, int32_t *counts, int32_t *row_slot, int32_t *pair_slot, int32_t *pair_expert,
                  int64_t *tally, const int32_t *expert, int n, int k, int salt, const moe_map *map) {
    int S = map->n_experts, P = map->n_ranks, E = map->n_logical;
    CHECK(P >= 1 && P <= MOE_MAX_RANKS && k >= 1 && k <= E && E <= S && salt >= 0);
    int32_t *rows_to = counts + S;
    int32_t *pairs_to = cpu_scratch(be, CPU_SCRATCH_MOE, ((size_t)P + E) * sizeof(int32_t));
    int32_t *dealt = pairs_to + P;   // tokens of each logical expert so far
    memset(counts, 0, (size_t)(S + P) * sizeof(int32_t));
    memset(pairs_to, 0, ((size_t)P + E) * sizeof(int32_t));
    for (int t = 0; t < n; t++) {
        const int32_t *ids = expert + (size_t)t * k;
        int32_t *phys = pair_expert + (size_t)t * k;
        for (int j = 0; j < k; j++) {
            int e = ids[j];
            // The router and the identity table write these: a bad one is a bug, not input.
            CHECK(e >= 0 && e < E && (j == 0 || e > ids[j - 1]));
            int first = map->replica_start[e], copies = map->replica_start[e + 1] - first;
            phys[j] = map->replica[first + (int)(((int64_t)dealt[e]++ + salt) % copies)];
        }
        for (int j = 0; j < k; j++) {
            int p = phys[j], r = map->owner[p];
            size_t at = (size_t)t * k + j;
            row_slot[at] = first_pair_on_rank(phys, j, map) == j ? rows_to[r]++ : -1;
            pair_slot[at] = pairs_to[r]++;
            counts[p]++;
        }
    }
    if (tally)
        for (int i = 0; i < S + P; i++) tally[i] += counts[i];
}

void cpu_moe_pack(backend *be, void *send, const moe_layout *at, const float *x, const int32_t *expert,
                  const int32_t *row_slot, const int32_t *pair_slot, const int32_t *counts,
                  int n, int k, int d, const moe_map *map) {
    int S = map->n_experts, P = map->n_ranks;
    size_t row_bytes = (size_t)d * sizeof(float);
    char *buf = send;
    for (int r = 0; r < P; r++) {
        int32_t header[4] = {counts[S + r], 0, d, 0};
        for (int p = 0; p < S; p++)
            if (map->owner[p] == r) header[1] += counts[p];
        memcpy(buf + at->msg[r], header, sizeof header);
    }
    for (int t = 0; t < n; t++) {
        const int32_t *ids = expert + (size_t)t * k;   // physical
        for (int j = 0; j < k; j++) {
            size_t p = (size_t)t * k + j;
            int e = ids[j], r = map->owner[e];
            char *msg = buf + at->msg[r];
            int32_t row = row_slot[(size_t)t * k + first_pair_on_rank(ids, j, map)];
            if (row_slot[p] >= 0) memcpy(msg + MOE_HEADER_BYTES + (size_t)row * row_bytes, x + (size_t)t * d, row_bytes);
            int32_t pair[2] = {row, map->local[e]};
            memcpy(msg + at->pairs[r] + (size_t)pair_slot[p] * sizeof pair, pair, sizeof pair);
        }
    }
}

void cpu_moe_group(backend *be, float *xe, int64_t *offsets, int32_t *ret_row, const void *recv,
                   const moe_layout *at, const int64_t *ret_base, int n_src, int n_local, int d) {
    const char *buf = recv;
    size_t row_bytes = (size_t)d * sizeof(float);
    int64_t *cur = cpu_scratch(be, CPU_SCRATCH_MOE, ((size_t)n_local + 1) * sizeof(int64_t));
    memset(cur, 0, ((size_t)n_local + 1) * sizeof(int64_t));
    // Counting sort by local expert, stable over (source, pair order).
    for (int pass = 0; pass < 2; pass++) {
        for (int s = 0; s < n_src; s++) {
            const char *msg = buf + at->msg[s];
            int32_t header[4];
            memcpy(header, msg, sizeof header);
            int64_t cap = ret_base[s + 1] - ret_base[s];
            // Only a protocol bug (or memory corruption) gets here: stop the job, loudly.
            if (header[0] < 0 || header[1] < 0 || header[1] > cap || header[2] != d)
                die("moe exchange: message from rank %d says %d rows, %d pairs, d = %d (room for %lld pairs, d = %d here)",
                    s, header[0], header[1], header[2], (long long)cap, d);
            for (int32_t q = 0; q < header[1]; q++) {
                int32_t pair[2];
                memcpy(pair, msg + at->pairs[s] + (size_t)q * sizeof pair, sizeof pair);
                if (pair[0] < 0 || pair[0] >= header[0] || pair[1] < 0 || pair[1] >= n_local)
                    die("moe exchange: pair %d from rank %d names row %d of %d, local expert %d of %d",
                        q, s, pair[0], header[0], pair[1], n_local);
                if (pass == 0) { cur[pair[1]]++; continue; }
                int64_t at_row = cur[pair[1]]++;
                memcpy(xe + (size_t)at_row * d, msg + MOE_HEADER_BYTES + (size_t)pair[0] * row_bytes, row_bytes);
                ret_row[ret_base[s] + q] = (int32_t)at_row;
            }
            if (pass == 1)
                for (int64_t q = header[1]; q < cap; q++) ret_row[ret_base[s] + q] = -1;
        }
        if (pass == 0) {   // counts -> offsets; cur becomes each expert's next row
            offsets[0] = 0;
            for (int e = 0; e < n_local; e++) {
                offsets[e + 1] = offsets[e] + cur[e];
                cur[e] = offsets[e];
            }
        }
    }
}
