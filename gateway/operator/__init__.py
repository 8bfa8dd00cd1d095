"""The operator's side of the cloud contract: the Python API that gatewayctl's cloud commands use.

IoT Edge operators manage children with `az iot hub device-identity ...`; here the cloud is an
MQTT broker, so the same jobs are retained documents and MQTT 5 request/response on the topics of
docs/cloud-contract.md. The names exported here are the public, stable API; `Operator` is the
one to script against (docs/operator-api.md), the functions below it are the document edits it is
made of.
"""

from gateway.operator.api import (
    Child,
    MethodResult,
    NewChild,
    Operator,
    Registry,
    Twin,
    parse_json,
    parse_properties,
)
from gateway.operator.documents import deployment_document, merge_desired, set_ttl
from gateway.operator.errors import CloudUnavailable, OperatorError, OperatorUsageError
from gateway.operator.fleet import GatewayRow, fleet_status, gateway_row, worst_first
from gateway.operator.ledger import Accounts, LossAccounts
from gateway.operator.ledger_watch import LedgerWatch
from gateway.operator.registry import (
    add_children,
    change_children,
    check_new_children,
    connection_string,
    empty_registry,
    new_sas_key,
)
from gateway.operator.session import CloudSession, CloudTarget

__all__ = [
    "Child", "MethodResult", "NewChild", "Operator", "Registry", "Twin", "parse_json",
    "parse_properties",
    "Accounts", "CloudSession", "CloudTarget", "CloudUnavailable", "GatewayRow",
    "LedgerWatch", "LossAccounts", "OperatorError", "OperatorUsageError", "fleet_status",
    "gateway_row", "worst_first",
    "add_children", "change_children", "check_new_children", "connection_string",
    "deployment_document", "empty_registry", "merge_desired", "new_sas_key", "set_ttl",
]
