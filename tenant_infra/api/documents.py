"""Where the API finds a service's credentials: its connections document.

A source is any ``(tenant, product) -> document | None``. In production it is Vault
(the operator's, read-only token); without Vault (this project's tests) the documents
the replay backend records, or documents read once from standard input.

:class:`Cached` keeps documents in memory keyed by the registry rows' version: every
change a lifecycle operation records (a rotation, a promotion, a restore) changes
that version in the transaction that queues its event, so a product that re-fetches
after the event is never served the old credentials. The TTL bounds what an
out-of-band change to Vault could leave stale.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from tenant_infra import inputs
from tenant_infra.errors import InvalidInput
from tenant_infra.tenant import TenantNames
from tenant_infra.vaultclient import VaultAccess, read_secret

Document = Mapping[str, Any]
DocumentSource = Callable[[str, str], Document | None]

#: How long a document is served without reading it again, at most: what a change
#: made behind the registry's back (by hand, in Vault) may take to be served.
DOCUMENT_TTL: Final = 300.0
#: Documents kept at most (services), the least recently used leaving first.
DOCUMENT_CACHE_SIZE: Final = 100_000


class VaultDocuments:
    """``<mount>/data/tenants/<tenant>/<product>`` on the operator's Vault."""

    def __init__(self, vault: VaultAccess) -> None:
        self.vault = vault

    def __call__(self, tenant: str, product: str) -> Document | None:
        try:
            return read_secret(self.vault, TenantNames(tenant).service(product).vault_secret)
        except InvalidInput:
            return None  # no such secret


class StaticDocuments:
    """Documents given once (``tenantctl serve --connections -``): for a Vault-less
    deployment, or what the replay backend recorded."""

    #: A dictionary lookup: read on the event loop, no thread hop.
    blocking = False

    def __init__(self, documents: Iterable[Document]) -> None:
        self.documents: dict[tuple[str, str], Document] = {}
        for document in documents:
            if not isinstance(document, Mapping) or not {"tenant", "product"} <= set(document):
                raise InvalidInput("each connections document needs 'tenant' and 'product'")
            self.documents[(str(document["tenant"]), str(document["product"]))] = document

    @classmethod
    def parse(cls, text: str, where: str = "-") -> StaticDocuments:
        loaded = inputs.load_json(text, "connections documents", where)
        return cls(loaded if isinstance(loaded, list) else [loaded])

    def __call__(self, tenant: str, product: str) -> Document | None:
        return self.documents.get((tenant, product))


@dataclass
class Entry:
    """A document read for one registry version, and the answer rendered from it."""

    version: str
    expires: float
    document: Document
    #: Filled in by the API on first use: the same version always renders the same.
    body: bytes | None = None


class Cached:
    """A source's documents, kept per (tenant, product, registry version)."""

    def __init__(
        self,
        source: DocumentSource,
        ttl: float = DOCUMENT_TTL,
        size: int = DOCUMENT_CACHE_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source, self.ttl, self.size, self.clock = source, ttl, size, clock
        self._entries: OrderedDict[tuple[str, str], Entry] = OrderedDict()
        self._lock = threading.Lock()

    def cached(self, tenant: str, product: str, version: str) -> Entry | None:
        """The entry if it was read for this very version, recently enough."""
        with self._lock:
            entry = self._entries.get((tenant, product))
            if entry is None or entry.version != version or entry.expires < self.clock():
                return None
            self._entries.move_to_end((tenant, product))
            return entry

    def read(self, tenant: str, product: str, version: str) -> Entry | None:
        """Read from the source (blocking: call it off the event loop) and keep it."""
        document = self.source(tenant, product)
        if document is None:
            return None
        entry = Entry(version, self.clock() + self.ttl, document)
        with self._lock:
            self._entries[(tenant, product)] = entry
            self._entries.move_to_end((tenant, product))
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return entry
