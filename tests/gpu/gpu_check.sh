#!/usr/bin/env bash
# The GPU check: one command for a lent GPU machine (one H100/H200, CUDA 13, PyTorch and
# transformers in its python3; Open MPI, hwloc, json-c, pcre2 unpacked from gpu-debs/ when
# missing). Builds the project with CUDA, then runs, each step time-limited and recorded
# (a failing step does not stop the others):
#   ops_cuda       every op, CUDA vs CPU backend, bf16 tolerances (tests/cuda/test_ops_cuda)
#   expected_cuda  bundled model greedy ids and logits on the CUDA backend (library level)
#   expected_ep    llamoe-ep --backend cuda: dense / identity:8 / upcycle:8:2 vs expected.json
#   backends       a 60-token prompt on cpu and cuda: same ids, logits within 1e-3
#   ranks          1 vs 3 ranks on the one GPU, MPI transport (device data staged on the host)
#   comm           transports alone: MPI staged (3 ranks), NCCL (1 rank; 2 if 2 GPUs)
#   nccl_ep        llamoe-ep --transport nccl, bundled model, vs expected.json
#   hf             transformers LlamaForCausalLM / MixtralForCausalLM vs llamoe logits
#   grouped_gemm   grouped expert GEMM variants vs a dense cuBLASLt GEMM
#   perf8b         Llama 3.1 8B-shaped bf16 model (llamoe-mkmodel, made in the background
#                  during the tests): decode ms/token, 2048-token prefill tokens/s, dense
#                  vs identity:8, against the weight-read bound
# Results: OUT_DIR/summary.json (every step: status, seconds, and each step's JSON) and
# OUT_DIR/gpu_check.log (the whole output). The whole run keeps within --budget seconds.
#
#   tests/gpu/gpu_check.sh [OUT_DIR] [--cpu-only] [--layers N] [--budget S] [--steps A,B] [--force-debs]
#     OUT_DIR      default $OUT (the device tool sets it), else ./gpu-check-out
#     --cpu-only   no GPU here: deps, build (CUDA compiled, not run), and the plumbing of the
#                  llamoe-ep steps (expected_ep, ranks, hf, perf8b on a tiny model) with
#                  --backend cpu; GPU-only steps are recorded as skipped
#     --layers N   layers of the 8B-shaped model (default 32; fewer saves time)
#     --budget S   seconds for the whole run (default 420: a rerun still fits a 15-minute lease)
#     --steps A,B  run only these checks (the build always runs), e.g. for a rerun of failures
#     --force-debs use gpu-debs/ even if the machine has MPI etc. (to test that path)
# With the device tool:  run(command="bash tests/gpu/gpu_check.sh", carry=["gpu-debs"], timeout_s=480)
set -u
SRC=$(cd "$(dirname "$0")/../.." && pwd)
OUT_DIR=${OUT:-$SRC/gpu-check-out}
CPU_ONLY=0 LAYERS=32 BUDGET=420 FORCE_DEBS="" ONLY=""
while [ $# -gt 0 ]; do
  case $1 in
    --cpu-only|--dry-run) CPU_ONLY=1 ;;
    --layers) LAYERS=$2; shift ;;
    --budget) BUDGET=$2; shift ;;
    --steps) ONLY=",$2,"; shift ;;
    --force-debs) FORCE_DEBS=--force-debs ;;
    -h|--help) sed -n '2,32p' "$0"; exit 0 ;;
    -*) echo "gpu_check: unknown option $1" >&2; exit 2 ;;
    *) OUT_DIR=$1 ;;
  esac
  shift
done
WORK=${LLAMOE_WORK:-/tmp/llamoe-gpu-check}
mkdir -p "$OUT_DIR" "$WORK"
rm -f "$WORK"/*.json "$WORK"/steps.jsonl
BUILD=$WORK/build
STEPS=$WORK/steps.jsonl
exec > >(tee "$OUT_DIR/gpu_check.log") 2>&1
T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
export SRC WORK BUILD LAYERS CPU_ONLY PYTHONUNBUFFERED=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none
MPIRUN="mpirun --bind-to none"
export MPIRUN

# record NAME STATUS SECONDS RC NOTE
record() {
  python3 -c 'import json,sys; print(json.dumps({"step": sys.argv[1], "status": sys.argv[2], "seconds": int(sys.argv[3]), "rc": int(sys.argv[4]), "note": sys.argv[5]}))' \
    "$1" "$2" "$3" "$4" "${5:-}" >> "$STEPS"
}

# step NAME LIMIT FUNCTION: runs FUNCTION (exported) under timeout within the budget left.
step() {
  local name=$1 limit=$2 fn=$3 left rc status t
  if [ -n "$ONLY" ] && [ "$name" != build ] && [ "${ONLY#*,"$name",}" = "$ONLY" ]; then
    record "$name" skipped 0 0 "not in --steps"; return
  fi
  left=$(( BUDGET - $(elapsed) - 15 ))   # 15 s kept for the summary
  if [ "$left" -lt 20 ]; then
    echo "=== $name: skipped (budget spent at $(elapsed) s)"; record "$name" skipped 0 0 "out of time"; return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "=== [$(elapsed) s] $name (limit ${limit} s)"
  t=$(date +%s)
  timeout --kill-after=10 "$limit" bash -c "$fn"
  rc=$?
  case $rc in
    0) status=ok ;; 77) status=skipped ;; 124|137) status=timeout ;; *) status=fail ;;
  esac
  echo "=== $name: $status (rc $rc, $(( $(date +%s) - t )) s)"
  record "$name" "$status" $(( $(date +%s) - t )) "$rc" ""
}

needs_gpu() { if [ "$CPU_ONLY" = 1 ]; then echo "no GPU (--cpu-only): skipped"; exit 77; fi; }
export -f needs_gpu

# ---------------------------------------------------------------------------- environment
HAVE_GPU=0
if [ "$CPU_ONLY" = 0 ] && nvidia-smi -L > /dev/null 2>&1; then HAVE_GPU=1; fi
[ "$CPU_ONLY" = 0 ] && [ "$HAVE_GPU" = 0 ] && { echo "gpu_check: nvidia-smi sees no GPU: running as --cpu-only"; CPU_ONLY=1; }
BACKEND=cuda
[ "$CPU_ONLY" = 1 ] && BACKEND=cpu
export CPU_ONLY BACKEND
ARCH=90
if [ "$HAVE_GPU" = 1 ]; then
  cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2> /dev/null | head -1 | tr -d ' .')
  [ -n "$cc" ] && ARCH=$cc
fi
NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
PY=$(command -v python3)
NCCL_ROOT=$($PY -c 'import nvidia.nccl as m; print(list(m.__path__)[0])' 2> /dev/null || true)
CUBLAS_ROOT=$($PY -c 'import nvidia.cublas as m; print(list(m.__path__)[0])' 2> /dev/null || true)
env_json() {
  $PY - "$WORK/env.json" << 'PYEOF'
import json, os, platform, subprocess, sys
def sh(c):
    try: return subprocess.run(c, shell=True, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception as e: return f"error: {e}"
info = {"uname": platform.uname()._asdict(), "os": sh(". /etc/os-release; echo $PRETTY_NAME"),
        "nvidia_smi": sh("nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap,clocks.max.memory --format=csv,noheader"),
        "nvcc": sh("nvcc --version | tail -2"), "gcc": sh("gcc --version | head -1"), "cmake": sh("cmake --version | head -1"),
        "nproc": os.cpu_count(), "python": sys.version.split()[0]}
for mod in ("torch", "transformers", "numpy", "safetensors"):
    try: info[mod] = __import__(mod).__version__
    except Exception as e: info[mod] = f"missing ({e.__class__.__name__})"
info["pip_nvidia"] = sh("python3 -m pip list 2>/dev/null | grep -i -E 'nvidia-(nccl|cublas|cuda-runtime)'")
json.dump(info, open(sys.argv[1], "w"), indent=1)
print(json.dumps(info, indent=1))
PYEOF
}
echo "=== gpu_check: $(date -u +%FT%TZ) src $SRC out $OUT_DIR work $WORK cpu_only $CPU_ONLY arch $ARCH layers $LAYERS budget $BUDGET"
env_json
record env ok 0 0 ""

# ---------------------------------------------------------------------------- dependencies
t=$(date +%s)
# shellcheck source=gpu_env.sh
source "$SRC/tests/gpu/gpu_env.sh" "$WORK" $FORCE_DEBS
echo "=== deps: $LLAMOE_DEPS ($(command -v mpirun || echo no mpirun))"
record deps "$([ "$LLAMOE_DEPS" = missing ] && echo fail || echo ok)" $(( $(date +%s) - t )) 0 "$LLAMOE_DEPS"

# ---------------------------------------------------------------------------- build
CMAKE_ARGS="-DLLAMOE_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=$ARCH -DPython3_EXECUTABLE=$PY $LLAMOE_CMAKE_MPI_ARGS"
[ -x "$NVCC" ] && CMAKE_ARGS="$CMAKE_ARGS -DCMAKE_CUDA_COMPILER=$NVCC"
[ -n "$NCCL_ROOT" ] && [ ! -f /usr/local/cuda/include/nccl.h ] && CMAKE_ARGS="$CMAKE_ARGS -DLLAMOE_NCCL_ROOT=$NCCL_ROOT"
[ -n "$CUBLAS_ROOT" ] && [ ! -f /usr/local/cuda/include/cublasLt.h ] && CMAKE_ARGS="$CMAKE_ARGS -DLLAMOE_CUBLAS_ROOT=$CUBLAS_ROOT"
export CMAKE_ARGS
JOBS=$(nproc)
export JOBS
build_fn() {
  set -e
  cmake -S "$SRC" -B "$BUILD" $CMAKE_ARGS
  # the model maker first, so the 8B-shaped model can be written while the rest builds and runs
  if grep -q llamoe-mkmodel "$BUILD/Makefile" 2> /dev/null || [ -f "$SRC/launch/llamoe_mkmodel.c" ]; then
    cmake --build "$BUILD" -j "$JOBS" --target llamoe-mkmodel
  fi
  cmake --build "$BUILD" -j "$JOBS"
}
export -f build_fn
step build 360 build_fn

# The 8B-shaped model, in the background (CPU and disk only).
PRESET=llama3.1-8b PREFILL=2048
[ "$CPU_ONLY" = 1 ] && PRESET=tiny PREFILL=128   # plumbing only
M8B=$WORK/${PRESET}_L$LAYERS
MKLOG=$WORK/mkmodel.log
rm -f "$MKLOG"
if [ -x "$BUILD/llamoe-mkmodel" ] && [ ! -f "$M8B/config.json" ]; then
  echo "=== [$(elapsed) s] mkmodel: $PRESET BF16, $LAYERS layers -> $M8B (background)"
  ( s=$(date +%s); "$BUILD/llamoe-mkmodel" -o "$M8B" --preset "$PRESET" --dtype BF16 --layers "$LAYERS" --force > "$MKLOG" 2>&1;
    echo "rc=$? seconds=$(( $(date +%s) - s ))" >> "$MKLOG" ) &
  MK_PID=$!
elif [ -f "$M8B/config.json" ]; then
  echo "rc=0 (kept from an earlier run)" > "$MKLOG"
else
  echo "rc=1 (no llamoe-mkmodel in this build: launch/llamoe_mkmodel.c is missing or did not build)" > "$MKLOG"
fi
export M8B MKLOG PREFILL

# ---------------------------------------------------------------------------- the checks
ops_fn() { needs_gpu; "$BUILD/test_ops_cuda" "$SRC" --json "$WORK/ops_cuda.json"; }
expected_cuda_fn() { needs_gpu; "$BUILD/test_expected" "$SRC" --backend cuda; }
expected_ep_fn() {
  $PY "$SRC/tests/gpu/gpu_check_tools.py" expected --ep "$BUILD/llamoe-ep" --src "$SRC" --launcher "$MPIRUN -np 1" --backend "$BACKEND" \
    --modes dense,identity:8,upcycle:8:2 --json "$WORK/expected_ep.json"
}
backends_fn() {
  needs_gpu
  $PY "$SRC/tests/gpu/gpu_check_tools.py" backends --ep "$BUILD/llamoe-ep" --src "$SRC" --work "$WORK" --launcher "$MPIRUN -np 1" \
    --modes dense,upcycle:8:2 -n 24 --step 64 --json "$WORK/backends.json"
}
ranks_fn() {
  $PY "$SRC/tests/gpu/gpu_check_tools.py" ranks --ep "$BUILD/llamoe-ep" --src "$SRC" --work "$WORK" --mpirun "$MPIRUN" --np 3 --backend "$BACKEND" \
    --transport mpi --modes upcycle:8:2,identity:8 -n 24 --json "$WORK/ranks.json"
}
comm_fn() {
  needs_gpu
  local rc=0 n
  $MPIRUN -np 3 "$BUILD/check_comm_cuda" mpi || rc=1
  $MPIRUN -np 1 "$BUILD/check_comm_cuda" nccl || rc=1
  n=$(nvidia-smi -L | wc -l)
  if [ "$n" -ge 2 ]; then $MPIRUN -np 2 "$BUILD/check_comm_cuda" nccl || rc=1; else echo "one GPU: NCCL with 2 ranks not run"; fi
  return $rc
}
nccl_ep_fn() {
  needs_gpu
  $PY "$SRC/tests/gpu/gpu_check_tools.py" expected --ep "$BUILD/llamoe-ep" --src "$SRC" --launcher "$MPIRUN -np 1" \
    --transport nccl --modes upcycle:8:2 --json "$WORK/nccl_ep.json"
}
hf_fn() {
  $PY "$SRC/tests/gpu/hf_crosscheck.py" --build "$BUILD" --model "$SRC/models/stories260k" --work "$WORK/hf" \
    --json "$WORK/hf_crosscheck.json" --backend "$BACKEND" -n 16
}
gemm_fn() { needs_gpu; "$BUILD/bench_grouped_gemm" --json "$WORK/grouped_gemm.json"; }
perf8b_fn() {
  local deadline=$(( $(date +%s) + 200 ))
  while ! grep -q '^rc=' "$MKLOG" 2> /dev/null; do
    [ "$(date +%s)" -gt "$deadline" ] && { echo "mkmodel did not finish"; return 1; }
    sleep 2
  done
  cat "$MKLOG"
  grep -q '^rc=0' "$MKLOG" || return 1
  local modes=dense,identity:8
  [ "$LAYERS" -le 16 ] && modes=$modes,upcycle:8:2   # 8 copies of the FFN: 32 layers do not fit 80 GB
  $PY "$SRC/tests/gpu/gpu_check_tools.py" perf8b --ep "$BUILD/llamoe-ep" --model "$M8B" --work "$WORK" --backend "$BACKEND" \
    --launcher "$MPIRUN -np 1" --modes "$modes" -n 64 --prefill "$PREFILL" --json "$WORK/perf8b.json"
}
# The GPU halves of the scaling and memory-mode studies (issues 7 and 8), at their quick size:
# each rank's share of the work on one GPU.
scaling_fn() {
  $PY "$SRC/bench/scaling.py" --quick --build "$BUILD" --out "$WORK/scaling" --backend "$BACKEND" --docs none
}
offload_fn() {
  QUICK=1 OUT="$WORK/offload" WORK="$WORK/offload-models" EP_ARGS="--backend $BACKEND" bash "$SRC/bench/offload/run.sh" "$BUILD"
}
export -f ops_fn expected_cuda_fn expected_ep_fn backends_fn ranks_fn comm_fn nccl_ep_fn hf_fn gemm_fn perf8b_fn scaling_fn offload_fn
export PY

if [ -x "$BUILD/llamoe-ep" ] || [ -x "$BUILD/test_ops_cuda" ]; then
  step ops_cuda 150 ops_fn
  step expected_cuda 90 expected_cuda_fn
  step expected_ep 90 expected_ep_fn
  step backends 60 backends_fn
  step ranks 90 ranks_fn
  step comm 60 comm_fn
  step nccl_ep 60 nccl_ep_fn
  step hf 120 hf_fn
  step grouped_gemm 90 gemm_fn
  step perf8b 240 perf8b_fn
  step scaling 60 scaling_fn
  step offload 60 offload_fn
else
  echo "=== build produced no programs: the checks are skipped"
  for s in ops_cuda expected_cuda expected_ep backends ranks comm nccl_ep hf grouped_gemm perf8b scaling offload; do record "$s" skipped 0 0 "no build"; done
fi
[ -n "${MK_PID:-}" ] && kill "$MK_PID" 2> /dev/null

# ---------------------------------------------------------------------------- summary
$PY "$SRC/tests/gpu/gpu_check_tools.py" summary --steps "$STEPS" --work "$WORK" --out "$OUT_DIR/summary.json"
echo "=== gpu_check done in $(elapsed) s"
python3 -c 'import json,sys
for x in json.load(open(sys.argv[1]))["steps"]: print("  %-14s %-8s %4d s %s" % (x["step"], x["status"], x["seconds"], x["note"]))' "$OUT_DIR/summary.json"
exit 0
