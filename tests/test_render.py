"""Renderings for people and pull requests."""

from __future__ import annotations

from tenant_infra.lifecycle import MIGRATION_TYPE, FleetResult, PreviewOutcome, ResourceEvent
from tenant_infra.render import migrations_of, preview_json, preview_markdown


def outcome(*moves: tuple[str, str, str | None, str]) -> PreviewOutcome:
    events = tuple(
        ResourceEvent(
            op=op,
            phase="pre",
            type=MIGRATION_TYPE,
            name=f"acme-eu-{p}-migration",
            old_revision=old,
            new_revision=new,
        )
        for p, op, old, new in moves
    )
    return PreviewOutcome({"create": 2, "update": 1, "delete": 1, "same": 20}, events)


def test_migrations_are_named_per_service_with_revisions() -> None:
    result = outcome(
        ("ledger", "update", "0002", "0003"),
        ("tracer", "create", None, "0002"),
        ("reporter", "same", "0001", "0001"),
    )
    assert migrations_of(result) == ["ledger: 0002 → 0003", "tracer: base → 0002"]


def test_markdown_summary_has_a_row_per_tenant_and_details_for_failures() -> None:
    results = [
        FleetResult("acme-eu", True, preview=outcome(("ledger", "update", "0002", "0003"))),
        FleetResult("globex", False, "error: provider postgresql: connection refused"),
    ]
    text = preview_markdown(results)
    assert "2 tenant stack(s) previewed, 1 failed." in text
    assert "| acme-eu | 2 | 1 | 0 | 1 | ledger: 0002 → 0003 | ok |" in text
    assert "| globex | 0 | 0 | 0 | 0 | — | **failed** |" in text
    assert "### globex: failed" in text and "connection refused" in text


def test_json_summary_matches_the_markdown() -> None:
    (row,) = preview_json(
        [FleetResult("acme-eu", True, preview=outcome(("ledger", "update", "0002", "0003")))]
    )
    assert row == {
        "tenant": "acme-eu",
        "ok": True,
        "error": None,
        "changes": {"create": 2, "update": 1, "delete": 1, "same": 20},
        "migrations": ["ledger: 0002 → 0003"],
    }


def test_a_backup_report_shows_an_error_as_it_is() -> None:
    """Markup-looking text in an error ("[secret]") is shown, never taken for a style."""
    import io

    from rich.console import Console

    from tenant_infra.operations.backup import BackupResult
    from tenant_infra.render import backup_report

    out = io.StringIO()
    failed = BackupResult("acme", "ledger", "failed", error="mongodump failed: [secret]@mongo [bold]")
    backup_report([failed], Console(file=out, width=200))
    assert "mongodump failed: [secret]@mongo [bold]" in out.getvalue()
