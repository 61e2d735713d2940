#!/usr/bin/env python3
"""llamoe versus llama.cpp on the same weights and threads, measured side by side.

Takes a llama.cpp build directory (llama-bench) and its source tree (convert_hf_to_gguf.py),
a dense Llama directory and optionally a Mixtral directory (for example the one
`llamoe-convert --moe production:8:2` writes from it). Converts each to a BF16 GGUF with the
converter of that llama.cpp tree (once; kept beside --out), then runs, round by round,
interleaved on the same cores:

  read bandwidth   bench_ops --read-bandwidth (a plain read of 2 GiB: the decode bound)
  llama.cpp        llama-bench -p 512 -n 32 -t THREADS
  llamoe           llamoe-ep: 32 greedy tokens after a short prompt (decode), and a
                   512-token prompt in one step (prefill), --threads THREADS; the dense
                   model with --moe dense, the Mixtral one with its own experts

and prints a markdown table of the medians with the ratios (llamoe / llama.cpp, the median
of the per-round ratios), writing OUT/peers.json, OUT/peers.csv and OUT/peers.md. Builds
nothing and fetches nothing; llamoe does not depend on llama.cpp. llama.cpp's source ships
inside the llama-cpp-python sdist on PyPI:

  pip download --no-binary :all: --no-deps llama-cpp-python    # then unpack vendor/llama.cpp
  cmake -S llama.cpp -B llama.cpp/build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF
  cmake --build llama.cpp/build -j2 --target llama-bench
  bench/peers/compare.py --llama-cpp llama.cpp/build --model M8B2 --moe-model M8B2-MOE --out DIR

On a machine shared with other jobs add --clock cpu: every figure then comes from CPU time
(the difference of two runs of each tool that differ only in the work measured).

The converter needs the Python packages of llama.cpp's requirements (gguf from the same
tree is put on PYTHONPATH; numpy, torch, safetensors, transformers, sentencepiece).
"""
import argparse, csv, json, os, random, resource, shutil, statistics, subprocess, sys, time


def run(cmd, env=None):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"compare: {' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    return p.stdout


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def cpu_run(cmd):
    """Output and CPU seconds (user + system, all threads) of one run."""
    t0 = cpu_seconds()
    out = run(cmd)
    return out, cpu_seconds() - t0


def uptime():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def cpu_name():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def find_converter(build, src):
    for d in [src] if src else [os.path.join(build, ".."), os.path.join(build, "..", "..")]:
        p = os.path.join(d, "convert_hf_to_gguf.py")
        if os.path.exists(p):
            return os.path.abspath(p)
    sys.exit("compare: convert_hf_to_gguf.py not found beside the build directory; pass --llama-src")


def make_gguf(converter, model, out):
    if os.path.exists(out):
        return
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.join(os.path.dirname(converter), "gguf-py") + os.pathsep + env.get("PYTHONPATH", "")
    print(f"compare: converting {model} -> {out}", file=sys.stderr)
    run([sys.executable, converter, model, "--outtype", "bf16", "--outfile", out + ".tmp"], env)
    os.replace(out + ".tmp", out)


# --clock cpu: throughput from CPU time, for a machine shared with other jobs (where the wall
# clock mostly measures their time slices). Each figure is the difference of two runs that
# differ only in the work measured (so model loading, warm-up and start-up cancel), as
# tokens x threads / CPU seconds: the rate the run would have with its threads' cores to
# itself, spin-waiting at barriers counted as work.
def llama_bench_cpu(bench, gguf, threads):
    base = [bench, "-m", gguf, "-t", str(threads), "-o", "json"]
    r = {}
    for key, args, tokens in (("prefill", ["-p", "512", "-n", "0"], 512), ("decode", ["-p", "0", "-n", "32"], 32)):
        _, c1 = cpu_run(base + args + ["-r", "1"])
        _, c3 = cpu_run(base + args + ["-r", "3"])
        r[key] = 2 * tokens * threads / (c3 - c1)
    return r


def llamoe_cpu(ep, model, moe, threads, decode_ids, prefill_ids):
    base = [ep, "-m", model, "--threads", str(threads), "--json"] + moe
    _, p0 = cpu_run(base + ["--ids", prefill_ids, "-n", "1", "--step-tokens", "512"])
    _, p1 = cpu_run(base + ["--ids", prefill_ids, "-n", "1", "--step-tokens", "512", "--warmup", "1"])
    _, d32 = cpu_run(base + ["--ids", decode_ids, "-n", "32"])
    _, d64 = cpu_run(base + ["--ids", decode_ids, "-n", "64"])
    return {"prefill": 512 * threads / (p1 - p0), "decode": 32 * threads / (d64 - d32)}


def llama_bench(bench, gguf, threads):
    out = run([bench, "-m", gguf, "-p", "512", "-n", "32", "-t", str(threads), "-r", "1", "-o", "json"])
    rows = json.loads(out)
    r = {}
    for row in rows:
        key = "prefill" if row["n_prompt"] > 0 else "decode"
        r[key] = row["avg_ts"]
    return r


def llamoe(ep, model, moe, threads, decode_ids, prefill_ids):
    base = [ep, "-m", model, "--threads", str(threads), "--json"] + moe
    dec = json.loads(run(base + ["--ids", decode_ids, "-n", "32", "--warmup", "2"]))
    pre = json.loads(run(base + ["--ids", prefill_ids, "-n", "1", "--step-tokens", "512", "--warmup", "1"]))
    return {"decode": dec["timings"]["decode_tok_s"], "prefill": pre["timings"]["prefill_tok_s"]}


def read_bandwidth(bench_ops, threads, clock):
    out = run([bench_ops, "--read-bandwidth", "--threads", str(threads)] + (["--cpu-time"] if clock == "cpu" else []))
    return float(out.strip().splitlines()[-1].split()[11])


def decode_bytes(model):
    """Weight bytes one decode token reads (BF16): the LM head and every layer's attention,
    norms and FFN (for a Mixtral, the router and k of its experts); not the embedding table."""
    with open(os.path.join(model, "config.json")) as f:
        c = json.load(f)
    d, ff, L = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    hd = c.get("head_dim") or d // c["num_attention_heads"]
    attn = d * hd * (2 * c["num_attention_heads"] + 2 * c["num_key_value_heads"])
    k, e = c.get("num_experts_per_tok", 1), c.get("num_local_experts", 0)
    ffn = k * 3 * d * ff + e * d
    return 2 * (c["vocab_size"] * d + L * (attn + ffn + 2 * d) + d)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llama-cpp", required=True, help="llama.cpp build directory (holds bin/llama-bench)")
    ap.add_argument("--llama-src", help="llama.cpp source tree (default: the build directory's parent)")
    ap.add_argument("--model", required=True, help="dense Llama directory (BF16)")
    ap.add_argument("--moe-model", help="Mixtral directory, e.g. from llamoe-convert --moe production:8:2")
    ap.add_argument("--build", default="build", help="llamoe build directory")
    ap.add_argument("--baseline-build", help="another llamoe build (for example before a change), run in the same rounds")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall: the tools' own figures; cpu: from CPU time (a machine shared with other jobs)")
    ap.add_argument("--out", required=True, help="results directory (outside the source tree: the GGUFs are written there)")
    a = ap.parse_args()

    bench = os.path.join(a.llama_cpp, "bin", "llama-bench")
    ep, bench_ops = os.path.join(a.build, "llamoe-ep"), os.path.join(a.build, "bench_ops")
    base_ep = os.path.join(a.baseline_build, "llamoe-ep") if a.baseline_build else None
    for p in (bench, ep, bench_ops) + ((base_ep,) if base_ep else ()):
        if not os.access(p, os.X_OK):
            sys.exit(f"compare: {p}: not an executable")
    converter = find_converter(a.llama_cpp, a.llama_src)
    os.makedirs(a.out, exist_ok=True)
    # llamoe-ep runs a dense checkpoint as upcycle:8:2 unless told otherwise (twice the FFN
    # work): the dense row asks for the dense model, the Mixtral row runs its own experts.
    models = [("dense", a.model)] + ([("moe", a.moe_model)] if a.moe_model else [])
    llamoe_moe = {"dense": ["--moe", "dense"], "moe": []}
    ggufs = {}
    for name, d in models:
        ggufs[name] = os.path.join(a.out, os.path.basename(os.path.normpath(d)) + "-bf16.gguf")
        make_gguf(converter, d, ggufs[name])

    rnd = random.Random(1)   # the same prompts for every round and every build
    decode_ids = "128000," + ",".join(str(rnd.randrange(1000, 120000)) for _ in range(7))
    prefill_ids = "128000," + ",".join(str(rnd.randrange(1000, 120000)) for _ in range(511))

    rounds = []
    for r in range(a.rounds):
        row = {"round": r + 1, "load_before": uptime(), "read_gbps": read_bandwidth(bench_ops, a.threads, a.clock)}
        for name, d in models:   # alternate which runs first, so neither always gets the warmer machine
            order = ["llama.cpp", "llamoe"] + (["baseline"] if base_ep else [])
            order = order if r % 2 == 0 else order[::-1]
            for who in order:
                lb, lm = (llama_bench_cpu, llamoe_cpu) if a.clock == "cpu" else (llama_bench, llamoe)
                res = lb(bench, ggufs[name], a.threads) if who == "llama.cpp" else \
                    lm(ep if who == "llamoe" else base_ep, d, llamoe_moe[name], a.threads, decode_ids, prefill_ids)
                for k, v in res.items():
                    row[f"{name}_{who}_{k}"] = v
        row["load_after"] = uptime()
        rounds.append(row)
        print(f"compare: round {r + 1}: " + ", ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                                                     for k, v in row.items()), file=sys.stderr)

    med = lambda key: statistics.median(x[key] for x in rounds)
    span = lambda key: (min(x[key] for x in rounds), max(x[key] for x in rounds))
    table = []
    for name, d in models:
        entry = {"model": name, "path": d, "llamoe_args": llamoe_moe[name], "decode_bytes": decode_bytes(d)}
        for k in ("decode", "prefill"):
            lc, lm = f"{name}_llama.cpp_{k}", f"{name}_llamoe_{k}"
            entry[k] = {"llama.cpp": med(lc), "llama.cpp_range": span(lc), "llamoe": med(lm), "llamoe_range": span(lm),
                        "ratio": statistics.median(x[lm] / x[lc] for x in rounds)}
        if base_ep:
            for k in ("decode", "prefill"):
                lb, lm = f"{name}_baseline_{k}", f"{name}_llamoe_{k}"
                entry[k].update({"baseline": med(lb), "baseline_range": span(lb),
                                 "vs_baseline": statistics.median(x[lm] / x[lb] for x in rounds)})
        table.append(entry)
    summary = {"cpu": cpu_name(), "threads": a.threads, "clock": a.clock, "rounds": rounds, "table": table,
               "read_gbps": med("read_gbps"), "read_gbps_range": span("read_gbps"),
               "date": time.strftime("%Y-%m-%d %H:%M")}
    with open(os.path.join(a.out, "peers.json"), "w") as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(a.out, "peers.csv"), "w", newline="") as f:
        wr = csv.writer(f)
        keys = list(rounds[0].keys())
        wr.writerow(keys)
        for x in rounds:
            wr.writerow([x[k] for k in keys])

    lines = [f"{a.rounds} rounds, {a.threads} threads, {a.clock} clock, {cpu_name()}; load averages "
             f"{rounds[0]['load_before']} .. {rounds[-1]['load_after']}; plain read of 2 GiB "
             f"{summary['read_gbps']:.1f} GB/s (range {summary['read_gbps_range'][0]:.1f}-{summary['read_gbps_range'][1]:.1f})",
             "",
             "| model (BF16) | llama.cpp decode tok/s | llamoe decode | ratio | llamoe decode GB/s (% of read) | llama.cpp prefill 512 tok/s | llamoe prefill | ratio |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for e in table:
        dd, pp = e["decode"], e["prefill"]
        rng = lambda v, r: f"{v:.1f} ({r[0]:.1f}-{r[1]:.1f})"
        lines.append(f"| {e['model']} | {rng(dd['llama.cpp'], dd['llama.cpp_range'])} | {rng(dd['llamoe'], dd['llamoe_range'])} | "
                     f"{dd['ratio']:.2f} | {dd['llamoe'] * e['decode_bytes'] * 1e-9:.1f} ({100 * dd['llamoe'] * e['decode_bytes'] * 1e-9 / summary['read_gbps']:.0f}%) | {rng(pp['llama.cpp'], pp['llama.cpp_range'])} | {rng(pp['llamoe'], pp['llamoe_range'])} | {pp['ratio']:.2f} |")
    if base_ep:
        lines += ["", f"llamoe against the baseline build {a.baseline_build} in the same rounds:", "",
                  "| model | baseline decode tok/s | decode now / baseline | baseline prefill tok/s | prefill now / baseline |",
                  "|---|---:|---:|---:|---:|"]
        for e in table:
            dd, pp = e["decode"], e["prefill"]
            lines.append(f"| {e['model']} | {dd['baseline']:.1f} | {dd['vs_baseline']:.2f} | {pp['baseline']:.1f} | {pp['vs_baseline']:.2f} |")
    md = "\n".join(lines) + "\n"
    with open(os.path.join(a.out, "peers.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
