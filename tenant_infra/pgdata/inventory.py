"""What a tenant schema holds: its tables (columns, rows, bytes), sequences and revision."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

#: Settings under which every value prints the same way on every server and session:
#: checksums hash rows as text, so both sides must print them identically.
STABLE_SETTINGS = (
    "SET search_path = pg_catalog, pg_temp",
    "SET TimeZone = 'UTC'",
    "SET DateStyle = 'ISO, YMD'",
    "SET IntervalStyle = 'postgres'",
    "SET extra_float_digits = 3",
    "SET bytea_output = 'hex'",
    "SET lc_monetary = 'C'",
    # Row-level security must never hide rows from a copy or a checksum: with it
    # off, a query it would filter fails instead.
    "SET row_security = off",
)
#: Alembic's version table, in the tenant schema: made by the migrations on both sides
#: and compared as the revision, never copied (a copy killed half-way would leave the
#: target looking unmigrated).
VERSION_TABLE = "alembic_version"
#: Built-in types whose extended hash is exactly their identity (two values hash
#: alike only if they print alike): bool, bytea, int8, int2, int4, date, time,
#: timestamp, timestamptz, uuid; and text and varchar, hashed under the "C" collation
#: (a nondeterministic one would hash 'Alice' as 'alice'). Any other column is hashed
#: through its text form: numeric's scale, jsonb's numbers, an array's bounds,
#: float's -0 and interval's units all print, and none of them hash.
EXACT_TYPES = (16, 17, 20, 21, 23, 1082, 1083, 1114, 1184, 2950)
TEXT_TYPES = (25, 1043)
#: The first OID of objects users create: types below it are built in.
FIRST_USER_OID = 16384


@dataclass(frozen=True)
class Table:
    name: str
    #: Every column, in order, as ``(name, type)``.
    columns: tuple[tuple[str, str], ...]
    #: Generated columns: checksummed, never copied (the target computes them).
    generated: frozenset[str]
    #: Every column's type is built in: the binary COPY format is safe for it.
    builtin_types: bool
    #: How each column is hashed: ``value``, ``text`` (under "C"), ``printed`` (a
    #: built-in type's text) or ``output`` (a type the tenant may own: see checksum).
    hashed_as: tuple[str, ...]
    rows_estimate: int
    bytes: int

    @property
    def copied(self) -> list[str]:
        return [name for name, _ in self.columns if name not in self.generated]

    def shape(self) -> tuple[tuple[str, str], ...]:
        return self.columns


@dataclass(frozen=True)
class SequenceValue:
    name: str
    last_value: int
    is_called: bool


@dataclass(frozen=True)
class Inventory:
    schema: str
    tables: tuple[Table, ...]
    sequences: tuple[SequenceValue, ...]
    #: The schema's Alembic revision (``None``: not migrated).
    revision: str | None

    def table(self, name: str) -> Table | None:
        return next((t for t in self.tables if t.name == name), None)

    @property
    def data_tables(self) -> tuple[Table, ...]:
        """The tables whose rows a copy moves (all but the version table)."""
        return tuple(t for t in self.tables if t.name != VERSION_TABLE)

    @property
    def bytes(self) -> int:
        return sum(t.bytes for t in self.tables)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "revision": self.revision,
            "bytes": self.bytes,
            "tables": [
                {"name": t.name, "rowsEstimate": t.rows_estimate, "bytes": t.bytes}
                for t in self.tables
            ],
            "sequences": [s.name for s in self.sequences],
        }


def large_objects(params: Mapping[str, Any], logins: Sequence[str]) -> int:
    """Large objects ``logins`` own in the database of ``params``: they live outside
    any schema, so neither a schema's copy nor its dump carries them."""
    with psycopg.connect(**params) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_catalog.pg_largeobject_metadata m"
            " JOIN pg_catalog.pg_roles r ON r.oid = m.lomowner WHERE r.rolname = ANY(%s)",
            (list(logins),),
        ).fetchone()
    return int(row[0]) if row else 0


def stabilize(conn: psycopg.Connection[Any]) -> None:
    for statement in STABLE_SETTINGS:
        conn.execute(statement)


def qualified(schema: str, name: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))


_TABLES = """
SELECT c.relname,
       array_agg(a.attname::text ORDER BY a.attnum) AS names,
       array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY a.attnum) AS types,
       array_agg(a.attname::text ORDER BY a.attnum) FILTER (WHERE a.attgenerated <> '')
           AS generated,
       bool_and(a.atttypid < %s AND (t.typelem = 0 OR t.typelem < %s)) AS builtin,
       array_agg(CASE WHEN a.atttypid = ANY(%s) THEN 'value'
                      WHEN a.atttypid = ANY(%s) THEN 'text'
                      WHEN a.atttypid < %s AND (t.typelem = 0 OR t.typelem < %s) THEN 'printed'
                      ELSE 'output' END
                 ORDER BY a.attnum) AS hashed_as,
       greatest(c.reltuples, 0)::bigint AS rows_estimate,
       pg_total_relation_size(c.oid) AS bytes
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_type t ON t.oid = a.atttypid
WHERE n.nspname = %s AND c.relkind = 'r'
GROUP BY c.oid, c.relname
ORDER BY c.relname
"""

#: Sequences read by OID, never by name: a name the tenant controls could be swapped
#: for a view whose functions would then run with the reader's rights.
_SEQUENCES = """
SELECT c.relname, pg_catalog.pg_sequence_last_value(c.oid), s.seqstart
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_sequence s ON s.seqrelid = c.oid
WHERE n.nspname = %s AND c.relkind = 'S' ORDER BY c.relname
"""


def guard_table(conn: psycopg.Connection[Any], schema: str, name: str) -> None:
    """Lock ``schema.name`` against being dropped or replaced, then make sure it is a
    plain table: only then may a query read it by name (a view would run the tenant's
    functions with the reader's rights). Needs a transaction."""
    target = qualified(schema, name)
    conn.execute("SET LOCAL lock_timeout = '10s'")
    conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(target))
    row = conn.execute(
        "SELECT c.relkind FROM pg_catalog.pg_class c WHERE c.oid = pg_catalog.to_regclass(%s)",
        (target.as_string(conn),),
    ).fetchone()
    if row is None or row[0] != "r":
        raise ValueError(f"{schema}.{name} is no longer a table")


def read_inventory(conn: psycopg.Connection[Any], schema: str) -> Inventory:
    """The schema as ``conn`` (in a transaction) sees it; ``conn`` is stabilized first."""
    stabilize(conn)
    tables = tuple(
        Table(
            name=row[0],
            columns=tuple(zip(row[1], [_own_type(t, schema) for t in row[2]], strict=True)),
            generated=frozenset(row[3] or ()),
            builtin_types=bool(row[4]),
            hashed_as=tuple(row[5]),
            rows_estimate=int(row[6]),
            bytes=int(row[7]),
        )
        for row in conn.execute(
            _TABLES,
            (
                FIRST_USER_OID,
                FIRST_USER_OID,
                list(EXACT_TYPES),
                list(TEXT_TYPES),
                FIRST_USER_OID,
                FIRST_USER_OID,
                schema,
            ),
        )
    )
    sequences = tuple(
        # Never called: its next value is its start (``setval(start, false)``).
        SequenceValue(name, int(last if last is not None else start), last is not None)
        for name, last, start in conn.execute(_SEQUENCES, (schema,)).fetchall()
    )
    return Inventory(schema, tables, sequences, _revision(conn, schema, tables))


def _own_type(name: str, schema: str) -> str:
    """A type of the schema itself without its schema's name (``format_type`` names
    it, since ``search_path`` is pinned): the same enum in a restore's or a copy's
    schema is the same column type."""
    for prefix in (f"{schema}.", f'"{schema}".'):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def _revision(conn: psycopg.Connection[Any], schema: str, tables: tuple[Table, ...]) -> str | None:
    if not any(t.name == VERSION_TABLE for t in tables):
        return None
    guard_table(conn, schema, VERSION_TABLE)
    rows = conn.execute(
        sql.SQL("SELECT version_num FROM {} ORDER BY 1").format(qualified(schema, VERSION_TABLE))
    ).fetchall()
    return ",".join(str(r[0]) for r in rows) or None


def differences(source: Inventory, target: Inventory) -> list[str]:
    """Where the target's tables differ in shape from the source's, one line each."""
    found = []
    if source.revision != target.revision:
        found.append(
            f"revision {target.revision or 'base'} is not the source's {source.revision or 'base'}"
        )
    theirs = {t.name: t for t in target.tables}
    for table in source.tables:
        other = theirs.pop(table.name, None)
        if other is None:
            found.append(
                f"table {table.name}: in the source only (not made by the product's migrations)"
            )
        elif other.shape() != table.shape():
            found.append(f"table {table.name}: its columns differ from the source's")
    found += [f"table {name}: in the target only" for name in sorted(theirs)]
    ours = {s.name for s in source.sequences}
    found += [
        f"sequence {s.name}: in the target only" for s in target.sequences if s.name not in ours
    ]
    found += [
        f"sequence {name}: in the source only"
        for name in sorted(ours - {s.name for s in target.sequences})
    ]
    return found
