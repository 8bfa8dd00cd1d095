#!/bin/sh
# The two set-up commands of the README, for a fresh Debian 12 / Raspberry Pi OS machine:
#   ./dev.sh run    run gatewayd on the embedded development config (loopback, ./var)
#   ./dev.sh test   install what the tests need (mosquitto, venvs) and run the whole suite
set -eu
cd "$(dirname "$0")"

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
    missing=""
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing="$missing $pkg"
    done
    [ -z "$missing" ] && return 0
    echo "dev.sh: installing$missing" >&2
    # shellcheck disable=SC2086
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing >/dev/null \
        || { as_root apt-get update -q >/dev/null; \
             as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing >/dev/null; }
}

venv() {
    # $1 venv dir, rest: pip arguments. One stamp per set of pip arguments, holding a hash of
    # what was installed: `run` (-e .) then `test` (-e '.[test]') must still install the test
    # extras, and a change of setup.cfg or of this script reinstalls.
    dir=$1; shift
    stamp=$dir/.installed-$(printf '%s\n' "$@" | sha256sum | cut -c1-16)
    if [ ! -x "$dir/bin/python" ]; then
        python3 -m venv "$dir" || { apt_install python3-venv; python3 -m venv "$dir"; }
    fi
    want=$(cat setup.cfg dev.sh | sha256sum)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        "$dir/bin/pip" install -q --disable-pip-version-check "$@"
        echo "$want" > "$stamp"
    fi
}

names_tests() {
    # whether the arguments name tests (a path, or path::test): then only those run
    for arg in "$@"; do
        [ -e "${arg%%::*}" ] && return 0
    done
    return 1
}

binfmt_arm64() {
    # arm64 binaries run here through binfmt_misc (mounted on a bare machine, not always)
    [ -f /proc/sys/fs/binfmt_misc/status ] \
        || as_root mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    [ -f /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || as_root update-binfmts --enable qemu-aarch64
}

case "${1:-}" in
run)
    shift
    apt_install gcc python3-dev  # python-qpid-proton (the AMQP head) builds from its sdist
    venv .venv -e .
    exec .venv/bin/gatewayd --config gatewayd.dev.toml "$@"
    ;;
test)
    shift
    # faketime: clock jumps; fuse3 + python3-pyfuse3 (Debian's python3 runs tests/support/powerfs.py)
    apt_install mosquitto e2fsprogs faketime fuse3 python3-pyfuse3
    apt_install groff-base  # tests/unit/test_manpages.py renders debian/man with groff
    # promtool checks the alert rules shipped in the .deb (tests/integration/test_monitoring.py)
    apt_install prometheus
    apt_install gcc python3-dev  # python-qpid-proton (the AMQP head) builds from its sdist
    # tests/integration/test_console.py drives the web console in a real headless browser
    apt_install chromium chromium-driver
    # tests/system: the .deb under a real systemd in qemu, and the image build
    apt_install mmdebstrap qemu-system-x86 debhelper dpkg-dev python3-pip python3-venv \
        dosfstools mtools fdisk openssh-client zstd
    # the Pi: an arm64 image built here (its packages' scripts run under qemu-user through
    # binfmt) and booted under qemu-system-aarch64; the .deb's Python takes Debian's proton
    apt_install qemu-system-arm qemu-user-static binfmt-support python3-qpid-proton
    binfmt_arm64
    venv .venv -e '.[test]'
    # The Azure IoT device SDK pins paho-mqtt < 2, so the real child SDK gets its own venv.
    venv .venv-sdk 'azure-iot-device==2.14.0'
    export GATEWAYD_SDK_PYTHON="$PWD/.venv-sdk/bin/python"
    # The Node.js device SDK (tests/integration/node_*.js: MQTT, MQTT-WS, AMQP), pinned by tests/node's lock file
    command -v npm >/dev/null || apt_install nodejs npm
    if [ ! tests/node/node_modules/.package-lock.json -nt tests/node/package-lock.json ]; then
        (cd tests/node && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    fi
    export GATEWAYD_NODE_MODULES="$PWD/tests/node/node_modules"
    .venv/bin/ruff check gateway tests bench
    if names_tests "$@"; then
        exec .venv/bin/python -m pytest -q "$@"
    fi
    # The whole suite: the emulated image tests (the arm64 build under qemu-user, TCG boots,
    # power cuts) run in a second pytest beside the rest, niced so that the rest keeps its
    # pace. One after the other they would not fit CI's hour on two cores.
    log=$(mktemp) base=$(mktemp -d)
    nice -n 10 .venv/bin/python -m pytest -q --basetemp "$base" "$@" -m emulated tests/system \
        >"$log" 2>&1 &
    emulated=$!
    rest=0
    .venv/bin/python -m pytest -q "$@" -m "not emulated" || rest=$?
    beside=0
    wait "$emulated" || beside=$?
    echo "== the emulated image tests, run beside the rest (exit $beside):"
    cat "$log"
    rm -rf "$log" "$base"
    # 5: nothing collected (a -k that picks none in one of the two)
    [ "$rest" -eq 0 ] || [ "$rest" -eq 5 ] || exit "$rest"
    [ "$beside" -eq 0 ] || [ "$beside" -eq 5 ] || exit "$beside"
    exit 0
    ;;
*)
    echo "usage: ./dev.sh run | ./dev.sh test [pytest args]" >&2
    exit 2
    ;;
esac
