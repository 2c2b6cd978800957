#!/usr/bin/env bash
# Checks the dependency direction of every workspace crate, from Cargo's own view of the manifests
# (`cargo metadata`, `cargo tree`) and, for berth-oci, from its sources:
#   1. workspace crates depend only downward: berth-oci on none; berth-storage on berth-oci;
#      berth-auth on berth-oci and berth-storage; berth-verifier on berth-oci; berth-server on any.
#      Every dependency kind counts (normal, dev, build); a crate's dependency on itself (storage's
#      dev-dependency with the `testsuite` feature) is not an edge. A workspace crate missing from
#      the table below fails the check until it is given a row.
#   2. only berth-storage lists sqlx (or any sqlx-* crate) as a direct dependency, of any kind.
#   3. berth-oci is pure: its normal-dependency closure, on every target platform, has no I/O crate
#      (async runtimes, sockets, HTTP, databases, cloud SDKs), and oci/src does not use std::fs,
#      std::net, std::process, std::os, std::env, the process's standard streams or the print
#      macros. std::io's traits and in-memory types (Read, Write, Cursor, Error) stay allowed:
#      without the banned modules there is no file or socket to read.
# Each check prints what it looked at; a failure names the crate or file:line and exits 1.
#
# Usage: bash tests/deps-check.sh [WORKSPACE_DIR]   (default: this repository)
#   WORKSPACE_DIR lets the check run on a scratch copy, e.g. to watch it fail on a planted edge.
set -euo pipefail
ROOT="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
cd "$ROOT"
command -v jq > /dev/null || { echo "deps-check: jq not found (tests/setup.sh installs it)" >&2; exit 2; }

failed=0
fail() { echo "deps-check: FAIL: $*" >&2; failed=1; }

META="$(cargo metadata --format-version 1 --no-deps)"

# --- 1. workspace crates depend only downward
echo "deps-check: [1/3] workspace crates depend only downward"
declare -A ALLOWED=(
    [berth-oci]=""
    [berth-storage]="berth-oci"
    [berth-auth]="berth-oci berth-storage"
    [berth-verifier]="berth-oci"
    [berth-server]="*"
)
mapfile -t MEMBERS < <(jq -r '.workspace_members as $m | .packages[] | select(.id as $i | $m | index($i)) | .name' <<< "$META" | sort)
((${#MEMBERS[@]})) || fail "cargo metadata lists no workspace members"
for crate in "${MEMBERS[@]}"; do
    if [[ ! -v ALLOWED[$crate] ]]; then
        fail "$crate is a workspace crate without a row in tests/deps-check.sh (say which crates it may use)"
        continue
    fi
    # Dependencies on other workspace members, with their kind (null is a normal dependency).
    mapfile -t EDGES < <(jq -r --arg c "$crate" --argjson members "$(printf '%s\n' "${MEMBERS[@]}" | jq -R . | jq -s .)" '
        .packages[] | select(.name == $c) | .dependencies[]
        | select(.name as $n | $members | index($n)) | select(.name != $c)
        | "\(.name) \(.kind // "normal")"' <<< "$META" | sort -u)
    allowed="${ALLOWED[$crate]}"
    shown=()
    for edge in "${EDGES[@]}"; do
        dep="${edge%% *}" kind="${edge#* }"
        shown+=("$dep($kind)")
        [[ "$allowed" == "*" ]] && continue
        if [[ " $allowed " != *" $dep "* ]]; then
            fail "$crate depends on $dep ($kind dependency); $crate may depend only on: ${allowed:-no workspace crate}"
        fi
    done
    [[ "$allowed" == "*" ]] && allowed="any"
    echo "  $crate -> ${shown[*]:-(no workspace crate)}   allowed: ${allowed:-none}"
done

# --- 2. sqlx only in berth-storage
echo "deps-check: [2/3] only berth-storage depends on sqlx directly"
mapfile -t SQLX < <(jq -r '.workspace_members as $m | .packages[] | select(.id as $i | $m | index($i))
    | .name as $c | .dependencies[] | select(.name == "sqlx" or (.name | startswith("sqlx-")))
    | "\($c) \(.name) \(.kind // "normal")"' <<< "$META" | sort -u)
for line in "${SQLX[@]}"; do
    read -r crate dep kind <<< "$line"
    if [[ "$crate" == berth-storage ]]; then
        echo "  berth-storage -> $dep ($kind): allowed"
    else
        fail "$crate lists $dep as a direct $kind dependency; only berth-storage may use sqlx"
    fi
done

# --- 3. berth-oci is pure
echo "deps-check: [3/3] berth-oci has no I/O dependencies and no I/O in oci/src"
# Crate names (anchored regexes) that do I/O or bring a runtime, sockets or a network stack.
IO_CRATES='^(tokio|tokio-.*|mio|socket2|async-std|async-io|smol|hyper|hyper-.*|h2|h3|quinn|reqwest|ureq|curl|axum|axum-.*|tower|tower-.*|actix-.*|sqlx|sqlx-.*|rusqlite|libsqlite3-sys|aws-.*|rustls|tokio-rustls|native-tls|openssl|nix)$'
# --target all: a dependency behind a cfg(windows) or cfg(unix) table counts too.
TREE_ERR="$(mktemp)"
trap 'rm -f "$TREE_ERR"' EXIT
if ! TREE="$(cargo tree -p berth-oci -e normal --prefix none --target all 2> "$TREE_ERR")"; then
    fail "cargo tree -p berth-oci -e normal --target all failed: $(tail -n 3 "$TREE_ERR" | tr '\n' ' ')"
    TREE=""
fi
mapfile -t CLOSURE < <(awk 'NF {print $1}' <<< "$TREE" | sort -u)
[[ -z "$TREE" ]] || ((${#CLOSURE[@]})) || fail "cargo tree printed no dependencies for berth-oci"
echo "  berth-oci normal closure (all targets): ${CLOSURE[*]}"
for c in "${CLOSURE[@]}"; do
    if [[ "$c" =~ $IO_CRATES ]]; then
        path="$(cargo tree -p berth-oci -e normal --target all -i "$c" --prefix none 2>/dev/null | tr '\n' ' ')"
        fail "berth-oci's normal dependency closure contains the I/O crate $c (reverse path: $path)"
    fi
done
# Source check: code only (text after // is ignored, so docs may name what is banned).
IO_SRC='(^|[^[:alnum:]_])(std::(fs|net|process|os|env)([^[:alnum:]_]|$)|std::\{[^}]*\b(fs|net|process|os|env)\b|std::io::(stdin|stdout|stderr|Stdin|Stdout|Stderr)|io::(stdin|stdout|stderr)\(|(println|print|eprintln|eprint|dbg)!)'
SRC_DIR="oci/src"
[[ -d "$SRC_DIR" ]] || fail "$SRC_DIR not found"
hits="$(grep -rnE --include='*.rs' '' "$SRC_DIR" | awk -F: '{
        file=$1; line=$2; text=substr($0, length(file) + length(line) + 3)
        sub(/\/\/.*/, "", text)
        print file ":" line ":" text }' | grep -E ":.*$IO_SRC" || true)"
if [[ -n "$hits" ]]; then
    while IFS= read -r h; do
        fail "I/O in berth-oci source: $h"
    done <<< "$hits"
else
    echo "  $SRC_DIR: $(find "$SRC_DIR" -name '*.rs' | wc -l) files, no std::fs/net/process/os/env, standard streams or print macros"
fi

if ((failed)); then
    echo "deps-check: FAILED (see the FAIL lines above)" >&2
    exit 1
fi
echo "deps-check: OK"
