"""Malformed stack configs are refused with one line naming the rule broken."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tenant_infra.config import ServiceSpec, TenantConfig, read_stack_file
from tenant_infra.errors import InvalidInput

STACKS = Path(__file__).resolve().parent.parent / "stacks"


def globex() -> dict[str, Any]:
    return read_stack_file(STACKS / "Pulumi.globex.yaml")


def refused(values: dict[str, Any]) -> str:
    with pytest.raises(InvalidInput) as info:
        TenantConfig.from_pulumi_values(values)
    message = str(info.value)
    assert "\n" not in message
    return message


def with_platform(**changes: Any) -> dict[str, Any]:
    values = copy.deepcopy(globex())
    for path, value in changes.items():
        node = values["tenant-infra:platform"]
        *parents, leaf = path.split("__")
        for key in parents:
            node = node[key]
        node[leaf] = value
    return values


@pytest.mark.parametrize("name", ["acme", "globex", "dev"])
def test_example_stacks_are_valid(name: str) -> None:
    config = TenantConfig.from_pulumi_values(read_stack_file(STACKS / f"Pulumi.{name}.yaml"))
    assert config.tenant == name


def test_limits_are_the_tier_defaults_with_overrides() -> None:
    config = TenantConfig.from_pulumi_values(read_stack_file(STACKS / "Pulumi.acme.yaml"))
    limits = config.effective_limits()
    assert limits.pg_connection_limit == 150  # override
    assert limits.pg_statement_timeout_ms == 60000  # enterprise default


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        (
            {"tenant-infra:services": [{"product": "billing", "isolation": "SCHEMA"}]},
            "unknown product 'billing'",
        ),
        (
            {"tenant-infra:services": [{"product": "ledger", "isolation": "SHARED"}]},
            "services.0.isolation",
        ),
        (
            {"tenant-infra:services": [{"product": "ledger", "isolation": "SCHEMA"}] * 2},
            "registered twice",
        ),
        (
            {"tenant-infra:services": [{"product": "ledger", "isolation": "SCHEMA", "removal": "keep"}]},
            "services.0.removal",
        ),
        (
            {"tenant-infra:services": [{"product": "ledger", "isolation": "SCHEMA", "suspended": "no"}]},
            "services.0.suspended",
        ),
        ({"tenant-infra:tier": "platinum"}, "unknown tier 'platinum'"),
        ({"tenant-infra:limits": {"pg_connection_limit": 0}}, "pg_connection_limit"),
        ({"tenant-infra:limits": {"max_rows": 5}}, "unknown limit 'max_rows'"),
        ({"tenant-infra:limits": {"pg_connection_limit": 10**20}}, "pg_connection_limit"),
        ({"tenant-infra:limits": {"pg_connection_limit": True}}, "limits"),
        ({"tenant-infra:tenant": "Globex"}, "must be lowercase"),
        ({"tenant-infra:metadata": {"bad key": "x"}}, "metadata"),
        ({"tenant-infra:metadata": {"name": "x" * 300}}, "metadata"),
        ({"tenant-infra:surprise": 1, "tenant-infra:tenant": "x;y"}, "may contain only"),
    ],
)
def test_bad_tenant_settings_are_refused(change: dict[str, Any], rule: str) -> None:
    assert rule in refused(globex() | change)


def test_a_tenant_may_exist_without_services() -> None:
    """Seed 002, stage 1: the tenant exists as an identity only."""
    config = TenantConfig.from_pulumi_values(globex() | {"tenant-infra:services": []})
    assert config.services == ()


@pytest.mark.parametrize(
    ("changes", "rule"),
    [
        ({"postgres__default__host": "db.internal; rm -rf /"}, "not a hostname"),
        ({"postgres__default__port": 70000}, "port"),
        ({"postgres__default__sslmode": "sometimes"}, "sslmode"),
        ({"rabbitmq__managementUrl": "ftp://rabbit"}, "not an http(s) URL"),
        ({"rabbitmq__managementUrl": "amqps://admin:hunter2@mq"}, "must not carry credentials"),
        ({"rabbitmq__managementUrl": "https://admin:hunter2@rabbit"}, "must not carry credentials"),
        ({"vault__address": "vault.internal"}, "must be an http(s) URL"),
        ({"vault__address": "http://vault.internal"}, "plain http"),
        ({"vault__address": "https://root:hunter2@vault.internal"}, "must not carry credentials"),
        ({"vault__kvMount": "../sys"}, "kvMount"),
        ({"mongodb__backend": "cosmos"}, "mongodb"),
        ({"postgres__default__password": "hunter2"}, "password"),
        ({"postgres__default__adminUser": "postgres\nx"}, "adminUser"),
        ({"rabbitmq__adminUser": "guest; rm"}, "adminUser"),
        ({"mongodb__authSource": "ad/min"}, "authSource"),
        ({"postgres__ledgr": {"host": "db"}}, "unknown product 'ledgr'"),
        ({"rabbitmq__adminUser": "ledger_ops"}, "named like a tenant login"),
    ],
)
def test_malformed_endpoints_are_refused(changes: dict[str, Any], rule: str) -> None:
    message = refused(with_platform(**changes))
    assert rule in message
    assert "hunter2" not in message


K8S = {"namespace": "tenants", "serviceAccount": "{product}-{tenant}"}


@pytest.mark.parametrize(
    ("auth", "rule"),
    [
        ({"method": "ldap"}, "vault.auth"),
        ({"mount": "approle"}, "vault.auth"),  # the method is named, never guessed
        ({"method": "approle", "roleId": "fixed"}, "roleId: Extra inputs are not permitted"),
        ({"method": "approle", "mount": "../sys"}, "vault.auth.approle.mount"),
        ({"method": "approle", "secretIdTtl": 0}, "secretIdTtl"),
        ({"method": "approle", "secretIdBoundCidrs": ["10.0.0.1/8"]}, "not a CIDR block"),
        ({"method": "approle", "tokenBoundCidrs": ["everywhere"]}, "not a CIDR block"),
        ({"method": "kubernetes"}, "serviceAccounts"),
        ({"method": "kubernetes", "serviceAccounts": {}}, "serviceAccounts"),
        (
            {"method": "kubernetes", "serviceAccounts": {"ledger": K8S}},
            "no entry for product 'tracer'",
        ),
        (
            {"method": "kubernetes", "serviceAccounts": {"ledgr": K8S}},
            "unknown product 'ledgr'",
        ),
        (
            {"method": "kubernetes", "serviceAccounts": {"default": K8S | {"serviceAccount": "*"}}},
            "not a Kubernetes name",
        ),
        (
            {"method": "kubernetes", "serviceAccounts": {"default": K8S | {"namespace": "{team}"}}},
            "only {tenant} and {product}",
        ),
        (
            {
                "method": "kubernetes",
                "serviceAccounts": {"default": K8S | {"namespace": "tenant-{tenant}-{product}"}},
            },
            "longer than 63 characters",
        ),
        (
            {"method": "kubernetes", "serviceAccounts": {"default": K8S | {"role": "x"}}},
            "Extra inputs are not permitted",
        ),
    ],
)
def test_bad_vault_auth_options_are_refused(auth: dict[str, Any], rule: str) -> None:
    assert rule in refused(with_platform(vault__auth=auth))


def test_vault_auth_is_approle_on_its_own_mount_unless_told() -> None:
    auth = TenantConfig.from_pulumi_values(globex()).platform.vault.auth
    assert (auth.method, auth.mount) == ("approle", "approle")
    k8s = {"method": "kubernetes", "serviceAccounts": {"default": K8S}}
    auth = TenantConfig.from_pulumi_values(with_platform(vault__auth=k8s)).platform.vault.auth
    assert (auth.method, auth.mount) == ("kubernetes", "kubernetes")


def test_token_ttls_longer_than_their_max_are_refused() -> None:
    limits = {"vault_token_ttl_s": 7200, "vault_token_max_ttl_s": 3600}
    assert "vault_token_ttl_s (7200) is longer than vault_token_max_ttl_s (3600)" in refused(
        globex() | {"tenant-infra:limits": limits}
    )
    assert "vault_token_ttl_s" in refused(globex() | {"tenant-infra:limits": {"vault_token_ttl_s": 0}})


def test_a_product_needing_a_missing_store_is_refused() -> None:
    values = globex()
    del values["tenant-infra:platform"]["rabbitmq"]
    assert "needs platform.rabbitmq" in refused(values)


def test_a_product_without_postgres_endpoint_is_refused() -> None:
    values = globex()
    values["tenant-infra:platform"]["postgres"] = {
        "ledger": values["tenant-infra:platform"]["postgres"]["default"]
    }
    assert "no endpoint for product 'tracer'" in refused(values)


def test_secrets_in_a_stack_file_are_refused(tmp_path: Path) -> None:
    doc = {
        "config": {"tenant-infra:tenant": "acme", "tenant-infra:pgPassword": {"secure": "AAAB..."}}
    }
    path = tmp_path / "Pulumi.acme.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(InvalidInput, match="come from the environment"):
        read_stack_file(path)


@pytest.mark.parametrize("text", ["not: [valid", "- a list", "config: 3"])
def test_unreadable_stack_files_are_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "Pulumi.x.yaml"
    path.write_text(text)
    with pytest.raises(InvalidInput, match="stack config"):
        read_stack_file(path)


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("ledger", "PRODUCT:MODE"),
        ("ledger:schema:x", "isolation mode"),
        ("nope:SCHEMA", "unknown product"),
    ],
)
def test_service_flags_are_parsed_strictly(text: str, rule: str) -> None:
    with pytest.raises(InvalidInput, match=rule):
        ServiceSpec.parse(text)


def test_mode_is_case_insensitive_on_the_command_line() -> None:
    assert ServiceSpec.parse("ledger:schema").isolation.value == "SCHEMA"


def _acme_values() -> dict[str, object]:
    from tenant_infra.config import read_stack_file

    root = __import__("pathlib").Path(__file__).resolve().parent.parent
    return dict(read_stack_file(root / "stacks" / "Pulumi.acme.yaml"))


def test_an_isolation_mode_is_read_in_any_case_in_yaml_as_on_the_command_line() -> None:
    from tenant_infra.config import TenantConfig

    values = _acme_values()
    values["tenant-infra:services"] = [{"product": "ledger", "isolation": "schema"}]
    config = TenantConfig.from_pulumi_values(values)
    assert config.services[0].isolation.value == "SCHEMA"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("tenant-infra:tenant", 34, r'must be a string, not the number 34: quote it in YAML \(tenant: "0042"\)'),
        ("tenant-infra:protectData", "no", "config.protectData: Input should be a valid boolean"),
    ],
)
def test_yaml_that_would_be_misread_is_refused_with_the_reason(key: str, value: object, message: str) -> None:
    from tenant_infra.config import TenantConfig

    with pytest.raises(InvalidInput, match=message):
        TenantConfig.from_pulumi_values({**_acme_values(), key: value})


def test_a_stack_file_naming_another_tenant_says_so(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    from tenant_infra import commands

    root = __import__("pathlib").Path(__file__).resolve().parent.parent
    (tmp_path / "stacks").mkdir()
    shutil.copy(root / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    shutil.copy(root / "stacks" / "Pulumi.acme.yaml", tmp_path / "stacks" / "Pulumi.globex.yaml")
    with pytest.raises(InvalidInput, match="it is the stack file of tenant 'acme', not of 'globex'; fix tenant-infra:tenant"):
        commands.resolve_config("globex", root=tmp_path)
    with pytest.raises(InvalidInput, match="it is the stack file of tenant 'acme', not of 'initech'; to plan 'initech' on its platform, name the services"):
        commands.resolve_config("initech", stack_config=root / "stacks" / "Pulumi.acme.yaml")


def test_a_tenant_without_a_stack_file_borrows_no_platform_unless_told(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    from tenant_infra import commands

    root = __import__("pathlib").Path(__file__).resolve().parent.parent
    (tmp_path / "stacks").mkdir()
    shutil.copy(root / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    shutil.copy(root / "stacks" / "Pulumi.dev.yaml", tmp_path / "stacks" / "Pulumi.dev.yaml")
    with pytest.raises(InvalidInput, match=r"tenant 'newco' has no stack file \(Pulumi.newco.yaml\): name the platform to put it on with --platform FILE"):
        commands.resolve_config("newco", ["ledger:SCHEMA"], root=tmp_path)
    told = commands.resolve_config("newco", ["ledger:SCHEMA"], stack_config=root / "stacks" / "Pulumi.acme.yaml", root=tmp_path)
    assert told.platform.postgres_for("ledger").host == commands.resolve_config("acme", root=root).platform.postgres_for("ledger").host
    (tmp_path / "tenant-infra.yaml").write_text("platform: stacks/Pulumi.prod.yaml\n")
    with pytest.raises(InvalidInput, match=r"platform 'stacks/Pulumi\.prod\.yaml' is not a file"):
        commands.resolve_config("newco", ["ledger:SCHEMA"], root=tmp_path)
    (tmp_path / "tenant-infra.yaml").write_text("platfrom: stacks/Pulumi.dev.yaml\n")
    with pytest.raises(InvalidInput, match="unknown setting 'platfrom' \\(known: platform\\)"):
        commands.resolve_config("newco", ["ledger:SCHEMA"], root=tmp_path)
    (tmp_path / "tenant-infra.yaml").write_text("platform: stacks/Pulumi.dev.yaml\n")
    assert commands.resolve_config("newco", ["ledger:SCHEMA"], root=tmp_path).tenant == "newco"
    assert commands.borrowed_platform("newco", root=tmp_path) == (tmp_path / "stacks" / "Pulumi.dev.yaml").resolve()
