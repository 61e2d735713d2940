#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan+UBSan) in their own tree and runs one of them.
#   tests/fuzz/run.sh TARGET SECONDS [libFuzzer options...]
#   tests/fuzz/run.sh all SECONDS        each target in turn
#   tests/fuzz/run.sh build              only build
# TARGET: safetensors st_index config tokenizer prompts cli (tests/fuzz/targets.h).
# Environment: FUZZ_BUILD (default build-fuzz), FUZZ_JOBS (parallel workers, default 1),
# FUZZ_OUT (default $FUZZ_BUILD/out): new corpus entries go to FUZZ_OUT/corpus/TARGET (the
# committed seeds in tests/fuzz/corpus/TARGET are read, never written), crashes to
# FUZZ_OUT/artifacts/TARGET. Exit status non-zero if the target found anything; the last
# "stat::" lines (executions, execs per second) are printed for docs/hardening.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
src=$PWD
build=${FUZZ_BUILD:-build-fuzz}
targets="safetensors st_index config tokenizer prompts cli"

if ! command -v clang >/dev/null; then
  echo "fuzz: clang is needed (Debian: apt-get install clang libclang-rt-14-dev)" >&2
  exit 2
fi
CC=clang cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLLAMOE_FUZZ=ON >/dev/null
cmake --build "$build" -j"$(nproc)" >/dev/null

what=${1:-}
case "$what" in
  build) exit 0 ;;
  all) shift; secs=${1:?usage: run.sh all SECONDS}; shift
       rc=0
       for t in $targets; do "$0" "$t" "$secs" "$@" || rc=1; done
       exit $rc ;;
  "") echo "usage: tests/fuzz/run.sh TARGET|all|build SECONDS [libFuzzer options]" >&2; exit 2 ;;
esac
target=$what
secs=${2:?usage: run.sh TARGET SECONDS}
shift 2
case " $targets " in *" $target "*) ;; *) echo "fuzz: unknown target $target ($targets)" >&2; exit 2 ;; esac

out=${FUZZ_OUT:-$build/out}
mkdir -p "$out/corpus/$target" "$out/artifacts/$target"
dict=()
[ -f "tests/fuzz/dict/$target.dict" ] && dict=(-dict="tests/fuzz/dict/$target.dict")
jobs=${FUZZ_JOBS:-1}
par=()
[ "$jobs" -gt 1 ] && par=(-fork="$jobs")
log="$out/$target.log"
# detect_leaks: the parsers free everything on every path, so a leak is a finding too.
# -rss_limit_mb: a tiny file that makes a parser allocate gigabytes is a finding.
# -timeout: one input taking seconds is a finding (pathological regex, quadratic loop).
ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1} \
UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
"$build/fuzz_$target" "$out/corpus/$target" "$src/tests/fuzz/corpus/$target" \
  -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
  -artifact_prefix="$out/artifacts/$target/" "${dict[@]}" "${par[@]}" "$@" >"$log" 2>&1 && rc=0 || rc=$?
execs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{s+=$2} END {print s+0}')
rate=$(grep -E '^stat::average_exec_per_sec' "$log" | awk '{s+=$2} END {print s+0}')
cov=$(grep -E "#[0-9]+.*cov: " "$log" | tail -1 | sed -E "s/.*cov: ([0-9]+).*/\1/" || true)
printf 'fuzz %-12s %5ss: %9s execs, %6s exec/s, cov %s, rc %s\n' "$target" "$secs" "$execs" "$rate" "${cov:-?}" "$rc"
if [ "$rc" -ne 0 ]; then
  grep -E 'ERROR|SUMMARY|runtime error|Test unit written|deadly signal|timeout' "$log" | head -20 >&2
  echo "fuzz: $target found something; full log $log, inputs in $out/artifacts/$target/" >&2
  echo "fuzz: keep each as tests/fuzz/regressions/$target/<name> after fixing it" >&2
fi
exit "$rc"
