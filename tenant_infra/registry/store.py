"""The registry's store: tenants, services, their append-only history, and the outbox.

One PostgreSQL database the control plane owns (declared by the platform program,
:mod:`components.registry`), schema ``registry``, migrated with Alembic like any
product (``migrations/registry/``). Every transition is one transaction: the tenant
and service rows, a history row per change, and the events announcing it in the
outbox; events are published after commit (:meth:`Registry.drain`). Lifecycle
operations refuse to start when the registry cannot be reached: nothing runs
untracked. No secret is ever written here.
"""

from __future__ import annotations

import functools
import getpass
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from tenant_infra.config import (
    SEED_ENVIRONMENTS,
    EventsSettings,
    PlatformConfig,
    PostgresEndpoint,
    RegistrySettings,
    TenantConfig,
    read_stack_file,
)
from tenant_infra.errors import BackendUnavailable, InvalidInput
from tenant_infra.registry import records
from tenant_infra.registry.events import Event, channel, encode, new_event_id, now, tenant_id

log = logging.getLogger("tenant_infra.registry")

SCHEMA: Final = "registry"
SCRIPT_LOCATION: Final = Path(__file__).resolve().parents[1] / "migrations" / "registry"
#: Names the platform stack (``platform/Pulumi.<stack>.yaml``) the control plane uses.
PLATFORM_STACK_ENV: Final = "TENANT_INFRA_PLATFORM_STACK"
ACTOR_ENV: Final = "TENANT_INFRA_ACTOR"

#: After Redis failed, how long this process leaves it alone (events wait in the outbox).
REDIS_BACKOFF_SECONDS: Final = 30.0
_REDIS_DOWN: dict[tuple[str, int], float] = {}

#: How long published events stay in the outbox.
OUTBOX_RETENTION: Final = "7 days"

#: Tenant states (services have :class:`tenant_infra.lifecycle.ServiceState`).
ACTIVE, SUSPENDED, DELETED = "active", "suspended", "deleted"


@dataclass(frozen=True)
class ServiceChange:
    product: str
    isolation: str
    state: str
    reason: str = ""
    revision: str | None = None


@dataclass(frozen=True)
class Change:
    """What one step of an operation did to a tenant, as the lifecycle reports it.

    ``whole_tenant``: the operation named no service (``suspend acme``), so it is
    announced as a tenant event rather than one per service.
    """

    tenant: str
    operation: str
    config: TenantConfig | None
    services: Sequence[ServiceChange] = ()
    whole_tenant: bool = True
    tenant_state: str | None = None
    #: The operation's last record, after its update succeeded: only then do the
    #: tenant's tier and metadata change (and products hear of new connection settings).
    final: bool = True


@dataclass
class Registry:
    settings: RegistrySettings
    endpoint: PostgresEndpoint
    password: str | None = field(default=None, repr=False)
    events: EventsSettings | None = None
    redis_password: str | None = field(default=None, repr=False)
    actor: str = field(default_factory=lambda: _actor())
    owner_password: str | None = field(default=None, repr=False)

    # ------------------------------------------------------------------- opening

    @classmethod
    def from_platform(cls, root: Path, environ: Mapping[str, str] | None = None) -> Registry:
        """The registry of the platform definition named by ``TENANT_INFRA_PLATFORM_STACK``.

        Not configured is invalid input (exit 2): lifecycle operations never run
        untracked. Passwords come from the environment.
        """
        env = os.environ if environ is None else environ
        stack = env.get(PLATFORM_STACK_ENV)
        if not stack:
            raise InvalidInput(
                f"no registry: set {PLATFORM_STACK_ENV} to the platform stack whose registry "
                "records the lifecycle (platform/Pulumi.<stack>.yaml)"
            )
        path = root / "platform" / f"Pulumi.{stack}.yaml"
        if not path.is_file():
            raise InvalidInput(f"{PLATFORM_STACK_ENV}={stack}: no platform stack file {path}")
        platform = PlatformConfig.from_pulumi_values(read_stack_file(path))
        if platform.registry is None:
            raise InvalidInput(f"{path.name} declares no registry (tenant-infra:registry)")
        if platform.events is not None:
            _check_environment(platform.events.environment)
        registry = cls(
            platform.registry,
            platform.platform.postgres_for("default"),
            env.get("TENANT_INFRA_REGISTRY_PASSWORD"),
            platform.events,
            env.get("TENANT_INFRA_REDIS_PASSWORD"),
        )
        if env.get(ACTOR_ENV):
            registry.actor = env[ACTOR_ENV]
        registry.owner_password = env.get("TENANT_INFRA_REGISTRY_OWNER_PASSWORD")
        return registry

    def params(self) -> dict[str, Any]:
        s, e = self.settings, self.endpoint
        params: dict[str, Any] = {
            "host": e.host,
            "port": e.port,
            "dbname": s.database,
            "user": s.user,
            "sslmode": e.sslmode,
            "connect_timeout": 10,
            "application_name": "tenant-infra-registry",
        }
        if self.password:
            params["password"] = self.password
        return params

    def connect(self) -> psycopg.Connection[dict[str, Any]]:
        try:
            return psycopg.connect(**self.params(), row_factory=dict_row)
        except psycopg.Error as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BackendUnavailable(
                f"registry at {self.endpoint.host}:{self.endpoint.port}/{self.settings.database}"
                f" unreachable: {detail}"
            ) from None

    def revision(self) -> str | None:
        """The registry schema's revision (``None``: not created yet)."""
        try:
            with self.connect() as conn:
                row = conn.execute(
                    f"SELECT string_agg(version_num, ',' ORDER BY version_num) AS v"
                    f" FROM {SCHEMA}.alembic_version"
                ).fetchone()
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
            return None
        except psycopg.Error as exc:
            raise _reported("reading its revision", exc) from None
        return row["v"] if row else None

    def open(self) -> Registry:
        """Reach the registry and bring its schema to head; raises before anything runs.

        The schema is migrated by the registry's owner, never by the control plane's
        role: that one cannot alter a table or the history's guard. Already at head,
        the owner's login is not needed.
        """
        from tenant_infra.migrate.engine import TenantMigrator
        from tenant_infra.migrate.revisions import declared_head
        from tenant_infra.migrate.targets import MigrationTarget

        head = declared_head(SCRIPT_LOCATION)
        current = self.revision()
        if current != head:
            owner = {**self.params(), "user": self.settings.owner}
            owner.pop("password", None)
            if self.owner_password:
                owner["password"] = self.owner_password
            try:
                with psycopg.connect(**owner) as conn:
                    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
            except psycopg.errors.UniqueViolation:
                pass  # a concurrent first open created it
            except psycopg.Error as exc:
                raise BackendUnavailable(
                    f"registry schema at {current or 'nothing'}, needs {head}: migrating it "
                    f"takes its owner {self.settings.owner!r} (TENANT_INFRA_REGISTRY_OWNER_"
                    f"PASSWORD): {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                ) from None
            # The registry's revisions are the platform's own code: they run here.
            migrator = TenantMigrator(SCRIPT_LOCATION, {k: str(v) for k, v in owner.items()})
            try:
                result = migrator.upgrade(MigrationTarget(schema=SCHEMA))
            finally:
                migrator.close()
            if result.status == "failed":
                raise BackendUnavailable(f"registry schema: {result.error}")
        self.drain()  # what an earlier run could not publish
        with self.connect() as conn:
            # Published events are kept a while (for an operator's questions), not forever.
            conn.execute(
                f"DELETE FROM {SCHEMA}.outbox WHERE published_at < now() - %s::interval",
                (OUTBOX_RETENTION,),
            )
        return self

    # ----------------------------------------------------------------- recording

    def record(self, change: Change) -> None:
        """Write one transition: rows, history and outbox in one transaction; then
        publish. A no-op when nothing changed."""
        try:
            self._record(change)
        except psycopg.Error as exc:
            raise _reported(f"recording {change.operation} of {change.tenant}", exc) from None
        self.drain()

    def _record(self, change: Change) -> None:
        with self.connect() as conn, conn.transaction():
            self._queue(conn, change.tenant, _Transition(conn, change, self.actor).apply())

    def _queue(
        self, conn: psycopg.Connection[dict[str, Any]], tenant: str, events: Sequence[Event]
    ) -> None:
        """Put ``events`` in the outbox, in the caller's transaction."""
        environment = self.events.environment if self.events else None
        for event in events if environment else []:
            event_id, at = new_event_id(), now()
            conn.execute(
                f"INSERT INTO {SCHEMA}.outbox (event_id, tenant_id, event_type, channel, body)"
                " VALUES (%s, %s, %s, %s, %s)",
                (
                    event_id,
                    tenant,
                    event.event_type,
                    channel(environment or ""),
                    encode(event.envelope(environment or "", event_id, at)),
                ),
            )

    def record_rotation(self, tenant: str, product: str, credential_type: str) -> None:
        """A service's credentials were replaced (the new ones already in Vault)."""
        self.record_new_credentials(
            tenant, product, "rotate", f"{credential_type} credentials replaced", credential_type
        )

    def record_new_credentials(
        self,
        tenant: str,
        product: str,
        operation: str,
        reason: str,
        credential_type: str,
        invalidate: str | None = None,
    ) -> None:
        """A service's credentials changed (the new ones already in Vault): its row
        changes version, so the API serves the new ones before
        ``tenant.credentials.rotated`` is published; ``invalidate`` also asks products
        to drop everything they cached of the tenant (``tenant.cache.invalidate``)."""
        self._service_news(
            tenant,
            product,
            operation,
            reason,
            lambda path: [
                Event(
                    "tenant.credentials.rotated",
                    tenant,
                    {
                        "service_name": product,
                        "credential_type": credential_type,
                        "new_secret_path": path,
                    },
                )
            ],
            invalidate,
        )

    def record_data_replaced(self, tenant: str, product: str, operation: str, reason: str) -> None:
        """A service's data was replaced under the same credentials (a restore's swap):
        history, and ``tenant.cache.invalidate`` so products drop what they cached."""
        self._service_news(tenant, product, operation, reason, lambda _path: [], reason)

    def _service_news(
        self,
        tenant: str,
        product: str,
        operation: str,
        reason: str,
        events_for: Callable[[str], list[Event]],
        invalidate: str | None,
    ) -> None:
        try:
            with self.connect() as conn, conn.transaction():
                row = conn.execute(
                    f"UPDATE {SCHEMA}.services SET updated_at = now()"
                    " WHERE tenant_id = %s AND product = %s RETURNING state, vault_path",
                    (tenant, product),
                ).fetchone()
                if row is None:
                    raise InvalidInput(f"tenant {tenant!r} has no service {product!r}")
                _history(
                    conn, tenant, product, operation, row["state"], row["state"], reason, self.actor
                )
                events = events_for(row["vault_path"])
                if invalidate is not None:
                    events.append(
                        Event(
                            "tenant.cache.invalidate",
                            tenant,
                            {"service_name": product, "reason": invalidate},
                        )
                    )
                self._queue(conn, tenant, events)
        except psycopg.Error as exc:
            raise _reported(f"recording {operation} of {tenant}", exc) from None
        self.drain()

    def same_tenant(self, tenant: str) -> str | None:
        """Another registered spelling of ``tenant`` (a UUID dashed or not), if any."""
        try:
            with self.connect() as conn:
                row = conn.execute(
                    f"SELECT id FROM {SCHEMA}.tenants WHERE canonical = %s AND id <> %s",
                    (tenant_id(tenant), tenant),
                ).fetchone()
        except psycopg.Error as exc:
            raise _reported("reading a tenant", exc) from None
        return str(row["id"]) if row else None

    def journal(self, operation: str, whole_tenant: bool = True) -> _Journal:
        """A :class:`tenant_infra.lifecycle.Journal` recording ``operation``'s transitions."""
        return _Journal(self, operation, whole_tenant)

    def record_revision(self, tenant: str, product: str, revision: str | None) -> None:
        try:
            return self._record_revision(tenant, product, revision)
        except psycopg.Error as exc:
            raise _reported("recording a revision", exc) from None

    def _record_revision(self, tenant: str, product: str, revision: str | None) -> None:
        """``migrate`` reached ``revision`` for a service: its row and a history entry."""
        with self.connect() as conn, conn.transaction():
            row = conn.execute(
                f"SELECT state, revision FROM {SCHEMA}.services"
                " WHERE tenant_id = %s AND product = %s FOR UPDATE",
                (tenant, product),
            ).fetchone()
            if row is None or row["revision"] == revision:
                return
            conn.execute(
                f"UPDATE {SCHEMA}.services SET revision = %s, updated_at = now()"
                " WHERE tenant_id = %s AND product = %s",
                (revision, tenant, product),
            )
            _history(
                conn,
                tenant,
                product,
                "migrate",
                row["state"],
                row["state"],
                f"{row['revision'] or 'base'} -> {revision or 'base'}",
                self.actor,
            )

    def record_unlock(self, tenant: str, reason: str) -> bool:
        """A stale backend lock of the tenant's stack was cleared: one history entry,
        its state unchanged, no event (nothing changed for products). ``False`` when
        the registry does not know the tenant."""
        try:
            with self.connect() as conn, conn.transaction():
                row = conn.execute(
                    f"SELECT state FROM {SCHEMA}.tenants WHERE id = %s", (tenant,)
                ).fetchone()
                if row is None:
                    return False
                state = str(row["state"])
                _history(conn, tenant, None, "unlock", state, state, reason, self.actor)
        except psycopg.Error as exc:
            raise _reported(f"recording unlock of {tenant}", exc) from None
        return True

    # ------------------------------------------------------------------ events

    def drain(self) -> int:
        try:
            return self._drain()
        except psycopg.Error as exc:
            raise _reported("publishing events", exc) from None

    def _drain(self) -> int:
        """Publish every pending event in order; what Redis refuses stays for later.

        One drainer at a time (an advisory lock; a second one leaves it to the first),
        so events leave in outbox order. Redis is given 2 s and no retry, and after a
        failure this process leaves it alone for :data:`REDIS_BACKOFF_SECONDS`.
        A crash between PUBLISH and the commit publishes an event again, with the same
        ``event_id``: consumers deduplicate on it.
        """
        if self.events is None:
            return 0
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        settings = self.events
        where = (settings.host, settings.port)
        if _REDIS_DOWN.get(where, 0.0) > time.monotonic():
            return 0  # failed a moment ago: this process does not wait on it again
        client = redis.Redis(
            host=settings.host,
            port=settings.port,
            db=settings.db,
            username=settings.user,
            password=self.redis_password,
            ssl=settings.tls,
            socket_timeout=2,
            socket_connect_timeout=2,
            retry=Retry(NoBackoff(), 0),
        )
        published = 0
        try:
            with self.connect() as conn:
                while True:
                    with conn.transaction():
                        busy = conn.execute(
                            "SELECT NOT pg_try_advisory_xact_lock(hashtextextended(%s, 0)) AS busy",
                            ("tenant-infra:registry:outbox",),
                        ).fetchone()
                        if busy and busy["busy"]:
                            return published  # another drainer is at it, in order
                        rows = conn.execute(
                            f"SELECT id, channel, body FROM {SCHEMA}.outbox"
                            " WHERE published_at IS NULL ORDER BY id LIMIT 200"
                        ).fetchall()
                        done: list[int] = []
                        failed = None
                        for row in rows:
                            try:
                                client.publish(row["channel"], row["body"])
                            except redis.RedisError as exc:
                                failed = exc
                                break
                            done.append(row["id"])
                        if done:
                            conn.execute(
                                f"UPDATE {SCHEMA}.outbox SET published_at = clock_timestamp()"
                                " WHERE id = ANY(%s)",
                                (done,),
                            )
                        published += len(done)
                    if failed is not None:
                        _REDIS_DOWN[where] = time.monotonic() + REDIS_BACKOFF_SECONDS
                        log.warning(
                            "events not published yet (Redis at %s:%s: %s); the next operation "
                            "publishes them",
                            settings.host,
                            settings.port,
                            type(failed).__name__,
                        )
                        return published
                    if len(rows) < 200:
                        return published
        finally:
            client.close()

    def pending_events(self) -> int:
        try:
            return self._pending_events()
        except psycopg.Error as exc:
            raise _reported("counting pending events", exc) from None

    def _pending_events(self) -> int:
        with self.connect() as conn:
            row = conn.execute(
                f"SELECT count(*) AS n FROM {SCHEMA}.outbox WHERE published_at IS NULL"
            ).fetchone()
        return int(row["n"]) if row else 0

    # ------------------------------------------------------------------- reading

    def tenants(
        self, state: str | None = None, product: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every tenant with its services, streamed (:meth:`_tenants`)."""
        try:
            yield from self._tenants(state, product)
        except psycopg.Error as exc:
            raise _reported("listing tenants", exc) from None

    def _tenants(
        self, state: str | None = None, product: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every tenant with its services: one query, streamed through a server-side
        cursor so that memory stays flat in the number of tenants (``list``)."""
        with self.connect() as conn, conn.transaction():
            cursor = conn.cursor(name="registry_tenants")
            cursor.itersize = 1000
            cursor.execute(
                f"""
                SELECT t.id AS tenant, t.tier, t.state, t.metadata,
                       t.created_at, t.updated_at,
                       coalesce(jsonb_agg(jsonb_build_object(
                           'product', s.product, 'isolation', s.isolation, 'state', s.state,
                           'reason', s.reason, 'revision', s.revision)
                           ORDER BY s.product) FILTER (WHERE s.product IS NOT NULL),
                           '[]') AS services
                FROM {SCHEMA}.tenants t
                LEFT JOIN {SCHEMA}.services s ON s.tenant_id = t.id
                WHERE (%(state)s::text IS NULL OR t.state = %(state)s
                       OR EXISTS (SELECT 1 FROM {SCHEMA}.services x
                                  WHERE x.tenant_id = t.id AND x.state = %(state)s))
                  AND (%(product)s::text IS NULL OR EXISTS (
                       SELECT 1 FROM {SCHEMA}.services y
                       WHERE y.tenant_id = t.id AND y.product = %(product)s))
                GROUP BY t.id ORDER BY t.id
                """,
                {"state": state, "product": product},
            )
            yield from cursor

    def tenant(self, tenant: str) -> dict[str, Any] | None:
        try:
            return self._tenant(tenant)
        except psycopg.Error as exc:
            raise _reported("reading a tenant", exc) from None

    def _tenant(self, tenant: str) -> dict[str, Any] | None:
        with self.connect() as conn:
            row = conn.execute(
                f"SELECT id AS tenant, tier, state, metadata FROM {SCHEMA}.tenants WHERE id = %s",
                (tenant,),
            ).fetchone()
            if row is None:
                return None
            row["services"] = conn.execute(
                f"SELECT product, isolation, state, reason, revision, vault_path, connection,"
                f" modules, connection_settings FROM {SCHEMA}.services"
                " WHERE tenant_id = %s ORDER BY product",
                (tenant,),
            ).fetchall()
            return row

    def history(self, tenant: str) -> list[dict[str, Any]]:
        try:
            return self._history(tenant)
        except psycopg.Error as exc:
            raise _reported("reading history", exc) from None

    def _history(self, tenant: str) -> list[dict[str, Any]]:
        with self.connect() as conn:
            return conn.execute(
                f"SELECT at, product, operation, old_state, new_state, reason, actor"
                f" FROM {SCHEMA}.history WHERE tenant_id = %s ORDER BY id",
                (tenant,),
            ).fetchall()


@dataclass(frozen=True)
class _Journal:
    registry: Registry
    operation: str
    whole_tenant: bool

    def __call__(
        self,
        config: TenantConfig | None,
        tenant: str,
        statuses: Sequence[Any],
        tenant_state: str | None = None,
        final: bool = True,
    ) -> None:
        """Statuses are :class:`tenant_infra.lifecycle.ServiceStatus` (read by field)."""
        services = [
            ServiceChange(s.product, s.isolation, str(s.state.value), s.reason, s.revision)
            for s in statuses
        ]
        change = Change(
            tenant, self.operation, config, services, self.whole_tenant, tenant_state, final
        )
        self.registry.record(change)


def _actor() -> str:
    """``TENANT_INFRA_ACTOR`` (a pipeline's identity), else the OS user, else the uid."""
    try:
        return os.environ.get(ACTOR_ENV) or getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def _reported(what: str, exc: psycopg.Error) -> BackendUnavailable:
    """A registry error as one line (never a traceback, never a value)."""
    if isinstance(exc, psycopg.errors.UndefinedTable):
        return BackendUnavailable(
            f"registry: {what}: it has no tables yet; run a lifecycle verb (or "
            "tenantctl drain-events) once to create them"
        )
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return BackendUnavailable(f"registry: {what}: {detail}")


@functools.cache
def _check_environment(name: str) -> None:
    """Warn once per process: products subscribe to ``staging`` or ``production`` only."""
    if name not in SEED_ENVIRONMENTS:
        log.warning(
            "events environment %r: the seed platform's products accept only %s",
            name,
            " and ".join(SEED_ENVIRONMENTS),
        )


def _history(
    conn: psycopg.Connection[dict[str, Any]],
    tenant: str,
    product: str | None,
    operation: str,
    old: str | None,
    new: str,
    reason: str,
    actor: str,
) -> None:
    conn.execute(
        f"INSERT INTO {SCHEMA}.history (tenant_id, product, operation, old_state, new_state,"
        " reason, actor) VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (tenant, product, operation, old, new, reason, actor),
    )


class _Transition:
    """One :class:`Change` applied inside the caller's transaction; returns its events."""

    def __init__(self, conn: psycopg.Connection[dict[str, Any]], change: Change, actor: str):
        self.conn, self.change, self.actor = conn, change, actor
        self.events: list[Event] = []

    def apply(self) -> list[Event]:
        change = self.change
        config = change.config
        if config is not None:  # two runners onboarding one new tenant: one row
            self.conn.execute(
                f"INSERT INTO {SCHEMA}.tenants (id, canonical, metadata, tier, state)"
                " VALUES (%s, %s, %s, %s, 'new') ON CONFLICT (id) DO NOTHING",
                (
                    change.tenant,
                    tenant_id(change.tenant),
                    Jsonb(dict(config.metadata)),
                    config.tier,
                ),
            )
        tenant_row = self.conn.execute(
            f"SELECT tier, state FROM {SCHEMA}.tenants WHERE id = %s FOR UPDATE",
            (change.tenant,),
        ).fetchone()
        if tenant_row is None:
            return []
        old_tier, old_state = tenant_row["tier"], tenant_row["state"]
        reborn = old_state == DELETED and change.operation in ("onboard", "register")
        if old_state == "new" or reborn:  # created, or an offboarded id onboarded again
            self.conn.execute(
                f"UPDATE {SCHEMA}.tenants SET state = %s, updated_at = now() WHERE id = %s",
                (ACTIVE, change.tenant),
            )
            self._history(None, None if old_state == "new" else old_state, ACTIVE, "")
            self.events.append(Event("tenant.created", change.tenant, {}))
            old_state = ACTIVE
        if config is not None and change.final:
            self.conn.execute(
                f"UPDATE {SCHEMA}.tenants SET metadata = %s, tier = %s, updated_at = now()"
                " WHERE id = %s AND (metadata, tier) IS DISTINCT FROM (%s, %s)",
                (
                    Jsonb(dict(config.metadata)),
                    config.tier,
                    change.tenant,
                    Jsonb(dict(config.metadata)),
                    config.tier,
                ),
            )
        old_services = {
            row["product"]: row
            for row in self.conn.execute(
                f"SELECT product, state, reason, revision, announced FROM {SCHEMA}.services"
                " WHERE tenant_id = %s FOR UPDATE",
                (change.tenant,),
            )
        }
        for service in change.services:
            self._service(service, old_services.get(service.product))
        self._tenant_state(old_state)
        if config is not None and change.final and old_tier != config.tier:
            self._history(None, old_state, old_state, f"tier {old_tier} -> {config.tier}")
            self._tier_changed(config)
        return self.events

    def _history(self, product: str | None, old: str | None, new: str, reason: str) -> None:
        _history(
            self.conn,
            self.change.tenant,
            product,
            self.change.operation,
            old,
            new,
            reason,
            self.actor,
        )

    def _service(self, service: ServiceChange, old: Mapping[str, Any] | None) -> None:
        change, config = self.change, self.change.config
        spec = config.service(service.product) if config is not None else None
        unchanged = old is not None and (old["state"], old["reason"], old["revision"]) == (
            service.state,
            service.reason,
            service.revision,
        )
        describe = spec is not None and (change.final or old is None)
        if (unchanged and not describe) or (old is None and spec is None):
            return  # nothing new to say, or nothing to describe it with
        # A service that left (retained, purged) and comes back is announced again.
        known = bool(old and old["announced"] and old["state"] not in ("retained", "purged"))
        announce = service.state == "ready" and not known
        if describe and spec is not None and config is not None:
            # Descriptive columns follow the config even when the state stays (a moved
            # host or a new tier must reach what products read), once the operation's
            # update went through: its final record (or a service's first).
            self.conn.execute(
                f"""
                INSERT INTO {SCHEMA}.services (tenant_id, product, isolation, state, reason,
                    revision, vault_path, connection, modules, connection_settings, announced)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                ON CONFLICT (tenant_id, product) DO UPDATE SET
                    isolation = excluded.isolation, state = excluded.state,
                    reason = excluded.reason,
                    revision = coalesce(excluded.revision, {SCHEMA}.services.revision),
                    vault_path = excluded.vault_path, connection = excluded.connection,
                    modules = excluded.modules,
                    connection_settings = excluded.connection_settings,
                    announced = excluded.announced,
                    updated_at = now()
                """,
                (
                    change.tenant,
                    service.product,
                    service.isolation,
                    service.state,
                    service.reason,
                    service.revision,
                    records.vault_path(config, service.product),
                    Jsonb(records.connection_info(config, spec)),
                    Jsonb(records.modules(service.product)),
                    Jsonb(records.connection_settings(config)),
                    announce or (known and service.state not in ("retained", "purged")),
                ),
            )
        else:
            self.conn.execute(
                f"UPDATE {SCHEMA}.services SET state = %s, reason = %s, updated_at = now()"
                " WHERE tenant_id = %s AND product = %s",
                (service.state, service.reason, change.tenant, service.product),
            )
        if unchanged:
            return
        old_state = old["state"] if old else None
        if old_state != service.state or (old and old["reason"] != service.reason):
            self._history(service.product, old_state, service.state, service.reason)
        if old_state != service.state:
            self._service_events(service, old_state, announce)

    def _service_events(self, service: ServiceChange, old: str | None, announce: bool) -> None:
        change, config, product = self.change, self.change.config, service.product
        whole = change.whole_tenant or change.operation == "offboard"
        new = service.state
        # A reactivated service is announced even when the whole tenant resumes:
        # ``tenant.activated`` only refreshes a product's cache, and only this event
        # makes it re-add the tenant it dropped (pools, consumers).
        if new == "ready" and old == "suspended" and config is not None:
            self.events.append(
                Event(
                    "tenant.service.reactivated",
                    change.tenant,
                    {
                        "service_name": product,
                        "previous_status": "suspended",
                        "re_provisioned": False,
                        "secret_paths": records.secret_paths(config, product),
                        "connection_settings": records.connection_settings(config),
                    },
                )
            )
        elif new == "ready" and announce and config is not None:
            self.events.append(
                Event(
                    "tenant.service.associated",
                    change.tenant,
                    {
                        "service_name": product,
                        "isolation_mode": records.isolation_mode(service.isolation),
                        "modules": sorted(records.modules(product)),
                        "secret_paths": records.secret_paths(config, product),
                        "messaging_config": records.messaging_config(config, product),
                        "connection_settings": records.connection_settings(config),
                    },
                )
            )
        elif new == "suspended" and not whole:
            previous = "active" if old in (None, "ready") else old
            self.events.append(
                Event(
                    "tenant.service.suspended",
                    change.tenant,
                    {"service_name": product, "previous_status": previous},
                )
            )
        elif new == "retained" and not whole:
            self.events.append(
                Event(
                    "tenant.service.disassociated",
                    change.tenant,
                    {"service_name": product, "preserve_data": True},
                )
            )
        elif new == "purged" and not whole:
            self.events.append(
                Event("tenant.service.purged", change.tenant, {"service_name": product})
            )

    def _tenant_state(self, old: str) -> None:
        change = self.change
        new = change.tenant_state
        if new is None:
            states = [
                row["state"]
                for row in self.conn.execute(
                    f"SELECT state FROM {SCHEMA}.services WHERE tenant_id = %s"
                    " AND state NOT IN ('retained', 'purged')",
                    (change.tenant,),
                )
            ]
            new = SUSPENDED if states and all(s == "suspended" for s in states) else ACTIVE
            if old == DELETED:
                new = DELETED
        if new == old:
            return
        self.conn.execute(
            f"UPDATE {SCHEMA}.tenants SET state = %s, updated_at = now() WHERE id = %s",
            (new, change.tenant),
        )
        self._history(None, old, new, "")
        tenant_event = {
            SUSPENDED: "tenant.suspended",
            DELETED: "tenant.deleted",
            ACTIVE: "tenant.activated" if old == SUSPENDED else None,
        }[new]
        if tenant_event is not None:
            self.events.append(Event(tenant_event, change.tenant, {}))

    def _tier_changed(self, config: TenantConfig) -> None:
        settings = records.connection_settings(config)
        for spec in config.services:
            for module in sorted(records.modules(spec.product)):
                self.events.append(
                    Event(
                        "tenant.connections.updated",
                        self.change.tenant,
                        {"service_name": spec.product, "module": module, **settings},
                    )
                )
