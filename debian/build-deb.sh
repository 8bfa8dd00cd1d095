#!/bin/sh
# Build gatewayd_<version>_<arch>.deb from this tree into dist/:
#   debian/build-deb.sh [--arch arm64|amd64] [VERSION]
# --arch defaults to the build machine's; an arm64 package builds on x86_64 too (the package
# holds no compiled code of its own, and debian/wheels.sh takes the wheels for the target).
# VERSION overrides the changelog's (the system test builds two to test an upgrade). The build
# runs in a copy of the tree so that the checkout stays clean.
set -eu
cd "$(dirname "$0")/.."
top=$PWD
arch=$(dpkg --print-architecture)
if [ "${1:-}" = --arch ]; then
    arch=$2
    shift 2
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
work=$tmp/src
mkdir "$work"
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$work/"
cd "$work"
if [ $# -ge 1 ]; then
    sed -i "1s/([^)]*)/($1)/" debian/changelog
fi
# -d: a cross build has no arm64 build dependencies to check; nothing here is compiled
dpkg-buildpackage -us -uc -b -d --host-arch "$arch" >"$tmp/build.log" 2>&1 \
    || { tail -40 "$tmp/build.log"; exit 1; }
mkdir -p "$top/dist"
# copied under a temporary name, then renamed: a build running beside this one (the system
# tests build in parallel) never reads a half-copied package; the last line names this build's
built=$(basename "$(ls "$tmp"/gatewayd_*_"$arch".deb)")
cp "$tmp/$built" "$top/dist/.$built.$$"
mv "$top/dist/.$built.$$" "$top/dist/$built"
echo "$top/dist/$built"
