"""``tenantctl``: parses arguments and calls :mod:`tenant_infra.commands`.

No logic lives here beyond argument parsing, output formatting and exit codes.
:mod:`tenant_infra.commands` and :mod:`tenant_infra.render` pull in Pulumi and every
provider SDK (~0.8 s), so commands import them when they run: ``tenantctl migrate``
across a fleet never pays for them.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from tenant_infra.errors import (
    EXIT_FAILED,
    EXIT_INVALID,
    BackendUnavailable,
    InvalidInput,
    OperationFailed,
)
from tenant_infra.lifecycle import (
    EventSink,
    Progress,
    ResourceEvent,
    ServiceStatus,
    TenantStatus,
)
from tenant_infra.migrate.cli import migrate
from tenant_infra.verify.cli import verify
from tenant_infra.workspace import InProgress

app = typer.Typer(
    name="tenantctl",
    help="Provision, plan and migrate isolated tenant services.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"tenantctl {version('tenant-infra')}")
        raise typer.Exit()


@app.callback()
def _root(
    _show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    project: Annotated[
        Path | None,
        typer.Option(
            "--project",
            metavar="DIR",
            help="The project folder (Pulumi.yaml, stacks/): default $TENANT_INFRA_PROJECT, "
            "else the nearest one upward from here.",
        ),
    ] = None,
) -> None:
    """Provision, plan and migrate isolated tenant services."""
    from tenant_infra.project import PROJECT_ENV

    if project is not None:
        if not (project / "Pulumi.yaml").is_file():
            raise InvalidInput(f"--project {project}: no Pulumi.yaml there (tenantctl init DIR)")
        os.environ[PROJECT_ENV] = str(project.resolve())


@app.command()
def revision(
    message: Annotated[str, typer.Option("--message", "-m", help="What the revision does.")],
    product: Annotated[
        str | None, typer.Option("--product", "-p", help="The product whose revision it is.")
    ] = None,
    script_location: Annotated[
        Path | None,
        typer.Option("--script-location", metavar="DIR", help="Another Alembic script directory."),
    ] = None,
) -> None:
    """Write the product's next revision (sequential id, the project's template)."""
    from tenant_infra import commands

    print(commands.revision(product, message, script_location))


@app.command()
def init(
    folder: Annotated[Path, typer.Argument(help="Where the new project goes.")],
) -> None:
    """Scaffold a project folder: Pulumi.yaml, the program, stacks/, tenant-infra.yaml."""
    from tenant_infra import commands

    for path in commands.init(folder):
        print(path)


class Format(StrEnum):
    TABLE = "table"
    JSON = "json"


ServiceOption = Annotated[
    list[str] | None,
    typer.Option(
        "--service",
        "-s",
        metavar="PRODUCT:MODE",
        help="Register PRODUCT in MODE (DATABASE or SCHEMA); repeatable.",
    ),
]
StackConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--stack-config",
        "--platform",
        metavar="FILE",
        help="Stack config (default: stacks/Pulumi.<tenant>.yaml, else tenant-infra.yaml's "
        "platform).",
    ),
]
FormatOption = Annotated[Format, typer.Option("--format", "-f", help="Output format.")]


class PlanFormat(StrEnum):
    TABLE = "table"
    JSON = "json"
    MARKDOWN = "markdown"


@app.command()
def plan(
    tenant: Annotated[
        str | None, typer.Argument(help="Tenant id (the JWT tenantId claim).")
    ] = None,
    service: ServiceOption = None,
    stack_config: StackConfigOption = None,
    all_tenants: Annotated[
        bool, typer.Option("--all", help="Every tenant with a stack file, in parallel.")
    ] = False,
    diff: Annotated[
        str | None,
        typer.Option(
            "--diff",
            metavar="BASE",
            help="With --all: what this checkout changes per tenant against BASE, a git "
            "ref or a saved plan set.",
        ),
    ] = None,
    save: Annotated[
        Path | None,
        typer.Option("--save", metavar="DIR", help="With --all: keep the plan set in DIR."),
    ] = None,
    jobs: Annotated[
        int | None,
        typer.Option(
            "--jobs",
            "-j",
            min=1,
            max=256,
            help="With --all: worker processes (default: the cores).",
        ),
    ] = None,
    exit_code: Annotated[
        bool, typer.Option("--exit-code", help="With --diff: exit 1 when anything changes.")
    ] = False,
    no_cache: Annotated[
        bool,
        typer.Option(
            "--no-cache", help="With --all: plan everything, reusing no plan made before."
        ),
    ] = False,
    format: Annotated[
        PlanFormat,
        typer.Option("--format", "-f", help="table, json, or markdown (--diff, for a PR)."),
    ] = PlanFormat.TABLE,
) -> None:
    """Show every resource the tenant's stack would declare (offline: no Pulumi CLI needed).

    With --all --diff BASE: what this checkout changes, tenant by tenant, against BASE.
    """
    from tenant_infra import commands, render

    if all_tenants:
        if tenant is not None or service or stack_config is not None:
            raise InvalidInput("--all plans every stack file: no tenant, --service or --platform")
        _plan_all(diff, save, jobs, exit_code, not no_cache, format)
        return
    if diff is not None or save is not None or jobs is not None or exit_code or no_cache:
        raise InvalidInput("--diff, --save, --jobs, --exit-code and --no-cache go with --all")
    if tenant is None:
        raise InvalidInput("name the tenant to plan, or pass --all")
    if format is PlanFormat.MARKDOWN:
        raise InvalidInput("--format markdown is for --all --diff")
    result = commands.plan(tenant, service or (), stack_config)
    borrowed = commands.borrowed_platform(tenant, stack_config)
    if borrowed is not None:  # said, never silent: whose endpoints this plan uses
        print(f"tenantctl: {tenant} has no stack file: planned on {borrowed}", file=sys.stderr)
    if format is PlanFormat.JSON:
        print(render.dumps(result.to_json()))
    else:
        render.plan_table(result, _console())
    for problem in result.problems:
        print(f"tenantctl: {problem}", file=sys.stderr)
    _finish(not result.problems)


def _plan_all(
    diff: str | None,
    save: Path | None,
    jobs: int | None,
    exit_code: bool,
    cache: bool,
    format: PlanFormat,
) -> None:
    """``plan --all``: the fleet planned (and saved), or diffed against a base."""
    from tenant_infra import commands, render

    if diff is None:
        if format is PlanFormat.MARKDOWN or exit_code:
            raise InvalidInput("--format markdown and --exit-code go with --diff BASE")
        plans = commands.plan_all(save=save, workers=jobs, cache=cache)
        if format is PlanFormat.JSON:
            print(render.dumps(render.plan_set_json(plans)))
        else:
            print(render.plan_set_text(plans), end="")
        _finish(all(e.error is None for e in plans.tenants.values()))
        return
    result = commands.plan_diff(diff, save=save, workers=jobs, cache=cache)
    if format is PlanFormat.JSON:
        print(render.dumps(result.to_json()))
    elif format is PlanFormat.MARKDOWN:
        print(render.plan_diff_markdown(result), end="")
    else:
        print(render.plan_diff_text(result), end="")
    for failed in result.failed:
        print(f"tenantctl: {failed.tenant}: {failed.errors['head']}", file=sys.stderr)
    _finish(not result.failed and not (exit_code and result.changed))


TenantsArgument = Annotated[list[str] | None, typer.Argument(help="Tenant ids.")]
AllOption = Annotated[bool, typer.Option("--all", help="Every tenant with a stack file.")]


def _progress(format: Format) -> Progress:
    """Live per-tenant lines for people; JSON lines (one event each) for pipelines."""

    def show(tenant: str, status: ServiceStatus) -> None:
        if format is Format.JSON:
            event = {"event": "service", "tenant": tenant, **status.to_json()}
            print(json.dumps(event), flush=True)
        else:
            reason = f" ({status.reason})" if status.reason else ""
            print(f"[{tenant}] {status.product}: {status.state.value}{reason}", file=sys.stderr)

    return show


def _events(format: Format) -> EventSink | None:
    """Engine events (values never included) as JSON lines, for pipelines."""
    if format is not Format.JSON:
        return None

    def emit(event: ResourceEvent) -> None:
        print(json.dumps({"event": "resource", **event.to_json()}), flush=True)

    return emit


def _finish(ok: bool) -> None:
    if not ok:
        raise typer.Exit(EXIT_FAILED)


@app.command()
def onboard(
    tenant: Annotated[str, typer.Argument(help="Tenant id (the JWT tenantId claim).")],
    service: ServiceOption = None,
    from_file: Annotated[
        Path | None,
        typer.Option(
            "--from",
            "--platform",
            metavar="FILE",
            help="A stack config file to onboard from (its platform, and its services).",
        ),
    ] = None,
    metadata: Annotated[
        list[str] | None,
        typer.Option("--metadata", "-m", metavar="KEY=VALUE", help="Tenant metadata; repeatable."),
    ] = None,
    format: FormatOption = Format.TABLE,
) -> None:
    """Create or update a tenant, run its services' migrations, mark them ready.

    Without --service (and no stack file of its own), the tenant exists as an identity
    with its metadata and no infrastructure; `register` adds services later.
    """
    from tenant_infra import commands

    result = commands.onboard(
        tenant,
        service or (),
        from_file,
        progress=_progress(format),
        events=_events(format),
        metadata=_pairs(metadata or ()),
    )
    _show_status([result], format)
    _finish(result.ok)


@app.command()
def register(
    tenant: Annotated[str, typer.Argument(help="An onboarded tenant.")],
    service: ServiceOption = None,
    format: FormatOption = Format.TABLE,
) -> None:
    """Register more services on a tenant: only what is new is provisioned."""
    from tenant_infra import commands

    result = commands.register(
        tenant, service or (), progress=_progress(format), events=_events(format)
    )
    _show_status([result], format)
    _finish(result.ok)


ProductOption = Annotated[
    list[str] | None,
    typer.Option("--service", "-s", metavar="PRODUCT", help="Only this service; repeatable."),
]


@app.command()
def suspend(
    tenant: Annotated[str, typer.Argument(help="An onboarded tenant.")],
    service: ProductOption = None,
    format: FormatOption = Format.TABLE,
) -> None:
    """Suspend services: data untouched, every login refused, open sessions closed."""
    from tenant_infra import commands

    result = commands.suspend(tenant, service or (), progress=_progress(format))
    _show_status([result], format)
    _finish(result.ok)


@app.command()
def resume(
    tenant: Annotated[str, typer.Argument(help="An onboarded tenant.")],
    service: ProductOption = None,
    format: FormatOption = Format.TABLE,
) -> None:
    """Resume suspended services exactly as they were, verified before they are ready."""
    from tenant_infra import commands

    result = commands.resume(tenant, service or (), progress=_progress(format))
    _show_status([result], format)
    _finish(result.ok)


@app.command()
def deregister(
    tenant: Annotated[str, typer.Argument(help="An onboarded tenant.")],
    service: Annotated[str, typer.Option("--service", "-s", metavar="PRODUCT")],
    retain_data: Annotated[
        bool, typer.Option("--retain-data", help="Keep its database or schema (no login).")
    ] = False,
    purge: Annotated[bool, typer.Option("--purge", help="Delete its data too.")] = False,
    format: FormatOption = Format.TABLE,
) -> None:
    """Remove one service of a tenant; its other services are untouched."""
    from tenant_infra import commands

    result = commands.deregister(
        tenant, service, retain_data=retain_data, purge=purge, progress=_progress(format)
    )
    _show_status([result], format)
    _finish(not result.error)


@app.command()
def promote(
    tenant: Annotated[str, typer.Argument(help="An onboarded tenant.")],
    service: Annotated[str, typer.Option("--service", "-s", metavar="PRODUCT")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would change; change nothing.")
    ] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Go on with an interrupted or waiting promotion.")
    ] = False,
    abort: Annotated[
        bool, typer.Option("--abort", help="Go back to SCHEMA mode (before retirement).")
    ] = False,
    keep_source: Annotated[
        str | None,
        typer.Option(
            "--keep-source", metavar="DURATION", help="Keep the old schema aside (default 24h)."
        ),
    ] = None,
    drop_source: Annotated[
        bool, typer.Option("--drop-source", help="Drop the old schema once repointed.")
    ] = False,
    format: FormatOption = Format.TABLE,
) -> None:
    """Promote a service from SCHEMA to DATABASE mode: same tenant, new store, new login."""
    from tenant_infra import commands, render
    from tenant_infra.operations.promote import PromotionPlan

    step, copied = _step_printer(tenant, service, format), _table_printer(format, "copied")
    result = commands.promote(
        tenant,
        service,
        dry_run=dry_run,
        resume=resume,
        abort=abort,
        keep_source=commands.parse_duration(keep_source) if keep_source is not None else None,
        drop_source=drop_source,
        progress=_progress(format),
        step_progress=step,
        copy_progress=copied,
    )
    if isinstance(result, PromotionPlan):
        if format is Format.JSON:
            print(render.dumps(result.to_json()))
        else:
            render.promotion_plan(result, _console())
        return
    _print_outcome("promotion", tenant, service, result, format)


def _step_printer(tenant: str, service: str, format: Format) -> Callable[[str, str], None]:
    """A day-2 operation's steps as they start and end (JSON lines on stdout)."""

    def step(name: str, event: str) -> None:
        if format is Format.JSON:
            print(json.dumps({"event": "step", "step": name, "state": event}), flush=True)
        else:
            print(f"[{tenant}/{service}] {name}: {event}", file=sys.stderr)

    return step


def _table_printer(format: Format, verb: str) -> Callable[[int, int, str], None]:
    """``[i/n table] copied``, as django-tenants shows ``[i/n schema]``."""

    def table(done: int, total: int, name: str) -> None:
        if format is not Format.JSON:
            print(f"[{done}/{total} {name}] {verb}", file=sys.stderr)

    return table


def _print_outcome(what: str, tenant: str, service: str, result: Any, format: Format) -> None:
    from tenant_infra import render

    shown = {"tenant": tenant, "service": service, **result.operation.to_json()}
    if format is Format.JSON:
        print(render.dumps({**shown, "pending": result.pending}))
    else:
        print(f"{what} of {tenant}/{service}: {result.operation.state}")
        if result.pending:
            print(f"waiting: {result.pending}")


@app.command()
def rotate(
    tenants: Annotated[list[str] | None, typer.Argument(help="Tenants (or --all).")] = None,
    all_tenants: Annotated[
        bool, typer.Option("--all", help="Every tenant with the --service product.")
    ] = False,
    service: Annotated[
        str | None, typer.Option("--service", "--product", "-s", metavar="PRODUCT")
    ] = None,
    store: Annotated[
        list[str] | None,
        typer.Option(
            "--store", metavar="STORE", help="postgres, rabbitmq, mongodb or all (repeatable)."
        ),
    ] = None,
    begin: Annotated[
        bool, typer.Option("--begin", help="New credentials beside the old (the default).")
    ] = False,
    finish: Annotated[
        bool, typer.Option("--finish", help="Revoke the old credentials, end their sessions.")
    ] = False,
    auto: Annotated[
        str | None,
        typer.Option(
            "--auto",
            metavar="GRACE",
            help="Begin, wait up to GRACE (90s, 5m) for old sessions to end, finish.",
        ),
    ] = None,
    drain: Annotated[
        str | None,
        typer.Option("--drain", metavar="DURATION", help="Time refused sessions get to end (30s)."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what each phase would change.")
    ] = False,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c")] = 1,
    format: FormatOption = Format.TABLE,
) -> None:
    """Rotate a service's credentials in two phases: both valid, then the old revoked."""
    from tenant_infra import commands, render

    if sum((begin, finish, auto is not None)) > 1:
        raise InvalidInput("choose one of --begin, --finish and --auto")
    phase: Literal["begin", "finish", "auto"] = (
        "finish" if finish else "auto" if auto is not None else "begin"
    )
    grace = commands.parse_duration(auto).total_seconds() if auto is not None else 0.0
    step = _step_printer("*" if all_tenants else ",".join(tenants or []), service or "", format)
    results = commands.rotate(
        tenants or [],
        all_tenants=all_tenants,
        product=service,
        stores=store or [],
        phase=phase,
        grace=grace,
        drain=commands.parse_duration(drain).total_seconds() if drain is not None else None,
        dry_run=dry_run,
        concurrency=concurrency,
        progress=_progress(format),
        step_progress=step,
    )
    if format is Format.JSON:
        print(render.dumps([r.to_json() for r in results]))
    elif dry_run:
        render.rotation_plan(results, _console())  # type: ignore[arg-type]
    else:
        render.rotation_report(results, _console())  # type: ignore[arg-type]
    if any(getattr(r, "status", "") == "failed" for r in results):
        raise typer.Exit(1)


@app.command()
def backup(
    tenants: Annotated[list[str] | None, typer.Argument(help="Tenants (or --all).")] = None,
    all_tenants: Annotated[bool, typer.Option("--all", help="Every tenant.")] = False,
    service: Annotated[
        str | None, typer.Option("--service", "-s", metavar="PRODUCT", help="One service only.")
    ] = None,
    to: Annotated[
        Path | None,
        typer.Option(
            "--to", metavar="DIR", help="Where sets go (default: $TENANT_INFRA_BACKUP_DIR)."
        ),
    ] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c")] = 1,
    format: FormatOption = Format.TABLE,
) -> None:
    """Back up each service: one verified set per tenant and service."""
    from tenant_infra import commands, render

    results = commands.backup(
        tenants or [],
        all_tenants=all_tenants,
        product=service,
        to=to,
        concurrency=concurrency,
    )
    if format is Format.JSON:
        print(render.dumps([r.to_json() for r in results]))
    else:
        render.backup_report(results, _console())
    if any(r.status != "ok" for r in results):
        raise typer.Exit(1)


@app.command()
def restore(
    tenant: Annotated[str, typer.Argument(help="An onboarded tenant.")],
    service: Annotated[str, typer.Option("--service", "-s", metavar="PRODUCT")],
    source: Annotated[
        str | None,
        typer.Option("--from", metavar="SET", help="A backup set's directory, or 'latest'."),
    ] = None,
    swap: Annotated[
        bool, typer.Option("--swap", help="Put the verified copy live (keeps the old aside).")
    ] = False,
    aside: Annotated[
        bool, typer.Option("--aside", help="Stop once verified, beside the live data.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check the set and show the plan; change nothing.")
    ] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Go on with an open restore.")] = False,
    abort: Annotated[
        bool, typer.Option("--abort", help="Drop an open restore's copy (before its swap).")
    ] = False,
    drop_previous: Annotated[
        bool, typer.Option("--drop-previous", help="Drop the data a swap kept aside.")
    ] = False,
    point_in_time: Annotated[
        str | None, typer.Option("--point-in-time", metavar="TIME", help="Refused: see README.")
    ] = None,
    backups: Annotated[
        Path | None, typer.Option("--backups", metavar="DIR", help="Where 'latest' looks.")
    ] = None,
    format: FormatOption = Format.TABLE,
) -> None:
    """Restore a service from a backup set: aside, verified, then swapped."""
    from tenant_infra import commands, render
    from tenant_infra.operations.restore import RestorePlan

    result = commands.restore(
        tenant,
        service,
        source=source,
        swap=swap,
        aside=aside,
        dry_run=dry_run,
        resume=resume,
        abort=abort,
        drop_previous=drop_previous,
        point_in_time=point_in_time,
        backups=backups,
        progress=_progress(format),
        step_progress=_step_printer(tenant, service, format),
        copy_progress=_table_printer(format, "restored"),
    )
    if isinstance(result, RestorePlan):
        if format is Format.JSON:
            print(render.dumps(result.to_json()))
        else:
            render.restore_plan(result, _console())
        return
    _print_outcome("restore", tenant, service, result, format)


StaleAfterOption = Annotated[
    str,
    typer.Option(
        "--stale-after",
        metavar="DURATION",
        help="A backend lock from another host older than this is stale (90m, 1h, 2d).",
    ),
]


@app.command()
def status(
    tenant: Annotated[str | None, typer.Argument(help="A tenant (default: all).")] = None,
    refresh: Annotated[
        bool, typer.Option("--refresh", help="Also read the stack; report any drift.")
    ] = False,
    stale_after: StaleAfterOption = "1h",
    format: FormatOption = Format.TABLE,
) -> None:
    """Services, isolation modes, states and revisions, read from the registry; and
    the stacks whose state backend lock outlived its process (on stderr)."""
    from tenant_infra import commands

    if tenant is None and refresh:
        raise InvalidInput("--refresh needs a tenant")
    limit = commands.parse_duration(stale_after)
    results = [commands.status(tenant, refresh=refresh)] if tenant else commands.list_tenants()
    seen: list[str] = []

    def noted(statuses: Iterable[TenantStatus]) -> Iterable[TenantStatus]:
        for result in statuses:
            seen.append(result.tenant)
            yield result

    shown = _show_status(noted(results), format)
    stale = _stale_locks(seen, limit)
    _finish(not any(r.drift for r in shown) and not stale)


def _stale_locks(tenants: Sequence[str], stale_after: timedelta) -> bool:
    """One stderr line per stale or unreadable backend lock; whether there was any."""
    from tenant_infra import commands
    from tenant_infra.automation import PROJECT
    from tenant_infra.backendlocks import LockInspectionUnavailable

    try:
        findings = commands.backend_locks(tenants, stale_after=stale_after)
    except LockInspectionUnavailable as exc:
        print(f"tenantctl: {exc}", file=sys.stderr)
        return False
    for finding in findings:
        print(finding.line(PROJECT), file=sys.stderr)
    return bool(findings)


@app.command()
def unlock(
    tenant: Annotated[str, typer.Argument(help="The tenant whose stack stays locked.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Also clear a lock from another host (or a file that is not a lock) older "
            "than --stale-after: you made sure no update of the stack runs there.",
        ),
    ] = False,
    stale_after: StaleAfterOption = "1h",
) -> None:
    """Clear the state backend lock a killed update left on the tenant's stack, once
    sure no update runs (`pulumi cancel` for tenantctl)."""
    from tenant_infra import commands
    from tenant_infra.automation import PROJECT

    limit = commands.parse_duration(stale_after)

    def confirm(findings: Sequence[Any]) -> bool:
        for finding in findings:
            print(finding.line(PROJECT), file=sys.stderr)
        question = f"Remove {len(findings)} lock file(s) of stack {tenant}?"
        return yes or typer.confirm(question, abort=True)  # no: "aborted", exit 1

    removed = commands.unlock(tenant, force=force, stale_after=limit, confirm=confirm)
    done = f"{len(removed)} backend lock(s) removed" if removed else "not locked"
    print(f"stack {tenant}: {done}")


@app.command("list")
def list_(
    state: Annotated[
        str | None, typer.Option("--state", help="Only tenants or services in this state.")
    ] = None,
    product: Annotated[
        str | None, typer.Option("--product", help="Only tenants with this service.")
    ] = None,
    format: FormatOption = Format.TABLE,
) -> None:
    """Every tenant and its services, from the registry (one query)."""
    from tenant_infra import commands

    _show_status(commands.list_tenants(state=state, product=product), format)


@app.command("drain-events")
def drain_events() -> None:
    """Publish lifecycle events still waiting in the registry's outbox (after Redis
    was unreachable); exit 1 if some still wait."""
    from tenant_infra import commands

    published, waiting = commands.drain_events()
    print(f"{published} published, {waiting} waiting")
    _finish(waiting == 0)


@app.command()
def history(
    tenant: Annotated[str, typer.Argument(help="The tenant.")],
    format: FormatOption = Format.TABLE,
) -> None:
    """Every recorded transition of a tenant: when, who, what, from which state to which."""
    from tenant_infra import commands

    entries = commands.history(tenant)
    if format is Format.JSON:
        print(json.dumps({"tenant": tenant, "history": entries}, default=str))
        return
    table = Table()
    for column in ("at", "service", "operation", "from", "to", "reason", "actor"):
        table.add_column(column, overflow="fold")
    for e in entries:
        table.add_row(
            str(e["at"]),
            e["product"] or "-",
            e["operation"],
            e["old_state"] or "-",
            e["new_state"],
            e["reason"],
            e["actor"],
        )
    _console().print(table)


@app.command()
def offboard(
    tenant: Annotated[str, typer.Argument(help="The tenant to remove.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    retain_data: Annotated[
        bool, typer.Option("--retain-data", help="Keep databases, schemas and vhosts.")
    ] = False,
    purge: Annotated[bool, typer.Option("--purge", help="Delete the tenant's data too.")] = False,
) -> None:
    """Destroy a tenant's resources (grants and users before what they refer to)."""
    from tenant_infra import commands

    # Before the question: bad input is never asked about.
    commands.check_offboard(tenant, retain_data=retain_data, purge=purge)
    what = "keeping its data" if retain_data else "DELETING its data" if purge else ""
    if not yes and not typer.confirm(f"Offboard tenant {tenant} {what}?".replace("  ", " ")):
        raise typer.Exit(EXIT_FAILED)
    retained = commands.offboard(tenant, retain_data=retain_data, purge=purge)
    print(
        f"tenant {tenant} offboarded" + (f"; retained: {', '.join(retained)}" if retained else "")
    )


@app.command()
def preview(
    tenants: TenantsArgument = None,
    all_tenants: AllOption = False,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-k", min=1, max=32, help="At most 32.")
    ] = 4,
    format: Annotated[
        str, typer.Option("--format", "-f", help="markdown (for a PR comment) or json.")
    ] = "markdown",
) -> None:
    """Preview tenant stacks; one summary fit for a pull-request comment."""
    from tenant_infra import commands, render

    if format not in ("markdown", "json"):
        raise InvalidInput(f"--format must be markdown or json, not {format!r}")
    results = commands.preview(tenants or (), all_tenants=all_tenants, concurrency=concurrency)
    if format == "json":
        print(render.dumps(render.preview_json(results)))
    else:
        print(render.preview_markdown(results), end="")
    _finish(all(r.ok for r in results))


@app.command()
def up(
    tenants: TenantsArgument = None,
    all_tenants: AllOption = False,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-k", min=1, max=32, help="At most 32.")
    ] = 2,
    format: FormatOption = Format.TABLE,
) -> None:
    """Apply the program to many tenant stacks; one tenant's failure never stops the others."""
    from tenant_infra import commands, render

    results = commands.up(
        tenants or (), all_tenants=all_tenants, concurrency=concurrency, progress=_progress(format)
    )
    if format is Format.JSON:
        print(
            json.dumps(
                {"results": [{"tenant": r.tenant, "ok": r.ok, "error": r.error} for r in results]}
            )
        )
    else:
        render.fleet_table(results, _console())
    _finish(all(r.ok for r in results))


def _pairs(items: Sequence[str]) -> dict[str, str]:
    """``KEY=VALUE`` options as a mapping; the model validates keys and values."""
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"--metadata {item!r} must be written KEY=VALUE")
        pairs[key] = value
    return pairs


def _show_status(results: Iterable[TenantStatus], format: Format) -> list[TenantStatus]:
    """Statuses as one JSON document (written as they stream in) or a table."""
    if format is Format.JSON:
        import itertools

        shown: list[TenantStatus] = []
        out = sys.stdout
        stream = iter(results)
        first = next(stream, None)  # an unreachable registry fails before any output
        out.write('{"tenants": [')
        for i, result in enumerate(itertools.chain([first] if first else [], stream)):
            out.write((", " if i else "") + json.dumps(result.to_json()))
            if result.drift:
                shown.append(result)
        out.write("]}\n")
        return shown
    from tenant_infra import render  # the table's helpers import Pulumi

    listed = list(results)
    render.status_table(listed, _console())
    for result in listed:
        for line in result.drift:
            sys.stderr.write(f"drift: {result.tenant} {line}\n")
    return listed


@app.command()
def serve(
    listen: Annotated[
        str, typer.Option("--listen", metavar="HOST:PORT", help="Where to listen.")
    ] = "127.0.0.1:8080",
    tls_cert: Annotated[
        Path | None, typer.Option("--tls-cert", metavar="FILE", help="TLS certificate (PEM).")
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option("--tls-key", metavar="FILE", help="Its private key (PEM).")
    ] = None,
    connections: Annotated[
        str | None,
        typer.Option(
            "--connections",
            metavar="-",
            help="Read connections documents from standard input instead of Vault.",
        ),
    ] = None,
    writes: Annotated[
        bool, typer.Option("--writes", help="Enable the write calls (operator keys only).")
    ] = False,
    platform: Annotated[
        Path | None,
        typer.Option(
            "--platform",
            metavar="FILE",
            help="With --writes: the stack file whose platform new tenants get.",
        ),
    ] = None,
    access_log: Annotated[
        bool, typer.Option("--access-log/--no-access-log", help="Log each request's line.")
    ] = True,
) -> None:
    """Serve the seed platform's multi-tenancy API from the registry: plain HTTP on a
    loopback address only, TLS anywhere else."""
    from tenant_infra import commands, inputs
    from tenant_infra.api.documents import StaticDocuments

    documents = None
    if connections is not None:
        if connections != "-":
            raise InvalidInput("--connections takes '-' (standard input): no file holds secrets")
        documents = StaticDocuments.parse(inputs.read_text("-", "connections documents"))
    commands.serve(
        listen,
        tls_cert=tls_cert,
        tls_key=tls_key,
        documents=documents,
        writes=writes,
        platform=platform,
        access_log=access_log,
    )


api_key_app = typer.Typer(help="API keys of the multi-tenancy API.", no_args_is_help=True)
app.add_typer(api_key_app, name="api-key")


@api_key_app.command("create")
def api_key_create(
    service: Annotated[
        str | None,
        typer.Option("--service", metavar="PRODUCT", help="The product the key serves."),
    ] = None,
    operator: Annotated[
        bool, typer.Option("--operator", help="An operator key, for the write calls.")
    ] = False,
    note: Annotated[str, typer.Option("--note", help="Who or what holds the key.")] = "",
) -> None:
    """Make a key and print it, alone on stdout, this once: only its hash is kept."""
    from tenant_infra import commands

    if operator == (service is not None):
        raise InvalidInput("pass either --service PRODUCT or --operator")
    print(commands.create_api_key("operator" if operator else "product", service, note=note))


@api_key_app.command("list")
def api_key_list(format: FormatOption = Format.TABLE) -> None:
    """Every key: id, scope, product, note, who made or revoked it, and when."""
    from tenant_infra import commands

    listed = commands.api_keys()
    if format is Format.JSON:
        print(json.dumps(listed, default=str))
        return
    table = Table()
    for column in ("id", "scope", "product", "note", "created", "by", "revoked"):
        table.add_column(column, overflow="fold")
    for k in listed:
        revoked = f"{k['revoked_at']} by {k['revoked_by']}" if k["revoked_at"] else "-"
        table.add_row(
            k["id"],
            k["scope"],
            k["product"] or "*",
            k["note"],
            str(k["created_at"]),
            k["created_by"],
            revoked,
        )
    _console().print(table)


@api_key_app.command("revoke")
def api_key_revoke(
    key: Annotated[str, typer.Argument(help="The key's id (from api-key list).")],
) -> None:
    """Revoke a key: the API refuses it from its next request on."""
    from tenant_infra import commands

    commands.revoke_api_key(key)
    print(f"revoked {key}")


render_app = typer.Typer(
    help="Write Kubernetes manifests for the fleet (nothing is applied).", no_args_is_help=True
)
app.add_typer(render_app, name="render")


@render_app.command("kubernetes")
def render_kubernetes(
    tenants: TenantsArgument = None,
    all_tenants: AllOption = False,
    image: Annotated[
        str,
        typer.Option(
            "--image",
            metavar="IMAGE",
            help="Required: the workspace image, pinned (REPO:TAG or @sha256).",
        ),
    ] = "",
    backend: Annotated[
        str,
        typer.Option(
            "--backend",
            metavar="URL",
            help="Required: the shared state backend (s3://, gs://, ...).",
        ),
    ] = "",
    secrets_provider: Annotated[
        str,
        typer.Option(
            "--secrets-provider",
            metavar="URL",
            help="Required: passphrase, or a KMS URL (awskms://...).",
        ),
    ] = "",
    namespace: Annotated[
        str,
        typer.Option(
            "--namespace", metavar="NS", help="Required: where the Stacks and Secrets are."
        ),
    ] = "",
    service_account: Annotated[
        str | None,
        typer.Option("--service-account", metavar="SA", help="The workspace pods' identity."),
    ] = None,
    wave_size: Annotated[
        int | None,
        typer.Option("--wave-size", metavar="K", help="Tenants in the canary wave 0 (10)."),
    ] = None,
    out: Annotated[
        str, typer.Option("--out", metavar="DIR", help="Where to write (-: stdout).")
    ] = "k8s",
) -> None:
    """A ConfigMap and a Pulumi Kubernetes Operator Stack per tenant, a file each."""
    from tenant_infra import commands

    for option, value in (
        ("--image", image),
        ("--backend", backend),
        ("--secrets-provider", secrets_provider),
        ("--namespace", namespace),
    ):
        if not value:
            raise InvalidInput(f"{option} is required")
    result = commands.render_kubernetes(
        tenants or (),
        all_tenants=all_tenants,
        image=image,
        backend=backend,
        secrets_provider=secrets_provider,
        namespace=namespace,
        service_account=service_account,
        wave_size=wave_size,
        out=None if out == "-" else Path(out),
    )
    if result.text is not None:
        sys.stdout.write(result.text)
    else:
        last = max(result.waves.values(), default=0)
        print(f"wrote {len(result.written)} tenants to {out} (waves 0..{last})")
    for tenant, reason in sorted(result.failed.items()):
        print(f"tenantctl: {tenant}: {reason}", file=sys.stderr)
    _finish(result.ok)


def _console() -> Console:
    """A terminal's own width; piped, ``$COLUMNS`` if set, else a wide page, so names
    are never cut."""
    console = Console()
    if console.is_terminal:
        return console
    columns = os.environ.get("COLUMNS", "")
    return Console(width=int(columns) if columns.isdigit() and int(columns) >= 40 else 200)


@render_app.command("migrate-job")
def render_migrate_job(
    product: Annotated[
        str, typer.Option("--product", "-p", help="The product whose tenants the Job migrates.")
    ],
    shards: Annotated[
        int, typer.Option("--shards", metavar="K", help="Shards: the Job's completions.")
    ],
    image: Annotated[str, typer.Option("--image", help="The image holding tenantctl.")],
    namespace: Annotated[str, typer.Option("--namespace", help="Namespace of both objects.")] = (
        "default"
    ),
    parallelism: Annotated[
        int | None,
        typer.Option(help="Shards running at once (default: min(K, 4)).", show_default=False),
    ] = None,
    backoff_limit_per_index: Annotated[
        int, typer.Option(help="Retries of one shard after a retryable failure (exit 1).")
    ] = 2,
    max_failed_indexes: Annotated[
        int | None,
        typer.Option(
            help="Failed shards past which the Job stops (default: a tenth of K, at least 1).",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        str,
        typer.Option("--out", metavar="DIR|-", help="A folder for the two files, or - for stdout."),
    ] = "-",
) -> None:
    """A ConfigMap with the product's targets snapshot (from the registry) and an Indexed
    Job migrating it in K shards: pod JOB_COMPLETION_INDEX=i runs `tenantctl migrate
    --shards K`, shard i (0-based). Exit code 2 of a pod fails its shard at once
    (FailIndex); exit 1 is retried. README: The migration Job."""
    from tenant_infra import commands
    from tenant_infra.kubernetes.migrate_job import MigrateJobSpec

    spec = MigrateJobSpec(
        product,
        shards,
        image,
        namespace,
        parallelism,
        backoff_limit_per_index,
        max_failed_indexes,
    )
    job = commands.render_migrate_job(spec)
    print(f"{job.name}: {job.tenants} tenant(s) of {product} in {shards} shard(s)", file=sys.stderr)
    if job.suspended:
        print(
            f"{len(job.suspended)} suspended tenant(s) left out (tenantctl resume migrates "
            f"them): {', '.join(job.suspended[:10])}{' …' if len(job.suspended) > 10 else ''}",
            file=sys.stderr,
        )
    if out == "-":
        print(job.yaml(), end="")
        return
    for path in job.write(Path(out)):
        print(path)


app.command("verify")(verify)
app.command("migrate")(migrate)


def _fail(message: str, code: int) -> NoReturn:
    print(f"tenantctl: {message}", file=sys.stderr)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors become one line on stderr, never a traceback."""
    from tenant_infra.migrate.sandbox import make_undumpable

    # Before any secret is read: no other process of this user may read our memory,
    # environment or file descriptors (README "Security model").
    make_undumpable()
    try:
        code = app(args=argv, standalone_mode=False)
    except typer.TyperException as exc:  # usage errors carry exit code 2
        message = exc.format_message().replace("\n", " ").strip()
        if not message:  # a bare `tenantctl`: the help was the answer
            sys.exit(exc.exit_code)
        _fail(message, exc.exit_code)
    except typer.Abort:
        _fail("aborted", EXIT_FAILED)
    except InvalidInput as exc:
        _fail(str(exc), EXIT_INVALID)
    except (BackendUnavailable, InProgress, OperationFailed) as exc:
        _fail(str(exc), EXIT_FAILED)
    except SystemExit:
        # Typer turns a broken pipe (the reader of `| head` went away) into exit 1 and
        # wraps stdout to hush it; a reader that stopped reading is not a failure.
        if type(sys.stdout).__name__ == "PacifyFlushWrapper":
            _quiet_stdout()
            sys.exit(0)
        raise
    except BrokenPipeError:
        _quiet_stdout()
        sys.exit(0)
    sys.exit(code if isinstance(code, int) else 0)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null: Python would complain again when flushing at exit."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.__stdout__.fileno() if sys.__stdout__ else 1)
