#include "runtime/moe_mode.h"

#include <errno.h>
#include <string.h>

// Reads a positive decimal integer that fills the whole field [s, end).
static int parse_count(const char *s, const char *end, int *out) {
    if (s == end || end - s > 9) return -1;
    int v = 0;
    for (const char *p = s; p < end; p++) {
        if (*p < '0' || *p > '9') return -1;
        v = v * 10 + (*p - '0');
    }
    *out = v;
    return 0;
}

int moe_mode_parse(const char *s, moe_mode *m, llamoe_err *err) {
    memset(m, 0, sizeof *m);
    m->drop = 0.5f;
    m->seed = 1234;
    const char *colon = strchr(s, ':');
    size_t name_len = colon ? (size_t)(colon - s) : strlen(s);
    static const struct { const char *name; moe_kind kind; int n_fields; } kinds[] = {
        {"dense", MOE_DENSE, 0}, {"identity", MOE_IDENTITY, 1},
        {"upcycle", MOE_UPCYCLE, 2}, {"production", MOE_PRODUCTION, 2},
    };
    int found = -1;
    for (int i = 0; i < 4; i++)
        if (strlen(kinds[i].name) == name_len && !strncmp(s, kinds[i].name, name_len)) found = i;
    if (found < 0)
        return fail(err, "--moe %s: unknown mode (dense, identity:E, upcycle:E:k, production:E:k)", s);
    m->kind = kinds[found].kind;
    int fields[2] = {0, 0}, n = 0;
    const char *p = colon;
    while (p && *p == ':') {
        const char *start = p + 1, *end = strchr(start, ':');
        if (!end) end = start + strlen(start);
        if (n == 2 || parse_count(start, end, &fields[n]) != 0)
            return fail(err, "--moe %s: expected %s", s,
                        kinds[found].n_fields == 0 ? "no fields" :
                        kinds[found].n_fields == 1 ? "identity:E with E a positive integer" :
                        "MODE:E:k with E and k positive integers");
        n++;
        p = end;
    }
    if (n != kinds[found].n_fields)
        return fail(err, "--moe %s: %s takes %d field(s), got %d", s, kinds[found].name,
                    kinds[found].n_fields, n);
    if (m->kind == MOE_DENSE) return 0;
    m->n_experts = fields[0];
    m->top_k = m->kind == MOE_IDENTITY ? fields[0] : fields[1];
    if (m->n_experts < 1) return fail(err, "--moe %s: E must be at least 1", s);
    if (m->top_k < 1) return fail(err, "--moe %s: k must be at least 1", s);
    if (m->top_k > m->n_experts) return fail(err, "--moe %s: k = %d exceeds E = %d", s, m->top_k, m->n_experts);
    return 0;
}

int moe_mode_check(const moe_mode *m, int ffn_size, llamoe_err *err) {
    char buf[64];
    if (m->kind == MOE_IDENTITY && m->n_experts > ffn_size)
        return fail(err, "--moe %s: E = %d exceeds the FFN size %d (each expert needs a neuron)",
                    moe_mode_str(m, buf, sizeof buf), m->n_experts, ffn_size);
    if (m->n_experts > 4096)
        return fail(err, "--moe %s: E = %d is more than the 4096 experts supported",
                    moe_mode_str(m, buf, sizeof buf), m->n_experts);
    if (m->kind == MOE_PRODUCTION && !(m->drop >= 0.0f && m->drop <= 1.0f))
        return fail(err, "--drop %g: must be between 0 and 1", m->drop);
    return 0;
}

const char *moe_mode_str(const moe_mode *m, char *buf, size_t len) {
    switch (m->kind) {
    case MOE_DENSE: snprintf(buf, len, "dense"); break;
    case MOE_IDENTITY: snprintf(buf, len, "identity:%d", m->n_experts); break;
    case MOE_UPCYCLE: snprintf(buf, len, "upcycle:%d:%d", m->n_experts, m->top_k); break;
    case MOE_PRODUCTION: snprintf(buf, len, "production:%d:%d", m->n_experts, m->top_k); break;
    case MOE_CHECKPOINT: snprintf(buf, len, "checkpoint:%d:%d", m->n_experts, m->top_k); break;
    }
    return buf;
}

// ---------------------------------------------------------------------------- memory mode
static const char *const prefetch_names[] = {"none", "router", "prev-layer", "prev-token"};
static const char *const evict_names[] = {"lru", "layer-lru"};

int expert_prefetch_parse(const char *s, expert_prefetch *out) {
    for (int i = 0; i < 4; i++)
        if (!strcmp(s, prefetch_names[i])) { *out = (expert_prefetch)i; return 0; }
    return -1;
}
const char *expert_prefetch_name(expert_prefetch p) { return prefetch_names[p]; }

int expert_evict_parse(const char *s, expert_evict *out) {
    for (int i = 0; i < 2; i++)
        if (!strcmp(s, evict_names[i])) { *out = (expert_evict)i; return 0; }
    return -1;
}
const char *expert_evict_name(expert_evict p) { return evict_names[p]; }
