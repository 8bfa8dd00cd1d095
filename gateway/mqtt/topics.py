"""MQTT 3.1.1 topic names and topic filters (section 4.7): validation and matching.

Pure functions on `str`, no state. The codec uses them to refuse bad PUBLISH / SUBSCRIBE packets
at the wire, and the broker uses `matches` to route; keeping both here means the two can never
disagree about what a valid filter is.
"""

from __future__ import annotations

__all__ = ["MAX_TOPIC_BYTES", "matches", "validate_filter", "validate_topic"]

# Topic names and filters travel as MQTT UTF-8 strings with a 16-bit length prefix (MQTT-4.7.3-3).
MAX_TOPIC_BYTES = 65535


def _check_common(text: str, what: str) -> None:
    """Rules shared by names and filters: at least one character, no U+0000, fits the wire."""
    if not text:
        raise ValueError(f"{what} is empty (MQTT-4.7.3-1)")
    if "\x00" in text:
        raise ValueError(f"{what} contains U+0000 (MQTT-4.7.3-2)")
    # Cheap pre-check: a str of <= 16383 code points can never exceed 65535 UTF-8 bytes.
    if len(text) > MAX_TOPIC_BYTES // 4 and len(text.encode("utf-8", "surrogatepass")) > (
        MAX_TOPIC_BYTES
    ):
        raise ValueError(f"{what} is longer than {MAX_TOPIC_BYTES} bytes of UTF-8")


def validate_topic(name: str) -> None:
    """Raise ValueError unless `name` is a valid topic *name* (what a PUBLISH carries).

    A name is concrete: wildcards are only meaningful in filters (MQTT-3.3.2-2).
    """
    _check_common(name, "topic name")
    for wildcard in ("+", "#"):
        if wildcard in name:
            raise ValueError(f"topic name contains a wildcard '{wildcard}' (MQTT-3.3.2-2)")


def validate_filter(f: str) -> None:
    """Raise ValueError unless `f` is a valid topic *filter* (what a SUBSCRIBE carries).

    '#' must be a whole level and the last one (MQTT-4.7.1-2); '+' must be a whole level
    (MQTT-4.7.1-3). Empty levels ("a//b", "/a") are legal.
    """
    _check_common(f, "topic filter")
    if "+" not in f and "#" not in f:
        return
    levels = f.split("/")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if "#" in level:
            if level != "#":
                raise ValueError(
                    f"topic filter {f!r}: '#' must occupy a whole level (MQTT-4.7.1-2)"
                )
            if i != last:
                raise ValueError(f"topic filter {f!r}: '#' must be the last level (MQTT-4.7.1-2)")
        if "+" in level and level != "+":
            raise ValueError(f"topic filter {f!r}: '+' must occupy a whole level (MQTT-4.7.1-3)")


def matches(filter: str, topic: str) -> bool:
    """True if topic name `topic` matches topic filter `filter` (MQTT 3.1.1 section 4.7).

    Both arguments are assumed valid (see validate_filter / validate_topic); this is on the
    routing hot path, so it does not re-validate. Rules:
    - '+' matches exactly one level, which may be empty;
    - '#' matches its parent level and any number of child levels ("a/#" matches "a");
    - a filter starting with a wildcard does not match a topic starting with '$'
      (MQTT-4.7.2-1), so "#" never delivers "$SYS/..." or "$iothub/..." by accident.
    """
    if topic[:1] == "$" and filter[:1] in ("+", "#"):
        return False
    if "+" not in filter and "#" not in filter:
        return filter == topic
    f_levels = filter.split("/")
    t_levels = topic.split("/")
    n_topic = len(t_levels)
    for i, level in enumerate(f_levels):
        if level == "#":
            return True
        if i >= n_topic:
            return False
        if level != "+" and level != t_levels[i]:
            return False
    return len(f_levels) == n_topic
