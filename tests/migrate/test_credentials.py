"""Where --product finds each tenant's own credentials: files first, then Vault (a
stand-in KV v2 server here), else a per-tenant failure. No database needed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tenant_infra.errors import InvalidInput
from tenant_infra.migrate.credentials import attach_credentials, load_documents
from tenant_infra.migrate.targets import MigrationTarget, database_mode_target, schema_mode_target
from tenant_infra.workspace import Workspace
from tests.support.vault_stub import StubVault, stub_vault

PASSWORD = "pw-Zq81-never-shown"


def document(target: MigrationTarget, password: str = PASSWORD) -> dict[str, Any]:
    return {
        "tenant": target.tenant,
        "product": target.product,
        "isolation": "SCHEMA" if target.database == target.product else "DATABASE",
        "postgresql": {
            "host": "127.0.0.1",
            "port": 5432,
            "database": target.database,
            "schema": target.schema,
            "user": target.role,
            "password": password,
            "sslmode": "disable",
        },
    }


@pytest.fixture
def vault() -> Iterator[StubVault]:
    with stub_vault("tok") as stub:
        yield stub


def test_file_first_then_vault_then_a_per_tenant_failure(
    vault: StubVault, product: str, tmp_path: Path
) -> None:
    in_file = schema_mode_target("acme-a", product)
    in_vault = database_mode_target("acme-b", product)
    nowhere = schema_mode_target("acme-c", product)
    (tmp_path / "c.json").write_text(json.dumps([document(in_file)]))
    vault.put("secret", f"tenants/acme-b/{product}", document(in_vault, "from-vault"))
    env = {"VAULT_ADDR": vault.address, "VAULT_TOKEN": "tok"}
    got = attach_credentials(
        [in_file, in_vault, nowhere],
        load_documents([tmp_path / "c.json"]),
        environ=env,
        workspace=Workspace(tmp_path),
    )
    assert got[0].params is not None and got[0].params["password"] == PASSWORD
    assert got[0].params["user"] == in_file.role and got[0].params["dbname"] == product
    assert got[1].params is not None and got[1].params["password"] == "from-vault"
    assert got[1].params["dbname"] == in_vault.database and got[1].unavailable is None
    assert got[2].params is None
    assert got[2].unavailable is not None
    assert got[2].unavailable.startswith(f"no credentials for tenant acme-c product {product}: ")
    assert "no secret at secret/tenants/acme-c" in got[2].unavailable
    # The file's tenant was not looked up in Vault; the others with the token.
    assert [p for p, _ in vault.requests] == [
        f"/v1/secret/data/tenants/acme-b/{product}",
        f"/v1/secret/data/tenants/acme-c/{product}",
    ]
    assert all(authorized for _, authorized in vault.requests)
    for target in got:
        assert PASSWORD not in repr(target) and "from-vault" not in repr(target)


def test_a_tenant_stack_file_names_the_mount_never_where_the_token_goes(
    vault: StubVault, product: str, tmp_path: Path
) -> None:
    target = schema_mode_target("globex-x", product)
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    platform = {
        "postgres": {"default": {"host": "127.0.0.1", "port": 5432, "adminUser": "postgres"}},
        "vault": {"address": vault.address, "kvMount": "kv"},
    }
    config = {"tenant-infra:tenant": "globex-x", "tenant-infra:platform": platform}
    (stacks / "Pulumi.globex-x.yaml").write_text(yaml.safe_dump({"config": config}))
    vault.put("kv", f"tenants/globex-x/{product}", document(target))
    # Without VAULT_ADDR (or a platform definition) the token goes nowhere.
    (none,) = attach_credentials(
        [target], {}, environ={"VAULT_TOKEN": "tok"}, workspace=Workspace(tmp_path)
    )
    assert none.unavailable == (
        f"no credentials for tenant globex-x product {product}: pass --connections FILE "
        "or set VAULT_ADDR and VAULT_TOKEN"
    )
    assert vault.requests == []
    env = {"VAULT_ADDR": vault.address, "VAULT_TOKEN": "tok"}
    (got,) = attach_credentials([target], {}, environ=env, workspace=Workspace(tmp_path))
    assert got.unavailable is None and got.params is not None  # read at the file's kv/ mount
    assert got.params["user"] == target.role


@pytest.mark.parametrize(
    ("address", "rule"),
    [
        ("http://vault.example.com:8200", "plain http"),
        ("https://ops:s3cret@vault.example.com", "must not carry credentials"),
    ],
)
def test_a_vault_addr_the_token_must_not_go_to_stops_the_run(
    product: str, tmp_path: Path, address: str, rule: str
) -> None:
    target = schema_mode_target("acme-f", product)
    env = {"VAULT_ADDR": address, "VAULT_TOKEN": "tok"}
    with pytest.raises(InvalidInput, match=rule) as caught:
        attach_credentials([target], {}, environ=env, workspace=Workspace(tmp_path))
    assert "s3cret" not in str(caught.value)


def test_a_garbage_vault_reply_fails_that_tenant_only(
    vault: StubVault, product: str, tmp_path: Path
) -> None:
    bad, good = schema_mode_target("acme-g", product), schema_mode_target("acme-h", product)
    vault.put("secret", f"tenants/acme-h/{product}", document(good))
    vault.put("secret", f"tenants/acme-g/{product}", b"<html>proxy error</html>")
    env = {"VAULT_ADDR": vault.address, "VAULT_TOKEN": "tok"}
    got = attach_credentials([bad, good], {}, environ=env, workspace=Workspace(tmp_path))
    assert got[0].unavailable is not None and "not JSON" in got[0].unavailable
    assert got[1].unavailable is None and got[1].params is not None


def test_unreachable_vault_fails_each_tenant_not_the_run(product: str, tmp_path: Path) -> None:
    target = schema_mode_target("acme-d", product)
    env = {"VAULT_ADDR": "http://127.0.0.1:1", "VAULT_TOKEN": "tok"}
    (got,) = attach_credentials([target], {}, environ=env, workspace=Workspace(tmp_path))
    assert got.unavailable is not None and "Vault at http://127.0.0.1:1" in got.unavailable
    assert "tok" not in got.unavailable


def test_two_documents_for_one_service_are_refused(product: str, tmp_path: Path) -> None:
    target = schema_mode_target("acme-e", product)
    for name in ("a.json", "b.json"):
        (tmp_path / name).write_text(json.dumps(document(target)))
    with pytest.raises(InvalidInput, match="two connections documents") as exc:
        load_documents([tmp_path / "a.json", tmp_path / "b.json"])
    assert PASSWORD not in str(exc.value)
