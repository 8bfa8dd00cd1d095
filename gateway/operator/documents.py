"""The other documents an operator writes: desired twins, gateway settings, deployments.

Each is a read-modify-write of a retained document, computed here without touching the broker and
checked with the gateway's own rules, so that what is published is what the gateway will accept.
"""

from __future__ import annotations

import json

from gateway.hub.settings import MAX_TTL_SECS
from gateway.modules.deployment import DeploymentError, parse_deployment
from gateway.operator.errors import OperatorError, OperatorUsageError


def merge_desired(doc: dict | None, patch: dict) -> dict:
    """The operator's desired patch on the full document: null deletes, $version goes up."""
    from gateway.hub.twins import merge_patch  # the same merge rules as the gateway's

    new = dict(doc or {"$version": 0})
    version = int(new.pop("$version", 0))
    patch = {k: v for k, v in patch.items() if k != "$version"}
    merge_patch(new, patch)
    new["$version"] = version + 1
    return new


def set_ttl(doc: dict | None, ttl: int) -> dict:
    if isinstance(ttl, bool) or not 1 <= ttl <= MAX_TTL_SECS:
        raise OperatorUsageError(f"--ttl: expected 1..{MAX_TTL_SECS} seconds, got {ttl}")
    new = dict(doc or {"schemaVersion": "1.0", "routes": {}})
    new.setdefault("schemaVersion", "1.0")
    section = dict(new.get("storeAndForwardConfiguration") or {})
    section["timeToLiveSecs"] = ttl
    new["storeAndForwardConfiguration"] = section
    new["$version"] = int(new.get("$version", 0)) + 1
    return new


def deployment_document(text: bytes, source: str, current: dict | None) -> dict:
    """The document to publish: FILE's, with the next version if it has none, checked by the
    gateway's own parser. A version not newer than the one in the cloud is refused, since the
    gateway would ignore it."""
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DeploymentError(f"{source}: not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise DeploymentError(f"{source}: expected a JSON object")
    in_cloud = (current or {}).get("version")
    in_cloud = in_cloud if type(in_cloud) is int else -1
    if "version" not in doc:
        doc = {**doc, "version": in_cloud + 1}
    try:
        parse_deployment(json.dumps(doc).encode())
    except DeploymentError as exc:
        raise DeploymentError(f"{source}: refused, nothing published: {exc.message}") from None
    if doc["version"] <= in_cloud:
        raise OperatorError(f"{source}: version {doc['version']} is not newer than version "
                            f"{in_cloud} in the cloud, so the gateway would ignore it; raise it "
                            f"or leave version out (the next one is then used)")
    return doc
