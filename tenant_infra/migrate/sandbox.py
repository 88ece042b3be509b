"""Where revision code runs: in a confined process that never held a platform secret.

Revision code is product code (README "Security model"). It may do anything, as the
tenant's role, to that tenant's storage, during that tenant's migration; it must
never reach a platform secret (admin DSN, Vault token, provider credentials, the
Pulumi passphrase) nor another tenant's credentials. The operator's process holds
those, so revision code never runs there. Processes, like a zygote::

    operator (holds secrets; non-dumpable)
      └─ sandbox server: exec'd fresh, environment allow-listed, a session of its own,
         │ stdio on /dev/null; imports the libraries (never the product's revisions),
         │ then waits on a socket; reaps every orphan and kills it at the end
         └─ one child per tenant, forked on request: closes every inherited fd, opens
            PID and IPC namespaces (its worker is PID 1 there: whatever a revision
            starts dies with it), drops every capability; with its greeting, Landlock
            confines it for good (read-only files beneath the Python prefixes, the
            script directory and system paths; TCP only to the run's database ports;
            nothing outside the sandbox signalled, traced or read in /proc), and
            seccomp closes what Landlock leaves (keyring, Unix and UDP sockets, file
            metadata, io_uring); only then are the revisions imported, the tenant's
            parameters read, the migration run, the answer sent. Then it exits.

The server never reads a tenant's parameters and never runs product code: it receives
a socket over SCM_RIGHTS and forks. So no process can hold two tenants' parameters,
and nothing product code does in one child is inherited by the next. Messages are
length-prefixed JSON both ways, each reply echoing its request's id: the operator never
unpickles what product code could have written, and reads replies as untrusted data.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from tenant_infra.errors import BackendUnavailable, InvalidInput
from tenant_infra.migrate import confine
from tenant_infra.migrate.confine import make_undumpable

__all__ = ["Lane", "Sandbox", "make_undumpable", "sandbox_environ"]

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


class TimedOut(Exception):
    """No complete answer before the deadline."""


def _recv_exact(
    sock: socket.socket, size: int, watch: int | None = None, deadline: float | None = None
) -> bytes | None:
    """``size`` bytes, or ``None`` at end of stream, or once process ``watch`` (a
    pidfd) has exited with nothing more to read: a grandchild holding the socket open
    cannot keep the operator waiting. Past ``deadline`` (monotonic): :class:`TimedOut`."""
    chunks, got = [], 0
    while got < size:
        if watch is not None or deadline is not None:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            waited = [sock.fileno()] + ([watch] if watch is not None else [])
            ready, _, _ = select.select(waited, [], [], wait)
            if not ready:
                raise TimedOut
            if sock.fileno() not in ready:
                return None  # the child is gone and sent nothing more
        chunk = sock.recv(min(size - got, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def send_message(sock: socket.socket, message: Mapping[str, Any]) -> None:
    data = json.dumps(message, separators=(",", ":")).encode()
    sock.sendall(_LENGTH.pack(len(data)) + data)


def recv_message(
    sock: socket.socket, watch: int | None = None, deadline: float | None = None
) -> dict[str, Any] | None:
    """The next message, or ``None`` at end of stream or on anything malformed."""
    header = _recv_exact(sock, _LENGTH.size, watch, deadline)
    if header is None:
        return None
    (size,) = _LENGTH.unpack(header)
    if size > MAX_MESSAGE:
        return None
    body = _recv_exact(sock, size, watch, deadline)
    if body is None:
        return None
    try:
        value = json.loads(body)
    except Exception:  # not JSON, or nested deep enough to exhaust the parser
        return None
    return value if isinstance(value, dict) else None


# -- the operator's side ----------------------------------------------------------------


class Lane:
    """One sandbox child and the socket to it; closing the socket ends the child."""

    def __init__(self, sock: socket.socket, pid: int) -> None:
        self.sock, self.pid = sock, pid
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except (OSError, AttributeError):
            self._pidfd = None  # already gone, or no pidfd here: socket EOF only

    def send(self, message: Mapping[str, Any]) -> bool:
        try:
            send_message(self.sock, message)
        except OSError:
            return False
        return True

    def request(
        self, message: Mapping[str, Any], timeout: float | None = None
    ) -> dict[str, Any] | None:
        """Send one request; its reply, or ``None`` if the child ended without one or
        answered something else (a reply must echo the request's id). Past
        ``timeout`` seconds the child is killed (and with it, its PID namespace) and
        :class:`TimedOut` raised."""
        ident = uuid.uuid4().hex
        if not self.send({**message, "id": ident}):
            return None
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            reply = recv_message(self.sock, self._pidfd, deadline)
        except TimedOut:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)
            raise
        except OSError:
            return None
        if reply is None or reply.get("id") != ident:
            return None
        return reply

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        if self._pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self._pidfd)
            self._pidfd = None


_SERVER: Final = (
    "import sys; from tenant_infra.migrate.sandbox import serve; serve(int(sys.argv[1]))"
)
#: How long the server may take to start and load the libraries.
STARTUP_TIMEOUT: Final = 120.0


class Sandbox:
    """A sandbox server for one script directory: the operator's handle on it.

    ``with Sandbox(path) as box``: starts the server (``box.head``: the script
    directory's head, read statically); ``box.lane()`` forks a child, which
    ``lane.send(hello)`` then greets. Thread-safe: lanes may be opened from several
    threads.
    """

    def __init__(self, script_location: str | Path, *, mongo: bool = False) -> None:
        self.script_location = str(Path(script_location).resolve())
        self.mongo = mongo
        self.head: str | None = None
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
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd="/",
                close_fds=True,
                start_new_session=True,  # no controlling terminal: no TIOCSTI, no SIGINT
            )
        finally:
            theirs.close()
        self._control = ours
        ours.settimeout(STARTUP_TIMEOUT)
        try:
            send_message(ours, {"script_location": self.script_location, "mongo": self.mongo})
            reply = recv_message(ours)
        except OSError:
            reply = None
        ours.settimeout(None)
        if reply is None or "error" in reply:
            self.__exit__(None, None, None)
            detail = reply["error"] if reply else "the sandbox server did not start"
            raise InvalidInput(f"cannot load {self.script_location}: {clean_text(detail)}")
        head = reply.get("head")
        self.head = head if isinstance(head, str) else None
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
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def lane(self) -> Lane:
        """A fresh child, waiting for its greeting."""
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
        return Lane(ours, reply["pid"])


_CONTROL_CHARS: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_LINES: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean_text(value: object, limit: int = 500) -> str:
    """A child's text, made safe to print: one line, no control characters, bounded."""
    text = str(value).splitlines()[0] if str(value) else ""
    text = _CONTROL_CHARS.sub("?", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def clean_lines(value: str) -> str:
    """A child's multi-line text (rendered SQL): lines kept, no other control character."""
    return _CONTROL_BUT_LINES.sub("?", value)


# -- the sandbox's side -----------------------------------------------------------------


def _preload(mongo: bool) -> None:
    """Import what a migration uses, once, before any fork; never the product's code."""
    import alembic.ddl.postgresql
    import alembic.operations.toimpl
    import alembic.runtime.environment
    import alembic.runtime.migration  # noqa: F401
    import psycopg.pq  # noqa: F401
    import sqlalchemy.dialects.postgresql.psycopg  # noqa: F401
    from sqlalchemy import create_engine

    import tenant_infra.migrate.worker  # noqa: F401

    create_engine("postgresql+psycopg://").dialect  # noqa: B018
    confine._libseccomp()  # loaded before any child is confined
    confine.landlock_abi()
    if mongo:
        import pymongo  # noqa: F401


def serve(fd: int) -> None:
    """The sandbox server's loop, in a process started by :class:`Sandbox`."""
    confine.die_with_parent()
    confine.make_undumpable()
    confine.reap_orphans()
    control = socket.socket(fileno=fd)
    init = recv_message(control)
    if init is None:
        return
    location = str(init.get("script_location"))
    try:
        from tenant_infra.migrate.revisions import declared_head

        _preload(bool(init.get("mongo")))
        head = declared_head(location)  # read, not imported
    except Exception as exc:
        send_message(control, {"error": str(exc) or type(exc).__name__})
        return
    send_message(control, {"head": head})
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps finished children
    try:
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
                    code = _child(fds[0], location, bool(init.get("mongo")))
                finally:
                    os._exit(code)
            os.close(fds[0])
            send_message(control, {"pid": pid})
    finally:
        _kill_descendants()


def _kill_descendants() -> None:
    """Every process left under the server (a child, or an orphan a revision started
    and this subreaper inherited) is killed when the run ends."""
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == me:
            with contextlib.suppress(OSError):
                os.kill(int(entry.name), signal.SIGKILL)


def _child(fd: int, location: str, mongo: bool) -> int:  # pragma: no cover - in the child
    """Confine this process, then serve one lane's requests until its socket closes."""
    os.closerange(3, fd)
    os.closerange(fd + 1, 1 << 16)
    confine.die_with_parent()
    if confine.own_namespaces():
        pid = os.fork()  # PID 1 of the new namespaces does the work
        if pid != 0:
            os.close(fd)  # the lane is the namespace's alone
            _pid, status = os.waitpid(pid, 0)
            return os.waitstatus_to_exitcode(status) & 0xFF
        confine.die_with_parent()
    confine.drop_privileges()
    confine.make_undumpable()
    sock = socket.socket(fileno=fd)
    hello = recv_message(sock)
    if hello is None:
        return 1
    from tenant_infra.migrate.worker import Worker, confinement

    readable, ports = confinement(hello, location)
    confine.landlock(readable, ports)
    confine.seccomp(datagrams=mongo)  # MongoDB on Atlas resolves SRV records itself
    worker = Worker.load(location, hello, mongo)  # the product's code runs from here on
    try:
        while (request := recv_message(sock)) is not None:
            reply = worker.handle(request)
            send_message(sock, {**reply, "id": request.get("id")})
    finally:
        worker.close()
    return 0
