"""The Pulumi Automation API behind :class:`tenant_infra.lifecycle.StackBackend`.

Traps this module exists to avoid (see ../shared/notes/pulumi-and-providers.md):

- ``create_or_select_stack`` rewrites the project's workspace file, so concurrent
  calls corrupt it (pulumi#8186): each tenant gets its own work directory
  (``.pulumi-work/<tenant>/Pulumi.yaml``, reading config from ``stacks/``), hence its
  own workspace file. The CLI refuses a ``main`` outside the project folder, so the
  one program runs *inline* (``tenant_program``, the function ``__main__.py`` calls);
  the SDK runs each inline program in its own context, so tenants in threads are
  isolated.
- ``set_all_config`` puts secret values in ``argv``: config is written to the stack
  file instead, and tenant config holds no secret anyway.
- ``up`` shows secrets by default: always ``show_secrets=False``. The SDK's
  ``export_stack()`` and ``outputs()`` (which ``up()`` calls itself) run
  ``--show-secrets`` and decrypt every secret of the stack into this process: the
  workspace here reads outputs with ``pulumi stack output --json`` only, where secrets
  print as ``[secret]``, and drops those.
- Without the CLI, the Automation API raises a bare ``FileNotFoundError``: callers
  get :class:`PulumiUnavailable`, one line saying what to install.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tenant_infra.errors import BackendUnavailable
from tenant_infra.lifecycle import EventSink, PreviewOutcome, ResourceEvent
from tenant_infra.retry import TransientConflict
from tenant_infra.workspace import InProgress

MIN_CLI_VERSION = (3, 211, 0)  # stack tags on self-managed backends (pulumi#19882)
PROJECT = "tenant-infra"
#: The default state backend: a ``file://`` backend in this folder of the project.
STATE_DIR = ".pulumi-state"


class PulumiUnavailable(BackendUnavailable):
    """The Pulumi CLI is missing or too old."""


def require_cli(command: str = "pulumi") -> tuple[int, int, int]:
    """The installed CLI's version, or one clear line on what to install."""
    wanted = ".".join(map(str, MIN_CLI_VERSION))
    hint = (
        f"the Pulumi CLI >= {wanted} is required for this command: install it from "
        "https://www.pulumi.com/docs/install/ (`tenantctl plan` works without it)"
    )
    path = shutil.which(command)
    if path is None:
        raise PulumiUnavailable(hint)
    try:
        out = subprocess.run(
            [path, "version"], capture_output=True, text=True, timeout=60, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        raise PulumiUnavailable(hint) from None
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", out)
    if match is None:
        raise PulumiUnavailable(hint)
    version = (int(match[1]), int(match[2]), int(match[3]))
    if version < MIN_CLI_VERSION:
        found = ".".join(map(str, version))
        raise PulumiUnavailable(f"Pulumi CLI {found} is too old: {hint}")
    return version


def backend_env(root: Path, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Environment for every Pulumi command: the usual variables win over our defaults.

    Default state backend: a local file backend inside the project (no account, no
    server); secrets are passphrase-encrypted, so a passphrase must be provided.
    """
    passphrase = (
        "PULUMI_CONFIG_PASSPHRASE",
        "PULUMI_CONFIG_PASSPHRASE_FILE",
        "PULUMI_ACCESS_TOKEN",
    )
    if not any(environ.get(name) for name in passphrase):
        raise BackendUnavailable(
            "set PULUMI_CONFIG_PASSPHRASE (or PULUMI_CONFIG_PASSPHRASE_FILE) to encrypt "
            "stack secrets"
        )
    # Dynamic providers (migrations, self-hosted MongoDB users) run in a Python process
    # the CLI starts: it must be this interpreter, which can import the project.
    env = {
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        "PULUMI_PYTHON_CMD": sys.executable,
        # require_cli() checked the version once; not again for every workspace.
        "PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK": "true",
    }
    if not environ.get("PULUMI_BACKEND_URL"):
        state = root / STATE_DIR
        state.mkdir(exist_ok=True)
        env["PULUMI_BACKEND_URL"] = state.resolve().as_uri()
    return env


def project_file(root: Path, tenant: str) -> Path:
    """``.pulumi-work/<tenant>/Pulumi.yaml``: the project, seen from a per-tenant directory.

    No ``main``: the program runs inline. ``stackConfigDir`` is joined to this folder by
    the CLI, so ``../../stacks`` is the project's ``stacks/``.
    """
    work = root / ".pulumi-work" / tenant
    work.mkdir(parents=True, exist_ok=True)
    path = work / "Pulumi.yaml"
    text = (
        f"name: {PROJECT}\n"
        "runtime:\n  name: python\n  options:\n    toolchain: pip\n"
        f"    virtualenv: {sys.prefix}\n"
        "stackConfigDir: ../../stacks\n"
    )
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return path


def _reduce(event: Any) -> ResourceEvent | None:
    """An Automation API engine event as a value-free :class:`ResourceEvent`."""
    for attr, phase in (
        ("resource_pre_event", "pre"),
        ("res_outputs_event", "done"),
        ("res_op_failed_event", "failed"),
    ):
        payload = getattr(event, attr, None)
        if payload is None:
            continue
        meta = payload.metadata
        urn = str(meta.urn)
        old = (meta.old.outputs if meta.old else None) or {}
        new = (meta.new.inputs if meta.new else None) or {}
        return ResourceEvent(
            op=str(getattr(meta.op, "value", meta.op)),
            type=str(meta.type),
            name=urn.rsplit("::", 1)[-1],
            phase=phase,
            diffs=tuple(meta.diffs or ()),
            old_revision=_plain(old.get("revision")),
            new_revision=_plain(new.get("head")),
        )
    return None


def _plain(value: Any) -> str | None:
    return value if isinstance(value, str) else None


@dataclass
class PulumiBackend:
    """Tenant stacks through the Automation API, one work directory per tenant."""

    root: Path
    policy_packs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        require_cli()
        self._env = backend_env(self.root)
        # One selected Stack per tenant for the life of a command: each new workspace
        # costs CLI processes, and `list` over thousands of tenants would pay them all.
        self._stacks: dict[str, Any] = {}

    def _stack(self, tenant: str, create: bool) -> Any:
        if tenant not in self._stacks:
            self._stacks[tenant] = self._open(tenant, create)
        return self._stacks[tenant]

    def _open(self, tenant: str, create: bool) -> Any:
        from pulumi import automation as auto

        try:
            # The inline program with this folder's Pulumi.yaml (see the module
            # docstring), in a workspace that never asks for decrypted secrets.
            workspace = _masked_workspace()(
                work_dir=str(project_file(self.root, tenant).parent),
                program=_inline_program,
                env_vars=self._env,
                secrets_provider="passphrase" if "PULUMI_ACCESS_TOKEN" not in os.environ else None,
            )
            choose = auto.Stack.create_or_select if create else auto.Stack.select
            return choose(tenant, workspace)
        except FileNotFoundError:
            raise PulumiUnavailable("the Pulumi CLI is not on PATH") from None

    def _run(self, action: Any, conflicts: set[str] | None = None) -> Any:
        """``action``'s CLI errors as one line; a failure that ``conflicts`` (filled by
        :func:`_forward`) explains is a :class:`TransientConflict`."""
        from pulumi import automation as auto

        try:
            return action()
        except auto.ConcurrentUpdateError:
            raise InProgress("another update of this stack is in progress") from None
        except auto.CommandError as exc:
            if conflicts:
                raise TransientConflict(
                    f"{', '.join(sorted(conflicts))}: a concurrent change of the same "
                    "catalog row (tuple concurrently updated)"
                ) from None
            raise RuntimeError(_last_error_line(str(exc))) from None

    def exists(self, tenant: str) -> bool:
        from pulumi import automation as auto

        try:
            self._stack(tenant, create=False)
        except auto.StackNotFoundError:
            return False
        return True

    def ensure(self, tenant: str) -> None:
        self._run(lambda: self._stack(tenant, create=True))

    def up(self, tenant: str, on_event: EventSink) -> dict[str, Any]:
        stack = self._stack(tenant, create=True)
        conflicts: set[str] = set()
        self._run(
            lambda: stack.up(
                on_event=_forward(on_event, conflicts),
                show_secrets=False,
                suppress_outputs=True,
                suppress_progress=True,
                policy_packs=list(self.policy_packs) or None,
            ),
            conflicts,
        )
        return self.outputs(tenant)

    def refresh(self, tenant: str, on_event: EventSink) -> None:
        """``pulumi refresh``: the state learns what is gone (a deleted vhost), so the
        next update creates it again."""
        stack = self._stack(tenant, create=False)
        self._run(
            lambda: stack.refresh(
                on_event=_forward(on_event),
                show_secrets=False,
                suppress_outputs=True,
                suppress_progress=True,
            )
        )

    def preview(self, tenant: str, on_event: EventSink) -> PreviewOutcome:
        stack = self._stack(tenant, create=False)
        events: list[ResourceEvent] = []

        def collect(event: ResourceEvent) -> None:
            events.append(event)
            on_event(event)

        result = self._run(
            lambda: stack.preview(
                diff=True,
                on_event=_forward(collect),
                suppress_outputs=True,
                suppress_progress=True,
                policy_packs=list(self.policy_packs) or None,
            )
        )
        changes = {str(getattr(k, "value", k)): int(v) for k, v in result.change_summary.items()}
        return PreviewOutcome(changes, tuple(events))

    def destroy(self, tenant: str, on_event: EventSink) -> None:
        stack = self._stack(tenant, create=False)
        conflicts: set[str] = set()
        self._run(
            lambda: stack.destroy(
                on_event=_forward(on_event, conflicts), show_secrets=False, suppress_outputs=True
            ),
            conflicts,
        )

    def remove(self, tenant: str) -> None:
        stack = self._stack(tenant, create=False)
        # preserve_config: the stack file is ours, the caller decides what becomes of it.
        self._run(lambda: stack.workspace.remove_stack(tenant, preserve_config=True))
        self._stacks.pop(tenant, None)

    def tags(self, tenant: str) -> dict[str, str]:
        stack = self._stack(tenant, create=False)
        return dict(self._run(stack.list_tags))

    def set_tags(self, tenant: str, tags: dict[str, str]) -> None:
        """Only the tags that change: each one is a CLI process."""
        stack = self._stack(tenant, create=False)
        current = self.tags(tenant)
        for key, value in tags.items():
            if current.get(key) != value:
                self._run(lambda k=key, v=value: stack.set_tag(k, v))

    def outputs(self, tenant: str) -> dict[str, Any]:
        """Non-secret stack outputs; secrets are never decrypted into this process."""
        stack = self._stack(tenant, create=False)
        outputs = self._run(stack.outputs)
        return {k: v.value for k, v in outputs.items() if not v.secret}


def _inline_program() -> None:
    """The one tenant program, as the Automation API runs it (credentials from the env)."""
    from tenant_infra.program import tenant_program

    tenant_program()


def _masked_workspace() -> type[Any]:
    """``LocalWorkspace`` whose stack outputs come from ``pulumi stack output --json``
    alone: the SDK's version runs it a second time with ``--show-secrets``."""
    import json

    from pulumi import automation as auto

    class MaskedWorkspace(auto.LocalWorkspace):
        def stack_outputs(self, stack_name: str) -> Any:
            result = self._run_pulumi_cmd_sync(["stack", "output", "--json", "--stack", stack_name])
            masked = json.loads(result.stdout or "{}")
            return {
                key: auto.OutputValue(
                    value=None if value == SECRET_SENTINEL else value,
                    secret=value == SECRET_SENTINEL,
                )
                for key, value in masked.items()
            }

        def export_stack(self, stack_name: str) -> Any:
            raise RuntimeError("export_stack decrypts every secret of the stack: not used")

    return MaskedWorkspace


#: What ``pulumi stack output --json`` prints in place of a secret.
SECRET_SENTINEL = "[secret]"


def _forward(sink: EventSink, conflicts: set[str] | None = None) -> Any:
    """An Automation API event handler feeding ``sink``; it adds to ``conflicts`` the
    name of each resource whose provider failed on a concurrent change."""

    def handler(event: Any) -> None:
        if conflicts is not None:
            name = provider_conflict(event)
            if name is not None:
                conflicts.add(name)
        reduced = _reduce(event)
        if reduced is not None:
            sink(reduced)

    return handler


#: The server's words for a conflict, as the PostgreSQL provider passes them on
#: ("could not execute revoke query: pq: tuple concurrently updated").
_PROVIDER_CONFLICT = re.compile(r"\btuple concurrently (updated|deleted)\b")


def provider_conflict(event: Any) -> str | None:
    """The resource a PostgreSQL provider's conflict error names, if ``event`` is one.

    Only a ``postgresql:`` resource's error counts: their messages carry the provider's
    statements, while a migration's (a dynamic resource) can carry a tenant's values,
    which must never make an update run again."""
    diagnostic = getattr(event, "diagnostic_event", None)
    if diagnostic is None or diagnostic.severity != "error" or not diagnostic.urn:
        return None
    parts = str(diagnostic.urn).split("::")
    if len(parts) < 4 or not parts[2].rsplit("$", 1)[-1].startswith("postgresql:"):
        return None
    return parts[-1] if _PROVIDER_CONFLICT.search(str(diagnostic.message)) else None


def _last_error_line(text: str) -> str:
    """The CLI's own error line, without the command line and stdout it is wrapped in."""
    for line in reversed(text.splitlines()):
        stripped = line.strip()
        if stripped.startswith("error:"):
            return stripped
    return "pulumi command failed (see the Pulumi output above)"
