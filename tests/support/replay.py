"""ReplayBackend: a test double of the Pulumi engine that applies stacks to real servers.

The Pulumi CLI and its provider plugins cannot run on these machines, so this backend
stands in for them behind :class:`tenant_infra.lifecycle.StackBackend`:

- it evaluates the same program as ``tenantctl plan`` (``tenant_program`` under the
  mock runtime), and the platform program first when a product's shared database is
  missing;
- it diffs the new resource graph against the graph it last applied, kept in a
  checkpoint file per stack (``<state_dir>/stacks/<tenant>.json``). Secret values never
  reach the checkpoint: secret inputs are stored as salted fingerprints, and generated
  passwords as opaque sentinels whose values live only in this process's memory;
- it applies the difference in the engine's order: creates and updates in dependency
  order, replacements where the upstream schema says ``ForceNew`` (create before delete,
  as the engine does by default), deletes in reverse dependency order, honouring
  ``protect``, ``retain_on_delete``, ``deleted_with`` and ``depends_on``; the
  checkpoint is written after every step, so a killed run resumes where it stopped;
- PostgreSQL and RabbitMQ resources get the statements and management-API calls the
  upstream Terraform providers issue (``replay_postgresql.py``, ``replay_rabbitmq.py``);
- dynamic resources run through their own providers (check, diff, create, update,
  delete) after a dill round trip of the pickled provider, as the engine does;
- Vault resources are applied when ``VAULT_ADDR`` is set, MongoDB ones when
  ``MONGODB_URL`` is; otherwise they are recorded (so a service's connections document
  can still be read back with :meth:`ReplayBackend.document`);
- an unknown resource type fails loudly;
- stack tags and outputs are kept, so ``status`` and ``list`` work.

A generated password exists only in the memory of the process that generated it. A
later process can still update and delete everything, but an operation that needs
an old password (re-running a migration, say) fails with one line saying so.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import string
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dill
import requests
from pulumi.runtime import mocks

from tenant_infra.catalog import IsolationMode
from tenant_infra.config import Platform, PlatformConfig, TenantConfig
from tenant_infra.credentials import PlatformCredentials
from tenant_infra.lifecycle import EventSink, PreviewOutcome, ResourceEvent
from tenant_infra.plan import PlannedResource, evaluate, pulumi_config_values
from tenant_infra.program import platform_program, tenant_program
from tenant_infra.project import project_root
from tenant_infra.retry import TransientConflict, transient
from tenant_infra.tenant import pg_shared_database
from tenant_infra.workspace import InProgress, Workspace

from . import replay_postgresql as pg
from . import replay_rabbitmq as rmq

PG = "postgresql:index/"
RMQ = "rabbitmq:index/"
DYNAMIC = "pulumi-python:dynamic/"
RANDOM_PASSWORD = "random:index/randomPassword:RandomPassword"
#: Dynamic resources that talk to MongoDB: applied only when MONGODB_URL is set.
MONGO_DYNAMIC = (DYNAMIC + "tenant:MongoUser", DYNAMIC + "tenant:MongoMigration")
MIGRATION = DYNAMIC + "tenant:ServiceMigration"

_SENTINEL = re.compile(r"@@replay-secret:([0-9a-f]{32})@@")
#: The Pulumi runtime's settings are process-global: one evaluation or apply at a time.
_ENGINE = threading.RLock()
#: Generated passwords, per state directory: memory only, shared by the backends of
#: one process that point at the same directory.
_GENERATED: dict[str, dict[str, str]] = {}


class ReplayError(RuntimeError):
    """A step the replay cannot carry out, or a step the real engine would refuse."""


def _step_error(step: _Step, exc: Exception) -> Exception:
    """What a failed step raises: like the CLI's error, it names the step. A PostgreSQL
    provider's resource that met a concurrent change is a TransientConflict, as the
    automation backend judges it (``automation.provider_conflict``); a migration's
    error never is."""
    if isinstance(exc, ReplayError):
        return exc
    what = f"{step.op} {step.type} {step.name}: {_one_line(exc)}"
    if step.type.startswith("postgresql:") and transient(exc):
        return TransientConflict(what)
    return ReplayError(what)


def _normal(value: Any) -> Any:
    """Wire values made comparable: protobuf numbers are doubles."""
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_normal(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


@dataclass
class _Secrets:
    """Generated passwords (by sentinel token) and fingerprints of every secret seen."""

    generated: dict[str, str]
    salt: bytes
    #: fingerprint -> value, for secret inputs that are not generated (admin passwords).
    seen: dict[str, str] = field(default_factory=dict)

    def fingerprint(self, value: Any) -> str:
        data = json.dumps(value, sort_keys=True, default=str).encode()
        return hmac.new(self.salt, data, hashlib.sha256).hexdigest()

    def generate(self, inputs: Mapping[str, Any]) -> str:
        """A new password shaped as the RandomPassword's inputs ask, behind a sentinel."""
        length = int(inputs.get("length", 32))
        special = str(inputs.get("overrideSpecial", "")) if inputs.get("special", True) else ""
        pools = [
            (string.ascii_uppercase, int(inputs.get("minUpper", 0))),
            (string.ascii_lowercase, int(inputs.get("minLower", 0))),
            (string.digits, int(inputs.get("minNumeric", 0))),
            (special, int(inputs.get("minSpecial", 0))),
        ]
        alphabet = "".join(pool for pool, _ in pools)
        chars = [secrets.choice(pool) for pool, count in pools if pool for _ in range(count)]
        chars += [secrets.choice(alphabet) for _ in range(length - len(chars))]
        secrets.SystemRandom().shuffle(chars)
        token = secrets.token_hex(16)
        self.generated[token] = "".join(chars)
        return f"@@replay-secret:{token}@@"

    def knows(self, sentinel: Any) -> bool:
        match = _SENTINEL.fullmatch(sentinel) if isinstance(sentinel, str) else None
        return match is not None and match[1] in self.generated

    def resolve(self, value: Any, owner: str) -> Any:
        """``value`` with every sentinel replaced by the password it stands for."""
        if isinstance(value, dict):
            return {k: self.resolve(v, owner) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v, owner) for v in value]
        if isinstance(value, str) and "@@replay-secret:" in value:

            def real(match: re.Match[str]) -> str:
                try:
                    return self.generated[match[1]]
                except KeyError:
                    raise ReplayError(
                        f"{owner}: a password it needs was generated by another process "
                        "(the replay keeps generated passwords in memory only)"
                    ) from None

            return _SENTINEL.sub(real, value)
        return value


@dataclass
class _Node:
    """One custom resource of an evaluated program, ready to diff and apply."""

    planned: PlannedResource
    dependencies: tuple[str, ...]
    #: What the mocks answered for it: for a generated password, its sentinel.
    outputs: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.planned.name

    @property
    def type(self) -> str:
        return self.planned.type

    @property
    def values(self) -> dict[str, Any]:
        return self.planned.values or {}


@dataclass
class _Step:
    op: str  # create, update, replace, same, delete
    name: str
    type: str
    node: _Node | None = None  # the new resource (not for delete)
    old: dict[str, Any] | None = None  # its checkpoint record (not for create)
    diffs: tuple[str, ...] = ()
    delete_before_replace: bool = False


class _Mocks(mocks.Mocks):
    """Outputs as the engine would return them: the checkpoint's for resources it holds,
    inputs echoed for new ones, and a fresh sentinel for each new generated password."""

    def __init__(self, previous: Mapping[str, dict[str, Any]], vault: _Secrets) -> None:
        self.previous, self.vault = previous, vault
        self.states: dict[str, dict[str, Any]] = {}

    def new_resource(self, args: mocks.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        state = _normal(dict(args.inputs))
        old = self.previous.get(args.name)
        if old is not None and old["type"] != args.typ:
            old = None
        if args.typ == RANDOM_PASSWORD:
            kept = old["outputs"].get("result") if old is not None else None
            same = old is not None and old["inputs"] == {
                k: v for k, v in state.items() if k not in old["secretInputs"]
            }
            # A value generated by another process is unknown here: generate anew, so
            # that everything holding it is updated (a rotation, not a stale secret).
            state["result"] = (
                kept if same and self.vault.knows(kept) else self.vault.generate(state)
            )
        elif old is not None:
            for key, value in old["outputs"].items():
                if state.get(key) is None:
                    state[key] = value
        self.states[args.name] = state
        return (old["id"] if old else f"{args.name}-id"), state

    def call(self, args: mocks.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        return {}, None


class _Checkpoint:
    """One stack's state file: resources in apply order, tags, outputs, records."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = (
            json.loads(path.read_text())
            if path.is_file()
            else {"resources": [], "tags": {}, "outputs": {}, "recorded": {}}
        )

    @property
    def resources(self) -> list[dict[str, Any]]:
        return self.data["resources"]  # type: ignore[no-any-return]

    def by_name(self) -> dict[str, dict[str, Any]]:
        return {r["name"]: r for r in self.resources}

    def put(self, record: dict[str, Any]) -> None:
        for index, existing in enumerate(self.resources):
            if existing["name"] == record["name"]:
                self.resources[index] = record
                break
        else:
            self.resources.append(record)
        self.save()

    def drop(self, name: str) -> None:
        self.data["resources"] = [r for r in self.resources if r["name"] != name]
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        # No indent: json's C encoder then does it (saved after every step, this was
        # a tenth of a lifecycle test's time).
        tmp.write_text(json.dumps(self.data, sort_keys=True))
        os.replace(tmp, self.path)


def _order(nodes: list[_Node]) -> list[_Node]:
    """Dependencies first; among independent resources, the program's order."""
    remaining = {n.name: n for n in nodes}
    done: set[str] = set()
    ordered: list[_Node] = []
    while remaining:
        ready = [n for n in remaining.values() if set(n.dependencies) <= done | {n.name}]
        if not ready:
            raise ReplayError(f"dependency cycle among {sorted(remaining)}")
        for node in ready:
            ordered.append(node)
            done.add(node.name)
            del remaining[node.name]
    return ordered


def _reverse_order(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Dependents first: the reverse of a dependency order over the old records."""
    nodes = {r["name"]: r for r in records}
    placed: list[dict[str, Any]] = []
    done: set[str] = set()
    while nodes:
        ready = [
            r for r in nodes.values() if not (set(r["dependencies"]) & set(nodes) - {r["name"]})
        ]
        if not ready:
            raise ReplayError(f"dependency cycle among {sorted(nodes)}")
        for record in ready:
            placed.append(record)
            done.add(record["name"])
            del nodes[record["name"]]
    return list(reversed(placed))


class ReplayBackend:
    """Tenant stacks applied to the real PostgreSQL and RabbitMQ (see the module doc).

    ``ReplayBackend(state_dir)`` works against the project's stack files
    (``root``, default: the checkout), with platform credentials from ``environ``
    (default: the process environment, where ``TENANT_INFRA_RABBITMQ_PASSWORD``
    defaults to ``guest`` and ``VAULT_TOKEN`` is not needed unless ``VAULT_ADDR`` is set).
    """

    def __init__(
        self,
        state_dir: Path | str,
        root: Path | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.workspace = Workspace(root or project_root())
        env = dict(os.environ if environ is None else environ)
        env.setdefault("TENANT_INFRA_RABBITMQ_PASSWORD", "guest")
        #: The operator's environment (verify reads it too).
        self.environ = dict(env)
        if not env.get("VAULT_ADDR"):
            # The program asks for a token even when Vault is only recorded.
            env.setdefault("VAULT_TOKEN", "replay-records-vault")
        self._program_environ = env
        salt_file = self.state_dir / "salt"
        if not salt_file.is_file():
            salt_file.write_text(secrets.token_hex(16))
        self.vault = _Secrets(
            _GENERATED.setdefault(str(self.state_dir), {}), salt_file.read_text().encode()
        )

    # ------------------------------------------------------------ the protocol

    def _checkpoint(self, stack: str, platform: bool = False) -> _Checkpoint:
        folder = "platform" if platform else "stacks"
        return _Checkpoint(self.state_dir / folder / f"{stack}.json")

    def exists(self, tenant: str) -> bool:
        return self._checkpoint(tenant).path.is_file()

    def ensure(self, tenant: str) -> None:
        checkpoint = self._checkpoint(tenant)
        if not checkpoint.path.is_file():
            checkpoint.save()

    def tags(self, tenant: str) -> dict[str, str]:
        return dict(self._existing(tenant).data["tags"])

    def set_tags(self, tenant: str, tags: dict[str, str]) -> None:
        with self._locked(tenant):
            checkpoint = self._existing(tenant)
            checkpoint.data["tags"].update(tags)
            checkpoint.save()

    def outputs(self, tenant: str) -> dict[str, Any]:
        return dict(self._existing(tenant).data["outputs"])

    def remove(self, tenant: str) -> None:
        checkpoint = self._existing(tenant)
        if checkpoint.resources:
            raise ReplayError(
                f"stack {tenant!r} still has {len(checkpoint.resources)} resources; "
                "destroy it first"
            )
        checkpoint.path.unlink()

    def up(self, tenant: str, on_event: EventSink) -> dict[str, Any]:
        with self._locked(tenant), _ENGINE:
            config = self._config(tenant)
            self._ensure_platform(config, on_event)
            checkpoint = self._existing(tenant)
            nodes, _ = self._evaluate_tenant(config, checkpoint)
            self._apply(checkpoint, self._plan(checkpoint, nodes), on_event)
            _, outputs = self._evaluate_tenant(config, checkpoint)
            checkpoint.data["outputs"] = outputs
            checkpoint.save()
            return dict(outputs)

    def refresh(self, tenant: str, on_event: EventSink) -> None:
        """``pulumi refresh``, for the broker's resources: one gone from RabbitMQ
        (its Read gets a 404) leaves the state, so the next ``up`` creates it again.
        PostgreSQL resources are not refreshed here."""
        with self._locked(tenant), _ENGINE:
            checkpoint = self._existing(tenant)
            for record in list(checkpoint.resources):
                kind = str(record["type"])
                if not kind.startswith(RMQ):
                    continue
                provider = self._provider_values(record["provider"], checkpoint)
                if not rmq.exists(kind.removeprefix(RMQ), provider, record["inputs"]):
                    checkpoint.drop(record["name"])

    def preview(self, tenant: str, on_event: EventSink) -> PreviewOutcome:
        with _ENGINE:
            checkpoint = self._existing(tenant)
            nodes, _ = self._evaluate_tenant(self._config(tenant), checkpoint)
            events = []
            changes: dict[str, int] = {}
            for step in self._plan(checkpoint, nodes):
                changes[step.op] = changes.get(step.op, 0) + 1
                if step.op != "same":
                    event = self._event(step, "pre")
                    events.append(event)
                    on_event(event)
            return PreviewOutcome(changes, tuple(events))

    def destroy(self, tenant: str, on_event: EventSink) -> None:
        with self._locked(tenant), _ENGINE:
            checkpoint = self._existing(tenant)
            steps = [
                _Step("delete", r["name"], r["type"], old=r)
                for r in _reverse_order(checkpoint.resources)
            ]
            self._apply(checkpoint, steps, on_event)
            checkpoint.data["outputs"] = {}
            checkpoint.save()

    def up_platform(self, config: PlatformConfig, stack: str, on_event: EventSink) -> None:
        """``pulumi -C platform up`` for ``stack``: the platform program, applied."""
        with self._locked(f"platform-{stack}"), _ENGINE:
            checkpoint = self._checkpoint(stack, platform=True)
            credentials = self._credentials(config.platform)
            nodes, _ = self._evaluate(
                stack,
                pulumi_config_values(config),
                lambda c=credentials: platform_program(c),
                checkpoint,
            )
            self._apply(checkpoint, self._plan(checkpoint, nodes), on_event)

    def destroy_platform(self, stack: str, on_event: EventSink) -> None:
        with self._locked(f"platform-{stack}"), _ENGINE:
            checkpoint = self._checkpoint(stack, platform=True)
            steps = [
                _Step("delete", r["name"], r["type"], old=r)
                for r in _reverse_order(checkpoint.resources)
            ]
            self._apply(checkpoint, steps, on_event)

    # ------------------------------------------------------------ for tests

    def document(self, tenant: str, product: str) -> dict[str, Any]:
        """The service's connections document as its Vault secret holds it (recorded)."""
        for record in self._existing(tenant).resources:
            if record["type"] == "vault:kv/secretV2:SecretV2" and record["inputs"].get(
                "name", ""
            ).endswith(f"tenants/{tenant}/{product}"):
                recorded = self._existing(tenant).data["recorded"][record["name"]]
                return json.loads(self.vault.resolve(recorded, record["name"]))  # type: ignore[no-any-return]
        raise KeyError(f"no recorded Vault secret for {tenant}/{product}")

    def resources(self, tenant: str) -> list[dict[str, Any]]:
        """The checkpoint's records (no secret values)."""
        return list(self._existing(tenant).resources)

    # ------------------------------------------------------------ evaluation

    def _config(self, tenant: str) -> TenantConfig:
        config = self.workspace.read_config(tenant)
        if config is None:
            raise ReplayError(f"no stack file for tenant {tenant!r}")
        return config

    def _existing(self, stack: str, platform: bool = False) -> _Checkpoint:
        checkpoint = self._checkpoint(stack, platform)
        if not checkpoint.path.is_file():
            raise ReplayError(f"no stack named {stack!r} found")
        return checkpoint

    @contextmanager
    def _locked(self, stack: str) -> Iterator[None]:
        """The engine's per-stack update lock: a second update fails at once."""
        (self.state_dir / "locks").mkdir(exist_ok=True)
        with open(self.state_dir / "locks" / f"{stack}.lock", "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise InProgress(f"stack {stack!r} is currently locked by another update") from None
            yield

    def _credentials(self, platform: Platform | None = None) -> PlatformCredentials:
        env = self._program_environ
        if platform is not None and not env.get("VAULT_ADDR"):
            # Vault is only recorded: the stack's own address stands for the operator's.
            env = {**env, "VAULT_ADDR": str(platform.vault.address)}
        return PlatformCredentials(environ=env)

    def _evaluate(
        self,
        stack: str,
        values: dict[str, str],
        program: Callable[[], Any],
        checkpoint: _Checkpoint,
    ) -> tuple[list[_Node], dict[str, Any]]:
        answers = _Mocks(checkpoint.by_name(), self.vault)
        resources, outputs = evaluate(stack, values, program, answers, keep_values=True)
        custom = {r.name for r in resources if r.custom}
        if len(custom) != len([r for r in resources if r.custom]):
            raise ReplayError(f"stack {stack!r}: two resources share a name")
        nodes = [
            _Node(
                r,
                tuple(
                    sorted(
                        ({d for d in r.depends_on if d in custom} | {r.provider} - {None})
                        - {r.name}
                    )
                ),
                answers.states.get(r.name, {}),
            )
            for r in resources
            if r.custom
        ]
        return nodes, outputs

    def _evaluate_tenant(
        self, config: TenantConfig, checkpoint: _Checkpoint
    ) -> tuple[list[_Node], dict[str, Any]]:
        credentials = self._credentials(config.platform)

        def program() -> dict[str, Any]:
            tenant = tenant_program(credentials)
            return {
                "tenant": config.tenant,
                "metadata": dict(config.metadata),
                "services": tenant.outputs(),
            }

        return self._evaluate(config.tenant, pulumi_config_values(config), program, checkpoint)

    def _ensure_platform(self, config: TenantConfig, on_event: EventSink) -> None:
        """The platform program for each SCHEMA-mode product whose shared database is
        missing: the engine would fail on the tenant's schema without it."""
        for spec in config.services:
            if spec.isolation is not IsolationMode.SCHEMA:
                continue
            endpoint = config.platform.postgres_for(spec.product)
            admin = {
                "host": endpoint.host,
                "port": endpoint.port,
                "username": endpoint.admin_user,
                "sslmode": endpoint.sslmode,
                "password": self._credentials().postgres_password_value(spec.product),
            }
            name = pg_shared_database(spec.product)
            with pg.connect(admin, "postgres", transaction=False) as conn:
                found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if found.fetchone():
                    continue
            stack = f"platform-{spec.product}"
            checkpoint = self._checkpoint(stack, platform=True)
            checkpoint.data["resources"] = []  # whatever it held is gone from the server
            checkpoint.save()
            platform = PlatformConfig(
                products=(spec.product,), protect_data=True, platform=config.platform
            )
            self.up_platform(platform, stack, on_event)

    # ------------------------------------------------------------ diff

    def _record(self, node: _Node, step_id: str, outputs: Mapping[str, Any]) -> dict[str, Any]:
        """The checkpoint record of an applied resource: no secret value in it."""
        planned = node.planned
        secret_keys = set(planned.secret_inputs)
        values = _normal(node.values)
        secret_outputs = set(planned.secret_outputs) | secret_keys
        kept_outputs: dict[str, Any] = {}
        masked_outputs: dict[str, str] = {}
        for key, value in _normal(dict(outputs)).items():
            if key == "__provider":
                continue
            if key in secret_outputs and not (
                isinstance(value, str) and _SENTINEL.fullmatch(value)
            ):
                masked_outputs[key] = self.vault.fingerprint(value)
            else:
                kept_outputs[key] = value
        record = {
            "type": planned.type,
            "name": planned.name,
            "id": step_id,
            "provider": planned.provider,
            "dependencies": list(node.dependencies),
            "deletedWith": planned.deleted_with,
            "protect": planned.protect,
            "retainOnDelete": planned.retain_on_delete,
            "inputs": {k: v for k, v in values.items() if k not in secret_keys},
            "secretInputs": {
                k: self.vault.fingerprint(v) for k, v in values.items() if k in secret_keys
            },
            "outputs": kept_outputs,
            "secretOutputs": masked_outputs,
        }
        for key, value in values.items():
            if key in secret_keys - {"__provider"} and not _SENTINEL.search(json.dumps(value)):
                self.vault.seen[record["secretInputs"][key]] = value
        if planned.type.startswith(DYNAMIC):
            # The pickled provider, kept for delete as the engine keeps it in state.
            # It holds code, not credentials (components/migration.py's contract).
            record["providerBlob"] = values["__provider"]
        return record

    def _changed(self, node: _Node, old: dict[str, Any]) -> tuple[str, ...]:
        values = _normal(node.values)
        secret_keys = set(node.planned.secret_inputs) - {"__provider"}
        changed = set()
        for key in set(values) | set(old["inputs"]) | set(old["secretInputs"]):
            if key == "__provider":
                continue
            if key in secret_keys or key in old["secretInputs"]:
                # A secret set, changed or unset (a password removed: the provider
                # sends '' and the server clears it).
                new = self.vault.fingerprint(values[key]) if key in values else None
                if new != old["secretInputs"].get(key):
                    changed.add(key)
            elif values.get(key) != old["inputs"].get(key):
                changed.add(key)
        return tuple(sorted(changed))

    def _plan(self, checkpoint: _Checkpoint, nodes: list[_Node]) -> list[_Step]:
        previous = checkpoint.by_name()
        steps: list[_Step] = []
        for node in _order(nodes):
            old = previous.get(node.name)
            if old is not None and old["type"] != node.type:
                raise ReplayError(f"{node.name}: type changed from {old['type']} to {node.type}")
            if old is None:
                steps.append(_Step("create", node.name, node.type, node))
                continue
            if node.type.startswith(DYNAMIC) and self._runs(node.type):
                steps.append(self._dynamic_diff(node, old))
                continue
            diffs = self._changed(node, old)
            if node.type == RANDOM_PASSWORD and node.outputs.get("result") != old["outputs"].get(
                "result"
            ):
                diffs = ("result",)  # generated anew (see _Mocks)
            if not diffs:
                steps.append(_Step("same", node.name, node.type, node, old))
            elif node.type == RANDOM_PASSWORD or set(diffs) & _force_new(node.type):
                # Every RandomPassword input is RequiresReplace (pulumi-random).
                steps.append(_Step("replace", node.name, node.type, node, old, diffs))
            else:
                steps.append(_Step("update", node.name, node.type, node, old, diffs))
        wanted = {n.name for n in nodes}
        gone = [r for r in checkpoint.resources if r["name"] not in wanted]
        steps += [_Step("delete", r["name"], r["type"], old=r) for r in _reverse_order(gone)]
        return steps

    def _dynamic_diff(self, node: _Node, old: dict[str, Any]) -> _Step:
        """``check`` then ``diff`` of the resource's own provider (olds: its outputs)."""
        provider = _load_provider(node.values["__provider"])
        news = self._checked(provider, node, old)
        result = provider.diff(old["id"], dict(old["outputs"]), news)
        diffs = tuple(self._changed(node, old))
        if result.replaces:
            return _Step(
                "replace",
                node.name,
                node.type,
                node,
                old,
                tuple(result.replaces),
                bool(result.delete_before_replace),
            )
        if result.changes:
            return _Step("update", node.name, node.type, node, old, diffs)
        return _Step("same", node.name, node.type, node, old)

    def _checked(self, provider: Any, node: _Node, old: dict[str, Any] | None) -> dict[str, Any]:
        news = self.vault.resolve(_normal(node.values), node.name)
        result = provider.check(dict(old["inputs"]) if old else {}, news)
        if result.failures:
            reasons = "; ".join(f"{f.property}: {f.reason}" for f in result.failures)
            raise ReplayError(f"{node.name}: check failed: {reasons}")
        return dict(result.inputs)

    # ------------------------------------------------------------ apply

    def _event(self, step: _Step, phase: str) -> ResourceEvent:
        old_outputs = (step.old or {}).get("outputs", {})
        new_values = step.node.values if step.node else {}
        return ResourceEvent(
            op=step.op,
            type=step.type,
            name=step.name,
            phase=phase,
            diffs=step.diffs,
            old_revision=old_outputs.get("revision") if step.type == MIGRATION else None,
            new_revision=new_values.get("head") if step.type == MIGRATION else None,
        )

    def _apply(self, checkpoint: _Checkpoint, steps: list[_Step], on_event: EventSink) -> None:
        # Providers configured by this run's program; deletes of resources whose
        # provider is gone read it back from the checkpoint (_provider_values).
        self._providers = {
            s.name: self.vault.resolve(_normal(s.node.values), s.name)
            for s in steps
            if s.node is not None and s.type.startswith("pulumi:providers:")
        }
        deleting = {s.name for s in steps if s.op == "delete"}
        replaced: list[_Step] = []
        for step in steps:
            if step.op == "same":
                assert step.node is not None and step.old is not None
                record = self._record(step.node, step.old["id"], step.old["outputs"])
                record["secretOutputs"] = step.old["secretOutputs"]
                checkpoint.put(record)
                continue
            on_event(self._event(step, "pre"))
            try:
                if step.op == "delete":
                    assert step.old is not None
                    self._delete(checkpoint, step.old, deleting)
                elif step.op == "replace" and step.delete_before_replace:
                    assert step.old is not None
                    self._delete(checkpoint, step.old, deleting)
                    self._create(checkpoint, step)
                elif step.op == "update":
                    self._update(checkpoint, step)
                else:  # create, or replace: create before delete, the engine's default
                    self._create(checkpoint, step)
                    if step.op == "replace":
                        replaced.append(step)
            except Exception as exc:
                on_event(self._event(step, "failed"))
                raise _step_error(step, exc) from None
            on_event(self._event(step, "done"))
        for step in replaced:  # create-before-delete: the old one goes at the end
            assert step.old is not None
            try:
                self._call_delete(step.old, deleting, checkpoint)
            except Exception as exc:
                raise _step_error(step, exc) from None

    def _create(self, checkpoint: _Checkpoint, step: _Step) -> None:
        node = step.node
        assert node is not None
        outputs, resource_id = self._provider_op("create", node, step.old, checkpoint)
        checkpoint.put(self._record(node, resource_id, outputs))

    def _update(self, checkpoint: _Checkpoint, step: _Step) -> None:
        node = step.node
        assert node is not None and step.old is not None
        outputs, _ = self._provider_op("update", node, step.old, checkpoint, step.diffs)
        checkpoint.put(self._record(node, step.old["id"], outputs))

    def _delete(self, checkpoint: _Checkpoint, old: dict[str, Any], deleting: set[str]) -> None:
        if old["protect"]:
            raise ReplayError(
                f"unable to delete resource {old['name']!r} as it is currently marked for "
                "protection. To unprotect the resource, remove the `protect` flag from the "
                "resource in your Pulumi program and run `pulumi up`"
            )
        self._call_delete(old, deleting, checkpoint)
        checkpoint.drop(old["name"])

    def _call_delete(
        self, old: dict[str, Any], deleting: set[str], checkpoint: _Checkpoint
    ) -> None:
        """The provider's delete, unless the engine would skip it: ``retain_on_delete``,
        or a ``deleted_with`` resource that goes in the same operation."""
        if old["retainOnDelete"] or (old["deletedWith"] and old["deletedWith"] in deleting):
            return
        kind = old["type"]
        values = dict(old["inputs"])
        if kind.startswith(DYNAMIC):
            if self._runs(kind):
                provider = _load_provider(old["providerBlob"])
                provider.delete(old["id"], dict(old["outputs"]))
            return
        if kind.startswith((PG, RMQ)):
            provider = self._old_provider(old, checkpoint)
            _OPS[kind]["delete"](provider, values)
        elif kind.startswith("vault:") and self.environ.get("VAULT_ADDR"):
            self._vault_call("delete", kind, values)

    # ------------------------------------------------------------ providers

    def _runs(self, kind: str) -> bool:
        """Whether a dynamic resource talks to its server here (else it is recorded)."""
        return kind not in MONGO_DYNAMIC or bool(self.environ.get("MONGODB_URL"))

    def _provider_values(self, name: str | None, checkpoint: _Checkpoint) -> dict[str, Any]:
        """A provider's configuration: from this run's program, else from the checkpoint,
        its secrets looked up by fingerprint in memory, then in the environment."""
        if name is None:
            raise ReplayError("resource without a provider")
        current = getattr(self, "_providers", {}).get(name)
        if current is not None:
            return dict(current)
        record = checkpoint.by_name().get(name)
        if record is None:
            raise ReplayError(f"provider {name!r} is in neither the program nor the state")
        values = dict(record["inputs"])
        for key, fingerprint in record["secretInputs"].items():
            value = self.vault.seen.get(fingerprint)
            if value is None:
                value = next(
                    (v for v in self.environ.values() if self.vault.fingerprint(v) == fingerprint),
                    None,
                )
            if value is not None:
                values[key] = value
        return values

    def _old_provider(self, old: dict[str, Any], checkpoint: _Checkpoint) -> dict[str, Any]:
        return self._provider_values(old["provider"], checkpoint)

    def _provider_op(
        self,
        op: str,
        node: _Node,
        old: dict[str, Any] | None,
        checkpoint: _Checkpoint,
        diffs: tuple[str, ...] = (),
    ) -> tuple[dict[str, Any], str]:
        """Run create or update; returns the resource's outputs and id."""
        kind = node.type
        resource_id = old["id"] if old and op == "update" else f"{node.name}-id"
        if kind.startswith("pulumi:providers:") or kind == RANDOM_PASSWORD:
            # Nothing to call: a provider is configuration, and the password was
            # generated when the mocks answered for it (its sentinel is in outputs).
            return dict(node.outputs), resource_id
        if kind.startswith(DYNAMIC):
            if not self._runs(kind):
                return _normal(node.values), resource_id
            provider = _load_provider(node.values["__provider"])
            news = self._checked(provider, node, old)
            if op == "create":
                created = provider.create(news)
                return dict(created.outs or {}), str(created.id)
            updated = provider.update(
                old["id"] if old else "", dict(old["outputs"] if old else {}), news
            )
            return dict(updated.outs or {}), resource_id
        values = self.vault.resolve(_normal(node.values), node.name)
        if kind.startswith((PG, RMQ)):
            provider_values = self._provider_values(node.planned.provider, checkpoint)
            ops = _OPS.get(kind)
            if ops is None:
                raise ReplayError(f"the replay does not know resource type {kind}")
            if op == "create":
                ops["create"](provider_values, values)
            elif kind == PG + "role:Role":
                pg.role_update(
                    provider_values, old["inputs"] if old else {}, values, "password" in diffs
                )
            else:
                ops["update"](provider_values, old["inputs"] if old else {}, values)
            return _normal(node.values), resource_id
        if kind.startswith("vault:"):
            if kind == "vault:kv/secretV2:SecretV2":
                # Recorded with sentinels only: a service's document, read back by tests.
                checkpoint.data["recorded"][node.name] = _normal(node.values)["dataJson"]
            if self.environ.get("VAULT_ADDR"):
                self._vault_call("write", kind, values)
            return _normal(node.values), resource_id
        if kind.startswith("mongodbatlas:"):
            return _normal(node.values), resource_id  # recorded: Atlas is not reachable here
        raise ReplayError(f"the replay does not know resource type {kind}")

    def _vault_call(self, op: str, kind: str, values: Mapping[str, Any]) -> None:
        """Vault's HTTP API, as hashicorp/terraform-provider-vault's kv_secret_v2, policy,
        mount, auth backend and auth role resources call it; only with ``VAULT_ADDR`` set."""
        address = self.environ["VAULT_ADDR"].rstrip("/")
        headers = {"X-Vault-Token": self.environ.get("VAULT_TOKEN", "")}
        if kind == "vault:kv/secretV2:SecretV2":
            base = f"{values['mount']}/%s/{values['name']}"
            if op == "write":
                calls = [("POST", base % "data", {"data": json.loads(values["dataJson"])})]
            else:
                calls = [("DELETE", base % "metadata", None)]
        elif kind == "vault:index/policy:Policy":
            path = f"sys/policies/acl/{values['name']}"
            calls = (
                [("PUT", path, {"policy": values["policy"]})]
                if op == "write"
                else [("DELETE", path, None)]
            )
        elif kind == "vault:index/mount:Mount":
            path = f"sys/mounts/{values['path']}"
            body = {"type": values["type"], "options": values.get("options") or {}}
            calls = [("POST", path, body)] if op == "write" else [("DELETE", path, None)]
        elif kind == "vault:index/authBackend:AuthBackend":
            # auth_backend.go: sys/auth/<path> enabled with its type, disabled on delete.
            path = f"sys/auth/{values['path']}"
            body = {"type": values["type"], "description": values.get("description", "")}
            calls = [("POST", path, body)] if op == "write" else [("DELETE", path, None)]
        elif kind in VAULT_AUTH_ROLES:
            # approle_auth_backend_role.go and kubernetes_auth_backend_role.go: the role's
            # fields (token_* from tokenutil) written at auth/<backend>/role/<name>.
            path = f"auth/{values['backend']}/role/{values['roleName']}"
            body = {
                _snake(key): value
                for key, value in values.items()
                if key not in ("backend", "roleName") and value is not None
            }
            calls = [("POST", path, body)] if op == "write" else [("DELETE", path, None)]
        else:
            raise ReplayError(f"the replay does not know resource type {kind}")
        for method, path, body in calls:
            response = requests.request(
                method, f"{address}/v1/{path}", headers=headers, json=body, timeout=15
            )
            if response.status_code >= 400 and not (
                method == "DELETE" and response.status_code == 404
            ):
                raise ReplayError(f"Vault {method} {path}: HTTP {response.status_code}")


#: Vault auth roles (the upstream provider's approle and kubernetes role resources).
VAULT_AUTH_ROLES = frozenset(
    {
        "vault:appRole/authBackendRole:AuthBackendRole",
        "vault:kubernetes/authBackendRole:AuthBackendRole",
    }
)


def _snake(key: str) -> str:
    """A provider input's name as Vault's API spells it (``tokenTtl`` → ``token_ttl``)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()


def _load_provider(blob: str) -> Any:
    """The engine's dill round trip (pulumi.dynamic.__main__.get_provider)."""
    return dill.loads(base64.b64decode(blob))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _force_new(kind: str) -> frozenset[str]:
    if kind.startswith(PG):
        return pg.FORCE_NEW.get(kind.removeprefix(PG), frozenset())
    if kind.startswith(RMQ):
        return rmq.FORCE_NEW.get(kind.removeprefix(RMQ), frozenset())
    if kind.startswith("vault:"):
        return frozenset({"mount", "name", "path", "type", "backend", "roleName"})
    return frozenset()


def _policy_ops(kind: str) -> dict[str, Callable[..., None]]:
    return {
        "create": lambda p, v: rmq.policy_create(kind, p, v),
        "update": lambda p, _o, v: rmq.policy_create(kind, p, v),
        "delete": lambda p, v: rmq.policy_delete(kind, p, v),
    }


_OPS: dict[str, dict[str, Callable[..., None]]] = {
    PG + "role:Role": {"create": pg.role_create, "delete": pg.role_delete},
    PG + "database:Database": {
        "create": pg.database_create,
        "update": pg.database_update,
        "delete": pg.database_delete,
    },
    PG + "schema:Schema": {
        "create": pg.schema_create,
        "update": pg.schema_update,
        "delete": pg.schema_delete,
    },
    PG + "grant:Grant": {
        "create": pg.grant_create,
        "update": pg.grant_update,
        "delete": pg.grant_delete,
    },
    PG + "defaultPrivileges:DefaultPrivileges": {
        "create": pg.default_privileges_create,
        "update": pg.default_privileges_update,
        "delete": pg.default_privileges_delete,
    },
    RMQ + "vHost:VHost": {
        "create": rmq.vhost_create,
        "update": rmq.vhost_update,
        "delete": rmq.vhost_delete,
    },
    RMQ + "user:User": {
        "create": rmq.user_create,
        "update": rmq.user_update,
        "delete": rmq.user_delete,
    },
    RMQ + "permissions:Permissions": {
        "create": rmq.permissions_create,
        "update": rmq.permissions_update,
        "delete": rmq.permissions_delete,
    },
    RMQ + "policy:Policy": _policy_ops("policy:Policy"),
    RMQ + "operatorPolicy:OperatorPolicy": _policy_ops("operatorPolicy:OperatorPolicy"),
}
