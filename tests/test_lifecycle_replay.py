"""Every lifecycle verb on the real PostgreSQL and RabbitMQ, through the replay backend.

``commands.*`` drive the same program as ``pulumi up``; ``tests/support/replay.py``
applies it with the statements the upstream providers issue. Each test's tenants have
unique ids and are purged at the end; a final check asserts nothing of them is left
in the catalogs or the management API.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pika
import psycopg
import pytest
from psycopg import sql

from tenant_infra import commands, retry
from tenant_infra.lifecycle import ResourceEvent, ServiceState
from tenant_infra.workspace import Workspace
from tests.support.conflict import neighbour_grant
from tests.support.registry import Subscriber
from tests.support.world import (
    DEV_STACK,
    MODES,
    World,
    admin_sql,
    amqp_refused,
    count_rows,
    leftovers,
    login_refused,
    management,
    snapshot,
    world,
    write_rows,
)

__all__ = ["world"]  # the fixture

# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("mode", MODES)
def test_register_a_second_product_leaves_the_first_untouched(world: World, mode: str) -> None:
    tenant = world.new_tenant("reg")
    world.onboard(tenant, f"ledger:{mode}")
    write_rows(world, tenant, "ledger")
    before = snapshot(world, tenant, "ledger")
    status = commands.register(tenant, [f"tracer:{mode}"], verify=world.verify, **world.kwargs())
    assert status.ok, status.to_json()
    assert [s.revision for s in status.services] == ["0003", "0003"]
    assert snapshot(world, tenant, "ledger") == before
    with psycopg.connect(**world.pg(tenant, "ledger")) as conn:  # its password is unchanged
        assert conn.execute("SELECT count(*) FROM probe").fetchone() == (50,)


@pytest.mark.parametrize("mode", MODES)
def test_a_tier_change_updates_limits_in_place_and_keeps_the_data(world: World, mode: str) -> None:
    tenant = world.new_tenant("tier")
    world.onboard(tenant, f"ledger:{mode}")
    write_rows(world, tenant, "ledger")
    role = world.backend.document(tenant, "ledger")["postgresql"]["user"]
    database = world.backend.document(tenant, "ledger")["postgresql"]["database"]
    oid_before = admin_sql("SELECT oid FROM pg_roles WHERE rolname = %s", params=(role,))
    workspace = Workspace(world.root)
    config = workspace.read_config(tenant)
    assert config is not None and config.tier == "standard"
    workspace.write_config(config.model_copy(update={"tier": "enterprise"}))
    (result,) = commands.up([tenant], verify=world.verify, **world.kwargs())
    assert result.ok, result.error
    assert admin_sql("SELECT oid, rolconnlimit FROM pg_roles WHERE rolname = %s", params=(role,)) == [
        (oid_before[0][0], 100)
    ]
    config_rows = admin_sql("SELECT rolconfig FROM pg_roles WHERE rolname = %s", params=(role,))
    assert "statement_timeout=60000" in config_rows[0][0]
    if mode == "DATABASE":
        assert admin_sql("SELECT datconnlimit FROM pg_database WHERE datname = %s", params=(database,)) == [(100,)]
    limits = management(f"vhost-limits/{tenant}").json()[0]["value"]
    assert limits == {"max-connections": 500, "max-queues": 1000}
    policy = management(f"operator-policies/{tenant}/tenant-queue-limits").json()
    assert policy["definition"]["max-length"] == 1000000
    assert count_rows(world, tenant, "ledger") == 50


@pytest.mark.parametrize("mode", MODES)
def test_suspend_closes_every_session_and_resume_restores_exactly(world: World, mode: str) -> None:
    tenant = world.new_tenant("susp")
    world.onboard(tenant, f"ledger:{mode}")
    write_rows(world, tenant, "ledger")
    before = snapshot(world, tenant, "ledger")
    session = psycopg.connect(**world.pg(tenant, "ledger"), autocommit=True)
    amqp = world.amqp(tenant, "ledger")

    status = commands.suspend(tenant, **world.kwargs())
    assert [s.state for s in status.services] == [ServiceState.SUSPENDED], status.to_json()
    with pytest.raises(psycopg.OperationalError):
        session.execute("SELECT 1")
    assert login_refused(world.pg(tenant, "ledger"))
    with pytest.raises(pika.exceptions.AMQPError):  # closed by the broker
        amqp.process_data_events(time_limit=2)
        amqp.channel()
    assert amqp_refused(world, tenant, "ledger")
    assert count_rows(world, tenant, "ledger") == 50  # the data is untouched
    assert commands.status(tenant, **world.kwargs()).services[0].state is ServiceState.SUSPENDED

    status = commands.resume(tenant, verify=world.verify, **world.kwargs())
    assert status.ok and [s.state for s in status.services] == [ServiceState.READY]
    assert snapshot(world, tenant, "ledger") == before
    world.amqp(tenant, "ledger").close()


def test_a_new_head_while_suspended_waits_for_resume(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ``up`` of a suspended tenant after a release (a new head) succeeds without
    connecting as its NOLOGIN role; resuming brings it to head."""
    tenant = world.new_tenant("susph")
    monkeypatch.setattr("tenant_infra.components.tenant_service.head_revision", lambda _p: "0002")
    (service,) = world.onboard(tenant, "ledger:SCHEMA").services
    assert service.revision == "0002"
    doc = world.backend.document(tenant, "ledger")["postgresql"]
    commands.suspend(tenant, **world.kwargs())
    monkeypatch.undo()  # the release: the catalog's head, 0003

    (result,) = commands.up([tenant], verify=world.verify, **world.kwargs())
    assert result.ok and result.status is not None, result.error
    assert [s.state for s in result.status.services] == [ServiceState.SUSPENDED]
    version = sql.SQL("SELECT version_num FROM {}.alembic_version").format(
        sql.Identifier(doc["schema"])
    )
    assert admin_sql(version, doc["database"]) == [("0002",)]

    status = commands.resume(tenant, verify=world.verify, **world.kwargs())
    assert status.ok and [s.revision for s in status.services] == ["0003"], status.to_json()
    assert admin_sql(version, doc["database"]) == [("0003",)]


def test_deregister_retains_one_service_and_purges_another(world: World) -> None:
    tenant = world.new_tenant("dereg")
    world.onboard(tenant, "ledger:SCHEMA", "tracer:DATABASE")
    for product in ("ledger", "tracer"):
        write_rows(world, tenant, product)
    ledger = world.backend.document(tenant, "ledger")
    tracer = world.backend.document(tenant, "tracer")

    status = commands.deregister(tenant, "ledger", retain_data=True, **world.kwargs())
    assert {s.product: s.state for s in status.services} == {
        "ledger": ServiceState.RETAINED,
        "tracer": ServiceState.READY,
    }
    assert count_rows(world, tenant, "ledger", ledger) == 50  # kept, by a role that cannot log in
    assert admin_sql("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", params=(ledger["postgresql"]["user"],)) == [(False,)]
    assert management(f"users/{ledger['rabbitmq']['user']}").status_code == 404
    with psycopg.connect(**world.pg(tenant, "tracer")) as conn:  # the other service is untouched
        assert conn.execute("SELECT count(*) FROM probe").fetchone() == (50,)
    world.amqp(tenant, "tracer").close()

    status = commands.deregister(tenant, "tracer", purge=True, **world.kwargs())
    assert [s.product for s in status.services] == ["ledger"]
    assert not admin_sql("SELECT 1 FROM pg_database WHERE datname = %s", params=(tracer["postgresql"]["database"],))
    assert not admin_sql("SELECT 1 FROM pg_roles WHERE rolname = %s", params=(tracer["postgresql"]["user"],))
    assert management(f"users/{tracer['rabbitmq']['user']}").status_code == 404
    assert management(f"vhosts/{tenant}").status_code == 200  # the retained ledger keeps it

    commands.deregister(tenant, "ledger", purge=True, **world.kwargs())
    assert leftovers(tenant) == []


@pytest.mark.parametrize("mode", MODES)
def test_offboard_retains_with_every_login_refused_then_purges_everything(world: World, mode: str) -> None:
    tenant = world.new_tenant("off")
    world.onboard(tenant, f"ledger:{mode}")
    write_rows(world, tenant, "ledger")
    params = world.pg(tenant, "ledger")
    doc = world.backend.document(tenant, "ledger")

    retained = commands.offboard(tenant, retain_data=True, **world.kwargs())
    assert "ledger: PostgreSQL " + mode.lower() + " store" in retained
    assert count_rows(world, tenant, "ledger", doc) == 50
    assert login_refused(params)
    assert management(f"users/{doc['rabbitmq']['user']}").status_code == 404

    commands.offboard(tenant, purge=True, **world.kwargs())
    assert leftovers(tenant) == []
    assert not (world.root / "stacks" / f"Pulumi.{tenant}.yaml").exists()


def test_a_migrated_schema_tenant_purges_cleanly_beside_its_neighbours(world: World) -> None:
    """DROP SCHEMA RESTRICT used to fail on the migrated tables (the provider's default)."""
    tenant, neighbour = world.new_tenant("purge"), world.new_tenant("next")
    world.onboard(tenant, "ledger:SCHEMA")
    world.onboard(neighbour, "ledger:SCHEMA")
    write_rows(world, neighbour, "ledger")
    before = snapshot(world, neighbour, "ledger")
    tables = snapshot(world, tenant, "ledger")["tables"]
    assert len([t for t in tables if t[1] == "r"]) >= 7  # the ledger's migrated tables

    commands.offboard(tenant, purge=True, **world.kwargs())
    assert leftovers(tenant) == []
    assert snapshot(world, neighbour, "ledger") == before
    world.verify(neighbour, "ledger")


def test_identity_only_tenant_then_register_then_offboard(world: World) -> None:
    tenant = world.new_tenant("ident")
    status = commands.onboard(
        tenant, (), DEV_STACK, metadata={"name": "Newco Ltd"}, verify=None, **world.kwargs()
    )
    assert status.ok and status.services == []
    assert world.backend.outputs(tenant)["metadata"] == {"name": "Newco Ltd"}
    assert leftovers(tenant) == []  # an identity, no infrastructure
    status = commands.register(tenant, ["tracer:SCHEMA"], verify=world.verify, **world.kwargs())
    assert status.ok, status.to_json()
    commands.offboard(tenant, purge=True, **world.kwargs())
    assert leftovers(tenant) == []


def test_a_killed_update_resumes_and_converges(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed after a few steps, the next run finishes from the checkpoint."""
    from tests.support import replay

    tenant = world.new_tenant("kill")
    calls: list[int] = []

    def killed(*args: Any) -> None:
        calls.append(1)
        raise KeyboardInterrupt  # as if the process died here

    permissions = replay.RMQ + "permissions:Permissions"
    with monkeypatch.context() as patch:
        patch.setitem(replay._OPS[permissions], "create", killed)
        with pytest.raises(KeyboardInterrupt):
            commands.onboard(tenant, ["ledger:SCHEMA"], DEV_STACK, verify=None, **world.kwargs())
    assert calls and admin_sql("SELECT 1 FROM pg_roles WHERE rolname = %s", params=(f"ledger_{tenant.replace('-', '_')}",))
    status = commands.onboard(tenant, ["ledger:SCHEMA"], DEV_STACK, verify=world.verify, **world.kwargs())
    assert status.ok, status.to_json()


def test_a_neighbours_grant_on_the_shared_database_at_that_moment_is_retried(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another stack's grant on the product's shared database, committed while this
    update waits on it, fails this update's grant (``tenant_infra/retry.py``): the
    update runs again and the service is ready."""
    monkeypatch.setattr(retry, "RETRY_BASE_DELAY", 0.0)
    world.onboard(world.new_tenant("nb1"), "ledger:SCHEMA")  # the shared database exists
    tenant = world.new_tenant("nb2")
    failed: list[ResourceEvent] = []

    def record(event: ResourceEvent) -> None:
        if event.phase == "failed":
            failed.append(event)

    with ThreadPoolExecutor(1) as pool, neighbour_grant("ledger") as commit_once_waited_on:
        onboarding = pool.submit(
            commands.onboard,
            tenant,
            ["ledger:SCHEMA"],
            DEV_STACK,
            verify=world.verify,
            events=record,
            **world.kwargs(),
        )
        commit_once_waited_on(by=tenant.replace("-", "_"))
        status = onboarding.result(timeout=300)
    assert status.ok, status.to_json()
    assert {event.type for event in failed} == {"postgresql:index/grant:Grant"}


def test_a_neighbour_that_fills_a_new_database_before_its_revoke_is_ended_and_the_update_runs_again(
    world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL lets PUBLIC connect to a new database until the provider's revoke runs,
    and checks CONNECT at login only: a neighbour's login that connects in between keeps
    its sessions, here as many as the database's limit, so the tenant's migration
    cannot connect. The update ends them and runs once more."""
    from tests.support import replay

    neighbour = world.new_tenant("nbr")
    world.onboard(neighbour, "ledger:SCHEMA")
    tenant = world.new_tenant("win")
    sessions: list[psycopg.Connection[Any]] = []
    grant = replay.PG + "grant:Grant"
    create = replay._OPS[grant]["create"]

    def in_the_window(provider: Any, values: Any) -> None:
        if values["role"] == "public" and values["objectType"] == "database":
            database = values["database"]
            ((limit,),) = admin_sql("SELECT datconnlimit FROM pg_database WHERE datname = %s", params=(database,))
            for _ in range(limit):
                sessions.append(psycopg.connect(**world.pg(neighbour, "ledger", database), autocommit=True))
            planted.extend(sessions[0].execute("SELECT lo_create(0)").fetchone() or ())
        create(provider, values)

    planted: list[int] = []
    failed: list[str] = []
    monkeypatch.setitem(replay._OPS[grant], "create", in_the_window)
    try:
        status = commands.onboard(
            tenant,
            ["ledger:DATABASE"],
            DEV_STACK,
            events=lambda e: failed.append(e.type) if e.phase == "failed" else None,
            **world.kwargs(),
        )
        assert status.ok, status.to_json()
        assert failed == ["pulumi-python:dynamic/tenant:ServiceMigration"]  # kept out, once
        assert len(sessions) > 1
        for session in sessions:
            with pytest.raises(psycopg.OperationalError):
                session.execute("SELECT 1")
        login = world.pg(neighbour, "ledger")["user"]
        assert f"may not connect to its database: ended the sessions of {login} ({len(sessions)})" in caplog.text
        database = world.pg(tenant, "ledger")["dbname"]
        assert admin_sql("SELECT oid FROM pg_largeobject_metadata", database) == []
        assert f"removed large object {planted[0]} of " in caplog.text
    finally:
        for session in sessions:
            session.close()


def test_an_update_leaves_the_services_own_and_granted_sessions_alone(world: World) -> None:
    """Only other roles without CONNECT are ended: the service's own login keeps a
    session that lost CONNECT (a rotation's drain ends it on its schedule), and a
    role granted CONNECT keeps its own."""
    tenant = world.new_tenant("own")
    world.onboard(tenant, "ledger:DATABASE")
    params = world.pg(tenant, "ledger")
    database = sql.Identifier(params["dbname"])
    guest, stranger = (f"ti_{label}_{tenant.replace('-', '_')}" for label in ("guest", "stranger"))
    for role in (guest, stranger):
        admin_sql(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        admin_sql(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(database, sql.Identifier(role)))
    sessions: dict[str, psycopg.Connection[Any]] = {}
    try:
        for role in (params["user"], guest, stranger):
            login = params if role == params["user"] else params | {"user": role, "password": None}
            sessions[role] = psycopg.connect(**login, autocommit=True)
        for role in (params["user"], stranger):
            admin_sql(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM {}").format(database, sql.Identifier(role)))
        (result,) = commands.up([tenant], verify=None, **world.kwargs())
        assert result.ok, result.error
        sessions[params["user"]].execute("SELECT 1")
        sessions[guest].execute("SELECT 1")
        with pytest.raises(psycopg.OperationalError):
            sessions[stranger].execute("SELECT 1")
    finally:
        for conn in sessions.values():
            conn.close()
        admin_sql(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(database, sql.Identifier(params["user"])))
        for role in (guest, stranger):
            admin_sql(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)), params["dbname"])
            admin_sql(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_the_checkpoint_holds_no_secret(world: World) -> None:
    tenant = world.new_tenant("sec")
    world.onboard(tenant, "ledger:DATABASE")
    doc = world.backend.document(tenant, "ledger")
    text = "".join(p.read_text() for p in (world.root / "state").rglob("*.json"))
    for password in (doc["postgresql"]["password"], doc["rabbitmq"]["password"], doc["mongodb"]["password"]):
        assert password not in text
    assert "@@replay-secret:" in text  # generated passwords are kept as sentinels


def test_protected_data_cannot_be_deleted_by_the_engine(world: World) -> None:
    """A protected resource refuses deletion, as the engine's would."""
    tenant = world.new_tenant("prot")
    stack = world.root / "stacks" / f"Pulumi.{tenant}.yaml"
    world.onboard(tenant, "ledger:SCHEMA")
    doc = world.backend.document(tenant, "ledger")
    write_rows(world, tenant, "ledger")
    workspace = Workspace(world.root)
    config = workspace.read_config(tenant)
    assert config is not None
    workspace.write_config(config.model_copy(update={"protect_data": True}))
    commands.up([tenant], verify=None, **world.kwargs())
    with pytest.raises(Exception, match="protect"):
        world.backend.destroy(tenant, lambda _e: None)
    assert stack.exists() and count_rows(world, tenant, "ledger", doc) == 50




def test_the_default_isolation_gate_reads_the_documents_the_replay_recorded(world: World) -> None:
    """``commands.onboard(..., backend=ReplayBackend(dir))`` as a pipeline would call it."""
    tenant = world.new_tenant("gate")
    status = commands.onboard(tenant, ["tracer:DATABASE"], DEV_STACK, **world.kwargs())
    assert status.ok, status.to_json()


def test_every_transition_is_recorded_and_announced_in_the_seed_contract(world: World) -> None:
    """A whole lifecycle, subscribed to the environment's channel: each event of the
    seed client's contract in order, the history of every transition, no secret."""
    sub = Subscriber(world.plane.channel)
    elsewhere = Subscriber("tenant-events:production:")
    tenant = world.new_tenant("events")
    kw = world.kwargs()
    passwords: set[str] = set()
    try:
        commands.onboard(tenant, (), DEV_STACK, metadata={"name": "Events Co"}, verify=None, **kw)
        for service in ("ledger:SCHEMA", "tracer:DATABASE"):
            status = commands.register(tenant, [service], verify=world.verify, **kw)
            assert status.ok, status.to_json()
            product = service.split(":")[0]
            document = world.backend.document(tenant, product)
            passwords |= {document[s]["password"] for s in ("postgresql", "rabbitmq")}
        assert commands.suspend(tenant, ["tracer"], **kw).ok
        assert commands.resume(tenant, ["tracer"], verify=world.verify, **kw).ok
        assert commands.suspend(tenant, **kw).ok
        assert commands.resume(tenant, verify=world.verify, **kw).ok
        assert commands.deregister(tenant, "tracer", purge=True, **kw).ok
        commands.offboard(tenant, purge=True, **kw)
        events = sub.received()
        assert elsewhere.received(settle=0.2) == []
    finally:
        sub.close()
        elsewhere.close()
    assert [(e["event_type"], e["payload"].get("service_name")) for e in events] == [
        ("tenant.created", None),
        ("tenant.service.associated", "ledger"),
        ("tenant.service.associated", "tracer"),
        ("tenant.service.suspended", "tracer"),
        ("tenant.service.reactivated", "tracer"),
        ("tenant.suspended", None),
        # Products re-add a tenant on a service's reactivation, not the tenant's.
        ("tenant.service.reactivated", "ledger"),
        ("tenant.service.reactivated", "tracer"),
        ("tenant.activated", None),
        ("tenant.service.purged", "tracer"),
        ("tenant.deleted", None),
    ]
    assert {(e["tenant_id"], e["tenant_slug"]) for e in events} == {(tenant, tenant)}
    assert events[2]["payload"]["isolation_mode"] == "database"
    assert events[4]["payload"]["previous_status"] == "suspended"
    history = commands.history(tenant, **kw)
    operations = [h["operation"] for h in history]
    for operation in ("onboard", "register", "suspend", "resume", "deregister", "offboard"):
        assert operation in operations
    assert [h["new_state"] for h in history if h["product"] is None] == [
        "active", "suspended", "active", "deleted",
    ]
    assert [h["new_state"] for h in history if h["product"] == "tracer"][-1] == "purged"
    # No secret in any row or event.
    everything = str(events) + str(
        [world.plane.rows(f"SELECT to_jsonb(t) AS r FROM registry.{table} t")
         for table in ("tenants", "services", "history", "outbox")]
    )
    assert passwords and not any(p in everything for p in passwords)


def test_events_survive_redis_being_down_mid_lifecycle(world: World) -> None:
    """Point the platform at a closed port, run operations, point it back: every event
    arrives once, in order, after the next operation."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    sub = Subscriber(world.plane.channel)
    tenant = world.new_tenant("outage")
    kw = world.kwargs()
    try:
        world.plane.write(redis_port=closed)
        commands.onboard(tenant, (), DEV_STACK, verify=None, **kw)
        assert commands.register(tenant, ["tracer:SCHEMA"], verify=world.verify, **kw).ok
        assert sub.received(settle=0.3) == []  # nothing reached Redis
        world.plane.write()
        assert commands.suspend(tenant, **kw).ok
        events = sub.received()
    finally:
        sub.close()
    assert [e["event_type"] for e in events] == [
        "tenant.created",
        "tenant.service.associated",
        "tenant.suspended",
    ]
    assert len({e["event_id"] for e in events}) == 3
    pending = world.plane.rows("SELECT count(*) AS n FROM registry.outbox WHERE published_at IS NULL")
    assert pending == [{"n": 0}]


def test_purge_drops_what_a_role_left_outside_its_store(world: World) -> None:
    """Issue 16, row 8: a large object in ``postgres`` and ``template1`` (every role may
    connect to both by default) no longer makes ``DROP ROLE`` fail."""
    tenant = world.new_tenant("stray")
    world.onboard(tenant, "tracer:SCHEMA")
    role = world.backend.document(tenant, "tracer")["postgresql"]["user"]
    for database in ("postgres", "template1"):
        with psycopg.connect(**world.pg(tenant, "tracer", database), autocommit=True) as conn:
            conn.execute("SELECT lo_create(0)")
    commands.deregister(tenant, "tracer", purge=True, **world.kwargs())
    assert admin_sql("SELECT 1 FROM pg_roles WHERE rolname = %s", params=(role,)) == []
    for database in ("postgres", "template1"):
        assert admin_sql("SELECT count(*) FROM pg_largeobject_metadata l JOIN pg_roles r ON r.oid = l.lomowner WHERE r.rolname = %s", database, (role,)) == [(0,)]
    assert leftovers(tenant) == []


def test_a_purge_neither_hangs_on_a_neighbour_nor_on_the_tenants_own_session(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from tenant_infra import sessions
    from tenant_infra.errors import OperationFailed

    monkeypatch.setattr(sessions, "STRAY_LOCK_WAIT_SECONDS", 1)
    victim, neighbour = world.new_tenant("vic"), world.new_tenant("nbr")
    world.onboard(victim, "tracer:DATABASE")
    world.onboard(neighbour, "tracer:SCHEMA")
    victim_role = world.backend.document(victim, "tracer")["postgresql"]["user"]
    schema = world.backend.document(neighbour, "tracer")["postgresql"]["schema"]

    # The victim's own open transaction on a stray of its own: ended, not waited on.
    own = psycopg.connect(**world.pg(victim, "tracer", "postgres"))
    (lo,) = own.execute("SELECT lo_create(0)").fetchone()  # type: ignore[misc]
    own.commit()
    own.execute("SELECT lo_put(%s, 0, 'x')", (lo,))  # left open
    # A neighbour grants to the victim's role, then holds a transaction on it.
    hostile = psycopg.connect(**world.pg(neighbour, "tracer"))
    hostile.execute(sql.SQL("CREATE TABLE {}.bait (id int)").format(sql.Identifier(schema)))
    hostile.execute(sql.SQL("GRANT SELECT ON {}.bait TO {}").format(sql.Identifier(schema), sql.Identifier(victim_role)))
    hostile.commit()
    hostile.execute(sql.SQL("GRANT INSERT ON {}.bait TO {}").format(sql.Identifier(schema), sql.Identifier(victim_role)))
    try:
        with pytest.raises(OperationFailed, match="another session's transaction"):
            commands.deregister(victim, "tracer", purge=True, **world.kwargs())
        with pytest.raises(psycopg.OperationalError):  # its own session was ended
            own.execute("SELECT 1")
        hostile.rollback()
        commands.deregister(victim, "tracer", purge=True, **world.kwargs())
    finally:
        hostile.close()
        own.close()
    assert admin_sql("SELECT 1 FROM pg_roles WHERE rolname = %s", params=(victim_role,)) == []
