"""Revision code never holds platform secrets (README "Security model").

A hostile revision (``hostile.py``) runs through ``tenantctl migrate --product`` at
concurrency 1 and 2, and through the ``ServiceMigration`` provider, on the real
PostgreSQL. Tenants' credentials come from a stub Vault over loopback, or from a
connections file the revision is told about; the operator's environment carries
marker secrets. The revision must find none of them and no other tenant's password,
anywhere it can look, and no channel to another tenant's run; it must find its own
password (the probe works).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import LEDGER, REPO, cli
from hostile import hostile_script_dir
from pgsandbox import ADMIN, PgSandbox, Service, version, write_connections

from tenant_infra.migrate.confine import capabilities, landlock_abi
from tenant_infra.migrate.sandbox import MAX_MESSAGE, Sandbox, recv_message, sandbox_environ
from tenant_infra.tenant import TenantNames
from tests.support.vault_stub import StubVault, stub_vault

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")
CONFINED = landlock_abi() >= 6  # Landlock with scoping: the full confinement


def _markers() -> dict[str, str]:
    return {name: f"{name}-{secrets.token_hex(12)}" for name in ("admin", "vault", "pgpassword")}


def _operator_env(markers: dict[str, str], vault: StubVault) -> dict[str, str]:
    host, port = ADMIN.get("host", "127.0.0.1"), ADMIN.get("port", "5432")
    return {
        "TENANT_INFRA_ADMIN_DSN": f"postgresql://postgres:{markers['admin']}@{host}:{port}/postgres",
        "VAULT_ADDR": vault.address,
        "VAULT_TOKEN": markers["vault"],
        "PGPASSWORD": markers["pgpassword"],
        "PULUMI_CONFIG_PASSPHRASE": markers["admin"] + "-passphrase",
    }


def _reports(services: list[Service]) -> dict[str, dict[str, Any]]:
    found = {}
    for svc in services:
        rows = svc.sql(f"SELECT report FROM {svc.schema}.probe")
        found[svc.role] = json.loads(str(rows[0][0]))
    return found


def _assert_nothing_leaked(reports: dict[str, dict[str, Any]], services: list[Service]) -> None:
    for svc in services:
        report = reports[svc.role]
        found = report["found"]
        # The probe works: its own tenant's password is in its interpreter.
        assert svc.role in found.get("interpreter", []), report
        leaked = {where: names for where, names in found.items() if set(names) - {svc.role}}
        assert not leaked, f"{svc.role} found {leaked}"
        assert not {"parent", "grandparent"} & set(report["readable"])
        channels = report["channels"]
        assert channels["shm_before"] in ("", "refused"), channels  # no earlier run's data
        if CONFINED:
            assert report["readable"] == [] and not any(report["ancestors"])  # no /proc at all
            assert channels == {
                "keyring": False,
                "udp": False,
                "unix": False,
                "chmod": False,
                "shadow": False,
                "write_tmp": False,
                "redis": False,
                "signal_parent": False,
                "tty": False,
                "shm_before": channels["shm_before"],
            }


def _setup(
    pg: PgSandbox, product: str, tmp_path: Path, vault: StubVault, markers: dict[str, str]
) -> tuple[list[Service], Path, Path]:
    services = [pg.schema_tenant(product), pg.schema_tenant(product), pg.database_tenant(product)]
    for svc in services:
        vault.put("secret", TenantNames(svc.tenant).service(product).vault_secret, svc.document())
    needles = {**markers, **{s.role: s.password for s in services}}
    # Every tenant's password in a file the operator keeps (0600, as it should be).
    connections = write_connections(tmp_path / "all-tenants.json", services)
    script = hostile_script_dir(LEDGER, tmp_path, needles, files=[str(connections)])
    return services, script, connections


@pytest.mark.parametrize("concurrency", ["1", "2"])
def test_hostile_revision_finds_no_secret_through_migrate(
    pg: PgSandbox, product: str, tmp_path: Path, concurrency: str
) -> None:
    markers = _markers()
    with stub_vault(markers["vault"]) as vault:
        services, script, _ = _setup(pg, product, tmp_path, vault, markers)
        run = cli(
            "--product",
            product,
            "--script-location",
            str(script),
            "--concurrency",
            concurrency,
            "--format",
            "json",
            products=(product,),
            env=_operator_env(markers, vault),
        )
    assert run.returncode == 0, run.stdout + run.stderr
    assert {t["status"] for t in json.loads(run.stdout)["tenants"]} == {"migrated"}
    assert all(version(s) == "9999" for s in services)
    if CONFINED:  # what each revision left behind died with its tenant's run
        assert _sandbox_processes() == [] or _settled_empty()
    assert vault.requests and all(ok for _, ok in vault.requests)  # Vault did serve them
    _assert_nothing_leaked(_reports(services), services)
    for out in (run.stdout, run.stderr):
        assert not any(v in out for v in markers.values())


def test_a_connections_file_named_on_the_command_line_stays_out_of_reach(
    pg: PgSandbox, product: str, tmp_path: Path
) -> None:
    """The operator's argv names the file holding every tenant's password."""
    markers = _markers()
    with stub_vault(markers["vault"]) as vault:
        services, script, connections = _setup(pg, product, tmp_path, vault, markers)
        env = {k: v for k, v in _operator_env(markers, vault).items() if k != "VAULT_ADDR"}
        run = cli(
            "--product", product, "--script-location", str(script),
            "--connections", str(connections), products=(product,), env=env,
        )
    assert run.returncode == 0, run.stdout + run.stderr
    _assert_nothing_leaked(_reports(services), services)


_PROVIDER = """
import json, sys
from pathlib import Path
import tenant_infra.catalog as catalog
from tenant_infra.catalog import Product, Store
catalog.load_catalog().products[sys.argv[2]] = Product(
    name=sys.argv[2],
    stores=frozenset({Store.POSTGRESQL}),
    migrations="hostile",
    migrations_root=Path(sys.argv[1]),
)
from tenant_infra.components.migration import ServiceMigrationProvider
result = ServiceMigrationProvider().create(json.loads(sys.stdin.read()))
print(result.outs["revision"])
"""


def test_hostile_revision_finds_no_secret_through_the_service_migration_provider(
    pg: PgSandbox, product: str, tmp_path: Path
) -> None:
    markers = _markers()
    with stub_vault(markers["vault"]) as vault:
        services, script, _ = _setup(pg, product, tmp_path, vault, markers)
        svc = services[2]
        props = {
            "tenant": svc.tenant,
            "product": product,
            "isolation": svc.isolation,
            "host": ADMIN.get("host", "127.0.0.1"),
            "port": int(ADMIN.get("port", "5432")),
            "database": svc.database,
            "schema": svc.schema,
            "user": svc.role,
            "password": svc.password,
            "sslmode": "disable",
            "head": "9999",
        }
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("VAULT_")},
            **_operator_env(markers, vault),
            "PYTHONPATH": str(REPO),
        }
        run = subprocess.run(
            [sys.executable, "-c", _PROVIDER, str(script.parent), product],
            input=json.dumps(props),
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "9999"
    _assert_nothing_leaked(_reports([svc]), [svc])


def test_the_sandbox_environment_is_allow_listed() -> None:
    env = sandbox_environ(
        {
            "PATH": "/usr/bin",
            "HOME": "/home/op",
            "LC_ALL": "C.UTF-8",
            "TZ": "UTC",
            "VAULT_TOKEN": "t",
            "PGPASSWORD": "p",
            "TENANT_INFRA_ADMIN_DSN": "postgresql://a:b@h/d",
            "PULUMI_CONFIG_PASSPHRASE": "x",
            "AWS_SECRET_ACCESS_KEY": "k",
            "LC_TOKEN": "looks like a locale, named like a credential",
        }
    )
    assert set(env) == {"PATH", "HOME", "LC_ALL", "TZ", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE"}


def test_each_tenant_gets_a_process_of_its_own_that_ends_with_it(
    pg: PgSandbox, product: str
) -> None:
    svc_a, svc_b = pg.schema_tenant(product), pg.schema_tenant(product)
    from tenant_infra.migrate.executors import Job, SandboxExecutor

    with SandboxExecutor(Job(str(LEDGER), {}), 1) as executor:
        assert executor.head == "0003"
        results = list(executor.map(enumerate([svc_a.own_target, svc_b.own_target])))
    assert [r.status for r in results] == ["migrated", "migrated"]
    workers = {r.worker for r in results}
    assert len(workers) == 2 and os.getpid() not in workers
    for pid in workers:  # each child has exited
        assert not Path(f"/proc/{pid}").exists() or "Z" in _state(pid)
    if os.geteuid() == 0:
        assert capabilities().get("CapEff")  # the operator keeps its own


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def test_a_script_directory_that_cannot_load_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "versions").mkdir()
    (tmp_path / "versions" / "0001_x.py").write_text("revision = make_id()\n")
    from tenant_infra.errors import InvalidInput

    with pytest.raises(InvalidInput, match="cannot load") as caught, Sandbox(tmp_path):
        pass
    assert "\n" not in str(caught.value)


def test_oversized_or_malformed_messages_are_refused() -> None:
    import socket
    import struct

    deep = b"[" * 100_000
    for payload in (
        struct.pack("!I", len(deep)) + deep,  # exhausts a recursive parser
        struct.pack("!I", MAX_MESSAGE + 1),
        struct.pack("!I", 3) + b"[1]",
        struct.pack("!I", 5) + b"nope!",
    ):
        ours, theirs = socket.socketpair()
        with ours, theirs:
            theirs.sendall(payload)
            theirs.shutdown(socket.SHUT_WR)
            assert recv_message(ours) is None


def _settled_empty(seconds: float = 5.0) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while _sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    return not _sandbox_processes()


def _sandbox_processes() -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"tenant_infra.migrate.sandbox import serve" in cmdline:
                found.append(int(entry.name))
    return found


def test_killing_the_operator_mid_run_leaves_no_partial_tenant_and_no_process(
    pg: PgSandbox, product: str, tmp_path: Path
) -> None:
    """SIGKILL the operator while a tenant's revision runs: its sandbox goes with it,
    the server rolls the tenant's transaction back, and a second run converges."""
    import signal
    import time

    from conftest import cli_command, write_script_dir
    from pgsandbox import admin_exec, tables, write_connections

    svcs = [pg.schema_tenant(product) for _ in range(3)]
    conn_file = write_connections(tmp_path / "c.json", svcs)
    script = write_script_dir(tmp_path / "slow", ["CREATE TABLE t (id int);\nSELECT pg_sleep(30)"])
    before = set(_sandbox_processes())
    host, port = ADMIN.get("host", "127.0.0.1"), ADMIN.get("port", "5432")
    args = ["--product", product, "--dsn", f"postgresql://postgres@{host}:{port}/postgres"]
    args += ["--connections", str(conn_file), "--script-location", str(script)]
    cmd, env = cli_command(*args, products=(product,))
    operator = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    roles = ", ".join(f"'{s.role}'" for s in svcs)
    busy = f"SELECT count(*) FROM pg_stat_activity WHERE usename IN ({roles})"
    try:
        deadline = time.monotonic() + 60
        while admin_exec(busy + " AND query LIKE '%pg_sleep%'")[0][0] == 0:
            assert time.monotonic() < deadline and operator.poll() is None
            time.sleep(0.1)
        operator.send_signal(signal.SIGKILL)
        operator.wait(timeout=10)
        deadline = time.monotonic() + 10
        while set(_sandbox_processes()) - before:
            assert time.monotonic() < deadline, "a sandbox process outlived the operator"
            time.sleep(0.1)
        while admin_exec(busy)[0][0]:  # the server notices within a second, rolls back
            assert time.monotonic() < deadline, "a tenant's session outlived its runner"
            time.sleep(0.1)
    finally:
        if operator.poll() is None:
            operator.kill()
    assert all(tables(s) == set() and version(s) is None for s in svcs)  # nothing partial
    fast = write_script_dir(tmp_path / "fast", ["CREATE TABLE t (id int)"])
    again = cli(*args[:-1], str(fast), "--concurrency", "2", products=(product,))
    assert again.returncode == 0, again.stderr
    assert all(version(s) == "0001" and tables(s) == {"t", "alembic_version"} for s in svcs)


_MISBEHAVING = {
    # exits without an answer
    "exit": "import os; os._exit(0)",
    # exits, leaving a grandchild that holds the lane open for a long time
    "linger": "import os, time\nif os.fork() == 0:\n    time.sleep(60)\nos._exit(0)",
    # writes a frame that is not JSON (deeply nested) on every socket it can find, then exits
    "garbage": (
        "import os\nfor fd in range(3, 64):\n    try:\n"
        "        os.write(fd, (200000).to_bytes(4, 'big') + b'[' * 200000)\n"
        "    except OSError:\n        pass\nos._exit(0)"
    ),
}


@pytest.mark.parametrize("behaviour", sorted(_MISBEHAVING))
def test_a_misbehaving_revision_fails_its_tenant_quickly_and_the_run_goes_on(
    pg: PgSandbox, product: str, tmp_path: Path, behaviour: str
) -> None:
    import time

    from conftest import write_script_dir

    from tenant_infra.migrate.credentials import attach_credentials, load_documents
    from tenant_infra.migrate.fleet import migrate_fleet
    from tenant_infra.migrate.targets import discover_product

    services = [pg.schema_tenant(product) for _ in range(2)]
    script = write_script_dir(tmp_path / behaviour, ["CREATE TABLE t (id int)"])
    revision = script / "versions" / "0001_r.py"
    body = _MISBEHAVING[behaviour].replace("\n", "\n    ")
    revision.write_text(revision.read_text().replace("def upgrade() -> None:", f"def upgrade() -> None:\n    {body}"))
    documents = load_documents([write_connections(tmp_path / "c.json", services)])
    targets = attach_credentials(discover_product(ADMIN, product), documents, environ={})
    started = time.monotonic()
    report = migrate_fleet(targets, script, {}, concurrency=1)
    assert time.monotonic() - started < 30  # a lingering grandchild holds nobody up
    assert [r.status for r in report.results] == ["failed", "failed"]
    for result in report.results:
        assert "ended without a result" in (result.error or "")
    assert all(version(s) is None for s in services)


def test_a_revision_that_never_returns_is_killed_at_the_timeout(
    pg: PgSandbox, product: str, tmp_path: Path
) -> None:
    import time

    from conftest import write_script_dir

    from tenant_infra.migrate.credentials import attach_credentials, load_documents
    from tenant_infra.migrate.fleet import migrate_fleet
    from tenant_infra.migrate.targets import discover_product

    services = [pg.schema_tenant(product) for _ in range(2)]
    script = write_script_dir(tmp_path / "hang", ["CREATE TABLE t (id int)"])
    revision = script / "versions" / "0001_r.py"
    revision.write_text(
        revision.read_text().replace(
            "def upgrade() -> None:",
            "def upgrade() -> None:\n    op.execute('CREATE TABLE before_hang (id int)')\n"
            "    import time\n    time.sleep(600)",
        )
    )
    documents = load_documents([write_connections(tmp_path / "c.json", services)])
    targets = attach_credentials(discover_product(ADMIN, product), documents, environ={})
    started = time.monotonic()
    report = migrate_fleet(targets, script, {}, concurrency=2, timeout=3)
    assert time.monotonic() - started < 30
    assert [r.status for r in report.results] == ["failed", "failed"]
    assert all("timed out after 3 s" in (r.error or "") for r in report.results)
    for svc in services:  # rolled back: nothing of the revision is left
        assert "before_hang" not in {str(t) for (t,) in svc.sql(
            f"SELECT tablename FROM pg_tables WHERE schemaname = '{svc.schema}'"
        )}
    assert _settled_empty()
