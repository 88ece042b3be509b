"""pg_dump of one schema in a held snapshot, and its rows streamed back into another
schema, on the real server."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tenant_infra.errors import OperationFailed
from tenant_infra.pgdata.checksum import checksums
from tenant_infra.pgdata.copy import copy_sequences, reader
from tenant_infra.pgdata.dump import (
    dump_schema,
    list_contents,
    load_table,
    snapshot_of,
    stream_block,
)
from tenant_infra.pgdata.inventory import read_inventory
from tests.pgdata.conftest import Pair

ODD = 'CREATE TABLE {s}."Odd ""name"" (x)" ("a b" text, "select" int, "ünï" text);'


def test_a_schema_dumped_in_its_snapshot_loads_into_another_schema_intact(pair: Pair, tmp_path: Path) -> None:
    for database in (pair.source_db, pair.target_db):
        pair.run(database, ODD)
    pair.run(pair.source_db, """INSERT INTO {s}."Odd ""name"" (x)" VALUES (E'tab\\there\\\\ and \\\\.', 1, 'ü'), (NULL, 2, E'\\\\.')""")
    archive = tmp_path / "postgresql.dump"
    with snapshot_of(pair.source, pair.schema) as (snapshot, inventory):
        # A write after the snapshot is in neither the dump nor the inventory.
        pair.run(pair.source_db, "DELETE FROM {s}.operations WHERE seq < 10")
        dump_schema(pair.source, pair.schema, snapshot, archive)
        with reader(pair.source, snapshot) as conn:
            before = checksums(conn, pair.schema, inventory.tables)
    assert "TABLE DATA" in list_contents(archive)
    with psycopg.connect(**pair.target, autocommit=True) as target:
        target.execute("SET session_replication_role = replica")  # the audit trigger
        target.execute(f"TRUNCATE {pair.schema}.alembic_version")
        for table in inventory.tables:
            load_table(archive, pair.schema, table, target, pair.schema)
    copy_sequences(pair.target, pair.schema, inventory.sequences, "postgres")
    with psycopg.connect(**pair.target) as conn:
        after = checksums(conn, pair.schema, read_inventory(conn, pair.schema).tables)
    assert after == before
    assert before["operations"].rows == 500


def test_a_table_missing_from_the_archive_fails_loudly(pair: Pair, tmp_path: Path) -> None:
    archive = tmp_path / "postgresql.dump"
    with snapshot_of(pair.source, pair.schema) as (snapshot, inventory):
        dump_schema(pair.source, pair.schema, snapshot, archive)
    nothere = dataclasses.replace(inventory.tables[0], name="nothere")
    with psycopg.connect(**pair.target, autocommit=True) as target, pytest.raises(OperationFailed, match="no rows of table nothere"):
        load_table(archive, pair.schema, nothere, target, pair.schema)
    # The archive's columns must be the manifest's: a reshaped table is refused.
    accounts = inventory.table("accounts")
    assert accounts is not None
    reshaped = dataclasses.replace(accounts, columns=accounts.columns[:-1])
    with psycopg.connect(**pair.target, autocommit=True) as target, pytest.raises(OperationFailed, match="not of the columns its manifest lists"):
        load_table(archive, pair.schema, reshaped, target, pair.schema)


def test_a_damaged_archive_fails_and_loads_nothing(pair: Pair, tmp_path: Path) -> None:
    archive = tmp_path / "postgresql.dump"
    with snapshot_of(pair.source, pair.schema) as (snapshot, inventory):
        dump_schema(pair.source, pair.schema, snapshot, archive)
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    operations = inventory.table("operations")
    assert operations is not None
    with psycopg.connect(**pair.target, autocommit=True) as target, pytest.raises(OperationFailed):
        load_table(archive, pair.schema, operations, target, pair.schema)
    assert pair.run(pair.target_db, "SELECT count(*) FROM {s}.operations") == [(0,)]


# What COPY's text format can put on a line: anything, with backslashes, tabs and
# newlines escaped. ``\.`` alone on a line is never one of them.
_FIELD = st.text(alphabet=st.characters(codec="utf-8"), max_size=12).map(
    lambda t: t.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
)
_LINE = st.lists(_FIELD, min_size=1, max_size=3).map("\t".join)


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(_LINE, max_size=30), chunk=st.integers(1, 9), trailer=st.sampled_from(["", "\n", "\n\n--\n-- done\n"]))
def test_a_block_ends_at_its_end_of_data_line_however_it_is_chunked(lines: list[str], chunk: int, trailer: str) -> None:
    body = "".join(line + "\n" for line in lines).encode()
    stream = io.BufferedReader(_Chunked(body + b"\\.\n" + trailer.encode(), chunk))  # type: ignore[arg-type]
    out: list[bytes] = []
    import tenant_infra.pgdata.dump as dump

    saved, dump.CHUNK = dump.CHUNK, chunk
    try:
        passed = stream_block(stream, out.append)
    finally:
        dump.CHUNK = saved
    assert b"".join(out) == body and passed == len(body)


def test_a_block_without_its_end_is_an_error() -> None:
    with pytest.raises(OperationFailed, match="ends before its end-of-data line"):
        stream_block(io.BytesIO(b"1\tx\n2\ty\n"), lambda _b: None)


class _Chunked(io.RawIOBase):
    """A pipe that hands out at most ``size`` bytes per read."""

    def __init__(self, data: bytes, size: int) -> None:
        self.data, self.size, self.at = data, size, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        piece = self.data[self.at : self.at + min(self.size, len(buffer))]
        buffer[: len(piece)] = piece
        self.at += len(piece)
        return len(piece)
