#!/usr/bin/env bash
# Type-checks berth-verifier (with its Windows-only HCS code, tests included) for
# x86_64-pc-windows-gnu on Linux, following ../shared/docs/WINDOWS.md "Type-checking the
# Windows code on Linux":
#   - the rustup toolchain has only the Linux target and cannot fetch another, so Debian's second
#     toolchain (rustc-web, with the standard library's source) builds std for Windows with
#     -Zbuild-std (RUSTC_BOOTSTRAP=1 allows the unstable flag on a stable compiler);
#   - gcc-mingw-w64-x86-64 is needed as soon as a dependency compiles C for the target (ring);
#   - its artifacts live in their own target dir so the two toolchains never rebuild each other's.
# It checks, it does not run: there is no Windows host here (docs/HCS.md).
#
# Usage: bash tests/windows-check.sh
#   WINDOWS_TARGET_DIR   target dir for the Windows artifacts (default: target/windows)
# Idempotent: installs the Debian packages only when missing (needs root then). Exits nonzero
# when a package is missing and cannot be installed, or when the check finds errors.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
TARGET_DIR="${WINDOWS_TARGET_DIR:-target/windows}"
TARGET=x86_64-pc-windows-gnu
PACKAGES=(rustc-web cargo-web rust-web-src binutils-mingw-w64-x86-64 gcc-mingw-w64-x86-64)

missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "windows-check: missing packages ${missing[*]}; run as root or: apt-get install -y ${missing[*]}" >&2
        exit 2
    fi
    echo "windows-check: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${missing[@]}" \
        || { apt-get update -qq && apt-get install -y --no-install-recommends "${missing[@]}"; }
fi

for tool in /usr/bin/cargo /usr/bin/rustc x86_64-w64-mingw32-gcc; do
    command -v "$tool" > /dev/null || { echo "windows-check: $tool not found" >&2; exit 2; }
done
echo "windows-check: $(/usr/bin/rustc --version) for $TARGET, target dir $TARGET_DIR"

# --all-targets also checks the verifier's tests for Windows; they need libtest, so `test` is
# built from source along with std. Cargo.lock must not change (--locked).
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
RUSTC_BOOTSTRAP=1 RUSTC=/usr/bin/rustc /usr/bin/cargo check --locked \
    -Zbuild-std=std,panic_abort,test \
    --target "$TARGET" --target-dir "$TARGET_DIR" \
    -p berth-verifier --all-targets
echo "windows-check: OK"
