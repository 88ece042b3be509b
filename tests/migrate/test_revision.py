"""``tenantctl revision``: the next sequential id, from a template that passes ruff."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import LEDGER

from tenant_infra import commands
from tenant_infra.errors import InvalidInput
from tenant_infra.migrate.revisions import declared_head


def test_a_new_revision_is_numbered_after_the_last_and_lint_clean(tmp_path: Path) -> None:
    script = tmp_path / "ledger"
    shutil.copytree(LEDGER, script)
    made = commands.revision(None, "Add invoices table", script)
    assert made.name == "0004_add_invoices_table.py"
    assert declared_head(script) == "0004"
    text = made.read_text()
    assert 'down_revision = "0003"' in text and "def downgrade() -> None:" in text
    lint = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--config", str(Path(__file__).resolve().parents[2] / "pyproject.toml"), str(made)],
        capture_output=True,
        text=True,
    )
    assert lint.returncode == 0, lint.stdout
    assert commands.revision(None, "and another", script).name == "0005_and_another.py"


def test_a_revision_needs_a_message_and_a_place() -> None:
    with pytest.raises(InvalidInput, match="needs a message"):
        commands.revision("ledger", "  ")
    with pytest.raises(InvalidInput, match="product 'reporter' has no migrations"):
        commands.revision("reporter", "x")
    with pytest.raises(InvalidInput, match="name the product"):
        commands.revision(None, "x")


def test_a_project_products_first_revision_makes_its_script_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "stacks").mkdir()
    (tmp_path / "Pulumi.yaml").write_text("name: x\nruntime: python\n")
    (tmp_path / "catalog.toml").write_text(
        '[products.wallet]\nstores = ["postgresql", "vault"]\nmigrations = "wallet"\n'
    )
    monkeypatch.setenv("TENANT_INFRA_PROJECT", str(tmp_path))
    made = commands.revision("wallet", "first tables")
    assert made == tmp_path / "migrations" / "wallet" / "versions" / "0001_first_tables.py"
    assert 'down_revision = None' in made.read_text()
    assert (tmp_path / "migrations" / "wallet" / "env.py").is_file()
    with pytest.raises(InvalidInput, match="not an Alembic script directory"):
        commands.revision(None, "x", tmp_path / "stacks")
