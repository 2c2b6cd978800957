#!/usr/bin/env bash
# Verification gate latency and throughput on this machine: berth (auth off, one policy on
# every repository) and one berth-verifier with the oci-runtime runner (runc). A busybox image
# made from the host's static busybox is pushed with docker; prints push -> passed latency per
# image, then the time to drain N queued jobs, and the worker's RSS.
#   bash bench/verify.sh [N]        (as root, dockerd running, target/release built)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
N="${1:-20}"
T="$(mktemp -d)"
PORT=5311
BERTH="$REPO/target/release/berth"
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$T"' EXIT
cat > "$T/cfg.toml" <<TOML
[verify]
[[verify.policies]]
name = "all"
repositories = ["**"]
timeout_secs = 60
TOML
RUST_LOG=warn "$BERTH" serve --config "$T/cfg.toml" --listen 127.0.0.1:$PORT --data-dir "$T/data" > "$T/berth.log" 2>&1 &
for _ in $(seq 50); do curl -sf http://127.0.0.1:$PORT/v2/ >/dev/null && break; sleep 0.1; done
RUST_LOG=warn "$REPO/target/release/berth-verifier" run --registry http://127.0.0.1:$PORT --name bench \
    --work-dir "$T/work" --runner oci-runtime --wait-secs 5 > "$T/worker.log" 2>&1 &
WORKER=$!
mkdir -p "$T/rootfs/bin" "$T/rootfs/etc"
cp "$(command -v busybox)" "$T/rootfs/bin/"
for a in sh echo true; do ln -s busybox "$T/rootfs/bin/$a"; done
echo "root:x:0:0:root:/root:/bin/sh" > "$T/rootfs/etc/passwd"
tar -C "$T/rootfs" -cf "$T/rootfs.tar" .
IMG=127.0.0.1:$PORT/bench/bb
docker import -c 'CMD ["/bin/sh","-c","echo ok"]' "$T/rootfs.tar" $IMG:1 > /dev/null
now() { date +%s.%N; }
for i in 1 2 3 4 5; do
    docker tag $IMG:1 $IMG-l$i:1
    s=$(now); docker push -q $IMG-l$i:1 > /dev/null; m=$(now)
    "$BERTH" verify wait bench/bb-l$i:1 --registry http://127.0.0.1:$PORT --interval 100ms > /dev/null
    e=$(now)
    printf 'image %d: push %.3f s, push -> passed %.3f s\n' "$i" "$(echo "$m-$s" | bc)" "$(echo "$e-$m" | bc)"
done
curl -s "http://127.0.0.1:$PORT/berth/v1/verify/jobs?repository=bench/bb-l5" \
    | python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; print("timings of the last:", j["timings"])'
s=$(now)
pushes=()
for i in $(seq 1 "$N"); do docker tag $IMG:1 $IMG-t$i:1; docker push -q $IMG-t$i:1 > /dev/null & pushes+=($!); done
wait "${pushes[@]}"
for i in $(seq 1 "$N"); do
    "$BERTH" verify wait bench/bb-t$i:1 --registry http://127.0.0.1:$PORT --interval 100ms > /dev/null
done
e=$(now)
printf '%d images pushed concurrently and verified (concurrency 1): %.2f s\n' "$N" "$(echo "$e-$s" | bc)"
echo "worker RSS: $(ps -o rss= -p $WORKER) KiB"
