"""A tenant service's PostgreSQL: its owner and logins, and its DATABASE- or SCHEMA-mode store.

In both modes the service's tables live in the schema ``tenant_<key>``, owned by the
service's owner role; only the database around it differs:

- DATABASE: a dedicated database ``<product>_<key>`` (resources tagged ``dedicated``);
- SCHEMA: the product's shared database ``<product>`` (resources tagged ``shared``).

Each store has its own login (the service's generation of it), and the two stores'
resources have distinct names, so promoting SCHEMA→DATABASE declares the dedicated
store, with new credentials, beside the shared one, copies, repoints the service and
then drops the shared one; the Vault path stays.

Owner and logins: the owner role owns the schema and everything in it, and never
logs in. Two alternating login roles per store (slots ``a`` and ``b``, see
``tenantctl rotate``) are its members, NOINHERIT, and act as it from their first
statement (``ALTER ROLE … SET ROLE``, the provider's ``assume_role``): whatever a
migration or the product creates is the owner's, whichever login is current, so a
login can be dropped without touching data. ``RESET ROLE`` returns to the owner;
``SET ROLE NONE`` reaches the login itself, which holds nothing but CONNECT (what it
makes there is handed to the owner before it is dropped, never to the admin). A
service provisioned before rotation existed has one login, the owner itself
(*legacy*); its first rotation moves it on.

Least privilege: every role is plain (no superuser, createdb, createrole,
replication, RLS bypass or inherited membership), and each login may CONNECT to
its database. Databases stay owned by the platform admin, so a tenant can
neither re-open its database to PUBLIC nor create objects in its ``public`` schema;
PUBLIC's default CONNECT/TEMP on a dedicated database is revoked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import pulumi
import pulumi_postgresql as postgresql

from tenant_infra.catalog import IsolationMode, Limits
from tenant_infra.components import PACKAGE
from tenant_infra.components.providers import Providers
from tenant_infra.components.secrets import generated_password
from tenant_infra.config import LEGACY, Promotion, StoreLogins
from tenant_infra.tenant import ServiceNames, pg_shared_database


def revoke_public(
    name: str,
    database: pulumi.Input[str],
    opts: pulumi.ResourceOptions,
    schema: str | None = None,
) -> postgresql.Grant:
    """Take every privilege PUBLIC has on a database (or one of its schemas).

    A Grant with no privileges revokes them; the Schema resource's own PUBLIC policy
    is ignored by the provider (pulumi-postgresql#91), so this is the one way.
    """
    return postgresql.Grant(
        name,
        role="public",
        database=database,
        schema=schema,
        object_type="schema" if schema else "database",
        privileges=[],
        opts=opts,
    )


def unprivileged_role(
    name: str,
    role: str,
    password: pulumi.Input[str] | None,
    opts: pulumi.ResourceOptions,
    login: bool = True,
    **settings: Any,
) -> postgresql.Role:
    """A role with no attribute beyond LOGIN: every privilege it has is granted."""
    return postgresql.Role(
        name,
        name=role,
        login=login,
        password=password,
        superuser=False,
        create_database=False,
        create_role=False,
        replication=False,
        bypass_row_level_security=False,
        inherit=False,
        opts=opts,
        **settings,
    )


@dataclass(frozen=True)
class PostgresArgs:
    names: ServiceNames
    isolation: IsolationMode
    limits: Limits
    protect_data: bool
    #: False while the service is suspended or retained: the role keeps owning its data
    #: but cannot log in.
    login: bool = True
    #: The generation of the live store's owner (:meth:`ServiceNames.pg_owner`).
    generation: int = 0
    promotion: Promotion | None = None
    #: The store's logins (``None``: the legacy owner-login), same in every store.
    logins: StoreLogins | None = None


@dataclass(frozen=True)
class _StoreArgs:
    isolation: IsolationMode
    generation: int
    schema: str
    login: bool
    protect: bool


@dataclass(frozen=True)
class PostgresStore:
    """One store's current login and location (its password is a secret output)."""

    role: pulumi.Output[str]
    password: pulumi.Output[str]
    database: pulumi.Output[str]
    schema: pulumi.Output[str]


@dataclass(frozen=True)
class _Login:
    role: postgresql.Role
    password: pulumi.Output[str]


class ServicePostgres(pulumi.ComponentResource):
    """Role, database (DATABASE mode) and schema of one tenant service.

    A promotion declares a second store beside the live one: the dedicated store it
    moves to (``target``) until it is repointed, then the retired shared schema until
    that is dropped. Each store has the login of its own generation, so the two never
    share a credential, and no resource of one is renamed by the other.
    """

    role: pulumi.Output[str]
    password: pulumi.Output[str]
    database: pulumi.Output[str]
    schema: pulumi.Output[str]
    #: The dedicated store a promotion copies into, before it is repointed.
    target: PostgresStore | None

    def __init__(
        self,
        name: str,
        args: PostgresArgs,
        providers: Providers,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(f"{PACKAGE}:postgres:ServicePostgres", name, None, opts)
        # Not `_providers`: ComponentResource uses that attribute itself.
        self._name, self._args, self._stack_providers = name, args, providers
        names, promotion = args.names, args.promotion
        sealed = promotion is not None and promotion.sealed and not promotion.repointed
        live = self._store(
            _StoreArgs(
                args.isolation,
                args.generation,
                names.pg_schema,
                args.login and not sealed,
                args.protect_data,
            )
        )
        self.role, self.password, self.database, self.schema = (
            live.role,
            live.password,
            live.database,
            live.schema,
        )
        self.target = None
        if promotion is not None and not promotion.repointed:
            # It holds no data of record until repointed: unprotected, so that an
            # aborted promotion can drop it.
            login = args.login and not promotion.aborted
            self.target = self._store(
                _StoreArgs(
                    IsolationMode.DATABASE, args.generation + 1, names.pg_schema, login, False
                )
            )
        elif promotion is not None:
            # Retired: renamed aside, its login refused, its data kept until dropped.
            self._store(
                _StoreArgs(
                    IsolationMode.SCHEMA,
                    args.generation - 1,
                    names.pg_retired_schema,
                    False,
                    args.protect_data and not promotion.drop_source,
                )
            )
        self.register_outputs({"role": self.role, "database": self.database, "schema": self.schema})

    def _store(self, store: _StoreArgs) -> PostgresStore:
        name, args, names = self._name, self._args, self._args.names
        dedicated = store.isolation is IsolationMode.DATABASE
        # DROP OWNED / REASSIGN OWNED on destroy run only in the provider's database.
        role_provider = (
            self._stack_providers.postgres(names.product, "postgres", "admin")
            if dedicated
            else self._stack_providers.postgres(
                names.product, pg_shared_database(names.product), "shared"
            )
        )
        # Generation 0 keeps the names every service had before promotions existed.
        suffix = f"-g{store.generation}" if store.generation else ""
        logins = args.logins
        # The owner logs in only in the legacy model, and until the first rotation
        # that replaces it finishes.
        owner_logs_in = logins is None or (logins.previous == LEGACY and not logins.revoked)
        settings: dict[str, Any] = {
            "connection_limit": args.limits.pg_connection_limit,
            "statement_timeout": args.limits.pg_statement_timeout_ms,
            "idle_in_transaction_session_timeout": args.limits.pg_idle_in_transaction_timeout_ms,
            "search_paths": [names.pg_schema],
        }
        on_server = pulumi.ResourceOptions(parent=self, provider=role_provider)
        owner_password = (
            generated_password(f"{name}-password{suffix}", self) if owner_logs_in else None
        )
        owner = unprivileged_role(
            f"{name}-role{suffix}",
            names.pg_owner(store.generation),
            owner_password,
            on_server,
            login=store.login and owner_logs_in,
            **settings,
        )
        current = _Login(owner, cast(pulumi.Output[str], owner_password))
        # The owner may CONNECT only while it logs in.
        connects: list[tuple[str, postgresql.Role]] = [("", owner)] if owner_logs_in else []
        for slot in logins.slots() if logins else ():
            if slot is None:
                continue
            revoked = logins is not None and logins.revoked_slot(slot)
            password = generated_password(f"{name}-login-{slot}-password{suffix}", self)
            login = unprivileged_role(
                f"{name}-login-{slot}{suffix}",
                names.pg_login(store.generation, slot),
                password,
                on_server,
                login=store.login and not revoked,
                roles=[owner.name],
                assume_role=owner.name,
                # The provider's delete would REASSIGN what the login owns to the
                # platform admin: a tenant's function made SECURITY DEFINER as the
                # admin. The rotation hands it to the owner first (operations/rotate).
                skip_reassign_owned=True,
                **settings,
            )
            connects.append((f"-{slot}", login))
            if logins is not None and slot == logins.current:
                current = _Login(login, password)
        database, schema = (
            self._dedicated_store(owner, connects, store)
            if dedicated
            else self._shared_store(owner, connects, store)
        )
        return PostgresStore(current.role.name, current.password, database, schema)

    def _dedicated_store(
        self, role: postgresql.Role, connects: list[tuple[str, postgresql.Role]], store: _StoreArgs
    ) -> tuple[pulumi.Output[str], pulumi.Output[str]]:
        name, args, names = f"{self._name}-dedicated", self._args, self._args.names
        admin = self._stack_providers.postgres(names.product, "postgres", "admin")
        database = postgresql.Database(
            f"{name}-db",
            name=names.pg_dedicated_database,
            template="template0",
            encoding="UTF8",
            connection_limit=args.limits.pg_connection_limit,
            # Destroyed before the roles: the owner owns the schema inside, a login may
            # own a large object there, and DROP OWNED runs in `postgres` only, so
            # DROP ROLE needs this database gone first.
            opts=pulumi.ResourceOptions(
                parent=self,
                provider=admin,
                depends_on=[login for _, login in connects] + [role],
                protect=store.protect,
            ),
        )
        # Everything inside the dedicated database goes away with it: no REVOKE or
        # DROP SCHEMA is sent to a database that is being dropped.
        inside = self._stack_providers.postgres(
            names.product, database.name, "dedicated", [database]
        )
        revoke_public(
            f"{name}-revoke-public",
            database.name,
            pulumi.ResourceOptions(parent=self, provider=admin, deleted_with=database),
        )
        return database.name, self._schema_in(
            name, database.name, role, connects, inside, database, store
        )

    def _shared_store(
        self, role: postgresql.Role, connects: list[tuple[str, postgresql.Role]], store: _StoreArgs
    ) -> tuple[pulumi.Output[str], pulumi.Output[str]]:
        name, names = f"{self._name}-shared", self._args.names
        shared = pg_shared_database(names.product)
        provider = self._stack_providers.postgres(names.product, shared, "shared")
        database = pulumi.Output.from_input(shared)
        return database, self._schema_in(name, database, role, connects, provider, None, store)

    def _schema_in(
        self,
        name: str,
        database: pulumi.Output[str],
        role: postgresql.Role,
        connects: list[tuple[str, postgresql.Role]],
        provider: postgresql.Provider,
        deleted_with: pulumi.Resource | None,
        store: _StoreArgs,
    ) -> pulumi.Output[str]:
        """CONNECT for the owner and each login (a NOINHERIT member's own), and the
        tenant schema the owner owns, in ``database``."""
        inside = pulumi.ResourceOptions(parent=self, provider=provider, deleted_with=deleted_with)
        # The owner's grant keeps its pre-rotation name; a login's is named by its slot.
        for slot, login in connects:
            postgresql.Grant(
                f"{name}-connect{slot}",
                role=login.name,
                database=database,
                object_type="database",
                privileges=["CONNECT"],
                opts=inside,
            )
        schema = postgresql.Schema(
            f"{name}-schema",
            # A new name renames it in place (the provider's update): how a promoted
            # service's schema is put aside.
            name=store.schema,
            database=database,
            owner=role.name,
            # Once migrations ran, RESTRICT fails on the tables inside. Data that is
            # no longer protected (a purge, or a disposable dev stack) goes with them;
            # protected data cannot be deleted anyway.
            drop_cascade=not store.protect,
            if_not_exists=False,
            opts=pulumi.ResourceOptions.merge(
                inside, pulumi.ResourceOptions(protect=store.protect)
            ),
        )
        return cast(pulumi.Output[str], schema.name)
