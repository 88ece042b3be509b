"""Lifecycle events in the seed platform's contract, and their delivery to Redis.

The contract is the seed platform client's (``LerianStudio/lib-commons``, package
``commons/tenant-manager``; see ``shared/notes/seed-platform-client-contract.md``):

- Redis Pub/Sub, a plain ``PUBLISH`` on channel ``tenant-events:{env}:`` (trailing
  colon included); products subscribe to exactly that channel;
- one JSON envelope: ``event_id``, ``event_type``, ``timestamp`` (RFC 3339),
  ``tenant_id`` (a UUID dashless and lowercase, else the slug), ``tenant_slug``,
  ``environment``, ``payload``; events about one service carry
  ``payload.service_name``, or products ignore them;
- the types and payload fields of :data:`EVENT_TYPES`. No event carries a secret:
  credentials are fetched from the connections endpoint, never pushed.

Events are written to the registry's outbox in the transaction of the transition
they announce, and published after commit by :func:`drain` (again by the next
operation if Redis was unreachable). Pub/Sub keeps nothing for absent subscribers:
consumers deduplicate on ``event_id`` and re-fetch connections to cover gaps.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from tenant_infra.tenant import canonical_id

#: Each type and the payload fields it carries (the client's ``event/`` package).
EVENT_TYPES: Final[Mapping[str, tuple[str, ...]]] = {
    "tenant.created": (),
    "tenant.activated": (),
    "tenant.updated": (),
    "tenant.suspended": (),
    "tenant.deleted": (),
    "tenant.service.associated": (
        "service_name",
        "isolation_mode",
        "modules",
        "secret_paths",
        "messaging_config",
        "connection_settings",
    ),
    "tenant.service.disassociated": ("service_name", "preserve_data"),
    "tenant.service.suspended": ("service_name", "previous_status"),
    "tenant.service.purged": ("service_name",),
    "tenant.service.reactivated": (
        "service_name",
        "previous_status",
        "re_provisioned",
        "secret_paths",
        "connection_settings",
    ),
    "tenant.credentials.rotated": ("service_name", "credential_type", "new_secret_path"),
    "tenant.connections.updated": (
        "service_name",
        "module",
        "max_open_conns",
        "max_idle_conns",
        "statement_timeout",
    ),
    "tenant.cache.invalidate": ("service_name", "reason"),
}


def channel(environment: str) -> str:
    """The one channel of an environment: ``tenant-events:{env}:``, colon included."""
    return f"tenant-events:{environment}:"


def tenant_id(tenant: str) -> str:
    """The id events carry: a UUID dashless and lowercase (clients from v6.3 on),
    anything else as it is."""
    return canonical_id(tenant)


@dataclass(frozen=True)
class Event:
    """One event, before it has an id and a time (the outbox gives it both)."""

    event_type: str
    tenant: str
    payload: Mapping[str, Any]

    def __post_init__(self) -> None:
        fields = EVENT_TYPES.get(self.event_type)
        if fields is None:
            raise ValueError(f"unknown event type {self.event_type!r}")
        if set(self.payload) != set(fields):
            raise ValueError(f"{self.event_type} carries exactly {sorted(fields)}")

    def envelope(self, environment: str, event_id: str, at: datetime) -> dict[str, Any]:
        return {
            "event_id": event_id,
            "event_type": self.event_type,
            "timestamp": at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "tenant_id": tenant_id(self.tenant),
            "tenant_slug": self.tenant,
            "environment": environment,
            "payload": dict(self.payload),
        }


def encode(envelope: Mapping[str, Any]) -> str:
    return json.dumps(envelope, separators=(",", ":"), sort_keys=True)


def new_event_id() -> str:
    return str(uuid.uuid4())


def now() -> datetime:
    return datetime.now(UTC)
