"""``tenantctl``: exit codes, one-line errors and nothing on stdout for invalid input."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tenant_infra.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def test_plan_json_is_one_document(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys,
        "plan",
        "acme",
        "--service",
        "ledger:DATABASE",
        "--service",
        "tracer:SCHEMA",
        "--format",
        "json",
    )
    assert code == 0, err
    document = json.loads(out)
    assert document["tenant"] == "acme"
    assert any(r["type"] == "postgresql:index/database:Database" for r in document["resources"])


def test_plan_table_groups_by_service(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "plan", "globex")
    assert code == 0
    assert "globex-ledger" in out and "globex-tracer" in out and "(tenant)" in out
    assert out.index("globex-ledger") < out.index("globex-tracer") < out.index("(tenant)")


@pytest.mark.parametrize(
    "argv",
    [
        ["plan", "acme;drop", "-s", "ledger:SCHEMA"],
        ["plan", "ACME", "-s", "ledger:SCHEMA"],
        ["plan", "admin", "-s", "ledger:SCHEMA"],
        ["plan", "ac\nme", "-s", "ledger:SCHEMA"],
        ["plan", "x" * 41, "-s", "ledger:SCHEMA"],
        ["plan", "acme", "-s", "ledger:SHARED"],
        ["plan", "acme", "-s", "wallet:SCHEMA"],
        ["plan", "acme", "-s", "ledger:SCHEMA", "-s", "ledger:DATABASE"],
        ["plan", "newco"],
        ["plan", "acme", "--stack-config", "/nonexistent/Pulumi.acme.yaml"],
        ["plan", "acme", "--format", "xml"],
        ["plan"],
        ["status", ""],
        ["onboard", "", "--service", "ledger:SCHEMA"],
        ["offboard", "Bad_Id", "--purge"],
        ["offboard", "acme", "--purge", "--retain-data"],
        ["suspend", "acme\x1b[31m"],
        ["up", "--all", "--concurrency", "1000"],
        ["preview", "--all", "--concurrency", "0"],
        ["migrate", "--product", "ledger", "--tenant", "acme\n\x1b[2J", "--dsn", "host=127.0.0.1"],
        ["migrate", "--product", "ledger", "--concurrency", "100000", "--dsn", "host=127.0.0.1"],
        ["promote", "Acme", "--service", "ledger"],
        ["promote", "acme", "--service", "Ledger;"],
        ["promote", "acme", "--service", "ledger", "--keep-source", "1h", "--drop-source"],
        ["promote", "acme", "--service", "ledger", "--abort", "--drop-source"],
        ["promote", "acme", "--service", "ledger", "--dry-run", "--resume"],
        ["promote", "acme", "--service", "ledger", "--keep-source", "soon"],
        ["promote", "nobody", "--service", "ledger"],
        ["plan", "newco", "-s", "ledger:SCHEMA", "--platform", "/nonexistent/Pulumi.prod.yaml"],
        ["offboard", "nobody", "--purge"],
        ["onboard", "acme", "--platform", "stacks/Pulumi.dev.yaml"],
        ["suspend", "acme", "--service", "wallet"],
        ["resume", "nobody"],
        ["deregister", "acme", "--service", "tracer", "--purge"],
        ["deregister", "acme", "--service", "ledger"],
        ["offboard", "acme"],
        ["backup"],
        ["backup", "Acme"],
        ["backup", "acme", "--concurrency", "0"],
        ["backup", "acme", "--service", "wallet"],
        ["backup", "acme", "--all"],
        ["restore", "acme", "--service", "ledger"],
        ["restore", "acme", "--service", "ledger", "--from", "x", "--swap", "--aside"],
        ["restore", "acme", "--service", "ledger", "--from", "x", "--point-in-time", "yesterday"],
        ["restore", "acme", "--service", "ledger", "--from", "/nonexistent/set", "--swap"],
        ["restore", "acme", "--service", "ledger", "--abort", "--from", "x"],
        ["restore", "acme", "--service", "ledger", "--resume", "--from", "x"],
        ["restore", "nobody", "--service", "ledger", "--from", "x"],
    ],
)
def test_invalid_input_exits_2_with_one_line_and_no_stdout(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert err.startswith("tenantctl: ") and err.count("\n") == 1


def test_a_new_tenant_is_planned_on_the_dev_platform(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "plan", "newco", "-s", "ledger:SCHEMA", "-f", "json")
    assert code == 0
    assert err.startswith("tenantctl: newco has no stack file: planned on ") and "Pulumi.dev.yaml" in err
    schema = next(
        r for r in json.loads(out)["resources"] if r["type"] == "postgresql:index/schema:Schema"
    )
    assert schema["inputs"]["name"] == "tenant_newco"


def test_a_platform_is_named_with_platform(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "plan", "newco", "-s", "ledger:SCHEMA", "--platform", "stacks/Pulumi.acme.yaml", "-f", "json"
    )
    assert code == 0
    endpoints = json.loads(out)["resources"]
    provider = next(r for r in endpoints if r["type"] == "pulumi:providers:postgresql")
    assert provider["inputs"]["host"] != "127.0.0.1"  # acme's platform, not the dev one


def test_plan_reads_at_80_columns(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A resource a line, its inputs indented below: nothing past 80 columns, no name
    broken, and a fraction of the table's length."""
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = run(capsys, "plan", "globex")
    assert code == 0
    lines = out.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80 and len(lines) < 100
    assert "  postgresql:Schema  globex-ledger-postgres-shared-schema" in lines
    assert any(line.strip().startswith("name=tenant_globex  database=ledger") for line in lines)


def test_version_and_a_bare_tenantctl(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    code, out, err = run(capsys, "--version")
    assert (code, out, err) == (0, f"tenantctl {version('tenant-infra')}\n", "")
    code, out, err = run(capsys)
    assert code == 2 and "Usage" in out and "plan" in out
    assert err == ""  # no empty "tenantctl: " line after the help


def test_a_reader_that_goes_away_is_not_an_error() -> None:
    """``tenantctl … | head``: a broken pipe ends the command quietly, exit 0."""
    import subprocess
    import sys
    from pathlib import Path

    script = (
        "import sys\n"
        "from tenant_infra import cli\n"
        "def flood(): print('x' * 10_000_000)\n"  # far past any pipe buffer
        "cli.app.command('flood')(flood)\n"
        "cli.main(['flood'])\n"
    )
    reader = subprocess.Popen(["head", "-c", "1"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    writer = subprocess.run(
        [sys.executable, "-c", script], stdout=reader.stdin, stderr=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[1], timeout=60, check=False,
    )
    assert reader.stdin is not None
    reader.stdin.close()
    reader.wait(10)
    assert (writer.returncode, writer.stderr) == (0, b"")


def test_init_scaffolds_a_project_the_tool_then_runs_in(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TENANT_INFRA_PROJECT", "")  # --project sets it: restored after
    project = tmp_path / "tenants"
    code, out, _ = run(capsys, "init", str(project))
    assert code == 0
    for name in ("Pulumi.yaml", "__main__.py", "platform/Pulumi.yaml", "platform/__main__.py", "tenant-infra.yaml", "stacks/README.md"):
        assert (project / name).is_file(), name
    assert "tenant_program()" in (project / "__main__.py").read_text()
    assert "platform_program()" in (project / "platform" / "__main__.py").read_text()
    code, _, err = run(capsys, "init", str(project))
    assert code == 2 and "is not empty" in err
    monkeypatch.chdir(tmp_path)
    dev = Path(__file__).resolve().parents[1] / "stacks" / "Pulumi.dev.yaml"
    code, out, err = run(capsys, "--project", str(project), "plan", "newco", "-s", "ledger:SCHEMA", "--platform", str(dev), "-f", "json")
    assert code == 0 and json.loads(out)["tenant"] == "newco", err
    code, _, err = run(capsys, "--project", str(tmp_path / "nowhere"), "plan", "newco")
    assert code == 2 and "no Pulumi.yaml there" in err
    monkeypatch.setenv("TENANT_INFRA_PROJECT", str(tmp_path / "nowhere"))
    code, _, err = run(capsys, "plan", "newco")
    assert code == 2 and err.startswith("tenantctl: TENANT_INFRA_PROJECT=") and "no Pulumi.yaml there" in err


# ----------------------------------------------------------- state backend locks


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project with three tenants in its registry and a file:// state backend."""
    import shutil

    from tenant_infra import commands
    from tests.support.registry import control_plane
    from tests.test_lifecycle import MemoryStacks

    root = Path(__file__).resolve().parents[1]
    shutil.copytree(root / "stacks", tmp_path / "stacks")
    (tmp_path / "Pulumi.yaml").write_text((root / "Pulumi.yaml").read_text())
    monkeypatch.setenv("TENANT_INFRA_PROJECT", str(tmp_path))
    monkeypatch.setenv("PULUMI_BACKEND_URL", (tmp_path / "state").as_uri())
    with control_plane(tmp_path) as plane:
        for key, value in plane.environ.items():
            monkeypatch.setenv(key, value)
        stacks = MemoryStacks()
        for tenant in ("acme", "dev", "globex"):
            commands.onboard(tenant, backend=stacks, root=tmp_path, verify=None)
        yield tmp_path


def _lock(fleet: Path, tenant: str, content: bytes) -> Path:
    from tests.test_backendlocks import write_lock

    return write_lock(fleet / "state", tenant, content)


def _dead_here(monkeypatch: pytest.MonkeyPatch, minutes: int = 30) -> bytes:
    import socket
    from datetime import UTC, datetime, timedelta

    from tenant_infra import backendlocks
    from tests.test_backendlocks import DEAD, lock_content

    monkeypatch.setattr(backendlocks, "process_alive", lambda pid: pid != DEAD)
    return lock_content(DEAD, socket.gethostname(), datetime.now(UTC) - timedelta(minutes=minutes))


def test_status_names_stale_and_unreadable_backend_locks(
    fleet: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from tenant_infra.cli import app

    _lock(fleet, "globex", _dead_here(monkeypatch))
    _lock(fleet, "acme", b"\x1b[2J{not json")
    result = CliRunner().invoke(app, ["status"])
    assert result.exit_code == 1, result.output
    assert "acme" in result.stdout and "globex" in result.stdout and "dev" in result.stdout
    globex, acme = sorted(result.stderr.splitlines())
    assert globex.startswith("stale backend lock: globex: pid 4000001 on host ")
    assert "on this host is gone; clear it with `tenantctl unlock globex`" in globex
    assert acme.startswith(
        "unreadable backend lock: acme: .pulumi/locks/organization/tenant-infra/acme/"
    )
    assert "\x1b" not in result.stderr
    one = CliRunner().invoke(app, ["status", "dev"])
    assert (one.exit_code, one.stderr) == (0, "")


def test_status_on_an_object_store_says_so_once(
    fleet: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from tenant_infra.cli import app

    monkeypatch.setenv("PULUMI_BACKEND_URL", "s3://bucket/state")
    result = CliRunner().invoke(app, ["status", "--format", "json"])
    assert result.exit_code == 0 and len(json.loads(result.stdout)["tenants"]) == 3
    assert (
        result.stderr.count("\n") == 1
        and "lock inspection for s3:// backends needs the Pulumi CLI" in result.stderr
    )


def test_unlock_asks_then_clears(fleet: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from tenant_infra.cli import app

    path = _lock(fleet, "globex", _dead_here(monkeypatch))
    other = _lock(fleet, "acme", _dead_here(monkeypatch))
    declined = CliRunner().invoke(app, ["unlock", "globex"], input="n\n")
    assert declined.exit_code == 1 and path.exists()
    result = CliRunner().invoke(app, ["unlock", "globex", "--yes"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "stack globex: 1 backend lock(s) removed\n"
    assert not path.exists() and other.exists()
    again = CliRunner().invoke(app, ["unlock", "globex", "--yes"])
    assert again.stdout == "stack globex: not locked\n"


def test_unlock_refuses_in_one_line(
    fleet: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import socket
    from datetime import UTC, datetime, timedelta

    from tests.test_backendlocks import lock_content

    now = datetime.now(UTC)
    running = _lock(fleet, "acme", lock_content(os.getpid(), socket.gethostname(), now))
    code, out, err = run(capsys, "unlock", "acme", "--yes", "--force")
    assert (code, out) == (1, "") and err.count("\n") == 1 and "an update is running" in err
    running.unlink()
    _lock(fleet, "acme", lock_content(7, "pod-7", now - timedelta(hours=3)))
    code, out, err = run(capsys, "unlock", "acme", "--yes")
    assert (code, out) == (2, "") and err.count("\n") == 1 and "then pass --force" in err
    code, out, err = run(capsys, "unlock", "acme", "--yes", "--stale-after", "soon")
    assert code == 2 and "duration" in err
    code, out, _ = run(capsys, "unlock", "acme", "--yes", "--force")
    assert (code, out) == (0, "stack acme: 1 backend lock(s) removed\n")


# ------------------------------------------------------------------ render kubernetes

RENDER = [
    "render",
    "kubernetes",
    "--image",
    "registry.example.com/tenant-infra:0.2.0",
    "--backend",
    "s3://tenant-state",
    "--secrets-provider",
    "awskms://alias/tenant-infra",
    "--namespace",
    "tenants",
]


@pytest.fixture
def fleet_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from tests.kubernetes.fleet import write_fleet

    write_fleet(tmp_path, 4)
    # --project sets the variable for the process: monkeypatch puts it back afterwards.
    monkeypatch.setenv("TENANT_INFRA_PROJECT", str(tmp_path))
    return tmp_path


def test_render_kubernetes_writes_a_file_per_tenant(
    capsys: pytest.CaptureFixture[str], fleet_project: Path
) -> None:
    out = fleet_project / "k8s"
    code, stdout, err = run(
        capsys, "--project", str(fleet_project), *RENDER, "--all", "--out", str(out)
    )
    assert code == 0, err
    assert stdout == f"wrote 4 tenants to {out} (waves 0..0)\n" and err == ""
    assert len(list(out.glob("tenant-*.yaml"))) == 4


def test_render_kubernetes_to_stdout(
    capsys: pytest.CaptureFixture[str], fleet_project: Path
) -> None:
    import yaml

    code, stdout, _ = run(capsys, "--project", str(fleet_project), *RENDER, "t0", "--out", "-")
    assert code == 0
    kinds = [d["kind"] for d in yaml.safe_load_all(stdout)]
    assert kinds == ["ConfigMap", "Stack"]


def test_render_kubernetes_one_bad_stack_file_exits_1_after_the_others(
    capsys: pytest.CaptureFixture[str], fleet_project: Path
) -> None:
    (fleet_project / "stacks" / "Pulumi.t0.yaml").write_text("config:\n  tenant-infra:tenant: t0\n")
    out = fleet_project / "k8s"
    code, stdout, err = run(
        capsys, "--project", str(fleet_project), *RENDER, "--all", "--out", str(out)
    )
    assert code == 1
    assert stdout.startswith("wrote 3 tenants")
    assert err.count("\n") == 1 and err.startswith("tenantctl: t0: config.platform: ")
    assert len(list(out.glob("*.yaml"))) == 3


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--image", "tenant-infra", "--all"], "--image"),
        (["--image", "tenant-infra:latest", "--all"], "latest"),
        (["--namespace", "Tenants_1", "--all"], "--namespace"),
        (["--namespace", "", "--all"], "--namespace is required"),
        (["nobody"], "unknown tenant 'nobody'"),
        (["Bad_Id"], "tenant id"),
        (["t0", "--all"], "not both"),
        (["--wave-size", "0", "--all"], "--wave-size"),
        (["--backend", "file:///var/state", "--all"], "--backend"),
    ],
)
def test_render_kubernetes_invalid_input_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], fleet_project: Path, argv: list[str], said: str
) -> None:
    out = fleet_project / "k8s"
    code, stdout, err = run(
        capsys, "--project", str(fleet_project), *RENDER, *argv, "--out", str(out)
    )
    assert code == 2
    assert stdout == ""
    assert err.startswith("tenantctl: ") and err.count("\n") == 1 and said in err
    assert not out.exists()
