"""Direct methods called by modules over HTTPS, as the IoT Edge hub serves them on port 443.

A module calls a method of a child or of another module of its gateway with
`IoTHubModuleClient.invoke_method(params, device_id, module_id=None)`, which azure-iot-device
sends (unlike everything else a module does) over HTTPS to its gateway host:

    POST /twins/{deviceId}/methods?api-version=…
    POST /twins/{deviceId}/modules/{moduleId}/methods?api-version=…
    x-ms-edge-moduleId: {gatewayId}/{callerModuleId}
    Authorization: SharedAccessSignature sr={hub}/devices/{gw}/modules/{caller}&sig=…&se=…
    {"methodName": "…", "payload": …, "responseTimeoutInSeconds": 30, "connectTimeoutInSeconds": 0}

The token is the caller's own (signed through the workload API), checked as a CONNECT's would be,
offline. Who may call whom: any module of this gateway may call any child and any module of this
gateway, as in IoT Edge, where the edge hub lets a module call every device and module it serves;
a child's `methodCallers` governs only calls between children. The call itself goes through the
MethodRouter like every other, so it reaches a target connected on any head.

Answers, as the IoT Edge hub gives them: 200 `{"status": s, "payload": p}` with the target's
status and payload (a payload that is not JSON comes back as a string); 404 when the target is no
identity of this gateway, or is not connected and subscribed to methods; 504 when it does not
answer in time; 400 for a bad request, 401 for a missing or wrong token or caller header; the
errors as `{"message": …}`. `connectTimeoutInSeconds` is checked but not waited on: a target
that is not connected is answered 404 at once, as IoT Hub does with a connect timeout of 0.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Mapping

from gateway import identity
from gateway.child.auth import AuthResult, Child
from gateway.child.http_messages import HttpAnswer, HttpRequest, refused
from gateway.hub.methods import DEFAULT_TIMEOUT_SECS, MAX_TIMEOUT_SECS, MethodRouter

CALLER_HEADER = "x-ms-edge-moduleid"
MIN_RESPONSE_TIMEOUT_SECS = 5.0  # IoT Hub's bounds of responseTimeoutInSeconds
EXAMPLE = "/twins/{deviceId}[/modules/{moduleId}]/methods?api-version=2019-10-01"


class MethodEndpoint:
    """Answers the HTTPS method calls of modules; one object per gateway."""

    def __init__(
        self,
        methods: MethodRouter,
        gateway_id: str,
        identities: Callable[[], Mapping[str, Child]],
        check_token: Callable[[str, str], AuthResult],
    ) -> None:
        # `identities`: the children and modules in force; `check_token(identity, token)`
        # decides a SAS token as a CONNECT's password would be decided
        self._methods = methods
        self._gateway_id = gateway_id
        self._identities = identities
        self._check_token = check_token

    async def serve(self, request: HttpRequest) -> HttpAnswer:
        target = self._target(request.segments)
        if target is None:
            return refused(404, f"{request.method} {request.path[:200]}: not found; this port "
                                f"serves direct-method calls (POST {EXAMPLE}) and MQTT over "
                                "WebSocket")
        if request.method != "POST":
            why = f"{request.method}: a method call is a POST"
            return HttpAnswer(405, {"message": why}, why, headers=(("Allow", "POST"),))
        caller, refusal = self._caller(request)
        if refusal is not None:
            return refusal
        try:
            _check_api_version(request)
            method, payload, timeout = _call(request.body)
        except ValueError as exc:
            return refused(400, str(exc), caller)
        return await self._invoke(caller, target, method, payload, timeout)

    def _target(self, segments: tuple[str, ...]) -> str | None:
        """The identity a path names (a module's on this gateway only); None: not our path."""
        if len(segments) == 3 and segments[0] == "twins" and segments[2] == "methods":
            return segments[1] or None
        if len(segments) == 5 and segments[0] == "twins" and segments[2] == "modules" and \
                segments[4] == "methods" and segments[1] and segments[3]:
            return f"{segments[1]}/{segments[3]}"
        return None

    def _caller(self, request: HttpRequest) -> tuple[str, HttpAnswer | None]:
        """The calling module, proven by its token; or the 401 that says what is wrong."""
        caller = request.headers.get(CALLER_HEADER, "")
        device, _, module = caller.partition("/")
        if not module or "/" in module:
            return caller, refused(401, f"the {CALLER_HEADER} header must name the calling "
                                        f"module as {self._gateway_id}/{{moduleId}} (got "
                                        f"{caller[:140]!r})")
        if device != self._gateway_id:
            return caller, refused(401, f"{caller!r} is not a module of this gateway "
                                        f"({self._gateway_id}): only its own modules may call "
                                        "methods here", caller)
        token = request.headers.get("authorization", "")
        if not token:
            return caller, refused(401, "no Authorization header: send the calling module's "
                                        "SAS token (the SDK signs one through the workload API)",
                                   caller)
        result = self._check_token(caller, token)
        if not result.ok:
            return caller, refused(401, f"Authorization: {result.reason}", caller)
        return caller, None

    async def _invoke(self, caller: str, target: str, method: str, payload: bytes,
                      timeout: float) -> HttpAnswer:
        known = self._identities().get(target)
        if known is None or not known.enabled or (
                identity.is_module(target) and identity.device_of(target) != self._gateway_id):
            return refused(404, f"{target!r} is neither a child nor a module of this gateway "
                                f"(or it is disabled or stopped)", caller)
        done: asyncio.Future[HttpAnswer] = asyncio.get_running_loop().create_future()

        def answered(status: int, body: bytes) -> None:
            if not done.done():
                done.set_result(HttpAnswer(200, {"status": status, "payload": _json(body)},
                                           caller=caller))

        def failed(status: int, body: bytes) -> None:
            if not done.done():
                done.set_result(HttpAnswer(status, _json(body), caller=caller))

        self._methods.invoke(target, method, payload, timeout, answered, failed)
        return await done


def _check_api_version(request: HttpRequest) -> None:
    values = request.query.get("api-version", ())
    if len(values) != 1 or not values[0]:
        raise ValueError(f"give exactly one api-version query parameter: POST {EXAMPLE}")


def _call(body: bytes) -> tuple[str, bytes, float]:
    """The method's name, its payload as the target receives it, the response timeout."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"the body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError('the body must be a JSON object: {"methodName": ..., "payload": ...}')
    name = doc.get("methodName")
    if not isinstance(name, str) or not name or "/" in name or len(name) > 256:
        raise ValueError(f"methodName: expected a method name (1..256 characters, no '/'), "
                         f"got {json.dumps(name)[:80]}")
    timeout = _seconds(doc, "responseTimeoutInSeconds", DEFAULT_TIMEOUT_SECS,
                       MIN_RESPONSE_TIMEOUT_SECS)
    _seconds(doc, "connectTimeoutInSeconds", 0.0, 0.0)
    return name, json.dumps(doc.get("payload")).encode(), timeout


def _seconds(doc: dict, name: str, default: float, low: float) -> float:
    value = doc.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not low <= value <= MAX_TIMEOUT_SECS:
        raise ValueError(f"{name}: expected seconds from {low:g} to {MAX_TIMEOUT_SECS:g}, "
                         f"got {json.dumps(value)[:40]}")
    return float(value)


def _json(body: bytes) -> object:
    """A target's answer as JSON, or as text when it is not (IoT Hub passes JSON only; a child
    that answers something else still gets its answer through)."""
    if not body:
        return None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body.decode("utf-8", "replace")
