// llamoe-ep's command line and prompts file (see ep_cli.h). Everything here comes from the
// user: every number is range-checked, every count bounded before it sizes an allocation.
#include "runtime/ep_cli.h"

#include "base/args.h"

#include <ctype.h>
#include <errno.h>
#include <string.h>

// ---------------------------------------------------------------------------- command line
int ep_parse_args(int argc, char **argv, ep_options *o, llamoe_err *err) {
    *o = (ep_options){.model_dir = EP_DEFAULT_MODEL, .n_new = 48, .step_tokens = 256, .temp = 0.0f,
                      .top_p = 1.0f, .drop = 0.5f, .seed = 1234, .bind = BIND_CORES,
                      .prefetch = PREFETCH_ROUTER, .evict = EVICT_LAYER_LRU, .expert_madvise = 1};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) return 1;
        if (!strcmp(a, "--json")) { o->json = 1; continue; }
        if (!strcmp(a, "--stats")) { o->stats = 1; continue; }
        if (!strcmp(a, "--verbose")) { o->verbose = 1; continue; }
        if (!strcmp(a, "--chat")) { o->chat = 1; continue; }
        if (!strcmp(a, "--rebalance-check")) { o->rebalance_check = 1; continue; }
        static const char *const takes_value[] = {"-m", "-p", "--ids", "--prompts", "-n", "--temp", "--top-p",
            "--seed", "--moe", "--drop", "--ctx", "--step-tokens", "--threads", "--dump-logits", "--bind",
            "--backend", "--transport", "--warmup", "--expert-budget", "--expert-prefetch", "--expert-evict",
            "--expert-madvise", "--moe-exchange", "--moe-capacity", "--expert-gemm", "--placement",
            "--redundant-experts", "--load-profile", "--write-load-profile", "--rebalance", NULL};
        int known = 0;
        for (int j = 0; takes_value[j]; j++) known |= !strcmp(a, takes_value[j]);
        if (!known) return fail(err, "%s: unknown option (see --help)", a);
        if (i + 1 >= argc) return fail(err, "%s: missing value (see --help)", a);
        const char *v = argv[++i];
        int rc = 0;
        if (!strcmp(a, "-m")) o->model_dir = v;
        else if (!strcmp(a, "-p")) o->prompt_text = v;
        else if (!strcmp(a, "--ids")) o->prompt_ids = v;
        else if (!strcmp(a, "--prompts")) o->prompts_file = v;
        else if (!strcmp(a, "-n")) rc = arg_int(a, v, 0, 1 << 24, &o->n_new, err);
        else if (!strcmp(a, "--temp")) rc = arg_float(a, v, 0.0f, 100.0f, &o->temp, err);
        else if (!strcmp(a, "--top-p")) rc = arg_float(a, v, 0.0f, 1.0f, &o->top_p, err);
        else if (!strcmp(a, "--seed")) rc = arg_u64(a, v, 0, UINT64_MAX, &o->seed, err);
        else if (!strcmp(a, "--moe")) o->moe = v;
        else if (!strcmp(a, "--drop")) rc = arg_float(a, v, 0.0f, 1.0f, &o->drop, err);
        else if (!strcmp(a, "--ctx")) rc = arg_int(a, v, 1, 1 << 24, &o->ctx, err);
        else if (!strcmp(a, "--step-tokens")) rc = arg_int(a, v, 1, 1 << 16, &o->step_tokens, err);
        else if (!strcmp(a, "--threads")) rc = arg_int(a, v, 1, 4096, &o->threads, err);
        else if (!strcmp(a, "--warmup")) rc = arg_int(a, v, 0, 1 << 24, &o->warmup, err);
        else if (!strcmp(a, "--dump-logits")) o->dump_logits = v;
        else if (!strcmp(a, "--backend")) {
            if (strcmp(v, "cpu") && strcmp(v, "cuda")) rc = fail(err, "--backend %s: expected cpu or cuda", v);
            o->backend_name = v;
        } else if (!strcmp(a, "--transport")) {
            if (strcmp(v, "mpi") && strcmp(v, "nccl")) rc = fail(err, "--transport %s: expected mpi or nccl", v);
            o->transport = v;
        } else if (!strcmp(a, "--expert-budget")) {   // MiB; fractions for tiny models
            if (arg_positive(a, v, 1e9, &o->expert_budget_mib, NULL) != 0)   // the unit and examples say more
                rc = fail(err, "--expert-budget %s: expected a size in MiB above 0 (per rank), like 512 or 0.5", v);
            o->expert_budget = v;
        } else if (!strcmp(a, "--expert-prefetch")) {
            if (expert_prefetch_parse(v, &o->prefetch) != 0)
                rc = fail(err, "--expert-prefetch %s: expected none, router, prev-layer or prev-token", v);
        } else if (!strcmp(a, "--expert-evict")) {
            if (expert_evict_parse(v, &o->evict) != 0) rc = fail(err, "--expert-evict %s: expected lru or layer-lru", v);
        } else if (!strcmp(a, "--expert-madvise")) {
            if (strcmp(v, "on") && strcmp(v, "off")) rc = fail(err, "--expert-madvise %s: expected on or off", v);
            o->expert_madvise = !strcmp(v, "on");
        } else if (!strcmp(a, "--moe-exchange")) {
            if (strcmp(v, "auto") && strcmp(v, "counts") && strcmp(v, "fixed"))
                rc = fail(err, "--moe-exchange %s: expected auto, counts or fixed", v);
            o->moe_exchange = v;
        } else if (!strcmp(a, "--moe-capacity")) rc = arg_int(a, v, 1, 1 << 16, &o->moe_capacity, err);
        else if (!strcmp(a, "--expert-gemm")) {
            if (strcmp(v, "grouped") && strcmp(v, "loop") && strcmp(v, "gemv"))
                rc = fail(err, "--expert-gemm %s: expected grouped, loop or gemv", v);
            o->expert_gemm = v;
        } else if (!strcmp(a, "--placement")) {
            if (!*v) rc = fail(err, "--placement: expected contiguous, balanced or a placement file");
            o->placement = v;
        } else if (!strcmp(a, "--redundant-experts")) rc = arg_int(a, v, 0, 1 << 20, &o->redundant_experts, err);
        else if (!strcmp(a, "--load-profile")) o->load_profile = v;
        else if (!strcmp(a, "--write-load-profile")) o->write_load_profile = v;
        else if (!strcmp(a, "--rebalance")) rc = arg_int(a, v, 1, 1 << 24, &o->rebalance, err);
        else if (!strcmp(a, "--bind") && bind_mode_parse(v, &o->bind) != 0)
            rc = fail(err, "--bind %s: expected cores or none", v);
        if (rc != 0) return -1;
    }
    int sources = !!o->prompt_text + !!o->prompt_ids + !!o->prompts_file;
    if (sources > 1) return fail(err, "-p, --ids and --prompts are exclusive");
    if (o->top_p <= 0.0f) return fail(err, "--top-p %g: must be above 0", o->top_p);
    if (o->expert_budget && o->moe_exchange && !strcmp(o->moe_exchange, "fixed"))
        return fail(err, "--moe-exchange fixed: memory mode (--expert-budget) needs the counts exchange");
    int balanced = o->placement && !strcmp(o->placement, "balanced");
    int contiguous = !o->placement || !strcmp(o->placement, "contiguous");
    if (o->load_profile && !balanced)
        return fail(err, "--load-profile %s: only --placement balanced reads a load profile", o->load_profile);
    if (o->redundant_experts > 0 && !balanced)
        return fail(err, "--redundant-experts %d: copies are placed by --placement balanced (%s places none)",
                    o->redundant_experts, contiguous ? "contiguous" : "a placement file");
    if (o->rebalance_check && !o->rebalance) return fail(err, "--rebalance-check: checks the moves of --rebalance N");
    return 0;
}

// ---------------------------------------------------------------------------- prompts
int parse_id_list(const char *s, prompt *p) {
    size_t cap = 16;
    p->ids = xmalloc(cap * sizeof(int32_t));
    p->n = 0;
    const char *c = s;
    while (*c) {
        while (*c == ' ' || *c == ',' || *c == '\t' || *c == '\r') c++;
        if (!*c) break;
        if (!isdigit((unsigned char)*c) && *c != '-') goto not_ids;
        char *end;
        errno = 0;
        long v = strtol(c, &end, 10);
        if (errno || end == c || (*end && *end != ',' && *end != ' ' && *end != '\t' && *end != '\r')) goto not_ids;
        if (v < INT32_MIN || v > INT32_MAX) goto not_ids;
        if (p->n == INT32_MAX) goto not_ids;   // cannot happen below the 256 MB file limit
        if ((size_t)p->n == cap) {
            cap *= 2;
            p->ids = xrealloc(p->ids, cap * sizeof(int32_t));
        }
        p->ids[p->n++] = (int32_t)v;
        c = end;
    }
    if (p->n > 0) return 0;
not_ids:
    free(p->ids);
    p->ids = NULL;
    p->n = 0;
    return -1;
}

int prompt_encode(const tokenizer *tok, const char *text, int chat, prompt *p, const char *what,
                  llamoe_err *err) {
    p->ids = NULL;
    p->n = 0;
    if (!tok) return fail(err, "%s: the model directory has no tokenizer.json; give the prompt as --ids", what);
    const char *t = text;
    char *wrapped = NULL;
    if (chat) {
        const char *pre = "<|start_header_id|>user<|end_header_id|>\n\n";
        const char *post = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";
        if (tokenizer_token_id(tok, "<|start_header_id|>") < 0)
            return fail(err, "--chat: the tokenizer has no <|start_header_id|> token (not a Llama 3 tokenizer)");
        size_t n = strlen(pre) + strlen(text) + strlen(post) + 1;
        wrapped = xmalloc(n);
        snprintf(wrapped, n, "%s%s%s", pre, text, post);
        t = wrapped;
    }
    llamoe_err e;
    int rc = tokenizer_encode(tok, t, strlen(t), 1, 1, &p->ids, &p->n, &e);
    free(wrapped);
    if (rc != 0) return fail(err, "%s: %s", what, e.msg);
    return 0;
}

void prompts_free(prompt *ps, int n) {
    for (int i = 0; ps && i < n; i++) free(ps[i].ids);
    free(ps);
}

int prompts_parse(const char *path, char *text, size_t len, const tokenizer *tok, int chat, prompt **out,
                  int *n_out, llamoe_err *err) {
    *out = NULL;
    *n_out = 0;
    // Lines are C strings: a NUL byte would silently end the file there.
    const char *nul = memchr(text, 0, len);
    if (nul) return fail(err, "--prompts %s: NUL byte at offset %zu (not a text file)", path, (size_t)(nul - text));
    int n = 0, cap = 16;
    prompt *ps = xmalloc((size_t)cap * sizeof(prompt));
    int line_no = 0;
    for (char *line = text, *next; line; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = 0;
        line_no++;
        size_t line_len = strlen(line);
        if (line_len && line[line_len - 1] == '\r') line[--line_len] = 0;
        if (!line_len) continue;   // blank lines separate nothing and are skipped
        if (n == EP_MAX_PROMPTS) {
            prompts_free(ps, n);
            return fail(err, "--prompts %s: line %d: more than %d prompts", path, line_no, EP_MAX_PROMPTS);
        }
        if (n == cap) {
            cap *= 2;
            ps = xrealloc(ps, (size_t)cap * sizeof(prompt));
        }
        if (parse_id_list(line, &ps[n]) != 0) {
            char what[600];
            snprintf(what, sizeof what, "%s: line %d", path, line_no);
            if (prompt_encode(tok, line, chat, &ps[n], what, err) != 0) {
                prompts_free(ps, n);
                return -1;
            }
        }
        n++;
    }
    if (n == 0) {
        free(ps);
        return fail(err, "--prompts %s: no prompts (every line is blank)", path);
    }
    *out = ps;
    *n_out = n;
    return 0;
}
