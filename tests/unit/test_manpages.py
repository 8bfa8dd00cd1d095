"""The man pages in debian/man render cleanly and stay true to the code they describe.

The lists a page must cover are taken from the code, never copied: the keys and defaults from
gateway/config.py's SCHEMA, what a reload applies from gateway/daemon/reload.py, the commands
and flags by walking gatewayctl's and gatewayd's argparse parsers. So a key, a command or a
flag added without its documentation fails here, with a message that says what to add where.
Pages are checked as rendered (groff, plain ASCII, one line per paragraph), which is what the
operator reads.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli import gatewayctl, gatewayd
from gateway.config import REQUIRED, SCHEMA
from gateway.daemon.reload import LIVE_SECTIONS, LIVE_STORAGE_KEYS, split_live
from gateway.log import Event

ROOT = Path(__file__).resolve().parents[2]
MAN = ROOT / "debian" / "man"
PAGES = ("gatewayd.8", "gatewayctl.1", "gatewayd.toml.5")
ENV = {**os.environ, "LC_ALL": "C.UTF-8"}
TAG_INDENT = 7  # where groff's man macros put a .TP tag, under a .SH or .SS at 0 or 3
LIVE, RESTART = "Applied on reload.", "Needs a restart."


def _groff() -> str:
    groff = shutil.which("groff")
    assert groff, "groff is not installed: apt install groff-base (./dev.sh test does)"
    return groff


@functools.cache
def render(page: str) -> list[str]:
    """The page as plain text, each paragraph on one line: no wrapping, no hyphenation."""
    out = subprocess.run(
        [_groff(), "-man", "-Tascii", "-P-cbou", "-rLL=1000n", "-rHY=0", str(MAN / page)],
        capture_output=True, text=True, env=ENV, check=True)
    return out.stdout.splitlines()  # a list shared by the tests: they only read it


def indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def section(lines: list[str], heading: str, level: int) -> list[str]:
    """The lines under a heading (`.SH` at indent 0, `.SS` at 3) up to the next one as high."""
    for i, line in enumerate(lines):
        if line.strip() == heading and indent(line) == level:
            rest = lines[i + 1:]
            end = next((j for j, text in enumerate(rest) if text.strip() and indent(text) <= level),
                       len(rest))
            return rest[:end]
    return []


def entries(lines: list[str], tag: re.Pattern[str]) -> Iterator[tuple[re.Match[str], str]]:
    """(tag match, the entry's text) for each `.TP` whose tag matches; its text runs to the next
    line at the tag's indent or less."""
    for i, line in enumerate(lines):
        found = tag.fullmatch(line.strip()) if indent(line) == TAG_INDENT else None
        if found:
            rest = lines[i + 1:]
            end = next((j for j, text in enumerate(rest)
                        if text.strip() and indent(text) <= TAG_INDENT), len(rest))
            yield found, " ".join(text.strip() for text in [line, *rest[:end]])


# -- rendering ----------------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES)
def test_the_page_renders_without_warnings(page):
    """-ww: every warning groff has (lintian runs man --warnings on the package's pages)."""
    out = subprocess.run([_groff(), "-man", "-ww", "-z", "-Tutf8", str(MAN / page)],
                         capture_output=True, text=True, env=ENV)
    assert (out.returncode, out.stderr) == (0, "")


def test_the_package_installs_every_page():
    listed = (ROOT / "debian" / "gatewayd.manpages").read_text().split()
    assert sorted(listed) == sorted(f"debian/man/{page}" for page in PAGES)
    assert sorted(p.name for p in MAN.iterdir()) == sorted(PAGES)


def test_the_documents_the_pages_name_are_in_the_package():
    """A page that sends the operator to /usr/share/doc/gatewayd/X.md needs X.md shipped there:
    README.md by debian/rules, the others by debian/gatewayd.docs."""
    shipped = {"README.md"}
    for line in (ROOT / "debian" / "gatewayd.docs").read_text().split():
        assert (ROOT / line).is_file(), f"debian/gatewayd.docs names {line}, which is not there"
        shipped.add(Path(line).name)
    named = {name for page in PAGES for name in re.findall(r"\b([\w-]+\.md)\b",
                                                           "\n".join(render(page)))}
    assert named <= shipped, f"named in a page but not shipped: {sorted(named - shipped)}"


def test_every_message_id_a_page_quotes_is_an_event():
    known = {e.value for e in Event}
    for page in PAGES:
        quoted = set(re.findall(r"\b[0-9a-f]{32}\b", "\n".join(render(page))))
        assert quoted <= known, f"{page} quotes unknown MESSAGE_IDs {sorted(quoted - known)}"


def test_gatewayd_8_points_to_the_event_table():
    journal = " ".join(section(render("gatewayd.8"), "JOURNAL", 0))
    assert "MESSAGE_ID" in journal and "operations.md" in journal


# -- gatewayd.toml(5): every key, its default, and what a reload does with it -----------------


KEY_TAG = re.compile(r"(?P<key>[a-z_]+)(?: = (?P<default>.+)| \(required\))")


def toml(value: object) -> str:
    """A default as the page writes it: the TOML value an operator would type."""
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml(item) for item in value) + "]"
    return repr(value)


def documented_keys() -> dict[str, dict[str, tuple[str | None, str]]]:
    """section -> key -> (the default in the tag, or None if required; the entry's text)."""
    sections = render("gatewayd.toml.5")
    body = section(sections, "SECTIONS", 0)
    out: dict[str, dict[str, tuple[str | None, str]]] = {}
    for line in body:
        name = re.fullmatch(r" {3}\[(\w+)\]", line)
        if name:
            block = section(body, f"[{name.group(1)}]", 3)
            out[name.group(1)] = {m["key"]: (m["default"], text)
                                  for m, text in entries(block, KEY_TAG)}
    return out


def test_every_key_of_the_schema_is_documented_with_its_default():
    pages = documented_keys()
    missing, wrong = [], []
    for name, keys in SCHEMA.items():
        for key, spec in keys.items():
            if key not in pages.get(name, {}):
                missing.append(f"{name}.{key}")
                continue
            want = None if spec.default is REQUIRED else toml(spec.default)
            if pages[name][key][0] != want:
                wrong.append(f"{name}.{key}: the page says {pages[name][key][0] or 'required'}, "
                             f"the code {want or 'required'}")
    assert not missing, (
        f"gatewayd.toml.5 does not document {', '.join(missing)}: add to "
        f"debian/man/gatewayd.toml.5, under its section's .SS, a .TP tagged "
        f"'\\fBkey\\fR = default' (or '\\fBkey\\fR (required)'), then its type, its meaning, "
        f"and '{LIVE}' or '{RESTART}'")
    assert not wrong, ("gatewayd.toml.5's defaults differ from gateway/config.py: "
                       + "; ".join(wrong))


def test_the_page_documents_no_key_the_schema_lacks():
    pages = documented_keys()
    extra = [f"{name}.{key}" for name, keys in pages.items() for key in keys
             if key not in SCHEMA.get(name, {})]
    assert extra == [], f"gatewayd.toml.5 documents keys gateway/config.py does not accept: {extra}"


def test_every_key_says_what_a_reload_does_with_it():
    pages = documented_keys()
    wrong = []
    for name, keys in SCHEMA.items():
        for key in keys:
            if key not in pages.get(name, {}):
                continue  # reported by the test above
            text = pages[name][key][1]
            live = bool(split_live([f"{name}.{key}"])[0])
            want, other = (LIVE, RESTART) if live else (RESTART, LIVE)
            if want not in text or other in text:
                wrong.append(f"{name}.{key} ({want!r}, per gateway/daemon/reload.py)")
    assert wrong == [], "gatewayd.toml.5 says the wrong thing about reload for " + ", ".join(wrong)


def test_the_reload_section_names_what_a_reload_applies():
    """The summary above the keys, read by an operator deciding between reload and restart."""
    summary = " ".join(section(render("gatewayd.toml.5"), "RELOAD", 0))
    named = [f"[{name}]" for name in LIVE_SECTIONS] + [f"storage.{k}" for k in LIVE_STORAGE_KEYS]
    assert [n for n in named if n not in summary] == []


# -- gatewayctl(1) and gatewayd(8): every command and flag the parsers have ---------------------


class _Parser(Exception):
    """Not an error: how the parser comes out of main."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__(parser.prog)
        self.parser = parser


def parser_of(main, monkeypatch, argv: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """The parser `main` builds, taken at its parse_args: main builds it inline, as every branch
    that adds a command extends it there, so this reads the real one without changing main.
    gatewayd reads `--config FILE` without argparse and builds its parser only for other
    arguments: it is given `--help` for that."""

    def caught(self, *_args, **_kwargs):
        raise _Parser(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", caught)
    with pytest.raises(_Parser) as out:
        main(list(argv))
    monkeypatch.undo()
    return out.value.parser


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command words, its parser) for every runnable command, through nested subparsers."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for name, child in subs[0].choices.items():
        yield from commands(child, (*path, name))


def option_groups(parser: argparse.ArgumentParser) -> dict[str, str | None]:
    """Every option string but --help -> the title of its named argument group (None: its own)."""
    out: dict[str, str | None] = {}
    for group in parser._action_groups:
        shared = group.title if group.title not in ("options", "optional arguments",
                                                    "positional arguments") else None
        for action in group._group_actions:
            if isinstance(action, argparse._HelpAction):
                continue
            for flag in action.option_strings:
                out[flag] = shared
    return out


def test_every_gatewayctl_command_has_an_entry(monkeypatch):
    page = render("gatewayctl.1")
    listed = section(page, "COMMANDS", 0)
    tagged = [m.group(1) for m, _ in entries(listed, re.compile(r"gatewayctl (.*)"))]
    missing = [" ".join(words) for words, _ in commands(parser_of(gatewayctl.main, monkeypatch))
               if not any(f"{t} ".startswith(" ".join(words) + " ") for t in tagged)]
    assert not missing, "\n".join(
        f"gatewayctl.1 has no entry for `gatewayctl {cmd}`: add to debian/man/gatewayctl.1, "
        f"under COMMANDS in its group's .SS (a new .SS for a new group), a .TP tagged "
        f"'\\fBgatewayctl {cmd}\\fR ARGUMENTS [\\fB\\-\\-flag\\fR \\fIVALUE\\fR]...' saying what "
        f"it does, its flags in an .RS list, and a SYNOPSIS line" for cmd in missing)


def test_every_gatewayctl_flag_is_documented(monkeypatch):
    """A flag of a command's own is in its entry; a shared group's (the cloud broker's) is in
    the page's section for that group, '<TITLE> OPTIONS'."""
    page = render("gatewayctl.1")
    listed = section(page, "COMMANDS", 0)
    text_of = {m.group(1): text for m, text in entries(listed, re.compile(r"gatewayctl (.*)"))}
    missing = []
    for words, parser in commands(parser_of(gatewayctl.main, monkeypatch)):
        cmd = " ".join(words)
        entry = next((t for tag, t in text_of.items() if f"{tag} ".startswith(cmd + " ")), "")
        for flag, group in option_groups(parser).items():
            where = " ".join(section(page, f"{group.upper()} OPTIONS", 0)) if group else entry
            if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", where):
                missing.append(f"`gatewayctl {cmd} {flag}` (in "
                               + (f"{group.upper()} OPTIONS)" if group else "its entry)"))
        positional_choices = [choice for action in parser._actions
                              if not action.option_strings for choice in action.choices or ()]
        for choice in positional_choices:  # dlq list|resend|drop
            if not re.search(rf"(?<![\w-]){re.escape(choice)}(?![\w-])", entry):
                missing.append(f"`gatewayctl {cmd} {choice}` (in its entry)")
    assert missing == [], "gatewayctl.1 does not document " + ", ".join(missing)


def test_every_gatewayd_option_is_documented(monkeypatch):
    options = " ".join(section(render("gatewayd.8"), "OPTIONS", 0))
    parser = parser_of(gatewayd.main, monkeypatch, ("--help",))
    flags = [flag for action in parser._actions for flag in action.option_strings]
    missing = [flag for flag in flags
               if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", options)]
    assert missing == [], f"gatewayd.8's OPTIONS lacks {missing}: add a .TP for each"
