"""Policy guardrails over a tenant stack's resource graph, as plain functions.

``policy/__main__.py`` wires these into a pulumi_policy ``PolicyPack`` run with
``pulumi preview --policy-pack policy``; the unit tests run them over the offline
plan (good graphs) and mutated plans (bad graphs) without pulumi_policy installed.

A resource is seen as its type, logical name, input props (camelCase, as the
engine and the offline plan show them), ``protect`` and, where the caller can tell,
which props are secret. The stack name is the tenant id (one stack per tenant), so
every rule knows whose names are allowed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from tenant_infra.catalog import load_catalog
from tenant_infra.tenant import TenantNames, pg_shared_database

ROLE: Final = "postgresql:index/role:Role"
DATABASE: Final = "postgresql:index/database:Database"
SCHEMA: Final = "postgresql:index/schema:Schema"
GRANT: Final = "postgresql:index/grant:Grant"
GRANT_ROLE: Final = "postgresql:index/grantRole:GrantRole"
DEFAULT_PRIVILEGES: Final = "postgresql:index/defaultPrivileges:DefaultPrivileges"
VHOST: Final = "rabbitmq:index/vHost:VHost"
BROKER_USER: Final = "rabbitmq:index/user:User"
PERMISSIONS: Final = "rabbitmq:index/permissions:Permissions"
TOPIC_PERMISSIONS: Final = "rabbitmq:index/topicPermissions:TopicPermissions"
OPERATOR_POLICY: Final = "rabbitmq:index/operatorPolicy:OperatorPolicy"
BROKER_POLICY: Final = "rabbitmq:index/policy:Policy"
VAULT_SECRET: Final = "vault:kv/secretV2:SecretV2"
VAULT_POLICY: Final = "vault:index/policy:Policy"
APPROLE_ROLE: Final = "vault:appRole/authBackendRole:AuthBackendRole"
KUBERNETES_ROLE: Final = "vault:kubernetes/authBackendRole:AuthBackendRole"
VAULT_AUTH_ROLES: Final = frozenset({APPROLE_ROLE, KUBERNETES_ROLE})
ATLAS_USER: Final = "mongodbatlas:index/databaseUser:DatabaseUser"
MONGO_USER: Final = "pulumi-python:dynamic/tenant:MongoUser"

#: Resources holding tenant data: ``protect``ed unless the stack opts out.
DATA_HOLDING: Final = frozenset({DATABASE, SCHEMA, VHOST})

#: Props that carry a credential, by resource type (providers by prefix).
CREDENTIAL_PROPS: Final[Mapping[str, tuple[str, ...]]] = {
    ROLE: ("password",),
    BROKER_USER: ("password",),
    VAULT_SECRET: ("dataJson",),
    ATLAS_USER: ("password",),
    MONGO_USER: ("password",),
    "pulumi:providers:postgresql": ("password",),
    "pulumi:providers:rabbitmq": ("password",),
    "pulumi:providers:vault": ("token",),
    "pulumi:providers:mongodbatlas": ("privateKey",),
}

#: Role attributes a tenant role must never have (provider input names).
PRIVILEGED_ROLE_PROPS: Final = (
    "superuser",
    "createRole",
    "createDatabase",
    "replication",
    "bypassRowLevelSecurity",
)


@dataclass(frozen=True)
class Resource:
    type: str
    name: str
    props: Mapping[str, Any]
    protect: bool = False
    #: Props known to be secret; ``None`` when the caller cannot tell (see README).
    secret_props: frozenset[str] | None = None


@dataclass(frozen=True)
class Context:
    tenant: str
    #: False for stacks whose config sets ``protectData: false`` (disposable data).
    require_protect: bool = True

    @property
    def names(self) -> TenantNames:
        return TenantNames(self.tenant)

    def principals(self) -> set[str]:
        """Every broker/MongoDB user name a service of this tenant may have."""
        return {self.names.service(p).principal for p in load_catalog().products}

    def pg_logins(self) -> set[str]:
        """Every PostgreSQL login a service of this tenant may have, any generation."""
        return {
            login for p in load_catalog().products for login in self.names.service(p).pg_logins()
        }

    def databases(self) -> set[str]:
        """Databases a tenant stack may touch: its dedicated ones and the shared ones."""
        products = load_catalog().products
        dedicated = {self.names.service(p).pg_dedicated_database for p in products}
        return dedicated | {pg_shared_database(p) for p in products}


@dataclass(frozen=True)
class Violation:
    policy: str
    resource: str
    message: str

    def __str__(self) -> str:
        return f"[{self.policy}] {self.resource}: {self.message}"


ResourceRule = Callable[[Resource, Context], list[str]]
StackRule = Callable[[Sequence[Resource], Context], list[tuple[str, str]]]


class _Unknown:
    """A value the engine does not know yet (during preview)."""

    def __repr__(self) -> str:
        return "<unknown>"


UNKNOWN: Final = _Unknown()


def plain(value: Any, unknown_errors: tuple[type[BaseException], ...] = ()) -> Any:
    """A plain copy of engine props, reading each value once; values whose access
    raises one of ``unknown_errors`` (pulumi_policy's ``UnknownValueError``) become
    :data:`UNKNOWN`, so one unknown input does not void every rule for a resource."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key in list(value.keys()):
            try:
                out[key] = plain(value[key], unknown_errors)
            except unknown_errors:
                out[key] = UNKNOWN
        return out
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        items: list[Any] = []
        for index in range(len(value)):
            try:
                items.append(plain(value[index], unknown_errors))
            except unknown_errors:
                items.append(UNKNOWN)
        return items
    return value


_PATH_RE: Final = re.compile(r'path\s+"([^"]+)"\s*\{(.*?)\}', re.S)
_CAPS_RE: Final = re.compile(r"capabilities\s*=\s*\[([^\]]*)\]")


def parse_policy(hcl: str) -> dict[str, frozenset[str]]:
    """``{path: capabilities}`` of a Vault ACL policy in HCL (the subset policies use)."""
    rules: dict[str, frozenset[str]] = {}
    for path, body in _PATH_RE.findall(hcl):
        caps = _CAPS_RE.search(body)
        found = re.findall(r'"([^"]+)"', caps.group(1)) if caps else []
        rules[path] = rules.get(path, frozenset()) | frozenset(found)
    return rules


# ---------------------------------------------------------------- resource rules


def tenant_prefixed_names(r: Resource, ctx: Context) -> list[str]:
    """Logical names under ``<tenant>-``; every backend name derived from the tenant."""
    problems = []
    if not r.name.startswith(f"{ctx.tenant}-"):
        problems.append(f"logical name {r.name!r} is not under {ctx.tenant + '-'!r}")
    p, principals, names = r.props, ctx.principals(), ctx.names
    logins = ctx.pg_logins()
    own: dict[str, Iterable[str]] = {}
    if r.type == ROLE:
        own["name"] = logins
    elif r.type == DATABASE:
        own["name"] = ctx.databases() - {pg_shared_database(x) for x in load_catalog().products}
    elif r.type == SCHEMA:
        own = {
            "name": [names.pg_schema, names.pg_retired_schema],
            "owner": logins,
            "database": ctx.databases(),
        }
    elif r.type in (GRANT, DEFAULT_PRIVILEGES):
        own = {"role": logins | {"public"}, "database": ctx.databases()}
        if "schema" in p and p.get("objectType") != "schema":
            own["schema"] = [names.pg_schema]
    elif r.type == VHOST:
        own["name"] = [names.vhost]
    elif r.type == BROKER_USER:
        own["name"] = principals
    elif r.type in (OPERATOR_POLICY, BROKER_POLICY):
        own["vhost"] = [names.vhost]
    elif r.type in (ATLAS_USER, MONGO_USER):
        own["username"] = principals
        if r.type == MONGO_USER:
            own["database"] = [names.mongo_database]
    for key, allowed in own.items():
        if key in p and p[key] is not UNKNOWN and p[key] not in set(allowed):
            problems.append(f"{key} {p[key]!r} is not tenant {ctx.tenant}'s")
    if r.type == ATLAS_USER:
        for role in p.get("roles") or []:
            if isinstance(role, Mapping) and role.get("databaseName") != names.mongo_database:
                problems.append(f"role on database {role.get('databaseName')!r}")
    return problems


_VAULT_PATH: Final = re.compile(r"^[^/]+/(data|metadata)/tenants/([^/]+)/([a-z][a-z0-9]*)$")
#: What a service's policy may grant its token on itself (it carries no ``default``
#: policy): the same as ``tenant_infra.components.vault.TOKEN_SELF``.
TOKEN_SELF: Final[Mapping[str, frozenset[str]]] = {
    "auth/token/lookup-self": frozenset({"read"}),
    "auth/token/renew-self": frozenset({"update"}),
    "auth/token/revoke-self": frozenset({"update"}),
}


def vault_paths_own_tenant(r: Resource, ctx: Context) -> list[str]:
    """Secrets at ``tenants/<tenant>/<product>``; policies read only such paths."""
    problems = []
    products = set(load_catalog().products)
    if r.type == VAULT_SECRET:
        name = str(r.props.get("name", ""))
        parts = name.split("/")
        if len(parts) != 3 or parts[:2] != ["tenants", ctx.tenant] or parts[2] not in products:
            problems.append(f"secret {name!r} is not under tenants/{ctx.tenant}/<product>")
    elif r.type == VAULT_POLICY:
        name = str(r.props.get("name", ""))
        if name not in {ctx.names.service(p).vault_policy for p in products}:
            problems.append(f"policy name {name!r} is not tenant-{ctx.tenant}-<product>")
        for path, caps in parse_policy(str(r.props.get("policy", ""))).items():
            if path in TOKEN_SELF:
                if caps - TOKEN_SELF[path]:
                    problems.append(f"policy grants {sorted(caps - TOKEN_SELF[path])} on {path!r}")
                continue
            match = _VAULT_PATH.match(path)
            if not match or match.group(2) != ctx.tenant or match.group(3) not in products:
                problems.append(f"policy grants {sorted(caps)} on {path!r}")
            elif caps - {"read"}:
                problems.append(f"policy grants {sorted(caps - {'read'})} on {path!r}")
    return problems


def vault_auth_role_own_policy(r: Resource, ctx: Context) -> list[str]:
    """An auth role is one service's, named as its policy, and its tokens carry that
    policy alone: no other service's, no ``default`` (the platform's to edit), and a
    login needs a SecretID or the one bound service account."""
    if r.type not in VAULT_AUTH_ROLES:
        return []
    p, problems = r.props, []
    services = {ctx.names.service(x) for x in load_catalog().products}
    role = p.get("roleName")
    own = next((s for s in services if s.vault_auth_role == role), None)
    if role is not UNKNOWN and own is None:
        problems.append(f"role {role!r} is not tenant-{ctx.tenant}-<product>")
    policies = p.get("tokenPolicies")
    if policies is not UNKNOWN and (own is None or policies != [own.vault_policy]):
        wanted = f"only [{own.vault_policy!r}]" if own else "its own service's policy only"
        problems.append(f"tokens carry {policies!r}, not {wanted}")
    if p.get("tokenNoDefaultPolicy") is not True:
        problems.append("tokens would carry the default policy too (tokenNoDefaultPolicy)")
    if r.type == APPROLE_ROLE and p.get("bindSecretId") is False:
        problems.append("a login needs no SecretID (bindSecretId is false)")
    if r.type == KUBERNETES_ROLE:
        for key in ("boundServiceAccountNames", "boundServiceAccountNamespaces"):
            value = p.get(key)
            if value is UNKNOWN:
                continue
            if not isinstance(value, list) or len(value) != 1 or "*" in str(value[0]):
                problems.append(f"{key} is {value!r}, not one name")
    return problems


def rabbitmq_permissions_own_vhost(r: Resource, ctx: Context) -> list[str]:
    if r.type not in (PERMISSIONS, TOPIC_PERMISSIONS):
        return []
    problems = []
    vhost, user = r.props.get("vhost"), r.props.get("user")
    if vhost is not UNKNOWN and vhost != ctx.names.vhost:
        problems.append(f"permissions on vhost {vhost!r}, not {ctx.names.vhost!r}")
    if user is not UNKNOWN and user not in ctx.principals():
        problems.append(f"permissions for user {r.props.get('user')!r} of another tenant")
    return problems


def no_privileged_principals(r: Resource, ctx: Context) -> list[str]:
    """Plain LOGIN roles, untagged broker users, no role memberships."""
    if r.type == ROLE:
        problems = [f"role has {key}" for key in PRIVILEGED_ROLE_PROPS if r.props.get(key)]
        if r.props.get("roles"):
            problems.append(f"role is a member of {r.props['roles']}")
        return problems
    if r.type == GRANT_ROLE:
        return ["tenant stacks grant no role memberships"]
    if r.type == BROKER_USER and r.props.get("tags"):
        return [f"broker user carries tags {r.props['tags']}"]
    if r.type == GRANT and r.props.get("role") == "public" and r.props.get("privileges"):
        return [f"grants {r.props['privileges']} to PUBLIC"]
    return []


def credentials_are_secret(r: Resource, _ctx: Context) -> list[str]:
    """Every credential input is a secret (when the caller can tell which are)."""
    keys = CREDENTIAL_PROPS.get(r.type, ())
    if not keys or r.secret_props is None:
        return []
    return [
        f"{key} is not a secret" for key in keys if key in r.props and key not in r.secret_props
    ]


def data_protected(r: Resource, ctx: Context) -> list[str]:
    if r.type in DATA_HOLDING and ctx.require_protect and not r.protect:
        return ["holds tenant data but is not protected (set protectData, or opt out per stack)"]
    return []


def _limit(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def limits_present(r: Resource, _ctx: Context) -> list[str]:
    """Every tenant role, dedicated database and vhost carries its limits."""
    wanted: tuple[str, ...] = ()
    if r.type == ROLE:
        wanted = ("connectionLimit", "statementTimeout")
    elif r.type == DATABASE:
        wanted = ("connectionLimit",)
    elif r.type == VHOST:
        wanted = ("maxConnections", "maxQueues")
    elif r.type in VAULT_AUTH_ROLES:
        wanted = ("tokenTtl", "tokenMaxTtl")
    problems = []
    for key in wanted:
        if r.props.get(key) is UNKNOWN:
            continue
        value = _limit(r.props.get(key))
        unbounded = key in ("statementTimeout", "tokenTtl", "tokenMaxTtl") and value == 0
        if value is None or value < 0 or unbounded:
            problems.append(f"{key} is not set")
    return problems


RESOURCE_RULES: Final[Mapping[str, ResourceRule]] = {
    "tenant-prefixed-names": tenant_prefixed_names,
    "vault-paths-own-tenant": vault_paths_own_tenant,
    "vault-auth-role-own-policy": vault_auth_role_own_policy,
    "rabbitmq-permissions-own-vhost": rabbitmq_permissions_own_vhost,
    "no-privileged-principals": no_privileged_principals,
    "credentials-are-secret": credentials_are_secret,
    "data-protected": data_protected,
    "limits-present": limits_present,
}


# ---------------------------------------------------------------- stack rules


def queue_limit_per_vhost(resources: Sequence[Resource], _ctx: Context) -> list[tuple[str, str]]:
    """Each vhost has an operator policy capping every queue's length and bytes."""

    def caps(r: Resource) -> bool:
        policy = r.props.get("policy") or {}
        definition = policy.get("definition") or {}
        return policy.get("pattern") == ".*" and all(
            _limit(definition.get(key)) is not None for key in ("max-length", "max-length-bytes")
        )

    capped = {r.props.get("vhost") for r in resources if r.type == OPERATOR_POLICY and caps(r)}
    return [
        (
            r.name,
            f"vhost {r.props.get('name')!r} has no operator policy with max-length "
            "and max-length-bytes",
        )
        for r in resources
        if r.type == VHOST and r.props.get("name") not in capped
    ]


STACK_RULES: Final[Mapping[str, StackRule]] = {
    "queue-limit-per-vhost": queue_limit_per_vhost,
}

DESCRIPTIONS: Final[Mapping[str, str]] = {
    "tenant-prefixed-names": "Logical and backend names belong to the stack's tenant.",
    "vault-paths-own-tenant": "Vault secrets and policy paths stay under tenants/<tenant>/.",
    "vault-auth-role-own-policy": "A Vault auth role's tokens carry its own service's policy "
    "only, no default policy, and a login is bound (SecretID, one service account).",
    "rabbitmq-permissions-own-vhost": "RabbitMQ permissions only on the tenant's vhost.",
    "no-privileged-principals": "No superuser/createrole/createdb/replication/bypassrls roles, "
    "memberships, tagged broker users or grants to PUBLIC.",
    "credentials-are-secret": "Credential inputs are Pulumi secrets.",
    "data-protected": "Databases, schemas and vhosts are protected.",
    "limits-present": "Roles, dedicated databases, vhosts and Vault auth roles carry their limits.",
    "queue-limit-per-vhost": "Each vhost has a queue-length operator policy.",
}


def check_resource(resource: Resource, ctx: Context) -> list[Violation]:
    return [
        Violation(policy, resource.name, message)
        for policy, rule in RESOURCE_RULES.items()
        for message in rule(resource, ctx)
    ]


def check_stack(resources: Sequence[Resource], ctx: Context) -> list[Violation]:
    """Every resource rule over every resource, then the stack rules."""
    found = [v for r in resources for v in check_resource(r, ctx)]
    for policy, rule in STACK_RULES.items():
        found += [Violation(policy, name, message) for name, message in rule(resources, ctx)]
    return found


def stack_of(urn: str) -> str:
    """The stack in ``urn:pulumi:<stack>::<project>::<type>::<name>``."""
    return urn.split("::", 1)[0].removeprefix("urn:pulumi:")


def project_of(urn: str) -> str:
    parts = urn.split("::")
    return parts[1] if len(parts) > 1 else ""
