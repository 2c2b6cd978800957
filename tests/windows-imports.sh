#!/usr/bin/env bash
# Links berth-verifier.exe for x86_64-pc-windows-gnu (same toolchain as tests/windows-check.sh)
# and checks its import table: one exe must start on every supported Windows build
# (ltsc2019 = 10.0.17763 and later), so it may bind at load time only to DLLs every one of
# them has. The HCS libraries (computecore.dll, computestorage.dll, vmcompute.dll) must not be
# imported at all: their functions differ between builds (HcsWaitForProcessExit is 20348+),
# so the runner resolves them with GetProcAddress (verifier/src/hcs/windows.rs).
#
# Usage: bash tests/windows-imports.sh      (WINDOWS_TARGET_DIR as for windows-check.sh)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
TARGET_DIR="${WINDOWS_TARGET_DIR:-target/windows}"
TARGET=x86_64-pc-windows-gnu
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc \
RUSTC_BOOTSTRAP=1 RUSTC=/usr/bin/rustc /usr/bin/cargo build --locked \
    -Zbuild-std=std,panic_abort --target "$TARGET" --target-dir "$TARGET_DIR" \
    -p berth-verifier --bin berth-verifier
EXE="$TARGET_DIR/$TARGET/debug/berth-verifier.exe"
mapfile -t DLLS < <(x86_64-w64-mingw32-objdump -p "$EXE" | sed -n 's/^\s*DLL Name: //p' \
    | tr 'A-Z' 'a-z' | sort -u)
echo "windows-imports: $EXE imports: ${DLLS[*]}"
# DLLs present on Windows Server 2019 and later (Server Core included).
ALLOWED=" advapi32.dll bcrypt.dll bcryptprimitives.dll kernel32.dll msvcrt.dll ntdll.dll \
userenv.dll ws2_32.dll virtdisk.dll ole32.dll oleaut32.dll api-ms-win-core-synch-l1-2-0.dll \
api-ms-win-core-winrt-error-l1-1-0.dll "
bad=0
for d in "${DLLS[@]}"; do
    case "$d" in
        computecore.dll|computestorage.dll|vmcompute.dll)
            echo "windows-imports: $d is bound at load time; resolve its functions at run time" >&2
            bad=1 ;;
        *) [[ "$ALLOWED" == *" $d "* ]] || { echo "windows-imports: $d is not known to exist on ltsc2019" >&2; bad=1; } ;;
    esac
done
if x86_64-w64-mingw32-objdump -p "$EXE" | grep -qE '\bHcs[A-Za-z]+\b'; then
    echo "windows-imports: an Hcs* function is imported by name:" >&2
    x86_64-w64-mingw32-objdump -p "$EXE" | grep -E '\bHcs[A-Za-z]+\b' | head >&2
    bad=1
fi
[ "$bad" = 0 ] && echo "windows-imports: OK"
exit "$bad"
