#!/bin/sh
# The wheels the package ships, for the package's architecture, whatever the build machine's:
#   debian/wheels.sh ARCH OUTDIR        (ARCH is a Debian architecture: arm64 or amd64)
#
# gatewayd's own wheel and the pure-Python dependencies that PyPI has only as source (sdnotify)
# are built here; every other dependency is downloaded as a binary wheel for CPython 3.11 on the
# target platform (pip download --platform), never built for the host. python-qpid-proton comes
# from Debian instead (python3-qpid-proton, a Depends of the package, on every Debian and
# Raspberry Pi OS architecture): PyPI has only its source, and building it for arm64 on x86_64
# would need an emulated compiler. The venv sees it through --system-site-packages.
# Ends with a check that every wheel is for ARCH or for any platform.
set -eu
arch=$1 out=$2
case $arch in
    arm64) machine=aarch64 ;;
    amd64) machine=x86_64 ;;
    *) echo "wheels.sh: unsupported architecture $arch (arm64 or amd64)" >&2; exit 2 ;;
esac
pip="python3 -m pip --disable-pip-version-check --quiet"
mkdir -p "$out"
$pip wheel --no-deps --wheel-dir "$out" . sdnotify

# the requirements of setup.cfg but the one Debian provides
reqs=$(mktemp)
trap 'rm -f "$reqs"' EXIT
python3 - "$reqs" <<'EOF'
import configparser, sys
cfg = configparser.ConfigParser()
cfg.read("setup.cfg")
lines = [r.strip() for r in cfg["options"]["install_requires"].splitlines() if r.strip()]
keep = [r for r in lines if not r.startswith(("python-qpid-proton", "sdnotify"))]
open(sys.argv[1], "w").write("\n".join(keep) + "\n")
EOF
platforms=""
for tag in manylinux_2_36 manylinux_2_34 manylinux_2_28 manylinux_2_17 manylinux2014; do
    platforms="$platforms --platform ${tag}_$machine"
done
# shellcheck disable=SC2086
$pip download --only-binary=:all: $platforms --python-version 3.11 --implementation cp \
    --abi cp311 --abi abi3 --abi none --dest "$out" -r "$reqs"

wrong=""
for wheel in "$out"/*.whl; do
    tag=$(basename "$wheel" .whl | awk -F- '{print $NF}')
    case $tag in
        any|*"$machine"*) ;;
        *) wrong="$wrong $(basename "$wheel")" ;;
    esac
done
if [ -n "$wrong" ]; then
    echo "wheels.sh: wheels for another platform than $arch ($machine):$wrong" >&2
    exit 1
fi
ls "$out"
