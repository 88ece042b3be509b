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

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from tenant_infra.errors import BackendUnavailable
from tenant_infra.migrate.engine import TargetResult
from tenant_infra.migrate.sandbox import Lane, Sandbox, TimedOut
from tenant_infra.migrate.targets import MigrationTarget
from tenant_infra.migrate.worker import Mode, hello, reach, result_of, target_request

__all__ = ["Job", "Mode", "SandboxExecutor", "migrate_one"]


@dataclass(frozen=True)
class Job:
    """What a run does. ``params`` (generic mode's connection; empty in ``--product``
    mode, where each target carries its tenant's own) may hold a password: it reaches
    a sandbox child over a socket, never argv, the environment or a message."""

    script_location: str
    params: Mapping[str, str] = field(repr=False)
    mode: Mode = "upgrade"
    destination: str = "heads"
    #: What children may reach: the TCP ports and TLS files of the run's connections
    #: (:func:`tenant_infra.migrate.worker.reach`); ``params``' own are added.
    ports: tuple[int, ...] = ()
    files: tuple[str, ...] = ()
    #: Seconds one target may take before its child is killed and it fails (None: no
    #: limit). Its transaction is rolled back by the server.
    timeout: float | None = None


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

    def render(self, revisions: Sequence[str], schemas: Sequence[str]) -> Mapping[str, Any]:
        """Ask one fresh child, given no tenant's parameters, for each revision's offline
        SQL under each probe schema (:mod:`~tenant_infra.migrate.rendered`); its reply
        is untrusted data: ``{}`` when it gave none."""
        try:
            lane = self._open()
        except BackendUnavailable:
            return {}
        try:
            reply = lane.request(
                {"op": "render", "revisions": list(revisions), "schemas": list(schemas)},
                self.job.timeout,
            )
        except TimedOut:
            return {}
        finally:
            lane.close()
        rendered = (reply or {}).get("rendered")
        return rendered if isinstance(rendered, dict) else {}

    def map(self, targets: Iterable[tuple[int, MigrationTarget]]) -> Iterator[TargetResult]:
        source = iter(targets)
        take = threading.Lock()
        results: queue.Queue[TargetResult | None] = queue.Queue()

        def lane_loop() -> None:
            lanes = _Lanes(self._open)
            try:
                while True:
                    with take:
                        item = next(source, None)
                    if item is None:
                        return
                    results.put(self._run(*item, lanes))
            finally:
                lanes.close()
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

    def _run(self, index: int, target: MigrationTarget, lanes: _Lanes) -> TargetResult:
        started = time.perf_counter()
        try:
            return self._attempt(index, target, lanes, started)
        except Exception as exc:  # whatever a child did, this target fails, not the run
            return TargetResult.of(
                target, index, "failed", error=f"{type(exc).__name__}: {exc}", started=started
            )

    def _attempt(
        self, index: int, target: MigrationTarget, lanes: _Lanes, started: float
    ) -> TargetResult:
        if target.unavailable:  # no credentials, not on the server: nothing to fork for
            return TargetResult.of(
                target,
                index,
                "failed",
                error=target.unavailable,
                started=started,
                deterministic=target.permanent,
            )
        own = target.params is not None  # a tenant's own credentials: a child of its own
        try:
            lane = lanes.fresh() if own else lanes.shared()
        except BackendUnavailable as exc:
            return TargetResult.of(target, index, "failed", error=str(exc), started=started)
        if own:
            lanes.prepare()  # the next tenant's child is forked, confined and warmed meanwhile
        try:
            reply = lane.request(target_request(self.job.mode, target), self.job.timeout)
        except TimedOut:
            lanes.done(lane)
            return TargetResult.of(
                target,
                index,
                "failed",
                error=f"timed out after {self.job.timeout:g} s; its process was killed and "
                "its transaction rolled back",
                started=started,
            )
        if own or reply is None:
            lanes.done(lane)
        return result_of(reply, target, index, started, lane.pid)

    def _open(self) -> Lane:
        """A fresh child, greeted at once: it confines itself and loads the script
        directory before any tenant is assigned to it."""
        job = self.job
        ports, files = reach([job.params])
        lane = self._sandbox.lane()
        greeting = hello(
            job.params,
            job.destination,
            head=self._sandbox.head,
            ports=(*job.ports, *ports),
            files=(*job.files, *files),
        )
        if not lane.send(greeting):
            lane.close()
            raise BackendUnavailable("a sandbox child exited before its greeting")
        return lane


class _Lanes:
    """One thread's children: a spare forked ahead for the next tenant, and the one
    generic targets share."""

    def __init__(self, open_lane: Callable[[], Lane]) -> None:
        self._open = open_lane
        self._spare: Lane | None = None
        self._shared: Lane | None = None

    def fresh(self) -> Lane:
        lane, self._spare = self._spare, None
        return lane if lane is not None else self._open()

    def prepare(self) -> None:
        if self._spare is None:
            with contextlib.suppress(BackendUnavailable):
                self._spare = self._open()

    def shared(self) -> Lane:
        if self._shared is None:
            self._shared = self._open()
        return self._shared

    def done(self, lane: Lane) -> None:
        lane.close()
        if lane is self._shared:
            self._shared = None

    def close(self) -> None:
        for lane in (self._spare, self._shared):
            if lane is not None:
                lane.close()
        self._spare = self._shared = None


def migrate_one(script_location: str, target: MigrationTarget, destination: str) -> TargetResult:
    """Bring one target (carrying its own login's parameters) to ``destination``, in a
    sandbox child of its own: how a stack's migration resource and a restore's
    aside schema are migrated."""
    ports, files = reach([target.params or {}])
    job = Job(script_location, {}, "upgrade", destination, ports, files)
    with SandboxExecutor(job, 1) as executor:
        (result,) = executor.map([(0, target)])
    return result
