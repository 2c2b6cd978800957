#!/usr/bin/env bash
# Runs berth's fuzz targets (cargo-fuzz / libFuzzer, no sanitizer: the fuzzed crates have no
# unsafe code, and a sanitizer needs a nightly toolchain this machine does not have).
#
#   fuzz/run.sh                     every target 20 s (what CI runs; FUZZ_SECONDS=n to change)
#   fuzz/run.sh --seconds 300 manifest resolver
#   fuzz/run.sh --hours 2           the long run (bench/fuzz.sh calls this)
#
# Each target starts from its checked-in seed corpus (fuzz/corpus/<target>, read only) plus what
# earlier runs on this machine found (target/fuzz-corpus/<target>). Any failing input fails the
# run; libFuzzer's reproducer lands in fuzz/artifacts/<target>/ (reproduce with
# `cargo fuzz run -s none -O <target> <file>`). A table of execs, execs/s and coverage follows.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
SECONDS_EACH="${FUZZ_SECONDS:-20}"
TARGETS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECONDS_EACH="$2"; shift 2 ;;
    --hours) SECONDS_EACH=$(( $2 * 3600 )); shift 2 ;;
    -h|--help) sed -n 2,12p "$0"; exit 0 ;;
    *) TARGETS+=("$1"); shift ;;
  esac
done
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
[ ${#TARGETS[@]} -gt 0 ] || mapfile -t TARGETS < <(cargo fuzz list)
cargo fuzz build -s none -O
REPORT=()
FAILED=0
for t in "${TARGETS[@]}"; do
  mkdir -p "corpus/$t" "target/fuzz-corpus/$t" "artifacts/$t"
  log="target/fuzz-corpus/$t.log"
  echo "fuzz: $t for ${SECONDS_EACH}s"
  if ! cargo fuzz run -s none -O "$t" "target/fuzz-corpus/$t" "corpus/$t" -- \
      -max_total_time="$SECONDS_EACH" -print_final_stats=1 -timeout=10 -rss_limit_mb=1024 \
      >"$log" 2>&1; then
    FAILED=1
    echo "fuzz: $t FAILED; last lines of $log:"
    grep -E -A12 "panicked|ERROR: libFuzzer|SUMMARY" "$log" | head -40 || tail -40 "$log"
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1)
  REPORT+=("$(printf '%-12s %12s execs %9s/s  %s' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}")")
done
printf '%s\n' "${REPORT[@]}"
exit $FAILED
