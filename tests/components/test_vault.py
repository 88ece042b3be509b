"""ServiceCredentials under mocks: one secret per service, a policy reading only it, and
an auth role whose tokens carry that policy alone, for the tier's TTLs."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from tenant_infra.catalog import load_catalog
from tenant_infra.components.vault import TOKEN_SELF, read_policy
from tenant_infra.config import TenantConfig, read_stack_file
from tenant_infra.guardrails import TOKEN_SELF as GUARDED_TOKEN_SELF
from tenant_infra.plan import Plan, plan
from tenant_infra.tenant import TenantNames

SECRET = "vault:kv/secretV2:SecretV2"
POLICY = "vault:index/policy:Policy"
APPROLE = "vault:appRole/authBackendRole:AuthBackendRole"
KUBERNETES = "vault:kubernetes/authBackendRole:AuthBackendRole"
ROLES = (APPROLE, KUBERNETES)
STACKS = Path(__file__).resolve().parents[2] / "stacks"
ALL_SERVICES = ["ledger:DATABASE", "tracer:SCHEMA", "reporter:SCHEMA"]
SELF = ["auth/token/lookup-self", "auth/token/renew-self", "auth/token/revoke-self"]


def test_policy_reads_exactly_its_own_data_and_metadata_paths() -> None:
    hcl = read_policy("kv", "tenants/acme/ledger")
    assert re.findall(r'path "([^"]+)"', hcl) == [
        "kv/data/tenants/acme/ledger",
        "kv/metadata/tenants/acme/ledger",
        *SELF,
    ]
    assert re.findall(r"capabilities = \[([^\]]*)\]", hcl) == [
        '"read"',
        '"read"',
        '"read"',
        '"update"',
        '"update"',
    ]
    assert "*" not in hcl and "+" not in hcl


def test_the_guardrails_allow_the_token_exactly_what_the_policy_grants_it() -> None:
    assert {path: frozenset({cap}) for path, cap in TOKEN_SELF.items()} == GUARDED_TOKEN_SELF


def test_one_secret_and_policy_per_service_under_the_tenant_path(plan_for) -> None:
    plan = plan_for("globex")
    secrets = {s.inputs["name"]: s for s in plan.of_type(SECRET)}
    assert set(secrets) == {"tenants/globex/ledger", "tenants/globex/tracer"}
    for secret in secrets.values():
        assert secret.inputs["mount"] == "tenants-kv"
        assert secret.inputs["dataJson"] == "[secret]"
        assert secret.inputs["deleteAllVersions"] is True  # no old credentials left readable
        assert "dataJson" in secret.secret_inputs
    policies = {p.inputs["name"]: p.inputs["policy"] for p in plan.of_type(POLICY)}
    assert set(policies) == {"tenant-globex-ledger", "tenant-globex-tracer"}
    for name, hcl in policies.items():
        product = name.rsplit("-", 1)[-1]
        assert set(re.findall(r'path "([^"]+)"', hcl)) == {
            f"tenants-kv/data/tenants/globex/{product}",
            f"tenants-kv/metadata/tenants/globex/{product}",
            *SELF,
        }


def test_vault_token_is_secret_and_no_child_token_is_made(plan_for) -> None:
    provider = plan_for("globex").by_name("globex-vault-admin")
    assert provider.inputs["token"] == "[secret]"
    assert provider.inputs["skipChildToken"] in (True, "true")


def config(stack: str = "globex", **changes: Any) -> TenantConfig:
    """The stack file's config with ``changes`` (``platform.vault.auth`` as ``auth``)."""
    values = copy.deepcopy(read_stack_file(STACKS / f"Pulumi.{stack}.yaml"))
    if "auth" in changes:
        values["tenant-infra:platform"]["vault"]["auth"] = changes.pop("auth")
    values |= {f"tenant-infra:{key}": value for key, value in changes.items()}
    return TenantConfig.from_pulumi_values(values)


def roles(plan: Plan) -> list[Any]:
    return [r for r in plan.resources if r.type in ROLES]


def service_policy(plan: Plan, role: Any) -> str:
    """The name of the policy declared by the same service as ``role``."""
    (policy,) = [p for p in plan.of_type(POLICY) if p.parent == role.parent]
    return str(policy.inputs["name"])


@pytest.mark.parametrize("stack", ["acme", "globex"])
def test_no_role_grants_another_services_policy(plan_for, stack: str) -> None:
    """Across tenants and services: each role's tokens carry its own service's policy
    alone, no default policy, and no two roles share a name or a policy."""
    seen_roles: set[str] = set()
    seen_policies: set[str] = set()
    for tenant in ("acme", "globex", "3f2b8c1e-9a4d-4e6f-8b2a-1c3d5e7f9a0b"):
        plan = plan_for(tenant, ALL_SERVICES, stack=stack)
        found = roles(plan)
        assert len(found) == len(ALL_SERVICES)
        for role in found:
            product = role.name.removeprefix(f"{tenant}-").split("-")[0]
            names = TenantNames(tenant).service(product)
            assert role.inputs["roleName"] == names.vault_auth_role
            assert role.inputs["tokenPolicies"] == [names.vault_policy]
            assert role.inputs["tokenPolicies"] == [service_policy(plan, role)]
            assert role.inputs["tokenNoDefaultPolicy"] is True
            assert role.inputs["backend"] == "approle"
            assert role.inputs["bindSecretId"] is True
            assert not role.secret_inputs and "secretId" not in role.inputs
            seen_roles.add(role.inputs["roleName"])
            seen_policies.update(role.inputs["tokenPolicies"])
    assert len(seen_roles) == len(seen_policies) == 3 * len(ALL_SERVICES)


def test_the_stack_makes_no_secret_id() -> None:
    """A SecretID is a credential: the deployment pipeline issues it, wrapped."""
    kinds = {r.type for r in plan(config(stack="dev")).resources}
    assert APPROLE in kinds
    assert not any("SecretId" in kind for kind in kinds)


@pytest.mark.parametrize("tier", ["starter", "standard", "enterprise"])
def test_token_ttls_are_the_tiers(tier: str) -> None:
    limits = load_catalog().tier(tier)
    for role in roles(plan(config(tier=tier))):
        assert role.inputs["tokenTtl"] == limits.vault_token_ttl_s
        assert role.inputs["tokenMaxTtl"] == limits.vault_token_max_ttl_s


def test_a_tenants_override_sets_its_token_ttls() -> None:
    limits = {"vault_token_ttl_s": 300, "vault_token_max_ttl_s": 600}
    for role in roles(plan(config(limits=limits))):
        assert (role.inputs["tokenTtl"], role.inputs["tokenMaxTtl"]) == (300, 600)


def test_tiers_order_their_token_ttls() -> None:
    for limits in load_catalog().tiers.values():
        assert 60 <= limits.vault_token_ttl_s <= limits.vault_token_max_ttl_s


def test_approle_settings_come_from_the_platform() -> None:
    auth = {
        "method": "approle",
        "mount": "tenants-approle",
        "secretIdTtl": 3600,
        "secretIdNumUses": 1,
        "secretIdBoundCidrs": ["10.20.0.0/16"],
        "tokenBoundCidrs": ["10.20.0.0/16"],
    }
    for role in roles(plan(config(auth=auth))):
        assert role.type == APPROLE
        assert role.inputs["backend"] == "tenants-approle"
        assert (role.inputs["secretIdTtl"], role.inputs["secretIdNumUses"]) == (3600, 1)
        assert role.inputs["secretIdBoundCidrs"] == ["10.20.0.0/16"]
        assert role.inputs["tokenBoundCidrs"] == ["10.20.0.0/16"]


def test_kubernetes_roles_bind_the_configured_service_account_and_namespace() -> None:
    auth = {
        "method": "kubernetes",
        "mount": "k8s-eu",
        "audience": "vault",
        "serviceAccounts": {
            "default": {"namespace": "tenants-{product}", "serviceAccount": "{product}-{tenant}"},
            "tracer": {"namespace": "tracer", "serviceAccount": "tracer"},
        },
    }
    planned = plan(config(auth=auth))
    found = {r.inputs["roleName"]: r for r in roles(planned)}
    assert set(found) == {"tenant-globex-ledger", "tenant-globex-tracer"}
    ledger, tracer = found["tenant-globex-ledger"], found["tenant-globex-tracer"]
    assert {r.type for r in found.values()} == {KUBERNETES}
    assert ledger.inputs["boundServiceAccountNamespaces"] == ["tenants-ledger"]
    assert ledger.inputs["boundServiceAccountNames"] == ["ledger-globex"]
    assert tracer.inputs["boundServiceAccountNamespaces"] == ["tracer"]
    assert tracer.inputs["boundServiceAccountNames"] == ["tracer"]
    for role in found.values():
        assert role.inputs["backend"] == "k8s-eu" and role.inputs["audience"] == "vault"
        assert role.inputs["tokenPolicies"] == [role.inputs["roleName"]]
        assert role.inputs["tokenNoDefaultPolicy"] is True
    info = planned.outputs["services"]["ledger"]["vault"]["auth"]
    assert info == {"method": "kubernetes", "mount": "k8s-eu", "role": "tenant-globex-ledger"}


def test_a_suspended_service_has_no_role_and_a_retained_one_no_vault_at_all() -> None:
    services = [
        {"product": "ledger", "isolation": "SCHEMA", "suspended": True},
        {"product": "tracer", "isolation": "SCHEMA", "removal": "retain"},
    ]
    planned = plan(config(services=services))
    assert roles(planned) == []
    assert [s.inputs["name"] for s in planned.of_type(SECRET)] == ["tenants/globex/ledger"]
    assert [p.inputs["name"] for p in planned.of_type(POLICY)] == ["tenant-globex-ledger"]
    assert "auth" not in planned.outputs["services"]["ledger"]["vault"]
