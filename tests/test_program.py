"""The one program under the mock runtime: the config it accepts is the config ``plan``
accepts, and a key it would not read fails the update instead of being dropped."""

from __future__ import annotations

from pathlib import Path

import pytest

from tenant_infra.config import TenantConfig, read_stack_file
from tenant_infra.credentials import PlatformCredentials
from tenant_infra.plan import evaluate, pulumi_config_values
from tenant_infra.program import tenant_program

ROOT = Path(__file__).resolve().parent.parent


def program() -> object:
    return {"services": tenant_program(PlatformCredentials.for_plan()).outputs()}


def values(**extra: str) -> dict[str, str]:
    config = TenantConfig.from_pulumi_values(read_stack_file(ROOT / "stacks" / "Pulumi.acme.yaml"))
    return {**pulumi_config_values(config), **extra}


def test_the_example_config_runs() -> None:
    resources, outputs = evaluate("acme", values(), program)
    assert resources and set(outputs["services"]) == {"ledger"}


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("tenant-infra:limit", '{"pg_connection_limit": 5}', "unknown key tenant-infra:limit .did you mean tenant-infra:limits"),
        ("tenant-infra:protectdata", "false", "unknown key tenant-infra:protectdata .did you mean tenant-infra:protectData"),
        ("tenant-infra:protectData", '"no"', "protect_?[dD]ata"),
    ],
)
def test_a_config_the_program_would_misread_fails_the_update(key: str, value: str, message: str) -> None:
    with pytest.raises(Exception, match=message):
        evaluate("acme", values(**{key: value}), program)
