"""Where credentials come from, and how long the API keeps them."""

from __future__ import annotations

import pytest

from tenant_infra.api.documents import Cached, StaticDocuments, VaultDocuments
from tenant_infra.errors import BackendUnavailable, InvalidInput
from tenant_infra.vaultclient import VaultAccess
from tests.support.vault_stub import stub_vault


def test_a_cached_document_is_served_for_its_registry_version_only() -> None:
    reads: list[str] = []
    now = [0.0]

    def source(tenant: str, product: str) -> dict[str, str]:
        reads.append(tenant)
        return {"tenant": tenant, "n": str(len(reads))}

    cache = Cached(source, ttl=10, size=2, clock=lambda: now[0])
    assert cache.cached("a", "ledger", "v1") is None
    first = cache.read("a", "ledger", "v1")
    assert first is not None and cache.cached("a", "ledger", "v1") is first
    assert cache.cached("a", "ledger", "v2") is None  # the registry recorded a change
    now[0] = 11
    assert cache.cached("a", "ledger", "v1") is None  # older than the TTL
    cache.read("a", "ledger", "v1")
    cache.read("b", "ledger", "v1")
    cache.read("c", "ledger", "v1")
    assert cache.cached("a", "ledger", "v1") is None  # the least recently used left
    assert reads == ["a", "a", "b", "c"]


def test_static_documents_are_checked_when_read() -> None:
    docs = StaticDocuments.parse('[{"tenant": "acme", "product": "ledger", "x": 1}]')
    assert docs("acme", "ledger") == {"tenant": "acme", "product": "ledger", "x": 1}
    assert docs("acme", "tracer") is None
    for text in ("{", '[{"tenant": "acme"}]', "[1]"):
        with pytest.raises(InvalidInput):
            StaticDocuments.parse(text)


def test_vault_documents_read_the_services_kv_path_with_the_operators_token() -> None:
    with stub_vault("root-token") as vault:
        vault.put("secret", "tenants/acme/ledger", {"tenant": "acme", "product": "ledger"})
        docs = VaultDocuments(VaultAccess(vault.address, "root-token", "secret"))
        assert docs("acme", "ledger") == {"tenant": "acme", "product": "ledger"}
        assert docs("acme", "tracer") is None
        assert vault.requests[-1] == ("/v1/secret/data/tenants/acme/tracer", True)
        with pytest.raises(BackendUnavailable):
            VaultDocuments(VaultAccess(vault.address, "wrong", "secret"))("acme", "ledger")
