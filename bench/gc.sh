#!/usr/bin/env bash
# Online garbage collection: mark rate (edges/s) on a store of 100,000 manifests, push p99 with
# GC running back to back beside the pushes vs. without (target <= 1.25x), and the S3 calls one
# GC cycle makes (moto's request log; target 0 ListObjects, ceil(N/1000) DeleteObjects).
# Prints a table. About 5-10 minutes on 2 cores; --quick for smaller sizes (about a minute).
#   bash bench/gc.sh [--quick] [--only mark,push,s3] [--gc-pause SECS]
# BERTH_BIN (default target/release/berth, built if absent) names the binary; tests/setup.sh
# installs moto in .venv.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO/.venv}"
[ -x "$VENV/bin/moto_server" ] || { echo "run tests/setup.sh first (it installs moto in .venv)" >&2; exit 2; }
BERTH="${BERTH_BIN:-$REPO/target/release/berth}"
[ -x "$BERTH" ] || cargo build --release --workspace --manifest-path "$REPO/Cargo.toml"
# berth reads every BERTH_* variable as configuration: none of the caller's may reach it.
for v in $(env | grep -o '^BERTH_[A-Z0-9_]*' || true); do unset "$v"; done
exec "$VENV/bin/python" "$REPO/bench/gc_driver.py" --berth "$BERTH" --moto "$VENV/bin/moto_server" "$@"
