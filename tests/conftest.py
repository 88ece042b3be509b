"""Shared fixtures: plans of example configs evaluated under Pulumi's mock runtime."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from tenant_infra import commands
from tenant_infra.plan import Plan

ROOT = Path(__file__).resolve().parent.parent
STACKS = ROOT / "stacks"

PlanFor = Callable[..., Plan]


@pytest.fixture
def plan_for() -> PlanFor:
    """``plan_for("acme", ["ledger:DATABASE"], stack="globex")``: a plan on that stack's platform."""

    def make(tenant: str, services: Sequence[str] = (), stack: str | None = None) -> Plan:
        path = STACKS / f"Pulumi.{stack or tenant}.yaml"
        return commands.plan(tenant, services, path)

    return make
