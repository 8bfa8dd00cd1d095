"""gateway/mqtt/ holds protocols, not I/O: every module there must be importable and testable
without a socket, an event loop, a thread or a clock (time values are passed in)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import gateway.mqtt

FORBIDDEN = {"asyncio", "socket", "ssl", "time", "selectors", "threading"}
MQTT_DIR = Path(gateway.mqtt.__file__).parent
MODULES = sorted(MQTT_DIR.glob("*.py"))


def _imports(path: Path) -> set[str]:
    """Every module name an import statement in `path` names, relative ones resolved."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from . import x, from .codec import y: inside the package
                names.add("gateway.mqtt" + (f".{node.module}" if node.module else ""))
            elif node.module:
                names.add(node.module)
    return names


def test_the_package_has_its_modules():
    """A glob that found nothing would make the purity test pass vacuously."""
    assert {p.name for p in MODULES} >= {"codec.py", "mqtt5.py", "session.py", "topics.py"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_module_imports_no_io(path: Path):
    roots = {name.split(".")[0] for name in _imports(path)}
    assert not roots & FORBIDDEN, f"{path.name} imports {sorted(roots & FORBIDDEN)}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_module_imports_nothing_else_of_the_gateway(path: Path):
    """gateway.log or gateway.clock would bring a clock or a journal in through the back door;
    gateway.errors, the one error hierarchy, is plain classes and may be used."""
    ours = {name for name in _imports(path) if name.split(".")[0] == "gateway"}
    outside = {name for name in ours if name not in ("gateway.mqtt", "gateway.errors") and
               not name.startswith("gateway.mqtt.")}
    assert not outside, f"{path.name} imports {sorted(outside)}"


@pytest.mark.parametrize(
    "source", ["import time", "from time import monotonic", "import asyncio.streams",
               "def f():\n    import socket\n"],
)
def test_the_walker_sees_an_import(tmp_path: Path, source: str):
    """An import in any spelling, nested in a function too, is found."""
    module = tmp_path / "m.py"
    module.write_text(source, encoding="utf-8")
    assert {name.split(".")[0] for name in _imports(module)} & FORBIDDEN


def test_the_walker_resolves_relative_imports(tmp_path: Path):
    module = tmp_path / "m.py"
    module.write_text("from . import codec\nfrom .topics import matches\n", encoding="utf-8")
    assert _imports(module) == {"gateway.mqtt", "gateway.mqtt.topics"}
