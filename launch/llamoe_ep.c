// llamoe-ep: generate with a (MoE-ified) Llama, experts spread over the MPI ranks.
//   mpirun -np 3 llamoe-ep [-m DIR] [-p TEXT | --ids 1,2,3 | --prompts FILE] [options]
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "parallel/comm.h"
#include "parallel/topology.h"
#include "runtime/ep_cli.h"
#include "runtime/fault.h"
#include "runtime/generate.h"
#include "runtime/placement_io.h"
#include "runtime/report.h"
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
        "                    needs --backend cuda; several ranks per GPU need NCCL 2.30 or later)\n"
        "  --moe-exchange X  auto | counts | fixed: the MoE exchange's plan. counts sizes every\n"
        "                    message from a first exchange of counts; fixed sends messages of a\n"
        "                    fixed capacity with the counts inside (no host synchronisation);\n"
        "                    auto (default) uses fixed for decode steps on a GPU. Same logits.\n"
        "  --moe-capacity N  tokens per rank the fixed exchange holds (default: the most\n"
        "                    sequences any rank decodes)\n"
        "  --expert-gemm G   CUDA, experts with more than 8 rows: grouped (default) | loop | gemv\n"
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
        "  --placement P     contiguous (default) | balanced | FILE: which rank holds which experts.\n"
        "                    balanced replicates the heaviest experts and spreads the copies so\n"
        "                    that every rank gets the same load; FILE: a placement table (the\n"
        "                    \"placement\" of a --json report). Same logits.\n"
        "  --redundant-experts R  balanced: R copies per layer besides the experts (default 0)\n"
        "  --load-profile F  balanced: the load to balance, a file --write-load-profile wrote\n"
        "                    (default: the same for every expert)\n"
        "  --write-load-profile F  write tokens per expert per layer of this run to F (JSON)\n"
        "  --rebalance N     every N steps, a new placement from the load of the last N steps;\n"
        "                    experts that change rank move through the communicator. Same logits.\n"
        "  --rebalance-check compare every expert that arrives with what this rank builds\n"
        "  --verbose         each rank's binding, experts and memory at start; the placement\n"
        "  -h, --help        this text\n");
}

// The parsing itself is in runtime/ep_cli.c (tested and fuzzed without exiting).
static void parse_args(int argc, char **argv, ep_options *o) {
    llamoe_err err;
    int rc = ep_parse_args(argc, argv, o, &err);
    if (rc == 1) { usage(stdout); exit(0); }
    if (rc != 0) die("%s", err.msg);
}

// ---------------------------------------------------------------------------- backend
// --backend and --transport: the CPU backend unless CUDA is built in and a GPU is present (or
// asked for). A CUDA rank takes GPU local_rank % n_gpus and binds to the cores near it. The
// MoE exchange then moves device memory: over NCCL (--transport nccl), or over MPI, directly
// when it is CUDA-aware, else staged through pinned host memory. *xc is the communicator of
// the exchange (c itself on the CPU); c stays the host-memory one for everything else.
static backend *choose_backend(const ep_options *o, comm *c, comm **xc, rank_binding *binding) {
    int want_cuda = o->backend_name ? !strcmp(o->backend_name, "cuda") : -1;   // -1: if present
    int nccl = o->transport && !strcmp(o->transport, "nccl");
    backend_options bo = {.threads = o->threads, .expert_gemm = o->expert_gemm};
    *xc = c;
#ifdef LLAMOE_CUDA
    int n_gpus = cuda_device_count();
    if (want_cuda == 1 && n_gpus == 0) die("--backend cuda: no CUDA device is visible");
    if (want_cuda != 0 && n_gpus > 0) {
        if (o->expert_budget)
            die("--expert-budget %s: memory mode is not available on the CUDA backend; run it with --backend cpu", o->expert_budget);
        bo.device = topology_gpu_for_local_rank(c->local_rank, n_gpus);
        char (*ids)[32] = xcalloc((size_t)n_gpus, sizeof *ids);
        const char **id_ptr = xcalloc((size_t)n_gpus, sizeof *id_ptr);
        for (int i = 0; i < n_gpus; i++) {
            if (cuda_device_pci_bus_id(i, ids[i], (int)sizeof ids[i]) != 0) snprintf(ids[i], sizeof ids[i], "unknown");
            id_ptr[i] = ids[i];
        }
        topology_bind_gpu(c->rank, c->size, c->local_rank, c->local_size, id_ptr, n_gpus, o->bind, binding);
        free(id_ptr);
        free(ids);
        if (!bo.threads) bo.threads = binding->n_cores;
        llamoe_err err;
        backend *be = backend_cuda_new(&bo, &err);
        if (!be) die("--backend cuda: %s", err.msg);
        void *stream = backend_cuda_stream(be);
        *xc = nccl ? comm_nccl_new(c, stream) : comm_device_new(c, stream);
        return be;
    }
#else
    if (want_cuda == 1) die("--backend cuda: this build has no CUDA backend (configure with -DLLAMOE_CUDA=ON)");
#endif
    if (nccl) die("--transport nccl needs the CUDA backend");
    if (o->expert_gemm) die("--expert-gemm %s: only the CUDA backend has grouped expert GEMMs", o->expert_gemm);
    topology_bind_cpu(c->rank, c->size, c->local_rank, c->local_size, o->bind, binding);
    if (!bo.threads) bo.threads = binding->n_cores;
    return backend_cpu_new(&bo);
}

// ---------------------------------------------------------------------------- model
// Without --moe a dense checkpoint runs upcycle:8:2: real sparse routing with the dense
// model's output, so the main job exercises the experts. A Mixtral checkpoint runs its own.
static void load_model(model *m, const ep_options *o, const tokenizer *tok, backend *be, const comm *c) {
    llamoe_err err;
    moe_mode mode, *mode_arg = NULL;
    llama_config probe;
    if (o->moe) {
        if (moe_mode_parse(o->moe, &mode, &err) != 0) die("%s", err.msg);
        mode_arg = &mode;
    } else {
        if (config_load(&probe, o->model_dir, &err) != 0) die("%s", err.msg);
        if (!probe.is_mixtral) {
            moe_mode_parse("upcycle:8:2", &mode, &err);
            mode_arg = &mode;
        }
    }
    if (mode_arg) { mode.drop = o->drop; mode.seed = o->seed; }
    model_options mo = {.experts_on_host = o->expert_budget != NULL};
    // The placement, from its files, before anything is loaded (parallel/placement.h).
    placement_table table;
    int placed = o->placement || o->rebalance;
    if (placed) {
        if (config_load(&probe, o->model_dir, &err) != 0) die("%s", err.msg);
        int E = mode_arg ? mode.n_experts : probe.is_mixtral ? probe.n_experts : 0;
        if (E == 0) die("--placement / --rebalance: the model runs dense (--moe dense): it has no experts to place");
        placement_options po = {.policy = o->placement, .redundant = o->redundant_experts, .load_profile = o->load_profile};
        if (placement_choose(&table, &po, &probe, E, c->size, &err) != 0) die("%s", err.msg);
        mo.placement = &table;
    }
    if (model_load_opts(m, o->model_dir, mode_arg, be, c->rank, c->size, &mo, &err) != 0) die("%s", err.msg);
    if (placed) placement_table_free(&table);
    if (o->expert_budget && m->moe.kind == MOE_DENSE)
        die("--expert-budget %s: the model runs dense (--moe dense): it has no experts to offload", o->expert_budget);
    if (o->write_load_profile && m->moe.kind == MOE_DENSE)
        die("--write-load-profile %s: the model runs dense (--moe dense): it has no experts to count", o->write_load_profile);
    // A chat turn ends with <|eot_id|>, which base configs do not list as an eos id.
    if (o->chat && tok) {
        int eot = tokenizer_token_id(tok, "<|eot_id|>");
        if (eot >= 0 && !config_is_eos(&m->cfg, eot) && m->cfg.n_eos < CONFIG_MAX_EOS) m->cfg.eos_ids[m->cfg.n_eos++] = eot;
    }
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

// ---------------------------------------------------------------------------- prompts
// All ranks read every prompt; sequence i lives on rank i % P.
static int read_prompts(const ep_options *o, const tokenizer *tok, prompt **out) {
    llamoe_err err;
    if (o->prompts_file) {
        size_t len;
        char *text = read_text_file(o->prompts_file, EP_MAX_PROMPTS_BYTES, &len, &err);
        if (!text) die("--prompts %s", err.msg);
        int n;
        int rc = prompts_parse(o->prompts_file, text, len, tok, o->chat, out, &n, &err);
        free(text);
        if (rc != 0) die("%s", err.msg);
        return n;
    }
    *out = xmalloc(sizeof(prompt));
    if (o->prompt_ids) {
        if (parse_id_list(o->prompt_ids, &(*out)[0]) != 0) die("--ids %s: expected integers like 1,450,1234", o->prompt_ids);
    } else if (prompt_encode(tok, o->prompt_text ? o->prompt_text : DEFAULT_PROMPT, o->chat, &(*out)[0], "-p", &err) != 0) {
        die("%s", err.msg);
    }
    return 1;
}

// The KV cache holds what the longest prompt needs, not max_position_embeddings (131072
// positions of the 8B would be 16 GB per sequence). Every prompt is checked against it.
static int context_length(const ep_options *o, const model *m, const prompt *prompts, int n_prompts) {
    int ctx = o->ctx;
    if (!ctx) {
        int64_t need = 0;
        for (int i = 0; i < n_prompts; i++) need = prompts[i].n > need ? prompts[i].n : need;
        need += o->n_new;
        ctx = need < m->cfg.max_position_embeddings ? (int)need : m->cfg.max_position_embeddings;
    }
    llamoe_err err;
    for (int i = 0; i < n_prompts; i++)
        if (sequence_check(m, ctx, prompts[i].ids, prompts[i].n, &err) != 0) {
            if (n_prompts > 1) die("prompt %d: %s", i + 1, err.msg);
            die("%s", err.msg);
        }
    return ctx;
}

// This rank's sequences: prompts rank, rank + P, ... in KV slots 0, 1, ...
static sequence *start_sequences(const prompt *prompts, int n_prompts, const comm *c, const gen_options *go, int *n_local) {
    int n = 0;
    for (int i = c->rank; i < n_prompts; i += c->size) n++;
    sequence *seqs = xcalloc((size_t)(n ? n : 1), sizeof(sequence));
    for (int i = c->rank, j = 0; i < n_prompts; i += c->size, j++) sequence_init(&seqs[j], i, prompts[i].ids, prompts[i].n, j, go);
    *n_local = n;
    return seqs;
}

static void free_sequences(sequence *seqs, int n) {
    for (int j = 0; j < n; j++) sequence_free(&seqs[j]);
    free(seqs);
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

// The prompt goes through the stream too, so decoders that look at the start of the text
// (SentencePiece's leading-space strip) see the whole text.
static void stream_prompt(stream_ctx *sc, const prompt *p) {
    if (sc->stream) {
        for (int i = 0; i < p->n; i++) print_token(sc, p->ids[i]);
    } else {
        printf("prompt ids:");
        for (int i = 0; i < p->n; i++) printf(" %d", p->ids[i]);
        printf("\ngenerated ids:");
    }
    fflush(stdout);
}

static void stream_end(stream_ctx *sc) {
    size_t len = 0;
    const char *rest = sc->stream ? tokenizer_stream_flush(sc->stream, &len) : "";
    fwrite(rest, 1, len, stdout);
    printf("\n");
    fflush(stdout);
}

static void print_verbose(const ep_options *o, const model *m, const backend *be, const comm *xc, const run_state *rs,
                          const rank_binding *binding, expert_cache *cache, int n_local) {
    char mb[64];
    fprintf(stderr, "llamoe: %s; backend %s, transport %s; moe %s; experts %d..%d of %d; expert weights %.1f MiB, other weights %.1f MiB, activations+KV %.1f MiB; %d sequence(s)\n",
            binding->desc, be->name, xc->name, moe_mode_str(&m->moe, mb, sizeof mb), m->first_expert,
            m->first_expert + m->n_local_experts - 1, m->placement.n_physical, m->expert_bytes / 1048576.0,
            m->weight_bytes / 1048576.0, rs->bytes / 1048576.0, n_local);
    if (cache)
        fprintf(stderr, "llamoe: rank %d/%d: memory mode: expert cache of %d slots x %.2f MiB (budget %s MiB), evict %s, prefetch %s\n",
                xc->rank, xc->size, expert_cache_slots(cache), expert_cache_slot_bytes(m) / 1048576.0, o->expert_budget,
                expert_evict_name(expert_cache_policy(cache)), expert_prefetch_name(o->prefetch));
    if (m->moe.kind != MOE_DENSE && xc->rank == 0) report_print_placement(&m->placement, o->load_profile, &m->cfg, stderr);
}

// Warm-up (benchmarks): the same prompts through the same loop, then every timer and
// counter back to zero, so that page faults and buffer growth stay out of the figures.
static void warm_up(const model *m, run_state *rs, comm *xc, const prompt *prompts, int n_prompts, const gen_options *go,
                    int new_tokens) {
    gen_options gw = *go;
    gw.max_new = new_tokens;
    int n_local;
    sequence *ws = start_sequences(prompts, n_prompts, xc, &gw, &n_local);
    gen_stats gs;
    llamoe_err err;
    if (generate(m, rs, xc, ws, n_local, &gw, &gs, &err) != 0) die("warm-up: %s", err.msg);
    free_sequences(ws, n_local);
    memset(&rs->time, 0, sizeof rs->time);
    if (m->moe.kind != MOE_DENSE) moe_stats_reset(&rs->moe);
}

// ---------------------------------------------------------------------------- main
int main(int argc, char **argv) {
    comm *c = comm_mpi_init(&argc, &argv);
    ep_options o;
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
    comm *xc;
    backend *be = choose_backend(&o, c, &xc, &binding);

    // Tokenizer (optional: --ids works without one), model, prompts.
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", o.model_dir);
    tokenizer *tok = NULL;
    if (file_exists(path) && !(tok = tokenizer_load(path, &err))) die("%s", err.msg);
    model m;
    load_model(&m, &o, tok, be, c);
    // On a terminal, a large checkpoint is read here with progress rather than as page faults
    // in the first step (rank 0 only: other ranks touch only what they use). Not in memory
    // mode: touching every page would make the whole checkpoint resident.
    if (c->rank == 0 && !o.json && !o.expert_budget && isatty(2) && st_total_bytes(&m.st) > (64u << 20))
        prefault_weights(&m.st);
    double t_loaded = now_seconds();
    prompt *prompts;
    int n_prompts = read_prompts(&o, tok, &prompts);
    int ctx = context_length(&o, &m, prompts, n_prompts);

    gen_options go = {.max_new = o.n_new, .temperature = o.temp, .top_p = o.top_p, .seed = o.seed,
                      .step_tokens = o.step_tokens};
    int n_local;
    sequence *seqs = start_sequences(prompts, n_prompts, c, &go, &n_local);
    moe_exchange_kind kind = !o.moe_exchange || !strcmp(o.moe_exchange, "auto") ? MOE_EXCHANGE_AUTO
                           : !strcmp(o.moe_exchange, "counts") ? MOE_EXCHANGE_COUNTS : MOE_EXCHANGE_FIXED;
    // The fixed exchange holds a decode step of the rank with the most sequences.
    int capacity = o.moe_capacity ? o.moe_capacity : (n_prompts + c->size - 1) / c->size;
    run_options ro = {.max_tokens = o.step_tokens, .n_slots = n_local ? n_local : 1, .ctx = ctx,
                      .moe_exchange = kind, .moe_capacity = capacity};
    run_state rs;
    run_state_init(&rs, &m, &ro);
    expert_cache *cache = NULL;
    if (o.expert_budget) {
        expert_cache_options eo = {.budget_bytes = (size_t)(o.expert_budget_mib * 1048576.0), .prefetch = o.prefetch,
                                   .evict = o.evict, .release_pages = o.expert_madvise, .any_expert = o.rebalance > 0};
        if (!(cache = expert_cache_new(&m, &eo, &err))) die("--expert-budget %s MiB: %s", o.expert_budget, err.msg);
        rs.moe.cache = cache;
    }
    if (m.moe.kind != MOE_DENSE) {
        rs.moe.rebalance_every = o.rebalance;
        rs.moe.rebalance_check = o.rebalance_check;
    }
    if (o.verbose) print_verbose(&o, &m, be, xc, &rs, &binding, cache, n_local);
    if (o.warmup > 0) warm_up(&m, &rs, xc, prompts, n_prompts, &go, o.warmup);

    // Generate: rank 0 streams the text of a single prompt and writes the logits file.
    out_file logits_file = {0};
    if (o.dump_logits && c->rank == 0) {
        if (out_file_open(&logits_file, o.dump_logits, &err) != 0) die("--dump-logits %s", err.msg);
        go.dump_logits = logits_file.f;
    }
    stream_ctx sc = {tok, tok ? tokenizer_stream_new(tok) : NULL};
    int streaming = !o.json && n_prompts == 1 && c->rank == 0;
    if (streaming) {
        go.on_token = print_token;
        go.on_token_ctx = &sc;
        stream_prompt(&sc, &prompts[0]);
    }
    gen_stats gs;
    if (generate(&m, &rs, xc, seqs, n_local, &go, &gs, &err) != 0) die("%s", err.msg);
    if (streaming) stream_end(&sc);
    if (logits_file.f && out_file_commit(&logits_file, &err) != 0) die("--dump-logits %s", err.msg);

    // Report: results and statistics of every rank, printed by rank 0.
    run_report rep;
    report_gather(&rep, c, &m, &rs, seqs, n_local, n_prompts, &gs, cache, t_loaded - t_start);
    report_context rx = {.o = &o, .m = &m, .be = be, .c = c, .tok = tok, .prompts = prompts, .streamed = streaming};
#ifdef LLAMOE_CUDA
    if (be->device_memory) {
        rx.device = backend_cuda_description(be);
        rx.device_bandwidth_gbs = backend_cuda_peak_bandwidth(be) / 1e9;
    }
#endif
    report_print(&rep, &rx);
    if (o.write_load_profile && c->rank == 0 && rep.tokens_per_expert) {
        char mb[64];
        if (load_profile_write(o.write_load_profile, o.model_dir, moe_mode_str(&m.moe, mb, sizeof mb), &m.cfg,
                               m.moe.n_experts, m.moe.top_k, rep.tokens_per_expert, &err) != 0)
            die("--write-load-profile %s", err.msg);
    }

    report_free(&rep);
    free_sequences(seqs, n_local);
    prompts_free(prompts, n_prompts);
    if (sc.stream) tokenizer_stream_free(sc.stream);
    run_state_free(&rs, &m);
    expert_cache_free(cache);
    model_free(&m);
    tokenizer_free(tok);
    if (xc != c) xc->free(xc);   // the exchange's communicator owns c
    else c->free(c);
    backend_free(be);            // after the communicators, which order on its stream
    return 0;
}
