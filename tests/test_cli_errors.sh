#!/usr/bin/env bash
# Bad command lines and inputs to llamoe-ep: a clear one-line error, non-zero exit, no crash,
# nothing on stdout. Cases in tests/data/cli_errors.txt; checkpoint corruption cases below.
. "$(dirname "$0")/lib.sh"
: > "$TMP/empty.txt"
printf '1,2\n\0003\n' > "$TMP/nul.txt"
ids600=$(python3 -c 'print(",".join(["1"] + ["400"] * 599))')

check_error() {   # EXPECT, then the llamoe-ep arguments
  local expect=$1; shift
  local out="$TMP/out" err="$TMP/err"
  timeout 60 "$B/llamoe-ep" "$@" >"$out" 2>"$err"
  local rc=$?
  local lines; lines=$(wc -l <"$err")
  if [ "$rc" -ne 0 ] && [ "$rc" -lt 124 ] && [ "$lines" -eq 1 ] && grep -qF -- "$expect" "$err" && [ ! -s "$out" ]; then
    ok "$expect: $(cat "$err")"
  else
    bad "$* -> rc $rc, stderr: $(head -c 300 "$err"), stdout: $(head -c 100 "$out") (wanted '$expect')"
  fi
}

while IFS='|' read -r expect args; do
  case "$expect" in \#*|"") continue ;; esac
  expect=$(echo "$expect" | sed 's/[[:space:]]*$//')
  args=${args//\$MODEL/$MODEL}
  args=${args//\$TMP/$TMP}
  args=${args//@600/$ids600}
  # shellcheck disable=SC2086
  check_error "$expect" $args
done < "$S/tests/data/cli_errors.txt"

# Checkpoint damage: each case copies the bundled model and breaks one thing.
damaged() { rm -rf "$TMP/m"; cp -r "$MODEL" "$TMP/m"; }
damaged; truncate -s 500000 "$TMP/m/model.safetensors"
check_error "model.safetensors" -m "$TMP/m" --ids 1,2
damaged; printf '\xff\xff\xff\xff\xff\xff\x00\x00{}' > "$TMP/m/model.safetensors"
check_error "header" -m "$TMP/m" --ids 1,2
damaged; sed -i 's/"hidden_size": 64/"hidden_size": 128/' "$TMP/m/config.json"
check_error "shape" -m "$TMP/m" --ids 1,2
damaged; sed -i 's/"num_hidden_layers": 5/"num_hidden_layers": 6/' "$TMP/m/config.json"
check_error "model.layers.5" -m "$TMP/m" --ids 1,2
damaged; echo '{"model_type": "llama",' > "$TMP/m/config.json"
check_error "config.json" -m "$TMP/m" --ids 1,2
damaged; rm "$TMP/m/model.safetensors"
check_error "model.safetensors" -m "$TMP/m" --ids 1,2

# The same errors under mpirun: every rank exits, mpirun reports failure, within the timeout.
start=$(date +%s)
mpi 3 "$B/llamoe-ep" --ids 1,403,9999 >"$TMP/out" 2>"$TMP/err"
rc=$?
if [ "$rc" -ne 0 ] && [ "$rc" -lt 124 ] && grep -q "out of range" "$TMP/err" && [ $(( $(date +%s) - start )) -lt 30 ]; then
  ok "mpirun -np 3 with a bad token id exits non-zero"
else
  bad "mpirun -np 3 with a bad token id: rc $rc, $(head -c 300 "$TMP/err")"
fi
finish
