#!/usr/bin/env bash
# Builds the guest root filesystem: husk-init as /sbin/init, Debian's static
# busybox for debugging, husk-vsock (busybox has no vsock), a minimal /etc,
# and nothing else. No loop mounts:
# the image is made from a directory tree with `mkfs.ext4 -d` (and
# `mkfs.erofs` for the read-only variant).
#
# Output: $HUSK_GUEST_DIR (default <workspace>/target/guest)/rootfs.ext4 and
# rootfs.erofs. Environment: HUSK_ROOTFS_MIB (ext4 size, default 64).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
out=${HUSK_GUEST_DIR:-$top/target/guest}
size_mib=${HUSK_ROOTFS_MIB:-64}
busybox=/bin/busybox

log() { printf '[rootfs] %s\n' "$*" >&2; }
die() { printf 'rootfs: %s\n' "$*" >&2; exit 1; }

command -v mkfs.ext4 >/dev/null || die "mkfs.ext4 is missing (apt-get install e2fsprogs)"
file -L "$busybox" 2>/dev/null | grep -q 'statically linked' ||
    die "$busybox is not Debian's static busybox (apt-get install busybox-static)"

log "building husk-init, husk-vsock and husk-bench (static, musl)"
cargo build --quiet --manifest-path "$top/Cargo.toml" -p husk-init -p husk-vsock-tool \
    -p husk-benchtool --profile guest-init --target x86_64-unknown-linux-musl
init=$top/target/x86_64-unknown-linux-musl/guest-init/husk-init
vsock_tool=$top/target/x86_64-unknown-linux-musl/guest-init/husk-vsock
bench_tool=$top/target/x86_64-unknown-linux-musl/guest-init/husk-bench

tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
mkdir -p "$tree"/{bin,sbin,usr/bin,usr/sbin,etc,dev,proc,sys,tmp,run,root,mnt}
chmod 1777 "$tree/tmp"
chmod 0700 "$tree/root"
install -m 0755 "$init" "$tree/sbin/init"
install -m 0755 "$busybox" "$tree/bin/busybox"
install -m 0755 "$vsock_tool" "$tree/usr/bin/husk-vsock"
# husk compare's workload tool, the same binary the host and containers run.
install -m 0755 "$bench_tool" "$tree/usr/bin/husk-bench"
# One symlink per applet at the path busybox itself reports.
while read -r applet; do
    [[ -e $tree/$applet || -L $tree/$applet ]] && continue
    ln -s /bin/busybox "$tree/$applet"
done < <("$busybox" --list-full)
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$tree/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$tree/etc/group"

mkdir -p "$out"
install -m 0755 "$bench_tool" "$out/husk-bench"
log "writing $out/rootfs.ext4 (${size_mib} MiB)"
rm -f "$out/rootfs.ext4.tmp"
mkfs.ext4 -q -F -L husk-root -d "$tree" "$out/rootfs.ext4.tmp" "${size_mib}M" >&2
mv "$out/rootfs.ext4.tmp" "$out/rootfs.ext4"
if command -v mkfs.erofs >/dev/null; then
    log "writing $out/rootfs.erofs"
    mkfs.erofs --quiet "$out/rootfs.erofs.tmp" "$tree" >/dev/null
    mv "$out/rootfs.erofs.tmp" "$out/rootfs.erofs"
fi
echo "$out"
