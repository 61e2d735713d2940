// The expert cache on the bundled model, without MPI: for every MoE mode, pool size (one slot
// up to every expert), eviction policy and prefetch, random steps of random rows per expert
// go through the cache and through the experts directly; the outputs must be bitwise equal,
// every expert with rows must come from the pool, and the counters must add up. Then the
// errors: a budget below one expert, and a pool the backend cannot allocate.
//   test_expert_cache SRC_DIR
#include <string.h>

#include "runtime/moe.h"
#include "base/rng.h"

static int failures, checks;
#define EXPECT(cond, ...)                                              \
    do {                                                               \
        checks++;                                                      \
        if (!(cond)) {                                                 \
            failures++;                                                \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                \
            printf(__VA_ARGS__);                                       \
            printf("\n");                                              \
        }                                                              \
    } while (0)

#define STEPS 12
#define MAX_ROWS 6   // per expert and step

typedef struct {
    const model *m;
    float *x, *ye_ref, *ye;
    int64_t *offsets;
    int32_t *routed;
} case_buf;

// One random step of layer l: each local expert gets 0..MAX_ROWS rows (about half get none).
static int64_t random_offsets(rng_t *r, int n_local, int64_t *offsets) {
    offsets[0] = 0;
    for (int i = 0; i < n_local; i++) {
        int64_t rows = rng_next(r) % 2 ? 0 : 1 + (int64_t)(rng_next(r) % MAX_ROWS);
        offsets[i + 1] = offsets[i] + rows;
    }
    return offsets[n_local];
}

static int run_case(case_buf *b, size_t slots, expert_evict evict, expert_prefetch pf, const char *mode) {
    const model *m = b->m;
    backend *be = m->be;
    int L = m->cfg.n_layers, n_local = m->n_local_experts, d = m->cfg.hidden_size;
    llamoe_err err;
    size_t slot = expert_cache_slot_bytes(m);
    expert_cache_options o = {.budget_bytes = slots * slot, .prefetch = pf, .evict = evict, .release_pages = 1};
    expert_cache *ec = expert_cache_new(m, &o, &err);
    EXPECT(ec, "%s: %zu slots: %s", mode, slots, err.msg);
    if (!ec) return -1;
    rng_t r = {rng_derive(42, slots, (uint64_t)evict * 8 + pf)};
    int used_before = failures;
    unsigned char *seen = xcalloc((size_t)L * n_local, 1);
    int distinct = 0;
    for (int step = 0; step < STEPS; step++)
        for (int l = 0; l < L; l++) {
            const layer_weights *LW = &m->layers[l];
            int64_t rows = random_offsets(&r, n_local, b->offsets);
            for (int64_t i = 0; i < rows * d; i++) b->x[i] = (float)(rng_normal(&r));
            be->expert_ffn(be, b->ye_ref, b->x, b->offsets, b->offsets, rows, &LW->experts);
            // This rank's own tokens chose a random part of the active experts.
            for (int i = 0; i < n_local; i++)
                b->routed[m->first_expert + i] = b->offsets[i + 1] > b->offsets[i] && rng_next(&r) % 2;
            expert_cache_routed(ec, l, b->routed);
            memset(b->ye, 0xff, (size_t)(rows ? rows : 1) * d * sizeof(float));
            expert_set set;
            int first, covered = 0;
            for (expert_cache_begin(ec, l, b->offsets); expert_cache_next(ec, &set, &first);) {
                for (int j = 0; j < set.n_experts; j++) {
                    int i = first + j;
                    if (b->offsets[i + 1] == b->offsets[i]) continue;
                    covered++;
                    if (!seen[(size_t)l * n_local + i]) { seen[(size_t)l * n_local + i] = 1; distinct++; }
                    EXPECT(set.w1[j].data != LW->w1[i].data && set.w2[j].data != LW->w2[i].data &&
                           set.w1[j].ld == set.w1[j].cols && set.w2[j].ld == set.w2[j].cols,
                           "%s: layer %d expert %d not served from the pool", mode, l, i);
                }
                be->expert_ffn(be, b->ye, b->x, b->offsets + first, b->offsets + first, rows, &set);
            }
            int active = 0;
            for (int i = 0; i < n_local; i++) active += b->offsets[i + 1] > b->offsets[i];
            EXPECT(covered == active, "%s: layer %d: %d of %d active experts computed", mode, l, covered, active);
            EXPECT(memcmp(b->ye, b->ye_ref, (size_t)rows * d * sizeof(float)) == 0,
                   "%s, %zu slots, %s, prefetch %s: step %d layer %d differs from the direct experts", mode, slots,
                   expert_evict_name(evict), expert_prefetch_name(pf), step, l);
        }
    expert_cache_stats s;
    expert_cache_get_stats(ec, &s);
    EXPECT(s.lookups == s.hits + s.prefetch_hits + s.misses, "%s: lookups %lld != hits %lld + prefetch hits %lld + misses %lld",
           mode, (long long)s.lookups, (long long)s.hits, (long long)s.prefetch_hits, (long long)s.misses);
    EXPECT(s.prefetch_wasted <= s.prefetches && s.prefetch_hits <= s.prefetches, "%s: prefetch counters", mode);
    if (pf == PREFETCH_NONE) EXPECT(s.prefetches == 0 && s.prefetch_hits == 0, "%s: prefetch without a predictor", mode);
    if (slots >= (size_t)L * n_local && pf == PREFETCH_NONE)
        EXPECT(s.misses == distinct && s.evictions == 0, "%s: everything fits: %lld misses for %d experts, %lld evictions",
               mode, (long long)s.misses, distinct, (long long)s.evictions);
    if (slots == 1) EXPECT(s.groups == s.lookups, "%s: one slot: %lld groups for %lld uses", mode, (long long)s.groups, (long long)s.lookups);
    EXPECT(expert_cache_slots(ec) == (int)(slots < (size_t)L * n_local ? slots : (size_t)L * n_local), "%s: slot count", mode);
    if (failures == used_before)
        printf("ok   %-15s %3zu slot(s) %-9s prefetch %-10s: %lld uses, hits %lld, prefetch hits %lld, misses %lld, wasted %lld, groups %lld\n",
               mode, slots, expert_evict_name(expert_cache_policy(ec)), expert_prefetch_name(pf), (long long)s.lookups,
               (long long)s.hits, (long long)s.prefetch_hits, (long long)s.misses, (long long)s.prefetch_wasted,
               (long long)s.groups);
    free(seen);
    expert_cache_free(ec);
    return 0;
}

static void *no_memory(backend *be, size_t bytes) { (void)be; (void)bytes; return NULL; }

int main(int argc, char **argv) {
    const char *src = argc > 1 ? argv[1] : LLAMOE_SOURCE_DIR;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/models/stories260k", src);
    const char *modes[] = {"production:8:2", "upcycle:8:2", "identity:8", "identity:5"};
    backend *cpu = backend_cpu_new(NULL);
    for (size_t mi = 0; mi < sizeof modes / sizeof modes[0]; mi++) {
        llamoe_err err;
        moe_mode mode;
        CHECK(moe_mode_parse(modes[mi], &mode, &err) == 0);
        mode.seed = 1234;
        mode.drop = 0.5f;
        model m;
        model_options mo = {.experts_on_host = 1};
        // Rank 1 of 3 as well: a block of experts that does not start at 0.
        for (int rank = 0; rank < 2; rank++) {
            int P = rank ? 3 : 1;
            if (model_load_opts(&m, dir, &mode, cpu, rank, P, &mo, &err) != 0) die("%s", err.msg);
            int L = m.cfg.n_layers, n_local = m.n_local_experts, d = m.cfg.hidden_size;
            size_t cap = (size_t)n_local * MAX_ROWS * d;
            case_buf b = {.m = &m, .x = xmalloc(cap * sizeof(float)), .ye_ref = xmalloc(cap * sizeof(float)),
                           .ye = xmalloc(cap * sizeof(float)), .offsets = xmalloc(((size_t)n_local + 1) * sizeof(int64_t)),
                           .routed = xcalloc((size_t)m.moe.n_experts, sizeof(int32_t))};
            char name[64];
            snprintf(name, sizeof name, "%s r%d/%d", modes[mi], rank, P);
            size_t all = (size_t)L * n_local;
            size_t sizes[] = {1, 2, (size_t)L, all / 2, all, all + 3};
            for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++)
                for (int ev = 0; ev < 2; ev++)
                    for (int pf = 0; pf < 4; pf++)
                        if (rank == 0 || (ev == 1 && (pf == 0 || pf == 3)))
                            run_case(&b, sizes[si], (expert_evict)ev, (expert_prefetch)pf, name);

            if (mi == 0 && rank == 0) {
                // A budget below one expert, and a pool the backend cannot allocate.
                size_t slot = expert_cache_slot_bytes(&m);
                expert_cache_options o = {.budget_bytes = slot - 1, .evict = EVICT_LAYER_LRU};
                EXPECT(!expert_cache_new(&m, &o, &err) && strstr(err.msg, "below one expert"), "budget below one expert: %s", err.msg);
                printf("ok   budget below one expert: %s\n", err.msg);
                backend starved = *cpu;
                starved.try_alloc = no_memory;
                backend *keep = m.be;
                m.be = &starved;
                o.budget_bytes = 4 * slot;
                EXPECT(!expert_cache_new(&m, &o, &err) && strstr(err.msg, "cannot allocate") && strstr(err.msg, "4 slots"),
                       "pool allocation failure: %s", err.msg);
                printf("ok   pool allocation failure: %s\n", err.msg);
                m.be = keep;
            }
            free(b.x); free(b.ye_ref); free(b.ye); free(b.offsets); free(b.routed);
            model_free(&m);
        }
    }
    backend_free(cpu);
    printf("test_expert_cache: %d checks, %d failed\n", checks, failures);
    return failures != 0;
}
