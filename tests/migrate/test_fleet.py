"""migrate_fleet and the migrate CLI against the real PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import LEDGER, write_script_dir
from pgsandbox import ADMIN, PgSandbox, admin_exec, tables, version

from tenant_infra.errors import InvalidInput
from tenant_infra.migrate.connection import with_database
from tenant_infra.migrate.fleet import migrate_fleet
from tenant_infra.migrate.report import progress_line, to_dict
from tenant_infra.migrate.targets import discover_product

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "tenant_infra.migrate", *args],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )


def dsn(db: str) -> str:
    p = with_database(ADMIN, db)
    return f"postgresql://{p['user']}@{p.get('host', '127.0.0.1')}:{p.get('port', '5432')}/{db}"


def test_failure_does_not_stop_others_and_rerun_finishes(pg: PgSandbox, product: str) -> None:
    a = pg.schema_tenant(product)
    b = pg.database_tenant(product)
    c = pg.schema_tenant(product)
    b.sql(f"CREATE TABLE {b.schema}.operations (id int)")  # conflicts with 0002
    targets = discover_product(ADMIN, product)
    assert {t.tenant for t in targets} == {a.tenant, b.tenant, c.tenant}

    seen: list[str] = []
    report = migrate_fleet(
        targets, LEDGER, ADMIN, concurrency=2,
        on_result=lambda r, i, n: seen.append(progress_line(r, i, n)),
    )
    by = {r.label: r for r in report.results}
    assert not report.ok
    assert by[a.tenant].status == by[c.tenant].status == "migrated"
    assert by[b.tenant].status == "failed"
    assert (by[b.tenant].error or "").startswith("revision 0002: ")
    assert version(a) == version(c) == "0003"
    assert version(b) is None and tables(b) == {"operations"}
    assert len(seen) == 3 and any(f"{b.tenant} {product}: - -> - failed" in s for s in seen)
    assert to_dict(report)["counts"] == {"migrated": 2, "failed": 1}

    b.sql(f"DROP TABLE {b.schema}.operations")
    again = migrate_fleet(discover_product(ADMIN, product), LEDGER, ADMIN, concurrency=2)
    assert again.ok
    assert {r.label: r.status for r in again.results} == {
        a.tenant: "current", b.tenant: "migrated", c.tenant: "current"
    }
    assert version(b) == "0003"


def test_canary_failure_stops_the_rest(pg: PgSandbox, product: str) -> None:
    first, second, third = (pg.schema_tenant(product, f"a{i}-{product}") for i in range(3))
    first.sql(f"CREATE TABLE {first.schema}.ledgers (id int)")
    targets = discover_product(ADMIN, product)
    assert next(t.tenant for t in targets) == first.tenant
    report = migrate_fleet(targets, LEDGER, ADMIN, canary=1)
    assert report.canary_failed and not report.ok
    assert [r.status for r in report.results] == ["failed", "skipped", "skipped"]
    assert version(second) is None and tables(third) == set()

    first.sql(f"DROP TABLE {first.schema}.ledgers")
    report = migrate_fleet(targets, LEDGER, ADMIN, canary=1, concurrency=2)
    assert report.ok and [r.status for r in report.results] == ["migrated"] * 3


def test_tenant_filter_and_unknown_tenant(pg: PgSandbox, product: str) -> None:
    a, b = pg.schema_tenant(product), pg.database_tenant(product)
    only = discover_product(ADMIN, product, [b.tenant])
    assert [(t.tenant, t.database, t.role) for t in only] == [(b.tenant, b.database, b.role)]
    with pytest.raises(InvalidInput, match="nobody-here"):
        discover_product(ADMIN, product, [a.tenant, "nobody-here"])


def test_two_concurrent_runners_apply_each_revision_once(
    pg: PgSandbox, product: str, tmp_path: Path
) -> None:
    svcs = [pg.schema_tenant(product) for _ in range(3)]
    # Slow first revision so that the two runners overlap on every tenant.
    script = write_script_dir(
        tmp_path / "slow",
        [
            "CREATE TABLE applied (rev text);\nINSERT INTO applied VALUES ('0001');\n"
            "SELECT pg_sleep(0.3)",
            "INSERT INTO applied VALUES ('0002')",
        ],
    )
    args = ["--script-location", str(script), "--dsn", dsn(product),
            "--schemas-like", "tenant\\_%", "--format", "json"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "tenant_infra.migrate", *args]
    runners = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env) for _ in range(2)]
    outs = [r.communicate(timeout=120) for r in runners]
    assert [r.returncode for r in runners] == [0, 0], outs
    reports = [json.loads(out) for out, _ in outs]
    waited = [t["seconds"] for rep in reports for t in rep["tenants"] if t["status"] == "current"]
    assert max(waited) > 0.1  # the runners did overlap: someone waited on a tenant's lock
    for svc in svcs:
        statuses = sorted(
            t["status"] for rep in reports for t in rep["tenants"] if t["where"] == svc.schema
        )
        assert statuses == ["current", "migrated"]
        rows = admin_exec(f"SELECT rev FROM {svc.schema}.applied ORDER BY rev", product)
        assert rows == [("0001",), ("0002",)]
        assert version(svc) == "0002"


def test_cli_dry_run_sql_and_exit_codes(pg: PgSandbox, product: str, tmp_path: Path) -> None:
    good, bad = pg.schema_tenant(product), pg.schema_tenant(product)
    base = ["--script-location", str(LEDGER), "--dsn", dsn(product), "--schemas-like", "tenant\\_%"]

    dry = cli(*base, "--dry-run", "--format", "json")
    assert dry.returncode == 0, dry.stderr
    pending = {t["where"]: t for t in json.loads(dry.stdout)["tenants"]}
    assert pending[good.schema]["revisions"] == ["0001", "0002", "0003"]
    assert pending[good.schema]["status"] == "pending"

    sql = cli(*base, "--sql")
    assert sql.returncode == 0, sql.stderr
    assert f'SET LOCAL search_path TO "{good.schema}"' in sql.stdout
    assert "CREATE TABLE balances" in sql.stdout
    assert tables(good) == set() and tables(bad) == set()  # nothing ran

    bad.sql(f"CREATE TABLE {bad.schema}.accounts (id int)")
    run = cli(*base, "--concurrency", "2", "--format", "json")
    assert run.returncode == 1
    got = {t["where"]: t for t in json.loads(run.stdout)["tenants"]}
    assert got[good.schema]["status"] == "migrated" and got[good.schema]["after"] == "0003"
    assert got[bad.schema]["status"] == "failed" and "accounts" in got[bad.schema]["error"]
    assert "[2/2]" in run.stderr  # plain progress lines when not on a terminal

    table = cli(*base)
    assert table.returncode == 1
    assert "1 current" in table.stdout and "1 failed" in table.stdout


def test_cli_invalid_input_is_one_line_exit_2(tmp_path: Path) -> None:
    both = cli("--script-location", str(LEDGER), "--schemas-like", "a%", "--databases-like", "b%")
    assert both.returncode == 2
    assert both.stderr.strip().count("\n") == 0 and "exactly one" in both.stderr
    assert cli("--product", "nosuchproduct").returncode == 2
    notdir = cli("--script-location", str(tmp_path), "--schemas-like", "x%",
                 "--dsn", "postgresql://postgres:s3cret@127.0.0.1:1/none")
    assert notdir.returncode in (1, 2)
    assert "s3cret" not in notdir.stderr + notdir.stdout


def test_unreachable_server_never_shows_password(tmp_path: Path) -> None:
    r = cli("--script-location", str(LEDGER), "--schemas-like", "x%",
            "--dsn", "postgresql://postgres:s3cret@127.0.0.1:1/none")
    assert r.returncode == 1
    assert "cannot connect" in r.stderr and "s3cret" not in r.stderr + r.stdout


def test_databases_like_generic_mode(pg: PgSandbox, product: str, tmp_path: Path) -> None:
    for i in range(2):
        db = pg.database(f"{product}_g{i}")
        admin_exec("CREATE SCHEMA app", db)
    script = write_script_dir(tmp_path / "s", ["CREATE TABLE t (id int)"])
    r = cli("--script-location", str(script), "--dsn", dsn("postgres"),
            "--databases-like", f"{product}\\_g%", "--schema", "app", "--format", "json",
            "--concurrency", "2")
    assert r.returncode == 0, r.stderr
    assert sorted(t["where"] for t in json.loads(r.stdout)["tenants"]) == [
        f"{product}_g0.app", f"{product}_g1.app"
    ]
    assert admin_exec("SELECT version_num FROM app.alembic_version", f"{product}_g1") == [("0001",)]
