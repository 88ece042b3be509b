"""Reusable Pulumi ``ComponentResource``s for tenant services.

- :mod:`.postgres` — the service's login role and its DATABASE- or SCHEMA-mode store
- :mod:`.broker`   — the tenant's RabbitMQ vhost and each service's scoped user
- :mod:`.mongodb`  — each service's user scoped to the tenant's MongoDB database
- :mod:`.vault`    — each service's credentials secret and read-only policy
- :mod:`.tenant_service` — one product service of a tenant, composed of the above
- :mod:`.tenant`   — a tenant: its shared vhost and its services
- :mod:`.platform` — what every tenant relies on, applied once per platform
"""

import base64
import binascii
from typing import Any

#: Every component's type token starts with this package name.
PACKAGE = "tenant-infra"


def stale_provider(olds: dict[str, Any]) -> bool:
    """A dynamic resource whose state still holds a provider pickled when these modules
    were the top-level package ``components`` (before 0.2): its diff reports a change,
    so the update stores the provider under its new module name (a delete or refresh
    could not unpickle the old one)."""
    blob = olds.get("__provider")
    if not isinstance(blob, str):
        return False
    try:
        raw = base64.b64decode(blob, validate=False)
    except (binascii.Error, ValueError):
        return False
    return b"components." in raw.replace(b"tenant_infra.components.", b"")
