"""Revisions rendered once and applied to many tenants, without a process per tenant.

Per tenant, the online runner costs a confined child, Alembic's context and
SQLAlchemy's execution of every statement (``bench/RESULTS.md``), to send the same
DDL every tenant gets. A revision whose offline SQL is its whole effect can be
rendered once and sent to each tenant as text. Which revisions those are is never
guessed: a revision *declares* it (``render_once = True``, read statically, as its
identifiers are), and the declaration is checked:

- the revision is rendered in a sandbox child (it is product code), twice, under two
  probe schemas: SQL that differs between them depends on the tenant's schema, and
  the revision runs online;
- a revision that cannot render offline (it reads the live connection) runs online;
- only a linear history is rendered (no branches, merges or dependencies).

Each tenant is then migrated on its own connection (its role's, in ``--product``
mode), in one transaction, under the same lock as the online runner
(:func:`~tenant_infra.migrate.engine.pin`): its version is read under the lock, and
only if every revision from there to head is rendered does the text run; otherwise
the tenant goes to the online runner, untouched. No product code runs in this
process: the SQL is data that product code produced, run as the tenant.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import Connection, text

from tenant_infra.migrate.connection import (
    close_quietly,
    connect,
    first_line,
    fresh_session,
    with_database,
)
from tenant_infra.migrate.engine import TargetResult, is_deterministic, pin
from tenant_infra.migrate.revisions import declared_render_once, declared_revisions
from tenant_infra.migrate.sandbox import clean_text
from tenant_infra.migrate.targets import MigrationTarget
from tenant_infra.tenant import quote_ident

#: Schemas the revisions are rendered under; SQL that names either is refused.
PROBES: Final = ("tenant_infra_probe_a", "tenant_infra_probe_b")
#: The largest rendering taken from a child, per revision.
MAX_SQL: Final = 16 * 1024 * 1024

#: Statements that would end the tenant's one transaction (and its lock) mid-way,
#: such as Alembic's offline ``autocommit_block``.
_TRANSACTION_CONTROL: Final = re.compile(
    r"^\s*(BEGIN|START\s+TRANSACTION|COMMIT|END|ROLLBACK|ABORT|SAVEPOINT|RELEASE"
    r"|PREPARE\s+TRANSACTION)\b",
    re.IGNORECASE | re.MULTILINE,
)

Ask = Callable[[Sequence[str], Sequence[str]], Mapping[str, Any]]
"""(revisions, probe schemas) → a child's untrusted reply: revision → [SQL per probe]
or an error line."""


@dataclass(frozen=True)
class RenderedScript:
    """The script directory's linear history and the SQL of its rendered revisions."""

    chain: tuple[str, ...]
    sql: Mapping[str, str] = field(default_factory=dict)
    #: Revisions that declared ``render_once`` but run online, and why.
    refused: Mapping[str, str] = field(default_factory=dict)

    @property
    def head(self) -> str:
        return self.chain[-1]

    def path(self, current: frozenset[str]) -> tuple[str, ...] | None:
        """The revisions from ``current`` to head, if every one of them is rendered
        (none: at head, or not a version this history knows)."""
        if not current:
            start = 0
        elif len(current) == 1 and (version := next(iter(current))) in self.chain:
            start = self.chain.index(version) + 1
        else:
            return None
        steps = self.chain[start:]
        return steps if steps and all(r in self.sql for r in steps) else None


def linear_chain(script_location: str) -> tuple[str, ...] | None:
    """The revisions base → head, read statically, if the history is one line."""
    revisions = declared_revisions(script_location)
    below: dict[str | None, str] = {}
    for rev in revisions:
        down = rev.down_revision
        if rev.dependencies or (down is not None and not isinstance(down, str)):
            return None
        if down in below:  # a branch
            return None
        below[down] = rev.revision
    chain: list[str] = []
    at: str | None = None
    while at in below:
        at = below[at]
        chain.append(at)
    return tuple(chain) if chain and len(chain) == len(revisions) else None


def prepare(script_location: str, ask: Ask) -> RenderedScript | None:
    """Render the revisions that declare ``render_once`` and keep those that pass;
    ``None`` when none is declared or the history is not linear."""
    chain = linear_chain(script_location)
    if chain is None:
        return None
    declared = [r for r in chain if r in declared_render_once(script_location)]
    if not declared:
        return None
    reply = ask(declared, PROBES)
    sql: dict[str, str] = {}
    refused: dict[str, str] = {}
    for revision in declared:
        got = reply.get(revision)
        if isinstance(got, str):
            refused[revision] = "it cannot render offline: " + clean_text(got)
        elif not (
            isinstance(got, list)
            and len(got) == len(PROBES)
            and all(isinstance(s, str) and len(s) <= MAX_SQL for s in got)
        ):
            refused[revision] = "no rendering came back"
        elif got[0] != got[1] or any(probe in got[0] for probe in PROBES):
            refused[revision] = "its SQL depends on the tenant's schema"
        elif _TRANSACTION_CONTROL.search(got[0]):
            refused[revision] = "its SQL ends or opens a transaction"
        else:
            sql[revision] = got[0]
    return RenderedScript(chain, sql, refused)


class _Handoff(Exception):
    """The tenant's version is not one the rendered path starts from."""


class _Deadline:
    """``--timeout`` as a wall-clock bound on one tenant, as the online runner's: when
    it passes, a timer cancels the running statement (psycopg's ``cancel()``), and each
    revision's end checks it too (the server ignores a cancel that lands between two
    statements). ``finish`` before the commit: no cancel is sent after it, so none can
    reach the next tenant on a shared connection."""

    def __init__(self, conn: Connection, timeout: float | None, started: float) -> None:
        self.timeout = timeout
        self.passed = False
        self._raw = conn.connection.dbapi_connection
        self._guard = threading.Lock()
        self._done = False
        self._end = started + timeout if timeout is not None else None
        self._timer: threading.Timer | None = None
        if self._end is not None:
            self._timer = threading.Timer(max(0.0, self._end - time.perf_counter()), self._fire)
            self._timer.daemon = True
            self._timer.start()

    def _fire(self) -> None:
        with self._guard:
            if self._done or self._raw is None:
                return
            self.passed = True
            with contextlib.suppress(Exception):
                self._raw.cancel()

    def check(self) -> None:
        if self.passed or (self._end is not None and time.perf_counter() >= self._end):
            self.passed = True
            raise TimeoutError

    def finish(self) -> None:
        with self._guard:
            self._done = True
        if self._timer is not None:
            self._timer.cancel()


def apply_all(
    script: RenderedScript,
    items: Sequence[tuple[int, MigrationTarget]],
    params: Mapping[str, str],
    workers: int,
    timeout: float | None = None,
) -> Iterator[tuple[tuple[int, MigrationTarget], TargetResult | None]]:
    """Each target with its result in input order, ``workers`` at a time (threads: the
    time is the server's); ``None``: untouched, for the online runner. A tenant's own
    connection is closed after its transaction; generic targets (``params``) share one
    connection per thread, reopened when the database changes."""
    local = threading.local()
    opened: list[Connection] = []
    guard = threading.Lock()

    def shared(database: str | None) -> Connection:
        """This thread's one platform connection, reopened when the database changes
        (targets come grouped by database, as for the runner's lanes)."""
        conn: Connection | None = getattr(local, "conn", None)
        if conn is not None and (
            local.database != database
            or conn.closed
            or conn.invalidated
            or not fresh_session(conn)  # kept: nothing of the last tenant stays
        ):
            close_quietly(conn)
            conn = None
        if conn is None:
            conn = connect(with_database(params, database))
            local.conn, local.database = conn, database
            with guard:
                opened.append(conn)
        return conn

    def one(item: tuple[int, MigrationTarget]) -> TargetResult | None:
        index, target = item
        if target.unavailable:
            return None
        if target.params is None:
            own = with_database(params, target.database)
            return apply(script, target, own, index, timeout, lambda: shared(target.database))
        return apply(script, target, target.params, index, timeout)

    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            yield from zip(items, pool.map(one, items), strict=True)
    finally:
        for conn in opened:
            with contextlib.suppress(Exception):
                conn.close()


def apply(
    script: RenderedScript,
    target: MigrationTarget,
    params: Mapping[str, str],
    index: int,
    timeout: float | None = None,
    reuse: Callable[[], Connection] | None = None,
) -> TargetResult | None:
    """Migrate one tenant with the rendered SQL, in one transaction under its lock;
    ``None``: nothing was changed and the online runner takes it. ``reuse`` gives a
    connection to keep open (generic mode); else one is opened with ``params`` and
    closed."""
    if target.role and params.get("user") != target.role:
        return None  # the runner refuses it, in its own words
    started = time.perf_counter()
    table = f"{quote_ident(target.schema)}.alembic_version"
    before: frozenset[str] = frozenset()
    steps: tuple[str, ...] = ()
    running: str | None = None
    try:
        conn = reuse() if reuse is not None else connect(params)
    except Exception as exc:  # a connection refused or lost: may pass on a retry
        return TargetResult.of(target, index, "failed", error=str(exc), started=started)
    deadline = _Deadline(conn, timeout, started)
    try:
        with contextlib.ExitStack() as stack:
            if reuse is None:
                stack.callback(close_quietly, conn)
            stack.callback(deadline.finish)  # when the BEGIN itself fails
            with conn.begin():
                try:
                    pin(conn, target, params)
                    # Bounded: a table of a million rows is no version to start from.
                    rows = conn.exec_driver_sql(f"SELECT version_num FROM {table} LIMIT 2")
                    before = frozenset(str(r[0]) for r in rows)
                    found = script.path(before)
                    if found is None:
                        raise _Handoff
                    steps = found
                    xact = conn.exec_driver_sql("SELECT pg_catalog.txid_current()").scalar()
                    for running in steps:
                        conn.exec_driver_sql(script.sql[running])
                        # Still the one transaction under the lock (no COMMIT slipped through).
                        if (
                            conn.exec_driver_sql("SELECT pg_catalog.txid_current()").scalar()
                            != xact
                        ):
                            raise RuntimeError("its SQL ended the transaction")
                        deadline.check()
                    running = None
                    versions = {"new": script.head, "old": next(iter(before), None)}
                    if before:
                        moved = conn.execute(
                            text(f"UPDATE {table} SET version_num = :new WHERE version_num = :old"),
                            versions,
                        )
                        if moved.rowcount != 1:  # as Alembic checks its own update
                            raise RuntimeError("the version row changed under the migration")
                    else:
                        conn.execute(
                            text(f"INSERT INTO {table} (version_num) VALUES (:new)"), versions
                        )
                finally:
                    # Before the COMMIT or ROLLBACK: no cancel is sent after this, so
                    # none can reach them, nor the next tenant on a shared connection.
                    deadline.finish()
                if deadline.passed:  # a cancel the server ignored between two statements
                    raise TimeoutError
    except _Handoff:
        return None
    except Exception as exc:
        what = f"revision {running}: " if running else ""
        if deadline.passed:
            return TargetResult.of(
                target,
                index,
                "failed",
                before=",".join(sorted(before)) or None,
                after=",".join(sorted(before)) or None,
                revisions=steps,
                error=f"{what}timed out after {deadline.timeout:g} s; its transaction was "
                "rolled back",
                started=started,
            )
        shown = ",".join(sorted(before)) or None
        return TargetResult.of(
            target,
            index,
            "failed",
            before=shown,
            after=shown,
            revisions=steps,
            error=what + first_line(exc),
            started=started,
            deterministic=is_deterministic(exc),
        )
    return TargetResult.of(
        target,
        index,
        "migrated",
        before=",".join(sorted(before)) or None,
        after=script.head,
        revisions=steps,
        started=started,
    )
