"""Day-2 operations in the registry: which named step each one reached.

The step machine (:mod:`tenant_infra.operations.steps`) writes here before and after
every step, so a killed operation resumes from its last finished step. At most one
operation is open per service (a unique index); a running one holds a session
advisory lock on the registry, which its process loses when it dies, so "running"
and "interrupted" are told apart without trusting a clock or a pid.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from tenant_infra.errors import OperationFailed
from tenant_infra.registry.store import SCHEMA, Registry, _history, _reported
from tenant_infra.workspace import InProgress

OPEN, DONE, ABORTED = "open", "done", "aborted"


@dataclass(frozen=True)
class Operation:
    id: int
    tenant: str
    product: str
    kind: str
    state: str
    steps_done: tuple[str, ...]
    #: The step under way (or the last one that failed), if any.
    step: str | None
    #: Non-secret facts the steps need to go on (revision, deadlines, measurements).
    detail: Mapping[str, Any]
    error: str | None
    actor: str
    started_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Operation:
        return cls(
            id=row["id"],
            tenant=row["tenant_id"],
            product=row["product"],
            kind=row["kind"],
            state=row["state"],
            steps_done=tuple(row["steps_done"]),
            step=row["step"],
            detail=dict(row["detail"]),
            error=row["error"],
            actor=row["actor"],
            started_at=row["started_at"],
            updated_at=row["updated_at"],
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "state": self.state,
            "stepsDone": list(self.steps_done),
            "step": self.step,
            "detail": dict(self.detail),
            "error": self.error,
            "actor": self.actor,
            "startedAt": self.started_at.isoformat(),
            "updatedAt": self.updated_at.isoformat(),
        }


_COLUMNS = (
    "id, tenant_id, product, kind, state, steps_done, step, detail, error, actor,"
    " started_at, updated_at"
)


class Operations:
    """The registry's ``operations`` table and the lock of a running operation."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._lock: psycopg.Connection[Any] | None = None

    @contextlib.contextmanager
    def running(self, tenant: str, product: str, kind: str) -> Iterator[None]:
        """Hold the service's operation lock for as long as this process runs one.

        A second runner is told at once; a killed one releases it with its session.
        """
        key = f"tenant-infra:operation:{tenant}/{product}"
        try:
            conn = psycopg.connect(**self.registry.params(), autocommit=True)
        except psycopg.Error as exc:
            raise _reported(f"locking {tenant}/{product}", exc) from None
        with conn:
            row = conn.execute(
                "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (key,)
            ).fetchone()
            if not (row and row[0]):
                raise InProgress(
                    f"a {kind} of tenant {tenant!r} service {product!r} (or another operation "
                    "on it) is already in progress"
                )
            self._lock = conn
            try:
                yield
            finally:
                self._lock = None

    def still_held(self) -> None:
        """Before each step: the lock's session is alive (a registry restart would end
        it, and a second runner could then start)."""
        conn = self._lock
        try:
            if conn is None:
                raise psycopg.OperationalError("no lock session")
            conn.execute("SELECT 1")
        except psycopg.Error:
            raise OperationFailed(
                "the registry session holding this operation's lock was lost; run it again "
                "with --resume"
            ) from None

    def _one(self, query: str, params: tuple[Any, ...]) -> Operation | None:
        try:
            with self.registry.connect() as conn:
                row = conn.execute(query, params).fetchone()
        except psycopg.Error as exc:
            raise _reported("reading operations", exc) from None
        return Operation.from_row(row) if row else None

    def open_one(self, tenant: str, product: str) -> Operation | None:
        """The service's unfinished operation, if any."""
        return self._one(
            f"SELECT {_COLUMNS} FROM {SCHEMA}.operations"
            " WHERE tenant_id = %s AND product = %s AND state = 'open'",
            (tenant, product),
        )

    def last(self, tenant: str, product: str, kind: str) -> Operation | None:
        """The service's most recent operation of ``kind``, finished or not."""
        return self._one(
            f"SELECT {_COLUMNS} FROM {SCHEMA}.operations"
            " WHERE tenant_id = %s AND product = %s AND kind = %s ORDER BY id DESC LIMIT 1",
            (tenant, product, kind),
        )

    def start(self, tenant: str, product: str, kind: str, detail: Mapping[str, Any]) -> Operation:
        query = (
            f"INSERT INTO {SCHEMA}.operations (tenant_id, product, kind, state, detail, actor)"
            f" VALUES (%s, %s, %s, 'open', %s, %s) RETURNING {_COLUMNS}"
        )
        params = (tenant, product, kind, Jsonb(dict(detail)), self.registry.actor)
        return self._write(query, params, None, "started")

    def step_started(self, operation: Operation, step: str) -> Operation:
        return self._write(
            f"UPDATE {SCHEMA}.operations SET step = %s, error = NULL,"
            f" updated_at = clock_timestamp() WHERE id = %s RETURNING {_COLUMNS}",
            (step, operation.id),
            operation,
            f"step {step} started",
        )

    def step_done(self, operation: Operation, step: str, detail: Mapping[str, Any]) -> Operation:
        return self._write(
            f"UPDATE {SCHEMA}.operations SET step = NULL, detail = %s,"
            " steps_done = array_append(steps_done, %s), updated_at = clock_timestamp()"
            f" WHERE id = %s RETURNING {_COLUMNS}",
            (Jsonb(dict(detail)), step, operation.id),
            operation,
            f"step {step} done",
        )

    def step_failed(self, operation: Operation, step: str, reason: str) -> Operation:
        return self._write(
            f"UPDATE {SCHEMA}.operations SET error = %s, updated_at = clock_timestamp()"
            f" WHERE id = %s RETURNING {_COLUMNS}",
            (reason, operation.id),
            operation,
            f"step {step} failed: {reason}",
        )

    def step_refused(self, operation: Operation, step: str, reason: str) -> Operation:
        return self._write(
            f"UPDATE {SCHEMA}.operations SET step = NULL, error = %s,"
            f" updated_at = clock_timestamp() WHERE id = %s RETURNING {_COLUMNS}",
            (reason, operation.id),
            operation,
            f"step {step} refused: {reason}",
        )

    def finish(self, operation: Operation, state: str, detail: Mapping[str, Any]) -> Operation:
        return self._write(
            f"UPDATE {SCHEMA}.operations SET state = %s, step = NULL, detail = %s,"
            f" updated_at = clock_timestamp() WHERE id = %s RETURNING {_COLUMNS}",
            (state, Jsonb(dict(detail)), operation.id),
            operation,
            state,
        )

    def _write(
        self,
        query: str,
        params: tuple[Any, ...],
        operation: Operation | None,
        reason: str,
    ) -> Operation:
        """The row and its history entry, in one transaction."""
        try:
            with self.registry.connect() as conn, conn.transaction():
                row = conn.execute(query, params).fetchone()
                assert row is not None
                written = Operation.from_row(row)
                state = conn.execute(
                    f"SELECT state FROM {SCHEMA}.services WHERE tenant_id = %s AND product = %s",
                    (written.tenant, written.product),
                ).fetchone()
                service_state = state["state"] if state else "unknown"
                _history(
                    conn,
                    written.tenant,
                    written.product,
                    written.kind,
                    service_state,
                    service_state,
                    f"{written.kind} {reason}",
                    self.registry.actor,
                )
        except psycopg.errors.UniqueViolation:
            raise InProgress(
                f"tenant {params[0]!r} service {params[1]!r} has an unfinished operation"
            ) from None
        except psycopg.Error as exc:
            what = operation.kind if operation else "an operation"
            raise _reported(f"recording {what}", exc) from None
        return written
