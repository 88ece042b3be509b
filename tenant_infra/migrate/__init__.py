"""Schema migrations for tenant services: one tenant (engine), in a sandbox
(sandbox, worker, executors), many (fleet).

Public API: :func:`migrate_fleet`, :class:`MigrationTarget`, :class:`TenantMigrator`.
Imported lazily: ``tenantctl list`` must not pay for Alembic and SQLAlchemy.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "FleetReport": "tenant_infra.migrate.fleet",
    "migrate_fleet": "tenant_infra.migrate.fleet",
    "MigrationTarget": "tenant_infra.migrate.targets",
    "TargetResult": "tenant_infra.migrate.engine",
    "TenantMigrator": "tenant_infra.migrate.engine",
    "render_sql": "tenant_infra.migrate.engine",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(name)
    return getattr(importlib.import_module(_WHERE[name]), name)
