"""Routes: which messages go where, in the spirit of the IoT Edge hub's route syntax.

    FROM /messages/* WHERE <condition> INTO <sink>

A route table is parsed whole from the gateway's desired twin; one route that does not parse
refuses the table (with the route's name and the column), so a typo never silently drops a
site's data. Conditions use three-valued logic as IoT Hub routing queries do: comparing with a
property that is absent is *undefined*, and a message is routed only when the condition is
true. Pure code with no I/O; docs/routes.md is the user's description of the same grammar.
Reference: "Learn how to deploy modules and establish routes in IoT Edge" and "IoT Hub message
routing query syntax" (Azure documentation).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from gateway import identity
from gateway.errors import DataError
from gateway.upstream.message import DEFAULT_PRIORITY

UPSTREAM = "$upstream"
MAX_ROUTES = 100
MAX_TTL_SECS = 2_147_483_647

# IoT Hub system property names in queries, and the keys they travel under in a property bag
SYSTEM_PROPERTIES = {
    "$contentType": "$.ct",
    "$contentEncoding": "$.ce",
    "$messageId": "$.mid",
    "$correlationId": "$.cid",
    "$userId": "$.uid",
    "$to": "$.to",
}


class RouteError(DataError):
    """A route that does not parse; the message names the route and the column."""


@dataclass(frozen=True)
class Sink:
    """`$upstream`, a child's devicebound queue (`device` set), or a module's input (`module`
    and `input` set; the router knows the gateway id that makes it an identity)."""

    device: str = ""
    module: str = ""
    input: str = ""

    @property
    def upstream(self) -> bool:
        return not self.device and not self.module

    def __str__(self) -> str:
        if self.module:
            return f'BrokeredEndpoint("/modules/{self.module}/inputs/{self.input}")'
        if self.upstream:
            return UPSTREAM
        return f'BrokeredEndpoint("/devices/{self.device}/messages/devicebound")'


@dataclass(frozen=True)
class Delivery:
    sink: Sink
    priority: int
    ttl_secs: int


@dataclass
class MessageView:
    """What a condition can see of one message; the body is parsed at most once, lazily."""

    device_id: str  # the sender's identity: a child, or a module (`edge-1/filter`)
    properties: str
    payload: bytes
    _props: dict[str, str] | None = field(default=None, repr=False)
    _body: object = field(default=None, repr=False)
    _body_parsed: bool = field(default=False, repr=False)

    def props(self) -> dict[str, str]:
        if self._props is None:
            self._props = dict(parse_qsl(self.properties, keep_blank_values=True))
        return self._props

    def source(self) -> tuple[str, ...]:
        """The message's source path as the IoT Edge hub names it: `/messages/modules/{m}/
        outputs/{o}` (a module's output, `$.on`), `/messages/modules/{m}`, and gatewayd's
        `/messages/devices/{d}` for a child's telemetry."""
        module = identity.module_of(self.device_id)
        if not module:
            return ("messages", "devices", self.device_id)
        output = self.props().get("$.on")
        if output:
            return ("messages", "modules", module, "outputs", output)
        return ("messages", "modules", module)

    def body(self) -> object:
        if not self._body_parsed:
            self._body_parsed = True
            props = self.props()
            if props.get("$.ct", "").split(";")[0].strip().lower() == "application/json":
                try:
                    self._body = json.loads(self.payload)
                except ValueError:
                    self._body = None
        return self._body


# -- tokens --------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<str>'(?:[^']|'')*'|"(?:[^"\\]|\\.)*")
    | (?P<num>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)
    | (?P<op><>|!=|<=|>=|=|<|>|\(|\)|,)
    | (?P<name>\$?[A-Za-z_][A-Za-z0-9_\-]*(?:\.[A-Za-z_$][A-Za-z0-9_\-]*)*)
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"AND", "OR", "NOT", "TRUE", "FALSE", "IS_DEFINED"}


@dataclass(frozen=True)
class _Tok:
    kind: str  # str, num, op, name, kw, end
    text: str
    col: int
    value: object = None


def _string(raw: str, col: int) -> str:
    """'single' quotes double '' inside; "double" quotes follow JSON, whose escapes a
    condition may use, so a bad escape or a raw control character is the route's error."""
    if raw[0] == "'":
        return raw[1:-1].replace("''", "'")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise _At(col, f"bad string {raw[:24]!r}: {exc.msg}") from None


def _tokens(text: str, offset: int) -> list[_Tok]:
    out, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None:
            raise _At(offset + pos, f"unexpected {text[pos:].strip()[:12]!r}")
        kind = m.lastgroup
        raw = m.group(kind)
        col = offset + m.start(kind)
        if kind == "str":
            out.append(_Tok("str", raw, col, _string(raw, col)))
        elif kind == "num":
            out.append(_Tok("num", raw, col, float(raw)))
        elif kind == "name" and raw.upper() in _KEYWORDS:
            out.append(_Tok("kw", raw.upper(), col))
        else:
            out.append(_Tok(kind, raw, col))
        pos = m.end()
    out.append(_Tok("end", "", offset + len(text)))
    return out


class _At(RouteError):
    def __init__(self, col: int, reason: str) -> None:
        super().__init__(reason)
        self.col, self.reason = col, reason


# -- expressions ---------------------------------------------------------------------------------

Undefined = None  # three-valued logic: True, False, or None (undefined)


@dataclass(frozen=True)
class _Const:
    value: object

    def eval(self, msg: MessageView) -> object:
        return self.value


@dataclass(frozen=True)
class _Ref:
    """A property reference: app property, system property, $connectionDeviceId or $body.x."""

    name: str

    def eval(self, msg: MessageView) -> object:
        name = self.name
        if name == "$connectionDeviceId":
            return identity.device_of(msg.device_id)
        if name == "$connectionModuleId":
            return identity.module_of(msg.device_id) or None
        if name.startswith("$body"):
            value = msg.body()
            for part in name.split(".")[1:]:
                if not isinstance(value, dict) or part not in value:
                    return None
                value = value[part]
            return value if name != "$body" else None
        if name in SYSTEM_PROPERTIES:
            return msg.props().get(SYSTEM_PROPERTIES[name])
        return msg.props().get(name)


@dataclass(frozen=True)
class _Compare:
    left: object
    op: str
    right: object

    def eval(self, msg: MessageView) -> bool | None:
        a, b = _comparable(self.left.eval(msg), self.right.eval(msg))
        if a is None or b is None:
            return None
        try:
            if self.op == "=":
                return a == b
            if self.op in ("<>", "!="):
                return a != b
            if self.op == "<":
                return a < b
            if self.op == ">":
                return a > b
            if self.op == "<=":
                return a <= b
            return a >= b
        except TypeError:
            return None


def _comparable(a: object, b: object) -> tuple[object, object]:
    """Application properties are strings; compared with a number they compare as numbers."""
    if isinstance(a, bool) or isinstance(b, bool):
        return (a, b) if type(a) is type(b) else (None, None)
    if isinstance(a, int | float) and isinstance(b, str):
        b = _number(b)
    elif isinstance(b, int | float) and isinstance(a, str):
        a = _number(a)
    if type(a) is not type(b) and not (isinstance(a, int | float) and isinstance(b, int | float)):
        return None, None
    return a, b


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class _Defined:
    ref: _Ref

    def eval(self, msg: MessageView) -> bool:
        return self.ref.eval(msg) is not None


@dataclass(frozen=True)
class _Not:
    inner: object

    def eval(self, msg: MessageView) -> bool | None:
        value = self.inner.eval(msg)
        return None if value is None else not value


@dataclass(frozen=True)
class _Logic:
    op: str  # AND / OR
    parts: tuple

    def eval(self, msg: MessageView) -> bool | None:
        values = [p.eval(msg) for p in self.parts]
        if self.op == "AND":
            if any(v is False for v in values):
                return False
            return None if any(v is None for v in values) else True
        if any(v is True for v in values):
            return True
        return None if any(v is None for v in values) else False


class _Parser:
    def __init__(self, tokens: list[_Tok]) -> None:
        self.toks, self.i = tokens, 0

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def expect(self, kind: str, text: str | None = None) -> _Tok:
        tok = self.take()
        if tok.kind != kind or (text is not None and tok.text != text):
            raise _At(tok.col, f"expected {text or kind}, found {tok.text or 'the end'!r}")
        return tok

    def condition(self):
        parts = [self.conjunction()]
        while self.peek().kind == "kw" and self.peek().text == "OR":
            self.take()
            parts.append(self.conjunction())
        return parts[0] if len(parts) == 1 else _Logic("OR", tuple(parts))

    def conjunction(self):
        parts = [self.negation()]
        while self.peek().kind == "kw" and self.peek().text == "AND":
            self.take()
            parts.append(self.negation())
        return parts[0] if len(parts) == 1 else _Logic("AND", tuple(parts))

    def negation(self):
        if self.peek().kind == "kw" and self.peek().text == "NOT":
            self.take()
            return _Not(self.negation())
        return self.primary()

    def primary(self):
        tok = self.peek()
        if tok.kind == "op" and tok.text == "(":
            self.take()
            inner = self.condition()
            self.expect("op", ")")
            return inner
        if tok.kind == "kw" and tok.text == "IS_DEFINED":
            self.take()
            self.expect("op", "(")
            ref = self.operand()
            if not isinstance(ref, _Ref):
                raise _At(tok.col, "IS_DEFINED takes a property name")
            self.expect("op", ")")
            return _Defined(ref)
        left = self.operand()
        op = self.take()
        if op.kind != "op" or op.text not in ("=", "<>", "!=", "<", ">", "<=", ">="):
            raise _At(op.col, f"expected a comparison (= <> < > <= >=), found "
                              f"{op.text or 'the end'!r}")
        return _Compare(left, op.text, self.operand())

    def operand(self):
        tok = self.take()
        if tok.kind in ("str", "num"):
            return _Const(tok.value)
        if tok.kind == "kw" and tok.text in ("TRUE", "FALSE"):
            return _Const(tok.text == "TRUE")
        if tok.kind == "name":
            return _Ref(tok.text)
        raise _At(tok.col, f"expected a property or a value, found {tok.text or 'the end'!r}")


# -- routes --------------------------------------------------------------------------------------

_ROUTE = re.compile(
    r"^\s*FROM\s+(?P<source>\S+)(?:\s+WHERE\s+(?P<where>.+?))?\s+INTO\s+(?P<sink>.+?)\s*$",
    re.IGNORECASE | re.DOTALL,
)
_NAME = r"[A-Za-z0-9\-.%_*?!(),:=@$\']{1,128}"
_CHILD_SINK = re.compile(
    rf'^BrokeredEndpoint\(\s*"/devices/(?P<device>{_NAME})/messages/devicebound"\s*\)$'
)
_MODULE_SINK = re.compile(
    rf'^BrokeredEndpoint\(\s*"/modules/(?P<module>{_NAME})/inputs/(?P<input>[^"/#+]{{1,128}})"'
    r"\s*\)$"
)
SOURCES = ("/messages/*", "/messages/modules/*", "/messages/modules/<m>/outputs/<o>",
           "/messages/modules/<m>/outputs/*", "/messages/devices/<id>/*")


@dataclass(frozen=True)
class Route:
    name: str
    source: tuple[str, ...]  # a prefix of MessageView.source(), level by level; () = all
    condition: object | None
    sink: Sink
    priority: int
    ttl_secs: int | None
    text: str

    def matches(self, msg: MessageView) -> bool:
        if self.source and msg.source()[: len(self.source)] != self.source:
            return False
        if self.sink.device and self.sink.device == msg.device_id:
            return False  # a child's own messages never loop back to it
        return self.condition is None or self.condition.eval(msg) is True

    def takes_from_child(self, device_id: str) -> bool:
        """Whether this route may carry a child's telemetry (whatever its condition)."""
        return self.source == ("messages", "devices", device_id)[: len(self.source)]


def _parse_source(name: str, text: str, col: int) -> tuple[str, ...]:
    """As the IoT Edge hub reads FROM: a prefix, once a trailing `*` and `/` are trimmed,
    matched level by level (so `/messages/modules/a` never takes module `ab`)."""
    trimmed = text.removesuffix("*").rstrip("/")
    levels = tuple(trimmed.split("/")[1:]) if trimmed else ()
    shapes = (
        levels == (),
        levels == ("messages",),
        levels[:2] == ("messages", "devices") and len(levels) == 3,
        levels[:2] == ("messages", "modules") and len(levels) in (2, 3),
        levels[:2] == ("messages", "modules") and len(levels) in (4, 5)
        and levels[3] == "outputs",
    )
    if not text.startswith("/") or not any(shapes) or any(not v or "*" in v for v in levels):
        raise RouteError(f"route {name!r}: unknown source {text!r} (column {col + 1}); use "
                         + ", ".join(SOURCES))
    return levels


def parse_route(name: str, spec: object) -> Route:
    """One route, as a string or as {"route": ..., "priority": n, "timeToLiveSecs": s}."""
    priority, ttl = DEFAULT_PRIORITY, None
    if isinstance(spec, dict):
        unknown = set(spec) - {"route", "priority", "timeToLiveSecs"}
        if unknown:
            raise RouteError(f"route {name!r}: unknown field {sorted(unknown)[0]!r}")
        priority = spec.get("priority", DEFAULT_PRIORITY)
        if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9:
            raise RouteError(f"route {name!r}: priority must be an integer 0..9 (0 highest)")
        ttl = spec.get("timeToLiveSecs")
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int)
                                or not 1 <= ttl <= MAX_TTL_SECS):
            raise RouteError(f"route {name!r}: timeToLiveSecs must be an integer 1.."
                             f"{MAX_TTL_SECS}")
        spec = spec.get("route")
    if not isinstance(spec, str):
        raise RouteError(f"route {name!r}: expected a route string or an object with \"route\"")
    m = _ROUTE.match(spec)
    if m is None:
        raise RouteError(f"route {name!r}: expected FROM <source> [WHERE <condition>] INTO "
                         f"<sink>, got {spec!r}")
    source = _parse_source(name, m.group("source"), m.start("source"))
    condition = None
    if m.group("where"):
        try:
            parser = _Parser(_tokens(m.group("where"), m.start("where")))
            condition = parser.condition()
            parser.expect("end")
        except _At as exc:
            raise RouteError(f"route {name!r}: column {exc.col + 1}: {exc.reason}") from None
    return Route(name, source, condition,
                 _sink(name, m.group("sink").strip(), m.start("sink")), priority, ttl, spec)


def _sink(name: str, text: str, col: int) -> Sink:
    if text == UPSTREAM:
        return Sink()
    m = _CHILD_SINK.match(text)
    if m is not None:
        return Sink(m.group("device"))
    m = _MODULE_SINK.match(text)
    if m is not None:
        return Sink(module=m.group("module"), input=m.group("input"))
    raise RouteError(f"route {name!r}: column {col + 1}: unknown sink {text!r}; use $upstream, "
                     f'BrokeredEndpoint("/devices/<id>/messages/devicebound") or '
                     f'BrokeredEndpoint("/modules/<module>/inputs/<input>")')


@dataclass(frozen=True)
class RouteTable:
    routes: tuple[Route, ...] = ()

    def deliveries(self, msg: MessageView, default_ttl: int) -> list[Delivery]:
        """Each sink once. With no routes, everything goes upstream at the default priority.

        Several routes to one sink: the highest priority wins, and among routes of that
        priority the longest time to live (a route without one has the gateway's default)."""
        if not self.routes:
            return [Delivery(Sink(), DEFAULT_PRIORITY, default_ttl)]
        best: dict[Sink, Delivery] = {}
        for route in self.routes:
            if not route.matches(msg):
                continue
            new = Delivery(route.sink, route.priority, route.ttl_secs or default_ttl)
            old = best.get(route.sink)
            if old is None or _better(new, old):
                best[route.sink] = new
        return list(best.values())

    def allows_call(self, caller: str, target: str) -> bool:
        """A route from `caller` (or every child) into `target`'s queue also lets it call
        `target`'s methods: whoever may send it messages may talk to it."""
        return any(r.sink.device == target and r.takes_from_child(caller) for r in self.routes)

    def describe(self) -> dict[str, str]:
        return {r.name: r.text for r in self.routes}


def _better(new: Delivery, old: Delivery) -> bool:
    if new.priority != old.priority:
        return new.priority < old.priority
    return new.ttl_secs > old.ttl_secs


def parse_routes(doc: object) -> RouteTable:
    """The whole `routes` object of the desired twin; RouteError on the first bad route."""
    if not isinstance(doc, dict):
        raise RouteError("routes must be an object of route name to route")
    if len(doc) > MAX_ROUTES:
        raise RouteError(f"{len(doc)} routes; at most {MAX_ROUTES} are supported")
    return RouteTable(tuple(parse_route(str(name), spec) for name, spec in doc.items()))


def check_routes(doc: dict) -> None:
    """For SettingsSync: raises RouteError (a DataError) when the table would be refused."""
    parse_routes(doc)


def sinks(table: RouteTable) -> Iterable[str]:
    return sorted({str(r.sink) for r in table.routes})
