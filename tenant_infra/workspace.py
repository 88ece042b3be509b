"""Where a checkout keeps tenant stack files, per-tenant locks and work directories.

Kept free of Pulumi imports: the verifier and the migration runner use it too.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tenant_infra import inputs
from tenant_infra.config import NAMESPACE, TenantConfig, read_stack_file
from tenant_infra.errors import InvalidInput
from tenant_infra.tenant import validate_tenant_id


class InProgress(RuntimeError):
    """Another operation holds the tenant."""


#: The project's defaults, beside ``Pulumi.yaml``.
DEFAULTS_FILE = "tenant-infra.yaml"


@dataclass(frozen=True)
class Workspace:
    """Where tenant stack files live (``stacks/``) and where per-tenant locks are kept."""

    root: Path

    @property
    def stacks_dir(self) -> Path:
        return self.root / "stacks"

    @property
    def work_dir(self) -> Path:
        return self.root / ".pulumi-work"

    def stack_file(self, tenant: str) -> Path:
        return self.stacks_dir / f"Pulumi.{tenant}.yaml"

    @property
    def defaults_file(self) -> Path:
        return self.root / DEFAULTS_FILE

    def default_platform(self) -> Path | None:
        """The stack file whose platform a tenant without a stack file of its own gets,
        as the project's ``tenant-infra.yaml`` names it (``platform: FILE``), if it does:
        never a guess, so a production tenant cannot borrow a dev platform unseen."""
        path = self.defaults_file
        if not path.is_file():
            return None
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise InvalidInput(f"{path}: cannot be read: {exc}") from None
        if not isinstance(values, dict):
            raise InvalidInput(f"{path}: a mapping of settings (platform: FILE)")
        unknown = sorted(set(values) - {"platform"})
        if unknown:
            raise InvalidInput(f"{path}: unknown setting {unknown[0]!r} (known: platform)")
        named = values.get("platform")
        if named is None:
            return None
        if not isinstance(named, str) or not named:
            raise InvalidInput(f"{path}: platform must be a stack file's path")
        found = (self.root / named).resolve()
        if not found.is_file():
            raise InvalidInput(f"{path}: platform {named!r} is not a file")
        return found

    def tenants(self) -> list[str]:
        """Tenants with a stack file: the tenant index (no backend listing needed).

        A file that cannot be read still names its tenant (from the file name), so a
        fleet run reports that tenant failed, and goes on with the others.
        """
        found = []
        for path in sorted(self.stacks_dir.glob("Pulumi.*.yaml")):
            try:
                values = read_stack_file(path)
            except InvalidInput:
                named = path.name.removeprefix("Pulumi.").removesuffix(".yaml")
                values = {f"{NAMESPACE}:tenant": named if is_tenant_id(named) else None}
            tenant = values.get(f"{NAMESPACE}:tenant")
            if isinstance(tenant, str) and path.name == f"Pulumi.{tenant}.yaml":
                found.append(tenant)
        return found

    def read_config(self, tenant: str) -> TenantConfig | None:
        path = self.stack_file(tenant)
        if not path.is_file():
            return None
        config = TenantConfig.from_pulumi_values(read_stack_file(path))
        if config.tenant != tenant:
            # A copied file would otherwise make `up <tenant>` deploy someone else's stack.
            raise InvalidInput(f"{path.name} declares tenant {config.tenant!r}, not {tenant!r}")
        return config

    def write_config(self, config: TenantConfig) -> Path:
        """Write the tenant's stack file, keeping keys Pulumi added (``encryptionsalt``)."""
        path = self.stack_file(config.tenant)
        doc: dict[str, Any] = {}
        if path.is_file():
            doc = inputs.read_yaml(path, "stack config")
            doc = doc if isinstance(doc, dict) else {}
        values = config.model_dump(by_alias=True, mode="json")
        doc["config"] = {f"{NAMESPACE}:{k}": v for k, v in values.items()}
        self.stacks_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".yaml.tmp")
        tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
        os.replace(tmp, path)
        return path

    @contextmanager
    def lock(self, tenant: str) -> Iterator[None]:
        """Exclusive, non-blocking: a second operation on the same tenant fails at once."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with open(self.work_dir / f"{tenant}.lock", "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise InProgress(
                    f"tenant {tenant!r}: another operation is already in progress"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def is_locked(self, tenant: str) -> bool:
        try:
            with self.lock(tenant):
                return False
        except InProgress:
            return True


def is_tenant_id(name: str) -> bool:
    """Whether a stack file's name part is a valid tenant id."""
    try:
        validate_tenant_id(name)
    except InvalidInput:
        return False
    return True
