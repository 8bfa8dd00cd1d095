"""Fixtures the unit tests share."""

from __future__ import annotations

import pytest

from gateway.storage.store import Store


@pytest.fixture
def reopen(tmp_path):
    """Opens the same store again, as a restarted daemon would; whatever is open is closed at
    the end."""
    opened: list[Store] = []

    def open_store() -> Store:
        if opened and not opened[-1].closed:
            opened[-1].close()
        opened.append(Store(tmp_path / "store"))
        return opened[-1]

    yield open_store
    for store in opened:
        store.close()
