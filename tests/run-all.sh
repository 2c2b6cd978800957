#!/usr/bin/env bash
# Runs every berth test on a fresh Debian 12 machine (as root): installs what the tests need,
# starts the services they use (dockerd), builds once in release mode, then runs the unit
# tests and the end-to-end tests against the real binaries and real clients.
#   bash tests/run-all.sh            # everything
#   PYTEST_ARGS="-k docker" bash tests/run-all.sh
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
export CARGO_TERM_COLOR=never

step() { echo; echo "=== $* ($(date +%H:%M:%S))"; }

step "setup: packages, Python venv, dockerd"
bash tests/setup.sh

step "format and lints"
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings

step "dependency direction"
# oci is pure: no I/O crates may appear among its dependencies.
if cargo tree -p berth-oci -e normal --prefix none | grep -E '^(tokio|axum|sqlx|hyper) ' ; then
    echo "berth-oci must not depend on I/O crates" >&2; exit 1
fi

step "build"
cargo build --release --workspace --all-targets

step "unit and integration tests (cargo)"
cargo test --release --workspace 2>&1 | tee /tmp/berth-cargo-test.log
grep -q '^test result: ok' /tmp/berth-cargo-test.log

step "end-to-end tests (real binary, docker, skopeo, oras-py)"
export BERTH_BIN="$REPO/target/release/berth"
# shellcheck disable=SC2086
"$REPO/.venv/bin/pytest" -q -p no:cacheprovider tests/e2e ${PYTEST_ARGS:-}
