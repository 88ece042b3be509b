"""The bulk read of version tables (``tenant_infra.migrate.versions``) on the real
PostgreSQL: tenants at head never reach a process, and nothing a tenant does to its
own version table runs code as the reader, fools it, or holds up a neighbour."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import LEDGER, cli
from pgsandbox import ADMIN, PgSandbox, Service, admin_exec, version, write_connections
from test_fleet import own_targets, product_args

from tenant_infra.migrate.connection import with_database
from tenant_infra.migrate.fleet import migrate_fleet
from tenant_infra.migrate.versions import at_head, read_versions
from tenant_infra.tenant import quote_ident

HEAD = "0003"


@pytest.fixture
def reader(pg: PgSandbox, product: str) -> Iterator[dict[str, str]]:
    """A non-superuser platform reader (``pg_read_all_data``): row-level security and
    a view's functions would apply to it, as to any reader but a superuser."""
    name = f"reader_{product}"
    admin_exec(f"CREATE ROLE {quote_ident(name)} LOGIN IN ROLE pg_read_all_data")
    pg.roles.append(name)
    yield {**ADMIN, "user": name}


def _fleet(pg: PgSandbox, product: str, tmp_path: Path, n: int = 3) -> list[Service]:
    services = [pg.schema_tenant(product) for _ in range(n)]
    services.append(pg.database_tenant(product))
    conn_file = write_connections(tmp_path / "c.json", services)
    assert migrate_fleet(own_targets(product, conn_file), LEDGER, {}, concurrency=2).ok
    for svc in services:
        admin_exec(f"GRANT CONNECT ON DATABASE {quote_ident(svc.database)} TO reader_{product}")
    return services


def _log_table(svc: Service) -> str:
    """A table the tenant lets anyone write: where its trap would report the reader."""
    table = f"{quote_ident(svc.schema)}.calls"
    svc.as_tenant(f"CREATE TABLE {table} (who text); GRANT INSERT ON {table} TO PUBLIC")
    return table


def _callers(svc: Service, table: str) -> set[str]:
    return {str(r[0]) for r in svc.sql(f"SELECT who FROM {table}")}


def test_tenants_at_head_are_current_without_a_process(
    pg: PgSandbox, product: str, tmp_path: Path, reader: dict[str, str]
) -> None:
    services = _fleet(pg, product, tmp_path)
    behind = pg.schema_tenant(product)  # never migrated: the runner's
    conn_file = write_connections(tmp_path / "all.json", [*services, behind])
    report = migrate_fleet(
        own_targets(product, conn_file), LEDGER, {}, concurrency=2, read_in_bulk=reader
    )
    assert report.ok and report.read_in_bulk == len(services)
    by = {r.label: r for r in report.results}
    for svc in services:
        assert by[svc.tenant].status == "current"
        assert by[svc.tenant].worker == os.getpid()  # no child was given it
    assert by[behind.tenant].status == "migrated" and by[behind.tenant].worker != os.getpid()
    assert version(behind) == HEAD


def test_a_tenant_behind_head_goes_to_the_runner(
    pg: PgSandbox, product: str, tmp_path: Path, reader: dict[str, str]
) -> None:
    services = _fleet(pg, product, tmp_path)
    late = services[0]
    late.as_tenant(f"UPDATE {quote_ident(late.schema)}.alembic_version SET version_num = '0002'")
    targets = [s.target for s in services]
    assert at_head(reader, targets, HEAD) == {s.target for s in services[1:]}
    assert read_versions(reader, [late.target]) == {late.target: frozenset({"0002"})}


def test_a_view_for_a_version_table_never_runs_as_the_reader(
    pg: PgSandbox, product: str, tmp_path: Path, reader: dict[str, str]
) -> None:
    victim, neighbour, *_ = _fleet(pg, product, tmp_path)
    log = _log_table(victim)
    schema = quote_ident(victim.schema)
    victim.as_tenant(
        f"DROP TABLE {schema}.alembic_version;"
        f" CREATE FUNCTION {schema}.trap() RETURNS SETOF varchar LANGUAGE plpgsql AS $$"
        f" BEGIN INSERT INTO {log} VALUES (current_user); RETURN NEXT '{HEAD}'; END $$;"
        f" CREATE VIEW {schema}.alembic_version AS SELECT {schema}.trap() AS version_num"
    )
    found = read_versions(reader, [victim.target, neighbour.target])
    assert found == {neighbour.target: frozenset({HEAD})}
    assert _callers(victim, log) == set()


def test_row_level_security_is_not_read(
    pg: PgSandbox, product: str, tmp_path: Path, reader: dict[str, str]
) -> None:
    victim, neighbour, *_ = _fleet(pg, product, tmp_path)
    log = _log_table(victim)
    schema = quote_ident(victim.schema)
    victim.as_tenant(
        f"CREATE FUNCTION {schema}.trap() RETURNS boolean LANGUAGE plpgsql AS $$"
        f" BEGIN INSERT INTO {log} VALUES (current_user); RETURN true; END $$;"
        f" ALTER TABLE {schema}.alembic_version ENABLE ROW LEVEL SECURITY;"
        f" CREATE POLICY everyone ON {schema}.alembic_version USING ({schema}.trap())"
    )
    found = read_versions(reader, [victim.target, neighbour.target])
    assert found == {neighbour.target: frozenset({HEAD})}
    assert _callers(victim, log) == set()


def test_a_tenant_type_for_the_version_column_is_not_read(
    pg: PgSandbox, product: str, tmp_path: Path, reader: dict[str, str]
) -> None:
    victim, neighbour, *_ = _fleet(pg, product, tmp_path)
    schema = quote_ident(victim.schema)
    victim.as_tenant(
        f"CREATE DOMAIN {schema}.rev AS varchar(32);"
        f" ALTER TABLE {schema}.alembic_version ALTER COLUMN version_num TYPE {schema}.rev"
    )
    found = read_versions(reader, [victim.target, neighbour.target])
    assert found == {neighbour.target: frozenset({HEAD})}


def test_a_tenant_holding_its_table_does_not_hold_up_its_neighbours(
    pg: PgSandbox, product: str, tmp_path: Path, reader: dict[str, str]
) -> None:
    services = _fleet(pg, product, tmp_path, n=5)
    holder = services[2]
    with psycopg.connect(**holder.params()) as conn:  # type: ignore[arg-type]
        conn.execute(
            f"LOCK TABLE {quote_ident(holder.schema)}.alembic_version IN ACCESS EXCLUSIVE MODE"
        )
        found = read_versions(reader, [s.target for s in services])
    assert set(found) == {s.target for s in services} - {holder.target}


def test_a_reader_without_select_reads_nothing(
    pg: PgSandbox, product: str, tmp_path: Path, reader: dict[str, str]
) -> None:
    services = _fleet(pg, product, tmp_path)
    name = f"lister_{product}"
    admin_exec(f"CREATE ROLE {quote_ident(name)} LOGIN")
    pg.roles.append(name)
    for svc in services:
        admin_exec(f"GRANT CONNECT ON DATABASE {quote_ident(svc.database)} TO {quote_ident(name)}")
    assert read_versions({**ADMIN, "user": name}, [s.target for s in services]) == {}
    gone = {**with_database(ADMIN, "postgres"), "port": "1"}  # nothing listens there
    assert read_versions(gone, [s.target for s in services]) == {}


def test_cli_reports_the_bulk_read_and_can_do_without_it(
    pg: PgSandbox, product: str, tmp_path: Path, reader: dict[str, str]
) -> None:
    services = _fleet(pg, product, tmp_path)
    conn_file = write_connections(tmp_path / "c2.json", services)
    for flag, expected in (("--bulk-read", len(services)), ("--no-bulk-read", 0)):
        done = cli(*product_args(product, conn_file, "--format", "json", flag), products=(product,))
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["read_in_bulk"] == expected
        assert {t["status"] for t in report["tenants"]} == {"current"}


def test_an_expression_index_or_statistics_never_run_as_the_reader(
    pg: PgSandbox, product: str, tmp_path: Path, reader: dict[str, str]
) -> None:
    """Planning a SELECT folds an index's immutable expression: the read must not plan."""
    victim, neighbour, *_ = _fleet(pg, product, tmp_path)
    log = _log_table(victim)
    schema = quote_ident(victim.schema)
    victim.as_tenant(
        f"GRANT USAGE ON SCHEMA {schema} TO PUBLIC;"
        f" GRANT SELECT ON {schema}.alembic_version TO PUBLIC;"
        f" CREATE FUNCTION {schema}.payload() RETURNS void LANGUAGE plpgsql AS $$"
        f" BEGIN IF current_user <> '{victim.role}' THEN"
        f" INSERT INTO {log} VALUES (current_user); END IF; END $$;"
        f" CREATE FUNCTION {schema}.tag(int) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$"
        f" BEGIN PERFORM {schema}.payload(); RETURN ''; END $$;"
        f" CREATE INDEX ON {schema}.alembic_version ((version_num || {schema}.tag(1)));"
        f" CREATE INDEX ON {schema}.alembic_version (version_num) WHERE {schema}.tag(2) = '';"
        f" CREATE STATISTICS {schema}.s ON (version_num || {schema}.tag(3))"
        f" FROM {schema}.alembic_version"
    )
    before = _callers(victim, log)
    found = read_versions(reader, [victim.target, neighbour.target])
    assert found[neighbour.target] == frozenset({HEAD})
    assert _callers(victim, log) == before  # nothing ran as the reader
