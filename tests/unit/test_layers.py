"""The folders of gateway/ are the design's boxes, and data flows one way between them.

A package may import only the packages below it in this order; the foundation modules at the top
of gateway/ (config, errors, log, clock, identity, sockets) are open to all. A new import that
goes the other way fails here, with the module and the import named, before it turns the tree
back into a switchboard. docs/architecture.md explains each package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import gateway

ROOT = Path(gateway.__file__).parent
FOUNDATION = {"config", "errors", "log", "clock", "identity", "sockets"}
# what each package may import, besides itself and the foundation
ALLOWED = {
    "mqtt": set(),
    "storage": set(),
    "upstream": {"mqtt", "storage"},
    "child": {"mqtt", "storage"},
    "modules": {"mqtt", "storage"},
    "hub": {"mqtt", "storage", "upstream", "child", "modules"},
    "daemon": {"mqtt", "storage", "upstream", "child", "modules", "hub"},
    "operator": {"mqtt", "storage", "upstream", "child", "modules", "hub"},
    "console": {"mqtt", "storage", "upstream", "child", "modules", "hub", "operator"},
    "cli": {"mqtt", "storage", "upstream", "child", "modules", "hub", "daemon", "operator",
            "console"},
}
# the one edge against the flow, and why it is there
EXCEPTIONS = {
    # salvage recounts the outbox it rescues, so it reads the outbox's record format
    ("storage/salvage.py", "upstream"),
}


def _gateway_imports(path: Path) -> set[str]:
    """The gateway packages or foundation modules a module imports (second name component)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "gateway" and len(parts) > 1:
                out.add(parts[1])
    return out


def _modules() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if p.parent != ROOT)


def test_every_package_is_in_the_table():
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
    assert packages == set(ALLOWED)


def test_the_foundation_imports_no_package():
    for name in FOUNDATION:
        assert _gateway_imports(ROOT / f"{name}.py") <= FOUNDATION, name


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_flow(path: Path):
    rel = str(path.relative_to(ROOT))
    package = path.relative_to(ROOT).parts[0]
    used = _gateway_imports(path) - FOUNDATION - {package}
    against = {p for p in used - ALLOWED[package] if (rel, p) not in EXCEPTIONS}
    assert not against, f"{rel} imports gateway.{sorted(against)}, against the flow"


def test_the_exceptions_are_still_needed():
    for rel, package in EXCEPTIONS:
        assert package in _gateway_imports(ROOT / rel), f"{rel} no longer needs {package}"
