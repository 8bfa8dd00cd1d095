"""Fixtures for every tier: a real mosquitto as the cloud, gatewayd subprocesses."""

from __future__ import annotations

import shutil

import pytest

from tests.support.broker import Mosquitto
from tests.support.gatewayd import Gatewayd


def pytest_addoption(parser) -> None:
    parser.addoption("--runslow", action="store_true", help="run long fault and wear runs")


def pytest_collection_modifyitems(config, items) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="long run: pass --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def cloud(request, tmp_path):
    """A running mosquitto, stopped (SIGTERM) at the end; with every packet in its log for a
    test marked `packet_log`."""
    if shutil.which("mosquitto") is None and not shutil.os.path.exists("/usr/sbin/mosquitto"):
        pytest.fail("mosquitto is not installed: run ./dev.sh test, which installs it")
    packet_log = request.node.get_closest_marker("packet_log") is not None
    broker = Mosquitto(tmp_path / "cloud", packet_log=packet_log)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def gateways(tmp_path):
    """A factory of gatewayd processes; every one is killed at the end of the test."""
    made: list[Gatewayd] = []

    def make(name: str = "gw", **kwargs) -> Gatewayd:
        gw = Gatewayd(tmp_path / name, **kwargs)
        made.append(gw)
        return gw

    yield make
    for gw in made:
        gw.close()
