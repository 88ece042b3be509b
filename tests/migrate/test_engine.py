"""engine.TenantMigrator against the real PostgreSQL: one tenant at a time."""

from __future__ import annotations

from pathlib import Path

from conftest import LEDGER, write_script_dir
from pgsandbox import ADMIN, PgSandbox, admin_exec, tables, version

from tenant_infra.migrate.connection import with_database
from tenant_infra.migrate.engine import TenantMigrator
from tenant_infra.migrate.targets import MigrationTarget

LEDGER_TABLES = {"organizations", "ledgers", "accounts", "transactions", "operations", "balances"}


def own_migrator(script: Path = LEDGER, **kw: str) -> TenantMigrator:
    """No connection parameters of its own: each target brings its tenant role's."""
    return TenantMigrator(script, **kw)  # type: ignore[arg-type]


def test_schema_tenant_reaches_head_as_its_own_role(pg: PgSandbox, product: str) -> None:
    svc = pg.schema_tenant(product)
    m = own_migrator()
    try:
        result = m.upgrade(svc.own_target)
    finally:
        m.close()
    assert (result.status, result.before, result.after) == ("migrated", None, "0003")
    assert result.revisions == ("0001", "0002", "0003")
    assert tables(svc) == LEDGER_TABLES | {"alembic_version"}
    assert version(svc) == "0003"
    owners = svc.sql(f"SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = '{svc.schema}'")
    assert owners == [(svc.role,)]  # DDL ran as the tenant role, not as the admin
    assert tables(svc, "public") == set()


def test_database_tenant_reaches_head(pg: PgSandbox, product: str) -> None:
    svc = pg.database_tenant(product)
    m = own_migrator()
    try:
        result = m.upgrade(svc.own_target)
    finally:
        m.close()
    assert result.status == "migrated", result.error
    assert svc.target.database == svc.database != product
    assert tables(svc) == LEDGER_TABLES | {"alembic_version"}
    assert tables(svc, "public") == set()


def test_rerun_at_head_changes_nothing(pg: PgSandbox, product: str) -> None:
    svc = pg.schema_tenant(product)
    m = own_migrator()
    try:
        m.upgrade(svc.own_target)
        xmin = svc.sql(f"SELECT xmin::text FROM {svc.schema}.alembic_version")
        again = m.upgrade(svc.own_target)
    finally:
        m.close()
    assert (again.status, again.before, again.after, again.revisions) == (
        "current",
        "0003",
        "0003",
        (),
    )
    assert svc.sql(f"SELECT xmin::text FROM {svc.schema}.alembic_version") == xmin


def test_failed_tenant_keeps_no_partial_change(pg: PgSandbox, product: str) -> None:
    svc = pg.schema_tenant(product)
    svc.sql(f"CREATE TABLE {svc.schema}.balances (id int)")  # conflicts with revision 0003
    m = own_migrator()
    try:
        result = m.upgrade(svc.own_target)
    finally:
        m.close()
    assert result.status == "failed"
    assert result.error is not None
    assert result.error.startswith("revision 0003: ") and "balances" in result.error
    assert (result.before, result.after) == (None, None)
    # 0001 and 0002 ran in the same transaction: nothing of them survived.
    assert tables(svc) == {"balances"}
    assert version(svc) is None


def test_failure_leaves_previous_revision(pg: PgSandbox, product: str) -> None:
    svc = pg.schema_tenant(product)
    m = own_migrator(destination="0002")
    try:
        assert m.upgrade(svc.own_target).after == "0002"
    finally:
        m.close()
    svc.sql(f"CREATE TABLE {svc.schema}.balances (id int)")
    m = own_migrator()
    try:
        result = m.upgrade(svc.own_target)
    finally:
        m.close()
    assert (result.status, result.before, result.after) == ("failed", "0002", "0002")
    assert version(svc) == "0002"
    cols = svc.sql(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = "
        f"'{svc.schema}' AND table_name = 'transactions' AND column_name = 'posted_at'"
    )
    assert cols == []


def test_generic_connection_is_reused_after_a_failure(
    pg: PgSandbox, product: str, tmp_path: Path
) -> None:
    db = pg.database(product)
    for name in ("g_bad", "g_good"):
        admin_exec(f"CREATE SCHEMA {name}", db)
    admin_exec("CREATE TABLE g_bad.t (id int)", db)
    script = write_script_dir(tmp_path / "s", ["CREATE TABLE t (id int)"])
    m = TenantMigrator(script, with_database(ADMIN, db))
    try:
        assert m.upgrade(MigrationTarget("g_bad")).status == "failed"
        conn_before = m._conn
        assert m.upgrade(MigrationTarget("g_good")).status == "migrated"
        assert m._conn is conn_before  # generic mode: one connection per worker
    finally:
        m.close()


def test_a_reused_generic_connection_carries_nothing_to_the_next_tenant(
    pg: PgSandbox, product: str, tmp_path: Path
) -> None:
    """A TEMP table comes first in every search_path, and a session SET outlives the
    transaction: neither may reach the next schema migrated on the same connection."""
    db = pg.database(product)
    for name in ("g_one", "g_two"):
        admin_exec(f"CREATE SCHEMA {name}", db)
    script = write_script_dir(
        tmp_path / "s",
        [
            "CREATE TABLE seen AS SELECT current_setting('tenant.note', true) AS note",
            "CREATE TEMP TABLE scratch (id int);\nSET SESSION tenant.note = 'left by one'",
        ],
    )
    m = TenantMigrator(script, with_database(ADMIN, db))
    try:
        first = m.upgrade(MigrationTarget("g_one"))
        second = m.upgrade(MigrationTarget("g_two"))
    finally:
        m.close()
    assert (first.status, second.status) == ("migrated", "migrated"), second.error
    assert admin_exec("SELECT note FROM g_two.seen", db) in ([(None,)], [("",)])


def test_a_kept_connection_lost_between_tenants_is_replaced(
    pg: PgSandbox, product: str, tmp_path: Path
) -> None:
    """A server restart or failover between two generic tenants: the next one gets a
    new connection and migrates, not a failure it did not cause."""
    db = pg.database(product)
    for name in ("g_first", "g_next"):
        admin_exec(f"CREATE SCHEMA {name}", db)
    script = write_script_dir(tmp_path / "s", ["CREATE TABLE t (id int)"])
    m = TenantMigrator(script, with_database(ADMIN, db))
    try:
        assert m.upgrade(MigrationTarget("g_first")).status == "migrated"
        assert m._conn is not None
        pid = m._conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        m._conn.rollback()
        admin_exec(f"SELECT pg_terminate_backend({int(pid)}, 5000)")  # type: ignore[arg-type]
        result = m.upgrade(MigrationTarget("g_next"))
    finally:
        m.close()
    assert result.status == "migrated", result.error
    assert admin_exec("SELECT version_num FROM g_next.alembic_version", db) == [("0001",)]


def test_each_tenant_gets_a_connection_as_its_own_role(pg: PgSandbox, product: str) -> None:
    bad, good = pg.schema_tenant(product), pg.schema_tenant(product)
    bad.sql(f"CREATE TABLE {bad.schema}.organizations (id int)")
    m = own_migrator()
    try:
        assert m.upgrade(bad.own_target).status == "failed"
        first = m._conn
        assert m.upgrade(good.own_target).status == "migrated"
        assert m._conn is not None and m._conn is not first
        assert m._conn.exec_driver_sql("SELECT current_user").scalar() == good.role
        m._conn.rollback()
    finally:
        m.close()
    assert version(good) == "0003"


def test_tenant_target_is_never_migrated_as_another_user(pg: PgSandbox, product: str) -> None:
    """The admin's session is not a tenant's: refused before connecting, in every mode."""
    svc = pg.schema_tenant(product)
    m = TenantMigrator(LEDGER, ADMIN)
    try:
        for result in (m.upgrade(svc.target), m.pending(svc.target), m.render(svc.target)):
            assert result.status == "failed"
            assert result.error is not None
            assert "only as its own role" in result.error and svc.role in result.error
        assert m._conn is None
    finally:
        m.close()
    assert tables(svc) == set()


def test_tenant_role_cannot_touch_other_schema_or_public(
    pg: PgSandbox, product: str, tmp_path: Path
) -> None:
    mine, other = pg.schema_tenant(product), pg.schema_tenant(product)
    whoami = write_script_dir(
        tmp_path / "whoami",
        [
            "CREATE TABLE whoami AS SELECT current_user::text AS u, "
            "current_setting('search_path') AS p"
        ],
    )
    into_other = write_script_dir(
        tmp_path / "other", [f"CREATE TABLE {other.schema}.stolen (id int)"]
    )
    into_public = write_script_dir(tmp_path / "public", ["CREATE TABLE public.stolen (id int)"])
    read_other = write_script_dir(
        tmp_path / "read", [f"CREATE TABLE peek AS SELECT * FROM {other.schema}.whoami"]
    )

    def run(script: Path, svc_target: MigrationTarget) -> tuple[str, str | None]:
        m = TenantMigrator(script)
        try:
            r = m.upgrade(svc_target)
        finally:
            m.close()
        return r.status, r.error

    assert run(whoami, mine.own_target) == ("migrated", None)
    assert mine.sql(f"SELECT u, p FROM {mine.schema}.whoami") == [(mine.role, mine.schema)]
    assert run(whoami, other.own_target) == ("migrated", None)
    for script in (into_other, into_public, read_other):
        attacker = pg.schema_tenant(product)
        status, error = run(script, attacker.own_target)
        assert status == "failed"
        assert error is not None and "permission denied" in error
        assert tables(attacker) == set()
    assert tables(other) == {"whoami", "alembic_version"}
    assert tables(mine, "public") == set()


def test_pending_and_sql_do_not_execute(pg: PgSandbox, product: str) -> None:
    svc = pg.schema_tenant(product)
    m = own_migrator()
    try:
        pending = m.pending(svc.own_target)
        rendered = m.render(svc.own_target)
    finally:
        m.close()
    assert (pending.status, pending.revisions, pending.after) == (
        "pending",
        ("0001", "0002", "0003"),
        "0003",
    )
    sql = rendered.sql or ""
    assert "SET LOCAL ROLE" not in sql and "SET ROLE" not in sql
    assert f'SET LOCAL search_path TO "{svc.schema}"' in sql
    assert "CREATE TABLE organizations" in sql
    assert f"CREATE TABLE {svc.schema}.alembic_version" in sql
    assert sql.index("CREATE TABLE organizations") < sql.index("CREATE TABLE balances")
    assert tables(svc) == set()


def test_generic_mode_without_role(pg: PgSandbox, product: str, tmp_path: Path) -> None:
    db = pg.database(product)
    from pgsandbox import admin_exec

    admin_exec("CREATE SCHEMA plain_one", db)
    script = write_script_dir(
        tmp_path / "s", ["CREATE TABLE t (id int)", "ALTER TABLE t ADD c int"]
    )
    m = TenantMigrator(script, with_database(ADMIN, db))
    try:
        r = m.upgrade(MigrationTarget("plain_one"))
        again = m.upgrade(MigrationTarget("plain_one"))
    finally:
        m.close()
    assert (r.status, r.after, again.status) == ("migrated", "0002", "current")
    assert admin_exec("SELECT version_num FROM plain_one.alembic_version", db) == [("0002",)]


def test_a_neighbour_cannot_take_a_tenants_migration_lock(
    pg: PgSandbox, product: str, monkeypatch
) -> None:
    """Issue 16, row 4: the lock is the tenant's own version table, which a neighbour
    cannot lock (the old advisory key could be computed and held by anyone); when
    the tenant's own sessions hold it, the failure names who."""
    import psycopg

    from tenant_infra.migrate import engine

    victim = pg.schema_tenant(product)
    neighbour = pg.schema_tenant(product)
    m = own_migrator()
    try:
        assert m.upgrade(victim.own_target).status == "migrated"
        with psycopg.connect(**neighbour.params(), autocommit=False) as conn:
            conn.execute(
                f"SELECT pg_advisory_lock(hashtextextended('tenant-infra:migrate:{victim.schema}', 0))"
            )
            try:
                conn.execute(f"LOCK TABLE {victim.schema}.alembic_version IN EXCLUSIVE MODE")
                raise AssertionError("a neighbour locked the tenant's version table")
            except psycopg.errors.InsufficientPrivilege:
                conn.rollback()
            conn.execute(
                f"SELECT pg_advisory_lock(hashtextextended('tenant-infra:migrate:{victim.schema}', 0))"
            )
            assert m.upgrade(victim.own_target).status == "current"  # not blocked

        monkeypatch.setattr(engine, "LOCK_WAIT_SECONDS", 1)
        with psycopg.connect(
            **victim.params(), application_name="stuck-job", autocommit=False
        ) as own:
            own.execute(f"LOCK TABLE {victim.schema}.alembic_version IN EXCLUSIVE MODE")
            blocked = m.upgrade(victim.own_target)
        assert blocked.status == "failed"
        assert f"by user {victim.role} (stuck-job)" in (blocked.error or ""), blocked.error
    finally:
        m.close()


def test_the_rendered_sql_runs_from_base_and_from_a_revision(
    pg: PgSandbox, product: str, tmp_path: Path
) -> None:
    """What ``--sql`` prints is what an operator pipes into psql: it must run as is,
    from base (Alembic creates the version table) and from a revision (locked)."""
    import psycopg

    fresh, older = pg.schema_tenant(product), pg.schema_tenant(product)
    statements = ["CREATE TABLE a (id int)", "CREATE TABLE b (id int)", "CREATE TABLE c (id int)"]
    two = write_script_dir(tmp_path / "two", statements[:2])
    first = TenantMigrator(two)  # type: ignore[arg-type]
    try:
        assert first.upgrade(older.own_target).after == "0002"
    finally:
        first.close()
    three = write_script_dir(tmp_path / "three", statements)
    m = TenantMigrator(three)  # type: ignore[arg-type]
    try:
        for svc, before in ((fresh, None), (older, "0002")):
            rendered = m.render(svc.own_target)
            assert rendered.before == before
            with psycopg.connect(**svc.params(), autocommit=True) as conn:
                conn.execute(rendered.sql or "")
            assert version(svc) == "0003"
            if before is not None:
                assert "IN EXCLUSIVE MODE" in (rendered.sql or "")
    finally:
        m.close()


class _ServerError(Exception):
    """A driver error as psycopg raises one: its SQLSTATE in ``sqlstate``."""

    def __init__(self, sqlstate: str | None) -> None:
        super().__init__(f"SQLSTATE {sqlstate}")
        self.sqlstate = sqlstate


def test_which_failures_a_retry_would_meet_again() -> None:
    """The exit code of a sharded run (2: FailIndex, 1: retry) rests on this."""
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from tenant_infra.errors import BackendUnavailable
    from tenant_infra.migrate.engine import is_deterministic

    lasting = ["42P07", "42601", "23505", "2BP01", "28P01", "3F000", "22012"]
    passing = ["08006", "08001", "40001", "40P01", "53300", "57P01", "57014", "58030", "XX000"]
    for state in lasting:
        wrapped = ProgrammingError("stmt", {}, _ServerError(state))
        assert is_deterministic(wrapped) and is_deterministic(_ServerError(state)), state
    for state in [*passing, "55P03"]:
        assert not is_deterministic(OperationalError("stmt", {}, _ServerError(state))), state
    assert not is_deterministic(OperationalError("connect", {}, _ServerError(None)))
    assert not is_deterministic(BackendUnavailable("cannot connect"))
    assert not is_deterministic(RuntimeError("the migration lock ... has been held for 60 s"))
    assert not is_deterministic(ConnectionResetError())
    assert is_deterministic(NameError("name 'op' is not defined"))  # a revision's own bug
    assert is_deterministic(KeyError("Can't locate revision"))


def test_a_child_s_reply_is_deterministic_only_when_it_failed_and_says_so() -> None:
    from tenant_infra.migrate.worker import result_of

    target = MigrationTarget("tenant_acme", tenant="acme", product="ledger")
    for reply, want in [
        ({"status": "failed", "error": "x", "deterministic": True}, True),
        ({"status": "failed", "error": "x", "deterministic": "yes"}, False),
        ({"status": "failed", "error": "x"}, False),
        ({"status": "migrated", "deterministic": True}, False),
        (None, False),  # the child ended without a word: killed, maybe by the OOM killer
    ]:
        assert result_of(reply, target, 0, 0.0, 1).deterministic is want, reply
