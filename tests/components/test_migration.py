"""components.migration: the dynamic provider called directly against real PostgreSQL,
connecting as the tenant role as it does after ``pulumi up``."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dill
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "migrate"))
from pgsandbox import ADMIN, PgSandbox, Service, sandbox, tables, version

from tenant_infra.catalog import load_catalog
from tenant_infra.components.migration import ServiceMigrationProvider, head_revision
from tenant_infra.migrate.targets import MigrationTarget


@pytest.fixture
def pg() -> Iterator[PgSandbox]:
    yield from sandbox()


def props(svc: Service, head: str = "0003", **over: Any) -> dict[str, Any]:
    # The product must be one with migrations in the catalog; names come from the sandbox.
    return {
        "tenant": svc.tenant,
        "product": "ledger",
        "isolation": "SCHEMA",
        "host": ADMIN.get("host", "127.0.0.1"),
        "port": int(ADMIN.get("port", "5432")),
        "database": svc.database,
        "schema": svc.schema,
        "user": svc.role,
        "password": svc.password,
        "sslmode": "disable",
        "head": head,
        **over,
    }


def test_head_revision_from_catalog() -> None:
    assert head_revision("ledger") == "0003"
    assert head_revision("tracer") == "0003"
    assert load_catalog().product("reporter").script_location is None
    assert head_revision("reporter") is None


def test_create_diff_update_as_tenant_role(pg: PgSandbox) -> None:
    svc = pg.schema_tenant(PgSandbox.new_product())
    provider = ServiceMigrationProvider()
    created = provider.create(props(svc, head="0002"))
    assert created.outs is not None
    assert created.outs["revision"] == "0002" and "password" not in created.outs
    assert version(svc) == "0002"
    owners = svc.sql(f"SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = '{svc.schema}'")
    assert owners == [(svc.role,)]

    same = provider.diff(created.id, created.outs, props(svc, head="0002"))
    assert same.changes is False
    newer = provider.diff(created.id, created.outs, props(svc, head="0003"))
    assert newer.changes is True and newer.replaces == []

    updated = provider.update(created.id, created.outs, props(svc, head="0003"))
    assert updated.outs is not None and updated.outs["revision"] == "0003"
    assert version(svc) == "0003" and "balances" in tables(svc)


def test_a_suspended_service_waits_at_its_revision_until_resumed(pg: PgSandbox) -> None:
    svc = pg.schema_tenant(PgSandbox.new_product())
    provider = ServiceMigrationProvider()
    created = provider.create(props(svc, head="0002"))
    resting = props(svc, head="0003", suspended=True)
    assert provider.diff(created.id, created.outs, resting).changes is False
    # A new provider while suspended: recorded at its revision, never connected
    # (with a wrong password, a connection attempt would fail).
    kept = provider.update(created.id, created.outs, resting | {"password": "wrong"})
    assert kept.outs is not None and kept.outs["revision"] == "0002"
    assert version(svc) == "0002"
    resumed = props(svc, head="0003", suspended=False)
    assert provider.diff(created.id, created.outs, resumed).changes
    updated = provider.update(created.id, created.outs, resumed)
    assert updated.outs is not None and updated.outs["revision"] == "0003"
    assert version(svc) == "0003"


def test_created_or_moved_while_suspended_it_migrates_on_resume(pg: PgSandbox) -> None:
    """A first revision released while the service rests, or its storage moved: nothing
    connects then, and no revision is recorded, so resuming migrates it there."""
    svc = pg.schema_tenant(PgSandbox.new_product())
    provider = ServiceMigrationProvider()
    created = provider.create(props(svc, head="0002", suspended=True, port=1))
    assert created.outs is not None and created.outs["revision"] == ""
    moved = props(svc, head="0002", suspended=True)  # the port moves back: a new location
    assert provider.diff(created.id, created.outs, moved).changes
    recorded = provider.update(created.id, created.outs, moved)
    assert recorded.outs is not None and recorded.outs["revision"] == ""
    assert version(svc) is None
    resumed = props(svc, head="0002")
    assert provider.diff(created.id, recorded.outs, resumed).changes
    updated = provider.update(created.id, recorded.outs, resumed)
    assert updated.outs is not None and updated.outs["revision"] == "0002"
    assert version(svc) == "0002"


def test_failure_names_tenant_product_revision_and_keeps_previous(pg: PgSandbox) -> None:
    svc = pg.database_tenant(PgSandbox.new_product())
    provider = ServiceMigrationProvider()
    created = provider.create(props(svc, head="0002", isolation="DATABASE"))
    svc.sql(f"CREATE TABLE {svc.schema}.balances (id int)")
    with pytest.raises(RuntimeError) as exc:
        provider.update(created.id, created.outs or {}, props(svc, head="0003"))
    message = str(exc.value)
    assert svc.tenant in message and "ledger" in message and "0003" in message
    assert "still at 0002" in message and svc.password not in message
    assert version(svc) == "0002"


def test_unreachable_server_fails_without_echoing_password(pg: PgSandbox) -> None:
    svc = pg.schema_tenant(PgSandbox.new_product())
    with pytest.raises(RuntimeError) as exc:
        ServiceMigrationProvider().create(props(svc, port=1))
    assert "cannot connect" in str(exc.value) and svc.tenant in str(exc.value)
    assert svc.password not in str(exc.value)
    assert version(svc) is None


def test_provider_pickles_small_and_without_secrets() -> None:
    blob = dill.dumps(ServiceMigrationProvider(), recurse=True)
    assert len(blob) < 2000
    assert dill.loads(blob).diff("x", {"revision": "1"}, {"head": "1"}).changes is False
    assert isinstance(MigrationTarget("s"), MigrationTarget)


# --------------------------------------------------------------------------- MongoDB


def test_mongo_migration_runs_as_the_service_user_for_products_with_versions(plan_for) -> None:
    from tenant_infra.components.migration import mongo_head

    plan = plan_for("globex", ["ledger:SCHEMA", "tracer:SCHEMA"])
    (migration,) = plan.of_type(
        "pulumi-python:dynamic/tenant:MongoMigration"
    )  # tracer has no MongoDB
    inputs = migration.inputs
    assert (inputs["database"], inputs["user"], inputs["auth_source"]) == (
        "globex",
        "ledger_globex__a",
        "globex",
    )
    assert (
        inputs["head"] == mongo_head("ledger") and inputs["srv"] is False and inputs["tls"] is True
    )
    user = plan.by_name("globex-ledger-mongodb-user-a")
    assert migration.secret_fingerprints["password"] == user.secret_fingerprints["password"]
    assert "globex-ledger-mongodb-user-a" in migration.depends_on


def test_mongo_client_options_use_srv_on_atlas() -> None:
    from tenant_infra.components.migration import mongo_client_options

    base = {
        "user": "ledger_acme",
        "password": "p",
        "auth_source": "admin",
        "port": 27017,
        "tls": True,
    }
    atlas = mongo_client_options(base | {"host": "c.abcde.mongodb.net", "srv": True})
    assert atlas["host"] == "mongodb+srv://c.abcde.mongodb.net/" and "port" not in atlas
    plain = mongo_client_options(base | {"host": "mongo.internal", "srv": False, "tls": False})
    assert (plain["host"], plain["port"], plain["tls"]) == ("mongo.internal", 27017, False)


def test_mongo_diff_moves_when_head_advances() -> None:
    from tenant_infra.components.migration import MongoMigrationProvider

    provider = MongoMigrationProvider()
    old = {
        "tenant": "acme",
        "product": "ledger",
        "host": "m",
        "port": 27017,
        "database": "acme",
        "user": "u",
        "version": 1,
    }
    assert provider.diff("id", old, old | {"head": 1}).changes is False
    assert provider.diff("id", old, old | {"head": 2}).changes is True
    assert provider.diff("id", old, old | {"head": 1, "product": "tracer"}).replaces == ["product"]


def test_mongo_failure_names_tenant_product_version_without_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A real client against a port where no server listens (fails within 200 ms)."""
    import tenant_infra.components.migration as migration

    original = migration.mongo_client_options
    monkeypatch.setattr(
        migration, "mongo_client_options", lambda p: original(p) | {"serverSelectionTimeoutMS": 200}
    )
    props = {
        "tenant": "acme",
        "product": "ledger",
        "host": "127.0.0.1",
        "port": 1,
        "srv": False,
        "tls": False,
        "database": "acme",
        "user": "ledger_acme",
        "password": "hunter2-secret",
        "auth_source": "acme",
        "head": 2,
    }
    with pytest.raises(RuntimeError) as info:
        migration.MongoMigrationProvider().create(props)
    message = str(info.value)
    assert "tenant acme product ledger to version 2" in message and "hunter2" not in message


def test_a_provider_pickled_under_the_old_package_name_is_rewritten() -> None:
    """State from before 0.2 names ``components.migration``: the diff asks for an update,
    which stores the provider under ``tenant_infra.components``; a current one does not."""
    import base64

    import dill

    from tenant_infra.components import stale_provider
    from tenant_infra.components.migration import ServiceMigrationProvider

    current = base64.b64encode(dill.dumps(ServiceMigrationProvider)).decode()
    old = base64.b64encode(
        dill.dumps(ServiceMigrationProvider).replace(b"tenant_infra.components.", b"components.")
    ).decode()
    assert not stale_provider({"__provider": current})
    assert stale_provider({"__provider": old})
    props = {
        "host": "h",
        "port": 5432,
        "database": "d",
        "schema": "s",
        "user": "u",
        "sslmode": "prefer",
        "revision": "0003",
        "head": "0003",
        "tenant": "t",
        "product": "ledger",
    }
    assert (
        not ServiceMigrationProvider()
        .diff("t/ledger", {**props, "__provider": current}, props)
        .changes
    )
    assert ServiceMigrationProvider().diff("t/ledger", {**props, "__provider": old}, props).changes
