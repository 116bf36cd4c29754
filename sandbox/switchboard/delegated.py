"""A JobCgroup for an unprivileged launcher: the switchboard creates, attaches and
destroys the cgroup; everything else (kill, freeze, usage) goes through the backend
of the host's layout, on the files the switchboard handed over. Version-agnostic:
the backend is picked by job_cgroup() from the directories the switchboard made."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..cgroups.base import CgroupError, JobCgroup, Usage
from ..cgroups.layout import Layout, detect
from ..limits import Limits

if TYPE_CHECKING:
    from ..records import State


class DelegatedCgroup(JobCgroup):
    def __init__(self, name: str, layout: Layout | None = None, agent: object | None = None) -> None:
        self.name = name
        self.layout = layout or detect()
        self.inner: JobCgroup | None = None
        self.started = agent  # the session the launcher started early (SwitchboardMember), if any
        self.agent: object | None = None
        self.version = {"hybrid": "hybrid", "v1": "v1", "v2": "v2"}.get(self.layout.kind, "v2")

    def _backend(self) -> JobCgroup:
        if self.inner is None:
            raise CgroupError("the sandbox cgroup was not created")
        return self.inner

    def create(self, limits: Limits) -> None:
        from ..cgroups import job_cgroup
        from . import client as sb

        try:
            agent = self.started if isinstance(self.started, sb.Agent) else sb.Agent()
        except sb.SwitchboardError as e:
            raise CgroupError(f"the switchboard refused to create the cgroup: {e}") from None
        request: dict[str, object] = {
            "op": "create",
            "name": self.name,
            "limits": {
                "memory": limits.memory_bytes,
                "swap": limits.swap_limit_bytes() if limits.memory_bytes is not None else None,
                "pids": limits.pids,
                "cpus": limits.cpus,
            },
        }
        try:
            reply = agent.request(request)
        except sb.SwitchboardError as e:  # nothing made: at EOF the helper just ends
            agent.close()
            raise CgroupError(f"the switchboard refused to create the cgroup: {e}") from None
        self.agent = agent
        paths, shared = reply.get("paths"), reply.get("shared") or {}
        assert isinstance(paths, dict) and isinstance(shared, dict)
        parent_dirs = {k: os.path.dirname(str(v)) for k, v in paths.items()}
        # a hierarchy where the job stays in the caller's own cgroup (v1 memory in a batch step)
        parent_dirs.update({k: str(v) for k, v in shared.items()})
        self.inner = job_cgroup(self.name, None, self.layout, parent_dirs=parent_dirs)
        if "memory" in shared:
            self.inner.share_memory()
        self.version = self.inner.version

    def attach(self, pid: int) -> None:
        from . import client as sb

        assert isinstance(self.agent, sb.Agent)
        try:
            self.agent.request({"op": "attach", "name": self.name, "pid": pid})
        except sb.SwitchboardError as e:
            raise CgroupError(f"the switchboard refused to attach the job: {e}") from None

    def enclosing_memory_limit(self) -> int | None:
        # the switchboard nests the sandbox in the caller's own cgroup (a Slurm task's):
        # its ancestors' limits are the caller's to read, as for root's sandboxes
        return self.inner.enclosing_memory_limit() if self.inner is not None else None

    def enclosing_cpu_limit(self) -> float | None:
        return self.inner.enclosing_cpu_limit() if self.inner is not None else None

    def paths(self) -> dict[str, str]:
        return self._backend().paths()

    def primary_path(self) -> str:
        return self._backend().primary_path()

    def join_files(self) -> list[str]:
        return []  # the switchboard attaches init (cgroup v2 needs root for the move)

    def pids(self) -> list[int]:
        return self._backend().pids()

    def freeze(self) -> None:
        self._backend().freeze()

    def thaw(self) -> None:
        self._backend().thaw()

    def kill(self, timeout: float = 10.0) -> None:
        self._backend().kill(timeout)

    def usage(self) -> Usage:
        return self._backend().usage()

    def exists(self) -> bool:
        return self.inner is not None and self.inner.exists()

    def remove_dirs(self) -> None:
        from . import client as sb

        if not isinstance(self.agent, sb.Agent):
            return
        try:
            self.agent.request({"op": "destroy", "name": self.name})
        except sb.SwitchboardError as e:
            raise CgroupError(f"the switchboard could not destroy the cgroup: {e}") from None
        finally:
            self.agent.close()
            self.agent = None


class StaleDelegatedCgroup(DelegatedCgroup):
    """A member's sandbox whose launcher and agent are gone, as `sandbox gc` finds it:
    killed and read through the backend on what was handed over, removed by the
    switchboard's reclaim (its directories, or their parent, are root's)."""

    def __init__(self, inner: JobCgroup, state_fd: int, layout: Layout | None = None) -> None:
        super().__init__(inner.name, layout)
        self.inner, self.state_fd = inner, state_fd
        self.version = inner.version

    def kill(self, timeout: float = 10.0) -> None:
        try:
            self._backend().kill(timeout)
        except (CgroupError, OSError):
            pass  # what the member may not kill (a v1 cgroup's tasks) reclaim kills

    def remove_dirs(self) -> None:
        from . import client as sb

        try:
            sb.reclaim(self.name, self.state_fd)
        except sb.SwitchboardError as e:
            raise CgroupError(f"the switchboard could not reclaim the cgroup: {e}") from None


def member_cgroup(name: str, parent: str | None, agent: object | None) -> DelegatedCgroup:
    if parent is not None:
        raise CgroupError("--cgroup-parent needs root: without it the switchboard's configured parent is used")
    return DelegatedCgroup(name, agent=agent)


def stale_cgroup(record: State, state_fd: int, layout: Layout | None) -> JobCgroup:
    """A member's stale sandbox for gc. Its directories (or their parent) are root's: the
    switchboard removes them, once it has seen on the state file we hold that no launcher
    holds its lock."""
    cg = record.job_cgroup(layout)
    if not record.cgroup_paths:
        return cg
    return StaleDelegatedCgroup(cg, state_fd, layout)
