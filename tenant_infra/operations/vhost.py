"""A tenant vhost's definitions, saved and re-applied through the management API.

Only the topology is kept: queues, exchanges, bindings and policies. Users and
permissions come from the stack (a restore reprovisions them), and the vhost's
``parameters`` may hold shovel or federation URIs with credentials, so they are
never saved. Messages are not definitions: a restore does not bring them back.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import requests

from tenant_infra.config import TenantConfig
from tenant_infra.credentials import PlatformCredentials
from tenant_infra.errors import BackendUnavailable, InvalidInput

KEPT = ("queues", "exchanges", "bindings", "policies")
#: What a restore declares again: the stack owns the vhost's policies (a tenant
#: cannot make one), so a saved copy of them is never put back over the stack's.
APPLIED = ("queues", "exchanges", "bindings")


def _api(config: TenantConfig, environ: Mapping[str, str]) -> tuple[str, tuple[str, str]]:
    rabbit = config.platform.rabbitmq
    if rabbit is None:
        raise InvalidInput("the platform declares no RabbitMQ")
    return rabbit.management_url, (
        rabbit.admin_user,
        PlatformCredentials(environ).rabbitmq_password_value(),
    )


def _request(method: str, url: str, auth: tuple[str, str], **kwargs: Any) -> requests.Response:
    try:
        response = requests.request(method, url, auth=auth, timeout=30, **kwargs)
    except requests.RequestException as exc:
        raise BackendUnavailable(f"RabbitMQ management API: {type(exc).__name__}") from None
    return response


def fetch(config: TenantConfig, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The tenant vhost's topology, as ``/api/definitions/<vhost>`` gives it."""
    base, auth = _api(config, os.environ if environ is None else environ)
    vhost = quote(config.names.vhost, safe="")
    response = _request("GET", f"{base}/api/definitions/{vhost}", auth)
    if response.status_code == 404:
        raise InvalidInput(f"vhost {config.names.vhost!r} does not exist")
    if not response.ok:
        raise BackendUnavailable(f"RabbitMQ management API: HTTP {response.status_code}")
    found = response.json()
    return {key: found.get(key, []) for key in KEPT}


def exists(config: TenantConfig, environ: Mapping[str, str] | None = None) -> bool:
    base, auth = _api(config, os.environ if environ is None else environ)
    response = _request("GET", f"{base}/api/vhosts/{quote(config.names.vhost, safe='')}", auth)
    if response.status_code not in (200, 404):
        raise BackendUnavailable(f"RabbitMQ management API: HTTP {response.status_code}")
    return response.status_code == 200


def apply(
    config: TenantConfig, definitions: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> None:
    """Declare the saved topology in the tenant vhost (what exists stays; nothing is
    deleted): idempotent, so a killed restore applies it again."""
    base, auth = _api(config, os.environ if environ is None else environ)
    vhost = quote(config.names.vhost, safe="")
    body = {key: _in_vhost(definitions.get(key, [])) for key in APPLIED}
    response = _request("POST", f"{base}/api/definitions/{vhost}", auth, json=body)
    if not response.ok:
        raise BackendUnavailable(
            f"RabbitMQ management API refused the definitions: HTTP {response.status_code}"
        )


def _in_vhost(items: Any) -> list[dict[str, Any]]:
    """Each item without a vhost of its own: the import's vhost is the tenant's,
    whatever the file said."""
    if not isinstance(items, list):
        raise InvalidInput("the saved RabbitMQ definitions are not lists")
    pinned = []
    for item in items:
        if not isinstance(item, dict):
            raise InvalidInput("the saved RabbitMQ definitions are not objects")
        pinned.append({k: v for k, v in item.items() if k != "vhost"})
    return pinned


def counts(definitions: Mapping[str, Any], kinds: tuple[str, ...] = KEPT) -> dict[str, int]:
    return {key: len(definitions.get(key, [])) for key in kinds}
