"""The registry the platform program declares: under mocks, then applied for real
through the replay backend, where its least privilege is checked on PostgreSQL."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tenant_infra.catalog import Product, Store, load_catalog
from tenant_infra.config import PlatformConfig, read_stack_file
from tenant_infra.plan import plan_platform
from tenant_infra.registry import Registry
from tests.support.replay import ReplayBackend

DEV = Path(__file__).resolve().parents[2] / "platform" / "Pulumi.dev.yaml"
ADMIN = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "postgres"}


def platform(products: tuple[str, ...] = ("ledger",), **registry: str) -> PlatformConfig:
    values = read_stack_file(DEV) | {
        "tenant-infra:products": list(products),
        "tenant-infra:registry": registry,
    }
    return PlatformConfig.from_pulumi_values(values)


def test_the_registry_is_declared_with_an_owner_a_writer_and_a_reader_only() -> None:
    plan = plan_platform(platform(), "dev")
    roles = {r.inputs["name"]: r.inputs for r in plan.of_type("postgresql:index/role:Role")}
    assert set(roles) == {"tenant_registry_owner", "tenant_control", "tenant_registry_reader"}
    for role in roles.values():
        assert role["login"] is True and role["password"] == "[secret]"
        assert not any(role[k] for k in ("superuser", "createDatabase", "createRole"))
    (database,) = [
        r for r in plan.of_type("postgresql:index/database:Database")
        if r.inputs["name"] == "tenant_registry"
    ]
    assert database.inputs["owner"] == "tenant_registry_owner"
    (schema,) = plan.of_type("postgresql:index/schema:Schema")
    assert (schema.inputs["name"], schema.inputs["owner"]) == ("registry", "tenant_registry_owner")
    grants = {
        (g.inputs["role"], g.inputs["objectType"], tuple(g.inputs["privileges"]))
        for g in plan.of_type("postgresql:index/grant:Grant")
        if g.inputs["database"] == "tenant_registry"
    }
    assert grants == {
        ("public", "database", ()),
        ("public", "schema", ()),
        ("tenant_control", "database", ("CONNECT",)),
        ("tenant_control", "schema", ("USAGE",)),
        ("tenant_registry_reader", "database", ("CONNECT",)),
        ("tenant_registry_reader", "schema", ("USAGE",)),
    }
    defaults = {
        (d.inputs["owner"], d.inputs["role"], tuple(d.inputs["privileges"]))
        for d in plan.of_type("postgresql:index/defaultPrivileges:DefaultPrivileges")
    }
    assert defaults == {
        ("tenant_registry_owner", "tenant_control", ("SELECT", "INSERT", "UPDATE", "DELETE")),
        ("tenant_registry_owner", "tenant_registry_reader", ("SELECT",)),
    }
    assert plan.outputs["registryDatabase"] == "tenant_registry"


@pytest.fixture
def names(tmp_path: Path) -> Iterator[dict[str, str]]:
    token = secrets.token_hex(3)
    product = f"reg{token}"
    load_catalog().products[product] = Product(name=product, stores=frozenset({Store.POSTGRESQL}))
    try:
        yield {
            "product": product,
            "database": f"registry_{token}",
            "owner": f"owner_{token}",
            "user": f"control_{token}",
            "reader": f"reader_{token}",
        }
    finally:
        load_catalog().products.pop(product, None)
        with psycopg.connect(**ADMIN, autocommit=True) as conn:
            for database in (product, f"registry_{token}"):
                conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
            for role in (f"control_{token}", f"reader_{token}", f"owner_{token}"):
                conn.execute(f"DROP ROLE IF EXISTS {role}")


def test_applied_each_role_can_do_its_part_and_nothing_else(
    tmp_path: Path, names: dict[str, str]
) -> None:
    env = {
        **os.environ,
        "TENANT_INFRA_REGISTRY_OWNER_PASSWORD": "owner-pw",
        "TENANT_INFRA_REGISTRY_PASSWORD": "writer-pw",
        "TENANT_INFRA_REGISTRY_READER_PASSWORD": "reader-pw",
    }
    backend = ReplayBackend(tmp_path / "state", root=tmp_path, environ=env)
    config = platform(
        (names["product"],), database=names["database"], owner=names["owner"],
        user=names["user"], reader=names["reader"],
    )
    config = config.model_copy(update={"protect_data": False})
    backend.up_platform(config, "test", lambda _event: None)
    assert config.registry is not None
    registry = Registry(config.registry, config.platform.postgres_for("default")).open()
    assert registry.revision() == "0004"  # migrated by the owner
    target = ADMIN | {"dbname": names["database"]}
    with psycopg.connect(**(target | {"user": names["user"]}), autocommit=True) as conn:
        (superuser,) = conn.execute(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        ).fetchone()  # type: ignore[misc]
        assert superuser is False
        conn.execute(
            "INSERT INTO registry.tenants (id, canonical, tier, state)"
            " VALUES ('acme', 'acme', 'standard', 'active')"
        )
        conn.execute(
            "INSERT INTO registry.history (tenant_id, operation, new_state, actor)"
            " VALUES ('acme', 'onboard', 'active', 'test')"
        )
        conn.execute(  # API keys are made by the control plane
            "INSERT INTO registry.api_keys (id, scope, product, hash, created_by)"
            " VALUES ('00000000000000aa', 'product', 'ledger', sha256('k'), 'test')"
        )
        conn.execute(  # day-2 operations record their steps
            "INSERT INTO registry.operations (tenant_id, product, kind, state, actor)"
            " VALUES ('acme', 'ledger', 'promote', 'open', 'test')"
        )
        conn.execute("UPDATE registry.operations SET steps_done = '{provision}'")
        for statement in (  # the writer writes rows; it cannot lift the history's guard
            "ALTER TABLE registry.history DISABLE TRIGGER history_append_only",
            "DROP TRIGGER history_append_only ON registry.history",
            "DELETE FROM registry.history",
            "TRUNCATE registry.history",
            "CREATE TABLE registry.mine (id int)",
        ):
            with pytest.raises(psycopg.Error):
                conn.execute(statement)
    with psycopg.connect(**(target | {"user": names["reader"]}), autocommit=True) as conn:
        assert conn.execute("SELECT id FROM registry.tenants").fetchall() == [("acme",)]
        assert conn.execute("SELECT id FROM registry.api_keys").fetchall() == [("00000000000000aa",)]
        for statement in (
            "UPDATE registry.api_keys SET revoked_at = NULL",
            "UPDATE registry.operations SET state = 'done'",
            "INSERT INTO registry.tenants (id, tier, state) VALUES ('x', 'standard', 'active')",
            "UPDATE registry.services SET state = 'ready'",
            "DELETE FROM registry.outbox",
            "CREATE TABLE registry.mine (id int)",
            "CREATE TABLE public.mine (id int)",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    backend.destroy_platform("test", lambda _event: None)
    with psycopg.connect(**ADMIN) as conn:
        left = conn.execute(
            "SELECT datname FROM pg_database WHERE datname = %s", (names["database"],)
        ).fetchall()
        roles = conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname IN (%s, %s, %s)",
            (names["owner"], names["user"], names["reader"]),
        ).fetchall()
    assert left == [] and roles == []
