"""How targets are spread over workers: ``serial`` (in process) or ``processes``.

Alembic installs ``op`` and ``context`` as module-global proxies, so two migrations
in threads of one process can send DDL to each other's connection. Concurrency is
therefore separate processes, never threads. Each worker loads the script directory
once, then handles many targets: generic targets share one connection per worker;
a tenant's target (``--product``) brings its own role's credentials inside the
pickled target and gets a connection as that role. Targets stream in and results
stream out, so memory does not grow with the number of tenants.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import multiprocessing.util
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal

from tenant_infra.migrate.engine import TargetResult, TenantMigrator
from tenant_infra.migrate.targets import MigrationTarget

Mode = Literal["upgrade", "pending", "sql"]


@dataclass(frozen=True)
class Job:
    """Everything a worker needs, picklable. ``params`` (generic mode's connection;
    empty in ``--product`` mode, where each target carries its tenant's own) may hold
    a password: it is handed to the worker process by fork/pickle, never put in argv
    or a message."""

    script_location: str
    params: Mapping[str, str] = field(repr=False)
    mode: Mode = "upgrade"
    destination: str = "heads"

    def migrator(self) -> TenantMigrator:
        return TenantMigrator(Path(self.script_location), self.params, destination=self.destination)


def run_one(
    migrator: TenantMigrator, mode: Mode, index: int, target: MigrationTarget
) -> TargetResult:
    if mode == "upgrade":
        return migrator.upgrade(target, index)
    if mode == "pending":
        return migrator.pending(target, index)
    return migrator.render(target, index)


class SerialExecutor:
    """One connection in this process: the right choice for K=1 (no fork, no IPC)."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self._migrator: TenantMigrator | None = None

    def __enter__(self) -> SerialExecutor:
        self._migrator = self.job.migrator()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._migrator is not None:
            self._migrator.close()
            self._migrator = None

    def map(self, targets: Iterable[tuple[int, MigrationTarget]]) -> Iterator[TargetResult]:
        assert self._migrator is not None, "use as a context manager"
        for index, target in targets:
            yield run_one(self._migrator, self.job.mode, index, target)


# -- process pool ------------------------------------------------------------------------

_worker: TenantMigrator | None = None
_worker_mode: Mode = "upgrade"


def _init_worker(job: Job) -> None:
    global _worker, _worker_mode
    _worker = job.migrator()
    _worker_mode = job.mode
    # Pool workers leave through multiprocessing's exit hook: close the connection
    # politely there instead of dropping the socket.
    multiprocessing.util.Finalize(None, _close_worker, exitpriority=10)


def _work(item: tuple[int, MigrationTarget]) -> TargetResult:
    assert _worker is not None
    return run_one(_worker, _worker_mode, item[0], item[1])


def _close_worker() -> None:  # pragma: no cover - runs in the worker at exit
    if _worker is not None:
        _worker.close()


class ProcessExecutor:
    """K worker processes, each a :class:`TenantMigrator` with its own connection.

    Uses ``fork`` where available: workers inherit the imported Alembic/SQLAlchemy and
    the parsed script directory instead of importing them again (start-up is part of
    what a user waits for). The parent must hold no open connection when forking.
    """

    def __init__(self, job: Job, processes: int) -> None:
        if processes < 1:
            raise ValueError("processes must be >= 1")
        self.job = job
        self.processes = processes
        self._pool: multiprocessing.pool.Pool | None = None

    def __enter__(self) -> ProcessExecutor:
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        self._pool = ctx.Pool(self.processes, initializer=_init_worker, initargs=(self.job,))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._pool is not None:
            if exc_type is None:
                self._pool.close()
            else:
                self._pool.terminate()
            self._pool.join()
            self._pool = None

    def map(self, targets: Iterable[tuple[int, MigrationTarget]]) -> Iterator[TargetResult]:
        assert self._pool is not None, "use as a context manager"
        yield from self._pool.imap_unordered(_work, targets, chunksize=1)


#: Both executors: context managers with ``map(targets) -> results`` usable for several
#: waves (canary, then the rest); results come in completion order.
Executor = SerialExecutor | ProcessExecutor


def make_executor(job: Job, concurrency: int) -> Executor:
    """``serial`` for K=1, ``processes`` otherwise."""
    if concurrency <= 1:
        return SerialExecutor(job)
    return ProcessExecutor(job, concurrency)
