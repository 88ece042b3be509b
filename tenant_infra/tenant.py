"""Tenant identity and every backend name derived from it.

This is the only place names are derived. A tenant id is the value of the JWT
``tenantId`` claim; the grammar below is chosen so that the id itself is a valid,
collision-free name in every backend (MongoDB database, RabbitMQ vhost, Vault path
segment, Pulumi stack), and so that ``id.replace("-", "_")`` is a valid, unquoted
PostgreSQL identifier fragment. Because ids contain no ``_``, that mapping is
injective: two tenants can never share a PostgreSQL name.

Grammar (also in README.md)::

    tenant-id = 2..40 of [a-z0-9-], starting and ending with [a-z0-9], no "--"

Lowercase slugs (``acme``, ``globex-eu``) and lowercase UUIDs both fit.

A UUID names one tenant however it is spelled: dashed or dashless, in any case. The
spelling a tenant was onboarded with names its resources; its *canonical* id (the
UUID dashless and lowercase, as the seed platform's clients and events send it; a
slug as it is) is what the registry keys it by, so a second spelling is refused.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Final

from tenant_infra.errors import InvalidInput

TENANT_ID_MAX: Final = 40
PRODUCT_MAX: Final = 16
PG_IDENTIFIER_MAX: Final = 63
#: Promotions a service can go through (each gives its PostgreSQL store a new owner).
MAX_GENERATION: Final = 9
#: A rotated credential's two alternating logins (``tenantctl rotate``).
SLOTS: Final = ("a", "b")
#: The operator's Stack CRD refuses a longer ``metadata.name`` (its pods and Updates are
#: named after it, within Kubernetes' 63-character labels).
K8S_STACK_NAME_MAX: Final = 42
#: Every tenant Stack's name starts so: never a platform team's own Stack.
K8S_STACK_PREFIX: Final = "tenant-"
#: Hex digits of the hash that ends a long id's Stack name (40 bits).
_K8S_HASH_LEN: Final = 10

_TENANT_ID_RE: Final = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9]))*")
_PRODUCT_RE: Final = re.compile(r"[a-z][a-z0-9]*")
#: A UUID as the seed client's ``uuid.Parse`` reads one: dashed in the standard places,
#: or 32 hex digits; any case.
_UUID_RE: Final = re.compile(
    r"[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE
)
#: The seed client's tenant-id grammar (a UUID, or this), at most 256 characters.
_CLIENT_SLUG_RE: Final = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_-]{0,255}")

#: Ids refused outright: names the backends reserve (MongoDB's system databases are
#: used verbatim as tenant databases) plus PostgreSQL's, so an operator never sees a
#: tenant that merely *looks* like a system object.
RESERVED_TENANT_IDS: Final = frozenset(
    {"admin", "local", "config", "postgres", "template0", "template1", "public"}
)


def validate_tenant_id(value: str) -> str:
    """Return ``value`` if it is a valid tenant id, else raise naming the rule broken."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        # YAML reads `tenant: 0042` as the number 34: the id cannot be recovered.
        raise InvalidInput(
            f"tenant id must be a string, not the number {value!r}: quote it in YAML "
            '(tenant: "0042")'
        )
    if not isinstance(value, str) or value == "":
        raise InvalidInput("tenant id must be a non-empty string")
    shown = ascii(value) if len(value) <= 60 else ascii(value[:60]) + "..."
    if len(value) > TENANT_ID_MAX:
        raise InvalidInput(f"tenant id {shown} is longer than {TENANT_ID_MAX} characters")
    if len(value) < 2:
        raise InvalidInput(f"tenant id {shown} is shorter than 2 characters")
    if not value.isascii():
        raise InvalidInput(f"tenant id {shown} must be ASCII")
    if value != value.lower():
        raise InvalidInput(f"tenant id {shown} must be lowercase")
    if not _TENANT_ID_RE.fullmatch(value):
        raise InvalidInput(f"tenant id {shown} may contain only a-z, 0-9 and single inner hyphens")
    if value in RESERVED_TENANT_IDS:
        raise InvalidInput(f"tenant id {shown} is a reserved name")
    return value


def canonical_id(tenant: str) -> str:
    """The tenant's one spelling on the wire and in the registry: a UUID dashless and
    lowercase, anything else unchanged."""
    return tenant.replace("-", "").lower() if _UUID_RE.fullmatch(tenant) else tenant


def requested_id(value: str) -> str | None:
    """The canonical id a client's ``tenantId`` names, or ``None`` if no tenant can have
    it (not a UUID, not a valid slug). Unlike :func:`validate_tenant_id`, a UUID may be
    in any case: v5 clients send the JWT claim verbatim."""
    if _UUID_RE.fullmatch(value):
        return canonical_id(value)
    if not _CLIENT_SLUG_RE.fullmatch(value):
        return None
    try:
        return validate_tenant_id(value)
    except InvalidInput:
        return None


def validate_product(value: str) -> str:
    """Products name databases and roles, so they follow a stricter grammar than tenants."""
    if not (isinstance(value, str) and len(value) <= PRODUCT_MAX and _PRODUCT_RE.fullmatch(value)):
        raise InvalidInput(
            f"product {value!a} must be 1..{PRODUCT_MAX} of a-z and 0-9, starting with a letter"
        )
    return value


@dataclass(frozen=True)
class TenantNames:
    """Names shared by all of one tenant's services."""

    tenant: str

    def __post_init__(self) -> None:
        validate_tenant_id(self.tenant)

    @property
    def key(self) -> str:
        """The tenant id as a PostgreSQL identifier fragment (``-`` becomes ``_``)."""
        return self.tenant.replace("-", "_")

    @property
    def stack(self) -> str:
        """Pulumi stack name: one stack per tenant."""
        return self.tenant

    @property
    def vhost(self) -> str:
        """RabbitMQ virtual host, named after the tenant id (seed 000)."""
        return self.tenant

    @property
    def mongo_database(self) -> str:
        """MongoDB database, named after the tenant id (seed 000)."""
        return self.tenant

    @property
    def pg_schema(self) -> str:
        """The schema holding the tenant's tables, in *both* isolation modes.

        Using the same schema name inside a dedicated database makes SCHEMA→DATABASE
        promotion a dump/restore of one schema with no renames.
        """
        return f"tenant_{self.key}"

    @property
    def pg_retired_schema(self) -> str:
        """Where a promoted service's shared schema waits, frozen, until it is dropped:
        outside ``tenant_%``, so no fleet migration or product query finds it."""
        return f"retired_{self.pg_schema}"

    @property
    def pg_restore_schema(self) -> str:
        """Where a restore loads and verifies a backup, beside the live schema in the
        same database; also outside ``tenant_%``."""
        return f"restoring_{self.pg_schema}"

    @property
    def pg_pre_restore_schema(self) -> str:
        """Where a restore's swap keeps the data it replaced, until dropped (one at a
        time: with the timestamp, 63 bytes would not hold every tenant id)."""
        return f"pre_restore_{self.pg_schema}"

    @property
    def k8s_stack(self) -> str:
        """The ``metadata.name`` of the tenant's operator ``Stack`` (``tenantctl render
        kubernetes``): a DNS-1123 label of at most 42 characters, stable for the id.

        ``tenant-<id>`` while that fits in 41 characters (ids of up to 34); longer ids
        become ``tenant-<first 23>--<10 hex of sha256(id)>``, exactly 42. Ids never hold
        ``--``, so no short name can equal a long one; two long ids would need the same
        23-character start *and* the same 40-bit hash, and the renderer refuses a fleet
        where that happens rather than let one Stack overwrite another.
        """
        short = K8S_STACK_PREFIX + self.tenant
        if len(short) < K8S_STACK_NAME_MAX:
            return short
        digest = hashlib.sha256(self.tenant.encode()).hexdigest()[:_K8S_HASH_LEN]
        keep = K8S_STACK_NAME_MAX - len(K8S_STACK_PREFIX) - 2 - _K8S_HASH_LEN
        return f"{K8S_STACK_PREFIX}{self.tenant[:keep]}--{digest}"

    @property
    def k8s_config_map(self) -> str:
        """The ConfigMap that holds the tenant's stack config, beside its Stack."""
        return f"{self.k8s_stack}-config"

    def service(self, product: str) -> ServiceNames:
        return ServiceNames(self, validate_product(product))


@dataclass(frozen=True)
class ServiceNames:
    """Names of one product service of a tenant. Independent of the isolation mode:
    a promotion keeps the users and the Vault path, and only the PostgreSQL login
    changes, with its generation (:meth:`pg_login`)."""

    tenant_names: TenantNames
    product: str

    @property
    def tenant(self) -> str:
        return self.tenant_names.tenant

    @property
    def principal(self) -> str:
        """Login name used for this service in every store (PG role, broker and Mongo user).

        ``<product>_<key>``: products contain no ``_``, so the split is unambiguous.
        """
        return f"{self.product}_{self.tenant_names.key}"

    @property
    def pg_role(self) -> str:
        """The owner of the service's first store (generation 0)."""
        return self.pg_owner(0)

    def pg_owner(self, generation: int) -> str:
        """The role that owns the service's store of ``generation``: its schema and
        everything in it. Before rotation existed it was also the store's one login
        (the *legacy* model); since, it is NOLOGIN and :meth:`pg_login` logs in.

        Each promotion gives the new store a new owner (credentials are never shared
        between isolation modes), and both live side by side until the old one is
        retired. ``__`` never occurs in a principal (keys have no ``__``), so
        ``<principal>__g<n>`` cannot be another tenant's name.
        """
        if not 0 <= generation <= MAX_GENERATION:
            raise InvalidInput(f"generation {generation} is not in 0..{MAX_GENERATION}")
        return self.principal if generation == 0 else f"{self.principal}__g{generation}"

    def pg_login(self, generation: int, slot: str | None) -> str:
        """The login of slot ``slot`` (``a`` or ``b``) of the store of ``generation``,
        a member of :meth:`pg_owner` that acts as it; ``None``: the legacy owner-login.

        ``<principal>__<generation><slot>``: at most 61 characters, and never an owner's
        name (those end in ``__g<n>``) nor another service's.
        """
        owner = self.pg_owner(generation)
        if slot is None:
            return owner
        if slot not in SLOTS:
            raise InvalidInput(f"login slot {slot!r} is not one of {', '.join(SLOTS)}")
        return f"{self.principal}__{generation}{slot}"

    def pg_logins(self) -> frozenset[str]:
        """Every login the service may have, whatever its generation and slot."""
        return frozenset(
            self.pg_login(g, slot) for g in range(MAX_GENERATION + 1) for slot in (None, *SLOTS)
        )

    def pg_slot_logins(self) -> frozenset[str]:
        """Every slot login the service may have (never an owner), whatever its
        generation."""
        return frozenset(
            self.pg_login(g, slot) for g in range(MAX_GENERATION + 1) for slot in SLOTS
        )

    def broker_login(self, slot: str | None) -> str:
        """The RabbitMQ user of ``slot``; ``None``: the legacy one (:attr:`broker_user`)."""
        return self.broker_user if slot is None else f"{self.principal}__{_slot(slot)}"

    def broker_logins(self) -> frozenset[str]:
        """Every RabbitMQ user the service may have, whatever its slot."""
        return frozenset(self.broker_login(slot) for slot in (None, *SLOTS))

    def mongo_logins(self) -> frozenset[str]:
        """Every MongoDB user the service may have, whatever its slot."""
        return frozenset(self.mongo_login(slot) for slot in (None, *SLOTS))

    def mongo_login(self, slot: str | None) -> str:
        """The MongoDB user of ``slot``; ``None``: the legacy one (:attr:`mongo_user`)."""
        return self.mongo_user if slot is None else f"{self.principal}__{_slot(slot)}"

    @property
    def pg_dedicated_database(self) -> str:
        """Database used in DATABASE mode (always contains ``_``, so never reserved)."""
        return self.principal

    @property
    def pg_schema(self) -> str:
        return self.tenant_names.pg_schema

    @property
    def pg_retired_schema(self) -> str:
        return self.tenant_names.pg_retired_schema

    @property
    def pg_restore_schema(self) -> str:
        return self.tenant_names.pg_restore_schema

    @property
    def pg_pre_restore_schema(self) -> str:
        return self.tenant_names.pg_pre_restore_schema

    @property
    def broker_user(self) -> str:
        return self.principal

    @property
    def mongo_user(self) -> str:
        return self.principal

    @property
    def vault_secret(self) -> str:
        """KV v2 secret name (below the mount, without ``data/``)."""
        return f"tenants/{self.tenant}/{self.product}"

    @property
    def vault_policy(self) -> str:
        return f"tenant-{self.tenant}-{self.product}"

    @property
    def vault_auth_role(self) -> str:
        """The service's role on the platform's Vault auth mount (AppRole or Kubernetes),
        named as its policy, the only one its tokens carry. At most 64 characters, of
        ``[a-z0-9-]``: within Vault's role-name grammar (``\\w[\\w.@-]*\\w``)."""
        return f"tenant-{self.tenant}-{self.product}"

    @property
    def resource_prefix(self) -> str:
        """Prefix of every Pulumi logical name of this service."""
        return f"{self.tenant}-{self.product}"


def _slot(slot: str) -> str:
    if slot not in SLOTS:
        raise InvalidInput(f"login slot {slot!r} is not one of {', '.join(SLOTS)}")
    return slot


def pg_shared_database(product: str) -> str:
    """The product's shared database for SCHEMA-mode tenants (no ``_``: never a tenant DB)."""
    return validate_product(product)


def quote_ident(name: str) -> str:
    """Quote a PostgreSQL identifier. Derived names never need it; it is defence in depth."""
    return '"' + name.replace('"', '""') + '"'


def tenant_from_schema(schema: str) -> str | None:
    """Reverse of :attr:`TenantNames.pg_schema`; ``None`` if ``schema`` is not a tenant's."""
    if not schema.startswith("tenant_"):
        return None
    return _valid_or_none(schema.removeprefix("tenant_").replace("_", "-"))


def tenant_from_database(product: str, database: str) -> str | None:
    """Reverse of :attr:`ServiceNames.pg_dedicated_database` for ``product``."""
    prefix = f"{product}_"
    if not database.startswith(prefix):
        return None
    return _valid_or_none(database.removeprefix(prefix).replace("_", "-"))


#: What follows a principal in an owner's name (``__g<n>``) or a login's (``__<n><slot>``).
_ROLE_SUFFIX: Final = re.compile(r"__(?:g[0-9]|[0-9][ab])\Z")


def tenant_from_role(product: str, role: str) -> str | None:
    """The tenant whose service of ``product`` a PostgreSQL role (owner or login) is."""
    return tenant_from_database(product, _ROLE_SUFFIX.sub("", role))


def _valid_or_none(tenant: str) -> str | None:
    try:
        return validate_tenant_id(tenant)
    except InvalidInput:
        return None
