"""Promotion SCHEMA → DATABASE end to end on the real PostgreSQL and RabbitMQ, through
the replay backend: data, neighbours, credentials, registry, kills and aborts."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tenant_infra import commands
from tenant_infra.errors import InvalidInput, OperationFailed
from tenant_infra.operations.promote import PromotionPlan
from tenant_infra.operations.steps import Outcome
from tenant_infra.pgdata.checksum import Checksum, checksums
from tenant_infra.pgdata.inventory import read_inventory
from tenant_infra.registry.operations import Operations
from tenant_infra.workspace import InProgress, Workspace
from tests.support import tenant_data
from tests.support.registry import Subscriber
from tests.support.world import ADMIN, World, admin_sql, killed, leftovers, login_refused, world

__all__ = ["world"]  # the fixture

ROOT = Path(__file__).resolve().parents[2]


def sums(database: str, schema: str) -> dict[str, Checksum]:
    with psycopg.connect(**(ADMIN | {"dbname": database})) as conn:
        inventory = read_inventory(conn, schema)
        return checksums(conn, schema, inventory.tables)


def service_sums(world: World, tenant: str, product: str) -> dict[str, Checksum]:
    doc = world.backend.document(tenant, product)["postgresql"]
    return sums(doc["database"], doc["schema"])


def promote(world: World, tenant: str, product: str = "ledger", **kwargs: Any) -> Any:
    return commands.promote(tenant, product, verify=world.verify, **world.kwargs(), **kwargs)


def seeded(world: World, label: str, product: str = "ledger", size: int = 300) -> str:
    tenant = world.new_tenant(label)
    world.onboard(tenant, f"{product}:SCHEMA")
    tenant_data.write(world.pg(tenant, product), product, size)
    return tenant


def spec(world: World, tenant: str, product: str = "ledger") -> Any:
    config = Workspace(world.root).read_config(tenant)
    assert config is not None
    return config.service(product)


def assert_promoted(world: World, tenant: str, before: dict[str, Checksum], old: dict[str, Any]) -> None:
    """Identical data in the dedicated store, new credentials that work, old ones refused."""
    doc = world.backend.document(tenant, "ledger")
    key = tenant.replace("-", "_")
    assert doc["isolation"] == "DATABASE" and doc["tenant"] == tenant
    assert doc["postgresql"]["database"] == f"ledger_{key}"
    # The dedicated store's own login (its owner is ledger_<key>__g1).
    assert doc["postgresql"]["user"] == f"ledger_{key}__1a" != old["postgresql"]["user"]
    assert doc["postgresql"]["password"] != old["postgresql"]["password"]
    assert service_sums(world, tenant, "ledger") == before
    assert login_refused(_params(old))
    with psycopg.connect(**world.pg(tenant, "ledger")) as conn:
        assert conn.execute("SELECT count(*) FROM transactions").fetchone() == (before["transactions"].rows,)
    world.verify(tenant, "ledger")


def _params(doc: dict[str, Any]) -> dict[str, Any]:
    pg = doc["postgresql"]
    return {"host": pg["host"], "port": pg["port"], "dbname": pg["database"], "user": pg["user"], "password": pg["password"], "connect_timeout": 5}


# ------------------------------------------------------------------------------ tests


def test_promotion_moves_the_data_renews_credentials_and_leaves_neighbours_alone(world: World) -> None:
    tenant, neighbour = seeded(world, "prom"), seeded(world, "next", size=50)
    before, beside = service_sums(world, tenant, "ledger"), service_sums(world, neighbour, "ledger")
    old = world.backend.document(tenant, "ledger")
    events = Subscriber(world.plane.channel)
    try:
        plan = promote(world, tenant, dry_run=True)
        assert isinstance(plan, PromotionPlan)
        assert spec(world, tenant).promotion is None  # the preview changed nothing
        shown = plan.to_json()
        assert shown["revision"] == "0003"
        assert {t["name"]: t["rows"] for t in shown["tables"]}["operations"] == 600
        assert f"Role {tenant}-ledger-postgres-role-g1" in shown["resources"]["added"]
        assert f"Database {tenant}-ledger-postgres-dedicated-db" in shown["resources"]["added"]
        assert f"Schema {tenant}-ledger-postgres-shared-schema" in shown["resources"]["removed"]
        assert shown["estimatedWriteFreezeSeconds"] > 0

        outcome = promote(world, tenant)
        assert isinstance(outcome, Outcome)
        assert outcome.ran == ["provision", "move", "repoint"]
        assert outcome.pending is not None and "kept until" in outcome.pending
        assert_promoted(world, tenant, before, old)
        assert service_sums(world, neighbour, "ledger") == beside
        key = tenant.replace("-", "_")
        # The source waits aside, unreachable, identical.
        assert sums("ledger", f"retired_tenant_{key}") == before
        assert admin_sql("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", params=(f"ledger_{key}__0a",)) == [(False,)]

        received = [e for e in events.received() if e["tenant_id"] == tenant]
        types = [e["event_type"] for e in received]
        assert "tenant.credentials.rotated" in types and "tenant.cache.invalidate" in types
        row = world.plane.rows(
            "SELECT isolation, connection FROM registry.services WHERE tenant_id = %s", (tenant,)
        )[0]
        assert row["isolation"] == "DATABASE"
        assert row["connection"]["postgresql"]["username"] == f"ledger_{key}__1a"
        history = [h["reason"] for h in world.plane.rows(
            "SELECT reason FROM registry.history WHERE tenant_id = %s AND operation = 'promote' ORDER BY id", (tenant,))]
        assert "promote step move done" in history and "promote step repoint done" in history

        # Retirement: dropped when asked, and then nothing of the SCHEMA store is left.
        done = promote(world, tenant, resume=True, drop_source=True)
        assert done.ran == ["retire"] and done.operation.state == "done"
        assert admin_sql("SELECT 1 FROM pg_roles WHERE rolname LIKE %s", params=(f"ledger\\_{key}\\_\\_0%",)) == []
        assert admin_sql("SELECT 1 FROM pg_roles WHERE rolname = %s", params=(f"ledger_{key}",)) == []
        assert admin_sql("SELECT 1 FROM pg_namespace WHERE nspname LIKE %s", "ledger", (f"%tenant_{key}",)) == []
        assert spec(world, tenant).promotion is None and spec(world, tenant).generation == 1
        assert_promoted(world, tenant, before, old)
        assert service_sums(world, neighbour, "ledger") == beside
    finally:
        events.close()
    world.close()
    assert leftovers(tenant) == []


def test_the_audit_chain_and_its_identity_survive_promotion(world: World) -> None:
    tenant = seeded(world, "trc", "tracer", size=120)
    before = service_sums(world, tenant, "tracer")
    outcome = promote(world, tenant, "tracer", drop_source=True)
    assert outcome.operation.state == "done"
    assert service_sums(world, tenant, "tracer") == before
    with psycopg.connect(**world.pg(tenant, "tracer"), autocommit=True) as conn:
        assert conn.execute(tenant_data.CHAIN_BROKEN).fetchone() == (0,)
        # The identity goes on past the copied rows; the trigger still guards the table.
        conn.execute(
            "INSERT INTO audit_events (event_type, aggregate_type, aggregate_id, payload, hash)"
            " VALUES ('x', 'y', gen_random_uuid(), '{}', sha256('z'))"
        )
        assert conn.execute("SELECT max(seq) FROM audit_events").fetchone() == (121,)
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            conn.execute("DELETE FROM audit_events WHERE seq = 1")


def test_a_planted_difference_aborts_and_nothing_is_lost(world: World) -> None:
    tenant = seeded(world, "bad")
    before = service_sums(world, tenant, "ledger")
    old = world.backend.document(tenant, "ledger")
    key = tenant.replace("-", "_")

    def plant() -> None:
        admin_sql(
            "SET session_replication_role = replica;"
            f" UPDATE tenant_{key}.balances SET available = available + 1"
            f" WHERE id = (SELECT id FROM tenant_{key}.balances ORDER BY id LIMIT 1)",
            f"ledger_{key}",
        )

    with pytest.raises(OperationFailed, match=r"aborted, nothing lost: .*table balances"):
        promote(world, tenant, after_copy=plant)
    assert world.backend.document(tenant, "ledger") == old
    assert service_sums(world, tenant, "ledger") == before
    with psycopg.connect(**_params(old)) as conn:  # unfrozen, unsealed
        conn.execute("UPDATE balances SET version = version + 1")
        conn.commit()
    assert admin_sql("SELECT 1 FROM pg_database WHERE datname = %s", params=(f"ledger_{key}",)) == []
    assert admin_sql("SELECT 1 FROM pg_roles WHERE rolname = ANY(%s)", params=([f"ledger_{key}__g1", f"ledger_{key}__1a"],)) == []
    assert spec(world, tenant).promotion is None
    last = Operations(world.registry()).last(tenant, "ledger", "promote")
    assert last is not None and last.state == "aborted"


def test_abort_before_retirement_goes_back_unless_the_new_database_was_written(world: World) -> None:
    tenant = seeded(world, "abt")
    before = service_sums(world, tenant, "ledger")
    old = world.backend.document(tenant, "ledger")
    promote(world, tenant)
    new = world.backend.document(tenant, "ledger")
    with psycopg.connect(**_params(new)) as conn:
        conn.execute("UPDATE balances SET version = version + 1 WHERE id = (SELECT id FROM balances ORDER BY id LIMIT 1)")
        conn.commit()
    with pytest.raises(InvalidInput, match=r"was written to since it was repointed .*table balances"):
        promote(world, tenant, abort=True)
    with psycopg.connect(**_params(new)) as conn:  # refused, and left working
        conn.execute("UPDATE balances SET version = version - 1 WHERE id = (SELECT id FROM balances ORDER BY id LIMIT 1)")
        conn.commit()
    outcome = promote(world, tenant, abort=True)
    assert outcome.operation.state == "aborted"
    doc = world.backend.document(tenant, "ledger")
    assert doc["isolation"] == "SCHEMA" and doc["postgresql"]["user"] == old["postgresql"]["user"]
    assert service_sums(world, tenant, "ledger") == before
    with psycopg.connect(**world.pg(tenant, "ledger")) as conn:
        assert conn.execute("SELECT count(*) FROM operations").fetchone() == (600,)
    assert spec(world, tenant).generation == 0 and spec(world, tenant).promotion is None
    key = tenant.replace("-", "_")
    assert admin_sql("SELECT 1 FROM pg_database WHERE datname = %s", params=(f"ledger_{key}",)) == []
    world.verify(tenant, "ledger")


def _killed_at(world: World, tenant: str, point: str) -> None:
    """The promotion run by another process, SIGKILLed at ``point``."""
    killed(world, "tests.support.killed_promotion", tenant, point)


@pytest.mark.parametrize("point", ["provision", "copy", "move", "repoint"])
def test_killed_anywhere_it_resumes_and_converges(world: World, point: str) -> None:
    tenant = seeded(world, f"k{point[:3]}")
    old = world.backend.document(tenant, "ledger")
    key = tenant.replace("-", "_")
    before = sums("ledger", f"tenant_{key}")
    _killed_at(world, tenant, point)
    if point in ("provision", "copy"):
        # Not sealed yet: the killed freeze let go, and writes go on (its login too).
        assert admin_sql("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", params=(f"ledger_{key}__0a",)) == [(True,)]
        admin_sql(f"UPDATE tenant_{key}.balances SET version = version + 7", "ledger")
        before = sums("ledger", f"tenant_{key}")
    with pytest.raises(InvalidInput, match="--resume"):
        promote(world, tenant)
    outcome = promote(world, tenant, resume=True)
    assert outcome.pending is not None
    # The replay keeps generated passwords in the memory of the process that made
    # them; this update makes anew those the killed one took with it (with Vault,
    # they would be read back). It changes nothing else: no resource is created.
    (converged,) = commands.up([tenant], verify=world.verify, **world.kwargs())
    assert converged.ok, converged.error
    assert_promoted(world, tenant, before, old)


def test_a_second_promotion_is_refused_while_one_runs(world: World) -> None:
    tenant = seeded(world, "two", size=10)
    with (
        Operations(world.registry()).running(tenant, "ledger", "promote"),
        pytest.raises(InProgress, match="already in progress"),
    ):
        promote(world, tenant)
    assert spec(world, tenant).promotion is None


def test_what_cannot_be_promoted_is_refused_before_anything_runs(world: World) -> None:
    tenant = world.new_tenant("ded")
    world.onboard(tenant, "ledger:DATABASE")
    with pytest.raises(InvalidInput, match="DATABASE mode already"):
        promote(world, tenant)
    with pytest.raises(InvalidInput, match="choose one of --keep-source and --drop-source"):
        commands.promote(tenant, "ledger", keep_source=commands.parse_duration("1h"), drop_source=True)
    with pytest.raises(InvalidInput, match="has no service 'tracer'"):
        promote(world, tenant, "tracer")
    with pytest.raises(InvalidInput, match="no promote to resume"):
        promote(world, tenant, resume=True)
    with pytest.raises(InvalidInput, match="duration"):
        commands.parse_duration("1 week")


class Stop(Exception):
    """Raised from a progress callback: the run stops right after that step."""


def stop_after(point: str) -> Any:
    def progress(step: str, event: str) -> None:
        if step == point and event == "done":
            raise Stop(point)

    return progress


def test_an_abort_once_begun_is_only_finished_never_resumed_forward(world: World) -> None:
    tenant = seeded(world, "mix")
    old = world.backend.document(tenant, "ledger")
    with pytest.raises(Stop):
        promote(world, tenant, step_progress=stop_after("move"))
    with pytest.raises(Stop):
        promote(world, tenant, abort=True, step_progress=stop_after("abort-unseal"))
    with psycopg.connect(**_params(old)) as conn:  # unsealed: the tenant writes on
        conn.execute("UPDATE balances SET version = version + 1000")
        conn.commit()
    expected = service_sums(world, tenant, "ledger")
    with pytest.raises(InvalidInput, match="being aborted: run it again with --abort"):
        promote(world, tenant, resume=True)
    assert promote(world, tenant, abort=True).operation.state == "aborted"
    assert service_sums(world, tenant, "ledger") == expected
    assert spec(world, tenant).promotion is None


def test_abort_refuses_new_tables_columns_and_keeps_the_service_reachable(world: World) -> None:
    tenant = seeded(world, "abx")
    promote(world, tenant)
    new = world.backend.document(tenant, "ledger")
    with psycopg.connect(**_params(new)) as conn:
        conn.execute("CREATE TABLE invoices_2027 (id int, body text)")
        conn.execute("INSERT INTO invoices_2027 VALUES (1, 'only here')")
        conn.execute("ALTER TABLE balances RENAME COLUMN version TO version2")
        conn.commit()
    with pytest.raises(InvalidInput, match="was written to since"):
        promote(world, tenant, abort=True)
    with psycopg.connect(**_params(new)) as conn:  # the live login was unsealed again
        assert conn.execute("SELECT body FROM invoices_2027").fetchone() == ("only here",)
    assert spec(world, tenant).isolation.value == "DATABASE"
    # A refused abort is not an abort begun: the promotion still goes forward.
    assert promote(world, tenant, resume=True, drop_source=True).operation.state == "done"
    with psycopg.connect(**_params(new)) as conn:
        assert conn.execute("SELECT body FROM invoices_2027").fetchone() == ("only here",)


def test_the_copy_never_lets_product_code_act_as_the_admin(world: World) -> None:
    """A check a product revision could define: it runs during the copy, and even
    ``RESET ROLE`` leaves it without any right the tenant's login lacks."""
    tenant = seeded(world, "esc", size=20)
    key = tenant.replace("-", "_")
    with pytest.raises(Stop):
        promote(world, tenant, step_progress=stop_after("provision"))
    escalate = f"""
        CREATE FUNCTION tenant_{key}.sneaky(v bigint) RETURNS boolean LANGUAGE plpgsql AS $$
        BEGIN
            RESET ROLE;
            BEGIN
                EXECUTE 'CREATE ROLE esc_{key} SUPERUSER';
            EXCEPTION WHEN insufficient_privilege THEN NULL;
            END;
            RETURN true;
        END $$;
        ALTER TABLE tenant_{key}.balances
            ADD CONSTRAINT sneaky CHECK (tenant_{key}.sneaky(version)) NOT VALID;
    """
    # NOT VALID: not run now, by this setup's own admin session (which is exactly
    # what SET ROLE would let it escape); it runs on every row the copy writes.
    admin_sql(f"SET ROLE ledger_{key}__g1; " + escalate, f"ledger_{key}")
    admin_sql(f"SET ROLE ledger_{key}; " + escalate, "ledger")  # the same shape at the source
    # After its RESET ROLE the session is the copier's, which cannot even reach the
    # schema: the copy stops (with that error, or another worker's; or, when that was
    # a worker's last row, goes on as the copier), and nothing was created with the
    # admin's rights.
    with contextlib.suppress(OperationFailed):
        promote(world, tenant, resume=True)
    assert admin_sql("SELECT 1 FROM pg_roles WHERE rolname = %s", params=(f"esc_{key}",)) == []
    assert promote(world, tenant, abort=True).operation.state == "aborted"
    assert admin_sql("SELECT 1 FROM pg_roles WHERE rolname LIKE 'tenant\\_infra\\_\\_copy\\_%'") == []
