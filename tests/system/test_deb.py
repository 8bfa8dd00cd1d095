"""Issue 16: the .deb for the Pi and for a PC, both built on this machine, whatever it is.

debian/wheels.sh takes each dependency's binary wheel for the package's architecture, never the
build machine's; a wheel for another platform fails the build. The package's Python is Debian's
(3.11.2 on bookworm and Raspberry Pi OS) with Debian's python3-qpid-proton, not the development
venv's: the AMQP and TLS heads' tests run once more in exactly that environment.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.system import pi_site
from tests.system.guest import run

ROOT = pi_site.ROOT
MISSING = [t for t in ("dpkg-buildpackage", "dpkg-deb") if shutil.which(t) is None]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"missing {MISSING} "
                                "(./dev.sh test installs them)")
MACHINE = {"arm64": "aarch64", "amd64": "x86_64"}
BINARY = ("rocksdict", "cryptography", "cffi", "uvloop")


def _wheels(deb: Path) -> list[str]:
    listing = run(["dpkg-deb", "-c", str(deb)])
    return [line.split()[-1].rsplit("/", 1)[1] for line in listing.splitlines()
            if line.endswith(".whl")]


@pytest.mark.parametrize("arch", ["arm64", "amd64"])
def test_the_package_holds_wheels_for_its_architecture(arch, tmp_path):
    deb = pi_site.build_deb(arch, tmp_path)
    assert deb.name == f"gatewayd_0.1.0_{arch}.deb"
    assert run(["dpkg-deb", "-f", str(deb), "Architecture"]).strip() == arch
    assert "python3-qpid-proton" in run(["dpkg-deb", "-f", str(deb), "Depends"])
    wheels = _wheels(deb)
    for name in BINARY:
        found = [w for w in wheels if w.startswith(name + "-")]
        assert found and MACHINE[arch] in found[0], f"{name}: {found}"
    foreign = [w for w in wheels
               if not (w.endswith("-any.whl") or MACHINE[arch] in w.rsplit("-", 1)[1])]
    assert not foreign, f"wheels for another platform in the {arch} package: {foreign}"
    files = run(["dpkg-deb", "-c", str(deb)])
    for page in ("man1/gatewayctl.1.gz", "man5/gatewayd.toml.5.gz", "man8/gatewayd.8.gz"):
        assert page in files


def test_a_wheel_for_another_platform_fails_the_build(tmp_path):
    out = tmp_path / "wheels"
    out.mkdir()
    (out / "intruder-1.0-cp311-cp311-manylinux_2_17_x86_64.whl").write_bytes(b"")
    done = subprocess.run([str(ROOT / "debian" / "wheels.sh"), "arm64", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 1
    assert "wheels for another platform than arm64" in done.stderr
    assert "intruder-1.0" in done.stderr


DEBIAN_PYTHON = Path("/usr/bin/python3")


@pytest.mark.skipif(not DEBIAN_PYTHON.exists(), reason="no Debian python3")
def test_the_amqp_and_tls_heads_run_on_the_packages_python(tmp_path):
    """The venv the postinst makes: Debian's python3 with its site packages (python3-systemd,
    python3-qpid-proton), the package's wheels installed without a resolver."""
    probe = subprocess.run([str(DEBIAN_PYTHON), "-c", "import proton"], capture_output=True)
    if probe.returncode != 0:
        pytest.fail("Debian's python3-qpid-proton is missing: ./dev.sh test installs it")
    wheels = tmp_path / "wheels"
    run([str(ROOT / "debian" / "wheels.sh"), "amd64", str(wheels)], cwd=ROOT, timeout=600)
    venv = tmp_path / "venv"
    run([str(DEBIAN_PYTHON), "-m", "venv", "--system-site-packages", str(venv)])
    py = venv / "bin" / "python"
    run([str(py), "-m", "pip", "install", "-q", "--no-index", "--no-deps",
         *map(str, wheels.glob("*.whl"))], timeout=600)
    run([str(py), "-m", "pip", "install", "-q", "pytest", "hypothesis"], timeout=600)
    versions = run([str(py), "-c", "import sys, proton; print(sys.version.split()[0], "
                    "'.'.join(map(str, proton.VERSION)))"])
    print(f"the package's Python and proton: {versions.strip()}")
    done = subprocess.run(
        [str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit/test_amqp.py",
         "tests/unit/test_websocket.py", "tests/unit/test_method_endpoint.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
