"""What to migrate: one :class:`MigrationTarget` per tenant service, and how to find them.

Names come from :mod:`tenant_infra.tenant` only. In both isolation modes a tenant's
tables live in schema ``tenant_<key>``; the mode only decides the database
(``<product>`` shared, or ``<product>_<key>`` dedicated).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from sqlalchemy import Connection, text

from tenant_infra.errors import InvalidInput
from tenant_infra.migrate.connection import ConnParams, connect, with_database
from tenant_infra.migrate.snapshot import SnapshotEntry
from tenant_infra.tenant import (
    TenantNames,
    pg_shared_database,
    tenant_from_database,
    tenant_from_schema,
    validate_product,
)


@dataclass(frozen=True, slots=True)
class MigrationTarget:
    """One schema to bring to head. Small and picklable: workers receive these by the
    thousand.

    ``database`` ``None`` means the database of the connection parameters. ``role`` is
    the tenant role that owns the schema: a target with a role is only ever migrated
    by a connection *as that role* (its own ``params``), never by another user,
    because tenant-owned code (triggers, defaults, index expressions) runs with the
    connecting user's privileges and ``SET ROLE`` is undone by ``RESET ROLE``.
    ``role`` ``None``: generic mode, run with the migrator's connection parameters.

    ``params``: the libpq keywords of this target's own connection (``--product``:
    the tenant role's, password included; kept out of ``repr``; reaches a worker
    only inside the pickled target). ``unavailable``: why the target cannot be
    attempted (no credentials, not on the server); it is then reported as failed
    without connecting, and ``permanent`` says whether a retry would find the same
    (no document, no schema) or may not (Vault unreachable).
    """

    schema: str
    database: str | None = None
    tenant: str | None = None
    product: str | None = None
    role: str | None = None
    params: Mapping[str, str] | None = field(default=None, repr=False, compare=False)
    unavailable: str | None = field(default=None, compare=False)
    permanent: bool = field(default=False, compare=False)

    @property
    def label(self) -> str:
        """The tenant, or where a generic-mode target is (``--databases-like`` targets
        are all schema ``public``: their database tells them apart)."""
        return self.tenant or self.where

    @property
    def where(self) -> str:
        return f"{self.database}.{self.schema}" if self.database else self.schema


def service_target(tenant: str, product: str, database: str) -> MigrationTarget:
    """The target of one tenant service, all names derived in ``tenant.py``."""
    names = TenantNames(tenant).service(product)
    return MigrationTarget(
        schema=names.pg_schema,
        database=database,
        tenant=tenant,
        product=product,
        role=names.pg_role,
    )


def schema_mode_target(tenant: str, product: str) -> MigrationTarget:
    return service_target(tenant, product, pg_shared_database(product))


def database_mode_target(tenant: str, product: str) -> MigrationTarget:
    names = TenantNames(tenant).service(product)
    return service_target(tenant, product, names.pg_dedicated_database)


def _like_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# Discovery connects as the admin: plain catalog reads, schema-qualified, that call no
# function a tenant could own.


def _schemas_like(conn: Connection, pattern: str) -> list[str]:
    rows = conn.execute(
        text(
            "SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname LIKE :p"
            " AND nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'"
            " ORDER BY nspname"
        ),
        {"p": pattern},
    )
    return [r[0] for r in rows]


def _databases_like(conn: Connection, pattern: str) -> list[str]:
    rows = conn.execute(
        text(
            "SELECT datname FROM pg_catalog.pg_database WHERE datname LIKE :p"
            " AND datallowconn AND NOT datistemplate ORDER BY datname"
        ),
        {"p": pattern},
    )
    return [r[0] for r in rows]


def connects_as_superuser(admin: ConnParams) -> bool:
    """Whether the discovery connection is a superuser's (it needs only CONNECT)."""
    with connect(admin) as conn:
        row = conn.execute(
            text("SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user")
        ).first()
    return bool(row and row[0])


def _on_server(admin: ConnParams, product: str) -> list[MigrationTarget]:
    """Every tenant service of ``product`` the admin connection's server holds."""
    out: list[MigrationTarget] = []
    with connect(admin) as conn:
        databases = _databases_like(conn, _like_escape(product + "_") + "%")
        shared = pg_shared_database(product)
        has_shared = bool(_databases_like(conn, _like_escape(shared)))
    if has_shared:
        with connect(with_database(admin, shared)) as conn:
            for schema in _schemas_like(conn, _like_escape("tenant_") + "%"):
                tenant = tenant_from_schema(schema)
                if tenant:
                    out.append(schema_mode_target(tenant, product))
    for database in databases:
        tenant = tenant_from_database(product, database)
        if tenant:
            out.append(database_mode_target(tenant, product))
    return out


def discover_product(
    admin: ConnParams, product: str, tenants: Sequence[str] = ()
) -> list[MigrationTarget]:
    """Every tenant of ``product`` on the admin connection's server, both modes.

    Discovery only: the targets hold names, not credentials (see
    :func:`tenant_infra.migrate.credentials.attach_credentials`).

    SCHEMA tenants: schemas ``tenant_%`` in the shared database ``<product>``.
    DATABASE tenants: databases ``<product>_%`` (each holds schema ``tenant_<key>``).
    Names that do not reverse to a valid tenant id are ignored. ``tenants`` restricts
    the result; naming a tenant that has neither is invalid input (a typo must not
    look like success).
    """
    validate_product(product)
    wanted = set(tenants)
    out = [t for t in _on_server(admin, product) if not wanted or t.tenant in wanted]
    missing = wanted - {t.tenant for t in out}
    if missing:
        raise InvalidInput(
            f"no {product} schema or database found for tenant(s): {', '.join(sorted(missing))}"
        )
    return out


def without_login(
    admin: ConnParams, product: str, targets: Sequence[MigrationTarget]
) -> tuple[list[MigrationTarget], list[str]]:
    """The targets to run, and the tenants left out because none of their logins may log
    in: the platform made every one ``NOLOGIN`` (a suspended or retained service; a
    tenant's role cannot change its own ``LOGIN``). Migrating them could only fail, on
    every run; resuming a suspended service migrates it. One catalog read, as the
    discovery connection, before any credential is looked up."""
    if not any(t.tenant and not t.unavailable for t in targets):
        return list(targets), []
    query = text(
        "SELECT rolname FROM pg_catalog.pg_roles WHERE rolcanlogin AND rolname LIKE :prefix"
    )
    with connect(admin) as conn:
        may_log_in = {
            str(name)
            for name in conn.execute(query, {"prefix": _like_escape(product + "_") + "%"}).scalars()
        }
    keep: list[MigrationTarget] = []
    resting: list[str] = []
    for target in targets:
        asked = bool(target.tenant) and not target.unavailable
        if asked and may_log_in.isdisjoint(
            TenantNames(target.tenant or "").service(product).pg_logins()
        ):
            resting.append(target.tenant or "")
        else:
            keep.append(target)
    return keep, resting


def snapshot_targets(
    admin: ConnParams, product: str, entries: Sequence[SnapshotEntry]
) -> list[MigrationTarget]:
    """The targets of a snapshot's ``entries``, where the snapshot says each one lives.

    The server is asked what it holds (as :func:`discover_product` does) only to tell
    the snapshot's tenants it lacks: each of those is a target that fails alone, named,
    and that a retry would not find either (``permanent``). Found in the other
    isolation mode, the snapshot is stale (promoted since): that fails too, saying so.
    """
    validate_product(product)
    if not entries:
        return []
    found = {(t.tenant, t.database): t for t in _on_server(admin, product)}
    modes = {t.tenant: t for t in found.values()}
    out: list[MigrationTarget] = []
    for entry in entries:
        target = (
            schema_mode_target(entry.tenant, product)
            if entry.isolation == "SCHEMA"
            else database_mode_target(entry.tenant, product)
        )
        if (target.tenant, target.database) in found:
            out.append(target)
            continue
        elsewhere = modes.get(entry.tenant)
        why = (
            f"found in database {elsewhere.database} instead: the snapshot is stale, render "
            "the Job again"
            if elsewhere is not None
            else "render the Job again if it was offboarded since"
        )
        out.append(
            replace(
                target,
                unavailable=f"tenant {entry.tenant} of the targets snapshot ({entry.isolation} "
                f"mode) not found on the server: no schema {target.where}; {why}",
                permanent=True,
            )
        )
    return out


def discover_schemas_like(params: ConnParams, pattern: str) -> list[MigrationTarget]:
    """Generic mode: every schema of the connection's database matching a LIKE pattern."""
    with connect(params) as conn:
        return [MigrationTarget(schema=s) for s in _schemas_like(conn, pattern)]


def discover_databases_like(
    params: ConnParams, pattern: str, schema: str = "public"
) -> list[MigrationTarget]:
    """Generic mode: every database on the server matching a LIKE pattern, one schema each."""
    with connect(params) as conn:
        return [MigrationTarget(schema=schema, database=d) for d in _databases_like(conn, pattern)]


def sort_for_reuse(targets: Iterable[MigrationTarget]) -> list[MigrationTarget]:
    """Group by database so a worker's single connection is reused across tenants."""
    return sorted(targets, key=lambda t: (t.database or "", t.schema))
