"""A write freeze on a tenant schema: reads go on, writes wait, while it is held.

One admin session takes ``EXCLUSIVE`` locks on every table of the schema, which
conflict with every write (``ROW EXCLUSIVE``) and no read (``ACCESS SHARE``), in a
``REPEATABLE READ`` transaction whose snapshot it exports for the copy's workers.
The tenant cannot lift a lock another session holds, whatever it owns; and the
freeze ends with that session, so a killed operation never leaves the tenant
frozen. Sessions of the tenant's login that hold a conflicting lock (an open write
transaction) are ended after a short wait, as the issue of a write freeze requires.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql

from tenant_infra.errors import OperationFailed
from tenant_infra.pgdata.inventory import qualified, stabilize

#: How long one attempt waits for the tenant's writers before ending them.
LOCK_WAIT_SECONDS = 5.0
ATTEMPTS = 4

_WRITERS = """
SELECT DISTINCT l.pid, pg_catalog.pg_terminate_backend(l.pid)
FROM pg_catalog.pg_locks l
JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
JOIN pg_catalog.pg_class c ON c.oid = l.relation
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND a.usename = ANY(%s) AND l.pid <> pg_catalog.pg_backend_pid()
  AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
  AND l.mode NOT IN ('AccessShareLock')
"""


_EVICT = """
SELECT DISTINCT a.pid, pg_catalog.pg_terminate_backend(a.pid, 5000)
FROM pg_catalog.pg_stat_activity a
LEFT JOIN pg_catalog.pg_locks l ON l.pid = a.pid
    AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
LEFT JOIN pg_catalog.pg_class c ON c.oid = l.relation
LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE a.pid <> pg_catalog.pg_backend_pid() AND a.backend_type = 'client backend'
  AND ((n.nspname = %s AND (NOT l.granted OR l.mode <> 'AccessShareLock'))
       OR a.usename = ANY(%s))
"""


class WriteFreeze:
    """``with WriteFreeze(params, schema, tables, logins) as freeze: freeze.snapshot``."""

    def __init__(
        self,
        params: Mapping[str, Any],
        schema: str,
        tables: Sequence[str],
        logins: Sequence[str],
        lock_wait: float = LOCK_WAIT_SECONDS,
    ) -> None:
        self.params, self.schema, self.tables = dict(params), schema, list(tables)
        self.logins, self.lock_wait = list(logins), lock_wait
        self.conn: psycopg.Connection[Any] | None = None
        self.snapshot = ""
        #: When the locks were granted (``time.monotonic()``), and writers ended.
        self.since = 0.0
        self._ended: set[int] = set()

    def __enter__(self) -> WriteFreeze:
        conn = psycopg.connect(**self.params, autocommit=True)
        self.conn = conn
        try:
            stabilize(conn)
            self._lock(conn)
        except BaseException:
            conn.close()
            raise
        return self

    def _lock(self, conn: psycopg.Connection[Any]) -> None:
        targets = sql.SQL(", ").join(qualified(self.schema, t) for t in self.tables)
        for _attempt in range(ATTEMPTS):
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            conn.execute(
                sql.SQL("SET LOCAL lock_timeout = {}").format(
                    sql.Literal(f"{int(self.lock_wait * 1000)}ms")
                )
            )
            try:
                if self.tables:
                    # The first statement: the snapshot is taken after the locks.
                    conn.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(targets))
                row = conn.execute("SELECT pg_catalog.pg_export_snapshot()").fetchone()
            except psycopg.errors.LockNotAvailable:
                conn.execute("ROLLBACK")
                ended = conn.execute(_WRITERS, (self.schema, self.logins)).fetchall()
                self._ended.update(int(row[0]) for row in ended)
                time.sleep(0.1)
                continue
            assert row is not None
            self.snapshot, self.since = str(row[0]), time.monotonic()
            return
        raise OperationFailed(
            f"could not freeze writes on schema {self.schema}: another session kept a lock on "
            f"its tables for {ATTEMPTS} waits of {self.lock_wait:g} s; run it again"
        )

    @property
    def ended_writers(self) -> int:
        """How many of the tenant's sessions were ended for holding a write lock."""
        return len(self._ended)

    def evict(self) -> int:
        """End every other session that waits for a lock on the schema's tables or
        holds one stronger than a read, and every session of the logins, before the
        freeze ends (readers, a backup's among them, go on): a write
        queued behind it (by a role the tenant granted, or a login that slipped in)
        would otherwise land on a source already verified. Returns how many."""
        assert self.conn is not None
        ended: set[int] = set()
        for _round in range(10):
            rows = self.conn.execute(_EVICT, (self.schema, self.logins)).fetchall()
            if not rows:
                return len(ended)
            ended.update(int(row[0]) for row in rows)
        raise OperationFailed(
            f"sessions kept coming back to schema {self.schema} while it was sealed; run it again"
        )

    def __exit__(self, *_exc: object) -> None:
        if self.conn is not None:
            try:
                self.conn.execute("ROLLBACK")
            finally:
                self.conn.close()
                self.conn = None
