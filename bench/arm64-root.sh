#!/bin/sh
# An arm64 Debian 12 root for `python -m bench run --arm64-root ROOT` (issue 18, target 4):
#   bench/arm64-root.sh ROOT [DEB]      (as root; DEB defaults to debian/build-deb.sh --arch arm64's)
#
# The systems under test (gatewayd from the arm64 .deb, and Debian's arm64 mosquitto as the
# bridge) then run in ROOT through binfmt and qemu-user, while the harness, the load and the
# cloud broker stay native: the ratios between the two emulated systems are what it reports
# (absolute rates under emulation mean nothing). mmdebstrap runs the packages' scripts under
# qemu-user too, so this takes a few minutes.
set -eu
root=${1:?usage: bench/arm64-root.sh ROOT [DEB]}
cd "$(dirname "$0")/.."
deb=${2:-}
if [ -z "$deb" ]; then
    deb=$(debian/build-deb.sh --arch arm64 | tail -1)
fi
[ -f /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || {
    echo "arm64-root.sh: no binfmt entry for qemu-aarch64 (./dev.sh test sets it up)" >&2
    exit 1
}
depends=$(dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed 's/|.*//; s/(.*)//; s/[[:space:]]//g' \
    | grep -v '^$' | paste -sd, -)
mmdebstrap --architectures=arm64 --variant=minbase --include="mosquitto,$depends" \
    --customize-hook="copy-in $deb /tmp" \
    --customize-hook="chroot \"\$1\" dpkg -i /tmp/$(basename "$deb")" \
    --customize-hook="rm \"\$1/tmp/$(basename "$deb")\"" \
    bookworm "$root" >"$root.log" 2>&1 || { tail -30 "$root.log" >&2; exit 1; }
echo "$root"
