"""``tenantctl``: parses arguments and calls :mod:`tenant_infra.commands`.

No logic lives here beyond argument parsing, output formatting and exit codes.
"""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from tenant_infra import commands, render
from tenant_infra.errors import BackendUnavailable, InvalidInput

app = typer.Typer(
    name="tenantctl",
    help="Provision, plan and migrate isolated tenant services.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

EXIT_INVALID = 2
EXIT_FAILED = 1


@app.callback()
def _root() -> None:
    """Provision, plan and migrate isolated tenant services."""


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
        metavar="FILE",
        help="Stack config (default: stacks/Pulumi.<tenant>.yaml, else the dev stack's platform).",
    ),
]
FormatOption = Annotated[Format, typer.Option("--format", "-f", help="Output format.")]


@app.command()
def plan(
    tenant: Annotated[str, typer.Argument(help="Tenant id (the JWT tenantId claim).")],
    service: ServiceOption = None,
    stack_config: StackConfigOption = None,
    format: FormatOption = Format.TABLE,
) -> None:
    """Show every resource the tenant's stack would declare (offline: no Pulumi CLI needed)."""
    result = commands.plan(tenant, service or (), stack_config)
    if format is Format.JSON:
        print(render.dumps(result.to_json()))
    else:
        render.plan_table(result, _console())


def _console() -> Console:
    """A terminal's own width; a wide page when piped, so names are never cut."""
    console = Console()
    return console if console.is_terminal else Console(width=200)


def _fail(message: str, code: int) -> NoReturn:
    print(f"tenantctl: {message}", file=sys.stderr)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors become one line on stderr, never a traceback."""
    try:
        code = app(args=argv, standalone_mode=False)
    except typer.TyperException as exc:  # usage errors carry exit code 2
        _fail(exc.format_message().replace("\n", " "), exc.exit_code)
    except typer.Abort:
        _fail("aborted", EXIT_FAILED)
    except InvalidInput as exc:
        _fail(str(exc), EXIT_INVALID)
    except BackendUnavailable as exc:
        _fail(str(exc), EXIT_FAILED)
    sys.exit(code if isinstance(code, int) else 0)
