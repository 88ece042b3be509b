"""Fixtures for migration tests against the real PostgreSQL (see pgsandbox.py)."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # pgsandbox, shared helpers

from pgsandbox import PgSandbox, sandbox

REPO = Path(__file__).resolve().parents[2]
LEDGER = REPO / "migrations" / "ledger"
TRACER = REPO / "migrations" / "tracer"


@pytest.fixture
def pg() -> Iterator[PgSandbox]:
    yield from sandbox()


@pytest.fixture
def product() -> str:
    return PgSandbox.new_product()


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
                f'''
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
                '''
            )
        )
        prev = rev
    return root
