#!/bin/bash
# Builds (once) what the L1 testbed VM boots: Debian's cloud kernel and an
# initramfs with busybox, the KVM and virtio-blk modules, and l1-init as /init.
# See README.md for why this exists.
#
# Usage: tests/testbed/setup.sh
# Prints the cache directory (holding vmlinuz and initrd.gz) as the last line
# of stdout; everything else goes to stderr.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
init_script=$here/l1-init
cache_root=${XDG_CACHE_HOME:-$HOME/.cache}/husk/testbed

# Loaded at boot, in this order (init insmods them one by one). virtio_mmio is there for `-M microvm` (run uses q35 by
# default, which needs virtio_pci). tun and the bridge (with stp, llc) are
# for the network tests: TAPs on the L1 side of husk's virtio-net. veth and
# the tc pieces (ingress qdisc, matchall and u32 filters, mirred action) are what a
# container engine's network namespace and its redirect to a TAP need.
modules=(irqbypass kvm kvm-amd virtio_ring virtio virtio_pci_legacy_dev
	virtio_pci_modern_dev virtio_pci virtio_mmio virtio_blk tun llc stp bridge
	veth sch_ingress cls_matchall cls_u32 act_mirred)

log() { echo "[testbed] $*" >&2; }
die() {
	echo "[testbed] error: $*" >&2
	exit 1
}

need_pkg() { # need_pkg PACKAGE PATH...: the project's setup installs these
	local pkg=$1 p
	shift
	for p in "$@"; do
		[[ -e $p ]] || die "missing $p: install the Debian package '$pkg'"
	done
}
need_pkg busybox-static /bin/busybox
need_pkg cpio /usr/bin/cpio
need_pkg apt /usr/bin/apt-get /usr/bin/apt-cache
need_pkg dpkg /usr/bin/dpkg-deb
# Package busybox (dynamic) also provides /bin/busybox; the initramfs has no
# libc, so insist on the static one.
if ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed'; then
	die "/bin/busybox is not the static build: install the Debian package 'busybox-static'"
fi

# The metapackage names the current ABI (e.g. linux-image-6.1.0-56-cloud-amd64);
# resolving it here means a Debian kernel update gives a new cache key. Each
# apt-cache call parses all of apt's lists (~1 s here: no pkgcache.bin), so
# the answer is memoized against the lists' names, sizes and mtimes.
resolve_kernel() {
	local pkg ver
	pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
		sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-cloud-amd64\)$/\1/p' | head -n1) || true
	[[ -n $pkg ]] || return 0
	ver=$(apt-cache show --no-all-versions "$pkg" 2>/dev/null | sed -n 's/^Version: //p' | head -n1) || true
	[[ -n $ver ]] && echo "$pkg $ver"
}
lists_stamp=$(stat -c '%n %s %Y' /var/lib/apt/lists/*Packages* 2>/dev/null | sha256sum | cut -c1-16)
memo=$cache_root/.kernel-$lists_stamp
resolved=
if [[ -f $memo ]]; then
	resolved=$(<"$memo")
else
	resolved=$(resolve_kernel)
	if [[ -n $resolved ]]; then
		mkdir -p "$cache_root"
		rm -f "$cache_root"/.kernel-*
		echo "$resolved" >"$memo"
	fi
fi
kpkg=${resolved% *}
kver=${resolved#* }

scripts_hash=$(cat "$init_script" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16)

if [[ -z $kpkg || -z $kver ]]; then
	# apt's lists are missing (no `apt-get update` yet). A cache built by
	# these same scripts is still good enough; otherwise there is nothing to
	# download from.
	fallback=$(grep -l "^scripts=$scripts_hash\$" "$cache_root"/*/meta 2>/dev/null | head -n1) || true
	if [[ -n $fallback ]]; then
		log "apt-cache cannot resolve linux-image-cloud-amd64; using the cached $(sed -n 's/^kernel=//p' "$fallback")"
		dirname "$fallback"
		exit 0
	fi
	die "apt-cache cannot resolve linux-image-cloud-amd64 (run apt-get update first)"
fi

key=$(printf '%s=%s\n%s\n' "$kpkg" "$kver" "$scripts_hash" | sha256sum | cut -c1-16)
dir=$cache_root/$key
if [[ -f $dir/meta ]]; then
	# The mtime marks it as in use for the pruning below.
	touch "$dir"
	echo "$dir"
	exit 0
fi

mkdir -p "$cache_root"
# Two test runs may start at once; one builds, the other waits and reuses.
exec 9>"$cache_root/.lock"
flock 9
if [[ -f $dir/meta ]]; then
	echo "$dir"
	exit 0
fi

t0=$EPOCHREALTIME
work=$(mktemp -d "$cache_root/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT

# The .deb is kept apart from the keyed entries, so editing these scripts
# rebuilds only the initramfs.
deb=$cache_root/debs/${kpkg}_${kver}_amd64.deb
if [[ ! -f $deb ]]; then
	log "downloading $kpkg $kver"
	mkdir "$work/deb"
	# As root, apt warns that user _apt cannot reach the directory (it is
	# under $HOME); the download itself works, so drop just that line.
	(cd "$work/deb" && apt-get download -qq "$kpkg=$kver" 2>&1) |
		{ grep -v "couldn't be accessed by user '_apt'" || true; } >&2
	[[ ${PIPESTATUS[0]} -eq 0 ]] || die "apt-get download $kpkg=$kver failed"
	got=$(echo "$work"/deb/*.deb)
	[[ -f $got ]] || die "apt-get download produced no .deb"
	mkdir -p "$cache_root/debs"
	rm -f "$cache_root"/debs/*.deb
	mv "$got" "$deb"
fi

log "unpacking kernel"
mkdir "$work/x"
dpkg-deb -x "$deb" "$work/x" || die "cannot unpack $deb"
vmlinuz=$(echo "$work"/x/boot/vmlinuz-*)
[[ -f $vmlinuz ]] || die "no /boot/vmlinuz-* in $deb"
uname_r=${vmlinuz##*/vmlinuz-}
moddir=$work/x/lib/modules/$uname_r
# The .deb ships no modules.dep; busybox's depmod makes one (and
# modules.alias), from which the initramfs takes what it needs.
/bin/busybox depmod -b "$work/x" "$uname_r" || die "depmod failed"

log "building initramfs"
root=$work/root
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,mnt,tmp,etc,lib/modules}
cp /bin/busybox "$root/bin/busybox"
# Applet links at build time, so /init can use plain command names at once.
while read -r applet; do
	[[ -e $root/$applet ]] || ln -s /bin/busybox "$root/$applet"
done < <("$root/bin/busybox" --list-full)
# The listed modules are loaded at boot; every networking module (and what
# those need) is there for the kernel to load on demand through busybox's
# modprobe, as a distribution kernel does: nftables, NAT, conntrack and the
# xt matches container engines' networks ask for. ~10 MiB, ~3 MiB gzipped.
: >"$root/etc/testbed-modules"
wanted=()
for m in "${modules[@]}"; do
	ko=$(cd "$moddir" && find kernel -name "$m.ko" -print -quit)
	[[ -n $ko ]] || die "module $m.ko not found in $kpkg"
	wanted+=("$ko")
	echo "/lib/modules/$uname_r/$ko" >>"$root/etc/testbed-modules"
done
while read -r ko; do wanted+=("$ko"); done < <(cd "$moddir" && find kernel/net -name '*.ko')
declare -A copied=()
for ko in "${wanted[@]}"; do
	# modules.dep: "kernel/a.ko: kernel/dep1.ko kernel/dep2.ko".
	for f in "$ko" $(sed -n "s|^$ko: *||p" "$moddir/modules.dep"); do
		[[ -n ${copied[$f]:-} ]] && continue
		copied[$f]=1
		mkdir -p "$root/lib/modules/$uname_r/${f%/*}"
		cp "$moddir/$f" "$root/lib/modules/$uname_r/$f"
	done
done
cp "$moddir"/modules.{builtin,order} "$root/lib/modules/$uname_r/"
/bin/busybox depmod -b "$root" "$uname_r" || die "depmod of the initramfs failed"
install -m 0755 "$init_script" "$root/init"
# The kernel opens /dev/console for /init's stdio before anything is
# mounted. mknod needs root; without it l1-init reopens the console itself
# once devtmpfs is up.
mknod -m 0600 "$root/dev/console" c 5 1 2>/dev/null || true
(cd "$root" && find . -print | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) >"$work/initrd.cpio"
gzip -9n <"$work/initrd.cpio" >"$work/initrd.gz"

mkdir -p "$work/out"
# run puts this on the payload as a last-resort PATH entry, so ls/grep/sleep
# work in `sh -c` snippets without copying each host tool; built once here
# because hundreds of ln calls per run are noticeable.
mkdir "$work/out/fallback-bin"
cp /bin/busybox "$work/out/fallback-bin/busybox"
for a in $(/bin/busybox --list); do
	[[ $a == busybox ]] || ln -s busybox "$work/out/fallback-bin/$a"
done
cp "$vmlinuz" "$work/out/vmlinuz"
mv "$work/initrd.gz" "$work/out/initrd.gz"
{
	echo "kernel=$kpkg $kver"
	echo "uname=$uname_r"
	echo "scripts=$scripts_hash"
} >"$work/out/meta"
rm -rf "$dir"
mv "$work/out" "$dir"
# Every edit of these scripts or kernel update makes a new ~16 MiB entry;
# drop those nobody used for a week.
find "$cache_root" -mindepth 1 -maxdepth 1 -type d -regextype posix-extended \
	-regex '.*/[0-9a-f]{16}' -mtime +7 \
	! -path "$dir" -exec rm -rf {} + 2>/dev/null || true
log "built $dir in $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }') s"
echo "$dir"
