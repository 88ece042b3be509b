"""Copy a tenant schema's rows into the same schema of another database, fast.

The target's tables already exist (migrated to the source's revision by the
product's own migrations), so only rows and sequence values move:

- the source is read as the platform's admin in one exported snapshot, by
  ``workers`` sessions at once, the largest tables first;
- the target is written by a short-lived login of the platform's (:func:`copier`)
  acting as the tenant's new login (``SET ROLE``), so whatever the product's
  revisions defined there (a trigger, a check) runs with the tenant's rights, and
  even ``RESET ROLE`` only reaches the copier, which holds nothing else; never the
  admin's. ``session_replication_role = replica`` (granted to the copier alone,
  PostgreSQL 15's ``GRANT SET ON PARAMETER``) keeps ordinary triggers and
  foreign-key checks from firing on rows that were already checked at the source (an
  append-only audit table's trigger must not refuse them);
- ``COPY`` streams between the two in the binary format when every column's type is
  built in (else text), with no intermediate file: what ``pg_dump | pg_restore``
  does, without the archive's compression, and in parallel;
- as ``pg_restore`` does, indexes that back no constraint are dropped before the rows
  arrive and built after, two at a time, from definitions the caller kept from
  before (the ones the product's migrations made: a run killed in between rebuilds
  them all when run again, and nothing the tenant defined at the source is carried).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from tenant_infra.pgdata.inventory import SequenceValue, Table, qualified, stabilize
from tenant_infra.retry import with_retries

#: ``(done, total, table)`` after each table, as django-tenants' ``[i/n schema]``.
CopyProgress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class CopyReport:
    tables: int
    bytes: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"tables": self.tables, "bytes": self.bytes, "seconds": round(self.seconds, 3)}


def reader(params: Mapping[str, Any], snapshot: str) -> psycopg.Connection[Any]:
    """An admin session of the source in ``snapshot`` (read only)."""
    conn = psycopg.connect(**params, autocommit=True)
    stabilize(conn)
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
    return conn


@contextlib.contextmanager
def copier(admin: Mapping[str, Any], login: str) -> Iterator[dict[str, Any]]:
    """Connection parameters of a login that may act as ``login`` and nothing more.

    Created for one copy (a random password, valid one day at most) and dropped
    after it; one left by a killed run has the same name and is replaced.
    """
    with temporary_login(admin, _copier_name(login), member_of=login) as params:
        yield params


@contextlib.contextmanager
def temporary_login(
    admin: Mapping[str, Any], name: str, member_of: str | None = None
) -> Iterator[dict[str, Any]]:
    """:func:`create_login` for the block only; dropped on the way out."""
    params = create_login(admin, name, member_of)
    try:
        yield params
    finally:
        # Never in place of the error that ended the operation; a role left behind
        # expires in a day and is replaced by the next run (or dropped by an abort).
        with contextlib.suppress(psycopg.Error):
            drop_login(admin, name)


def create_login(
    admin: Mapping[str, Any], name: str, member_of: str | None = None
) -> dict[str, Any]:
    """A platform login for one operation: NOINHERIT, CONNECT on the admin's database,
    allowed ``session_replication_role`` (PostgreSQL 15's ``GRANT SET ON PARAMETER``)
    and, with ``member_of``, ``SET ROLE`` to that login; nothing else. Its random
    password reaches the server as a SCRAM verifier only, is valid a day at most, and
    never leaves this process. One a killed run left (same name) is dropped first,
    with whatever it owns in the admin's database.
    """
    password = secrets.token_urlsafe(24)
    role = sql.Identifier(name)
    database = sql.Identifier(str(admin["dbname"]))
    with psycopg.connect(**admin, autocommit=True) as conn:
        _drop_login(conn, role)
        conn.execute(
            sql.SQL(
                "CREATE ROLE {} LOGIN NOINHERIT PASSWORD {} CONNECTION LIMIT 16 VALID UNTIL {}"
            ).format(
                role,
                sql.Literal(scram_verifier(password)),
                sql.Literal((datetime.now(UTC) + timedelta(days=1)).isoformat()),
            )
        )
        if member_of is not None:
            conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(member_of), role))
        # The database's and the parameter's privileges are one row each, which other
        # tenants' grants change too (tenant_infra.retry).
        _shared_row(conn, sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(database, role))
        _shared_row(
            conn, sql.SQL("GRANT SET ON PARAMETER session_replication_role TO {}").format(role)
        )
    return {**admin, "user": name, "password": password}


def login_again(admin: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A :func:`create_login` of an earlier run, allowed to log in again with a new
    password (the old one died with that run's process)."""
    password = secrets.token_urlsafe(24)
    until = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    with psycopg.connect(**admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER ROLE {} LOGIN PASSWORD {} VALID UNTIL {}").format(
                sql.Identifier(name), sql.Literal(scram_verifier(password)), sql.Literal(until)
            )
        )
    return {**admin, "user": name, "password": password}


def drop_copier(admin: Mapping[str, Any], login: str) -> None:
    """The copier of ``login``, if a run left one."""
    drop_login(admin, _copier_name(login))


def drop_login(admin: Mapping[str, Any], name: str) -> None:
    """A :func:`temporary_login`, with what it owns in the admin's database."""
    with psycopg.connect(**admin, autocommit=True) as conn:
        _drop_login(conn, sql.Identifier(name))


def _copier_name(login: str) -> str:
    return "tenant_infra__copy_" + hashlib.sha256(login.encode()).hexdigest()[:12]


def scram_verifier(password: str, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5803 form):
    sent instead of the password, which then never reaches a server log."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client = hmac.new(salted, b"Client Key", "sha256").digest()
    server = hmac.new(salted, b"Server Key", "sha256").digest()
    stored = hashlib.sha256(client).digest()
    encode = base64.b64encode
    return (
        f"SCRAM-SHA-256${iterations}:{encode(salt).decode()}"
        f"${encode(stored).decode()}:{encode(server).decode()}"
    )


def _drop_login(conn: psycopg.Connection[Any], role: sql.Identifier) -> None:
    name = role.as_string(conn).strip('"')
    if conn.execute("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", (name,)).fetchone():
        conn.execute(
            "SELECT pg_catalog.pg_terminate_backend(pid, 5000) FROM pg_catalog.pg_stat_activity"
            " WHERE usename = %s",
            (name,),
        )
        _shared_row(conn, sql.SQL("DROP OWNED BY {}").format(role))
        conn.execute(sql.SQL("DROP ROLE {}").format(role))


def _shared_row(conn: psycopg.Connection[Any], statement: sql.Composed) -> None:
    """``statement``, again when a concurrent writer of the same catalog row made it
    fail (it changes privileges, which another tenant's grant may change at once)."""
    with_retries(lambda: conn.execute(statement))


def writer(params: Mapping[str, Any], login: str) -> psycopg.Connection[Any]:
    """A :func:`copier` session of the target acting as ``login``, triggers off."""
    conn = psycopg.connect(**params, autocommit=True)
    stabilize(conn)
    conn.execute("SET session_replication_role = replica")
    conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(login)))
    return conn


def _copy_table(
    source: psycopg.Connection[Any], target: psycopg.Connection[Any], schema: str, table: Table
) -> None:
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in table.copied)
    form = sql.SQL("binary" if table.builtin_types else "text")
    out = sql.SQL("COPY {} ({}) TO STDOUT (FORMAT {})").format(
        qualified(schema, table.name), columns, form
    )
    into = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT {})").format(
        qualified(schema, table.name), columns, form
    )
    with (
        target.transaction(),
        target.cursor().copy(into) as sink,
        source.cursor().copy(out) as rows,
    ):
        for chunk in rows:
            sink.write(chunk)


#: Indexes that back no constraint (primary keys and unique constraints stay).
_SECONDARY = """
SELECT c.relname, pg_catalog.pg_get_indexdef(i.indexrelid)
FROM pg_catalog.pg_index i
JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
JOIN pg_catalog.pg_class t ON t.oid = i.indrelid
JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace
WHERE n.nspname = %s AND t.relkind = 'r' AND NOT EXISTS (
    SELECT 1 FROM pg_catalog.pg_constraint k WHERE k.conindid = i.indexrelid)
ORDER BY pg_catalog.pg_relation_size(i.indrelid) DESC, c.relname
"""
#: Memory for each index build (a session setting any login may raise).
INDEX_BUILD_MEMORY = "256MB"


def secondary_indexes(conn: psycopg.Connection[Any], schema: str) -> dict[str, str]:
    """The schema's indexes that back no constraint: name to definition."""
    return {str(r[0]): str(r[1]) for r in conn.execute(_SECONDARY, (schema,))}


def parallel(work: Sequence[Any], workers: int, action: Callable[[Any], None]) -> None:
    """``action`` on every item, ``workers`` at a time; the first failure is raised."""
    todo: queue.Queue[Any] = queue.Queue()
    for item in work:
        todo.put(item)
    failures: list[BaseException] = []

    def run() -> None:
        try:
            while True:
                try:
                    item = todo.get_nowait()
                except queue.Empty:
                    return
                action(item)
        except BaseException as exc:
            failures.append(exc)
            while not todo.empty():
                todo.get_nowait()

    threads = [threading.Thread(target=run) for _ in range(max(1, min(workers, len(work))))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]


class Sessions:
    """One connection per thread and kind, all closed together (``with``)."""

    def __init__(self, **open_: Callable[[], psycopg.Connection[Any]]) -> None:
        self._open, self._local, self._lock = open_, threading.local(), threading.Lock()
        self._all: list[psycopg.Connection[Any]] = []

    def __call__(self, kind: str) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(self._local, kind, None)
        if conn is None:
            conn = self._open[kind]()
            setattr(self._local, kind, conn)
            with self._lock:
                self._all.append(conn)
        return conn

    def __enter__(self) -> Sessions:
        return self

    def __exit__(self, *_exc: object) -> None:
        for conn in self._all:
            conn.close()


def empty_tables(target: psycopg.Connection[Any], schema: str, tables: Sequence[Table]) -> None:
    """Drop the schema's secondary indexes and empty ``tables``: ready for a bulk load."""
    for name in secondary_indexes(target, schema):
        target.execute(sql.SQL("DROP INDEX {}").format(qualified(schema, name)))
    if tables:
        target.execute(
            sql.SQL("TRUNCATE {}").format(
                sql.SQL(", ").join(qualified(schema, t.name) for t in tables)
            )
        )


#: Constraints a bulk load is faster without (their indexes are built after, sorted,
#: as ``pg_restore`` does): foreign keys, then primary keys, unique and exclusion.
_KEYS = """
SELECT t.relname, c.conname, c.contype, pg_catalog.pg_get_constraintdef(c.oid)
FROM pg_catalog.pg_constraint c
JOIN pg_catalog.pg_class t ON t.oid = c.conrelid
JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace
WHERE n.nspname = %s AND c.contype IN ('f', 'p', 'u', 'x')
ORDER BY c.contype = 'f' DESC, pg_catalog.pg_relation_size(t.oid) DESC, c.conname
"""


@dataclass(frozen=True)
class Key:
    table: str
    name: str
    foreign: bool
    #: ``pg_get_constraintdef`` read with ``search_path`` pinned: references qualified.
    definition: str


def drop_keys(target: psycopg.Connection[Any], schema: str) -> list[Key]:
    """Drop the schema's keys (foreign first) before a bulk load into empty tables;
    returns them, to be added again by :func:`add_keys`. ``target`` is stabilized."""
    keys = [
        Key(str(r[0]), str(r[1]), r[2] == "f", str(r[3]))
        for r in target.execute(_KEYS, (schema,)).fetchall()
    ]
    for key in keys:
        target.execute(
            sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                qualified(schema, key.table), sql.Identifier(key.name)
            )
        )
    return keys


def add_keys(
    sessions: Callable[[], psycopg.Connection[Any]], schema: str, keys: Sequence[Key], workers: int
) -> None:
    """The keys :func:`drop_keys` dropped, their indexes built ``workers`` at a time,
    then the foreign keys, which need them."""

    def add(key: Key) -> None:
        target = sessions()
        target.execute(
            sql.SQL("SET maintenance_work_mem = {}").format(sql.Literal(INDEX_BUILD_MEMORY))
        )
        target.execute(
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                qualified(schema, key.table), sql.Identifier(key.name), sql.SQL(key.definition)
            )
        )

    parallel([k for k in keys if not k.foreign], workers, add)
    parallel([k for k in keys if k.foreign], workers, add)


def build_indexes(
    sessions: Callable[[], psycopg.Connection[Any]], indexes: Mapping[str, str], workers: int
) -> None:
    """Build ``indexes`` (name to definition), ``workers`` at a time, each on its
    thread's session of ``sessions``; one that exists already is kept."""

    def build(index: tuple[str, str]) -> None:
        target = sessions()
        target.execute(
            sql.SQL("SET maintenance_work_mem = {}").format(sql.Literal(INDEX_BUILD_MEMORY))
        )
        definition = index[1].replace("CREATE INDEX ", "CREATE INDEX IF NOT EXISTS ", 1)
        definition = definition.replace(
            "CREATE UNIQUE INDEX ", "CREATE UNIQUE INDEX IF NOT EXISTS ", 1
        )
        target.execute(definition.encode())

    parallel(sorted(indexes.items()), workers, build)


def copy_schema(
    source_params: Mapping[str, Any],
    target_params: Mapping[str, Any],
    schema: str,
    tables: Sequence[Table],
    snapshot: str,
    login: str,
    indexes: Mapping[str, str],
    workers: int = 2,
    progress: CopyProgress | None = None,
) -> CopyReport:
    """Empty the target's tables, then copy every row of ``tables`` as of ``snapshot``."""
    started = time.monotonic()
    with writer(target_params, login) as target:
        empty_tables(target, schema, tables)
    lock, done = threading.Lock(), [0]
    with Sessions(
        source=lambda: reader(source_params, snapshot),
        target=lambda: writer(target_params, login),
    ) as session:

        def copy_one(table: Table) -> None:
            _copy_table(session("source"), session("target"), schema, table)
            with lock:
                done[0] += 1
                if progress is not None:
                    progress(done[0], len(tables), table.name)

        parallel(sorted(tables, key=lambda t: t.bytes, reverse=True), workers, copy_one)
        build_indexes(lambda: session("target"), indexes, workers)
    return CopyReport(len(tables), sum(t.bytes for t in tables), time.monotonic() - started)


def copy_sequences(
    target_params: Mapping[str, Any],
    schema: str,
    sequences: Sequence[SequenceValue],
    login: str,
) -> None:
    """Each target sequence set to its source's value (identity columns' too)."""
    with writer(target_params, login) as target:
        for seq in sequences:
            target.execute(
                "SELECT pg_catalog.setval(%s::regclass, %s, %s)",
                (qualified(schema, seq.name).as_string(target), seq.last_value, seq.is_called),
            )
