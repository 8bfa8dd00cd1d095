#!/bin/sh
# Build gatewayd_<version>_<arch>.deb from this tree into dist/:
#   debian/build-deb.sh [VERSION]
# VERSION overrides the changelog's (the system test builds two to test an upgrade). The build
# runs in a copy of the tree so that the checkout stays clean.
set -eu
cd "$(dirname "$0")/.."
top=$PWD
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
work=$tmp/src
mkdir "$work"
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$work/"
cd "$work"
if [ $# -ge 1 ]; then
    sed -i "1s/([^)]*)/($1)/" debian/changelog
fi
dpkg-buildpackage -us -uc -b >"$tmp/build.log" 2>&1 || { tail -40 "$tmp/build.log"; exit 1; }
mkdir -p "$top/dist"
cp "$tmp"/gatewayd_*.deb "$top/dist/"
ls "$top"/dist/gatewayd_*.deb
