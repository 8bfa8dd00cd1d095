#!/bin/sh
# Build a flashable Raspberry Pi image (Pi 3 B/B+, 4 B, 400, Zero 2 W) with gatewayd:
#   image-build/build-image.sh [--arch arm64|amd64] [--deb FILE] [--out FILE] [--size 2G]
# arm64 (the default) is the Pi image: Debian bookworm with Debian's raspi-firmware and arm64
# kernel, gatewayd installed from the .deb. On an x86_64 host it needs qemu-user-static and
# binfmt-support for the maintainer scripts. amd64 builds the same tree with Debian's PC kernel:
# CI checks its layout and files, and the power-cut test boots it.
set -eu
if [ "${1:-}" = root-label ]; then
    # raspi-firmware writes cmdline.txt with root=LABEL=RASPIROOT unless told (ROOTPART in its
    # defaults, read again on every kernel upgrade); the image's root is labelled gwroot
    root=$2
    if [ -f "$root/etc/default/raspi-firmware" ]; then
        sed -i 's/^#\{0,1\}ROOTPART=.*/ROOTPART=LABEL=gwroot/' "$root/etc/default/raspi-firmware"
        grep -q '^ROOTPART=' "$root/etc/default/raspi-firmware" \
            || echo 'ROOTPART=LABEL=gwroot' >> "$root/etc/default/raspi-firmware"
    fi
    if [ -f "$root/boot/firmware/cmdline.txt" ]; then
        sed -i 's/root=[^ ]*/root=LABEL=gwroot/' "$root/boot/firmware/cmdline.txt"
    fi
    exit 0
fi
if [ "${1:-}" = install-kernel ]; then
    # a customize hook: mmdebstrap's own apt (its config names the chroot's sources, lists and
    # cache) with dpkg run inside the chroot, as mmdebstrap runs it for --include; never the
    # build machine's dpkg
    root=$2 package=$3
    [ -n "${MMDEBSTRAP_APT_CONFIG:-}" ] && [ "$root" != / ] && [ -d "$root/var/lib/dpkg" ] \
        || { echo "install-kernel: run as an mmdebstrap customize hook" >&2; exit 1; }
    exec env APT_CONFIG="$MMDEBSTRAP_APT_CONFIG" apt-get --yes -q \
        -o Dir::Bin::dpkg=env -o DPkg::Options::=--unset=TMPDIR -o DPkg::Options::=dpkg \
        -o DPkg::Chroot-Directory="$root" install "$package"
fi
here=$(cd "$(dirname "$0")" && pwd)
arch=arm64 deb="" out="" size=2G
while [ $# -gt 0 ]; do
    case $1 in
        --arch) arch=$2; shift 2 ;;
        --deb) deb=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --size) size=$2; shift 2 ;;
        *) echo "usage: $0 [--arch arm64|amd64] [--deb FILE] [--out FILE] [--size 2G]" >&2; exit 2 ;;
    esac
done
[ -n "$deb" ] || deb=$(ls "$here"/../dist/gatewayd_*_"$arch".deb 2>/dev/null | tail -1)
[ -f "$deb" ] || { echo "no gatewayd .deb for $arch: run debian/build-deb.sh on $arch first" >&2; exit 1; }
out=${out:-gatewayd-rpi-$arch.img}
work=$(mktemp -d)
cleanup() {
    # a build killed mid-way (a test's timeout) may leave the chroot's /proc, /sys or /dev
    # mounted: unmount them before removing anything, or rm would walk into the host's
    findmnt -rn -o TARGET | grep "^$work/" | sort -r | xargs -r umount -l 2>/dev/null || true
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT
trap 'exit 1' INT TERM  # so that a stopped build still runs cleanup

packages="systemd-sysv,systemd,systemd-timesyncd,systemd-resolved,dbus,udev,python3,python3-venv"
packages="$packages,python3-systemd,adduser,dosfstools,iproute2,openssh-server,ca-certificates"
# initramfs-tools with the rest, not with the kernel: its configure would leave a trigger that
# makes the kernel's initramfs a second time
packages="$packages,initramfs-tools,zstd"
if [ "$arch" = arm64 ]; then
    packages="$packages,raspi-firmware,firmware-brcm80211,wpasupplicant"
    kernel=linux-image-arm64
    components="main contrib non-free non-free-firmware"
else
    # the same tree for a PC or a VM: Debian's amd64 kernel instead of the Pi's firmware (the
    # power-cut test boots it under qemu, with KVM where there is KVM)
    kernel=linux-image-amd64
    components="main"
fi

# what the .deb depends on comes with the root (the chroot has no network to fetch it later)
depends=$(dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed 's/|.*//; s/(.*)//; s/[[:space:]]//g' \
    | grep -v '^$' | paste -sd, -)
packages="$packages,$depends"

# The kernel goes in last, once everything else is configured: installed with the rest, its
# initramfs was made twice (at the kernel's configure, then again for a trigger that udev and
# the firmware had left pending), and under qemu-user each run takes minutes. The image's own
# files (its fstab above all) are in place before it: the initramfs takes fsck and fsck.ext4
# only for the filesystems /etc/fstab names, and without them no boot checks the root.
mkdir -p "$work/root"
cp "$deb" "$work/gatewayd.deb"
mmdebstrap --architectures="$arch" --variant=minbase --components="$components" \
    --include="$packages" \
    --customize-hook="\"$here/build-image.sh\" root-label \"\$1\"" \
    --customize-hook="sync-in $here/files /" \
    --customize-hook="\"$here/build-image.sh\" install-kernel \"\$1\" $kernel" \
    --customize-hook="copy-in $work/gatewayd.deb /tmp" \
    --customize-hook='chroot "$1" dpkg -i /tmp/gatewayd.deb' \
    --customize-hook='rm "$1/tmp/gatewayd.deb"' \
    --customize-hook='rm -f "$1"/etc/ssh/ssh_host_* "$1"/etc/gatewayd/ca.* "$1"/etc/gatewayd/gateway.*' \
    --customize-hook='chroot "$1" systemctl enable gatewayd-firstboot.service gatewayd-store-disk.service systemd-networkd systemd-resolved' \
    --customize-hook='chroot "$1" systemctl mask swap.target' \
    --customize-hook='echo gatewayd > "$1/etc/hostname"' \
    bookworm "$work/root" >"$work/mmdebstrap.log" 2>&1 \
    || { tail -30 "$work/mmdebstrap.log" >&2; exit 1; }
mkdir -p "$work/root/var/lib/gatewayd"

# Partitions: 1 = FAT32 boot/firmware (the Pi's firmware reads it; first-boot settings go in
# its gatewayd/ folder), 2 = ext4 root. The store may later move to a USB disk labelled
# GWSTORE (see /etc/fstab).
boot_mb=256
root_img=$work/root.ext4
boot_img=$work/boot.vfat
truncate -s "$size" "$root_img"
# ext4 with a journal (image-build/README.md has the power cuts and wear figures that chose
# it), every table and the journal written now: nothing initialises itself on the card later
mkfs.ext4 -q -F -L gwroot -O has_journal -J size=32 -E lazy_itable_init=0,lazy_journal_init=0 \
    -d "$work/root" "$root_img"
truncate -s "${boot_mb}M" "$boot_img"
mkfs.vfat -F 32 -n GWBOOT "$boot_img" >/dev/null
if [ -d "$work/root/boot/firmware" ] && [ -n "$(ls -A "$work/root/boot/firmware")" ]; then
    mcopy -s -i "$boot_img" "$work/root/boot/firmware/"* ::/
fi
mmd -i "$boot_img" ::/gatewayd
mcopy -i "$boot_img" "$here/boot/README.txt" ::/gatewayd/README.txt
mcopy -i "$boot_img" "$here/boot/gatewayd.toml.example" ::/gatewayd/gatewayd.toml.example

root_mb=$(( $(stat -c %s "$root_img") / 1048576 ))
total_mb=$(( 4 + boot_mb + root_mb + 1 ))
rm -f "$out"
truncate -s "${total_mb}M" "$out"
sfdisk -q "$out" <<TABLE
label: dos
start=4MiB, size=${boot_mb}MiB, type=c, bootable
start=$(( 4 + boot_mb ))MiB, type=83
TABLE
dd if="$boot_img" of="$out" bs=1M seek=4 conv=notrunc status=none
dd if="$root_img" of="$out" bs=1M seek=$(( 4 + boot_mb )) conv=notrunc status=none
echo "$out: $(( $(stat -c %s "$out") / 1048576 )) MiB, arch $arch, gatewayd $(dpkg-deb -f "$deb" Version)"
