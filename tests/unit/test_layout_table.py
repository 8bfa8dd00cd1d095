"""The README's layout table names every module of gateway/, and nothing that is not there.

A newcomer reads the architecture from that table; a module added or moved without it would make
the table lie quietly.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _table_paths() -> set[str]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Layout"):text.index("## Tests")]
    return set(re.findall(r"^\| \**`(gateway/[^`]+\.py)`", section, flags=re.M))


def _modules() -> set[str]:
    return {str(p.relative_to(REPO)) for p in (REPO / "gateway").rglob("*.py")
            if p.name != "__init__.py"}


def test_every_module_is_in_the_table():
    assert sorted(_modules() - _table_paths()) == []


def test_the_table_names_only_modules_that_exist():
    assert sorted(_table_paths() - _modules()) == []
