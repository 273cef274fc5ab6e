#!/usr/bin/env bash
# Builds husk's guest kernel (vmlinux with the PVH note, and bzImage) from
# Debian's linux-source package and the fragment microvm.config.
#
# Output: $HUSK_KERNEL_CACHE/<key>/{vmlinux,bzImage,config}, where <key> hashes
# the fragment, RECIPE below and the source package version, so an unchanged
# kernel is never rebuilt. The output directory is the last line on stdout.
# A changed fragment rebuilds incrementally in the shared object tree.
#
# Usage: guest-kernel/build.sh [--print-dir | --check-only]
#   --print-dir   print the output directory, build nothing
#   --check-only  configure in a scratch tree and verify the config, no build
# Environment: HUSK_KERNEL_CACHE (default ~/.cache/husk/kernel),
#              HUSK_KERNEL_FRAGMENT (default guest-kernel/microvm.config)
set -euo pipefail

# Bump when a change to this script changes what gets built.
RECIPE=1

here=$(cd "$(dirname "$0")" && pwd)
fragment=${HUSK_KERNEL_FRAGMENT:-$here/microvm.config}
pkg=linux-source-6.1
cache=${HUSK_KERNEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/husk/kernel}
mode=${1:-build}

log() { printf '[guest-kernel] %s\n' "$*" >&2; }
die() { printf 'guest-kernel: %s\n' "$*" >&2; exit 1; }

[[ -r $fragment ]] || die "cannot read the config fragment $fragment"
version=$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null) ||
    die "$pkg is not installed (apt-get install $pkg)"
key=$( { echo "$pkg $version recipe $RECIPE"; cat "$fragment"; } | sha256sum | cut -c1-16)
out=$cache/$key

case $mode in
--print-dir) echo "$out"; exit 0 ;;
build | --check-only) ;;
*) die "unknown option $mode (use --print-dir or --check-only)" ;;
esac
if [[ $mode == build && -f $out/vmlinux && -f $out/bzImage ]]; then
    log "cached: $out"
    echo "$out"
    exit 0
fi

src=$cache/src-$version
mkdir -p "$cache"
if [[ ! -f $src/Makefile ]]; then
    log "unpacking $pkg $version into $src"
    rm -rf "$src.tmp" && mkdir -p "$src.tmp"
    tar -xJf "/usr/src/$pkg.tar.xz" -C "$src.tmp" --strip-components=1
    mv "$src.tmp" "$src"
fi

if [[ $mode == --check-only ]]; then
    obj=$(mktemp -d)
    trap 'rm -rf "$obj"' EXIT
else
    obj=$cache/obj-$version
    mkdir -p "$obj"
fi

log "configuring (tinyconfig + $(basename "$fragment") + olddefconfig)"
make -s -C "$src" O="$obj" tinyconfig >/dev/null
KCONFIG_CONFIG=$obj/.config "$src/scripts/kconfig/merge_config.sh" -m -O "$obj" \
    "$obj/.config" "$fragment" >/dev/null 2>&1
make -s -C "$src" O="$obj" olddefconfig >/dev/null

# Kconfig silently drops an option whose dependencies are not met: every
# option the fragment asks for must be in the final .config as asked.
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
log "config verified: every option of $(basename "$fragment") is in the final .config"
[[ $mode == --check-only ]] && exit 0

jobs=$(nproc)
log "building vmlinux and bzImage with $jobs jobs (cold: ~17 min on 2 cores; log: $obj/build.log)"
start=$SECONDS
# Progress: a line per 250 compiled files, so CI logs show it is alive.
set +e
make -C "$src" O="$obj" -j"$jobs" vmlinux bzImage >"$obj/build.log" 2>&1 &
make_pid=$!
tail -n +1 -F --pid=$make_pid "$obj/build.log" 2>/dev/null |
    awk '/^  CC /{n++; if (n % 250 == 0) { printf "[guest-kernel] %d files compiled\n", n > "/dev/stderr" } }'
wait $make_pid
status=$?
set -e
((status == 0)) || { tail -n 30 "$obj/build.log" >&2; die "kernel build failed (exit $status); log: $obj/build.log"; }
log "built in $((SECONDS - start)) s"

rm -rf "$out.tmp" && mkdir -p "$out.tmp"
cp "$obj/vmlinux" "$out.tmp/vmlinux"
cp "$obj/arch/x86/boot/bzImage" "$out.tmp/bzImage"
cp "$obj/.config" "$out.tmp/config"
rm -rf "$out" && mv "$out.tmp" "$out"
log "output: $out"
echo "$out"
