"""Connection parameters for migrations: parsed once, never shown with a password.

Everything downstream passes libpq keyword dicts, not DSN strings, so a password can
only leave this module inside a connection attempt, never in a message, log or argv.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

import psycopg
from psycopg.conninfo import conninfo_to_dict

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

from tenant_infra.errors import BackendUnavailable, InvalidInput

#: Environment variable holding the admin DSN for fleet migrations (else libpq PG* vars).
ADMIN_DSN_ENV: Final = "TENANT_INFRA_ADMIN_DSN"

ConnParams = dict[str, str]

_SA_SCHEME: Final = re.compile(r"^postgres(?:ql)?\+[a-z0-9_]+://", re.IGNORECASE)
_SECRET_KEYS: Final = frozenset({"password", "passfile", "sslpassword"})


def parse_dsn(dsn: str | None) -> ConnParams:
    """libpq URL, keyword string or SQLAlchemy URL (``postgresql+driver://``) → keywords.

    ``None``/empty falls back to ``$TENANT_INFRA_ADMIN_DSN``, then to libpq's own
    ``PG*`` environment variables (an empty dict lets libpq fill everything in).
    """
    if not dsn:
        dsn = os.environ.get(ADMIN_DSN_ENV, "")
    if not dsn:
        return {}
    dsn = _SA_SCHEME.sub("postgresql://", dsn)
    try:
        parsed = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        # The message of a parse error may quote the DSN, so it is not passed on.
        raise InvalidInput("--dsn is not a valid PostgreSQL connection string or URL") from None
    return {k: str(v) for k, v in parsed.items() if v is not None}


def refuse_password_in_argv(dsn: str | None) -> None:
    """A ``--dsn`` given on the command line must not carry a password: argv is visible
    to every local user in ``ps``. DSNs from the environment may."""
    if not dsn:
        return
    try:
        keys = set(parse_dsn(dsn))
    except InvalidInput:
        keys = set()
    # An unparsable string is checked as text, so a typo never lets a password through.
    if keys & {"password", "sslpassword"} or re.search(
        r"(?:^|[\s?&])(?:ssl)?password\s*=|^[a-z0-9+]+://[^/@\s]*:[^/@\s]*@", dsn, re.I
    ):
        raise InvalidInput(
            "--dsn must not carry a password (argv is visible in ps): use "
            f"{ADMIN_DSN_ENV}, PGPASSWORD or ~/.pgpass instead"
        )


def redact(params: Mapping[str, str]) -> str:
    """A human description of where we connect: ``user@host:port/db``, never a password."""
    host = params.get("host") or os.environ.get("PGHOST", "localhost")
    port = params.get("port") or os.environ.get("PGPORT", "5432")
    user = params.get("user") or os.environ.get("PGUSER", "")
    db = params.get("dbname") or os.environ.get("PGDATABASE", user)
    return f"{user + '@' if user else ''}{host}:{port}/{db}"


#: libpq's environment variables for what a connection needs (its documented names).
_LIBPQ_ENVIRONMENT: Final = {
    "PGHOST": "host",
    "PGHOSTADDR": "hostaddr",
    "PGPORT": "port",
    "PGDATABASE": "dbname",
    "PGUSER": "user",
    "PGPASSWORD": "password",
    "PGSSLMODE": "sslmode",
    "PGSSLROOTCERT": "sslrootcert",
    "PGSSLCERT": "sslcert",
    "PGSSLKEY": "sslkey",
    "PGCONNECT_TIMEOUT": "connect_timeout",
}


def with_libpq_environment(
    params: Mapping[str, str], environ: Mapping[str, str] | None = None
) -> ConnParams:
    """``params`` completed from libpq's ``PG*`` variables, made explicit.

    A sandbox starts without the operator's environment, so what libpq would have
    read from it travels with the parameters instead.
    """
    env = os.environ if environ is None else environ
    out = dict(params)
    for variable, keyword in _LIBPQ_ENVIRONMENT.items():
        if keyword not in out and env.get(variable):
            out[keyword] = env[variable]
    return out


def with_database(params: Mapping[str, str], dbname: str | None) -> ConnParams:
    """The same server and credentials, another database (DATABASE-mode tenants)."""
    out = dict(params)
    if dbname:
        out["dbname"] = dbname
    return out


def make_engine(params: Mapping[str, str]) -> Engine:
    """A SQLAlchemy engine without a pool whose connections come from psycopg keywords.

    ``creator`` keeps the password out of the SQLAlchemy URL (and so out of its repr).
    """
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    frozen = dict(params)
    # A runner killed mid-statement must not leave its transaction (and the tenant's
    # lock) open until the statement ends: the server checks every second that the
    # client is still there (PostgreSQL 14+) and rolls back if not.
    options = frozen.get("options", "")
    frozen["options"] = f"{options} -c client_connection_check_interval=1000".strip()

    def creator() -> psycopg.Connection[tuple[object, ...]]:
        # Server-side prepares cost an extra Parse round trip per DDL text and buy
        # nothing: each statement runs once per tenant (measured: ~+40% per tenant).
        return psycopg.connect(**frozen, prepare_threshold=None)  # type: ignore[arg-type]

    return create_engine("postgresql+psycopg://", creator=creator, poolclass=NullPool)


def connect(params: Mapping[str, str]) -> Connection:
    """Open one SQLAlchemy connection; failure → :class:`BackendUnavailable` without secrets."""
    engine = make_engine(params)
    try:
        return engine.connect()
    except Exception as exc:
        raise BackendUnavailable(
            f"cannot connect to PostgreSQL at {redact(params)}: {first_line(exc)}"
        ) from None


def fresh_session(conn: Connection) -> bool:
    """``DISCARD ALL`` on a connection kept for the next target (generic mode): what one
    tenant's revisions left in the session (TEMP tables, which come first in every
    ``search_path``; non-``LOCAL`` settings; a role; prepared statements; listens;
    advisory locks) never meets the next tenant. Outside a transaction, as it must be;
    psycopg prepares nothing here (``prepare_threshold=None``). ``False``: the session
    could not be reset (lost, or refused): the caller opens a new one, which is clean."""
    raw = conn.connection.dbapi_connection
    if raw is None or raw.closed or raw.broken or conn.in_transaction():
        return False
    try:
        raw.autocommit = True
        raw.execute("DISCARD ALL")
        raw.autocommit = False
    except psycopg.Error:
        return False
    return True


def close_quietly(conn: Connection) -> None:
    """Close, never raising; a lost session is invalidated first, so SQLAlchemy does not
    try (and log the failure of) a ROLLBACK on it."""
    with contextlib.suppress(Exception):
        raw = None if conn.invalidated else conn.connection.dbapi_connection
        if raw is not None and (raw.broken or raw.closed):
            conn.invalidate()
    with contextlib.suppress(Exception):
        conn.close()


def first_line(exc: BaseException) -> str:
    """The driver's own message, without SQLAlchemy's statement dump and help links."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    for key in _SECRET_KEYS:  # defence in depth: libpq never echoes these, keep it so
        line = re.sub(rf"{key}=\S+", f"{key}=***", line)
    return line
