"""A script directory's head, read without running any of its code.

Alembic learns a revision's identifiers by importing its module, and a module's top
level is product code. The Pulumi program and ``tenantctl plan`` run in processes that
hold platform secrets, so they read the identifiers statically instead: the literal
assignments ``revision``, ``down_revision``, ``depends_on`` and ``branch_labels`` of
each file Alembic would load, fed to Alembic's own :class:`RevisionMap`. A revision
whose identifiers are not literals is refused; the sandbox (which imports for real)
then reports the same head or the migration fails on an unknown revision.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any, Final

from alembic.script.revision import Revision, RevisionMap

from tenant_infra.errors import InvalidInput

#: A revision's own declaration that its offline SQL is its whole effect, the same for
#: every tenant: ``render_once = True`` (see :mod:`tenant_infra.migrate.rendered`).
RENDER_ONCE: Final = "render_once"
#: Files Alembic loads from ``versions/`` (``alembic.script.base._only_source_rev_file``).
_REVISION_FILE: Final = re.compile(r"(?!\.\#|__init__)(.*\.py)$")
_FIELDS: Final = ("revision", "down_revision", "depends_on", "branch_labels", RENDER_ONCE)


def _identifiers(path: Path) -> dict[str, Any]:
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidInput(f"cannot read revision file {path}: {exc}") from None
    found: dict[str, Any] = {}
    top = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        names = (
            [
                t.id
                for t in ast.walk(node)
                if isinstance(t, ast.Name) and isinstance(t.ctx, ast.Store) and t.id in _FIELDS
            ]
            if isinstance(
                node,
                (
                    ast.Assign,
                    ast.AnnAssign,
                    ast.AugAssign,
                    ast.For,
                    ast.With,
                    ast.NamedExpr,
                    ast.Import,
                    ast.ImportFrom,
                ),
            )
            else []
        )
        if names and id(node) not in top:
            raise InvalidInput(
                f"{path}: {names[0]} is assigned inside a block; tenant-infra reads revision "
                "identifiers only from literal, top-level assignments"
            )
    for node in tree.body:
        targets: list[ast.expr] = []
        value: ast.expr | None = None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        for target in targets:
            if isinstance(target, ast.Name) and target.id in _FIELDS and value is not None:
                try:
                    found[target.id] = ast.literal_eval(value)
                except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                    raise InvalidInput(
                        f"{path}: {target.id} must be a literal for tenant-infra to read it"
                    ) from None
    if not isinstance(found.get("revision"), str):
        raise InvalidInput(f"{path}: no literal revision identifier")
    for key in ("down_revision", "depends_on", "branch_labels"):
        value = found.get(key)
        if not (
            value is None
            or isinstance(value, str)
            or (isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value))
        ):
            raise InvalidInput(f"{path}: {key} must be None, a string or a list of strings")
    if not isinstance(found.get(RENDER_ONCE, False), bool):
        raise InvalidInput(f"{path}: {RENDER_ONCE} must be True or False")
    return found


def _tuple(value: Any) -> str | tuple[str, ...] | None:
    if value is None or isinstance(value, str):
        return value
    return tuple(str(v) for v in value)


def _declared(script_location: str | Path) -> list[dict[str, Any]]:
    versions = Path(script_location) / "versions"
    if not versions.is_dir():
        raise InvalidInput(f"{script_location} is not an Alembic script directory (no versions/)")
    return [
        _identifiers(path)
        for path in sorted(versions.iterdir())
        if path.is_file() and _REVISION_FILE.match(path.name)
    ]


def declared_revisions(script_location: str | Path) -> list[Revision]:
    return [
        Revision(
            ids["revision"],
            _tuple(ids.get("down_revision")),
            dependencies=_tuple(ids.get("depends_on")),
            branch_labels=_tuple(ids.get("branch_labels")),
        )
        for ids in _declared(script_location)
    ]


def declared_render_once(script_location: str | Path) -> frozenset[str]:
    """The revisions that declare ``render_once = True``."""
    return frozenset(ids["revision"] for ids in _declared(script_location) if ids.get(RENDER_ONCE))


def declared_head(script_location: str | Path) -> str | None:
    """The heads, comma-joined as :func:`~tenant_infra.migrate.engine.head_of` does."""
    revisions = declared_revisions(script_location)
    try:
        heads = RevisionMap(lambda: revisions).heads
    except Exception as exc:  # an unknown down_revision, a cycle: Alembic's own words
        raise InvalidInput(f"{script_location}: {str(exc).splitlines()[0]}") from None
    return ",".join(sorted(heads)) or None
