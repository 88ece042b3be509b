"""Pulumi's own per-stack locks in a self-managed state backend, and which outlived
their process.

What the Pulumi CLI does (pulumi/pulumi ``pkg/backend/diy/lock.go``, ``store.go``,
``stack.go``; ``pkg/backend/diy/postgres/bucket.go``):

- Every update writes one lock, ``.pulumi/locks/<stack>/<lockID>.json``, where
  ``<stack>`` is the fully qualified name with ``/`` as a path separator:
  ``organization/<project>/<stack>`` with project-scoped stacks (the layout since
  ``.pulumi/meta.yaml`` version 1), the bare stack name in the older layout.
- Its content is ``json.Marshal(lockContent{Pid, Username, Hostname, Timestamp})``:
  ``{"pid":4242,"username":"ci","hostname":"runner-7","timestamp":"<RFC 3339, ns>"}``.
- Any other file in the stack's lock folder makes ``up`` fail ("the stack is currently
  locked by 1 lock(s) ... `pulumi cancel`"). Nothing expires: a killed update leaves
  its lock for good. Recent CLIs (``lock_process_unix.go``) delete a lock whose pid is
  gone *on the same host* themselves; a lock from another host (a pod that was
  evicted, an operator that restarted: pulumi-kubernetes-operator#1293) always counts
  as live, and needs ``pulumi cancel``.
- ``pulumi cancel`` (``CancelCurrentUpdate`` in ``backend.go``) deletes every file of the
  stack's lock folder, checking nothing.
- ``postgres://`` keeps the same keys as rows ``(key text, data bytea, updated_at)`` of
  the table ``pulumi_state`` (``?table=`` names another).

A lock file's content is written by whoever can write the backend: it is read with a
size limit, never through a symbolic link, and shown only escaped.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import socket
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from tenant_infra.errors import BackendUnavailable, OperationFailed, first_line, scrub

#: Where a self-managed backend keeps its locks (``workspace.BookkeepingDir``/``LockDir``).
LOCKS = (".pulumi", "locks")
#: The one organization name of self-managed backends (``store.go`` ParseReference).
ORGANIZATION = "organization"
#: A real lock is ~120 bytes: anything much larger is not one, and is not read.
MAX_LOCK_BYTES = 64 * 1024
#: Files looked at in one stack's lock folder: a folder stuffed with files is named, not read.
MAX_LOCKS_PER_STACK = 64
#: How old a lock from another host must be before it counts as stale.
DEFAULT_STALE_AFTER = timedelta(hours=1)
#: pid_max on Linux is at most 2**22.
_PID_MAX = 1 << 22

PulseCheck = Callable[[int], bool]


class LockInspectionUnavailable(BackendUnavailable):
    """The backend's locks cannot be read from here (an object store, Pulumi Cloud)."""


class LockChanged(OperationFailed):
    """The lock was rewritten or replaced after it was judged: it is left in place."""

    def __init__(self, lock: BackendLock) -> None:
        super().__init__(
            f"{lock.where} changed since it was read: not removed (an update may have "
            "taken it: look again with `tenantctl status`)"
        )


class Verdict(StrEnum):
    LIVE = "live"  # its process may still run: leave it
    STALE = "stale"  # it outlived its process
    UNREADABLE = "unreadable"  # not a lock the CLI could read either: someone must look


@dataclass(frozen=True)
class BackendLock:
    """One lock of a stack as found in the backend; text fields are already escaped."""

    stack: str
    #: Where it is, relative to the backend's root (``.pulumi/locks/...``), escaped.
    where: str
    pid: int | None = None
    username: str = ""
    hostname: str = ""
    written: datetime | None = None
    #: Why it is not a lock that can be judged (bad JSON, a symlink, too large).
    problem: str = ""
    #: The raw key or file name, for removing exactly this one (never shown).
    key: str = field(default="", repr=False)
    #: What identifies the very object read (inode, or the row's ``updated_at``).
    identity: Any = field(default=None, repr=False)


@dataclass(frozen=True)
class Finding:
    lock: BackendLock
    verdict: Verdict
    why: str
    age: timedelta | None
    #: Written by a process of this host, whose pid could be checked.
    same_host: bool

    def line(self, project: str) -> str:
        """One line for ``tenantctl status``: who, when, why, and how to clear it."""
        lock, stack = self.lock, self.lock.stack
        force = "" if self.same_host and self.verdict is Verdict.STALE else " --force"
        clear = (
            f"clear it with `tenantctl unlock {stack}{force}` (or `pulumi cancel --stack "
            f"{ORGANIZATION}/{project}/{stack}`)"
        )
        if self.verdict is Verdict.UNREADABLE:
            return f"unreadable backend lock: {stack}: {lock.where}: {self.why}; check it, {clear}"
        when = lock.written.strftime("%Y-%m-%dT%H:%M:%SZ") if lock.written else "?"
        return (
            f"stale backend lock: {stack}: pid {lock.pid} on host {lock.hostname} "
            f"(user {lock.username}) since {when}, {_age(self.age)} ago: {self.why}; {clear}"
        )


class LockStore(Protocol):
    """Where a backend keeps locks: read one stack's, remove one."""

    def locks(self, stack: str) -> list[BackendLock]: ...
    def remove(self, lock: BackendLock) -> None: ...
    def close(self) -> None: ...


# ------------------------------------------------------------------------ reading


def escape(text: str, limit: int = 80) -> str:
    """Tenant-influenced text made safe for a terminal: printable ASCII, the rest
    escaped, cut at ``limit``."""
    cut = text[:limit]
    shown = "".join(c if " " <= c <= "~" and c != "\\" else ascii(c)[1:-1] for c in cut)
    return shown + ("..." if len(text) > limit else "")


_GO_TIME = re.compile(
    r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})", re.ASCII
)


def parse_go_time(text: str) -> datetime | None:
    """Go's ``time.Time`` JSON (RFC 3339 with up to nanoseconds) as an aware datetime."""
    match = _GO_TIME.fullmatch(text)
    if match is None:
        return None
    base, fraction, zone = match.groups()
    micro = f".{(fraction or '0')[:6]:0<6}"
    try:
        return datetime.fromisoformat(base + micro + ("+00:00" if zone == "Z" else zone))
    except ValueError:
        return None


def parse_lock(stack: str, where: str, raw: bytes) -> BackendLock:
    """A lock file's bytes, as the CLI writes them, or a lock naming its problem."""
    shown = escape(where, 200)

    def bad(problem: str) -> BackendLock:
        return BackendLock(stack, shown, problem=problem)

    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return bad("not a JSON lock")
    if not isinstance(doc, dict):
        return bad("not a JSON object")
    pid, user, host, stamp = (doc.get(k) for k in ("pid", "username", "hostname", "timestamp"))
    if type(pid) is not int or not 0 < pid < _PID_MAX:
        return bad("no valid pid")
    if not isinstance(host, str) or not host or not isinstance(user, str):
        return bad("no hostname or username")
    written = parse_go_time(stamp) if isinstance(stamp, str) else None
    if written is None:
        return bad("no valid timestamp")
    return BackendLock(stack, shown, pid, escape(user, 64), escape(host, 64), written)


# ------------------------------------------------------------------------ judging


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs on this host; EPERM still proves it exists (as the CLI's
    ``processAlive`` says: a stolen live lock is far worse than a kept stale one)."""
    if pid <= 0:  # 0 and negatives address process groups, never one process
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True
    return True


def judge(
    lock: BackendLock,
    *,
    stale_after: timedelta = DEFAULT_STALE_AFTER,
    now: datetime | None = None,
    hostname: str | None = None,
    alive: PulseCheck | None = None,
) -> Finding:
    """Live, stale or unreadable: a process of this host is asked; another host's lock
    is stale only once older than ``stale_after`` (its process cannot be asked).

    "This host" is the same hostname, as the CLI itself judges (``lock_process_unix.go``):
    machines that share a backend must not share a hostname (a container left at
    ``localhost``), or a live update elsewhere looks like a gone process here."""
    now = now or datetime.now(UTC)
    here = escape(hostname if hostname is not None else socket.gethostname(), 64)
    age = now - lock.written if lock.written else None
    if lock.problem:
        return Finding(lock, Verdict.UNREADABLE, lock.problem, age, False)
    assert lock.pid is not None and age is not None
    if lock.hostname == here:
        if (alive or process_alive)(lock.pid):
            return Finding(lock, Verdict.LIVE, f"process {lock.pid} is running", age, True)
        return Finding(lock, Verdict.STALE, f"process {lock.pid} on this host is gone", age, True)
    if age > stale_after:
        why = f"older than {_age(stale_after)}, from another host (its process cannot be checked)"
        return Finding(lock, Verdict.STALE, why, age, False)
    return Finding(lock, Verdict.LIVE, f"younger than {_age(stale_after)}", age, False)


def inspect(
    store: LockStore,
    stacks: Sequence[str],
    **judging: Any,
) -> Iterator[Finding]:
    """Every lock of ``stacks`` with its verdict; a stack whose locks cannot be read
    yields one unreadable finding and the others go on."""
    for stack in stacks:
        try:
            locks = store.locks(stack)
        except (OSError, BackendUnavailable) as exc:
            reason = escape(first_line(exc), 200)
            locks = [BackendLock(stack, "(its lock folder)", problem=f"cannot be read: {reason}")]
        for lock in locks:
            yield judge(lock, **judging)


# ------------------------------------------------------------------------ stores


def backend_url(root: Path, environ: Mapping[str, str] = os.environ) -> str:
    """The state backend tenant stacks use (see :func:`tenant_infra.automation.backend_env`)."""
    from tenant_infra.automation import STATE_DIR

    return environ.get("PULUMI_BACKEND_URL") or (root / STATE_DIR).resolve().as_uri()


def open_store(url: str, project: str) -> LockStore:
    """The locks of the backend at ``url``; one clear line when they cannot be read here."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme == "file":
        return FileLocks(file_root(url), project)
    if scheme in ("postgres", "postgresql"):
        return PostgresLocks(url, project)
    shown = f"{scheme}://" if scheme else "this backend"
    if scheme in ("s3", "gs", "azblob"):
        raise LockInspectionUnavailable(
            f"lock inspection for {shown} backends needs the Pulumi CLI: "
            f"`pulumi cancel --stack {ORGANIZATION}/{project}/TENANT`"
        )
    raise LockInspectionUnavailable(
        f"{shown} keeps its own locks (Pulumi Cloud): `pulumi cancel --stack ORG/{project}/TENANT`"
    )


def file_root(url: str) -> Path:
    """The folder of a ``file://`` backend URL (``file://~/state`` as the CLI reads it)."""
    path = unquote(url[len("file://") :].split("?", 1)[0])
    return Path(path).expanduser()


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass
class FileLocks:
    """A ``file://`` backend: one folder listing per stack, nothing followed out of it.

    Each folder below the backend's root is opened relative to its parent without
    following links, so a symbolic link placed anywhere in ``.pulumi/locks/...`` leads
    nowhere outside the backend.
    """

    root: Path
    project: str

    def _folders(self, stack: str) -> list[tuple[str, ...]]:
        # Project-scoped layout first, then the older one (a stack named like the
        # organization only has folders there, which are never taken for locks).
        return [(*LOCKS, ORGANIZATION, self.project, stack), (*LOCKS, stack)]

    def locks(self, stack: str) -> list[BackendLock]:
        if stack in ("", ".", "..") or "/" in stack or "\0" in stack:
            raise OSError(f"{escape(stack)!r} is not a stack name")  # `..` would climb out
        found: list[BackendLock] = []
        for parts in self._folders(stack):
            fd = self._open_folder(parts)
            if fd is None:
                continue
            try:
                found += self._read_folder(stack, "/".join(parts), fd)
            finally:
                os.close(fd)
        return found

    def _open_folder(self, parts: tuple[str, ...]) -> int | None:
        """The folder's descriptor, or ``None`` when it does not exist."""
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        for depth, part in enumerate(parts):
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                os.close(fd)
                return None
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    where = "/".join(parts[: depth + 1])
                    raise OSError(f"{where} is a symbolic link or a file: not followed") from None
                raise
            os.close(fd)
            fd = child
        return fd

    def _read_folder(self, stack: str, folder: str, fd: int) -> list[BackendLock]:
        found: list[BackendLock] = []
        with os.scandir(fd) as entries:
            for count, entry in enumerate(entries):
                where = f"{folder}/{entry.name}"
                if count >= MAX_LOCKS_PER_STACK:
                    found.append(
                        BackendLock(stack, escape(folder, 200), problem="too many files to read")
                    )
                    break
                if entry.is_dir(follow_symlinks=False):
                    continue  # the CLI skips folders too (and the older layout's projects)
                found.append(self._read_one(stack, where, entry.name, fd))
        return found

    def _read_one(self, stack: str, where: str, name: str, folder: int) -> BackendLock:
        def bad(problem: str, identity: Any = None) -> BackendLock:
            return BackendLock(
                stack, escape(where, 200), problem=problem, key=name, identity=identity
            )

        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=folder)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                info = os.stat(name, dir_fd=folder, follow_symlinks=False)
                return bad("a symbolic link: not followed", _identity(info))
            return bad(f"cannot be opened: {exc.strerror}")
        try:
            info = os.fstat(fd)
            identity = _identity(info)
            if not stat.S_ISREG(info.st_mode):
                return bad("not a regular file", identity)
            if info.st_size > MAX_LOCK_BYTES:
                return bad(f"larger than {MAX_LOCK_BYTES // 1024} KiB: not read", identity)
            raw = os.read(fd, MAX_LOCK_BYTES + 1)
        finally:
            os.close(fd)
        lock = dataclasses.replace(parse_lock(stack, where, raw), key=name, identity=identity)
        if lock.problem:  # judged by the file's own age: the content says nothing
            return dataclasses.replace(lock, written=datetime.fromtimestamp(info.st_mtime, UTC))
        return lock

    def remove(self, lock: BackendLock) -> None:
        """Delete exactly the file read: not if it was replaced since, never a link's target."""
        folder = next(
            (p for p in self._folders(lock.stack) if lock.where.startswith("/".join(p) + "/")),
            None,
        )
        fd = self._open_folder(folder) if folder else None
        if fd is None:
            return
        try:
            info = os.stat(lock.key, dir_fd=fd, follow_symlinks=False)
            if _identity(info) != lock.identity:
                raise LockChanged(lock)
            os.unlink(lock.key, dir_fd=fd)
        except FileNotFoundError:
            pass  # gone already
        finally:
            os.close(fd)

    def close(self) -> None:
        return None


def _identity(info: os.stat_result) -> tuple[int, int, int]:
    return (info.st_dev, info.st_ino, info.st_mtime_ns)


class PostgresLocks:
    """A ``postgres://`` backend: the lock rows, read with one query for the fleet."""

    def __init__(self, url: str, project: str) -> None:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        self.table = next((v for k, v in query if k == "table"), "pulumi_state")
        rest = urlencode([(k, v) for k, v in query if k != "table"])
        self._conninfo = urlunsplit(("postgresql", parts.netloc, parts.path, rest, ""))
        self.project = project
        self._conn: Any = None
        self._rows: dict[str, list[BackendLock]] | None = None

    def _connect(self) -> Any:
        import psycopg

        if self._conn is None:
            try:
                self._conn = psycopg.connect(self._conninfo, connect_timeout=10, autocommit=True)
            except psycopg.Error as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreachable"
                raise BackendUnavailable(f"postgres:// state backend: {scrub(first)}") from None
        return self._conn

    def _table(self) -> Any:
        from psycopg import sql

        return sql.Identifier(*self.table.split("."))

    def _prefixes(self, stack: str) -> list[str]:
        base = "/".join(LOCKS)
        return [f"{base}/{ORGANIZATION}/{self.project}/{stack}/", f"{base}/{stack}/"]

    def _all(self) -> dict[str, list[BackendLock]]:
        """Every lock row, by key (locks are few: one per running or stale update)."""
        import psycopg
        from psycopg import sql

        if self._rows is not None:
            return self._rows
        query = sql.SQL(
            "SELECT key, updated_at, octet_length(data::text) AS size,"
            " CASE WHEN octet_length(data::text) <= %s THEN data::text END AS data"
            " FROM {} WHERE key LIKE %s ORDER BY key"
        ).format(self._table())
        try:
            rows = self._connect().execute(query, (2 * MAX_LOCK_BYTES + 2, "/".join(LOCKS) + "/%"))
        except psycopg.Error as exc:
            raise BackendUnavailable(f"postgres:// state backend: {first_line(exc)}") from None
        self._rows = {}
        for key, updated_at, _size, data in rows:
            self._rows.setdefault(str(key), []).append(self._lock(str(key), updated_at, data))
        return self._rows

    def _lock(self, key: str, updated_at: datetime, data: str | None) -> BackendLock:
        if data is None:
            return BackendLock(
                "",
                escape(key, 200),
                written=updated_at,
                problem=f"larger than {MAX_LOCK_BYTES // 1024} KiB: not read",
                key=key,
                identity=updated_at,
            )
        lock = dataclasses.replace(parse_lock("", key, _bytea(data)), key=key, identity=updated_at)
        if lock.problem:  # judged by the row's own age: the content says nothing
            return dataclasses.replace(lock, written=updated_at)
        return lock

    def locks(self, stack: str) -> list[BackendLock]:
        found = []
        for prefix in self._prefixes(stack):
            for key, locks in self._all().items():
                if key.startswith(prefix) and "/" not in key[len(prefix) :]:
                    found += [dataclasses.replace(lock, stack=stack) for lock in locks]
        return found

    def remove(self, lock: BackendLock) -> None:
        """Delete exactly the row read (same ``updated_at``); a row rewritten since is
        refused, as :meth:`FileLocks.remove` refuses a replaced file."""
        import psycopg
        from psycopg import sql

        self._rows = None
        table = self._table()
        try:
            conn = self._connect()
            deleted = conn.execute(
                sql.SQL("DELETE FROM {} WHERE key = %s AND updated_at = %s").format(table),
                (lock.key, lock.identity),
            ).rowcount
            if deleted == 1:
                return
            still = conn.execute(
                sql.SQL("SELECT 1 FROM {} WHERE key = %s").format(table), (lock.key,)
            ).fetchone()
        except psycopg.Error as exc:
            raise BackendUnavailable(f"postgres:// state backend: {first_line(exc)}") from None
        if still is not None:
            raise LockChanged(lock)
        # gone already

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _bytea(text: str) -> bytes:
    r"""``data::text``: ``\x`` hex for ``bytea`` (the current schema), the JSON itself
    for the older ``json`` column."""
    if text.startswith("\\x"):
        try:
            return bytes.fromhex(text[2:])
        except ValueError:
            return b""
    return text.encode("utf-8", "replace")


def _age(delta: timedelta | None) -> str:
    if delta is None:
        return "?"
    seconds = max(0, int(delta.total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m"
    return f"{seconds}s"


# ------------------------------------------------------------------------ clearing


def check_removable(finding: Finding, *, force: bool, stale_after: timedelta) -> None:
    """Raise, in one line, unless clearing this lock cannot break a running update:
    its process is gone (this host), or it is older than ``stale_after`` and ``force``
    says the operator made sure (another host, or a file that is not a lock)."""
    from tenant_infra.errors import InvalidInput, OperationFailed
    from tenant_infra.workspace import InProgress

    lock, stack = finding.lock, finding.lock.stack
    if finding.verdict is Verdict.LIVE:
        if finding.same_host:
            raise InProgress(
                f"tenant {stack!r}: process {lock.pid} on this host holds the stack's lock: "
                "an update is running"
            )
        raise InProgress(
            f"tenant {stack!r}: the lock from host {lock.hostname} is {_age(finding.age)} old, "
            f"younger than --stale-after {_age(stale_after)}: an update may still run there"
        )
    if finding.verdict is Verdict.STALE and finding.same_host:
        return
    if not lock.key or finding.age is None:
        raise OperationFailed(f"tenant {stack!r}: {lock.where}: {finding.why}")
    if finding.verdict is Verdict.UNREADABLE and finding.age <= stale_after:
        raise InProgress(
            f"tenant {stack!r}: {lock.where} ({finding.why}) was written {_age(finding.age)} "
            f"ago, within --stale-after {_age(stale_after)}: an update may be writing it"
        )
    if not force:
        what = (
            f"the lock from host {lock.hostname} ({_age(finding.age)} old) cannot be checked "
            "from here"
            if finding.verdict is Verdict.STALE
            else f"{lock.where} is {finding.why}"
        )
        raise InvalidInput(
            f"tenant {stack!r}: {what}: make sure no update of it runs, then pass --force"
        )


def describe(finding: Finding) -> str:
    """What a cleared lock was, for the registry's history (escaped, no content)."""
    lock = finding.lock
    if finding.verdict is Verdict.UNREADABLE:
        return f"backend lock {lock.where} cleared ({finding.why})"
    when = lock.written.strftime("%Y-%m-%dT%H:%M:%SZ") if lock.written else "?"
    return (
        f"backend lock of pid {lock.pid} on host {lock.hostname} (user {lock.username}) "
        f"since {when} cleared ({finding.why})"
    )
