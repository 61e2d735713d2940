// Memory mode: the per-rank expert cache (see expert_cache.h for the contract).
#include "runtime/expert_cache.h"
#include "runtime/moe_build.h"

#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

// Sub-matrices start on 256-byte boundaries inside a slot (what GPU copies and vector loads
// like); slots are whole pages so that each slot's resident pages are its own.
#define SUB_ALIGN 256

typedef struct {
    int key;                  // layer * n_local + local expert; -1 when free
    int pinned;               // part of the group being computed: not evictable
    int prefetched;           // filled by a prefetch and not used since
    uint64_t last_use;        // LRU clock
    uint64_t copy_ticket;     // async engine: the fill of this slot
    uint64_t compute_ticket;  // async engine: the last kernels that read it
} cache_slot;

struct expert_cache {
    const model *m;
    backend *be;
    expert_cache_options o;
    expert_evict evict;       // effective policy
    int n_layers, n_local;
    size_t slot_bytes, page;
    int n_slots;
    uint8_t *pool;            // backend memory: n_slots * slot_bytes, owned
    cache_slot *slots;
    int *part;                // [n_layers + 1]: layer l owns slots part[l] .. part[l+1] (LAYER_LRU)
    int *where;               // [n_layers * n_local]: slot of an expert, or -1
    // What expert_ffn sees, [n_layers * n_local]: the source's shape, and data/ld of the pool
    // copy while resident (the source view otherwise: never read, it has no rows then).
    weight_t *w1, *w3, *w2;
    uint64_t clock;

    // the layer being computed
    int layer;
    const int64_t *offsets;
    int cursor, group_first, group_last, layer_groups;
    unsigned char *needed;    // [n_local]: has rows in this step
    unsigned char *routed;    // [n_local]: chosen by this rank's own tokens (router hook)
    unsigned char *history;   // [n_layers * n_local]: `needed` of each layer in the last step
    unsigned char *protect;   // [n_local]: scratch
    expert_cache_stats st;
};

// ---------------------------------------------------------------------------- sizes
static size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }
static size_t packed_bytes(const weight_t *w) { return (size_t)w->rows * (size_t)w->cols * dtype_size(w->dtype); }

static size_t expert_slot_size(const layer_weights *L, int i) {
    return align_up(packed_bytes(&L->w1[i]), SUB_ALIGN) + align_up(packed_bytes(&L->w3[i]), SUB_ALIGN) +
           align_up(packed_bytes(&L->w2[i]), SUB_ALIGN);
}

size_t expert_cache_slot_bytes(const model *m) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE), max = 0;
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int i = 0; i < m->n_local_experts; i++) {
            size_t b = expert_slot_size(&m->layers[l], i);
            if (b > max) max = b;
        }
    return align_up(max, page);
}

size_t expert_cache_slot_bytes_any(const model *m) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE), max = 0;
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int e = 0; e < m->moe.n_experts; e++) {
            weight_t w[3];
            moe_expert_shape(m, l, e, w);
            size_t b = align_up(packed_bytes(&w[0]), SUB_ALIGN) + align_up(packed_bytes(&w[1]), SUB_ALIGN) +
                       align_up(packed_bytes(&w[2]), SUB_ALIGN);
            if (b > max) max = b;
        }
    return align_up(max, page);
}

// ---------------------------------------------------------------------------- lifecycle
expert_cache *expert_cache_new(const model *m, const expert_cache_options *o, llamoe_err *err) {
    CHECK(m->moe.kind != MOE_DENSE && m->n_local_experts > 0);
    int L = m->cfg.n_layers, n_local = m->n_local_experts;
    size_t slot = o->any_expert ? expert_cache_slot_bytes_any(m) : expert_cache_slot_bytes(m);
    if (o->budget_bytes < slot) {
        fail(err, "%.3f MiB is below one expert (%.3f MiB: w1 + w3 + w2 of the largest expert of this rank, packed); give at least %.3f MiB",
             o->budget_bytes / 1048576.0, slot / 1048576.0, slot / 1048576.0);
        return NULL;
    }
    // More slots than experts would never be used.
    size_t want = o->budget_bytes / slot, all = (size_t)L * (size_t)n_local;
    int n_slots = (int)(want < all ? want : all);
    size_t pool_bytes;
    CHECK(mul_ok((size_t)n_slots, slot, &pool_bytes));
    backend *be = m->be;
    void *pool = be->try_alloc(be, pool_bytes);
    if (!pool) {
        fail(err, "cannot allocate the expert pool on the %s backend: %d slots x %.3f MiB = %.1f MiB (budget %.1f MiB): out of memory",
             be->name, n_slots, slot / 1048576.0, pool_bytes / 1048576.0, o->budget_bytes / 1048576.0);
        return NULL;
    }

    expert_cache *ec = xcalloc(1, sizeof *ec);
    ec->m = m;
    ec->be = be;
    ec->o = *o;
    ec->n_layers = L;
    ec->n_local = n_local;
    ec->slot_bytes = slot;
    ec->page = (size_t)sysconf(_SC_PAGESIZE);
    ec->n_slots = n_slots;
    ec->pool = pool;
    ec->slots = xcalloc((size_t)n_slots, sizeof(cache_slot));
    for (int s = 0; s < n_slots; s++) ec->slots[s].key = -1;
    // A per-layer share needs at least one slot per layer.
    ec->evict = o->evict == EVICT_LAYER_LRU && n_slots >= L ? EVICT_LAYER_LRU : EVICT_LRU;
    ec->part = xcalloc((size_t)L + 1, sizeof(int));
    for (int l = 0; l < L; l++) ec->part[l + 1] = ec->part[l] + n_slots / L + (l < n_slots % L);
    ec->where = xmalloc(all * sizeof(int));
    ec->w1 = xmalloc(all * sizeof(weight_t));
    ec->w3 = xmalloc(all * sizeof(weight_t));
    ec->w2 = xmalloc(all * sizeof(weight_t));
    for (int l = 0; l < L; l++)
        for (int i = 0; i < n_local; i++) {
            size_t key = (size_t)l * n_local + i;
            ec->where[key] = -1;
            ec->w1[key] = m->layers[l].w1[i];
            ec->w3[key] = m->layers[l].w3[i];
            ec->w2[key] = m->layers[l].w2[i];
        }
    ec->needed = xcalloc((size_t)n_local, 1);
    ec->routed = xcalloc((size_t)n_local, 1);
    ec->protect = xcalloc((size_t)n_local, 1);
    ec->history = xcalloc(all, 1);
    ec->group_first = -1;
    return ec;
}

void expert_cache_free(expert_cache *ec) {
    if (!ec) return;
    ec->be->sync(ec->be);   // no copy may still write into the pool
    ec->be->free(ec->be, ec->pool);
    free(ec->slots);
    free(ec->part);
    free(ec->where);
    free(ec->w1);
    free(ec->w3);
    free(ec->w2);
    free(ec->needed);
    free(ec->routed);
    free(ec->protect);
    free(ec->history);
    free(ec);
}

// ---------------------------------------------------------------------------- copies
static uint64_t upload(expert_cache *ec, void *dst, const void *src, size_t bytes) {
    if (ec->be->upload_async) return ec->be->upload_async(ec->be, dst, src, bytes);
    ec->be->upload(ec->be, dst, src, bytes);
    return 0;
}

// Copies w packed (ld = cols) to dst; returns the copy ticket (0 when synchronous).
static uint64_t copy_weight(expert_cache *ec, uint8_t *dst, const weight_t *w) {
    size_t es = dtype_size(w->dtype), row = (size_t)w->cols * es;
    if (w->ld == w->cols) return upload(ec, dst, w->data, row * (size_t)w->rows);
    uint64_t t = 0;
    for (int64_t r = 0; r < w->rows; r++)   // a strided view (identity slice of down_proj)
        t = upload(ec, dst + (size_t)r * row, (const uint8_t *)w->data + (size_t)r * (size_t)w->ld * es, row);
    return t;
}

// After its copy, a source that is a view into the mmapped checkpoint gives its pages back:
// the pool copy is what the kernels read, and a later miss faults them in again from the page
// cache (the map is PROT_READ + MAP_PRIVATE and never written, so nothing can be lost).
// Only whole pages inside the view are released, never a page shared with another tensor's
// data or a header. Heap sources (production mode) are never released: MADV_DONTNEED would
// zero them. With an asynchronous copy engine the source must stay until the copy is done,
// so nothing is released (pinned host memory is the GPU's host tier anyway).
static void release_source(expert_cache *ec, const weight_t *w) {
    if (!ec->o.release_pages || ec->be->upload_async) return;
    size_t es = dtype_size(w->dtype);
    uintptr_t lo = (uintptr_t)w->data;
    uintptr_t hi = lo + ((size_t)(w->rows - 1) * (size_t)w->ld + (size_t)w->cols) * es;
    const st_set *st = &ec->m->st;
    int in_file = 0;
    for (int f = 0; f < st->n_files && !in_file; f++) {
        uintptr_t a = (uintptr_t)st->files[f].map;
        in_file = lo >= a && hi <= a + st->files[f].size;
    }
    if (!in_file) return;
    uintptr_t a = align_up(lo, ec->page), b = hi / ec->page * ec->page;
    if (b <= a) return;
    if (madvise((void *)a, b - a, MADV_DONTNEED) == 0) ec->st.bytes_released += b - a;
}

// ---------------------------------------------------------------------------- slots
// The slot to (re)fill for an expert of layer l: a free one, else the least recently used
// one that is not pinned and not protected (protect[i]: local expert i of layer l). -1 if none.
static int find_victim(const expert_cache *ec, int l, const unsigned char *protect) {
    int lo = 0, hi = ec->n_slots;
    if (ec->evict == EVICT_LAYER_LRU) { lo = ec->part[l]; hi = ec->part[l + 1]; }
    int best = -1;
    for (int s = lo; s < hi; s++) {
        const cache_slot *c = &ec->slots[s];
        if (c->key < 0) return s;
        if (c->pinned) continue;
        if (protect && c->key / ec->n_local == l && protect[c->key % ec->n_local]) continue;
        if (best < 0 || c->last_use < ec->slots[best].last_use) best = s;
    }
    return best;
}

static void evict(expert_cache *ec, int s) {
    cache_slot *c = &ec->slots[s];
    if (c->key < 0) return;
    int l = c->key / ec->n_local, i = c->key % ec->n_local;
    const layer_weights *L = &ec->m->layers[l];
    ec->w1[c->key] = L->w1[i];   // back to the source view: shapes stay valid, data unread
    ec->w3[c->key] = L->w3[i];
    ec->w2[c->key] = L->w2[i];
    ec->where[c->key] = -1;
    if (c->prefetched) ec->st.prefetch_wasted++;
    ec->st.evictions++;
    c->key = -1;
    c->prefetched = 0;
}

// Copies local expert i of layer l into slot s (evicting what it held).
static void fill(expert_cache *ec, int l, int i, int s, int is_prefetch) {
    double t0 = now_seconds();
    cache_slot *c = &ec->slots[s];
    evict(ec, s);
    // The kernels that read the old contents must be done before the copy overwrites them.
    if (ec->be->copy_wait && c->compute_ticket) ec->be->copy_wait(ec->be, c->compute_ticket);
    const layer_weights *L = &ec->m->layers[l];
    const weight_t *src[3] = {&L->w1[i], &L->w3[i], &L->w2[i]};
    size_t key = (size_t)l * ec->n_local + i;
    weight_t *dst[3] = {&ec->w1[key], &ec->w3[key], &ec->w2[key]};
    uint8_t *p = ec->pool + (size_t)s * ec->slot_bytes;
    size_t bytes = 0;
    uint64_t ticket = 0;
    for (int j = 0; j < 3; j++) {
        uint64_t t = copy_weight(ec, p, src[j]);
        if (t > ticket) ticket = t;
        *dst[j] = *src[j];
        dst[j]->data = p;
        dst[j]->ld = src[j]->cols;
        size_t b = packed_bytes(src[j]);
        bytes += b;
        p += align_up(b, SUB_ALIGN);
        release_source(ec, src[j]);
    }
    c->key = (int)key;
    c->pinned = 0;
    c->prefetched = is_prefetch;
    c->last_use = ++ec->clock;
    c->copy_ticket = ticket;
    ec->where[key] = s;
    ec->st.bytes_moved += bytes;
    double dt = now_seconds() - t0;
    if (is_prefetch) {
        ec->st.prefetches++;
        ec->st.bytes_prefetched += bytes;
        ec->st.t_prefetch += dt;
    } else {
        ec->st.misses++;
        ec->st.t_demand += dt;
    }
}

// Brings the experts in mask[] of layer l in ahead of use, without evicting any of them
// or anything pinned; stops when no slot is left for them.
static void prefetch(expert_cache *ec, int l, const unsigned char *mask) {
    for (int i = 0; i < ec->n_local; i++) {
        if (!mask[i] || ec->where[(size_t)l * ec->n_local + i] >= 0) continue;
        int s = find_victim(ec, l, mask);
        if (s < 0) break;
        fill(ec, l, i, s, 1);
    }
}

// While the last group of layer l computes: the guess for the layer after it.
static void prefetch_next(expert_cache *ec, int l) {
    if (ec->o.prefetch == PREFETCH_PREV_LAYER && l + 1 < ec->n_layers) {
        prefetch(ec, l + 1, ec->needed);
    } else if (ec->o.prefetch == PREFETCH_PREV_TOKEN) {
        int next = (l + 1) % ec->n_layers;   // after the last layer: the next step's first
        prefetch(ec, next, ec->history + (size_t)next * ec->n_local);
    }
}

// ---------------------------------------------------------------------------- step hooks
void expert_cache_routed(expert_cache *ec, int l, const int32_t *pairs_per_expert) {
    for (int i = 0; i < ec->n_local; i++) ec->routed[i] = pairs_per_expert[ec->m->first_expert + i] > 0;
    if (ec->o.prefetch == PREFETCH_ROUTER) prefetch(ec, l, ec->routed);
}

void expert_cache_begin(expert_cache *ec, int l, const int64_t *offsets) {
    CHECK(ec->group_first < 0);
    ec->layer = l;
    ec->offsets = offsets;
    ec->cursor = 0;
    ec->layer_groups = 0;
    for (int i = 0; i < ec->n_local; i++) {
        ec->needed[i] = offsets[i + 1] > offsets[i];
        ec->st.lookups += ec->needed[i];
    }
}

static void unpin_group(expert_cache *ec) {
    if (ec->group_first < 0) return;
    uint64_t t = ec->be->compute_fence ? ec->be->compute_fence(ec->be) : 0;
    for (int i = ec->group_first; i <= ec->group_last; i++) {
        int s = ec->where[(size_t)ec->layer * ec->n_local + i];
        if (!ec->needed[i] || s < 0) continue;
        ec->slots[s].pinned = 0;
        ec->slots[s].compute_ticket = t;
    }
    ec->group_first = -1;
}

int expert_cache_next(expert_cache *ec, expert_set *set, int *first) {
    int l = ec->layer, n_local = ec->n_local;
    unpin_group(ec);
    while (ec->cursor < n_local && !ec->needed[ec->cursor]) ec->cursor++;
    if (ec->cursor == n_local) {   // the layer is done (or had no rows here at all)
        if (ec->offsets) {
            if (ec->layer_groups == 0) prefetch_next(ec, l);   // no rows here: nothing to overlap
            memcpy(ec->history + (size_t)l * n_local, ec->needed, (size_t)n_local);
            ec->offsets = NULL;
        }
        return 0;
    }
    // Grow the group over the active experts in order while each finds a slot. Victims are
    // never experts this layer still needs (protect), unless nothing else is left.
    int g0 = ec->cursor, last = -1;
    uint64_t wait = 0;
    for (int i = g0; i < n_local; i++) {
        if (!ec->needed[i]) continue;
        size_t key = (size_t)l * n_local + i;
        int s = ec->where[key];
        if (s >= 0) {
            cache_slot *c = &ec->slots[s];
            if (c->prefetched) ec->st.prefetch_hits++;
            else ec->st.hits++;
            c->prefetched = 0;
        } else {
            for (int j = 0; j < n_local; j++) ec->protect[j] = j > i && ec->needed[j];
            s = find_victim(ec, l, ec->protect);
            if (s < 0 && last < 0) s = find_victim(ec, l, NULL);
            if (s < 0) break;   // the pool is full of this group: compute it first
            fill(ec, l, i, s, 0);
        }
        cache_slot *c = &ec->slots[s];
        c->pinned = 1;
        c->last_use = ++ec->clock;
        if (c->copy_ticket > wait) wait = c->copy_ticket;
        last = i;
    }
    CHECK(last >= g0);   // an empty group: every slot pinned, which unpin_group rules out
    ec->cursor = last + 1;
    ec->group_first = g0;
    ec->group_last = last;
    int rest = ec->cursor;
    while (rest < n_local && !ec->needed[rest]) rest++;
    if (rest == n_local) prefetch_next(ec, l);   // overlaps this last group's compute on a GPU
    if (wait && ec->be->compute_wait) ec->be->compute_wait(ec->be, wait);
    size_t base = (size_t)l * n_local + g0;
    *set = (expert_set){.n_experts = last - g0 + 1, .w1 = ec->w1 + base, .w3 = ec->w3 + base, .w2 = ec->w2 + base};
    *first = g0;
    ec->st.groups++;
    ec->layer_groups++;
    return 1;
}

void expert_cache_reload(expert_cache *ec, int l, int i) {
    size_t key = (size_t)l * ec->n_local + i;
    if (ec->where[key] >= 0) {
        int s = ec->where[key];
        CHECK(!ec->slots[s].pinned);   // between steps: no group is being computed
        evict(ec, s);
        ec->st.evictions--;             // not the pool's choice: no eviction to report
    }
    const layer_weights *L = &ec->m->layers[l];
    ec->w1[key] = L->w1[i];
    ec->w3[key] = L->w3[i];
    ec->w2[key] = L->w2[i];
}

// ---------------------------------------------------------------------------- queries
void expert_cache_get_stats(const expert_cache *ec, expert_cache_stats *s) { *s = ec->st; }
int expert_cache_slots(const expert_cache *ec) { return ec->n_slots; }
expert_evict expert_cache_policy(const expert_cache *ec) { return ec->evict; }

