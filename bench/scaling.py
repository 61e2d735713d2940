#!/usr/bin/env python3
"""bench/scaling.py: the expert-parallel scaling benchmark.

  bench/scaling.py [--quick] --out DIR [--model DIR] [--build DIR] [--docs FILE|none] [...]

Sweeps the expert-parallel degree P, the MoE mode and the load (decode with B sequences in
flight; prefill of T tokens) with real `mpirun -np P llamoe-ep` runs, then fits and applies
the traffic/time model (bench/scaling_model.py, its links fitted to the published all-to-all
measurements in bench/published_a2a.json). Writes into DIR:
  scaling.csv / scaling.json       MEASURED points, one per (phase, load, P, mode)
  model.csv / model.json           MODELLED predictions (P up to 64, both data paths), the
                                   model's error and its validation against published points
  *.png                            plots (gnuplot; skipped with a message when it is missing)
  scaling.md                       the markdown section, also placed in --docs between markers
Models: a synthetic dense Llama made with llamoe-mkmodel (or --model), and the upcycle and
production modes converted once with llamoe-convert into Mixtral checkpoints (same experts
and routers as the on-the-fly modes; distinct weights per expert in memory).
--balanced adds the balanced series: production:8:2 again at every P > 1 with the placement
balanced on the load the P = 1 run of the same point measured (--placement balanced
--redundant-experts P --load-profile), measured, and modelled up to 8 devices with the rank
imbalance that placement leaves (build/bench_balance on the same profile).
"""
import argparse
import csv
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scaling_model as sm  # noqa: E402

SRC = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN, END = "<!-- bench/scaling.py: begin (generated, do not edit) -->", "<!-- bench/scaling.py: end -->"

# Model sizes. Default: expert compute dominates a step (FFN 3.5x hidden), 4 layers keep a
# P = 1 decode step of 256 sequences near half a second on 2 cores.
SIZES = {
    "default": {"hidden": 1024, "ffn": 3584, "layers": 4, "heads": 16, "kv_heads": 4, "vocab": 8192,
                "max_pos": 8192, "dtype": "BF16"},
    "quick": {"hidden": 128, "ffn": 384, "layers": 2, "heads": 4, "kv_heads": 2, "vocab": 512,
              "max_pos": 512, "dtype": "BF16"},
}
SWEEPS = {
    "default": {"ranks": [1, 2, 3, 4, 8], "dense_ranks": [1, 2], "decode": [1, 16, 64, 256],
                "prefill": [512, 2048], "steps": 5, "warmup": 1, "repeats": 2},
    "quick": {"ranks": [1, 2], "dense_ranks": [1, 2], "decode": [1, 8], "prefill": [64],
              "steps": 3, "warmup": 1, "repeats": 1},
}
MODES = ["dense", "identity:8", "upcycle:8:2", "production:8:2"]
BALANCED = "production:8:2+balanced"   # the balanced series: production:8:2, R = P copies
PREFILL_SEQS = 8   # a prefill of T tokens is 8 sequences of T/8 tokens, spread over the ranks
COMPONENTS = ["attention_s", "router_s", "dispatch_s", "experts_s", "combine_s", "dense_ffn_s",
              "lm_head_s", "other_s", "forward_s"]
CSV_COLUMNS = [
    "phase", "load", "ranks", "mode", "cores", "cores_per_rank", "oversubscribed", "note",
    "repeats", "spread", "steps", "tokens", "tokens_per_rank_max", "time_s", "step_ms", "tok_s",
    "attention_ms", "router_ms", "dispatch_ms", "experts_ms", "combine_ms", "dense_ffn_ms",
    "lm_head_ms", "other_ms", "dispatch_min_ms", "combine_min_ms", "experts_mean_ms",
    "bytes_sent_rank", "bytes_recv_rank", "dispatch_bytes_rank", "rows_sent_rank",
    "expert_imbalance", "expert_imbalance_worst_layer", "rank_imbalance",
    "peak_rss_mb", "expert_weights_mb", "eos_stops", "redundant", "step_rank_imbalance",
]
OVERSUB_NOTE = "oversubscribed: traffic and correctness, not speed"


def log(msg):
    print(f"scaling: {msg}", file=sys.stderr, flush=True)


def die(msg):
    log(f"error: {msg}")
    sys.exit(1)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--quick", action="store_true", help="tiny model and sweep (CI smoke test, < 1 minute)")
    ap.add_argument("--build", default="build", help="build directory with llamoe-ep (default build)")
    ap.add_argument("--model", help="dense Llama directory to use (default: make one with llamoe-mkmodel)")
    ap.add_argument("--models", help="where made and converted models go (default OUT/models)")
    ap.add_argument("--docs", help="markdown file to update between markers, or none "
                                   "(default docs/benchmarks.md; none with --quick)")
    ap.add_argument("--ranks", help="P values, e.g. 1,2,3,4,8")
    ap.add_argument("--modes", help="comma-separated subset of " + ",".join(MODES))
    ap.add_argument("--decode", help="sequences in flight, e.g. 1,16,64,256 (empty: none)")
    ap.add_argument("--prefill", help="prefill tokens, multiples of 8, e.g. 512,2048 (empty: none)")
    ap.add_argument("--repeats", type=int, help="runs per point, best kept (oversubscribed points: 1)")
    ap.add_argument("--backend", help="passed to llamoe-ep as --backend (when it has one)")
    ap.add_argument("--ep-args", default="", help="more llamoe-ep arguments, space separated")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per run (default 600)")
    ap.add_argument("--remodel", action="store_true",
                    help="no runs: redo the model, plots and markdown from OUT/scaling.json")
    ap.add_argument("--balanced", action="store_true",
                    help="add the balanced series (production:8:2 with a balanced placement, R = P)")
    a = ap.parse_args()
    size = "quick" if a.quick else "default"
    sweep = dict(SWEEPS[size])
    ints = lambda s: [int(x) for x in s.split(",") if x.strip()]
    if a.ranks is not None:
        sweep["ranks"] = ints(a.ranks)
        sweep["dense_ranks"] = [p for p in sweep["dense_ranks"] if p in sweep["ranks"]] or sweep["ranks"][:1]
    if a.decode is not None:
        sweep["decode"] = ints(a.decode)
    if a.prefill is not None:
        sweep["prefill"] = ints(a.prefill)
    if any(t % PREFILL_SEQS for t in sweep["prefill"]):
        die(f"--prefill: token counts must be multiples of {PREFILL_SEQS}")
    if a.repeats is not None:
        sweep["repeats"] = max(1, a.repeats)
    sweep["modes"] = MODES if a.modes is None else [m.strip() for m in a.modes.split(",") if m.strip()]
    for m in sweep["modes"]:
        if m not in MODES:
            die(f"--modes: {m} is not one of {', '.join(MODES)}")
    if a.balanced:
        if "production:8:2" not in sweep["modes"]:
            die("--balanced: the balanced series balances production:8:2 (add it to --modes)")
        sweep["modes"] = sweep["modes"] + [BALANCED]
    if a.docs is None:
        a.docs = "none" if a.quick else os.path.join(SRC, "docs", "benchmarks.md")
    a.size, a.sweep = size, sweep
    return a


# ---------------------------------------------------------------------------- machine
def machine_info():
    cores = len(os.sched_getaffinity(0))
    model = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mpi = subprocess.run(["mpirun", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        mpi = "unknown"
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cores": cores, "nproc": os.cpu_count(), "cpu_model": model, "mpi": mpi,
            "memory_gib": round(mem_gb, 1), "host": platform.node(), "kernel": platform.release()}


# ---------------------------------------------------------------------------- models
def run(cmd, timeout, what):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        die(f"{what}: timed out after {timeout} s: {' '.join(cmd)}")
    if p.returncode != 0:
        die(f"{what}: exit {p.returncode}: {' '.join(cmd)}\n{p.stderr[-3000:]}")
    return p


def prepare_models(a, build):
    """Returns {mode: (model dir, --moe argument or None)} and the dense config."""
    models = a.models or os.path.join(a.out, "models")
    os.makedirs(models, exist_ok=True)
    dense = a.model
    if not dense:
        dense = os.path.join(models, "dense")
        s = SIZES[a.size]
        stamp = json.dumps(s, sort_keys=True)
        stamp_file = os.path.join(models, "dense.stamp")
        if not (os.path.isdir(dense) and os.path.exists(stamp_file) and open(stamp_file).read() == stamp):
            log(f"making the synthetic model {dense}")
            run([os.path.join(build, "llamoe-mkmodel"), "-o", dense, "--hidden", str(s["hidden"]),
                 "--ffn", str(s["ffn"]), "--layers", str(s["layers"]), "--heads", str(s["heads"]),
                 "--kv-heads", str(s["kv_heads"]), "--vocab", str(s["vocab"]), "--max-pos", str(s["max_pos"]),
                 "--dtype", s["dtype"], "--force"], a.timeout, "llamoe-mkmodel")
            open(stamp_file, "w").write(stamp)
    cfg = json.load(open(os.path.join(dense, "config.json")))
    out = {}
    for mode in a.sweep["modes"]:
        if mode in ("upcycle:8:2", "production:8:2"):
            conv = os.path.join(models, mode.replace(":", "-"))
            stamp = json.dumps({"from": os.path.abspath(dense),
                                "mtime": os.path.getmtime(os.path.join(dense, "config.json"))})
            stamp_file = conv + ".stamp"
            if not (os.path.isdir(conv) and os.path.exists(stamp_file) and open(stamp_file).read() == stamp):
                log(f"converting to {mode}: {conv}")
                run([os.path.join(build, "llamoe-convert"), "-m", dense, "--moe", mode, "-o", conv, "--force"],
                    a.timeout, "llamoe-convert")
                open(stamp_file, "w").write(stamp)
            out[mode] = (conv, None)
        elif mode == BALANCED:
            pass
        else:
            out[mode] = (dense, mode)
    if BALANCED in a.sweep["modes"]:
        out[BALANCED] = out["production:8:2"]
    return out, cfg


# ---------------------------------------------------------------------------- one point
def write_prompts(path, phase, load, vocab):
    """Decode: `load` one-token prompts (every step then has B/P tokens per rank). Prefill:
    8 prompts of load/8 tokens. Ids avoid 0..2 (pad, BOS, EOS of the synthetic models)."""
    lines = []
    if phase == "decode":
        for i in range(load):
            lines.append(str(3 + (37 * i) % (vocab - 3)))
    else:
        x = 12345
        for _ in range(PREFILL_SEQS):
            ids = []
            for _ in range(load // PREFILL_SEQS):
                x = (1103515245 * x + 12345) % 2**31
                ids.append(str(3 + x % (vocab - 3)))
            lines.append(",".join(ids))
    open(path, "w").write("\n".join(lines) + "\n")


def profile_path(tmp, phase, load):
    """Where the P = 1 production:8:2 run of a point writes its load profile."""
    return os.path.join(tmp, f"profile-{phase}-{load}.json")


def run_point(a, build, model_dir, moe_arg, phase, load, P, vocab, tmp, mode=None):
    sw = a.sweep
    prompts = os.path.join(tmp, f"prompts-{phase}-{load}.txt")
    if not os.path.exists(prompts):
        write_prompts(prompts, phase, load, vocab)
    if phase == "decode":
        n_new, warmup, step_tokens = sw["steps"], sw["warmup"], max(load, 1)
        ctx = sw["steps"] + 2
    else:
        n_new, warmup, step_tokens = 1, 1, load
        ctx = load // PREFILL_SEQS + 2
    cmd = ["mpirun", "--oversubscribe", "-np", str(P), os.path.join(build, "llamoe-ep"), "-m", model_dir,
           "--prompts", prompts, "-n", str(n_new), "--warmup", str(warmup), "--ctx", str(ctx),
           "--step-tokens", str(step_tokens), "--json", "--stats", "--verbose"]
    if moe_arg:
        cmd += ["--moe", moe_arg]
    if mode == "production:8:2" and P == 1 and BALANCED in sw["modes"]:
        cmd += ["--write-load-profile", profile_path(tmp, phase, load)]
    if mode == BALANCED:
        cmd += ["--placement", "balanced", "--redundant-experts", str(P), "--load-profile",
                profile_path(tmp, phase, load)]
    if a.backend:
        cmd += ["--backend", a.backend]
    cmd += a.ep_args.split()
    p = run(cmd, a.timeout, f"{phase} {load} P={P} {moe_arg or model_dir}")
    j = json.loads(p.stdout)
    binding = [l for l in p.stderr.splitlines() if "rank 0/" in l]
    j["_binding"] = binding[0] if binding else ""
    j["_cmd"] = " ".join(cmd)
    return j


def summarise(j, phase, load, P, mode, cfg, machine, repeats, spread):
    t = j["timings"]
    steps = max(1, t["steps"])
    mx, mn, me = j["per_rank_max"], j["per_rank_min"], j["per_rank_mean"]
    ms = lambda d, key: 1e3 * d[key] / steps
    results = j.get("results") or [j]
    # tokens through the model in the timed run, all ranks (timings.* tokens are rank 0's):
    # the prompt and every generated token but the last
    tokens = sum(len(r["prompt_ids"]) + len(r["generated_ids"]) - 1 for r in results)
    time_s = t["prefill_s"] + t["decode_s"]   # rank 0's wall time of the lockstep steps
    E = 0 if mode == "dense" else int(mode.split(":")[1])
    tpe = j.get("tokens_per_expert") or []
    exp_imb = [sm.max_over_mean(layer) for layer in tpe if sum(layer)]
    bal = j.get("balance")
    if bal and P > 1:   # what each rank's experts computed (any placement)
        rank_imb = [sm.max_over_mean(l["rank_pairs"]) for l in bal["layers"] if sum(l["rank_pairs"])]
    else:               # the contiguous placement's ranks, from the per-expert counts
        rank_imb = [sm.max_over_mean(sm.rank_loads(layer, P)) for layer in tpe if sum(layer)] if P > 1 else []
    cores = machine["cores"]
    seqs = load if phase == "decode" else PREFILL_SEQS
    per_seq = 1 if phase == "decode" else load // PREFILL_SEQS
    row = {
        "phase": phase, "load": load, "ranks": P, "mode": mode, "cores": cores,
        "cores_per_rank": round(cores / P, 3), "oversubscribed": int(P > cores),
        "note": OVERSUB_NOTE if P > cores else "",
        "repeats": repeats, "spread": round(spread, 3), "steps": steps, "tokens": tokens,
        "tokens_per_rank_max": math.ceil(seqs / P) * per_seq,
        "time_s": time_s, "step_ms": ms(mx, "forward_s"), "tok_s": tokens / time_s if time_s else 0.0,
    }
    for c in COMPONENTS[:-1]:
        row[c.replace("_s", "_ms")] = ms(mx, c)
    row.update({
        "dispatch_min_ms": ms(mn, "dispatch_s"), "combine_min_ms": ms(mn, "combine_s"),
        "experts_mean_ms": ms(me, "experts_s"),
        "bytes_sent_rank": mx["bytes_sent"] / steps, "bytes_recv_rank": mx["bytes_recv"] / steps,
        "dispatch_bytes_rank": mx.get("dispatch_bytes_sent", 0) / steps,
        "rows_sent_rank": mx.get("rows_sent", 0) / steps,
        "expert_imbalance": sum(exp_imb) / len(exp_imb) if exp_imb else (1.0 if E else 0.0),
        "expert_imbalance_worst_layer": max(exp_imb) if exp_imb else (1.0 if E else 0.0),
        "rank_imbalance": sum(rank_imb) / len(rank_imb) if rank_imb else 1.0,
        "peak_rss_mb": t["peak_rss_mb_max_rank"], "expert_weights_mb": mx["expert_weights_mb"],
        "eos_stops": sum(1 for r in results if r.get("stop") == "eos"),
        "redundant": (j.get("placement") or {}).get("redundant", 0),
        "step_rank_imbalance": bal["step_imbalance_mean"] if bal and P > 1 else (1.0 if E else 0.0),
    })
    return row


# ---------------------------------------------------------------------------- the sweep
def sweep(a, build, models, cfg, machine):
    """Runs every point; repeats are separate passes over the sweep, so that a burst of load
    from elsewhere hits one repeat of a point rather than all of them. Keeps the best."""
    sw = a.sweep
    tmp = os.path.join(a.out, "prompts")
    os.makedirs(tmp, exist_ok=True)
    points = []
    for phase, load in [("decode", b) for b in sw["decode"]] + [("prefill", t) for t in sw["prefill"]]:
        for mode in sw["modes"]:
            E = 0 if mode == "dense" else int(mode.split(":")[1])
            for P in (sw["dense_ranks"] if mode == "dense" else sw["ranks"]):
                if E and P > E:
                    log(f"skip {mode} on {P} ranks: more ranks than experts")
                    continue
                if mode == BALANCED and (P == 1 or 1 not in sw["ranks"]):
                    continue   # needs the P = 1 run's profile; one rank has nothing to balance
                points.append((phase, load, mode, P))
    runs = {p: [] for p in points}
    for rep in range(sw["repeats"]):
        for phase, load, mode, P in points:
            if rep > 0 and P > machine["cores"]:
                continue   # oversubscribed points: one run (not a speed figure anyway)
            model_dir, moe_arg = models[mode]
            j = run_point(a, build, model_dir, moe_arg, phase, load, P, cfg["vocab_size"], tmp, mode)
            runs[(phase, load, mode, P)].append(j)
            st = j["per_rank_max"]["forward_s"] / max(1, j["timings"]["steps"])
            log(f"[{rep + 1}/{sw['repeats']}] {phase:7s} {load:5d} {mode:15s} P={P}: step {1e3 * st:9.2f} ms"
                + (" (oversubscribed)" if P > machine["cores"] else ""))
    rows, raw = [], []
    for (phase, load, mode, P), js in runs.items():
        times = [j["per_rank_max"]["forward_s"] / max(1, j["timings"]["steps"]) for j in js]
        best = js[times.index(min(times))]
        row = summarise(best, phase, load, P, mode, cfg, machine, len(js), max(times) / min(times))
        rows.append(row)
        raw.append({"point": {"phase": phase, "load": load, "ranks": P, "mode": mode},
                    "binding_rank0": best["_binding"], "command": best["_cmd"], "step_s_repeats": times,
                    "llamoe_ep": {k: v for k, v in best.items() if not k.startswith("_") and k != "results"}})
    return rows, raw


def expected_balance(a, build, models, tmp):
    """The rank imbalance each balanced placement leaves on the load profile it was made from
    (build/bench_balance: no runs, the algorithm alone): {phase: {load: {P: {"contiguous",
    "balanced" (mean over layers), "contiguous_worst", "balanced_worst"}}}}."""
    if BALANCED not in a.sweep["modes"]:
        return None
    out = {}
    ranks = sorted(set([2, 4, 8] + [p for p in a.sweep["ranks"] if p > 1]))
    for phase, loads in (("decode", a.sweep["decode"]), ("prefill", a.sweep["prefill"])):
        for load in loads:
            prof = profile_path(tmp, phase, load)
            if not os.path.exists(prof):
                continue
            res = {}
            for P in ranks:
                js = os.path.join(tmp, f"balance-{phase}-{load}-{P}.json")
                run([os.path.join(build, "bench_balance"), "-m", models["production:8:2"][0], "--load-profile", prof,
                     "--ranks", str(P), "--redundant", "P", "--json", js], a.timeout, "bench_balance")
                pt = json.load(open(js))["points"][0]
                mean = lambda xs: sum(xs) / len(xs)
                res[str(P)] = {"contiguous": mean(pt["contiguous"]), "balanced": mean(pt["balanced"]),
                               "contiguous_worst": max(pt["contiguous"]), "balanced_worst": max(pt["balanced"])}
            out.setdefault(phase, {})[str(load)] = res
    return out


# ---------------------------------------------------------------------------- the model
def model_section(rows, cfg, balance=None):
    """Fits the CPU transport, checks the model against the measured runs, and predicts
    P up to 64 (MODELLED; the balanced series up to 8 with `balance`, the expected rank
    imbalance of the balanced placements, see expected_balance). Returns (model dict,
    prediction rows)."""
    d, L = cfg["hidden_size"], cfg["num_hidden_layers"]
    moe_rows = [r for r in rows if r["mode"] != "dense"]
    kk = lambda mode: (8, 8) if mode.startswith("identity") else (8, 2)

    # 1. traffic: modelled bytes versus measured, every MoE point with P > 1.
    traffic_err = []
    for r in moe_rows:
        if r["ranks"] == 1 or r["bytes_sent_rank"] == 0:
            continue
        E, k = kk(r["mode"])
        tb = sm.layer_bytes(r["tokens_per_rank_max"], d, E, k, r["ranks"])
        model_b = L * (tb["dispatch"] + tb["combine"])
        traffic_err.append({"phase": r["phase"], "load": r["load"], "ranks": r["ranks"], "mode": r["mode"],
                            "measured_bytes": r["bytes_sent_rank"], "modelled_bytes": model_b,
                            "rel_err": model_b / r["bytes_sent_rank"] - 1,
                            # reduced combine: one row back per row dispatched
                            "measured_reduced_total": r["dispatch_bytes_rank"] + r["rows_sent_rank"] * 4 * d,
                            "modelled_reduced_total": L * (tb["dispatch"] + tb["reduced"])})

    # 2. CPU transport fit: per layer and step, exchange time (min over ranks: the rank that
    # waited least) = alpha * 3 (P - 1) messages + bytes / beta, on the P = 2..4 points.
    def comm_sample(r):
        m = 3 * (r["ranks"] - 1)
        return (m, r["bytes_sent_rank"] / L, 1e-3 * (r["dispatch_min_ms"] + r["combine_min_ms"]) / L)
    fit_pts = [comm_sample(r) for r in moe_rows if 2 <= r["ranks"] <= 4]
    alpha, beta = sm.fit_alpha_beta(fit_pts) if fit_pts else (0.0, float("inf"))
    # the same on the points that are not oversubscribed (P = 2 on 2 cores): the transport
    # itself, without the scheduler's time slices that oversubscribed ranks wait for
    fit_own = [comm_sample(r) for r in moe_rows if 2 <= r["ranks"] <= 4 and not r["oversubscribed"]]
    alpha_own, beta_own = sm.fit_alpha_beta(fit_own) if fit_own else (0.0, float("inf"))
    local_copy = {}   # P = 1 exchange time (the copies alone), subtracted nowhere: reported
    for r in moe_rows:
        if r["ranks"] == 1:
            local_copy[(r["phase"], r["load"], r["mode"])] = 1e-3 * (r["dispatch_ms"] + r["combine_ms"])

    # 3. step-time check on this machine: P = 1 compute of the same load, split by each rank's
    # share (tokens for attention and the rest, pairs for the experts), times P for the cores
    # the ranks share (total machine throughput is fixed), plus L fitted exchanges.
    base = {(r["phase"], r["load"], r["mode"]): r for r in moe_rows if r["ranks"] == 1}
    checks = []
    for r in moe_rows:
        b = base.get((r["phase"], r["load"], r["mode"]))
        if r["ranks"] == 1 or not b:
            continue
        P = r["ranks"]
        # A rank runs at 1/P of the machine's rate (C/P cores each, or a shared core).
        slow = P
        # per-rank share of tokens and of pairs (rank_imbalance / P from the routing counts)
        tok_share = r["tokens_per_rank_max"] / (b["tokens_per_rank_max"] or 1)
        pair_share = r["rank_imbalance"] / P
        dense_part = 1e-3 * (b["attention_ms"] + b["router_ms"] + b["lm_head_ms"] + b["other_ms"])
        compute = slow * (dense_part * tok_share + 1e-3 * b["experts_ms"] * pair_share)
        m, nbytes, _ = comm_sample(r)
        a_, b_ = (alpha, beta) if r["oversubscribed"] else (alpha_own, beta_own)
        comm = L * sm.cpu_comm_time(m, nbytes, a_, b_)
        pred = compute + comm
        meas = 1e-3 * r["step_ms"]
        checks.append({"phase": r["phase"], "load": r["load"], "ranks": P, "mode": r["mode"],
                       "oversubscribed": r["oversubscribed"], "measured_step_ms": 1e3 * meas,
                       "modelled_step_ms": 1e3 * pred, "modelled_compute_ms": 1e3 * compute,
                       "modelled_comm_ms": 1e3 * comm,
                       "measured_comm_min_ms": r["dispatch_min_ms"] + r["combine_min_ms"],
                       "measured_comm_max_ms": r["dispatch_ms"] + r["combine_ms"],
                       "rel_err": pred / meas - 1 if meas else 0.0})

    def err_stats(xs):
        if not xs:
            return {"n": 0}
        a_ = sorted(abs(x) for x in xs)
        return {"n": len(xs), "median_abs": a_[len(a_) // 2], "max_abs": a_[-1],
                "mean": sum(xs) / len(xs)}

    # 4. predictions, P up to 64, one device per rank (MODELLED), on links fitted to published
    # all-to-all measurements and checked against them.
    try:
        pub = sm.load_published()
        sm.links()
    except ValueError as e:
        die(str(e))
    preds = predict(rows, cfg, balance)
    model = {
        "label": "MODELLED",
        "cpu_fit": {"alpha_s": alpha, "beta_bytes_per_s": beta, "points": len(fit_pts),
                    "alpha_s_not_oversubscribed": alpha_own, "beta_not_oversubscribed": beta_own,
                    "points_not_oversubscribed": len(fit_own),
                    "form": "t_layer = alpha * 3 (P - 1) + bytes_sent_per_layer / beta (min over ranks of dispatch + combine)"},
        "traffic_check": traffic_err,
        "traffic_error": err_stats([e["rel_err"] for e in traffic_err]),
        "traffic_error_16_plus": err_stats([e["rel_err"] for e in traffic_err if e["load"] >= 16]),
        "step_check": checks,
        "step_error_all": err_stats([c["rel_err"] for c in checks]),
        "step_error_not_oversubscribed": err_stats([c["rel_err"] for c in checks if not c["oversubscribed"]]),
        "step_error_oversubscribed": err_stats([c["rel_err"] for c in checks if c["oversubscribed"]]),
        "links": sm.links(), "h100": sm.H100, "llama8b": sm.LLAMA8B,
        "data_paths": sm.DATA_PATHS, "headline_path": sm.HEADLINE_PATH,
        "published": {"file": os.path.relpath(sm.PUBLISHED, SRC), "sources": pub["sources"],
                      "constants": pub["constants"]},
        "validation": sm.validate(pub, sm.links()),
    }
    return model, preds


# Variants of the 8B/H100 exchange, per MoE layer (sm.layer_comm): key, data path, wire
# element bytes, host memory of the staged copies, reduced combine.
COMM_VARIANTS = {
    "device": ("device", 4, None, False),            # the headline path, fp32 rows
    "device_bf16": ("device", 2, None, False),       # the same with bf16 rows (what DeepEP sends)
    "device_reduced": ("device", 4, None, True),     # reduced combine
    "fixed": ("fixed", 4, None, False),              # fixed-capacity decode exchange
    "host": ("host", 4, "pageable", False),          # previous release, as it allocates
    "host_pinned": ("host", 4, "pinned", False),     # previous release with pinned buffers
}


def predict(rows, cfg, balance=None):
    """Step time and efficiency for P = 1..64 (MODELLED): this model with the measured P = 1
    per-rank compute (CPU) and modelled links, and the Llama-3.1-8B shape on H100 (roofline)
    with every data path of COMM_VARIANTS; the h100_8b_* columns without a suffix are the
    headline path's (sm.HEADLINE_PATH). With `balance` also the balanced series up to P = 8:
    production:8:2 whose router skew is scaled by what the balanced placement leaves of the
    contiguous one's imbalance on the measured profile (balanced / contiguous, expected); the
    uniform-routing sampling term of a step stays."""
    d, L = cfg["hidden_size"], cfg["num_hidden_layers"]
    links = sm.links()
    out = []
    Ps = [1, 2, 4, 8, 16, 32, 64]
    base = [r for r in rows if r["ranks"] == 1 and r["mode"] in ("upcycle:8:2", "production:8:2")]
    variants = [("upcycle:8:2", None), ("production:8:2", None)] + ([("production:8:2", balance)] if balance else [])
    for mode, bal in variants:
        for phase in ("decode", "prefill"):
            pts = sorted((r for r in base if r["mode"] == mode and r["phase"] == phase), key=lambda r: r["load"])
            if not pts:
                continue
            N = pts[-1]["load"]                      # the largest measured global load
            bal_point = bal.get(phase, {}).get(str(N)) if bal else None
            if bal and not bal_point:
                continue
            per_seq = 1 if phase == "decode" else N // PREFILL_SEQS
            # per-rank compute from the P = 1 runs: attention and the rest interpolated in
            # tokens, experts as w * experts touched + c * pairs (fitted over all loads).
            xs = [r["tokens_per_rank_max"] for r in pts]
            dense_ms = [r["attention_ms"] + r["router_ms"] + r["lm_head_ms"] + r["other_ms"] for r in pts]
            allp = [r for r in base if r["mode"] == mode]
            w, c = sm.fit_expert_cost([(sm.experts_touched(r["tokens_per_rank_max"], 2, 8, 1),
                                        2 * r["tokens_per_rank_max"] * (r["rank_imbalance"] or 1), r["experts_ms"])
                                       for r in allp])
            # systematic router skew: measured per-expert max/mean over the uniform-routing value
            sys_skew = pts[-1]["expert_imbalance"] / sm.mc_rank_imbalance(N * pts[-1]["steps"], 8, 2, 8)
            sys_skew = max(1.0, sys_skew)
            t1 = t18 = None
            for P in Ps:
                if bal and P > 8:
                    break                            # the profile has 8 experts
                E = max(8, P)                        # P > 8: one expert per rank (E = P, same size)
                n = math.ceil(N / P)                 # enough sequences for every rank
                skew = sys_skew
                if bal and P > 1:   # what of the router's skew the balanced placement leaves
                    b = bal_point[str(P)]
                    skew = sys_skew * b["balanced"] / b["contiguous"] if b["contiguous"] > 0 else 1.0
                imb = sm.mc_rank_imbalance(N, E, 2, P) * (max(1.0, skew) if P > 1 else 1.0)
                pairs = N * 2 / P * imb
                touched = sm.experts_touched(N, 2, E, P)
                tb = sm.layer_bytes(n, d, E, 2, P)
                comp = 1e-3 * (sm.interp(xs, dense_ms, n) + w * touched + c * pairs)
                comm = L * sm.layer_comm(n, d, E, 2, P, links, sm.HEADLINE_PATH, imb)["total"]
                # Llama-3.1-8B shape, H100 roofline per layer (ctx 1024 decode, T/8 prefill)
                s8 = sm.LLAMA8B
                ctx = 1024 if phase == "decode" else per_seq
                a8, e8 = sm.h100_rank_compute(n, ctx, pairs, touched)
                tb8 = sm.layer_bytes(n, s8["d"], E, 2, P)
                comp8 = s8["layers"] * (a8 + e8)
                comm8 = {}
                for key, (path, elem, mem, red) in COMM_VARIANTS.items():
                    lc = sm.layer_comm(n, s8["d"], E, 2, P, links, path, imb, elem, red, mem or "pageable")
                    comm8[key] = s8["layers"] * lc["total"]
                step = comp + comm
                if t1 is None:
                    t1, t18 = step, comp8
                row = {
                    "label": "MODELLED", "mode": BALANCED if bal else mode, "phase": phase, "global_load": N, "ranks": P,
                    "experts": E, "tokens_per_rank": n, "rank_imbalance": imb,
                    "bytes_per_rank_step": L * (tb["dispatch"] + tb["combine"]),
                    "reduced_bytes_per_rank_step": L * (tb["dispatch"] + tb["reduced"]),
                    "cpu_compute_ms": 1e3 * comp, "cpu_a2a_ms": 1e3 * comm,
                    "cpu_step_ms": 1e3 * step, "cpu_a2a_share": comm / step if step else 0.0,
                    "cpu_efficiency": t1 / (P * step) if step else 0.0,
                    "h100_8b_bytes_per_rank_step": s8["layers"] * (tb8["dispatch"] + tb8["combine"]),
                    "h100_8b_bytes_busiest_step": s8["layers"] * (tb8["dispatch"] + tb8["combine"]) * imb,
                    "h100_8b_compute_ms": 1e3 * comp8, "data_path": sm.HEADLINE_PATH,
                }
                for key, t in comm8.items():
                    sfx = "" if key == sm.HEADLINE_PATH else "_" + key
                    row[f"h100_8b_a2a{sfx}_ms"] = 1e3 * t
                    row[f"h100_8b_step{sfx}_ms"] = 1e3 * (comp8 + t)
                    row[f"h100_8b_a2a_share{sfx}"] = t / (comp8 + t) if comp8 + t else 0.0
                    row[f"h100_8b_efficiency{sfx}"] = t18 / (P * (comp8 + t)) if comp8 + t else 0.0
                row["h100_8b_a2a_reduced_ms"] = row["h100_8b_a2a_device_reduced_ms"]
                out.append(row)
    return out


# ---------------------------------------------------------------------------- outputs
def write_csv(path, rows, columns):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


PLOTS = {
    "decode_breakdown.png": "Decode step time split, max over ranks (MEASURED)",
    "prefill_breakdown.png": "Prefill time split, max over ranks (MEASURED)",
    "bytes.png": "Bytes sent per rank per step: measured points, modelled lines",
    "model_efficiency.png": "MODELLED scaling efficiency, P up to 64",
    "a2a_validation.png": "MODELLED all-to-all time against PUBLISHED measurements",
    "balanced.png": "production:8:2 with and without a balanced placement: MEASURED here, MODELLED on 8 H100s",
}


def plots(out, rows, preds, model):
    """PNG plots with gnuplot; returns the list written (empty with a message if no gnuplot)."""
    gp = shutil.which("gnuplot")
    if not gp:
        log("gnuplot not found: no PNG plots (apt-get install gnuplot-nox); CSV and JSON are complete")
        return []
    dat = os.path.join(out, "plotdata")
    os.makedirs(dat, exist_ok=True)
    script = ['set terminal pngcairo size 1100,600 font ",10"' if "pngcairo" in subprocess.run(
        [gp, "-e", "set terminal"], capture_output=True, text=True).stdout + subprocess.run(
        [gp, "-e", "set terminal"], capture_output=True, text=True).stderr else 'set terminal png size 1100,600',
        "set termoption noenhanced", "set grid ytics", "set key outside right"]
    written = []
    parts = ["attention_ms", "router_ms", "dispatch_ms", "experts_ms", "combine_ms", "dense_ffn_ms",
             "lm_head_ms", "other_ms"]
    for phase in ("decode", "prefill"):
        sel = [r for r in rows if r["phase"] == phase]
        if not sel:
            continue
        load = max(r["load"] for r in sel)
        sel = [r for r in sel if r["load"] == load]
        f = os.path.join(dat, f"{phase}_breakdown.dat")
        with open(f, "w") as fh:
            fh.write("label " + " ".join(parts) + "\n")
            for r in sel:
                lab = f'"{r["mode"].split(":")[0][:4]} P{r["ranks"]}{"*" if r["oversubscribed"] else ""}"'
                fh.write(lab + " " + " ".join(f"{r[p]:.4f}" for p in parts) + "\n")
        name = f"{phase}_breakdown.png"
        what = f"{load} sequences" if phase == "decode" else f"{load} tokens"
        script += [f'set output "{os.path.join(out, name)}"',
                   f'set title "{phase}, {what}: time split per step, max over ranks (MEASURED; * = oversubscribed)"',
                   "set style data histograms", "set style histogram rowstacked", "set style fill solid 0.8 border -1",
                   "set boxwidth 0.8", "set ylabel 'ms per step'", "set xtics rotate by -45", "unset logscale",
                   f'plot for [i=2:{len(parts) + 1}] "{f}" using i:xtic(1) title columnheader(i)',
                   "unset style", "set xtics norotate"]
        written.append(name)
    # bytes per rank per step vs P (decode, largest load), measured vs modelled
    sel = [r for r in rows if r["phase"] == "decode" and r["mode"] != "dense"]
    if sel:
        load = max(r["load"] for r in sel)
        f = os.path.join(dat, "bytes.dat")
        tc = {(e["mode"], e["ranks"]): e for e in model["traffic_check"] if e["phase"] == "decode" and e["load"] == load}
        modes = sorted({r["mode"] for r in sel})
        with open(f, "w") as fh:
            for m in modes:
                fh.write(f'"{m}"\n')
                for r in sorted((r for r in sel if r["mode"] == m and r["load"] == load), key=lambda r: r["ranks"]):
                    e = tc.get((m, r["ranks"]))
                    fh.write(f'{r["ranks"]} {r["bytes_sent_rank"] / 1e6:.6f} {(e["modelled_bytes"] if e else 0) / 1e6:.6f}\n')
                fh.write("\n\n")
        script += [f'set output "{os.path.join(out, "bytes.png")}"',
                   f'set title "decode, {load} sequences: MB sent per rank per step (points MEASURED, lines MODELLED)"',
                   "set xlabel 'ranks P'", "set ylabel 'MB per rank per step'", "unset logscale",
                   f'plot for [i=0:{len(modes) - 1}] "{f}" index i using 1:2 with points pt 7 ps 1.5 lc i+1 title columnheader(1), '
                   f'for [i=0:{len(modes) - 1}] "{f}" index i using 1:3 with lines lc i+1 notitle']
        written.append("bytes.png")
    if preds:
        f = os.path.join(dat, "model.dat")
        series = sorted({(p["mode"], p["phase"]) for p in preds})
        with open(f, "w") as fh:
            for m, ph in series:
                fh.write(f'"{m} {ph}"\n')
                for p in preds:
                    if p["mode"] == m and p["phase"] == ph:
                        fh.write(f'{p["ranks"]} {p["cpu_efficiency"]:.4f} {p["h100_8b_efficiency"]:.4f} '
                                 f'{p["h100_8b_efficiency_host" if sm.HEADLINE_PATH != "host" else "h100_8b_efficiency_device"]:.4f}\n')
                fh.write("\n\n")
        n = len(series)
        other = "host-staged" if sm.HEADLINE_PATH != "host" else "device-resident"
        script += [f'set output "{os.path.join(out, "model_efficiency.png")}"',
                   f'set title "MODELLED efficiency. solid: CPU compute measured here; dashed: 8B shape on H100, {sm.HEADLINE_PATH} path; dotted: 8B, {other}"',
                   "set xlabel 'ranks P (8 per node)'", "set ylabel 'efficiency T(1) / (P T(P))'", "set logscale x 2",
                   "set yrange [0:1.1]",
                   f'plot for [i=0:{n - 1}] "{f}" index i using 1:2 with linespoints lc i+1 title columnheader(1), '
                   f'for [i=0:{n - 1}] "{f}" index i using 1:3 with linespoints dt 2 lc i+1 notitle, '
                   f'for [i=0:{n - 1}] "{f}" index i using 1:4 with linespoints dt 3 lc i+1 notitle',
                   "unset logscale", "set yrange [*:*]"]
        written.append("model_efficiency.png")
    bal = [r for r in rows if r["mode"] == BALANCED]
    if bal:
        f = os.path.join(dat, "balanced.dat")
        series = []
        with open(f, "w") as fh:
            for phase in ("decode", "prefill"):
                sel = [r for r in rows if r["phase"] == phase and r["mode"] in ("production:8:2", BALANCED)]
                if not sel:
                    continue
                load = max(r["load"] for r in sel if r["mode"] == BALANCED) if any(r["mode"] == BALANCED for r in sel) else None
                if load is None:
                    continue
                for mode in ("production:8:2", BALANCED):
                    fh.write(f'"{phase} {load}, {"balanced" if mode == BALANCED else "contiguous"}"\n')
                    for r in sorted((r for r in sel if r["mode"] == mode and r["load"] == load and r["ranks"] > 1),
                                    key=lambda r: r["ranks"]):
                        fh.write(f'{r["ranks"]} {r["step_ms"]:.4f} {r["bytes_sent_rank"] / 1e6:.6f}\n')
                    fh.write("\n\n")
                    series.append(mode)
            for phase in ("decode", "prefill"):
                for mode in ("production:8:2", BALANCED):
                    ps = sorted((p for p in preds if p["mode"] == mode and p["phase"] == phase and p["ranks"] <= 8),
                                key=lambda p: p["ranks"])
                    if not ps or not any(p["mode"] == BALANCED and p["phase"] == phase for p in preds):
                        continue
                    fh.write(f'"8B/H100 {phase} {ps[0]["global_load"]}, {"balanced" if mode == BALANCED else "contiguous"}"\n')
                    for p in ps:
                        fh.write(f'{p["ranks"]} {p["h100_8b_step_ms"]:.4f} {p["h100_8b_bytes_busiest_step"] / 1e6:.6f}\n')
                    fh.write("\n\n")
                    series.append("model")
        n_meas = sum(1 for x in series if x != "model")
        n_all = len(series)
        # blocks come in pairs (contiguous, balanced): solid and dashed lines of one colour
        pair = lambda lo, hi, col: (f'for [i={lo}:{hi}:2] "{f}" index i using 1:{col} with linespoints lc (i-{lo})/2+1 '
                                    f'dt 1 pt 7 title columnheader(1), for [i={lo + 1}:{hi}:2] "{f}" index i using '
                                    f'1:{col} with linespoints lc (i-{lo}-1)/2+1 dt 3 pt 6 title columnheader(1)')
        script += ['set terminal pngcairo size 1100,900 font ",10"' if "pngcairo" in script[0] else script[0],
                   f'set output "{os.path.join(out, "balanced.png")}"', "set multiplot layout 2,2",
                   "set logscale y", "set key inside bottom right", "set xlabel 'ranks P'",
                   "set title 'MEASURED here: step ms, slowest rank (dashed: balanced)'", "set ylabel 'ms per step'",
                   f"plot {pair(0, n_meas - 1, 2)}",
                   "set title 'MEASURED here: MB sent per rank per step (dashed: balanced)'", "set ylabel 'MB'",
                   f"plot {pair(0, n_meas - 1, 3)}"]
        if n_all > n_meas:
            script += ["set title 'MODELLED, 8B on H100s: step ms (dashed: balanced)'", "set ylabel 'ms per step'",
                       f"plot {pair(n_meas, n_all - 1, 2)}",
                       "set title 'MODELLED, 8B on H100s: MB of the busiest rank per step (dashed: balanced)'",
                       "set ylabel 'MB'", f"plot {pair(n_meas, n_all - 1, 3)}"]
        script += ["unset multiplot", "unset logscale", "set key outside right", script[0]]
        written.append("balanced.png")
    val = model.get("validation") or []
    if val:
        f = os.path.join(dat, "validation.dat")
        fams = []
        for v in val:
            fam = v["library"].split(" (")[0].replace(" dispatch", "").replace(" combine", "")
            if fam not in fams:
                fams.append(fam)
        with open(f, "w") as fh:
            for fam in fams:
                fh.write(f'"{fam}"\n')
                for v in val:
                    if v["library"].split(" (")[0].replace(" dispatch", "").replace(" combine", "") == fam:
                        fh.write(f'{1e6 * v["published_s"]:.3f} {1e6 * v["modelled_s"]:.3f}\n')
                fh.write("\n\n")
        script += [f'set output "{os.path.join(out, "a2a_validation.png")}"',
                   'set title "All-to-all time, MODELLED (fitted links) against PUBLISHED, µs; lines: equal, ±25 %. DeepEP normal: its bytes at the published bandwidth"',
                   "set xlabel 'published µs'", "set ylabel 'modelled µs'", "set logscale xy", "set key inside top left",
                   "set xrange [10:10000]", "set yrange [10:10000]",
                   f'plot for [i=0:{len(fams) - 1}] "{f}" index i using 1:2 with points pt 7 ps 1.3 lc i+1 title columnheader(1), '
                   "x with lines lc rgb 'black' notitle, 1.25*x with lines dt 2 lc rgb 'gray' notitle, "
                   "0.75*x with lines dt 2 lc rgb 'gray' notitle",
                   "unset logscale", "set xrange [*:*]", "set yrange [*:*]", "set key outside right"]
        written.append("a2a_validation.png")
    gpf = os.path.join(dat, "plots.gp")   # paths relative to OUT: rerun with (cd OUT && gnuplot plotdata/plots.gp)
    open(gpf, "w").write("\n".join(script).replace(out + os.sep, "") + "\n")
    p = subprocess.run([gp, os.path.join("plotdata", "plots.gp")], capture_output=True, text=True, cwd=out)
    if p.returncode != 0:
        log(f"gnuplot failed (plots skipped): {p.stderr[-800:]}")
        return []
    return [w for w in written if os.path.exists(os.path.join(out, w))]


def fmt(x, nd=2):
    if isinstance(x, float):
        if x == 0:
            return "0"
        return f"{x:.{nd}f}" if abs(x) >= 10 ** -nd else f"{x:.2g}"
    return str(x)


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    out += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def us(x):
    return f"{1e6 * x:.1f} µs"


def links_markdown(model, src_rel):
    """The link constants with their sources, and the validation table."""
    lk, pub, val = model["links"], model["published"], model["validation"]
    src = pub["sources"]
    cite = lambda key: f"[{key}]({src[key]['url']})"
    L = ["#### Links, fitted to published all-to-all measurements (MODELLED)", ""]
    L.append(f"{lk['name']}. One all-to-all in which a rank sends `bytes` evenly to its P − 1 peers takes "
             "`T = a(P) + max(bytes_intra / b_intra, bytes_inter / b_inter)` (NVLink and network shares move at "
             f"the same time): a(P) = a_node for P ≤ {lk['gpus_per_node']}, a_net beyond. Bandwidths are "
             "achievable NCCL bus bandwidths, not line rates; the two fixed costs are fitted to NCCL all-to-all "
             "times (the median over the fit points of measured time minus bandwidth time). Every figure, its "
             f"source, hardware and message size is in [{pub['file']}]({src_rel}/{pub['file']}); the model reads it.")
    L.append("")
    fitpts = [v for v in val if v["role"] == "fit"]
    node = [v for v in fitpts if v["ranks"] <= lk["gpus_per_node"]]
    net = [v for v in fitpts if v["ranks"] > lk["gpus_per_node"]]
    c = pub["constants"]
    def fit_row(name, value, pts, where):
        sizes = sorted({f"{v['bytes'] / 1e6:.2f} MB per rank" for v in pts})
        times = ", ".join(f"{v['published']['time_us']:g} µs (P = {v['ranks']})" for v in pts)
        return [name, us(value), f"fit: median of (time − bandwidth time) over {len(pts)} NCCL point(s) {where}",
                ", ".join(sorted({cite(v["source"]) for v in pts})), ", ".join(sorted({v["hardware"] for v in pts})),
                ", ".join(sizes), times]
    rows = [fit_row("a_node", lk["a_node"], node, "within a node"), fit_row("a_net", lk["a_net"], net, "across nodes")]
    for key, name in (("b_intra_h100", "b_intra (H100)"), ("b_inter", "b_inter"), ("b_intra_h800", "b_intra (H800, checks only)"),
                      ("pcie_pinned", "PCIe, pinned"), ("pageable_over_pinned", "pageable / pinned"),
                      ("copy_call_s", "copy call + sync")):
        k = c[key]
        v = k["value"]
        val_s = (f"{v / 1e9:.0f} GB/s" if k["unit"] == "B/s" else us(v) if k["unit"] == "s" else f"{v:.2f}")
        rows.append([name, val_s, k.get("meaning", ""), cite(k["source"]), k["hardware"], k["message"], k["measured"]])
    L.append(table(["constant", "value", "what / how", "source", "hardware", "message", "measured"], rows))
    L.append("")
    L.append(f"Host-staged copies (the previous release) move at {lk['pcie']['pageable'] / 1e9:.1f} GB/s from pageable "
             f"memory ({lk['pcie']['pinned'] / 1e9:.0f} GB/s pinned); each copy costs {us(lk['copy_call_s'])} more for the "
             "call and the host synchronisation after it.")
    L.append("")
    checks = [v for v in val if v["role"] == "check"]
    miss = [v for v in val if not v["within_25"]]
    L.append("**Validation.** The model fed each published case's message size, against the published figure "
             "(time, or bandwidth where that is what was published; the error is in that quantity). `fit` rows "
             "calibrate a fixed cost, so their error is the spread one constant leaves; `check` rows are held out. "
             f"{sum(v['within_25'] for v in checks)} of {len(checks)} check points are within 25 %"
             + (f"; {len(miss)} point(s) are not, listed below with the reason." if miss else "."))
    L.append("")
    hdr = ["case", "library", "hardware", "P", "MB", "published", "modelled", "error", "role", "source"]
    body = []
    for v in val:
        pv = v["published"]
        pub_s = f"{pv['time_us']:g} µs" if "time_us" in pv else f"{pv['bandwidth_GBps']:g} GB/s"
        mod_s = us(v["modelled_s"]) if "time_us" in pv else f"{v['modelled_GBps']:.0f} GB/s"
        err = f"{100 * v['rel_err']:+.0f} %" + ("" if v["within_25"] else " ✗")
        body.append([v["id"], v["library"], v["hardware"], v["ranks"], f"{v['bytes'] / 1e6:.2f} ({v['bytes_kind']})",
                     pub_s, mod_s, err, v["role"], cite(v["source"])])
    L.append(table(hdr, body))
    L.append("")
    for v in miss:
        L.append(f"- `{v['id']}` ({100 * v['rel_err']:+.0f} %): " + (v["gap"] or "no explanation recorded"))
    if miss:
        L.append("")
    return L


def predictions_markdown(model, preds):
    lk = model["links"]
    head = model["headline_path"]
    other = [k for k in model["data_paths"] if k != head]
    L = ["#### Predictions (MODELLED), P up to 64, one device per rank", ""]
    L.append(f"**Data paths.** The figures headlined below are the **{head}** path "
             f"(`HEADLINE_PATH` in bench/scaling_model.py), the data path this release's code has: "
             f"{model['data_paths'][head]}. "
             + " ".join(f"Computed for comparison, **{k}**: {model['data_paths'][k]}." for k in other)
             + " Also shown: the device path with bf16 rows (half the row bytes, what DeepEP sends; today's wire "
             "format is fp32 rows plus 8 bytes of metadata per pair), and a fixed-capacity decode exchange "
             "(worst-case buffers with the counts in-band: no counts round and no host synchronisation, but "
             "every peer gets all n tokens).")
    L.append("")
    L.append("Per MoE layer, the busiest rank (its (token, expert) pairs `imb` times the mean, which scales what "
             "it receives in dispatch and sends back in combine): device = counts all-to-all + one copy of the "
             "counts to the host + dispatch + combine; host-staged = the same three all-to-alls + ten host ↔ "
             "device copies. P > 8: one expert per rank (E = P experts of the same size, top-2). `8B/H100`: the "
             "Llama-3.1-8B shape (32 layers, d = 4096) with a roofline H100 (60 % of 989 TFLOP/s, 80 % of "
             "3.35 TB/s, 5 µs per kernel). Share = exchange / step; efficiency = T(1) / (P·T(P)) for the same "
             "global load (strong scaling).")
    L.append("")
    hp = [p for p in preds if p["mode"] == preds[0]["mode"] and p["phase"] == "decode"]
    ref = next((p for p in hp if p["ranks"] == 8), None)
    if ref:
        n, E = ref["tokens_per_rank"], ref["experts"]
        rows = []
        for key, (path, elem, mem, red) in COMM_VARIANTS.items():
            if key in ("device_reduced",):
                continue
            lc = sm.layer_comm(n, model["llama8b"]["d"], E, 2, 8, lk, path, ref["rank_imbalance"], elem, red,
                               mem or "pageable")
            ncopy = len(lc["crossings"])
            pcie = sum(c[1] for c in lc["crossings"])
            rows.append([key, f"{1e6 * lc['a2a']:.1f}", ncopy, f"{pcie / 1e6:.2f}", f"{1e6 * lc['host']:.1f}",
                         f"{1e6 * lc['total']:.1f}", f"{1e3 * model['llama8b']['layers'] * lc['total']:.2f}"])
        L.append(f"One MoE layer at the reference point ({ref['mode']}, decode {ref['global_load']} sequences, P = 8, "
                 f"{n} tokens per rank, imb {ref['rank_imbalance']:.2f}, 8B shape):")
        L.append("")
        L.append(table(["variant", "all-to-alls µs", "host copies", "PCIe MB", "copies µs", "layer µs",
                        "per step ms (32 layers)"], rows))
        L.append("")
    names = {"device": "device", "device_bf16": "device bf16", "fixed": "fixed cap.", "host": "host-staged",
             "host_pinned": "host-staged pinned"}
    label = lambda k: names[k] + (" (headline)" if k == head else "")
    shown_a2a = ["device", "device_bf16", "fixed", "host", "host_pinned"]
    shown_share = ["device", "device_bf16", "host"]
    shown_eff = ["device", "host"]
    hdr = (["mode", "phase", "load", "P", "tok/rank", "imb", "MB/rank", "MB busiest", "8B compute ms"]
           + [f"a2a ms, {label(k)}" for k in shown_a2a] + [f"share, {label(k)}" for k in shown_share]
           + [f"eff., {label(k)}" for k in shown_eff])
    sfx = lambda k: "" if k == head else "_" + k
    body = []
    for p in preds:
        dec = p["phase"] == "decode"
        g = lambda k, what: p[f"h100_8b_{what}{sfx(k)}" + ("_ms" if what == "a2a" else "")]
        body.append([p["mode"], p["phase"], p["global_load"], p["ranks"], p["tokens_per_rank"], p["rank_imbalance"],
                     p["h100_8b_bytes_per_rank_step"] / 1e6, p["h100_8b_bytes_busiest_step"] / 1e6,
                     p["h100_8b_compute_ms"]]
                    + [g(k, "a2a") if dec or k != "fixed" else "–" for k in shown_a2a]
                    + [f'{100 * g(k, "a2a_share"):.0f} %' for k in shown_share]
                    + [g(k, "efficiency") for k in shown_eff])
    L.append("8B/H100 (MODELLED): MB are dispatch + combine per rank and step in fp32 rows (mean rank, and the "
             "busiest rank); times in ms per step.")
    L.append("")
    L.append(table(hdr, body))
    L.append("")
    L.append("With this machine's measured CPU compute per rank (`cpu`: the P = 1 runs' compute split over P "
             f"ranks of the same speed) and the {head} path's exchange on the modelled links:")
    L.append("")
    L.append(table(["mode", "phase", "load", "P", "MB/rank", "MB reduced", "cpu compute ms", "cpu a2a ms",
                    "cpu eff."],
                   [[p["mode"], p["phase"], p["global_load"], p["ranks"], p["bytes_per_rank_step"] / 1e6,
                     p["reduced_bytes_per_rank_step"] / 1e6, p["cpu_compute_ms"], p["cpu_a2a_ms"],
                     p["cpu_efficiency"]] for p in preds]))
    L.append("")
    return L


def balanced_markdown(meta, rows, preds, pngs, rel):
    """The balanced series next to the contiguous one: measured here, modelled up to 8 devices."""
    bal = [r for r in rows if r["mode"] == BALANCED]
    if not bal:
        return []
    ref = {(r["phase"], r["load"], r["ranks"]): r for r in rows if r["mode"] == "production:8:2"}
    L = ["#### Balanced placement (production:8:2)", ""]
    L.append("The same points with `--placement balanced --redundant-experts P --load-profile` (the profile the "
             "P = 1 run of the same point wrote): P copies of the heaviest experts, placed so that every rank "
             "carries the same load (docs/parallel.md). Logits do not change. Imbalance = max/mean of the pairs "
             "each rank's experts computed, over the run and step by step (the sum over steps of the busiest "
             "rank's pairs over the mean's), averaged over layers; MEASURED, times the maximum over ranks.")
    L.append("")
    hdr = ["phase", "load", "P", "step ms", "step ms bal.", "bal./contig.", "experts ms", "experts ms bal.",
           "combine ms", "combine ms bal.", "MB sent", "MB sent bal.", "imb run", "imb run bal.", "imb steps",
           "imb steps bal."]
    body = []
    for b in sorted(bal, key=lambda r: (r["phase"], r["load"], r["ranks"])):
        c = ref.get((b["phase"], b["load"], b["ranks"]))
        if not c:
            continue
        body.append([b["phase"], b["load"], f'{b["ranks"]}{" †" if b["oversubscribed"] else ""}', c["step_ms"],
                     b["step_ms"], b["step_ms"] / c["step_ms"] if c["step_ms"] else 0.0, c["experts_ms"],
                     b["experts_ms"], c["combine_ms"], b["combine_ms"], c["bytes_sent_rank"] / 1e6,
                     b["bytes_sent_rank"] / 1e6, c["rank_imbalance"], b["rank_imbalance"], c["step_rank_imbalance"],
                     b["step_rank_imbalance"]])
    L.append(table(hdr, body))
    L.append("")
    exp = meta.get("balance_expected") or {}
    if exp:
        L.append("Expected rank imbalance on the profile (build/bench_balance: each expert's load split evenly over "
                 "its copies; mean over layers, worst layer in brackets), the factor the model below applies:")
        L.append("")
        rows_e = []
        for phase, loads in exp.items():
            for load, per_p in loads.items():
                for P, v in sorted(per_p.items(), key=lambda kv: int(kv[0])):
                    rows_e.append([phase, load, P, f'{v["contiguous"]:.3f} ({v["contiguous_worst"]:.3f})',
                                   f'{v["balanced"]:.3f} ({v["balanced_worst"]:.3f})'])
        L.append(table(["phase", "load", "P", "contiguous", f"balanced, R = P"], rows_e))
        L.append("")
    mp = {(p["mode"], p["phase"], p["ranks"]): p for p in preds}
    body = []
    for p in preds:
        if p["mode"] != BALANCED or p["ranks"] == 1:
            continue
        c = mp.get(("production:8:2", p["phase"], p["ranks"]))
        if not c:
            continue
        body.append([p["phase"], p["global_load"], p["ranks"], c["rank_imbalance"], p["rank_imbalance"],
                     c["h100_8b_bytes_busiest_step"] / 1e6, p["h100_8b_bytes_busiest_step"] / 1e6,
                     c["h100_8b_compute_ms"], p["h100_8b_compute_ms"], c["h100_8b_a2a_ms"], p["h100_8b_a2a_ms"],
                     c["h100_8b_step_ms"], p["h100_8b_step_ms"],
                     f'{100 * (1 - p["h100_8b_step_ms"] / c["h100_8b_step_ms"]):.0f} %'])
    if body:
        L.append("MODELLED, Llama-3.1-8B shape on H100s (device path), up to 8 devices. Rank imbalance per step "
                 "= the sampling term of uniform routing for the step's tokens × the router's skew (the model "
                 "above); balanced, the skew times balanced / contiguous of the table above (what the placement "
                 "leaves of the contiguous imbalance on the profile). MB = dispatch + combine of the busiest rank "
                 "per step.")
        L.append("")
        L.append(table(["phase", "load", "P", "imb", "imb bal.", "MB busiest", "MB busiest bal.", "compute ms",
                        "compute ms bal.", "a2a ms", "a2a ms bal.", "step ms", "step ms bal.", "step saved"], body))
        L.append("")
    if "balanced.png" in pngs:
        L += [f"![{PLOTS['balanced.png']}]({rel}/balanced.png)", ""]
    return L


def markdown(meta, rows, model, preds, pngs, rel, src_rel):
    m = meta["machine"]
    s = meta["size"]
    L = []
    L.append(f"Measured by `{meta['command']}` on {meta['date']} in {meta['run_time_s']:.0f} s"
             + (f"; model, tables and plots redone from its scaling.json by `bench/scaling.py --remodel` on "
                f"{model['remodelled']}." if model.get("remodelled") else "."))
    L.append("")
    L.append(f"**Machine**: {m['cores']} CPU cores usable ({m['cpu_model']}, `nproc` {m['nproc']}), "
             f"{m['memory_gib']} GiB, {m['mpi']}, shared-memory transport (vader, single-copy off). "
             f"Points with more ranks than cores are marked **†** ({OVERSUB_NOTE}).")
    L.append("")
    L.append(f"**Model**: synthetic Llama, hidden {s['hidden_size']}, FFN {s['intermediate_size']}, "
             f"{s['num_hidden_layers']} layers, {s['num_attention_heads']} heads / {s['num_key_value_heads']} KV heads, "
             f"vocab {s['vocab_size']}, {s.get('torch_dtype', '?')} weights (fp32 compute). upcycle and production "
             "run from checkpoints made once with `llamoe-convert` (same experts and router as the on-the-fly "
             "modes, one copy of the weights per expert); identity and dense run on the fly.")
    L.append("")
    L.append(f"**Loads**: decode = B one-token prompts, {meta['sweep']['steps']} timed steps after "
             f"{meta['sweep']['warmup']} warm-up steps (`--warmup`), B/P sequences per rank; prefill = 8 prompts "
             "of T/8 tokens in one step per rank (`--step-tokens T`), after one warm-up prefill. Times are per "
             "step and the **maximum over ranks** (the slowest rank sets the pace); dispatch and combine include "
             "waiting for the other ranks. "
             f"Best of {meta['sweep']['repeats']} runs for points with P ≤ cores (`spread` in the CSV: worst/best), "
             "one run when oversubscribed.")
    L.append("")
    L.append(f"Files: [{rel}/scaling.csv]({rel}/scaling.csv), [{rel}/scaling.json]({rel}/scaling.json) "
             f"(measured), [{rel}/model.csv]({rel}/model.csv), [{rel}/model.json]({rel}/model.json) (modelled).")
    L.append("")
    L.append("#### Measured")
    L.append("")
    hdr = ["phase", "load", "mode", "P", "cores/rank", "step ms", "tok/s", "attn", "router", "dispatch", "experts",
           "combine", "rest", "sent MB", "recv MB", "imb expert", "imb rank", "RSS MB"]
    body = []
    for r in rows:
        rest = r["dense_ffn_ms"] + r["lm_head_ms"] + r["other_ms"]
        body.append([r["phase"], r["load"], r["mode"], f'{r["ranks"]}{" †" if r["oversubscribed"] else ""}',
                     fmt(r["cores_per_rank"]), r["step_ms"], r["tok_s"], r["attention_ms"], r["router_ms"],
                     r["dispatch_ms"], r["experts_ms"], r["combine_ms"], rest, r["bytes_sent_rank"] / 1e6,
                     r["bytes_recv_rank"] / 1e6, r["expert_imbalance"] if r["mode"] != "dense" else "",
                     r["rank_imbalance"] if r["mode"] != "dense" else "", r["peak_rss_mb"]])
    L.append("Per step; times in ms (max over ranks); MB sent/received per rank (max over ranks); imbalance = "
             "max/mean of (token, expert) choices per expert and per rank, averaged over layers; `rest` = dense FFN "
             "(dense mode), LM head and the remainder; RSS = peak resident memory of the largest rank.")
    L.append("")
    L.append(table(hdr, body))
    L.append("")
    L += balanced_markdown(meta, rows, preds, pngs, rel)
    model_pngs = ("a2a_validation.png", "model_efficiency.png", "balanced.png")
    img = lambda p: [f"![{PLOTS.get(p, p)}]({rel}/{p})", ""]
    for p in pngs:
        if p not in model_pngs:
            L += img(p)
    L.append("#### Model check (MODELLED against MEASURED)")
    L.append("")
    te, cf = model["traffic_error"], model["cpu_fit"]
    te16 = model.get("traffic_error_16_plus", {})
    if te.get("n"):
        L.append(f"Traffic model vs measured bytes sent per rank (max over ranks), {te['n']} points with P > 1: "
                 f"median |error| {100 * te['median_abs']:.1f} %, worst {100 * te['max_abs']:.1f} %"
                 + (f"; with 16 or more tokens per step, worst {100 * te16['max_abs']:.1f} % ({te16['n']} points)."
                    if te16.get("n") else "."))
        L.append("")
    beta = cf["beta_bytes_per_s"]
    gbs = lambda b: b / 1e9 if b != float("inf") else float("inf")
    L.append(f"CPU shared-memory transport, t = α·3(P−1) + bytes/β per layer and step (exchange time of the "
             f"rank that waited least): fitted on all {cf['points']} points with P = 2..4, "
             f"α = {1e6 * cf['alpha_s']:.0f} µs per message, β = {gbs(beta):.2f} GB/s; fitted on the "
             f"{cf['points_not_oversubscribed']} points that are not oversubscribed (P = 2), "
             f"α = {1e6 * cf['alpha_s_not_oversubscribed']:.0f} µs, β = {gbs(cf['beta_not_oversubscribed']):.2f} GB/s. "
             "The step check below uses the P = 2 fit for P = 2 and the P = 2..4 fit for the oversubscribed points.")
    L.append("")
    for key, what in (("step_error_not_oversubscribed", "P ≤ cores"), ("step_error_oversubscribed", "oversubscribed †")):
        e = model[key]
        if e.get("n"):
            L.append(f"Step-time model vs measured, {what}: {e['n']} points, median |error| "
                     f"{100 * e['median_abs']:.0f} %, worst {100 * e['max_abs']:.0f} %, mean signed {100 * e['mean']:+.0f} %.")
            L.append("")
    hdr = ["phase", "load", "mode", "P", "measured ms", "modelled ms", "error", "model compute", "model comm",
           "meas. comm min", "meas. comm max"]
    body = [[c["phase"], c["load"], c["mode"], f'{c["ranks"]}{" †" if c["oversubscribed"] else ""}',
             c["measured_step_ms"], c["modelled_step_ms"], f'{100 * c["rel_err"]:+.0f} %', c["modelled_compute_ms"],
             c["modelled_comm_ms"], c["measured_comm_min_ms"], c["measured_comm_max_ms"]] for c in model["step_check"]]
    L.append("<details><summary>Every point of the step-time check</summary>")
    L.append("")
    L.append(table(hdr, body))
    L.append("")
    L.append("</details>")
    L.append("")
    tc = model["traffic_check"]
    if tc:
        L.append("Traffic, exact versus reduced combine: dispatch + combine MB per rank per step (max over ranks). "
                 "Reduced = one combine row per (token, owner rank) instead of one per (token, expert): its "
                 "measured value is the measured dispatch bytes plus one row back per row dispatched.")
        L.append("")
        hdr = ["phase", "load", "mode", "P", "measured exact", "modelled exact", "error",
               "measured reduced", "modelled reduced"]
        dec = [e for e in tc if e["phase"] == "decode"]
        show = [e for e in dec if e["load"] == max(x["load"] for x in dec)] if dec else tc
        L.append(table(hdr, [[e["phase"], e["load"], e["mode"], e["ranks"], e["measured_bytes"] / 1e6,
                              e["modelled_bytes"] / 1e6, f'{100 * e["rel_err"]:+.1f} %',
                              e["measured_reduced_total"] / 1e6, e["modelled_reduced_total"] / 1e6] for e in show]))
        L.append("")
    L += links_markdown(model, src_rel)
    if "a2a_validation.png" in pngs:
        L += img("a2a_validation.png")
    L += predictions_markdown(model, preds)
    if "model_efficiency.png" in pngs:
        L += img("model_efficiency.png")
    L.append("Reduced versus exact combine, MODELLED bytes per token and rank (uniform routing, d = 4096 fp32 rows): "
             "the exact combine returns one row per remote (token, expert) pair, the reduced one row per remote "
             "owner rank.")
    L.append("")
    hdr = ["experts E", "top-k", "P", "dispatch rows", "exact combine rows", "reduced combine rows",
           "combine saved", "dispatch + combine saved"]
    body = []
    for E, k in ((8, 2), (8, 8), (64, 8), (256, 8)):
        for P in (2, 4, 8, 16, 64):
            if P > E:
                continue
            tb = sm.layer_bytes(1, 4096, E, k, P)
            body.append([E, k, P, tb["rows"], tb["pairs"], tb["rows"], f'{100 * (1 - tb["rows"] / tb["pairs"]):.0f} %',
                         f'{100 * (tb["combine"] - tb["reduced"]) / (tb["dispatch"] + tb["combine"]):.0f} %'])
    L.append(table(hdr, body))
    L.append("")
    return "\n".join(L)


def update_docs(path, section):
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    block = f"{BEGIN}\n{section}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## Scaling across expert-parallel degrees\n\n" + block + "\n"
    tmp = path + ".tmp"
    open(tmp, "w").write(text)
    os.replace(tmp, path)


def main():
    t0 = time.time()
    a = parse_args()
    a.out = os.path.abspath(a.out)
    os.makedirs(a.out, exist_ok=True)
    build = a.build if a.remodel else os.path.abspath(a.build if os.path.isabs(a.build) or os.path.isdir(a.build) else os.path.join(SRC, a.build))
    for prog in () if a.remodel else ("llamoe-ep", "llamoe-mkmodel", "llamoe-convert") + (("bench_balance",) if a.balanced else ()):
        if not os.access(os.path.join(build, prog), os.X_OK):
            die(f"{build}/{prog} not found: build first (cmake --build) or pass --build DIR")
    if not a.remodel and not shutil.which("mpirun"):
        die("mpirun not found (Open MPI: apt-get install openmpi-bin)")
    for k, v in (("OMPI_ALLOW_RUN_AS_ROOT", "1"), ("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"),
                 ("OMPI_MCA_btl_vader_single_copy_mechanism", "none")):
        os.environ.setdefault(k, v)
    if a.remodel:
        measured = os.path.join(a.out, "scaling.json")
        try:
            old = json.load(open(measured))
            meta, rows, raw, cfg = old["meta"], old["points"], old["runs"], old["meta"]["size"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            die(f"--remodel: {measured}: cannot read the measured points ({e!r})")
        model, preds = model_section(rows, cfg, meta.get("balance_expected"))
        model["remodelled"] = time.strftime("%Y-%m-%d %H:%M %Z")
    else:
        machine = machine_info()
        models, cfg = prepare_models(a, build)
        log(f"{machine['cores']} cores ({machine['cpu_model']}); sweep {a.sweep}")
        rows, raw = sweep(a, build, models, cfg, machine)
        balance = expected_balance(a, build, models, os.path.join(a.out, "prompts"))
        model, preds = model_section(rows, cfg, balance)
        meta = {"command": "bench/scaling.py " + " ".join(sys.argv[1:]), "date": time.strftime("%Y-%m-%d %H:%M %Z"),
                "run_time_s": time.time() - t0, "machine": machine, "size": cfg, "sweep": a.sweep,
                "size_name": a.size, "label": "MEASURED"}
        if balance:
            meta["balance_expected"] = balance
    if not a.remodel:   # --remodel leaves the measured files as they are
        write_csv(os.path.join(a.out, "scaling.csv"), rows, CSV_COLUMNS)
        json.dump({"meta": meta, "points": rows, "runs": raw}, open(os.path.join(a.out, "scaling.json"), "w"), indent=None)
    pred_cols = list(preds[0].keys()) if preds else ["label"]
    write_csv(os.path.join(a.out, "model.csv"), preds, pred_cols)
    json.dump({"meta": meta, "model": model, "predictions": preds},
              open(os.path.join(a.out, "model.json"), "w"), indent=1, default=str)
    pngs = plots(a.out, rows, preds, model)
    where = os.path.dirname(os.path.abspath(a.docs)) if a.docs != "none" else a.out
    rel = os.path.relpath(a.out, where) if a.docs != "none" else "."
    section = markdown(meta, rows, model, preds, pngs, rel, os.path.relpath(SRC, where))
    open(os.path.join(a.out, "scaling.md"), "w").write(section + "\n")
    if a.docs != "none":
        update_docs(a.docs, section)
        log(f"updated {a.docs}")
    log(f"done in {time.time() - t0:.0f} s: {len(rows)} points in {a.out}")


if __name__ == "__main__":
    main()
