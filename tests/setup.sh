#!/usr/bin/env bash
# Prepares a fresh Debian 12 machine (run as root) for berth's end-to-end tests.
# Idempotent: every step checks first and does nothing when already done.
#   1. apt packages: docker.io skopeo busybox-static docker-registry wrk curl jq iproute2 podman runc
#   2. <repo>/.venv with pytest, requests, oras, pyjwt[crypto], cryptography, moto[server], boto3 (PyPI)
#   3. a running dockerd (started in the background when `docker info` fails)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$SCRIPT_DIR/.." && pwd)"
VENV="$REPO/.venv"
DOCKERD_LOG="${DOCKERD_LOG:-/tmp/berth-e2e-dockerd.log}"

log() { echo "setup.sh: $*" >&2; }
die() { echo "setup.sh: ERROR: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root"

# ---------------------------------------------------------------- 1. apt packages
PKGS=(docker.io skopeo busybox-static docker-registry wrk curl jq iproute2 podman runc)

pkg_installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

wait_for_dpkg_lock() {
    # Another apt/dpkg run (e.g. a provisioning step) may hold the lock: wait, don't fight it.
    local waited=0
    while pgrep -x apt-get >/dev/null || pgrep -x apt >/dev/null || pgrep -x dpkg >/dev/null \
        || { command -v fuser >/dev/null && fuser /var/lib/dpkg/lock-frontend /var/lib/dpkg/lock \
             /var/lib/apt/lists/lock >/dev/null 2>&1; }; do
        if [ "$waited" -ge 1800 ]; then die "apt/dpkg still busy after ${waited}s"; fi
        [ $((waited % 30)) = 0 ] && log "waiting for a running apt/dpkg to finish (${waited}s)"
        sleep 5; waited=$((waited + 5))
    done
}

missing=()
wait_for_dpkg_lock
for p in "${PKGS[@]}"; do pkg_installed "$p" || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    wait_for_dpkg_lock
    apt-get install -y --no-install-recommends "${PKGS[@]}" python3-venv
else
    log "apt packages present"
fi
# python3 -m venv needs ensurepip (python3-venv on Debian)
if ! python3 -c 'import ensurepip' 2>/dev/null; then
    wait_for_dpkg_lock
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv; then
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv
    fi
fi

# ---------------------------------------------------------------- 2. Python venv
if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV"
    python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import pytest, requests, oras.provider, jwt, cryptography, moto.server, boto3' 2>/dev/null; then
    log "installing pytest requests oras pyjwt cryptography moto boto3 into $VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
    "$VENV/bin/pip" install --quiet pytest requests oras 'pyjwt[crypto]' cryptography 'moto[server]' boto3
fi
"$VENV/bin/python" -c 'import pytest, requests, oras.provider, jwt, cryptography, moto.server, boto3' || die "venv $VENV is broken"

# ---------------------------------------------------------------- 3. dockerd
docker_ok() { timeout 20 docker info >/dev/null 2>&1; }

wait_docker() {
    # $1: pid of the dockerd we started; waits up to 60 s
    local pid=$1 i
    for i in $(seq 1 60); do
        if docker_ok; then return 0; fi
        if ! kill -0 "$pid" 2>/dev/null; then return 1; fi
        sleep 1
    done
    return 1
}

# A smoke test that the daemon can really build/run containers with this configuration
# (a daemon can come up with a storage driver that fails at the first layer).
docker_smoke() {
    local t rc=0
    t=$(mktemp -d)
    mkdir -p "$t/bin"
    cp /bin/busybox "$t/bin/busybox"
    ln -s busybox "$t/bin/sh"
    tar -C "$t" -cf "$t/rootfs.tar" bin
    docker import "$t/rootfs.tar" berth-setup-smoke:latest >/dev/null 2>&1 || rc=1
    if [ "$rc" = 0 ]; then
        [ "$(docker run --rm berth-setup-smoke:latest /bin/sh -c 'echo ok' 2>>"$DOCKERD_LOG")" = ok ] || rc=1
    fi
    docker rmi -f berth-setup-smoke:latest >/dev/null 2>&1 || true
    rm -rf "$t"
    return $rc
}

if docker_ok; then
    log "docker daemon already running"
else
    command -v dockerd >/dev/null || die "dockerd not found (docker.io not installed?)"
    # Candidate flag sets, most standard first; the first that comes up and passes the smoke test stays.
    CANDIDATES=(
        ""
        "--iptables=false --bridge=none"
        "--iptables=false --bridge=none --storage-driver=overlay2"
        "--iptables=false --bridge=none --storage-driver=vfs"
        "--iptables=false --ip6tables=false --bridge=none --storage-driver=vfs"
    )
    started=""
    for flags in "${CANDIDATES[@]}"; do
        log "starting dockerd ${flags:-(no extra flags)}; log: $DOCKERD_LOG"
        echo "=== $(date -Is) dockerd --host unix:///var/run/docker.sock $flags" >>"$DOCKERD_LOG"
        # shellcheck disable=SC2086
        setsid nohup dockerd --host unix:///var/run/docker.sock $flags >>"$DOCKERD_LOG" 2>&1 </dev/null &
        pid=$!
        if wait_docker "$pid" && docker_smoke; then
            started="$flags"
            echo "$pid" >/tmp/berth-e2e-dockerd.pid
            break
        fi
        log "dockerd with '${flags}' did not work; see $DOCKERD_LOG"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -9 "$pid" 2>/dev/null || true
        rm -f /var/run/docker.pid
    done
    if ! docker_ok; then
        tail -n 40 "$DOCKERD_LOG" >&2 || true
        die "could not start dockerd with any flag set (log: $DOCKERD_LOG)"
    fi
    log "dockerd up with flags: ${started:-(none)}"
fi

docker info >/dev/null || die "docker info fails"
log "ready: venv=$VENV"
