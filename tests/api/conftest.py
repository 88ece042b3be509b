"""An API over a replay world: tenants onboarded on the real servers, the registry read
as its read-only role, and documents from what the replay backend recorded."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tenant_infra import commands
from tenant_infra.api.documents import Document
from tests.support.api import running
from tests.support.registry import control_plane
from tests.support.world import DEV_STACK, GUEST, World


@dataclass
class Served:
    world: World
    url: str
    #: Documents that replace what the replay recorded (a rotation done by the test).
    overrides: dict[tuple[str, str], Document] = field(default_factory=dict)
    reads: list[tuple[str, str]] = field(default_factory=list)

    def documents(self, tenant: str, product: str) -> Document | None:
        self.reads.append((tenant, product))
        if (tenant, product) in self.overrides:
            return self.overrides[(tenant, product)]
        try:
            return self.world.backend.document(tenant, product)
        except KeyError:
            return None

    def key(self, product: str | None = None) -> str:
        scope = "product" if product else "operator"
        return commands.create_api_key(scope, product, **self.world.kwargs())

    def get(self, path: str, key: str | None, **headers: str) -> requests.Response:
        if key is not None:
            headers["X-API-Key"] = key
        return requests.get(self.url + path, headers=headers, timeout=30)

    def connections(self, tenant: str, product: str, key: str) -> requests.Response:
        return self.get(f"/v1/tenants/{tenant}/associations/{product}/connections", key)


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    monkeypatch.setenv("TENANT_INFRA_RABBITMQ_PASSWORD", GUEST[1])
    with control_plane(tmp_path) as plane:
        world = World(tmp_path, plane)
        commands.drain_events(**world.kwargs())  # creates the registry's tables
        holder: list[Served] = []
        app = commands.api(
            documents=lambda t, p: holder[0].documents(t, p),
            writes=True,
            platform=DEV_STACK,
            verify=None,
            **world.kwargs(),
        )
        try:
            with running(app) as url:
                holder.append(Served(world, url))
                yield holder[0]
        finally:
            world.close()
