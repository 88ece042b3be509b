"""Fixtures for migration tests against the real PostgreSQL (see pgsandbox.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # pgsandbox, shared helpers

from pgsandbox import PgSandbox, sandbox

REPO = Path(__file__).resolve().parents[2]
LEDGER = REPO / "tenant_infra" / "migrations" / "ledger"
TRACER = REPO / "tenant_infra" / "migrations" / "tracer"


@pytest.fixture
def pg() -> Iterator[PgSandbox]:
    yield from sandbox()


@pytest.fixture
def product() -> Iterator[str]:
    """A throwaway product, registered in this process's catalog (migrations: ledger's)
    so that connections documents for it validate; ``cli`` registers it in the child."""
    from tenant_infra.catalog import Product, Store, load_catalog

    name = PgSandbox.new_product()
    products = load_catalog().products
    products[name] = Product(name=name, stores=frozenset({Store.POSTGRESQL}), migrations="ledger")
    try:
        yield name
    finally:
        products.pop(name, None)


# ``python -c`` body: register TEST_PRODUCTS in the catalog (PostgreSQL only, ledger's
# migrations), then run `tenantctl migrate` through the real entry point.
_RUNNER = """
import os, sys
from tenant_infra.catalog import Product, Store, load_catalog
for name in filter(None, os.environ.get("TEST_PRODUCTS", "").split(",")):
    load_catalog().products[name] = Product(
        name=name, stores=frozenset({Store.POSTGRESQL}), migrations="ledger"
    )
from tenant_infra.cli import main
main(["migrate", *sys.argv[1:]])
"""


def cli_command(*args: str, products: tuple[str, ...] = ()) -> tuple[list[str], dict[str, str]]:
    """argv and environment of ``tenantctl migrate ARGS`` knowing the throwaway products.

    Vault variables are removed: credentials come from --connections only.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
    env |= {
        "PYTHONPATH": str(REPO),
        "TEST_PRODUCTS": ",".join(products),
    }
    return [sys.executable, "-c", _RUNNER, *args], env


def cli(
    *args: str, products: tuple[str, ...] = (), env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    cmd, base = cli_command(*args, products=products)
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        timeout=120,
        check=False,
    )


def write_script_dir(root: Path, revisions: list[str]) -> Path:
    """A plain Alembic script directory whose revision i runs ``revisions[i]`` (SQL).

    No env.py beyond a stub that would fail if executed: the tool must not need it.
    """
    (root / "versions").mkdir(parents=True)
    (root / "env.py").write_text("raise RuntimeError('env.py must not be executed by the tool')\n")
    (root / "script.py.mako").write_text("")
    prev = None
    for i, sql in enumerate(revisions, start=1):
        rev = f"{i:04d}"
        (root / "versions" / f"{rev}_r.py").write_text(
            textwrap.dedent(
                f"""
                from alembic import op

                revision = {rev!r}
                down_revision = {prev!r}
                branch_labels = None
                depends_on = None


                def upgrade() -> None:
                    for stmt in {sql!r}.split(";\\n"):
                        if stmt.strip():
                            op.execute(stmt)


                def downgrade() -> None:
                    pass
                """
            )
        )
        prev = rev
    return root
