"""``pg_dump`` and ``pg_restore`` for one tenant schema, driven the way a restore must.

- :func:`snapshot_of` holds a schema still for a dump: an admin session in
  ``REPEATABLE READ`` takes ``ACCESS SHARE`` on every table *before* its snapshot
  exists (the order ``LOCK TABLE``'s documentation asks for), then exports it. The
  dump (``pg_dump --snapshot``) and the manifest's counts and checksums read that one
  snapshot, so they describe the same rows; no table can be dropped or altered in
  between. Writes go on.
- :func:`load_table` restores one table's rows from a custom-format archive into a
  table of *another* schema: ``pg_restore --data-only --table`` prints the table's
  ``COPY`` block (it seeks straight to it) and the block's rows are streamed into
  ``COPY <schema>.<table> (<the dump's columns>) FROM STDIN`` on a session the caller
  chose. ``pg_restore`` itself cannot rename a schema, and a restore must never write
  over the live one.

The children get a minimal environment: the operator's (``VAULT_TOKEN``, other
passwords) is not theirs to see. The admin's password reaches ``pg_dump`` in
``PGPASSWORD``, libpq's own channel: never in its argv or in a file.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import psycopg
from psycopg import sql

from tenant_infra.errors import OperationFailed, scrub
from tenant_infra.pgdata.inventory import Inventory, Table, read_inventory, stabilize

#: How long ``pg_dump`` waits for a table lock a tenant's session holds.
LOCK_WAIT = "30s"
CHUNK = 1 << 20
_END_OF_DATA = b"\n\\.\n"
_ENCODING = re.compile(rb"^SET client_encoding = '([A-Za-z0-9_]+)';$")


def tool_version(tool: str) -> str:
    """``pg_dump (PostgreSQL) 15.4``, or why it cannot be run."""
    try:
        done = subprocess.run(
            [tool, "--version"], capture_output=True, text=True, timeout=30, env=_child_environ()
        )
    except OSError as exc:
        raise OperationFailed(f"{tool} cannot be run: {exc.strerror or exc}") from None
    return done.stdout.strip()


def _child_environ(params: Mapping[str, Any] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ")}
    if params is None:
        return env
    keywords = {
        "host": "PGHOST",
        "port": "PGPORT",
        "user": "PGUSER",
        "dbname": "PGDATABASE",
        "sslmode": "PGSSLMODE",
        "connect_timeout": "PGCONNECT_TIMEOUT",
        "application_name": "PGAPPNAME",
        "password": "PGPASSWORD",
    }
    env.update({var: str(params[key]) for key, var in keywords.items() if params.get(key)})
    return env


@contextlib.contextmanager
def snapshot_of(params: Mapping[str, Any], schema: str) -> Iterator[tuple[str, Inventory]]:
    """``(snapshot, inventory)`` of ``schema``, held (tables locked against DDL, the
    snapshot importable) until the block ends."""
    with psycopg.connect(**params, autocommit=True) as listing:
        stabilize(listing)
        names = [
            str(row[0])
            for row in listing.execute(
                "SELECT c.relname FROM pg_catalog.pg_class c"
                " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND c.relkind = 'r' ORDER BY 1",
                (schema,),
            )
        ]
    conn = psycopg.connect(**params, autocommit=True)
    try:
        stabilize(conn)
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        conn.execute(f"SET LOCAL lock_timeout = '{LOCK_WAIT}'")
        if names:
            conn.execute(
                sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(
                    sql.SQL(", ").join(sql.Identifier(schema, n) for n in names)
                )
            )
        row = conn.execute("SELECT pg_catalog.pg_export_snapshot()").fetchone()
        assert row is not None
        inventory = read_inventory(conn, schema)
        if sorted(t.name for t in inventory.tables) != names:
            # A table came or went between the listing and the lock: nothing was
            # read yet, so the caller just tries again.
            raise OperationFailed(f"the tables of {schema} changed while it was read; run it again")
        yield str(row[0]), inventory
    finally:
        conn.close()


def dump_schema(params: Mapping[str, Any], schema: str, snapshot: str, path: Path) -> None:
    """``pg_dump --format=custom`` of ``schema`` alone, as of ``snapshot``, to ``path``."""
    argv = [
        "pg_dump",
        "--format=custom",
        f"--snapshot={snapshot}",
        f'--schema="{schema}"',
        f"--lock-wait-timeout={LOCK_WAIT}",
        "--no-password",
        f"--file={path}",
    ]
    _run(argv, _child_environ(params), "pg_dump")


def _run(argv: list[str], env: Mapping[str, str], what: str) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, env=dict(env), check=False)
    except OSError as exc:
        raise OperationFailed(f"{what} cannot be run: {exc.strerror or exc}") from None
    if done.returncode != 0:
        raise OperationFailed(f"{what} failed: {_first_error(done.stderr)}")


def _first_error(stderr: bytes) -> str:
    lines = [line for line in stderr.decode(errors="replace").splitlines() if line.strip()]
    # The first line only: a DETAIL may quote the tenant's rows.
    return scrub(lines[0])[:300] if lines else "no message"


def list_contents(path: Path) -> str:
    """``pg_restore --list``: also proves the archive is one ``pg_restore`` can read."""
    try:
        done = subprocess.run(
            ["pg_restore", "--list", str(path)], capture_output=True, env=_child_environ()
        )
    except OSError as exc:
        raise OperationFailed(f"pg_restore cannot be run: {exc.strerror or exc}") from None
    if done.returncode != 0:
        raise OperationFailed(f"pg_restore cannot read {path.name}: {_first_error(done.stderr)}")
    return done.stdout.decode(errors="replace")


def load_table(
    archive: Path,
    dumped_schema: str,
    table: Table,
    target: psycopg.Connection[Any],
    into_schema: str,
) -> None:
    """Restore ``dumped_schema``'s ``table`` rows from ``archive`` into the same table of
    ``into_schema`` through ``target`` (in one transaction of its own). The archive's
    ``COPY`` line must name exactly the columns ``table`` says were copied; the
    statement sent is built from those, never from the archive's text."""
    argv = [
        "pg_restore",
        "--data-only",
        f"--schema={dumped_schema}",
        f"--table={table.name}",
        "--file=-",
        str(archive),
    ]
    prefix, columns = _expected(target, dumped_schema, table)
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_child_environ()
    ) as child:
        assert child.stdout is not None and child.stderr is not None
        try:
            encoding = _header(child.stdout, prefix, columns, table.name)
            listed = sql.SQL("({})").format(
                sql.SQL(", ").join(sql.Identifier(c) for c in table.copied)
            )
            into = sql.SQL("COPY {}.{} {} FROM STDIN").format(
                sql.Identifier(into_schema),
                sql.Identifier(table.name),
                listed if table.copied else sql.SQL(""),
            )
            with target.transaction():
                target.execute(
                    sql.SQL("SET LOCAL client_encoding = {}").format(sql.Literal(encoding))
                )
                with target.cursor().copy(into) as sink:
                    stream_block(child.stdout, sink.write)
        except BaseException:
            child.kill()
            raise
        finally:
            errors = child.stderr.read()
        if child.wait() != 0:
            raise OperationFailed(
                f"pg_restore of table {table.name} failed: {_first_error(errors)}"
            )


def _expected(conn: psycopg.Connection[Any], schema: str, table: Table) -> tuple[bytes, str]:
    """How ``pg_dump`` writes the table's ``COPY`` line (``quote_ident``'s rules, which
    are ``pg_dump``'s): ``COPY <schema>.<table> `` and ``(<columns>)``."""
    row = conn.execute(
        "SELECT pg_catalog.quote_ident(%s) || '.' || pg_catalog.quote_ident(%s),"
        " (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(c), ', ' ORDER BY i)"
        "  FROM pg_catalog.unnest(%s::text[]) WITH ORDINALITY AS u(c, i))",
        (schema, table.name, table.copied),
    ).fetchone()
    assert row is not None
    return f"COPY {row[0]} ".encode(), f"({row[1]})" if row[1] else ""


def _header(stream: IO[bytes], prefix: bytes, columns: str, table: str) -> str:
    """Read up to the table's ``COPY`` line, check it, and return the dump's encoding."""
    encoding = "UTF8"
    while True:
        line = stream.readline()
        if not line:
            raise OperationFailed(f"the backup holds no rows of table {table}")
        line = line.rstrip(b"\n")
        found = _ENCODING.match(line)
        if found:
            encoding = found.group(1).decode()
        elif line.startswith(b"COPY "):
            break
    if line != prefix + columns.encode() + b" FROM stdin;":
        raise OperationFailed(
            f"the backup's rows of table {table} are not of the columns its manifest lists"
        )
    return encoding


def stream_block(source: IO[bytes], sink: Callable[[bytes], None]) -> int:
    """Pass one ``COPY`` text block (what follows its header line) from ``source`` to
    ``sink``, up to and without its end-of-data line ``\\.``; returns the bytes passed.

    A data line is never ``\\.`` alone (COPY escapes every backslash), so the first
    such line ends the block, wherever the chunks happen to split it.
    """
    held, skip, passed = b"\n", 1, 0  # the header's newline: the block starts a line
    while True:
        chunk = source.read(CHUNK)
        if not chunk:
            raise OperationFailed("a table's data ends before its end-of-data line")
        data = held + chunk
        end = data.find(_END_OF_DATA)
        if end >= 0:
            body = data[skip : end + 1]
            if body:
                sink(body)
            return passed + len(body)
        cut = len(data) - (len(_END_OF_DATA) - 1)
        if cut > skip:
            sink(data[skip:cut])
            passed += cut - skip
            held, skip = data[cut:], 0
        else:
            held = data
