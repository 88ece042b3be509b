"""Copying a tenant schema between databases on the real server, then verifying it."""

from __future__ import annotations

import secrets
import threading
import time

import psycopg
import pytest
from psycopg import sql

from tenant_infra.errors import OperationFailed
from tenant_infra.pgdata.checksum import checksums, mismatches
from tenant_infra.pgdata.copy import copy_schema, copy_sequences, reader, secondary_indexes
from tenant_infra.pgdata.freeze import WriteFreeze
from tenant_infra.pgdata.inventory import differences, read_inventory

from .conftest import Pair


def _inventories(pair: Pair):  # type: ignore[no-untyped-def]
    with psycopg.connect(**pair.source) as s, psycopg.connect(**pair.target) as t:
        return read_inventory(s, pair.schema), read_inventory(t, pair.schema)


def _copy(pair: Pair, workers: int = 2, indexes: dict[str, str] | None = None) -> None:
    source, _ = _inventories(pair)
    if indexes is None:
        with psycopg.connect(**pair.target) as conn:
            indexes = secondary_indexes(conn, pair.schema)
    with WriteFreeze(pair.source, pair.schema, [t.name for t in source.tables], [pair.login]) as f:
        copy_schema(pair.source, pair.target, pair.schema, source.data_tables, f.snapshot, pair.login, indexes, workers)
        copy_sequences(pair.target, pair.schema, source.sequences, pair.login)


def _sums(pair: Pair, database: str):  # type: ignore[no-untyped-def]
    source, _ = _inventories(pair)
    with psycopg.connect(**pair.params(database)) as conn:
        read_inventory(conn, pair.schema)
        return checksums(conn, pair.schema, source.tables)


@pytest.mark.parametrize("workers", [1, 3])
def test_every_row_and_sequence_arrives_identical(pair: Pair, workers: int) -> None:
    source, target = _inventories(pair)
    assert differences(source, target) == []
    _copy(pair, workers)
    before, after = _sums(pair, pair.source_db), _sums(pair, pair.target_db)
    assert mismatches(before, after) == []
    assert before["operations"].rows == 500 and before["audit"].rows == 50
    # Sequences: the plain one and the identity's, at the source's values.
    _, copied = _inventories(pair)
    assert {s.name: s.last_value for s in copied.sequences} == {
        s.name: s.last_value for s in source.sequences
    }
    assert dict((s.name, s.last_value) for s in copied.sequences)["invoice_no"] == 5000
    # The generated column was computed by the target, identically.
    assert pair.run(pair.target_db, "SELECT count(*) FROM {s}.operations WHERE doubled <> amount * 2") == [(0,)]
    # The next identity value follows the copied ones (no duplicate key).
    pair.run(pair.target_db, "SET ROLE " + pair.login + "; INSERT INTO {s}.operations (account_id, amount, kind) SELECT id, 1, 'debit' FROM {s}.accounts LIMIT 1")


def test_indexes_are_dropped_for_the_copy_and_built_again_as_kept(pair: Pair) -> None:
    query = "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'tenant_pgdata' ORDER BY 1"
    expected = pair.run(pair.target_db, query)
    assert ("operations_account_amount",) in [(name,) for name, _ in expected]
    with psycopg.connect(**pair.target) as conn:
        kept = secondary_indexes(conn, pair.schema)
    pair.run(pair.target_db, "DROP INDEX {s}.operations_account_amount")  # as a killed run left it
    # What the tenant defined at the source is not carried (a materialized view's
    # index would not even have its relation in the target).
    pair.run(pair.source_db, "CREATE MATERIALIZED VIEW {s}.mv AS SELECT 1 AS x; CREATE INDEX mv_x ON {s}.mv (x)")
    pair.run(pair.source_db, "CREATE INDEX tenant_own ON {s}.accounts (opened)")
    _copy(pair, indexes=kept)
    assert pair.run(pair.target_db, query) == expected


def test_a_planted_difference_names_its_table(pair: Pair) -> None:
    _copy(pair)
    pair.run(pair.target_db, "UPDATE {s}.accounts SET balance = balance + 0.000000000000000001 WHERE alias = 'acct-7'")
    found = mismatches(_sums(pair, pair.source_db), _sums(pair, pair.target_db))
    assert found == ["table accounts: same row count, different content"]
    pair.run(pair.target_db, "SET session_replication_role = replica; DELETE FROM {s}.operations WHERE seq = 3")
    found = mismatches(_sums(pair, pair.source_db), _sums(pair, pair.target_db))
    assert "table operations: 499 rows in the target, 500 in the source" in found


def test_a_duplicated_row_changes_the_checksum(pair: Pair) -> None:
    """Two identical rows would cancel out in an XOR alone."""
    _copy(pair)
    pair.run(pair.source_db, "CREATE TABLE {s}.bag (v int)")
    pair.run(pair.target_db, "CREATE TABLE {s}.bag (v int)")
    pair.run(pair.source_db, "INSERT INTO {s}.bag VALUES (1), (2)")
    pair.run(pair.target_db, "INSERT INTO {s}.bag VALUES (1), (2), (2), (2)")
    pair.run(pair.source_db, "INSERT INTO {s}.bag VALUES (3), (3)")
    found = mismatches(_sums(pair, pair.source_db), _sums(pair, pair.target_db))
    assert found == ["table bag: same row count, different content"]


def test_shape_differences_are_named(pair: Pair) -> None:
    pair.run(pair.source_db, "CREATE TABLE {s}.adhoc (v int)")
    pair.run(pair.target_db, "ALTER TABLE {s}.accounts ADD COLUMN extra int")
    pair.run(pair.target_db, "UPDATE {s}.alembic_version SET version_num = '0002'")
    source, target = _inventories(pair)
    assert differences(source, target) == [
        "revision 0002 is not the source's 0003",
        "table accounts: its columns differ from the source's",
        "table adhoc: in the source only (not made by the product's migrations)",
    ]


def test_row_level_security_cannot_hide_rows_from_the_copy(pair: Pair) -> None:
    pair.run(pair.source_db, "ALTER TABLE {s}.accounts ENABLE ROW LEVEL SECURITY; ALTER TABLE {s}.accounts FORCE ROW LEVEL SECURITY; CREATE POLICY hide ON {s}.accounts USING (false)")
    _copy(pair)
    assert mismatches(_sums(pair, pair.source_db), _sums(pair, pair.target_db)) == []
    assert pair.run(pair.target_db, "SELECT count(*) FROM {s}.accounts") == [(40,)]


def test_the_freeze_stops_writes_not_reads_and_ends_with_its_session(pair: Pair) -> None:
    source, _ = _inventories(pair)
    tenant = pair.source | {"user": pair.login}
    pair.run(pair.source_db, f"GRANT USAGE ON SCHEMA {{s}} TO {pair.login}; GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA {{s}} TO {pair.login}")
    wrote = threading.Event()

    def write() -> None:
        with psycopg.connect(**tenant, autocommit=True) as conn:
            conn.execute("INSERT INTO tenant_pgdata.accounts (id, alias, balance, opened) VALUES (gen_random_uuid(), 'late', 1, now())")
            wrote.set()

    with WriteFreeze(pair.source, pair.schema, [t.name for t in source.tables], [pair.login]) as freeze:
        with psycopg.connect(**tenant) as conn:
            assert conn.execute("SELECT count(*) FROM tenant_pgdata.accounts").fetchone() == (40,)
        thread = threading.Thread(target=write)
        thread.start()
        time.sleep(0.5)
        assert not wrote.is_set()
        with reader(pair.source, freeze.snapshot) as snap:
            assert snap.execute("SELECT count(*) FROM tenant_pgdata.accounts").fetchone() == (40,)
    thread.join(10)
    assert wrote.is_set()


def test_a_tenant_writer_holding_its_lock_is_ended(pair: Pair) -> None:
    source, _ = _inventories(pair)
    tenant = pair.source | {"user": pair.login}
    pair.run(pair.source_db, f"GRANT USAGE ON SCHEMA {{s}} TO {pair.login}; GRANT SELECT, UPDATE ON ALL TABLES IN SCHEMA {{s}} TO {pair.login}")
    holder = psycopg.connect(**tenant)
    holder.execute("UPDATE tenant_pgdata.accounts SET balance = 0 WHERE alias = 'acct-1'")
    try:
        with WriteFreeze(pair.source, pair.schema, [t.name for t in source.tables], [pair.login], lock_wait=0.3) as freeze:
            assert freeze.ended_writers == 1
        with pytest.raises(psycopg.OperationalError):
            holder.execute("COMMIT")
    finally:
        holder.close()


def test_a_lock_held_by_another_login_fails_the_freeze_in_time(pair: Pair) -> None:
    source, _ = _inventories(pair)
    holder = psycopg.connect(**pair.source)
    holder.execute("LOCK TABLE tenant_pgdata.audit IN SHARE MODE")
    try:
        tables = [t.name for t in source.tables]
        with (
            pytest.raises(OperationFailed, match="could not freeze writes"),
            WriteFreeze(pair.source, pair.schema, tables, [pair.login], lock_wait=0.1),
        ):
            pass
    finally:
        holder.close()


def test_the_copier_login_is_created_from_a_verifier_and_its_password_works(pair: Pair) -> None:
    from tenant_infra.pgdata.copy import copier, scram_verifier

    verifier = scram_verifier("not-a-real-secret")
    assert verifier.startswith("SCRAM-SHA-256$4096:") and "not-a-real-secret" not in verifier
    with copier(pair.target, pair.login) as params:
        stored = pair.run("postgres", f"SELECT rolpassword FROM pg_authid WHERE rolname = '{params['user']}'")
        assert stored[0][0].startswith("SCRAM-SHA-256$") and params["password"] not in stored[0][0]
        # Password authentication needs a server that asks for one; here the login is
        # checked for what it may do: act as the login, set replica mode, nothing else.
        with psycopg.connect(**params, autocommit=True) as conn:
            conn.execute("SET session_replication_role = replica")
            conn.execute(f"SET ROLE {pair.login}")
            conn.execute("RESET ROLE")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("CREATE ROLE copier_escape")
    assert pair.run("postgres", f"SELECT 1 FROM pg_roles WHERE rolname = '{params['user']}'") == []


def test_values_equal_but_not_identical_are_told_apart(pair: Pair) -> None:
    """What a value hash would call equal but printing does not: numeric scale, jsonb
    numbers, interval units, array bounds, -0, and case under a nondeterministic
    collation."""
    ddl = (
        "CREATE COLLATION IF NOT EXISTS {s}.ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);"
        " CREATE TABLE {s}.odd (n numeric, j jsonb, i interval, a int[], f float8, t text COLLATE {s}.ci)"
    )
    pair.run(pair.source_db, ddl)
    pair.run(pair.target_db, ddl)
    pair.run(pair.source_db, "INSERT INTO {s}.odd VALUES (1.0, '1.0', '1 day', '{{1,2}}', 0, 'Alice')")
    rows = [
        "(1.00, '1.0', '1 day', '{{1,2}}', 0, 'Alice')",
        "(1.0, '1', '1 day', '{{1,2}}', 0, 'Alice')",
        "(1.0, '1.0', '24 hours', '{{1,2}}', 0, 'Alice')",
        "(1.0, '1.0', '1 day', '[5:6]={{1,2}}', 0, 'Alice')",
        "(1.0, '1.0', '1 day', '{{1,2}}', '-0', 'Alice')",
        "(1.0, '1.0', '1 day', '{{1,2}}', 0, 'alice')",
    ]
    for row in rows:
        pair.run(pair.target_db, "DELETE FROM {s}.odd; INSERT INTO {s}.odd VALUES " + row)
        found = mismatches(_sums(pair, pair.source_db), _sums(pair, pair.target_db))
        assert "table odd: same row count, different content" in found, row


def test_a_cast_the_tenant_defines_never_runs_with_the_readers_rights(pair: Pair) -> None:
    """The owner of a type may define its cast to text; a checksum prints the type
    through its output function, so the tenant's function is never called."""
    _copy(pair)
    pair.run(pair.target_db, f"""SET ROLE {pair.login};
        CREATE TABLE {{s}}.calls (who name);
        CREATE FUNCTION {{s}}.evil({{s}}.kind) RETURNS text LANGUAGE plpgsql AS $$
        BEGIN INSERT INTO {pair.schema}.calls VALUES (current_user); RETURN 'x'; END $$;
        CREATE CAST ({{s}}.kind AS text) WITH FUNCTION {{s}}.evil({{s}}.kind);""")
    with psycopg.connect(**pair.target, autocommit=True) as conn:
        conn.execute(f"SET ROLE {pair.login}")
        assert conn.execute(f"SELECT kind::text FROM {pair.schema}.operations LIMIT 1").fetchall() == [("x",)]
    sums = _sums(pair, pair.target_db)
    assert pair.run(pair.target_db, "SELECT who FROM {s}.calls") == [(pair.login,)]  # only our probe
    assert mismatches(_sums(pair, pair.source_db), sums) == []


def test_a_type_of_the_schema_is_the_same_column_type_under_another_schema_name(pair: Pair) -> None:
    """A restore's schema has the tenant's enum under its own name."""
    pair.run(pair.target_db, "ALTER SCHEMA {s} RENAME TO restoring_{s}")
    with psycopg.connect(**pair.source) as s, psycopg.connect(**pair.target) as t:
        source, target = read_inventory(s, pair.schema), read_inventory(t, f"restoring_{pair.schema}")
    assert dict(source.table("operations").columns)["kind"] == "kind"  # type: ignore[union-attr]
    assert differences(source, target) == []


def test_a_platform_login_is_made_past_a_neighbours_grant_on_the_same_database(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its ``GRANT CONNECT`` changes the database's one privileges row, which another
    tenant's grant may be changing at that moment (``tenant_infra/retry.py``)."""
    from concurrent.futures import ThreadPoolExecutor

    from tenant_infra import retry
    from tenant_infra.pgdata.copy import create_login, drop_login
    from tests.support.conflict import ADMIN, neighbour_grant

    monkeypatch.setattr(retry, "RETRY_BASE_DELAY", 0.0)
    database, name = f"ti_login_{secrets.token_hex(4)}", f"ti_login_{secrets.token_hex(4)}"
    admin = ADMIN | {"dbname": database}
    with psycopg.connect(**ADMIN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    try:
        with ThreadPoolExecutor(1) as pool, neighbour_grant(database) as commit_once_waited_on:
            creating = pool.submit(create_login, admin, name)
            commit_once_waited_on(by=name)
            params = creating.result(timeout=30)
        with psycopg.connect(**params) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (name,)
        drop_login(admin, name)
    finally:
        with psycopg.connect(**ADMIN, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(database)))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
