#!/usr/bin/env bash
# Builds husk's guest kernel (vmlinux with the PVH note, and bzImage) from
# Debian's linux-source package and the fragment microvm.config.
#
# Output: $HUSK_KERNEL_CACHE/<key>/{vmlinux,bzImage,config}, where <key> hashes
# the fragment, this script and the source package version, so an unchanged
# kernel is never rebuilt. The path of the output directory is the last line
# printed on stdout. A changed fragment rebuilds incrementally in the shared
# object tree.
#
# Usage: guest-kernel/build.sh [--print-dir]   (--print-dir: no build, only the path)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
fragment=$here/microvm.config
pkg=linux-source-6.1
cache=${HUSK_KERNEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/husk/kernel}

log() { printf '[guest-kernel] %s\n' "$*" >&2; }
die() { printf 'guest-kernel: %s\n' "$*" >&2; exit 1; }

version=$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null) ||
    die "$pkg is not installed (apt-get install $pkg)"
key=$( { echo "$pkg $version"; cat "$fragment" "$0"; } | sha256sum | cut -c1-16)
out=$cache/$key

if [[ ${1:-} == --print-dir ]]; then echo "$out"; exit 0; fi
if [[ -f $out/vmlinux && -f $out/bzImage ]]; then
    log "cached: $out"
    echo "$out"
    exit 0
fi

src=$cache/src-$version
obj=$cache/obj-$version
mkdir -p "$cache"
if [[ ! -f $src/Makefile ]]; then
    log "unpacking $pkg $version into $src"
    rm -rf "$src.tmp" && mkdir -p "$src.tmp"
    tar -xJf "/usr/src/$pkg.tar.xz" -C "$src.tmp" --strip-components=1
    mv "$src.tmp" "$src"
fi

mkdir -p "$obj"
log "configuring (tinyconfig + microvm.config + olddefconfig)"
make -s -C "$src" O="$obj" tinyconfig >/dev/null
# merge_config.sh checks each requested value after olddefconfig; we check
# again below with our own message so a missing option names itself.
KCONFIG_CONFIG=$obj/.config "$src/scripts/kconfig/merge_config.sh" -m -O "$obj" \
    "$obj/.config" "$fragment" >/dev/null
make -s -C "$src" O="$obj" olddefconfig >/dev/null

# Every option the fragment asks for must have survived olddefconfig:
# Kconfig silently drops an option whose dependencies are not met.
missing=()
while IFS= read -r line; do
    if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
        grep -qxF "$line" "$obj/.config" || missing+=("${BASH_REMATCH[1]}=${BASH_REMATCH[2]}")
    elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
        ! grep -q "^${BASH_REMATCH[1]}=" "$obj/.config" || missing+=("${BASH_REMATCH[1]} unset")
    fi
done <"$fragment"
if ((${#missing[@]})); then
    die "config check failed; not in the final .config: ${missing[*]}"
fi
log "config verified: every option of microvm.config is in the final .config"

jobs=$(nproc)
log "building vmlinux and bzImage with $jobs jobs (cold: ~17 min on 2 cores; log: $obj/build.log)"
start=$SECONDS
# Progress: one line per 250 compiled files, so CI logs show it is alive.
make -C "$src" O="$obj" -j"$jobs" vmlinux bzImage 2>&1 | tee "$obj/build.log" |
    awk '/^  CC /{n++; if (n % 250 == 0) { printf "[guest-kernel] %d files compiled\n", n > "/dev/stderr" } }'
status=${PIPESTATUS[0]}
((status == 0)) || die "kernel build failed (exit $status); see $obj/build.log"
log "built in $((SECONDS - start)) s"

rm -rf "$out.tmp" && mkdir -p "$out.tmp"
cp "$obj/vmlinux" "$out.tmp/vmlinux"
cp "$obj/arch/x86/boot/bzImage" "$out.tmp/bzImage"
cp "$obj/.config" "$out.tmp/config"
rm -rf "$out" && mv "$out.tmp" "$out"
log "output: $out"
echo "$out"
