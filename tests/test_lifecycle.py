"""The lifecycle orchestration, without the Pulumi CLI: states, failures, locks, fleets."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tenant_infra import commands, retry
from tenant_infra.config import ServiceSpec, TenantConfig
from tenant_infra.errors import BackendUnavailable, InvalidInput
from tenant_infra.lifecycle import (
    MIGRATION_TYPE,
    EventSink,
    Evict,
    PreviewOutcome,
    ResourceEvent,
    ServiceState,
    ServiceStatus,
    deploy,
)
from tenant_infra.retry import TransientConflict
from tenant_infra.sessions import Eviction
from tenant_infra.workspace import InProgress, Workspace
from tests.support.registry import control_plane

ROOT = Path(__file__).resolve().parent.parent


class MemoryStacks:
    """Stacks kept in memory; ``up`` replays scripted engine events or raises."""

    def __init__(self) -> None:
        self.stacks: dict[str, dict[str, Any]] = {}
        self.fail_up: dict[str, list[BaseException]] = {}
        self.migrate: dict[str, dict[str, tuple[str | None, str]]] = {}
        self.calls: list[tuple[str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()

    def exists(self, tenant: str) -> bool:
        return tenant in self.stacks

    def ensure(self, tenant: str) -> None:
        self.stacks.setdefault(tenant, {"tags": {}, "outputs": {}})
        self.calls.append(("ensure", tenant))

    def up(self, tenant: str, on_event: EventSink) -> dict[str, Any]:
        self.calls.append(("up", tenant))
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(0.01)  # let concurrent workers overlap
            for product, (old, new) in self.migrate.get(tenant, {}).items():
                event = dict(
                    type=MIGRATION_TYPE,
                    name=f"{tenant}-{product}-migration",
                    old_revision=old,
                    new_revision=new,
                )
                on_event(ResourceEvent(op="update", phase="pre", **event))
            failures = self.fail_up.get(tenant)
            if failures:
                error = failures.pop(0)
                for product, (old, new) in self.migrate.get(tenant, {}).items():
                    if "migration" in str(error):
                        on_event(
                            ResourceEvent(
                                op="update",
                                phase="failed",
                                type=MIGRATION_TYPE,
                                name=f"{tenant}-{product}-migration",
                                old_revision=old,
                                new_revision=new,
                            )
                        )
                raise error
            outputs = {
                "services": {
                    p: {"revision": new} for p, (_, new) in self.migrate.get(tenant, {}).items()
                }
            }
            self.stacks[tenant]["outputs"] = outputs
            return outputs
        finally:
            with self._lock:
                self.in_flight -= 1

    def preview(self, tenant: str, on_event: EventSink) -> PreviewOutcome:
        if tenant in self.fail_up:
            raise RuntimeError("error: preview failed for " + tenant)
        events = tuple(
            ResourceEvent(
                op="update",
                phase="pre",
                type=MIGRATION_TYPE,
                name=f"{tenant}-{p}-migration",
                old_revision=old,
                new_revision=new,
            )
            for p, (old, new) in self.migrate.get(tenant, {}).items()
        )
        return PreviewOutcome({"update": len(events), "same": 10}, events)

    def destroy(self, tenant: str, on_event: EventSink) -> None:
        self.calls.append(("destroy", tenant))

    def remove(self, tenant: str) -> None:
        self.calls.append(("remove", tenant))
        del self.stacks[tenant]

    def tags(self, tenant: str) -> dict[str, str]:
        return dict(self.stacks[tenant]["tags"])

    def set_tags(self, tenant: str, tags: dict[str, str]) -> None:
        self.stacks[tenant]["tags"].update(tags)

    def outputs(self, tenant: str) -> dict[str, Any]:
        return self.stacks[tenant]["outputs"]


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project copy with the example stacks and a registry of its own; retries
    without real sleeping."""
    shutil.copytree(ROOT / "stacks", tmp_path / "stacks")
    (tmp_path / "Pulumi.yaml").write_text((ROOT / "Pulumi.yaml").read_text())
    (tmp_path / "tenant-infra.yaml").write_text("platform: stacks/Pulumi.dev.yaml\n")
    monkeypatch.setattr(retry, "RETRY_BASE_DELAY", 0.0)
    with control_plane(tmp_path) as plane:
        for key, value in plane.environ.items():
            monkeypatch.setenv(key, value)
        yield tmp_path


@pytest.fixture
def stacks() -> MemoryStacks:
    return MemoryStacks()


def test_onboard_moves_services_to_ready_through_migrating(
    root: Path, stacks: MemoryStacks
) -> None:
    stacks.migrate["newco"] = {"ledger": (None, "0003")}
    seen: list[tuple[str, str]] = []
    result = commands.onboard(
        "newco",
        ["ledger:SCHEMA"],
        backend=stacks,
        root=root,
        progress=lambda t, s: seen.append((s.product, s.state.value)),
        verify=None,
    )
    assert result.ok
    assert seen == [("ledger", "provisioning"), ("ledger", "migrating"), ("ledger", "ready")]
    assert result.service("ledger").revision == "0003"
    written = yaml.safe_load((root / "stacks" / "Pulumi.newco.yaml").read_text())["config"]
    # A service registered now has two alternating logins per store, slot a current.
    a = {"current": "a"}
    assert written["tenant-infra:services"] == [
        {
            "product": "ledger",
            "isolation": "SCHEMA",
            "credentials": {"postgres": a, "rabbitmq": a, "mongodb": a},
        }
    ]
    assert stacks.tags("newco")["tenant-infra:state:ledger"] == "ready"
    status = commands.status("newco", backend=stacks, root=root)
    assert (
        status.service("ledger").state is ServiceState.READY
        and status.service("ledger").revision == "0003"
    )


def test_failed_update_ends_in_failed_with_the_reason(root: Path, stacks: MemoryStacks) -> None:
    stacks.fail_up["newco"] = [RuntimeError("error: postgresql: connection refused")]
    result = commands.onboard(
        "newco", ["ledger:SCHEMA", "tracer:DATABASE"], backend=stacks, root=root, verify=None
    )
    assert not result.ok
    for service in result.services:
        assert service.state is ServiceState.FAILED
        assert "connection refused" in service.reason
    assert (
        commands.status("newco", backend=stacks, root=root).service("tracer").state
        is ServiceState.FAILED
    )


def test_a_failed_migration_names_the_revision_and_rerun_recovers(
    root: Path, stacks: MemoryStacks
) -> None:
    stacks.migrate["newco"] = {"ledger": ("0001", "0003")}
    stacks.fail_up["newco"] = [RuntimeError("error: migration of newco/ledger to 0003 failed")]
    failed = commands.onboard("newco", ["ledger:SCHEMA"], backend=stacks, root=root, verify=None)
    assert failed.service("ledger").state is ServiceState.FAILED
    assert failed.service("ledger").reason == "migration to 0003 failed"
    again = commands.onboard("newco", [], backend=stacks, root=root, verify=None)
    assert again.ok and again.service("ledger").revision == "0003"


def test_registering_a_service_keeps_the_existing_one(root: Path, stacks: MemoryStacks) -> None:
    commands.onboard("newco", ["ledger:SCHEMA"], backend=stacks, root=root, verify=None)
    stacks.fail_up["newco"] = [RuntimeError("error: rabbitmq: 503")]
    result = commands.register("newco", ["tracer:SCHEMA"], backend=stacks, root=root, verify=None)
    assert result.service("ledger").state is ServiceState.READY  # untouched by tracer's failure
    assert result.service("tracer").state is ServiceState.FAILED
    assert not result.ok and "503" in result.error
    config = Workspace(root).read_config("newco")
    assert config is not None and [s.product for s in config.services] == ["ledger", "tracer"]


def test_changing_isolation_mode_is_refused_before_anything_runs(
    root: Path, stacks: MemoryStacks
) -> None:
    with pytest.raises(InvalidInput, match="promotion"):
        commands.onboard("acme", ["ledger:SCHEMA"], backend=stacks, root=root, verify=None)
    assert stacks.calls == []


def test_register_needs_an_onboarded_tenant(root: Path, stacks: MemoryStacks) -> None:
    with pytest.raises(InvalidInput, match="onboard it first"):
        commands.register("nobody", ["ledger:SCHEMA"], backend=stacks, root=root, verify=None)


def test_transient_grant_conflicts_are_retried_not_failed(root: Path, stacks: MemoryStacks) -> None:
    stacks.fail_up["newco"] = [TransientConflict("tuple concurrently updated")] * 2
    result = commands.onboard("newco", ["ledger:SCHEMA"], backend=stacks, root=root, verify=None)
    assert result.ok
    assert stacks.calls.count(("up", "newco")) == 3


def test_register_verifies_every_service_before_ready(root: Path, stacks: MemoryStacks) -> None:
    checked: list[tuple[str, str]] = []
    commands.onboard(
        "newco",
        ["ledger:SCHEMA"],
        backend=stacks,
        root=root,
        verify=lambda t, p: checked.append((t, p)),
    )
    commands.register(
        "newco",
        ["tracer:SCHEMA"],
        backend=stacks,
        root=root,
        verify=lambda t, p: checked.append((t, p)),
    )
    assert checked == [("newco", "ledger"), ("newco", "ledger"), ("newco", "tracer")]


def test_isolation_checks_are_the_default_gate(
    root: Path, stacks: MemoryStacks, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without VAULT_ADDR or a connections file the default gate cannot prove isolation: not ready."""
    monkeypatch.delenv("VAULT_ADDR", raising=False)
    result = commands.onboard("newco", ["tracer:SCHEMA"], backend=stacks, root=root)
    assert result.service("tracer").state is ServiceState.FAILED
    assert result.service("tracer").reason.startswith("verify:")


def test_verify_failure_keeps_the_service_from_ready(root: Path, stacks: MemoryStacks) -> None:
    def verify(tenant: str, product: str) -> None:
        raise RuntimeError("check public-connect failed")

    result = commands.onboard("newco", ["ledger:SCHEMA"], backend=stacks, root=root, verify=verify)
    assert result.service("ledger").state is ServiceState.FAILED
    assert result.service("ledger").reason == "verify: check public-connect failed"


def test_the_same_tenant_twice_at_once_is_refused(root: Path, stacks: MemoryStacks) -> None:
    workspace = Workspace(root)
    with workspace.lock("newco"), pytest.raises(InProgress, match="already in progress"):
        commands.onboard("newco", ["ledger:SCHEMA"], backend=stacks, root=root, verify=None)
    assert not (root / "stacks" / "Pulumi.newco.yaml").exists()


def test_an_interrupted_operation_reads_as_failed(root: Path, stacks: MemoryStacks) -> None:
    """A run killed mid-migration left ``migrating`` in the registry and on the stack."""
    commands.onboard("newco", ["ledger:SCHEMA"], backend=stacks, root=root, verify=None)
    stacks.set_tags("newco", {"tenant-infra:state:ledger": "migrating"})
    journal = commands.registry(Workspace(root), stacks).journal("up")
    journal(None, "newco", [ServiceStatus("ledger", "SCHEMA", ServiceState.MIGRATING)])
    status = commands.status("newco", backend=stacks, root=root).service("ledger")
    assert status.state is ServiceState.FAILED and "interrupted" in status.reason
    (listed,) = commands.list_tenants(backend=stacks, root=root)
    assert listed.service("ledger").state is ServiceState.FAILED
    (failed,) = commands.list_tenants(state="failed", backend=stacks, root=root)
    assert failed.tenant == "newco"
    with pytest.raises(InvalidInput, match="--state must be one of"):
        commands.list_tenants(state="broken", backend=stacks, root=root)


def test_status_refresh_reports_drift_between_stack_and_registry(
    root: Path, stacks: MemoryStacks
) -> None:
    commands.onboard("newco", ["ledger:SCHEMA"], backend=stacks, root=root, verify=None)
    assert commands.status("newco", refresh=True, backend=stacks, root=root).drift == []
    stacks.set_tags("newco", {"tenant-infra:state:ledger": "suspended"})
    status = commands.status("newco", refresh=True, backend=stacks, root=root)
    assert status.drift == ["ledger: state is suspended on the stack, ready in the registry"]
    assert status.service("ledger").state is ServiceState.READY  # the registry's answer


def test_stack_file_keeps_pulumi_keys(root: Path) -> None:
    path = root / "stacks" / "Pulumi.globex.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["encryptionsalt"] = "v1:abc:def"
    path.write_text(yaml.safe_dump(doc))
    workspace = Workspace(root)
    config = workspace.read_config("globex")
    assert config is not None
    workspace.write_config(config.with_services([ServiceSpec.parse("ledger:SCHEMA")]))
    assert yaml.safe_load(path.read_text())["encryptionsalt"] == "v1:abc:def"


def test_up_all_bounds_concurrency_and_isolates_failures(root: Path, stacks: MemoryStacks) -> None:
    for i in range(6):
        commands.onboard(f"tenant-{i}", ["ledger:SCHEMA"], backend=stacks, root=root, verify=None)
    stacks.fail_up["tenant-2"] = [RuntimeError("error: boom")]
    stacks.max_in_flight = 0
    results = commands.up(
        [f"tenant-{i}" for i in range(6)], concurrency=2, backend=stacks, root=root, verify=None
    )
    assert [r.tenant for r in results] == [f"tenant-{i}" for i in range(6)]
    assert [r.ok for r in results] == [True, True, False, True, True, True]
    assert "boom" in results[2].error
    assert 1 <= stacks.max_in_flight <= 2


def test_offboard_refuses_protected_data_without_a_decision(
    root: Path, stacks: MemoryStacks
) -> None:
    commands.onboard("newco", ["ledger:SCHEMA"], backend=stacks, root=root, verify=None)
    with pytest.raises(InvalidInput, match="--retain-data"):
        commands.offboard("newco", backend=stacks, root=root)
    assert ("destroy", "newco") not in stacks.calls


def test_offboard_with_retention_keeps_the_data_in_the_stack_then_purge_removes_it(
    root: Path, stacks: MemoryStacks
) -> None:
    commands.onboard("newco", ["ledger:SCHEMA"], backend=stacks, root=root, verify=None)
    seen_config: list[Any] = []
    original_up = stacks.up

    def up(tenant: str, on_event: EventSink) -> dict[str, Any]:
        seen_config.append(Workspace(root).read_config(tenant))
        return original_up(tenant, on_event)

    stacks.up = up  # type: ignore[method-assign]
    retained = commands.offboard("newco", retain_data=True, backend=stacks, root=root)
    assert retained == [
        "ledger: PostgreSQL schema store",
        "RabbitMQ vhost newco",
        "MongoDB database newco",
    ]
    (config,) = seen_config
    (spec,) = config.services
    assert spec.removal == "retain" and config.protects(spec)  # retained data stays protected
    assert ("destroy", "newco") not in stacks.calls
    status = commands.status("newco", backend=stacks, root=root)
    assert [s.state for s in status.services] == [ServiceState.RETAINED]

    commands.offboard("newco", purge=True, backend=stacks, root=root)
    purging = seen_config[-1]
    assert purging.services[0].removal == "purge" and not purging.protects(purging.services[0])
    assert stacks.calls[-3:] == [("up", "newco"), ("destroy", "newco"), ("remove", "newco")]
    assert not (root / "stacks" / "Pulumi.newco.yaml").exists()


def test_fleet_selection_is_validated(root: Path, stacks: MemoryStacks) -> None:
    with pytest.raises(InvalidInput, match="not both"):
        commands.preview(["acme"], all_tenants=True, backend=stacks, root=root)
    with pytest.raises(InvalidInput, match="unknown tenant 'ghost'"):
        commands.preview(["ghost"], backend=stacks, root=root)
    with pytest.raises(InvalidInput, match="at least 1"):
        commands.preview(["acme"], concurrency=0, backend=stacks, root=root)


def test_preview_all_reports_each_tenant(root: Path, stacks: MemoryStacks) -> None:
    stacks.migrate["globex"] = {"ledger": ("0002", "0003")}
    stacks.fail_up["acme"] = []
    results = commands.preview(all_tenants=True, backend=stacks, root=root)
    by_tenant = {r.tenant: r for r in results}
    assert set(by_tenant) == {"acme", "dev", "globex"}
    assert not by_tenant["acme"].ok and "preview failed" in by_tenant["acme"].error
    assert by_tenant["globex"].ok and by_tenant["globex"].preview is not None


def test_one_invalid_stack_file_fails_its_own_tenant_only(root: Path, stacks: MemoryStacks) -> None:
    (root / "stacks" / "Pulumi.globex.yaml").write_text("config: [unclosed\n")
    results = {r.tenant: r for r in commands.up(all_tenants=True, backend=stacks, root=root, verify=None)}
    assert set(results) == {"acme", "dev", "globex"}
    assert not results["globex"].ok and "not valid YAML" in results["globex"].error
    assert results["acme"].ok and results["dev"].ok
    with pytest.raises(InvalidInput, match="not valid YAML"):  # named, it is the caller's input
        commands.up(["globex"], backend=stacks, root=root, verify=None)


def test_engine_events_are_streamed_without_values(root: Path, stacks: MemoryStacks) -> None:
    stacks.migrate["newco"] = {"ledger": ("0001", "0003")}
    streamed: list[dict[str, Any]] = []
    commands.onboard(
        "newco",
        ["ledger:SCHEMA"],
        backend=stacks,
        root=root,
        events=lambda e: streamed.append(e.to_json()),
    )
    assert streamed == [
        {
            "op": "update",
            "type": MIGRATION_TYPE,
            "name": "newco-ledger-migration",
            "phase": "pre",
            "diffs": [],
            "oldRevision": "0001",
            "newRevision": "0003",
        }
    ]


def test_failure_reasons_are_scrubbed_before_they_become_tags(
    root: Path, stacks: MemoryStacks
) -> None:
    stacks.fail_up["newco"] = [
        RuntimeError("error: dial postgresql://admin:S3cretPw@db:5432/ledger: refused")
    ]
    result = commands.onboard("newco", ["ledger:SCHEMA"], backend=stacks, root=root, verify=None)
    assert "S3cretPw" not in result.error and "S3cretPw" not in str(stacks.tags("newco"))
    assert "[secret]@db" in result.service("ledger").reason


def test_a_concurrent_update_elsewhere_is_not_recorded_as_a_failure(
    root: Path, stacks: MemoryStacks
) -> None:
    commands.onboard("newco", ["ledger:SCHEMA"], backend=stacks, root=root, verify=None)
    before = stacks.tags("newco")
    stacks.fail_up["newco"] = [InProgress("another update of this stack is in progress")]
    with pytest.raises(InProgress):
        commands.onboard("newco", [], backend=stacks, root=root, verify=None)
    assert stacks.tags("newco") == before
    # A transition that started (ready -> deprovisioning) is undone in the registry too.
    stacks.fail_up["newco"] = [InProgress("another update of this stack is in progress")]
    with pytest.raises(InProgress):
        commands.deregister("newco", "ledger", retain_data=True, backend=stacks, root=root)
    assert stacks.tags("newco") == before
    status = commands.status("newco", backend=stacks, root=root)
    assert status.service("ledger").state is ServiceState.READY
    states = [h["new_state"] for h in commands.history("newco", backend=stacks, root=root)]
    assert states[-2:] == ["deprovisioning", "ready"]


def test_a_failed_offboarding_leaves_the_tenant_protected(root: Path, stacks: MemoryStacks) -> None:
    commands.onboard("newco", ["ledger:SCHEMA"], backend=stacks, root=root, verify=None)
    stacks.fail_up["newco"] = [RuntimeError("error: vault unreachable")]
    with pytest.raises(RuntimeError):
        commands.offboard("newco", retain_data=True, backend=stacks, root=root)
    config = Workspace(root).read_config("newco")
    assert config is not None and all(config.protects(s) for s in config.services)


def test_a_stack_file_naming_another_tenant_is_refused(root: Path) -> None:
    (root / "stacks" / "Pulumi.acme2.yaml").write_text(
        (root / "stacks" / "Pulumi.globex.yaml").read_text()
    )
    with pytest.raises(InvalidInput, match="declares tenant 'globex', not 'acme2'"):
        Workspace(root).read_config("acme2")


def test_list_reads_the_registry_with_filters(root: Path, stacks: MemoryStacks) -> None:
    """Registered tenants only (a stack file alone is not a tenant), in id order."""
    for tenant in ("zeta", "alpha"):
        commands.onboard(tenant, ["tracer:SCHEMA"], backend=stacks, root=root, verify=None)
    commands.register("alpha", ["ledger:DATABASE"], backend=stacks, root=root, verify=None)
    commands.deregister("zeta", "tracer", retain_data=True, backend=stacks, root=root)
    listed = list(commands.list_tenants(backend=stacks, root=root))
    assert [(s.tenant, s.state) for s in listed] == [("alpha", "active"), ("zeta", "active")]
    assert [p.product for p in listed[0].services] == ["ledger", "tracer"]
    only = commands.list_tenants(product="ledger", backend=stacks, root=root)
    assert [s.tenant for s in only] == ["alpha"]
    retained = commands.list_tenants(state="retained", backend=stacks, root=root)
    assert [s.tenant for s in retained] == ["zeta"]


def test_up_leaves_an_unchanged_stack_file_as_the_operator_wrote_it(
    root: Path, stacks: MemoryStacks
) -> None:
    path = root / "stacks" / "Pulumi.globex.yaml"
    before = path.read_text()
    assert before.startswith("#")  # the example file opens with a comment
    results = commands.up(["globex"], backend=stacks, root=root, verify=None)
    assert results[0].ok and path.read_text() == before


def test_one_uuid_spelled_two_ways_is_one_tenant(root: Path, stacks: MemoryStacks) -> None:
    """Events carry UUIDs dashless: a second spelling would be the same tenant on the wire."""
    dashed = "0f8fad5b-d9cb-469f-a165-70867728950e"
    commands.onboard(dashed, ["tracer:SCHEMA"], backend=stacks, root=root, verify=None)
    with pytest.raises(InvalidInput, match=f"use '{dashed}'"):
        commands.onboard(dashed.replace("-", ""), ["tracer:SCHEMA"], backend=stacks, root=root)
    assert not (root / "stacks" / f"Pulumi.{dashed.replace('-', '')}.yaml").exists()


# ------------------------------------------------- evicting what a new database let in


def _onboarded(root: Path, stacks: MemoryStacks) -> TenantConfig:
    assert commands.onboard("newco", ["ledger:DATABASE"], backend=stacks, root=root, verify=None).ok
    config = Workspace(root).read_config("newco")
    assert config is not None
    return config


def _evict(*results: Eviction | Exception) -> tuple[Evict, list[str]]:
    """An eviction answering ``results`` in turn (then nothing), and the products it saw."""
    pending, seen = list(results), []

    def evict(_config: TenantConfig, product: str) -> Eviction:
        seen.append(product)
        result = pending.pop(0) if pending else Eviction()
        if isinstance(result, Exception):
            raise result
        return result

    return evict, seen


def test_a_failed_update_the_eviction_explains_runs_once_more(
    root: Path, stacks: MemoryStacks
) -> None:
    config = _onboarded(root, stacks)
    stacks.fail_up["newco"] = [RuntimeError("ledger: too many connections for database")]
    evict, seen = _evict(Eviction(ended=("ledger_nbr__0a (25)",)))
    status = deploy(config, stacks, Workspace(root), evict=evict)
    assert status.ok, status.to_json()
    assert stacks.calls.count(("up", "newco")) == 3  # onboard's, the failed one, again
    assert seen == ["ledger", "ledger"]  # after the failure, after the success


@pytest.mark.parametrize(
    "answer",
    [Eviction(), Eviction(removed=("large object 1 of x",)), BackendUnavailable("PostgreSQL: down")],
)
def test_a_failed_update_the_eviction_does_not_explain_fails_once(
    root: Path, stacks: MemoryStacks, answer: Eviction | Exception, caplog: pytest.LogCaptureFixture
) -> None:
    config = _onboarded(root, stacks)
    stacks.fail_up["newco"] = [RuntimeError("ledger: permission denied")]
    evict, _ = _evict(answer)
    status = deploy(config, stacks, Workspace(root), evict=evict)
    assert status.error == "ledger: permission denied"
    assert stacks.calls.count(("up", "newco")) == 2
    if isinstance(answer, Exception):
        assert "could not evict refused roles: PostgreSQL: down" in caplog.text
