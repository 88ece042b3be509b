"""Read many tenants' version tables at once, so a fleet already at head costs no
tenant process and no tenant connection.

A tenant at head costs the online runner a confined child, a connection as its role
and a lock: about 30 ms of wall time (``bench/RESULTS.md``). Here the platform's own
connection (the discovery DSN, or generic mode's) reads the committed version rows of
a database's tenant schemas in a few statements per batch, and only the tenants whose
rows are not exactly the head go to the runner. The decision is the runner's own (it
reads the same table and does nothing when it holds the head), made earlier.

The tables are tenant-owned, so no tenant code may run while the platform reads them:

- each table is locked (``ACCESS SHARE``, ``NOWAIT``) first, then checked in the
  catalog: a plain table (not a view, whose functions would run as the reader),
  without row-level security (whose policies would), whose ``version_num`` is a
  built-in ``varchar`` or ``text`` (no cast, no tenant output function); the lock
  keeps it so until the read;
- ``search_path`` is ``pg_catalog``, row security is off (an RLS table errors), the
  transaction is read-only, and each table is read with ``COPY ... TO STDOUT``, which
  never plans a query: no index expression, predicate or statistics expression of
  the tenant's is evaluated as the reader (planning a ``SELECT`` would fold them);
- a table that fails a check, cannot be locked at once (a tenant holding its own
  lock never blocks its neighbours' batch), or that the reader may not read, is not
  decided here: that tenant goes to the runner, as before.

A tenant can still write the head into its own table: the runner, reading the same
row, would do nothing either.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from sqlalchemy import Connection, text

from tenant_infra.migrate.connection import connect, with_database
from tenant_infra.migrate.engine import _sqlstate
from tenant_infra.migrate.targets import MigrationTarget
from tenant_infra.tenant import quote_ident

#: Schemas read per transaction: bounds the locks one transaction holds (the shared
#: lock table has ``max_locks_per_transaction * max_connections`` slots).
BATCH: Final = 500
#: A read that takes longer than this is given up; its tenants go to the runner.
STATEMENT_TIMEOUT_MS: Final = 30_000

_CANDIDATES: Final = text(
    """
    SELECT n.nspname
    FROM pg_catalog.pg_namespace n
    JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid
    WHERE n.nspname = ANY(:schemas) AND c.relname = 'alembic_version' AND c.relkind = 'r'
      AND pg_catalog.has_schema_privilege(n.oid, 'USAGE')
      AND pg_catalog.has_table_privilege(c.oid, 'SELECT')
    """
)
# After the lock: nothing in the table can run code as the reader.
_SAFE: Final = text(
    """
    SELECT n.nspname
    FROM pg_catalog.pg_namespace n
    JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid
    JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid
    WHERE n.nspname = ANY(:schemas) AND c.relname = 'alembic_version' AND c.relkind = 'r'
      AND NOT c.relrowsecurity
      AND a.attname = 'version_num' AND NOT a.attisdropped
      AND a.atttypid IN ('pg_catalog.varchar'::pg_catalog.regtype,
                         'pg_catalog.text'::pg_catalog.regtype)
    """
)
#: More version rows than this is no head a runner would skip: the runner decides.
MAX_ROWS: Final = 16


def _table(schema: str) -> str:
    return f"{quote_ident(schema)}.alembic_version"


def _read_batch(conn: Connection, schemas: Sequence[str]) -> dict[str, frozenset[str]]:
    """The committed versions of ``schemas`` that are safe to read; the others are
    left out (they go to the runner)."""
    found = [r[0] for r in conn.execute(_CANDIDATES, {"schemas": list(schemas)})]
    if not found:
        return {}
    locked = _lock(conn, found)
    if not locked:
        return {}
    safe = sorted(r[0] for r in conn.execute(_SAFE, {"schemas": locked}))
    out: dict[str, frozenset[str]] = {}
    raw = conn.connection.driver_connection
    assert raw is not None
    for schema in safe:
        # COPY of a plain table never goes through the planner: no index expression,
        # predicate or statistics expression of the tenant's is evaluated as the reader
        # (a SELECT would fold them while planning). At most a few rows are kept.
        rows: set[str] = set()
        with raw.cursor().copy(f"COPY {_table(schema)} (version_num) TO STDOUT") as copy:
            for row in copy.rows():
                if len(rows) > MAX_ROWS:
                    break
                rows.add(str(row[0]))
        if len(rows) <= MAX_ROWS:
            out[schema] = frozenset(rows)
    return out


def _lock(conn: Connection, schemas: list[str]) -> list[str]:
    """Lock what can be locked at once; a batch that cannot is halved, so one
    tenant holding its own table only sends itself to the runner."""
    savepoint = conn.begin_nested()
    try:
        tables = ", ".join(f"ONLY {_table(s)}" for s in schemas)
        conn.exec_driver_sql(f"LOCK TABLE {tables} IN ACCESS SHARE MODE NOWAIT")
    except Exception as exc:
        savepoint.rollback()
        if len(schemas) == 1 or _sqlstate(exc) is None:
            return []
        middle = len(schemas) // 2
        return _lock(conn, schemas[:middle]) + _lock(conn, schemas[middle:])
    savepoint.commit()
    return schemas


def read_versions(
    params: Mapping[str, str], targets: Iterable[MigrationTarget]
) -> dict[MigrationTarget, frozenset[str]]:
    """Each target's committed versions, for the targets that could be read safely
    (see the module's docstring); a database that cannot be reached reads nothing."""
    by_database: dict[str | None, list[MigrationTarget]] = {}
    for target in targets:
        by_database.setdefault(target.database, []).append(target)
    out: dict[MigrationTarget, frozenset[str]] = {}
    for database, group in by_database.items():
        try:
            conn = connect(with_database(params, database))
        except Exception:
            continue
        with conn:
            by_schema = {t.schema: t for t in group}
            schemas = sorted(by_schema)
            for start in range(0, len(schemas), BATCH):
                try:
                    with conn.begin():
                        conn.exec_driver_sql("SET TRANSACTION READ ONLY")
                        conn.exec_driver_sql("SET LOCAL search_path = pg_catalog")
                        conn.exec_driver_sql("SET LOCAL row_security = off")
                        conn.exec_driver_sql(
                            f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}"
                        )
                        read = _read_batch(conn, schemas[start : start + BATCH])
                except Exception:
                    continue  # e.g. the connection dropped: these go to the runner
                for schema, versions in read.items():
                    out[by_schema[schema]] = versions
    return out


def at_head(
    params: Mapping[str, str], targets: Sequence[MigrationTarget], head: str
) -> set[MigrationTarget]:
    """The targets whose committed versions are exactly ``head`` (comma-joined heads,
    as :func:`~tenant_infra.migrate.revisions.declared_head` gives them)."""
    wanted = frozenset(head.split(","))
    return {t for t, v in read_versions(params, targets).items() if v == wanted}
