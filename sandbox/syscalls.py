"""Thin wrappers around the system calls Python does not expose.

This is the only module that uses ctypes or prctl; everything else calls these.
Every wrapper raises OSError with errno set, like the os module does.
"""

from __future__ import annotations

import ctypes
import os
import signal

import prctl

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_BIND = 4096
MS_REC = 16384
MS_SLAVE = 1 << 19

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_libc.unshare.argtypes = (ctypes.c_int,)
_libc.sethostname.argtypes = (ctypes.c_char_p, ctypes.c_size_t)


def _check(result: int, what: str, path: str | None = None) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", path)


def _b(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)), "mount", target)


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, len(raw)), "sethostname")


def set_parent_death_signal(sig: int = signal.SIGKILL) -> None:
    """Deliver `sig` to this process when the thread that forked it dies. The launcher
    is single-threaded on purpose: the signal is tied to the forking *thread*."""
    prctl.set_pdeathsig(sig)


def set_child_subreaper() -> None:
    """Orphans below this process are reparented to it, not to the system's init (or
    an outer subreaper): without a PID namespace, what keeps a job's family below us."""
    prctl.set_child_subreaper(1)


def set_name(name: str) -> None:
    """The comm shown by ps (15 bytes): lets an admin tell init from the launcher."""
    prctl.set_name(name)


# -- the new mount API (Linux 5.2+; mount_setattr 5.12+) ----------------------------
# Every mount of user-named paths goes through descriptors the launcher opened after a
# symlink-safe walk: a path string would be looked up again, and the second lookup is
# where a planted symlink or a rename would redirect it (bubblewrap's CVE-2017-5226
# class of bug). These calls take descriptors at both ends. The numbers are the same
# on every architecture (the unified syscall table, 424 and above).
_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_FSOPEN = 430
_SYS_FSCONFIG = 431
_SYS_FSMOUNT = 432
_SYS_MOUNT_SETATTR = 442

AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 0x04
MOVE_MOUNT_T_EMPTY_PATH = 0x40
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8

_PR_CAPBSET_DROP = 24
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4

_libc.syscall.restype = ctypes.c_long
_libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)


class _MountAttr(ctypes.Structure):
    _fields_ = (
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    )


def _sys(number: int, what: str, *args: object) -> int:
    result = int(_libc.syscall(ctypes.c_long(number), *args))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def open_tree_clone(fd: int) -> int:
    """A detached copy of the mount tree at descriptor `fd` (and everything mounted below)."""
    flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH | AT_RECURSIVE
    return _sys(_SYS_OPEN_TREE, "open_tree", ctypes.c_int(fd), b"", ctypes.c_uint(flags))


def move_mount_to(mount_fd: int, dst_fd: int, dst_name: str = "") -> None:
    """Attach the detached mount `mount_fd` on `dst_name` relative to `dst_fd` (or on
    `dst_fd` itself when dst_name is empty)."""
    flags = MOVE_MOUNT_F_EMPTY_PATH | (0 if dst_name else MOVE_MOUNT_T_EMPTY_PATH)
    _sys(
        _SYS_MOVE_MOUNT, "move_mount",
        ctypes.c_int(mount_fd), b"", ctypes.c_int(dst_fd), os.fsencode(dst_name), ctypes.c_uint(flags),
    )


def mount_setattr(fd: int, attr_set: int, path: str = "", recursive: bool = True) -> None:
    """Set per-mount attributes (MOUNT_ATTR_*) on the mount at `fd` (or at `path`)."""
    attr = _MountAttr(attr_set, 0, 0, 0)
    flags = (AT_EMPTY_PATH if not path else 0) | (AT_RECURSIVE if recursive else 0)
    _sys(
        _SYS_MOUNT_SETATTR, "mount_setattr",
        ctypes.c_int(fd if not path else AT_FDCWD), os.fsencode(path), ctypes.c_uint(flags),
        ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)),
    )


def new_tmpfs(options: tuple[tuple[str, str], ...], attrs: int) -> int:
    """A new tmpfs as a detached mount; the caller may populate it through the returned
    descriptor before attaching it anywhere."""
    fs = _sys(_SYS_FSOPEN, "fsopen", b"tmpfs", ctypes.c_uint(1))  # FSOPEN_CLOEXEC
    try:
        for key, value in options:
            _sys(_SYS_FSCONFIG, "fsconfig", ctypes.c_int(fs), ctypes.c_uint(FSCONFIG_SET_STRING),
                 key.encode(), value.encode(), ctypes.c_int(0))
        _sys(_SYS_FSCONFIG, "fsconfig", ctypes.c_int(fs), ctypes.c_uint(FSCONFIG_CMD_CREATE),
             None, None, ctypes.c_int(0))
        return _sys(_SYS_FSMOUNT, "fsmount", ctypes.c_int(fs), ctypes.c_uint(1), ctypes.c_uint(attrs))
    finally:
        os.close(fs)


# -- dropping privilege for good ----------------------------------------------------


def drop_bounding_set(last_cap: int) -> None:
    """Empty the capability bounding set (0..last_cap, from /proc/sys/kernel/cap_last_cap:
    python-prctl only knows the capabilities of the headers it was built with)."""
    for cap in range(last_cap + 1):
        if _libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            if ctypes.get_errno() == 22 and cap > 0:  # EINVAL: past the kernel's last capability
                return
            _check(-1, "drop capability bounding set")


def clear_capabilities() -> None:
    """Empty the ambient set, then the effective, permitted and inheritable sets."""
    # EINVAL: a kernel before 4.3 has no ambient set, so there is nothing to clear.
    if _libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 and ctypes.get_errno() != 22:
        _check(-1, "clear ambient capabilities")
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    data = (ctypes.c_uint32 * 6)()  # two empty {effective, permitted, inheritable}
    # glibc's capset, not a raw syscall number: those differ between architectures
    _check(_libc.capset(header, data), "capset")


def set_no_new_privs() -> None:
    """After this, execve never grants privilege (setuid bits and file capabilities
    are ignored); it is inherited by every descendant and cannot be unset."""
    prctl.set_no_new_privs(1)


# -- what the job must not inherit ---------------------------------------------------

_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
CLOSE_RANGE_CLOEXEC = 1 << 2
_KEYCTL_JOIN_SESSION_KEYRING = 1
_libc.close_range.argtypes = (ctypes.c_uint, ctypes.c_uint, ctypes.c_int)
_TIOCSCTTY = 0x540E


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


class PreparedFilter:
    """A BPF program laid out as the kernel's struct sock_fprog, before the fork: the
    child installs it with one prctl and allocates nothing."""

    def __init__(self, program: bytes) -> None:
        if not program or len(program) % 8:
            raise ValueError("a BPF program is a non-empty array of 8-byte instructions")
        self._buf = ctypes.create_string_buffer(program, len(program))
        self._prog = _SockFprog(len(program) // 8, ctypes.addressof(self._buf))
        self.address = ctypes.addressof(self._prog)


def install_seccomp(prepared: PreparedFilter) -> None:
    """Irrevocable for this process and everything it execs or forks. Needs no_new_privs
    or CAP_SYS_ADMIN (the kernel refuses otherwise: a filter could fool a setuid program)."""
    _check(_libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, prepared.address, 0, 0), "seccomp")


def close_range(first: int, last: int, cloexec: bool = False) -> None:
    """Close (or mark close-on-exec) every descriptor from first to last, in one call
    (Linux 5.9; CLOEXEC 5.11): no walk of /proc/self/fd, nothing to allocate."""
    _check(_libc.close_range(first, last, CLOSE_RANGE_CLOEXEC if cloexec else 0), "close_range")


def close_all_but(keep: frozenset[int] | set[int], cloexec: bool = False) -> None:
    """close_range over every gap between the descriptors in `keep` (0-2 included or not,
    as the caller says)."""
    start = 0
    for fd in sorted(keep):
        if fd > start:
            close_range(start, fd - 1, cloexec)
        start = max(start, fd + 1)
    close_range(start, 0xFFFFFFFF, cloexec)


def take_controlling_terminal(fd: int) -> None:
    """Make the terminal at `fd` this session leader's controlling terminal."""
    _check(_libc.ioctl(fd, ctypes.c_ulong(_TIOCSCTTY), ctypes.c_int(0)), "TIOCSCTTY")


def join_new_session_keyring(keyctl_nr: int) -> None:
    """Replace this process's session keyring with a new anonymous one: nothing of the
    caller's session keyring is reachable, and what the job adds goes when it does.
    The syscall number comes from the launcher (it differs between architectures)."""
    result = int(_libc.syscall(ctypes.c_long(keyctl_nr), ctypes.c_long(_KEYCTL_JOIN_SESSION_KEYRING),
                               ctypes.c_void_p(None)))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"keyctl: {os.strerror(err)}")
