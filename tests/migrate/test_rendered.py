"""Revisions rendered once and applied as text (``tenant_infra.migrate.rendered``), on
the real PostgreSQL: the same result as the online runner, as each tenant's own role,
in one transaction; and every revision that cannot honestly be rendered runs online."""

from __future__ import annotations

import os
from pathlib import Path

from conftest import write_script_dir
from pgsandbox import ADMIN, PgSandbox, Service, tables, version, write_connections
from test_fleet import own_targets

from tenant_infra.migrate.fleet import migrate_fleet
from tenant_infra.migrate.report import to_dict
from tenant_infra.migrate.targets import discover_schemas_like

DDL = [
    "CREATE TABLE ledgers (id bigint PRIMARY KEY, name text NOT NULL)",
    "CREATE TABLE entries (id bigint PRIMARY KEY, ledger_id bigint REFERENCES ledgers);\n"
    "CREATE INDEX entries_ledger ON entries (ledger_id)",
    "ALTER TABLE ledgers ADD COLUMN closed boolean NOT NULL DEFAULT false",
]


def script(root: Path, once: set[int], bodies: dict[int, str] | None = None) -> Path:
    """``DDL`` as revisions 0001..0003; those in ``once`` declare ``render_once``;
    ``bodies`` replaces a revision's ``upgrade`` body."""
    location = write_script_dir(root, DDL)
    for i in range(1, len(DDL) + 1):
        path = location / "versions" / f"{i:04d}_r.py"
        text = path.read_text()
        if i in (bodies or {}):
            head, _ = text.split("def upgrade() -> None:")
            text = f"{head}def upgrade() -> None:\n{(bodies or {})[i]}\n\ndef downgrade() -> None:\n    pass\n"
        if i in once:
            text += "\nrender_once = True\n"
        path.write_text(text)
    return location


def _owner(svc: Service, table: str) -> str:
    rows = svc.sql(
        f"SELECT tableowner FROM pg_tables WHERE schemaname = '{svc.schema}'"
        f" AND tablename = '{table}'"
    )
    return str(rows[0][0])


def test_rendered_revisions_reach_head_as_each_tenant_without_a_process(
    pg: PgSandbox, product: str, tmp_path: Path
) -> None:
    location = script(tmp_path / "s", {1, 2, 3})
    fleet = [pg.schema_tenant(product), pg.schema_tenant(product), pg.database_tenant(product)]
    conn_file = write_connections(tmp_path / "c.json", fleet)
    report = migrate_fleet(own_targets(product, conn_file), location, {}, concurrency=2)
    assert report.ok, [r.error for r in report.results]
    assert sorted(report.rendered) == ["0001", "0002", "0003"] and report.online == {}
    assert to_dict(report)["rendered_once"] == ["0001", "0002", "0003"]
    for result in report.results:
        assert result.status == "migrated" and result.revisions == ("0001", "0002", "0003")
        assert result.worker == os.getpid()  # applied here, as text
    for svc in fleet:
        assert version(svc) == "0003"
        assert tables(svc) == {"alembic_version", "ledgers", "entries"}
        assert _owner(svc, "ledgers") == svc.role  # run as the tenant's own role
    again = migrate_fleet(own_targets(product, conn_file), location, {}, concurrency=2)
    assert {r.status for r in again.results} == {"current"}


def test_a_path_through_an_online_revision_runs_online(
    pg: PgSandbox, product: str, tmp_path: Path
) -> None:
    location = script(tmp_path / "s", {2, 3})
    fresh, started = pg.schema_tenant(product), pg.schema_tenant(product)
    conn_file = write_connections(tmp_path / "c.json", [fresh, started])
    first = migrate_fleet(own_targets(product, conn_file, [started.tenant]), location, {})
    assert first.ok and version(started) == "0003"
    started.as_tenant(
        f"UPDATE {started.schema}.alembic_version SET version_num = '0001';"
        f" DROP TABLE {started.schema}.entries; ALTER TABLE {started.schema}.ledgers"
        " DROP COLUMN closed"
    )
    report = migrate_fleet(own_targets(product, conn_file), location, {}, concurrency=2)
    assert report.ok, [r.error for r in report.results]
    by = {r.label: r for r in report.results}
    assert by[fresh.tenant].worker != os.getpid()  # 0001 is not rendered: online
    assert by[started.tenant].worker == os.getpid()  # 0002 and 0003 are
    assert by[started.tenant].revisions == ("0002", "0003")
    assert version(fresh) == version(started) == "0003"


def test_a_revision_that_names_the_schema_or_reads_the_connection_runs_online(
    pg: PgSandbox, product: str, tmp_path: Path
) -> None:
    bodies = {
        1: "    schema = op.get_context().version_table_schema\n"
        '    op.execute(f"CREATE TABLE {schema}.ledgers (id bigint PRIMARY KEY, name text)")',
        2: "    import sqlalchemy as sa\n"
        '    op.get_bind().execute(sa.text("SELECT 1")).scalar()\n'
        '    op.execute("CREATE TABLE entries (id bigint PRIMARY KEY, ledger_id bigint)")',
    }
    location = script(tmp_path / "s", {1, 2, 3}, bodies)
    svc = pg.schema_tenant(product)
    conn_file = write_connections(tmp_path / "c.json", [svc])
    report = migrate_fleet(own_targets(product, conn_file), location, {})
    assert report.ok, [r.error for r in report.results]
    assert sorted(report.rendered) == ["0003"]
    assert "depends on the tenant's schema" in report.online["0001"]
    assert "cannot render offline" in report.online["0002"]
    assert report.results[0].worker != os.getpid()
    assert version(svc) == "0003" and tables(svc) == {"alembic_version", "ledgers", "entries"}


def test_a_failing_revision_rolls_the_tenant_back_alone(
    pg: PgSandbox, product: str, tmp_path: Path
) -> None:
    location = script(tmp_path / "s", {1, 2, 3})
    good, bad = pg.schema_tenant(product), pg.schema_tenant(product)
    bad.as_tenant(f"CREATE TABLE {bad.schema}.entries (x int)")  # 0002 fails on it
    conn_file = write_connections(tmp_path / "c.json", [good, bad])
    report = migrate_fleet(own_targets(product, conn_file), location, {}, concurrency=2)
    by = {r.label: r for r in report.results}
    assert by[good.tenant].status == "migrated" and version(good) == "0003"
    assert by[bad.tenant].status == "failed"
    assert (by[bad.tenant].error or "").startswith("revision 0002: ")
    assert version(bad) is None and tables(bad) == {"entries"}  # 0001 rolled back too


def test_a_failed_canary_stops_the_rendered_fleet(
    pg: PgSandbox, product: str, tmp_path: Path
) -> None:
    location = script(tmp_path / "s", {1, 2, 3})
    first, second = (pg.schema_tenant(product, f"a{i}-{product}") for i in range(2))
    first.as_tenant(f"CREATE TABLE {first.schema}.ledgers (x int)")
    conn_file = write_connections(tmp_path / "c.json", [first, second])
    report = migrate_fleet(own_targets(product, conn_file), location, {}, canary=1)
    assert report.canary_failed
    assert [r.status for r in report.results] == ["failed", "skipped"]
    assert tables(second) == set()


def test_generic_mode_renders_too(pg: PgSandbox, product: str, tmp_path: Path) -> None:
    location = script(tmp_path / "s", {1, 2, 3})
    a, b = pg.schema_tenant(product), pg.schema_tenant(product)
    params = {**ADMIN, "dbname": a.database}
    targets = [
        t for t in discover_schemas_like(params, "tenant\\_%") if t.schema in (a.schema, b.schema)
    ]
    report = migrate_fleet(targets, location, params, concurrency=2)
    assert report.ok and sorted(report.rendered) == ["0001", "0002", "0003"]
    assert {r.worker for r in report.results} == {os.getpid()}
    assert version(a) == version(b) == "0003"


def test_a_shared_connection_carries_nothing_to_the_next_tenant(
    pg: PgSandbox, product: str, tmp_path: Path
) -> None:
    """Generic targets share a thread's connection: a TEMP table one tenant's SQL left
    (first in every search_path) is gone before the next tenant's transaction."""
    body = f"    op.execute('CREATE TEMP TABLE scratch (id int)')\n    op.execute({DDL[0]!r})"
    location = script(tmp_path / "s", {1, 2, 3}, {1: body})
    a, b, c = (pg.schema_tenant(product) for _ in range(3))
    params = {**ADMIN, "dbname": a.database}
    mine = {a.schema, b.schema, c.schema}
    targets = [t for t in discover_schemas_like(params, "tenant\\_%") if t.schema in mine]
    report = migrate_fleet(targets, location, params, concurrency=1)
    assert report.ok, [r.error for r in report.results]
    assert sorted(report.rendered) == ["0001", "0002", "0003"]
    assert {r.worker for r in report.results} == {os.getpid()}  # no process: one thread
    assert version(a) == version(b) == version(c) == "0003"


def test_the_timeout_bounds_the_whole_tenant_not_each_statement(
    pg: PgSandbox, product: str, tmp_path: Path
) -> None:
    """Three statements of 0.6 s each pass a 1 s statement_timeout one by one; the
    tenant's deadline stops them at 1 s, and its transaction rolls back."""
    body = "\n".join(
        [f"    op.execute({DDL[1]!r})"] + ["    op.execute('SELECT pg_sleep(0.6)')"] * 3
    )
    location = script(tmp_path / "s", {1, 2, 3}, {2: body})
    a = pg.schema_tenant(product)
    conn_file = write_connections(tmp_path / "c.json", [a])
    report = migrate_fleet(own_targets(product, conn_file), location, {}, timeout=1.0)
    (result,) = report.results
    assert report.rendered and not report.ok
    assert result.error and "timed out after 1 s" in result.error, result.error
    assert result.seconds < 1.6
    assert version(a) is None and tables(a) == set()  # one transaction: nothing stays


def test_percent_signs_reach_the_table_as_online(
    pg: PgSandbox, product: str, tmp_path: Path
) -> None:
    """Offline SQL doubles ``%`` for the driver's paramstyle; applied as text it must
    store what the online runner stores, character for character."""
    body = (
        f"    op.execute({DDL[0]!r})\n"
        "    op.execute(\"INSERT INTO ledgers VALUES (1, 'a%b c%%d'), (2, 'e%s')\")\n"
        "    op.execute(\"UPDATE ledgers SET name = name || '%' WHERE name LIKE 'e%'\")"
    )
    rendered, online = pg.schema_tenant(product), pg.schema_tenant(product)
    for svc, once in ((rendered, {1, 2, 3}), (online, set())):
        location = script(tmp_path / svc.schema, once, {1: body})
        conn_file = write_connections(tmp_path / f"{svc.schema}.json", [svc])
        targets = own_targets(product, conn_file, [svc.tenant])
        report = migrate_fleet(targets, location, {})
        assert report.ok and bool(report.rendered) == bool(once), report.results[0].error
    query = "SELECT id, name FROM {}.ledgers ORDER BY id"
    expected = [(1, "a%b c%%d"), (2, "e%s%")]
    assert rendered.sql(query.format(rendered.schema)) == expected
    assert online.sql(query.format(online.schema)) == expected


def test_a_tenant_past_its_deadline_leaves_the_shared_connection_to_the_next(
    pg: PgSandbox, product: str, tmp_path: Path
) -> None:
    """The first tenant's lock is held elsewhere: its deadline cancels the wait, and the
    next tenant, on the same thread's connection, migrates untouched by that cancel."""
    import psycopg

    location = script(tmp_path / "s", {1, 2, 3})
    a, b = pg.schema_tenant(product), pg.schema_tenant(product)
    params = {**ADMIN, "dbname": a.database}
    by_schema = {t.schema: t for t in discover_schemas_like(params, "tenant\\_%")}
    holder = psycopg.connect(**params)
    try:
        holder.execute(f"CREATE TABLE {a.schema}.alembic_version (version_num varchar(32))")
        holder.execute(f"LOCK TABLE {a.schema}.alembic_version IN ACCESS EXCLUSIVE MODE")
        report = migrate_fleet(
            [by_schema[a.schema], by_schema[b.schema]],
            location,
            params,
            concurrency=1,
            timeout=1.0,
        )
    finally:
        holder.close()
    first, second = report.results
    assert first.status == "failed" and "timed out after 1 s" in (first.error or "")
    assert "process" not in (first.error or "") and report.rendered  # not the runner's
    assert second.status == "migrated", second.error
    assert version(b) == "0003" and version(a) is None
