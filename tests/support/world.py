"""A project folder, a replay backend and a control plane: the world every lifecycle
test on the real servers runs in, with what those tests read back from the servers.

Each test's tenants have unique ids and are purged at the end (``World.close``);
``leftovers`` lists what a tenant still has on the servers.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import psycopg
import pytest
import requests
from psycopg import sql

from tenant_infra import commands
from tenant_infra.verify.command import verify_tenant
from tenant_infra.verify.connections import AdminAccess, RabbitmqAdmin
from tenant_infra.workspace import Workspace
from tests.support.registry import ControlPlane, control_plane
from tests.support.replay import ReplayBackend

ROOT = Path(__file__).resolve().parents[2]
DEV_STACK = ROOT / "stacks" / "Pulumi.dev.yaml"
ADMIN = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "postgres"}
MANAGEMENT = "http://127.0.0.1:15672"
GUEST = ("guest", "guest")
MODES = ["SCHEMA", "DATABASE"]


def admin_sql(query: str | sql.Composable, database: str = "postgres", params: Any = None) -> list[Any]:
    with psycopg.connect(**(ADMIN | {"dbname": database}), autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def management(path: str) -> requests.Response:
    return requests.get(f"{MANAGEMENT}/api/{path}", auth=GUEST, timeout=15)


def _roles(key: str) -> list[str]:
    """The tenant's logins on the server, every generation (``<product>_<key>__g<n>``)."""
    rows = admin_sql(
        "SELECT rolname FROM pg_roles WHERE rolname LIKE %s OR rolname LIKE %s",
        params=(f"%\\_{key}", f"%\\_{key}\\_\\_g_"),
    )
    return [r for (r,) in rows]


def leftovers(tenant: str) -> list[str]:
    """Everything on the servers named after ``tenant``: roles, databases, schemas, vhost, users."""
    key = tenant.replace("-", "_")
    found = [f"role {r}" for r in _roles(key)]
    found += [f"database {d}" for (d,) in admin_sql("SELECT datname FROM pg_database WHERE datname LIKE %s", params=(f"%\\_{key}",))]
    for (database,) in admin_sql("SELECT datname FROM pg_database WHERE datname IN ('ledger', 'tracer')"):
        found += [f"schema {database}.{s}" for (s,) in admin_sql("SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)", database, (_schemas(key),))]
    if management(f"vhosts/{tenant}").status_code == 200:
        found.append(f"vhost {tenant}")
    found += [f"user {u['name']}" for u in management("users").json() if u["name"].endswith(f"_{key}")]
    return found


def _schemas(key: str) -> list[str]:
    """Every schema named after the tenant: live, retired, restoring and kept."""
    live = f"tenant_{key}"
    return [live, f"retired_{live}", f"restoring_{live}", f"pre_restore_{live}"]


def _platform_logins(key: str) -> list[str]:
    """The short-lived logins a promotion or a restore of the tenant's services left."""
    from tenant_infra.operations.restore import restorer_name
    from tenant_infra.pgdata.copy import _copier_name

    names = [f(login) for login in _roles(key) for f in (restorer_name, _copier_name)]
    return [r for (r,) in admin_sql("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", params=(names,))]


def force_cleanup(tenant: str) -> None:
    """What a failed test may leave, dropped with admin rights (never hides a leak: the
    tests assert ``leftovers`` themselves before this runs)."""
    key = tenant.replace("-", "_")
    for (database,) in admin_sql("SELECT datname FROM pg_database WHERE datname LIKE %s", params=(f"%\\_{key}",)):
        admin_sql(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
    for (database,) in admin_sql("SELECT datname FROM pg_database WHERE datname IN ('ledger', 'tracer')"):
        for schema in _schemas(key):
            admin_sql(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)), database)
    for role in _roles(key) + _platform_logins(key):
        for (database,) in admin_sql("SELECT datname FROM pg_database WHERE datname IN ('postgres', 'template1', 'ledger', 'tracer')"):
            admin_sql(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(role)), database)
        admin_sql(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
    requests.delete(f"{MANAGEMENT}/api/vhosts/{tenant}", auth=GUEST, timeout=15)
    for user in management("users").json():
        if user["name"].endswith(f"_{key}"):
            requests.delete(f"{MANAGEMENT}/api/users/{user['name']}", auth=GUEST, timeout=15)


class World:
    """A project folder, a replay backend and the tenants a test creates."""

    def __init__(self, root: Path, plane: ControlPlane) -> None:
        self.root = root
        self.plane = plane
        (root / "stacks").mkdir()
        shutil.copy(DEV_STACK, root / "stacks" / "Pulumi.dev.yaml")
        self.backend = ReplayBackend(
            root / "state", root=root, environ={**os.environ, **plane.environ}
        )
        self.tenants: list[str] = []

    def new_tenant(self, label: str) -> str:
        tenant = f"lr{secrets.token_hex(3)}-{label}"
        self.tenants.append(tenant)
        return tenant

    def verify(self, tenant: str, product: str) -> None:
        """The post-deploy gate, on the documents the replay recorded for Vault."""
        report = verify_tenant(
            tenant,
            services=[product],
            connections=[self.backend.document(tenant, product)],
            stack_config=Workspace(self.root).stack_file(tenant),
            admin=AdminAccess(rabbitmq=RabbitmqAdmin(MANAGEMENT, *GUEST)),
        )
        failures = [f"{c.name}: {c.reason}" for s in report.services for c in s.failed()]
        assert not failures, failures

    def registry(self) -> Any:
        """The control plane's registry, as the verbs reach it."""
        return commands.registry(Workspace(self.root), self.backend)

    def kwargs(self) -> dict[str, Any]:
        return {"backend": self.backend, "root": self.root}

    def close(self) -> None:
        """Offboard every tenant the test made, then drop whatever a failure left."""
        for tenant in self.tenants:
            try:
                if Workspace(self.root).read_config(tenant) is not None:
                    commands.offboard(tenant, purge=True, **self.kwargs())
            finally:
                force_cleanup(tenant)

    def onboard(self, tenant: str, *services: str) -> Any:
        status = commands.onboard(tenant, services, DEV_STACK, verify=self.verify, **self.kwargs())
        assert status.ok, status.to_json()
        return status

    def pg(self, tenant: str, product: str, database: str | None = None) -> dict[str, Any]:
        doc = self.backend.document(tenant, product)["postgresql"]
        return {
            "host": doc["host"],
            "port": doc["port"],
            "dbname": database or doc["database"],
            "user": doc["user"],
            "password": doc["password"],
            "connect_timeout": 5,
        }

    def amqp(self, tenant: str, product: str) -> pika.BlockingConnection:
        doc = self.backend.document(tenant, product)["rabbitmq"]
        credentials = pika.PlainCredentials(doc["user"], doc["password"])
        return pika.BlockingConnection(
            pika.ConnectionParameters("127.0.0.1", 5672, doc["vhost"], credentials, connection_attempts=1)
        )


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    # The operator's process holds the platform's admin credentials (suspend uses them).
    monkeypatch.setenv("TENANT_INFRA_RABBITMQ_PASSWORD", GUEST[1])
    with control_plane(tmp_path) as plane:
        world = World(tmp_path, plane)
        try:
            yield world
        finally:
            world.close()


def snapshot(world: World, tenant: str, product: str) -> dict[str, Any]:
    """A service's objects as the catalogs hold them: tables and ACLs, role settings and
    the content of every table (checksums)."""
    doc = world.backend.document(tenant, product)["postgresql"]
    schema, database = doc["schema"], doc["database"]
    tables = admin_sql(
        "SELECT c.relname, c.relkind, c.relacl::text, pg_get_userbyid(c.relowner) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s ORDER BY 1",
        database,
        (schema,),
    )
    checksums = {
        name: admin_sql(
            sql.SQL("SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM {} t").format(
                sql.Identifier(schema, name)
            ),
            database,
        )[0][0]
        for name, kind, _acl, _owner in tables
        if kind == "r"
    }
    role = admin_sql(
        "SELECT oid, rolcanlogin, rolconnlimit, rolconfig FROM pg_roles WHERE rolname = %s",
        params=(doc["user"],),
    )
    namespace = admin_sql("SELECT nspacl::text, pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = %s", database, (schema,))
    return {"tables": tables, "checksums": checksums, "role": role, "schema": namespace}


def write_rows(world: World, tenant: str, product: str) -> None:
    """Tenant data, written by the service's own role into a table its migrations made."""
    doc = world.backend.document(tenant, product)["postgresql"]
    with psycopg.connect(**world.pg(tenant, product), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, note text)").format(sql.Identifier(doc["schema"], "probe"))
        )
        conn.execute(
            sql.SQL("INSERT INTO {} SELECT g, md5(g::text) FROM generate_series(1, 50) g").format(
                sql.Identifier(doc["schema"], "probe")
            )
        )


def count_rows(world: World, tenant: str, product: str, document: dict[str, Any] | None = None) -> int:
    """Rows of the probe table, read as the admin (``document``: the service's, kept
    from before its credentials were deleted)."""
    doc = (document or world.backend.document(tenant, product))["postgresql"]
    return int(admin_sql(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(doc["schema"], "probe")), doc["database"])[0][0])


def killed(world: World, module: str, *args: str) -> None:
    """``python -m <module> ROOT ARGS…`` (one of ``tests.support.killed_*``): an
    operation in a process of its own, which must end SIGKILLed at its point."""
    import signal
    import subprocess
    import sys

    child = subprocess.run(
        [sys.executable, "-m", module, str(world.root), *args],
        cwd=ROOT,
        env={**os.environ, **world.plane.environ},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]


def login_refused(params: dict[str, Any]) -> bool:
    try:
        with psycopg.connect(**params):
            return False
    except psycopg.OperationalError:
        return True


def amqp_refused(world: World, tenant: str, product: str) -> bool:
    try:
        world.amqp(tenant, product).close()
        return False
    except pika.exceptions.AMQPError:
        return True


