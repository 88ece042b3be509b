"""The policy pack's rules over real resource graphs: the example stacks' offline plans
pass; each mutation that breaks isolation is caught by the rule named for it.

The rules are plain functions (tenant_infra.guardrails), so this runs without
pulumi_policy; policy/tenant_policies.py only adapts them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from tenant_infra import commands
from tenant_infra.config import TenantConfig
from tenant_infra.guardrails import (
    KUBERNETES_ROLE,
    UNKNOWN,
    Context,
    Resource,
    check_stack,
    plain,
    stack_of,
)
from tenant_infra.plan import Plan, PlannedResource, plan

STACKS = ["acme", "globex", "dev"]


def resources(plan: Plan) -> list[Resource]:
    return [
        Resource(r.type, r.name, r.inputs, r.protect, r.secret_inputs)
        for r in plan.resources
        if r.custom
    ]


def context(tenant: str) -> Context:
    config = commands.resolve_config(tenant)
    return Context(tenant, require_protect=config.protect_data)


@pytest.fixture(scope="module")
def plans() -> dict[str, Plan]:
    return {tenant: commands.plan(tenant) for tenant in STACKS}


@pytest.mark.parametrize("tenant", STACKS)
def test_the_example_stacks_pass_every_rule(plans, tenant) -> None:
    assert check_stack(resources(plans[tenant]), context(tenant)) == []


def test_a_plan_for_another_tenant_is_checked_against_its_own_names(plans) -> None:
    """The rules follow the stack name: globex's graph under stack acme is all wrong."""
    found = check_stack(resources(plans["globex"]), Context("acme"))
    assert {v.policy for v in found} >= {
        "tenant-prefixed-names",
        "vault-paths-own-tenant",
        "rabbitmq-permissions-own-vhost",
    }


Mutation = Callable[[PlannedResource], PlannedResource]


def with_inputs(**changes) -> Mutation:
    def mutate(r: PlannedResource) -> PlannedResource:
        inputs = {k: v for k, v in (r.inputs | changes).items() if v is not None}
        return dataclasses.replace(r, inputs=inputs)

    return mutate


def mutated(plan: Plan, type_suffix: str, mutate: Mutation) -> list[Resource]:
    out = []
    hit = False
    for r in plan.resources:
        if r.custom and r.type.endswith(type_suffix) and not hit:
            r, hit = mutate(r), True
        out.append(r)
    assert hit, type_suffix
    return resources(Plan(plan.tenant, tuple(out)))


CASES = [
    ("role:Role", with_inputs(superuser=True), "no-privileged-principals", "role has superuser"),
    ("role:Role", with_inputs(createRole=True), "no-privileged-principals", "role has createRole"),
    ("role:Role", with_inputs(createDatabase=True), "no-privileged-principals", "createDatabase"),
    ("role:Role", with_inputs(replication=True), "no-privileged-principals", "replication"),
    (
        "role:Role",
        with_inputs(bypassRowLevelSecurity=True),
        "no-privileged-principals",
        "bypassRowLevelSecurity",
    ),
    ("role:Role", with_inputs(roles=["pg_read_all_data"]), "no-privileged-principals", "member of"),
    ("role:Role", with_inputs(name="ledger_acme"), "tenant-prefixed-names", "name 'ledger_acme'"),
    (
        "role:Role",
        with_inputs(connectionLimit=None),
        "limits-present",
        "connectionLimit is not set",
    ),
    ("role:Role", with_inputs(statementTimeout=0), "limits-present", "statementTimeout is not set"),
    (
        "schema:Schema",
        with_inputs(name="tenant_acme"),
        "tenant-prefixed-names",
        "name 'tenant_acme'",
    ),
    ("grant:Grant", with_inputs(role="ledger_acme"), "tenant-prefixed-names", "role 'ledger_acme'"),
    ("vHost:VHost", with_inputs(name="acme"), "tenant-prefixed-names", "name 'acme'"),
    ("vHost:VHost", with_inputs(maxQueues=None), "limits-present", "maxQueues is not set"),
    ("vHost:VHost", with_inputs(maxConnections="-1"), "limits-present", "maxConnections"),
    ("user:User", with_inputs(tags=["management"]), "no-privileged-principals", "tags"),
    (
        "permissions:Permissions",
        with_inputs(vhost="acme"),
        "rabbitmq-permissions-own-vhost",
        "vhost 'acme'",
    ),
    (
        "permissions:Permissions",
        with_inputs(vhost="/"),
        "rabbitmq-permissions-own-vhost",
        "vhost '/'",
    ),
    (
        "permissions:Permissions",
        with_inputs(user="ledger_acme"),
        "rabbitmq-permissions-own-vhost",
        "user 'ledger_acme'",
    ),
    (
        "secretV2:SecretV2",
        with_inputs(name="tenants/acme/ledger"),
        "vault-paths-own-tenant",
        "tenants/acme/ledger",
    ),
    (
        "policy:Policy",
        with_inputs(policy='path "tenants-kv/data/tenants/*" { capabilities = ["read"] }'),
        "vault-paths-own-tenant",
        "tenants/*",
    ),
    (
        "policy:Policy",
        with_inputs(
            policy='path "tenants-kv/data/tenants/globex/ledger" { capabilities = ["read", "update"] }'
        ),
        "vault-paths-own-tenant",
        "['update']",
    ),
    (
        "policy:Policy",
        with_inputs(name="tenant-acme-ledger"),
        "vault-paths-own-tenant",
        "policy name",
    ),
    (
        "policy:Policy",
        with_inputs(policy='path "auth/token/create" { capabilities = ["update"] }'),
        "vault-paths-own-tenant",
        "auth/token/create",
    ),
    (
        "policy:Policy",
        with_inputs(policy='path "auth/token/renew-self" { capabilities = ["update", "sudo"] }'),
        "vault-paths-own-tenant",
        "['sudo']",
    ),
    (
        "authBackendRole:AuthBackendRole",
        with_inputs(tokenPolicies=["tenant-globex-tracer"]),
        "vault-auth-role-own-policy",
        "not only ['tenant-globex-ledger']",
    ),
    (
        "authBackendRole:AuthBackendRole",
        with_inputs(tokenPolicies=["tenant-globex-ledger", "default"]),
        "vault-auth-role-own-policy",
        "'default'",
    ),
    (
        "authBackendRole:AuthBackendRole",
        with_inputs(tokenPolicies=["tenant-acme-ledger"]),
        "vault-auth-role-own-policy",
        "tenant-acme-ledger",
    ),
    (
        "authBackendRole:AuthBackendRole",
        with_inputs(roleName="tenant-acme-ledger"),
        "vault-auth-role-own-policy",
        "role 'tenant-acme-ledger'",
    ),
    (
        "authBackendRole:AuthBackendRole",
        with_inputs(tokenNoDefaultPolicy=None),
        "vault-auth-role-own-policy",
        "default policy",
    ),
    (
        "authBackendRole:AuthBackendRole",
        with_inputs(bindSecretId=False),
        "vault-auth-role-own-policy",
        "needs no SecretID",
    ),
    (
        "authBackendRole:AuthBackendRole",
        with_inputs(tokenTtl=None),
        "limits-present",
        "tokenTtl is not set",
    ),
    (
        "authBackendRole:AuthBackendRole",
        with_inputs(tokenMaxTtl=0),
        "limits-present",
        "tokenMaxTtl is not set",
    ),
]


@pytest.mark.parametrize(("type_suffix", "mutate", "policy", "message"), CASES)
def test_each_bad_graph_is_caught_by_the_named_rule(
    plans, type_suffix, mutate, policy, message
) -> None:
    found = check_stack(mutated(plans["globex"], type_suffix, mutate), context("globex"))
    assert found, "mutation not detected"
    # A renamed vhost also leaves the tenant's own vhost without its queue policy.
    assert policy in {v.policy for v in found} <= {policy, "queue-limit-per-vhost"}, found
    assert any(message in v.message for v in found), found


def kubernetes_plan() -> Plan:
    config = commands.resolve_config("globex")
    vault = config.platform.vault.model_dump(by_alias=True) | {
        "auth": {
            "method": "kubernetes",
            "serviceAccounts": {
                "default": {"namespace": "{product}", "serviceAccount": "{tenant}"}
            },
        }
    }
    platform = config.platform.model_dump(by_alias=True) | {"vault": vault}
    return plan(TenantConfig.model_validate(config.model_dump() | {"platform": platform}))


def test_kubernetes_roles_pass_and_a_wildcard_binding_is_caught() -> None:
    good = kubernetes_plan()
    assert good.of_type(KUBERNETES_ROLE)
    assert check_stack(resources(good), context("globex")) == []
    for key in ("boundServiceAccountNames", "boundServiceAccountNamespaces"):
        bad = mutated(
            good, "kubernetes/authBackendRole:AuthBackendRole", with_inputs(**{key: ["*"]})
        )
        found = check_stack(bad, context("globex"))
        assert [(v.policy, v.message) for v in found] == [
            ("vault-auth-role-own-policy", f"{key} is ['*'], not one name")
        ]


def test_a_password_that_is_not_secret_is_caught(plans) -> None:
    def leak(r: PlannedResource) -> PlannedResource:
        return dataclasses.replace(r, secret_inputs=r.secret_inputs - {"password"})

    for suffix in ("role:Role", "user:User", "providers:rabbitmq"):
        found = check_stack(mutated(plans["globex"], suffix, leak), context("globex"))
        assert [(v.policy, v.message) for v in found] == [
            ("credentials-are-secret", "password is not a secret")
        ], suffix


def test_unprotected_data_is_caught_unless_the_stack_opts_out(plans) -> None:
    def unprotect(r: PlannedResource) -> PlannedResource:
        return dataclasses.replace(r, protect=False)

    for suffix in ("database:Database", "schema:Schema", "vHost:VHost"):
        graph = mutated(plans["acme"], suffix, unprotect)
        found = check_stack(graph, context("acme"))
        assert [v.policy for v in found] == ["data-protected"], suffix
        assert check_stack(graph, Context("acme", require_protect=False)) == []


def test_a_vhost_without_a_queue_limit_policy_is_caught(plans) -> None:
    graph = [r for r in resources(plans["globex"]) if not r.type.endswith("OperatorPolicy")]
    found = check_stack(graph, context("globex"))
    assert [(v.policy, v.resource) for v in found] == [
        ("queue-limit-per-vhost", "globex-rabbitmq-vhost")
    ]


def test_an_operator_policy_without_a_byte_cap_is_caught(plans) -> None:
    def count_only(r: PlannedResource) -> PlannedResource:
        policy = dict(r.inputs["policy"])
        policy["definition"] = {"max-length": policy["definition"]["max-length"]}
        return dataclasses.replace(r, inputs={**r.inputs, "policy": policy})

    graph = mutated(plans["globex"], "operatorPolicy:OperatorPolicy", count_only)
    found = check_stack(graph, context("globex"))
    assert [(v.policy, v.resource) for v in found] == [
        ("queue-limit-per-vhost", "globex-rabbitmq-vhost")
    ]


def test_a_grant_to_public_is_caught(plans) -> None:
    def open_up(r: PlannedResource) -> PlannedResource:
        if r.inputs.get("role") != "public":
            return r
        return dataclasses.replace(r, inputs=r.inputs | {"privileges": ["CONNECT"]})

    out = [open_up(r) for r in plans["acme"].resources]
    found = check_stack(resources(Plan("acme", tuple(out))), context("acme"))
    assert {(v.policy, v.message) for v in found} == {
        ("no-privileged-principals", "grants ['CONNECT'] to PUBLIC")
    }


def test_a_logical_name_outside_the_tenant_prefix_is_caught(plans) -> None:
    graph = resources(plans["globex"])
    graph[0] = dataclasses.replace(graph[0], name="shared-" + graph[0].name)
    found = check_stack(graph, context("globex"))
    assert [v.policy for v in found] == ["tenant-prefixed-names"]


def test_unknown_values_are_skipped_not_flagged() -> None:
    class Unknown(Exception):
        pass

    class Props(dict):
        def __getitem__(self, key):
            if key == "vhost":
                raise Unknown
            return super().__getitem__(key)

    props = plain(Props(vhost="?", user="ledger_globex"), (Unknown,))
    assert props == {"vhost": UNKNOWN, "user": "ledger_globex"}
    permission = Resource(
        "rabbitmq:index/permissions:Permissions", "globex-ledger-rabbitmq-permissions", props
    )
    assert check_stack([permission], Context("globex")) == []


def test_the_stack_comes_from_the_urn() -> None:
    assert (
        stack_of("urn:pulumi:globex-eu::tenant-infra::rabbitmq:index/vHost:VHost::x") == "globex-eu"
    )
