"""The product catalog: the built-in products, and a project's own."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tenant_infra import commands
from tenant_infra.catalog import Store, load_catalog
from tenant_infra.errors import InvalidInput

ROOT = Path(__file__).resolve().parents[1]
WALLET = """
[products.wallet]
description = "A product of the operator's own"
stores = ["postgresql", "vault"]
migrations = "wallet"
"""


def project(tmp_path: Path, catalog: str) -> Path:
    (tmp_path / "stacks").mkdir()
    shutil.copy(ROOT / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    (tmp_path / "catalog.toml").write_text(catalog)
    shutil.copytree(ROOT / "tenant_infra" / "migrations" / "tracer", tmp_path / "migrations" / "wallet")
    return tmp_path


def test_a_projects_own_product_is_planned_and_migrated_from_the_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TENANT_INFRA_PROJECT", str(project(tmp_path, WALLET)))
    wallet = load_catalog().product("wallet")
    assert wallet.needs(Store.POSTGRESQL) and not wallet.needs(Store.RABBITMQ)
    assert wallet.script_location == tmp_path / "migrations" / "wallet"
    assert load_catalog().product("ledger").script_location == ROOT / "tenant_infra" / "migrations" / "ledger"
    plan = commands.plan("newco", ["wallet:SCHEMA"], ROOT / "stacks" / "Pulumi.dev.yaml")
    schema = next(r for r in plan.resources if r.type == "postgresql:index/schema:Schema")
    assert schema.inputs["database"] == "wallet"


@pytest.mark.parametrize(
    ("catalog", "message"),
    [
        ('[products.ledger]\nstores = ["postgresql"]\n', "product 'ledger' is built in already"),
        ('[tiers.huge]\npg_connection_limit = 1\n', r"only \[products.<name>\] tables belong here"),
        ('[products.wallet]\nstores = ["postgres"]\n', "products.wallet.stores"),
        ("[products.wallet\n", "cannot be read"),
    ],
)
def test_a_bad_project_catalog_is_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, catalog: str, message: str
) -> None:
    monkeypatch.setenv("TENANT_INFRA_PROJECT", str(project(tmp_path, catalog)))
    with pytest.raises(InvalidInput, match=message) as refused:
        load_catalog()
    assert "\n" not in str(refused.value)
