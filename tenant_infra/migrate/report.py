"""How a fleet run is shown: progress while it runs, a table or JSON at the end.

Progress and the table go to stderr/stdout through rich on a terminal, plain lines
otherwise (logs and CI), so ``--format json`` on stdout stays machine-readable.
"""

from __future__ import annotations

import json
import sys
from types import TracebackType
from typing import Any, TextIO

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tenant_infra.migrate.engine import TargetResult
from tenant_infra.migrate.fleet import FleetReport

_STYLE = {
    "migrated": "green",
    "current": "dim",
    "pending": "yellow",
    "failed": "bold red",
    "skipped": "magenta",
}


def _rev(value: str | None) -> str:
    return value or "-"


def progress_line(result: TargetResult, done: int, total: int) -> str:
    """``[i/n] tenant product: 0001 -> 0003 migrated`` (django-tenants style)."""
    who = f"{result.label} {result.product}" if result.product else result.label
    line = f"[{done}/{total}] {who}: {_rev(result.before)} -> {_rev(result.after)} {result.status}"
    if result.error:
        line += f" ({result.error})"
    return line


class ProgressSink:
    """Callback for :func:`migrate_fleet`: a rich bar on a terminal, lines otherwise."""

    def __init__(self, total: int, stream: TextIO | None = None, tty: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.total = total
        self._progress: Progress | None = None
        self._task: Any = None

    def __enter__(self) -> ProgressSink:
        if self.tty and self.total:
            self._progress = Progress(
                TextColumn("migrating"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[failed]} failed"),
                TimeElapsedColumn(),
                console=Console(file=self.stream),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("migrate", total=self.total, failed=0)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def __call__(self, result: TargetResult, done: int, total: int) -> None:
        if self._progress is not None:
            failed = self._progress.tasks[0].fields["failed"] + (result.status == "failed")
            self._progress.update(self._task, completed=done, failed=failed)
            if result.status == "failed":
                self._progress.console.print(progress_line(result, done, total), markup=False)
        else:
            print(progress_line(result, done, total), file=self.stream, flush=False)


def to_dict(report: FleetReport) -> dict[str, Any]:
    return {
        "ok": report.ok,
        "mode": report.mode,
        "script_location": report.script_location,
        "head": report.head,
        "destination": report.destination,
        "seconds": round(report.seconds, 3),
        "canary_failed": report.canary_failed,
        "counts": report.counts(),
        "read_in_bulk": report.read_in_bulk,
        "without_login": list(report.without_login),
        "rendered_once": sorted(report.rendered),
        "online_despite_render_once": dict(report.online),
        "tenants": [
            {
                "tenant": r.label,
                "product": r.product,
                "where": r.where,
                "before": r.before,
                "after": r.after,
                "status": r.status,
                "revisions": list(r.revisions),
                "error": r.error,
                "deterministic": r.deterministic,
                "seconds": round(r.seconds, 4),
            }
            for r in report.results
        ],
    }


def to_json(report: FleetReport) -> str:
    return json.dumps(to_dict(report), indent=2)


def _toward(report: FleetReport) -> str:
    if report.destination == "heads":
        return f"head {_rev(report.head)}"
    return report.destination


def _render_lines(report: FleetReport, console: Console) -> None:
    console.print(f"migrate ({report.mode}) → {_toward(report)}", soft_wrap=True)
    show_all = len(report.results) <= 50
    for r in report.results:
        if show_all or r.status not in ("current", "migrated"):
            who = f"{r.label} {r.product}" if r.product else r.label
            line = f"{who}: {r.where} {_rev(r.before)} -> {_rev(r.after)} {r.status}"
            console.print(escape(line), soft_wrap=True, highlight=False)
            if r.error:
                console.print("    " + escape(r.error), soft_wrap=True, highlight=False)
    hidden = sum(1 for r in report.results if not show_all and r.status in ("current", "migrated"))
    if hidden:
        console.print(f"{hidden} migrated or current tenant(s) not listed (see --format json)")


def render_table(report: FleetReport, console: Console) -> None:
    """Every tenant row by row; beyond 50 tenants only those needing attention."""
    # Names are never broken mid-word, nor cropped: where the table's name columns
    # would not fit (an 80-column pipe, long ids), each tenant is a line of its own.
    longest = {
        "tenant": max((len(r.label) for r in report.results), default=6),
        "where": max((len(r.where) for r in report.results), default=5),
    }
    if sum(longest.values()) + 50 > console.width:
        _render_lines(report, console)
        _summary(report, console)
        return
    table = Table(title=f"migrate ({report.mode}) → {_toward(report)}")
    for col in ("tenant", "product", "where", "before", "after", "status", "error"):
        if col == "error":
            table.add_column(col, overflow="fold")
        else:
            table.add_column(col, no_wrap=True, min_width=longest.get(col))
    show_all = len(report.results) <= 50
    hidden = 0
    for r in report.results:
        if not show_all and r.status in ("current", "migrated"):
            hidden += 1  # a large fleet: list what needs attention, count the rest
            continue
        changes = " ".join(r.revisions)
        table.add_row(
            escape(r.label),
            r.product or "",
            escape(r.where),
            _rev(r.before),
            _rev(r.after) + (f" ({changes})" if changes and r.status != "failed" else ""),
            f"[{_STYLE[r.status]}]{r.status}[/]",
            escape(r.error or ""),
        )
    if table.row_count:
        console.print(table)
    if hidden:
        console.print(f"{hidden} migrated or current tenant(s) not listed (see --format json)")
    _summary(report, console)


def _summary(report: FleetReport, console: Console) -> None:
    counts = ", ".join(f"{n} {s}" for s, n in sorted(report.counts().items()))
    verdict = "ok" if report.ok else "FAILED"
    bulk = f" ({report.read_in_bulk} current by the bulk read)" if report.read_in_bulk else ""
    if report.rendered:
        console.print(f"rendered once, applied as text: {' '.join(sorted(report.rendered))}")
    for revision, why in sorted(report.online.items()):
        console.print(escape(f"revision {revision} declares render_once but ran online: {why}"))
    if report.without_login:
        resting = report.without_login
        shown = ", ".join(resting[:10]) + (f" and {len(resting) - 10} more" * (len(resting) > 10))
        console.print(
            escape(
                f"{len(report.without_login)} tenant(s) left out, no login of theirs may log in"
                f" (suspended or retained; resume migrates a suspended one): {shown}"
            )
        )
    console.print(
        f"{len(report.results)} tenant(s): {counts or 'none'}{bulk} in {report.seconds:.1f}s:"
        f" {verdict}"
    )
