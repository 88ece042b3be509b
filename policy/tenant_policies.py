"""The tenant-infra guardrails (``tenant_infra.guardrails``) as pulumi_policy policies.

Importable without starting anything: ``__main__.py`` builds the ``PolicyPack``
(whose constructor starts the gRPC server) from :func:`policies`. The stack under
preview is the tenant (its name is the tenant id). Configuration
(``--policy-pack-config FILE``):

- ``data-protected.unprotectedStacks``: stacks whose data is disposable
  (``protectData: false``), default ``["dev"]``;
- every policy: ``tenantProject`` (default ``tenant-infra``): other projects (the
  platform) are not tenant stacks and are skipped.

``credentials-are-secret`` cannot be judged here: pulumi_policy hands ``validate``
the props with secrets already unwrapped. It is enforced on the offline plan, which
records secretness exactly, by tests/policy/test_guardrails.py in CI.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    ResourceValidationPolicy,
    StackValidationPolicy,
)
from pulumi_policy.proxy import UnknownValueError

from tenant_infra import guardrails

TENANT_PROJECT = "tenant-infra"
DEFAULT_UNPROTECTED = ["dev"]


def _context(urn: str, config: Any) -> guardrails.Context | None:
    if guardrails.project_of(urn) != (config.get("tenantProject") or TENANT_PROJECT):
        return None
    stack = guardrails.stack_of(urn)
    unprotected = config.get("unprotectedStacks") or DEFAULT_UNPROTECTED
    return guardrails.Context(tenant=stack, require_protect=stack not in unprotected)


def _resource(resource_type: str, props: Any, name: str, opts: Any) -> guardrails.Resource:
    return guardrails.Resource(
        type=resource_type,
        name=name,
        props=guardrails.plain(props, (UnknownValueError,)),
        protect=bool(getattr(opts, "protect", False)),
        secret_props=None,  # not visible to pulumi_policy validations (see above)
    )


def _resource_policy(policy: str) -> ResourceValidationPolicy:
    rule = guardrails.RESOURCE_RULES[policy]

    def validate(args: Any, report_violation: Any) -> None:
        ctx = _context(args.urn, args.get_config())
        if ctx is None:
            return
        resource = _resource(args.resource_type, args.props, args.name, args.opts)
        for message in rule(resource, ctx):
            report_violation(message, args.urn)

    return ResourceValidationPolicy(
        name=policy,
        description=guardrails.DESCRIPTIONS[policy],
        validate=validate,
        enforcement_level=EnforcementLevel.MANDATORY,
        config_schema=PolicyConfigSchema(
            properties={
                "tenantProject": {"type": "string"},
                "unprotectedStacks": {"type": "array", "items": {"type": "string"}},
            }
        ),
    )


def _stack_policy(policy: str) -> StackValidationPolicy:
    rule = guardrails.STACK_RULES[policy]

    def validate(args: Any, report_violation: Any) -> None:
        if not args.resources:
            return
        ctx = _context(args.resources[0].urn, args.get_config())
        if ctx is None:
            return
        resources = [_resource(r.resource_type, r.props, r.name, r.opts) for r in args.resources]
        urns = {r.name: r.urn for r in args.resources}
        for name, message in rule(resources, ctx):
            report_violation(message, urns.get(name))

    return StackValidationPolicy(
        name=policy,
        description=guardrails.DESCRIPTIONS[policy],
        validate=validate,
        enforcement_level=EnforcementLevel.MANDATORY,
        config_schema=PolicyConfigSchema(properties={"tenantProject": {"type": "string"}}),
    )


def _budget_policy() -> StackValidationPolicy:
    """The fleet's connection budget (``tenant_infra.budget``): every stack file of the
    project (``projectDir``, default the working directory) read, since one stack's
    resources cannot show what the others use of a shared server."""

    def validate(args: Any, report_violation: Any) -> None:
        if not args.resources:
            return
        config = args.get_config()
        if _context(args.resources[0].urn, config) is None:
            return
        from tenant_infra import budget
        from tenant_infra.errors import InvalidInput
        from tenant_infra.workspace import Workspace

        workspace = Workspace(Path(config.get("projectDir") or "."))
        configs = []
        for tenant in workspace.tenants():
            try:
                found = workspace.read_config(tenant)
            except InvalidInput:
                continue
            if found is not None:
                configs.append(found)
        for problem in budget.problems(configs):
            report_violation(problem)

    return StackValidationPolicy(
        name="connection-budget",
        description="The tenants' connection limits on each shared server leave the "
        "platform's reserved headroom under its declared maximum.",
        validate=validate,
        enforcement_level=EnforcementLevel.MANDATORY,
        config_schema=PolicyConfigSchema(
            properties={"tenantProject": {"type": "string"}, "projectDir": {"type": "string"}}
        ),
    )


def policies() -> list[Any]:
    return (
        [_resource_policy(p) for p in guardrails.RESOURCE_RULES]
        + [_stack_policy(p) for p in guardrails.STACK_RULES]
        + [_budget_policy()]
    )
