"""``python -m tenant_infra.migrate``: the ``migrate`` command on its own (same CLI as
``tenantctl migrate``), with tenantctl's one-line error handling."""

from __future__ import annotations

import sys

import typer

from tenant_infra.errors import BackendUnavailable, InvalidInput
from tenant_infra.migrate.cli import migrate


def main() -> None:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(migrate)
    try:
        app()
    except InvalidInput as exc:
        print(f"tenantctl: {exc}", file=sys.stderr)
        sys.exit(2)
    except BackendUnavailable as exc:
        print(f"tenantctl: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
