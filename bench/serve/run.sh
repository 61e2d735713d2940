#!/usr/bin/env bash
# llamoe-serve against llama.cpp's llama-server (-np slots, continuous batching) on the same
# weights and threads: requests/s, output tokens/s, time to first token and inter-token
# latency (p50, p99) at 1 to 64 concurrent streamed requests, measured by
# bench/serve/loadgen.py on loopback. Both servers stay up and take turns level by level
# (the order alternates), so the machine's load falls on both alike.
#
#   bench/serve/run.sh LLAMA_CPP_BUILD MODEL_DIR [BUILD_DIR]
#
# LLAMA_CPP_BUILD is a llama.cpp build directory (bin/llama-server); its source tree, for
# convert_hf_to_gguf.py, is LLAMA_CPP_SRC (default: the build directory's parent). MODEL_DIR is
# a Hugging Face Llama directory with a Llama 3 tokenizer; when it has no config.json the
# benchmark model is written there (llamoe-mkmodel, seeded random BF16 weights): Llama 3
# widths cut down so that a sweep to 64 concurrent requests takes minutes on 2 cores - hidden
# 1024, FFN 4096, 4 layers, 16 query / 4 KV heads, the Llama 3 vocabulary (128256, tied), llama3
# RoPE; 384 MB. The GGUF is made from it with llama.cpp's own converter (BF16, no requantising).
#
# Environment: OUT (results, default docs/bench/serve), WORK (the GGUF and logs, default
# /tmp/llamoe-serve-bench), THREADS (both servers, default 2), LEVELS (default "1 2 4 8 16 32
# 64"), PROMPT_TOKENS (16), MAX_TOKENS (32), TIME_LIMIT (seconds per level and server, 60),
# MOE (llamoe's --moe, default dense: the same work as llama.cpp's dense model; upcycle:8:2
# adds routing and expert dispatch), RANKS (llamoe's ranks, default 1; each gets THREADS /
# RANKS threads and 64 / RANKS KV slots, so the two servers use the same cores), QUICK=1
# (levels 1 and 8, a smoke run).
# Writes OUT/results.jsonl, OUT/results.csv, OUT/results.md and OUT/serve.png (gnuplot).
set -euo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
[ $# -ge 2 ] || { sed -n '2,25p' "$0" >&2; exit 2; }
LLAMA_BUILD=$(cd "$1" && pwd)
MODEL=$2
BUILD=$(cd "${3:-$SRC/build}" && pwd)
LLAMA_SRC=${LLAMA_CPP_SRC:-$(dirname "$LLAMA_BUILD")}
OUT=${OUT:-$SRC/docs/bench/serve}
WORK=${WORK:-/tmp/llamoe-serve-bench}
THREADS=${THREADS:-2}
LEVELS=${LEVELS:-1 2 4 8 16 32 64}
PROMPT_TOKENS=${PROMPT_TOKENS:-16}
MAX_TOKENS=${MAX_TOKENS:-32}
TIME_LIMIT=${TIME_LIMIT:-60}
MOE=${MOE:-dense}
RANKS=${RANKS:-1}
QUICK=${QUICK:-0}
[ "$QUICK" = 1 ] && LEVELS="1 8"
LLAMA_SERVER="$LLAMA_BUILD/bin/llama-server"
[ -x "$LLAMA_SERVER" ] || { echo "run.sh: $LLAMA_SERVER: not found (give a llama.cpp build directory)" >&2; exit 2; }
[ -f "$LLAMA_SRC/convert_hf_to_gguf.py" ] || { echo "run.sh: $LLAMA_SRC/convert_hf_to_gguf.py: not found (set LLAMA_CPP_SRC)" >&2; exit 2; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
mkdir -p "$OUT" "$WORK"
MAX_LEVEL=$(tr ' ' '\n' <<<"$LEVELS" | sort -n | tail -1)
[ $((THREADS % RANKS)) = 0 ] || { echo "run.sh: THREADS $THREADS is not a multiple of RANKS $RANKS" >&2; exit 2; }
CTX=$((PROMPT_TOKENS + MAX_TOKENS + 16))   # per sequence (slot), on both servers

# ---------------------------------------------------------------------------- the weights
if [ ! -f "$MODEL/config.json" ]; then
  "$BUILD/llamoe-mkmodel" -o "$MODEL" --hidden 1024 --ffn 4096 --layers 4 --heads 16 --kv-heads 4 --vocab 128256 \
    --max-pos 131072 --rope-theta 500000 --rope-llama3 --tie --dtype BF16 --seed 7 \
    --tokenizer "$SRC/models/llama3-tokenizer/tokenizer.json" >&2
  # llama.cpp's converter reads the tokenizer through transformers, which wants these too.
  cp "$SRC/models/llama3-tokenizer/tokenizer_config.json" "$SRC/models/llama3-tokenizer/special_tokens_map.json" "$MODEL/"
fi
GGUF="$WORK/$(basename "$MODEL")-bf16.gguf"
if [ ! -f "$GGUF" ] || [ "$MODEL/config.json" -nt "$GGUF" ]; then
  python3 "$LLAMA_SRC/convert_hf_to_gguf.py" "$MODEL" --outtype bf16 --outfile "$GGUF.tmp" >"$WORK/convert.log" 2>&1 ||
    { tail -20 "$WORK/convert.log" >&2; exit 1; }
  mv "$GGUF.tmp" "$GGUF"
fi

# ---------------------------------------------------------------------------- the servers
PIDS=()
cleanup() { for p in ${PIDS[@]+"${PIDS[@]}"}; do kill -TERM "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_health() {   # port, pid, log
  for _ in $(seq 600); do
    python3 -c 'import sys, urllib.request; urllib.request.urlopen("http://127.0.0.1:%s/health" % sys.argv[1], timeout=2)' "$1" \
      2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || { tail -20 "$3" >&2; exit 1; }
    sleep 0.5
  done
  echo "run.sh: no answer on port $1" >&2; exit 1
}

LLAMOE_PORT=$(free_port)
mpirun --oversubscribe -np "$RANKS" "$BUILD/llamoe-serve" -m "$MODEL" --moe "$MOE" --threads $((THREADS / RANKS)) \
  --kv-slots $(((MAX_LEVEL + RANKS - 1) / RANKS)) --ctx "$CTX" --queue 256 --host 127.0.0.1 --port "$LLAMOE_PORT" >"$WORK/llamoe.log" 2>&1 &
PIDS+=($!)
wait_health "$LLAMOE_PORT" "${PIDS[-1]}" "$WORK/llamoe.log"
LLAMA_PORT=$(free_port)
"$LLAMA_SERVER" -m "$GGUF" -t "$THREADS" -tb "$THREADS" -np "$MAX_LEVEL" -c $((MAX_LEVEL * CTX)) \
  --host 127.0.0.1 --port "$LLAMA_PORT" >"$WORK/llama-server.log" 2>&1 &
PIDS+=($!)
wait_health "$LLAMA_PORT" "${PIDS[-1]}" "$WORK/llama-server.log"

RAW="$OUT/results.jsonl"
: >"$RAW"
load() { cut -d' ' -f1 /proc/loadavg; }
run_level() {   # name port concurrency requests
  local before after
  before=$(load)
  python3 "$SRC/bench/serve/loadgen.py" --port "$2" --concurrency "$3" --requests "$4" --time-limit "$TIME_LIMIT" \
    --prompt-tokens "$PROMPT_TOKENS" --max-tokens "$MAX_TOKENS" --seed "$3" --label "$1" --out "$WORK/level.jsonl" \
    >"$WORK/level.out" || echo "run.sh: $1 at concurrency $3 had errors: $(cat "$WORK/level.out")" >&2
  after=$(load)
  python3 - "$WORK/level.out" "$before" "$after" >>"$RAW" <<'PY'
import json, sys
r = json.loads(open(sys.argv[1]).read().splitlines()[-1])
r["load1_before"], r["load1_after"] = float(sys.argv[2]), float(sys.argv[3])
print(json.dumps(r))
PY
  tail -1 "$RAW" >&2
}

# Warm-up: pages in the weights and sizes the buffers of both.
for p in "$LLAMOE_PORT" "$LLAMA_PORT"; do
  python3 "$SRC/bench/serve/loadgen.py" --port "$p" --concurrency 1 --requests 2 --prompt-tokens "$PROMPT_TOKENS" \
    --max-tokens 4 >/dev/null
done
i=0
for c in $LEVELS; do
  n=$((c > 4 ? c : 4))   # one wave of c requests (at least 4), each level bounded by TIME_LIMIT too
  if [ $((i % 2)) = 0 ]; then
    run_level llamoe "$LLAMOE_PORT" "$c" "$n"; run_level llama.cpp "$LLAMA_PORT" "$c" "$n"
  else
    run_level llama.cpp "$LLAMA_PORT" "$c" "$n"; run_level llamoe "$LLAMOE_PORT" "$c" "$n"
  fi
  i=$((i + 1))
done

# ---------------------------------------------------------------------------- report
MACHINE=$(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -1)
python3 - "$RAW" "$OUT" "$MACHINE" "$(nproc)" "$THREADS" "$MOE" "$PROMPT_TOKENS" "$MAX_TOKENS" "$RANKS" <<'PY'
import json, sys
raw, out, machine, cores, threads, moe, pt, mt, ranks = sys.argv[1:10]
rows = [json.loads(l) for l in open(raw)]
cols = ["label", "concurrency", "requests", "errors", "wall_s", "requests_per_s", "output_tokens_per_s",
        "ttft_p50_s", "ttft_p99_s", "itl_p50_s", "itl_p99_s", "load1_before", "load1_after"]
with open(out + "/results.csv", "w") as f:
    f.write(",".join(cols) + "\n")
    for r in rows:
        f.write(",".join("" if r.get(c) is None else str(r[c]) for c in cols) + "\n")
by = {(r["label"], r["concurrency"]): r for r in rows}
levels = sorted({r["concurrency"] for r in rows})
ms = lambda v: "-" if v is None else f"{v * 1000:.0f}"
with open(out + "/results.md", "w") as f:
    f.write(f"Machine: {machine}, {cores} cores; both servers {threads} threads; llamoe --moe {moe}, {ranks} rank(s); "
            f"prompts of {pt} tokens, {mt} generated tokens per request (greedy, ignore_eos).\n\n")
    f.write("| concurrency | server | req/s | output tok/s | TTFT p50 / p99 (ms) | ITL p50 / p99 (ms) | load (1 min) |\n")
    f.write("| ---: | --- | ---: | ---: | ---: | ---: | ---: |\n")
    for c in levels:
        for name in ("llamoe", "llama.cpp"):
            r = by.get((name, c))
            if not r:
                continue
            f.write(f"| {c} | {name} | {r['requests_per_s']:.2f} | {r['output_tokens_per_s']:.1f} | "
                    f"{ms(r['ttft_p50_s'])} / {ms(r['ttft_p99_s'])} | {ms(r['itl_p50_s'])} / {ms(r['itl_p99_s'])} | "
                    f"{r['load1_before']:.1f} - {r['load1_after']:.1f} |\n")
    f.write("\n| concurrency | output tok/s, llamoe / llama.cpp | TTFT p50, llama.cpp / llamoe |\n| ---: | ---: | ---: |\n")
    for c in levels:
        a, b = by.get(("llamoe", c)), by.get(("llama.cpp", c))
        if a and b and b["output_tokens_per_s"] and a["ttft_p50_s"]:
            f.write(f"| {c} | {a['output_tokens_per_s'] / b['output_tokens_per_s']:.2f} | {b['ttft_p50_s'] / a['ttft_p50_s']:.2f} |\n")
with open(out + "/plot.dat", "w") as f:
    for name in ("llamoe", "llama.cpp"):
        f.write(f"# {name}: concurrency tok/s ttft_p50_ms ttft_p99_ms itl_p50_ms itl_p99_ms\n")
        for c in levels:
            r = by.get((name, c))
            if r and r["ttft_p50_s"] is not None:
                f.write(f"{c} {r['output_tokens_per_s']} {r['ttft_p50_s'] * 1e3} {r['ttft_p99_s'] * 1e3} "
                        f"{r['itl_p50_s'] * 1e3} {r['itl_p99_s'] * 1e3}\n")
        f.write("\n\n")
PY
if command -v gnuplot >/dev/null; then
  gnuplot -e "dat='$OUT/plot.dat'; out='$OUT/serve.png'; title='$MACHINE, $THREADS threads per server, llamoe --moe $MOE on $RANKS rank(s)'" \
    "$SRC/bench/serve/plot.gp"
else
  echo "run.sh: gnuplot not found: no plot" >&2
fi
cat "$OUT/results.md"
