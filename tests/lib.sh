# Shared by the shell tests: paths, mpirun with the flags containers need, and a tally that
# ends with the "N passed, M failed" line.
set -u
B=${LLAMOE_BUILD:?set by ctest}
S=${LLAMOE_SRC:?set by ctest}
MODEL="$S/models/stories260k"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_rmaps_base_oversubscribe=1
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
passed=0
failed=0

mpi() { local np=$1; shift; timeout 300 mpirun --oversubscribe -np "$np" "$@"; }

ok() { passed=$((passed + 1)); echo "ok   $*"; }
bad() { failed=$((failed + 1)); echo "FAIL $*"; }

finish() {
  echo "$(basename "$0" .sh): $passed passed, $failed failed"
  [ "$failed" -eq 0 ]
}

# Extracts a top-level JSON field with python3 (only for the tests).
json_field() { python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))[sys.argv[2]]))' "$1" "$2"; }
