"""The cgroup interface every backend implements, and the small file helpers they share.

A JobCgroup is one job's cgroup in whatever layout the host has. Callers (runner,
gc, live control) use only this interface; the differences between v1, v2 and the
hybrid layout live in the backends, each using the best source for each function.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import time
from abc import ABC, abstractmethod
from typing import NamedTuple

from ..limits import Limits

PREFIX = "sandbox-"  # every cgroup we create is named PREFIX + sandbox name


class Usage(NamedTuple):
    cpu_user_seconds: float | None = None
    cpu_system_seconds: float | None = None
    memory_current_bytes: int | None = None
    memory_peak_bytes: int | None = None
    memory_limit_bytes: int | None = None
    oom_kills: int | None = None
    io_read_bytes: int | None = None
    io_write_bytes: int | None = None
    pids_current: int | None = None
    pids_peak: int | None = None


class CgroupError(Exception):
    pass


def read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError, OSError):
        return None


def read_int(path: str) -> int | None:
    text = read_text(path)
    if text is None:
        return None
    text = text.strip()
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def read_keyed(path: str) -> dict[str, int]:
    """'key value' lines (cpu.stat, memory.events, memory.oom_control, cgroup.events)."""
    out: dict[str, int] = {}
    for line in (read_text(path) or "").splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value)
        except ValueError:
            continue
    return out


# v1 spells "no limit" as the largest page-aligned 63-bit value: anything this large is none.
_NO_LIMIT_FLOOR = 2**62


def parse_memory_limit(text: str | None) -> int | None:
    """One cgroup's memory limit, from v2's memory.max ('max') or v1's memory.limit_in_bytes."""
    value = (text or "").strip()
    if not value.isdigit():
        return None
    return None if int(value) >= _NO_LIMIT_FLOOR else int(value)


def smallest_limit(texts: list[str | None]) -> int | None:
    """The limit in force along a chain of cgroups: the smallest one, None if none is set."""
    limits = [v for v in map(parse_memory_limit, texts) if v is not None]
    return min(limits) if limits else None


def parse_cpu_max(text: str | None) -> float | None:
    """One v2 cgroup's CPU quota in CPUs, from cpu.max ('QUOTA PERIOD'; 'max PERIOD' is none)."""
    quota, _, period = (text or "").strip().partition(" ")
    return _cpus(quota, period or "100000")


def parse_cfs_quota(quota: str | None, period: str | None) -> float | None:
    """One v1 cgroup's CPU quota in CPUs, from cpu.cfs_quota_us (-1 is none) and cpu.cfs_period_us."""
    return _cpus((quota or "").strip(), (period or "").strip())


def _cpus(quota: str, period: str) -> float | None:
    if not quota.isdigit() or not period.isdigit() or int(period) == 0 or int(quota) == 0:
        return None
    return int(quota) / int(period)


def smallest_cpus(quotas: list[float | None]) -> float | None:
    """The CPU quota in force along a chain of cgroups: the smallest, None if none is set
    (a child's quota above its parent's is allowed, and the parent's still bounds it)."""
    values = [q for q in quotas if q is not None]
    return min(values) if values else None


def chain_files(directory: str, filename: str) -> list[str | None]:
    """`filename` read in `directory` and in each ancestor up to the hierarchy's root (the
    last directory that is a cgroup, i.e. has a cgroup.procs)."""
    out = []
    while os.path.exists(os.path.join(directory, "cgroup.procs")):
        out.append(read_text(os.path.join(directory, filename)))
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    return out


def write_file(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def procs_in_tree(directory: str) -> list[int]:
    """Every process in a cgroup and its descendants (the job may have made sub-cgroups)."""
    pids: list[int] = []
    for dirpath, _dirs, _files in os.walk(directory):
        for line in (read_text(os.path.join(dirpath, "cgroup.procs")) or "").split():
            pids.append(int(line))
    return pids


def remove_tree(directory: str) -> None:
    """rmdir a cgroup and its sub-cgroups, deepest first. A missing one is already gone."""
    for dirpath, _dirs, _files in os.walk(directory, topdown=False):
        try:
            os.rmdir(dirpath)
        except FileNotFoundError:
            pass


def make_dir(directory: str) -> None:
    try:
        os.mkdir(directory)
    except FileExistsError:
        raise CgroupError(f"cgroup {directory} already exists (is the sandbox name in use?)") from None
    except FileNotFoundError:
        raise CgroupError(f"cgroup parent {os.path.dirname(directory)} does not exist") from None
    except PermissionError:
        raise CgroupError(f"cannot create cgroup {directory}: permission denied") from None


def kill_pids(pids: list[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def wait_events_unpopulated(events_path: str, timeout: float) -> bool:
    """Wait for 'populated 0' in a v2 cgroup.events file. The kernel signals changes to
    that file with POLLPRI, so this sleeps in poll(2) instead of spinning."""
    deadline = time.monotonic() + timeout
    try:
        fd = os.open(events_path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLPRI | select.POLLERR)
        while True:
            os.lseek(fd, 0, os.SEEK_SET)
            text = os.read(fd, 4096).decode()
            if "populated 0" in text:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            poller.poll(remaining * 1000)
    except OSError as e:
        if e.errno in (errno.ENODEV, errno.ENOENT):
            return True
        raise
    finally:
        os.close(fd)


def wait_procs_empty(directory: str, timeout: float) -> bool:
    """v1 has no populated event for a single hierarchy: check cgroup.procs with short,
    growing sleeps. Only used at teardown, after SIGKILL, when exits take milliseconds."""
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while procs_in_tree(directory):
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    return True


class JobCgroup(ABC):
    """One sandbox's cgroup. Created with limits, joined by the job's init before it
    runs anything, killed completely, read for usage, removed."""

    version: str  # "v1", "v2" or "hybrid": the report's cgroup_version
    name: str
    tracking = "cgroup"  # the report's `tracking`: what holds the job's processes together

    @abstractmethod
    def create(self, limits: Limits) -> None:
        """Create the cgroup(s) and set the limits; on failure nothing is left behind."""

    def enclosing_memory_limit(self) -> int | None:
        """The tightest memory limit of the cgroups this one is created in (a batch
        system's step, a systemd slice): what the job gets at most, whatever --mem says."""
        return None

    def share_memory(self) -> None:
        """The job stays in the enclosing memory cgroup, which is never ours (v1 only: the
        switchboard made the others and left that one out, see V1Part.create)."""
        raise CgroupError(f"a {self.version} sandbox has no memory cgroup to share")

    def enclosing_cpu_limit(self) -> float | None:
        """The tightest CPU quota (in CPUs) of the cgroups this one is created in: the job
        gets no more CPU time per period than that, whatever --cpus says."""
        return None

    @abstractmethod
    def paths(self) -> dict[str, str]:
        """Directory per hierarchy ('memory', 'pids', ..., 'unified')."""

    @abstractmethod
    def primary_path(self) -> str:
        """The one directory named in the report."""

    @abstractmethod
    def join_files(self) -> list[str]:
        """The cgroup.procs files a process writes '0' into to join the cgroup."""

    @abstractmethod
    def pids(self) -> list[int]:
        """Every process in the cgroup (host PIDs)."""

    @abstractmethod
    def freeze(self) -> None: ...

    @abstractmethod
    def thaw(self) -> None: ...

    @abstractmethod
    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL every process and wait until the cgroup is empty: nothing survives,
        not even a process forking in a loop."""

    @abstractmethod
    def usage(self) -> Usage: ...

    @abstractmethod
    def exists(self) -> bool: ...

    @abstractmethod
    def remove_dirs(self) -> None:
        """rmdir every directory (the cgroup must be empty)."""

    def recorded_path(self) -> str | None:
        """The directory the report and the state record name (None: no cgroup)."""
        return self.primary_path()

    def recorded_version(self) -> str | None:
        return self.version

    def is_frozen(self) -> bool | None:
        """Is the freezer holding the job (`sandbox suspend`)? None: no freezer here."""
        return None

    def attach(self, pid: int) -> None:
        """Move `pid` into the cgroup for it: only a backend whose init cannot join by
        itself (the switchboard's, without root) does anything here."""
        return None

    def join_fds(self) -> list[int]:
        return [os.open(p, os.O_WRONLY | os.O_CLOEXEC) for p in self.join_files()]

    def job_marks(self) -> tuple[tuple[tuple[str, str], ...], tuple[int, ...]]:
        """What the job's processes carry to be found without a cgroup: environment
        variables and supplementary groups (only process-tree tracking has any)."""
        return (), ()

    def main_exited(self) -> None:
        """The job's main process is gone: a cgroup's job is ended by init, nothing here."""
        return None

    def tracking_record(self) -> tuple[str | None, str | None, int | None]:
        """What the state record needs beyond the cgroup's directories to find the job:
        (tracking, marker token, GID); a cgroup needs none."""
        return None, None, None

    def report_extra(self) -> dict[str, object]:
        """Keys the report gets from the tracking (none for a cgroup)."""
        return {}

    def destroy(self, timeout: float = 10.0) -> None:
        """Kill whatever is left and remove the cgroup."""
        if not self.exists():
            return
        self.kill(timeout)
        self.remove_dirs()
