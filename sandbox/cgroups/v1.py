"""cgroup v1: one directory per mounted hierarchy, driven through cgroupspy's controllers.

v1 has no recursive kill and no populated event per hierarchy, so the complete kill
is freeze / SIGKILL every task / thaw / repeat, as HTCondor and Slurm do on v1.
"""

from __future__ import annotations

import os
import signal
import time
from typing import NamedTuple

from cgroupspy.controllers import Controller, CpuAcctController, CpuController, MemoryController

from ..limits import CPU_PERIOD_US, Limits, Rule
from .base import (
    PREFIX,
    CgroupError,
    JobCgroup,
    Usage,
    chain_files,
    kill_pids,
    make_dir,
    parse_cfs_quota,
    procs_in_tree,
    read_int,
    read_keyed,
    read_text,
    remove_tree,
    smallest_cpus,
    smallest_limit,
    wait_procs_empty,
    write_file,
)
from .layout import Layout


class _Node(NamedTuple):
    """The one attribute cgroupspy's controllers need from a node: where it is. Building
    cgroupspy Trees would walk every hierarchy on each launch. cgroupspy joins it with
    bytes file names, so it is bytes too."""

    full_path: bytes


def _node(directory: str) -> _Node:
    return _Node(os.fsencode(directory))


def _blkio_bytes(directory: str) -> tuple[int | None, int | None]:
    text = read_text(os.path.join(directory, "blkio.throttle.io_service_bytes_recursive"))
    if text is None:
        return None, None
    read = write = 0
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] == "Read":
            read += int(parts[2])
        elif len(parts) == 3 and parts[1] == "Write":
            write += int(parts[2])
    return read, write


def split_runtime(total_ns: int | None, user: float, system: float) -> tuple[float, float]:
    """(user, system) seconds: cpuacct.usage, the scheduler's exact runtime in ns, split
    in the ratio of the user/system figures. Those are tick samples (usage_user/usage_sys
    and cpuacct.stat alike): lost or skewed ticks undercount them (half the CPU time of a
    slow VM), so only their ratio is trusted, as the kernel's cputime_adjust does for
    rusage. Without cpuacct.usage the samples are all there is."""
    if total_ns is None:
        return user, system
    total = total_ns / 1e9
    if system <= 0:
        return total, 0.0
    if user <= 0:
        return 0.0, total
    user_part = total * user / (user + system)
    return user_part, total - user_part


class V1Part:
    """The v1 hierarchies of one job cgroup: used alone (pure v1) or inside the hybrid."""

    def __init__(
        self,
        layout: Layout,
        name: str,
        parent: str | None,
        controllers: tuple[str, ...],
        parent_dirs: dict[str, str] | None = None,
    ) -> None:
        self.dirs: dict[str, str] = {}
        for ctrl in controllers:
            h = layout.v1.get(ctrl)
            if h is None:
                continue
            if parent_dirs is not None:
                if ctrl not in parent_dirs:
                    continue
                parent_dir = parent_dirs[ctrl]
            else:
                parent_dir = h.directory(parent if parent is not None else h.own_path)
            self.dirs[ctrl] = os.path.join(parent_dir, PREFIX + name)
        self.devices_dir = self._devices_dir(layout, name, parent) if parent_dirs is None else None
        if parent_dirs is not None and "devices" in parent_dirs:
            self.dirs["devices"] = os.path.join(parent_dirs["devices"], PREFIX + name)
        self.memory_parent = os.path.dirname(self.dirs["memory"]) if "memory" in self.dirs else None
        self.shared_memory: str | None = None  # the enclosing memory cgroup, when the job stays in it

    @staticmethod
    def _devices_dir(layout: Layout, name: str, parent: str | None) -> str | None:
        h = layout.v1.get("devices")
        if h is None:
            return None
        return os.path.join(h.directory(parent if parent is not None else h.own_path), PREFIX + name)

    def enclosing_memory_limit(self) -> int | None:
        if self.memory_parent is None:
            return None
        return smallest_limit(chain_files(self.memory_parent, "memory.limit_in_bytes"))

    def enclosing_cpu_limit(self) -> float | None:
        if "cpu" not in self.dirs:
            return None
        parent = os.path.dirname(self.dirs["cpu"])
        quotas = chain_files(parent, "cpu.cfs_quota_us")
        periods = chain_files(parent, "cpu.cfs_period_us")
        return smallest_cpus([parse_cfs_quota(q, p) for q, p in zip(quotas, periods, strict=False)])

    def share_memory(self) -> None:
        self.shared_memory = self.memory_parent
        self.dirs.pop("memory", None)

    def unique_dirs(self) -> list[str]:
        return list(dict.fromkeys(self.dirs.values()))

    def create(self, limits: Limits) -> None:
        if "memory" in self.dirs and limits.memory_bytes is None and self.enclosing_memory_limit() is not None:
            # v1 counts an OOM kill only in the victim's own memory cgroup, and a batch
            # system reads it from its own (Slurm's slurmstepd: OUT_OF_MEMORY in sacct).
            # A child with no tighter limit would hide the kill from it: the job stays in
            # the enclosing memory cgroup, which is never ours to remove.
            self.share_memory()
        if limits.devices is not None and self.devices_dir is not None:
            self.dirs["devices"] = self.devices_dir  # only then: a host /dev needs no devices cgroup
        made: list[str] = []
        try:
            for d in self.unique_dirs():
                make_dir(d)
                made.append(d)
            self._set_limits(limits)
        except BaseException:
            for d in reversed(made):
                remove_tree(d)
            raise

    def _set_limits(self, limits: Limits) -> None:
        mem_dir = self.dirs.get("memory")
        try:
            if limits.memory_bytes is not None and mem_dir:
                mem = MemoryController(_node(mem_dir))
                mem.limit_in_bytes = limits.memory_bytes
                swap = limits.swap_limit_bytes() or 0
                # memsw exists only with swap accounting; without it the host cannot
                # bound swap per cgroup, and a host without swap needs no bound.
                if os.path.exists(os.path.join(mem_dir, "memory.memsw.limit_in_bytes")):
                    mem.memsw_limit_in_bytes = limits.memory_bytes + swap
                elif limits.swap_bytes:
                    raise CgroupError("--swap needs swap accounting (memory.memsw), which this kernel lacks")
            if limits.pids is not None and "pids" in self.dirs:
                Controller(_node(self.dirs["pids"])).set_property(b"pids.max", limits.pids)
            if limits.devices is not None and "devices" in self.dirs:
                self._allow_only(limits.devices)
            quota = limits.cpu_quota_us()
            enclosing = self.enclosing_cpu_limit() if quota is not None else None
            # v1 refuses a child's quota above an ancestor's (EINVAL), where v2 takes it:
            # the ancestor's quota bounds the job all the same, so ours is left unset.
            if enclosing is not None and limits.cpus is not None and limits.cpus >= enclosing:
                quota = None
            if quota is not None and "cpu" in self.dirs:
                cpu = CpuController(_node(self.dirs["cpu"]))
                cpu.cfs_period_us = CPU_PERIOD_US
                cpu.cfs_quota_us = quota
        except OSError as e:
            raise CgroupError(f"cannot set cgroup limit: {e.strerror} ({e.filename or 'cgroup'})") from None

    def _allow_only(self, rules: tuple[Rule, ...]) -> None:
        """Deny all, then allow each rule. A v1 child starts with its parent's list and can
        only narrow it: a rule the enclosing cgroup (a batch system's) denies is refused."""
        d = self.dirs["devices"]
        write_file(os.path.join(d, "devices.deny"), "a")
        for rule in rules:
            try:
                write_file(os.path.join(d, "devices.allow"), rule.text())
            except PermissionError:
                raise CgroupError(f"device {rule.text()} is not allowed by the enclosing cgroup "
                                  f"{os.path.dirname(d)}") from None

    def join_files(self) -> list[str]:
        return [os.path.join(d, "cgroup.procs") for d in self.unique_dirs()]

    def pids(self) -> list[int]:
        # any one hierarchy holds every process of the job
        d = next(iter(self.unique_dirs()), None)
        return procs_in_tree(d) if d else []

    def freeze(self) -> None:
        d = self.dirs.get("freezer")
        if d is None:
            return
        Controller(_node(d)).set_property(b"freezer.state", "FROZEN")
        # FREEZING -> FROZEN once every task has stopped; tasks in uninterruptible
        # sleep can hold it in FREEZING, so do not wait forever.
        deadline = time.monotonic() + 2.0
        while (read_text(os.path.join(d, "freezer.state")) or "").strip() == "FREEZING":
            if time.monotonic() > deadline:
                break
            time.sleep(0.001)

    def thaw(self) -> None:
        d = self.dirs.get("freezer")
        if d is not None:
            Controller(_node(d)).set_property(b"freezer.state", "THAWED")

    def kill(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not self.pids():
                return
            # read the tasks only once frozen: a frozen task cannot fork, so each round
            # kills every task there is, a fork loop's newest children included
            self.freeze()
            try:
                kill_pids(self.pids(), signal.SIGKILL)
            finally:
                self.thaw()
            d = self.unique_dirs()[0]
            if wait_procs_empty(d, min(0.5, max(0.0, deadline - time.monotonic()))):
                return
            if time.monotonic() > deadline:
                raise CgroupError(f"processes survived SIGKILL in {d}")

    def usage(self, with_cpu: bool = True) -> Usage:
        u: dict[str, int | float | None] = {}
        mem_dir = self.dirs.get("memory") or self.shared_memory
        if mem_dir:
            mem = MemoryController(_node(mem_dir))
            u["memory_current_bytes"] = mem.get_content("usage_in_bytes")
            u["memory_peak_bytes"] = mem.get_content("max_usage_in_bytes")
            limit = read_int(os.path.join(mem_dir, "memory.limit_in_bytes"))
            u["memory_limit_bytes"] = limit if limit is not None and limit < (1 << 62) else None
            u["oom_kills"] = read_keyed(os.path.join(mem_dir, "memory.oom_control")).get("oom_kill")
        pids_dir = self.dirs.get("pids")
        if pids_dir:
            u["pids_current"] = read_int(os.path.join(pids_dir, "pids.current"))
            u["pids_peak"] = read_int(os.path.join(pids_dir, "pids.peak"))
        blkio_dir = self.dirs.get("blkio")
        if blkio_dir:
            u["io_read_bytes"], u["io_write_bytes"] = _blkio_bytes(blkio_dir)
        acct_dir = self.dirs.get("cpuacct")
        if with_cpu and acct_dir:
            acct = CpuAcctController(_node(acct_dir))
            user_ns = read_int(os.path.join(acct_dir, "cpuacct.usage_user"))
            sys_ns = read_int(os.path.join(acct_dir, "cpuacct.usage_sys"))
            if user_ns is not None and sys_ns is not None:
                user, system = user_ns / 1e9, sys_ns / 1e9
            else:  # old kernels: USER_HZ ticks only
                ticks = acct.acct_stat or {}
                hz = os.sysconf("SC_CLK_TCK")
                user, system = int(ticks.get("user", 0)) / hz, int(ticks.get("system", 0)) / hz
            total_ns = read_int(os.path.join(acct_dir, "cpuacct.usage"))
            u["cpu_user_seconds"], u["cpu_system_seconds"] = split_runtime(total_ns, user, system)
        return Usage(**u)  # type: ignore[arg-type]

    def exists(self) -> bool:
        return any(os.path.isdir(d) for d in self.unique_dirs())

    def remove_dirs(self) -> None:
        for d in self.unique_dirs():
            remove_tree(d)


class V1Cgroup(JobCgroup):
    version = "v1"

    def __init__(
        self, layout: Layout, name: str, parent: str | None, parent_dirs: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.part = V1Part(layout, name, parent, ("memory", "pids", "cpu", "cpuacct", "blkio", "freezer"), parent_dirs)
        if "memory" not in self.part.dirs:
            raise CgroupError("this host has no cgroup v1 memory controller mounted")

    def create(self, limits: Limits) -> None:
        self.part.create(limits)

    def paths(self) -> dict[str, str]:
        return dict(self.part.dirs)

    def enclosing_memory_limit(self) -> int | None:
        return self.part.enclosing_memory_limit()

    def enclosing_cpu_limit(self) -> float | None:
        return self.part.enclosing_cpu_limit()

    def share_memory(self) -> None:
        self.part.share_memory()

    def primary_path(self) -> str:
        return self.part.dirs.get("memory") or next(iter(self.part.dirs.values()))

    def join_files(self) -> list[str]:
        return self.part.join_files()

    def pids(self) -> list[int]:
        return self.part.pids()

    def freeze(self) -> None:
        self.part.freeze()

    def thaw(self) -> None:
        self.part.thaw()

    def is_frozen(self) -> bool | None:
        d = self.part.dirs.get("freezer")
        if d is None:
            return None
        return (read_text(os.path.join(d, "freezer.state")) or "").strip() == "FROZEN"

    def kill(self, timeout: float = 10.0) -> None:
        self.part.kill(timeout)

    def usage(self) -> Usage:
        return self.part.usage()

    def exists(self) -> bool:
        return self.part.exists()

    def remove_dirs(self) -> None:
        self.part.remove_dirs()
