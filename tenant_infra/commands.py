"""One function per ``tenantctl`` verb: the Python API that the CLI merely parses for.

Onboarding pipelines import these; ``tenant_infra.cli`` turns arguments into calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tenant_infra import plan as offline_plan
from tenant_infra.config import ServiceSpec, TenantConfig, read_stack_file
from tenant_infra.errors import InvalidInput
from tenant_infra.tenant import validate_tenant_id

#: Stack config keys that describe the platform, not a tenant: safe to borrow from
#: another stack's file when planning a tenant that has none yet.
PLATFORM_KEYS = ("platform",)


def project_root(start: Path | None = None) -> Path:
    """The checkout holding ``Pulumi.yaml`` (searched upward from ``start`` or the cwd)."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "Pulumi.yaml").is_file() and (folder / "stacks").is_dir():
            return folder
    return Path(__file__).resolve().parent.parent


def stack_file(tenant: str, root: Path | None = None) -> Path:
    return (root or project_root()) / "stacks" / f"Pulumi.{tenant}.yaml"


def resolve_config(
    tenant: str,
    services: Sequence[str] = (),
    stack_config: Path | None = None,
) -> TenantConfig:
    """The tenant's config: its stack file, or the platform of another file plus ``services``.

    Without ``stack_config`` the tenant's own ``stacks/Pulumi.<tenant>.yaml`` is used
    if it exists, else the platform endpoints of ``stacks/Pulumi.dev.yaml``.
    ``services`` (``PRODUCT:MODE``) replace the file's services when given.
    """
    validate_tenant_id(tenant)
    specs = [ServiceSpec.parse(text) for text in services]
    path = stack_config or stack_file(tenant)
    if stack_config is None and not path.is_file():
        path = stack_file("dev")
    values = read_stack_file(path)
    own = values.get("tenant-infra:tenant") == tenant
    if not own:
        values = {k: v for k, v in values.items() if k.split(":", 1)[-1] in PLATFORM_KEYS}
        if not specs:
            raise InvalidInput(
                f"{str(path)!r} is not tenant {tenant!r}'s stack file: pass --service PRODUCT:MODE"
            )
    values["tenant-infra:tenant"] = tenant
    if specs:
        values["tenant-infra:services"] = [s.model_dump(mode="json") for s in specs]
    return TenantConfig.from_pulumi_values(values)


def plan(
    tenant: str,
    services: Sequence[str] = (),
    stack_config: Path | None = None,
) -> offline_plan.Plan:
    """Every resource the tenant's stack would declare, without the Pulumi CLI."""
    return offline_plan.plan(resolve_config(tenant, services, stack_config))
