"""The targets snapshot: which tenants a fleet migration covers, fixed when it is rendered.

``tenantctl render migrate-job`` writes it (from the registry) into a ConfigMap, and
every pod of the Job reads the same file (``tenantctl migrate --targets FILE``), so
the ``K`` shards partition one list, whatever is onboarded or offboarded meanwhile.
It holds names only (tenant id, isolation mode): never a credential, never a host.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from tenant_infra.errors import InvalidInput
from tenant_infra.tenant import validate_product, validate_tenant_id

KIND: Final = "tenant-infra/migration-targets"
VERSION: Final = 1
ISOLATIONS: Final = ("SCHEMA", "DATABASE")
#: Service states with no schema to migrate, or no login to migrate it with.
WITHOUT_STORAGE: Final = frozenset({"retained", "purged", "deprovisioning"})
#: Its role is NOLOGIN until it is resumed, and resuming migrates it (the stack's
#: migration marker runs after the logins are back): left out, and counted.
SUSPENDED: Final = "suspended"


@dataclass(frozen=True, slots=True)
class SnapshotEntry:
    tenant: str
    isolation: str


@dataclass(frozen=True)
class Snapshot:
    product: str
    entries: tuple[SnapshotEntry, ...]
    #: Tenants whose service is suspended: not targets (not in the JSON), reported.
    suspended: tuple[str, ...] = ()

    def to_json(self) -> str:
        """Stable text (sorted, one tenant a line): a re-render with no change is no diff."""
        lines = ",\n".join(
            "    " + json.dumps({"tenant": e.tenant, "isolation": e.isolation})
            for e in sorted(self.entries, key=lambda e: e.tenant)
        )
        head = json.dumps({"kind": KIND, "version": VERSION, "product": self.product})[:-1]
        return f'{head}, "tenants": [\n{lines}\n]}}\n' if lines else f'{head}, "tenants": []}}\n'


def from_registry(rows: Iterable[Mapping[str, Any]], product: str) -> Snapshot:
    """The snapshot of ``product`` from :meth:`Registry.tenants` rows: each tenant with a
    service of the product that has storage and a login (not retained, purged, being
    removed or suspended). Suspended ones are listed apart: a suspended role cannot log
    in, so a shard would fail them every run, and ``tenantctl resume`` migrates them."""
    validate_product(product)
    entries: list[SnapshotEntry] = []
    suspended: list[str] = []
    for row in rows:
        for service in row.get("services") or []:
            state = service.get("state")
            if service.get("product") != product or state in WITHOUT_STORAGE:
                continue
            if state == SUSPENDED:
                suspended.append(str(row["tenant"]))
            else:
                entries.append(SnapshotEntry(str(row["tenant"]), str(service["isolation"])))
    return Snapshot(
        product, tuple(sorted(entries, key=lambda e: e.tenant)), tuple(sorted(suspended))
    )


def load_snapshot(path: Path, product: str) -> Snapshot:
    """Read and check a snapshot for ``product``; any flaw is invalid input naming the
    file and the field (exit 2, before any connection)."""
    where = str(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidInput(f"--targets {where}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"--targets {where}: not JSON ({exc})") from None
    if not isinstance(raw, dict) or raw.get("kind") != KIND or raw.get("version") != VERSION:
        raise InvalidInput(f"--targets {where}: not a {KIND} document of version {VERSION}")
    if raw.get("product") != product:
        raise InvalidInput(
            f"--targets {where} is a snapshot of product {raw.get('product')!r}, not {product!r}"
        )
    tenants = raw.get("tenants")
    if not isinstance(tenants, list):
        raise InvalidInput(f"--targets {where}: 'tenants' must be a list")
    entries: list[SnapshotEntry] = []
    seen: set[str] = set()
    for i, item in enumerate(tenants):
        if not isinstance(item, dict) or not isinstance(item.get("tenant"), str):
            raise InvalidInput(f"--targets {where}: tenants[{i}] has no 'tenant' string")
        try:
            tenant = validate_tenant_id(item["tenant"])
        except InvalidInput as exc:
            raise InvalidInput(f"--targets {where}: tenants[{i}]: {exc}") from None
        if item.get("isolation") not in ISOLATIONS:
            raise InvalidInput(
                f"--targets {where}: tenants[{i}].isolation must be SCHEMA or DATABASE"
            )
        if tenant in seen:
            raise InvalidInput(f"--targets {where}: tenant {tenant} is listed twice")
        seen.add(tenant)
        entries.append(SnapshotEntry(tenant, item["isolation"]))
    return Snapshot(product, tuple(entries))
