"""What the platform's admin logins do to a service's logins beyond its stack.

- Ending a suspended service's open sessions: the stack update of a suspension
  revokes every credential (``NOLOGIN``, RabbitMQ permissions removed, MongoDB roles
  removed), but PostgreSQL and RabbitMQ keep the connections already open. This
  closes them, so a suspension takes effect at once. MongoDB needs nothing: a user
  whose roles are gone is refused its next operation.
- Dropping what a service's role owns outside its own store before a purge drops
  the role: a tenant may leave a large object in ``postgres`` (every role may connect
  there by default), and ``DROP ROLE`` then fails ("owner of large object").
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import psycopg
import psycopg.sql
import requests

from tenant_infra.catalog import IsolationMode, Store, load_catalog
from tenant_infra.config import TenantConfig
from tenant_infra.credentials import PlatformCredentials
from tenant_infra.errors import BackendUnavailable, OperationFailed, first_line, scrub
from tenant_infra.retry import with_retries
from tenant_infra.tenant import MAX_GENERATION, pg_shared_database

REASON = "tenant-infra: service suspended"
#: How long a purge waits on another session's lock before failing (to be run again).
STRAY_LOCK_WAIT_SECONDS = 30


def admin_params(
    config: TenantConfig,
    product: str,
    environ: Mapping[str, str],
    dbname: str,
    application: str | None = None,
) -> dict[str, Any]:
    """The platform admin's connection to ``product``'s server, on ``dbname``; named
    ``tenant-infra-<application>`` in ``pg_stat_activity`` when an operation says."""
    endpoint = config.platform.postgres_for(product)
    params: dict[str, Any] = {
        "host": endpoint.host,
        "port": endpoint.port,
        "user": endpoint.admin_user,
        "dbname": dbname,
        "sslmode": endpoint.sslmode,
        "connect_timeout": 15,
    }
    if application is not None:
        params["application_name"] = f"tenant-infra-{application}"
    password = PlatformCredentials(environ).postgres_password_value(product)
    if password:
        params["password"] = password
    return params


def _admin(config: TenantConfig, product: str, environ: Mapping[str, str], dbname: str) -> Any:
    return psycopg.connect(**admin_params(config, product, environ, dbname), autocommit=True)


def drop_strays(
    config: TenantConfig,
    products: Sequence[str],
    environ: Mapping[str, str] | None = None,
    logins: Sequence[str] | None = None,
) -> list[str]:
    """``DROP OWNED BY`` the services' roles (or only ``logins``) in every database but
    their own stores where they own or hold something (``pg_shdepend``); returns
    ``<database>:<role>``. For a purge (every role), the slot logins' in their own
    stores too: the provider drops a login without ``REASSIGN``/``DROP OWNED``
    (``components/postgres.py``), so nothing of theirs may be left anywhere."""
    env = os.environ if environ is None else environ
    dropped: list[str] = []
    for product in products:
        names = config.names.service(product)
        dropped_logins = list(logins) if logins is not None else config.pg_logins(product)
        owners = {names.pg_owner(g) for g in range(MAX_GENERATION + 1)}
        spec = config.service(product)
        stores = {
            IsolationMode.DATABASE: names.pg_dedicated_database,
            IsolationMode.SCHEMA: pg_shared_database(product),
        }
        # A promotion's two stores are both the service's own.
        own = (
            set(stores.values())
            if spec is not None and spec.promotion is not None
            else {stores[spec.isolation if spec is not None else IsolationMode.SCHEMA]}
        )
        try:
            with _admin(config, product, env, "postgres") as conn:
                # Its own sessions first: an open one could make a new stray, or hold a
                # lock the drop waits on.
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE usename = ANY(%s)",
                    (dropped_logins,),
                )
                strays = [
                    (row[0], row[1])
                    for row in conn.execute(
                        "SELECT DISTINCT d.datname, r.rolname FROM pg_shdepend s"
                        " JOIN pg_database d ON d.oid = s.dbid"
                        " JOIN pg_roles r ON r.oid = s.refobjid"
                        " WHERE s.refclassid = 'pg_authid'::regclass"
                        " AND r.rolname = ANY(%s) ORDER BY 1, 2",
                        (dropped_logins,),
                    )
                    if row[0] not in own or (logins is None and row[1] not in owners)
                ]
                present = conn.execute(
                    "SELECT datname FROM pg_catalog.pg_database WHERE datname = ANY(%s)",
                    (sorted(own),),
                ).fetchall()
            # A restore's schemas (the copy being made, the data a swap replaced) are
            # the service's data too: a purge (every login) takes them, and the
            # restore's login.
            if spec is not None and logins is None:
                _drop_restores(config, product, env, {str(r[0]) for r in present})
            for database, login in strays:
                with _admin(config, product, env, database) as conn:
                    # A neighbour's open transaction on something granted to the role
                    # must fail the purge in a while (it can be run again), not hang it.
                    conn.execute(f"SET lock_timeout = '{STRAY_LOCK_WAIT_SECONDS}s'")
                    try:
                        with acting_for(conn, [login]):
                            drop_owned(conn, login)
                    except psycopg.errors.LockNotAvailable:
                        raise OperationFailed(
                            f"dropping what {login} holds in {database} waited "
                            f"{STRAY_LOCK_WAIT_SECONDS} s on another session's transaction; "
                            "run it again once that ends"
                        ) from None
                dropped.append(f"{database}:{login}")
        except psycopg.Error as exc:
            raise BackendUnavailable(f"PostgreSQL: {scrub(str(exc).splitlines()[0])}") from None
    return dropped


def _drop_restores(
    config: TenantConfig, product: str, environ: Mapping[str, str], databases: set[str]
) -> None:
    from tenant_infra.operations.restore import restorer_name
    from tenant_infra.pgdata.copy import drop_login

    names = config.names.service(product)
    for database in sorted(databases):
        params = admin_params(config, product, environ, database)
        with psycopg.connect(**params, autocommit=True) as conn:
            conn.execute(f"SET lock_timeout = '{STRAY_LOCK_WAIT_SECONDS}s'")
            for schema in (names.pg_restore_schema, names.pg_pre_restore_schema):
                conn.execute(
                    psycopg.sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                        psycopg.sql.Identifier(schema)
                    )
                )
        drop_login(params, restorer_name(config.pg_owner(product)))


def drop_owned(conn: psycopg.Connection[Any], login: str, reassign_to: str | None = None) -> None:
    """``DROP OWNED BY login`` (after ``REASSIGN OWNED`` to ``reassign_to``), again when
    a neighbour's grant changed the same database's privileges at the same moment
    (:mod:`tenant_infra.retry`): both statements are idempotent."""
    role = psycopg.sql.Identifier(login)

    def once() -> None:
        if reassign_to is not None:
            conn.execute(
                psycopg.sql.SQL("REASSIGN OWNED BY {} TO {}").format(
                    role, psycopg.sql.Identifier(reassign_to)
                )
            )
        conn.execute(psycopg.sql.SQL("DROP OWNED BY {}").format(role))

    with_retries(once)


@contextlib.contextmanager
def acting_for(conn: psycopg.Connection[Any], roles: Sequence[str]) -> Iterator[None]:
    """``REASSIGN``/``DROP OWNED`` need the admin to hold ``roles``' privileges: a
    superuser does; a ``CREATEROLE`` admin is granted them for the while, as the
    provider's ``withRolesGranted`` does, and they are revoked after."""
    row = conn.execute("SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user")
    found = row.fetchone()
    granted: list[str] = []
    if not (found and found[0]):
        for role in roles:
            member = conn.execute(
                "SELECT pg_catalog.pg_has_role(current_user, %s, 'USAGE')", (role,)
            ).fetchone()
            if not (member and member[0]):
                conn.execute(
                    psycopg.sql.SQL("GRANT {} TO CURRENT_USER").format(psycopg.sql.Identifier(role))
                )
                granted.append(role)
    try:
        yield
    finally:
        for role in granted:
            with contextlib.suppress(psycopg.Error):
                conn.execute(
                    psycopg.sql.SQL("REVOKE {} FROM CURRENT_USER").format(
                        psycopg.sql.Identifier(role)
                    )
                )


def release_logins(
    config: TenantConfig,
    product: str,
    environ: Mapping[str, str],
    logins: Sequence[str],
    owner: str,
    stores: Sequence[str],
) -> None:
    """Before slot logins are dropped (the provider drops them without ``REASSIGN`` or
    ``DROP OWNED``, so that nothing of a tenant's goes to the platform admin): in the
    service's ``stores``, what they own goes to ``owner`` and their grants go; in every
    other database, both go (:func:`drop_strays`). A neighbour's open transaction on
    something granted to them fails this in a while (run it again), never hangs it."""
    for database in stores:
        params = admin_params(config, product, environ, database)
        try:
            with psycopg.connect(**params, autocommit=True) as conn:
                present = {
                    str(r[0])
                    for r in conn.execute(
                        "SELECT datname FROM pg_catalog.pg_database WHERE datname = %s",
                        (database,),
                    )
                }
                there = [
                    login
                    for (login,) in conn.execute(
                        "SELECT rolname FROM pg_catalog.pg_roles WHERE rolname = ANY(%s)",
                        (list(logins),),
                    )
                ]
                if not present or not there:
                    continue
                conn.execute(f"SET lock_timeout = '{STRAY_LOCK_WAIT_SECONDS}s'")
                with acting_for(conn, [*there, owner]):
                    for login in logins:
                        if login in there:
                            drop_owned(conn, login, reassign_to=owner)
        except psycopg.errors.LockNotAvailable:
            raise OperationFailed(
                f"releasing {', '.join(logins)} in {database} waited {STRAY_LOCK_WAIT_SECONDS} s "
                "on another session's transaction; run it again once that ends"
            ) from None
    drop_strays(config, [product], environ, logins=list(logins))


def close_sessions(
    config: TenantConfig, products: Sequence[str], environ: Mapping[str, str] | None = None
) -> list[str]:
    """Terminate the services' PostgreSQL backends and close their AMQP connections.

    Returns what was closed, as ``<store>:<login>`` lines.
    """
    env = os.environ if environ is None else environ
    credentials = PlatformCredentials(env)
    catalog = load_catalog()
    closed: list[str] = []
    for product in products:
        try:
            with _admin(config, product, env, "postgres") as conn:
                rows = conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE usename = ANY(%s)",
                    (config.pg_logins(product),),
                ).fetchall()
        except psycopg.Error as exc:
            raise BackendUnavailable(f"PostgreSQL: {scrub(str(exc).splitlines()[0])}") from None
        closed.append(f"postgresql:{config.pg_login(product)} ({len(rows)} sessions)")
        rabbit = config.platform.rabbitmq
        if rabbit is None or not catalog.product(product).needs(Store.RABBITMQ):
            continue
        auth = (rabbit.admin_user, credentials.rabbitmq_password_value())
        for user in config.broker_logins(product):
            close_broker_connections(rabbit.management_url, auth, user)
            closed.append(f"rabbitmq:{user}")
    return closed


#: Roles other than ``own`` that the database's privileges refuse now, with a session
#: there (its pid) or something they own there (pid NULL); superusers and the owner
#: are never refused.
_REFUSED = """
SELECT r.rolname, a.pid
  FROM pg_catalog.pg_stat_activity a JOIN pg_catalog.pg_roles r ON r.oid = a.usesysid
 WHERE a.datname = current_database() AND a.pid <> pg_catalog.pg_backend_pid()
   AND r.rolname <> ALL(%(own)s)
   AND NOT pg_catalog.has_database_privilege(r.oid, a.datid, 'CONNECT')
UNION
SELECT r.rolname, NULL
  FROM pg_catalog.pg_shdepend s JOIN pg_catalog.pg_database d ON d.oid = s.dbid
  JOIN pg_catalog.pg_roles r ON r.oid = s.refobjid
 WHERE d.datname = current_database() AND s.deptype = 'o'
   AND s.refclassid = 'pg_catalog.pg_authid'::pg_catalog.regclass
   AND r.rolname <> ALL(%(own)s)
   AND NOT pg_catalog.has_database_privilege(r.oid, d.oid, 'CONNECT')
"""


#: The large objects in the database of ``%s`` (roles): the one thing a role with
#: only ``CONNECT`` can create in a PostgreSQL 15 database (temporary objects end
#: with its session).
_PLANTED = """
SELECT s.objid, r.rolname
  FROM pg_catalog.pg_shdepend s JOIN pg_catalog.pg_database d ON d.oid = s.dbid
  JOIN pg_catalog.pg_roles r ON r.oid = s.refobjid
 WHERE d.datname = current_database() AND s.deptype = 'o'
   AND s.classid = 'pg_catalog.pg_largeobject'::pg_catalog.regclass
   AND r.rolname = ANY(%s)
 ORDER BY 1
"""


@dataclass(frozen=True)
class Eviction:
    """What :func:`evict_refused` did in a service's dedicated database."""

    #: ``<role> (<n>)``: sessions ended.
    ended: tuple[str, ...] = ()
    #: ``<role> (<n>)``: sessions still there (running after 5 s, or not the admin's
    #: to end: it needs ``pg_signal_backend``).
    left: tuple[str, ...] = ()
    #: ``large object <oid> of <role>``: what their sessions left, removed.
    removed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.ended or self.left or self.removed)

    def __str__(self) -> str:
        parts = [f"ended the sessions of {', '.join(self.ended)}"] if self.ended else []
        if self.left:
            parts.append(f"could not end those of {', '.join(self.left)}")
        if self.removed:
            parts.append(f"removed {', '.join(self.removed)}")
        return "; ".join(parts)


def evict_refused(
    config: TenantConfig, product: str, environ: Mapping[str, str] | None = None
) -> Eviction:
    """End the sessions, and remove the large objects, of the other roles that may not
    connect to the service's dedicated database.

    PostgreSQL gives PUBLIC ``CONNECT`` on a new database, and the provider creates it
    before the grant that takes that away runs: a neighbour's login that connects in
    between keeps its session (``CONNECT`` is checked at login only), sees the catalogs
    (function sources included), counts against the database's connection limit
    (enough of them keep the tenant's migration out) and can leave a large object
    behind. ``lifecycle.deploy`` calls this after each update. The service's own roles
    are left alone (a rotation or a suspension ends theirs on its own schedule), as are
    roles granted ``CONNECT`` (the platform's temporary logins), the owner and
    superusers."""
    spec = config.service(product)
    if spec is None or (spec.isolation is IsolationMode.SCHEMA and spec.promotion is None):
        return Eviction()  # no dedicated database
    env = os.environ if environ is None else environ
    names = config.names.service(product)
    database = names.pg_dedicated_database
    try:
        with _admin(config, product, env, "postgres") as conn:
            if not conn.execute(
                "SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s", (database,)
            ).fetchone():
                return Eviction()
        with _admin(config, product, env, database) as conn:
            refused = conn.execute(_REFUSED, {"own": sorted(names.pg_logins())}).fetchall()
            if not refused:
                return Eviction()
            ended: dict[str, int] = {}
            left: dict[str, int] = {}
            for role, pid in refused:
                if pid is None:
                    continue
                try:
                    row = conn.execute(
                        "SELECT pg_catalog.pg_terminate_backend(%s, 5000)", (pid,)
                    ).fetchone()
                    gone = bool(row and row[0])
                except psycopg.errors.InsufficientPrivilege:
                    gone = False
                counts = ended if gone else left
                counts[str(role)] = counts.get(str(role), 0) + 1
            # Never DROP OWNED here: it would also take the role's grants on shared
            # objects, its CONNECT on its own database among them.
            planted = conn.execute(_PLANTED, ([str(role) for role, _ in refused],)).fetchall()
            with acting_for(conn, sorted({str(role) for _, role in planted})):
                for oid, _role in planted:
                    conn.execute("SELECT pg_catalog.lo_unlink(%s)", (oid,))
    except psycopg.Error as exc:
        raise BackendUnavailable(f"PostgreSQL: {first_line(exc)}") from None
    return Eviction(
        tuple(f"{role} ({n})" for role, n in sorted(ended.items())),
        tuple(f"{role} ({n})" for role, n in sorted(left.items())),
        tuple(f"large object {oid} of {role}" for oid, role in planted),
    )


def end_sessions(params: Mapping[str, Any], logins: Sequence[str], here_only: bool = False) -> int:
    """End the ``logins``' sessions (in ``params``' database only, with ``here_only``),
    giving each 5 s; how many there were."""
    where = " AND datname = current_database()" if here_only else ""
    with connect(params, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_catalog.pg_terminate_backend(pid, 5000) FROM pg_catalog.pg_stat_activity"
            " WHERE usename = ANY(%s)" + where,
            (list(logins),),
        ).fetchall()
    return len(rows)


def close_broker_connections(management_url: str, auth: tuple[str, str], user: str) -> None:
    """Close every AMQP connection of ``user``, straight from connection tracking
    (per-connection DELETE goes through the stats database, which lags by seconds and
    misses a fresh connection)."""
    try:
        response = requests.delete(
            f"{management_url}/api/connections/username/{quote(user, safe='')}",
            auth=auth,
            headers={"X-Reason": REASON},
            timeout=15,
        )
        response.raise_for_status()
    except requests.RequestException as exc:
        raise BackendUnavailable(f"RabbitMQ management API: {type(exc).__name__}") from None


def connect(params: Mapping[str, Any], autocommit: bool = False) -> psycopg.Connection[Any]:
    """A session of ``params``; failing to connect is :class:`BackendUnavailable`."""
    try:
        return psycopg.connect(**params, autocommit=autocommit)
    except psycopg.Error as exc:
        raise BackendUnavailable(f"PostgreSQL {params.get('dbname')}: {first_line(exc)}") from None
