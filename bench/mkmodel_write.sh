#!/usr/bin/env bash
# How close llamoe-mkmodel comes to the disk: the time to write a Llama 3.1 8B-shaped BF16
# model (fsync included) against a plain sequential write of the same number of bytes to
# the same directory (dd from /dev/zero, 8 MiB blocks, conv=fsync), measured side by side,
# the order alternating round by round. Prints both rates and their ratio. For reference,
# also dd with oflag=direct (no page cache: what the disk itself takes), where the file
# system allows it.
#   bench/mkmodel_write.sh [--build DIR] [--dir DIR] [--layers N] [--rounds R] [--threads N]
#                          [--compare BIN] [--machine TEXT] [--json FILE]
# Paths are relative to the repository root. --dir: where to write (default: under the build
# directory; it needs room for one model: 16 GB for the 32 layers, 5.6 GB for the default 8).
# --threads is passed to llamoe-mkmodel (default: its own, every CPU). --compare BIN: another
# llamoe-mkmodel (an older build) measured in the same rounds. --machine: how to name the
# machine in the results (default: the CPU model and count). Writes FILE (default
# docs/bench/mkmodel_write/mkmodel_write.json): the machine, the load, each round, the medians.
set -euo pipefail
cd "$(dirname "$0")/.."
build=build dir="" layers=8 rounds=3 threads="" compare="" machine="" json=docs/bench/mkmodel_write/mkmodel_write.json
usage="usage: bench/mkmodel_write.sh [--build DIR] [--dir DIR] [--layers N] [--rounds R] [--threads N] [--compare BIN] [--machine TEXT] [--json FILE]"
while [ $# -gt 0 ]; do
  [ $# -ge 2 ] || { echo "$usage" >&2; exit 2; }
  case $1 in
    --build) build=$2 ;;
    --dir) dir=$2 ;;
    --layers) layers=$2 ;;
    --rounds) rounds=$2 ;;
    --threads) threads=$2 ;;
    --compare) compare=$2 ;;
    --machine) machine=$2 ;;
    --json) json=$2 ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
  shift 2
done
mk="$build/llamoe-mkmodel"
[ -x "$mk" ] || { echo "bench: $mk is missing (build first)" >&2; exit 2; }
[ -z "$compare" ] || [ -x "$compare" ] || { echo "bench: --compare $compare is not a program" >&2; exit 2; }
mkdir -p "$(dirname "$json")"
# The scratch directory for every model and dd file, on the disk measured (--dir, else the
# build directory); mktemp fills in the XXXXXX, the trap removes it however the script ends.
work=$(mktemp -d "${dir:-$build}/mkmodel_write.XXXXXX")
trap 'rm -rf "$work"' EXIT
mk_args=(--preset llama3.1-8b --layers "$layers" --dtype BF16 --seed 1)
[ -n "$threads" ] && mk_args+=(--threads "$threads")

now() { date +%s.%N; }
load() { cut -d' ' -f1-3 /proc/loadavg; }
rows="$work/rows.txt"
: >"$rows"

# One model first, untimed: its size is what dd writes.
"$mk" -o "$work/model" "${mk_args[@]}" 2>"$work/first.log" || { cat "$work/first.log" >&2; exit 1; }
bytes=$(du -sb "$work/model" | cut -f1)
rm -rf "$work/model"
block=$((8 << 20))
blocks=$(( (bytes + block - 1) / block ))
echo "bench: $(( bytes / 1000000 )) MB per write ($layers layers, BF16), $rounds rounds, in $work" >&2

run_dd() {   # NAME [dd flags]
  local name=$1; shift
  sync
  local t0 t1; t0=$(now)
  if dd if=/dev/zero of="$work/dd.bin" bs=$block count=$blocks conv=fsync status=none "$@" 2>"$work/dd.log"; then
    t1=$(now)
    echo "$name $r $(awk "BEGIN { print $t1 - $t0 }") $(load)" >>"$rows"
  else
    echo "bench: dd $* failed: $(cat "$work/dd.log")" >&2
  fi
  rm -f "$work/dd.bin"
}
run_dds() { run_dd dd; run_dd dd-direct oflag=direct; }
run_mk() {   # NAME BINARY [extra arguments]
  local name=$1 bin=$2; shift 2
  sync
  local t0 t1; t0=$(now)
  "$bin" -o "$work/model" "$@" 2>"$work/$name.log" || { cat "$work/$name.log" >&2; exit 1; }   # before the trap removes it
  t1=$(now)
  rm -rf "$work/model"
  echo "$name $r $(awk "BEGIN { print $t1 - $t0 }") $(load)" >>"$rows"
}
run_all() {
  run_mk mkmodel "$mk" "${mk_args[@]}"
  # An older build may lack --threads: it gets the same model, its own defaults.
  [ -z "$compare" ] || run_mk compare "$compare" --preset llama3.1-8b --layers "$layers" --dtype BF16 --seed 1
}
for r in $(seq 1 "$rounds"); do
  if [ $((r % 2)) = 1 ]; then run_dds; run_all; else run_all; run_dds; fi
  grep " $r " "$rows" | sed 's/^/bench: round /' >&2
done

python3 - "$rows" "$bytes" "$blocks" "$block" "$json" "$(tail -1 "$work/mkmodel.log")" "$work" "$machine" "$compare" <<'PY'
import json, os, statistics, sys
rows_path, nbytes, blocks, block, out, mk_line, where, machine, compare = sys.argv[1:10]
nbytes, blocks, block = int(nbytes), int(blocks), int(block)
rounds = []
for line in open(rows_path):
    what, r, secs, l1, l5, l15 = line.split()
    b = blocks * block if what.startswith("dd") else nbytes
    rounds.append({"what": what, "round": int(r), "seconds": float(secs), "bytes": b,
                   "mb_s": b / float(secs) / 1e6, "load": [float(l1), float(l5), float(l15)]})
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
machine = machine or f"{cpu}, {os.cpu_count()} CPUs"
whats = [w for w in ("dd", "dd-direct", "mkmodel", "compare") if any(x["what"] == w for x in rounds)]
med = {w: statistics.median(x["mb_s"] for x in rounds if x["what"] == w) for w in whats}
result = {"machine": machine, "cpu": cpu, "cpus": os.cpu_count(), "directory": os.path.dirname(where),
          "mkmodel": mk_line, "compare": compare or None, "bytes": nbytes, "dd_block_bytes": block, "rounds": rounds,
          "median_mb_s": med, "ratio_mkmodel_to_dd": med["mkmodel"] / med["dd"]}
for ref in ("dd-direct", "compare"):
    if ref in med:
        result["ratio_mkmodel_to_" + ref.replace("-", "_")] = med["mkmodel"] / med[ref]
json.dump(result, open(out, "w"), indent=1)
print(f"{'round':>5} {'what':>9} {'seconds':>8} {'MB/s':>7}  load (1, 5, 15 min)")
for x in rounds:
    print(f"{x['round']:>5} {x['what']:>9} {x['seconds']:8.1f} {x['mb_s']:7.0f}  {x['load']}")
print(f"median MB/s: " + ", ".join(f"{w} {med[w]:.0f}" for w in whats))
print(f"llamoe-mkmodel / dd = {result['ratio_mkmodel_to_dd']:.2f}" +
      "".join(f", llamoe-mkmodel / {ref} = {med['mkmodel'] / med[ref]:.2f}" for ref in ("dd-direct", "compare") if ref in med) +
      f" ({nbytes / 1e9:.2f} GB per write; {machine})")
print(f"wrote {out}")
PY
