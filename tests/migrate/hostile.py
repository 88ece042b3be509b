"""A hostile revision: what product code could find while it migrates one tenant.

``hostile_script_dir`` copies a product's script directory and adds a head revision
that looks for secrets everywhere a revision can reach, and writes what it found
to ``<out>/<current_user>-<pid>.json``:

- its environment and ``/proc/self/environ``;
- every ancestor's ``/proc/<pid>/environ`` and ``cmdline``, and the files named there;
- the memory (``/proc/<pid>/mem``) of itself, its parent, its grandparent and its
  siblings (the processes it could most plausibly share secrets with).

Secrets are looked for as "needles", each stored in the revision as two halves so
that the whole never exists in memory unless it leaked there. ``found`` maps each
place to the needle names seen there; ``readable`` lists which processes' memory the
revision could read at all (a positive control with its own password).
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

_REVISION = '''
"""Hostile: records every secret it can find (a test's probe, not a migration)."""
import json
import os

from alembic import op

revision = "9999"
down_revision = {down!r}
branch_labels = None
depends_on = None

NEEDLES = {needles!r}
OUT = {out!r}


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
    readable = False
    with mem:
        for line in maps.decode().splitlines():
            fields = line.split()
            if len(fields) < 2 or not fields[1].startswith("r"):
                continue
            if len(fields) >= 6 and fields[5] in ("[vvar]", "[vsyscall]", "[vvar_vclock]"):
                continue
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            try:
                mem.seek(lo)
                blob = mem.read(hi - lo)
            except (OSError, OverflowError, ValueError):
                continue
            readable = True
            found |= _hits(blob)
    return found if readable else None


def upgrade() -> None:
    me = os.getpid()
    parent = _ppid(me)
    grandparent = _ppid(parent)
    report = {{"pid": me, "found": {{}}, "readable": [], "ancestors": []}}

    def note(where, hits):
        if hits:
            report["found"].setdefault(where, [])
            report["found"][where] = sorted(set(report["found"][where]) | set(hits))

    note("environ", _hits("\\n".join(f"{{k}}={{v}}" for k, v in os.environ.items()).encode()))
    note("/proc/self/environ", _hits(_read("/proc/self/environ") or b""))
    pid = parent
    while pid > 1:
        cmdline = _read(f"/proc/{{pid}}/cmdline") or b""
        report["ancestors"].append(cmdline.replace(b"\\0", b" ").decode(errors="replace"))
        note(f"ancestor environ", _hits(_read(f"/proc/{{pid}}/environ") or b""))
        note(f"ancestor cmdline", _hits(cmdline))
        for arg in cmdline.split(b"\\0"):
            if arg.startswith(b"/") and os.path.isfile(arg):
                note("files named by an ancestor", _hits(_read(arg) or b""))
        pid = _ppid(pid)
    siblings = [
        int(p) for p in os.listdir("/proc")
        if p.isdigit() and int(p) != me and _ppid(int(p)) == parent
    ]
    for who, pids in (("self", [me]), ("parent", [parent]), ("grandparent", [grandparent]),
                      ("sibling", siblings)):
        for pid in pids:
            hits = _memory(pid)
            if hits is not None:
                report["readable"].append(who)
                note(f"{{who}} memory", hits)
    with op.get_bind().connection.cursor() as cur:
        cur.execute("SELECT current_user")
        user = cur.fetchone()[0]
    report["user"] = user
    with open(os.path.join(OUT, f"{{user}}-{{me}}.json"), "w") as handle:
        json.dump(report, handle)


def downgrade() -> None:
    pass
'''


def halves(value: str) -> tuple[str, str]:
    middle = len(value) // 2
    return value[:middle], value[middle:]


def hostile_script_dir(
    source: Path, root: Path, needles: dict[str, str], out: Path, down: str = "0003"
) -> Path:
    """A copy of ``source`` with the hostile revision ``9999`` on top of ``down``."""
    target = root / "hostile"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    text = _REVISION.format(
        down=down, needles={k: tuple(h.encode() for h in halves(v)) for k, v in needles.items()}, out=str(out)
    )
    (target / "versions" / "9999_hostile.py").write_text(textwrap.dedent(text))
    return target
