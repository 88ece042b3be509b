"""Human renderings (Rich tables) of what the commands return. JSON lives with the data."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table

from tenant_infra.plan import Plan, PlannedResource

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
    for group in sorted(groups, key=lambda g: (g == "(tenant)", g)):
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


def dumps(document: Any) -> str:
    return json.dumps(document, indent=2, sort_keys=False)
