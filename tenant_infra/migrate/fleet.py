"""``migrate_fleet``: the command behind ``tenantctl migrate`` and its Python API.

One transaction per tenant, failures recorded and the run continued, an optional
canary wave that stops everything if any canary fails. Running it again finishes
the stragglers: tenants at head cost one version-table read each.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tenant_infra.errors import InvalidInput
from tenant_infra.migrate.connection import with_libpq_environment
from tenant_infra.migrate.engine import TargetResult
from tenant_infra.migrate.executors import Job, Mode, SandboxExecutor
from tenant_infra.migrate.rendered import RenderedScript, apply_all, prepare
from tenant_infra.migrate.revisions import declared_head
from tenant_infra.migrate.targets import MigrationTarget
from tenant_infra.migrate.worker import reach, script_exists

if TYPE_CHECKING:
    from tenant_infra.registry import Registry

OnResult = Callable[[TargetResult, int, int], None]
"""Progress callback: (result, number done so far, total)."""


@dataclass
class FleetReport:
    """Per-tenant outcomes in input order, plus what the run was."""

    mode: Mode
    script_location: str
    head: str | None
    results: list[TargetResult] = field(default_factory=list)
    seconds: float = 0.0
    #: ``heads`` (the script directory's head), or the revision of ``--to`` or
    #: ``--downgrade-to``.
    destination: str = "heads"
    canary_failed: bool = False
    #: Tenants found at head by the bulk read, never handed to a process.
    read_in_bulk: int = 0
    #: Revisions applied from SQL rendered once (revision → SQL), and those that
    #: declared ``render_once`` but ran online (revision → why).
    rendered: dict[str, str] = field(default_factory=dict)
    online: dict[str, str] = field(default_factory=dict)
    #: Tenants not run because none of their logins may log in (suspended or
    #: retained): not failures; ``tenantctl resume`` migrates a suspended one.
    without_login: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[TargetResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def ok(self) -> bool:
        """True only if no tenant failed and none was skipped by a failed canary."""
        return not self.canary_failed and not self.failed

    @property
    def worth_retrying(self) -> bool:
        """Whether running again may change the outcome: some failure was not
        deterministic (a lost connection, a lock held too long, a killed process)."""
        return any(not r.deterministic for r in self.failed)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.results:
            out[r.status] = out.get(r.status, 0) + 1
        return out


def _skipped(index: int, target: MigrationTarget) -> TargetResult:
    return TargetResult.of(target, index, "skipped", error="not attempted: a canary tenant failed")


def _current_in_bulk(
    indexed: list[tuple[int, MigrationTarget]],
    params: Mapping[str, str],
    head: str | None,
    collect: Callable[[Iterable[TargetResult]], bool],
) -> list[tuple[int, MigrationTarget]]:
    """Report the targets the bulk read finds at ``head``; return the others."""
    if head is None:  # an empty script directory: the runner decides
        return indexed
    from tenant_infra.migrate.versions import at_head

    readable = [t for _, t in indexed if not t.unavailable]
    current = at_head(params, readable, head) if readable else set()
    if not current:
        return indexed
    collect(
        TargetResult.of(t, i, "current", before=head, after=head)
        for i, t in indexed
        if t in current
    )
    return [(i, t) for i, t in indexed if t not in current]


def _apply_rendered(
    rendered: RenderedScript,
    wave: list[tuple[int, MigrationTarget]],
    params: Mapping[str, str],
    workers: int,
    timeout: float | None,
    collect: Callable[[Iterable[TargetResult]], bool],
) -> tuple[bool, list[tuple[int, MigrationTarget]]]:
    """Migrate what the rendered SQL can; whether any failed, and what is left for the
    online runner."""
    left: list[tuple[int, MigrationTarget]] = []
    failed = False
    for item, result in apply_all(rendered, wave, params, workers, timeout):
        if result is None:
            left.append(item)
        else:
            failed = collect([result]) or failed
    return failed, left


def migrate_fleet(
    targets: Sequence[MigrationTarget],
    script_location: str | Path,
    params: Mapping[str, str],
    *,
    concurrency: int = 1,
    canary: int = 0,
    mode: Mode = "upgrade",
    destination: str = "heads",
    on_result: OnResult | None = None,
    registry: Registry | None = None,
    timeout: float | None = None,
    read_in_bulk: Mapping[str, str] | None = None,
) -> FleetReport:
    """Bring every target to ``destination`` (``mode="upgrade"``, or down to it with
    ``"downgrade"``), or only list
    (``"pending"``) or render (``"sql"``) what that would do.

    ``params`` are the libpq keywords used for targets that carry none (generic
    mode: the DSN's user, with its privileges). Tenant targets (``--product``) carry
    their own role's credentials (:func:`~tenant_infra.migrate.credentials.
    attach_credentials`) and pass ``{}`` here: a tenant schema is never migrated by
    another user (see :mod:`tenant_infra.migrate.engine`).
    ``canary`` > 0 migrates that many targets first and stops if any fails.
    ``registry``: each tenant service's new revision is recorded there, with history.
    ``timeout``: seconds one tenant may take; past it, its process is killed and it fails.
    ``read_in_bulk``: a platform connection (the discovery DSN, or generic mode's) that
    reads the version tables first (:mod:`~tenant_infra.migrate.versions`): on the way
    to head, a tenant already there is reported ``current`` without a process of its
    own (counted in :attr:`FleetReport.read_in_bulk`).

    Revision code runs only in sandboxed processes (:mod:`~tenant_infra.migrate.
    sandbox`): one per tenant target, holding only that tenant's parameters; ``params``
    reach a sandbox only if some target needs them.
    """
    if concurrency < 1:
        raise InvalidInput("--concurrency must be at least 1")
    if canary < 0:
        raise InvalidInput("--canary must not be negative")
    if timeout is not None and timeout <= 0:
        raise InvalidInput("--timeout must be positive")
    started = time.perf_counter()
    location = script_exists(script_location)
    report = FleetReport(
        mode=mode, script_location=str(script_location), head=None, destination=destination
    )
    generic = any(t.params is None and not t.unavailable for t in targets)
    ports, files = reach(t.params for t in targets if t.params is not None)
    job = Job(
        str(location),
        with_libpq_environment(params) if generic else {},
        mode,
        destination,
        ports,
        files,
        timeout,
    )
    indexed = list(enumerate(targets))
    total = len(indexed)
    done = 0

    def collect(results: Iterable[TargetResult]) -> bool:
        nonlocal done
        any_failed = False
        for result in results:
            done += 1
            report.results.append(result)
            if registry is not None and result.status == "migrated" and result.product:
                registry.record_revision(result.label, result.product, result.after)
            any_failed = any_failed or result.status == "failed"
            if on_result is not None:
                on_result(result, done, total)
        return any_failed

    # More workers than tenants only costs forks and connections.
    workers = max(1, min(concurrency, total))
    if mode == "sql":
        workers = 1  # SQL is printed in tenant order; rendering is cheap
    moving = mode in ("upgrade", "downgrade")
    if read_in_bulk is not None and mode == "upgrade" and destination == "heads":
        # The head as the sandbox reads it (statically), so that a fleet at head
        # starts no sandbox at all.
        report.head = declared_head(location)
        waiting = len(indexed)
        indexed = _current_in_bulk(indexed, read_in_bulk, report.head, collect)
        report.read_in_bulk = waiting - len(indexed)
    # The canary wave is made of tenants that have something to do.
    waves = [indexed[:canary], indexed[canary:]] if canary and moving else [indexed]
    with contextlib.ExitStack() as stack:
        executor = None
        if indexed or not total:  # an empty fleet still learns its head from the sandbox
            executor = stack.enter_context(SandboxExecutor(job, workers))
            report.head = executor.head
        rendered = None
        if executor is not None and mode == "upgrade" and destination == "heads":
            rendered = prepare(str(location), executor.render)
            if rendered is not None:
                report.rendered = dict(rendered.sql)
                report.online = dict(rendered.refused)
        for wave_no, wave in enumerate(waves):
            if not wave or executor is None:
                continue
            failed = False
            if rendered is not None and rendered.sql:
                failed, wave = _apply_rendered(rendered, wave, params, workers, timeout, collect)
            if wave and collect(executor.map(wave)):
                failed = True
            if failed and canary and wave_no == 0 and len(waves) > 1:
                report.canary_failed = True
                for index, target in waves[1]:
                    report.results.append(_skipped(index, target))
                break
    seen = {r.index for r in report.results}
    for index, target in enumerate(targets):  # nobody answered: failed, never vanished
        if index not in seen:
            report.results.append(
                TargetResult.of(target, index, "failed", error="no result from the runner")
            )
    report.results.sort(key=lambda r: r.index)
    report.seconds = time.perf_counter() - started
    return report
