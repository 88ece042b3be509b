"""The head read statically (no revision code runs) agrees with Alembic's, or refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import LEDGER, TRACER

from tenant_infra.errors import InvalidInput
from tenant_infra.migrate.engine import head_of, load_script
from tenant_infra.migrate.revisions import declared_head


@pytest.mark.parametrize("script", [LEDGER, TRACER])
def test_the_products_heads_read_statically_are_alembics(script: Path) -> None:
    assert declared_head(script) == head_of(load_script(script)[1])


def _write(root: Path, files: dict[str, str]) -> Path:
    (root / "versions").mkdir(parents=True)
    for name, text in files.items():
        (root / "versions" / name).write_text(text)
    return root


def test_branches_and_merges_give_every_head(tmp_path: Path) -> None:
    script = _write(
        tmp_path,
        {
            "a.py": "revision = 'a'\ndown_revision = None\n",
            "b.py": "revision: str = 'b'\ndown_revision = 'a'\n",
            "c.py": "revision = 'c'\ndown_revision = 'a'\n",
            "__init__.py": "",
            ".#lock.py": "",
        },
    )
    assert declared_head(script) == "b,c"
    (script / "versions" / "m.py").write_text("revision = 'm'\ndown_revision = ('b', 'c')\n")
    assert declared_head(script) == "m"


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("revision = 'r1'\nif True:\n    revision = 'r3'\n", "inside a block"),
        ("revision = 'r1'\ntry:\n    down_revision = 'r0'\nexcept Exception:\n    pass\n", "inside a block"),
        ("revision = make_id()\n", "must be a literal"),
        ("down_revision = None\n", "no literal revision"),
        ("revision = (\n", "cannot read revision file"),
    ],
)
def test_what_cannot_be_read_statically_is_refused(tmp_path: Path, text: str, rule: str) -> None:
    script = _write(tmp_path, {"x.py": text})
    with pytest.raises(InvalidInput, match=rule):
        declared_head(script)
