"""A hostile revision: what product code could find or do while it migrates one tenant.

``hostile_script_dir`` copies a product's script directory and adds a head revision
``9999`` that looks for secrets everywhere a revision can reach, tries every channel to
another tenant's run, and stores what it found in its own tenant's schema (table
``probe``), the one place it may write:

- its environment and ``/proc/self/environ``; its ancestors' ``environ`` and
  ``cmdline`` and the files named there; files it is told about (a connections file);
- memory: ``/proc/<pid>/mem`` of itself, its parent and grandparent, and every string
  its own interpreter holds (the positive control: its own password is there);
- channels: writing a file, TCP to Redis, System V shared memory (what an earlier
  tenant's run left there), signalling its parent, the terminal.

Secrets are "needles", each stored as two halves so that the whole never exists in
memory unless it leaked there.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

_REVISION = '''
"""Hostile: records every secret it can find (a test's probe, not a migration)."""
import ctypes
import gc
import json
import os
import socket

from alembic import op

revision = "9999"
down_revision = {down!r}
branch_labels = None
depends_on = None

NEEDLES = {needles!r}
FILES = {files!r}
SHM_KEY = 0x7E57
IPC_CREAT = 0o1000


def _hits(blob):
    found = set()
    for name, (a, b) in NEEDLES.items():
        start = blob.find(a)
        while start != -1:
            if blob[start + len(a): start + len(a) + len(b)] == b:
                found.add(name)
                break
            start = blob.find(a, start + 1)
    return found


def _read(path, limit=1 << 20):
    try:
        with open(path, "rb") as handle:
            return handle.read(limit)
    except OSError:
        return None


def _ppid(pid):
    stat = _read(f"/proc/{{pid}}/stat") or b""
    try:
        return int(stat.rsplit(b")", 1)[1].split()[1])
    except (IndexError, ValueError):
        return 0


def _memory(pid):
    maps = _read(f"/proc/{{pid}}/maps", 1 << 24)
    if maps is None:
        return None
    found = set()
    try:
        mem = open(f"/proc/{{pid}}/mem", "rb")
    except OSError:
        return None
    with mem:
        for line in maps.decode().splitlines():
            fields = line.split()
            if len(fields) < 2 or not fields[1].startswith("r"):
                continue
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            try:
                mem.seek(lo)
                found |= _hits(mem.read(hi - lo))
            except (OSError, OverflowError, ValueError):
                continue
    return found


def _interpreter_strings():
    """Every str and bytes reachable from the collector's objects (untracked dicts of
    plain strings included, through their referrers' referents)."""
    found, seen = set(), set()
    stack = list(gc.get_objects())
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, str):
            found |= _hits(obj.encode(errors="ignore"))
        elif isinstance(obj, (bytes, bytearray)):
            found |= _hits(bytes(obj))
        else:
            stack.extend(gc.get_referents(obj))
    return found


def _shared_memory(me):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmat.restype = ctypes.c_void_p
    shmid = libc.shmget(SHM_KEY, 4096, IPC_CREAT | 0o666)
    if shmid < 0:
        return "refused"
    address = libc.shmat(shmid, None, 0)
    if address in (None, ctypes.c_void_p(-1).value):
        return "refused"
    before = ctypes.string_at(address, 64).split(b"\\0", 1)[0].decode(errors="replace")
    ctypes.memmove(address, me.encode() + b"\\0", len(me) + 1)
    return before


def upgrade() -> None:
    me = os.getpid()
    report = {{"found": {{}}, "readable": [], "ancestors": [], "channels": {{}}}}

    def note(where, hits):
        if hits:
            report["found"][where] = sorted(set(report["found"].get(where, [])) | set(hits))

    note("environ", _hits("\\n".join(f"{{k}}={{v}}" for k, v in os.environ.items()).encode()))
    note("/proc/self/environ", _hits(_read("/proc/self/environ") or b""))
    pid = os.getppid()
    while pid > 1:
        cmdline = _read(f"/proc/{{pid}}/cmdline") or b""
        report["ancestors"].append(cmdline.replace(b"\\0", b" ").decode(errors="replace"))
        note("ancestor environ", _hits(_read(f"/proc/{{pid}}/environ") or b""))
        note("ancestor cmdline", _hits(cmdline))
        for arg in cmdline.split(b"\\0"):
            if arg.startswith(b"/") and os.path.isfile(arg):
                note("files named by an ancestor", _hits(_read(arg) or b""))
        pid = _ppid(pid)
    for path in FILES:
        note("files", _hits(_read(path) or b""))
    report["channels"]["shadow"] = _read("/etc/shadow") is not None
    parent = os.getppid()
    for who, pid in (("self", me), ("parent", parent), ("grandparent", _ppid(parent))):
        hits = _memory(pid) if pid else None
        if hits is not None:
            report["readable"].append(who)
            note(f"{{who}} memory", hits)
    note("interpreter", _interpreter_strings())
    channels = report["channels"]
    try:
        with open(f"/tmp/hostile-{{me}}", "w") as handle:
            handle.write("written")
        channels["write_tmp"] = True
    except OSError:
        channels["write_tmp"] = False
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=2).close()
        channels["redis"] = True
    except OSError:
        channels["redis"] = False
    try:  # in a PID namespace of its own its parent is invisible (0): nothing to signal
        os.kill(parent, 0) if parent > 0 else (_ for _ in ()).throw(OSError())
        channels["signal_parent"] = True
    except OSError:
        channels["signal_parent"] = False
    try:
        os.open("/dev/tty", os.O_RDWR)
        channels["tty"] = True
    except OSError:
        channels["tty"] = False
    libc = ctypes.CDLL(None, use_errno=True)
    add_key = {{"x86_64": 248, "aarch64": 217}}.get(os.uname().machine)
    channels["keyring"] = bool(
        add_key and libc.syscall(add_key, b"user", b"hostile-probe", b"x", 1, -4) > 0
    )
    for name, family, kind in (("udp", socket.AF_INET, socket.SOCK_DGRAM),
                               ("unix", socket.AF_UNIX, socket.SOCK_STREAM)):
        try:
            socket.socket(family, kind).close()
            channels[name] = True
        except OSError:
            channels[name] = False
    mode = os.stat(__file__).st_mode
    try:
        os.chmod(__file__, 0o4777)
        os.chmod(__file__, mode)
        channels["chmod"] = True
    except OSError:
        channels["chmod"] = False
    if os.fork() == 0:  # a process left behind, to outlive the run if it can
        os.setsid()
        if os.fork() == 0:
            import time
            time.sleep(30)
        os._exit(0)
    with op.get_bind().connection.cursor() as cur:
        cur.execute("SELECT current_user")
        user = cur.fetchone()[0]
        channels["shm_before"] = _shared_memory(user)
        report["user"] = user
        cur.execute("CREATE TABLE probe (report text)")
        cur.execute("INSERT INTO probe VALUES (%s)", (json.dumps(report),))


def downgrade() -> None:
    pass
'''


def halves(value: str) -> tuple[bytes, bytes]:
    middle = len(value) // 2
    return value[:middle].encode(), value[middle:].encode()


def hostile_script_dir(
    source: Path,
    root: Path,
    needles: dict[str, str],
    files: list[str] | None = None,
    down: str = "0003",
) -> Path:
    """A copy of ``source`` with the hostile revision ``9999`` on top of ``down``."""
    target = root / "hostile"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    text = _REVISION.format(
        down=down,
        needles={k: halves(v) for k, v in needles.items()},
        files=list(files or []),
    )
    (target / "versions" / "9999_hostile.py").write_text(textwrap.dedent(text))
    return target
