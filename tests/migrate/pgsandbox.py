"""Throwaway tenants on the real PostgreSQL: uniquely named, dropped afterwards.

Mirrors what provisioning does for a tenant service: a LOGIN role ``<product>_<key>``
with a password and no special attributes, owning schema ``tenant_<key>`` in the
product's shared database (SCHEMA) or in its dedicated database (DATABASE), CONNECT
on that database, and no CREATE on ``public`` for PUBLIC.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tenant_infra.migrate.connection import parse_dsn, with_database
from tenant_infra.migrate.targets import (
    MigrationTarget,
    database_mode_target,
    schema_mode_target,
)
from tenant_infra.tenant import TenantNames, pg_shared_database, quote_ident

ADMIN: dict[str, str] = parse_dsn(
    os.environ.get("TENANT_INFRA_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
)


def admin_exec(sql: str, db: str | None = None) -> list[tuple[object, ...]]:
    params = with_database(ADMIN, db)
    with psycopg.connect(**params, autocommit=True) as conn:  # type: ignore[arg-type]
        cur = conn.execute(sql)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def pg_available() -> bool:
    try:
        admin_exec("SELECT 1")
    except psycopg.Error:
        return False
    return True


@dataclass
class Service:
    tenant: str
    product: str
    database: str
    schema: str
    role: str
    password: str = field(repr=False)
    target: MigrationTarget

    def params(self) -> dict[str, str]:
        """The tenant role's own credentials (post-deploy hook style)."""
        return {**with_database(ADMIN, self.database), "user": self.role, "password": self.password}

    @property
    def isolation(self) -> str:
        return "SCHEMA" if self.database == pg_shared_database(self.product) else "DATABASE"

    @property
    def own_target(self) -> MigrationTarget:
        """The target carrying the tenant role's own credentials, as --product builds it."""
        return replace(self.target, params=self.params())

    def document(self) -> dict[str, Any]:
        """The service's connections document (README "The connections document")."""
        return {
            "tenant": self.tenant,
            "product": self.product,
            "isolation": self.isolation,
            "postgresql": {
                "host": ADMIN.get("host", "127.0.0.1"),
                "port": int(ADMIN.get("port", "5432")),
                "database": self.database,
                "schema": self.schema,
                "user": self.role,
                "password": self.password,
                "sslmode": "disable",
            },
        }

    def as_tenant(self, sql: str) -> list[tuple[object, ...]]:
        """Run SQL as the tenant role itself (autocommit)."""
        with psycopg.connect(**self.params(), autocommit=True) as conn:  # type: ignore[arg-type]
            cur = conn.execute(sql)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def sql(self, sql: str) -> list[tuple[object, ...]]:
        return admin_exec(sql, self.database)


def write_connections(path: Path, services: Iterable[Service]) -> Path:
    """A connections file (JSON list of documents), readable by its owner only."""
    path.write_text(json.dumps([s.document() for s in services]))
    path.chmod(0o600)
    return path


class PgSandbox:
    def __init__(self) -> None:
        self.databases: list[str] = []
        self.roles: list[str] = []

    @staticmethod
    def new_product() -> str:
        return "p" + secrets.token_hex(4)

    @staticmethod
    def new_tenant(prefix: str = "acme") -> str:
        return f"{prefix}-{secrets.token_hex(3)}"

    def database(self, name: str) -> str:
        if name not in self.databases:
            admin_exec(f"CREATE DATABASE {quote_ident(name)}")
            self.databases.append(name)
            admin_exec(f"REVOKE ALL ON DATABASE {quote_ident(name)} FROM PUBLIC")
            admin_exec("REVOKE CREATE ON SCHEMA public FROM PUBLIC", name)
        return name

    def _role_and_schema(self, tenant: str, product: str, database: str) -> Service:
        names = TenantNames(tenant).service(product)
        password = secrets.token_urlsafe(16)
        admin_exec(
            f"CREATE ROLE {quote_ident(names.pg_role)} LOGIN PASSWORD '{password}'"
            " NOSUPERUSER NOCREATEDB NOCREATEROLE"
        )
        self.roles.append(names.pg_role)
        admin_exec(
            f"GRANT CONNECT ON DATABASE {quote_ident(database)} TO {quote_ident(names.pg_role)}"
        )
        admin_exec(
            f"CREATE SCHEMA {quote_ident(names.pg_schema)} AUTHORIZATION {quote_ident(names.pg_role)}",
            database,
        )
        return Service(
            tenant,
            product,
            database,
            names.pg_schema,
            names.pg_role,
            password,
            MigrationTarget(names.pg_schema),
        )

    def schema_tenant(self, product: str, tenant: str | None = None) -> Service:
        tenant = tenant or self.new_tenant()
        db = self.database(pg_shared_database(product))
        svc = self._role_and_schema(tenant, product, db)
        svc.target = schema_mode_target(tenant, product)
        return svc

    def database_tenant(self, product: str, tenant: str | None = None) -> Service:
        tenant = tenant or self.new_tenant()
        db = self.database(TenantNames(tenant).service(product).pg_dedicated_database)
        svc = self._role_and_schema(tenant, product, db)
        svc.target = database_mode_target(tenant, product)
        return svc

    def cleanup(self) -> None:
        for db in reversed(self.databases):
            admin_exec(f"DROP DATABASE IF EXISTS {quote_ident(db)} WITH (FORCE)")
        for role in reversed(self.roles):
            admin_exec(f"DROP ROLE IF EXISTS {quote_ident(role)}")


def sandbox() -> Iterator[PgSandbox]:
    if not pg_available():
        pytest.skip("PostgreSQL not reachable (set TENANT_INFRA_TEST_PG)")
    box = PgSandbox()
    try:
        yield box
    finally:
        box.cleanup()


def tables(svc: Service, schema: str | None = None) -> set[str]:
    rows = svc.sql(f"SELECT tablename FROM pg_tables WHERE schemaname = '{schema or svc.schema}'")
    return {str(r[0]) for r in rows}


def version(svc: Service) -> str | None:
    rows = svc.sql(f"SELECT to_regclass('{svc.schema}.alembic_version') IS NOT NULL")
    if not rows[0][0]:
        return None
    got = svc.sql(f"SELECT version_num FROM {quote_ident(svc.schema)}.alembic_version")
    return ",".join(sorted(str(r[0]) for r in got)) or None
