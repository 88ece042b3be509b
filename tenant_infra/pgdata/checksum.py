"""A content checksum per table, computed the same way on any server.

Each row is hashed under a seed drawn for each verification (so nobody can craft
rows that collide) with ``hash_record_extended`` over one expression per column:
the value itself where its hash is its identity, text under the "C" collation, and
everything else as printed (a built-in type cast to text; a type of the tenant's by its
output function, quoted by ``format('%L')``, never through a cast, which the owner of
a type may define) under :data:`~tenant_infra.pgdata.inventory.
STABLE_SETTINGS` (see :data:`~tenant_infra.pgdata.inventory.EXACT_TYPES`): about
three times faster than printing whole rows, and blind to nothing printing sees.
The table's checksum is its
row count, the sum of the hashes' high halves and the XOR of the whole hashes, so
it does not depend on row order (two servers need not store rows alike) and a
duplicated or missing row changes it. Each table is locked and checked to be a table
before it is read by name (:func:`~tenant_infra.pgdata.inventory.guard_table`).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from tenant_infra.pgdata.inventory import Table, guard_table, qualified


@dataclass(frozen=True)
class Checksum:
    rows: int
    digest: str

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "digest": self.digest}


def new_seed() -> int:
    return secrets.randbits(63)


def table_checksum(
    conn: psycopg.Connection[Any], schema: str, table: Table, seed: int = 0
) -> Checksum:
    """``table``'s checksum as ``conn`` sees it (stabilized, in a transaction)."""
    guard_table(conn, schema, table.name)
    expressions = {
        "value": sql.SQL("{}"),
        "text": sql.SQL('({} COLLATE "C")'),
        # A built-in type's cast to text is the superuser's to define; a type the
        # tenant owns is printed by its output function, never through a cast, which
        # its owner may define and which would then run with the reader's rights.
        "printed": sql.SQL('({}::text COLLATE "C")'),
        "output": sql.SQL("""(pg_catalog.format('%L', {}) COLLATE "C")"""),
    }
    columns = sql.SQL(", ").join(
        expressions[how].format(sql.Identifier(name))
        for (name, _), how in zip(table.columns, table.hashed_as, strict=True)
    )
    query = sql.SQL(
        "SELECT count(*), coalesce(sum((h >> 32)::int4), 0), coalesce(bit_xor(h), 0)"
        " FROM (SELECT pg_catalog.hash_record_extended(ROW({}), {}) AS h FROM {}) hashed"
    ).format(columns, sql.Literal(seed), qualified(schema, table.name))
    row = conn.execute(query).fetchone()
    assert row is not None
    return Checksum(
        int(row[0]), f"{int(row[1]) & (2**64 - 1):016x}{int(row[2]) & (2**64 - 1):016x}"
    )


def checksums(
    conn: psycopg.Connection[Any], schema: str, tables: Sequence[Table], seed: int = 0
) -> dict[str, Checksum]:
    return {table.name: table_checksum(conn, schema, table, seed) for table in tables}


def mismatches(
    source: dict[str, Checksum],
    target: dict[str, Checksum],
    sides: tuple[str, str] = ("source", "target"),
) -> list[str]:
    """Tables whose rows or content differ, one line each naming the table (``sides``:
    what to call the two in it)."""
    found = []
    ours, theirs_name = sides
    for name, expected in source.items():
        theirs = target.get(name)
        if theirs is None:
            found.append(f"table {name}: missing in the {theirs_name}")
        elif theirs.rows != expected.rows:
            found.append(
                f"table {name}: {theirs.rows} rows in the {theirs_name}, "
                f"{expected.rows} in the {ours}"
            )
        elif theirs.digest != expected.digest:
            found.append(f"table {name}: same row count, different content")
    return found
