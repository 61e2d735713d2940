// llamoe-ep: generate with a (MoE-ified) Llama, experts spread over the MPI ranks.
//   mpirun -np 3 llamoe-ep [-m DIR] [-p TEXT | --ids 1,2,3 | --prompts FILE] [options]
#include <ctype.h>
#include <math.h>
#include <errno.h>
#include <json-c/json.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include "parallel/comm.h"
#include "parallel/topology.h"
#include "runtime/ep_cli.h"
#include "runtime/fault.h"
#include "runtime/generate.h"
#include "runtime/tokenizer.h"
#ifdef LLAMOE_CUDA
#include "kernels/cuda/backend_cuda.h"
#include "parallel/comm_cuda.h"
#endif

#define DEFAULT_PROMPT EP_DEFAULT_PROMPT

static void usage(FILE *f) {
    fprintf(f,
        "usage: mpirun -np P llamoe-ep [options]\n"
        "  -m DIR            Hugging Face Llama or Mixtral directory (default: the bundled stories260k)\n"
        "  -p TEXT           prompt text (default: \"" DEFAULT_PROMPT "\")\n"
        "  --ids 1,2,3       prompt as token ids\n"
        "  --prompts FILE    one prompt per line (text, or ids like 1,403,407); sequences are\n"
        "                    spread over the ranks (data-parallel attention)\n"
        "  --chat            wrap the prompt in the Llama 3 instruct header format\n"
        "  -n N              new tokens per prompt (default 48)\n"
        "  --temp T          temperature, 0 = greedy (default 0)\n"
        "  --top-p P         nucleus sampling mass (default 1 = off)\n"
        "  --seed S          sampling and router seed (default 1234)\n"
        "  --moe MODE        dense | identity:E | upcycle:E:k | production:E:k\n"
        "                    (default on a dense checkpoint: upcycle:8:2; a Mixtral checkpoint\n"
        "                    uses its own experts)\n"
        "  --drop R          production mode: fraction of neurons re-initialised (default 0.5)\n"
        "  --ctx N           KV cache length per sequence (default: longest prompt + n, at most\n"
        "                    max_position_embeddings)\n"
        "  --step-tokens N   most tokens per forward step (prefill chunk, default 256)\n"
        "  --threads N       CPU threads per rank (default: the cores bound to the rank)\n"
        "  --backend B       cpu | cuda (default: cuda when built with CUDA and a GPU is present)\n"
        "  --transport T     mpi | nccl: how MoE rows travel between ranks (default mpi; nccl\n"
        "                    needs --backend cuda and one GPU per rank)\n"
        "  --bind cores|none bind ranks to cores with hwloc (default cores)\n"
        "  --warmup N        first run every prompt with N new tokens, untimed (pages in the weights,\n"
        "                    sizes the buffers); timings and statistics cover only the run after it\n"
        "  --json            print one JSON object (ids, text, timings) instead of text\n"
        "  --dump-logits F   write float32 logits rows of the first prompt to F\n"
        "  --stats           per layer: tokens per expert and imbalance (max/mean)\n"
        "  --expert-budget MiB  memory mode: at most MiB of expert weights resident per rank, in\n"
        "                    a cache filled from the checkpoint (default: throughput mode, all\n"
        "                    resident); same tokens and logits, see docs/tradeoffs.md\n"
        "  --expert-prefetch none|router|prev-layer|prev-token  memory mode prefetch (default router)\n"
        "  --expert-evict lru|layer-lru  memory mode eviction (default layer-lru)\n"
        "  --expert-madvise on|off  memory mode, CPU: release checkpoint pages of experts once\n"
        "                    copied into the cache (default on)\n"
        "  --verbose         each rank's binding, experts and memory at start\n"
        "  -h, --help        this text\n");
}

// The parsing itself is in runtime/ep_cli.c (tested and fuzzed without exiting).
typedef ep_options options;

static void parse_args(int argc, char **argv, options *o) {
    llamoe_err err;
    int rc = ep_parse_args(argc, argv, o, &err);
    if (rc == 1) { usage(stdout); exit(0); }
    if (rc != 0) die("%s", err.msg);
}

// ---------------------------------------------------------------------------- backend
// --backend and --transport: the CPU backend unless CUDA is built in and a GPU is present (or
// asked for). A CUDA rank takes GPU local_rank % n_gpus and binds to the cores near it; with
// --transport nccl the communicator becomes NCCL (set up over MPI), seen through host memory
// by the host-packed dispatch (comm_staged_new). Returns the backend; *c may be replaced.
static const backend *choose_backend(const options *o, comm **c, rank_binding *binding) {
    int want_cuda = o->backend_name ? !strcmp(o->backend_name, "cuda") : -1;   // -1: if present
    int nccl = o->transport && !strcmp(o->transport, "nccl");
#ifdef LLAMOE_CUDA
    int n_gpus = cuda_device_count();
    if (want_cuda == 1 && n_gpus == 0) die("--backend cuda: no CUDA device is visible");
    if (want_cuda != 0 && n_gpus > 0) {
        comm *cc = *c;
        int gpu = topology_gpu_for_local_rank(cc->local_rank, n_gpus);
        cuda_select_device(gpu);
        char (*ids)[32] = xcalloc((size_t)n_gpus, sizeof *ids);
        const char **id_ptr = xcalloc((size_t)n_gpus, sizeof *id_ptr);
        for (int i = 0; i < n_gpus; i++) {
            if (cuda_device_pci_bus_id(i, ids[i], (int)sizeof ids[i]) != 0) snprintf(ids[i], sizeof ids[i], "unknown");
            id_ptr[i] = ids[i];
        }
        topology_bind_gpu(cc->rank, cc->size, cc->local_rank, cc->local_size, id_ptr, n_gpus, o->bind, binding);
        free(id_ptr);
        free(ids);
        backend_cpu_set_threads(o->threads ? o->threads : binding->n_cores);
        const backend *be = backend_cuda();
        if (nccl) *c = comm_staged_new(comm_nccl_new(cc, backend_cuda_stream()), backend_cuda_stream());
        return be;
    }
#else
    if (want_cuda == 1) die("--backend cuda: this build has no CUDA backend (configure with -DLLAMOE_CUDA=ON)");
#endif
    if (nccl) die("--transport nccl needs the CUDA backend");
    topology_bind_cpu((*c)->rank, (*c)->size, (*c)->local_rank, (*c)->local_size, o->bind, binding);
    backend_cpu_set_threads(o->threads ? o->threads : binding->n_cores);
    return backend_cpu();
}


static void encode_text(const tokenizer *tok, const char *text, int chat, prompt *p, const char *what) {
    llamoe_err err;
    if (prompt_encode(tok, text, chat, p, what, &err) != 0) die("%s", err.msg);
}

static int read_prompts(const char *path, const tokenizer *tok, int chat, prompt **out) {
    llamoe_err err;
    size_t len;
    char *text = read_text_file(path, EP_MAX_PROMPTS_BYTES, &len, &err);
    if (!text) die("--prompts %s", err.msg);
    int n;
    int rc = prompts_parse(path, text, len, tok, chat, out, &n, &err);
    free(text);
    if (rc != 0) die("%s", err.msg);
    return n;
}

// ---------------------------------------------------------------------------- output
typedef struct {
    const tokenizer *tok;
    tokenizer_stream *stream;
} stream_ctx;

static void print_token(void *ctx, int32_t token) {
    stream_ctx *s = ctx;
    if (s->stream) {
        if (tokenizer_is_special(s->tok, token)) return;   // BOS/EOS are not text
        size_t len;
        const char *bytes = tokenizer_stream_push(s->stream, token, &len);
        fwrite(bytes, 1, len, stdout);
    } else {
        printf(" %d", token);
    }
    fflush(stdout);
}

static const char *stop_name(stop_reason r) {
    switch (r) {
    case STOP_EOS: return "eos";
    case STOP_LENGTH: return "length";
    case STOP_CONTEXT: return "context";
    case STOP_NONE: break;
    }
    return "none";
}

static json_object *ids_json(const int32_t *ids, int n) {
    json_object *a = json_object_new_array_ext(n);
    for (int i = 0; i < n; i++) json_object_array_add(a, json_object_new_int(ids[i]));
    return a;
}

// Logits go to an unnamed temporary file (out_file, runtime/common.h), linked into place only
// when generation succeeded: a failed or killed run leaves no half file.
typedef struct {
    out_file o;
    FILE *f;
} atomic_file;

static void atomic_open(atomic_file *a, const char *path) {
    llamoe_err err;
    if (out_file_open(&a->o, path, &err) != 0) die("--dump-logits %s", err.msg);
    a->f = a->o.f;
}

static void atomic_commit(atomic_file *a) {
    llamoe_err err;
    if (out_file_commit(&a->o, &err) != 0) die("--dump-logits %s", err.msg);
}

// Touches every page of the checkpoint so that the load happens here, with progress on a
// terminal, instead of as page faults in the first step.
static void prefault_weights(const st_set *st) {
    size_t total = 0, done = 0, page = (size_t)sysconf(_SC_PAGESIZE);
    for (int f = 0; f < st->n_files; f++) total += st->files[f].size;
    double t0 = now_seconds(), last = 0;
    volatile uint8_t sink = 0;
    for (int f = 0; f < st->n_files; f++) {
        const uint8_t *p = st->files[f].map;
        size_t size = st->files[f].size;
        madvise((void *)p, size, MADV_WILLNEED);
        for (size_t off = 0; off < size; off += page) {
            sink ^= p[off];
            done += page < size - off ? page : size - off;
            double t = now_seconds();
            if (t - last > 0.2) {
                last = t;
                fprintf(stderr, "\rloading %.1f / %.1f GB (%.0f MB/s)", done / 1e9, total / 1e9,
                        done / 1e6 / (t - t0 + 1e-9));
            }
        }
    }
    fprintf(stderr, "\rloaded %.1f GB in %.1f s%30s\n", total / 1e9, now_seconds() - t0, "");
    (void)sink;
}

// ---------------------------------------------------------------------------- main
int main(int argc, char **argv) {
    comm *c = comm_mpi_init(&argc, &argv);
    options o;
    parse_args(argc, argv, &o);
    llamoe_err err;
    // Test hook: LLAMOE_FAULT=RANK:open|oom|exit|kill|stall[:STEP] (runtime/fault.h).
    fault_init(c->rank, c->size);
    char fault_dir[4200];
    if (fault_at_load()) {
        snprintf(fault_dir, sizeof fault_dir, "%s (LLAMOE_FAULT open)", o.model_dir);
        o.model_dir = fault_dir;
    }
    double t_start = now_seconds();

    rank_binding binding;
    const backend *be = choose_backend(&o, &c, &binding);

    // Tokenizer (optional: --ids works without one).
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", o.model_dir);
    tokenizer *tok = NULL;
    if (file_exists(path) && !(tok = tokenizer_load(path, &err))) die("%s", err.msg);

    // Model. Without --moe a dense checkpoint runs upcycle:8:2: real sparse routing with
    // the dense model's output, so the main job exercises the experts.
    moe_mode mode, *mode_arg = NULL;
    if (o.moe) {
        if (moe_mode_parse(o.moe, &mode, &err) != 0) die("%s", err.msg);
        mode_arg = &mode;
    } else {
        llama_config probe;
        if (config_load(&probe, o.model_dir, &err) != 0) die("%s", err.msg);
        if (!probe.is_mixtral) {
            moe_mode_parse("upcycle:8:2", &mode, &err);
            mode_arg = &mode;
        }
    }
    if (mode_arg) { mode.drop = o.drop; mode.seed = o.seed; }
    model m;
    int memory_mode = o.expert_budget != NULL;
    model_options mo = {.experts_on_host = memory_mode};
    if (model_load_opts(&m, o.model_dir, mode_arg, be, c->rank, c->size, &mo, &err) != 0) die("%s", err.msg);
    if (memory_mode && m.moe.kind == MOE_DENSE) die("--expert-budget %s: the model runs dense (--moe dense): it has no experts to offload", o.expert_budget);
    // A chat turn ends with <|eot_id|>, which base configs do not list as an eos id.
    if (o.chat && tok) {
        int eot = tokenizer_token_id(tok, "<|eot_id|>");
        if (eot >= 0 && !config_is_eos(&m.cfg, eot) && m.cfg.n_eos < CONFIG_MAX_EOS) m.cfg.eos_ids[m.cfg.n_eos++] = eot;
    }
    // On a terminal, a large checkpoint is read here with progress rather than as page faults
    // in the first step (rank 0 only: other ranks touch only what they use). Not in memory
    // mode: touching every page would make the whole checkpoint resident.
    if (c->rank == 0 && !o.json && !memory_mode && isatty(2) && st_total_bytes(&m.st) > (64u << 20))
        prefault_weights(&m.st);
    double t_loaded = now_seconds();

    // Prompts: all ranks read them; sequence i lives on rank i % P.
    prompt *prompts = NULL;
    int n_prompts = 1;
    if (o.prompts_file) n_prompts = read_prompts(o.prompts_file, tok, o.chat, &prompts);
    else {
        prompts = xmalloc(sizeof(prompt));
        if (o.prompt_ids) {
            if (parse_id_list(o.prompt_ids, &prompts[0]) != 0) die("--ids %s: expected integers like 1,450,1234", o.prompt_ids);
        } else {
            encode_text(tok, o.prompt_text ? o.prompt_text : DEFAULT_PROMPT, o.chat, &prompts[0], "-p");
        }
    }
    // The KV cache holds what the longest prompt needs, not max_position_embeddings (131072
    // positions of the 8B would be 16 GB per sequence).
    int ctx = o.ctx;
    if (!ctx) {
        int64_t need = 0;
        for (int i = 0; i < n_prompts; i++) need = prompts[i].n > need ? prompts[i].n : need;
        need += o.n_new;
        ctx = need < m.cfg.max_position_embeddings ? (int)need : m.cfg.max_position_embeddings;
    }
    for (int i = 0; i < n_prompts; i++) {
        if (sequence_check(&m, ctx, prompts[i].ids, prompts[i].n, &err) != 0) {
            if (n_prompts > 1) die("prompt %d: %s", i + 1, err.msg);
            die("%s", err.msg);
        }
    }

    gen_options go = {.max_new = o.n_new, .temperature = o.temp, .top_p = o.top_p, .seed = o.seed,
                      .step_tokens = o.step_tokens};
    int n_local = 0;
    for (int i = c->rank; i < n_prompts; i += c->size) n_local++;
    sequence *seqs = xcalloc((size_t)(n_local ? n_local : 1), sizeof(sequence));
    for (int i = c->rank, j = 0; i < n_prompts; i += c->size, j++)
        sequence_init(&seqs[j], i, prompts[i].ids, prompts[i].n, j, &go);

    run_state rs;
    run_state_init(&rs, &m, o.step_tokens, n_local ? n_local : 1, ctx);
    expert_cache *cache = NULL;
    if (memory_mode) {
        expert_cache_options eo = {.budget_bytes = (size_t)(o.expert_budget_mib * 1048576.0), .prefetch = o.prefetch,
                                   .evict = o.evict, .release_pages = o.expert_madvise};
        if (!(cache = expert_cache_new(&m, &eo, &err))) die("--expert-budget %s MiB: %s", o.expert_budget, err.msg);
        rs.moe.cache = cache;
    }
    if (o.verbose) {
        char mb[64];
        fprintf(stderr, "llamoe: %s; backend %s, transport %s; moe %s; experts %d..%d of %d; expert weights %.1f MiB, other weights %.1f MiB, activations+KV %.1f MiB; %d sequence(s)\n",
                binding.desc, be->name, c->name, moe_mode_str(&m.moe, mb, sizeof mb), m.first_expert,
                m.first_expert + m.n_local_experts - 1, m.moe.n_experts, m.expert_bytes / 1048576.0,
                m.weight_bytes / 1048576.0, rs.bytes / 1048576.0, n_local);
        if (cache)
            fprintf(stderr, "llamoe: rank %d/%d: memory mode: expert cache of %d slots x %.2f MiB (budget %s MiB), evict %s, prefetch %s\n",
                    c->rank, c->size, expert_cache_slots(cache), expert_cache_slot_bytes(&m) / 1048576.0, o.expert_budget,
                    expert_evict_name(expert_cache_policy(cache)), expert_prefetch_name(o.prefetch));
    }

    // Warm-up (benchmarks): the same prompts through the same loop, then every timer and
    // counter back to zero, so that page faults and buffer growth stay out of the figures.
    if (o.warmup > 0) {
        gen_options gw = go;
        gw.max_new = o.warmup;
        sequence *ws = xcalloc((size_t)(n_local ? n_local : 1), sizeof(sequence));
        for (int i = c->rank, j = 0; i < n_prompts; i += c->size, j++)
            sequence_init(&ws[j], i, prompts[i].ids, prompts[i].n, j, &gw);
        gen_stats gws;
        if (generate(&m, &rs, c, ws, n_local, &gw, &gws, &err) != 0) die("warm-up: %s", err.msg);
        for (int j = 0; j < n_local; j++) sequence_free(&ws[j]);
        free(ws);
        memset(&rs.time, 0, sizeof rs.time);
        moe_state *ms = &rs.moe;
        if (m.moe.kind != MOE_DENSE) {
            memset(ms->tokens_per_expert, 0, (size_t)m.cfg.n_layers * m.moe.n_experts * sizeof(int64_t));
            ms->bytes_sent = ms->bytes_recv = ms->dispatch_sent = 0;
            ms->rows_sent = ms->rows_recv = 0;
            ms->t_router = ms->t_dispatch = ms->t_experts = ms->t_combine = 0;
        }
    }

    atomic_file logits_file = {0};
    if (o.dump_logits && c->rank == 0) {
        atomic_open(&logits_file, o.dump_logits);
        go.dump_logits = logits_file.f;
    }
    stream_ctx sc = {tok, tok ? tokenizer_stream_new(tok) : NULL};
    int streaming = !o.json && n_prompts == 1 && c->rank == 0;
    if (streaming) {
        go.on_token = print_token;
        go.on_token_ctx = &sc;
        if (tok) {
            // The prompt goes through the stream too, so decoders that look at the start of
            // the text (SentencePiece's leading-space strip) see the whole text.
            for (int i = 0; i < prompts[0].n; i++) print_token(&sc, prompts[0].ids[i]);
        } else {
            printf("prompt ids:");
            for (int i = 0; i < prompts[0].n; i++) printf(" %d", prompts[0].ids[i]);
            printf("\ngenerated ids:");
        }
        fflush(stdout);
    }

    gen_stats gs;
    if (generate(&m, &rs, c, seqs, n_local, &go, &gs, &err) != 0) die("%s", err.msg);
    if (streaming) {
        size_t len = 0;
        const char *rest = sc.stream ? tokenizer_stream_flush(sc.stream, &len) : "";
        fwrite(rest, 1, len, stdout);
        printf("\n");
        fflush(stdout);
    }
    if (logits_file.f) atomic_commit(&logits_file);

    // Gather every sequence's ids on rank 0 (input order): [index, stop, n, ids...] records.
    int64_t mine = 0;
    for (int j = 0; j < n_local; j++) mine += 3 + seqs[j].n_out;
    int32_t *send = xmalloc((size_t)(mine ? mine : 1) * sizeof(int32_t)), *w = send;
    for (int j = 0; j < n_local; j++) {
        *w++ = seqs[j].index; *w++ = (int32_t)seqs[j].stop; *w++ = seqs[j].n_out;
        memcpy(w, seqs[j].out, (size_t)seqs[j].n_out * sizeof(int32_t));
        w += seqs[j].n_out;
    }
    int P = c->size;
    int64_t *send_counts = xcalloc((size_t)P, sizeof(int64_t)), *recv_counts = xcalloc((size_t)P, sizeof(int64_t));
    send_counts[0] = mine;
    if (c->exchange_counts(c, send_counts, recv_counts, 1) != 0) die("gathering results failed");
    size_t *sb = xcalloc((size_t)P, sizeof(size_t)), *sd = xcalloc((size_t)P, sizeof(size_t)),
           *rb = xcalloc((size_t)P, sizeof(size_t)), *rd = xcalloc((size_t)P, sizeof(size_t));
    size_t total = 0;
    sb[0] = (size_t)mine * sizeof(int32_t);
    for (int p = 0; p < P; p++) { rb[p] = (size_t)recv_counts[p] * sizeof(int32_t); rd[p] = total; total += rb[p]; }
    int32_t *all = xmalloc(total ? total : 1);
    if (c->alltoallv(c, send, sb, sd, all, rb, rd) != 0) die("gathering results failed");

    // Statistics over all ranks.
    moe_state *ms = &rs.moe;
    int E = m.moe.n_experts, L = m.cfg.n_layers;
    int64_t traffic[2] = {(int64_t)ms->bytes_sent, (int64_t)ms->bytes_recv};
    if (m.moe.kind != MOE_DENSE) {
        if (c->allreduce_sum_i64(c, ms->tokens_per_expert, L * E) != 0 || c->allreduce_sum_i64(c, traffic, 2) != 0)
            die("gathering statistics failed");
    }
    double load_s = t_loaded - t_start;
    // Peak resident memory of the largest rank (mmapped weight pages count once touched).
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double peak_rss_mb[1] = {ru.ru_maxrss / 1024.0};
    if (c->allreduce_max_f64(c, peak_rss_mb, 1) != 0) die("gathering statistics failed");

    // Per-rank breakdown of the step time and traffic: the largest rank sets the pace.
    enum { B_ATTN, B_ROUTER, B_DISPATCH, B_EXPERTS, B_COMBINE, B_DENSE_FFN, B_LM_HEAD, B_OTHER, B_TOTAL,
           B_SENT, B_RECV, B_DISPATCH_SENT, B_ROWS_SENT, B_ROWS_RECV, B_EXPERT_MB, B_N };
    static const char *const breakdown_names[B_N] = {"attention_s", "router_s", "dispatch_s", "experts_s",
        "combine_s", "dense_ffn_s", "lm_head_s", "other_s", "forward_s", "bytes_sent", "bytes_recv",
        "dispatch_bytes_sent", "rows_sent", "rows_recv", "expert_weights_mb"};
    double moe_s = ms->t_router + ms->t_dispatch + ms->t_experts + ms->t_combine;
    double mine_b[B_N] = {rs.time.attention, ms->t_router, ms->t_dispatch, ms->t_experts, ms->t_combine,
                          m.moe.kind == MOE_DENSE ? rs.time.ffn : 0, rs.time.lm_head,
                          rs.time.total - rs.time.attention - rs.time.ffn - rs.time.lm_head + (rs.time.ffn - moe_s) * (m.moe.kind != MOE_DENSE),
                          rs.time.total, (double)ms->bytes_sent, (double)ms->bytes_recv, (double)ms->dispatch_sent,
                          (double)ms->rows_sent, (double)ms->rows_recv, m.expert_bytes / 1048576.0};
    double max_b[B_N], min_b[B_N], sum_b[B_N];
    memcpy(max_b, mine_b, sizeof max_b);
    for (int i = 0; i < B_N; i++) min_b[i] = -mine_b[i];   // min = -max(-x)
    if (c->allreduce_max_f64(c, max_b, B_N) != 0 || c->allreduce_max_f64(c, min_b, B_N) != 0)
        die("gathering statistics failed");
    for (int i = 0; i < B_N; i++) min_b[i] = -min_b[i];
    int64_t sum_i[B_N];
    for (int i = 0; i < B_N; i++) sum_i[i] = (int64_t)llround(mine_b[i] * 1e9);   // ns / bytes*1e9: exact enough
    if (c->allreduce_sum_i64(c, sum_i, B_N) != 0) die("gathering statistics failed");
    for (int i = 0; i < B_N; i++) sum_b[i] = sum_i[i] / 1e9;

    // Memory mode counters, summed over ranks (copy times in ns).
    enum { C_LOOKUPS, C_HITS, C_PHITS, C_MISSES, C_PREFETCHES, C_WASTED, C_EVICTIONS, C_GROUPS, C_MOVED,
           C_PREFETCHED, C_RELEASED, C_T_DEMAND, C_T_PREFETCH, C_SLOTS, C_N };
    int64_t cs[C_N] = {0};
    if (cache) {
        expert_cache_stats es;
        expert_cache_get_stats(cache, &es);
        int64_t v[C_N] = {es.lookups, es.hits, es.prefetch_hits, es.misses, es.prefetches, es.prefetch_wasted,
                          es.evictions, es.groups, (int64_t)es.bytes_moved, (int64_t)es.bytes_prefetched,
                          (int64_t)es.bytes_released, llround(es.t_demand * 1e9), llround(es.t_prefetch * 1e9),
                          expert_cache_slots(cache)};
        memcpy(cs, v, sizeof cs);
        if (c->allreduce_sum_i64(c, cs, C_N) != 0) die("gathering statistics failed");
    }
    double hit_rate = cs[C_LOOKUPS] ? (double)cs[C_HITS] / cs[C_LOOKUPS] : 0;
    double hit_rate_pf = cs[C_LOOKUPS] ? (double)(cs[C_HITS] + cs[C_PHITS]) / cs[C_LOOKUPS] : 0;

    if (c->rank == 0) {
        int32_t **out_ids = xcalloc((size_t)n_prompts, sizeof(int32_t *));
        int *out_n = xcalloc((size_t)n_prompts, sizeof(int)), *out_stop = xcalloc((size_t)n_prompts, sizeof(int));
        for (size_t off = 0; off < total / sizeof(int32_t);) {
            int idx = all[off], stop = all[off + 1], n = all[off + 2];
            out_ids[idx] = all + off + 3;
            out_n[idx] = n;
            out_stop[idx] = stop;
            off += 3 + (size_t)n;
        }
        char mb[64];
        if (o.json) {
            json_object *root = json_object_new_object();
            json_object_object_add(root, "model", json_object_new_string(o.model_dir));
            json_object_object_add(root, "moe", json_object_new_string(moe_mode_str(&m.moe, mb, sizeof mb)));
            json_object_object_add(root, "ranks", json_object_new_int(P));
            json_object_object_add(root, "backend", json_object_new_string(be->name));
            json_object_object_add(root, "transport", json_object_new_string(c->name));
#ifdef LLAMOE_CUDA
            if (be->device_memory) {
                json_object_object_add(root, "device", json_object_new_string(cuda_device_description()));
                json_object_object_add(root, "device_peak_bandwidth_gbs", json_object_new_double(cuda_device_peak_bandwidth() / 1e9));
            }
#endif
            json_object *results = json_object_new_array();
            for (int i = 0; i < n_prompts; i++) {
                json_object *r = json_object_new_object();
                json_object_object_add(r, "prompt_ids", ids_json(prompts[i].ids, prompts[i].n));
                json_object_object_add(r, "generated_ids", ids_json(out_ids[i], out_n[i]));
                json_object_object_add(r, "stop", json_object_new_string(stop_name((stop_reason)out_stop[i])));
                if (tok) {
                    char *text;
                    size_t len;
                    if (tokenizer_decode(tok, out_ids[i], out_n[i], &text, &len, &err) == 0) {
                        json_object_object_add(r, "text", json_object_new_string_len(text, (int)len));
                        free(text);
                    }
                }
                if (n_prompts == 1) {   // a single prompt's fields sit at the top level
                    json_object_object_foreach(r, key, val) json_object_object_add(root, key, json_object_get(val));
                    json_object_put(r);
                } else {
                    json_object_array_add(results, r);
                }
            }
            if (n_prompts > 1) json_object_object_add(root, "results", results);
            else json_object_put(results);
            json_object *t = json_object_new_object();
            json_object_object_add(t, "load_s", json_object_new_double(load_s));
            json_object_object_add(t, "prefill_s", json_object_new_double(gs.prefill_s));
            json_object_object_add(t, "decode_s", json_object_new_double(gs.decode_s));
            json_object_object_add(t, "prefill_tokens", json_object_new_int64(gs.prefill_tokens));
            json_object_object_add(t, "decode_tokens", json_object_new_int64(gs.decode_tokens));
            json_object_object_add(t, "steps", json_object_new_int(gs.steps));
            json_object_object_add(t, "prefill_tok_s", json_object_new_double(gs.prefill_s > 0 ? gs.prefill_tokens / gs.prefill_s : 0));
            json_object_object_add(t, "decode_tok_s", json_object_new_double(gs.decode_s > 0 ? gs.decode_tokens / gs.decode_s : 0));
            json_object_object_add(t, "peak_rss_mb_max_rank", json_object_new_double(peak_rss_mb[0]));
            json_object_object_add(root, "timings", t);
            if (m.moe.kind != MOE_DENSE) {
                json_object_object_add(root, "bytes_sent", json_object_new_int64(traffic[0]));
                json_object_object_add(root, "bytes_recv", json_object_new_int64(traffic[1]));
            }
            json_object *bmax = json_object_new_object(), *bmean = json_object_new_object(), *bmin = json_object_new_object();
            for (int i = 0; i < B_N; i++) {
                json_object_object_add(bmax, breakdown_names[i], json_object_new_double(max_b[i]));
                json_object_object_add(bmin, breakdown_names[i], json_object_new_double(min_b[i]));
                json_object_object_add(bmean, breakdown_names[i], json_object_new_double(sum_b[i] / P));
            }
            json_object_object_add(root, "per_rank_max", bmax);
            json_object_object_add(root, "per_rank_mean", bmean);
            json_object_object_add(root, "per_rank_min", bmin);
            if (cache) {
                json_object *ej = json_object_new_object();
                static const char *const names[C_N] = {"lookups", "hits", "prefetch_hits", "misses", "prefetches",
                    "prefetch_wasted", "evictions", "groups", "bytes_moved", "bytes_prefetched", "bytes_released",
                    "demand_copy_ns", "prefetch_copy_ns", "slots"};
                json_object_object_add(ej, "budget_mib_per_rank", json_object_new_double(o.expert_budget_mib));
                json_object_object_add(ej, "slot_mib", json_object_new_double(expert_cache_slot_bytes(&m) / 1048576.0));
                json_object_object_add(ej, "evict", json_object_new_string(expert_evict_name(expert_cache_policy(cache))));
                json_object_object_add(ej, "prefetch", json_object_new_string(expert_prefetch_name(o.prefetch)));
                for (int i = 0; i < C_N; i++) json_object_object_add(ej, names[i], json_object_new_int64(cs[i]));
                json_object_object_add(ej, "hit_rate", json_object_new_double(hit_rate));
                json_object_object_add(ej, "hit_rate_with_prefetch", json_object_new_double(hit_rate_pf));
                json_object_object_add(root, "expert_cache", ej);
            }
            if (o.stats && m.moe.kind != MOE_DENSE) {
                json_object *st = json_object_new_array();
                for (int l = 0; l < L; l++) {
                    json_object *a = json_object_new_array();
                    for (int e = 0; e < E; e++) json_object_array_add(a, json_object_new_int64(ms->tokens_per_expert[(size_t)l * E + e]));
                    json_object_array_add(st, a);
                }
                json_object_object_add(root, "tokens_per_expert", st);
            }
            printf("%s\n", json_object_to_json_string_ext(root, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
            json_object_put(root);
        } else {
            if (!streaming) {
                for (int i = 0; i < n_prompts; i++) {
                    char *text;
                    size_t len;
                    printf("[%d] ", i + 1);
                    if (tok && tokenizer_decode(tok, out_ids[i], out_n[i], &text, &len, &err) == 0) {
                        fwrite(text, 1, len, stdout);
                        free(text);
                    } else {
                        for (int j = 0; j < out_n[i]; j++) printf("%s%d", j ? " " : "", out_ids[i][j]);
                    }
                    printf("\n");
                }
            }
            fprintf(stderr, "llamoe: %s, %d rank(s), %d prompt(s): load %.2f s; prefill %lld tok %.1f tok/s; decode %lld tok %.1f tok/s; peak RSS %.0f MiB\n",
                    moe_mode_str(&m.moe, mb, sizeof mb), P, n_prompts, load_s, (long long)gs.prefill_tokens,
                    gs.prefill_s > 0 ? gs.prefill_tokens / gs.prefill_s : 0.0, (long long)gs.decode_tokens,
                    gs.decode_s > 0 ? gs.decode_tokens / gs.decode_s : 0.0, peak_rss_mb[0]);
            if (m.moe.kind != MOE_DENSE) {
                // Routing and traffic in one line: how uneven the experts' loads were and what
                // the dispatch and combine moved between ranks.
                double worst = 0, mean_imb = 0;
                for (int l = 0; l < L; l++) {
                    const int64_t *t = ms->tokens_per_expert + (size_t)l * E;
                    int64_t sum = 0, max = 0;
                    for (int e = 0; e < E; e++) { sum += t[e]; if (t[e] > max) max = t[e]; }
                    double imb = sum ? (double)max * E / (double)sum : 0.0;
                    worst = imb > worst ? imb : worst;
                    mean_imb += imb / L;
                }
                fprintf(stderr, "llamoe: routing %d experts top-%d: load imbalance (max/mean) %.2f mean over layers, %.2f worst; traffic %.1f KiB sent, %.1f KiB received between ranks\n",
                        E, m.moe.top_k, mean_imb, worst, traffic[0] / 1024.0, traffic[1] / 1024.0);
            }
            if (cache)
                fprintf(stderr, "llamoe: memory mode: %s MiB per rank (%lld slots over all ranks); %lld expert uses: hits %.1f%%, with prefetch (%s) %.1f%%; %.1f MiB copied, %lld evictions\n",
                        o.expert_budget, (long long)cs[C_SLOTS], (long long)cs[C_LOOKUPS], 100 * hit_rate,
                        expert_prefetch_name(o.prefetch), 100 * hit_rate_pf, cs[C_MOVED] / 1048576.0, (long long)cs[C_EVICTIONS]);
        }
        if (o.stats && m.moe.kind != MOE_DENSE) {
            FILE *f = o.json ? stderr : stdout;
            fprintf(f, "tokens per expert (layer: e0 e1 ... | max/mean):\n");
            for (int l = 0; l < L; l++) {
                const int64_t *t = ms->tokens_per_expert + (size_t)l * E;
                int64_t sum = 0, max = 0;
                fprintf(f, "  %3d:", l);
                for (int e = 0; e < E; e++) { fprintf(f, " %lld", (long long)t[e]); sum += t[e]; if (t[e] > max) max = t[e]; }
                fprintf(f, " | %.2f\n", sum ? (double)max * E / (double)sum : 0.0);
            }
        }
        free(out_ids); free(out_n); free(out_stop);
    }

    free(all); free(send); free(send_counts); free(recv_counts); free(sb); free(sd); free(rb); free(rd);
    for (int j = 0; j < n_local; j++) sequence_free(&seqs[j]);
    free(seqs);
    for (int i = 0; i < n_prompts; i++) free(prompts[i].ids);
    free(prompts);
    if (sc.stream) tokenizer_stream_free(sc.stream);
    run_state_free(&rs, &m);
    expert_cache_free(cache);
    model_free(&m);
    tokenizer_free(tok);
    c->free(c);
    return 0;
}
