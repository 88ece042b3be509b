"""What a sandbox child runs, and the messages to and from it.

The operator sends a child a greeting (``hello``: the connection parameters of
targets that bring none, and the destination revision), then requests: one per
target (``upgrade``, ``pending``, ``sql``) or one MongoDB apply (``mongo``). The
child answers each with plain JSON. Replies come from product code's process, so the
operator treats them as untrusted data: only known fields, of the right types,
printable text (:func:`result_of`); the labels shown come from the operator's own
target, never from the reply.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal

from alembic.config import Config
from alembic.script import ScriptDirectory

from tenant_infra.migrate.engine import TargetResult, TenantMigrator
from tenant_infra.migrate.mongo import MongoVersion
from tenant_infra.migrate.targets import MigrationTarget

Mode = Literal["upgrade", "pending", "sql"]

_STATUSES: Final = frozenset({"migrated", "current", "pending", "failed", "skipped"})


# -- the operator's side ----------------------------------------------------------------


def hello(params: Mapping[str, str], destination: str) -> dict[str, Any]:
    return {"params": dict(params), "destination": destination}


def target_request(mode: Mode, target: MigrationTarget) -> dict[str, Any]:
    """One target's request; ``params`` (its own role's password) goes only here."""
    return {
        "op": mode,
        "target": {
            "schema": target.schema,
            "database": target.database,
            "tenant": target.tenant,
            "product": target.product,
            "role": target.role,
            "params": dict(target.params) if target.params is not None else None,
        },
    }


def _text(value: object) -> str | None:
    from tenant_infra.migrate.sandbox import clean_text

    return clean_text(value) if isinstance(value, str) else None


def result_of(
    reply: Mapping[str, Any] | None,
    target: MigrationTarget,
    index: int,
    started: float,
    worker: int,
) -> TargetResult:
    """The child's reply as a :class:`TargetResult`, or ``failed`` if it gave none."""
    if reply is None:
        return _ended(target, index, started, worker)
    status = reply.get("status")
    revisions = reply.get("revisions")
    sql = reply.get("sql")
    result = TargetResult.of(
        target,
        index,
        status if isinstance(status, str) and status in _STATUSES else "failed",  # type: ignore[arg-type]
        before=_text(reply.get("before")),
        after=_text(reply.get("after")),
        revisions=tuple(_text(r) or "?" for r in revisions) if isinstance(revisions, list) else (),
        error=_text(reply.get("error")) or (None if status in _STATUSES else "malformed reply"),
        started=started,
    )
    result.sql = sql if isinstance(sql, str) else None
    result.worker = worker
    return result


def _ended(target: MigrationTarget, index: int, started: float, worker: int) -> TargetResult:
    result = TargetResult.of(
        target,
        index,
        "failed",
        error="the migration process ended without a result (killed, or it exited)",
        started=started,
    )
    result.worker = worker
    return result


# -- the child's side -------------------------------------------------------------------


def _target(raw: Mapping[str, Any]) -> MigrationTarget:
    params = raw.get("params")
    return MigrationTarget(
        schema=str(raw["schema"]),
        database=raw.get("database"),
        tenant=raw.get("tenant"),
        product=raw.get("product"),
        role=raw.get("role"),
        params={str(k): str(v) for k, v in params.items()} if isinstance(params, dict) else None,
    )


class Worker:
    """A child's state: one migrator (and so one connection) for all its requests."""

    def __init__(
        self,
        config: Config,
        script: ScriptDirectory,
        mongo_versions: list[MongoVersion],
        greeting: Mapping[str, Any],
    ) -> None:
        self.migrator = TenantMigrator(
            params={str(k): str(v) for k, v in dict(greeting.get("params") or {}).items()},
            destination=str(greeting.get("destination") or "heads"),
            loaded=(config, script),
        )
        self.mongo_versions = mongo_versions

    def handle(self, request: Mapping[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "mongo":
            return self._mongo(request)
        target = _target(request["target"])
        if op == "upgrade":
            result = self.migrator.upgrade(target)
        elif op == "pending":
            result = self.migrator.pending(target)
        elif op == "sql":
            result = self.migrator.render(target)
        else:
            return {"status": "failed", "error": f"unknown request {op!r}"}
        return _reply(result)

    def _mongo(self, request: Mapping[str, Any]) -> dict[str, Any]:
        from pymongo import MongoClient

        from tenant_infra.migrate.mongo import apply

        try:
            with MongoClient(**dict(request["client"])) as client:
                done = apply(client[str(request["database"])], self.mongo_versions)
        except Exception as exc:
            # pymongo errors never carry the password; keep only their first line.
            return {"error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}
        return {"after": done.after, "applied": list(done.applied)}

    def close(self) -> None:
        self.migrator.close()


def _reply(result: TargetResult) -> dict[str, Any]:
    return {
        "status": result.status,
        "before": result.before,
        "after": result.after,
        "revisions": list(result.revisions),
        "error": result.error,
        "sql": result.sql,
    }


def script_exists(script_location: str | Path) -> Path:
    """The script directory, checked without importing anything from it."""
    from tenant_infra.errors import InvalidInput

    path = Path(script_location).resolve()
    if not (path / "versions").is_dir():
        raise InvalidInput(f"{path} is not an Alembic script directory (no versions/)")
    return path
