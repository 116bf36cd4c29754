"""Tracking a job with neither a cgroup nor a namespace ("process-tree" mode).

Where even a user namespace is refused (kernel.unprivileged_userns_clone=0, a
container's seccomp) or a site forbids namespaces, the job's family is what
sandbox/proctree.py describes: the tree below the launcher (a child subreaper, as is
init, so that orphans stay below and are reaped there: their rusage rolls up), the
environment marker, and for root a supplementary group of its own from the site's
`tracking_gids` range.

Kill: stop every member (a stopped process cannot fork, so this converges against a
fork loop), then SIGKILL them, and repeat until a scan finds none. Every signal goes
through a pidfd opened on the PID and checked to still be the scanned process (same
start time) after the open: a PID reused meanwhile is never signalled. For root the
proc connector says when a member forked, so a rescan is only made when something
changed.

What this mode cannot do: enforce --mem, --swap, --pids, --cpus; give the job any
namespace (no private /tmp, no hidden paths, the host's PIDs and network); freeze it.
A SIGKILL of the launcher leaves its orphans to the system's init: `sandbox gc` then
finds them by the GID (root) or the marker, which a process can drop.
"""

from __future__ import annotations

import os
import resource
import select
import signal
import time
from typing import TYPE_CHECKING

from . import proctree
from . import syscalls as sc
from .cgroups.base import CgroupError, Usage
from .procscan import Connector, GidLock, gid_lock_dir, groups_of, read, scan, stat_of
from .tracking import NoCgroup, unenforced

if TYPE_CHECKING:
    from .limits import Limits

TRACKING_PROCESS_TREE = "process-tree"
# What a namespace would have given and this mode does not (the report names it).
WAIT_FDS_MAX = 512  # pidfds kept open at once to wait on exits (and at most half the descriptor limit)
NOT_ISOLATED = ("pid namespace", "mount namespace", "private /tmp", "ipc namespace", "uts namespace")


def _still(pid: int, start: int) -> int | None:
    """`pid` if it is still the process that started at `start`: checked with a pidfd
    held across the read, so that the /proc entry read was that process's."""
    from .procfs import process_start_time

    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        if process_start_time(pid) == start:
            signal.pidfd_send_signal(fd, 0)
            return pid
    except (ProcessLookupError, PermissionError):
        pass
    finally:
        os.close(fd)
    return None


class ProcessTreeJob(NoCgroup):
    """The JobCgroup interface over a family of processes (see the module's doc)."""

    tracking = TRACKING_PROCESS_TREE

    def __init__(self, name: str, gids: range | None = None, token: str | None = None) -> None:
        self.name = name
        self.gids = gids  # root's range; None: tree and marker only
        self.token = token or os.urandom(12).hex()
        self.not_enforced: tuple[str, ...] = ()
        self.peak_rss_kb = 0  # the largest process seen (VmHWM): a lower bound
        self._gid: GidLock | None = None
        self.gid: int | None = None
        self._root: int | None = os.getpid()  # whose descendants: the launcher's own
        self._init: int | None = None
        self._restored = False
        self._live = False
        self._before = resource.getrusage(resource.RUSAGE_CHILDREN)

    @property
    def marker(self) -> str:
        return proctree.marker_value(self.name, self.token)

    @classmethod
    def restore(cls, name: str, *, token: str | None, gid: int | None, launcher_pid: int | None,
                launcher_start: int | None, init_pid: int | None = None) -> ProcessTreeJob:
        """A sandbox's family from its state record: the tree below its launcher only if
        that is still the recorded process (a pidfd held across the check of its start
        time), else the marker and the GID alone (gc after a SIGKILL of the launcher)."""
        job = cls(name, token=token or os.urandom(12).hex())
        job._restored, job._root, job.gid, job._init = True, None, gid, init_pid
        if launcher_pid is not None and launcher_start is not None:
            job._root = _still(launcher_pid, launcher_start)
        if gid is not None and job._root is None:
            # The launcher is gone, its GID's lock free or held by a new launcher that
            # found the GID on no process: only while we hold that lock does the GID
            # name this sandbox's orphans alone.
            job._gid = GidLock.take(gid, gid_lock_dir())
            job.gid = gid if job._gid is not None else None
        return job

    # -- life ------------------------------------------------------------------------

    def create(self, limits: Limits) -> None:
        # Refused before this unless the caller allowed it (--limits best-effort).
        self.not_enforced = unenforced(limits)
        if self.gids is not None:
            self._gid = GidLock.allocate(self.gids, gid_lock_dir())
            if self._gid is None:
                raise CgroupError(f"no free GID in tracking_gids {self.gids.start}-{self.gids.stop - 1}: "
                                  "every one is held by a running sandbox or carried by a process")
            self.gid = self._gid.gid
        # Orphans of the job are reparented to us (or to init, a subreaper too), not to
        # the system's init: they stay descendants, and their rusage reaches us.
        sc.set_child_subreaper()
        self._before = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._live = True

    def attach(self, pid: int) -> None:
        self._init = pid  # our child, blocked on the go pipe: it cannot be another's yet

    def job_marks(self) -> tuple[tuple[tuple[str, str], ...], tuple[int, ...]]:
        return ((proctree.MARKER_VAR, self.marker),), (() if self.gid is None else (self.gid,))

    def tracking_record(self) -> tuple[str | None, str | None, int | None]:
        return self.tracking, self.token, self.gid

    def report_extra(self) -> dict[str, object]:
        by = ["tree", "environ"] + (["gid"] if self.gid is not None else [])
        return {"tracked_by": by, "tracking_gid": self.gid, "isolation_not_provided": list(NOT_ISOLATED)}

    # -- membership ------------------------------------------------------------------

    def members(self, proc: str = "/proc") -> dict[int, proctree.Proc]:
        """The live (not zombie) members now: below the launcher, or carrying the marker
        or the GID. Never the launcher, nor whoever asks, nor the system's init."""
        procs = scan(proc)
        found = proctree.descendants({p: i.ppid for p, i in procs.items()}, self._root) if self._root else set()
        for pid in procs.keys() - found:
            if self.gid is not None and self.gid in groups_of(pid, proc):
                found.add(pid)
                continue
            environ = read(f"{proc}/{pid}/environ", binary=True)
            if isinstance(environ, bytes) and proctree.has_marker(environ, self.marker):
                found.add(pid)
        found -= {1, os.getpid(), self._root or 0}
        return {p: procs[p] for p in found if procs[p].alive}

    def pids(self) -> list[int]:
        return sorted(self.members())

    def _note_peak(self, pids: list[int]) -> None:
        for pid in pids:
            text = read(f"/proc/{pid}/status")
            hwm = proctree.parse_status_hwm_kb(text) if isinstance(text, str) else None
            if hwm is not None and pid != self._init:
                self.peak_rss_kb = max(self.peak_rss_kb, hwm)

    # -- the end ---------------------------------------------------------------------

    def main_exited(self) -> None:
        """The main process is gone: so is the job. Everything but init goes (init, a
        subreaper, reaps it and then exits); what resists is left for the teardown."""
        try:
            self._end(10.0, spare=frozenset({self._init} if self._init else ()))
        except (OSError, CgroupError):
            # init would wait for the survivors for ever: it goes too, which ends the
            # supervision; the teardown tries again and says what is left
            try:
                self._end(1.0)
            except (OSError, CgroupError):
                pass

    def kill(self, timeout: float = 10.0) -> None:
        self._end(timeout)

    def _end(self, timeout: float, spare: frozenset[int] = frozenset()) -> None:
        """Stop all, kill all, until a scan finds no member left (but `spare`)."""
        deadline = time.monotonic() + timeout
        events = Connector.open()  # before the first scan: a fork after it is an event
        try:
            while True:
                members = {p: i for p, i in self.members().items() if p not in spare}
                if not members:
                    return
                self._note_peak(list(members))
                stopped = self._stop_all(members, events, deadline)
                # A pidfd per member to wait on its exit, as many as descriptors allow
                # (a fork bomb's thousands are found again by the next scan instead).
                budget = min(WAIT_FDS_MAX, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 2)
                waits: list[int] = []
                for info in stopped:
                    fd = self._signal(info, signal.SIGKILL, keep=len(waits) < budget)
                    if fd is not None:
                        waits.append(fd)
                self._wait_exits(waits, deadline)
                self._reap()
                if time.monotonic() >= deadline:
                    raise CgroupError(f"sandbox {self.name!r}: processes still alive {timeout:g} s after SIGKILL")
        finally:
            if events is not None:
                events.close()

    @staticmethod
    def _signal(info: proctree.Proc, sig: int, keep: bool = False) -> int | None:
        """Signal the scanned process through a pidfd, unless its PID is no longer it
        (the same start time read after the open: the pidfd names that process). With
        `keep`, the pidfd is returned open (None when there was none to keep)."""
        try:
            fd = os.pidfd_open(info.pid)
        except OSError:  # gone, or out of descriptors: then a kill without a pidfd to wait on
            return None
        text = read(f"/proc/{info.pid}/stat")
        try:
            if isinstance(text, str) and proctree.parse_stat(text).start == info.start:
                signal.pidfd_send_signal(fd, sig)
                if keep:
                    return fd
        except (ValueError, IndexError, ProcessLookupError):
            pass
        os.close(fd)
        return None

    def _stop_all(self, members: dict[int, proctree.Proc], events: Connector | None,
                  deadline: float) -> list[proctree.Proc]:
        """SIGSTOP every member, and what they forked meanwhile, until none is new."""
        stopped: dict[int, proctree.Proc] = {}
        pending = members
        while pending and time.monotonic() < deadline:
            for pid, info in pending.items():
                if pid not in stopped:
                    self._signal(info, signal.SIGSTOP)
                    stopped[pid] = info
            self._settle(list(stopped), deadline)
            # Stopped, they fork no more: what they forked before is in the connector's
            # queue (a fork's event is queued before fork returns) or in /proc.
            forks = events.forks() if events is not None else None
            if forks is not None:
                new = {e.pid for e in forks if e.parent in stopped} - stopped.keys()
                pending = {p: i for p in new if (i := stat_of(p)) is not None and i.alive}
            else:
                pending = {p: i for p, i in self.members().items() if p not in stopped}
        return list(stopped.values())

    @staticmethod
    def _settle(pids: list[int], deadline: float) -> None:
        """Wait (briefly) until the signalled are stopped or gone: a SIGSTOP is
        delivered when the process next runs."""
        until = min(deadline, time.monotonic() + 0.5)
        delay = 0.0005
        while time.monotonic() < until:
            states = [read(f"/proc/{p}/stat") for p in pids]
            if all(not isinstance(s, str) or proctree.parse_stat(s).state in "TtZXx" for s in states):
                return
            time.sleep(delay)
            delay = min(delay * 2, 0.02)

    @staticmethod
    def _wait_exits(fds: list[int], deadline: float) -> None:
        """Until each pidfd is readable (its process has exited) or the deadline; closes them."""
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        waiting = len(fds)
        try:
            while waiting:
                left = deadline - time.monotonic()
                ready = poller.poll(max(0, int(left * 1000)) + 1) if left > 0 else poller.poll(0)
                if not ready:
                    return
                for fd, _ev in ready:
                    poller.unregister(fd)
                    waiting -= 1
        finally:
            for fd in fds:
                os.close(fd)

    def _reap(self) -> None:
        """Reap the zombies that are our own children (orphans reparented to us when init
        went first), init excepted: the runner waits for init. Their rusage becomes ours."""
        if self._restored:
            return
        me = os.getpid()
        for pid, info in scan().items():
            if info.ppid == me and not info.alive and pid != self._init:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass

    # -- the rest of the interface -----------------------------------------------------

    def usage(self) -> Usage:
        """The rusage of everything reaped since create() (by us, or by init and then
        rolled up when we reaped init). Live control's copy knows nothing of it."""
        if self._restored:
            return Usage()
        now = resource.getrusage(resource.RUSAGE_CHILDREN)
        return Usage(cpu_user_seconds=round(now.ru_utime - self._before.ru_utime, 6),
                     cpu_system_seconds=round(now.ru_stime - self._before.ru_stime, 6))

    def exists(self) -> bool:
        return bool(self.members()) if self._restored else self._live

    def remove_dirs(self) -> None:
        self._live = False
        if self._gid is not None:
            self._gid.release()
            self._gid = None

