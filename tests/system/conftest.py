"""What the system tests share: the amd64 twin of the Pi image, built once per session for the
layout checks and the power cuts, and the arm64 Pi image."""

from __future__ import annotations

import time

import pytest

from tests.system import pi_site
from tests.system.guest import elapsed


@pytest.fixture(scope="session")
def pc_image(tmp_path_factory):
    """The amd64 twin (same script, files and filesystem settings, Debian's PC kernel)."""
    if pi_site.prebuilt("amd64"):
        return pi_site.prebuilt("amd64")
    out = tmp_path_factory.mktemp("pc")
    deb = pi_site.build_deb("amd64", out)
    return pi_site.build_image("amd64", deb, out / "gatewayd-amd64.img", "1200M")


@pytest.fixture(scope="session")
def pi_image(tmp_path_factory):
    """The arm64 Pi image, its packages' scripts run under qemu-user through binfmt."""
    if pi_site.prebuilt("arm64"):
        return pi_site.prebuilt("arm64")
    started = time.monotonic()
    out = tmp_path_factory.mktemp("pi")
    deb = pi_site.build_deb("arm64", out)
    built = time.monotonic()
    image = pi_site.build_image("arm64", deb, out / "gatewayd-rpi-arm64.img", "1600M")
    print(f"arm64 .deb {built - started:.0f} s, image {elapsed(built)}")
    return image
