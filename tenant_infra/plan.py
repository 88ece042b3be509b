"""The offline plan: the tenant program evaluated under Pulumi's mock runtime.

No Pulumi CLI, no credentials, no network: the same program ``pulumi up`` runs is
executed against a monitor that records every resource registration. Secret values
never leave this module in plain text; they are replaced by ``"[secret]"``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import pulumi
from google.protobuf import json_format
from pulumi.runtime import mocks

from tenant_infra.config import NAMESPACE, PlatformConfig, TenantConfig
from tenant_infra.credentials import PLACEHOLDER, PlatformCredentials
from tenant_infra.errors import InvalidInput
from tenant_infra.program import platform_program, tenant_program

PROJECT = "tenant-infra"

# Pulumi's wire signatures (sdk/python/lib/pulumi/runtime/rpc.py).
_SIG = "4dabf18193072939515e22adb298388d"
_SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"
_RESOURCE_SIG = "5cf8f73096256a8f31e491e813e4eb8e"
_UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"


@dataclass(frozen=True)
class PlannedResource:
    """One resource the stack would declare, with its inputs (secrets masked)."""

    type: str
    name: str
    parent: str | None
    inputs: dict[str, Any]
    custom: bool
    protect: bool
    retain_on_delete: bool
    deleted_with: str | None
    provider: str | None
    #: Logical names of the resources this one explicitly depends on.
    depends_on: tuple[str, ...] = ()
    #: Input keys whose value is secret (at any depth below the key).
    secret_inputs: frozenset[str] = field(default_factory=frozenset)
    #: SHA-256 of each secret input's value: lets tests prove two credentials differ
    #: without the plan ever holding one in plain text.
    secret_fingerprints: dict[str, str] = field(default_factory=dict, compare=False)
    #: The inputs unmasked (secret wrappers removed), only when :func:`evaluate` is
    #: asked for them: the replay backend applies these. Never in a plan shown to anyone.
    values: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    #: Output keys the resource asked to be secret (``additional_secret_outputs``).
    secret_outputs: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "parent": self.parent, "inputs": self.inputs}


@dataclass(frozen=True)
class Plan:
    tenant: str
    resources: tuple[PlannedResource, ...]
    #: The stack outputs, secrets masked (not part of the JSON document).
    outputs: Any = field(default_factory=dict, compare=False)
    #: Fleet-wide findings with this tenant as planned (:mod:`tenant_infra.budget`).
    problems: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "resources": [r.to_json() for r in self.resources],
            "problems": list(self.problems),
        }

    def by_name(self, name: str) -> PlannedResource:
        return next(r for r in self.resources if r.name == name)

    def of_type(self, type_: str) -> list[PlannedResource]:
        return [r for r in self.resources if r.type == type_]

    def service_of(self, resource: PlannedResource) -> str | None:
        """The ``TenantService`` a resource belongs to, if any (for grouping)."""
        parents = {r.name: r for r in self.resources}
        current: PlannedResource | None = resource
        while current is not None:
            if current.type.endswith(":tenant:TenantService"):
                return current.name
            current = parents.get(current.parent) if current.parent else None
        return None


def _name_of(urn: str) -> str:
    return urn.rsplit("::", 1)[-1]


def _mask(value: Any) -> tuple[Any, bool]:
    """Replace secrets by the placeholder and resource references by their name."""
    if isinstance(value, dict):
        sig = value.get(_SIG)
        if sig == _SECRET_SIG:
            return PLACEHOLDER, True
        if sig == _RESOURCE_SIG:
            return _name_of(str(value.get("urn", ""))), False
        masked, any_secret = {}, False
        for key, item in value.items():
            masked[key], secret = _mask(item)
            any_secret |= secret
        return masked, any_secret
    if isinstance(value, list):
        pairs = [_mask(item) for item in value]
        return [p[0] for p in pairs], any(p[1] for p in pairs)
    if value == _UNKNOWN:
        return "[unknown]", False
    if isinstance(value, float) and value.is_integer():
        # protobuf Structs carry every number as a double.
        return int(value), False
    return value, False


class _PlanMocks(mocks.Mocks):
    """Resources echo their inputs; generated passwords get a distinct fake per URN."""

    def new_resource(self, args: mocks.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        state = dict(args.inputs)
        if args.typ == "random:index/randomPassword:RandomPassword":
            state["result"] = hashlib.sha256(args.name.encode()).hexdigest()[:32]
        return f"{args.name}-id", state

    def call(self, args: mocks.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        return {}, None


def _unwrap(value: Any) -> Any:
    """``value`` with secret wrappers removed and resource references as names."""
    if isinstance(value, dict):
        sig = value.get(_SIG)
        if sig == _SECRET_SIG:
            return _unwrap(value.get("value"))
        if sig == _RESOURCE_SIG:
            return _name_of(str(value.get("urn", "")))
        return {key: _unwrap(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_unwrap(item) for item in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class _RecordingMonitor(mocks.MockMonitor):
    def __init__(self, resource_mocks: mocks.Mocks | None = None, keep_values: bool = False):
        super().__init__(resource_mocks or _PlanMocks())
        self.recorded: list[PlannedResource] = []
        self.outputs: Any = {}
        self.keep_values = keep_values

    def RegisterResource(self, request: Any) -> Any:
        if request.type != "pulumi:pulumi:Stack":
            raw = json_format.MessageToDict(request.object)
            inputs: dict[str, Any] = {}
            fingerprints: dict[str, str] = {}
            for key, value in raw.items():
                inputs[key], secret = _mask(value)
                if key == "__provider":  # the pickled dynamic provider: always secret
                    inputs[key], secret = PLACEHOLDER, True
                if secret:
                    digest = hashlib.sha256(json.dumps(value, sort_keys=True).encode())
                    fingerprints[key] = digest.hexdigest()
            parent = _name_of(request.parent) if request.parent else None
            if parent is not None and request.parent.split("::")[-2].endswith("pulumi:Stack"):
                parent = None
            # A provider reference is "<urn>::<id>"; the logical name precedes the id.
            provider = request.provider.split("::")[-2] if request.provider else None
            self.recorded.append(
                PlannedResource(
                    type=request.type,
                    name=request.name,
                    parent=parent,
                    inputs=inputs,
                    custom=bool(request.custom),
                    protect=bool(request.protect),
                    retain_on_delete=bool(request.retainOnDelete),
                    deleted_with=_name_of(request.deletedWith) if request.deletedWith else None,
                    provider=provider,
                    depends_on=tuple(sorted(_name_of(urn) for urn in request.dependencies)),
                    secret_inputs=frozenset(fingerprints),
                    secret_fingerprints=fingerprints,
                    values=_unwrap(raw) if self.keep_values else None,
                    secret_outputs=tuple(request.additionalSecretOutputs),
                )
            )
        return super().RegisterResource(request)  # type: ignore[no-untyped-call]


def pulumi_config_values(config: TenantConfig | PlatformConfig) -> dict[str, str]:
    """The config as Pulumi holds it: ``namespace:key`` to a string (objects as JSON)."""
    data = config.model_dump(by_alias=True, mode="json", exclude_defaults=False)
    return {
        f"{NAMESPACE}:{key}": value if isinstance(value, str) else json.dumps(value)
        for key, value in data.items()
    }


def evaluate(
    stack: str,
    values: dict[str, str],
    program: Callable[[], Any],
    resource_mocks: mocks.Mocks | None = None,
    keep_values: bool = False,
) -> tuple[list[PlannedResource], dict[str, Any]]:
    """Run ``program`` under the mock runtime; return what it registered and its outputs.

    ``resource_mocks`` decides each resource's outputs (default: inputs echoed, fake
    passwords); ``keep_values`` keeps the unmasked inputs in ``PlannedResource.values``.
    """
    try:
        asyncio.get_event_loop()
    except RuntimeError:  # a worker thread: the mock runtime needs a loop of its own
        asyncio.set_event_loop(asyncio.new_event_loop())
    monitor = _RecordingMonitor(resource_mocks, keep_values)
    pulumi.runtime.set_all_config(values, [])
    pulumi.runtime.set_mocks(
        monitor.mocks, project=PROJECT, stack=stack, preview=False, monitor=monitor
    )

    @pulumi.runtime.test  # type: ignore[untyped-decorator]
    def evaluate() -> pulumi.Output[None]:
        outputs = pulumi.Output.from_input(program())

        def record(args: list[Any]) -> None:
            values, is_secret = args
            # A secret anywhere inside makes the whole output secret: mask it all.
            monitor.outputs = PLACEHOLDER if is_secret else values

        is_secret = pulumi.Output.from_input(cast(Awaitable[Any], outputs.is_secret()))
        return pulumi.Output.all(outputs, is_secret).apply(record)

    try:
        evaluate()
    except pulumi.RunError as exc:  # the program's own refusal: one line, no traceback
        raise InvalidInput(str(exc).strip().splitlines()[0] if str(exc).strip() else "") from None
    resources = sorted(monitor.recorded, key=lambda r: (r.parent or "", r.name, r.type))
    return resources, monitor.outputs


def plan(config: TenantConfig) -> Plan:
    """Every resource the tenant's stack would declare, evaluated offline."""
    resources, outputs = evaluate(
        config.tenant,
        pulumi_config_values(config),
        lambda: {"services": tenant_program(PlatformCredentials.for_plan()).outputs()},
    )
    return Plan(config.tenant, tuple(resources), outputs)


def plan_platform(config: PlatformConfig, stack: str) -> Plan:
    """Every resource the platform stack would declare, evaluated offline."""
    resources, outputs = evaluate(
        stack,
        pulumi_config_values(config),
        lambda: platform_program(PlatformCredentials.for_plan()),
    )
    return Plan(stack, tuple(resources), outputs)
