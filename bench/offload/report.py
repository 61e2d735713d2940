#!/usr/bin/env python3
# Turns bench/offload/run.sh's raw JSON lines into results.csv, results.json, results.md and
# the two small data files plot.gp reads. Usage: report.py RAW.jsonl OUT_DIR SLOT_MIB
import csv, json, os, sys

raw, out, slot = sys.argv[1], sys.argv[2], float(sys.argv[3])
rows = []
for line in open(raw):
    j = json.loads(line)
    t, ec = j["timings"], j.get("expert_cache")
    phase = j["phase"]
    tokens = t["decode_tokens"] if phase == "decode" else t["prefill_tokens"]
    all_tokens = t["decode_tokens"] + t["prefill_tokens"]
    r = {
        "label": j["label"], "phase": phase, "mode": "memory" if ec else "throughput",
        "budget_mib": ec["budget_mib_per_rank"] if ec else None,
        "slots": ec["slots"] if ec else None,
        "evict": ec["evict"] if ec else "", "prefetch": ec["prefetch"] if ec else "",
        "madvise": "off" if "--expert-madvise off" in j["args"] else ("on" if ec else ""),
        "tok_s": round(t["decode_tok_s"] if phase == "decode" else t["prefill_tok_s"], 2),
        "tokens": tokens,
        "peak_rss_mib": round(t["peak_rss_mb_max_rank"], 1),
        "experts_s": round(j["per_rank_max"]["experts_s"], 4),
        "forward_s": round(j["per_rank_max"]["forward_s"], 4),
    }
    if ec:
        n = ec["lookups"] or 1
        r.update({
            "hit_rate": round(ec["hits"] / n, 4),
            "hit_rate_with_prefetch": round((ec["hits"] + ec["prefetch_hits"]) / n, 4),
            "lookups": ec["lookups"], "misses": ec["misses"], "prefetches": ec["prefetches"],
            "prefetch_wasted": ec["prefetch_wasted"], "evictions": ec["evictions"],
            "moved_mib": round(ec["bytes_moved"] / 2**20, 1),
            "moved_mib_per_token": round(ec["bytes_moved"] / 2**20 / max(all_tokens, 1), 2),
            "released_mib": round(ec["bytes_released"] / 2**20, 1),
            "demand_copy_s": round(ec["demand_copy_ns"] / 1e9, 4),
            "prefetch_copy_s": round(ec["prefetch_copy_ns"] / 1e9, 4),
        })
    rows.append(r)

fields = ["label", "phase", "mode", "budget_mib", "slots", "evict", "prefetch", "madvise", "tok_s", "tokens",
          "peak_rss_mib", "hit_rate", "hit_rate_with_prefetch", "lookups", "misses", "prefetches",
          "prefetch_wasted", "evictions", "moved_mib", "moved_mib_per_token", "released_mib",
          "demand_copy_s", "prefetch_copy_s", "experts_s", "forward_s"]
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "results.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=fields, restval="")
    w.writeheader()
    for r in rows: w.writerow(r)
json.dump({"slot_mib": slot, "loadavg": os.environ.get("LOADAVG"), "rows": rows}, open(os.path.join(out, "results.json"), "w"), indent=1)

def find(phase, label):
    return next((r for r in rows if r["phase"] == phase and r["label"] == label), None)

def pct(x): return "" if x is None else f"{100 * x:.0f}%"

md = ["# Throughput mode versus memory mode (CPU, measured)", "",
      f"One rank, {rows[0].get('tokens', '')} decode tokens per decode run; one expert = {slot:g} MiB. "
      "Memory mode defaults: layer-lru eviction, router prefetch, page release on. "
      "Hit rate = uses served by an expert already resident from an earlier use; "
      "with prefetch = plus uses served by a prefetch copy (a GPU copy stream would hide those).", "",
      f"Load average (1, 5, 15 min) at the end of the run: {os.environ.get('LOADAVG', 'not recorded')}. "
      "Counters (hit rates, MiB moved, RSS) do not depend on it; tokens/s do, and are only "
      "meaningful when the load stays below the core count.", "",
      "| budget | slots | decode tok/s | prefill tok/s | peak RSS decode (MiB) | peak RSS prefill (MiB) | decode hit rate | with prefetch | decode MiB moved/token | prefill MiB moved/token |",
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
labels = ["throughput"] + sorted({r["label"] for r in rows if r["label"].startswith("memory") and r["label"].endswith("slots")
                                   and r["label"].count(" ") == 2}, key=lambda s: -int(s.split()[1]))
for lab in labels:
    d, p = find("decode", lab), find("prefill", lab)
    if not d or not p: continue
    budget = "all resident (throughput mode)" if lab == "throughput" else f"{d['budget_mib']:g} MiB"
    md.append(f"| {budget} | {d['slots'] or ''} | {d['tok_s']:.1f} | {p['tok_s']:.1f} | {d['peak_rss_mib']:.0f} | {p['peak_rss_mib']:.0f} | "
              f"{pct(d.get('hit_rate'))} | {pct(d.get('hit_rate_with_prefetch'))} | {d.get('moved_mib_per_token', '')} | {p.get('moved_mib_per_token', '')} |")
md += ["", "## Predictors and eviction (decode)", "",
       "| slots | evict | prefetch | tok/s | hit rate | with prefetch | prefetches | wasted | MiB moved/token | demand copy s | prefetch copy s |",
       "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
for r in rows:
    if r["phase"] != "decode" or r["mode"] != "memory" or r["slots"] not in (4, 8) or r["madvise"] != "on": continue
    md.append(f"| {r['slots']} | {r['evict']} | {r['prefetch']} | {r['tok_s']:.1f} | {pct(r['hit_rate'])} | {pct(r['hit_rate_with_prefetch'])} | "
              f"{r['prefetches']} | {r['prefetch_wasted']} | {r['moved_mib_per_token']} | {r['demand_copy_s']} | {r['prefetch_copy_s']} |")
md += ["", "## Page release (decode, 4 slots)", "", "| madvise | tok/s | peak RSS (MiB) | released MiB |", "| --- | --- | --- | --- |"]
for r in rows:
    if r["phase"] == "decode" and r["slots"] == 4 and r["evict"] == "layer-lru" and r["prefetch"] == "router":
        md.append(f"| {r['madvise']} | {r['tok_s']:.1f} | {r['peak_rss_mib']:.0f} | {r['released_mib']} |")
open(os.path.join(out, "results.md"), "w").write("\n".join(md) + "\n")

# plot.gp inputs: the curve (budget, decode tok/s, prefill tok/s, RSS decode, RSS prefill)
# and throughput mode's values on one line.
work = os.path.dirname(os.path.abspath(raw))
with open(os.path.join(out, "curve.dat"), "w") as f:
    f.write("# budget_mib decode_tok_s prefill_tok_s rss_decode_mib rss_prefill_mib\n")
    for lab in labels[1:]:
        d, p = find("decode", lab), find("prefill", lab)
        if d and p: f.write(f"{d['budget_mib']} {d['tok_s']} {p['tok_s']} {d['peak_rss_mib']} {p['peak_rss_mib']}\n")
    d, p = find("decode", "throughput"), find("prefill", "throughput")
    f.write(f"\n\n# throughput mode\n{d['tok_s']} {p['tok_s']} {d['peak_rss_mib']} {p['peak_rss_mib']}\n")
print("\n".join(md))
