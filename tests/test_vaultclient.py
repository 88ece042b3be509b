"""The operator's Vault: where the token may go, and what a bad reply does."""

from __future__ import annotations

from pathlib import Path

import pytest

from tenant_infra.config import VaultEndpoint
from tenant_infra.errors import BackendUnavailable, InvalidInput
from tenant_infra.vaultclient import (
    PLATFORM_STACK_ENV,
    VaultAccess,
    checked_address,
    operator_vault,
    read_secret,
)
from tests.support.vault_stub import stub_vault

TOKEN = "hvs.test-token-value"


@pytest.mark.parametrize(
    "address",
    ["https://vault.internal:8200", "http://127.0.0.1:8200", "http://localhost:8200", "http://[::1]:1"],
)
def test_https_or_loopback_http_is_accepted(address: str) -> None:
    assert checked_address(address + "/") == address


@pytest.mark.parametrize(
    ("address", "rule"),
    [
        ("http://vault.internal:8200", "plain http"),
        ("http://10.0.0.5:8200", "plain http"),
        ("https://admin:s3cret-pw@vault.internal", "must not carry credentials"),
        ("http://tok3n-user@127.0.0.1:8200", "must not carry credentials"),
        ("ftp://vault.internal", "http(s) URL"),
        ("vault.internal:8200", "http(s) URL"),
        ("https://vault.internal:99999", "not a valid URL"),
    ],
)
def test_refused_addresses_are_one_line_and_never_repeated(address: str, rule: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        operator_vault({"VAULT_ADDR": address, "VAULT_TOKEN": TOKEN})
    message = str(caught.value)
    assert rule in message and "\n" not in message
    assert "s3cret" not in message and "tok3n" not in message and TOKEN not in message


def test_stack_files_refuse_a_vault_address_the_token_must_not_go_to() -> None:
    for bad in ("http://vault.internal:8200", "https://u:p@vault.internal"):
        with pytest.raises(ValueError, match="the Vault address"):
            VaultEndpoint.model_validate({"address": bad})
    assert VaultEndpoint.model_validate({"address": "http://127.0.0.1:8200"})


def _platform_file(root: Path, stack: str, address: str, mount: str = "kv") -> None:
    (root / "platform").mkdir(exist_ok=True)
    (root / "platform" / f"Pulumi.{stack}.yaml").write_text(
        "config:\n"
        "  tenant-infra:products: [ledger]\n"
        "  tenant-infra:platform:\n"
        "    postgres:\n"
        "      default: {host: 127.0.0.1, port: 5432, adminUser: postgres}\n"
        f"    vault: {{address: '{address}', kvMount: {mount}}}\n"
    )


def test_the_platform_definition_names_the_vault_when_vault_addr_is_unset(tmp_path: Path) -> None:
    _platform_file(tmp_path, "prod", "https://vault.prod.internal:8200")
    env = {"VAULT_TOKEN": TOKEN, PLATFORM_STACK_ENV: "prod"}
    access = operator_vault(env, root=tmp_path, mount="tenants-kv")
    assert access is not None
    assert (access.address, access.mount) == ("https://vault.prod.internal:8200", "tenants-kv")
    assert operator_vault(env, root=tmp_path).mount == "kv"  # type: ignore[union-attr]
    over = operator_vault({**env, "VAULT_ADDR": "https://other:8200"}, root=tmp_path)
    assert over is not None and (over.address, over.mount) == ("https://other:8200", "secret")
    with pytest.raises(InvalidInput, match="no platform stack file"):
        operator_vault({**env, PLATFORM_STACK_ENV: "nope"}, root=tmp_path)


def test_a_reply_that_is_not_kv_json_fails_that_read_in_one_line() -> None:
    with stub_vault(TOKEN) as vault:
        vault.put("secret", "tenants/a/ledger", b"<html>gateway</html>")
        vault.put("secret", "tenants/b/ledger", b'{"data": ["not", "a", "secret"]}')
        vault.put("secret", "tenants/c/ledger", {"ok": True})
        access = VaultAccess(vault.address, TOKEN)
        for path, rule in (("tenants/a/ledger", "not JSON"), ("tenants/b/ledger", "not a KV v2")):
            with pytest.raises(BackendUnavailable, match=rule) as caught:
                read_secret(access, path)
            assert TOKEN not in str(caught.value)
        with pytest.raises(InvalidInput, match="no secret at secret/tenants/x/ledger"):
            read_secret(access, "tenants/x/ledger")
        assert read_secret(access, "tenants/c/ledger") == {"ok": True}
        with pytest.raises(BackendUnavailable, match="HTTP 403"):
            read_secret(VaultAccess(vault.address, "wrong"), "tenants/c/ledger")


def test_the_token_never_goes_through_a_proxy_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HTTP_PROXY would carry a loopback http request, token and all, to the proxy."""
    with stub_vault(TOKEN) as vault, stub_vault("proxy") as proxy:
        vault.put("secret", "tenants/a/ledger", {"ok": True})
        monkeypatch.setenv("HTTP_PROXY", proxy.address)
        monkeypatch.setenv("http_proxy", proxy.address)
        monkeypatch.setenv("NO_PROXY", "")
        assert read_secret(VaultAccess(vault.address, TOKEN), "tenants/a/ledger") == {"ok": True}
    assert proxy.requests == []
