"""``tenantctl``: parses arguments and calls the same functions the Python API exposes.

No logic lives here beyond argument parsing, output formatting and exit codes.
"""

from __future__ import annotations

import sys
from typing import NoReturn

import typer

from tenant_infra.errors import BackendUnavailable, InvalidInput

app = typer.Typer(
    name="tenantctl",
    help="Provision, plan and migrate isolated tenant services.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

EXIT_INVALID = 2


def fail(message: str, code: int = EXIT_INVALID) -> NoReturn:
    """One line on stderr, nothing on stdout, a non-zero exit."""
    print(f"tenantctl: {message}", file=sys.stderr)
    raise typer.Exit(code)


def main() -> None:
    try:
        app()
    except InvalidInput as exc:
        fail(str(exc))
    except BackendUnavailable as exc:
        fail(str(exc), 1)
