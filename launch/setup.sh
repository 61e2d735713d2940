#!/usr/bin/env bash
# Installs what llamoe needs on Debian 12 (as root), configures and builds it, then
#   --run   runs the main job: mpirun -np 3 llamoe-ep on the bundled model
#   --test  runs the whole test suite (ctest)
# Environment: BUILD_DIR (default build), LLAMOE_CMAKE_ARGS (extra cmake arguments).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build}

pkgs="build-essential cmake pkg-config libopenmpi-dev openmpi-bin libjson-c-dev libpcre2-dev libhwloc-dev libmicrohttpd-dev python3 gnuplot-nox procps"
missing=""
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "setup: installing$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $missing
fi

cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release ${LLAMOE_CMAKE_ARGS:-} >/dev/null
cmake --build "$build" -j"$(nproc)"

# Open MPI refuses root unless told; containers lack the single-copy mechanism.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none
case "${1:-}" in
  --run)  exec mpirun --oversubscribe -np 3 "$build/llamoe-ep" ;;
  --test)
    (cd "$build" && ctest --output-on-failure --timeout 900)
    # Without a GPU the CUDA backend must still compile and link: checked where the toolkit is.
    if [ -x /usr/local/cuda/bin/nvcc ] && [ "${LLAMOE_SKIP_CUDA_BUILD:-0}" != 1 ]; then
      echo "setup: compiling and linking the CUDA backend (build-cuda/; it runs only on a GPU)"
      cmake -S . -B "$build-cuda" -DCMAKE_BUILD_TYPE=Release -DLLAMOE_CUDA=ON ${LLAMOE_CMAKE_ARGS:-} >/dev/null
      cmake --build "$build-cuda" -j"$(nproc)" >/dev/null
      echo "setup: CUDA backend built: $(ls "$build-cuda"/llamoe-ep)"
      # The GPU tests themselves: without a GPU they report themselves skipped, not passed.
      (cd "$build-cuda" && ctest -R cuda --output-on-failure --timeout 900)
    fi ;;
  "")     ;;
  *)      echo "usage: launch/setup.sh [--run|--test]" >&2; exit 2 ;;
esac
