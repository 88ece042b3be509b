"""Verbs at the fleet's scale: the registry and stack files are the index (never the
state backend), and ``unlock`` clears a stale backend lock only when nothing runs."""

from __future__ import annotations

import ast
import itertools
import shutil
import socket
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tenant_infra import commands, retry
from tenant_infra.backendlocks import LockInspectionUnavailable, Verdict
from tenant_infra.errors import InvalidInput, OperationFailed
from tenant_infra.workspace import InProgress, Workspace
from tests.support.registry import ControlPlane, control_plane
from tests.test_backendlocks import DEAD, lock_content, write_lock
from tests.test_lifecycle import MemoryStacks

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "tenant_infra"
GONE = {"alive": lambda pid: False}


@pytest.fixture
def plane(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ControlPlane]:
    """A project copy with the example stacks, a registry, and a file:// state backend."""
    shutil.copytree(ROOT / "stacks", tmp_path / "stacks")
    (tmp_path / "Pulumi.yaml").write_text((ROOT / "Pulumi.yaml").read_text())
    (tmp_path / "tenant-infra.yaml").write_text("platform: stacks/Pulumi.dev.yaml\n")
    monkeypatch.setattr(retry, "RETRY_BASE_DELAY", 0.0)
    monkeypatch.setenv("PULUMI_BACKEND_URL", (tmp_path / "state").as_uri())
    with control_plane(tmp_path) as plane:
        for key, value in plane.environ.items():
            monkeypatch.setenv(key, value)
        yield plane


class NoListing(MemoryStacks):
    """A backend that fails the test if anything lists its stacks."""

    def list_stacks(self) -> Any:
        raise AssertionError("a fleet path listed stacks through the state backend")

    stacks_list = list_all = list_stacks


def test_fleet_paths_never_list_stacks_through_the_backend(
    plane: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pulumi import automation as auto

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("`pulumi stack ls` downloads every stack's state")

    monkeypatch.setattr(auto.LocalWorkspace, "list_stacks", refuse)
    root, stacks = plane.root, NoListing()
    assert {
        r.tenant for r in commands.up(all_tenants=True, backend=stacks, root=root, verify=None)
    } == {"acme", "dev", "globex"}
    assert {r.tenant for r in commands.preview(all_tenants=True, backend=stacks, root=root)} == {
        "acme",
        "dev",
        "globex",
    }
    assert {s.tenant for s in commands.list_tenants(backend=stacks, root=root)} == {
        "acme",
        "dev",
        "globex",
    }
    assert commands.status("acme", backend=stacks, root=root).tenant == "acme"
    assert commands.backend_locks(["acme", "dev", "globex"], root=root) == []


def _calls_in(path: Path) -> Iterator[str]:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("list_stacks", "ListStacks"):
            yield f"{path.name}:{node.lineno}: .{node.attr}"
        if isinstance(node, ast.List | ast.Tuple):
            words = [e.value for e in node.elts if isinstance(e, ast.Constant)]
            if any(a == "stack" and b in ("ls", "list") for a, b in itertools.pairwise(words)):
                yield f"{path.name}:{node.lineno}: pulumi stack ls"


def test_no_module_lists_stacks_through_pulumi() -> None:
    """Every fleet path (``--all`` of up, preview, plan, rotate, backup; list; status;
    migrate) reads the registry or the stack files: nothing in the package may call
    ``list_stacks`` or run ``pulumi stack ls``, which downloads every stack's state."""
    found = [hit for path in sorted(PACKAGE.rglob("*.py")) for hit in _calls_in(path)]
    assert found == []


def test_the_listing_check_finds_a_listing(tmp_path: Path) -> None:
    planted = tmp_path / "fleet.py"
    planted.write_text(
        "def tenants(ws):\n    return [s.name for s in ws.list_stacks()]\n"
        "def raw(run):\n    return run(['pulumi', 'stack', 'ls', '--json'])\n"
    )
    assert sorted(_calls_in(planted)) == ["fleet.py:2: .list_stacks", "fleet.py:4: pulumi stack ls"]


# ------------------------------------------------------------------------ unlock


def state(plane: ControlPlane) -> Path:
    return plane.root / "state"


def test_unlock_clears_only_that_stacks_stale_lock_and_records_it(plane: ControlPlane) -> None:
    root, stacks = plane.root, MemoryStacks()
    commands.onboard("globex", backend=stacks, root=root, verify=None)
    here = socket.gethostname()
    mine = write_lock(state(plane), "globex", lock_content(DEAD, here, _now()))
    other = write_lock(state(plane), "acme", lock_content(DEAD, here, _now()))
    (stale,) = [
        f for f in commands.backend_locks(["acme", "globex"], root=root) if f.lock.stack == "globex"
    ]
    seen: list[Any] = []
    removed = commands.unlock(
        "globex", root=root, judging=GONE, confirm=lambda f: seen.append(f) or True
    )
    assert [f.verdict for f in removed] == [Verdict.STALE] and seen == [removed]
    assert not mine.exists() and other.exists()
    assert stale.lock.pid == DEAD
    (entry,) = [h for h in commands.history("globex", root=root) if h["operation"] == "unlock"]
    assert (
        f"backend lock of pid {DEAD} on host" in entry["reason"]
        and entry["old_state"] == entry["new_state"]
    )
    assert commands.unlock("globex", root=root) == []  # nothing left: nothing to do


def test_unlock_records_what_it_removed_when_a_later_lock_fails(plane: ControlPlane) -> None:
    root, stacks = plane.root, MemoryStacks()
    commands.onboard("globex", backend=stacks, root=root, verify=None)
    here = socket.gethostname()
    paths = [write_lock(state(plane), "globex", lock_content(DEAD, here, _now())) for _ in "ab"]

    def rewrite_the_second(findings: Any) -> bool:
        (second,) = [p for p in paths if p.name == findings[1].lock.key]
        second.unlink()  # a new file under the same name: not the one that was judged
        second.write_bytes(lock_content(DEAD, here, _now()))
        return True

    with pytest.raises(OperationFailed, match=r"changed since it was read: not removed.*; 1 other"):
        commands.unlock("globex", root=root, judging=GONE, confirm=rewrite_the_second)
    assert sum(p.exists() for p in paths) == 1
    (entry,) = [h for h in commands.history("globex", root=root) if h["operation"] == "unlock"]
    assert entry["reason"].count(f"backend lock of pid {DEAD}") == 1


def test_unlock_refuses_while_the_tenants_own_lock_is_held(plane: ControlPlane) -> None:
    path = write_lock(state(plane), "acme", lock_content(DEAD, socket.gethostname(), _now()))
    with Workspace(plane.root).lock("acme"), pytest.raises(InProgress, match="already in progress"):
        commands.unlock("acme", root=plane.root, judging=GONE)
    assert path.exists()


def test_unlock_refuses_while_the_process_runs(plane: ControlPlane) -> None:
    import os

    path = write_lock(state(plane), "acme", lock_content(os.getpid(), socket.gethostname(), _now()))
    with pytest.raises(
        InProgress, match=f"process {os.getpid()} on this host holds the stack's lock"
    ):
        commands.unlock("acme", root=plane.root, force=True)
    assert path.exists()


def test_another_hosts_lock_needs_age_and_force(plane: ControlPlane) -> None:
    fresh = write_lock(
        state(plane), "acme", lock_content(DEAD, "pod-7", _now() - timedelta(minutes=5))
    )
    with pytest.raises(InProgress, match="may still run there"):
        commands.unlock("acme", root=plane.root, force=True)
    fresh.unlink()
    old = write_lock(state(plane), "acme", lock_content(DEAD, "pod-7", _now() - timedelta(hours=3)))
    with pytest.raises(InvalidInput, match="then pass --force"):
        commands.unlock("acme", root=plane.root)
    assert old.exists()
    assert not commands.unlock("acme", root=plane.root, force=True, confirm=lambda f: False)
    assert old.exists()  # not confirmed: nothing removed
    (removed,) = commands.unlock(
        "acme", root=plane.root, force=True, stale_after=timedelta(hours=2)
    )
    assert removed.lock.hostname == "pod-7" and not old.exists()


def test_unlock_input_and_backends(plane: ControlPlane, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidInput, match="unknown tenant 'ghost'"):
        commands.unlock("ghost", root=plane.root)
    with pytest.raises(InvalidInput):
        commands.unlock("Bad\x1b", root=plane.root)
    monkeypatch.setenv("PULUMI_BACKEND_URL", "s3://bucket/state")
    with pytest.raises(LockInspectionUnavailable, match="pulumi cancel"):
        commands.unlock("acme", root=plane.root)
    with pytest.raises(LockInspectionUnavailable):
        commands.backend_locks(["acme"], root=plane.root)


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)
