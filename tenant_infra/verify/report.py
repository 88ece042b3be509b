"""Renderings of a verify report: a Rich table per service, or one JSON document."""

from __future__ import annotations

import json

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tenant_infra.verify.command import VerifyReport

_STATUS = {
    "pass": "[green]pass[/]",
    "fail": "[bold red]FAIL[/]",
    "skip": "[yellow]skip[/]",
    "warn": "[yellow]warn[/]",
}


def dumps(report: VerifyReport) -> str:
    return json.dumps(report.to_json(), indent=2, sort_keys=False)


def print_table(report: VerifyReport, console: Console) -> None:
    for service in report.services:
        title = f"{report.tenant} / {service.product} ({service.isolation})"
        table = Table(title=title, title_justify="left")
        table.add_column("check", no_wrap=True)
        table.add_column("result", no_wrap=True)
        table.add_column("reason", overflow="fold")
        for check in service.checks:
            status = check.to_json()["status"]
            table.add_row(check.name, _STATUS[status], escape(check.reason))
        console.print(table)
        if service.limits:
            shown = ", ".join(f"{k}={v}" for k, v in service.limits.items())
            console.print(f"limits in force: {escape(shown)}")
    verdict = "[green]verified[/]" if report.ok else "[bold red]NOT verified[/]"
    failed = sum(len(s.failed()) for s in report.services)
    console.print(f"tenant {report.tenant}: {verdict}" + (f" ({failed} failing)" if failed else ""))
