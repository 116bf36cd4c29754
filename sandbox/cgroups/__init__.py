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


def unusable(layout: Layout | None = None) -> str | None:
    """Why no job cgroup can be made in the launcher's own cgroups (None: it can):
    no hierarchy mounted, or one that is read-only or not ours to write, as
    /sys/fs/cgroup is in many containers."""
    import os

    try:
        probe = job_cgroup("probe", None, layout)
    except CgroupError as e:
        return str(e)
    for directory in probe.paths().values():
        parent = os.path.dirname(directory)
        if not os.access(parent, os.W_OK):
            try:
                read_only = bool(os.statvfs(parent).f_flag & os.ST_RDONLY)
            except OSError:
                read_only = False
            return f"{parent} is {'read-only' if read_only else 'not writable'}"
    return None


__all__ = ["PREFIX", "CgroupError", "JobCgroup", "Layout", "Usage", "detect", "job_cgroup", "unusable"]
