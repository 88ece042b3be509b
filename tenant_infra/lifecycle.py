"""The tenant lifecycle of seed 002 as states over a tenant's stack.

A service moves ``provisioning → migrating → ready ⇄ suspended``, and
``ready/suspended → deprovisioning → retained | purged``; any failure ends in
``failed`` with the reason, never half-way. Every change of state is a change of the
stack config followed by an update, so the servers never drift from the stack; the
states themselves are kept on the stack (as tags), so ``status`` reads them without
running a deployment.

The stack operations sit behind :class:`StackBackend`, whose real implementation
(:mod:`tenant_infra.automation`) drives the Pulumi CLI through the Automation API;
everything here is the orchestration around it and is tested without the CLI.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from tenant_infra.catalog import Store, load_catalog
from tenant_infra.config import Removal, ServiceSpec, TenantConfig
from tenant_infra.errors import InvalidInput, OperationFailed, first_line, scrub
from tenant_infra.retry import with_retries
from tenant_infra.workspace import InProgress, Workspace

if TYPE_CHECKING:
    from tenant_infra.sessions import Eviction

log = logging.getLogger(__name__)

#: Resource type of the per-service migration marker (see components/migration.py).
MIGRATION_TYPE = "pulumi-python:dynamic/tenant:ServiceMigration"
#: Logical name of a service's migration marker: ``<tenant>-<product>-migration``.
MIGRATION_SUFFIX = "-migration"
TAG_PREFIX = "tenant-infra"
MAX_TAG_VALUE = 256


def migration_product(name: str) -> str | None:
    """The product whose migration marker is named ``name`` (products contain no ``-``)."""
    if not name.endswith(MIGRATION_SUFFIX):
        return None
    return name.removesuffix(MIGRATION_SUFFIX).rsplit("-", 1)[-1]


class ServiceState(StrEnum):
    PROVISIONING = "provisioning"
    MIGRATING = "migrating"
    READY = "ready"
    SUSPENDED = "suspended"
    DEPROVISIONING = "deprovisioning"
    RETAINED = "retained"
    PURGED = "purged"
    FAILED = "failed"


#: States a failed update leaves as they were: the update did not reach them.
SETTLED = frozenset({ServiceState.READY, ServiceState.SUSPENDED, ServiceState.RETAINED})
#: States only a running operation holds: found without one, it was interrupted.
IN_FLIGHT = frozenset(
    {ServiceState.PROVISIONING, ServiceState.MIGRATING, ServiceState.DEPROVISIONING}
)


@dataclass(frozen=True)
class ResourceEvent:
    """An engine event reduced to what the lifecycle needs; never carries values."""

    op: str  # create, update, replace, delete, same, ...
    type: str
    name: str
    phase: str  # "pre" (starting), "done", "failed"
    #: Changed input keys (for migrations: e.g. ``head``).
    diffs: tuple[str, ...] = ()
    #: For migration markers: revision before and the head it moves to.
    old_revision: str | None = None
    new_revision: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "type": self.type,
            "name": self.name,
            "phase": self.phase,
            "diffs": list(self.diffs),
            "oldRevision": self.old_revision,
            "newRevision": self.new_revision,
        }


EventSink = Callable[[ResourceEvent], None]


@dataclass(frozen=True)
class PreviewOutcome:
    changes: dict[str, int]  # op -> count
    events: tuple[ResourceEvent, ...]


class StackBackend(Protocol):
    """The stack operations the lifecycle needs (one stack per tenant)."""

    def exists(self, tenant: str) -> bool: ...
    def ensure(self, tenant: str) -> None: ...
    def up(self, tenant: str, on_event: EventSink) -> dict[str, Any]: ...
    def refresh(self, tenant: str, on_event: EventSink) -> None: ...
    def preview(self, tenant: str, on_event: EventSink) -> PreviewOutcome: ...
    def destroy(self, tenant: str, on_event: EventSink) -> None: ...
    def remove(self, tenant: str) -> None: ...
    def tags(self, tenant: str) -> dict[str, str]: ...
    def set_tags(self, tenant: str, tags: dict[str, str]) -> None: ...
    def outputs(self, tenant: str) -> dict[str, Any]: ...


@dataclass
class ServiceStatus:
    product: str
    isolation: str
    state: ServiceState
    reason: str = ""
    revision: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "product": self.product,
            "isolation": self.isolation,
            "state": self.state.value,
            "reason": self.reason,
            "revision": self.revision,
        }


@dataclass
class TenantStatus:
    tenant: str
    services: list[ServiceStatus] = field(default_factory=list)
    deployed: bool = True
    #: Why the last operation failed, when it did. Services already ready before a
    #: failed update stay ready (transactional migrations leave them as they were).
    error: str = ""
    #: The tenant's own state in the registry (active, suspended, deleted).
    state: str = ""
    #: Where the stack and the registry disagree (``status --refresh``).
    drift: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.error and all(s.state in SETTLED for s in self.services)

    def service(self, product: str) -> ServiceStatus:
        return next(s for s in self.services if s.product == product)

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "deployed": self.deployed,
            "ok": self.ok,
            "error": self.error or None,
            "state": self.state or None,
            "drift": self.drift,
            "services": [s.to_json() for s in self.services],
        }


def drift(stack: TenantStatus, registry: TenantStatus) -> list[str]:
    """Where the stack (tags and outputs) and the registry disagree, one line each."""
    found: list[str] = []
    recorded = {s.product: s for s in registry.services if s.state != ServiceState.PURGED}
    for service in stack.services:
        other = recorded.pop(service.product, None)
        if other is None:
            found.append(f"{service.product}: on the stack, not in the registry")
            continue
        # Not the revision: `migrate` moves it in the registry, the stack's marker
        # catches up at the next update; that is lag, not drift.
        for what in ("state", "isolation"):
            ours, theirs = getattr(service, what), getattr(other, what)
            if ours != theirs:
                shown = [getattr(v, "value", v) for v in (ours, theirs)]
                found.append(
                    f"{service.product}: {what} is {shown[0]} on the stack, "
                    f"{shown[1]} in the registry"
                )
    found += [f"{product}: in the registry, not on the stack" for product in sorted(recorded)]
    return found


Progress = Callable[[str, ServiceStatus], None]
#: After an update, evicts what a service's new dedicated database let in before its
#: privileges were set (``sessions.evict_refused``).
Evict = Callable[[TenantConfig, str], "Eviction"]


class Journal(Protocol):
    """Where an operation records each transition (the registry, :mod:`tenant_infra.
    registry`): called with the config in force and the services whose states it set;
    ``tenant_state`` when the operation ends the tenant's life."""

    def __call__(
        self,
        config: TenantConfig | None,
        tenant: str,
        statuses: Sequence[ServiceStatus],
        tenant_state: str | None = None,
        final: bool = True,
    ) -> None: ...


def _no_progress(_tenant: str, _status: ServiceStatus) -> None:
    return None


# ------------------------------------------------------------------------ states


def _tag(kind: str, product: str) -> str:
    return f"{TAG_PREFIX}:{kind}:{product}"


def _clean_reason(reason: str) -> str:
    """One line, bounded, credentials scrubbed: tags and reports show it verbatim."""
    text = " ".join(scrub(reason).split())
    return text if len(text) <= MAX_TAG_VALUE else text[: MAX_TAG_VALUE - 3] + "..."


def _record(
    backend: StackBackend,
    tenant: str,
    statuses: Sequence[ServiceStatus],
    journal: Journal | None = None,
    config: TenantConfig | None = None,
    final: bool = False,
) -> None:
    """States in the registry, with their history, and on the stack (tags).

    The stack's tags are written even when the registry cannot record the transition;
    the operation then fails saying so, and running it again records it.
    """
    for status in statuses:
        status.reason = _clean_reason(status.reason)
    failure: Exception | None = None
    if journal is not None:
        try:
            journal(config, tenant, statuses, final=final)
        except Exception as exc:
            failure = exc
    tags: dict[str, str] = {}
    for status in statuses:
        tags[_tag("state", status.product)] = status.state.value
        tags[_tag("reason", status.product)] = status.reason or "-"
    backend.set_tags(tenant, tags)
    if failure is not None:
        raise OperationFailed(
            f"tenant {tenant!r}: the stack was updated but the registry could not record it "
            f"({_clean_reason(str(failure)) or type(failure).__name__}); run the same "
            "operation again"
        ) from None


def _revisions(outputs: dict[str, Any]) -> dict[str, str | None]:
    services = outputs.get("services") or {}
    return {
        product: (info or {}).get("revision") if isinstance(info, dict) else None
        for product, info in services.items()
    }


def read_status(backend: StackBackend, workspace: Workspace, tenant: str) -> TenantStatus:
    """The tenant's services and states, read from its stack file and stack tags."""
    config = known_config(workspace, tenant)
    if not backend.exists(tenant):
        return TenantStatus(
            tenant,
            [
                ServiceStatus(
                    s.product, s.isolation.value, ServiceState.PROVISIONING, "not deployed yet"
                )
                for s in config.services
            ],
            deployed=False,
        )
    tags = backend.tags(tenant)
    revisions = _revisions(backend.outputs(tenant))
    busy = workspace.is_locked(tenant)
    statuses = []
    for spec in config.services:
        raw = tags.get(_tag("state", spec.product), ServiceState.PROVISIONING.value)
        state = (
            ServiceState(raw) if raw in ServiceState.__members__.values() else ServiceState.FAILED
        )
        reason = tags.get(_tag("reason", spec.product), "")
        reason = "" if reason == "-" else reason
        if state in IN_FLIGHT and not busy:
            state, reason = ServiceState.FAILED, f"interrupted while {raw}; run it again"
        statuses.append(
            ServiceStatus(
                spec.product, spec.isolation.value, state, reason, revisions.get(spec.product)
            )
        )
    return TenantStatus(tenant, statuses)


# -------------------------------------------------------------------- operations


def merge_services(
    existing: TenantConfig | None, requested: Sequence[ServiceSpec]
) -> list[ServiceSpec]:
    """Existing services plus new ones; changing a service's mode is refused (promotion)."""
    current = {s.product: s for s in existing.services} if existing else {}
    merged = list(current.values())
    for spec in requested:
        known = current.get(spec.product)
        if known is None:
            merged.append(spec)
            current[spec.product] = spec
        elif known.isolation is not spec.isolation:
            raise InvalidInput(
                f"service {spec.product!r} of tenant {existing.tenant if existing else ''!r} is "
                f"{known.isolation.value}; moving it to {spec.isolation.value} is not a "
                f"registration: SCHEMA to DATABASE is a promotion (tenantctl promote)"
            )
    return merged


def deploy(
    config: TenantConfig,
    backend: StackBackend,
    workspace: Workspace,
    progress: Progress = _no_progress,
    verify: Callable[[str, str], None] | None = None,
    events: EventSink | None = None,
    journal: Journal | None = None,
    evict: Evict | None = None,
) -> TenantStatus:
    """Write the tenant's config and bring its stack up; every service ends ready or failed.

    ``evict(config, product)`` runs after the update, and ``verify(tenant, product)``
    (raising on failure) after it, before a service is marked ready. A failed update
    that the eviction explains (it ended sessions, which can have kept the migration out)
    runs once more.
    """
    tenant = config.tenant
    with workspace.lock(tenant):
        previous = workspace.read_config(tenant)
        if config != previous:  # an unchanged file keeps its comments and layout
            workspace.write_config(config)
        backend.ensure(tenant)
        old_tags = backend.tags(tenant)
        statuses = {
            s.product: ServiceStatus(
                s.product, s.isolation.value, _starting_state(s, previous, old_tags)
            )
            for s in config.services
        }
        _record(backend, tenant, list(statuses.values()), journal, config)
        for status in statuses.values():
            progress(tenant, status)

        def on_event(event: ResourceEvent) -> None:
            if events is not None:
                events(event)
            if event.type != MIGRATION_TYPE:
                return
            status = statuses.get(migration_product(event.name) or "")
            if status is None:
                return
            if event.phase == "pre" and event.op != "same":
                status.state = ServiceState.MIGRATING
                status.reason = f"{event.old_revision or 'base'} -> {event.new_revision or 'head'}"
                progress(tenant, status)
            elif event.phase == "failed":
                status.state = ServiceState.FAILED
                status.reason = f"migration to {event.new_revision or 'head'} failed"

        starting = {product: (s.state, s.reason) for product, s in statuses.items()}

        def update() -> dict[str, Any]:
            try:
                return with_retries(lambda: backend.up(tenant, on_event))
            except InProgress:
                raise
            except Exception:
                if evict is None or not _evicted_sessions(config, evict):
                    raise
                # The neighbour's sessions cannot come back: the revoke ran before
                # anything connected as the tenant. The first attempt's verdicts go.
                for product, (state, reason) in starting.items():
                    statuses[product].state, statuses[product].reason = state, reason
                return with_retries(lambda: backend.up(tenant, on_event))

        try:
            outputs = update()
        except InProgress:
            # Another runner (elsewhere, on a shared backend) holds the stack: its
            # states are its own to record; put back the ones this run overwrote, in
            # the registry too (its history then shows the attempt and its undoing).
            if journal is not None:
                undone = []
                for status in statuses.values():
                    raw = old_tags.get(_tag("state", status.product), "")
                    if raw in {state.value for state in ServiceState}:
                        reason = old_tags.get(_tag("reason", status.product), "")
                        undone.append(
                            ServiceStatus(
                                status.product,
                                status.isolation,
                                ServiceState(raw),
                                "" if reason == "-" else reason,
                            )
                        )
                with contextlib.suppress(Exception):
                    journal(config, tenant, undone, final=False)
            backend.set_tags(
                tenant, {k: v for k, v in old_tags.items() if k.startswith(TAG_PREFIX)}
            )
            raise
        except Exception as exc:  # every failure ends in `failed`, with the reason
            reason = _clean_reason(str(exc)) or type(exc).__name__
            for status in statuses.values():
                migration_failed = status.reason.startswith("migration")
                if status.state not in SETTLED or migration_failed:
                    status.state = ServiceState.FAILED
                    status.reason = status.reason if migration_failed else reason
            _record(backend, tenant, list(statuses.values()), journal, config)
            for status in statuses.values():
                progress(tenant, status)
            return TenantStatus(tenant, list(statuses.values()), error=reason)

        revisions = _revisions(outputs)
        specs = {s.product: s for s in config.services}
        for status in statuses.values():
            status.revision = revisions.get(status.product)
            spec = specs[status.product]
            if spec.removal is not None or spec.suspended:
                # A purge goes on in the caller; retained and suspended services are
                # not verified (every login is refused by design).
                status.state = {
                    "retain": ServiceState.RETAINED,
                    "purge": ServiceState.DEPROVISIONING,
                    None: ServiceState.SUSPENDED,
                }[spec.removal]
                status.reason = ""
                progress(tenant, status)
                continue
            if evict is not None:
                _evict_or_warn(config, status.product, evict)
            try:
                if verify is not None:
                    verify(tenant, status.product)
            except Exception as exc:
                status.state, status.reason = ServiceState.FAILED, _clean_reason(f"verify: {exc}")
            else:
                status.state, status.reason = ServiceState.READY, ""
            progress(tenant, status)
        _record(backend, tenant, list(statuses.values()), journal, config, final=True)
        return TenantStatus(tenant, list(statuses.values()))


def _evicted_sessions(config: TenantConfig, evict: Evict) -> bool:
    """Whether the eviction ended a session of any service (sessions are what can have
    kept the migration out)."""
    evictions = [_evict_or_warn(config, spec.product, evict) for spec in config.services]
    return any(eviction.ended for eviction in evictions if eviction is not None)


def _evict_or_warn(config: TenantConfig, product: str, evict: Evict) -> Eviction | None:
    """What the eviction did, said as a warning; one that cannot run is a warning too,
    not a failure: the isolation gate's ``pg.no_refused_sessions`` is the proof."""
    try:
        eviction = evict(config, product)
    except Exception as exc:
        log.warning(
            "%s/%s: could not evict refused roles: %s", config.tenant, product, first_line(exc)
        )
        return None
    if eviction:
        log.warning(
            "%s/%s: roles that may not connect to its database: %s",
            config.tenant,
            product,
            eviction,
        )
    return eviction


def deploy_step(
    config: TenantConfig,
    product: str,
    what: str,
    backend: StackBackend,
    workspace: Workspace,
    *,
    progress: Progress | None = None,
    verify: Callable[[str, str], None] | None = None,
    journal: Journal | None = None,
    evict: Evict | None = None,
) -> None:
    """An update as one step of a day-2 operation on ``product``: the update failing,
    or the service failing its gate, fails the step (``what`` says which); the next
    run of the step retries."""
    status = deploy(
        config,
        backend,
        workspace,
        progress or _no_progress,
        verify,
        journal=journal,
        evict=evict,
    )
    service = status.service(product)
    if status.error or service.state is ServiceState.FAILED:
        reason = status.error or service.reason
        raise OperationFailed(f"{what}: {reason}")


def _starting_state(
    spec: ServiceSpec, previous: TenantConfig | None, tags: dict[str, str]
) -> ServiceState:
    """A service's state while its update runs: a settled one keeps its state."""
    recorded = tags.get(_tag("state", spec.product))
    if spec.removal == "retain" and recorded == ServiceState.RETAINED.value:
        return ServiceState.RETAINED
    if spec.removal is not None:
        return ServiceState.DEPROVISIONING
    if previous is not None and recorded in {s.value for s in SETTLED}:
        return ServiceState(recorded)
    return ServiceState.PROVISIONING


def known_config(workspace: Workspace, tenant: str) -> TenantConfig:
    config = workspace.read_config(tenant)
    if config is None:
        raise InvalidInput(f"unknown tenant {tenant!r}: no {workspace.stack_file(tenant).name}")
    return config


def refuse_inactive(config: TenantConfig, spec: ServiceSpec) -> None:
    """A day-2 operation that needs the service's logins refuses a suspended or
    retained service, before anything changes."""
    if spec.suspended or spec.removal is not None:
        state = "suspended" if spec.suspended else "retained"
        raise InvalidInput(f"service {spec.product!r} of tenant {config.tenant!r} is {state}")


def known_service(config: TenantConfig, product: str) -> ServiceSpec:
    found = config.service(product)
    if found is None:
        raise InvalidInput(f"tenant {config.tenant!r} has no service {product!r}")
    return found


def _targets(config: TenantConfig, products: Sequence[str]) -> list[str]:
    """The named services (all when none are named); an unknown one is refused."""
    registered = [s.product for s in config.services]
    for product in products:
        if product not in registered:
            raise InvalidInput(f"tenant {config.tenant!r} has no service {product!r}")
    return list(products) or [s.product for s in config.services if s.removal is None]


def set_suspended(
    tenant: str,
    products: Sequence[str],
    suspended: bool,
    backend: StackBackend,
    workspace: Workspace,
    progress: Progress = _no_progress,
    verify: Callable[[str, str], None] | None = None,
    close_sessions: Callable[[TenantConfig, Sequence[str]], object] | None = None,
    journal: Journal | None = None,
) -> TenantStatus:
    """Suspend (or resume) services: a config change, then an update of the stack.

    Suspended, a service keeps its data; its PostgreSQL role is NOLOGIN, its RabbitMQ
    user has no permissions and its MongoDB user no roles. The update revokes; then
    ``close_sessions`` ends what was already open. Resuming restores exactly the
    declared state and verifies the service before it is ready again. Running either
    again converges: the update is then a no-op and sessions are closed again.
    """
    config = known_config(workspace, tenant)
    targets = _targets(config, products)
    for spec in config.services:
        if spec.product in targets and spec.removal is not None:
            raise InvalidInput(f"service {spec.product!r} of tenant {tenant!r} is retained")
    changed = config.with_services(
        [
            s.model_copy(update={"suspended": suspended}) if s.product in targets else s
            for s in config.services
        ]
    )
    try:
        status = deploy(
            changed, backend, workspace, progress, None if suspended else verify, journal=journal
        )
    except OperationFailed:
        # The update went through but was not recorded: the logins are refused
        # already, so the open sessions are closed all the same.
        if suspended and close_sessions is not None:
            close_sessions(changed, targets)
        raise
    if suspended and not status.error and close_sessions is not None:
        close_sessions(changed, targets)
    return status


def deregister(
    tenant: str,
    product: str,
    backend: StackBackend,
    workspace: Workspace,
    retain_data: bool = False,
    purge: bool = False,
    progress: Progress = _no_progress,
    journal: Journal | None = None,
    drop_strays: Callable[[TenantConfig, Sequence[str]], object] | None = None,
) -> TenantStatus:
    """Remove one service; the tenant's other services are untouched.

    Retained, the service stays in the stack with its data only (role NOLOGIN, its
    database or schema), every credential gone: ``retained``, and purgeable later.
    Purged, a first update marks it (protection lifted, data only) and a second removes
    it from the stack; killed in between, running it again goes on from the mark.
    """
    if retain_data == purge:
        raise InvalidInput("choose one of --retain-data and --purge")
    config = known_config(workspace, tenant)
    spec = config.service(product)
    if spec is None:
        raise InvalidInput(f"tenant {tenant!r} has no service {product!r}")
    mode: Removal = "retain" if retain_data else "purge"
    marked = config.with_service(spec.model_copy(update={"removal": mode}))
    status = deploy(marked, backend, workspace, progress, journal=journal)
    if status.error or retain_data:
        return status
    if drop_strays is not None:  # what the role left elsewhere, or DROP ROLE fails
        drop_strays(marked, [product])
    remaining = marked.with_services([s for s in marked.services if s.product != product])
    status = deploy(remaining, backend, workspace, progress, journal=journal)
    if not status.error:
        gone = ServiceStatus(product, spec.isolation.value, ServiceState.PURGED)
        _record(backend, tenant, [gone], journal, marked, final=True)
        progress(tenant, gone)
    return status


def check_offboard(
    workspace: Workspace, tenant: str, retain_data: bool, purge: bool
) -> TenantConfig:
    """What an offboarding needs decided, refused before anything (or anyone) is asked."""
    if retain_data and purge:
        raise InvalidInput("choose one of --retain-data and --purge")
    config = known_config(workspace, tenant)
    if config.protect_data and not (retain_data or purge):
        raise InvalidInput(
            f"tenant {tenant!r} holds protected data: pass --retain-data to keep it or "
            "--purge to delete it"
        )
    return config


def offboard(
    tenant: str,
    backend: StackBackend,
    workspace: Workspace,
    retain_data: bool = False,
    purge: bool = False,
    progress: Progress = _no_progress,
    journal: Journal | None = None,
    drop_strays: Callable[[TenantConfig, Sequence[str]], object] | None = None,
) -> list[str]:
    """Retain or purge every service of the tenant. Returns what was retained.

    Protected data is never destroyed implicitly: the caller must say whether it is
    retained (kept, with every credential revoked, in the stack so that a later purge
    can delete it) or purged (the stack destroyed and removed, the stack file too).
    Every step is an update of the stack, so a failed run is resumed by running it again.
    """
    config = check_offboard(workspace, tenant, retain_data, purge)
    mode: Removal = "retain" if retain_data else "purge"
    marked = config.with_services(
        [s.model_copy(update={"removal": mode}) for s in config.services]
    )
    if not backend.exists(tenant):
        if retain_data:
            workspace.write_config(marked)
        else:
            workspace.stack_file(tenant).unlink(missing_ok=True)
        if journal is not None:
            gone = ServiceState.RETAINED if retain_data else ServiceState.PURGED
            journal(
                config,
                tenant,
                [ServiceStatus(s.product, s.isolation.value, gone) for s in config.services],
                tenant_state="deleted",
            )
        return []
    status = deploy(marked, backend, workspace, progress, journal=journal)
    if status.error:
        raise OperationFailed(f"offboarding tenant {tenant!r} failed: {status.error}")
    if retain_data:
        if journal is not None:
            journal(marked, tenant, [], tenant_state="deleted")
        return retained_stores(config)
    with workspace.lock(tenant):
        if drop_strays is not None:  # what the roles left elsewhere, or DROP ROLE fails
            drop_strays(marked, [s.product for s in marked.services])
        with_retries(lambda: backend.destroy(tenant, lambda _e: None))
        backend.remove(tenant)
        if journal is not None:
            purged = [
                ServiceStatus(s.product, s.isolation.value, ServiceState.PURGED)
                for s in config.services
            ]
            journal(marked, tenant, purged, tenant_state="deleted")
        workspace.stack_file(tenant).unlink(missing_ok=True)
    return []


def retained_stores(config: TenantConfig) -> list[str]:
    """What a retention keeps, per store (the role keeps owning it, without login)."""
    catalog = load_catalog()
    kept = [f"{s.product}: PostgreSQL {s.isolation.value.lower()} store" for s in config.services]
    products = [catalog.product(s.product) for s in config.services]
    names = config.names
    if any(p.needs(Store.RABBITMQ) for p in products):
        kept.append(f"RabbitMQ vhost {names.vhost}")
    if any(p.needs(Store.MONGODB) for p in products):
        kept.append(f"MongoDB database {names.mongo_database}")
    return kept


# ----------------------------------------------------------------------- fleets


@dataclass(frozen=True)
class FleetResult:
    tenant: str
    ok: bool
    error: str = ""
    status: TenantStatus | None = None
    preview: PreviewOutcome | None = None


def for_each_tenant(
    tenants: Sequence[str],
    action: Callable[[str], FleetResult],
    concurrency: int,
) -> list[FleetResult]:
    """Run ``action`` per tenant with at most ``concurrency`` at once; failures don't stop others.

    Threads suffice: each tenant's work runs in its own ``pulumi`` process, and each
    tenant has its own work directory, so no workspace state is shared.
    """
    if concurrency < 1:
        raise InvalidInput("--concurrency must be at least 1")

    def guarded(tenant: str) -> FleetResult:
        try:
            return action(tenant)
        except Exception as exc:
            return FleetResult(tenant, False, _clean_reason(str(exc)) or type(exc).__name__)

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(guarded, tenants))
