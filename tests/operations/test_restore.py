"""Backup and restore end to end on the real PostgreSQL and RabbitMQ, through the
replay backend: round trips in both modes, neighbours, damage, kills, the broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from tenant_infra import commands
from tenant_infra.errors import InvalidInput, OperationFailed
from tenant_infra.operations.restore import RestorePlan, restorer_name
from tenant_infra.pgdata.checksum import Checksum, checksums
from tenant_infra.pgdata.inventory import read_inventory
from tests.support import tenant_data
from tests.support.registry import Subscriber
from tests.support.world import (
    ADMIN,
    GUEST,
    MANAGEMENT,
    MODES,
    World,
    admin_sql,
    killed,
    leftovers,
    management,
    world,
)

__all__ = ["world"]  # the fixture

ROOT = Path(__file__).resolve().parents[2]


def sums(world: World, tenant: str, product: str = "ledger") -> dict[str, Checksum]:
    doc = world.backend.document(tenant, product)["postgresql"]
    with psycopg.connect(**(ADMIN | {"dbname": doc["database"]})) as conn:
        inventory = read_inventory(conn, doc["schema"])
        return checksums(conn, doc["schema"], inventory.tables)


def seeded(world: World, label: str, mode: str = "SCHEMA", size: int = 200) -> str:
    tenant = world.new_tenant(label)
    world.onboard(tenant, f"ledger:{mode}")
    tenant_data.write(world.pg(tenant, "ledger"), "ledger", size)
    return tenant


def backup(world: World, tenant: str, **kwargs: Any) -> str:
    (result,) = commands.backup([tenant], to=world.root / "backups", **world.kwargs(), **kwargs)
    assert result.status == "ok", result.to_json()
    assert result.set is not None
    return result.set


def restore(world: World, tenant: str, **kwargs: Any) -> Any:
    return commands.restore(tenant, "ledger", backups=world.root / "backups", **world.kwargs(), **kwargs)


def damage(world: World, tenant: str) -> None:
    """What an operator restores from: rows lost, rows changed, a sequence moved on."""
    with psycopg.connect(**world.pg(tenant, "ledger"), autocommit=True) as conn:
        conn.execute("DELETE FROM operations WHERE id IN (SELECT id FROM operations ORDER BY id LIMIT 7)")
        conn.execute("UPDATE accounts SET name = name || '!'")


def schemas(world: World, tenant: str) -> set[str]:
    database = world.backend.document(tenant, "ledger")["postgresql"]["database"]
    key = tenant.replace("-", "_")
    return {s for (s,) in admin_sql("SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", database, (f"%tenant_{key}",))}


def restorers(tenant: str) -> list[str]:
    """The restore's own login for the tenant's service, if one is left."""
    name = restorer_name(f"ledger_{tenant.replace('-', '_')}")
    return [r for (r,) in admin_sql("SELECT rolname FROM pg_roles WHERE rolname = %s", params=(name,))]


def as_tenant(world: World, tenant: str, query: str, owner: str | None = None) -> Any:
    """``query`` as ``tenant``'s login, on ``owner``'s database and schema (default: its own)."""
    doc = world.backend.document(owner or tenant, "ledger")["postgresql"]
    with psycopg.connect(**world.pg(tenant, "ledger", database=doc["database"])) as conn:
        conn.execute(f"SET search_path = {doc['schema']}")
        cursor = conn.execute(query)
        return cursor.fetchall() if cursor.description else None


@pytest.mark.parametrize("mode", MODES)
def test_round_trip_restores_the_backup_and_touches_no_neighbour(world: World, mode: str) -> None:
    tenant = seeded(world, "rt", mode)
    neighbour = seeded(world, "nb", mode, size=50)
    before, theirs = sums(world, tenant), sums(world, neighbour)
    document = world.backend.document(tenant, "ledger")
    key = tenant.replace("-", "_")
    events = Subscriber(world.plane.channel)
    try:
        set_ = backup(world, tenant)
        manifest = json.loads((Path(set_) / "manifest.json").read_text())
        assert manifest["isolation"] == mode and manifest["postgresql"]["revision"] == "0003"
        assert {n: t["rows"] for n, t in ((t["name"], t) for t in manifest["postgresql"]["tables"])}["transactions"] == 200
        assert set(manifest["files"]) == {"postgresql.dump", "rabbitmq-definitions.json"}
        assert document["postgresql"]["password"] not in Path(set_, "manifest.json").read_text()

        damage(world, tenant)
        assert sums(world, tenant) != before
        outcome = restore(world, tenant, source=set_, swap=True)
        assert outcome.ran == ["restore-aside", "verify", "catch-up", "swap", "rabbitmq"], outcome.ran
        assert outcome.operation.state == "done"
        assert sums(world, tenant) == before
        assert sums(world, neighbour) == theirs
        # The same credentials work, on restored rows, and can write.
        assert world.backend.document(tenant, "ledger") == document
        assert as_tenant(world, tenant, "SELECT count(*) FROM transactions") == [(200,)]
        as_tenant(world, tenant, "INSERT INTO organizations (id, legal_name, legal_document) VALUES (gen_random_uuid(), 'after', 'x')")
        as_tenant(world, tenant, "SELECT nextval(pg_get_serial_sequence('operations', 'id'))")
        world.verify(tenant, "ledger")
        # The replaced rows wait aside, and nothing of the restore's own is left.
        assert schemas(world, tenant) == {f"tenant_{key}", f"pre_restore_tenant_{key}"}
        assert restorers(tenant) == []
        received = [e for e in events.received() if e["tenant_id"] == tenant]
        assert [e["event_type"] for e in received] == ["tenant.cache.invalidate"]
        history = [h["reason"] for h in world.plane.rows(
            "SELECT reason FROM registry.history WHERE tenant_id = %s AND operation IN ('backup', 'restore') ORDER BY id", (tenant,))]
        assert "backup step publish done" in history and "restore step swap done" in history
        assert any(r.startswith("data restored from backup") for r in history)

        done = restore(world, tenant, drop_previous=True)
        assert done.ran == ["drop-previous"]
        assert schemas(world, tenant) == {f"tenant_{key}"}
    finally:
        events.close()
    world.close()
    assert leftovers(tenant) == []


def test_a_neighbour_cannot_reach_the_restored_rows(world: World) -> None:
    tenant = seeded(world, "own")
    neighbour = seeded(world, "nbr", size=10)
    restore(world, tenant, source=backup(world, tenant), swap=True)
    key = tenant.replace("-", "_")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        as_tenant(world, neighbour, f"SELECT count(*) FROM tenant_{key}.transactions", owner=tenant)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        as_tenant(world, neighbour, f"SELECT count(*) FROM pre_restore_tenant_{key}.transactions", owner=tenant)
    world.verify(neighbour, "ledger")


def test_a_backup_taken_under_writes_is_one_snapshot(world: World) -> None:
    """Rows written while the dump runs are in neither the dump nor the manifest: the
    restore's verification, which compares the two, passes."""
    tenant = seeded(world, "snap", size=400)
    stop, writes = threading.Event(), [0]

    def keep_writing() -> None:
        with psycopg.connect(**world.pg(tenant, "ledger"), autocommit=True) as conn:
            while not stop.is_set():
                conn.execute("UPDATE accounts SET name = md5(random()::text) WHERE id = (SELECT id FROM accounts ORDER BY id LIMIT 1)")
                conn.execute("DELETE FROM operations WHERE id = (SELECT id FROM operations ORDER BY id DESC LIMIT 1)")
                writes[0] += 1

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        set_ = backup(world, tenant)
    finally:
        stop.set()
        writer.join()
    assert writes[0] > 10, "the writes ran during the backup"
    outcome = restore(world, tenant, source=set_, aside=True)
    assert outcome.ran == ["restore-aside", "verify", "catch-up"] and outcome.pending is not None
    assert "--resume --swap" in outcome.pending
    aborted = restore(world, tenant, abort=True)
    assert aborted.operation.state == "aborted"
    key = tenant.replace("-", "_")
    assert schemas(world, tenant) == {f"tenant_{key}"} and restorers(tenant) == []


def test_a_damaged_file_is_refused_before_anything_changes(world: World) -> None:
    tenant = seeded(world, "dmg")
    set_ = Path(backup(world, tenant))
    before = sums(world, tenant)
    dump = set_ / "postgresql.dump"
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0x01
    dump.write_bytes(bytes(data))
    with pytest.raises(InvalidInput, match=r"postgresql\.dump is damaged"):
        restore(world, tenant, source=str(set_), swap=True)
    assert sums(world, tenant) == before
    assert schemas(world, tenant) == {f"tenant_{tenant.replace('-', '_')}"}
    assert world.plane.rows("SELECT 1 FROM registry.operations WHERE tenant_id = %s AND kind = 'restore'", (tenant,)) == []


def test_a_manifest_that_is_not_the_dump_is_refused_and_names_the_table(world: World) -> None:
    tenant = seeded(world, "mft")
    set_ = Path(backup(world, tenant))
    before = sums(world, tenant)
    manifest = json.loads((set_ / "manifest.json").read_text())
    for table in manifest["postgresql"]["tables"]:
        if table["name"] == "operations":
            table["rows"] += 1
    (set_ / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(OperationFailed, match=r"refused, live data untouched: .*table operations: 400 rows in the restored copy, 401 in the backup"):
        restore(world, tenant, source=str(set_), swap=True)
    assert sums(world, tenant) == before
    key = tenant.replace("-", "_")
    assert schemas(world, tenant) == {f"tenant_{key}"} and restorers(tenant) == []
    (state,) = world.plane.rows("SELECT state FROM registry.operations WHERE tenant_id = %s AND kind = 'restore'", (tenant,))
    assert state["state"] == "aborted"


def _killed_at(world: World, tenant: str, source: str, point: str) -> None:
    """The restore run by another process, SIGKILLed at ``point``."""
    killed(world, "tests.support.killed_restore", tenant, source, point)


@pytest.mark.parametrize("point", ["load", "verify", "swap"])
def test_killed_anywhere_it_resumes_and_converges(world: World, point: str) -> None:
    tenant = seeded(world, f"k{point[:3]}")
    before = sums(world, tenant)
    set_ = backup(world, tenant)
    damage(world, tenant)
    damaged = sums(world, tenant)
    _killed_at(world, tenant, set_, point)
    # The live rows are the damaged ones until the swap, and never lost after it.
    key = tenant.replace("-", "_")
    if point == "swap":
        assert sums(world, tenant) == before
    else:
        assert sums(world, tenant) == damaged
    with pytest.raises(InvalidInput, match="--resume"):
        restore(world, tenant, source=set_, swap=True)
    outcome = restore(world, tenant, resume=True, swap=True)
    assert outcome.operation.state == "done", outcome.operation
    assert sums(world, tenant) == before
    assert schemas(world, tenant) == {f"tenant_{key}", f"pre_restore_tenant_{key}"}
    database = world.backend.document(tenant, "ledger")["postgresql"]["database"]
    with psycopg.connect(**(ADMIN | {"dbname": database})) as conn:
        kept = read_inventory(conn, f"pre_restore_tenant_{key}")
        assert checksums(conn, f"pre_restore_tenant_{key}", kept.tables) == damaged
    assert restorers(tenant) == []
    world.verify(tenant, "ledger")


def test_the_vhost_is_reprovisioned_and_its_topology_declared_again(world: World) -> None:
    tenant = seeded(world, "mq", size=10)
    queue = requests.put(f"{MANAGEMENT}/api/queues/{tenant}/orders", json={"durable": True}, auth=GUEST, timeout=15)
    assert queue.ok
    set_ = backup(world, tenant)
    saved = json.loads((Path(set_) / "rabbitmq-definitions.json").read_text())
    assert set(saved) == {"queues", "exchanges", "bindings", "policies"}
    assert requests.delete(f"{MANAGEMENT}/api/vhosts/{tenant}", auth=GUEST, timeout=15).ok
    outcome = restore(world, tenant, source=set_, swap=True)
    assert outcome.operation.detail["vhostReprovisioned"] is True
    assert management(f"queues/{tenant}/orders").status_code == 200
    world.amqp(tenant, "ledger").close()  # the service's user and permissions are back
    world.verify(tenant, "ledger")


def test_refusals_come_first_and_in_one_line(world: World) -> None:
    tenant = seeded(world, "ref", size=5)
    set_ = backup(world, tenant)
    with pytest.raises(InvalidInput, match="--point-in-time needs archived WAL"):
        restore(world, tenant, source=set_, point_in_time="2026-12-01T00:00:00Z")
    with pytest.raises(InvalidInput, match="--from SET"):
        restore(world, tenant, swap=True)
    other = seeded(world, "oth", size=5)
    with pytest.raises(InvalidInput, match=f"is the backup of {tenant}/ledger, not of {other}/ledger"):
        restore(world, other, source=set_, swap=True)
    plan = restore(world, tenant, source="latest", dry_run=True)
    assert isinstance(plan, RestorePlan) and plan.set == set_
    assert {t["name"]: t["rows"] for t in plan.tables}["transactions"] == 5
    assert world.plane.rows("SELECT 1 FROM registry.operations WHERE tenant_id = %s AND kind = 'restore'", (tenant,)) == []
    restore(world, tenant, source=set_, swap=True)
    with pytest.raises(InvalidInput, match="restore --drop-previous first"):
        restore(world, tenant, source=set_, swap=True)


def test_the_fleet_form_isolates_a_failure(world: World) -> None:
    good, bad = seeded(world, "fg", size=5), seeded(world, "fb", size=5)
    admin_sql(f"DROP SCHEMA tenant_{bad.replace('-', '_')} CASCADE", "ledger")
    (world.root / "stacks" / "Pulumi.zz-broken.yaml").write_text("config:\n  tenant-infra:tenant: zz-broken\n  tenant-infra:tier: [\n")
    results = commands.backup(all_tenants=True, to=world.root / "backups", concurrency=2, **world.kwargs())
    by_tenant = {r.tenant: r for r in results}
    assert {good, bad, "zz-broken"} <= set(by_tenant)  # and the dev stack's tenant
    assert by_tenant["zz-broken"].status == "failed"
    assert by_tenant[good].status == "ok" and Path(str(by_tenant[good].set), "manifest.json").is_file()
    assert by_tenant[bad].status == "failed" and "holds no table" in str(by_tenant[bad].error)
    assert not list((world.root / "backups" / bad / "ledger").glob("*"))  # nor its staging
    (state,) = world.plane.rows("SELECT state FROM registry.operations WHERE tenant_id = %s", (bad,))
    assert state["state"] == "aborted"  # nothing left open to block a restore


def _alembic(world: World, tenant: str, *command: str) -> str:
    """Plain ``alembic`` on the tenant's schema, as its login (the README's way)."""
    pg = world.pg(tenant, "ledger")
    dsn = f"postgresql+psycopg://{pg['user']}:{pg['password']}@{pg['host']}:{pg['port']}/{pg['dbname']}"
    done = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ROOT / "tenant_infra/migrations/ledger/alembic.ini"),
         "-x", f"schema=tenant_{tenant.replace('-', '_')}", *command],
        cwd=ROOT, env={**os.environ, "TENANT_INFRA_DSN": dsn}, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stderr


def test_a_backup_from_an_older_revision_is_migrated_before_it_goes_live(world: World) -> None:
    """The service stays at the revision its stack records (and migrates from): the
    backup's rows, brought forward by the product's own revisions."""
    tenant = world.new_tenant("old")
    world.onboard(tenant, "ledger:SCHEMA")
    said = _alembic(world, tenant, "downgrade", "0002")
    assert "Running downgrade 0003 -> 0002" in said  # plain alembic says what it runs
    as_tenant(world, tenant, "INSERT INTO organizations (legal_name, legal_document) SELECT 'Org ' || i, 'D' || i FROM generate_series(1, 30) i")
    set_ = backup(world, tenant)
    assert json.loads(Path(set_, "manifest.json").read_text())["postgresql"]["revision"] == "0002"
    _alembic(world, tenant, "upgrade", "head")
    upgraded = sums(world, tenant)
    as_tenant(world, tenant, "DELETE FROM organizations WHERE legal_name LIKE 'Org 1%'")
    outcome = restore(world, tenant, source=set_, swap=True)
    assert outcome.operation.detail["migratedFrom"] == "0002"
    assert outcome.operation.detail["headRevision"] == "0003"
    assert sums(world, tenant) == upgraded
    assert as_tenant(world, tenant, "SELECT version_num FROM alembic_version") == [("0003",)]
    world.verify(tenant, "ledger")


def test_a_failed_backup_blocks_nothing_and_a_dropped_schema_is_restored(world: World) -> None:
    tenant = seeded(world, "gone")
    before = sums(world, tenant)
    set_ = backup(world, tenant)
    key = tenant.replace("-", "_")
    admin_sql(f"DROP SCHEMA tenant_{key} CASCADE", "ledger")
    (failed,) = commands.backup([tenant], to=world.root / "backups", **world.kwargs())
    assert failed.status == "failed" and "holds no table" in str(failed.error)
    states = [r["state"] for r in world.plane.rows(
        "SELECT state FROM registry.operations WHERE tenant_id = %s AND kind = 'backup' ORDER BY id", (tenant,))]
    assert states == ["done", "aborted"]
    assert [p.name for p in (world.root / "backups" / tenant / "ledger").iterdir()] == [Path(set_).name]
    outcome = restore(world, tenant, source=set_, swap=True)
    assert outcome.operation.state == "done"
    assert sums(world, tenant) == before
    assert schemas(world, tenant) == {f"tenant_{key}"}  # nothing to keep
    world.verify(tenant, "ledger")


def test_a_purge_takes_the_data_a_restore_kept(world: World) -> None:
    tenant = seeded(world, "prg", size=5)
    restore(world, tenant, source=backup(world, tenant), swap=True)
    key = tenant.replace("-", "_")
    assert f"pre_restore_tenant_{key}" in schemas(world, tenant)
    world.close()
    assert leftovers(tenant) == [] and restorers(tenant) == []
