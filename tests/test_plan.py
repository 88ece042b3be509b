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
    assert set(document) == {"tenant", "resources", "problems"} and document["tenant"] == "acme"
    assert document["problems"] == []
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


def test_plan_fails_when_the_fleet_would_exhaust_a_shared_server(tmp_path, monkeypatch, capsys) -> None:
    """Issue 16, row 7: each tenant within its tier, the fleet over the server."""
    import shutil

    import pytest
    import yaml

    from tenant_infra.cli import main

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "stacks").mkdir()
    shutil.copy(root / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    dev = yaml.safe_load((root / "stacks" / "Pulumi.dev.yaml").read_text())
    server = dev["config"]["tenant-infra:platform"]["postgres"]["default"]
    server["maxConnections"], server["reservedConnections"] = 100, 20
    for tenant in ("alpha", "bravo", "charlie"):  # enterprise: 100 connections each
        config = dict(dev["config"]) | {"tenant-infra:tenant": tenant, "tenant-infra:tier": "enterprise"}
        (tmp_path / "stacks" / f"Pulumi.{tenant}.yaml").write_text(yaml.safe_dump({"config": config}))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["plan", "alpha", "--format", "json"])
    out, err = capsys.readouterr()
    problems = json.loads(out)["problems"]
    assert info.value.code == 1 and len(problems) == 1
    assert "add up to" in problems[0] and "over 80 (100 less 20 reserved)" in problems[0]
    assert problems[0] in err
