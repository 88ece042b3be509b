"""Plan sets: every tenant of a tree planned offline, one JSON document each, in a folder.

A **tree** is a project folder (``stacks/``, a project's ``catalog.toml`` and
``migrations/``) and the ``tenant_infra`` package whose program plans it: the folder's
own when it holds one (a checkout of tenant-infra), else the installed tool. A git
ref's tree is materialized with ``git archive`` into a temporary folder.

Planning runs in worker processes (:mod:`tenant_infra.planworker`), each started with
the tree's package first on ``PYTHONPATH`` and kept warm across many tenants, as many
at once as there are cores; every plan goes to disk as it is made, so this process
holds one line per tenant, never a plan. This module imports no Pulumi.

The folder holds ``manifest.json`` (the tree's label, its program's identity, the
salt of its secret digests, and per tenant its stack file's digest and any error)
and ``<tenant>.json`` per planned tenant.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import yaml

import tenant_infra
from tenant_infra import planworker
from tenant_infra.config import NAMESPACE
from tenant_infra.errors import InvalidInput, scrub
from tenant_infra.migrate.sandbox import sandbox_environ
from tenant_infra.workspace import Workspace, is_tenant_id

MANIFEST = "manifest.json"
#: The manifest's format (the per-tenant documents carry :data:`planworker.FORMAT`).
FORMAT = 1
#: A worker is replaced after this many tenants, so its memory stays bounded (a warm
#: worker measured flat at ~133 MB from its 50th tenant to its 400th).
TENANTS_PER_WORKER = 1000
#: A side with fewer tenants left than this gets no second worker (start-up ~1.5 s).
_MIN_SHARE = 24


@dataclass(frozen=True)
class Tree:
    """A project folder and the folder holding the ``tenant_infra`` that plans it."""

    project: Path
    code: Path
    label: str

    @classmethod
    def of(cls, project: Path, label: str) -> Tree:
        own = project / "tenant_infra" / "__init__.py"
        code = project if own.is_file() else Path(tenant_infra.__file__).resolve().parents[1]
        return cls(project.resolve(), code.resolve(), label)

    def stack_digests(self) -> dict[str, str]:
        """Every tenant with a stack file (:meth:`Workspace.tenants`' rule), and the
        SHA-256 of that file."""
        stacks = Workspace(self.project).stacks_dir
        found = {}
        for path in sorted(stacks.glob("Pulumi.*.yaml")) if stacks.is_dir() else []:
            text = path.read_bytes()
            tenant = _named_tenant(path.name, text)
            if tenant is not None and path.name == f"Pulumi.{tenant}.yaml":
                found[tenant] = hashlib.sha256(text).hexdigest()
                continue
            # A tenant's file that names nobody, or another tenant, is that tenant's
            # error (as ``plan TENANT`` says), never a tenant gone from the fleet.
            named = path.name.removeprefix("Pulumi.").removesuffix(".yaml")
            if is_tenant_id(named):
                found[named] = hashlib.sha256(text).hexdigest()
        return found

    def identity(self) -> str:
        """A digest of everything but the stack files that a plan depends on: the
        package's files, the project's own products, this interpreter and every
        installed distribution's version, and the worker. Two trees with the same
        identity plan the same stack file the same way."""
        digest = hashlib.sha256(f"{FORMAT}/{planworker.FORMAT}\n{sys.version}\n".encode())
        digest.update(Path(planworker.__file__).read_bytes())
        versions = sorted(f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions())
        digest.update("\n".join(versions).encode())
        roots = [(self.code / "tenant_infra", "pkg")]
        roots += [(self.project / "catalog.toml", "catalog"), (self.project / "migrations", "mig")]
        for root, tag in roots:
            files = [root] if root.is_file() else sorted(root.rglob("*")) if root.is_dir() else []
            for path in files:
                if path.is_file() and "__pycache__" not in path.parts:
                    rel = path.relative_to(root).as_posix() if path != root else ""
                    digest.update(f"\0{tag}/{rel}\0".encode())
                    digest.update(path.read_bytes())
        return digest.hexdigest()


def _named_tenant(name: str, text: bytes) -> str | None:
    """The tenant a stack file names, as :meth:`Workspace.tenants` reads it (a file that
    cannot be read names the tenant of its file name), with libyaml where there is one:
    a fleet has a thousand files. The workers read each file in full."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        document = yaml.load(text, Loader=loader)  # a safe loader, C or Python
        config = document.get("config") or {} if isinstance(document, dict) else None
        readable = isinstance(config, dict) and not any(
            isinstance(v, dict) and "secure" in v for v in config.values()
        )
    except (yaml.YAMLError, ValueError, RecursionError):
        config, readable = None, False
    if not readable or not isinstance(config, dict):
        named = name.removeprefix("Pulumi.").removesuffix(".yaml")
        return named if is_tenant_id(named) else None
    tenant = config.get(f"{NAMESPACE}:tenant")
    return tenant if isinstance(tenant, str) else None


@contextmanager
def git_tree(project: Path, ref: str) -> Iterator[Tree]:
    """The tree of ``ref`` in the project's git repository, in a temporary folder.

    Stack files git does not track (untracked or ignored) have no version at ``ref``:
    as ``git diff`` leaves them out, the tree gets them as they are in the checkout.
    """
    project = project.resolve()

    def git(*args: str, check: bool = True) -> str | None:
        done = subprocess.run(
            ["git", "-C", str(project), *args], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            if not check:
                return None
            raise InvalidInput(f"--diff {ref}: not a saved plan set, nor a git ref of {project}")
        return done.stdout.strip()

    if ref.startswith("-"):
        raise InvalidInput(f"--diff {ref}: not a saved plan set, nor a git ref")
    commit = str(git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"))
    top = Path(str(git("rev-parse", "--show-toplevel"))).resolve()
    rel = project.relative_to(top)
    with tempfile.TemporaryDirectory(prefix="tenant-infra-base-") as tmp:
        # A project folder that did not exist at the ref is an empty tree.
        if (
            rel == Path(".")
            or git("cat-file", "-e", f"{commit}:{rel.as_posix()}", check=False) is not None
        ):
            paths = [] if rel == Path(".") else ["--", rel.as_posix()]
            archive = subprocess.Popen(
                ["git", "-C", str(top), "archive", "--format=tar", commit, *paths],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            assert archive.stdout is not None
            with tarfile.open(fileobj=archive.stdout, mode="r|") as tar:
                tar.extractall(tmp, filter="data")
            if archive.wait() != 0:
                raise InvalidInput(f"--diff {ref}: git archive failed")
        folder = Path(tmp) / rel
        (folder / "stacks").mkdir(parents=True, exist_ok=True)
        for name in str(git("ls-files", "--others", "-z", "--", "stacks")).split("\0"):
            path = Path(name)
            untracked = path.parent == Path("stacks") and path.name.startswith("Pulumi.")
            if untracked and not (folder / path).exists() and (project / path).is_file():
                shutil.copyfile(project / path, folder / path)
        yield Tree.of(folder, f"{ref} ({commit[:12]})")


@dataclass
class Entry:
    """A tenant of a plan set: its stack file's digest, and why it has no plan."""

    stack: str
    error: str | None = None
    resources: int = 0
    #: Where the plan is when not in its set's folder (a cached plan).
    path: Path | None = field(default=None, compare=False)
    #: The planner failed, not the tenant: worth planning again next time.
    transient: bool = field(default=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {"stack": self.stack, "error": self.error, "resources": self.resources}


@dataclass
class PlanSet:
    """A folder of per-tenant plans (see the module's docstring)."""

    directory: Path
    label: str
    identity: str
    salt: str
    tenants: dict[str, Entry] = field(default_factory=dict)

    @classmethod
    def open(cls, directory: Path) -> PlanSet:
        path = directory / MANIFEST
        try:
            raw = json.loads(path.read_text())
            if raw.get("format") != FORMAT:
                raise InvalidInput(f"{directory}: a plan set of another format ({raw['format']})")
            tenants = {
                str(t): Entry(str(e["stack"]), e.get("error"), int(e.get("resources", 0)))
                for t, e in raw["tenants"].items()
            }
            return cls(
                directory, str(raw["label"]), str(raw["identity"]), str(raw["salt"]), tenants
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise InvalidInput(f"{directory}: not a plan set (no readable {MANIFEST})") from None

    def save(self) -> None:
        document = {
            "format": FORMAT,
            "label": self.label,
            "identity": self.identity,
            "salt": self.salt,
            "tenants": {t: e.to_json() for t, e in sorted(self.tenants.items())},
        }
        tmp = self.directory / f".{MANIFEST}.tmp"
        tmp.write_text(json.dumps(document, indent=1) + "\n")
        os.replace(tmp, self.directory / MANIFEST)

    def plan(self, tenant: str) -> dict[str, Any] | None:
        """The tenant's plan document, or ``None`` when it has none."""
        entry = self.tenants.get(tenant)
        if entry is None or entry.error is not None:
            return None
        path = entry.path or self.directory / f"{tenant}.json"
        document: dict[str, Any] = json.loads(path.read_text())
        if document.get("format") != planworker.FORMAT:
            raise InvalidInput(f"{self.directory}: {tenant}.json is of another format")
        return document


def is_plan_set(path: Path) -> bool:
    return (path / MANIFEST).is_file()


def new_salt() -> str:
    return secrets.token_hex(16)


@dataclass
class Job:
    """Tenants of one tree to plan into ``out`` (a new :class:`PlanSet`)."""

    tree: Tree
    out: PlanSet
    tenants: Sequence[str]
    digests: Mapping[str, str]


def plan_sets(jobs: Sequence[Job], workers: int | None = None) -> None:
    """Plan every job's tenants with at most ``workers`` processes (default: the cores),
    filling each job's plan set and saving its manifest. A tenant that cannot be planned
    (an invalid stack file, a program that refuses it) is an error of its own."""
    workers = max(1, workers or _cores())
    sides = [_Side(job) for job in jobs]
    for side in sides:
        side.job.out.directory.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()

    def pick() -> _Side | None:
        with lock:
            open_sides = [
                s for s in sides if s.queue and (s.active == 0 or len(s.queue) >= _MIN_SHARE)
            ]
            if not open_sides:
                return None
            side = max(open_sides, key=lambda s: len(s.queue) / (s.active + 1))
            side.active += 1
            return side

    def drive() -> None:
        while (side := pick()) is not None:
            try:
                side.run(lock)
            except Exception as exc:  # a worker that could not even be started
                with lock:
                    side.broken = f"the planner could not run: {scrub(str(exc))[:200]}"
            finally:
                with lock:
                    side.active -= 1

    threads = [threading.Thread(target=drive, daemon=True) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for side in sides:
        # Every tenant asked for has an entry: none goes missing (and so "gone").
        for tenant in side.job.tenants:
            if tenant not in side.job.out.tenants:
                why = side.broken or "not planned: its planner stopped"
                side.job.out.tenants[tenant] = Entry(
                    side.job.digests[tenant], why, 0, transient=True
                )
        side.job.out.save()


def _cores() -> int:
    """The cores this process may use (a container's CPU set, not the host's)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class _Side:
    """One job's queue of tenants and the worker processes that drain it."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.queue: deque[str] = deque(job.tenants)
        self.active = 0
        self.broken: str | None = None  # the tree's program cannot even be imported

    def _record(
        self,
        lock: threading.Lock,
        tenant: str,
        error: str | None,
        count: int,
        transient: bool = False,
    ) -> None:
        with lock:
            entry = Entry(self.job.digests[tenant], error, count, transient=transient)
            self.job.out.tenants[tenant] = entry

    def _next(self, lock: threading.Lock) -> str | None:
        with lock:
            return self.queue.popleft() if self.queue else None

    def run(self, lock: threading.Lock) -> None:
        """Start one worker and feed it tenants until the queue is empty (or it has had
        its share); a tenant in hand when the worker dies fails alone."""
        if self.broken is not None:
            while (tenant := self._next(lock)) is not None:
                self._record(lock, tenant, self.broken, 0, transient=True)
            return
        tree, out = self.job.tree, self.job.out
        # The tree's code runs with no credential of this process's (as a sandbox's
        # does), its package first on the path.
        env = sandbox_environ()
        env["PYTHONPATH"] = os.pathsep.join([str(tree.code), *filter(None, sys.path)])
        env["TENANT_INFRA_PROJECT"] = str(tree.project)
        job = {"project": str(tree.project), "out": str(out.directory), "salt": out.salt}
        with tempfile.TemporaryFile() as log:
            worker = subprocess.Popen(
                [sys.executable, "-P", str(Path(planworker.__file__).resolve())],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                cwd=tree.project,
                text=True,
            )
            assert worker.stdin is not None and worker.stdout is not None
            try:
                self._feed(worker.stdin, worker.stdout, job, lock, log)
            finally:
                worker.stdin.close()
                try:
                    worker.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()
                worker.stdout.close()

    def _feed(
        self,
        requests: IO[str],
        replies: IO[str],
        job: dict[str, str],
        lock: threading.Lock,
        log: IO[bytes],
    ) -> None:
        try:
            requests.write(json.dumps(job) + "\n")
            requests.flush()
            ready = json.loads(replies.readline() or "{}")
        except (OSError, ValueError):
            ready = {}
        if not ready.get("ready"):
            with lock:
                self.broken = f"the planner did not start: {_last_line(log)}"
            return
        package = Path(str(ready.get("package"))).resolve()
        if not package.is_relative_to(self.job.tree.code):
            with lock:
                self.broken = f"the planner imported {package}, not {self.job.tree.code}'s"
            return
        for _ in range(TENANTS_PER_WORKER):
            tenant = self._next(lock)
            if tenant is None:
                return
            try:
                requests.write(tenant + "\n")
                requests.flush()
                reply = json.loads(replies.readline() or "{}")
            except (OSError, ValueError):
                reply = {}
            if reply.get("tenant") != tenant:
                why = f"the planner stopped: {_last_line(log)}"
                self._record(lock, tenant, why, 0, transient=True)
                return  # a new worker takes the rest
            self._record(lock, tenant, reply.get("error"), int(reply.get("resources") or 0))


def _last_line(log: IO[bytes]) -> str:
    log.seek(0)
    lines = [line for line in log.read().decode(errors="replace").splitlines() if line.strip()]
    return scrub(lines[-1].strip()[:300]) if lines else "no message"


def copy_plans(source: PlanSet, target: PlanSet, tenants: Sequence[str]) -> None:
    """Put ``source``'s plans of ``tenants`` in ``target`` (same salt: same digests)."""
    target.directory.mkdir(parents=True, exist_ok=True)
    for tenant in tenants:
        entry = source.tenants[tenant]
        if entry.error is None:
            shutil.copyfile(
                entry.path or source.directory / f"{tenant}.json",
                target.directory / f"{tenant}.json",
            )
        target.tenants[tenant] = Entry(entry.stack, entry.error, entry.resources)


class PlanCache:
    """Plans kept between runs, by the program's identity and the stack file's digest
    (``<project>/.pulumi-work/plan_cache``): what was planned once under a program is
    not planned again, whichever run or side asks. One salt for all of them, so any
    two are comparable; a run that finds the cache busy plans without it."""

    #: Programs (identities) kept, the most recently used.
    KEEP = 4

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @contextmanager
    def locked(self) -> Iterator[PlanCache | None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / "lock", "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield None
                return
            try:
                yield self
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @property
    def salt(self) -> str:
        path = self.folder / "salt"
        if not path.is_file():
            path.write_text(new_salt())
        return path.read_text().strip()

    def _index(self, identity: str) -> tuple[Path, dict[str, Any]]:
        folder = self.folder / identity[:40]
        try:
            index: dict[str, Any] = json.loads((folder / "index.json").read_text())
        except (OSError, ValueError):
            index = {}
        return folder, index

    def lookup(self, label: str, identity: str, digests: Mapping[str, str]) -> PlanSet:
        """The cached plans of this program for these stack files (entries pointing at
        the cache's files); the tenants missing are the ones to plan."""
        folder, index = self._index(identity)
        found = PlanSet(folder, label, identity, self.salt)
        for tenant, digest in digests.items():
            key = f"{tenant}.{digest[:24]}"
            known = index.get(key)
            if not isinstance(known, dict):
                continue
            path = folder / f"{key}.json"
            if known.get("error") or path.is_file():
                found.tenants[tenant] = Entry(
                    digest, known.get("error"), int(known.get("resources") or 0), path
                )
        if folder.is_dir():
            os.utime(folder)  # recently used: kept by prune()
        return found

    def store(self, planned: PlanSet) -> None:
        """Move a freshly planned set's plans into the cache (same salt)."""
        folder, index = self._index(planned.identity)
        folder.mkdir(parents=True, exist_ok=True)
        for tenant, entry in planned.tenants.items():
            key = f"{tenant}.{entry.stack[:24]}"
            # Only plans are kept: an error may be the machine's (a full disk, memory),
            # so the tenant is planned again next time rather than failed for good.
            if entry.transient or entry.error is not None:
                continue
            if entry.error is None:
                os.replace(planned.directory / f"{tenant}.json", folder / f"{key}.json")
                entry.path = folder / f"{key}.json"
            index[key] = {"error": entry.error, "resources": entry.resources}
        tmp = folder / "index.json.tmp"
        tmp.write_text(json.dumps(index))
        os.replace(tmp, folder / "index.json")

    def prune(self) -> None:
        """Keep the plans of the :attr:`KEEP` programs used last (and no staging left
        behind by a run that was killed: the lock is held)."""
        for staging in self.folder.glob(".staging-*"):
            shutil.rmtree(staging, ignore_errors=True)
        programs = sorted(
            (p for p in self.folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        for stale in programs[self.KEEP :]:
            shutil.rmtree(stale, ignore_errors=True)

    def staging(self) -> Path:
        """A folder on the cache's file system for plans being made (moved, not copied)."""
        return Path(tempfile.mkdtemp(prefix=".staging-", dir=self.folder))
