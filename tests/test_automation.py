"""The Automation API adapter's decisions that need no CLI; end-to-end runs need `pulumi`."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest

from tenant_infra.automation import (
    PulumiBackend,
    PulumiUnavailable,
    _forward,
    _last_error_line,
    backend_env,
    project_file,
    provider_conflict,
    require_cli,
)
from tenant_infra.cli import main
from tenant_infra.errors import BackendUnavailable
from tenant_infra.retry import TransientConflict


def fake_cli(tmp_path: Path, version: str) -> Path:
    path = tmp_path / "bin" / "pulumi"
    path.parent.mkdir()
    path.write_text(f"#!/bin/sh\necho {version}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path.parent


def test_missing_cli_is_one_clear_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(
        PulumiUnavailable, match=r"install it from .* \(`tenantctl plan` works without it\)"
    ):
        require_cli()


def test_too_old_cli_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(fake_cli(tmp_path, "v3.100.0")))
    with pytest.raises(PulumiUnavailable, match=r"3\.100\.0 is too old"):
        require_cli()


def test_recent_cli_is_accepted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(fake_cli(tmp_path, "v3.272.0")))
    assert require_cli() == (3, 272, 0)


def test_onboard_without_cli_exits_nonzero_with_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SystemExit) as info:
        main(["onboard", "acme", "--service", "ledger:DATABASE"])
    out, err = capsys.readouterr()
    assert info.value.code == 1 and out == ""
    assert err.count("\n") == 1 and "Pulumi CLI" in err and "tenantctl plan" in err
    # Invalid input is said first (exit 2), before the missing CLI.
    for argv in (["onboard", "Bad_Id"], ["onboard", "acme", "--service", "ledger:SCHEMA"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        out, err = capsys.readouterr()
        assert (info.value.code, out) == (2, ""), err
        assert "Pulumi CLI" not in err


def test_default_backend_is_a_local_file_backend_in_the_project(tmp_path: Path) -> None:
    env = backend_env(tmp_path, {"PULUMI_CONFIG_PASSPHRASE": "x"})
    assert env["PULUMI_BACKEND_URL"] == (tmp_path / ".pulumi-state").resolve().as_uri()
    assert "PULUMI_CONFIG_PASSPHRASE" not in env  # inherited, never copied around


def test_the_usual_backend_variable_wins(tmp_path: Path) -> None:
    env = backend_env(
        tmp_path, {"PULUMI_BACKEND_URL": "s3://bucket", "PULUMI_CONFIG_PASSPHRASE": "x"}
    )
    assert "PULUMI_BACKEND_URL" not in env


def test_a_passphrase_is_required_for_the_local_backend(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable, match="PULUMI_CONFIG_PASSPHRASE"):
        backend_env(tmp_path, {})


def test_each_tenant_has_its_own_work_dir_reading_the_project_stacks(tmp_path: Path) -> None:
    from pulumi.automation._local_workspace import _load_project_settings

    a, b = project_file(tmp_path, "acme"), project_file(tmp_path, "globex")
    assert a.parent != b.parent
    text = a.read_text()
    assert "name: tenant-infra" in text and "stackConfigDir: ../../stacks" in text
    # The CLI refuses a `main` outside the project folder; the program runs inline instead.
    assert "main:" not in text
    assert (a.parent / "../../stacks").resolve() == (tmp_path / "stacks").resolve()
    assert _load_project_settings(str(a.parent)).name == "tenant-infra"


def test_cli_errors_are_reduced_to_the_error_line() -> None:
    text = (
        "code: 255\n stdout: Updating...\n stderr: warning: x\nerror: update failed: role exists\n"
    )
    assert _last_error_line(text) == "error: update failed: role exists"


@pytest.mark.skipif(shutil.which("pulumi") is None, reason="the pulumi CLI is not on PATH")
def test_end_to_end_onboard_register_status_offboard(tmp_path: Path) -> None:  # pragma: no cover
    """Against the local PostgreSQL and RabbitMQ with the local file backend.

    Needs Vault (VAULT_ADDR/VAULT_TOKEN: every service stores its credentials there) and
    MongoDB (the second service uses it), e.g. from deploy/compose.yaml.
    """
    for variable in ("VAULT_ADDR", "MONGODB_URL"):
        if not os.environ.get(variable):
            pytest.skip(f"{variable} is not set: the end-to-end run needs that service")
    import uuid

    from tenant_infra import commands
    from tenant_infra.lifecycle import ServiceState

    root = Path(__file__).resolve().parent.parent
    tenant = f"e2e-{uuid.uuid4().hex[:8]}"
    os.environ.setdefault("PULUMI_CONFIG_PASSPHRASE", "e2e")
    os.environ.setdefault("TENANT_INFRA_RABBITMQ_PASSWORD", "guest")
    try:
        result = commands.onboard(tenant, ["tracer:DATABASE"], root=root)
        assert result.ok, result.to_json()
        result = commands.register(tenant, ["ledger:SCHEMA"], root=root)
        assert result.service("tracer").state is ServiceState.READY
        assert commands.status(tenant, root=root).ok
    finally:
        commands.offboard(tenant, purge=True, root=root)


RECORDING_CLI = r'''#!{python}
"""A stand-in for the pulumi CLI: logs its argv, answers what the Automation API asks."""
import json, os, sys
args = [a for a in sys.argv[1:] if a != "--non-interactive"]
with open(os.environ["FAKE_PULUMI_LOG"], "a") as log:
    log.write(json.dumps(args) + "\n")
if args[:1] == ["version"]:
    print("v3.272.0")
elif args[:2] == ["stack", "output"]:
    secret = "--show-secrets" in args
    print(json.dumps({{"services": {{"ledger": {{"isolation": "SCHEMA"}}}},
                      "credentials": "hunter2-decrypted" if secret else "[secret]"}}))
elif args[:3] == ["stack", "tag", "ls"]:
    print("{{}}")
elif args[:2] == ["stack", "history"]:
    print(json.dumps([{{"version": 1, "kind": "update", "startTime": "2026-12-02T00:00:00.000Z",
        "message": "", "environment": {{}}, "config": {{}}, "result": "succeeded",
        "endTime": "2026-12-02T00:00:01.000Z", "resourceChanges": {{}}}}]))
elif args[:2] == ["stack", "export"]:
    print(json.dumps({{"version": 3, "deployment": {{}}}}))
'''


def test_no_pulumi_command_decrypts_secrets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every command the lifecycle runs, through a recording `pulumi` on PATH: none
    carries --show-secrets, and a secret output never reaches the caller."""
    import sys

    from tenant_infra import lifecycle
    from tenant_infra.automation import PulumiBackend
    from tenant_infra.workspace import Workspace

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    cli = bin_dir / "pulumi"
    cli.write_text(RECORDING_CLI.format(python=sys.executable))
    cli.chmod(cli.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "argv.log"
    root = tmp_path / "project"
    shutil.copytree(Path(__file__).resolve().parent.parent / "stacks", root / "stacks")
    (root / "Pulumi.yaml").write_text("name: tenant-infra\nruntime: python\n")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_PULUMI_LOG", str(log))
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "test")

    backend = PulumiBackend(root)
    backend.ensure("globex")
    assert backend.up("globex", lambda _event: None) == {
        "services": {"ledger": {"isolation": "SCHEMA"}}
    }
    backend.set_tags("globex", {"tenant-infra:state:ledger": "ready"})
    assert "credentials" not in backend.outputs("globex")
    status = lifecycle.read_status(backend, Workspace(root), "globex")  # tags and outputs
    assert [s.product for s in status.services] == ["ledger", "tracer"]
    backend.destroy("globex", lambda _event: None)

    argvs = [line for line in log.read_text().splitlines()]
    assert any('"up"' in argv for argv in argvs) and any('"output"' in argv for argv in argvs)
    assert not [argv for argv in argvs if "--show-secrets" in argv]


def _diagnostic(kind: str, name: str, message: str, severity: str = "error") -> Any:
    """An engine event as the CLI's event log holds it (``EngineEvent.from_json``)."""
    from pulumi.automation.events import EngineEvent

    urn = f"urn:pulumi:acme::tenant-infra::tenant-infra:tenant:Tenant${kind}::{name}"
    return EngineEvent.from_json(
        {
            "sequence": 7,
            "timestamp": 0,
            "diagnosticEvent": {
                "urn": urn,
                "prefix": "error: ",
                "message": message,
                "color": "never",
                "severity": severity,
            },
        }
    )


PQ_CONFLICT = (
    "sdk-v2/provider2.go:572: sdk.helper_schema: could not execute revoke query: "
    "pq: tuple concurrently updated: provider=postgresql@3.16.0"
)


def test_a_postgresql_providers_conflict_makes_the_update_a_transient_conflict() -> None:
    from pulumi import automation as auto
    from pulumi.automation._cmd import CommandResult

    conflicts: set[str] = set()
    handler = _forward(lambda _e: None, conflicts)
    handler(_diagnostic("postgresql:index/grant:Grant", "acme-ledger-connect-a", PQ_CONFLICT))
    assert conflicts == {"acme-ledger-connect-a"}

    backend = object.__new__(PulumiBackend)  # no CLI needed to judge an error

    def failed() -> None:
        raise auto.CommandError(CommandResult("", "error: update failed", 255))

    with pytest.raises(TransientConflict, match="acme-ledger-connect-a"):
        backend._run(failed, conflicts)
    with pytest.raises(RuntimeError) as other:
        backend._run(failed, set())
    assert not isinstance(other.value, TransientConflict)


@pytest.mark.parametrize(
    ("kind", "message", "severity"),
    [
        # A migration's error can carry a tenant's values: never a reason to run again.
        (
            "pulumi-python:dynamic/tenant:ServiceMigration",
            'invalid input syntax for type integer: "tuple concurrently updated"',
            "error",
        ),
        ("postgresql:index/grant:Grant", "could not execute revoke query: pq: permission denied", "error"),
        ("postgresql:index/grant:Grant", PQ_CONFLICT, "warning"),
    ],
)
def test_other_failures_are_no_conflict(kind: str, message: str, severity: str) -> None:
    assert provider_conflict(_diagnostic(kind, "acme-ledger-x", message, severity)) is None
