"""Human renderings (Rich tables) of what the commands return. JSON lives with the data."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table

from tenant_infra.lifecycle import (
    MIGRATION_TYPE,
    FleetResult,
    PreviewOutcome,
    TenantStatus,
    migration_product,
)
from tenant_infra.migrate.sandbox import clean_text
from tenant_infra.operations.backup import BackupResult
from tenant_infra.operations.promote import PromotionPlan
from tenant_infra.operations.restore import RestorePlan
from tenant_infra.operations.rotate import RotationPlan, RotationResult
from tenant_infra.plan import Plan, PlannedResource
from tenant_infra.plandiff import Change, FleetDiff, TenantDiff
from tenant_infra.planset import PlanSet

#: Inputs worth a column in the human plan, by how often they identify a resource.
_KEY_INPUTS = (
    "name",
    "database",
    "schema",
    "vhost",
    "user",
    "role",
    "owner",
    "privileges",
    "objectType",
    "mount",
    "username",
    "host",
    "endpoint",
    "address",
)


def _summary(resource: PlannedResource) -> str:
    parts = []
    for key in _KEY_INPUTS:
        if key in resource.inputs:
            value = resource.inputs[key]
            shown = value if isinstance(value, str) else json.dumps(value)
            parts.append(f"{key}={shown}")
    if resource.secret_inputs - {"__provider"}:
        parts.append("secret: " + ",".join(sorted(resource.secret_inputs - {"__provider"})))
    if resource.protect:
        parts.append("protected")
    return "  ".join(parts)


def plan_table(plan: Plan, console: Console) -> None:
    """One table per service, then the tenant-wide resources (providers, vhost)."""
    groups: dict[str, list[PlannedResource]] = {}
    for resource in plan.resources:
        if not resource.custom:
            continue
        groups.setdefault(plan.service_of(resource) or "(tenant)", []).append(resource)
    console.print(f"[bold]Tenant {plan.tenant}[/]: {sum(map(len, groups.values()))} resources")
    ordered = sorted(groups, key=lambda g: (g == "(tenant)", g))
    widths = [len(_short_type(r.type)) + len(r.name) for rs in groups.values() for r in rs]
    if max(widths, default=0) + 50 > console.width:
        # Too narrow for a table (an 80-column terminal): a resource a line, its inputs
        # on the next, indented; every detail stays in --format json.
        for group in ordered:
            console.print(f"[bold]{escape(group)}[/]", highlight=False)
            for resource in groups[group]:
                console.print(
                    f"  {_short_type(resource.type)}  {escape(resource.name)}", highlight=False
                )
                if summary := _summary(resource):
                    console.print(Padding(escape(summary), (0, 0, 0, 6)), highlight=False)
        return
    for group in ordered:
        table = Table(title=group, title_justify="left", show_lines=False, expand=False)
        table.add_column("type", no_wrap=True)
        table.add_column("name", no_wrap=True)
        table.add_column("inputs", overflow="fold")
        for resource in groups[group]:
            table.add_row(_short_type(resource.type), resource.name, _summary(resource))
        console.print(table)


def _short_type(token: str) -> str:
    """``postgresql:index/role:Role`` → ``postgresql:Role`` for people."""
    package, _, rest = token.partition(":")
    return f"{package}:{rest.rsplit(':', 1)[-1]}" if rest else token


def promotion_plan(plan: PromotionPlan, console: Console) -> None:
    """A promotion's preview: resources, revision, tables and the write freeze."""
    console.print(
        f"promote {plan.tenant}/{plan.product}: SCHEMA -> DATABASE at revision "
        f"{plan.revision or 'base'}"
    )
    for verb, names in (("add", plan.added), ("remove", plan.removed)):
        for name in names:
            console.print(f"  {'+' if verb == 'add' else '-'} {name}")
    table = Table("table", "rows", "bytes", box=None)
    for row in plan.tables:
        table.add_row(str(row["name"]), str(row["rows"]), str(row["bytes"]))
    console.print(table)
    console.print(
        f"{plan.bytes} bytes to move; writes frozen for about {plan.freeze_seconds:.0f} s "
        "(reads go on)"
    )


def backup_report(results: Sequence[BackupResult], console: Console) -> None:
    """One line per service backed up: its set, or why not."""
    table = Table("tenant", "service", "status", "set or error", box=None)
    for r in results:
        shown = r.set if r.status == "ok" else r.error
        table.add_row(r.tenant, r.product, r.status, escape(str(shown)))
    console.print(table)
    for r in results:
        for store, why in sorted(r.skipped.items()):
            console.print(escape(f"{r.tenant}/{r.product}: {store} skipped: {why}"))
        if r.warning:
            console.print(escape(f"{r.tenant}/{r.product}: {r.warning}"))


def rotation_plan(plans: Sequence[RotationPlan], console: Console) -> None:
    """A rotation's preview: the logins each phase adds and removes."""
    for plan in plans:
        console.print(f"rotate {plan.tenant}/{plan.product}: {', '.join(plan.stores)}")
        for phase, changes in (("begin", plan.begin), ("finish", plan.finish)):
            console.print(f"  {phase}:" + ("" if changes else " (begun already)"))
            for verb, sign in (("added", "+"), ("removed", "-")):
                for name in changes.get(verb, []):
                    console.print(escape(f"    {sign} {name}"))


def rotation_report(results: Sequence[RotationResult], console: Console) -> None:
    """One line per service rotated: finished, begun (waiting), or why it failed."""
    table = Table("tenant", "service", "status", "sessions forced off, or error", box=None)
    for r in results:
        shown = (
            r.error
            if r.status == "failed"
            else ", ".join(f"{k} {v}" for k, v in sorted(r.forced.items())) or "-"
        )
        table.add_row(r.tenant, r.product, r.status, escape(str(shown)))
    console.print(table)
    for message in dict.fromkeys(r.pending for r in results if r.pending):
        console.print(escape(f"next: {message}"))


def restore_plan(plan: RestorePlan, console: Console) -> None:
    """A restore's preview: the set (proved intact), the schemas, the tables."""
    console.print(
        f"restore {plan.tenant}/{plan.product} from {plan.set} (backup {plan.stamp}, "
        f"revision {plan.revision or 'base'}) in database {plan.database}"
    )
    console.print(
        f"  aside as {plan.schemas['aside']}; with --swap it becomes {plan.schemas['live']} "
        f"and the live data is kept as {plan.schemas['kept']}"
    )
    table = Table("table", "rows in the backup", "live rows (estimate)", box=None)
    for row in plan.tables:
        table.add_row(escape(str(row["name"])), str(row["rows"]), str(row["liveRowsEstimate"]))
    console.print(table)
    for store, what in sorted(plan.stores.items()):
        console.print(escape(f"  {store}: {what}"))


def dumps(document: Any) -> str:
    return json.dumps(document, indent=2, sort_keys=False)


# ---------------------------------------------------------------- lifecycle views

_STATE_STYLE = {"ready": "green", "failed": "red", "migrating": "yellow", "provisioning": "yellow"}


def status_table(statuses: Sequence[TenantStatus], console: Console) -> None:
    table = Table(show_lines=False)
    for column in ("tenant", "service", "isolation", "state", "revision", "reason"):
        table.add_column(column, overflow="fold")
    for tenant in statuses:
        for service in tenant.services:
            style = _STATE_STYLE.get(service.state.value, "")
            table.add_row(
                tenant.tenant,
                service.product,
                service.isolation,
                f"[{style}]{service.state.value}[/]" if style else service.state.value,
                service.revision or "-",
                service.reason,
            )
    console.print(table)


def migrations_of(outcome: PreviewOutcome) -> list[str]:
    """``product: old -> new`` for each migration marker the preview would change."""
    moves = []
    for event in outcome.events:
        if (
            event.type == MIGRATION_TYPE
            and event.phase == "pre"
            and event.op not in ("same", "read")
        ):
            product = migration_product(event.name) or event.name
            moves.append(
                f"{product}: {event.old_revision or 'base'} → {event.new_revision or 'head'}"
            )
    return moves


def preview_json(results: Sequence[FleetResult]) -> list[dict[str, Any]]:
    return [
        {
            "tenant": r.tenant,
            "ok": r.ok,
            "error": r.error or None,
            "changes": dict(r.preview.changes) if r.preview else {},
            "migrations": migrations_of(r.preview) if r.preview else [],
        }
        for r in results
    ]


def preview_markdown(results: Sequence[FleetResult]) -> str:
    """One summary fit for a pull-request comment."""
    failed = [r for r in results if not r.ok]
    lines = [
        "## tenant-infra preview",
        "",
        f"{len(results)} tenant stack(s) previewed, {len(failed)} failed.",
        "",
        "| tenant | create | update | replace | delete | migrations | result |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for row in preview_json(results):
        changes = row["changes"]
        lines.append(
            "| {t} | {c} | {u} | {r} | {d} | {m} | {res} |".format(
                t=row["tenant"],
                c=changes.get("create", 0),
                u=changes.get("update", 0),
                r=changes.get("replace", 0) + changes.get("create-replacement", 0),
                d=changes.get("delete", 0),
                m="<br>".join(row["migrations"]) or "—",
                res="ok" if row["ok"] else "**failed**",
            )
        )
    for result in failed:
        lines += ["", f"### {result.tenant}: failed", "", "```", result.error, "```"]
    return "\n".join(lines) + "\n"


def fleet_table(results: Sequence[FleetResult], console: Console) -> None:
    table = Table()
    for column in ("tenant", "result", "detail"):
        table.add_column(column, overflow="fold")
    for result in results:
        table.add_row(result.tenant, "ok" if result.ok else "[red]failed[/]", result.error)
    console.print(table)


# ---------------------------------------------------------------- fleet plan diff

#: A pull-request comment holds 65,536 characters: the Markdown stops short of it.
_COMMENT_BUDGET = 60_000
#: Values longer than this are cut in Markdown and text (never in JSON).
_VALUE_WIDTH = 160
_NAMES_SHOWN = 40


def _shown(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= _VALUE_WIDTH else text[: _VALUE_WIDTH - 1] + "…"


def _change_line(change: Change) -> str:
    key = f"({change.key})" if change.option else change.key
    if change.secret:
        verb = "changed" if change.had and change.has else "added" if change.has else "removed"
        return f"{key}: [secret] {verb}"
    if not change.had:
        return f"{key}: (none) → {_shown(change.new)}"
    if not change.has:
        return f"{key}: {_shown(change.old)} → (none)"
    return f"{key}: {_shown(change.old)} → {_shown(change.new)}"


def tenant_diff_lines(diff: TenantDiff) -> list[str]:
    """One tenant's (or one group's) diff, a line each, marked as ``diff`` marks them."""
    # An error may quote a stack file: one line, no backtick (it sits in a code block).
    lines = [
        f"! {'base' if side == 'base' else 'checkout'}: " + clean_text(why).replace("`", "'")
        for side, why in diff.errors.items()
    ]
    if diff.status == "new":
        lines.append("! a stack file BASE does not have")
    if diff.status == "gone":
        lines.append("! a stack file only BASE has")
    lines += [f"+ {_short_type(t)}  {n}" for t, n in diff.added]
    for resource in diff.changed:
        lines.append(f"~ {_short_type(resource.type)}  {resource.name}")
        lines += [f"    {_change_line(c)}" for c in resource.changes]
    lines += [f"- {_short_type(t)}  {n}" for t, n in diff.removed]
    return lines


def _counts(diff: TenantDiff) -> str:
    if diff.status == "failed":
        return "failed"
    parts = [
        f"{n} {verb}"
        for n, verb in (
            (len(diff.added), "to add"),
            (len(diff.changed), "to change"),
            (len(diff.removed), "to remove"),
        )
        if n
    ]
    prefix = {"new": "new stack file", "gone": "stack file removed"}.get(diff.status)
    return ", ".join([*([prefix] if prefix else []), *parts]) or diff.status


def _names(tenants: Sequence[str], limit: int = _NAMES_SHOWN) -> str:
    shown = ", ".join(tenants[:limit])
    return shown + (f" … and {len(tenants) - limit} more" if len(tenants) > limit else "")


def _headline(diff: FleetDiff) -> list[str]:
    s = diff.summary()
    return [
        f"{diff.head} against {diff.base}: {s['tenants']} tenant(s), {s['changed']} changed, "
        f"{s['unchanged']} unchanged, {s['new']} new, {s['gone']} gone, {s['failed']} failed.",
        f"Resources: {s['resourcesAdded']} to add, {s['resourcesChanged']} to change, "
        f"{s['resourcesRemoved']} to remove.",
    ]


def plan_diff_markdown(diff: FleetDiff) -> str:
    """For a pull-request comment: the fleet first, then one collapsed block per group
    of tenants with the same change; within GitHub's size for a comment."""
    resources = _headline(diff)[1]
    lines = ["## tenant-infra plan diff", "", f"`{diff.head}` against `{diff.base}`.", ""]
    s = diff.summary()
    lines.append(
        f"**{s['tenants']}** tenant(s) planned offline: **{s['changed']} changed**, "
        f"{s['unchanged']} unchanged, {s['new']} new, {s['gone']} gone, "
        f"**{s['failed']} failed**. {resources}"
    )
    groups = diff.groups()
    if not groups:
        lines += ["", "No tenant's resources change."]
        return "\n".join(lines) + "\n"
    lines += ["", "| tenants | change |", "|---:|---|"]
    for group in groups:
        lines.append(f"| {len(group.tenants)} | {_counts(group.diff)} |")
    if any(len(g.tenants) > 1 for g in groups):
        lines += [
            "",
            "In a block for several tenants, `<tenant>` stands for each one's id "
            "(with `_` for `-` where PostgreSQL names it).",
        ]
    size = sum(len(line) + 1 for line in lines)
    for index, group in enumerate(groups):
        who = "tenant" if len(group.tenants) == 1 else "tenants"
        block = [
            "",
            f"<details><summary><b>{len(group.tenants)} {who}</b> ({_names(group.tenants, 3)}): "
            f"{_counts(group.diff)}</summary>",
            "",
            f"Tenants: {_names(group.tenants)}",
            "",
            "```diff",
            *tenant_diff_lines(group.diff),
            "```",
            "",
            "</details>",
        ]
        cost = sum(len(line) + 1 for line in block)
        if size + cost > _COMMENT_BUDGET:
            rest = groups[index:]
            lines += [
                "",
                f"… {len(rest)} more group(s) of {sum(len(g.tenants) for g in rest)} tenant(s) "
                "not shown here: `tenantctl plan --all --diff BASE --format json` has them all.",
            ]
            break
        lines += block
        size += cost
    return "\n".join(lines) + "\n"


def plan_diff_text(diff: FleetDiff) -> str:
    """The same for a terminal: the fleet, then each group's lines."""
    lines = _headline(diff)
    for group in diff.groups():
        lines += ["", f"{_names(group.tenants)}: {_counts(group.diff)}"]
        lines += [f"  {line}" for line in tenant_diff_lines(group.diff)]
    return "\n".join(lines) + "\n"


def plan_set_json(plans: PlanSet) -> list[dict[str, Any]]:
    return [
        {"tenant": t, "resources": e.resources, "error": e.error}
        for t, e in sorted(plans.tenants.items())
    ]


def plan_set_text(plans: PlanSet) -> str:
    failed = {t: e.error for t, e in plans.tenants.items() if e.error is not None}
    lines = [f"{len(plans.tenants)} tenant(s) planned offline, {len(failed)} failed."]
    lines += [f"{tenant}: {why}" for tenant, why in sorted(failed.items())]
    return "\n".join(lines) + "\n"
