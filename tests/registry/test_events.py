"""The seed platform's event contract: channel, envelope, tenant ids, payload fields."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tenant_infra.registry.events import EVENT_TYPES, Event, channel, encode, tenant_id


def test_one_channel_per_environment_with_its_trailing_colon() -> None:
    assert channel("production") == "tenant-events:production:"


def test_uuid_tenants_are_dashless_and_lowercase_slugs_stay() -> None:
    assert tenant_id("0F8FAD5B-D9CB-469F-A165-70867728950E") == "0f8fad5bd9cb469fa16570867728950e"
    assert tenant_id("0f8fad5bd9cb469fa16570867728950e") == "0f8fad5bd9cb469fa16570867728950e"
    assert tenant_id("acme-eu") == "acme-eu"


def test_the_envelope_has_exactly_the_contracts_fields() -> None:
    at = datetime(2026, 12, 2, 5, 0, tzinfo=UTC)
    event = Event("tenant.service.purged", "acme", {"service_name": "ledger"})
    envelope = event.envelope("staging", "e-1", at)
    assert envelope == {
        "event_id": "e-1",
        "event_type": "tenant.service.purged",
        "timestamp": "2026-12-02T05:00:00Z",
        "tenant_id": "acme",
        "tenant_slug": "acme",
        "environment": "staging",
        "payload": {"service_name": "ledger"},
    }
    assert encode(envelope).startswith('{"environment":"staging","event_id":"e-1"')


def test_thirteen_types_and_their_payloads_are_enforced() -> None:
    assert len(EVENT_TYPES) == 13
    with pytest.raises(ValueError, match="unknown event type"):
        Event("tenant.renamed", "acme", {})
    with pytest.raises(ValueError, match="carries exactly"):
        Event("tenant.service.suspended", "acme", {"service_name": "ledger"})
    with pytest.raises(ValueError, match="carries exactly"):
        Event("tenant.created", "acme", {"password": "x"})
