"""ServiceCredentials under mocks: one secret per service and a policy reading only it."""

from __future__ import annotations

import re

from tenant_infra.components.vault import read_policy

SECRET = "vault:kv/secretV2:SecretV2"
POLICY = "vault:index/policy:Policy"


def test_policy_reads_exactly_its_own_data_and_metadata_paths() -> None:
    hcl = read_policy("kv", "tenants/acme/ledger")
    assert re.findall(r'path "([^"]+)"', hcl) == [
        "kv/data/tenants/acme/ledger",
        "kv/metadata/tenants/acme/ledger",
    ]
    assert re.findall(r"capabilities = \[([^\]]*)\]", hcl) == ['"read"', '"read"']
    assert "*" not in hcl and "+" not in hcl


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
        }


def test_vault_token_is_secret_and_no_child_token_is_made(plan_for) -> None:
    provider = plan_for("globex").by_name("globex-vault-admin")
    assert provider.inputs["token"] == "[secret]"
    assert provider.inputs["skipChildToken"] in (True, "true")
