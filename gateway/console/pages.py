"""The console's pages: each GET renders what the cloud holds now, each POST is one Operator call.

A change goes through the same Operator method as the gatewayctl command that makes it, so the
rules and the words of a refusal are the CLI's; a refused change writes nothing and shows the
page again with the refusal above it and the operator's input kept in the form. Nothing is kept
between requests: a page is built from retained documents read when it is asked for.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from urllib.parse import parse_qs, quote

import jinja2

from gateway import identity
from gateway.child.http_messages import HttpRequest
from gateway.console.access import FormGuard
from gateway.console.views import fleet_cells, ledger_cells, twin_sides
from gateway.errors import GatewayError
from gateway.log import LOGGER, Event, event
from gateway.operator import (
    CloudUnavailable,
    Operator,
    OperatorError,
    parse_json,
    parse_properties,
)

STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".svg": "image/svg+xml"}
SECURITY_HEADERS = (
    ("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'; form-action 'self'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),  # "no-referrer" makes a form's Origin null
    ("Cache-Control", "no-store"),
)


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = SECURITY_HEADERS


class Refused(GatewayError):
    """A request the console itself turns down (a bad number in a field)."""


class ForeignForm(Refused):
    """A change whose form did not come from this console's pages (403)."""


class Pages:
    """The routes; `handle` runs in a worker thread, since the Operator waits on the broker."""

    def __init__(self, operator: Operator, gateway_host: str = "") -> None:
        self.op = operator
        self.gateway_host = gateway_host
        self.guard = FormGuard()
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("gateway.console", "templates"),
            autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
            lstrip_blocks=True)
        self.env.filters["q"] = lambda s: quote(str(s), safe="")
        self.env.filters["pretty"] = lambda d: json.dumps(d, indent=2, sort_keys=True)
        self.env.globals["csrf"] = self.guard.token
        self.env.globals["device_url"] = device_url

    def handle(self, req: HttpRequest) -> Answer:
        seg = [s for s in req.segments if s]
        try:
            if req.method == "GET" and seg[:1] == ["static"] and len(seg) == 2:
                return self._static(seg[1])
            if req.method == "GET" and not seg:
                return Answer(303, b"", headers=(("Location", "/fleet"), *SECURITY_HEADERS))
            route = self._route(req.method, seg)
            if route is None:
                return self._render("missing.html", 404, path=req.path)
            return route(req)
        except CloudUnavailable as exc:
            return self._render("missing.html", 503, path=req.path, error=exc.message)
        except Exception:  # a bug: the browser still gets an answer, the journal the trace
            LOGGER.exception("console: %s %s failed", req.method, req.path)
            return Answer(500, b"the console failed on this request; see its journal\n",
                          "text/plain; charset=utf-8")

    def _route(self, method: str, seg: list[str]) -> Callable[[HttpRequest], Answer] | None:
        """GET pages and POST actions by the path's segments."""
        if seg == ["fleet"] and method == "GET":
            return lambda req: self._render("fleet.html", 200, rows=fleet_cells(self.op.fleet()))
        if len(seg) >= 2 and seg[0] == "gateways":
            gw, rest = seg[1], seg[2:]
            pages = {("GET", ()): lambda req: self.gateway_page(gw),
                     ("GET", ("add",)): lambda req: self.add_page(gw),
                     ("POST", ("add",)): lambda req: self.add_children(gw, req),
                     ("POST", ("settings",)): lambda req: self.set_ttl(gw, req),
                     ("POST", ("deployment",)): lambda req: self.deploy(gw, req)}
            return pages.get((method, tuple(rest)))
        if len(seg) >= 2 and seg[0] == "devices":
            device, rest = _device_of(seg[1:])
            if device is None or len(rest) > 1:
                return None
            actions = {"desired": self.set_desired, "invoke": self.invoke, "send": self.send,
                       "children": self.change_child}
            if method == "GET" and not rest:
                return lambda req: self.device_page(device)
            if method == "POST" and rest and rest[0] in actions:
                return lambda req: actions[rest[0]](device, req)
        return None

    # -- pages -------------------------------------------------------------------------------

    def gateway_page(self, gw: str, status: int = 200, **extra: object) -> Answer:
        row = fleet_cells([self.op.gateway(gw)])[0]
        settings = self.op.settings(gw)
        deployment = self.op.deployment(gw)
        try:
            registry = self.op.children(gw)
        except CloudUnavailable:
            raise
        except OperatorError:
            registry = None  # no registry in the cloud yet: the page says so
        modules = dict((deployment.desired or {}).get("modules") or {})
        running = (deployment.reported or {}).get("modules") or {}
        reported = settings.reported or {}
        extra.setdefault("form", {})
        return self._render(
            "gateway.html", status, gw=gw, row=row, registry=registry, settings=settings,
            deployment=deployment, modules=sorted(modules.items()), running=running,
            routes=reported.get("routes") or (settings.desired or {}).get("routes") or {},
            backlog=(reported.get("backlog") or {}), ledger=ledger_cells(self.op.ledger(gw)),
            **extra)

    def add_page(self, gw: str, status: int = 200, **extra: object) -> Answer:
        extra.setdefault("form", {"gateway_host": self.gateway_host})
        return self._render("add.html", status, gw=gw, **extra)

    def device_page(self, device: str, status: int = 200, **extra: object) -> Answer:
        twin = self.op.twin(device)
        is_module = identity.is_module(device)
        parent = identity.device_of(device) if is_module else self.op.parent_of(device)
        child = None
        if parent and not is_module:
            child = next((c for c in self.op.children(parent).children if c.device_id == device),
                         None)
        extra.setdefault("form", {})
        return self._render(
            "device.html", status, device=device, is_module=is_module, parent=parent,
            child=child, rows=twin_sides(twin.desired, twin.reported), twin=twin, **extra)

    # -- actions: each one Operator call, refused with the CLI's words ------------------------

    def add_children(self, gw: str, req: HttpRequest) -> Answer:
        form = self._form(req)
        devices = form.get("devices", "").replace(",", " ").split()
        try:
            self._check(form, req)
            added = self.op.add_children(
                gw, devices, x509_thumbprint=form.get("x509_thumbprint") or None,
                gateway_host=form.get("gateway_host") or None)
        except GatewayError as exc:
            return self._refused(exc, f"children add {gw}", lambda **e: self.add_page(gw, **e),
                                 form)
        self._changed(f"children add {gw} {' '.join(devices)}")
        return self._render("added.html", 200, gw=gw, added=added)

    def set_ttl(self, gw: str, req: HttpRequest) -> Answer:
        form = self._form(req)
        try:
            self._check(form, req)
            ttl = _integer(form.get("ttl", ""), "--ttl")
            self.op.set_ttl(gw, ttl)
        except GatewayError as exc:
            return self._refused(exc, f"settings set {gw}", lambda **e: self.gateway_page(gw, **e),
                                 form)
        self._changed(f"settings set {gw} --ttl {ttl}")
        return self.gateway_page(gw, done=f"{gw}: time to live {ttl} s published")

    def deploy(self, gw: str, req: HttpRequest) -> Answer:
        form = self._form(req)
        try:
            self._check(form, req)
            doc = self.op.deploy(gw, form.get("document", "").encode(), "the deployment")
        except GatewayError as exc:
            return self._refused(exc, f"deploy {gw}", lambda **e: self.gateway_page(gw, **e),
                                 form)
        self._changed(f"deploy {gw} version {doc['version']}")
        return self.gateway_page(gw, done=f"{gw}: deployment version {doc['version']} published")

    def set_desired(self, device: str, req: HttpRequest) -> Answer:
        form = self._form(req)
        try:
            self._check(form, req)
            new = self.op.set_desired(device, parse_json(form.get("desired", ""), "--desired"))
        except GatewayError as exc:
            return self._device_refused(exc, f"twin set {device}", device, form)
        self._changed(f"twin set {device} version {new['$version']}")
        return self.device_page(device, done=f"desired version {new['$version']} published")

    def invoke(self, device: str, req: HttpRequest) -> Answer:
        form = self._form(req)
        try:
            self._check(form, req)
            payload = parse_json(form.get("payload") or "null", "--payload")
            timeout = _number(form.get("timeout") or "30", "--timeout")
            result = self.op.invoke(device, form.get("method", ""), payload, timeout)
        except GatewayError as exc:
            return self._device_refused(exc, f"invoke {device}", device, form)
        self._changed(f"invoke {device} {form.get('method')}: status {result.status}")
        return self.device_page(device, result=result, form=form)

    def send(self, device: str, req: HttpRequest) -> Answer:
        form = self._form(req)
        try:
            self._check(form, req)
            props = parse_properties(form.get("properties", "").split())
            ttl = _integer(form["ttl"], "--ttl") if form.get("ttl") else None
            self.op.send(device, form.get("message", ""), props, ttl)
        except GatewayError as exc:
            return self._device_refused(exc, f"send {device}", device, form)
        self._changed(f"send {device}")
        return self.device_page(device, done=f"message sent to {device}")

    def change_child(self, device: str, req: HttpRequest) -> Answer:
        form = self._form(req)
        action = form.get("action", "")
        parent = self.op.parent_of(device)
        try:
            self._check(form, req)
            if parent is None:
                raise Refused(f"{device} is not a child of any gateway")
            version = self.op.change_children(parent, [device], action)
        except GatewayError as exc:
            return self._device_refused(exc, f"children {action} {device}", device, form)
        self._changed(f"children {action} {parent} {device}")
        done = f"{action}: {device} (registry version {version})"
        if action == "remove":
            return self.gateway_page(parent, done=done)
        return self.device_page(device, done=done)

    # -- helpers -----------------------------------------------------------------------------

    def _check(self, form: dict[str, str], req: HttpRequest) -> None:
        why = self.guard.allows(form, dict(req.headers))
        if why:
            raise ForeignForm(why)

    def _form(self, req: HttpRequest) -> dict[str, str]:
        try:
            text = req.body.decode("utf-8")
        except UnicodeDecodeError:
            return {}
        return {k: v[-1] for k, v in parse_qs(text, keep_blank_values=True).items()}

    def _refused(self, exc: GatewayError, what: str, page: Callable[..., Answer],
                 form: dict[str, str]) -> Answer:
        if isinstance(exc, CloudUnavailable):
            raise exc
        event(Event.CONSOLE_REFUSED, f"console: {what} refused: {exc.message}",
              level=logging.WARNING)
        return page(status=403 if isinstance(exc, ForeignForm) else 400, error=exc.message,
                    form={k: v for k, v in form.items() if k != "csrf"})

    def _device_refused(self, exc: GatewayError, what: str, device: str,
                        form: dict[str, str]) -> Answer:
        return self._refused(exc, what, lambda **e: self.device_page(device, **e), form)

    def _changed(self, what: str) -> None:
        event(Event.CONSOLE_CHANGED, f"console: {what}")

    def _render(self, template: str, status: int, **context: object) -> Answer:
        context.setdefault("error", "")
        context.setdefault("done", "")
        body = self.env.get_template(template).render(**context).encode()
        return Answer(status, body)

    def _static(self, name: str) -> Answer:
        kind = next((t for ext, t in STATIC_TYPES.items() if name.endswith(ext)), None)
        path = resources.files("gateway.console") / "static" / name
        if kind is None or "/" in name or name.startswith(".") or not path.is_file():
            return self._render("missing.html", 404, path=f"/static/{name}")
        return Answer(200, path.read_bytes(), kind,
                      (("Cache-Control", "max-age=300"), ("X-Content-Type-Options", "nosniff")))


def device_url(device: str) -> str:
    """/devices/sensor-1 or /devices/edge-1/modules/filter, each part escaped."""
    gw, module = identity.device_of(device), identity.module_of(device)
    if module:
        return f"/devices/{quote(gw, safe='')}/modules/{quote(module, safe='')}"
    return f"/devices/{quote(gw, safe='')}"


def _device_of(seg: list[str]) -> tuple[str | None, list[str]]:
    if len(seg) >= 3 and seg[1] == "modules":
        return identity.module_identity(seg[0], seg[2]), seg[3:]
    return seg[0], seg[1:]


def _integer(text: str, what: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise Refused(f"{what}: expected a whole number, got {text!r}") from None


def _number(text: str, what: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise Refused(f"{what}: expected a number of seconds, got {text!r}") from None
