"""One function per ``tenantctl`` verb: the Python API that the CLI merely parses for.

Onboarding pipelines import these; ``tenant_infra.cli`` turns arguments into calls.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from pydantic import ValidationError

from tenant_infra import lifecycle
from tenant_infra.config import (
    CREDENTIAL_STORES,
    CredentialStore,
    ServiceSpec,
    TenantConfig,
    one_line,
    read_stack_file,
)
from tenant_infra.errors import InvalidInput, OperationFailed
from tenant_infra.lifecycle import (
    EventSink,
    FleetResult,
    Journal,
    Progress,
    ServiceState,
    ServiceStatus,
    StackBackend,
    TenantStatus,
    for_each_tenant,
)
from tenant_infra.project import project_root
from tenant_infra.tenant import validate_product, validate_tenant_id
from tenant_infra.workspace import Workspace, is_tenant_id

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from tenant_infra import plan as offline_plan
    from tenant_infra.api.documents import DocumentSource
    from tenant_infra.api.keys import Scope
    from tenant_infra.backendlocks import Finding
    from tenant_infra.kubernetes.migrate_job import MigrateJob, MigrateJobSpec
    from tenant_infra.operations.backup import BackupResult
    from tenant_infra.operations.promote import PromotionPlan
    from tenant_infra.operations.restore import RestorePlan
    from tenant_infra.operations.rotate import Phase, RotationPlan, RotationResult
    from tenant_infra.operations.steps import Outcome, StepProgress
    from tenant_infra.pgdata.copy import CopyProgress
    from tenant_infra.plandiff import FleetDiff
    from tenant_infra.planset import PlanSet
    from tenant_infra.registry import Registry

#: Stack config keys that describe the platform, not a tenant: safe to borrow from
#: another stack's file when planning a tenant that has none yet.
PLATFORM_KEYS = ("platform",)


def resolve_config(
    tenant: str,
    services: Sequence[str] = (),
    stack_config: Path | None = None,
    root: Path | None = None,
    identity_only: bool = False,
) -> TenantConfig:
    """The tenant's config: its stack file, or the platform of another file plus ``services``.

    Without ``stack_config`` the tenant's own ``stacks/Pulumi.<tenant>.yaml`` is used
    if it exists, else the platform of the stack file the project's
    ``tenant-infra.yaml`` names (``platform:``); without either, it is refused.
    ``services`` (``PRODUCT:MODE``) replace the file's services when given;
    ``identity_only`` allows a new tenant with none (seed 002, stage 1).
    """
    validate_tenant_id(tenant)
    specs = [ServiceSpec.parse(text) for text in services]
    workspace = Workspace(root or project_root())
    path = stack_config or workspace.stack_file(tenant)
    if stack_config is None and not path.is_file():
        default = workspace.default_platform()
        if default is None:
            raise InvalidInput(
                f"tenant {tenant!r} has no stack file ({path.name}): name the platform to "
                "put it on with --platform FILE (a stack file whose platform block it gets),"
                f" or as platform: in {workspace.defaults_file.name}"
            )
        path = default
    values = read_stack_file(path)
    named = values.get("tenant-infra:tenant")
    own = named == tenant
    if not own and path == workspace.stack_file(tenant):
        # The tenant's own file names nobody, or somebody else: the file is wrong.
        raise InvalidInput(f"{str(path)!r}: {_named(named, tenant)}; fix tenant-infra:tenant")
    if not own:
        values = {k: v for k, v in values.items() if k.split(":", 1)[-1] in PLATFORM_KEYS}
        if not specs and not identity_only:
            raise InvalidInput(
                f"{str(path)!r}: {_named(named, tenant)}; to plan {tenant!r} on its platform, "
                "name the services: --service PRODUCT:MODE"
            )
    values["tenant-infra:tenant"] = tenant
    if specs:
        values["tenant-infra:services"] = [s.model_dump(mode="json") for s in specs]
    return TenantConfig.from_pulumi_values(values)


def _scaffold() -> dict[str, str]:
    """What ``tenantctl init`` writes: an operator's project; the package holds the rest.
    Pulumi runs the programs with this interpreter's environment, where the tool is."""
    import sys

    venv = f"  options:\n    virtualenv: {sys.prefix}\n" if sys.prefix != sys.base_prefix else ""
    runtime = f"runtime:\n  name: python\n{venv}"
    return {
        "Pulumi.yaml": (
            "name: tenant-infra\n"
            "description: One stack per tenant (tenant-infra).\n"
            f"{runtime}stackConfigDir: stacks\n"
        ),
        "__main__.py": (
            '"""Entry point for ``pulumi up`` / ``pulumi preview`` on a tenant stack."""\n\n'
            "from tenant_infra.program import tenant_program\n\n"
            "tenant_program()\n"
        ),
        "platform/Pulumi.yaml": (
            "name: tenant-infra-platform\n"
            "description: The shared pieces every tenant stack relies on, applied once.\n"
            f"{runtime}"
        ),
        "platform/__main__.py": (
            '"""Entry point for ``pulumi -C platform up``: shared databases, the Vault mount,\n'
            'the registry."""\n\n'
            "from tenant_infra.program import platform_program\n\n"
            "platform_program()\n"
        ),
        "platform/README.md": (
            "One platform stack file, `Pulumi.<stack>.yaml` (its servers, registry and Vault;\n"
            'see the tenant-infra README, "The registry"); `TENANT_INFRA_PLATFORM_STACK=<stack>`\n'
            "tells tenantctl which one. Then `pulumi -C platform up`.\n"
        ),
        "tenant-infra.yaml": (
            "# platform: a file whose tenant-infra:platform block (the servers' endpoints,\n"
            "# never secrets; as in a tenant's stack file) a tenant without a stack file of\n"
            "# its own is put on. Without it, such a tenant needs --platform FILE. Never a\n"
            "# dev one in production. (Not platform/'s stack files: their block is the\n"
            "# platform program's own.)\n"
            "# platform: platforms/prod.yaml\n"
        ),
        "stacks/README.md": (
            "One stack file per tenant, `Pulumi.<tenant>.yaml`: see the tenant-infra README,\n"
            '"Configuration reference" (`tenantctl onboard TENANT --from FILE` writes one).\n'
        ),
        ".gitignore": ".pulumi-work/\n.pulumi-state/\nbackups/\n",
    }


def init(folder: Path) -> list[Path]:
    """Scaffold an operator's project folder (a new or empty one only); the program,
    the product catalog and the built-in migrations ship in the package."""
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise InvalidInput(f"{folder} is not empty: tenantctl init makes a new project folder")
    written = []
    for name, text in _scaffold().items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def revision(product: str | None, message: str, script_location: Path | None = None) -> Path:
    """A new revision file of ``product``'s script directory (or ``script_location``),
    numbered after the last one (``0004_<slug>.py``), from the directory's template;
    returns its path. The id is sequential, as the products' revisions are."""
    from alembic import command
    from alembic.config import Config

    from tenant_infra.catalog import MIGRATIONS_ROOT, load_catalog
    from tenant_infra.migrate.revisions import declared_head, declared_revisions

    if not message.strip():
        raise InvalidInput("a revision needs a message: -m MESSAGE")
    if script_location is None:
        if product is None:
            raise InvalidInput("name the product (--product P) or --script-location DIR")
        spec = load_catalog().product(validate_product(product))
        if spec.script_location is None:
            raise InvalidInput(f"product {product!r} has no migrations")
        if spec.migrations_root == MIGRATIONS_ROOT and not _in_checkout():
            raise InvalidInput(
                f"product {product!r} is built in: its revisions ship in the package; write "
                "them in a checkout of tenant-infra, or pass --script-location DIR"
            )
        script_location = spec.script_location
        if not (script_location / "versions").is_dir():
            _new_script_directory(script_location)  # a project product's first revision
    if not (script_location / "script.py.mako").is_file():
        raise InvalidInput(f"{script_location} is not an Alembic script directory (no template)")
    numbers = [int(r.revision) for r in declared_revisions(script_location) if r.revision.isdigit()]
    rev_id = f"{max(numbers, default=0) + 1:04d}"
    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    created = command.revision(
        config,
        message=message.strip(),
        rev_id=rev_id,
        head=declared_head(script_location) or "base",
    )
    script = created[0] if isinstance(created, list) else created
    if script is None:
        raise InvalidInput("alembic made no revision")
    return Path(script.path)


def _in_checkout() -> bool:
    """Running from a source checkout (an editable install), not an installed wheel."""
    from tenant_infra.catalog import MIGRATIONS_ROOT

    return (MIGRATIONS_ROOT.parents[1] / "pyproject.toml").is_file()


def _new_script_directory(location: Path) -> None:
    """A project product's Alembic directory, from the built-in products' own files."""
    import shutil

    from tenant_infra.catalog import MIGRATIONS_ROOT

    (location / "versions").mkdir(parents=True, exist_ok=True)
    for name in ("alembic.ini", "env.py", "script.py.mako"):
        if not (location / name).exists():
            shutil.copy(MIGRATIONS_ROOT / "ledger" / name, location / name)


def borrowed_platform(
    tenant: str, stack_config: Path | None = None, root: Path | None = None
) -> Path | None:
    """The stack file whose platform a tenant without one of its own is planned on, and
    from where (``--platform``, or the project's ``tenant-infra.yaml``); ``None`` when
    it has its own."""
    workspace = _workspace(root)
    if stack_config is not None:
        return (
            None
            if stack_config.resolve() == workspace.stack_file(tenant).resolve()
            else stack_config
        )
    if workspace.stack_file(tenant).is_file():
        return None
    return workspace.default_platform()


def _named(found: object, tenant: str) -> str:
    """What a stack file's ``tenant-infra:tenant`` says, against the tenant asked for."""
    if found is None:
        return "it has no tenant-infra:tenant"
    if not isinstance(found, str):
        try:
            validate_tenant_id(found)  # type: ignore[arg-type]
        except InvalidInput as exc:
            return str(exc)
    return f"it is the stack file of tenant {found!r}, not of {tenant!r}"


def plan(
    tenant: str,
    services: Sequence[str] = (),
    stack_config: Path | None = None,
) -> offline_plan.Plan:
    """Every resource the tenant's stack would declare, without the Pulumi CLI, and
    what the fleet would then break (the connection budget of shared servers)."""
    from tenant_infra import budget
    from tenant_infra import plan as offline_plan  # Pulumi: only the verbs that need it

    config = resolve_config(tenant, services, stack_config)
    planned = offline_plan.plan(config)
    if not budget.declared(config):
        return planned
    fleet = [config, *_fleet_configs(_workspace(None), besides=tenant)]
    return dataclasses.replace(planned, problems=tuple(budget.problems(fleet)))


def plan_all(
    *,
    save: Path | None = None,
    workers: int | None = None,
    cache: bool = True,
    root: Path | None = None,
) -> PlanSet:
    """Every tenant with a stack file planned offline, in worker processes (as many as
    ``workers``, default the cores); into ``save``, a plan set that ``plan_diff`` can
    take as its base, when given. A tenant that cannot be planned fails alone."""
    from tenant_infra import plandiff

    return plandiff.plan_checkout(_workspace(root).root, save, workers, cache)


def plan_diff(
    base: str,
    *,
    save: Path | None = None,
    workers: int | None = None,
    cache: bool = True,
    root: Path | None = None,
) -> FleetDiff:
    """What the checkout changes, tenant by tenant, against ``base``: a git ref (its
    program and its stack files) or a saved plan set. Offline: no engine, no
    credentials. ``save`` keeps the checkout's plan set; ``cache`` reuses (and keeps)
    plans made before under the same program, in ``.pulumi-work/plan_cache``."""
    from tenant_infra import plandiff

    return plandiff.diff(base, _workspace(root).root, save, workers, cache)


def _fleet_configs(workspace: Workspace, besides: str) -> Iterator[TenantConfig]:
    """Every other tenant's config that can be read (an unreadable one is its own
    tenant's problem, reported where that tenant is planned)."""
    for other in workspace.tenants():
        if other == besides:
            continue
        try:
            config = workspace.read_config(other)
        except InvalidInput:
            continue
        if config is not None:
            yield config


# ------------------------------------------------------------------ lifecycle verbs


def _workspace(root: Path | None) -> Workspace:
    return Workspace(root or project_root())


def _backend(workspace: Workspace, backend: StackBackend | None) -> StackBackend:
    if backend is not None:
        return backend
    from tenant_infra.automation import PulumiBackend

    return PulumiBackend(workspace.root)


Verifier = Callable[[str, str], None]
#: The default post-deploy gate: ``tenantctl verify`` on real connections.
ISOLATION: Final = "isolation"
Gate = Verifier | Literal["isolation"] | None


def _verifier(
    workspace: Workspace, verify: Gate, backend: StackBackend | None = None
) -> Verifier | None:
    """What runs before a service is marked ready: isolation checks unless told otherwise.

    Documents come from Vault, or from a backend that records them itself (the replay
    backend of the tests, which applies Vault only when ``VAULT_ADDR`` is set).
    """
    if verify != ISOLATION:
        return verify
    from tenant_infra.verify.command import require_verified

    recorded = getattr(backend, "document", None)
    environ = _operator_environ(backend)

    def check(tenant: str, product: str) -> None:
        connections = [recorded(tenant, product)] if recorded is not None else []
        require_verified(
            tenant,
            product,
            stack_config=workspace.stack_file(tenant),
            connections=connections,
            environ=environ,
            root=workspace.root,
        )

    return check


def _evictor(backend: StackBackend) -> lifecycle.Evict:
    """What evicts, after an update, the roles a new dedicated database let in before
    its privileges were set (with the operator's admin credentials)."""
    from tenant_infra.sessions import evict_refused

    environ = _operator_environ(backend)
    return lambda config, product: evict_refused(config, product, environ)


def registry(workspace: Workspace, backend: StackBackend | None = None) -> Registry:
    """The platform's registry, reached and migrated: a lifecycle verb that cannot
    record what it does refuses to start (one line, before anything is created)."""
    from tenant_infra.registry import Registry

    return Registry.from_platform(workspace.root, _operator_environ(backend)).open()


def _journal(
    workspace: Workspace, backend: StackBackend, operation: str, whole_tenant: bool = True
) -> Journal:
    return registry(workspace, backend).journal(operation, whole_tenant)


def _operator_environ(backend: StackBackend | None) -> Mapping[str, str] | None:
    """The environment holding the platform's admin credentials: the backend's own
    when it keeps one (the replay backend's defaults), else the process's."""
    return getattr(backend, "environ", None)


def onboard(
    tenant: str,
    services: Sequence[str] = (),
    stack_config: Path | None = None,
    *,
    backend: StackBackend | None = None,
    root: Path | None = None,
    progress: Progress | None = None,
    verify: Gate = ISOLATION,
    events: EventSink | None = None,
    metadata: Mapping[str, str] | None = None,
    operation: str = "onboard",
) -> TenantStatus:
    """Create or update the tenant's stack with ``services`` added; returns each state.

    An existing tenant keeps its services and their data: only what is new is
    provisioned. ``stack_config`` supplies the platform (and services) for a new tenant;
    without services, the tenant exists as an identity with its ``metadata`` and no
    infrastructure, and ``register`` adds services later.
    Each service is verified (``tenantctl verify``) before it is marked ready, unless
    ``verify`` is another check or ``None``.
    """
    workspace = _workspace(root)
    validate_tenant_id(tenant)
    requested = [ServiceSpec.parse(text) for text in services]
    existing = workspace.read_config(tenant)
    own = workspace.stack_file(tenant).resolve()
    if existing is not None and stack_config is not None and stack_config.resolve() != own:
        # An onboarded tenant's config is its stack file: another file names a new
        # tenant's platform, and never silently swaps its tier, limits or endpoints.
        borrowed = resolve_config(tenant, (), stack_config, workspace.root, identity_only=True)
        if borrowed.platform != existing.platform:
            raise InvalidInput(
                f"tenant {tenant!r} is onboarded on another platform than {stack_config}'s: "
                f"edit {own.name} to move it"
            )
        stack_config = None
    if existing is not None and stack_config is None:
        base = existing
    else:
        base = resolve_config(tenant, services, stack_config, workspace.root, identity_only=True)
    config = base.with_services(lifecycle.merge_services(existing, requested or base.services))
    if metadata:
        try:
            config = TenantConfig.model_validate(
                config.model_dump() | {"metadata": {**config.metadata, **metadata}}
            )
        except ValidationError as exc:
            raise InvalidInput(one_line(exc, "--metadata")) from None
    # Input first (exit 2), then the Pulumi CLI (without it nothing below can be done).
    stacks = _backend(workspace, backend)
    reached = registry(workspace, stacks)
    other = reached.same_tenant(tenant)
    if other is not None:
        raise InvalidInput(
            f"tenant {tenant!r} is tenant {other!r} spelled otherwise (one UUID): use {other!r}"
        )
    journal = reached.journal(operation)
    gate = _verifier(workspace, verify, stacks)
    return lifecycle.deploy(
        config,
        stacks,
        workspace,
        progress or _quiet,
        gate,
        events,
        journal,
        evict=_evictor(stacks),
    )


def register(
    tenant: str,
    services: Sequence[str],
    *,
    backend: StackBackend | None = None,
    root: Path | None = None,
    progress: Progress | None = None,
    verify: Gate = ISOLATION,
    events: EventSink | None = None,
) -> TenantStatus:
    """Register more services on an existing tenant; its existing resources are untouched."""
    workspace = _workspace(root)
    if workspace.read_config(validate_tenant_id(tenant)) is None:
        raise InvalidInput(f"unknown tenant {tenant!r}: onboard it first")
    if not services:
        raise InvalidInput("register needs at least one --service PRODUCT:MODE")
    return onboard(
        tenant,
        services,
        backend=backend,
        root=root,
        progress=progress,
        verify=verify,
        events=events,
        operation="register",
    )


def _read_registry(workspace: Workspace, backend: StackBackend | None) -> Registry:
    """The registry for reading: reached, not migrated (reads never change it)."""
    from tenant_infra.registry import Registry

    return Registry.from_platform(workspace.root, _operator_environ(backend))


def _recorded(row: Mapping[str, Any], workspace: Workspace) -> TenantStatus:
    """A registry row as a status; an in-flight state nobody holds the tenant's lock
    for was interrupted (the run was killed): it reads as failed."""
    services = []
    for s in row["services"]:
        state, reason = ServiceState(s["state"]), str(s["reason"] or "")
        if state in lifecycle.IN_FLIGHT and not workspace.is_locked(str(row["tenant"])):
            state, reason = ServiceState.FAILED, f"interrupted while {state.value}; run it again"
        services.append(
            ServiceStatus(str(s["product"]), str(s["isolation"]), state, reason, s["revision"])
        )
    return TenantStatus(str(row["tenant"]), services, state=str(row["state"]))


def status(
    tenant: str,
    *,
    refresh: bool = False,
    backend: StackBackend | None = None,
    root: Path | None = None,
) -> TenantStatus:
    """The tenant's services, isolation modes, states and revisions, from the registry.

    ``refresh`` also reads the stack (the truth for resources) and reports where the
    two disagree as ``drift``; no deployment runs either way.
    """
    workspace = _workspace(root)
    validate_tenant_id(tenant)
    row = _read_registry(workspace, backend).tenant(tenant)
    if row is None:
        raise InvalidInput(f"unknown tenant {tenant!r}: not in the registry")
    recorded = _recorded(row, workspace)
    if refresh:
        if workspace.read_config(tenant) is None:
            if recorded.state != "deleted":
                recorded.drift = ["the registry has the tenant, but there is no stack file"]
            return recorded
        stack = lifecycle.read_status(_backend(workspace, backend), workspace, tenant)
        recorded.drift = lifecycle.drift(stack, recorded)
    return recorded


def list_tenants(
    *,
    state: str | None = None,
    product: str | None = None,
    backend: StackBackend | None = None,
    root: Path | None = None,
) -> Iterator[TenantStatus]:
    """Every tenant in the registry (one query, streamed), optionally only those with a
    tenant or service in ``state``, or a service of ``product``."""
    known = {s.value for s in ServiceState} | {"active", "deleted"}
    if state is not None and state not in known:
        raise InvalidInput(f"--state must be one of {', '.join(sorted(known))}, not {state!r}")
    workspace = _workspace(root)
    if state == ServiceState.FAILED.value:
        # Interrupted runs read as failed but are recorded in flight: filter here.
        rows = _read_registry(workspace, backend).tenants(product=product)
        return (
            status
            for status in (_recorded(row, workspace) for row in rows)
            if any(s.state is ServiceState.FAILED for s in status.services)
        )
    rows = _read_registry(workspace, backend).tenants(state=state, product=product)
    return (_recorded(row, workspace) for row in rows)


def drain_events(
    *, backend: StackBackend | None = None, root: Path | None = None
) -> tuple[int, int]:
    """Publish the events still waiting in the outbox (after a Redis outage, without
    waiting for the next operation); returns (published now, still waiting)."""
    reached = registry(_workspace(root), backend)  # opening drains once already
    published = reached.drain()
    return published, reached.pending_events()


def history(
    tenant: str, *, backend: StackBackend | None = None, root: Path | None = None
) -> list[dict[str, Any]]:
    """Every recorded transition of the tenant, oldest first."""
    workspace = _workspace(root)
    validate_tenant_id(tenant)
    return _read_registry(workspace, backend).history(tenant)


# ------------------------------------------------------------ the state backend's locks


def backend_locks(
    tenants: Iterable[str],
    *,
    stale_after: timedelta | None = None,
    root: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[Finding]:
    """The locks of these tenants' stacks that outlived their process, or cannot be
    read (``tenantctl status``): one folder listing per stack on ``file://``, one query
    on ``postgres://``, never a listing of the backend's stacks (it would download
    every stack's state). Raises :class:`~tenant_infra.backendlocks.
    LockInspectionUnavailable` for a backend whose locks only the CLI reads."""
    from tenant_infra import backendlocks
    from tenant_infra.automation import PROJECT

    workspace = _workspace(root)
    env = os.environ if environ is None else environ
    store = backendlocks.open_store(backendlocks.backend_url(workspace.root, env), PROJECT)
    limit = stale_after or backendlocks.DEFAULT_STALE_AFTER
    try:
        found = backendlocks.inspect(store, list(tenants), stale_after=limit)
        return [f for f in found if f.verdict is not backendlocks.Verdict.LIVE]
    finally:
        store.close()


def unlock(
    tenant: str,
    *,
    force: bool = False,
    stale_after: timedelta | None = None,
    confirm: Callable[[Sequence[Finding]], bool] | None = None,
    root: Path | None = None,
    environ: Mapping[str, str] | None = None,
    judging: Mapping[str, Any] | None = None,
) -> list[Finding]:
    """Clear the backend locks of the tenant's stack, once sure no update runs.

    The tenant's own lock is held throughout (no ``tenantctl`` operation can start, or
    is running); each backend lock must have lost its process (this host), or be older
    than ``stale_after`` with ``force`` (another host: its process cannot be asked).
    Anything else refuses in one line, and nothing is removed. ``confirm`` sees what
    would go (``False``: nothing does). The clearing is recorded in the registry when
    one is configured. Returns what was removed. ``judging`` is for tests
    (``hostname``, ``alive``, ``now``).
    """
    from tenant_infra import backendlocks
    from tenant_infra.automation import PROJECT
    from tenant_infra.registry.store import PLATFORM_STACK_ENV, Registry

    workspace = _workspace(root)
    validate_tenant_id(tenant)
    if not workspace.stack_file(tenant).is_file():
        raise InvalidInput(f"unknown tenant {tenant!r}: no stack file")
    env = os.environ if environ is None else environ
    limit = stale_after or backendlocks.DEFAULT_STALE_AFTER
    store = backendlocks.open_store(backendlocks.backend_url(workspace.root, env), PROJECT)
    try:
        with workspace.lock(tenant):
            findings = list(
                backendlocks.inspect(store, [tenant], stale_after=limit, **(judging or {}))
            )
            for finding in findings:
                backendlocks.check_removable(finding, force=force, stale_after=limit)
            if not findings:
                return []
            # Reached before anything is removed: what cannot be recorded is not done.
            recorder = (
                Registry.from_platform(workspace.root, env).open()
                if env.get(PLATFORM_STACK_ENV)
                else None
            )
            if confirm is not None and not confirm(findings):
                return []
            removed: list[Finding] = []
            try:
                for finding in findings:
                    try:
                        store.remove(finding.lock)
                    except (OSError, OperationFailed) as exc:
                        what = (
                            str(exc)
                            if isinstance(exc, OperationFailed)
                            else f"{finding.lock.where} cannot be removed: {exc.strerror or exc}"
                        )
                        done = f"; {len(removed)} other lock(s) removed first" if removed else ""
                        raise OperationFailed(f"tenant {tenant!r}: {what}{done}") from None
                    removed.append(finding)
            finally:
                # What was removed is recorded, even when a later lock could not be.
                if recorder is not None and removed:
                    recorder.record_unlock(
                        tenant, "; ".join(backendlocks.describe(f) for f in removed)
                    )
            return removed
    finally:
        store.close()


def render_migrate_job(
    spec: MigrateJobSpec, *, backend: StackBackend | None = None, root: Path | None = None
) -> MigrateJob:
    """A fleet migration of ``spec.product`` as an Indexed Job, with its targets snapshot
    taken from the registry now (README "The migration Job"). Reads only: the registry
    is reached, never migrated, and nothing is applied to a cluster."""
    from tenant_infra.catalog import load_catalog
    from tenant_infra.kubernetes.migrate_job import render_migrate_job as render
    from tenant_infra.migrate.snapshot import from_registry

    validate_product(spec.product)
    if load_catalog().product(spec.product).script_location is None:
        raise InvalidInput(f"product {spec.product!r} has no migrations")
    rows = _read_registry(_workspace(root), backend).tenants(product=spec.product)
    return render(spec, from_registry(rows, spec.product))


def check_offboard(
    tenant: str, *, retain_data: bool = False, purge: bool = False, root: Path | None = None
) -> None:
    """Refuse an offboarding that cannot go on (bad id, unknown tenant, protected data
    with no decision) before the Pulumi CLI is looked for, or a question asked."""
    validate_tenant_id(tenant)
    lifecycle.check_offboard(_workspace(root), tenant, retain_data, purge)


def offboard(
    tenant: str,
    *,
    retain_data: bool = False,
    purge: bool = False,
    backend: StackBackend | None = None,
    root: Path | None = None,
) -> list[str]:
    """Destroy the tenant's resources and remove its stack; returns what was retained."""
    workspace = _workspace(root)
    check_offboard(tenant, retain_data=retain_data, purge=purge, root=root)
    stacks = _backend(workspace, backend)
    from tenant_infra.sessions import drop_strays

    journal = _journal(workspace, stacks, "offboard")
    return lifecycle.offboard(
        tenant,
        stacks,
        workspace,
        retain_data,
        purge,
        journal=journal,
        drop_strays=partial(drop_strays, environ=_operator_environ(stacks)),
    )


def _known_services(tenant: str, services: Sequence[str], root: Path | None) -> Workspace:
    """The tenant and its named services exist: refused before the Pulumi CLI is looked
    for, so bad input is named as such."""
    validate_tenant_id(tenant)
    workspace = _workspace(root)
    config = lifecycle.known_config(workspace, tenant)
    for product in services:
        lifecycle.known_service(config, validate_product(product))
    return workspace


def suspend(
    tenant: str,
    services: Sequence[str] = (),
    *,
    backend: StackBackend | None = None,
    root: Path | None = None,
    progress: Progress | None = None,
) -> TenantStatus:
    """Suspend the tenant's services (all, or those named): data kept, every login
    refused and every open session closed."""
    from tenant_infra.sessions import close_sessions

    workspace = _known_services(tenant, services, root)
    stacks = _backend(workspace, backend)
    return lifecycle.set_suspended(
        tenant,
        services,
        True,
        stacks,
        workspace,
        progress or _quiet,
        close_sessions=partial(close_sessions, environ=_operator_environ(stacks)),
        journal=_journal(workspace, stacks, "suspend", whole_tenant=not services),
    )


def resume(
    tenant: str,
    services: Sequence[str] = (),
    *,
    backend: StackBackend | None = None,
    root: Path | None = None,
    progress: Progress | None = None,
    verify: Gate = ISOLATION,
) -> TenantStatus:
    """Resume suspended services: exactly what was declared before, verified again."""
    workspace = _known_services(tenant, services, root)
    stacks = _backend(workspace, backend)
    return lifecycle.set_suspended(
        tenant,
        services,
        False,
        stacks,
        workspace,
        progress or _quiet,
        verify=_verifier(workspace, verify, stacks),
        journal=_journal(workspace, stacks, "resume", whole_tenant=not services),
    )


def deregister(
    tenant: str,
    service: str,
    *,
    retain_data: bool = False,
    purge: bool = False,
    backend: StackBackend | None = None,
    root: Path | None = None,
    progress: Progress | None = None,
) -> TenantStatus:
    """Remove one service of the tenant, keeping (``retain_data``) or deleting its data."""
    from tenant_infra.sessions import drop_strays

    if retain_data == purge:
        raise InvalidInput("choose one of --retain-data and --purge")
    workspace = _known_services(tenant, [service], root)
    stacks = _backend(workspace, backend)
    return lifecycle.deregister(
        tenant,
        service,
        stacks,
        workspace,
        retain_data,
        purge,
        progress or _quiet,
        journal=_journal(workspace, stacks, "deregister", whole_tenant=False),
        drop_strays=partial(drop_strays, environ=_operator_environ(stacks)),
    )


def parse_duration(text: str) -> timedelta:
    """``90s``, ``30m``, ``24h`` or ``7d`` (one number, one unit) as a duration."""
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
    number, unit = text[:-1], text[-1:]
    if not (number.isdigit() and unit in units and len(number) <= 6):
        raise InvalidInput(f"duration {text[:20]!r} must be a number and one of s, m, h, d (24h)")
    return timedelta(**{units[unit]: int(number)})


def promote(
    tenant: str,
    product: str,
    *,
    dry_run: bool = False,
    resume: bool = False,
    abort: bool = False,
    keep_source: timedelta | None = None,
    drop_source: bool = False,
    backend: StackBackend | None = None,
    root: Path | None = None,
    progress: Progress | None = None,
    step_progress: StepProgress | None = None,
    copy_progress: CopyProgress | None = None,
    verify: Gate = ISOLATION,
    after_copy: Callable[[], None] | None = None,
) -> PromotionPlan | Outcome:
    """Promote a service from SCHEMA to DATABASE mode (see :mod:`tenant_infra.operations.
    promote`); ``dry_run`` returns the plan and changes nothing, otherwise the outcome.

    ``resume`` goes on with an interrupted promotion (or one waiting to drop its
    retired schema); ``abort`` goes back to SCHEMA mode before the source is retired.
    """
    from tenant_infra.operations.promote import DEFAULT_KEEP_SOURCE, Promoter, preview

    validate_tenant_id(tenant)
    validate_product(product)
    if sum((dry_run, resume, abort)) > 1:
        raise InvalidInput("choose one of --dry-run, --resume and --abort")
    if keep_source is not None and drop_source:
        raise InvalidInput("choose one of --keep-source and --drop-source")
    if abort and (keep_source is not None or drop_source):
        raise InvalidInput("--abort keeps the source: --keep-source and --drop-source do not apply")
    workspace = _workspace(root)
    if lifecycle.known_config(workspace, tenant).service(product) is None:
        raise InvalidInput(f"tenant {tenant!r} has no service {product!r}")
    stacks = _backend(workspace, backend)
    promoter = Promoter(
        tenant,
        product,
        stacks,
        workspace,
        registry(workspace, stacks),
        _operator_environ(stacks) or os.environ,
        keep_source=DEFAULT_KEEP_SOURCE if keep_source is None else keep_source,
        drop_source=drop_source,
        progress=progress,
        verify=_verifier(workspace, verify, stacks),
        copy_progress=copy_progress,
        after_copy=after_copy,
    )
    if dry_run:
        return preview(promoter)
    return promoter.run(resume=resume, abort=abort, step_progress=step_progress or _no_steps)


def rotate(
    tenants: Sequence[str] = (),
    *,
    all_tenants: bool = False,
    product: str | None = None,
    stores: Sequence[str] = (),
    phase: Phase = "begin",
    grace: float = 0.0,
    drain: float | None = None,
    dry_run: bool = False,
    concurrency: int = 1,
    backend: StackBackend | None = None,
    root: Path | None = None,
    progress: Progress | None = None,
    step_progress: StepProgress | None = None,
    verify: Gate = ISOLATION,
) -> list[RotationResult] | list[RotationPlan]:
    """Rotate the credentials of one service (``product``) of each tenant, in two
    phases (see :mod:`tenant_infra.operations.rotate`): ``phase`` ``begin`` stops with
    both credentials valid, ``finish`` revokes the old one, ``auto`` does both,
    waiting at most ``grace`` seconds for the old sessions to end. A service with an
    open rotation goes on with it. With ``all_tenants``, every tenant using
    ``product``, ``concurrency`` at once; one failure stops no other."""
    from tenant_infra.operations.rotate import (
        DEFAULT_DRAIN_SECONDS,
        Rotator,
        preview,
        rotate_fleet,
    )

    if phase not in ("begin", "finish", "auto"):
        raise InvalidInput(f"unknown rotation phase {phase!r} (begin, finish or auto)")
    if concurrency < 1:
        raise InvalidInput("--concurrency must be at least 1")
    if grace < 0 or (drain is not None and drain < 0):
        raise InvalidInput("--auto and --drain take a number of seconds, at least 0")
    chosen_stores = _credential_stores(stores)
    workspace = _workspace(root)
    targets: list[tuple[str, str]] = []
    for tenant in _fleet(tenants, all_tenants, workspace):
        try:
            services = [s.product for s in lifecycle.known_config(workspace, tenant).services]
        except InvalidInput:
            if not all_tenants:
                raise
            targets.append((tenant, product or "?"))  # fails alone, with its reason
            continue
        if product is None:
            if len(services) != 1:
                raise InvalidInput(
                    f"tenant {tenant!r} has {len(services)} services: name one with --service"
                )
            targets.append((tenant, services[0]))
        elif product in services:
            targets.append((tenant, product))
        elif not all_tenants:
            raise InvalidInput(f"tenant {tenant!r} has no service {product!r}")
    if all_tenants and product is None:
        raise InvalidInput("--all rotates one product's services: name it with --service")
    if not targets:
        raise InvalidInput(f"no tenant has a service {product!r}")
    stacks = _backend(workspace, backend)
    store, environ = registry(workspace, stacks), _operator_environ(stacks) or os.environ
    gate = _verifier(workspace, verify, stacks)

    def make(tenant: str, service: str) -> Callable[[], Rotator]:
        return lambda: Rotator(
            tenant,
            validate_product(service),
            stacks,
            workspace,
            store,
            environ,
            stores=chosen_stores,
            phase=phase,
            grace=grace,
            drain=DEFAULT_DRAIN_SECONDS if drain is None else drain,
            progress=progress,
            verify=gate,
        )

    if dry_run:
        return [preview(make(t, p)()) for t, p in targets]
    jobs = [(t, make(t, p)) for t, p in targets]
    if len(jobs) == 1 and not all_tenants:
        return [jobs[0][1]().run(step_progress or _no_steps)]
    return rotate_fleet(jobs, concurrency, step_progress or _no_steps)


def _credential_stores(stores: Sequence[str]) -> tuple[CredentialStore, ...]:
    """``--store`` values (``all``, or none, is every store)."""
    if not stores or "all" in stores:
        return CREDENTIAL_STORES
    unknown = [s for s in stores if s not in CREDENTIAL_STORES]
    if unknown:
        raise InvalidInput(
            f"unknown store {unknown[0]!r} (known: {', '.join(CREDENTIAL_STORES)}, all)"
        )
    return tuple(s for s in CREDENTIAL_STORES if s in stores)


#: Where sets go without ``--to``: ``$TENANT_INFRA_BACKUP_DIR``, else ``backups/``.
BACKUP_DIR_VARIABLE: Final = "TENANT_INFRA_BACKUP_DIR"


def _backup_root(workspace: Workspace, to: Path | None) -> Path:
    if to is not None:
        return to
    configured = os.environ.get(BACKUP_DIR_VARIABLE)
    return Path(configured) if configured else workspace.root / "backups"


def backup(
    tenants: Sequence[str] = (),
    *,
    all_tenants: bool = False,
    product: str | None = None,
    to: Path | None = None,
    concurrency: int = 1,
    backend: StackBackend | None = None,
    root: Path | None = None,
    step_progress: StepProgress | None = None,
) -> list[BackupResult]:
    """Back up every service (or ``product``) of the tenants, ``concurrency`` at once:
    one set each (see :mod:`tenant_infra.operations.backup`); a failure is reported
    with its service and never stops the others."""
    from tenant_infra.operations.backup import Backup, BackupResult, back_up_fleet
    from tenant_infra.operations.backupset import LocalDirectory

    if product is not None:
        validate_product(product)
    if concurrency < 1:
        raise InvalidInput("--concurrency must be at least 1")
    workspace = _workspace(root)
    services: list[tuple[str, str]] = []
    unreadable: list[BackupResult] = []
    for tenant in _fleet(tenants, all_tenants, workspace):
        try:
            products = [s.product for s in lifecycle.known_config(workspace, tenant).services]
        except InvalidInput as exc:
            if not all_tenants:
                raise
            # One tenant's broken stack file fails that tenant alone.
            unreadable.append(BackupResult(tenant, product or "*", "failed", error=str(exc)))
            continue
        if product is not None:
            if product not in products and not all_tenants:
                raise InvalidInput(f"tenant {tenant!r} has no service {product!r}")
            products = [p for p in products if p == product]
        services += [(tenant, p) for p in products]
    if not services and not unreadable:
        raise InvalidInput("no service to back up")
    stacks = _backend(workspace, backend)
    storage = LocalDirectory(_backup_root(workspace, to))
    environ = _operator_environ(stacks) or os.environ
    store = registry(workspace, stacks)
    jobs = [partial(Backup, t, p, workspace, store, storage, environ) for t, p in services]
    return unreadable + back_up_fleet(jobs, concurrency, step_progress or _no_steps)


def restore(
    tenant: str,
    product: str,
    *,
    source: str | None = None,
    swap: bool = False,
    aside: bool = False,
    dry_run: bool = False,
    resume: bool = False,
    abort: bool = False,
    drop_previous: bool = False,
    point_in_time: str | None = None,
    backups: Path | None = None,
    backend: StackBackend | None = None,
    root: Path | None = None,
    progress: Progress | None = None,
    step_progress: StepProgress | None = None,
    copy_progress: CopyProgress | None = None,
) -> RestorePlan | Outcome:
    """Restore a service from a backup set (see :mod:`tenant_infra.operations.restore`):
    aside, verified, then swapped with ``swap`` (``aside``: stop after verifying).
    ``source`` is a set's directory, or ``latest`` (the newest set of the service
    under ``backups``). ``drop_previous`` drops the data a swap kept aside."""
    from tenant_infra.operations.backupset import LocalDirectory, read_manifest
    from tenant_infra.operations.restore import Restorer, preview

    validate_tenant_id(tenant)
    validate_product(product)
    if point_in_time is not None:
        raise InvalidInput(
            "--point-in-time needs archived WAL and a cluster-level recovery, which no "
            "platform server declares here; restore a backup set with --from SET"
        )
    if swap and aside:
        raise InvalidInput("choose one of --swap and --aside")
    if sum((dry_run, resume, abort, drop_previous)) > 1:
        raise InvalidInput("choose one of --dry-run, --resume, --abort and --drop-previous")
    if (abort or drop_previous) and (swap or aside or source):
        raise InvalidInput("--abort and --drop-previous take no --from, --swap or --aside")
    if not (resume or abort or drop_previous) and source is None:
        raise InvalidInput("name the backup set to restore: --from SET (or --from latest)")
    if resume and source is not None:
        raise InvalidInput("--resume goes on with the set it started from: no --from")
    workspace = _workspace(root)
    if lifecycle.known_config(workspace, tenant).service(product) is None:
        raise InvalidInput(f"tenant {tenant!r} has no service {product!r}")
    storage = LocalDirectory(_backup_root(workspace, backups))
    if source == "latest":
        sets = storage.sets(tenant, product)
        if not sets:
            raise InvalidInput(f"no backup set of {tenant}/{product} under {storage.root}")
        source = sets[-1]
    if source is not None:
        read_manifest(storage.fetch(source), tenant, product)
    stacks = _backend(workspace, backend)
    restorer = Restorer(
        tenant,
        product,
        stacks,
        workspace,
        registry(workspace, stacks),
        storage,
        _operator_environ(stacks) or os.environ,
        reference=source,
        swap=swap,
        progress=progress,
        copy_progress=copy_progress,
    )
    if dry_run:
        return preview(restorer)
    steps = step_progress or _no_steps
    if drop_previous:
        return restorer.run_drop_previous(steps)
    return restorer.run(resume=resume, abort=abort, step_progress=steps)


def _no_steps(_step: str, _event: str) -> None:
    return None


def _fleet(tenants: Sequence[str], all_tenants: bool, workspace: Workspace) -> list[str]:
    if all_tenants and tenants:
        raise InvalidInput("name tenants or pass --all, not both")
    chosen = workspace.tenants() if all_tenants else [validate_tenant_id(t) for t in tenants]
    if not chosen:
        raise InvalidInput("no tenant selected: name tenants or pass --all")
    if all_tenants:
        return chosen  # each has a file; one that is invalid fails its own tenant only
    unknown = [t for t in chosen if workspace.read_config(t) is None]
    if unknown:
        raise InvalidInput(f"unknown tenant {unknown[0]!r}: no stack file")
    return chosen


def preview(
    tenants: Sequence[str] = (),
    *,
    all_tenants: bool = False,
    concurrency: int = 4,
    backend: StackBackend | None = None,
    root: Path | None = None,
) -> list[FleetResult]:
    """Preview many tenant stacks with bounded concurrency (for pull-request summaries)."""
    workspace = _workspace(root)
    chosen = _fleet(tenants, all_tenants, workspace)
    stacks = _backend(workspace, backend)

    def one(tenant: str) -> FleetResult:
        outcome = stacks.preview(tenant, lambda _event: None)
        return FleetResult(tenant, True, preview=outcome)

    return for_each_tenant(chosen, one, concurrency)


def up(
    tenants: Sequence[str] = (),
    *,
    all_tenants: bool = False,
    concurrency: int = 2,
    backend: StackBackend | None = None,
    root: Path | None = None,
    progress: Progress | None = None,
    verify: Gate = ISOLATION,
) -> list[FleetResult]:
    """Apply the current program and config to many tenant stacks; failures don't stop others."""
    workspace = _workspace(root)
    chosen = _fleet(tenants, all_tenants, workspace)
    stacks = _backend(workspace, backend)
    gate = _verifier(workspace, verify, stacks)
    evict = _evictor(stacks)
    journal = _journal(workspace, stacks, "up")

    def one(tenant: str) -> FleetResult:
        config = workspace.read_config(tenant)
        assert config is not None
        result = lifecycle.deploy(
            config, stacks, workspace, progress or _quiet, gate, journal=journal, evict=evict
        )
        failed = [s for s in result.services if s.state != ServiceState.READY]
        error = result.error or "; ".join(f"{s.product}: {s.reason}" for s in failed)
        return FleetResult(tenant, result.ok, error, status=result)

    return for_each_tenant(chosen, one, concurrency)


def _quiet(_tenant: str, _status: ServiceStatus) -> None:
    return None


# ------------------------------------------------------------ the multi-tenancy API


def api(
    *,
    documents: DocumentSource | None = None,
    writes: bool = False,
    platform: Path | None = None,
    backend: StackBackend | None = None,
    root: Path | None = None,
    verify: Gate = ISOLATION,
) -> Starlette:
    """The seed platform's multi-tenancy API over the registry (``tenantctl serve``).

    It reads the registry as its read-only role (``TENANT_INFRA_REGISTRY_READER_
    PASSWORD``) and credentials from ``documents``, else the operator's Vault.
    ``writes`` mounts the write calls, which run the commands above (and so need what
    they need: the registry's control-plane role, the platform's credentials); a new
    tenant's platform comes from the stack file ``platform``, never a borrowed one.
    """
    from tenant_infra.api.app import Api, create_app
    from tenant_infra.api.documents import VaultDocuments
    from tenant_infra.api.reader import RegistryReader
    from tenant_infra.api.writes import Writes
    from tenant_infra.migrate.revisions import declared_head
    from tenant_infra.registry.store import SCRIPT_LOCATION
    from tenant_infra.vaultclient import operator_vault

    workspace = _workspace(root)
    environ = _operator_environ(backend)
    env = os.environ if environ is None else environ
    found = _read_registry(workspace, backend)
    # Everything below reads as the registry's read-only role, never as the writer.
    found = dataclasses.replace(
        found,
        settings=found.settings.model_copy(update={"user": found.settings.reader}),
        password=env.get("TENANT_INFRA_REGISTRY_READER_PASSWORD"),
        owner_password=None,
    )
    head, current = declared_head(SCRIPT_LOCATION), found.revision()
    if current != head:
        raise InvalidInput(
            f"the registry is at {current or 'nothing'}, the API needs {head}: run any "
            "lifecycle verb (or tenantctl drain-events) once to migrate it"
        )
    if documents is None:
        vault = operator_vault(environ, root=workspace.root)
        if vault is None:
            raise InvalidInput(
                "no credential source: set VAULT_ADDR and VAULT_TOKEN (a token that reads "
                "<kvMount>/data/tenants/*), or pass --connections -"
            )
        documents = VaultDocuments(vault)
    reader = RegistryReader(found.params())
    mounted = (
        Writes(reader, root=workspace.root, backend=backend, verify=verify, platform=platform)
        if writes
        else None
    )
    return create_app(Api(reader, documents, mounted))


def serve(
    listen: str,
    *,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    documents: DocumentSource | None = None,
    writes: bool = False,
    platform: Path | None = None,
    access_log: bool = True,
    backend: StackBackend | None = None,
    root: Path | None = None,
) -> None:
    """Serve :func:`api` on ``listen`` (``HOST:PORT``): plain HTTP on loopback only."""
    from tenant_infra.api import server

    where = server.listen(listen, tls_cert, tls_key)
    if platform is not None and not platform.is_file():
        raise InvalidInput(f"--platform {platform}: no such stack file")
    app = api(documents=documents, writes=writes, platform=platform, backend=backend, root=root)
    server.run(app, where, access_log)


def create_api_key(
    scope: Scope,
    product: str | None = None,
    *,
    note: str = "",
    backend: StackBackend | None = None,
    root: Path | None = None,
) -> str:
    """A new API key (returned once; only its hash is stored): a product's, or an
    operator's for the write calls."""
    from tenant_infra.api import keys

    return keys.create(registry(_workspace(root), backend), scope, product, note)


def api_keys(
    *, backend: StackBackend | None = None, root: Path | None = None
) -> list[dict[str, Any]]:
    """Every API key: id, scope, product, note, made and revoked by whom and when."""
    from tenant_infra.api import keys

    return keys.listed(_read_registry(_workspace(root), backend))


def revoke_api_key(
    key: str, *, backend: StackBackend | None = None, root: Path | None = None
) -> None:
    """Revoke an API key by its id: the API refuses it from its next request on."""
    from tenant_infra.api import keys

    keys.revoke(registry(_workspace(root), backend), key)


# ------------------------------------------------------------------ render kubernetes


@dataclasses.dataclass(frozen=True)
class KubernetesRender:
    """What ``render kubernetes`` did: the files written (or, to stdout, the text), each
    tenant's wave, and the tenants that failed with their one-line reason."""

    written: list[Path]
    text: str | None
    waves: dict[str, int]
    failed: dict[str, str]

    @property
    def ok(self) -> bool:
        return not self.failed


def render_kubernetes(
    tenants: Sequence[str] = (),
    *,
    all_tenants: bool = False,
    image: str,
    backend: str,
    secrets_provider: str,
    namespace: str,
    service_account: str | None = None,
    wave_size: int | None = None,
    out: Path | None = Path("k8s"),
    root: Path | None = None,
    workers: int | None = None,
) -> KubernetesRender:
    """One ConfigMap and one operator ``Stack`` per tenant, a file each in ``out``
    (``None``: returned as text). A tenant whose stack file is invalid fails alone.

    Arguments that concern the whole fleet (image, backend, namespace...) are checked
    first: a wrong one fails the call before anything is written. ``workers``: processes
    for a large fleet (default: this machine's cores).
    """
    from tenant_infra.kubernetes import stacks

    target = stacks.Target(
        image=image,
        backend=backend,
        secrets_provider=secrets_provider,
        namespace=namespace,
        service_account=service_account or stacks.DEFAULT_SERVICE_ACCOUNT,
    )
    size = stacks.DEFAULT_WAVE_SIZE if wave_size is None else wave_size
    if size < 1:
        raise InvalidInput("--wave-size must be at least 1")
    workspace = _workspace(root)
    # The fleet from file names alone: each file is parsed once, when it is rendered.
    files = {
        name: path
        for path in sorted(workspace.stacks_dir.glob("Pulumi.*.yaml"))
        if (name := path.name.removeprefix("Pulumi.").removesuffix(".yaml"))
    }
    fleet = {name: path for name, path in files.items() if is_tenant_id(name)}
    failed = {
        name: "the stack file's name is not Pulumi.<tenant id>.yaml"
        for name in files
        if name not in fleet
    }
    if all_tenants and tenants:
        raise InvalidInput("name tenants or pass --all, not both")
    if all_tenants:
        chosen = list(fleet)
    else:
        chosen = [validate_tenant_id(t) for t in tenants]
        failed = {}
        unknown = [t for t in chosen if t not in fleet]
        if unknown:
            raise InvalidInput(f"unknown tenant {unknown[0]!r}: no stack file")
    if not chosen and not failed:
        raise InvalidInput("no tenant selected: name tenants or pass --all")
    rendered = stacks.render_fleet(
        fleet, dict.fromkeys(chosen), target, size, workers=workers or _cores()
    )
    failed |= rendered.failed
    waves = {t: rendered.waves[t] for t in rendered.manifests}
    if out is None:
        return KubernetesRender([], "".join(rendered.manifests.values()), waves, failed)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for tenant, text in rendered.manifests.items():
        # Written in place, not through a renamed temporary file: that doubles the time
        # of 10,000 files, and a render cut short is simply run again.
        path = out / f"{rendered.names[tenant]}.yaml"
        path.write_text(text)
        written.append(path)
    return KubernetesRender(written, None, waves, failed)


def _cores() -> int:
    """The cores this process may run on (a container's share, not the host's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
