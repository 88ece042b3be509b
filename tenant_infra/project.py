"""Where the operator's project folder is: the one place every module asks.

The project folder holds ``Pulumi.yaml``, ``stacks/``, ``tenant-infra.yaml`` and any
products of the operator's own (``catalog.toml`` and ``migrations/``); the tool itself,
its catalog and the built-in products' migrations are in the installed package.
"""

from __future__ import annotations

import os
from pathlib import Path

from tenant_infra.errors import InvalidInput

#: The operator's project folder (``tenantctl --project DIR`` sets it).
PROJECT_ENV = "TENANT_INFRA_PROJECT"


def project_root(start: Path | None = None) -> Path:
    """The operator's project folder: ``$TENANT_INFRA_PROJECT``, else the nearest folder
    holding ``Pulumi.yaml`` and ``stacks/`` upward from ``start`` or the cwd, else the
    cwd itself. Never the installed package's folder: the tool runs from anywhere."""
    configured = os.environ.get(PROJECT_ENV)
    if configured and start is None:
        folder = Path(configured).resolve()
        if not (folder / "Pulumi.yaml").is_file():
            raise InvalidInput(
                f"{PROJECT_ENV}={configured}: no Pulumi.yaml there (tenantctl init DIR)"
            )
        return folder
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "Pulumi.yaml").is_file() and (folder / "stacks").is_dir():
            return folder
    return here
