"""How a fleet run's table reads on an 80-column pipe."""

from __future__ import annotations

import io

from rich.console import Console

from tenant_infra.migrate.engine import TargetResult
from tenant_infra.migrate.fleet import FleetReport
from tenant_infra.migrate.report import render_table


def test_names_are_never_broken_mid_word_at_80_columns() -> None:
    tenant = "a1b2c3d4-5e6f-7a8b-9c0d-e1f2a3b4c5d6"
    where = f"ledger.tenant_{tenant.replace('-', '_')}"
    failed = TargetResult(
        0,
        tenant,
        where,
        "ledger",
        "0001",
        "0001",
        "failed",
        error="revision 0002: relation operations already exists " * 2,
    )
    report = FleetReport("upgrade", "migrations/ledger", "0003", [failed])
    out = io.StringIO()
    render_table(report, Console(file=out, width=80, force_terminal=False))
    text = out.getvalue()
    assert tenant in text and where in text  # whole, on one line each
    assert "relation" in text and "1 tenant(s): 1 failed" in text
