#!/usr/bin/env bash
# The long fuzz run: every target for N hours (default 1), one after the other, with execs,
# execs/s and coverage per target at the end. `bench/fuzz.sh --hours 2 [targets...]`;
# `--parsers` instead of targets runs the parser targets only (the issue-20 goal: 10 million
# execs each): names_refs platform ranges scopes manifest oci_path accept auth_headers tokens.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
HOURS=1
if [ "${1:-}" = "--hours" ]; then HOURS="$2"; shift 2; fi
if [ "${1:-}" = "--parsers" ]; then
  shift
  set -- names_refs platform ranges scopes manifest oci_path accept auth_headers tokens "$@"
fi
exec fuzz/run.sh --seconds "$(awk -v h="$HOURS" 'BEGIN { printf "%d", h * 3600 }')" "$@"
