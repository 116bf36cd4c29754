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


class NoCgroup(JobCgroup):
    """What every tracking without a cgroup answers for the cgroup's part: no
    directories, nothing to join, no freezer."""

    version = ""  # no cgroup: the report's cgroup_version is null

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

    def join_fds(self) -> list[int]:
        return []

    def freeze(self) -> None:
        raise CgroupError("this sandbox has no cgroup: it cannot be frozen")

    def thaw(self) -> None:
        raise CgroupError("this sandbox has no cgroup: it cannot be frozen")


class PidNamespaceJob(NoCgroup):
    """The JobCgroup interface over a PID namespace: what the runner, the supervisor
    and the teardown need (create, hand-over, kill, usage), without a cgroup."""

    tracking = TRACKING_PIDNS

    def __init__(self, name: str) -> None:
        self.name = name
        self.not_enforced: tuple[str, ...] = ()
        self._pidfd: int | None = None
        self._init: int | None = None
        self._restored = False  # live control's copy: the launcher holds the figures
        self._before = resource.getrusage(resource.RUSAGE_CHILDREN)

    @classmethod
    def restore(cls, name: str, init_pid: int | None, launcher_pid: int | None) -> PidNamespaceJob:
        """A running sandbox's job, for live control, from its state record: init is
        taken only if it is still the recorded launcher's sandbox-init (else the job
        does not exist: its PID may be another process's by now)."""
        from .procfs import parent_and_comm

        job = cls(name)
        job._restored = True
        if init_pid is None or launcher_pid is None:
            return job
        try:
            fd = os.pidfd_open(init_pid)
        except OSError:
            return job
        # The pidfd names one process for good. If it is still alive after the check,
        # the /proc entry checked was that process's (its PID was never free meanwhile).
        try:
            if parent_and_comm(init_pid) == (launcher_pid, "sandbox-init"):
                signal.pidfd_send_signal(fd, 0)
                job._pidfd, job._init = fd, init_pid
                return job
        except ProcessLookupError:
            pass
        os.close(fd)
        return job

    def create(self, limits: Limits) -> None:
        # Refused before this unless the caller allowed it (--limits best-effort):
        # here they are only recorded, for the report.
        self.not_enforced = unenforced(limits)
        self._before = resource.getrusage(resource.RUSAGE_CHILDREN)

    def attach(self, pid: int) -> None:
        # Before init's go: init is our child, blocked on the go pipe, so the PID is
        # still its own when we open the pidfd.
        self._pidfd, self._init = os.pidfd_open(pid), pid

    def pids(self) -> list[int]:
        """Every process in init's PID namespace, init included (host PIDs)."""
        if self._init is None:
            return []
        try:
            ns = os.readlink(f"/proc/{self._init}/ns/pid")
        except OSError:
            return []
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.readlink(f"/proc/{entry}/ns/pid") == ns:
                        found.append(int(entry))
                except OSError:
                    continue
        return found

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
        process of the job. Read after init is reaped; before, it is what has ended.
        Live control's copy knows nothing of it: null figures."""
        if self._restored:
            return Usage()
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
