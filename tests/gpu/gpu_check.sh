#!/usr/bin/env bash
# The GPU check: one command for a machine with one H100 or H200 (CUDA 13, PyTorch and
# transformers in its python3; Open MPI, hwloc, json-c, pcre2 unpacked from gpu-debs/ when
# missing). Builds the project with CUDA, writes the Llama 3.1 8B-shaped model in the
# background, then runs, each step time-limited and recorded (a failing step does not stop the
# others), correctness and the speed figures first:
#   ops            every op, CUDA vs the CPU backend, every case reported (test_ops --backend cuda;
#                  a case that ends the process is skipped and the rest run again after it)
#   expected_cuda  the bundled model's greedy ids and logits on the CUDA backend
#   copies         the MoE layer's copies to the host: one per layer (counts plan), none (fixed)
#   expected_ep    llamoe-ep --backend cuda: dense / identity:8 / upcycle:8:2 vs expected.json
#   ranks          1 vs 3 ranks on the one GPU over MPI (device buffers staged): bitwise logits
#   balance        3 ranks with redundant expert copies, rebalanced every 2 steps (the moved
#                  weights checked), against 1 rank contiguous: bitwise logits
#   nccl_ep        llamoe-ep --transport nccl, one rank, vs expected.json
#   nccl_ranks     1 vs 3 ranks on the one GPU over NCCL, where the NCCL loaded allows several
#                  ranks per GPU (2.30 and later, NCCL_MULTI_RANK_GPU_ENABLE=1); else skipped
#                  with the version
#   perf8b         8B-shaped BF16 model: decode ms/token at batch 1 and 2048-token prefill
#                  tokens/s per mode, against the weight-read bound; greedy agreement with dense
#   hf             transformers LlamaForCausalLM / MixtralForCausalLM vs llamoe logits
#   backends       a 60-token prompt on cpu and cuda: same ids, logits within 1e-3
#   comm           the transports alone (MPI staged or CUDA-aware, NCCL)
#   grouped_gemm   the grouped expert FFN variants vs a dense FFN of the same FLOPs
#   scaling        the quick size of bench/scaling.py on the GPU
# A step that fails is run once more with CUDA_LAUNCH_BLOCKING=1 (and, for the test programs,
# under compute-sanitizer where the machine has it) so that its log names the kernel.
# Results: OUT_DIR/summary.json (the machine, every step's status and seconds, each step's
# JSON) and OUT_DIR/gpu_check.log (the whole output). The run keeps within --budget seconds.
#
#   tests/gpu/gpu_check.sh [OUT_DIR] [--cpu-only] [--build DIR] [--layers N] [--budget S]
#                          [--steps A,B] [--force-debs] [--force-fail OP]
#     OUT_DIR        default $OUT when set, else ./gpu-check-out
#     --cpu-only     no GPU: the build (CUDA compiled, not run) or --build's, and the plumbing
#                    of every step with --backend cpu on tiny models; GPU-only steps skipped
#     --build DIR    use this build directory as it is (no configure, no build)
#     --layers N     layers of the 8B-shaped model (default: all 32)
#     --budget S     seconds for the whole run (default 480: with the build, a rerun of the
#                    failed steps fits in 15 minutes)
#     --steps A,B    run only these steps (the build always runs), e.g. to rerun failures
#     --force-debs   use gpu-debs/ even if the machine has MPI etc. (to test that path)
#     --force-fail OP  make the op test's OP cases fail (a check of the check itself)
# On a machine with one H100 or H200, from the repository root (gpu-debs/ made beforehand on
# a Debian 12 machine by tests/gpu/fetch_gpu_debs.sh, when the GPU machine lacks Open MPI):
#   bash tests/gpu/gpu_check.sh OUT_DIR
set -u
SRC=$(cd "$(dirname "$0")/../.." && pwd)
OUT_DIR=${OUT:-$SRC/gpu-check-out}
CPU_ONLY=0 LAYERS=32 BUDGET=480 FORCE_DEBS="" ONLY="" PREBUILT="" FORCE_FAIL=""
while [ $# -gt 0 ]; do
  case $1 in
    --cpu-only|--dry-run) CPU_ONLY=1 ;;
    --build) PREBUILT=$(cd "$2" && pwd) || exit 2; shift ;;
    --layers) LAYERS=$2; shift ;;
    --budget) BUDGET=$2; shift ;;
    --steps) ONLY=",$2,"; shift ;;
    --force-debs) FORCE_DEBS=--force-debs ;;
    --force-fail) FORCE_FAIL=$2; shift ;;
    -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
    -*) echo "gpu_check: unknown option $1" >&2; exit 2 ;;
    *) OUT_DIR=$1 ;;
  esac
  shift
done
WORK=${LLAMOE_WORK:-/tmp/llamoe-gpu-check}
mkdir -p "$OUT_DIR" "$WORK"
rm -f "$WORK"/*.json "$WORK"/steps.jsonl
BUILD=${PREBUILT:-$WORK/build}
STEPS=$WORK/steps.jsonl
T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
export SRC WORK BUILD LAYERS CPU_ONLY FORCE_FAIL PYTHONUNBUFFERED=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none
# NCCL on one machine: warnings only, and the loopback interface where there is no InfiniBand.
export NCCL_DEBUG=WARN
if ! ls /sys/class/infiniband/* > /dev/null 2>&1; then export NCCL_IB_DISABLE=1 NCCL_SOCKET_IFNAME=lo; fi
MPIRUN="mpirun --bind-to none"
export MPIRUN

# record NAME STATUS SECONDS RC NOTE
record() {
  python3 -c 'import json,sys; print(json.dumps({"step": sys.argv[1], "status": sys.argv[2], "seconds": int(sys.argv[3]), "rc": int(sys.argv[4]), "note": sys.argv[5]}))' \
    "$1" "$2" "$3" "$4" "${5:-}" >> "$STEPS"
}

status_of() { case $1 in 0) echo ok ;; 77) echo skipped ;; 124|137) echo timeout ;; *) echo fail ;; esac; }

# step NAME LIMIT FUNCTION: runs FUNCTION (exported) under timeout within the budget left; a
# failure is run once more with CUDA_LAUNCH_BLOCKING=1 (WRAP=compute-sanitizer for the test
# programs when the machine has it), whose status is recorded beside the first.
step() {
  local name=$1 limit=$2 fn=$3 left rc status t note=""
  if [ -n "$ONLY" ] && [ "${ONLY#*,"$name",}" = "$ONLY" ]; then
    record "$name" skipped 0 0 "not in --steps"; return
  fi
  left=$(( BUDGET - $(elapsed) - 15 ))   # 15 s kept for the summary
  if [ "$left" -lt 20 ]; then
    echo "=== $name: skipped (budget spent at $(elapsed) s)"; record "$name" skipped 0 0 "out of time"; return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "=== [$(elapsed) s] $name (limit ${limit} s)"
  t=$(date +%s)
  WRAP="" timeout --kill-after=10 "$limit" bash -c "$fn"
  rc=$?
  status=$(status_of $rc)
  echo "=== $name: $status (rc $rc, $(( $(date +%s) - t )) s)"
  if [ "$status" = fail ] && [ "$CPU_ONLY" = 0 ]; then
    left=$(( BUDGET - $(elapsed) - 15 ))
    if [ "$left" -ge 30 ]; then
      local wrap=""
      command -v compute-sanitizer > /dev/null && wrap="compute-sanitizer --error-exitcode 3 --print-limit 20"
      [ "$limit" -gt "$left" ] && limit=$left
      echo "=== [$(elapsed) s] $name again with CUDA_LAUNCH_BLOCKING=1${wrap:+ under compute-sanitizer} (limit ${limit} s)"
      CUDA_LAUNCH_BLOCKING=1 WRAP="$wrap" timeout --kill-after=10 "$limit" bash -c "$fn"
      note="rerun with CUDA_LAUNCH_BLOCKING=1${wrap:+ and compute-sanitizer}: $(status_of $?)"
      echo "=== $name: $note"
    fi
  fi
  record "$name" "$status" $(( $(date +%s) - t )) "$rc" "$note"
}

needs_gpu() { if [ "$CPU_ONLY" = 1 ]; then echo "no GPU (--cpu-only): skipped"; exit 77; fi; }
export -f needs_gpu

# ---------------------------------------------------------------------------- the checks
ops_fn() {
  local be=cuda
  [ "$CPU_ONLY" = 1 ] && be=cpu   # the plumbing: the CPU backend against the naive references
  $PY "$SRC/tests/gpu/gpu_check_tools.py" ops --test "$BUILD/test_ops" --src "$SRC" --backend "$be" \
    --wrap "$WRAP" --force-fail "$FORCE_FAIL" --json "$WORK/ops.json"
}
expected_cuda_fn() { needs_gpu; $WRAP "$BUILD/test_expected" "$SRC" --backend cuda; }
copies_fn() {
  local be=cuda
  [ "$CPU_ONLY" = 1 ] && be=cpu
  $WRAP "$BUILD/test_moe_copies" "$SRC" --backend "$be"
}
expected_ep_fn() {
  $PY "$SRC/tests/gpu/gpu_check_tools.py" expected --ep "$BUILD/llamoe-ep" --src "$SRC" --launcher "$MPIRUN -np 1" --backend "$BACKEND" \
    --modes dense,identity:8,upcycle:8:2 --json "$WORK/expected_ep.json"
}
ranks_fn() {
  $PY "$SRC/tests/gpu/gpu_check_tools.py" ranks --ep "$BUILD/llamoe-ep" --src "$SRC" --work "$WORK" --mpirun "$MPIRUN" --np 3 --backend "$BACKEND" \
    --transport mpi --modes upcycle:8:2,identity:8,production:8:2 -n 24 --json "$WORK/ranks.json"
}
balance_fn() {
  $PY "$SRC/tests/gpu/gpu_check_tools.py" ranks --ep "$BUILD/llamoe-ep" --src "$SRC" --work "$WORK" --mpirun "$MPIRUN" --np 3 \
    --backend "$BACKEND" --transport mpi --modes production:8:2,upcycle:8:2 -n 24 \
    --extra-n "--placement balanced --redundant-experts 3 --rebalance 2 --rebalance-check" --json "$WORK/balance.json"
}
nccl_ep_fn() {
  needs_gpu
  $PY "$SRC/tests/gpu/gpu_check_tools.py" expected --ep "$BUILD/llamoe-ep" --src "$SRC" --launcher "$MPIRUN -np 1" \
    --transport nccl --modes upcycle:8:2 --json "$WORK/nccl_ep.json"
}
nccl_ranks_fn() {
  needs_gpu
  local v
  v=$("$BUILD/check_comm_cuda" version | awk '{print $3}')
  echo "NCCL loaded: $("$BUILD/check_comm_cuda" version)"
  if [ -z "$v" ] || [ "$v" -lt 23000 ]; then
    echo "{\"skipped\": \"NCCL ${v:-unknown} refuses several ranks on one GPU (2.30 or later needed)\", \"nccl_version\": ${v:-0}}" > "$WORK/nccl_ranks.json"
    echo "NCCL $v: several ranks per GPU need NCCL 2.30 or later: skipped"
    exit 77
  fi
  NCCL_MULTI_RANK_GPU_ENABLE=1 $PY "$SRC/tests/gpu/gpu_check_tools.py" ranks --ep "$BUILD/llamoe-ep" --src "$SRC" --work "$WORK" \
    --mpirun "$MPIRUN -x NCCL_MULTI_RANK_GPU_ENABLE=1" --np 3 --backend cuda --transport nccl \
    --modes upcycle:8:2,identity:8 -n 24 --json "$WORK/nccl_ranks.json"
}
perf8b_fn() {
  local deadline=$(( $(date +%s) + 240 ))
  while ! grep -q '^rc=' "$MKLOG" 2> /dev/null; do
    [ "$(date +%s)" -gt "$deadline" ] && { echo "the 8B-shaped model was not written in time"; return 1; }
    sleep 2
  done
  cat "$MKLOG"
  grep -q '^rc=0' "$MKLOG" || return 1
  $PY "$SRC/tests/gpu/gpu_check_tools.py" perf8b --ep "$BUILD/llamoe-ep" --model "$M8B" --work "$WORK" --backend "$BACKEND" \
    --launcher "$MPIRUN -np 1" --modes "$PERF_MODES" -n 64 --prefill "$PREFILL" --json "$WORK/perf8b.json"
}
hf_fn() {
  $PY "$SRC/tests/gpu/hf_crosscheck.py" --build "$BUILD" --model "$SRC/models/stories260k" --work "$WORK/hf" \
    --json "$WORK/hf_crosscheck.json" --backend "$BACKEND" -n 16
}
backends_fn() {
  needs_gpu
  $PY "$SRC/tests/gpu/gpu_check_tools.py" backends --ep "$BUILD/llamoe-ep" --src "$SRC" --work "$WORK" --launcher "$MPIRUN -np 1" \
    --modes dense,upcycle:8:2 -n 24 --step 64 --json "$WORK/backends.json"
}
comm_fn() {
  needs_gpu
  local rc=0
  $MPIRUN -np 3 "$BUILD/check_comm_cuda" mpi || rc=1
  $MPIRUN -np 1 "$BUILD/check_comm_cuda" nccl || rc=1
  if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then $MPIRUN -np 2 "$BUILD/check_comm_cuda" nccl || rc=1; fi
  return $rc
}
gemm_fn() { needs_gpu; "$BUILD/bench_grouped_gemm" --json "$WORK/grouped_gemm.json"; }
scaling_fn() {
  $PY "$SRC/bench/scaling.py" --quick --build "$BUILD" --out "$WORK/scaling" --backend "$BACKEND" --docs none
}
export -f ops_fn expected_cuda_fn copies_fn expected_ep_fn ranks_fn balance_fn nccl_ep_fn nccl_ranks_fn perf8b_fn hf_fn backends_fn \
          comm_fn gemm_fn scaling_fn

main() {
  # -------------------------------------------------------------------------- environment
  HAVE_GPU=0
  if [ "$CPU_ONLY" = 0 ] && nvidia-smi -L > /dev/null 2>&1; then HAVE_GPU=1; fi
  [ "$CPU_ONLY" = 0 ] && [ "$HAVE_GPU" = 0 ] && { echo "gpu_check: nvidia-smi sees no GPU: running as --cpu-only"; CPU_ONLY=1; }
  BACKEND=cuda
  [ "$CPU_ONLY" = 1 ] && BACKEND=cpu
  export CPU_ONLY BACKEND
  ARCH=90 GPU_MIB=0
  if [ "$HAVE_GPU" = 1 ]; then
    cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2> /dev/null | head -1 | tr -d ' .')
    [ -n "$cc" ] && ARCH=$cc
    GPU_MIB=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2> /dev/null | head -1 | tr -d ' ')
  fi
  NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
  PY=$(command -v python3)
  export PY
  echo "=== gpu_check: $(date -u +%FT%TZ) src $SRC out $OUT_DIR work $WORK cpu_only $CPU_ONLY arch $ARCH layers $LAYERS budget $BUDGET"
  $PY "$SRC/tests/gpu/gpu_check_tools.py" env --json "$WORK/env.json"
  record env ok 0 0 "$(nvidia-smi -L 2> /dev/null | head -1)"

  # -------------------------------------------------------------------------- dependencies
  t=$(date +%s)
  # shellcheck source=gpu_env.sh
  source "$SRC/tests/gpu/gpu_env.sh" "$WORK" $FORCE_DEBS
  echo "=== deps: $LLAMOE_DEPS ($(command -v mpirun || echo no mpirun))"
  record deps "$([ "$LLAMOE_DEPS" = missing ] && echo fail || echo ok)" $(( $(date +%s) - t )) 0 "$LLAMOE_DEPS"

  # -------------------------------------------------------------------------- build
  # cuBLAS and NCCL from the toolkit, else from the pip wheels (cmake/cuda.cmake looks in
  # site-packages/nvidia/{cublas,nccl,cu13} itself).
  CMAKE_ARGS="-DLLAMOE_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=$ARCH -DPython3_EXECUTABLE=$PY $LLAMOE_CMAKE_MPI_ARGS"
  [ -x "$NVCC" ] && CMAKE_ARGS="$CMAKE_ARGS -DCMAKE_CUDA_COMPILER=$NVCC"
  export CMAKE_ARGS JOBS=$(nproc)
  build_fn() {
    set -e
    cmake -S "$SRC" -B "$BUILD" $CMAKE_ARGS
    # the model maker first, so the 8B-shaped model is written while the rest builds and runs
    cmake --build "$BUILD" -j "$JOBS" --target llamoe-mkmodel
    cmake --build "$BUILD" -j "$JOBS"
  }
  export -f build_fn
  if [ -n "$PREBUILT" ]; then record build skipped 0 0 "--build $PREBUILT"; else step build 360 build_fn; fi

  # The 8B-shaped model, in the background (CPU and disk only), with the modes that fit: upcycle
  # holds 8 copies of the FFN (about 95 GB at 32 layers), so it runs where the GPU has 120 GB.
  PRESET=llama3.1-8b PREFILL=2048 PERF_MODES=dense,identity:8
  [ "${GPU_MIB:-0}" -ge 120000 ] && PERF_MODES=$PERF_MODES,upcycle:8:2
  [ "$LAYERS" -le 16 ] && PERF_MODES=dense,identity:8,upcycle:8:2
  [ "$CPU_ONLY" = 1 ] && PRESET=tiny PREFILL=128   # plumbing only
  M8B=$WORK/${PRESET}_L$LAYERS
  MKLOG=$WORK/mkmodel.log
  export M8B MKLOG PREFILL PERF_MODES
  rm -f "$MKLOG"
  if [ -x "$BUILD/llamoe-mkmodel" ] && [ ! -f "$M8B/config.json" ]; then
    echo "=== [$(elapsed) s] mkmodel: $PRESET BF16, $LAYERS layers -> $M8B (background)"
    ( s=$(date +%s); "$BUILD/llamoe-mkmodel" -o "$M8B" --preset "$PRESET" --dtype BF16 --layers "$LAYERS" --force > "$MKLOG" 2>&1;
      echo "rc=$? seconds=$(( $(date +%s) - s ))" >> "$MKLOG" ) &
    MK_PID=$!
  elif [ -f "$M8B/config.json" ]; then
    echo "rc=0 (kept from an earlier run)" > "$MKLOG"
  else
    echo "rc=1 (no llamoe-mkmodel in $BUILD)" > "$MKLOG"
  fi

  # -------------------------------------------------------------------------- the steps
  if [ -x "$BUILD/llamoe-ep" ]; then
    step ops 150 ops_fn
    step expected_cuda 60 expected_cuda_fn
    step copies 60 copies_fn
    step expected_ep 90 expected_ep_fn
    step ranks 90 ranks_fn
    step balance 60 balance_fn
    step nccl_ep 60 nccl_ep_fn
    step nccl_ranks 90 nccl_ranks_fn
    step perf8b 240 perf8b_fn
    step hf 120 hf_fn
    step backends 60 backends_fn
    step comm 60 comm_fn
    step grouped_gemm 90 gemm_fn
    step scaling 60 scaling_fn
  else
    echo "=== the build produced no programs: the steps are skipped"
    for s in ops expected_cuda copies expected_ep ranks balance nccl_ep nccl_ranks perf8b hf backends comm grouped_gemm scaling; do
      record "$s" skipped 0 0 "no build"
    done
  fi
  [ -n "${MK_PID:-}" ] && kill "$MK_PID" 2> /dev/null

  # -------------------------------------------------------------------------- summary
  $PY "$SRC/tests/gpu/gpu_check_tools.py" summary --steps "$STEPS" --work "$WORK" --out "$OUT_DIR/summary.json"
  echo "=== gpu_check done in $(elapsed) s"
  $PY -c 'import json,sys
for x in json.load(open(sys.argv[1]))["steps"]: print("  %-14s %-8s %4d s %s" % (x["step"], x["status"], x["seconds"], x["note"]))' "$OUT_DIR/summary.json"
}

# The whole output to the log too; the pipe is waited for, so the log keeps its last line.
main 2>&1 | tee "$OUT_DIR/gpu_check.log"
exit "${PIPESTATUS[0]}"
