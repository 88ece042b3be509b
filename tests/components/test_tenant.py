"""Tenant-wide invariants under mocks: nothing reaches another tenant, nothing is shared."""

from __future__ import annotations

import re

import pytest

from tenant_infra.plan import Plan, PlannedResource
from tenant_infra.tenant import TenantNames

TENANTS = ["acme", "globex", "3f2b8c1e-9a4d-4e6f-8b2a-1c3d5e7f9a0b"]
ALL_SERVICES = ["ledger:DATABASE", "tracer:SCHEMA", "reporter:SCHEMA"]
CREDENTIAL_CONSUMERS = {
    "postgresql:index/role:Role",
    "rabbitmq:index/user:User",
    "mongodbatlas:index/databaseUser:DatabaseUser",
    "pulumi-python:dynamic/tenant:MongoUser",
}


def reaches_only(tenant: str, resource: PlannedResource) -> None:
    """Every object a resource names belongs to ``tenant`` (or is a product's shared DB)."""
    names = TenantNames(tenant)
    products = ("ledger", "tracer", "reporter")
    owners = {names.service(p).pg_role for p in products}
    roles = {login for p in products for login in names.service(p).pg_logins()}
    users = {user for p in products for user in names.service(p).broker_logins()}
    own_dbs = {names.service(p).pg_dedicated_database for p in products}
    inputs, kind = resource.inputs, resource.type
    if kind == "postgresql:index/grant:Grant":
        assert inputs["role"] in roles or (
            inputs["role"] == "public" and inputs["privileges"] == []
        )
        assert inputs["database"] in own_dbs | set(products)
        assert inputs.get("schema") in (None, names.pg_schema)
    elif kind == "postgresql:index/schema:Schema":
        assert inputs["name"] == names.pg_schema and inputs["owner"] in owners
    elif kind == "postgresql:index/database:Database":
        assert inputs["name"] in own_dbs
    elif kind == "postgresql:index/role:Role":
        # A login is a member of its own service's owner, and of nothing else.
        assert inputs["name"] in roles
        assert set(inputs.get("roles", [])) <= owners
        assert inputs.get("assumeRole") in (None, *inputs.get("roles", []))
    elif kind == "rabbitmq:index/permissions:Permissions":
        assert inputs["vhost"] == names.vhost and inputs["user"] in users
    elif kind in ("rabbitmq:index/vHost:VHost",):
        assert inputs["name"] == names.vhost
    elif kind == "rabbitmq:index/operatorPolicy:OperatorPolicy":
        assert inputs["vhost"] == names.vhost
    elif kind == "vault:kv/secretV2:SecretV2":
        assert inputs["name"].startswith(f"tenants/{tenant}/")
    elif kind == "vault:index/policy:Policy":
        for path in re.findall(r'path "([^"]+)"', inputs["policy"]):
            assert re.fullmatch(
                rf"[^/]+/(data|metadata)/tenants/{re.escape(tenant)}/[a-z0-9]+", path
            ) or path in (
                "auth/token/lookup-self",
                "auth/token/renew-self",
                "auth/token/revoke-self",
            )
    elif kind in (
        "vault:appRole/authBackendRole:AuthBackendRole",
        "vault:kubernetes/authBackendRole:AuthBackendRole",
    ):
        assert inputs["tokenPolicies"] == [inputs["roleName"]]
        assert inputs["roleName"] in {names.service(p).vault_policy for p in products}
    elif kind == "mongodbatlas:index/databaseUser:DatabaseUser":
        assert {r["databaseName"] for r in inputs["roles"]} == {names.mongo_database}
    elif kind == "pulumi-python:dynamic/tenant:MongoUser":
        assert inputs["database"] == names.mongo_database
    elif kind == "pulumi-python:dynamic/tenant:ServiceMigration":
        assert inputs["user"] in roles and inputs["schema"] == names.pg_schema
        assert inputs["database"] in own_dbs | set(products)


@pytest.mark.parametrize("tenant", TENANTS)
@pytest.mark.parametrize("stack", ["acme", "globex"])
def test_no_resource_reaches_another_tenant(plan_for, tenant: str, stack: str) -> None:
    plan = plan_for(tenant, ALL_SERVICES, stack=stack)
    for resource in plan.resources:
        reaches_only(tenant, resource)
        assert resource.name.startswith(f"{tenant}-") or resource.name == tenant, resource.name


def credentials(plan: Plan) -> dict[str, str]:
    return {
        r.name: r.secret_fingerprints["password"]
        for r in plan.resources
        if r.type in CREDENTIAL_CONSUMERS and "password" in r.secret_inputs
    }


@pytest.mark.parametrize("stack", ["acme", "globex"])
def test_two_tenants_never_share_a_credential(plan_for, stack: str) -> None:
    a = credentials(plan_for("acme", ALL_SERVICES, stack=stack))
    b = credentials(plan_for("globex", ALL_SERVICES, stack=stack))
    assert len(a) >= 5 and len(b) == len(a)
    fingerprints = list(a.values()) + list(b.values())
    assert len(set(fingerprints)) == len(fingerprints), "a generated password is reused"


def test_adding_a_service_leaves_existing_resources_untouched(plan_for) -> None:
    before = plan_for("globex", ["ledger:SCHEMA"])
    after = plan_for("globex", ["ledger:SCHEMA", "tracer:DATABASE"])
    after_by_key = {(r.type, r.name): r for r in after.resources}
    for resource in before.resources:
        assert after_by_key.get((resource.type, resource.name)) == resource, resource.name
    assert len(after.resources) > len(before.resources)


def test_service_order_does_not_change_any_resource(plan_for) -> None:
    one = plan_for("globex", ["ledger:SCHEMA", "tracer:SCHEMA"])
    two = plan_for("globex", ["tracer:SCHEMA", "ledger:SCHEMA"])
    assert one.resources == two.resources


def test_stack_outputs_hold_connection_info_but_no_secret(plan_for) -> None:
    plan = plan_for("globex")
    services = plan.outputs["services"]
    assert services != "[secret]", "a secret leaked into the stack outputs"
    ledger = services["ledger"]
    assert ledger["isolation"] == "SCHEMA"
    assert ledger["postgresql"] | {} == ledger["postgresql"]
    assert (ledger["postgresql"]["database"], ledger["postgresql"]["schema"]) == (
        "ledger",
        "tenant_globex",
    )
    assert ledger["rabbitmq"]["vhost"] == "globex"
    assert ledger["vault"]["path"] == "tenants-kv/tenants/globex/ledger"
    assert ledger["vault"]["auth"] == {
        "method": "approle",
        "mount": "approle",
        "role": "tenant-globex-ledger",
        "roleId": None,  # Vault's to generate: not known under mocks
    }
    for store in ("postgresql", "rabbitmq", "mongodb"):
        assert "password" not in ledger[store]
