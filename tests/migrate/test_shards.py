"""Sharded fleet migrations: the shard function, ``--shard``/``--shards``/``--targets``
parsing, and K shard processes at once on the real PostgreSQL.

Shards run as subprocesses of the real entry point (never a fork: Pulumi's gRPC
threads deadlock in a forked child), as ``test_fleet.py`` runs its runners.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import cli, cli_command, write_script_dir
from hypothesis import given, settings
from hypothesis import strategies as st
from pgsandbox import ADMIN, PgSandbox, Service, version, write_connections

from tenant_infra.errors import InvalidInput
from tenant_infra.migrate.connection import with_database
from tenant_infra.migrate.shards import (
    INDEX_ENV,
    Shard,
    parse_shard,
    resolve_shard,
    select,
    shard_of,
)
from tenant_infra.migrate.snapshot import KIND, Snapshot, SnapshotEntry, load_snapshot
from tenant_infra.tenant import RESERVED_TENANT_IDS

valid_ids = st.from_regex(r"\A[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){1,39}\Z").filter(
    lambda s: s not in RESERVED_TENANT_IDS
)
products = st.sampled_from(["ledger", "tracer", "p0a1b2c3"])


# -- the shard function ------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(valid_ids, unique=True, max_size=60), products, st.integers(1, 40), st.randoms())
def test_shards_partition_the_fleet_whatever_the_order(
    tenants: list[str], product: str, count: int, rnd: random.Random
) -> None:
    def key(t: str) -> tuple[str, str]:
        return t, product

    parts = [select(tenants, Shard(i, count), key) for i in range(count)]
    assert sorted(t for part in parts for t in part) == sorted(tenants)  # union: all, once
    assert sum(len(p) for p in parts) == len(tenants)  # pairwise disjoint
    shuffled = tenants[:]
    rnd.shuffle(shuffled)
    again = [select(shuffled, Shard(i, count), key) for i in range(count)]
    assert [sorted(p) for p in again] == [sorted(p) for p in parts]  # order does not matter
    assert all(0 <= shard_of(t, product, count) < count for t in tenants)


@given(st.uuids(), st.integers(1, 64))
def test_a_uuid_is_one_tenant_however_spelled(tenant: uuid.UUID, count: int) -> None:
    assert shard_of(str(tenant), "ledger", count) == shard_of(tenant.hex, "ledger", count)


def test_shard_of_is_stable_across_processes_and_versions() -> None:
    """Pinned values: every pod of a Job (and every release) must agree on them, whatever
    a process's hash seed."""
    pinned = "[1, 6, 5, 669]"
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "from tenant_infra.migrate.shards import shard_of;"
            "print([*(shard_of(t, 'ledger', 7) for t in ('acme', 'globex', 'initech')),"
            " shard_of('acme', 'ledger', 1000)])",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    assert probe.stdout.strip() == pinned
    here = [*(shard_of(t, "ledger", 7) for t in ("acme", "globex", "initech"))]
    assert str([*here, shard_of("acme", "ledger", 1000)]) == pinned


@pytest.mark.parametrize(
    ("shard", "shards", "env", "want"),
    [
        (None, None, {}, None),
        (None, None, {INDEX_ENV: "4"}, None),  # no shard count: the variable is not used
        ("0/1", None, {}, Shard(0, 1)),
        ("2/3", None, {}, Shard(2, 3)),
        (None, 3, {INDEX_ENV: "0"}, Shard(0, 3)),
        (None, 3, {INDEX_ENV: "2"}, Shard(2, 3)),
    ],
)
def test_resolve_shard(
    shard: str | None, shards: int | None, env: dict[str, str], want: Shard | None
) -> None:
    assert resolve_shard(shard, shards, env) == want


@pytest.mark.parametrize(
    ("shard", "shards", "env", "message"),
    [
        ("3/3", None, {}, "out of range 0..2"),
        ("-1/3", None, {}, "non-negative integer"),
        ("1/0", None, {}, "must be 1.."),
        ("1", None, {}, "takes I/K"),
        ("a/b", None, {}, "non-negative integer"),
        ("0/2", None, {INDEX_ENV: "0"}, "both name the shard"),
        ("0/2", 2, {}, "not both"),
        (None, 3, {}, "needs JOB_COMPLETION_INDEX"),
        (None, 3, {INDEX_ENV: "3"}, "out of range"),
        (None, 3, {INDEX_ENV: "x"}, "non-negative integer"),
        (None, 0, {INDEX_ENV: "0"}, "must be 1.."),
    ],
)
def test_resolve_shard_refuses(
    shard: str | None, shards: int | None, env: dict[str, str], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        resolve_shard(shard, shards, env)


def test_parse_shard_round_trips() -> None:
    assert str(parse_shard("4/9")) == "4/9"


# -- the snapshot file -------------------------------------------------------------------


def test_snapshot_round_trips_and_refuses_flaws(tmp_path: Path) -> None:
    snap = Snapshot(
        "ledger", (SnapshotEntry("globex", "DATABASE"), SnapshotEntry("acme", "SCHEMA"))
    )
    path = tmp_path / "t.json"
    path.write_text(snap.to_json())
    loaded = load_snapshot(path, "ledger")
    assert [e.tenant for e in loaded.entries] == ["acme", "globex"]  # written sorted
    assert Snapshot("ledger", ()).to_json().endswith('"tenants": []}\n')
    with pytest.raises(InvalidInput, match="not 'tracer'"):
        load_snapshot(path, "tracer")
    for body, message in [
        ("{", "not JSON"),
        ('{"kind": "x"}', "not a tenant-infra"),
        (json.dumps({"kind": KIND, "version": 1, "product": "ledger", "tenants": {}}), "a list"),
        (
            json.dumps(
                {"kind": KIND, "version": 1, "product": "ledger", "tenants": [{"tenant": "Acme"}]}
            ),
            r"tenants\[0\]: tenant id 'Acme' must be lowercase",
        ),
        (
            json.dumps(
                {
                    "kind": KIND,
                    "version": 1,
                    "product": "ledger",
                    "tenants": [{"tenant": "acme", "isolation": "SHARED"}],
                }
            ),
            "SCHEMA or DATABASE",
        ),
        (
            json.dumps(
                {
                    "kind": KIND,
                    "version": 1,
                    "product": "ledger",
                    "tenants": [{"tenant": "acme", "isolation": "SCHEMA"}] * 2,
                }
            ),
            "listed twice",
        ),
    ]:
        path.write_text(body)
        with pytest.raises(InvalidInput, match=message):
            load_snapshot(path, "ledger")
    with pytest.raises(InvalidInput, match="--targets"):
        load_snapshot(tmp_path / "missing.json", "ledger")


# -- the CLI refuses before connecting ---------------------------------------------------

CLOSED = "postgresql://postgres@127.0.0.1:1/postgres"  # a connection attempt would exit 1


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--shard", "3/3"], {}, "out of range"),
        (["--shard", "0/3"], {INDEX_ENV: "1"}, "both name the shard"),
        (["--shards", "3"], {}, "needs JOB_COMPLETION_INDEX"),
        (["--shards", "3"], {INDEX_ENV: "7"}, "out of range"),
        (["--shard", "0/2", "--shards", "2"], {}, "not both"),
        (["--targets", "/nonexistent/targets.json"], {}, "--targets"),
    ],
)
def test_cli_refuses_bad_shards_in_one_line_exit_2(
    args: list[str], env: dict[str, str], message: str
) -> None:
    r = cli("--product", "ledger", "--dsn", CLOSED, *args, env=env)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and r.stderr.strip().count("\n") == 0
    generic = cli("--script-location", "x", "--schemas-like", "a%", "--shard", "0/2")
    assert generic.returncode == 2 and "need --product" in generic.stderr


# -- shards on the real PostgreSQL ---------------------------------------------------------


def dsn() -> str:
    p = with_database(ADMIN, "postgres")
    return f"postgresql://{p['user']}@{p.get('host', '127.0.0.1')}:{p.get('port', '5432')}/postgres"


def fleet(pg: PgSandbox, product: str, n: int = 12) -> list[Service]:
    """``n`` tenants of ``product``, two in three in the shared database."""
    return [
        pg.database_tenant(product) if i % 3 == 2 else pg.schema_tenant(product) for i in range(n)
    ]


def counting_script(root: Path, pause: float = 0.0) -> Path:
    """Revisions that each insert one row: a revision applied twice shows twice."""
    return write_script_dir(
        root,
        [
            "CREATE TABLE applied (rev text, who text DEFAULT current_user);\n"
            f"INSERT INTO applied (rev) VALUES ('0001');\nSELECT pg_sleep({pause})",
            f"INSERT INTO applied (rev) VALUES ('0002');\nSELECT pg_sleep({pause})",
        ],
    )


def applied(svc: Service) -> list[str]:
    rows = svc.sql(f"SELECT to_regclass('{svc.schema}.applied') IS NOT NULL")
    if not rows[0][0]:
        return []
    return [str(r[0]) for r in svc.sql(f"SELECT rev FROM {svc.schema}.applied ORDER BY rev")]


def shard_command(
    product: str, conn_file: Path, script: Path, *more: str
) -> tuple[list[str], dict[str, str]]:
    return cli_command(
        "--product",
        product,
        "--dsn",
        dsn(),
        "--connections",
        str(conn_file),
        "--script-location",
        str(script),
        "--format",
        "json",
        *more,
        products=(product,),
    )


def run_all(
    commands: Sequence[tuple[list[str], dict[str, str]]],
) -> list[tuple[int, dict[str, Any], str]]:
    """Start every command at once, then wait for each: (exit code, report, stderr)."""
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for cmd, env in commands
    ]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=180)
        out.append((p.returncode, json.loads(stdout) if stdout.strip() else {}, stderr))
    return out


def test_k_shards_at_once_migrate_every_tenant_exactly_once(
    pg: PgSandbox, product: str, tmp_path: Path
) -> None:
    svcs = fleet(pg, product)
    conn_file = write_connections(tmp_path / "c.json", svcs)
    script = counting_script(tmp_path / "s")
    runs = run_all(
        [shard_command(product, conn_file, script, "--shard", f"{i}/3") for i in range(3)]
    )
    assert [code for code, _, _ in runs] == [0, 0, 0], [err for _, _, err in runs]
    seen = [{t["tenant"] for t in report["tenants"]} for _, report, _ in runs]
    assert set().union(*seen) == {s.tenant for s in svcs}
    assert sum(len(s) for s in seen) == len(svcs)  # no tenant in two shards
    for i, tenants in enumerate(seen):
        assert all(shard_of(t, product, 3) == i for t in tenants)
    for svc in svcs:
        assert applied(svc) == ["0001", "0002"] and version(svc) == "0002"
        assert svc.sql(f"SELECT DISTINCT who FROM {svc.schema}.applied") == [(svc.role,)]


def test_a_killed_shard_run_again_converges(pg: PgSandbox, product: str, tmp_path: Path) -> None:
    svcs = fleet(pg, product, 9)
    conn_file = write_connections(tmp_path / "c.json", svcs)
    script = counting_script(tmp_path / "s", pause=0.4)
    mine = [s for s in svcs if shard_of(s.tenant, product, 2) == 0]
    others = [s for s in svcs if s not in mine]
    assert len(mine) >= 2, "the fixture's random ids put too few tenants in shard 0"
    cmd, env = shard_command(product, conn_file, script, "--shards", "2")
    env = {**env, INDEX_ENV: "0"}
    victim = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 60
    while not any(version(s) == "0002" for s in mine):  # one tenant done, others to go
        assert time.monotonic() < deadline and victim.poll() is None
        time.sleep(0.05)
    victim.kill()
    victim.communicate(timeout=30)
    assert any(version(s) != "0002" for s in mine), "the shard finished before it was killed"
    for svc in mine:  # nothing half-applied: each tenant is at a revision, with its rows
        assert applied(svc) == {None: [], "0001": ["0001"], "0002": ["0001", "0002"]}[version(svc)]

    code, report, err = run_all([(cmd, env)])[0]
    assert code == 0, err
    assert {t["tenant"] for t in report["tenants"]} == {s.tenant for s in mine}
    for svc in mine:
        assert applied(svc) == ["0001", "0002"] and version(svc) == "0002"
    for svc in others:
        assert version(svc) is None and applied(svc) == []


def test_two_runs_of_one_shard_at_once_apply_each_revision_once(
    pg: PgSandbox, product: str, tmp_path: Path
) -> None:
    svcs = fleet(pg, product, 6)
    conn_file = write_connections(tmp_path / "c.json", svcs)
    script = counting_script(tmp_path / "s", pause=0.3)
    runs = run_all([shard_command(product, conn_file, script, "--shard", "0/1")] * 2)
    assert [code for code, _, _ in runs] == [0, 0], [err for _, _, err in runs]
    for svc in svcs:
        statuses = sorted(
            t["status"]
            for _, report, _ in runs
            for t in report["tenants"]
            if t["tenant"] == svc.tenant
        )
        assert statuses == [
            "current",
            "migrated",
        ]  # one applied it; the other waited, found it done
        assert applied(svc) == ["0001", "0002"]


def test_snapshot_decides_the_targets_and_a_missing_tenant_fails_not_worth_retrying(
    pg: PgSandbox, product: str, tmp_path: Path
) -> None:
    svcs = fleet(pg, product, 6)
    stranger = pg.schema_tenant(product)  # on the server, not in the snapshot
    conn_file = write_connections(tmp_path / "c.json", [*svcs, stranger])
    ghost = PgSandbox.new_tenant("ghost")  # in the snapshot, not on the server
    promoted = svcs[0]  # the snapshot says the other mode: stale
    entries = [SnapshotEntry(s.tenant, s.isolation) for s in svcs[1:]]
    entries.append(SnapshotEntry(ghost, "DATABASE"))
    entries.append(
        SnapshotEntry(promoted.tenant, "DATABASE" if promoted.isolation == "SCHEMA" else "SCHEMA")
    )
    snap = tmp_path / "targets.json"
    snap.write_text(Snapshot(product, tuple(entries)).to_json())
    script = counting_script(tmp_path / "s")
    runs = run_all(
        [
            (cmd, {**env, INDEX_ENV: str(i)})
            for i in range(2)
            for cmd, env in [
                shard_command(product, conn_file, script, "--shards", "2", "--targets", str(snap))
            ]
        ]
    )
    reports = {t["tenant"]: t for _, report, _ in runs for t in report["tenants"]}
    assert set(reports) == {e.tenant for e in entries}
    assert reports[ghost]["status"] == "failed" and reports[ghost]["deterministic"]
    assert "not found on the server" in reports[ghost]["error"]
    assert reports[promoted.tenant]["status"] == "failed"
    assert "snapshot is stale" in reports[promoted.tenant]["error"]
    for svc in svcs[1:]:
        assert reports[svc.tenant]["status"] == "migrated" and applied(svc) == ["0001", "0002"]
    assert applied(stranger) == [] and applied(promoted) == []
    failing = {shard_of(ghost, product, 2), shard_of(promoted.tenant, product, 2)}
    for i, (code, _, _) in enumerate(runs):
        assert code == (2 if i in failing else 0)  # 2: FailIndex, a retry would not help

    # Unsharded, the same failures keep the old contract: exit 1.
    cmd, env = shard_command(product, conn_file, script, "--targets", str(snap))
    assert run_all([(cmd, env)])[0][0] == 1


def test_a_retryable_failure_exits_1_even_beside_a_deterministic_one(
    pg: PgSandbox, product: str, tmp_path: Path
) -> None:
    down, bad = pg.schema_tenant(product), pg.schema_tenant(product)
    doc = down.document()
    doc["postgresql"]["port"] = 1  # its server unreachable: may pass later
    (tmp_path / "c.json").write_text(json.dumps([doc, bad.document()]))
    bad.sql(f"CREATE TABLE {bad.schema}.applied (x int)")  # 0001 fails: deterministic
    script = counting_script(tmp_path / "s")
    code, report, err = run_all(
        [shard_command(product, tmp_path / "c.json", script, "--shard", "0/1")]
    )[0]
    got = {t["tenant"]: t for t in report["tenants"]}
    assert got[bad.tenant]["deterministic"] and not got[down.tenant]["deterministic"]
    assert code == 1, err
    code, report, _ = run_all(
        [
            shard_command(
                product, tmp_path / "c.json", script, "--shard", "0/1", "--tenant", bad.tenant
            )
        ]
    )[0]
    assert code == 2 and "already exists" in report["tenants"][0]["error"]


def test_the_job_s_command_over_a_registry_snapshot_records_each_shard_s_tenants(
    pg: PgSandbox, product: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a pod runs, end to end: the snapshot rendered from the registry, then
    ``--shards 2 --targets FILE`` with JOB_COMPLETION_INDEX; a tenant the registry has
    and the server lacks fails, alone; every shard records its revisions."""
    import yaml

    from tenant_infra import commands
    from tenant_infra.config import TenantConfig
    from tenant_infra.kubernetes.migrate_job import MigrateJobSpec
    from tenant_infra.registry import Change, Registry, ServiceChange
    from tests.support.registry import control_plane

    svcs = fleet(pg, product, 6)
    ghost = PgSandbox.new_tenant("ghost")
    platform = yaml.safe_load(
        (Path(__file__).parents[2] / "stacks" / "Pulumi.dev.yaml").read_text()
    )
    with control_plane(tmp_path) as plane:
        (tmp_path / "Pulumi.yaml").write_text("name: tenant-infra\n")  # the project folder
        registry = Registry.from_platform(plane.root, plane.environ).open()
        for tenant, mode in [*((s.tenant, s.isolation) for s in svcs), (ghost, "SCHEMA")]:
            config = TenantConfig.model_validate(
                {
                    "tenant": tenant,
                    "services": [{"product": product, "isolation": mode}],
                    "platform": platform["config"]["tenant-infra:platform"],
                }
            )
            registry.record(
                Change(tenant, "onboard", config, [ServiceChange(product, mode, "ready")])
            )
        monkeypatch.setenv("TENANT_INFRA_PLATFORM_STACK", plane.stack)
        job = commands.render_migrate_job(MigrateJobSpec(product, 2, "img:1"), root=plane.root)
        snap = tmp_path / "targets.json"
        snap.write_text(job.config_map["data"]["targets.json"])
        conn_file = write_connections(tmp_path / "c.json", svcs)
        script = counting_script(tmp_path / "s")
        container = job.job["spec"]["template"]["spec"]["containers"][0]
        assert container["command"][2:] == [
            "--product",
            product,
            "--shards",
            "2",
            "--targets",
            "/snapshot/targets.json",
        ]
        shards = []
        for i in range(2):
            cmd, env = shard_command(
                product, conn_file, script, *container["command"][4:6], "--targets", str(snap)
            )
            env |= {
                INDEX_ENV: str(i),
                "TENANT_INFRA_PLATFORM_STACK": plane.stack,
                "TENANT_INFRA_PROJECT": str(tmp_path),
            }
            shards.append((cmd, env))
        runs = run_all(shards)
        rows = {
            r["tenant_id"]: r["revision"]
            for r in plane.rows("SELECT tenant_id, revision FROM registry.services")
        }
    got = {t["tenant"]: t for _, report, _ in runs for t in report["tenants"]}
    assert set(got) == {s.tenant for s in svcs} | {ghost}
    assert got[ghost]["status"] == "failed" and "not found on the server" in got[ghost]["error"]
    for i, (code, _, err) in enumerate(runs):
        assert code == (2 if shard_of(ghost, product, 2) == i else 0), err
    for svc in svcs:
        assert got[svc.tenant]["status"] == "migrated" and applied(svc) == ["0001", "0002"]
        assert rows[svc.tenant] == "0002"  # recorded by the shard that migrated it
    assert rows[ghost] is None
