"""What a module imports, read from its source: the sans-I/O checks of the tests ask it."""

from __future__ import annotations

import ast
from pathlib import Path

IO_MODULES = {"asyncio", "socket", "ssl", "selectors"}


def top_level_imports(path: str | Path) -> set[str]:
    """The first name of every absolute import in the file (`asyncio` for `asyncio.events`)."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    return imported
