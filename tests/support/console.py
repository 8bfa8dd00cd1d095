"""The web console as a real `gatewayctl console` subprocess, and a real headless Chromium.

The browser is Debian's chromium driven by its chromedriver through Selenium; nothing is
downloaded (Selenium Manager is kept offline). Screenshots are the whole page: the window is
made as tall as the document first.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or ""
CHROMEDRIVER = shutil.which("chromedriver") or ""
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "images" / "console"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,900")

needs_chromium = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="Debian's chromium and chromium-driver are not installed (./dev.sh test installs them)")


class Console:
    """`gatewayctl console` on a free loopback port; `url` once it has said where it listens."""

    def __init__(self, cloud_url: str, *args: str, listen: str = "127.0.0.1:0") -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli.gatewayctl", "console", "--cloud", cloud_url,
             "--listen", listen, *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"))
        line = self.proc.stdout.readline().strip()  # blocks until bound, or EOF if it failed
        if not line.startswith("console: "):
            self.proc.wait(30)
            raise AssertionError(f"the console did not start: {self.proc.stderr.read()}")
        self.url = line.split(" ", 1)[1].rstrip("/")

    def stop(self) -> str:
        """Stop it (SIGTERM) and return what it wrote on stderr (its journal lines)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
        return self.proc.stderr.read()


def chromium(profile: Path):
    """A headless Chromium with a fresh profile, driven by Debian's chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager fetch anything
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def screenshot(driver, name: str) -> Path:
    """docs/images/console/NAME.png, the whole page at 1280 px wide."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, max(600, min(int(height) + 120, 4000)))
    path = SHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    driver.set_window_size(1280, 900)
    return path
