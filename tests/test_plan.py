"""The offline plan: its JSON document, secret masking, and golden plans of the example stacks."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from tenant_infra import commands

GOLDEN = Path(__file__).resolve().parent / "golden"
STACKS = Path(__file__).resolve().parent.parent / "stacks"


@pytest.mark.parametrize("stack", ["acme", "globex", "dev"])
def test_plan_of_example_stack_matches_golden(stack: str) -> None:
    """Regenerate with ``UPDATE_GOLDEN=1 pytest tests/test_plan.py`` and review the diff."""
    document = commands.plan(stack, (), STACKS / f"Pulumi.{stack}.yaml").to_json()
    path = GOLDEN / f"plan-{stack}.json"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    assert document == json.loads(path.read_text())


def test_plan_document_shape() -> None:
    document = commands.plan("acme", ["ledger:DATABASE", "tracer:SCHEMA"]).to_json()
    assert set(document) == {"tenant", "resources"} and document["tenant"] == "acme"
    names = {r["name"] for r in document["resources"]}
    for resource in document["resources"]:
        assert set(resource) == {"type", "name", "parent", "inputs"}
        assert resource["parent"] is None or resource["parent"] in names
    types = {r["type"] for r in document["resources"]}
    assert {
        "postgresql:index/database:Database",
        "postgresql:index/schema:Schema",
        "postgresql:index/role:Role",
        "rabbitmq:index/vHost:VHost",
        "rabbitmq:index/user:User",
        "rabbitmq:index/permissions:Permissions",
        "vault:kv/secretV2:SecretV2",
        "vault:index/policy:Policy",
        "mongodbatlas:index/databaseUser:DatabaseUser",
    } <= types


def test_no_generated_password_appears_anywhere_in_the_plan() -> None:
    """The mocks give each RandomPassword a known fake value: none may surface unmasked."""
    plan = commands.plan("globex", ["ledger:DATABASE", "tracer:SCHEMA", "reporter:SCHEMA"])
    text = json.dumps(plan.to_json()) + json.dumps(plan.outputs)
    fakes = [
        hashlib.sha256(r.name.encode()).hexdigest()[:32]
        for r in plan.of_type("random:index/randomPassword:RandomPassword")
    ]
    assert len(fakes) >= 6
    for fake in fakes:
        assert fake not in text
    assert text.count('"[secret]"') >= len(fakes)
