"""Scrubbing credentials out of text that is stored or shown."""

from __future__ import annotations

import pytest

from tenant_infra.errors import scrub


@pytest.mark.parametrize(
    ("text", "hidden"),
    [
        ("connect to postgresql://ledger_acme:Hunter2pw@db/ledger failed", "Hunter2pw"),
        ("amqps://u:p4ss@mq:5671/acme refused", "p4ss"),
        ("host=db user=x password=Hunter2pw dbname=y", "Hunter2pw"),
        ("error: token: s.abcdef123 expired", "s.abcdef123"),
        ("the vault said hvs.ENVTOKEN42 is invalid", "hvs.ENVTOKEN42"),
    ],
)
def test_credentials_never_survive(text: str, hidden: str) -> None:
    cleaned = scrub(text, {"VAULT_TOKEN": "hvs.ENVTOKEN42", "HOME": "/root"})
    assert hidden not in cleaned and "[secret]" in cleaned


def test_ordinary_text_is_untouched() -> None:
    text = "migration of tenant acme product ledger to revision 0003 failed: relation exists"
    assert scrub(text, {"HOME": "/root", "VAULT_TOKEN": "hvs.x1234"}) == text
