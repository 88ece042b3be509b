"""TenantService under mocks: what a service declares follows the catalog, nothing more."""

from __future__ import annotations

import pytest

from tenant_infra.catalog import Store, load_catalog
from tenant_infra.components.migration import head_revision

STORE_TYPES = {
    Store.POSTGRESQL: "postgresql:index/role:Role",
    Store.RABBITMQ: "rabbitmq:index/user:User",
    Store.MONGODB: "pulumi-python:dynamic/tenant:MongoUser",
    Store.VAULT: "vault:kv/secretV2:SecretV2",
}
MIGRATION = "pulumi-python:dynamic/tenant:ServiceMigration"


@pytest.mark.parametrize("product", sorted(load_catalog().products))
@pytest.mark.parametrize("mode", ["DATABASE", "SCHEMA"])
def test_a_service_declares_exactly_the_stores_its_product_needs(
    plan_for, product: str, mode: str
) -> None:
    plan = plan_for("globex", [f"{product}:{mode}"])
    needs = load_catalog().product(product).stores
    for store, type_ in STORE_TYPES.items():
        found = [r for r in plan.of_type(type_) if plan.service_of(r) == f"globex-{product}"]
        # PostgreSQL: the owner and its one login.
        expected = (2 if store is Store.POSTGRESQL else 1) if store in needs else 0
        assert len(found) == expected, (store, found)
    migrations = plan.of_type(MIGRATION)
    assert len(migrations) == (1 if load_catalog().product(product).migrations else 0)


@pytest.mark.parametrize(
    ("mode", "database"), [("DATABASE", "ledger_globex"), ("SCHEMA", "ledger")]
)
def test_migrations_run_as_the_service_role_after_its_storage(
    plan_for, mode: str, database: str
) -> None:
    plan = plan_for("globex", [f"ledger:{mode}"])
    migration = plan.by_name("globex-ledger-migration")
    inputs = migration.inputs
    assert (inputs["user"], inputs["database"], inputs["schema"]) == (
        "ledger_globex__0a",
        database,
        "tenant_globex",
    )
    assert inputs["head"] == head_revision("ledger") and inputs["head"]
    assert inputs["password"] == "[secret]" and "password" in migration.secret_inputs
    # depends_on a component waits for every child: role, grants and schema exist first.
    store = "dedicated" if mode == "DATABASE" else "shared"
    for needed in ("role", "login-a", f"{store}-connect-a", f"{store}-schema"):
        assert f"globex-ledger-postgres-{needed}" in migration.depends_on
    # The password handed to the migration is the login's own, not another credential.
    role = plan.by_name("globex-ledger-postgres-login-a")
    assert migration.secret_fingerprints["password"] == role.secret_fingerprints["password"]


def test_vault_document_carries_every_credential_of_the_service(plan_for) -> None:
    """The secret is built from all the service's generated passwords (inputs are masked)."""
    plan = plan_for("globex", ["ledger:SCHEMA"])
    secret = plan.by_name("globex-ledger-vault-secret")
    assert secret.inputs["dataJson"] == "[secret]"
    assert secret.inputs["customMetadata"]["data"] == {"tenant": "globex", "product": "ledger"}
