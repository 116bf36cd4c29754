"""Tracking a job where no cgroup can be had: its PID namespace is its family.

Every process of the job descends from init, PID 1 of the job's PID namespace, and no
process can leave a PID namespace: a double fork, setsid, a new process group or
`nohup cmd &` all stay inside. When PID 1 dies the kernel SIGKILLs everything else in
the namespace and reaps it in PID 1's context (zap_pid_ns_processes) before PID 1's
own exit completes, so killing init kills the whole job, and init's exit status is
only reported once the namespace is empty. Init arms PR_SET_PDEATHSIG, so even a
SIGKILL of the launcher kills the job.

The launcher holds init through a pidfd: a signal can never reach another process
that got init's PID after it was reaped.

CPU is exact: every process of the job was reaped inside the namespace and its rusage
rolled up to init's, which rolls up to ours when we reap init. What this mode cannot
do: enforce --mem, --pids or --cpus (no cgroup controller), report the job's total
memory (the peak is the largest single process's, a lower bound), freeze the job.
"""

from __future__ import annotations

import os
import resource
import select
import signal
from typing import TYPE_CHECKING

from .cgroups.base import CgroupError, JobCgroup, Usage

if TYPE_CHECKING:
    from .limits import Limits

TRACKING_CGROUP = "cgroup"
TRACKING_PIDNS = "pidns"


def unenforced(limits: Limits) -> tuple[str, ...]:
    """The options whose limits only a cgroup enforces (--tmp-size is a tmpfs size,
    enforced in every mode)."""
    wanted = (
        ("--mem", limits.memory_bytes),
        ("--swap", limits.swap_bytes),
        ("--pids", limits.pids),
        ("--cpus", limits.cpus),
    )
    return tuple(flag for flag, value in wanted if value is not None)


def refuse_unenforced(limits: Limits, best_effort: bool, why: str, fix: str) -> None:
    """The one line that refuses limits no cgroup can enforce here: the reason, and the
    two ways out (the fix for this mode, or --limits best-effort)."""
    flags = unenforced(limits)
    if flags and not best_effort:
        from .errors import SandboxError

        raise SandboxError(
            f"{'/'.join(flags)} cannot be enforced without a cgroup ({why}); {fix}, "
            "or pass --limits best-effort to run with them unenforced"
        )


class PidNamespaceJob(JobCgroup):
    """The JobCgroup interface over a PID namespace: what the runner, the supervisor
    and the teardown need (create, hand-over, kill, usage), without a cgroup."""

    version = ""  # no cgroup: the report's cgroup_version is null
    tracking = TRACKING_PIDNS

    def __init__(self, name: str) -> None:
        self.name = name
        self.not_enforced: tuple[str, ...] = ()
        self._pidfd: int | None = None
        self._before = resource.getrusage(resource.RUSAGE_CHILDREN)

    def create(self, limits: Limits) -> None:
        # Refused before this unless the caller allowed it (--limits best-effort):
        # here they are only recorded, for the report.
        self.not_enforced = unenforced(limits)
        self._before = resource.getrusage(resource.RUSAGE_CHILDREN)

    def paths(self) -> dict[str, str]:
        return {}

    def primary_path(self) -> str:
        return ""

    def recorded_path(self) -> str | None:
        return None

    def recorded_version(self) -> str | None:
        return None

    def join_files(self) -> list[str]:
        return []

    def attach(self, pid: int) -> None:
        # Before init's go: init is our child, blocked on the go pipe, so the PID is
        # still its own when we open the pidfd.
        self._pidfd = os.pidfd_open(pid)

    def pids(self) -> list[int]:
        return []

    def freeze(self) -> None:
        raise CgroupError("this sandbox has no cgroup: it cannot be frozen")

    def thaw(self) -> None:
        raise CgroupError("this sandbox has no cgroup: it cannot be frozen")

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL init, which takes the namespace with it, and wait for that to end."""
        if self._pidfd is None:
            return
        try:
            signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
        except ProcessLookupError:
            return  # already reaped
        # The pidfd becomes readable once init has exited, which the kernel lets happen
        # only after every other process of the namespace was killed and reaped.
        poller = select.poll()
        poller.register(self._pidfd, select.POLLIN)
        if not poller.poll(timeout * 1000):
            raise CgroupError(f"init of sandbox {self.name!r} did not exit within {timeout:g} s of SIGKILL")

    def usage(self) -> Usage:
        """The rusage of everything reaped since create(): init, and through it every
        process of the job. Read after init is reaped; before, it is what has ended."""
        now = resource.getrusage(resource.RUSAGE_CHILDREN)
        return Usage(
            cpu_user_seconds=round(now.ru_utime - self._before.ru_utime, 6),
            cpu_system_seconds=round(now.ru_stime - self._before.ru_stime, 6),
        )

    def exists(self) -> bool:
        return self._pidfd is not None

    def remove_dirs(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def join_fds(self) -> list[int]:
        return []
