"""TenantService under mocks: what a service declares follows the catalog, nothing more."""

from __future__ import annotations

import pytest

from tenant_infra.catalog import Store, load_catalog

STORE_TYPES = {
    Store.POSTGRESQL: "postgresql:index/role:Role",
    Store.RABBITMQ: "rabbitmq:index/user:User",
    Store.MONGODB: "pulumi-python:dynamic/tenant:MongoUser",
    Store.VAULT: "vault:kv/secretV2:SecretV2",
}


@pytest.mark.parametrize("product", sorted(load_catalog().products))
@pytest.mark.parametrize("mode", ["DATABASE", "SCHEMA"])
def test_a_service_declares_exactly_the_stores_its_product_needs(
    plan_for, product: str, mode: str
) -> None:
    plan = plan_for("globex", [f"{product}:{mode}"])
    needs = load_catalog().product(product).stores
    for store, type_ in STORE_TYPES.items():
        found = [r for r in plan.of_type(type_) if plan.service_of(r) == f"globex-{product}"]
        assert len(found) == (1 if store in needs else 0), (store, found)


def test_vault_document_carries_every_credential_of_the_service(plan_for) -> None:
    """The secret is built from all the service's generated passwords (inputs are masked)."""
    plan = plan_for("globex", ["ledger:SCHEMA"])
    secret = plan.by_name("globex-ledger-vault-secret")
    assert secret.inputs["dataJson"] == "[secret]"
    assert secret.inputs["customMetadata"]["data"] == {"tenant": "globex", "product": "ledger"}
