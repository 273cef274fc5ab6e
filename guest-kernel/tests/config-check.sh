#!/usr/bin/env bash
# The kernel build must refuse a config that lost an option it asked for.
# Three runs of `build.sh --check-only` (configure + verify, no compile):
# the real fragment passes; an unknown option and an option whose
# dependencies are off (VIRTIO_PCI needs PCI, which a microVM has not) fail
# and name the option.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "config-check: FAIL: $*" >&2; exit 1; }

"$here/build.sh" --check-only 2>"$tmp/ok.err" || { cat "$tmp/ok.err" >&2; fail "the real fragment did not pass"; }

for option in CONFIG_HUSK_NO_SUCH_OPTION CONFIG_VIRTIO_PCI; do
    cp "$here/microvm.config" "$tmp/frag"
    echo "$option=y" >>"$tmp/frag"
    if HUSK_KERNEL_FRAGMENT=$tmp/frag "$here/build.sh" --check-only 2>"$tmp/err"; then
        fail "a fragment asking for $option passed the check"
    fi
    grep -q "config check failed.*$option=y" "$tmp/err" ||
        { cat "$tmp/err" >&2; fail "the error does not name $option"; }
done
echo "config-check: ok (real fragment passes; missing options are named)" >&2
