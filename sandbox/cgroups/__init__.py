"""One cgroup interface (JobCgroup) with a backend per layout: v1, v2 and hybrid.

Version differences stay inside the backends: callers ask `job_cgroup()` for the
right one and never test the version themselves.
"""

from __future__ import annotations

from .base import PREFIX, CgroupError, JobCgroup, Usage
from .layout import Layout, detect


def job_cgroup(
    name: str, parent: str | None = None, layout: Layout | None = None, parent_dirs: dict[str, str] | None = None
) -> JobCgroup:
    """The cgroup of sandbox `name` under `parent` (a hierarchy path such as
    '/batch/slot1'; None: the launcher's own cgroup in each hierarchy). `parent_dirs`
    (hierarchy key -> directory, as in JobCgroup.paths()) finds an existing sandbox
    from its recorded paths, whatever cgroup the caller sits in."""
    layout = layout or detect()
    if parent is not None and not parent.startswith("/"):
        raise CgroupError(f"cgroup parent {parent!r} must be an absolute cgroup path such as /batch/slot1")
    try:
        if layout.kind == "hybrid":
            from .hybrid import HybridCgroup

            return HybridCgroup(layout, name, parent, parent_dirs)
        if layout.kind == "v2":
            from .v2 import V2Cgroup

            return V2Cgroup(layout, name, parent, parent_dirs)
        if layout.kind == "v1":
            from .v1 import V1Cgroup

            return V1Cgroup(layout, name, parent, parent_dirs)
    except ValueError as e:
        raise CgroupError(str(e)) from None
    raise CgroupError("no cgroup hierarchy is mounted on this host")


__all__ = ["PREFIX", "CgroupError", "JobCgroup", "Layout", "Usage", "detect", "job_cgroup"]
