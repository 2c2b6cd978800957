#!/usr/bin/env bash
# Push and pull of a 1 GiB layer with blobs in S3: CNCF distribution 2.8.2 (its s3-aws driver)
# and berth (aws-sdk-s3), one after the other, against the same local S3-protocol server
# (moto, from the repo's test venv), then the ratios.
#   bench/s3.sh [--rounds N] [--run-args "..."]
# Both registries stream blobs through themselves by default (the harness counts a 307 on
# HEAD as a failure); REDIRECT=true turns presigned redirects on for both.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHARED="${REGBENCH_DIR:-$REPO/../shared/bench}"
VENV="${BENCH_VENV:-/tmp/berth-bench-venv}"
ROUNDS=1; RUN_ARGS="--workloads push_large,pull_large --large-size 1GiB"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rounds) ROUNDS="$2"; shift 2;;
    --run-args) RUN_ARGS="$2"; shift 2;;
    *) echo "unknown option $1" >&2; exit 2;;
  esac
done
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"; "$VENV/bin/pip" install -q -r "$SHARED/requirements.txt"
fi
[ -x "$REPO/.venv/bin/moto_server" ] || { echo "run tests/setup.sh first (it installs moto)" >&2; exit 2; }
cargo build --release --workspace --manifest-path "$REPO/Cargo.toml"
OUT="${OUT:-/tmp/berth-bench-s3-$(date +%Y%m%d-%H%M%S)}"; mkdir -p "$OUT"
S3_PORT=5402; DIST_PORT=5100; CAND_PORT=5200
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1
# A CA bundle set for other tools breaks the Go SDK on plain-HTTP endpoints.
unset AWS_CA_BUNDLE
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
"$REPO/.venv/bin/moto_server" -H 127.0.0.1 -p $S3_PORT > "$OUT/moto.log" 2>&1 & PIDS+=($!)
for _ in $(seq 1 60); do curl -sf "http://127.0.0.1:$S3_PORT/" >/dev/null && break; sleep 0.5; done

wait_port() { for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$1/v2/" >/dev/null && return 0; sleep 0.2; done; return 1; }
A=(); B=()
for r in $(seq 1 "$ROUNDS"); do
    bucket="dist-$r-$RANDOM"
    curl -sf -X PUT "http://127.0.0.1:$S3_PORT/$bucket" >/dev/null
    cat > "$OUT/dist.yml" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage:
  delete: {enabled: true}
  s3:
    accesskey: $AWS_ACCESS_KEY_ID
    secretkey: $AWS_SECRET_ACCESS_KEY
    region: us-east-1
    regionendpoint: http://127.0.0.1:$S3_PORT
    bucket: $bucket
    secure: false
    v4auth: true
    chunksize: 16777216
    rootdirectory: /
  redirect: {disable: $([ "${REDIRECT:-false}" = true ] && echo false || echo true)}
http: {addr: 127.0.0.1:$DIST_PORT}
YML
    docker-registry serve "$OUT/dist.yml" > "$OUT/dist-$r.log" 2>&1 & dpid=$!; PIDS+=($dpid)
    wait_port $DIST_PORT
    "$VENV/bin/python" "$SHARED/run.py" --url "http://127.0.0.1:$DIST_PORT" --pid $dpid --label distribution-s3 \
        --out "$OUT/dist-$r.json" $RUN_ARGS > "$OUT/dist-$r.txt" 2>&1 || echo "distribution run $r reported failures" >&2
    kill $dpid; wait $dpid 2>/dev/null || true
    A+=("$OUT/dist-$r.json")

    env RUST_LOG=warn BERTH_STORAGE__BACKEND=s3 BERTH_STORAGE__S3__BUCKET="berth-$r-$RANDOM" \
        BERTH_STORAGE__S3__ENDPOINT="http://127.0.0.1:$S3_PORT" BERTH_STORAGE__S3__FORCE_PATH_STYLE=true \
        BERTH_STORAGE__S3__CREATE_BUCKET=true BERTH_STORAGE__S3__REGION=us-east-1 \
        BERTH_STORAGE__S3__REDIRECT="${REDIRECT:-false}" \
        "$REPO/target/release/berth" serve --listen 127.0.0.1:$CAND_PORT --data-dir "$OUT/berth-data-$r" \
        > "$OUT/berth-$r.log" 2>&1 & bpid=$!; PIDS+=($bpid)
    wait_port $CAND_PORT
    "$VENV/bin/python" "$SHARED/run.py" --url "http://127.0.0.1:$CAND_PORT" --pid $bpid --label berth-s3 \
        --out "$OUT/berth-$r.json" $RUN_ARGS > "$OUT/berth-$r.txt" 2>&1 || echo "berth run $r reported failures" >&2
    kill $bpid; wait $bpid 2>/dev/null || true
    B+=("$OUT/berth-$r.json")
done
"$VENV/bin/python" "$SHARED/compare.py" --a "${A[@]}" --b "${B[@]}" --names distribution-s3 berth-s3 | tee "$OUT/compare.txt"
