#!/usr/bin/env bash
# Runs both official OCI Distribution Spec conformance suites (../shared/conformance: the v1.1.1
# ginkgo suite and the redesigned main-branch suite) against the real berth binary on its
# embedded defaults, and fails unless every case passes.
#
#   bash tests/conformance.sh                     # filesystem + SQLite (the defaults)
#   BACKEND=s3 bash tests/conformance.sh          # blobs in S3 (needs BERTH_TEST_S3_ENDPOINT)
#
# BERTH_BIN names the binary (default target/release/berth); reports land in
# ${CONFORMANCE_OUT:-/tmp/berth-conformance}/<backend>-<suite>/.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SUITES="$REPO/../shared/conformance"
BIN="${BERTH_BIN:-$REPO/target/release/berth}"
BACKEND="${BACKEND:-filesystem}"
OUT="${CONFORMANCE_OUT:-/tmp/berth-conformance}"

[ -x "$SUITES/run.sh" ] || { echo "conformance: $SUITES/run.sh not found" >&2; exit 2; }
[ -x "$BIN" ] || { echo "conformance: $BIN not built" >&2; exit 2; }

work="$(mktemp -d)"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

env_args=()
if [ "$BACKEND" = s3 ]; then
    [ -n "${BERTH_TEST_S3_ENDPOINT:-}" ] || { echo "conformance: BACKEND=s3 needs BERTH_TEST_S3_ENDPOINT" >&2; exit 2; }
    env_args=(
        BERTH_STORAGE__BACKEND=s3
        "BERTH_STORAGE__S3__BUCKET=conformance-$(date +%s)-$$"
        "BERTH_STORAGE__S3__ENDPOINT=$BERTH_TEST_S3_ENDPOINT"
        BERTH_STORAGE__S3__CREATE_BUCKET=true
        "AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-testing}"
        "AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-testing}"
        "AWS_REGION=${AWS_REGION:-us-east-1}"
    )
fi

status=0
for suite in v1.1 main; do
    # A fresh registry per suite: the suites reuse repository names.
    env "${env_args[@]}" "$BIN" serve --listen 127.0.0.1:0 --data-dir "$work/data-$suite" \
        > "$work/stdout-$suite" 2> "$work/stderr-$suite" &
    pid=$!
    addr=""
    for _ in $(seq 1 100); do
        addr="$(sed -n 's/^listening on //p' "$work/stdout-$suite" | head -1)"
        [ -n "$addr" ] && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$addr" ]; then
        echo "conformance: berth did not start" >&2
        cat "$work/stderr-$suite" >&2
        exit 1
    fi
    dir="$OUT/$BACKEND-$suite"
    echo "conformance: suite $suite on $BACKEND against http://$addr (reports in $dir)"
    if ! SUITE="$suite" "$SUITES/run.sh" "http://$addr" "$dir"; then
        status=1
    fi
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    pid=""
done
exit "$status"
