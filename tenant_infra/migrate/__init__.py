"""Schema migrations for tenant services: one tenant (engine), many (fleet).

Public API: :func:`migrate_fleet`, :class:`MigrationTarget`, :class:`TenantMigrator`.
"""

from tenant_infra.migrate.engine import TargetResult, TenantMigrator, render_sql
from tenant_infra.migrate.fleet import FleetReport, migrate_fleet
from tenant_infra.migrate.targets import MigrationTarget

__all__ = [
    "FleetReport",
    "MigrationTarget",
    "TargetResult",
    "TenantMigrator",
    "migrate_fleet",
    "render_sql",
]
