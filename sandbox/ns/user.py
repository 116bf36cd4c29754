"""An unprivileged user namespace for the launcher: the caller's uid and gid mapped to
themselves, so the job runs as the caller (files it writes are the caller's) while the
launcher gains the capabilities, inside, to create the PID, mount, IPC and UTS
namespaces. The kernel must allow unprivileged user namespaces (Debian's
kernel.unprivileged_userns_clone, user.max_user_namespaces > 0)."""

from __future__ import annotations

import os

from .. import syscalls as sc


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def enter(uid: int, gid: int) -> None:
    """Move this process into a new user namespace with an identity mapping of its
    (effective) ids uid and gid."""
    sc.unshare(sc.CLONE_NEWUSER)
    # setgroups must be denied before an unprivileged gid_map can be written (since
    # 3.19, CVE-2014-8989: else dropping a group could grant access a deny-ACL refused).
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{uid} {uid} 1\n")
    _write("/proc/self/gid_map", f"{gid} {gid} 1\n")


# sysctl -> the value that forbids unprivileged user namespaces
_FORBIDDING = (
    ("kernel/unprivileged_userns_clone", "0"),  # Debian's and Ubuntu's switch
    ("user/max_user_namespaces", "0"),
    ("kernel/apparmor_restrict_unprivileged_userns", "1"),  # Ubuntu 23.10+
)


def unavailable(proc_sys: str = "/proc/sys") -> str | None:
    """Why this kernel refuses an unprivileged user namespace, with the fix; None if
    nothing says it does."""
    for key, bad in _FORBIDDING:
        try:
            with open(os.path.join(proc_sys, key)) as f:
                value = f.read().strip()
        except OSError:
            continue
        if value == bad:
            name = key.replace("/", ".")
            return f"unprivileged user namespaces are disabled ({name} = {value}); an admin can allow them with sysctl"
    return None
