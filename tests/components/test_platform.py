"""The platform stack under mocks: hardened shared databases and the credentials mount."""

from __future__ import annotations

from pathlib import Path

import pytest

from tenant_infra.config import PlatformConfig, read_stack_file
from tenant_infra.errors import InvalidInput
from tenant_infra.plan import Plan, plan_platform

DEV = Path(__file__).resolve().parents[2] / "platform" / "Pulumi.dev.yaml"


def dev_plan(**overrides: object) -> Plan:
    values = read_stack_file(DEV) | {f"tenant-infra:{k}": v for k, v in overrides.items()}
    return plan_platform(PlatformConfig.from_pulumi_values(values), "dev")


def test_each_product_gets_a_shared_database_closed_to_public() -> None:
    plan = dev_plan()
    databases = {r.inputs["name"] for r in plan.of_type("postgresql:index/database:Database")}
    assert databases == {"ledger", "tracer", "reporter", "tenant_registry"}
    grants = [
        g for g in plan.of_type("postgresql:index/grant:Grant") if g.inputs["role"] == "public"
    ]
    revoked = {
        (g.inputs["database"], g.inputs["objectType"], g.inputs.get("schema")) for g in grants
    }
    for db in databases:
        assert (db, "database", None) in revoked
        assert (db, "schema", "public") in revoked
    for grant in grants:
        assert grant.inputs["role"] == "public" and grant.inputs["privileges"] == []
        assert grant.deleted_with is not None


def test_credentials_mount_is_kv_v2() -> None:
    (mount,) = dev_plan().of_type("vault:index/mount:Mount")
    assert (mount.inputs["path"], mount.inputs["type"], mount.inputs["options"]) == (
        "tenants",
        "kv",
        {"version": "2"},
    )


def test_the_auth_method_is_mounted_once_where_tenant_stacks_declare_their_roles() -> None:
    (approle,) = dev_plan().of_type("vault:index/authBackend:AuthBackend")
    assert (approle.inputs["path"], approle.inputs["type"]) == ("approle", "approle")
    platform = read_stack_file(DEV)["tenant-infra:platform"]
    platform["vault"]["auth"] = {
        "method": "kubernetes",
        "mount": "k8s-tenants",
        "serviceAccounts": {"default": {"namespace": "{product}", "serviceAccount": "{tenant}"}},
    }
    (kubernetes,) = dev_plan(platform=platform).of_type("vault:index/authBackend:AuthBackend")
    assert (kubernetes.inputs["path"], kubernetes.inputs["type"]) == ("k8s-tenants", "kubernetes")


def test_protect_follows_config() -> None:
    assert not any(r.protect for r in dev_plan().resources)
    protected = {r.type for r in dev_plan(protectData=True).resources if r.protect}
    assert protected == {
        "postgresql:index/database:Database",
        "postgresql:index/schema:Schema",  # the registry's
        "vault:index/mount:Mount",
        "vault:index/authBackend:AuthBackend",  # disabling it deletes every tenant's roles
    }


@pytest.mark.parametrize(
    ("products", "rule"), [(["ledger", "ledger"], "listed twice"), (["wallet"], "unknown product")]
)
def test_bad_product_lists_are_refused(products: list[str], rule: str) -> None:
    values = read_stack_file(DEV) | {"tenant-infra:products": products}
    with pytest.raises(InvalidInput, match=rule):
        PlatformConfig.from_pulumi_values(values)


def test_maintenance_databases_are_closed_only_where_the_platform_controls_the_server() -> None:
    def revoked(plan: Plan) -> set[str]:
        return {
            g.inputs["database"]
            for g in plan.of_type("postgresql:index/grant:Grant")
            if g.inputs["role"] == "public" and g.inputs["objectType"] == "database"
        }

    assert {"postgres", "template1"}.isdisjoint(revoked(dev_plan()))
    platform = read_stack_file(DEV)["tenant-infra:platform"]
    platform["postgres"]["default"]["closeMaintenanceDatabases"] = True
    assert {"postgres", "template1"} <= revoked(dev_plan(platform=platform))


def test_applied_no_role_can_reach_the_maintenance_databases_any_more(tmp_path: Path) -> None:
    """Issue 16, row 8, at the source: applied for real, then PUBLIC's CONNECT put back
    (the provider's revoke outlives a destroy, as upstream)."""
    import os
    import secrets

    import psycopg

    from tenant_infra.catalog import Product, Store, load_catalog
    from tests.support.replay import ReplayBackend

    admin = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "postgres"}
    token = secrets.token_hex(3)
    product, probe = f"mnt{token}", f"probe_{token}"
    load_catalog().products[product] = Product(name=product, stores=frozenset({Store.POSTGRESQL}))
    values = read_stack_file(DEV)
    values.pop("tenant-infra:registry", None)
    values["tenant-infra:products"] = [product]
    values["tenant-infra:protectData"] = False
    values["tenant-infra:platform"]["postgres"]["default"]["closeMaintenanceDatabases"] = True
    config = PlatformConfig.from_pulumi_values(values)
    backend = ReplayBackend(tmp_path / "state", root=tmp_path, environ=dict(os.environ))
    try:
        backend.up_platform(config, "test", lambda _event: None)
        with psycopg.connect(**admin, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {probe} LOGIN")
        for database in ("postgres", "template1"):
            with pytest.raises(psycopg.OperationalError, match="permission denied"):
                psycopg.connect(**(admin | {"user": probe, "dbname": database})).close()
        backend.destroy_platform("test", lambda _event: None)
    finally:
        load_catalog().products.pop(product, None)
        with psycopg.connect(**admin, autocommit=True) as conn:
            conn.execute("GRANT CONNECT ON DATABASE postgres, template1 TO PUBLIC")
            conn.execute(f"DROP DATABASE IF EXISTS {product} WITH (FORCE)")
            conn.execute(f"DROP ROLE IF EXISTS {probe}")
