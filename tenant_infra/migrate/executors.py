"""How targets are spread over sandboxed processes (:mod:`tenant_infra.migrate.sandbox`).

Revision code never runs in this process. ``K`` threads here each drive one sandbox
child at a time, so at most ``K`` migrations (and connections) run at once:

- a tenant's target (``--product``: it carries its own role's credentials) gets a
  fresh child, which ends with it: no process ever holds two tenants' parameters;
- generic targets (``--dsn``: the DSN user's credentials are what their revisions run
  with, by definition) share a child per thread, and its one connection per database.

Alembic installs ``op`` and ``context`` as module-global proxies, so two migrations in
threads of one process could send DDL to each other's connection: the threads here
only pass messages; each migration runs alone in its own process. Targets stream in
and results stream out, so memory does not grow with the number of tenants.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType

from tenant_infra.errors import BackendUnavailable
from tenant_infra.migrate.engine import TargetResult
from tenant_infra.migrate.sandbox import Lane, Sandbox
from tenant_infra.migrate.targets import MigrationTarget
from tenant_infra.migrate.worker import Mode, hello, result_of, target_request

__all__ = ["Job", "Mode", "SandboxExecutor"]


@dataclass(frozen=True)
class Job:
    """What a run does. ``params`` (generic mode's connection; empty in ``--product``
    mode, where each target carries its tenant's own) may hold a password: it reaches
    a sandbox child over a socket, never argv, the environment or a message."""

    script_location: str
    params: Mapping[str, str] = field(repr=False)
    mode: Mode = "upgrade"
    destination: str = "heads"


class SandboxExecutor:
    """``K`` lanes over one sandbox server; ``map`` may be called for several waves
    (canary, then the rest); results come in completion order."""

    def __init__(self, job: Job, processes: int) -> None:
        if processes < 1:
            raise ValueError("processes must be >= 1")
        self.job = job
        self.processes = processes
        self._sandbox = Sandbox(job.script_location)

    @property
    def head(self) -> str | None:
        """The script directory's head, as the sandbox loaded it."""
        return self._sandbox.head

    def __enter__(self) -> SandboxExecutor:
        self._sandbox.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._sandbox.__exit__(exc_type, exc, tb)

    def map(self, targets: Iterable[tuple[int, MigrationTarget]]) -> Iterator[TargetResult]:
        source = iter(targets)
        take = threading.Lock()
        results: queue.Queue[TargetResult | None] = queue.Queue()

        def lane_loop() -> None:
            shared: Lane | None = None  # the child generic targets share
            try:
                while True:
                    with take:
                        item = next(source, None)
                    if item is None:
                        return
                    shared = self._run(*item, shared, results)
            finally:
                if shared is not None:
                    shared.close()
                results.put(None)

        threads = [threading.Thread(target=lane_loop, daemon=True) for _ in range(self.processes)]
        for thread in threads:
            thread.start()
        running = len(threads)
        while running:
            result = results.get()
            if result is None:
                running -= 1
            else:
                yield result
        for thread in threads:
            thread.join()

    def _run(
        self,
        index: int,
        target: MigrationTarget,
        shared: Lane | None,
        results: queue.Queue[TargetResult | None],
    ) -> Lane | None:
        """Run one target; put its result; return the child generic targets share."""
        started = time.perf_counter()
        if target.unavailable:  # no credentials: nothing to fork for
            results.put(
                TargetResult.of(target, index, "failed", error=target.unavailable, started=started)
            )
            return shared
        own = target.params is not None  # a tenant's own credentials: a child of its own
        try:
            lane = shared if shared is not None and not own else self._open()
        except BackendUnavailable as exc:
            results.put(TargetResult.of(target, index, "failed", error=str(exc), started=started))
            return shared
        reply = lane.request(target_request(self.job.mode, target))
        results.put(result_of(reply, target, index, started, lane.pid))
        if own or reply is None:
            lane.close()
            return None if lane is shared else shared
        return lane

    def _open(self) -> Lane:
        return self._sandbox.lane(hello(self.job.params, self.job.destination))
