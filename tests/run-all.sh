#!/usr/bin/env bash
# Runs every berth test on a fresh Debian 12 machine (as root): installs what the tests need,
# starts the services they use (dockerd, moto), builds once in release mode, then runs the unit
# tests, the official OCI conformance suites (../shared/conformance) and the end-to-end tests
# against the real binaries and real clients, on the filesystem and on S3.
#   bash tests/run-all.sh            # everything
#   PYTEST_ARGS="-k docker" bash tests/run-all.sh
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
export CARGO_TERM_COLOR=never

step() { echo; echo "=== $* ($(date +%H:%M:%S))"; }

step "setup: packages, Python venv, dockerd"
bash tests/setup.sh

step "S3-protocol server (moto) on loopback"
MOTO_PORT="$("$REPO/.venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
"$REPO/.venv/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" > /tmp/berth-moto.log 2>&1 &
MOTO_PID=$!
trap 'kill $MOTO_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 60); do
    curl -sf "http://127.0.0.1:$MOTO_PORT/" > /dev/null && break
    kill -0 "$MOTO_PID" 2>/dev/null || { cat /tmp/berth-moto.log; echo "moto did not start" >&2; exit 1; }
    sleep 0.5
done
export BERTH_TEST_S3_ENDPOINT="http://127.0.0.1:$MOTO_PORT"
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1

step "format and lints"
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings

step "dependency direction (every crate depends only downward; sqlx only in storage; oci does no I/O)"
bash tests/deps-check.sh

step "build"
cargo build --release --workspace --all-targets

step "type-check the Windows-only code (berth-verifier, HCS runner) for x86_64-pc-windows-gnu"
WINDOWS_TARGET_DIR="$REPO/target/windows" bash tests/windows-check.sh

step "link berth-verifier.exe for Windows and check its import table (no load-time HCS imports)"
WINDOWS_TARGET_DIR="$REPO/target/windows" bash tests/windows-imports.sh

step "unit and integration tests (cargo)"
cargo test --release --workspace 2>&1 | tee /tmp/berth-cargo-test.log
grep -q '^test result: ok' /tmp/berth-cargo-test.log

step "fuzz targets, 20 s each from the checked-in seed corpus (fuzz/run.sh; bench/fuzz.sh for long runs)"
# fmt and clippy for the fuzz crate, which is outside the workspace.
(cd fuzz && cargo fmt -- --check && cargo clippy --release -- -D warnings)
bash fuzz/run.sh --seconds "${FUZZ_SECONDS:-20}"

step "end-to-end tests on the filesystem backend (real binary, docker, skopeo, oras-py)"
export BERTH_BIN="$REPO/target/release/berth"
# shellcheck disable=SC2086
"$REPO/.venv/bin/pytest" -q -p no:cacheprovider tests/e2e ${PYTEST_ARGS:-}

step "OCI conformance suites (v1.1.1 and main) on the embedded defaults: filesystem + SQLite"
bash tests/conformance.sh

step "OCI conformance suites on the S3 backend"
BACKEND=s3 bash tests/conformance.sh

step "end-to-end tests on the S3 backend"
# The same registry suites with blobs in S3; tests of the filesystem backend's own files
# (marked fs_only) ran above.
# shellcheck disable=SC2086
BERTH_TEST_BACKEND=s3 "$REPO/.venv/bin/pytest" -q -p no:cacheprovider -m "not fs_only" \
    tests/e2e/test_api_blobs.py tests/e2e/test_api_uploads.py tests/e2e/test_api_manifests.py \
    tests/e2e/test_api_misc.py tests/e2e/test_docker.py tests/e2e/test_skopeo.py \
    tests/e2e/test_oras.py tests/e2e/test_multiarch.py tests/e2e/test_mirror.py \
    tests/e2e/test_gc_orphans.py tests/e2e/test_gc.py ${PYTEST_ARGS:-}
