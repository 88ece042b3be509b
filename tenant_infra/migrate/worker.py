"""What a sandbox child runs, and the messages to and from it.

The operator greets a fresh child (``hello``): the connection parameters of targets
that bring none, the destination revision, and what its confinement lets it reach
(the TCP ports of its database, the TLS files named in its parameters). Then it sends
requests: one per target (``upgrade``, ``pending``, ``sql``) or one MongoDB apply
(``mongo``). The child answers each with plain JSON. Replies come from product code's
process, so the operator treats them as untrusted data: only known fields, of the
right types, printable text (:func:`result_of`); the labels shown come from the
operator's own target, never from the reply.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final, Literal

from alembic.config import Config
from alembic.script import ScriptDirectory

from tenant_infra.migrate.engine import TargetResult, TenantMigrator, head_of, load_script
from tenant_infra.migrate.mongo import MongoVersion, load_spec
from tenant_infra.migrate.sandbox import clean_lines, clean_text
from tenant_infra.migrate.targets import MigrationTarget

Mode = Literal["upgrade", "downgrade", "pending", "sql"]

_STATUSES: Final = frozenset({"migrated", "current", "pending", "failed", "skipped"})


# -- the operator's side ----------------------------------------------------------------


#: libpq parameters naming files a connection reads (TLS material).
_FILE_PARAMS: Final = ("sslrootcert", "sslcert", "sslkey", "sslcrl", "sslcrldir")


def _ports(params: Mapping[str, str]) -> list[int]:
    """Every port libpq may connect to (``port`` may list one per host)."""
    raw = str(params.get("port") or os.environ.get("PGPORT") or "5432")
    return [int(p) for p in raw.split(",") if p.strip().isdigit()]


def reach(connections: Iterable[Mapping[str, str]]) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """The TCP ports and TLS files of every connection a run's children will make:
    all their confinement lets them reach (host names are resolved by the operator)."""
    ports, files = set(), []
    for each in connections:
        ports.update(_ports(each))  # none given: libpq's default, PGPORT or 5432
        files += [str(each[k]) for k in _FILE_PARAMS if each.get(k)]
    return tuple(sorted(ports)), tuple(dict.fromkeys(files))


def hello(
    params: Mapping[str, str],
    destination: str,
    *,
    head: str | None = None,
    ports: Iterable[int] = (),
    files: Iterable[str] = (),
) -> dict[str, Any]:
    """A child's greeting, the same for every child of a run: the parameters of
    targets that bring none, the destination, the head the operator read statically,
    and what the child's confinement lets it reach."""
    return {
        "params": with_host_address(params),
        "destination": destination,
        "head": head,
        "ports": sorted(set(ports)),
        "files": list(files),
    }


def confinement(greeting: Mapping[str, Any], location: str) -> tuple[list[str], list[int]]:
    """What a child may read (beneath) and the TCP ports it may connect to."""
    from tenant_infra.migrate.confine import SYSTEM_PATHS, python_paths

    readable = [*SYSTEM_PATHS, *map(str, python_paths()), location]
    home = os.environ.get("HOME")
    if home:  # libpq's default CA files, never the client key beside them
        readable += [os.path.join(home, ".postgresql", f) for f in ("root.crt", "root.crl")]
    readable += [str(f) for f in greeting.get("files") or [] if isinstance(f, str)]
    ports = [int(p) for p in greeting.get("ports") or [] if isinstance(p, int)]
    return readable, ports


def with_host_address(params: Mapping[str, str]) -> dict[str, str]:
    """``params`` with the host resolved here (``hostaddr``): a confined child has no
    DNS (no datagram sockets); ``host`` stays, for TLS verification."""
    import ipaddress
    import socket

    out = dict(params)
    host = out.get("host", "")
    if not host or out.get("hostaddr") or host.startswith("/") or "," in host:
        return out
    try:
        ipaddress.ip_address(host)
        return out
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, out.get("port") or 5432, type=socket.SOCK_STREAM)
    except OSError:
        return out  # the child's connection attempt reports it, for that tenant alone
    out["hostaddr"] = str(infos[0][4][0])
    return out


def target_request(mode: Mode, target: MigrationTarget) -> dict[str, Any]:
    """One target's request; ``params`` (its own role's password) goes only here."""
    return {
        "op": mode,
        "target": {
            "schema": target.schema,
            "database": target.database,
            "tenant": target.tenant,
            "product": target.product,
            "role": target.role,
            "params": with_host_address(target.params) if target.params is not None else None,
        },
    }


def _text(value: object) -> str | None:
    return clean_text(value) if isinstance(value, str) else None


def _status(value: object) -> str:
    return value if isinstance(value, str) and value in _STATUSES else "failed"


def result_of(
    reply: Mapping[str, Any] | None,
    target: MigrationTarget,
    index: int,
    started: float,
    worker: int,
) -> TargetResult:
    """The child's reply as a :class:`TargetResult`, or ``failed`` if it gave none."""
    if reply is None:
        return _ended(target, index, started, worker)
    status = _status(reply.get("status"))
    revisions = reply.get("revisions")
    sql = reply.get("sql")
    error = _text(reply.get("error"))
    if status == "failed" and not error:
        error = "malformed reply from the migration process"
    result = TargetResult.of(
        target,
        index,
        status,  # type: ignore[arg-type]
        before=_text(reply.get("before")),
        after=_text(reply.get("after")),
        revisions=tuple(_text(r) or "?" for r in revisions) if isinstance(revisions, list) else (),
        error=error,
        started=started,
        # The child's judgement of its failure: a wrong one only changes whether a
        # sharded run is retried, never what is migrated.
        deterministic=status == "failed" and reply.get("deterministic") is True,
    )
    result.sql = clean_lines(sql) if isinstance(sql, str) else None
    result.worker = worker
    return result


def _ended(target: MigrationTarget, index: int, started: float, worker: int) -> TargetResult:
    result = TargetResult.of(
        target,
        index,
        "failed",
        error="the migration process ended without a result (killed, or it exited)",
        started=started,
    )
    result.worker = worker
    return result


# -- the child's side -------------------------------------------------------------------


def _target(raw: Mapping[str, Any]) -> MigrationTarget:
    params = raw.get("params")
    return MigrationTarget(
        schema=str(raw["schema"]),
        database=raw.get("database"),
        tenant=raw.get("tenant"),
        product=raw.get("product"),
        role=raw.get("role"),
        params={str(k): str(v) for k, v in params.items()} if isinstance(params, dict) else None,
    )


class Worker:
    """A child's state: one migrator (and so one connection) for all its requests."""

    def __init__(
        self,
        config: Config,
        script: ScriptDirectory,
        mongo_versions: list[MongoVersion],
        greeting: Mapping[str, Any],
        refusal: str | None = None,
    ) -> None:
        self.migrator = TenantMigrator(
            params={str(k): str(v) for k, v in dict(greeting.get("params") or {}).items()},
            destination=str(greeting.get("destination") or "heads"),
            loaded=(config, script),
        )
        self.mongo_versions = mongo_versions
        self.refusal = refusal

    @classmethod
    def load(cls, location: str, greeting: Mapping[str, Any], mongo: bool) -> Worker:
        """Import the script directory (the product's code runs from here on), check
        that Alembic agrees with the head the operator read statically, and warm up."""
        config, script = load_script(location)
        refusal = None
        static, real = greeting.get("head"), head_of(script)
        if static != real:
            refusal = (
                f"the script directory's head is {real} to Alembic but {static} read "
                "statically: revision identifiers must be literal, top-level assignments"
            )
        worker = cls(config, script, load_spec(Path(location)) if mongo else [], greeting, refusal)
        worker.warm_up()
        return worker

    def warm_up(self) -> None:
        """Render the revisions offline once, before any tenant's request: what Alembic
        and SQLAlchemy build lazily is built while this child waits for its tenant."""
        from tenant_infra.migrate.engine import render_sql

        # A revision that cannot render offline simply gets no warm-up.
        with contextlib.suppress(Exception):
            render_sql(
                self.migrator.config,
                self.migrator.script,
                MigrationTarget("warm_up"),
                starting=None,
            )

    def handle(self, request: Mapping[str, Any]) -> dict[str, Any]:
        if self.refusal:
            return {"status": "failed", "error": self.refusal, "deterministic": True}
        op = request.get("op")
        if op == "mongo":
            return self._mongo(request)
        if op == "render":
            return self._render(request)
        target = _target(request["target"])
        if op == "upgrade":
            result = self.migrator.upgrade(target)
        elif op == "downgrade":
            result = self.migrator.upgrade(target, downgrade=True)
        elif op == "pending":
            result = self.migrator.pending(target)
        elif op == "sql":
            result = self.migrator.render(target)
        else:
            return {"status": "failed", "error": f"unknown request {op!r}"}
        return _reply(result)

    def _render(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Each revision's offline SQL, once per probe schema (the operator compares)."""
        from tenant_infra.migrate.engine import render_revision

        out: dict[str, Any] = {}
        for revision in request.get("revisions") or []:
            try:
                out[str(revision)] = [
                    render_revision(self.migrator.script, str(revision), str(schema))
                    for schema in request.get("schemas") or []
                ]
            except Exception as exc:
                out[str(revision)] = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return {"rendered": out}

    def _mongo(self, request: Mapping[str, Any]) -> dict[str, Any]:
        from pymongo import MongoClient

        from tenant_infra.migrate.mongo import apply

        try:
            with MongoClient(**dict(request["client"])) as client:
                done = apply(client[str(request["database"])], self.mongo_versions)
        except Exception as exc:
            # pymongo errors never carry the password; keep only their first line.
            return {"error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}
        return {"after": done.after, "applied": list(done.applied)}

    def close(self) -> None:
        self.migrator.close()


def _reply(result: TargetResult) -> dict[str, Any]:
    return {
        "status": result.status,
        "before": result.before,
        "after": result.after,
        "revisions": list(result.revisions),
        "error": result.error,
        "sql": result.sql,
        "deterministic": result.deterministic,
    }


def script_exists(script_location: str | Path) -> Path:
    """The script directory, checked without importing anything from it."""
    from tenant_infra.errors import InvalidInput

    path = Path(script_location).resolve()
    if not (path / "versions").is_dir():
        raise InvalidInput(f"{path} is not an Alembic script directory (no versions/)")
    return path
