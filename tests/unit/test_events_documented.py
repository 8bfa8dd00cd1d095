"""docs/operations.md lists every numbered event with its MESSAGE_ID, and nothing else.

Fleet queries are written from that table (`journalctl MESSAGE_ID=...`): an event missing from
it cannot be searched for, and one listed but never defined would be searched for in vain.
"""

from __future__ import annotations

import re
from pathlib import Path

from gateway.log import Event

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def test_the_table_is_the_enum():
    table = dict(re.findall(r"^\| `([a-z_]+)` \| `([0-9a-f]{32})` \|", DOC.read_text(), re.M))
    assert table == {e.name.lower(): e.value for e in Event}


def test_no_two_events_share_a_message_id():
    """Two members with one value make the second a silent alias of the first (Enum rules)."""
    aliases = [name for name, member in Event.__members__.items() if member.name != name]
    assert aliases == []
