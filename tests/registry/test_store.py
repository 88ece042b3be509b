"""The registry on the real PostgreSQL and Redis: transitions, history, outbox, delivery."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from tenant_infra.config import TenantConfig
from tenant_infra.errors import BackendUnavailable, InvalidInput
from tenant_infra.registry import Change, Registry, ServiceChange
from tenant_infra.registry import store as store_module
from tests.support.registry import ControlPlane, Subscriber, control_plane

ROOT = Path(__file__).resolve().parents[2]
DEV = yaml.safe_load((ROOT / "stacks" / "Pulumi.dev.yaml").read_text())["config"]


def config(tenant: str, *services: str, tier: str = "standard") -> TenantConfig:
    return TenantConfig.model_validate(
        {
            "tenant": tenant,
            "tier": tier,
            "metadata": {"name": tenant.title()},
            "services": [
                {"product": s.split(":")[0], "isolation": s.split(":")[1]} for s in services
            ],
            "platform": DEV["tenant-infra:platform"],
        }
    )


def change(
    tenant: str, operation: str, cfg: TenantConfig | None, *states: tuple[str, str], **kw: Any
) -> Change:
    isolation = {s.product: s.isolation.value for s in cfg.services} if cfg else {}
    services = [ServiceChange(p, isolation.get(p, "SCHEMA"), state) for p, state in states]
    return Change(tenant, operation, cfg, services, **kw)


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[ControlPlane]:
    with control_plane(tmp_path, environment="staging") as plane:
        yield plane


@pytest.fixture
def registry(plane: ControlPlane) -> Registry:
    return Registry.from_platform(plane.root, plane.environ).open()


def test_a_lifecycle_is_recorded_with_history_and_one_event_per_transition(
    plane: ControlPlane, registry: Registry
) -> None:
    sub = Subscriber(plane.channel)
    other = Subscriber("tenant-events:production:")
    try:
        acme = config("acme", "ledger:SCHEMA")
        registry.record(change("acme", "onboard", acme, ("ledger", "provisioning")))
        registry.record(change("acme", "onboard", acme, ("ledger", "migrating")))
        registry.record(change("acme", "onboard", acme, ("ledger", "ready")))
        registry.record(change("acme", "up", acme, ("ledger", "ready")))  # nothing changed
        registry.record(
            change("acme", "suspend", acme, ("ledger", "suspended"), whole_tenant=False)
        )
        events = sub.received()
        assert other.received(settle=0.2) == []  # another environment hears nothing
    finally:
        sub.close()
        other.close()
    assert [e["event_type"] for e in events] == [
        "tenant.created",
        "tenant.service.associated",
        "tenant.service.suspended",
        "tenant.suspended",  # its only service is suspended: so is the tenant
    ]
    for event in events:
        assert set(event) == {
            "event_id", "event_type", "timestamp", "tenant_id", "tenant_slug", "environment",
            "payload",
        }
        assert (event["tenant_id"], event["tenant_slug"], event["environment"]) == (
            "acme", "acme", "staging",
        )
    associated = events[1]["payload"]
    assert associated["service_name"] == "ledger" and associated["isolation_mode"] == "schema"
    assert associated["modules"] == ["crm-api", "onboarding", "plugin-fees", "transaction"]
    assert associated["secret_paths"]["onboarding"] == {
        "postgresql_rw": "tenants/tenants/acme/ledger",
        "mongodb": "tenants/tenants/acme/ledger",
    }
    assert associated["messaging_config"] == {"rabbitmq_secret_path": "tenants/tenants/acme/ledger"}
    assert associated["connection_settings"] == {
        "max_open_conns": 25, "max_idle_conns": 6, "statement_timeout": "30000ms",
    }
    assert events[2]["payload"] == {"service_name": "ledger", "previous_status": "active"}
    history = registry.history("acme")
    assert [(h["product"], h["old_state"], h["new_state"]) for h in history] == [
        (None, None, "active"),
        ("ledger", None, "provisioning"),
        ("ledger", "provisioning", "migrating"),
        ("ledger", "migrating", "ready"),
        ("ledger", "ready", "suspended"),
        (None, "active", "suspended"),
    ]
    assert {h["actor"] for h in history} == {registry.actor}
    (row,) = registry.tenants()
    assert (row["tenant"], row["state"], row["tier"]) == ("acme", "suspended", "standard")
    assert registry.pending_events() == 0


def test_history_is_append_only(plane: ControlPlane, registry: Registry) -> None:
    registry.record(change("acme", "onboard", config("acme")))
    with psycopg.connect(**registry.params()) as conn, pytest.raises(psycopg.Error, match="append-only"):
        conn.execute("UPDATE registry.history SET actor = 'someone else'")


def test_a_transition_that_rolls_back_leaves_no_row_and_no_event(
    plane: ControlPlane, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = Subscriber(plane.channel)
    acme = config("acme", "ledger:SCHEMA")
    registry.record(change("acme", "onboard", acme, ("ledger", "ready")))

    def broken(self: Any, old: str) -> None:
        raise RuntimeError("the server went away mid-transaction")

    monkeypatch.setattr(store_module._Transition, "_tenant_state", broken)
    with pytest.raises(RuntimeError):
        registry.record(
            change("acme", "suspend", acme, ("ledger", "suspended"), whole_tenant=False)
        )
    monkeypatch.undo()
    try:
        events = sub.received()
    finally:
        sub.close()
    assert [e["event_type"] for e in events] == ["tenant.created", "tenant.service.associated"]
    assert [h["new_state"] for h in registry.history("acme")] == ["active", "ready"]
    assert plane.rows("SELECT count(*) AS n FROM registry.outbox")[0]["n"] == 2


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_events_wait_in_the_outbox_while_redis_is_down_and_arrive_once_after(
    plane: ControlPlane, caplog: pytest.LogCaptureFixture
) -> None:
    sub = Subscriber(plane.channel)
    try:
        plane.write(redis_port=_closed_port())
        down = Registry.from_platform(plane.root, plane.environ).open()
        acme = config("acme", "ledger:SCHEMA", "tracer:DATABASE")
        down.record(change("acme", "onboard", acme, ("ledger", "ready"), ("tracer", "ready")))
        down.record(
            change("acme", "deregister", acme, ("tracer", "retained"), whole_tenant=False)
        )
        assert down.pending_events() == 4
        assert "events not published yet" in caplog.text
        assert sub.received(settle=0.3) == []
        plane.write()  # Redis is back: the next operation publishes the backlog first
        up = Registry.from_platform(plane.root, plane.environ).open()
        up.record(change("acme", "deregister", acme, ("ledger", "purged"), whole_tenant=False))
        events = sub.received()
    finally:
        sub.close()
    assert [e["event_type"] for e in events] == [
        "tenant.created",
        "tenant.service.associated",
        "tenant.service.associated",
        "tenant.service.disassociated",
        "tenant.service.purged",
    ]
    assert len({e["event_id"] for e in events}) == len(events)
    assert events[3]["payload"] == {"service_name": "tracer", "preserve_data": True}
    assert up.pending_events() == 0


def test_two_operations_on_different_tenants_at_once_are_both_recorded(
    registry: Registry,
) -> None:
    errors: list[BaseException] = []

    def run(tenant: str) -> None:
        try:
            cfg = config(tenant, "ledger:SCHEMA")
            for state in ("provisioning", "migrating", "ready"):
                registry.record(change(tenant, "onboard", cfg, ("ledger", state)))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in ("acme", "globex")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for tenant in ("acme", "globex"):
        assert [h["new_state"] for h in registry.history(tenant)] == [
            "active", "provisioning", "migrating", "ready",
        ]


def test_a_tier_change_announces_new_connection_settings(
    plane: ControlPlane, registry: Registry
) -> None:
    registry.record(change("acme", "onboard", config("acme", "tracer:SCHEMA"), ("tracer", "ready")))
    sub = Subscriber(plane.channel)
    try:
        registry.record(
            change("acme", "up", config("acme", "tracer:SCHEMA", tier="enterprise"))
        )
        events = sub.received()
    finally:
        sub.close()
    assert [(e["event_type"], e["payload"]) for e in events] == [
        (
            "tenant.connections.updated",
            {
                "service_name": "tracer",
                "module": "tracer",
                "max_open_conns": 100,
                "max_idle_conns": 25,
                "statement_timeout": "60000ms",
            },
        )
    ]


def test_without_a_reachable_registry_nothing_starts(plane: ControlPlane, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="TENANT_INFRA_PLATFORM_STACK"):
        Registry.from_platform(plane.root, {})
    broken = Registry.from_platform(plane.root, plane.environ)
    broken.endpoint = broken.endpoint.model_copy(update={"port": _closed_port()})
    with pytest.raises(BackendUnavailable, match=r"registry at 127\.0\.0\.1") as caught:
        broken.open()
    assert "\n" not in str(caught.value)


def test_service_rows_follow_the_config_even_when_the_state_stays(
    plane: ControlPlane, registry: Registry
) -> None:
    registry.record(change("acme", "onboard", config("acme", "tracer:SCHEMA"), ("tracer", "ready")))
    bigger = config("acme", "tracer:SCHEMA", tier="enterprise")
    registry.record(change("acme", "up", bigger, ("tracer", "ready"), final=False))
    (service,) = registry.tenant("acme")["services"]  # type: ignore[index]
    assert service["connection_settings"]["max_open_conns"] == 25  # the update runs yet
    assert registry.tenant("acme")["tier"] == "standard"  # type: ignore[index]
    registry.record(change("acme", "up", bigger, ("tracer", "ready")))
    (service,) = registry.tenant("acme")["services"]  # type: ignore[index]
    assert service["connection_settings"]["max_open_conns"] == 100  # it went through
    assert registry.tenant("acme")["tier"] == "enterprise"  # type: ignore[index]
    assert any("tier standard -> enterprise" in h["reason"] for h in registry.history("acme"))


def test_an_offboarded_id_or_a_purged_product_coming_back_is_announced_again(
    plane: ControlPlane, registry: Registry
) -> None:
    sub = Subscriber(plane.channel)
    try:
        acme = config("acme", "tracer:SCHEMA")
        registry.record(change("acme", "onboard", acme, ("tracer", "ready")))
        registry.record(
            change("acme", "deregister", acme, ("tracer", "purged"), whole_tenant=False)
        )
        registry.record(change("acme", "register", acme, ("tracer", "ready")))
        registry.record(
            change("acme", "offboard", acme, ("tracer", "purged"), tenant_state="deleted")
        )
        registry.record(change("acme", "onboard", acme, ("tracer", "ready")))
        events = [e["event_type"] for e in sub.received()]
    finally:
        sub.close()
    assert events == [
        "tenant.created",
        "tenant.service.associated",
        "tenant.service.purged",
        "tenant.service.associated",
        "tenant.deleted",
        "tenant.created",
        "tenant.service.associated",
    ]
    assert registry.tenant("acme")["state"] == "active"  # type: ignore[index]


def test_a_redis_that_never_answers_costs_seconds_not_minutes(
    plane: ControlPlane,
) -> None:
    """A black hole (accepts, never answers): one short timeout, no retry, then this
    process leaves Redis alone while events wait in the outbox."""
    import time

    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(16)
    try:
        plane.write(redis_port=hole.getsockname()[1])
        registry = Registry.from_platform(plane.root, plane.environ).open()
        started = time.monotonic()
        for tenant in ("acme", "globex", "initech"):
            registry.record(change(tenant, "onboard", config(tenant)))
        assert time.monotonic() - started < 10
        assert registry.pending_events() == 3
    finally:
        hole.close()
