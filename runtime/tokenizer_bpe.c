// The BPE model applied to one pre-tokenized piece: one symbol per character (byte tokens or
// unk for characters outside the vocab), then merges lowest rank first from a binary heap of
// candidate pairs, ties to the leftmost. Byte-level (Llama 3) and SentencePiece-style (byte
// fallback, Llama 2) vocabularies run the same code. Results are kept in the encode call's word
// cache, so a repeated word costs one lookup.
#include "runtime/tokenizer_internal.h"

#define CACHE_MAX_PIECE 256                   // longer pieces are rare; not worth caching
#define CACHE_MAX_ENTRIES ((size_t)1 << 16)   // bound on one encode call's word cache

// ---------------------------------------------------------------------------- merge queue
static void heap_push(encoder *e, uint32_t rank, uint32_t pos) {
    if (e->n_heap == e->cap_heap) {
        e->cap_heap = e->cap_heap ? 2 * e->cap_heap : 64;
        e->heap = xrealloc(e->heap, e->cap_heap * sizeof *e->heap);
    }
    size_t i = e->n_heap++;
    bpe_merge m = {rank, pos};
    while (i > 0) {   // sift up; ties go to the leftmost pair, as in Hugging Face
        size_t p = (i - 1) / 2;
        bpe_merge q = e->heap[p];
        if (q.rank < m.rank || (q.rank == m.rank && q.pos < m.pos)) break;
        e->heap[i] = q;
        i = p;
    }
    e->heap[i] = m;
}

static bpe_merge heap_pop(encoder *e) {
    bpe_merge top = e->heap[0], m = e->heap[--e->n_heap];
    size_t i = 0, n = e->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && (e->heap[c + 1].rank < e->heap[c].rank ||
                          (e->heap[c + 1].rank == e->heap[c].rank && e->heap[c + 1].pos < e->heap[c].pos))) c++;
        if (m.rank < e->heap[c].rank || (m.rank == e->heap[c].rank && m.pos < e->heap[c].pos)) break;
        e->heap[i] = e->heap[c];
        i = c;
    }
    if (n) e->heap[i] = m;
    return top;
}

// ---------------------------------------------------------------------------- BPE
static void push_pair(encoder *e, int32_t left) {
    const bpe_symbol *s = e->sym;
    if (left < 0 || s[left].next < 0) return;
    const pair_slot *m = pairmap_get(&e->t->merges, s[left].id, s[s[left].next].id);
    if (m) heap_push(e, m->rank, (uint32_t)left);
}

// Initial symbols: one per character; characters outside the vocab become byte tokens
// (byte_fallback), else unk (consecutive unks fused with fuse_unk), else are dropped.
static size_t bpe_symbols(encoder *e, const char *s, size_t n) {
    const tokenizer *t = e->t;
    if (n > e->cap_sym) {
        e->cap_sym = n;
        free(e->sym);
        e->sym = xmalloc(n * sizeof *e->sym);
    }
    size_t ns = 0;
    for (size_t i = 0; i < n;) {
        size_t cl = utf8_len(s + i, n - i);
        int32_t id = strmap_get(&t->vocab, s + i, cl);
        if (id >= 0) {
            e->sym[ns++] = (bpe_symbol){id, 0, 0, (uint32_t)cl};
        } else {
            bool all_bytes = t->byte_fallback;
            for (size_t k = 0; k < cl && all_bytes; k++) all_bytes = t->byte_id[(uint8_t)s[i + k]] >= 0;
            if (all_bytes) {
                for (size_t k = 0; k < cl; k++) e->sym[ns++] = (bpe_symbol){t->byte_id[(uint8_t)s[i + k]], 0, 0, 1};
            } else if (t->unk_id >= 0) {
                if (t->fuse_unk && ns > 0 && e->sym[ns - 1].id == t->unk_id) e->sym[ns - 1].len += (uint32_t)cl;
                else e->sym[ns++] = (bpe_symbol){t->unk_id, 0, 0, (uint32_t)cl};
            }
        }
        i += cl;
    }
    for (size_t i = 0; i < ns; i++) {
        e->sym[i].prev = (int32_t)i - 1;
        e->sym[i].next = i + 1 < ns ? (int32_t)i + 1 : -1;
    }
    return ns;
}

// Applies merges lowest rank first until none applies: O(n log n) with the heap. Heap entries
// go stale when a neighbour merges; they are checked against the current pair when popped.
static void bpe_merge_all(encoder *e, size_t ns) {
    bpe_symbol *s = e->sym;
    e->n_heap = 0;
    for (size_t i = 0; i + 1 < ns; i++) push_pair(e, (int32_t)i);
    while (e->n_heap) {
        bpe_merge top = heap_pop(e);
        int32_t p = (int32_t)top.pos, q = s[p].next;
        if (s[p].len == 0 || q < 0) continue;
        const pair_slot *m = pairmap_get(&e->t->merges, s[p].id, s[q].id);
        if (!m || m->rank != top.rank) continue;
        s[p].id = m->merged;
        s[p].len += s[q].len;
        s[p].next = s[q].next;
        if (s[q].next >= 0) s[s[q].next].prev = p;
        s[q].len = 0;
        push_pair(e, s[p].prev);
        push_pair(e, p);
    }
}

void bpe_piece(encoder *e, const char *s, size_t n) {
    const tokenizer *t = e->t;
    if (n == 0) return;
    if (t->ignore_merges) {   // a whole piece in the vocab is one token, merges or not
        int32_t id = strmap_get(&t->vocab, s, n);
        if (id >= 0) { emit(e, id); return; }
    }
    bool cacheable = n <= CACHE_MAX_PIECE;
    if (cacheable) {
        int32_t c = strmap_get(&e->cache, s, n);
        if (c >= 0) {
            for (size_t k = 0; k < e->cache_n[c]; k++) emit(e, e->cache_ids[e->cache_off[c] + k]);
            return;
        }
    }
    size_t first = e->n_ids, ns = bpe_symbols(e, s, n);
    if (ns == 0) return;
    bpe_merge_all(e, ns);
    for (int32_t i = 0; i >= 0; i = e->sym[i].next) emit(e, e->sym[i].id);
    if (cacheable && e->cache.n < CACHE_MAX_ENTRIES) {
        size_t c = e->cache.n, k = e->n_ids - first;
        if (c == e->cap_cache) {
            e->cap_cache = e->cap_cache ? 2 * e->cap_cache : 256;
            e->cache_off = xrealloc(e->cache_off, e->cap_cache * sizeof *e->cache_off);
            e->cache_n = xrealloc(e->cache_n, e->cap_cache * sizeof *e->cache_n);
        }
        if (e->n_cache_ids + k > e->cap_cache_ids) {
            while (e->n_cache_ids + k > e->cap_cache_ids) e->cap_cache_ids = e->cap_cache_ids ? 2 * e->cap_cache_ids : 1024;
            e->cache_ids = xrealloc(e->cache_ids, e->cap_cache_ids * sizeof *e->cache_ids);
        }
        memcpy(e->cache_ids + e->n_cache_ids, e->ids + first, k * sizeof *e->ids);
        e->cache_off[c] = e->n_cache_ids;
        e->cache_n[c] = k;
        e->n_cache_ids += k;
        strmap_put(&e->cache, s, n, (int32_t)c);
    }
}
