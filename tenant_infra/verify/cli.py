"""``tenantctl verify``: arguments to :func:`~tenant_infra.verify.command.verify_tenant`.

Registered in :mod:`tenant_infra.cli` with ``app.command("verify")(verify)``. Exit
codes: 0 verified, 1 a check failed, 2 invalid input (raised as ``InvalidInput``).
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tenant_infra.verify.command import verify_tenant
from tenant_infra.verify.report import dumps, print_table


class VerifyFormat(StrEnum):
    TABLE = "table"
    JSON = "json"


def verify(
    tenant: Annotated[str, typer.Argument(help="Tenant id (the JWT tenantId claim).")],
    service: Annotated[
        list[str] | None,
        typer.Option("--service", "-s", metavar="PRODUCT", help="Verify only PRODUCT; repeatable."),
    ] = None,
    connections: Annotated[
        list[Path] | None,
        typer.Option(
            "--connections",
            "-c",
            metavar="FILE",
            help="A connections document (README: The connections document); repeatable. "
            "Default: read each service's document from Vault (VAULT_ADDR, VAULT_TOKEN).",
        ),
    ] = None,
    stack_config: Annotated[
        Path | None,
        typer.Option(
            "--stack-config",
            metavar="FILE",
            help="Stack config giving admin users and expected limits "
            "(default: stacks/Pulumi.<tenant>.yaml if it exists).",
        ),
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Count skipped checks (unreachable store) as failures.")
    ] = False,
    format: Annotated[
        VerifyFormat, typer.Option("--format", "-f", help="Output format.")
    ] = VerifyFormat.TABLE,
) -> None:
    """Prove on real connections that the tenant's services are isolated; exit 1 if not."""
    report = verify_tenant(
        tenant, services=service or (), connections=connections or (), stack_config=stack_config
    )
    if strict:
        report = report.strict()
    if VerifyFormat(format) is VerifyFormat.JSON:
        print(dumps(report))
    else:
        console = Console()
        print_table(report, console if console.is_terminal else Console(width=200))
    if not report.ok:
        raise typer.Exit(1)
