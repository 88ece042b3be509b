"""Migrate ONE target on an open connection: the unit every executor repeats.

The tool owns the migration environment (``EnvironmentContext`` driven here), so a
script directory's own ``env.py`` is never executed: a plain Alembic directory works
unchanged, and per-tenant cost is only what the DDL needs. Per target, in one
transaction::

    BEGIN;
    CREATE TABLE IF NOT EXISTS <schema>.alembic_version (...);   -- Alembic's own DDL
    LOCK TABLE <schema>.alembic_version IN EXCLUSIVE MODE;
    SET LOCAL search_path TO <schema>;     -- unqualified DDL cannot land elsewhere
    <alembic_version in <schema>; every pending revision>
    COMMIT;                                -- or ROLLBACK: no partial revision survives

A tenant's target (one with a ``role``) runs on a connection made AS THAT ROLE with
its own credentials (``target.params``), never under another user: tenant-owned code
that a migration executes (a trigger on ``alembic_version``, a column DEFAULT, an
index expression) runs with the connecting user's privileges, and ``SET ROLE`` would
not contain it (``RESET ROLE`` undoes it). A target whose role is not the connecting
user is refused before connecting. The lock makes a concurrent runner wait, then
find the tenant at head and do nothing. It is a lock on the tenant's own version
table, which only its role and the platform may take: an advisory key, which any
role can compute, would let a neighbour block a tenant's migrations.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext, MigrationInfo, RevisionStep
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from tenant_infra.migrate.connection import (
    ConnParams,
    close_quietly,
    connect,
    first_line,
    fresh_session,
    with_database,
)
from tenant_infra.migrate.targets import MigrationTarget
from tenant_infra.tenant import quote_ident

Status = Literal["migrated", "current", "pending", "failed", "skipped"]

#: Alembic's version table, as Alembic itself creates it (``alembic.runtime.migration``).
VERSION_TABLE_DDL: Final = (
    "CREATE TABLE IF NOT EXISTS {table} (version_num VARCHAR(32) NOT NULL,"
    " CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))"
)
DUPLICATE_TABLE, UNIQUE_VIOLATION, LOCK_NOT_AVAILABLE = "42P07", "23505", "55P03"


def _sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE behind a SQLAlchemy error (messages may be in any language)."""
    return getattr(getattr(exc, "orig", exc), "sqlstate", None)


#: SQLSTATE classes of failures that may pass when run again: connection exception,
#: transaction rollback (serialization, deadlock), insufficient resources, operator
#: intervention (shutdown, cancel), system error, internal error; and lock_not_available.
_TRANSIENT_CLASSES: Final = frozenset({"08", "40", "53", "57", "58", "XX"})


def is_deterministic(exc: BaseException) -> bool:
    """Whether a tenant's failure would recur on a retry, judged by SQLSTATE.

    A server error outside the transient classes (a duplicate table, a violated
    constraint, a refused login) is the revision's or the tenant's own: it recurs.
    An error without SQLSTATE is a lost or refused connection (a driver error), or
    Python raised in a revision (which recurs); anything else counts as transient.
    """
    from sqlalchemy.exc import DBAPIError

    state = _sqlstate(exc)
    if state is not None:
        return state != LOCK_NOT_AVAILABLE and state[:2] not in _TRANSIENT_CLASSES
    if isinstance(exc, DBAPIError | RuntimeError | OSError):
        return False  # a driver's connection failure, our lock wait, a socket: may pass
    return isinstance(exc, Exception)


_HOLDERS_SQL = text(
    "SELECT DISTINCT a.usename, a.application_name FROM pg_catalog.pg_locks l"
    " JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid"
    " WHERE l.relation = to_regclass(:table) AND l.granted AND l.pid <> pg_backend_pid()"
    " ORDER BY 1, 2"
)
#: How long a tenant's migration waits for its lock before failing that tenant.
LOCK_WAIT_SECONDS: Final = 60


@dataclass(slots=True)
class TargetResult:
    """Outcome for one target; small and picklable (it crosses process boundaries)."""

    index: int
    label: str
    where: str
    product: str | None
    before: str | None
    after: str | None
    status: Status
    revisions: tuple[str, ...] = ()
    error: str | None = None
    seconds: float = 0.0
    sql: str | None = None
    worker: int = field(default_factory=os.getpid)
    #: A failure that running again would meet again (a revision's error, a refusal, no
    #: credentials): not worth a retry. ``False`` for anything that may pass (a lost
    #: connection, a lock held too long, a killed process), and for any doubt.
    deterministic: bool = False

    @classmethod
    def of(
        cls,
        target: MigrationTarget,
        index: int,
        status: Status,
        *,
        before: str | None = None,
        after: str | None = None,
        revisions: tuple[str, ...] = (),
        error: str | None = None,
        started: float | None = None,
        deterministic: bool = False,
    ) -> TargetResult:
        """A result for ``target``; ``started`` (``perf_counter``) gives ``seconds``."""
        return cls(
            index=index,
            label=target.label,
            where=target.where,
            product=target.product,
            before=before,
            after=after,
            status=status,
            revisions=revisions,
            error=error,
            seconds=time.perf_counter() - started if started is not None else 0.0,
            deterministic=deterministic,
        )


def _heads_str(heads: tuple[str, ...] | list[str] | set[str]) -> str | None:
    return ",".join(sorted(heads)) or None


def load_script(script_location: str | Path) -> tuple[Config, ScriptDirectory]:
    """Load a script directory once; its revision map and modules are then reused."""
    path = Path(script_location).resolve()
    if not (path / "versions").is_dir():
        from tenant_infra.errors import InvalidInput

        raise InvalidInput(f"{path} is not an Alembic script directory (no versions/)")
    config = Config()
    config.set_main_option("script_location", str(path))
    script = ScriptDirectory.from_config(config)
    script.revision_map.heads  # noqa: B018 - build the revision map and import versions now
    for rev in script.walk_revisions():
        rev.module  # noqa: B018 - import every revision module once, before any fork
    return config, script


def head_of(script: ScriptDirectory) -> str | None:
    return _heads_str(script.get_heads())


def pin(conn: Connection, target: MigrationTarget, params: Mapping[str, str]) -> None:
    """Take the tenant's migration lock in the open transaction (its version table,
    created if need be, ``EXCLUSIVE``), then confine unqualified names to its schema.
    ``params`` open a second session to name a holder that never lets go."""
    table = f"{quote_ident(target.schema)}.alembic_version"
    # Bounded: a holder that never lets go fails this tenant in a while, named.
    conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_WAIT_SECONDS}s'")
    try:
        created = conn.begin_nested()
        try:
            conn.exec_driver_sql(VERSION_TABLE_DDL.format(table=table))
            created.commit()
        except Exception as exc:  # a concurrent first run created it: lock that one
            created.rollback()
            if _sqlstate(exc) not in (DUPLICATE_TABLE, UNIQUE_VIOLATION):
                raise
        conn.exec_driver_sql(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
    except Exception as exc:
        if _sqlstate(exc) != LOCK_NOT_AVAILABLE:
            raise
        raise RuntimeError(
            f"the migration lock of {target.where} has been held for {LOCK_WAIT_SECONDS}"
            f" s by {_holders(params, table)}; nothing was changed"
        ) from None
    conn.exec_driver_sql("SET LOCAL lock_timeout = DEFAULT")
    conn.exec_driver_sql(f"SET LOCAL search_path TO {quote_ident(target.schema)}")


def _holders(params: Mapping[str, str], table: str) -> str:
    """Who holds ``table``'s lock (user and application), from a fresh session."""
    try:
        with connect(params) as other:
            rows = other.execute(_HOLDERS_SQL, {"table": table}).fetchall()
    except Exception:
        return "another session"
    shown = [f"user {u or '?'} ({a or 'no application name'})" for u, a in rows]
    return ", ".join(shown) or "another session"


class TenantMigrator:
    """Per-process state: one script directory, one connection at a time, many targets.

    ``params`` connect for targets that carry none (generic mode: one connection per
    worker, reused across targets of a database). A target with its own ``params``
    (a tenant's role) gets a connection with them. Not thread-safe by design:
    Alembic's ``op``/``context`` are module-global proxies, so concurrency comes from
    separate processes, each with its own migrator.
    """

    def __init__(
        self,
        script_location: str | Path | None = None,
        params: Mapping[str, str] | None = None,
        *,
        destination: str = "heads",
        loaded: tuple[Config, ScriptDirectory] | None = None,
    ) -> None:
        if loaded is None:
            if script_location is None:
                raise TypeError("give script_location or loaded")
            loaded = load_script(script_location)
        self.config, self.script = loaded
        self.params: ConnParams = dict(params or {})
        self.destination = destination
        self._conn: Connection | None = None
        self._conn_key: object = None

    # -- connection -------------------------------------------------------------------

    def _params_for(self, target: MigrationTarget) -> Mapping[str, str]:
        if target.params is not None:
            return target.params
        return with_database(self.params, target.database)

    def refusal(self, target: MigrationTarget) -> str | None:
        """Why ``target`` must not be attempted on this migrator, or ``None``."""
        if target.unavailable:
            return target.unavailable
        if target.role:
            user = self._params_for(target).get("user")
            if user != target.role:
                return (
                    f"refusing to migrate {target.where} as "
                    f"{'user ' + repr(user) if user else 'the default user'}: "
                    f"a tenant schema is migrated only as its own role {target.role!r}"
                )
        return None

    def _connection(self, target: MigrationTarget) -> Connection:
        # Generic targets share the migrator's credentials: reuse per database. A
        # target with its own credentials reuses only a connection made with them.
        key: object = (
            target.database
            if target.params is None
            else ("own", tuple(sorted(target.params.items())))
        )
        if self._conn is not None and (
            self._conn_key != key
            or self._conn.closed
            or self._conn.invalidated
            or not fresh_session(self._conn)  # kept: nothing of the last tenant stays
        ):
            self.close()
        if self._conn is None:
            self._conn = connect(self._params_for(target))
            self._conn_key = key
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            close_quietly(self._conn)
            self._conn = None
            self._conn_key = None

    # -- upgrade ----------------------------------------------------------------------

    def upgrade(
        self, target: MigrationTarget, index: int = 0, *, downgrade: bool = False
    ) -> TargetResult:
        """Bring ``target`` to the destination in one transaction (down to it, with
        ``downgrade``: the same connection, lock and transaction); never raises for a
        tenant's own failure (the fleet goes on), only returns it."""
        started = time.perf_counter()
        refused = self.refusal(target)
        if refused:
            return _failed(target, index, refused, started, _refusal_recurs(target))
        before: tuple[str, ...] = ()
        steps: list[RevisionStep] = []
        applied: list[str] = []
        script, destination = self.script, self.destination

        def plan(rev: tuple[str, ...], _ctx: MigrationContext) -> list[RevisionStep]:
            nonlocal before, steps
            before = tuple(rev)
            if downgrade:
                if _at_or_below(script, destination, rev):
                    steps = []  # a straggler of a re-run: nothing to undo
                else:
                    steps = script._downgrade_revs(destination, rev)  # type: ignore[arg-type]
            else:
                steps = script._upgrade_revs(destination, rev)  # type: ignore[arg-type]
            return steps

        def on_apply(
            ctx: MigrationContext,
            step: MigrationInfo,
            heads: Collection[Any],
            run_args: Mapping[str, Any],
        ) -> None:
            applied.append(step.up_revision_id or "")

        try:
            conn = self._connection(target)
            with conn.begin():
                pin(conn, target, self._params_for(target))
                with EnvironmentContext(
                    self.config, script, fn=plan, destination_rev=destination
                ) as env:
                    env.configure(
                        connection=conn,
                        version_table_schema=target.schema,
                        transactional_ddl=True,
                        on_version_apply=on_apply,
                    )
                    _known_version_table(env.get_context(), conn, target.schema)
                    env.run_migrations()
        except Exception as exc:
            pending = steps[len(applied) :]
            failed_rev = pending[0].revision.revision if pending else None
            if self._conn is not None and (self._conn.invalidated or self._conn.closed):
                self.close()
            what = f"revision {failed_rev}: " if failed_rev else ""
            return TargetResult.of(
                target,
                index,
                "failed",
                before=_heads_str(before),
                after=_heads_str(before),
                revisions=tuple(s.revision.revision for s in steps),
                error=what + first_line(exc),
                started=started,
                deterministic=is_deterministic(exc),
            )
        after = _final_heads(before, steps) if steps else _heads_str(before)
        return TargetResult.of(
            target,
            index,
            "migrated" if steps else "current",
            before=_heads_str(before),
            after=after,
            revisions=tuple(applied),
            started=started,
        )

    # -- read-only --------------------------------------------------------------------

    def current(self, target: MigrationTarget) -> tuple[str, ...]:
        """The target's current heads (empty: no version table or no row)."""
        refused = self.refusal(target)
        if refused:
            raise PermissionError(refused)
        conn = self._connection(target)
        with conn.begin() as tx:
            ctx = MigrationContext.configure(conn, opts={"version_table_schema": target.schema})
            heads = ctx.get_current_heads()
            tx.rollback()
        return heads

    def pending(self, target: MigrationTarget, index: int = 0) -> TargetResult:
        """Dry run: the revisions ``upgrade`` would apply, without taking any lock."""
        started = time.perf_counter()
        refused = self.refusal(target)
        if refused:
            return _failed(target, index, refused, started, _refusal_recurs(target))
        try:
            heads = self.current(target)
            steps = self.script._upgrade_revs(self.destination, heads)  # type: ignore[arg-type]
        except Exception as exc:
            self.close()
            return _failed(target, index, first_line(exc), started, is_deterministic(exc))
        return TargetResult.of(
            target,
            index,
            "pending" if steps else "current",
            before=_heads_str(heads),
            after=_final_heads(heads, steps) if steps else _heads_str(heads),
            revisions=tuple(s.revision.revision for s in steps),
            started=started,
        )

    def render(self, target: MigrationTarget, index: int = 0) -> TargetResult:
        """``--sql``: the tenant's pending SQL from its current revision, not executed."""
        result = self.pending(target, index)
        if result.status == "failed":
            return result
        result.sql = render_sql(
            self.config,
            self.script,
            target,
            starting=result.before,
            destination=self.destination,
        )
        return result


_REGCLASS_SQL = text("SELECT to_regclass(:name) IS NOT NULL")


def _known_version_table(ctx: MigrationContext, conn: Connection, schema: str) -> None:
    """Answer Alembic's "is there a version table?" with one O(1) catalog lookup.

    Alembic asks twice per run through SQLAlchemy's ``has_table``, whose query scans
    every ``alembic_version`` in the database (one per tenant schema): measured
    ~1.1 ms per call at 150 tenants and growing with N. ``to_regclass`` on the
    qualified name is an index probe. Private hooks: if a future Alembic renames
    them, this silently falls back to Alembic's own check.
    """
    if not (hasattr(ctx, "_has_version_table") and hasattr(ctx, "_ensure_version_table")):
        return
    name = f"{quote_ident(schema)}.{quote_ident(ctx.version_table)}"
    exists = bool(conn.execute(_REGCLASS_SQL, {"name": name}).scalar())
    version = ctx._version

    def has_version_table() -> bool:
        return exists

    def ensure_version_table(purge: bool = False) -> None:
        nonlocal exists
        if not exists:
            version.create(conn, checkfirst=False)
            exists = True
        if purge:
            conn.execute(version.delete())

    ctx._has_version_table = has_version_table  # type: ignore[method-assign]
    ctx._ensure_version_table = ensure_version_table  # type: ignore[method-assign]


def _refusal_recurs(target: MigrationTarget) -> bool:
    """A role mismatch recurs; an unavailable target's reason says for itself."""
    return target.permanent if target.unavailable else True


def _failed(
    target: MigrationTarget, index: int, error: str, started: float, deterministic: bool = True
) -> TargetResult:
    """A target refused or failed before its transaction (a refusal recurs on a retry)."""
    return TargetResult.of(
        target, index, "failed", error=error, started=started, deterministic=deterministic
    )


def _at_or_below(script: ScriptDirectory, destination: str, current: tuple[str, ...]) -> bool:
    """Every current head is ``destination`` or one of its ancestors (or there is none):
    a downgrade to ``destination`` has nothing to do."""
    if destination == "base":
        return not current
    below = {r.revision for r in script.walk_revisions(base="base", head=destination)}
    return all(head in below for head in current)


def _final_heads(before: tuple[str, ...], steps: list[RevisionStep]) -> str | None:
    heads = set(before)
    for step in steps:  # up: down revisions -> the revision; down: the reverse
        heads -= set(step.from_revisions)
        heads |= set(step.to_revisions)
    return _heads_str(heads)


def render_sql(
    config: Config,
    script: ScriptDirectory,
    target: MigrationTarget,
    *,
    starting: str | None,
    destination: str = "heads",
) -> str:
    """Offline rendering of exactly the transaction :meth:`TenantMigrator.upgrade` runs."""
    buf = io.StringIO()

    def plan(rev: tuple[str, ...], _ctx: MigrationContext) -> list[RevisionStep]:
        return script._upgrade_revs(destination, rev)  # type: ignore[arg-type]

    with EnvironmentContext(
        config,
        script,
        fn=plan,
        as_sql=True,
        starting_rev=starting,
        destination_rev=destination,
    ) as env:
        env.configure(
            dialect_name="postgresql",
            version_table_schema=target.schema,
            transactional_ddl=True,
            literal_binds=True,
            output_buffer=buf,
        )
        with env.begin_transaction():
            if starting is not None:
                # From base, Alembic's own CREATE TABLE comes next, and a second run of
                # the script fails on it: creating the table is the lock then.
                env.execute(
                    f"LOCK TABLE {quote_ident(target.schema)}.alembic_version IN EXCLUSIVE MODE"
                )
            env.execute(f"SET LOCAL search_path TO {quote_ident(target.schema)}")
            env.run_migrations()
    return buf.getvalue()


def render_revision(script: ScriptDirectory, revision: str, schema: str) -> str:
    """One revision's upgrade as offline SQL, without the version table's statements
    (the runner of rendered SQL keeps that table itself). Runs the revision's code:
    only in a sandbox child (see :mod:`tenant_infra.migrate.rendered`)."""
    from alembic.operations import Operations

    buf = io.StringIO()
    ctx = MigrationContext.configure(
        dialect_name="postgresql",
        opts={
            "as_sql": True,
            "output_buffer": buf,
            "literal_binds": True,
            "transactional_ddl": True,
            "version_table_schema": schema,
        },
    )
    found = script.get_revision(revision)
    if found is None:
        raise ValueError(f"no revision {revision!r}")
    with Operations.context(ctx):
        found.module.upgrade()
    return buf.getvalue()
