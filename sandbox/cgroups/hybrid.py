"""The hybrid layout: v1 controllers for limits and most accounting, plus the cgroup2
'unified' mount (no controllers) for what v1 does badly: an atomic recursive kill
(cgroup.kill), a freezer that reports when it is done, a populated event, and
exact CPU time (cpu.stat is rstat-based and includes every exited task).
"""

from __future__ import annotations

from ..limits import Limits
from .base import JobCgroup, Usage
from .layout import Layout
from .v1 import V1Part
from .v2 import V2Part


class HybridCgroup(JobCgroup):
    version = "hybrid"

    def __init__(
        self, layout: Layout, name: str, parent: str | None, parent_dirs: dict[str, str] | None = None
    ) -> None:
        self.name = name
        # cpuacct and freezer are not needed: the unified part does their jobs better
        self.v1 = V1Part(layout, name, parent, ("memory", "pids", "cpu", "blkio"), parent_dirs)
        self.v2 = V2Part(layout, name, parent, parent_dirs)

    def create(self, limits: Limits) -> None:
        self.v1.create(limits)
        try:
            # no device program here: the v1 devices controller already enforces the list
            self.v2.create(Limits(), ())
        except BaseException:
            self.v1.remove_dirs()
            raise

    def paths(self) -> dict[str, str]:
        return {**self.v1.dirs, "unified": self.v2.dir}

    def enclosing_memory_limit(self) -> int | None:
        return self.v1.enclosing_memory_limit()  # the memory controller is v1's here

    def share_memory(self) -> None:
        self.v1.share_memory()

    def enclosing_cpu_limit(self) -> float | None:
        return self.v1.enclosing_cpu_limit()  # so is the cpu controller (the unified mount has none)

    def primary_path(self) -> str:
        return self.v1.dirs.get("memory", self.v2.dir)

    def join_files(self) -> list[str]:
        # unified first: it is the hierarchy the kill and the populated event use
        return [self.v2.file("cgroup.procs"), *self.v1.join_files()]

    def pids(self) -> list[int]:
        return self.v2.pids()

    def freeze(self) -> None:
        self.v2.freeze()

    def thaw(self) -> None:
        self.v2.thaw()

    def is_frozen(self) -> bool | None:
        return self.v2.frozen()

    def kill(self, timeout: float = 10.0) -> None:
        self.v2.kill(timeout)
        # every task has exited, so every v1 hierarchy is empty too; check anyway
        self.v1.kill(timeout)

    def usage(self) -> Usage:
        user, system = self.v2.cpu()
        return self.v1.usage(with_cpu=False)._replace(cpu_user_seconds=user, cpu_system_seconds=system)

    def exists(self) -> bool:
        return self.v2.exists() or self.v1.exists()

    def remove_dirs(self) -> None:
        self.v2.remove_dirs()
        self.v1.remove_dirs()
