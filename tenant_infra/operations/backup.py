"""Backup of one tenant service: every store it uses, one set, one manifest.

Two steps on the step machine (:mod:`tenant_infra.operations.steps`), so a backup
holds the service's operation lock (never beside a promotion or a restore) and is
recorded in the registry:

1. ``take``: into the storage's staging place, from scratch each time it runs:
   - PostgreSQL: the tenant schema, held still (:func:`tenant_infra.pgdata.dump.
     snapshot_of`), is dumped by ``pg_dump --format=custom --snapshot`` while a
     second session of the same snapshot counts and checksums every table. The two
     run at once, on two cores. In DATABASE mode the schema is everything the tenant
     can own in its database (it may create nothing else there). The platform's
     admin dumps it, restricted to the schema: ``pg_dump`` reads rows and catalogs,
     and runs none of the tenant's code;
   - RabbitMQ: the tenant vhost's topology (:mod:`tenant_infra.operations.vhost`);
   - MongoDB: ``mongodump --archive`` of the tenant database when ``MONGODB_URL``
     is set and the tool is installed, else skipped with the reason;
   - the manifest, last.
2. ``publish``: the set becomes visible whole (:class:`~tenant_infra.operations.
   backupset.BackupStorage`).

Killed anywhere, the next ``backup`` of the service discards what the killed one
left and starts over; a failed one is closed at once (``aborted``), its staging
removed, so it never stands in the way of a restore.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import psycopg

from tenant_infra.catalog import IsolationMode, Store, load_catalog
from tenant_infra.config import ServiceSpec, TenantConfig
from tenant_infra.errors import BackendUnavailable, InvalidInput, OperationFailed, first_line, scrub
from tenant_infra.lifecycle import known_config, known_service
from tenant_infra.operations import vhost
from tenant_infra.operations.backupset import (
    MONGODB_ARCHIVE,
    POSTGRES_DUMP,
    RABBITMQ_DEFINITIONS,
    BackupStorage,
    Manifest,
    PostgresPart,
    StorePart,
    file_entries,
    new_stamp,
    write_manifest,
)
from tenant_infra.operations.steps import Detail, Machine, Outcome, Step, StepProgress
from tenant_infra.pgdata.checksum import Checksum, checksums, new_seed
from tenant_infra.pgdata.copy import parallel, reader
from tenant_infra.pgdata.dump import dump_schema, snapshot_of, tool_version
from tenant_infra.pgdata.inventory import large_objects
from tenant_infra.registry import Registry
from tenant_infra.registry.operations import Operations
from tenant_infra.sessions import admin_params
from tenant_infra.tenant import pg_shared_database
from tenant_infra.workspace import InProgress, Workspace

KIND = "backup"


def service_database(config: TenantConfig, spec: ServiceSpec) -> str:
    """The database holding the service's schema now."""
    if spec.isolation is IsolationMode.DATABASE:
        return config.names.service(spec.product).pg_dedicated_database
    return pg_shared_database(spec.product)


@dataclass
class Backup:
    """Everything the steps need; one per service and ``backup`` call."""

    tenant: str
    product: str
    workspace: Workspace
    registry: Registry
    storage: BackupStorage
    environ: Mapping[str, str]

    def config(self) -> TenantConfig:
        return known_config(self.workspace, self.tenant)

    def spec(self, config: TenantConfig) -> ServiceSpec:
        return known_service(config, self.product)

    # ------------------------------------------------------------------ steps

    def take(self, detail: Detail) -> None:
        config = self.config()
        spec = self.spec(config)
        stamp = str(detail["stamp"])
        staging = self.storage.staging(self.tenant, self.product, stamp)
        product = load_catalog().product(self.product)
        tools = {"tenantInfra": metadata.version("tenant-infra")}
        postgres = None
        if product.needs(Store.POSTGRESQL):
            tools["pg_dump"] = tool_version("pg_dump")
            postgres = self._postgres(config, spec, staging, detail)
            tools["server"] = self._server_version(config, spec)
        rabbitmq = self._rabbitmq(config, staging) if product.needs(Store.RABBITMQ) else None
        mongodb = None
        if product.needs(Store.MONGODB):
            mongodb, version = mongo_backup(config, staging, self.environ)
            if version:
                tools["mongodump"] = version
        names = sorted(p.name for p in staging.iterdir() if p.name != "manifest.json")
        for name in names:
            (staging / name).chmod(0o600)
        manifest = Manifest(
            tenant=self.tenant,
            product=self.product,
            isolation=spec.isolation.value,
            stamp=stamp,
            createdAt=datetime.now(UTC),
            tools=tools,
            postgresql=postgres,
            rabbitmq=rabbitmq,
            mongodb=mongodb,
            files=file_entries(staging, names),
        )
        write_manifest(staging, manifest)
        detail["files"] = {n: e.bytes for n, e in manifest.files.items()}
        if postgres is not None:
            detail["revision"] = postgres.revision
            detail["rows"] = sum(t.rows for t in postgres.tables)
            if postgres.large_objects:
                detail["warning"] = (
                    f"not in the backup: {postgres.large_objects} large objects of the "
                    "service's logins (they live outside its schema)"
                )
        skipped = {
            store: part.skipped
            for store, part in (("rabbitmq", rabbitmq), ("mongodb", mongodb))
            if part is not None and part.skipped
        }
        if skipped:
            detail["skipped"] = skipped

    def _admin(self, config: TenantConfig, spec: ServiceSpec) -> dict[str, Any]:
        database = service_database(config, spec)
        return admin_params(config, self.product, self.environ, database, KIND)

    def _server_version(self, config: TenantConfig, spec: ServiceSpec) -> str:
        with psycopg.connect(**self._admin(config, spec)) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else ""

    def _postgres(
        self, config: TenantConfig, spec: ServiceSpec, staging: Path, timings: Detail
    ) -> PostgresPart:
        names = config.names.service(self.product)
        params, schema = self._admin(config, spec), names.pg_schema
        try:
            with snapshot_of(params, schema) as (snapshot, inventory):
                if not inventory.tables:
                    raise InvalidInput(f"{schema} holds no table: nothing to back up")
                seed, sums = new_seed(), dict[str, Checksum]()
                started = time.monotonic()

                def counted() -> None:
                    with reader(params, snapshot) as conn:
                        sums.update(checksums(conn, schema, inventory.tables, seed))
                    timings["checksumSeconds"] = round(time.monotonic() - started, 3)

                def dumped() -> None:
                    dump_schema(params, schema, snapshot, staging / POSTGRES_DUMP)
                    timings["dumpSeconds"] = round(time.monotonic() - started, 3)

                parallel([dumped, counted], 2, lambda action: action())
                found = large_objects(params, config.pg_logins(self.product))  # left out
        except psycopg.Error as exc:
            raise BackendUnavailable(f"PostgreSQL: {first_line(exc)}") from None
        return PostgresPart.of(service_database(config, spec), inventory, seed, dict(sums), found)

    def _rabbitmq(self, config: TenantConfig, staging: Path) -> StorePart:
        if config.platform.rabbitmq is None:
            return StorePart(skipped="the platform declares no RabbitMQ")
        definitions = vhost.fetch(config, self.environ)
        path = staging / RABBITMQ_DEFINITIONS
        path.write_text(json.dumps(definitions, indent=1, sort_keys=True) + "\n")
        return StorePart(vhost=config.names.vhost, counts=vhost.counts(definitions))

    def publish(self, detail: Detail) -> None:
        detail["set"] = self.storage.publish(self.tenant, self.product, str(detail["stamp"]))

    def steps(self) -> list[Step]:
        return [Step("take", self.take), Step("publish", self.publish)]

    def discard(self, detail: Detail) -> None:
        """A failed or killed backup leaves nothing: its staging is removed."""
        if detail.get("stamp"):
            self.storage.discard(self.tenant, self.product, str(detail["stamp"]))

    def run(self, step_progress: StepProgress) -> Outcome:
        """A backup from scratch: one a killed run left open is discarded first (a set
        never mixes two runs, nor carries a stale stamp), and a failure closes the
        operation, so it never stands in the way of a restore."""
        self.spec(self.config())
        machine = Machine(Operations(self.registry), self.tenant, self.product, KIND, step_progress)
        undo = [Step("abort-discard", self.discard)]
        with machine.held():
            if machine.current() is not None:
                machine.abort(undo)
            try:
                return machine.run(self.steps(), resume=False, detail={"stamp": new_stamp()})
            except BaseException:
                with contextlib.suppress(Exception):
                    machine.abort(undo)
                raise


# ------------------------------------------------------------------- MongoDB


def mongo_backup(
    config: TenantConfig, staging: Path, environ: Mapping[str, str]
) -> tuple[StorePart, str | None]:
    """``mongodump`` of the tenant database, or why not (no server, no tool)."""
    url = environ.get("MONGODB_URL")
    if not url:
        return StorePart(skipped="MONGODB_URL is not set"), None
    tool = shutil.which("mongodump", path=environ.get("PATH"))
    if tool is None:
        return StorePart(skipped="mongodump is not installed"), None
    database = config.names.mongo_database
    argv, settings = mongodump_command(tool, url, database, staging / MONGODB_ARCHIVE)
    with _fifo(settings) as config_path:
        done = subprocess.run(
            [*argv, f"--config={config_path}"],
            capture_output=True,
            env={"PATH": environ.get("PATH", "")},
            timeout=3600,
        )
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        said = scrub(lines[-1].replace(url, "[secret]")) if lines else "no message"
        raise OperationFailed(f"mongodump failed: {said}")
    version = tool_version(tool)
    return StorePart(database=database), version


def mongodump_command(tool: str, url: str, database: str, archive: Path) -> tuple[list[str], str]:
    """The argv (no secret in it) and the settings file's text (the URL, credentials
    included), which reaches ``mongodump`` through a pipe, never a file on disk."""
    argv = [tool, f"--db={database}", f"--archive={archive}", "--quiet"]
    quoted = url.replace("\\", "\\\\").replace('"', '\\"')
    return argv, f'uri: "{quoted}"\n'


@contextlib.contextmanager
def _fifo(text: str) -> Iterator[Path]:
    """A named pipe in a private directory that hands ``text`` to one reader."""
    folder = Path(tempfile.mkdtemp(prefix="tenant-infra-"))
    path = folder / "settings.yaml"
    os.mkfifo(path, 0o600)

    def feed() -> None:
        with contextlib.suppress(OSError), path.open("w") as pipe:
            pipe.write(text)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    try:
        yield path
    finally:
        if writer.is_alive():
            # Nobody read it: open the reading end once, so the writer ends.
            with contextlib.suppress(OSError):
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
                os.close(fd)
            writer.join(timeout=5)
        shutil.rmtree(folder, ignore_errors=True)


# --------------------------------------------------------------------- fleet


@dataclass
class BackupResult:
    tenant: str
    product: str
    status: str  # ok | failed
    set: str | None = None
    error: str | None = None
    warning: str | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    #: How long the dump and the manifest's checksums took (they run at once).
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "product": self.product,
            "status": self.status,
            "set": self.set,
            "error": self.error,
            "warning": self.warning,
            "skipped": self.skipped,
            "seconds": round(self.seconds, 3),
            "timings": self.timings,
        }


def back_up(make: Callable[[], Backup], step_progress: StepProgress) -> BackupResult:
    """One service's backup, its failure caught and reported (a fleet goes on)."""
    started = time.monotonic()
    backup = make()
    try:
        outcome = backup.run(step_progress)
    except (InvalidInput, OperationFailed, BackendUnavailable, InProgress) as exc:
        return BackupResult(
            backup.tenant, backup.product, "failed", error=str(exc), seconds=_since(started)
        )
    except Exception as exc:  # a full disk, a driver error: that service's alone
        return BackupResult(
            backup.tenant,
            backup.product,
            "failed",
            error=f"{type(exc).__name__}: {first_line(exc)}",
            seconds=_since(started),
        )
    detail = outcome.operation.detail
    return BackupResult(
        backup.tenant,
        backup.product,
        "ok",
        set=str(detail.get("set")),
        warning=detail.get("warning"),
        skipped=dict(detail.get("skipped") or {}),
        seconds=_since(started),
        timings={k: float(detail[k]) for k in ("dumpSeconds", "checksumSeconds") if k in detail},
    )


def back_up_fleet(
    jobs: Sequence[Callable[[], Backup]], concurrency: int, step_progress: StepProgress
) -> list[BackupResult]:
    """Every job, ``concurrency`` at a time; one failure never stops the others."""
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        return list(pool.map(lambda make: back_up(make, step_progress), jobs))


def _since(started: float) -> float:
    return time.monotonic() - started
