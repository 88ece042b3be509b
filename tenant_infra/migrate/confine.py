"""How a process that runs product code is confined (Linux; elsewhere these do nothing).

- :func:`make_undumpable`: other processes of the same user can no longer read this
  one's ``/proc/<pid>/{environ,mem,fd}`` nor ptrace it (as ssh-agent and gpg-agent do).
- :func:`own_namespaces`: PID and System V IPC namespaces of its own: whatever product
  code starts dies with its tenant's run, and two runs cannot meet in shared memory.
- :func:`drop_privileges`: no capability (effective, permitted, inheritable, ambient,
  bounding) and ``no_new_privs``.
- :func:`landlock`: the kernel's unprivileged sandbox. Files: read-only beneath the
  paths given, nothing else (no ``/proc``, no ``/tmp``, nothing writable). TCP: connect
  only to the ports given, bind none. Scope: no signal to, and no abstract Unix socket
  of, any process outside the sandbox; ptrace and ``/proc`` of processes outside it are
  refused by Landlock itself.
- :func:`seccomp`: what Landlock does not cover: the kernel keyring, Unix-domain and
  datagram sockets, file metadata (chmod, chown, utime, xattrs), io_uring.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

_PR_SET_PDEATHSIG: Final = 1
_PR_SET_DUMPABLE: Final = 4
_PR_CAPBSET_DROP: Final = 24
_PR_SET_CHILD_SUBREAPER: Final = 36
_PR_SET_NO_NEW_PRIVS: Final = 38
_PR_CAP_AMBIENT: Final = 47
_PR_CAP_AMBIENT_CLEAR_ALL: Final = 4
_CAPABILITY_VERSION_3: Final = 0x20080522
_CLONE_NEWIPC: Final = 0x08000000
_CLONE_NEWPID: Final = 0x20000000
_CLONE_NEWUSER: Final = 0x10000000

# Landlock (include/uapi/linux/landlock.h); syscall numbers are the same on every arch.
_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446
_RULE_PATH_BENEATH, _RULE_NET_PORT = 1, 2
_FS_EXECUTE, _FS_READ_FILE, _FS_READ_DIR = 1 << 0, 1 << 2, 1 << 3
#: Every filesystem right of each ABI version (1..5): the ones a ruleset handles.
_FS_BY_ABI: Final = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1
#: Rights that apply to a regular file (the rest only to directories).
_FILE_RIGHTS: Final = _FS_EXECUTE | _FS_READ_FILE


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
    transaction rolls back on the server) and no process waiting for work."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def reap_orphans() -> None:
    """Become the parent of every orphaned descendant, so that none outlives the run."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def own_namespaces() -> bool:
    """New PID and System V IPC namespaces for what this process forks next (as root;
    else inside a user namespace when the kernel allows it). The first child forked is
    PID 1 there: when it exits, the kernel kills everything it left behind. False: it
    could not, and the README's residual applies."""
    libc = _libc()
    if libc is None:
        return False
    if libc.unshare(_CLONE_NEWPID | _CLONE_NEWIPC) == 0:
        return True
    return bool(libc.unshare(_CLONE_NEWUSER | _CLONE_NEWPID | _CLONE_NEWIPC) == 0)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def capabilities() -> dict[str, int]:
    """This process's capability sets (``CapEff``, ``CapPrm``, …; empty off Linux)."""
    found: dict[str, int] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Cap"):
                name, value = line.split(":", 1)
                found[name] = int(value, 16)
    except OSError:
        pass
    return found


def drop_privileges() -> None:
    """No capability in any set, now or after an exec; raises if one is left."""
    libc = _libc()
    if libc is None:
        return
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    for cap in range(last + 1):
        _prctl(_PR_CAPBSET_DROP, cap)  # fails harmlessly without CAP_SETPCAP
    _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL)
    header = _CapHeader(_CAPABILITY_VERSION_3, 0)
    if libc.capset(ctypes.byref(header), (_CapData * 2)()) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)
    left = capabilities()
    if any(left.get(k) for k in ("CapEff", "CapPrm", "CapInh", "CapAmb")):
        raise PermissionError("could not drop every capability")


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _NetPort(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 when it has none."""
    libc = _libc()
    if libc is None:
        return 0
    version = libc.syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(0, int(version))


def landlock(readable: Iterable[Path | str], ports: Iterable[int]) -> int:
    """Confine this process (and what it starts) for good; returns the ABI applied
    (0: no Landlock here, nothing done). Raises if the kernel refused a rule."""
    abi = landlock_abi()
    if abi == 0:
        return 0
    libc = _libc()
    fs = _FS_BY_ABI[max(v for v in _FS_BY_ABI if v <= abi)]
    attr = _RulesetAttr(
        fs,
        (_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 else 0,
        (_SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL) if abi >= 6 else 0,
    )
    size = ctypes.sizeof(_RulesetAttr) if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0)
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    try:
        for path in dict.fromkeys(str(p) for p in readable):
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # absent: nothing to allow
            try:
                rights = _FS_EXECUTE | _FS_READ_FILE
                if os.path.isdir(path):
                    rights |= _FS_READ_DIR
                rule = _PathBeneath(rights if os.path.isdir(path) else _FILE_RIGHTS, fd)
                if libc.syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), 0):
                    raise OSError(ctypes.get_errno(), f"landlock rule for {path} refused")
            finally:
                os.close(fd)
        if abi >= 4:
            for port in sorted(set(ports)):
                net = _NetPort(_NET_CONNECT_TCP, port)
                if libc.syscall(_SYS_ADD_RULE, ruleset, _RULE_NET_PORT, ctypes.byref(net), 0):
                    raise OSError(ctypes.get_errno(), f"landlock rule for port {port} refused")
        _prctl(_PR_SET_NO_NEW_PRIVS, 1)
        if libc.syscall(_SYS_RESTRICT_SELF, ruleset, 0) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(ruleset)
    return abi


def python_paths() -> list[Path]:
    """What the interpreter may need to read after confinement: its prefixes (standard
    library, site-packages) and this project's own packages, never a checkout root."""
    import tenant_infra

    paths = [Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix)]
    paths += [Path(p) for p in sys.path if p and "site-packages" in p]
    paths += [Path(tenant_infra.__file__).parent]
    return paths


#: System paths every confined process may read: shared libraries, certificates, the
#: resolver's and the user database's files, zoneinfo, and the devices nothing works
#: without. Never all of ``/etc``: a capability-less root still owns ``/etc/shadow``.
SYSTEM_PATHS: Final = (
    "/usr",
    "/lib",
    "/lib64",
    "/etc/ld.so.cache",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/etc/services",
    "/etc/protocols",
    "/etc/passwd",
    "/etc/group",
    "/etc/localtime",
    "/etc/ssl/certs",
    "/etc/pki/tls/certs",
    "/etc/pki/ca-trust/extracted",
    "/etc/ca-certificates",
    "/etc/postgresql-common/pg_service.conf",
    "/dev/null",
    "/dev/urandom",
)


# -- seccomp: what Landlock does not cover ----------------------------------------------

_SCMP_ACT_ALLOW: Final = 0x7FFF0000
_SCMP_CMP_EQ, _SCMP_CMP_MASKED_EQ = 4, 7
_AF_UNIX, _AF_INET, _AF_INET6 = 1, 2, 10
_SOCK_DGRAM, _SOCK_RAW, _SOCK_TYPE_MASK = 2, 3, 0xF
#: Refused outright: the kernel keyring (shared by every process of the user), file
#: metadata (a capability-less root still owns almost every file, and Landlock does
#: not guard chmod, chown, utime or xattrs), io_uring (it bypasses these filters), and
#: reaching into other processes.
DENIED_SYSCALLS: Final = (
    "add_key", "keyctl", "request_key",
    "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat",
    "utime", "utimes", "utimensat", "futimesat",
    "setxattr", "lsetxattr", "fsetxattr", "setxattrat",
    "removexattr", "lremovexattr", "fremovexattr", "removexattrat",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd",
)  # fmt: skip


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


@functools.cache
def _libseccomp() -> Any:
    """libseccomp, loaded once (call it before confinement: finding it runs ldconfig)."""
    import ctypes.util

    for name in ("libseccomp.so.2", ctypes.util.find_library("seccomp")):
        if name:
            try:
                return ctypes.CDLL(name, use_errno=True)
            except OSError:
                continue
    return None


def seccomp(*, datagrams: bool = False) -> bool:
    """Refuse :data:`DENIED_SYSCALLS`, Unix-domain sockets (services that trust the
    caller's uid), and unless ``datagrams``, UDP and raw sockets (TCP is Landlock's,
    by port). False: no libseccomp here, nothing done."""
    lib = _libseccomp()
    if lib is None or not sys.platform.startswith("linux"):
        return False
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(_ArgCmp)
    ]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    deny = 0x00050000 | 1  # SCMP_ACT_ERRNO(EPERM)
    ctx = lib.seccomp_init(_SCMP_ACT_ALLOW)
    if not ctx:
        raise OSError("seccomp_init failed")

    def rule(name: str, *conditions: tuple[int, int, int, int]) -> None:
        number = lib.seccomp_syscall_resolve_name(name.encode())
        if number < 0:
            return  # not on this architecture or kernel
        args = (_ArgCmp * max(1, len(conditions)))(*[_ArgCmp(*c) for c in conditions])
        if lib.seccomp_rule_add_array(ctx, deny, number, len(conditions), args) != 0:
            raise OSError(f"seccomp rule for {name} refused")

    try:
        for name in DENIED_SYSCALLS:
            rule(name)
        rule("socket", (0, _SCMP_CMP_EQ, _AF_UNIX, 0))
        if not datagrams:
            for family in (_AF_INET, _AF_INET6):
                for kind in (_SOCK_DGRAM, _SOCK_RAW):
                    rule(
                        "socket",
                        (0, _SCMP_CMP_EQ, family, 0),
                        (1, _SCMP_CMP_MASKED_EQ, _SOCK_TYPE_MASK, kind),
                    )
        if lib.seccomp_load(ctx) != 0:
            raise OSError("seccomp_load failed")
    finally:
        lib.seccomp_release(ctx)
    return True
