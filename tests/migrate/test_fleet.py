"""migrate_fleet and the migrate CLI against the real PostgreSQL.

``--product`` runs connect as each tenant's own role, with credentials from a
connections file (``write_connections``); the admin DSN only discovers the tenants.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from conftest import LEDGER, REPO, cli, cli_command, write_script_dir
from pgsandbox import ADMIN, PgSandbox, admin_exec, tables, version, write_connections

from tenant_infra.errors import InvalidInput
from tenant_infra.migrate.connection import with_database
from tenant_infra.migrate.credentials import attach_credentials, load_documents
from tenant_infra.migrate.fleet import migrate_fleet
from tenant_infra.migrate.report import progress_line, to_dict
from tenant_infra.migrate.targets import MigrationTarget, connects_as_superuser, discover_product
from tenant_infra.tenant import quote_ident


def dsn(db: str) -> str:
    """A DSN without a password (trust auth here; else PGPASSWORD or ~/.pgpass)."""
    p = with_database(ADMIN, db)
    return f"postgresql://{p['user']}@{p.get('host', '127.0.0.1')}:{p.get('port', '5432')}/{db}"


def own_targets(
    product: str, conn_file: Path, tenants: Sequence[str] = ()
) -> list[MigrationTarget]:
    """What --product does: discover as admin, then attach each tenant's own credentials."""
    found = discover_product(ADMIN, product, tenants)
    return attach_credentials(found, load_documents([conn_file]), environ={})


def product_args(product: str, conn_file: Path, *more: str) -> list[str]:
    return ["--product", product, "--dsn", dsn("postgres"), "--connections", str(conn_file), *more]


def test_failure_does_not_stop_others_and_rerun_finishes(
    pg: PgSandbox, product: str, tmp_path: Path
) -> None:
    a = pg.schema_tenant(product)
    b = pg.database_tenant(product)
    c = pg.schema_tenant(product)
    conn_file = write_connections(tmp_path / "c.json", [a, b, c])
    b.sql(f"CREATE TABLE {b.schema}.operations (id int)")  # conflicts with 0002
    targets = own_targets(product, conn_file)
    assert {t.tenant for t in targets} == {a.tenant, b.tenant, c.tenant}

    seen: list[str] = []
    report = migrate_fleet(
        targets,
        LEDGER,
        {},
        concurrency=2,
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
    again = migrate_fleet(own_targets(product, conn_file), LEDGER, {}, concurrency=2)
    assert again.ok
    assert {r.label: r.status for r in again.results} == {
        a.tenant: "current",
        b.tenant: "migrated",
        c.tenant: "current",
    }
    assert version(b) == "0003"


def test_canary_failure_stops_the_rest(pg: PgSandbox, product: str, tmp_path: Path) -> None:
    first, second, third = (pg.schema_tenant(product, f"a{i}-{product}") for i in range(3))
    conn_file = write_connections(tmp_path / "c.json", [first, second, third])
    first.sql(f"CREATE TABLE {first.schema}.ledgers (id int)")
    targets = own_targets(product, conn_file)
    assert next(t.tenant for t in targets) == first.tenant
    report = migrate_fleet(targets, LEDGER, {}, canary=1)
    assert report.canary_failed and not report.ok
    assert [r.status for r in report.results] == ["failed", "skipped", "skipped"]
    assert version(second) is None and tables(third) == set()

    first.sql(f"DROP TABLE {first.schema}.ledgers")
    report = migrate_fleet(targets, LEDGER, {}, canary=1, concurrency=2)
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
    svcs = [pg.schema_tenant(product) for _ in range(2)] + [pg.database_tenant(product)]
    conn_file = write_connections(tmp_path / "c.json", svcs)
    # Slow first revision so that the two runners overlap on every tenant.
    script = write_script_dir(
        tmp_path / "slow",
        [
            "CREATE TABLE applied (rev text, who text DEFAULT current_user);\n"
            "INSERT INTO applied (rev) VALUES ('0001');\nSELECT pg_sleep(0.3)",
            "INSERT INTO applied (rev) VALUES ('0002')",
        ],
    )
    cmd, env = cli_command(
        *product_args(product, conn_file, "--script-location", str(script), "--format", "json"),
        products=(product,),
    )
    runners = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    outs = [r.communicate(timeout=120) for r in runners]
    assert [r.returncode for r in runners] == [0, 0], outs
    reports = [json.loads(out) for out, _ in outs]
    waited = [t["seconds"] for rep in reports for t in rep["tenants"] if t["status"] == "current"]
    assert max(waited) > 0.1  # the runners did overlap: someone waited on a tenant's lock
    for svc in svcs:
        statuses = sorted(
            t["status"] for rep in reports for t in rep["tenants"] if t["tenant"] == svc.tenant
        )
        assert statuses == ["current", "migrated"]
        rows = svc.sql(f"SELECT rev, who FROM {svc.schema}.applied ORDER BY rev")
        assert rows == [("0001", svc.role), ("0002", svc.role)]  # as the tenant role
        assert version(svc) == "0002"


def test_cli_dry_run_sql_and_exit_codes(pg: PgSandbox, product: str, tmp_path: Path) -> None:
    good, bad = pg.schema_tenant(product), pg.database_tenant(product)
    base = product_args(product, write_connections(tmp_path / "c.json", [good, bad]))

    dry = cli(*base, "--dry-run", "--format", "json", products=(product,))
    assert dry.returncode == 0, dry.stderr
    pending = {t["tenant"]: t for t in json.loads(dry.stdout)["tenants"]}
    assert pending[good.tenant]["revisions"] == ["0001", "0002", "0003"]
    assert pending[good.tenant]["status"] == pending[bad.tenant]["status"] == "pending"

    sql = cli(*base, "--sql", products=(product,))
    assert sql.returncode == 0, sql.stderr
    assert f'SET LOCAL search_path TO "{good.schema}"' in sql.stdout
    assert "CREATE TABLE balances" in sql.stdout
    assert "SET LOCAL ROLE" not in sql.stdout
    assert tables(good) == set() and tables(bad) == set()  # nothing ran

    bad.sql(f"CREATE TABLE {bad.schema}.accounts (id int)")
    run = cli(*base, "--concurrency", "2", "--format", "json", products=(product,))
    assert run.returncode == 1
    got = {t["tenant"]: t for t in json.loads(run.stdout)["tenants"]}
    assert got[good.tenant]["status"] == "migrated" and got[good.tenant]["after"] == "0003"
    assert got[bad.tenant]["status"] == "failed" and "accounts" in got[bad.tenant]["error"]
    assert "[2/2]" in run.stderr  # plain progress lines when not on a terminal
    owners = good.sql(
        f"SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = '{good.schema}'"
    )
    assert owners == [(good.role,)]

    table = cli(*base, products=(product,))
    assert table.returncode == 1
    assert "1 current" in table.stdout and "1 failed" in table.stdout
    for out in (dry, sql, run, table):
        assert good.password not in out.stdout + out.stderr
        assert bad.password not in out.stdout + out.stderr


def test_tenant_code_cannot_escalate_during_product_migrate(
    pg: PgSandbox, product: str, tmp_path: Path
) -> None:
    """(a) Tenant-owned code that a migration executes runs as the tenant, never as the
    admin. Under the old design (admin session + SET LOCAL ROLE) the trigger's RESET
    ROLE made it the admin (a superuser here): the witness row said postgres/true."""
    svcs = [pg.schema_tenant(product), pg.database_tenant(product)]
    conn_file = write_connections(tmp_path / "c.json", svcs)
    one = write_script_dir(tmp_path / "one", ["CREATE TABLE t (id int)"])
    two = write_script_dir(  # 0002 is a data migration: it fires the DEFAULT and the trigger
        tmp_path / "two",
        [
            "CREATE TABLE t (id int)",
            "ALTER TABLE t ADD stamp text;\nINSERT INTO t (stamp) VALUES ('m')",
        ],
    )
    first = cli(
        *product_args(product, conn_file, "--script-location", str(one)), products=(product,)
    )
    assert first.returncode == 0, first.stderr
    for svc in svcs:
        s = svc.schema
        # As the tenant: a trigger on its alembic_version, and a function-based DEFAULT
        # on its table, both trying to become the session user and recording who they are.
        svc.as_tenant(f"""
            CREATE TABLE {s}.witness (via text, who text, su bool);
            CREATE FUNCTION {s}.spy(via text) RETURNS text LANGUAGE plpgsql AS $$
            BEGIN
                RESET ROLE;
                INSERT INTO {s}.witness SELECT via, current_user, rolsuper
                    FROM pg_catalog.pg_roles WHERE rolname = current_user;
                RETURN via;
            END $$;
            CREATE FUNCTION {s}.spy_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN PERFORM {s}.spy('trigger'); RETURN NEW; END $$;
            CREATE TRIGGER spy BEFORE INSERT OR UPDATE ON {s}.alembic_version
                FOR EACH ROW EXECUTE FUNCTION {s}.spy_trigger();
            ALTER TABLE {s}.t ALTER COLUMN id SET DEFAULT length({s}.spy('default'));
        """)
    second = cli(
        *product_args(
            product,
            conn_file,
            "--script-location",
            str(two),
            "--format",
            "json",
            "--concurrency",
            "2",
        ),
        products=(product,),
    )
    assert second.returncode == 0, second.stdout + second.stderr
    assert {t["status"] for t in json.loads(second.stdout)["tenants"]} == {"migrated"}
    for svc in svcs:
        witness = set(svc.sql(f"SELECT via, who, su FROM {svc.schema}.witness"))
        # Both ran (the DEFAULT during the data migration, the trigger on the version
        # update), and only ever as the tenant role, never as a superuser.
        assert witness == {("default", svc.role, False), ("trigger", svc.role, False)}
        assert svc.sql(f"SELECT id, stamp FROM {svc.schema}.t") == [(7, "m")]
        assert version(svc) == "0002"


def test_missing_credentials_fail_that_tenant_only(
    pg: PgSandbox, product: str, tmp_path: Path
) -> None:
    """(b) A tenant without a document (and no Vault) fails alone, with the reason."""
    a, b, orphan = pg.schema_tenant(product), pg.database_tenant(product), pg.schema_tenant(product)
    conn_file = write_connections(tmp_path / "c.json", [a, b])
    r = cli(
        *product_args(product, conn_file, "--format", "json", "--concurrency", "2"),
        products=(product,),
    )
    assert r.returncode == 1, r.stderr
    got = {t["tenant"]: t for t in json.loads(r.stdout)["tenants"]}
    assert got[a.tenant]["status"] == got[b.tenant]["status"] == "migrated"
    assert got[orphan.tenant]["status"] == "failed"
    assert got[orphan.tenant]["error"].startswith(
        f"no credentials for tenant {orphan.tenant} product {product}: pass --connections"
    )
    assert "VAULT_ADDR" in got[orphan.tenant]["error"]
    assert version(a) == version(b) == "0003" and tables(orphan) == set()


def test_tenants_whose_logins_cannot_log_in_are_left_out_not_failed(
    pg: PgSandbox, product: str, tmp_path: Path
) -> None:
    """A suspended or retained service's logins are NOLOGIN: the run leaves it out
    (named, before any credential is read) and is ok; resuming migrates it."""
    a, resting, retained = (pg.schema_tenant(product) for _ in range(3))
    conn_file = write_connections(tmp_path / "c.json", [a, resting])  # retained: no document
    for svc in (resting, retained):
        admin_exec(f"ALTER ROLE {quote_ident(svc.role)} NOLOGIN")
    r = cli(*product_args(product, conn_file, "--format", "json"), products=(product,))
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert [t["tenant"] for t in report["tenants"]] == [a.tenant]
    assert sorted(report["without_login"]) == sorted([resting.tenant, retained.tenant])
    assert version(a) == "0003" and version(resting) is None and version(retained) is None

    admin_exec(f"ALTER ROLE {quote_ident(resting.role)} LOGIN")  # resumed
    table = cli(*product_args(product, conn_file), products=(product,))
    assert table.returncode == 0, table.stderr
    assert "1 tenant(s) left out, no login of theirs may log in" in table.stdout
    assert retained.tenant in table.stdout and version(resting) == "0003"


def test_document_of_the_wrong_mode_fails_that_tenant(
    pg: PgSandbox, product: str, tmp_path: Path
) -> None:
    svc = pg.database_tenant(product)
    doc = svc.document()
    doc["isolation"], doc["postgresql"]["database"] = "SCHEMA", product
    (tmp_path / "c.json").write_text(json.dumps(doc))  # one document, not a list
    (result,) = own_targets(product, tmp_path / "c.json")
    assert result.params is None
    assert result.unavailable is not None and "SCHEMA mode" in result.unavailable
    report = migrate_fleet([result], LEDGER, {})
    assert [r.status for r in report.results] == ["failed"] and tables(svc) == set()


def test_dsn_with_password_is_refused_before_anything_runs(pg: PgSandbox, product: str) -> None:
    """(c) argv is visible in ps: a --dsn with a password is refused, exit 2, one line."""
    svc = pg.schema_tenant(product)
    p = with_database(ADMIN, product)
    host, port, user = p.get("host", "127.0.0.1"), p.get("port", "5432"), p["user"]
    for bad in (
        f"postgresql://{user}:s3cret@{host}:{port}/{product}",
        f"postgresql+psycopg://{user}:s3cret@{host}:{port}/{product}",
        f"postgresql://{user}@{host}:{port}/{product}?password=s3cret",
        f"host={host} port={port} dbname={product} user={user} password=s3cret",
    ):
        for mode in (
            ["--schemas-like", "tenant\\_%", "--script-location", str(LEDGER)],
            ["--product", product],
        ):
            r = cli("--dsn", bad, *mode, products=(product,))
            assert r.returncode == 2, (bad, r.stdout, r.stderr)
            assert r.stderr.strip().count("\n") == 0 and r.stdout == ""
            assert "TENANT_INFRA_ADMIN_DSN, PGPASSWORD or ~/.pgpass" in r.stderr
            assert "s3cret" not in r.stderr
    assert tables(svc) == set()


def test_cli_invalid_input_is_one_line_exit_2(tmp_path: Path) -> None:
    both = cli("--script-location", str(LEDGER), "--schemas-like", "a%", "--databases-like", "b%")
    assert both.returncode == 2
    assert both.stderr.strip().count("\n") == 0 and "exactly one" in both.stderr
    assert cli("--product", "nosuchproduct").returncode == 2
    notdir = cli(
        "--script-location",
        str(tmp_path),
        "--schemas-like",
        "x%",
        "--dsn",
        "postgresql://postgres@127.0.0.1:1/none",
    )
    assert notdir.returncode in (1, 2)
    generic_conn = cli(
        "--script-location",
        str(LEDGER),
        "--schemas-like",
        "x%",
        "--connections",
        str(tmp_path / "c.json"),
    )
    assert generic_conn.returncode == 2 and "--connections needs --product" in generic_conn.stderr
    (tmp_path / "bad.json").write_text('{"tenant": "acme", "postgresql": {"password": "s3cret"}}')
    bad_doc = cli("--product", "ledger", "--connections", str(tmp_path / "bad.json"))
    assert bad_doc.returncode == 2 and "s3cret" not in bad_doc.stderr
    assert bad_doc.stderr.strip().count("\n") == 0


def test_unreachable_server_never_shows_password(tmp_path: Path) -> None:
    """A password may come from the environment; it never shows in a message."""
    r = cli(
        "--script-location",
        str(LEDGER),
        "--schemas-like",
        "x%",
        env={"TENANT_INFRA_ADMIN_DSN": "postgresql://postgres:s3cret@127.0.0.1:1/none"},
    )
    assert r.returncode == 1
    assert "cannot connect" in r.stderr and "s3cret" not in r.stderr + r.stdout


def test_unreachable_tenant_server_fails_that_tenant_without_password(
    pg: PgSandbox, product: str, tmp_path: Path
) -> None:
    svc, ok = pg.schema_tenant(product), pg.schema_tenant(product)
    doc = svc.document()
    doc["postgresql"]["port"] = 1
    write_connections(tmp_path / "ok.json", [ok])
    (tmp_path / "down.json").write_text(json.dumps([doc]))
    r = cli(
        "--product",
        product,
        "--dsn",
        dsn("postgres"),
        "--format",
        "json",
        "--connections",
        str(tmp_path / "ok.json"),
        "--connections",
        str(tmp_path / "down.json"),
        products=(product,),
    )
    assert r.returncode == 1
    got = {t["tenant"]: t for t in json.loads(r.stdout)["tenants"]}
    assert got[ok.tenant]["status"] == "migrated"
    assert got[svc.tenant]["status"] == "failed" and "cannot connect" in got[svc.tenant]["error"]
    assert svc.password not in r.stdout + r.stderr and ok.password not in r.stdout + r.stderr


def test_databases_like_generic_mode(pg: PgSandbox, product: str, tmp_path: Path) -> None:
    for i in range(2):
        db = pg.database(f"{product}_g{i}")
        admin_exec("CREATE SCHEMA app", db)
    script = write_script_dir(tmp_path / "s", ["CREATE TABLE t (id int)"])
    r = cli(
        "--script-location",
        str(script),
        "--dsn",
        dsn("postgres"),
        "--databases-like",
        f"{product}\\_g%",
        "--schema",
        "app",
        "--format",
        "json",
        "--concurrency",
        "2",
    )
    assert r.returncode == 0, r.stderr
    assert sorted(t["where"] for t in json.loads(r.stdout)["tenants"]) == [
        f"{product}_g0.app",
        f"{product}_g1.app",
    ]
    # Labelled by where they are, not all "app" (or "public").
    assert sorted(t["tenant"] for t in json.loads(r.stdout)["tenants"]) == [
        f"{product}_g0.app",
        f"{product}_g1.app",
    ]
    assert admin_exec("SELECT version_num FROM app.alembic_version", f"{product}_g1") == [("0001",)]


def test_schemas_like_generic_mode_runs_as_the_dsn_user(
    pg: PgSandbox, product: str, tmp_path: Path
) -> None:
    """Generic mode (the benchmark's): the DSN's privileges, no SET ROLE, one connection."""
    db = pg.database(product)
    for name in ("g_1", "g_2"):
        admin_exec(f"CREATE SCHEMA {name}", db)
    script = write_script_dir(tmp_path / "s", ["CREATE TABLE t AS SELECT current_user::text AS u"])
    r = cli(
        "--script-location",
        str(script),
        "--dsn",
        dsn(product),
        "--schemas-like",
        "g\\_%",
        "--format",
        "json",
    )
    assert r.returncode == 0, r.stderr
    assert [t["status"] for t in json.loads(r.stdout)["tenants"]] == ["migrated", "migrated"]
    assert admin_exec("SELECT u FROM g_2.t", db) == [(ADMIN["user"],)]


def test_connections_from_standard_input_and_a_superuser_warning(
    pg: PgSandbox, product: str, tmp_path: Path
) -> None:
    """No file holding every tenant's password has to exist: ``--connections -``."""
    a, b = pg.schema_tenant(product), pg.database_tenant(product)
    cmd, env = cli_command(
        "--product",
        product,
        "--dsn",
        dsn("postgres"),
        "--connections",
        "-",
        "--format",
        "json",
        products=(product,),
    )
    documents = json.dumps([a.document(), b.document()])
    run = subprocess.run(
        cmd, input=documents, capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert run.returncode == 0, run.stderr
    assert {t["status"] for t in json.loads(run.stdout)["tenants"]} == {"migrated"}
    assert version(a) == version(b) == "0003"
    # The test's admin is the postgres superuser: one line says discovery needs less.
    warnings = [line for line in run.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: tenant discovery connects as a superuser; it needs only CONNECT "
        "(README: Security model)"
    ]
    twice = subprocess.run(
        [*cmd, "--connections", "-"],
        input=documents,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert twice.returncode == 2 and "can be given once" in twice.stderr


def test_discovery_needs_nothing_but_connect(pg: PgSandbox, product: str) -> None:
    a, b = pg.schema_tenant(product), pg.database_tenant(product)
    role = f"disc_{product}"
    admin_exec(f"CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE")
    pg.roles.append(role)
    admin_exec(f"GRANT CONNECT ON DATABASE {product} TO {role}")
    admin_exec(f"GRANT CONNECT ON DATABASE postgres TO {role}")
    try:
        weak = {**ADMIN, "user": role}
        assert not connects_as_superuser(weak)
        found = discover_product(weak, product)
        assert {(t.tenant, t.database) for t in found} == {
            (a.tenant, a.database),
            (b.tenant, b.database),
        }
    finally:
        admin_exec(f"REVOKE CONNECT ON DATABASE postgres FROM {role}")


def test_each_migrated_service_revision_is_recorded_in_the_registry(
    pg: PgSandbox, product: str, tmp_path: Path
) -> None:
    import yaml

    from tenant_infra.config import TenantConfig
    from tenant_infra.registry import Change, Registry, ServiceChange
    from tests.support.registry import control_plane

    svc = pg.schema_tenant(product)
    conn_file = write_connections(tmp_path / "c.json", [svc])
    dev = yaml.safe_load((REPO / "stacks" / "Pulumi.dev.yaml").read_text())["config"]
    config = TenantConfig.model_validate(
        {
            "tenant": svc.tenant,
            "services": [{"product": product, "isolation": "SCHEMA"}],
            "platform": dev["tenant-infra:platform"],
        }
    )
    with control_plane(tmp_path) as plane:
        registry = Registry.from_platform(plane.root, plane.environ).open()
        registry.record(
            Change(svc.tenant, "onboard", config, [ServiceChange(product, "SCHEMA", "ready")])
        )
        report = migrate_fleet(own_targets(product, conn_file), LEDGER, {}, registry=registry)
        assert report.ok
        again = migrate_fleet(own_targets(product, conn_file), LEDGER, {}, registry=registry)
        assert [r.status for r in again.results] == ["current"]
        history = registry.history(svc.tenant)
        (service,) = registry.tenant(svc.tenant)["services"]  # type: ignore[index]
    migrations = [(h["operation"], h["reason"]) for h in history if h["operation"] == "migrate"]
    assert migrations == [("migrate", "base -> 0003")]  # once: the second run changed nothing
    assert service["revision"] == "0003"


def test_to_and_downgrade_to_move_the_fleet_as_each_tenant(
    pg: PgSandbox, product: str, tmp_path: Path
) -> None:
    """--to stops at a revision; --downgrade-to takes every tenant down, as its own role,
    one transaction each; both refuse a revision the product does not have."""
    a, b = pg.schema_tenant(product), pg.database_tenant(product)
    base = product_args(product, write_connections(tmp_path / "c.json", [a, b]))

    to = cli(*base, "--to", "0002", "--format", "json", products=(product,))
    assert to.returncode == 0, to.stderr
    assert {t["after"] for t in json.loads(to.stdout)["tenants"]} == {"0002"}
    assert version(a) == version(b) == "0002" and "balances" not in tables(a)

    up = cli(*base, "--format", "json", products=(product,))
    assert up.returncode == 0 and version(a) == version(b) == "0003"

    down = cli(*base, "--downgrade-to", "0001", "--format", "json", products=(product,))
    assert down.returncode == 0, down.stderr
    got = {t["tenant"]: t for t in json.loads(down.stdout)["tenants"]}
    assert got[a.tenant]["status"] == "migrated" and got[a.tenant]["after"] == "0001"
    assert got[a.tenant]["revisions"] == ["0003", "0002"]
    assert version(a) == version(b) == "0001"
    assert "balances" not in tables(a) and "transactions" not in tables(b)
    assert "accounts" in tables(a)

    # A tenant whose downgrade fails is left whole at its revision; the other goes on.
    a.sql(f"CREATE TABLE {a.schema}.keepme (id uuid REFERENCES {a.schema}.accounts (id))")
    gone = cli(*base, "--downgrade-to", "base", "--format", "json", products=(product,))
    assert gone.returncode == 1
    assert version(a) == "0001" and "accounts" in tables(a)
    assert version(b) is None and tables(b) <= {"alembic_version"}

    # A re-run takes the stragglers down and leaves the others, which are there already.
    a.sql(f"DROP TABLE {a.schema}.keepme")
    again = cli(*base, "--downgrade-to", "base", "--format", "json", products=(product,))
    assert again.returncode == 0, again.stderr
    statuses = {t["tenant"]: t["status"] for t in json.loads(again.stdout)["tenants"]}
    assert statuses == {a.tenant: "migrated", b.tenant: "current"}
    assert json.loads(again.stdout)["destination"] == "base"

    for bad in (
        ["--to", "0009"],
        ["--downgrade-to", "0009"],
        ["--to", "0002", "--downgrade-to", "0001"],
    ):
        refused = cli(*base, *bad, products=(product,))
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.count("\n") == 1 and refused.stderr.startswith("tenantctl: "), (
            refused.stderr
        )
