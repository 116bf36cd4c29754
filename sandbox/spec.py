"""The job specification: everything the launcher was asked to do, as plain data.

The CLI (and the Python API, through the CLI) builds one JobSpec; the runner turns it
into a plan and executes it. Nothing here touches the system.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, NamedTuple

from .limits import Limits

if TYPE_CHECKING:
    from .credentials import Credentials
    from .seccomp import Profile

NAME_MAX = 64
_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def check_name(name: str) -> str:
    """A sandbox name becomes a cgroup directory and a state file name: keep it to a
    safe alphabet so that it can never be a path ('/', '..') or a control character."""
    if not name or len(name) > NAME_MAX:
        raise ValueError(f"invalid sandbox name {name!r}: must be 1 to {NAME_MAX} characters")
    if not set(name) <= _NAME_OK or name[0] in ".-":
        raise ValueError(
            f"invalid sandbox name {name!r}: use letters, digits, '.', '_' and '-', "
            "not starting with '.' or '-'"
        )
    return name


def generate_name() -> str:
    return f"sb-{os.getpid()}-{os.urandom(4).hex()}"


class JobSpec(NamedTuple):
    argv: tuple[str, ...]
    name: str
    limits: Limits = Limits()
    cgroup_parent: str | None = None  # None: the launcher's own cgroup
    timeout: float | None = None
    kill_grace: float = 10.0
    report_path: str | None = None
    report_fd: int | None = None
    stats: bool = False
    debug: bool = False
    cwd: str | None = None  # None: the launcher's working directory
    hostname: str | None = None
    # isolation: what the job sees of the file system, and who it runs as
    execute_dir: str | None = None
    hide: tuple[str, ...] = ()
    binds: tuple[tuple[str, str, bool], ...] = ()  # (src, dst, read_only), in order
    user: Credentials | None = None  # resolved in the launcher; None: root
    net: str = "host"  # or "none"
    labels: tuple[tuple[str, str], ...] = ()  # --label KEY=VALUE, in order, keys unique
    report_format: str = "json"  # of --report: "json" or "classad"
    accounting_log: str | None = None  # None: no accounting record
    best_effort: bool = False  # --limits best-effort: run even where a limit cannot be enforced
    dev: str = "host"  # or "private": a new /dev with the basic nodes and `devices`
    devices: tuple[str, ...] = ()  # --device: host device nodes a private /dev also gets
    device_access: tuple[tuple[str, str], ...] = ()  # (path, access) of those narrower than rwm
    pty: bool | None = None  # --pty / --no-pty; None: a pty when one of fds 0-2 is a terminal
    keep_fds: tuple[int, ...] = ()  # --keep-fd: descriptors of the caller the job receives
    seccomp: Profile | None = None  # the job's syscall filter; None: --seccomp none
    die_with_parent: bool = False
