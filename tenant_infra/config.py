"""The tenant stack's configuration: one model, validated before any resource exists.

A stack config file (``stacks/Pulumi.<tenant>.yaml``) holds, under the ``tenant-infra``
namespace, the tenant id, its metadata and tier, its registered services, limit
overrides and the platform endpoints. Platform *credentials* are never here: see
:mod:`tenant_infra.credentials`.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Self, cast
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from tenant_infra.catalog import IsolationMode, Limits, Store, load_catalog
from tenant_infra.errors import InvalidInput
from tenant_infra.tenant import (
    MAX_GENERATION,
    PRODUCT_MAX,
    TENANT_ID_MAX,
    ServiceNames,
    TenantNames,
    validate_product,
    validate_tenant_id,
)

NAMESPACE = "tenant-infra"

_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


def _host(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not _HOSTNAME_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not a hostname or IP address") from None
    return value


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    # Credentials first, and the value never echoed: it may carry a password.
    if "@" in parts.netloc:
        raise ValueError("endpoint URLs must not carry credentials")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http(s) URL with a host")
    _host(parts.hostname)
    return value.rstrip("/")


Host = Annotated[str, AfterValidator(_host)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]
Port = Annotated[int, Field(ge=1, le=65535)]
#: A platform login name (PostgreSQL, RabbitMQ, MongoDB admin users).
Login = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.@-]{1,63}$")]
#: MongoDB authentication database.
MongoDatabase = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,63}$")]
MetadataKey = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
MetadataValue = Annotated[str, Field(max_length=256)]


class _Model(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True
    )

    @classmethod
    def from_pulumi_values(cls, values: dict[str, Any]) -> Self:
        """Build from ``{"tenant-infra:key": value}`` as in a stack file or Pulumi config;
        the first problem is raised as one line naming the field and the rule."""
        prefix = NAMESPACE + ":"
        ours = {k[len(prefix) :]: v for k, v in values.items() if k.startswith(prefix)}
        try:
            return cls.model_validate(ours)
        except ValidationError as exc:
            raise InvalidInput(one_line(exc, "config")) from None


class PostgresEndpoint(_Model):
    """Admin connection to the PostgreSQL server that hosts a product's tenants."""

    host: Host
    port: Port = 5432
    admin_user: Login = "postgres"
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = "prefer"
    #: Whether ``admin_user`` is a true PostgreSQL superuser. Managed services (RDS,
    #: Cloud SQL, Azure) have none, and the provider must then be told so; false is
    #: safe everywhere (a superuser only loses reading role passwords back).
    superuser: bool = False
    #: The server's ``max_connections``; with it, the tenants' connection limits on
    #: this server must add up to at most it less ``reserved_connections``.
    max_connections: Annotated[StrictInt, Field(ge=1)] | None = None
    #: Headroom the platform keeps: admin sessions, migrations, replication, superusers.
    reserved_connections: Annotated[StrictInt, Field(ge=0)] = 10
    #: The platform controls this server: take PUBLIC's CONNECT on ``postgres`` and
    #: ``template1``, where every role may otherwise leave objects (purge handles them
    #: anyway; this keeps them from being made).
    close_maintenance_databases: bool = False


class RabbitmqEndpoint(_Model):
    management_url: HttpUrl
    admin_user: Login = "guest"
    #: Host and AMQP port handed to services (non-secret connection info).
    amqp_host: Host
    amqp_port: Port = 5672
    #: The node's connection ceiling; with it, the vhosts' ``max-connections`` on this
    #: node must add up to at most it less ``reserved_connections``.
    max_connections: Annotated[StrictInt, Field(ge=1)] | None = None
    reserved_connections: Annotated[StrictInt, Field(ge=0)] = 10


def _cidr(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=True))
    except ValueError:
        raise ValueError(f"{value!r} is not a CIDR block (address/prefix)") from None


Cidr = Annotated[str, AfterValidator(_cidr)]
#: A Vault mount path of the platform's (one segment).
VaultMount = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
#: A SecretID may stay valid at most 32 days (Vault's default ``max_lease_ttl``).
_SECRET_ID_TTL_MAX: Final = 2_764_800


class AppRoleAuth(_Model):
    """AppRole (the default): each service's role on the platform's ``approle`` mount.

    The stack declares the role only; its RoleID (an identifier, not a credential) is
    a stack output. SecretIDs are credentials and never pass through a stack: the
    deployment pipeline issues one per product instance, response-wrapped (README, "How
    a product instance logs in to Vault").
    """

    method: Literal["approle"]
    #: Where the platform program mounts the auth method (once per Vault).
    mount: VaultMount = "approle"
    #: How long a SecretID stays valid, in seconds (30 days by default; 0 is refused: a
    #: SecretID that never expires outlives every rotation).
    secret_id_ttl: Annotated[StrictInt, Field(ge=60, le=_SECRET_ID_TTL_MAX)] = 2_592_000
    #: Logins one SecretID allows (0: any number within its TTL, so an instance can log
    #: in again when its token reaches its max TTL).
    secret_id_num_uses: Annotated[StrictInt, Field(ge=0, le=1_000_000)] = 0
    #: Where a SecretID may be used from, and a token it got (empty: anywhere).
    secret_id_bound_cidrs: tuple[Cidr, ...] = ()
    token_bound_cidrs: tuple[Cidr, ...] = ()


#: ``{tenant}`` and ``{product}`` in a Kubernetes name are replaced by the service's.
_K8S_PLACEHOLDERS: Final = {"{tenant}": "t" * TENANT_ID_MAX, "{product}": "p" * PRODUCT_MAX}


def _k8s_name(limit: int, grammar: str, what: str) -> Any:
    def check(value: str) -> str:
        widest = value
        for placeholder, longest in _K8S_PLACEHOLDERS.items():
            widest = widest.replace(placeholder, longest)
        if "{" in widest or "}" in widest:
            raise ValueError(f"{what} {value!r}: only {{tenant}} and {{product}} are replaced")
        if not re.fullmatch(grammar, widest):
            raise ValueError(f"{what} {value!r} is not a Kubernetes name (a-z, 0-9, '-')")
        if len(widest) > limit:
            raise ValueError(
                f"{what} {value!r} may be longer than {limit} characters (with a "
                f"{TENANT_ID_MAX}-character tenant id)"
            )
        return value

    return AfterValidator(check)


K8sNamespace = Annotated[
    str, _k8s_name(63, r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?", "namespace")  # DNS-1123 label
]
K8sServiceAccount = Annotated[
    str, _k8s_name(253, r"[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?", "service account")  # subdomain
]


class KubernetesBinding(_Model):
    """The one service account, in one namespace, whose pods may log in as a service."""

    namespace: K8sNamespace
    service_account: K8sServiceAccount

    def render(self, names: ServiceNames) -> tuple[str, str]:
        """``(namespace, service account)`` for one service."""

        def fill(template: str) -> str:
            return template.replace("{tenant}", names.tenant).replace("{product}", names.product)

        return fill(self.namespace), fill(self.service_account)


class KubernetesAuth(_Model):
    """Kubernetes auth: each service's role admits one service account of one namespace.

    ``service_accounts`` maps a product (or ``default``) to its binding. Without
    ``{tenant}`` in it, every tenant's role of that product admits the same pods (the
    product's instances then serve every tenant, and may read every tenant's secret of
    that product); with it, a tenant's own instances only.
    """

    method: Literal["kubernetes"]
    mount: VaultMount = "kubernetes"
    service_accounts: dict[str, KubernetesBinding] = Field(min_length=1)
    #: The ``aud`` claim a service account token must carry (Vault checks it if set).
    audience: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:/-]{1,253}$")] | None = None
    token_bound_cidrs: tuple[Cidr, ...] = ()

    @field_validator("service_accounts")
    @classmethod
    def _products(cls, value: dict[str, KubernetesBinding]) -> dict[str, KubernetesBinding]:
        catalog = load_catalog()
        for key in value:
            if key != "default":
                catalog.product(validate_product(key))
        return value

    def binding_for(self, product: str) -> KubernetesBinding:
        binding = self.service_accounts.get(product) or self.service_accounts.get("default")
        if binding is None:
            raise InvalidInput(
                f"platform.vault.auth.serviceAccounts has no entry for product {product!r}"
            )
        return binding


VaultAuth = Annotated[AppRoleAuth | KubernetesAuth, Field(discriminator="method")]


class VaultEndpoint(_Model):
    address: HttpUrl
    kv_mount: VaultMount = "secret"
    #: Use the token as given: a child token would expire (20 min) mid-way through long runs.
    skip_child_token: bool = True
    #: How a product instance logs in to get a token holding only its service's policy.
    auth: VaultAuth = Field(default_factory=lambda: AppRoleAuth(method="approle"))

    @field_validator("address", mode="before")
    @classmethod
    def _token_may_go_there(cls, value: Any) -> Any:
        """The Vault token is sent here: https (or loopback http), no userinfo."""
        from tenant_infra.vaultclient import address_problem

        problem = address_problem(value) if isinstance(value, str) else None
        if problem:
            raise ValueError(f"the Vault address {problem}")
        return value


class AtlasMongo(_Model):
    backend: Literal["atlas"]
    project_id: str = Field(pattern=r"^[0-9a-f]{24}$")
    cluster_name: str = Field(pattern=r"^[A-Za-z0-9-]{1,64}$")
    #: The cluster's SRV host name, handed to services.
    host: Host


class SelfHostedMongo(_Model):
    backend: Literal["self-hosted"]
    host: Host
    port: Port = 27017
    admin_user: Login = "admin"
    auth_source: MongoDatabase = "admin"
    tls: bool = False


MongoEndpoint = Annotated[AtlasMongo | SelfHostedMongo, Field(discriminator="backend")]


class Platform(_Model):
    """Endpoints of the shared platform services. Non-secret by construction."""

    postgres: dict[str, PostgresEndpoint] = Field(min_length=1)
    rabbitmq: RabbitmqEndpoint | None = None
    vault: VaultEndpoint
    mongodb: MongoEndpoint | None = None

    @field_validator("postgres")
    @classmethod
    def _products(cls, value: dict[str, PostgresEndpoint]) -> dict[str, PostgresEndpoint]:
        catalog = load_catalog()
        for key in value:
            if key != "default":
                # A typo would otherwise silently route the product to `default`.
                catalog.product(validate_product(key))
        return value

    @model_validator(mode="after")
    def _admins_are_not_tenant_principals(self) -> Platform:
        """Tenant logins are ``<product>_<key>``; an admin named like one could be
        overwritten (RabbitMQ's user API creates *or updates*) by a tenant's service."""
        logins = [e.admin_user for e in self.postgres.values()]
        logins += [self.rabbitmq.admin_user] if self.rabbitmq else []
        logins += [self.mongodb.admin_user] if isinstance(self.mongodb, SelfHostedMongo) else []
        for login in logins:
            for product in load_catalog().products:
                if login.startswith(f"{product}_"):
                    raise ValueError(
                        f"admin user {login!r} is named like a tenant login ({product}_<tenant>)"
                    )
        return self

    def postgres_for(self, product: str) -> PostgresEndpoint:
        endpoint = self.postgres.get(product) or self.postgres.get("default")
        if endpoint is None:
            raise InvalidInput(f"platform.postgres has no endpoint for product {product!r}")
        return endpoint


#: How a service leaves its tenant: its data kept (every credential revoked) or deleted.
Removal = Literal["retain", "purge"]
#: An Alembic revision id as the products' migrations write them.
Revision = Annotated[str, Field(pattern=r"^[A-Za-z0-9_]{1,32}$")]


class Promotion(_Model):
    """A service on its way from SCHEMA to DATABASE mode (``tenantctl promote``).

    Before ``repointed``, the service is still SCHEMA mode and its dedicated store
    (the next generation's login, unprotected, migrated to ``revision``) is declared
    beside the shared one. Once repointed, the service is DATABASE mode and its old
    schema is declared retired: renamed aside, its login refused, until it is dropped.
    """

    #: The source's revision: the dedicated store is migrated to it, not to head.
    revision: Revision | None
    #: The source's login refused since its copy was verified (the seal, recorded so
    #: that no later update lets the tenant write where nobody will read).
    sealed: StrictBool = False
    repointed: StrictBool = False
    #: When the retired schema may be dropped (``promote --resume`` drops it then).
    keep_source_until: datetime | None = None
    #: The retired schema's protection lifted: the next update drops it.
    drop_source: StrictBool = False
    #: Going back (``promote --abort``): the dedicated store is kept, unprotected,
    #: unmigrated and with its login refused, until the next update drops it.
    aborted: StrictBool = False

    @field_validator("keep_source_until")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("keepSourceUntil must carry a time zone (UTC: a trailing Z)")
        return value


#: One of a rotated credential's two alternating logins (``tenant.SLOTS``).
Slot = Literal["a", "b"]
#: A store's credential from before rotation existed: one login, the PostgreSQL owner.
LEGACY: Final = "legacy"
#: The stores whose credentials ``tenantctl rotate`` replaces, as the CLI names them.
CredentialStore = Literal["postgres", "rabbitmq", "mongodb"]
CREDENTIAL_STORES: Final[tuple[CredentialStore, ...]] = ("postgres", "rabbitmq", "mongodb")
#: Each rotated store's catalog store.
STORE_OF: Final[dict[CredentialStore, Store]] = {
    "postgres": Store.POSTGRESQL,
    "rabbitmq": Store.RABBITMQ,
    "mongodb": Store.MONGODB,
}


class StoreLogins(_Model):
    """One store's credential under rotation (``tenantctl rotate``).

    Two logins alternate: ``current`` is the one the connections document names;
    between a rotation's begin and finish ``previous`` stays valid beside it, until
    finish refuses it (``revoked``), ends its sessions and drops it. ``previous`` is
    ``legacy`` when the store's first rotation replaces its pre-rotation login.
    """

    current: Slot
    previous: Slot | Literal["legacy"] | None = None
    revoked: StrictBool = False

    @model_validator(mode="after")
    def _consistent(self) -> StoreLogins:
        if self.previous == self.current:
            raise ValueError("a rotation's previous login cannot be its current one")
        if self.revoked and self.previous is None:
            raise ValueError("revoked names no previous login")
        return self

    def other(self) -> Slot:
        """The slot the next rotation moves to."""
        return "b" if self.current == "a" else "a"

    def revoked_slot(self, slot: str | None) -> bool:
        """Whether ``slot`` (``None``: the legacy login) is the previous one, refused."""
        previous = None if self.previous == LEGACY else self.previous
        return self.revoked and slot == previous

    def slots(self) -> tuple[str | None, ...]:
        """The logins declared now: current, and previous while it is kept (``None``
        for the legacy one)."""
        previous = self.previous
        if previous is None:
            return (self.current,)
        return (self.current, None if previous == LEGACY else previous)


class Credentials(_Model):
    """Each store's login model: ``None`` is the legacy single login (a service
    provisioned before rotation existed); its first rotation moves it to two."""

    postgres: StoreLogins | None = None
    rabbitmq: StoreLogins | None = None
    mongodb: StoreLogins | None = None

    @classmethod
    def rotating(cls, product: str) -> Credentials:
        """How a service is registered now: each store it uses with alternating logins."""
        stores = load_catalog().product(product).stores
        return cls(
            **{
                name: StoreLogins(current="a")
                for name, store in STORE_OF.items()
                if store in stores
            }
        )

    def of(self, store: CredentialStore) -> StoreLogins | None:
        return cast(StoreLogins | None, getattr(self, store))

    def current(self, store: CredentialStore) -> str | None:
        """The slot the connections document names (``None``: the legacy login)."""
        logins = self.of(store)
        return logins.current if logins else None

    def rotating_now(self) -> list[CredentialStore]:
        """The stores between a rotation's begin and its finish."""
        return [s for s in CREDENTIAL_STORES if (x := self.of(s)) and x.previous is not None]


class ServiceSpec(_Model):
    """A product registered as a service of the tenant, with its isolation mode.

    ``suspended`` and ``removal`` are lifecycle states that must reach the servers, so
    they live in the stack config and every transition is an update of the stack.
    """

    product: str
    isolation: IsolationMode
    #: Data untouched, every credential refused (``tenantctl suspend``).
    suspended: StrictBool = False
    #: ``retain``: only the data is left (the role NOLOGIN, its database or schema, the
    #: vhost), still managed by the stack so that a later purge can delete it.
    #: ``purge``: the same, unprotected, for the update before the service is removed.
    removal: Removal | None = None
    #: The generation of the service's PostgreSQL login: each promotion moves it on.
    generation: Annotated[StrictInt, Field(ge=0, le=MAX_GENERATION)] = 0
    promotion: Promotion | None = None
    #: The login model of each store, and a rotation under way (``tenantctl rotate``).
    credentials: Credentials = Credentials()

    @field_validator("isolation", mode="before")
    @classmethod
    def _any_case(cls, value: Any) -> Any:
        """One rule everywhere: the mode in any case, as on the command line."""
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _promotion(self) -> ServiceSpec:
        promotion = self.promotion
        if promotion is None:
            return self
        mode = IsolationMode.DATABASE if promotion.repointed else IsolationMode.SCHEMA
        if self.isolation is not mode:
            stage = "repointed" if promotion.repointed else "not yet repointed"
            raise ValueError(f"a promotion {stage} keeps the service in {mode.value} mode")
        if promotion.repointed and self.generation == 0:
            raise ValueError("a repointed promotion has a generation of at least 1")
        if not promotion.repointed and self.generation == MAX_GENERATION:
            raise ValueError(f"the service has been promoted {MAX_GENERATION} times already")
        return self

    @field_validator("product")
    @classmethod
    def _known(cls, value: str) -> str:
        load_catalog().product(value)
        return value

    @classmethod
    def parse(cls, text: str) -> ServiceSpec:
        """Parse the CLI form ``PRODUCT:MODE`` (mode case-insensitive)."""
        product, sep, mode = text.partition(":")
        if not sep:
            raise InvalidInput(f"service {text!r} must be written PRODUCT:MODE")
        modes = ", ".join(m.value for m in IsolationMode)
        if mode.upper() not in IsolationMode.__members__:
            raise InvalidInput(f"unknown isolation mode {mode!r} in {text!r} (known: {modes})")
        name = load_catalog().product(product).name
        return cls(
            product=name,
            isolation=IsolationMode(mode.upper()),
            credentials=Credentials.rotating(name),
        )


class TenantConfig(_Model):
    """Everything one tenant stack declares."""

    tenant: str
    tier: str = "standard"
    metadata: dict[MetadataKey, MetadataValue] = Field(default_factory=dict)
    #: Empty for a tenant that exists as an identity only (seed 002, stage 1).
    services: tuple[ServiceSpec, ...] = ()
    limits: dict[str, StrictInt] = Field(default_factory=dict)
    protect_data: StrictBool = True
    platform: Platform

    @field_validator("tenant", mode="before")
    @classmethod
    def _tenant(cls, value: str) -> str:
        return validate_tenant_id(value)

    @field_validator("tier")
    @classmethod
    def _tier(cls, value: str) -> str:
        load_catalog().tier(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TenantConfig:
        seen: set[str] = set()
        catalog = load_catalog()
        for spec in self.services:
            if spec.product in seen:
                raise ValueError(f"service {spec.product!r} is registered twice")
            seen.add(spec.product)
            self.platform.postgres_for(spec.product)
            product = catalog.product(spec.product)
            if product.needs(Store.RABBITMQ) and self.platform.rabbitmq is None:
                raise ValueError(f"product {spec.product!r} needs platform.rabbitmq")
            if product.needs(Store.MONGODB) and self.platform.mongodb is None:
                raise ValueError(f"product {spec.product!r} needs platform.mongodb")
            if isinstance(self.platform.vault.auth, KubernetesAuth):
                self.platform.vault.auth.binding_for(spec.product)
        self.effective_limits()
        return self

    @field_serializer("services")
    def _services(self, services: tuple[ServiceSpec, ...]) -> list[dict[str, Any]]:
        """Lifecycle flags only when set: a stack file shows what differs from active."""
        return [s.model_dump(by_alias=True, mode="json", exclude_defaults=True) for s in services]

    @property
    def names(self) -> TenantNames:
        return TenantNames(self.tenant)

    def service(self, product: str) -> ServiceSpec | None:
        return next((s for s in self.services if s.product == product), None)

    def credentials(self, product: str) -> Credentials:
        spec = self.service(product)
        return spec.credentials if spec else Credentials()

    def pg_owner(self, product: str) -> str:
        """The role that owns the service's live store and everything in it."""
        spec = self.service(product)
        return self.names.service(product).pg_owner(spec.generation if spec else 0)

    def pg_login(self, product: str) -> str:
        """The PostgreSQL login the service's connections document carries now."""
        spec = self.service(product)
        slot = self.credentials(product).current("postgres")
        return self.names.service(product).pg_login(spec.generation if spec else 0, slot)

    def pg_logins(self, product: str) -> list[str]:
        """Every role of the service's stores (owners and logins): a promotion holds
        two stores, a rotation two logins each."""
        spec = self.service(product)
        names: ServiceNames = self.names.service(product)
        if spec is None:
            return [names.pg_role]
        generations = [spec.generation]
        if spec.promotion is not None:
            generations.append(
                spec.generation - 1 if spec.promotion.repointed else spec.generation + 1
            )
        return [role for g in generations for role in self.pg_store_roles(product, g)]

    def pg_store_logins(self, product: str, generation: int) -> list[str]:
        """The roles of the store of ``generation`` that log in while it is open."""
        names = self.names.service(product)
        logins = self.credentials(product).postgres
        if logins is None:
            return [names.pg_owner(generation)]
        return [
            names.pg_login(generation, slot)
            for slot in logins.slots()
            if not logins.revoked_slot(slot)
        ]

    def pg_store_roles(self, product: str, generation: int) -> list[str]:
        """Every role of the store of ``generation``: its owner and its logins."""
        names = self.names.service(product)
        logins = self.credentials(product).postgres
        slots = logins.slots() if logins else ()
        return [names.pg_owner(generation)] + [
            names.pg_login(generation, slot) for slot in slots if slot is not None
        ]

    def broker_login(self, product: str) -> str:
        """The RabbitMQ user the service's connections document carries now."""
        slot = self.credentials(product).current("rabbitmq")
        return self.names.service(product).broker_login(slot)

    def broker_logins(self, product: str) -> list[str]:
        """The service's RabbitMQ users now: two between a rotation's begin and finish."""
        logins = self.credentials(product).rabbitmq
        names = self.names.service(product)
        return [names.broker_login(slot) for slot in (logins.slots() if logins else (None,))]

    def mongo_login(self, product: str) -> str:
        """The MongoDB user the service's connections document carries now."""
        slot = self.credentials(product).current("mongodb")
        return self.names.service(product).mongo_login(slot)

    def protects(self, spec: ServiceSpec) -> bool:
        """Whether the service's data resources are ``protect``ed (a purge lifts it)."""
        return self.protect_data and spec.removal != "purge"

    def effective_limits(self) -> Limits:
        """Tier defaults with this tenant's overrides applied."""
        base = load_catalog().tier(self.tier).model_dump()
        unknown = set(self.limits) - set(base)
        if unknown:
            raise InvalidInput(f"unknown limit {sorted(unknown)[0]!r} (known: {', '.join(base)})")
        try:
            return Limits.model_validate(base | self.limits)
        except ValidationError as exc:
            raise InvalidInput(one_line(exc, "limits")) from None

    def with_services(self, services: list[ServiceSpec]) -> TenantConfig:
        return TenantConfig.model_validate(self.model_dump() | {"services": services})

    def with_service(self, spec: ServiceSpec) -> TenantConfig:
        """This config with ``spec`` replacing the service of the same product."""
        return self.with_services([spec if s.product == spec.product else s for s in self.services])

    # ----------------------------------------------------------------- loading


Identifier = Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]{0,62}$")]


class RegistrySettings(_Model):
    """Where the control plane records tenants, services and their history.

    Its own database on the platform's ``default`` PostgreSQL server. ``owner`` owns
    it and its tables and runs its migrations; ``user`` is the control plane's role,
    which reads and writes rows but cannot alter a table or the history's guard;
    ``reader`` is the read-only role of the multi-tenancy API. Passwords come from
    ``TENANT_INFRA_REGISTRY_OWNER_PASSWORD``, ``TENANT_INFRA_REGISTRY_PASSWORD`` and
    ``TENANT_INFRA_REGISTRY_READER_PASSWORD``.
    """

    database: Identifier = "tenant_registry"
    owner: Identifier = "tenant_registry_owner"
    user: Identifier = "tenant_control"
    reader: Identifier = "tenant_registry_reader"


#: The environments the seed platform's products accept (``ENVIRONMENT_NAME``).
SEED_ENVIRONMENTS = ("staging", "production")


class EventsSettings(_Model):
    """Redis Pub/Sub for lifecycle events, channel ``tenant-events:{environment}:``.

    The password (of ``user``, a Redis ACL user) comes from ``TENANT_INFRA_REDIS_PASSWORD``.
    """

    host: Host
    port: Port = 6379
    db: int = Field(0, ge=0, le=15)
    tls: bool = False
    user: Login | None = None
    environment: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")


class PlatformConfig(_Model):
    """The platform stack: shared databases of the listed products, the Vault mount,
    and the control plane's registry and events."""

    products: tuple[str, ...] = Field(min_length=1)
    protect_data: StrictBool = True
    platform: Platform
    registry: RegistrySettings | None = None
    events: EventsSettings | None = None

    @field_validator("products")
    @classmethod
    def _schema_capable(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        catalog = load_catalog()
        for product in value:
            if not catalog.product(product).needs(Store.POSTGRESQL):
                raise ValueError(f"product {product!r} has no PostgreSQL store")
        if len(set(value)) != len(value):
            raise ValueError("a product is listed twice")
        return value

    @model_validator(mode="after")
    def _endpoints(self) -> PlatformConfig:
        for product in self.products:
            self.platform.postgres_for(product)
        if self.registry is not None and "default" not in self.platform.postgres:
            raise ValueError("the registry lives on platform.postgres.default: declare it")
        return self


def read_stack_file(path: Path, *, libyaml: bool = False) -> dict[str, Any]:
    """Read a ``Pulumi.<stack>.yaml`` into its flat ``config`` mapping (``libyaml``: with
    the C parser, for a whole fleet, see :func:`tenant_infra.inputs.read_yaml`)."""
    from tenant_infra import inputs

    doc = inputs.read_yaml(path, "stack config", libyaml=libyaml)
    if not isinstance(doc, dict) or not isinstance(doc.get("config", {}), dict):
        raise InvalidInput(f"stack config {str(path)!r} must be a mapping with a 'config' mapping")
    config: dict[str, Any] = doc.get("config") or {}
    for key, value in config.items():
        if isinstance(value, dict) and "secure" in value:
            raise InvalidInput(
                f"stack config {str(path)!r} holds a secret at {key!r}; platform credentials "
                "come from the environment (see README)"
            )
    return config


def one_line(exc: ValidationError, where: str) -> str:
    """The first validation error as one line that names the field and the rule."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{where}.{loc}: {msg}" if loc else f"{where}: {msg}"


def platform_from_stack_file(path: Path) -> Platform | None:
    """The ``platform`` block of a stack file, or ``None`` if it has none."""
    values = read_stack_file(path)
    raw = values.get(f"{NAMESPACE}:platform")
    if raw is None:
        return None
    try:
        return Platform.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInput(one_line(exc, f"{path}: platform")) from None
