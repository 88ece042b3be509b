"""Where revision code runs: in a process that never held a platform secret.

Revision code is product code (README "Security model"). It may do anything, as the
tenant's role, to that tenant's storage, during that tenant's migration; it must
never reach a platform secret (admin DSN, Vault token, provider credentials, the
Pulumi passphrase) nor another tenant's credentials. The operator's process holds
those, so revision code never runs there. Processes, like a zygote::

    operator (holds secrets; non-dumpable)
      └─ sandbox server: exec'd fresh, environment allow-listed, told nothing secret;
         │ imports Alembic, SQLAlchemy, psycopg and the script directory (the revision
         │ modules' top level runs here, holding nothing), then waits on a socket
         └─ one child per task: forked on request, stripped of capabilities and made
            non-dumpable BEFORE it reads its tenant's parameters; runs; answers; exits

The server never reads a tenant's parameters: it receives a socket over SCM_RIGHTS
and forks, and only the child reads from that socket. So no child's memory can hold
another tenant's password, and a revision cannot keep one tenant's parameters in
memory for the next tenant's run. Messages are length-prefixed JSON both ways: the
operator never unpickles what product code could have written.

``prctl(PR_SET_DUMPABLE, 0)`` (as ssh-agent and gpg-agent do) closes ``/proc/<pid>/
{environ,mem,fd}`` and ``ptrace`` of a process to others of the same user; a process
without ``CAP_SYS_PTRACE`` cannot override it. So children run without capabilities
even when the operator is root. Linux only; elsewhere these calls do nothing and the
README's residuals apply in full.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from tenant_infra.errors import BackendUnavailable, InvalidInput

# -- process hardening ------------------------------------------------------------------

_PR_SET_PDEATHSIG: Final = 1
_PR_SET_DUMPABLE: Final = 4
_PR_CAPBSET_DROP: Final = 24
_PR_SET_NO_NEW_PRIVS: Final = 38
_PR_CAP_AMBIENT: Final = 47
_PR_CAP_AMBIENT_CLEAR_ALL: Final = 4
_CAPABILITY_VERSION_3: Final = 0x20080522


@functools.cache
def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    return ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, arg: int, arg3: int = 0) -> int:
    libc = _libc()
    if libc is None:
        return 0
    return int(libc.prctl(option, arg, arg3, 0, 0))


def make_undumpable() -> None:
    """Close this process's memory, environment and fds to other same-user processes."""
    _prctl(_PR_SET_DUMPABLE, 0)


def die_with_parent() -> None:
    """SIGKILL when the parent goes: a killed run leaves no migration behind (its
    transaction rolls back on the server) and no server waiting for work."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def effective_capabilities() -> int:
    """This process's effective capability mask (0 off Linux)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def drop_privileges() -> None:
    """No capabilities now or after any exec, so a root operator's child is as weak as
    an ordinary user's: it cannot read a non-dumpable process. Raises if it failed."""
    libc = _libc()
    if libc is None:
        return
    if effective_capabilities():
        last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
        for cap in range(last + 1):
            _prctl(_PR_CAPBSET_DROP, cap)
        _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL)
        header = _CapHeader(_CAPABILITY_VERSION_3, 0)
        data = (_CapData * 2)()
        if libc.capset(ctypes.byref(header), data) != 0:
            raise OSError(ctypes.get_errno(), "capset failed")
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)
    if effective_capabilities():
        raise PermissionError("could not drop capabilities")


# -- the environment a sandbox starts with ----------------------------------------------

#: Variables a sandbox inherits: locale, time zone, where programs and home are.
SAFE_VARIABLES: Final = frozenset({"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "PGTZ"})
_CREDENTIAL_LIKE: Final = re.compile(
    r"PASS|TOKEN|SECRET|KEY|DSN|CRED|AUTH|COOKIE|SESSION|PRIVATE", re.IGNORECASE
)


def sandbox_environ(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The allow-listed environment: nothing named like a credential, ever.

    ``PYTHONPATH`` is this interpreter's own ``sys.path`` (so the server imports the
    same code), computed here, never inherited.
    """
    env = os.environ if environ is None else environ
    out = {
        name: value
        for name, value in env.items()
        if (name in SAFE_VARIABLES or name.startswith("LC_")) and not _CREDENTIAL_LIKE.search(name)
    }
    out["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    out["PYTHONDONTWRITEBYTECODE"] = "1"
    return out


# -- framing ----------------------------------------------------------------------------

_LENGTH: Final = struct.Struct("!I")
#: Largest message accepted from a sandbox (rendered SQL of a big upgrade fits).
MAX_MESSAGE: Final = 32 * 1024 * 1024


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    chunks, got = [], 0
    while got < size:
        chunk = sock.recv(min(size - got, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def send_message(sock: socket.socket, message: Mapping[str, Any]) -> None:
    data = json.dumps(message, separators=(",", ":")).encode()
    sock.sendall(_LENGTH.pack(len(data)) + data)


def recv_message(sock: socket.socket) -> dict[str, Any] | None:
    """The next message, or ``None`` at end of stream or on anything malformed."""
    header = _recv_exact(sock, _LENGTH.size)
    if header is None:
        return None
    (size,) = _LENGTH.unpack(header)
    if size > MAX_MESSAGE:
        return None
    body = _recv_exact(sock, size)
    if body is None:
        return None
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# -- the operator's side ----------------------------------------------------------------


class Lane:
    """One sandbox child and the socket to it; closing the socket ends the child."""

    def __init__(self, sock: socket.socket, pid: int) -> None:
        self.sock, self.pid = sock, pid

    def send(self, message: Mapping[str, Any]) -> bool:
        try:
            send_message(self.sock, message)
        except OSError:
            return False
        return True

    def receive(self) -> dict[str, Any] | None:
        """The reply, or ``None`` if the child ended without one."""
        try:
            return recv_message(self.sock)
        except OSError:
            return None

    def request(self, message: Mapping[str, Any]) -> dict[str, Any] | None:
        """Send one request; the reply, or ``None`` if the child ended without one."""
        return self.receive() if self.send(message) else None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


_SERVER: Final = (
    "import sys; from tenant_infra.migrate.sandbox import serve; serve(int(sys.argv[1]))"
)


class Sandbox:
    """A sandbox server for one script directory: the operator's handle on it.

    ``with Sandbox(path) as box``: starts the server and loads the script directory
    there (``box.head`` is its head); ``box.lane(hello)`` forks a child. Thread-safe:
    lanes may be opened from several threads.
    """

    def __init__(self, script_location: str | Path, *, mongo: bool = False) -> None:
        self.script_location = str(Path(script_location).resolve())
        self.mongo = mongo
        self.head: str | None = None
        self.mongo_head: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> Sandbox:
        make_undumpable()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-c", _SERVER, str(theirs.fileno())],
                env=sandbox_environ(),
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                cwd="/",
                close_fds=True,
            )
        finally:
            theirs.close()
        self._control = ours
        send_message(ours, {"script_location": self.script_location, "mongo": self.mongo})
        reply = recv_message(ours)
        if reply is None or "error" in reply:
            self.__exit__(None, None, None)
            detail = reply["error"] if reply else "the sandbox server exited"
            raise InvalidInput(f"cannot load {self.script_location}: {clean_text(detail)}")
        head = reply.get("head")
        self.head = head if isinstance(head, str) else None
        mongo_head = reply.get("mongo_head")
        self.mongo_head = mongo_head if isinstance(mongo_head, int) else None
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._process is not None:
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def lane(self, hello: Mapping[str, Any]) -> Lane:
        """A fresh child, greeted with ``hello`` (its connection defaults)."""
        if self._control is None:
            raise BackendUnavailable("the sandbox server is not running")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with self._lock:
                socket.send_fds(self._control, [b"f"], [theirs.fileno()])
                reply = recv_message(self._control)
        except OSError:
            reply = None
        finally:
            theirs.close()
        if reply is None or not isinstance(reply.get("pid"), int):
            ours.close()
            raise BackendUnavailable("the sandbox server exited")
        lane = Lane(ours, reply["pid"])
        try:
            send_message(ours, hello)
        except OSError:
            lane.close()
            raise BackendUnavailable("a sandbox child exited before its first request") from None
        return lane


_CONTROL_CHARS: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def clean_text(value: object, limit: int = 500) -> str:
    """A child's text, made safe to print: one line, no control characters, bounded."""
    text = str(value).splitlines()[0] if str(value) else ""
    text = _CONTROL_CHARS.sub("?", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- the sandbox's side -----------------------------------------------------------------


class _Loaded:
    """What the server loads once and every child inherits."""

    def __init__(self, script_location: str, mongo: bool) -> None:
        from tenant_infra.migrate.engine import head_of, load_script
        from tenant_infra.migrate.mongo import load_spec

        self.config, self.script = load_script(script_location)
        self.head = head_of(self.script)
        self.mongo_versions = load_spec(Path(script_location))
        if mongo:
            import pymongo  # noqa: F401 - imported once, before any fork

        # Imported lazily by SQLAlchemy and psycopg on first use: do it here, once.
        import psycopg.pq  # noqa: F401
        import sqlalchemy.dialects.postgresql.psycopg  # noqa: F401
        from sqlalchemy import create_engine

        create_engine("postgresql+psycopg://").dialect  # noqa: B018
        self._warm_up()

    def _warm_up(self) -> None:
        """Render every revision offline once, so that what Alembic and SQLAlchemy
        import and compile lazily is done here, not again in every child."""
        from tenant_infra.migrate.engine import render_sql
        from tenant_infra.migrate.targets import MigrationTarget

        with contextlib.suppress(Exception):
            render_sql(self.config, self.script, MigrationTarget("warm_up"), starting=None)


def serve(fd: int) -> None:
    """The sandbox server's loop, in a process started by :class:`Sandbox`."""
    make_undumpable()
    die_with_parent()
    os.dup2(2, 1)  # what revision code prints never mixes with the operator's stdout
    control = socket.socket(fileno=fd)
    init = recv_message(control)
    if init is None:
        return
    try:
        loaded = _Loaded(str(init["script_location"]), bool(init.get("mongo")))
    except Exception as exc:
        from tenant_infra.migrate.connection import first_line

        send_message(control, {"error": first_line(exc)})
        return
    versions = loaded.mongo_versions
    send_message(
        control,
        {"head": loaded.head, "mongo_head": versions[-1].version if versions else None},
    )
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps finished children
    gc.freeze()  # children share the loaded objects: no collector writes to their pages
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(control, 16, 1)
        except OSError:
            return
        if not data:
            return
        if len(fds) != 1:
            for extra in fds:
                os.close(extra)
            continue
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, which never returns
            code = 1
            try:
                control.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                code = _child(fds[0], loaded)
            finally:
                os._exit(code)
        os.close(fds[0])
        send_message(control, {"pid": pid})


def _child(fd: int, loaded: _Loaded) -> int:  # pragma: no cover - runs in the child
    """Harden, then serve requests on this task's socket until it closes."""
    drop_privileges()
    make_undumpable()
    die_with_parent()
    from tenant_infra.migrate.worker import Worker

    sock = socket.socket(fileno=fd)
    hello = recv_message(sock)
    if hello is None:
        return 1
    worker = Worker(loaded.config, loaded.script, loaded.mongo_versions, hello)
    try:
        while (request := recv_message(sock)) is not None:
            send_message(sock, worker.handle(request))
    finally:
        worker.close()
    return 0
