#!/usr/bin/env bash
# Runs ../shared/bench (regbench) against CNCF distribution 2.8.2 (Debian's docker-registry)
# and berth, one after the other on the same machine, and prints the ratios.
#   bench/compare.sh [--rounds N] [--run-args "..."]     (extra args go to compare.sh)
# Needs: docker-registry, wrk, python3 (the harness's requirements are installed in a venv).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHARED="${REGBENCH_DIR:-$REPO/../shared/bench}"
[ -d "$SHARED" ] || { echo "regbench not found at $SHARED (set REGBENCH_DIR)" >&2; exit 2; }
VENV="${BENCH_VENV:-/tmp/berth-bench-venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q -r "$SHARED/requirements.txt"
fi
cargo build --release --workspace --manifest-path "$REPO/Cargo.toml"
# compare.sh calls `python3 run.py`: put the venv first on PATH.
export PATH="$VENV/bin:$PATH"
exec bash "$SHARED/compare.sh" --name berth --out "${OUT:-/tmp/berth-bench-$(date +%Y%m%d-%H%M%S)}" "$@" \
    "env RUST_LOG=warn $REPO/target/release/berth serve --listen 127.0.0.1:{port} --data-dir {root}"
