"""Two-phase credential rotation end to end on the real PostgreSQL and RabbitMQ, through
the replay backend: a live writer, kills, neighbours, the legacy model, the fleet."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import psycopg
import pytest
import requests

from tenant_infra import commands
from tenant_infra.config import Credentials
from tenant_infra.errors import InvalidInput
from tenant_infra.operations.rotate import RotationPlan, RotationResult
from tenant_infra.registry.operations import Operations
from tenant_infra.workspace import Workspace
from tests.support import tenant_data
from tests.support.registry import Subscriber
from tests.support.world import (
    GUEST,
    MANAGEMENT,
    World,
    admin_sql,
    amqp_refused,
    killed,
    login_refused,
    world,
)

__all__ = ["world"]  # the fixture


def rotate(world: World, tenant: str, phase: str = "begin", **kwargs: Any) -> RotationResult:
    kwargs.setdefault("drain", 0)
    kwargs.setdefault("verify", world.verify)
    (result,) = commands.rotate([tenant], product="ledger", phase=phase, **world.kwargs(), **kwargs)
    assert isinstance(result, RotationResult)
    return result


def credentials(world: World, tenant: str, product: str = "ledger") -> Credentials:
    config = Workspace(world.root).read_config(tenant)
    assert config is not None
    return config.credentials(product)


def pg_params(doc: dict[str, Any]) -> dict[str, Any]:
    pg = doc["postgresql"]
    return {
        "host": pg["host"],
        "port": pg["port"],
        "dbname": pg["database"],
        "user": pg["user"],
        "password": pg["password"],
        "connect_timeout": 5,
    }


def amqp_works(doc: dict[str, Any]) -> bool:
    import pika

    rabbit = doc["rabbitmq"]
    try:
        pika.BlockingConnection(
            pika.ConnectionParameters(
                "127.0.0.1",
                5672,
                rabbit["vhost"],
                pika.PlainCredentials(rabbit["user"], rabbit["password"]),
                connection_attempts=1,
            )
        ).close()
        return True
    except pika.exceptions.AMQPError:
        return False


def fingerprints(world: World, tenant: str, products: list[str]) -> dict[str, Any]:
    """Every credential of the services as the servers hold them (hashes, never values)."""
    key = tenant.replace("-", "_")
    roles = admin_sql(
        "SELECT rolname, rolpassword, rolcanlogin FROM pg_authid WHERE rolname LIKE ANY(%s) "
        "ORDER BY 1",
        params=([f"{p}\\_{key}%" for p in products],),
    )
    users = requests.get(f"{MANAGEMENT}/api/users", auth=GUEST, timeout=15).json()
    return {
        "postgres": roles,
        "rabbitmq": sorted(
            (u["name"], u["password_hash"])
            for u in users
            if any(u["name"].startswith(f"{p}_{key}") for p in products)
        ),
    }


class LiveWriter(threading.Thread):
    """A product instance: writes a row every few milliseconds through one connection;
    when a write fails it reconnects with the connections document it reads then (the
    one the replay recorded for Vault)."""

    def __init__(self, world: World, tenant: str) -> None:
        super().__init__(daemon=True)
        self.world, self.tenant = world, tenant
        self.phase = "before"
        self.writes: Counter[str] = Counter()
        self.failures: list[tuple[str, str]] = []
        self.users: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        while not self.halt.is_set():
            phase = self.phase
            try:
                if conn is None:
                    params = self.world.pg(self.tenant, "ledger")
                    conn = psycopg.connect(**params, autocommit=True)
                    self.users.append(params["user"])
                conn.execute("INSERT INTO live (phase) VALUES (%s)", (phase,))
                self.writes[phase] += 1
            except Exception as exc:
                self.failures.append((phase, str(exc).splitlines()[0] if str(exc) else ""))
                if conn is not None:
                    conn.close()
                conn = None
            time.sleep(0.005)
        if conn is not None:
            conn.close()

    def wait_for(self, phase: str, writes: int = 20, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.writes[phase] < writes:
            assert time.monotonic() < deadline, (phase, self.writes, self.failures[-3:])
            time.sleep(0.05)


def onboarded(world: World, label: str, *services: str) -> str:
    tenant = world.new_tenant(label)
    world.onboard(tenant, *(services or ("ledger:SCHEMA",)))
    return tenant


def legacy(world: World, label: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A tenant built the way services were before rotation existed: one login per
    store, the PostgreSQL owner itself."""
    with monkeypatch.context() as patched:
        patched.setattr(Credentials, "rotating", classmethod(lambda cls, _product: cls()))
        tenant = onboarded(world, label)
    assert credentials(world, tenant) == Credentials()
    return tenant


# ------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("mode", ["SCHEMA", "DATABASE"])
def test_a_live_writer_never_fails_between_begin_and_finish(world: World, mode: str) -> None:
    tenant = onboarded(world, "rot", f"ledger:{mode}")
    key = tenant.replace("-", "_")
    with psycopg.connect(**world.pg(tenant, "ledger"), autocommit=True) as conn:
        conn.execute("CREATE TABLE live (id bigserial PRIMARY KEY, phase text NOT NULL)")
    old = world.backend.document(tenant, "ledger")
    assert old["postgresql"]["user"] == f"ledger_{key}__0a"
    events = Subscriber(world.plane.channel)
    writer = LiveWriter(world, tenant)
    writer.start()
    try:
        writer.wait_for("before")
        writer.phase = "begin"
        begun = rotate(world, tenant, "begin")
        assert begun.status == "begun"
        new = world.backend.document(tenant, "ledger")
        assert new["postgresql"]["user"] == f"ledger_{key}__0b"
        assert new["postgresql"]["password"] != old["postgresql"]["password"]
        assert new["rabbitmq"]["user"] == f"ledger_{key}__b"
        # Both credentials work now, in both stores.
        for doc in (old, new):
            assert not login_refused(pg_params(doc))
            assert amqp_works(doc)
        writer.phase = "window"
        writer.wait_for("window")

        writer.phase = "finish"
        finished = rotate(world, tenant, "finish")
        assert finished.status == "finished"
        assert finished.forced["postgres"] >= 1  # the writer's session, forced off
        writer.phase = "after"
        writer.wait_for("after")
    finally:
        writer.halt.set()
        writer.join(10)
    assert [f for f in writer.failures if f[0] in ("before", "begin", "window")] == []
    assert writer.users[0] == old["postgresql"]["user"]
    assert writer.users[-1] == new["postgresql"]["user"]
    # The old credential is refused everywhere, the new one works; verify agrees.
    assert login_refused(pg_params(old)) and not amqp_works(old)
    assert not login_refused(pg_params(new)) and amqp_works(new)
    assert admin_sql("SELECT 1 FROM pg_roles WHERE rolname = %s", params=(f"ledger_{key}__0a",)) == []
    world.verify(tenant, "ledger")
    # Every row is there, and what the logins created belongs to the owner.
    database = new["postgresql"]["database"]
    counted = dict(admin_sql(f"SELECT phase, count(*) FROM tenant_{key}.live GROUP BY 1", database))
    assert counted["window"] == writer.writes["window"]
    assert admin_sql(
        "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = %s::regclass",
        database,
        (f"tenant_{key}.live",),
    ) == [(f"ledger_{key}",)]
    # The registry's history and the event products refetch on.
    rotated = [
        e
        for e in events.received()
        if e["tenant_id"] == tenant and e["event_type"] == "tenant.credentials.rotated"
    ]
    assert {e["payload"]["credential_type"] for e in rotated} >= {"postgres", "rabbitmq"}
    history = [
        h["reason"]
        for h in world.plane.rows(
            "SELECT reason FROM registry.history WHERE tenant_id = %s AND operation = 'rotate'"
            " ORDER BY id",
            (tenant,),
        )
    ]
    assert "postgres credentials replaced" in history
    assert "rotate step check done" in history
    row = world.plane.rows("SELECT connection FROM registry.services WHERE tenant_id = %s", (tenant,))[0]
    assert row["connection"]["postgresql"]["username"] == f"ledger_{key}__0b"


def test_rotation_touches_no_other_tenant_and_no_other_service(world: World) -> None:
    tenant = onboarded(world, "rot", "ledger:SCHEMA", "tracer:SCHEMA")
    neighbour = onboarded(world, "nbr")
    theirs, sibling = fingerprints(world, neighbour, ["ledger"]), fingerprints(world, tenant, ["tracer"])
    ours = fingerprints(world, tenant, ["ledger"])
    result = rotate(world, tenant, "auto", grace=0.0)
    assert result.status == "finished"
    assert fingerprints(world, neighbour, ["ledger"]) == theirs
    assert fingerprints(world, tenant, ["tracer"]) == sibling
    assert fingerprints(world, tenant, ["ledger"]) != ours
    world.verify(neighbour, "ledger")
    world.verify(tenant, "tracer")


def test_a_legacy_service_moves_to_owner_and_logins_and_rotates_twice(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = legacy(world, "old", monkeypatch)
    key = tenant.replace("-", "_")
    tenant_data.write(world.pg(tenant, "ledger"), "ledger", 200)
    first = world.backend.document(tenant, "ledger")
    assert first["postgresql"]["user"] == f"ledger_{key}"  # the owner logs in
    before = admin_sql(
        f"SELECT count(*), sum(hashtext(t::text)) FROM tenant_{key}.transactions t", "ledger"
    )
    users = []
    for _ in range(3):  # legacy -> a, a -> b, b -> a
        writer = LiveWriter(world, tenant)
        with psycopg.connect(**world.pg(tenant, "ledger"), autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS live (id bigserial PRIMARY KEY, phase text)")
        writer.start()
        try:
            writer.wait_for("before")
            writer.phase = "begin"
            assert rotate(world, tenant, "begin").status == "begun"
            writer.phase = "window"
            writer.wait_for("window")
            writer.phase = "finish"
            assert rotate(world, tenant, "finish").status == "finished"
        finally:
            writer.halt.set()
            writer.join(10)
        assert [f for f in writer.failures if f[0] != "finish"] == []
        users.append(world.backend.document(tenant, "ledger")["postgresql"]["user"])
        world.verify(tenant, "ledger")
    assert users == [f"ledger_{key}__0a", f"ledger_{key}__0b", f"ledger_{key}__0a"]
    # No data lost; the owner owns everything and never logs in again.
    assert admin_sql(
        f"SELECT count(*), sum(hashtext(t::text)) FROM tenant_{key}.transactions t", "ledger"
    ) == before
    assert login_refused(pg_params(first))
    assert admin_sql("SELECT rolcanlogin, rolpassword IS NULL FROM pg_authid WHERE rolname = %s", params=(f"ledger_{key}",)) == [(False, True)]
    owners = admin_sql(
        "SELECT DISTINCT pg_get_userbyid(c.relowner) FROM pg_class c JOIN pg_namespace n"
        " ON n.oid = c.relnamespace WHERE n.nspname = %s",
        "ledger",
        (f"tenant_{key}",),
    )
    assert owners == [(f"ledger_{key}",)]
    # The product's migrations still run, as the new login acting as the owner.
    outcome = commands.up([tenant], verify=world.verify, **world.kwargs())
    assert all(r.ok for r in outcome), [r.reason for r in outcome]


@pytest.mark.parametrize("mode", ["SCHEMA", "DATABASE"])
def test_what_the_old_login_made_goes_to_the_owner_never_to_the_admin(
    world: World, mode: str
) -> None:
    """A hostile tenant, as its login itself (SET ROLE NONE), makes a SECURITY DEFINER
    function, a large object and default privileges; a neighbour aims a grant at that
    login. The finish still drops it, and nothing it made runs as the admin."""
    tenant, neighbour = onboarded(world, "hst", f"ledger:{mode}"), onboarded(world, "nbh")
    key = tenant.replace("-", "_")
    owner, old = f"ledger_{key}", world.backend.document(tenant, "ledger")
    login = old["postgresql"]["user"]
    with psycopg.connect(**pg_params(old), autocommit=True) as conn:
        conn.execute(f"GRANT USAGE, CREATE ON SCHEMA tenant_{key} TO {login}")  # as the owner
        conn.execute("SET ROLE NONE")
        conn.execute(
            f"CREATE FUNCTION tenant_{key}.lift() RETURNS text LANGUAGE plpgsql SECURITY DEFINER"
            f" AS $$BEGIN EXECUTE 'ALTER ROLE {owner} SUPERUSER'; RETURN current_user; END$$"
        )
        conn.execute("SELECT lo_create(0)")
        conn.execute("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO PUBLIC")
    with psycopg.connect(**world.pg(neighbour, "ledger"), autocommit=True) as conn:
        conn.execute("CREATE TABLE bait (v int)")
        conn.execute(f"GRANT SELECT ON bait TO {login}")
    # verify sees what the login holds (pg.no_foreign_privileges) and would stop the
    # updates; without its gate, the finish must still clean up.
    with pytest.raises(Exception, match="has OWNERSHIP on pg_largeobject"):
        world.verify(tenant, "ledger")
    assert rotate(world, tenant, "begin", verify=None).status == "begun"
    assert rotate(world, tenant, "finish", verify=None).status == "finished"
    database = old["postgresql"]["database"]
    assert admin_sql("SELECT 1 FROM pg_roles WHERE rolname = %s", params=(login,)) == []
    assert admin_sql(
        "SELECT pg_get_userbyid(proowner) FROM pg_proc WHERE proname = 'lift'", database
    ) == [(owner,)]
    with (
        psycopg.connect(**world.pg(tenant, "ledger"), autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute(f"SELECT tenant_{key}.lift()")
    assert admin_sql("SELECT rolsuper FROM pg_roles WHERE rolname = %s", params=(owner,)) == [(False,)]
    # A grant a neighbour makes to the current login is not the tenant's doing: its
    # verify still passes, and its next rotation clears the grant.
    current = world.backend.document(tenant, "ledger")["postgresql"]["user"]
    with psycopg.connect(**world.pg(neighbour, "ledger"), autocommit=True) as conn:
        conn.execute(f"GRANT SELECT ON bait TO {current}")
    world.verify(tenant, "ledger")
    with pytest.raises(AssertionError, match=f"{current} has SELECT on"):
        world.verify(neighbour, "ledger")  # the neighbour shared its table: its finding
    assert rotate(world, tenant, "auto", grace=0.0).status == "finished"
    assert admin_sql("SELECT 1 FROM pg_roles WHERE rolname = %s", params=(current,)) == []


def test_killed_after_begin_a_rerun_converges(world: World) -> None:
    tenant = onboarded(world, "kil")
    key = tenant.replace("-", "_")
    killed(world, "tests.support.killed_rotation", tenant, "begin", "begin")
    assert credentials(world, tenant).postgres.previous == "a"  # type: ignore[union-attr]
    # Run again: the same rotation (not a second one), waiting for --finish.
    assert rotate(world, tenant, "begin").status == "begun"
    assert credentials(world, tenant).postgres.current == "b"  # type: ignore[union-attr]
    assert rotate(world, tenant, "finish").status == "finished"
    (converged,) = commands.up([tenant], verify=world.verify, **world.kwargs())
    assert converged.ok, converged.error
    doc = world.backend.document(tenant, "ledger")
    assert doc["postgresql"]["user"] == f"ledger_{key}__0b"
    assert not login_refused(pg_params(doc))
    assert admin_sql("SELECT 1 FROM pg_roles WHERE rolname = %s", params=(f"ledger_{key}__0a",)) == []
    world.verify(tenant, "ledger")


@pytest.mark.parametrize("point", ["revoke", "inside-drop"])
def test_killed_inside_finish_a_rerun_converges(world: World, point: str) -> None:
    tenant = onboarded(world, "kil")
    key = tenant.replace("-", "_")
    assert rotate(world, tenant, "begin").status == "begun"
    killed(world, "tests.support.killed_rotation", tenant, "finish", point)
    # Whatever the kill left, the current login may log in (never a moment without one).
    can_login = "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s"
    assert admin_sql(can_login, params=(f"ledger_{key}__0b",)) == [(True,)]
    assert rotate(world, tenant, "finish").status == "finished"
    # The replay keeps generated passwords in the memory of the process that made them:
    # this update makes anew those the killed one took with it (see test_promote).
    (converged,) = commands.up([tenant], verify=world.verify, **world.kwargs())
    assert converged.ok, converged.error
    assert admin_sql("SELECT 1 FROM pg_roles WHERE rolname = %s", params=(f"ledger_{key}__0a",)) == []
    assert Operations(world.registry()).open_one(tenant, "ledger") is None
    assert not login_refused(world.pg(tenant, "ledger"))
    assert amqp_refused(world, tenant, "ledger") is False


def test_dry_run_shows_each_phase_and_changes_nothing(world: World) -> None:
    tenant = onboarded(world, "dry")
    before = credentials(world, tenant)
    (plan,) = commands.rotate([tenant], product="ledger", dry_run=True, **world.kwargs())
    assert isinstance(plan, RotationPlan)
    shown = plan.to_json()
    assert f"postgresql:index/role:Role {tenant}-ledger-postgres-login-b" in shown["begin"]["added"]
    assert f"rabbitmq:index/user:User {tenant}-ledger-rabbitmq-user-b" in shown["begin"]["added"]
    assert shown["begin"]["removed"] == []
    assert f"postgresql:index/role:Role {tenant}-ledger-postgres-login-a" in shown["finish"]["removed"]
    assert credentials(world, tenant) == before
    assert Operations(world.registry()).open_one(tenant, "ledger") is None


def test_bad_requests_are_refused_before_anything_changes(world: World) -> None:
    tenant = onboarded(world, "bad")
    before = credentials(world, tenant)
    with pytest.raises(InvalidInput, match=r"no rotation .* to finish"):
        rotate(world, tenant, "finish")
    with pytest.raises(InvalidInput, match="unknown store 'redis'"):
        commands.rotate([tenant], product="ledger", stores=["redis"], **world.kwargs())
    with pytest.raises(InvalidInput, match="has no service 'tracer'"):
        commands.rotate([tenant], product="tracer", **world.kwargs())
    with pytest.raises(InvalidInput, match="unknown rotation phase"):
        commands.rotate([tenant], product="ledger", phase="later", **world.kwargs())  # type: ignore[arg-type]
    assert credentials(world, tenant) == before
    # Between the phases: another store is refused, and so is a promotion.
    assert rotate(world, tenant, "begin", stores=["postgres"]).status == "begun"
    with pytest.raises(InvalidInput, match=r"rotation of postgres .* is under way"):
        rotate(world, tenant, "finish", stores=["rabbitmq"])
    with pytest.raises(InvalidInput, match="being rotated"):
        commands.promote(tenant, "ledger", **world.kwargs())
    assert rotate(world, tenant, "finish").status == "finished"


def test_the_fleet_form_isolates_a_failing_tenant(world: World) -> None:
    good = [onboarded(world, "flt"), onboarded(world, "fl2")]
    (world.root / "stacks" / "Pulumi.dev.yaml").unlink()  # a platform file, not a tenant here
    broken = world.new_tenant("brk")
    path = world.root / "stacks" / f"Pulumi.{broken}.yaml"
    path.write_text("config: [not a mapping\n")
    try:
        results = commands.rotate(
            all_tenants=True,
            product="ledger",
            phase="auto",
            drain=0,
            concurrency=2,
            verify=world.verify,
            **world.kwargs(),
        )
    finally:
        path.unlink()
    by_tenant = {r.tenant: r for r in results if isinstance(r, RotationResult)}
    assert by_tenant[broken].status == "failed" and by_tenant[broken].error
    for tenant in good:
        assert by_tenant[tenant].status == "finished", by_tenant[tenant]
        key = tenant.replace("-", "_")
        assert world.backend.document(tenant, "ledger")["postgresql"]["user"] == f"ledger_{key}__0b"
        world.verify(tenant, "ledger")
