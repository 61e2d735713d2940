#!/usr/bin/env python3
"""The steps of tests/gpu/gpu_check.sh (standard library only): each subcommand runs a program
the way one check needs, compares, and writes one JSON file.

  env        the machine: nvidia-smi, compilers, Python modules, the NCCL wheels
  ops        test_ops over every case; a case that ends the process is recorded and the
             program run again from the next case, so every other case still reports
  expected   bundled model: greedy ids of every expected.json prompt per mode and backend
  backends   the same long prompt on --backend cpu and cuda: ids and logits compared
  ranks      1 rank vs P ranks (one GPU, a transport): ids equal, logits bitwise/max diff
  perf8b     synthetic Llama 3.1 8B-shaped model: decode ms/token and prefill tokens/s per
             mode against the weight-read bound; greedy agreement of the modes with dense
  summary    steps.jsonl + every result file -> one summary.json
Exit status 0 when everything compared agrees, 1 otherwise.
"""
import argparse
import glob
import json
import os
import shlex
import struct
import subprocess
import sys
import time


def ep(args, launcher="", timeout=600):
    """Runs llamoe-ep with --json; returns (parsed JSON, seconds)."""
    cmd = shlex.split(launcher) + args + ["--json"]
    t = time.time()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
    dt = time.time() - t
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:12])}... exited {p.returncode}: {p.stderr.strip()[-600:]}")
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    return json.loads(lines[-1]), dt


def read_f32(path):
    data = open(path, "rb").read()
    return struct.unpack(f"{len(data) // 4}f", data)


def max_diff(a, b):
    return max((abs(x - y) for x, y in zip(a, b)), default=0.0) if len(a) == len(b) else float("inf")


def write_result(a, out, ok):
    out["ok"] = ok
    with open(a.json, "w") as f:
        json.dump(out, f, indent=1)
    return 0 if ok else 1


def ids_str(ids):
    return ",".join(str(i) for i in ids)


# ---------------------------------------------------------------------------- env
def cmd_env(a):
    import platform

    def sh(c):
        try:
            return subprocess.run(c, shell=True, capture_output=True, text=True, timeout=30).stdout.strip()
        except Exception as e:  # noqa: BLE001
            return f"error: {e}"
    info = {"uname": platform.uname()._asdict(), "os": sh(". /etc/os-release; echo $PRETTY_NAME"),
            "nvidia_smi": sh("nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap,clocks.max.memory --format=csv,noheader"),
            "nvidia_smi_l": sh("nvidia-smi -L"), "nvcc": sh("nvcc --version | tail -2"), "gcc": sh("gcc --version | head -1"),
            "cmake": sh("cmake --version | head -1"), "compute_sanitizer": sh("command -v compute-sanitizer"),
            "nproc": os.cpu_count(), "python": sys.version.split()[0]}
    for mod in ("torch", "transformers", "numpy", "safetensors"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception as e:  # noqa: BLE001
            info[mod] = f"missing ({e.__class__.__name__})"
    info["pip_nvidia"] = sh("python3 -m pip list 2>/dev/null | grep -i -E 'nvidia-(nccl|cublas|cuda-runtime)'")
    json.dump(info, open(a.json, "w"), indent=1)
    print(json.dumps(info, indent=1))
    return 0


# ---------------------------------------------------------------------------- ops
def cmd_ops(a):
    """Runs test_ops until every case has run: a case that ends the process (a die() inside a
    library call) is recorded as failed with the message, and the program starts again after it."""
    out = {"backend": a.backend, "cases": [], "ended_in": [], "runs": 0}
    start = 0
    while out["runs"] < 50:
        part = a.json + ".part"
        cmd = shlex.split(a.wrap) + [a.test, a.src, "--backend", a.backend, "--json", part, "--from", str(start)]
        if a.force_fail:
            cmd += ["--force-fail", a.force_fail]
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=a.timeout)
        print(p.stdout, end="", flush=True)
        out["runs"] += 1
        if p.returncode == 77:
            out["skipped"] = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else "skipped"
            json.dump(out, open(a.json, "w"), indent=1)
            return 77
        try:
            j = json.load(open(part))
        except Exception as e:  # noqa: BLE001  (ended before the JSON was closed: should not happen)
            out["ended_in"].append({"from": start, "error": f"unreadable JSON: {e}", "tail": p.stdout[-800:]})
            break
        out["device"] = j.get("device")
        out["cases"] += j["cases"]
        if not j.get("ended_in"):
            break
        # The case after the last recorded one ended the process: record it, go on after it.
        tail = [l for l in p.stdout.splitlines() if l.strip()][-3:]
        out["ended_in"].append({"case": j["ended_in"], "index": start + len(j["cases"]), "message": tail})
        out["cases"].append({"op": j["ended_in"].split()[0], "case": j["ended_in"], "error": 1e308, "tol": 0,
                             "ok": False, "ended_process": True})
        start += len(j["cases"]) + 1
    out["passed"] = sum(1 for c in out["cases"] if c["ok"])
    out["failed"] = sum(1 for c in out["cases"] if not c["ok"])
    json.dump(out, open(a.json, "w"), indent=1)
    print(f"ops: {out['passed']} passed, {out['failed']} failed over {out['runs']} run(s)"
          f"{'; ended the process: ' + ', '.join(e.get('case', '?') for e in out['ended_in']) if out['ended_in'] else ''}")
    return 0 if out["failed"] == 0 else 1


# ---------------------------------------------------------------------------- expected
def cmd_expected(a):
    exp = json.load(open(os.path.join(a.src, "models/stories260k/expected.json")))
    model = os.path.join(a.src, "models/stories260k")
    out = {"backend": a.backend, "transport": a.transport, "launcher": a.launcher, "runs": []}
    ok = True
    for mode in a.modes.split(","):
        for case in exp["cases"]:
            r = {"mode": mode, "prompt": case["prompt"]}
            try:
                j, dt = ep([a.ep, "-m", model, "--moe", mode, "--backend", a.backend, "--transport", a.transport,
                            "--ids", ids_str(case["prompt_ids"]), "-n", str(len(case["greedy_ids"]))], a.launcher)
                r.update(seconds=round(dt, 2), match=j["generated_ids"] == case["greedy_ids"])
                if not r["match"]:
                    r["first_mismatch"] = next((i for i, (x, y) in enumerate(zip(j["generated_ids"], case["greedy_ids"])) if x != y),
                                               min(len(j["generated_ids"]), len(case["greedy_ids"])))
            except Exception as e:  # noqa: BLE001
                r.update(match=False, error=str(e))
            ok = ok and r["match"]
            out["runs"].append(r)
            print(f"expected {a.backend:4s} {a.transport:4s} {mode:12s} {case['prompt'][:30]!r:34s} "
                  f"{'ok' if r['match'] else 'MISMATCH ' + str(r.get('first_mismatch', r.get('error', '')))}", flush=True)
    return write_result(a, out, ok)


# ---------------------------------------------------------------------------- backends
LONG_PROMPT = [1] + [(i * 37 + 11) % 500 + 3 for i in range(59)]   # 60 tokens: cuBLASLt prefill, attention tiles


def cmd_backends(a):
    model = a.model or os.path.join(a.src, "models/stories260k")
    out = {"model": model, "runs": []}
    ok = True
    for mode in a.modes.split(","):
        r = {"mode": mode}
        try:
            res = {}
            for be in ("cpu", "cuda"):
                dump = os.path.join(a.work, f"backends_{be}_{mode.replace(':', '_')}.f32")
                j, _ = ep([a.ep, "-m", model, "--moe", mode, "--backend", be, "--ids", ids_str(LONG_PROMPT), "-n", str(a.n),
                           "--step-tokens", str(a.step), "--dump-logits", dump], a.launcher)
                res[be] = (j["generated_ids"], read_f32(dump))
            r["ids_equal"] = res["cpu"][0] == res["cuda"][0]
            r["max_abs_logit_diff"] = max_diff(res["cpu"][1], res["cuda"][1])
            r["max_abs_logit"] = max(abs(x) for x in res["cpu"][1])
            r["ok"] = r["ids_equal"] and r["max_abs_logit_diff"] <= a.tol * max(1.0, r["max_abs_logit"])
        except Exception as e:  # noqa: BLE001
            r.update(ok=False, error=str(e))
        ok = ok and r["ok"]
        out["runs"].append(r)
        print(f"backends cpu vs cuda {mode:12s} ids {'equal' if r.get('ids_equal') else 'DIFFER'} "
              f"max|dlogit| {r.get('max_abs_logit_diff', float('nan')):.3e} {'ok' if r['ok'] else 'FAIL ' + r.get('error', '')}", flush=True)
    return write_result(a, out, ok)


# ---------------------------------------------------------------------------- ranks
def cmd_ranks(a):
    model = a.model or os.path.join(a.src, "models/stories260k")
    out = {"model": model, "backend": a.backend, "transport": a.transport, "ranks": a.np, "extra_n": a.extra_n, "runs": []}
    ok = True
    for mode in a.modes.split(","):
        r = {"mode": mode}
        try:
            res = {}
            for np_ in (1, a.np):
                dump = os.path.join(a.work, f"ranks{np_}_{a.transport}_{mode.replace(':', '_')}.f32")
                extra = shlex.split(a.extra_n) if np_ != 1 else []
                j, dt = ep([a.ep, "-m", model, "--moe", mode, "--backend", a.backend, "--transport", a.transport,
                            "--ids", ids_str(LONG_PROMPT[:24]), "-n", str(a.n), "--dump-logits", dump] + extra,
                           f"{a.mpirun} -np {np_}")
                res[np_] = (j["generated_ids"], open(dump, "rb").read(), read_f32(dump), dt)
            r["ids_equal"] = res[1][0] == res[a.np][0]
            r["logits_bitwise_equal"] = res[1][1] == res[a.np][1]
            r["max_abs_logit_diff"] = max_diff(res[1][2], res[a.np][2])
            r["seconds"] = [round(res[1][3], 2), round(res[a.np][3], 2)]
            r["ok"] = r["ids_equal"] and r["max_abs_logit_diff"] <= a.tol
        except Exception as e:  # noqa: BLE001
            r.update(ok=False, error=str(e))
        ok = ok and r["ok"]
        out["runs"].append(r)
        print(f"ranks 1 vs {a.np} ({a.transport}) {mode:12s} ids {'equal' if r.get('ids_equal') else 'DIFFER'} logits "
              f"{'bitwise equal' if r.get('logits_bitwise_equal') else 'max|d| %.3e' % r.get('max_abs_logit_diff', float('nan'))} "
              f"{'ok' if r['ok'] else 'FAIL ' + r.get('error', '')}", flush=True)
    return write_result(a, out, ok)


# ---------------------------------------------------------------------------- perf8b
def safetensors_bytes(model_dir):
    """Bytes of every tensor, and of the embedding (read one row per token, so not counted)."""
    total = embed = 0
    for f in sorted(glob.glob(os.path.join(model_dir, "*.safetensors"))):
        with open(f, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            hdr = json.loads(fh.read(n))
        for name, t in hdr.items():
            if name == "__metadata__":
                continue
            b = t["data_offsets"][1] - t["data_offsets"][0]
            total += b
            if name == "model.embed_tokens.weight":
                embed = b
    return total, embed


def cmd_perf8b(a):
    cfg = json.load(open(os.path.join(a.model, "config.json")))
    total, embed = safetensors_bytes(a.model)
    tied = cfg.get("tie_word_embeddings", False)
    read_per_token = total - (0 if tied else embed)   # tied: the table is the LM head, read once
    out = {"model": a.model, "backend": a.backend, "layers": cfg["num_hidden_layers"], "weight_bytes": total,
           "weight_bytes_read_per_token": read_per_token, "prefill_prompt_tokens": a.prefill}
    prompt_file = os.path.join(a.work, "prompt2048.txt")
    V = cfg["vocab_size"]
    long_ids = [cfg.get("bos_token_id", 1) or 1] + [(i * 7919) % (V - 100) + 50 for i in range(a.prefill - 1)]
    open(prompt_file, "w").write(ids_str(long_ids) + "\n")
    short_ids = long_ids[:16]
    ok = True
    modes = a.modes.split(",")
    out["modes"] = [{"mode": m} for m in modes]
    # Decode of every mode first, then prefill: the decode targets survive a time-out.
    # The JSON is rewritten after every run for the same reason.
    for phase in ("decode", "prefill"):
        for r in out["modes"]:
            mode = r["mode"]
            try:
                if phase == "decode":
                    j, dt = ep([a.ep, "-m", a.model, "--moe", mode, "--backend", a.backend, "--ids", ids_str(short_ids),
                                "-n", str(a.n), "--step-tokens", "64", "--ctx", str(a.prefill + 64)], a.launcher, timeout=a.timeout)
                    t = j["timings"]
                    bw = j.get("device_peak_bandwidth_gbs", 0) * 1e9
                    r.update(device=j.get("device"), peak_bandwidth_gbs=bw / 1e9, load_s=t["load_s"], run_s=round(dt, 2),
                             decode_tokens=t["decode_tokens"],
                             decode_ms_per_token=1000.0 / t["decode_tok_s"] if t["decode_tok_s"] else None,
                             generated_ids=j["generated_ids"])
                    if bw:
                        r["bound_ms_per_token"] = read_per_token / bw * 1000
                        if r["decode_ms_per_token"]:
                            r["decode_vs_bound"] = r["decode_ms_per_token"] / r["bound_ms_per_token"]
                    dense = out["modes"][0] if out["modes"][0]["mode"] == "dense" else None
                    if mode != "dense" and dense and "generated_ids" in dense:
                        r["greedy_equals_dense"] = j["generated_ids"] == dense["generated_ids"]
                        if dense.get("decode_ms_per_token") and r["decode_ms_per_token"]:
                            r["decode_vs_dense"] = r["decode_ms_per_token"] / dense["decode_ms_per_token"]
                        ok = ok and r["greedy_equals_dense"]
                else:
                    j2, dt2 = ep([a.ep, "-m", a.model, "--moe", mode, "--backend", a.backend, "--prompts", prompt_file,
                                  "-n", "1", "--step-tokens", str(a.prefill), "--ctx", str(a.prefill + 64)], a.launcher,
                                 timeout=a.timeout)
                    t2 = j2["timings"]
                    r.update(prefill_tokens=t2["prefill_tokens"], prefill_tok_s=t2["prefill_tok_s"], prefill_run_s=round(dt2, 2))
            except Exception as e:  # noqa: BLE001
                r[phase + "_error"] = str(e)
                ok = False
            json.dump(out, open(a.json, "w"), indent=1)
            if phase == "decode":
                print(f"perf8b {mode:12s} decode {r.get('decode_ms_per_token') or float('nan'):.3f} ms/token (bound "
                      f"{r.get('bound_ms_per_token', float('nan')):.3f}, x{r.get('decode_vs_bound', float('nan')):.3f}) "
                      f"greedy=dense {r.get('greedy_equals_dense', '-')} {r.get('decode_error', '')}", flush=True)
            else:
                print(f"perf8b {mode:12s} prefill {r.get('prefill_tok_s', float('nan')):.0f} tok/s at {a.prefill} tokens "
                      f"{r.get('prefill_error', '')}", flush=True)
    return write_result(a, out, ok)


# ---------------------------------------------------------------------------- summary
def cmd_summary(a):
    steps = [json.loads(l) for l in open(a.steps)] if os.path.exists(a.steps) else []
    results = {}
    for f in sorted(glob.glob(os.path.join(a.work, "*.json"))):
        try:
            results[os.path.basename(f)[:-5]] = json.load(open(f))
        except Exception as e:  # noqa: BLE001
            results[os.path.basename(f)[:-5]] = {"unreadable": str(e)}
    counts = {}
    for s in steps:
        counts[s["status"]] = counts.get(s["status"], 0) + 1
    env = results.get("env", {})
    summary = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": env.get("nvidia_smi_l") or "no GPU",
               "nvidia_smi": env.get("nvidia_smi"), "counts": counts, "steps": steps, "results": results}
    json.dump(summary, open(a.out, "w"), indent=1)
    print(f"summary: {', '.join(f'{v} {k}' for k, v in sorted(counts.items()))} -> {a.out}")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("expected", "backends", "ranks", "perf8b"):
        p = sub.add_parser(name)
        p.add_argument("--ep", required=True, help="path of llamoe-ep")
        p.add_argument("--src", default=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
        p.add_argument("--work", default="/tmp")
        p.add_argument("--json", required=True)
        p.add_argument("--launcher", default="")
        p.add_argument("--mpirun", default="mpirun")
        p.add_argument("--model", default=None)
        p.add_argument("--backend", default="cuda")
        p.add_argument("--transport", default="mpi")
        p.add_argument("--np", type=int, default=3)
        p.add_argument("-n", type=int, default=16)
        p.add_argument("--step", type=int, default=256)
        p.add_argument("--tol", type=float, default=1e-3)
        p.add_argument("--prefill", type=int, default=2048)
        p.add_argument("--timeout", type=int, default=300)
        p.add_argument("--modes", default="dense,identity:8,upcycle:8:2")
        p.add_argument("--extra-n", default="", help="ranks: arguments of the run on --np ranks only")
    p = sub.add_parser("env")
    p.add_argument("--json", required=True)
    p = sub.add_parser("ops")
    p.add_argument("--test", required=True, help="path of test_ops")
    p.add_argument("--src", required=True)
    p.add_argument("--backend", default="cuda")
    p.add_argument("--wrap", default="", help="a command to run it under (compute-sanitizer)")
    p.add_argument("--force-fail", default="")
    p.add_argument("--timeout", type=int, default=600)
    p.add_argument("--json", required=True)
    p = sub.add_parser("summary")
    p.add_argument("--steps", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--out", required=True)
    a = ap.parse_args()
    return {"env": cmd_env, "ops": cmd_ops, "expected": cmd_expected, "backends": cmd_backends, "ranks": cmd_ranks,
            "perf8b": cmd_perf8b, "summary": cmd_summary}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
